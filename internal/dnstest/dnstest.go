// Package dnstest holds the tests' DNS: Resolver, a map-based fake for
// unit tests of code that takes a resolver (after mox's dns/mock.go), and
// Server, a small authoritative DNS server (RFC 1034, RFC 1035) on the
// loopback interface for tests of code that sends real DNS queries.
//
// The server:
// Zones are given as RFC 1035 section 5 master-file text (with $ORIGIN and
// $TTL). The server answers over UDP and TCP on the same port, follows
// in-zone CNAME chains (RFC 1034 section 4.3.2), tells NXDOMAIN from NODATA
// (RFC 2308 section 2), puts the enclosing zone's SOA in the authority
// section of negative answers (RFC 2308 section 3) and truncates UDP answers
// that do not fit the client's buffer, setting TC (RFC 1035 section 4.2.1,
// RFC 6891 section 6.2.3). Failures can be injected per name and type:
// SERVFAIL, no answer at all (a timeout for the client), a delay, or an
// answer whose records carry another owner name. It counts the
// queries it receives, so tests can check caching.
//
// Wildcards (RFC 4592) are not supported: owner names match exactly.
package dnstest

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// TB is the part of testing.TB the helpers use; the package does not import
// testing, so that commands (the bench's DNS server) can link it.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	Cleanup(func())
}

// Server is an authoritative DNS server listening on UDP and TCP at Addr.
type Server struct {
	// Addr is the "127.0.0.1:port" address the server listens on, for both
	// UDP and TCP.
	Addr string

	udp *dns.Server
	tcp *dns.Server

	mu       sync.Mutex
	records  map[string][]dns.RR // lower-case FQDN owner -> records, in load order
	servfail map[key]bool
	timeout  map[key]bool
	delay    map[key]time.Duration
	owner    map[key]string
	counts   map[key]int
	total    int
}

// key identifies a name and type. Names are lower-case and fully qualified.
type key struct {
	name  string
	qtype uint16
}

func newKey(name string, qtype uint16) key {
	return key{strings.ToLower(dns.Fqdn(name)), qtype}
}

// maxCNAMEChain bounds the in-zone CNAME chain the server follows; it is
// above what clients accept, so that their own bound can be tested.
const maxCNAMEChain = 64

// NewServer starts a server on 127.0.0.1 (random port) serving the given
// zone-file texts. The test fails if a zone does not parse or the server
// cannot start; the server is shut down by t.Cleanup.
func NewServer(t TB, zones ...string) *Server {
	t.Helper()
	s, err := listen("127.0.0.1:0")
	if err != nil {
		t.Fatalf("dnstest: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	for _, z := range zones {
		if err := s.AddZone(z); err != nil {
			t.Fatalf("dnstest: %v", err)
		}
	}
	return s
}

// ListenAndServe starts a server on addr ("127.0.0.1:5353"; port 0 picks a
// free one) and loads the zone files at the given paths ($INCLUDE is allowed
// in files). It is meant for small commands outside tests; call Close to stop
// it.
func ListenAndServe(addr string, zoneFiles ...string) (*Server, error) {
	s, err := listen(addr)
	if err != nil {
		return nil, err
	}
	for _, path := range zoneFiles {
		if err := s.AddZoneFile(path); err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

// listen binds UDP and TCP on the same port. With port 0 the UDP port is
// chosen first, and the bind is retried a few times if that port is taken
// for TCP.
func listen(addr string) (*Server, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("dnstest: bad address %q: %w", addr, err)
	}
	var lastErr error
	for range 10 {
		pc, err := net.ListenPacket("udp", net.JoinHostPort(host, port))
		if err != nil {
			return nil, fmt.Errorf("dnstest: listen udp %s: %w", addr, err)
		}
		l, err := net.Listen("tcp", pc.LocalAddr().String())
		if err != nil {
			pc.Close()
			lastErr = fmt.Errorf("dnstest: listen tcp %s: %w", pc.LocalAddr(), err)
			if port != "0" {
				break
			}
			continue
		}
		s := &Server{
			Addr:     pc.LocalAddr().String(),
			records:  map[string][]dns.RR{},
			servfail: map[key]bool{},
			timeout:  map[key]bool{},
			delay:    map[key]time.Duration{},
			owner:    map[key]string{},
			counts:   map[key]int{},
		}
		s.udp = &dns.Server{PacketConn: pc, Handler: s}
		s.tcp = &dns.Server{Listener: l, Handler: s}
		if err := start(s.udp); err != nil {
			l.Close()
			return nil, err
		}
		if err := start(s.tcp); err != nil {
			s.udp.Shutdown()
			return nil, err
		}
		return s, nil
	}
	return nil, lastErr
}

// start runs srv in a goroutine and waits until it serves or fails.
func start(srv *dns.Server) error {
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	errc := make(chan error, 1)
	go func() { errc <- srv.ActivateAndServe() }()
	select {
	case <-started:
		return nil
	case err := <-errc:
		return fmt.Errorf("dnstest: serve: %w", err)
	}
}

// Close shuts down both listeners.
func (s *Server) Close() error {
	return errors.Join(s.udp.Shutdown(), s.tcp.Shutdown())
}

// AddZone adds the records of a zone-file text. Without $ORIGIN, names
// should be fully qualified.
func (s *Server) AddZone(text string) error {
	zp := dns.NewZoneParser(strings.NewReader(text), "", "")
	return s.addFrom(zp)
}

// AddZoneFile adds the records of the zone file at path; $INCLUDE is
// allowed, relative to the file.
func (s *Server) AddZoneFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("dnstest: %w", err)
	}
	defer f.Close()
	zp := dns.NewZoneParser(f, "", path)
	zp.SetIncludeAllowed(true)
	return s.addFrom(zp)
}

