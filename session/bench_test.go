package session_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/dmarc-milter/dmarc-milter/internal/pgtest"
	"github.com/dmarc-milter/dmarc-milter/report/aggregate"
	"github.com/dmarc-milter/dmarc-milter/report/store"
	"github.com/dmarc-milter/dmarc-milter/session"

	msgdkim "github.com/emersion/go-msgauth/dkim"
)

// BenchmarkMessage runs one whole message through the milter protocol on a
// unix socket with a warm DNS cache: SPF, one RSA-2048 DKIM signature and
// DMARC, as Postfix would send it (connection reused across messages).
// Allocations include the go-milter client's.
func BenchmarkMessage(b *testing.B) { benchMessage(b, nil) }

// BenchmarkRecording is BenchmarkMessage with aggregate report recording
// off and on, in each store (the message's domain publishes rua=, so every
// message is recorded; the recorder writes to the store every second, as
// the daemon does). Recording must keep at least 0.95 of the throughput.
func BenchmarkRecording(b *testing.B) {
	// One store per engine for the whole benchmark: the sub-benchmarks
	// run several times as b.N grows.
	stores := map[string]*store.Store{}
	for _, engine := range []string{"sqlite", "postgres"} {
		dsn := ""
		if engine == "postgres" {
			dsn = pgtest.Start(b)
		}
		st, err := store.Open(context.Background(), dsn, b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { st.Close() })
		stores[engine] = st
	}
	b.Run("off", func(b *testing.B) { benchMessage(b, nil) })
	for _, engine := range []string{"sqlite", "postgres"} {
		b.Run(engine, func(b *testing.B) {
			rec := aggregate.NewRecorder(stores[engine], 24*time.Hour, time.Second, aggregate.Facts{}, zerolog.Nop(), nil)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { rec.Run(ctx); close(done) }()
			benchMessage(b, rec)
			b.StopTimer()
			cancel()
			<-done
			if got := rec.Stats().Recorded; got < uint64(b.N) {
				b.Errorf("%d messages recorded, want %d", got, b.N)
			}
		})
	}
}

// benchRaw is the benchmarks' message: about 4 KiB, one RSA-2048 DKIM
// signature of pass.example.
func benchRaw(b *testing.B) string {
	body := strings.Repeat("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\n", 52)
	return sign(b, message([]string{
		"From: Bob <bob@pass.example>",
		"To: rcpt@test.example",
		"Subject: benchmark",
		"Date: Mon, 23 Nov 2026 10:00:00 +0000",
		"Message-ID: <bench@test.example>",
	}, body), "pass.example", "sel1", "rsa2048.pem", msgdkim.CanonicalizationRelaxed)
}

func benchMessage(b *testing.B, c session.Consumer) {
	e := newEnv(b, envOptions{settings: func(s *session.Settings) {
		if c != nil {
			s.Consumers = append(s.Consumers, c)
		}
	}})
	raw := benchRaw(b)
	s := e.dial(0)
	connectAndHelo(b, s, goodIP, "mx.pass.example")
	m := msg{mailFrom: "bob@pass.example", raw: raw}
	if got := send(b, s, m); !strings.Contains(got.AuthResults(), "dkim=pass") || !strings.Contains(got.AuthResults(), "dmarc=pass") {
		b.Fatalf("warm-up message did not pass: %q", got.AuthResults())
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
