package tokencache

import (
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/redis/go-redis/v9"
)

// Defaults, with the reasoning behind each.
const (
	// DefaultNamespace names the token when WithNamespace is not given.
	DefaultNamespace = "default"

	// defaultKeyPrefix starts every key and channel name.
	defaultKeyPrefix = "tokencache"

	// defaultRefreshAhead is the share of a token's life after which one
	// replica refreshes it in the background. Basiq advises refreshing its
	// 60-minute token 2-3 times an hour; at 0.5 a token is replaced after
	// 30 minutes (plus up to defaultRefreshJitter of its life), so the
	// fleet refreshes about twice an hour and a failing issuer leaves half
	// an hour of valid token to ride it out.
	defaultRefreshAhead = 0.5

	// defaultRefreshJitter spreads the refresh-ahead moment of replicas
	// over this share of the token's life (six minutes of a 60-minute
	// token), so that one replica goes first, announces it ("refreshing")
	// and the others simply pick up its token from the "refreshed" event.
	defaultRefreshJitter = 0.1

	// defaultExpirySkew is subtracted from the issuer's expiry to get the
	// key's TTL: a token is never handed out in the last 30 seconds of its
	// life, which covers the clock offset between issuer and writer, the
	// request's transit to the API, and retries. For short-lived tokens the
	// skew is capped at a fifth of the lifetime.
	defaultExpirySkew = 30 * time.Second

	// defaultLockTTL is the refresh lock's lease. A watchdog extends it
	// while the issuer call runs, so it bounds only how long a dead
	// holder blocks the fleet.
	defaultLockTTL = 10 * time.Second

	// defaultRefreshTimeout bounds one refresh, retries and waiting for
	// another replica's refresh included.
	defaultRefreshTimeout = 30 * time.Second

	// defaultL1MaxAge is how long a replica trusts its in-process copy
	// before re-reading Redis in the background; 0, the default, means
	// until the copy's refresh-ahead moment. Events replace or drop the
	// copy at once, and every (re-)subscription re-reads it, so a periodic
	// re-read catches only what no event announces: a hand DEL with
	// redis-cli (use "tokencache invalidate", which publishes). Each re-read
	// is one command per replica: 30s costs 120 an hour.
	defaultL1MaxAge = 0

	// defaultWaitRecheck is how often a waiter re-reads Redis (jittered
	// ±25%) when no event arrives: the bound on a lost or undelivered
	// "refreshed" message.
	defaultWaitRecheck = time.Second

	// defaultNegativeTTL is how long a permanent issuer error (a wrong key,
	// access denied) is remembered: callers get it at once instead of
	// calling the issuer again.
	defaultNegativeTTL = 10 * time.Second

	// defaultProbeInterval is how long the subscription may stay silent
	// before the cache probes it by publishing to its own channel, and
	// defaultProbeTimeout how long the probe may take to come back before
	// the cache subscribes again: a half-open subscription, or one left on
	// a demoted master after a Sentinel failover, is replaced within seven
	// to nine seconds (the probe leader's; the others stand by a second
	// longer). The cost is the fleet's, not each replica's: about one
	// PUBLISH per quiet interval for the whole namespace (every replica
	// hears the first probe and stands down), 720 an hour, whatever the
	// number of replicas.
	defaultProbeInterval = 5 * time.Second
	defaultProbeTimeout  = 2 * time.Second

	// defaultMaxAttempts is the number of issuer calls one refresh makes
	// for retryable errors (5xx, 429, timeouts) before giving up.
	defaultMaxAttempts = 4
)

type config struct {
	namespace      string
	prefix         string
	refreshAhead   float64
	refreshJitter  float64
	skew           time.Duration
	lockTTL        time.Duration
	refreshTimeout time.Duration
	l1             bool
	l1MaxAge       time.Duration
	waitRecheck    time.Duration
	negativeTTL    time.Duration
	maxAttempts    int
	backoffBase    time.Duration
	backoffMax     time.Duration
	failOpen       bool
	logger         *slog.Logger
	clock          clock
	pubsubHealth   time.Duration
	shardedPubSub  int8 // 0 auto, 1 on, -1 off
	probeInterval  time.Duration
	probeTimeout   time.Duration
	host           string
	clientFetcher  func(userID string) (Fetcher, error)
	rotation       func(*http.Response) (Token, bool, error)
	maxUsers       int
	budgetLimit    int
	keyring        *KeyRing
	redlock        []redis.UniversalClient
	budgetWindow   time.Duration
	observer       Observer // nil: none (see WithObserver)
}

