package localapi

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestMetricsCachedChildrenCountTheirSeries(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg, "ns")
	m.proxyStatus(200)
	m.proxyStatus(200)
	m.proxyStatus(404)
	m.proxyStatus(700) // outside the cached range
	m.proxyFailed("refused")
	m.tokenServed(false, TierMemory, ResultOK)
	m.tokenServed(false, TierMemory, ResultOK)
	m.tokenServed(true, TierRedis, ResultOK)
	m.tokenServed(false, TierIssuer, ResultUnavailable)
	m.tokenServed(false, "odd", ResultOK) // not a known tier: looked up each time
	for _, c := range []struct {
		vec    *prometheus.CounterVec
		labels []string
		want   float64
	}{
		{m.proxied, []string{"200"}, 2},
		{m.proxied, []string{"404"}, 1},
		{m.proxied, []string{"700"}, 1},
		{m.proxied, []string{"refused"}, 1},
		{m.served, []string{"server", TierMemory, ResultOK}, 2},
		{m.served, []string{"client", TierRedis, ResultOK}, 1},
		{m.served, []string{"server", TierIssuer, ResultUnavailable}, 1},
		{m.served, []string{"server", "odd", ResultOK}, 1},
	} {
		if got := testutil.ToFloat64(c.vec.WithLabelValues(c.labels...)); got != c.want {
			t.Errorf("%v = %v, want %v", c.labels, got, c.want)
		}
	}
	// Only the series that counted something exist.
	if n := testutil.CollectAndCount(m.served); n != 4 {
		t.Errorf("served series = %d, want 4", n)
	}
	if n := testutil.CollectAndCount(m.proxied); n != 4 {
		t.Errorf("proxied series = %d, want 4", n)
	}
	var nilMetrics *Metrics
	nilMetrics.proxyStatus(200) // a nil *Metrics counts nothing and does not panic
	nilMetrics.tokenServed(false, TierMemory, ResultOK)
}
