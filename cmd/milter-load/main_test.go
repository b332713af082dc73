package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gomilter "github.com/emersion/go-milter"
	msgdkim "github.com/emersion/go-msgauth/dkim"
	"github.com/rs/zerolog"

	"github.com/dmarc-milter/dmarc-milter/milter"
)

// verdictHandler is a small milter for the tests, on our own milter.Server:
// it decides by the From domain (reject.example rejects, temp.example
// tempfails, quarantine.example quarantines, anything else is accepted) and
// records what it saw.
type verdictHandler struct {
	rec      *recorder
	domain   string
	messages int // on this connection
}

// recorder collects what all connections saw.
type recorder struct {
	mu            sync.Mutex
	conns         int
	open, maxOpen atomic.Int64
	messages      int
	maxPerConn    int
	signed        int
	noLeadSpace   int // header values that arrived without their leading space
	ips           map[string]int
	queueIDs      map[string]bool
	bodyBytes     int
}

func newRecorder() *recorder {
	return &recorder{ips: map[string]int{}, queueIDs: map[string]bool{}}
}

func (h *verdictHandler) Connect(c *milter.Conn, host string, addr net.IP) milter.Reply {
	h.rec.mu.Lock()
	h.rec.ips[addr.String()]++
	h.rec.mu.Unlock()
	return milter.Continue
}
func (h *verdictHandler) Helo(*milter.Conn, string) milter.Reply { return milter.Continue }
func (h *verdictHandler) MailFrom(c *milter.Conn, from string, _ []string) milter.Reply {
	h.domain = ""
	return milter.Continue
}
func (h *verdictHandler) Header(c *milter.Conn, name, value string) milter.Reply {
	h.rec.mu.Lock()
	defer h.rec.mu.Unlock()
	if !strings.HasPrefix(value, " ") {
		h.rec.noLeadSpace++
	}
	switch strings.ToLower(name) {
	case "from":
		_, d, _ := strings.Cut(value, "@")
		h.domain = strings.TrimSuffix(d, ">")
	case "dkim-signature":
		h.rec.signed++
	}
	return milter.Continue
}
func (h *verdictHandler) EndOfHeaders(*milter.Conn) milter.Reply { return milter.Continue }
func (h *verdictHandler) Body(c *milter.Conn, chunk []byte) milter.Reply {
	h.rec.mu.Lock()
	h.rec.bodyBytes += len(chunk)
	h.rec.mu.Unlock()
	return milter.Continue
}
func (h *verdictHandler) EndOfMessage(c *milter.Conn) milter.Reply {
	h.rec.mu.Lock()
	h.rec.messages++
	h.messages++
	h.rec.maxPerConn = max(h.rec.maxPerConn, h.messages)
	h.rec.queueIDs[c.Macro("i")] = true
	h.rec.mu.Unlock()
	switch h.domain {
	case "reject.example":
		return milter.SMTPReply(550, "5.7.1", "rejected")
	case "temp.example":
		return milter.TempFail
	case "quarantine.example":
		c.Quarantine("test")
		return milter.Continue
	}
	c.InsertHeader(0, "X-Seen", "yes")
	return milter.Accept
}
func (h *verdictHandler) Abort(*milter.Conn) {}
func (h *verdictHandler) Close(*milter.Conn) { h.rec.open.Add(-1) }

