package report

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"mime"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-message"
	"github.com/emersion/go-message/mail"
	"github.com/emersion/go-message/textproto"

	"github.com/dmarc-milter/dmarc-milter/internal/conformance"
	"github.com/dmarc-milter/dmarc-milter/internal/rfc5322"
	"github.com/dmarc-milter/dmarc-milter/policy"
	"github.com/dmarc-milter/dmarc-milter/policy/dkim"
	"github.com/dmarc-milter/dmarc-milter/policy/dmarc"
	"github.com/dmarc-milter/dmarc-milter/policy/spf"
)

func TestBuildFields(t *testing.T) {
	f := failure(t, "v=DMARC1; p=reject; ruf=mailto:ruf@example.com; fo=1")
	f.DKIM[0].Identifier = "signer@example.com"
	cfg := testConfig(t).Config
	now := time.Date(2026, 5, 4, 10, 12, 0, 0, time.UTC)
	raw, err := Build(f, []string{"ruf@example.com"}, cfg, now)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(strings.ReplaceAll(string(raw), "\r\n", ""), "\n") {
		t.Errorf("report has bare LF line ends")
	}
	p := parseReport(t, raw)

	// Top-level header.
	ct, params, _ := p.header.ContentType()
	if ct != "multipart/report" || params["report-type"] != "feedback-report" {
		t.Errorf("Content-Type = %s %v", ct, params)
	}
	mh := mail.Header{Header: p.header}
	if s, _ := mh.Subject(); s != "DMARC failure report for example.com from 192.0.2.1 [Your account]" {
		t.Errorf("Subject = %q", s)
	}
	from, err := mh.AddressList("From")
	if err != nil || len(from) != 1 || from[0].Address != "dmarc-reports@mx.example.net" {
		t.Errorf("From = %v, %v", from, err)
	}
	to, _ := mh.AddressList("To")
	if len(to) != 1 || to[0].Address != "ruf@example.com" {
		t.Errorf("To = %v", to)
	}
	if got := p.header.Get("Auto-Submitted"); got != "auto-generated" {
		t.Errorf("Auto-Submitted = %q", got)
	}
	if id, err := mh.MessageID(); err != nil || !strings.HasSuffix(id, "@mx.example.net") {
		t.Errorf("Message-ID = %q, %v", id, err)
	}
	if d, err := mh.Date(); err != nil || !d.Equal(now) {
		t.Errorf("Date = %v, %v", d, err)
	}
	if p.header.Get("MIME-Version") != "1.0" {
		t.Errorf("no MIME-Version")
	}

	// Parts.
	if want := []string{"text/plain", "message/feedback-report", "text/rfc822-headers"}; !slices.Equal(p.types, want) {
		t.Fatalf("parts = %v, want %v", p.types, want)
	}

	// Feedback fields, names as registered and values.
	want := [][2]string{
		{"Feedback-Type", "auth-failure"},
		{"User-Agent", "dmarc-milter/test"},
		{"Version", "1"},
		{"Auth-Failure", "dmarc"},
		{"Original-Mail-From", "<bounce+x@bad.example>"},
		{"Arrival-Date", "Mon, 04 May 2026 10:11:12 +0000"},
		{"Reporting-MTA", "dns; mx.example.net"},
		{"Source-IP", "192.0.2.1"},
		{"Reported-Domain", "example.com"},
		{"Authentication-Results", "mx.example.net; spf=fail smtp.mailfrom=bounce+x@bad.example; dkim=fail header.d=example.com header.s=sel1; dmarc=fail header.from=example.com policy.dmarc=reject"},
		{"Identity-Alignment", "dkim"},
		{"Delivery-Result", "reject"},
		{"DKIM-Domain", "example.com"},
		{"DKIM-Identity", "signer@example.com"},
		{"DKIM-Selector", "sel1"},
	}
	var got [][2]string
	fields := p.feedback.Fields()
	for fields.Next() {
		raw, _ := fields.Raw()
		name := string(raw[:strings.IndexByte(string(raw), ':')])
		got = append(got, [2]string{name, strings.Join(strings.Fields(fields.Value()), " ")})
	}
	if !slices.Equal(got, want) {
		t.Errorf("feedback fields:\n got %q\nwant %q", got, want)
	}

	// The attached header is the original, byte for byte.
	var wantHdr string
	for _, h := range f.Header {
		wantHdr += rfc5322.RebuildField(h.Name, h.Value, true)
	}
	if string(p.original) != wantHdr {
		t.Errorf("attached header:\n%q\nwant\n%q", p.original, wantHdr)
	}

	// The text names the domain, the IP, what failed and why, what we did.
	for _, s := range []string{
		"example.com", "192.0.2.1", "mail.bad.example",
		"DMARC: fail", "neither SPF nor DKIM",
		"SPF:   fail for the MAIL FROM domain bad.example (not aligned with example.com)",
		"does not authorize the sending IP",
		"DKIM:  fail for the signature of example.com (selector sel1)", "body hash did not verify",
		"rejected the message", "550 5.7.1", "p=reject",
		"text/rfc822-headers",
	} {
		if !strings.Contains(strings.Join(strings.Fields(p.text), " "), strings.Join(strings.Fields(s), " ")) {
			t.Errorf("text part lacks %q:\n%s", s, p.text)
		}
	}
}

