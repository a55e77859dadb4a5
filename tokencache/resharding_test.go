package tokencache

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/tokencache/internal/protocol"
)

// Resharding a Redis Cluster (issue 12, item 6): while the namespace's
// slot migrates, Redis answers a script naming a key the source lacks with
// ASK, and the target answers TRYAGAIN. That is a moving slot, not Redis
// down: no replica fails open, and the fleet keeps one issuer call per
// token.

// clusterReplica is a replica with its own cluster client.
func clusterReplica(t *testing.T, cl *redistest.Cluster, f Fetcher, opts ...Option) *Cache {
	t.Helper()
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs()})
	t.Cleanup(func() { _ = rdb.Close() })
	return newCache(t, rdb, f, fastOpts(opts...)...)
}

func sumStats(cs []*Cache, f func(Stats) uint64) (n uint64) {
	for _, c := range cs {
		n += f(c.Stats())
	}
	return n
}

// isMoving reports a redirection or TRYAGAIN, the answers of a migrating
// slot (checked here with go-redis's own helpers).
func isMoving(err error) bool {
	_, ask := redis.IsAskError(err)
	_, moved := redis.IsMovedError(err)
	return ask || moved || redis.IsTryAgainError(err)
}

// nsSlot returns the namespace's slot, its master and another master.
func nsSlot(t *testing.T, cl *redistest.Cluster, ns string) (k keys, slot, from, to int) {
	t.Helper()
	k = protocol.ServerKeys(defaultKeyPrefix, ns)
	slot = int(cl.Client(t).ClusterKeySlot(context.Background(), k.Token).Val())
	from = cl.Owner(t, slot)
	return k, slot, from, (from + 1) % len(cl.Nodes)
}

// With the slot MIGRATING on its owner and IMPORTING on another master,
// keys not moved: a new replica is served the fleet's token, with no
// issuer call and no fail-open, in each half of a move (keys still on the
// source, keys already on the target) and after one is cancelled; a cold
// fleet makes no issuer call while the slot migrates and exactly one once
// the move ends.
func TestClusterMigratingSlot(t *testing.T) {
	cl := redistest.StartCluster(t, 3)
	ctx := ctxT(t)
	cc := cl.Client(t)

	t.Run("warm fleet, new replicas", func(t *testing.T) {
		f := newFakeFetcher(time.Hour)
		k, slot, from, to := nsSlot(t, cl, "warm")
		first := clusterReplica(t, cl, f, WithNamespace("warm"))
		fleet := []*Cache{first}
		want, err := first.Token(ctx)
		if err != nil {
			t.Fatal(err)
		}
		joins := func(when string) {
			t.Helper()
			c := clusterReplica(t, cl, f, WithNamespace("warm"))
			fleet = append(fleet, c)
			got, err := c.Token(ctx)
			if err != nil || got.AccessToken != want.AccessToken {
				t.Errorf("%s: a new replica got %q, %v; the fleet's token is %q", when, got.AccessToken, err, want.AccessToken)
			}
			if n := f.calls.Load(); n != 1 {
				t.Errorf("%s: %d issuer calls, want 1", when, n)
			}
			if n := sumStats(fleet, func(s Stats) uint64 { return s.FailOpen }); n != 0 {
				t.Errorf("%s: %d fail-open fetches, want 0", when, n)
			}
		}
		cl.StartMove(t, slot, from, to)
		// The state the issue measured: the read script is redirected and
		// refused, though the token is on the source.
		if err := protocol.Script("read").Run(ctx, cc, []string{k.Token, k.Failed}).Err(); !isMoving(err) {
			t.Fatalf("read script with the slot migrating: %v, want ASK or TRYAGAIN", err)
		}
		joins("slot migrating, keys on the source")
		cl.CancelMove(t, slot, from, to)
		joins("move cancelled")
		cl.StartMove(t, slot, from, to)
		cl.MigrateKeys(t, slot, from, to)
		if err := protocol.Script("read").Run(ctx, cc, []string{k.Token, k.Failed}).Err(); !isMoving(err) {
			t.Fatalf("read script with the keys migrated: %v, want ASK or TRYAGAIN", err)
		}
		joins("slot migrating, keys on the target")
		cl.AssignSlot(t, slot, from, to)
		joins("move done")
	})

	t.Run("cold fleet", func(t *testing.T) {
		f := newFakeFetcher(time.Hour)
		_, slot, from, to := nsSlot(t, cl, "cold")
		var fleet []*Cache
		for range 3 {
			fleet = append(fleet, clusterReplica(t, cl, f, WithNamespace("cold")))
		}
		cl.StartMove(t, slot, from, to)
		type result struct {
			tok Token
			err error
		}
		results := make(chan result, len(fleet))
		var returned atomic.Int32
		for _, c := range fleet {
			go func() {
				tok, err := c.Token(ctx)
				returned.Add(1)
				results <- result{tok, err}
			}()
		}
		// Every replica has read Redis twice (so met the migrating slot)
		// and the one that took the lock has been refused: or they gave
		// up waiting and returned.
		eventually(t, "every replica to meet the migrating slot", func() bool {
			if int(returned.Load()) == len(fleet) {
				return true
			}
			for _, c := range fleet {
				if c.Stats().RedisReads < 2 {
					return false
				}
			}
			return sumStats(fleet, func(s Stats) uint64 { return s.TransientWaits }) > 0
		})
		if n, r := f.calls.Load(), returned.Load(); n != 0 || r != 0 {
			t.Errorf("slot migrating: %d issuer calls and %d replicas served (fail-open: %d), want none before the move ends",
				n, r, sumStats(fleet, func(s Stats) uint64 { return s.FailOpen }))
		}
		cl.MigrateKeys(t, slot, from, to)
		cl.AssignSlot(t, slot, from, to)
		tokens := map[string]int{}
		for range fleet {
			r := <-results
			if r.err != nil {
				t.Errorf("Token: %v", r.err)
				continue
			}
			tokens[r.tok.AccessToken]++
		}
		if len(tokens) != 1 {
			t.Errorf("%d distinct tokens served, want 1: %v", len(tokens), tokens)
		}
		if n := f.calls.Load(); n != 1 {
			t.Errorf("%d issuer calls for a cold fleet, want 1", n)
		}
		if n := sumStats(fleet, func(s Stats) uint64 { return s.FailOpen }); n != 0 {
			t.Errorf("%d fail-open fetches, want 0", n)
		}
	})
}

