package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/rs/zerolog"

	"github.com/dmarc-milter/dmarc-milter/policy"
)

var update = flag.Bool("update", false, "rewrite the generated settings tables of README.md and the manual page")

// Every Config field is declared once, every declaration has its field,
// and every default decodes and passes the checks.
func TestSettingsDeclared(t *testing.T) {
	fields := map[string]reflect.Type{}
	ct := reflect.TypeOf(Config{})
	for i := range ct.NumField() {
		fields[ct.Field(i).Tag.Get("toml")] = ct.Field(i).Type
	}
	seen := map[string]bool{}
	for _, s := range settings {
		if seen[s.Key] {
			t.Errorf("%s declared twice", s.Key)
		}
		seen[s.Key] = true
		typ, ok := fields[s.Key]
		if !ok {
			t.Errorf("%s: no Config field with that toml tag", s.Key)
			continue
		}
		if (typ == reflect.TypeOf(Choice{})) != (s.Choices != nil) {
			t.Errorf("%s: Choices must be given exactly for Choice fields", s.Key)
		}
		if s.Usage == "" || s.Default == "" {
			t.Errorf("%s: no usage or no default", s.Key)
		}
	}
	for key := range fields {
		if !seen[key] {
			t.Errorf("Config field %s has no setting", key)
		}
	}
	cfg := newConfig("mx.example.net")
	if key, err := cfg.validate(); err != nil {
		t.Errorf("built-in default of %s fails its own check: %v", key, err)
	}
	if cfg.AuthservID != "mx.example.net" || cfg.ReportFrom != "postmaster@mx.example.net" {
		t.Errorf("host name not filled in: %q %q", cfg.AuthservID, cfg.ReportFrom)
	}
}

