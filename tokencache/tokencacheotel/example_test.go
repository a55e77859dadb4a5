package tokencacheotel_test

import (
	"context"
	"fmt"
	"log"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/tokencache/tokencache/tokencache"
	"github.com/tokencache/tokencache/tokencache/basiq"
	"github.com/tokencache/tokencache/tokencache/issuertest"
	"github.com/tokencache/tokencache/tokencache/tokencacheotel"
)

// A cache reporting to OpenTelemetry. Here the providers keep what they
// get in memory; a program passes its own (or sets the global ones) with
// an OTLP exporter.
func Example() {
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))

	mr, err := miniredis.Run()
	if err != nil {
		log.Fatal(err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	issuer := issuertest.NewServer()
	defer issuer.Close()

	obs, err := tokencacheotel.NewObserver(tokencacheotel.WithTracerProvider(tp), tokencacheotel.WithMeterProvider(mp))
	if err != nil {
		log.Fatal(err)
	}
	cache, err := tokencache.New(rdb, basiq.New(issuer.APIKey(), basiq.WithBaseURL(issuer.URL())),
		tokencache.WithNamespace("shop"), tokencache.WithObserver(obs))
	if err != nil {
		log.Fatal(err)
	}
	defer cache.Close()
	reg, err := tokencacheotel.RegisterStats(cache, tokencacheotel.WithMeterProvider(mp))
	if err != nil {
		log.Fatal(err)
	}
	defer reg.Unregister()

	ctx, span := tp.Tracer("app").Start(context.Background(), "handler")
	for range 3 { // the first call refreshes; the others are served from memory, with no span
		if _, err := cache.Token(ctx); err != nil {
			log.Fatal(err)
		}
	}
	span.End()
	for _, s := range spans.Ended() {
		fmt.Println(s.Name())
	}

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		log.Fatal(err)
	}
	for _, m := range rm.ScopeMetrics[0].Metrics {
		if m.Name == "tokencache_refreshes" {
			fmt.Println(m.Name, m.Data.(metricdata.Sum[int64]).DataPoints[0].Value)
		}
	}
	// Output:
	// tokencache.redis_read
	// tokencache.redis_read
	// tokencache.lock
	// tokencache.redis_read
	// tokencache.issuer_call
	// tokencache.write
	// tokencache.refresh
	// handler
	// tokencache_refreshes 1
}
