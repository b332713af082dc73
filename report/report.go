// Package report sends DMARC failure reports (RFC 9991): for a judged
// message whose authentication results match what the domain's DMARC record
// asks for in "fo" (RFC 9989 Section 4.7), it writes an Abuse Reporting
// Format message (RFC 5965) of feedback type auth-failure (RFC 6591, as
// updated by RFC 9991 Section 4) inside a multipart/report (RFC 6522) and
// mails it to the record's "ruf" destinations through an SMTP relay.
//
// A Reporter consumes the same policy.Judged message the session acted on,
// before the MTA gets its answer (Submit), and decides itself whether it
// wants it. The files follow one report's way:
//
//   - decide.go: which messages are reported on (exclude, Wanted), what the
//     report says about them (analyze: Auth-Failure, Identity-Alignment, the
//     signature described), which destinations may receive it (destinations,
//     authorized: RFC 9991 Section 5's external destination check);
//   - limit.go: rate limits and de-duplication;
//   - build.go and text.go: the report message (Build);
//   - spool.go: the durable spool, written before Submit returns;
//   - send.go: the sender loop, with retries and backoff.
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
	ReasonDuplicate      Reason = "duplicate"
	ReasonDestLimit      Reason = "destination-rate-limit"
	ReasonGlobalLimit    Reason = "global-rate-limit"
	ReasonTooBig         Reason = "too-big" // over the destination's !size
	ReasonBuildError     Reason = "build-error"
)

// Stats are the Reporter's counters since New. Suppressed counts messages
// (for reasons that concern the whole message) and destinations (for the
// per-destination reasons: unauthorized, duplicate, limits, too-big).
type Stats struct {
	Submitted   uint64
	Suppressed  map[Reason]uint64
	Spooled     uint64 // reports written to the spool
	SpoolErrors uint64 // reports lost because the spool could not be written
	Sent        uint64
	Retried     uint64 // delivery attempts that failed temporarily
	Dropped     uint64 // refused permanently, or out of attempts
}

// Reporter decides, builds, spools and sends failure reports.
type Reporter struct {
	cfg  atomic.Pointer[Config] // replaced by SetConfig
	res  Resolver
	log  zerolog.Logger
	now  func() time.Time
	wake chan struct{}
	// tmpPrefix names this Reporter's temporary spool files.
	tmpPrefix string
	keepBody  int

	mu      sync.Mutex
	stats   Stats
	pending map[string]*entry // spooled reports by id
	limits  limiter
	authz   map[string]authzEntry
}

// New returns a Reporter. With cfg.Enabled it checks the configuration and
// creates the spool directory, failing if it cannot write there (the caller
// should then log loudly and run without reports). A disabled Reporter
// counts every Submit as suppressed and sends nothing. now is the clock (nil:
// time.Now).
func New(cfg Config, r Resolver, log zerolog.Logger, now func() time.Time) (*Reporter, error) {
	cfg = cfg.withDefaults()
	if now == nil {
		now = time.Now
	}
	rp := &Reporter{
		res:  r,
		log:  log.With().Str("component", "failure-report").Logger(),
		now:  now,
		wake: make(chan struct{}, 1),
		// The prefix tells this instance's files in the making from a
		// crashed one's.
		tmpPrefix: tmpPrefix + newID(now()) + "-",
		pending:   map[string]*entry{},
		authz:     map[string]authzEntry{},
		stats:     Stats{Suppressed: map[Reason]uint64{}},
	}
	rp.cfg.Store(&cfg)
	if !cfg.Enabled {
		return rp, nil
	}
	if cfg.Include == IncludeMessage {
		rp.keepBody = cfg.MaxMessageSize
	}
	if err := cfg.check(); err != nil {
		return nil, err
	}
	if r == nil {
		return nil, errors.New("report: no resolver")
	}
	if err := prepareSpool(cfg.SpoolDir); err != nil {
		return nil, err
	}
	return rp, nil
}

// Config returns the configuration with defaults applied.
func (r *Reporter) Config() Config { return *r.cfg.Load() }

func (r *Reporter) conf() *Config { return r.cfg.Load() }

// SetConfig replaces the configuration (SIGHUP reload): switch, limits,
// lists, content and relay settings take effect for the next report; the
// spool directory stays as it was at New. On error the
// running configuration is kept.
func (r *Reporter) SetConfig(cfg Config) error {
	cfg = cfg.withDefaults()
	old := r.cfg.Load()
	cfg.SpoolDir = old.SpoolDir
	if cfg.Enabled {
		if err := cfg.check(); err != nil {
			return err
		}
		if r.res == nil {
			return errors.New("report: no resolver")
		}
		if err := prepareSpool(cfg.SpoolDir); err != nil {
			return err
		}
	}
	// Rate-limit and dedup history carries over: a reload is no way
	// around the limits.
	r.cfg.Store(&cfg)
	if cfg.Enabled && !old.Enabled {
		r.loadSpool() // reports left from before reports were turned off
	}
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
// one that does not returns after the cheap checks (exclude), which is
// where almost every message ends.
func (r *Reporter) Submit(j *policy.Judged) {
	if j == nil {
		return
	}
	r.count(func(s *Stats) { s.Submitted++ })
	cfg := r.conf()
	if !cfg.Enabled {
		r.suppress(ReasonDisabled)
		return
	}
	if reason := r.exclude(cfg, j); reason != "" {
		r.suppress(reason)
		if reason != ReasonNoPolicy && reason != ReasonNoDestination && reason != ReasonNotWanted {
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

// Run runs the sender that delivers spooled reports. It first picks up
// every report already in the spool. It returns as soon as ctx ends: a
// delivery under way is cut short and its report stays spooled.
func (r *Reporter) Run(ctx context.Context) error {
	// The loop runs even while reports are off, so that a reload that
	// turns them on (SetConfig) needs no restart.
	if r.conf().Enabled {
		r.loadSpool()
	}
	r.sendLoop(ctx)
	return nil
}
