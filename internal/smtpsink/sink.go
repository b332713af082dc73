// Package smtpsink is an SMTP server on loopback for tests: it keeps every
// message it accepts, and can be told to refuse commands with chosen replies
// (4xx, 5xx) or to stop listening, so that a client's retry and drop logic
// can be exercised. It is built on github.com/emersion/go-smtp's server.
package smtpsink

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// TB is the part of testing.TB the helpers use; the package does not import
// testing, so that commands (the bench's DNS server) can link it.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	Cleanup(func())
}

// Msg is one accepted message.
type Msg struct {
	From string   // MAIL FROM address, without angle brackets
	To   []string // RCPT TO addresses
	Data []byte   // the message as received (CRLF line ends)
	// TLS is true if the message came over a STARTTLS-protected session.
	TLS bool
	// AuthUser is the user name of a successful AUTH PLAIN, "" if none.
	AuthUser string
}

// Options configure a Sink.
type Options struct {
	// STARTTLS offers STARTTLS with a self-signed certificate for
	// 127.0.0.1 (made when the sink starts).
	STARTTLS bool
	// AuthUser and AuthPassword, if set, offer AUTH PLAIN and accept
	// exactly this user and password. Authentication is optional for
	// clients unless RequireAuth is set.
	AuthUser, AuthPassword string
	RequireAuth            bool
}

// Sink is a running SMTP server. Its methods are safe for concurrent use.
type Sink struct {
	// Addr is the host:port the sink listens on.
	Addr string

	opts   Options
	tlsCfg *tls.Config

	mu       sync.Mutex
	srv      *smtp.Server
	ln       net.Listener
	msgs     []Msg
	notify   chan struct{}
	mailErr  failure
	rcptErr  failure
	dataErr  failure
	attempts int
	hang     chan struct{} // set by HangData: DATA blocks until Stop
	inData   int           // DATA commands that reached the sink
}

// Start starts a sink on a free loopback port; it stops when the test ends.
func Start(t TB) *Sink { return StartWith(t, Options{}) }

// StartWith starts a sink with options.
func StartWith(t TB, opts Options) *Sink {
	t.Helper()
	s := &Sink{opts: opts, notify: make(chan struct{}, 1)}
	if opts.STARTTLS {
		s.tlsCfg = selfSigned(t)
	}
	if err := s.listen("127.0.0.1:0"); err != nil {
		t.Fatalf("smtpsink: %v", err)
	}
	t.Cleanup(s.Stop)
	return s
}

func (s *Sink) listen(addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		s.mu.Lock()
		s.attempts++
		s.mu.Unlock()
		return &session{sink: s, conn: c}, nil
	}))
	srv.Domain = "sink.test"
	srv.ReadTimeout = 10 * time.Second
	srv.WriteTimeout = 10 * time.Second
	srv.AllowInsecureAuth = true
	srv.TLSConfig = s.tlsCfg
	s.mu.Lock()
	s.srv = srv
	s.ln = l
	s.Addr = l.Addr().String()
	s.mu.Unlock()
	go srv.Serve(l)
	return nil
}

// Stop closes the listener and every open connection: the relay is down
// (connections are refused) until Restart.
func (s *Sink) Stop() {
	s.mu.Lock()
	srv, ln := s.srv, s.ln
	s.srv, s.ln = nil, nil
	if s.hang != nil {
		close(s.hang)
		s.hang = nil
	}
	s.mu.Unlock()
	if srv != nil {
		// The listener is closed here too: Serve may not have registered
		// it with the server yet.
		ln.Close()
		srv.Close()
	}
}

// Restart listens again on the same address after Stop.
func (s *Sink) Restart(t TB) {
	t.Helper()
	var err error
	// The port was ours a moment ago; retry briefly if the kernel has not
	// released it yet.
	for i := 0; i < 50; i++ {
		if err = s.listen(s.Addr); err == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("smtpsink: restart on %s: %v", s.Addr, err)
}

// HangData makes the sink stop answering in the middle of DATA, as a relay
// that hangs would: it reads the message and never replies, until Stop.
func (s *Sink) HangData() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hang = make(chan struct{})
}

// Release ends HangData: the hung DATA commands fail (as with a relay
// that drops the connection) and later ones are answered again.
func (s *Sink) Release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.hang != nil {
		close(s.hang)
		s.hang = nil
	}
}

// InData returns how many DATA commands have reached the sink.
func (s *Sink) InData() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inData
}

// FailMail, FailRcpt and FailData make the sink answer MAIL FROM, RCPT TO
// or the end of DATA with err (for example Temp(451) or Perm(550)) for the
// next n commands of that kind, or for every one if n < 0. A nil err
// clears the failure.
func (s *Sink) FailMail(err *smtp.SMTPError, n int) { s.fail(&s.mailErr, err, n) }

