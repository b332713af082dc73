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
	WriteField(&b, name, value, leadingSpace)
	return b.String()
}

// WriteField writes the field RebuildField returns to b, for a caller that
// rebuilds a whole header into one buffer.
func WriteField(b *strings.Builder, name, value string, leadingSpace bool) {
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
	skipWSP := false
	end := Walk(s, func(i int, ctx Context, edge bool) bool {
		c := s[i]
		switch {
		case ctx == Comment:
			if edge && c == ')' {
				b.WriteByte(' ') // CFWS separates what surrounds it
			}
			return true
		case ctx != Plain:
		case skipWSP && (c == ' ' || c == '\t'):
			return true
		case angles && c == '<':
			b.WriteByte(c)
			skipWSP = true
			return true
		case angles && c == '>':
			t := strings.TrimRight(b.String(), " \t")
			b.Reset()
			b.WriteString(t)
		}
		skipWSP = false
		b.WriteByte(c)
		return true
	})
	if end == Comment {
		return b.String(), ErrUnterminatedComment
	}
	return b.String(), nil
}

// Context is where a byte of a header field value stands (RFC 5322
// Section 3.2): outside any construct, or in a quoted string, a comment
// or a domain literal.
type Context uint8

// Contexts.
const (
	Plain Context = iota
	Quoted
	Comment
	Literal
)

// Walk calls f with the index and context of each byte of s, in order,
// until f returns false, and returns the context it ended in (not Plain:
// s ends inside a construct). The delimiters belong to the construct they
// open or close ('"', '(' and ')' of every nesting level, '[' and ']');
// edge is set for the two that open and close it (the outermost
// parentheses of a comment);
// a quoted-pair ("\" and the byte after it) in a quoted string, comment
// or domain literal is reported as two bytes of it, so an escaped
// delimiter never ends one. Comments nest. It is the one scanner of these
// rules: comment stripping here and the From field's group and route
// checks (package dmarc) use it.
func Walk(s string, f func(i int, ctx Context, edge bool) bool) Context {
	ctx, depth := Plain, 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if ctx != Plain && c == '\\' && i+1 < len(s) {
			if !f(i, ctx, false) || !f(i+1, ctx, false) {
				return ctx
			}
			i++
			continue
		}
		cur, edge := ctx, false
		switch ctx {
		case Plain:
			switch c {
			case '"':
				ctx, cur, edge = Quoted, Quoted, true
			case '(':
				ctx, cur, edge, depth = Comment, Comment, true, 1
			case '[':
				ctx, cur, edge = Literal, Literal, true
			}
		case Quoted:
			if c == '"' {
				ctx, edge = Plain, true
			}
		case Literal:
			if c == ']' {
				ctx, edge = Plain, true
			}
		case Comment:
			switch c {
			case '(':
				depth++
			case ')':
				if depth--; depth == 0 {
					ctx, edge = Plain, true
				}
			}
		}
		if !f(i, cur, edge) {
			return ctx
		}
	}
	return ctx
}
