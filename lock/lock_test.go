package lock

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/internal/testutil"
)

func clients(t *testing.T) map[string]redis.UniversalClient {
	mr := miniredis.RunT(t)
	m := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = m.Close() })
	return map[string]redis.UniversalClient{
		"miniredis":    m,
		"redis-server": redistest.Start(t).Client(t),
	}
}

func forEach(t *testing.T, f func(t *testing.T, rdb redis.UniversalClient)) {
	for name, rdb := range clients(t) {
		t.Run(name, func(t *testing.T) { f(t, rdb) })
	}
}

// newLocker is New for a configuration the test knows to be valid.
func newLocker(t *testing.T, rdb redis.UniversalClient, opts ...Option) *Locker {
	t.Helper()
	l, err := New(rdb, opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return l
}

func TestMutualExclusionAndFence(t *testing.T) {
	forEach(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := testutil.Context(t)
		l := newLocker(t, rdb, WithTTL(2*time.Second))
		a, err := l.TryAcquire(ctx, "t:lock")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := l.TryAcquire(ctx, "t:lock"); !errors.Is(err, ErrNotAcquired) {
			t.Fatalf("second TryAcquire: got %v, want ErrNotAcquired", err)
		}
		if g := a.Generation(); g != 0 {
			t.Errorf("Generation before Fence = %d, want 0", g)
		}
		g1, err := a.Fence(ctx, "t:fence")
		if err != nil {
			t.Fatal(err)
		}
		if again, _ := a.Fence(ctx, "t:fence"); again != g1 {
			t.Errorf("Fence twice = %d then %d, want the same", g1, again)
		}
		if err := a.Release(ctx); err != nil {
			t.Fatalf("Release: %v", err)
		}
		if err := a.Release(ctx); err != nil {
			t.Fatalf("second Release: %v", err)
		}
		b, err := l.TryAcquire(ctx, "t:lock")
		if err != nil {
			t.Fatalf("TryAcquire after release: %v", err)
		}
		defer b.Release(ctx)
		g2, err := b.Fence(ctx, "t:fence")
		if err != nil {
			t.Fatal(err)
		}
		if g2 <= g1 {
			t.Errorf("fence went from %d to %d, want it to grow", g1, g2)
		}
	})
}

func TestWatchdogExtendsPastTTL(t *testing.T) {
	forEach(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := testutil.Context(t)
		l := newLocker(t, rdb, WithTTL(150*time.Millisecond))
		a, err := l.TryAcquire(ctx, "w:lock")
		if err != nil {
			t.Fatal(err)
		}
		// Many beats, several TTLs: the lock must still be ours. Each
		// successful beat moves the lease's Until later.
		until := a.Until()
		for i := range 8 {
			testutil.Eventually(t, fmt.Sprintf("watchdog beat %d", i), func() bool {
				return a.Until().After(until) || a.Err() != nil
			})
			if err := a.Err(); err != nil {
				t.Fatalf("beat %d: %v", i, err)
			}
			until = a.Until()
			if _, err := l.TryAcquire(ctx, "w:lock"); !errors.Is(err, ErrNotAcquired) {
				t.Fatalf("after beat %d another owner got in: %v", i, err)
			}
		}
		if err := a.Err(); err != nil {
			t.Fatalf("Err = %v while held", err)
		}
		if err := a.Release(ctx); err != nil {
			t.Fatalf("Release: %v", err)
		}
	})
}

