package dmarc

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/dmarc-milter/dmarc-milter/internal/dnstest"
)

func TestTreeWalkQueries(t *testing.T) {
	tests := []struct {
		domain string
		want   []string
	}{
		{"example.com", []string{"_dmarc.example.com.", "_dmarc.com."}},
		{"a.mail.example.com", []string{"_dmarc.a.mail.example.com.", "_dmarc.mail.example.com.", "_dmarc.example.com.", "_dmarc.com."}},
		{"com", []string{"_dmarc.com."}},
		// RFC 9989 Section 4.10 example.
		{"a.b.c.d.e.f.g.h.i.j.mail.example.com", []string{
			"_dmarc.a.b.c.d.e.f.g.h.i.j.mail.example.com.",
			"_dmarc.g.h.i.j.mail.example.com.",
			"_dmarc.h.i.j.mail.example.com.",
			"_dmarc.i.j.mail.example.com.",
			"_dmarc.j.mail.example.com.",
			"_dmarc.mail.example.com.",
			"_dmarc.example.com.",
			"_dmarc.com.",
		}},
		// Exactly 8 labels: parent has 7, no labels skipped.
		{"a.b.c.d.e.f.example.com", []string{
			"_dmarc.a.b.c.d.e.f.example.com.", "_dmarc.b.c.d.e.f.example.com.", "_dmarc.c.d.e.f.example.com.",
			"_dmarc.d.e.f.example.com.", "_dmarc.e.f.example.com.", "_dmarc.f.example.com.",
			"_dmarc.example.com.", "_dmarc.com.",
		}},
	}
	for _, tc := range tests {
		r := &dnstest.Resolver{}
		_, err := Discover(context.Background(), r, tc.domain)
		if !errors.Is(err, ErrNoRecord) {
			t.Errorf("%s: err %v, want ErrNoRecord", tc.domain, err)
		}
		if !reflect.DeepEqual(r.Queries(), tc.want) {
			t.Errorf("%s: queries\n%q\nwant\n%q", tc.domain, r.Queries(), tc.want)
		}
	}

	// Very long names never take more than 8 queries.
	long := strings.Repeat("x.", 100) + "example.com"
	r := &dnstest.Resolver{}
	d, _ := Discover(context.Background(), r, long)
	if len(r.Queries()) != 8 || d.Queries != 8 {
		t.Errorf("long name: %d queries (reported %d), want 8", len(r.Queries()), d.Queries)
	}
}

