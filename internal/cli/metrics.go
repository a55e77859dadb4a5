package cli

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/tokencache/tokencache/tokencache"
)

// metrics are the daemon's Prometheus metrics, on their own registry.
type metrics struct {
	reg         *prometheus.Registry
	issuerCalls *prometheus.CounterVec    // by result: "ok" or the issuer's error code
	issuerTime  prometheus.Histogram      // seconds per issuer call
	tokenCalls  *prometheus.CounterVec    // daemon Token calls by the tier that answered
	expiry      atomic.Pointer[time.Time] // expiry of the last token obtained
	now         func() time.Time
}

func newMetrics(namespace string, stats func() tokencache.Stats) *metrics {
	m := &metrics{reg: prometheus.NewRegistry(), now: time.Now}
	labels := prometheus.Labels{"namespace": namespace}
	m.issuerCalls = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tokencache_issuer_requests_total", Help: "Issuer calls made by this process, by result (ok or the issuer's error code).",
		ConstLabels: labels,
	}, []string{"result"})
	m.issuerTime = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "tokencache_issuer_request_duration_seconds", Help: "Latency of issuer calls made by this process.",
		ConstLabels: labels, Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 15},
	})
	m.tokenCalls = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tokencache_token_requests_total", Help: "The daemon's Token calls by the tier that answered: memory (L1), redis (L2) or issuer.",
		ConstLabels: labels,
	}, []string{"tier"})
	ttl := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "tokencache_token_ttl_seconds", Help: "Time left before the issuer's expiry of the token this process holds (0 if none).",
		ConstLabels: labels,
	}, func() float64 {
		if e := m.expiry.Load(); e != nil {
			if d := e.Sub(m.now()); d > 0 {
				return d.Seconds()
			}
		}
		return 0
	})
	m.reg.MustRegister(m.issuerCalls, m.issuerTime, m.tokenCalls, ttl,
		&statsCollector{stats: stats, labels: labels},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// observeToken records the token the daemon holds now.
func (m *metrics) observeToken(t tokencache.Token) {
	e := t.Expiry
	m.expiry.Store(&e)
}

// wrap returns f observed: each call is counted by result and timed.
// The wrapper keeps f's Identity, which the cache stores as a credential
// fingerprint, so wrapped and unwrapped replicas share tokens.
func (m *metrics) wrap(f tokencache.Fetcher) tokencache.Fetcher {
	o := observedFetcher{f: f, m: m}
	if id, ok := f.(tokencache.Identifier); ok {
		return identifiedFetcher{observedFetcher: o, id: id}
	}
	return o
}

type observedFetcher struct {
	f tokencache.Fetcher
	m *metrics
}

func (o observedFetcher) Fetch(ctx context.Context) (tokencache.Token, error) {
	start := time.Now()
	t, err := o.f.Fetch(ctx)
	o.m.issuerTime.Observe(time.Since(start).Seconds())
	o.m.issuerCalls.WithLabelValues(resultOf(err)).Inc()
	return t, err
}

type identifiedFetcher struct {
	observedFetcher
	id tokencache.Identifier
}

func (i identifiedFetcher) Identity() string { return i.id.Identity() }

var (
	_ tokencache.Fetcher    = observedFetcher{}
	_ tokencache.Identifier = identifiedFetcher{}
)

// resultOf labels an issuer call: "ok", the issuer's error code, or a
// generic class. Codes come from the issuer, so the label set is small.
func resultOf(err error) string {
	if err == nil {
		return "ok"
	}
	var c interface{ ErrorCode() string }
	if errors.As(err, &c) && c.ErrorCode() != "" {
		code := c.ErrorCode()
		if len(code) > 40 {
			code = code[:40]
		}
		return code
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return "timeout"
	}
	return "error"
}

// statsCollector exports Cache.Stats as counters.
type statsCollector struct {
	stats  func() tokencache.Stats
	labels prometheus.Labels
}

type statDesc struct {
	desc *prometheus.Desc
	get  func(tokencache.Stats) uint64
}

func (c *statsCollector) descs() []statDesc {
	d := func(name, help string, get func(tokencache.Stats) uint64) statDesc {
		return statDesc{prometheus.NewDesc(name, help, nil, c.labels), get}
	}
	return []statDesc{
		d("tokencache_cache_issuer_calls_total", "Fetch calls by the cache, retries included.", func(s tokencache.Stats) uint64 { return s.IssuerCalls }),
		d("tokencache_cache_issuer_errors_total", "Fetch calls that failed.", func(s tokencache.Stats) uint64 { return s.IssuerErrors }),
		d("tokencache_refreshes_total", "Tokens this process stored in Redis.", func(s tokencache.Stats) uint64 { return s.Refreshes }),
		d("tokencache_redis_reads_total", "Token reads from Redis (L2).", func(s tokencache.Stats) uint64 { return s.RedisReads }),
		d("tokencache_redis_errors_total", "Failed Redis operations.", func(s tokencache.Stats) uint64 { return s.RedisErrors }),
		d("tokencache_lock_contended_total", "Lock attempts that found another holder.", func(s tokencache.Stats) uint64 { return s.LockContended }),
		d("tokencache_lock_waits_total", "Waits for another replica's refresh.", func(s tokencache.Stats) uint64 { return s.Waits }),
		d("tokencache_events_total", "Events received on the channel.", func(s tokencache.Stats) uint64 { return s.Events }),
		d("tokencache_fenced_writes_total", "Token writes rejected by fencing.", func(s tokencache.Stats) uint64 { return s.FencedWrites }),
		d("tokencache_bad_values_total", "Unusable values found in Redis.", func(s tokencache.Stats) uint64 { return s.BadValues }),
		d("tokencache_fail_open_total", "Direct issuer fetches while Redis was unreachable.", func(s tokencache.Stats) uint64 { return s.FailOpen }),
		d("tokencache_redis_hits_total", "Token calls answered from Redis.", func(s tokencache.Stats) uint64 { return s.RedisHits }),
		d("tokencache_transient_waits_total", "Waits to re-check Redis while a cluster slot moved or a node was not ready (no fail-open).", func(s tokencache.Stats) uint64 { return s.TransientWaits }),
		d("tokencache_resubscribes_total", "Event subscriptions replaced after a failed liveness probe.", func(s tokencache.Stats) uint64 { return s.Resubscribes }),
	}
}

// budgetDescName is the gauge of the fleet's issuer budget left.
const budgetDescName = "tokencache_issuer_budget_remaining"

func (c *statsCollector) budgetDesc() *prometheus.Desc {
	return prometheus.NewDesc(budgetDescName, "Issuer calls left in the fleet's budget window, as last seen by this process (-1: not yet known).", nil, c.labels)
}

func (c *statsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs() {
		ch <- d.desc
	}
	ch <- c.budgetDesc()
}

func (c *statsCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.stats()
	for _, d := range c.descs() {
		ch <- prometheus.MustNewConstMetric(d.desc, prometheus.CounterValue, float64(d.get(s)))
	}
	ch <- prometheus.MustNewConstMetric(c.budgetDesc(), prometheus.GaugeValue, float64(s.BudgetLeft))
}
