//go:build e2e

package e2e

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dmarc-milter/dmarc-milter/internal/dnstest"
	"github.com/dmarc-milter/dmarc-milter/internal/smtpsink"
	"github.com/dmarc-milter/dmarc-milter/internal/testutil"
)

// authservID is the daemon's --authserv-id.
const authservID = "mx.e2e.example"

// Client addresses of testdata/zones/example.zone.
const (
	legitIP    = "192.0.2.10"    // in the SPF records of the *.example test domains
	attackerIP = "203.0.113.66"  // in none
	relayIP    = "198.51.100.7"  // in none: DMARC can pass only through DKIM
	listIP     = "198.51.100.20" // lists.example's SPF
	seedIP     = "203.0.113.67"  // the seed incident's sender: in no SPF record
	legitHelo  = "mx.example"    // no SPF record of its own
	otherHelo  = "relay.example" // does not exist
)

// env is what both passes share: the work directory, the freshly built
// daemon, the DNS server for the test zones and the SMTP sink.
type env struct {
	work string
	bin  string
	dns  *dnstest.Server
	sink *smtpsink.Sink
	// Keys of sel1._domainkey.pass.example and ed._domainkey.pass.example.
	rsa, ed25519 signer
}

func setup(t *testing.T) *env {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the end-to-end stage runs Postfix's master, which needs root: sudo bash e2e/run")
	}
	for _, cmd := range []string{"postfix", "postqueue", "dkimsign"} {
		if _, err := exec.LookPath(cmd); err != nil {
			t.Fatalf("%s not found (packages postfix and python3-dkim; bash e2e/run installs them): %v", cmd, err)
		}
	}

	// e2e/run passes its directory so that its trap can clean up after a
	// killed test run; alone, the test makes its own.
	work := os.Getenv("E2E_WORKDIR")
	if work == "" {
		var err error
		if work, err = os.MkdirTemp("", "dmarc-e2e-"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(work) })
	}
	// Postfix's daemons and the delivery user must get through.
	if err := os.Chmod(work, 0o755); err != nil {
		t.Fatal(err)
	}

	e := &env{
		work:    work,
		bin:     buildMilter(t, work),
		rsa:     signer{selector: "sel1", alg: "rsa-sha256", keyFile: "../testdata/keys/rsa2048.pem"},
		ed25519: signer{selector: "ed", alg: "ed25519-sha256", keyFile: ed25519Seed(t, "../testdata/keys/ed25519.pem", work)},
	}
	zones, err := filepath.Glob("../testdata/zones/*.zone")
	if err != nil || len(zones) == 0 {
		t.Fatalf("no test zones in ../testdata/zones: %v", err)
	}
	if e.dns, err = dnstest.ListenAndServe("127.0.0.1:0", zones...); err != nil {
		t.Fatalf("DNS server: %v", err)
	}
	t.Cleanup(func() { e.dns.Close() })
	e.sink = smtpsink.Start(t)
	return e
}

// pass is one run of the scenarios: a daemon listening on one transport
// and a Postfix instance calling it.
type pass struct {
	env     *env
	milter  *milterProc
	postfix *postfix
	// rejected is the Message-ID of the message testReject got refused.
	rejected string
}

// startPass starts the daemon on transport ("unix" or "inet") and a
// Postfix instance that calls it. Cleanups stop both, Postfix first.
func (e *env) startPass(t *testing.T, transport string) *pass {
	t.Helper()
	dir := filepath.Join(e.work, transport)
	sockDir := filepath.Join(dir, "milter")
	stateDir := filepath.Join(dir, "state")
	for _, d := range []string{dir, sockDir, stateDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	var listen string
	switch transport {
	case "unix":
		listen = "unix:" + filepath.Join(sockDir, "milter.sock")
	case "inet":
		listen = "inet:" + testutil.FreeAddr(t)
	default:
		t.Fatalf("unknown transport %q", transport)
	}
	// smtpd runs as the postfix user: it must be able to write to the
	// socket (in production the daemon shares a group with Postfix).
	config := filepath.Join(dir, "dmarc-milter.toml")
	write(t, config, "socket_mode = \"0666\"\n")

	p := &pass{env: e}
	p.milter = startMilter(t, e.bin, filepath.Join(e.work, "milter-"+transport+".pid"), milterArgs{
		listen:     listen,
		dns:        e.dns.Addr,
		config:     config,
		stateDir:   stateDir,
		reportSMTP: e.sink.Addr,
	})
	// The daemon's listen syntax is Postfix's smtpd_milters syntax.
	p.postfix = newPostfix(t, filepath.Join(dir, "postfix"), listen)
	p.postfix.start(t)
	return p
}

// begin starts a scenario: it returns the transcript for its SMTP
// connections and, should the scenario fail, prints that dialogue, the
// Postfix log and the daemon's log written meanwhile, and what the sink got.
func (p *pass) begin(t *testing.T) *transcript {
	tr := &transcript{}
	logOff := p.postfix.logSize()
	mark := p.milter.log.mark()
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		time.Sleep(500 * time.Millisecond) // postlogd writes asynchronously
		t.Logf("SMTP dialogue:\n%s", tr)
		t.Logf("Postfix log (%s) meanwhile:\n%s", p.postfix.maillog, p.postfix.log(logOff))
		t.Logf("dmarc-milter log meanwhile:\n%s", p.milter.log.since(mark))
		if s := sinkDump(p.env.sink); s != "" {
			t.Logf("SMTP sink received:\n%s", s)
		}
	})
	return tr
}