func defaultConfig() config {
	return config{
		namespace:      DefaultNamespace,
		prefix:         defaultKeyPrefix,
		refreshAhead:   defaultRefreshAhead,
		refreshJitter:  defaultRefreshJitter,
		skew:           defaultExpirySkew,
		lockTTL:        defaultLockTTL,
		refreshTimeout: defaultRefreshTimeout,
		l1:             true,
		l1MaxAge:       defaultL1MaxAge,
		waitRecheck:    defaultWaitRecheck,
		negativeTTL:    defaultNegativeTTL,
		maxAttempts:    defaultMaxAttempts,
		backoffBase:    200 * time.Millisecond,
		backoffMax:     5 * time.Second,
		failOpen:       true,
		logger:         slog.New(slog.DiscardHandler),
		clock:          systemClock{},
		pubsubHealth:   0, // go-redis's PING only notices a failed write; the probe covers liveness
		probeInterval:  defaultProbeInterval,
		probeTimeout:   defaultProbeTimeout,
		budgetLimit:    defaultBudgetLimit,
		budgetWindow:   defaultBudgetWindow,
	}
}

// An Option configures a Cache.
type Option func(*config) error

// WithNamespace names the shared token. Replicas that share a namespace
// share a token. Default "default". A namespace is what ValidateNamespace
// accepts (1-128 printable ASCII bytes without braces, colons, slashes,
// quotes or whitespace); another is an error wrapping ErrInvalidNamespace.
func WithNamespace(ns string) Option {
	return func(c *config) error {
		if err := ValidateNamespace(ns); err != nil {
			return err
		}
		c.namespace = ns
		return nil
	}
}

// WithKeyPrefix sets the prefix of every key and channel. Default
// "tokencache".
func WithKeyPrefix(p string) Option {
	return func(c *config) error {
		if err := validateName(p, "key prefix"); err != nil {
			return err
		}
		c.prefix = p
		return nil
	}
}

// WithRefreshAhead sets the share of a token's life (0 < share < 1) after
// which it is refreshed in the background while callers keep getting it.
// Default 0.5.
func WithRefreshAhead(share float64) Option {
	return func(c *config) error {
		if !(share > 0 && share < 1) {
			return fmt.Errorf("tokencache: refresh-ahead share %v is not between 0 and 1", share)
		}
		c.refreshAhead = share
		return nil
	}
}

// withL1 turns the in-process copy on or off: a test hook. Off makes every
// Token call read Redis (one round trip), which tests use to reach the
// paths a served copy hides.
func withL1(on bool) Option {
	return func(c *config) error { c.l1 = on; return nil }
}

// WithFailOpen chooses what happens when Redis cannot be reached and no
// valid token is held in memory: true (the default) fetches from the
// issuer directly, one call per process, and writes the token back when
// Redis returns; false returns ErrRedisUnavailable at once.
func WithFailOpen(on bool) Option {
	return func(c *config) error { c.failOpen = on; return nil }
}

// withShardedPubSub forces sharded (true) or classic (false) pub/sub for
// the events channel: a test hook. By default the cache detects the mode:
// sharded pub/sub on a *redis.ClusterClient whose servers have it (Redis
// 7.0+), classic everywhere else.
func withShardedPubSub(on bool) Option {
	return func(c *config) error {
		c.shardedPubSub = -1
		if on {
			c.shardedPubSub = 1
		}
		return nil
	}
}

// WithEncryption encrypts every token this cache stores with the ring's
// active key (AES-256-GCM, bound to its Redis key) and decrypts with any
// key of the ring. Every replica sharing the namespace needs the keys in
// use. Default: no encryption (the token is stored as JSON text, readable
// by whoever can GET the key).
func WithEncryption(kr *KeyRing) Option {
	return func(c *config) error {
		if kr == nil {
			return fmt.Errorf("tokencache: WithEncryption needs a key ring")
		}
		c.keyring = kr
		return nil
	}
}

// WithRedlock takes the refresh lock on these independent Redis masters
// as well as on the cache's own client, with Redlock's majority rule (two
// of three, three of five), so the lock keeps working with a minority of
// them down. The token, the fence and the events stay on the cache's own
// client. Remember that the lock is an efficiency device: the fenced write
// is what keeps a token from being overwritten by an older one.
func WithRedlock(more ...redis.UniversalClient) Option {
	return func(c *config) error {
		if len(more)%2 != 0 {
			return fmt.Errorf("tokencache: Redlock needs an odd number of masters; got %d", len(more)+1)
		}
		c.redlock = more
		return nil
	}
}

// WithLogger sets the logger. Default: discard. Logs carry fingerprints,
// never tokens or credentials.
func WithLogger(l *slog.Logger) Option {
	return func(c *config) error {
		if l != nil {
			c.logger = l
		}
		return nil
	}
}

// WithOwner sets the "refreshed_by" label written beside each token.
// Default "<hostname>/<pid>".
func WithOwner(label string) Option {
	return func(c *config) error { c.host = label; return nil }
}

// validateName checks a namespace, prefix or user id: it becomes part of a
// Redis key and hash tag, so nothing may break out of it.
func validateName(s, what string) error {
	if s == "" || len(s) > 128 {
		return fmt.Errorf("tokencache: %s must be 1-128 bytes, got %d", what, len(s))
	}
	for i := 0; i < len(s); i++ {
		b := s[i]
		if b <= ' ' || b >= 0x7f || b == '{' || b == '}' || b == '"' || b == '\\' {
			return fmt.Errorf("tokencache: %s %q holds a forbidden character at byte %d", what, s, i)
		}
	}
	return nil
}
