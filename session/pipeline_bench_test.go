package session_test

import (
	"net"
	"strings"
	"testing"

	"github.com/dmarc-milter/dmarc-milter/policy/dkim"
	"github.com/dmarc-milter/dmarc-milter/session"
)

// BenchmarkPipeline is the daemon's own work for one message, without the
// milter protocol or a client: a Collector fed the envelope, the header
// fields as Postfix hands them, the ~4 KiB body in one chunk, and End
// (SPF, one RSA-2048 DKIM signature, DMARC, on a warm DNS cache). Its
// B/op and allocs/op are the message's allocations on the hot path.
func BenchmarkPipeline(b *testing.B) {
	e := newEnv(b, envOptions{})
	set := e.settings
	set.DKIMKeys = dkim.NewKeyCache(100) // as the daemon has
	p := session.NewPipeline(set)
	raw := benchRaw(b)
	fields, rawBody := splitMessage(b, raw, true)
	c := session.Client{IP: net.ParseIP(goodIP), Host: "mx.pass.example", Helo: "mx.pass.example", LeadingSpace: true}
	chunk := []byte(rawBody)
	run := func() string {
		m := p.Begin(c, "<bob@pass.example>", "")
		for _, f := range fields {
			m.Header(f[0], f[1])
		}
		m.EndHeaders()
		m.Body(chunk)
		j, _ := m.End("Q1")
		return j.AuthResults
	}
	if ar := run(); !strings.Contains(ar, "dkim=pass") || !strings.Contains(ar, "dmarc=pass") {
		b.Fatalf("warm-up message did not pass: %q", ar)
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		run()
	}
}
