package cli

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/tokencache/tokencache/tokencache"
	"github.com/tokencache/tokencache/tokencache/tokencacheprom"
)

// metrics are the daemon's Prometheus metrics, on their own registry: the
// cache's (tokencacheprom.Collector), its issuer calls
// (tokencacheprom.FetcherMetrics), and the daemon's own Token calls and
// the token it holds.
type metrics struct {
	reg        *prometheus.Registry
	fetcher    *tokencacheprom.FetcherMetrics
	tokenCalls *prometheus.CounterVec    // daemon Token calls by the tier that answered
	expiry     atomic.Pointer[time.Time] // expiry of the last token obtained
	now        func() time.Time
}

// statsFunc adapts a func to tokencacheprom.StatsSource.
type statsFunc func() tokencache.Stats

func (f statsFunc) Stats() tokencache.Stats { return f() }

func newMetrics(namespace string, stats func() tokencache.Stats) *metrics {
	m := &metrics{reg: prometheus.NewRegistry(), now: time.Now, fetcher: tokencacheprom.NewFetcherMetrics(namespace)}
	labels := prometheus.Labels{tokencacheprom.NamespaceLabel: namespace}
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
	m.reg.MustRegister(m.fetcher, m.tokenCalls, ttl,
		tokencacheprom.NewCollector(statsFunc(stats), tokencacheprom.WithNamespaceLabel(namespace)),
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// observeToken records the token the daemon holds now.
func (m *metrics) observeToken(t tokencache.Token) {
	e := t.Expiry
	m.expiry.Store(&e)
}

// wrap returns f observed: each call is counted by result and timed
// (tokencacheprom.FetcherMetrics.Wrap, which keeps f's Identity).
func (m *metrics) wrap(f tokencache.Fetcher) tokencache.Fetcher { return m.fetcher.Wrap(f) }
