package securitytest

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/tokencache"
	"github.com/tokencache/tokencache/tokencache/basiq"
	"github.com/tokencache/tokencache/tokencache/issuertest"
)

// libraryFlow does with two caches (two replicas) what a backend does:
// both ask for the token at once (one fetches, the other waits for its
// event), inspect, invalidate (the other replica drops its copy), a forced
// refresh, an offered token, a client token, and a permanent issuer
// failure that the fleet remembers. Every Redis client comes from dial.
// It returns the first thing that went wrong, including any Redis error
// the caches counted but did not return.
func libraryFlow(ctx context.Context, dial func() redis.UniversalClient, iss *issuertest.Server, ns string) error {
	var published atomic.Int64 // PUBLISH commands answered: probes among them
	newCache := func(key, ns string) (*tokencache.Cache, error) {
		f := basiq.New(key, basiq.WithBaseURL(iss.URL()))
		rdb := dial()
		rdb.AddHook(publishCounter{&published})
		return tokencache.New(rdb, f,
			tokencache.WithNamespace(ns),
			tokencache.WithClientTokens(func(user string) (tokencache.Fetcher, error) { return f.ForUser(user) }, 8),
			tokencache.WithTuning(tokencache.Tuning{ProbeInterval: 50 * time.Millisecond, ProbeTimeout: 5 * time.Second, RetryAttempts: 1, RetryBase: 10 * time.Millisecond, RetryMax: 10 * time.Millisecond}),
		)
	}
	c1, err := newCache(iss.APIKey(), ns)
	if err != nil {
		return err
	}
	defer c1.Close()
	c2, err := newCache(iss.APIKey(), ns)
	if err != nil {
		return err
	}
	defer c2.Close()
	before := iss.Stats().TokenCalls

	// Two replicas at once: one issuer call serves both.
	type res struct {
		tok tokencache.Token
		err error
	}
	results := make(chan res, 2)
	for _, c := range []*tokencache.Cache{c1, c2} {
		go func() {
			tok, err := c.Token(ctx)
			results <- res{tok, err}
		}()
	}
	r1, r2 := <-results, <-results
	if r1.err != nil || r2.err != nil {
		return fmt.Errorf("token: %v / %v", r1.err, r2.err)
	}
	if r1.tok.AccessToken != r2.tok.AccessToken {
		return errors.New("the two replicas got different tokens")
	}
	if n := iss.Stats().TokenCalls - before; n != 1 {
		return fmt.Errorf("%d issuer calls for two replicas, want 1", n)
	}
	tok := r1.tok

	st, err := c1.Inspect(ctx)
	if err != nil {
		return fmt.Errorf("inspect: %w", err)
	}
	if !st.Found || st.TokenFingerprint != tok.Fingerprint() {
		return fmt.Errorf("inspect: found=%v fingerprint %s, want %s", st.Found, st.TokenFingerprint, tok.Fingerprint())
	}

	// Invalidate through one replica; the other drops its copy.
	ok, err := c2.Invalidate(ctx, tok)
	if err != nil || !ok {
		return fmt.Errorf("invalidate: %v, %v", ok, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		t1, err := c1.Token(ctx)
		if err != nil {
			return fmt.Errorf("token after invalidate: %w", err)
		}
		if t1.AccessToken != tok.AccessToken {
			tok = t1
			break
		}
		if time.Now().After(deadline) {
			return errors.New("the other replica kept serving the invalidated token")
		}
		time.Sleep(10 * time.Millisecond) // the poll of a wait on a condition (no testing.T here)
	}

	if r, err := c2.Refresh(ctx, 0, true); err != nil || !r.Refreshed {
		return fmt.Errorf("forced refresh: %+v, %v", r, err)
	}
	// The budget script's errors fall back to a local limiter silently;
	// a counted budget is the only sign that it ran.
	if left := c2.Stats().BudgetLeft; left < 0 {
		return errors.New("the issuer budget was not counted in Redis (BudgetLeft -1)")
	}
	if r, err := c1.Refresh(ctx, time.Minute, false); err != nil || r.Refreshed {
		return fmt.Errorf("refresh of a fresh token: %+v, %v", r, err)
	}
	offered := tokencache.Token{AccessToken: "offered-" + tok.AccessToken, TokenType: "Bearer", Expiry: time.Now().Add(2 * time.Hour)}
	if _, err := c1.Offer(ctx, offered); err != nil {
		return fmt.Errorf("offer: %w", err)
	}
	u, err := c2.User("u-1")
	if err != nil {
		return fmt.Errorf("user: %w", err)
	}
	if ct, err := u.Token(ctx); err != nil || !iss.Valid(ct.AccessToken) {
		return fmt.Errorf("client token: %v", err)
	}

	// A wrong key: a permanent failure, published and remembered.
	bad, err := newCache("wrong-key-0123456789", ns+"-bad")
	if err != nil {
		return err
	}
	defer bad.Close()
	_, err = bad.Token(ctx)
	var fe *tokencache.FetchError
	if !errors.As(err, &fe) || fe.Retryable {
		return fmt.Errorf("a wrong key: got %v, want a permanent FetchError", err)
	}
	if st, err := bad.Inspect(ctx); err != nil || st.LastFailure == "" {
		return fmt.Errorf("the failure was not remembered in Redis: %+v, %v", st.LastFailure, err)
	}

	// Let the subscription probes run: a few more answered PUBLISH.
	for sent, deadline := published.Load(), time.Now().Add(10*time.Second); published.Load() < sent+4; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			return errors.New("no subscription probe was published")
		}
	}
	for i, c := range []*tokencache.Cache{c1, c2, bad} {
		if s := c.Stats(); s.RedisErrors != 0 || s.Resubscribes != 0 {
			return fmt.Errorf("cache %d: %d Redis errors, %d resubscriptions", i+1, s.RedisErrors, s.Resubscribes)
		}
	}
	return nil
}

func TestLibraryOverTLS(t *testing.T) {
	s := redistest.StartTLS(t, true)
	iss := issuertest.RunT(t, issuertest.WithLatency(100*time.Millisecond))
	dial := func() redis.UniversalClient {
		c := redis.NewClient(&redis.Options{Addr: s.Addr, TLSConfig: s.TLS.ClientConfig()})
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	if err := libraryFlow(t.Context(), dial, iss, "tls"); err != nil {
		t.Fatal(err)
	}
	// The token really is in the TLS-only server.
	keys := Dump(t, s.Client(t), "tokencache:*")
	if _, ok := keys["tokencache:{tls}:server"]; !ok {
		t.Errorf("no token key in the TLS server; keys: %d", len(keys))
	}
}

// publishCounter counts the PUBLISH commands Redis answered.
type publishCounter struct{ n *atomic.Int64 }

func (publishCounter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h publishCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if cmd.Name() == "publish" && err == nil {
			h.n.Add(1)
		}
		return err
	}
}
func (publishCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
