package report

import (
	"bufio"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-message"
	"github.com/emersion/go-message/textproto"
	"github.com/rs/zerolog"

	"github.com/dmarc-milter/dmarc-milter/internal/dnstest"
	"github.com/dmarc-milter/dmarc-milter/policy"
	"github.com/dmarc-milter/dmarc-milter/policy/dkim"
	"github.com/dmarc-milter/dmarc-milter/policy/dmarc"
	"github.com/dmarc-milter/dmarc-milter/policy/spf"
	"github.com/dmarc-milter/dmarc-milter/report/outbox"
)

func newResolver() *dnstest.Resolver {
	return &dnstest.Resolver{TXT: map[string][]string{
		"_dmarc.example.com.": {"v=DMARC1; p=reject"},
		"bad.example.":        {"v=spf1 ip4:198.51.100.0/24 -all"},
		"example.com.":        {"v=spf1 ip4:203.0.113.0/24 -all", "google-site-verification=x"},
		// reports.example.net agrees to receive reports for example.com.
		"example.com._report._dmarc.reports.example.net.": {"v=DMARC1;"},
		// other.example publishes something that is not an authorization.
		"example.com._report._dmarc.other.example.": {"v=spf1 -all"},
	}}
}

// failure returns a message from 192.0.2.1 claiming From example.com with
// a failing DKIM signature of example.com and an SPF fail for bad.example:
// DMARC fails. record is the DMARC record of example.com.
func failure(t testing.TB, record string) *policy.Judged {
	t.Helper()
	rec, err := dmarc.ParseRecord(record)
	if err != nil {
		t.Fatalf("ParseRecord(%q): %v", record, err)
	}
	v := policy.Verdict{
		DMARC: dmarc.Result{
			Status: dmarc.Fail, FromDomain: "example.com", PolicyDomain: "example.com", OrgDomain: "example.com",
			Record: rec, Policy: rec.Policy, Applied: rec.Policy, Requested: rec.Policy,
		},
	}
	switch rec.Policy {
	case dmarc.PolicyReject:
		v.Action = policy.Reject
		v.Reply = policy.Reply{Code: 550, Enhanced: "5.7.1", Text: "Message rejected: DMARC policy of example.com says reject"}
	case dmarc.PolicyQuarantine:
		v.Action = policy.Quarantine
	}
	return &policy.Judged{
		Message: &policy.Message{
			QueueID:    "4AE9D403CC",
			Arrival:    time.Date(2026, 5, 4, 10, 11, 12, 0, time.UTC),
			ClientIP:   net.ParseIP("192.0.2.1"),
			ClientHost: "mail.bad.example",
			Helo:       "mail.bad.example",
			MailFrom:   "bounce+x@bad.example",
			Header: []policy.Field{
				{Name: "Received", Value: " from mail.bad.example (mail.bad.example [192.0.2.1])\n\tby mx.example.net (Postfix) with ESMTP id 4AE9D403CC\n\tfor <alice@example.net>; Mon, 4 May 2026 10:11:12 +0000"},
				{Name: "DKIM-Signature", Value: " v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com; s=sel1;\n\th=From:To:Subject; bh=AAAA; b=abcdefghijkl"},
				{Name: "From", Value: " \"Bank\" <alerts@example.com>"},
				{Name: "To", Value: " alice@example.net"},
				{Name: "Subject", Value: " Your account"},
				{Name: "Message-ID", Value: " <123@mail.bad.example>"},
				{Name: "Date", Value: " Mon, 4 May 2026 10:11:10 +0000"},
			},
			LeadingSpace: true,
			SPF:          spf.Result{Status: spf.Fail, Domain: "bad.example", Identity: spf.IdentityMailFrom},
			HeloSPF:      spf.Result{Status: spf.None, Domain: "mail.bad.example", Identity: spf.IdentityHelo},
			DKIM: []dkim.Result{{
				Status: dkim.Fail, Domain: "example.com", Selector: "sel1", Identifier: "@example.com",
				Algorithm: "rsa-sha256", BPrefix: "abcdefgh", Err: dkim.ErrBodyHash,
			}},
		},
		Verdict:     v,
		AuthResults: "mx.example.net;\n\tspf=fail smtp.mailfrom=bounce+x@bad.example;\n\tdkim=fail header.d=example.com header.s=sel1;\n\tdmarc=fail header.from=example.com policy.dmarc=reject",
	}
}

// testSetup is the configuration of a Reporter and of its outbox.
type testSetup struct {
	Config
	Out outbox.Config
}

func testConfig(t testing.TB) testSetup {
	return testSetup{
		Config: Config{
			Enabled:      true,
			From:         "dmarc-reports@mx.example.net",
			ReportingMTA: "mx.example.net",
			UserAgent:    "dmarc-milter/test",
		},
		Out: outbox.Config{
			Dir:         filepath.Join(t.TempDir(), "spool"),
			From:        "dmarc-reports@mx.example.net",
			Hello:       "mx.example.net",
			MinBackoff:  20 * time.Millisecond,
			MaxBackoff:  100 * time.Millisecond,
			SMTPTimeout: 5 * time.Second,
		},
	}
}

// newWith returns a Reporter of cfg with its own outbox, as the daemon
// makes them.
func newWith(cfg testSetup, res Resolver, log zerolog.Logger, now func() time.Time) (*Reporter, error) {
	out, err := outbox.New(cfg.Out, log, now)
	if err != nil {
		return nil, err
	}
	return New(cfg.Config, res, out, log, now)
}

// testLogger writes to the test log.
func testLogger(t testing.TB) zerolog.Logger {
	return zerolog.New(zerolog.TestWriter{T: t}).Level(zerolog.DebugLevel)
}

// parsedReport is a report read back with go-message.
type parsedReport struct {
	header   message.Header
	types    []string // content types of the parts, in order
	params   []map[string]string
	text     string
	feedback textproto.Header
	original []byte
}

func parseReport(t testing.TB, raw []byte) *parsedReport {
	t.Helper()
	e, err := message.Read(strings.NewReader(string(raw)))
	if err != nil {
		t.Fatalf("message.Read: %v", err)
	}
	p := &parsedReport{header: e.Header}
	mr := e.MultipartReader()
	if mr == nil {
		t.Fatalf("report is not multipart")
	}
	for {
		part, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("NextPart: %v", err)
		}
		ct, params, err := part.Header.ContentType()
		if err != nil {
			t.Fatalf("part content type: %v", err)
		}
		p.types = append(p.types, ct)
		p.params = append(p.params, params)
		body, err := io.ReadAll(part.Body)
		if err != nil {
			t.Fatalf("part body: %v", err)
		}
		switch ct {
		case "text/plain":
			p.text = string(body)
		case "message/feedback-report":
			h, err := textproto.ReadHeader(bufio.NewReader(strings.NewReader(string(body))))
			if err != nil {
				t.Fatalf("feedback fields: %v", err)
			}
			p.feedback = h
		default:
			p.original = body
		}
	}
	return p
}

// spoolFiles lists the report files in dir.
func spoolFiles(t testing.TB, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*.report"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// readSpoolFile reads the spooled report at path (a spoolFiles name).
func readSpoolFile(path string) (outbox.Entry, []byte, error) {
	return outbox.Read(filepath.Dir(path), strings.TrimSuffix(filepath.Base(path), ".report"))
}
