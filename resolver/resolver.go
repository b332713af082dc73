// Package resolver is a caching DNS stub resolver (RFC 1034 section 5.3.1)
// shared by the SPF, DKIM and DMARC checks.
//
// It sends recursive queries to configured upstream resolvers with
// github.com/miekg/dns, and caches answers for their TTL (RFC 1035 section
// 3.2.1, capped by Config.MaxTTL) and negative answers, NXDOMAIN and NODATA,
// for the TTL RFC 2308 section 5 gives (capped by Config.NegativeTTL). The
// cache is bounded in size and evicts the least recently used entry.
// Identical concurrent queries share one upstream query.
//
// Errors are always returned as an unwrapped *net.DNSError, the shape
// blitiri.com.ar/go/spf and github.com/emersion/go-msgauth/dkim inspect with
// a plain type assertion: IsNotFound for NXDOMAIN and NODATA, IsTemporary
// for SERVFAIL, REFUSED, network errors and timeouts (which also set
// IsTimeout).
//
// A temporary failure (SERVFAIL, REFUSED, a timeout, an answer that does
// not answer the question) is cached for Config.FailureTTL, 30 seconds by
// default (see DefaultFailureTTL), so that a dead or broken name server
// costs one timeout per question and period, not one per message.
//
// A DNS fault is never turned into a permanent answer: an answer whose
// records belong to another name, a CNAME loop and a CNAME chain longer
// than MaxCNAMEChain are temporary errors, like SERVFAIL. Only NXDOMAIN and
// NODATA (RFC 2308) say that there is no record.
package resolver

import (
	"cmp"
	"container/list"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"

	"github.com/dmarc-milter/dmarc-milter/internal/defaults"
)

// Config configures a Resolver. Zero fields take the documented defaults.
type Config struct {
	// Servers are the upstream recursive resolvers, "host:port" with an IP
	// address as host, tried in order.
	Servers []string
	// Timeout bounds each attempt (one query to one server). Default 2s.
	Timeout time.Duration
	// Attempts is the number of attempts per server before moving on to
	// the next one. Default 2.
	Attempts int
	// CacheSize is the maximum number of cached answers. Default 50000.
	CacheSize int
	// MaxTTL caps the time an answer is cached. Default 1h.
	MaxTTL time.Duration
	// NegativeTTL caps the time a negative answer is cached. Default 15m.
	NegativeTTL time.Duration
	// FailureTTL is how long a temporary failure is cached; negative
	// turns failure caching off. Default 30s (DefaultFailureTTL).
	FailureTTL time.Duration
	// Now is the clock used for cache expiry. Default time.Now.
	Now func() time.Time
}

// Defaults for zero Config fields.
const (
	DefaultTimeout     = 2 * time.Second
	DefaultAttempts    = 2
	DefaultCacheSize   = 50000
	DefaultMaxTTL      = time.Hour
	DefaultNegativeTTL = 15 * time.Minute
	// DefaultFailureTTL: RFC 2308 section 7.1 allows a server failure to be
	// cached for up to five minutes. 30 seconds is short enough that mail
	// deferred by a passing fault finds DNS asked anew when the sender
	// retries (Postfix's first retry comes after 5 minutes at the
	// earliest), and long enough that a busy MX sends a broken name one
	// query every 30 seconds instead of one per message, each waiting the
	// full timeout.
	DefaultFailureTTL = 30 * time.Second
)

// ednsBufferSize is the EDNS0 UDP payload size advertised upstream, the
// value recommended by DNS Flag Day 2020 to avoid IP fragmentation.
const ednsBufferSize = 1232

// MaxCNAMEChain is the longest CNAME chain followed inside one answer;
// a longer one is a temporary error (a resolver that truncated it, or a
// misconfigured zone that may be mended).
const MaxCNAMEChain = 16

