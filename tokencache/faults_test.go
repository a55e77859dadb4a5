package tokencache

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/internal/faultproxy"
	"github.com/tokencache/tokencache/internal/redistest"
)

// A half-open subscription (writes accepted, nothing delivered) is not
// noticed by go-redis's health check; the cache's probe must notice it and
// subscribe again, and events must flow afterwards.
func TestHalfOpenSubscriptionIsReplaced(t *testing.T) {
	srv := redistest.Start(t)
	proxy, err := faultproxy.New(srv.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	viaProxy := redis.NewClient(&redis.Options{Addr: proxy.Addr, ReadTimeout: 500 * time.Millisecond, WriteTimeout: 500 * time.Millisecond})
	defer viaProxy.Close()
	direct := srv.Client(t)

	f := newFakeFetcher(time.Hour)
	a := newCache(t, viaProxy, f, fastOpts(WithSubscriptionProbe(200*time.Millisecond, 300*time.Millisecond), WithL1MaxAge(0))...)
	b := newCache(t, direct, f, fastOpts()...)
	ctx := ctxT(t)
	if _, err := a.Token(ctx); err != nil {
		t.Fatal(err)
	}
	if !a.waitSubscribed(ctx, 5*time.Second) {
		t.Fatal("never subscribed")
	}
	if n := proxy.SwallowExisting(); n == 0 {
		t.Fatal("no connection to make half-open")
	}
	if _, err := b.Refresh(ctx, 0, true); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the cache to replace its silent subscription", func() bool { return a.Stats().Resubscribes > 0 })
	before := a.Stats().Events
	res, err := b.Refresh(ctx, 0, true)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "events to flow on the new subscription", func() bool { return a.Stats().Events > before })
	eventually(t, "the cache to serve the newest token", func() bool {
		tok, err := a.Token(ctx)
		return err == nil && tok.AccessToken == res.Token.AccessToken
	})
}

// Redis restarted on the same port: memory keeps serving, and the cache
// recovers (subscription included) without a restart of its own.
func TestRedisRestartRecovers(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	f := newFakeFetcher(time.Hour)
	a := newCache(t, rdb, f, fastOpts()...)
	b := newCache(t, srv.Client(t), f, fastOpts()...)
	ctx := ctxT(t)
	first, err := a.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	srv.Restart() // empty: the token is gone from Redis
	for range 100 {
		tok, err := a.Token(ctx)
		if err != nil || tok.AccessToken != first.AccessToken {
			t.Fatalf("while redis restarts: %v, %v; want the token from memory", tok, err)
		}
	}
	// The replica notices the empty Redis on its next re-check, and new
	// events reach it.
	res, err := b.Refresh(ctx, 0, true)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "replica a to follow the new token", func() bool {
		tok, err := a.Token(context.Background())
		return err == nil && tok.AccessToken == res.Token.AccessToken
	})
}
