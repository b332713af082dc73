package dmarc

import (
	"errors"
	"fmt"
	"io"
	"mime"
	"net/mail"
	"slices"
	"strings"

	"github.com/dmarc-milter/dmarc-milter/internal/rfc5322"
)

// Errors from ParseFrom. They are wrapped with detail; test with errors.Is.
var (
	ErrNoFrom          = errors.New("dmarc: no From header")
	ErrMultipleFrom    = errors.New("dmarc: more than one From header")
	ErrUnparseableFrom = errors.New("dmarc: unparseable From header")
)

// Author is what the RFC5322.From field says about the message's authors.
type Author struct {
	// Domains are the distinct Author Domains (RFC 9989 Section 5.3.1), in
	// order of appearance: lower-case, without a trailing dot, U-labels
	// converted to A-labels (idna Lookup profile).
	Domains []string
	// Addresses is the number of mailboxes in the field.
	Addresses int
}

// ParseFrom extracts the Author Domains from the values of the message's
// From header fields (each the raw text after "From:", possibly folded
// with CRLF or LF).
//
// There must be exactly one From field (RFC 5322 Section 3.6); it holds a
// mailbox-list, and RFC 9989 Section 5.3.1 has a receiver evaluate every
// domain of a field with several authors (Evaluate once per domain; the
// caller applies the strictest result), so a second address can never
// carry a spoof through. The addresses are parsed with net/mail, so display
// names, comments, quoted local parts and encoded words never influence a
// domain. The obsolete route syntax "<@relay:user@domain>" (RFC 5322
// Section 4.4, which receivers must accept) is read as "<user@domain>":
// the route names no author. Group syntax ("name: addr;") is rejected:
// MUAs display groups inconsistently, even when the group holds a single
// mailbox. A domain-literal ("[192.0.2.1]") is rejected: DMARC needs a
// domain name.
func ParseFrom(fromHeaderValues []string) (Author, error) {
	switch len(fromHeaderValues) {
	case 0:
		return Author{}, ErrNoFrom
	case 1:
	default:
		return Author{}, fmt.Errorf("%w (%d)", ErrMultipleFrom, len(fromHeaderValues))
	}
	if d, ok := simpleFrom(fromHeaderValues[0]); ok {
		d, err := NormalizeDomain(d)
		if err != nil {
			return Author{}, fmt.Errorf("%w: %v", ErrUnparseableFrom, err)
		}
		return Author{Domains: []string{d}, Addresses: 1}, nil
	}
	return parseFrom(fromHeaderValues[0])
}

// parseFrom is ParseFrom for any one From value: unfolded, comments
// stripped, group and route syntax handled, then net/mail.
func parseFrom(value string) (Author, error) {
	v, err := unfold(value)
	if err != nil {
		return Author{}, err
	}
	if trimWSP(v) == "" {
		return Author{}, fmt.Errorf("%w: empty", ErrUnparseableFrom)
	}
	v, err = stripCFWS(v)
	if err != nil {
		return Author{}, err
	}
	if hasGroup(v) {
		return Author{}, fmt.Errorf("%w: group syntax not allowed in From", ErrUnparseableFrom)
	}
	v, err = stripObsRoute(v)
	if err != nil {
		return Author{}, err
	}
	p := mail.AddressParser{WordDecoder: &mime.WordDecoder{
		// Encoded words only occur in the display name, which is not used;
		// an unknown charset must not make the header unparseable.
		CharsetReader: func(charset string, input io.Reader) (io.Reader, error) {
			return input, nil
		},
	}}
	addrs, err := p.ParseList(v)
	if err != nil {
		return Author{}, fmt.Errorf("%w: %v", ErrUnparseableFrom, err)
	}
	if len(addrs) == 0 {
		return Author{}, fmt.Errorf("%w: no address", ErrUnparseableFrom)
	}
	a := Author{Addresses: len(addrs)}
	for _, addr := range addrs {
		// The local part may be quoted and contain "@"; the domain follows
		// the last one.
		at := strings.LastIndexByte(addr.Address, '@')
		if at < 0 {
			return Author{}, fmt.Errorf("%w: no domain in address", ErrUnparseableFrom)
		}
		domain := addr.Address[at+1:]
		if strings.HasPrefix(domain, "[") {
			return Author{}, fmt.Errorf("%w: domain literal %q", ErrUnparseableFrom, domain)
		}
		d, err := NormalizeDomain(domain)
		if err != nil {
			return Author{}, fmt.Errorf("%w: %v", ErrUnparseableFrom, err)
		}
		if !slices.Contains(a.Domains, d) {
			a.Domains = append(a.Domains, d)
		}
	}
	return a, nil
}

// simpleFrom reads the shapes of From value that nearly all mail has,
// without the general parser and its allocations: an addr-spec, or a
// display name and an angle address, with white space around. The
// addr-spec is a dot-atom local part, "@" and an ASCII host name; the
// display name is atoms (and dots) separated by white space, or one quoted
// string without escapes. Anything else is not simple (ok false) and goes
// to parseFrom: folding, comments, encoded words, non-ASCII, quoted local
// parts, several addresses, routes, groups, domain literals. Whenever ok,
// parseFrom gives the same domain (FuzzSimpleFrom); it returns that domain
// as written, for NormalizeDomain.
func simpleFrom(v string) (domain string, ok bool) {
	v = trimWSP(v)
	addr := v
	if strings.HasSuffix(v, ">") {
		lt := strings.IndexByte(v, '<')
		if lt < 0 || !simplePhrase(v[:lt]) {
			return "", false
		}
		addr = v[lt+1 : len(v)-1]
	}
	at := strings.IndexByte(addr, '@')
	if at < 0 || !dotAtom(addr[:at]) || !hostName(addr[at+1:]) {
		return "", false
	}
	return addr[at+1:], true
}

