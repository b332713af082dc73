package session_test

import (
	"strings"
	"testing"

	msgdkim "github.com/emersion/go-msgauth/dkim"
)

// BenchmarkMessage runs one whole message through the milter protocol on a
// unix socket with a warm DNS cache: SPF, one RSA-2048 DKIM signature and
// DMARC, as Postfix would send it (connection reused across messages).
// Allocations include the go-milter client's.
func BenchmarkMessage(b *testing.B) {
	e := newEnv(b, envOptions{})
	body := strings.Repeat("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\n", 52) // ~4 KiB
	raw := sign(b, message([]string{
		"From: Bob <bob@pass.example>",
		"To: rcpt@test.example",
		"Subject: benchmark",
		"Date: Mon, 23 Nov 2026 10:00:00 +0000",
		"Message-ID: <bench@test.example>",
	}, body), "pass.example", "sel1", "rsa2048.pem", msgdkim.CanonicalizationRelaxed)
	s := e.dial(0)
	connectAndHelo(b, s, goodIP, "mx.pass.example")
	m := msg{mailFrom: "bob@pass.example", raw: raw}
	if got := send(b, s, m); !strings.Contains(got.authResults(), "dkim=pass") || !strings.Contains(got.authResults(), "dmarc=pass") {
		b.Fatalf("warm-up message did not pass: %q", got.authResults())
	}
	up := e.res.Stats().Upstream
	b.ReportAllocs()
	b.SetBytes(int64(len(raw)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		send(b, s, m)
	}
	b.StopTimer()
	if n := e.res.Stats().Upstream - up; n != 0 {
		b.Errorf("warm cache sent %d upstream queries", n)
	}
}
