package milter_test

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	gomilter "github.com/emersion/go-milter"
	"github.com/rs/zerolog"

	"github.com/dmarc-milter/dmarc-milter/milter"
)

// recorder is a Handler that notes what the server hands it and answers
// Continue, or what reply says at end of message.
type recorder struct {
	mu     *sync.Mutex
	events *[]string
	reply  func(c *milter.Conn) milter.Reply
}

func (r recorder) note(s string) {
	r.mu.Lock()
	*r.events = append(*r.events, s)
	r.mu.Unlock()
}

func (r recorder) Connect(c *milter.Conn, host string, addr net.IP) milter.Reply {
	r.note("connect " + host + " " + addr.String())
	return milter.Continue
}
func (r recorder) Helo(c *milter.Conn, name string) milter.Reply {
	r.note("helo " + name)
	return milter.Continue
}
func (r recorder) MailFrom(c *milter.Conn, reversePath string, args []string) milter.Reply {
	r.note("mail " + reversePath + " " + strings.Join(args, ",") + " auth=" + c.Macro("{auth_authen}"))
	return milter.Continue
}
func (r recorder) Header(c *milter.Conn, name, value string) milter.Reply {
	r.note("header " + name + ":" + value)
	return milter.Continue
}
func (r recorder) EndOfHeaders(c *milter.Conn) milter.Reply { r.note("eoh"); return milter.Continue }
func (r recorder) Body(c *milter.Conn, chunk []byte) milter.Reply {
	r.note("body " + string(chunk))
	return milter.Continue
}
func (r recorder) EndOfMessage(c *milter.Conn) milter.Reply {
	r.note("eom i=" + c.Macro("i"))
	if r.reply != nil {
		return r.reply(c)
	}
	return milter.Continue
}
func (r recorder) Abort(c *milter.Conn) { r.note("abort") }
func (r recorder) Close(c *milter.Conn) { r.note("close") }

type server struct {
	srv    *milter.Server
	sock   string
	logs   *bytes.Buffer
	mu     sync.Mutex
	events []string
}

func (s *server) Events() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.events...)
}

// start runs a Server with recorder handlers on a unix socket.
func start(t *testing.T, timeouts milter.Timeouts, reply func(c *milter.Conn) milter.Reply) *server {
	t.Helper()
	s := &server{logs: &bytes.Buffer{}}
	var logMu sync.Mutex
	s.srv = &milter.Server{
		NewHandler: func() milter.Handler { return recorder{mu: &s.mu, events: &s.events, reply: reply} },
		Log:        zerolog.New(zerolog.SyncWriter(lockedWriter{&logMu, s.logs})),
		Timeouts:   timeouts,
		Actions:    milter.DefaultActions,
	}
	dir, err := os.MkdirTemp("", "mt")
	if err != nil {
		t.Fatal(err)
	}
	s.sock = filepath.Join(dir, "m.sock")
	ln, err := net.Listen("unix", s.sock)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { s.srv.Serve(ln); close(done) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.srv.Shutdown(ctx)
		<-done
		os.RemoveAll(dir)
	})
	return s
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (s *server) dial(t *testing.T, protocol gomilter.OptProtocol) *gomilter.ClientSession {
	t.Helper()
	c := gomilter.NewClientWithOptions("unix", s.sock, gomilter.ClientOptions{
		ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second,
		ActionMask: milter.PostfixActions, ProtocolMask: protocol,
	})
	cs, err := c.Session()
	if err != nil {
		t.Fatalf("milter session: %v", err)
	}
	t.Cleanup(func() { cs.Close() })
	return cs
}

// The server hands the handler what Postfix sends, as sent: the client,
// HELO, the MAIL FROM argument with its angle brackets (go-milter's client
// adds them, as Postfix sends them) and the ESMTP
// parameters, macros of the stage, header fields with their leading space
// (negotiated), the body, and end of message with the queue ID.
func TestServerHandsEventsOver(t *testing.T) {
	s := start(t, milter.Timeouts{}, nil)
	cs := s.dial(t, milter.PostfixProtocol&^(gomilter.OptNoMailReply|gomilter.OptNoHeaderReply|gomilter.OptNoEOHReply|gomilter.OptNoBodyReply|gomilter.OptNoHeloReply|gomilter.OptNoConnReply))
	if _, err := cs.Conn("client.example", gomilter.FamilyInet, 40000, "192.0.2.7"); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.Helo("helo.example"); err != nil {
		t.Fatal(err)
	}
	cs.Macros(gomilter.CodeMail, "{auth_authen}", "alice")
	if _, err := cs.Mail("bob@example.org", []string{"SIZE=100"}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.HeaderField("Subject", " hi"); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.HeaderEnd(); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.BodyChunk([]byte("body\r\n")); err != nil {
		t.Fatal(err)
	}
	cs.Macros(gomilter.CodeEOB, "i", "4AE9D403CC")
	if _, _, err := cs.End(); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"connect client.example 192.0.2.7",
		"helo helo.example",
		"mail <bob@example.org> SIZE=100 auth=alice",
		"header Subject: hi",
		"eoh",
		"body body\r\n",
		"eom i=4AE9D403CC",
	}
	got := s.Events()
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("events:\n got %q\nwant %q", got, want)
	}
}

