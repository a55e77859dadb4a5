// Package tokencacheprom exports a tokencache.Cache's metrics to
// Prometheus, under the names and labels the tokencache daemon's /metrics
// uses (the daemon is built on this package). Only programs that import it
// link client_golang; the library itself does not depend on it.
//
// One line registers a cache's counters:
//
//	prometheus.MustRegister(tokencacheprom.NewCollector(cache))
//
// and, optionally, FetcherMetrics adds the issuer calls by result and
// their latency, as the daemon has them, either wrapping the Fetcher or
// as the cache's observer (tokencache.WithObserver):
//
//	fm := tokencacheprom.NewFetcherMetrics("default")
//	prometheus.MustRegister(fm)
//	cache, err := tokencache.New(rdb, fm.Wrap(basiq.New(key)))
//	// or: tokencache.New(rdb, basiq.New(key), tokencache.WithObserver(fm))
//
// Every metric carries the label namespace, the cache's namespace (or the
// value given to WithNamespaceLabel).
package tokencacheprom

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokencache/tokencache/tokencache"
)

// NamespaceLabel is the label every metric carries.
const NamespaceLabel = "namespace"

// StatsSource is what a Collector reads at collect time. *tokencache.Cache
// implements it.
type StatsSource interface {
	Stats() tokencache.Stats
}

// Collector is a prometheus.Collector over a cache's Stats: its counters
// as counters and the fleet's issuer budget as a gauge, read at each
// scrape. It is safe for concurrent use.
type Collector struct {
	src    StatsSource
	stats  []statDesc
	budget *prometheus.Desc
}

var _ prometheus.Collector = (*Collector)(nil)

type statDesc struct {
	desc *prometheus.Desc
	get  func(tokencache.Stats) uint64
}

// Option configures a Collector.
type Option func(*collectorConfig)

type collectorConfig struct {
	namespace string
}

// WithNamespaceLabel sets the namespace label. Default: the cache's
// Namespace() when the source has one, else tokencache.DefaultNamespace.
// The daemon labels a user's client token "<namespace>/<userId>".
func WithNamespaceLabel(v string) Option {
	return func(c *collectorConfig) { c.namespace = v }
}

// NewCollector returns a Collector over src, typically a *tokencache.Cache.
func NewCollector(src StatsSource, opts ...Option) *Collector {
	cfg := collectorConfig{namespace: tokencache.DefaultNamespace}
	if n, ok := src.(interface{ Namespace() string }); ok {
		cfg.namespace = n.Namespace()
	}
	for _, o := range opts {
		o(&cfg)
	}
	labels := prometheus.Labels{NamespaceLabel: cfg.namespace}
	d := func(name, help string, get func(tokencache.Stats) uint64) statDesc {
		return statDesc{prometheus.NewDesc(name, help, nil, labels), get}
	}
	return &Collector{
		src: src,
		stats: []statDesc{
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
			d("tokencache_resubscribes_total", "Event subscriptions replaced after a failed liveness probe.", func(s tokencache.Stats) uint64 { return s.Resubscribes }),
			d("tokencache_rejections_held_total", "The API's 401s returned without invalidating the token, while the API rejected a new token before accepting any.", func(s tokencache.Stats) uint64 { return s.RejectionsHeld }),
			d("tokencache_transient_waits_total", "Waits to re-check Redis while a cluster slot was moving.", func(s tokencache.Stats) uint64 { return s.TransientWaits }),
		},
		budget: prometheus.NewDesc("tokencache_issuer_budget_remaining",
			"Issuer calls left in the fleet's budget window, as last seen by this process (-1: not yet known).", nil, labels),
	}
}

// Describe sends the descriptions of every metric.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.stats {
		ch <- d.desc
	}
	ch <- c.budget
}

// Collect reads the source's Stats once and sends every metric.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	s := c.src.Stats()
	for _, d := range c.stats {
		ch <- prometheus.MustNewConstMetric(d.desc, prometheus.CounterValue, float64(d.get(s)))
	}
	ch <- prometheus.MustNewConstMetric(c.budget, prometheus.GaugeValue, float64(s.BudgetLeft))
}

