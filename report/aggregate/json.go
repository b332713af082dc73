package aggregate

import (
	"strconv"
	"unicode/utf8"
)

// The store holds a row and a published policy as JSON, and a row's JSON is
// also its identity: equal rows are counted together and keyed by its
// fingerprint. The Recorder makes both for every message on the reply
// path, where encoding/json's reflection cost two of its larger shares of
// the CPU (issue 20). appendRow and appendPublished write exactly the bytes
// json.Marshal writes for these types, field order, omitempty and string
// escaping included (FuzzJSON compares them), so that rows stored by
// earlier versions keep their fingerprints; the store reads them back with
// encoding/json.

// appendRow appends json.Marshal(r).
func appendRow(b []byte, r *Row) []byte {
	b = append(b, `{"ip":`...)
	b = appendString(b, r.SourceIP)
	b = append(b, `,"hf":`...)
	b = appendString(b, r.HeaderFrom)
	if r.EnvelopeFrom != "" {
		b = append(b, `,"ef":`...)
		b = appendString(b, r.EnvelopeFrom)
	}
	if r.EnvelopeTo != "" {
		b = append(b, `,"et":`...)
		b = appendString(b, r.EnvelopeTo)
	}
	b = append(b, `,"d":`...)
	b = appendString(b, r.Disposition)
	b = append(b, `,"dk":`...)
	b = appendString(b, r.DKIM)
	b = append(b, `,"sp":`...)
	b = appendString(b, r.SPF)
	if len(r.Reasons) > 0 {
		b = append(b, `,"r":[`...)
		for i, o := range r.Reasons {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"t":`...)
			b = appendString(b, o.Type)
			if o.Comment != "" {
				b = append(b, `,"c":`...)
				b = appendString(b, o.Comment)
			}
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	if a := r.AuthSPF; a != nil {
		b = append(b, `,"as":{"d":`...)
		b = appendString(b, a.Domain)
		if a.Scope != "" {
			b = append(b, `,"s":`...)
			b = appendString(b, a.Scope)
		}
		b = append(b, `,"r":`...)
		b = appendString(b, a.Result)
		b = append(b, '}')
	}
	if len(r.AuthDKIM) > 0 {
		b = append(b, `,"ad":[`...)
		for i, d := range r.AuthDKIM {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"d":`...)
			b = appendString(b, d.Domain)
			b = append(b, `,"s":`...)
			b = appendString(b, d.Selector)
			b = append(b, `,"r":`...)
			b = appendString(b, d.Result)
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	return append(b, '}')
}

// appendPublished appends json.Marshal(p).
func appendPublished(b []byte, p *Published) []byte {
	b = append(b, `{"domain":`...)
	b = appendString(b, p.Domain)
	b = append(b, `,"p":`...)
	b = appendString(b, p.P)
	if p.SP != "" {
		b = append(b, `,"sp":`...)
		b = appendString(b, p.SP)
	}
	if p.NP != "" {
		b = append(b, `,"np":`...)
		b = appendString(b, p.NP)
	}
	for _, f := range [...]struct{ name, v string }{
		{`,"adkim":`, p.ADKIM}, {`,"aspf":`, p.ASPF}, {`,"fo":`, p.FO},
		{`,"testing":`, p.Testing}, {`,"discovery":`, p.Discovery},
	} {
		b = append(b, f.name...)
		b = appendString(b, f.v)
	}
	b = append(b, `,"rua":`...)
	if p.RUA == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '[')
		for i, u := range p.RUA {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"uri":`...)
			b = appendString(b, u.Address)
			if u.MaxSize != 0 {
				b = append(b, `,"max_size":`...)
				b = strconv.AppendUint(b, u.MaxSize, 10)
			}
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	return append(b, '}')
}

// appendString appends s as encoding/json writes a string: <, > and &
// escaped for HTML, control characters as \b \f \n \r \t or \u00XX,
// invalid UTF-8 as \ufffd, and U+2028 and U+2029 escaped.
func appendString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
