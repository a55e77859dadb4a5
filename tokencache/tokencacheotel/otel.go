// Package tokencacheotel reports a tokencache.Cache to OpenTelemetry: a
// span for each step of the slow path, and the metrics of the Prometheus
// collector (tokencache/tokencacheprom) as OpenTelemetry instruments. Only
// programs that import it link OpenTelemetry; the library itself does not
// depend on it.
//
// Two lines wire a cache, with the global providers (or the ones given
// with WithTracerProvider and WithMeterProvider):
//
//	obs, err := tokencacheotel.NewObserver()
//	cache, err := tokencache.New(rdb, fetcher, tokencache.WithObserver(obs))
//	reg, err := tokencacheotel.RegisterStats(cache)
//	defer reg.Unregister()
//
// # Spans
//
// The Observer makes one span per step the cache reports (see
// tokencache.Observer): tokencache.redis_read, tokencache.lock,
// tokencache.refresh, tokencache.issuer_call, tokencache.write,
// tokencache.wait and tokencache.unauthorized. A token served from memory
// makes none. The steps of a Token call that found no token in memory are
// children of that call's span (of the first caller's, where several
// callers of one process share the work); the issuer call's span is the
// parent of the Fetcher's HTTP request, and a Redis step's of the
// commands go-redis's redisotel traces. Each span carries these
// attributes, and never a token, a credential, a user id or a
// fingerprint:
//
//	tokencache.namespace   the cache's namespace
//	tokencache.tier        "server", or "client" for a user's client token
//	tokencache.outcome     how the step ended (tokencache.Result* values)
//	tokencache.generation  the token's fencing generation, when known
//	tokencache.error_code  a failed issuer call's or refresh's code
//
// A step whose outcome is "error" has the span status Error, with the
// error code as its description.
//
// # Metrics
//
// RegisterStats registers the cache's counters and the issuer budget, and
// the Observer records the issuer calls by result and their latency: the
// metrics of tokencacheprom's Collector and FetcherMetrics, with the same
// attributes (namespace, and result for the issuer calls). Their names are
// the Prometheus names without the suffixes an OpenTelemetry Prometheus
// exporter adds back: _total for a counter, _seconds for the histogram,
// whose unit is "s". Exported to Prometheus they are the collector's
// names, so dashboards and the repository's alert rules work on either.
package tokencacheotel

import (
	"context"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokencache/tokencache/tokencache"
)

// ScopeName is the instrumentation scope of the tracer and the meter.
const ScopeName = "github.com/tokencache/tokencache/tokencache/tokencacheotel"

// The span attributes' keys.
const (
	AttrNamespace  = attribute.Key("tokencache.namespace")
	AttrTier       = attribute.Key("tokencache.tier")
	AttrOutcome    = attribute.Key("tokencache.outcome")
	AttrGeneration = attribute.Key("tokencache.generation")
	AttrErrorCode  = attribute.Key("tokencache.error_code")
)

// The metrics' attributes: the Prometheus collector's labels.
const (
	NamespaceLabel = attribute.Key("namespace")
	ResultLabel    = attribute.Key("result")
)

// An Option configures an Observer or RegisterStats.
type Option func(*config)

type config struct {
	tp        trace.TracerProvider
	mp        metric.MeterProvider
	namespace string // RegisterStats's namespace attribute; "" for the source's
}

func newConfig(opts []Option) config {
	var c config
	for _, o := range opts {
		o(&c)
	}
	if c.tp == nil {
		c.tp = otel.GetTracerProvider()
	}
	if c.mp == nil {
		c.mp = otel.GetMeterProvider()
	}
	return c
}

// WithTracerProvider sets where the Observer's spans go. Default: the
// global provider (otel.GetTracerProvider) when NewObserver runs.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(c *config) { c.tp = tp }
}

// WithMeterProvider sets where the metrics go. Default: the global
// provider (otel.GetMeterProvider) when NewObserver or RegisterStats runs.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return func(c *config) { c.mp = mp }
}

