package tokencache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
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
)

// subscribeWait bounds how long a caller that found no token waits for the
// cache's subscription to be confirmed before it re-checks Redis; past it,
// the caller relies on its bounded re-checks.
const subscribeWait = 500 * time.Millisecond

// Cache shares one token among every replica that uses the same Redis and
// namespace. Its methods are safe for concurrent use.
type Cache struct {
	rdb     redis.UniversalClient
	cfg     config
	st      store
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

	origin        string    // random id of this Cache in the events it publishes
	epoch         time.Time // origin of the mono clock
	injectedClock bool      // WithClock was given
	stats         counters
	dropEvents    atomic.Bool // test hook: drop every received event
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
	ctx, cancel := context.WithCancel(context.Background())
	c := &Cache{
		rdb:     rdb,
		cfg:     cfg,
		st:      store{rdb: rdb},
		locker:  lock.New(rdb, lock.WithTTL(cfg.lockTTL), lock.WithRedlock(cfg.redlock...)),
		channel: eventsChannel(cfg.prefix, cfg.namespace),
		sub:     subscriber{ready: make(chan struct{})},
		ctx:     ctx,
		cancel:  cancel,
		origin:  strconv.FormatUint(rand.Uint64(), 36),
	}
	c.epoch = c.cfg.now()
	c.injectedClock = cfg.injected
	c.server = c.newEntry(serverKeys(cfg.prefix, cfg.namespace), f)
	c.budget = newBudget(budgetKey(cfg.prefix, cfg.namespace), cfg.budgetLimit, cfg.budgetWindow)
	c.stats.budgetLeft.Store(-1)
	if cfg.clientFetcher != nil {
		c.users = newUserLRU(cfg.maxUsers)
	}
	c.wg.Add(1)
	go c.runSubscriber(ctx)
	return c, nil
}

