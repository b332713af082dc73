package dmarc

import (
	"errors"
	"strings"
	"testing"
)

func TestParseFrom(t *testing.T) {
	tests := []struct {
		name   string
		values []string
		want   string // the domains, space-separated
		err    error
	}{
		{"plain", []string{"user@example.com"}, "example.com", nil},
		{"display name", []string{" Sample User <user@Example.COM>"}, "example.com", nil},
		{"trailing dot in address", []string{"user@example.com."}, "", ErrUnparseableFrom},
		{"quoted display name with address", []string{`"evil@bad.example" <user@good.example>`}, "good.example", nil},
		{"comment with domain", []string{"user@good.example (comment evil.example)"}, "good.example", nil},
		{"comment with address", []string{"user@good.example (evil@evil.example)"}, "good.example", nil},
		{"encoded display name", []string{"=?utf-8?q?evil=40evil.example?= <u@good.example>"}, "good.example", nil},
		{"unknown charset", []string{"=?x-unknown?q?evil=40evil.example?= <u@good.example>"}, "good.example", nil},
		// "@" cannot occur in an encoded word in a phrase (RFC 2047 5(3)).
		{"encoded word with raw at", []string{"=?utf-8?q?x@evil.example?= <u@good.example>"}, "", ErrUnparseableFrom},
		{"quoted local part with at", []string{`"evil@evil.example"@good.example`}, "good.example", nil},
		{"folded", []string{"Sample User\r\n <user@good.example>\r\n"}, "good.example", nil},
		{"folded lf", []string{"Sample User\n\t<user@good.example>"}, "good.example", nil},
		{"bare line break", []string{"user@good.example\r\nBcc: x@evil.example"}, "", ErrUnparseableFrom},
		{"IDN", []string{"user@Bücher.example"}, "xn--bcher-kva.example", nil},
		{"A-label upper", []string{"user@XN--BCHER-KVA.example"}, "xn--bcher-kva.example", nil},
		{"no header", nil, "", ErrNoFrom},
		{"two headers", []string{"a@good.example", "b@good.example"}, "", ErrMultipleFrom},
		{"two addresses", []string{"a@good.example, b@evil.example"}, "good.example evil.example", nil},
		{"two addresses same domain", []string{"a@good.example, B@Good.Example"}, "good.example", nil},
		{"three addresses two domains", []string{"A <a@x.example>, b@y.example, \"c, d\" <c@X.example>"}, "x.example y.example", nil},
		// RFC 5322 section 4.4: receivers accept the obsolete route.
		{"obsolete route", []string{"<@relay.test:alice@fr.test>"}, "fr.test", nil},
		{"obsolete route list", []string{"Alice < ,@a.test, @b.test:alice@fr.test >"}, "fr.test", nil},
		{"route does not name the author", []string{"<@good.example:evil@evil.example>"}, "evil.example", nil},
		{"unterminated route", []string{"<@relay.test alice@fr.test>"}, "", ErrUnparseableFrom},
		{"empty", []string{""}, "", ErrUnparseableFrom},
		{"blank", []string{"  \t"}, "", ErrUnparseableFrom},
		{"no domain", []string{"user"}, "", ErrUnparseableFrom},
		{"display name only", []string{`"Test 1.1.5"`}, "", ErrUnparseableFrom},
		{"nested angle brackets", []string{"<<user@good.example>>"}, "", ErrUnparseableFrom},
		{"angle garbage", []string{"<user@good.example> evil.example"}, "", ErrUnparseableFrom},
		{"trailing garbage", []string{"user@good.example garbage"}, "", ErrUnparseableFrom},
		{"trailing at", []string{"user@good.example@evil.example"}, "", ErrUnparseableFrom},
		{"group one address", []string{"friends: user@good.example;"}, "", ErrUnparseableFrom},
		{"group empty", []string{"undisclosed-recipients:;"}, "", ErrUnparseableFrom},
		{"leading comment", []string{"(Joe Johnson) joe@good.example"}, "good.example", nil},
		{"nested comment", []string{"(a (b@evil.example) c) <joe@good.example>"}, "good.example", nil},
		{"comment inside angle", []string{"Joe < joe@good.example (x@evil.example) >"}, "good.example", nil},
		{"unterminated comment", []string{"joe@good.example (x"}, "", ErrUnparseableFrom},
		{"quoted paren not a comment", []string{`"(x" <joe@good.example>`}, "good.example", nil},
		{"colon in quoted display name is fine", []string{`"Re: news" <user@good.example>`}, "good.example", nil},
		{"domain literal", []string{"user@[192.0.2.1]"}, "", ErrUnparseableFrom},
		{"empty label", []string{"user@good..example"}, "", ErrUnparseableFrom},
		{"underscore", []string{"user@bad_name.example"}, "", ErrUnparseableFrom},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, err := ParseFrom(tc.values)
			got := strings.Join(a.Domains, " ")
			if tc.err != nil {
				if !errors.Is(err, tc.err) || got != "" {
					t.Fatalf("got %q, %v; want error %v", got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %q, %v; want %q", got, err, tc.want)
			}
			if n := strings.Count(tc.values[0], "@"); a.Addresses < 1 || a.Addresses > n {
				t.Errorf("Addresses = %d", a.Addresses)
			}
		})
	}
}

