package main

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"

	"github.com/dmarc-milter/dmarc-milter/policy/dmarc"
)

// Config is the daemon's configuration: built-in defaults, then the TOML
// file (--config), then command-line flags. Each field is one setting,
// declared (default, meaning, flag, reload) in settings.go; its toml tag is
// the key.
type Config struct {
	// Listen is where Postfix connects: "unix:/path", "inet:host:port" or
	// sendmail's "inet:port@host".
	Listen ListenSpec `toml:"listen"`
	// SocketMode is the permission of a unix socket.
	SocketMode FileMode `toml:"socket_mode"`
	// DNS lists the upstream resolvers ("host:port"); empty means the
	// nameservers of /etc/resolv.conf.
	DNS []string `toml:"dns"`
	// DNSTimeout bounds one DNS query attempt.
	DNSTimeout Duration `toml:"dns_timeout"`
	// DNSCacheSize bounds the number of cached DNS answers.
	DNSCacheSize int `toml:"dns_cache_size"`
	// DNSFailureTTL is how long a DNS temporary failure is cached; "0s"
	// turns failure caching off.
	DNSFailureTTL Duration `toml:"dns_failure_ttl"`
	// CheckTimeout bounds the DNS time a message waits at each stage (SPF
	// at MAIL FROM; DKIM and DMARC at end of message), from when it starts.
	CheckTimeout Duration `toml:"check_timeout"`
	// AuthservID goes into Authentication-Results; default: the host name.
	AuthservID string `toml:"authserv_id"`
	// Monitor evaluates, stamps and logs without enforcing.
	Monitor bool `toml:"monitor"`
	// Quarantine: "hold" (milter quarantine, Postfix hold queue) or "mark"
	// (only the Authentication-Results field).
	Quarantine Choice `toml:"quarantine"`
	// TempError: "tempfail" (451 4.7.5) or "accept".
	TempError Choice `toml:"temperror"`
	// RejectBadFrom rejects mail without exactly one From address.
	RejectBadFrom bool `toml:"reject_bad_from"`
	// RejectMultiAuthor rejects mail whose From holds several addresses.
	RejectMultiAuthor bool `toml:"reject_multi_author"`
	// RejectText is the text of the 550 5.7.1 reply; {domain} is replaced.
	RejectText string `toml:"reject_text"`
	// TrustedNetworks are never enforced (A-R still added).
	TrustedNetworks []Prefix `toml:"trusted_networks"`
	// ExemptDomains are RFC5322.From domains never enforced.
	ExemptDomains []string `toml:"exempt_domains"`
	// RejectPolicy: "evidence", "always" or "never" (RFC 9989 section 7.4).
	RejectPolicy Choice `toml:"reject_policy"`
	// TrustedForwarders: networks and domains whose failures are delivered.
	TrustedForwarders []Forwarder `toml:"trusted_forwarders"`
	// TrustedForwarderAction: "accept" or "quarantine".
	TrustedForwarderAction Choice `toml:"trusted_forwarder_action"`
	// TrustedARCSealers: ARC sealers (RFC 8617) whose dmarc=pass is trusted.
	TrustedARCSealers []string `toml:"trusted_arc_sealers"`
	// MaxDKIMSignatures bounds the signatures verified per message.
	MaxDKIMSignatures int `toml:"max_dkim_signatures"`
	// MaxHeaderSize and MaxHeaderFields bound the header kept per message.
	MaxHeaderSize   int `toml:"max_header_size"`
	MaxHeaderFields int `toml:"max_header_fields"`
	// Timeouts of milter connections.
	IdleTimeout     Duration `toml:"idle_timeout"`
	ReadTimeout     Duration `toml:"read_timeout"`
	WriteTimeout    Duration `toml:"write_timeout"`
	ShutdownTimeout Duration `toml:"shutdown_timeout"`
	// StateDir holds the report spool and database.
	StateDir string `toml:"state_dir"`
	// ReportSMTP is the relay outgoing reports are handed to.
	ReportSMTP string `toml:"report_smtp"`
	// ReportFrom is the From address of outgoing reports.
	ReportFrom string `toml:"report_from"`
	// ReportSMTPUser and ReportSMTPPassword: optional AUTH PLAIN at the
	// relay (only over TLS or to a loopback relay).
	ReportSMTPUser     string `toml:"report_smtp_user"`
	ReportSMTPPassword string `toml:"report_smtp_password"`
	// ReportStartTLS: "opportunistic", "required" or "off".
	ReportStartTLS Choice `toml:"report_starttls"`
	// ReportMaxAttempts, ReportMinBackoff, ReportMaxBackoff: delivery retries.
	ReportMaxAttempts int      `toml:"report_max_attempts"`
	ReportMinBackoff  Duration `toml:"report_min_backoff"`
	ReportMaxBackoff  Duration `toml:"report_max_backoff"`
	// FailureReports switches failure reports (RFC 9991) on or off.
	FailureReports bool `toml:"failure_reports"`
	// FailureReportInclude: "headers" (text/rfc822-headers) or "message"
	// (message/rfc822 up to FailureReportMaxMessageSize bytes of body).
	FailureReportInclude        Choice `toml:"failure_report_include"`
	FailureReportMaxMessageSize int    `toml:"failure_report_max_message_size"`
	// FailureReportRedact replaces local parts of addresses by "redacted".
	FailureReportRedact bool `toml:"failure_report_redact"`
	// Policy domains (and subdomains) reported on: allow (empty: all) and
	// deny lists; client networks never reported on.
	FailureReportAllowDomains    []string `toml:"failure_report_allow_domains"`
	FailureReportDenyDomains     []string `toml:"failure_report_deny_domains"`
	FailureReportExcludeNetworks []Prefix `toml:"failure_report_exclude_networks"`
	// Rate limits and de-duplication.
	FailureReportPerDestination       int      `toml:"failure_report_per_destination"`
	FailureReportPerDestinationWindow Duration `toml:"failure_report_per_destination_window"`
	FailureReportGlobal               int      `toml:"failure_report_global"`
	FailureReportGlobalWindow         Duration `toml:"failure_report_global_window"`
	FailureReportDedupWindow          Duration `toml:"failure_report_dedup_window"`
	// Aggregate reports (RFC 9990) and the store.
	AggregateReports         bool     `toml:"aggregate_reports"`
	AggregateInterval        Duration `toml:"aggregate_interval"`
	AggregateSendWindow      Duration `toml:"aggregate_send_window"`
	AggregateFlushInterval   Duration `toml:"aggregate_flush_interval"`
	AggregateMaxDestinations int      `toml:"aggregate_max_destinations"`
	AggregateMaxSize         int      `toml:"aggregate_max_size"`
	AggregateEnvelopeTo      bool     `toml:"aggregate_envelope_to"`
	AggregateRetentionDays   int      `toml:"aggregate_retention_days"`
	Store                    string   `toml:"store"`
	ReportOrgName            string   `toml:"report_org_name"`
	ReportContactInfo        string   `toml:"report_contact_info"`
	// MetricsListen serves Prometheus metrics ("" turns them off).
	MetricsListen LoopbackAddr `toml:"metrics_listen"`
	// PprofListen, if set, serves Go's pprof profiles on this loopback
	// "host:port" (off by default).
	PprofListen LoopbackAddr `toml:"pprof_listen"`
	// LogFormat: "json" or "text"; LogLevel: debug, info, warn, error.
	LogFormat Choice `toml:"log_format"`
	LogLevel  Choice `toml:"log_level"`
	// GOMAXPROCS is the runtime's GOMAXPROCS (0: the Go default, all CPUs).
	GOMAXPROCS int `toml:"gomaxprocs"`
}

