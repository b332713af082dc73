package aggregate

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/dmarc-milter/dmarc-milter/policy"
	"github.com/dmarc-milter/dmarc-milter/policy/dkim"
	"github.com/dmarc-milter/dmarc-milter/policy/dmarc"
	"github.com/dmarc-milter/dmarc-milter/policy/spf"
	"github.com/dmarc-milter/dmarc-milter/report/store"
)

// BenchmarkDay records a day of a busy MX into a SQLite store and builds
// every report of it: AGGREGATE_DAY_MESSAGES messages (default 200,000;
// the README's figures are for 10,000,000) from 100,000 domains, each
// domain seen from one to four sources with pass, fail and reject
// outcomes, written in AGGREGATE_DAY_FLUSHES transactions (default 100;
// the daemon writes once a second, 86,400 a day). It reports the distinct
// rows stored, the store's size on disk, the time spent writing and the
// time to build all reports.
func BenchmarkDay(b *testing.B) {
	messages := 200_000
	if s := os.Getenv("AGGREGATE_DAY_MESSAGES"); s != "" {
		messages, _ = strconv.Atoi(s)
	}
	flushes := 100
	if s := os.Getenv("AGGREGATE_DAY_FLUSHES"); s != "" {
		flushes, _ = strconv.Atoi(s)
	}
	batch := max(messages/flushes, 1)
	const domains = 100_000
	day := 24 * time.Hour
	recs := make([]*dmarc.Record, 3)
	for i, r := range []string{"v=DMARC1; p=none; rua=mailto:a@x.example", "v=DMARC1; p=quarantine; rua=mailto:a@x.example", "v=DMARC1; p=reject; rua=mailto:a@x.example"} {
		recs[i], _ = dmarc.ParseRecord(r)
	}
	for range b.N {
		dir := b.TempDir()
		st, err := store.Open(context.Background(), "", dir)
		if err != nil {
			b.Fatal(err)
		}
		rec := NewRecorder(st, day, time.Hour, Facts{}, zerolog.Nop(), nil)
		var writing time.Duration
		start := time.Now()
		for i := range messages {
			d := i % domains
			domain := fmt.Sprintf("d%d.example", d)
			src := net.IPv4(10, byte(d>>8), byte(d), byte(1+(i/domains)%(1+d%4)))
			status, action := dmarc.Pass, policy.Accept
			switch (i / domains / 4) % 3 {
			case 1:
				status = dmarc.Fail
			case 2:
				status, action = dmarc.Fail, policy.Reject
			}
			r := recs[d%3]
			j := &policy.Judged{
				Message: &policy.Message{Arrival: t0.Add(time.Duration(i) * day / time.Duration(messages)), ClientIP: src, MailFrom: "b@" + domain,
					SPF:  spf.Result{Status: spf.Pass, Domain: domain, Identity: spf.IdentityMailFrom},
					DKIM: []dkim.Result{{Status: dkim.Pass, Domain: domain, Selector: "s"}},
				},
				Verdict: policy.Verdict{
					Action: action,
					DMARC:  dmarc.Result{Status: status, FromDomain: domain, PolicyDomain: domain, Record: r, Policy: r.Policy, Applied: r.Policy, Requested: dmarc.PolicyNone, SPFAligned: status == dmarc.Pass},
				},
			}
			rec.Submit(j)
			if i%batch == batch-1 {
				w := time.Now()
				if err := rec.Flush(context.Background()); err != nil {
					b.Fatal(err)
				}
				writing += time.Since(w)
			}
		}
		if err := rec.Flush(context.Background()); err != nil {
			b.Fatal(err)
		}
		recorded := time.Since(start)
		start = time.Now()
		snd := NewSender(Config{Interval: day, Meta: meta}, st, nil, nil, zerolog.Nop(), nil)
		keys, err := st.Keys(context.Background(), t0, t0.Add(day), "")
		if err != nil {
			b.Fatal(err)
		}
		rows := 0
		for _, k := range keys {
			rep, err := snd.Build(context.Background(), k)
			if err != nil {
				b.Fatal(err)
			}
			rows += rep.Records
		}
		built := time.Since(start)
		st.Close()
		var size int64
		files, _ := filepath.Glob(filepath.Join(dir, "*"))
		for _, f := range files {
			if fi, err := os.Stat(f); err == nil {
				size += fi.Size()
			}
		}
		b.ReportMetric(float64(messages), "messages")
		b.ReportMetric(float64(rows), "rows")
		b.ReportMetric(float64(size)/(1<<20), "MiB")
		b.ReportMetric(recorded.Seconds(), "s-record")
		b.ReportMetric(writing.Seconds(), "s-write")
		b.ReportMetric(built.Seconds(), "s-build")
		b.ReportMetric(float64(len(keys)), "reports")
	}
}

// BenchmarkSubmit is what recording costs a message on the milter's reply
// path: its row added to the table in memory.
func BenchmarkSubmit(b *testing.B) {
	st, err := store.Open(context.Background(), "", b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	rec := NewRecorder(st, 24*time.Hour, time.Hour, Facts{}, zerolog.Nop(), nil)
	j := judged(b, "example.com", "v=DMARC1; p=reject; rua=mailto:a@example.com", "192.0.2.1", dmarc.Pass, policy.Accept)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		rec.Submit(j)
		if i%100_000 == 99_999 {
			rec.Flush(context.Background())
		}
	}
}
