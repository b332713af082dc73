package dnstest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

const zone = `
$ORIGIN example.test.
$TTL 300
@       IN SOA ns hostmaster 1 3600 600 86400 60
@       IN TXT "v=spf1 -all"
www     IN CNAME host
host    IN A 192.0.2.1
dangle  IN CNAME nowhere
a.b     IN A 192.0.2.2
`

func exchange(t *testing.T, s *Server, name string, qtype uint16, edns bool, net string) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	if edns {
		m.SetEdns0(4096, false)
	}
	c := &dns.Client{Net: net, Timeout: 200 * time.Millisecond}
	resp, _, err := c.Exchange(m, s.Addr)
	if err != nil {
		t.Fatalf("exchange %s %s: %v", name, dns.TypeToString[qtype], err)
	}
	return resp
}

func TestAnswers(t *testing.T) {
	s := NewServer(t, zone)
	tests := []struct {
		name   string
		qtype  uint16
		rcode  int
		answer []uint16 // types in the answer section
		soa    bool     // SOA in the authority section
	}{
		{"example.test", dns.TypeTXT, dns.RcodeSuccess, []uint16{dns.TypeTXT}, false},
		{"EXAMPLE.Test", dns.TypeTXT, dns.RcodeSuccess, []uint16{dns.TypeTXT}, false},
		{"www.example.test", dns.TypeA, dns.RcodeSuccess, []uint16{dns.TypeCNAME, dns.TypeA}, false},
		{"www.example.test", dns.TypeCNAME, dns.RcodeSuccess, []uint16{dns.TypeCNAME}, false},
		{"www.example.test", dns.TypeTXT, dns.RcodeSuccess, []uint16{dns.TypeCNAME}, true},
		{"dangle.example.test", dns.TypeA, dns.RcodeNameError, []uint16{dns.TypeCNAME}, true},
		{"host.example.test", dns.TypeTXT, dns.RcodeSuccess, nil, true},   // NODATA
		{"b.example.test", dns.TypeA, dns.RcodeSuccess, nil, true},        // empty non-terminal
		{"nx.example.test", dns.TypeA, dns.RcodeNameError, nil, true},     // NXDOMAIN
		{"other.test", dns.TypeA, dns.RcodeNameError, nil, false},         // outside any zone
		{"x.host.example.test", dns.TypeA, dns.RcodeNameError, nil, true}, // below a leaf
	}
	for _, tt := range tests {
		resp := exchange(t, s, tt.name, tt.qtype, false, "udp")
		var types []uint16
		for _, rr := range resp.Answer {
			types = append(types, rr.Header().Rrtype)
		}
		soa := len(resp.Ns) == 1 && resp.Ns[0].Header().Rrtype == dns.TypeSOA
		if resp.Rcode != tt.rcode || !equal(types, tt.answer) || soa != tt.soa || !resp.Authoritative {
			t.Errorf("%s %s: rcode %s answer %v soa %v aa %v; want %s %v %v", tt.name, dns.TypeToString[tt.qtype],
				dns.RcodeToString[resp.Rcode], types, soa, resp.Authoritative, dns.RcodeToString[tt.rcode], tt.answer, tt.soa)
		}
	}
}

func equal(a, b []uint16) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestTruncation(t *testing.T) {
	s := NewServer(t, zone)
	long := strings.Repeat("x", 200)
	for range 4 {
		if err := s.AddRecord(`big.example.test. 300 IN TXT "` + long + `"` + ` "` + long + `"`); err != nil {
			t.Fatal(err)
		}
	}
	if r := exchange(t, s, "big.example.test", dns.TypeTXT, false, "udp"); !r.Truncated || len(r.Answer) == 4 {
		t.Errorf("UDP without EDNS0: TC %v, %d records; want truncated", r.Truncated, len(r.Answer))
	}
	if r := exchange(t, s, "big.example.test", dns.TypeTXT, true, "udp"); r.Truncated || len(r.Answer) != 4 {
		t.Errorf("UDP with EDNS0 4096: TC %v, %d records", r.Truncated, len(r.Answer))
	}
	if r := exchange(t, s, "big.example.test", dns.TypeTXT, false, "tcp"); r.Truncated || len(r.Answer) != 4 {
		t.Errorf("TCP: TC %v, %d records", r.Truncated, len(r.Answer))
	}
}

func TestFailuresAndCounts(t *testing.T) {
	s := NewServer(t, zone)
	s.SetServfail("example.test", dns.TypeTXT)
	s.SetTimeout("host.example.test", dns.TypeANY)

	if r := exchange(t, s, "example.test", dns.TypeTXT, false, "udp"); r.Rcode != dns.RcodeServerFailure {
		t.Errorf("rcode %s, want SERVFAIL", dns.RcodeToString[r.Rcode])
	}
	if r := exchange(t, s, "example.test", dns.TypeSOA, false, "udp"); r.Rcode != dns.RcodeSuccess {
		t.Errorf("SOA: rcode %s, want NOERROR", dns.RcodeToString[r.Rcode])
	}
	m := new(dns.Msg)
	m.SetQuestion("host.example.test.", dns.TypeMX)
	c := &dns.Client{Timeout: 100 * time.Millisecond}
	if _, _, err := c.Exchange(m, s.Addr); err == nil {
		t.Errorf("timeout name answered")
	}

	if n := s.Queries(); n != 3 {
		t.Errorf("Queries = %d, want 3", n)
	}
	if n := s.QueryCount("Example.Test", dns.TypeTXT); n != 1 {
		t.Errorf("QueryCount TXT = %d, want 1", n)
	}
	if n := s.QueryCount("example.test.", dns.TypeANY); n != 2 {
		t.Errorf("QueryCount ANY = %d, want 2", n)
	}
	s.ResetCounts()
	if s.Queries() != 0 || s.QueryCount("example.test", dns.TypeTXT) != 0 {
		t.Error("ResetCounts did not reset")
	}
}

func TestListenAndServe(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "example.zone")
	if err := os.WriteFile(path, []byte(zone), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := ListenAndServe("127.0.0.1:0", path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if r := exchange(t, s, "host.example.test", dns.TypeA, false, "tcp"); len(r.Answer) != 1 {
		t.Errorf("answer %v", r.Answer)
	}
	text, err := LoadZoneFile(path)
	if err != nil || text != zone {
		t.Errorf("LoadZoneFile = %q, %v", text, err)
	}
	if _, err := ListenAndServe("127.0.0.1:0", filepath.Join(dir, "missing.zone")); err == nil {
		t.Error("missing zone file: no error")
	}
	if err := s.AddZone("bad. IN A not-an-address"); err == nil {
		t.Error("bad zone: no error")
	}
}
