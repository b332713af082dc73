package store

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/dmarc-milter/dmarc-milter/internal/pgtest"
)

// events records a store's Notify calls.
type events struct {
	mu sync.Mutex
	ev []Event
}

func (e *events) notify(ev Event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.ev = append(e.ev, ev)
}

func (e *events) list() []Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]Event(nil), e.ev...)
}

func oneRow(domain string, n int64) []Row {
	return []Row{{Key: Key{Period: t0.Unix(), Domain: domain}, FP: "x", Data: `{"a":1}`, Count: n}}
}

func count(t *testing.T, s *Store, domain string) int64 {
	t.Helper()
	rows, err := s.Rows(context.Background(), Key{Period: t0.Unix(), Domain: domain})
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, r := range rows {
		n += r.Count
	}
	return n
}

// TestPostgresComesAndGoes: a store made while its PostgreSQL is down
// fails fast, without waiting, until the server starts; then it connects,
// migrates and takes writes, and says so once each way. A frozen server
// (SIGSTOP) is not waited for beyond the caller's context, and the store
// is used again once it runs.
func TestPostgresComesAndGoes(t *testing.T) {
	pg := pgtest.New(t)
	var ev events
	now := time.Now()
	clock := func() time.Time { return now }
	s, err := New(pg.URL(), "", Options{Notify: ev.notify, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	if err := s.Add(ctx, oneRow("example.com", 1), nil); err == nil {
		t.Fatal("Add with the database down succeeded")
	}
	// Within the backoff the store answers at once with the last error.
	start := time.Now()
	for range 100 {
		if err := s.Add(ctx, oneRow("example.com", 1), nil); err == nil {
			t.Fatal("Add with the database down succeeded")
		}
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("100 writes during the backoff took %v: each tried to connect", d)
	}
	if s.Up() {
		t.Error("Up with the database down")
	}

	pg.Start()
	now = now.Add(maxBackoff) // past the backoff
	if err := s.Add(ctx, oneRow("example.com", 3), nil); err != nil {
		t.Fatalf("Add once the database is up: %v", err)
	}
	if !s.Up() || count(t, s, "example.com") != 3 {
		t.Fatalf("up %v, %d messages stored, want 3", s.Up(), count(t, s, "example.com"))
	}
	if got := ev.list(); len(got) != 2 || got[0].Up || !got[1].Up {
		t.Fatalf("events %+v, want down then up", got)
	}

	pg.Freeze()
	fctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	start = time.Now()
	_, err = s.Take(fctx, "d", "dest@example.com", now, Limits{Dedup: time.Hour})
	cancel()
	if err == nil {
		t.Fatal("Take on a frozen database succeeded")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Take on a frozen database waited %v with a 100 ms context", d)
	}
	if s.Up() {
		t.Error("Up with the database frozen")
	}
	pg.Thaw()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := s.Add(ctx, oneRow("example.com", 1), nil)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still failing after the thaw: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !s.Up() || count(t, s, "example.com") != 4 {
		t.Errorf("after the thaw: up %v, %d messages, want 4", s.Up(), count(t, s, "example.com"))
	}
}

// TestSQLiteFileDeleted: the SQLite file deleted while open is noticed at
// the next write, which goes to a new file, said once (ErrFileReplaced).
func TestSQLiteFileDeleted(t *testing.T) {
	dir := t.TempDir()
	var ev events
	s, err := New("", dir, Options{Notify: ev.notify})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	if err := s.Add(ctx, oneRow("example.com", 5), nil); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, FileName)
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		os.Remove(p)
	}
	if err := s.Add(ctx, oneRow("example.org", 7), nil); err != nil {
		t.Fatalf("Add after the file was deleted: %v", err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("no new file: %v", err)
	}
	// A second store on the same path sees the write: it is in the file.
	other := mustOpen(t, "", dir)
	if n := count(t, other, "example.org"); n != 7 {
		t.Errorf("the new file holds %d messages of example.org, want 7", n)
	}
	got := ev.list()
	if len(got) != 1 || !errors.Is(got[0].Err, ErrFileReplaced) {
		t.Errorf("events %+v, want one ErrFileReplaced", got)
	}
	if err := s.Add(ctx, oneRow("example.org", 1), nil); err != nil || len(ev.list()) != 1 {
		t.Errorf("the next write: %v, %d events (the file is the same now)", err, len(ev.list()))
	}
}
