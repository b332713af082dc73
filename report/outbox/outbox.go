// Package outbox is where every report dmarc-milter sends leaves from: a
// durable spool of messages, one file each, and the sender that delivers
// them through the SMTP relay, with retries and backoff. Failure reports
// (package report) and aggregate reports (package report/aggregate) each
// hand it finished messages (Put); it knows nothing of what they say.
//
// A message is durable when Put returns: written to a temporary file,
// fsynced, renamed, the directory fsynced. The sender takes each due
// message, asks the hook its kind registered (BeforeDelivery: aggregate
// reports check their claim in the store) and delivers it. A 5xx reply to
// MAIL, RCPT or DATA drops it, as does running out of attempts; any other
// failure is retried after MinBackoff, doubling up to MaxBackoff. A
// shutdown during a delivery leaves the message spooled for the next
// start.
//
// Spool files are <dir>/<id>.report: one line of JSON (the Envelope), then
// the message. List, Read, Retry and Drop are the spool commands; they are
// safe beside a running daemon.
package outbox

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-message/mail"
	"github.com/rs/zerolog"

	"github.com/dmarc-milter/dmarc-milter/internal/defaults"
)

// Defaults, for zero fields of Config.
const (
	DefaultSMTP        = "127.0.0.1:25"
	DefaultMaxAttempts = 10
	DefaultMinBackoff  = time.Minute
	DefaultMaxBackoff  = time.Hour
	DefaultSMTPTimeout = 2 * time.Minute
)

// StartTLS values.
const (
	StartTLSOpportunistic = "opportunistic"
	StartTLSRequired      = "required"
	StartTLSOff           = "off"
)

// Config configures the outbox.
type Config struct {
	// Dir is the spool directory, normally <state-dir>/spool. Legacy are
	// spool directories of earlier versions: the reports in them move to
	// Dir at New.
	Dir    string
	Legacy []string
	// From is the envelope sender, the report address ("Name <addr>" or
	// "addr"); Hello the EHLO name.
	From, Hello string
	// SMTP is the relay, host:port.
	SMTP string
	// SMTPUser and SMTPPassword enable AUTH PLAIN.
	SMTPUser, SMTPPassword string
	// StartTLS is StartTLSOpportunistic, StartTLSRequired or StartTLSOff.
	StartTLS string
	// TLS, if set, is the client TLS configuration for STARTTLS (e.g. root
	// CAs). With StartTLSRequired the relay's certificate is verified
	// against it (system roots if nil) and the SMTP host name;
	// opportunistic TLS does not verify certificates.
	TLS *tls.Config
	// SMTPTimeout bounds one delivery attempt.
	SMTPTimeout            time.Duration
	MaxAttempts            int
	MinBackoff, MaxBackoff time.Duration
}

func (c Config) withDefaults() Config {
	c.SMTP = cmp.Or(c.SMTP, DefaultSMTP)
	c.StartTLS = cmp.Or(c.StartTLS, StartTLSOpportunistic)
	c.SMTPTimeout = defaults.Positive(c.SMTPTimeout, DefaultSMTPTimeout)
	c.MaxAttempts = defaults.Positive(c.MaxAttempts, DefaultMaxAttempts)
	c.MinBackoff = defaults.Positive(c.MinBackoff, DefaultMinBackoff)
	c.MaxBackoff = max(defaults.Positive(c.MaxBackoff, DefaultMaxBackoff), c.MinBackoff)
	return c
}

func (c Config) check() error {
	if _, err := mail.ParseAddress(c.From); err != nil {
		return fmt.Errorf("outbox: bad report address %q: %w", c.From, err)
	}
	if c.Hello == "" {
		return errors.New("outbox: no EHLO name (host name)")
	}
	switch c.StartTLS {
	case StartTLSOpportunistic, StartTLSRequired, StartTLSOff:
	default:
		return fmt.Errorf("outbox: StartTLS must be %q, %q or %q, not %q", StartTLSOpportunistic, StartTLSRequired, StartTLSOff, c.StartTLS)
	}
	if _, _, err := net.SplitHostPort(c.SMTP); err != nil {
		return fmt.Errorf("outbox: bad SMTP relay address %q: %w", c.SMTP, err)
	}
	if c.Dir == "" {
		return errors.New("outbox: no spool directory")
	}
	return nil
}

// envelopeFrom is the address of From.
func (c *Config) envelopeFrom() string {
	if a, err := mail.ParseAddress(c.From); err == nil {
		return a.Address
	}
	return c.From
}

// Item is one message to send: Message to To, about Domain (for logs and
// the spool commands). Kind names the producer ("failure", "aggregate":
// its logs, its hook, its counters); QueueID is the MTA's ID of the
// message a failure report is about, Tag an opaque value for the kind's
// hook.
type Item struct {
	Kind, To, Domain, QueueID, Tag string
	Message                        []byte
}

// Stats are the outbox's counters, for one kind or all.
type Stats struct {
	Spooled     uint64 // messages written to the spool
	SpoolErrors uint64 // messages lost because the spool could not be written
	Sent        uint64
	Retried     uint64 // delivery attempts that failed temporarily
	Dropped     uint64 // refused permanently, out of attempts, or unreadable
}

type counters struct{ spooled, spoolErrors, sent, retried, dropped atomic.Uint64 }

func (c *counters) stats() Stats {
	return Stats{Spooled: c.spooled.Load(), SpoolErrors: c.spoolErrors.Load(), Sent: c.sent.Load(), Retried: c.retried.Load(), Dropped: c.dropped.Load()}
}

