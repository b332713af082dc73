// Package rfc5322 holds the pieces of Internet Message Format (RFC 5322)
// handling that the session, policy, reports, eval and the load generator
// share: line ends, a message split as an MTA hands it to a milter, a
// header field rebuilt as received, and comments. Each is written once,
// here.
package rfc5322

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
)

// Field is one header field as an MTA hands it to a milter: the name, and
// the value after the colon with its leading white space and with folds
// as bare LF.
type Field struct {
	Name, Value string
}

// Split splits a message (CRLF or LF line ends) into its header fields and
// body as Postfix's cleanup does before it calls a milter: each value
// keeps its leading white space, continuation lines are joined with a
// bare LF, and the body has CRLF line ends. A message without a blank line
// is all header. A header line that is neither a field nor a continuation
// is an error, and so is a message without any field.
func Split(raw []byte) ([]Field, []byte, error) {
	raw = CRLF(raw)
	head, body, ok := bytes.Cut(raw, []byte("\r\n\r\n"))
	if !ok {
		head, body = bytes.TrimSuffix(raw, []byte("\r\n")), nil
	}
	var fields []Field
	for _, line := range strings.Split(string(head), "\r\n") {
		if len(fields) > 0 && (strings.HasPrefix(line, " ") || strings.HasPrefix(line, "\t")) {
			fields[len(fields)-1].Value += "\n" + line
			continue
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok || name == "" || strings.ContainsAny(name, " \t") {
			return nil, nil, fmt.Errorf("not a message: bad header line %q", line)
		}
		fields = append(fields, Field{Name: name, Value: value})
	}
	return fields, body, nil
}

// CRLF returns b with every bare LF line end turned into CRLF (RFC 5322
// Section 2.1); CRLF pairs are left alone. b itself is returned when it has
// no bare LF.
func CRLF(b []byte) []byte {
	bare := 0
	for i, c := range b {
		if c == '\n' && (i == 0 || b[i-1] != '\r') {
			bare++
		}
	}
	if bare == 0 {
		return b
	}
	out := make([]byte, 0, len(b)+bare)
	for i, c := range b {
		if c == '\n' && (i == 0 || b[i-1] != '\r') {
			out = append(out, '\r')
		}
		out = append(out, c)
	}
	return out
}

// RebuildField returns the header field as it appeared in the message, with
// CRLF line ends: name, ":", the value with its bare-LF folding turned into
// CRLF, and a final CRLF. When leadingSpace is false the MTA removed the
// space after the colon, and a single space is put back; the original bytes
// are then unknown and only relaxed DKIM header canonicalization is sure to
// verify.
//
// Postfix delivers header values to milters with "\n" between the lines of
// a folded field, and with SMFIP_HDR_LEADSPC keeps the leading whitespace
// byte-exactly, so the field is rebuilt exactly as signed, which simple
// header canonicalization (RFC 6376 Section 3.4.1) needs.
func RebuildField(name, value string, leadingSpace bool) string {
	var b strings.Builder
	b.Grow(len(name) + len(value) + 4 + strings.Count(value, "\n"))
	b.WriteString(name)
	if leadingSpace {
		b.WriteByte(':')
	} else {
		b.WriteString(": ")
	}
	for i := 0; i < len(value); i++ {
		c := value[i]
		if c == '\n' && (i == 0 || value[i-1] != '\r') {
			b.WriteByte('\r')
		}
		b.WriteByte(c)
	}
	b.WriteString("\r\n")
	return b.String()
}

// ErrUnterminatedComment is returned by StripComments for a "(" without
// its ")".
var ErrUnterminatedComment = errors.New("unterminated comment")

// StripComments replaces each comment of a header field value (RFC 5322
// Section 3.2.2: parentheses, nested, with quoted-pairs) by one space, as
// CFWS separates what surrounds it. Quoted strings and domain literals are
// kept as they are, parentheses and all. For an unterminated comment it
// returns what precedes the comment and ErrUnterminatedComment.
func StripComments(s string) (string, error) {
	if strings.IndexByte(s, '(') < 0 {
		return s, nil
	}
	return stripCFWS(s, false)
}

// StripAddressCFWS is StripComments for an address list that also removes
// the white space just inside angle brackets, where RFC 5322 Section 3.4
// allows CFWS around the addr-spec; it carries no meaning, and some parsers
// (net/mail) reject it.
func StripAddressCFWS(s string) (string, error) {
	return stripCFWS(s, true)
}

func stripCFWS(s string, angles bool) (string, error) {
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
				return b.String(), ErrUnterminatedComment
			}
			i = j
			c = ' '
		case angles && c == '<':
			b.WriteByte(c)
			for i+1 < len(s) && (s[i+1] == ' ' || s[i+1] == '\t') {
				i++
			}
			continue
		case angles && c == '>':
			t := strings.TrimRight(b.String(), " \t")
			b.Reset()
			b.WriteString(t)
		}
		b.WriteByte(c)
	}
	return b.String(), nil
}
