// The 512-bit test key must be usable for signing so that the verifier's
// own RFC 8301 check (not Go's crypto policy) is what rejects it.
//go:debug rsa1024min=0

package session_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	gomilter "github.com/emersion/go-milter"
	msgdkim "github.com/emersion/go-msgauth/dkim"
	"github.com/rs/zerolog"

	"github.com/dmarc-milter/dmarc-milter/internal/dnstest"
	"github.com/dmarc-milter/dmarc-milter/internal/miltertest"
	"github.com/dmarc-milter/dmarc-milter/internal/rfc5322"
	"github.com/dmarc-milter/dmarc-milter/internal/testutil"
	"github.com/dmarc-milter/dmarc-milter/milter"
	"github.com/dmarc-milter/dmarc-milter/policy"
	"github.com/dmarc-milter/dmarc-milter/policy/senders"
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
	logs    *testutil.SyncBuffer
	// settings are the sessions' settings.
	settings session.Settings
}

type envOptions struct {
	policy    func(*policy.Config)
	settings  func(*session.Settings)
	timeouts  milter.Timeouts
	dnsTimout time.Duration
	// tcp listens on 127.0.0.1 instead of a unix socket.
	tcp bool
	// known remembers the networks of DMARC passes (policy/senders), as
	// the daemon does.
	known bool
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
	e := &env{t: t, logs: &testutil.SyncBuffer{}}
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
	if o.known {
		ks := senders.New(0, nil)
		set.Evaluator.UseKnownSenders(ks)
		rec := senders.NewRecorder(ks, res, nil, log, nil)
		set.Consumers = append(set.Consumers, rec)
		ctx, stop := context.WithCancel(context.Background())
		t.Cleanup(stop)
		go rec.Run(ctx)
	}
	if o.settings != nil {
		o.settings(&set)
	}
	e.settings = set
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

// dial opens a milter session the way Postfix does. protocol 0 means
// Postfix's own offer.
func (e *env) dial(protocol gomilter.OptProtocol) *gomilter.ClientSession {
	e.t.Helper()
	return miltertest.Dial(e.t, e.network, e.sock, protocol, nil)
}

// dialWith is dial with a dialer of the caller's (nil: net.Dialer).
func (e *env) dialWith(protocol gomilter.OptProtocol, d gomilter.Dialer) *gomilter.ClientSession {
	e.t.Helper()
	return miltertest.Dial(e.t, e.network, e.sock, protocol, d)
}

// msg is one SMTP transaction as Postfix would hand it to the milter.
type msg struct {
	authUser string
	mailFrom string
	queueID  string
	raw      string // the message, CRLF line endings
}

// outcome is what the milter answered at end of message.
type outcome = miltertest.Outcome

// connectAndHelo starts an SMTP connection from ip.
func connectAndHelo(t testing.TB, s *gomilter.ClientSession, ip, helo string) {
	t.Helper()
	miltertest.Connect(t, s, ip, helo)
}

// send runs one message over an established session.
func send(t testing.TB, s *gomilter.ClientSession, m msg) outcome {
	t.Helper()
	return miltertest.Send(t, s, miltertest.Msg{AuthUser: m.authUser, MailFrom: m.mailFrom, QueueID: m.queueID, Raw: m.raw})
}

// run sends one message on a fresh connection from ip.
func (e *env) run(ip, helo string, m msg) outcome {
	e.t.Helper()
	s := e.dial(0)
	connectAndHelo(e.t, s, ip, helo)
	return send(e.t, s, m)
}

// splitMessage splits a message into header fields as Postfix hands
// them to a milter (rfc5322.Split): the value keeps its leading space only
// when SMFIP_HDR_LEADSPC was negotiated.
func splitMessage(t testing.TB, raw string, leadingSpace bool) ([][2]string, string) {
	t.Helper()
	fields, body, err := rfc5322.Split([]byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	var out [][2]string
	for _, f := range fields {
		v := f.Value
		if !leadingSpace {
			v = strings.TrimPrefix(v, " ")
		}
		out = append(out, [2]string{f.Name, v})
	}
	return out, string(body)
}

// message builds a CRLF message from header lines and a body.
func message(headers []string, body string) string {
	return strings.Join(headers, "\r\n") + "\r\n\r\n" + strings.ReplaceAll(body, "\n", "\r\n")
}

// sign adds a DKIM-Signature to raw with go-msgauth's signer and a key of
// testdata/keys.
func sign(t testing.TB, raw, domain, selector, keyFile string, canon msgdkim.Canonicalization) string {
	t.Helper()
	return testutil.Sign(t, raw, domain, selector, filepath.Join("..", "testdata", "keys", keyFile), canon)
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
