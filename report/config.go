package report

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/emersion/go-message/mail"
)

// Defaults, for zero fields of Config.
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
	// Aggregate says aggregate reports (package aggregate) go through this
	// Reporter's spool and sender: the spool and the sender then work
	// even with failure reports off.
	Aggregate bool
	// From is the report address: From field and envelope sender. Required
	// when Enabled.
	From string
	// ReportingMTA is our host name: Reporting-MTA, Message-ID and EHLO.
	// Required when Enabled.
	ReportingMTA string
	// AuthservID is the authserv-id used when a judged message has no
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
