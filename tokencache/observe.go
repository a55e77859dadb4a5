package tokencache

import (
	"context"
	"errors"
	"net/http"

	"github.com/tokencache/tokencache/lock"
)

// This file is the observer seam: the steps of the slow path an Observer
// is told of, what it is told, and the one place the core calls it
// (observe). A token served from memory is no step: the hot path calls no
// observer. The OpenTelemetry adapter (tokencache/tokencacheotel) makes
// spans and metrics from it, in a module of its own: this package imports
// no telemetry library.

// Op names a step of the slow path.
type Op uint8

// The steps an Observer is told of.
const (
	// OpRedisRead is one read of the token's value from Redis. Result:
	// ResultFound, ResultAbsent or ResultError; Generation: the stored
	// token's, if found.
	OpRedisRead Op = iota + 1
	// OpLock is one attempt at the token's refresh lock, by a caller
	// that found no token. Result: ResultAcquired, ResultContended or
	// ResultError.
	OpLock
	// OpRefresh is a refresh under the lock (a caller's, a cron
	// Refresh's, or one ahead of expiry): the re-read, the issuer calls
	// and the write. Result: ResultOK or ResultError, with the failure's
	// Code; Generation: the token served after it, when known.
	OpRefresh
	// OpIssuerCall is one call of the Fetcher (each retry is one). Result:
	// ResultOK or ResultError, with Code the issuer's error code (an
	// error's ErrorCode method), or "timeout" for a deadline, or "" when
	// the error says neither.
	OpIssuerCall
	// OpWrite is one fenced write of a new token to Redis. Result:
	// ResultStored, ResultFenced (a newer lease or token exists) or
	// ResultError; Generation: the token's.
	OpWrite
	// OpWait is a caller's wait for another replica's refresh. Result:
	// ResultEvent (an event woke it), ResultRecheck (its re-check timer
	// fired first) or ResultCanceled (its context ended).
	OpWait
	// OpUnauthorized is Transport's handling of a 401 from the API: the
	// invalidation, the new token and the retry. Result: ResultRetried
	// (the retry was not rejected), ResultRejected (the retry got a 401
	// too), ResultReturned (the 401 went back to the caller unretried:
	// held as evidence against the API, a body that cannot be sent
	// again, or no new token) or ResultError (the retry failed to send).
	OpUnauthorized
)

var opNames = [...]string{
	OpRedisRead:    "redis_read",
	OpLock:         "lock",
	OpRefresh:      "refresh",
	OpIssuerCall:   "issuer_call",
	OpWrite:        "write",
	OpWait:         "wait",
	OpUnauthorized: "unauthorized",
}

// String returns the step's name in snake case ("redis_read", "lock",
// "refresh", "issuer_call", "write", "wait", "unauthorized").
func (o Op) String() string {
	if int(o) < len(opNames) && opNames[o] != "" {
		return opNames[o]
	}
	return "unknown"
}

// Ops lists every Op, in the order of a refresh.
func Ops() []Op {
	return []Op{OpRedisRead, OpLock, OpRefresh, OpIssuerCall, OpWrite, OpWait, OpUnauthorized}
}

// The tiers of Step.Tier.
const (
	TierServer = "server" // the cache's server token
	TierClient = "client" // a user's client token (Cache.User)
)

// The results of Outcome.Result, by Op (see each Op).
const (
	ResultOK        = "ok"
	ResultError     = "error"
	ResultFound     = "found"
	ResultAbsent    = "absent"
	ResultAcquired  = "acquired"
	ResultContended = "contended"
	ResultStored    = "stored"
	ResultFenced    = "fenced"
	ResultEvent     = "event"
	ResultRecheck   = "recheck"
	ResultCanceled  = "canceled"
	ResultRetried   = "retried"
	ResultRejected  = "rejected"
	ResultReturned  = "returned"
)

