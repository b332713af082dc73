// Package report sends DMARC failure reports (RFC 9991): for a message whose
// authentication results match what the domain's DMARC record asks for in
// "fo" (RFC 9989 Section 4.7), it writes an Abuse Reporting Format message
// (RFC 5965) of feedback type auth-failure (RFC 6591, as updated by RFC 9991
// Section 4) inside a multipart/report (RFC 6522), and mails it to the
// record's "ruf" destinations through an SMTP relay.
//
// # When a report is sent
//
// A report is considered for a message whose DMARC result is pass or fail
// under a DMARC Policy Record (temperror, permerror and "no record" never
// give reports), whatever the policy (p=none included), when the record's
// "fo" matches (Wanted): "0" (the default) when DMARC failed, i.e. no
// mechanism gave an aligned pass; "1" when SPF or DKIM did not give an
// aligned pass (a message without any DKIM signature matches); "d" when a
// DKIM signature failed to verify, aligned or not (results fail, permerror,
// policy and neutral; temperror is not a failure); "s" when SPF failed,
// aligned or not (fail, softfail, permerror).
//
// Never for: a record with psd=y (RFC 9991 Section 2); the null sender; a
// message with an Auto-Submitted field other than "no" (RFC 3834); a report
// (Content-Type multipart/report, a Subject starting "Report Domain:" as
// RFC 9990 aggregate reports have, or a From or MAIL FROM equal to our own
// report address); a message from an authenticated client or a trusted
// network or over a unix socket (policy.Exemption.Local: our
// own outgoing mail); a client in Config.ExcludeNetworks; a From domain
// in Config.DenyDomains or, when Config.AllowDomains is not empty, outside
// it (a listed domain covers its subdomains).
//
// # Destinations
//
// Only "mailto:" URIs of "ruf" are used (others are ignored); a URI may
// carry several addresses separated by commas. A destination whose domain
// has the same Organizational Domain as the policy domain (both found with
// dmarc.OrganizationalDomain, RFC 9989 Section 4.10.2) is used as is. An
// external one is used only if a TXT query for
// "<policy domain>._report._dmarc.<destination domain>" returns a record
// starting with "v=DMARC1" (RFC 9991 Section 5, RFC 9990 "Verifying
// External Destinations"); answers are cached for an hour, a DNS temporary
// error is not cached and leaves that destination out for this report. The
// legacy "!size" suffix is honoured: a report larger than it is rebuilt with
// the original header only, and if it is still larger that destination is
// skipped (reason too-big).
//
// # Report format
//
// One report message per destination, built with github.com/emersion/go-message
// (see Build): a text/plain part a person can read (domain, sending IP, what
// failed and why, what we did), the message/feedback-report part
// (Feedback-Type: auth-failure, User-Agent, Version: 1, Auth-Failure,
// Original-Mail-From, Arrival-Date, Reporting-MTA, Source-IP,
// Reported-Domain, Authentication-Results, Identity-Alignment,
// Delivery-Result, DKIM-Domain / DKIM-Identity / DKIM-Selector when a
// signature is involved, SPF-DNS when SPF failed for an aligned identifier)
// and the original header as text/rfc822-headers, or with Include
// "message" the whole message as message/rfc822 when its body is at most
// MaxMessageSize bytes (headers only otherwise). Subject: "DMARC failure
// report for <domain> from <ip>"; From and envelope sender: Config.From;
// Auto-Submitted: auto-generated.
//
// Auth-Failure is "dmarc" when fo "0" or "1" matched; for an fo "d" match
// alone it is "bodyhash", "revoked" or "signature" after the first failed
// signature; for an fo "s" match alone "spf".
//
// # Redaction
//
// With RedactLocalParts (after RFC 6590) the local part of every e-mail
// address is replaced by "redacted" in: Original-Mail-From, the MAIL FROM
// shown in the text part, DKIM-Identity, Authentication-Results, and every
// field of the attached header except the message identifiers (Message-ID,
// In-Reply-To, References, Content-ID, Resent-Message-ID). The body is then
// never attached (headers only). Domains are kept.
//
// # Abuse limits and defaults
//
// Identical failures (same source IP, From domain, failure kinds and
// destination) are sent once per DedupWindow; then each destination gets at
// most PerDestinationLimit reports per PerDestinationWindow, and all
// destinations together GlobalLimit per GlobalWindow (sliding windows).
// Suppressed reports are counted in Stats by Reason.
//
//	Enabled               false (failure reports are off unless switched on)
//	Include               "headers"
//	MaxMessageSize        65536 bytes (64 KiB)
//	UserAgent             "dmarc-milter"
//	PerDestinationLimit   10 per PerDestinationWindow 1h
//	GlobalLimit           300 per GlobalWindow 1h
//	DedupWindow           1h
//	SMTP                  "127.0.0.1:25"
//	StartTLS              "opportunistic" (used when offered, certificate not verified)
//	MaxAttempts           10
//	MinBackoff            1m, doubling per attempt up to MaxBackoff 1h
//	SMTPTimeout           2m for one delivery attempt
//
// A zero value means the default; a negative limit, window or DedupWindow
// turns that limit off.
//
// # Delivery
//
// Submit is called before the MTA gets its answer for the message, and
// returns only once the message's reports are durable: it makes the cheap
// checks above (a message that gets no report costs nothing more), then
// checks the destinations (DNS, bounded by reportLookupTimeout, mostly
// cached), applies the limits and de-duplication, builds the reports and
// writes each to the spool directory (one file per report and destination:
// a JSON envelope line with sender, recipient, attempts and next attempt
// time, then the message; written to a temporary name, fsynced, renamed
// into place, directory fsynced). There is no queue in memory: a burst of
// reportable mail is limited only by the configured limits, and a kill -9
// or SIGTERM after the MTA's answer loses no report. The sender loop delivers spooled reports over SMTP to
// Config.SMTP (go-smtp; STARTTLS per Config.StartTLS; AUTH PLAIN when
// SMTPUser is set, only over TLS or to a loopback relay). A 5xx reply to
// MAIL, RCPT or DATA drops the report at once (logged); any other failure
// (4xx, refused connection, timeout, TLS or AUTH failure) is retried with
// backoff, and after MaxAttempts attempts the report is logged and dropped.
// Attempt counts are rewritten into the spool file the same atomic way, so
// they survive restarts. On start Run tries everything found in the spool at
// once (keeping the attempt counts), so reports left by a crash or a kill -9
// are delivered. An unwritable spool or a dead relay is logged at error
// level and never delays mail.
package report

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-message/mail"
	"github.com/rs/zerolog"

	"github.com/dmarc-milter/dmarc-milter/policy"
	"github.com/dmarc-milter/dmarc-milter/policy/dmarc"
	"github.com/dmarc-milter/dmarc-milter/policy/spf"
)

