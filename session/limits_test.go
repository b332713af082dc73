package session_test

import (
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"

	gomilter "github.com/emersion/go-milter"
	msgdkim "github.com/emersion/go-msgauth/dkim"
)

// junkFields returns n header fields of about size bytes each.
func junkFields(n, size int) []string {
	val := strings.Repeat("x", size)
	fields := make([]string, n)
	for i := range fields {
		fields[i] = fmt.Sprintf("X-Junk-%d: %s", i, val)
	}
	return fields
}

// TestHeaderBounds: beyond max_header_fields (or max_header_size) no more
// fields are kept: DKIM is not verified (permerror, said in the header),
// DMARC goes on with SPF, and the From fields are still seen, so a From
// hidden behind junk is still judged.
func TestHeaderBounds(t *testing.T) {
	e := newEnv(t, envOptions{})
	junk := junkFields(1100, 20)
	signed := sign(t, plainMessage("bob@pass.example", "bounds"), "pass.example", "sel1", "rsa2048.pem", msgdkim.CanonicalizationRelaxed)
	head, body, _ := strings.Cut(signed, "\r\n\r\n")
	tooBig := head + "\r\n" + strings.Join(junk, "\r\n") + "\r\n\r\n" + body

	got := e.run(goodIP, "x.example", msg{mailFrom: "bob@pass.example", raw: tooBig})
	check(t, got, want{code: 250, ar: []string{"dkim=permerror", "header too large", "spf=pass", "dmarc=pass"}})
	if !strings.Contains(e.logs.String(), "header over the bounds") {
		t.Error("the bound was not logged")
	}

	// A spoofed From after the junk is still seen.
	spoof := message(append(append([]string{"Subject: hidden"}, junk...), "From: ceo@kantiflow.xyz"), "x\n")
	check(t, e.run(badIP, "x.example", msg{mailFrom: "ceo@kantiflow.xyz", raw: spoof}), want{code: 550, text: "kantiflow.xyz"})
	// And so is a second From.
	two := message(append(append([]string{"From: bob@pass.example"}, junk...), "From: ceo@kantiflow.xyz"), "x\n")
	check(t, e.run(goodIP, "x.example", msg{mailFrom: "bob@pass.example", raw: two}), want{code: 550, text: "more than one From"})
}

// TestTooManyForgedResults: Authentication-Results fields with our
// authserv-id are removed; more of them than can be removed get the
// message rejected rather than delivered with a forgery left in.
func TestTooManyForgedResults(t *testing.T) {
	e := newEnv(t, envOptions{})
	fields := []string{"From: bob@pass.example", "Subject: forged"}
	for range 1001 {
		fields = append(fields, "Authentication-Results: mx.test.example; dmarc=pass")
	}
	got := e.run(goodIP, "x.example", msg{mailFrom: "bob@pass.example", raw: message(fields, "x\n")})
	check(t, got, want{code: 550, text: "too many Authentication-Results"})
}

// heapAfterGC returns the live heap.
func heapAfterGC() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// TestMemoryPerMessage drives concurrent messages whose headers are far
// over the bounds (5 MB each, with a DKIM signature) through the real
// session and measures the live heap while they are all held open after
// their header: what one message costs is bounded by max_header_size, not
// by what the client sends. It also measures an idle connection, and a
// connection sent a million macro names.
func TestMemoryPerMessage(t *testing.T) {
	if testing.Short() {
		t.Skip("sends 40 MB of header")
	}
	e := newEnv(t, envOptions{})
	const n = 8
	signed := sign(t, plainMessage("bob@pass.example", "big"), "pass.example", "sel1", "rsa2048.pem", msgdkim.CanonicalizationRelaxed)
	head, body, _ := strings.Cut(signed, "\r\n\r\n")
	big := head + "\r\n" + strings.Join(junkFields(5000, 1000), "\r\n") + "\r\n\r\n" + body
	fields, bodyPart := splitMessage(t, big, true)

	base := heapAfterGC()
	var wg sync.WaitGroup
	sessions := make([]*gomilter.ClientSession, n)
	for i := range n {
		s := e.dial(0)
		connectAndHelo(t, s, goodIP, "x.example")
		sessions[i] = s
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := s.Mail("bob@pass.example", nil); err != nil {
				t.Error(err)
				return
			}
			for _, f := range fields {
				if _, err := s.HeaderField(f[0], f[1]); err != nil {
					t.Error(err)
					return
				}
			}
			if _, err := s.HeaderEnd(); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	// The last events may still be in the socket: let the sessions read
	// them (the no-reply options mean no answer to wait for).
	for range 50 {
		if strings.Count(e.logs.String(), "header over the bounds") >= n {
			break
		}
		runtime.Gosched()
		heapAfterGC()
	}
	held := heapAfterGC()
	perMessage := (int64(held) - int64(base)) / n
	t.Logf("%d messages with 5 MB headers held open: %d KiB of live heap each", n, perMessage>>10)
	if perMessage > 3<<20 {
		t.Errorf("each open message holds %d bytes, want < 3 MiB (max_header_size is 1 MiB)", perMessage)
	}
	for _, s := range sessions {
		if _, err := s.BodyChunk([]byte(bodyPart)); err != nil {
			t.Fatal(err)
		}
		mods, act, err := s.End()
		if err != nil {
			t.Fatal(err)
		}
		check(t, outcome{Act: act, Mods: mods}, want{code: 250, ar: []string{"dkim=permerror"}})
		s.Close()
	}

	// Idle connections: negotiated, CONNECT and HELO sent.
	base = heapAfterGC()
	const idle = 200
	for range idle {
		s := e.dial(0)
		connectAndHelo(t, s, goodIP, "x.example")
	}
	perConn := (int64(heapAfterGC()) - int64(base)) / idle
	t.Logf("an idle connection: %d bytes of live heap", perConn)
	if perConn > 32<<10 {
		t.Errorf("an idle connection holds %d bytes, want < 32 KiB", perConn)
	}

	// A million macro names on one connection are not kept.
	s := e.dial(0)
	base = heapAfterGC()
	for i := range 200 {
		kv := make([]string, 0, 10000)
		for j := range 5000 {
			kv = append(kv, fmt.Sprintf("{m%d_%d}", i, j), "v")
		}
		stage := gomilter.CodeHelo
		if i%2 == 0 {
			stage = gomilter.CodeConn
		}
		if err := s.Macros(stage, kv...); err != nil {
			t.Fatal(err)
		}
	}
	connectAndHelo(t, s, goodIP, "x.example") // the session still works
	grown := int64(heapAfterGC()) - int64(base)
	t.Logf("after 1,000,000 macro names: the connection holds %d KiB more", grown>>10)
	if grown > 1<<20 {
		t.Errorf("1,000,000 macro names grew the heap by %d bytes, want < 1 MiB", grown)
	}
}
