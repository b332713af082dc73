package report

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/dmarc-milter/dmarc-milter/policy"
	"github.com/dmarc-milter/dmarc-milter/policy/dkim"
	"github.com/dmarc-milter/dmarc-milter/policy/dmarc"
	"github.com/dmarc-milter/dmarc-milter/policy/spf"
)

// humanText is the text/plain part: which domain, which sending IP, what
// failed and why, what we did, what is attached. Lines end in CRLF.
func humanText(f *policy.Judged, a analysis, cfg Config, attachedMessage, headerCut bool, fieldsKept int) string {
	v := &f.Verdict
	dom := v.FromDomain()
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }

	p("This is a DMARC failure report (RFC 9991) from %s.", oneLine(cfg.ReportingMTA))
	p("")
	p("The DMARC record of %s asks for a report about each message that", dom)
	p("uses %s in its From header field and fails authentication (fo=%s).", dom, v.DMARC.Record.FailureOptions)
	p("This is one such message:")
	p("")
	arrival := "unknown"
	if !f.Arrival.IsZero() {
		arrival = f.Arrival.Format(time.RFC1123Z)
	}
	host := oneLine(f.ClientHost)
	if host == "" || strings.EqualFold(host, "unknown") || strings.HasPrefix(host, "[") {
		host = "no host name"
	}
	p("  From domain:  %s", dom)
	p("  Sending IP:   %s (%s, HELO %s)", orUnknown(f.ClientAddr()), host, orNone(oneLine(f.Helo)))
	mf := spf.ReversePath(f.MailFrom)
	p("  MAIL FROM:    <%s>", oneLine(redactIf(cfg.RedactLocalParts, mf)))
	p("  Received:     %s", arrival)
	if f.QueueID != "" {
		p("  Queue ID:     %s", oneLine(f.QueueID))
	}
	p("")
	p("What failed and why:")
	p("")
	b.WriteString(wrap("  DMARC: ", dmarcLine(f)))
	b.WriteString(wrap("  SPF:   ", spfLine(f, a)))
	if len(f.DKIM) == 0 {
		b.WriteString(wrap("  DKIM:  ", "none - the message has no DKIM signature"))
	}
	for i, d := range f.DKIM {
		b.WriteString(wrap("  DKIM:  ", dkimLine(f, d, a.dkimAligned[i])))
	}
	p("")
	b.WriteString(wrap("", "What we did: "+actionText(f)))
	p("")
	attached := "The original message header is attached (text/rfc822-headers), without the body."
	if attachedMessage {
		attached = "The original message is attached (message/rfc822)."
	}
	b.WriteString(wrap("", attached+" The message/feedback-report part repeats these facts in the Abuse Reporting Format (RFC 5965, RFC 6591) for programs."))
	if cfg.RedactLocalParts {
		p("")
		p("The local parts of e-mail addresses were replaced by \"redacted\".")
	}
	if headerCut {
		p("")
		b.WriteString(wrap("", fmt.Sprintf("The header of the original message was too long to copy whole: the copy attached stops after its first %d fields.", fieldsKept)))
	}
	return strings.ReplaceAll(b.String(), "\n", "\r\n")
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func dmarcLine(f *policy.Judged) string {
	v := &f.Verdict
	dom := v.FromDomain()
	switch {
	case v.DMARC.Status == dmarc.Fail:
		return "fail - neither SPF nor DKIM gave a pass for a domain aligned with " + dom
	case v.DMARC.SPFAligned && v.DMARC.DKIMAligned:
		return "pass - SPF and DKIM both passed for domains aligned with " + dom
	case v.DMARC.SPFAligned:
		return "pass through SPF; DKIM gave no pass for a domain aligned with " + dom
	case v.DMARC.DKIMAligned:
		return "pass through DKIM; SPF gave no pass for a domain aligned with " + dom
	}
	return string(v.DMARC.Status)
}

