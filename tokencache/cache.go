package tokencache

import (
	"context"
	"errors"
	"hash/maphash"
	"log/slog"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/singleflight"

	"github.com/tokencache/tokencache/lock"
	"github.com/tokencache/tokencache/tokencache/internal/protocol"
)

// subscribeWait bounds how long a caller that found no token waits for the
// cache's subscription to be confirmed before it re-checks Redis; past it,
// the caller relies on its bounded re-checks.
const subscribeWait = 500 * time.Millisecond

// Cache shares one token among every replica that uses the same Redis and
// namespace. Its methods are safe for concurrent use.
type Cache struct {
	// Handle is the server token's: Token, Transport, Invalidate and the
	// rest act on it. User returns the same type for a user's token.
	*Handle

	rdb     redis.UniversalClient
	cfg     config
	st      *store
	locker  *lock.Locker
	channel string
	server  *entry
	users   *lru.Cache[string, *entry] // client tokens by user id; nil unless enabled
	budget  *budget                    // fleet-wide issuer budget; nil if disabled

	sf  singleflight.Group
	sub subscriber

	ctx    context.Context // background work; cancelled by Close
	cancel context.CancelFunc
	mu     sync.Mutex // guards closed transitions and wg.Add against Close
	wg     sync.WaitGroup
	closed atomic.Bool

	origin     string    // random id of this Cache in the events it publishes
	epoch      time.Time // origin of the mono clock
	jitterSeed maphash.Seed
	sysClock   bool // the clock is the system's: monoNow reads the monotonic clock directly
	stats      counters
}

// New returns a Cache for the token that f fetches, shared through rdb.
// It starts the cache's one subscription to the events channel; Close
// stops it. New does not contact the issuer.
func New(rdb redis.UniversalClient, f Fetcher, opts ...Option) (*Cache, error) {
	if rdb == nil {
		return nil, errors.New("tokencache: nil redis client")
	}
	if f == nil {
		return nil, errors.New("tokencache: nil fetcher")
	}
	cfg := defaultConfig()
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, err
		}
	}
	if cfg.host == "" {
		h, _ := os.Hostname()
		cfg.host = h + "/" + strconv.Itoa(os.Getpid())
	}
	locker, err := lock.New(rdb, lock.WithTTL(cfg.lockTTL), lock.WithRedlock(cfg.redlock...))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &Cache{
		rdb:        rdb,
		cfg:        cfg,
		locker:     locker,
		channel:    protocol.EventsChannel(cfg.prefix, cfg.namespace),
		ctx:        ctx,
		cancel:     cancel,
		origin:     strconv.FormatUint(rand.Uint64(), 36),
		jitterSeed: maphash.MakeSeed(),
	}
	c.st = newStore(rdb, cfg.shardedPubSub, cfg.logger, &c.stats, min(transientWait, cfg.waitRecheck))
	c.sub = subscriber{c: c, ready: make(chan struct{}), suspect: make(chan struct{}, 1)}
	c.epoch = c.cfg.clock.Now()
	_, c.sysClock = cfg.clock.(systemClock)
	c.server = c.newEntry(protocol.ServerKeys(cfg.prefix, cfg.namespace), f)
	c.Handle = &Handle{c: c, e: c.server}
	c.budget = newBudget(protocol.BudgetKey(cfg.prefix, cfg.namespace), cfg.budgetLimit, cfg.budgetWindow)
	c.stats.budgetLeft.Store(-1)
	if cfg.clientFetcher != nil {
		c.users = newUserLRU(cfg.maxUsers)
	}
	c.wg.Add(1)
	go c.sub.runSubscriber(ctx)
	return c, nil
}

// Close stops the background refreshes and the subscription and waits for
// them. It does not close the Redis client. Token calls after Close are
// served from memory while the token is valid, else fail with ErrClosed.
func (c *Cache) Close() error {
	c.mu.Lock()
	if c.closed.Load() {
		c.mu.Unlock()
		return nil
	}
	c.closed.Store(true)
	c.mu.Unlock()
	c.cancel()
	c.server.sched.stop()
	if c.users != nil {
		for _, e := range c.users.Values() {
			e.sched.stop()
		}
	}
	c.wg.Wait()
	return nil
}

// begin registers a background task; it returns false after Close.
func (c *Cache) begin() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed.Load() {
		return false
	}
	c.wg.Add(1)
	return true
}

// goBackground runs fn on its own goroutine, owned by the cache.
func (c *Cache) goBackground(fn func(ctx context.Context)) bool {
	if !c.begin() {
		return false
	}
	go func() {
		defer c.wg.Done()
		fn(c.ctx)
	}()
	return true
}

func (c *Cache) now() time.Time { return c.cfg.clock.Now() }

// jitterShare is this replica's place, in [0, 1), in the refresh jitter
// window of the token with fingerprint fp. It differs between replicas but
// not between reads of the same token: a replica that reaches its
// refresh-ahead moment and re-reads the same token must not draw a later
// moment (a wasted read), nor an earlier one (an early lock attempt).
func (c *Cache) jitterShare(fp string) float64 {
	return float64(maphash.String(c.jitterSeed, fp)>>11) / (1 << 53)
}

// mono is a point on the cache's monotonic clock: nanoseconds since the
// Cache was created. Reading it costs one monotonic clock read, about half
// of time.Now, which matters on the hot path.
type mono int64

func (c *Cache) monoNow() mono {
	if c.sysClock {
		return mono(time.Since(c.epoch))
	}
	return mono(c.cfg.clock.Now().Sub(c.epoch))
}

func (c *Cache) monoAt(t time.Time) mono { return mono(t.Sub(c.epoch)) }

