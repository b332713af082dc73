package main

import (
	"context"
	"errors"
	"net"
	"net/mail"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/dmarc-milter/dmarc-milter/report"
	"github.com/dmarc-milter/dmarc-milter/report/aggregate"
	"github.com/dmarc-milter/dmarc-milter/report/outbox"
	"github.com/dmarc-milter/dmarc-milter/report/store"
)

// reportingMTA is the host name reports give (Reporting-MTA, Message-ID,
// EHLO): the system's, else the authserv-id.
func reportingMTA(cfg Config) string {
	if host, _ := os.Hostname(); host != "" {
		return host
	}
	return cfg.AuthservID
}

// spoolDir is the outbox's directory; legacySpoolDirs are those of earlier
// versions, whose reports move there at start.
func spoolDir(cfg Config) string { return filepath.Join(cfg.StateDir, "spool") }

func legacySpoolDirs(cfg Config) []string {
	return []string{filepath.Join(cfg.StateDir, "spool", "failure")}
}

// outboxConfig maps the daemon's settings to the outbox's: the spool and
// the relay, for failure and aggregate reports alike.
func outboxConfig(cfg Config) outbox.Config {
	return outbox.Config{
		Dir:          spoolDir(cfg),
		Legacy:       legacySpoolDirs(cfg),
		From:         cfg.ReportFrom,
		Hello:        reportingMTA(cfg),
		SMTP:         cfg.ReportSMTP,
		SMTPUser:     cfg.ReportSMTPUser,
		SMTPPassword: cfg.ReportSMTPPassword,
		StartTLS:     cfg.ReportStartTLS.Value,
		MaxAttempts:  cfg.ReportMaxAttempts,
		MinBackoff:   time.Duration(cfg.ReportMinBackoff),
		MaxBackoff:   time.Duration(cfg.ReportMaxBackoff),
	}
}

// reportConfig maps the daemon's settings to the failure reporter's.
func reportConfig(cfg Config) report.Config {
	rc := report.Config{
		Enabled:              cfg.FailureReports,
		From:                 cfg.ReportFrom,
		ReportingMTA:         reportingMTA(cfg),
		AuthservID:           cfg.AuthservID,
		UserAgent:            "dmarc-milter/" + version,
		Include:              cfg.FailureReportInclude.Value,
		MaxMessageSize:       cfg.FailureReportMaxMessageSize,
		RedactLocalParts:     cfg.FailureReportRedact,
		AllowDomains:         cfg.FailureReportAllowDomains,
		DenyDomains:          cfg.FailureReportDenyDomains,
		PerDestinationLimit:  cfg.FailureReportPerDestination,
		PerDestinationWindow: time.Duration(cfg.FailureReportPerDestinationWindow),
		GlobalLimit:          cfg.FailureReportGlobal,
		GlobalWindow:         time.Duration(cfg.FailureReportGlobalWindow),
		DedupWindow:          time.Duration(cfg.FailureReportDedupWindow),
	}
	for _, p := range cfg.FailureReportExcludeNetworks {
		rc.ExcludeNetworks = append(rc.ExcludeNetworks, p.Prefix)
	}
	return rc
}

// openStore returns the store when aggregate reports are on or a shared
// store is configured for the failure-report limits (nil otherwise). The
// store connects lazily and retries (store.Store): one that is down at
// start, or goes down later, costs no mail and no rows while the memory
// buffer lasts, and is used again once it answers. It is tried once now,
// so that the log says at start whether it answers.
func openStore(cfg Config, logger zerolog.Logger) *store.Store {
	if !cfg.AggregateReports && (cfg.Store == "" || !cfg.FailureReports) {
		return nil
	}
	log := logger.With().Str("component", "store").Logger()
	var where string
	st, err := store.New(cfg.Store, cfg.StateDir, store.Options{Notify: func(e store.Event) {
		if errors.Is(e.Err, store.ErrFileReplaced) {
			log.Error().Str("store", where).Msg("the store file was deleted or replaced while open; recreated, and what follows is written there")
		}
	}})
	if err != nil {
		logger.Error().Err(err).Msg("AGGREGATE REPORTS DISABLED: bad store setting; mail is still checked")
		return nil
	}
	where = st.Where
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := st.Ping(ctx); err != nil {
		log.Error().Err(err).Str("store", st.Where).
			Msg("the store does not answer at start; aggregate report rows wait in memory and it is retried")
	}
	return st
}

