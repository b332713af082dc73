package policy

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/dmarc-milter/dmarc-milter/internal/dnstest"
	"github.com/dmarc-milter/dmarc-milter/policy/dkim"
	"github.com/dmarc-milter/dmarc-milter/policy/dmarc"
	"github.com/dmarc-milter/dmarc-milter/policy/spf"
)

// knownNets is a KnownSenders of fixed networks per Organizational Domain.
type knownNets map[string][]netip.Prefix

func (k knownNets) Known(org string, ip net.IP) bool { return InNetworks(ip, k[org]) }

// TestEvidence checks every rule of the README's "Reject only on evidence"
// table: what a p=reject failure gets, and why (RFC 9989 sections 7.4 and
// 8).
func TestEvidence(t *testing.T) {
	res := &dnstest.Resolver{
		TXT: map[string][]string{
			"_dmarc.bank.example.":       {"v=DMARC1; p=reject; rua=mailto:d@bank.example"},
			"_dmarc.strict.example.":     {"v=DMARC1; p=reject; adkim=s"},
			"_dmarc.quarantine.example.": {"v=DMARC1; p=quarantine"},
		},
		PTR: map[string][]string{
			"198.51.100.70": {"relay.fwd.example."},
			"198.51.100.80": {"liar.fwd.example."},
		},
		IP: map[string][]net.IPAddr{
			"relay.fwd.example.": {{IP: net.ParseIP("198.51.100.70")}},
			"liar.fwd.example.":  {{IP: net.ParseIP("192.0.2.99")}},
		},
	}
	spoofIP := net.ParseIP("203.0.113.66")
	spfFail := spf.Result{Status: spf.Fail, Domain: "bank.example", Identity: spf.IdentityMailFrom}
	spfList := spf.Result{Status: spf.Pass, Domain: "lists.example", Identity: spf.IdentityMailFrom}
	headerOnly := dkim.Result{Status: dkim.Fail, Domain: "bank.example", Err: dkim.ErrBodyHash, HeaderSigned: true}
	junk := dkim.Result{Status: dkim.Fail, Domain: "bank.example", Err: dkim.ErrSignature}
	listID := []Field{{Name: "List-Id", Value: " <talk.lists.example>"}}
	arcPass := dkim.ARCResult{Status: dkim.ARCPass, Sets: 1, Sealer: "sealer.example", SignsFrom: true,
		Results: "sealer.example; dkim=pass header.d=bank.example; dmarc=pass header.from=bank.example"}
	forwarders := func(c *Config) {
		c.TrustedForwarders = Forwarders{Networks: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/28")}, Domains: []string{"fwd.example"}}
	}
	tests := []struct {
		name     string
		cfg      func(*Config)
		msg      Message
		action   Action
		enforced dmarc.Policy
		override OverrideType // the first override, "" for none
		comment  string       // a substring of the overrides' comments
		reply    string       // a substring of the reply text
	}{
		{name: "no signature, SPF fail: a spoof, rejected saying why",
			msg:    Message{ClientIP: spoofIP, MailFrom: "ceo@bank.example", SPF: spfFail},
			action: Reject, enforced: dmarc.PolicyReject, reply: "no signature of bank.example; SPF does not authorize 203.0.113.66"},
		{name: "a junk signature pasted in proves nothing",
			msg:    Message{ClientIP: spoofIP, MailFrom: "ceo@bank.example", SPF: spfFail, DKIM: []dkim.Result{junk}},
			action: Reject, enforced: dmarc.PolicyReject, reply: "the signature of bank.example does not verify"},
		{name: "header signature verifies, body changed: quarantine",
			msg:    Message{ClientIP: spoofIP, MailFrom: "x@other.example", DKIM: []dkim.Result{headerOnly}},
			action: Quarantine, enforced: dmarc.PolicyQuarantine, override: OverrideOther, comment: "the signature of bank.example verifies over the header"},
		{name: "a header-signed signature of another domain is no evidence",
			msg: Message{ClientIP: spoofIP, MailFrom: "x@other.example",
				DKIM: []dkim.Result{{Status: dkim.Fail, Domain: "other.example", Err: dkim.ErrBodyHash, HeaderSigned: true}}},
			action: Reject, enforced: dmarc.PolicyReject},
		{name: "strict adkim: a header-signed subdomain is not aligned",
			msg: Message{From: []string{"a@strict.example"}, ClientIP: spoofIP,
				DKIM: []dkim.Result{{Status: dkim.Fail, Domain: "mail.strict.example", Err: dkim.ErrBodyHash, HeaderSigned: true}}},
			action: Reject, enforced: dmarc.PolicyReject},
		{name: "List-Id: quarantine, mailing_list",
			msg:    Message{ClientIP: spoofIP, MailFrom: "bounce@lists.example", SPF: spfList, Header: listID},
			action: Quarantine, enforced: dmarc.PolicyQuarantine, override: OverrideMailingList, comment: "List-Id"},
		{name: "List-Post: quarantine, mailing_list",
			msg:    Message{ClientIP: spoofIP, Header: []Field{{Name: "list-post", Value: " <mailto:talk@lists.example>"}}},
			action: Quarantine, enforced: dmarc.PolicyQuarantine, override: OverrideMailingList, comment: "List-Post"},
		{name: "SRS envelope with SPF pass: quarantine",
			msg:    Message{ClientIP: spoofIP, MailFrom: "SRS0=abcd=TT=bank.example=ceo@fwd.example", SPF: spf.Result{Status: spf.Pass, Domain: "fwd.example", Identity: spf.IdentityMailFrom}},
			action: Quarantine, enforced: dmarc.PolicyQuarantine, override: OverrideOther, comment: "SRS forwarder fwd.example"},
		{name: "SRS envelope without SPF pass is no sign",
			msg:    Message{ClientIP: spoofIP, MailFrom: "SRS0=abcd=TT=bank.example=ceo@fwd.example", SPF: spf.Result{Status: spf.Fail, Domain: "fwd.example", Identity: spf.IdentityMailFrom}},
			action: Reject, enforced: dmarc.PolicyReject},
		{name: "a network that sent the domain's passing mail before: quarantine, local_policy",
			msg:    Message{ClientIP: net.ParseIP("192.0.2.77"), MailFrom: "ceo@bank.example", SPF: spfFail},
			action: Quarantine, enforced: dmarc.PolicyQuarantine, override: OverrideLocalPolicy, comment: "this network sent DMARC-passing mail for bank.example before"},
		{name: "reject_policy always: RFC 7489, even for a list",
			cfg: func(c *Config) { c.RejectPolicy = RejectAlways },
			msg: Message{ClientIP: spoofIP, Header: listID}, action: Reject, enforced: dmarc.PolicyReject},
		{name: "reject_policy never: quarantine at most",
			cfg: func(c *Config) { c.RejectPolicy = RejectNever },
			msg: Message{ClientIP: spoofIP, SPF: spfFail}, action: Quarantine, enforced: dmarc.PolicyQuarantine, override: OverrideLocalPolicy, comment: "reject_policy never"},
		{name: "quarantine = mark: a lowered reject is marked, not held",
			cfg: func(c *Config) { c.Quarantine = QuarantineMark },
			msg: Message{ClientIP: spoofIP, Header: listID}, action: Accept, enforced: dmarc.PolicyQuarantine, override: OverrideMailingList},
		{name: "p=quarantine with a List-Id stays quarantine, no override",
			msg:    Message{From: []string{"a@quarantine.example"}, ClientIP: spoofIP, Header: listID},
			action: Quarantine, enforced: dmarc.PolicyQuarantine},
		{name: "trusted forwarder by network: delivered",
			cfg: forwarders, msg: Message{ClientIP: net.ParseIP("198.51.100.3")},
			action: Accept, enforced: dmarc.PolicyNone, override: OverrideTrustedForwarder, comment: "trusted forwarder 198.51.100.3"},
		{name: "trusted forwarder by SPF-passing MAIL FROM domain",
			cfg: forwarders, msg: Message{ClientIP: spoofIP, MailFrom: "x@mx.fwd.example", SPF: spf.Result{Status: spf.Pass, Domain: "mx.fwd.example", Identity: spf.IdentityMailFrom}},
			action: Accept, enforced: dmarc.PolicyNone, override: OverrideTrustedForwarder, comment: "mx.fwd.example, SPF pass"},
		{name: "trusted forwarder by forward-confirmed reverse name",
			cfg: forwarders, msg: Message{ClientIP: net.ParseIP("198.51.100.70")},
			action: Accept, enforced: dmarc.PolicyNone, override: OverrideTrustedForwarder},
		{name: "a reverse name that does not resolve back is not trusted",
			cfg: forwarders, msg: Message{ClientIP: net.ParseIP("198.51.100.80"), SPF: spfFail},
			action: Reject, enforced: dmarc.PolicyReject},
		{name: "the HELO name alone never makes a trusted forwarder",
			cfg: forwarders, msg: Message{ClientIP: spoofIP, Helo: "relay.fwd.example", SPF: spfFail},
			action: Reject, enforced: dmarc.PolicyReject},
		{name: "trusted_forwarder_action quarantine",
			cfg: func(c *Config) { forwarders(c); c.TrustedForwarderQuarantine = true },
			msg: Message{ClientIP: net.ParseIP("198.51.100.3")}, action: Quarantine, enforced: dmarc.PolicyQuarantine, override: OverrideTrustedForwarder},
		{name: "trusted ARC sealer saying dmarc=pass: delivered",
			cfg: func(c *Config) { c.TrustedARCSealers = []string{"sealer.example"} },
			msg: Message{ClientIP: spoofIP, ARC: arcPass}, action: Accept, enforced: dmarc.PolicyNone,
			override: OverrideTrustedForwarder, comment: "arc=pass, sealed by sealer.example"},
		{name: "an ARC sealer not in the list is no evidence",
			cfg: func(c *Config) { c.TrustedARCSealers = []string{"other-sealer.example"} },
			msg: Message{ClientIP: spoofIP, SPF: spfFail, ARC: arcPass}, action: Reject, enforced: dmarc.PolicyReject},
		{name: "a trusted sealer's dmarc=pass for another domain is no evidence",
			cfg: func(c *Config) { c.TrustedARCSealers = []string{"sealer.example"} },
			msg: Message{ClientIP: spoofIP, ARC: dkim.ARCResult{Status: dkim.ARCPass, Sealer: "sealer.example", SignsFrom: true,
				Results: "sealer.example; dmarc=pass header.from=other.example"}}, action: Reject, enforced: dmarc.PolicyReject},
		{name: "a failed chain is no evidence",
			cfg:    func(c *Config) { c.TrustedARCSealers = []string{"sealer.example"} },
			msg:    Message{ClientIP: spoofIP, ARC: dkim.ARCResult{Status: dkim.ARCFail, Sealer: "sealer.example", Results: arcPass.Results}},
			action: Reject, enforced: dmarc.PolicyReject},
		{name: "a chain whose newest AMS does not sign From is no evidence",
			cfg:    func(c *Config) { c.TrustedARCSealers = []string{"sealer.example"} },
			msg:    Message{ClientIP: spoofIP, ARC: dkim.ARCResult{Status: dkim.ARCPass, Sealer: "sealer.example", Results: arcPass.Results}},
			action: Reject, enforced: dmarc.PolicyReject},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{AuthservID: "mx.example.net", RejectBadFrom: true}
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			e := New(cfg, res)
			e.UseKnownSenders(knownNets{"bank.example": {netip.MustParsePrefix("192.0.2.0/24")}})
			m := tc.msg
			if m.From == nil {
				m.From = []string{"CEO <ceo@bank.example>"}
			}
			v := e.Judge(context.Background(), &m)
			if v.DMARC.Status != dmarc.Fail {
				t.Fatalf("dmarc %s, want fail", v.DMARC.Status)
			}
			if v.Action != tc.action || v.Enforced != tc.enforced {
				t.Errorf("action %s, enforced %s; want %s, %s (overrides %+v)", v.Action, v.Enforced, tc.action, tc.enforced, v.Overrides)
			}
			var first OverrideType
			if len(v.Overrides) > 0 {
				first = v.Overrides[0].Type
			}
			if first != tc.override || !strings.Contains(v.OverrideComments(), tc.comment) {
				t.Errorf("overrides %+v, want %q with %q", v.Overrides, tc.override, tc.comment)
			}
			if tc.override != "" && v.Rule != RuleOverride {
				t.Errorf("rule %s, want %s", v.Rule, RuleOverride)
			}
			if !strings.Contains(v.Reply.Text, tc.reply) {
				t.Errorf("reply %q, want it to say %q", v.Reply.Text, tc.reply)
			}
			if ar := AuthenticationResults("mx.example.net", &m, &v); tc.override != "" && v.Action != Reject &&
				!strings.Contains(ar, "applied as "+string(tc.enforced)) {
				t.Errorf("Authentication-Results %q do not say the override", ar)
			}
		})
	}
}

