package basiq

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/tokencache/tokencache/internal/httpx"
	"github.com/tokencache/tokencache/tokencache"
)

// Defaults, each used when its option is not given.
const (
	// DefaultBaseURL is Basiq's production API root.
	DefaultBaseURL = "https://au-api.basiq.io"

	// DefaultVersion is the basiq-version header value, as in Basiq's
	// current quick start.
	DefaultVersion = "3.0"

	// DefaultTimeout bounds one token request, connection to last byte.
	// /token answers in well under a second; 15s rides out a slow TLS
	// handshake yet stays well inside a refresh lock's lease, so a stuck
	// request fails and is retried before another replica takes over.
	DefaultTimeout = 15 * time.Second
)

// Limits on what Basiq may send back.
const (
	// MaxResponseBytes is the largest response body read. A token answer
	// is about 1 KiB; anything past 64 KiB is not from Basiq's /token.
	MaxResponseBytes = 64 << 10

	// MaxExpiresIn is the longest token lifetime accepted. Basiq issues
	// 60-minute tokens; a lifetime beyond a day is a garbled answer, and
	// caching it would serve a dead token for that long.
	MaxExpiresIn = 24 * time.Hour
)

// Token scopes, the values of the scope form field.
const (
	// ScopeServer grants access to every endpoint; never hand it to a
	// browser or app.
	ScopeServer = "SERVER_ACCESS"
	// ScopeClient is restricted and bound to one userId; it is meant for
	// client-side use, e.g. Basiq's Consent UI.
	ScopeClient = "CLIENT_ACCESS"
)

// Fetcher obtains Basiq access tokens from POST {base}/token with one API
// key, for SERVER_ACCESS (from New) or for CLIENT_ACCESS bound to one user
// (from ForUser or NewClient). It implements tokencache.Fetcher and
// tokencache.Identifier and is safe for concurrent use; it is immutable
// once built.
//
// Printing a Fetcher (fmt, slog) shows its base URL, scope, user and a
// fingerprint of the key, never the key.
type Fetcher struct {
	apiKey  secret
	keyFunc bool   // apiKey is read at each use (NewFunc), and checked at each Fetch
	baseURL string // no trailing slash
	version string
	client  *http.Client
	now     func() time.Time
	timeout time.Duration
	scope   string
	userID  string

	tokenURL string
	op       string // "POST /token", for errors
	optErr   error  // first option given a value it cannot use
	cfgErr   error  // first configuration problem, from Validate and Fetch
	redact   *redactor
}

var (
	_ tokencache.Fetcher    = (*Fetcher)(nil)
	_ tokencache.Identifier = (*Fetcher)(nil)
)

// An Option configures a Fetcher. An option given a value it cannot use
// is reported, as a *ConfigError naming it, by Validate and by every
// Fetch; New itself does not fail.
type Option func(*Fetcher)

// refuse records the first option given a value it cannot use.
func (f *Fetcher) refuse(field, reason string) {
	if f.optErr == nil {
		f.optErr = &ConfigError{Field: field, Reason: reason}
	}
}

// WithBaseURL sets the API root the token endpoint hangs off: {base}/token.
// Default DefaultBaseURL. It must be an absolute http or https URL without
// credentials, query or fragment; a path prefix (for a proxy) is kept.
func WithBaseURL(base string) Option {
	return func(f *Fetcher) { f.baseURL = base }
}

// WithHTTPClient sets the client used for token requests. Default: a
// client on http.DefaultTransport. Whatever the client, the Fetcher uses a
// copy that follows no redirect: a redirected request would carry the API
// key to wherever it points (Go forwards Authorization to the same host on
// another port or scheme), so a 3xx answer is an *Error with its status.
// A nil client is refused.
func WithHTTPClient(c *http.Client) Option {
	return func(f *Fetcher) {
		if c == nil {
			f.refuse("HTTP client", "WithHTTPClient(nil); leave the option out for the default")
			return
		}
		f.client = c
	}
}

// WithVersion sets the basiq-version header, printable ASCII without
// spaces. Default DefaultVersion.
func WithVersion(v string) Option {
	return func(f *Fetcher) { f.version = v }
}

// WithClock sets the clock that turns expires_in into Token.Expiry and
// HTTP-date Retry-After headers into delays. Default time.Now. For tests.
// A nil clock is refused.
func WithClock(now func() time.Time) Option {
	return func(f *Fetcher) {
		if now == nil {
			f.refuse("clock", "WithClock(nil); leave the option out for time.Now")
			return
		}
		f.now = now
	}
}

