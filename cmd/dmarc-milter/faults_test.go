package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dmarc-milter/dmarc-milter/internal/pgtest"
	"github.com/dmarc-milter/dmarc-milter/internal/testutil"
	"github.com/dmarc-milter/dmarc-milter/report/store"
)

// The daemon under store and disk faults (issue 21), with real file
// systems and a real PostgreSQL: mail is answered as always and in bounded
// time, and no report row is lost without being counted.

// replyBound is the longest a spoofed message may wait for its answer
// under a fault. Nothing on the reply path waits on the store for more
// than 100 ms (the failure-report limits); the rest is the milter's own
// few milliseconds, with room for a slow test machine.
const replyBound = time.Second

// spoofs sends n spoofed messages and fails the test unless each is
// rejected (550, never a tempfail) within replyBound. It returns the
// longest wait.
func spoofs(t *testing.T, sock string, n int) time.Duration {
	t.Helper()
	var worst time.Duration
	for i := range n {
		start := time.Now()
		code := spoof(t, "unix", sock)
		wait := time.Since(start)
		worst = max(worst, wait)
		if code != 550 {
			t.Fatalf("message %d: %d, want 550 as without the fault", i, code)
		}
		if wait > replyBound {
			t.Errorf("message %d waited %v for its answer, more than %v", i, wait, replyBound)
		}
	}
	return worst
}

