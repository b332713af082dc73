package session_test

import (
	"net/netip"
	"strings"
	"testing"

	gomilter "github.com/emersion/go-milter"

	"github.com/dmarc-milter/dmarc-milter/policy"
)

// TestHeaderInjection: client-supplied values never put a line break into
// the Authentication-Results field we insert; a value that cannot be
// written validly is left out, and a comment says so.
func TestHeaderInjection(t *testing.T) {
	e := newEnv(t, envOptions{})
	tests := []struct {
		name, helo, mailFrom string
		omitted              string
	}{
		{"HELO with CRLF", "mx.pass.example\r\nX-Injected: yes", "bob@pass.example", "smtp.helo"},
		{"HELO with LF", "mx.pass.example\nX-Injected: yes", "bob@pass.example", "smtp.helo"},
		{"MAIL FROM with CR", "mx.pass.example", "bob@none.example\rX-Injected: yes", "smtp.mailfrom"},
		{"HELO with ESC", "mx\x1b.pass.example", "bob@pass.example", "smtp.helo"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			from := "bob@pass.example"
			if strings.Contains(tt.mailFrom, "none.example") {
				from = "bob@none.example"
			}
			got := e.run(goodIP, tt.helo, msg{mailFrom: tt.mailFrom, raw: plainMessage(from, "inject")})
			ar := got.AuthResults()
			if ar == "" {
				t.Fatalf("no Authentication-Results (reply %d)", got.Code())
			}
			for i, line := range strings.Split(ar, "\n") {
				if strings.ContainsAny(line, "\r\x00\x1b") || i > 0 && !strings.HasPrefix(line, "\t") {
					t.Errorf("line %d of the field is not a folded continuation: %q", i, line)
				}
			}
			if strings.Contains(ar, "X-Injected") {
				t.Errorf("client text in the field: %q", ar)
			}
			if !strings.Contains(ar, tt.omitted+" omitted") {
				t.Errorf("%q does not say %s was omitted", ar, tt.omitted)
			}
		})
	}
	// A quoted value is quoted, not dropped.
	got := e.run(goodIP, `helo "with" spaces`, msg{mailFrom: "bob@pass.example", raw: plainMessage("bob@pass.example", "q")})
	if ar := got.AuthResults(); !strings.Contains(ar, `smtp.helo="helo \"with\" spaces"`) {
		t.Errorf("quoted HELO: %q", ar)
	}
}

// TestUnparseableClientAddress: an inet client whose address does not
// parse is never taken for a local (trusted) client.
func TestUnparseableClientAddress(t *testing.T) {
	e := newEnv(t, envOptions{})
	s := e.dial(0)
	if _, err := s.Conn("client.example", gomilter.FamilyInet, 40000, "999.1.1.1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Helo("spam.example"); err != nil {
		t.Fatal(err)
	}
	got := send(t, s, msg{mailFrom: "ceo@kantiflow.xyz", raw: plainMessage("ceo@kantiflow.xyz", "spoof")})
	check(t, got, want{code: 550, text: "kantiflow.xyz"})
}

// TestNotEnforcedSaysSo: mail that is evaluated but not enforced says so in
// the header; results carry no internal prefixes.
func TestNotEnforcedSaysSo(t *testing.T) {
	e := newEnv(t, envOptions{policy: func(c *policy.Config) {
		c.TrustedNetworks = []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}
	}})
	got := e.run(badIP, "x.example", msg{mailFrom: "bob@kantiflow.xyz", raw: plainMessage("bob@kantiflow.xyz", "trusted")})
	check(t, got, want{code: 250, ar: []string{"dmarc=fail (not enforced: trusted network)", "policy.dmarc=reject"}})

	got = e.run(badIP, "x.example", msg{mailFrom: "bob@kantiflow.xyz", authUser: "bob", raw: plainMessage("bob@kantiflow.xyz", "auth")})
	check(t, got, want{code: 250, ar: []string{"dmarc=fail (not enforced: authenticated client)"}})

	m := newEnv(t, envOptions{policy: func(c *policy.Config) { c.Monitor = true }})
	got = m.run(badIP, "x.example", msg{mailFrom: "bob@kantiflow.xyz", raw: plainMessage("bob@kantiflow.xyz", "monitor")})
	check(t, got, want{code: 250, ar: []string{"dmarc=fail (not enforced: monitor mode)"}})

	// Enforced and passing mail carries no such comment.
	got = e.run(goodIP, "x.example", msg{mailFrom: "bob@pass.example", raw: plainMessage("bob@pass.example", "pass")})
	if ar := got.AuthResults(); strings.Contains(ar, "not enforced") {
		t.Errorf("passing mail: %q", ar)
	}

	got = e.run(goodIP, "x.example", msg{mailFrom: "bob@unknown-domain.example", raw: plainMessage("bob@unknown-domain.example", "none")})
	ar := got.AuthResults()
	if !strings.Contains(ar, `reason="no DMARC policy record"`) || strings.Contains(ar, "dmarc:") || strings.Contains(ar, "dkim:") {
		t.Errorf("internal prefix or wrong reason: %q", ar)
	}
}