// connect opens an SMTP session that appears to come from addr.
func (p *pass) connect(t *testing.T, tr *transcript, addr, helo string) *smtpClient {
	t.Helper()
	c := dialSMTP(t, smtpAddr, tr)
	name := "[UNAVAILABLE]"
	if addr == legitIP {
		name = legitHelo
	}
	c.xclient(t, addr, name, helo)
	return c
}

// deliver sends m from addr (HELO helo) in an SMTP session of its own.
func (p *pass) deliver(t *testing.T, addr, helo, mailFrom string, m mail) outcome {
	t.Helper()
	c := p.connect(t, p.begin(t), addr, helo)
	o := c.send(t, mailFrom, mailboxAddr, m.raw)
	c.quit(t)
	return o
}

// mail is a test message.
type mail struct {
	id  string // Message-ID, with the angle brackets
	raw []byte // CRLF line endings
}

var nonAlnumRE = regexp.MustCompile(`[^A-Za-z0-9]+`)

// newMail builds a message from header lines (folded ones contain
// "\r\n" followed by white space) and a body, adding To, Date and a unique
// Message-ID.
func newMail(t *testing.T, headers []string, body string) mail {
	id := fmt.Sprintf("<%s.%d@e2e.test>", nonAlnumRE.ReplaceAllString(t.Name(), "."), time.Now().UnixNano())
	var b bytes.Buffer
	for _, h := range headers {
		b.WriteString(h + "\r\n")
	}
	b.WriteString("To: <" + mailboxAddr + ">\r\n")
	b.WriteString("Date: " + time.Now().Format(time.RFC1123Z) + "\r\n")
	b.WriteString("Message-ID: " + id + "\r\n")
	b.WriteString("\r\n" + body)
	return mail{id: id, raw: b.Bytes()}
}

// signer is a key of pass.example for dkimsign.
type signer struct {
	selector string
	alg      string // --signalg
	keyFile  string // PEM for RSA; for Ed25519 the base64 seed dkimsign wants
}

// dkimSign signs m with Debian's dkimsign (python3-dkim): a DKIM signer
// that is not ours, with canonicalization canon for header and body.
func dkimSign(t *testing.T, m mail, s signer, canon string) mail {
	t.Helper()
	cmd := exec.Command("dkimsign", "--signalg", s.alg, "--hcanon", canon, "--bcanon", canon,
		s.selector, "pass.example", s.keyFile)
	cmd.Stdin = bytes.NewReader(m.raw)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("dkimsign: %v\n%s", err, stderr.Bytes())
	}
	// dkimsign prints the message unsigned when signing fails.
	want := "a=" + s.alg + "; c=" + canon + "/" + canon + ";"
	if !bytes.HasPrefix(out, []byte("DKIM-Signature:")) || !bytes.Contains(out, []byte(want)) {
		t.Fatalf("dkimsign did not sign with %s:\n%s\n%s", want, out, stderr.Bytes())
	}
	return mail{id: m.id, raw: out}
}

// ed25519Seed writes the seed of the PKCS #8 Ed25519 key at pemFile, in
// base64, to a file in dir: the key format of dkimsign (PyNaCl).
func ed25519Seed(t *testing.T, pemFile, dir string) string {
	t.Helper()
	key := testutil.LoadKey(t, pemFile)
	priv, ok := key.(ed25519.PrivateKey)
	if !ok {
		t.Fatalf("%s: a %T, not an Ed25519 key", pemFile, key)
	}
	path := filepath.Join(dir, "ed25519.seed")
	write(t, path, base64.StdEncoding.EncodeToString(priv.Seed())+"\n")
	return path
}

