package basiq

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Error codes this package assigns itself, beside the issuer's own codes
// (invalid-request, parameter-not-valid, unsupported-grant-type,
// invalid-grant, access-denied, internal-server-error, ...).
const (
	// CodeTimeout: the request did not complete before its deadline.
	CodeTimeout = "timeout"
	// CodeCanceled: the caller's context was cancelled.
	CodeCanceled = "canceled"
	// CodeNetwork: the request failed below HTTP (DNS, connect, reset, TLS).
	CodeNetwork = "network"
	// CodeInvalidResponse: a success status with a body that is not a token
	// response (not JSON, truncated, wrong field types).
	CodeInvalidResponse = "invalid-response"
	// CodeInvalidToken: a token response whose token is empty or unusable,
	// or whose expires_in is missing, non-positive or absurd.
	CodeInvalidToken = "invalid-token"
	// CodeResponseTooLarge: the response body exceeded MaxResponseBytes.
	CodeResponseTooLarge = "response-too-large"
	// CodeInvalidConfig: the Fetcher is misconfigured (see ConfigError).
	CodeInvalidConfig = "invalid-config"
)

// MaxRetryAfter caps the delay a Retry-After header can ask for, so a
// garbled or hostile header cannot park the fleet for days. An hour is a
// full Basiq token lifetime.
const MaxRetryAfter = time.Hour

// maxFieldLen bounds each issuer-supplied text field kept in an Error.
const maxFieldLen = 256

// Error reports a failed call to the Basiq token endpoint: an error answer
// from Basiq (Status > 0 and, when Basiq sent one, its error object), an
// unusable success answer, or a transport failure (Status 0, Code
// "timeout", "canceled" or "network", cause in Err).
//
// It implements the optional methods tokencache.Fetcher documents
// (Retryable, RetryAfter, ErrorCode), and never holds the API key or a
// token: issuer text is sanitized and any echo of the key is redacted
// before it is stored.
type Error struct {
	// Op is the request, e.g. "POST /token".
	Op string
	// Scope is the requested token scope: SERVER_ACCESS or CLIENT_ACCESS.
	Scope string
	// Status is the HTTP status code, 0 if no response was received.
	Status int
	// Code is Basiq's error code ("access-denied", ...), or this package's
	// ("http-502" for an error answer without a Basiq error object,
	// "timeout", "network", "invalid-token", ...).
	Code string
	// Title and Detail are Basiq's human-readable description, sanitized.
	Title  string
	Detail string
	// CorrelationID identifies the request in Basiq's logs; quote it to
	// Basiq support.
	CorrelationID string
	// Source names the offending request part, e.g. "parameter userId"
	// or "pointer /scope", when Basiq reported one.
	Source string
	// RetryAfterDelay is the wait a 429 or 503 answer asked for with a
	// Retry-After header (seconds or HTTP-date), capped at MaxRetryAfter;
	// 0 when absent.
	RetryAfterDelay time.Duration
	// Err is the underlying cause for transport failures and unusable
	// responses (context.DeadlineExceeded, a *net.OpError,
	// tokencache.ErrInvalidToken, ...), else nil.
	Err error

	// cause is Err's message with any secret redacted, computed when the
	// error was built (while the secret was known).
	cause string
}

// Error describes the failure on one line, e.g.
//
//	basiq: POST /token: 403 access-denied: Forbidden: account disabled (correlationId abc)
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("basiq: ")
	if e.Op != "" {
		b.WriteString(e.Op)
		b.WriteString(": ")
	}
	if e.Status > 0 {
		b.WriteString(strconv.Itoa(e.Status))
		b.WriteByte(' ')
	}
	b.WriteString(e.Code)
	for _, s := range []string{e.Title, e.Detail, e.cause} {
		if s != "" {
			b.WriteString(": ")
			b.WriteString(s)
		}
	}
	var paren []string
	if e.Source != "" {
		paren = append(paren, e.Source)
	}
	if e.CorrelationID != "" {
		paren = append(paren, "correlationId "+e.CorrelationID)
	}
	if e.RetryAfterDelay > 0 {
		paren = append(paren, "retry after "+e.RetryAfterDelay.String())
	}
	if len(paren) > 0 {
		b.WriteString(" (")
		b.WriteString(strings.Join(paren, ", "))
		b.WriteByte(')')
	}
	return b.String()
}

