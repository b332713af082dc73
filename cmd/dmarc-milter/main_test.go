package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	gomilter "github.com/emersion/go-milter"

	"github.com/dmarc-milter/dmarc-milter/internal/dnstest"
	"github.com/dmarc-milter/dmarc-milter/internal/smtpsink"
)

func TestParseListen(t *testing.T) {
	tests := []struct {
		in      string
		network string
		addr    string
		err     bool
	}{
		{"unix:/run/dmarc-milter/dmarc-milter.sock", "unix", "/run/dmarc-milter/dmarc-milter.sock", false},
		{"local:/var/spool/postfix/dmarc/sock", "unix", "/var/spool/postfix/dmarc/sock", false},
		{"inet:127.0.0.1:8893", "tcp", "127.0.0.1:8893", false},
		{"inet:8893@127.0.0.1", "tcp", "127.0.0.1:8893", false},
		{"inet:8893@[::1]", "tcp", "[::1]:8893", false},
		{"inet6:[::1]:8893", "tcp", "[::1]:8893", false},
		{"inet::8893", "tcp", "127.0.0.1:8893", false},
		{"unix:relative.sock", "", "", true},
		{"inet:127.0.0.1", "", "", true},
		{"inet:127.0.0.1:99999", "", "", true},
		{"tcp", "", "", true},
		{"udp:127.0.0.1:53", "", "", true},
	}
	for _, tc := range tests {
		got, err := parseListen(tc.in)
		if (err != nil) != tc.err {
			t.Errorf("%q: err = %v, want error %v", tc.in, err, tc.err)
			continue
		}
		if !tc.err && (got.Network != tc.network || got.Address != tc.addr) {
			t.Errorf("%q = %+v, want %s %s", tc.in, got, tc.network, tc.addr)
		}
	}
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "dmarc-milter.toml")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// Bad configuration stops start-up with a one-line error naming the file,
// line and key, and exit status 2.
func TestConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		file string
		want string // regexp after the path
	}{
		{"unknown key", "listen = \"inet:127.0.0.1:8893\"\n\nbogus_key = 1\n", `:3: bogus_key: unknown key$`},
		{"bad choice", "monitor = false\ntemperror = \"sometimes\"\n", `:2: temperror: .*invalid value "sometimes" \(want tempfail or accept\)`},
		{"bad duration", "dns_timeout = \"soon\"\n", `:1: dns_timeout: .*invalid duration`},
		{"bad type", "monitor = \"yes\"\n", `:1: monitor: the value is a TOML string; want true or false, without quotes$`},
		{"list for a count", "max_dkim_signatures = [5]\n", `:1: max_dkim_signatures: the value is a TOML array; want a whole number, without quotes$`},
		{"bad report_from", "report_from = \"not an address\"\n", `:1: report_from: "not an address" is not an e-mail address$`},
		{"bad network", "trusted_networks = [\"10.0.0.0/8\", \"not-a-net\"]\n", `:1: trusted_networks: .*invalid network`},
		{"bad listen", "listen = \"udp:1.2.3.4:5\"\n", `:1: listen: .*unknown type`},
		{"syntax", "listen = \n", `:1`},
		{"pprof not on loopback", "pprof_listen = \"0.0.0.0:6060\"\n", `:1: pprof_listen: .*not a loopback address`},
		{"negative limit", "monitor = false\nfailure_report_global = -7\n", `:2: failure_report_global: must be at least 1, not -7`},
		{"zero limit", "failure_report_per_destination = 0\n", `:1: failure_report_per_destination: must be at least 1`},
		{"zero window", "failure_report_dedup_window = \"0s\"\n", `:1: failure_report_dedup_window: must be longer than 0`},
		{"zero timeout", "check_timeout = \"0s\"\n", `:1: check_timeout: must be longer than 0`},
		{"negative failure ttl", "dns_failure_ttl = \"-1s\"\n", `:1: dns_failure_ttl: .*invalid duration`},
		{"backoffs reversed", "report_min_backoff = \"2h\"\nreport_max_backoff = \"1h\"\n", `:2: report_max_backoff: .*shorter than report_min_backoff`},
		{"reject_text placeholder typo", "reject_text = \"DMARC policy of {domian} says reject\"\n", `:1: reject_text: unknown placeholder "\{domian\}"`},
		{"reject_text line break", "reject_text = \"rejected\\r\\n250 ok\"\n", `:1: reject_text: holds a character`},
		{"no signatures", "max_dkim_signatures = 0\n", `:1: max_dkim_signatures: must be at least 1`},
		{"bad reject_policy", "reject_policy = \"sometimes\"\n", `:1: reject_policy: .*want evidence or always or never`},
		{"bad trusted forwarder", "trusted_forwarders = [\"198.51.100.0/24\", \"not a host\"]\n", `:1: trusted_forwarders: .*neither a network nor a domain name`},
		{"bad trusted_forwarder_action", "trusted_forwarder_action = \"deliver\"\n", `:1: trusted_forwarder_action: .*want accept or quarantine`},
		{"negative gomaxprocs", "gomaxprocs = -1\n", `:1: gomaxprocs: must be at least 0, not -1`},
		{"bad ARC sealer", "trusted_arc_sealers = [\"localhost\"]\n", `:1: trusted_arc_sealers: "localhost" is not a domain name`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := writeFile(t, tc.file)
			var stderr bytes.Buffer
			code := run([]string{"serve", "--config", path, "--dns", "127.0.0.1:1"}, io.Discard, &stderr)
			if code != 2 {
				t.Errorf("exit %d, want 2 (stderr %q)", code, stderr.String())
			}
			out := strings.TrimSuffix(stderr.String(), "\n")
			if strings.Contains(out, "\n") {
				t.Errorf("error is not one line: %q", out)
			}
			if !strings.Contains(out, path) || !regexp.MustCompile(regexp.QuoteMeta(path)+tc.want).MatchString(out) {
				t.Errorf("error %q does not match %s%s", out, path, tc.want)
			}
		})
	}

	t.Run("unreadable file", func(t *testing.T) {
		var stderr bytes.Buffer
		if code := run([]string{"serve", "--config", "/nonexistent/dm.toml"}, io.Discard, &stderr); code != 2 {
			t.Errorf("exit %d, want 2", code)
		}
		if !strings.Contains(stderr.String(), "/nonexistent/dm.toml") {
			t.Errorf("error does not name the file: %q", stderr.String())
		}
	})
	t.Run("bad flag value", func(t *testing.T) {
		var stderr bytes.Buffer
		if code := run([]string{"serve", "--temperror", "maybe"}, io.Discard, &stderr); code != 2 {
			t.Errorf("exit %d, want 2", code)
		}
	})
}

