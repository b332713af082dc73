package session_test

import (
	"context"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	gomilter "github.com/emersion/go-milter"
	msgdkim "github.com/emersion/go-msgauth/dkim"
	"github.com/miekg/dns"

	"github.com/dmarc-milter/dmarc-milter/milter"
	"github.com/dmarc-milter/dmarc-milter/policy"
	"github.com/dmarc-milter/dmarc-milter/session"
)

func contextWithTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

const (
	goodIP = "192.0.2.10"
	badIP  = "203.0.113.66"
)

// want describes the expected outcome of one message.
type want struct {
	code       int      // SMTP code: 250 accept, 550, 451
	text       string   // substring of the reply text
	quarantine bool     // the quarantine action was sent
	ar         []string // substrings of our Authentication-Results ("" AR means none expected)
	noAR       bool
}

// mailCase is one message of a table test: from ip with helo and
// mailFrom, and what the milter must answer.
type mailCase struct {
	name     string
	ip, helo string
	mailFrom string
	raw      string
	want     want
}

func check(t *testing.T, got outcome, w want) {
	t.Helper()
	if got.Code() != w.code {
		t.Errorf("reply code = %d (%c %q), want %d", got.Code(), got.Act.Code, got.Act.SMTPText, w.code)
	}
	if w.text != "" && !strings.Contains(got.Act.SMTPText, w.text) {
		t.Errorf("reply text %q does not contain %q", got.Act.SMTPText, w.text)
	}
	if got.Quarantined() != w.quarantine {
		t.Errorf("quarantined = %v, want %v", got.Quarantined(), w.quarantine)
	}
	ar := got.AuthResults()
	if w.noAR && ar != "" {
		t.Errorf("unexpected Authentication-Results: %q", ar)
	}
	for _, s := range w.ar {
		if !strings.Contains(ar, s) {
			t.Errorf("Authentication-Results %q does not contain %q", ar, s)
		}
	}
}

