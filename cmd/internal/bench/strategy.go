package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	gocache "github.com/go-redis/cache/v9"
	"github.com/go-redsync/redsync/v4"
	redsyncgoredis "github.com/go-redsync/redsync/v4/redis/goredis/v9"
	"github.com/redis/go-redis/v9"
	"golang.org/x/oauth2"
	"golang.org/x/sync/singleflight"

	"github.com/tokencache/tokencache/tokencache"
	"github.com/tokencache/tokencache/tokencache/basiq"
)

// Strategy names, as given to --strategies.
const (
	StrategyOAuth2        = "oauth2"
	StrategyGoCache       = "gocache"
	StrategyRedsync       = "redsync"
	StrategyTokencache    = "tokencache"
	StrategyTokencacheMin = "tokencache-min"
)

// Strategies lists every strategy in the order tables and charts show them.
var strategies = []string{StrategyOAuth2, StrategyGoCache, StrategyRedsync, StrategyTokencache, StrategyTokencacheMin}

// Strategies returns the names of every strategy, in report order.
func Strategies() []string { return slices.Clone(strategies) }

// RedsyncPoll is how often a redsync waiter re-reads Redis.
const RedsyncPoll = 50 * time.Millisecond

// MinOptions are the tokencache options of the tokencache-min strategy:
// the settings that send the fewest Redis commands. L1 is never re-read
// on age (events and refresh-ahead only: the default L1MaxAge); the
// subscription is probed only after an hour of silence; and refresh-ahead
// moments are spread over a fifth of the token's life instead of the
// default tenth, so that with short tokens the first replica's
// "refreshed" event reaches the others before they are due themselves
// (with a 60-minute token a tenth is already six minutes).
func MinOptions() []tokencache.Option {
	return []tokencache.Option{
		tokencache.WithTuning(tokencache.Tuning{
			ProbeInterval: time.Hour,
			ProbeTimeout:  2 * time.Second,
			RefreshJitter: 0.2,
		}),
	}
}

// replicaEnv is what one replica needs to reach Redis and the issuer.
type replicaEnv struct {
	RedisAddr string        `json:"redis"`
	IssuerURL string        `json:"issuer"`
	APIKey    string        `json:"api_key"`
	Namespace string        `json:"namespace"`
	PoolSize  int           `json:"pool_size"`
	Skew      time.Duration `json:"skew"`
	Owner     string        `json:"owner"`

	counter *cmdCounter   // counts the commands sent; nil: none
	holds   *holdRecorder // tokencache strategies: when each replica holds each token; nil: none
	index   int           // this replica's number, for holds
}

// replica is one application instance asking for the token.
type replica interface {
	// Token returns the access token and its issuer expiry.
	Token(ctx context.Context) (string, time.Time, error)
	Close() error
}

// newReplica builds one replica of the named strategy, with its own Redis
// client and HTTP client, as a separate process would have.
func newReplica(strategy string, env replicaEnv) (replica, error) {
	fetcher := basiq.New(env.APIKey, basiq.WithBaseURL(env.IssuerURL),
		basiq.WithHTTPClient(&http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}))
	var rdb *redis.Client
	if strategy != StrategyOAuth2 {
		rdb = redis.NewClient(&redis.Options{Addr: env.RedisAddr, PoolSize: env.PoolSize, MaxIdleConns: env.PoolSize})
		if env.counter != nil {
			rdb.AddHook(env.counter)
		}
	}
	switch strategy {
	case StrategyOAuth2:
		return &oauth2Replica{src: oauth2.ReuseTokenSourceWithExpiry(nil, fetcherSource{fetcher}, env.Skew)}, nil
	case StrategyGoCache:
		return &gocacheReplica{rdb: rdb, f: fetcher, skew: env.Skew, key: "bench:{" + env.Namespace + "}:gocache",
			c: gocache.New(&gocache.Options{Redis: rdb})}, nil
	case StrategyRedsync:
		rs := redsync.New(redsyncgoredis.NewPool(rdb))
		key := "bench:{" + env.Namespace + "}:redsync"
		return &redsyncReplica{rdb: rdb, f: fetcher, skew: env.Skew, key: key,
			mu: rs.NewMutex(key+":lock", redsync.WithExpiry(8*time.Second), redsync.WithTries(1))}, nil
	case StrategyTokencache, StrategyTokencacheMin:
		opts := []tokencache.Option{tokencache.WithNamespace(env.Namespace), tokencache.WithOwner(env.Owner)}
		if strategy == StrategyTokencacheMin {
			opts = append(opts, MinOptions()...)
		}
		if env.holds != nil {
			rdb.AddHook(env.holds.hook(env.index))
		}
		c, err := tokencache.New(rdb, fetcher, opts...)
		if err != nil {
			_ = rdb.Close()
			return nil, err
		}
		return &tokencacheReplica{rdb: rdb, c: c}, nil
	}
	if rdb != nil {
		_ = rdb.Close()
	}
	return nil, fmt.Errorf("bench: unknown strategy %q (want one of %s)", strategy, strings.Join(strategies, ", "))
}

// fetcherSource is the oauth2.TokenSource a Basiq sample would write
// around its /token call.
type fetcherSource struct{ f tokencache.Fetcher }

func (s fetcherSource) Token() (*oauth2.Token, error) {
	t, err := s.f.Fetch(context.Background())
	if err != nil {
		return nil, err
	}
	return &oauth2.Token{AccessToken: t.AccessToken, TokenType: t.TokenType, Expiry: t.Expiry}, nil
}

