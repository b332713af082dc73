package dmarc

import (
	"context"
	"errors"
	"reflect"
	"testing"

	"github.com/dmarc-milter/dmarc-milter/internal/dnstest"
)

func TestEvaluate(t *testing.T) {
	zone := map[string][]string{
		"_dmarc.kantiflow.xyz.":      {"v=DMARC1; p=reject; adkim=s; aspf=s;"},
		"_dmarc.example.com.":        {"v=DMARC1; p=reject; sp=quarantine; np=none"},
		"_dmarc.relaxed.example.":    {"v=DMARC1; p=reject"},
		"_dmarc.strict.example.":     {"v=DMARC1; p=reject; adkim=s; aspf=s"},
		"_dmarc.testing.example.":    {"v=DMARC1; p=reject; t=y"},
		"_dmarc.testingq.example.":   {"v=DMARC1; p=quarantine; t=y"},
		"_dmarc.pct0.example.":       {"v=DMARC1; p=reject; pct=0"},
		"_dmarc.pct50.example.":      {"v=DMARC1; p=reject; pct=50"},
		"_dmarc.np.example.":         {"v=DMARC1; p=none; np=reject; t=y"},
		"_dmarc.multi.example.":      {"v=DMARC1; p=reject", "v=DMARC1; p=reject"},
		"_dmarc.broken.example.":     {"v=DMARC1; p=reject; sp=bad"},
		"_dmarc.bank.example.":       {"v=DMARC1; p=reject; psd=y"},
		"_dmarc.giant.bank.example.": {"v=DMARC1; p=none"},
		"_dmarc.dept.corp.example.":  {"v=DMARC1; p=reject; psd=n"},
		"_dmarc.corp.example.":       {"v=DMARC1; p=none"},
		"_dmarc.sponly.example.":     {"v=DMARC1; sp=reject"},
		"_dmarc.sprua.example.":      {"v=DMARC1; sp=reject; rua=mailto:d@sprua.example"},
	}
	fail := map[string]error{
		"_dmarc.temp.example.":        dnstest.ServFail("_dmarc.temp.example."),
		"_dmarc.tempsig.example.com.": dnstest.ServFail("_dmarc.tempsig.example.com."),
	}
	nonexistent := map[string]bool{"ghost.example.com": true, "ghost.np.example": true}
	exists := func(ctx context.Context, d string) (bool, error) {
		if d == "flaky.example.com" {
			return false, errors.New("timeout")
		}
		return !nonexistent[d], nil
	}

	type want struct {
		status        Status
		policyDomain  string
		policy        Policy
		applied       Policy
		spf, dkim     bool
		alignedDomain string
	}
	tests := []struct {
		name string
		in   Input
		want want
	}{
		{"seed strict pass spf", Input{FromDomain: "kantiflow.xyz", SPFDomain: "kantiflow.xyz", SPFPass: true},
			want{Pass, "kantiflow.xyz", PolicyReject, PolicyReject, true, false, ""}},
		{"seed strict subdomain fails", Input{FromDomain: "kantiflow.xyz", SPFDomain: "mail.kantiflow.xyz", SPFPass: true,
			DKIM: []DKIMResult{{Domain: "mail.kantiflow.xyz", Pass: true}}},
			want{Fail, "kantiflow.xyz", PolicyReject, PolicyReject, false, false, ""}},
		{"seed strict case-insensitive", Input{FromDomain: "KantiFlow.XYZ", DKIM: []DKIMResult{{Domain: "kantiflow.xyz.", Pass: true}}},
			want{Pass, "kantiflow.xyz", PolicyReject, PolicyReject, false, true, "kantiflow.xyz"}},
		{"relaxed spf subdomain", Input{FromDomain: "relaxed.example", SPFDomain: "bounce.Relaxed.Example", SPFPass: true},
			want{Pass, "relaxed.example", PolicyReject, PolicyReject, true, false, ""}},
		{"relaxed dkim parent", Input{FromDomain: "news.relaxed.example", DKIM: []DKIMResult{{Domain: "relaxed.example", Pass: true}}},
			want{Pass, "relaxed.example", PolicyReject, PolicyReject, false, true, "relaxed.example"}},
		{"relaxed dkim sibling", Input{FromDomain: "a.relaxed.example", DKIM: []DKIMResult{{Domain: "b.relaxed.example", Pass: true}}},
			want{Pass, "relaxed.example", PolicyReject, PolicyReject, false, true, "b.relaxed.example"}},
		{"unaligned", Input{FromDomain: "relaxed.example", SPFDomain: "relaxed.example.net", SPFPass: true,
			DKIM: []DKIMResult{{Domain: "example", Pass: true}, {Domain: "relaxed.example", Pass: false}}},
			want{Fail, "relaxed.example", PolicyReject, PolicyReject, false, false, ""}},
		{"second dkim aligned", Input{FromDomain: "relaxed.example", DKIM: []DKIMResult{{Domain: "other.example", Pass: true}, {Domain: "relaxed.example", Pass: true}}},
			want{Pass, "relaxed.example", PolicyReject, PolicyReject, false, true, "relaxed.example"}},
		{"strict spf subdomain", Input{FromDomain: "strict.example", SPFDomain: "mail.strict.example", SPFPass: true},
			want{Fail, "strict.example", PolicyReject, PolicyReject, false, false, ""}},
		{"strict dkim exact", Input{FromDomain: "strict.example", DKIM: []DKIMResult{{Domain: "STRICT.example", Pass: true}}},
			want{Pass, "strict.example", PolicyReject, PolicyReject, false, true, "strict.example"}},
		{"spf fail not aligned", Input{FromDomain: "relaxed.example", SPFDomain: "relaxed.example", SPFPass: false},
			want{Fail, "relaxed.example", PolicyReject, PolicyReject, false, false, ""}},
		{"t=y downgrades reject", Input{FromDomain: "testing.example"},
			want{Fail, "testing.example", PolicyReject, PolicyQuarantine, false, false, ""}},
		{"t=y downgrades quarantine", Input{FromDomain: "testingq.example"},
			want{Fail, "testingq.example", PolicyQuarantine, PolicyNone, false, false, ""}},
		{"pct=0 downgrades", Input{FromDomain: "pct0.example"},
			want{Fail, "pct0.example", PolicyReject, PolicyQuarantine, false, false, ""}},
		{"pct=50 does not", Input{FromDomain: "pct50.example"},
			want{Fail, "pct50.example", PolicyReject, PolicyReject, false, false, ""}},
		{"p at author", Input{FromDomain: "example.com"},
			want{Fail, "example.com", PolicyReject, PolicyReject, false, false, ""}},
		{"sp for existing subdomain", Input{FromDomain: "www.example.com"},
			want{Fail, "example.com", PolicyQuarantine, PolicyQuarantine, false, false, ""}},
		{"np for non-existent subdomain", Input{FromDomain: "ghost.example.com"},
			want{Fail, "example.com", PolicyNone, PolicyNone, false, false, ""}},
		{"np with t=y", Input{FromDomain: "ghost.np.example"},
			want{Fail, "np.example", PolicyReject, PolicyQuarantine, false, false, ""}},
		{"existence temperror", Input{FromDomain: "flaky.example.com"},
			want{TempError, "example.com", PolicyQuarantine, PolicyQuarantine, false, false, ""}},
		{"existence temperror irrelevant on pass", Input{FromDomain: "flaky.example.com", SPFDomain: "example.com", SPFPass: true},
			want{Pass, "example.com", PolicyQuarantine, PolicyQuarantine, true, false, ""}},
		{"psd record applies below psd", Input{FromDomain: "mail.mega.bank.example", SPFDomain: "giant.bank.example", SPFPass: true},
			want{Fail, "bank.example", PolicyReject, PolicyReject, false, false, ""}},
		{"psd separates orgs", Input{FromDomain: "giant.bank.example", DKIM: []DKIMResult{{Domain: "mega.bank.example", Pass: true}}},
			want{Fail, "giant.bank.example", PolicyNone, PolicyNone, false, false, ""}},
		{"psd same org", Input{FromDomain: "giant.bank.example", SPFDomain: "mail.giant.bank.example", SPFPass: true},
			want{Pass, "giant.bank.example", PolicyNone, PolicyNone, true, false, ""}},
		{"psd=n org", Input{FromDomain: "a.dept.corp.example", SPFDomain: "b.dept.corp.example", SPFPass: true, DKIM: []DKIMResult{{Domain: "corp.example", Pass: true}}},
			want{Pass, "dept.corp.example", PolicyReject, PolicyReject, true, false, ""}},
		{"sp without p or rua: not applied to a subdomain", Input{FromDomain: "mail.sponly.example"},
			want{Fail, "sponly.example", PolicyNone, PolicyNone, false, false, ""}},
		{"sp without p, with rua: applied to a subdomain", Input{FromDomain: "mail.sprua.example"},
			want{Fail, "sprua.example", PolicyReject, PolicyReject, false, false, ""}},
		{"multiple records no policy", Input{FromDomain: "multi.example"},
			want{None, "", "", "", false, false, ""}},
		{"no record", Input{FromDomain: "absent.example", SPFDomain: "absent.example", SPFPass: true},
			want{None, "", "", "", false, false, ""}},
		{"malformed", Input{FromDomain: "broken.example"},
			want{PermError, "broken.example", "", "", false, false, ""}},
		{"dns temperror", Input{FromDomain: "temp.example"},
			want{TempError, "", "", "", false, false, ""}},
		{"spf temperror aligned", Input{FromDomain: "relaxed.example", SPFDomain: "relaxed.example", SPFTempError: true},
			want{TempError, "relaxed.example", PolicyReject, PolicyReject, false, false, ""}},
		{"spf temperror unaligned", Input{FromDomain: "relaxed.example", SPFDomain: "other.example", SPFTempError: true},
			want{Fail, "relaxed.example", PolicyReject, PolicyReject, false, false, ""}},
		{"dkim temperror but spf pass", Input{FromDomain: "relaxed.example", SPFDomain: "relaxed.example", SPFPass: true,
			DKIM: []DKIMResult{{Domain: "relaxed.example", TempError: true}}},
			want{Pass, "relaxed.example", PolicyReject, PolicyReject, true, false, ""}},
		{"dkim temperror aligned", Input{FromDomain: "relaxed.example", DKIM: []DKIMResult{{Domain: "s.relaxed.example", TempError: true}}},
			want{TempError, "relaxed.example", PolicyReject, PolicyReject, false, false, ""}},
		{"alignment walk temperror", Input{FromDomain: "example.com", DKIM: []DKIMResult{{Domain: "tempsig.example.com", Pass: true}}},
			want{TempError, "example.com", PolicyReject, PolicyReject, false, false, ""}},
		{"bad identifier not aligned", Input{FromDomain: "relaxed.example", SPFDomain: "a..relaxed.example", SPFPass: true},
			want{Fail, "relaxed.example", PolicyReject, PolicyReject, false, false, ""}},
		{"empty from", Input{FromDomain: ""},
			want{PermError, "", "", "", false, false, ""}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.in.Exists = exists
			r := &dnstest.Resolver{TXT: zone, Fail: fail}
			res := Evaluate(context.Background(), r, tc.in)
			got := want{res.Status, res.PolicyDomain, res.Policy, res.Applied, res.SPFAligned, res.DKIMAligned, res.AlignedDKIMDomain}
			if got != tc.want {
				t.Errorf("got  %+v\nwant %+v (err %v)", got, tc.want, res.Err)
			}
			if (res.Status == TempError || res.Status == PermError || res.Status == None) != (res.Err != nil) {
				t.Errorf("status %s with err %v", res.Status, res.Err)
			}
			if res.Status == TempError && !IsTemporary(res.Err) {
				t.Errorf("temperror err %v not temporary", res.Err)
			}
			// The per-evaluation cache means no name is queried twice.
			seen := map[string]bool{}
			for _, q := range r.Queries() {
				if seen[q] {
					t.Errorf("%s queried twice: %q", q, r.Queries())
				}
				seen[q] = true
			}
		})
	}
}

