package session_test

import (
	"strings"
	"testing"

	msgdkim "github.com/emersion/go-msgauth/dkim"
)

const (
	listIP = "198.51.100.20" // lists.example's SPF
	fwdIP  = "198.51.100.25" // fwd.example's SPF
)

// RFC 9989 sections 7.4 and 8: a p=reject failure is rejected only on
// evidence of a spoof; the indirect flows that break DMARC for genuine
// mail (mailing lists, forwarders) are quarantined, and the seed
// incident's spoof is still rejected, saying why.
func TestRejectOnlyOnEvidence(t *testing.T) {
	e := newEnv(t, envOptions{})
	signed := func(raw string) string {
		return sign(t, raw, "pass.example", "sel1", "rsa2048.pem", msgdkim.CanonicalizationRelaxed)
	}
	post := signed(plainMessage("Bob <bob@pass.example>", "hello list"))
	tests := []struct {
		name     string
		ip, helo string
		mailFrom string
		raw      string
		want     want
	}{
		{
			name: "list post, signed by the author, footer and List-Id added", ip: listIP, helo: "mx.lists.example", mailFrom: "list-bounces@lists.example",
			raw:  "List-Id: <talk.lists.example>\r\n" + post + "--\r\ntalk mailing list\r\n",
			want: want{code: 250, quarantine: true, ar: []string{"dmarc=fail", "mailing list", "policy.dmarc=reject"}},
		},
		{
			name: "Subject-tagged list post", ip: listIP, helo: "mx.lists.example", mailFrom: "list-bounces@lists.example",
			raw:  "List-Post: <mailto:talk@lists.example>\r\n" + strings.Replace(post, "Subject: hello list", "Subject: [talk] hello list", 1),
			want: want{code: 250, quarantine: true, ar: []string{"dmarc=fail", "mailing list"}},
		},
		{
			name: "plain forwarder that appended a line", ip: fwdIP, helo: "mx.fwd.example", mailFrom: "bob@fwd.example",
			raw:  post + "Forwarded by fwd.example\r\n",
			want: want{code: 250, quarantine: true, ar: []string{"dmarc=fail", "signature of pass.example verifies over the header"}},
		},
		{
			name: "SRS forwarder", ip: fwdIP, helo: "mx.fwd.example", mailFrom: "SRS0=HHH=TT=pass.example=bob@fwd.example",
			raw:  plainMessage("Bob <bob@pass.example>", "forwarded"),
			want: want{code: 250, quarantine: true, ar: []string{"dmarc=fail", "SRS"}},
		},
		{
			name: "seed spoof: no signature, SPF fail", ip: badIP, helo: "spam.example", mailFrom: "JONqjnh@kantiflow.xyz",
			raw:  plainMessage("JONqjnh@kantiflow.xyz", "spam"),
			want: want{code: 550, text: "no signature of kantiflow.xyz; SPF does not authorize 203.0.113.66"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			check(t, e.run(tc.ip, tc.helo, msg{mailFrom: tc.mailFrom, raw: tc.raw}), tc.want)
		})
	}
}
