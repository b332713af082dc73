package dnstest

import (
	"context"
	"net"
	"strings"
	"sync"
)

// Resolver answers lookups from maps, for unit tests; it sends no query.
// Map keys are lower-case names, with or without the trailing dot (PTR:
// the address as text). A name in Fail gives that error for every type; a
// name in none of the maps is NXDOMAIN, as is one in another map only
// (NODATA is not modelled, but Exists is true for it). It records the names
// asked and is safe for concurrent use.
type Resolver struct {
	TXT  map[string][]string
	IP   map[string][]net.IPAddr
	MX   map[string][]*net.MX
	PTR  map[string][]string
	Fail map[string]error

	mu      sync.Mutex
	queries []string
}

// NotFound is the error of a lookup of a name that does not exist.
func NotFound(name string) error {
	return &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
}

// ServFail is a temporary failure (SERVFAIL) for name, to put in Fail.
func ServFail(name string) error {
	return &net.DNSError{Err: "server misbehaving", Name: name, IsTemporary: true}
}

func find[V any](m map[string]V, name string) (V, bool) {
	k := strings.ToLower(name)
	if v, ok := m[k]; ok {
		return v, true
	}
	if strings.HasSuffix(k, ".") {
		v, ok := m[strings.TrimSuffix(k, ".")]
		return v, ok
	}
	v, ok := m[k+"."]
	return v, ok
}

// ask records a query and returns its injected failure, if any.
func (r *Resolver) ask(ctx context.Context, name string) error {
	r.mu.Lock()
	r.queries = append(r.queries, name)
	r.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	if err, ok := find(r.Fail, name); ok {
		return err
	}
	return nil
}

func lookup[V any](r *Resolver, ctx context.Context, m map[string]V, name string) (V, error) {
	var zero V
	if err := r.ask(ctx, name); err != nil {
		return zero, err
	}
	if v, ok := find(m, name); ok {
		return v, nil
	}
	return zero, NotFound(name)
}

func (r *Resolver) LookupTXT(ctx context.Context, name string) ([]string, error) {
	return lookup(r, ctx, r.TXT, name)
}

func (r *Resolver) LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error) {
	return lookup(r, ctx, r.IP, host)
}

func (r *Resolver) LookupMX(ctx context.Context, name string) ([]*net.MX, error) {
	return lookup(r, ctx, r.MX, name)
}

func (r *Resolver) LookupAddr(ctx context.Context, addr string) ([]string, error) {
	return lookup(r, ctx, r.PTR, addr)
}

// Exists is false only for a name in none of the maps with no name below
// it (NXDOMAIN, RFC 8020).
func (r *Resolver) Exists(ctx context.Context, name string) (bool, error) {
	if err := r.ask(ctx, name); err != nil {
		return false, err
	}
	k := strings.TrimSuffix(strings.ToLower(name), ".")
	var found bool
	check := func(key string) {
		key = strings.TrimSuffix(key, ".")
		found = found || key == k || strings.HasSuffix(key, "."+k)
	}
	for key := range r.TXT {
		check(key)
	}
	for key := range r.IP {
		check(key)
	}
	for key := range r.MX {
		check(key)
	}
	return found, nil
}

// Queries returns the names asked, in order, as asked.
func (r *Resolver) Queries() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.queries...)
}

// Count returns how often name was asked (case-insensitive, with or
// without the trailing dot).
func (r *Resolver) Count(name string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	want := strings.TrimSuffix(strings.ToLower(name), ".")
	n := 0
	for _, q := range r.queries {
		if strings.TrimSuffix(strings.ToLower(q), ".") == want {
			n++
		}
	}
	return n
}

// Reset forgets the queries asked.
func (r *Resolver) Reset() {
	r.mu.Lock()
	r.queries = nil
	r.mu.Unlock()
}
