package tokencache

// A model-based test of the whole protocol (issue 12, item 10): several
// replicas, each with its own redis.Client and Cache, share one real
// redis-server, and rapid drives them through random steps — calls,
// bursts of concurrent calls, invalidations, an issuer that reuses its
// token, fails or stalls, replicas whose clocks are off, a lock holder
// paused past its lease, dropped subscriptions, a stretched or deleted key,
// a Redis restart — checking after every step that
//
//  1. no Token() result is expired by the issuer's own (true) expiry when
//     the call returns, nor (within the clocks' spread) by the replica's
//     clock;
//  2. the fleet's issuer calls stay within one per renewal plus one per
//     injected fault (see model.budget);
//  3. no caller gets an error while a valid token is in Redis and Redis
//     answers;
//  4. every caller is served within the lock TTL plus the issuer's time
//     (the call's context is bounded by that; a timeout is a failure).
//
// Run (the default is 6 checks of about 30 random steps, each followed by
// 1.2 token lifetimes of steady traffic, about 40 steps more: 30-40 s on
// two loaded cores with -race; a failure adds up to 10 s of shrinking):
//
//	go test -race -count=1 -run 'TestModel' ./tokencache/
//
// (-count=1: go test caches a passing run, and each run draws new steps.)
//
// Before a release, run it longer:
//
//	TOKENCACHE_MODEL_CHECKS=200 go test -race -count=1 -run 'TestModel$' -timeout 60m ./tokencache/
//	go test -race -count=1 -run 'TestModel$' -timeout 60m ./tokencache/ -rapid.checks=200 -rapid.steps=60
//
// A failure prints "-rapid.seed=N" and the issuer's log; run the same
// command with it (and the same TOKENCACHE_MODEL_* variables) to draw the
// same steps again. Time is real (Redis's clock is), so a seed replays the
// steps, not the exact interleaving: a failure may need a few runs to come
// back. No fail file is written unless -rapid.nofailfile=false is given. A
// failure worth keeping becomes a named case in TestModelRegressions, a
// scripted sequence of the same steps.
//
// To look past a known failure, narrow the faults or fix the clocks:
//
//	TOKENCACHE_MODEL_FAULTS=fail,slow,pause,pauseInFetch,dropSubs,stretch,del,restart \
//	TOKENCACHE_MODEL_CLOCKS=synced go test -race -count=1 -run 'TestModel$' ./tokencache/
//
// Without redis-server on PATH the tests skip, unless
// TOKENCACHE_REQUIRE_REDIS=1.

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"pgregory.net/rapid"

	"github.com/tokencache/tokencache/internal/redistest"
)

// modelFaultKinds are the faults TestModel injects; TOKENCACHE_MODEL_FAULTS
// (a comma list of them) narrows it, to look past one known failure:
// TOKENCACHE_MODEL_FAULTS=fail,slow,pause,dropSubs,stretch,del,restart
// leaves out the reusing issuer and invalidations. "reuse" also lets the
// issuer start out reusing. TOKENCACHE_MODEL_CLOCKS=synced or skewed fixes
// the clocks instead of drawing them.
var modelFaultKinds = []string{"invalidate", "reuse", "fail", "slow", "pause", "pauseInFetch", "dropSubs", "stretch", "del", "restart"}

func modelFaults(t *testing.T) []string {
	s := os.Getenv("TOKENCACHE_MODEL_FAULTS")
	if s == "" {
		return modelFaultKinds
	}
	var out []string
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		ok := false
		for _, k := range modelFaultKinds {
			ok = ok || k == f
		}
		if !ok {
			t.Fatalf("TOKENCACHE_MODEL_FAULTS: unknown fault %q (known: %s)", f, strings.Join(modelFaultKinds, ","))
		}
		out = append(out, f)
	}
	return out
}

// modelChecksEnv sets the number of rapid checks of TestModel (default
// modelDefaultChecks) unless -rapid.checks or RAPID_CHECKS is given.
const (
	modelChecksEnv     = "TOKENCACHE_MODEL_CHECKS"
	modelDefaultChecks = 6
)

// Model parameters. The refresh-ahead share and the skew are the ones the
// budget and the checks below are written against.
const (
	modelRefreshAhead = 0.5
	modelRecheck      = 100 * time.Millisecond
	// modelMargin is what a served caller may take beyond the lock TTL and
	// the issuer's time: a jittered re-check (125 ms at most), a few Redis
	// round trips, and scheduling on a loaded two-core CI machine under
	// -race.
	modelMargin = 1500 * time.Millisecond
	// modelReuseShare: the reusing issuer hands back its last token while
	// more than this share of its life remains, that is before anyone's
	// refresh-ahead moment (0.5 of the life plus jitter): after an
	// invalidation, a deleted key, a restart — exactly where item 1 bites.
	// Handed back at a refresh-ahead moment, the same token would come
	// with half its life, be due again at a quarter, and so on: the budget
	// would allow it (each answer is due after its own life's share), but
	// it would cost calls and show nothing more.
	modelReuseShare = 0.6
)

// modelIssuer is the issuer the whole fleet shares, in true time. It
// counts calls, records each token's true expiry, and can reuse its last
// token, fail the next calls, or stall the next one.
type modelIssuer struct {
	life    time.Duration
	latency time.Duration // every answer takes this long

	mu       sync.Mutex // guards everything below
	calls    int
	first    time.Time // true time of the first call
	reuse    bool
	failNext int
	failures []time.Time // when injected failures were served
	slowNext time.Duration
	seq      int
	last     string
	minted   map[string]modelMint
	log      []string // one line per call, for failure messages
	answers  []modelAnswer
}

