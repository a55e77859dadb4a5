package tokencache

import (
	"context"
	"io"
	"net/http"
	"strconv"
	"time"

	"golang.org/x/oauth2"

	"github.com/tokencache/tokencache/tokencache/internal/protocol"
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
	if e == nil {
		return resp, nil
	}
	if resp.StatusCode != http.StatusUnauthorized {
		e.acceptedByAPI(tok, resp.StatusCode)
		return resp, nil
	}
	ctx, end := e.observe(ctx, OpUnauthorized)
	defer endUnauthorized(end, resp, &resp, &err)
	if req.Body != nil && req.Body != http.NoBody && req.GetBody == nil {
		return resp, nil // the body is spent: the caller must retry
	}
	if e.holdRejection(ctx, tok) || e.heldByFleet(ctx, tok) {
		return resp, nil
	}
	fresh, ok := e.replace(ctx, tok)
	if !ok {
		return resp, nil
	}
	if fresh.AccessToken == tok.AccessToken {
		// The issuer handed the rejected token back: retrying is no use,
		// and it counts as a fresh token rejected at once.
		e.apiRejectedFresh(fresh)
		return resp, nil
	}
	drain(resp)
	resp, err = t.send(req, fresh, true)
	if err == nil {
		if resp.StatusCode == http.StatusUnauthorized {
			// The request was retried once, its one retry: the 401 is
			// returned. It is evidence against the API only if fresh was
			// never accepted, here or anywhere in the fleet; else fresh
			// was revoked meanwhile, and the next request's 401
			// invalidates it.
			e.rejectedAtOnce(ctx, fresh)
		} else {
			e.acceptedByAPI(fresh, resp.StatusCode)
		}
	}
	return resp, err
}

// drain reads what is left of a 401's body (up to maxDrain) and closes
// it, so that its connection is reused.
func drain(resp *http.Response) {
	_, _ = io.CopyN(io.Discard, resp.Body, maxDrain)
	_ = resp.Body.Close()
}

// acceptedByAPI notes that the API accepted tok (see memory.acceptedBy):
// it answered code, not 401. The first time this replica sees the token
// stored with a generation answered with a success (below 400), it
// records that for the fleet, off the request path: then another replica
// that gets the token's 401 knows it for a revocation (see
// rejectedAtOnce). One SET NX per token and replica; a Redis error costs
// only that knowledge until the token's next success here.
func (e *entry) acceptedByAPI(tok Token, code int) {
	mark, ok := e.mem.acceptedBy(tok, code < 400)
	if !ok {
		return
	}
	c := e.c
	c.goBackground(func(ctx context.Context) {
		ctx, cancel := context.WithTimeout(ctx, c.cfg.lockTTL)
		defer cancel()
		if err := c.st.markAccepted(ctx, e.k, mark.gen, mark.fp, mark.ttl); err != nil {
			c.log().Warn("tokencache: could not record for the fleet that the API accepted a token", "key", e.k.Token,
				"token", tok, "generation", mark.gen, "err", err)
			e.mem.unmark(mark.fp, mark.gen)
		}
	})
}

// fleetAccepted asks Redis whether the API accepted tok from any replica
// (see memory.toAsk for when it asks, and hold) and, if so, notes it here:
// tok's 401 is then a revocation, retried. Concurrent asks about one token
// on this replica share one read. err: Redis did not answer.
func (e *entry) fleetAccepted(ctx context.Context, tok Token, hold bool) (bool, error) {
	gen := e.mem.toAsk(tok, hold)
	if gen == 0 {
		return false, nil
	}
	c, fp := e.c, tok.Fingerprint()
	v, err, _ := c.sf.Do("\x00accepted:"+e.k.Token+":"+fp+"/"+strconv.FormatInt(gen, 10), func() (any, error) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.lockTTL)
		defer cancel()
		return c.st.accepted(ctx, e.k, gen, fp)
	})
	if err != nil {
		c.log().Warn("tokencache: could not read whether the API accepted a token", "key", e.k.Token, "token", tok, "err", err)
		return false, err
	}
	if v.(bool) {
		e.mem.heardAccepted(fp, gen)
		return true, nil
	}
	return false, nil
}

// rejectedAtOnce weighs the 401 of fresh, a token fetched after an
// invalidation: a revocation if the API accepted it before, on this
// replica or, as the fleet recorded, another (reported true: the next 401
// of fresh invalidates it); else evidence against the API
// (apiRejectedFresh). If Redis cannot say whether the fleet saw fresh
// accepted, it is neither: no evidence is recorded, so the next 401 is
// retried.
func (e *entry) rejectedAtOnce(ctx context.Context, fresh Token) (revoked bool) {
	if _, err := e.fleetAccepted(ctx, fresh, false); err != nil {
		return false
	}
	if e.mem.revokedFresh(fresh) {
		return true
	}
	e.apiRejectedFresh(fresh)
	return false
}