// limitsName says whose failure-report limits st keeps, for logs.
func limitsName(st *store.Store) string {
	if st.Postgres() {
		return "shared by the fleet, in " + st.Where
	}
	return "this host's, in " + st.Where
}

// owner names this daemon in aggregate report claims: the host and its
// state directory (two daemons on one host have two), the same after a
// restart.
func owner(cfg Config) string {
	host, _ := os.Hostname()
	return host + ":" + cfg.StateDir
}

// addressOf is the address of report_from, lower case.
func addressOf(s string) string {
	a, err := mail.ParseAddress(s)
	if err != nil {
		return ""
	}
	return strings.ToLower(a.Address)
}

// aggregateConfig maps the daemon's settings to the aggregate sender's.
func aggregateConfig(cfg Config) aggregate.Config {
	from := addressOf(cfg.ReportFrom)
	submitter := from[strings.LastIndexByte(from, '@')+1:]
	org := cfg.ReportOrgName
	if org == "" {
		org = submitter
	}
	return aggregate.Config{
		Interval:        time.Duration(cfg.AggregateInterval),
		SendWindow:      time.Duration(cfg.AggregateSendWindow),
		MaxDestinations: cfg.AggregateMaxDestinations,
		MaxSize:         cfg.AggregateMaxSize,
		Retention:       time.Duration(cfg.AggregateRetentionDays) * 24 * time.Hour,
		From:            cfg.ReportFrom,
		Owner:           owner(cfg),
		Meta: aggregate.Meta{
			OrgName:          org,
			Email:            from,
			ExtraContactInfo: cfg.ReportContactInfo,
			Generator:        "dmarc-milter " + version,
			Submitter:        submitter,
		},
	}
}

// hostName is the system's host name, "localhost" if it has none.
func hostName() string {
	h, _ := os.Hostname()
	if h == "" {
		return "localhost"
	}
	return h
}

// lookupCNAME asks the system resolver (with its search domains) for a
// name's canonical name, within two seconds.
func lookupCNAME(name string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return net.DefaultResolver.LookupCNAME(ctx, name)
}

// fqdn is the fully qualified form of a host name without a dot (as
// "hostname -f" finds it, through the resolver and its search domains),
// the name itself when it has a dot or cannot be qualified. It fills the
// default authserv-id and report_from.
func fqdn(host string, lookup func(string) (string, error)) string {
	if strings.Contains(host, ".") {
		return host
	}
	if cname, err := lookup(host); err == nil {
		if c := strings.TrimSuffix(cname, "."); strings.Contains(c, ".") {
			return strings.ToLower(c)
		}
	}
	return host
}

// notARealDomain says why the domain of addr cannot receive replies or be
// verified by a report's receiver, "" if it looks like a public domain.
func notARealDomain(addr string) string {
	d := strings.ToLower(addr[strings.LastIndexByte(addr, '@')+1:])
	switch {
	case d == "":
		return "no domain"
	case !strings.Contains(d, "."):
		return "a host name without a domain"
	case d == "localhost" || strings.HasSuffix(d, ".localhost"), strings.HasSuffix(d, ".localdomain"),
		strings.HasSuffix(d, ".local"), strings.HasSuffix(d, ".internal"), strings.HasSuffix(d, ".lan"),
		strings.HasSuffix(d, ".home.arpa"), strings.HasSuffix(d, ".invalid"):
		return "a private or local domain"
	}
	return ""
}
