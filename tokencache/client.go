package tokencache

import (
	"context"
	"fmt"
	"strings"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/tokencache/tokencache/tokencache/internal/protocol"
)

// DefaultMaxUsers bounds the per-user client tokens held in memory: the
// least recently used user's copy is dropped first (it stays in Redis, so
// dropping it costs one round trip, not an issuer call).
const DefaultMaxUsers = 10_000

// WithClientTokens enables per-user client tokens (Basiq's CLIENT_ACCESS
// scope, bound to one userId): newFetcher returns the Fetcher for one
// user, and at most maxUsers users are kept in memory (LRU; 0 means
// DefaultMaxUsers). Each user's token lives under its own keys,
// "<prefix>:{<namespace>/<user>}:client", so users spread over cluster
// slots.
func WithClientTokens(newFetcher func(userID string) (Fetcher, error), maxUsers int) Option {
	return func(c *config) error {
		if newFetcher == nil {
			return fmt.Errorf("tokencache: WithClientTokens needs a fetcher constructor")
		}
		if maxUsers < 0 {
			return fmt.Errorf("tokencache: negative maxUsers %d", maxUsers)
		}
		if maxUsers == 0 {
			maxUsers = DefaultMaxUsers
		}
		c.clientFetcher, c.maxUsers = newFetcher, maxUsers
		return nil
	}
}

// ValidateUserID reports whether id can name a user's token: 1-128
// printable ASCII bytes without braces, colons, slashes, quotes or
// whitespace, so it cannot break out of its key or hash tag.
func ValidateUserID(id string) error {
	if id == "" || len(id) > 128 {
		return fmt.Errorf("%w: must be 1-128 bytes, got %d", ErrInvalidUserID, len(id))
	}
	for i := 0; i < len(id); i++ {
		b := id[i]
		if b <= ' ' || b >= 0x7f || strings.IndexByte(`{}:/\"'`, b) >= 0 {
			return fmt.Errorf("%w: forbidden character at byte %d", ErrInvalidUserID, i)
		}
	}
	return nil
}

// User is the handle of one user's client token. It is cheap: it holds
// the id, and each call finds the user's state in the cache's LRU.
type User struct {
	c  *Cache
	id string
}

// User returns the handle of userID's client token. It fails if the
// cache was built without WithClientTokens or the id is invalid.
func (c *Cache) User(userID string) (*User, error) {
	if c.users == nil {
		return nil, fmt.Errorf("tokencache: client tokens are not enabled (use WithClientTokens)")
	}
	if err := ValidateUserID(userID); err != nil {
		return nil, err
	}
	return &User{c: c, id: userID}, nil
}

// ClientToken is shorthand for User(userID) then Token.
func (c *Cache) ClientToken(ctx context.Context, userID string) (Token, error) {
	u, err := c.User(userID)
	if err != nil {
		return Token{}, err
	}
	return u.Token(ctx)
}

// ID returns the user id.
func (u *User) ID() string { return u.id }

// Keys reports the Redis names used for the user's client token.
func (u *User) Keys() (token, lock, fence, channel string) {
	k := protocol.ClientKeys(u.c.cfg.prefix, u.c.cfg.namespace, u.id)
	return k.Token, k.Lock, k.Fence, k.Channel
}

// Token returns a valid client token for the user, exactly as
// Cache.Token does for the server token.
func (u *User) Token(ctx context.Context) (Token, error) {
	e, err := u.c.userEntry(u.id)
	if err != nil {
		return Token{}, err
	}
	return e.token(ctx)
}

// Invalidate is Cache.Invalidate for the user's token.
func (u *User) Invalidate(ctx context.Context, tok Token) (bool, error) {
	if tok.AccessToken == "" {
		return false, fmt.Errorf("tokencache: Invalidate needs the token that failed")
	}
	e, err := u.c.userEntry(u.id)
	if err != nil {
		return false, err
	}
	return e.invalidate(ctx, tok.Fingerprint(), 0)
}

// InvalidateFingerprint is Cache.InvalidateFingerprint for the user's token.
func (u *User) InvalidateFingerprint(ctx context.Context, fp string, gen int64) (bool, error) {
	e, err := u.c.userEntry(u.id)
	if err != nil {
		return false, err
	}
	return e.invalidate(ctx, fp, gen)
}

// Refresh is Cache.Refresh for the user's token.
func (u *User) Refresh(ctx context.Context, minTTL time.Duration, force bool) (RefreshResult, error) {
	e, err := u.c.userEntry(u.id)
	if err != nil {
		return RefreshResult{}, err
	}
	return e.refreshNow(ctx, minTTL, force)
}

// Inspect is Cache.Inspect for the user's token.
func (u *User) Inspect(ctx context.Context) (Status, error) {
	e, err := u.c.userEntry(u.id)
	if err != nil {
		return Status{}, err
	}
	return e.inspect(ctx)
}

// userEntry finds or creates the user's state.
func (c *Cache) userEntry(id string) (*entry, error) {
	if e, ok := c.users.Get(id); ok {
		return e, nil
	}
	f, err := c.cfg.clientFetcher(id)
	if err != nil {
		return nil, fmt.Errorf("tokencache: fetcher for user: %w", err)
	}
	if f == nil {
		return nil, fmt.Errorf("tokencache: nil fetcher for user")
	}
	e := c.newEntry(protocol.ClientKeys(c.cfg.prefix, c.cfg.namespace, id), f)
	if prev, ok, _ := c.users.PeekOrAdd(id, e); ok {
		return prev, nil
	}
	return e, nil
}

func newUserLRU(size int) *lru.Cache[string, *entry] {
	// size > 0 is checked by the option. An evicted entry's timer would
	// keep it in memory until its moment.
	l, _ := lru.NewWithEvict(size, func(_ string, e *entry) { e.stopTimer() })
	return l
}

// userOfKey extracts the user id from a client token key of this cache.
func (c *Cache) userOfKey(key string) (string, bool) {
	pre := c.cfg.prefix + ":{" + c.cfg.namespace + "/"
	rest, ok := strings.CutPrefix(key, pre)
	if !ok {
		return "", false
	}
	return strings.CutSuffix(rest, "}:client")
}
