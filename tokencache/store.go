package tokencache

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/tokencache/internal/protocol"
)

// This file is the cache's side of the Redis boundary: the protocol
// (keys, the stored record, the scripts, pub/sub) lives in
// internal/protocol; here a Token becomes a record and back, and the
// protocol's results and errors become this package's (*RedisError,
// *ValueError, *FetchError). Nothing above it imports go-redis error
// values.

type (
	keys        = protocol.Keys
	record      = protocol.Record
	failure     = protocol.Failure
	writeResult = protocol.WriteResult
)

// maxClockSkew is how far a replica's clock may be off the clock of the
// replica that wrote a token (see protocol.MaxClockSkew).
const maxClockSkew = protocol.MaxClockSkew

func newRecord(t Token, gen int64, issued time.Time, ttl time.Duration, by, credFP string) record {
	return record{
		TTLMS:       ttl.Milliseconds(),
		AccessToken: t.AccessToken,
		TokenType:   t.typ(),
		ExpiresAt:   t.Expiry.UTC().Format(protocol.ExpiryLayout),
		IssuedAt:    issued.UTC().Format(protocol.ExpiryLayout),
		Generation:  gen,
		RefreshedBy: by,
		Fingerprint: credFP,
		TokenFP:     t.Fingerprint(),
	}
}

// recordToken is the token r holds (its access token as stored: opened
// by the caller when sealed).
func recordToken(r record) Token {
	exp, _ := r.Expiry()
	return Token{AccessToken: r.AccessToken, TokenType: r.TokenType, Expiry: exp}
}

// valueError is err, a *protocol.RecordError or nil, as a *ValueError.
func valueError(err error) error {
	if re, ok := err.(*protocol.RecordError); ok && re != nil {
		return &ValueError{Key: re.Key, Reason: re.Reason}
	}
	return err
}

// readKind is what a read of a token key found.
type readKind uint8

const (
	// readMissing: no key, a key without a TTL, or a record whose key
	// outlives its token's life.
	readMissing readKind = iota
	// readLoaded: a token this replica may serve.
	readLoaded
	// readGarbage: a value that is not a record (bad says why).
	readGarbage
	// readForeign: a token minted for another credential: a miss to
	// refetch and overwrite.
	readForeign
	// readRejected: the token this replica invalidated (see
	// memory.rejected): a miss.
	readRejected
	// readSealed: a token this replica's key ring cannot open (bad is the
	// *KeyError): this replica's problem, not the token's, so it is
	// neither served nor overwritten.
	readSealed
)

// readResult is one read of a token key: what it found (kind) and whether
// the fleet's last refresh failed (failed). A read that Redis did not
// answer is the store's one error instead, a *RedisError.
type readResult struct {
	kind readKind
	rec  record
	// pttl is how long the token is still served, on Redis's clock (see
	// protocol.ReadResult.PTTL).
	pttl   time.Duration
	bad    error       // readGarbage: a *ValueError; readSealed: a *KeyError
	failed *FetchError // the fleet's last refresh failure, while in its window
	// apiRejected: the fleet's evidence that the API rejects fresh tokens
	// (see apiRejectedFresh), while in its window; set by entry.read.
	apiRejected *FetchError
	// failedCred and failedStreak: the credential that failed and the
	// fleet's count of failed refreshes in a row.
	failedCred   string
	failedStreak int32
	// ticket orders the read against Redis's "absent" answers (see
	// snapshot.ticket); sent and arrived are the local times the request
	// left and its reply came (set by entry.read).
	ticket        uint64
	sent, arrived time.Time
}

// loaded reports whether r found a token this replica may serve.
func (r *readResult) loaded() bool { return r.kind == readLoaded }

// store runs the protocol for a Cache. Every operation goes through do:
// a cluster slot that is moving (the command or script did not run) is
// waited out and tried again until the context ends, so the core sees
// either Redis's answer or the one error, a *RedisError, counted once.
type store struct {
	p           *protocol.Client
	ps          *protocol.PubSub
	log         *slog.Logger
	stats       *counters
	wait        time.Duration // mean wait before trying a moving slot again
	timeRefused atomic.Bool   // logged that Redis refuses TIME
	// replied, when set (by tests), is called with each read's reply in
	// hand, before it is returned: a seam to hold a read between its
	// reply and its install.
	replied atomic.Pointer[func()]
}

