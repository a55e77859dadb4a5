package tokencache

import (
	"context"
	"os/exec"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/oauth2"

	"github.com/tokencache/tokencache/internal/redistest"
)

// BenchmarkTokenL1 measures the hot path: a valid token in memory.
// Goal: under 50 ns/op and 0 allocs/op, serial and parallel, and at least
// twice as fast as BenchmarkReuseTokenSource under RunParallel.
func BenchmarkTokenL1(b *testing.B) {
	rdb, _ := miniBackend(b)
	c := benchCache(b, rdb)
	ctx := context.Background()
	if _, err := c.Token(ctx); err != nil {
		b.Fatal(err)
	}
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := c.Token(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := c.Token(ctx); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// BenchmarkTokenL1Observed is BenchmarkTokenL1 with an observer: the
// memory path calls none, so it costs the same, with 0 allocs/op.
func BenchmarkTokenL1Observed(b *testing.B) {
	rdb, _ := miniBackend(b)
	var steps countingObserver
	c := benchCache(b, rdb, WithObserver(&steps))
	ctx := context.Background()
	if _, err := c.Token(ctx); err != nil {
		b.Fatal(err)
	}
	before := steps.n.Load()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Token(ctx); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if n := steps.n.Load() - before; n != 0 {
		b.Fatalf("%d observer calls on the memory path, want 0", n)
	}
}

// BenchmarkReuseTokenSource is the reference to beat: golang.org/x/oauth2's
// in-process cache, as the Basiq samples do it, with a valid token.
func BenchmarkReuseTokenSource(b *testing.B) {
	src := oauth2.ReuseTokenSource(nil, staticSource{&oauth2.Token{AccessToken: "x", TokenType: "Bearer", Expiry: time.Now().Add(time.Hour)}})
	if _, err := src.Token(); err != nil {
		b.Fatal(err)
	}
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := src.Token(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := src.Token(); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

type staticSource struct{ t *oauth2.Token }

func (s staticSource) Token() (*oauth2.Token, error) { return s.t, nil }

// BenchmarkTokenRedis measures Token with the in-memory copy off: one
// Redis round trip (one EVALSHA) per call, on a real redis-server when one
// is installed.
func BenchmarkTokenRedis(b *testing.B) {
	var rdb redis.UniversalClient
	if _, err := exec.LookPath("redis-server"); err == nil {
		rdb = redistest.Start(b).Client(b)
	} else {
		b.Log("redis-server not installed: measuring against miniredis")
		rdb, _ = miniBackend(b)
	}
	c := benchCache(b, rdb, withL1(false))
	ctx := context.Background()
	if _, err := c.Token(ctx); err != nil {
		b.Fatal(err)
	}
	before := c.Stats().RedisReads
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := c.Token(ctx); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(c.Stats().RedisReads-before)/float64(b.N), "reads/op")
}

func benchCache(b *testing.B, rdb redis.UniversalClient, opts ...Option) *Cache {
	c, err := New(rdb, newFakeFetcher(time.Hour), opts...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = c.Close() })
	return c
}

// BenchmarkRedisGET is the floor BenchmarkTokenRedis is measured against:
// one plain GET round trip with go-redis on the same server.
func BenchmarkRedisGET(b *testing.B) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		b.Skip("redis-server not installed")
	}
	rdb := redistest.Start(b).Client(b)
	ctx := context.Background()
	rdb.Set(ctx, "k", "v", 0)
	b.ReportAllocs()
	for b.Loop() {
		if err := rdb.Get(ctx, "k").Err(); err != nil {
			b.Fatal(err)
		}
	}
}