// WithTimeout bounds each token request, on top of the caller's context.
// Default DefaultTimeout; zero leaves only the context (and the
// http.Client's own Timeout) in charge. A negative duration is refused.
func WithTimeout(d time.Duration) Option {
	return func(f *Fetcher) {
		if d < 0 {
			f.refuse("timeout", "WithTimeout("+d.String()+") is negative; 0 means no per-request bound")
			return
		}
		f.timeout = d
	}
}

// New returns a Fetcher of SERVER_ACCESS tokens for apiKey, the key from
// Basiq's dashboard, sent verbatim as "Authorization: Basic <apiKey>" (it
// is already encoded; do not base64 it again).
//
// New does not fail: a configuration problem (an empty key, a bad base
// URL, an option given a value it cannot use) is reported by Validate, and
// by every Fetch as a *ConfigError.
func New(apiKey string, opts ...Option) *Fetcher {
	f := build(newSecret(apiKey), false, opts)
	f.redact = newRedactor(apiKey, "Basic "+apiKey)
	return f
}

// NewFunc is New with an API key that may change while the program runs:
// key is called for each token request (and by Identity), so a key
// rotated in a secrets file or manager is used by the next request
// without rebuilding the Fetcher or the cache. key must be safe for
// concurrent use and cheap (return a value held in memory; do not read a
// file on each call). Each Fetch checks the key as New checks its own, and
// a Fetcher from ForUser reads the same func.
//
// The cache fingerprints the credential from Identity, so after a rotation
// it treats tokens minted under the previous key as another credential's:
// they are not served from Redis, and the next refresh mints one under the
// new key (see tokencache.Identifier). A nil key is a configuration error.
func NewFunc(key func() string, opts ...Option) *Fetcher {
	if key == nil {
		f := build(newSecret(""), false, opts)
		f.redact = newRedactor()
		return f
	}
	f := build(secret(key), true, opts)
	// The redactor of a key func is made per request, for the key it sent.
	f.redact = newRedactor()
	return f
}

// build is what New and NewFunc share: options applied, the client
// copied without redirects, the configuration checked.
func build(apiKey secret, keyFunc bool, opts []Option) *Fetcher {
	f := &Fetcher{
		apiKey:  apiKey,
		keyFunc: keyFunc,
		baseURL: DefaultBaseURL,
		version: DefaultVersion,
		now:     time.Now,
		timeout: DefaultTimeout,
		scope:   ScopeServer,
	}
	for _, opt := range opts {
		opt(f)
	}
	client := http.Client{}
	if f.client != nil {
		client = *f.client // a copy: the caller's client keeps its own policy
	}
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	f.client = &client
	f.cfgErr = f.check()
	if f.cfgErr != nil {
		// An unusable base URL may hold credentials: keep none of it.
		if ce, ok := f.cfgErr.(*ConfigError); ok && ce.Field == "base URL" {
			f.baseURL = ""
		}
	}
	return f
}

// NewClient returns a Fetcher of CLIENT_ACCESS tokens bound to userID. It
// is New(apiKey, opts...).ForUser(userID).
func NewClient(apiKey, userID string, opts ...Option) (*Fetcher, error) {
	return New(apiKey, opts...).ForUser(userID)
}

// ForUser returns a Fetcher of CLIENT_ACCESS tokens bound to userID, with
// f's key and options. Basiq requires a userId for CLIENT_ACCESS: an id
// that tokencache.ValidateUserID rejects, empty included, gives its error; a
// misconfigured f gives its *ConfigError.
func (f *Fetcher) ForUser(userID string) (*Fetcher, error) {
	if err := f.Validate(); err != nil {
		return nil, err
	}
	if err := tokencache.ValidateUserID(userID); err != nil {
		return nil, fmt.Errorf("basiq: CLIENT_ACCESS tokens must be bound to a valid userId: %w", err)
	}
	c := *f
	c.scope = ScopeClient
	c.userID = userID
	return &c, nil
}

// Scope returns ScopeServer or ScopeClient.
func (f *Fetcher) Scope() string { return f.scope }

// UserID returns the user a CLIENT_ACCESS Fetcher is bound to, else "".
func (f *Fetcher) UserID() string { return f.userID }

// BaseURL returns the API root, without a trailing slash.
func (f *Fetcher) BaseURL() string { return f.baseURL }