// modelAnswer is a token the issuer handed out: when, and with how much
// life (true time).
type modelAnswer struct {
	at   time.Time
	life time.Duration
}

// logf records a line of the issuer's log; is.mu is held.
func (is *modelIssuer) logf(r *modelReplica, format string, args ...any) {
	is.log = append(is.log, fmt.Sprintf("%8v replica %d: ", time.Since(is.first).Round(time.Millisecond), r.i)+fmt.Sprintf(format, args...))
}

func (is *modelIssuer) history() string {
	is.mu.Lock()
	defer is.mu.Unlock()
	return "\n\tissuer calls (true time since the first):\n\t" + strings.Join(is.log, "\n\t")
}

type modelMint struct {
	at, exp time.Time // true times
}

func (is *modelIssuer) fetch(ctx context.Context, r *modelReplica) (Token, error) {
	is.mu.Lock()
	is.calls++
	if is.first.IsZero() {
		is.first = time.Now()
	}
	if is.failNext > 0 {
		is.failNext--
		is.failures = append(is.failures, time.Now())
		is.logf(r, "failed (injected)")
		is.mu.Unlock()
		return Token{}, &issuerErr{code: "temporarily_unavailable", retryable: true}
	}
	slow := is.slowNext + is.latency
	is.slowNext = 0
	is.mu.Unlock()
	if slow > 0 {
		t := time.NewTimer(slow)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return Token{}, ctx.Err()
		}
	}
	// A paused replica's process is stopped: its answer waits too.
	if r.pauseFetch.CompareAndSwap(true, false) {
		r.startPause(true)
	}
	if err := r.waitResumed(ctx); err != nil {
		return Token{}, err
	}
	is.mu.Lock()
	defer is.mu.Unlock()
	now := time.Now()
	if is.reuse && is.last != "" {
		if m := is.minted[is.last]; m.exp.Sub(now) > time.Duration(modelReuseShare*float64(is.life)) {
			is.logf(r, "reused %s (%v left)", is.last, m.exp.Sub(now).Round(time.Millisecond))
			is.answers = append(is.answers, modelAnswer{at: now, life: m.exp.Sub(now)})
			// expires_in is what is left; the fetcher adds it to its clock.
			return Token{AccessToken: is.last, TokenType: "Bearer", Expiry: now.Add(r.off).Add(m.exp.Sub(now))}, nil
		}
	}
	is.seq++
	tok := "model-token-" + strconv.Itoa(is.seq)
	is.minted[tok] = modelMint{at: now, exp: now.Add(is.life)}
	is.last = tok
	is.logf(r, "minted %s", tok)
	is.answers = append(is.answers, modelAnswer{at: now, life: is.life})
	return Token{AccessToken: tok, TokenType: "Bearer", Expiry: now.Add(r.off).Add(is.life)}, nil
}

func (is *modelIssuer) mint(tok string) (modelMint, bool) {
	is.mu.Lock()
	defer is.mu.Unlock()
	m, ok := is.minted[tok]
	return m, ok
}

// modelFetcher is one replica's Fetcher: the shared issuer, with the
// expiry computed on the replica's clock as a real fetcher does from
// expires_in.
type modelFetcher struct {
	is *modelIssuer
	r  *modelReplica
}

func (f modelFetcher) Fetch(ctx context.Context) (Token, error) { return f.is.fetch(ctx, f.r) }
func (f modelFetcher) Identity() string                         { return "model-credential" }

// modelReplica is one process of the fleet.
type modelReplica struct {
	i   int
	off time.Duration // its clock's offset from true time
	rdb *redis.Client
	c   *Cache

	held atomic.Pointer[Token] // the last token a call returned

	pauseArmed atomic.Bool        // pause at the next lock taken
	pauseFetch atomic.Bool        // pause in the next issuer call
	pauseFor   time.Duration      // how long a pause lasts
	onPause    func(inFetch bool) // called when a pause starts
	pauseMu    sync.Mutex         // guards paused
	paused     []modelWindow      // true-time windows when the replica was paused
}

type modelWindow struct{ from, to time.Time }

// startPause stops the replica's Redis commands and issuer answers for
// pauseFor, as a GC pause, CPU throttling or SIGSTOP would: its
// watchdog cannot extend the lease, which expires.
func (r *modelReplica) startPause(inFetch bool) {
	now := time.Now()
	r.pauseMu.Lock()
	r.paused = append(r.paused, modelWindow{now, now.Add(r.pauseFor)})
	r.pauseMu.Unlock()
	if r.onPause != nil {
		r.onPause(inFetch)
	}
}

// pausedUntil is the end of the pause in force at now, or zero.
func (r *modelReplica) pausedUntil(now time.Time) time.Time {
	r.pauseMu.Lock()
	defer r.pauseMu.Unlock()
	for _, w := range r.paused {
		if !now.Before(w.from) && now.Before(w.to) {
			return w.to
		}
	}
	return time.Time{}
}

// pausedDuring reports whether a pause overlapped [from, to].
func (r *modelReplica) pausedDuring(from, to time.Time) bool {
	r.pauseMu.Lock()
	defer r.pauseMu.Unlock()
	for _, w := range r.paused {
		if w.from.Before(to) && from.Before(w.to) {
			return true
		}
	}
	return false
}

func (r *modelReplica) resume() {
	r.pauseArmed.Store(false)
	r.pauseFetch.Store(false)
	r.pauseMu.Lock()
	now := time.Now()
	for i := range r.paused {
		if r.paused[i].to.After(now) {
			r.paused[i].to = now
		}
	}
	r.pauseMu.Unlock()
}

// modelWatchdogLag is how long after a pause ends the paused replica's
// lock commands (its watchdog's) are held back.
const modelWatchdogLag = 300 * time.Millisecond

