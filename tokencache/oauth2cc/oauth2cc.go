// Package oauth2cc adapts any OAuth2 client-credentials issuer (RFC 6749
// §4.4), configured as for golang.org/x/oauth2/clientcredentials, into a
// tokencache.Fetcher:
//
//	cfg := &clientcredentials.Config{ClientID: id, ClientSecret: secret, TokenURL: url}
//	cache, err := tokencache.New(rdb, oauth2cc.New(cfg))
package oauth2cc

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/tokencache/tokencache/internal/httpx"
	"github.com/tokencache/tokencache/tokencache"
)

// New returns a Fetcher for any OAuth2 client-credentials
// issuer (RFC 6749 §4.4), configured as for golang.org/x/oauth2.
//
// Each Fetch asks the token endpoint for a new token through cfg.Token: it
// keeps no token of its own, since caching is the Cache's job (and
// cfg.TokenSource, which caches per process, would hide refreshes from the
// fleet). The HTTP client is the one x/oauth2 takes from the Fetch context
// (see oauth2.HTTPClient), else http.DefaultClient, but always a copy that
// follows no redirect: the request carries the client secret (in the
// Authorization header or the form), and Go forwards the header to the same
// host on another port or scheme. A redirect fails the Fetch with an
// *Error whose code is "redirect". Each request is bounded by
// Timeout on top of the Fetch context; x/oauth2 reads at
// most 1 MiB of an answer. cfg must not change once the Fetcher is in use.
//
// The token's type defaults to "Bearer", and its expiry is the one x/oauth2
// derives from expires_in: an answer without expires_in cannot be shared, and
// Fetch refuses it with an error wrapping tokencache.ErrInvalidToken. Failures are
// *Error values that carry the RFC 6749 error code and never the
// client secret, a token, or the raw response body.
//
// The Fetcher also implements Identifier: its identity covers the token URL,
// the client id and secret, the scopes and the extra endpoint parameters.
func New(cfg *clientcredentials.Config) tokencache.Fetcher {
	return &fetcher{cfg: func() *clientcredentials.Config { return cfg }, now: time.Now, timeout: Timeout}
}

// NewFunc is New with a configuration that may change while the program
// runs: cfg is called for each token request and by Identity, so a client
// id or secret rotated in a secrets file or manager is used by the next
// request without rebuilding the Fetcher or the cache. cfg must be safe
// for concurrent use and cheap (return a Config held in memory, replaced
// whole on a rotation, never changed in place). A nil cfg, or a nil
// Config, fails each Fetch with an "invalid-config" *Error.
//
// The cache fingerprints the credential from Identity, so after a rotation
// it treats tokens minted under the previous credential as another
// credential's (see tokencache.Identifier).
func NewFunc(cfg func() *clientcredentials.Config) tokencache.Fetcher {
	if cfg == nil {
		cfg = func() *clientcredentials.Config { return nil }
	}
	return &fetcher{cfg: cfg, now: time.Now, timeout: Timeout}
}

// Timeout bounds one token request of the Fetcher, connection to last byte. A token endpoint answers in well under
// a second; 15 s rides out a slow TLS handshake yet stays well inside a
// refresh lock's lease. A shorter deadline on the Fetch context wins.
const Timeout = 15 * time.Second

// fetcher is the Fetcher ClientCredentials returns.
type fetcher struct {
	cfg     func() *clientcredentials.Config // the configuration of the moment
	now     func() time.Time
	timeout time.Duration // per request; 0: the context alone
}

// errCCRedirect is what the Fetcher's HTTP client answers a redirect with.
var errCCRedirect = errors.New("oauth2cc: refusing to follow a redirect with the client credentials")

// noRedirectContext returns ctx with the HTTP client x/oauth2 will use
// replaced by a copy that follows no redirect.
func noRedirectContext(ctx context.Context) context.Context {
	hc := http.DefaultClient
	if c, ok := ctx.Value(oauth2.HTTPClient).(*http.Client); ok && c != nil {
		hc = c
	}
	cp := *hc
	cp.CheckRedirect = func(*http.Request, []*http.Request) error { return errCCRedirect }
	return context.WithValue(ctx, oauth2.HTTPClient, &cp)
}

var (
	_ tokencache.Fetcher    = (*fetcher)(nil)
	_ tokencache.Identifier = (*fetcher)(nil)
)

// Fetch requests a new token from the token endpoint.
func (c *fetcher) Fetch(ctx context.Context) (tokencache.Token, error) {
	cfg := c.cfg()
	if cfg == nil {
		return tokencache.Token{}, &Error{Code: "invalid-config", Description: "nil clientcredentials.Config"}
	}
	ctx = noRedirectContext(ctx)
	if c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	t, err := cfg.Token(ctx)
	if err != nil {
		return tokencache.Token{}, c.translate(ctx, cfg, err)
	}
	invalid := func(desc string) (tokencache.Token, error) {
		return tokencache.Token{}, &Error{Code: "invalid-token", Description: desc, Err: tokencache.ErrInvalidToken}
	}
	if t == nil || t.AccessToken == "" {
		return invalid("the answer holds no access_token")
	}
	now := c.now()
	exp := t.Expiry
	if exp.IsZero() && t.ExpiresIn > 0 {
		exp = now.Add(time.Duration(t.ExpiresIn) * time.Second)
	}
	switch {
	case exp.IsZero():
		return invalid("the answer holds no expires_in, so the token cannot be aged out")
	case !exp.After(now):
		return invalid("the token is already expired")
	}
	return tokencache.Token{AccessToken: t.AccessToken, TokenType: t.Type(), Expiry: exp}, nil
}