func TestBuildVariants(t *testing.T) {
	cfg := testConfig(t).Config
	now := time.Now()

	t.Run("quarantine mark, SPF aligned failure, SPF-DNS", func(t *testing.T) {
		f := failure(t, "v=DMARC1; p=quarantine; ruf=mailto:ruf@example.com")
		f.SPF.Domain = "example.com"
		f.DKIM = nil
		f.Verdict.Action = 0 // accepted, marked
		// The Reporter looks up the SPF records for SPF-DNS (Build does
		// no DNS): give them to the analysis as it would.
		a := analyze(f, knownOrgDomain(&f.Verdict))
		a.spfRecords = []string{`v=spf1 ip4:203.0.113.0/24 "-all"`}
		raw, err := build(f, a, []string{"ruf@example.com"}, cfg.withDefaults(), now, false)
		if err != nil {
			t.Fatal(err)
		}
		p := parseReport(t, raw)
		checkField(t, p, "Identity-Alignment", "spf")
		checkField(t, p, "Delivery-Result", "spam")
		checkField(t, p, "SPF-DNS", `txt : example.com : "v=spf1 ip4:203.0.113.0/24 \"-all\""`)
		if p.feedback.Has("DKIM-Domain") {
			t.Errorf("DKIM-Domain without a signature")
		}
		if !strings.Contains(p.text, "no DKIM signature") || !strings.Contains(p.text, "marked as failing DMARC") {
			t.Errorf("text:\n%s", p.text)
		}
	})
	t.Run("fo=1, DMARC passed through SPF, the aligned signature failed", func(t *testing.T) {
		// What happened: SPF passed for an aligned domain, so DMARC
		// passed; the signature of the From domain failed (body hash).
		// Not a DMARC failure, and both identifiers are aligned.
		f := failure(t, "v=DMARC1; p=reject; ruf=mailto:ruf@example.com; fo=1")
		f.SPF = spf.Result{Status: spf.Pass, Domain: "example.com", Identity: spf.IdentityMailFrom}
		f.Verdict.DMARC.Status, f.Verdict.DMARC.SPFAligned = dmarc.Pass, true
		f.Verdict.Action, f.Verdict.DMARC.Requested = 0, dmarc.PolicyNone
		p := parseReport(t, mustBuild(t, f, cfg, now))
		checkField(t, p, "Auth-Failure", "bodyhash")
		checkField(t, p, "Identity-Alignment", "dkim, spf")
		checkField(t, p, "DKIM-Domain", "example.com")
		checkField(t, p, "Delivery-Result", "delivered")
	})
	t.Run("p=none, fo=d, unaligned signature", func(t *testing.T) {
		f := failure(t, "v=DMARC1; p=none; ruf=mailto:ruf@example.com; fo=d")
		f.DKIM[0].Domain = "esp.example"
		f.DKIM[0].Err = dkim.ErrKeyRevoked
		f.DKIM[0].Status = dkim.PermError
		f.Verdict.Action = 0
		p := parseReport(t, mustBuild(t, f, cfg, now))
		checkField(t, p, "Auth-Failure", "revoked")
		checkField(t, p, "Identity-Alignment", "none")
		checkField(t, p, "DKIM-Domain", "esp.example")
		checkField(t, p, "Delivery-Result", "delivered")
		if !strings.Contains(p.text, "asks for no action") {
			t.Errorf("text:\n%s", p.text)
		}
	})
	t.Run("rejected without Authentication-Results", func(t *testing.T) {
		f := failure(t, "v=DMARC1; p=reject; ruf=mailto:ruf@example.com")
		f.AuthResults = ""
		p := parseReport(t, mustBuild(t, f, cfg, now))
		ar := p.feedback.Get("Authentication-Results")
		if !strings.HasPrefix(ar, "mx.example.net;") || !strings.Contains(ar, "dmarc=fail") {
			t.Errorf("Authentication-Results = %q", ar)
		}
	})
	t.Run("whole message", func(t *testing.T) {
		c := cfg
		c.Include = IncludeMessage
		f := failure(t, "v=DMARC1; p=reject; ruf=mailto:ruf@example.com")
		f.Body = []byte("Hello\nworld\n")
		p := parseReport(t, mustBuild(t, f, c, now))
		if p.types[2] != "message/rfc822" || !strings.HasSuffix(string(p.original), "\r\n\r\nHello\r\nworld\r\n") {
			t.Errorf("part 3 %s: %q", p.types[2], p.original)
		}
		// A body cut by the session (MaxMessageSize+1 bytes) gives headers.
		c.MaxMessageSize = 5
		p = parseReport(t, mustBuild(t, f, c, now))
		if p.types[2] != "text/rfc822-headers" {
			t.Errorf("over MaxMessageSize: part 3 is %s", p.types[2])
		}
	})
}

