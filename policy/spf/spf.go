// Package spf evaluates Sender Policy Framework (RFC 7208) for the MAIL FROM
// and HELO identities of an SMTP session, with the check_host() function of
// blitiri.com.ar/go/spf.
//
// DNS goes through the resolver given to NewChecker. blitiri's library tells
// a temporary DNS failure (temperror, RFC 7208 section 5) from a missing
// record (none, section 4.3) by a type assertion on *net.DNSError, so the
// resolver must return that type unwrapped; resolver does.
package spf

import (
	"context"
	"net"
	"net/netip"
	"strings"

	blitiri "blitiri.com.ar/go/spf"
)

// Status is an SPF result (RFC 7208 section 2.6).
type Status string

// SPF results, RFC 7208 sections 8.1 to 8.7. The values are those used in
// Received-SPF and Authentication-Results headers.
const (
	None      Status = "none"
	Neutral   Status = "neutral"
	Pass      Status = "pass"
	Fail      Status = "fail"
	SoftFail  Status = "softfail"
	TempError Status = "temperror"
	PermError Status = "permerror"
)

// Identity names of RFC 7208 section 2, as in Authentication-Results
// (RFC 8601 section 2.7.2: smtp.mailfrom, smtp.helo).
const (
	IdentityMailFrom = "mailfrom"
	IdentityHelo     = "helo"
)

// Result is the outcome of one check_host() evaluation.
type Result struct {
	Status Status
	// Domain is the domain evaluated: the MAIL FROM domain, or the HELO
	// domain (for the HELO identity and for the null reverse-path).
	Domain string
	// Identity is IdentityMailFrom or IdentityHelo.
	Identity string
	// Err gives the reason of a TempError or PermError, and is nil
	// otherwise.
	Err error
}

// Checker runs SPF checks through a DNS resolver. It is safe for concurrent
// use if the resolver is.
type Checker struct {
	resolver blitiri.DNSResolver
}

// NewChecker returns a Checker doing its DNS lookups with r.
func NewChecker(r blitiri.DNSResolver) *Checker {
	return &Checker{resolver: r}
}

// ReversePath returns the address of a MAIL FROM reverse-path as given by
// the MTA, with or without its angle brackets (RFC 5321 section 4.1.2):
// white space and one pair of angle brackets removed; "" for the null
// reverse-path "<>". It is the one place that reads a MAIL FROM argument.
func ReversePath(mailFrom string) string {
	return strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(mailFrom), "<"), ">")
}

// CheckMailFrom evaluates the MAIL FROM identity (RFC 7208 section 2.4) of a
// client at ip that said helo. For the null reverse-path (mailFrom "" or
// "<>"), the identity is postmaster@<helo> and Domain is the HELO domain. A
// reverse-path without "@" is treated as a bare domain (section 4.3: the
// local-part defaults to "postmaster").
func (c *Checker) CheckMailFrom(ctx context.Context, ip net.IP, helo, mailFrom string) Result {
	sender := ReversePath(mailFrom)
	var domain string
	switch {
	case sender == "":
		// RFC 7208 section 2.4: "When the reverse-path is null, this
		// document defines the "MAIL FROM" identity to be the mailbox
		// composed of the local-part "postmaster" and the "HELO"
		// identity".
		domain = helo
		sender = "postmaster@" + helo
	case strings.Contains(sender, "@"):
		// The domain as blitiri's check_host() takes it: after the first
		// "@", or the HELO domain when that is empty.
		domain = sender[strings.IndexByte(sender, '@')+1:]
		if domain == "" {
			domain = helo
		}
	default:
		domain = sender
		sender = "postmaster@" + sender
	}
	return c.check(ctx, ip, helo, sender, domain, IdentityMailFrom)
}

// CheckHelo evaluates the HELO identity (RFC 7208 section 2.3) on its own.
// A HELO that is an address literal or not a fully qualified domain name
// gives None: section 2.3 applies the check only to domain names, and
// section 4.3 makes a name that is not a multi-label domain "none".
func (c *Checker) CheckHelo(ctx context.Context, ip net.IP, helo string) Result {
	h, ok := HeloDomain(helo)
	if !ok {
		return Result{Status: None, Domain: helo, Identity: IdentityHelo}
	}
	return c.check(ctx, ip, helo, "postmaster@"+h, h, IdentityHelo)
}

// HeloDomain returns the domain CheckHelo checks for helo, without a
// trailing dot; false when there is nothing to check (an address literal,
// an IP address, a name of one label).
func HeloDomain(helo string) (string, bool) {
	h := strings.TrimSuffix(helo, ".")
	if h == "" || strings.HasPrefix(h, "[") || isIP(h) || !strings.Contains(h, ".") {
		return "", false
	}
	return h, true
}

// MailFromDomain returns the domain of the MAIL FROM identity
// (reversePath as the MTA gives it), "" for the null sender.
func MailFromDomain(reversePath string) string {
	addr := ReversePath(reversePath)
	if at := strings.LastIndexByte(addr, '@'); at >= 0 {
		return strings.TrimSuffix(addr[at+1:], ".")
	}
	return ""
}

// isIP reports whether s is an IP address (without allocating, as
// net.ParseIP would).
func isIP(s string) bool {
	a, err := netip.ParseAddr(s)
	return err == nil && a.Zone() == "" // net.ParseIP takes no zone
}

func (c *Checker) check(ctx context.Context, ip net.IP, helo, sender, domain, identity string) Result {
	res, err := blitiri.CheckHostWithSender(ip, helo, sender,
		blitiri.WithResolver(c.resolver),
		blitiri.WithContext(ctx))
	r := Result{Status: Status(res), Domain: domain, Identity: identity}
	if r.Status == TempError || r.Status == PermError {
		r.Err = err
	}
	return r
}
