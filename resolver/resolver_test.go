package resolver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"blitiri.com.ar/go/spf"
	"github.com/miekg/dns"

	"github.com/dmarc-milter/dmarc-milter/internal/dnstest"
	"github.com/dmarc-milter/dmarc-milter/internal/testutil"
)

// The resolver is used by blitiri.com.ar/go/spf.
var _ spf.DNSResolver = (*Resolver)(nil)

var long = strings.Repeat("a", 250)

// testZone has a 300s default TTL and a 60s negative TTL (SOA MINIMUM).
var testZone = `
$ORIGIN example.test.
$TTL 300
@        IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 60
@        IN TXT "v=spf1 " "-all"
@        IN MX 20 mx2
@        IN MX 10 mx1
mx1      IN A 192.0.2.1
mx1      IN AAAA 2001:db8::1
mx2      IN A 192.0.2.2
short 30 IN A 192.0.2.30
alias    IN CNAME alias2
alias2   IN CNAME mx1
long     IN TXT "` + long + `" "` + long + `" "x"
big      IN TXT "` + long + `" "` + long + `" "` + long + `" "` + long + `" "` + long + `" "` + long + `"
big      IN TXT "` + long + `" "` + long + `"
a.b.c    IN A 192.0.2.3
sp\ ace\@x IN A 192.0.2.4
esc      IN TXT "q\"b\\s\200\009" "\1x"
1.2.0.192.in-addr.arpa. IN PTR mx1.example.test.
`

func newResolver(t *testing.T, cfg Config, servers ...string) *Resolver {
	t.Helper()
	cfg.Servers = servers
	if cfg.Timeout == 0 {
		cfg.Timeout = time.Second
	}
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// deadServer returns the address of a UDP socket that never answers.
func deadServer(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc.LocalAddr().String()
}

func TestLookups(t *testing.T) {
	srv := dnstest.NewServer(t, testZone)
	r := newResolver(t, Config{}, srv.Addr)
	ctx := context.Background()

	txt, err := r.LookupTXT(ctx, "Example.TEST")
	if err != nil || !reflect.DeepEqual(txt, []string{"v=spf1 -all"}) {
		t.Errorf("LookupTXT = %q, %v; want joined strings", txt, err)
	}
	// A record longer than 255 bytes is several character-strings, joined
	// (RFC 7208 section 3.3).
	txt, err = r.LookupTXT(ctx, "long.example.test.")
	if want := []string{long + long + "x"}; err != nil || !reflect.DeepEqual(txt, want) {
		t.Errorf("LookupTXT(long) = %d records, %v; want 1 record of %d bytes", len(txt), err, len(want[0]))
	}

	// Quote, backslash and non-ASCII bytes come back as the octets of the
	// record, not in presentation format.
	txt, err = r.LookupTXT(ctx, "esc.example.test")
	if want := []string{"q\"b\\s\xc8\t1x"}; err != nil || !reflect.DeepEqual(txt, want) {
		t.Errorf("LookupTXT(esc) = %q, %v; want %q", txt, err, want)
	}

	mxs, err := r.LookupMX(ctx, "example.test")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, mx := range mxs {
		got = append(got, fmt.Sprintf("%d %s", mx.Pref, mx.Host))
	}
	if want := []string{"10 mx1.example.test.", "20 mx2.example.test."}; !reflect.DeepEqual(got, want) {
		t.Errorf("LookupMX = %q, want %q", got, want)
	}

	for _, host := range []string{"mx1.example.test", "alias.example.test"} {
		addrs, err := r.LookupIPAddr(ctx, host)
		if err != nil {
			t.Fatalf("LookupIPAddr(%s): %v", host, err)
		}
		want := []net.IPAddr{{IP: net.ParseIP("192.0.2.1").To4()}, {IP: net.ParseIP("2001:db8::1")}}
		if len(addrs) != 2 || !addrs[0].IP.Equal(want[0].IP) || !addrs[1].IP.Equal(want[1].IP) {
			t.Errorf("LookupIPAddr(%s) = %v, want %v", host, addrs, want)
		}
	}
	// Names with bytes that need escaping (SPF macros can produce them).
	if addrs, err := r.LookupIPAddr(ctx, "SP ACE@x.example.test"); err != nil || len(addrs) != 1 {
		t.Errorf("LookupIPAddr(SP ACE@x) = %v, %v; want one address", addrs, err)
	}
	// A partial answer: mx2 has an A record but no AAAA.
	if addrs, err := r.LookupIPAddr(ctx, "mx2.example.test"); err != nil || len(addrs) != 1 {
		t.Errorf("LookupIPAddr(mx2) = %v, %v; want one address", addrs, err)
	}

	names, err := r.LookupAddr(ctx, "192.0.2.1")
	if err != nil || !reflect.DeepEqual(names, []string{"mx1.example.test."}) {
		t.Errorf("LookupAddr = %q, %v", names, err)
	}
	if _, err := r.LookupAddr(ctx, "not-an-ip"); err == nil {
		t.Errorf("LookupAddr(not-an-ip): no error")
	}
}

func TestNotFoundErrors(t *testing.T) {
	srv := dnstest.NewServer(t, testZone)
	r := newResolver(t, Config{}, srv.Addr)
	ctx := context.Background()

	tests := []struct {
		name   string
		lookup func(string) error
		arg    string
	}{
		{"nxdomain txt", func(n string) error { _, err := r.LookupTXT(ctx, n); return err }, "nx.example.test"},
		{"nodata txt", func(n string) error { _, err := r.LookupTXT(ctx, n); return err }, "mx1.example.test"},
		{"empty non-terminal", func(n string) error { _, err := r.LookupTXT(ctx, n); return err }, "b.c.example.test"},
		{"nodata mx", func(n string) error { _, err := r.LookupMX(ctx, n); return err }, "mx1.example.test"},
		{"nxdomain ip", func(n string) error { _, err := r.LookupIPAddr(ctx, n); return err }, "nx.example.test"},
		{"cname to nodata", func(n string) error { _, err := r.LookupTXT(ctx, n); return err }, "alias.example.test"},
		{"invalid name", func(n string) error { _, err := r.LookupTXT(ctx, n); return err }, "a..b.example.test"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.lookup(tt.arg)
			// Exactly this shape, not wrapped: blitiri's spf and
			// go-msgauth's dkim use type assertions.
			want := &net.DNSError{Err: "no such host", Name: tt.arg, IsNotFound: true}
			if derr, ok := err.(*net.DNSError); !ok || !reflect.DeepEqual(derr, want) {
				t.Errorf("error = %#v, want %#v", err, want)
			}
		})
	}
	if _, err := r.LookupAddr(ctx, "192.0.2.99"); !isNotFound(err) {
		t.Errorf("LookupAddr without PTR: %#v, want not found", err)
	}
}

