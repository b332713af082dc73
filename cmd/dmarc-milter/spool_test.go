package main

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dmarc-milter/dmarc-milter/report/outbox"
)

// The spool commands, run beside a daemon whose relay is down: list (text
// and JSON), show, retry and drop, and a clear exit status for an unknown
// report.
func TestSpoolCommands(t *testing.T) {
	dnsSrv, bin := daemonPrereqs(t)
	state := t.TempDir()
	conf := writeFile(t, fmt.Sprintf("state_dir = %q\nreport_smtp = \"127.0.0.1:9\"\nreport_min_backoff = \"1h\"\nreport_max_backoff = \"2h\"\naggregate_reports = false\n", state))
	sock := filepath.Join(t.TempDir(), "m.sock")
	d := startDaemon(t, bin, "serve", "--config", conf, "--listen", "unix:"+sock, "--dns", dnsSrv.Addr, "--authserv-id", "mx.cli.example", "--metrics-listen", "")
	d.waitFor("dmarc-milter ready")
	if code := spoof(t, "unix", sock); code != 550 {
		t.Fatalf("spoof: %d", code)
	}
	cli := func(args ...string) (string, string, int) {
		return runBin(bin, append(append([]string{"spool"}, args...), "--config", conf)...)
	}
	var entries []outbox.Entry
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		out, _, _ := cli("list", "--json")
		json.Unmarshal([]byte(out), &entries)
		if len(entries) == 2 && entries[0].Attempts > 0 && entries[1].Attempts > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("spool list: %s", out)
		}
	}
	e := entries[0]
	if e.Kind != "failure" || e.Domain != "pass.example" || e.LastError == "" || e.NextAttempt.Before(time.Now().Add(30*time.Minute)) {
		t.Errorf("entry %+v", e)
	}
	if out, _, code := cli("list"); code != 0 || !strings.Contains(out, e.ID) || !strings.Contains(out, "2 reports in ") {
		t.Errorf("list: %d %s", code, out)
	}
	if out, _, code := cli("show", e.ID); code != 0 || !strings.Contains(out, "Feedback-Type: auth-failure") || !strings.Contains(out, "To: "+e.To) {
		t.Errorf("show: %d %s", code, out)
	}
	if _, _, code := cli("retry", e.ID); code != 0 {
		t.Errorf("retry: %d", code)
	}
	out, _, _ := cli("show", e.ID, "--json")
	var shown outbox.Entry
	json.Unmarshal([]byte(out), &shown)
	if time.Since(shown.NextAttempt) > time.Minute || shown.Attempts != e.Attempts {
		t.Errorf("after retry: %+v", shown)
	}
	if _, _, code := cli("drop", entries[1].ID); code != 0 {
		t.Errorf("drop: %d", code)
	}
	if out, _, _ := cli("list", "--json"); strings.Contains(out, entries[1].ID) {
		t.Errorf("dropped report still listed: %s", out)
	}
	if _, errOut, code := cli("show", entries[1].ID); code != 1 || !strings.Contains(errOut, "no such report") {
		t.Errorf("show of a dropped report: %d %q", code, errOut)
	}
	if _, _, code := cli("drop", "../../etc/passwd"); code != 1 {
		t.Errorf("a path as ID: exit %d", code)
	}
}
