package aggregate

import (
	"archive/zip"
	"bytes"
	"cmp"
	"compress/gzip"
	"context"
	"encoding/json"
	"io"
	"mime"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-message/mail"
	"github.com/rs/zerolog"

	"github.com/dmarc-milter/dmarc-milter/internal/conformance"
	"github.com/dmarc-milter/dmarc-milter/internal/dnstest"
	"github.com/dmarc-milter/dmarc-milter/internal/pgtest"
	"github.com/dmarc-milter/dmarc-milter/internal/smtpsink"
	"github.com/dmarc-milter/dmarc-milter/policy"
	"github.com/dmarc-milter/dmarc-milter/policy/dkim"
	"github.com/dmarc-milter/dmarc-milter/policy/dmarc"
	"github.com/dmarc-milter/dmarc-milter/policy/spf"
	"github.com/dmarc-milter/dmarc-milter/report"
	"github.com/dmarc-milter/dmarc-milter/report/outbox"
	"github.com/dmarc-milter/dmarc-milter/report/store"
)

var t0 = time.Date(2026, 11, 29, 0, 0, 0, 0, time.UTC)

// judged is a message from ip claiming From domain, judged under record.
func judged(t testing.TB, domain, record, ip string, status dmarc.Status, action policy.Action) *policy.Judged {
	t.Helper()
	rec, err := dmarc.ParseRecord(record)
	if err != nil {
		t.Fatal(err)
	}
	applied := rec.Policy
	if rec.Testing && applied == dmarc.PolicyReject {
		applied = dmarc.PolicyQuarantine
	}
	m := &policy.Message{Arrival: t0.Add(time.Hour), ClientIP: net.ParseIP(ip), MailFrom: "x@bounce.esp.example", RcptDomain: "mx.example.net",
		SPF:  spf.Result{Status: spf.Fail, Domain: "bounce.esp.example", Identity: spf.IdentityMailFrom},
		DKIM: []dkim.Result{{Status: dkim.Pass, Domain: "esp.example", Selector: "s1"}},
	}
	v := policy.Verdict{
		DMARC:  dmarc.Result{Status: status, FromDomain: domain, PolicyDomain: domain, Record: rec, Policy: rec.Policy, Applied: applied},
		Action: action,
	}
	if status == dmarc.Fail {
		v.DMARC.Requested, v.Enforced = applied, applied
	} else {
		v.DMARC.Requested = dmarc.PolicyNone
		v.DMARC.DKIMAligned = true
		m.DKIM[0].Domain = domain
	}
	return &policy.Judged{Message: m, Verdict: v}
}

