package report

import (
	"context"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/dmarc-milter/dmarc-milter/internal/testutil"
	"github.com/dmarc-milter/dmarc-milter/policy"
	"github.com/dmarc-milter/dmarc-milter/policy/dkim"
	"github.com/dmarc-milter/dmarc-milter/policy/dmarc"
	"github.com/dmarc-milter/dmarc-milter/policy/spf"
	"github.com/dmarc-milter/dmarc-milter/report/outbox"
)

func TestWantedMatrix(t *testing.T) {
	type outcome struct {
		spf         spf.Status
		spfAligned  bool
		dkim        []dkim.Status
		dkimAligned bool
	}
	fail := outcome{spf: spf.Fail, dkim: []dkim.Status{dkim.Fail}}                                                 // DMARC fail, both failed
	noSig := outcome{spf: spf.SoftFail}                                                                            // DMARC fail, no signature
	spfOnly := outcome{spf: spf.Pass, spfAligned: true, dkim: []dkim.Status{dkim.Fail}}                            // pass via SPF, a signature failed
	dkimOnly := outcome{spf: spf.Fail, dkim: []dkim.Status{dkim.Pass}, dkimAligned: true}                          // pass via DKIM, SPF failed
	both := outcome{spf: spf.Pass, spfAligned: true, dkim: []dkim.Status{dkim.Pass, dkim.Fail}, dkimAligned: true} // pass both, one bad signature
	clean := outcome{spf: spf.Pass, spfAligned: true, dkim: []dkim.Status{dkim.Pass}, dkimAligned: true}
	unalignedPass := outcome{spf: spf.Pass, dkim: []dkim.Status{dkim.Pass}} // DMARC fail, nothing "failed"
	temp := outcome{spf: spf.Pass, spfAligned: true, dkim: []dkim.Status{dkim.TempError}}

	cases := []struct {
		name string
		fo   string
		o    outcome
		want []string
	}{
		{"0 fail", "", fail, []string{"0"}},
		{"0 explicit", "fo=0", fail, []string{"0"}},
		{"0 spf pass", "", spfOnly, nil},
		{"0 unaligned passes", "", unalignedPass, []string{"0"}},
		{"1 fail", "fo=1", fail, []string{"1"}},
		{"1 no signature", "fo=1", noSig, []string{"1"}},
		{"1 spf only", "fo=1", spfOnly, []string{"1"}},
		{"1 dkim only", "fo=1", dkimOnly, []string{"1"}},
		{"1 both aligned", "fo=1", both, nil},
		{"1 clean", "fo=1", clean, nil},
		{"d fail", "fo=d", fail, []string{"d"}},
		{"d no signature", "fo=d", noSig, nil},
		{"d spf only", "fo=d", spfOnly, []string{"d"}},
		{"d dkim only", "fo=d", dkimOnly, nil},
		{"d extra bad signature", "fo=d", both, []string{"d"}},
		{"d temperror is no failure", "fo=d", temp, nil},
		{"s fail", "fo=s", fail, []string{"s"}},
		{"s softfail", "fo=s", noSig, []string{"s"}},
		{"s dkim only", "fo=s", dkimOnly, []string{"s"}},
		{"s spf pass", "fo=s", spfOnly, nil},
		{"d:s fail", "fo=d:s", fail, []string{"d", "s"}},
		{"d:s spf only", "fo=d:s", spfOnly, []string{"d"}},
		{"d:s dkim only", "fo=d:s", dkimOnly, []string{"s"}},
		{"0:1 fail", "fo=0:1", fail, []string{"0", "1"}},
		{"0:d clean", "fo=0:d", clean, nil},
		{"1:d:s clean", "fo=1:d:s", clean, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rec := "v=DMARC1; p=reject; ruf=mailto:r@example.com"
			if c.fo != "" {
				rec += "; " + c.fo
			}
			f := failure(t, rec)
			v := &f.Verdict
			f.SPF.Status = c.o.spf
			v.DMARC.SPFAligned = c.o.spfAligned
			v.DMARC.DKIMAligned = c.o.dkimAligned
			f.DKIM = nil
			for _, s := range c.o.dkim {
				f.DKIM = append(f.DKIM, dkim.Result{Status: s, Domain: "example.com", Selector: "s"})
			}
			v.DMARC.Status = dmarc.Fail
			if c.o.spfAligned || c.o.dkimAligned {
				v.DMARC.Status = dmarc.Pass
			}
			got, ok := Wanted(f)
			if got.String() != strings.Join(c.want, ":") || ok != (len(c.want) > 0) {
				t.Errorf("Wanted = %v %v, want %v", got, ok, c.want)
			}
		})
	}
	// No record, temperror: never.
	f := failure(t, "v=DMARC1; p=none; fo=1")
	f.Verdict.DMARC.Status = dmarc.TempError
	if _, ok := Wanted(f); ok {
		t.Errorf("temperror wanted")
	}
	f.Verdict.DMARC.Status, f.Verdict.DMARC.Record = dmarc.None, nil
	if _, ok := Wanted(f); ok {
		t.Errorf("no record wanted")
	}
}