// holdLockCommands holds a lock command issued while the replica is
// paused until the pause has ended and modelWatchdogLag more has passed,
// whatever its context says; it reports whether it held one.
func (r *modelReplica) holdLockCommands() bool {
	held := false
	for {
		until := r.pausedUntil(time.Now())
		if until.IsZero() {
			return held
		}
		held = true
		time.Sleep(time.Until(until.Add(modelWatchdogLag)))
	}
}

func (r *modelReplica) waitResumed(ctx context.Context) error {
	for {
		until := r.pausedUntil(time.Now())
		if until.IsZero() {
			return nil
		}
		t := time.NewTimer(time.Until(until))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
}

// modelHook is the replica's client hook: it holds commands while the
// replica is paused, and starts an armed pause just after the replica
// takes the refresh lock (before it re-reads and draws its generation).
type modelHook struct {
	r       *modelReplica
	lockKey string
}

func (h modelHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h modelHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if h.mentionsLock(cmd) && h.r.holdLockCommands() {
			// The watchdog of a stopped process does not run: its beat
			// (an extension, or the GET that tells who holds the lock)
			// is answered only after the process wakes, and a little
			// after its other goroutines have gone on, as a timer that
			// fired late is scheduled. Its deadline is not looked at
			// while it is stopped.
			if err := ctx.Err(); err != nil {
				cmd.SetErr(err)
				return err
			}
		}
		if err := h.r.waitResumed(ctx); err != nil {
			cmd.SetErr(err)
			return err
		}
		err := next(ctx, cmd)
		if err == nil && h.r.pauseArmed.Load() && isLockTaken(cmd, h.lockKey) && h.r.pauseArmed.CompareAndSwap(true, false) {
			h.r.startPause(false)
		}
		return err
	}
}

func (h modelHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if err := h.r.waitResumed(ctx); err != nil {
			for _, c := range cmds {
				c.SetErr(err)
			}
			return err
		}
		return next(ctx, cmds)
	}
}

// mentionsLock reports whether cmd names the lock key: the lease's
// extension, release and owner check.
func (h modelHook) mentionsLock(cmd redis.Cmder) bool {
	for _, a := range cmd.Args() {
		if s, ok := a.(string); ok && s == h.lockKey {
			return true
		}
	}
	return false
}

// isLockTaken reports whether cmd is a successful SET NX of the lock key
// (how redsync takes it).
func isLockTaken(cmd redis.Cmder, lockKey string) bool {
	args := cmd.Args()
	if cmd.Name() != "set" || len(args) < 3 || fmt.Sprint(args[1]) != lockKey {
		return false
	}
	nx := false
	for _, a := range args[3:] {
		if s, ok := a.(string); ok && strings.EqualFold(s, "nx") {
			nx = true
		}
	}
	switch c := cmd.(type) {
	case *redis.BoolCmd:
		return nx && c.Val()
	case *redis.StatusCmd:
		return nx && c.Val() == "OK"
	}
	return false
}

// modelConfig is what one run of the model is set up with.
type modelConfig struct {
	replicas int
	life     time.Duration
	lockTTL  time.Duration
	// offsets of the replicas' clocks; nil: every replica uses the
	// system clock. Either way the cache's timers run as in production.
	offsets  []time.Duration
	latency  time.Duration // of every issuer answer
	pauseFor time.Duration // how long a paused replica stops; 0: 1.5 lock TTLs + 200 ms
}

// skew is the expiry skew the caches use: a tenth of the life (the
// default 30 s is capped at a fifth of the life anyway).
func (cfg modelConfig) skew() time.Duration { return cfg.life / 10 }

// spread is how far apart the replicas' clocks are.
func (cfg modelConfig) spread() time.Duration {
	if len(cfg.offsets) == 0 {
		return 0
	}
	lo, hi := cfg.offsets[0], cfg.offsets[0]
	for _, o := range cfg.offsets {
		lo, hi = min(lo, o), max(hi, o)
	}
	return hi - lo
}

// modelTB is what the model needs of its test: *rapid.T and *testing.T.
type modelTB interface {
	rapid.TB
	Cleanup(func())
}

// modelEnv is the Redis the runs of one test share.
type modelEnv struct {
	srv  *redistest.Server
	side *redis.Client // the operator's redis-cli
	runs atomic.Int64
}

func newModelEnv(t *testing.T) *modelEnv {
	t.Helper()
	srv := redistest.Start(t, "--appendonly", "yes", "--appendfsync", "always")
	return &modelEnv{srv: srv, side: srv.Client(t)}
}

// model is one run: a fleet on its own namespace.
type model struct {
	t    modelTB
	env  *modelEnv
	cfg  modelConfig
	iss  *modelIssuer
	reps []*modelReplica
	keys struct{ token, lock string }

	faults int // budget for injected faults (see budget)
	// apiCalls is the budget for the API's doings in TestModelHTTP: one
	// call per live token revoked, a few per rejection window of a
	// period in which the API rejects every token (see modelAPI).
	apiCalls int
	// pausesInFetch counts the pauses that started in an issuer call: the
	// holder's lease runs out while its call is under way, and the next
	// holder's call is one more. A pause just after taking the lock, before
	// drawing a generation, costs nothing: the holder must find, when it
	// wakes, that its lease is gone (or that a newer token is stored).
	pausesInFetch atomic.Int64
	pausesAtLock  atomic.Int64
	results       []modelCall // calls of the current step, checked after it
	start         time.Time   // true time the run began
	trailMu       sync.Mutex  // guards trail
	trail         []string    // what the steps did, for failure messages
	faultKinds    []string    // the faults a run draws from
	slowMax       time.Duration
}