// heldByFleet is holdRejection once Redis has been read: the fleet's
// evidence that the API rejects fresh tokens (the failure key a replica
// records before its caller gets the 401, see apiRejectedFresh) reaches a
// replica that already holds the token, whether or not the "rejected"
// event has. Concurrent 401s of one token on this replica share the read.
func (e *entry) heldByFleet(ctx context.Context, tok Token) bool {
	_, _, _ = e.c.sf.Do("\x00evidence:"+e.k.Token+":"+tok.Fingerprint(), func() (any, error) {
		r, err := e.read(ctx)
		if f := r.apiRejected; err == nil && f != nil {
			e.mem.heardRejected(r.failedStreak, f.Until.Sub(r.sent))
		}
		return nil, err
	})
	return e.holdRejection(ctx, tok)
}

// replace invalidates tok, which the API rejected, for the fleet and gets
// the token that replaces it. Concurrent 401s of one token on this replica
// share one invalidation and one refetch. ok is false when no new token
// could be had (the 401 is then returned as it is).
func (e *entry) replace(ctx context.Context, tok Token) (Token, bool) {
	c := e.c
	v, err, _ := c.sf.Do("\x00401:"+e.k.Token+":"+tok.Fingerprint(), func() (any, error) {
		// Shared by every request that saw this 401: not bound to the
		// first one's context.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.refreshTimeout)
		defer cancel()
		if _, err := e.invalidate(ctx, tok.Fingerprint(), 0); err != nil {
			c.log().Warn("tokencache: could not invalidate a token the API rejected", "token", tok, "err", err)
		}
		fresh, err := e.token(ctx)
		if err != nil {
			c.log().Warn("tokencache: no new token after a 401", "err", err)
		}
		return fresh, err
	})
	if err != nil {
		return Token{}, false
	}
	return v.(Token), true
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

// dueByExpiry judges cur without an in-memory copy (withL1(false)): it is
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

// holdRejection reports whether a 401 for tok is returned to the caller
// without invalidating tok (see evidence.go), counting and, once per
// window, logging it.
//
// While 401s are held, a token this replica has not seen accepted is
// first asked about (fleetAccepted, at most once a second per token): one
// the fleet saw accepted is retried. If Redis does not answer, the local
// evidence stands.
func (e *entry) holdRejection(ctx context.Context, tok Token) bool {
	_, _ = e.fleetAccepted(ctx, tok, true)
	hold, logNow, window := e.mem.verdict401(tok)
	if !hold {
		return false
	}
	e.c.stats.rejectionsHeld.Add(1)
	if logNow {
		e.c.log().Warn("tokencache: the API rejected a token fetched after an invalidation before accepting any; returning its 401s without refetching",
			"key", e.k.Token, "token", tok, "for", window.Round(time.Millisecond))
	}
	return true
}

// codeAPIRejected is the code of the fleet's failure key while the API
// rejects fresh tokens (see apiRejectedFresh).
const codeAPIRejected = "api_rejected_fresh_token"

// apiRejectedFresh records that fresh, fetched after a 401, was rejected
// at once, and tells the fleet, so that its replicas hold their 401s too
// rather than each invalidating the token once: through the failure key,
// which every replica reads with the token (so one that reads the token
// after this cannot miss it), and the "rejected" event, for the replicas
// that already hold it. It reports whether this rejection grew the
// streak.
func (e *entry) apiRejectedFresh(fresh Token) (grew bool) {
	streak, window, grew := e.mem.rejectedFresh(fresh)
	if !grew {
		return false
	}
	c := e.c
	ev := protocol.Event{Type: protocol.EventRejected, Key: e.k.Token, TokenFP: fresh.Fingerprint(), Streak: streak,
		RetryInMS: window.Milliseconds(), By: c.cfg.host, Origin: c.origin}
	ctx, cancel := context.WithTimeout(c.ctx, c.cfg.lockTTL)
	defer cancel()
	f := failure{Code: codeAPIRejected, Message: "the API rejected a token fetched after an invalidation before accepting any",
		Retryable: true, By: c.cfg.host, Fingerprint: e.cred.fingerprint(), Streak: streak}
	if err := c.st.remember(ctx, e.k, f, window); err != nil {
		c.log().Warn("tokencache: could not record that the API rejects new tokens", "key", e.k.Failed, "err", err)
	}
	if err := c.st.publish(ctx, e.k.Channel, ev); err != nil {
		c.log().Warn("tokencache: could not tell the fleet the API rejects new tokens", "key", e.k.Token, "err", err)
	}
	return true
}