func mustBuild(t *testing.T, f *policy.Judged, cfg Config, now time.Time) []byte {
	t.Helper()
	raw, err := Build(f, []string{"ruf@example.com"}, cfg, now)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func checkField(t *testing.T, p *parsedReport, name, want string) {
	t.Helper()
	if got := p.feedback.Get(name); got != want {
		t.Errorf("%s = %q, want %q", name, got, want)
	}
}

func TestRedaction(t *testing.T) {
	cfg := testConfig(t).Config
	cfg.RedactLocalParts = true
	cfg.Include = IncludeMessage
	f := failure(t, "v=DMARC1; p=reject; ruf=mailto:ruf@example.com")
	f.DKIM[0].Identifier = "signer@example.com"
	f.Body = []byte("secret body\r\n")
	p := parseReport(t, mustBuild(t, f, cfg, time.Now()))
	checkField(t, p, "Original-Mail-From", "<redacted@bad.example>")
	checkField(t, p, "DKIM-Identity", "redacted@example.com")
	if ar := p.feedback.Get("Authentication-Results"); !strings.Contains(ar, "smtp.mailfrom=redacted@bad.example") {
		t.Errorf("Authentication-Results not redacted: %q", ar)
	}
	if p.types[2] != "text/rfc822-headers" || strings.Contains(string(p.original), "secret body") {
		t.Errorf("body attached despite redaction")
	}
	orig := string(p.original)
	for _, s := range []string{"alice@", "alerts@", "bounce+x@"} {
		if strings.Contains(orig, s) || strings.Contains(p.text, s) {
			t.Errorf("%q not redacted", s)
		}
	}
	for _, s := range []string{"From: \"Bank\" <redacted@example.com>", "To: redacted@example.net", "for <redacted@example.net>", "Message-ID: <123@mail.bad.example>"} {
		if !strings.Contains(orig, s) {
			t.Errorf("attached header lacks %q:\n%s", s, orig)
		}
	}
}

// TestConformanceStructure compares the structure of our report with real
// ones: the RFC 6591 auth-failure examples and the RFC 9991 example.
func TestConformanceStructure(t *testing.T) {
	dir := conformance.Dir(t, "arf")
	samples := []string{
		"mail-auth/003.eml", // RFC 6591 Appendix B.1
		"mail-auth/005.eml", // RFC 6591 Appendix B.2
		"ietf-draft-failure-reporting/dmarc-failure-report-example.draft24.eml",
	}
	f := failure(t, "v=DMARC1; p=reject; ruf=mailto:ruf@example.com")
	ours := parseReport(t, mustBuild(t, f, testConfig(t).Config, time.Now()))
	cfgMsg := testConfig(t).Config
	cfgMsg.Include = IncludeMessage
	f.Body = []byte("body\r\n")
	oursMsg := parseReport(t, mustBuild(t, f, cfgMsg, time.Now()))

	pass := 0
	for _, s := range samples {
		raw, err := os.ReadFile(filepath.Join(dir, s))
		if err != nil {
			t.Fatal(err)
		}
		// The samples have LF line ends; the draft's has ";" after some
		// addresses, which go-message tolerates.
		theirs := parseSample(t, raw)
		if theirs.ct != "multipart/report" || theirs.reportType != "feedback-report" {
			t.Errorf("%s: sample is %s %s", s, theirs.ct, theirs.reportType)
			continue
		}
		cmp := ours
		if theirs.types[2] == "message/rfc822" {
			cmp = oursMsg
		}
		if !slices.Equal(cmp.types, theirs.types) {
			t.Errorf("%s: parts %v, ours %v", s, theirs.types, cmp.types)
			continue
		}
		// Every field the sample has that RFC 5965/6591/9991 require, or
		// that we can know, we have too.
		ok := true
		for _, name := range theirs.fields {
			switch name {
			case "Original-Rcpt-To", "Original-Envelope-Id", "Received-Date", "Source-Port",
				"Reported-Uri", "Dkim-Canonicalized-Body":
				// Recipients and ports are not in a milter Report; Received-Date
				// is the pre-RFC name of Arrival-Date; URIs and canonicalized
				// bodies are optional.
				continue
			}
			if !cmp.feedback.Has(name) {
				t.Errorf("%s: has %s, ours does not", s, name)
				ok = false
			}
		}
		if ok {
			pass++
		}
	}
	t.Logf("ARF structure: %d/%d samples match", pass, len(samples))
}

type sample struct {
	ct, reportType string
	types          []string
	fields         []string // canonical names of the feedback fields
}

func parseSample(t *testing.T, raw []byte) sample {
	t.Helper()
	e, err := message.Read(strings.NewReader(string(raw)))
	if err != nil && !message.IsUnknownCharset(err) {
		t.Fatalf("sample: %v", err)
	}
	var s sample
	var params map[string]string
	s.ct, params, _ = e.Header.ContentType()
	s.reportType = params["report-type"]
	mr := e.MultipartReader()
	if mr == nil {
		t.Fatalf("sample not multipart")
	}
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil && !message.IsUnknownCharset(err) {
			t.Fatalf("sample part: %v", err)
		}
		ct, _, _ := p.Header.ContentType()
		s.types = append(s.types, ct)
		if ct == "message/feedback-report" {
			h, err := textproto.ReadHeader(bufio.NewReader(p.Body))
			if err != nil {
				t.Fatalf("sample feedback: %v", err)
			}
			fs := h.Fields()
			for fs.Next() {
				s.fields = append(s.fields, fs.Key())
			}
		}
		io.Copy(io.Discard, p.Body)
	}
	return s
}

