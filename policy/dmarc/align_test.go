package dmarc

import (
	"slices"
	"testing"
)

func TestAligned(t *testing.T) {
	// Organizational Domains as a tree walk would find them: example.com
	// for its subdomains, except below dept.example.com, which publishes
	// psd=n and is its own organization.
	orgs := map[string]string{
		"example.com":             "example.com",
		"mail.example.com":        "example.com",
		"bounce.mail.example.com": "example.com",
		"dept.example.com":        "dept.example.com",
		"a.dept.example.com":      "dept.example.com",
		"example.net":             "example.net",
	}
	tests := []struct {
		name     string
		id, from string
		mode     Align
		want     bool
		asked    []string // the names whose Organizational Domain was needed
	}{
		{name: "identical, strict", id: "example.com", from: "example.com", mode: AlignStrict, want: true},
		{name: "identical, relaxed", id: "example.com", from: "example.com", mode: AlignRelaxed, want: true},
		{name: "subdomain, strict", id: "mail.example.com", from: "example.com", mode: AlignStrict, want: false},
		{name: "subdomain, relaxed", id: "mail.example.com", from: "example.com", mode: AlignRelaxed, want: true,
			asked: []string{"example.com", "mail.example.com"}},
		{name: "parent, relaxed", id: "example.com", from: "bounce.mail.example.com", mode: AlignRelaxed, want: true,
			asked: []string{"bounce.mail.example.com", "example.com"}},
		{name: "siblings, relaxed", id: "mail.example.com", from: "dept.example.com", mode: AlignRelaxed, want: false,
			asked: []string{"dept.example.com"}},
		{name: "psd=n separates", id: "a.dept.example.com", from: "mail.example.com", mode: AlignRelaxed, want: false,
			asked: []string{"mail.example.com", "a.dept.example.com"}},
		{name: "other TLD: no lookup", id: "example.net", from: "example.com", mode: AlignRelaxed, want: false},
		{name: "unknown Organizational Domain", id: "x.unknown.example", from: "unknown.example", mode: AlignRelaxed, want: false,
			asked: []string{"unknown.example"}},
		{name: "empty identifier", id: "", from: "example.com", mode: AlignRelaxed, want: false},
	}
	for _, tt := range tests {
		var asked []string
		got := Aligned(tt.id, tt.from, tt.mode, func(name string) string {
			asked = append(asked, name)
			return orgs[name]
		})
		if got != tt.want || !slices.Equal(asked, tt.asked) {
			t.Errorf("%s: Aligned(%q, %q, %c) = %v asking %q, want %v asking %q", tt.name, tt.id, tt.from, tt.mode, got, asked, tt.want, tt.asked)
		}
	}
}
