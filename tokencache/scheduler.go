package tokencache

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokencache/tokencache/lock"
)

// This file is when and where one token's background work runs: the
// timer set to the in-memory copy's next moment, the token's one worker
// (see worker), and what its jobs do: re-read Redis after a fleet event
// (jobSync), and at the copy's moment write back a token fetched while
// Redis was down, re-check Redis, or refresh ahead of expiry under the
// lock while callers keep getting the current token (jobCheck).

// scheduler runs the background work of one entry.
type scheduler struct {
	e *entry

	work worker // the token's one background goroutine, on demand
	// used: a caller asked for the token since the timer last fired.
	// The timer fires at the copy's next moment (its refresh-ahead
	// moment), so a replica in use refreshes at its own jittered moment,
	// not at whichever call comes after it: replicas whose callers run in
	// step would otherwise all reach the lock at the same call.
	used    atomic.Bool
	mu      sync.Mutex // guards timer, stopped
	timer   timer
	stopped bool
}

// arm sets the entry's timer to the next moment of the copy in memory,
// after an install or a put-off (which moves the moment later: a timer
// that already fired would otherwise leave the new moment to the next
// call).
func (sc *scheduler) arm() {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	// The copy is loaded under the lock: two arms racing cannot leave the
	// timer set for the older copy's moment.
	s := sc.e.mem.l1.Load()
	if s == nil {
		return
	}
	// A copy marked for a re-check (expireSoft: next the minimum) is
	// due now; the difference must not wrap around.
	c := sc.e.c
	now := c.monoNow()
	d := time.Duration(max(s.next, now) - now)
	switch {
	case sc.stopped:
	case sc.timer == nil:
		sc.timer = c.cfg.clock.AfterFunc(d, sc.onTimer)
	default:
		sc.timer.Reset(d)
	}
}

// onTimer starts the background work of the copy in memory at its moment
// if callers are using it; an unused copy waits for its next caller.
func (sc *scheduler) onTimer() {
	c := sc.e.c
	s := sc.e.mem.l1.Load()
	if s == nil || c.closed.Load() {
		return
	}
	now := c.monoNow()
	switch {
	case now < s.next:
		sc.arm()
	case now < s.validUntil && sc.used.Swap(false):
		sc.kick()
	}
}

// stop stops the entry's timer for good (the cache closes, or the entry
// leaves the LRU of client tokens).
func (sc *scheduler) stop() {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	sc.stopped = true
	if sc.timer != nil {
		sc.timer.Stop()
	}
}

// moment is the start of s's refresh-ahead window on the cache's
// clock: the moment s has used the refresh-ahead share of its life, which
// s.dueAt is plus this replica's jitter. Adopting a rotated token from
// then on, before any replica's jittered timer, spares the issuer call.
// While another replica announced it is refreshing (reasonHeld), the
// moment is the put-off one: its token is on the way.
func (sc *scheduler) moment(s *snapshot) mono {
	c := sc.e.c
	life := time.Duration(c.monoAt(s.tok.Expiry) - s.born)
	if s.why == reasonHeld || life <= 0 {
		return s.refreshAt()
	}
	expiry := s.validUntil + mono(c.cfg.skewFor(life))
	return min(expiry-mono(float64(life)*(1-c.cfg.refreshAhead)), s.refreshAt())
}

// kick asks the worker for the background re-check / refresh-ahead.
func (sc *scheduler) kick() { sc.work.ask(jobCheck) }

// sync asks the worker to re-read Redis after a fleet event and wake the
// waiters.
func (sc *scheduler) sync() { sc.work.ask(jobSync) }

// A job is background work asked of a token's worker: a set of bits, so
// that any number of asks before the worker gets to them is one run.
type job uint32

const (
	// jobSync re-reads Redis after a fleet event ("refreshed", or a
	// failure whose credential only Redis says) and wakes the waiters.
	jobSync job = 1 << iota
	// jobCheck is the copy's moment: write back, re-check, refresh ahead.
	jobCheck
)

