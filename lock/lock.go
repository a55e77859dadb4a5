// Package lock provides leases on Redis: a lock that is held for a bounded
// time (its TTL), kept alive by a watchdog while its owner works, and
// stamped with a fencing generation that only ever grows.
//
// A lease is an efficiency device, not a correctness one: a process paused
// past its TTL, or a Redis failover, can let two owners believe they hold
// it. Whatever a lease protects must check the generation when it writes
// (Kleppmann's fencing tokens); the tokencache package does that in one
// atomic script.
//
//	l, err := lock.New(rdb, lock.WithTTL(5*time.Second))
//	lease, err := l.TryAcquire(ctx, "job:lock")
//	if errors.Is(err, lock.ErrNotAcquired) { ... someone else is working ... }
//	defer lease.Release(context.Background())
//	gen, err := lease.Fence(ctx, "job:fence")
//	write(ctx, gen) // the store rejects gen if it has seen a larger one
//
// The package is built on github.com/go-redsync/redsync/v4 and keeps its
// types inside: errors are this package's, and a context that ends is
// reported as the context's error.
package lock

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/go-redsync/redsync/v4"
	rsredis "github.com/go-redsync/redsync/v4/redis"
	"github.com/go-redsync/redsync/v4/redis/goredis/v9"
	"github.com/redis/go-redis/v9"
)

// DefaultTTL is the lease lifetime when no WithTTL option is given: long
// enough that a missed watchdog beat or two (a GC pause, a slow Redis) does
// not drop the lease, short enough that a dead owner's lease is taken over
// quickly.
const DefaultTTL = 10 * time.Second

var (
	// ErrNotAcquired means another owner holds the lock.
	ErrNotAcquired = errors.New("lock: held by another owner")
	// ErrLeaseExpired means the lease's TTL ran out before it was extended
	// or released; nobody else held the lock when this was noticed.
	ErrLeaseExpired = errors.New("lock: lease expired")
	// ErrLeaseLost means the lease expired and another owner has taken
	// the lock since.
	ErrLeaseLost = errors.New("lock: lease taken by another owner")
	// ErrConfig means New was given a nil client or an option a value it
	// cannot use; the error names the option.
	ErrConfig = errors.New("lock: invalid configuration")
)

// Locker hands out leases on one Redis deployment (a single node, a
// Sentinel-managed master or a cluster) or, with several clients, on
// independent masters with Redlock's majority rule.
type Locker struct {
	rs     *redsync.Redsync
	fence  redis.UniversalClient // holds the fencing counters
	ttl    time.Duration
	retry  time.Duration // base delay between Acquire attempts
	opTime time.Duration // timeout of one extend or release
	nodes  int
}

// minTTL is the shortest lease WithTTL accepts: Redis counts a lease's
// lifetime in whole milliseconds.
const minTTL = time.Millisecond

// defaultRetryDelay is the mean wait between attempts of a blocking
// Acquire: a refresh holds the lock for about one issuer call, so a few
// tries per typical call without loading Redis.
const defaultRetryDelay = 50 * time.Millisecond

// An Option configures a Locker. An option given a value it cannot use
// makes New fail with an error wrapping ErrConfig.
type Option func(*Locker) error

// WithTTL sets the lease lifetime, at least 1ms (Redis counts it in whole
// milliseconds). Default DefaultTTL.
// The watchdog extends a held lease every third of it.
func WithTTL(d time.Duration) Option {
	return func(l *Locker) error {
		if d < minTTL {
			return fmt.Errorf("%w: WithTTL(%v) is below %v", ErrConfig, d, minTTL)
		}
		l.ttl = d
		return nil
	}
}

// WithRetryDelay sets the mean delay between attempts of a blocking
// Acquire (jittered ±50%), a positive duration. Default 50ms.
func WithRetryDelay(d time.Duration) Option {
	return func(l *Locker) error {
		if d <= 0 {
			return fmt.Errorf("%w: WithRetryDelay(%v) is not positive", ErrConfig, d)
		}
		l.retry = d
		return nil
	}
}

// WithRedlock spreads the lock over further independent Redis masters in
// addition to the one given to New: a lease needs a majority of them, so
// the lock survives the loss of a minority. The fencing counter stays on
// the first client. Default: none, the lock lives on New's client alone;
// no client adds none. A nil client is refused.
func WithRedlock(more ...redis.UniversalClient) Option {
	return func(l *Locker) error {
		if len(more) == 0 {
			return nil
		}
		pools := []rsredis.Pool{goredis.NewPool(l.fence)}
		for i, c := range more {
			if c == nil {
				return fmt.Errorf("%w: WithRedlock: client %d is nil", ErrConfig, i)
			}
			pools = append(pools, goredis.NewPool(c))
		}
		l.rs = redsync.New(pools...)
		l.nodes = len(pools)
		return nil
	}
}

