package resolver

import (
	"context"
	"testing"

	"github.com/miekg/dns"

	"github.com/dmarc-milter/dmarc-milter/internal/dnstest"
)

// Exists is false only for NXDOMAIN: NODATA and empty non-terminals exist.
func TestExists(t *testing.T) {
	srv := dnstest.NewServer(t, `$ORIGIN ex.test.
$TTL 300
@ IN SOA ns.ex.test. h.ex.test. 1 3600 600 86400 60
a IN A 192.0.2.1
txtonly IN TXT "v=spf1 -all"
deep.ent IN A 192.0.2.2
`)
	r, err := New(Config{Servers: []string{srv.Addr}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		want bool
	}{
		{"a.ex.test", true},
		{"txtonly.ex.test", true}, // NODATA for A
		{"ent.ex.test", true},     // empty non-terminal
		{"nx.ex.test", false},
		{"deeper.nx.ex.test", false},
	} {
		got, err := r.Exists(context.Background(), tc.name)
		if err != nil || got != tc.want {
			t.Errorf("Exists(%s) = %v, %v; want %v", tc.name, got, err, tc.want)
		}
	}
	// Cached: asking again sends nothing.
	before := srv.Queries()
	r.Exists(context.Background(), "nx.ex.test")
	if srv.Queries() != before {
		t.Error("negative answer not cached")
	}
	srv.SetServfail("sf.ex.test.", dns.TypeA)
	if _, err := r.Exists(context.Background(), "sf.ex.test"); err == nil {
		t.Error("SERVFAIL: no error")
	}
}