// gatedFetcher mints "tok-<n>" for its n-th call; while a gate is set, a
// call waits for it to open.
type gatedFetcher struct {
	life   time.Duration
	calls  atomic.Int64 // calls made (reaching the gate)
	minted atomic.Int64 // tokens returned
	mu     sync.Mutex   // guards gate
	gate   chan struct{}
}

func (f *gatedFetcher) Identity() string { return "gated" }

func (f *gatedFetcher) Fetch(ctx context.Context) (Token, error) {
	f.mu.Lock()
	gate := f.gate
	n := f.calls.Add(1)
	f.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return Token{}, ctx.Err()
		}
	}
	f.minted.Add(1)
	return Token{AccessToken: fmt.Sprintf("tok-%d", n), TokenType: "Bearer", Expiry: time.Now().Add(f.life)}, nil
}

// hold makes the calls from now on wait for their gate to open.
func (f *gatedFetcher) hold() chan struct{} {
	ch := make(chan struct{})
	f.mu.Lock()
	f.gate = ch
	f.mu.Unlock()
	return ch
}

// pass opens gate for the calls waiting at it and holds the next ones
// at a new gate, which it returns.
func (f *gatedFetcher) pass(gate chan struct{}) chan struct{} {
	next := f.hold()
	close(gate)
	return next
}

// looper is a replica calling Token in a loop, recording what it is
// served.
type looper struct {
	c       *Cache
	served  atomic.Int64
	last    atomic.Pointer[string]
	errs    atomic.Int64
	mu      sync.Mutex // guards lastErr
	lastErr error
}

