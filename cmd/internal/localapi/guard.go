package localapi

import (
	"crypto/sha256"
	"crypto/subtle"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/time/rate"
)

// Default per-client rate limit: far above what a replica that asks for
// the token before each API call needs, low enough that a client stuck in
// a loop cannot turn into a stream of invalidations and issuer calls.
const (
	DefaultRate  = 100 // requests per second
	DefaultBurst = 200
)

// maxClients bounds the rate limiters kept; past it they are all dropped
// (the limits start afresh, which is lenient, never stricter).
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
	// Rejected, if not nil, is told of each request refused, with
	// ResultUnauthorized or ResultRateLimited.
	Rejected func(r *http.Request, result string)
}

// Guard returns next behind the bearer secret and the rate limit. Every
// answer carries Cache-Control: no-store. A wrong or missing secret is
// answered 401 with no detail, whatever was wrong.
func Guard(next http.Handler, c GuardConfig) http.Handler {
	g := &guard{next: next, c: c, limiters: map[string]*rate.Limiter{}, secret: c.SecretFunc}
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

	mu       sync.Mutex // guards limiters
	limiters map[string]*rate.Limiter
}

func (g *guard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	if g.secret != nil && !g.authorized(r) {
		g.reject(r, ResultUnauthorized)
		w.Header().Set("WWW-Authenticate", "Bearer")
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	if !g.allow(clientKey(r)) {
		g.reject(r, ResultRateLimited)
		w.Header().Set("Retry-After", "1")
		http.Error(w, "too many requests", http.StatusTooManyRequests)
		return
	}
	g.next.ServeHTTP(w, r)
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

func (g *guard) allow(key string) bool {
	if g.c.Rate <= 0 {
		return true
	}
	g.mu.Lock()
	l, ok := g.limiters[key]
	if !ok {
		if len(g.limiters) >= maxClients {
			clear(g.limiters)
		}
		burst := g.c.Burst
		if burst < 1 {
			burst = 1
		}
		l = rate.NewLimiter(g.c.Rate, burst)
		g.limiters[key] = l
	}
	g.mu.Unlock()
	return l.Allow()
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
