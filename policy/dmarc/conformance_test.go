package dmarc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dmarc-milter/dmarc-milter/internal/conformance"
	"github.com/dmarc-milter/dmarc-milter/internal/dnstest"
)

// Conformance cases that do not pass, with the reason. Every case of an RFC
// 9989 profile either passes or is listed here; a listed case that passes
// fails the test, so the list stays accurate.
var conformanceExceptions = map[string]string{
	// record-parse-cases.json, profile rfc9989/checkdmarc. checkdmarc is a
	// record linter and flags these values; a receiver follows RFC 9989
	// Section 4.8 ("syntax errors in the remainder of the record MUST be
	// discarded in favor of default values (if any) or ignored outright"),
	// so the records parse, with a warning, using the defaults.
	"checkdmarc-6":  "RFC 9989 4.8/4.10.1: the URI without a scheme is discarded; the valid mailto: URI is kept",
	"checkdmarc-7":  "RFC 9989 4.8/4.10.1: the malformed URI is discarded; the valid mailto: URI is kept",
	"checkdmarc-10": "RFC 9989 4.8: invalid psd value discarded in favour of the default psd=u",
	"checkdmarc-11": "RFC 9989 4.8: invalid t value discarded in favour of the default t=n",
	"checkdmarc-13": "RFC 9989 4.8: invalid fo value discarded in favour of the default fo=0",
	"checkdmarc-16": "RFC 9989 4.8: invalid fo value discarded in favour of the default fo=0",
	"checkdmarc-8":  "RFC 9989 4.10.1: invalid p with a valid rua URI MUST be treated as p=none",

	// record-parse-cases.json tag_values (Mail::DMARC per-tag setters; run
	// with RFC 9989 semantics).
	"tag_values/good/v/dmarc1":                         "RFC 9989 4.7/4.8: the v value is case-sensitive (%s\"DMARC1\"); v=dmarc1 is not a DMARC record",
	"tag_values/bad/rua/ftp://example.com/pub":         "RFC 9989 4.7: any valid URI may be published; unsupported schemes are ignored by the report sender, not rejected by the parser",
	"tag_values/bad/rua/torrent://piratebay.net/dmarc": "RFC 9989 4.7: any valid URI may be published; unsupported schemes are ignored by the report sender",
	"tag_values/bad/ruf/mail:msimerson@cnap.org":       "RFC 9989 4.7: a syntactically valid URI (scheme \"mail\"); unsupported schemes are ignored by the report sender",

	// evaluation-scenarios.json, suite mail-dmarc-rfc9989.
	"mail-dmarc-rfc9989#30": "two Author Domains: RFC 9989 5.3.1 lets a receiver go forward (MAY) and 11.5 recommends evaluating each domain and applying the strictest policy; ParseFrom returns both, Mail::DMARC none",
	"mail-dmarc-rfc9989#15": "psd=y record without p and without rua: RFC 9989 4.10.1 (\"does not contain a valid p tag\" and no valid rua: \"applies no DMARC processing\") gives none; Mail::DMARC applies 4.7's implicit p=none alone and says fail. The psd=y still counts in the tree walk",

	// evaluation-scenarios.json, suites mox-lookup and mox-verify (RFC 7489
	// profile).
	"mox-lookup#4":  "RFC 7489 vs 9989: \"bogus\" without a value is a syntax error in the remainder of the record, discarded per RFC 9989 4.8; the record is valid p=none",
	"mox-verify#13": "RFC 7489 vs 9989: \"bogus\" without a value is discarded per RFC 9989 4.8; the record is valid p=none, so the result is fail, not permerror",

	// evaluation-scenarios.json, suite opendmarc-from-domain: OpenDMARC's
	// lenient parser takes the first address-looking token; ParseFrom
	// parses RFC 5322 strictly (RFC 9989 4.2/5.3.1).
	"opendmarc-from-domain#1":  "display-name followed by an addr-spec without angle brackets is not RFC 5322; rejected",
	"opendmarc-from-domain#5":  "nested/empty angle brackets are not RFC 5322; rejected",
	"opendmarc-from-domain#6":  "two authors: RFC 9989 5.3.1, both Author Domains are evaluated (the strictest result applies); OpenDMARC takes only the first",
	"opendmarc-from-domain#7":  "two authors: RFC 9989 5.3.1, both Author Domains are evaluated (the strictest result applies); OpenDMARC takes only the first",
	"opendmarc-from-domain#8":  "\"Mail From:<...>\" is group syntax without the closing ';' (not a mailbox); rejected",
	"opendmarc-from-domain#11": "quoted-string followed by an addr-spec without angle brackets is not RFC 5322; rejected",
}

