// The 512-bit test key must be usable for signing so that the verifier's
// own RFC 8301 check (not Go's crypto policy) is what rejects it.
//go:debug rsa1024min=0

package session_test

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	gomilter "github.com/emersion/go-milter"
	msgdkim "github.com/emersion/go-msgauth/dkim"
	"github.com/rs/zerolog"

	"github.com/dmarc-milter/dmarc-milter/internal/dnstest"
	"github.com/dmarc-milter/dmarc-milter/milter"
	"github.com/dmarc-milter/dmarc-milter/policy"
	"github.com/dmarc-milter/dmarc-milter/resolver"
	"github.com/dmarc-milter/dmarc-milter/session"
)

// env is a running dmarc-milter: an authoritative DNS server for the test
// zones on loopback, the caching resolver pointed at it, and the milter
// server on a unix socket.
type env struct {
	t       testing.TB
	dns     *dnstest.Server
	res     *resolver.Resolver
	srv     *milter.Server
	sock    string // unix socket path, or TCP address when network is "tcp"
	network string
	logs    *syncBuffer
}

type envOptions struct {
	policy    func(*policy.Config)
	settings  func(*session.Settings)
	timeouts  milter.Timeouts
	dnsTimout time.Duration
	// tcp listens on 127.0.0.1 instead of a unix socket.
	tcp bool
}

// syncBuffer collects log output from concurrent sessions.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func testZones(t testing.TB) []string {
	t.Helper()
	files, err := filepath.Glob("../testdata/zones/*.zone")
	if err != nil || len(files) == 0 {
		t.Fatalf("no test zones: %v", err)
	}
	var zones []string
	for _, f := range files {
		z, err := dnstest.LoadZoneFile(f)
		if err != nil {
			t.Fatalf("zone %s: %v", f, err)
		}
		zones = append(zones, z)
	}
	return zones
}

