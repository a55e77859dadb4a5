package localapi

import (
	"container/list"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Default per-client rate limit: far above what a replica that asks for
// the token before each API call needs, low enough that a client stuck in
// a loop cannot turn into a stream of invalidations and issuer calls.
const (
	DefaultRate  = 100 // requests per second
	DefaultBurst = 200
)

// Default limit of costly requests, those that may cost the fleet an issuer
// call (an invalidation, a user's first token): a few a minute is all an
// honest client needs, and the fleet's issuer budget is 300 per 5 minutes.
const (
	DefaultCostlyRate  = 0.5 // requests per second
	DefaultCostlyBurst = 10
)

// Limit of requests refused for a wrong or missing secret: a client (an
// IP, or every client of a Unix socket) that has sent more than
// failedBurst of them waits for the bucket before any request of it is
// looked at, so that secrets cannot be guessed faster than failedRate.
const (
	failedRate  = 1 // per second
	failedBurst = 10
)

// maxClients bounds the clients whose limits are kept; past it the least
// recently seen is dropped (its limits start afresh).
const maxClients = 4096

// GuardConfig is what Guard checks before a request reaches the API.
type GuardConfig struct {
	// Secret, if not empty, must come as "Authorization: Bearer <secret>".
	Secret string
	// SecretFunc, if not nil, replaces Secret: it is called for each
	// request, so a secret rotated while the server runs (re-read from its
	// file) is checked from the next request on. It must be cheap and
	// safe for concurrent use. A SecretFunc that returns "" refuses every
	// request: a guard built with a secret never turns open.
	SecretFunc func() string
	// Rate is the requests per second allowed to one client, Burst the
	// bucket; Rate 0 means no limit. A client is a remote IP on TCP; on a
	// Unix socket, whose mode admits one user, every client shares one
	// bucket.
	Rate  rate.Limit
	Burst int
	// CostlyRate and CostlyBurst limit, per client, the requests that may
	// cost an issuer call (see Costly); CostlyRate 0 means no limit.
	CostlyRate  rate.Limit
	CostlyBurst int
	// BodyTimeout, if positive, is how long an authorized request's body
	// has to arrive (each read of a body the proxy streams has as long);
	// one that does not is answered 408.
	BodyTimeout time.Duration
	// Rejected, if not nil, is told of each request refused, with
	// ResultUnauthorized or ResultRateLimited.
	Rejected func(r *http.Request, result string)
}

// Guard returns next behind the bearer secret and the rate limit. Every
// answer carries Cache-Control: no-store. A wrong or missing secret is
// answered 401 with no detail, whatever was wrong.
func Guard(next http.Handler, c GuardConfig) http.Handler {
	g := &guard{next: next, c: c, clients: map[string]*list.Element{}, secret: c.SecretFunc}
	if g.secret == nil && c.Secret != "" {
		s := c.Secret
		g.secret = func() string { return s }
	}
	return g
}

type guard struct {
	next   http.Handler
	c      GuardConfig
	secret func() string                // the secret of the moment; nil if none
	sum    atomic.Pointer[secretDigest] // the digest of the secret last seen

	mu      sync.Mutex // guards clients and lru
	clients map[string]*list.Element
	lru     list.List // of *client, the most recently seen first
}

// client is the limits of one client.
type client struct {
	key    string
	all    *rate.Limiter // every request; nil: no limit
	costly *rate.Limiter // requests that may cost an issuer call; nil: no limit
	failed *rate.Limiter // requests refused for the secret; nil: no secret
}

func (g *guard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	cl := g.client(clientKey(r))
	if g.secret != nil {
		if cl.failed.Tokens() < 1 {
			// This client has been sending wrong secrets: nothing of it
			// is looked at until its bucket refills.
			g.tooMany(w, r)
			return
		}
		if !g.authorized(r) {
			cl.failed.Allow()
			g.reject(r, ResultUnauthorized)
			// The connection is not kept for another guess.
			w.Header().Set("Connection", "close")
			w.Header().Set("WWW-Authenticate", "Bearer")
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
	}
	if cl.all != nil && !cl.all.Allow() {
		g.tooMany(w, r)
		return
	}
	withBodyDeadline(w, r, g.c.BodyTimeout)
	g.next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), clientCtxKey{}, cl)))
}