func TestPolicies(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.dns.SetServfail("_dmarc.servfail.example.", dns.TypeTXT)
	e.dns.SetServfail("spftemp.example.", dns.TypeTXT)

	rsa := func(raw string) string {
		return sign(t, raw, "pass.example", "sel1", "rsa2048.pem", msgdkim.CanonicalizationRelaxed)
	}

	tests := []mailCase{
		{
			name: "spf aligned pass", ip: goodIP, helo: "mx.pass.example", mailFrom: "bob@pass.example",
			raw:  plainMessage("Bob <bob@pass.example>", "hi"),
			want: want{code: 250, ar: []string{"mx.test.example;", "spf=pass smtp.mailfrom=bob@pass.example", "dmarc=pass", "header.from=pass.example", "policy.dmarc=reject", "dkim=none"}},
		},
		{
			name: "p=reject failure", ip: badIP, helo: "attacker.example", mailFrom: "bob@pass.example",
			raw:  plainMessage("bob@pass.example", "spoof"),
			want: want{code: 550, text: "5.7.1 Message rejected: DMARC policy of pass.example says reject", noAR: true},
		},
		{
			name: "dkim rsa aligned pass from a foreign ip", ip: badIP, helo: "list.example", mailFrom: "list@lists.example",
			raw:  rsa(plainMessage("bob@pass.example", "via list")),
			want: want{code: 250, ar: []string{"dkim=pass", "header.d=pass.example", "header.s=sel1", "header.a=rsa-sha256", "header.b=", "dmarc=pass"}},
		},
		{
			name: "dkim ed25519", ip: badIP, helo: "list.example", mailFrom: "list@lists.example",
			raw:  sign(t, plainMessage("bob@pass.example", "ed"), "pass.example", "ed", "ed25519.pem", msgdkim.CanonicalizationSimple),
			want: want{code: 250, ar: []string{"dkim=pass", "header.s=ed", "header.a=ed25519-sha256", "dmarc=pass"}},
		},
		{
			name: "dkim relaxed alignment (subdomain signer)", ip: badIP, helo: "list.example", mailFrom: "list@lists.example",
			raw:  sign(t, plainMessage("bob@pass.example", "sub"), "mail.pass.example", "sel1", "rsa2048.pem", msgdkim.CanonicalizationRelaxed),
			want: want{code: 250, ar: []string{"dkim=pass", "header.d=mail.pass.example", "dmarc=pass"}},
		},
		{
			name: "rsa key under 1024 bits does not pass (RFC 8301)", ip: badIP, helo: "list.example", mailFrom: "list@lists.example",
			raw:  sign(t, plainMessage("bob@pass.example", "weak"), "pass.example", "weak", "rsa512.pem", msgdkim.CanonicalizationRelaxed),
			want: want{code: 550},
		},
		{
			name: "broken body hash: the header signature verifies, so quarantine, not reject", ip: badIP, helo: "list.example", mailFrom: "list@lists.example",
			raw:  strings.Replace(rsa(plainMessage("bob@pass.example", "tampered")), "this is a test", "this is a TEST", 1),
			want: want{code: 250, quarantine: true, ar: []string{"dkim=fail reason=\"body hash did not verify\"", "reject applied as quarantine"}},
		},
		{
			name: "broken header signature: rejected", ip: badIP, helo: "list.example", mailFrom: "list@lists.example",
			raw:  strings.Replace(rsa(plainMessage("bob@pass.example", "tampered")), "Subject: tampered", "Subject: TAMPERED", 1),
			want: want{code: 550, text: "the signature of pass.example does not verify; SPF fail for lists.example, not pass.example"},
		},
		{
			name: "strict spf alignment fails for a subdomain", ip: goodIP, helo: "mx.strict.example", mailFrom: "bounce@mail.strict.example",
			raw:  plainMessage("bob@strict.example", "strict"),
			want: want{code: 550, text: "strict.example"},
		},
		{
			name: "p=quarantine holds", ip: badIP, helo: "x.example", mailFrom: "bob@quarantine.example",
			raw:  plainMessage("bob@quarantine.example", "q"),
			want: want{code: 250, quarantine: true, ar: []string{"dmarc=fail", "policy.dmarc=quarantine"}},
		},
		{
			name: "p=none accepts", ip: badIP, helo: "x.example", mailFrom: "bob@none.example",
			raw:  plainMessage("bob@none.example", "n"),
			want: want{code: 250, ar: []string{"dmarc=fail", "spf=fail", "policy.dmarc=none"}},
		},
		{
			name: "t=y applies the next less strict policy", ip: badIP, helo: "x.example", mailFrom: "bob@testing.example",
			raw:  plainMessage("bob@testing.example", "t"),
			want: want{code: 250, quarantine: true, ar: []string{"policy.dmarc=quarantine"}},
		},
		{
			name: "pct=0 acts as t=y", ip: badIP, helo: "x.example", mailFrom: "bob@pct0.example",
			raw:  plainMessage("bob@pct0.example", "p0"),
			want: want{code: 250, quarantine: true},
		},
		{
			name: "pct=50 acts as t=n", ip: badIP, helo: "x.example", mailFrom: "bob@pct50.example",
			raw:  plainMessage("bob@pct50.example", "p50"),
			want: want{code: 550},
		},
		{
			name: "two DMARC records mean no policy", ip: badIP, helo: "x.example", mailFrom: "bob@dup.example",
			raw:  plainMessage("bob@dup.example", "dup"),
			want: want{code: 250, ar: []string{"dmarc=none"}},
		},
		{
			name: "malformed DMARC record", ip: badIP, helo: "x.example", mailFrom: "bob@malformed.example",
			raw:  plainMessage("bob@malformed.example", "bad"),
			want: want{code: 250},
		},
		{
			name: "SERVFAIL on the DMARC record is a temperror, never a reject", ip: badIP, helo: "x.example", mailFrom: "bob@servfail.example",
			raw:  plainMessage("bob@servfail.example", "sf"),
			want: want{code: 451, text: "4.7.5"},
		},
		{
			name: "SPF temperror with p=reject is a tempfail, not a reject", ip: badIP, helo: "x.example", mailFrom: "bob@spftemp.example",
			raw:  plainMessage("bob@spftemp.example", "spftemp"),
			want: want{code: 451, text: "4.7.5"},
		},
		{
			name: "SPF record over 255 bytes", ip: goodIP, helo: "x.example", mailFrom: "bob@long.example",
			raw:  plainMessage("bob@long.example", "long"),
			want: want{code: 250, ar: []string{"spf=pass", "dmarc=pass"}},
		},
		{
			name: "np for a non-existent subdomain", ip: badIP, helo: "x.example", mailFrom: "bob@nx.org.example",
			raw:  plainMessage("bob@nx.org.example", "np"),
			want: want{code: 550},
		},
		{
			name: "sp for an existing subdomain", ip: badIP, helo: "x.example", mailFrom: "bob@exists.org.example",
			raw:  plainMessage("bob@exists.org.example", "sp"),
			want: want{code: 250, quarantine: true},
		},
		{
			name: "display name with an address does not change the domain", ip: badIP, helo: "x.example", mailFrom: "bob@evil.example",
			raw:  plainMessage(`"bob@none.example" <bob@pass.example>`, "dn"),
			want: want{code: 550, text: "pass.example"},
		},
		{
			name: "encoded word and comment do not change the domain", ip: badIP, helo: "x.example", mailFrom: "bob@evil.example",
			raw:  plainMessage(`=?utf-8?q?bob=40none=2Eexample?= <bob@PASS.example> (none.example)`, "ew"),
			want: want{code: 550, text: "pass.example"},
		},
		{
			name: "no From header", ip: goodIP, helo: "x.example", mailFrom: "bob@pass.example",
			raw:  message([]string{"To: rcpt@test.example", "Subject: nofrom"}, "x\n"),
			want: want{code: 550, text: "no From header"},
		},
		{
			name: "two From headers", ip: goodIP, helo: "x.example", mailFrom: "bob@pass.example",
			raw:  message([]string{"From: bob@pass.example", "From: eve@evil.example", "Subject: two"}, "x\n"),
			want: want{code: 550, text: "more than one From"},
		},
		{
			name: "two authors, the second without DMARC: the strictest result is none", ip: goodIP, helo: "x.example", mailFrom: "bob@pass.example",
			raw:  message([]string{"From: bob@pass.example, eve@evil.example", "Subject: two"}, "x\n"),
			want: want{code: 250, ar: []string{"dmarc=none", "header.from=evil.example"}},
		},
		{
			name: "two authors in one domain pass", ip: goodIP, helo: "x.example", mailFrom: "bob@pass.example",
			raw:  message([]string{"From: alice@pass.example, Bob <bob@PASS.example>", "Subject: two"}, "x\n"),
			want: want{code: 250, ar: []string{"dmarc=pass", "header.from=pass.example"}},
		},
		{
			name: "a spoof never rides on a second, passing author", ip: goodIP, helo: "x.example", mailFrom: "bob@pass.example",
			raw:  message([]string{"From: bob@pass.example, ceo@kantiflow.xyz", "Subject: two"}, "x\n"),
			want: want{code: 550, text: "kantiflow.xyz"},
		},
		{
			name: "six author domains are a bad From", ip: goodIP, helo: "x.example", mailFrom: "bob@pass.example",
			raw:  message([]string{"From: a@a.example, b@b.example, c@c.example, d@d.example, e@e.example, f@f.example", "Subject: six"}, "x\n"),
			want: want{code: 550, text: "more than 5 domains"},
		},
		{
			name: "obsolete route form (RFC 5322 section 4.4)", ip: goodIP, helo: "x.example", mailFrom: "bob@pass.example",
			raw:  message([]string{"From: <@relay.test:bob@pass.example>", "Subject: route"}, "x\n"),
			want: want{code: 250, ar: []string{"dmarc=pass", "header.from=pass.example"}},
		},
		{
			name: "unparseable From", ip: goodIP, helo: "x.example", mailFrom: "bob@pass.example",
			raw:  message([]string{"From: <<bob@@pass.example", "Subject: junk"}, "x\n"),
			want: want{code: 550, text: "unparseable From"},
		},
		{
			name: "HELO pass never stands in for a failing MAIL FROM", ip: goodIP, helo: "helo.example", mailFrom: "bob@kantiflow.xyz",
			raw:  plainMessage("bob@kantiflow.xyz", "helo"),
			want: want{code: 550},
		},
		{
			name: "null sender uses the HELO identity", ip: goodIP, helo: "helo.example", mailFrom: "",
			raw:  plainMessage("mailer-daemon@helo.example", "bounce"),
			want: want{code: 250, ar: []string{"spf=pass smtp.mailfrom=postmaster@helo.example", "spf=pass smtp.helo=helo.example", "dmarc=pass"}},
		},
		{
			name: "seed: kantiflow.xyz from outside its SPF record is rejected", ip: badIP, helo: "spam.example", mailFrom: "JONqjnh@kantiflow.xyz",
			raw:  plainMessage("JONqjnh@kantiflow.xyz", "spam"),
			want: want{code: 550, text: "kantiflow.xyz"},
		},
		{
			name: "seed: chatorbay.xyz from 8.8.8.8 passes", ip: "8.8.8.8", helo: "mail.chatorbay.xyz", mailFrom: "JMCcPbc@chatorbay.xyz",
			raw:  plainMessage("JMCcPbc@chatorbay.xyz", "ok"),
			want: want{code: 250, ar: []string{"spf=pass", "dmarc=pass", "header.from=chatorbay.xyz"}},
		},
		{
			name: "no DMARC record", ip: badIP, helo: "x.example", mailFrom: "bob@unknown-domain.example",
			raw:  plainMessage("bob@unknown-domain.example", "none"),
			want: want{code: 250, ar: []string{"dmarc=none"}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := e.run(tc.ip, tc.helo, msg{mailFrom: tc.mailFrom, raw: tc.raw})
			check(t, got, tc.want)
		})
	}
}