// startOurs runs milter.Server with verdictHandler on a unix socket.
func startOurs(t *testing.T) (string, *recorder) {
	t.Helper()
	rec := newRecorder()
	srv := &milter.Server{
		NewHandler: func() milter.Handler {
			rec.mu.Lock()
			rec.conns++
			rec.mu.Unlock()
			if n := rec.open.Add(1); n > rec.maxOpen.Load() {
				rec.maxOpen.Store(n)
			}
			return &verdictHandler{rec: rec}
		},
		Log:     zerolog.Nop(),
		Actions: milter.DefaultActions,
	}
	sock := filepath.Join(shortTempDir(t), "ours.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { srv.Serve(ln); close(done) }()
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	return "unix:" + sock, rec
}

// startNoOp runs go-milter's Server with its NoOpMilter.
func startNoOp(t *testing.T) string {
	t.Helper()
	srv := &gomilter.Server{
		NewMilter: func() gomilter.Milter { return gomilter.NoOpMilter{} },
		Actions:   gomilter.OptAddHeader,
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "inet:" + ln.Addr().String()
}

// shortTempDir keeps unix socket paths under the 108-byte limit.
func shortTempDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "ml")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// runCLI runs milter-load with args and decodes its JSON report.
func runCLI(t *testing.T, args ...string) (report, int, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := cli(append(args, "--json"), &out, &errb, nil)
	var r report
	if code != 2 {
		if err := json.Unmarshal(out.Bytes(), &r); err != nil {
			t.Fatalf("report is not JSON: %v\n%s\nstderr: %s", err, out.String(), errb.String())
		}
	}
	return r, code, errb.String()
}

func TestOutcomesAgainstOurServer(t *testing.T) {
	addr, rec := startOurs(t)
	r, code, stderr := runCLI(t, "--connect", addr, "--sessions", "3", "--count", "40",
		"--domains", "ok.example,reject.example,quarantine.example,temp.example",
		"--client-ip", "192.0.2.10,192.0.2.11", "--messages-per-connection", "5")
	if code != 0 {
		t.Fatalf("exit %d: %+v %s", code, r, stderr)
	}
	want := report{Messages: 40, Accepted: 10, Rejected: 10, Quarantined: 10, Tempfailed: 10}
	if r.Messages != want.Messages || r.Accepted != want.Accepted || r.Rejected != want.Rejected ||
		r.Quarantined != want.Quarantined || r.Tempfailed != want.Tempfailed || r.Errors != 0 {
		t.Errorf("report %+v, want counts %+v", r, want)
	}
	if r.Protocol != "v6 (postfix)" || r.Sessions != 3 || r.PerConnection != 5 || len(r.Targets) != 1 || r.Targets[0] != addr {
		t.Errorf("report header %+v", r)
	}
	if r.MessagesPerSec <= 0 || r.LatencyMS.Max <= 0 || r.LatencyMS.P50 > r.LatencyMS.P90 ||
		r.LatencyMS.P90 > r.LatencyMS.P99 || r.LatencyMS.P99 > r.LatencyMS.Max {
		t.Errorf("rates and latencies %+v", r)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if rec.messages != 40 || len(rec.queueIDs) != 40 {
		t.Errorf("server saw %d messages with %d queue ids, want 40", rec.messages, len(rec.queueIDs))
	}
	// 40 messages, at most 5 per connection, over 3 sessions that each
	// may end with a short connection: 8 to 10 connections.
	if rec.maxPerConn != 5 || rec.conns < 8 || rec.conns > 10 {
		t.Errorf("server saw %d connections with at most %d messages, want 8 to 10 with 5", rec.conns, rec.maxPerConn)
	}
	if rec.ips["192.0.2.10"] == 0 || rec.ips["192.0.2.11"] == 0 {
		t.Errorf("client addresses %v, want both used", rec.ips)
	}
	// Postfix's protocol mask includes SMFIP_HDR_LEADSPC, which our server
	// takes.
	if rec.noLeadSpace != 0 {
		t.Errorf("%d header values arrived without their leading space", rec.noLeadSpace)
	}
}

func TestRawJSONShape(t *testing.T) {
	addr, _ := startOurs(t)
	var out bytes.Buffer
	if code := cli([]string{"--connect", addr, "--count", "3", "--sessions", "1", "--json"}, &out, &bytes.Buffer{}, nil); code != 0 {
		t.Fatalf("exit %d", code)
	}
	var m map[string]any
	if err := json.Unmarshal(out.Bytes(), &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"targets", "protocol", "sessions", "messages_per_connection", "seconds", "messages",
		"messages_per_second", "accepted", "rejected", "tempfailed", "quarantined", "discarded", "errors", "latency_ms"} {
		if _, ok := m[k]; !ok {
			t.Errorf("JSON lacks %q: %s", k, out.String())
		}
	}
	lat, _ := m["latency_ms"].(map[string]any)
	for _, k := range []string{"p50", "p90", "p99", "max"} {
		if _, ok := lat[k]; !ok {
			t.Errorf("latency_ms lacks %q", k)
		}
	}
}

func TestTextReport(t *testing.T) {
	addr, _ := startOurs(t)
	var out bytes.Buffer
	if code := cli([]string{"--connect", addr, "--count", "5", "--sessions", "2"}, &out, &bytes.Buffer{}, nil); code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"messages     5 in ", "accepted 5, rejected 0", "errors       0", "latency      p50 "} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("text report lacks %q:\n%s", want, out.String())
		}
	}
}