// newStore returns the store over rdb; sharded is the choice of
// withShardedPubSub, a test hook (0 auto, 1 sharded, -1 classic); wait is
// the mean wait before a command a moving slot refused is tried again.
func newStore(rdb redis.UniversalClient, sharded int8, log *slog.Logger, stats *counters, wait time.Duration) *store {
	want := protocol.ModeAuto
	switch {
	case sharded > 0:
		want = protocol.ModeSharded
	case sharded < 0:
		want = protocol.ModeClassic
	}
	ps := protocol.NewPubSub(rdb, want, log)
	return &store{p: protocol.NewClient(rdb, ps), ps: ps, log: log, stats: stats, wait: wait}
}

// do runs f, which sends one operation (op, on key) to Redis, until Redis
// answers it: a moving cluster slot (see isTransient) is waited out, and f
// tried again, until ctx ends. Any other failure, or a slot still moving
// when ctx ends, is returned as a *RedisError and counted once, in
// Stats.RedisErrors; each wait is counted in Stats.TransientWaits and
// logged at debug level on the 1st, 2nd, 4th, 8th… of a Cache.
func (s *store) do(ctx context.Context, op, key string, f func(context.Context) error) error {
	for {
		err := f(ctx)
		if err == nil {
			return nil
		}
		if !protocol.Moving(err) || !s.settle(ctx, key, err) {
			s.stats.redisErrors.Add(1)
			return &RedisError{Op: op, Key: key, Err: err}
		}
	}
}

