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

// readResult is one read of a token key.
type readResult struct {
	rec record
	// pttl is how long the token is still served, on Redis's clock (see
	// protocol.ReadResult.PTTL).
	pttl   time.Duration
	found  bool        // a usable record
	stale  bool        // a record whose key outlives its token's life
	bad    error       // *ValueError when the key holds garbage
	failed *FetchError // the fleet's last refresh failure, while in its window
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

// store runs the protocol for a Cache.
type store struct {
	p           *protocol.Client
	ps          *protocol.PubSub
	log         *slog.Logger
	timeRefused atomic.Bool // logged that Redis refuses TIME
	// replied, when set (by tests), is called with each read's reply in
	// hand, before it is returned: a seam to hold a read between its
	// reply and its install.
	replied atomic.Pointer[func()]
}

// newStore returns the store over rdb; sharded is WithShardedPubSub's
// choice (0 auto, 1 sharded, -1 classic).
func newStore(rdb redis.UniversalClient, sharded int8, log *slog.Logger) *store {
	want := protocol.ModeAuto
	switch {
	case sharded > 0:
		want = protocol.ModeSharded
	case sharded < 0:
		want = protocol.ModeClassic
	}
	ps := protocol.NewPubSub(rdb, want, log)
	return &store{p: protocol.NewClient(rdb, ps), ps: ps, log: log}
}

// read fetches the value and PTTL of key in one round trip. A missing key,
// or one without a TTL, or one holding garbage, is reported as not found
// (with bad set for garbage); only Redis failures are errors.
func (s *store) read(ctx context.Context, key string, now time.Time) (readResult, error) {
	res, err := s.p.Read(ctx, key, now)
	if f := s.replied.Load(); f != nil {
		(*f)()
	}
	if err != nil {
		return readResult{}, &RedisError{Op: "read", Key: key, Err: err}
	}
	if res.TimeRefused && s.timeRefused.CompareAndSwap(false, true) {
		s.log.Warn("tokencache: Redis refused TIME (an ACL rule without +time?); token ages are measured on the key's PTTL alone, which a PEXPIRE or a lagging node can stretch",
			"key", key)
	}
	out := readResult{rec: res.Record, pttl: res.PTTL, found: res.Found, stale: res.Stale}
	if res.Bad != nil {
		out.bad = valueError(res.Bad)
	}
	if f := res.Failure; f != nil {
		out.failed = &FetchError{Code: f.Code, Message: f.Message, Retryable: f.Retryable, Remote: true, Until: now.Add(res.FailureTTL)}
		out.failedCred, out.failedStreak = f.Fingerprint, f.Streak
	}
	return out, nil
}

// remember stores the fleet's last refresh failure for window.
func (s *store) remember(ctx context.Context, k keys, f failure, window time.Duration) error {
	if err := s.p.Remember(ctx, k, f, window); err != nil {
		return &RedisError{Op: "remember failure", Key: k.Failed, Err: err}
	}
	return nil
}

// write stores rec (sealed) under the lease whose lock value is lease and
// publishes ev (see protocol.Client.Write).
func (s *store) write(ctx context.Context, k keys, rec record, ttl time.Duration, ev protocol.Event, lease string) (writeResult, error) {
	w, err := s.p.Write(ctx, k, rec, ttl, ev, lease)
	if err != nil {
		return writeResult{}, &RedisError{Op: "write", Key: k.Token, Err: err}
	}
	return w, nil
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
	res, err := s.p.Begin(ctx, k, a)
	if err != nil {
		return res, &RedisError{Op: "fence", Key: k.Fence, Err: err}
	}
	return res, nil
}

// raiseFence lifts k's fence to want unless a lease newer than ours drew.
func (s *store) raiseFence(ctx context.Context, k keys, ours, want int64, ttl time.Duration) (protocol.Raise, error) {
	r, err := s.p.RaiseFence(ctx, k, ours, want, ttl)
	if err != nil {
		return r, &RedisError{Op: "fence", Key: k.Fence, Err: err}
	}
	return r, nil
}

// offerDraw draws the generation of a rotated token that expires at
// expiresAt, unless the stored token expires as late or later.
func (s *store) offerDraw(ctx context.Context, k keys, expiresAt, credFP string, ttl time.Duration) (protocol.Draw, error) {
	d, err := s.p.OfferDraw(ctx, k, expiresAt, credFP, ttl)
	if err != nil {
		return d, &RedisError{Op: "offer", Key: k.Fence, Err: err}
	}
	return d, nil
}

// offer stores rec, whose generation offerDraw drew, and publishes ev.
func (s *store) offer(ctx context.Context, k keys, rec record, ttl time.Duration, ev protocol.Event) (protocol.OfferResult, error) {
	o, err := s.p.Offer(ctx, k, rec, ttl, ev)
	if err != nil {
		return o, &RedisError{Op: "offer", Key: k.Token, Err: err}
	}
	return o, nil
}

// invalidate deletes k's token if it is still the one with fingerprint
// tokenFP ("": any) and generation gen (0: any).
func (s *store) invalidate(ctx context.Context, k keys, tokenFP string, gen int64) (protocol.InvalidateResult, error) {
	r, err := s.p.Invalidate(ctx, k, tokenFP, gen)
	if err != nil {
		return r, &RedisError{Op: "invalidate", Key: k.Token, Err: err}
	}
	return r, nil
}

// publish sends ev on channel, sharded where the cache's pub/sub is.
func (s *store) publish(ctx context.Context, channel string, ev protocol.Event) error {
	if err := s.p.Publish(ctx, channel, ev); err != nil {
		return &RedisError{Op: "publish", Key: channel, Err: err}
	}
	return nil
}