// field is a header field of a delivered message, unfolded.
type field struct{ name, value string }

// headerFields splits the header of a delivered message (LF line endings,
// as virtual(8) writes Maildir files) into fields, in order.
func headerFields(msg []byte) []field {
	head, _, _ := strings.Cut(string(msg), "\n\n")
	var fs []field
	for _, line := range strings.Split(head, "\n") {
		if (strings.HasPrefix(line, " ") || strings.HasPrefix(line, "\t")) && len(fs) > 0 {
			fs[len(fs)-1].value += " " + strings.TrimSpace(line)
			continue
		}
		name, value, _ := strings.Cut(line, ":")
		fs = append(fs, field{name, strings.TrimSpace(value)})
	}
	return fs
}

var commentRE = regexp.MustCompile(`\([^)]*\)`)

// authservIDOf is the authserv-id of an Authentication-Results value
// (RFC 8601 section 2.2): the first token, after any comment.
func authservIDOf(value string) string {
	v := strings.TrimSpace(commentRE.ReplaceAllString(value, " "))
	if i := strings.IndexAny(v, "; \t"); i >= 0 {
		v = v[:i]
	}
	return v
}

func wantReject(t *testing.T, o outcome) {
	t.Helper()
	if o.Stage != "end of DATA" || o.Reply.Code != 550 || o.Reply.enhanced() != "5.7.1" {
		t.Errorf("got %v, want 550 5.7.1 at end of DATA", o)
	}
}

func wantAccepted(t *testing.T, o outcome) {
	t.Helper()
	if !o.accepted() || o.QueueID == "" {
		t.Fatalf("got %v, want 250 queued at end of DATA", o)
	}
}

func wantVerdict(t *testing.T, v verdict, clientIP, dmarc, action string) {
	t.Helper()
	if v.ClientIP != clientIP || v.DMARC != dmarc || v.Action != action {
		t.Errorf("verdict of %s: client_ip=%s dmarc=%s action=%s, want client_ip=%s dmarc=%s action=%s",
			v.QueueID, v.ClientIP, v.DMARC, v.Action, clientIP, dmarc, action)
	}
}

// scenario is one check run in each pass. Scenarios open their own SMTP
// connections; the daemon and Postfix are those of the pass.
type scenario struct {
	name string
	run  func(t *testing.T, p *pass)
}

// scenarios run in order, in each pass, before the daemon is stopped.
var scenarios = []scenario{
	{"reject", testReject},
	{"failure-report-after-reject", testFailureReport},
	// Before the DKIM scenarios, whose passes from relayIP would make
	// 198.51.100.0/24 a known network of pass.example.
	{"list-post-held", testListPost},
	{"seed-spoof-rejected", testSeedSpoof},
	{"quarantine-held", testQuarantine},
	{"pass-delivered", testPassDelivered},
	{"dkim-rsa-simple", func(t *testing.T, p *pass) { testDKIM(t, p, p.env.rsa, "simple") }},
	{"dkim-rsa-relaxed", func(t *testing.T, p *pass) { testDKIM(t, p, p.env.rsa, "relaxed") }},
	{"dkim-ed25519-relaxed", func(t *testing.T, p *pass) { testDKIM(t, p, p.env.ed25519, "relaxed") }},
	{"two-from-refused", testTwoFrom},
	{"three-on-one-connection", testThreeOnOneConnection},
	{"logs-clean", testLogsClean},
}

func TestPostfix(t *testing.T) {
	e := setup(t)
	for _, transport := range []string{"unix", "inet"} {
		t.Run(transport, func(t *testing.T) {
			start := time.Now()
			p := e.startPass(t, transport)
			t.Logf("dmarc-milter and Postfix up in %v", time.Since(start).Round(time.Millisecond))
			for _, sc := range scenarios {
				t.Run(sc.name, func(t *testing.T) { sc.run(t, p) })
			}
			// Last: it stops the daemon.
			t.Run("milter-stopped-tempfail", func(t *testing.T) { testMilterStopped(t, p) })
		})
	}
}

