package issuertest

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults for the options.
const (
	// DefaultAPIKey is the API key (Basiq /token and /authenticate's
	// apiKey) accepted unless WithAPIKey sets another. It is shaped like
	// a Basiq key: base64 text.
	DefaultAPIKey = "aXNzdWVydGVzdDpmYWtlLWFwaS1rZXktMDEyMzQ1Njc4OWFiY2RlZg=="

	// DefaultClientSecret is /authenticate's clientSecret, and the HS256
	// key of the JWTs it mints, unless WithClientSecret sets another.
	DefaultClientSecret = "issuertest-client-secret-0123456789"

	// DefaultLifetime is the token lifetime, as Basiq's.
	DefaultLifetime = time.Hour
)

// Paths the server answers.
const (
	TokenPath        = "/token"
	AuthenticatePath = "/authenticate"
	// StatsPath answers GET with Stats as JSON, for other processes.
	StatsPath = "/_issuertest/stats"
	// RevokePath revokes every token on POST, for other processes.
	RevokePath = "/_issuertest/revoke"
)

// Scopes of Basiq tokens.
const (
	ScopeServer = "SERVER_ACCESS"
	ScopeClient = "CLIENT_ACCESS"
	// ScopeJWT marks tokens minted by /authenticate (and rotation).
	ScopeJWT = "JWT"
)

// AuthFormat is how /authenticate returns its JWT.
type AuthFormat int

// The /authenticate answer formats.
const (
	AuthText            AuthFormat = iota // the JWT as text/plain (the default)
	AuthJSONToken                         // {"token": "<jwt>"}
	AuthJSONAccessToken                   // {"access_token": "<jwt>"}
	AuthJSONJWT                           // {"jwt": "<jwt>"}
)

// Server is a fake issuer. Build it with NewServer or RunT (listening), or
// New (a bare http.Handler to mount or Start yourself). Its methods are
// safe for concurrent use, also while requests are served.
type Server struct {
	cfgErr error // first option given a value it cannot use

	credMu       sync.RWMutex // guards apiKey, clientSecret (SetAPIKey, SetClientSecret)
	apiKey       string
	clientSecret string

	now         func() time.Time
	versions    []string
	strictUsers bool

	counters counters

	mu         sync.Mutex // guards the fields below
	lifetime   time.Duration
	latency    time.Duration
	rotation   bool
	authFormat AuthFormat
	tokens     map[string]issued
	failure    fault[Failure]
	garbage    fault[Garbage]
	requests   []TokenRequest
	users      map[string]*apiUser // the Basiq API's users, by id
	jobs       map[string]*apiJob  // their jobs, by id
	failJobs   bool                // FailJobs

	startMu sync.Mutex // guards srv, ln, url, served
	srv     *http.Server
	ln      net.Listener
	url     string
	served  chan struct{} // closed when Serve returns

	closeOnce sync.Once
	closed    chan struct{} // closed by Close: cuts latency sleeps short
}

var _ http.Handler = (*Server)(nil)

// issued is a token the server minted.
type issued struct {
	expiry time.Time
	scope  string // ScopeServer, ScopeClient or ScopeJWT
	userID string
}

// fault is an injection that applies to the next n issuer calls, or to
// all of them when n < 0.
type fault[T any] struct {
	n int
	v T
}

func (f *fault[T]) take() (T, bool) {
	var zero T
	switch {
	case f.n == 0:
		return zero, false
	case f.n > 0:
		f.n--
	}
	return f.v, true
}

type counters struct {
	token, server, client, issued, authenticate, resource, unauthorized, rotations, injected atomic.Int64
}

// Stats counts the requests the server has answered. Each field is read
// atomically; the set is not one snapshot if requests are in flight.
type Stats struct {
	TokenCalls        int64 `json:"token_calls"`        // POST /token requests, any outcome
	ServerTokenCalls  int64 `json:"server_token_calls"` // of which asked for SERVER_ACCESS
	ClientTokenCalls  int64 `json:"client_token_calls"` // of which asked for CLIENT_ACCESS
	TokensIssued      int64 `json:"tokens_issued"`      // tokens minted: /token, /authenticate and rotation
	AuthenticateCalls int64 `json:"authenticate_calls"` // POST /authenticate requests, any outcome
	ResourceCalls     int64 `json:"resource_calls"`     // requests to the protected resource
	Unauthorized      int64 `json:"unauthorized"`       // 401s the resource answered
	Rotations         int64 `json:"rotations"`          // newer JWTs sent in Authorization response headers
	Injected          int64 `json:"injected"`           // answers replaced by a Failure or Garbage
}

