package tokencache

import (
	"context"
	"time"

	"github.com/tokencache/tokencache/tokencache/internal/protocol"
)

// This file is one cached token (the server token, or one user's client
// token) and the operations a Handle calls on it: Token (see caller.go),
// Invalidate, Offer, Refresh and Inspect. Its parts, each in its own
// file:
//
//	caller.go     a caller's path: memory, then one shared flight that reads
//	              Redis, takes the lock and refreshes, or waits
//	read.go       a Redis read made into the in-memory copy, and install
//	memory.go     the in-memory copy: its order, its moments, rejections
//	refresh.go    the refresh under the lock and the one fenced write path
//	issuer.go     the issuer call: retries, budget, failures told to the fleet
//	failure.go    the failure memory and its back-off window
//	scheduler.go  the timer, background re-checks and refresh-ahead
//	onevent.go    what the fleet's events do to this token; waking waiters
//	credential.go whose token it is

// entry is one cached token: the server token, or one user's client token.
type entry struct {
	c *Cache
	k keys

	mem   memory     // the copy served
	fails failures   // the last failed refresh and its window
	sched scheduler  // the timer and the background work
	rf    refresher  // refresh under the lock, the fenced write, write-back
	iss   issuer     // the Fetcher, its retries and budget
	cred  credential // whose token it is
	sig   *signal    // wakes waiters: a token or a failure arrived
}

// newEntry is the entry for the token at keys k that f fetches.
func (c *Cache) newEntry(k keys, f Fetcher) *entry {
	e := &entry{c: c, k: k, sig: newSignal()}
	e.cred = credential{f: f, kr: c.cfg.keyring}
	e.mem = memory{keep: c.cfg.l1, now: c.monoNow, moved: e.sched.arm}
	e.fails = failures{m: &e.mem, sig: e.sig, now: c.now, negativeTTL: c.cfg.negativeTTL, backoffMax: c.cfg.backoffMax}
	e.sched.e = e
	e.sched.work.init(e.sched.runJobs, c.goBackground)
	e.rf.e = e
	e.iss = issuer{c: c, k: k, f: f, cred: &e.cred, fails: &e.fails}
	return e
}

// invalidate deletes the token fp (any, if empty) at generation gen (any,
// if 0) here and in Redis, and rejects it until Redis says which
// generation it deleted (see Handle.Invalidate).
func (e *entry) invalidate(ctx context.Context, fp string, gen int64) (bool, error) {
	known := e.mem.invalidating(fp, gen)
	// A caller that comes now must not join a flight that read the token
	// before it was invalidated: it starts its own.
	e.c.sf.Forget(e.k.Token)
	// A token is wanted now: an earlier failure (say, of a refresh ahead)
	// must not stand in the way of the one refetch.
	e.fails.clear()
	e.mem.dropPending(fp)
	inv, err := e.c.st.invalidate(ctx, e.k, fp, gen)
	if fp != "" && err == nil {
		// The rejection ends at the generation deleted (or asked for, or
		// known here): the same token stored again later, by an issuer
		// that hands it out again, is served. (If Redis did not answer,
		// the rejection stands until the issuer next returns the token.)
		e.mem.bound(fp, max(inv.Generation, gen, known))
	}
	if inv.Deleted {
		e.c.log().Info("tokencache: token invalidated", "key", e.k.Token, "token_fp", fp)
	}
	return inv.Deleted, err
}

// offer stores tok, obtained outside the cache, if it expires later than
// the token stored (see Handle.Offer).
func (e *entry) offer(ctx context.Context, tok Token) (bool, error) {
	if err := e.iss.check(tok); err != nil {
		return false, err
	}
	issued := e.c.now()
	rec, ttl := e.rf.record(tok, 0, issued)
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
		stored, err := e.rf.seal(rec)
		if err != nil {
			return false, err
		}
		o, err := e.c.st.offer(ctx, e.k, stored, ttl, ev)
		if err != nil || o.NotNewer {
			return false, err
		}
		if o.Stored {
			rec.StoredMS = o.StoredMS
			e.install(e.stored(rec, ttl, issued))
			return true, nil
		}
	}
	return false, nil
}

// refreshNow refreshes the token under the lock unless minTTL of it
// remains, or always with force (see Handle.Refresh).
func (e *entry) refreshNow(ctx context.Context, minTTL time.Duration, force bool) (RefreshResult, error) {
	res := RefreshResult{Key: e.k.Token}
	r, err := e.read(ctx)
	if err != nil {
		return res, err
	}
	if r.kind == readSealed {
		return res, r.bad // this replica's keys: no refresh overwrites the fleet's token
	}
	// Fresh: at least minTTL left, on Redis's clock and on ours (the
	// snapshot's validity is capped by both).
	fresh := func(r readResult) bool {
		if !r.loaded() || r.pttl < minTTL {
			return false
		}
		s, _ := e.validSnapshot(r)
		return s.validUntil-e.c.monoNow() >= mono(minTTL)
	}
	if !force && fresh(r) {
		s, _ := e.validSnapshot(r)
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
	tok, err := e.rf.refresh(ctx, lease, forCron, func(r readResult) bool {
		// Someone else refreshed while we queued for the lock.
		return fresh(r) && (!force || r.rec.Generation != seen)
	})
	if err != nil {
		return res, err
	}
	res.Refreshed = e.c.stats.refreshes.Load() > before
	res.Token = tok
	if r, err := e.read(ctx); err == nil && r.loaded() {
		res.Generation, res.ExpiresIn = r.rec.Generation, r.pttl
	}
	return res, nil
}

// inspect reads the stored token's metadata, the lock and the fence
// (see Handle.Inspect).
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
	if r.loaded() || r.rec.AccessToken != "" || r.rec.Ciphertext != "" {
		st.Found = r.loaded()
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
