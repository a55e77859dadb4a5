package bench

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// buildTokencache builds cmd/tokencache into a temporary directory.
func buildTokencache(tb testing.TB) string {
	tb.Helper()
	bin := filepath.Join(tb.TempDir(), "tokencache")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/tokencache/tokencache/cmd/tokencache").CombinedOutput()
	if err != nil {
		tb.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// BenchmarkOverhead runs the overhead benchmark (Overhead) once, whatever
// b.N, and reports its medians and ratios (docs/bench.md). It builds
// cmd/tokencache, or measures the binary $TOKENCACHE_BENCH_BINARY (to
// compare two builds):
//
//	go test ./cmd/internal/bench -run '^$' -bench Overhead -benchtime 1x -count 3
func BenchmarkOverhead(b *testing.B) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		b.Skip("redis-server not found on PATH")
	}
	bin := os.Getenv("TOKENCACHE_BENCH_BINARY")
	if bin == "" {
		bin = buildTokencache(b)
	}
	var r OverheadResult
	for b.Loop() {
		var err error
		if r, err = Overhead(b.Context(), OverheadConfig{Tokencache: bin}); err != nil {
			b.Fatal(err)
		}
	}
	us := func(d interface{ Microseconds() int64 }) float64 { return float64(d.Microseconds()) }
	b.ReportMetric(us(r.Direct), "direct-µs")
	b.ReportMetric(us(r.BareAdded), "bare-added-µs")
	b.ReportMetric(us(r.ProxyAdded), "proxy-added-µs")
	b.ReportMetric(r.ProxyRatio, "proxy/bare")
	b.ReportMetric(us(r.Handler), "handler-µs")
	b.ReportMetric(us(r.Serve), "serve-µs")
	b.ReportMetric(r.ServeRatio, "serve/handler")
	b.ReportMetric(us(r.BareCPU), "bare-cpu-µs")
	b.ReportMetric(us(r.ProxyCPU), "proxy-cpu-µs")
	b.ReportMetric(us(r.HandlerCPU), "handler-cpu-µs")
	b.ReportMetric(us(r.ServeCPU), "serve-cpu-µs")
	b.Log("\n" + r.String())
}

// TestOverheadSmoke runs the overhead benchmark with a few rounds: every
// target answers 200 (tokencache proxy with its default settings, to one
// sequential client: never a 429) and every median is measured.
func TestOverheadSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	requireRedis(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	r, err := Overhead(t.Context(), OverheadConfig{Tokencache: buildTokencache(t), Self: exe, Rounds: 300, Warmup: 10})
	if err != nil {
		t.Fatal(err)
	}
	if r.Direct <= 0 || r.Bare <= 0 || r.Proxy <= 0 || r.Handler <= 0 || r.Serve <= 0 {
		t.Errorf("a median is missing: %+v", r)
	}
	t.Log("\n" + r.String())
}
