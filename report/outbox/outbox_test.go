package outbox

import (
	"context"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/dmarc-milter/dmarc-milter/internal/smtpsink"
	"github.com/dmarc-milter/dmarc-milter/internal/testutil"
)

func testConfig(t *testing.T) Config {
	return Config{
		Dir:         filepath.Join(t.TempDir(), "spool"),
		From:        "DMARC reports <dmarc-reports@mx.example.net>",
		Hello:       "mx.example.net",
		StartTLS:    StartTLSOff,
		MinBackoff:  20 * time.Millisecond,
		MaxBackoff:  100 * time.Millisecond,
		SMTPTimeout: 5 * time.Second,
	}
}

func newOutbox(t *testing.T, cfg Config) *Outbox {
	t.Helper()
	o, err := New(cfg, zerolog.New(zerolog.TestWriter{T: t}), nil)
	if err != nil {
		t.Fatal(err)
	}
	return o
}

// run runs o's sender until the test ends.
func run(t *testing.T, o *Outbox) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { o.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

func TestBackoff(t *testing.T) {
	c := Config{MinBackoff: time.Minute, MaxBackoff: time.Hour}
	want := []time.Duration{time.Minute, 2 * time.Minute, 4 * time.Minute, 8 * time.Minute, 16 * time.Minute, 32 * time.Minute, time.Hour, time.Hour}
	for i, w := range want {
		if got := c.backoff(i + 1); got != w {
			t.Errorf("backoff(%d) = %v, want %v", i+1, got, w)
		}
	}
}

// A message put in the outbox is delivered with the envelope sender's
// address, counted under its kind; the hook of a kind decides before each
// delivery, and a message it refuses is dropped unsent.
func TestPutDeliverAndHook(t *testing.T) {
	sink := smtpsink.Start(t)
	cfg := testConfig(t)
	cfg.SMTP = sink.Addr
	o := newOutbox(t, cfg)
	var asked atomic.Int32
	o.BeforeDelivery("aggregate", func(_ context.Context, e Envelope) bool {
		asked.Add(1)
		return e.Tag != "lost claim"
	})
	run(t, o)
	for _, it := range []Item{
		{Kind: "failure", To: "ruf@example.com", Domain: "example.com", QueueID: "4ABC", Message: []byte("Subject: f\r\n\r\nx\r\n")},
		{Kind: "aggregate", To: "rua@example.com", Domain: "example.com", Tag: "ok", Message: []byte("Subject: a\r\n\r\nx\r\n")},
		{Kind: "aggregate", To: "rua@example.org", Domain: "example.org", Tag: "lost claim", Message: []byte("Subject: b\r\n\r\nx\r\n")},
	} {
		if _, err := o.Put(it); err != nil {
			t.Fatal(err)
		}
	}
	msgs := sink.Wait(t, 2, 10*time.Second)
	testutil.WaitFor(t, "the spool to empty", func() bool { return o.Size() == 0 })
	got := map[string]bool{}
	for _, m := range msgs {
		if m.From != "dmarc-reports@mx.example.net" {
			t.Errorf("envelope sender %q", m.From)
		}
		got[m.To[0]] = true
	}
	if !got["ruf@example.com"] || !got["rua@example.com"] || got["rua@example.org"] || len(sink.Messages()) != 2 {
		t.Errorf("delivered to %v", got)
	}
	if asked.Load() != 2 {
		t.Errorf("the aggregate hook was asked %d times, want 2", asked.Load())
	}
	if f, a := o.Stats("failure"), o.Stats("aggregate"); f.Spooled != 1 || f.Sent != 1 || a.Spooled != 2 || a.Sent != 1 {
		t.Errorf("stats failure %+v aggregate %+v", f, a)
	}
	if all := o.Stats(""); all.Spooled != 3 || all.Sent != 2 {
		t.Errorf("stats of all %+v", all)
	}
}

// At start the sender removes the temporary files a crashed process left,
// never one this Outbox is writing.
func TestLoadSpoolKeepsWritesInProgress(t *testing.T) {
	cfg := testConfig(t)
	o := newOutbox(t, cfg)
	mine := filepath.Join(cfg.Dir, o.tmpPrefix+"123")
	crashed := filepath.Join(cfg.Dir, tmpPrefix+"20200101T000000.000000000-abcdef-123")
	for _, p := range []string{mine, crashed} {
		if err := os.WriteFile(p, []byte("{partial"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	o.scanSpool(true)
	if _, err := os.Stat(mine); err != nil {
		t.Errorf("a write in progress was removed: %v", err)
	}
	if _, err := os.Stat(crashed); !os.IsNotExist(err) {
		t.Errorf("a crashed process's temporary file was kept: %v", err)
	}
}

// The reports an earlier version left in spool/failure (failure reports
// with no kind, aggregate reports with their old claim fields) move to
// the spool at start and are delivered; the old folder goes.
func TestLegacySpoolMoved(t *testing.T) {
	sink := smtpsink.Start(t)
	state := t.TempDir()
	old := filepath.Join(state, "spool", "failure")
	if err := os.MkdirAll(old, 0o700); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"20261130T100000.000000000-aaaaaa.report": `{"id":"20261130T100000.000000000-aaaaaa","from":"r@mx.example.net","to":"ruf@example.com","domain":"example.com","queue_id":"4AB","created":"2026-11-30T10:00:00Z","attempts":1,"next_attempt":"2026-11-30T10:01:00Z"}` + "\nSubject: failure\r\n\r\nx\r\n",
		"20261130T100000.000000000-bbbbbb.report": `{"id":"20261130T100000.000000000-bbbbbb","from":"r@mx.example.net","to":"rua@example.com","domain":"example.com","created":"2026-11-30T10:00:00Z","attempts":0,"next_attempt":"2026-11-30T10:00:00Z","kind":"aggregate","period":1764460800,"report_id":"x"}` + "\nSubject: aggregate\r\n\r\nx\r\n",
		".tmp-crashed": "{partial",
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(old, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg := testConfig(t)
	cfg.Dir, cfg.Legacy, cfg.SMTP = filepath.Join(state, "spool"), []string{old}, sink.Addr
	o := newOutbox(t, cfg)
	if _, err := os.Stat(old); !os.IsNotExist(err) {
		t.Errorf("the old spool folder is still there: %v", err)
	}
	es, err := List(cfg.Dir)
	if err != nil || len(es) != 2 {
		t.Fatalf("spool after the move: %+v %v", es, err)
	}
	kinds := map[string]string{}
	for _, e := range es {
		kinds[e.To] = e.Kind
	}
	if kinds["ruf@example.com"] != "failure" || kinds["rua@example.com"] != "aggregate" {
		t.Errorf("kinds %v", kinds)
	}
	run(t, o)
	sink.Wait(t, 2, 10*time.Second)
	// Nothing to move the second time.
	if n, err := Migrate(old, cfg.Dir); n != 0 || err != nil {
		t.Errorf("second Migrate: %d %v", n, err)
	}
}
