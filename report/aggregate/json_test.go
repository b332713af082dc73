package aggregate

import (
	"encoding/json"
	"testing"
)

// FuzzJSON checks that appendRow and appendPublished write what
// json.Marshal writes, for any strings and any shape of the optional
// fields: a row's JSON is its identity in the store.
func FuzzJSON(f *testing.F) {
	f.Add("192.0.2.1", "example.com", "", "reject", "pass", uint8(0), uint64(0))
	f.Add("2001:db8::1", "Ex\u2028<&>\"\\\x00\x1f\x7f\xff", "mailto:a@b", "none", "fail", uint8(0xff), uint64(10485760))
	f.Add("\t\n\r\b\f", "\xe2\x80\xa9é", "x\u2029", "quarantine", "", uint8(0x55), uint64(1))
	f.Fuzz(func(t *testing.T, a, b, c, d, e string, shape uint8, size uint64) {
		opt := func(bit uint8, s string) string {
			if shape&bit != 0 {
				return s
			}
			return ""
		}
		r := Row{SourceIP: a, HeaderFrom: b, EnvelopeFrom: opt(1, c), EnvelopeTo: opt(2, d), Disposition: d, DKIM: e, SPF: a}
		if shape&4 != 0 {
			r.Reasons = []Reason{{Type: c}, {Type: d, Comment: opt(8, e)}}
		}
		if shape&16 != 0 {
			r.AuthSPF = &AuthSPF{Domain: b, Scope: opt(32, "mfrom"), Result: c}
		}
		if shape&64 != 0 {
			r.AuthDKIM = []AuthDKIM{{Domain: a, Selector: b, Result: c}, {Domain: d, Selector: e}}
		}
		want, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		if got := appendRow(nil, &r); string(got) != string(want) {
			t.Fatalf("row:\n got %s\nwant %s", got, want)
		}

		p := Published{Domain: a, P: b, SP: opt(1, c), NP: opt(2, d), ADKIM: e, ASPF: a, FO: b, Testing: c, Discovery: d}
		switch shape >> 6 {
		case 1:
			p.RUA = []URI{}
		case 2:
			p.RUA = []URI{{Address: e}, {Address: a, MaxSize: size}}
		}
		want, err = json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		if got := appendPublished(nil, &p); string(got) != string(want) {
			t.Fatalf("published:\n got %s\nwant %s", got, want)
		}
	})
}
