package main

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dmarc-milter/dmarc-milter/internal/miltertest"
)

// metricNames lists every metric the daemon declares (histograms with
// their _bucket, _sum and _count series).
func metricNames(t *testing.T) map[string]bool {
	m := newMetrics(&sources{})
	ch := make(chan *prometheus.Desc, 100)
	go func() {
		(&collector{}).Describe(ch)
		m.messages.Describe(ch)
		m.overrides.Describe(ch)
		m.stages.Describe(ch)
		close(ch)
	}()
	re := regexp.MustCompile(`fqName: "([a-z_]+)"`)
	names := map[string]bool{}
	for d := range ch {
		n := re.FindStringSubmatch(d.String())
		if n == nil {
			t.Fatalf("cannot read a metric name from %s", d)
		}
		names[n[1]] = true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		names["dmarc_milter_stage_seconds"+suffix] = true
	}
	return names
}

// The Grafana dashboard loads as JSON and names only metrics that exist.
func TestGrafanaDashboard(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "..", "packaging", "grafana-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string `json:"title"`
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("dashboard is not JSON: %v", err)
	}
	names := metricNames(t)
	// The Go runtime's and the process's metrics, as the registry gathers
	// them (summaries with their _sum and _count).
	families, err := newMetrics(&sources{}).reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	runtimeNames := map[string]bool{}
	for _, f := range families {
		for _, suffix := range []string{"", "_sum", "_count"} {
			runtimeNames[f.GetName()+suffix] = true
		}
	}
	used := map[string]bool{}
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			for _, n := range regexp.MustCompile(`\b(go|process)_[a-z_]+`).FindAllString(tg.Expr, -1) {
				if !runtimeNames[n] {
					t.Errorf("panel %q uses %s, which the daemon does not export", p.Title, n)
				}
			}
			for _, n := range regexp.MustCompile(`dmarc_milter_[a-z_]+`).FindAllString(tg.Expr, -1) {
				if !names[n] {
					t.Errorf("panel %q uses %s, which the daemon does not export", p.Title, n)
				}
				used[strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(n, "_bucket"), "_sum"), "_count")] = true
			}
		}
	}
	for n := range names {
		base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(n, "_bucket"), "_sum"), "_count")
		if !used[base] {
			t.Errorf("the dashboard shows nothing of %s", n)
		}
	}
}

// /metrics after real traffic: the messages, stages, DNS, connections,
// reports and aggregate rows are counted.
func TestMetrics(t *testing.T) {
	dnsSrv, bin := daemonPrereqs(t)
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	sock := filepath.Join(t.TempDir(), "m.sock")
	d := startDaemon(t, bin, "serve", "--listen", "unix:"+sock, "--dns", dnsSrv.Addr, "--state-dir", t.TempDir(),
		"--metrics-listen", addr, "--report-smtp", "127.0.0.1:9", "--authserv-id", "mx.cli.example")
	d.waitFor("serving Prometheus metrics")
	d.waitFor("dmarc-milter ready")
	for range 3 {
		if code := spoof(t, "unix", sock); code != 550 {
			t.Fatalf("spoof: %d", code)
		}
	}
	// A list post of pass.example: quarantined, not rejected (RFC 9989
	// section 7.4), and counted by its reason.
	ls := miltertest.Dial(t, "unix", sock, 0, nil)
	miltertest.Connect(t, ls, "198.51.100.20", "mx.lists.example")
	if o := miltertest.Send(t, ls, miltertest.Msg{MailFrom: "talk-bounces@lists.example",
		Raw: "List-Id: <talk.lists.example>\r\nFrom: bob@pass.example\r\nSubject: list\r\n\r\nHi.\r\n"}); !o.Quarantined() {
		t.Fatalf("list post: %d, not quarantined", o.Code())
	}
	ls.Close()
	time.Sleep(1500 * time.Millisecond) // the aggregate rows' flush
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	text := string(body)
	for _, want := range []string{
		`dmarc_milter_messages_total{action="reject",dmarc="fail"} 3`,
		`dmarc_milter_stage_seconds_count{stage="total"} 4`,
		`dmarc_milter_stage_seconds_count{stage="spf"} 4`,
		`dmarc_milter_connections 0`,
		`dmarc_milter_reports_total{event="spooled"} `,
		// The two later spoofs are duplicates, for each of the two ruf
		// addresses of pass.example.
		`dmarc_milter_reports_suppressed_total{reason="duplicate"} 4`,
		`dmarc_milter_aggregate_messages_recorded_total 4`,
		`dmarc_milter_messages_total{action="quarantine",dmarc="fail"} 1`,
		`dmarc_milter_policy_overrides_total{reason="mailing_list"} 1`,
		`dmarc_milter_dns_upstream_errors_total{kind="timeout"} 0`,
		// The Go runtime's and the process's own, for the dashboard's
		// memory, goroutine and GC panels.
		`go_goroutines `,
		`go_memstats_heap_inuse_bytes `,
		`go_gc_duration_seconds_count `,
		`process_resident_memory_bytes `,
		`process_cpu_seconds_total `,
		`process_open_fds `,
		// Exported from the start, before any override of its reason.
		`dmarc_milter_policy_overrides_total{reason="trusted_forwarder"} 0`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if m := regexp.MustCompile(`dmarc_milter_dns_lookups_total\{outcome="miss"\} (\d+)`).FindStringSubmatch(text); m == nil || m[1] == "0" {
		t.Errorf("no DNS cache misses counted:\n%s", text)
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", text)
	}
}