// counts tallies conformance outcomes.
type counts struct{ pass, excepted, skipped int }

// check records the outcome of one case against conformanceExceptions.
func (c *counts) check(t *testing.T, id string, err error) {
	t.Helper()
	reason, listed := conformanceExceptions[id]
	switch {
	case err == nil && listed:
		t.Errorf("%s: passes but is listed as an exception (%s)", id, reason)
	case err == nil:
		c.pass++
	case listed:
		c.excepted++
		t.Logf("%s: exception: %s (%v)", id, reason, err)
	default:
		t.Errorf("%s: %v", id, err)
	}
}

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	buf, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(buf, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func TestConformanceRecordParse(t *testing.T) {
	dir := conformance.Dir(t, "dmarc")
	var data struct {
		Cases []struct {
			ID      string         `json:"id"`
			Record  string         `json:"record"`
			Expect  string         `json:"expect"`
			Profile string         `json:"profile"`
			Parsed  map[string]any `json:"parsed"`
		} `json:"cases"`
		TagValues struct {
			Good map[string][]string `json:"good"`
			Bad  map[string][]string `json:"bad"`
		} `json:"tag_values"`
	}
	readJSON(t, filepath.Join(dir, "record-parse-cases.json"), &data)

	var c counts
	for _, tc := range data.Cases {
		if !strings.HasPrefix(tc.Profile, "rfc9989/") {
			c.skipped++ // RFC 7489 profile; RFC 9989 wins where they differ.
			continue
		}
		c.check(t, tc.ID, checkParseCase(tc.Record, tc.Expect, tc.Parsed))
	}
	t.Logf("record cases: %d pass, %d listed exceptions, %d skipped (RFC 7489 profiles)", c.pass, c.excepted, c.skipped)

	var tv counts
	for _, kind := range []string{"good", "bad"} {
		values := data.TagValues.Good
		if kind == "bad" {
			values = data.TagValues.Bad
		}
		for tag, vals := range values {
			for _, v := range vals {
				id := fmt.Sprintf("tag_values/%s/%s/%s", kind, tag, v)
				if tag == "rf" || tag == "ri" {
					tv.skipped++ // Removed by RFC 9989 (C.5.2); not parsed.
					continue
				}
				tv.check(t, id, checkTagValue(tag, v, kind == "good"))
			}
		}
	}
	t.Logf("tag values: %d pass, %d listed exceptions, %d skipped (rf/ri removed in RFC 9989)", tv.pass, tv.excepted, tv.skipped)
}

func checkParseCase(txt, expect string, parsed map[string]any) error {
	r, err := ParseRecord(txt)
	switch expect {
	case "invalid":
		if err == nil {
			return fmt.Errorf("parsed as valid: %+v", r)
		}
		return nil
	case "valid":
		if err != nil {
			return err
		}
	default:
		return fmt.Errorf("unknown expectation %q", expect)
	}
	for k, v := range parsed {
		s, ok := v.(string)
		if !ok {
			continue
		}
		want, _, _ := strings.Cut(s, " ") // "reject (defaults to p)" -> "reject"
		var got string
		switch k {
		case "p":
			got = string(r.Policy)
		case "sp":
			got = string(r.subdomainPolicy())
		case "np":
			got = string(r.nonexistentPolicy())
		case "psd":
			got = string(r.PSD)
		case "t":
			got = map[bool]string{true: "y", false: "n"}[r.Testing]
		default:
			return fmt.Errorf("unchecked parsed field %q", k)
		}
		if got != want {
			return fmt.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	return nil
}

// checkTagValue checks one per-tag value: a good value must be accepted and
// take effect; a bad one must not take effect (RFC 9989: bad p/sp/np without
// rua make the record unusable; other bad values are discarded with a
// warning).
func checkTagValue(tag, value string, good bool) error {
	txt := "v=DMARC1; p=none; " + tag + "=" + value
	switch tag {
	case "v":
		txt = "v=" + value + "; p=none"
	case "p":
		txt = "v=DMARC1; p=" + value
	}
	r, err := ParseRecord(txt)
	if !good {
		switch tag {
		case "v":
			if !errors.Is(err, ErrNotDMARC) {
				return fmt.Errorf("want ErrNotDMARC, got %v", err)
			}
			return nil
		case "p", "sp", "np":
			var se *SyntaxError
			if !errors.As(err, &se) {
				return fmt.Errorf("want *SyntaxError, got %+v, %v", r, err)
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("record rejected instead of value discarded: %v", err)
		}
		if len(r.Warnings) == 0 {
			return fmt.Errorf("value accepted: %+v", r)
		}
		return nil
	}
	if err != nil {
		return err
	}
	lv := strings.ToLower(value)
	var ok bool
	switch tag {
	case "v":
		ok = true
	case "p":
		ok = string(r.Policy) == lv
	case "sp":
		ok = string(r.SubdomainPolicy) == lv
	case "np":
		ok = string(r.NonexistentPolicy) == lv
	case "psd":
		ok = string(r.PSD) == lv
	case "t":
		ok = r.Testing == (lv == "y")
	case "adkim":
		ok = string(r.ADKIM) == lv
	case "aspf":
		ok = string(r.ASPF) == lv
	case "fo":
		// fo is a set: the expected value, parsed, is the set wanted.
		want, valid := parseFailureOptions(lv)
		ok = valid && r.FailureOptions == want
	case "rua":
		ok = len(r.RUA) == 1 && len(r.Warnings) == 0
	case "ruf":
		ok = len(r.RUF) == 1 && len(r.Warnings) == 0
	case "pct":
		ok = fmt.Sprint(r.Pct) == value
	default:
		return fmt.Errorf("unchecked tag %q", tag)
	}
	if !ok {
		return fmt.Errorf("value did not take effect: %+v", r)
	}
	return nil
}

// stubZone is a DNS stub for the scenario suites.
type stubZone struct {
	txt      map[string][]string // Fully-qualified lower-case name.
	other    map[string]bool     // Names with other record types.
	servfail map[string]bool
}

func newStubZone() *stubZone {
	return &stubZone{txt: map[string][]string{}, other: map[string]bool{}, servfail: map[string]bool{}}
}

func (z *stubZone) resolver() *dnstest.Resolver {
	fail := map[string]error{}
	for n := range z.servfail {
		fail[n] = dnstest.ServFail(n)
	}
	return &dnstest.Resolver{TXT: z.txt, Fail: fail}
}

// exists reports whether a name has records or names below it (an empty
// non-terminal); anything else is NXDOMAIN.
func (z *stubZone) exists(_ context.Context, d string) (bool, error) {
	fq := d + "."
	for _, names := range []map[string]bool{z.other, keys(z.txt)} {
		for n := range names {
			if n == fq || strings.HasSuffix(n, "."+fq) {
				return true, nil
			}
		}
	}
	return false, nil
}

func keys(m map[string][]string) map[string]bool {
	k := map[string]bool{}
	for n := range m {
		k[n] = true
	}
	return k
}

// addZoneLine adds a zone-file line: name ttl type rdata.
func (z *stubZone) addZoneLine(line string) error {
	f := strings.Fields(line)
	if len(f) < 4 {
		return fmt.Errorf("bad zone line %q", line)
	}
	name := strings.ToLower(f[0])
	if f[2] != "TXT" {
		z.other[name] = true
		return nil
	}
	rdata := strings.TrimSpace(line[strings.Index(line, " TXT ")+5:])
	var b strings.Builder
	for _, part := range strings.Split(rdata, "\" \"") {
		b.WriteString(strings.Trim(part, "\""))
	}
	z.txt[name] = append(z.txt[name], b.String())
	return nil
}

type scenarioSuite struct {
	Name    string          `json:"name"`
	Profile string          `json:"profile"`
	DNS     json.RawMessage `json:"dns"`
	Cases   []json.RawMessage
}

func TestConformanceScenarios(t *testing.T) {
	dir := conformance.Dir(t, "dmarc")
	var data struct {
		Suites []scenarioSuite `json:"suites"`
	}
	readJSON(t, filepath.Join(dir, "evaluation-scenarios.json"), &data)

	runners := map[string]func(*testing.T, scenarioSuite, *counts){
		"mail-dmarc-rfc9989":    runMailDMARC,
		"mail-auth-dmarc":       runMailAuth,
		"opendmarc-from-domain": runOpenDMARCFrom,
		// RFC 7489 profile, run anyway: the tree walk finds the same policy
		// domains here; cases that differ are listed as exceptions.
		"mox-lookup": runMox,
		"mox-verify": runMox,
	}
	skipReasons := map[string]string{
		"mox-external-report-authorization": "external report destination authorization (RFC 9990 Section 3) belongs to reporting, not policy evaluation",
		"opendmarc-alignment":               "RFC 7489 / OpenDMARC profile: PSL-based alignment without DNS data",
		"opendmarc-org-domain-psl":          "PSL org-domain profile; RFC 9989 uses the DNS tree walk instead",
	}
	var total counts
	for _, s := range data.Suites {
		run, ok := runners[s.Name]
		if !ok {
			reason := skipReasons[s.Name]
			if reason == "" {
				t.Errorf("suite %s (%s) neither run nor skipped with a reason", s.Name, s.Profile)
			}
			t.Logf("suite %s: %d cases skipped: %s", s.Name, len(s.Cases), reason)
			total.skipped += len(s.Cases)
			continue
		}
		var c counts
		t.Run(s.Name, func(t *testing.T) { run(t, s, &c) })
		t.Logf("suite %s: %d pass, %d listed exceptions, %d skipped", s.Name, c.pass, c.excepted, c.skipped)
		total.pass += c.pass
		total.excepted += c.excepted
		total.skipped += c.skipped
	}
	t.Logf("scenarios: %d pass, %d listed exceptions, %d skipped", total.pass, total.excepted, total.skipped)
}

// stripFromName removes a leading "From:" header name, present in some
// transcribed cases that hold a whole header line.
func stripFromName(s string) string {
	if len(s) >= 5 && strings.EqualFold(s[:5], "from:") {
		return s[5:]
	}
	return s
}

func runMailDMARC(t *testing.T, s scenarioSuite, c *counts) {
	var dns struct {
		Zone []string `json:"zone"`
	}
	if err := json.Unmarshal(s.DNS, &dns); err != nil {
		t.Fatal(err)
	}
	z := newStubZone()
	for _, l := range dns.Zone {
		if err := z.addZoneLine(l); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	for i, raw := range s.Cases {
		id := fmt.Sprintf("%s#%d", s.Name, i)
		var tc struct {
			Kind   string         `json:"kind"`
			Domain string         `json:"domain"`
			Header string         `json:"header"`
			Expect map[string]any `json:"expect"`
			Input  struct {
				HeaderFrom string `json:"header_from"`
				SPF        []struct {
					Domain, Scope, Result string
				} `json:"spf"`
				DKIM []struct {
					Domain string `json:"domain"`
					Result string `json:"result"`
				} `json:"dkim"`
			} `json:"input"`
			NXDomain *bool `json:"author_domain_nxdomain"`
		}
		if err := json.Unmarshal(raw, &tc); err != nil {
			t.Fatal(err)
		}
		var err error
		switch tc.Kind {
		case "tree_walk":
			d, derr := Discover(ctx, z.resolver(), tc.Domain)
			switch found := tc.Expect["record_found"]; {
			// A record found that asks for no DMARC processing
			// (ErrNoPolicy) is still found: Discovery.Record is set.
			case found == true && d.Record == nil:
				err = fmt.Errorf("no record: %v", derr)
			case found == false && !errors.Is(derr, ErrNoRecord):
				err = fmt.Errorf("want no record, got %v (%+v)", derr, d)
			}
			if org, ok := tc.Expect["organizational_domain"].(string); ok && err == nil && d.OrgDomain != org {
				err = fmt.Errorf("org domain %q, want %q", d.OrgDomain, org)
			}
		case "organizational_domain":
			org, oerr := OrganizationalDomain(ctx, z.resolver(), tc.Domain)
			if want := tc.Expect["organizational_domain"]; oerr != nil || org != want {
				err = fmt.Errorf("got %q, %v; want %v", org, oerr, want)
			}
		case "validate":
			in := Input{FromDomain: tc.Input.HeaderFrom, Exists: func(context.Context, string) (bool, error) {
				return tc.NXDomain == nil || !*tc.NXDomain, nil
			}}
			for _, spf := range tc.Input.SPF {
				if spf.Scope == "mfrom" {
					in.SPFDomain, in.SPFPass = spf.Domain, spf.Result == "pass"
				}
			}
			for _, dk := range tc.Input.DKIM {
				in.DKIM = append(in.DKIM, DKIMResult{Domain: dk.Domain, Pass: dk.Result == "pass"})
			}
			res := Evaluate(ctx, z.resolver(), in)
			disposition := PolicyNone
			if res.Status == Fail {
				disposition = res.Applied
			}
			got := map[string]string{"result": string(res.Status), "disposition": string(disposition)}
			if res.Record != nil {
				got["published_p"] = string(res.Record.Policy)
			}
			for k, v := range tc.Expect {
				if got[k] != v {
					err = errors.Join(err, fmt.Errorf("%s = %q, want %q (err %v)", k, got[k], v, res.Err))
				}
			}
		case "from_domain":
			d, ferr := authorDomains(tc.Header)
			err = compareFromDomain(d, ferr, tc.Expect["domain"])
		case "fetch_record":
			// Note: the tree walk does query _dmarc.com (RFC 9989 PSD
			// records live there); the expectation is only that no record
			// results.
			_, derr := Discover(ctx, z.resolver(), tc.Domain)
			if !errors.Is(derr, ErrNoRecord) {
				err = fmt.Errorf("want no record, got %v", derr)
			}
		case "external_report_authorized":
			c.skipped++ // Report destination authorization: reporting, not here.
			continue
		default:
			err = fmt.Errorf("unknown kind %q", tc.Kind)
		}
		c.check(t, id, err)
	}
}

// authorDomains parses a From header line (its "From:" name removed) and
// returns its Author Domains, space-separated.
func authorDomains(header string) (string, error) {
	a, err := ParseFrom([]string{stripFromName(header)})
	return strings.Join(a.Domains, " "), err
}

func compareFromDomain(got string, err error, want any) error {
	switch w := want.(type) {
	case nil:
		if err == nil {
			return fmt.Errorf("got domain %q, want none", got)
		}
	case string:
		if err != nil || got != w {
			return fmt.Errorf("got %q, %v; want %q", got, err, w)
		}
	}
	return nil
}

func runMailAuth(t *testing.T, s scenarioSuite, c *counts) {
	ctx := context.Background()
	for i, raw := range s.Cases {
		id := fmt.Sprintf("%s#%d", s.Name, i)
		var tc struct {
			Description string `json:"description"`
			DNS         struct {
				TXT map[string][]string `json:"TXT"`
				A   map[string][]string `json:"A"`
			} `json:"dns"`
			FromHeader string `json:"from_header"`
			SPF        struct {
				Result, Domain string
			} `json:"spf"`
			DKIM []struct {
				Result string `json:"result"`
				D      string `json:"d"`
			} `json:"dkim"`
			Expect map[string]string `json:"expect"`
		}
		if err := json.Unmarshal(raw, &tc); err != nil {
			t.Fatal(err)
		}
		z := newStubZone()
		for n, v := range tc.DNS.TXT {
			z.txt[strings.ToLower(n)] = v
		}
		for n := range tc.DNS.A {
			z.other[strings.ToLower(n)] = true
		}
		author, err := ParseFrom([]string{tc.FromHeader})
		if err != nil {
			c.check(t, id, err)
			continue
		}
		if len(author.Domains) != 1 {
			// No case of this suite has several authors; one that did
			// would need every domain evaluated.
			t.Fatalf("%s: %d Author Domains", id, len(author.Domains))
		}
		from := author.Domains[0]
		in := Input{FromDomain: from, SPFDomain: tc.SPF.Domain, SPFPass: tc.SPF.Result == "pass", Exists: z.exists}
		anyDKIMPass := false
		for _, dk := range tc.DKIM {
			pass := dk.Result == "pass"
			anyDKIMPass = anyDKIMPass || pass
			in.DKIM = append(in.DKIM, DKIMResult{Domain: dk.D, Pass: pass})
		}
		res := Evaluate(ctx, z.resolver(), in)
		alignedResult := func(passed, aligned bool) string {
			switch {
			case !passed:
				return "none"
			case aligned:
				return "pass"
			}
			return "fail (not aligned)"
		}
		got := map[string]string{
			"spf_aligned_result":  alignedResult(in.SPFPass, res.SPFAligned),
			"dkim_aligned_result": alignedResult(anyDKIMPass, res.DKIMAligned),
			"policy":              string(res.Policy),
		}
		if res.Status == None {
			got["policy"] = "no record"
		}
		var cerr error
		for k, v := range tc.Expect {
			if got[k] != v {
				cerr = errors.Join(cerr, fmt.Errorf("%s: %s = %q, want %q (status %s, err %v)", tc.Description, k, got[k], v, res.Status, res.Err))
			}
		}
		c.check(t, id, cerr)
	}
}

func runOpenDMARCFrom(t *testing.T, s scenarioSuite, c *counts) {
	for i, raw := range s.Cases {
		var tc struct {
			HeaderValue string         `json:"header_value"`
			Expect      map[string]any `json:"expect"`
		}
		if err := json.Unmarshal(raw, &tc); err != nil {
			t.Fatal(err)
		}
		d, err := authorDomains(tc.HeaderValue)
		c.check(t, fmt.Sprintf("%s#%d", s.Name, i), compareFromDomain(d, err, tc.Expect["domain"]))
	}
}

func runMox(t *testing.T, s scenarioSuite, c *counts) {
	var dns struct {
		TXT      map[string][]string `json:"TXT"`
		Servfail []string            `json:"servfail"`
	}
	if err := json.Unmarshal(s.DNS, &dns); err != nil {
		t.Fatal(err)
	}
	z := newStubZone()
	for n, v := range dns.TXT {
		z.txt[strings.ToLower(n)] = v
	}
	for _, sf := range dns.Servfail {
		z.servfail[strings.ToLower(strings.TrimPrefix(sf, "TXT "))] = true
	}
	ctx := context.Background()
	for i, raw := range s.Cases {
		var tc struct {
			FromDomain string `json:"from_domain"`
			DKIM       []struct {
				Result string `json:"result"`
				D      string `json:"d"`
			} `json:"dkim"`
			SPF struct {
				Result string  `json:"result"`
				Domain *string `json:"domain"`
			} `json:"spf"`
			Expect struct {
				Status          string  `json:"status"`
				PolicyDomain    string  `json:"policy_domain"`
				Record          *string `json:"record"`
				AlignedSPFPass  bool    `json:"aligned_spf_pass"`
				AlignedDKIMPass bool    `json:"aligned_dkim_pass"`
			} `json:"expect"`
		}
		if err := json.Unmarshal(raw, &tc); err != nil {
			t.Fatal(err)
		}
		var err error
		if s.Name == "mox-lookup" {
			// Lookup only: status none means "no error".
			d, derr := Discover(ctx, z.resolver(), tc.FromDomain)
			var se *SyntaxError
			status := "none"
			switch {
			case IsTemporary(derr):
				status = "temperror"
			case errors.As(derr, &se):
				status = "permerror"
			}
			if status != tc.Expect.Status || (tc.Expect.Record != nil) != (d.Record != nil) ||
				(d.Record != nil && d.Domain != tc.Expect.PolicyDomain) {
				err = fmt.Errorf("got status %s record %v domain %q (err %v); want %+v", status, d.Record != nil, d.Domain, derr, tc.Expect)
			}
		} else {
			in := Input{FromDomain: tc.FromDomain, SPFPass: tc.SPF.Result == "pass", SPFTempError: tc.SPF.Result == "temperror"}
			if tc.SPF.Domain != nil {
				in.SPFDomain = *tc.SPF.Domain
			}
			for _, dk := range tc.DKIM {
				in.DKIM = append(in.DKIM, DKIMResult{Domain: dk.D, Pass: dk.Result == "pass", TempError: dk.Result == "temperror"})
			}
			res := Evaluate(ctx, z.resolver(), in)
			if string(res.Status) != tc.Expect.Status || res.SPFAligned != tc.Expect.AlignedSPFPass || res.DKIMAligned != tc.Expect.AlignedDKIMPass ||
				(res.Record != nil && res.PolicyDomain != tc.Expect.PolicyDomain) {
				err = fmt.Errorf("got %s spf %v dkim %v domain %q (err %v); want %+v", res.Status, res.SPFAligned, res.DKIMAligned, res.PolicyDomain, res.Err, tc.Expect)
			}
		}
		c.check(t, fmt.Sprintf("%s#%d", s.Name, i), err)
	}
}