type modelCall struct {
	r          *modelReplica
	start, end time.Time // true times
	tok        Token
	err        error
	bound      time.Duration
}

func newModel(t modelTB, env *modelEnv, cfg modelConfig) *model {
	ns := fmt.Sprintf("model-%d-%d", os.Getpid(), env.runs.Add(1))
	m := &model{t: t, env: env, cfg: cfg, iss: &modelIssuer{life: cfg.life, minted: map[string]modelMint{}}, start: time.Now()}
	m.slowMax = cfg.lockTTL * 3 / 2
	m.iss.latency = cfg.latency
	if cfg.pauseFor == 0 {
		cfg.pauseFor = cfg.lockTTL*3/2 + 200*time.Millisecond
		m.cfg.pauseFor = cfg.pauseFor
	}
	for i := 0; i < cfg.replicas; i++ {
		r := &modelReplica{i: i, pauseFor: cfg.pauseFor}
		r.onPause = func(inFetch bool) {
			m.note("replica %d pauses for %v (in its issuer call: %v)", r.i, r.pauseFor, inFetch)
			if inFetch {
				m.pausesInFetch.Add(1)
			} else {
				m.pausesAtLock.Add(1)
			}
		}
		if cfg.offsets != nil {
			r.off = cfg.offsets[i]
		}
		r.rdb = redis.NewClient(&redis.Options{Addr: env.srv.Addr})
		opts := []Option{
			WithNamespace(ns),
			WithOwner(fmt.Sprintf("replica-%d", i)),
			WithRefreshAhead(modelRefreshAhead),
			WithTuning(Tuning{
				LockTTL:        cfg.lockTTL,
				ExpirySkew:     cfg.skew(),
				WaitRecheck:    modelRecheck,
				RefreshTimeout: 10 * time.Second,
				RetryAttempts:  3,
				RetryBase:      5 * time.Millisecond,
				RetryMax:       20 * time.Millisecond,
			}),
		}
		if cfg.offsets != nil {
			opts = append(opts, withClock(offsetClock(r.off)))
		}
		c, err := New(r.rdb, modelFetcher{is: m.iss, r: r}, opts...)
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		r.c = c
		if i == 0 {
			m.keys.token, m.keys.lock, _, _ = c.Keys()
		}
		r.rdb.AddHook(modelHook{r: r, lockKey: m.keys.lock})
		m.reps = append(m.reps, r)
	}
	t.Cleanup(func() {
		if os.Getenv("TOKENCACHE_MODEL_TRACE") != "" {
			fmt.Printf("--- model run %s (%+v)%s%s\n", ns, cfg, m.iss.history(), m.steps())
		}
		for _, r := range m.reps {
			r.resume()
		}
		for _, r := range m.reps {
			_ = r.c.Close()
			_ = r.rdb.Close()
		}
	})
	return m
}

// drawModelConfig draws a fleet: 3-4 replicas, a 1.5-2.5 s token, a short
// lock TTL, an issuer answering in 0-150 ms, and half of the time clocks
// that are off: one replica's by -20 s to +60 s, the others' by up to 200 ms.
func drawModelConfig(t *rapid.T) modelConfig {
	cfg := modelConfig{
		replicas: rapid.IntRange(3, 4).Draw(t, "replicas"),
		life:     rapid.SampledFrom([]time.Duration{1500 * time.Millisecond, 2 * time.Second, 2500 * time.Millisecond}).Draw(t, "life"),
		lockTTL:  rapid.SampledFrom([]time.Duration{600 * time.Millisecond, 800 * time.Millisecond, time.Second}).Draw(t, "lockTTL"),
		latency:  time.Duration(rapid.IntRange(0, 150).Draw(t, "issuerLatencyMS")) * time.Millisecond,
	}
	// A paused replica wakes anywhere from just after its lease ran out
	// to well after another replica took over.
	cfg.pauseFor = cfg.lockTTL + time.Duration(rapid.IntRange(50, 800).Draw(t, "pauseMS"))*time.Millisecond
	skewed := false
	switch os.Getenv("TOKENCACHE_MODEL_CLOCKS") {
	case "synced":
	case "skewed":
		skewed = true
	default:
		skewed = rapid.Bool().Draw(t, "skewedClocks")
	}
	if skewed {
		// Most hosts are NTP-synced, a few hundred ms apart; replica 0 is
		// far off. (rapid draws small numbers and low indexes most often:
		// drawing every offset from one wide range gives offsets of a few
		// ms, and replica 0 is the one called most.)
		for i := 0; i < cfg.replicas; i++ {
			var off time.Duration
			if i == 0 {
				off = rapid.SampledFrom([]time.Duration{time.Minute, 30 * time.Second, 5 * time.Second, -20 * time.Second, -5 * time.Second}).Draw(t, "farOffset")
			} else {
				off = time.Duration(rapid.IntRange(-200, 200).Draw(t, fmt.Sprintf("offsetMS%d", i))) * time.Millisecond
			}
			cfg.offsets = append(cfg.offsets, off)
		}
	}
	return cfg
}

// callBound is how long a caller may wait (invariant 4): the lock TTL
// (a dead or paused holder's lease running out), plus the issuer's time
// (a stalled call; three attempts at the issuer's latency with their
// 20 ms backoffs), plus modelMargin.
func (m *model) callBound() time.Duration {
	return m.cfg.lockTTL + m.slowMax + 3*(m.cfg.latency+20*time.Millisecond) + modelMargin
}

// ---- steps ----

func (m *model) call(r *modelReplica) { m.results = append(m.results, m.doCall(r)) }