func TestNoOpGoMilterServer(t *testing.T) {
	addr := startNoOp(t)
	r, code, stderr := runCLI(t, "--connect", addr, "--v2", "--sessions", "4", "--count", "25", "--messages-per-connection", "0")
	if code != 0 || r.Messages != 25 || r.Accepted != 25 || r.Errors != 0 || r.Protocol != "v2" {
		t.Fatalf("exit %d, report %+v, stderr %s", code, r, stderr)
	}
	// Postfix's masks do not fit protocol version 2: go-milter's client
	// refuses to downgrade, and every message is an error.
	r, code, _ = runCLI(t, "--connect", addr, "--sessions", "1", "--count", "2")
	if code != 1 || r.Errors == 0 || r.Messages != 0 || !strings.Contains(r.FirstError, "unsupported milter version") {
		t.Errorf("Postfix masks against a v2 server: exit %d, report %+v", code, r)
	}
}

func TestChain(t *testing.T) {
	noop := startNoOp(t)
	ours, rec := startOurs(t)
	// go-milter's NoOpMilter accepts at end of message; the next milter
	// still decides.
	r, code, stderr := runCLI(t, "--connect", noop+","+ours, "--v2", "--count", "6", "--sessions", "2",
		"--domains", "ok.example,reject.example")
	if code != 0 || r.Accepted != 3 || r.Rejected != 3 || len(r.Targets) != 2 {
		t.Fatalf("exit %d, report %+v, stderr %s", code, r, stderr)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if rec.messages != 6 {
		t.Errorf("second milter saw %d messages, want 6", rec.messages)
	}
	// Without SMFIP_HDR_LEADSPC (not in version 2) the leading space is
	// dropped as Postfix drops it.
	if rec.noLeadSpace == 0 {
		t.Error("with --v2 header values kept their leading space")
	}
}

func TestSignedShareAndSizes(t *testing.T) {
	addr, rec := startOurs(t)
	key := filepath.Join("..", "..", "testdata", "keys", "rsa2048.pem")
	r, code, stderr := runCLI(t, "--connect", addr, "--count", "10", "--gen", "10", "--sessions", "2",
		"--dkim-key", key, "--signed", "0.5", "--sizes", "4k,100k")
	if code != 0 || r.Accepted != 10 {
		t.Fatalf("exit %d, report %+v, stderr %s", code, r, stderr)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if rec.signed != 5 {
		t.Errorf("%d signed messages, want 5", rec.signed)
	}
	// Five bodies near 4 KiB and five near 100 KiB (sent in 64 KiB chunks).
	if lo, hi := 5*(4<<10+100<<10)-5*2000, 5*(4<<10+100<<10); rec.bodyBytes < lo || rec.bodyBytes > hi {
		t.Errorf("body bytes %d, want between %d and %d", rec.bodyBytes, lo, hi)
	}
}

func TestCorpusDir(t *testing.T) {
	addr, rec := startOurs(t)
	dir := t.TempDir()
	msgs := map[string]string{
		"a.eml": "From: A <a@reject.example>\nSubject: folded\n continued\n\nbody\n",
		"b.eml": "From: b@ok.example\r\nSubject: x\r\n\r\nbody\r\n",
		"c.txt": "not a message",
	}
	for name, m := range msgs {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(m), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	r, code, stderr := runCLI(t, "--connect", addr, "--corpus", dir, "--count", "4", "--sessions", "1")
	if code != 0 || r.Rejected != 2 || r.Accepted != 2 {
		t.Fatalf("exit %d, report %+v, stderr %s", code, r, stderr)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if rec.bodyBytes != 4*len("body\r\n") {
		t.Errorf("body bytes %d, want CRLF bodies", rec.bodyBytes)
	}
}

// TestWriteCorpus writes a signed generated message the way smtp-source -F
// wants it (LF line endings) and checks that, sent with CRLF as smtp-source
// does, its signature still verifies, and that --corpus reads it back.
func TestWriteCorpus(t *testing.T) {
	dir := t.TempDir()
	keys := filepath.Join("..", "..", "testdata", "keys")
	var out, errb bytes.Buffer
	code := cli([]string{"--write-corpus", dir, "--gen", "2", "--sizes", "4k", "--domains", "d1.example",
		"--dkim-key", filepath.Join(keys, "rsa2048.pem"), "--signed", "0.5"}, &out, &errb, nil)
	if code != 0 || !strings.Contains(out.String(), "wrote 2 messages") {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out.String(), errb.String())
	}
	pub, err := os.ReadFile(filepath.Join(keys, "rsa2048.pub.b64"))
	if err != nil {
		t.Fatal(err)
	}
	lookup := func(name string) ([]string, error) {
		if name != "sel1._domainkey.d1.example" {
			return nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
		}
		return []string{"v=DKIM1; k=rsa; p=" + strings.TrimSpace(string(pub))}, nil
	}
	for i, want := range []int{1, 0} {
		raw, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("gen-%d.eml", i)))
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(raw, []byte("\r")) || len(raw) < 4000 || len(raw) > 5000 {
			t.Fatalf("gen-%d.eml: %d bytes, CR present: %v", i, len(raw), bytes.Contains(raw, []byte("\r")))
		}
		crlf := bytes.ReplaceAll(raw, []byte("\n"), []byte("\r\n"))
		vs, err := msgdkim.VerifyWithOptions(bytes.NewReader(crlf), &msgdkim.VerifyOptions{LookupTXT: lookup})
		if err != nil || len(vs) != want {
			t.Fatalf("gen-%d.eml: %d signatures, err %v; want %d", i, len(vs), err, want)
		}
		for _, v := range vs {
			if v.Err != nil {
				t.Errorf("gen-%d.eml: signature does not verify: %v", i, v.Err)
			}
		}
	}
	back, err := loadCorpus(dir)
	if err != nil || len(back) != 2 || back[0].mailFrom != "user0@d1.example" {
		t.Fatalf("read back: %v, %d messages", err, len(back))
	}
}

func TestIdleConnections(t *testing.T) {
	addr, rec := startOurs(t)
	var out, errb bytes.Buffer
	code := cli([]string{"--connect", addr, "--idle", "20", "--duration", "300ms", "--json"}, &out, &errb, nil)
	if code != 0 {
		t.Fatalf("exit %d: %s %s", code, out.String(), errb.String())
	}
	if !strings.Contains(errb.String(), "20 idle connections open") {
		t.Errorf("no readiness line: %q", errb.String())
	}
	if got := rec.maxOpen.Load(); got != 20 {
		t.Errorf("server held %d connections at once, want 20", got)
	}
	var r report
	if err := json.Unmarshal(out.Bytes(), &r); err != nil || r.IdleConnections != 20 {
		t.Errorf("report %s: %v", out.String(), err)
	}
}

func TestMilterDown(t *testing.T) {
	sock := filepath.Join(shortTempDir(t), "none.sock")
	r, code, _ := runCLI(t, "--connect", "unix:"+sock, "--count", "3", "--sessions", "1", "--timeout", "1s")
	if code != 1 || r.Errors != 3 || r.Messages != 0 {
		t.Errorf("exit %d, report %+v", code, r)
	}
}

func TestUsage(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"--connect", "tcp:1.2.3.4:5"},
		{"--connect", "unix:/x", "--v2", "--postfix"},
		{"--connect", "unix:/x", "--sizes", "big"},
		{"--connect", "unix:/x", "--signed", "0.5"}, // no key
		{"--connect", "unix:/x", "--sessions", "0"},
	} {
		if code := cli(args, &bytes.Buffer{}, &bytes.Buffer{}, nil); code != 2 {
			t.Errorf("%q: exit %d, want 2", args, code)
		}
	}
}