// Stats are counters since the Resolver was created.
type Stats struct {
	Upstream int64 // query messages sent upstream (each attempt, UDP or TCP)
	Hits     int64 // lookups answered from the cache
	Misses   int64 // lookups not answered from the cache
	Merged   int64 // misses that waited for an identical query already in flight
	Failures int64 // lookups answered with a cached temporary failure (counted in Hits too)
	Entries  int   // answers currently cached
	// Errors counts the upstream attempts that failed, by kind: "timeout",
	// "network" (refused, unreachable), "rcode" (SERVFAIL, REFUSED and
	// other error codes) and "bogus" (an answer that does not answer the
	// question).
	Errors map[string]int64
}

// Upstream error kinds (Stats.Errors).
const (
	ErrorTimeout = "timeout"
	ErrorNetwork = "network"
	ErrorRcode   = "rcode"
	ErrorBogus   = "bogus"
)

// Resolver is a caching DNS resolver. It is safe for concurrent use.
type Resolver struct {
	cfg Config
	udp *dns.Client
	tcp *dns.Client

	upstream                                   atomic.Int64
	hits                                       atomic.Int64
	misses                                     atomic.Int64
	merged                                     atomic.Int64
	failures                                   atomic.Int64
	errTimeout, errNetwork, errRcode, errBogus atomic.Int64

	mu       sync.Mutex
	lru      *list.List // of *entry, most recently used first
	entries  map[key]*list.Element
	inflight map[key]*call
}

// key identifies a question: a lower-case fully qualified name and a type.
type key struct {
	name  string
	qtype uint16
}

// answer is the outcome of a question: the records of the asked type at the
// end of any CNAME chain, or notFound for NXDOMAIN/NODATA.
type answer struct {
	rrs []dns.RR
	// txt holds a TXT answer's records, each one string (its
	// character-strings joined and unescaped), made once when the answer
	// is received rather than on every cache hit.
	txt      []string
	notFound bool
	nxdomain bool // the name does not exist at all (RCODE 3), not just NODATA
}

type entry struct {
	key     key
	answer  answer
	err     *net.DNSError // a cached temporary failure; answer is then empty
	expires time.Time
}

// call is a query in flight, shared by all lookups of the same question.
type call struct {
	done   chan struct{}
	answer answer
	err    *net.DNSError
}

// New returns a Resolver for cfg. It fails when no server is given or a
// server address is not "ip:port".
func New(cfg Config) (*Resolver, error) {
	if len(cfg.Servers) == 0 {
		return nil, errors.New("resolver: no upstream servers configured")
	}
	for _, s := range cfg.Servers {
		host, port, err := net.SplitHostPort(s)
		if err != nil {
			return nil, fmt.Errorf("resolver: server %q: %w", s, err)
		}
		if net.ParseIP(host) == nil {
			return nil, fmt.Errorf("resolver: server %q: host is not an IP address", s)
		}
		if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
			return nil, fmt.Errorf("resolver: server %q: bad port", s)
		}
	}
	cfg.Servers = slices.Clone(cfg.Servers)
	cfg.Timeout = defaults.Positive(cfg.Timeout, DefaultTimeout)
	cfg.Attempts = defaults.Positive(cfg.Attempts, DefaultAttempts)
	cfg.CacheSize = defaults.Positive(cfg.CacheSize, DefaultCacheSize)
	cfg.MaxTTL = defaults.Positive(cfg.MaxTTL, DefaultMaxTTL)
	cfg.NegativeTTL = defaults.Positive(cfg.NegativeTTL, DefaultNegativeTTL)
	cfg.FailureTTL = cmp.Or(cfg.FailureTTL, DefaultFailureTTL)
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Resolver{
		cfg: cfg,
		// Timeout replaces miekg/dns's own 2-second dial, read and write
		// timeouts, which would otherwise cap every attempt.
		udp:      &dns.Client{Net: "udp", UDPSize: ednsBufferSize, Timeout: cfg.Timeout},
		tcp:      &dns.Client{Net: "tcp", Timeout: cfg.Timeout},
		lru:      list.New(),
		entries:  map[key]*list.Element{},
		inflight: map[key]*call{},
	}, nil
}

