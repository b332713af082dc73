package main

import (
	"encoding"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/mail"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"

	"github.com/dmarc-milter/dmarc-milter/milter"
	"github.com/dmarc-milter/dmarc-milter/policy"
	"github.com/dmarc-milter/dmarc-milter/policy/dkim"
	"github.com/dmarc-milter/dmarc-milter/report"
	"github.com/dmarc-milter/dmarc-milter/report/outbox"
	"github.com/dmarc-milter/dmarc-milter/resolver"
	"github.com/dmarc-milter/dmarc-milter/session"
)

// A setting is one key of the configuration, declared once: everything
// else is derived from it. The built-in defaults are its Default decoded
// like the file; a command-line flag (--key-with-dashes) exists when Flag is
// set; a reload names it in need_restart when Restart is set; its range is
// checked by Min or Check. The README table and the manual page's list are
// generated from these declarations, and a test checks the packaged TOML
// file against them (settings_test.go).
type setting struct {
	// Key is the TOML key, the toml tag of its Config field.
	Key string
	// Flag: also a command-line flag, --Key with "-" for "_". A list flag
	// takes comma-separated values.
	Flag bool
	// Default is the built-in default as a TOML value; hostToken in it
	// stands for this machine's host name.
	Default string
	// Choices are the allowed values of a Choice setting.
	Choices []string
	// Usage says what the setting does, for --help, the README and the
	// manual page.
	Usage string
	// Restart: a reload does not apply a change; it needs a restart.
	Restart bool
	// Min bounds a count (at least Min) or a duration (longer than 0 when
	// Min is 1, else 0 or longer).
	Min int
	// Check, if set, checks the value in the whole configuration (ranges
	// that involve another key, formats no type can check).
	Check func(c *Config) error
}

// hostToken in a Default stands for the host name.
const hostToken = "<host name>"

