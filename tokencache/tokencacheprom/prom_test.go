package tokencacheprom_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"github.com/prometheus/common/expfmt"
	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/tokencache"
	"github.com/tokencache/tokencache/tokencache/basiq"
	"github.com/tokencache/tokencache/tokencache/issuertest"
	"github.com/tokencache/tokencache/tokencache/tokencacheprom"
)

// exposition gathers cs on a fresh registry and returns the text format of
// the metric families named (all if none), sorted by name as Gather sorts.
func exposition(t *testing.T, c prometheus.Collector, names ...string) string {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, mf := range mfs {
		if len(names) > 0 && !slices.Contains(names, mf.GetName()) {
			continue
		}
		if _, err := expfmt.MetricFamilyToText(&b, mf); err != nil {
			t.Fatal(err)
		}
	}
	return b.String()
}

// fixedStats is a StatsSource with every counter distinct, so a metric
// wired to the wrong field shows.
type fixedStats struct{ s tokencache.Stats }

func (f fixedStats) Stats() tokencache.Stats { return f.s }

func TestCollectorExposesEveryStat(t *testing.T) {
	src := fixedStats{tokencache.Stats{
		IssuerCalls: 1, IssuerErrors: 2, Refreshes: 3, RedisReads: 4, RedisHits: 5, RedisErrors: 6,
		LockContended: 7, Waits: 8, Events: 9, FencedWrites: 10, BadValues: 11, FailOpen: 12,
		BudgetLeft: -1, Resubscribes: 13, RejectionsHeld: 14, TransientWaits: 15,
	}}
	c := tokencacheprom.NewCollector(src, tokencacheprom.WithNamespaceLabel("ns1"))
	want := `
# HELP tokencache_bad_values_total Unusable values found in Redis.
# TYPE tokencache_bad_values_total counter
tokencache_bad_values_total{namespace="ns1"} 11
# HELP tokencache_cache_issuer_calls_total Fetch calls by the cache, retries included.
# TYPE tokencache_cache_issuer_calls_total counter
tokencache_cache_issuer_calls_total{namespace="ns1"} 1
# HELP tokencache_cache_issuer_errors_total Fetch calls that failed.
# TYPE tokencache_cache_issuer_errors_total counter
tokencache_cache_issuer_errors_total{namespace="ns1"} 2
# HELP tokencache_events_total Events received on the channel.
# TYPE tokencache_events_total counter
tokencache_events_total{namespace="ns1"} 9
# HELP tokencache_fail_open_total Direct issuer fetches while Redis was unreachable.
# TYPE tokencache_fail_open_total counter
tokencache_fail_open_total{namespace="ns1"} 12
# HELP tokencache_fenced_writes_total Token writes rejected by fencing.
# TYPE tokencache_fenced_writes_total counter
tokencache_fenced_writes_total{namespace="ns1"} 10
# HELP tokencache_issuer_budget_remaining Issuer calls left in the fleet's budget window, as last seen by this process (-1: not yet known).
# TYPE tokencache_issuer_budget_remaining gauge
tokencache_issuer_budget_remaining{namespace="ns1"} -1
# HELP tokencache_lock_contended_total Lock attempts that found another holder.
# TYPE tokencache_lock_contended_total counter
tokencache_lock_contended_total{namespace="ns1"} 7
# HELP tokencache_lock_waits_total Waits for another replica's refresh.
# TYPE tokencache_lock_waits_total counter
tokencache_lock_waits_total{namespace="ns1"} 8
# HELP tokencache_redis_errors_total Failed Redis operations.
# TYPE tokencache_redis_errors_total counter
tokencache_redis_errors_total{namespace="ns1"} 6
# HELP tokencache_redis_hits_total Token calls answered from Redis.
# TYPE tokencache_redis_hits_total counter
tokencache_redis_hits_total{namespace="ns1"} 5
# HELP tokencache_redis_reads_total Token reads from Redis (L2).
# TYPE tokencache_redis_reads_total counter
tokencache_redis_reads_total{namespace="ns1"} 4
# HELP tokencache_refreshes_total Tokens this process stored in Redis.
# TYPE tokencache_refreshes_total counter
tokencache_refreshes_total{namespace="ns1"} 3
# HELP tokencache_rejections_held_total The API's 401s returned without invalidating the token, while the API rejected a new token before accepting any.
# TYPE tokencache_rejections_held_total counter
tokencache_rejections_held_total{namespace="ns1"} 14
# HELP tokencache_resubscribes_total Event subscriptions replaced after a failed liveness probe.
# TYPE tokencache_resubscribes_total counter
tokencache_resubscribes_total{namespace="ns1"} 13
# HELP tokencache_transient_waits_total Waits to re-check Redis while a cluster slot was moving.
# TYPE tokencache_transient_waits_total counter
tokencache_transient_waits_total{namespace="ns1"} 15
`
	if got := exposition(t, c); got != strings.TrimPrefix(want, "\n") {
		t.Errorf("exposition:\n%s\nwant:\n%s", got, want)
	}
}