// Identity names the endpoint, credential, scopes and parameters the tokens
// are minted for. It contains the client secret: the cache only ever stores
// or sends a salted hash of it.
func (c *fetcher) Identity() string {
	cfg := c.cfg()
	if cfg == nil {
		return "oauth2-client-credentials|nil"
	}
	var b strings.Builder
	b.WriteString("oauth2-client-credentials")
	for _, s := range []string{
		cfg.TokenURL,
		cfg.ClientID,
		cfg.ClientSecret,
		strings.Join(cfg.Scopes, " "),
		cfg.EndpointParams.Encode(), // sorted by key: audience, resource, ...
	} {
		// Length-prefixed, so no two different configurations collide.
		b.WriteByte('|')
		b.WriteString(strconv.Itoa(len(s)))
		b.WriteByte(':')
		b.WriteString(s)
	}
	return b.String()
}

// translate turns an x/oauth2 error into an *Error. A
// *oauth2.RetrieveError is not kept in the chain: its Error method prints
// the raw response body, which may hold anything the issuer chose to echo.
func (c *fetcher) translate(ctx context.Context, cfg *clientcredentials.Config, err error) *Error {
	var rerr *oauth2.RetrieveError
	if errors.As(err, &rerr) {
		e := &Error{
			Code:        ccCode(rerr.ErrorCode, cfg.ClientSecret),
			Description: httpx.Scrub(rerr.ErrorDescription, 200, cfg.ClientSecret),
		}
		if rerr.Response != nil {
			e.StatusCode = rerr.Response.StatusCode
			e.retryAfter = httpx.RetryAfter(rerr.Response.Header.Get("Retry-After"), c.now(), ccMaxRetryAfter)
		}
		switch s := e.StatusCode; {
		case s == http.StatusTooManyRequests || s == http.StatusRequestTimeout || s >= 500:
			e.retryable = true
		case s >= 400 || e.Code != "": // 4xx, or an RFC 6749 error in a 2xx
			e.retryable = false
		default:
			e.retryable = true
		}
		if e.Code == "" {
			e.Code = "http-" + strconv.Itoa(e.StatusCode)
		}
		return e
	}

	var uerr *url.Error
	var nerr net.Error
	where := "POST " + ccSafeURL(cfg.TokenURL)
	switch {
	case errors.Is(err, errCCRedirect):
		dest := "elsewhere"
		if errors.As(err, &uerr) {
			dest = ccSafeURL(uerr.URL)
		}
		return &Error{Code: "redirect", Description: where + ": the issuer redirected to " + dest + "; fix the token URL", Err: errCCRedirect}
	case errors.Is(err, context.Canceled) || errors.Is(ctx.Err(), context.Canceled):
		return &Error{Code: "canceled", Description: where, Err: ccUnwrapURL(err), retryable: true}
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &nerr) && nerr.Timeout():
		return &Error{Code: "timeout", Description: where, Err: ccUnwrapURL(err), retryable: true}
	case errors.As(err, &uerr):
		return &Error{Code: "network", Description: where, Err: uerr.Err, retryable: true}
	}
	// x/oauth2's own errors: "server response missing access_token",
	// "cannot parse json: …" (a bad 2xx answer), "cannot fetch token: …" (a
	// failed body read). None of them quotes the body.
	msg := err.Error()
	if strings.Contains(msg, "missing access_token") || strings.Contains(msg, "cannot parse") {
		return &Error{Code: "invalid-response", Description: httpx.Scrub(msg, 200, cfg.ClientSecret), Err: tokencache.ErrInvalidToken}
	}
	return &Error{Code: "oauth2", Description: httpx.Scrub(msg, 200, cfg.ClientSecret), retryable: true}
}

const ccMaxRetryAfter = 24 * time.Hour

// ccCode keeps an RFC 6749 error code if it is short and plain (RFC 6749
// limits it to printable ASCII without quotes or backslashes) and does not
// echo the secret.
func ccCode(code, secret string) string {
	if code == "" || len(code) > 64 || (secret != "" && strings.Contains(code, secret)) {
		return ""
	}
	for i := 0; i < len(code); i++ {
		if c := code[i]; c <= ' ' || c >= 0x7f || c == '"' || c == '\\' {
			return ""
		}
	}
	return code
}

// ccSafeURL prints a URL without user info, query or fragment.
func ccSafeURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "the token URL"
	}
	return (&url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path}).String()
}

// ccUnwrapURL drops the *url.Error layer, whose message repeats the URL.
func ccUnwrapURL(err error) error {
	var uerr *url.Error
	if errors.As(err, &uerr) {
		return uerr.Err
	}
	return err
}

// Error reports a failed client-credentials token request. It carries
// the RFC 6749 error code and description, never the client secret, a token,
// or the raw response body, and implements the optional methods documented
// on Fetcher.
type Error struct {
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
	// tokencache.ErrInvalidToken for an answer the cache cannot use.
	Err error

	retryable  bool
	retryAfter time.Duration
}

// Error describes the failure without secrets.
func (e *Error) Error() string {
	b := []byte("oauth2cc: token request failed")
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
func (e *Error) Unwrap() error { return e.Err }

// Retryable reports whether asking again may succeed: true for 5xx, 408,
// 429 and network errors; false for 4xx answers (invalid_client,
// invalid_scope, ...) and for unusable answers.
func (e *Error) Retryable() bool { return e.retryable }

// RetryAfter returns the wait the endpoint asked for in its Retry-After
// header, or 0.
func (e *Error) RetryAfter() time.Duration { return e.retryAfter }

// ErrorCode returns Code.
func (e *Error) ErrorCode() string { return e.Code }

// ccMaxRetryAfter caps a Retry-After: a longer wait is more likely a
// misconfigured proxy than advice the fleet should follow.
