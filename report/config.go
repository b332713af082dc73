package report

import (
	"cmp"
	"errors"
	"fmt"
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
}

// withDefaults returns c with zero values replaced by defaults.
func (c Config) withDefaults() Config {
	c.UserAgent = cmp.Or(c.UserAgent, DefaultUserAgent)
	c.Include = cmp.Or(c.Include, IncludeHeaders)
	c.MaxMessageSize = cmp.Or(c.MaxMessageSize, DefaultMaxMessageSize)
	c.AuthservID = cmp.Or(c.AuthservID, c.ReportingMTA)
	c.PerDestinationLimit = cmp.Or(c.PerDestinationLimit, DefaultPerDestinationLimit)
	c.PerDestinationWindow = cmp.Or(c.PerDestinationWindow, DefaultPerDestinationWindow)
	c.GlobalLimit = cmp.Or(c.GlobalLimit, DefaultGlobalLimit)
	c.GlobalWindow = cmp.Or(c.GlobalWindow, DefaultGlobalWindow)
	c.DedupWindow = cmp.Or(c.DedupWindow, DefaultDedupWindow)
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
	return nil
}