// settle waits out a moving slot's refusal err of a command on key, and
// reports false at once if ctx ends first.
func (s *store) settle(ctx context.Context, key string, err error) bool {
	if ctx.Err() != nil {
		return false
	}
	if n := s.stats.transient.Add(1); n&(n-1) == 0 {
		s.log.Debug("tokencache: redis cluster slot moving or node not ready; waiting and trying again",
			"key", key, "waits", n, "err", err)
	}
	t := time.NewTimer(jitter(s.wait))
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// read fetches the value and PTTL of key in one round trip. A missing key,
// or one without a TTL, or one holding garbage, is reported as not found
// (with bad set for garbage); only Redis failures are errors.
func (s *store) read(ctx context.Context, key string, now time.Time) (readResult, error) {
	var res protocol.ReadResult
	err := s.do(ctx, "read", key, func(ctx context.Context) (err error) {
		res, err = s.p.Read(ctx, key, now)
		if f := s.replied.Load(); f != nil {
			(*f)()
		}
		return err
	})
	if err != nil {
		return readResult{}, err
	}
	if res.TimeRefused && s.timeRefused.CompareAndSwap(false, true) {
		s.log.Warn("tokencache: Redis refused TIME (an ACL rule without +time?); token ages are measured on the key's PTTL alone, which a PEXPIRE or a lagging node can stretch",
			"key", key)
	}
	out := readResult{rec: res.Record, pttl: res.PTTL}
	switch {
	case res.Found:
		out.kind = readLoaded
	case res.Bad != nil:
		out.kind, out.bad = readGarbage, valueError(res.Bad)
	}
	if f := res.Failure; f != nil {
		out.failed = &FetchError{Code: f.Code, Message: f.Message, Retryable: f.Retryable, Remote: true, Until: now.Add(res.FailureTTL)}
		out.failedCred, out.failedStreak = f.Fingerprint, f.Streak
	}
	return out, nil
}

// takeBudget counts one issuer call in the fleet's budget spec.
func (s *store) takeBudget(ctx context.Context, spec protocol.BudgetSpec) (protocol.Budget, error) {
	var res protocol.Budget
	err := s.do(ctx, "budget", spec.Key, func(ctx context.Context) (err error) {
		res, err = s.p.TakeBudget(ctx, spec)
		return err
	})
	return res, err
}

// remember stores the fleet's last refresh failure for window.
func (s *store) remember(ctx context.Context, k keys, f failure, window time.Duration) error {
	return s.do(ctx, "remember failure", k.Failed, func(ctx context.Context) error {
		return s.p.Remember(ctx, k, f, window)
	})
}

// markAccepted records, for ttl, that the API accepted the token tokenFP
// stored under k with generation gen (see protocol.Client.MarkAccepted).
func (s *store) markAccepted(ctx context.Context, k keys, gen int64, tokenFP string, ttl time.Duration) error {
	key := k.AcceptedKey(gen)
	return s.do(ctx, "mark accepted", key, func(ctx context.Context) error {
		return s.p.MarkAccepted(ctx, k, gen, tokenFP, ttl)
	})
}

// accepted reports whether the fleet recorded that the API accepted the
// token tokenFP stored under k with generation gen.
func (s *store) accepted(ctx context.Context, k keys, gen int64, tokenFP string) (bool, error) {
	var ok bool
	key := k.AcceptedKey(gen)
	err := s.do(ctx, "read accepted", key, func(ctx context.Context) (err error) {
		ok, err = s.p.Accepted(ctx, k, gen, tokenFP)
		return err
	})
	return ok, err
}

// write stores rec (sealed) under the lease whose lock value is lease and
// publishes ev (see protocol.Client.Write).
func (s *store) write(ctx context.Context, k keys, rec record, ttl time.Duration, ev protocol.Event, lease string) (writeResult, error) {
	var w writeResult
	err := s.do(ctx, "write", k.Token, func(ctx context.Context) (err error) {
		w, err = s.p.Write(ctx, k, rec, ttl, ev, lease)
		return err
	})
	return w, err
}

// begin draws a generation above floor for a refresh of k under the lease
// whose lock value is lease. If b is not nil the first issuer call is
// counted (res.Budget); if announce is not nil it is published with the
// generation drawn, by the script or, where it cannot, by res.Finish,
// which the caller runs once it no longer holds anything up.
func (s *store) begin(ctx context.Context, k keys, lease string, floor int64, b *budget, announce *protocol.Event) (protocol.BeginResult, error) {
	a := protocol.BeginArgs{Lease: lease, Floor: floor, Announce: announce}
	if b != nil {
		a.Budget = &protocol.BudgetSpec{Key: b.key, Limit: b.limit, Window: b.window}
	}
	var res protocol.BeginResult
	err := s.do(ctx, "fence", k.Fence, func(ctx context.Context) (err error) {
		res, err = s.p.Begin(ctx, k, a)
		return err
	})
	return res, err
}

// raiseFence lifts k's fence to want unless a lease newer than ours drew.
func (s *store) raiseFence(ctx context.Context, k keys, ours, want int64, ttl time.Duration) (protocol.Raise, error) {
	var r protocol.Raise
	err := s.do(ctx, "fence", k.Fence, func(ctx context.Context) (err error) {
		r, err = s.p.RaiseFence(ctx, k, ours, want, ttl)
		return err
	})
	return r, err
}

// offerDraw draws the generation of a rotated token that expires at
// expiresAt, unless the stored token expires as late or later.
func (s *store) offerDraw(ctx context.Context, k keys, expiresAt, credFP string, ttl time.Duration) (protocol.Draw, error) {
	var d protocol.Draw
	err := s.do(ctx, "offer", k.Fence, func(ctx context.Context) (err error) {
		d, err = s.p.OfferDraw(ctx, k, expiresAt, credFP, ttl)
		return err
	})
	return d, err
}

// offer stores rec, whose generation offerDraw drew, and publishes ev.
func (s *store) offer(ctx context.Context, k keys, rec record, ttl time.Duration, ev protocol.Event) (protocol.OfferResult, error) {
	var o protocol.OfferResult
	err := s.do(ctx, "offer", k.Token, func(ctx context.Context) (err error) {
		o, err = s.p.Offer(ctx, k, rec, ttl, ev)
		return err
	})
	return o, err
}

// invalidate deletes k's token if it is still the one with fingerprint
// tokenFP ("": any) and generation gen (0: any).
func (s *store) invalidate(ctx context.Context, k keys, tokenFP string, gen int64) (protocol.InvalidateResult, error) {
	var r protocol.InvalidateResult
	err := s.do(ctx, "invalidate", k.Token, func(ctx context.Context) (err error) {
		r, err = s.p.Invalidate(ctx, k, tokenFP, gen)
		return err
	})
	return r, err
}

// publish sends ev on channel, sharded where the cache's pub/sub is.
func (s *store) publish(ctx context.Context, channel string, ev protocol.Event) error {
	return s.do(ctx, "publish", channel, func(ctx context.Context) error {
		return s.p.Publish(ctx, channel, ev)
	})
}
