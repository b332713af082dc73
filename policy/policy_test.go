package policy

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/dmarc-milter/dmarc-milter/internal/dnstest"
	"github.com/dmarc-milter/dmarc-milter/policy/dkim"
	"github.com/dmarc-milter/dmarc-milter/policy/dmarc"
	"github.com/dmarc-milter/dmarc-milter/policy/spf"
)

// testResolver publishes the DMARC records of the Judge tests.
func testResolver() *dnstest.Resolver {
	return &dnstest.Resolver{
		TXT: map[string][]string{
			"_dmarc.reject.example.":     {"v=DMARC1; p=reject"},
			"_dmarc.quarantine.example.": {"v=DMARC1; p=quarantine"},
			"_dmarc.none.example.":       {"v=DMARC1; p=none"},
			"_dmarc.testing.example.":    {"v=DMARC1; p=reject; t=y"},
			"_dmarc.exempt.example.":     {"v=DMARC1; p=reject"},
		},
		Fail: map[string]error{
			"_dmarc.down.example.": dnstest.ServFail("_dmarc.down.example."),
		},
	}
}

// spfPass is an SPF pass for domain, which aligns with a From in domain.
func spfPass(domain string) spf.Result {
	return spf.Result{Status: spf.Pass, Domain: domain, Identity: spf.IdentityMailFrom}
}

var spfFailOther = spf.Result{Status: spf.Fail, Domain: "attacker.example", Identity: spf.IdentityMailFrom}