// c=simple signatures over folded headers verify because header fields are
// rebuilt byte-exactly. With SMFIP_HDR_LEADSPC (which Postfix offers and we
// negotiate) every header verifies; without it the MTA strips one leading
// space, so a field written without a space after the colon cannot be
// rebuilt and only c=relaxed survives it.
func TestFoldedHeadersSimpleCanonicalization(t *testing.T) {
	e := newEnv(t, envOptions{})
	build := func(to string) string {
		return message([]string{
			"From: Bob\r\n  <bob@pass.example>",
			to,
			"Subject:   folded\r\n\tsubject  line\r\n   continued",
			"Date: Mon, 23 Nov 2026 10:00:00 +0000",
			"Message-ID: <fold@test.example>",
		}, "Body line 1\n\nBody  line   3\n\n\n")
	}
	for _, tc := range []struct {
		to      string
		canon   msgdkim.Canonicalization
		leadspc bool
		pass    bool
	}{
		{"To:rcpt@test.example", msgdkim.CanonicalizationSimple, true, true},
		{"To:rcpt@test.example", msgdkim.CanonicalizationRelaxed, true, true},
		{"To:rcpt@test.example", msgdkim.CanonicalizationRelaxed, false, true},
		{"To:rcpt@test.example", msgdkim.CanonicalizationSimple, false, false},
		{"To: rcpt@test.example", msgdkim.CanonicalizationSimple, false, true},
		{"To: rcpt@test.example", msgdkim.CanonicalizationSimple, true, true},
	} {
		proto := milter.PostfixProtocol
		if !tc.leadspc {
			proto &^= gomilter.OptHeaderLeadingSpace
		}
		s := e.dial(proto)
		connectAndHelo(t, s, badIP, "list.example")
		got := send(t, s, msg{mailFrom: "list@lists.example", raw: sign(t, build(tc.to), "pass.example", "sel1", "rsa2048.pem", tc.canon)})
		if pass := strings.Contains(got.AuthResults(), "dkim=pass"); pass != tc.pass {
			t.Errorf("%q c=%s leadspc=%v: dkim pass = %v, want %v (reply %d, A-R %q)", tc.to, tc.canon, tc.leadspc, pass, tc.pass, got.Code(), got.AuthResults())
		}
	}
}

