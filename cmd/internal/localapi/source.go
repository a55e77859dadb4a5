package localapi

// This file is the one adapter between the tokencache library and the
// local API: every call into package tokencache is here.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/tokencache/tokencache/tokencache"
)

// Token is a token as the local API serves it.
type Token struct {
	AccessToken string
	TokenType   string
	Expiry      time.Time // the issuer's expiry
}

// Tiers that answer a Token call, as the metrics name them.
const (
	TierMemory = "memory" // the process's copy (L1)
	TierRedis  = "redis"  // the fleet's copy (L2)
	TierIssuer = "issuer" // a refresh: this call made or waited for an issuer call
	TierNone   = "none"   // no token was asked for (refused before)
)

// Source is the fleet's tokens as the handlers use them. A userID of ""
// names the server token, any other a user's client token. Its methods
// are safe for concurrent use.
type Source interface {
	// Token returns a valid token and the tier that answered.
	Token(ctx context.Context, userID string) (Token, string, error)
	// Invalidate handles a client's report that the API rejected the
	// token fp, by the rule Transport follows for a 401 (see
	// tokencache.Handle.Rejected): the token is deleted fleet-wide at
	// most once, and not at all while the evidence says the API, not the
	// token, is at fault.
	Invalidate(ctx context.Context, userID, fp string) (Report, error)
	// Cached reports whether the token is in this process's memory, so
	// that Token costs no issuer call (a user's first token does).
	Cached(userID string) bool
	// Fingerprint returns the fingerprint of an access token, as Token
	// answers carry none and clients may report the token itself.
	Fingerprint(accessToken string) string
	// Transport returns a RoundTripper that authorizes requests with the
	// token and, on a 401, invalidates it once for the fleet and retries
	// once.
	Transport(userID string, base http.RoundTripper) (http.RoundTripper, error)
	// Explain turns a Token error into the one line a client may see: the
	// cause named, no secret.
	Explain(err error) string
}

// Report is what Invalidate did with a reported rejection.
type Report struct {
	// Invalidated: the token was deleted for the fleet by this report.
	Invalidated bool
	// Held: the rejection is taken as the API's fault (a token fetched
	// after an invalidation was reported at once); the token is kept for
	// HeldFor.
	Held    bool
	HeldFor time.Duration
}

// ErrBadRequest is the class of errors the client caused (an invalid user
// id, client tokens not enabled): they are answered 400, not 503.
var ErrBadRequest = errors.New("bad request")

// cacheSource is a Source over a tokencache.Cache.
type cacheSource struct {
	c       *tokencache.Cache
	users   bool
	explain func(error) string
}

// NewSource returns the Source of c. With users, ?user_id= asks for a
// user's client token (c must have been built with
// tokencache.WithClientTokens). explain turns an error into a one-line
// reason for a client (nil: the error's text).
func NewSource(c *tokencache.Cache, users bool, explain func(error) string) Source {
	if explain == nil {
		explain = func(err error) string { return strings.TrimPrefix(err.Error(), "tokencache: ") }
	}
	return &cacheSource{c: c, users: users, explain: explain}
}

func (s *cacheSource) handle(userID string) (*tokencache.Handle, error) {
	if userID == "" {
		return s.c.Handle, nil
	}
	if !s.users {
		return nil, fmt.Errorf("%w: per-user client tokens are not enabled here", ErrBadRequest)
	}
	u, err := s.c.User(userID)
	if err != nil {
		return nil, fmt.Errorf("%w: user_id: %s", ErrBadRequest, strings.TrimPrefix(err.Error(), "tokencache: "))
	}
	return u, nil
}

func (s *cacheSource) Token(ctx context.Context, userID string) (Token, string, error) {
	h, err := s.handle(userID)
	if err != nil {
		return Token{}, TierNone, err
	}
	// The counters are the cache's, shared by concurrent calls: a call
	// that waited while another fetched counts as the issuer's, which it
	// is in effect.
	before := s.c.Stats()
	tok, err := h.Token(ctx)
	after := s.c.Stats()
	tier := TierMemory
	switch {
	case after.IssuerCalls > before.IssuerCalls || after.Waits > before.Waits:
		tier = TierIssuer
	case after.RedisReads > before.RedisReads:
		tier = TierRedis
	}
	if err != nil {
		return Token{}, tier, err
	}
	return Token{AccessToken: tok.AccessToken, TokenType: tok.TokenType, Expiry: tok.Expiry}, tier, nil
}

func (s *cacheSource) Invalidate(ctx context.Context, userID, fp string) (Report, error) {
	h, err := s.handle(userID)
	if err != nil {
		return Report{}, err
	}
	r, err := h.Rejected(ctx, fp)
	return Report{Invalidated: r.Invalidated, Held: r.Held, HeldFor: r.HeldFor}, err
}

func (s *cacheSource) Cached(userID string) bool {
	h, err := s.handle(userID)
	return err == nil && h.Cached()
}

func (s *cacheSource) Fingerprint(accessToken string) string {
	return tokencache.Token{AccessToken: accessToken}.Fingerprint()
}

func (s *cacheSource) Transport(userID string, base http.RoundTripper) (http.RoundTripper, error) {
	h, err := s.handle(userID)
	if err != nil {
		return nil, err
	}
	return h.Transport(base), nil
}

func (s *cacheSource) Explain(err error) string {
	if errors.Is(err, ErrBadRequest) {
		return strings.TrimPrefix(err.Error(), ErrBadRequest.Error()+": ")
	}
	return s.explain(err)
}

// Fetcher is the library's fetcher, for UserTokens.
type Fetcher = tokencache.Fetcher

// UserTokens is the cache option that enables ?user_id=: newFetcher
// returns the fetcher of one user's client token, and the least recently
// used users beyond the library's default bound are dropped from memory
// (they stay in Redis).
func UserTokens(newFetcher func(userID string) (Fetcher, error)) tokencache.Option {
	return tokencache.WithClientTokens(newFetcher, 0)
}
