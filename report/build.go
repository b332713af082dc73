package report

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"regexp"
	"strings"
	"time"

	"github.com/emersion/go-message"
	"github.com/emersion/go-message/mail"
	"github.com/emersion/go-message/textproto"

	"github.com/dmarc-milter/dmarc-milter/internal/rfc5322"
	"github.com/dmarc-milter/dmarc-milter/policy"
	"github.com/dmarc-milter/dmarc-milter/policy/dmarc"
	"github.com/dmarc-milter/dmarc-milter/policy/spf"
)

// Build returns the failure report about f for the recipients to, as a
// whole RFC 5322 message with CRLF line ends: multipart/report;
// report-type=feedback-report (RFC 6522) holding a text/plain explanation,
// the message/feedback-report part (RFC 5965, RFC 6591, RFC 9991 Section 4)
// and the original header (text/rfc822-headers) or message
// (message/rfc822, with Include "message" and a body of at most
// MaxMessageSize bytes). now is the report's Date.
//
// Build does no DNS: alignment is judged with the Organizational Domain
// DMARC found (knownOrgDomain), and there is no SPF-DNS field; the Reporter
// looks both up.
func Build(f *policy.Judged, to []string, cfg Config, now time.Time) ([]byte, error) {
	return build(f, analyze(f, knownOrgDomain(&f.Verdict)), to, cfg.withDefaults(), now, false)
}

func build(f *policy.Judged, a analysis, to []string, cfg Config, now time.Time, headersOnly bool) ([]byte, error) {
	v := &f.Verdict
	if v.FromDomain() == "" {
		return nil, errors.New("report: no From domain")
	}
	from, err := mail.ParseAddress(cfg.From)
	if err != nil {
		return nil, fmt.Errorf("report: bad report address %q: %w", cfg.From, err)
	}
	if from.Name == "" {
		from.Name = "DMARC failure reports"
	}
	var rcpts []*mail.Address
	for _, t := range to {
		rcpts = append(rcpts, &mail.Address{Address: t})
	}
	ip := orUnknown(f.ClientAddr())

	var h mail.Header
	h.SetAddressList("From", []*mail.Address{from})
	h.SetAddressList("To", rcpts)
	subject := "DMARC failure report for " + v.FromDomain() + " from " + ip
	if orig := originalSubject(f, cfg.RedactLocalParts); orig != "" {
		// What the domain owner recognizes the message by (the seed report
		// 002 asks for it), in brackets.
		subject += " [" + orig + "]"
	}
	h.SetSubject(subject)
	h.SetDate(now)
	if err := h.GenerateMessageIDWithHostname(cfg.ReportingMTA); err != nil {
		return nil, fmt.Errorf("report: message id: %w", err)
	}
	h.Set("Auto-Submitted", "auto-generated")
	h.SetContentType("multipart/report", map[string]string{"report-type": "feedback-report"})

	var buf bytes.Buffer
	w, err := message.CreateWriter(&buf, h.Header)
	if err != nil {
		return nil, fmt.Errorf("report: %w", err)
	}

	// RFC 9991 asks for brevity: the header is cut at maxReportHeader,
	// and a cut header is never attached as a whole message.
	orig, kept := originalHeader(f, cfg.RedactLocalParts, maxReportHeader)
	cut := kept < len(f.Header) || f.HeaderTruncated
	attachMessage := cfg.Include == IncludeMessage && !headersOnly && !cfg.RedactLocalParts &&
		f.Body != nil && len(f.Body) <= cfg.MaxMessageSize && !cut

	// Part 1: for people.
	text := humanText(f, a, cfg, attachMessage, cut, kept)
	if err := writePart(w, "text/plain", map[string]string{"charset": "utf-8"}, []byte(text), true,
		"DMARC failure report: what failed and why", "report.txt"); err != nil {
		return nil, err
	}

	// Part 2: for machines.
	fb, err := feedbackReport(f, a, cfg)
	if err != nil {
		return nil, err
	}
	if err := writePart(w, "message/feedback-report", nil, fb, false,
		"The same report for programs (Abuse Reporting Format, RFC 5965, RFC 6591)", "feedback-report.txt"); err != nil {
		return nil, err
	}

	// Part 3: the original header, or message.
	ctype, desc, name := "text/rfc822-headers", "The header of the reported message", "original-header.txt"
	if attachMessage {
		ctype, desc, name = "message/rfc822", "The reported message", "original-message.eml"
		orig = append(orig, "\r\n"...)
		orig = append(orig, rfc5322.CRLF(f.Body)...)
	}
	if err := writePart(w, ctype, nil, orig, false, desc, name); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("report: %w", err)
	}
	return buf.Bytes(), nil
}