func (c *Cache) log() *slog.Logger { return c.cfg.logger }

// RefreshResult describes what Refresh did.
type RefreshResult struct {
	Key        string
	Refreshed  bool          // this call fetched and stored a new token
	Generation int64         // the stored token's generation
	ExpiresIn  time.Duration // the stored token's remaining TTL in Redis
	Token      Token
}

// Status is what Inspect reports about the cached token: everything but
// the token itself.
type Status struct {
	Key              string
	Found            bool          // a usable token is cached
	Problem          string        // why the value is unusable, if it is
	Generation       int64         // fencing generation that wrote it
	TokenType        string        // "Bearer"
	ExpiresAt        time.Time     // the issuer's expiry
	IssuedAt         time.Time     // when it was stored
	TTL              time.Duration // the key's remaining TTL (Redis's clock)
	RefreshedBy      string        // host/pid of the writer
	Fingerprint      string        // of the credential that minted it
	TokenFingerprint string        // of the token
	KeyID            string        // the encryption key id, when the token is encrypted at rest
	LastFailure      string        // the fleet's last refresh failure (code: message), while nobody retries
	FailureTTL       time.Duration // how long until the issuer is called again
	LockKey          string
	LockHeld         bool
	LockTTL          time.Duration
	FenceKey         string
	Fence            int64 // the fencing counter
	Channel          string
}

// Stats are counters of what a Cache did since New.
type Stats struct {
	IssuerCalls   uint64 // Fetch calls, retries included
	IssuerErrors  uint64 // Fetch calls that failed
	Refreshes     uint64 // tokens this replica stored in Redis
	RedisReads    uint64 // value reads (one round trip each)
	RedisHits     uint64 // Token calls answered from Redis (the in-memory copy was empty or stale)
	RedisErrors   uint64 // failed Redis operations
	LockContended uint64 // lock attempts that found another holder
	Waits         uint64 // waits for another replica's event
	Events        uint64 // events received
	FencedWrites  uint64 // writes rejected because a newer lease or token existed
	BadValues     uint64 // unusable values found in Redis
	FailOpen      uint64 // direct issuer fetches while Redis was unreachable
	BudgetLeft    int64  // issuer calls left in the fleet's budget window, as last seen (-1: unknown or no budget)
	Resubscribes  uint64 // subscriptions replaced after a failed probe
	// RejectionsHeld counts the API's 401s that Transport returned without
	// invalidating the token: the API had rejected a token fetched after
	// an invalidation before accepting any, and the token was not one it
	// accepted before (see Handle.Transport).
	RejectionsHeld uint64
	// TransientWaits counts waits to re-check Redis after a cluster slot
	// was moving (TRYAGAIN, ASK, MOVED): Redis answered, so no fail-open.
	TransientWaits uint64
}

type counters struct {
	issuerCalls, issuerErrors, refreshes, redisReads, redisErrors atomic.Uint64
	redisHits                                                     atomic.Uint64
	lockContended, waits, events, fenced, badValues, failOpen     atomic.Uint64
	resubscribes, rejectionsHeld, transient                       atomic.Uint64
	budgetLeft                                                    atomic.Int64
}

// Stats returns a snapshot of the cache's counters.
func (c *Cache) Stats() Stats {
	s := &c.stats
	return Stats{
		IssuerCalls: s.issuerCalls.Load(), IssuerErrors: s.issuerErrors.Load(),
		Refreshes: s.refreshes.Load(), RedisReads: s.redisReads.Load(), RedisHits: s.redisHits.Load(), RedisErrors: s.redisErrors.Load(),
		LockContended: s.lockContended.Load(), Waits: s.waits.Load(), Events: s.events.Load(),
		FencedWrites: s.fenced.Load(), BadValues: s.badValues.Load(), FailOpen: s.failOpen.Load(),
		Resubscribes: s.resubscribes.Load(), BudgetLeft: s.budgetLeft.Load(), RejectionsHeld: s.rejectionsHeld.Load(),
		TransientWaits: s.transient.Load(),
	}
}

// identityFingerprint is what the cache stores beside a token to say which
// credential minted it, never the credential: with a key ring, an HMAC
// under a key derived from the ring's active key ("hmac-sha256:<key id>:"
// and 16 hex digits), which nobody without the ring can recompute; without
// one, an unkeyed SHA-256 truncated to 64 bits ("sha256:" and 16 hex
// digits), which anyone who can read the value can test a guessed
// credential against. The unkeyed form is never published in events.
func identityFingerprint(f Fetcher, kr *KeyRing) string {
	id, ok := f.(Identifier)
	if !ok {
		return ""
	}
	return fingerprintOf(id.Identity(), kr.snapshot())
}

func (c *Cache) lookup(key string) *entry {
	if key == c.server.k.Token {
		return c.server
	}
	if c.users != nil {
		if id, ok := c.userOfKey(key); ok {
			if e, ok := c.users.Peek(id); ok {
				return e
			}
		}
	}
	return nil
}

// entries lists the server entry and the users' in memory.
func (c *Cache) entries() []*entry {
	out := []*entry{c.server}
	if c.users != nil {
		out = append(out, c.users.Values()...)
	}
	return out
}

func (c *Cache) onEvent(ev protocol.Event) {
	c.stats.events.Add(1)
	if e := c.lookup(ev.Key); e != nil {
		e.onEvent(ev)
	}
}

// onSubscribed runs on every confirmed (re-)subscription: whatever was
// published while we were not subscribed is lost, so waiters re-check
// Redis and the in-memory copy is re-read.
func (s *subscriber) onSubscribed() {
	for _, e := range s.c.entries() {
		e.mem.expireSoft()
		e.sig.fire()
	}
}
