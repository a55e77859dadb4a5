package tokencache

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokencache/tokencache/lock"
	"github.com/tokencache/tokencache/tokencache/internal/protocol"
)

// This file is the life of one cached token: the hot path, the slow path
// (Redis, the lock, waiting for another replica), refresh-ahead, and the
// fenced write.

// entry is one cached token: the server token, or one user's client token.
type entry struct {
	c      *Cache
	k      keys
	f      Fetcher
	credFP string

	l1        atomic.Pointer[snapshot]
	sig       *signal
	bgBusy    atomic.Bool           // a background refresh or re-check runs
	syncing   atomic.Bool           // an event-driven re-read runs
	syncAgain atomic.Bool           // another event arrived during it
	pending   atomic.Pointer[Token] // fetched while Redis was down; to write back

	failMu     sync.Mutex // guards fail, failSeq, failGen
	fail       *FetchError
	failSeq    uint64
	failGen    int64        // generation held in memory when fail happened
	failStreak atomic.Int32 // refreshes in a row that failed (retryable)

	rej rejections // the API's 401s, for Transport
	// last is the copy last installed, kept even without the in-memory
	// copy (WithL1(false)): what Transport judges a 401 by.
	last     atomic.Pointer[snapshot]
	warnedFP atomic.Bool               // logged a credential mismatch once
	rejected atomic.Pointer[rejection] // the last token invalidated here

	// used: a caller asked for the token since the timer last fired.
	// The timer fires at the copy's next moment (its refresh-ahead
	// moment), so a replica in use refreshes at its own jittered moment,
	// not at whichever call comes after it: replicas whose callers run in
	// step would otherwise all reach the lock at the same call.
	used    atomic.Bool
	timerMu sync.Mutex // guards timer, stopped
	timer   timer
	stopped bool
}

// rejection is the token this replica last invalidated, up to the
// generation it was stored with: a read that raced the invalidation must
// not bring it back. It is bounded by the generation, never a blacklist of
// the token: an issuer may hand the same still-valid token out again, and
// once it has, the token is stored under a newer generation and served.
type rejection struct {
	fp  string
	gen int64
}

// isRejected reports whether the token fp, stored with generation gen,
// is one this replica invalidated.
func (e *entry) isRejected(fp string, gen int64) bool {
	r := e.rejected.Load()
	return r != nil && r.fp == fp && gen <= r.gen
}

// reject marks fp, up to generation gen, as invalidated.
func (e *entry) reject(fp string, gen int64) {
	e.rejected.Store(&rejection{fp: fp, gen: gen})
}

// unreject forgets the rejection of fp: the issuer has just returned it,
// and the issuer's latest answer is authoritative.
func (e *entry) unreject(fp string) {
	if r := e.rejected.Load(); r != nil && r.fp == fp {
		e.rejected.CompareAndSwap(r, nil)
	}
}

func (c *Cache) newEntry(k keys, f Fetcher) *entry {
	return &entry{c: c, k: k, f: f, credFP: identityFingerprint(f, c.cfg.keyring), sig: newSignal()}
}

// snapshot is an immutable in-memory copy of the token. Times are on the
// local monotonic clock, derived from how long the token is still valid on
// Redis's clock when it was read.
type snapshot struct {
	tok        Token
	gen        int64
	fp         string // token fingerprint
	validUntil mono   // never served at or after this
	dueAt      mono   // refresh-ahead moment (jittered)
	softUntil  mono   // before this, no background work at all
	held       bool   // another replica's "refreshing" already put this copy's moment off
	storedMS   int64  // Redis's TIME when the token was stored; 0: not stored (yet)
	born       mono   // when the issuer minted it: its expiry less its lifetime
}

// newer reports whether s holds a later token than o: a higher fencing
// generation, or, at the same generation, stored later by Redis's clock.
// No replica's clock takes part: replicas whose clocks differ agree on the
// order. Generations go back when Redis loses a write (a failover, a
// restart without persistence), so two different tokens may share one;
// the next refresh draws above both (see entry.floor).
func (s *snapshot) newer(o *snapshot) bool { return o.before(s.gen, s.storedMS) }

// before reports whether s holds an earlier token than the one stored with
// generation gen at storedMS (see newer).
func (s *snapshot) before(gen, storedMS int64) bool {
	if gen != s.gen {
		return gen > s.gen
	}
	return storedMS > s.storedMS
}

func (e *entry) token(ctx context.Context) (Token, error) {
	if s := e.l1.Load(); s != nil {
		now := e.c.monoNow()
		if now < s.softUntil {
			if !e.used.Load() {
				e.used.Store(true)
			}
			return s.tok, nil
		}
		if now < s.validUntil {
			e.kick()
			return s.tok, nil
		}
	}
	return e.slow(ctx)
}