// TokenRequest records one POST /token as received. The Authorization
// header is not kept, only whether it held the configured key verbatim.
type TokenRequest struct {
	Method      string
	ContentType string
	Version     string // basiq-version header
	Scope       string
	UserID      string
	KeyOK       bool // "Authorization: Basic <the configured key>" exactly
	Status      int  // the status answered
}

// ErrConfig is wrapped by the error Validate and Start return when an
// option was given a value the Server cannot use; the error names the
// option. A Server so built answers every request with a 500 naming it.
var ErrConfig = errors.New("issuertest: invalid configuration")

// An Option configures a Server. An option given a value it cannot use is
// reported, wrapping ErrConfig, by Validate and Start (NewServer panics
// with it, RunT fails the test); New itself does not fail.
type Option func(*Server)

// refuse records the first option given a value the Server cannot use.
func (s *Server) refuse(reason string) {
	if s.cfgErr == nil {
		s.cfgErr = fmt.Errorf("%w: %s", ErrConfig, reason)
	}
}

// WithAPIKey sets the API key accepted by /token (verbatim after
// "Basic ") and as /authenticate's apiKey. Default DefaultAPIKey. An
// empty key is refused.
func WithAPIKey(key string) Option {
	return func(s *Server) {
		if key == "" {
			s.refuse("WithAPIKey(\"\"); leave the option out for DefaultAPIKey")
			return
		}
		s.apiKey = key
	}
}

// WithClientSecret sets /authenticate's clientSecret and the JWTs' HS256
// key. Default DefaultClientSecret. An empty secret is refused.
func WithClientSecret(secret string) Option {
	return func(s *Server) {
		if secret == "" {
			s.refuse("WithClientSecret(\"\"); leave the option out for DefaultClientSecret")
			return
		}
		s.clientSecret = secret
	}
}

// WithLifetime sets the lifetime of new tokens. Default DefaultLifetime.
// A sub-second lifetime gives a fractional expires_in; JWT exp claims are
// whole seconds, rounded up. Zero or negative issues tokens that are
// already expired (expires_in <= 0), which a strict client rejects.
func WithLifetime(d time.Duration) Option { return func(s *Server) { s.lifetime = d } }

// WithClock sets the server's clock, which stamps expiries and judges
// them. Default time.Now. Share a fake clock with the client under test
// to expire tokens without sleeping. A nil clock is refused.
func WithClock(now func() time.Time) Option {
	return func(s *Server) {
		if now == nil {
			s.refuse("WithClock(nil); leave the option out for time.Now")
			return
		}
		s.now = now
	}
}

// WithLatency delays every /token and /authenticate answer by d. Default
// 0, no delay. A negative duration is refused.
func WithLatency(d time.Duration) Option {
	return func(s *Server) {
		if d < 0 {
			s.refuse("WithLatency(" + d.String() + ") is negative")
			return
		}
		s.latency = d
	}
}

// WithRotation makes the resource return a newer JWT in its
// Authorization response header to requests made with a JWT. Default
// false.
func WithRotation(on bool) Option { return func(s *Server) { s.rotation = on } }

// WithAuthFormat sets how /authenticate returns its JWT, one of the
// AuthFormat constants. Default AuthText. Another value is refused.
func WithAuthFormat(f AuthFormat) Option {
	return func(s *Server) {
		if f < AuthText || f > AuthJSONJWT {
			s.refuse("WithAuthFormat(" + strconv.Itoa(int(f)) + ") is not an AuthFormat")
			return
		}
		s.authFormat = f
	}
}

// WithVersions sets the basiq-version values /token accepts. Default
// "2.0" and "3.0". No version, or an empty one, is refused.
func WithVersions(v ...string) Option {
	return func(s *Server) {
		if len(v) == 0 || slices.Contains(v, "") {
			s.refuse(fmt.Sprintf("WithVersions(%q) needs at least one version and no empty one", v))
			return
		}
		s.versions = slices.Clone(v)
	}
}