func TestJudge(t *testing.T) {
	outside := net.ParseIP("203.0.113.9")
	type want struct {
		action     Action
		code       int
		enhanced   string
		text       string // a substring of the reply text
		dmarc      dmarc.Status
		requested  dmarc.Policy
		exempt     Exemption
		rule       Rule // checked when set
		unknown    bool
		fromErr    bool
		fromDomain string
	}
	tests := []struct {
		name string
		cfg  func(*Config)
		msg  Message
		want want
	}{
		{name: "aligned SPF pass is accepted",
			msg:  Message{ClientIP: outside, From: []string{" a@reject.example"}, SPF: spfPass("reject.example")},
			want: want{action: Accept, dmarc: dmarc.Pass, requested: dmarc.PolicyNone, fromDomain: "reject.example"}},
		{name: "p=reject failure is rejected with the domain in the text",
			msg:  Message{ClientIP: outside, From: []string{" a@reject.example"}, SPF: spfFailOther},
			want: want{action: Reject, code: 550, enhanced: "5.7.1", text: "DMARC policy of reject.example says reject", dmarc: dmarc.Fail, requested: dmarc.PolicyReject, rule: RuleDMARC, fromDomain: "reject.example"}},
		{name: "more forged Authentication-Results than can be removed: the verdict is the 550 sent",
			msg:  Message{ClientIP: outside, From: []string{" a@reject.example"}, SPF: spfPass("reject.example"), TooManyForgedAR: true},
			want: want{action: Reject, code: 550, enhanced: "5.7.1", text: "too many Authentication-Results header fields", dmarc: dmarc.Pass, requested: dmarc.PolicyNone, rule: RuleForgedAR, fromDomain: "reject.example"}},
		{name: "forged Authentication-Results are rejected in monitor mode too",
			cfg:  func(c *Config) { c.Monitor = true },
			msg:  Message{ClientIP: outside, From: []string{" a@reject.example"}, SPF: spfFailOther, TooManyForgedAR: true},
			want: want{action: Reject, code: 550, enhanced: "5.7.1", text: "too many Authentication-Results", dmarc: dmarc.Fail, requested: dmarc.PolicyReject, exempt: ExemptMonitor, rule: RuleForgedAR, fromDomain: "reject.example"}},
		{name: "reject_text is used",
			cfg:  func(c *Config) { c.RejectText = "No spoofing of {domain} here" },
			msg:  Message{ClientIP: outside, From: []string{" a@reject.example"}, SPF: spfFailOther},
			want: want{action: Reject, code: 550, enhanced: "5.7.1", text: "No spoofing of reject.example here", dmarc: dmarc.Fail, requested: dmarc.PolicyReject, fromDomain: "reject.example"}},
		{name: "p=quarantine is held",
			msg:  Message{ClientIP: outside, From: []string{" a@quarantine.example"}, SPF: spfFailOther},
			want: want{action: Quarantine, dmarc: dmarc.Fail, requested: dmarc.PolicyQuarantine, fromDomain: "quarantine.example"}},
		{name: "p=quarantine with quarantine = mark is only marked",
			cfg:  func(c *Config) { c.Quarantine = QuarantineMark },
			msg:  Message{ClientIP: outside, From: []string{" a@quarantine.example"}, SPF: spfFailOther},
			want: want{action: Accept, dmarc: dmarc.Fail, requested: dmarc.PolicyQuarantine, fromDomain: "quarantine.example"}},
		{name: "p=none failure is accepted",
			msg:  Message{ClientIP: outside, From: []string{" a@none.example"}, SPF: spfFailOther},
			want: want{action: Accept, dmarc: dmarc.Fail, requested: dmarc.PolicyNone, fromDomain: "none.example"}},
		{name: "t=y turns reject into quarantine",
			msg:  Message{ClientIP: outside, From: []string{" a@testing.example"}, SPF: spfFailOther},
			want: want{action: Quarantine, dmarc: dmarc.Fail, requested: dmarc.PolicyQuarantine, fromDomain: "testing.example"}},
		{name: "aligned DKIM pass is accepted",
			msg: Message{ClientIP: outside, From: []string{" a@reject.example"}, SPF: spfFailOther,
				DKIM: []dkim.Result{{Status: dkim.Pass, Domain: "reject.example"}}},
			want: want{action: Accept, dmarc: dmarc.Pass, requested: dmarc.PolicyNone, fromDomain: "reject.example"}},
		{name: "a DNS failure that leaves the outcome unknown defers",
			msg:  Message{ClientIP: outside, From: []string{" a@down.example"}, SPF: spfFailOther},
			want: want{action: TempFail, code: 451, enhanced: "4.7.5", text: "Temporary DNS failure evaluating DMARC for down.example", dmarc: dmarc.TempError, requested: dmarc.PolicyNone, unknown: true, rule: RuleDNS, fromDomain: "down.example"}},
		{name: "temperror = accept accepts the unknown outcome",
			cfg:  func(c *Config) { c.TempErrorAccept = true },
			msg:  Message{ClientIP: outside, From: []string{" a@down.example"}, SPF: spfFailOther},
			want: want{action: Accept, dmarc: dmarc.TempError, requested: dmarc.PolicyNone, unknown: true, fromDomain: "down.example"}},
		{name: "no From field is rejected",
			msg:  Message{ClientIP: outside},
			want: want{action: Reject, code: 550, enhanced: "5.7.1", text: "no From header field", dmarc: dmarc.PermError, requested: dmarc.PolicyNone, rule: RuleBadFrom, fromErr: true}},
		{name: "two From fields are rejected",
			msg:  Message{ClientIP: outside, From: []string{" a@none.example", " b@none.example"}},
			want: want{action: Reject, code: 550, enhanced: "5.7.1", text: "more than one From header field", dmarc: dmarc.PermError, requested: dmarc.PolicyNone, rule: RuleBadFrom, fromErr: true}},
		{name: "a bad From is accepted with reject_bad_from off",
			cfg:  func(c *Config) { c.RejectBadFrom = false },
			msg:  Message{ClientIP: outside, From: []string{" not an address"}},
			want: want{action: Accept, dmarc: dmarc.PermError, requested: dmarc.PolicyNone, rule: RuleDMARC, fromErr: true}},
		{name: "more than MaxAuthorDomains domains is a bad From",
			msg:  Message{ClientIP: outside, From: []string{" a@a.example, b@b.example, c@c.example, d@d.example, e@e.example, f@f.example"}},
			want: want{action: Reject, code: 550, enhanced: "5.7.1", text: "more than 5 domains", dmarc: dmarc.PermError, requested: dmarc.PolicyNone, rule: RuleBadFrom, fromErr: true}},
		{name: "several authors: the strictest result applies",
			msg:  Message{ClientIP: outside, From: []string{" a@none.example, b@reject.example"}, SPF: spfPass("none.example")},
			want: want{action: Reject, code: 550, enhanced: "5.7.1", dmarc: dmarc.Fail, requested: dmarc.PolicyReject, fromDomain: "reject.example"}},
		{name: "several authors rejected before DMARC with reject_multi_author",
			cfg:  func(c *Config) { c.RejectMultiAuthor = true },
			msg:  Message{ClientIP: outside, From: []string{" a@none.example, b@none.example"}, SPF: spfPass("none.example")},
			want: want{action: Reject, code: 550, enhanced: "5.7.1", text: "more than one address", dmarc: dmarc.PermError, requested: dmarc.PolicyNone, rule: RuleBadFrom, fromErr: true}},
		{name: "monitor mode never enforces",
			cfg:  func(c *Config) { c.Monitor = true },
			msg:  Message{ClientIP: outside, From: []string{" a@reject.example"}, SPF: spfFailOther},
			want: want{action: Accept, dmarc: dmarc.Fail, requested: dmarc.PolicyReject, exempt: ExemptMonitor, rule: RuleExemption, fromDomain: "reject.example"}},
		{name: "an authenticated client is not enforced",
			msg:  Message{ClientIP: outside, AuthUser: "alice", From: []string{" a@reject.example"}, SPF: spfFailOther},
			want: want{action: Accept, dmarc: dmarc.Fail, requested: dmarc.PolicyReject, exempt: ExemptAuthenticated, fromDomain: "reject.example"}},
		{name: "a trusted network (IPv4-mapped address) is not enforced",
			msg:  Message{ClientIP: net.ParseIP("::ffff:10.1.2.3"), From: []string{" a@reject.example"}, SPF: spfFailOther},
			want: want{action: Accept, dmarc: dmarc.Fail, requested: dmarc.PolicyReject, exempt: ExemptTrustedNetwork, fromDomain: "reject.example"}},
		{name: "a local client is not enforced",
			msg:  Message{LocalClient: true, From: []string{" a@reject.example"}, SPF: spfFailOther},
			want: want{action: Accept, dmarc: dmarc.Fail, requested: dmarc.PolicyReject, exempt: ExemptLocalClient, fromDomain: "reject.example"}},
		{name: "a client without a usable address is not trusted",
			msg:  Message{From: []string{" a@reject.example"}, SPF: spfFailOther},
			want: want{action: Reject, code: 550, enhanced: "5.7.1", dmarc: dmarc.Fail, requested: dmarc.PolicyReject, fromDomain: "reject.example"}},
		{name: "an exempt domain is not enforced",
			msg:  Message{ClientIP: outside, From: []string{" a@sub.exempt.example"}, SPF: spfFailOther},
			want: want{action: Accept, dmarc: dmarc.Fail, requested: dmarc.PolicyReject, exempt: ExemptDomain, fromDomain: "sub.exempt.example"}},
		{name: "an exempt co-author does not exempt a spoofed one",
			msg:  Message{ClientIP: outside, From: []string{" a@exempt.example, b@reject.example"}, SPF: spfFailOther},
			want: want{action: Reject, code: 550, enhanced: "5.7.1", dmarc: dmarc.Fail, requested: dmarc.PolicyReject, fromDomain: "exempt.example"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := Config{
				AuthservID:      "mx.example.net",
				RejectBadFrom:   true,
				TrustedNetworks: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
				ExemptDomains:   []string{"exempt.example"},
			}
			if tt.cfg != nil {
				tt.cfg(&cfg)
			}
			e := New(cfg, testResolver())
			m := tt.msg
			v := e.Judge(context.Background(), &m)
			w := tt.want
			r := v.Reply
			if v.Action != w.action || r.Code != w.code || r.Enhanced != w.enhanced || !strings.Contains(r.Text, w.text) {
				t.Errorf("action %s %d %s %q, want %s %d %s containing %q", v.Action, r.Code, r.Enhanced, r.Text, w.action, w.code, w.enhanced, w.text)
			}
			if v.DMARC.Status != w.dmarc || v.Requested() != w.requested || v.Exempt != w.exempt || v.Unknown() != w.unknown {
				t.Errorf("dmarc %s requested %q exempt %q unknown %v, want %s %q %q %v (err %v)",
					v.DMARC.Status, v.Requested(), v.Exempt, v.Unknown(), w.dmarc, w.requested, w.exempt, w.unknown, v.DMARC.Err)
			}
			if w.rule != "" && v.Rule != w.rule {
				t.Errorf("rule %q, want %q", v.Rule, w.rule)
			}
			if (v.FromErr != nil) != w.fromErr || w.fromDomain != "" && v.FromDomain() != w.fromDomain {
				t.Errorf("from %q error %v, want %q error %v", v.FromDomain(), v.FromErr, w.fromDomain, w.fromErr)
			}
		})
	}
}

