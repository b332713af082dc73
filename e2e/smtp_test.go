//go:build e2e

package e2e

import (
	"bytes"
	"fmt"
	"net"
	"net/textproto"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// transcript records an SMTP dialogue ("C:" client, "S:" server lines) for
// the failure report of a scenario. It is shared by every connection the
// scenario opens.
type transcript struct {
	mu sync.Mutex
	b  strings.Builder
}

func (tr *transcript) add(prefix, text string) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	for _, line := range strings.Split(strings.TrimRight(text, "\r\n"), "\n") {
		fmt.Fprintf(&tr.b, "%s %s\n", prefix, strings.TrimRight(line, "\r"))
	}
}

func (tr *transcript) String() string {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.b.String()
}

// reply is one SMTP reply; Text holds its lines joined by "\n", without the
// codes.
type reply struct {
	Code int
	Text string
}

// enhanced returns the RFC 3463 enhanced status code that starts the reply
// text, or "".
func (r reply) enhanced() string {
	if m := enhancedRE.FindStringSubmatch(r.Text); m != nil {
		return m[1]
	}
	return ""
}

var enhancedRE = regexp.MustCompile(`^([245]\.\d{1,3}\.\d{1,3})\b`)

func (r reply) String() string { return fmt.Sprintf("%d %s", r.Code, r.Text) }

// smtpClient speaks just enough SMTP (RFC 5321) to submit test messages,
// plus Postfix's XCLIENT. It is written on net/textproto rather than with
// net/smtp or go-smtp's client because neither sends XCLIENT and then
// greets again after the server's new 220, and because the tests need every
// reply (and the stage it came at), which both hide behind errors.
type smtpClient struct {
	conn net.Conn
	text *textproto.Conn
	tr   *transcript
}

// dialSMTP connects to addr and reads the greeting.
func dialSMTP(t testing.TB, addr string, tr *transcript) *smtpClient {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatalf("connect to Postfix at %s: %v", addr, err)
	}
	c := &smtpClient{conn: conn, text: textproto.NewConn(conn), tr: tr}
	t.Cleanup(func() { c.conn.Close() })
	tr.add("*", "connected to "+addr)
	if r := c.read(t); r.Code != 220 {
		t.Fatalf("greeting: %v", r)
	}
	return c
}

func (c *smtpClient) read(t testing.TB) reply {
	t.Helper()
	c.conn.SetDeadline(time.Now().Add(60 * time.Second))
	code, msg, err := c.text.ReadResponse(0)
	if err != nil {
		if _, ok := err.(*textproto.Error); !ok {
			t.Fatalf("reading SMTP reply: %v\nSMTP dialogue so far:\n%s", err, c.tr)
		}
	}
	r := reply{Code: code, Text: msg}
	c.tr.add("S:", fmt.Sprintf("%d %s", code, msg))
	return r
}

// cmd sends one command line and returns the reply.
func (c *smtpClient) cmd(t testing.TB, format string, args ...any) reply {
	t.Helper()
	line := fmt.Sprintf(format, args...)
	c.tr.add("C:", line)
	c.conn.SetDeadline(time.Now().Add(60 * time.Second))
	if err := c.text.PrintfLine("%s", line); err != nil {
		t.Fatalf("sending %q: %v", line, err)
	}
	return c.read(t)
}

// ehlo greets and fails the test unless the server accepts.
func (c *smtpClient) ehlo(t testing.TB, name string) reply {
	t.Helper()
	r := c.cmd(t, "EHLO %s", name)
	if r.Code != 250 {
		t.Fatalf("EHLO %s: %v", name, r)
	}
	return r
}

// xclient makes Postfix treat the connection as coming from addr with the
// given reverse name (https://www.postfix.org/XCLIENT_README.html). Postfix
// answers with a new greeting; the client must EHLO again, which sets the
// HELO name the milter sees.
func (c *smtpClient) xclient(t testing.TB, addr, name, helo string) {
	t.Helper()
	if r := c.ehlo(t, helo); !strings.Contains(r.Text, "XCLIENT") {
		t.Fatalf("Postfix does not offer XCLIENT to this client (smtpd_authorized_xclient_hosts): %v", r)
	}
	if r := c.cmd(t, "XCLIENT ADDR=%s NAME=%s", addr, name); r.Code != 220 {
		t.Fatalf("XCLIENT: %v", r)
	}
	c.ehlo(t, helo)
}

// outcome is how Postfix answered one mail transaction: the reply that
// ended it and at which stage ("MAIL", "RCPT", "DATA" or "end of DATA").
type outcome struct {
	Stage   string
	Reply   reply
	QueueID string // from "250 2.0.0 Ok: queued as ID"
}

func (o outcome) String() string { return fmt.Sprintf("%s at %s", o.Reply, o.Stage) }

func (o outcome) accepted() bool { return o.Stage == "end of DATA" && o.Reply.Code == 250 }

var queuedAsRE = regexp.MustCompile(`queued as ([0-9A-Za-z]+)`)

// send runs one mail transaction. msg uses CRLF line endings; it is
// dot-stuffed here (RFC 5321 section 4.5.2). A transaction that fails
// before the end of DATA is reset, so the connection can go on.
func (c *smtpClient) send(t testing.TB, from, to string, msg []byte) outcome {
	t.Helper()
	if r := c.cmd(t, "MAIL FROM:<%s>", from); r.Code != 250 {
		c.cmd(t, "RSET")
		return outcome{Stage: "MAIL", Reply: r}
	}
	if r := c.cmd(t, "RCPT TO:<%s>", to); r.Code != 250 {
		c.cmd(t, "RSET")
		return outcome{Stage: "RCPT", Reply: r}
	}
	if r := c.cmd(t, "DATA"); r.Code != 354 {
		c.cmd(t, "RSET")
		return outcome{Stage: "DATA", Reply: r}
	}
	c.tr.add("C:", string(msg)+".")
	c.conn.SetDeadline(time.Now().Add(60 * time.Second))
	// DotWriter turns line endings into CRLF and dot-stuffs; it expects
	// "\n" line endings.
	w := c.text.DotWriter()
	if _, err := w.Write(bytes.ReplaceAll(msg, []byte("\r\n"), []byte("\n"))); err != nil {
		t.Fatalf("sending message: %v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("sending message: %v", err)
	}
	r := c.read(t)
	o := outcome{Stage: "end of DATA", Reply: r}
	if m := queuedAsRE.FindStringSubmatch(r.Text); r.Code == 250 && m != nil {
		o.QueueID = m[1]
	}
	return o
}

func (c *smtpClient) quit(t testing.TB) {
	t.Helper()
	c.cmd(t, "QUIT")
	c.conn.Close()
}
