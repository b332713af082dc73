package aggregate

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/dmarc-milter/dmarc-milter/internal/testutil"
	"github.com/dmarc-milter/dmarc-milter/policy"
	"github.com/dmarc-milter/dmarc-milter/policy/dmarc"
	"github.com/dmarc-milter/dmarc-milter/report/store"
)

// TestRecorderFullDisk runs the Recorder on a SQLite store in a small
// tmpfs that fills up, a real full disk: the outage is logged once when
// it starts and once when it ends, the rows kept meanwhile all reach the
// store, and what cannot be written at shutdown is counted as dropped,
// with the number in the log line.
func TestRecorderFullDisk(t *testing.T) {
	dir, fill, free := testutil.SmallDisk(t, "16m")
	st, err := store.Open(context.Background(), "", dir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	logs := &testutil.SyncBuffer{}
	rec := NewRecorder(st, 24*time.Hour, 20*time.Millisecond, Facts{}, zerolog.New(logs), nil)

	submit := func(from, n int) {
		for i := from; i < from+n; i++ {
			rec.Submit(judged(t, fmt.Sprintf("d%d.example", i), "v=DMARC1; p=reject; rua=mailto:agg@example.com",
				"192.0.2.1", dmarc.Fail, policy.Reject))
		}
	}
	waitLog := func(s string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(logs.String(), s) {
			if time.Now().After(deadline) {
				t.Fatalf("no %q in the log:\n%s", s, logs.String())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	fill()
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { rec.Run(ctx); close(done) }()
	submit(0, 3000)
	waitLog("aggregate report store unavailable")
	time.Sleep(200 * time.Millisecond) // several failed flushes
	if n := strings.Count(logs.String(), "store unavailable"); n != 1 {
		t.Errorf("the outage is logged %d times, want once:\n%s", n, logs.String())
	}
	if rec.Stats().FlushErrors < 2 {
		t.Errorf("flush errors = %d, want several", rec.Stats().FlushErrors)
	}

	free()
	waitLog("aggregate report store back")
	if got := storedMessages(t, st); got != 3000 {
		t.Errorf("%d messages in the store after the outage, want 3000", got)
	}

	// Full again at shutdown: the last flush fails, and says what it loses.
	fill()
	submit(3000, 500)
	stop()
	<-done
	if got := rec.Stats().Dropped; got != 500 {
		t.Errorf("dropped = %d, want the 500 messages not written at shutdown", got)
	}
	if !strings.Contains(logs.String(), `"messages":500`) || !strings.Contains(logs.String(), "not written at shutdown") {
		t.Errorf("the shutdown line does not say 500 messages:\n%s", logs.String())
	}
}

// storedMessages sums the message counts of every row in st.
func storedMessages(t *testing.T, st *store.Store) int64 {
	t.Helper()
	ctx := context.Background()
	keys, err := st.Keys(ctx, time.Unix(0, 0), time.Now().Add(365*24*time.Hour), "")
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, k := range keys {
		rows, err := st.Rows(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			n += r.Count
		}
	}
	return n
}