// The From field is parsed once per message, however often it is asked.
func TestMessageAuthorOnce(t *testing.T) {
	m := &Message{From: []string{" a@example.com"}}
	a, err := m.Author()
	if err != nil || len(a.Domains) != 1 || a.Domains[0] != "example.com" {
		t.Fatalf("Author() = %+v, %v", a, err)
	}
	m.From[0] = " b@other.example" // not read again
	if a, _ := m.Author(); a.Domains[0] != "example.com" {
		t.Errorf("From parsed again: %+v", a)
	}
	if _, err := (&Message{}).Author(); !errors.Is(err, dmarc.ErrNoFrom) {
		t.Errorf("no From: %v", err)
	}
}

func TestAuthenticationResults(t *testing.T) {
	rec, err := dmarc.ParseRecord("v=DMARC1; p=reject")
	if err != nil {
		t.Fatal(err)
	}
	failed := dmarc.Result{Status: dmarc.Fail, FromDomain: "example.com", Record: rec, Policy: dmarc.PolicyReject, Applied: dmarc.PolicyReject, Requested: dmarc.PolicyReject}
	tests := []struct {
		name string
		m    Message // MailFrom, Helo, SPF, HeloSPF, DKIM
		v    Verdict
		want string
	}{
		{
			name: "every method, one line each",
			m: Message{
				MailFrom: "bounce@example.com", Helo: "mail.example.com",
				SPF:     spf.Result{Status: spf.Pass},
				HeloSPF: spf.Result{Status: spf.None},
				DKIM: []dkim.Result{{Status: dkim.Pass, Domain: "example.com", Selector: "s1", Algorithm: "rsa-sha256", BPrefix: "abcdefgh"},
					{Status: dkim.Fail, Domain: "esp.example", Selector: "k", Algorithm: "ed25519-sha256", BPrefix: "12345678", Err: errors.New("dkim: signature did not verify")}},
			},
			v: Verdict{DMARC: dmarc.Result{Status: dmarc.Pass, FromDomain: "example.com", Record: rec, Policy: dmarc.PolicyReject, Applied: dmarc.PolicyReject, Requested: dmarc.PolicyNone}},
			want: "mx.example.net;\n\tspf=pass smtp.mailfrom=bounce@example.com;\n\tspf=none smtp.helo=mail.example.com;\n\t" +
				"dkim=pass header.d=example.com header.s=s1 header.a=rsa-sha256 header.b=abcdefgh;\n\t" +
				`dkim=fail reason="signature did not verify" header.d=esp.example header.s=k header.a=ed25519-sha256 header.b=12345678;` + "\n\t" +
				"dmarc=pass header.from=example.com policy.dmarc=reject",
		},
		{
			name: "null sender: the HELO identity, no signature, no record",
			m:    Message{MailFrom: "", Helo: "mx.example.org", SPF: spf.Result{Status: spf.Neutral}, HeloSPF: spf.Result{Status: spf.Neutral}},
			v:    Verdict{DMARC: dmarc.Result{Status: dmarc.None, FromDomain: "example.org", Requested: dmarc.PolicyNone}},
			want: "mx.example.net;\n\tspf=neutral smtp.mailfrom=postmaster@mx.example.org;\n\tspf=neutral smtp.helo=mx.example.org;\n\t" +
				"dkim=none;\n\tdmarc=none header.from=example.org",
		},
		{
			name: "a failure not enforced says why",
			m:    Message{MailFrom: "x@attacker.example", SPF: spf.Result{Status: spf.Fail}},
			v:    Verdict{DMARC: failed, Exempt: ExemptTrustedNetwork, Action: Accept},
			want: "mx.example.net;\n\tspf=fail smtp.mailfrom=x@attacker.example;\n\tdkim=none;\n\t" +
				"dmarc=fail (not enforced: trusted network) header.from=example.com policy.dmarc=reject",
		},
		{
			name: "a value with a line break is left out, with a comment",
			m:    Message{MailFrom: "a@example.com", Helo: "evil\r\nX-Injected: 1", SPF: spf.Result{Status: spf.None}, HeloSPF: spf.Result{Status: spf.None}},
			v:    Verdict{DMARC: dmarc.Result{Status: dmarc.None, FromDomain: "example.com", Requested: dmarc.PolicyNone}},
			want: "mx.example.net;\n\tspf=none smtp.mailfrom=a@example.com;\n\tspf=none (smtp.helo omitted: not a valid header value);\n\t" +
				"dkim=none;\n\tdmarc=none header.from=example.com",
		},
		{
			name: "a bad From: permerror with the reason",
			m:    Message{MailFrom: "a@example.com", SPF: spf.Result{Status: spf.Pass}},
			v:    Verdict{FromErr: dmarc.ErrMultipleFrom, DMARC: dmarc.Result{Status: dmarc.PermError, Err: dmarc.ErrMultipleFrom}, Action: Reject},
			want: "mx.example.net;\n\tspf=pass smtp.mailfrom=a@example.com;\n\tdkim=none;\n\t" +
				`dmarc=permerror reason="more than one From header field"`,
		},
	}
	for _, tt := range tests {
		if got := AuthenticationResults("mx.example.net", &tt.m, &tt.v); got != tt.want {
			t.Errorf("%s:\n got %q\nwant %q", tt.name, got, tt.want)
		}
	}
}

func TestInNetworks(t *testing.T) {
	nets := []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("2001:db8::/32")}
	for _, tt := range []struct {
		ip   net.IP
		want bool
	}{
		{ip: net.ParseIP("192.0.2.7"), want: true},
		{ip: net.ParseIP("::ffff:192.0.2.7"), want: true},
		{ip: net.ParseIP("2001:db8::1"), want: true},
		{ip: net.ParseIP("198.51.100.1"), want: false},
		{ip: nil, want: false},
		{ip: net.IP{1, 2, 3}, want: false},
	} {
		if got := InNetworks(tt.ip, nets); got != tt.want {
			t.Errorf("InNetworks(%v) = %v, want %v", tt.ip, got, tt.want)
		}
	}
}