func TestForgedAuthenticationResultsRemoved(t *testing.T) {
	e := newEnv(t, envOptions{})
	raw := message([]string{
		"Authentication-Results: other.example; spf=pass smtp.mailfrom=x@pass.example",
		"Authentication-Results: MX.TEST.EXAMPLE; dmarc=pass header.from=pass.example",
		"Authentication-Results: (forged) mx.test.example (comment); dkim=pass",
		"From: bob@pass.example",
		"Subject: forged",
	}, "x\n")
	got := e.run(goodIP, "mx.pass.example", msg{mailFrom: "bob@pass.example", raw: raw})
	var removed []uint32
	for _, m := range got.Mods {
		if m.Code == gomilter.ActChangeHeader {
			if m.HeaderName != "Authentication-Results" || m.HeaderValue != "" {
				t.Errorf("unexpected header change %+v", m)
			}
			removed = append(removed, m.HeaderIndex)
		}
	}
	// The 2nd and 3rd Authentication-Results fields are ours, removed
	// highest first; the first one (another authserv-id) stays.
	if len(removed) != 2 || removed[0] != 3 || removed[1] != 2 {
		t.Errorf("removed indexes %v, want [3 2]", removed)
	}
	// Removals come before our insertion, so indexes are not shifted by it.
	last := got.Mods[len(got.Mods)-1]
	if last.Code != gomilter.ActInsertHeader || last.HeaderIndex != 0 {
		t.Errorf("last modification %+v, want our header inserted at 0", last)
	}
	check(t, got, want{code: 250, ar: []string{"dmarc=pass"}})
}

// With SMFIP_HDR_LEADSPC the MTA adds no space before inserted values.
func TestInsertedHeaderLeadingSpace(t *testing.T) {
	e := newEnv(t, envOptions{})
	for _, proto := range []gomilter.OptProtocol{milter.PostfixProtocol, milter.PostfixProtocol &^ gomilter.OptHeaderLeadingSpace} {
		s := e.dial(proto)
		connectAndHelo(t, s, goodIP, "mx.pass.example")
		got := send(t, s, msg{mailFrom: "bob@pass.example", raw: plainMessage("bob@pass.example", "ls")})
		ar := got.AuthResults()
		lead := proto&gomilter.OptHeaderLeadingSpace != 0
		if strings.HasPrefix(ar, " ") != lead {
			t.Errorf("leadspc=%v: A-R value %q", lead, ar)
		}
		if strings.Contains(ar, "\r") || !strings.Contains(ar, "\n\t") {
			t.Errorf("A-R must be folded with bare LF: %q", ar)
		}
	}
}

