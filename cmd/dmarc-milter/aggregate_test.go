package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dmarc-milter/dmarc-milter/internal/pgtest"
	"github.com/dmarc-milter/dmarc-milter/internal/smtpsink"
	"github.com/dmarc-milter/dmarc-milter/report/aggregate"
	"github.com/dmarc-milter/dmarc-milter/report/store"
)

// storedRows returns the aggregate rows in the store (of domain, "" for
// every domain): each row's policy domain, data and count.
func storedRows(t *testing.T, dsn, stateDir, domain string) []store.Row {
	t.Helper()
	ctx := context.Background()
	st, err := store.Open(ctx, dsn, stateDir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	keys, err := st.Keys(ctx, time.Unix(0, 0), time.Now().Add(time.Hour), domain)
	if err != nil {
		t.Fatal(err)
	}
	var out []store.Row
	for _, k := range keys {
		rows, err := st.Rows(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, rows...)
	}
	return out
}

// recorded sums the aggregate rows of pass.example in the store.
func recorded(t *testing.T, dsn, stateDir string) int64 {
	t.Helper()
	var n int64
	for _, r := range storedRows(t, dsn, stateDir, "pass.example") {
		n += r.Count
	}
	return n
}

// SIGTERM loses no recorded message; kill -9 loses at most the messages of
// the last aggregate_flush_interval.
func TestAggregateDurability(t *testing.T) {
	dnsSrv, bin := daemonPrereqs(t)
	state := t.TempDir()
	sock := filepath.Join(t.TempDir(), "m.sock")
	args := []string{"serve", "--listen", "unix:" + sock, "--dns", dnsSrv.Addr, "--state-dir", state,
		"--failure-reports=false", "--authserv-id", "mx.cli.example"}

	d := startDaemon(t, bin, args...)
	d.waitFor("dmarc-milter ready")
	for range 20 {
		if code := spoof(t, "unix", sock); code != 550 {
			t.Fatalf("spoof: %d", code)
		}
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	if err := d.cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	if n := recorded(t, "", state); n != 20 {
		t.Fatalf("after SIGTERM %d messages recorded, want 20", n)
	}

	d = startDaemon(t, bin, args...)
	d.waitFor("dmarc-milter ready")
	for range 10 {
		spoof(t, "unix", sock)
	}
	time.Sleep(2500 * time.Millisecond) // two flushes (aggregate_flush_interval 1s)
	for range 5 {
		spoof(t, "unix", sock)
	}
	d.cmd.Process.Kill()
	d.cmd.Wait()
	n := recorded(t, "", state)
	if n < 30 || n > 35 {
		t.Errorf("after kill -9 %d messages recorded, want 30 (flushed) to 35", n)
	}
	t.Logf("kill -9 within the flush interval: %d of the last 5 messages lost", 35-n)

	// report aggregate writes the reports of a period from the store.
	out := t.TempDir()
	conf := writeFile(t, fmt.Sprintf("state_dir = %q\nreport_from = \"dmarc-reports@mx.cli.example\"\n", state))
	var stdout, stderr bytes.Buffer
	today := time.Now().UTC().Format("2006-01-02")
	tomorrow := time.Now().UTC().Add(24 * time.Hour).Format("2006-01-02")
	cmd := exec.Command(bin, "report", "aggregate", "--config", conf, "--from", today, "--until", tomorrow, "--domain", "pass.example", "--out", out)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("report aggregate: %v\n%s", err, stderr.String())
	}
	gz, _ := filepath.Glob(filepath.Join(out, "*!pass.example!*.xml.gz"))
	xmls, _ := filepath.Glob(filepath.Join(out, "*!pass.example!*.xml"))
	if len(gz) != 1 || len(xmls) != 1 {
		t.Fatalf("files %v %v; output %s %s", gz, xmls, stdout.String(), stderr.String())
	}
	data, _ := os.ReadFile(xmls[0])
	f, err := aggregate.Parse(data)
	if err != nil || len(f.Records) == 0 || int64(f.Records[0].Row.Count) != n {
		t.Errorf("written report: %+v %v, want %d messages", f, err, n)
	}
	cmd = exec.Command(bin, "report", "aggregate", "--config", conf, "--from", "yesterday", "--until", tomorrow)
	if err := cmd.Run(); err == nil {
		t.Error("a bad date was accepted")
	}
}

// The report of a period goes out once it ended: one gzip report to the
// domain's rua address, holding the messages of the period.
func TestAggregateSent(t *testing.T) {
	dnsSrv, bin := daemonPrereqs(t)
	sink := smtpsink.Start(t)
	sock := filepath.Join(t.TempDir(), "m.sock")
	conf := writeFile(t, "aggregate_interval = \"3s\"\naggregate_send_window = \"0s\"\nfailure_reports = false\n")
	d := startDaemon(t, bin, "serve", "--config", conf, "--listen", "unix:"+sock, "--dns", dnsSrv.Addr, "--state-dir", t.TempDir(),
		"--report-smtp", sink.Addr, "--report-from", "dmarc-reports@mx.cli.example", "--authserv-id", "mx.cli.example")
	d.waitFor("dmarc-milter ready")
	// Within one 3 s period.
	for time.Now().Unix()%3 == 2 {
		time.Sleep(50 * time.Millisecond)
	}
	for range 4 {
		spoof(t, "unix", sock)
	}
	msgs := sink.Wait(t, 1, 20*time.Second)
	time.Sleep(4 * time.Second) // no second report for that period
	var got int64
	for _, m := range sink.Messages() {
		if len(m.To) != 1 || m.To[0] != "dmarc@pass.example" {
			t.Errorf("report to %v", m.To)
		}
		f := reportOf(t, m.Data)
		for _, r := range f.Records {
			got += int64(r.Row.Count)
		}
	}
	if got != 4 || len(msgs) == 0 {
		t.Errorf("%d messages reported in %d reports, want 4", got, len(sink.Messages()))
	}
}

// reportOf returns the aggregate report attached to a message.
func reportOf(t *testing.T, data []byte) *aggregate.Feedback {
	t.Helper()
	_, x, err := aggregate.ReadMessage(data)
	if err == nil {
		var f *aggregate.Feedback
		if f, err = aggregate.Parse(x); err == nil {
			return f
		}
	}
	t.Fatalf("%v in:\n%s", err, data)
	return nil
}

// A fleet of two daemons on one PostgreSQL store: one report per domain and
// period with both hosts' messages; the host that sends it killed in the
// middle of the delivery and restarted, still exactly one report.
func TestAggregateFleet(t *testing.T) {
	dnsSrv, bin := daemonPrereqs(t)
	dsn := pgtest.Start(t)
	sink := smtpsink.Start(t)
	sink.HangData()
	conf := writeFile(t, fmt.Sprintf("aggregate_interval = \"4s\"\naggregate_send_window = \"0s\"\nfailure_reports = false\nstore = %q\n", dsn))
	var socks, states []string
	start := func(i int) *runningDaemon {
		d := startDaemon(t, bin, "serve", "--config", conf, "--listen", "unix:"+socks[i], "--dns", dnsSrv.Addr, "--state-dir", states[i],
			"--report-smtp", sink.Addr, "--report-from", "dmarc-reports@mx.cli.example", "--authserv-id", "mx.cli.example")
		d.waitFor("dmarc-milter ready")
		return d
	}
	var ds []*runningDaemon
	for i := range 2 {
		socks = append(socks, filepath.Join(t.TempDir(), "m.sock"))
		states = append(states, t.TempDir())
		ds = append(ds, start(i))
	}
	for time.Now().Unix()%4 >= 2 {
		time.Sleep(50 * time.Millisecond)
	}
	for i := range 5 {
		spoof(t, "unix", socks[i%2]) // 3 to the first host, 2 to the second
	}
	// One host reaches DATA and hangs there: kill it mid-send.
	for deadline := time.Now().Add(20 * time.Second); sink.InData() == 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no report delivery started")
		}
	}
	// The log is written in batches (at most 100 ms late).
	sender := -1
	for deadline := time.Now().Add(5 * time.Second); sender < 0 && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		for i, d := range ds {
			if strings.Contains(strings.Join(d.logSoFar(), "\n"), "aggregate report spooled") {
				sender = i
			}
		}
	}
	if sender < 0 {
		t.Fatal("no host logged spooling the report")
	}
	ds[sender].cmd.Process.Kill()
	ds[sender].cmd.Wait()
	sink.Release()
	// Restarted, it delivers what it spooled.
	ds[sender] = start(sender)
	sink.Wait(t, 1, 30*time.Second)
	time.Sleep(6 * time.Second) // a second copy would come now
	msgs := sink.Messages()
	if len(msgs) != 1 {
		t.Fatalf("%d reports, want exactly one", len(msgs))
	}
	f := reportOf(t, msgs[0].Data)
	var n int64
	for _, r := range f.Records {
		n += int64(r.Row.Count)
	}
	if n != 5 {
		t.Errorf("the report holds %d messages, want both hosts' 5", n)
	}
}

