// Package report sends DMARC failure reports (RFC 9991): for a judged
// message whose authentication results match what the domain's DMARC record
// asks for in "fo" (RFC 9989 Section 4.7), it writes an Abuse Reporting
// Format message (RFC 5965) of feedback type auth-failure (RFC 6591, as
// updated by RFC 9991 Section 4) inside a multipart/report (RFC 6522) and
// hands it, one message per "ruf" destination, to the outbox (package
// report/outbox), which delivers it through the SMTP relay.
//
// A Reporter consumes the same policy.Judged message the session acted on,
// before the MTA gets its answer (Submit), and decides itself whether it
// wants it. The files follow one report's way:
//
//   - decide.go: which messages are reported on (Screen, Wanted), what the
//     report says about them (analyze: Auth-Failure, Identity-Alignment, the
//     signature described), which destinations may receive it (destinations,
//     authorized: RFC 9991 Section 5's external destination check);
//   - limit.go: rate limits and de-duplication (Limiter: this host's in
//     memory, or the fleet's in the store);
//   - build.go and text.go: the report message (Build);
//   - process.go: one judged message to spooled reports, in the outbox
//     before Submit returns.
//
// The rules, limits and guarantees an administrator relies on are in the
// README ("Failure reports"); config.go holds the defaults.
package report

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/dmarc-milter/dmarc-milter/policy"
	"github.com/dmarc-milter/dmarc-milter/report/outbox"
	"github.com/dmarc-milter/dmarc-milter/report/store"
)

// Resolver is the DNS access reports need: the project's caching resolver.
// Errors should be *net.DNSError (IsNotFound for NXDOMAIN and NODATA).
type Resolver interface {
	LookupTXT(ctx context.Context, name string) ([]string, error)
}

// Reason is why a report was not sent.
type Reason string

// Reasons.
const (
	ReasonDisabled       Reason = "disabled"
	ReasonNoPolicy       Reason = "no-policy" // no record, or DMARC neither pass nor fail
	ReasonNotWanted      Reason = "fo-not-matched"
	ReasonPSD            Reason = "psd" // record with psd=y
	ReasonNullSender     Reason = "null-sender"
	ReasonAutoSubmitted  Reason = "auto-submitted"
	ReasonReportMessage  Reason = "report-message"
	ReasonLocalClient    Reason = "local-client" // authenticated or trusted network
	ReasonExcludedClient Reason = "excluded-network"
	ReasonDomain         Reason = "domain-not-reported" // deny list, or not in the allow list
	ReasonNoDestination  Reason = "no-destination"      // no mailto: URI in ruf
	ReasonUnauthorized   Reason = "unauthorized-destination"
	ReasonDuplicate      Reason = store.LimitDuplicate
	ReasonDestLimit      Reason = store.LimitDestination
	ReasonGlobalLimit    Reason = store.LimitGlobal
	ReasonTooBig         Reason = "too-big" // over the destination's !size
	ReasonBuildError     Reason = "build-error"
)

// Stats are the Reporter's counters since New. Suppressed counts messages
// (for reasons that concern the whole message) and destinations (for the
// per-destination reasons: unauthorized, duplicate, limits, too-big). The
// outbox's counters of failure reports come with them.
type Stats struct {
	Submitted  uint64
	Suppressed map[Reason]uint64
	// LimitFallbacks counts the destinations whose limits were this
	// host's because the store's did not answer in time.
	LimitFallbacks uint64
	outbox.Stats
}

// Kind is the outbox kind of failure reports.
const Kind = "failure"

// Reporter decides and builds failure reports, and spools them in the
// outbox.
type Reporter struct {
	cfg      atomic.Pointer[Config] // replaced by SetConfig
	res      Resolver
	out      *outbox.Outbox
	log      zerolog.Logger
	now      func() time.Time
	keepBody int

	// limiter applies the limits (local, or the store's when UseLimiter
	// gave one); local is the fallback when the store cannot be reached.
	limiter     Limiter
	limiterName string // what the limits are, for logs
	local       *MemoryLimiter

	mu    sync.Mutex
	stats Stats
	authz map[string]authzEntry
	// limitDown is when the store's limits stopped answering (zero while
	// they do); limitRetry when to ask again; limitAffected the messages
	// that used this host's limits meanwhile.
	limitDown, limitRetry time.Time
	limitAffected         uint64
}