func (m *model) doCall(r *modelReplica) modelCall {
	bound := m.callBound()
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	c := modelCall{r: r, bound: bound, start: time.Now()}
	c.tok, c.err = r.c.Token(ctx)
	c.end = time.Now()
	if c.err != nil {
		m.note("replica %d call: error after %v: %v", r.i, c.end.Sub(c.start).Round(time.Millisecond), c.err)
	} else {
		m.note("replica %d call: %s after %v", r.i, c.tok.AccessToken, c.end.Sub(c.start).Round(time.Millisecond))
	}
	if c.err == nil {
		tok := c.tok
		r.held.Store(&tok)
	}
	return c
}

// burst: every replica calls twice at once (waiters in every replica).
func (m *model) burst() {
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, r := range m.reps {
		for k := 0; k < 2; k++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := m.doCall(r)
				mu.Lock()
				m.results = append(m.results, c)
				mu.Unlock()
			}()
		}
	}
	wg.Wait()
}

func (m *model) wait(d time.Duration) {
	m.note("wait %v", d)
	time.Sleep(d)
}

// invalidate: the replica invalidates the token it last got (a 401).
func (m *model) invalidate(r *modelReplica) {
	p := r.held.Load()
	if p == nil {
		return
	}
	m.faults++
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ok, err := r.c.Invalidate(ctx, *p)
	if err != nil {
		m.t.Fatalf("Invalidate on replica %d: %v", r.i, err)
	}
	m.note("replica %d invalidates %s (deleted: %v)", r.i, p.AccessToken, ok)
}

func (m *model) setReuse(on bool) {
	m.note("issuer reuses its token: %v", on)
	m.iss.mu.Lock()
	m.iss.reuse = on
	m.iss.mu.Unlock()
}

// fail makes the issuer's next n calls fail with a retryable error; each
// may cost one more call.
func (m *model) fail(n int) {
	m.faults += n
	m.note("issuer fails its next %d calls", n)
	m.iss.mu.Lock()
	m.iss.failNext += n
	m.iss.mu.Unlock()
}

// slow stalls the issuer's next call past the lock TTL: the watchdog must
// keep the lease, and waiters must be served when it answers.
func (m *model) slow() {
	m.note("issuer stalls its next call for %v", m.slowMax)
	m.iss.mu.Lock()
	m.iss.slowNext = m.slowMax
	m.iss.mu.Unlock()
}

// pause arms a pause of replica r the next time it takes the lock: it
// stops (Redis commands and issuer answers) past its lease, and another
// replica takes over. Each pause that starts may cost one call.
func (m *model) pause(r *modelReplica) {
	m.note("replica %d will pause when it next takes the lock", r.i)
	r.pauseArmed.Store(true)
}

// pauseInFetch arms a pause of replica r in its next issuer call: the
// holder stops while its call is under way, its lease expires, another
// replica takes over; the late answer must not displace the newer token.
// Each such pause may cost one call.
func (m *model) pauseInFetch(r *modelReplica) {
	m.note("replica %d will pause in its next issuer call", r.i)
	r.pauseFetch.Store(true)
}

// dropSubscriptions kills every pub/sub connection: events published
// until the replicas subscribe again are lost.
func (m *model) dropSubscriptions() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	m.note("CLIENT KILL TYPE pubsub")
	if err := m.env.side.Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub").Err(); err != nil {
		m.t.Fatalf("CLIENT KILL TYPE pubsub: %v", err)
	}
}

// stretch sets the token key's TTL to ten times what is left (a hand
// PEXPIRE, or a node whose clock lags).
func (m *model) stretch() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pttl, err := m.env.side.PTTL(ctx, m.keys.token).Result()
	if err != nil {
		m.t.Fatalf("PTTL: %v", err)
	}
	if pttl <= 0 {
		return
	}
	m.faults++
	m.note("PEXPIRE the token key from %v to %v", pttl, 10*pttl)
	if err := m.env.side.PExpire(ctx, m.keys.token, 10*pttl).Err(); err != nil {
		m.t.Fatalf("PEXPIRE: %v", err)
	}
}

// del deletes the token key by hand (redis-cli DEL, an eviction).
func (m *model) del() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	m.faults++
	m.note("DEL the token key")
	if err := m.env.side.Del(ctx, m.keys.token).Err(); err != nil {
		m.t.Fatalf("DEL: %v", err)
	}
}

// restart restarts redis-server; with appendonly the token survives.
func (m *model) restart() {
	m.faults++
	m.note("restart redis-server")
	m.env.srv.Restart()
	m.note("redis-server is back")
}

// ---- invariants ----

// budget is how many issuer calls a correct fleet may have made by now:
// one for the cold start; one per answer of the issuer whose refresh-ahead
// moment has come (an answer is renewed once, and no earlier than
// modelRefreshAhead of the life it came with: a reused token comes with
// what is left of its life; 100 ms of slack covers the millisecond
// rounding of stored times and TTLs); and one per injected fault: an
// invalidation, a failed issuer call, a stretched or deleted key, a
// restart, a pause in an issuer call. Renewing a token that is not due,
// calling twice for one renewal, or calling again for a token the issuer
// just gave, goes over it at once.
func (m *model) budget(now time.Time) (calls, budget, due int) {
	m.iss.mu.Lock()
	calls = m.iss.calls
	for _, a := range m.iss.answers {
		if now.Sub(a.at)+100*time.Millisecond >= time.Duration(modelRefreshAhead*float64(a.life)) {
			due++
		}
	}
	m.iss.mu.Unlock()
	if calls == 0 {
		return 0, 0, 0
	}
	return calls, 1 + due + m.faults + m.apiCalls + int(m.pausesInFetch.Load()), due
}