// Token returns a valid token, from memory when it can (no Redis round
// trip, no allocation), else from Redis, else by refreshing it: one
// replica of the fleet calls the issuer while the others wait for its
// event. It never returns a token past its skewed expiry. ctx bounds this
// caller's wait only; a refresh that other callers share goes on.
func (c *Cache) Token(ctx context.Context) (Token, error) {
	return c.server.token(ctx)
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

func (c *Cache) now() time.Time { return c.cfg.now() }

// mono is a point on the cache's monotonic clock: nanoseconds since the
// Cache was created. Reading it costs one monotonic clock read, about half
// of time.Now, which matters on the hot path.
type mono int64

func (c *Cache) monoNow() mono {
	if c.injectedClock {
		return mono(c.cfg.now().Sub(c.epoch))
	}
	return mono(time.Since(c.epoch))
}

func (c *Cache) monoAt(t time.Time) mono { return mono(t.Sub(c.epoch)) }

func (c *Cache) log() *slog.Logger { return c.cfg.logger }

// Invalidate deletes the shared token if it is still tok (compare and
// delete: a token that replaced tok meanwhile is kept) and publishes
// "invalidated", so every replica drops its copy. It reports whether the
// token was deleted. Use it when the API rejects tok with 401.
func (c *Cache) Invalidate(ctx context.Context, tok Token) (bool, error) {
	if tok.AccessToken == "" {
		return false, errors.New("tokencache: Invalidate needs the token that failed")
	}
	return c.server.invalidate(ctx, tok.Fingerprint(), 0)
}

// InvalidateFingerprint is Invalidate for a token known by its fingerprint
// (Token.Fingerprint, or the token_fp field shown by Inspect), and, if gen
// is positive, its generation. An empty fingerprint and a zero generation
// delete whatever is cached.
func (c *Cache) InvalidateFingerprint(ctx context.Context, fp string, gen int64) (bool, error) {
	return c.server.invalidate(ctx, fp, gen)
}

// Offer stores tok as the shared token if it expires later than the one in
// Redis (newest expiry wins, atomically) and publishes "refreshed". It is
// how a token rotated by the API (a newer token in a response header)
// reaches the fleet. It reports whether tok was stored.
func (c *Cache) Offer(ctx context.Context, tok Token) (bool, error) {
	return c.server.offer(ctx, tok)
}

// RefreshResult describes what Refresh did.
type RefreshResult struct {
	Key        string
	Refreshed  bool          // this call fetched and stored a new token
	Generation int64         // the stored token's generation
	ExpiresIn  time.Duration // the stored token's remaining TTL in Redis
	Token      Token
}

// Refresh is the cron path: it refreshes the shared token if less than
// minTTL of it remains (or none is cached), or always with force. Many
// hosts may run it at once: they queue on the lock, and each re-checks
// Redis after taking it, so one issuer call serves them all.
func (c *Cache) Refresh(ctx context.Context, minTTL time.Duration, force bool) (RefreshResult, error) {
	return c.server.refreshNow(ctx, minTTL, force)
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

// Inspect reads the cached token's metadata, the lock and the fence.
func (c *Cache) Inspect(ctx context.Context) (Status, error) {
	return c.server.inspect(ctx)
}

// Keys reports the Redis names used for the shared token.
func (c *Cache) Keys() (token, lock, fence, channel string) {
	k := c.server.k
	return k.token, k.lock, k.fence, k.channel
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
}

type counters struct {
	issuerCalls, issuerErrors, refreshes, redisReads, redisErrors atomic.Uint64
	redisHits                                                     atomic.Uint64
	lockContended, waits, events, fenced, badValues, failOpen     atomic.Uint64
	resubscribes                                                  atomic.Uint64
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
		Resubscribes: s.resubscribes.Load(), BudgetLeft: s.budgetLeft.Load(),
	}
}

// identityFingerprint is what the cache stores beside a token to say which
// credential minted it: a salted hash, never the credential.
func identityFingerprint(f Fetcher) string {
	id, ok := f.(Identifier)
	if !ok {
		return ""
	}
	sum := sha256.Sum256([]byte("tokencache/identity/v1\x00" + id.Identity()))
	return "sha256:" + hex.EncodeToString(sum[:8])
}

func (c *Cache) lookup(key string) *entry {
	if key == c.server.k.token {
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

func (c *Cache) onEvent(ev Event) {
	c.stats.events.Add(1)
	e := c.lookup(ev.Key)
	if e == nil {
		return
	}
	switch ev.Type {
	case EventRefreshed:
		if s := e.l1.Load(); s != nil && s.gen >= ev.Generation && c.monoNow() < s.validUntil {
			e.sig.fire()
			return
		}
		e.sync()
	case EventInvalidated:
		e.clearFailure()
		if ev.TokenFP != "" {
			fp := ev.TokenFP
			e.rejected.Store(&fp) // a read racing the deletion must not bring it back
		}
		if s := e.l1.Load(); s != nil && (ev.Generation == 0 || s.gen <= ev.Generation) {
			e.l1.CompareAndSwap(s, nil)
		}
		e.sig.fire()
	case EventFailed:
		if ev.Origin == c.origin || ev.Credential != e.credFP {
			return // our own failure (recorded with its cause), or another credential's
		}
		fe := &FetchError{Code: ev.Code, Retryable: ev.Retryable, Remote: true, Message: ev.Message}
		if ev.RetryInMS > 0 {
			// The window is the sender's, but never longer than ours: a
			// sender (or anyone who can PUBLISH) cannot silence us longer.
			limit := c.cfg.negativeTTL
			if ev.Retryable {
				limit = maxRetryWindow
			}
			fe.Until = c.now().Add(min(time.Duration(ev.RetryInMS)*time.Millisecond, limit))
		}
		e.recordFailure(fe)
	}
}

// onSubscribed runs on every confirmed (re-)subscription: whatever was
// published while we were not subscribed is lost, so waiters re-check
// Redis and the in-memory copy is re-read.
func (c *Cache) onSubscribed() {
	for _, e := range c.entries() {
		e.expireSoft()
		e.sig.fire()
	}
}

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

	warnedFP atomic.Bool            // logged a credential mismatch once
	rejected atomic.Pointer[string] // fingerprint of the last token invalidated here
}

// isRejected reports whether fp is the token this replica last
// invalidated: it must not come back from a read that raced the
// invalidation.
func (e *entry) isRejected(fp string) bool {
	r := e.rejected.Load()
	return r != nil && *r == fp
}

func (c *Cache) newEntry(k keys, f Fetcher) *entry {
	return &entry{c: c, k: k, f: f, credFP: identityFingerprint(f), sig: newSignal()}
}

// snapshot is an immutable in-memory copy of the token. Times are on the
// local clock, derived from the key's PTTL when it was read.
type snapshot struct {
	tok        Token
	gen        int64
	fp         string // token fingerprint
	validUntil mono   // never served at or after this
	dueAt      mono   // refresh-ahead moment (jittered)
	softUntil  mono   // before this, no background work at all
}

func (e *entry) token(ctx context.Context) (Token, error) {
	if s := e.l1.Load(); s != nil {
		now := e.c.monoNow()
		if now < s.softUntil {
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
			v, err, _ := e.c.sf.Do(e.k.token, shared)
			if err != nil {
				return Token{}, err
			}
			tok = v.(Token)
		} else {
			select {
			case r := <-e.c.sf.DoChan(e.k.token, shared):
				if r.Err != nil {
					return Token{}, r.Err
				}
				tok = r.Val.(Token)
			case <-ctx.Done():
				return Token{}, ctx.Err()
			}
		}
		if attempt < 2 && e.isRejected(tok.Fingerprint()) {
			// We joined a flight that read the token before it was
			// invalidated here: ask again.
			continue
		}
		return tok, nil
	}
}

// obtain gets a valid token when there is none in memory: Redis, then the
// lock, then waiting for whoever holds it.
func (e *entry) obtain(ctx context.Context) (Token, error) {
	for {
		tok, ok, err := e.readAndInstall(ctx)
		if err != nil {
			return e.redisDown(ctx, err)
		}
		if ok {
			e.c.stats.redisHits.Add(1)
			return tok, nil
		}
		// Subscribe first, then re-check: a "refreshed" published between
		// the two reads cannot be missed.
		e.c.waitSubscribed(ctx, subscribeWait)
		wake, seq := e.sig.arm()
		if tok, ok, err = e.readAndInstall(ctx); err != nil {
			return e.redisDown(ctx, err)
		} else if ok {
			return tok, nil
		}
		if err := e.negative(); err != nil {
			return Token{}, err
		}

		lease, err := e.c.locker.TryAcquire(ctx, e.k.lock)
		switch {
		case err == nil:
			return e.refreshLocked(ctx, lease, nil)
		case errors.Is(err, lock.ErrNotAcquired):
			e.c.stats.lockContended.Add(1)
		case ctx.Err() != nil:
			return Token{}, e.ctxErr(ctx)
		default:
			// Redis answered the read just before: a failed lock attempt
			// (a slow Redis, a timeout) is a reason to wait and look
			// again, not to call the issuer from every replica.
			e.c.stats.redisErrors.Add(1)
			e.c.log().Warn("tokencache: lock attempt failed; waiting and re-checking", "key", e.k.lock, "err", err)
		}

		// Another replica is refreshing: wait for its event, bounded by a
		// jittered re-check so a lost message costs one interval.
		e.c.stats.waits.Add(1)
		t := time.NewTimer(jitter(e.c.cfg.waitRecheck))
		select {
		case <-wake:
		case <-t.C:
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
	s := e.snapshotFor(r.rec, r.pttl, at)
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
	r, err := e.c.st.read(ctx, e.k.token, at)
	if err != nil {
		e.c.stats.redisErrors.Add(1)
		return r, err
	}
	if r.bad != nil {
		e.c.stats.badValues.Add(1)
		e.c.log().Warn("tokencache: unusable value in redis, treating as a miss", "key", e.k.token, "err", r.bad)
	}
	if r.found && e.isRejected(r.rec.TokenFP) {
		r.found = false
	}
	if r.failed != nil && r.failedCred == e.credFP {
		limit := e.c.cfg.negativeTTL
		if r.failed.Retryable {
			limit = maxRetryWindow
		}
		if max := at.Add(limit); r.failed.Until.After(max) {
			r.failed.Until = max
		}
		e.adoptFailure(r.failed, r.failedStreak)
	}
	if r.found && r.rec.Fingerprint != e.credFP {
		// Checked before decrypting: another deployment's token is a miss
		// to refetch and overwrite, whatever key sealed it.
		if e.warnedFP.CompareAndSwap(false, true) {
			e.c.log().Warn("tokencache: cached token was minted for another credential; not serving it",
				"key", e.k.token, "stored_fingerprint", r.rec.Fingerprint, "our_fingerprint", e.credFP)
		}
		r.found = false
	}
	if r.found && r.rec.Ciphertext != "" {
		tok, err := e.c.cfg.keyring.open(e.k.token, r.rec)
		if err != nil {
			e.c.log().Error("tokencache: cannot decrypt the cached token", "key", e.k.token, "key_id", r.rec.KeyID, "err", err)
			return readResult{}, err
		}
		r.rec.AccessToken = tok
	}
	return r, nil
}

func (e *entry) snapshotFor(rec record, ttl time.Duration, at time.Time) *snapshot {
	cfg := &e.c.cfg
	base := e.c.monoAt(at)
	validUntil := base + mono(ttl)
	life := rec.lifetime()
	// The issuer's expiry on our clock is the TTL's end plus the skew the
	// writer took off; refresh-ahead is a share of the issuer's lifetime.
	expiry := validUntil + mono(e.skewFor(life))
	due := expiry - mono(float64(life)*(1-cfg.refreshAhead))
	if cfg.refreshJitter > 0 {
		due += mono(rand.Float64() * cfg.refreshJitter * float64(life))
	}
	due = min(due, validUntil)
	soft := due
	if cfg.l1MaxAge > 0 {
		soft = min(soft, base+mono(cfg.l1MaxAge))
	}
	return &snapshot{tok: rec.token(), gen: rec.Generation, fp: rec.TokenFP, validUntil: validUntil, dueAt: due, softUntil: soft}
}

// install makes s the in-memory copy, unless a newer generation that is
// still valid is already there.
func (e *entry) install(s *snapshot) {
	if e.isRejected(s.fp) {
		return
	}
	e.clearFailureBelow(s.gen)
	if !e.c.cfg.l1 {
		return
	}
	for {
		cur := e.l1.Load()
		if cur != nil && cur.gen > s.gen && cur.fp != s.fp && e.c.monoNow() < cur.validUntil {
			return
		}
		if e.l1.CompareAndSwap(cur, s) {
			return
		}
	}
}

// postpone delays the next background work on s by d.
func (e *entry) postpone(s *snapshot, d time.Duration) {
	if s == nil {
		return
	}
	n := *s
	n.softUntil = min(e.c.monoNow()+mono(d), n.validUntil)
	n.dueAt = max(n.dueAt, n.softUntil)
	e.l1.CompareAndSwap(s, &n)
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
			e.postpone(cur, jitter(e.c.cfg.waitRecheck))
			return
		}
		cur = e.l1.Load()
	}
	at := e.c.now()
	r, err := e.read(ctx, at)
	if err != nil {
		// Redis is unreachable: keep serving memory, try again later.
		e.postpone(cur, jitter(e.c.cfg.waitRecheck))
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
	if e.c.monoAt(at) < s.dueAt {
		return
	}
	if d := e.backingOff(); d > 0 {
		// A refresh failed recently, here or anywhere in the fleet: the
		// current token is still good, so wait out the window.
		e.postpone(e.l1.Load(), d)
		return
	}
	lease, err := e.c.locker.TryAcquire(ctx, e.k.lock)
	if err != nil {
		if errors.Is(err, lock.ErrNotAcquired) {
			e.c.stats.lockContended.Add(1)
		}
		// Someone else is refreshing (their event will update us), or
		// Redis failed: look again later.
		e.postpone(e.l1.Load(), jitter(e.c.cfg.waitRecheck))
		return
	}
	gen := s.gen
	if _, err := e.refreshLocked(ctx, lease, func(r readResult) bool { return r.rec.Generation != gen }); err != nil {
		e.c.log().Warn("tokencache: refresh ahead failed; serving the current token", "key", e.k.token, "err", err)
		e.postpone(e.l1.Load(), e.retryDelay(err))
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
func (e *entry) refreshLocked(ctx context.Context, lease *lock.Lease, done func(readResult) bool) (Token, error) {
	defer func() {
		if err := lease.Release(ctx); err != nil {
			e.c.log().Warn("tokencache: lock released late", "key", e.k.lock, "err", err)
		}
	}()
	at := e.c.now()
	r, err := e.read(ctx, at)
	if err != nil {
		return e.redisDown(ctx, err)
	}
	if r.found && (done == nil || done(r)) {
		s := e.snapshotFor(r.rec, r.pttl, at)
		e.install(s)
		return s.tok, nil
	}
	gen, err := e.generation(ctx, lease, r)
	if err != nil {
		return e.redisDown(ctx, err)
	} else if gen < 0 {
		return Token{}, fmt.Errorf("%w: a newer lease was granted during the refresh", ErrUnavailable)
	}
	tok, err := e.fetch(ctx, false)
	if err != nil {
		switch {
		case e.c.ctx.Err() != nil:
			return Token{}, ErrClosed // shutting down is not the issuer's failure
		case ctx.Err() != nil:
			// The caller (a cron Refresh) or the refresh's own bound gave
			// up: not the issuer's verdict, so the fleet is not told.
			return Token{}, fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		// Waiters need the failure only if there is no token to serve.
		return Token{}, e.fetchFailed(ctx, err, true, !r.found)
	}
	issued := e.c.now()
	ttl := e.ttlFor(tok, issued)
	rec := newRecord(tok, gen, issued, e.c.cfg.host, e.credFP)
	n, err := e.write(ctx, &rec, ttl, !r.found)
	if err != nil {
		// The token is good; Redis is not. Serve it and write it back later.
		e.c.stats.redisErrors.Add(1)
		e.c.log().Warn("tokencache: could not store the new token; serving it from memory", "key", e.k.token, "err", err)
		e.pending.Store(&tok)
		s := e.snapshotFor(rec, ttl, issued)
		s.softUntil = min(s.validUntil, e.c.monoAt(issued)+mono(jitter(e.c.cfg.waitRecheck)))
		e.install(s)
		return tok, nil
	}
	if n < 0 {
		// Fenced out: our lease expired and a newer holder exists, or a
		// newer token is stored. Prefer the fleet's token.
		e.c.stats.fenced.Add(1)
		e.c.log().Warn("tokencache: write rejected by fencing; a newer lease or token exists", "key", e.k.token, "generation", gen)
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
	e.c.log().Info("tokencache: token refreshed", "key", e.k.token, "generation", gen, "token", tok)
	e.install(e.snapshotFor(rec, ttl, issued))
	return tok, nil
}

// write stores rec with its fencing generation and publishes "refreshed".
// It returns 1 when stored, negative when fenced out. If lift is set (the
// holder found no usable token when it re-checked) and the stored value
// claims a generation at or above ours without the fence to back it (a
// hand edit, or a value written before the fence was lost), the fence is
// lifted past it and the write tried once more: garbage must not block
// writes forever.
func (e *entry) write(ctx context.Context, rec *record, ttl time.Duration, lift bool) (int64, error) {
	stored, err := e.seal(*rec)
	if err != nil {
		return 0, err
	}
	for attempt := 0; ; attempt++ {
		ev := Event{Type: EventRefreshed, Key: e.k.token, Generation: rec.Generation, By: e.c.cfg.host}
		ev.ExpiresAt, _ = rec.expiry()
		stored.Generation = rec.Generation
		code, seen, err := e.c.st.write(ctx, e.k, stored, ttl, ev)
		if err != nil || code != -2 || !lift || attempt > 0 {
			return code, err
		}
		gen, err := e.c.st.raiseFence(ctx, e.k, rec.Generation, seen+1)
		if err != nil || gen < 0 {
			return -1, err
		}
		rec.Generation = gen
	}
}

// seal returns rec as it is stored: with the token encrypted when the cache
// has a key ring.
func (e *entry) seal(rec record) (record, error) {
	kr := e.c.cfg.keyring
	if kr == nil {
		return rec, nil
	}
	id, sealed, err := kr.seal(e.k.token, rec)
	if err != nil {
		return rec, fmt.Errorf("tokencache: encrypting the token: %w", err)
	}
	rec.AccessToken, rec.Ciphertext, rec.KeyID = "", sealed, id
	return rec, nil
}

// generation draws the lease's fencing generation once the holder has
// decided to write. If the counter fell behind the stored token (it was
// evicted, or lost in a failover) it is lifted past the token. A negative
// result means a newer lease was granted meanwhile.
func (e *entry) generation(ctx context.Context, lease *lock.Lease, r readResult) (int64, error) {
	gen, err := lease.Fence(ctx, e.k.fence)
	if errors.Is(err, lock.ErrLeaseLost) || errors.Is(err, lock.ErrLeaseExpired) {
		return -1, nil
	} else if err != nil {
		return 0, err
	}
	if r.rec.Generation >= gen {
		return e.c.st.raiseFence(ctx, e.k, gen, r.rec.Generation+1)
	}
	return gen, nil
}

// ttlFor is the key TTL for tok: its remaining life minus the skew, the
// skew capped at a fifth of the life.
func (e *entry) ttlFor(tok Token, now time.Time) time.Duration {
	life := tok.Expiry.Sub(now)
	return life - e.skewFor(life)
}

func (e *entry) skewFor(life time.Duration) time.Duration {
	return min(e.c.cfg.skew, life/5)
}

// fetch calls the issuer, retrying retryable errors with capped
// exponential backoff and full jitter (or the issuer's Retry-After).
func (e *entry) fetch(ctx context.Context, redisDown bool) (Token, error) {
	for attempt := 1; ; attempt++ {
		tok, err := Token{}, e.c.takeBudget(ctx, redisDown)
		if err == nil {
			e.c.stats.issuerCalls.Add(1)
			tok, err = e.callFetcher(ctx)
		}
		if err == nil {
			if err = e.check(tok); err == nil {
				return tok, nil
			}
		}
		e.c.stats.issuerErrors.Add(1)
		if !isRetryable(err) || attempt >= e.c.cfg.maxAttempts || ctx.Err() != nil {
			return Token{}, err
		}
		d := backoff(attempt, e.c.cfg.backoffBase, e.c.cfg.backoffMax)
		if ra := retryAfter(err); ra > d {
			d = min(ra, e.c.cfg.backoffMax)
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < d {
			return Token{}, err
		}
		e.c.log().Info("tokencache: issuer call failed; retrying", "key", e.k.token, "attempt", attempt, "delay", d, "err", err)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return Token{}, err
		case <-t.C:
		}
	}
}

// callFetcher calls the Fetcher, turning a panic into an error: a broken
// issuer response must not take the process down.
func (e *entry) callFetcher(ctx context.Context) (tok Token, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("tokencache: fetcher panicked: %v", p)
		}
	}()
	return e.f.Fetch(ctx)
}

// check rejects tokens the cache cannot share.
func (e *entry) check(tok Token) error {
	now := e.c.now()
	switch {
	case tok.AccessToken == "":
		return fmt.Errorf("%w: empty access token", ErrInvalidToken)
	case tok.Expiry.IsZero():
		return fmt.Errorf("%w: no expiry", ErrInvalidToken)
	case e.ttlFor(tok, now) < time.Millisecond:
		return fmt.Errorf("%w: expires at %s, already past", ErrInvalidToken, tok.Expiry.UTC().Format(time.RFC3339))
	}
	return nil
}

// fetchFailed turns a Fetcher error into a *FetchError, remembers a
// permanent one for the negative-cache window, and, if publish, tells the
// fleet through a "failed" event so its waiters return at once.
func (e *entry) fetchFailed(ctx context.Context, err error, publish, remember bool) *FetchError {
	fe := &FetchError{Code: errorCode(err), Retryable: isRetryable(err), Message: truncate(err.Error(), 300), Err: err}
	window := e.failureWindow(fe, err)
	if window > 0 {
		fe.Until = e.c.now().Add(window)
	}
	e.recordFailure(fe)
	e.c.log().Error("tokencache: refresh failed", "key", e.k.token, "code", fe.Code, "retryable", fe.Retryable, "retry_in", window, "err", err)
	if publish {
		// The fleet learns it twice: waiters now, through the event, and
		// replicas that ask later (or start later), through the failure
		// key, which lives as long as the window.
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), e.c.cfg.lockTTL)
		defer cancel()
		if window > 0 && remember {
			f := failure{Code: fe.Code, Message: fe.Message, Retryable: fe.Retryable, By: e.c.cfg.host,
				Fingerprint: e.credFP, Streak: e.failStreak.Load()}
			if rerr := e.c.st.remember(pctx, e.k, f, window); rerr != nil {
				e.c.log().Warn("tokencache: could not record the failure", "key", e.k.failed, "err", rerr)
			}
		}
		ev := Event{Type: EventFailed, Key: e.k.token, Code: fe.Code, Message: fe.Message, Retryable: fe.Retryable,
			RetryInMS: window.Milliseconds(), By: e.c.cfg.host, Origin: e.c.origin, Credential: e.credFP}
		if perr := e.c.st.publish(pctx, e.k.channel, ev); perr != nil {
			e.c.log().Warn("tokencache: could not publish the failure", "key", e.k.token, "err", perr)
		}
	}
	return fe
}

// maxRetryWindow caps how long the fleet waits after failed refreshes of
// a retryable kind before calling the issuer again.
const maxRetryWindow = 30 * time.Second

// failureWindow is how long nobody calls the issuer after this failure: the
// negative TTL for a permanent error; for a retryable one, a back-off that
// starts at the retry cap (each refresh has already retried with backoff)
// and doubles with each refresh in a row that failed (so callers that keep asking
// do not turn an outage into a stream of calls), or the issuer's
// Retry-After if longer, capped at maxRetryWindow.
func (e *entry) failureWindow(fe *FetchError, err error) time.Duration {
	if !fe.Retryable {
		return e.c.cfg.negativeTTL
	}
	streak := e.failStreak.Add(1)
	d := jitter(min(maxRetryWindow, e.c.cfg.backoffMax<<min(streak-1, 16)))
	return min(maxRetryWindow, max(d, retryAfter(err)))
}

// adoptFailure takes on a failure the fleet recorded in Redis, unless
// one is already remembered here, and the fleet's count of failed
// refreshes in a row, so the back-off grows whoever refreshes next.
func (e *entry) adoptFailure(fe *FetchError, streak int32) {
	for cur := e.failStreak.Load(); streak > cur && !e.failStreak.CompareAndSwap(cur, streak); cur = e.failStreak.Load() {
	}
	e.failMu.Lock()
	cur := e.fail
	e.failMu.Unlock()
	if cur != nil && e.c.now().Before(cur.Until) {
		return // ours is still in its window, and carries the local cause
	}
	e.recordFailure(fe)
}

func (e *entry) recordFailure(fe *FetchError) {
	var gen int64
	if s := e.l1.Load(); s != nil {
		gen = s.gen
	}
	e.failMu.Lock()
	e.fail = fe
	e.failGen = gen
	_, e.failSeq = e.sig.arm()
	e.failMu.Unlock()
	e.sig.fire()
}

// clearFailureBelow forgets the remembered failure once a token newer than
// the one held when it happened is installed: re-reading the token whose
// refresh failed is no reason to call the issuer again.
func (e *entry) clearFailureBelow(gen int64) {
	e.failMu.Lock()
	clear := e.fail != nil && gen > e.failGen
	if clear {
		e.fail = nil
	}
	e.failMu.Unlock()
	if clear {
		e.failStreak.Store(0)
	}
}

func (e *entry) clearFailure() {
	e.failMu.Lock()
	e.fail = nil
	e.failMu.Unlock()
	e.failStreak.Store(0)
}

// failureSince returns a failure recorded after the waiter armed at seq.
func (e *entry) failureSince(seq uint64) *FetchError {
	e.failMu.Lock()
	defer e.failMu.Unlock()
	if e.fail != nil && e.failSeq >= seq {
		return e.fail
	}
	return nil
}

// negative returns a remembered failure still in its window: no issuer
// call until it ends.
func (e *entry) negative() error {
	e.failMu.Lock()
	defer e.failMu.Unlock()
	if f := e.fail; f != nil && !f.Until.IsZero() && e.c.now().Before(f.Until) {
		return f
	}
	return nil
}

// redisDown decides what a caller with no token in memory gets when Redis
// fails: under fail-open, a token fetched directly (one call per process,
// this runs inside the singleflight) and written back later.
func (e *entry) redisDown(ctx context.Context, rerr error) (Token, error) {
	if errors.Is(rerr, ErrDecrypt) {
		return Token{}, rerr // Redis is fine; this replica's keys are not
	}
	if !e.c.cfg.failOpen {
		return Token{}, fmt.Errorf("%w: %w", ErrRedisUnavailable, rerr)
	}
	if err := e.negative(); err != nil {
		return Token{}, err
	}
	e.c.stats.failOpen.Add(1)
	e.c.log().Warn("tokencache: redis unavailable; fetching from the issuer directly", "key", e.k.token, "err", rerr)
	tok, err := e.fetch(ctx, true)
	if err != nil {
		if e.c.ctx.Err() != nil {
			return Token{}, ErrClosed
		}
		return Token{}, e.fetchFailed(ctx, err, false, false)
	}
	issued := e.c.now()
	ttl := e.ttlFor(tok, issued)
	rec := newRecord(tok, 0, issued, e.c.cfg.host, e.credFP)
	s := e.snapshotFor(rec, ttl, issued)
	s.softUntil = min(s.validUntil, e.c.monoAt(issued)+mono(jitter(e.c.cfg.waitRecheck)))
	e.pending.Store(&tok)
	if e.c.cfg.l1 {
		e.l1.Store(s)
	}
	return tok, nil
}

// writeBack stores a token fetched while Redis was down, unless the fleet
// has stored one meanwhile, which then replaces ours. It reports whether
// Redis was reachable.
func (e *entry) writeBack(ctx context.Context, tok *Token) bool {
	issued := e.c.now()
	if !tok.Valid(issued) {
		e.pending.CompareAndSwap(tok, nil)
		return true
	}
	lease, err := e.c.locker.TryAcquire(ctx, e.k.lock)
	if errors.Is(err, lock.ErrNotAcquired) {
		return true // someone is refreshing; their token will do
	}
	if err != nil {
		return false
	}
	defer func() { _ = lease.Release(ctx) }()
	r, err := e.read(ctx, issued)
	if err != nil {
		return false
	}
	e.pending.CompareAndSwap(tok, nil)
	if r.found {
		e.install(e.snapshotFor(r.rec, r.pttl, issued))
		return true
	}
	gen, err := e.generation(ctx, lease, r)
	if err != nil || gen < 0 {
		return err == nil
	}
	ttl := e.ttlFor(*tok, issued)
	rec := newRecord(*tok, gen, issued, e.c.cfg.host, e.credFP)
	if n, err := e.write(ctx, &rec, ttl, true); err != nil {
		e.pending.CompareAndSwap(nil, tok)
		return false
	} else if n > 0 {
		e.c.log().Info("tokencache: wrote back a token fetched while redis was down", "key", e.k.token, "generation", gen)
		e.install(e.snapshotFor(rec, ttl, issued))
	}
	return true
}

func (e *entry) invalidate(ctx context.Context, fp string, gen int64) (bool, error) {
	if fp != "" {
		e.rejected.Store(&fp)
	}
	// A token is wanted now: an earlier failure (say, of a refresh ahead)
	// must not stand in the way of the one refetch.
	e.clearFailure()
	if s := e.l1.Load(); s != nil && (fp == "" || s.fp == fp) && (gen == 0 || s.gen == gen) {
		e.l1.CompareAndSwap(s, nil)
	}
	if p := e.pending.Load(); p != nil && (fp == "" || p.Fingerprint() == fp) {
		e.pending.CompareAndSwap(p, nil)
	}
	ok, _, err := e.c.st.invalidate(ctx, e.k, fp, gen)
	if ok {
		e.c.log().Info("tokencache: token invalidated", "key", e.k.token, "token_fp", fp)
	}
	return ok, err
}

func (e *entry) offer(ctx context.Context, tok Token) (bool, error) {
	if err := e.check(tok); err != nil {
		return false, err
	}
	issued := e.c.now()
	ttl := e.ttlFor(tok, issued)
	rec := newRecord(tok, 0, issued, e.c.cfg.host, e.credFP)
	ev := Event{Type: EventRefreshed, Key: e.k.token, ExpiresAt: tok.Expiry.UTC(), By: e.c.cfg.host}
	stored, err := e.seal(rec)
	if err != nil {
		return false, err
	}
	gen, err := e.c.st.offer(ctx, e.k, stored, ttl, ev)
	if err != nil || gen <= 0 {
		return false, err
	}
	rec.Generation = gen
	e.install(e.snapshotFor(rec, ttl, issued))
	return true, nil
}

func (e *entry) refreshNow(ctx context.Context, minTTL time.Duration, force bool) (RefreshResult, error) {
	res := RefreshResult{Key: e.k.token}
	at := e.c.now()
	r, err := e.read(ctx, at)
	if err != nil {
		return res, err
	}
	fresh := func(r readResult) bool { return r.found && r.pttl >= minTTL }
	if !force && fresh(r) {
		res.Generation, res.ExpiresIn, res.Token = r.rec.Generation, r.pttl, r.rec.token()
		e.install(e.snapshotFor(r.rec, r.pttl, at))
		return res, nil
	}
	seen := r.rec.Generation
	lease, err := e.c.locker.Acquire(ctx, e.k.lock)
	if err != nil {
		return res, &RedisError{Op: "lock", Key: e.k.lock, Err: err}
	}
	before := e.c.stats.refreshes.Load()
	tok, err := e.refreshLocked(ctx, lease, func(r readResult) bool {
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
	st := Status{Key: e.k.token, LockKey: e.k.lock, FenceKey: e.k.fence, Channel: e.k.channel}
	r, err := e.c.st.read(ctx, e.k.token, e.c.now())
	if err != nil {
		return st, err
	}
	pipe := e.c.rdb.Pipeline()
	lockTTL := pipe.PTTL(ctx, e.k.lock)
	fence := pipe.Get(ctx, e.k.fence)
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
		st.ExpiresAt, _ = r.rec.expiry()
		st.IssuedAt, _ = time.Parse(time.RFC3339Nano, r.rec.IssuedAt)
		st.TTL = r.pttl
		st.RefreshedBy = r.rec.RefreshedBy
		st.Fingerprint = r.rec.Fingerprint
		st.TokenFingerprint = r.rec.TokenFP
		st.KeyID = r.rec.KeyID
	}
	return st, nil
}

// isRetryable: only an error that says so is permanent. Timeouts,
// cancellations and unknown errors are worth another try later.
func isRetryable(err error) bool {
	var r interface{ Retryable() bool }
	if errors.As(err, &r) {
		return r.Retryable()
	}
	return true
}

func retryAfter(err error) time.Duration {
	var r interface{ RetryAfter() time.Duration }
	if errors.As(err, &r) {
		return r.RetryAfter()
	}
	return 0
}

func errorCode(err error) string {
	var c interface{ ErrorCode() string }
	if errors.As(err, &c) && c.ErrorCode() != "" {
		return c.ErrorCode()
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, ErrInvalidToken):
		return "invalid-token"
	}
	return "fetch-error"
}

// backoff is capped exponential backoff with full jitter.
func backoff(attempt int, base, max time.Duration) time.Duration {
	d := base << (attempt - 1)
	if d > max || d <= 0 {
		d = max
	}
	return time.Duration(rand.Int64N(int64(d)) + 1)
}

// jitter spreads d by ±25%.
func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return d
	}
	return d*3/4 + time.Duration(rand.Int64N(int64(d)/2+1))
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