// New returns a Server that is not listening: an http.Handler to mount,
// or to Start. Most tests want NewServer or RunT.
func New(opts ...Option) *Server {
	s := &Server{
		apiKey:       DefaultAPIKey,
		clientSecret: DefaultClientSecret,
		now:          time.Now,
		versions:     []string{"2.0", "3.0"},
		lifetime:     DefaultLifetime,
		tokens:       make(map[string]issued),
		users:        make(map[string]*apiUser),
		jobs:         make(map[string]*apiJob),
		closed:       make(chan struct{}),
	}
	for _, opt := range opts {
		opt(s)
	}
	return s
}

// NewServer returns a Server listening on a free loopback port. Like
// httptest.NewServer it panics if it cannot listen, and it panics with
// Validate's error if an option was given a value it cannot use; Close it
// when done.
func NewServer(opts ...Option) *Server {
	s := New(opts...)
	if err := s.Start(); err != nil {
		panic("issuertest: " + err.Error())
	}
	return s
}

// TB is the part of testing.TB that RunT uses.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	Cleanup(func())
}

// RunT returns a listening Server that is closed when the test ends. It
// fails the test if the server cannot listen or an option was given a
// value it cannot use.
func RunT(tb TB, opts ...Option) *Server {
	tb.Helper()
	s := New(opts...)
	if err := s.Start(); err != nil {
		tb.Fatalf("issuertest: %v", err)
		return s
	}
	tb.Cleanup(s.Close)
	return s
}

// Validate reports the first option New was given a value it cannot use,
// as an error wrapping ErrConfig, or nil.
func (s *Server) Validate() error { return s.cfgErr }

// Start listens on a free loopback port and serves in the background. It
// fails with Validate's error on a misconfigured Server.
func (s *Server) Start() error { return s.StartOn("127.0.0.1:0") }

// StartOn listens on addr (e.g. ":8080" for the docker demo) and serves
// in the background.
func (s *Server) StartOn(addr string) error {
	if s.cfgErr != nil {
		return s.cfgErr
	}
	s.startMu.Lock()
	defer s.startMu.Unlock()
	select {
	case <-s.closed:
		return errors.New("server closed")
	default:
	}
	if s.srv != nil {
		return errors.New("server already started")
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	s.ln = ln
	s.url = "http://" + ln.Addr().String()
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	s.served = make(chan struct{})
	go func() {
		defer close(s.served)
		_ = s.srv.Serve(ln)
	}()
	return nil
}

// URL returns the base URL, e.g. "http://127.0.0.1:38219", or "" if the
// server is not listening. Append TokenPath etc., or pass it as a base URL.
func (s *Server) URL() string {
	s.startMu.Lock()
	defer s.startMu.Unlock()
	return s.url
}

// Close stops the server: in-flight latency waits end at once and open
// connections are closed. It is safe to call more than once.
func (s *Server) Close() {
	s.closeOnce.Do(func() { close(s.closed) })
	s.startMu.Lock()
	srv, served := s.srv, s.served
	s.startMu.Unlock()
	if srv != nil {
		_ = srv.Close()
		<-served
	}
}

// APIKey returns the API key the server accepts.
func (s *Server) APIKey() string {
	s.credMu.RLock()
	defer s.credMu.RUnlock()
	return s.apiKey
}

// ClientSecret returns /authenticate's clientSecret, the JWTs' HS256 key.
func (s *Server) ClientSecret() string {
	s.credMu.RLock()
	defer s.credMu.RUnlock()
	return s.clientSecret
}

// SetAPIKey makes the server accept key, and only key, from now on: a
// rotated credential. Tokens minted before stay valid until they expire
// or are revoked (RevokeAll). An empty key is ignored.
func (s *Server) SetAPIKey(key string) {
	if key == "" {
		return
	}
	s.credMu.Lock()
	defer s.credMu.Unlock()
	s.apiKey = key
}

// SetClientSecret makes /authenticate accept secret, and only secret,
// from now on, and sign the JWTs it mints with it. An empty secret is
// ignored.
func (s *Server) SetClientSecret(secret string) {
	if secret == "" {
		return
	}
	s.credMu.Lock()
	defer s.credMu.Unlock()
	s.clientSecret = secret
}

// Env returns environment entries that point the tokencache CLI (or any
// child process) at this server with its credentials:
// TOKENCACHE_ISSUER_URL, BASIQ_API_KEY, TOKENCACHE_API_KEY and
// TOKENCACHE_CLIENT_SECRET. Append them to os.Environ() for exec.Cmd.Env.
func (s *Server) Env() []string {
	return []string{
		"TOKENCACHE_ISSUER_URL=" + s.URL(),
		"BASIQ_API_KEY=" + s.APIKey(),
		"TOKENCACHE_API_KEY=" + s.APIKey(),
		"TOKENCACHE_CLIENT_SECRET=" + s.ClientSecret(),
	}
}

// Stats returns the counters.
func (s *Server) Stats() Stats {
	c := &s.counters
	return Stats{
		TokenCalls:        c.token.Load(),
		ServerTokenCalls:  c.server.Load(),
		ClientTokenCalls:  c.client.Load(),
		TokensIssued:      c.issued.Load(),
		AuthenticateCalls: c.authenticate.Load(),
		ResourceCalls:     c.resource.Load(),
		Unauthorized:      c.unauthorized.Load(),
		Rotations:         c.rotations.Load(),
		Injected:          c.injected.Load(),
	}
}

// maxRequests bounds the TokenRequest log.
const maxRequests = 1024

// Requests returns the last POST /token requests received (at most 1024),
// oldest first.
func (s *Server) Requests() []TokenRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]TokenRequest(nil), s.requests...)
}