// settings are the configuration keys, in the order of the documentation.
var settings = []setting{
	// Milter socket.
	{Key: "listen", Flag: true, Default: `"inet:127.0.0.1:8893"`, Restart: true,
		Usage: "milter socket Postfix connects to: unix:PATH, inet:HOST:PORT or inet:PORT@HOST"},
	{Key: "socket_mode", Default: `"0660"`, Restart: true,
		Usage: "permission of a unix socket (octal)"},
	{Key: "idle_timeout", Default: dur(milter.DefaultTimeouts.Idle), Restart: true, Min: 1,
		Usage: "how long a milter connection may wait between commands"},
	{Key: "read_timeout", Default: dur(milter.DefaultTimeouts.Read), Restart: true, Min: 1,
		Usage: "how long one milter command may take to arrive"},
	{Key: "write_timeout", Default: dur(milter.DefaultTimeouts.Write), Restart: true, Min: 1,
		Usage: "how long writing one reply to the MTA may take"},
	{Key: "gomaxprocs", Default: `2`, Restart: true,
		Usage: "CPUs the daemon's Go runtime runs on at once (0: all; the GOMAXPROCS environment variable, if set, wins); see Speed"},
	{Key: "shutdown_timeout", Default: `"30s"`, Restart: true, Min: 1,
		Usage: "how long SIGTERM waits for open sessions"},
	// DNS.
	{Key: "dns", Flag: true, Default: `[]`, Restart: true, Check: defaultDNSPort,
		Usage: "upstream DNS resolvers, HOST or HOST:PORT (port 53 if none); empty: the nameservers of /etc/resolv.conf"},
	{Key: "dns_timeout", Default: dur(resolver.DefaultTimeout), Restart: true, Min: 1,
		Usage: "timeout of one DNS query attempt"},
	{Key: "dns_cache_size", Default: num(resolver.DefaultCacheSize), Restart: true, Min: 1,
		Usage: "DNS answers cached"},
	{Key: "dns_failure_ttl", Default: dur(resolver.DefaultFailureTTL), Restart: true, Min: 0,
		Usage: `how long a DNS temporary failure is remembered ("0s": not at all)`},
	{Key: "check_timeout", Default: dur(session.DefaultCheckTimeout), Restart: true, Min: 1,
		Usage: "DNS time a message may wait in all: SPF at MAIL FROM, then the DKIM keys and DMARC at end of message with what SPF left"},
	// Policy.
	{Key: "authserv_id", Flag: true, Default: `"` + hostToken + `"`, Check: checkAuthservID,
		Usage: "authserv-id of Authentication-Results; incoming fields carrying it are removed"},
	{Key: "monitor", Flag: true, Default: `false`,
		Usage: "evaluate, stamp and log, but never reject, quarantine or defer"},
	{Key: "quarantine", Default: str(string(policy.QuarantineHold)), Choices: []string{string(policy.QuarantineHold), string(policy.QuarantineMark)},
		Usage: "how p=quarantine is applied: hold (Postfix hold queue) or mark (Authentication-Results only)"},
	{Key: "temperror", Flag: true, Default: `"tempfail"`, Choices: []string{"tempfail", "accept"},
		Usage: "when a DNS temporary error leaves the outcome unknown: tempfail (451 4.7.5) or accept"},
	{Key: "reject_bad_from", Default: `true`,
		Usage: "reject mail without exactly one parseable From field (or with over 5 domains in it)"},
	{Key: "reject_multi_author", Default: `false`,
		Usage: "reject mail whose From holds several addresses (off: the strictest result of its domains applies)"},
	{Key: "reject_text", Default: str(policy.DefaultRejectText), Check: func(c *Config) error { return checkRejectText(c.RejectText) },
		Usage: "text of the 550 5.7.1 reply to a DMARC reject; {domain} is the From domain, {evidence} what DKIM and SPF showed"},
	{Key: "trusted_networks", Default: `["127.0.0.0/8", "::1/128"]`,
		Usage: "client networks whose mail is stamped but never enforced"},
	{Key: "exempt_domains", Default: `[]`,
		Usage: "From domains (and subdomains) whose mail is stamped but never enforced"},
	{Key: "reject_policy", Flag: true, Default: str(string(policy.RejectOnEvidence)),
		Choices: []string{string(policy.RejectOnEvidence), string(policy.RejectAlways), string(policy.RejectNever)},
		Usage:   "when a p=reject failure is rejected: evidence (only on evidence of a spoof, else quarantine; RFC 9989), always (RFC 7489, not conformant) or never (quarantine at most)"},
	{Key: "trusted_forwarders", Default: `[]`,
		Usage: "forwarders whose DMARC failures are delivered: networks (the client address) and domains (the SPF-passing MAIL FROM domain or the client's forward-confirmed reverse name, or below)"},
	{Key: "trusted_forwarder_action", Default: `"accept"`, Choices: []string{"accept", "quarantine"},
		Usage: "what a DMARC failure through a trusted forwarder or trusted ARC sealer gets: accept or quarantine"},
	{Key: "trusted_arc_sealers", Default: `[]`, Restart: true, Check: checkARCSealers,
		Usage: "ARC sealers (RFC 8617) whose validated seal and dmarc=pass for the From domain are trusted; empty: ARC is not validated"},
	// Limits.
	{Key: "max_dkim_signatures", Default: num(dkim.DefaultMaxSignatures), Restart: true, Min: 1,
		Usage: "DKIM signatures verified per message"},
	{Key: "max_header_size", Default: num(session.DefaultMaxHeaderBytes), Restart: true, Min: 1,
		Usage: "header bytes kept per message (see Limits)"},
	{Key: "max_header_fields", Default: num(session.DefaultMaxHeaderFields), Restart: true, Min: 1,
		Usage: "header fields kept per message (see Limits)"},
	// Reports.
	{Key: "state_dir", Flag: true, Default: `"/var/lib/dmarc-milter"`, Restart: true,
		Usage: "directory of the report spool and database"},
	{Key: "report_smtp", Flag: true, Default: str(outbox.DefaultSMTP),
		Usage: "SMTP relay outgoing reports are handed to, HOST:PORT"},
	{Key: "report_from", Flag: true, Default: `"postmaster@` + hostToken + `"`, Check: checkReportFrom,
		Usage: "From address (and envelope sender) of outgoing reports"},
	{Key: "report_smtp_user", Default: `""`,
		Usage: "AUTH PLAIN user at the relay (sent only over TLS or to a loopback relay)"},
	{Key: "report_smtp_password", Default: `""`,
		Usage: "AUTH PLAIN password at the relay"},
	{Key: "report_starttls", Default: str(outbox.StartTLSOpportunistic), Choices: []string{outbox.StartTLSOpportunistic, outbox.StartTLSRequired, outbox.StartTLSOff},
		Usage: "STARTTLS to the relay: opportunistic (certificate not verified), required (verified) or off"},
	{Key: "report_max_attempts", Default: num(outbox.DefaultMaxAttempts), Min: 1,
		Usage: "delivery attempts of a report before it is dropped (a 5xx is final at once)"},
	{Key: "report_min_backoff", Default: dur(outbox.DefaultMinBackoff), Min: 1,
		Usage: "first retry delay, doubling per attempt"},
	{Key: "report_max_backoff", Default: dur(outbox.DefaultMaxBackoff), Min: 1, Check: checkBackoffs,
		Usage: "longest retry delay"},
	{Key: "failure_reports", Flag: true, Default: `true`,
		Usage: "send DMARC failure reports (RFC 9991) to the ruf= addresses of domains whose fo= matches"},
	{Key: "failure_report_include", Default: str(report.IncludeHeaders), Choices: []string{report.IncludeHeaders, report.IncludeMessage}, Restart: true,
		Usage: "what of the message a report attaches: headers, or the whole message up to failure_report_max_message_size"},
	{Key: "failure_report_max_message_size", Default: num(report.DefaultMaxMessageSize), Restart: true, Min: 0,
		Usage: "largest body attached with failure_report_include = \"message\" (bytes)"},
	{Key: "failure_report_redact", Default: `false`,
		Usage: "replace the local part of every address in reports by \"redacted\" (the body is then never attached)"},
	{Key: "failure_report_allow_domains", Default: `[]`,
		Usage: "policy domains (and subdomains) reported on; empty: all"},
	{Key: "failure_report_deny_domains", Default: `[]`,
		Usage: "policy domains (and subdomains) never reported on"},
	{Key: "failure_report_exclude_networks", Default: `[]`,
		Usage: "client networks never reported on"},
	{Key: "failure_report_per_destination", Default: num(report.DefaultPerDestinationLimit), Min: 1,
		Usage: "reports per destination address per failure_report_per_destination_window"},
	{Key: "failure_report_per_destination_window", Default: dur(report.DefaultPerDestinationWindow), Min: 1,
		Usage: "window of the per-destination limit"},
	{Key: "failure_report_global", Default: num(report.DefaultGlobalLimit), Min: 1,
		Usage: "reports in all per failure_report_global_window"},
	{Key: "failure_report_global_window", Default: dur(report.DefaultGlobalWindow), Min: 1,
		Usage: "window of the global limit"},
	{Key: "failure_report_dedup_window", Default: dur(report.DefaultDedupWindow), Min: 1,
		Usage: "identical failures (source IP, domain, failure, destination) are reported once per window"},
	// Aggregate reports.
	{Key: "aggregate_reports", Flag: true, Default: `true`, Restart: true,
		Usage: "send DMARC aggregate reports (RFC 9990) to the rua= addresses of the domains whose mail was evaluated"},
	{Key: "aggregate_interval", Flag: true, Default: dur(24 * time.Hour), Restart: true, Min: 1, Check: checkInterval,
		Usage: "report period, aligned on 00:00 UTC (a whole number of seconds; shorter than a day only for tests)"},
	{Key: "aggregate_send_window", Default: dur(time.Hour), Restart: true, Min: 0,
		Usage: "after a period ends, reports are sent spread over this window (each domain at its own offset), so a fleet does not burst at midnight"},
	{Key: "aggregate_flush_interval", Default: dur(time.Second), Restart: true, Min: 1,
		Usage: "how often recorded rows are written to the store: what kill -9 can lose (SIGTERM loses nothing)"},
	{Key: "aggregate_max_destinations", Default: num(2), Restart: true, Min: 1,
		Usage: "rua addresses one report is sent to, at most (the others are left out, logged)"},
	{Key: "aggregate_max_size", Default: num(10 << 20), Restart: true, Min: 0,
		Usage: "largest compressed report in bytes (0: no bound); beyond, the records with the fewest messages are left out and the report says so"},
	{Key: "aggregate_envelope_to", Default: `false`, Restart: true,
		Usage: "record the envelope recipient domain (envelope_to); Postfix then also sends the recipients to the milter"},
	{Key: "aggregate_retention_days", Default: num(30), Restart: true, Min: 1,
		Usage: "days rows are kept after their report was sent"},
	{Key: "store", Flag: true, Default: `""`, Restart: true, Check: checkStore,
		Usage: "where report rows and claims are kept: empty for SQLite in state_dir, or a postgres:// URL shared by a fleet (then failure-report limits are the fleet's too)"},
	{Key: "report_org_name", Default: `""`,
		Usage: "org_name of aggregate reports (empty: the domain of report_from)"},
	{Key: "report_contact_info", Default: `""`,
		Usage: "extra_contact_info of aggregate reports (empty: none)"},
	// Logging and diagnostics.
	{Key: "log_format", Flag: true, Default: `"json"`, Choices: []string{"json", "text"}, Restart: true,
		Usage: "log format: json or text"},
	{Key: "log_level", Flag: true, Default: `"info"`, Choices: []string{"debug", "info", "warn", "error"},
		Usage: "log level: debug, info, warn or error"},
	{Key: "metrics_listen", Flag: true, Default: `"127.0.0.1:9893"`, Restart: true,
		Usage: "serve Prometheus metrics at http://HOST:PORT/metrics on this loopback address (empty: off)"},
	{Key: "pprof_listen", Flag: true, Default: `""`, Restart: true,
		Usage: "serve Go's pprof profiles on this loopback HOST:PORT (empty: off)"},
}