// oauth2Replica caches the token in the replica only.
type oauth2Replica struct{ src oauth2.TokenSource }

func (r *oauth2Replica) Token(context.Context) (string, time.Time, error) {
	t, err := r.src.Token()
	if err != nil {
		return "", time.Time{}, err
	}
	return t.AccessToken, t.Expiry, nil
}

func (r *oauth2Replica) Close() error { return nil }

// sharedToken is the value the gocache and redsync strategies keep in Redis.
type sharedToken struct {
	AccessToken string    `json:"access_token" msgpack:"a"`
	Expiry      time.Time `json:"expiry" msgpack:"e"`
}

// gocacheReplica asks go-redis/cache's Once for every call: one GET per
// call, and on a miss one issuer call per replica (singleflight is
// per process). It has no LocalCache: that cache has one TTL for all
// items and cannot follow a token's expiry.
type gocacheReplica struct {
	rdb  *redis.Client
	c    *gocache.Cache
	f    tokencache.Fetcher
	key  string
	skew time.Duration
}

func (r *gocacheReplica) Token(ctx context.Context) (string, time.Time, error) {
	var v sharedToken
	err := r.c.Once(&gocache.Item{
		Ctx: ctx, Key: r.key, Value: &v,
		Do: func(it *gocache.Item) (any, error) {
			t, err := r.f.Fetch(ctx)
			if err != nil {
				return nil, err
			}
			it.TTL = time.Until(t.Expiry) - r.skew
			return sharedToken{AccessToken: t.AccessToken, Expiry: t.Expiry}, nil
		},
	})
	return v.AccessToken, v.Expiry, err
}

func (r *gocacheReplica) Close() error { return r.rdb.Close() }

// redsyncReplica keeps the token in memory until its skewed expiry, then
// reads Redis; on a miss one caller per process takes a redsync lock,
// re-reads, calls the issuer and writes the token with a TTL, while every
// other replica polls Redis every RedsyncPoll.
type redsyncReplica struct {
	rdb  *redis.Client
	f    tokencache.Fetcher
	mu   *redsync.Mutex
	key  string
	skew time.Duration
	sf   singleflight.Group

	lmu   sync.Mutex // guards local
	local sharedToken
}

func (r *redsyncReplica) Token(ctx context.Context) (string, time.Time, error) {
	r.lmu.Lock()
	t := r.local
	r.lmu.Unlock()
	if t.AccessToken != "" && time.Now().Before(t.Expiry.Add(-r.skew)) {
		return t.AccessToken, t.Expiry, nil
	}
	v, err, _ := r.sf.Do("token", func() (any, error) { return r.obtain(ctx) })
	if err != nil {
		return "", time.Time{}, err
	}
	t = v.(sharedToken)
	r.lmu.Lock()
	r.local = t
	r.lmu.Unlock()
	return t.AccessToken, t.Expiry, nil
}

func (r *redsyncReplica) obtain(ctx context.Context) (sharedToken, error) {
	for {
		if t, ok, err := r.read(ctx); err != nil || ok {
			return t, err
		}
		err := r.mu.TryLockContext(ctx)
		if err == nil {
			return r.refreshLocked(ctx)
		}
		var taken *redsync.ErrTaken
		if !errors.As(err, &taken) && !errors.Is(err, redsync.ErrFailed) {
			return sharedToken{}, err
		}
		select {
		case <-ctx.Done():
			return sharedToken{}, ctx.Err()
		case <-time.After(RedsyncPoll):
		}
	}
}

func (r *redsyncReplica) refreshLocked(ctx context.Context) (sharedToken, error) {
	defer func() { _, _ = r.mu.UnlockContext(context.WithoutCancel(ctx)) }()
	if t, ok, err := r.read(ctx); err != nil || ok {
		return t, err
	}
	tok, err := r.f.Fetch(ctx)
	if err != nil {
		return sharedToken{}, err
	}
	t := sharedToken{AccessToken: tok.AccessToken, Expiry: tok.Expiry}
	b, _ := json.Marshal(t)
	if err := r.rdb.Set(ctx, r.key, b, time.Until(tok.Expiry)-r.skew).Err(); err != nil {
		return sharedToken{}, err
	}
	return t, nil
}

func (r *redsyncReplica) read(ctx context.Context) (sharedToken, bool, error) {
	b, err := r.rdb.Get(ctx, r.key).Bytes()
	if errors.Is(err, redis.Nil) {
		return sharedToken{}, false, nil
	} else if err != nil {
		return sharedToken{}, false, err
	}
	var t sharedToken
	if err := json.Unmarshal(b, &t); err != nil || !time.Now().Before(t.Expiry.Add(-r.skew)) {
		return sharedToken{}, false, nil
	}
	return t, true, nil
}

func (r *redsyncReplica) Close() error { return r.rdb.Close() }

// tokencacheReplica is tokencache.Cache.
type tokencacheReplica struct {
	rdb *redis.Client
	c   *tokencache.Cache
}

func (r *tokencacheReplica) Token(ctx context.Context) (string, time.Time, error) {
	t, err := r.c.Token(ctx)
	return t.AccessToken, t.Expiry, err
}

func (r *tokencacheReplica) Close() error {
	err := r.c.Close()
	return errors.Join(err, r.rdb.Close())
}
