package localapi

import (
	"strconv"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the local API's Prometheus metrics. They count requests by
// outcome and never carry a token, a fingerprint or a user id (a label per
// user would grow without bound).
type Metrics struct {
	served        *prometheus.CounterVec // token answers by token kind, tier and result
	proxied       *prometheus.CounterVec // proxy requests by upstream status
	invalidations *prometheus.CounterVec // 401-triggered invalidations by origin and result

	// The children of the hot paths, looked up once (a label lookup hashes
	// the values and takes the vector's lock): proxied by status code, and
	// served with result ok by token kind and tier. Each is created on
	// first use, so a series appears only once it counts something.
	byStatus [600]atomic.Pointer[childCounter]
	servedOK [2][len(tiers)]atomic.Pointer[childCounter]
}

// childCounter boxes a child counter for an atomic.Pointer.
type childCounter struct{ prometheus.Counter }

// tiers index servedOK.
var tiers = [...]string{TierMemory, TierRedis, TierIssuer, TierNone}

// child returns the counter in slot, looking it up with get the first time.
func child(slot *atomic.Pointer[childCounter], get func() prometheus.Counter) prometheus.Counter {
	if c := slot.Load(); c != nil {
		return c.Counter
	}
	c := &childCounter{get()}
	slot.Store(c) // a racing first use stores the same child
	return c.Counter
}

// Results of a token request, as the metrics name them.
const (
	ResultOK           = "ok"
	ResultUnavailable  = "unavailable"  // 503: no valid token could be had
	ResultBadRequest   = "bad_request"  // 400
	ResultRateLimited  = "rate_limited" // 429
	ResultUnauthorized = "unauthorized" // 401: wrong or missing bearer secret
)

// NewMetrics returns the metrics, labelled with the cache's namespace,
// registered on reg.
func NewMetrics(reg prometheus.Registerer, namespace string) *Metrics {
	labels := prometheus.Labels{"namespace": namespace}
	m := &Metrics{
		served: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name:        "tokencache_local_tokens_served_total",
			Help:        "Answers of the local token endpoint by token (server or client), the tier that answered (memory, redis, issuer, none) and result (ok, unavailable, bad_request, rate_limited, unauthorized).",
			ConstLabels: labels,
		}, []string{"token", "tier", "result"}),
		proxied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name:        "tokencache_proxy_requests_total",
			Help:        "Requests through the API proxy by the upstream's final status code (error: no response; refused: not forwarded).",
			ConstLabels: labels,
		}, []string{"status"}),
		invalidations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name:        "tokencache_local_invalidations_total",
			Help:        "Invalidations triggered by a 401: reported to the token endpoint (origin client; result deleted, kept, held, rate_limited, timeout, bad_request or error) or seen by the proxy, which invalidated and retried (origin proxy, result retried).",
			ConstLabels: labels,
		}, []string{"origin", "result"}),
	}
	reg.MustRegister(m.served, m.proxied, m.invalidations)
	return m
}

func (m *Metrics) tokenServed(user bool, tier, result string) {
	if m == nil {
		return
	}
	kind, k := "server", 0
	if user {
		kind, k = "client", 1
	}
	if result == ResultOK {
		for i, t := range tiers {
			if t == tier {
				child(&m.servedOK[k][i], func() prometheus.Counter { return m.served.WithLabelValues(kind, tier, result) }).Inc()
				return
			}
		}
	}
	m.served.WithLabelValues(kind, tier, result).Inc()
}

func (m *Metrics) proxyStatus(code int) {
	if m == nil {
		return
	}
	if code < 0 || code >= len(m.byStatus) {
		m.proxied.WithLabelValues(strconv.Itoa(code)).Inc()
		return
	}
	child(&m.byStatus[code], func() prometheus.Counter { return m.proxied.WithLabelValues(strconv.Itoa(code)) }).Inc()
}

func (m *Metrics) proxyFailed(label string) {
	if m != nil {
		m.proxied.WithLabelValues(label).Inc()
	}
}

func (m *Metrics) invalidated(origin, result string) {
	if m != nil {
		m.invalidations.WithLabelValues(origin, result).Inc()
	}
}

// Rejected counts a token request that Guard refused (ResultUnauthorized,
// ResultRateLimited); user says whether it asked for a client token.
func (m *Metrics) Rejected(user bool, result string) { m.tokenServed(user, TierNone, result) }

// ProxyRefused counts a proxy request that Guard refused.
func (m *Metrics) ProxyRefused() { m.proxyFailed("refused") }
