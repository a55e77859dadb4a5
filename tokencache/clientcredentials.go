package tokencache

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/tokencache/tokencache/internal/httpx"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
)

// ClientCredentials returns a Fetcher for any OAuth2 client-credentials
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
// *OAuth2Error whose code is "redirect". Each request is bounded by
// ClientCredentialsTimeout on top of the Fetch context; x/oauth2 reads at
// most 1 MiB of an answer. cfg must not change once the Fetcher is in use.
//
// The token's type defaults to "Bearer", and its expiry is the one x/oauth2
// derives from expires_in: an answer without expires_in cannot be shared, and
// Fetch refuses it with an error wrapping ErrInvalidToken. Failures are
// *OAuth2Error values that carry the RFC 6749 error code and never the
// client secret, a token, or the raw response body.
//
// The Fetcher also implements Identifier: its identity covers the token URL,
// the client id and secret, the scopes and the extra endpoint parameters.
func ClientCredentials(cfg *clientcredentials.Config) Fetcher {
	return &clientCredentialsFetcher{cfg: cfg, now: time.Now, timeout: ClientCredentialsTimeout}
}

// ClientCredentialsTimeout bounds one token request of the ClientCredentials
// Fetcher, connection to last byte. A token endpoint answers in well under
// a second; 15 s rides out a slow TLS handshake yet stays well inside a
// refresh lock's lease. A shorter deadline on the Fetch context wins.
const ClientCredentialsTimeout = 15 * time.Second

// clientCredentialsFetcher is the Fetcher ClientCredentials returns.
type clientCredentialsFetcher struct {
	cfg     *clientcredentials.Config
	now     func() time.Time
	timeout time.Duration // per request; 0: the context alone
}

// errCCRedirect is what the Fetcher's HTTP client answers a redirect with.
var errCCRedirect = errors.New("tokencache: refusing to follow a redirect with the client credentials")

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
	_ Fetcher    = (*clientCredentialsFetcher)(nil)
	_ Identifier = (*clientCredentialsFetcher)(nil)
)

// Fetch requests a new token from the token endpoint.
func (c *clientCredentialsFetcher) Fetch(ctx context.Context) (Token, error) {
	if c.cfg == nil {
		return Token{}, &OAuth2Error{Code: "invalid-config", Description: "nil clientcredentials.Config"}
	}
	ctx = noRedirectContext(ctx)
	if c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	t, err := c.cfg.Token(ctx)
	if err != nil {
		return Token{}, c.translate(ctx, err)
	}
	invalid := func(desc string) (Token, error) {
		return Token{}, &OAuth2Error{Code: "invalid-token", Description: desc, Err: ErrInvalidToken}
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
	return Token{AccessToken: t.AccessToken, TokenType: t.Type(), Expiry: exp}, nil
}

// Identity names the endpoint, credential, scopes and parameters the tokens
// are minted for. It contains the client secret: the cache only ever stores
// or sends a salted hash of it.
func (c *clientCredentialsFetcher) Identity() string {
	if c.cfg == nil {
		return "oauth2-client-credentials|nil"
	}
	var b strings.Builder
	b.WriteString("oauth2-client-credentials")
	for _, s := range []string{
		c.cfg.TokenURL,
		c.cfg.ClientID,
		c.cfg.ClientSecret,
		strings.Join(c.cfg.Scopes, " "),
		c.cfg.EndpointParams.Encode(), // sorted by key: audience, resource, ...
	} {
		// Length-prefixed, so no two different configurations collide.
		b.WriteByte('|')
		b.WriteString(strconv.Itoa(len(s)))
		b.WriteByte(':')
		b.WriteString(s)
	}
	return b.String()
}

// translate turns an x/oauth2 error into an *OAuth2Error. A
// *oauth2.RetrieveError is not kept in the chain: its Error method prints
// the raw response body, which may hold anything the issuer chose to echo.
func (c *clientCredentialsFetcher) translate(ctx context.Context, err error) *OAuth2Error {
	var rerr *oauth2.RetrieveError
	if errors.As(err, &rerr) {
		e := &OAuth2Error{
			Code:        ccCode(rerr.ErrorCode, c.cfg.ClientSecret),
			Description: httpx.Scrub(rerr.ErrorDescription, 200, c.cfg.ClientSecret),
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
	where := "POST " + ccSafeURL(c.cfg.TokenURL)
	switch {
	case errors.Is(err, errCCRedirect):
		dest := "elsewhere"
		if errors.As(err, &uerr) {
			dest = ccSafeURL(uerr.URL)
		}
		return &OAuth2Error{Code: "redirect", Description: where + ": the issuer redirected to " + dest + "; fix the token URL", Err: errCCRedirect}
	case errors.Is(err, context.Canceled) || errors.Is(ctx.Err(), context.Canceled):
		return &OAuth2Error{Code: "canceled", Description: where, Err: ccUnwrapURL(err), retryable: true}
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &nerr) && nerr.Timeout():
		return &OAuth2Error{Code: "timeout", Description: where, Err: ccUnwrapURL(err), retryable: true}
	case errors.As(err, &uerr):
		return &OAuth2Error{Code: "network", Description: where, Err: uerr.Err, retryable: true}
	}
	// x/oauth2's own errors: "server response missing access_token",
	// "cannot parse json: …" (a bad 2xx answer), "cannot fetch token: …" (a
	// failed body read). None of them quotes the body.
	msg := err.Error()
	if strings.Contains(msg, "missing access_token") || strings.Contains(msg, "cannot parse") {
		return &OAuth2Error{Code: "invalid-response", Description: httpx.Scrub(msg, 200, c.cfg.ClientSecret), Err: ErrInvalidToken}
	}
	return &OAuth2Error{Code: "oauth2", Description: httpx.Scrub(msg, 200, c.cfg.ClientSecret), retryable: true}
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
