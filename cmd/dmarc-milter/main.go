// Command dmarc-milter is a milter for Postfix (smtpd_milters) that checks
// SPF (RFC 7208), verifies DKIM (RFC 6376) and evaluates DMARC (RFC 9989) for
// every message, applies the sending domain's policy and stamps an
// Authentication-Results header field (RFC 8601).
//
// Usage:
//
//	dmarc-milter serve [--config FILE] [flags]
//	dmarc-milter --version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/rs/zerolog"

	"github.com/dmarc-milter/dmarc-milter/milter"
	"github.com/dmarc-milter/dmarc-milter/policy"
	"github.com/dmarc-milter/dmarc-milter/policy/dkim"
	"github.com/dmarc-milter/dmarc-milter/report"
	"github.com/dmarc-milter/dmarc-milter/report/aggregate"
	"github.com/dmarc-milter/dmarc-milter/report/outbox"
	"github.com/dmarc-milter/dmarc-milter/resolver"
	"github.com/dmarc-milter/dmarc-milter/session"
)

// Set at build time: -ldflags "-X main.version=1.2.3 -X main.commit=abc".
var (
	version = "dev"
	commit  = ""
)

// dkimKeyCacheSize is how many parsed DKIM keys are kept: the keys of the
// busiest signers, each a few hundred bytes.
const dkimKeyCacheSize = 2000

const usage = `usage: dmarc-milter serve [--config FILE] [flags]
       dmarc-milter report aggregate [--config FILE] --from DATE --until DATE [--domain D] [--out DIR] [--send]
       dmarc-milter spool list | show ID | retry ID | drop ID [--config FILE] [--json]
       dmarc-milter check DOMAIN [--selector S ...] [--config FILE] [--json]
       dmarc-milter eval [--config FILE] [--ip IP] [--helo NAME] [--mail-from ADDR] [--json] [FILE.eml | -]
       dmarc-milter --version

Run "dmarc-milter serve -h" for the flags.`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is main without the exit, for tests. Exit status: 0 after a clean
// shutdown, 2 for usage and configuration errors, 1 for runtime failures.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, usage)
		return 2
	}
	switch args[0] {
	case "--version", "-version", "version":
		fmt.Fprintf(stdout, "dmarc-milter %s\n", versionString())
		return 0
	case "serve":
		return serve(args[1:], stdout, stderr)
	case "check":
		return checkCommand(args[1:], stdout, stderr)
	case "eval":
		return evalCommand(args[1:], stdout, stderr)
	case "spool":
		return spoolCommand(args[1:], stdout, stderr)
	case "report":
		if len(args) > 1 && args[1] == "aggregate" {
			return reportAggregate(args[2:], stdout, stderr)
		}
		fmt.Fprintf(stderr, "dmarc-milter: report: unknown report kind (want: report aggregate)\n%s\n", usage)
		return 2
	case "-h", "--help", "-help", "help":
		// Asked for: the answer goes to stdout (dmarc-milter --help | less).
		fmt.Fprintln(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "dmarc-milter: unknown command %q\n%s\n", args[0], usage)
	return 2
}

func versionString() string {
	c := commit
	if c == "" {
		if bi, ok := debug.ReadBuildInfo(); ok {
			for _, s := range bi.Settings {
				if s.Key == "vcs.revision" {
					c = s.Value
				}
			}
		}
	}
	if c == "" {
		c = "unknown"
	}
	return fmt.Sprintf("%s (commit %s)", version, c)
}

// parseFlags builds the configuration: defaults, then the file named by
// --config, then the flags that were given.
func parseFlags(args []string, stderr io.Writer) (Config, error) {
	cfg := newConfig(fqdn(hostName(), lookupCNAME))

	fs := flag.NewFlagSet("dmarc-milter serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "TOML configuration `file`")
	flags := bindFlags(fs)
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}

	if *configPath != "" {
		if err := loadConfigFile(*configPath, &cfg); err != nil {
			return cfg, err
		}
	}

	var err error
	fs.Visit(func(fl *flag.Flag) {
		if v, ok := flags[fl.Name]; ok && err == nil {
			if e := v.apply(&cfg); e != nil {
				err = fmt.Errorf("--%s: %w", fl.Name, e)
			}
		}
	})
	if err != nil {
		return cfg, err
	}
	if key, err := cfg.validate(); err != nil {
		// Name the file and line when the value comes from the file.
		if *configPath != "" {
			if data, rerr := os.ReadFile(*configPath); rerr == nil {
				if line := lineOfKey(data, key); line > 0 {
					return cfg, &ConfigError{File: *configPath, Line: line, Key: key, Err: err}
				}
			}
		}
		return cfg, fmt.Errorf("%s: %w", key, err)
	}
	return cfg, nil
}

