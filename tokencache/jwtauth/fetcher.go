package jwtauth

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/tokencache/tokencache/internal/httpx"
	"github.com/tokencache/tokencache/tokencache"
)

// DefaultPath is the authenticate endpoint's path under the base URL.
const DefaultPath = "/authenticate"

// maxBodySize bounds how much of an issuer answer is read: a token answer is
// a few KiB at most, and an error page larger than this says nothing more.
const maxBodySize = 64 << 10

// DefaultTimeout bounds one authenticate request, connection to last byte,
// unless WithTimeout says otherwise. An authenticate call answers in well
// under a second; 15 s rides out a slow TLS handshake yet stays well inside
// a refresh lock's lease.
const DefaultTimeout = 15 * time.Second

// maxRetryAfter caps the issuer's Retry-After: a longer wait is more likely a
// misconfigured proxy than advice the fleet should follow blindly.
const maxRetryAfter = 24 * time.Hour

// Fetcher obtains a JWT from an authenticate-and-rotate issuer: it POSTs
// {"apiKey":…,"clientSecret":…} to {base}/authenticate and takes the token's
// expiry from its exp claim. It implements tokencache.Fetcher and
// tokencache.Identifier, and is safe for concurrent use.
type Fetcher struct {
	creds   func() (apiKey, clientSecret string) // the credential of the moment
	baseURL string
	path    string
	client  *http.Client
	now     func() time.Time
	timeout time.Duration
	verify  bool
	optErr  error // first option given a value it cannot use
}

var (
	_ tokencache.Fetcher    = (*Fetcher)(nil)
	_ tokencache.Identifier = (*Fetcher)(nil)
)

// An Option configures a Fetcher. An option given a value it cannot use
// is reported, as an error wrapping ErrConfig that names it, by Validate
// and by every Fetch; New itself does not fail.
type Option func(*Fetcher)

// refuse records the first option given a value it cannot use.
func (f *Fetcher) refuse(reason string) {
	if f.optErr == nil {
		f.optErr = &detailError{ErrConfig, reason}
	}
}

// WithBaseURL sets the issuer's base URL, such as "https://api.example.com"
// or "https://example.com/api/v1"; the path (default "/authenticate") is
// appended to it. There is no default: Validate and Fetch fail with
// ErrConfig until an absolute http or https base URL is set.
func WithBaseURL(u string) Option { return func(f *Fetcher) { f.baseURL = u } }

// WithPath replaces the authenticate path appended to the base URL.
// Default: DefaultPath, "/authenticate". An empty path is refused.
func WithPath(p string) Option {
	return func(f *Fetcher) {
		if strings.Trim(p, "/") == "" {
			f.refuse("WithPath(" + strconv.Quote(p) + ") names no path; leave the option out for " + DefaultPath)
			return
		}
		f.path = p
	}
}

// WithHTTPClient sets the HTTP client used to call the issuer. Default: a
// client on http.DefaultTransport. Its Timeout, if any, bounds each call in
// addition to the context passed to Fetch and WithTimeout. Whatever the
// client, the Fetcher uses a copy that follows no redirect: the request
// body holds the credentials, and a 307 or 308 would resend it to wherever
// the Location points. A redirect fails the Fetch with ErrRedirect. A nil
// client is refused.
func WithHTTPClient(c *http.Client) Option {
	return func(f *Fetcher) {
		if c == nil {
			f.refuse("WithHTTPClient(nil); leave the option out for the default")
			return
		}
		f.client = c
	}
}

// WithTimeout bounds each authenticate request, connection to last byte,
// on top of the caller's context. Default DefaultTimeout; zero leaves only
// the context (and the client's own Timeout) in charge. A negative
// duration is refused.
func WithTimeout(d time.Duration) Option {
	return func(f *Fetcher) {
		if d < 0 {
			f.refuse("WithTimeout(" + d.String() + ") is negative; 0 means no per-request bound")
			return
		}
		f.timeout = d
	}
}

