package spf

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// RFC 7208 Section 4.6.4 limits.
const (
	MaxLookups     = 10 // terms that cause DNS lookups, over the whole evaluation
	MaxVoidLookups = 2  // lookups that return no records
)

// WalkResolver is what Walk asks DNS.
type WalkResolver interface {
	LookupTXT(ctx context.Context, name string) ([]string, error)
	LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error)
	LookupMX(ctx context.Context, name string) ([]*net.MX, error)
}

// Node is one SPF record in the tree of a domain's policy: the domain's
// own record at the root, then the records its include: mechanisms and
// redirect= modifier name.
type Node struct {
	Domain string `json:"domain"`
	// Via is how the parent reached it: "include" or "redirect"; "" at the
	// root.
	Via    string `json:"via,omitempty"`
	Record string `json:"record,omitempty"`
	// Lookups counts this record's terms that cause a DNS lookup (include,
	// a, mx, ptr, exists, redirect).
	Lookups  int      `json:"lookups"`
	Problems []string `json:"problems,omitempty"` // what makes receivers give permerror
	Notes    []string `json:"notes,omitempty"`    // worth knowing, harmless by itself
	Children []*Node  `json:"children,omitempty"`
}

// Tree is a domain's SPF policy as a checker sees it (RFC 7208): the
// records, the DNS-lookup and void-lookup counts over the whole tree
// against MaxLookups and MaxVoidLookups, and what is wrong.
type Tree struct {
	Root     *Node    `json:"root"`
	Lookups  int      `json:"lookups"`
	Void     int      `json:"void_lookups"`
	Problems []string `json:"problems,omitempty"` // syntax errors and limits exceeded: a permerror for receivers
	Notes    []string `json:"notes,omitempty"`
	// TempErrors are DNS failures that left part of the tree unknown.
	TempErrors []string `json:"temp_errors,omitempty"`
}

// Walk reads the SPF policy of domain the way an evaluation does, without
// a client address: every record, include and redirect, with the lookup
// counts. Macros (RFC 7208 Section 7) are not expanded: a term with one is
// counted but not followed.
func Walk(ctx context.Context, r WalkResolver, domain string) Tree {
	w := &walker{ctx: ctx, r: r, seen: map[string]bool{}}
	t := Tree{Root: w.record(strings.TrimSuffix(strings.ToLower(domain), "."), "")}
	t.Lookups, t.Void, t.TempErrors = w.lookups, w.void, w.temp
	collect(t.Root, &t.Problems, &t.Notes)
	if t.Lookups > MaxLookups {
		t.Problems = append(t.Problems, fmt.Sprintf("%d DNS-lookup terms, over the limit of %d (RFC 7208 Section 4.6.4): permerror", t.Lookups, MaxLookups))
	}
	if t.Void > MaxVoidLookups {
		t.Problems = append(t.Problems, fmt.Sprintf("%d void lookups, over the limit of %d (RFC 7208 Section 4.6.4): permerror", t.Void, MaxVoidLookups))
	}
	return t
}

func collect(n *Node, problems, notes *[]string) {
	if n == nil {
		return
	}
	for _, p := range n.Problems {
		*problems = append(*problems, n.Domain+": "+p)
	}
	for _, p := range n.Notes {
		*notes = append(*notes, n.Domain+": "+p)
	}
	for _, c := range n.Children {
		collect(c, problems, notes)
	}
}

type walker struct {
	ctx           context.Context
	r             WalkResolver
	seen          map[string]bool
	lookups, void int
	temp          []string
}

func isNotFound(err error) bool {
	var de *net.DNSError
	return errors.As(err, &de) && de.IsNotFound
}

