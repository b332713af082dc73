// Command milter-load is a load generator for milters (the Sendmail milter
// protocol, as Postfix speaks it): it opens N concurrent sessions over a
// unix or TCP socket, sends a corpus of messages (files, or generated with
// chosen sizes, sender domains and a share of DKIM-signed ones) for a time
// or a count, and reports messages per second, the outcomes, errors and the
// latency of each message from MAIL to the end-of-message reply (p50, p90,
// p99, max), as text or JSON.
//
//	milter-load --connect unix:/run/dmarc-milter/milter.sock --sessions 16 --duration 30s \
//	    --domains pass.example --dkim-key key.pem --dkim-selector sel1 --client-ip 192.0.2.10
//
// By default it behaves like Postfix 3.x (milter_protocol = 6): it offers
// Postfix's action and protocol masks, including the no-reply options and
// SMFIP_HDR_LEADSPC, sends the macros of Postfix's defaults and honours
// what the milter negotiated. --v2 offers only what protocol version 2
// allows, for milters built on go-milter's Server. Several --connect
// addresses form a chain: every event goes to each milter in order, as
// Postfix does with smtpd_milters = a, b.
//
// It uses github.com/emersion/go-milter's client.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// report is the JSON output.
type report struct {
	Targets         []string      `json:"targets"`
	Protocol        string        `json:"protocol"`
	Sessions        int           `json:"sessions"`
	PerConnection   int           `json:"messages_per_connection"`
	Seconds         float64       `json:"seconds"`
	Messages        int64         `json:"messages"`
	MessagesPerSec  float64       `json:"messages_per_second"`
	Accepted        int64         `json:"accepted"`
	Rejected        int64         `json:"rejected"`
	Tempfailed      int64         `json:"tempfailed"`
	Quarantined     int64         `json:"quarantined"`
	Discarded       int64         `json:"discarded"`
	Errors          int64         `json:"errors"`
	FirstError      string        `json:"first_error,omitempty"`
	LatencyMS       latencyReport `json:"latency_ms"`
	IdleConnections int           `json:"idle_connections,omitempty"`
}

