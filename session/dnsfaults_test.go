package session_test

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/dmarc-milter/dmarc-milter/policy"
	"github.com/dmarc-milter/dmarc-milter/policy/dmarc"
	"github.com/dmarc-milter/dmarc-milter/policy/spf"

	gomilter "github.com/emersion/go-milter"
	msgdkim "github.com/emersion/go-msgauth/dkim"
	"github.com/miekg/dns"

	"github.com/dmarc-milter/dmarc-milter/session"
)

// TestFailureAboveAuthorDomain: a name above the From domain's own record
// fails (here the test TLD's _dmarc.example., as _dmarc.com. might in real
// life). Only what the verdict needs is asked, so mail whose outcome that
// answer cannot change is neither deferred nor delayed.
func TestFailureAboveAuthorDomain(t *testing.T) {
	for _, fault := range []string{"servfail", "timeout"} {
		t.Run(fault, func(t *testing.T) {
			e := newEnv(t, envOptions{})
			if fault == "servfail" {
				e.dns.SetServfail("_dmarc.example.", dns.TypeTXT)
			} else {
				e.dns.SetTimeout("_dmarc.example.", dns.TypeTXT)
			}
			tests := []struct {
				name     string
				ip       string
				mailFrom string
				want     want
			}{
				{"own record, identical SPF pass", goodIP, "bob@pass.example", want{code: 250, ar: []string{"dmarc=pass"}}},
				{"own p=none, SPF fails", badIP, "bob@none.example", want{code: 250, ar: []string{"dmarc=fail", "policy.dmarc=none"}}},
				{"own p=reject, SPF fails, nothing passes", badIP, "bob@pass.example", want{code: 550, text: "pass.example"}},
				{"own p=quarantine, SPF fails", badIP, "bob@quarantine.example", want{code: 250, quarantine: true}},
			}
			for _, tc := range tests {
				t.Run(tc.name, func(t *testing.T) {
					got := e.run(tc.ip, "x.example", msg{mailFrom: tc.mailFrom, raw: plainMessage(tc.mailFrom, tc.name)})
					check(t, got, tc.want)
				})
			}
			if n := e.dns.QueryCount("_dmarc.example.", dns.TypeTXT); n != 0 {
				t.Errorf("_dmarc.example. asked %d times; no verdict above needed it", n)
			}

			// A domain without its own record needs the walk. An identical
			// SPF pass leaves the disposition none whatever the parent
			// holds: accepted, and the failure is remembered, so the next
			// messages do not ask (or wait) again.
			for i := range 3 {
				got := e.run(goodIP, "x.example", msg{mailFrom: "bob@nodmarc.example", raw: plainMessage("bob@nodmarc.example", "walk")})
				check(t, got, want{code: 250, ar: []string{"spf=pass"}})
				if n := e.dns.QueryCount("_dmarc.example.", dns.TypeTXT); n != 1 {
					t.Errorf("after message %d: _dmarc.example. asked %d times, want 1 (failure cached)", i+1, n)
				}
			}

			// mail.pass.example has no record of its own: the walk finds
			// pass.example's, and the failing _dmarc.example. could hold
			// anything without changing the verdict (an identical SPF
			// pass): ignored, and logged at debug level.
			got := e.run(goodIP, "x.example", msg{mailFrom: "bob@mail.pass.example", raw: plainMessage("bob@mail.pass.example", "sub")})
			check(t, got, want{code: 250, ar: []string{"dmarc=pass"}})
			if !strings.Contains(e.logs.String(), "lookup failure ignored") {
				t.Error("the ignored failure was not logged")
			}
		})
	}
}