// levelWriter drops events below a level that SIGHUP can change for every
// copy of the logger at once.
type levelWriter struct {
	w     io.Writer
	level atomic.Int32
	// journal: stderr is a journald stream. Each line then starts with
	// its syslog priority ("<3>" for errors, sd-daemon(3)), which journald
	// reads (SyslogLevelPrefix=yes, its default) and strips; the rest of
	// the line stays JSON (or text). out is the stream the prefix goes to.
	journal bool
	out     io.Writer
	mu      sync.Mutex
}

func (l *levelWriter) Write(p []byte) (int, error) { return l.WriteLevel(zerolog.NoLevel, p) }

func (l *levelWriter) WriteLevel(level zerolog.Level, p []byte) (int, error) {
	if level != zerolog.NoLevel && level < zerolog.Level(l.level.Load()) {
		return len(p), nil
	}
	if !l.journal {
		return l.w.Write(p)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, err := io.WriteString(l.out, syslogPrefix(level)); err != nil {
		return 0, err
	}
	return l.w.Write(p)
}

// syslogPrefix is the sd-daemon(3) priority prefix of a level.
func syslogPrefix(level zerolog.Level) string {
	switch level {
	case zerolog.TraceLevel, zerolog.DebugLevel:
		return "<7>"
	case zerolog.WarnLevel:
		return "<4>"
	case zerolog.ErrorLevel:
		return "<3>"
	case zerolog.FatalLevel, zerolog.PanicLevel:
		return "<2>"
	}
	return "<6>"
}

// journalStream reports whether w is the stream systemd connected to
// journald: $JOURNAL_STREAM names its device and inode (systemd.exec(5)).
func journalStream(w io.Writer) bool {
	f, ok := w.(*os.File)
	js := os.Getenv("JOURNAL_STREAM")
	if !ok || js == "" {
		return false
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		return false
	}
	return js == fmt.Sprintf("%d:%d", st.Dev, st.Ino)
}

func (l *levelWriter) set(name string) {
	level, err := zerolog.ParseLevel(name)
	if err != nil || level == zerolog.NoLevel {
		level = zerolog.InfoLevel
	}
	l.level.Store(int32(level))
}

// newLogger is the daemon's logger: lines go to w (a batchWriter of
// stream, the process's stderr, which is checked for journald).
func newLogger(cfg Config, stream, w io.Writer) (zerolog.Logger, *levelWriter) {
	lw := &levelWriter{w: w, out: w, journal: journalStream(stream)}
	if cfg.LogFormat.Value == "text" {
		lw.w = zerolog.ConsoleWriter{Out: w, NoColor: true, TimeFormat: time.RFC3339}
	}
	lw.set(cfg.LogLevel.Value)
	return zerolog.New(lw).With().Timestamp().Logger(), lw
}

func serve(args []string, stdout, stderr io.Writer) int {
	if wantsHelp(args) {
		serveUsage(stdout)
		return 0
	}
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "dmarc-milter: %v\n", err)
		return 2
	}
	// Log lines are written in batches (logbatch.go), flushed on return.
	logOut := newBatchWriter(stderr, logFlushInterval)
	defer logOut.Flush()
	logger, levels := newLogger(cfg, stderr, logOut)
	procs := setGOMAXPROCS(cfg.GOMAXPROCS)
	gogc := setGOGC()
	// Libraries that log through the standard logger end up in ours.
	log.SetFlags(0)
	log.SetOutput(logger.With().Str("source", "stdlog").Logger())

	servers := cfg.DNS
	if len(servers) == 0 {
		servers, err = resolver.ServersFromResolvConf("/etc/resolv.conf")
		if err != nil {
			fmt.Fprintf(stderr, "dmarc-milter: no --dns given and %v\n", err)
			return 2
		}
	}
	res, err := resolver.New(resolver.Config{
		Servers:    servers,
		Timeout:    time.Duration(cfg.DNSTimeout),
		CacheSize:  cfg.DNSCacheSize,
		FailureTTL: failureTTL(cfg.DNSFailureTTL),
	})
	if err != nil {
		fmt.Fprintf(stderr, "dmarc-milter: dns: %v\n", err)
		return 2
	}

	ev := policy.New(policyConfig(cfg), res)

	// The store keeps aggregate report rows and claims, and (shared with
	// PostgreSQL) the failure-report limits. It connects when it can: mail
	// never waits for it.
	st := openStore(cfg, logger)
	if st != nil {
		defer st.Close()
	}

	// Reports are written to the outbox's spool and sent by its worker,
	// never in the milter's reply path. An outbox or reporter that cannot
	// start (unwritable spool, bad settings) is logged loudly and mail
	// flows without reports.
	out, err := outbox.New(outboxConfig(cfg), logger, nil)
	if err != nil {
		logger.Error().Err(err).Str("state_dir", cfg.StateDir).Msg("REPORTS DISABLED: cannot start the outbox; mail is still checked")
		out = nil
	}
	var reporter *report.Reporter
	if out != nil {
		if reporter, err = report.New(reportConfig(cfg), res, out, logger, nil); err != nil {
			logger.Error().Err(err).Msg("FAILURE REPORTS DISABLED: cannot start the reporter; mail is still checked")
			reporter = nil
		}
	}
	if reporter != nil && st != nil {
		reporter.UseLimiter(st, limitsName(st))
	}
	reportCtx, stopReports := context.WithCancel(context.Background())
	defer stopReports()
	reportsDone := make(chan struct{})
	settings := pipelineSettings(cfg, ev, res.LookupTXT, logger)
	settings.PrefetchTXT = res.PrefetchTXT
	settings.DKIMKeys = dkim.NewKeyCache(dkimKeyCacheSize)
	// Prometheus metrics: the session reports each message; the rest is
	// read from the parts at scrape time.
	src := &sources{res: res, outbox: out, reporter: reporter, store: st}
	met := newMetrics(src)
	settings.Metrics = met
	if reporter != nil {
		settings.Consumers = append(settings.Consumers, reporter)
		settings.KeepBody = reporter.KeepBody()
	}
	// The networks each domain's passing mail came from (RFC 9989 section
	// 7.4's observed sending patterns), kept in the store and loaded now.
	loadCtx, loaded := context.WithTimeout(context.Background(), 10*time.Second)
	known, n, err := knownSenders(loadCtx, ev, res, st, logger)
	loaded()
	if err != nil {
		logger.Warn().Err(err).Str("retry", known.LoadRetry.String()).
			Msg("cannot load the known sending networks from the store; starting without them, and trying again until it answers")
	} else if st != nil {
		logger.Info().Int("pairs", n).Msg("known sending networks loaded")
	}
	settings.Consumers = append(settings.Consumers, known)
	knownCtx, stopKnown := context.WithCancel(context.Background())
	defer stopKnown()
	knownDone := make(chan struct{})
	go func() { known.Run(knownCtx); close(knownDone) }()

	// Aggregate reports: every judged message is counted (in memory, then
	// in the store in batches), and the reports of ended periods are sent.
	// The Sender registers its claim check with the outbox before it runs.
	recordCtx, stopRecording := context.WithCancel(context.Background())
	defer stopRecording()
	recordDone := make(chan struct{})
	if out != nil && st != nil && cfg.AggregateReports {
		rec := aggregate.NewRecorder(st, time.Duration(cfg.AggregateInterval), time.Duration(cfg.AggregateFlushInterval),
			aggregateFacts(cfg), logger, nil)
		settings.Consumers = append(settings.Consumers, rec)
		src.recorder = rec
		go func() { rec.Run(recordCtx); close(recordDone) }()
		snd := aggregate.NewSender(aggregateConfig(cfg), st, out, res, logger, nil)
		go snd.Run(reportCtx)
		logger.Info().Str("store", st.Where).Str("interval", time.Duration(cfg.AggregateInterval).String()).Msg("aggregate reports on")
	} else {
		close(recordDone)
	}
	if out != nil {
		go func() { out.Run(reportCtx); close(reportsDone) }()
	} else {
		close(reportsDone)
	}
	srv := &milter.Server{
		NewHandler: session.NewHandler(settings),
		Log:        logger,
		Timeouts: milter.Timeouts{
			Idle:  time.Duration(cfg.IdleTimeout),
			Read:  time.Duration(cfg.ReadTimeout),
			Write: time.Duration(cfg.WriteTimeout),
		},
		Actions:    milter.DefaultActions,
		Recipients: cfg.AggregateReports && cfg.AggregateEnvelopeTo,
	}

	src.srv = srv
	if cfg.MetricsListen.Addr != "" {
		// Mail matters more than metrics: without the listener the
		// daemon runs on, saying so.
		if err := serveMetrics(cfg.MetricsListen.Addr, met, logger); err != nil {
			logger.Error().Err(err).Str("metrics_listen", cfg.MetricsListen.Addr).Msg("cannot serve metrics; running without them")
		}
	}
	if cfg.PprofListen.Addr != "" {
		if err := servePprof(cfg.PprofListen.Addr, logger); err != nil {
			logger.Error().Err(err).Str("pprof_listen", cfg.PprofListen.Addr).Msg("cannot serve pprof")
			return 1
		}
	}

	ln, err := listen(cfg)
	if err != nil {
		logger.Error().Err(err).Str("listen", cfg.Listen.String()).Msg("cannot listen")
		return 1
	}
	if why := notARealDomain(addressOf(cfg.ReportFrom)); why != "" && reporter != nil {
		logger.Warn().Str("report_from", cfg.ReportFrom).Str("why", why).
			Msg("report_from is not an address of a real domain: report receivers cannot reply to it or verify it; set report_from")
	}
	logger.Info().Str("listen", cfg.Listen.String()).Strs("dns", servers).
		Str("authserv_id", cfg.AuthservID).Str("version", versionString()).
		Bool("monitor", cfg.Monitor).Int("gomaxprocs", procs).Int("gogc", gogc).Msg("dmarc-milter ready")

	listening := cfg // what needs a restart stays as started
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	// systemd Type=notify: ready once the socket accepts connections.
	daemon.SdNotify(false, daemon.SdNotifyReady)

