package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Modes of a cell: replicas as goroutines in this process, or as
// separate OS processes.
const (
	ModeGoroutines = "goroutines"
	ModeProcesses  = "processes"
)

// cell is one measurement: a strategy at N replicas.
type cell struct {
	Mode     string
	Strategy string
	N        int
	Lifetime time.Duration
	Latency  time.Duration
	Warmup   time.Duration
	Duration time.Duration
	Interval time.Duration
	PoolSize int
}

// Result is what one cell measured. Durations are in nanoseconds in JSON.
type Result struct {
	Mode     string        `json:"mode"`
	Strategy string        `json:"strategy"`
	N        int           `json:"n"`
	Lifetime time.Duration `json:"lifetime_ns"`
	Latency  time.Duration `json:"issuer_latency_ns"`
	Duration time.Duration `json:"steady_duration_ns"`
	Interval time.Duration `json:"caller_interval_ns"`

	// Issuer calls.
	IssuerCalls        int     `json:"issuer_calls"`          // whole cell, cold start included
	ColdCalls          int     `json:"cold_calls"`            // in the cold-start round
	Renewals           int     `json:"renewals"`              // renewal rounds after cold start
	CallsPerRenewal    float64 `json:"calls_per_renewal"`     // mean issuer calls per renewal round
	MaxCallsPerRenewal int     `json:"max_calls_per_renewal"` // worst renewal round
	CallsPerLifetime   float64 `json:"calls_per_lifetime"`    // steady issuer calls per token lifetime

	// Time to token, as callers saw it.
	ColdAllReady time.Duration `json:"cold_all_ready_ns"` // until every replica had its first token
	Cold         Latency       `json:"cold"`              // calls started during warm-up
	Steady       Latency       `json:"steady"`            // calls started after warm-up
	Renewal      Latency       `json:"renewal"`           // steady calls in flight during a renewal round

	// Redis commands the replicas sent (go-redis hooks, plus the pub/sub
	// connections' commands from INFO commandstats), and the commands Redis
	// executed (INFO commandstats, which also counts those a Lua script
	// runs; INFO itself left out).
	ColdCmdsPerReplica  float64      `json:"cold_cmds_per_replica"`         // sent during warm-up
	CmdsPerLifetime     float64      `json:"cmds_per_replica_per_lifetime"` // sent, steady
	TopCommands         string       `json:"top_commands"`                  // sent, steady, per replica per lifetime
	Commands            CommandStats `json:"commands"`                      // sent, steady totals
	ExecutedPerLifetime float64      `json:"executed_per_replica_per_lifetime"`
	Executed            CommandStats `json:"executed"` // executed, steady totals

	// CPU, steady phase, as a share of one core.
	ClientCPU float64 `json:"client_cpu_pct"` // this process (goroutines) or the children (processes)
	RedisCPU  float64 `json:"redis_cpu_pct"`

	// Hold: from a refresh's write to each replica holding the new token
	// (tokencache strategies, goroutines mode).
	Hold *HoldStats `json:"hold,omitempty"`

	Calls  int `json:"calls"`  // Token calls answered
	Errors int `json:"errors"` // Token calls that failed
	Stale  int `json:"stale"`  // tokens returned already past the issuer's expiry
}

// replicaRun is what one replica's caller saw.
type replicaRun struct {
	Samples    []Sample      `json:"samples"`
	Errors     int           `json:"errors"`
	Stale      int           `json:"stale"`
	FirstToken time.Duration `json:"first_token"` // -1: never

	// Processes mode only: this process's CPU time and the commands it
	// sent, at warm-up's end and at the end.
	CPU  [2]time.Duration `json:"cpu,omitempty"`
	Cmds [2]CommandStats  `json:"cmds,omitempty"`
}