// TestSlowSender: the DNS budget counts DNS time, never the time the
// client takes to send. The client here needs twice the check timeout
// between the header and the end of the message; DNS is healthy.
func TestSlowSender(t *testing.T) {
	const budget = 300 * time.Millisecond
	e := newEnv(t, envOptions{settings: func(s *session.Settings) { s.CheckTimeout = budget }})
	for _, from := range []string{"bob@pass.example", "bob@none.example", "bob@quarantine.example", "bob@nodmarc.example"} {
		t.Run(from, func(t *testing.T) {
			s := e.dial(0)
			connectAndHelo(t, s, goodIP, "x.example")
			if err := s.Macros(gomilter.CodeMail, "{mail_addr}", from); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Mail(from, nil); err != nil {
				t.Fatal(err)
			}
			fields, body := splitMessage(t, plainMessage(from, "slow"), s.ProtocolOption(gomilter.OptHeaderLeadingSpace))
			for _, f := range fields {
				if _, err := s.HeaderField(f[0], f[1]); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := s.HeaderEnd(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(budget * 2)
			if _, err := s.BodyChunk([]byte(body)); err != nil {
				t.Fatal(err)
			}
			mods, act, err := s.End()
			if err != nil {
				t.Fatal(err)
			}
			check(t, outcome{Act: act, Mods: mods}, want{code: 250})
		})
	}
}

// TestDMARCLookupStartsAtEndOfHeader: the Author Domain's policy lookup
// starts as soon as the From field is known, while the body arrives.
func TestDMARCLookupStartsAtEndOfHeader(t *testing.T) {
	e := newEnv(t, envOptions{})
	s := e.dial(0)
	connectAndHelo(t, s, goodIP, "x.example")
	if _, err := s.Mail("bob@pass.example", nil); err != nil {
		t.Fatal(err)
	}
	fields, _ := splitMessage(t, plainMessage("Bob <bob@pass.example>", "early"), s.ProtocolOption(gomilter.OptHeaderLeadingSpace))
	for _, f := range fields {
		if _, err := s.HeaderField(f[0], f[1]); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.HeaderEnd(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for e.dns.QueryCount("_dmarc.pass.example.", dns.TypeTXT) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no DMARC query after the end of the header")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestFaultyAnswers: an answer for another name, a CNAME loop or an overlong
// CNAME chain is a DNS fault. It never becomes a permanent verdict (a DKIM
// permerror that rejects validly signed mail) nor erases a policy (a
// _dmarc record read as absent): the message is deferred.
func TestFaultyAnswers(t *testing.T) {
	e := newEnv(t, envOptions{})
	// DKIM key of pass.example answered with another owner name.
	e.dns.SetAnswerOwner("sel1._domainkey.pass.example.", dns.TypeTXT, "elsewhere.example.")
	signed := sign(t, plainMessage("bob@pass.example", "dkim"), "pass.example", "sel1", "rsa2048.pem", msgdkim.CanonicalizationRelaxed)
	got := e.run(badIP, "x.example", msg{mailFrom: "bob@elsewhere.example", raw: signed})
	check(t, got, want{code: 451, text: "4.7.5"})

	// Policies behind a CNAME loop, a chain of 20 CNAMEs, and an answer
	// for another name.
	rrs := []string{
		`loopy.example. 300 IN TXT "v=spf1 ip4:192.0.2.10 -all"`,
		"_dmarc.loopy.example. 300 IN CNAME loop1.example.",
		"loop1.example. 300 IN CNAME loop2.example.",
		"loop2.example. 300 IN CNAME loop1.example.",
		`chain.example. 300 IN TXT "v=spf1 ip4:192.0.2.10 -all"`,
		"_dmarc.chain.example. 300 IN CNAME c1.example.",
		`c20.example. 300 IN TXT "v=DMARC1; p=reject"`,
		`owner.example. 300 IN TXT "v=spf1 ip4:192.0.2.10 -all"`,
		`_dmarc.owner.example. 300 IN TXT "v=DMARC1; p=reject"`,
	}
	for i := 1; i < 20; i++ {
		rrs = append(rrs, fmt.Sprintf("c%d.example. 300 IN CNAME c%d.example.", i, i+1))
	}
	for _, rr := range rrs {
		if err := e.dns.AddRecord(rr); err != nil {
			t.Fatal(err)
		}
	}
	e.dns.SetAnswerOwner("_dmarc.owner.example.", dns.TypeTXT, "elsewhere.example.")
	for _, d := range []string{"loopy.example", "chain.example", "owner.example"} {
		got = e.run(badIP, "x.example", msg{mailFrom: "bob@" + d, raw: plainMessage("bob@"+d, "faulty")})
		check(t, got, want{code: 451, text: "4.7.5"})
	}
}

// TestSPFIdentitiesInParallel: the HELO and MAIL FROM checks do not
// depend on each other (RFC 7208 section 2.3), so a black-holed name
// server costs their first lookups one timeout, not one each.
func TestSPFIdentitiesInParallel(t *testing.T) {
	const timeout = 300 * time.Millisecond
	e := newEnv(t, envOptions{dnsTimout: timeout})
	e.dns.SetTimeout("slowmail.example.", dns.TypeTXT)
	e.dns.SetTimeout("slowhelo.example.", dns.TypeTXT)
	p := session.NewPipeline(e.settings)
	c := session.Client{IP: net.ParseIP(goodIP), Helo: "slowhelo.example", LeadingSpace: true}
	j, st := p.Evaluate(c, "bob@slowmail.example", "", nil,
		[]policy.Field{{Name: "From", Value: "bob@pass.example"}}, []byte("hi\r\n"), "")
	if j.SPF.Status != spf.TempError || j.HeloSPF.Status != spf.TempError {
		t.Fatalf("SPF %s, HELO %s, want both temperror", j.SPF.Status, j.HeloSPF.Status)
	}
	if st.SPF >= 2*timeout {
		t.Errorf("the SPF stage took %v: the two identities waited one after the other (%v each)", st.SPF, timeout)
	}
}

// TestTreeWalkInParallel: the names of a DMARC tree walk (RFC 9989
// section 4.10) do not depend on each other's answers, so a black-holed
// name server costs the walk one timeout, not one per name (issue 21: a
// never-seen domain waited about 12 s, three names of 4 s each).
func TestTreeWalkInParallel(t *testing.T) {
	const timeout = 300 * time.Millisecond
	e := newEnv(t, envOptions{dnsTimout: timeout})
	// _dmarc.a.b.walk.example is not there (NXDOMAIN, at once): the walk
	// goes on to its three parents, which never answer.
	for _, n := range []string{"_dmarc.b.walk.example.", "_dmarc.walk.example.", "_dmarc.example."} {
		e.dns.SetTimeout(n, dns.TypeTXT)
	}
	p := session.NewPipeline(e.settings)
	c := session.Client{IP: net.ParseIP(goodIP), Helo: "mx.pass.example", LeadingSpace: true}
	j, st := p.Evaluate(c, "bob@pass.example", "", nil,
		[]policy.Field{{Name: "From", Value: "bob@a.b.walk.example"}}, []byte("hi\r\n"), "")
	if j.Verdict.DMARC.Status != dmarc.TempError {
		t.Fatalf("DMARC %s (%v), want temperror", j.Verdict.DMARC.Status, j.Verdict.DMARC.Err)
	}
	if wait := st.DKIM + st.DMARC; wait >= 2*timeout {
		t.Errorf("the end of the message waited %v: the walk's names were asked one after the other (%v each)", wait, timeout)
	}
}