func TestEvaluateExistsNotCalled(t *testing.T) {
	zone := map[string][]string{"_dmarc.example.com.": {"v=DMARC1; p=reject; sp=quarantine"}}
	called := false
	in := Input{FromDomain: "sub.example.com", Exists: func(context.Context, string) (bool, error) {
		called = true
		return false, nil
	}}
	// np falls back to sp: both quarantine, no existence check needed.
	res := Evaluate(context.Background(), &dnstest.Resolver{TXT: zone}, in)
	if called || res.Policy != PolicyQuarantine {
		t.Errorf("called %v policy %s", called, res.Policy)
	}
	// Nil Exists: assume the domain exists.
	zone["_dmarc.example.com."] = []string{"v=DMARC1; p=reject; sp=quarantine; np=reject"}
	res = Evaluate(context.Background(), &dnstest.Resolver{TXT: zone}, Input{FromDomain: "sub.example.com"})
	if res.Policy != PolicyQuarantine {
		t.Errorf("nil Exists: policy %s, want quarantine", res.Policy)
	}
}

// TestEvaluateLookupFailures: a failed lookup decides only what its answer
// could change (RFC 9989 Section 4.10 order: the Author Domain's record
// first, the tree walk only when needed).
func TestEvaluateLookupFailures(t *testing.T) {
	zone := map[string][]string{
		"_dmarc.own.example.com.":  {"v=DMARC1; p=reject"},
		"_dmarc.mon.example.org.":  {"v=DMARC1; p=none"},
		"_dmarc.example.com.":      {"v=DMARC1; p=reject"},
		"_dmarc.strict.example.":   {"v=DMARC1; p=reject; aspf=s; adkim=s"},
		"_dmarc.psd.example.":      {"v=DMARC1; p=quarantine; psd=y"},
		"_dmarc.org.psd.example.":  {"v=DMARC1; p=reject"},
		"_dmarc.same.psd.example.": {"v=DMARC1; p=none"},
	}
	fail := map[string]error{
		"_dmarc.com.":              dnstest.ServFail("_dmarc.com."),
		"_dmarc.org.":              dnstest.ServFail("_dmarc.org."),
		"_dmarc.example.":          dnstest.ServFail("_dmarc.example."),
		"_dmarc.down.example.com.": dnstest.ServFail("_dmarc.down.example.com."),
	}
	tests := []struct {
		name        string
		in          Input
		status      Status
		disposition Policy // "" means unknown: the message is deferred
		ignored     bool   // failures were weighed and ignored
		queries     []string
	}{
		{
			name:        "own record, identical SPF pass: nothing above is asked",
			in:          Input{FromDomain: "own.example.com", SPFDomain: "own.example.com", SPFPass: true},
			status:      Pass,
			disposition: PolicyNone,
			queries:     []string{"_dmarc.own.example.com."},
		},
		{
			name:        "own record, identical DKIM pass, unrelated SPF pass",
			in:          Input{FromDomain: "own.example.com", SPFDomain: "esp.example.net", SPFPass: true, DKIM: []DKIMResult{{Domain: "own.example.com", Pass: true}}},
			status:      Pass,
			disposition: PolicyNone,
			queries:     []string{"_dmarc.own.example.com."},
		},
		{
			name:        "own p=reject, nothing passes: rejected without a walk",
			in:          Input{FromDomain: "own.example.com", SPFDomain: "own.example.com"},
			status:      Fail,
			disposition: PolicyReject,
			queries:     []string{"_dmarc.own.example.com."},
		},
		{
			name:        "own p=reject, only an unrelated identifier passes: no walk",
			in:          Input{FromDomain: "own.example.com", SPFDomain: "bounce.esp.example.net", SPFPass: true},
			status:      Fail,
			disposition: PolicyReject,
			queries:     []string{"_dmarc.own.example.com."},
		},
		{
			name:        "p=none: the failure could change the result, not the disposition",
			in:          Input{FromDomain: "mon.example.org", DKIM: []DKIMResult{{Domain: "other.example.org", Pass: true}}},
			status:      TempError,
			disposition: PolicyNone,
		},
		{
			name:        "relaxed parent identifier passes under every answer of _dmarc.com",
			in:          Input{FromDomain: "sub.example.com", DKIM: []DKIMResult{{Domain: "example.com", Pass: true}}},
			status:      Pass,
			disposition: PolicyNone,
			ignored:     true,
		},
		{
			name:        "own p=reject, relaxed subdomain identifier passes under every answer",
			in:          Input{FromDomain: "example.com", SPFDomain: "bounce.example.com", SPFPass: true},
			status:      Pass,
			disposition: PolicyNone,
			ignored:     true,
		},
		{
			name:   "no own record, nothing passes: a record at com could hold any policy",
			in:     Input{FromDomain: "sub.example.com"},
			status: TempError,
		},
		{
			name:        "own record lookup fails but an identical identifier passed",
			in:          Input{FromDomain: "down.example.com", SPFDomain: "down.example.com", SPFPass: true},
			status:      TempError,
			disposition: PolicyNone,
		},
		{
			name:   "own record lookup fails, nothing passes",
			in:     Input{FromDomain: "down.example.com"},
			status: TempError,
		},
		{
			name:        "strict record: a relaxed identifier is never walked",
			in:          Input{FromDomain: "strict.example", SPFDomain: "mail.strict.example", SPFPass: true},
			status:      Fail,
			disposition: PolicyReject,
			queries:     []string{"_dmarc.strict.example."},
		},
		{
			name:        "psd=y above stops the walk before the failing TLD",
			in:          Input{FromDomain: "a.org.psd.example", DKIM: []DKIMResult{{Domain: "b.org.psd.example", Pass: true}}},
			status:      Pass,
			disposition: PolicyNone,
		},
		{
			name:   "psd=y: a sibling organisation never aligns, and the failure could",
			in:     Input{FromDomain: "same.psd.example", DKIM: []DKIMResult{{Domain: "org.psd.example", Pass: true}}},
			status: Fail, disposition: PolicyNone,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := &dnstest.Resolver{TXT: zone, Fail: fail}
			res := Evaluate(context.Background(), r, tc.in)
			if res.Status != tc.status || res.Disposition != tc.disposition {
				t.Errorf("status %s disposition %q, want %s %q (err %v)", res.Status, res.Disposition, tc.status, tc.disposition, res.Err)
			}
			if tc.ignored != (len(res.Ignored) > 0) {
				t.Errorf("ignored failures %v, want some: %v", res.Ignored, tc.ignored)
			}
			if tc.queries != nil && !reflect.DeepEqual(r.Queries(), tc.queries) {
				t.Errorf("queries %q, want %q", r.Queries(), tc.queries)
			}
		})
	}
}
