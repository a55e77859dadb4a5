package tokencache

import (
	"fmt"
	"strings"

	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/tokencache/tokencache/tokencache/internal/protocol"
)

// defaultMaxUsers bounds the per-user client tokens held in memory: the
// least recently used user's copy is dropped first (it stays in Redis, so
// dropping it costs one round trip, not an issuer call).
const defaultMaxUsers = 10_000

// WithClientTokens enables per-user client tokens (Basiq's CLIENT_ACCESS
// scope, bound to one userId): newFetcher returns the Fetcher for one
// user, and at most maxUsers users are kept in memory (LRU; 0 means
// 10,000). Each user's token lives under its own keys,
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
			maxUsers = defaultMaxUsers
		}
		c.clientFetcher, c.maxUsers = newFetcher, maxUsers
		return nil
	}
}

// ValidateUserID reports whether id can name a user's token: 1 to 128
// printable ASCII bytes without braces, colons, slashes, quotes or
// whitespace, so it cannot break out of its key or hash tag (Basiq's
// UUIDs and hex ids pass). The error wraps ErrInvalidUserID and says why,
// with the byte offset of the first offending character, never the id.
func ValidateUserID(id string) error {
	if why := nameProblem(id); why != "" {
		return fmt.Errorf("%w: %s", ErrInvalidUserID, why)
	}
	return nil
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
	l, _ := lru.NewWithEvict(size, func(_ string, e *entry) { e.sched.stop() })
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