// testReject: a message failing DMARC for a p=reject domain is refused with
// 550 5.7.1 in reply to the end of DATA.
func testReject(t *testing.T, p *pass) {
	m := newMail(t, []string{"From: Pass <ceo@pass.example>", "Subject: wire the money"}, "Please.\r\n")
	o := p.deliver(t, attackerIP, "attacker.example", "ceo@pass.example", m)
	wantReject(t, o)
	p.rejected = m.id
	if !strings.Contains(o.Reply.Text, "pass.example") {
		t.Errorf("reject text %q does not name the domain", o.Reply.Text)
	}
	v := p.milter.verdictFor(t, p.postfix.queueIDOf(t, m.id))
	wantVerdict(t, v, attackerIP, "fail", "reject")
}

// testFailureReport: the reject above produces a failure report (RFC 9991)
// for pass.example, whose record asks for them (ruf=, fo=0), delivered by
// the daemon to the report relay, here the SMTP sink on loopback. The
// report carries the rejected message's header, so its Message-ID tells
// this pass's report from the other's.
func testFailureReport(t *testing.T, p *pass) {
	if p.rejected == "" {
		t.Fatal("the reject scenario did not run")
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		for _, m := range p.env.sink.Messages() {
			data := string(m.Data)
			if !strings.Contains(data, "Message-ID: "+p.rejected) {
				continue
			}
			for _, want := range []string{"Subject: DMARC failure report for pass.example from " + attackerIP,
				"Content-Type: multipart/report", "report-type=feedback-report", "Feedback-Type: auth-failure",
				"Reported-Domain: pass.example", "Source-IP: " + attackerIP,
				"Delivery-Result: reject", "Authentication-Results: " + authservID, "Subject: wire the money"} {
				if !strings.Contains(data, want) {
					t.Errorf("failure report lacks %q", want)
				}
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no failure report for pass.example from %s reached the SMTP sink", attackerIP)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// testListPost: RFC 9989 sections 7.4 and 8. A post of the p=reject
// domain pass.example, genuinely signed by it, through a mailing list that
// added List-Id and a footer, fails DMARC but is not rejected: it is held
// (quarantine), and the verdict line says why.
func testListPost(t *testing.T, p *pass) {
	post := dkimSign(t, newMail(t, []string{"From: Bob <bob@pass.example>", "Subject: hello list"}, "Hello list.\r\n"), p.env.rsa, "relaxed")
	post.raw = append([]byte("List-Id: <talk.lists.example>\r\n"), post.raw...)
	post.raw = append(post.raw, "--\r\ntalk mailing list\r\n"...)
	o := p.deliver(t, listIP, "mx.lists.example", "talk-bounces@lists.example", post)
	wantAccepted(t, o)
	v := p.milter.verdictFor(t, o.QueueID)
	wantVerdict(t, v, listIP, "fail", "quarantine")
	if v.Enforced != "quarantine" || !strings.Contains(v.PolicyOverride, "mailing_list") || !strings.Contains(v.OverrideComment, "List-Id") {
		t.Errorf("verdict: enforced=%s policy_override=%q override_comment=%q, want quarantine for the mailing list", v.Enforced, v.PolicyOverride, v.OverrideComment)
	}
	wantHeld(t, p, o)
}

// testSeedSpoof: the seed incident (../shared/seeds): kantiflow.xyz, with
// no signature, from an address its SPF record does not authorize, is
// rejected, and the reply says why so that a postmaster can act.
func testSeedSpoof(t *testing.T, p *pass) {
	m := newMail(t, []string{"From: <JONqjnh@kantiflow.xyz>", "Subject: invoice"}, "Pay.\r\n")
	o := p.deliver(t, seedIP, "spam.example", "JONqjnh@kantiflow.xyz", m)
	wantReject(t, o)
	if want := "no signature of kantiflow.xyz; SPF does not authorize " + seedIP; !strings.Contains(o.Reply.Text, want) {
		t.Errorf("reject text %q does not say %q", o.Reply.Text, want)
	}
}

// wantHeld checks that Postfix holds the message of o (quarantine).
func wantHeld(t *testing.T, p *pass, o outcome) {
	t.Helper()
	var where []string
	for _, q := range p.postfix.queued(t) {
		if q.QueueID == o.QueueID {
			where = append(where, q.QueueName)
		}
	}
	if !slices.Equal(where, []string{"hold"}) {
		t.Errorf("postqueue -j has %s in queues %v, want [hold]", o.QueueID, where)
	}
}

// sinkDump shows what the report relay received.
func sinkDump(s *smtpsink.Sink) string {
	var b strings.Builder
	for i, m := range s.Messages() {
		fmt.Fprintf(&b, "--- message %d: from <%s> to %v\n%s\n", i+1, m.From, m.To, m.Data)
	}
	return b.String()
}

// testQuarantine: a message failing DMARC for a p=quarantine domain is
// accepted and lands in Postfix's hold queue.
func testQuarantine(t *testing.T, p *pass) {
	m := newMail(t, []string{"From: <billing@quarantine.example>", "Subject: invoice"}, "Attached.\r\n")
	o := p.deliver(t, attackerIP, "attacker.example", "billing@quarantine.example", m)
	wantAccepted(t, o)
	wantVerdict(t, p.milter.verdictFor(t, o.QueueID), attackerIP, "fail", "quarantine")
	wantHeld(t, p, o)
}

// testPassDelivered: a message passing DMARC (SPF aligned) is delivered
// with our Authentication-Results field as the first one, before every
// header field the client sent, and the fields forged with our authserv-id
// (any case, with a comment) removed while a foreign one stays.
func testPassDelivered(t *testing.T, p *pass) {
	m := newMail(t, []string{
		"Authentication-Results: other.example; spf=pass smtp.mailfrom=pass.example",
		"Authentication-Results: " + authservID + "; dmarc=pass header.from=pass.example",
		"Authentication-Results: MX.E2E.Example (forged);\r\n\tdkim=pass header.d=pass.example",
		"From: Alice <alice@pass.example>",
		"Subject: hello",
	}, "Hello.\r\n")
	o := p.deliver(t, legitIP, legitHelo, "alice@pass.example", m)
	wantAccepted(t, o)
	v := p.milter.verdictFor(t, o.QueueID)
	wantVerdict(t, v, legitIP, "pass", "accept")
	if v.RemovedForgedAR != 2 {
		t.Errorf("removed_forged_ar = %d, want 2", v.RemovedForgedAR)
	}

	fields := headerFields(p.postfix.delivered(t, m.id))
	var names []string
	ours, foreign := -1, -1
	for i, f := range fields {
		names = append(names, f.name)
		if !strings.EqualFold(f.name, "Authentication-Results") {
			continue
		}
		switch id := authservIDOf(f.value); {
		case strings.EqualFold(id, authservID) && ours < 0 && foreign < 0:
			ours = i
		case strings.EqualFold(id, authservID):
			t.Errorf("a second Authentication-Results field with our authserv-id was delivered: %q", f.value)
		case id == "other.example":
			foreign = i
		default:
			t.Errorf("unexpected Authentication-Results field: %q", f.value)
		}
	}
	t.Logf("delivered header fields: %s", strings.Join(names, ", "))
	switch {
	case ours < 0:
		t.Errorf("our Authentication-Results is not the first one delivered")
	case foreign < 0:
		t.Errorf("the foreign Authentication-Results field (other.example) was removed")
	case ours > foreign:
		t.Errorf("our Authentication-Results (field %d) does not precede the client's first field (%d)", ours, foreign)
	default:
		a := fields[ours].value
		for _, want := range []string{"dmarc=pass", "spf=pass", "header.from=pass.example"} {
			if !strings.Contains(a, want) {
				t.Errorf("our Authentication-Results %q lacks %q", a, want)
			}
		}
	}
}

// testDKIM: a message with folded From and Subject fields, signed by
// dkimsign with key s and canonicalization canon, passes DKIM and so DMARC
// although SPF fails, and is delivered.
func testDKIM(t *testing.T, p *pass, s signer, canon string) {
	m := dkimSign(t, newMail(t, []string{
		"From: \"Alice\r\n  Example\"\r\n\t<alice@pass.example>",
		"Subject: a subject folded\r\n over  three\r\n\tlines  ",
		"X-Mailer:   spaced   out",
	}, "First line.  \r\n\r\n.A line starting with a dot\r\nTrailing white space \t\r\n\r\n\r\n"), s, canon)
	o := p.deliver(t, relayIP, otherHelo, "bounce@pass.example", m)
	wantAccepted(t, o)
	v := p.milter.verdictFor(t, o.QueueID)
	wantVerdict(t, v, relayIP, "pass", "accept")
	if v.SPF != "fail" || !slices.Contains(v.DKIM, "pass.example:pass") {
		t.Errorf("verdict: spf=%s dkim=%v, want spf=fail and dkim pass.example:pass", v.SPF, v.DKIM)
	}
	delivered := p.postfix.delivered(t, m.id)
	for _, f := range headerFields(delivered) {
		if strings.EqualFold(f.name, "Authentication-Results") {
			if !strings.Contains(f.value, "dkim=pass") || !strings.Contains(f.value, "header.d=pass.example") {
				t.Errorf("first Authentication-Results %q lacks dkim=pass header.d=pass.example", f.value)
			}
			break
		}
	}
}

// testTwoFrom: a message with two From fields is refused (RFC 9989: no
// single author domain to evaluate).
func testTwoFrom(t *testing.T, p *pass) {
	m := newMail(t, []string{
		"From: Alice <alice@pass.example>",
		"From: Mallory <mallory@quarantine.example>",
		"Subject: two authors",
	}, "Hello.\r\n")
	o := p.deliver(t, legitIP, legitHelo, "alice@pass.example", m)
	wantReject(t, o)
	v := p.milter.verdictFor(t, p.postfix.queueIDOf(t, m.id))
	if v.Action != "reject" || v.FromError == "" {
		t.Errorf("verdict: action=%s from_error=%q, want reject with a from_error", v.Action, v.FromError)
	}
}

// testThreeOnOneConnection: three transactions after one XCLIENT are each
// judged with that connection's address: pass, reject (SPF passes for the
// address but is not aligned with strict.example's aspf=s), pass.
func testThreeOnOneConnection(t *testing.T, p *pass) {
	tr := p.begin(t)
	c := p.connect(t, tr, legitIP, legitHelo)
	first := newMail(t, []string{"From: <alice@pass.example>", "Subject: one"}, "1\r\n")
	second := newMail(t, []string{"From: <alice@strict.example>", "Subject: two"}, "2\r\n")
	third := newMail(t, []string{"From: <bob@pass.example>", "Subject: three"}, "3\r\n")
	o1 := c.send(t, "alice@pass.example", mailboxAddr, first.raw)
	o2 := c.send(t, "bounce@mail.strict.example", mailboxAddr, second.raw)
	o3 := c.send(t, "bob@pass.example", mailboxAddr, third.raw)
	c.quit(t)
	wantAccepted(t, o1)
	wantReject(t, o2)
	wantAccepted(t, o3)
	wantVerdict(t, p.milter.verdictFor(t, o1.QueueID), legitIP, "pass", "accept")
	wantVerdict(t, p.milter.verdictFor(t, p.postfix.queueIDOf(t, second.id)), legitIP, "fail", "reject")
	wantVerdict(t, p.milter.verdictFor(t, o3.QueueID), legitIP, "pass", "accept")
}

var postfixProblemRE = regexp.MustCompile(`postfix/[\w-]+\[\d+\]: (warning|error|fatal|panic):`)

// testLogsClean: while the daemon ran, neither Postfix nor the daemon
// complained; a milter reply Postfix cannot use, for one, shows up only as a
// Postfix warning.
func testLogsClean(t *testing.T, p *pass) {
	for _, line := range strings.Split(p.postfix.log(0), "\n") {
		if postfixProblemRE.MatchString(line) {
			t.Errorf("Postfix logged: %s", line)
		}
	}
	for _, line := range p.milter.log.lines() {
		var l struct{ Level string }
		if err := json.Unmarshal([]byte(line), &l); err != nil {
			t.Errorf("dmarc-milter logged a line that is not JSON: %s", line)
		} else if l.Level != "info" && l.Level != "debug" {
			t.Errorf("dmarc-milter logged: %s", line)
		}
	}
}

// testMilterStopped: with the daemon stopped and milter_default_action =
// tempfail, Postfix answers 4xx. The daemon must first shut down cleanly on
// SIGTERM.
func testMilterStopped(t *testing.T, p *pass) {
	tr := p.begin(t)
	if err := p.milter.stop(t); err != nil {
		t.Errorf("dmarc-milter did not exit cleanly on SIGTERM: %v", err)
	}
	c := p.connect(t, tr, legitIP, legitHelo)
	m := newMail(t, []string{"From: <alice@pass.example>", "Subject: nobody home"}, "Hello.\r\n")
	o := c.send(t, "alice@pass.example", mailboxAddr, m.raw)
	c.quit(t)
	if o.Reply.Code/100 != 4 {
		t.Errorf("got %v, want a 4xx reply", o)
	}
	t.Logf("with the milter stopped Postfix answered %v", o)
}
