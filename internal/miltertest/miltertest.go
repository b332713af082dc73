// Package miltertest talks to a milter the way Postfix does, for tests:
// option negotiation with Postfix's offer, the connection and HELO, and one
// message at a time with the macros Postfix sends, header fields as
// Postfix's cleanup hands them over (rfc5322.Split; the leading space kept
// only when negotiated) and the body in chunks of at most 64 KiB. It uses
// go-milter's client and does not import testing.
package miltertest

import (
	"strings"
	"time"

	gomilter "github.com/emersion/go-milter"

	"github.com/dmarc-milter/dmarc-milter/internal/rfc5322"
	"github.com/dmarc-milter/dmarc-milter/milter"
)

// TB is what the helpers need of a *testing.T or *testing.B.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	Cleanup(func())
}

// Dial opens a milter session on network and addr with Postfix's offer of
// actions and protocol options (protocol 0: Postfix's own). The session
// is closed when the test ends.
func Dial(t TB, network, addr string, protocol gomilter.OptProtocol, d gomilter.Dialer) *gomilter.ClientSession {
	t.Helper()
	if protocol == 0 {
		protocol = milter.PostfixProtocol
	}
	c := gomilter.NewClientWithOptions(network, addr, gomilter.ClientOptions{
		Dialer:       d,
		ReadTimeout:  10 * time.Second,
		WriteTimeout: 10 * time.Second,
		ActionMask:   milter.PostfixActions,
		ProtocolMask: protocol,
	})
	s, err := c.Session()
	if err != nil {
		t.Fatalf("milter session: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// Connect starts an SMTP connection from ip with HELO helo.
func Connect(t TB, s *gomilter.ClientSession, ip, helo string) {
	t.Helper()
	fam := gomilter.FamilyInet
	if strings.Contains(ip, ":") {
		fam = gomilter.FamilyInet6
	}
	if err := s.Macros(gomilter.CodeConn, "j", "mx.test.example", "{daemon_name}", "smtpd"); err != nil {
		t.Fatalf("macros: %v", err)
	}
	if _, err := s.Conn("client.example", fam, 40000, ip); err != nil {
		t.Fatalf("connect: %v", err)
	}
	if _, err := s.Helo(helo); err != nil {
		t.Fatalf("helo: %v", err)
	}
}

// Msg is one SMTP transaction as Postfix hands it to a milter.
type Msg struct {
	AuthUser string
	MailFrom string
	Rcpt     string // "rcpt@test.example" if empty
	QueueID  string // "4ABCDEF" if empty
	Raw      string // the message (CRLF or LF line ends)
}

// Outcome is what the milter answered at end of message.
type Outcome struct {
	Act  *gomilter.Action
	Mods []gomilter.ModifyAction
}

// Code is the SMTP code the MTA would answer.
func (o Outcome) Code() int {
	switch o.Act.Code {
	case gomilter.ActReplyCode:
		return o.Act.SMTPCode
	case gomilter.ActReject:
		return 550
	case gomilter.ActTempFail:
		return 451
	}
	return 250
}

// Quarantined reports whether the milter asked to hold the message.
func (o Outcome) Quarantined() bool {
	for _, m := range o.Mods {
		if m.Code == gomilter.ActQuarantine {
			return true
		}
	}
	return false
}

// AuthResults returns the Authentication-Results value the milter
// inserted, or "".
func (o Outcome) AuthResults() string {
	for _, m := range o.Mods {
		if m.Code == gomilter.ActInsertHeader && m.HeaderName == "Authentication-Results" {
			return m.HeaderValue
		}
	}
	return ""
}

// Send runs one message over an established session.
func Send(t TB, s *gomilter.ClientSession, m Msg) Outcome {
	t.Helper()
	kv := []string{"{mail_addr}", m.MailFrom}
	if m.AuthUser != "" {
		kv = append(kv, "{auth_authen}", m.AuthUser, "{auth_type}", "PLAIN")
	}
	if err := s.Macros(gomilter.CodeMail, kv...); err != nil {
		t.Fatalf("macros: %v", err)
	}
	if _, err := s.Mail(m.MailFrom, nil); err != nil {
		t.Fatalf("mail: %v", err)
	}
	rcpt := m.Rcpt
	if rcpt == "" {
		rcpt = "rcpt@test.example"
	}
	if _, err := s.Rcpt(rcpt, nil); err != nil {
		t.Fatalf("rcpt: %v", err)
	}
	fields, body, err := rfc5322.Split([]byte(m.Raw))
	if err != nil {
		t.Fatalf("%v", err)
	}
	leading := s.ProtocolOption(gomilter.OptHeaderLeadingSpace)
	for _, f := range fields {
		v := f.Value
		if !leading {
			v = strings.TrimPrefix(v, " ")
		}
		if _, err := s.HeaderField(f.Name, v); err != nil {
			t.Fatalf("header: %v", err)
		}
	}
	if _, err := s.HeaderEnd(); err != nil {
		t.Fatalf("eoh: %v", err)
	}
	// Postfix sends the body in chunks of at most 64 KiB.
	for len(body) > 0 {
		n := min(len(body), gomilter.MaxBodyChunk)
		if _, err := s.BodyChunk(body[:n]); err != nil {
			t.Fatalf("body: %v", err)
		}
		body = body[n:]
	}
	qid := m.QueueID
	if qid == "" {
		qid = "4ABCDEF"
	}
	if err := s.Macros(gomilter.CodeEOB, "i", qid); err != nil {
		t.Fatalf("macros: %v", err)
	}
	mods, act, err := s.End()
	if err != nil {
		t.Fatalf("end of message: %v", err)
	}
	return Outcome{Act: act, Mods: mods}
}