// ServersFromResolvConf returns the nameservers of a resolv.conf(5) file as
// "host:port" addresses.
func ServersFromResolvConf(path string) ([]string, error) {
	cc, err := dns.ClientConfigFromFile(path)
	if err != nil {
		return nil, fmt.Errorf("resolver: reading %s: %w", path, err)
	}
	if len(cc.Servers) == 0 {
		return nil, fmt.Errorf("resolver: no nameserver in %s", path)
	}
	servers := make([]string, 0, len(cc.Servers))
	for _, s := range cc.Servers {
		servers = append(servers, net.JoinHostPort(s, cc.Port))
	}
	return servers, nil
}

// Stats returns the current counters.
func (r *Resolver) Stats() Stats {
	r.mu.Lock()
	n := len(r.entries)
	r.mu.Unlock()
	return Stats{
		Upstream: r.upstream.Load(),
		Hits:     r.hits.Load(),
		Misses:   r.misses.Load(),
		Merged:   r.merged.Load(),
		Failures: r.failures.Load(),
		Entries:  n,
		Errors: map[string]int64{
			ErrorTimeout: r.errTimeout.Load(), ErrorNetwork: r.errNetwork.Load(),
			ErrorRcode: r.errRcode.Load(), ErrorBogus: r.errBogus.Load(),
		},
	}
}

// LookupTXT returns the TXT records of name. The character-strings of each
// record are concatenated without separator, one string per record, as RFC
// 7208 section 3.3 and RFC 6376 section 3.6.2.2 require. The slice is the
// cache's own, shared by every caller: it must not be modified.
func (r *Resolver) LookupTXT(ctx context.Context, name string) ([]string, error) {
	ans, err := r.lookupAnswer(ctx, name, dns.TypeTXT)
	if err != nil {
		return nil, err
	}
	if _, err := ans.result(name); err != nil {
		return nil, err
	}
	return ans.txt, nil
}

// txtStrings joins and unescapes the character-strings of each TXT record
// of rrs.
func txtStrings(rrs []dns.RR) []string {
	var txts []string
	for _, rr := range rrs {
		t, ok := rr.(*dns.TXT)
		if !ok {
			continue
		}
		var b strings.Builder
		for _, part := range t.Txt {
			b.WriteString(unescapeTXT(part))
		}
		txts = append(txts, b.String())
	}
	return txts
}

// unescapeTXT undoes the presentation-format escaping miekg/dns applies to
// character-strings it unpacks (RFC 1035 section 5.1: \" and \\ for quote
// and backslash, \DDD for bytes outside printable ASCII), giving back the
// octets of the record. miekg/dns exports no function for this.
func unescapeTXT(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '\\' && i+1 < len(s) {
			i++
			c = s[i]
			if i+2 < len(s) && isDigit(c) && isDigit(s[i+1]) && isDigit(s[i+2]) {
				n := int(c-'0')*100 + int(s[i+1]-'0')*10 + int(s[i+2]-'0')
				if n <= 255 {
					c = byte(n)
					i += 2
				}
			}
		}
		b = append(b, c)
	}
	return string(b)
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// LookupMX returns the MX records of name sorted by preference. Hosts are
// fully qualified, with the trailing dot, like net.Resolver.LookupMX.
func (r *Resolver) LookupMX(ctx context.Context, name string) ([]*net.MX, error) {
	rrs, err := r.lookup(ctx, name, dns.TypeMX)
	if err != nil {
		return nil, err
	}
	mxs := make([]*net.MX, 0, len(rrs))
	for _, rr := range rrs {
		mx := rr.(*dns.MX)
		mxs = append(mxs, &net.MX{Host: mx.Mx, Pref: mx.Preference})
	}
	slices.SortStableFunc(mxs, func(a, b *net.MX) int { return int(a.Pref) - int(b.Pref) })
	return mxs, nil
}

