package policy

import (
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/dmarc-milter/dmarc-milter/internal/rfc5322"

	"github.com/dmarc-milter/dmarc-milter/policy/dkim"
	"github.com/dmarc-milter/dmarc-milter/policy/dmarc"
)

// AuthenticationResults returns the value of our Authentication-Results
// header field (RFC 8601) for the message m judged v, with authservID: spf
// (smtp.mailfrom), spf for the HELO
// identity (smtp.helo), one dkim entry per signature (header.d, header.s,
// header.a, header.b) and dmarc (header.from, policy.dmarc). Entries are
// folded one per line.
//
// Every value comes from the client or the sender's DNS, so each is checked
// (see pvalue): a value that cannot be written validly, one with a line
// break say, is left out and a comment says so; it can never inject a
// header line. A verdict that was not enforced (an exemption, monitor mode,
// a temporary DNS failure accepted by temperror = accept) says so in a
// comment after the dmarc result.
func AuthenticationResults(authservID string, m *Message, v *Verdict) string {
	mailFrom, helo := m.MailFrom, m.Helo
	var b strings.Builder
	// One allocation for the usual field: the fixed words and the values.
	size := 160 + len(authservID) + len(mailFrom) + 2*len(helo)
	for _, d := range m.DKIM {
		size += 64 + len(d.Domain) + len(d.Selector)
	}
	b.Grow(size)
	b.WriteString(authservID)

	spfIdentity := mailFrom
	if spfIdentity == "" && helo != "" {
		spfIdentity = "postmaster@" + helo // RFC 7208 section 2.4
	}
	writeResult(&b, "spf", string(m.SPF.Status), "", "", []prop{{"smtp.mailfrom", spfIdentity}})
	if helo != "" {
		writeResult(&b, "spf", string(m.HeloSPF.Status), "", "", []prop{{"smtp.helo", helo}})
	}

	if len(m.DKIM) == 0 {
		writeResult(&b, "dkim", string(dkim.None), "", "", nil)
	}
	for _, d := range m.DKIM {
		reason := ""
		if d.Status != dkim.Pass && d.Err != nil {
			reason = reasonText(d.Err)
		}
		writeResult(&b, "dkim", string(d.Status), "", reason, []prop{
			{"header.d", d.Domain}, {"header.s", d.Selector}, {"header.a", d.Algorithm}, {"header.b", d.BPrefix},
		})
	}

	if a := &m.ARC; a.Status != "" {
		// RFC 8617 section 10.1: arc= with smtp.remote-ip and
		// header.oldest-pass.
		comment, reason := "", ""
		if a.Status == dkim.ARCPass {
			comment = "sealed by " + a.Sealer
		} else if a.Err != nil {
			reason = reasonText(a.Err)
		}
		props := []prop{{"smtp.remote-ip", m.ClientAddr()}}
		if a.Status == dkim.ARCPass {
			props = append(props, prop{"header.oldest-pass", strconv.Itoa(a.OldestPass)})
		}
		writeResult(&b, "arc", string(a.Status), comment, reason, props)
	}

	status := v.DMARC.Status
	if status == "" {
		status = dmarc.None
	}
	reason := ""
	if v.FromErr != nil {
		reason = fromErrorText(v.FromErr)
	} else if v.DMARC.Err != nil && status != dmarc.Pass {
		reason = reasonText(v.DMARC.Err)
	}
	props := []prop{{"header.from", v.FromDomain()}}
	if v.DMARC.Record != nil {
		props = append(props, prop{"policy.dmarc", string(v.DMARC.Applied)})
	}
	writeResult(&b, "dmarc", string(status), notEnforced(v), reason, props)
	return b.String()
}

// notEnforced returns the comment for a DMARC result that asked for more
// than was done, "" otherwise.
func notEnforced(v *Verdict) string {
	asked := v.Unknown() || v.Requested() != dmarc.PolicyNone || v.FromErr != nil
	if !asked || v.Action != Accept && v.Action != Quarantine {
		return ""
	}
	switch {
	case v.Exempt != "":
		return "not enforced: " + v.Exempt.Text()
	case v.Rule == RuleOverride:
		return string(v.Requested()) + " applied as " + string(v.Enforced) + ": " + v.OverrideComments()
	case v.Unknown():
		return "not enforced: temporary DNS failure, accepted by local policy"
	case v.FromErr != nil:
		return "not enforced: local policy"
	case v.Requested() == dmarc.PolicyQuarantine && v.Action == Accept:
		return "quarantine by marking only"
	}
	return ""
}