func TestFlagsOverrideFile(t *testing.T) {
	path := writeFile(t, `listen = "unix:/tmp/from-file.sock"
dns = ["192.0.2.1:53"]
authserv_id = "file.example"
temperror = "accept"
trusted_networks = ["10.0.0.0/8"]
quarantine = "mark"
check_timeout = "7s"
`)
	cfg, err := parseFlags([]string{"--config", path, "--listen", "inet:8894@127.0.0.1", "--dns", "127.0.0.1:5300,[::1]:5300",
		"--temperror", "tempfail", "--state-dir", "/tmp/st", "--report-smtp", "127.0.0.1:2526", "--report-from", "dmarc@x.example"}, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen.String() != "inet:127.0.0.1:8894" || strings.Join(cfg.DNS, ",") != "127.0.0.1:5300,[::1]:5300" ||
		cfg.TempError.Value != "tempfail" || cfg.AuthservID != "file.example" || cfg.Quarantine.Value != "mark" ||
		cfg.StateDir != "/tmp/st" || cfg.ReportSMTP != "127.0.0.1:2526" || cfg.ReportFrom != "dmarc@x.example" ||
		time.Duration(cfg.CheckTimeout) != 7*time.Second {
		t.Errorf("merged config wrong: %+v", cfg)
	}
	if len(cfg.TrustedNetworks) != 1 || cfg.TrustedNetworks[0].String() != "10.0.0.0/8" {
		t.Errorf("trusted_networks from the file should replace the default: %v", cfg.TrustedNetworks)
	}
}

func TestDefaults(t *testing.T) {
	cfg, err := parseFlags(nil, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	host := fqdn(hostName(), lookupCNAME)
	if cfg.AuthservID != host || cfg.TempError.Value != "tempfail" || cfg.Listen.String() != "inet:127.0.0.1:8893" ||
		len(cfg.TrustedNetworks) != 2 || !cfg.RejectBadFrom || cfg.Quarantine.Value != "hold" {
		t.Errorf("defaults: %+v", cfg)
	}
}

// The example configuration in packaging lists every key with its default.
func TestPackagedConfigMatchesDefaults(t *testing.T) {
	path := filepath.Join("..", "..", "packaging", "dmarc-milter.toml")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Skipf("no packaged config yet: %v", err)
	}
	// Uncomment every "# key = value" line and load it.
	var b strings.Builder
	for _, line := range strings.Split(string(data), "\n") {
		if m := regexp.MustCompile(`^#\s?([a-z_]+ = .*)$`).FindStringSubmatch(line); m != nil {
			b.WriteString(m[1] + "\n")
		}
	}
	// Every key of Config is documented in the file.
	ct := reflect.TypeOf(Config{})
	for i := range ct.NumField() {
		key := ct.Field(i).Tag.Get("toml")
		if !regexp.MustCompile(`(?m)^#\s+` + key + ` = `).Match(data) {
			t.Errorf("packaged config does not list %q", key)
		}
	}
	uncommented := writeFile(t, b.String())
	cfg := newConfig("HOST")
	if err := loadConfigFile(uncommented, &cfg); err != nil {
		t.Fatalf("packaged config does not load: %v", err)
	}
	def := newConfig("HOST")
	if fmt.Sprintf("%+v", stripChoices(cfg)) != fmt.Sprintf("%+v", stripChoices(def)) {
		t.Errorf("packaged config defaults differ from built-in ones:\nfile:    %+v\nbuiltin: %+v", cfg, def)
	}
}

func stripChoices(c Config) Config {
	for _, ch := range []*Choice{&c.Quarantine, &c.TempError, &c.LogFormat, &c.LogLevel, &c.ReportStartTLS, &c.FailureReportInclude} {
		ch.allowed = nil
	}
	return c
}

// daemonPrereqs starts a DNS server for the test zone and builds the
// daemon, for the tests that run the real binary (skipped with -short).
func daemonPrereqs(t *testing.T) (*dnstest.Server, string) {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the daemon")
	}
	zone, err := dnstest.LoadZoneFile("../../testdata/zones/example.zone")
	if err != nil {
		t.Fatal(err)
	}
	return dnstest.NewServer(t, zone), buildDaemon(t)
}