// Each flag sets its setting, and flags are exactly the declared ones.
func TestSettingFlags(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	flags := bindFlags(fs)
	for _, s := range settings {
		if _, ok := flags[s.flagName()]; ok != s.Flag {
			t.Errorf("%s: flag %v, declared %v", s.Key, ok, s.Flag)
		}
	}
	tests := []struct {
		args  []string
		check func(Config) bool
	}{
		{args: []string{"--monitor"}, check: func(c Config) bool { return c.Monitor }},
		{args: []string{"--failure-reports=false"}, check: func(c Config) bool { return !c.FailureReports }},
		{args: []string{"--dns", "127.0.0.1:53, [::1]:53"}, check: func(c Config) bool { return slices.Equal(c.DNS, []string{"127.0.0.1:53", "[::1]:53"}) }},
		{args: []string{"--log-level", "debug"}, check: func(c Config) bool { return c.LogLevel.Value == "debug" }},
		// A resolver without a port gets 53.
		{args: []string{"--dns", "192.0.2.53,2001:db8::53,[::1]:5353"}, check: func(c Config) bool {
			return slices.Equal(c.DNS, []string{"192.0.2.53:53", "[2001:db8::53]:53", "[::1]:5353"})
		}},
		{args: []string{"--pprof-listen", "127.0.0.1:6061"}, check: func(c Config) bool { return c.PprofListen.Addr == "127.0.0.1:6061" }},
		{args: []string{"--report-from", "dmarc@example.org"}, check: func(c Config) bool { return c.ReportFrom == "dmarc@example.org" }},
	}
	for _, tt := range tests {
		cfg, err := parseFlags(tt.args, io.Discard)
		if err != nil || !tt.check(cfg) {
			t.Errorf("%v: err %v, config %+v", tt.args, err, cfg)
		}
	}
	for _, bad := range [][]string{{"--dns", "127.0.0.1:x:y"}, {"--temperror", "maybe"}, {"--listen", "udp:1"}, {"--monitor=perhaps"}} {
		if _, err := parseFlags(bad, io.Discard); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
}

// Resolvers in the file get port 53 when they have none; a bad one is an
// error naming the file, line and key.
func TestDNSDefaultPort(t *testing.T) {
	cfg, err := loadConfig(writeFile(t, "dns = [\"192.0.2.53\", \"[2001:db8::1]\", \"ns.example:5353\"]\n"))
	if err != nil || !slices.Equal(cfg.DNS, []string{"192.0.2.53:53", "[2001:db8::1]:53", "ns.example:5353"}) {
		t.Errorf("dns %v, %v", cfg.DNS, err)
	}
	path := writeFile(t, "monitor = true\ndns = [\"192.0.2.1\", \"a b\"]\n")
	if _, err := loadConfig(path); err == nil || err.Error() != path+`:2: dns: "a b" is not HOST or HOST:PORT` {
		t.Errorf("bad resolver: %v", err)
	}
}

// A reload names exactly the settings declared Restart that changed.
func TestNeedRestart(t *testing.T) {
	running := newConfig("mx")
	for _, s := range settings {
		cfg := newConfig("mx")
		// A value different from the default, as the file would give it.
		f := s.field(&cfg)
		switch f.Kind() {
		case reflect.Bool:
			f.SetBool(!f.Bool())
		case reflect.Int:
			f.SetInt(f.Int() + 1)
		case reflect.String:
			f.SetString(f.String() + "x")
		case reflect.Slice:
			e := reflect.New(f.Type().Elem()).Elem()
			if e.Kind() == reflect.String {
				e.SetString("x.example")
			}
			f.Set(reflect.Append(f, e))
		default:
			other := map[string]string{
				"listen": "unix:/run/x.sock", "socket_mode": "0600", "pprof_listen": "127.0.0.1:1", "metrics_listen": "127.0.0.1:2",
				"quarantine": "mark", "temperror": "accept", "report_starttls": "off",
				"failure_report_include": "message", "log_format": "text", "log_level": "debug",
				"reject_policy": "always", "trusted_forwarder_action": "quarantine",
			}[s.Key]
			if other == "" {
				other = "7s" // the durations
			}
			if err := s.set(&cfg, other); err != nil {
				t.Fatalf("%s: %v", s.Key, err)
			}
		}
		got := needRestart(running, cfg)
		want := []string(nil)
		if s.Restart {
			want = []string{s.Key}
		}
		if !slices.Equal(got, want) {
			t.Errorf("changing %s: need_restart %v, want %v", s.Key, got, want)
		}
	}
}

// The README table and the manual page's list are generated from the
// declarations (go test ./cmd/dmarc-milter -run TestSettingsDocumented
// -update rewrites them); the packaged configuration file lists every key
// with its default.
func TestSettingsDocumented(t *testing.T) {
	for _, doc := range []struct {
		path, begin, end string
		gen              func() string
	}{
		{filepath.Join("..", "..", "README.md"), "<!-- settings: begin", "<!-- settings: end -->", readmeTable},
		{filepath.Join("..", "..", "packaging", "dmarc-milter.8"), `.\" settings: begin`, `.\" settings: end`, manList},
	} {
		data, err := os.ReadFile(doc.path)
		if err != nil {
			t.Fatal(err)
		}
		b := bytes.Index(data, []byte(doc.begin))
		e := bytes.Index(data, []byte(doc.end))
		if b < 0 || e < b {
			t.Errorf("%s: no %q ... %q markers", doc.path, doc.begin, doc.end)
			continue
		}
		b += bytes.IndexByte(data[b:], '\n') + 1
		want := doc.gen()
		if string(data[b:e]) == want {
			continue
		}
		if *update {
			out := append(append(append([]byte{}, data[:b]...), want...), data[e:]...)
			if err := os.WriteFile(doc.path, out, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		t.Errorf("%s: the settings list is not what settings.go declares; run go test ./cmd/dmarc-milter -run TestSettingsDocumented -update", doc.path)
	}

	path := filepath.Join("..", "..", "packaging", "dmarc-milter.toml")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range settings {
		line := "# " + s.Key + " = " + s.Default
		if strings.Contains(s.Default, hostToken) {
			// Computed at start: the file shows an example instead.
			if !regexp.MustCompile(`(?m)^#\s+` + s.Key + ` = `).Match(data) {
				t.Errorf("%s: does not show %s", path, s.Key)
			}
			continue
		}
		if !bytes.Contains(data, []byte("\n"+line+"\n")) {
			t.Errorf("%s: lacks the line %q", path, line)
		}
	}
}

func readmeTable() string {
	var b strings.Builder
	b.WriteString("| key | flag | default | on reload | meaning |\n|---|---|---|---|---|\n")
	for _, s := range settings {
		fl := ""
		if s.Flag {
			fl = "`--" + s.flagName() + "`"
		}
		reload := "applied"
		if s.Restart {
			reload = "restart"
		}
		fmt.Fprintf(&b, "| `%s` | %s | `%s` | %s | %s |\n", s.Key, fl, s.Default, reload, s.Usage)
	}
	return b.String()
}

func manList() string {
	esc := strings.NewReplacer(`\`, `\e`, "-", `\-`)
	var b strings.Builder
	for _, s := range settings {
		fmt.Fprintf(&b, ".TP\n\\fB%s\\fR = %s\n", esc.Replace(s.Key), esc.Replace(s.Default))
		text := esc.Replace(s.Usage) + "."
		if s.Flag {
			text += " Flag: \\fB\\-\\-" + esc.Replace(s.flagName()) + "\\fR."
		}
		if s.Restart {
			text += " A change needs a restart."
		}
		if strings.HasPrefix(text, ".") || strings.HasPrefix(text, "'") {
			text = `\&` + text
		}
		b.WriteString(text + "\n")
	}
	return b.String()
}

// Help goes to stdout with exit status 0; serve -h shows every setting's
// default.
func TestHelp(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"-h"}, {"help"}, {"serve", "-h"}, {"serve", "--help"}} {
		var stdout, stderr bytes.Buffer
		if code := run(args, &stdout, &stderr); code != 0 || stdout.Len() == 0 || stderr.Len() != 0 {
			t.Errorf("%v: exit %d, %d bytes on stdout, stderr %q", args, code, stdout.Len(), stderr.String())
		}
		if args[0] != "serve" {
			continue
		}
		for _, s := range settings {
			if !strings.Contains(stdout.String(), "  "+s.Key+" = "+s.Default) {
				t.Errorf("%v does not show %s = %s", args, s.Key, s.Default)
			}
		}
	}
}

// Under systemd (stderr is the journal stream) each log line starts with
// its syslog priority, which journald reads; elsewhere lines are plain.
func TestJournalPriority(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "log")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cfg := newConfig("mx")
	if journalStream(f) {
		t.Fatal("a plain file taken for the journal")
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	t.Setenv("JOURNAL_STREAM", fmt.Sprintf("%d:%d", st.Dev, st.Ino))
	if !journalStream(f) {
		t.Fatal("the journal stream not recognized")
	}
	logger, _ := newLogger(cfg, f, f)
	logger.Error().Msg("bad")
	logger.Warn().Msg("careful")
	logger.Info().Msg("fine")
	logger.Debug().Msg("hidden at info")
	data, _ := os.ReadFile(f.Name())
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], `<3>{"level":"error"`) || !strings.HasPrefix(lines[1], "<4>{") || !strings.HasPrefix(lines[2], "<6>{") {
		t.Errorf("journal lines:\n%s", data)
	}
}

// The default report_from and authserv-id use the fully qualified host
// name; an address of no real domain is named as such.
func TestHostNameAndReportFrom(t *testing.T) {
	lookup := func(name string) (string, error) {
		if name == "vm" {
			return "vm.mx.example.net.", nil
		}
		return "", errors.New("no such host")
	}
	for _, tt := range []struct{ host, want string }{
		{"vm", "vm.mx.example.net"}, {"mx.example.org", "mx.example.org"}, {"lonely", "lonely"},
	} {
		if got := fqdn(tt.host, lookup); got != tt.want {
			t.Errorf("fqdn(%q) = %q, want %q", tt.host, got, tt.want)
		}
	}
	cfg := newConfig(fqdn("vm", lookup))
	if cfg.ReportFrom != "postmaster@vm.mx.example.net" || cfg.AuthservID != "vm.mx.example.net" {
		t.Errorf("defaults %q %q", cfg.ReportFrom, cfg.AuthservID)
	}
	for _, tt := range []struct {
		addr string
		real bool
	}{
		{"postmaster@vm", false}, {"dmarc@mx.example.net", true}, {"a@host.localdomain", false},
		{"a@printer.local", false}, {"a@localhost", false}, {"a@corp.internal", false},
	} {
		if why := notARealDomain(tt.addr); (why == "") != tt.real {
			t.Errorf("%s: %q", tt.addr, why)
		}
	}
}

// trusted_forwarders holds networks and domains; both reach the policy,
// the domains normalized, with the action and the ARC sealers.
func TestTrustedForwardersConfig(t *testing.T) {
	cfg, err := loadConfig(writeFile(t, "trusted_forwarders = [\"198.51.100.7\", \"2001:db8::/48\", \"Lists.Example.ORG.\"]\n"+
		"trusted_forwarder_action = \"quarantine\"\ntrusted_arc_sealers = [\"Google.com\"]\nreject_policy = \"never\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	pc := policyConfig(cfg)
	f := pc.TrustedForwarders
	if len(f.Networks) != 2 || f.Networks[0].String() != "198.51.100.7/32" || f.Networks[1].String() != "2001:db8::/48" ||
		len(f.Domains) != 1 || f.Domains[0] != "lists.example.org" {
		t.Errorf("trusted forwarders %+v", f)
	}
	if !pc.TrustedForwarderQuarantine || len(pc.TrustedARCSealers) != 1 || pc.TrustedARCSealers[0] != "google.com" || pc.RejectPolicy != policy.RejectNever {
		t.Errorf("policy config %+v", pc)
	}
	if !pipelineSettings(cfg, nil, nil, zerolog.Nop()).ARC {
		t.Error("ARC not validated although trusted_arc_sealers is set")
	}
}