// noRedirects returns a copy of c that follows no redirect: it fails with
// ErrRedirect, naming where the issuer pointed (without query or user
// info).
func noRedirects(c *http.Client) *http.Client {
	cp := http.Client{}
	if c != nil {
		cp = *c
	}
	cp.CheckRedirect = func(req *http.Request, _ []*http.Request) error {
		return &detailError{ErrRedirect, "to " + safeURL(req.URL)}
	}
	return &cp
}

// WithClock sets the clock used to reject tokens that are already expired
// and to read an HTTP-date Retry-After. Default: time.Now. A nil clock is
// refused.
func WithClock(now func() time.Time) Option {
	return func(f *Fetcher) {
		if now == nil {
			f.refuse("WithClock(nil); leave the option out for time.Now")
			return
		}
		f.now = now
	}
}

// WithHMACVerification(true) makes Fetch, and FromResponse, verify each
// token's HS256 signature with the client secret as the HMAC key, as the
// issuer's guide does with jwt.verify(token, clientSecret). A token whose
// alg is not HS256 ("none" included) is refused with ErrAlgorithm, one
// whose signature does not match with ErrSignature. Default false, because
// the token came straight from the issuer over the connection the caller
// configured, and not every issuer signs with the client secret.
func WithHMACVerification(on bool) Option { return func(f *Fetcher) { f.verify = on } }

// New returns a Fetcher for the given credentials. Set the issuer with
// WithBaseURL. New does not fail: a configuration problem (no base URL, an
// option given a value it cannot use) is reported by Validate, and by
// every Fetch.
func New(apiKey, clientSecret string, opts ...Option) *Fetcher {
	return NewFunc(func() (string, string) { return apiKey, clientSecret }, opts...)
}

// NewFunc is New with credentials that may change while the program runs:
// creds is called for each authenticate request, each rotated token's
// signature check and by Identity, so an API key or client secret rotated
// in a secrets file or manager is used by the next request without
// rebuilding the Fetcher or the cache. creds must be safe for concurrent
// use and cheap (return values held in memory). A nil creds is a
// configuration error.
//
// The cache fingerprints the credential from Identity, so after a rotation
// it treats tokens minted under the previous credential as another
// credential's (see tokencache.Identifier).
func NewFunc(creds func() (apiKey, clientSecret string), opts ...Option) *Fetcher {
	f := &Fetcher{
		creds:   creds,
		path:    DefaultPath,
		now:     time.Now,
		timeout: DefaultTimeout,
	}
	for _, o := range opts {
		o(f)
	}
	if creds == nil {
		f.refuse("NewFunc(nil): no credentials")
	}
	f.client = noRedirects(f.client)
	return f
}

// Identity names the endpoint and the credential the tokens are minted for.
// It contains the API key and the client secret: the cache only ever stores
// or sends a salted hash of it.
func (f *Fetcher) Identity() string {
	var b strings.Builder
	b.WriteString("jwtauth")
	apiKey, clientSecret := f.credentials()
	for _, s := range []string{f.endpointString(), apiKey, clientSecret} {
		// Length-prefixed, so no two different triples share an identity.
		b.WriteByte('|')
		b.WriteString(strconv.Itoa(len(s)))
		b.WriteByte(':')
		b.WriteString(s)
	}
	return b.String()
}

// credentials returns the credential of the moment; none for a Fetcher
// not built by New or NewFunc.
func (f *Fetcher) credentials() (apiKey, clientSecret string) {
	if f.creds == nil {
		return "", ""
	}
	return f.creds()
}

// Validate reports whether f can make requests, without making one: every
// option was given a usable value and the base URL is an absolute http or
// https URL. The error, if any, is the permanent *Error Fetch would
// return, wrapping ErrConfig; it never holds a credential.
func (f *Fetcher) Validate() error {
	if _, err := f.endpoint(); err != nil {
		return &Error{Code: "invalid-config", Err: err}
	}
	return nil
}

