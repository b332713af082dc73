package main

import (
	"os"
	"path/filepath"
	"time"

	"github.com/dmarc-milter/dmarc-milter/report"
)

// reportConfig maps the daemon's settings to the failure reporter's.
func reportConfig(cfg Config) report.Config {
	host, _ := os.Hostname()
	rc := report.Config{
		Enabled:              cfg.FailureReports,
		From:                 cfg.ReportFrom,
		ReportingMTA:         host,
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
		SMTP:                 cfg.ReportSMTP,
		SMTPUser:             cfg.ReportSMTPUser,
		SMTPPassword:         cfg.ReportSMTPPassword,
		StartTLS:             cfg.ReportStartTLS.Value,
		MaxAttempts:          cfg.ReportMaxAttempts,
		MinBackoff:           time.Duration(cfg.ReportMinBackoff),
		MaxBackoff:           time.Duration(cfg.ReportMaxBackoff),
		SpoolDir:             filepath.Join(cfg.StateDir, "spool", "failure"),
	}
	if rc.ReportingMTA == "" {
		rc.ReportingMTA = cfg.AuthservID
	}
	for _, p := range cfg.FailureReportExcludeNetworks {
		rc.ExcludeNetworks = append(rc.ExcludeNetworks, p.Prefix)
	}
	return rc
}