// SetLifetime sets the lifetime of tokens minted from now on.
func (s *Server) SetLifetime(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lifetime = d
}

// SetLatency delays every /token and /authenticate answer by d from now
// on; 0 removes the delay. A request whose context ends stops waiting.
func (s *Server) SetLatency(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.latency = d
}

// SetRotation turns JWT rotation on the resource on or off.
func (s *Server) SetRotation(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rotation = on
}

// SetAuthFormat sets how /authenticate returns its JWT.
func (s *Server) SetAuthFormat(f AuthFormat) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.authFormat = f
}

// FailNext answers the next n issuer calls (/token and /authenticate)
// with f instead of a token. It replaces any earlier failure injection.
func (s *Server) FailNext(n int, f Failure) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failure = fault[Failure]{n: max(n, 0), v: f}
}

// FailAlways answers every issuer call with f until Reset.
func (s *Server) FailAlways(f Failure) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failure = fault[Failure]{n: -1, v: f}
}

// GarbleNext answers the next n issuer calls with status 200 and the
// unusable body g. Failures take precedence over garbage.
func (s *Server) GarbleNext(n int, g Garbage) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.garbage = fault[Garbage]{n: max(n, 0), v: g}
}

// GarbleAlways answers every issuer call with the unusable body g until
// Reset.
func (s *Server) GarbleAlways(g Garbage) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.garbage = fault[Garbage]{n: -1, v: g}
}

// Reset removes injected failures, garbage, latency and FailJobs.
// Tokens, users, jobs, settings and counters are kept.
func (s *Server) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failJobs = false
	s.failure = fault[Failure]{}
	s.garbage = fault[Garbage]{}
	s.latency = 0
}

// RevokeAll revokes every token issued so far: the resource answers 401
// to them, as after a key rotation on the issuer's side.
func (s *Server) RevokeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.tokens)
}

// Revoke revokes one token and reports whether it was live.
func (s *Server) Revoke(token string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.tokens[token]
	delete(s.tokens, token)
	return ok
}

// Valid reports whether the resource would accept token now.
func (s *Server) Valid(token string) bool {
	_, ok := s.lookup(token)
	return ok
}

func (s *Server) lookup(token string) (issued, bool) {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	it, ok := s.tokens[token]
	if !ok || !now.Before(it.expiry) {
		return issued{}, false
	}
	return it, true
}