func newEnv(t testing.TB, o envOptions) *env {
	t.Helper()
	e := &env{t: t, logs: &syncBuffer{}}
	e.dns = dnstest.NewServer(t, testZones(t)...)
	if o.dnsTimout == 0 {
		o.dnsTimout = 300 * time.Millisecond
	}
	res, err := resolver.New(resolver.Config{Servers: []string{e.dns.Addr}, Timeout: o.dnsTimout, Attempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	e.res = res
	pc := policy.Config{
		AuthservID:    "mx.test.example",
		RejectBadFrom: true,
		Quarantine:    policy.QuarantineHold,
	}
	if o.policy != nil {
		o.policy(&pc)
	}
	log := zerolog.New(e.logs)
	set := session.Settings{
		Evaluator:         policy.New(pc, res),
		LookupTXT:         res.LookupTXT,
		PrefetchTXT:       res.PrefetchTXT,
		MaxDKIMSignatures: 5,
		CheckTimeout:      5 * time.Second,
		Log:               log,
	}
	if o.settings != nil {
		o.settings(&set)
	}
	e.srv = &milter.Server{
		NewHandler: session.NewHandler(set),
		Log:        log,
		Timeouts:   o.timeouts,
		Actions:    milter.DefaultActions,
	}
	dir, err := os.MkdirTemp("", "dm")
	if err != nil {
		t.Fatal(err)
	}
	e.network, e.sock = "unix", filepath.Join(dir, "m.sock")
	if o.tcp {
		e.network, e.sock = "tcp", "127.0.0.1:0"
	}
	ln, err := net.Listen(e.network, e.sock)
	if err != nil {
		t.Fatal(err)
	}
	e.sock = ln.Addr().String()
	done := make(chan struct{})
	go func() { e.srv.Serve(ln); close(done) }()
	t.Cleanup(func() {
		e.srv.Shutdown(contextWithTimeout(t, 5*time.Second))
		<-done
		os.RemoveAll(dir)
		if t.Failed() {
			t.Logf("milter log:\n%s", e.logs.String())
		}
	})
	return e
}

// Postfix's offer in option negotiation.
const (
	postfixProtocol = milter.PostfixProtocol
	postfixActions  = milter.PostfixActions
)

// dial opens a milter session the way Postfix does. protocol 0 means
// postfixProtocol.
func (e *env) dial(protocol gomilter.OptProtocol) *gomilter.ClientSession {
	e.t.Helper()
	return e.dialWith(protocol, nil)
}

// dialWith is dial with a dialer of the caller's (nil: net.Dialer).
func (e *env) dialWith(protocol gomilter.OptProtocol, d gomilter.Dialer) *gomilter.ClientSession {
	e.t.Helper()
	if protocol == 0 {
		protocol = postfixProtocol
	}
	c := gomilter.NewClientWithOptions(e.network, e.sock, gomilter.ClientOptions{
		Dialer:       d,
		ReadTimeout:  10 * time.Second,
		WriteTimeout: 10 * time.Second,
		ActionMask:   postfixActions,
		ProtocolMask: protocol,
	})
	s, err := c.Session()
	if err != nil {
		e.t.Fatalf("milter session: %v", err)
	}
	e.t.Cleanup(func() { s.Close() })
	return s
}

// msg is one SMTP transaction as Postfix would hand it to the milter.
type msg struct {
	authUser string
	mailFrom string
	queueID  string
	raw      string // the message, CRLF line endings
}

// outcome is what the milter answered at end of message.
type outcome struct {
	act  *gomilter.Action
	mods []gomilter.ModifyAction
}

func (o outcome) code() int {
	switch o.act.Code {
	case gomilter.ActReplyCode:
		return o.act.SMTPCode
	case gomilter.ActReject:
		return 550
	case gomilter.ActTempFail:
		return 451
	}
	return 250
}

func (o outcome) quarantined() bool {
	for _, m := range o.mods {
		if m.Code == gomilter.ActQuarantine {
			return true
		}
	}
	return false
}

// authResults returns the Authentication-Results value we inserted, or "".
func (o outcome) authResults() string {
	for _, m := range o.mods {
		if m.Code == gomilter.ActInsertHeader && m.HeaderName == "Authentication-Results" {
			return m.HeaderValue
		}
	}
	return ""
}

// connectAndHelo starts an SMTP connection from ip.
func connectAndHelo(t testing.TB, s *gomilter.ClientSession, ip, helo string) {
	t.Helper()
	fam := gomilter.FamilyInet
	if strings.Contains(ip, ":") {
		fam = gomilter.FamilyInet6
	}
	if err := s.Macros(gomilter.CodeConn, "j", "mx.test.example", "{daemon_name}", "smtpd"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Conn("client.example", fam, 40000, ip); err != nil {
		t.Fatalf("connect: %v", err)
	}
	if _, err := s.Helo(helo); err != nil {
		t.Fatalf("helo: %v", err)
	}
}

// send runs one message over an established session.
func send(t testing.TB, s *gomilter.ClientSession, m msg) outcome {
	t.Helper()
	kv := []string{"{mail_addr}", m.mailFrom}
	if m.authUser != "" {
		kv = append(kv, "{auth_authen}", m.authUser, "{auth_type}", "PLAIN")
	}
	if err := s.Macros(gomilter.CodeMail, kv...); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Mail(m.mailFrom, nil); err != nil {
		t.Fatalf("mail: %v", err)
	}
	if _, err := s.Rcpt("rcpt@test.example", nil); err != nil {
		t.Fatalf("rcpt: %v", err)
	}
	fields, body := splitMessage(t, m.raw, s.ProtocolOption(gomilter.OptHeaderLeadingSpace))
	for _, f := range fields {
		if _, err := s.HeaderField(f[0], f[1]); err != nil {
			t.Fatalf("header: %v", err)
		}
	}
	if _, err := s.HeaderEnd(); err != nil {
		t.Fatalf("eoh: %v", err)
	}
	// Postfix sends the body in chunks of at most 64 KiB.
	for len(body) > 0 {
		n := min(len(body), gomilter.MaxBodyChunk)
		if _, err := s.BodyChunk([]byte(body[:n])); err != nil {
			t.Fatalf("body: %v", err)
		}
		body = body[n:]
	}
	if m.queueID == "" {
		m.queueID = "4ABCDEF"
	}
	if err := s.Macros(gomilter.CodeEOB, "i", m.queueID); err != nil {
		t.Fatal(err)
	}
	mods, act, err := s.End()
	if err != nil {
		t.Fatalf("end of message: %v", err)
	}
	return outcome{act: act, mods: mods}
}

// run sends one message on a fresh connection from ip.
func (e *env) run(ip, helo string, m msg) outcome {
	e.t.Helper()
	s := e.dial(0)
	connectAndHelo(e.t, s, ip, helo)
	return send(e.t, s, m)
}

// splitMessage splits a CRLF message into header fields as Postfix hands
// them to a milter: the value keeps its leading space only when
// SMFIP_HDR_LEADSPC was negotiated, and folding uses bare LF.
func splitMessage(t testing.TB, raw string, leadingSpace bool) ([][2]string, string) {
	t.Helper()
	head, body, ok := strings.Cut(raw, "\r\n\r\n")
	if !ok {
		head, body = strings.TrimSuffix(raw, "\r\n"), ""
	}
	var fields [][2]string
	for _, line := range strings.Split(head, "\r\n") {
		if len(fields) > 0 && (strings.HasPrefix(line, " ") || strings.HasPrefix(line, "\t")) {
			fields[len(fields)-1][1] += "\n" + line
			continue
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok {
			t.Fatalf("bad header line %q", line)
		}
		if !leadingSpace {
			value = strings.TrimPrefix(value, " ")
		}
		fields = append(fields, [2]string{name, value})
	}
	return fields, body
}

// message builds a CRLF message from header lines and a body.
func message(headers []string, body string) string {
	return strings.Join(headers, "\r\n") + "\r\n\r\n" + strings.ReplaceAll(body, "\n", "\r\n")
}

func loadKey(t testing.TB, name string) crypto.Signer {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "testdata", "keys", name))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: no PEM", name)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return k.(crypto.Signer)
}

// sign adds a DKIM-Signature to raw with go-msgauth's signer.
func sign(t testing.TB, raw, domain, selector, keyFile string, canon msgdkim.Canonicalization) string {
	t.Helper()
	var out bytes.Buffer
	opts := &msgdkim.SignOptions{
		Domain:                 domain,
		Selector:               selector,
		Signer:                 loadKey(t, keyFile),
		HeaderCanonicalization: canon,
		BodyCanonicalization:   canon,
		HeaderKeys:             []string{"From", "To", "Subject", "Date", "Message-ID"},
	}
	if err := msgdkim.Sign(&out, strings.NewReader(raw), opts); err != nil {
		t.Fatalf("sign: %v", err)
	}
	return out.String()
}

func plainMessage(from, subject string) string {
	return message([]string{
		"From: " + from,
		"To: rcpt@test.example",
		"Subject: " + subject,
		"Date: Mon, 23 Nov 2026 10:00:00 +0000",
		"Message-ID: <" + fmt.Sprint(time.Now().UnixNano()) + "@test.example>",
	}, "Hello,\nthis is a test message.\n")
}