func (e *entry) slow(ctx context.Context) (Token, error) {
	if e.c.closed.Load() {
		return Token{}, ErrClosed
	}
	e.used.Store(true)
	// The shared work runs on the cache's context, not the first
	// caller's: a caller that gives up does not fail the others.
	shared := func() (any, error) {
		if !e.c.begin() {
			return Token{}, ErrClosed
		}
		defer e.c.wg.Done()
		rctx, cancel := context.WithTimeout(e.c.ctx, e.c.cfg.refreshTimeout)
		defer cancel()
		return e.obtain(rctx)
	}
	for attempt := 0; ; attempt++ {
		var tok Token
		if ctx.Done() == nil {
			// A caller that cannot give up runs the work itself (or
			// joins it): no goroutine hand-off.
			v, err, _ := e.c.sf.Do(e.k.Token, shared)
			if err != nil {
				return Token{}, err
			}
			tok = v.(Token)
		} else {
			select {
			case r := <-e.c.sf.DoChan(e.k.Token, shared):
				if r.Err != nil {
					return Token{}, r.Err
				}
				tok = r.Val.(Token)
			case <-ctx.Done():
				return Token{}, ctx.Err()
			}
		}
		if attempt < 2 && e.servedRejected(tok) {
			// We joined a flight that read the token before it was
			// invalidated here: ask again.
			continue
		}
		return tok, nil
	}
}

// servedRejected reports whether tok, returned by a shared flight, is the
// token this replica invalidated meanwhile (the flight read it before).
func (e *entry) servedRejected(tok Token) bool {
	r := e.rejected.Load()
	if r == nil || r.fp != tok.Fingerprint() {
		return false
	}
	s := e.l1.Load()
	return s == nil || s.fp != r.fp || s.gen <= r.gen
}

// obtain gets a valid token when there is none in memory: Redis, then the
// lock, then waiting for whoever holds it.
func (e *entry) obtain(ctx context.Context) (Token, error) {
	for recheck := false; ; {
		tok, ok, err := e.readAndInstall(ctx)
		if err != nil {
			if e.settle(ctx, err) {
				continue // a cluster slot is moving: look again
			}
			return e.redisDown(ctx, err)
		}
		if ok {
			if recheck {
				// The re-check, not the holder's event, found the token.
				e.c.suspectSubscription()
			}
			e.c.stats.redisHits.Add(1)
			return tok, nil
		}
		// Subscribe first, then re-check: a "refreshed" published between
		// the two reads cannot be missed.
		e.c.waitSubscribed(ctx, subscribeWait)
		wake, seq := e.sig.arm()
		if tok, ok, err = e.readAndInstall(ctx); err != nil {
			if e.settle(ctx, err) {
				continue
			}
			return e.redisDown(ctx, err)
		} else if ok {
			return tok, nil
		}
		if err := e.negative(); err != nil {
			return Token{}, err
		}

		lease, err := e.c.locker.TryAcquire(ctx, e.k.Lock)
		switch {
		case err == nil:
			tok, err := e.refreshLocked(ctx, lease, false, nil)
			if err != nil && e.settle(ctx, err) {
				continue // refused before the issuer call, the lock released
			}
			if !errors.Is(err, errLeaseTaken) {
				return tok, err
			}
			// Another owner took the lock from under us (we were paused
			// past our lease): its token is on the way; wait for it.
		case errors.Is(err, lock.ErrNotAcquired):
			e.c.stats.lockContended.Add(1)
		case ctx.Err() != nil:
			return Token{}, e.ctxErr(ctx)
		default:
			// Redis answered the read just before: a failed lock attempt
			// (a slow Redis, a timeout) is a reason to wait and look
			// again, not to call the issuer from every replica.
			e.c.stats.redisErrors.Add(1)
			e.c.log().Warn("tokencache: lock attempt failed; waiting and re-checking", "key", e.k.Lock, "err", err)
		}

		// Another replica is refreshing: wait for its event, bounded by a
		// jittered re-check so a lost message costs one interval.
		e.c.stats.waits.Add(1)
		t := time.NewTimer(jitter(e.c.cfg.waitRecheck))
		recheck = false
		select {
		case <-wake:
		case <-t.C:
			recheck = true
		case <-ctx.Done():
			t.Stop()
			return Token{}, e.ctxErr(ctx)
		}
		t.Stop()
		if s := e.l1.Load(); s != nil && e.c.monoNow() < s.validUntil {
			return s.tok, nil
		}
		if fe := e.failureSince(seq); fe != nil {
			return Token{}, fe
		}
	}
}

func (e *entry) ctxErr(ctx context.Context) error {
	if e.c.ctx.Err() != nil {
		return ErrClosed
	}
	return fmt.Errorf("%w within %v (%w)", ErrUnavailable, e.c.cfg.refreshTimeout, ctx.Err())
}

// readAndInstall reads Redis and, on a usable token, installs it in
// memory. It reports the token and whether there was one.
func (e *entry) readAndInstall(ctx context.Context) (Token, bool, error) {
	at := e.c.now()
	r, err := e.read(ctx, at)
	if err != nil || !r.found {
		return Token{}, false, err
	}
	s, ok := e.validSnapshot(r, at)
	if !ok {
		return Token{}, false, nil
	}
	e.install(s)
	if e.c.monoAt(at) >= s.dueAt {
		e.kick()
	}
	return s.tok, true, nil
}