// LookupIPAddr returns the IPv4 (A) then IPv6 (AAAA) addresses of host. As
// with net.Resolver (without StrictErrors), addresses of one family are
// returned even if the lookup of the other failed; the error is returned
// only when there is no address, a temporary error taking precedence over
// not-found.
func (r *Resolver) LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error) {
	if ip := net.ParseIP(host); ip != nil {
		return []net.IPAddr{{IP: ip}}, nil
	}
	type result struct {
		rrs []dns.RR
		err *net.DNSError
	}
	aaaa := make(chan result, 1)
	go func() {
		rrs, err := r.lookup(ctx, host, dns.TypeAAAA)
		aaaa <- result{rrs, err}
	}()
	var a, b result
	a.rrs, a.err = r.lookup(ctx, host, dns.TypeA)
	b = <-aaaa

	var addrs []net.IPAddr
	for _, rr := range append(a.rrs, b.rrs...) {
		switch rr := rr.(type) {
		case *dns.A:
			addrs = append(addrs, net.IPAddr{IP: rr.A})
		case *dns.AAAA:
			addrs = append(addrs, net.IPAddr{IP: rr.AAAA})
		}
	}
	if len(addrs) > 0 {
		return addrs, nil
	}
	for _, err := range []*net.DNSError{a.err, b.err} {
		if err != nil && !err.IsNotFound {
			return nil, err
		}
	}
	return nil, notFound(host)
}

// Exists reports whether name exists in the DNS: false only when the
// upstream answers NXDOMAIN (RFC 8020: nothing exists at or below such a
// name); an answer or NODATA (the name exists with other types, or is an
// empty non-terminal) is true. DMARC's np= (RFC 9989) needs this
// distinction, which the net.Resolver-shaped lookups cannot express.
func (r *Resolver) Exists(ctx context.Context, name string) (bool, error) {
	ans, err := r.lookupAnswer(ctx, name, dns.TypeA)
	if err != nil {
		return false, err
	}
	return !ans.nxdomain, nil
}

// LookupAddr returns the names (PTR records, RFC 1035 section 3.5) of the
// address addr, fully qualified with the trailing dot.
func (r *Resolver) LookupAddr(ctx context.Context, addr string) ([]string, error) {
	arpa, err := dns.ReverseAddr(addr)
	if err != nil {
		return nil, &net.DNSError{Err: "unrecognized address", Name: addr}
	}
	rrs, derr := r.lookup(ctx, arpa, dns.TypePTR)
	if derr != nil {
		derr.Name = addr
		return nil, derr
	}
	names := make([]string, 0, len(rrs))
	for _, rr := range rrs {
		names = append(names, rr.(*dns.PTR).Ptr)
	}
	return names, nil
}

// lookup answers the question (name, qtype) from the cache or upstream. The
// returned error is nil or a fresh *net.DNSError the caller may modify; it
// is returned as a concrete pointer so callers never hand a typed nil to an
// error interface.
func (r *Resolver) lookup(ctx context.Context, name string, qtype uint16) ([]dns.RR, *net.DNSError) {
	ans, err := r.lookupAnswer(ctx, name, qtype)
	if err != nil {
		return nil, err
	}
	return ans.result(name)
}