// ServeHTTP routes a request to /token, /authenticate, the Basiq API
// (/users, /users/{id}/..., /jobs/{id}), the generic resource (/api/...,
// and other paths under /users/{id}/) or the /_issuertest/ endpoints.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s.cfgErr != nil {
		http.Error(w, s.cfgErr.Error(), http.StatusInternalServerError)
		return
	}
	switch p := r.URL.Path; {
	case p == TokenPath:
		s.serveToken(w, r)
	case p == AuthenticatePath:
		s.serveAuthenticate(w, r)
	case p == StatsPath:
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(s.Stats())
	case p == RevokePath && r.Method == http.MethodPost:
		s.RevokeAll()
		w.WriteHeader(http.StatusNoContent)
	case p == UsersPath:
		s.serveCreateUser(w, r)
	case strings.HasPrefix(p, JobsPath+"/"):
		id := strings.TrimPrefix(p, JobsPath+"/")
		if id == "" || strings.Contains(id, "/") {
			notFound("Job").write(w)
			return
		}
		s.serveJob(w, r, id)
	case strings.HasPrefix(p, "/users/"):
		id, sub, _ := strings.Cut(strings.TrimPrefix(p, "/users/"), "/")
		if id != "" && !strings.Contains(sub, "/") && s.serveUser(w, r, id, sub) {
			return
		}
		s.serveResource(w, r)
	case strings.HasPrefix(p, "/api/"):
		s.serveResource(w, r)
	default:
		writeError(w, http.StatusNotFound, "resource-not-found", "Requested resource is not found.", "", nil)
	}
}

// issuerPreamble applies latency and injected faults to an issuer call.
// It reports whether it has answered the request.
func (s *Server) issuerPreamble(w http.ResponseWriter, r *http.Request, garble func(http.ResponseWriter, Garbage)) bool {
	s.mu.Lock()
	latency := s.latency
	s.mu.Unlock()
	if latency > 0 {
		t := time.NewTimer(latency)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
			return true
		case <-s.closed:
			w.WriteHeader(http.StatusServiceUnavailable)
			return true
		}
	}
	s.mu.Lock()
	f, failing := s.failure.take()
	var g Garbage
	garbling := false
	if !failing {
		g, garbling = s.garbage.take()
	}
	s.mu.Unlock()
	switch {
	case failing:
		s.counters.injected.Add(1)
		f.write(w)
		return true
	case garbling:
		s.counters.injected.Add(1)
		garble(w, g)
		return true
	}
	return false
}

func (s *Server) serveToken(w http.ResponseWriter, r *http.Request) {
	s.counters.token.Add(1)
	rec := TokenRequest{
		Method:      r.Method,
		ContentType: r.Header.Get("Content-Type"),
		Version:     r.Header.Get("basiq-version"),
		KeyOK:       r.Header.Get("Authorization") == "Basic "+s.APIKey(),
	}
	if r.Method == http.MethodPost {
		// Read the form whatever the content type, to record and count
		// the scope; an unparseable body shows as an empty scope.
		r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
		if mediaType(rec.ContentType) == "application/x-www-form-urlencoded" {
			_ = r.ParseForm()
		}
		rec.Scope = r.PostForm.Get("scope")
		rec.UserID = r.PostForm.Get("userId")
	}
	switch rec.Scope {
	case ScopeServer:
		s.counters.server.Add(1)
	case ScopeClient:
		s.counters.client.Add(1)
	}
	rec.Status = s.answerToken(w, r, rec)
	s.mu.Lock()
	if len(s.requests) >= maxRequests {
		s.requests = append(s.requests[:0], s.requests[1:]...)
	}
	s.requests = append(s.requests, rec)
	s.mu.Unlock()
}