// read wraps store.read with the checks every reader makes: counting,
// logging garbage once per value, and the credential fingerprint.
func (e *entry) read(ctx context.Context, at time.Time) (readResult, error) {
	e.c.stats.redisReads.Add(1)
	r, err := e.c.st.read(ctx, e.k.Token, at)
	if err != nil {
		e.c.stats.redisErrors.Add(1)
		return r, err
	}
	if r.bad != nil {
		e.c.stats.badValues.Add(1)
		e.c.log().Warn("tokencache: unusable value in redis, treating as a miss", "key", e.k.Token, "err", r.bad)
	}
	if r.found && e.isRejected(r.rec.TokenFP, r.rec.Generation) {
		r.found = false
	}
	if r.failed != nil && e.sameCredential(r.failedCred) {
		limit := e.c.cfg.negativeTTL
		if r.failed.Retryable {
			limit = maxRetryWindow
		}
		if max := at.Add(limit); r.failed.Until.After(max) {
			r.failed.Until = max
		}
		e.adoptFailure(r.failed, r.failedStreak)
	}
	same, known := e.checkCredential(r.rec.Fingerprint)
	if r.found && known && !same && r.rec.Ciphertext != "" {
		// A fingerprint keyed under a key id we hold that does not match:
		// another credential, or this replica's key for that id is wrong.
		// Only the latter fails to open, and is this replica's problem:
		// the token is not overwritten.
		if _, err := e.c.cfg.keyring.open(e.k.Token, r.rec); err != nil {
			e.c.log().Error("tokencache: cannot decrypt the cached token", "key", e.k.Token, "key_id", r.rec.KeyID, "err", err)
			return readResult{}, err
		}
	}
	if r.found && known && !same {
		// Another deployment's token is a miss to refetch and overwrite.
		if e.warnedFP.CompareAndSwap(false, true) {
			e.c.log().Warn("tokencache: cached token was minted for another credential; not serving it",
				"key", e.k.Token, "stored_fingerprint", r.rec.Fingerprint, "our_fingerprint", e.credFP)
		}
		r.found = false
	}
	if r.found && r.rec.Ciphertext != "" {
		tok, err := e.c.cfg.keyring.open(e.k.Token, r.rec)
		if err != nil {
			e.c.log().Error("tokencache: cannot decrypt the cached token", "key", e.k.Token, "key_id", r.rec.KeyID, "err", err)
			return readResult{}, err
		}
		r.rec.AccessToken = tok
	}
	return r, nil
}

// snapshotFor makes the in-memory copy of rec, read at the local time at
// with ttl of validity left on Redis's clock. The copy is served until the
// earlier of that and the value's own expires_at minus the skew on the
// local clock, with maxClockSkew of tolerance for replicas' clocks: a
// replica whose clock is a minute off the writer's neither serves a token
// late nor refreshes one early, and none serves one a Redis clock stretched.
// The token's Expiry is the issuer's expiry as this replica's clock sees
// it: the stored expires_at when the two agree within half the skew, else
// the expiry measured on Redis's clock, so that a served token's Expiry is
// always after the local time.
func (e *entry) snapshotFor(rec record, ttl time.Duration, at time.Time) *snapshot {
	cfg := &e.c.cfg
	base := e.c.monoAt(at)
	life := rec.Lifetime()
	skew := e.skewFor(life)
	exp, _ := rec.Expiry()
	validUntil := min(base+mono(ttl), e.c.monoAt(exp.Add(maxClockSkew-skew)))
	tok := recordToken(rec)
	if measured := at.Add(ttl + skew); absDuration(measured.Sub(exp)) > skew/2 {
		// The end of validity plus the skew: the measured expiry, or less
		// where the local guard cut the validity short.
		validUntil = min(validUntil, e.c.monoAt(measured.Add(-skew)))
		tok.Expiry = e.c.epoch.Add(time.Duration(validUntil) + skew)
	} else {
		validUntil = min(validUntil, e.c.monoAt(exp.Add(-skew/2)))
	}
	// The issuer's expiry on our clock is the validity's end plus the skew
	// the writer took off; refresh-ahead is a share of the issuer's lifetime.
	expiry := validUntil + mono(skew)
	due := expiry - mono(float64(life)*(1-cfg.refreshAhead))
	if cfg.refreshJitter > 0 && due < validUntil {
		// The window never reaches the end of the token's validity: with
		// a high refresh-ahead share some replicas would otherwise draw a
		// moment at the very end, which is no refresh ahead at all.
		window := min(cfg.refreshJitter*float64(life), 0.8*float64(validUntil-due))
		due += mono(e.c.jitterShare(rec.TokenFP) * window)
	}
	due = min(due, validUntil)
	soft := due
	if cfg.l1MaxAge > 0 {
		soft = min(soft, base+mono(cfg.l1MaxAge))
	}
	return &snapshot{tok: tok, gen: rec.Generation, fp: rec.TokenFP, validUntil: validUntil, dueAt: due, softUntil: soft,
		storedMS: rec.StoredMS, born: e.c.monoAt(tok.Expiry.Add(-life))}
}

// validSnapshot is the copy of what r read at the local time at, and
// whether it may still be served then: a value Redis's clock calls valid
// may be past its expiry on this one (the local guard of snapshotFor).
func (e *entry) validSnapshot(r readResult, at time.Time) (*snapshot, bool) {
	s := e.snapshotFor(r.rec, r.pttl, at)
	return s, e.c.monoAt(at) < s.validUntil
}

// served is the copy the entry serves: the in-memory one, or without it
// (WithL1(false)) the one last read.
func (e *entry) served() *snapshot {
	if s := e.l1.Load(); s != nil {
		return s
	}
	return e.last.Load()
}

func absDuration(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}

