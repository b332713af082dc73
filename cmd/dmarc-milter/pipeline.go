package main

import (
	"context"
	"time"

	"github.com/rs/zerolog"

	"github.com/dmarc-milter/dmarc-milter/policy"
	"github.com/dmarc-milter/dmarc-milter/policy/dmarc"
	"github.com/dmarc-milter/dmarc-milter/policy/senders"
	"github.com/dmarc-milter/dmarc-milter/report/aggregate"
	"github.com/dmarc-milter/dmarc-milter/report/store"
	"github.com/dmarc-milter/dmarc-milter/session"
)

// pipelineSettings are the message pipeline's settings for cfg, with ev
// and DKIM key lookups through lookupTXT. The daemon's sessions and eval
// both start from them, so that eval's verdict is the daemon's: the same
// header bounds, signature limit and check timeout. The daemon adds its
// caches, metrics and consumers.
func pipelineSettings(cfg Config, ev *policy.Evaluator, lookupTXT func(ctx context.Context, name string) ([]string, error), logger zerolog.Logger) session.Settings {
	return session.Settings{
		Evaluator:         ev,
		LookupTXT:         lookupTXT,
		MaxDKIMSignatures: cfg.MaxDKIMSignatures,
		CheckTimeout:      time.Duration(cfg.CheckTimeout),
		Log:               logger,
		MaxHeaderBytes:    cfg.MaxHeaderSize,
		MaxHeaderFields:   cfg.MaxHeaderFields,
		ARC:               len(cfg.TrustedARCSealers) > 0,
	}
}

// aggregateFacts are the options of aggregate report rows for cfg: the
// daemon's Recorder and eval use them both.
func aggregateFacts(cfg Config) aggregate.Facts {
	return aggregate.Facts{EnvelopeTo: cfg.AggregateEnvelopeTo, OwnAddress: addressOf(cfg.ReportFrom)}
}

// knownSenders is the memory of the networks each Organizational Domain's
// DMARC-passing mail came from, filled from st (nil: memory only), for
// ev's evidence step: the daemon's and eval's.
func knownSenders(ctx context.Context, ev *policy.Evaluator, res dmarc.Resolver, st *store.Store, logger zerolog.Logger) (*senders.Recorder, int, error) {
	set := senders.New(senders.MaxEntries, nil)
	ev.UseKnownSenders(set)
	var ss senders.Store
	if st != nil {
		ss = st
	}
	rec := senders.NewRecorder(set, res, ss, logger, nil)
	n, err := rec.Load(ctx)
	return rec, n, err
}