// wantContains reports each of want that out does not contain.
func wantContains(t *testing.T, label, out string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("%s: output lacks %q:\n%s", label, w, out)
		}
	}
}

// runBin runs the binary with args and returns its output and exit status.
func runBin(bin string, args ...string) (stdout, stderr string, code int) {
	var out, errb bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if ee, ok := cmd.Run().(*exec.ExitError); ok {
		code = ee.ExitCode()
	}
	return out.String(), errb.String(), code
}

// buildDaemon builds the real binary once per test run.
func buildDaemon(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "dmarc-milter")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("go build: %v", err)
	}
	return bin
}

// The daemon runs on built-in defaults with no config file, answers milter
// connections on a unix socket (replacing a stale one, with the configured
// mode) and drains and exits 0 on SIGTERM.
func TestServeUnixSocketAndSIGTERM(t *testing.T) {
	dnsSrv, bin := daemonPrereqs(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "milter.sock")

	// A stale socket left by a killed daemon.
	stale, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()

	pl, _ := net.Listen("tcp", "127.0.0.1:0")
	pprofAddr := pl.Addr().String()
	pl.Close()
	d := startDaemon(t, bin, "serve", "--listen", "unix:"+sock, "--dns", dnsSrv.Addr, "--authserv-id", "mx.cli.example", "--state-dir", t.TempDir(),
		"--log-format", "json", "--pprof-listen", pprofAddr)
	// gomaxprocs = 2 by default, never more than the CPUs there are.
	if ready := d.waitFor("dmarc-milter ready"); os.Getenv("GOMAXPROCS") == "" &&
		!strings.Contains(ready, fmt.Sprintf(`"gomaxprocs":%d`, min(2, runtime.NumCPU()))) {
		t.Errorf("ready line does not say gomaxprocs %d: %s", min(2, runtime.NumCPU()), ready)
	}
	if resp, err := http.Get("http://" + pprofAddr + "/debug/pprof/goroutine?debug=1"); err != nil || resp.StatusCode != 200 {
		t.Errorf("pprof listener: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}

	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o660 || fi.Mode()&os.ModeSocket == 0 {
		t.Errorf("socket mode: %v %v", fi.Mode(), err)
	}
	if code := spoof(t, "unix", sock); code != 550 {
		t.Fatalf("spoofed message: %d, want 550", code)
	}
	d.waitFor(`"action":"reject"`)

	// A second daemon on the same live socket refuses to start.
	var out bytes.Buffer
	second := exec.Command(bin, "serve", "--listen", "unix:"+sock, "--dns", dnsSrv.Addr, "--state-dir", t.TempDir())
	second.Stderr = &out
	if err := second.Run(); err == nil || !strings.Contains(out.String(), "in use") {
		t.Errorf("second daemon on a live socket: %v %q", err, out.String())
	}

	d.cmd.Process.Signal(syscall.SIGTERM)
	d.waitFor("stopped")
	if err := d.cmd.Wait(); err != nil {
		t.Errorf("exit after SIGTERM: %v", err)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left behind: %v", err)
	}
}

// runningDaemon is a running dmarc-milter binary whose log is read line by line.
type runningDaemon struct {
	t     *testing.T
	cmd   *exec.Cmd
	lines chan string
	log   []string
}

func startDaemon(t *testing.T, bin string, args ...string) *runningDaemon {
	t.Helper()
	d := &runningDaemon{t: t, cmd: exec.Command(bin, args...), lines: make(chan string, 1000)}
	stderr, _ := d.cmd.StderrPipe()
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			d.lines <- sc.Text()
		}
		close(d.lines)
	}()
	t.Cleanup(func() { d.cmd.Process.Kill(); d.cmd.Wait() })
	return d
}

