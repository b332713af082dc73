package main

import (
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"github.com/dmarc-milter/dmarc-milter/milter"
	"github.com/dmarc-milter/dmarc-milter/policy"
	"github.com/dmarc-milter/dmarc-milter/report"
	"github.com/dmarc-milter/dmarc-milter/report/aggregate"
	"github.com/dmarc-milter/dmarc-milter/report/outbox"
	"github.com/dmarc-milter/dmarc-milter/report/store"
	"github.com/dmarc-milter/dmarc-milter/resolver"
	"github.com/dmarc-milter/dmarc-milter/session"
)

// metrics are the daemon's Prometheus metrics, in a registry of their own
// (no package-level state). Message counts and stage latencies are updated
// by the session (session.Metrics); the counters the resolver, the milter
// server and the reporters keep anyway are read when /metrics is scraped.
type metrics struct {
	reg       *prometheus.Registry
	messages  *prometheus.CounterVec
	overrides *prometheus.CounterVec
	stages    *prometheus.HistogramVec
	// The stage histograms, looked up once rather than per message.
	spf, dkim, dmarc, total prometheus.Observer
}

// stageBuckets cover a warm cache (tens of microseconds) to a DNS timeout.
var stageBuckets = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}

// sources are what the scrape reads from; any may be nil.
type sources struct {
	res      *resolver.Resolver
	srv      *milter.Server
	reporter *report.Reporter
	outbox   *outbox.Outbox
	recorder *aggregate.Recorder
	store    *store.Store
}

func newMetrics(src *sources) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dmarc_milter_messages_total",
			Help: "Messages judged, by action taken and DMARC result.",
		}, []string{"action", "dmarc"}),
		overrides: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dmarc_milter_policy_overrides_total",
			Help: "DMARC failures treated more mildly than their policy asks, by RFC 9990 reason: mailing_list, trusted_forwarder, local_policy, other, policy_test_mode.",
		}, []string{"reason"}),
		stages: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "dmarc_milter_stage_seconds",
			Help:    "Time each stage of a message took: spf, dkim (what end of message waited for), dmarc, total (MAIL FROM to reply).",
			Buckets: stageBuckets,
		}, []string{"stage"}),
	}
	m.reg.MustRegister(m.messages, m.overrides, m.stages, &collector{src: src},
		// go_* (memory, goroutines, GC) and process_* (CPU, RSS, open
		// files), to watch the daemon's own growth.
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, r := range []policy.OverrideType{policy.OverrideMailingList, policy.OverrideTrustedForwarder,
		policy.OverrideLocalPolicy, policy.OverrideOther, policy.OverrideTestMode} {
		m.overrides.WithLabelValues(string(r)) // exported at 0 from the start
	}
	m.spf, m.dkim = m.stages.WithLabelValues("spf"), m.stages.WithLabelValues("dkim")
	m.dmarc, m.total = m.stages.WithLabelValues("dmarc"), m.stages.WithLabelValues("total")
	return m
}

// Message implements session.Metrics.
func (m *metrics) Message(v *policy.Verdict, st session.Stages) {
	dmarc := string(v.DMARC.Status)
	if dmarc == "" {
		dmarc = "none"
	}
	m.messages.WithLabelValues(v.Action.String(), dmarc).Inc()
	for _, o := range v.Overrides {
		m.overrides.WithLabelValues(string(o.Type)).Inc()
	}
	m.spf.Observe(st.SPF.Seconds())
	m.dkim.Observe(st.DKIM.Seconds())
	m.dmarc.Observe(st.DMARC.Seconds())
	m.total.Observe(st.Total.Seconds())
}

// collector reads the counters other parts keep, at scrape time.
type collector struct{ src *sources }