// TestSubmitExclusions checks which messages get a report (spooled when
// Submit returns) and which are counted as suppressed, and why.
func TestSubmitExclusions(t *testing.T) {
	const rec = "v=DMARC1; p=reject; ruf=mailto:r@example.com"
	cases := []struct {
		name   string
		cfg    func(*Config)
		mod    func(*policy.Judged)
		reason Reason // "" = spooled
	}{
		{"reject policy", nil, nil, ""},
		{"p=none reported too", nil, func(f *policy.Judged) { *f = *failure(t, "v=DMARC1; p=none; ruf=mailto:r@example.com") }, ""},
		{"psd=y", nil, func(f *policy.Judged) { *f = *failure(t, "v=DMARC1; p=reject; psd=y; ruf=mailto:r@example.com") }, ReasonPSD},
		{"null sender", nil, func(f *policy.Judged) { f.MailFrom = "<>" }, ReasonNullSender},
		{"empty sender", nil, func(f *policy.Judged) { f.MailFrom = "" }, ReasonNullSender},
		{"auto-replied", nil, func(f *policy.Judged) {
			f.Header = append(f.Header, policy.Field{Name: "Auto-Submitted", Value: " auto-replied"})
		}, ReasonAutoSubmitted},
		{"auto-generated with comment", nil, func(f *policy.Judged) {
			f.Header = append(f.Header, policy.Field{Name: "auto-submitted", Value: " (robot) auto-generated; owner=x"})
		}, ReasonAutoSubmitted},
		{"auto-submitted: no", nil, func(f *policy.Judged) {
			f.Header = append(f.Header, policy.Field{Name: "Auto-Submitted", Value: " No"})
		}, ""},
		{"multipart/report", nil, func(f *policy.Judged) {
			f.Header = append(f.Header, policy.Field{Name: "Content-Type", Value: " multipart/report;\n\treport-type=delivery-status; boundary=x"})
		}, ReasonReportMessage},
		{"aggregate report", nil, func(f *policy.Judged) {
			f.Header = append(f.Header, policy.Field{Name: "Subject", Value: " Report Domain: example.com Submitter: x Report-ID: 1"})
		}, ReasonReportMessage},
		{"from our report address", nil, func(f *policy.Judged) {
			f.Header = append(f.Header, policy.Field{Name: "Sender", Value: " Reports <DMARC-Reports@mx.example.net>"})
		}, ReasonReportMessage},
		{"envelope from our report address", nil, func(f *policy.Judged) { f.MailFrom = "<dmarc-reports@mx.example.net>" }, ReasonReportMessage},
		{"excluded network", func(c *Config) { c.ExcludeNetworks = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")} }, nil, ReasonExcludedClient},
		{"excluded network, v4-mapped", func(c *Config) { c.ExcludeNetworks = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")} },
			func(f *policy.Judged) { f.ClientIP = net.ParseIP("::ffff:192.0.2.1") }, ReasonExcludedClient},
		{"other network", func(c *Config) { c.ExcludeNetworks = []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")} }, nil, ""},
		{"deny domain", func(c *Config) { c.DenyDomains = []string{"Example.COM"} }, nil, ReasonDomain},
		{"deny parent domain", func(c *Config) { c.DenyDomains = []string{"com"} }, nil, ReasonDomain},
		{"allow other domain", func(c *Config) { c.AllowDomains = []string{"example.org"} }, nil, ReasonDomain},
		{"allow domain", func(c *Config) { c.AllowDomains = []string{"example.org", "example.com"} }, nil, ""},
		{"authenticated client", nil, func(f *policy.Judged) { f.Verdict.Exempt = "authenticated" }, ReasonLocalClient},
		{"monitor mode reported", nil, func(f *policy.Judged) { f.Verdict.Exempt = "monitor" }, ""},
		{"fo not matched", nil, func(f *policy.Judged) {
			f.Verdict.DMARC.Status, f.Verdict.DMARC.DKIMAligned = dmarc.Pass, true
		}, ReasonNotWanted},
		{"no record", nil, func(f *policy.Judged) { f.Verdict.DMARC.Record, f.Verdict.DMARC.Status = nil, dmarc.None }, ReasonNoPolicy},
		{"disabled", func(c *Config) { c.Enabled = false }, nil, ReasonDisabled},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := testConfig(t)
			if c.cfg != nil {
				c.cfg(&cfg.Config)
			}
			r, err := newWith(cfg, newResolver(), testLogger(t), nil)
			if err != nil {
				t.Fatal(err)
			}
			f := failure(t, rec)
			if c.mod != nil {
				c.mod(f)
			}
			r.Submit(f)
			st := r.Stats()
			if st.Submitted != 1 {
				t.Errorf("Submitted = %d", st.Submitted)
			}
			spooled := st.Spooled == 1 && len(spoolFiles(t, cfg.Out.Dir)) == 1
			if c.reason == "" {
				if !spooled || len(st.Suppressed) != 0 {
					t.Errorf("not spooled: %v", st.Suppressed)
				}
				return
			}
			if spooled || st.Suppressed[c.reason] != 1 {
				t.Errorf("spooled=%v suppressed=%v, want %s", spooled, st.Suppressed, c.reason)
			}
		})
	}
}

// processed runs the worker step for f and returns the spooled recipients.
func processed(t *testing.T, r *Reporter, f *policy.Judged) []string {
	t.Helper()
	dir := r.out.Config().Dir
	list := func() []outbox.Entry {
		es, err := outbox.List(dir)
		if err != nil {
			t.Fatal(err)
		}
		return es
	}
	before := map[string]bool{}
	for _, e := range list() {
		before[e.ID] = true
	}
	r.process(context.Background(), f)
	var to []string
	for _, e := range list() {
		if !before[e.ID] {
			to = append(to, e.To)
		}
	}
	slices.Sort(to)
	return to
}

func TestDestinations(t *testing.T) {
	res := newResolver()
	r, err := newWith(testConfig(t), res, testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	f := failure(t, "v=DMARC1; p=reject; fo=1; ruf="+strings.Join([]string{
		"mailto:ruf@example.com",                               // the policy domain itself
		"mailto:dmarc@reports.example.com",                     // same organizational domain
		"mailto:ruf@reports.example.net",                       // external, authorized
		"mailto:ruf@other.example",                             // external, TXT is not v=DMARC1
		"mailto:ruf@nobody.example",                            // external, no record
		"https://reports.example.com/ruf",                      // not mailto
		"mailto:RUF@example.com",                               // duplicate
		"mailto:a@reports.example.net%2Cb@reports.example.net", // two addresses
	}, ","))
	got := processed(t, r, f)
	want := []string{"a@reports.example.net", "b@reports.example.net", "dmarc@reports.example.com", "ruf@example.com", "ruf@reports.example.net"}
	if !slices.Equal(got, want) {
		t.Errorf("spooled for %v, want %v", got, want)
	}
	if n := r.Stats().Suppressed[ReasonUnauthorized]; n != 2 {
		t.Errorf("unauthorized = %d, want 2", n)
	}
	// The authorization is cached.
	q := "example.com._report._dmarc.reports.example.net."
	n := res.Count(q)
	f2 := failure(t, "v=DMARC1; p=reject; fo=1; ruf=mailto:x@reports.example.net")
	f2.ClientIP = net.ParseIP("192.0.2.99")
	if got := processed(t, r, f2); !slices.Equal(got, []string{"x@reports.example.net"}) {
		t.Errorf("second report spooled for %v", got)
	}
	if res.Count(q) != n {
		t.Errorf("authorization queried again")
	}

	// A temporary DNS error leaves the destination out and is not cached.
	res.Fail = map[string]error{"example.com._report._dmarc.tmp.example.": &net.DNSError{Err: "timeout", IsTimeout: true}}
	f3 := failure(t, "v=DMARC1; p=reject; fo=1; ruf=mailto:x@tmp.example")
	if got := processed(t, r, f3); len(got) != 0 {
		t.Errorf("spooled despite DNS error: %v", got)
	}
	res.Fail = nil
	res.TXT["example.com._report._dmarc.tmp.example."] = []string{"v=DMARC1"}
	f3.ClientIP = net.ParseIP("192.0.2.77")
	if got := processed(t, r, f3); len(got) != 1 {
		t.Errorf("not spooled after DNS recovered: %v", got)
	}

	// No mailto: at all.
	f4 := failure(t, "v=DMARC1; p=reject; ruf=https://example.com/x")
	processed(t, r, f4)
	if r.Stats().Suppressed[ReasonNoDestination] != 1 {
		t.Errorf("no-destination not counted: %v", r.Stats().Suppressed)
	}
}

func TestSizeLimit(t *testing.T) {
	cfg := testConfig(t)
	cfg.Include = IncludeMessage
	r, err := newWith(cfg, newResolver(), testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	f := failure(t, "v=DMARC1; p=reject; ruf=mailto:big@example.com,mailto:small@example.com!4k,mailto:tiny@example.com!1k")
	f.Body = []byte(strings.Repeat("x", 3000) + "\r\n")
	if got := processed(t, r, f); !slices.Equal(got, []string{"big@example.com", "small@example.com"}) {
		t.Fatalf("spooled for %v", got)
	}
	types := map[string]string{}
	es, err := outbox.List(r.out.Config().Dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		_, msg, err := outbox.Read(r.out.Config().Dir, e.ID)
		if err != nil {
			t.Fatal(err)
		}
		p := parseReport(t, msg)
		types[e.To] = p.types[2]
		if e.To == "small@example.com" && len(msg) > 4096 {
			t.Errorf("report to small@ is %d bytes", len(msg))
		}
	}
	if types["big@example.com"] != "message/rfc822" || types["small@example.com"] != "text/rfc822-headers" {
		t.Errorf("attachments: %v", types)
	}
	if r.Stats().Suppressed[ReasonTooBig] != 1 {
		t.Errorf("too-big not counted: %v", r.Stats().Suppressed)
	}
}

func TestRateLimitsAndDedup(t *testing.T) {
	clk := testutil.NewClock(time.Date(2026, 5, 4, 0, 0, 0, 0, time.UTC))
	cfg := testConfig(t)
	cfg.PerDestinationLimit, cfg.PerDestinationWindow = 3, time.Hour
	cfg.GlobalLimit, cfg.GlobalWindow = 5, time.Hour
	cfg.DedupWindow = 10 * time.Minute
	var logs testutil.SyncBuffer
	r, err := newWith(cfg, newResolver(), zerolog.New(io.MultiWriter(&logs, zerolog.TestWriter{T: t})).Level(zerolog.InfoLevel), clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	from := func(ip string, ruf string) *policy.Judged {
		f := failure(t, "v=DMARC1; p=reject; ruf="+ruf)
		f.ClientIP = net.ParseIP(ip)
		return f
	}

	// The same failure twice: sent once.
	if got := processed(t, r, from("192.0.2.1", "mailto:a@example.com")); len(got) != 1 {
		t.Fatalf("first: %v", got)
	}
	if got := processed(t, r, from("192.0.2.1", "mailto:a@example.com")); len(got) != 0 {
		t.Errorf("duplicate sent: %v", got)
	}
	if r.Stats().Suppressed[ReasonDuplicate] != 1 {
		t.Errorf("duplicate not counted")
	}
	// A suppressed report leaves a line at info level, saying why.
	if !strings.Contains(logs.String(), `"reason":"duplicate"`) || !strings.Contains(logs.String(), `"level":"info"`) {
		t.Errorf("no info line for the duplicate:\n%s", logs.String())
	}
	// A different kind of failure from the same IP is not a duplicate.
	g := from("192.0.2.1", "mailto:a@example.com")
	g.DKIM = nil
	if got := processed(t, r, g); len(got) != 1 {
		t.Errorf("different failure not sent: %v", got)
	}
	// Per destination: the third distinct failure fills a@'s limit.
	if got := processed(t, r, from("192.0.2.2", "mailto:a@example.com")); len(got) != 1 {
		t.Errorf("third: %v", got)
	}
	if got := processed(t, r, from("192.0.2.3", "mailto:a@example.com")); len(got) != 0 {
		t.Errorf("over per-destination limit: %v", got)
	}
	if r.Stats().Suppressed[ReasonDestLimit] != 1 {
		t.Errorf("destination limit not counted: %v", r.Stats().Suppressed)
	}
	// Other destinations still get reports until the global limit (5).
	if got := processed(t, r, from("192.0.2.4", "mailto:b@example.com,mailto:c@example.com")); len(got) != 2 {
		t.Errorf("b, c: %v", got)
	}
	if got := processed(t, r, from("192.0.2.5", "mailto:d@example.com")); len(got) != 0 {
		t.Errorf("over global limit: %v", got)
	}
	if r.Stats().Suppressed[ReasonGlobalLimit] != 1 {
		t.Errorf("global limit not counted: %v", r.Stats().Suppressed)
	}
	// An hour later the windows have moved on; the duplicate is old too.
	clk.Advance(time.Hour + time.Second)
	if got := processed(t, r, from("192.0.2.1", "mailto:a@example.com")); len(got) != 1 {
		t.Errorf("after the window: %v", got)
	}
	if st := r.Stats(); st.Spooled != 6 {
		t.Errorf("Spooled = %d, want 6", st.Spooled)
	}
}

// TestAlignmentNeedsOrgDomain: DMARC determines the Organizational Domain
// only when its verdict needs it, so a verdict may come without one. The
// report still judges the alignment of a failed subdomain signature
// against it (looked up for the report).
func TestAlignmentNeedsOrgDomain(t *testing.T) {
	cfg := testConfig(t)
	r, err := newWith(cfg, newResolver(), testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	f := failure(t, "v=DMARC1; p=reject; ruf=mailto:ruf@example.com")
	f.Verdict.DMARC.OrgDomain = ""
	f.DKIM[0].Domain = "mail.example.com"
	r.process(context.Background(), f)
	files := spoolFiles(t, cfg.Out.Dir)
	if len(files) != 1 {
		t.Fatalf("%d reports spooled", len(files))
	}
	_, msg, err := readSpoolFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	if got := parseReport(t, msg).feedback.Get("Identity-Alignment"); got != "dkim" {
		t.Errorf("Identity-Alignment %q, want dkim (mail.example.com is aligned with example.com in relaxed mode)", got)
	}
}