// Defaults; see the package documentation.
const (
	DefaultMaxMessageSize       = 64 << 10
	DefaultUserAgent            = "dmarc-milter"
	DefaultPerDestinationLimit  = 10
	DefaultPerDestinationWindow = time.Hour
	DefaultGlobalLimit          = 300
	DefaultGlobalWindow         = time.Hour
	DefaultDedupWindow          = time.Hour
	DefaultSMTP                 = "127.0.0.1:25"
	DefaultMaxAttempts          = 10
	DefaultMinBackoff           = time.Minute
	DefaultMaxBackoff           = time.Hour
	DefaultSMTPTimeout          = 2 * time.Minute

	// externalCacheTTL is how long the answer of an external destination
	// check is kept.
	externalCacheTTL = time.Hour
	// reportLookupTimeout bounds the DNS work for one message's reports
	// (external destination checks, the SPF record for the text), done
	// before the MTA gets its answer. When it runs out the destinations
	// not checked yet are left out, logged.
	reportLookupTimeout = 3 * time.Second
)

// Include values.
const (
	IncludeHeaders = "headers" // text/rfc822-headers
	IncludeMessage = "message" // message/rfc822, up to MaxMessageSize
)

// StartTLS values.
const (
	StartTLSOpportunistic = "opportunistic"
	StartTLSRequired      = "required"
	StartTLSOff           = "off"
)

// Config configures failure reports. See the package documentation for
// the defaults.
type Config struct {
	// Enabled switches failure reports on.
	Enabled bool
	// From is the report address: From field and envelope sender. Required
	// when Enabled.
	From string
	// ReportingMTA is our host name: Reporting-MTA, Message-ID and EHLO.
	// Required when Enabled.
	ReportingMTA string
	// AuthservID is the authserv-id used when a Failure has no
	// Authentication-Results value of its own; ReportingMTA if empty.
	AuthservID string
	// UserAgent is the User-Agent field, e.g. "dmarc-milter/1.0".
	UserAgent string
	// Include is IncludeHeaders or IncludeMessage.
	Include string
	// MaxMessageSize is the largest body attached with IncludeMessage.
	MaxMessageSize int
	// RedactLocalParts replaces local parts of addresses (see the package
	// documentation).
	RedactLocalParts bool
	// AllowDomains, if not empty, are the only From domains (with their
	// subdomains) reported on; DenyDomains are never reported on.
	AllowDomains, DenyDomains []string
	// ExcludeNetworks are client networks never reported on.
	ExcludeNetworks []netip.Prefix

	PerDestinationLimit  int
	PerDestinationWindow time.Duration
	GlobalLimit          int
	GlobalWindow         time.Duration
	DedupWindow          time.Duration

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
	SMTPTimeout time.Duration

	MaxAttempts            int
	MinBackoff, MaxBackoff time.Duration

	// SpoolDir holds the reports waiting for delivery, normally
	// <state-dir>/spool/failure.
	SpoolDir string
}

