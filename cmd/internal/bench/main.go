package bench

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// UsageError is a bad flag or argument: the program exits 2.
type UsageError struct{ Msg string }

func (e *UsageError) Error() string { return e.Msg }

// ExitCode maps Main's error to the process's exit status.
func ExitCode(err error) int {
	var ue *UsageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ue), errors.Is(err, flag.ErrHelp):
		return 2
	default:
		return 1
	}
}

// Config is the parsed command line.
type Config struct {
	Redis        string // address or redis:// URL; "" starts a redis-server
	Ns           []int  // replica counts, goroutine mode
	Procs        []int  // replica counts, processes mode
	Strategies   []string
	Lifetime     time.Duration
	Latency      time.Duration
	Warmup       time.Duration
	Duration     time.Duration
	Interval     time.Duration
	PoolSize     int
	Idle         time.Duration // 0: no idle cells
	IdleN        int
	IdleLifetime time.Duration
	Out          string
	Chart        string
	CPUProfile   string
	From         string // a results.json to report again instead of running
}

// ParseFlags parses args (without the program name).
func ParseFlags(args []string, stderr io.Writer) (Config, error) {
	var c Config
	fs := flag.NewFlagSet("tokencache-bench", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors come back as one line; -h prints the usage below
	fs.StringVar(&c.Redis, "redis", "", "Redis `address` (host:port or redis:// URL); default: start redis-server on a free port (keys are namespaced per cell, nothing is flushed)")
	ns := fs.String("n", "10,100,1000", "replica counts for goroutine replicas, comma separated")
	procs := fs.String("procs", "20", "replica counts for OS-process replicas (each replica its own process, at most 200); empty or 0 for none")
	strat := fs.String("strategies", strings.Join(strategies, ","), "strategies to run, comma separated")
	fs.DurationVar(&c.Lifetime, "lifetime", 3*time.Second, "token lifetime the fake issuer grants (at least 2s)")
	fs.DurationVar(&c.Latency, "latency", 200*time.Millisecond, "fake issuer latency")
	fs.DurationVar(&c.Warmup, "warmup", time.Second, "cold-start phase before the steady measurement")
	fs.DurationVar(&c.Duration, "duration", 10*time.Second, "steady measurement per cell")
	fs.DurationVar(&c.Interval, "interval", 50*time.Millisecond, "pause between one replica's Token calls")
	fs.IntVar(&c.PoolSize, "pool", 2, "go-redis PoolSize of each replica's client")
	fs.DurationVar(&c.Idle, "idle", 35*time.Second, "length of the idle cells (tokencache strategies, long-lived token); 0 for none")
	fs.IntVar(&c.IdleN, "idle-n", 100, "replicas in the idle cells")
	fs.DurationVar(&c.IdleLifetime, "idle-lifetime", time.Hour, "token lifetime in the idle cells")
	fs.StringVar(&c.Out, "out", "bench-out", "`directory` for results.csv, results.json, results.md and the chart")
	fs.StringVar(&c.Chart, "chart", "", "chart `file` (SVG); default <out>/bench.svg")
	fs.StringVar(&c.From, "from", "", "do not run: read a results.json `file` of an earlier run and write the table, files and chart again")
	fs.StringVar(&c.CPUProfile, "cpuprofile", "", "write a CPU profile of this process (goroutine replicas, issuer, harness) to `file`")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stderr)
			fmt.Fprintln(stderr, "usage: tokencache-bench [flags]")
			fs.PrintDefaults()
			return c, err
		}
		return c, &UsageError{Msg: err.Error()}
	}
	if fs.NArg() > 0 {
		return c, &UsageError{Msg: fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	}
	var err error
	if c.Ns, err = parseInts("n", *ns, 100000); err != nil {
		return c, err
	}
	if c.Procs, err = parseInts("procs", *procs, 200); err != nil {
		return c, err
	}
	for _, s := range splitList(*strat) {
		if !slices.Contains(strategies, s) {
			return c, &UsageError{Msg: fmt.Sprintf("-strategies: unknown strategy %q (want some of %s)", s, strings.Join(strategies, ","))}
		}
		if !slices.Contains(c.Strategies, s) {
			c.Strategies = append(c.Strategies, s)
		}
	}
	if len(c.Strategies) == 0 {
		return c, &UsageError{Msg: "-strategies: no strategy given"}
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"latency", c.Latency}, {"warmup", c.Warmup}, {"duration", c.Duration}, {"interval", c.Interval}, {"idle-lifetime", c.IdleLifetime}} {
		if d.v <= 0 {
			return c, &UsageError{Msg: fmt.Sprintf("-%s must be positive, got %v", d.name, d.v)}
		}
	}
	// go-redis/cache turns a TTL under a second into an hour: the token,
	// minus skew and issuer latency, must outlive one second.
	if c.Lifetime < 2*time.Second || c.Lifetime-skewFor(c.Lifetime)-c.Latency < time.Second {
		return c, &UsageError{Msg: fmt.Sprintf("-lifetime %v is too short: it needs at least 2s and 1s more than the skew (a fifth) plus -latency %v", c.Lifetime, c.Latency)}
	}
	if c.Idle < 0 || c.IdleN < 1 {
		return c, &UsageError{Msg: "-idle must not be negative and -idle-n must be at least 1"}
	}
	if c.PoolSize < 1 {
		return c, &UsageError{Msg: fmt.Sprintf("-pool must be at least 1, got %d", c.PoolSize)}
	}
	if c.Out == "" {
		return c, &UsageError{Msg: "-out must name a directory"}
	}
	if c.Chart == "" {
		c.Chart = filepath.Join(c.Out, "bench.svg")
	}
	return c, nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// parseInts parses a comma list of replica counts in [1, limit]; "0"