// install makes s the in-memory copy, unless a newer token that is still
// valid is already there (see snapshot.newer). Installing the same token
// again keeps a hold on its refresh-ahead moment.
func (e *entry) install(s *snapshot) {
	if e.isRejected(s.fp, s.gen) {
		return
	}
	e.clearFailureBelow(s.gen)
	if !e.c.cfg.l1 {
		e.last.Store(s)
		return
	}
	for {
		cur := e.l1.Load()
		n := s
		if cur != nil && cur.fp != s.fp && cur.newer(s) && e.c.monoNow() < cur.validUntil {
			return
		}
		if cur != nil && cur.fp == s.fp && cur.held && cur.softUntil > s.softUntil {
			c := *s
			c.softUntil = min(cur.softUntil, c.validUntil)
			c.dueAt, c.held = max(c.dueAt, c.softUntil), true
			n = &c
		}
		if e.l1.CompareAndSwap(cur, n) {
			e.arm()
			return
		}
	}
}

// arm sets the entry's timer to the next moment of the copy in memory,
// after an install or a put-off (which moves the moment later: a timer
// that already fired would otherwise leave the new moment to the next
// call).
func (e *entry) arm() {
	e.timerMu.Lock()
	defer e.timerMu.Unlock()
	// The copy is loaded under the lock: two arms racing cannot leave the
	// timer set for the older copy's moment.
	s := e.l1.Load()
	if s == nil {
		return
	}
	// A copy marked for a re-check (expireSoft: softUntil the minimum)
	// is due now; the difference must not wrap around.
	now := e.c.monoNow()
	d := time.Duration(max(s.softUntil, now) - now)
	switch {
	case e.stopped:
	case e.timer == nil:
		e.timer = e.c.cfg.clock.AfterFunc(d, e.onTimer)
	default:
		e.timer.Reset(d)
	}
}

// onTimer starts the background work of the copy in memory at its moment
// if callers are using it; an unused copy waits for its next caller.
func (e *entry) onTimer() {
	s := e.l1.Load()
	if s == nil || e.c.closed.Load() {
		return
	}
	now := e.c.monoNow()
	switch {
	case now < s.softUntil:
		e.arm()
	case now < s.validUntil && e.used.Swap(false):
		e.kick()
	}
}

// stopTimer stops the entry's timer for good (the cache closes, or the
// entry leaves the LRU of client tokens).
func (e *entry) stopTimer() {
	e.timerMu.Lock()
	defer e.timerMu.Unlock()
	e.stopped = true
	if e.timer != nil {
		e.timer.Stop()
	}
}

// later keeps background work on the current copy off for at least d
// (Redis is unreachable, a refresh failed, another replica holds the
// lock). It only ever pushes the moment later, never earlier (a newer copy
// installed meanwhile keeps its own moment) and never beyond the copy's
// validity.
func (e *entry) later(d time.Duration) {
	e.putOff(e.c.monoNow()+mono(d), false)
}

// hold is later for another replica's "refreshing": its "refreshed" (or
// "failed") will tell us. A copy is held once, for at most d (the lock
// TTL) and at most half of its remaining validity, after which the replica
// tries again itself whatever it heard: an announcement lost with its
// sender, or forged, cannot keep the fleet from refreshing ahead.
func (e *entry) hold(gen int64, d time.Duration) {
	s := e.l1.Load()
	if s == nil || s.held || gen <= s.gen {
		return
	}
	now := e.c.monoNow()
	e.putOff(now+min(mono(d), (s.validUntil-now)/2), true)
}

func (e *entry) putOff(until mono, held bool) {
	for {
		s := e.l1.Load()
		if s == nil {
			return
		}
		until := min(until, s.validUntil)
		if s.softUntil >= until || (held && s.held) {
			return
		}
		n := *s
		n.softUntil = until
		n.dueAt = max(n.dueAt, until)
		n.held = n.held || held
		if e.l1.CompareAndSwap(s, &n) {
			e.arm()
			return
		}
	}
}

// expireSoft makes the next Token call re-check Redis in the background.
func (e *entry) expireSoft() {
	s := e.l1.Load()
	if s == nil {
		return
	}
	n := *s
	n.softUntil = math.MinInt64
	e.l1.CompareAndSwap(s, &n)
}

// kick starts the background re-check / refresh-ahead, once at a time.
func (e *entry) kick() {
	if e.bgBusy.Load() || !e.bgBusy.CompareAndSwap(false, true) {
		return
	}
	if !e.c.goBackground(func(ctx context.Context) {
		defer e.bgBusy.Store(false)
		e.background(ctx)
	}) {
		e.bgBusy.Store(false)
	}
}

