package tokencache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"time"
)

// Token is an access token as the issuer minted it.
//
// Its String, GoString, Format and LogValue methods print a fingerprint of
// the access token, never the token itself, so a Token can be logged or
// wrapped into an error without leaking it.
type Token struct {
	AccessToken string
	TokenType   string    // "Bearer"
	Expiry      time.Time // the issuer's expiry, before any skew
}

// Valid reports whether t holds an access token that has not expired at now.
// A zero Expiry is treated as already expired: a token cache cannot share a
// token it cannot age out.
func (t Token) Valid(now time.Time) bool {
	return t.AccessToken != "" && !t.Expiry.IsZero() && now.Before(t.Expiry)
}

// Fingerprint returns a short, stable, non-reversible identifier of the
// access token ("sha256:" and 16 hex digits), safe to log and to compare
// with the token_fp field of the cached value in Redis.
func (t Token) Fingerprint() string {
	if t.AccessToken == "" {
		return ""
	}
	return fingerprint(t.AccessToken)
}

// HeaderValue returns the value for an Authorization header:
// "Bearer <token>" (the token type defaults to Bearer).
func (t Token) HeaderValue() string {
	typ := t.TokenType
	if typ == "" || equalFoldASCII(typ, "bearer") {
		typ = "Bearer"
	}
	return typ + " " + t.AccessToken
}

// String describes the token without revealing it.
func (t Token) String() string {
	if t.AccessToken == "" {
		return "Token(empty)"
	}
	return fmt.Sprintf("Token(%s %s, expires %s)", t.typ(), t.Fingerprint(), t.Expiry.UTC().Format(time.RFC3339))
}

// GoString describes the token without revealing it, for %#v.
func (t Token) GoString() string { return t.String() }

// Format makes every fmt verb (%v, %+v, %#v, %s, %q, ...) print the redacted
// form, so a token can never leak through fmt.
func (t Token) Format(f fmt.State, verb rune) {
	s := t.String()
	if verb == 'q' {
		s = fmt.Sprintf("%q", s)
	}
	_, _ = f.Write([]byte(s))
}

// LogValue implements slog.LogValuer: logs see the fingerprint and expiry only.
func (t Token) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("type", t.typ()),
		slog.String("fingerprint", t.Fingerprint()),
		slog.Time("expiry", t.Expiry),
	)
}

func (t Token) typ() string {
	if t.TokenType == "" {
		return "Bearer"
	}
	return t.TokenType
}

// fingerprint is the one place a secret is turned into something printable.
func fingerprint(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return "sha256:" + hex.EncodeToString(sum[:8])
}

func equalFoldASCII(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// Fetcher obtains a new token from the issuer.
//
// Fetch must be safe for concurrent use; the cache calls it from one
// goroutine per process at a time, but a Fetcher may be shared by caches.
// It must honour ctx, and its errors must never contain a credential or a
// token. An error may implement any of these optional methods, which the
// cache consults with errors.As:
//
//	Retryable() bool          // false: permanent (bad key, access denied); stop retrying
//	RetryAfter() time.Duration // the issuer asked us to wait this long (429, 503)
//	ErrorCode() string        // a short machine-readable code, e.g. "invalid-grant"
//
// Errors that implement none are treated as retryable.
type Fetcher interface {
	Fetch(ctx context.Context) (Token, error)
}

// FetcherFunc adapts an ordinary function to the Fetcher interface.
type FetcherFunc func(ctx context.Context) (Token, error)

// Fetch calls f(ctx).
func (f FetcherFunc) Fetch(ctx context.Context) (Token, error) { return f(ctx) }

// Identifier is implemented by Fetchers that can name the credential, scope
// and user they mint tokens for. The cache stores a fingerprint of
// Identity() beside each token and never serves a token minted under a
// different identity, so two deployments that share a namespace by mistake
// cannot hand each other's tokens out. Identity may include secrets: only a
// salted SHA-256 of it ever leaves the process.
type Identifier interface {
	Identity() string
}

var _ Fetcher = FetcherFunc(nil)