// withDefaults returns c with zero values replaced by defaults.
func (c Config) withDefaults() Config {
	if c.UserAgent == "" {
		c.UserAgent = DefaultUserAgent
	}
	if c.Include == "" {
		c.Include = IncludeHeaders
	}
	if c.MaxMessageSize == 0 {
		c.MaxMessageSize = DefaultMaxMessageSize
	}
	if c.AuthservID == "" {
		c.AuthservID = c.ReportingMTA
	}
	if c.PerDestinationLimit == 0 {
		c.PerDestinationLimit = DefaultPerDestinationLimit
	}
	if c.PerDestinationWindow == 0 {
		c.PerDestinationWindow = DefaultPerDestinationWindow
	}
	if c.GlobalLimit == 0 {
		c.GlobalLimit = DefaultGlobalLimit
	}
	if c.GlobalWindow == 0 {
		c.GlobalWindow = DefaultGlobalWindow
	}
	if c.DedupWindow == 0 {
		c.DedupWindow = DefaultDedupWindow
	}
	if c.SMTP == "" {
		c.SMTP = DefaultSMTP
	}
	if c.StartTLS == "" {
		c.StartTLS = StartTLSOpportunistic
	}
	if c.SMTPTimeout <= 0 {
		c.SMTPTimeout = DefaultSMTPTimeout
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	if c.MinBackoff <= 0 {
		c.MinBackoff = DefaultMinBackoff
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = DefaultMaxBackoff
	}
	if c.MaxBackoff < c.MinBackoff {
		c.MaxBackoff = c.MinBackoff
	}
	return c
}

// check reports what is wrong with an enabled configuration.
func (c Config) check() error {
	if _, err := mail.ParseAddress(c.From); err != nil {
		return fmt.Errorf("report: bad report address %q: %w", c.From, err)
	}
	if c.ReportingMTA == "" {
		return errors.New("report: ReportingMTA (host name) is not set")
	}
	switch c.Include {
	case IncludeHeaders, IncludeMessage:
	default:
		return fmt.Errorf("report: Include must be %q or %q, not %q", IncludeHeaders, IncludeMessage, c.Include)
	}
	switch c.StartTLS {
	case StartTLSOpportunistic, StartTLSRequired, StartTLSOff:
	default:
		return fmt.Errorf("report: StartTLS must be %q, %q or %q, not %q", StartTLSOpportunistic, StartTLSRequired, StartTLSOff, c.StartTLS)
	}
	if _, _, err := net.SplitHostPort(c.SMTP); err != nil {
		return fmt.Errorf("report: bad SMTP relay address %q: %w", c.SMTP, err)
	}
	if c.SpoolDir == "" {
		return errors.New("report: SpoolDir is not set")
	}
	return nil
}

// Field is one header field as the MTA delivered it: the value with
// bare-LF folding, and its leading space kept if Failure.LeadingSpace.
type Field struct {
	Name, Value string
}

// Failure is everything known about one judged message. Submit takes
// ownership of it: the caller must not change it afterwards.
type Failure struct {
	QueueID    string
	Arrival    time.Time
	ClientIP   net.IP
	ClientHost string // from the MTA's reverse lookup, "" or "unknown" if none
	Helo       string
	MailFrom   string // as given in MAIL FROM, with or without angle brackets
	// Header holds the header fields as received, in order.
	Header []Field
	// HeaderTruncated says Header stops before the end of the message's
	// header (it outgrew what the milter keeps).
	HeaderTruncated bool
	// LeadingSpace says the values keep the space after the colon (milter
	// SMFIP_HDR_LEADSPC), so dkim.RebuildField restores them byte-exactly.
	LeadingSpace bool
	// Body is the message body for Include "message", nil otherwise. The
	// session keeps at most MaxMessageSize+1 bytes: a longer Body means the
	// body was cut, and the report then carries the header only.
	Body []byte
	// Verdict is the policy decision.
	Verdict policy.Verdict
	// AuthResults is our Authentication-Results value, "" if none was
	// stamped (e.g. a rejected message): then one is made from Verdict.
	AuthResults string
	// Action is what we did with the message; normally Verdict.Action.
	Action policy.Action

	// SPFRecords are the SPF records of the MAIL FROM domain, for the
	// SPF-DNS field. The Reporter looks them up when SPF failed for an
	// aligned identifier; callers of Build may set them.
	SPFRecords []string
}

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

// Submit hands a judged message to the Reporter, before the MTA gets its
// answer. It never fails: a message that warrants reports has them in the
// spool when Submit returns (see the package documentation); one that does
// not returns after the cheap checks.
func (r *Reporter) Submit(f *Failure) {
	if f == nil {
		return
	}
	r.count(func(s *Stats) { s.Submitted++ })
	if !r.conf().Enabled {
		r.suppress(ReasonDisabled)
		return
	}
	if reason := r.exclude(f); reason != "" {
		r.suppress(reason)
		r.log.Debug().Str("queue_id", f.QueueID).Str("reason", string(reason)).Msg("no failure report")
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), reportLookupTimeout)
	defer cancel()
	r.process(ctx, f)
}

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