// Unwrap returns the underlying cause, so errors.Is(err,
// context.DeadlineExceeded) and errors.Is(err, tokencache.ErrInvalidToken)
// work through an *Error.
func (e *Error) Unwrap() error { return e.Err }

// ErrorCode returns Code.
func (e *Error) ErrorCode() string { return e.Code }

// RetryAfter returns RetryAfterDelay: how long the issuer asked callers
// to wait before the next attempt, or 0.
func (e *Error) RetryAfter() time.Duration { return e.RetryAfterDelay }

// Retryable reports whether calling again may succeed: true for transport
// failures, timeouts, 408, 425, 429, 5xx and unusable success answers
// (proxies and overloaded issuers garble answers transiently); false for
// every other answer — invalid-request, parameter-not-valid,
// unsupported-grant-type, invalid-grant, 401, 403 access-denied, 404 —
// which will fail the same way until someone changes the configuration.
func (e *Error) Retryable() bool {
	if e.Status == 0 {
		return e.Code != CodeInvalidConfig
	}
	return retryableStatus(e.Status)
}

func retryableStatus(status int) bool {
	switch {
	case status >= 200 && status < 300:
		// A success status with an unusable body.
		return true
	case status == http.StatusRequestTimeout,
		status == http.StatusTooEarly,
		status == http.StatusTooManyRequests:
		return true
	case status >= 500:
		return true
	}
	return false
}

// ConfigError reports a Fetcher that cannot work as configured (no API
// key, a key holding whitespace or control characters, a malformed base
// URL, an option given a value it cannot use). It is permanent: Retryable
// reports false. It never holds the key.
type ConfigError struct {
	Field  string // "api key", "base URL", "version", "HTTP client", "clock", "timeout", "request"
	Reason string
	Err    error // e.g. tokencache.ErrInvalidUserID, or nil
}

// Error implements the error interface.
func (e *ConfigError) Error() string {
	return "basiq: invalid " + e.Field + ": " + e.Reason
}

// Unwrap returns the underlying cause, if any.
func (e *ConfigError) Unwrap() error { return e.Err }

// Retryable reports false: configuration does not fix itself.
func (e *ConfigError) Retryable() bool { return false }

// ErrorCode returns "invalid-config".
func (e *ConfigError) ErrorCode() string { return CodeInvalidConfig }

// transportError classifies an error from http.Client.Do (or from reading
// the body) into a retryable *Error.
func transportError(op, scope string, err error, r *redactor) *Error {
	code := CodeNetwork
	var te interface{ Timeout() bool }
	switch {
	case errors.Is(err, context.Canceled):
		code = CodeCanceled
	case errors.Is(err, context.DeadlineExceeded),
		errors.As(err, &te) && te.Timeout():
		code = CodeTimeout
	}
	// url.Error repeats the URL; keep only its cause in the message
	// (Unwrap still reaches everything).
	msg := err.Error()
	var ue *url.Error
	if errors.As(err, &ue) && ue.Err != nil {
		msg = ue.Err.Error()
	}
	return &Error{Op: op, Scope: scope, Code: code, Err: err, cause: r.clean(msg, 2*maxFieldLen)}
}

// redactor removes secrets from text bound for an error message.
type redactor struct {
	secrets []secret
}

func newRedactor(secrets ...string) *redactor {
	r := &redactor{}
	for _, s := range secrets {
		// Very short "secrets" would redact ordinary words; keys are long.
		if len(s) >= 4 {
			r.secrets = append(r.secrets, newSecret(s))
		}
	}
	return r
}

// clean redacts secrets, replaces control and non-printable characters
// with spaces, collapses runs of spaces and truncates to max bytes.
func (r *redactor) clean(s string, max int) string {
	if r != nil {
		for _, secret := range r.secrets {
			s = strings.ReplaceAll(s, secret.reveal(), "[REDACTED]")
		}
	}
	return sanitize(s, max)
}

// sanitize keeps printable text only: control characters, invalid UTF-8
// and other non-printable runes become spaces; the result is trimmed and
// cut at max bytes on a rune boundary with "…" appended.
func sanitize(s string, max int) string {
	var b strings.Builder
	space := false
	for _, r := range s {
		if r == utf8.RuneError || !unicode.IsPrint(r) {
			r = ' '
		}
		if r == ' ' {
			if space {
				continue
			}
			space = true
		} else {
			space = false
		}
		if b.Len()+len(string(r)) > max {
			return strings.TrimSpace(b.String()) + "…"
		}
		b.WriteRune(r)
	}
	return strings.TrimSpace(b.String())
}
