package dmarc

import (
	"errors"
	"reflect"
	"testing"
)

func TestParseRecord(t *testing.T) {
	def := func(mod func(r *Record)) *Record {
		r := &Record{Policy: PolicyNone, PSD: 'u', ADKIM: AlignRelaxed, ASPF: AlignRelaxed, FailureOptions: FailureAll, Pct: -1}
		if mod != nil {
			mod(r)
		}
		return r
	}
	tests := []struct {
		name string
		txt  string
		want *Record // nil with wantErr
		err  string  // "notdmarc", "syntax" or ""
		// warnings is the number of expected warnings; -1 to not check.
		warnings int
	}{
		{"seed", "v=DMARC1; p=reject; adkim=s; aspf=s;", def(func(r *Record) {
			r.Policy, r.ADKIM, r.ASPF = PolicyReject, AlignStrict, AlignStrict
		}), "", 0},
		{"minimal", "v=DMARC1; p=none", def(nil), "", 0},
		{"all tags", "v=DMARC1; p=quarantine; sp=reject; np=none; psd=n; t=y; adkim=s; aspf=r; rua=mailto:a@example.com,mailto:b@example.net!10m; ruf=mailto:f@example.com; fo=1:d:s", def(func(r *Record) {
			r.Policy, r.SubdomainPolicy, r.NonexistentPolicy = PolicyQuarantine, PolicyReject, PolicyNone
			r.PSD, r.Testing, r.ADKIM = 'n', true, AlignStrict
			r.RUA = []URI{{Address: "mailto:a@example.com"}, {Address: "mailto:b@example.net", MaxSize: 10 << 20}}
			r.RUF = []URI{{Address: "mailto:f@example.com"}}
			r.FailureOptions = FailureAny | FailureDKIM | FailureSPF
		}), "", 0},
		{"case and whitespace", "V = DMARC1 ;\tP = REJECT ; Sp=Quarantine;  PSD = Y ; T=N; ADKIM=S", def(func(r *Record) {
			r.Policy, r.SubdomainPolicy, r.PSD, r.ADKIM = PolicyReject, PolicyQuarantine, 'y', AlignStrict
		}), "", 0},
		{"p not first after v", "v=DMARC1; sp=none; p=reject", def(func(r *Record) {
			r.Policy, r.SubdomainPolicy = PolicyReject, PolicyNone
		}), "", 0},
		{"unknown tag ignored", "v=DMARC1; p=reject; future=thing", def(func(r *Record) { r.Policy = PolicyReject }), "", 0},
		{"missing p is none", "v=DMARC1; rua=mailto:d@example.com", def(func(r *Record) {
			r.RUA = []URI{{Address: "mailto:d@example.com"}}
		}), "", 1},
		// RFC 9989 4.10.1: a record without a valid p (a missing p is not a
		// valid one, 4.7 "p" refers to 4.10.1) is exactly p=none, sp and
		// np dropped, when rua holds a valid URI, and asks for no DMARC
		// processing otherwise (ErrNoPolicy, the record still returned for
		// its psd tag).
		{"missing p no rua: no processing", "v=DMARC1; psd=y", nil, "nopolicy", 0},
		{"bare version: no processing", "v=DMARC1", nil, "nopolicy", 0},
		{"sp without p, no rua: no processing", "v=DMARC1; sp=reject; np=quarantine", nil, "nopolicy", 0},
		{"sp without p, with rua: exactly p=none", "v=DMARC1; sp=reject; rua=mailto:d@example.com", def(func(r *Record) {
			r.RUA = []URI{{Address: "mailto:d@example.com"}}
		}), "", 1},
		{"sp without p, invalid rua: no processing", "v=DMARC1; sp=reject; rua=not a uri", nil, "nopolicy", 0},
		{"invalid p with rua", "v=DMARC1; p=foo; rua=mailto:d@example.com", def(func(r *Record) {
			r.RUA = []URI{{Address: "mailto:d@example.com"}}
		}), "", 1},
		{"invalid sp with rua drops sp", "v=DMARC1; p=reject; sp=bogus; np=reject; rua=mailto:d@example.com", def(func(r *Record) {
			r.RUA = []URI{{Address: "mailto:d@example.com"}}
		}), "", 1},
		{"invalid p no rua", "v=DMARC1; p=foo", nil, "nopolicy", 0},
		{"invalid sp no rua", "v=DMARC1; p=reject; sp=invalid", nil, "nopolicy", 0},
		{"invalid np no rua", "v=DMARC1; p=reject; np=invalid", nil, "nopolicy", 0},
		{"invalid np with only bad rua", "v=DMARC1; p=reject; np=x; rua=nomailto", nil, "nopolicy", 0},
		{"p without value", "v=DMARC1; p", nil, "nopolicy", 0},
		{"empty p", "v=DMARC1; p=", nil, "nopolicy", 0},
		{"duplicate p", "v=DMARC1; p=reject; p=none", nil, "syntax", 0},
		{"duplicate v", "v=DMARC1; v=DMARC1; p=none", nil, "syntax", 0},
		{"duplicate unknown ok", "v=DMARC1; p=none; x=1; x=2", def(nil), "", 0},
		{"bad psd defaults", "v=DMARC1; p=reject; psd=x", def(func(r *Record) { r.Policy = PolicyReject }), "", 1},
		{"bad t defaults", "v=DMARC1; p=reject; t=yes", def(func(r *Record) { r.Policy = PolicyReject }), "", 1},
		{"bad adkim defaults", "v=DMARC1; p=reject; adkim=strict", def(func(r *Record) { r.Policy = PolicyReject }), "", 1},
		{"bad fo defaults", "v=DMARC1; p=reject; fo=x", def(func(r *Record) { r.Policy = PolicyReject }), "", 1},
		{"bad rua uri dropped", "v=DMARC1; p=none; rua=reports@example.com,mailto:d@example.com", def(func(r *Record) {
			r.RUA = []URI{{Address: "mailto:d@example.com"}}
		}), "", 1},
		{"bad size suffix dropped", "v=DMARC1; p=none; rua=mailto:d@example.com!10p", def(nil), "", 1},
		{"stray separators", "v=DMARC1;; p=none;", def(nil), "", 1},
		{"bogus tag without value", "v=DMARC1; p=none; bogus", def(nil), "", 1},
		{"pct=0 is testing", "v=DMARC1; p=reject; pct=0", def(func(r *Record) { r.Policy, r.Pct, r.Testing = PolicyReject, 0, true }), "", 0},
		{"pct=50 not testing", "v=DMARC1; p=reject; pct=50", def(func(r *Record) { r.Policy, r.Pct = PolicyReject, 50 }), "", 0},
		{"t overrides pct", "v=DMARC1; p=reject; pct=0; t=n", def(func(r *Record) { r.Policy, r.Pct = PolicyReject, 0 }), "", 0},
		{"bad pct ignored", "v=DMARC1; p=reject; pct=150", def(func(r *Record) { r.Policy = PolicyReject }), "", 1},
		{"rf ri ignored", "v=DMARC1; p=reject; rf=junk; ri=abc", def(func(r *Record) { r.Policy = PolicyReject }), "", 0},
		{"size units", "v=DMARC1; p=none; rua=mailto:a@x.example!2k,mailto:b@x.example!3,mailto:c@x.example!1G", def(func(r *Record) {
			r.RUA = []URI{{"mailto:a@x.example", 2048}, {"mailto:b@x.example", 3}, {"mailto:c@x.example", 1 << 30}}
		}), "", 0},
		{"spf record", "v=spf1 -all", nil, "notdmarc", 0},
		{"empty", "", nil, "notdmarc", 0},
		{"v not first", "p=reject; v=DMARC1", nil, "notdmarc", 0},
		{"v value case-sensitive", "v=dmarc1; p=reject", nil, "notdmarc", 0},
		{"v value leftover", "v=DMARC12; p=reject", nil, "notdmarc", 0},
		{"missing separator", "v=DMARC1 p=reject", nil, "notdmarc", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseRecord(tc.txt)
			switch tc.err {
			case "notdmarc":
				if !errors.Is(err, ErrNotDMARC) {
					t.Fatalf("got %v, %v; want ErrNotDMARC", got, err)
				}
				return
			case "syntax":
				var se *SyntaxError
				if !errors.As(err, &se) || errors.Is(err, ErrNoPolicy) || got != nil {
					t.Fatalf("got %+v, %v; want *SyntaxError for a malformed record", got, err)
				}
				return
			case "nopolicy":
				var se *SyntaxError
				if !errors.As(err, &se) || !errors.Is(err, ErrNoPolicy) || got == nil || got.Policy != PolicyNone {
					t.Fatalf("got %+v, %v; want the record with ErrNoPolicy", got, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error %v", err)
			}
			if tc.warnings >= 0 && len(got.Warnings) != tc.warnings {
				t.Errorf("warnings %q, want %d", got.Warnings, tc.warnings)
			}
			got.Warnings = nil
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestRecordPolicies(t *testing.T) {
	tests := []struct {
		txt    string
		sp, np Policy
	}{
		{"v=DMARC1; p=reject", PolicyReject, PolicyReject},
		{"v=DMARC1; p=reject; sp=quarantine", PolicyQuarantine, PolicyQuarantine},
		{"v=DMARC1; p=reject; np=none", PolicyReject, PolicyNone},
		{"v=DMARC1; p=none; sp=quarantine; np=reject", PolicyQuarantine, PolicyReject},
	}
	for _, tc := range tests {
		r, err := ParseRecord(tc.txt)
		if err != nil {
			t.Fatal(err)
		}
		if sp, np := r.subdomainPolicy(), r.nonexistentPolicy(); sp != tc.sp || np != tc.np {
			t.Errorf("%q: sp %s np %s, want %s %s", tc.txt, sp, np, tc.sp, tc.np)
		}
	}
}

func FuzzParseRecord(f *testing.F) {
	for _, s := range []string{
		"v=DMARC1; p=reject; adkim=s; aspf=s;",
		"v=DMARC1; p=none; rua=mailto:a@b.example!10m,mailto:c@d.example; fo=0:1:d:s; pct=0",
		"V = DMARC1 ; P = reject ;\tSP=none; np=quarantine; psd=y; t=y",
		"v=DMARC1; p=foo; rua=mailto:x@y.example!",
		"v=DMARC1;;;=;p",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRecord(s)
		if err == nil {
			if r == nil {
				t.Fatal("nil record without error")
			}
			switch r.Policy {
			case PolicyNone, PolicyQuarantine, PolicyReject:
			default:
				t.Fatalf("bad policy %q", r.Policy)
			}
			if r.PSD != 'y' && r.PSD != 'n' && r.PSD != 'u' {
				t.Fatalf("bad psd %q", r.PSD)
			}
		} else if r != nil && !errors.Is(err, ErrNoPolicy) {
			t.Fatal("record with an error other than ErrNoPolicy")
		}
	})
}

// TestIsRecord: one test of "is this a DMARC record", for policy records
// and for external report authorizations alike.
func TestIsRecord(t *testing.T) {
	for _, tc := range []struct {
		txt  string
		want bool
	}{
		{"v=DMARC1", true},
		{"v=DMARC1; p=none", true},
		{"V=DMARC1", true},          // tag names are case-insensitive
		{" v = DMARC1 ;", true},     // white space around tags and "="
		{"v=dmarc1", false},         // the value is case-sensitive
		{"v=DMARC1x", false},        // not the version
		{"p=none; v=DMARC1", false}, // v must come first
		{"v:DMARC1", false},
		{"", false},
	} {
		if got := IsRecord(tc.txt); got != tc.want {
			t.Errorf("IsRecord(%q) = %v, want %v", tc.txt, got, tc.want)
		}
	}
}

// A RecordCache parses a record's text once; a nil one parses every time.
func TestRecordCache(t *testing.T) {
	c := NewRecordCache(2)
	a, err := c.Parse("v=DMARC1; p=reject")
	b, _ := c.Parse("v=DMARC1; p=reject")
	if err != nil || a != b || a.Policy != PolicyReject {
		t.Errorf("parsed %p %p (%v), want the one record twice", a, b, err)
	}
	if _, err := c.Parse("v=spf1 -all"); !errors.Is(err, ErrNotDMARC) {
		t.Errorf("not a DMARC record: %v", err)
	}
	c.Parse("v=DMARC1; p=none") // full: emptied, then kept
	if r, _ := c.Parse("v=DMARC1; p=reject"); r == a {
		t.Error("an emptied cache still had the record")
	}
	var none *RecordCache
	if r, err := none.Parse("v=DMARC1; p=quarantine"); err != nil || r.Policy != PolicyQuarantine {
		t.Errorf("nil cache: %v %v", r, err)
	}
}
