package store

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/dmarc-milter/dmarc-milter/internal/pgtest"
)

// engines runs f against SQLite and against a PostgreSQL server started
// for the test (skipped, saying so, without PostgreSQL installed).
func engines(t *testing.T, f func(t *testing.T, open func() *Store)) {
	t.Run("sqlite", func(t *testing.T) {
		dir := t.TempDir()
		f(t, func() *Store { return mustOpen(t, "", dir) })
	})
	t.Run("postgres", func(t *testing.T) {
		dsn := pgtest.Start(t)
		f(t, func() *Store { return mustOpen(t, dsn, "") })
	})
}

func mustOpen(t *testing.T, dsn, dir string) *Store {
	t.Helper()
	s, err := Open(context.Background(), dsn, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

var t0 = time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)

// Rows are summed at write time, across writers (hosts), and a store
// opened again (migrated already) keeps them.
func TestAddSumsRows(t *testing.T) {
	engines(t, func(t *testing.T, open func() *Store) {
		a, b := open(), open()
		ctx := context.Background()
		k := Key{Period: t0.Unix(), Domain: "example.com"}
		other := Key{Period: t0.Unix(), Domain: "example.org"}
		if err := a.Add(ctx, []Row{{Key: k, FP: "x", Data: `{"a":1}`, Count: 3}, {Key: other, FP: "x", Data: `{"a":1}`, Count: 1}},
			[]Policy{{Key: k, Data: `{"p":"none"}`, Seen: t0}}); err != nil {
			t.Fatal(err)
		}
		if err := b.Add(ctx, []Row{{Key: k, FP: "x", Data: `{"a":1}`, Count: 4}, {Key: k, FP: "y", Data: `{"b":2}`, Count: 1}},
			[]Policy{{Key: k, Data: `{"p":"reject"}`, Seen: t0.Add(time.Minute)}, {Key: other, Data: `{"p":"old"}`, Seen: t0}}); err != nil {
			t.Fatal(err)
		}
		// An older policy does not replace a newer one.
		if err := a.Add(ctx, nil, []Policy{{Key: k, Data: `{"p":"stale"}`, Seen: t0}}); err != nil {
			t.Fatal(err)
		}
		rows, err := open().Rows(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		if len(rows) != 2 || rows[0].FP != "x" || rows[0].Count != 7 || rows[1].Count != 1 {
			t.Errorf("rows %+v, want x=7 then y=1", rows)
		}
		if p, _ := a.PolicyOf(ctx, k); p != `{"p":"reject"}` {
			t.Errorf("policy %q, want the newest", p)
		}
		keys, err := a.Keys(ctx, t0, t0.Add(24*time.Hour), "example.com")
		if err != nil || len(keys) != 1 || keys[0] != k {
			t.Errorf("keys %v %v", keys, err)
		}
	})
}

// Exactly one of several hosts claims a report; a claim whose lease ran
// out passes to another host, and the first can then no longer mark it
// done; a done report is never due or claimed again.
func TestClaims(t *testing.T) {
	engines(t, func(t *testing.T, open func() *Store) {
		ctx := context.Background()
		s := open()
		k := Key{Period: t0.Unix(), Domain: "example.com"}
		if err := s.Add(ctx, []Row{{Key: k, FP: "x", Data: "{}", Count: 1}}, nil); err != nil {
			t.Fatal(err)
		}
		day := 24 * time.Hour
		if due, _ := s.Due(ctx, day, t0.Add(time.Hour)); len(due) != 0 {
			t.Errorf("due before the period ended: %v", due)
		}
		now := t0.Add(day + time.Minute)
		if due, _ := s.Due(ctx, day, now); len(due) != 1 {
			t.Fatalf("due after the period: %v", due)
		}
		// Eight hosts race for it.
		var wg sync.WaitGroup
		won := make(chan string, 8)
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				owner := string(rune('a' + i))
				if ok, err := open().Claim(ctx, k, owner, now, time.Minute); err != nil {
					t.Error(err)
				} else if ok {
					won <- owner
				}
			}()
		}
		wg.Wait()
		close(won)
		var winners []string
		for w := range won {
			winners = append(winners, w)
		}
		if len(winners) != 1 {
			t.Fatalf("%d hosts claimed the report: %v", len(winners), winners)
		}
		first := winners[0]
		if due, _ := s.Due(ctx, day, now); len(due) != 0 {
			t.Errorf("due while claimed: %v", due)
		}
		// The first host dies; after its lease another takes over.
		later := now.Add(2 * time.Minute)
		if ok, _ := s.Claim(ctx, k, "z", now.Add(30*time.Second), time.Minute); ok {
			t.Error("claimed under a live lease")
		}
		if ok, err := s.Claim(ctx, k, "z", later, time.Minute); err != nil || !ok {
			t.Fatalf("claim after the lease ran out: %v %v", ok, err)
		}
		if ok, _ := s.Done(ctx, k, first, "id", later); ok {
			t.Error("the host whose claim ran out marked the report done")
		}
		if ok, err := s.Done(ctx, k, "z", "id", later); err != nil || !ok {
			t.Fatalf("done by the owner: %v %v", ok, err)
		}
		if ok, _ := s.Claim(ctx, k, "y", later.Add(time.Hour), time.Minute); ok {
			t.Error("a done report was claimed again")
		}
		if due, _ := s.Due(ctx, day, later.Add(time.Hour)); len(due) != 0 {
			t.Errorf("done report still due: %v", due)
		}
		// Retention: rows go once their report is old enough.
		if n, err := s.Expire(ctx, later.Add(-time.Hour)); err != nil || n != 0 {
			t.Errorf("expired too early: %d %v", n, err)
		}
		if n, err := s.Expire(ctx, later.Add(time.Hour)); err != nil || n != 1 {
			t.Errorf("expire: %d %v", n, err)
		}
		if rows, _ := s.Rows(ctx, k); len(rows) != 0 {
			t.Errorf("rows left after retention: %v", rows)
		}
	})
}