// AddRecord adds one record in zone-file syntax, e.g.
// "example.com. 300 IN TXT \"v=spf1 -all\"".
func (s *Server) AddRecord(rr string) error {
	r, err := dns.NewRR(rr)
	if err != nil {
		return fmt.Errorf("dnstest: record %q: %w", rr, err)
	}
	if r == nil {
		return fmt.Errorf("dnstest: record %q: empty", rr)
	}
	s.add([]dns.RR{r})
	return nil
}

// AddRRs adds records built in code, for data that is awkward to write in
// zone-file syntax. The server keeps copies.
func (s *Server) AddRRs(rrs ...dns.RR) {
	cp := make([]dns.RR, len(rrs))
	for i, rr := range rrs {
		cp[i] = dns.Copy(rr)
	}
	s.add(cp)
}

func (s *Server) addFrom(zp *dns.ZoneParser) error {
	var rrs []dns.RR
	for rr, ok := zp.Next(); ok; rr, ok = zp.Next() {
		rrs = append(rrs, rr)
	}
	if err := zp.Err(); err != nil {
		return fmt.Errorf("dnstest: zone: %w", err)
	}
	s.add(rrs)
	return nil
}

func (s *Server) add(rrs []dns.RR) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, rr := range rrs {
		name := strings.ToLower(rr.Header().Name)
		s.records[name] = append(s.records[name], rr)
	}
}

// SetServfail makes queries for name and qtype answer SERVFAIL; qtype
// dns.TypeANY means every type for that name.
func (s *Server) SetServfail(name string, qtype uint16) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.servfail[newKey(name, qtype)] = true
}

// SetTimeout makes queries for name and qtype go unanswered; qtype
// dns.TypeANY means every type for that name.
func (s *Server) SetTimeout(name string, qtype uint16) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.timeout[newKey(name, qtype)] = true
}

// SetDelay makes the server wait d before answering queries for name and
// qtype; qtype dns.TypeANY means every type for that name.
func (s *Server) SetDelay(name string, qtype uint16, d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.delay[newKey(name, qtype)] = d
}

// SetAnswerOwner makes the answers to name and qtype carry owner as the
// owner name of their records, as a broken or spoofing server might;
// qtype dns.TypeANY means every type for that name.
func (s *Server) SetAnswerOwner(name string, qtype uint16, owner string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.owner[newKey(name, qtype)] = dns.Fqdn(owner)
}

// Queries returns the number of queries received (UDP and TCP).
func (s *Server) Queries() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.total
}

// QueryCount returns the number of queries received for name and qtype;
// qtype dns.TypeANY counts queries of every type for that name.
func (s *Server) QueryCount(name string, qtype uint16) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := newKey(name, qtype)
	if qtype != dns.TypeANY {
		return s.counts[k]
	}
	n := 0
	for c, v := range s.counts {
		if c.name == k.name {
			n += v
		}
	}
	return n
}