// storedValid reports whether Redis holds a token that is valid at now
// (its true expiry more than the skew away) and was minted before before.
func (m *model) storedValid(now, before time.Time) (bool, string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	raw, err := m.env.side.Get(ctx, m.keys.token).Result()
	if err != nil {
		return false, "no token in redis (" + err.Error() + ")"
	}
	var rec struct {
		AccessToken string `json:"access_token"`
	}
	if json.Unmarshal([]byte(raw), &rec) != nil {
		return false, "garbage in redis"
	}
	mt, ok := m.iss.mint(rec.AccessToken)
	switch {
	case !ok:
		return false, "unknown token in redis"
	case mt.exp.Sub(now) <= m.cfg.skew():
		return false, "the token in redis is within its skew of its true expiry"
	case !mt.at.Before(before):
		return false, "the token in redis was minted during the call"
	}
	return true, fmt.Sprintf("redis holds %s, valid for %v more", rec.AccessToken, mt.exp.Sub(now).Round(time.Millisecond))
}

// issuerFailedSince reports whether an injected failure was served since t.
func (m *model) issuerFailedSince(t time.Time) bool {
	m.iss.mu.Lock()
	defer m.iss.mu.Unlock()
	for _, f := range m.iss.failures {
		if !f.Before(t) {
			return true
		}
	}
	return false
}

// check runs after every step.
func (m *model) check() {
	m.t.Helper()
	results := m.results
	m.results = nil
	for _, c := range results {
		m.checkCall(c)
	}
	now := time.Now()
	if calls, budget, due := m.budget(now); calls > budget {
		m.t.Fatalf("invariant 2 (issuer calls): %d issuer calls for the fleet, budget %d (cold start 1 + %d answers past their refresh-ahead moment + %d injected faults + %d for the API's revocations and rejections + %d pauses in an issuer call; %d pauses at the lock cost nothing)%s",
			calls, budget, due, m.faults, m.apiCalls, m.pausesInFetch.Load(), m.pausesAtLock.Load(), m.iss.history()+m.steps())
	}
}

// fatalf fails the run with the issuer's log appended.
func (m *model) fatalf(format string, args ...any) {
	m.t.Helper()
	m.t.Fatalf(format+"%s%s", append(args, m.iss.history(), m.steps())...)
}

// note records what a step did, at true time since the run began.
func (m *model) note(format string, args ...any) {
	m.trailMu.Lock()
	defer m.trailMu.Unlock()
	m.trail = append(m.trail, fmt.Sprintf("%8v ", time.Since(m.start).Round(time.Millisecond))+fmt.Sprintf(format, args...))
}

// steps returns the trail's last 60 lines.
func (m *model) steps() string {
	m.trailMu.Lock()
	defer m.trailMu.Unlock()
	tr := m.trail[max(0, len(m.trail)-60):]
	return "\n\tsteps (true time since the run began; the issuer's log counts from its first call):\n\t" + strings.Join(tr, "\n\t")
}

func (m *model) checkCall(c modelCall) {
	m.t.Helper()
	r := c.r
	if c.err == nil {
		mt, ok := m.iss.mint(c.tok.AccessToken)
		if !ok {
			m.fatalf("invariant 1: replica %d got a token the issuer never minted: %v", r.i, c.tok)
		}
		if !mt.exp.After(c.end) {
			m.fatalf("invariant 1 (never expired): replica %d got %s %v past its true expiry (minted %v before the call returned)",
				r.i, c.tok.AccessToken, c.end.Sub(mt.exp).Round(time.Millisecond), c.end.Sub(mt.at).Round(time.Millisecond))
		}
		// On the replica's clock: strict when the clocks agree; with
		// clocks apart, a token minted by a replica whose clock lags
		// carries an expiry that early on a faster clock, so the check
		// tolerates the spread and the true expiry above is the safety.
		local := c.end.Add(r.off)
		if tol := m.cfg.spread(); !c.tok.Expiry.After(local.Add(-tol)) {
			m.fatalf("invariant 1 (expiry on the local clock): replica %d (clock %+v) got %s whose Expiry is %v before its clock's now (tolerance %v)",
				r.i, r.off, c.tok.AccessToken, local.Sub(c.tok.Expiry).Round(time.Millisecond), tol)
		}
		return
	}
	if r.pausedDuring(c.start, c.end) {
		return // a stopped process serves nobody
	}
	took := c.end.Sub(c.start).Round(time.Millisecond)
	if errors.Is(c.err, context.DeadlineExceeded) {
		if !m.issuerFailedSince(c.start.Add(-maxRetryWindow)) {
			m.fatalf("invariant 4 (waiters served in time): replica %d was not served within %v (lock TTL %v + issuer %v + margin) with a healthy issuer: %v",
				r.i, c.bound, m.cfg.lockTTL, m.slowMax+3*m.cfg.latency, c.err)
		}
	}
	// Errors are allowed only while the issuer fails and no valid token
	// exists. A failure remembered for the fleet's back-off window counts
	// as failing (at most maxRetryWindow).
	if !m.issuerFailedSince(c.start.Add(-maxRetryWindow)) {
		m.fatalf("invariant 3 (no error with a healthy issuer): replica %d failed after %v: %v", r.i, took, c.err)
	}
	if ok, why := m.storedValid(time.Now(), c.start); ok {
		m.fatalf("invariant 3 (no error while a valid token is in redis): replica %d failed after %v while %s: %v", r.i, took, why, c.err)
	}
}

// ---- the tests ----

// modelFlags sets rapid's defaults for this test — modelDefaultChecks
// checks (or TOKENCACHE_MODEL_CHECKS), 30 steps, 10 s of shrinking, no
// fail file — each unless the command line or rapid's own environment
// variable chose it.
func modelFlags(t *testing.T) { modelFlagsFor(t, modelChecksEnv, modelDefaultChecks, 30) }