// Four replicas call Token in a loop, every call reading Redis (no
// in-memory copy), while the namespace's slot is moved from master to
// master, each renewal of the token (10 s, refreshed ahead after 1 s)
// falling inside a move: the issuer is called once per renewal, every
// token it minted is the fleet's, no replica fails open, and every
// replica is served each new token.
func TestClusterReshardingWhileCalling(t *testing.T) {
	cl := redistest.StartCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	f := &gatedFetcher{life: 10 * time.Second}
	const ns = "moving"
	_, slot, owner, _ := nsSlot(t, cl, ns)
	var loops []*looper
	for range 4 {
		// Refresh ahead after a tenth of the life, 1-1.5 s in, 6.5 s
		// before the key expires: the move under the gate never makes a
		// replica wait for a token.
		loops = append(loops, &looper{c: clusterReplica(t, cl, f, WithNamespace(ns), withL1(false),
			WithRefreshAhead(0.1), WithTuning(Tuning{RefreshJitter: 0.05}), WithIssuerBudget(0, 0))})
	}
	var fleet []*Cache
	for _, l := range loops {
		fleet = append(fleet, l.c)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, l := range loops {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				tok, err := l.c.Token(ctx)
				if ctx.Err() != nil {
					return
				}
				if err != nil {
					l.errs.Add(1)
					l.mu.Lock()
					l.lastErr = err
					l.mu.Unlock()
					continue
				}
				l.last.Store(&tok.AccessToken)
				l.served.Add(1)
			}
		}()
	}
	stopAll := sync.OnceFunc(func() { close(stop); cancel(); wg.Wait() })
	defer stopAll()
	t.Cleanup(func() {
		if t.Failed() {
			for i, l := range loops {
				l.mu.Lock()
				t.Logf("replica %d: served %d, %d errors (last: %v), %+v", i, l.served.Load(), l.errs.Load(), l.lastErr, l.c.Stats())
				l.mu.Unlock()
			}
		}
	})
	allServed := func(what, tok string) {
		t.Helper()
		eventually(t, what, func() bool {
			for _, l := range loops {
				if p := l.last.Load(); p == nil || *p != tok {
					return false
				}
			}
			return true
		})
	}
	// servedMore waits until every replica has been served n more tokens:
	// with no in-memory copy, each of them a read of Redis.
	servedMore := func(what string, n int64) {
		t.Helper()
		base := make([]int64, len(loops))
		for i, l := range loops {
			base[i] = l.served.Load()
		}
		eventually(t, what, func() bool {
			if n := sumStats(fleet, func(s Stats) uint64 { return s.FailOpen }); n != 0 {
				t.Fatalf("%s: %d fail-open fetches, %d issuer calls", what, n, f.calls.Load())
			}
			for i, l := range loops {
				if l.served.Load() < base[i]+n {
					return false
				}
			}
			return true
		})
	}
	allServed("every replica to be served the first token", "tok-1")
	// From here on every issuer call waits at a gate: no renewal can
	// happen outside a move the test has set up around it.
	gate := f.hold()

	// A plain move while the replicas call.
	to := (owner + 1) % len(cl.Nodes)
	cl.MoveSlot(t, slot, owner, to)
	owner = to
	servedMore("the replicas to call after the move", 5)
	if n := f.minted.Load(); n != 1 {
		t.Fatalf("%d tokens minted after a move, want 1", n)
	}

	const renewals = 3
	for r := 2; r <= renewals+1; r++ {
		want := fmt.Sprintf("tok-%d", r)
		eventually(t, "the renewal to "+want+" to reach the issuer", func() bool { return f.calls.Load() >= int64(r) })
		// The slot starts moving while the lock holder is at the issuer;
		// every replica reads Redis with the slot migrating.
		to := (owner + 1) % len(cl.Nodes)
		cl.StartMove(t, slot, owner, to)
		servedMore("the replicas to call with the slot migrating", 5)
		waitsBefore := sumStats(fleet, func(s Stats) uint64 { return s.TransientWaits })
		gate = f.pass(gate)
		// The holder's write is refused while the slot migrates.
		eventually(t, "the write of "+want+" to meet the migrating slot", func() bool {
			return sumStats(fleet, func(s Stats) uint64 { return s.TransientWaits }) > waitsBefore
		})
		servedMore("the replicas to call with the slot migrating", 5)
		cl.MigrateKeys(t, slot, owner, to)
		servedMore("the replicas to call with the keys migrated", 5)
		cl.AssignSlot(t, slot, owner, to)
		owner = to
		allServed("every replica to be served "+want, want)
		if n := f.minted.Load(); n != int64(r) {
			t.Fatalf("%d tokens minted for %d renewals; fail-open %d", n, r-1, sumStats(fleet, func(s Stats) uint64 { return s.FailOpen }))
		}
	}
	stopAll() // a next renewal held at the gate is cancelled

	minted := uint64(f.minted.Load())
	if n := sumStats(fleet, func(s Stats) uint64 { return s.FailOpen }); n != 0 {
		t.Errorf("%d fail-open fetches, want 0", n)
	}
	if calls := f.calls.Load(); minted != renewals+1 || calls > renewals+2 {
		t.Errorf("%d tokens minted, %d issuer calls, for %d tokens (a next renewal may be held at the gate)", minted, calls, renewals+1)
	}
	if n := sumStats(fleet, func(s Stats) uint64 { return s.Refreshes }); n != minted {
		t.Errorf("%d tokens stored for the fleet, %d minted: every minted token must be the fleet's", n, minted)
	}
	for i, l := range loops {
		l.mu.Lock()
		err := l.lastErr
		l.mu.Unlock()
		if n := l.errs.Load(); n != 0 {
			t.Errorf("replica %d: %d Token errors (last: %v)", i, n, err)
		}
		t.Logf("replica %d: %d calls served, %+v", i, l.served.Load(), l.c.Stats())
	}
}
