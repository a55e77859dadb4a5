package tokencache

import (
	"context"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/oauth2"
)

// WithRotation makes the cache's Transport adopt rotated tokens from API
// responses, the way authenticate-and-rotate issuers advise: check the
// token's expiry with each request and, when it is about to expire, use the
// new token the response carries. extract returns that token and whether
// there is one; for those issuers it is a jwtauth Fetcher's FromResponse
// method, which reads "Authorization: Bearer <jwt>" and checks the token as
// a fetched one (exp, lifetime cap, signature when verification is on). An
// extract error is logged and the token ignored.
//
// Until the token this replica holds reaches its refresh-ahead moment
// (WithRefreshAhead's share of its life, before any replica's jitter),
// rotated tokens are ignored: adopting one costs a Redis write and an event
// that every replica answers with a read, for a token nobody needs yet.
// From that moment the first rotated token a response brings is offered to
// the cache (Offer: stored only if it expires later than the cached one),
// once for the fleet: the others receive it with the "refreshed" event, and
// with traffic this happens before any replica's refresh-ahead timer would
// call the issuer.
func WithRotation(extract func(*http.Response) (Token, bool, error)) Option {
	return func(c *config) error { c.rotation = extract; return nil }
}

type transport struct {
	h    *Handle
	c    *Cache
	base http.RoundTripper
}

// maxDrain bounds how much of a 401 body is read to reuse its connection.
const maxDrain = 64 << 10

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	tok, err := t.h.Token(ctx)
	if err != nil {
		closeBody(req)
		return nil, err
	}
	resp, err := t.send(req, tok, false)
	if err != nil {
		return resp, err
	}
	e, _ := t.h.entry()
	if resp.StatusCode != http.StatusUnauthorized {
		if e != nil {
			e.apiAccepted()
		}
		return resp, nil
	}
	if req.Body != nil && req.Body != http.NoBody && req.GetBody == nil {
		return resp, nil // the body is spent: the caller must retry
	}
	if e != nil && e.holdRejection(tok) {
		return resp, nil
	}
	if _, err := t.h.Invalidate(ctx, tok); err != nil {
		t.c.log().Warn("tokencache: could not invalidate a token the API rejected", "token", tok, "err", err)
	}
	fresh, err := t.h.Token(ctx)
	if err != nil {
		t.c.log().Warn("tokencache: no new token after a 401", "err", err)
		return resp, nil
	}
	if fresh.AccessToken == tok.AccessToken {
		// The issuer handed the rejected token back: retrying is no use,
		// and it counts as a fresh token rejected at once.
		if e != nil {
			e.apiRejectedFresh(fresh)
		}
		return resp, nil
	}
	_, _ = io.CopyN(io.Discard, resp.Body, maxDrain)
	_ = resp.Body.Close()
	resp, err = t.send(req, fresh, true)
	if err == nil && e != nil {
		if resp.StatusCode == http.StatusUnauthorized {
			e.apiRejectedFresh(fresh)
		} else {
			e.apiAccepted()
		}
	}
	return resp, err
}

func (t *transport) send(req *http.Request, tok Token, retry bool) (*http.Response, error) {
	r := req.Clone(req.Context())
	if retry && req.Body != nil && req.Body != http.NoBody {
		body, err := req.GetBody()
		if err != nil {
			return nil, err
		}
		r.Body = body
	}
	r.Header.Set("Authorization", tok.HeaderValue())
	base := t.base
	if base == nil {
		base = http.DefaultTransport
	}
	resp, err := base.RoundTrip(r)
	if err != nil {
		return nil, err
	}
	if ex := t.c.cfg.rotation; ex != nil {
		t.rotate(req.Context(), resp, tok, ex)
	}
	return resp, nil
}

// rotate offers the cache a newer token carried by resp, once the token
// held has reached its refresh-ahead moment (see WithRotation).
func (t *transport) rotate(ctx context.Context, resp *http.Response, cur Token, ex func(*http.Response) (Token, bool, error)) {
	e, err := t.h.entry()
	if err != nil || e.rotationNotDue() {
		return
	}
	nt, ok, err := ex(resp)
	if err != nil {
		t.c.log().Warn("tokencache: unusable rotated token in a response", "err", err)
		return
	}
	if !ok || nt.AccessToken == cur.AccessToken || !nt.Expiry.After(cur.Expiry) {
		return
	}
	if e.mem.l1.Load() == nil && !e.dueByExpiry(cur, nt) {
		return
	}
	if stored, err := t.h.Offer(ctx, nt); err != nil {
		t.c.log().Warn("tokencache: could not store a rotated token", "token", nt, "err", err)
	} else if stored {
		t.c.log().Debug("tokencache: stored a rotated token", "token", nt)
	}
}