// modelFlagsFor is modelFlags with checks (or the variable checksEnv)
// and steps of one test's own.
func modelFlagsFor(t *testing.T, checksEnv string, checks, steps int) {
	n := checks
	if s := os.Getenv(checksEnv); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 {
			t.Fatalf("%s=%q: want a positive number", checksEnv, s)
		}
		n = v
	}
	for _, d := range []struct{ flag, env, value string }{
		{"rapid.checks", "RAPID_CHECKS", strconv.Itoa(n)},
		{"rapid.steps", "RAPID_STEPS", strconv.Itoa(steps)},
		// Each shrinking attempt replays a run in real time.
		{"rapid.shrinktime", "RAPID_SHRINKTIME", "10s"},
		// A fail file would be replayed first by every later run, with
		// other timings: the printed seed is the record.
		{"rapid.nofailfile", "RAPID_NOFAILFILE", "true"},
	} {
		if _, env := os.LookupEnv(d.env); env || visited(d.flag) || (d.flag == "rapid.nofailfile" && visited("rapid.failfile")) {
			continue
		}
		setFlag(t, d.flag, d.value)
	}
}

func visited(name string) bool {
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// setFlag sets a flag for the test and restores it after.
func setFlag(t *testing.T, name, value string) {
	f := flag.Lookup(name)
	old := f.Value.String()
	if err := f.Value.Set(value); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Value.Set(old) })
}

func (m *model) replica(t *rapid.T) *modelReplica {
	return m.reps[rapid.IntRange(0, len(m.reps)-1).Draw(t, "replica")]
}

// fault injects one fault drawn by rapid.
func (m *model) fault(t *rapid.T) {
	switch rapid.SampledFrom(m.faultKinds).Draw(t, "fault") {
	case "invalidate":
		m.invalidate(m.replica(t))
	case "reuse":
		m.setReuse(rapid.Bool().Draw(t, "on"))
	case "fail":
		m.fail(rapid.IntRange(1, 4).Draw(t, "n"))
	case "slow":
		m.slow()
	case "pause":
		m.pause(m.replica(t))
	case "pauseInFetch":
		m.pauseInFetch(m.replica(t))
	case "dropSubs":
		m.dropSubscriptions()
	case "stretch":
		m.stretch()
	case "del":
		m.del()
	case "restart":
		m.restart()
	}
}

func TestModel(t *testing.T) {
	env := newModelEnv(t)
	modelFlags(t)
	faults := modelFaults(t)
	rapid.Check(t, func(t *rapid.T) {
		m := newModel(t, env, drawModelConfig(t))
		m.faultKinds = faults
		if slices.Contains(faults, "reuse") {
			m.setReuse(rapid.Bool().Draw(t, "reusingIssuer"))
		}
		call := func(t *rapid.T) { m.call(m.replica(t)) }
		// A wait is a share of the token's life, from a fifth down to a
		// fortieth (rapid draws low numbers most: the longest wait).
		wait := func(t *rapid.T) {
			k := rapid.IntRange(1, 7).Draw(t, "waitShare")
			m.wait(m.cfg.life * time.Duration(8-k) / 40)
		}
		// Calls and waits are most of what happens; a fault is two steps
		// in eight.
		t.Repeat(map[string]func(*rapid.T){
			"call":    call,
			"call#2":  call,
			"call#3":  call,
			"burst":   func(t *rapid.T) { m.burst() },
			"wait":    wait,
			"wait#2":  wait,
			"fault":   func(t *rapid.T) { m.fault(t) },
			"fault#2": func(t *rapid.T) { m.fault(t) },
			"":        func(t *rapid.T) { m.check() },
		})
		m.steady()
	})
}

// steady ends a run with two token lifetimes of steady traffic, every
// replica calling in turn every tenth of the life, so that every run
// spans renewals after whatever its random steps left behind.
func (m *model) steady() {
	m.t.Helper()
	m.note("steady traffic")
	round := 0
	for end := time.Now().Add(2 * m.cfg.life); time.Now().Before(end); {
		// Each round starts with the next replica: whoever reaches
		// the refresh-ahead moment first varies.
		for j := range m.reps {
			m.call(m.reps[(round+j)%len(m.reps)])
			m.check()
		}
		round++
		m.wait(m.cfg.life / 10)
		m.check()
	}
}

// callAsync starts a call on r; join waits for it, and its result is
// checked after the step that joins it.
func (m *model) callAsync(r *modelReplica) (join func()) {
	done := make(chan modelCall, 1)
	go func() { done <- m.doCall(r) }()
	return func() { m.results = append(m.results, <-done) }
}