func TestLocalPolicy(t *testing.T) {
	spoof := plainMessage("bob@pass.example", "spoof")
	tests := []struct {
		name   string
		policy func(*policy.Config)
		ip     string
		auth   string
		want   want
	}{
		{"authenticated client", nil, badIP, "alice", want{code: 250, ar: []string{"dmarc=fail"}}},
		{"trusted network", func(c *policy.Config) {
			c.TrustedNetworks = append(c.TrustedNetworks, mustPrefix("203.0.113.0/24"))
		}, badIP, "", want{code: 250, ar: []string{"dmarc=fail"}}},
		{"default loopback is trusted", func(c *policy.Config) {
			c.TrustedNetworks = append(c.TrustedNetworks, mustPrefix("127.0.0.0/8"))
		}, "127.0.0.1", "", want{code: 250, ar: []string{"dmarc=fail"}}},
		{"exempt sender domain", func(c *policy.Config) { c.ExemptDomains = []string{"PASS.example"} }, badIP, "", want{code: 250, ar: []string{"dmarc=fail"}}},
		{"monitor mode", func(c *policy.Config) { c.Monitor = true }, badIP, "", want{code: 250, ar: []string{"dmarc=fail", "policy.dmarc=reject"}}},
		{"custom reject text with percent", func(c *policy.Config) { c.RejectText = "100% spoofed {domain}" }, badIP, "", want{code: 550, text: "100%% spoofed pass.example"}},
		{"enforced otherwise", nil, badIP, "", want{code: 550}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envOptions{policy: tc.policy})
			s := e.dial(0)
			connectAndHelo(t, s, tc.ip, "x.example")
			check(t, send(t, s, msg{mailFrom: "bob@pass.example", authUser: tc.auth, raw: spoof}), tc.want)
		})
	}

	t.Run("quarantine mark only", func(t *testing.T) {
		e := newEnv(t, envOptions{policy: func(c *policy.Config) { c.Quarantine = policy.QuarantineMark }})
		got := e.run(badIP, "x.example", msg{mailFrom: "bob@quarantine.example", raw: plainMessage("bob@quarantine.example", "q")})
		check(t, got, want{code: 250, quarantine: false, ar: []string{"dmarc=fail", "policy.dmarc=quarantine"}})
	})
	t.Run("bad From accepted when not rejecting", func(t *testing.T) {
		e := newEnv(t, envOptions{policy: func(c *policy.Config) { c.RejectBadFrom = false }})
		raw := message([]string{"From: a@pass.example", "From: b@pass.example", "Subject: x"}, "x\n")
		got := e.run(badIP, "x.example", msg{mailFrom: "bob@pass.example", raw: raw})
		check(t, got, want{code: 250, ar: []string{"dmarc=permerror"}})
	})
	t.Run("temperror accept", func(t *testing.T) {
		e := newEnv(t, envOptions{policy: func(c *policy.Config) { c.TempErrorAccept = true }})
		e.dns.SetServfail("_dmarc.servfail.example.", dns.TypeTXT)
		got := e.run(badIP, "x.example", msg{mailFrom: "bob@servfail.example", raw: plainMessage("bob@servfail.example", "sf")})
		check(t, got, want{code: 250, ar: []string{"dmarc=temperror"}})
	})
}

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func TestDNSTimeoutIsTempFail(t *testing.T) {
	e := newEnv(t, envOptions{dnsTimout: 100 * time.Millisecond})
	e.dns.SetTimeout("_dmarc.slow.example.", dns.TypeTXT)
	got := e.run(badIP, "x.example", msg{mailFrom: "bob@slow.example", raw: plainMessage("bob@slow.example", "slow")})
	check(t, got, want{code: 451, text: "4.7.5"})
}