// rotationNotDue reports whether this replica holds a valid copy of the
// token that has not reached its refresh-ahead moment (scheduler.moment):
// then a rotated token is not adopted.
func (e *entry) rotationNotDue() bool {
	s := e.mem.l1.Load()
	if s == nil {
		return false
	}
	now := e.c.monoNow()
	return now < s.validUntil && now < e.sched.moment(s)
}

// dueByExpiry judges cur without an in-memory copy (WithL1(false)): it is
// due when what is left of it is no more than the share of a lifetime that
// refresh-ahead leaves, taking the rotated token's lifetime as the measure.
func (e *entry) dueByExpiry(cur, rotated Token) bool {
	now := e.c.now()
	life := rotated.Expiry.Sub(now)
	return cur.Expiry.Sub(now) <= time.Duration(float64(life)*(1-e.c.cfg.refreshAhead))
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		_ = req.Body.Close()
	}
}

type tokenSource struct {
	h   *Handle
	ctx context.Context
}

func (s tokenSource) Token() (*oauth2.Token, error) {
	t, err := s.h.Token(s.ctx)
	if err != nil {
		return nil, err
	}
	return &oauth2.Token{AccessToken: t.AccessToken, TokenType: t.typ(), Expiry: s.h.servedUntil(t)}, nil
}

// servedUntil is when the cache stops serving t: the end of its in-memory
// copy's validity, or, without one, the issuer's expiry minus the skew the
// writer took off (a fifth of the lifetime at most, as ttlFor does).
func (h *Handle) servedUntil(t Token) time.Time {
	if e, err := h.entry(); err == nil {
		if s := e.mem.l1.Load(); s != nil && s.fp == t.Fingerprint() {
			return h.c.epoch.Add(time.Duration(s.validUntil))
		}
	}
	return t.Expiry.Add(-h.c.cfg.skew)
}

// The rejection window of Transport (see Handle.Transport).
const (
	rejectionWindowMin = 10 * time.Second
	rejectionWindowMax = 5 * time.Minute
)

// rejections is what an entry remembers of the API's 401s.
type rejections struct {
	widened atomic.Bool // window > rejectionWindowMin: apiAccepted has work to do
	mu      sync.Mutex  // guards window, grownFor, loggedUntil
	window  time.Duration
	// grownFor is the token (fingerprint and generation) whose rejection
	// last doubled the window: many requests retried with the same fresh
	// token double it once.
	grownFor      string
	loggedUntil   mono
	invalidatedAt mono // the last invalidation; 0: none
}

// invalidated notes that a token of the entry was invalidated, here or
// anywhere in the fleet (its event).
func (r *rejections) invalidated(now mono) {
	r.mu.Lock()
	r.invalidatedAt = now
	r.mu.Unlock()
}

// holdRejection reports whether a 401 for tok is returned to the caller
// without invalidating tok: tok is the copy served, it replaced a token
// invalidated within the rejection window, and it is younger than the
// window itself.
func (e *entry) holdRejection(tok Token) bool {
	s := e.mem.served()
	if s == nil || s.fp != tok.Fingerprint() || e.mem.isRejected(s.fp, s.gen) {
		// Not the copy served, or the very token being invalidated (a
		// request sent with it before its invalidation was heard).
		return false
	}
	now := e.c.monoNow()
	r := &e.rej
	r.mu.Lock()
	w := max(r.window, rejectionWindowMin)
	hold := r.invalidatedAt != 0 && now-r.invalidatedAt < mono(w) && now-s.born < mono(w)
	logNow := hold && now >= r.loggedUntil
	if logNow {
		r.loggedUntil = now + mono(w)
	}
	r.mu.Unlock()
	if !hold {
		return false
	}
	e.c.stats.rejectionsHeld.Add(1)
	if logNow {
		e.c.log().Warn("tokencache: the API rejects a token younger than the rejection window; returning its 401s without refetching",
			"key", e.k.Token, "token", tok, "token_age", time.Duration(now-s.born).Round(time.Millisecond), "window", w)
	}
	return true
}

// apiRejectedFresh doubles the rejection window, once per token stored
// (a token an issuer hands back again is stored anew): fresh, fetched
// after a 401, was rejected at once.
func (e *entry) apiRejectedFresh(fresh Token) {
	id := fresh.Fingerprint()
	if s := e.mem.served(); s != nil && s.fp == id {
		id += "/" + strconv.FormatInt(s.gen, 10)
	}
	r := &e.rej
	r.mu.Lock()
	defer r.mu.Unlock()
	if id != r.grownFor {
		r.grownFor = id
		r.window = min(2*max(r.window, rejectionWindowMin), rejectionWindowMax)
		r.widened.Store(true)
	}
}

// apiAccepted resets the rejection window after a response that is not a
// 401. It costs the hot path one atomic load.
func (e *entry) apiAccepted() {
	r := &e.rej
	if !r.widened.Load() {
		return
	}
	r.mu.Lock()
	r.window, r.grownFor = 0, ""
	r.widened.Store(false)
	r.mu.Unlock()
}