type latencyReport struct {
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func newReport(cfg *config, st *stats, elapsed time.Duration) report {
	r := report{
		Protocol:      "v6 (postfix)",
		Sessions:      cfg.sessions,
		PerConnection: cfg.perConn,
		Seconds:       elapsed.Seconds(),
		Accepted:      st.counts[accepted],
		Rejected:      st.counts[rejected],
		Tempfailed:    st.counts[tempfailed],
		Quarantined:   st.counts[quarantined],
		Discarded:     st.counts[discarded],
		Errors:        st.counts[failed],
		LatencyMS: latencyReport{
			P50: ms(percentile(st.latencies, 50)),
			P90: ms(percentile(st.latencies, 90)),
			P99: ms(percentile(st.latencies, 99)),
			Max: ms(percentile(st.latencies, 100)),
		},
	}
	if cfg.v2 {
		r.Protocol = "v2"
	}
	for _, t := range cfg.targets {
		r.Targets = append(r.Targets, t.String())
	}
	r.Messages = int64(len(st.latencies))
	if elapsed > 0 {
		r.MessagesPerSec = float64(r.Messages) / elapsed.Seconds()
	}
	if st.firstErr != nil {
		r.FirstError = st.firstErr.Error()
	}
	return r
}

func (r report) writeText(w io.Writer) {
	fmt.Fprintf(w, "milter-load: %s, protocol %s, %d sessions, %d messages per connection\n",
		strings.Join(r.Targets, " -> "), r.Protocol, r.Sessions, r.PerConnection)
	fmt.Fprintf(w, "messages     %d in %.2fs = %.1f msg/s\n", r.Messages, r.Seconds, r.MessagesPerSec)
	fmt.Fprintf(w, "outcomes     accepted %d, rejected %d, tempfailed %d, quarantined %d, discarded %d\n",
		r.Accepted, r.Rejected, r.Tempfailed, r.Quarantined, r.Discarded)
	fmt.Fprintf(w, "errors       %d", r.Errors)
	if r.FirstError != "" {
		fmt.Fprintf(w, " (first: %s)", r.FirstError)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "latency      p50 %.2fms, p90 %.2fms, p99 %.2fms, max %.2fms\n",
		r.LatencyMS.P50, r.LatencyMS.P90, r.LatencyMS.P99, r.LatencyMS.Max)
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// cli parses args, runs and writes the report; it returns the exit status
// (0 ok, 1 errors during the run, 2 usage).
func cli(args []string, stdout, stderr io.Writer, interrupt <-chan os.Signal) int {
	fs := flag.NewFlagSet("milter-load", flag.ContinueOnError)
	fs.SetOutput(stderr)
	connect := fs.String("connect", "", "milter `address`: unix:/path or inet:host:port; a comma-separated list is a chain")
	sessions := fs.Int("sessions", 8, "concurrent milter connections")
	duration := fs.Duration("duration", 0, "run for this long (default 10s unless --count)")
	count := fs.Int64("count", 0, "send this many messages")
	perConn := fs.Int("messages-per-connection", 1, "messages per milter connection before it is closed and reopened (0: no limit), as Postfix reuses a connection for the messages of one SMTP session")
	corpusDir := fs.String("corpus", "", "`dir`ectory of .eml files (MAIL FROM is the From address)")
	gen := fs.Int("gen", 100, "distinct messages to generate when no --corpus is given")
	sizes := fs.String("sizes", "4k", "comma-separated sizes of generated messages (4k, 64k, 1m, ...)")
	domains := fs.String("domains", "pass.example", "comma-separated sender domains of generated messages")
	signed := fs.Float64("signed", -1, "share of generated messages with a DKIM signature, 0 to 1 (default 1 with --dkim-key, else 0)")
	dkimKey := fs.String("dkim-key", "", "PEM private key `file` to sign generated messages with")
	dkimDomain := fs.String("dkim-domain", "", "d= of generated signatures (default: each message's From domain)")
	dkimSelector := fs.String("dkim-selector", "sel1", "s= of generated signatures")
	clientIPs := fs.String("client-ip", "192.0.2.10", "comma-separated SMTP client addresses, used in turn per connection")
	helo := fs.String("helo", "mx.example", "HELO name of the SMTP client")
	rcpt := fs.String("rcpt", "rcpt@load.example", "envelope recipient")
	v2 := fs.Bool("v2", false, "offer only what milter protocol version 2 allows (for go-milter servers)")
	postfix := fs.Bool("postfix", false, "behave like Postfix 3.x, protocol version 6 (the default)")
	timeout := fs.Duration("timeout", 30*time.Second, "per read and write on the milter connection")
	idle := fs.Int("idle", 0, "open this many idle connections (connect and HELO sent) and hold them for --duration or until interrupted, instead of sending mail")
	asJSON := fs.Bool("json", false, "write the report as JSON")
	writeDir := fs.String("write-corpus", "", "write the messages to `dir` as .eml files with LF line endings (what smtp-source -F sends) and exit, instead of connecting")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	usage := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "milter-load: "+format+"\n", a...)
		return 2
	}
	if fs.NArg() > 0 {
		return usage("unexpected argument %q", fs.Arg(0))
	}
	// corpus loads --corpus or generates the messages; its errors are
	// usage errors.
	corpus := func() ([]*message, error) {
		if *corpusDir != "" {
			return loadCorpus(*corpusDir)
		}
		o := genOptions{count: *gen, domains: splitList(*domains), selector: *dkimSelector, sdid: *dkimDomain, signed: *signed}
		for _, s := range splitList(*sizes) {
			n, err := parseSize(s)
			if err != nil {
				return nil, fmt.Errorf("--sizes: %w", err)
			}
			o.sizes = append(o.sizes, n)
		}
		if *dkimKey != "" {
			var err error
			if o.signer, err = loadKey(*dkimKey); err != nil {
				return nil, fmt.Errorf("--dkim-key: %w", err)
			}
		}
		if o.signed < 0 {
			o.signed = 0
			if o.signer != nil {
				o.signed = 1
			}
		}
		if o.signed > 1 {
			return nil, errors.New("--signed must be between 0 and 1")
		}
		return generate(o)
	}
	if *writeDir != "" {
		msgs, err := corpus()
		if err != nil {
			return usage("%v", err)
		}
		if err := writeCorpus(*writeDir, msgs); err != nil {
			fmt.Fprintf(stderr, "milter-load: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "milter-load: wrote %d messages to %s\n", len(msgs), *writeDir)
		return 0
	}
	if *v2 && *postfix {
		return usage("--v2 and --postfix exclude each other")
	}
	cfg := &config{
		sessions:  *sessions,
		duration:  *duration,
		count:     *count,
		perConn:   *perConn,
		clientIPs: splitList(*clientIPs),
		helo:      *helo,
		rcpt:      *rcpt,
		v2:        *v2,
		timeout:   *timeout,
		idle:      *idle,
		interrupt: interrupt,
	}
	if *connect == "" {
		return usage("--connect is required")
	}
	for _, a := range splitList(*connect) {
		t, err := parseTarget(a)
		if err != nil {
			return usage("%v", err)
		}
		cfg.targets = append(cfg.targets, t)
	}
	if cfg.sessions <= 0 || len(cfg.clientIPs) == 0 || cfg.count < 0 || cfg.perConn < 0 {
		return usage("--sessions must be positive, --client-ip not empty, --count and --messages-per-connection not negative")
	}
	if cfg.duration == 0 && cfg.count == 0 {
		cfg.duration = 10 * time.Second
	}

	if cfg.idle > 0 {
		done := make(chan struct{})
		go func() {
			if cfg.duration > 0 {
				select {
				case <-time.After(cfg.duration):
				case <-interrupt:
				}
			} else {
				<-interrupt
			}
			close(done)
		}()
		cfg.onIdleReady = func() { fmt.Fprintf(stderr, "milter-load: %d idle connections open\n", cfg.idle) }
		n, err := holdIdle(cfg, done)
		r := report{Sessions: cfg.sessions, IdleConnections: n, Protocol: "v6 (postfix)"}
		if cfg.v2 {
			r.Protocol = "v2"
		}
		for _, t := range cfg.targets {
			r.Targets = append(r.Targets, t.String())
		}
		if err != nil {
			r.Errors, r.FirstError = 1, err.Error()
		}
		if *asJSON {
			json.NewEncoder(stdout).Encode(r)
		} else {
			fmt.Fprintf(stdout, "milter-load: held %d idle connections to %s\n", n, strings.Join(r.Targets, " -> "))
			if err != nil {
				fmt.Fprintf(stdout, "error: %v\n", err)
			}
		}
		if err != nil {
			return 1
		}
		return 0
	}

	var err error
	if cfg.corpus, err = corpus(); err != nil {
		return usage("%v", err)
	}

	st, elapsed, err := run(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "milter-load: %v\n", err)
		return 1
	}
	r := newReport(cfg, st, elapsed)
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(r)
	} else {
		r.writeText(stdout)
	}
	if r.Errors > 0 {
		return 1
	}
	return 0
}

func main() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	os.Exit(cli(os.Args[1:], os.Stdout, os.Stderr, sig))
}