// ResetCounts sets all query counters to zero.
func (s *Server) ResetCounts() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.total = 0
	clear(s.counts)
}

// ServeDNS implements dns.Handler.
func (s *Server) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	if len(req.Question) != 1 {
		m := new(dns.Msg)
		m.SetRcode(req, dns.RcodeFormatError)
		w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	k := newKey(q.Name, q.Qtype)
	all := newKey(q.Name, dns.TypeANY)

	s.mu.Lock()
	s.total++
	s.counts[k]++
	if s.timeout[k] || s.timeout[all] {
		s.mu.Unlock()
		return // Never answer.
	}
	m := new(dns.Msg)
	if s.servfail[k] || s.servfail[all] {
		m.SetRcode(req, dns.RcodeServerFailure)
	} else {
		s.answer(m, req, k)
	}
	owner := s.owner[k]
	if owner == "" {
		owner = s.owner[all]
	}
	if owner != "" {
		for _, rr := range m.Answer {
			rr.Header().Name = owner
		}
	}
	delay := max(s.delay[k], s.delay[all])
	s.mu.Unlock()
	time.Sleep(delay)

	// RFC 6891 section 6.2.3: the requestor's UDP payload size; without
	// EDNS0 the limit is 512 octets (RFC 1035 section 4.2.1).
	size := dns.MinMsgSize
	if opt := req.IsEdns0(); opt != nil {
		m.SetEdns0(opt.UDPSize(), false)
		size = int(opt.UDPSize())
	}
	if _, ok := w.RemoteAddr().(*net.UDPAddr); ok {
		m.Truncate(size)
	}
	w.WriteMsg(m)
}

// answer fills m for the question k. s.mu is held.
func (s *Server) answer(m *dns.Msg, req *dns.Msg, k key) {
	m.SetReply(req)
	m.Authoritative = true

	// RFC 1034 section 4.3.2 step 3: follow CNAMEs within our data.
	name := k.name
	seen := map[string]bool{}
	found := false
	for range maxCNAMEChain {
		seen[name] = true
		rrs := s.records[name]
		var cname *dns.CNAME
		for _, rr := range rrs {
			t := rr.Header().Rrtype
			if t == k.qtype || k.qtype == dns.TypeANY {
				m.Answer = append(m.Answer, dns.Copy(rr))
				found = true
			} else if c, ok := rr.(*dns.CNAME); ok {
				cname = c
			}
		}
		if found || cname == nil {
			break
		}
		m.Answer = append(m.Answer, dns.Copy(cname))
		name = strings.ToLower(cname.Target)
		if seen[name] {
			break // CNAME loop: return the chain so far.
		}
	}
	if found {
		return
	}
	// Negative answer (or a chain ending without data) for name: RFC 2308
	// section 2.1 (NXDOMAIN) or 2.2 (NODATA), with the SOA of the enclosing
	// zone in the authority section (section 3).
	if !s.exists(name) {
		m.Rcode = dns.RcodeNameError
	}
	if soa := s.soaFor(name); soa != nil {
		m.Ns = append(m.Ns, dns.Copy(soa))
	}
}

// exists reports whether name owns records or is an empty non-terminal
// (RFC 8020: a name with descendants exists). s.mu is held.
func (s *Server) exists(name string) bool {
	if len(s.records[name]) > 0 {
		return true
	}
	suffix := "." + name
	if name == "." {
		suffix = "."
	}
	for owner := range s.records {
		if strings.HasSuffix(owner, suffix) {
			return true
		}
	}
	return false
}

// soaFor returns the SOA of the closest enclosing zone of name, or nil.
// s.mu is held.
func (s *Server) soaFor(name string) dns.RR {
	for n := name; ; {
		for _, rr := range s.records[n] {
			if rr.Header().Rrtype == dns.TypeSOA {
				return rr
			}
		}
		if n == "." {
			return nil
		}
		if i := strings.IndexByte(n, '.'); i >= 0 && i+1 < len(n) {
			n = n[i+1:]
		} else {
			n = "."
		}
	}
}

// LoadZoneFile returns the text of the zone file at path, for NewServer or
// AddZone.
func LoadZoneFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("dnstest: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		return "", fmt.Errorf("dnstest: %w", err)
	}
	return string(b), nil
}
