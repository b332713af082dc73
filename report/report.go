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
//   - decide.go: which messages are reported on (Screen, Wanted), what the
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
	"github.com/dmarc-milter/dmarc-milter/policy/dmarc"
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

	// store, if set, holds the limits and the aggregate report claims.
	store *store.Store
	owner string
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
	if !cfg.spoolOn() {
		return rp, nil
	}
	if cfg.Enabled && cfg.Include == IncludeMessage {
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
	if cfg.spoolOn() {
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
	if cfg.spoolOn() && !old.spoolOn() {
		r.loadSpool() // reports left from before reports were turned off
	}
	return nil
}

// SpoolSize is how many reports wait in the spool.
func (r *Reporter) SpoolSize() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.pending)
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

// Run runs the sender that delivers spooled reports. It first picks up
// every report already in the spool. It returns as soon as ctx ends: a
// delivery under way is cut short and its report stays spooled.
func (r *Reporter) Run(ctx context.Context) error {
	// The loop runs even while reports are off, so that a reload that
	// turns them on (SetConfig) needs no restart.
	if r.spoolOn() {
		r.loadSpool()
	}
	r.sendLoop(ctx)
	return nil
}

// spoolOn: the spool and sender work (failure or aggregate reports on).
func (c *Config) spoolOn() bool { return c.Enabled || c.Aggregate }

func (r *Reporter) spoolOn() bool { return r.conf().spoolOn() }

// UseStore makes the Reporter share its failure-report limits and
// de-duplication through st (with PostgreSQL, across the fleet), and
// check, before it delivers a spooled aggregate report, that owner (this
// host) still holds that report's claim. Call it before Run.
func (r *Reporter) UseStore(st *store.Store, owner string) {
	r.store, r.owner = st, owner
}

// stillOwner reports whether this host may deliver a spooled aggregate
// report: it holds the report's claim in the store (marking it done if a
// crash came between spooling and marking). Without a store, or when the
// store cannot be reached (then the report is delivered: a duplicate is
// better than a loss), it is true.
func (r *Reporter) stillOwner(ctx context.Context, env envelope) bool {
	if r.store == nil {
		return true
	}
	ok, err := r.store.Done(ctx, store.Key{Period: env.Period, Domain: env.Domain}, r.owner, env.ReportID, r.now())
	if err != nil {
		r.log.Error().Err(err).Str("report_id", env.ReportID).Msg("cannot check the aggregate report's claim in the store; delivering it")
		return true
	}
	return ok
}

// SpoolAggregate writes one aggregate report for one recipient to the
// durable spool, to be delivered like failure reports (retries, backoff, a
// 5xx final). k and reportID name the report's claim in the store; a zero
// k.Period (a report resent by hand) is delivered without the check.
func (r *Reporter) SpoolAggregate(k store.Key, reportID, to string, msg []byte) error {
	now := r.now()
	env := envelope{
		ID:          newID(now),
		From:        r.envelopeFrom(),
		To:          to,
		Domain:      k.Domain,
		Created:     now,
		NextAttempt: now,
		Kind:        kindAggregate,
		Period:      k.Period,
		ReportID:    reportID,
	}
	return r.spoolEnvelope(env, msg)
}

// AggregateDestinations returns the addresses of the "mailto:" URIs of rua
// (RFC 9990 Section 4.5; other schemes are ignored) that may receive
// reports about policyDomain: all of its own organization's, and external
// ones that authorize it (the check failure reports make), at most max.
func (r *Reporter) AggregateDestinations(ctx context.Context, policyDomain string, rua []dmarc.URI, max int) []string {
	var out []string
	for _, d := range Destinations(rua) {
		if len(out) >= max {
			r.log.Info().Str("domain", policyDomain).Str("to", d.Address).Int("max", max).Msg("more aggregate report destinations than allowed; left out")
			continue
		}
		ok, err := r.authorized(ctx, policyDomain, d.Domain)
		if err != nil {
			r.log.Warn().Err(err).Str("domain", policyDomain).Str("to", d.Address).Msg("cannot verify external aggregate report destination; left out")
			continue
		}
		if !ok {
			r.log.Info().Str("domain", policyDomain).Str("to", d.Address).Msg("external aggregate report destination has not authorized reports for this domain; left out")
			continue
		}
		out = append(out, d.Address)
	}
	return out
}