// simplePhrase reports whether p is empty, atoms and dots separated by
// white space, or one quoted string of printable ASCII and spaces without
// escapes, followed by optional white space. Encoded words ("=?") are
// left to net/mail.
func simplePhrase(p string) bool {
	p = strings.TrimRight(p, " \t")
	if strings.HasPrefix(p, `"`) {
		if len(p) < 2 || !strings.HasSuffix(p, `"`) {
			return false
		}
		for i := 1; i < len(p)-1; i++ {
			if c := p[i]; c < ' ' || c > '~' || c == '"' || c == '\\' {
				return false
			}
		}
		return true
	}
	if strings.Contains(p, "=?") {
		return false
	}
	for i := 0; i < len(p); i++ {
		if c := p[i]; !isAtext(c) && c != '.' && c != ' ' && c != '\t' {
			return false
		}
	}
	return true
}

// dotAtom reports whether s is an RFC 5322 dot-atom-text: atoms joined by
// single dots.
func dotAtom(s string) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' || strings.Contains(s, "..") {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isAtext(s[i]) && s[i] != '.' {
			return false
		}
	}
	return true
}

// hostName reports whether s is ASCII letters, digits and hyphens in
// labels joined by single dots, with no dot at the end.
func hostName(s string) bool {
	label := 0
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '.':
			if label == 0 {
				return false
			}
			label = 0
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-':
			label++
		default:
			return false
		}
	}
	return label > 0
}

// isAtext reports whether c is an RFC 5322 atext character.
func isAtext(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0
}

// stripObsRoute removes the obsolete source route of angle addresses
// (RFC 5322 Section 4.4, obs-angle-addr = "<" obs-route addr-spec ">",
// obs-route = obs-domain-list ":"), outside quoted strings. Comments are
// already gone (stripCFWS).
func stripObsRoute(s string) (string, error) {
	var b strings.Builder
	var err error
	skip := -1 // the route's last byte, ":"
	rfc5322.Walk(s, func(i int, ctx rfc5322.Context, _ bool) bool {
		if i <= skip {
			return true
		}
		if ctx == rfc5322.Plain && s[i] == '<' {
			j := i + 1
			for j < len(s) && (s[j] == ' ' || s[j] == '\t' || s[j] == ',') {
				j++
			}
			if j < len(s) && s[j] == '@' {
				end := strings.IndexAny(s[j:], ":>")
				if end < 0 || s[j+end] != ':' {
					err = fmt.Errorf("%w: unterminated route in angle address", ErrUnparseableFrom)
					return false
				}
				b.WriteByte('<')
				skip = j + end
				return true
			}
		}
		b.WriteByte(s[i])
		return true
	})
	if err != nil {
		return "", err
	}
	return b.String(), nil
}

// unfold undoes header folding (RFC 5322 Section 2.2.3): a CRLF (or bare LF)
// followed by WSP is removed. Any other CR or LF is an error.
func unfold(s string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '\r' && i+1 < len(s) && s[i+1] == '\n' {
			i++
			c = '\n'
		}
		if c == '\r' || c == '\n' {
			if i+1 < len(s) && (s[i+1] == ' ' || s[i+1] == '\t') {
				continue
			}
			if i+1 == len(s) {
				continue // Trailing line ending.
			}
			return "", fmt.Errorf("%w: line break not followed by whitespace", ErrUnparseableFrom)
		}
		b.WriteByte(c)
	}
	return b.String(), nil
}

// stripCFWS removes comments and the white space just inside angle
// brackets, outside quoted strings and domain literals. RFC 5322 allows CFWS
// there and it carries no meaning, but net/mail rejects some placements (a
// comment before an addr-spec, space before ">"). Removing it cannot change
// the address; it only lets valid headers parse.
func stripCFWS(s string) (string, error) {
	s, err := rfc5322.StripAddressCFWS(s)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrUnparseableFrom, err)
	}
	return s, nil
}

// hasGroup reports whether an address list uses group syntax: a ":" outside
// quoted strings, comments, angle brackets and domain literals.
func hasGroup(s string) bool {
	angle, group := 0, false
	rfc5322.Walk(s, func(i int, ctx rfc5322.Context, _ bool) bool {
		if ctx != rfc5322.Plain {
			return true
		}
		switch c := s[i]; {
		case c == '<':
			angle++
		case c == '>' && angle > 0:
			angle--
		case c == ':' && angle == 0:
			group = true
			return false
		}
		return true
	})
	return group
}

// InDomainList reports whether domain is one of the domains of list, or a
// subdomain of one. Names compare case-insensitively (RFC 9989 Section
// 4.4), trailing dots and surrounding white space in list entries are
// ignored, and empty entries match nothing. It is the one rule for the
// operator's domain lists (exempt domains, report allow and deny lists).
func InDomainList(domain string, list []string) bool {
	d := strings.ToLower(strings.TrimSuffix(domain, "."))
	for _, e := range list {
		e = strings.ToLower(strings.Trim(strings.TrimSpace(e), "."))
		if e != "" && (d == e || strings.HasSuffix(d, "."+e)) {
			return true
		}
	}
	return false
}
