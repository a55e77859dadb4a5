package tokencacheotel_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/tokencache/tokencache/tokencache"
	"github.com/tokencache/tokencache/tokencache/basiq"
	"github.com/tokencache/tokencache/tokencache/issuertest"
	"github.com/tokencache/tokencache/tokencache/tokencacheotel"
)

// telemetry is an in-memory tracer and meter provider, as an exporter
// would see them.
type telemetry struct {
	spans  *tracetest.SpanRecorder
	tp     *sdktrace.TracerProvider
	reader *sdkmetric.ManualReader
	mp     *sdkmetric.MeterProvider
}

func newTelemetry(t *testing.T) *telemetry {
	t.Helper()
	tel := &telemetry{spans: tracetest.NewSpanRecorder(), reader: sdkmetric.NewManualReader()}
	tel.tp = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(tel.spans))
	tel.mp = sdkmetric.NewMeterProvider(sdkmetric.WithReader(tel.reader))
	t.Cleanup(func() {
		_ = tel.tp.Shutdown(context.Background())
		_ = tel.mp.Shutdown(context.Background())
	})
	return tel
}

func (tel *telemetry) opts() []tokencacheotel.Option {
	return []tokencacheotel.Option{tokencacheotel.WithTracerProvider(tel.tp), tokencacheotel.WithMeterProvider(tel.mp)}
}

// ended returns the ended spans' names, in the order they ended.
func (tel *telemetry) ended() []sdktrace.ReadOnlySpan { return tel.spans.Ended() }

func names(spans []sdktrace.ReadOnlySpan) []string {
	var out []string
	for _, s := range spans {
		out = append(out, s.Name())
	}
	return out
}

// attrs returns a span's attributes as strings, by key.
func attrs(s sdktrace.ReadOnlySpan) map[string]string {
	m := map[string]string{}
	for _, kv := range s.Attributes() {
		m[string(kv.Key)] = kv.Value.String()
	}
	return m
}

func find(t *testing.T, spans []sdktrace.ReadOnlySpan, name string) sdktrace.ReadOnlySpan {
	t.Helper()
	for _, s := range spans {
		if s.Name() == name {
			return s
		}
	}
	t.Fatalf("no span %s among %q", name, names(spans))
	return nil
}

// collect reads every metric once, by name.
func (tel *telemetry) collect(t *testing.T) map[string]metricdata.Metrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := tel.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]metricdata.Metrics{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			out[m.Name] = m
		}
	}
	return out
}

// rig is a cache on miniredis over the fake Basiq issuer, observed by
// tokencacheotel.
type rig struct {
	tel    *telemetry
	issuer *issuertest.Server
	cache  *tokencache.Cache
}

func newRig(t *testing.T, opts ...tokencache.Option) *rig {
	t.Helper()
	tel := newTelemetry(t)
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	issuer := issuertest.NewServer()
	t.Cleanup(issuer.Close)
	obs, err := tokencacheotel.NewObserver(tel.opts()...)
	if err != nil {
		t.Fatal(err)
	}
	opts = append([]tokencache.Option{tokencache.WithNamespace("shop"), tokencache.WithObserver(obs),
		tokencache.WithTuning(tokencache.Tuning{RetryAttempts: 2, RetryBase: time.Millisecond, RetryMax: 5 * time.Millisecond})}, opts...)
	cache, err := tokencache.New(rdb, basiq.New(issuer.APIKey(), basiq.WithBaseURL(issuer.URL())), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cache.Close() })
	return &rig{tel: tel, issuer: issuer, cache: cache}
}

