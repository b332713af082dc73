package spf

import (
	blitiri "blitiri.com.ar/go/spf"

	"context"
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dmarc-milter/dmarc-milter/internal/dnstest"
	"github.com/dmarc-milter/dmarc-milter/resolver"
)

const zone = `
$ORIGIN example.test.
$TTL 300
@        IN SOA ns hostmaster 1 3600 600 86400 300
@        IN TXT "v=spf1 ip4:192.0.2.0/24 " "a:mail.example.test -all"
mail     IN A 198.51.100.1
mail     IN TXT "v=spf1 a ~all"
soft     IN TXT "v=spf1 ?ip4:192.0.2.1 ~all"
broken   IN TXT "v=spf1 ip4:not-an-address -all"
broken   IN TXT "unrelated"
servfail IN TXT "v=spf1 +all"
twice    IN TXT "v=spf1 -all"
twice    IN TXT "v=spf1 +all"
inc      IN TXT "v=spf1 include:servfail.example.test -all"
nospf    IN A 192.0.2.1
`

func newChecker(t testing.TB) (*Checker, *dnstest.Server) {
	t.Helper()
	srv := dnstest.NewServer(t, zone)
	srv.SetServfail("servfail.example.test", dns.TypeTXT)
	r, err := resolver.New(resolver.Config{Servers: []string{srv.Addr}, Timeout: time.Second, Attempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	return NewChecker(r), srv
}

func TestCheckMailFrom(t *testing.T) {
	c, _ := newChecker(t)
	tests := []struct {
		ip, helo, mailFrom string
		want               Status
		domain             string
	}{
		{"192.0.2.7", "mail.example.test", "user@example.test", Pass, "example.test"},
		{"198.51.100.1", "mail.example.test", "<user@Example.Test>", Pass, "Example.Test"},
		{"203.0.113.1", "mail.example.test", "user@example.test", Fail, "example.test"},
		{"192.0.2.1", "x.test", "user@soft.example.test", Neutral, "soft.example.test"},
		{"192.0.2.2", "x.test", "user@soft.example.test", SoftFail, "soft.example.test"},
		{"192.0.2.1", "x.test", "user@nospf.example.test", None, "nospf.example.test"},
		{"192.0.2.1", "x.test", "user@nx.example.test", None, "nx.example.test"},
		{"192.0.2.1", "x.test", "user@broken.example.test", PermError, "broken.example.test"},
		{"192.0.2.1", "x.test", "user@twice.example.test", PermError, "twice.example.test"},
		// A SERVFAIL is a temporary error (RFC 7208 section 4.4), also
		// inside an include (section 5.2).
		{"192.0.2.1", "x.test", "user@servfail.example.test", TempError, "servfail.example.test"},
		{"192.0.2.1", "x.test", "user@inc.example.test", TempError, "inc.example.test"},
		// Null reverse-path: postmaster@<HELO> (RFC 7208 section 2.4).
		{"198.51.100.1", "mail.example.test", "", Pass, "mail.example.test"},
		{"203.0.113.1", "mail.example.test", "<>", SoftFail, "mail.example.test"},
		// No "@": a bare domain with local-part postmaster.
		{"203.0.113.1", "x.test", "example.test", Fail, "example.test"},
		{"198.51.100.1", "mail.example.test", "user@", Pass, "mail.example.test"},
	}
	for _, tt := range tests {
		got := c.CheckMailFrom(context.Background(), net.ParseIP(tt.ip), tt.helo, tt.mailFrom)
		if got.Status != tt.want || got.Domain != tt.domain || got.Identity != IdentityMailFrom {
			t.Errorf("CheckMailFrom(%s, %q, %q) = %+v, want %s for %s", tt.ip, tt.helo, tt.mailFrom, got, tt.want, tt.domain)
		}
		if hasErr := got.Err != nil; hasErr != (tt.want == TempError || tt.want == PermError) {
			t.Errorf("CheckMailFrom(%s, %q): Err = %v with status %s", tt.ip, tt.mailFrom, got.Err, got.Status)
		}
	}
}

func TestCheckHelo(t *testing.T) {
	c, _ := newChecker(t)
	tests := []struct {
		ip, helo string
		want     Status
	}{
		{"198.51.100.1", "mail.example.test", Pass},
		{"203.0.113.1", "mail.example.test", SoftFail},
		{"203.0.113.1", "mail.example.test.", SoftFail},
		{"203.0.113.1", "nospf.example.test", None},
		{"192.0.2.1", "servfail.example.test", TempError},
		// Not a domain name: no check (RFC 7208 section 2.3).
		{"192.0.2.1", "[192.0.2.1]", None},
		{"192.0.2.1", "[IPv6:2001:db8::1]", None},
		{"192.0.2.1", "192.0.2.1", None},
		{"192.0.2.1", "localhost", None},
		{"192.0.2.1", "", None},
	}
	for _, tt := range tests {
		got := c.CheckHelo(context.Background(), net.ParseIP(tt.ip), tt.helo)
		if got.Status != tt.want || got.Identity != IdentityHelo {
			t.Errorf("CheckHelo(%s, %q) = %+v, want %s", tt.ip, tt.helo, got, tt.want)
		}
	}
}

// A timeout of the SPF record's lookup is a temperror, and a canceled
// context stops the check.
func TestTimeoutAndCancel(t *testing.T) {
	srv := dnstest.NewServer(t, zone)
	srv.SetTimeout("example.test", dns.TypeTXT)
	r, err := resolver.New(resolver.Config{Servers: []string{srv.Addr}, Timeout: 50 * time.Millisecond, Attempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	c := NewChecker(r)
	if got := c.CheckMailFrom(context.Background(), net.ParseIP("192.0.2.1"), "x.test", "a@example.test"); got.Status != TempError {
		t.Errorf("timeout: %+v, want temperror", got)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if got := c.CheckMailFrom(ctx, net.ParseIP("192.0.2.1"), "x.test", "a@mail.example.test"); got.Status != TempError {
		t.Errorf("canceled: %+v, want temperror", got)
	}
}

// BenchmarkCheckWarmCache measures a check whose DNS answers (TXT, then A
// for the a: mechanism) are all cached.
func BenchmarkCheckWarmCache(b *testing.B) {
	c, srv := newChecker(b)
	ctx := context.Background()
	ip := net.ParseIP("198.51.100.1")
	if got := c.CheckMailFrom(ctx, ip, "mail.example.test", "user@example.test"); got.Status != Pass {
		b.Fatalf("warm-up: %+v", got)
	}
	before := srv.Queries()
	b.ReportAllocs()
	for b.Loop() {
		if got := c.CheckMailFrom(ctx, ip, "mail.example.test", "user@example.test"); got.Status != Pass {
			b.Fatalf("%+v", got)
		}
	}
	if n := srv.Queries() - before; n != 0 {
		b.Errorf("warm cache sent %d queries", n)
	}
}

func TestReversePath(t *testing.T) {
	for in, want := range map[string]string{
		"<bob@example.com>":   "bob@example.com",
		" <bob@example.com> ": "bob@example.com",
		"bob@example.com":     "bob@example.com",
		"<>":                  "",
		"":                    "",
		"<<x>>":               "<x>", // only one pair: the rest is the address as given
	} {
		if got := ReversePath(in); got != want {
			t.Errorf("ReversePath(%q) = %q, want %q", in, got, want)
		}
	}
}

// The project's caching resolver is the one used in production; this
// package needs nothing of it but the interface.
var _ blitiri.DNSResolver = (*resolver.Resolver)(nil)