// worker is a token's one background goroutine. It is started by the
// first ask when none runs, takes every job asked so far at once, runs
// them, and exits when it finds no wake-up waiting. It is woken through a
// one-slot channel: an ask sets its job bits, then fills the slot if it is
// empty (never blocking); the worker empties the slot before it takes the
// bits. A wake-up cannot be lost: either this ask filled the slot, or the
// slot was full and the worker that will empty it has not yet taken the
// bits, this ask's among them. The worker decides to exit under mu, on an
// empty slot, and an ask looks whether one runs under mu after it filled
// the slot: an exit and an ask cannot pass each other. Asks that come
// while a batch runs cost one more run, not one each; a check asked while
// a check runs is covered by it, as a re-read is not.
type worker struct {
	wake chan struct{} // the one slot: a wake-up asked and not yet taken
	// jobs: the job bits asked and not yet taken.
	jobs atomic.Uint32
	// inRun: the jobs of the batch under way, from its take to the end
	// of its run; written by the worker, read by ask. A check asked
	// while one runs is covered by it (jobCovered): the callers that see
	// the copy past its moment while the check is under way would
	// otherwise each cost one more check after it. One asked once the run
	// ended is not.
	inRun atomic.Uint32
	mu    sync.Mutex
	// running: a worker goroutine exists (or is being started) that will
	// empty the slot; guarded by mu.
	running bool
	run     func(ctx context.Context, j job) // runs one batch of jobs
	start   func(fn func(ctx context.Context)) bool
}

// init readies w to run batches with run on goroutines that start starts.
func (w *worker) init(run func(ctx context.Context, j job), start func(fn func(ctx context.Context)) bool) {
	w.wake = make(chan struct{}, 1)
	w.run, w.start = run, start
}

// jobCovered is the jobs a run in progress covers when asked again: a
// check. A re-read after an event is never covered: the event came after
// the running re-read was sent.
const jobCovered = jobCheck

// ask asks the worker for j, starting it if none runs: three steps, each
// safe to interleave with any step of other asks and of the worker (the
// protocol model in worker_test.go steps them one by one).
func (w *worker) ask(j job) {
	if j = w.set(j); j != 0 {
		w.signal()
		w.ensure()
	}
}

// set is an ask's first step: it sets the bits of j not yet asked nor
// covered by the check under way, and returns them (0: nothing to wake
// the worker for). Bits already set were set by an ask that goes on to
// fill the slot (or found it full), so a take comes after this ask.
func (w *worker) set(j job) job {
	if j &^= job(w.jobs.Load()) | job(w.inRun.Load())&jobCovered; j != 0 {
		w.jobs.Or(uint32(j))
	}
	return j
}

// signal fills the slot if it is empty; full, the worker that empties it
// takes the bits set with the rest.
func (w *worker) signal() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// ensure starts a worker if none runs. It looks under mu, after the slot
// was filled: a worker that decided to exit did so on an empty slot,
// before this look.
func (w *worker) ensure() {
	w.mu.Lock()
	start := !w.running
	w.running = true
	w.mu.Unlock()
	if start && !w.start(w.loop) {
		// The cache is closing: nothing runs any more, and nothing is
		// left asked for a run that will not come.
		w.mu.Lock()
		w.running = false
		select {
		case <-w.wake:
		default:
		}
		w.jobs.Store(0)
		w.mu.Unlock()
	}
}

// take empties the slot and takes every job asked, or, when the slot is
// empty, ends the worker and returns 0. A wake-up whose jobs the batch
// before took with its own runs nothing.
func (w *worker) take() job {
	w.mu.Lock()
	defer w.mu.Unlock()
	for {
		select {
		case <-w.wake:
		default:
			w.running = false
			return 0
		}
		if j := job(w.jobs.Swap(0)); j != 0 {
			w.inRun.Store(uint32(j))
			return j
		}
	}
}

// ran ends the batch under way: nothing asked from now on is covered.
func (w *worker) ran() { w.inRun.Store(0) }

// loop is the worker goroutine: batches of jobs until no wake-up waits.
func (w *worker) loop(ctx context.Context) {
	for j := w.take(); j != 0; j = w.take() {
		w.run(ctx, j)
		w.ran()
	}
}

// runJobs runs one batch of the entry's jobs: the event's re-read first (it
// may bring the token the check would otherwise refresh), then the check.
// The check runs even if the re-read installed a copy not yet due: that
// read may have been sent before the check was asked (before a deletion,
// say), and only a reading that starts after the ask answers it.
func (sc *scheduler) runJobs(ctx context.Context, j job) {
	e := sc.e
	if j&jobSync != 0 {
		rctx, cancel := context.WithTimeout(ctx, e.c.cfg.lockTTL)
		_, _, _ = e.readAndInstall(rctx)
		cancel()
		e.sig.fire()
	}
	if j&jobCheck != 0 {
		sc.background(ctx)
	}
}