var (
	descDNSLookups  = prometheus.NewDesc("dmarc_milter_dns_lookups_total", "DNS lookups, by cache outcome: hit, miss, merged (a miss that joined an identical query in flight).", []string{"outcome"}, nil)
	descDNSUp       = prometheus.NewDesc("dmarc_milter_dns_upstream_queries_total", "Query messages sent to the upstream resolvers.", nil, nil)
	descDNSErrors   = prometheus.NewDesc("dmarc_milter_dns_upstream_errors_total", "Upstream query attempts that failed, by kind: timeout, network, rcode, bogus.", []string{"kind"}, nil)
	descDNSEntries  = prometheus.NewDesc("dmarc_milter_dns_cache_entries", "Answers in the DNS cache.", nil, nil)
	descConns       = prometheus.NewDesc("dmarc_milter_connections", "Open milter connections.", nil, nil)
	descReports     = prometheus.NewDesc("dmarc_milter_reports_total", "Reports by what became of them: spooled (queued), sent, retried (attempts that failed temporarily), dropped, spool_errors.", []string{"event"}, nil)
	descSuppressed  = prometheus.NewDesc("dmarc_milter_reports_suppressed_total", "Failure reports not sent, by reason.", []string{"reason"}, nil)
	descSpool       = prometheus.NewDesc("dmarc_milter_report_spool_size", "Reports waiting in the spool.", nil, nil)
	descAggRows     = prometheus.NewDesc("dmarc_milter_aggregate_messages_recorded_total", "Messages counted into aggregate report rows.", nil, nil)
	descAggDropped  = prometheus.NewDesc("dmarc_milter_aggregate_messages_dropped_total", "Messages not counted because the store fell behind.", nil, nil)
	descAggFlushErr = prometheus.NewDesc("dmarc_milter_aggregate_flush_errors_total", "Writes of aggregate report rows to the store that failed (retried).", nil, nil)
	descStoreUp     = prometheus.NewDesc("dmarc_milter_store_up", "1 if the store (aggregate rows, failure-report limits) answered its last operation, 0 if not.", nil, nil)
	descLimitFall   = prometheus.NewDesc("dmarc_milter_report_limit_fallbacks_total", "Failure-report destinations whose limits were this host's because the store did not answer in time.", nil, nil)
)

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descDNSLookups, descDNSUp, descDNSErrors, descDNSEntries, descConns,
		descReports, descSuppressed, descSpool, descAggRows, descAggDropped, descAggFlushErr, descStoreUp, descLimitFall} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	gauge := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
	}
	if r := c.src.res; r != nil {
		st := r.Stats()
		counter(descDNSLookups, float64(st.Hits), "hit")
		counter(descDNSLookups, float64(st.Misses-st.Merged), "miss")
		counter(descDNSLookups, float64(st.Merged), "merged")
		counter(descDNSUp, float64(st.Upstream))
		for kind, n := range st.Errors {
			counter(descDNSErrors, float64(n), kind)
		}
		gauge(descDNSEntries, float64(st.Entries))
	}
	if s := c.src.srv; s != nil {
		gauge(descConns, float64(s.ActiveConns()))
	}
	if o := c.src.outbox; o != nil {
		st := o.Stats("")
		counter(descReports, float64(st.Spooled), "spooled")
		counter(descReports, float64(st.Sent), "sent")
		counter(descReports, float64(st.Retried), "retried")
		counter(descReports, float64(st.Dropped), "dropped")
		counter(descReports, float64(st.SpoolErrors), "spool_errors")
		gauge(descSpool, float64(o.Size()))
	}
	if r := c.src.reporter; r != nil {
		st := r.Stats()
		for reason, n := range st.Suppressed {
			counter(descSuppressed, float64(n), string(reason))
		}
		counter(descLimitFall, float64(st.LimitFallbacks))
	}
	if s := c.src.store; s != nil {
		up := 0.0
		if s.Up() {
			up = 1
		}
		gauge(descStoreUp, up)
	}
	if r := c.src.recorder; r != nil {
		st := r.Stats()
		counter(descAggRows, float64(st.Recorded))
		counter(descAggDropped, float64(st.Dropped))
		counter(descAggFlushErr, float64(st.FlushErrors))
	}
}

// serveMetrics serves /metrics on a loopback address.
func serveMetrics(addr string, m *metrics, logger zerolog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	logger.Info().Str("metrics_listen", ln.Addr().String()).Msg("serving Prometheus metrics at /metrics")
	return nil
}