// logSoFar reads what the daemon has logged so far, without waiting.
func (d *runningDaemon) logSoFar() []string {
	for {
		select {
		case l, ok := <-d.lines:
			if !ok {
				return d.log
			}
			d.log = append(d.log, l)
		default:
			return d.log
		}
	}
}

// waitFor reads the log until a line contains substr.
func (d *runningDaemon) waitFor(substr string) string {
	d.t.Helper()
	return d.waitWithin(substr, 10*time.Second)
}

// waitAny returns the first line logged so far, or read within the time
// given, that contains substr: for a line whose order with others is not
// fixed.
func (d *runningDaemon) waitAny(substr string, within time.Duration) string {
	d.t.Helper()
	for _, l := range d.logSoFar() {
		if strings.Contains(l, substr) {
			return l
		}
	}
	return d.waitWithin(substr, within)
}

func (d *runningDaemon) waitWithin(substr string, within time.Duration) string {
	d.t.Helper()
	deadline := time.After(within)
	for {
		select {
		case l, ok := <-d.lines:
			if !ok {
				d.t.Fatalf("daemon exited before logging %q:\n%s", substr, strings.Join(d.log, "\n"))
			}
			d.log = append(d.log, l)
			if strings.Contains(l, substr) {
				return l
			}
		case <-deadline:
			d.t.Fatalf("no %q in log:\n%s", substr, strings.Join(d.log, "\n"))
		}
	}
}

// spoof sends a message claiming pass.example from an address outside its
// SPF record and returns the SMTP code the milter answered.
func spoof(t *testing.T, network, addr string) int {
	t.Helper()
	c := gomilter.NewClientWithOptions(network, addr, gomilter.ClientOptions{
		ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second,
		ActionMask: gomilter.OptAddHeader | gomilter.OptChangeHeader | gomilter.OptQuarantine,
	})
	s, err := c.Session()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.Conn("h", gomilter.FamilyInet, 25, "203.0.113.66")
	s.Helo("x.example")
	s.Mail("bob@pass.example", nil)
	s.HeaderField("From", "bob@pass.example")
	s.HeaderEnd()
	_, act, err := s.End()
	if err != nil {
		t.Fatal(err)
	}
	if act.Code == gomilter.ActReplyCode {
		return act.SMTPCode
	}
	return 250
}