// A Step is a step of the slow path as it begins. It holds nothing
// secret: no token, no user id, no credential and no fingerprint, so an
// observer may record all of it.
type Step struct {
	Op        Op
	Namespace string // the cache's namespace
	Tier      string // TierServer or TierClient
}

// An Outcome is how a step ended. Like Step, it holds nothing secret.
type Outcome struct {
	Result string // one of the Result constants; see each Op for which
	// Code is the error code of a failed issuer call (see OpIssuerCall)
	// or refresh (FetchError.Code), else "".
	Code string
	// Generation is the fencing generation of the token the step read,
	// wrote or served, when known; else 0.
	Generation int64
}

// An Observer is told of the steps of a cache's slow path: each Redis read,
// lock attempt, refresh, issuer call, write, wait for another replica, and
// Transport's handling of a 401. It is never told of a token served from
// memory, which stays one atomic load.
//
// Start is called as a step begins, with the context the step runs under.
// It returns the context the step goes on with (one carrying a span, say,
// so that the Redis commands and the Fetcher's requests made during the
// step see it as their parent) and the function the cache calls exactly
// once when the step ends. Both must be safe for concurrent use and must
// not block: they run on the callers' path.
type Observer interface {
	Start(ctx context.Context, s Step) (context.Context, func(Outcome))
}

// ObserverFunc adapts a function to an Observer.
type ObserverFunc func(ctx context.Context, s Step) (context.Context, func(Outcome))

// Start calls f.
func (f ObserverFunc) Start(ctx context.Context, s Step) (context.Context, func(Outcome)) {
	return f(ctx, s)
}

// WithObserver adds o, told of every step of the cache's slow path (see
// Observer). It may be given more than once: each observer is told in
// turn, each starting from the context the one before returned. Default:
// none. With an observer, the work a Token call shares with the process's
// other callers (the reads, the lock, the refresh) runs under a context
// that carries the values (the span) of the caller that started it, so
// that its steps appear in that caller's trace; it is still ended by
// Close and the refresh timeout only, never by that caller giving up.
func WithObserver(o Observer) Option {
	return func(c *config) error {
		if o == nil {
			return errors.New("tokencache: WithObserver: nil observer")
		}
		if c.observer == nil {
			c.observer = o
		} else {
			c.observer = observers{c.observer, o}
		}
		return nil
	}
}

// observers tells two observers of each step, the second under the
// context the first returned.
type observers [2]Observer

func (obs observers) Start(ctx context.Context, s Step) (context.Context, func(Outcome)) {
	ctx, end0 := startStep(obs[0], ctx, s)
	ctx, end1 := startStep(obs[1], ctx, s)
	return ctx, func(o Outcome) {
		end1(o)
		end0(o)
	}
}

// ignoreOutcome ends a step nobody observes.
func ignoreOutcome(Outcome) {}

// startStep starts s with o, tolerating an observer that returns no
// context or no end function.
func startStep(o Observer, ctx context.Context, s Step) (context.Context, func(Outcome)) {
	octx, end := o.Start(ctx, s)
	if octx == nil {
		octx = ctx
	}
	if end == nil {
		end = ignoreOutcome
	}
	return octx, end
}

// observe starts the step op of the token at k, if the cache has an
// observer, and returns the context the step runs under and the function
// that ends it; without an observer, ctx and a function that does
// nothing.
func (c *Cache) observe(ctx context.Context, op Op, k keys) (context.Context, func(Outcome)) {
	if c.cfg.observer == nil {
		return ctx, ignoreOutcome
	}
	tier := TierServer
	if c.server != nil && k.Token != c.server.k.Token {
		tier = TierClient
	}
	return startStep(c.cfg.observer, ctx, Step{Op: op, Namespace: c.cfg.namespace, Tier: tier})
}

// observe starts the step op of e's token (see Cache.observe).
func (e *entry) observe(ctx context.Context, op Op) (context.Context, func(Outcome)) {
	return e.c.observe(ctx, op, e.k)
}