// writePart adds one part, with a description and a file name a mail
// client shows instead of "no description" or "Untitled attachment.dat"
// (names a reader is not afraid to open: .txt, .eml). Its transfer
// encoding is 7bit for ASCII content; otherwise quoted-printable for
// text/plain (qp) and 8bit for the others (message/* parts may not be
// encoded, RFC 2046 Section 5.2.1).
func writePart(w *message.Writer, ctype string, params map[string]string, body []byte, qp bool, desc, filename string) error {
	var ph message.Header
	ph.SetContentType(ctype, params)
	ph.Set("Content-Description", desc)
	cte := "7bit"
	if !isASCII(body) {
		cte = "8bit"
		if qp {
			cte = "quoted-printable"
		}
	}
	ph.Set("Content-Transfer-Encoding", cte)
	ph.SetContentDisposition("inline", map[string]string{"filename": filename})
	pw, err := w.CreatePart(ph)
	if err != nil {
		return fmt.Errorf("report: %s part: %w", ctype, err)
	}
	if _, err := pw.Write(body); err != nil {
		return fmt.Errorf("report: %s part: %w", ctype, err)
	}
	if err := pw.Close(); err != nil {
		return fmt.Errorf("report: %s part: %w", ctype, err)
	}
	return nil
}

// feedbackReport returns the body of the message/feedback-report part.
//
// The fields are added with AddRaw: textproto's Add canonicalizes names
// ("DKIM-Domain" would become "Dkim-Domain", "Source-IP" "Source-Ip") and
// refolds values; AddRaw keeps the registered spelling and the folding of
// Authentication-Results. WriteHeader writes fields last-added first, so
// they are added in reverse.
func feedbackReport(f *policy.Judged, a analysis, cfg Config) ([]byte, error) {
	v := &f.Verdict
	type kv struct{ k, v string }
	var fs []kv
	add := func(k, val string) { fs = append(fs, kv{k, val}) }

	add("Feedback-Type", "auth-failure")
	add("User-Agent", oneLine(cfg.UserAgent))
	add("Version", "1")
	add("Auth-Failure", a.authFailure)
	add("Original-Mail-From", "<"+oneLine(redactIf(cfg.RedactLocalParts, spf.ReversePath(f.MailFrom)))+">")
	if !f.Arrival.IsZero() {
		add("Arrival-Date", f.Arrival.Format(time.RFC1123Z))
	}
	add("Reporting-MTA", "dns; "+oneLine(cfg.ReportingMTA))
	add("Source-IP", orUnknown(f.ClientAddr()))
	add("Reported-Domain", v.FromDomain())
	ar := f.AuthResults
	if ar == "" {
		// Nothing was stamped (the message was rejected): describe the
		// verdict the same way the milter would have.
		ar = policy.AuthenticationResults(cfg.AuthservID, f.Message, v)
	}
	add("Authentication-Results", redactIf(cfg.RedactLocalParts, ar))
	add("Identity-Alignment", strings.Join(a.alignment, ", "))
	add("Delivery-Result", deliveryResult(f))
	if a.sig >= 0 {
		d := f.DKIM[a.sig]
		add("DKIM-Domain", oneLine(d.Domain))
		id := d.Identifier
		if id == "" {
			id = "@" + d.Domain
		}
		add("DKIM-Identity", oneLine(redactIf(cfg.RedactLocalParts, id)))
		add("DKIM-Selector", oneLine(d.Selector))
	}
	if a.spfAligned && f.SPF.Status != spf.Pass {
		// RFC 6591 Section 3.1 spf-dns: "txt" : domain : the record.
		for _, rec := range a.spfRecords {
			add("SPF-DNS", "txt : "+oneLine(f.SPF.Domain)+" : "+quote(oneLine(rec)))
		}
	}

	var h textproto.Header
	for i := len(fs) - 1; i >= 0; i-- {
		val := strings.ReplaceAll(strings.ReplaceAll(fs[i].v, "\r\n", "\n"), "\n", "\r\n")
		h.AddRaw([]byte(fs[i].k + ": " + val + "\r\n"))
	}
	var b bytes.Buffer
	if err := textproto.WriteHeader(&b, h); err != nil {
		return nil, fmt.Errorf("report: feedback fields: %w", err)
	}
	return b.Bytes(), nil
}