// TestAggregateStoreDownAtStart: a daemon that starts while its
// PostgreSQL is down checks mail as usual, keeps the rows of that time in
// memory, and writes them once the database is up; its metrics say the
// store is down, then up. The log says each change once.
func TestAggregateStoreDownAtStart(t *testing.T) {
	dnsSrv, bin := daemonPrereqs(t)
	pg := pgtest.New(t)
	// A known sending network from an earlier run, in the store, which is
	// then stopped: the daemon cannot load it at start.
	pg.Start()
	seed, err := store.Open(context.Background(), pg.URL(), "")
	if err != nil {
		t.Fatal(err)
	}
	if err := seed.AddSenders(context.Background(), []store.Sender{{Org: "list.example", Network: "198.51.100.0/24", Last: time.Now()}}); err != nil {
		t.Fatal(err)
	}
	seed.Close()
	pg.Stop()
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	metricsAddr := l.Addr().String()
	l.Close()
	conf := writeFile(t, fmt.Sprintf("aggregate_flush_interval = \"200ms\"\nfailure_reports = false\nstore = %q\n", pg.URL()))
	sock := filepath.Join(t.TempDir(), "m.sock")
	d := startDaemon(t, bin, "serve", "--config", conf, "--listen", "unix:"+sock, "--dns", dnsSrv.Addr, "--state-dir", t.TempDir(),
		"--report-smtp", "127.0.0.1:9", "--authserv-id", "mx.cli.example", "--metrics-listen", metricsAddr)
	d.waitFor("the store does not answer at start")
	d.waitFor("dmarc-milter ready")
	for range 6 {
		if code := spoof(t, "unix", sock); code != 550 {
			t.Fatalf("spoof with the store down: %d, want 550 as always", code)
		}
	}
	scrape := func() string {
		resp, err := http.Get("http://" + metricsAddr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	d.waitFor("aggregate report store unavailable")
	if m := scrape(); !strings.Contains(m, "dmarc_milter_store_up 0") || !strings.Contains(m, "dmarc_milter_aggregate_messages_recorded_total 6") {
		t.Errorf("metrics with the store down:\n%s", grepLines(m, "dmarc_milter_store_up", "dmarc_milter_aggregate"))
	}

	pg.Start()
	d.waitFor("aggregate report store back")
	// The known sending networks are loaded once the store answers.
	// (every 10 s, as the store's own retries allow: within 45 s).
	if l := d.waitAny("known sending networks loaded: the store answers again", 45*time.Second); !strings.Contains(l, `"pairs":1,`) {
		t.Errorf("the known sending networks loaded late: %s, want the one pair in the store", l)
	}
	if m := scrape(); !strings.Contains(m, "dmarc_milter_store_up 1") {
		t.Errorf("metrics with the store back:\n%s", grepLines(m, "dmarc_milter_store_up"))
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	d.waitFor("stopped")
	d.cmd.Wait()
	if n := strings.Count(strings.Join(d.logSoFar(), "\n"), "aggregate report store unavailable"); n != 1 {
		t.Errorf("the outage is logged %d times, want once", n)
	}
	st, err := store.Open(context.Background(), pg.URL(), "")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if n := countMessages(t, st); n != 6 {
		t.Errorf("%d messages in the store, want the 6 of the outage", n)
	}
}

// grepLines returns the lines of s that contain any of subs.
func grepLines(s string, subs ...string) string {
	var out []string
	for _, line := range strings.Split(s, "\n") {
		for _, sub := range subs {
			if strings.Contains(line, sub) {
				out = append(out, line)
				break
			}
		}
	}
	return strings.Join(out, "\n")
}