// Validate reports whether f can make requests, without making one: the
// API key is present and printable, the base URL and version are sound.
// The error, if any, is a *ConfigError and never holds the key.
func (f *Fetcher) Validate() error {
	if f == nil || f.redact == nil { // nil or zero Fetcher, not from New
		return &ConfigError{Field: "api key", Reason: "missing; build the Fetcher with basiq.New"}
	}
	if f.cfgErr == nil && f.keyFunc {
		// The key of the moment; Fetch checks the one it sends.
		return checkKey(f.apiKey.reveal())
	}
	return f.cfgErr
}

// check validates the configuration once, in New, and precomputes the
// token URL.
func (f *Fetcher) check() error {
	if f.optErr != nil {
		return f.optErr
	}
	if !f.keyFunc {
		if err := checkKey(f.apiKey.reveal()); err != nil {
			return err
		}
	}
	if f.version == "" {
		return &ConfigError{Field: "version", Reason: "empty"}
	}
	for i := 0; i < len(f.version); i++ {
		if c := f.version[i]; c <= ' ' || c >= 0x7f {
			return &ConfigError{Field: "version", Reason: "holds whitespace or a control character"}
		}
	}
	u, err := url.Parse(f.baseURL)
	if err != nil {
		return &ConfigError{Field: "base URL", Reason: "not a URL"}
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return &ConfigError{Field: "base URL", Reason: "scheme must be http or https"}
	case u.Host == "":
		return &ConfigError{Field: "base URL", Reason: "no host"}
	case u.User != nil:
		return &ConfigError{Field: "base URL", Reason: "must not hold credentials"}
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return &ConfigError{Field: "base URL", Reason: "must not have a query or fragment"}
	}
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawPath = ""
	f.baseURL = u.String()
	f.tokenURL = f.baseURL + "/token"
	f.op = "POST " + u.Path + "/token"
	return nil
}

// checkKey reports an API key Basiq would refuse, never quoting it.
func checkKey(key string) error {
	switch {
	case key == "":
		return &ConfigError{Field: "api key", Reason: "empty (set BASIQ_API_KEY)"}
	case len(key) > 4096:
		return &ConfigError{Field: "api key", Reason: "longer than 4096 bytes"}
	case len(key) > 6 && strings.EqualFold(key[:6], "basic "):
		return &ConfigError{Field: "api key", Reason: `starts with "Basic "; pass the key alone, the prefix is added`}
	}
	for i := 0; i < len(key); i++ {
		if c := key[i]; c <= ' ' || c >= 0x7f {
			return &ConfigError{Field: "api key", Reason: "holds whitespace, a control or a non-ASCII character at byte " + strconv.Itoa(i)}
		}
	}
	return nil
}

// Fetch requests a new token. On failure the error is a *ConfigError
// (permanent, nothing sent) or an *Error carrying Basiq's status, code,
// correlationId and Retry-After; both implement Retryable, RetryAfter
// (Error only) and ErrorCode as tokencache.Fetcher describes.
//
// Token.Expiry is the time the request was sent plus expires_in, so it
// errs early by the request's latency, never late.
func (f *Fetcher) Fetch(ctx context.Context) (tokencache.Token, error) {
	if f == nil || f.redact == nil || f.cfgErr != nil {
		return tokencache.Token{}, f.Validate()
	}
	// One read of the key per request: the header and the redaction of
	// the answer agree even if the key rotates meanwhile.
	key, red := f.apiKey.reveal(), f.redact
	if f.keyFunc {
		if err := checkKey(key); err != nil {
			return tokencache.Token{}, err
		}
		red = newRedactor(key, "Basic "+key)
	}
	if f.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, f.timeout)
		defer cancel()
	}
	form := url.Values{"scope": {f.scope}}
	if f.scope == ScopeClient {
		form.Set("userId", f.userID)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, f.tokenURL, strings.NewReader(form.Encode()))
	if err != nil {
		return tokencache.Token{}, &ConfigError{Field: "request", Reason: "cannot build it: " + sanitize(err.Error(), maxFieldLen)}
	}
	req.Header.Set("Authorization", "Basic "+key)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("basiq-version", f.version)
	req.Header.Set("Accept", "application/json")

	sent := f.now()
	resp, err := f.client.Do(req)
	if err != nil {
		return tokencache.Token{}, transportError(f.op, f.scope, err, red)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxResponseBytes+1))
	if err != nil {
		return tokencache.Token{}, transportError(f.op, f.scope, err, red)
	}
	if len(body) > MaxResponseBytes {
		return tokencache.Token{}, &Error{
			Op: f.op, Scope: f.scope, Status: resp.StatusCode, Code: CodeResponseTooLarge,
			cause: "body exceeds " + strconv.Itoa(MaxResponseBytes) + " bytes",
		}
	}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		tok, perr := parseTokenResponse(body, sent)
		if perr != nil {
			return tokencache.Token{}, &Error{
				Op: f.op, Scope: f.scope, Status: resp.StatusCode, Code: perr.code,
				Err: perr.err, cause: perr.msg,
			}
		}
		return tok, nil
	}
	return tokencache.Token{}, f.errorFromResponse(resp, body, red)
}

