package senders

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/dmarc-milter/dmarc-milter/internal/dnstest"
	"github.com/dmarc-milter/dmarc-milter/internal/testutil"
	"github.com/dmarc-milter/dmarc-milter/policy"
	"github.com/dmarc-milter/dmarc-milter/policy/dmarc"
	"github.com/dmarc-milter/dmarc-milter/report/store"
)

var t0 = time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)

func TestNetwork(t *testing.T) {
	tests := []struct {
		ip   string
		want string
	}{
		{ip: "192.0.2.77", want: "192.0.2.0/24"},
		{ip: "::ffff:192.0.2.77", want: "192.0.2.0/24"},
		{ip: "2001:db8:1:2ff::1", want: "2001:db8:1:200::/56"},
	}
	for _, tc := range tests {
		p, ok := Network(net.ParseIP(tc.ip))
		if !ok || p.String() != tc.want {
			t.Errorf("Network(%s) = %s, %v; want %s", tc.ip, p, ok, tc.want)
		}
	}
	if _, ok := Network(nil); ok {
		t.Error("a missing address has a network")
	}
}

// The Set answers for the network of a pass within Window, and keeps at
// most its bound, the least recently seen going first.
func TestSet(t *testing.T) {
	now := t0
	s := New(3, func() time.Time { return now })
	p := netip.MustParsePrefix("192.0.2.0/24")
	s.Note("example.com", p, t0)
	if !s.Known("example.com", net.ParseIP("192.0.2.200")) || s.Known("example.org", net.ParseIP("192.0.2.1")) ||
		s.Known("example.com", net.ParseIP("192.0.3.1")) {
		t.Error("Known answers for the wrong domain or network")
	}
	now = t0.Add(Window + time.Second)
	if s.Known("example.com", net.ParseIP("192.0.2.1")) {
		t.Error("a pass older than Window still counts")
	}
	now = t0
	for i := range 3 {
		s.Note(fmt.Sprintf("d%d.example", i), p, t0.Add(time.Duration(i+1)*time.Minute))
	}
	if s.Len() != 3 || s.Known("example.com", net.ParseIP("192.0.2.1")) || !s.Known("d0.example", net.ParseIP("192.0.2.1")) {
		t.Errorf("%d pairs; the least recently seen should have gone", s.Len())
	}
}

// A Recorder notes passes (working out the Organizational Domain), writes
// them to the store, and a new Set is filled from the store at start:
// what a restart, or another host of a fleet, knows.
func TestRecorderPersists(t *testing.T) {
	st, err := store.Open(context.Background(), "", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	res := &dnstest.Resolver{TXT: map[string][]string{"_dmarc.example.com.": {"v=DMARC1; p=reject"}}}
	set := New(0, func() time.Time { return t0 })
	r := NewRecorder(set, res, st, zerolog.Nop(), func() time.Time { return t0 })
	r.FlushInterval = 10 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()

	judged := func(from, ip string, status dmarc.Status) *policy.Judged {
		return &policy.Judged{Message: &policy.Message{ClientIP: net.ParseIP(ip), Arrival: t0},
			Verdict: policy.Verdict{DMARC: dmarc.Result{Status: status, FromDomain: from}}}
	}
	r.Submit(judged("news.example.com", "192.0.2.10", dmarc.Pass))
	r.Submit(judged("example.com", "198.51.100.9", dmarc.Fail)) // a failure teaches nothing
	testutil.WaitFor(t, "the pass noted", func() bool { return set.Known("example.com", net.ParseIP("192.0.2.99")) })
	if set.Known("example.com", net.ParseIP("198.51.100.9")) {
		t.Error("a failing message's network was noted")
	}
	cancel()
	<-done

	again := New(0, func() time.Time { return t0 })
	n, err := NewRecorder(again, res, st, zerolog.Nop(), func() time.Time { return t0.Add(time.Hour) }).Load(context.Background())
	if err != nil || n != 1 || !again.Known("example.com", net.ParseIP("192.0.2.1")) {
		t.Errorf("loaded %d (%v); want the one pair", n, err)
	}
}

// Submit never blocks: past the queue, passes are dropped and counted.
func TestSubmitNeverBlocks(t *testing.T) {
	r := NewRecorder(New(0, nil), &dnstest.Resolver{}, nil, zerolog.Nop(), nil)
	for i := range queueSize + 10 {
		j := &policy.Judged{Message: &policy.Message{ClientIP: net.ParseIP("192.0.2.1")},
			Verdict: policy.Verdict{DMARC: dmarc.Result{Status: dmarc.Pass, FromDomain: fmt.Sprintf("d%d.example", i)}}}
		r.Submit(j)
	}
	// The same pair again within renoteAfter is not even queued.
	same := &policy.Judged{Message: &policy.Message{ClientIP: net.ParseIP("192.0.2.1"), Arrival: time.Now()},
		Verdict: policy.Verdict{DMARC: dmarc.Result{Status: dmarc.Pass, FromDomain: "d0.example"}}}
	r.Submit(same)
	if r.Dropped() != 10 {
		t.Errorf("dropped %d, want 10", r.Dropped())
	}
}

// BenchmarkSubmit is what a passing message costs the reply path once its
// pair is known.
func BenchmarkSubmit(b *testing.B) {
	r := NewRecorder(New(0, nil), &dnstest.Resolver{}, nil, zerolog.Nop(), nil)
	j := &policy.Judged{Message: &policy.Message{ClientIP: net.ParseIP("192.0.2.1"), Arrival: time.Now()},
		Verdict: policy.Verdict{DMARC: dmarc.Result{Status: dmarc.Pass, FromDomain: "example.com"}}}
	r.Submit(j)
	b.ReportAllocs()
	for b.Loop() {
		r.Submit(j)
	}
}

// BenchmarkKnown is the look-up a p=reject failure costs.
func BenchmarkKnown(b *testing.B) {
	s := New(0, nil)
	for i := range MaxEntries {
		s.Note(fmt.Sprintf("d%d.example", i), netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24), time.Now())
	}
	ip := net.ParseIP("10.1.2.3")
	b.ReportAllocs()
	for b.Loop() {
		s.Known("d258.example", ip)
	}
}
