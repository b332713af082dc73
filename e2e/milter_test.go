//go:build e2e

package e2e

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// buildMilter builds ./cmd/dmarc-milter into dir, so the stage always runs
// the code of the checkout. E2E_MILTER_BIN names a binary to use instead.
func buildMilter(t testing.TB, dir string) string {
	t.Helper()
	if bin := os.Getenv("E2E_MILTER_BIN"); bin != "" {
		return bin
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to build dmarc-milter: %v", err)
	}
	bin := filepath.Join(dir, "dmarc-milter")
	cmd := exec.Command(gobin, "build", "-o", bin, "github.com/dmarc-milter/dmarc-milter/cmd/dmarc-milter")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/dmarc-milter: %v\n%s", err, out)
	}
	return bin
}

// milterProc is a running dmarc-milter and what it logged on stderr.
type milterProc struct {
	cmd     *exec.Cmd
	pidFile string
	log     *lineLog
	exited  chan struct{}
	waitErr error
}

// milterArgs are the daemon's command line apart from the binary.
type milterArgs struct {
	listen     string // unix:PATH or inet:127.0.0.1:PORT
	dns        string // HOST:PORT of the test DNS server
	config     string // TOML file
	stateDir   string
	reportSMTP string
}

// startMilter starts the daemon, records its PID in pidFile (for e2e/run's
// trap, should this process die before its cleanups run) and waits for its
// "ready" log line.
func startMilter(t testing.TB, bin, pidFile string, a milterArgs) *milterProc {
	t.Helper()
	cmd := exec.Command(bin, "serve",
		"--config", a.config,
		"--listen", a.listen,
		"--dns", a.dns,
		"--authserv-id", authservID,
		"--log-format", "json",
		"--state-dir", a.stateDir,
		"--report-smtp", a.reportSMTP,
		"--report-from", "dmarc-reports@"+authservID,
		"--metrics-listen", "", // the packaged default port may be taken by another daemon
	)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	// The log is also kept in a file next to the PID file, for a look
	// after the run (E2E_WORKDIR given) or while it hangs.
	logFile, err := os.Create(strings.TrimSuffix(pidFile, ".pid") + ".log")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logFile.Close() })
	m := &milterProc{cmd: cmd, pidFile: pidFile, log: &lineLog{}, exited: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", bin, err)
	}
	copied := make(chan struct{})
	go func() {
		m.log.readFrom(io.TeeReader(stderr, logFile))
		close(copied)
	}()
	go func() {
		<-copied // Wait must not run before the pipe is drained.
		m.waitErr = cmd.Wait()
		close(m.exited)
	}()
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.stop(t) })

	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(m.log.String(), `"dmarc-milter ready"`) {
		select {
		case <-m.exited:
			t.Fatalf("dmarc-milter exited at start (%v); its log:\n%s", m.waitErr, m.log)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("dmarc-milter not ready after 15s; its log:\n%s", m.log)
		}
	}
	return m
}

// stop sends SIGTERM (a graceful shutdown) and waits; after 10 seconds it
// kills the process. It reports the exit.
func (m *milterProc) stop(t testing.TB) error {
	select {
	case <-m.exited:
		return m.waitErr
	default:
	}
	m.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-m.exited:
	case <-time.After(10 * time.Second):
		m.cmd.Process.Kill()
		<-m.exited
		os.Remove(m.pidFile)
		return fmt.Errorf("dmarc-milter did not stop within 10s of SIGTERM; killed")
	}
	os.Remove(m.pidFile)
	return m.waitErr
}

// verdict is the daemon's one log line per judged message.
type verdict struct {
	Message         string   `json:"message"`
	QueueID         string   `json:"queue_id"`
	ClientIP        string   `json:"client_ip"`
	Helo            string   `json:"helo"`
	MailFrom        string   `json:"mail_from"`
	FromDomain      string   `json:"from_domain"`
	SPF             string   `json:"spf"`
	DKIM            []string `json:"dkim"`
	DMARC           string   `json:"dmarc"`
	Policy          string   `json:"policy"`
	Action          string   `json:"action"`
	RemovedForgedAR int      `json:"removed_forged_ar"`
	FromError       string   `json:"from_error"`
	Enforced        string   `json:"enforced"`
	PolicyOverride  string   `json:"policy_override"`
	OverrideComment string   `json:"override_comment"`
}

// verdictFor waits for the verdict line of the message Postfix queued as
// queueID.
func (m *milterProc) verdictFor(t testing.TB, queueID string) verdict {
	t.Helper()
	var found verdict
	ok := poll(10*time.Second, func() bool {
		for _, line := range m.log.lines() {
			var v verdict
			if json.Unmarshal([]byte(line), &v) == nil && v.Message == "verdict" && v.QueueID == queueID {
				found = v
				return true
			}
		}
		return false
	})
	if !ok {
		t.Fatalf("dmarc-milter logged no verdict for queue ID %s", queueID)
	}
	return found
}

// lineLog collects a process's output by lines, for concurrent readers.
type lineLog struct {
	mu sync.Mutex
	ls []string
}

func (l *lineLog) readFrom(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		l.mu.Lock()
		l.ls = append(l.ls, sc.Text())
		l.mu.Unlock()
	}
	if err := sc.Err(); err != nil && !errors.Is(err, os.ErrClosed) {
		l.mu.Lock()
		l.ls = append(l.ls, "(reading log: "+err.Error()+")")
		l.mu.Unlock()
	}
}

func (l *lineLog) lines() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.ls...)
}

// mark returns a position for since.
func (l *lineLog) mark() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.ls)
}

// since returns the lines logged after mark.
func (l *lineLog) since(mark int) string {
	ls := l.lines()
	if mark > len(ls) {
		mark = len(ls)
	}
	return strings.Join(ls[mark:], "\n")
}

func (l *lineLog) String() string { return l.since(0) }

// poll calls cond every 50ms until it is true or timeout passes.
func poll(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}