func isNotFound(err error) bool {
	derr, ok := err.(*net.DNSError)
	return ok && derr.IsNotFound && !derr.IsTemporary && !derr.IsTimeout
}

func TestTTLExpiry(t *testing.T) {
	srv := dnstest.NewServer(t, testZone)
	clk := testutil.NewClock(time.Unix(1_700_000_000, 0))
	r := newResolver(t, Config{Now: clk.Now, MaxTTL: 100 * time.Second}, srv.Addr)
	ctx := context.Background()

	lookup := func() {
		t.Helper()
		if _, err := r.LookupIPAddr(ctx, "short.example.test"); err != nil {
			t.Fatal(err)
		}
	}
	count := func() int { return srv.QueryCount("short.example.test", dns.TypeA) }

	lookup()
	clk.Advance(29 * time.Second)
	lookup()
	if n := count(); n != 1 {
		t.Fatalf("A queries within TTL = %d, want 1", n)
	}
	clk.Advance(time.Second) // The record's 30s TTL is over.
	lookup()
	if n := count(); n != 2 {
		t.Fatalf("A queries after TTL = %d, want 2", n)
	}

	// MaxTTL caps the 300s TTL of the zone at 100s.
	if _, err := r.LookupTXT(ctx, "example.test"); err != nil {
		t.Fatal(err)
	}
	clk.Advance(99 * time.Second)
	r.LookupTXT(ctx, "example.test")
	clk.Advance(time.Second)
	r.LookupTXT(ctx, "example.test")
	if n := srv.QueryCount("example.test", dns.TypeTXT); n != 2 {
		t.Errorf("TXT queries = %d, want 2 (MaxTTL 100s)", n)
	}
}

