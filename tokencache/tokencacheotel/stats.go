package tokencacheotel

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/tokencache/tokencache/tokencache"
)

// StatsSource is what RegisterStats reads at each collection.
// *tokencache.Cache implements it.
type StatsSource interface {
	Stats() tokencache.Stats
}

// stat is one of a cache's counters as an instrument: tokencacheprom's
// metric of the same name, less the _total suffix.
type stat struct {
	name, help string
	get        func(tokencache.Stats) uint64
}

// stats are tokencacheprom.Collector's counters, in its order.
var stats = []stat{
	{"tokencache_cache_issuer_calls", "Fetch calls by the cache, retries included.", func(s tokencache.Stats) uint64 { return s.IssuerCalls }},
	{"tokencache_cache_issuer_errors", "Fetch calls that failed.", func(s tokencache.Stats) uint64 { return s.IssuerErrors }},
	{"tokencache_refreshes", "Tokens this process stored in Redis.", func(s tokencache.Stats) uint64 { return s.Refreshes }},
	{"tokencache_redis_reads", "Token reads from Redis (L2).", func(s tokencache.Stats) uint64 { return s.RedisReads }},
	{"tokencache_redis_errors", "Failed Redis operations.", func(s tokencache.Stats) uint64 { return s.RedisErrors }},
	{"tokencache_lock_contended", "Lock attempts that found another holder.", func(s tokencache.Stats) uint64 { return s.LockContended }},
	{"tokencache_lock_waits", "Waits for another replica's refresh.", func(s tokencache.Stats) uint64 { return s.Waits }},
	{"tokencache_events", "Events received on the channel.", func(s tokencache.Stats) uint64 { return s.Events }},
	{"tokencache_fenced_writes", "Token writes rejected by fencing.", func(s tokencache.Stats) uint64 { return s.FencedWrites }},
	{"tokencache_bad_values", "Unusable values found in Redis.", func(s tokencache.Stats) uint64 { return s.BadValues }},
	{"tokencache_fail_open", "Direct issuer fetches while Redis was unreachable.", func(s tokencache.Stats) uint64 { return s.FailOpen }},
	{"tokencache_redis_hits", "Token calls answered from Redis.", func(s tokencache.Stats) uint64 { return s.RedisHits }},
	{"tokencache_resubscribes", "Event subscriptions replaced after a failed liveness probe.", func(s tokencache.Stats) uint64 { return s.Resubscribes }},
	{"tokencache_rejections_held", "The API's 401s returned without invalidating the token, while the API rejected a new token before accepting any.", func(s tokencache.Stats) uint64 { return s.RejectionsHeld }},
	{"tokencache_transient_waits", "Waits to re-check Redis while a cluster slot was moving.", func(s tokencache.Stats) uint64 { return s.TransientWaits }},
}

// RegisterStats registers src's counters as observable counters and the
// fleet's issuer budget as the gauge tokencache_issuer_budget_remaining
// (-1: not yet known), each with the attribute namespace, read from src's
// Stats once per collection. Unregister the Registration when src is
// closed.
func RegisterStats(src StatsSource, opts ...Option) (metric.Registration, error) {
	cfg := newConfig(opts)
	ns := cfg.namespace
	if ns == "" {
		ns = tokencache.DefaultNamespace
		if n, ok := src.(interface{ Namespace() string }); ok {
			ns = n.Namespace()
		}
	}
	attrs := metric.WithAttributeSet(attribute.NewSet(NamespaceLabel.String(ns)))
	meter := cfg.mp.Meter(ScopeName)
	counters := make([]metric.Int64ObservableCounter, len(stats))
	insts := make([]metric.Observable, 0, len(stats)+1)
	for i, s := range stats {
		c, err := meter.Int64ObservableCounter(s.name, metric.WithDescription(s.help))
		if err != nil {
			return nil, err
		}
		counters[i] = c
		insts = append(insts, c)
	}
	budget, err := meter.Int64ObservableGauge("tokencache_issuer_budget_remaining",
		metric.WithDescription("Issuer calls left in the fleet's budget window, as last seen by this process (-1: not yet known)."))
	if err != nil {
		return nil, err
	}
	insts = append(insts, budget)
	return meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		s := src.Stats()
		for i, st := range stats {
			o.ObserveInt64(counters[i], int64(st.get(s)), attrs)
		}
		o.ObserveInt64(budget, s.BudgetLeft, attrs)
		return nil
	}, insts...)
}
