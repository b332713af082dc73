package dmarc

import (
	"errors"
	"fmt"
	"io"
	"mime"
	"net/mail"
	"strings"
)

// Errors from FromDomain. They are wrapped with detail; test with errors.Is.
var (
	ErrNoFrom            = errors.New("dmarc: no From header")
	ErrMultipleFrom      = errors.New("dmarc: more than one From header")
	ErrMultipleAddresses = errors.New("dmarc: From header holds more than one address")
	ErrUnparseableFrom   = errors.New("dmarc: unparseable From header")
)

// FromDomain extracts the Author Domain (RFC 9989 Section 5.3.1) from the
// values of the message's From header fields (each the raw text after
// "From:", possibly folded with CRLF).
//
// Parsing is strict, since a message without exactly one well-formed
// RFC5322.From is outside DMARC's scope (RFC 9989 Section 4.2) and leniency
// here is a spoofing vector: there must be exactly one From field holding
// exactly one mailbox (RFC 5322 Section 3.6.2). The address is parsed with
// net/mail, so display names, comments, quoted local parts and encoded words
// never influence the domain. Group syntax ("name: addr;") is rejected
// because From is a mailbox-list in RFC 5322 and MUAs display groups
// inconsistently, even when the group holds a single mailbox. A
// domain-literal ("[192.0.2.1]") is rejected: DMARC needs a domain name.
//
// The domain is returned lower-case, without a trailing dot, with U-labels
// converted to A-labels (idna Lookup profile).
func FromDomain(fromHeaderValues []string) (string, error) {
	switch len(fromHeaderValues) {
	case 0:
		return "", ErrNoFrom
	case 1:
	default:
		return "", fmt.Errorf("%w (%d)", ErrMultipleFrom, len(fromHeaderValues))
	}
	v, err := unfold(fromHeaderValues[0])
	if err != nil {
		return "", err
	}
	if trimWSP(v) == "" {
		return "", fmt.Errorf("%w: empty", ErrUnparseableFrom)
	}
	v, err = stripCFWS(v)
	if err != nil {
		return "", err
	}
	if hasGroup(v) {
		return "", fmt.Errorf("%w: group syntax not allowed in From", ErrUnparseableFrom)
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
		return "", fmt.Errorf("%w: %v", ErrUnparseableFrom, err)
	}
	switch len(addrs) {
	case 0:
		return "", fmt.Errorf("%w: no address", ErrUnparseableFrom)
	case 1:
	default:
		return "", fmt.Errorf("%w (%d)", ErrMultipleAddresses, len(addrs))
	}
	// The local part may be quoted and contain "@"; the domain follows the
	// last one.
	at := strings.LastIndexByte(addrs[0].Address, '@')
	if at < 0 {
		return "", fmt.Errorf("%w: no domain in address", ErrUnparseableFrom)
	}
	domain := addrs[0].Address[at+1:]
	if strings.HasPrefix(domain, "[") {
		return "", fmt.Errorf("%w: domain literal %q", ErrUnparseableFrom, domain)
	}
	d, err := normalizeDomain(domain)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrUnparseableFrom, err)
	}
	return d, nil
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
	var b strings.Builder
	inQuote, inLiteral := false, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case (inQuote || inLiteral) && c == '\\' && i+1 < len(s):
			b.WriteByte(c)
			i++
			c = s[i]
		case inQuote:
			inQuote = c != '"'
		case inLiteral:
			inLiteral = c != ']'
		case c == '"':
			inQuote = true
		case c == '[':
			inLiteral = true
		case c == '(':
			depth, j := 0, i
			for ; j < len(s); j++ {
				if s[j] == '\\' {
					j++
					continue
				}
				if s[j] == '(' {
					depth++
				} else if s[j] == ')' {
					depth--
					if depth == 0 {
						break
					}
				}
			}
			if j >= len(s) {
				return "", fmt.Errorf("%w: unterminated comment", ErrUnparseableFrom)
			}
			i = j
			c = ' '
		case c == '<':
			b.WriteByte(c)
			for i+1 < len(s) && (s[i+1] == ' ' || s[i+1] == '\t') {
				i++
			}
			continue
		case c == '>':
			t := strings.TrimRight(b.String(), " \t")
			b.Reset()
			b.WriteString(t)
		}
		b.WriteByte(c)
	}
	return b.String(), nil
}

// hasGroup reports whether an address list uses group syntax: a ":" outside
// quoted strings, comments, angle brackets and domain literals.
func hasGroup(s string) bool {
	var inQuote bool
	var comment, angle, literal int
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\' && (inQuote || comment > 0 || literal > 0):
			i++ // Quoted pair.
		case inQuote:
			inQuote = c != '"'
		case comment > 0:
			switch c {
			case '(':
				comment++
			case ')':
				comment--
			}
		case c == '"':
			inQuote = true
		case c == '(':
			comment++
		case c == '[':
			literal++
		case c == ']' && literal > 0:
			literal--
		case literal > 0:
		case c == '<':
			angle++
		case c == '>' && angle > 0:
			angle--
		case c == ':' && angle == 0:
			return true
		}
	}
	return false
}