wait:
	for {
		select {
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				daemon.SdNotify(false, daemon.SdNotifyReloading)
				cfg = reload(args, cfg, listening, ev, out, reporter, logger, levels)
				daemon.SdNotify(false, daemon.SdNotifyReady)
				continue
			}
			logger.Info().Str("signal", sig.String()).Int("open_sessions", srv.ActiveConns()).Msg("shutting down; draining sessions")
			break wait
		case err := <-served:
			logger.Error().Err(err).Msg("milter server stopped")
			return 1
		}
	}
	daemon.SdNotify(false, daemon.SdNotifyStopping)
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(listening.ShutdownTimeout))
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		logger.Warn().Err(err).Msg("shutdown timeout; closed remaining sessions")
	}
	// Every session has ended: the last counts go to the store. Reports
	// already spooled stay there for the next start.
	stopRecording()
	<-recordDone
	stopKnown()
	<-knownDone
	stopReports()
	<-reportsDone
	if listening.Listen.Network == "unix" {
		os.Remove(listening.Listen.Address)
	}
	logger.Info().Msg("stopped")
	return 0
}

// reload re-reads the configuration file and flags (SIGHUP) and applies
// what can change without dropping connections: the local policy (networks,
// domain lists, actions, texts) and the log level. A bad file keeps the
// running configuration; settings that need a restart are named in the log
// whenever the file differs from what is running (running: the
// configuration the daemon started with), not from the previous reload.
func reload(args []string, old, running Config, ev *policy.Evaluator, out *outbox.Outbox, reporter *report.Reporter, logger zerolog.Logger, levels *levelWriter) Config {
	cfg, err := parseFlags(args, io.Discard)
	if err != nil {
		logger.Error().Err(err).Msg("reload failed; keeping the running configuration")
		return old
	}
	if out != nil {
		if err := out.SetConfig(outboxConfig(cfg)); err != nil {
			logger.Error().Err(err).Msg("reload failed: report relay settings; keeping the running configuration")
			return old
		}
	}
	if reporter != nil {
		if err := reporter.SetConfig(reportConfig(cfg)); err != nil {
			out.SetConfig(outboxConfig(old))
			logger.Error().Err(err).Msg("reload failed: report settings; keeping the running configuration")
			return old
		}
	}
	ev.SetConfig(policyConfig(cfg))
	levels.set(cfg.LogLevel.Value)
	restart := needRestart(running, cfg)
	e := logger.Info()
	if len(restart) > 0 {
		e = logger.Warn().Strs("need_restart", restart)
	}
	e.Str("authserv_id", cfg.AuthservID).Bool("monitor", cfg.Monitor).Msg("configuration reloaded")
	return cfg
}

