package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/dmarc-milter/dmarc-milter/report/aggregate"
	"github.com/dmarc-milter/dmarc-milter/report/outbox"
	"github.com/dmarc-milter/dmarc-milter/report/store"
	"github.com/dmarc-milter/dmarc-milter/resolver"
)

// reportAggregate is "dmarc-milter report aggregate": it builds the
// aggregate reports of the periods that start in [--from, --until) from the
// store the configuration names, and writes each as XML and .xml.gz into
// --out (to preview them, or to resend by hand); with --send it also
// hands them to the daemon's spool (the running daemon picks them up
// within a minute), to every authorized rua address. It claims nothing:
// the daemon's own sends are not affected.
func reportAggregate(args []string, stdout, stderr io.Writer) int {
	fs, configPath := commandFlags("report aggregate", "the daemon's", stderr)
	fromText := fs.String("from", "", "first day or instant of the periods, `DATE` (YYYY-MM-DD or RFC 3339)")
	untilText := fs.String("until", "", "end (exclusive) of the periods, `DATE` (YYYY-MM-DD or RFC 3339)")
	domain := fs.String("domain", "", "only the reports of this policy `domain`")
	out := fs.String("out", ".", "`dir`ectory the reports are written to")
	send := fs.Bool("send", false, "also spool the reports for sending to their rua addresses")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	from, err1 := parseDate(*fromText)
	until, err2 := parseDate(*untilText)
	if err := errors.Join(err1, err2); err != nil || fs.NArg() > 0 {
		fmt.Fprintf(stderr, "dmarc-milter: report aggregate: --from and --until are required dates: %v\n", err)
		return 2
	}
	cfg, ok := commandConfig(*configPath, stderr)
	if !ok {
		return 2
	}
	ctx := context.Background()
	st, err := store.Open(ctx, cfg.Store, cfg.StateDir)
	if err != nil {
		fmt.Fprintf(stderr, "dmarc-milter: %v\n", err)
		return 1
	}
	defer st.Close()
	logger := zerolog.New(stderr).With().Timestamp().Logger()
	// With --send the reports go into the daemon's outbox; its running
	// sender delivers them (this command only spools).
	var ob *outbox.Outbox
	var res *resolver.Resolver
	if *send {
		if res, err = commandResolver(cfg); err == nil {
			ob, err = outbox.New(outboxConfig(cfg), logger, nil)
		}
		if err != nil {
			fmt.Fprintf(stderr, "dmarc-milter: %v\n", err)
			return 1
		}
	}
	snd := aggregate.NewSender(aggregateConfig(cfg), st, ob, res, logger, nil)
	keys, err := st.Keys(ctx, from, until, strings.ToLower(*domain))
	if err != nil {
		fmt.Fprintf(stderr, "dmarc-milter: %v\n", err)
		return 1
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		fmt.Fprintf(stderr, "dmarc-milter: %v\n", err)
		return 1
	}
	status := 0
	for _, k := range keys {
		rep, err := snd.Build(ctx, k)
		if err != nil {
			fmt.Fprintf(stderr, "dmarc-milter: %s: %v\n", k, err)
			status = 1
			continue
		}
		name := filepath.Join(*out, rep.FileName(aggregateConfig(cfg).Meta.Submitter))
		if err := os.WriteFile(strings.TrimSuffix(name, ".gz"), rep.XML, 0o644); err != nil {
			fmt.Fprintf(stderr, "dmarc-milter: %v\n", err)
			return 1
		}
		if err := os.WriteFile(name, rep.Gzip, 0o644); err != nil {
			fmt.Fprintf(stderr, "dmarc-milter: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "%s\t%s\t%d messages\t%d records\t%s\n", k.Domain, time.Unix(k.Period, 0).UTC().Format(time.RFC3339), rep.Messages, rep.Records, name)
		if !*send {
			continue
		}
		to, err := snd.Deliver(ctx, rep, false)
		if err != nil {
			fmt.Fprintf(stderr, "dmarc-milter: %s: %v\n", k, err)
			status = 1
		}
		for _, a := range to {
			fmt.Fprintf(stdout, "\tspooled to %s\n", a)
		}
	}
	if len(keys) == 0 {
		fmt.Fprintln(stderr, "dmarc-milter: no aggregate report rows in that time")
	}
	return status
}

// commandResolver is the resolver of a one-off command (report aggregate,
// check, eval): the configuration's upstream servers and timeout, without
// remembering failures (a command asks each name once).
func commandResolver(cfg Config) (*resolver.Resolver, error) {
	servers := cfg.DNS
	if len(servers) == 0 {
		var err error
		if servers, err = resolver.ServersFromResolvConf("/etc/resolv.conf"); err != nil {
			return nil, err
		}
	}
	return resolver.New(resolver.Config{Servers: servers, Timeout: time.Duration(cfg.DNSTimeout), FailureTTL: -1})
}

// parseDate reads YYYY-MM-DD (00:00 UTC) or RFC 3339.
func parseDate(s string) (time.Time, error) {
	if t, err := time.Parse("2006-01-02", s); err == nil {
		return t, nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is neither YYYY-MM-DD nor RFC 3339", s)
	}
	return t, nil
}

// commandFlags is the flag set of an operator command, name as "dmarc-milter
// NAME", writing its errors to stderr, with the --config flag every
// command has (the daemon's file, what of it the command reads said in
// what).
func commandFlags(name, what string, stderr io.Writer) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet("dmarc-milter "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs, fs.String("config", "", "TOML configuration `file` ("+what+")")
}

// commandConfig is loadConfig for an operator command: on error it says
// why on stderr and returns false (exit status 2).
func commandConfig(path string, stderr io.Writer) (Config, bool) {
	cfg, err := loadConfig(path)
	if err != nil {
		fmt.Fprintf(stderr, "dmarc-milter: %v\n", err)
		return Config{}, false
	}
	return cfg, true
}

// loadConfig is the configuration serve would run with, without flags.
func loadConfig(path string) (Config, error) {
	var args []string
	if path != "" {
		args = []string{"--config", path}
	}
	return parseFlags(args, io.Discard)
}