// answerToken answers POST /token as Basiq does and returns the status.
func (s *Server) answerToken(w http.ResponseWriter, r *http.Request, rec TokenRequest) int {
	sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
	w = sw
	if s.issuerPreamble(w, r, s.garbleToken) {
		return sw.status
	}
	auth := r.Header.Get("Authorization")
	switch {
	case r.Method != http.MethodPost:
		w.Header().Set("Allow", http.MethodPost)
		writeError(w, http.StatusMethodNotAllowed, "invalid-request", "Invalid request",
			"Method "+r.Method+" is not allowed on /token.", nil)
	case rec.Version == "":
		writeError(w, http.StatusBadRequest, "parameter-not-valid", "Parameter value is not valid",
			"basiq-version header is required.", map[string]string{"parameter": "basiq-version"})
	case !contains(s.versions, rec.Version):
		writeError(w, http.StatusBadRequest, "parameter-not-valid", "Parameter value is not valid",
			"basiq-version is not supported.", map[string]string{"parameter": "basiq-version"})
	case auth == "" || !strings.HasPrefix(auth, "Basic ") || len(auth) == len("Basic "):
		writeError(w, http.StatusBadRequest, "parameter-not-valid", "Parameter value is not valid",
			"Authorization header is required and must be of the form 'Basic <API key>'.",
			map[string]string{"parameter": "Authorization"})
	case !rec.KeyOK:
		writeError(w, http.StatusUnauthorized, "invalid-client", "Invalid client",
			"Application authentication failed: the API key is not valid.",
			map[string]string{"parameter": "Authorization"})
	case mediaType(rec.ContentType) != "application/x-www-form-urlencoded":
		writeError(w, http.StatusBadRequest, "invalid-request", "Invalid request",
			"Content-Type must be application/x-www-form-urlencoded.", nil)
	case r.PostForm.Get("grant_type") != "" && r.PostForm.Get("grant_type") != "client_credentials":
		writeError(w, http.StatusBadRequest, "unsupported-grant-type", "Unsupported grant type",
			"The authorization grant type is not supported.", map[string]string{"parameter": "grant_type"})
	case rec.Scope == ScopeServer:
		s.issueToken(w, ScopeServer, "")
	case rec.Scope == ScopeClient && rec.UserID == "":
		writeError(w, http.StatusBadRequest, "parameter-not-valid", "Parameter value is not valid",
			"CLIENT_ACCESS tokens must be bound to a userId.", map[string]string{"parameter": "userId"})
	case rec.Scope == ScopeClient:
		s.issueToken(w, ScopeClient, rec.UserID)
	default:
		writeError(w, http.StatusBadRequest, "invalid-request", "Invalid request",
			"scope must be SERVER_ACCESS or CLIENT_ACCESS.", map[string]string{"parameter": "scope"})
	}
	return sw.status
}

func (s *Server) issueToken(w http.ResponseWriter, scope, userID string) {
	s.mu.Lock()
	life := s.lifetime
	s.mu.Unlock()
	tok := randomToken()
	s.record(tok, issued{expiry: s.now().Add(life), scope: scope, userID: userID})
	writeJSON(w, http.StatusOK, tokenBody{AccessToken: tok, TokenType: "Bearer", ExpiresIn: seconds(life)})
}

// tokenBody is Basiq's token answer.
type tokenBody struct {
	AccessToken string          `json:"access_token"`
	TokenType   string          `json:"token_type"`
	ExpiresIn   json.RawMessage `json:"expires_in"`
}

// seconds renders d as JSON seconds: an integer when whole, else with
// millisecond precision.
func seconds(d time.Duration) json.RawMessage {
	if d%time.Second == 0 {
		return json.RawMessage(strconv.FormatInt(int64(d/time.Second), 10))
	}
	return json.RawMessage(strconv.FormatFloat(math.Round(d.Seconds()*1000)/1000, 'f', -1, 64))
}

// maxTokens is the size above which expired tokens are swept on issue.
const maxTokens = 4096

func (s *Server) record(tok string, it issued) {
	s.counters.issued.Add(1)
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.tokens) >= maxTokens {
		for k, v := range s.tokens {
			if !now.Before(v.expiry) {
				delete(s.tokens, k)
			}
		}
	}
	s.tokens[tok] = it
}

// authRequest is /authenticate's body.
type authRequest struct {
	APIKey       string `json:"apiKey"`
	ClientSecret string `json:"clientSecret"`
}

func (s *Server) serveAuthenticate(w http.ResponseWriter, r *http.Request) {
	s.counters.authenticate.Add(1)
	if s.issuerPreamble(w, r, s.garbleAuthenticate) {
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeError(w, http.StatusMethodNotAllowed, "invalid-request", "Invalid request",
			"Method "+r.Method+" is not allowed on /authenticate.", nil)
		return
	}
	var req authRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, "invalid-request", "Invalid request",
			"The body must be a JSON object with apiKey and clientSecret.", nil)
		return
	}
	if req.APIKey == "" || req.ClientSecret == "" {
		writeError(w, http.StatusBadRequest, "parameter-not-valid", "Parameter value is not valid",
			"apiKey and clientSecret are required.", nil)
		return
	}
	if req.APIKey != s.APIKey() || req.ClientSecret != s.ClientSecret() {
		writeError(w, http.StatusUnauthorized, "unauthorized", "Unauthorized",
			"The apiKey or clientSecret is not valid.", nil)
		return
	}
	jwt, err := s.mintJWT()
	if err != nil {
		writeError(w, http.StatusInternalServerError, "internal-server-error", "Internal server error", "", nil)
		return
	}
	s.mu.Lock()
	format := s.authFormat
	s.mu.Unlock()
	writeAuthAnswer(w, format, jwt)
}