// SIGHUP reloads the policy without dropping connections; a bad file keeps
// the running configuration and says why.
func TestReload(t *testing.T) {
	dnsSrv, bin := daemonPrereqs(t)
	sock := filepath.Join(t.TempDir(), "m.sock")
	conf := writeFile(t, "monitor = false\n")
	d := startDaemon(t, bin, "serve", "--config", conf, "--listen", "unix:"+sock, "--dns", dnsSrv.Addr, "--state-dir", t.TempDir())
	d.waitFor("dmarc-milter ready")
	if code := spoof(t, "unix", sock); code != 550 {
		t.Fatalf("before reload: %d, want 550", code)
	}

	// An open connection survives the reload.
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	os.WriteFile(conf, []byte("monitor = true\ndns_timeout = \"3s\"\n"), 0o644)
	d.cmd.Process.Signal(syscall.SIGHUP)
	if l := d.waitFor("configuration reloaded"); !strings.Contains(l, `"need_restart":["dns_timeout"]`) {
		t.Errorf("reload log does not name the setting needing a restart: %s", l)
	}
	if code := spoof(t, "unix", sock); code != 250 {
		t.Errorf("after reload to monitor mode: %d, want 250", code)
	}
	// need_restart compares with what is running, not with the previous
	// reload: the same file again still needs the restart...
	d.cmd.Process.Signal(syscall.SIGHUP)
	if l := d.waitFor("configuration reloaded"); !strings.Contains(l, `"need_restart":["dns_timeout"]`) {
		t.Errorf("second reload of the same file forgot that dns_timeout needs a restart: %s", l)
	}
	// ...and going back to the running value needs none.
	os.WriteFile(conf, []byte("monitor = true\n"), 0o644)
	d.cmd.Process.Signal(syscall.SIGHUP)
	if l := d.waitFor("configuration reloaded"); strings.Contains(l, "need_restart") {
		t.Errorf("reverting to the running dns_timeout still warns: %s", l)
	}

	os.WriteFile(conf, []byte("monitor = maybe\n"), 0o644)
	d.cmd.Process.Signal(syscall.SIGHUP)
	if l := d.waitFor("reload failed"); !strings.Contains(l, conf+":1: monitor") {
		t.Errorf("reload failure does not name file, line and key: %s", l)
	}
	if code := spoof(t, "unix", sock); code != 250 {
		t.Errorf("after a bad reload the running configuration must stay: %d, want 250", code)
	}
	if _, err := c.Write([]byte{0, 0, 0, 1, 'Q'}); err != nil {
		t.Errorf("connection opened before the reloads was dropped: %v", err)
	}
}

func TestVersion(t *testing.T) {
	if code := run([]string{"--version"}, io.Discard, os.Stderr); code != 0 {
		t.Errorf("--version exit %d", code)
	}
	if code := run([]string{"frobnicate"}, io.Discard, &bytes.Buffer{}); code != 2 {
		t.Errorf("unknown command exit %d, want 2", code)
	}
}

// A failure report spooled while the relay is down survives kill -9 and is
// delivered by the next start; the milter's reply never waits for it.
func TestFailureReportSurvivesKill9(t *testing.T) {
	dnsSrv, bin := daemonPrereqs(t)
	sink := smtpsink.Start(t)
	sink.Stop() // the relay is down
	state := t.TempDir()
	sock := filepath.Join(t.TempDir(), "m.sock")
	conf := writeFile(t, "report_min_backoff = \"200ms\"\nreport_max_backoff = \"1s\"\n")
	args := []string{"serve", "--config", conf, "--listen", "unix:" + sock, "--dns", dnsSrv.Addr,
		"--state-dir", state, "--report-smtp", sink.Addr, "--report-from", "dmarc-reports@mx.cli.example",
		"--authserv-id", "mx.cli.example"}

	d := startDaemon(t, bin, args...)
	d.waitFor("dmarc-milter ready")
	start := time.Now()
	if code := spoof(t, "unix", sock); code != 550 {
		t.Fatalf("spoof: %d, want 550", code)
	}
	if elapsed := time.Since(start); elapsed > 2*time.Second {
		t.Errorf("the milter reply waited %v for the dead relay", elapsed)
	}
	spool := filepath.Join(state, "spool")
	var files []string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		files, _ = filepath.Glob(filepath.Join(spool, "*"))
		if len(files) >= 2 {
			break
		}
	}
	if len(files) < 2 {
		t.Fatalf("reports not spooled in %s: %v\n%s", spool, files, strings.Join(d.log, "\n"))
	}
	d.waitFor("relay") // a failed delivery attempt was logged
	d.cmd.Process.Signal(syscall.SIGKILL)
	d.cmd.Wait()

	sink.Restart(t)
	d2 := startDaemon(t, bin, args...)
	d2.waitFor("dmarc-milter ready")
	msgs := sink.Wait(t, 2, 15*time.Second)
	var rcpts []string
	for _, m := range msgs {
		rcpts = append(rcpts, m.To...)
		if m.From != "dmarc-reports@mx.cli.example" {
			t.Errorf("envelope sender %q", m.From)
		}
		for _, want := range []string{"Subject: DMARC failure report for pass.example from 203.0.113.66",
			"report-type=feedback-report", "Feedback-Type: auth-failure", "Auth-Failure: dmarc",
			"Source-IP: 203.0.113.66", "Reported-Domain: pass.example", "Delivery-Result: reject", "Auto-Submitted: auto-generated"} {
			if !strings.Contains(string(m.Data), want) {
				t.Errorf("report lacks %q:\n%s", want, m.Data)
			}
		}
	}
	slices.Sort(rcpts)
	if strings.Join(rcpts, ",") != "dmarc-failures@pass.example,failures@reports.example" {
		t.Errorf("report recipients %v", rcpts)
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if files, _ = filepath.Glob(filepath.Join(spool, "*")); len(files) == 0 {
			break
		}
	}
	if len(files) != 0 {
		t.Errorf("delivered reports still in the spool: %v", files)
	}
}