// New returns a Reporter that spools its reports in out. With cfg.Enabled
// it checks the configuration (the caller should then log loudly and run
// without reports); a disabled Reporter counts every Submit as suppressed.
// out may be nil only while reports are disabled. now is the clock (nil:
// time.Now).
func New(cfg Config, r Resolver, out *outbox.Outbox, log zerolog.Logger, now func() time.Time) (*Reporter, error) {
	cfg = cfg.withDefaults()
	if now == nil {
		now = time.Now
	}
	rp := &Reporter{
		res:   r,
		out:   out,
		log:   log.With().Str("component", "failure-report").Logger(),
		now:   now,
		local: &MemoryLimiter{},
		authz: map[string]authzEntry{},
		stats: Stats{Suppressed: map[Reason]uint64{}},
	}
	rp.limiter = rp.local
	rp.cfg.Store(&cfg)
	if !cfg.Enabled {
		return rp, nil
	}
	if cfg.Include == IncludeMessage {
		rp.keepBody = cfg.MaxMessageSize
	}
	if err := rp.usable(cfg); err != nil {
		return nil, err
	}
	return rp, nil
}

// usable reports what keeps an enabled cfg from working.
func (r *Reporter) usable(cfg Config) error {
	if err := cfg.check(); err != nil {
		return err
	}
	if r.res == nil {
		return errors.New("report: no resolver")
	}
	if r.out == nil {
		return errors.New("report: no outbox")
	}
	return nil
}

// UseLimiter makes the Reporter apply its limits through l, the store's,
// which name says for logs (shared by the fleet with PostgreSQL; this
// host's, kept across restarts, with SQLite). Call it before the first
// Submit.
func (r *Reporter) UseLimiter(l Limiter, name string) { r.limiter, r.limiterName = l, name }

// Config returns the configuration with defaults applied.
func (r *Reporter) Config() Config { return *r.cfg.Load() }

func (r *Reporter) conf() *Config { return r.cfg.Load() }

// SetConfig replaces the configuration (SIGHUP reload): switch, limits,
// lists and content take effect for the next report. On error the running
// configuration is kept.
func (r *Reporter) SetConfig(cfg Config) error {
	cfg = cfg.withDefaults()
	if cfg.Enabled {
		if err := r.usable(cfg); err != nil {
			return err
		}
	}
	// Rate-limit and dedup history carries over: a reload is no way
	// around the limits.
	r.cfg.Store(&cfg)
	return nil
}

// Stats returns a copy of the counters.
func (r *Reporter) Stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.stats
	s.Suppressed = make(map[Reason]uint64, len(r.stats.Suppressed))
	for k, v := range r.stats.Suppressed {
		s.Suppressed[k] = v
	}
	if r.out != nil {
		s.Stats = r.out.Stats(Kind)
	}
	return s
}

func (r *Reporter) count(f func(*Stats)) {
	r.mu.Lock()
	f(&r.stats)
	r.mu.Unlock()
}

func (r *Reporter) suppress(reason Reason) {
	r.count(func(s *Stats) { s.Suppressed[reason]++ })
}

// Submit hands a judged message to the Reporter (session.Consumer), before
// the MTA gets its answer; j must not change afterwards. It never fails: a
// message that warrants reports has them in the spool when Submit returns;
// one that does not returns after the cheap checks (Screen), which is
// where almost every message ends.
func (r *Reporter) Submit(j *policy.Judged) {
	if j == nil {
		return
	}
	r.count(func(s *Stats) { s.Submitted++ })
	cfg := r.conf()
	if reason := Screen(cfg, j); reason != "" {
		r.suppress(reason)
		if reason != ReasonDisabled && reason != ReasonNoPolicy && reason != ReasonNoDestination && reason != ReasonNotWanted {
			r.log.Debug().Str("queue_id", j.QueueID).Str("reason", string(reason)).Msg("no failure report")
		}
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), reportLookupTimeout)
	defer cancel()
	r.process(ctx, j)
}

// KeepBody is how many body bytes the session must keep for the reports
// (session.Settings.KeepBody): MaxMessageSize when whole messages are
// attached, else none. It follows the configuration given to New; a reload
// does not change it.
func (r *Reporter) KeepBody() int { return r.keepBody }