func TestDeliveryResultMatrix(t *testing.T) {
	for _, c := range []struct {
		record string
		action int
		want   string
	}{
		{"v=DMARC1; p=reject", 2, "reject"},
		{"v=DMARC1; p=quarantine", 1, "policy"},
		{"v=DMARC1; p=quarantine", 0, "spam"},
		{"v=DMARC1; p=none", 0, "delivered"},
	} {
		f := failure(t, c.record)
		f.Verdict.Action = actionOf(c.action)
		if got := deliveryResult(f); got != c.want {
			t.Errorf("%s action %d: %s, want %s", c.record, c.action, got, c.want)
		}
	}
	_ = dmarc.PolicyNone
}

func actionOf(n int) policy.Action { return policy.Action(n) }

// TestReportHeaderBound: a failing message with a huge header gives a
// brief report (RFC 9991): the header copy stops at whole fields within
// 64 KiB, the text says so, and a cut header is never attached as a whole
// message.
func TestReportHeaderBound(t *testing.T) {
	for _, tc := range []struct {
		name      string
		fields    int
		truncated bool // the milter stopped keeping fields
		cut       bool
	}{
		{"small header", 20, false, false},
		{"1 MB header", 10000, false, true},
		{"cut by the milter", 20, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := failure(t, "v=DMARC1; p=reject; ruf=mailto:ruf@example.com")
			for i := range tc.fields {
				f.Header = append(f.Header, policy.Field{Name: fmt.Sprintf("X-Junk-%d", i), Value: " " + strings.Repeat("y", 100)})
			}
			f.HeaderTruncated = tc.truncated
			f.Body = []byte("body\r\n")
			cfg := testConfig(t).Config.withDefaults()
			cfg.Include = IncludeMessage
			msg, err := build(f, analyze(f, knownOrgDomain(&f.Verdict)), []string{"ruf@example.com"}, cfg, time.Now(), false)
			if err != nil {
				t.Fatal(err)
			}
			if len(msg) > 80<<10 {
				t.Errorf("report of %d bytes, want under 80 KiB", len(msg))
			}
			p := parseReport(t, msg)
			said := strings.Contains(strings.ReplaceAll(p.text, "\r\n", " "), "too long to copy whole")
			if said != tc.cut {
				t.Errorf("text says the header was cut: %v, want %v", said, tc.cut)
			}
			wantType := "message/rfc822"
			if tc.cut {
				wantType = "text/rfc822-headers"
			}
			if p.types[2] != wantType {
				t.Errorf("third part %s, want %s", p.types[2], wantType)
			}
		})
	}
}