// callLoop asks r for the token every interval (after a random first
// delay within one interval) from t0 until stopAt, and records each call.
func callLoop(ctx context.Context, r replica, t0, stopAt time.Time, interval time.Duration) replicaRun {
	run := replicaRun{FirstToken: -1, Samples: make([]Sample, 0, int(stopAt.Sub(t0)/interval)+16)}
	ctx, cancel := context.WithDeadline(ctx, stopAt)
	defer cancel()
	t := time.NewTimer(time.Until(t0) + rand.N(interval))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return run
		case <-t.C:
		}
		start := time.Now()
		tok, exp, err := r.Token(ctx)
		end := time.Now()
		if ctx.Err() != nil {
			return run // the run ended during the call: not a measurement
		}
		run.Samples = append(run.Samples, Sample{Start: start.Sub(t0), Took: end.Sub(start)})
		switch {
		case err != nil || tok == "":
			run.Errors++
		case !end.Before(exp):
			run.Stale++
		}
		if err == nil && run.FirstToken < 0 {
			run.FirstToken = end.Sub(t0)
		}
		t.Reset(interval)
	}
}

// env carries what every cell of a run shares.
type env struct {
	redisAddr string
	admin     *redis.Client // INFO only
	issuer    *Issuer
	exe       string // this binary, for the processes mode
	runID     string
}

// runCell runs one cell with goroutine replicas.
func (e *env) runCell(ctx context.Context, c cell, seq int) (Result, error) {
	e.issuer.Reset()
	renv := e.replicaEnv(c, seq)
	renv.counter = &cmdCounter{}
	renv.holds = newHoldRecorder()
	reps := make([]replica, 0, c.N)
	defer func() {
		var wg sync.WaitGroup
		for _, r := range reps {
			wg.Go(func() { _ = r.Close() })
		}
		wg.Wait()
	}()
	for i := range c.N {
		renv.Owner, renv.index = "bench-"+strconv.Itoa(i), i
		r, err := newReplica(c.Strategy, renv)
		if err != nil {
			return Result{}, err
		}
		reps = append(reps, r)
	}
	settle(ctx, c.N)

	t0 := time.Now().Add(50 * time.Millisecond)
	stopAt := t0.Add(c.Warmup + c.Duration)
	runs := make([]replicaRun, c.N)
	var wg sync.WaitGroup
	for i, r := range reps {
		wg.Go(func() { runs[i] = callLoop(ctx, r, t0, stopAt, c.Interval) })
	}
	m, err := e.measure(ctx, t0, c, func() (time.Duration, CommandStats) { return processCPU(), renv.counter.snapshot() })
	wg.Wait()
	if err != nil {
		return Result{}, err
	}
	res := e.result(c, t0, m, runs)
	if c.Strategy == StrategyTokencache || c.Strategy == StrategyTokencacheMin {
		h := renv.holds.stats(t0.Add(c.Warmup), stopAt, c.N)
		res.Hold = &h
	}
	return res, nil
}

// settle gives N fresh replicas time to connect and subscribe before the
// clock starts.
func settle(ctx context.Context, n int) {
	d := 200*time.Millisecond + time.Duration(n)*time.Millisecond
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

func (e *env) replicaEnv(c cell, seq int) replicaEnv {
	return replicaEnv{
		RedisAddr: e.redisAddr,
		IssuerURL: e.issuer.URL,
		APIKey:    e.issuer.APIKey,
		Namespace: fmt.Sprintf("bench-%s-%d-%s-%d", e.runID, seq, c.Strategy, c.N),
		PoolSize:  c.PoolSize,
		Skew:      skewFor(c.Lifetime),
	}
}

// skewFor is the expiry skew tokencache applies to a lifetime (its
// default 30s, capped at a fifth of the lifetime); every strategy stops
// serving a token at the same point.
func skewFor(life time.Duration) time.Duration { return min(30*time.Second, life/5) }

// measurement holds the snapshots taken at the start (0), at warm-up's
// end (1) and at the end (2) of a cell.
type measurement struct {
	redis [3]redisSnapshot
	cpu   [3]time.Duration // client CPU
	sent  [3]CommandStats  // commands the replicas sent (hooks)
}

// measure snapshots Redis and the replicas (local) at t0, at the end of
// warm-up and at the end of the cell.
func (e *env) measure(ctx context.Context, t0 time.Time, c cell, local func() (time.Duration, CommandStats)) (measurement, error) {
	var m measurement
	at := []time.Time{{}, t0.Add(c.Warmup), t0.Add(c.Warmup + c.Duration)}
	for i := range at {
		if i > 0 {
			if err := sleepUntil(ctx, at[i]); err != nil {
				return m, err
			}
		}
		m.cpu[i], m.sent[i] = local()
		var err error
		if m.redis[i], err = snapshotRedis(ctx, e.admin); err != nil {
			return m, err
		}
	}
	return m, nil
}

func sleepUntil(ctx context.Context, t time.Time) error {
	tm := time.NewTimer(time.Until(t))
	defer tm.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-tm.C:
		return nil
	}
}

