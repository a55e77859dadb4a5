package bench

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestMain lets the test binary stand in for the program in the
// processes mode: the smoke test re-executes it with ChildFlag.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == ChildFlag {
		if err := runChild(context.Background(), os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if len(os.Args) > 1 && os.Args[1] == BareFlag {
		if err := RunBare(context.Background(), os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

func TestPercentile(t *testing.T) {
	sorted := []time.Duration{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	tests := []struct {
		p    float64
		want time.Duration
	}{
		{0, 1}, {1, 1}, {10, 1}, {11, 2}, {50, 5}, {51, 6}, {90, 9}, {99, 10}, {100, 10}, {150, 10},
	}
	for _, tt := range tests {
		if got := Percentile(sorted, tt.p); got != tt.want {
			t.Errorf("Percentile(1..10, %v) = %v, want %v", tt.p, got, tt.want)
		}
	}
	if got := Percentile(nil, 50); got != 0 {
		t.Errorf("Percentile(nil, 50) = %v, want 0", got)
	}
	if got := Percentile([]time.Duration{7}, 99); got != 7 {
		t.Errorf("Percentile([7], 99) = %v, want 7", got)
	}
}

func TestSummarize(t *testing.T) {
	d := make([]time.Duration, 0, 1000)
	for i := 1000; i >= 1; i-- { // unsorted on purpose
		d = append(d, time.Duration(i))
	}
	got := Summarize(d)
	want := Latency{Count: 1000, P50: 500, P99: 990, Max: 1000}
	if got != want {
		t.Errorf("Summarize(1000..1) = %+v, want %+v", got, want)
	}
	if got := Summarize(nil); got != (Latency{}) {
		t.Errorf("Summarize(nil) = %+v, want zero", got)
	}
}

func TestRounds(t *testing.T) {
	calls := []time.Duration{ms(10), ms(12), ms(300), ms(3000), ms(3100), ms(6000)}
	rounds, counts := Rounds(calls, ms(750))
	wantRounds := []Window{{ms(10), ms(300)}, {ms(3000), ms(3100)}, {ms(6000), ms(6000)}}
	wantCounts := []int{3, 2, 1}
	if fmt.Sprint(rounds) != fmt.Sprint(wantRounds) || fmt.Sprint(counts) != fmt.Sprint(wantCounts) {
		t.Errorf("Rounds = %v %v, want %v %v", rounds, counts, wantRounds, wantCounts)
	}
	if r, c := Rounds(nil, ms(1)); r != nil || c != nil {
		t.Errorf("Rounds(nil) = %v %v, want nil", r, c)
	}
}

func TestOverlaps(t *testing.T) {
	w := []Window{{ms(100), ms(200)}}
	tests := []struct {
		s    Sample
		want bool
	}{
		{Sample{Start: ms(50), Took: ms(10)}, false},  // before
		{Sample{Start: ms(50), Took: ms(60)}, true},   // runs into it
		{Sample{Start: ms(150), Took: 1}, true},       // inside
		{Sample{Start: ms(205), Took: 1}, true},       // within the pad
		{Sample{Start: ms(300), Took: ms(1)}, false},  // after
		{Sample{Start: ms(0), Took: ms(1000)}, true},  // spans it
		{Sample{Start: ms(89), Took: ms(0)}, false},   // just outside the pad
		{Sample{Start: ms(90), Took: ms(0)}, true},    // on the pad's edge
		{Sample{Start: ms(211), Took: ms(0)}, false},  // past the pad
		{Sample{Start: ms(210), Took: ms(0)}, true},   // on the pad's edge
		{Sample{Start: ms(-20), Took: ms(115)}, true}, // before t0, into the pad
	}
	for _, tt := range tests {
		if got := Overlaps(tt.s, w, ms(10)); got != tt.want {
			t.Errorf("Overlaps(%+v) = %v, want %v", tt.s, got, tt.want)
		}
	}
}

const commandstatsText = "# Commandstats\r\n" +
	"cmdstat_get:calls=12,usec=30,usec_per_call=2.50,rejected_calls=0,failed_calls=0\r\n" +
	"cmdstat_evalsha:calls=3,usec=90,usec_per_call=30.00,rejected_calls=0,failed_calls=1\r\n" +
	"cmdstat_info:calls=7,usec=700,usec_per_call=100.00,rejected_calls=0,failed_calls=0\r\n" +
	"cmdstat_client|setinfo:calls=4,usec=4,usec_per_call=1.00,rejected_calls=0,failed_calls=0\r\n" +
	"\r\n# CPU\r\nused_cpu_sys:1.5\r\nused_cpu_user:2.25\r\n"

func TestParseCommandStats(t *testing.T) {
	got, err := ParseCommandStats(commandstatsText)
	if err != nil {
		t.Fatal(err)
	}
	want := CommandStats{"get": 12, "evalsha": 3, "info": 7, "client|setinfo": 4}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("ParseCommandStats = %v, want %v", got, want)
	}
	for _, bad := range []string{"cmdstat_get:usec=3", "cmdstat_get:calls=x,usec=3"} {
		if _, err := ParseCommandStats(bad); err == nil {
			t.Errorf("ParseCommandStats(%q) succeeded, want an error", bad)
		}
	}
	if got, err := ParseCommandStats(""); err != nil || len(got) != 0 {
		t.Errorf("ParseCommandStats(\"\") = %v, %v; want empty, nil", got, err)
	}
}

func TestCommandStatsArithmetic(t *testing.T) {
	before := CommandStats{"get": 10, "info": 1, "set": 5}
	after := CommandStats{"get": 40, "info": 9, "set": 5, "evalsha": 20}
	d := after.Sub(before)
	if want := (CommandStats{"get": 30, "evalsha": 20}); fmt.Sprint(d) != fmt.Sprint(want) {
		t.Errorf("Sub = %v, want %v (info and unchanged commands left out)", d, want)
	}
	if got := d.Total(); got != 50 {
		t.Errorf("Total = %d, want 50", got)
	}
	if got, want := d.Top(1, 0.5), "get 15.00"; got != want {
		t.Errorf("Top(1, 0.5) = %q, want %q", got, want)
	}
	if got, want := (CommandStats{"b": 1, "a": 1}).Top(5, 1), "a 1.00, b 1.00"; got != want {
		t.Errorf("Top on a tie = %q, want %q", got, want)
	}
	sent := sentCommands(CommandStats{"evalsha": 4, "set": 0}, CommandStats{"get": 8, "ping": 2, "subscribe": 1})
	if want := (CommandStats{"evalsha": 4, "ping": 2, "subscribe": 1}); fmt.Sprint(sent) != fmt.Sprint(want) {
		t.Errorf("sentCommands = %v, want %v", sent, want)
	}
}

func TestFormatDuration(t *testing.T) {
	tests := map[time.Duration]string{
		-1: "never", 87: "87ns", 12345: "12.3µs", 1500: "1.50µs", 201 * time.Millisecond: "201ms",
		1250 * time.Millisecond: "1.25s", 0: "0ns",
	}
	for d, want := range tests {
		if got := FormatDuration(d); got != want {
			t.Errorf("FormatDuration(%d) = %q, want %q", d, got, want)
		}
	}
}

func sampleResults() []Result {
	return []Result{
		{Mode: ModeGoroutines, Strategy: StrategyOAuth2, N: 10, Lifetime: 3 * time.Second, Latency: ms(200),
			Duration: 10 * time.Second, Interval: ms(50), IssuerCalls: 50, ColdCalls: 10, Renewals: 4,
			CallsPerRenewal: 10, MaxCallsPerRenewal: 10, CallsPerLifetime: 12,
			Steady: Latency{Count: 100, P50: 3000, P99: ms(201), Max: ms(203)}, Renewal: Latency{Count: 40, P99: ms(201), Max: ms(203)},
			ColdAllReady: ms(240), Calls: 2000},
		{Mode: ModeGoroutines, Strategy: StrategyTokencache, N: 10, Lifetime: 3 * time.Second, Latency: ms(200),
			Duration: 10 * time.Second, Interval: ms(50), IssuerCalls: 8, ColdCalls: 1, Renewals: 7,
			CallsPerRenewal: 1, MaxCallsPerRenewal: 1, CallsPerLifetime: 2.1,
			Steady: Latency{Count: 100, P50: 1200, P99: 15000, Max: 90000}, Renewal: Latency{Count: 40, P99: 14000, Max: 15000},
			CmdsPerLifetime: 2.5, ExecutedPerLifetime: 6, TopCommands: "evalsha 2.00, set 0.50", Commands: CommandStats{"evalsha": 67},
			ColdAllReady: ms(230), Calls: 2000, ClientCPU: 3.5, RedisCPU: 1},
	}
}

func TestWriteCSV(t *testing.T) {
	var b bytes.Buffer
	if err := WriteCSV(&b, sampleResults()); err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(&b).ReadAll()
	if err != nil {
		t.Fatalf("output is not CSV: %v", err)
	}
	if len(rows) != 3 {
		t.Fatalf("got %d rows, want a header and 2", len(rows))
	}
	col := map[string]int{}
	for i, h := range rows[0] {
		col[h] = i
	}
	checks := []struct{ row, col, want string }{
		{"1", "strategy", "oauth2"},
		{"1", "steady_p99_us", "201000.0"},
		{"1", "lifetime_ms", "3000"},
		{"2", "top_commands", "evalsha 2.00, set 0.50"},
		{"2", "calls_per_renewal", "1.000"},
		{"2", "executed_per_replica_per_lifetime", "6.000"},
	}
	for _, c := range checks {
		r := map[string]int{"1": 1, "2": 2}[c.row]
		i, ok := col[c.col]
		if !ok {
			t.Errorf("no column %q", c.col)
			continue
		}
		if got := rows[r][i]; got != c.want {
			t.Errorf("row %s %s = %q, want %q", c.row, c.col, got, c.want)
		}
	}
	for i, r := range rows {
		if len(r) != len(csvHeader) {
			t.Errorf("row %d has %d fields, want %d", i, len(r), len(csvHeader))
		}
	}
}

func TestWriteJSON(t *testing.T) {
	rep := Report{Started: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC), Machine: Machine{CPU: "x", Cores: 2},
		Command: "go run ./cmd/tokencache-bench", Results: sampleResults()}
	var b bytes.Buffer
	if err := WriteJSON(&b, rep); err != nil {
		t.Fatal(err)
	}
	var got Report
	if err := json.Unmarshal(b.Bytes(), &got); err != nil {
		t.Fatalf("output is not JSON: %v", err)
	}
	if fmt.Sprint(got.Results) != fmt.Sprint(rep.Results) || got.Machine != rep.Machine || !got.Started.Equal(rep.Started) {
		t.Errorf("round trip changed the report:\n got %+v\nwant %+v", got, rep)
	}
	var raw map[string]any
	_ = json.Unmarshal(b.Bytes(), &raw)
	first := raw["results"].([]any)[0].(map[string]any)
	if first["steady"].(map[string]any)["p99_ns"] != float64(ms(201)) {
		t.Errorf("steady.p99_ns = %v, want %d", first["steady"], ms(201))
	}
}

func TestWriteTableAndChart(t *testing.T) {
	var tb, md, svg bytes.Buffer
	if err := WriteTable(&tb, sampleResults()); err != nil {
		t.Fatal(err)
	}
	if lines := strings.Split(strings.TrimSpace(tb.String()), "\n"); len(lines) != 3 || !strings.Contains(lines[2], "tokencache") {
		t.Errorf("table:\n%s", tb.String())
	}
	if err := WriteMarkdown(&md, sampleResults()); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(md.String(), "| mode | N |") || strings.Count(md.String(), "\n") != 4 {
		t.Errorf("markdown:\n%s", md.String())
	}
	if err := WriteSVG(&svg, sampleResults(), "a <test> & more"); err != nil {
		t.Fatal(err)
	}
	s := svg.String()
	for _, want := range []string{"<svg", "</svg>", "N = 10", "a &lt;test&gt; &amp; more", "oauth2", "tokencache"} {
		if !strings.Contains(s, want) {
			t.Errorf("SVG lacks %q", want)
		}
	}
}

func TestParseFlags(t *testing.T) {
	c, err := ParseFlags(nil, io.Discard)
	if err != nil {
		t.Fatalf("defaults: %v", err)
	}
	if fmt.Sprint(c.Ns) != "[10 100 1000]" || fmt.Sprint(c.Procs) != "[20]" || len(c.Strategies) != 5 || c.Chart != filepath.Join("bench-out", "bench.svg") {
		t.Errorf("defaults = %+v", c)
	}
	c, err = ParseFlags([]string{"-n", "3, 5", "-procs", "", "-strategies", "tokencache,oauth2,tokencache", "-out", "x"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(c.Ns) != "[3 5]" || len(c.Procs) != 0 || fmt.Sprint(c.Strategies) != "[tokencache oauth2]" || c.Chart != filepath.Join("x", "bench.svg") {
		t.Errorf("parsed = %+v", c)
	}
	bad := [][]string{
		{"-n", "ten"}, {"-n", "-1"}, {"-procs", "500"}, {"-strategies", "memcached"}, {"-strategies", ","},
		{"-lifetime", "1s"}, {"-lifetime", "2s", "-latency", "900ms"}, {"-duration", "0s"}, {"-interval", "-1ms"},
		{"-pool", "0"}, {"-idle", "-1s"}, {"-bogus"}, {"extra"}, {"-out", ""},
	}
	for _, args := range bad {
		_, err := ParseFlags(args, io.Discard)
		var ue *UsageError
		if !errors.As(err, &ue) || ExitCode(err) != 2 || strings.Contains(err.Error(), "\n") {
			t.Errorf("ParseFlags(%q) = %v, want a one-line usage error (exit 2)", args, err)
		}
	}
	var help bytes.Buffer
	if _, err := ParseFlags([]string{"-h"}, &help); !errors.Is(err, flag.ErrHelp) || !strings.Contains(help.String(), "-strategies") {
		t.Errorf("-h = %v, usage %q", err, help.String())
	}
	if ExitCode(nil) != 0 || ExitCode(errors.New("boom")) != 1 {
		t.Error("ExitCode: want 0 for nil, 1 for a failure")
	}
}

// requireRedis mirrors internal/redistest.Binary: skip without
// redis-server, unless TOKENCACHE_REQUIRE_REDIS=1.
func requireRedis(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err == nil {
		return
	}
	if os.Getenv("TOKENCACHE_REQUIRE_REDIS") == "1" {
		t.Fatal("redis-server not found on PATH (TOKENCACHE_REQUIRE_REDIS=1 forbids skipping)")
	}
	t.Skip("redis-server not found on PATH; install it to run the smoke test")
}

// TestSmoke runs every strategy at N=3 goroutine replicas and N=2
// processes with short durations, through Main, and checks what the
// benchmark exists to show.
func TestSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	requireRedis(t)
	out := t.TempDir()
	args := []string{"-n", "3", "-procs", "2", "-lifetime", "2s", "-latency", "100ms", "-warmup", "300ms",
		"-duration", "700ms", "-interval", "20ms", "-idle", "500ms", "-idle-n", "2", "-out", out}
	var stdout, stderr bytes.Buffer
	if err := Main(context.Background(), args, nil, &stdout, &stderr); err != nil {
		t.Fatalf("Main: %v\nstderr:\n%s", err, stderr.String())
	}
	for _, f := range []string{"results.csv", "results.json", "results.md", "bench.svg"} {
		if st, err := os.Stat(filepath.Join(out, f)); err != nil || st.Size() == 0 {
			t.Errorf("%s: %v", f, err)
		}
	}
	b, err := os.ReadFile(filepath.Join(out, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rep Report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	if got, want := len(rep.Results), 2*len(strategies); got != want {
		t.Fatalf("got %d results, want %d", got, want)
	}
	if len(rep.Idle) != 2 {
		t.Errorf("got %d idle results, want 2", len(rep.Idle))
	}
	for _, r := range rep.Results {
		name := fmt.Sprintf("%s N=%d %s", r.Mode, r.N, r.Strategy)
		if r.Errors != 0 || r.Stale != 0 || r.Calls == 0 {
			t.Errorf("%s: %d errors, %d stale, %d calls", name, r.Errors, r.Stale, r.Calls)
		}
		if r.ColdCalls < 1 || r.ColdAllReady <= 0 {
			t.Errorf("%s: cold calls %d, all ready after %v", name, r.ColdCalls, r.ColdAllReady)
		}
		switch r.Strategy {
		case StrategyOAuth2:
			if r.ColdCalls != r.N || r.CmdsPerLifetime != 0 {
				t.Errorf("%s: %d cold calls, %.2f commands; want one per replica, no Redis", name, r.ColdCalls, r.CmdsPerLifetime)
			}
		case StrategyRedsync, StrategyTokencache, StrategyTokencacheMin:
			if r.ColdCalls != 1 {
				t.Errorf("%s: %d cold issuer calls, want 1 for the fleet", name, r.ColdCalls)
			}
		}
		if r.Strategy == StrategyGoCache && r.Commands["get"] == 0 {
			t.Errorf("%s: no GET counted; gocache reads Redis on every call", name)
		}
	}
	if !strings.Contains(stdout.String(), "tokencache-min") {
		t.Errorf("stdout lacks the table:\n%s", stdout.String())
	}
}

func TestMainFrom(t *testing.T) {
	dir := t.TempDir()
	from := filepath.Join(dir, "in.json")
	var b bytes.Buffer
	if err := WriteJSON(&b, Report{Command: "x", Results: sampleResults(), Idle: sampleResults()[1:]}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(from, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	var stdout bytes.Buffer
	out := filepath.Join(dir, "out")
	if err := Main(context.Background(), []string{"-from", from, "-out", out}, nil, &stdout, io.Discard); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stdout.String(), "Idle: 10 replicas") || !strings.Contains(stdout.String(), "oauth2") {
		t.Errorf("stdout:\n%s", stdout.String())
	}
	if _, err := os.Stat(filepath.Join(out, "bench.svg")); err != nil {
		t.Error(err)
	}
	if err := Main(context.Background(), []string{"-from", filepath.Join(dir, "missing.json")}, nil, io.Discard, io.Discard); err == nil {
		t.Error("-from a missing file succeeded")
	}
}