// Garbage on the socket ends that connection, logged; the server goes on.
func TestGarbageConnection(t *testing.T) {
	s := start(t, milter.Timeouts{}, nil)
	for _, junk := range [][]byte{
		[]byte("GET / HTTP/1.0\r\n\r\n"),             // length 0x47455420: too large
		{0, 0, 0, 0},                                 // zero length
		{0, 0, 0, 5, 'Z', 1, 2, 3, 4},                // unknown command
		{0, 0, 0, 3, 'O', 0, 0},                      // short negotiation
		{0, 0, 0, 2, 'C', 'x'},                       // connect without family
		{0, 0, 0, 9},                                 // truncated packet
		{0, 0, 0, 6, 'C', 'h', 0, '4', 0, 0},         // connect with short port
		{0, 0, 0, 2, 'D', 'C', 0, 0, 0, 2, 'L', 'x'}, // header without NUL
	} {
		c, err := net.Dial("unix", s.sock)
		if err != nil {
			t.Fatal(err)
		}
		c.Write(junk)
		c.(*net.UnixConn).CloseWrite()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 64)
		if _, err := c.Read(buf); err == nil {
			// Any reply is fine as long as the connection then ends.
			if _, err := c.Read(buf); err == nil {
				t.Errorf("junk %q: connection still open", junk)
			}
		}
		c.Close()
	}
	cs := s.dial(t, milter.PostfixProtocol)
	if _, err := cs.Conn("client.example", gomilter.FamilyInet, 40000, "192.0.2.7"); err != nil {
		t.Errorf("the server does not serve after garbage: %v", err)
	}
}

// A handler that panics ends its own connection only.
func TestPanicEndsOnlyThatConnection(t *testing.T) {
	s := start(t, milter.Timeouts{}, func(c *milter.Conn) milter.Reply {
		if c.Macro("i") == "PANIC" {
			panic("boom")
		}
		return milter.Continue
	})
	other := s.dial(t, milter.PostfixProtocol)
	cs := s.dial(t, milter.PostfixProtocol)
	for _, c := range []*gomilter.ClientSession{other, cs} {
		c.Conn("client.example", gomilter.FamilyInet, 40000, "192.0.2.7")
		c.Mail("bob@example.org", nil)
	}
	cs.Macros(gomilter.CodeEOB, "i", "PANIC")
	if _, _, err := cs.End(); err == nil {
		t.Error("the panicking connection answered")
	}
	other.Macros(gomilter.CodeEOB, "i", "OK")
	if _, act, err := other.End(); err != nil || act.Code != gomilter.ActContinue {
		t.Errorf("the other connection: %v %+v", err, act)
	}
}

func TestIdleTimeout(t *testing.T) {
	s := start(t, milter.Timeouts{Idle: 100 * time.Millisecond}, nil)
	c, err := net.Dial("unix", s.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || os.IsTimeout(err) {
		t.Errorf("idle connection not closed by the server: %v", err)
	}
}

func TestReadTimeout(t *testing.T) {
	s := start(t, milter.Timeouts{Read: 100 * time.Millisecond}, nil)
	c, err := net.Dial("unix", s.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte{0, 0, 0, 13, 'O'}) // a packet that never completes
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || os.IsTimeout(err) {
		t.Errorf("stalled command not timed out by the server: %v", err)
	}
}

// An SMTP reply reaches the MTA with '%' escaped and line breaks removed.
func TestSMTPReplyEscapes(t *testing.T) {
	s := start(t, milter.Timeouts{}, func(*milter.Conn) milter.Reply {
		return milter.SMTPReply(550, "5.7.1", "50% off\r\nnext")
	})
	cs := s.dial(t, milter.PostfixProtocol)
	cs.Conn("client.example", gomilter.FamilyInet, 40000, "192.0.2.7")
	cs.Mail("bob@example.org", nil)
	_, act, err := cs.End()
	if err != nil || act.Code != gomilter.ActReplyCode || act.SMTPCode != 550 || act.SMTPText != "5.7.1 50%% off  next" {
		t.Errorf("reply %+v, %v", act, err)
	}
}