func FuzzParseFrom(f *testing.F) {
	for _, s := range []string{
		`"evil@bad.example" <user@good.example>`,
		"user@good.example (comment evil.example)",
		"=?utf-8?q?x@evil.example?= <u@good.example>",
		"a@b.example, c@d.example",
		"<@relay.test:alice@fr.test>",
		"g: a@b.example;",
		"Joe\r\n <joe@joe.example>",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := ParseFrom([]string{s})
		if err != nil {
			return
		}
		if len(a.Domains) == 0 || len(a.Domains) > a.Addresses {
			t.Fatalf("%q: %d domains for %d addresses", s, len(a.Domains), a.Addresses)
		}
		for _, d := range a.Domains {
			if d == "" || d != strings.ToLower(d) || strings.HasSuffix(d, ".") {
				t.Fatalf("%q: bad domain %q", s, d)
			}
			// For ASCII input the domain must occur in the input, never be
			// invented. (Non-ASCII input goes through UTS 46 mapping.)
			ascii := true
			for _, r := range s {
				ascii = ascii && r < 0x80
			}
			if ascii && !strings.Contains(strings.ToLower(s), d) {
				t.Fatalf("%q: domain %q not in input", s, d)
			}
		}
	})
}

func TestInDomainList(t *testing.T) {
	list := []string{"Example.COM", " corp.example. ", ""}
	for _, tc := range []struct {
		domain string
		want   bool
	}{
		{"example.com", true},
		{"mail.EXAMPLE.com", true},
		{"example.com.", true},
		{"badexample.com", false},
		{"com", false},
		{"a.corp.example", true},
		{"example.org", false},
		{"", false},
	} {
		if got := InDomainList(tc.domain, list); got != tc.want {
			t.Errorf("InDomainList(%q) = %v, want %v", tc.domain, got, tc.want)
		}
	}
}

// FuzzSimpleFrom: whenever the fast path takes a From value, the general
// parser reads the same single domain from it, so the fast path can never
// let a value through that the general one would read differently or
// refuse.
func FuzzSimpleFrom(f *testing.F) {
	for _, s := range []string{
		"bob@example.com",
		" Bob Smith <bob@Example.COM> ",
		`"Smith, Bob" <bob.smith@mail.example.org>`,
		`"a<b" <x@y.example>`,
		"J. R. Bob <j.r@x-y.example>",
		"=?utf-8?q?x@evil.example?= <u@good.example>",
		"bob@example.com.",
		"<bob@example.com>",
		"a.@b.example",
		`"" <a@b.example>`,
		"x <a@b.example> <c@d.example>",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, ok := simpleFrom(s)
		if !ok {
			return
		}
		a, err := parseFrom(s)
		want, nerr := NormalizeDomain(d)
		switch {
		case nerr != nil && err == nil:
			t.Fatalf("%q: the fast path refuses domain %q (%v), the general parser reads %v", s, d, nerr, a)
		case nerr != nil:
			return // refused on both paths
		case err != nil:
			t.Fatalf("%q: the fast path reads %q, the general parser fails: %v", s, want, err)
		}
		if a.Addresses != 1 || len(a.Domains) != 1 || a.Domains[0] != want {
			t.Fatalf("%q: the fast path reads %q, the general parser %v", s, want, a)
		}
	})
}
