package spf

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"gopkg.in/yaml.v3"

	"github.com/dmarc-milter/dmarc-milter/internal/conformance"
	"github.com/dmarc-milter/dmarc-milter/internal/dnstest"
	"github.com/dmarc-milter/dmarc-milter/resolver"
)

// The openspf.org test-suite format (see conformance SOURCES.md): YAML
// documents, each a scenario with tests and the DNS data they run against.
type scenario struct {
	Description string
	Tests       map[string]suiteTest
	ZoneData    map[string][]any `yaml:"zonedata"`
}

type suiteTest struct {
	Description string
	Spec        any
	Helo        string
	Host        string
	MailFrom    string `yaml:"mailfrom"`
	Result      any    // a result or a list of acceptable results
	Explanation string
}

// rfc7208Exceptions are the tests of rfc7208-tests.yml whose expected result
// blitiri.com.ar/go/spf v1.6.0 does not give, with the reason. They are
// exactly the tests its own copy of the suite marks "skip" (reasons quoted
// from blitiri's testdata/rfc7208-tests.yml), less "spftimeout", which
// passes here. Mostly syntax checks blitiri does not make (domain charset,
// top-label structure, errors after a match, exp= which it ignores); a
// listed test that passes is reported so the list stays exact.
var rfc7208Exceptions = map[string]string{
	"a-bad-domain":                 "We don't enforce domain charset.",
	"a-bad-toplabel":               "We don't enforce TLD structure.",
	"a-colon-domain":               "Allowing / in domain names is not worth the complexity",
	"a-colon-domain-ip4mapped":     "Allowing / in domain names is not worth the complexity",
	"a-null":                       "We don't enforce charset.",
	"a-numeric":                    "We don't enforce domain structure.",
	"a-numeric-toplabel":           "We don't enforce TLD structure.",
	"a-only-toplabel":              "We don't enforce TLD structure.",
	"a-only-toplabel-trailing-dot": "We don't enforce TLD structure.",
	"bare-ip6":                     "There's an early match.",
	"cidr4-032":                    "It's not clear this is problematic.",
	"control-char-policy":          "We fail instead of permerror because we don't enforce the charset.",
	"detect-errors-anywhere":       "We don't catch errors after a match.",
	"exp-empty-domain":             "We ignore exp, and is harmless.",
	"exp-only-macro-char":          "We ignore exp, and is harmless.",
	"exp-syntax-error":             "We don't enforce exp values.",
	"exp-twice":                    "We ignore exp, and is harmless.",
	"invalid-domain":               "We don't enforce TLD structure.",
	"mx-bad-domain":                "We don't enforce domain syntax.",
	"mx-bad-toplab":                "We don't enforce TLD structure.",
	"mx-colon-domain":              "Allowing / in domain names is not worth the complexity",
	"mx-colon-domain-ip4mapped":    "Allowing / in domain names is not worth the complexity",
	"mx-null":                      "We don't enforce charset.",
	"mx-numeric-top-label":         "We don't validate top-level domains.",
	"non-ascii-policy":             "We don't enforce 7-bit ascii.",
	"p-macro-multiple":             "p macro is not supported",
	"redirect-empty-domain":        "There's an early match.",
	"redirect-is-modifier":         "We don't catch errors after a match.",
	"redirect-syntax-error":        "We don't enforce charset within the redirect.",
	"unknown-modifier-syntax":      "There's an early match.",
}

// blitiriExceptions are the same for albertito-spf/blitirispf-tests.yml.
var blitiriExceptions = map[string]string{}

// legacyResults maps the old result names of RFC 4408 drafts.
var legacyResults = map[string]Status{"unknown": PermError, "error": TempError}

func TestConformanceRFC7208(t *testing.T) {
	dir := conformance.Dir(t, "spf")
	runSuite(t, filepath.Join(dir, "pyspf", "rfc7208-tests.yml"), rfc7208Exceptions, 203)
}

func TestConformanceBlitiri(t *testing.T) {
	dir := conformance.Dir(t, "spf")
	runSuite(t, filepath.Join(dir, "albertito-spf", "blitirispf-tests.yml"), blitiriExceptions, 21)
}