func TestLeaseLostAndExpired(t *testing.T) {
	forEach(t, func(t *testing.T, rdb redis.UniversalClient) {
		for _, tc := range []struct {
			name  string
			steal func(ctx context.Context) error
			want  error
		}{
			{"expired", func(ctx context.Context) error { return rdb.Del(ctx, "l:lock").Err() }, ErrLeaseExpired},
			{"taken", func(ctx context.Context) error { return rdb.Set(ctx, "l:lock", "someone-else", time.Minute).Err() }, ErrLeaseLost},
		} {
			t.Run(tc.name, func(t *testing.T) {
				ctx := testutil.Context(t)
				rdb.Del(ctx, "l:lock")
				l := newLocker(t, rdb, WithTTL(150*time.Millisecond))
				a, err := l.TryAcquire(ctx, "l:lock")
				if err != nil {
					t.Fatal(err)
				}
				if err := tc.steal(ctx); err != nil {
					t.Fatal(err)
				}
				select {
				case <-a.Lost():
				case <-ctx.Done():
					t.Fatal("the watchdog never noticed the lost lease")
				}
				if err := a.Err(); !errors.Is(err, tc.want) {
					t.Errorf("Err = %v, want %v", err, tc.want)
				}
				if _, err := a.Fence(ctx, "l:fence"); !errors.Is(err, tc.want) {
					t.Errorf("Fence after loss = %v, want %v", err, tc.want)
				}
				if err := a.Release(ctx); !errors.Is(err, ErrLeaseExpired) && !errors.Is(err, ErrLeaseLost) {
					t.Errorf("Release after loss = %v, want a lease error", err)
				}
				if tc.want == ErrLeaseLost {
					if v := rdb.Get(ctx, "l:lock").Val(); v != "someone-else" {
						t.Errorf("Release deleted another owner's lock")
					}
				}
			})
		}
	})
}

func TestAcquireWaitsAndHonoursContext(t *testing.T) {
	forEach(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := testutil.Context(t)
		l := newLocker(t, rdb, WithTTL(2*time.Second), WithRetryDelay(5*time.Millisecond))
		a, err := l.TryAcquire(ctx, "a:lock")
		if err != nil {
			t.Fatal(err)
		}
		short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		defer cancel()
		if _, err := l.Acquire(short, "a:lock"); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Acquire on a held lock with a short context: got %v, want context.DeadlineExceeded", err)
		}
		var sets atomic.Int64
		rdb.AddHook(setCounter{key: "a:lock", n: &sets})
		got := make(chan error, 1)
		go func() {
			b, err := l.Acquire(ctx, "a:lock")
			if err == nil {
				_ = b.Release(ctx)
			}
			got <- err
		}()
		// It is waiting on the held lock once one of its SET NX attempts
		// has been answered (refused: a holds the lock).
		testutil.Eventually(t, "an attempt on the held lock", func() bool { return sets.Load() > 0 })
		if err := a.Release(ctx); err != nil {
			t.Fatal(err)
		}
		if err := <-got; err != nil {
			t.Fatalf("Acquire after release: %v", err)
		}
	})
}

func TestRedisDownIsAnError(t *testing.T) {
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), MaxRetries: -1})
	defer rdb.Close()
	mr.Close()
	_, err := newLocker(t, rdb).TryAcquire(testutil.Context(t), "d:lock")
	if err == nil || errors.Is(err, ErrNotAcquired) {
		t.Fatalf("TryAcquire with redis down: got %v, want a redis error", err)
	}
}

// Redlock over three independent redis-servers keeps mutual exclusion, and
// keeps working with one of them down.
func TestRedlockWithOneNodeDown(t *testing.T) {
	servers := []*redistest.Server{redistest.Start(t), redistest.Start(t), redistest.Start(t)}
	var cs []redis.UniversalClient
	for _, s := range servers {
		cs = append(cs, redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1, DialTimeout: 200 * time.Millisecond}))
	}
	t.Cleanup(func() {
		for _, c := range cs {
			_ = c.Close()
		}
	})
	ctx := testutil.Context(t)
	l := newLocker(t, cs[0], WithTTL(2*time.Second), WithRedlock(cs[1], cs[2]))
	a, err := l.TryAcquire(ctx, "r:lock")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.TryAcquire(ctx, "r:lock"); !errors.Is(err, ErrNotAcquired) {
		t.Fatalf("second TryAcquire: got %v, want ErrNotAcquired", err)
	}
	if err := a.Release(ctx); err != nil {
		t.Fatal(err)
	}
	servers[2].Stop() // a minority down
	b, err := l.TryAcquire(ctx, "r:lock")
	if err != nil {
		t.Fatalf("with one of three down: %v", err)
	}
	if _, err := l.TryAcquire(ctx, "r:lock"); !errors.Is(err, ErrNotAcquired) {
		t.Fatalf("second TryAcquire with one node down: got %v, want ErrNotAcquired", err)
	}
	if err := b.Release(ctx); err != nil {
		t.Fatalf("Release with one node down: %v", err)
	}
	servers[1].Stop() // a majority down
	if _, err := l.TryAcquire(ctx, "r:lock"); err == nil || errors.Is(err, ErrNotAcquired) {
		t.Fatalf("with two of three down: got %v, want a redis error", err)
	}
}