func TestDiscover(t *testing.T) {
	zone := map[string][]string{
		"_dmarc.kantiflow.xyz.":         {"v=DMARC1; p=reject; adkim=s; aspf=s;"},
		"_dmarc.example.com.":           {"v=DMARC1; p=reject; sp=quarantine; np=none", "some other txt"},
		"_dmarc.mail.example.com.":      {"v=DMARC1; p=none"},
		"_dmarc.bank.example.":          {"v=DMARC1; p=reject; psd=y"},
		"_dmarc.giant.bank.example.":    {"v=DMARC1; p=quarantine"},
		"_dmarc.dept.example.org.":      {"v=DMARC1; p=quarantine; psd=n"},
		"_dmarc.example.org.":           {"v=DMARC1; p=reject"},
		"_dmarc.multi.example.net.":     {"v=DMARC1; p=reject", "v=DMARC1; p=none"},
		"_dmarc.example.net.":           {"v=DMARC1; p=quarantine"},
		"_dmarc.broken.example.":        {"v=DMARC1; p=bogus"},
		"_dmarc.brokenparent.example.":  {"v=DMARC1; p=reject; p=none"},
		"_dmarc.nondmarc.example.":      {"v=spf1 -all", "hello"},
		"_dmarc.tempfail.example.":      {"v=DMARC1; p=reject"},
		"_dmarc.child.tempsub.example.": {"v=DMARC1; p=reject"},
	}
	fail := map[string]error{
		"_dmarc.tempfail.example.": dnstest.ServFail("_dmarc.tempfail.example."),
		"_dmarc.tempsub.example.":  dnstest.ServFail("_dmarc.tempsub.example."),
	}
	tests := []struct {
		domain       string
		policyDomain string
		org          string
		policy       Policy
		queries      int
		err          string // "none", "temp", "syntax"
	}{
		{"kantiflow.xyz", "kantiflow.xyz", "kantiflow.xyz", PolicyReject, 2, ""},
		{"KantiFlow.XYZ.", "kantiflow.xyz", "kantiflow.xyz", PolicyReject, 2, ""},
		{"example.com", "example.com", "example.com", PolicyReject, 2, ""},
		// Record at the author domain applies; the org domain is the
		// highest record.
		{"mail.example.com", "mail.example.com", "example.com", PolicyNone, 3, ""},
		// a.mail.example.com: org domain is example.com (fewest labels), so
		// its record applies, not mail.example.com's.
		{"a.mail.example.com", "example.com", "example.com", PolicyReject, 4, ""},
		// PSD: giant.bank.example has its own record; org is giant.
		{"giant.bank.example", "giant.bank.example", "giant.bank.example", PolicyQuarantine, 2, ""},
		{"mail.giant.bank.example", "giant.bank.example", "giant.bank.example", PolicyQuarantine, 3, ""},
		// No record below the PSD: the PSD record applies, org is one label
		// below the PSD; the walk stops at psd=y (no query for "example").
		{"mail.mega.bank.example", "bank.example", "mega.bank.example", PolicyReject, 3, ""},
		// psd=n stops the walk and marks the org domain.
		{"a.b.dept.example.org", "dept.example.org", "dept.example.org", PolicyQuarantine, 3, ""},
		{"dept.example.org", "dept.example.org", "dept.example.org", PolicyQuarantine, 1, ""},
		// Several DMARC records: none at that name, walk goes on.
		{"multi.example.net", "example.net", "example.net", PolicyQuarantine, 3, ""},
		{"nondmarc.example", "", "nondmarc.example", "", 2, "none"},
		{"absent.example", "", "absent.example", "", 2, "none"},
		// RFC 9989 4.10.1: an invalid p without rua asks for no DMARC
		// processing; the record is found.
		{"broken.example", "broken.example", "broken.example", PolicyNone, 2, "nopolicy"},
		{"sub.brokenparent.example", "brokenparent.example", "brokenparent.example", "", 3, "syntax"},
		{"tempfail.example", "", "", "", 1, "temp"},
		// A temporary error further up the walk is still a temperror.
		{"child.tempsub.example", "", "", "", 2, "temp"},
	}
	for _, tc := range tests {
		t.Run(tc.domain, func(t *testing.T) {
			r := &dnstest.Resolver{TXT: zone, Fail: fail}
			d, err := Discover(context.Background(), r, tc.domain)
			switch tc.err {
			case "":
				if err != nil {
					t.Fatalf("error %v", err)
				}
				if d.Record.Policy != tc.policy {
					t.Errorf("policy %s, want %s", d.Record.Policy, tc.policy)
				}
			case "none":
				if !errors.Is(err, ErrNoRecord) {
					t.Fatalf("error %v, want ErrNoRecord", err)
				}
			case "temp":
				if !IsTemporary(err) {
					t.Fatalf("error %v, want temporary", err)
				}
			case "nopolicy":
				if !errors.Is(err, ErrNoPolicy) || d.Record == nil || d.Record.Policy != tc.policy {
					t.Fatalf("error %v record %v, want ErrNoPolicy with the record", err, d.Record)
				}
			case "syntax":
				var se *SyntaxError
				if !errors.As(err, &se) || errors.Is(err, ErrNoPolicy) || d.Record != nil {
					t.Fatalf("error %v record %v, want *SyntaxError", err, d.Record)
				}
			}
			if tc.err != "temp" && (d.Domain != tc.policyDomain || d.OrgDomain != tc.org) {
				t.Errorf("policy domain %q org %q, want %q %q", d.Domain, d.OrgDomain, tc.policyDomain, tc.org)
			}
			if d.Queries != tc.queries || len(r.Queries()) != tc.queries {
				t.Errorf("queries %d (made %d: %q), want %d", d.Queries, len(r.Queries()), r.Queries(), tc.queries)
			}
		})
	}
}