func loadSuite(t *testing.T, path string) []scenario {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var scenarios []scenario
	dec := yaml.NewDecoder(f)
	for {
		var s scenario
		err := dec.Decode(&s)
		if errors.Is(err, io.EOF) {
			return scenarios
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		scenarios = append(scenarios, s)
	}
}

// runSuite runs every test of the suite at path through the project's
// resolver and a dnstest server loaded with the scenario's zone data, a
// fresh pair per scenario so no cache carries over. Only results are
// compared: the expected exp= explanations (22 tests of rfc7208-tests.yml)
// are not, since blitiri does not implement exp= (RFC 7208 section 6.2).
func runSuite(t *testing.T, path string, exceptions map[string]string, wantTests int) {
	scenarios := loadSuite(t, path)
	total, passed, excepted := 0, 0, 0
	for _, sc := range scenarios {
		srv := dnstest.NewServer(t)
		loadZoneData(t, srv, sc.ZoneData)
		r, err := resolver.New(resolver.Config{
			Servers: []string{srv.Addr},
			// TIMEOUT entries are real timeouts: keep them short.
			Timeout:  150 * time.Millisecond,
			Attempts: 1,
		})
		if err != nil {
			t.Fatal(err)
		}
		c := NewChecker(r)

		names := make([]string, 0, len(sc.Tests))
		for name := range sc.Tests {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			tc := sc.Tests[name]
			total++
			want := results(t, tc.Result)
			res := c.CheckMailFrom(context.Background(), net.ParseIP(tc.Host), tc.Helo, tc.MailFrom)
			ok := slices.Contains(want, res.Status)
			reason, listed := exceptions[name]
			switch {
			case ok && listed:
				t.Errorf("%s: passes (%s) but is listed as an exception (%s)", name, res.Status, reason)
			case ok:
				passed++
			case listed:
				excepted++
				t.Logf("%s: exception: got %s, want %v: %s", name, res.Status, want, reason)
			default:
				t.Errorf("%s [%s]: got %s (%v), want %v; helo %q mailfrom %q ip %s",
					name, sc.Description, res.Status, res.Err, want, tc.Helo, tc.MailFrom, tc.Host)
			}
		}
	}
	if total != wantTests {
		t.Errorf("ran %d tests, want %d", total, wantTests)
	}
	t.Logf("%s: %d tests, %d passed, %d listed exceptions", filepath.Base(path), total, passed, excepted)
}

func results(t *testing.T, v any) []Status {
	t.Helper()
	var raw []string
	switch v := v.(type) {
	case string:
		raw = []string{v}
	case []any:
		for _, x := range v {
			raw = append(raw, fmt.Sprint(x))
		}
	default:
		t.Fatalf("bad result %#v", v)
	}
	var out []Status
	for _, s := range raw {
		if l, ok := legacyResults[s]; ok {
			out = append(out, l)
		} else {
			out = append(out, Status(s))
		}
	}
	return out
}

// loadZoneData serves the scenario's records, following the conventions of
// pyspf's test driver (test/testspf.py):
//   - SPF records are also served as TXT unless the name has a TXT item
//     ("TXT: NONE" counts, and adds nothing);
//   - a string value is one record with one string, a list one record with
//     those strings;
//   - a bare TIMEOUT item makes queries time out for every type that has no
//     record listed before it; "TYPE: TIMEOUT" only for that type;
//   - "TIMEOUT: true" (blitiri's suite) times out every query, and
//     "SERVFAIL: true" answers SERVFAIL to every query.
//
// A root SOA is added so that negative answers carry one (RFC 2308).
func loadZoneData(t *testing.T, srv *dnstest.Server, zone map[string][]any) {
	t.Helper()
	if err := srv.AddRecord(". 300 IN SOA ns.test. hostmaster.test. 1 3600 600 86400 300"); err != nil {
		t.Fatal(err)
	}
	qtypes := map[string]uint16{"A": dns.TypeA, "AAAA": dns.TypeAAAA, "MX": dns.TypeMX,
		"PTR": dns.TypePTR, "CNAME": dns.TypeCNAME, "TXT": dns.TypeTXT, "SPF": dns.TypeSPF}
	for name, items := range zone {
		owner := dnsName(strings.ToLower(name))
		hdr := func(rrtype uint16) dns.RR_Header {
			return dns.RR_Header{Name: owner, Rrtype: rrtype, Class: dns.ClassINET, Ttl: 300}
		}
		hasTXT := false
		var spf []dns.RR
		seen := map[uint16]bool{} // types listed before a bare TIMEOUT
		for _, item := range items {
			if s, ok := item.(string); ok {
				if s != "TIMEOUT" {
					t.Fatalf("%s: unknown item %q", name, s)
				}
				if len(seen) == 0 {
					srv.SetTimeout(owner, dns.TypeANY)
				}
				for _, qt := range qtypes {
					if !seen[qt] {
						srv.SetTimeout(owner, qt)
					}
				}
				break // pyspf's driver stops at a bare TIMEOUT.
			}
			m, ok := item.(map[string]any)
			if !ok || len(m) != 1 {
				t.Fatalf("%s: bad item %#v", name, item)
			}
			for typ, val := range m {
				switch {
				case typ == "TIMEOUT" && val == true:
					srv.SetTimeout(owner, dns.TypeANY)
					continue
				case typ == "SERVFAIL" && val == true:
					srv.SetServfail(owner, dns.TypeANY)
					continue
				case val == "TIMEOUT":
					srv.SetTimeout(owner, qtypes[typ])
					continue
				}
				if val != "NONE" {
					seen[qtypes[typ]] = true
				}
				switch typ {
				case "TXT":
					hasTXT = true
					if val != "NONE" {
						srv.AddRRs(&dns.TXT{Hdr: hdr(dns.TypeTXT), Txt: txtStrings(t, val)})
					}
				case "SPF":
					strs := txtStrings(t, val)
					srv.AddRRs(&dns.SPF{Hdr: hdr(dns.TypeSPF), Txt: strs})
					spf = append(spf, &dns.TXT{Hdr: hdr(dns.TypeTXT), Txt: strs})
				case "A":
					srv.AddRRs(&dns.A{Hdr: hdr(dns.TypeA), A: parseIP(t, val)})
				case "AAAA":
					srv.AddRRs(&dns.AAAA{Hdr: hdr(dns.TypeAAAA), AAAA: parseIP(t, val)})
				case "MX":
					l, ok := val.([]any)
					if !ok || len(l) != 2 {
						t.Fatalf("%s: bad MX %#v", name, val)
					}
					pref, _ := l[0].(int)
					srv.AddRRs(&dns.MX{Hdr: hdr(dns.TypeMX), Preference: uint16(pref), Mx: dnsName(fmt.Sprint(l[1]))})
				case "PTR":
					srv.AddRRs(&dns.PTR{Hdr: hdr(dns.TypePTR), Ptr: dnsName(fmt.Sprint(val))})
				case "CNAME":
					srv.AddRRs(&dns.CNAME{Hdr: hdr(dns.TypeCNAME), Target: dnsName(fmt.Sprint(val))})
				default:
					t.Fatalf("%s: unknown record type %q", name, typ)
				}
			}
		}
		if !hasTXT {
			srv.AddRRs(spf...)
		}
	}
}

// txtStrings converts a suite value to the character-strings of one TXT
// record, in miekg/dns presentation form (backslash escaped), splitting
// strings longer than 255 octets (RFC 1035 section 3.3).
func txtStrings(t *testing.T, v any) []string {
	t.Helper()
	var in []string
	switch v := v.(type) {
	case string:
		in = []string{v}
	case []any:
		for _, x := range v {
			in = append(in, fmt.Sprint(x))
		}
	default:
		in = []string{fmt.Sprint(v)}
	}
	var out []string
	for _, s := range in {
		for len(s) > 255 {
			out = append(out, escapeTXT(s[:255]))
			s = s[255:]
		}
		out = append(out, escapeTXT(s))
	}
	return out
}

func escapeTXT(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' {
			b.WriteString(`\\`)
		} else {
			b.WriteByte(s[i])
		}
	}
	return b.String()
}

func parseIP(t *testing.T, v any) net.IP {
	t.Helper()
	ip := net.ParseIP(fmt.Sprint(v))
	if ip == nil {
		t.Fatalf("bad address %#v", v)
	}
	return ip
}

// dnsName returns the raw suite name as a fully qualified name in miekg/dns
// presentation form (RFC 1035 section 5.1 escapes), as the resolver sends it.
func dnsName(raw string) string {
	var b strings.Builder
	for i := 0; i < len(raw); i++ {
		switch c := raw[i]; {
		case c < ' ' || c > '~':
			fmt.Fprintf(&b, "\\%03d", c)
		case strings.IndexByte(` '@;()"\\`, c) >= 0:
			b.WriteByte('\\')
			b.WriteByte(c)
		default:
			b.WriteByte(c)
		}
	}
	return dns.Fqdn(b.String())
}