// Text is the exemption as said to people (a header comment, a report).
func (e Exemption) Text() string {
	switch e {
	case ExemptMonitor:
		return "monitor mode"
	case ExemptAuthenticated:
		return "authenticated client"
	case ExemptTrustedNetwork:
		return "trusted network"
	case ExemptLocalClient:
		return "local client"
	case ExemptDomain:
		return "exempt domain"
	}
	return "local policy"
}

// reasonText is an error as a reason= value: without the Go package
// prefixes ("dmarc: ", "dkim: ") that mean nothing to a reader of the
// header.
func reasonText(err error) string {
	s := err.Error()
	for _, p := range []string{"dmarc: ", "dkim: ", "spf: "} {
		s = strings.ReplaceAll(s, p, "")
	}
	return s
}

// prop is a ptype.property=pvalue of a result (RFC 8601 section 2.2).
type prop struct{ name, value string }

// writeResult appends one resinfo: ";", a folded line, method=result, an
// optional comment, an optional reason= and the properties. Empty property
// values are left out.
func writeResult(b *strings.Builder, method, result, comment, reason string, props []prop) {
	b.WriteString(";\n\t")
	b.WriteString(method)
	b.WriteByte('=')
	b.WriteString(result)
	var omitted []string
	if comment != "" {
		writeComment(b, comment)
	}
	if reason != "" {
		if v, ok := quotedValue(reason); ok {
			b.WriteString(" reason=")
			b.WriteString(v)
		} else {
			omitted = append(omitted, "reason")
		}
	}
	for _, p := range props {
		if p.value == "" {
			continue
		}
		v, ok := pvalue(p.value)
		if !ok {
			omitted = append(omitted, p.name)
			continue
		}
		b.WriteByte(' ')
		b.WriteString(p.name)
		b.WriteByte('=')
		b.WriteString(v)
	}
	if len(omitted) > 0 {
		writeComment(b, strings.Join(omitted, ", ")+" omitted: not a valid header value")
	}
}

// writeComment appends " (text)". The text is ours, but may hold names
// from DNS or the configuration: control characters are dropped and
// parentheses and backslashes quoted, so it stays one comment.
func writeComment(b *strings.Builder, text string) {
	b.WriteString(" (")
	for i := 0; i < len(text); i++ {
		switch c := text[i]; {
		case c < ' ' || c == 0x7f:
			// A control character never reaches the header.
		case c == '(' || c == ')' || c == '\\':
			b.WriteByte('\\') // quoted-pair (RFC 5322 section 3.2.2)
			b.WriteByte(c)
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte(')')
}

// pvalue returns v as an RFC 8601 pvalue: as it is when it is a token or
// [local-part "@"] domain-name made of atext and dots, else as a
// quoted-string (RFC 2045 value). ok is false when v cannot be written in
// a header at all: a control character (CR, LF, NUL...) or invalid UTF-8
// (RFC 6532 allows UTF-8 in quoted strings).
func pvalue(v string) (string, bool) {
	if plainPvalue(v) {
		return v, true
	}
	return quotedValue(v)
}

// plainPvalue: every byte is atext, "." or a single "@".
func plainPvalue(v string) bool {
	if v == "" || strings.Count(v, "@") > 1 {
		return false
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`()<>,;:\"[]`, c) >= 0 {
			return false
		}
	}
	return true
}

// quotedValue returns v as a quoted-string, or false if it holds a
// control character or invalid UTF-8.
func quotedValue(v string) (string, bool) {
	if !utf8.ValidString(v) {
		return "", false
	}
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range v {
		switch {
		case r < ' ' && r != '\t' || r == 0x7f || 0x80 <= r && r < 0xa0:
			return "", false
		case r == '"' || r == '\\':
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	b.WriteByte('"')
	return b.String(), true
}

// IsOurs reports whether an incoming Authentication-Results value carries
// our authserv-id (RFC 8601 section 5: such fields are forgeries and are
// removed).
func (e *Evaluator) IsOurs(value string) bool {
	return strings.EqualFold(AuthservIDOf(value), e.cfg.Load().AuthservID)
}

// AuthservIDOf extracts the authserv-id of an Authentication-Results field
// value: the first token, after comments and white space, up to ";" or
// white space. It is lenient on purpose (a forgery need not be well formed).
func AuthservIDOf(value string) string {
	s, _ := rfc5322.StripComments(value) // up to an unterminated comment
	s = strings.TrimSpace(s)
	if i := strings.IndexAny(s, "; \t\r\n"); i >= 0 {
		s = s[:i]
	}
	return strings.Trim(s, `"`)
}
