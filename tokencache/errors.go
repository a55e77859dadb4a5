package tokencache

import (
	"errors"
	"fmt"
	"strconv"
	"time"
)

var (
	// ErrClosed is returned by calls made after Close.
	ErrClosed = errors.New("tokencache: cache closed")

	// ErrUnavailable is returned when no valid token could be obtained
	// within the wait bound: the lock holder neither published a token nor
	// a failure, and this replica could not take the lock over.
	ErrUnavailable = errors.New("tokencache: no valid token available")

	// ErrRedisUnavailable is returned under the fail-closed policy when
	// Redis cannot be reached and no valid token is held in memory.
	ErrRedisUnavailable = errors.New("tokencache: redis unavailable")

	// ErrInvalidToken is returned when the issuer answers with a token the
	// cache cannot share: empty, already expired, or without an expiry.
	ErrInvalidToken = errors.New("tokencache: issuer returned an unusable token")

	// ErrInvalidUserID is returned for a user id that could break out of
	// its key: empty, too long, or holding braces, colons, slashes,
	// whitespace or control characters.
	ErrInvalidUserID = errors.New("tokencache: invalid user id")
)

// FetchError reports a refresh that failed at the issuer, in this replica
// or, when Remote is true, in the replica that held the lock and published
// the failure to the fleet.
type FetchError struct {
	// Code is the issuer's error code when known ("invalid-grant",
	// "access-denied", ...), else a generic code such as "timeout".
	Code string
	// Retryable is false for permanent errors (a wrong key, access
	// denied): the cache remembers those briefly and does not call the
	// issuer again in that window.
	Retryable bool
	// Remote is true when the failure was learnt from another replica's
	// "failed" event; Err is then nil.
	Remote bool
	// Message is a short description, never a credential or a token.
	Message string
	// Until is when the cache will next call the issuer after a permanent
	// failure (the end of the negative-cache window); zero if retryable.
	Until time.Time
	// Err is the local cause (the Fetcher's error), if any.
	Err error
}

// Error implements the error interface.
func (e *FetchError) Error() string {
	var b []byte
	b = append(b, "tokencache: refresh failed"...)
	if e.Remote {
		b = append(b, " (reported by the lock holder)"...)
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
	return string(b)
}

// Unwrap returns the Fetcher's error, if this replica saw it.
func (e *FetchError) Unwrap() error { return e.Err }

// RedisError reports a failed Redis operation. It names the operation and
// the key, never a value.
type RedisError struct {
	Op  string // "read", "write", "lock", "invalidate", ...
	Key string
	Err error
}

// Error implements the error interface.
func (e *RedisError) Error() string {
	return fmt.Sprintf("tokencache: redis %s %s: %v", e.Op, e.Key, e.Err)
}

// Unwrap returns the go-redis error.
func (e *RedisError) Unwrap() error { return e.Err }

// ValueError reports a cached value that could not be used: not JSON, a
// wrong field type, or too large. The cache treats it as a miss and
// refetches; it surfaces only through logs and Inspect.
type ValueError struct {
	Key    string
	Reason string
}

// Error implements the error interface.
func (e *ValueError) Error() string {
	return fmt.Sprintf("tokencache: unusable value at %s: %s", e.Key, e.Reason)
}

// OAuth2Error reports a failed client-credentials token request. It carries
// the RFC 6749 error code and description, never the client secret, a token,
// or the raw response body, and implements the optional methods documented
// on Fetcher.
type OAuth2Error struct {
	// StatusCode is the token endpoint's HTTP status, or 0 when no answer
	// was received.
	StatusCode int
	// Code is the RFC 6749 error code ("invalid_client", "invalid_scope",
	// ...) when the endpoint sent one, else "http-<status>", "network",
	// "timeout", "canceled", "redirect" (the endpoint redirected; nothing
	// was sent on), "invalid-response", "invalid-token" or "invalid-config".
	Code string
	// Description is the endpoint's error_description (or a description of
	// the unusable answer), shortened, with the client secret removed.
	Description string
	// Err is the cause, if any: a network or context error, or
	// ErrInvalidToken for an answer the cache cannot use.
	Err error

	retryable  bool
	retryAfter time.Duration
}

// Error describes the failure without secrets.
func (e *OAuth2Error) Error() string {
	b := []byte("tokencache: oauth2 token request failed")
	if e.StatusCode != 0 {
		b = append(b, ": HTTP "...)
		b = strconv.AppendInt(b, int64(e.StatusCode), 10)
	}
	if e.Code != "" {
		b = append(b, " ["...)
		b = append(b, e.Code...)
		b = append(b, ']')
	}
	if e.Description != "" {
		b = append(b, ": "...)
		b = append(b, e.Description...)
	}
	if e.Err != nil {
		b = append(b, ": "...)
		b = append(b, e.Err.Error()...)
	}
	return string(b)
}

// Unwrap returns the cause.
func (e *OAuth2Error) Unwrap() error { return e.Err }

// Retryable reports whether asking again may succeed: true for 5xx, 408,
// 429 and network errors; false for 4xx answers (invalid_client,
// invalid_scope, ...) and for unusable answers.
func (e *OAuth2Error) Retryable() bool { return e.retryable }

// RetryAfter returns the wait the endpoint asked for in its Retry-After
// header, or 0.
func (e *OAuth2Error) RetryAfter() time.Duration { return e.retryAfter }

// ErrorCode returns Code.
func (e *OAuth2Error) ErrorCode() string { return e.Code }

// ccMaxRetryAfter caps a Retry-After: a longer wait is more likely a
// misconfigured proxy than advice the fleet should follow.