// TestCollectorOverACache registers the collector and the fetcher metrics
// of a real cache the way the package comment shows, lints the exposition
// with promlint, and checks that each scrape reads the cache's Stats then.
func TestCollectorOverACache(t *testing.T) {
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	issuer := issuertest.NewServer()
	defer issuer.Close()

	fm := tokencacheprom.NewFetcherMetrics("shop")
	cache, err := tokencache.New(rdb, fm.Wrap(basiq.New(issuer.APIKey(), basiq.WithBaseURL(issuer.URL()))), tokencache.WithNamespace("shop"))
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(tokencacheprom.NewCollector(cache), fm)

	count := func(name string) float64 {
		t.Helper()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() != name {
				continue
			}
			m := mf.GetMetric()[0]
			if l := m.GetLabel(); len(l) == 0 || l[0].GetName() != "namespace" || l[0].GetValue() != "shop" {
				t.Errorf("%s: labels %v, want namespace=shop", name, l)
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
		t.Fatalf("no metric %s", name)
		return 0
	}
	if got := count("tokencache_cache_issuer_calls_total"); got != 0 {
		t.Errorf("before any Token call: %v issuer calls", got)
	}
	for range 5 {
		if _, err := cache.Token(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if got, want := count("tokencache_cache_issuer_calls_total"), float64(cache.Stats().IssuerCalls); got != 1 || got != want {
		t.Errorf("issuer calls: got %v, want 1 (Stats says %v)", got, want)
	}
	if got := count("tokencache_refreshes_total"); got != 1 {
		t.Errorf("refreshes: got %v, want 1", got)
	}
	if got, want := exposition(t, fm, "tokencache_issuer_requests_total"), `tokencache_issuer_requests_total{namespace="shop",result="ok"} 1`; !strings.Contains(got, want+"\n") {
		t.Errorf("fetcher metrics:\n%s\nwant %s", got, want)
	}

	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatal(err)
	}
	if len(mfs) != 18 {
		t.Errorf("%d metric families linted, want 18 (16 from the Collector, 2 from FetcherMetrics)", len(mfs))
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}

// fakeIdentified is a Fetcher with an Identity.
type fakeIdentified struct{ err error }

func (f fakeIdentified) Fetch(context.Context) (tokencache.Token, error) {
	return tokencache.Token{AccessToken: "t", TokenType: "Bearer", Expiry: time.Now().Add(time.Hour)}, f.err
}
func (fakeIdentified) Identity() string { return "identity-1" }

func TestFetcherMetrics(t *testing.T) {
	fm := tokencacheprom.NewFetcherMetrics("ns")
	w := fm.Wrap(fakeIdentified{})
	id, ok := w.(tokencache.Identifier)
	if !ok || id.Identity() != "identity-1" {
		t.Fatalf("the wrapper lost the Fetcher's Identity")
	}
	plain := fm.Wrap(tokencache.FetcherFunc(func(context.Context) (tokencache.Token, error) {
		return tokencache.Token{}, context.DeadlineExceeded
	}))
	if _, ok := plain.(tokencache.Identifier); ok {
		t.Errorf("a Fetcher without Identity gained one")
	}
	_, _ = w.Fetch(context.Background())
	_, _ = fm.Wrap(fakeIdentified{err: &basiq.Error{Code: "invalid-grant"}}).Fetch(context.Background())
	_, _ = plain.Fetch(context.Background())
	_, _ = fm.Wrap(fakeIdentified{err: errors.New("boom")}).Fetch(context.Background())
	if got := exposition(t, fm, "tokencache_issuer_requests_total"); got != oneCallPerResult {
		t.Errorf("exposition:\n%s\nwant:\n%s", got, oneCallPerResult)
	}
	if got := exposition(t, fm, "tokencache_issuer_request_duration_seconds"); !strings.Contains(got, `tokencache_issuer_request_duration_seconds_count{namespace="ns"} 4`) {
		t.Errorf("duration histogram:\n%s\nwant a count of 4", got)
	}
	if got := tokencacheprom.Result(&basiq.Error{Code: strings.Repeat("x", 100)}); len(got) != 40 {
		t.Errorf("a 100-byte code labels as %d bytes, want 40", len(got))
	}
}

// TestFetcherMetricsAsObserver gives FetcherMetrics to caches as their
// observer: the issuer calls they report are labelled as Wrap labels them.
func TestFetcherMetricsAsObserver(t *testing.T) {
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	fm := tokencacheprom.NewFetcherMetrics("ns")
	for i, err := range []error{nil, &basiq.Error{Code: "invalid-grant"}, context.DeadlineExceeded, errors.New("boom")} {
		f := tokencache.FetcherFunc(func(context.Context) (tokencache.Token, error) {
			if err != nil {
				return tokencache.Token{}, err
			}
			return tokencache.Token{AccessToken: "tok", TokenType: "Bearer", Expiry: time.Now().Add(time.Hour)}, nil
		})
		cache, cerr := tokencache.New(rdb, f, tokencache.WithNamespace(fmt.Sprint("ns", i)), tokencache.WithObserver(fm),
			tokencache.WithTuning(tokencache.Tuning{RetryAttempts: 1, RetryBase: time.Millisecond, RetryMax: time.Millisecond}))
		if cerr != nil {
			t.Fatal(cerr)
		}
		if _, terr := cache.Token(context.Background()); (terr == nil) != (err == nil) {
			t.Errorf("Token with the issuer answering %v: %v", err, terr)
		}
		_ = cache.Close()
	}
	if got := exposition(t, fm, "tokencache_issuer_requests_total"); got != oneCallPerResult {
		t.Errorf("exposition:\n%s\nwant:\n%s", got, oneCallPerResult)
	}
	if got := tokencacheprom.OutcomeResult(tokencache.Outcome{Result: tokencache.ResultError, Code: strings.Repeat("x", 100)}); len(got) != 40 {
		t.Errorf("a 100-byte code labels as %d bytes, want 40", len(got))
	}
}

// oneCallPerResult is the issuer-call counter after one call of each
// result: ok, an issuer's code, a timeout and any other error.
const oneCallPerResult = `# HELP tokencache_issuer_requests_total Issuer calls made by this process, by result (ok or the issuer's error code).
# TYPE tokencache_issuer_requests_total counter
tokencache_issuer_requests_total{namespace="ns",result="error"} 1
tokencache_issuer_requests_total{namespace="ns",result="invalid-grant"} 1
tokencache_issuer_requests_total{namespace="ns",result="ok"} 1
tokencache_issuer_requests_total{namespace="ns",result="timeout"} 1
`