// record reads and follows the SPF record of domain.
func (w *walker) record(domain, via string) *Node {
	n := &Node{Domain: domain, Via: via}
	if w.seen[domain] {
		n.Problems = append(n.Problems, "loop: this record includes itself")
		return n
	}
	w.seen[domain] = true
	defer delete(w.seen, domain)
	txts, err := w.r.LookupTXT(w.ctx, domain+".")
	if err != nil && !isNotFound(err) {
		w.temp = append(w.temp, fmt.Sprintf("%s: %v", domain, err))
		return n
	}
	var records []string
	for _, t := range txts {
		if l := strings.ToLower(t); l == "v=spf1" || strings.HasPrefix(l, "v=spf1 ") {
			records = append(records, t)
		}
	}
	switch len(records) {
	case 0:
		if via != "" {
			w.void++
			n.Problems = append(n.Problems, "no SPF record: the "+via+" is a permerror")
		}
		return n
	case 1:
	default:
		n.Problems = append(n.Problems, fmt.Sprintf("%d SPF records: permerror (RFC 7208 Section 4.5)", len(records)))
		return n
	}
	n.Record = records[0]
	var redirect string
	for _, term := range strings.Fields(records[0])[1:] {
		w.term(n, term, &redirect)
	}
	if redirect != "" {
		w.lookups++
		n.Lookups++
		if strings.Contains(redirect, "%") {
			n.Problems = append(n.Problems, "redirect="+redirect+" has a macro: not followed here")
		} else {
			n.Children = append(n.Children, w.record(strings.ToLower(redirect), "redirect"))
		}
	}
	return n
}

// term checks one term and follows an include.
func (w *walker) term(n *Node, term string, redirect *string) {
	lower := strings.ToLower(term)
	if name, value, ok := strings.Cut(lower, "="); ok && !strings.ContainsAny(name, ":/") {
		switch name {
		case "redirect":
			if *redirect != "" {
				n.Problems = append(n.Problems, "redirect= given twice: permerror")
			}
			*redirect = value
		case "exp":
		default:
			// Unknown modifiers are ignored (Section 6).
		}
		return
	}
	mech := strings.TrimLeft(lower, "+-~?")
	if len(lower)-len(mech) > 1 {
		n.Problems = append(n.Problems, fmt.Sprintf("%q: more than one qualifier", term))
		return
	}
	name, arg, _ := strings.Cut(mech, ":")
	if i := strings.IndexByte(name, '/'); i >= 0 && arg == "" {
		name = name[:i]
	}
	macro := strings.Contains(arg, "%")
	switch name {
	case "all":
	case "include":
		w.lookups++
		n.Lookups++
		switch {
		case arg == "":
			n.Problems = append(n.Problems, "include without a domain: permerror")
		case macro:
			n.Problems = append(n.Problems, "include:"+arg+" has a macro: not followed here")
		default:
			n.Children = append(n.Children, w.record(arg, "include"))
		}
	case "a", "mx":
		w.lookups++
		n.Lookups++
		target := strings.Split(arg, "/")[0]
		if target == "" {
			target = n.Domain
		}
		if macro {
			return
		}
		var found int
		var err error
		if name == "a" {
			var ips []net.IPAddr
			ips, err = w.r.LookupIPAddr(w.ctx, target+".")
			found = len(ips)
		} else {
			var mxs []*net.MX
			mxs, err = w.r.LookupMX(w.ctx, target+".")
			found = len(mxs)
			if found > MaxLookups {
				n.Problems = append(n.Problems, fmt.Sprintf("mx:%s has %d MX hosts, over %d: permerror (Section 4.6.4)", target, found, MaxLookups))
			}
		}
		switch {
		case err != nil && !isNotFound(err):
			w.temp = append(w.temp, fmt.Sprintf("%s %s: %v", name, target, err))
		case found == 0:
			w.void++
			n.Notes = append(n.Notes, fmt.Sprintf("%s:%s finds no records (a void lookup, %d allowed)", name, target, MaxVoidLookups))
		}
	case "ptr":
		w.lookups++
		n.Lookups++
		n.Notes = append(n.Notes, "ptr: RFC 7208 Section 5.5 says not to use it")
	case "exists":
		w.lookups++
		n.Lookups++
		if arg == "" {
			n.Problems = append(n.Problems, "exists without a domain: permerror")
		}
	case "ip4", "ip6":
		p := arg
		if !strings.Contains(p, "/") {
			p += map[string]string{"ip4": "/32", "ip6": "/128"}[name]
		}
		pf, err := netip.ParsePrefix(p)
		if err != nil || (name == "ip4") != pf.Addr().Is4() {
			n.Problems = append(n.Problems, fmt.Sprintf("%q is not a valid %s network: permerror", term, name))
		}
	default:
		n.Problems = append(n.Problems, fmt.Sprintf("%q: unknown mechanism: permerror", term))
	}
}