// alone, or nothing, is the empty list.
func parseInts(flagName, s string, limit int) ([]int, error) {
	var out []int
	for _, f := range splitList(s) {
		n, err := strconv.Atoi(f)
		if err != nil || n < 0 || n > limit {
			return nil, &UsageError{Msg: fmt.Sprintf("-%s: %q is not a replica count in 1..%d", flagName, f, limit)}
		}
		if n > 0 {
			out = append(out, n)
		}
	}
	return out, nil
}

// Main runs the program: the benchmark, or, with ChildFlag first, one
// replica process of the processes mode, or, with BareFlag first, the
// bare reference servers of the overhead benchmark (RunBare).
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == ChildFlag {
		return runChild(ctx, stdin, stdout)
	}
	if len(args) > 0 && args[0] == BareFlag {
		return RunBare(ctx, stdin, stdout)
	}
	cfg, err := ParseFlags(args, stderr)
	if err != nil {
		return err
	}
	var rep Report
	if cfg.From != "" {
		b, err := os.ReadFile(cfg.From)
		if err != nil {
			return err
		}
		if err := json.Unmarshal(b, &rep); err != nil {
			return fmt.Errorf("bench: %s: %w", cfg.From, err)
		}
	} else {
		if rep, err = Run(ctx, cfg, stderr); err != nil {
			return err
		}
		rep.Command = "go run ./cmd/tokencache-bench " + strings.Join(args, " ")
	}
	if err := WriteTable(stdout, rep.Results); err != nil {
		return err
	}
	if len(rep.Idle) > 0 {
		i := rep.Idle[0]
		fmt.Fprintf(stdout, "\nIdle: %d replicas, %v token, %v steady; per lifetime = extrapolated from the rate\n", i.N, i.Lifetime, i.Duration)
		if err := WriteTable(stdout, rep.Idle); err != nil {
			return err
		}
	}
	return writeOutputs(cfg, rep, stdout)
}

