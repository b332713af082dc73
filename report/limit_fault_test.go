package report

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/dmarc-milter/dmarc-milter/internal/pgtest"
	"github.com/dmarc-milter/dmarc-milter/internal/testutil"
	"github.com/dmarc-milter/dmarc-milter/report/store"
)

// TestSharedLimitsFrozenStore: with the fleet's limits in a PostgreSQL
// that freezes (SIGSTOP, a hung database host), a report-triggering
// message waits at most LimiterWait for them, the following ones not at
// all; this host's limits apply meanwhile, counted, and the outage is
// logged once when it starts and once when it ends, with the messages it
// affected.
func TestSharedLimitsFrozenStore(t *testing.T) {
	pg := pgtest.New(t)
	pg.Start()
	st, err := store.Open(context.Background(), pg.URL(), "")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	clk := testutil.NewClock(time.Date(2026, 5, 4, 0, 0, 0, 0, time.UTC))
	var logs testutil.SyncBuffer
	r, err := newWith(testConfig(t), newResolver(), zerolog.New(io.MultiWriter(&logs, zerolog.TestWriter{T: t})), clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	r.UseLimiter(st, "shared by the fleet, in "+st.Where)
	n := 0
	submit := func() time.Duration {
		n++
		f := failure(t, "v=DMARC1; p=reject; ruf=mailto:a@example.com")
		f.ClientIP = net.ParseIP(fmt.Sprintf("192.0.2.%d", n)) // no duplicates
		start := time.Now()
		r.Submit(f)
		return time.Since(start)
	}
	submit() // the store's limits answer
	if got := r.Stats().LimitFallbacks; got != 0 {
		t.Fatalf("LimitFallbacks = %d with the store up", got)
	}

	pg.Freeze()
	const frozen = 20
	var worst time.Duration
	for range frozen {
		worst = max(worst, submit())
		clk.Advance(100 * time.Millisecond)
	}
	// The bound is LimiterWait; the rest is writing the report to the
	// spool, on a machine shared with other tests.
	if worst > LimiterWait+time.Second {
		t.Errorf("a message waited %v for a frozen store, want about %v at most", worst, LimiterWait)
	}
	if got := r.Stats().LimitFallbacks; got != frozen {
		t.Errorf("LimitFallbacks = %d, want %d", got, frozen)
	}
	if c := strings.Count(logs.String(), "cannot apply the store's failure-report limits"); c != 1 {
		t.Errorf("the outage is logged %d times, want once:\n%s", c, logs.String())
	}
	if !strings.Contains(logs.String(), `"limits":"shared by the fleet, in `) {
		t.Errorf("the log does not say whose limits:\n%s", logs.String())
	}

	pg.Thaw()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(logs.String(), "failure-report limits are back") {
		if time.Now().After(deadline) {
			t.Fatalf("the store's limits never came back:\n%s", logs.String())
		}
		clk.Advance(LimiterRetry)
		submit()
	}
	if !strings.Contains(logs.String(), fmt.Sprintf(`"messages":%d`, r.Stats().LimitFallbacks)) {
		t.Errorf("the line saying they are back does not give the %d messages affected:\n%s", r.Stats().LimitFallbacks, logs.String())
	}
	before := r.Stats().LimitFallbacks
	submit()
	if got := r.Stats().LimitFallbacks; got != before {
		t.Errorf("LimitFallbacks went %d → %d with the store back", before, got)
	}
}