// flightContext is the context of the work a Token call shares with the
// process's other callers: the cache's (Close ends it), bounded by the
// refresh timeout. With an observer it also carries the values of caller,
// the call that started it (see WithObserver).
func (c *Cache) flightContext(caller context.Context) (context.Context, context.CancelFunc) {
	if c.cfg.observer == nil {
		return context.WithTimeout(c.ctx, c.cfg.refreshTimeout)
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(caller), c.cfg.refreshTimeout)
	stop := context.AfterFunc(c.ctx, cancel)
	return ctx, func() {
		stop()
		cancel()
	}
}

// readOutcome is how a Redis read of the token ended.
func readOutcome(r readResult, err error) Outcome {
	switch {
	case err != nil:
		return Outcome{Result: ResultError}
	case r.loaded():
		return Outcome{Result: ResultFound, Generation: r.rec.Generation}
	}
	return Outcome{Result: ResultAbsent}
}

// lockOutcome is how an attempt at the refresh lock ended.
func lockOutcome(err error) Outcome {
	switch {
	case err == nil:
		return Outcome{Result: ResultAcquired}
	case errors.Is(err, lock.ErrNotAcquired):
		return Outcome{Result: ResultContended}
	}
	return Outcome{Result: ResultError}
}

// issuerOutcome is how a Fetch call ended: its code is the issuer's, or
// "timeout", or none, as tokencacheprom labels an issuer call.
func issuerOutcome(err error) Outcome {
	if err == nil {
		return Outcome{Result: ResultOK}
	}
	o := Outcome{Result: ResultError}
	var c interface{ ErrorCode() string }
	switch {
	case errors.As(err, &c) && c.ErrorCode() != "":
		o.Code = c.ErrorCode()
	case errors.Is(err, context.DeadlineExceeded):
		o.Code = "timeout"
	}
	return o
}

// writeOutcome is how a fenced write of the token at generation gen ended.
func writeOutcome(w writeResult, err error, gen int64) Outcome {
	switch {
	case err != nil:
		return Outcome{Result: ResultError, Generation: gen}
	case w.Stored:
		return Outcome{Result: ResultStored, Generation: gen}
	}
	return Outcome{Result: ResultFenced, Generation: gen}
}

// waitOutcome is how a wait for another replica's refresh ended: by an
// event, or by the re-check timer.
func waitOutcome(recheck bool) Outcome {
	if recheck {
		return Outcome{Result: ResultRecheck}
	}
	return Outcome{Result: ResultEvent}
}

// outcome is how a refresh that returned tok and err ended, with the
// generation of tok if it is the copy in memory.
func (e *entry) outcome(tok Token, err error) Outcome {
	if err != nil {
		o := Outcome{Result: ResultError, Code: "unavailable"}
		var fe *FetchError
		switch {
		case errors.As(err, &fe):
			o.Code = fe.Code
		case errors.Is(err, ErrClosed):
			o.Code = "closed"
		case errors.Is(err, ErrRedisUnavailable):
			o.Code = "redis-unavailable"
		}
		return o
	}
	o := Outcome{Result: ResultOK}
	if s := e.mem.l1.Load(); s != nil && s.fp == tok.Fingerprint() {
		o.Generation = s.gen
	}
	return o
}

// endUnauthorized ends Transport's handling of a 401 (end), given the
// response that carried the 401 (first) and, read when the round trip
// returns, the response and error it returns.
func endUnauthorized(end func(Outcome), first *http.Response, resp **http.Response, err *error) {
	switch {
	case *err != nil:
		end(Outcome{Result: ResultError})
	case *resp == first:
		end(Outcome{Result: ResultReturned})
	case (*resp).StatusCode == http.StatusUnauthorized:
		end(Outcome{Result: ResultRejected})
	default:
		end(Outcome{Result: ResultRetried})
	}
}