// num, dur and str write a default as a TOML value: the defaults of the
// packages that use a setting stay the one source of its value.
func num(n int) string { return strconv.Itoa(n) }

func dur(d time.Duration) string { return strconv.Quote(d.String()) }

func str(s string) string { return strconv.Quote(s) }

// flagName is the command-line flag of a setting.
func (s *setting) flagName() string { return strings.ReplaceAll(s.Key, "_", "-") }

// field returns the Config field of the setting, addressable.
func (s *setting) field(c *Config) reflect.Value {
	v := reflect.ValueOf(c).Elem()
	t := v.Type()
	for i := range t.NumField() {
		if t.Field(i).Tag.Get("toml") == s.Key {
			return v.Field(i)
		}
	}
	panic("dmarc-milter: setting " + s.Key + " has no Config field") // caught by TestSettingsDeclared
}

// newConfig returns a Config with every setting at its default; hostname
// fills hostToken.
func newConfig(hostname string) Config {
	var c Config
	var doc strings.Builder
	for i := range settings {
		s := &settings[i]
		if s.Choices != nil {
			s.field(&c).Addr().Interface().(*Choice).allowed = s.Choices
		}
		fmt.Fprintf(&doc, "%s = %s\n", s.Key, strings.ReplaceAll(s.Default, hostToken, hostname))
	}
	if err := toml.Unmarshal([]byte(doc.String()), &c); err != nil {
		panic("dmarc-milter: bad built-in default: " + err.Error()) // caught by TestSettingsDeclared
	}
	return c
}