// WithNamespaceAttribute sets RegisterStats's namespace attribute. Default:
// the source's Namespace() when it has one, else
// tokencache.DefaultNamespace. Give it no user id.
func WithNamespaceAttribute(v string) Option {
	return func(c *config) { c.namespace = v }
}

// Observer is a tokencache.Observer that makes a span of each step and
// records the issuer calls: tokencache_issuer_requests{namespace, result}
// (a counter; result is "ok" or the error code) and
// tokencache_issuer_request_duration{namespace} (a histogram in seconds).
// It is safe for concurrent use; one Observer may serve many caches.
type Observer struct {
	tracer   trace.Tracer
	calls    metric.Int64Counter
	duration metric.Float64Histogram
}

var _ tokencache.Observer = (*Observer)(nil)

// durationBuckets are tokencacheprom's issuer latency buckets, in seconds.
var durationBuckets = []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 15}

// NewObserver returns an Observer with the providers the options give. It
// fails only if the meter refuses an instrument.
func NewObserver(opts ...Option) (*Observer, error) {
	cfg := newConfig(opts)
	meter := cfg.mp.Meter(ScopeName)
	calls, err := meter.Int64Counter("tokencache_issuer_requests",
		metric.WithDescription("Issuer calls made by this process, by result (ok or the issuer's error code)."))
	if err != nil {
		return nil, err
	}
	duration, err := meter.Float64Histogram("tokencache_issuer_request_duration",
		metric.WithDescription("Latency of issuer calls made by this process."),
		metric.WithUnit("s"), metric.WithExplicitBucketBoundaries(durationBuckets...))
	if err != nil {
		return nil, err
	}
	return &Observer{tracer: cfg.tp.Tracer(ScopeName), calls: calls, duration: duration}, nil
}

// spanNames are the spans' names by step.
var spanNames = func() map[tokencache.Op]string {
	m := map[tokencache.Op]string{}
	for _, op := range tokencache.Ops() {
		m[op] = "tokencache." + op.String()
	}
	return m
}()

// maxResultLen bounds the result attribute (as tokencacheprom's label),
// so that an odd issuer cannot blow up the metric's cardinality.
const maxResultLen = 40

// Start implements tokencache.Observer: it starts the step's span (a
// child of ctx's) and returns the function that ends it.
func (o *Observer) Start(ctx context.Context, s tokencache.Step) (context.Context, func(tokencache.Outcome)) {
	name, ok := spanNames[s.Op]
	if !ok {
		name = "tokencache." + s.Op.String()
	}
	ctx, span := o.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindInternal),
		trace.WithAttributes(AttrNamespace.String(s.Namespace), AttrTier.String(s.Tier)))
	var start time.Time
	if s.Op == tokencache.OpIssuerCall {
		start = time.Now()
	}
	return ctx, func(out tokencache.Outcome) {
		if s.Op == tokencache.OpIssuerCall {
			o.recordCall(ctx, s.Namespace, out, time.Since(start))
		}
		attrs := make([]attribute.KeyValue, 0, 3)
		attrs = append(attrs, AttrOutcome.String(out.Result))
		if out.Generation > 0 {
			attrs = append(attrs, AttrGeneration.Int64(out.Generation))
		}
		if out.Code != "" {
			attrs = append(attrs, AttrErrorCode.String(out.Code))
		}
		span.SetAttributes(attrs...)
		if out.Result == tokencache.ResultError {
			span.SetStatus(codes.Error, out.Code)
		}
		span.End()
	}
}

// recordCall counts and times one issuer call.
func (o *Observer) recordCall(ctx context.Context, namespace string, out tokencache.Outcome, d time.Duration) {
	result := tokencache.ResultOK
	if out.Result != tokencache.ResultOK {
		result = out.Code
		if result == "" {
			result = tokencache.ResultError
		}
		if len(result) > maxResultLen {
			result = result[:maxResultLen]
		}
	}
	ns := NamespaceLabel.String(namespace)
	o.calls.Add(ctx, 1, metric.WithAttributeSet(attribute.NewSet(ns, ResultLabel.String(result))))
	o.duration.Record(ctx, d.Seconds(), metric.WithAttributeSet(attribute.NewSet(ns)))
}