// background re-reads Redis and, if the token is due, refreshes it ahead
// of expiry while callers keep getting the current one.
func (e *entry) background(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, e.c.cfg.refreshTimeout)
	defer cancel()
	cur := e.l1.Load()
	if p := e.pending.Load(); p != nil {
		if !e.writeBack(ctx, p) {
			e.later(jitter(e.c.cfg.waitRecheck))
			return
		}
		cur = e.l1.Load()
	}
	if cur != nil && e.c.monoNow() >= cur.dueAt {
		// Due: try the lock straight away. The holder re-reads under it,
		// so a read first would only tell the replicas that lose the lock
		// what the winner's "refreshed" will tell them anyway.
		e.refreshAhead(ctx, cur)
		return
	}
	at := e.c.now()
	r, err := e.read(ctx, at)
	if err != nil {
		// Redis is unreachable: keep serving memory, try again later.
		e.later(jitter(e.c.cfg.waitRecheck))
		return
	}
	if !r.found {
		// Deleted (an operator, an eviction, an invalidation whose event
		// we missed) or garbage: stop serving the old copy.
		if cur != nil {
			e.l1.CompareAndSwap(cur, nil)
		}
		return
	}
	s := e.snapshotFor(r.rec, r.pttl, at)
	e.install(s)
	now := e.c.monoAt(at)
	// Decide on what we serve: the copy just read, or one newer than
	// Redis's (Redis lost a write, or an event overtook this read). The
	// copy just read came with its own next moment; a newer one gets the
	// one it would have had, or it would send us back here at every call.
	if c := e.l1.Load(); c != nil && c != s {
		s = c
		next := s.dueAt
		if e.c.cfg.l1MaxAge > 0 {
			next = min(next, now+mono(e.c.cfg.l1MaxAge))
		}
		if now < next {
			e.putOff(next, false)
			return
		}
	}
	if now >= s.dueAt {
		e.refreshAhead(ctx, s)
	}
}

// refreshAhead refreshes the token while callers keep getting served, the
// copy that is due: under the lock, unless the fleet is backing off after
// a failure or another replica holds the lock (its event will update us).
func (e *entry) refreshAhead(ctx context.Context, served *snapshot) {
	if d := e.backingOff(); d > 0 {
		// A refresh failed recently, here or anywhere in the fleet: the
		// current token is still good, so wait out the window.
		e.later(d)
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
		e.later(jitter(e.c.cfg.waitRecheck))
		return
	}
	// Under the lock, a token newer than the one we serve (issued later,
	// or in the same millisecond with a higher generation) means someone
	// else refreshed; an older one (Redis lost a write) does not. A
	// failure the re-read learns of from the fleet means waiting out its
	// window, like one known before.
	if _, err := e.refreshLocked(ctx, lease, true, func(r readResult) bool {
		if served.before(r.rec.Generation, r.rec.StoredMS) {
			// Another replica refreshed, and we heard neither its
			// "refreshing" (we would be holding back) nor its "refreshed".
			e.c.suspectSubscription()
			return true
		}
		return e.backingOff() > 0
	}); err != nil {
		e.c.log().Warn("tokencache: refresh ahead failed; serving the current token", "key", e.k.Token, "err", err)
		e.later(e.retryDelay(err))
	} else if d := e.backingOff(); d > 0 {
		e.later(d)
	} else if c := e.l1.Load(); c != nil && c.fp == served.fp {
		// Whatever happened, the token we decided on is still the one
		// served: never come straight back here.
		e.later(jitter(e.c.cfg.waitRecheck))
	}
}

func (e *entry) retryDelay(err error) time.Duration {
	if d := e.backingOff(); d > 0 {
		return d
	}
	return jitter(e.c.cfg.backoffMax)
}

// backingOff is how long the remembered failure's window still runs.
func (e *entry) backingOff() time.Duration {
	e.failMu.Lock()
	defer e.failMu.Unlock()
	if f := e.fail; f != nil && !f.Until.IsZero() {
		return f.Until.Sub(e.c.now())
	}
	return 0
}

// sync re-reads Redis after a "refreshed" event, then wakes the waiters.
func (e *entry) sync() {
	if !e.syncing.CompareAndSwap(false, true) {
		e.syncAgain.Store(true)
		return
	}
	if !e.c.goBackground(func(ctx context.Context) {
		for {
			e.syncAgain.Store(false)
			rctx, cancel := context.WithTimeout(ctx, e.c.cfg.lockTTL)
			_, _, err := e.readAndInstall(rctx)
			cancel()
			e.sig.fire()
			if err == nil && e.syncAgain.Load() {
				continue
			}
			e.syncing.Store(false)
			// An event that arrived between the check above and the
			// store saw syncing still set and only raised syncAgain.
			if err != nil || !e.syncAgain.Load() || !e.syncing.CompareAndSwap(false, true) {
				return
			}
		}
	}) {
		e.syncing.Store(false)
	}
}