// lookupAnswer is lookup returning the whole answer; err is set only for
// failures (not for NXDOMAIN or NODATA).
func (r *Resolver) lookupAnswer(ctx context.Context, name string, qtype uint16) (answer, *net.DNSError) {
	ans, c, cerr := r.begin(ctx, name, qtype, true)
	if cerr != nil {
		err := *cerr
		err.Name = name
		return answer{}, &err
	}
	if c == nil {
		return ans, nil
	}
	ctx, cancel := budget(ctx)
	defer cancel()
	select {
	case <-c.done:
		if c.err != nil {
			err := *c.err
			err.Name = name
			return answer{}, &err
		}
		return c.answer, nil
	case <-ctx.Done():
		return answer{}, &net.DNSError{
			Err:         ctx.Err().Error(),
			Name:        name,
			IsTimeout:   errors.Is(ctx.Err(), context.DeadlineExceeded),
			IsTemporary: true,
			UnwrapErr:   ctx.Err(),
		}
	}
}

// PrefetchTXT starts looking up the TXT records of name, unless they are
// cached or already being looked up, and returns at once. A LookupTXT of
// the same name then finds the answer in the cache or joins the query under
// way, so the time of the upstream query overlaps other work (DKIM keys
// while the body arrives). It does not count as a lookup in Stats.
func (r *Resolver) PrefetchTXT(name string) {
	r.begin(context.Background(), name, dns.TypeTXT, false)
}

// begin returns the cached answer (or cached temporary failure) for
// (name, qtype) with a nil call, or the call under way for it, starting one
// if there is none. count says whether to count the lookup in Stats.
func (r *Resolver) begin(ctx context.Context, name string, qtype uint16, count bool) (answer, *call, *net.DNSError) {
	fqdn := dns.Fqdn(strings.ToLower(presentation(name)))
	// Like net.Resolver, a name that is not a valid domain name (empty
	// label, label over 63 or name over 255 octets) does not exist; it is
	// not sent upstream.
	if _, ok := dns.IsDomainName(fqdn); !ok || strings.HasPrefix(fqdn, ".") && fqdn != "." {
		return answer{notFound: true, nxdomain: true}, nil, nil
	}
	k := key{fqdn, qtype}

	r.mu.Lock()
	defer r.mu.Unlock()
	if e, ok := r.cached(k); ok {
		if count {
			r.hits.Add(1)
			if e.err != nil {
				r.failures.Add(1)
			}
		}
		return e.answer, nil, e.err
	}
	if count {
		r.misses.Add(1)
	}
	c, shared := r.inflight[k]
	if shared {
		if count {
			r.merged.Add(1)
		}
		return answer{}, c, nil
	}
	c = &call{done: make(chan struct{})}
	r.inflight[k] = c
	// The upstream query does not depend on the first caller's context: a
	// caller giving up must not fail the others waiting for the same
	// answer. It is bounded by Timeout and Attempts.
	go r.resolve(context.WithoutCancel(ctx), k, c)
	return answer{}, c, nil
}

