package policy

import (
	"fmt"
	"net"
	"time"

	"github.com/dmarc-milter/dmarc-milter/internal/rfc5322"
	"github.com/dmarc-milter/dmarc-milter/policy/dkim"
	"github.com/dmarc-milter/dmarc-milter/policy/dmarc"
	"github.com/dmarc-milter/dmarc-milter/policy/spf"
)

// Message is one message as the session collected it: the connection and
// envelope, the header as received, as much of the body as the reports
// asked to keep, and the SPF and DKIM results computed while it streamed.
// Evaluator.Judge judges it; the Judged message then goes, unchanged, to whoever
// consumes verdicts (failure reports, aggregate reports).
type Message struct {
	// QueueID is the MTA's queue ID (Postfix's "i" macro), "" if not given.
	QueueID string
	// Arrival is when MAIL FROM was received.
	Arrival  time.Time
	ClientIP net.IP
	// ClientHost is the MTA's reverse lookup of ClientIP ("unknown" or a
	// bracketed address if none).
	ClientHost string
	// LocalClient: the MTA reports a client without a network address (a
	// unix socket, local submission). A network client whose address is
	// missing or unparseable (ClientIP nil) is not local, and never
	// trusted.
	LocalClient bool
	Helo        string
	// MailFrom is the RFC5321.MailFrom address without angle brackets,
	// "" for the null reverse-path (spf.ReversePath).
	MailFrom string
	// AuthUser is the SASL login name ({auth_authen}), "" if none.
	AuthUser string
	// RcptDomain is the domain of the first envelope recipient, "" when
	// the session does not ask the MTA for recipients (aggregate reports
	// record it only with aggregate_envelope_to).
	RcptDomain string
	// From holds the values of every From header field, in order (also
	// when the header outgrew what is kept in Header).
	From []string
	// Header holds the header fields as received, in order.
	Header []Field
	// HeaderTruncated: Header stops where the header outgrew the session's
	// bounds (max_header_size, max_header_fields).
	HeaderTruncated bool
	// LeadingSpace: header values kept the white space after the colon
	// (milter SMFIP_HDR_LEADSPC), so rfc5322.RebuildField restores each
	// field byte-exactly.
	LeadingSpace bool
	// Body holds the start of the body: at most one byte more than the
	// consumers asked to keep, so that a cut body can be told from a
	// whole one; nil when none was asked for.
	Body []byte

	// TooManyForgedAR: the header has more Authentication-Results fields
	// claiming our authserv-id than the session can remove (Judge rejects
	// the message).
	TooManyForgedAR bool

	SPF     spf.Result // MAIL FROM identity (HELO for the null sender)
	HeloSPF spf.Result
	DKIM    []dkim.Result
	// ARC is the validation of the message's ARC chain (RFC 8617), made
	// only when trusted ARC sealers are configured (Status "" otherwise).
	ARC dkim.ARCResult

	author    *dmarc.Author // parsed From, once (Author)
	authorErr error
}

// Field is one header field as the MTA delivered it: the value with
// bare-LF folding, its leading space kept if Message.LeadingSpace.
type Field = rfc5322.Field

// Author parses the From header fields (RFC 9989 Section 4.10.1; see
// dmarc.ParseFrom) once per message: the session asks at end of header to
// start the policy lookups, Judge at end of message. More than
// MaxAuthorDomains domains is an error.
func (m *Message) Author() (dmarc.Author, error) {
	if m.author == nil {
		a, err := dmarc.ParseFrom(m.From)
		if err == nil && len(a.Domains) > MaxAuthorDomains {
			err = fmt.Errorf("%w (%d)", errTooManyAuthors, len(a.Domains))
		}
		m.author, m.authorErr = &a, err
	}
	return *m.author, m.authorErr
}

// ClientAddr is the client's IP address as text, "" if the MTA gave none.
func (m *Message) ClientAddr() string {
	if len(m.ClientIP) == 0 {
		return ""
	}
	return m.ClientIP.String()
}

// Judged is a message with its verdict: what the session hands to the
// consumers of verdicts before the MTA gets its answer. It is shared and
// must not be changed.
type Judged struct {
	*Message
	Verdict Verdict
	// AuthResults is our Authentication-Results value: stamped on the
	// message unless it was rejected or deferred.
	AuthResults string
}