// TestNewRefusesInvalidOptions: each option given a value it cannot use,
// and a nil client, make New fail with ErrConfig, naming the option; the
// smallest valid values are accepted.
func TestNewRefusesInvalidOptions(t *testing.T) {
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	tests := []struct {
		name    string
		rdb     redis.UniversalClient
		opts    []Option
		wantMsg string // "" means accepted
	}{
		{"nil client", nil, nil, "nil redis client"},
		{"zero TTL", rdb, []Option{WithTTL(0)}, "WithTTL"},
		{"negative TTL", rdb, []Option{WithTTL(-time.Second)}, "WithTTL"},
		{"TTL below 1ms", rdb, []Option{WithTTL(time.Millisecond - 1)}, "WithTTL"},
		{"TTL of 1ms", rdb, []Option{WithTTL(time.Millisecond)}, ""},
		{"zero retry delay", rdb, []Option{WithRetryDelay(0)}, "WithRetryDelay"},
		{"negative retry delay", rdb, []Option{WithRetryDelay(-time.Millisecond)}, "WithRetryDelay"},
		{"retry delay of 1ns", rdb, []Option{WithRetryDelay(1)}, ""},
		{"nil Redlock client", rdb, []Option{WithRedlock(rdb, nil)}, "WithRedlock: client 1 is nil"},
		{"no Redlock client", rdb, []Option{WithRedlock()}, ""},
		{"first bad option wins", rdb, []Option{WithTTL(time.Second), WithRetryDelay(0), WithTTL(0)}, "WithRetryDelay"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := New(tt.rdb, tt.opts...)
			if tt.wantMsg == "" {
				if err != nil || l == nil {
					t.Fatalf("New: got %v, %v; want a Locker", l, err)
				}
				return
			}
			if l != nil || !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("New: got %v, %v; want no Locker and ErrConfig mentioning %q", l, err, tt.wantMsg)
			}
		})
	}
}

// TestOptionsTakeEffect: valid options set what they say, and defaults
// hold without them.
func TestOptionsTakeEffect(t *testing.T) {
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	l := newLocker(t, rdb)
	if l.TTL() != DefaultTTL || l.retry != defaultRetryDelay || l.nodes != 1 || l.opTime != DefaultTTL/3 {
		t.Errorf("defaults: got ttl %v retry %v nodes %d opTime %v; want %v, %v, 1, %v",
			l.TTL(), l.retry, l.nodes, l.opTime, DefaultTTL, defaultRetryDelay, DefaultTTL/3)
	}
	l = newLocker(t, rdb, WithTTL(3*time.Second), WithRetryDelay(time.Millisecond), WithRedlock(rdb, rdb))
	if l.TTL() != 3*time.Second || l.retry != time.Millisecond || l.nodes != 3 || l.opTime != time.Second {
		t.Errorf("options: got ttl %v retry %v nodes %d opTime %v; want 3s, 1ms, 3, 1s", l.TTL(), l.retry, l.nodes, l.opTime)
	}
}

// setCounter counts the SET commands on one key that Redis has answered:
// the lock attempts, seen from the wire.
type setCounter struct {
	key string
	n   *atomic.Int64
}

func (setCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h setCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if a := cmd.Args(); len(a) > 1 && strings.EqualFold(cmd.Name(), "set") && a[1] == h.key {
			h.n.Add(1)
		}
		return err
	}
}

func (setCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