// set parses text (as on the command line) into the setting's field of c.
func (s *setting) set(c *Config, text string) error {
	f := s.field(c)
	if f.Kind() == reflect.Slice {
		list := reflect.MakeSlice(f.Type(), 0, 0)
		for _, e := range strings.Split(text, ",") {
			if e = strings.TrimSpace(e); e == "" {
				continue
			}
			v := reflect.New(f.Type().Elem())
			if err := setValue(v.Elem(), e); err != nil {
				return err
			}
			list = reflect.Append(list, v.Elem())
		}
		f.Set(list)
		return nil
	}
	return setValue(f, text)
}

func setValue(f reflect.Value, text string) error {
	if u, ok := f.Addr().Interface().(encoding.TextUnmarshaler); ok {
		return u.UnmarshalText([]byte(text))
	}
	switch f.Kind() {
	case reflect.String:
		f.SetString(text)
	case reflect.Bool:
		b, err := strconv.ParseBool(text)
		if err != nil {
			return fmt.Errorf("invalid boolean %q", text)
		}
		f.SetBool(b)
	case reflect.Int:
		n, err := strconv.Atoi(text)
		if err != nil {
			return fmt.Errorf("invalid number %q", text)
		}
		f.SetInt(int64(n))
	default:
		return fmt.Errorf("cannot set a %s from text", f.Type())
	}
	return nil
}

// check applies Min and Check to c.
func (s *setting) check(c *Config) error {
	switch v := s.field(c).Interface().(type) {
	case Duration:
		if s.Min > 0 && v <= 0 {
			return fmt.Errorf("must be longer than 0, not %q", v)
		}
		if v < 0 {
			return fmt.Errorf("must be 0 (off) or longer, not %q", v)
		}
	case int:
		switch {
		case v < s.Min && s.Min == 1:
			return fmt.Errorf("must be at least 1, not %d (failure_reports = false turns reports off)", v)
		case v < s.Min:
			return fmt.Errorf("must be at least %d, not %d", s.Min, v)
		case v < 0:
			return fmt.Errorf("must not be negative, not %d", v)
		}
	}
	if s.Check != nil {
		return s.Check(c)
	}
	return nil
}

// validate checks every value; it returns the key of the first bad one and
// why.
func (c *Config) validate() (key string, err error) {
	for i := range settings {
		if err := settings[i].check(c); err != nil {
			return settings[i].Key, err
		}
	}
	return "", nil
}

// needRestart lists the settings that differ between running and cfg and
// that a reload cannot apply.
func needRestart(running, cfg Config) []string {
	var keys []string
	for i := range settings {
		s := &settings[i]
		if s.Restart && fmt.Sprint(s.field(&running).Interface()) != fmt.Sprint(s.field(&cfg).Interface()) {
			keys = append(keys, s.Key)
		}
	}
	return keys
}

