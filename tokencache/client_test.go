package tokencache

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// userFetchers mints per-user fake fetchers and remembers them.
type userFetchers struct {
	mu sync.Mutex // guards m
	m  map[string]*fakeFetcher
}

func (u *userFetchers) new(id string) (Fetcher, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.m == nil {
		u.m = map[string]*fakeFetcher{}
	}
	f, ok := u.m[id]
	if !ok {
		f = newFakeFetcher(time.Hour)
		f.id = "client:" + id
		u.m[id] = f
	}
	return f, nil
}

func (u *userFetchers) calls() int64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	var n int64
	for _, f := range u.m {
		n += f.calls.Load()
	}
	return n
}

func TestClientTokensPerUser(t *testing.T) {
	forEachBackend(t, func(t *testing.T, rdb redis.UniversalClient, _ *miniredis.Miniredis) {
		ctx := ctxT(t)
		uf := &userFetchers{}
		a := newCache(t, rdb, newFakeFetcher(time.Hour), fastOpts(WithNamespace("ns"), WithClientTokens(uf.new, 0))...)
		b := newCache(t, rdb, newFakeFetcher(time.Hour), fastOpts(WithNamespace("ns"), WithClientTokens(uf.new, 0))...)
		t1, err := clientToken(a, ctx, "user-1")
		if err != nil {
			t.Fatal(err)
		}
		t2, err := clientToken(a, ctx, "user-2")
		if err != nil {
			t.Fatal(err)
		}
		if t1.AccessToken == t2.AccessToken {
			t.Fatal("two users share a client token")
		}
		// Another replica gets user-1's token from Redis.
		b1, err := clientToken(b, ctx, "user-1")
		if err != nil || b1.AccessToken != t1.AccessToken {
			t.Fatalf("replica b: %v, %v; want user-1's token", b1, err)
		}
		if got := uf.calls(); got != 2 {
			t.Errorf("issuer calls = %d, want 2 (one per user)", got)
		}
		for _, key := range []string{"tokencache:{ns/user-1}:client", "tokencache:{ns/user-2}:client"} {
			if rdb.Exists(ctx, key).Val() != 1 {
				t.Errorf("key %s missing", key)
			}
		}
		// Invalidating user-1 reaches replica b and leaves user-2 alone.
		u1, _ := a.User("user-1")
		if ok, err := u1.Invalidate(ctx, t1); err != nil || !ok {
			t.Fatalf("Invalidate user-1: %v, %v", ok, err)
		}
		eventually(t, "replica b to get a new token for user-1", func() bool {
			tok, err := clientToken(b, ctx, "user-1")
			return err == nil && tok.AccessToken != t1.AccessToken
		})
		if tok, _ := clientToken(b, ctx, "user-2"); tok.AccessToken != t2.AccessToken {
			t.Errorf("user-2's token changed")
		}
		st, err := u1.Inspect(ctx)
		if err != nil || st.Key != "tokencache:{ns/user-1}:client" || !st.Found {
			t.Errorf("Inspect user-1: %+v, %v", st, err)
		}
	})
}

func TestClientTokensLRUIsBounded(t *testing.T) {
	rdb, _ := miniBackend(t)
	ctx := ctxT(t)
	uf := &userFetchers{}
	c := newCache(t, rdb, newFakeFetcher(time.Hour), fastOpts(WithClientTokens(uf.new, 3))...)
	for _, id := range []string{"u1", "u2", "u3", "u4", "u5", "u1"} {
		if _, err := clientToken(c, ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if n := c.users.Len(); n > 3 {
		t.Errorf("users in memory = %d, want at most 3", n)
	}
	// u1 was evicted from memory, not from Redis: no second issuer call.
	if got := uf.calls(); got != 5 {
		t.Errorf("issuer calls = %d, want 5 (one per user)", got)
	}
}

func TestUserIDValidation(t *testing.T) {
	rdb, _ := miniBackend(t)
	uf := &userFetchers{}
	c := newCache(t, rdb, newFakeFetcher(time.Hour), fastOpts(WithClientTokens(uf.new, 0))...)
	for id, why := range map[string]string{
		"":                       "empty",
		strings.Repeat("x", 129): "longer than 128 bytes",
		"a{b":                    "holds a brace at byte 1",
		"ab}":                    "holds a brace at byte 2",
		"a:b":                    "holds a colon at byte 1",
		"a/b":                    "holds a slash at byte 1",
		`a\b`:                    "holds a slash at byte 1",
		`a"b`:                    "holds a quote at byte 1",
		"a'b":                    "holds a quote at byte 1",
		"a b":                    "holds whitespace at byte 1",
		"a\tb":                   "holds whitespace at byte 1",
		"a\nb":                   "holds whitespace at byte 1",
		"a\x00b":                 "holds a control character at byte 1",
		"a\x7fb":                 "holds a control character at byte 1",
		"é":                      "holds a non-ASCII byte at byte 0",
		"a\u200bb":               "holds a non-ASCII byte at byte 1",
	} {
		_, err := c.User(id)
		if !errors.Is(err, ErrInvalidUserID) || !strings.HasSuffix(err.Error(), ": "+why) {
			t.Errorf("user id %q: got %v, want ErrInvalidUserID that says %q", id, err, why)
		}
		if err := ValidateUserID(id); err == nil || (id != "" && strings.Contains(err.Error(), id)) {
			t.Errorf("ValidateUserID(%q) = %v: want an error that does not repeat the id", id, err)
		}
	}
	for _, id := range []string{"ea3a81a9-0d2c-4a63-b7b2-3c9b3e2f5b1a", "user_1.test", "a@b.example", strings.Repeat("x", 128)} {
		if err := ValidateUserID(id); err != nil {
			t.Errorf("valid user id %q rejected: %v", id, err)
		}
	}
	if uf.calls() != 0 {
		t.Errorf("the issuer was called for an invalid user id")
	}
	plain := newCache(t, rdb, newFakeFetcher(time.Hour))
	if _, err := clientToken(plain, context.Background(), "u"); err == nil {
		t.Error("ClientToken without WithClientTokens succeeded")
	}
}