func TestRowOf(t *testing.T) {
	const reject = "v=DMARC1; p=reject; rua=mailto:agg@example.com"
	tests := []struct {
		name   string
		record string // reject if empty
		ip     string // 192.0.2.1 if empty
		status dmarc.Status
		action policy.Action
		// change, if set, changes the judged message further.
		change  func(j *policy.Judged)
		counted bool
		want    Row
	}{
		{name: "pass under p=reject: disposition pass", status: dmarc.Pass, action: policy.Accept,
			counted: true, want: Row{Disposition: "pass", DKIM: "pass", SPF: "fail"}},
		{name: "pass under p=none: disposition none", record: "v=DMARC1; p=none; rua=mailto:agg@example.com", status: dmarc.Pass, action: policy.Accept,
			counted: true, want: Row{Disposition: "none", DKIM: "pass", SPF: "fail"}},
		{name: "rejected", status: dmarc.Fail, action: policy.Reject,
			counted: true, want: Row{Disposition: "reject", DKIM: "fail", SPF: "fail"}},
		{name: "held in quarantine", record: "v=DMARC1; p=quarantine; rua=mailto:agg@example.com", status: dmarc.Fail, action: policy.Quarantine,
			counted: true, want: Row{Disposition: "quarantine", DKIM: "fail", SPF: "fail"}},
		{name: "quarantine by marking only", record: "v=DMARC1; p=quarantine; rua=mailto:agg@example.com", status: dmarc.Fail, action: policy.Accept,
			counted: true, want: Row{Disposition: "quarantine", DKIM: "fail", SPF: "fail"}},
		{name: "t=y: quarantine instead of reject, said", record: "v=DMARC1; p=reject; t=y; rua=mailto:agg@example.com", status: dmarc.Fail, action: policy.Quarantine,
			change: func(j *policy.Judged) {
				j.Verdict.Overrides = []policy.Override{{Type: policy.OverrideTestMode, Comment: "t=y: reject applied as quarantine"}}
			},
			counted: true, want: Row{Disposition: "quarantine", DKIM: "fail", SPF: "fail",
				Reasons: []Reason{{Type: string(policy.OverrideTestMode), Comment: "t=y: reject applied as quarantine"}}}},
		{name: "trusted network: none, local_policy", ip: "10.1.2.3", status: dmarc.Fail, action: policy.Accept,
			change: func(j *policy.Judged) {
				j.Verdict.Exempt, j.Verdict.Enforced = policy.ExemptTrustedNetwork, dmarc.PolicyNone
				j.Verdict.Overrides = []policy.Override{{Type: policy.OverrideLocalPolicy, Comment: "trusted network"}}
			},
			counted: true, want: Row{Disposition: "none", DKIM: "fail", SPF: "fail",
				Reasons: []Reason{{Type: string(policy.OverrideLocalPolicy), Comment: "trusted network"}}}},
		{name: "no rua: not counted", record: "v=DMARC1; p=reject; ruf=mailto:f@example.com", status: dmarc.Fail, action: policy.Reject},
		{name: "only a non-mailto rua: not counted", record: "v=DMARC1; p=reject; rua=https://example.com/r", status: dmarc.Fail, action: policy.Reject},
		{name: "a mailing list: reject applied as quarantine, said", status: dmarc.Fail, action: policy.Quarantine,
			change: func(j *policy.Judged) {
				j.Verdict.Enforced = dmarc.PolicyQuarantine
				j.Verdict.Overrides = []policy.Override{{Type: policy.OverrideMailingList, Comment: "mailing list, List-Id"}}
			},
			counted: true, want: Row{Disposition: "quarantine", DKIM: "fail", SPF: "fail",
				Reasons: []Reason{{Type: "mailing_list", Comment: "mailing list, List-Id"}}}},
		{name: "temperror: not counted", status: dmarc.Fail, action: policy.TempFail,
			change: func(j *policy.Judged) { j.Verdict.DMARC.Status, j.Verdict.DMARC.Requested = dmarc.TempError, "" }},
		{name: "no record: not counted", status: dmarc.Fail, action: policy.Accept,
			change: func(j *policy.Judged) { j.Verdict.DMARC = dmarc.Result{Status: dmarc.None} }},
		{name: "bad From: not counted", status: dmarc.Fail, action: policy.Reject,
			change: func(j *policy.Judged) { j.Verdict.FromErr = dmarc.ErrMultipleFrom }},
		{name: "our own report: not counted", status: dmarc.Pass, action: policy.Accept,
			change: func(j *policy.Judged) { j.MailFrom = "dmarc-reports@mx.example.net" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j := judged(t, "example.com", cmp.Or(tt.record, reject), cmp.Or(tt.ip, "192.0.2.1"), tt.status, tt.action)
			if tt.change != nil {
				tt.change(j)
			}
			row, pub, ok := RowOf(j, Facts{EnvelopeTo: true, OwnAddress: "dmarc-reports@mx.example.net"})
			if ok != tt.counted {
				t.Fatalf("counted %v, want %v", ok, tt.counted)
			}
			if !ok {
				return
			}
			if row.Disposition != tt.want.Disposition || row.DKIM != tt.want.DKIM || row.SPF != tt.want.SPF {
				t.Errorf("row %+v, want disposition %s dkim %s spf %s", row, tt.want.Disposition, tt.want.DKIM, tt.want.SPF)
			}
			if got, want := mustJSON(row.Reasons), mustJSON(tt.want.Reasons); got != want {
				t.Errorf("reasons %s, want %s", got, want)
			}
			if row.EnvelopeTo != "mx.example.net" || row.EnvelopeFrom != "bounce.esp.example" || row.AuthSPF == nil ||
				row.AuthSPF.Scope != "mfrom" || len(row.AuthDKIM) != 1 || row.AuthDKIM[0].Selector != "s1" {
				t.Errorf("identifiers or auth results: %+v", row)
			}
			if pub.Domain != "example.com" || pub.Discovery != "treewalk" || len(pub.RUA) != 1 {
				t.Errorf("published %+v", pub)
			}
		})
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func TestPeriod(t *testing.T) {
	day := 24 * time.Hour
	if p := Period(time.Date(2026, 11, 30, 23, 59, 59, 0, time.UTC), day); p != time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC).Unix() {
		t.Errorf("day period starts at %v", time.Unix(p, 0).UTC())
	}
	if p := Period(time.Date(2026, 11, 30, 10, 0, 7, 0, time.UTC), 5*time.Second); p != time.Date(2026, 11, 30, 10, 0, 5, 0, time.UTC).Unix() {
		t.Errorf("5 s period starts at %v", time.Unix(p, 0).UTC())
	}
}

func testLogger(t testing.TB) zerolog.Logger {
	return zerolog.New(zerolog.TestWriter{T: t}).Level(zerolog.DebugLevel)
}

func openStore(t testing.TB, dsn string) *store.Store {
	t.Helper()
	st, err := store.Open(context.Background(), dsn, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

var meta = Meta{OrgName: "Example Receiver", Email: "dmarc-reports@mx.example.net", Generator: "dmarc-milter test", Submitter: "mx.example.net"}

// A mix of messages recorded by two hosts gives one report per domain
// whose records and counts are what was recorded, grouped; the XML
// validates against RFC 9990's schema and parses back.
func TestReportRoundTrip(t *testing.T) {
	st := openStore(t, "")
	day := 24 * time.Hour
	hosts := []*Recorder{
		NewRecorder(st, day, time.Hour, Facts{}, testLogger(t), nil),
		NewRecorder(st, day, time.Hour, Facts{}, testLogger(t), nil),
	}
	const reject = "v=DMARC1; p=reject; rua=mailto:agg@example.com"
	counts := map[string]int{}
	for i := range 60 {
		var j *policy.Judged
		switch i % 4 {
		case 0, 1:
			j = judged(t, "example.com", reject, "192.0.2.1", dmarc.Pass, policy.Accept)
		case 2:
			j = judged(t, "example.com", reject, "198.51.100.7", dmarc.Fail, policy.Reject)
		case 3:
			j = judged(t, "example.org", "v=DMARC1; p=none; rua=mailto:agg@example.org", "192.0.2.9", dmarc.Fail, policy.Accept)
		}
		counts[j.Verdict.FromDomain()]++
		hosts[i%2].Submit(j)
	}
	for _, h := range hosts {
		if err := h.Flush(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	snd := NewSender(Config{Interval: day, Meta: meta, From: "dmarc-reports@mx.example.net"}, st, nil, nil, testLogger(t), nil)
	for domain, n := range counts {
		rep, err := snd.Build(context.Background(), store.Key{Period: t0.Unix(), Domain: domain})
		if err != nil {
			t.Fatal(err)
		}
		validate(t, rep.XML)
		f, err := Parse(rep.XML)
		if err != nil {
			t.Fatal(err)
		}
		var sum int64
		for _, r := range f.Records {
			sum += int64(r.Row.Count)
		}
		wantRecords := map[string]int{"example.com": 2, "example.org": 1}[domain]
		if sum != int64(n) || len(f.Records) != wantRecords {
			t.Errorf("%s: %d messages in %d records, want %d in %d", domain, sum, len(f.Records), n, wantRecords)
		}
		md := f.Metadata
		if f.PolicyPublished.Domain != domain || md.OrgName != "Example Receiver" || int64(md.DateRange.Begin) != t0.Unix() ||
			int64(md.DateRange.End) != t0.Add(day).Unix()-1 || !strings.Contains(md.ReportID, domain) {
			t.Errorf("%s: metadata %+v policy %+v", domain, md, f.PolicyPublished)
		}
		zr, err := gzip.NewReader(bytes.NewReader(rep.Gzip))
		if err != nil {
			t.Fatal(err)
		}
		if unz, _ := io.ReadAll(zr); !bytes.Equal(unz, rep.XML) {
			t.Errorf("%s: gzip does not hold the XML", domain)
		}
		// The message reads back (ReadMessage, what the daemon and e2e
		// tests read reports with): the attachment's name and the XML.
		msg, err := snd.Message(rep, "agg@"+domain)
		if err != nil {
			t.Fatal(err)
		}
		if name, x, err := ReadMessage(msg); err != nil || name != rep.FileName(meta.Submitter) || !bytes.Equal(x, rep.XML) {
			t.Errorf("%s: read back %q (%d bytes) %v, want %q", domain, name, len(x), err, rep.FileName(meta.Submitter))
		}
	}
	if _, _, err := ReadMessage([]byte("Subject: x\r\n\r\nno attachment\r\n")); err == nil {
		t.Error("a message without a report read as one")
	}
}

// validate checks xml against RFC 9990's schema with xmllint, when both are
// here (CI installs libxml2-utils).
func validate(t *testing.T, xml []byte) {
	t.Helper()
	xsd := filepath.Join(conformance.Dir(t, "aggregate"), "xsd", "ietf-draft-aggregate-reporting", "dmarc-xml-0.2.xsd")
	if _, err := exec.LookPath("xmllint"); err != nil {
		t.Logf("xmllint not installed (apt-get install libxml2-utils): schema validation skipped")
		return
	}
	f := filepath.Join(t.TempDir(), "report.xml")
	if err := os.WriteFile(f, xml, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("xmllint", "--noout", "--schema", xsd, f).CombinedOutput(); err != nil {
		t.Errorf("report does not validate against the RFC 9990 schema: %v\n%s\n%s", err, out, xml)
	}
}

// Beyond the size bound the records with the fewest messages are left
// out, and the report says so; the rest still validates.
func TestSizeBound(t *testing.T) {
	st := openStore(t, "")
	day := 24 * time.Hour
	rec := NewRecorder(st, day, time.Hour, Facts{}, testLogger(t), nil)
	const reject = "v=DMARC1; p=reject; rua=mailto:agg@example.com"
	total := 0
	for i := range 2000 {
		// 2000 sources, the first ones with more messages.
		n := 1
		if i < 10 {
			n = 50
		}
		for range n {
			ip := net.IPv4(10, byte(i>>16), byte(i>>8), byte(i)).String()
			rec.Submit(judged(t, "example.com", reject, ip, dmarc.Fail, policy.Reject))
			total++
		}
	}
	if err := rec.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	snd := NewSender(Config{Interval: day, Meta: meta, MaxSize: 4096}, st, nil, nil, testLogger(t), nil)
	rep, err := snd.Build(context.Background(), store.Key{Period: t0.Unix(), Domain: "example.com"})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Gzip) > 4096 {
		t.Errorf("report of %d bytes over the bound", len(rep.Gzip))
	}
	if rep.OmittedRecords == 0 || rep.Records+rep.OmittedRecords != 2000 || rep.Messages != int64(total) ||
		!strings.Contains(rep.Feedback.Metadata.Error, "left out") {
		t.Errorf("records %d omitted %d (messages %d omitted %d), error %q", rep.Records, rep.OmittedRecords, rep.Messages, rep.OmittedMessages, rep.Feedback.Metadata.Error)
	}
	// The largest sources are kept.
	if rep.Feedback.Records[0].Row.Count != 50 {
		t.Errorf("first record has %d messages, want the largest (50)", rep.Feedback.Records[0].Row.Count)
	}
	validate(t, rep.XML)
}

// The public samples parse with our types: every well-formed XML one (as
// xmllint found them, VALIDATION-MATRIX.json), compressed or inside a
// message; where mail-auth gives the parsed form, our counts agree.
func TestSamplesParse(t *testing.T) {
	dir := conformance.Dir(t, "aggregate")
	var matrix struct {
		Files map[string]struct {
			WellFormed *bool  `json:"well_formed"`
			Container  string `json:"container"`
		} `json:"files"`
	}
	data, err := os.ReadFile(filepath.Join(dir, "VALIDATION-MATRIX.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &matrix); err != nil {
		t.Fatal(err)
	}
	parsed := 0
	for name, info := range matrix.Files {
		raw, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		var xmls [][]byte
		switch info.Container {
		case "":
			xmls = [][]byte{raw}
		case "gz", "zip":
			xmls = [][]byte{decompress(t, name, raw)}
		case "eml":
			xmls = attachments(t, name, raw)
		}
		for _, x := range xmls {
			f, err := Parse(x)
			wellFormed := info.WellFormed == nil || *info.WellFormed
			if wellFormed && err != nil {
				t.Errorf("%s: %v", name, err)
				continue
			}
			if err != nil {
				continue // not well-formed: an error, not a crash
			}
			parsed++
			if f.Metadata.ReportID == "" && len(f.Records) == 0 {
				t.Errorf("%s: parsed to nothing", name)
			}
			want := filepath.Join(dir, strings.TrimSuffix(name, filepath.Ext(name))+".json")
			if strings.HasPrefix(name, "mail-auth/") {
				compareMailAuth(t, name, want, f)
			}
		}
	}
	if parsed < 20 {
		t.Errorf("only %d samples parsed", parsed)
	}
}

// compareMailAuth checks our parse against mail-auth's JSON of the sample.
func compareMailAuth(t *testing.T, name, path string, f *Feedback) {
	data, err := os.ReadFile(path)
	if err != nil {
		return
	}
	var want struct {
		Metadata struct {
			OrgName  string `json:"org_name"`
			ReportID string `json:"report_id"`
		} `json:"report_metadata"`
		Records []struct {
			Row struct {
				Count int64 `json:"count"`
			} `json:"row"`
		} `json:"record"`
	}
	if err := json.Unmarshal(data, &want); err != nil {
		t.Errorf("%s: %v", path, err)
		return
	}
	var sum, wantSum int64
	for _, r := range f.Records {
		sum += int64(r.Row.Count)
	}
	for _, r := range want.Records {
		wantSum += r.Row.Count
	}
	if f.Metadata.OrgName != want.Metadata.OrgName || f.Metadata.ReportID != want.Metadata.ReportID ||
		len(f.Records) != len(want.Records) || sum != wantSum {
		t.Errorf("%s: org %q id %q, %d records %d messages; mail-auth: %q %q, %d records %d messages",
			name, f.Metadata.OrgName, f.Metadata.ReportID, len(f.Records), sum,
			want.Metadata.OrgName, want.Metadata.ReportID, len(want.Records), wantSum)
	}
}

func decompress(t *testing.T, name string, raw []byte) []byte {
	if zr, err := gzip.NewReader(bytes.NewReader(raw)); err == nil {
		// One member: some senders append junk after it.
		zr.Multistream(false)
		out, err := io.ReadAll(zr)
		if err == nil {
			return out
		}
	}
	zr, err := zip.NewReader(bytes.NewReader(raw), int64(len(raw)))
	if err != nil || len(zr.File) == 0 {
		t.Errorf("%s: neither gzip nor zip: %v", name, err)
		return nil
	}
	rc, err := zr.File[0].Open()
	if err != nil {
		t.Errorf("%s: %v", name, err)
		return nil
	}
	defer rc.Close()
	out, _ := io.ReadAll(rc)
	return out
}

// attachments returns the reports attached to a message.
func attachments(t *testing.T, name string, raw []byte) [][]byte {
	mr, err := mail.CreateReader(bytes.NewReader(raw))
	if err != nil {
		t.Errorf("%s: %v", name, err)
		return nil
	}
	var out [][]byte
	for {
		p, err := mr.NextPart()
		if err != nil {
			break
		}
		ct := strings.ToLower(p.Header.Get("Content-Type"))
		body, _ := io.ReadAll(p.Body)
		mt, _, _ := mime.ParseMediaType(ct)
		switch {
		case strings.Contains(mt, "gzip"), strings.Contains(mt, "zip"), strings.Contains(mt, "octet-stream"):
			if x := decompress(t, name, body); x != nil {
				out = append(out, x)
			}
		case strings.HasSuffix(mt, "/xml"):
			out = append(out, body)
		}
	}
	if len(out) == 0 {
		t.Errorf("%s: no report attached", name)
	}
	return out
}

// testResolver publishes the policies of the sender tests (the external
// destination check looks them up).
func testResolver() *dnstest.Resolver {
	return &dnstest.Resolver{TXT: map[string][]string{
		"_dmarc.example.com.": {"v=DMARC1; p=reject; rua=mailto:agg@example.com"},
		"_dmarc.example.org.": {"v=DMARC1; p=none; rua=mailto:agg@example.org"},
	}}
}

// newOutbox is an outbox (the spool and sender every report leaves from)
// relaying to sink; its sender is not started.
func newOutbox(t *testing.T, sink *smtpsink.Sink, spoolDir string) *outbox.Outbox {
	t.Helper()
	out, err := outbox.New(outbox.Config{
		Dir: spoolDir, From: "dmarc-reports@mx.example.net", Hello: "mx.example.net",
		SMTP: sink.Addr, StartTLS: outbox.StartTLSOff,
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond, SMTPTimeout: 5 * time.Second,
	}, testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func run(t *testing.T, f func(ctx context.Context)) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { f(ctx); close(done) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return stop
}

// The reports of a period go out once it ended: one message per domain,
// named and titled as RFC 9990 says, with the gzip attached.
func TestSendThroughSpool(t *testing.T) {
	sink := smtpsink.Start(t)
	st := openStore(t, "")
	day := 24 * time.Hour
	rec := NewRecorder(st, day, time.Hour, Facts{}, testLogger(t), nil)
	for range 5 {
		rec.Submit(judged(t, "example.com", "v=DMARC1; p=reject; rua=mailto:agg@example.com", "192.0.2.1", dmarc.Pass, policy.Accept))
		rec.Submit(judged(t, "example.org", "v=DMARC1; p=none; rua=mailto:agg@example.org", "192.0.2.2", dmarc.Fail, policy.Accept))
	}
	if err := rec.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	out := newOutbox(t, sink, filepath.Join(t.TempDir(), "spool"))
	run(t, func(ctx context.Context) { out.Run(ctx) })
	now := t0
	clock := func() time.Time { return now }
	snd := NewSender(Config{Interval: day, Meta: meta, From: "dmarc-reports@mx.example.net", MaxDestinations: 2, Owner: "host-a"}, st, out, testResolver(), testLogger(t), clock)
	now = t0.Add(23 * time.Hour)
	snd.SendDue(context.Background())
	time.Sleep(200 * time.Millisecond)
	if n := len(sink.Messages()); n != 0 {
		t.Fatalf("%d reports sent before the period ended", n)
	}
	now = t0.Add(day + time.Second)
	snd.SendDue(context.Background())
	snd.SendDue(context.Background()) // done: nothing more
	msgs := sink.Wait(t, 2, 10*time.Second)
	time.Sleep(200 * time.Millisecond)
	if len(sink.Messages()) != 2 {
		t.Fatalf("%d messages, want one per domain", len(sink.Messages()))
	}
	for _, m := range msgs {
		mr, err := mail.CreateReader(bytes.NewReader(m.Data))
		if err != nil {
			t.Fatal(err)
		}
		subject, _ := mr.Header.Subject()
		domain := strings.TrimPrefix(m.To[0], "agg@")
		if !strings.HasPrefix(subject, "Report Domain: "+domain+" Submitter: mx.example.net Report-ID: <") {
			t.Errorf("subject %q", subject)
		}
		xmls := attachments(t, "sent report", m.Data)
		if len(xmls) != 1 {
			continue
		}
		f, err := Parse(xmls[0])
		if err != nil || len(f.Records) != 1 || f.Records[0].Row.Count != 5 {
			t.Errorf("%s: report %+v %v", domain, f, err)
		}
		if !bytes.Contains(m.Data, []byte("filename=mx.example.net!"+domain+"!")) && !bytes.Contains(m.Data, []byte("filename=\"mx.example.net!"+domain+"!")) {
			t.Errorf("%s: no RFC 9990 file name:\n%s", domain, m.Data)
		}
	}
}

// A fleet: hosts share a PostgreSQL store. Each report goes out exactly
// once with the rows of all hosts; a host that dies after spooling and
// comes back after another took its report over drops its copy.
func TestFleet(t *testing.T) {
	dsn := pgtest.Start(t)
	sink := smtpsink.Start(t)
	interval := 10 * time.Second
	now := t0
	var clockMu sync.Mutex
	clock := func() time.Time { clockMu.Lock(); defer clockMu.Unlock(); return now }
	setNow := func(t time.Time) { clockMu.Lock(); now = t; clockMu.Unlock() }

	type host struct {
		st  *store.Store
		rec *Recorder
		out *outbox.Outbox
		snd *Sender
	}
	var hosts []host
	for i, name := range []string{"mx1", "mx2", "mx3"} {
		st := openStore(t, dsn)
		out := newOutbox(t, sink, filepath.Join(t.TempDir(), "spool"))
		h := host{st: st, rec: NewRecorder(st, interval, time.Hour, Facts{}, testLogger(t), clock), out: out,
			snd: NewSender(Config{Interval: interval, Meta: meta, From: "dmarc-reports@mx.example.net", MaxDestinations: 2, Owner: name}, st, out, testResolver(), testLogger(t), clock)}
		for range 3 + i {
			j := judged(t, "example.com", "v=DMARC1; p=reject; rua=mailto:agg@example.com", "192.0.2.1", dmarc.Pass, policy.Accept)
			j.Arrival = t0.Add(time.Second)
			h.rec.Submit(j)
		}
		if err := h.rec.Flush(context.Background()); err != nil {
			t.Fatal(err)
		}
		hosts = append(hosts, h)
	}
	// mx1 claims and spools first, then "dies" before delivering: its
	// sender is not running.
	setNow(t0.Add(interval + time.Second))
	hosts[0].snd.SendDue(context.Background())
	// Its lease runs out; mx2 and mx3 race for the report.
	setNow(t0.Add(interval + time.Second + hosts[0].snd.lease() + time.Second))
	var wg sync.WaitGroup
	for _, h := range hosts[1:] {
		wg.Add(1)
		go func() { defer wg.Done(); h.snd.SendDue(context.Background()) }()
	}
	wg.Wait()
	for _, h := range hosts {
		run(t, func(ctx context.Context) { h.out.Run(ctx) })
	}
	msgs := sink.Wait(t, 1, 10*time.Second)
	time.Sleep(time.Second) // mx1's copy would arrive now
	if n := len(sink.Messages()); n != 1 {
		t.Fatalf("%d reports sent, want exactly one", n)
	}
	xmls := attachments(t, "fleet report", msgs[0].Data)
	if len(xmls) == 1 {
		f, err := Parse(xmls[0])
		if err != nil || len(f.Records) != 1 || f.Records[0].Row.Count != 3+4+5 {
			t.Errorf("the report does not hold every host's messages: %+v %v", f, err)
		}
	}
}

// A rua URI keeps its legacy size limit from the record to the sender
// (stored as an object when it has one); the policies stored by earlier
// versions, rua as plain strings, still read.
func TestPublishedURIs(t *testing.T) {
	rec, err := dmarc.ParseRecord("v=DMARC1; p=reject; rua=mailto:big@example.com,mailto:small@example.com!10k")
	if err != nil {
		t.Fatal(err)
	}
	j := judged(t, "example.com", "v=DMARC1; p=reject; rua=mailto:agg@example.com", "192.0.2.1", dmarc.Fail, policy.Reject)
	j.Verdict.DMARC.Record = rec
	_, pub, ok := RowOf(j, Facts{})
	if !ok || len(pub.RUA) != 2 || pub.RUA[1].MaxSize != 10<<10 {
		t.Fatalf("published rua %+v (%v)", pub.RUA, ok)
	}
	data := marshalPublished(pub)
	if !strings.Contains(data, `"uri":"mailto:big@example.com"}`) || !strings.Contains(data, `"max_size":10240`) {
		t.Errorf("stored as %s", data)
	}
	var back Published
	if err := json.Unmarshal([]byte(data), &back); err != nil || len(back.RUA) != 2 || back.RUA[1] != pub.RUA[1] {
		t.Errorf("read back %+v %v", back.RUA, err)
	}
	var old Published
	if err := json.Unmarshal([]byte(`{"domain":"example.com","p":"reject","rua":["mailto:agg@example.com"]}`), &old); err != nil ||
		len(old.RUA) != 1 || old.RUA[0].Address != "mailto:agg@example.com" {
		t.Errorf("an earlier version's policy: %+v %v", old.RUA, err)
	}
	if ds := report.Destinations(back.uris()); len(ds) != 2 || ds[1].MaxSize != 10<<10 {
		t.Errorf("destinations %+v", ds)
	}
}