// New returns a Locker on rdb. It fails with an error wrapping ErrConfig
// if rdb is nil or an option is given a value it cannot use.
func New(rdb redis.UniversalClient, opts ...Option) (*Locker, error) {
	if rdb == nil {
		return nil, fmt.Errorf("%w: nil redis client", ErrConfig)
	}
	l := &Locker{
		rs:    redsync.New(goredis.NewPool(rdb)),
		fence: rdb,
		ttl:   DefaultTTL,
		retry: defaultRetryDelay,
		nodes: 1,
	}
	for _, o := range opts {
		if err := o(l); err != nil {
			return nil, err
		}
	}
	l.opTime = l.ttl / 3
	return l, nil
}

// TTL reports the lease lifetime.
func (l *Locker) TTL() time.Duration { return l.ttl }

// TryAcquire makes one attempt to take the lock at key. It returns
// ErrNotAcquired if another owner holds it.
func (l *Locker) TryAcquire(ctx context.Context, key string) (*Lease, error) {
	return l.acquire(ctx, key, false)
}

// Acquire waits for the lock at key until it is taken or ctx ends; in the
// latter case it returns ctx's error.
func (l *Locker) Acquire(ctx context.Context, key string) (*Lease, error) {
	return l.acquire(ctx, key, true)
}