// deliveryResult maps what we did to RFC 6591 Section 3.1 Delivery-Result:
// delivered, spam (delivered but marked as failing a quarantine policy),
// policy (held in quarantine), reject, other.
func deliveryResult(f *policy.Judged) string {
	switch f.Verdict.Action {
	case policy.Reject:
		return "reject"
	case policy.Quarantine:
		return "policy"
	case policy.TempFail:
		return "other"
	}
	if f.Verdict.Requested() == dmarc.PolicyQuarantine {
		return "spam"
	}
	return "delivered"
}

// maxReportHeader bounds the copy of the original header in a report.
const maxReportHeader = 64 << 10

// originalHeader rebuilds the received header byte-exactly (CRLF), with
// local parts redacted if asked, up to max bytes (whole fields only); kept
// is how many fields it holds.
func originalHeader(f *policy.Judged, redact bool, max int) (b []byte, kept int) {
	for _, h := range f.Header {
		val := h.Value
		if redact && !isMessageIDField(h.Name) {
			val = redactAddresses(val)
		}
		field := rfc5322.RebuildField(h.Name, val, f.LeadingSpace)
		if len(b)+len(field) > max {
			break
		}
		b = append(b, field...)
		kept++
	}
	return b, kept
}

func isMessageIDField(name string) bool {
	switch strings.ToLower(strings.TrimSpace(name)) {
	case "message-id", "in-reply-to", "references", "content-id", "resent-message-id":
		return true
	}
	return false
}

// addrRE matches the addr-spec-looking parts of a field: a dot-atom or
// quoted-string local part, "@", and a domain. An Authentication-Results
// property name before it ("smtp.mailfrom=") is matched separately, since
// "=" is also allowed in a local part.
var addrRE = regexp.MustCompile(`([A-Za-z]+\.[A-Za-z-]+=)?(?:"(?:[^"\\\r\n]|\\.)*"|[A-Za-z0-9!#$%&'*+/=?^_` + "`" + `{|}~.-]+)@([A-Za-z0-9\[][A-Za-z0-9.:\[\]-]*)`)

// redactAddresses replaces the local part of every address in s by
// "redacted" (RFC 6590 Section 4 leaves the replacement to the reporter).
func redactAddresses(s string) string {
	return addrRE.ReplaceAllString(s, "${1}redacted@$2")
}

func redactIf(redact bool, s string) string {
	if !redact {
		return s
	}
	return redactAddresses(s)
}

// oneLine makes s safe as a one-line field value: line breaks and other
// control characters become spaces.
func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
}

// quote makes an RFC 5322 quoted-string.
func quote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

func isASCII(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 {
			return false
		}
	}
	return true
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// maxSubjectRunes bounds the original subject carried in a report's
// Subject.
const maxSubjectRunes = 60

// originalSubject is the reported message's Subject for the report's own:
// decoded (RFC 2047), on one line, without control characters, cut to
// maxSubjectRunes with an ellipsis, its addresses redacted if asked; "" if
// the message has none.
func originalSubject(f *policy.Judged, redact bool) string {
	var raw string
	for _, h := range f.Header {
		if strings.EqualFold(strings.TrimSpace(h.Name), "Subject") {
			raw = h.Value
			break
		}
	}
	dec := mime.WordDecoder{CharsetReader: func(charset string, input io.Reader) (io.Reader, error) {
		return input, nil // an unknown charset: shown as it came
	}}
	s, err := dec.DecodeHeader(raw)
	if err != nil {
		s = raw
	}
	s = strings.Join(strings.Fields(strings.ToValidUTF8(oneLine(s), "\uFFFD")), " ")
	if r := []rune(s); len(r) > maxSubjectRunes {
		s = strings.TrimSpace(string(r[:maxSubjectRunes-1])) + "…"
	}
	return redactIf(redact, s)
}