// refreshLocked runs with the lock held: re-check Redis, call the issuer,
// write the token fenced by the lease's generation, release. done, if
// not nil, says whether a token found on the re-check makes the refresh
// unnecessary; nil means any usable token does.
func (e *entry) refreshLocked(ctx context.Context, lease *lock.Lease, ahead bool, done func(readResult) bool) (Token, error) {
	defer func() {
		if err := lease.Release(ctx); err != nil {
			e.c.log().Warn("tokencache: lock released late", "key", e.k.Lock, "err", err)
		}
	}()
	// redisDown is for callers with nothing to serve. A refresh ahead
	// (ahead: this replica serves a valid copy meanwhile) that loses Redis
	// gives up and tries again later, without an issuer call outside the
	// lock.
	redisDown := func(err error) (Token, error) {
		if ahead {
			return Token{}, err
		}
		return e.redisDown(ctx, err)
	}
	at := e.c.now()
	r, err := e.read(ctx, at)
	if err != nil {
		return redisDown(err)
	}
	if r.found && (done == nil || done(r)) {
		if s, ok := e.validSnapshot(r, at); ok {
			e.install(s)
			return s.tok, nil
		}
		r.found = false // past its expiry on this clock: refresh it
	}
	if ahead {
		// The re-read may have brought the fleet's last failure: a refresh
		// ahead waits out its window whether or not a token is stored.
		if err := e.negative(); err != nil {
			return Token{}, err
		}
	}
	// A refresh ahead (the fleet still has a valid token) tells the fleet
	// one refresh is under way, so nobody else needs to try.
	gen, spent, err := e.begin(ctx, lease, e.floor(r), true, r.found)
	if err != nil {
		e.c.stats.redisErrors.Add(1)
		return redisDown(err)
	} else if gen < 0 {
		return Token{}, fmt.Errorf("%w: the refresh lock's lease ended before the refresh began", ErrUnavailable)
	}
	// The issuer call stops when the lease is lost (its owner was paused
	// past it, or Redis lost it): another replica may be refreshing by
	// now, and whatever this call returned would be fenced out anyway.
	fctx, stop := leaseContext(ctx, lease)
	tok, err := e.fetch(fctx, false, spent)
	stop()
	if err != nil && errors.Is(lease.Err(), lock.ErrLeaseLost) && ctx.Err() == nil {
		return Token{}, errLeaseTaken
	}
	if err != nil {
		switch {
		case e.c.ctx.Err() != nil:
			return Token{}, ErrClosed // shutting down is not the issuer's failure
		case ctx.Err() != nil:
			// The caller (a cron Refresh) or the refresh's own bound gave
			// up: not the issuer's verdict, so the fleet is not told.
			return Token{}, fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		// The fleet learns of it (its event, and its failure key, which
		// the other replicas check a credential-less event against).
		return Token{}, e.fetchFailed(ctx, err, true)
	}
	// The issuer's latest answer is authoritative: a token invalidated
	// here that it hands out again is served again.
	e.unreject(tok.Fingerprint())
	issued := e.c.now()
	ttl := e.ttlFor(tok, issued)
	rec := newRecord(tok, gen, issued, ttl, e.c.cfg.host, e.credFP)
	w, err := e.write(ctx, lease, &rec, ttl, !r.found)
	for err != nil && e.settle(ctx, err) {
		// A cluster slot is moving: the lease holds; store the token once
		// it has moved, so the fleet needs no other issuer call.
		e.c.stats.redisErrors.Add(1)
		w, err = e.write(ctx, lease, &rec, ttl, !r.found)
	}
	if err != nil {
		// The token is good; Redis is not. Serve it and write it back later.
		e.c.stats.redisErrors.Add(1)
		e.c.log().Warn("tokencache: could not store the new token; serving it from memory", "key", e.k.Token, "err", err)
		e.pending.Store(&tok)
		s := e.snapshotFor(rec, ttl, issued)
		s.softUntil = min(s.validUntil, e.c.monoAt(issued)+mono(jitter(e.c.cfg.waitRecheck)))
		e.install(s)
		return tok, nil
	}
	if !w.Stored {
		// Fenced out: our lease expired and a newer holder exists, or a
		// newer token is stored. Prefer the fleet's token.
		e.c.stats.fenced.Add(1)
		e.c.log().Warn("tokencache: write rejected by fencing; a newer lease or token exists", "key", e.k.Token,
			"generation", gen, "fenced_by", w.FencedBy, "lease_lost", w.LeaseLost)
		if tok2, ok, err := e.readAndInstall(ctx); err == nil && ok {
			return tok2, nil
		}
		// Nothing usable is stored yet: our token is still valid, so
		// serve it from memory while the newer holder finishes.
		s := e.snapshotFor(rec, ttl, issued)
		s.gen = 0
		e.install(s)
		return tok, nil
	}
	e.c.stats.refreshes.Add(1)
	e.c.log().Info("tokencache: token refreshed", "key", e.k.Token, "generation", rec.Generation, "token", tok)
	rec.StoredMS = w.StoredMS
	e.install(e.snapshotFor(rec, ttl, issued))
	return tok, nil
}

// errLeaseTaken: another owner took the refresh lock during the issuer
// call. Callers wait for its token (see obtain).
var errLeaseTaken = fmt.Errorf("%w: another owner took the refresh lock during the issuer call", ErrUnavailable)

// floor is the generation a refresh draws above: the stored token's, or
// the one held in memory if that is newer (Redis lost the write that
// stored it: the next token must still order after it everywhere).
func (e *entry) floor(r readResult) int64 {
	f := r.rec.Generation
	if s := e.l1.Load(); s != nil && s.gen > f {
		f = s.gen
	}
	return f
}

// leaseContext is ctx, cancelled as well when another owner takes the
// lease's lock. A lease that merely expired (the watchdog could not reach
// Redis, say during a failover) goes on: nobody else is refreshing, and
// the write is fenced anyway. Cancel it when done: that also ends its
// watching goroutine.
func leaseContext(ctx context.Context, lease *lock.Lease) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-lease.Lost():
			if errors.Is(lease.Err(), lock.ErrLeaseLost) {
				cancel()
			}
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// write stores rec with its fencing generation under lease and publishes
// "refreshed". If lift is set (the holder found no usable token when it
// re-checked) and the stored value claims a generation at or above ours
// without the fence to back it (a hand edit, or a value written before the
// fence was lost), the fence is lifted past it and the write tried once
// more: garbage must not block writes forever.
func (e *entry) write(ctx context.Context, lease *lock.Lease, rec *record, ttl time.Duration, lift bool) (writeResult, error) {
	for attempt := 0; ; attempt++ {
		stored, err := e.seal(*rec)
		if err != nil {
			return writeResult{}, err
		}
		ev := protocol.Event{Type: protocol.EventRefreshed, Key: e.k.Token, Generation: rec.Generation, By: e.c.cfg.host, Origin: e.c.origin, TokenFP: rec.TokenFP}
		ev.ExpiresAt, _ = rec.Expiry()
		w, err := e.c.st.write(ctx, e.k, stored, ttl, ev, lease.Value())
		if err != nil || !w.Stale || !lift || attempt > 0 {
			return w, err
		}
		r, err := e.c.st.raiseFence(ctx, e.k, rec.Generation, w.FencedBy+1, ttl)
		if err != nil || !r.Raised {
			return writeResult{}, err
		}
		rec.Generation = r.Generation
	}
}

// seal returns rec as it is stored: with the token encrypted when the cache
// has a key ring.
func (e *entry) seal(rec record) (record, error) {
	kr := e.c.cfg.keyring
	if kr == nil {
		return rec, nil
	}
	id, sealed, err := kr.seal(e.k.Token, rec)
	if err != nil {
		return rec, fmt.Errorf("tokencache: encrypting the token: %w", err)
	}
	rec.AccessToken, rec.Ciphertext, rec.KeyID, rec.Seal = "", sealed, id, sealVersion
	return rec, nil
}

// begin draws the lease's fencing generation once the holder has decided
// to write (lifted past the stored token's if the counter fell behind it:
// evicted, or lost in a failover). In the same round trip it counts the
// first issuer call in the budget, if call and the budget key shares the
// token's slot (spent is then the budget's reply), and, if ahead (the
// fleet still has a valid token), announces "refreshing". A negative
// generation means the lease was lost meanwhile.
func (e *entry) begin(ctx context.Context, lease *lock.Lease, floor int64, call, ahead bool) (gen int64, spent *protocol.Budget, err error) {
	var b *budget
	if call && e.k.NSSlot {
		b = e.c.budget
	}
	var ev *protocol.Event
	if ahead {
		ev = &protocol.Event{Type: protocol.EventRefreshing, Key: e.k.Token, By: e.c.cfg.host, Origin: e.c.origin, Credential: e.eventCredential()}
	}
	var res protocol.BeginResult
	gen, err = lease.FenceWith(ctx, func(ctx context.Context) (int64, error) {
		res, err = e.c.st.begin(ctx, e.k, lease.Value(), floor, b, ev)
		if err == nil && res.LeaseLost {
			err = lock.ErrLeaseLost // another owner holds the lock
		}
		return res.Generation, err
	})
	spent = res.Budget
	if errors.Is(err, lock.ErrLeaseLost) || errors.Is(err, lock.ErrLeaseExpired) {
		return -1, nil, nil
	}
	if err == nil && res.Pending() {
		// Where the script could not publish (a user's token in a
		// cluster, or the pub/sub mode unknown yet), the announcement
		// costs a round trip of its own, bounded tightly: a lost one costs
		// only the reads and lock attempts it would have saved.
		actx, cancel := context.WithTimeout(ctx, announceTimeout)
		res.Finish(actx)
		cancel()
	}
	return gen, spent, err
}

// announceTimeout bounds a "refreshing" announcement sent on its own.
const announceTimeout = 250 * time.Millisecond

// ttlFor is the key TTL for tok: its remaining life minus the skew, the
// skew capped at a fifth of the life.
func (e *entry) ttlFor(tok Token, now time.Time) time.Duration {
	life := tok.Expiry.Sub(now)
	return life - e.skewFor(life)
}

func (e *entry) skewFor(life time.Duration) time.Duration {
	return min(e.c.cfg.skew, life/5)
}

func (e *entry) invalidate(ctx context.Context, fp string, gen int64) (bool, error) {
	if fp != "" {
		// Until Redis says which generation it deleted, every copy of the
		// token is rejected: a read racing the deletion must not bring
		// it back.
		e.reject(fp, math.MaxInt64)
	}
	// A token is wanted now: an earlier failure (say, of a refresh ahead)
	// must not stand in the way of the one refetch.
	e.clearFailure()
	e.rej.invalidated(e.c.monoNow())
	var localGen int64
	for {
		s := e.l1.Load()
		if s != nil && s.fp == fp {
			localGen = s.gen
		}
		if s == nil || (fp != "" && s.fp != fp) || (gen != 0 && s.gen != gen) || e.l1.CompareAndSwap(s, nil) {
			break
		}
	}
	if p := e.pending.Load(); p != nil && (fp == "" || p.Fingerprint() == fp) {
		e.pending.CompareAndSwap(p, nil)
	}
	inv, err := e.c.st.invalidate(ctx, e.k, fp, gen)
	ok, deleted := inv.Deleted, inv.Generation
	if fp != "" {
		// The rejection ends at the generation deleted (or asked for):
		// the same token stored again later, by an issuer that hands it
		// out again, is served.
		// (If Redis did not answer, the rejection stands until the issuer
		// next returns the token.)
		upTo := max(deleted, gen, localGen)
		if r := e.rejected.Load(); err == nil && r != nil && r.fp == fp {
			e.rejected.CompareAndSwap(r, &rejection{fp: fp, gen: upTo})
		}
	}
	if ok {
		e.c.log().Info("tokencache: token invalidated", "key", e.k.Token, "token_fp", fp)
	}
	return ok, err
}

func (e *entry) offer(ctx context.Context, tok Token) (bool, error) {
	if err := e.check(tok); err != nil {
		return false, err
	}
	issued := e.c.now()
	ttl := e.ttlFor(tok, issued)
	rec := newRecord(tok, 0, issued, ttl, e.c.cfg.host, e.credFP)
	// The generation is drawn first, then the token sealed with it (the
	// encryption binds the generation) and stored if nobody drew a newer
	// one meanwhile: a concurrent offer of a token that expires later
	// draws again, one that expires earlier gives up.
	for attempt := 0; attempt < 3; attempt++ {
		d, err := e.c.st.offerDraw(ctx, e.k, rec.ExpiresAt, rec.Fingerprint, ttl)
		if err != nil || d.NotNewer {
			return false, err
		}
		gen := d.Generation
		rec.Generation = gen
		ev := protocol.Event{Type: protocol.EventRefreshed, Key: e.k.Token, Generation: gen, By: e.c.cfg.host, Origin: e.c.origin, TokenFP: rec.TokenFP}
		ev.ExpiresAt, _ = rec.Expiry()
		stored, err := e.seal(rec)
		if err != nil {
			return false, err
		}
		o, err := e.c.st.offer(ctx, e.k, stored, ttl, ev)
		if err != nil || o.NotNewer {
			return false, err
		}
		if o.Stored {
			rec.StoredMS = o.StoredMS
			e.install(e.snapshotFor(rec, ttl, issued))
			return true, nil
		}
	}
	return false, nil
}

func (e *entry) refreshNow(ctx context.Context, minTTL time.Duration, force bool) (RefreshResult, error) {
	res := RefreshResult{Key: e.k.Token}
	at := e.c.now()
	r, err := e.read(ctx, at)
	if err != nil {
		return res, err
	}
	// Fresh: at least minTTL left, on Redis's clock and on ours (the
	// snapshot's validity is capped by both).
	fresh := func(r readResult) bool {
		if !r.found || r.pttl < minTTL {
			return false
		}
		now := e.c.now()
		s, _ := e.validSnapshot(r, now)
		return s.validUntil-e.c.monoAt(now) >= mono(minTTL)
	}
	if !force && fresh(r) {
		s, _ := e.validSnapshot(r, at)
		res.Generation, res.ExpiresIn, res.Token = r.rec.Generation, r.pttl, s.tok
		e.install(s)
		return res, nil
	}
	seen := r.rec.Generation
	lease, err := e.c.locker.Acquire(ctx, e.k.Lock)
	if err != nil {
		return res, &RedisError{Op: "lock", Key: e.k.Lock, Err: err}
	}
	before := e.c.stats.refreshes.Load()
	tok, err := e.refreshLocked(ctx, lease, false, func(r readResult) bool {
		// Someone else refreshed while we queued for the lock.
		return fresh(r) && (!force || r.rec.Generation != seen)
	})
	if err != nil {
		return res, err
	}
	res.Refreshed = e.c.stats.refreshes.Load() > before
	res.Token = tok
	if r, err := e.read(ctx, e.c.now()); err == nil && r.found {
		res.Generation, res.ExpiresIn = r.rec.Generation, r.pttl
	}
	return res, nil
}

func (e *entry) inspect(ctx context.Context) (Status, error) {
	st := Status{Key: e.k.Token, LockKey: e.k.Lock, FenceKey: e.k.Fence, Channel: e.k.Channel}
	r, err := e.c.st.read(ctx, e.k.Token, e.c.now())
	if err != nil {
		return st, err
	}
	pipe := e.c.rdb.Pipeline()
	lockTTL := pipe.PTTL(ctx, e.k.Lock)
	fence := pipe.Get(ctx, e.k.Fence)
	_, _ = pipe.Exec(ctx)
	if d, err := lockTTL.Result(); err == nil && d > 0 {
		st.LockHeld, st.LockTTL = true, d
	}
	if n, err := fence.Int64(); err == nil {
		st.Fence = n
	}
	if r.bad != nil {
		st.Problem = r.bad.Error()
	}
	if f := r.failed; f != nil {
		st.LastFailure = f.Code
		if f.Message != "" {
			st.LastFailure += ": " + f.Message
		}
		st.FailureTTL = f.Until.Sub(e.c.now())
	}
	if r.found || r.rec.AccessToken != "" || r.rec.Ciphertext != "" {
		st.Found = r.found
		st.Generation = r.rec.Generation
		st.TokenType = r.rec.TokenType
		st.ExpiresAt, _ = r.rec.Expiry()
		st.IssuedAt, _ = time.Parse(time.RFC3339Nano, r.rec.IssuedAt)
		st.TTL = r.pttl
		st.RefreshedBy = r.rec.RefreshedBy
		st.Fingerprint = r.rec.Fingerprint
		st.TokenFingerprint = r.rec.TokenFP
		st.KeyID = r.rec.KeyID
	}
	return st, nil
}