// exclude makes the checks that need no DNS and returns why no report is
// wanted, "" if one may be.
func (r *Reporter) exclude(f *Failure) Reason {
	v := &f.Verdict
	rec := v.DMARC.Record
	switch {
	case rec == nil || v.FromErr != nil || v.FromDomain == "":
		return ReasonNoPolicy
	case v.DMARC.Status != dmarc.StatusPass && v.DMARC.Status != dmarc.StatusFail:
		return ReasonNoPolicy
	case rec.PSD == 'y':
		// RFC 9991 Section 2: ruf of psd=y records is not used.
		return ReasonPSD
	case isNullSender(f.MailFrom):
		return ReasonNullSender
	case v.Exempt.Local():
		return ReasonLocalClient
	}
	if ip, ok := netip.AddrFromSlice(f.ClientIP); ok {
		ip = ip.Unmap()
		for _, p := range r.conf().ExcludeNetworks {
			if p.Contains(ip) {
				return ReasonExcludedClient
			}
		}
	}
	if !r.domainReported(v.FromDomain) {
		return ReasonDomain
	}
	if autoSubmitted(f.Header) {
		return ReasonAutoSubmitted
	}
	if r.isReport(f) {
		return ReasonReportMessage
	}
	if _, ok := Wanted(f); !ok {
		return ReasonNotWanted
	}
	return ""
}

func (r *Reporter) domainReported(domain string) bool {
	if dmarc.InDomainList(domain, r.conf().DenyDomains) {
		return false
	}
	return len(r.conf().AllowDomains) == 0 || dmarc.InDomainList(domain, r.conf().AllowDomains)
}

func isNullSender(mailFrom string) bool {
	return spf.ReversePath(mailFrom) == ""
}

// autoSubmitted reports whether an Auto-Submitted field (RFC 3834 Section
// 5) says anything other than "no".
func autoSubmitted(h []Field) bool {
	for _, f := range h {
		if !strings.EqualFold(strings.TrimSpace(f.Name), "Auto-Submitted") {
			continue
		}
		v := policy.StripComments(f.Value)
		if i := strings.IndexByte(v, ';'); i >= 0 {
			v = v[:i]
		}
		if !strings.EqualFold(strings.TrimSpace(v), "no") {
			return true
		}
	}
	return false
}

// isReport reports whether the message is itself a report: multipart/report
// (DSNs, ARF, TLS reports), a DMARC aggregate report (RFC 9990 subject
// "Report Domain: ..."), or mail from our own report address.
func (r *Reporter) isReport(f *Failure) bool {
	own := ""
	if a, err := mail.ParseAddress(r.conf().From); err == nil {
		own = strings.ToLower(a.Address)
	}
	if own != "" && strings.EqualFold(spf.ReversePath(f.MailFrom), own) {
		return true
	}
	for _, h := range f.Header {
		name := strings.TrimSpace(h.Name)
		v := strings.TrimSpace(h.Value)
		switch {
		case strings.EqualFold(name, "Content-Type"):
			if strings.HasPrefix(strings.ToLower(strings.TrimSpace(policy.StripComments(v))), "multipart/report") {
				return true
			}
		case strings.EqualFold(name, "Subject"):
			if strings.HasPrefix(strings.ToLower(v), "report domain:") {
				return true
			}
		case strings.EqualFold(name, "From"), strings.EqualFold(name, "Sender"):
			if own == "" {
				continue
			}
			if as, err := mail.ParseAddressList(strings.ReplaceAll(v, "\n", "")); err == nil {
				for _, a := range as {
					if strings.EqualFold(a.Address, own) {
						return true
					}
				}
			}
		}
	}
	return false
}