// servePprof serves the runtime profiles on a loopback address, on a mux of
// its own (importing net/http/pprof for its side effect would register them
// on the default mux).
func servePprof(addr string, logger zerolog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	logger.Info().Str("pprof_listen", ln.Addr().String()).Msg("serving pprof profiles")
	return nil
}

// setGOMAXPROCS applies gomaxprocs (0: leave Go's default) unless the
// GOMAXPROCS environment variable is set, which wins, and returns the
// value in force. More than the CPUs there are is not asked for.
func setGOMAXPROCS(n int) int {
	if n > 0 && os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(min(n, runtime.NumCPU()))
	}
	return runtime.GOMAXPROCS(0)
}

// defaultGOGC is the garbage collector's target: the heap may grow to
// three times what is live between collections (Go's default is twice).
// The daemon's live heap is small (caches of bounded size, a few KB per
// message in flight), so this costs little memory and saved a tenth of
// the CPU per message (README, Speed).
const defaultGOGC = 200

// setGOGC applies defaultGOGC unless the GOGC environment variable is set,
// which wins, and returns the value in force.
func setGOGC() int {
	if v := os.Getenv("GOGC"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return -1 // "off" or malformed: the runtime's reading
		}
		return n
	}
	debug.SetGCPercent(defaultGOGC)
	return defaultGOGC
}