func TestRefreshMakesSpansUnderTheCallersSpan(t *testing.T) {
	r := newRig(t)
	ctx, parent := r.tel.tp.Tracer("app").Start(context.Background(), "handler")
	tok, err := r.cache.Token(ctx)
	parent.End()
	if err != nil {
		t.Fatal(err)
	}
	spans := r.tel.ended()
	want := []string{
		"tokencache.redis_read", "tokencache.redis_read", "tokencache.lock",
		"tokencache.redis_read", "tokencache.issuer_call", "tokencache.write", "tokencache.refresh",
		"handler",
	}
	if got := names(spans); !slices.Equal(got, want) {
		t.Fatalf("spans %q, want %q", got, want)
	}
	root := parent.SpanContext()
	refresh := find(t, spans, "tokencache.refresh")
	for _, s := range spans[:len(spans)-1] {
		if s.SpanContext().TraceID() != root.TraceID() {
			t.Errorf("%s: not in the caller's trace", s.Name())
		}
		a := attrs(s)
		if a["tokencache.namespace"] != "shop" || a["tokencache.tier"] != "server" || a["tokencache.outcome"] == "" {
			t.Errorf("%s: attributes %v, want namespace shop, tier server and an outcome", s.Name(), a)
		}
	}
	for _, name := range []string{"tokencache.issuer_call", "tokencache.write"} {
		if s := find(t, spans, name); s.Parent().SpanID() != refresh.SpanContext().SpanID() {
			t.Errorf("%s: not a child of tokencache.refresh", name)
		}
	}
	if s := find(t, spans, "tokencache.lock"); s.Parent().SpanID() != root.SpanID() {
		t.Errorf("tokencache.lock: not a child of the caller's span")
	}
	w, rf := attrs(find(t, spans, "tokencache.write")), attrs(refresh)
	if w["tokencache.outcome"] != "stored" || w["tokencache.generation"] == "" || rf["tokencache.generation"] != w["tokencache.generation"] {
		t.Errorf("write %v, refresh %v: want stored, with the same generation", w, rf)
	}
	if a := attrs(find(t, spans, "tokencache.issuer_call")); a["tokencache.outcome"] != "ok" {
		t.Errorf("issuer call: %v, want outcome ok", a)
	}
	noSecrets(t, r, tok)

	// From memory: no span at all.
	before := len(r.tel.ended())
	for range 100 {
		if _, err := r.cache.Token(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(r.tel.ended()) - before; n != 0 {
		t.Errorf("%d spans for tokens served from memory, want none", n)
	}
}

func TestIssuerFailureSpanHasTheErrorCode(t *testing.T) {
	r := newRig(t)
	r.issuer.FailNext(1, issuertest.Failure{Status: http.StatusForbidden, Code: "access-denied"})
	_, err := r.cache.Token(context.Background())
	var fe *tokencache.FetchError
	if !errors.As(err, &fe) || fe.Code != "access-denied" {
		t.Fatalf("Token: %v, want access-denied", err)
	}
	spans := r.tel.ended()
	for _, name := range []string{"tokencache.issuer_call", "tokencache.refresh"} {
		s := find(t, spans, name)
		a := attrs(s)
		if a["tokencache.outcome"] != "error" || a["tokencache.error_code"] != "access-denied" {
			t.Errorf("%s: attributes %v, want outcome error and error_code access-denied", name, a)
		}
		if s.Status().Code != codes.Error || s.Status().Description != "access-denied" {
			t.Errorf("%s: status %+v, want Error access-denied", name, s.Status())
		}
	}
	m := r.tel.collect(t)
	if got := counterByResult(t, m["tokencache_issuer_requests"]); got["access-denied"] != 1 || got["ok"] != 0 {
		t.Errorf("tokencache_issuer_requests by result %v, want access-denied 1", got)
	}
	noSecrets(t, r, tokencache.Token{})
}

func TestUnauthorizedSpanThroughTransport(t *testing.T) {
	r := newRig(t)
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		tok, _ := strings.CutPrefix(req.Header.Get("Authorization"), "Bearer ")
		if !r.issuer.Valid(tok) {
			w.WriteHeader(http.StatusUnauthorized)
		}
	}))
	defer api.Close()
	old, err := r.cache.Token(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	r.issuer.RevokeAll()
	before := len(r.tel.ended())

	ctx, parent := r.tel.tp.Tracer("app").Start(context.Background(), "handler")
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, api.URL, nil)
	resp, err := (&http.Client{Transport: r.cache.Transport(nil)}).Do(req)
	parent.End()
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d after the 401, want 200", resp.StatusCode)
	}
	spans := r.tel.ended()[before:]
	u := find(t, spans, "tokencache.unauthorized")
	if a := attrs(u); a["tokencache.outcome"] != "retried" || a["tokencache.namespace"] != "shop" {
		t.Errorf("unauthorized: attributes %v, want outcome retried in shop", a)
	}
	if u.Parent().SpanID() != parent.SpanContext().SpanID() {
		t.Error("unauthorized: not a child of the request's span")
	}
	// The refetch is under the 401's span.
	call := find(t, spans, "tokencache.issuer_call")
	if call.SpanContext().TraceID() != parent.SpanContext().TraceID() {
		t.Error("the refetch's issuer call is not in the request's trace")
	}
	fresh, err := r.cache.Token(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	noSecrets(t, r, old, fresh)
}

// noSecrets checks that no span attribute, status, event or metric
// attribute holds a token, the API key, or a fingerprint of either.
func noSecrets(t *testing.T, r *rig, toks ...tokencache.Token) {
	t.Helper()
	secrets := []string{r.issuer.APIKey()}
	for _, tok := range toks {
		if tok.AccessToken != "" {
			secrets = append(secrets, tok.AccessToken, tok.Fingerprint())
		}
	}
	secrets = append(secrets, r.issuer.LiveTokens()...)
	var values []string
	for _, s := range r.tel.ended() {
		for _, kv := range s.Attributes() {
			values = append(values, kv.Value.String())
		}
		values = append(values, s.Name(), s.Status().Description)
		for _, ev := range s.Events() {
			for _, kv := range ev.Attributes {
				values = append(values, kv.Value.String())
			}
		}
	}
	for _, m := range r.tel.collect(t) {
		for _, set := range attributeSets(m) {
			for _, kv := range set.ToSlice() {
				values = append(values, kv.Value.String())
			}
		}
	}
	if len(values) == 0 {
		t.Fatal("nothing recorded to check")
	}
	for _, v := range values {
		for _, s := range secrets {
			if s != "" && strings.Contains(v, s) {
				t.Errorf("recorded value %q holds a secret", v)
			}
		}
	}
}