func TestOrganizationalDomain(t *testing.T) {
	tests := []struct {
		name   string
		zone   map[string][]string
		domain string
		want   string
	}{
		// RFC 9989 Section 4.10.2 examples.
		{"fewest labels", map[string][]string{
			"_dmarc.mail.example.com.": {"v=DMARC1; p=none"},
			"_dmarc.example.com.":      {"v=DMARC1; p=none"},
		}, "a.mail.example.com", "example.com"},
		{"psd=n", map[string][]string{
			"_dmarc.mail.example.com.": {"v=DMARC1; p=none; psd=n"},
			"_dmarc.example.com.":      {"v=DMARC1; p=none"},
		}, "a.mail.example.com", "mail.example.com"},
		{"psd=y at tld", map[string][]string{
			"_dmarc.com.": {"v=DMARC1; p=none; psd=y"},
		}, "a.mail.example.com", "example.com"},
		// psd=y at the start domain itself does not count (rule 2).
		{"psd=y at start", map[string][]string{
			"_dmarc.com.": {"v=DMARC1; p=none; psd=y"},
		}, "com", "com"},
		{"no records", nil, "A.Mail.Example.COM", "a.mail.example.com"},
		// RFC 9989 Appendix B.4.3.
		{"B.4.3 author", map[string][]string{
			"_dmarc.bank.example.":       {"v=DMARC1; p=reject; psd=y"},
			"_dmarc.giant.bank.example.": {"v=DMARC1; p=reject"},
		}, "giant.bank.example", "giant.bank.example"},
		{"B.4.3 mailfrom", map[string][]string{
			"_dmarc.bank.example.":       {"v=DMARC1; p=reject; psd=y"},
			"_dmarc.giant.bank.example.": {"v=DMARC1; p=reject"},
		}, "mail.giant.bank.example", "giant.bank.example"},
		{"B.4.3 dkim", map[string][]string{
			"_dmarc.bank.example.":       {"v=DMARC1; p=reject; psd=y"},
			"_dmarc.giant.bank.example.": {"v=DMARC1; p=reject"},
		}, "mail.mega.bank.example", "mega.bank.example"},
		// Appendix B.4.2: deep name, record only at example.com.
		{"B.4.2", map[string][]string{
			"_dmarc.example.com.":         {"v=DMARC1; p=reject"},
			"_dmarc.signing.example.com.": {"v=DMARC1; p=reject"},
		}, "a.b.c.d.e.f.g.h.i.j.k.example.com", "example.com"},
		{"B.4.1 signing", map[string][]string{
			"_dmarc.example.com.":         {"v=DMARC1; p=reject"},
			"_dmarc.signing.example.com.": {"v=DMARC1; p=reject"},
		}, "signing.example.com", "example.com"},
		// Section 5.1.8: a psd=n record beyond the 7-label shortcut is not
		// seen.
		{"5.1.8 unseen zone cut", map[string][]string{
			"_dmarc.example.com.":             {"v=DMARC1; p=reject"},
			"_dmarc.b.c.d.e.f.g.example.com.": {"v=DMARC1; p=none; psd=n"},
		}, "mail.a.b.c.d.e.f.g.example.com", "example.com"},
		{"IDN", map[string][]string{
			"_dmarc.xn--bcher-kva.example.": {"v=DMARC1; p=reject"},
		}, "mail.Bücher.example", "xn--bcher-kva.example"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := OrganizationalDomain(context.Background(), &dnstest.Resolver{TXT: tc.zone}, tc.domain)
			if err != nil || got != tc.want {
				t.Errorf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}

	r := &dnstest.Resolver{Fail: map[string]error{"_dmarc.example.com.": dnstest.ServFail("x")}}
	if _, err := OrganizationalDomain(context.Background(), r, "a.example.com"); !IsTemporary(err) {
		t.Errorf("temp failure: err %v, want temporary", err)
	}
	// A non-DNS error (e.g. context canceled) is temporary too.
	r = &dnstest.Resolver{Fail: map[string]error{"_dmarc.example.com.": context.Canceled}}
	if _, err := OrganizationalDomain(context.Background(), r, "example.com"); !IsTemporary(err) || !errors.Is(err, context.Canceled) {
		t.Errorf("canceled: err %v, want temporary wrapping context.Canceled", err)
	}
	for _, bad := range []string{"", ".", "a..example", "-x-.example\x00"} {
		if _, err := OrganizationalDomain(context.Background(), &dnstest.Resolver{}, bad); !errors.Is(err, ErrInvalidDomain) {
			t.Errorf("%q: err %v, want ErrInvalidDomain", bad, err)
		}
	}
}

// FuzzNormalizeDomain checks NormalizeDomain's short path against the
// general one: whenever plainDomain answers, UTS #46 processing gives the
// same name and no error.
func FuzzNormalizeDomain(f *testing.F) {
	for _, s := range []string{
		"example.com", "Example.COM", "a-b.example", "-a.example", "a-.example",
		"xn--bcher-kva.example", "ab--c.example", "a..b", "_dmarc.example",
		"Bücher.example", "1.2.3.4", strings.Repeat("a", 64) + ".example",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d := strings.TrimSuffix(s, ".")
		got, ok := plainDomain(d)
		if !ok {
			return
		}
		want, err := normalizeIDNA(s, d)
		if err != nil || got != want {
			t.Fatalf("%q: short path %q, UTS #46 %q (%v)", s, got, want, err)
		}
	})
}