// TestSIGTERMWithHungRelay: the report relay stops answering in the middle
// of DATA. SIGTERM must still end the daemon within shutdown_timeout (the
// SMTP client's own timeout is minutes), and the report stays spooled for
// the next start.
func TestSIGTERMWithHungRelay(t *testing.T) {
	dnsSrv, bin := daemonPrereqs(t)
	sink := smtpsink.Start(t)
	sink.HangData()
	state := t.TempDir()
	sock := filepath.Join(t.TempDir(), "m.sock")
	conf := writeFile(t, "shutdown_timeout = \"2s\"\n")
	d := startDaemon(t, bin, "serve", "--config", conf, "--listen", "unix:"+sock, "--dns", dnsSrv.Addr,
		"--state-dir", state, "--report-smtp", sink.Addr, "--authserv-id", "mx.cli.example")
	d.waitFor("dmarc-milter ready")
	if code := spoof(t, "unix", sock); code != 550 {
		t.Fatalf("spoof: %d, want 550", code)
	}
	for deadline := time.Now().Add(10 * time.Second); sink.InData() == 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no delivery reached DATA:\n%s", strings.Join(d.log, "\n"))
		}
	}
	start := time.Now()
	d.cmd.Process.Signal(syscall.SIGTERM)
	exited := make(chan error, 1)
	go func() { exited <- d.cmd.Wait() }()
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("exit: %v", err)
		}
	case <-time.After(6 * time.Second):
		t.Fatalf("still running %v after SIGTERM with shutdown_timeout 2s", time.Since(start))
	}
	t.Logf("stopped %v after SIGTERM", time.Since(start))
	if files, _ := filepath.Glob(filepath.Join(state, "spool", "*.report")); len(files) == 0 {
		t.Error("the report whose delivery was cut short is no longer spooled")
	}
}

// TestFailureReportSurvivesKill9AfterReply: the daemon is killed the
// moment the MTA has its answer. The reports of that message were made
// durable before the answer, so the next start delivers them.
func TestFailureReportSurvivesKill9AfterReply(t *testing.T) {
	dnsSrv, bin := daemonPrereqs(t)
	sink := smtpsink.Start(t)
	sink.Stop() // nothing is delivered before the kill
	state := t.TempDir()
	sock := filepath.Join(t.TempDir(), "m.sock")
	args := []string{"serve", "--listen", "unix:" + sock, "--dns", dnsSrv.Addr, "--state-dir", state,
		"--report-smtp", sink.Addr, "--authserv-id", "mx.cli.example"}
	d := startDaemon(t, bin, args...)
	d.waitFor("dmarc-milter ready")
	if code := spoof(t, "unix", sock); code != 550 {
		t.Fatalf("spoof: %d, want 550", code)
	}
	d.cmd.Process.Signal(syscall.SIGKILL)
	d.cmd.Wait()
	files, _ := filepath.Glob(filepath.Join(state, "spool", "*.report"))
	if len(files) != 2 {
		t.Fatalf("%d reports in the spool right after the answer, want 2", len(files))
	}

	sink.Restart(t)
	d2 := startDaemon(t, bin, args...)
	d2.waitFor("dmarc-milter ready")
	sink.Wait(t, 2, 15*time.Second)
}