// errorFromResponse builds the *Error for a non-2xx answer.
func (f *Fetcher) errorFromResponse(resp *http.Response, body []byte, red *redactor) *Error {
	e := &Error{Op: f.op, Scope: f.scope, Status: resp.StatusCode}
	if ae, ok := parseErrorBody(body); ok {
		e.Code = red.clean(ae.Code, 64)
		e.Title = red.clean(ae.Title, maxFieldLen)
		e.Detail = red.clean(ae.Detail, maxFieldLen)
		e.CorrelationID = red.clean(ae.CorrelationID, 128)
		e.Source = red.clean(ae.Source, 128)
	}
	if e.Code == "" {
		// No Basiq error object (an HTML page from a proxy, an empty
		// body): the status is all we trust. The body is not echoed.
		e.Code = "http-" + strconv.Itoa(resp.StatusCode)
		if e.Title == "" {
			e.Title = http.StatusText(resp.StatusCode)
		}
	}
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
		e.RetryAfterDelay = httpx.RetryAfter(resp.Header.Get("Retry-After"), f.now(), MaxRetryAfter)
	}
	return e
}

// Identity names the credential, endpoint, version, scope and user this
// Fetcher mints tokens for (tokencache.Identifier). It contains the API
// key: the cache only ever stores a salted hash of it. Never log it.
func (f *Fetcher) Identity() string {
	return strings.Join([]string{"basiq/v1", f.baseURL, f.version, f.scope, f.userID, f.apiKey.reveal()}, "\x00")
}

// String describes the Fetcher without its key, e.g.
// "basiq.Fetcher(https://au-api.basiq.io SERVER_ACCESS key sha256:0123456789abcdef)".
func (f *Fetcher) String() string {
	if f == nil {
		return "basiq.Fetcher(nil)"
	}
	base := f.baseURL
	if base == "" {
		base = "(invalid base URL)"
	}
	s := "basiq.Fetcher(" + base + " " + f.scope
	if f.userID != "" {
		s += " user " + f.userID
	}
	return s + " key " + keyFingerprint(f.apiKey) + ")"
}

// GoString is String, so %#v does not print the key either.
func (f *Fetcher) GoString() string { return f.String() }

// Format prints String for every verb, so no fmt verb can reveal the key.
func (f *Fetcher) Format(s fmt.State, verb rune) {
	out := f.String()
	if verb == 'q' {
		out = strconv.Quote(out)
	}
	_, _ = io.WriteString(s, out)
}

// LogValue implements slog.LogValuer with the same redacted fields.
func (f *Fetcher) LogValue() slog.Value {
	if f == nil {
		return slog.StringValue("basiq.Fetcher(nil)")
	}
	attrs := []slog.Attr{
		slog.String("base_url", f.baseURL),
		slog.String("scope", f.scope),
		slog.String("key", keyFingerprint(f.apiKey)),
	}
	if f.userID != "" {
		attrs = append(attrs, slog.String("user_id", f.userID))
	}
	return slog.GroupValue(attrs...)
}

// keyFingerprint is a short, non-reversible name for an API key, so
// operators can tell two keys apart without seeing either.
func keyFingerprint(key secret) string {
	if key.reveal() == "" {
		return "none"
	}
	sum := sha256.Sum256([]byte("tokencache/basiq key\x00" + key.reveal()))
	return "sha256:" + hex.EncodeToString(sum[:8])
}

// secret holds a credential inside a closure. fmt and slog print a func
// as an address, so no verb — not even %#v or %s on a copy of a struct
// holding one — can reveal it.
type secret func() string

func newSecret(s string) secret { return func() string { return s } }

// reveal returns the credential; "" for a nil secret.
func (s secret) reveal() string {
	if s == nil {
		return ""
	}
	return s()
}