func (l *Locker) acquire(ctx context.Context, key string, wait bool) (*Lease, error) {
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		m := l.rs.NewMutex(key,
			redsync.WithExpiry(l.ttl),
			redsync.WithTries(1),
			// Each attempt may take a quarter of the TTL: redsync's default
			// (5%) makes a merely slow Redis look like a failed one.
			redsync.WithTimeoutFactor(0.25),
		)
		start := time.Now()
		err := m.TryLockContext(ctx)
		if err == nil {
			return l.newLease(m, key, start), nil
		}
		if ctx.Err() != nil {
			// redsync reports ErrFailed when the context ends: say why.
			return nil, ctx.Err()
		}
		if !isTaken(err) {
			return nil, fmt.Errorf("lock: acquire %s: %w", key, err)
		}
		if !wait {
			return nil, ErrNotAcquired
		}
		d := l.retry/2 + rand.N(l.retry+1)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

// isTaken reports whether redsync found the lock held by another owner (or
// could not take a majority without an error to show for it).
func isTaken(err error) bool {
	var taken *redsync.ErrTaken
	return errors.Is(err, redsync.ErrFailed) || errors.As(err, &taken)
}

func (l *Locker) newLease(m *redsync.Mutex, key string, start time.Time) *Lease {
	le := &Lease{
		l:     l,
		m:     m,
		key:   key,
		lost:  make(chan struct{}),
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
		until: start.Add(l.ttl),
	}
	go le.watchdog()
	return le
}

// Fence draws the lease's fencing generation from the counter at
// fenceKey (an INCR): every generation drawn under a later lease of the
// lock is larger. Draw it after deciding to do the protected work and
// before starting it; the first call draws, later calls return the same
// value. It fails with the lease's error if the lease is already lost.
func (le *Lease) Fence(ctx context.Context, fenceKey string) (int64, error) {
	return le.FenceWith(ctx, func(ctx context.Context) (int64, error) {
		gen, err := le.l.fence.Incr(ctx, fenceKey).Result()
		if err != nil && ctx.Err() == nil {
			err = fmt.Errorf("lock: fence %s: %w", fenceKey, err)
		}
		return gen, err
	})
}

// FenceWith is Fence with the draw done by draw, for a caller that folds
// the counter's increment into a script of its own (one round trip for
// the increment and whatever the protected work needs first). draw must
// increment the same counter for every lease of the lock; a positive
// result becomes the lease's generation.
func (le *Lease) FenceWith(ctx context.Context, draw func(context.Context) (int64, error)) (int64, error) {
	le.mu.Lock()
	defer le.mu.Unlock()
	if le.gen > 0 {
		return le.gen, nil
	}
	if le.err != nil {
		return 0, le.err
	}
	gen, err := draw(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		return 0, err
	}
	if gen <= 0 {
		return 0, fmt.Errorf("lock: fence drew generation %d", gen)
	}
	le.gen = gen
	return gen, nil
}

// Lease is a held lock. A watchdog extends it every third of its TTL
// until Release; if an extension fails for good, Lost is closed and Err
// says why. Its methods are safe for concurrent use.
type Lease struct {
	l   *Locker
	m   *redsync.Mutex
	key string

	lost chan struct{} // closed when the lease is lost
	stop chan struct{} // closed by Release to stop the watchdog
	done chan struct{} // closed when the watchdog has exited

	mu       sync.Mutex // guards gen, err, until, released
	gen      int64
	err      error
	until    time.Time
	released bool
}

// Key is the lock's Redis key.
func (le *Lease) Key() string { return le.key }

// Value is the random value the lease holds at its key. A store that wants
// to refuse a write from a holder whose lease has ended checks, in the same
// atomic step as the write, that the key still holds this value.
func (le *Lease) Value() string { return le.m.Value() }

// Generation is the fencing generation drawn by Fence, 0 before. A write
// protected by the lease must be rejected by the store if a larger
// generation has been seen.
func (le *Lease) Generation() int64 {
	le.mu.Lock()
	defer le.mu.Unlock()
	return le.gen
}

// Until is the local estimate of when the lease runs out unless extended.
func (le *Lease) Until() time.Time {
	le.mu.Lock()
	defer le.mu.Unlock()
	return le.until
}

// Lost is closed when the watchdog finds that the lease expired or was
// taken by another owner.
func (le *Lease) Lost() <-chan struct{} { return le.lost }

// Err is nil while the lease is held, ErrLeaseExpired or ErrLeaseLost once
// it is lost.
func (le *Lease) Err() error {
	le.mu.Lock()
	defer le.mu.Unlock()
	return le.err
}

func (le *Lease) watchdog() {
	defer close(le.done)
	beat := le.l.ttl / 3
	t := time.NewTimer(beat)
	defer t.Stop()
	for {
		select {
		case <-le.stop:
			return
		case <-t.C:
		}
		err := le.extend()
		if errors.Is(err, ErrLeaseExpired) || errors.Is(err, ErrLeaseLost) {
			le.mu.Lock()
			le.err = err
			le.mu.Unlock()
			close(le.lost)
			return
		}
		next := beat
		if err != nil {
			// Transient (Redis unreachable): try again sooner, while the
			// lease may still be alive.
			next = beat / 3
		}
		t.Reset(next)
	}
}

// extend runs one watchdog beat.
func (le *Lease) extend() error {
	ctx, cancel := context.WithTimeout(context.Background(), le.l.opTime)
	defer cancel()
	start := time.Now()
	ok, err := le.m.ExtendContext(ctx)
	if ok && err == nil {
		le.mu.Lock()
		le.until = start.Add(le.l.ttl)
		le.mu.Unlock()
		return nil
	}
	if isTaken(err) || errors.Is(err, redsync.ErrExtendFailed) || (err == nil && !ok) {
		return le.whoHolds(ctx)
	}
	if time.Now().After(le.Until()) {
		return ErrLeaseExpired
	}
	return fmt.Errorf("lock: extend %s: %w", le.key, err)
}

// whoHolds tells an expired lease from one taken by another owner; redsync
// reports both as "taken".
func (le *Lease) whoHolds(ctx context.Context) error {
	_, err := le.l.fence.Get(ctx, le.key).Result()
	switch {
	case errors.Is(err, redis.Nil):
		return ErrLeaseExpired
	case err != nil:
		// No answer: not proof of loss. The next beat tries again, and
		// the lease is given up once its TTL has surely passed.
		if time.Now().After(le.Until()) {
			return ErrLeaseExpired
		}
		return fmt.Errorf("lock: extend %s: %w", le.key, err)
	default:
		// Another value, or ours on too few Redlock nodes.
		return ErrLeaseLost
	}
}

// Release stops the watchdog and deletes the lock if it is still ours. It
// runs even if ctx is already cancelled (bounded by its own timeout), so a
// caller that gives up does not leave the lock to run out its TTL. It
// returns nil if the lock was released, ErrLeaseExpired or ErrLeaseLost if
// the lease had already ended. Calling it twice is harmless.
func (le *Lease) Release(ctx context.Context) error {
	le.mu.Lock()
	if le.released {
		le.mu.Unlock()
		return nil
	}
	le.released = true
	le.mu.Unlock()
	close(le.stop)
	<-le.done

	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), le.l.opTime)
	defer cancel()
	ok, err := le.m.UnlockContext(rctx)
	switch {
	case ok && err == nil:
		return nil
	case errors.Is(err, redsync.ErrLockAlreadyExpired):
		return ErrLeaseExpired
	case isTaken(err) || (err == nil && !ok):
		return ErrLeaseLost
	default:
		return fmt.Errorf("lock: release %s: %w", le.key, err)
	}
}