// ConfigError is a configuration problem; it formats as one line naming the
// file, line and key.
type ConfigError struct {
	File string
	Line int
	Key  string
	Err  error
}

func (e *ConfigError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	if e.Key != "" {
		fmt.Fprintf(&b, ": %s", e.Key)
	}
	fmt.Fprintf(&b, ": %v", e.Err)
	return strings.ReplaceAll(b.String(), "\n", " ")
}

func (e *ConfigError) Unwrap() error { return e.Err }

// loadConfigFile decodes path over cfg. Unknown keys and bad values are
// errors.
func loadConfigFile(path string, cfg *Config) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return &ConfigError{File: path, Err: err}
	}
	dec := toml.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(cfg); err != nil {
		var strict *toml.StrictMissingError
		var de *toml.DecodeError
		switch {
		case errors.As(err, &strict) && len(strict.Errors) > 0:
			e := strict.Errors[0]
			line, _ := e.Position()
			return &ConfigError{File: path, Line: line, Key: strings.Join(e.Key(), "."), Err: errors.New("unknown key")}
		case errors.As(err, &de):
			line, _ := de.Position()
			key := strings.Join(de.Key(), ".")
			if key == "" {
				key = keyOnLine(data, line)
			}
			return &ConfigError{File: path, Line: line, Key: key, Err: errors.New(plainDecodeError(strings.TrimPrefix(de.Error(), "toml: ")))}
		}
		return &ConfigError{File: path, Err: err}
	}
	return nil
}