// waitPaused waits (bounded) until an armed pause of r has started.
func (m *model) waitPaused(r *modelReplica) {
	deadline := time.Now().Add(10 * time.Second)
	for r.pausedUntil(time.Now()).IsZero() {
		if time.Now().After(deadline) {
			m.t.Fatalf("replica %d did not pause", r.i)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestModelRegressions replays, as scripted step sequences, the
// interleavings TestModel found (issue 12). Each names the behaviour it
// pins; the invariants are checked after every step, as in TestModel.
func TestModelRegressions(t *testing.T) {
	env := newModelEnv(t)
	synced := modelConfig{replicas: 3, life: 3 * time.Second, lockTTL: 800 * time.Millisecond}
	cases := []struct {
		name  string
		cfg   modelConfig
		steps func(m *model, step func(func()))
	}{{
		// Item 1: an issuer that hands back its still-valid token after
		// an invalidation; today the token stays rejected and every call
		// costs three issuer calls.
		name: "item1 reusing issuer costs one call after an invalidation",
		cfg:  synced,
		steps: func(m *model, step func(func())) {
			m.setReuse(true)
			step(func() { m.call(m.reps[0]) })
			step(func() { m.invalidate(m.reps[0]) })
			for i := 0; i < 6; i++ {
				step(func() { m.call(m.reps[i%3]) })
			}
			step(m.burst)
		},
	}, {
		// Item 3: a key whose TTL outlives its token (a hand PEXPIRE, a
		// node whose clock lags); today its token is served past the
		// issuer's expiry.
		name: "item3 stretched key is never served past the issuer expiry",
		cfg:  modelConfig{replicas: 3, life: 2 * time.Second, lockTTL: 800 * time.Millisecond, offsets: []time.Duration{0, 0, 0}},
		steps: func(m *model, step func(func())) {
			// Every replica re-reads its copy on re-subscribing, and
			// takes the stretched TTL for the token's life.
			step(func() { m.call(m.reps[0]) })
			step(m.stretch)
			step(m.dropSubscriptions)
			for i := 0; i < 10; i++ {
				step(func() { m.wait(300 * time.Millisecond) })
				step(func() { m.call(m.reps[i%3]) })
			}
		},
	}, {
		// Item 2: one replica's clock a minute fast; today the others
		// take its tokens for newer and refresh again and again.
		name: "item2 a replica a minute fast does not make the fleet loop",
		cfg:  modelConfig{replicas: 4, life: 3 * time.Second, lockTTL: 800 * time.Millisecond, offsets: []time.Duration{0, 0, 0, time.Minute}},
		steps: func(m *model, step func(func())) {
			// The fast replica stores the first token.
			step(func() { m.call(m.reps[3]) })
			for i := 0; i < 32; i++ {
				step(func() { m.call(m.reps[i%4]) })
				step(func() { m.wait(200 * time.Millisecond) })
			}
		},
	}, {
		// Item 4: a holder paused just after taking the lock wakes while
		// the next holder's (slow) issuer call runs; today it draws a
		// newer generation, calls the issuer too, and fences out the
		// current holder.
		name: "item4 a holder paused past its lease draws no generation",
		cfg:  synced,
		steps: func(m *model, step func(func())) {
			var join func()
			step(func() { m.pause(m.reps[0]) })
			step(func() { join = m.callAsync(m.reps[0]) })
			step(func() { m.waitPaused(m.reps[0]) })
			step(m.slow)
			step(func() { m.call(m.reps[1]) })
			step(func() { join() })
			step(m.burst)
		},
	}, {
		// A replica paused just after it takes the lock (a GC pause,
		// SIGSTOP, a slow reply) finds, once it wakes, the token the
		// next holder stored meanwhile. Its copy's refresh-ahead moment
		// is timed from when the reply arrived, not from before the
		// paused request: timed from before, it comes early by the
		// pause, and the replica refreshes a token with most of its life
		// left (two issuer calls in one lifetime).
		name: "a replica paused at the lock does not refresh the token it finds early",
		cfg:  modelConfig{replicas: 3, life: 3 * time.Second, lockTTL: 800 * time.Millisecond, pauseFor: 1500 * time.Millisecond},
		steps: func(m *model, step func(func())) {
			var join func()
			step(func() { m.pause(m.reps[0]) })
			step(func() { join = m.callAsync(m.reps[0]) })
			step(func() { m.waitPaused(m.reps[0]) })
			step(func() { m.call(m.reps[1]) })
			step(func() { join() })
			// Callers keep using the paused replica's copy through the
			// rest of the token's refresh-ahead share of its life.
			for range 10 {
				step(func() { m.wait(150 * time.Millisecond) })
				step(func() { m.call(m.reps[0]) })
			}
		},
	}, {
		// README: "a paused holder wakes late: its write is fenced out;
		// the newer token stays".
		name: "a holder paused in its issuer call costs one more call and its late token does not win",
		cfg:  synced,
		steps: func(m *model, step func(func())) {
			var join func()
			step(func() { m.pauseInFetch(m.reps[0]) })
			step(func() { join = m.callAsync(m.reps[0]) })
			step(func() { m.waitPaused(m.reps[0]) })
			step(func() { m.call(m.reps[1]) })
			step(func() { join() })
			step(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				raw, err := m.env.side.Get(ctx, m.keys.token).Result()
				newer := m.reps[1].held.Load()
				if err != nil || newer == nil || !strings.Contains(raw, `"access_token":"`+newer.AccessToken+`"`) {
					m.fatalf("the token in redis is not the one the current holder stored (%v): %s (err %v)", newer, raw, err)
				}
			})
			step(m.burst)
			step(func() { m.wait(time.Second) })
			step(m.burst)
		},
	}, {
		name: "a restart with appendonly keeps the token",
		cfg:  synced,
		steps: func(m *model, step func(func())) {
			step(m.burst)
			step(m.restart)
			step(m.burst)
			step(func() { m.wait(time.Second) })
			step(m.burst)
		},
	}, {
		name: "renewals go on after the subscriptions are dropped",
		cfg:  synced,
		steps: func(m *model, step func(func())) {
			for i := 0; i < 10; i++ {
				step(m.burst)
				if i%3 == 0 {
					step(m.dropSubscriptions)
				}
				step(func() { m.wait(400 * time.Millisecond) })
			}
		},
	}}
	for _, tc := range cases {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			m := newModel(t, env, tc.cfg)
			m.check()
			tc.steps(m, func(f func()) {
				t.Helper()
				f()
				m.check()
			})
			t.Log(m.iss.history())
		})
	}
}