func TestNegativeCaching(t *testing.T) {
	srv := dnstest.NewServer(t, testZone)
	clk := testutil.NewClock(time.Unix(1_700_000_000, 0))
	r := newResolver(t, Config{Now: clk.Now}, srv.Addr)
	ctx := context.Background()

	for _, name := range []string{"nx.example.test", "mx1.example.test"} { // NXDOMAIN, NODATA
		t.Run(name, func(t *testing.T) {
			srv.ResetCounts()
			for range 3 {
				if _, err := r.LookupTXT(ctx, name); !isNotFound(err) {
					t.Fatalf("LookupTXT: %v", err)
				}
			}
			if n := srv.Queries(); n != 1 {
				t.Errorf("queries = %d, want 1 (cached negative answer)", n)
			}
			// The SOA MINIMUM is 60s (RFC 2308 section 5).
			clk.Advance(60 * time.Second)
			r.LookupTXT(ctx, name)
			if n := srv.Queries(); n != 2 {
				t.Errorf("queries after negative TTL = %d, want 2", n)
			}
		})
	}

	// NegativeTTL caps the SOA's value.
	r = newResolver(t, Config{Now: clk.Now, NegativeTTL: 10 * time.Second}, srv.Addr)
	srv.ResetCounts()
	r.LookupTXT(ctx, "nx.example.test")
	clk.Advance(10 * time.Second)
	r.LookupTXT(ctx, "nx.example.test")
	if n := srv.Queries(); n != 2 {
		t.Errorf("queries with NegativeTTL 10s = %d, want 2", n)
	}

	// Without an SOA in the answer there is no negative TTL: not cached
	// (RFC 2308 section 5).
	nosoa := dnstest.NewServer(t, "noauth.test. 300 IN A 192.0.2.1")
	r = newResolver(t, Config{Now: clk.Now}, nosoa.Addr)
	for range 2 {
		if _, err := r.LookupTXT(ctx, "noauth.test"); !isNotFound(err) {
			t.Fatalf("LookupTXT: %v", err)
		}
	}
	if n := nosoa.Queries(); n != 2 {
		t.Errorf("queries for negative answer without SOA = %d, want 2", n)
	}
}

func TestCacheSizeBound(t *testing.T) {
	srv := dnstest.NewServer(t, testZone)
	r := newResolver(t, Config{CacheSize: 2}, srv.Addr)
	ctx := context.Background()

	for _, n := range []string{"mx1", "mx2", "mx1", "short"} { // "mx2" is least recently used at the end.
		if _, err := r.LookupMX(ctx, n+".example.test"); !isNotFound(err) {
			t.Fatal(err)
		}
	}
	if s := r.Stats(); s.Entries != 2 {
		t.Errorf("Entries = %d, want 2", s.Entries)
	}
	srv.ResetCounts()
	r.LookupMX(ctx, "mx1.example.test")
	r.LookupMX(ctx, "short.example.test")
	if n := srv.Queries(); n != 0 {
		t.Errorf("recent entries: %d queries, want 0", n)
	}
	r.LookupMX(ctx, "mx2.example.test")
	if n := srv.Queries(); n != 1 {
		t.Errorf("evicted entry: %d queries, want 1", n)
	}
}