// flagValue binds a setting to a command-line flag. Set checks the text
// at once; apply puts it into the configuration once the file is read
// (flags override the file).
type flagValue struct {
	s    *setting
	text string
}

func (v *flagValue) Set(text string) error {
	scratch := newConfig("localhost")
	if err := v.s.set(&scratch, text); err != nil {
		return err
	}
	v.text = text
	return nil
}

// String is the default, for --help.
func (v *flagValue) String() string {
	if v == nil || v.s == nil {
		return ""
	}
	return v.s.Default
}

// IsBoolFlag lets a boolean flag stand alone (--monitor).
func (v *flagValue) IsBoolFlag() bool {
	return v != nil && v.s != nil && v.s.field(&Config{}).Kind() == reflect.Bool
}

func (v *flagValue) apply(c *Config) error { return v.s.set(c, v.text) }

// bindFlags declares a flag for every setting with Flag and returns them by
// name.
func bindFlags(fs *flag.FlagSet) map[string]*flagValue {
	vals := map[string]*flagValue{}
	for i := range settings {
		s := &settings[i]
		if !s.Flag {
			continue
		}
		v := &flagValue{s: s}
		fs.Var(v, s.flagName(), s.Usage)
		vals[s.flagName()] = v
	}
	return vals
}

// defaultDNSPort gives port 53 to the resolvers written without one
// ("192.0.2.53", "2001:db8::53", "[2001:db8::53]") and checks the others.
func defaultDNSPort(c *Config) error {
	for i, s := range c.DNS {
		if _, _, err := net.SplitHostPort(s); err == nil {
			continue
		}
		host := strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
		if ip := net.ParseIP(host); ip != nil || (host != "" && !strings.ContainsAny(host, ":[] ")) {
			c.DNS[i] = net.JoinHostPort(host, "53")
			continue
		}
		return fmt.Errorf("%q is not HOST or HOST:PORT", s)
	}
	return nil
}

func checkAuthservID(c *Config) error {
	if c.AuthservID == "" || strings.ContainsAny(c.AuthservID, " \t;()\"") {
		return fmt.Errorf("%q is not a valid token", c.AuthservID)
	}
	return nil
}

func checkReportFrom(c *Config) error {
	if _, err := mail.ParseAddress(c.ReportFrom); err != nil {
		return fmt.Errorf("%q is not an e-mail address", c.ReportFrom)
	}
	return nil
}

func checkInterval(c *Config) error {
	if d := time.Duration(c.AggregateInterval); d%time.Second != 0 {
		return fmt.Errorf("%q is not a whole number of seconds", c.AggregateInterval)
	}
	return nil
}

func checkStore(c *Config) error {
	if c.Store != "" && !strings.HasPrefix(c.Store, "postgres://") && !strings.HasPrefix(c.Store, "postgresql://") {
		return errors.New("must be empty (SQLite in state_dir) or a postgres:// URL")
	}
	return nil
}

func checkBackoffs(c *Config) error {
	if c.ReportMaxBackoff < c.ReportMinBackoff {
		return fmt.Errorf("%q is shorter than report_min_backoff %q", c.ReportMaxBackoff, c.ReportMinBackoff)
	}
	return nil
}

// wantsHelp reports whether args ask for help (-h, -help, --help).
func wantsHelp(args []string) bool {
	for _, a := range args {
		if a == "--" {
			return false
		}
		if a == "-h" || a == "-help" || a == "--help" {
			return true
		}
	}
	return false
}

// serveUsage prints the options of serve and every setting of the
// configuration file with its default.
func serveUsage(w io.Writer) {
	fs := flag.NewFlagSet("dmarc-milter serve", flag.ContinueOnError)
	fs.SetOutput(w)
	fs.String("config", "", "TOML configuration `file`")
	bindFlags(fs)
	fmt.Fprintln(w, "usage: dmarc-milter serve [--config FILE] [flags]")
	fmt.Fprintln(w, "\nFlags (they override the file):")
	fs.PrintDefaults()
	fmt.Fprintln(w, "\nSettings of the configuration file, with their defaults (a flag of the")
	fmt.Fprintln(w, "same name, dashes for underscores, exists where marked):")
	for _, s := range settings {
		mark := ""
		if s.Flag {
			mark = "  [--" + s.flagName() + "]"
		}
		restart := ""
		if s.Restart {
			restart = " (restart to change)"
		}
		fmt.Fprintf(w, "  %s = %s%s\n      %s%s\n", s.Key, s.Default, mark, s.Usage, restart)
	}
}