// FetcherMetrics counts and times the issuer calls of the Fetchers it
// wraps: tokencache_issuer_requests_total{result} and
// tokencache_issuer_request_duration_seconds. It is a prometheus.Collector;
// register it once and wrap as many Fetchers as you like.
type FetcherMetrics struct {
	calls    *prometheus.CounterVec // by result: "ok" or the issuer's error code
	duration prometheus.Histogram   // seconds per issuer call
}

var (
	_ prometheus.Collector = (*FetcherMetrics)(nil)
	_ tokencache.Observer  = (*FetcherMetrics)(nil)
)

// NewFetcherMetrics returns FetcherMetrics labelled with namespace.
func NewFetcherMetrics(namespace string) *FetcherMetrics {
	labels := prometheus.Labels{NamespaceLabel: namespace}
	return &FetcherMetrics{
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokencache_issuer_requests_total", Help: "Issuer calls made by this process, by result (ok or the issuer's error code).",
			ConstLabels: labels,
		}, []string{"result"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "tokencache_issuer_request_duration_seconds", Help: "Latency of issuer calls made by this process.",
			ConstLabels: labels, Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 15},
		}),
	}
}

// Describe implements prometheus.Collector.
func (m *FetcherMetrics) Describe(ch chan<- *prometheus.Desc) {
	m.calls.Describe(ch)
	m.duration.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *FetcherMetrics) Collect(ch chan<- prometheus.Metric) {
	m.calls.Collect(ch)
	m.duration.Collect(ch)
}

// Wrap returns f observed: each call is counted by result and timed. The
// wrapper keeps f's Identity (tokencache.Identifier), which the cache
// stores as a credential fingerprint, so wrapped and unwrapped replicas
// share tokens.
func (m *FetcherMetrics) Wrap(f tokencache.Fetcher) tokencache.Fetcher {
	o := observedFetcher{f: f, m: m}
	if id, ok := f.(tokencache.Identifier); ok {
		return identifiedFetcher{observedFetcher: o, id: id}
	}
	return o
}

// Start implements tokencache.Observer: it counts and times each issuer
// call the cache reports (tokencache.OpIssuerCall) as Wrap does, with the
// same result labels, and ignores the other steps. Give a cache either
// WithObserver(m) or a Fetcher wrapped by m, not both: each call would
// count twice.
func (m *FetcherMetrics) Start(ctx context.Context, s tokencache.Step) (context.Context, func(tokencache.Outcome)) {
	if s.Op != tokencache.OpIssuerCall {
		return ctx, nil
	}
	start := time.Now()
	return ctx, func(o tokencache.Outcome) {
		m.duration.Observe(time.Since(start).Seconds())
		m.calls.WithLabelValues(OutcomeResult(o)).Inc()
	}
}

// OutcomeResult labels an issuer call the cache reported to an observer,
// as Result labels its error: "ok", the issuer's error code (at most 40
// bytes), "timeout", or "error".
func OutcomeResult(o tokencache.Outcome) string {
	switch {
	case o.Result == tokencache.ResultOK:
		return "ok"
	case o.Code == "":
		return "error"
	case len(o.Code) > maxResultLen:
		return o.Code[:maxResultLen]
	}
	return o.Code
}

type observedFetcher struct {
	f tokencache.Fetcher
	m *FetcherMetrics
}

func (o observedFetcher) Fetch(ctx context.Context) (tokencache.Token, error) {
	start := time.Now()
	t, err := o.f.Fetch(ctx)
	o.m.duration.Observe(time.Since(start).Seconds())
	o.m.calls.WithLabelValues(Result(err)).Inc()
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

// maxResultLen bounds the result label, so an odd issuer cannot blow up
// the label set.
const maxResultLen = 40

// Result labels an issuer call: "ok", the issuer's error code (an error
// with an ErrorCode method, as the basiq, jwtauth and oauth2cc
// errors have), "timeout", or "error".
func Result(err error) string {
	if err == nil {
		return "ok"
	}
	var c interface{ ErrorCode() string }
	if errors.As(err, &c) && c.ErrorCode() != "" {
		code := c.ErrorCode()
		if len(code) > maxResultLen {
			code = code[:maxResultLen]
		}
		return code
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return "timeout"
	}
	return "error"
}
