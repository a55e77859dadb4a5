package cli

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/tokencache/tokencache/tokencache"
	"github.com/tokencache/tokencache/tokencache/tokencacheprom"
)

// refreshAheadShare is the share of a token's life after which the fleet
// refreshes it: the library's default, set explicitly (app.open) so that
// the daemon's tokencache_token_refresh_window_seconds states the window
// the cache really uses.
const refreshAheadShare = 0.5

// metrics are the Prometheus metrics of daemon, serve and proxy, on their
// own registry: the cache's (tokencacheprom.Collector), its issuer calls
// (tokencacheprom.FetcherMetrics), the daemon's own Token calls and, for
// the daemon (trackToken), the token it holds.
type metrics struct {
	reg        *prometheus.Registry
	namespace  string
	fetcher    *tokencacheprom.FetcherMetrics
	tokenCalls *prometheus.CounterVec // daemon Token calls by the tier that answered
	held       atomic.Pointer[held]   // the token the daemon holds; nil before the first
	now        func() time.Time
}

// held is what the daemon's gauges say of the token it holds. It is
// replaced whole, never changed.
type held struct {
	fp     string        // the token's fingerprint, to tell a new token from the same one read again
	expiry time.Time     // the issuer's expiry
	seen   time.Time     // when this process first held it
	window time.Duration // the refresh window: the last (1 - refreshAheadShare) of its life
}

// statsFunc adapts a func to tokencacheprom.StatsSource.
type statsFunc func() tokencache.Stats

func (f statsFunc) Stats() tokencache.Stats { return f() }

func newMetrics(namespace string, stats func() tokencache.Stats) *metrics {
	m := &metrics{reg: prometheus.NewRegistry(), namespace: namespace, now: time.Now, fetcher: tokencacheprom.NewFetcherMetrics(namespace)}
	m.tokenCalls = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tokencache_token_requests_total", Help: "The daemon's Token calls by the tier that answered: memory (L1), redis (L2) or issuer.",
		ConstLabels: prometheus.Labels{tokencacheprom.NamespaceLabel: namespace},
	}, []string{"tier"})
	m.reg.MustRegister(m.fetcher, m.tokenCalls,
		tokencacheprom.NewCollector(statsFunc(stats), tokencacheprom.WithNamespaceLabel(namespace)),
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// trackToken registers the gauges of the token the daemon holds, which
// the alert rules (deploy/prometheus) read. Only the daemon holds a token
// between requests, so serve and proxy do not export them: a gauge stuck
// at 0 there would read as a lapsed token.
func (m *metrics) trackToken() {
	labels := prometheus.Labels{tokencacheprom.NamespaceLabel: m.namespace}
	gauge := func(name, help string, f func(h *held) float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help, ConstLabels: labels}, func() float64 {
			if h := m.held.Load(); h != nil {
				return f(h)
			}
			return 0
		})
	}
	m.reg.MustRegister(
		gauge("tokencache_token_ttl_seconds", "Time left before the issuer's expiry of the token this process holds (0 if none).",
			func(h *held) float64 { return max(h.expiry.Sub(m.now()).Seconds(), 0) }),
		gauge("tokencache_token_refresh_window_seconds", "The last part of the held token's life in which the fleet refreshes it ahead of expiry: (1 - refresh-ahead share) times its lifetime as first seen by this process (0 if none).",
			func(h *held) float64 { return h.window.Seconds() }),
		gauge("tokencache_token_refreshed_timestamp_seconds", "Unix time at which this process first held its current token: the last successful refresh, by any replica, as seen here (0 if none).",
			func(h *held) float64 { return float64(h.seen.UnixNano()) / 1e9 }),
	)
}

// observeToken records the token the daemon holds now. A token it did not
// hold before starts a new refresh window: (1 - refreshAheadShare) of the
// life it has left now, which is its whole life when the refresh is
// recent (a token first read long after its refresh gets a shorter
// window, so the alert on it fires later, never sooner).
func (m *metrics) observeToken(t tokencache.Token) {
	fp := t.Fingerprint()
	if h := m.held.Load(); h != nil && h.fp == fp {
		if !h.expiry.Equal(t.Expiry) {
			m.held.Store(&held{fp: fp, expiry: t.Expiry, seen: h.seen, window: h.window})
		}
		return
	}
	now := m.now()
	life := max(t.Expiry.Sub(now), 0)
	m.held.Store(&held{fp: fp, expiry: t.Expiry, seen: now, window: time.Duration(float64(life) * (1 - refreshAheadShare))})
}

// wrap returns f observed: each call is counted by result and timed
// (tokencacheprom.FetcherMetrics.Wrap, which keeps f's Identity).
func (m *metrics) wrap(f tokencache.Fetcher) tokencache.Fetcher { return m.fetcher.Wrap(f) }