// Run runs every cell cfg asks for and returns the report; progress goes
// to log.
func Run(ctx context.Context, cfg Config, log io.Writer) (Report, error) {
	rep := Report{Started: time.Now().UTC()}
	if cfg.CPUProfile != "" {
		f, err := os.Create(cfg.CPUProfile)
		if err != nil {
			return rep, err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			_ = f.Close()
			return rep, err
		}
		defer func() { pprof.StopCPUProfile(); _ = f.Close() }()
	}
	e := &env{runID: strconv.FormatInt(time.Now().UnixNano()%1e9, 36)}
	if cfg.Redis == "" {
		srv, err := StartRedis(ctx)
		if err != nil {
			return rep, err
		}
		defer srv.Stop()
		e.redisAddr = srv.Addr
	} else if strings.Contains(cfg.Redis, "://") {
		opt, err := redis.ParseURL(cfg.Redis)
		if err != nil {
			return rep, &UsageError{Msg: fmt.Sprintf("-redis: %v", err)}
		}
		e.redisAddr = opt.Addr
	} else {
		e.redisAddr = cfg.Redis
	}
	e.admin = redis.NewClient(&redis.Options{Addr: e.redisAddr})
	defer func() { _ = e.admin.Close() }()
	if err := e.admin.Ping(ctx).Err(); err != nil {
		return rep, fmt.Errorf("bench: redis at %s: %w", e.redisAddr, err)
	}
	rep.Machine = describeMachine(ctx, e.admin)
	exe, err := os.Executable()
	if err != nil {
		return rep, err
	}
	e.exe = exe

	run := func(lifetime time.Duration, cells []cell) ([]Result, error) {
		is, err := StartIssuer(cfg.Latency, lifetime)
		if err != nil {
			return nil, err
		}
		defer is.Close()
		e.issuer = is
		var out []Result
		for _, c := range cells {
			start := time.Now()
			runCell := e.runCell
			if c.Mode == ModeProcesses {
				runCell = e.runProcCell
			}
			r, err := runCell(ctx, c, len(rep.Results)+len(out))
			if err != nil {
				return out, fmt.Errorf("bench: %s N=%d %s: %w", c.Mode, c.N, c.Strategy, err)
			}
			fmt.Fprintf(log, "%-10s N=%-5d %-15s calls/renewal %.2f  renewal p99 %s  cmds/replica/lifetime %.2f  (%v)\n",
				c.Mode, c.N, c.Strategy, r.CallsPerRenewal, FormatDuration(r.Renewal.P99), r.CmdsPerLifetime, time.Since(start).Round(time.Second))
			out = append(out, r)
		}
		return out, nil
	}
	base := cell{Lifetime: cfg.Lifetime, Latency: cfg.Latency, Warmup: cfg.Warmup, Duration: cfg.Duration, Interval: cfg.Interval, PoolSize: cfg.PoolSize}
	var cells []cell
	for _, mode := range []struct {
		name string
		ns   []int
	}{{ModeGoroutines, cfg.Ns}, {ModeProcesses, cfg.Procs}} {
		for _, n := range mode.ns {
			for _, s := range cfg.Strategies {
				c := base
				c.Mode, c.N, c.Strategy = mode.name, n, s
				cells = append(cells, c)
			}
		}
	}
	if rep.Results, err = run(cfg.Lifetime, cells); err != nil {
		return rep, err
	}
	if cfg.Idle > 0 {
		cells = cells[:0]
		for _, s := range cfg.Strategies {
			if s == StrategyTokencache || s == StrategyTokencacheMin {
				c := base
				c.Mode, c.N, c.Strategy, c.Lifetime, c.Duration = ModeGoroutines, cfg.IdleN, s, cfg.IdleLifetime, cfg.Idle
				cells = append(cells, c)
			}
		}
		if rep.Idle, err = run(cfg.IdleLifetime, cells); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

// writeOutputs writes results.csv, results.json, results.md and the chart.
func writeOutputs(cfg Config, rep Report, stdout io.Writer) error {
	if err := os.MkdirAll(cfg.Out, 0o755); err != nil {
		return err
	}
	all := append(append([]Result(nil), rep.Results...), rep.Idle...)
	files := []struct {
		path  string
		write func(io.Writer) error
	}{
		{filepath.Join(cfg.Out, "results.csv"), func(w io.Writer) error { return WriteCSV(w, all) }},
		{filepath.Join(cfg.Out, "results.json"), func(w io.Writer) error { return WriteJSON(w, rep) }},
		{filepath.Join(cfg.Out, "results.md"), func(w io.Writer) error {
			if err := WriteMarkdown(w, rep.Results); err != nil {
				return err
			}
			if len(rep.Idle) == 0 {
				return nil
			}
			fmt.Fprintln(w)
			return WriteMarkdown(w, rep.Idle)
		}},
		{cfg.Chart, func(w io.Writer) error {
			sub := fmt.Sprintf("%s, %d cores", rep.Machine.CPU, rep.Machine.Cores)
			if len(rep.Results) > 0 {
				r := rep.Results[0]
				sub = fmt.Sprintf("%v tokens, issuer latency %v, callers every %v; %s", r.Lifetime, r.Latency, r.Interval, sub)
			}
			return WriteSVG(w, rep.Results, sub)
		}},
	}
	for _, f := range files {
		if err := writeFile(f.path, f.write); err != nil {
			return err
		}
		fmt.Fprintln(stdout, "wrote", f.path)
	}
	return nil
}

func writeFile(path string, write func(io.Writer) error) error {
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := write(f); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}