// Outbox is the spool and its sender. It is safe for concurrent use.
type Outbox struct {
	cfg  atomic.Pointer[Config]
	log  zerolog.Logger
	now  func() time.Time
	wake chan struct{}
	// tmpPrefix names this Outbox's temporary files.
	tmpPrefix string

	mu      sync.Mutex
	pending map[string]*entry // spooled messages by ID
	hooks   map[string]func(context.Context, Envelope) bool
	counts  map[string]*counters // by kind
}

// New returns an Outbox: it checks cfg, creates the spool directory (it
// must be writable) and moves the reports of cfg.Legacy into it. now is
// the clock (nil: time.Now).
func New(cfg Config, log zerolog.Logger, now func() time.Time) (*Outbox, error) {
	cfg = cfg.withDefaults()
	if err := cfg.check(); err != nil {
		return nil, err
	}
	if now == nil {
		now = time.Now
	}
	o := &Outbox{
		log:  log.With().Str("component", "outbox").Logger(),
		now:  now,
		wake: make(chan struct{}, 1),
		// The prefix tells this instance's files in the making from a
		// crashed one's.
		tmpPrefix: tmpPrefix + newID(now()) + "-",
		pending:   map[string]*entry{},
		hooks:     map[string]func(context.Context, Envelope) bool{},
		counts:    map[string]*counters{},
	}
	if err := prepareSpool(cfg.Dir); err != nil {
		return nil, err
	}
	for _, old := range cfg.Legacy {
		n, err := Migrate(old, cfg.Dir)
		if err != nil {
			o.log.Error().Err(err).Str("from", old).Str("to", cfg.Dir).Msg("cannot move the reports of an earlier spool directory")
		} else if n > 0 {
			o.log.Info().Int("count", n).Str("from", old).Str("to", cfg.Dir).Msg("reports moved from an earlier spool directory")
		}
	}
	o.cfg.Store(&cfg)
	return o, nil
}

// SetConfig replaces the relay settings (SIGHUP reload); the spool
// directory stays as it was at New. On error the running configuration is
// kept.
func (o *Outbox) SetConfig(cfg Config) error {
	cfg = cfg.withDefaults()
	cfg.Dir, cfg.Legacy = o.conf().Dir, nil
	if err := cfg.check(); err != nil {
		return err
	}
	o.cfg.Store(&cfg)
	return nil
}

// Config returns the configuration, defaults applied.
func (o *Outbox) Config() Config { return *o.conf() }

func (o *Outbox) conf() *Config { return o.cfg.Load() }

// BeforeDelivery registers f, called before each delivery of a message of
// kind: false drops the message unsent (logged by f). Call it before Run.
func (o *Outbox) BeforeDelivery(kind string, f func(ctx context.Context, e Envelope) bool) {
	o.mu.Lock()
	o.hooks[kind] = f
	o.mu.Unlock()
}

func (o *Outbox) counter(kind string) *counters {
	o.mu.Lock()
	defer o.mu.Unlock()
	c := o.counts[kind]
	if c == nil {
		c = &counters{}
		o.counts[kind] = c
	}
	return c
}

// Stats returns the counters of kind, or of every kind for "".
func (o *Outbox) Stats(kind string) Stats {
	if kind != "" {
		return o.counter(kind).stats()
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	var s Stats
	for _, c := range o.counts {
		k := c.stats()
		s.Spooled += k.Spooled
		s.SpoolErrors += k.SpoolErrors
		s.Sent += k.Sent
		s.Retried += k.Retried
		s.Dropped += k.Dropped
	}
	return s
}

// Size is how many messages wait in the spool.
func (o *Outbox) Size() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.pending)
}

// Put writes one message to the spool, durably, and tells the sender; the
// Envelope says its ID. An error means the message is not in the spool
// (counted as a spool error of its kind).
func (o *Outbox) Put(it Item) (Envelope, error) {
	cfg := o.conf()
	now := o.now()
	env := Envelope{
		ID: newID(now), Kind: it.Kind, From: cfg.envelopeFrom(), To: it.To, Domain: it.Domain,
		QueueID: it.QueueID, Tag: it.Tag, Created: now, NextAttempt: now,
	}
	path, err := spoolPath(cfg.Dir, env.ID)
	if err == nil {
		err = writeSpoolFile(path, o.tmpPrefix, env, it.Message)
	}
	if err != nil {
		o.counter(it.Kind).spoolErrors.Add(1)
		return env, fmt.Errorf("outbox: writing to the spool %s: %w", cfg.Dir, err)
	}
	o.mu.Lock()
	o.pending[env.ID] = &entry{env: env, path: path}
	o.mu.Unlock()
	o.counter(it.Kind).spooled.Add(1)
	select {
	case o.wake <- struct{}{}:
	default:
	}
	return env, nil
}

// Run delivers spooled messages until ctx ends. It first picks up every
// message already in the spool (removing the temporary files a crash left)
// and looks at the spool again every minute (messages spooled by another
// process, a "spool retry"). It returns as soon as ctx ends: a delivery
// under way is cut short and its message stays spooled.
func (o *Outbox) Run(ctx context.Context) {
	o.scanSpool(true)
	o.sendLoop(ctx)
}

// prepareSpool creates dir and checks that files can be written there.
func prepareSpool(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("outbox: spool directory: %w", err)
	}
	f, err := os.CreateTemp(dir, tmpPrefix+"probe-")
	if err != nil {
		return fmt.Errorf("outbox: spool directory %s is not writable: %w", dir, err)
	}
	name := f.Name()
	f.Close()
	if err := os.Remove(name); err != nil {
		return fmt.Errorf("outbox: spool directory %s: %w", dir, err)
	}
	return nil
}