func (g *guard) tooMany(w http.ResponseWriter, r *http.Request) {
	g.reject(r, ResultRateLimited)
	w.Header().Set("Retry-After", "1")
	http.Error(w, "too many requests", http.StatusTooManyRequests)
}

// clientCtxKey is the context key of a request's *client.
type clientCtxKey struct{}

// Charge takes one costly request from the limit of the client that sent
// r after the fact, for a request that turned out to cost an issuer call:
// the next ones wait for the bucket to refill.
func Charge(r *http.Request) {
	if cl, ok := r.Context().Value(clientCtxKey{}).(*client); ok && cl.costly != nil {
		_ = cl.costly.Reserve()
	}
}

// CostlyLeft reports whether the client that sent r may make a request
// that may cost the fleet an issuer call (an invalidation, a user's first
// token), without taking it: a request that did cost one is charged after
// the fact (Charge). A request that did not come through Guard is not
// limited.
func CostlyLeft(r *http.Request) bool {
	cl, ok := r.Context().Value(clientCtxKey{}).(*client)
	return !ok || cl.costly == nil || cl.costly.Tokens() >= 1
}

func (g *guard) reject(r *http.Request, result string) {
	if g.c.Rejected != nil {
		g.c.Rejected(r, result)
	}
}

// authorized compares the bearer secret in constant time: both sides are
// hashed first, so neither the secret's content nor its length shows in
// the time taken.
func (g *guard) authorized(r *http.Request) bool {
	want, ok := g.digest()
	if !ok {
		return false
	}
	scheme, cred, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	sum := sha256.Sum256([]byte(strings.TrimSpace(cred)))
	return subtle.ConstantTimeCompare(sum[:], want[:]) == 1
}

// secretDigest is a secret with its SHA-256, computed once per secret.
type secretDigest struct {
	secret string
	sum    [sha256.Size]byte
}

// digest returns the SHA-256 of the secret of the moment, and false if it
// is empty.
func (g *guard) digest() ([sha256.Size]byte, bool) {
	s := g.secret()
	if s == "" {
		return [sha256.Size]byte{}, false
	}
	if d := g.sum.Load(); d != nil && d.secret == s {
		return d.sum, true
	}
	d := &secretDigest{secret: s, sum: sha256.Sum256([]byte(s))}
	g.sum.Store(d)
	return d.sum, true
}

// client returns the limits of the client key, the most recently seen
// now; past maxClients the least recently seen client is dropped.
func (g *guard) client(key string) *client {
	g.mu.Lock()
	defer g.mu.Unlock()
	if el, ok := g.clients[key]; ok {
		g.lru.MoveToFront(el)
		return el.Value.(*client)
	}
	if g.lru.Len() >= maxClients {
		old := g.lru.Back()
		g.lru.Remove(old)
		delete(g.clients, old.Value.(*client).key)
	}
	cl := &client{key: key}
	if g.c.Rate > 0 {
		cl.all = rate.NewLimiter(g.c.Rate, max(g.c.Burst, 1))
	}
	if g.c.CostlyRate > 0 {
		cl.costly = rate.NewLimiter(g.c.CostlyRate, max(g.c.CostlyBurst, 1))
	}
	if g.secret != nil {
		cl.failed = rate.NewLimiter(failedRate, failedBurst)
	}
	g.clients[key] = g.lru.PushFront(cl)
	return cl
}

// clientKey names the client for the rate limit: its IP on TCP, "unix"
// on a Unix socket.
func clientKey(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil || host == "" {
		return "unix"
	}
	return host
}