// typeErrorRE matches go-toml's message for a value of the wrong TOML
// type, which names Go types.
var typeErrorRE = regexp.MustCompile(`^cannot decode TOML (\w+) into (?:struct field \S+ of type|a Go value of type) (\S+)$`)

// plainDecodeError says a type mismatch in the file's terms: what was
// written and what the key wants, with no Go type names.
func plainDecodeError(msg string) string {
	m := typeErrorRE.FindStringSubmatch(msg)
	if m == nil {
		return msg
	}
	want := map[string]string{
		"bool":          "true or false, without quotes",
		"int":           "a whole number, without quotes",
		"string":        "a string in double quotes",
		"[]string":      `a list of strings, e.g. ["a", "b"]`,
		"[]main.Prefix": `a list of networks, e.g. ["192.0.2.0/24"]`,
	}[m[2]]
	if want == "" {
		want = "a string in double quotes"
	}
	return fmt.Sprintf("the value is a TOML %s; want %s", m[1], want)
}

// keyOnLine returns the key of a "key = value" line (1-based), or "".
func keyOnLine(data []byte, line int) string {
	lines := bytes.Split(data, []byte("\n"))
	if line < 1 || line > len(lines) {
		return ""
	}
	k, _, ok := bytes.Cut(lines[line-1], []byte("="))
	if !ok {
		return ""
	}
	return strings.Trim(string(bytes.TrimSpace(k)), `"'`)
}

// Duration is a time.Duration written as "2s", "5m".
type Duration time.Duration

func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil || v < 0 {
		return fmt.Errorf("invalid duration %q (want e.g. \"2s\", \"5m\")", b)
	}
	*d = Duration(v)
	return nil
}

func (d Duration) String() string { return time.Duration(d).String() }

// Set and String make Duration a flag.Value.
func (d *Duration) Set(s string) error { return d.UnmarshalText([]byte(s)) }

// Choice is a string limited to a few values.
type Choice struct {
	Value   string
	allowed []string
}

func (c *Choice) UnmarshalText(b []byte) error {
	v := strings.ToLower(strings.TrimSpace(string(b)))
	for _, a := range c.allowed {
		if v == a {
			c.Value = v
			return nil
		}
	}
	return fmt.Errorf("invalid value %q (want %s)", b, strings.Join(c.allowed, " or "))
}

func (c *Choice) Set(s string) error { return c.UnmarshalText([]byte(s)) }
func (c *Choice) String() string {
	if c == nil {
		return ""
	}
	return c.Value
}

// FileMode is an octal permission such as "0660".
type FileMode os.FileMode

func (m *FileMode) UnmarshalText(b []byte) error {
	v, err := strconv.ParseUint(string(b), 8, 32)
	if err != nil || v > 0o777 {
		return fmt.Errorf("invalid mode %q (want octal, e.g. \"0660\")", b)
	}
	*m = FileMode(v)
	return nil
}

// Prefix is a network in CIDR notation; a bare address is a single host.
type Prefix struct{ netip.Prefix }

func (p *Prefix) UnmarshalText(b []byte) error {
	s := strings.TrimSpace(string(b))
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return fmt.Errorf("invalid network %q", b)
		}
		p.Prefix = netip.PrefixFrom(a, a.BitLen())
		return nil
	}
	v, err := netip.ParsePrefix(s)
	if err != nil {
		return fmt.Errorf("invalid network %q", b)
	}
	p.Prefix = v.Masked()
	return nil
}

// Forwarder is a trusted_forwarders entry: a network (CIDR or address) or
// a domain name.
type Forwarder struct {
	Network netip.Prefix // valid when the entry is a network
	Domain  string
}

func (f *Forwarder) UnmarshalText(b []byte) error {
	s := strings.TrimSpace(string(b))
	var p Prefix
	if p.UnmarshalText(b) == nil {
		f.Network = p.Prefix
		return nil
	}
	d, err := dmarc.NormalizeDomain(s)
	if err != nil || !strings.Contains(d, ".") || strings.ContainsAny(d, "/: ") {
		return fmt.Errorf("%q is neither a network nor a domain name", b)
	}
	f.Domain = d
	return nil
}

func (f Forwarder) MarshalText() ([]byte, error) {
	if f.Network.IsValid() {
		return []byte(f.Network.String()), nil
	}
	return []byte(f.Domain), nil
}