func TestWarmCache(t *testing.T) {
	srv := dnstest.NewServer(t, testZone)
	r := newResolver(t, Config{}, srv.Addr)
	ctx := context.Background()

	r.LookupTXT(ctx, "example.test")
	r.LookupIPAddr(ctx, "alias.example.test")
	before := srv.Queries()
	up := r.Stats().Upstream
	for _, name := range []string{"example.test", "EXAMPLE.test.", "example.TEST"} {
		if _, err := r.LookupTXT(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.LookupIPAddr(ctx, "Alias.Example.Test"); err != nil {
		t.Fatal(err)
	}
	if n := srv.Queries() - before; n != 0 {
		t.Errorf("warm cache sent %d queries, want 0", n)
	}
	s := r.Stats()
	if s.Upstream != up || s.Hits != 5 {
		t.Errorf("Stats = %+v, want Upstream %d and 5 hits", s, up)
	}
}

func TestMergedQueries(t *testing.T) {
	srv := dnstest.NewServer(t, testZone)
	srv.SetDelay("example.test", dns.TypeTXT, 100*time.Millisecond)
	r := newResolver(t, Config{}, srv.Addr)

	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for range 100 {
		wg.Go(func() {
			txt, err := r.LookupTXT(context.Background(), "example.test")
			if err == nil && len(txt) != 1 {
				err = fmt.Errorf("got %q", txt)
			}
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := srv.Queries(); n != 1 {
		t.Errorf("upstream queries = %d, want 1", n)
	}
	if s := r.Stats(); s.Merged == 0 || s.Misses != s.Merged+1 {
		t.Errorf("Stats = %+v, want all misses but one merged", s)
	}
}

func TestPrefetch(t *testing.T) {
	srv := dnstest.NewServer(t, testZone)
	srv.SetDelay("example.test", dns.TypeTXT, 100*time.Millisecond)
	r := newResolver(t, Config{}, srv.Addr)

	start := time.Now()
	r.PrefetchTXT("example.test")
	r.PrefetchTXT("Example.Test.") // joins the query under way
	r.PrefetchTXT("bad..name")     // not a domain name: nothing sent
	if d := time.Since(start); d > 50*time.Millisecond {
		t.Errorf("PrefetchTXT blocked for %v", d)
	}
	txt, err := r.LookupTXT(context.Background(), "example.test")
	if err != nil || len(txt) != 1 {
		t.Fatalf("LookupTXT after prefetch = %q, %v", txt, err)
	}
	r.PrefetchTXT("example.test") // cached: nothing sent
	if n := srv.Queries(); n != 1 {
		t.Errorf("upstream queries = %d, want 1", n)
	}
	if s := r.Stats(); s.Misses != 1 || s.Merged != 1 || s.Hits != 0 {
		t.Errorf("Stats = %+v, want the lookup alone counted, as merged into the prefetch", s)
	}
}

func TestServfail(t *testing.T) {
	srv := dnstest.NewServer(t, testZone)
	srv.SetServfail("example.test", dns.TypeTXT)
	clk := testutil.NewClock(time.Unix(1_700_000_000, 0))
	r := newResolver(t, Config{Attempts: 1, Now: clk.Now}, srv.Addr)

	lookup := func() {
		t.Helper()
		_, err := r.LookupTXT(context.Background(), "example.test")
		derr, ok := err.(*net.DNSError)
		if !ok || !derr.IsTemporary || derr.IsNotFound || derr.IsTimeout || derr.Name != "example.test" {
			t.Fatalf("error = %#v, want temporary *net.DNSError", err)
		}
	}
	lookup()
	lookup()
	// RFC 2308 section 7.1: the failure is cached for FailureTTL.
	if n := srv.Queries(); n != 1 {
		t.Errorf("queries = %d, want 1 (failure cached)", n)
	}
	if s := r.Stats(); s.Failures != 1 || s.Hits != 1 {
		t.Errorf("Stats = %+v, want one hit on a cached failure", s)
	}
	clk.Advance(DefaultFailureTTL)
	lookup()
	if n := srv.Queries(); n != 2 {
		t.Errorf("queries = %d, want 2 (asked again after FailureTTL)", n)
	}
	// Other types for the name still work.
	if _, err := r.LookupMX(context.Background(), "example.test"); err != nil {
		t.Errorf("LookupMX: %v", err)
	}

	// A negative FailureTTL turns failure caching off.
	srv.ResetCounts()
	r = newResolver(t, Config{Attempts: 1, FailureTTL: -1}, srv.Addr)
	lookup()
	lookup()
	if n := srv.Queries(); n != 2 {
		t.Errorf("FailureTTL -1: queries = %d, want 2", n)
	}
}

// TestTimeoutAboveTwoSeconds checks that Config.Timeout, not the DNS
// library's 2-second default, bounds an attempt.
func TestTimeoutAboveTwoSeconds(t *testing.T) {
	srv := dnstest.NewServer(t, testZone)
	srv.SetDelay("example.test", dns.TypeTXT, 2500*time.Millisecond)
	r := newResolver(t, Config{Timeout: 4 * time.Second, Attempts: 1}, srv.Addr)
	if txt, err := r.LookupTXT(context.Background(), "example.test"); err != nil || len(txt) != 1 {
		t.Errorf("LookupTXT with a 2.5 s answer and a 4 s timeout = %q, %v", txt, err)
	}
}

func TestTimeout(t *testing.T) {
	srv := dnstest.NewServer(t, testZone)
	srv.SetTimeout("example.test", dns.TypeANY)
	r := newResolver(t, Config{Timeout: 50 * time.Millisecond, Attempts: 2}, srv.Addr)

	start := time.Now()
	_, err := r.LookupTXT(context.Background(), "example.test")
	derr, ok := err.(*net.DNSError)
	if !ok || !derr.IsTemporary || !derr.IsTimeout || derr.IsNotFound {
		t.Fatalf("error = %#v, want timeout *net.DNSError", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("took %v", d)
	}
	if n := srv.Queries(); n != 2 {
		t.Errorf("queries = %d, want 2 attempts", n)
	}
}

func TestContextCanceled(t *testing.T) {
	srv := dnstest.NewServer(t, testZone)
	srv.SetTimeout("example.test", dns.TypeANY)
	r := newResolver(t, Config{Timeout: 5 * time.Second, Attempts: 1}, srv.Addr)

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := r.LookupTXT(ctx, "example.test")
	if d := time.Since(start); d > time.Second {
		t.Errorf("returned after %v, want soon after the context deadline", d)
	}
	derr, ok := err.(*net.DNSError)
	if !ok || !derr.IsTimeout || !derr.IsTemporary || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error = %#v, want a timeout wrapping context.DeadlineExceeded", err)
	}
}

func TestFailover(t *testing.T) {
	good := dnstest.NewServer(t, testZone)
	servfail := dnstest.NewServer(t, testZone)
	servfail.SetServfail("example.test", dns.TypeANY)

	tests := []struct {
		name  string
		first string
	}{
		{"dead", deadServer(t)},
		{"servfail", servfail.Addr},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			good.ResetCounts()
			r := newResolver(t, Config{Timeout: 50 * time.Millisecond, Attempts: 2}, tt.first, good.Addr)
			txt, err := r.LookupTXT(context.Background(), "example.test")
			if err != nil || len(txt) != 1 {
				t.Fatalf("LookupTXT = %q, %v", txt, err)
			}
			if n := good.Queries(); n != 1 {
				t.Errorf("second server got %d queries, want 1", n)
			}
		})
	}
	if n := servfail.Queries(); n != 1 {
		t.Errorf("SERVFAIL server got %d queries, want 1 (no retry on SERVFAIL)", n)
	}
}

func TestTruncatedRetriesOverTCP(t *testing.T) {
	srv := dnstest.NewServer(t, testZone)
	r := newResolver(t, Config{}, srv.Addr)

	txt, err := r.LookupTXT(context.Background(), "big.example.test")
	if err != nil {
		t.Fatal(err)
	}
	if len(txt) != 2 || len(txt[0])+len(txt[1]) != 8*len(long) {
		t.Errorf("got %d records", len(txt))
	}
	// The answer is over the 1232-byte EDNS0 buffer: UDP then TCP.
	if n, up := srv.Queries(), r.Stats().Upstream; n != 2 || up != 2 {
		t.Errorf("server saw %d queries, resolver sent %d; want 2 (UDP, TCP)", n, up)
	}
}

// TestFaultyAnswers: an answer that does not answer the question is a
// temporary error, never "no such record" nor a permanent failure (a DKIM
// key or a DMARC policy must not vanish because a server misbehaves).
func TestFaultyAnswers(t *testing.T) {
	srv := dnstest.NewServer(t, testZone, `
loop.test. 300 IN CNAME loop2.test.
loop2.test. 300 IN CNAME loop.test.
c0.test. 300 IN CNAME c1.test.
c1.test. 300 IN CNAME c2.test.
c2.test. 300 IN CNAME c3.test.
c3.test. 300 IN CNAME c4.test.
c4.test. 300 IN CNAME c5.test.
c5.test. 300 IN CNAME c6.test.
c6.test. 300 IN CNAME c7.test.
c7.test. 300 IN CNAME c8.test.
c8.test. 300 IN CNAME c9.test.
c9.test. 300 IN CNAME c10.test.
c10.test. 300 IN CNAME c11.test.
c11.test. 300 IN CNAME c12.test.
c12.test. 300 IN CNAME c13.test.
c13.test. 300 IN CNAME c14.test.
c14.test. 300 IN CNAME c15.test.
c15.test. 300 IN CNAME c16.test.
c16.test. 300 IN CNAME c17.test.
c17.test. 300 IN CNAME c18.test.
c18.test. 300 IN CNAME c19.test.
c19.test. 300 IN CNAME c20.test.
c20.test. 300 IN TXT "end"
c20.test. 300 IN A 192.0.2.1
`)
	srv.SetAnswerOwner("wrong.example.test", dns.TypeANY, "elsewhere.test")
	if err := srv.AddRecord(`wrong.example.test. 300 IN TXT "v=DKIM1; p=abc"`); err != nil {
		t.Fatal(err)
	}
	if err := srv.AddRecord(`wrong.example.test. 300 IN A 192.0.2.2`); err != nil {
		t.Fatal(err)
	}
	r := newResolver(t, Config{}, srv.Addr)
	for _, name := range []string{"loop.test", "c0.test", "wrong.example.test"} {
		t.Run(name, func(t *testing.T) {
			_, err := r.LookupTXT(context.Background(), name)
			derr, ok := err.(*net.DNSError)
			if !ok || derr.IsNotFound || !derr.IsTemporary {
				t.Errorf("LookupTXT error = %#v, want a temporary *net.DNSError", err)
			}
			_, err = r.LookupIPAddr(context.Background(), name)
			if derr, ok := err.(*net.DNSError); !ok || derr.IsNotFound || !derr.IsTemporary {
				t.Errorf("LookupIPAddr error = %#v, want a temporary *net.DNSError", err)
			}
			if _, err := r.Exists(context.Background(), name); err == nil {
				t.Error("Exists: no error")
			}
		})
	}
	// A chain within MaxCNAMEChain is followed.
	if txt, err := r.LookupTXT(context.Background(), fmt.Sprintf("c%d.test", 20-MaxCNAMEChain)); err != nil || len(txt) != 1 || txt[0] != "end" {
		t.Errorf("chain of %d CNAMEs: %q, %v", MaxCNAMEChain, txt, err)
	}
}

func TestNew(t *testing.T) {
	for _, servers := range [][]string{nil, {"127.0.0.1"}, {"localhost:53"}, {"127.0.0.1:0"}, {"127.0.0.1:x"}} {
		if _, err := New(Config{Servers: servers}); err == nil {
			t.Errorf("New(%q): no error", servers)
		}
	}
	if _, err := New(Config{Servers: []string{"127.0.0.1:53", "[::1]:5353"}}); err != nil {
		t.Errorf("New: %v", err)
	}
}

func TestServersFromResolvConf(t *testing.T) {
	path := filepath.Join(t.TempDir(), "resolv.conf")
	conf := "# comment\nsearch example.test\nnameserver 127.0.0.53\nnameserver ::1\noptions edns0\n"
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := ServersFromResolvConf(path)
	if want := []string{"127.0.0.53:53", "[::1]:53"}; err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("ServersFromResolvConf = %q, %v; want %q", got, err, want)
	}
	if _, err := ServersFromResolvConf(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("missing file: no error")
	}
}

// Failed upstream attempts are counted by kind, for the metrics.
func TestErrorKinds(t *testing.T) {
	srv := dnstest.NewServer(t, testZone)
	srv.SetServfail("mx1.example.test.", dns.TypeTXT)
	srv.SetTimeout("alias1.example.test.", dns.TypeTXT)
	srv.SetAnswerOwner("long.example.test.", dns.TypeTXT, "other.example.test.")
	r := newResolver(t, Config{Timeout: 200 * time.Millisecond, Attempts: 1, FailureTTL: -1}, srv.Addr)
	ctx := context.Background()
	for _, name := range []string{"mx1.example.test.", "alias1.example.test.", "long.example.test."} {
		if _, err := r.LookupTXT(ctx, name); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	got := r.Stats().Errors
	if got[ErrorRcode] != 1 || got[ErrorTimeout] != 1 || got[ErrorBogus] != 1 || got[ErrorNetwork] != 0 {
		t.Errorf("errors by kind: %v", got)
	}
}