// background re-reads Redis and, if the token is due, refreshes it ahead
// of expiry while callers keep getting the current one.
func (sc *scheduler) background(ctx context.Context) {
	e := sc.e
	ctx, cancel := context.WithTimeout(ctx, e.c.cfg.refreshTimeout)
	defer cancel()
	cur := e.mem.l1.Load()
	if cur != nil {
		e.c.log().Debug("tokencache: background check", "key", e.k.Token, "reason", cur.why)
	}
	if p := e.mem.pendingToken(); p != nil {
		if !e.rf.writeBack(ctx, p) {
			e.mem.later(jitter(e.c.cfg.waitRecheck))
			return
		}
		cur = e.mem.l1.Load()
	}
	if cur != nil && cur.why != reasonRecheck && cur.due(e.c.monoNow()) {
		// Due: try the lock straight away. The holder re-reads under it,
		// so a read first would only tell the replicas that lose the lock
		// what the winner's "refreshed" will tell them anyway. Not so a
		// re-check (a re-subscription, a failure the fleet reported): it
		// is asked because an event may have been missed, which a replica
		// that loses the lock, or backs off, would not learn.
		sc.ahead(ctx, cur)
		return
	}
	r, err := e.read(ctx)
	if err != nil || r.kind == readSealed {
		// Redis is unreachable (or this replica cannot open what it
		// holds): keep serving memory, try again later.
		e.mem.later(jitter(e.c.cfg.waitRecheck))
		return
	}
	if !r.loaded() {
		// Deleted (an operator, an eviction, an invalidation whose event
		// we missed) or garbage: stop serving the old copy, and let no
		// read that started before this one bring it back.
		e.mem.absentAt(r.ticket)
		return
	}
	s, _ := e.validSnapshot(r)
	e.install(s)
	now := e.c.monoAt(r.arrived)
	// Decide on what we serve: the copy just read, or one newer than
	// Redis's (Redis lost a write, or an event overtook this read). The
	// copy just read came with its own next moment; a newer one gets the
	// one it would have had, or it would send us back here at every call.
	if c := e.mem.l1.Load(); c != nil && !c.sameStored(s) {
		s = c
		next, why := s.refreshAt(), reasonAhead
		if recheck := now + mono(e.c.cfg.l1MaxAge); e.c.cfg.l1MaxAge > 0 && recheck < next {
			next, why = recheck, reasonRecheck
		}
		if now < next {
			e.mem.putOff(next, why)
			return
		}
	} else if c != nil {
		s = c
	}
	if s.due(now) {
		sc.ahead(ctx, s)
	}
}

// ahead refreshes the token while callers keep getting served, the copy
// that is due: under the lock, unless the fleet is backing off after a
// failure or another replica holds the lock (its event will update us).
func (sc *scheduler) ahead(ctx context.Context, served *snapshot) {
	e := sc.e
	if d := e.fails.backingOff(); d > 0 {
		// A refresh failed recently, here or anywhere in the fleet: the
		// current token is still good, so wait out the window.
		e.mem.later(d)
		return
	}
	lease, err := e.c.locker.TryAcquire(ctx, e.k.Lock)
	if err != nil {
		if errors.Is(err, lock.ErrNotAcquired) {
			e.c.stats.lockContended.Add(1)
		}
		// Someone else is refreshing (their event will update us), or
		// Redis failed: look again later. A newer copy installed by the
		// event meanwhile keeps its own, later moment.
		e.mem.later(jitter(e.c.cfg.waitRecheck))
		return
	}
	// Under the lock, a token newer than the one we serve (issued later,
	// or in the same millisecond with a higher generation) means someone
	// else refreshed; an older one (Redis lost a write) does not. A
	// failure the re-read learns of from the fleet means waiting out its
	// window, like one known before.
	if _, err := e.rf.refresh(ctx, lease, forAhead, func(r readResult) bool {
		if served.before(r.rec.Generation, r.rec.StoredMS) {
			// Another replica refreshed, and we heard neither its
			// "refreshing" (we would be holding back) nor its "refreshed".
			e.c.sub.suspectSubscription()
			return true
		}
		if s, ok := e.validSnapshot(r); ok && s.fp == served.fp && !s.due(e.c.monoAt(r.arrived)) {
			// The very copy we serve, not yet due by this fresh reading:
			// the moment that sent us here was timed from a stale one (a
			// pause between a read and its reply). Stand down.
			return true
		}
		return e.fails.backingOff() > 0
	}); err != nil {
		e.c.log().Warn("tokencache: refresh ahead failed; serving the current token", "key", e.k.Token, "err", err)
		e.mem.later(e.fails.retryDelay())
	} else if d := e.fails.backingOff(); d > 0 {
		e.mem.later(d)
	} else if c := e.mem.l1.Load(); c != nil && c.fp == served.fp {
		// Whatever happened, the token we decided on is still the one
		// served: never come straight back here.
		e.mem.later(jitter(e.c.cfg.waitRecheck))
	}
}