func TestParseTarget(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want target
		ok   bool
	}{
		{"unix:/run/m.sock", target{"unix", "/run/m.sock"}, true},
		{"local:/run/m.sock", target{"unix", "/run/m.sock"}, true},
		{"inet:127.0.0.1:8893", target{"tcp", "127.0.0.1:8893"}, true},
		{"inet:8893@127.0.0.1", target{"tcp", "127.0.0.1:8893"}, true},
		{"inet:[::1]:8893", target{"tcp", "[::1]:8893"}, true},
		{"inet:localhost", target{}, false},
		{"tcp:1.2.3.4:5", target{}, false},
	} {
		got, err := parseTarget(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseTarget(%q) = %v, %v", tc.in, got, err)
		}
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int{"4096": 4096, "4k": 4096, "4KiB": 4096, "64K": 65536, "1m": 1 << 20, "50MB": 50 << 20} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "k", "-1", "0", "1g"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) succeeded", in)
		}
	}
}

func TestPercentile(t *testing.T) {
	var l []time.Duration
	for i := 1; i <= 100; i++ {
		l = append(l, time.Duration(i)*time.Millisecond)
	}
	for p, want := range map[float64]time.Duration{50: 50 * time.Millisecond, 90: 90 * time.Millisecond, 99: 99 * time.Millisecond, 100: 100 * time.Millisecond} {
		if got := percentile(l, p); got != want {
			t.Errorf("p%v = %v, want %v", p, got, want)
		}
	}
	if got := percentile(nil, 50); got != 0 {
		t.Errorf("empty: %v", got)
	}
}

func TestParseMessage(t *testing.T) {
	m, err := parseMessage("x", []byte("From: \"Bob, B\" <bob@example.com>\nSubject: a\n\tb\n\nline1\nline2\n"))
	if err != nil {
		t.Fatal(err)
	}
	if m.mailFrom != "bob@example.com" {
		t.Errorf("MAIL FROM %q", m.mailFrom)
	}
	if len(m.fields) != 2 || m.fields[1] != [2]string{"Subject", " a\n\tb"} {
		t.Errorf("fields %q", m.fields)
	}
	if string(m.body) != "line1\r\nline2\r\n" {
		t.Errorf("body %q", m.body)
	}
	if _, err := parseMessage("y", []byte("Subject: no from\n\nx\n")); err == nil {
		t.Error("message without From accepted")
	}
}

func TestDuration(t *testing.T) {
	addr, _ := startOurs(t)
	r, code, stderr := runCLI(t, "--connect", addr, "--duration", "300ms", "--sessions", "2")
	if code != 0 || r.Messages == 0 || r.Accepted != r.Messages || r.Seconds < 0.3 || r.Seconds > 5 {
		t.Errorf("exit %d, report %+v, stderr %s", code, r, stderr)
	}
}