// Fetch authenticates and returns the JWT as a Bearer token expiring at its
// exp claim. Every error is an *Error; see its Retryable method for which
// failures are worth retrying.
func (f *Fetcher) Fetch(ctx context.Context) (tokencache.Token, error) {
	endpoint, err := f.endpoint()
	if err != nil {
		return tokencache.Token{}, &Error{Code: "invalid-config", Err: err}
	}
	if f.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, f.timeout)
		defer cancel()
	}
	// One read of the credentials per request: the body, the signature
	// check and the scrubbing of the answer agree even if they rotate.
	apiKey, clientSecret := f.credentials()
	body, err := json.Marshal(struct {
		APIKey       string `json:"apiKey"`
		ClientSecret string `json:"clientSecret"`
	}{apiKey, clientSecret})
	if err != nil { // cannot happen for two strings; never echo them
		return tokencache.Token{}, &Error{Code: "invalid-config", Err: ErrConfig}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint.String(), bytes.NewReader(body))
	if err != nil {
		return tokencache.Token{}, &Error{Code: "invalid-config", Err: ErrConfig, Message: "cannot build request"}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/plain;q=0.9, */*;q=0.5")

	resp, err := f.client.Do(req)
	if err != nil {
		return tokencache.Token{}, transportError(ctx, endpoint, err)
	}
	defer resp.Body.Close()
	data, tooLarge, readErr := readLimited(resp.Body, maxBodySize)

	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return tokencache.Token{}, f.statusError(resp, data, apiKey, clientSecret)
	}
	fail := func(code string, err error) (tokencache.Token, error) {
		return tokencache.Token{}, &Error{StatusCode: resp.StatusCode, Code: code, Err: err}
	}
	switch {
	case readErr != nil:
		return tokencache.Token{}, transportError(ctx, endpoint, readErr)
	case tooLarge:
		return fail("invalid-response", ErrResponseTooLarge)
	}
	raw, err := parseAuthenticateResponse(data)
	if err != nil {
		return fail("invalid-response", err)
	}
	p, err := parseJWT(raw)
	if err != nil {
		return fail("invalid-token", err)
	}
	if f.verify {
		if err := verifyHS256(p, []byte(clientSecret)); err != nil {
			return fail("invalid-signature", err)
		}
	}
	if now := f.now(); !p.exp.After(now) {
		return fail("expired-token", &detailError{ErrExpired,
			"exp " + p.exp.Format(time.RFC3339) + " is not after now " + now.UTC().Format(time.RFC3339)})
	}
	return tokencache.Token{AccessToken: raw, TokenType: "Bearer", Expiry: p.exp}, nil
}

// endpointString is the endpoint as configured, for Identity.
func (f *Fetcher) endpointString() string {
	return strings.TrimRight(f.baseURL, "/") + "/" + strings.TrimLeft(f.path, "/")
}

// endpoint validates and returns the authenticate URL.
func (f *Fetcher) endpoint() (*url.URL, error) {
	if f == nil {
		return nil, &detailError{ErrConfig, "nil Fetcher (build it with jwtauth.New)"}
	}
	if f.optErr != nil {
		return nil, f.optErr
	}
	if f.baseURL == "" {
		return nil, &detailError{ErrConfig, "no base URL (use WithBaseURL)"}
	}
	u, err := url.Parse(f.endpointString())
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, &detailError{ErrConfig, "base URL is not an absolute http or https URL"}
	}
	return u, nil
}

// transportError describes a failure to get an answer. The URL is named
// without credentials or query; the cause stays in the chain so callers can
// test for context.DeadlineExceeded or *net.OpError.
func transportError(ctx context.Context, endpoint *url.URL, err error) *Error {
	var uerr *url.Error
	if errors.As(err, &uerr) {
		err = uerr.Err
	}
	code := "network"
	var nerr net.Error
	switch {
	case errors.Is(err, ErrRedirect):
		code = "redirect"
	case errors.Is(err, context.Canceled) || errors.Is(ctx.Err(), context.Canceled):
		code = "canceled"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &nerr) && nerr.Timeout():
		code = "timeout"
	}
	return &Error{Code: code, Message: "POST " + safeURL(endpoint), Err: err}
}

// safeURL prints u without user info, query or fragment.
func safeURL(u *url.URL) string {
	c := *u
	c.User, c.RawQuery, c.ForceQuery, c.Fragment, c.RawFragment = nil, "", false, "", ""
	return c.String()
}

// statusError turns a non-2xx answer into an *Error.
func (f *Fetcher) statusError(resp *http.Response, body []byte, apiKey, clientSecret string) *Error {
	code, msg := errorDetails(body)
	if code != "" && scrub(code, apiKey, clientSecret) != code {
		code = "" // the issuer echoed a credential or a token as its "code"
	}
	if code == "" {
		code = "http-" + strconv.Itoa(resp.StatusCode)
	}
	return &Error{
		StatusCode: resp.StatusCode,
		Code:       code,
		Message:    scrub(msg, apiKey, clientSecret),
		retryAfter: httpx.RetryAfter(resp.Header.Get("Retry-After"), f.now(), maxRetryAfter),
	}
}

// readLimited reads at most limit bytes of r and reports whether there was
// more.
func readLimited(r io.Reader, limit int64) (data []byte, tooLarge bool, err error) {
	data, err = io.ReadAll(io.LimitReader(r, limit+1))
	if int64(len(data)) > limit {
		return data[:limit], true, err
	}
	return data, false, err
}

// parseAuthenticateResponse extracts the token from a successful
// authenticate answer: the JWT as plain text (surrounding whitespace, quotes
// and a "Bearer " prefix tolerated), as a JSON string, or as a JSON object
// holding it under "token", "access_token" or "jwt" (tried in that order).
// It does not validate the JWT itself; parseJWT does.
func parseAuthenticateResponse(body []byte) (string, error) {
	b := bytes.TrimSpace(bytes.TrimPrefix(bytes.TrimSpace(body), []byte("\xef\xbb\xbf")))
	if len(b) == 0 {
		return "", &detailError{ErrResponse, "empty body"}
	}
	switch b[0] {
	case '{':
		var m map[string]json.RawMessage
		if err := decodeObject(b, &m); err != nil {
			return "", &detailError{ErrResponse, "body starts like JSON but is not a JSON object"}
		}
		for _, k := range []string{"token", "access_token", "jwt"} {
			v, ok := m[k]
			if !ok {
				continue
			}
			var s string
			if err := json.Unmarshal(v, &s); err != nil {
				continue // a null or an object: try the next field
			}
			if s, err := cleanToken(s); err == nil {
				return s, nil
			}
		}
		return "", &detailError{ErrResponse, "JSON object has no non-empty token, access_token or jwt string field"}
	case '[':
		return "", &detailError{ErrResponse, "body is a JSON array"}
	case '"':
		var s string
		if err := json.Unmarshal(b, &s); err == nil {
			return cleanToken(s)
		}
		// Not a valid JSON string (a stray quote): treat it as text.
	}
	return cleanToken(string(b))
}

// cleanToken strips whitespace, one pair of surrounding quotes and a Bearer
// prefix, then checks that what is left could be a token.
func cleanToken(s string) (string, error) {
	s = strings.TrimSpace(s)
	for _, q := range []string{`"`, `'`} {
		if len(s) >= 2 && strings.HasPrefix(s, q) && strings.HasSuffix(s, q) {
			s = strings.TrimSpace(s[1 : len(s)-1])
			break
		}
	}
	if len(s) > 7 && strings.EqualFold(s[:7], "bearer ") {
		s = strings.TrimSpace(s[7:])
	}
	if s == "" {
		return "", &detailError{ErrResponse, "empty token"}
	}
	if len(s) > maxTokenLen {
		return "", &detailError{ErrResponse, "token longer than " + strconv.Itoa(maxTokenLen) + " bytes"}
	}
	for i := 0; i < len(s); i++ {
		if !isTokenByte(s[i]) {
			return "", &detailError{ErrResponse, "body is neither JSON nor a bare token"}
		}
	}
	return s, nil
}