func attributeSets(m metricdata.Metrics) []attribute.Set {
	var out []attribute.Set
	switch d := m.Data.(type) {
	case metricdata.Sum[int64]:
		for _, p := range d.DataPoints {
			out = append(out, p.Attributes)
		}
	case metricdata.Gauge[int64]:
		for _, p := range d.DataPoints {
			out = append(out, p.Attributes)
		}
	case metricdata.Histogram[float64]:
		for _, p := range d.DataPoints {
			out = append(out, p.Attributes)
		}
	}
	return out
}

func counterByResult(t *testing.T, m metricdata.Metrics) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	sum, ok := m.Data.(metricdata.Sum[int64])
	if !ok {
		t.Fatalf("%s: %T, want an int64 sum", m.Name, m.Data)
	}
	for _, p := range sum.DataPoints {
		v, _ := p.Attributes.Value(tokencacheotel.ResultLabel)
		out[v.AsString()] += p.Value
	}
	return out
}

func TestStatsAreTheCollectorsMetrics(t *testing.T) {
	r := newRig(t)
	if _, err := r.cache.Token(context.Background()); err != nil {
		t.Fatal(err)
	}
	reg, err := tokencacheotel.RegisterStats(r.cache, r.tel.opts()...)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = reg.Unregister() }()
	m := r.tel.collect(t)

	// Each name, as a Prometheus exporter writes it: _total after a
	// counter's, the unit after the histogram's.
	var got []string
	for name, mm := range m {
		switch d := mm.Data.(type) {
		case metricdata.Sum[int64]:
			if !d.IsMonotonic {
				t.Errorf("%s: not monotonic", name)
			}
			got = append(got, name+"_total")
		case metricdata.Histogram[float64]:
			if mm.Unit != "s" {
				t.Errorf("%s: unit %q, want s", name, mm.Unit)
			}
			got = append(got, name+"_seconds")
		default:
			got = append(got, name)
		}
		for _, set := range attributeSets(mm) {
			if v, ok := set.Value(tokencacheotel.NamespaceLabel); !ok || v.AsString() != "shop" {
				t.Errorf("%s: attributes %v, want namespace shop", name, set.ToSlice())
			}
		}
	}
	slices.Sort(got)
	if want := promNames(t); !slices.Equal(got, want) {
		t.Errorf("metrics (as Prometheus names):\n %q\nwant tokencacheprom's:\n %q", got, want)
	}

	value := func(name string) int64 {
		t.Helper()
		switch d := m[name].Data.(type) {
		case metricdata.Sum[int64]:
			return d.DataPoints[0].Value
		case metricdata.Gauge[int64]:
			return d.DataPoints[0].Value
		}
		t.Fatalf("%s: %T", name, m[name].Data)
		return 0
	}
	s := r.cache.Stats()
	if value("tokencache_refreshes") != int64(s.Refreshes) || value("tokencache_cache_issuer_calls") != 1 ||
		value("tokencache_redis_reads") != int64(s.RedisReads) || value("tokencache_issuer_budget_remaining") != s.BudgetLeft {
		t.Errorf("refreshes %d, issuer calls %d, reads %d, budget %d; want the cache's Stats %+v",
			value("tokencache_refreshes"), value("tokencache_cache_issuer_calls"), value("tokencache_redis_reads"),
			value("tokencache_issuer_budget_remaining"), s)
	}
	if h, ok := m["tokencache_issuer_request_duration"].Data.(metricdata.Histogram[float64]); !ok || h.DataPoints[0].Count != 1 {
		t.Errorf("tokencache_issuer_request_duration: %+v, want one call", m["tokencache_issuer_request_duration"].Data)
	}
}

// promNames are the metric names tokencacheprom exposes, read from its
// source: the two adapters must not drift apart.
func promNames(t *testing.T) []string {
	t.Helper()
	src, err := os.ReadFile("../tokencacheprom/prom.go")
	if err != nil {
		t.Fatal(err)
	}
	names := regexp.MustCompile(`"(tokencache_[a-z_]+)"`).FindAllStringSubmatch(string(src), -1)
	var out []string
	for _, n := range names {
		out = append(out, n[1])
	}
	if len(out) < 10 {
		t.Fatalf("found only %q in tokencacheprom: the pattern no longer matches its source", out)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func TestRegisterStatsNamespaceAttribute(t *testing.T) {
	tel := newTelemetry(t)
	reg, err := tokencacheotel.RegisterStats(fixedStats{}, append(tel.opts(), tokencacheotel.WithNamespaceAttribute("ns1"))...)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = reg.Unregister() }()
	for name, m := range tel.collect(t) {
		for _, set := range attributeSets(m) {
			if v, _ := set.Value(tokencacheotel.NamespaceLabel); v.AsString() != "ns1" {
				t.Errorf("%s: namespace %q, want ns1", name, v.AsString())
			}
		}
	}
}

type fixedStats struct{}

func (fixedStats) Stats() tokencache.Stats { return tokencache.Stats{BudgetLeft: -1} }
