package jwtauth

import (
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/tokencache/tokencache/tokencache"
)

// Conditions a token or an authenticate answer can fail. Each matches
// tokencache.ErrInvalidToken as well with errors.Is: the issuer answered, but
// with nothing the cache can share.
var (
	// ErrMalformedToken: not a compact JWS (three base64url parts whose
	// first two are JSON objects), or longer than 16 KiB.
	ErrMalformedToken error = &tokenError{"jwtauth: malformed token"}

	// ErrMissingExpiry: the token has no exp claim, so the cache could not
	// age it out.
	ErrMissingExpiry error = &tokenError{"jwtauth: token has no exp claim"}

	// ErrInvalidExpiry: exp is not a JSON number, or not a plausible date.
	ErrInvalidExpiry error = &tokenError{"jwtauth: token exp claim is not a valid date"}

	// ErrExpired: the token's exp is not after the current time.
	ErrExpired error = &tokenError{"jwtauth: token already expired"}

	// ErrSignature: verification was asked for and the HS256 signature
	// does not match.
	ErrSignature error = &tokenError{"jwtauth: token signature does not verify"}

	// ErrAlgorithm: verification was asked for and the token's alg is not
	// HS256 ("none" included).
	ErrAlgorithm error = &tokenError{"jwtauth: token algorithm not accepted"}

	// ErrResponse: a successful authenticate answer held no token in a
	// recognised form (text, a JSON string, or a JSON object with a token,
	// access_token or jwt field).
	ErrResponse error = &tokenError{"jwtauth: unrecognised authenticate response"}

	// ErrResponseTooLarge: a successful authenticate answer was larger than
	// 64 KiB.
	ErrResponseTooLarge error = &tokenError{"jwtauth: authenticate response too large"}
)

// Conditions of the Fetcher's configuration and of the issuer's routing.
// Both are permanent.
var (
	// ErrConfig is wrapped by the error Validate and Fetch return when the
	// Fetcher itself is misconfigured (no base URL, one that is not http or
	// https, an option given a value it cannot use). It is permanent: no
	// retry will fix it.
	ErrConfig = errors.New("jwtauth: invalid configuration")

	// ErrRedirect is wrapped by the error Fetch returns when the issuer
	// answers the authenticate request with a redirect, to any host: the
	// request body holds the credentials, and a redirect must not carry them
	// anywhere the caller did not configure. It is permanent: fix the base
	// URL (the error names where the issuer pointed).
	ErrRedirect = errors.New("jwtauth: refusing to follow a redirect with the credentials")
)

// errNotObject is internal: a JSON value that should be an object is not.
var errNotObject = errors.New("not a JSON object")

// tokenError is the type of the token sentinels (ErrMalformedToken to
// ErrResponseTooLarge). Its Is method makes each
// of them match tokencache.ErrInvalidToken too.
type tokenError struct{ msg string }

// Error implements the error interface.
func (e *tokenError) Error() string { return e.msg }

// Is reports whether target is tokencache.ErrInvalidToken.
func (e *tokenError) Is(target error) bool { return target == tokencache.ErrInvalidToken }

// detailError adds a reason to a sentinel. The reason never quotes the token.
type detailError struct {
	sentinel error
	reason   string
}

// Error implements the error interface.
func (e *detailError) Error() string { return e.sentinel.Error() + ": " + e.reason }

// Unwrap returns the underlying error.
func (e *detailError) Unwrap() error { return e.sentinel }

func malformed(reason string) error     { return &detailError{ErrMalformedToken, reason} }
func invalidExpiry(reason string) error { return &detailError{ErrInvalidExpiry, reason} }
func algorithm(reason string) error     { return &detailError{ErrAlgorithm, reason} }

// Error is the error Fetch returns. It says what went wrong in words an
// operator can act on, and never contains the API key, the client secret or
// a token: the issuer's error message is shortened and scrubbed of both
// credentials and of anything shaped like a JWT.
//
// It implements the optional methods documented on tokencache.Fetcher, so the
// cache knows whether to retry, for how long to wait, and what to publish.
type Error struct {
	// StatusCode is the issuer's HTTP status, or 0 when no response was
	// received (a network error, a cancelled context).
	StatusCode int
	// Code is a short machine-readable code: the issuer's own when its
	// error body carried one, else "http-<status>", "network", "timeout",
	// "canceled", "invalid-token", "expired-token", "invalid-signature".
	Code string
	// Message is the issuer's error message, shortened and scrubbed; empty
	// when there was none.
	Message string
	// Err is the cause: a network or context error, or one of this
	// package's sentinels (ErrExpired, ErrMissingExpiry, ...).
	Err error

	retryAfter time.Duration // from the Retry-After header; 0 when absent
}

// Error describes the failure without credentials or tokens.
func (e *Error) Error() string {
	b := []byte("jwtauth: authenticate failed")
	if e.StatusCode != 0 {
		b = append(b, ": HTTP "...)
		b = strconv.AppendInt(b, int64(e.StatusCode), 10)
		if t := http.StatusText(e.StatusCode); t != "" {
			b = append(b, ' ')
			b = append(b, t...)
		}
	}
	if e.Code != "" {
		b = append(b, " ["...)
		b = append(b, e.Code...)
		b = append(b, ']')
	}
	if e.Message != "" {
		b = append(b, ": "...)
		b = append(b, e.Message...)
	}
	if e.Err != nil {
		b = append(b, ": "...)
		b = append(b, e.Err.Error()...)
	}
	return string(b)
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// Retryable reports whether calling the issuer again may succeed: true for
// 5xx, 408, 429 and network errors; false for other 4xx answers (400, 401,
// 403, 404: the request or the credentials are wrong), for a misconfigured
// Fetcher (ErrConfig) or a redirect (ErrRedirect), and for a
// successful
// answer carrying an unusable token (expired on arrival, unsigned, without
// exp), which the same request would only produce again.
func (e *Error) Retryable() bool {
	switch s := e.StatusCode; {
	case s == http.StatusTooManyRequests || s == http.StatusRequestTimeout || s >= 500:
		return true
	case s >= 400:
		return false
	case errors.Is(e.Err, tokencache.ErrInvalidToken), errors.Is(e.Err, ErrConfig), errors.Is(e.Err, ErrRedirect):
		return false
	default:
		return true
	}
}

// RetryAfter returns how long the issuer asked callers to wait (its
// Retry-After header, in seconds or as an HTTP date), or 0.
func (e *Error) RetryAfter() time.Duration { return e.retryAfter }

// ErrorCode returns Code.
func (e *Error) ErrorCode() string { return e.Code }

var _ interface {
	Retryable() bool
	RetryAfter() time.Duration
	ErrorCode() string
} = (*Error)(nil)