// TestCheckTimeoutBoundsEachStage: when a DNS server does not answer, a
// stage waits check_timeout, not the resolver's longer query timeout. The
// budget is armed only when a lookup waits (resolver.WithBudget), so this
// is what proves it armed: the query timeout is 10 s, the budget 300 ms.
func TestCheckTimeoutBoundsEachStage(t *testing.T) {
	const budget = 300 * time.Millisecond
	for _, tc := range []struct {
		name  string
		qname string // the question left unanswered
		log   string // what the verdict line says of it
	}{
		// An aligned SPF temperror makes DMARC's outcome unknown too.
		{"SPF at MAIL FROM", "slow.example.", `"spf":"temperror"`},
		{"DMARC at end of message", "_dmarc.slow.example.", `"dmarc":"temperror"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envOptions{dnsTimout: 10 * time.Second, settings: func(s *session.Settings) { s.CheckTimeout = budget }})
			e.dns.SetTimeout(tc.qname, dns.TypeTXT)
			start := time.Now()
			got := e.run(badIP, "x.example", msg{mailFrom: "bob@slow.example", raw: plainMessage("bob@slow.example", "slow")})
			if elapsed := time.Since(start); elapsed > 5*time.Second {
				t.Errorf("the message took %v with a %v budget: the stage waited for the query timeout", elapsed, budget)
			}
			check(t, got, want{code: 451, text: "4.7.5"})
			if !strings.Contains(e.logs.String(), tc.log) {
				t.Errorf("the verdict line does not say %s:\n%s", tc.log, e.logs.String())
			}
		})
	}
}

// TestCheckTimeoutBoundsTheMessage: check_timeout is the whole message's
// DNS wait, not each stage's. With both the MAIL FROM domain's SPF record
// and its DMARC record unanswered, SPF waits out the budget and the end of
// the message has nothing left to wait for: the reply comes after about
// one budget (issue 21; two budgets before, one per stage).
func TestCheckTimeoutBoundsTheMessage(t *testing.T) {
	const budget = time.Second
	e := newEnv(t, envOptions{dnsTimout: 10 * time.Second, settings: func(s *session.Settings) { s.CheckTimeout = budget }})
	e.dns.SetTimeout("slow.example.", dns.TypeTXT)
	e.dns.SetTimeout("_dmarc.slow.example.", dns.TypeTXT)
	start := time.Now()
	got := e.run(badIP, "x.example", msg{mailFrom: "bob@slow.example", raw: plainMessage("bob@slow.example", "slow")})
	elapsed := time.Since(start)
	if elapsed < budget || elapsed > budget*3/2 {
		t.Errorf("the message waited %v for DNS with check_timeout %v, want about %v", elapsed, budget, budget)
	}
	check(t, got, want{code: 451, text: "4.7.5"})
	for _, s := range []string{`"spf":"temperror"`, `"dmarc":"temperror"`} {
		if !strings.Contains(e.logs.String(), s) {
			t.Errorf("the verdict line does not say %s:\n%s", s, e.logs.String())
		}
	}
}

// Three messages on one connection are each judged with the connection's
// client address and HELO, across a reject and an abort.
func TestThreeMessagesOnOneConnection(t *testing.T) {
	e := newEnv(t, envOptions{})
	s := e.dial(0)
	connectAndHelo(t, s, goodIP, "mx.pass.example")

	check(t, send(t, s, msg{mailFrom: "bob@pass.example", raw: plainMessage("bob@pass.example", "1")}),
		want{code: 250, ar: []string{"spf=pass", "dmarc=pass", "smtp.helo=mx.pass.example"}})
	check(t, send(t, s, msg{mailFrom: "eve@kantiflow.xyz", raw: plainMessage("eve@kantiflow.xyz", "2")}),
		want{code: 550, text: "kantiflow.xyz"})

	// An aborted transaction in between.
	if _, err := s.Mail("carol@pass.example", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.HeaderField("From", " carol@pass.example"); err != nil {
		t.Fatal(err)
	}
	if err := s.Abort(); err != nil {
		t.Fatal(err)
	}

	check(t, send(t, s, msg{mailFrom: "bob@pass.example", raw: plainMessage("bob@pass.example", "3")}),
		want{code: 250, ar: []string{"spf=pass smtp.mailfrom=bob@pass.example", "dmarc=pass", "smtp.helo=mx.pass.example"}})
	if n := strings.Count(e.logs.String(), `"client_ip":"192.0.2.10"`); n != 3 {
		t.Errorf("%d summary lines with the client address, want 3:\n%s", n, e.logs.String())
	}
}

// A warm cache sends no upstream query for a repeated sender.
func TestWarmCacheSendsNoQuery(t *testing.T) {
	e := newEnv(t, envOptions{})
	m := msg{mailFrom: "bob@pass.example", raw: sign(t, plainMessage("bob@pass.example", "w"), "pass.example", "sel1", "rsa2048.pem", msgdkim.CanonicalizationRelaxed)}
	check(t, e.run(goodIP, "mx.pass.example", m), want{code: 250, ar: []string{"dkim=pass", "dmarc=pass"}})
	before := e.dns.Queries()
	up := e.res.Stats().Upstream
	check(t, e.run(goodIP, "mx.pass.example", m), want{code: 250, ar: []string{"dkim=pass", "dmarc=pass"}})
	if got := e.dns.Queries() - before; got != 0 {
		t.Errorf("warm cache: %d queries reached the DNS server", got)
	}
	if got := e.res.Stats().Upstream - up; got != 0 {
		t.Errorf("warm cache: resolver sent %d upstream queries", got)
	}
}

func TestSummaryLog(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.run(badIP, "x.example", msg{mailFrom: "bob@pass.example", queueID: "QID123", raw: plainMessage("bob@pass.example", "log")})
	line := e.logs.String()
	for _, s := range []string{`"queue_id":"QID123"`, `"client_ip":"203.0.113.66"`, `"from_domain":"pass.example"`,
		`"spf":"fail"`, `"dkim":[]`, `"dmarc":"fail"`, `"policy":"reject"`, `"action":"reject"`, `"message":"verdict"`, `"elapsed_ms":`} {
		if !strings.Contains(line, s) {
			t.Errorf("summary log lacks %s:\n%s", s, line)
		}
	}
	if n := strings.Count(line, `"message":"verdict"`); n != 1 {
		t.Errorf("%d summary lines, want 1", n)
	}
}

func TestPanicEndsOnlyThatSession(t *testing.T) {
	e := newEnv(t, envOptions{settings: func(s *session.Settings) {
		s.Consumers = []session.Consumer{session.ConsumerFunc(func(j *policy.Judged) {
			if j.QueueID == "PANIC" {
				panic("boom")
			}
		})}
	}})
	other := e.dial(0)
	connectAndHelo(t, other, goodIP, "mx.pass.example")

	s := e.dial(0)
	connectAndHelo(t, s, goodIP, "mx.pass.example")
	s.Macros(gomilter.CodeMail)
	s.Mail("bob@pass.example", nil)
	s.HeaderField("From", " bob@pass.example")
	s.HeaderEnd()
	s.Macros(gomilter.CodeEOB, "i", "PANIC")
	if _, _, err := s.End(); err == nil {
		t.Error("the panicking session answered")
	}
	// The other connection, open all along, still works.
	check(t, send(t, other, msg{mailFrom: "bob@pass.example", raw: plainMessage("bob@pass.example", "ok")}), want{code: 250})
	if !strings.Contains(e.logs.String(), "panic in milter session") {
		t.Errorf("panic not logged:\n%s", e.logs.String())
	}
}

// Shutdown lets a message in progress finish, then ends the session.
func TestShutdownDrains(t *testing.T) {
	e := newEnv(t, envOptions{})
	// Without the no-reply options, so that MAIL is answered (and thus
	// processed) before Shutdown starts.
	s := e.dial(milter.PostfixProtocol &^ (gomilter.OptNoMailReply | gomilter.OptNoHeaderReply | gomilter.OptNoEOHReply))
	connectAndHelo(t, s, goodIP, "mx.pass.example")
	idle := e.dial(0)
	connectAndHelo(t, idle, goodIP, "mx.pass.example")

	s.Macros(gomilter.CodeMail)
	if _, err := s.Mail("bob@pass.example", nil); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- e.srv.Shutdown(contextWithTimeout(t, 10*time.Second)) }()
	time.Sleep(100 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned while a message was in progress: %v", err)
	default:
	}
	s.HeaderField("From", " bob@pass.example")
	s.HeaderEnd()
	_, act, err := s.End()
	if err != nil || act.Code != gomilter.ActContinue {
		t.Fatalf("message in progress during shutdown: %v %+v", err, act)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not finish after the message ended")
	}
	if n := e.srv.ActiveConns(); n != 0 {
		t.Errorf("%d connections open after shutdown", n)
	}
}

// Reply text reaches the MTA with '%' escaped and line breaks removed.
func TestSMTPReplyEscapes(t *testing.T) {
	e := newEnv(t, envOptions{policy: func(c *policy.Config) { c.RejectText = "50% off\r\nnext" }})
	got := e.run(badIP, "x.example", msg{mailFrom: "bob@pass.example", raw: plainMessage("bob@pass.example", "pct")})
	if got.Act.Code != gomilter.ActReplyCode || got.Act.SMTPCode != 550 || got.Act.SMTPText != "5.7.1 50%% off  next" {
		t.Errorf("reply %+v", got.Act)
	}
}

// A 50 MB message streams through the milter without the live heap
// growing with it (issue target: less than 16 MB).
func TestLargeMessageMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("50 MB message")
	}
	e := newEnv(t, envOptions{})
	s := e.dial(0)
	connectAndHelo(t, s, goodIP, "mx.pass.example")
	line := strings.Repeat("x", 76) + "\r\n"
	chunk := []byte(strings.Repeat(line, gomilter.MaxBodyChunk/len(line)))
	signed := sign(t, plainMessage("bob@pass.example", "big"), "pass.example", "sel1", "rsa2048.pem", msgdkim.CanonicalizationRelaxed)
	fields, _ := splitMessage(t, signed, true)

	s.Macros(gomilter.CodeMail)
	s.Mail("bob@pass.example", nil)
	for _, f := range fields {
		s.HeaderField(f[0], f[1])
	}
	s.HeaderEnd()

	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	base, peak := ms.HeapAlloc, ms.HeapAlloc
	for i, n := 0, 0; n < 50<<20; i++ {
		if _, err := s.BodyChunk(chunk); err != nil {
			t.Fatal(err)
		}
		n += len(chunk)
		if i%100 == 99 {
			runtime.GC()
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapAlloc)
		}
	}
	_, act, err := s.End()
	if err != nil {
		t.Fatal(err)
	}
	// The body was not the signed one: DKIM fails, SPF passes: accepted.
	if act.Code != gomilter.ActContinue {
		t.Errorf("action %+v", act)
	}
	t.Logf("50 MB message: live heap grew by at most %d KiB", (peak-base)>>10)
	if peak-base > 16<<20 {
		t.Errorf("live heap grew by %d bytes, want < 16 MB", peak-base)
	}
}

// A client without an IP address (Postfix's smtpd on a unix socket, or an
// unknown family) is local: stamped, never enforced.
func TestLocalClientWithoutAddress(t *testing.T) {
	e := newEnv(t, envOptions{})
	s := e.dial(0)
	if _, err := s.Conn("localhost", gomilter.FamilyUnix, 0, "/var/run/smtp.sock"); err != nil {
		t.Fatal(err)
	}
	s.Helo("localhost")
	got := send(t, s, msg{mailFrom: "bob@pass.example", raw: plainMessage("bob@pass.example", "local")})
	check(t, got, want{code: 250, ar: []string{"dmarc=fail"}})
	if !strings.Contains(e.logs.String(), `"exempt":"local-client"`) {
		t.Errorf("not logged as a local client:\n%s", e.logs.String())
	}
}

// The body is kept for failure reports only up to KeepBody+1 bytes, and the
// report sees the header fields as received.
func TestReportKeepsBoundedBody(t *testing.T) {
	for _, keep := range []int{0, 10, 1 << 20} {
		reports := make(chan *policy.Judged, 1)
		e := newEnv(t, envOptions{settings: func(s *session.Settings) {
			s.KeepBody = keep
			s.Consumers = []session.Consumer{session.ConsumerFunc(func(j *policy.Judged) { reports <- j })}
		}})
		raw := plainMessage("bob@pass.example", "keep")
		check(t, e.run(badIP, "x.example", msg{mailFrom: "bob@pass.example", raw: raw}), want{code: 550})
		var got *policy.Judged
		select {
		case got = <-reports:
		case <-time.After(5 * time.Second):
			t.Fatalf("keep=%d: no report", keep)
		}
		_, body, _ := strings.Cut(raw, "\r\n\r\n")
		wantBody := body
		switch {
		case keep == 0:
			wantBody = ""
		case keep+1 < len(body):
			wantBody = body[:keep+1]
		}
		if string(got.Body) != wantBody {
			t.Errorf("keep=%d: body %q, want %q", keep, got.Body, wantBody)
		}
		if len(got.Header) != 5 || got.Header[0].Name != "From" || !got.LeadingSpace || got.AuthResults == "" ||
			got.Verdict.Action != policy.Reject || got.ClientIP.String() != badIP {
			t.Errorf("keep=%d: report %+v", keep, got)
		}
	}
}

// TestRejectMultiAuthor: the explicit local rule rejects several addresses
// in From before DMARC, even in one domain.
func TestRejectMultiAuthor(t *testing.T) {
	e := newEnv(t, envOptions{policy: func(c *policy.Config) { c.RejectMultiAuthor = true }})
	got := e.run(goodIP, "x.example", msg{mailFrom: "bob@pass.example",
		raw: message([]string{"From: alice@pass.example, bob@pass.example", "Subject: two"}, "x\n")})
	check(t, got, want{code: 550, text: "more than one address in the From header field"})
	got = e.run(goodIP, "x.example", msg{mailFrom: "bob@pass.example", raw: plainMessage("bob@pass.example", "one")})
	check(t, got, want{code: 250, ar: []string{"dmarc=pass"}})
}
