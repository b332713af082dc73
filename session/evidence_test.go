package session_test

import (
	"path/filepath"
	"strings"
	"testing"

	msgdkim "github.com/emersion/go-msgauth/dkim"

	"github.com/dmarc-milter/dmarc-milter/internal/testutil"
	"github.com/dmarc-milter/dmarc-milter/policy"
	"github.com/dmarc-milter/dmarc-milter/session"
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
	tests := []mailCase{
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

// A p=reject failure from a network whose mail passed DMARC for the same
// Organizational Domain before is quarantined (local_policy), once the
// pass is noted; from elsewhere it is still rejected.
func TestKnownNetworkQuarantined(t *testing.T) {
	e := newEnv(t, envOptions{known: true})
	spoof := func(ip string) outcome {
		return e.run(ip, "x.example", msg{mailFrom: "ceo@pass.example", raw: plainMessage("CEO <ceo@pass.example>", "wire")})
	}
	check(t, spoof("192.0.2.77"), want{code: 550})
	check(t, e.run(goodIP, "mx.pass.example", msg{mailFrom: "bob@pass.example", raw: plainMessage("bob@pass.example", "pass")}), want{code: 250})
	testutil.WaitFor(t, "the pass noted", func() bool {
		return spoof("192.0.2.77").Quarantined()
	})
	check(t, spoof("192.0.2.78"), want{code: 250, quarantine: true, ar: []string{"this network sent DMARC-passing mail for pass.example before"}})
	check(t, spoof(badIP), want{code: 550})
}

// trusted_arc_sealers: a list post whose ARC set (sealed by dkimpy) is by
// a trusted sealer that saw dmarc=pass is delivered, reason
// trusted_forwarder; the same post through an untrusted sealer, or
// changed after sealing, gets only the list's quarantine.
func TestTrustedARCSealer(t *testing.T) {
	sealers := func(list ...string) envOptions {
		return envOptions{
			policy:   func(c *policy.Config) { c.TrustedARCSealers = list },
			settings: func(s *session.Settings) { s.ARC = true },
		}
	}
	post := sign(t, plainMessage("Bob <bob@pass.example>", "hello list"), "pass.example", "sel1", "rsa2048.pem", msgdkim.CanonicalizationRelaxed)
	// The list checked the post, added its results, a footer and List-Id,
	// and sealed.
	listed := "Authentication-Results: lists.example; dkim=pass header.d=pass.example;\r\n dmarc=pass header.from=pass.example\r\n" +
		"List-Id: <talk.lists.example>\r\n" + post + "--\r\ntalk mailing list\r\n"
	sealed := testutil.ARCSeal(t, listed, "lists.example", "sel1", filepath.Join("..", "testdata", "keys", "rsa2048.pem"), "lists.example")
	run := func(e *env, raw string) outcome {
		return e.run(listIP, "mx.lists.example", msg{mailFrom: "list-bounces@lists.example", raw: raw})
	}

	trusted := newEnv(t, sealers("lists.example"))
	check(t, run(trusted, sealed), want{code: 250, ar: []string{
		"arc=pass (sealed by lists.example) smtp.remote-ip=198.51.100.20 header.oldest-pass=0",
		"dmarc=fail (reject applied as none: arc=pass, sealed by lists.example)"}})
	check(t, run(trusted, sealed+"changed after sealing\r\n"), want{code: 250, quarantine: true, ar: []string{"arc=fail", "mailing list"}})

	untrusted := newEnv(t, sealers("other.example"))
	check(t, run(untrusted, sealed), want{code: 250, quarantine: true, ar: []string{"arc=pass", "mailing list"}})

	// Without trusted sealers ARC is not validated, and not stamped.
	off := newEnv(t, envOptions{})
	got := run(off, sealed)
	check(t, got, want{code: 250, quarantine: true})
	if strings.Contains(got.AuthResults(), "\tarc=") {
		t.Errorf("ARC stamped without trusted sealers: %s", got.AuthResults())
	}
}
