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
		"_dmarc.broken.example.":     {"v=DMARC1; p=reject; p=none"},
		"_dmarc.badsp.example.":      {"v=DMARC1; p=reject; sp=bad"},
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
		{name: "seed strict pass spf", in: Input{FromDomain: "kantiflow.xyz", SPFDomain: "kantiflow.xyz", SPFPass: true},
			want: want{status: Pass, policyDomain: "kantiflow.xyz", policy: PolicyReject, applied: PolicyReject, spf: true}},
		{name: "seed strict subdomain fails", in: Input{FromDomain: "kantiflow.xyz", SPFDomain: "mail.kantiflow.xyz", SPFPass: true,
			DKIM: []DKIMResult{{Domain: "mail.kantiflow.xyz", Pass: true}}},
			want: want{status: Fail, policyDomain: "kantiflow.xyz", policy: PolicyReject, applied: PolicyReject}},
		{name: "seed strict case-insensitive", in: Input{FromDomain: "KantiFlow.XYZ", DKIM: []DKIMResult{{Domain: "kantiflow.xyz.", Pass: true}}},
			want: want{status: Pass, policyDomain: "kantiflow.xyz", policy: PolicyReject, applied: PolicyReject, dkim: true, alignedDomain: "kantiflow.xyz"}},
		{name: "relaxed spf subdomain", in: Input{FromDomain: "relaxed.example", SPFDomain: "bounce.Relaxed.Example", SPFPass: true},
			want: want{status: Pass, policyDomain: "relaxed.example", policy: PolicyReject, applied: PolicyReject, spf: true}},
		{name: "relaxed dkim parent", in: Input{FromDomain: "news.relaxed.example", DKIM: []DKIMResult{{Domain: "relaxed.example", Pass: true}}},
			want: want{status: Pass, policyDomain: "relaxed.example", policy: PolicyReject, applied: PolicyReject, dkim: true, alignedDomain: "relaxed.example"}},
		{name: "relaxed dkim sibling", in: Input{FromDomain: "a.relaxed.example", DKIM: []DKIMResult{{Domain: "b.relaxed.example", Pass: true}}},
			want: want{status: Pass, policyDomain: "relaxed.example", policy: PolicyReject, applied: PolicyReject, dkim: true, alignedDomain: "b.relaxed.example"}},
		{name: "unaligned", in: Input{FromDomain: "relaxed.example", SPFDomain: "relaxed.example.net", SPFPass: true,
			DKIM: []DKIMResult{{Domain: "example", Pass: true}, {Domain: "relaxed.example", Pass: false}}},
			want: want{status: Fail, policyDomain: "relaxed.example", policy: PolicyReject, applied: PolicyReject}},
		{name: "second dkim aligned", in: Input{FromDomain: "relaxed.example", DKIM: []DKIMResult{{Domain: "other.example", Pass: true}, {Domain: "relaxed.example", Pass: true}}},
			want: want{status: Pass, policyDomain: "relaxed.example", policy: PolicyReject, applied: PolicyReject, dkim: true, alignedDomain: "relaxed.example"}},
		{name: "strict spf subdomain", in: Input{FromDomain: "strict.example", SPFDomain: "mail.strict.example", SPFPass: true},
			want: want{status: Fail, policyDomain: "strict.example", policy: PolicyReject, applied: PolicyReject}},
		{name: "strict dkim exact", in: Input{FromDomain: "strict.example", DKIM: []DKIMResult{{Domain: "STRICT.example", Pass: true}}},
			want: want{status: Pass, policyDomain: "strict.example", policy: PolicyReject, applied: PolicyReject, dkim: true, alignedDomain: "strict.example"}},
		{name: "spf fail not aligned", in: Input{FromDomain: "relaxed.example", SPFDomain: "relaxed.example", SPFPass: false},
			want: want{status: Fail, policyDomain: "relaxed.example", policy: PolicyReject, applied: PolicyReject}},
		{name: "t=y downgrades reject", in: Input{FromDomain: "testing.example"},
			want: want{status: Fail, policyDomain: "testing.example", policy: PolicyReject, applied: PolicyQuarantine}},
		{name: "t=y downgrades quarantine", in: Input{FromDomain: "testingq.example"},
			want: want{status: Fail, policyDomain: "testingq.example", policy: PolicyQuarantine, applied: PolicyNone}},
		{name: "pct=0 downgrades", in: Input{FromDomain: "pct0.example"},
			want: want{status: Fail, policyDomain: "pct0.example", policy: PolicyReject, applied: PolicyQuarantine}},
		{name: "pct=50 does not", in: Input{FromDomain: "pct50.example"},
			want: want{status: Fail, policyDomain: "pct50.example", policy: PolicyReject, applied: PolicyReject}},
		{name: "p at author", in: Input{FromDomain: "example.com"},
			want: want{status: Fail, policyDomain: "example.com", policy: PolicyReject, applied: PolicyReject}},
		{name: "sp for existing subdomain", in: Input{FromDomain: "www.example.com"},
			want: want{status: Fail, policyDomain: "example.com", policy: PolicyQuarantine, applied: PolicyQuarantine}},
		{name: "np for non-existent subdomain", in: Input{FromDomain: "ghost.example.com"},
			want: want{status: Fail, policyDomain: "example.com", policy: PolicyNone, applied: PolicyNone}},
		{name: "np with t=y", in: Input{FromDomain: "ghost.np.example"},
			want: want{status: Fail, policyDomain: "np.example", policy: PolicyReject, applied: PolicyQuarantine}},
		{name: "existence temperror", in: Input{FromDomain: "flaky.example.com"},
			want: want{status: TempError, policyDomain: "example.com", policy: PolicyQuarantine, applied: PolicyQuarantine}},
		{name: "existence temperror irrelevant on pass", in: Input{FromDomain: "flaky.example.com", SPFDomain: "example.com", SPFPass: true},
			want: want{status: Pass, policyDomain: "example.com", policy: PolicyQuarantine, applied: PolicyQuarantine, spf: true}},
		{name: "psd record applies below psd", in: Input{FromDomain: "mail.mega.bank.example", SPFDomain: "giant.bank.example", SPFPass: true},
			want: want{status: Fail, policyDomain: "bank.example", policy: PolicyReject, applied: PolicyReject}},
		{name: "psd separates orgs", in: Input{FromDomain: "giant.bank.example", DKIM: []DKIMResult{{Domain: "mega.bank.example", Pass: true}}},
			want: want{status: Fail, policyDomain: "giant.bank.example", policy: PolicyNone, applied: PolicyNone}},
		{name: "psd same org", in: Input{FromDomain: "giant.bank.example", SPFDomain: "mail.giant.bank.example", SPFPass: true},
			want: want{status: Pass, policyDomain: "giant.bank.example", policy: PolicyNone, applied: PolicyNone, spf: true}},
		{name: "psd=n org", in: Input{FromDomain: "a.dept.corp.example", SPFDomain: "b.dept.corp.example", SPFPass: true, DKIM: []DKIMResult{{Domain: "corp.example", Pass: true}}},
			want: want{status: Pass, policyDomain: "dept.corp.example", policy: PolicyReject, applied: PolicyReject, spf: true}},
		// RFC 9989 4.10.1: no valid p and no valid rua, no DMARC processing
		// (none); no valid p with a valid rua, exactly p=none (sp ignored).
		{name: "sp without p or rua: no DMARC processing", in: Input{FromDomain: "mail.sponly.example"},
			want: want{status: None, policyDomain: "sponly.example"}},
		{name: "sp without p, with rua: p=none, sp not applied", in: Input{FromDomain: "mail.sprua.example"},
			want: want{status: Fail, policyDomain: "sprua.example", policy: PolicyNone, applied: PolicyNone}},
		{name: "invalid sp, no rua: no DMARC processing", in: Input{FromDomain: "badsp.example"},
			want: want{status: None, policyDomain: "badsp.example"}},
		{name: "multiple records no policy", in: Input{FromDomain: "multi.example"},
			want: want{status: None}},
		{name: "no record", in: Input{FromDomain: "absent.example", SPFDomain: "absent.example", SPFPass: true},
			want: want{status: None}},
		{name: "malformed", in: Input{FromDomain: "broken.example"},
			want: want{status: PermError, policyDomain: "broken.example"}},
		{name: "dns temperror", in: Input{FromDomain: "temp.example"},
			want: want{status: TempError}},
		{name: "spf temperror aligned", in: Input{FromDomain: "relaxed.example", SPFDomain: "relaxed.example", SPFTempError: true},
			want: want{status: TempError, policyDomain: "relaxed.example", policy: PolicyReject, applied: PolicyReject}},
		{name: "spf temperror unaligned", in: Input{FromDomain: "relaxed.example", SPFDomain: "other.example", SPFTempError: true},
			want: want{status: Fail, policyDomain: "relaxed.example", policy: PolicyReject, applied: PolicyReject}},
		{name: "dkim temperror but spf pass", in: Input{FromDomain: "relaxed.example", SPFDomain: "relaxed.example", SPFPass: true,
			DKIM: []DKIMResult{{Domain: "relaxed.example", TempError: true}}},
			want: want{status: Pass, policyDomain: "relaxed.example", policy: PolicyReject, applied: PolicyReject, spf: true}},
		{name: "dkim temperror aligned", in: Input{FromDomain: "relaxed.example", DKIM: []DKIMResult{{Domain: "s.relaxed.example", TempError: true}}},
			want: want{status: TempError, policyDomain: "relaxed.example", policy: PolicyReject, applied: PolicyReject}},
		{name: "alignment walk temperror", in: Input{FromDomain: "example.com", DKIM: []DKIMResult{{Domain: "tempsig.example.com", Pass: true}}},
			want: want{status: TempError, policyDomain: "example.com", policy: PolicyReject, applied: PolicyReject}},
		{name: "bad identifier not aligned", in: Input{FromDomain: "relaxed.example", SPFDomain: "a..relaxed.example", SPFPass: true},
			want: want{status: Fail, policyDomain: "relaxed.example", policy: PolicyReject, applied: PolicyReject}},
		{name: "empty from", in: Input{FromDomain: ""},
			want: want{status: PermError}},
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
		name      string
		in        Input
		status    Status
		requested Policy // "" means unknown: the message is deferred
		ignored   bool   // failures were weighed and ignored
		queries   []string
	}{
		{
			name:      "own record, identical SPF pass: nothing above is asked",
			in:        Input{FromDomain: "own.example.com", SPFDomain: "own.example.com", SPFPass: true},
			status:    Pass,
			requested: PolicyNone,
			queries:   []string{"_dmarc.own.example.com."},
		},
		{
			name:      "own record, identical DKIM pass, unrelated SPF pass",
			in:        Input{FromDomain: "own.example.com", SPFDomain: "esp.example.net", SPFPass: true, DKIM: []DKIMResult{{Domain: "own.example.com", Pass: true}}},
			status:    Pass,
			requested: PolicyNone,
			queries:   []string{"_dmarc.own.example.com."},
		},
		{
			name:      "own p=reject, nothing passes: rejected without a walk",
			in:        Input{FromDomain: "own.example.com", SPFDomain: "own.example.com"},
			status:    Fail,
			requested: PolicyReject,
			queries:   []string{"_dmarc.own.example.com."},
		},
		{
			name:      "own p=reject, only an unrelated identifier passes: no walk",
			in:        Input{FromDomain: "own.example.com", SPFDomain: "bounce.esp.example.net", SPFPass: true},
			status:    Fail,
			requested: PolicyReject,
			queries:   []string{"_dmarc.own.example.com."},
		},
		{
			name:      "p=none: the failure could change the result, not the requested",
			in:        Input{FromDomain: "mon.example.org", DKIM: []DKIMResult{{Domain: "other.example.org", Pass: true}}},
			status:    TempError,
			requested: PolicyNone,
		},
		{
			name:      "relaxed parent identifier passes under every answer of _dmarc.com",
			in:        Input{FromDomain: "sub.example.com", DKIM: []DKIMResult{{Domain: "example.com", Pass: true}}},
			status:    Pass,
			requested: PolicyNone,
			ignored:   true,
		},
		{
			name:      "own p=reject, relaxed subdomain identifier passes under every answer",
			in:        Input{FromDomain: "example.com", SPFDomain: "bounce.example.com", SPFPass: true},
			status:    Pass,
			requested: PolicyNone,
			ignored:   true,
		},
		{
			name:   "no own record, nothing passes: a record at com could hold any policy",
			in:     Input{FromDomain: "sub.example.com"},
			status: TempError,
		},
		{
			name:      "own record lookup fails but an identical identifier passed",
			in:        Input{FromDomain: "down.example.com", SPFDomain: "down.example.com", SPFPass: true},
			status:    TempError,
			requested: PolicyNone,
		},
		{
			name:   "own record lookup fails, nothing passes",
			in:     Input{FromDomain: "down.example.com"},
			status: TempError,
		},
		{
			name:      "strict record: a relaxed identifier is never walked",
			in:        Input{FromDomain: "strict.example", SPFDomain: "mail.strict.example", SPFPass: true},
			status:    Fail,
			requested: PolicyReject,
			queries:   []string{"_dmarc.strict.example."},
		},
		{
			name:      "psd=y above stops the walk before the failing TLD",
			in:        Input{FromDomain: "a.org.psd.example", DKIM: []DKIMResult{{Domain: "b.org.psd.example", Pass: true}}},
			status:    Pass,
			requested: PolicyNone,
		},
		{
			name:   "psd=y: a sibling organisation never aligns, and the failure could",
			in:     Input{FromDomain: "same.psd.example", DKIM: []DKIMResult{{Domain: "org.psd.example", Pass: true}}},
			status: Fail, requested: PolicyNone,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := &dnstest.Resolver{TXT: zone, Fail: fail}
			res := Evaluate(context.Background(), r, tc.in)
			if res.Status != tc.status || res.Requested != tc.requested {
				t.Errorf("status %s requested %q, want %s %q (err %v)", res.Status, res.Requested, tc.status, tc.requested, res.Err)
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