func writeAuthAnswer(w http.ResponseWriter, format AuthFormat, jwt string) {
	switch format {
	case AuthJSONToken:
		writeJSON(w, http.StatusOK, map[string]string{"token": jwt})
	case AuthJSONAccessToken:
		writeJSON(w, http.StatusOK, map[string]string{"access_token": jwt})
	case AuthJSONJWT:
		writeJSON(w, http.StatusOK, map[string]string{"jwt": jwt})
	default:
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte(jwt))
	}
}

// mintJWT issues and records a JWT whose exp is the lifetime from now,
// rounded up to a whole second; the server honours exactly that exp.
func (s *Server) mintJWT() (string, error) {
	s.mu.Lock()
	life := s.lifetime
	s.mu.Unlock()
	now := s.now()
	exp := now.Add(life)
	expUnix := exp.Unix()
	if exp.Nanosecond() > 0 {
		expUnix++
	}
	jwt, err := SignHS256(s.ClientSecret(), map[string]any{
		"iss": "issuertest",
		"sub": "issuertest-client",
		"iat": now.Unix(),
		"exp": expUnix,
		"jti": randomHex(8),
	})
	if err != nil {
		return "", err
	}
	s.record(jwt, issued{expiry: time.Unix(expUnix, 0), scope: ScopeJWT})
	return jwt, nil
}

func (s *Server) serveResource(w http.ResponseWriter, r *http.Request) {
	it, ok := s.authorize(w, r)
	if !ok {
		return
	}
	// A CLIENT_ACCESS token opens only its own user.
	userID := ""
	if rest, found := strings.CutPrefix(r.URL.Path, "/users/"); found {
		userID, _, _ = strings.Cut(rest, "/")
	}
	if userID != "" && !allowUser(w, it, userID) {
		return
	}
	body := map[string]string{"type": "resource", "path": r.URL.Path, "scope": it.scope}
	if userID != "" {
		body = map[string]string{"type": "user", "id": userID}
	}
	writeJSON(w, http.StatusOK, body)
}

// SignHS256 returns a compact JWT of claims signed with HMAC-SHA256 under
// secret, as /authenticate mints them. It is exported so tests can make
// their own JWTs (expired, far-future, wrongly signed) to feed a client.
func SignHS256(secret string, claims any) (string, error) {
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", fmt.Errorf("issuertest: encode claims: %w", err)
	}
	enc := base64.RawURLEncoding
	signing := enc.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`)) + "." + enc.EncodeToString(payload)
	return signing + "." + enc.EncodeToString(hs256(secret, signing)), nil
}

// FetchStats reads the Stats of the server at baseURL (its URL()) over
// HTTP, for a process other than the one running it.
func FetchStats(ctx context.Context, baseURL string) (Stats, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(baseURL, "/")+StatsPath, nil)
	if err != nil {
		return Stats{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return Stats{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return Stats{}, fmt.Errorf("issuertest: GET %s: status %d", StatsPath, resp.StatusCode)
	}
	var st Stats
	if err := json.NewDecoder(http.MaxBytesReader(nil, resp.Body, 64<<10)).Decode(&st); err != nil {
		return Stats{}, fmt.Errorf("issuertest: decode stats: %w", err)
	}
	return st, nil
}

func randomToken() string {
	var b [32]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return base64.RawURLEncoding.EncodeToString(b[:])
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// mediaType returns the lower-cased media type of a Content-Type value,
// without parameters.
func mediaType(ct string) string {
	t, _, _ := strings.Cut(ct, ";")
	return strings.ToLower(strings.TrimSpace(t))
}

// statusWriter remembers the status written.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}