// failureTTL maps dns_failure_ttl to resolver.Config.FailureTTL, where
// zero means the default and a negative value turns caching off.
func failureTTL(d Duration) time.Duration {
	if d <= 0 {
		return -1
	}
	return time.Duration(d)
}

func policyConfig(cfg Config) policy.Config {
	pc := policy.Config{
		AuthservID:        cfg.AuthservID,
		Monitor:           cfg.Monitor,
		Quarantine:        policy.QuarantineMode(cfg.Quarantine.Value),
		TempErrorAccept:   cfg.TempError.Value == "accept",
		RejectBadFrom:     cfg.RejectBadFrom,
		RejectMultiAuthor: cfg.RejectMultiAuthor,
		RejectText:        cfg.RejectText,
		ExemptDomains:     cfg.ExemptDomains,
		RejectPolicy:      policy.RejectPolicy(cfg.RejectPolicy.Value),
		TrustedARCSealers: cfg.TrustedARCSealers,

		TrustedForwarderQuarantine: cfg.TrustedForwarderAction.Value == "quarantine",
	}
	for _, p := range cfg.TrustedNetworks {
		pc.TrustedNetworks = append(pc.TrustedNetworks, p.Prefix)
	}
	for _, f := range cfg.TrustedForwarders {
		if f.Network.IsValid() {
			pc.TrustedForwarders.Networks = append(pc.TrustedForwarders.Networks, f.Network)
		} else {
			pc.TrustedForwarders.Domains = append(pc.TrustedForwarders.Domains, f.Domain)
		}
	}
	return pc
}

// listen opens the milter socket. A stale unix socket (nobody listening) is
// replaced; a live one is an error. The socket gets cfg.SocketMode.
func listen(cfg Config) (net.Listener, error) {
	if cfg.Listen.Network != "unix" {
		return net.Listen("tcp", cfg.Listen.Address)
	}
	path := cfg.Listen.Address
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("%s is in use by another process", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("removing stale socket: %w", err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	if err := os.Chmod(path, os.FileMode(cfg.SocketMode)); err != nil {
		ln.Close()
		return nil, fmt.Errorf("chmod socket: %w", err)
	}
	return ln, nil
}