// presentation returns the raw name (as SPF macro expansion can produce:
// spaces, "@", bytes outside ASCII) in the escaped presentation form
// miekg/dns uses for names (RFC 1035 section 5.1), which is how names come
// back in answers; a dot always separates labels. Names are then compared
// in that form.
func presentation(name string) string {
	clean := true
	for i := 0; i < len(name); i++ {
		if c := name[i]; c != '.' && (c <= ' ' || c > '~' || strings.IndexByte(`'@;()"\`, c) >= 0) {
			clean = false
			break
		}
	}
	if clean {
		return name
	}
	var b strings.Builder
	for i := 0; i < len(name); i++ {
		switch c := name[i]; {
		case c == '.':
			b.WriteByte(c)
		case c < ' ' || c > '~':
			fmt.Fprintf(&b, "\\%03d", c)
		case strings.IndexByte(` '@;()"\`, c) >= 0:
			b.WriteByte('\\')
			b.WriteByte(c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

func (a answer) result(name string) ([]dns.RR, *net.DNSError) {
	if a.notFound {
		return nil, notFound(name)
	}
	return a.rrs, nil
}

func notFound(name string) *net.DNSError {
	return &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
}

// cached returns the unexpired cache entry for k. r.mu is held.
func (r *Resolver) cached(k key) (*entry, bool) {
	el, ok := r.entries[k]
	if !ok {
		return nil, false
	}
	e := el.Value.(*entry)
	if !r.cfg.Now().Before(e.expires) {
		r.lru.Remove(el)
		delete(r.entries, k)
		return nil, false
	}
	r.lru.MoveToFront(el)
	return e, true
}

// store caches ans, or the temporary failure err, for ttl, evicting the
// least recently used entries beyond CacheSize. r.mu is held.
func (r *Resolver) store(k key, ans answer, err *net.DNSError, ttl time.Duration) {
	if ttl <= 0 {
		return
	}
	e := &entry{key: k, answer: ans, err: err, expires: r.cfg.Now().Add(ttl)}
	if el, ok := r.entries[k]; ok {
		el.Value = e
		r.lru.MoveToFront(el)
		return
	}
	r.entries[k] = r.lru.PushFront(e)
	for r.lru.Len() > r.cfg.CacheSize {
		old := r.lru.Back()
		r.lru.Remove(old)
		delete(r.entries, old.Value.(*entry).key)
	}
}

// resolve asks upstream, caches the answer and completes c.
func (r *Resolver) resolve(ctx context.Context, k key, c *call) {
	ans, ttl, err := r.exchange(ctx, k)
	r.mu.Lock()
	if err != nil {
		// RFC 2308 section 7.1: a server failure may be cached briefly.
		ttl = r.cfg.FailureTTL
	}
	r.store(k, ans, err, ttl)
	delete(r.inflight, k)
	c.answer, c.err = ans, err
	// Completing under r.mu with the cache already filled means a lookup
	// either finds the answer in the cache or joins this call: never a
	// second upstream query.
	close(c.done)
	r.mu.Unlock()
}

// exchange queries the servers in order, Attempts times each, until one
// gives a usable answer (NOERROR or NXDOMAIN). It returns the answer and how
// long it may be cached (0: not at all).
func (r *Resolver) exchange(ctx context.Context, k key) (answer, time.Duration, *net.DNSError) {
	req := new(dns.Msg)
	req.SetQuestion(k.name, k.qtype)
	req.RecursionDesired = true
	// RFC 6891: advertise a larger UDP buffer so fewer answers need TCP.
	req.SetEdns0(ednsBufferSize, false)

	var last *net.DNSError
	for _, server := range r.cfg.Servers {
		for range r.cfg.Attempts {
			resp, err := r.query(ctx, req, server)
			if err != nil {
				last = err
				continue
			}
			if resp.Rcode == dns.RcodeSuccess || resp.Rcode == dns.RcodeNameError {
				ans, ttl, derr := r.parse(k, resp)
				if derr == nil {
					return ans, ttl, nil
				}
				// An unusable answer: the next server may do better.
				r.errBogus.Add(1)
				last = derr
			} else {
				// SERVFAIL, REFUSED and the like: this server cannot
				// answer now.
				r.errRcode.Add(1)
				last = &net.DNSError{
					Err:         "server misbehaving: " + dns.RcodeToString[resp.Rcode],
					IsTemporary: true,
				}
			}
			// Try the next server rather than insisting.
			last.Server = server
			break
		}
	}
	return answer{}, 0, last
}

// query sends req to server over UDP, and again over TCP if the answer is
// truncated (RFC 1035 section 4.2.1, RFC 7766 section 5).
func (r *Resolver) query(ctx context.Context, req *dns.Msg, server string) (*dns.Msg, *net.DNSError) {
	resp, err := r.send(ctx, r.udp, req, server)
	if err == nil && resp.Truncated {
		resp, err = r.send(ctx, r.tcp, req, server)
	}
	return resp, err
}

func (r *Resolver) send(ctx context.Context, client *dns.Client, req *dns.Msg, server string) (*dns.Msg, *net.DNSError) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	r.upstream.Add(1)
	resp, _, err := client.ExchangeContext(ctx, req.Copy(), server)
	if err != nil {
		var nerr net.Error
		timeout := errors.Is(err, context.DeadlineExceeded) || errors.As(err, &nerr) && nerr.Timeout()
		msg := err.Error()
		if timeout {
			msg = "i/o timeout"
			r.errTimeout.Add(1)
		} else if ctx.Err() == nil {
			r.errNetwork.Add(1)
		}
		return nil, &net.DNSError{
			Err:         msg,
			Server:      server,
			IsTimeout:   timeout,
			IsTemporary: true,
			UnwrapErr:   err,
		}
	}
	return resp, nil
}

// parse extracts the answer to k from a NOERROR or NXDOMAIN response. The
// upstream is recursive, so the answer section holds any CNAME chain (RFC
// 1034 section 3.6.2) followed by the records of the asked type; the chain
// is followed from the question name.
//
// A response that does not answer the question is a temporary error, never
// "no such record": a question section that is not ours, answer records
// that belong to no name of the chain (a broken or spoofing server), a
// CNAME loop, or a chain longer than MaxCNAMEChain. Asking again later, or
// another server, may give a usable answer; meanwhile the caller must not
// conclude that a key or a policy does not exist.
func (r *Resolver) parse(k key, resp *dns.Msg) (answer, time.Duration, *net.DNSError) {
	if len(resp.Question) != 1 || resp.Question[0].Qtype != k.qtype || !strings.EqualFold(resp.Question[0].Name, k.name) {
		return answer{}, 0, bogus("response is for another question")
	}
	target := k.name
	var rrs []dns.RR
	minTTL := uint32(r.cfg.MaxTTL / time.Second)
	seen := map[string]bool{}
	used := 0 // answer records on the chain
	for hops := 0; ; hops++ {
		seen[target] = true
		var next string
		for _, rr := range resp.Answer {
			h := rr.Header()
			if h.Class != dns.ClassINET || !strings.EqualFold(h.Name, target) {
				continue
			}
			switch {
			case h.Rrtype == k.qtype:
				rrs = append(rrs, rr)
				minTTL = min(minTTL, h.Ttl)
				used++
			case h.Rrtype == dns.TypeCNAME && next == "":
				next = strings.ToLower(rr.(*dns.CNAME).Target)
				minTTL = min(minTTL, h.Ttl)
				used++
			case h.Rrtype == dns.TypeRRSIG:
				used++
			}
		}
		if len(rrs) > 0 {
			return answer{rrs: rrs, txt: txtStrings(rrs)}, time.Duration(minTTL) * time.Second, nil
		}
		if next == "" {
			break
		}
		if seen[next] {
			// RFC 1034 section 3.6.2: CNAME loops are an error.
			return answer{}, 0, bogus("CNAME loop")
		}
		if hops == MaxCNAMEChain {
			return answer{}, 0, bogus(fmt.Sprintf("CNAME chain longer than %d", MaxCNAMEChain))
		}
		target = next
	}
	if used < len(resp.Answer) {
		// Records, but none for the name asked (or the end of its chain).
		return answer{}, 0, bogus("answer is for another name")
	}
	// NXDOMAIN, or NODATA (RFC 2308 section 2.2): no record of the type.
	// RFC 2308 section 5: the negative TTL is the minimum of the SOA's TTL
	// and its MINIMUM field; without an SOA the answer is not cached.
	var ttl time.Duration
	for _, rr := range resp.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			ttl = min(time.Duration(min(soa.Hdr.Ttl, soa.Minttl))*time.Second, r.cfg.NegativeTTL)
			break
		}
	}
	return answer{notFound: true, nxdomain: resp.Rcode == dns.RcodeNameError}, ttl, nil
}

// bogus is the temporary error of a response that does not answer the
// question.
func bogus(why string) *net.DNSError {
	return &net.DNSError{Err: "unusable answer: " + why, IsTemporary: true}
}
