package tokencache

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"golang.org/x/oauth2"

	"github.com/tokencache/tokencache/tokencache/internal/protocol"
)

// Handle is one shared token: the server token (the Handle embedded in
// Cache, so cache.Token is the server token's Token) or one user's client
// token (Cache.User). Every method acts on that token alone. A Handle is
// cheap and safe for concurrent use; a user's Handle holds the id, and each
// call finds the user's state in the cache's LRU.
type Handle struct {
	c    *Cache
	e    *entry // the server token's state; nil for a user's token
	user string
}

// entry is the handle's state: fixed for the server token, found or
// created in the LRU for a user.
func (h *Handle) entry() (*entry, error) {
	if h.e != nil {
		return h.e, nil
	}
	return h.c.userEntry(h.user)
}

// User returns the handle of userID's client token. It fails if the
// cache was built without WithClientTokens or the id is invalid.
func (c *Cache) User(userID string) (*Handle, error) {
	if c.users == nil {
		return nil, fmt.Errorf("tokencache: client tokens are not enabled (use WithClientTokens)")
	}
	if err := ValidateUserID(userID); err != nil {
		return nil, err
	}
	return &Handle{c: c, user: userID}, nil
}

// UserID returns the user whose client token this is, or "" for the
// server token.
func (h *Handle) UserID() string { return h.user }

// Keys reports the Redis names used for the token.
func (h *Handle) Keys() (token, lock, fence, channel string) {
	k := h.c.server.k
	if h.e == nil {
		k = protocol.ClientKeys(h.c.cfg.prefix, h.c.cfg.namespace, h.user)
	}
	return k.Token, k.Lock, k.Fence, k.Channel
}

// Token returns a valid token, from memory when it can (no Redis round
// trip, no allocation), else from Redis, else by refreshing it: one
// replica of the fleet calls the issuer while the others wait for its
// event. It never returns a token past its skewed expiry. ctx bounds this
// caller's wait only; a refresh that other callers share goes on.
func (h *Handle) Token(ctx context.Context) (Token, error) {
	e, err := h.entry()
	if err != nil {
		return Token{}, err
	}
	return e.token(ctx)
}

// Token is the server token's Handle.Token. It is declared on Cache (not
// only promoted from the embedded Handle) so that the hot path, a copy in
// memory, is one call: the compiler inlines this into the caller.
func (c *Cache) Token(ctx context.Context) (Token, error) {
	return c.server.token(ctx)
}

// Invalidate deletes the shared token if it is still tok (compare and
// delete: a token that replaced tok meanwhile is kept) and publishes
// "invalidated", so every replica drops its copy. It reports whether the
// token was deleted. Use it when the API rejects tok with 401.
func (h *Handle) Invalidate(ctx context.Context, tok Token) (bool, error) {
	if tok.AccessToken == "" {
		return false, errors.New("tokencache: Invalidate needs the token that failed")
	}
	return h.InvalidateFingerprint(ctx, tok.Fingerprint(), 0)
}

// InvalidateFingerprint is Invalidate for a token known by its fingerprint
// (Token.Fingerprint, or the token_fp field shown by Inspect), and, if gen
// is positive, its generation. An empty fingerprint and a zero generation
// delete whatever is cached.
func (h *Handle) InvalidateFingerprint(ctx context.Context, fp string, gen int64) (bool, error) {
	e, err := h.entry()
	if err != nil {
		return false, err
	}
	return e.invalidate(ctx, fp, gen)
}

// Offer stores tok as the shared token if it expires later than the one in
// Redis (newest expiry wins, atomically) and publishes "refreshed". It is
// how a token rotated by the API (a newer token in a response header)
// reaches the fleet. It reports whether tok was stored.
func (h *Handle) Offer(ctx context.Context, tok Token) (bool, error) {
	e, err := h.entry()
	if err != nil {
		return false, err
	}
	return e.offer(ctx, tok)
}

// Refresh is the cron path: it refreshes the shared token if less than
// minTTL of it remains (or none is cached), or always with force. Many
// hosts may run it at once: they queue on the lock, and each re-checks
// Redis after taking it, so one issuer call serves them all.
func (h *Handle) Refresh(ctx context.Context, minTTL time.Duration, force bool) (RefreshResult, error) {
	e, err := h.entry()
	if err != nil {
		return RefreshResult{}, err
	}
	return e.refreshNow(ctx, minTTL, force)
}

// Inspect reads the cached token's metadata, the lock and the fence.
func (h *Handle) Inspect(ctx context.Context) (Status, error) {
	e, err := h.entry()
	if err != nil {
		return Status{}, err
	}
	return e.inspect(ctx)
}

// Transport returns an http.RoundTripper that authorizes each request
// with the cached token ("Authorization: Bearer …") and recovers from a
// 401: it invalidates the token only if it is still the one that failed
// (so a hundred replicas that see the same 401 cause one issuer call
// between them), gets the new one through the cache, and retries the
// request once. A request whose body cannot be rewound (no GetBody) is not
// retried: its 401 is returned. base nil means http.DefaultTransport.
//
// A 401 is decided on evidence (see evidence.go). A token the API
// accepted before, or the one that was served when an invalidation
// happened, is always invalidated and the request retried: a second
// revocation soon after a first one is the token's fault. "Accepted
// before" is the fleet's knowledge: the first time a replica sees the API
// accept a token, it records that in Redis (one SET NX per token and
// replica, off the request path; see docs/redis.md): a token the API
// accepted from any replica, and revoked since, is never evidence against
// the API. A request is retried once at most. Only a token
// fetched after an invalidation that the API rejects before accepting any
// request is evidence against the API (a revoked application, a wrong base
// URL, an outage that answers 401): for a window of 10 s, doubling up to 5
// minutes with each such token in a row, the 401s of tokens the API has
// not accepted are returned to the caller without another invalidation, so
// an API that rejects every token costs the fleet a few issuer calls per
// window, whatever the request rate. The replica that finds the evidence
// tells the fleet (a "rejected" event), so every replica holds back
// together; the first response that is not a 401 ends the window.
// Stats().RejectionsHeld counts the 401s returned this way.
func (h *Handle) Transport(base http.RoundTripper) http.RoundTripper {
	return &transport{h: h, c: h.c, base: base}
}

// TokenSource returns an oauth2.TokenSource over the token, so the cache
// plugs into oauth2.NewClient and everything built on it. oauth2's
// TokenSource has no context, so ctx is captured here and used for every
// Token call: this is the one place the package keeps a context. The
// oauth2.Token's Expiry is the skewed expiry, so oauth2's own reuse never
// outlives the cache's.
func (h *Handle) TokenSource(ctx context.Context) oauth2.TokenSource {
	return tokenSource{h: h, ctx: ctx}
}
