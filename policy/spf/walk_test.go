package spf

import (
	"context"
	"net"
	"strings"
	"testing"

	"github.com/dmarc-milter/dmarc-milter/internal/dnstest"
)

func TestWalk(t *testing.T) {
	txt := map[string][]string{
		"ok.example.":      {"v=spf1 ip4:192.0.2.0/24 include:_spf.ok.example a mx -all", "google-site-verification=x"},
		"_spf.ok.example.": {"v=spf1 ip6:2001:db8::/32 ~all"},
		"two.example.":     {"v=spf1 -all", "v=spf1 +all"},
		"bad.example.":     {"v=spf1 ip4:300.1.1.1 foo:bar include: ++all redirect=x.example redirect=y.example"},
		"loop.example.":    {"v=spf1 include:loop.example -all"},
		"void.example.":    {"v=spf1 include:nothing.example a:none1.void.example a:none2.void.example -all"},
		"many.example.":    {"v=spf1 " + strings.Repeat("include:_spf.ok.example ", 11) + "-all"},
		"redir.example.":   {"v=spf1 redirect=_spf.ok.example"},
		"temp.example.":    {"v=spf1 include:down.example -all"},
	}
	r := &dnstest.Resolver{TXT: txt,
		IP:   map[string][]net.IPAddr{"ok.example.": {{IP: net.ParseIP("192.0.2.1")}}},
		MX:   map[string][]*net.MX{"ok.example.": {{Host: "mx.ok.example.", Pref: 10}}},
		Fail: map[string]error{"down.example.": dnstest.ServFail("down.example.")}}
	for _, tt := range []struct {
		domain         string
		lookups, void  int
		problems, temp int
		problem        string // a substring of one problem
		children       int
	}{
		{domain: "ok.example", lookups: 3, children: 1},
		{domain: "two.example", problems: 1, problem: "2 SPF records"},
		{domain: "bad.example", lookups: 2, void: 1, problems: 6, problem: "unknown mechanism", children: 1},
		{domain: "loop.example", lookups: 1, problems: 1, problem: "loop", children: 1},
		{domain: "void.example", lookups: 3, void: 3, problems: 2, problem: "void lookups, over the limit", children: 1},
		{domain: "many.example", lookups: 11, problems: 1, problem: "over the limit of 10", children: 11},
		{domain: "redir.example", lookups: 1, children: 1},
		{domain: "temp.example", lookups: 1, temp: 1, children: 1},
	} {
		tree := Walk(context.Background(), r, tt.domain)
		if tree.Lookups != tt.lookups || tree.Void != tt.void || len(tree.Problems) != tt.problems || len(tree.TempErrors) != tt.temp ||
			len(tree.Root.Children) != tt.children || (tt.problem != "" && !strings.Contains(strings.Join(tree.Problems, "\n"), tt.problem)) {
			t.Errorf("%s: lookups %d void %d children %d problems %q temp %q", tt.domain, tree.Lookups, tree.Void,
				len(tree.Root.Children), tree.Problems, tree.TempErrors)
		}
	}
}