// FailRcpt: see FailMail.
func (s *Sink) FailRcpt(err *smtp.SMTPError, n int) { s.fail(&s.rcptErr, err, n) }

// FailData: see FailMail.
func (s *Sink) FailData(err *smtp.SMTPError, n int) { s.fail(&s.dataErr, err, n) }

// failure is a refusal the sink answers with: err for the next left
// commands (every one if left < 0).
type failure struct {
	err  *smtp.SMTPError
	left int
}

func (s *Sink) fail(slot *failure, err *smtp.SMTPError, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	*slot = failure{err: err, left: n}
}

// Temp returns a 451 4.3.0 style temporary error with the given code (4xx).
func Temp(code int) *smtp.SMTPError {
	return &smtp.SMTPError{Code: code, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try again later (smtpsink)"}
}

// Perm returns a permanent error with the given code (5xx).
func Perm(code int) *smtp.SMTPError {
	return &smtp.SMTPError{Code: code, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "refused (smtpsink)"}
}

// take returns the error to answer with from slot, consuming one use.
func (s *Sink) take(slot *failure) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if slot.err == nil || slot.left == 0 {
		return nil
	}
	err := slot.err
	if slot.left > 0 {
		slot.left--
	}
	return err
}

// Messages returns a copy of the messages accepted so far.
func (s *Sink) Messages() []Msg {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Msg(nil), s.msgs...)
}

// Connections returns how many SMTP sessions were opened so far.
func (s *Sink) Connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.attempts
}

// Wait waits until at least n messages were accepted and returns them; it
// fails the test after timeout.
func (s *Sink) Wait(t TB, n int, timeout time.Duration) []Msg {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		if m := s.Messages(); len(m) >= n {
			return m
		}
		select {
		case <-s.notify:
		case <-deadline.C:
			t.Fatalf("smtpsink: %d messages after %v, want %d", len(s.Messages()), timeout, n)
			return nil
		}
	}
}

type session struct {
	sink *Sink
	conn *smtp.Conn
	from string
	to   []string
	user string
}

func (ss *session) AuthMechanisms() []string {
	if ss.sink.opts.AuthUser == "" {
		return nil
	}
	return []string{sasl.Plain}
}

func (ss *session) Auth(mech string) (sasl.Server, error) {
	if mech != sasl.Plain {
		return nil, smtp.ErrAuthUnknownMechanism
	}
	return sasl.NewPlainServer(func(identity, username, password string) error {
		if username != ss.sink.opts.AuthUser || password != ss.sink.opts.AuthPassword {
			return errors.New("smtpsink: bad credentials")
		}
		ss.user = username
		return nil
	}), nil
}

func (ss *session) Mail(from string, _ *smtp.MailOptions) error {
	if ss.sink.opts.RequireAuth && ss.user == "" {
		return smtp.ErrAuthRequired
	}
	if err := ss.sink.take(&ss.sink.mailErr); err != nil {
		return err
	}
	ss.from = from
	return nil
}

func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if err := ss.sink.take(&ss.sink.rcptErr); err != nil {
		return err
	}
	ss.to = append(ss.to, to)
	return nil
}

func (ss *session) Data(r io.Reader) error {
	ss.sink.mu.Lock()
	ss.sink.inData++
	hang := ss.sink.hang
	ss.sink.mu.Unlock()
	var b bytes.Buffer
	if _, err := io.Copy(&b, r); err != nil {
		return err
	}
	if hang != nil {
		<-hang
		return errors.New("smtpsink: stopped while hanging in DATA")
	}
	if err := ss.sink.take(&ss.sink.dataErr); err != nil {
		return err
	}
	_, isTLS := ss.conn.TLSConnectionState()
	m := Msg{From: ss.from, To: append([]string(nil), ss.to...), Data: b.Bytes(), TLS: isTLS, AuthUser: ss.user}
	ss.sink.mu.Lock()
	ss.sink.msgs = append(ss.sink.msgs, m)
	ss.sink.mu.Unlock()
	select {
	case ss.sink.notify <- struct{}{}:
	default:
	}
	return nil
}

func (ss *session) Reset() { ss.from, ss.to = "", nil }

func (ss *session) Logout() error { return nil }

// selfSigned makes a TLS configuration with a fresh self-signed certificate
// for 127.0.0.1 and localhost.
func selfSigned(t TB) *tls.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("smtpsink: key: %v", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "smtpsink"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:     []string{"localhost"},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("smtpsink: certificate: %v", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
}