func spfLine(f *policy.Judged, a analysis) string {
	v := &f.Verdict
	d := f.SPF.Domain
	if d == "" {
		return string(f.SPF.Status) + " - no MAIL FROM domain to check"
	}
	al := "aligned with " + v.FromDomain()
	if !a.spfAligned {
		al = "not aligned with " + v.FromDomain()
	}
	why := ""
	switch f.SPF.Status {
	case spf.Pass:
		why = "the sending IP is authorized by " + d
	case spf.Fail:
		why = "the SPF record of " + d + " does not authorize the sending IP"
	case spf.SoftFail:
		why = "the SPF record of " + d + " says the sending IP is probably not authorized"
	case spf.Neutral:
		why = "the SPF record of " + d + " makes no statement about the sending IP"
	case spf.None:
		why = d + " publishes no SPF record"
	case spf.PermError, spf.TempError:
		why = "the SPF record of " + d + " could not be evaluated"
		if f.SPF.Err != nil {
			why += ": " + oneLine(f.SPF.Err.Error())
		}
	}
	return fmt.Sprintf("%s for the MAIL FROM domain %s (%s) - %s", f.SPF.Status, d, al, why)
}

func dkimLine(f *policy.Judged, d dkim.Result, aligned bool) string {
	v := &f.Verdict
	s := fmt.Sprintf("%s for the signature of %s (selector %s)", d.Status, oneLine(d.Domain), oneLine(d.Selector))
	if aligned {
		s += ", a domain aligned with " + v.FromDomain()
	} else {
		s += ", a domain not aligned with " + v.FromDomain()
	}
	if d.Status != dkim.Pass && d.Err != nil {
		s += " - " + oneLine(d.Err.Error())
	}
	return s
}

// actionText says what we did with the message and why.
func actionText(f *policy.Judged) string {
	v := &f.Verdict
	pol := "p=" + string(v.DMARC.Policy)
	if v.DMARC.Applied != v.DMARC.Policy && v.DMARC.Applied != "" {
		pol += fmt.Sprintf(" in testing mode (t=y), applied as %s", v.DMARC.Applied)
	}
	override := ""
	if v.Rule == policy.RuleOverride {
		override = fmt.Sprintf(" (%s applied as %s: %s)", v.Requested(), v.Enforced, v.OverrideComments())
	}
	switch v.Action {
	case policy.Reject:
		evidence := ""
		if v.Evidence != "" {
			evidence = ": " + v.Evidence
		}
		return fmt.Sprintf("rejected the message during the SMTP transaction (%d %s), as the DMARC policy of %s (%s) asks%s.", orCode(v.Reply.Code, 550), orStr(v.Reply.Enhanced, "5.7.1"), v.FromDomain(), pol, evidence)
	case policy.Quarantine:
		if override != "" {
			return fmt.Sprintf("accepted the message and held it in quarantine, under the DMARC policy of %s (%s)%s.", v.FromDomain(), pol, override)
		}
		return fmt.Sprintf("accepted the message and held it in quarantine, as the DMARC policy of %s (%s) asks.", v.FromDomain(), pol)
	case policy.TempFail:
		return "deferred the message with a temporary error."
	}
	switch {
	case v.DMARC.Status == dmarc.Pass:
		return "delivered the message: it passed DMARC."
	case override != "":
		return fmt.Sprintf("delivered the message under the DMARC policy of %s (%s)%s.", v.FromDomain(), pol, override)
	case v.Exempt != "":
		return fmt.Sprintf("delivered the message: local policy (%s) exempts it from enforcement; the DMARC policy of %s is %s.", v.Exempt, v.FromDomain(), pol)
	case v.Requested() == dmarc.PolicyQuarantine:
		return fmt.Sprintf("delivered the message marked as failing DMARC, as the DMARC policy of %s (%s) asks.", v.FromDomain(), pol)
	case slices.Contains([]dmarc.Policy{dmarc.PolicyNone, ""}, v.Requested()):
		return fmt.Sprintf("delivered the message: the DMARC policy of %s (%s) asks for no action.", v.FromDomain(), pol)
	}
	return "delivered the message."
}

func orCode(c, def int) int {
	if c == 0 {
		return def
	}
	return c
}

func orStr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// wrap fills text into lines of at most 72 characters where it can, the
// first starting with prefix and the others indented as deep.
func wrap(prefix, text string) string {
	const width = 72
	var b strings.Builder
	indent := strings.Repeat(" ", len(prefix))
	line := prefix
	empty := true
	for _, w := range strings.Fields(text) {
		if !empty && len(line)+1+len(w) > width {
			b.WriteString(line + "\n")
			line, empty = indent, true
		}
		if !empty {
			line += " "
		}
		line += w
		empty = false
	}
	b.WriteString(line + "\n")
	return b.String()
}
