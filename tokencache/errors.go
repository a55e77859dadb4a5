package tokencache

import (
	"errors"
	"fmt"
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

	// ErrInvalidNamespace is returned for a namespace ValidateNamespace
	// refuses: empty, too long, or holding braces, colons, slashes,
	// quotes, whitespace or control characters.
	ErrInvalidNamespace = errors.New("tokencache: invalid namespace")
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

// TuningError reports a Tuning field that New cannot use (see
// WithTuning): the field, the value given and why.
type TuningError struct {
	Field  string // the Tuning field, such as "LockTTL"
	Value  any    // the value given
	Reason string // such as "is below 10ms"
}

// Error implements the error interface.
func (e *TuningError) Error() string {
	return fmt.Sprintf("tokencache: Tuning.%s %v %s", e.Field, e.Value, e.Reason)
}
