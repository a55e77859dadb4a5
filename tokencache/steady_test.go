package tokencache

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokencache/tokencache/internal/redistest"
)

// In steady state, with the defaults, a fleet renews its token with one
// issuer call, and a renewal costs each replica at most a few Redis
// commands: the winner announces "refreshing", the others hold back and
// read once after "refreshed". Counted from each replica's own client,
// per replica and renewal (the target: at most 3 per lifetime).
func TestSteadyStateCommandsPerRenewal(t *testing.T) {
	if testing.Short() {
		t.Skip("runs several token lifetimes")
	}
	const (
		replicas = 40
		renewals = 4
		life     = 3 * time.Second
	)
	srv := redistest.Start(t)
	f := newFakeFetcher(life)
	f.setDelay(200 * time.Millisecond) // an issuer that takes a while
	var cmds atomic.Int64
	var caches []*Cache
	for range replicas {
		rdb := srv.Client(t)
		rdb.AddHook(commandCounter{n: &cmds})
		caches = append(caches, newCache(t, rdb, f, WithLockTTL(2*time.Second)))
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var errs atomic.Int64
	for _, c := range caches {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				if _, err := c.Token(ctx); err != nil && ctx.Err() == nil {
					errs.Add(1)
				}
				time.Sleep(10 * time.Millisecond)
			}
		}()
	}
	defer func() { cancel(); wg.Wait() }()

	// Warm up through the cold start and one renewal, then count.
	waitCalls := func(n int64) {
		deadline := time.Now().Add(time.Duration(n+2) * life)
		for f.calls.Load() < n && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
	}
	// A window from just after one renewal to just after the last: the
	// renewal's reads follow its issuer call within the issuer's latency
	// plus a round trip, far less than life/5.
	waitCalls(2)
	time.Sleep(life / 5)
	startCalls, startCmds := f.calls.Load(), cmds.Load()
	waitCalls(startCalls + renewals)
	time.Sleep(life / 5)
	calls, sent := f.calls.Load()-startCalls, cmds.Load()-startCmds
	cancel()
	wg.Wait()

	perReplica := float64(sent) / float64(replicas) / float64(calls)
	t.Logf("%d renewals, %d commands from %d replicas: %.2f commands per replica per renewal", calls, sent, replicas, perReplica)
	if calls != renewals {
		t.Fatalf("%d issuer calls in a window of %d renewals: want one per renewal", calls, renewals)
	}
	if n := errs.Load(); n != 0 {
		t.Errorf("%d caller errors", n)
	}
	// The target is 3; measured 1.3 (one read per replica, the winner's
	// lock, fence, announce, write and release shared by all). Without the
	// "refreshing" announcement it is 4. 2 leaves room for a slow machine.
	if perReplica > 2 {
		t.Errorf("%.2f Redis commands per replica per renewal, want at most 2", perReplica)
	}
}

// A replica's refresh-ahead moment for a token is drawn once: reading the
// same token again (at the moment itself, or after an event) does not move
// it, so the first replica to reach it refreshes instead of drawing again.
// Different replicas draw different moments.
func TestRefreshJitterStablePerToken(t *testing.T) {
	rdb, _ := miniBackend(t)
	a := newCache(t, rdb, newFakeFetcher(time.Hour), WithRefreshJitter(0.3))
	b := newCache(t, rdb, newFakeFetcher(time.Hour), WithRefreshJitter(0.3))
	now := time.Now()
	rec := newRecord(Token{AccessToken: "x", Expiry: now.Add(time.Hour)}, 1, now, "h", "fp")
	first := a.server.snapshotFor(rec, 50*time.Minute, now)
	for range 20 {
		if s := a.server.snapshotFor(rec, 50*time.Minute, now); s.dueAt != first.dueAt {
			t.Fatalf("the same token read again moved the refresh moment by %v", time.Duration(s.dueAt-first.dueAt))
		}
	}
	if s := b.server.snapshotFor(rec, 50*time.Minute, now); a.monoAt(now)-first.dueAt == b.monoAt(now)-s.dueAt {
		t.Errorf("two replicas drew the same refresh moment")
	}
	other := newRecord(Token{AccessToken: "y", Expiry: now.Add(time.Hour)}, 2, now, "h", "fp")
	if a.jitterShare(rec.TokenFP) == a.jitterShare(other.TokenFP) {
		t.Errorf("two tokens share one jitter draw")
	}
}

// A replica does not read back the token it has just written: its own
// "refreshed" event, which can arrive before the write's reply (the script
// publishes it), is recognised by origin. Another replica's is read.
func TestOwnRefreshedEventCostsNoRead(t *testing.T) {
	rdb, _ := miniBackend(t)
	c := newCache(t, rdb, newFakeFetcher(time.Hour), fastOpts()...)
	ctx := ctxT(t)
	if _, err := c.Token(ctx); err != nil {
		t.Fatal(err)
	}
	gen := c.server.l1.Load().gen
	reads := c.Stats().RedisReads
	// Our own event for a generation we have not installed yet.
	c.onEvent(Event{Type: EventRefreshed, Key: c.server.k.token, Generation: gen + 1, Origin: c.origin})
	time.Sleep(50 * time.Millisecond) // a read-back would start at once
	if got := c.Stats().RedisReads; got != reads {
		t.Errorf("%d reads after our own refreshed event, want 0", got-reads)
	}
	// Someone else's: one read.
	c.onEvent(Event{Type: EventRefreshed, Key: c.server.k.token, Generation: gen + 1, Origin: "another"})
	eventually(t, "the read after another replica's event", func() bool { return c.Stats().RedisReads == reads+1 })
}

// An idle fleet proves its subscriptions with about one probe per quiet
// interval in all, not one per replica: the replicas elect a probe leader
// (the smallest origin heard) and the others stand by. A half-open
// subscription is still found: see the fault tests.
func TestIdleFleetProbesOncePerInterval(t *testing.T) {
	if testing.Short() {
		t.Skip("idles for a few seconds")
	}
	const (
		replicas  = 30
		interval  = 200 * time.Millisecond
		intervals = 20
	)
	srv := redistest.Start(t)
	var publishes atomic.Int64
	var caches []*Cache
	for range replicas {
		rdb := srv.Client(t)
		rdb.AddHook(commandCounter{name: "publish", n: &publishes})
		caches = append(caches, newCache(t, rdb, newFakeFetcher(time.Hour),
			fastOpts(WithSubscriptionProbe(interval, time.Second))...))
	}
	ctx := ctxT(t)
	for _, c := range caches {
		if _, err := c.Token(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// Let the first election settle, then count.
	time.Sleep(3 * interval)
	start := publishes.Load()
	time.Sleep(intervals * interval)
	n := publishes.Load() - start
	t.Logf("%d probes from %d idle replicas in %d intervals", n, replicas, intervals)
	if n == 0 {
		t.Fatal("no probe at all")
	}
	if n > 2*intervals {
		t.Errorf("%d probes in %d intervals: want about one per interval for the fleet", n, intervals)
	}
	var resubs uint64
	for _, c := range caches {
		resubs += c.Stats().Resubscribes
	}
	if resubs != 0 {
		t.Errorf("%d re-subscriptions of healthy subscriptions", resubs)
	}
}