// BenchmarkEvidence measures the evidence step on the path it runs on, a
// p=reject failure, with every sign checked and none found (the seed
// spoof) and with a list post, without ARC (target: under 5 µs).
func BenchmarkEvidence(b *testing.B) {
	res := &dnstest.Resolver{TXT: map[string][]string{"_dmarc.bank.example.": {"v=DMARC1; p=reject"}}}
	e := New(Config{AuthservID: "mx.example.net"}, res)
	e.UseKnownSenders(knownNets{"bank.example": {netip.MustParsePrefix("192.0.2.0/24")}})
	header := []Field{{Name: "From", Value: " ceo@bank.example"}, {Name: "To", Value: " a@mx.example.net"},
		{Name: "Subject", Value: " hello"}, {Name: "Date", Value: " Mon, 7 Dec 2026 10:00:00 +0000"}, {Name: "Message-ID", Value: " <x@bank.example>"}}
	for _, tc := range []struct {
		name   string
		header []Field
	}{
		{"spoof", header},
		{"list", append(header[:len(header):len(header)], Field{Name: "List-Id", Value: " <talk.lists.example>"})},
	} {
		b.Run(tc.name, func(b *testing.B) {
			m := &Message{From: []string{"ceo@bank.example"}, ClientIP: net.ParseIP("203.0.113.66"), MailFrom: "ceo@bank.example",
				Header: tc.header, SPF: spf.Result{Status: spf.Fail, Domain: "bank.example", Identity: spf.IdentityMailFrom}}
			v := e.Judge(context.Background(), m)
			cfg := e.cfg.Load()
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				w := v
				w.Overrides, w.Evidence = nil, ""
				e.enforce(ctx, cfg, m, &w)
			}
		})
	}
}