// The report's Subject carries the original one: decoded, on one line,
// shortened, redacted when addresses are; each part has a description and
// a file name.
func TestOriginalSubjectAndParts(t *testing.T) {
	for _, tt := range []struct {
		name, subject string
		redact        bool
		want          string
	}{
		{name: "plain", subject: " Your account", want: "Your account"},
		{name: "encoded word", subject: " =?UTF-8?B?w5xiZXJ3ZWlzdW5n?= heute", want: "Überweisung heute"},
		{name: "folded, control characters", subject: " Hello\n\tthere\x07 now", want: "Hello there now"},
		{name: "long", subject: " " + strings.Repeat("abcdefghij", 10), want: strings.Repeat("abcdefghij", 5) + "abcdefghi…"},
		{name: "redacted", subject: " mail for alice@example.net", redact: true, want: "mail for redacted@example.net"},
		{name: "unknown charset", subject: " =?x-unknown?Q?hi?=", want: "hi"},
		{name: "none", subject: "", want: ""},
	} {
		f := failure(t, "v=DMARC1; p=reject; ruf=mailto:ruf@example.com")
		var hdr []policy.Field
		for _, h := range f.Header {
			if h.Name != "Subject" {
				hdr = append(hdr, h)
			}
		}
		if tt.subject != "" {
			hdr = append(hdr, policy.Field{Name: "Subject", Value: tt.subject})
		}
		f.Header = hdr
		if got := originalSubject(f, tt.redact); got != tt.want {
			t.Errorf("%s: %q, want %q", tt.name, got, tt.want)
		}
	}

	raw := mustBuild(t, failure(t, "v=DMARC1; p=reject; ruf=mailto:ruf@example.com"), testConfig(t).Config, time.Now())
	mr, err := mail.CreateReader(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for {
		p, err := mr.NextPart()
		if err != nil {
			break
		}
		_, params, _ := mime.ParseMediaType(p.Header.Get("Content-Disposition"))
		if p.Header.Get("Content-Description") == "" {
			t.Errorf("part %s has no description", p.Header.Get("Content-Type"))
		}
		names = append(names, params["filename"])
	}
	if strings.Join(names, ",") != "report.txt,feedback-report.txt,original-header.txt" {
		t.Errorf("file names %v", names)
	}
}

// The report's "What we did" says what the verdict decided, with the
// evidence of a reject and the reason of a milder treatment (RFC 9989
// section 7.4).
func TestWhatWeDid(t *testing.T) {
	tests := []struct {
		name   string
		change func(v *policy.Verdict)
		want   string
	}{
		{name: "a reject says the evidence",
			change: func(v *policy.Verdict) { v.Evidence = "no signature of example.com; SPF does not authorize 192.0.2.1" },
			want:   "as the DMARC policy of example.com (p=reject) asks: no signature of example.com; SPF does not authorize 192.0.2.1."},
		{name: "a mailing list: held, saying why",
			change: func(v *policy.Verdict) {
				v.Action, v.Rule, v.Enforced = policy.Quarantine, policy.RuleOverride, dmarc.PolicyQuarantine
				v.Overrides = []policy.Override{{Type: policy.OverrideMailingList, Comment: "mailing list, List-Id"}}
			},
			want: "held it in quarantine, under the DMARC policy of example.com (p=reject) (reject applied as quarantine: mailing list, List-Id)."},
		{name: "a trusted forwarder: delivered, saying why",
			change: func(v *policy.Verdict) {
				v.Action, v.Rule, v.Enforced = policy.Accept, policy.RuleOverride, dmarc.PolicyNone
				v.Overrides = []policy.Override{{Type: policy.OverrideTrustedForwarder, Comment: "trusted forwarder 198.51.100.7"}}
			},
			want: "delivered the message under the DMARC policy of example.com (p=reject) (reject applied as none: trusted forwarder 198.51.100.7)."},
	}
	for _, tc := range tests {
		f := failure(t, "v=DMARC1; p=reject")
		tc.change(&f.Verdict)
		if got := actionText(f); !strings.HasSuffix(got, tc.want) {
			t.Errorf("%s: %q, want it to end %q", tc.name, got, tc.want)
		}
	}
}