// result turns a cell's raw measurements into its Result.
func (e *env) result(c cell, t0 time.Time, m measurement, runs []replicaRun) Result {
	res := Result{Mode: c.Mode, Strategy: c.Strategy, N: c.N, Lifetime: c.Lifetime, Latency: c.Latency,
		Duration: c.Duration, Interval: c.Interval}
	end := c.Warmup + c.Duration
	lifetimes := float64(c.Duration) / float64(c.Lifetime)

	calls := e.issuer.Calls(t0)
	res.IssuerCalls = len(calls)
	rounds, counts := Rounds(calls, c.Lifetime/4)
	var renewals []Window
	steadyCalls := 0
	for i, w := range rounds {
		if i == 0 && w.From < c.Warmup {
			res.ColdCalls = counts[i]
			continue
		}
		if w.From >= end {
			continue
		}
		renewals = append(renewals, Window{From: w.From, To: w.To + c.Latency})
		steadyCalls += counts[i]
		res.MaxCallsPerRenewal = max(res.MaxCallsPerRenewal, counts[i])
	}
	res.Renewals = len(renewals)
	if res.Renewals > 0 {
		res.CallsPerRenewal = float64(steadyCalls) / float64(res.Renewals)
	}
	res.CallsPerLifetime = float64(steadyCalls) / lifetimes

	var coldT, steady, renewal []time.Duration
	for _, r := range runs {
		res.Errors += r.Errors
		res.Stale += r.Stale
		res.Calls += len(r.Samples) - r.Errors
		if r.FirstToken < 0 {
			res.ColdAllReady = -1
		} else if res.ColdAllReady >= 0 {
			res.ColdAllReady = max(res.ColdAllReady, r.FirstToken)
		}
		for _, s := range r.Samples {
			switch {
			case s.Start < c.Warmup:
				coldT = append(coldT, s.Took)
			default:
				steady = append(steady, s.Took)
				if Overlaps(s, renewals, 10*time.Millisecond) {
					renewal = append(renewal, s.Took)
				}
			}
		}
	}
	res.Cold, res.Steady, res.Renewal = Summarize(coldT), Summarize(steady), Summarize(renewal)

	n := float64(c.N)
	cold := sentCommands(m.sent[1].Sub(m.sent[0]), m.redis[1].cmds.Sub(m.redis[0].cmds))
	res.ColdCmdsPerReplica = float64(cold.Total()) / n
	res.Executed = m.redis[2].cmds.Sub(m.redis[1].cmds)
	res.Commands = sentCommands(m.sent[2].Sub(m.sent[1]), res.Executed)
	scale := 1 / n / lifetimes
	res.CmdsPerLifetime = float64(res.Commands.Total()) * scale
	res.ExecutedPerLifetime = float64(res.Executed.Total()) * scale
	res.TopCommands = res.Commands.Top(4, scale)
	res.ClientCPU = 100 * float64(m.cpu[2]-m.cpu[1]) / float64(c.Duration)
	res.RedisCPU = 100 * float64(m.redis[2].cpu-m.redis[1].cpu) / float64(c.Duration)
	return res
}