// metric returns the value of the sample line of metrics that starts with
// name (labels included), or -1.
func metric(t *testing.T, addr, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`).FindSubmatch(b)
	if m == nil {
		return -1
	}
	v, _ := strconv.ParseFloat(string(m[1]), 64)
	return v
}

// TestFullStateDir: the state directory (SQLite store and report spool)
// on a small tmpfs that fills up while the daemon runs. Mail is answered
// as always; the aggregate rows wait in memory and are written once there
// is room; a failure report that cannot be spooled is counted; at a stop
// with the disk full again, the rows not written are counted with their
// messages.
func TestFullStateDir(t *testing.T) {
	dir, fill, free := testutil.SmallDisk(t, "16m")
	dnsSrv, bin := daemonPrereqs(t)

	metricsAddr := testutil.FreeAddr(t)
	conf := writeFile(t, "aggregate_flush_interval = \"200ms\"\n")
	sock := filepath.Join(t.TempDir(), "m.sock")
	d := startDaemon(t, bin, "serve", "--config", conf, "--listen", "unix:"+sock, "--dns", dnsSrv.Addr, "--state-dir", dir,
		"--report-smtp", "127.0.0.1:9", "--authserv-id", "mx.cli.example", "--metrics-listen", metricsAddr)
	d.waitFor("dmarc-milter ready")

	fill()
	worst := spoofs(t, sock, 10)
	t.Logf("disk full: the longest answer took %v", worst)
	d.waitAny("aggregate report store unavailable", 10*time.Second)
	if got := metric(t, metricsAddr, "dmarc_milter_aggregate_messages_recorded_total"); got != 10 {
		t.Errorf("aggregate_messages_recorded_total = %v, want 10", got)
	}
	// Every failure report that could not be spooled is counted and named.
	dropped := strings.Count(strings.Join(d.logSoFar(), "\n"), "cannot write failure report to the spool; report dropped")
	if got := metric(t, metricsAddr, `dmarc_milter_reports_total{event="spool_errors"}`); int(got) != dropped {
		t.Errorf("reports_total{spool_errors} = %v, but %d reports were logged as dropped", got, dropped)
	}

	// Room again: the rows kept in memory are written.
	free()
	d.waitAny("aggregate report store back", 10*time.Second)
	spoofs(t, sock, 5)

	// Full again at the stop: the last rows cannot be written, and the
	// log says how many messages they held.
	time.Sleep(500 * time.Millisecond) // the 5 messages' rows written
	fill()
	spoofs(t, sock, 3)
	d.cmd.Process.Signal(syscall.SIGTERM)
	line := d.waitWithin("aggregate report rows not written at shutdown", 45*time.Second)
	if !strings.Contains(line, `"messages":3,`) {
		t.Errorf("the shutdown line does not count the 3 messages left:\n%s", line)
	}
	d.waitFor("stopped")
	d.cmd.Wait()
	if n := strings.Count(strings.Join(d.logSoFar(), "\n"), "aggregate report store unavailable"); n > 2 {
		t.Errorf("the store's outages are logged %d times, want once each", n)
	}

	free()
	st, err := store.Open(context.Background(), "", dir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if got := countMessages(t, st); got != 15 {
		t.Errorf("%d messages in the store, want the 15 written before the stop", got)
	}
}

// TestFrozenPostgresOnTheReplyPath: a PostgreSQL that stops answering
// (SIGSTOP: connections open, nothing comes back), shared by the fleet for
// aggregate rows and the failure-report limits. Each report-triggering
// message waits at most 100 ms for the limits, then uses this host's; the
// replies stay within the bound; the change is logged once each way.
func TestFrozenPostgresOnTheReplyPath(t *testing.T) {
	dnsSrv, bin := daemonPrereqs(t)
	pg := pgtest.New(t)
	pg.Start()
	metricsAddr := testutil.FreeAddr(t)
	conf := writeFile(t, fmt.Sprintf("aggregate_flush_interval = \"200ms\"\nstore = %q\n", pg.URL()))
	sock := filepath.Join(t.TempDir(), "m.sock")
	d := startDaemon(t, bin, "serve", "--config", conf, "--listen", "unix:"+sock, "--dns", dnsSrv.Addr, "--state-dir", t.TempDir(),
		"--report-smtp", "127.0.0.1:9", "--authserv-id", "mx.cli.example", "--metrics-listen", metricsAddr)
	d.waitFor("dmarc-milter ready")
	spoofs(t, sock, 2) // the store's connections are open

	pg.Freeze()
	worst := spoofs(t, sock, 10)
	t.Logf("PostgreSQL frozen: the longest answer took %v", worst)
	if got := metric(t, metricsAddr, "dmarc_milter_report_limit_fallbacks_total"); got < 1 {
		t.Errorf("report_limit_fallbacks_total = %v, want the messages that used this host's limits", got)
	}
	// Reports are made after the reply: the line may come a little later.
	d.waitAny("using this host's until the store answers", 10*time.Second)
	log := strings.Join(d.logSoFar(), "\n")
	if n := strings.Count(log, "using this host's until the store answers"); n != 1 {
		t.Errorf("the fallback to this host's limits is logged %d times, want once:\n%s", n, log)
	}

	if got := metric(t, metricsAddr, "dmarc_milter_store_up"); got != 0 {
		t.Errorf("store_up = %v with PostgreSQL frozen, want 0", got)
	}

	// Thawed: the limits are the fleet's again once the fallback's 5 s are
	// over, and the rows the frozen flush held are written.
	pg.Thaw()
	time.Sleep(5500 * time.Millisecond)
	spoofs(t, sock, 2)
	d.waitAny("the store's failure-report limits are back", 10*time.Second)
	d.cmd.Process.Signal(syscall.SIGTERM)
	d.waitWithin("stopped", 45*time.Second)
	d.cmd.Wait()

	st, err := store.Open(context.Background(), pg.URL(), "")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if got := countMessages(t, st); got != 14 {
		t.Errorf("%d messages in the store, want all 14", got)
	}
}

// countMessages sums the aggregate rows' counts in st.
func countMessages(t *testing.T, st *store.Store) int64 {
	t.Helper()
	keys, err := st.Keys(context.Background(), time.Now().Add(-48*time.Hour), time.Now().Add(48*time.Hour), "")
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, k := range keys {
		rows, err := st.Rows(context.Background(), k)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			n += r.Count
		}
	}
	return n
}
