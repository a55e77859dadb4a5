package cli

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tokencache/tokencache/tokencache"
)

// gaugeValues gathers the daemon's token gauges as name -> value.
func gaugeValues(t *testing.T, m *metrics) map[string]float64 {
	t.Helper()
	mfs, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), "tokencache_token_") || mf.GetName() == "tokencache_token_requests_total" {
			continue
		}
		for _, mt := range mf.GetMetric() {
			got[mf.GetName()] = mt.GetGauge().GetValue()
		}
	}
	return got
}

func TestTokenGaugesFollowTheHeldToken(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	m := newMetrics("ns", func() tokencache.Stats { return tokencache.Stats{} })
	m.now = func() time.Time { return now }
	m.trackToken()

	want := func(step string, ttl, window, refreshed float64) {
		t.Helper()
		got := gaugeValues(t, m)
		for name, w := range map[string]float64{
			"tokencache_token_ttl_seconds":                 ttl,
			"tokencache_token_refresh_window_seconds":      window,
			"tokencache_token_refreshed_timestamp_seconds": refreshed,
		} {
			if g, ok := got[name]; !ok || g != w {
				t.Errorf("%s: %s = %v (present %v), want %v", step, name, g, ok, w)
			}
		}
	}
	want("before any token", 0, 0, 0)

	first := tokencache.Token{AccessToken: "tok-1", Expiry: now.Add(time.Hour)}
	m.observeToken(first)
	want("first token", 3600, 1800, float64(now.Unix()))

	// The same token held later: the window and the refresh time stay.
	t0 := now
	now = now.Add(40 * time.Minute)
	m.observeToken(first)
	want("same token 40m later", 1200, 1800, float64(t0.Unix()))

	// The same token whose expiry a re-read measured a little differently.
	m.observeToken(tokencache.Token{AccessToken: "tok-1", Expiry: first.Expiry.Add(-time.Second)})
	want("same token, expiry re-measured", 1199, 1800, float64(t0.Unix()))

	// A new token: a refresh.
	m.observeToken(tokencache.Token{AccessToken: "tok-2", Expiry: now.Add(time.Hour)})
	want("new token", 3600, 1800, float64(now.Unix()))

	// Expired: the time left stops at 0.
	now = now.Add(2 * time.Hour)
	want("expired", 0, 1800, float64(now.Add(-2*time.Hour).Unix()))

	if n := testutil.CollectAndCount(m.reg, "tokencache_token_ttl_seconds"); n != 1 {
		t.Errorf("ttl series = %d, want 1", n)
	}
}

func TestServeAndProxyExportNoTokenGauges(t *testing.T) {
	m := newMetrics("ns", func() tokencache.Stats { return tokencache.Stats{} })
	if got := gaugeValues(t, m); len(got) != 0 {
		t.Errorf("without trackToken: token gauges %v, want none (a 0 would read as a lapsed token)", got)
	}
}