// ListenSpec is a milter socket in Postfix's spelling ("unix:/path",
// "inet:host:port", "inet6:[::1]:port"), or sendmail's ("inet:port@host",
// "local:/path").
type ListenSpec struct {
	Network string // "unix" or "tcp"
	Address string
}

func (l *ListenSpec) UnmarshalText(b []byte) error {
	v, err := parseListen(string(b))
	if err != nil {
		return err
	}
	*l = v
	return nil
}

func (l *ListenSpec) Set(s string) error { return l.UnmarshalText([]byte(s)) }
func (l *ListenSpec) String() string {
	if l == nil {
		return ""
	}
	if l.Network == "unix" {
		return "unix:" + l.Address
	}
	return "inet:" + l.Address
}

func parseListen(s string) (ListenSpec, error) {
	kind, rest, ok := strings.Cut(s, ":")
	if !ok || rest == "" {
		return ListenSpec{}, fmt.Errorf("invalid listen address %q (want unix:PATH or inet:HOST:PORT)", s)
	}
	switch strings.ToLower(kind) {
	case "unix", "local":
		if !strings.HasPrefix(rest, "/") {
			return ListenSpec{}, fmt.Errorf("invalid listen address %q: unix socket path must be absolute", s)
		}
		return ListenSpec{Network: "unix", Address: rest}, nil
	case "inet", "inet6", "tcp":
		var host, port string
		if p, h, ok := strings.Cut(rest, "@"); ok { // sendmail: inet:port@host
			host, port = h, p
		} else {
			i := strings.LastIndex(rest, ":")
			if i < 0 {
				return ListenSpec{}, fmt.Errorf("invalid listen address %q: no port", s)
			}
			host, port = rest[:i], rest[i+1:]
		}
		host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
			return ListenSpec{}, fmt.Errorf("invalid listen address %q: bad port %q", s, port)
		}
		if host == "" {
			host = "127.0.0.1"
		}
		return ListenSpec{Network: "tcp", Address: joinHostPort(host, port)}, nil
	}
	return ListenSpec{}, fmt.Errorf("invalid listen address %q: unknown type %q (want unix or inet)", s, kind)
}

func joinHostPort(host, port string) string {
	if strings.Contains(host, ":") {
		return "[" + host + "]:" + port
	}
	return host + ":" + port
}

// LoopbackAddr is "" or a "host:port" whose host is a loopback address.
// (A struct, not a string type: go-toml assigns strings to string kinds
// without calling UnmarshalText.)
type LoopbackAddr struct{ Addr string }

func (a *LoopbackAddr) UnmarshalText(b []byte) error {
	s := string(b)
	if s == "" {
		a.Addr = ""
		return nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("invalid address %q (want HOST:PORT)", s)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return fmt.Errorf("invalid port in %q", s)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("%q is not a loopback address", s)
	}
	a.Addr = s
	return nil
}

func (a *LoopbackAddr) Set(s string) error { return a.UnmarshalText([]byte(s)) }
func (a *LoopbackAddr) String() string {
	if a == nil {
		return ""
	}
	return a.Addr
}

// checkRejectText accepts printable ASCII (it goes into an SMTP reply line)
// with no placeholder but {domain}.
func checkRejectText(s string) error {
	if s == "" {
		return errors.New("must not be empty")
	}
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] > '~' {
			return fmt.Errorf("holds a character that cannot go into an SMTP reply (byte %d)", i)
		}
	}
	rest := strings.NewReplacer("{domain}", "", "{evidence}", "").Replace(s)
	if i := strings.IndexAny(rest, "{}"); i >= 0 {
		end := strings.IndexByte(rest[i:], '}')
		if end < 0 {
			end = len(rest) - i - 1
		}
		return fmt.Errorf("unknown placeholder %q (the only ones are {domain} and {evidence})", rest[i:i+end+1])
	}
	return nil
}

// checkARCSealers checks trusted_arc_sealers: domain names.
func checkARCSealers(c *Config) error {
	for i, d := range c.TrustedARCSealers {
		n, err := dmarc.NormalizeDomain(d)
		if err != nil || !strings.Contains(n, ".") {
			return fmt.Errorf("%q is not a domain name", d)
		}
		c.TrustedARCSealers[i] = n
	}
	return nil
}

// lineOfKey returns the line (1-based) of "key = ..." in a TOML file, 0 if
// it is not there.
func lineOfKey(data []byte, key string) int {
	for i, l := range bytes.Split(data, []byte("\n")) {
		k, _, ok := bytes.Cut(l, []byte("="))
		if ok && strings.Trim(string(bytes.TrimSpace(k)), `"'`) == key {
			return i + 1
		}
	}
	return 0
}
