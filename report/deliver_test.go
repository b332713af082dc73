package report

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/dmarc-milter/dmarc-milter/internal/smtpsink"
	"github.com/dmarc-milter/dmarc-milter/internal/testutil"
	"github.com/dmarc-milter/dmarc-milter/report/outbox"
)

// running starts the sender of r's outbox and stops it when the test
// ends; stop stops it early.
func running(t *testing.T, r *Reporter) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.out.Run(ctx); close(done) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Errorf("Run did not return after cancel")
		}
	}
	t.Cleanup(stop)
	return stop
}

// sendOne starts a Reporter relaying to sink, its configuration changed by
// mod (if set), and submits one message that wants a report.
func sendOne(t *testing.T, sink *smtpsink.Sink, mod func(*testSetup)) (*Reporter, testSetup) {
	t.Helper()
	cfg := testConfig(t)
	cfg.Out.SMTP = sink.Addr
	if mod != nil {
		mod(&cfg)
	}
	r := newReporter(t, cfg)
	running(t, r)
	r.Submit(failure(t, "v=DMARC1; p=reject; ruf=mailto:ruf@example.com"))
	return r, cfg
}

func newReporter(t *testing.T, cfg testSetup) *Reporter {
	t.Helper()
	r, err := newWith(cfg, newResolver(), testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestDeliver(t *testing.T) {
	sink := smtpsink.Start(t)
	cfg := testConfig(t)
	cfg.Out.SMTP = sink.Addr
	r := newReporter(t, cfg)
	running(t, r)

	r.Submit(failure(t, "v=DMARC1; p=reject; ruf=mailto:ruf@example.com"))
	msgs := sink.Wait(t, 1, 10*time.Second)
	m := msgs[0]
	if m.From != "dmarc-reports@mx.example.net" || len(m.To) != 1 || m.To[0] != "ruf@example.com" {
		t.Errorf("envelope %s -> %v", m.From, m.To)
	}
	p := parseReport(t, m.Data)
	if len(p.types) != 3 || p.feedback.Get("Feedback-Type") != "auth-failure" {
		t.Errorf("report: %v %v", p.types, p.feedback.Map())
	}
	testutil.WaitFor(t, "the spool to empty", func() bool { return len(spoolFiles(t, cfg.Out.Dir)) == 0 })
	st := r.Stats()
	if st.Submitted != 1 || st.Spooled != 1 || st.Sent != 1 || st.Dropped != 0 {
		t.Errorf("stats %+v", st)
	}
}

func TestRelayDownThenBack(t *testing.T) {
	sink := smtpsink.Start(t)
	sink.Stop()
	cfg := testConfig(t)
	cfg.Out.SMTP = sink.Addr
	r := newReporter(t, cfg)
	running(t, r)

	r.Submit(failure(t, "v=DMARC1; p=reject; ruf=mailto:ruf@example.com"))
	testutil.WaitFor(t, "retries", func() bool { return r.Stats().Retried >= 2 })
	files := spoolFiles(t, cfg.Out.Dir)
	if len(files) != 1 {
		t.Fatalf("spool holds %v", files)
	}
	env, _, err := readSpoolFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	if env.Attempts < 1 || env.LastError == "" {
		t.Errorf("attempts not recorded in the spool: %+v", env)
	}
	sink.Restart(t)
	sink.Wait(t, 1, 10*time.Second)
	testutil.WaitFor(t, "the spool to empty", func() bool { return len(spoolFiles(t, cfg.Out.Dir)) == 0 })
	if st := r.Stats(); st.Sent != 1 || st.Dropped != 0 {
		t.Errorf("stats %+v", st)
	}
}

func TestTemporaryReplyRetried(t *testing.T) {
	sink := smtpsink.Start(t)
	sink.FailRcpt(smtpsink.Temp(451), 2)
	r, _ := sendOne(t, sink, nil)
	sink.Wait(t, 1, 10*time.Second)
	if st := r.Stats(); st.Retried != 2 {
		t.Errorf("Retried = %d, want 2", st.Retried)
	}
}

// TestDropped: a permanent refusal drops the report at once; temporary
// ones do after MaxAttempts. Either way the spool file goes.
func TestDropped(t *testing.T) {
	tests := []struct {
		name        string
		fail        func(*smtpsink.Sink)
		maxAttempts int
		connections int
	}{
		{name: "permanent at MAIL", fail: func(s *smtpsink.Sink) { s.FailMail(smtpsink.Perm(550), -1) }, connections: 1},
		{name: "permanent at RCPT", fail: func(s *smtpsink.Sink) { s.FailRcpt(smtpsink.Perm(550), -1) }, connections: 1},
		{name: "permanent at DATA", fail: func(s *smtpsink.Sink) { s.FailData(smtpsink.Perm(554), -1) }, connections: 1},
		{name: "temporary, MaxAttempts 3", fail: func(s *smtpsink.Sink) { s.FailData(smtpsink.Temp(452), -1) }, maxAttempts: 3, connections: 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sink := smtpsink.Start(t)
			tc.fail(sink)
			r, cfg := sendOne(t, sink, func(c *testSetup) { c.Out.MaxAttempts = tc.maxAttempts })
			testutil.WaitFor(t, "the drop", func() bool { return r.Stats().Dropped == 1 })
			if st := r.Stats(); st.Retried != uint64(tc.connections-1) || st.Sent != 0 {
				t.Errorf("stats %+v, want %d retries", st, tc.connections-1)
			}
			if n := sink.Connections(); n != tc.connections {
				t.Errorf("%d connections, want %d", n, tc.connections)
			}
			if f := spoolFiles(t, cfg.Out.Dir); len(f) != 0 {
				t.Errorf("spool holds %v", f)
			}
		})
	}
}

func TestUnwritableSpool(t *testing.T) {
	// New refuses a spool it cannot create.
	base := t.TempDir()
	blocker := filepath.Join(base, "file")
	if err := os.WriteFile(blocker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t)
	cfg.Out.Dir = filepath.Join(blocker, "spool")
	if _, err := newWith(cfg, newResolver(), testLogger(t), nil); err == nil || !strings.Contains(err.Error(), "spool") {
		t.Errorf("New with an impossible spool: %v", err)
	}

	// The spool goes away while running: logged and dropped, nothing
	// blocks. (Permissions would not stop root, so the directory is
	// replaced by a file.)
	sink := smtpsink.Start(t)
	cfg = testConfig(t)
	cfg.Out.SMTP = sink.Addr
	r := newReporter(t, cfg)
	running(t, r)
	if err := os.RemoveAll(cfg.Out.Dir); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg.Out.Dir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for i := 0; i < 3; i++ {
		f := failure(t, "v=DMARC1; p=reject; ruf=mailto:ruf@example.com")
		f.ClientIP[15] = byte(10 + i)
		r.Submit(f)
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("Submit took %v", d)
	}
	testutil.WaitFor(t, "spool errors", func() bool { return r.Stats().SpoolErrors == 3 })
	if st := r.Stats(); st.Spooled != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestSubmitBurst: a burst of reportable messages, faster than any relay.
// Every report is in the spool when Submit returns (there is no queue to
// overflow), so stopping at once, as a SIGTERM or a kill -9 would, loses
// none: the next Reporter delivers them all. With the default limits the
// reports beyond them are dropped by the limits alone, and counted.
func TestSubmitBurst(t *testing.T) {
	const n = 1500
	burst := func(r *Reporter) {
		for i := range n {
			f := failure(t, "v=DMARC1; p=reject; ruf=mailto:ruf@example.com")
			f.ClientIP = net.IPv4(198, 18, byte(i>>8), byte(i)) // distinct: no de-duplication
			r.Submit(f)
		}
	}

	t.Run("within the limits", func(t *testing.T) {
		cfg := testConfig(t)
		cfg.PerDestinationLimit, cfg.GlobalLimit = 2*n, 2*n
		first := newReporter(t, cfg) // Run is not started: nothing is sent
		start := time.Now()
		burst(first)
		t.Logf("%d reportable messages submitted in %v (%v each, fsync included)", n, time.Since(start), time.Since(start)/n)
		if st := first.Stats(); st.Spooled != n || len(st.Suppressed) != 0 || st.SpoolErrors != 0 {
			t.Fatalf("stats %+v", st)
		}
		if got := len(spoolFiles(t, cfg.Out.Dir)); got != n {
			t.Fatalf("%d reports spooled, want %d", got, n)
		}
		// The first Reporter is gone without a word; the next one sends
		// everything.
		sink := smtpsink.Start(t)
		cfg.Out.SMTP = sink.Addr
		second := newReporter(t, cfg)
		running(t, second)
		sink.Wait(t, n, 60*time.Second)
		testutil.WaitFor(t, "the spool to empty", func() bool { return len(spoolFiles(t, cfg.Out.Dir)) == 0 })
		if st := second.Stats(); st.Sent != n {
			t.Errorf("sent %d, want %d", st.Sent, n)
		}
	})

	t.Run("default limits", func(t *testing.T) {
		cfg := testConfig(t)
		r := newReporter(t, cfg)
		burst(r)
		st := r.Stats()
		want := uint64(r.Config().PerDestinationLimit)
		if st.Spooled != want || st.Suppressed[ReasonDestLimit] != n-want || st.Spooled+st.Suppressed[ReasonDestLimit] != n {
			t.Errorf("stats %+v, want %d spooled and the rest counted against the destination limit", st, want)
		}
	})
}

// TestRestartDeliversSpool simulates a kill -9: a Reporter spools a report
// while the relay is down and is stopped without any cleanup, a temporary
// file of a write in progress is left behind; a new Reporter on the same
// spool delivers the report as soon as it starts.
func TestRestartDeliversSpool(t *testing.T) {
	sink := smtpsink.Start(t)
	sink.Stop()
	cfg := testConfig(t)
	cfg.Out.SMTP = sink.Addr
	cfg.Out.MinBackoff, cfg.Out.MaxBackoff = time.Hour, time.Hour // no retry before the restart

	first := newReporter(t, cfg)
	stop := running(t, first)
	first.Submit(failure(t, "v=DMARC1; p=reject; ruf=mailto:ruf@example.com"))
	testutil.WaitFor(t, "the first attempt", func() bool { return first.Stats().Retried == 1 })
	stop()
	if err := os.WriteFile(filepath.Join(cfg.Out.Dir, ".tmp-"+"crashed"), []byte("{partial"), 0o600); err != nil {
		t.Fatal(err)
	}
	if n := len(spoolFiles(t, cfg.Out.Dir)); n != 1 {
		t.Fatalf("%d reports spooled", n)
	}

	sink.Restart(t)
	second := newReporter(t, cfg)
	running(t, second)
	msgs := sink.Wait(t, 1, 10*time.Second)
	if !strings.Contains(string(msgs[0].Data), "DMARC failure report for example.com from 192.0.2.1") {
		t.Errorf("unexpected message delivered")
	}
	testutil.WaitFor(t, "the spool to empty", func() bool {
		des, _ := os.ReadDir(cfg.Out.Dir)
		return len(des) == 0
	})
	if st := second.Stats(); st.Sent != 1 {
		t.Errorf("stats %+v", st)
	}
}

func TestStartTLSAndAuth(t *testing.T) {
	t.Run("opportunistic TLS with AUTH", func(t *testing.T) {
		sink := smtpsink.StartWith(t, smtpsink.Options{STARTTLS: true, AuthUser: "u", AuthPassword: "p", RequireAuth: true})
		sendOne(t, sink, func(c *testSetup) { c.Out.SMTPUser, c.Out.SMTPPassword = "u", "p" })
		m := sink.Wait(t, 1, 10*time.Second)[0]
		if !m.TLS || m.AuthUser != "u" {
			t.Errorf("TLS %v, user %q", m.TLS, m.AuthUser)
		}
	})
	t.Run("AUTH to loopback without TLS", func(t *testing.T) {
		sink := smtpsink.StartWith(t, smtpsink.Options{AuthUser: "u", AuthPassword: "p", RequireAuth: true})
		sendOne(t, sink, func(c *testSetup) { c.Out.SMTPUser, c.Out.SMTPPassword = "u", "p" })
		if m := sink.Wait(t, 1, 10*time.Second)[0]; m.TLS || m.AuthUser != "u" {
			t.Errorf("TLS %v, user %q", m.TLS, m.AuthUser)
		}
	})
	t.Run("required TLS not offered", func(t *testing.T) {
		sink := smtpsink.Start(t)
		r, _ := sendOne(t, sink, func(c *testSetup) { c.Out.StartTLS = outbox.StartTLSRequired })
		testutil.WaitFor(t, "a retry", func() bool { return r.Stats().Retried >= 1 })
		if len(sink.Messages()) != 0 {
			t.Errorf("sent without TLS")
		}
	})
	t.Run("required TLS, unverifiable certificate", func(t *testing.T) {
		sink := smtpsink.StartWith(t, smtpsink.Options{STARTTLS: true})
		r, _ := sendOne(t, sink, func(c *testSetup) { c.Out.StartTLS = outbox.StartTLSRequired })
		testutil.WaitFor(t, "a retry", func() bool { return r.Stats().Retried >= 1 })
		if len(sink.Messages()) != 0 {
			t.Errorf("sent over an unverified TLS session")
		}
	})
}

// SetConfig (SIGHUP) applies new settings to the next report and keeps the
// running ones when the new ones are bad.
func TestSetConfig(t *testing.T) {
	sink := smtpsink.Start(t)
	cfg := testConfig(t)
	cfg.Out.SMTP = sink.Addr
	r := newReporter(t, cfg)
	running(t, r)

	off := cfg.Config
	off.Enabled = false
	if err := r.SetConfig(off); err != nil {
		t.Fatal(err)
	}
	r.Submit(failure(t, "v=DMARC1; p=reject; ruf=mailto:ruf@example.com"))
	if got := r.Stats().Suppressed[ReasonDisabled]; got != 1 {
		t.Errorf("after switching reports off: suppressed(disabled) = %d, want 1", got)
	}

	bad := cfg.Config
	bad.From = "not an address"
	if err := r.SetConfig(bad); err == nil {
		t.Error("bad report address accepted")
	}
	if r.Config().Enabled {
		t.Error("a rejected SetConfig changed the running configuration")
	}
	badOut := cfg.Out
	badOut.From = "not an address"
	if err := r.out.SetConfig(badOut); err == nil {
		t.Error("bad envelope sender accepted by the outbox")
	}

	on := cfg.Out
	on.Dir = "/elsewhere" // needs a restart: ignored
	if err := r.out.SetConfig(on); err != nil {
		t.Fatal(err)
	}
	if r.out.Config().Dir != cfg.Out.Dir {
		t.Errorf("spool dir changed by SetConfig: %s", r.out.Config().Dir)
	}
	if err := r.SetConfig(cfg.Config); err != nil {
		t.Fatal(err)
	}
	r.Submit(failure(t, "v=DMARC1; p=reject; ruf=mailto:ruf@example.com"))
	sink.Wait(t, 1, 10*time.Second)
}

// A reporter started with reports off sends them once a reload turns them
// on, without a restart.
func TestSetConfigTurnsReportsOn(t *testing.T) {
	sink := smtpsink.Start(t)
	cfg := testConfig(t)
	cfg.Out.SMTP = sink.Addr
	off := cfg
	off.Enabled = false
	r := newReporter(t, off)
	running(t, r)
	time.Sleep(50 * time.Millisecond) // let Run start with reports off
	if err := r.SetConfig(cfg.Config); err != nil {
		t.Fatal(err)
	}
	r.Submit(failure(t, "v=DMARC1; p=reject; ruf=mailto:ruf@example.com"))
	sink.Wait(t, 1, 10*time.Second)
}

// TestShutdownDuringHungDelivery: the relay stops answering in the middle
// of DATA. Stopping the Reporter must not wait for the SMTP timeout (2
// minutes by default): Run returns at once and the report stays spooled,
// its attempt not counted, for the next start.
func TestShutdownDuringHungDelivery(t *testing.T) {
	sink := smtpsink.Start(t)
	sink.HangData()
	cfg := testConfig(t)
	cfg.Out.SMTP = sink.Addr
	r := newReporter(t, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.out.Run(ctx); close(done) }()

	r.Submit(failure(t, "v=DMARC1; p=reject; ruf=mailto:ruf@example.com"))
	testutil.WaitFor(t, "the delivery to hang in DATA", func() bool { return sink.InData() == 1 })
	time.Sleep(100 * time.Millisecond) // the message is written; the reply never comes
	start := time.Now()
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return within 5 s of the shutdown while the relay hangs")
	}
	t.Logf("Run returned %v after the shutdown", time.Since(start))
	files := spoolFiles(t, cfg.Out.Dir)
	if len(files) != 1 {
		t.Fatalf("%d reports spooled after the shutdown, want 1", len(files))
	}
	env, _, err := readSpoolFile(files[0])
	if err != nil || env.Attempts != 0 {
		t.Errorf("spooled report: attempts %d, %v; want it as it was", env.Attempts, err)
	}
	if st := r.Stats(); st.Sent != 0 || st.Dropped != 0 || st.Retried != 0 {
		t.Errorf("stats %+v", st)
	}
}

// BenchmarkSubmit measures what Submit adds to the milter's answer: for a
// message that gets a report (built, written and fsynced to the spool on
// the local disk), and for one that does not (the cheap checks only).
func BenchmarkSubmit(b *testing.B) {
	for _, tc := range []struct {
		name   string
		record string
	}{
		{"reportable", "v=DMARC1; p=reject; ruf=mailto:ruf@example.com"},
		{"no report wanted", "v=DMARC1; p=reject"},
	} {
		b.Run(tc.name, func(b *testing.B) {
			cfg := testConfig(b)
			cfg.Out.Dir = filepath.Join(b.TempDir(), "spool")
			cfg.PerDestinationLimit, cfg.GlobalLimit = 1<<30, 1<<30
			r, err := newWith(cfg, newResolver(), zerolog.Nop(), nil)
			if err != nil {
				b.Fatal(err)
			}
			i := 0
			for b.Loop() {
				f := failure(b, tc.record)
				f.ClientIP = net.IPv4(198, 18, byte(i>>8), byte(i))
				i++
				r.Submit(f)
			}
		})
	}
}