// The failure-report limits hold across the hosts that share a store.
func TestTakeLimits(t *testing.T) {
	engines(t, func(t *testing.T, open func() *Store) {
		ctx := context.Background()
		hosts := []*Store{open(), open(), open()}
		l := Limits{Dedup: time.Hour, PerDest: 10, PerDestWindow: time.Hour, Global: 15, GlobalWindow: time.Hour}
		var mu sync.Mutex
		got := map[string]int{}
		var wg sync.WaitGroup
		for i := range 30 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				h := hosts[i%len(hosts)]
				// 30 distinct failures, all to one destination.
				why, err := h.Take(ctx, "failure-"+string(rune('A'+i)), "ruf@example.com", t0.Add(time.Duration(i)*time.Millisecond), l)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				got[why]++
				mu.Unlock()
			}()
		}
		wg.Wait()
		if got[""] != 10 || got[LimitDestination] != 20 {
			t.Errorf("taken %v, want 10 sent and 20 over the destination limit", got)
		}
		if why, _ := hosts[0].Take(ctx, "failure-A", "other@example.net", t0.Add(time.Second), l); why != LimitDuplicate && why != "" {
			t.Errorf("unexpected %q", why)
		}
		// Identical failure again, other host: a duplicate.
		why, _ := hosts[1].Take(ctx, "dup", "x@example.net", t0.Add(time.Second), l)
		why2, _ := hosts[2].Take(ctx, "dup", "x@example.net", t0.Add(2*time.Second), l)
		if why != "" || why2 != LimitDuplicate {
			t.Errorf("dedup across hosts: %q then %q", why, why2)
		}
		// After the window everything may go again.
		if why, _ := hosts[0].Take(ctx, "dup", "x@example.net", t0.Add(2*time.Hour), l); why != "" {
			t.Errorf("after the window: %q", why)
		}
	})
}

// A store from a newer version is refused, not damaged.
func TestNewerSchemaRefused(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, "", dir)
	if _, err := s.db.Exec(`UPDATE schema_version SET version = 999`); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := Open(context.Background(), "", dir); err == nil {
		t.Error("a store with a newer schema was opened")
	}
}

// Known senders: the latest time of each (org, network) is kept across
// writers, read back newest first within a limit, and expired.
func TestSenders(t *testing.T) {
	engines(t, func(t *testing.T, open func() *Store) {
		a, b := open(), open()
		ctx := context.Background()
		if err := a.AddSenders(ctx, []Sender{
			{Org: "example.com", Network: "192.0.2.0/24", Last: t0},
			{Org: "example.com", Network: "2001:db8::/56", Last: t0.Add(time.Hour)},
			{Org: "example.org", Network: "192.0.2.0/24", Last: t0.Add(-40 * 24 * time.Hour)},
		}); err != nil {
			t.Fatal(err)
		}
		// A later pass moves the time on; an earlier one does not move it back.
		if err := b.AddSenders(ctx, []Sender{
			{Org: "example.com", Network: "192.0.2.0/24", Last: t0.Add(2 * time.Hour)},
			{Org: "example.com", Network: "2001:db8::/56", Last: t0},
		}); err != nil {
			t.Fatal(err)
		}
		got, err := open().Senders(ctx, t0.Add(-30*24*time.Hour), 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 2 || got[0].Network != "192.0.2.0/24" || !got[0].Last.Equal(t0.Add(2*time.Hour)) ||
			got[1].Network != "2001:db8::/56" || !got[1].Last.Equal(t0.Add(time.Hour)) {
			t.Errorf("senders %+v", got)
		}
		if got, _ := a.Senders(ctx, time.Time{}, 1); len(got) != 1 || got[0].Network != "192.0.2.0/24" {
			t.Errorf("limit 1: %+v", got)
		}
		if n, err := a.ExpireSenders(ctx, t0.Add(-30*24*time.Hour)); err != nil || n != 1 {
			t.Errorf("expired %d, %v; want 1", n, err)
		}
	})
}
