package tokencache

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/lock"
	"github.com/tokencache/tokencache/tokencache/internal/protocol"
)

// In steady state, with the defaults, a fleet renews its token with one
// issuer call, and a renewal costs each replica at most a few Redis
// commands: the winner takes the lock, re-reads, draws its generation
// (budget and "refreshing" announcement in the same script), writes and
// releases; the others hold back and read once after "refreshed".
// Counted from each replica's own client, per replica and renewal. The
// issue's target is at most 3 per lifetime; the fleet renews twice per
// lifetime (refresh-ahead 0.5), so that is 1.5 per renewal. Every replica's
// caller asks in step with the others (all woke on the same event), which
// is what used to put several replicas on the lock at the same call.
func TestSteadyStateCommandsPerRenewal(t *testing.T) {
	if testing.Short() {
		t.Skip("runs several token lifetimes")
	}
	for _, tc := range []struct {
		replicas int
		renewals int
		max      float64
	}{
		// (5 + 9) / 10 = 1.4 measured; 1.5 is the target itself, and
		// leaves room for a replica that reaches the lock a moment after
		// the winner (two commands) every other renewal. Twelve renewals:
		// one scheduling hiccup that delays the winner's "refreshing" can
		// put several replicas on the lock at once (12 extra commands,
		// seen idle on this code and the code before it), which six
		// renewals cannot absorb but twelve can.
		{10, 12, 1.5},
		// (5 + 39) / 40 = 1.1 measured (1.12-1.14 on an idle machine);
		// the bound is the target, 1.5: a loaded machine (CI beside other
		// builds) reached 1.26, replicas reaching the lock a moment after
		// the winner before its "refreshing" arrives.
		{40, 6, 1.5},
	} {
		t.Run(fmt.Sprint(tc.replicas), func(t *testing.T) {
			perReplica := steadyCommandsPerRenewal(t, tc.replicas, tc.renewals)
			if perReplica > tc.max {
				t.Errorf("%.2f Redis commands per replica per renewal, want at most %.2f", perReplica, tc.max)
			}
		})
	}
}

// steadyCommandsPerRenewal runs replicas whose callers each ask every
// 10 ms, through renewals of a 3 s token, and returns the commands sent
// per replica and renewal.
func steadyCommandsPerRenewal(t *testing.T, replicas, renewals int) float64 {
	const life = 3 * time.Second
	srv := redistest.Start(t)
	f := newFakeFetcher(life)
	f.setDelay(200 * time.Millisecond) // an issuer that takes a while
	var cmds atomic.Int64
	var caches []*Cache
	for range replicas {
		rdb := srv.Client(t)
		rdb.AddHook(commandCounter{n: &cmds})
		caches = append(caches, newCache(t, rdb, f, WithTuning(Tuning{LockTTL: 2 * time.Second})))
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var errs atomic.Int64
	served := make([]atomic.Pointer[string], len(caches)) // each replica's last token
	for i, c := range caches {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				tok, err := c.Token(ctx)
				if err != nil && ctx.Err() == nil {
					errs.Add(1)
				}
				if err == nil {
					served[i].Store(&tok.AccessToken)
				}
				time.Sleep(10 * time.Millisecond) // the callers' pace: the subject is a steady load
			}
		}()
	}
	defer func() { cancel(); wg.Wait() }()

	// waitServed waits until every replica serves the token of issuer
	// call n (the fake issuer numbers its tokens): that renewal's reads
	// are done.
	waitServed := func(n int64) {
		t.Helper()
		prefix := fmt.Sprintf("secret-token-%d-", n)
		eventually(t, fmt.Sprintf("every replica to serve token %d", n), func() bool {
			for i := range served {
				if p := served[i].Load(); p == nil || !strings.HasPrefix(*p, prefix) {
					return false
				}
			}
			return true
		})
	}
	// A window from just after one renewal (warmed up through the cold
	// start) to just after the last.
	waitServed(2)
	contended := func() uint64 { return total(caches, func(s Stats) uint64 { return s.LockContended }) }
	startCalls, startCmds, startContended := f.calls.Load(), cmds.Load(), contended()
	waitServed(startCalls + int64(renewals))
	calls, sent, lost := f.calls.Load()-startCalls, cmds.Load()-startCmds, contended()-startContended
	cancel()
	wg.Wait()

	perReplica := float64(sent) / float64(replicas) / float64(calls)
	// The lock attempts that lost to the winner are the replicas that
	// reached their moment before its "refreshing" reached them: one
	// command each, the part of the count that a loaded machine moves.
	t.Logf("%d renewals, %d commands from %d replicas: %.2f commands per replica per renewal (%d lock attempts lost to the winner)",
		calls, sent, replicas, perReplica, lost)
	if calls != int64(renewals) {
		t.Fatalf("%d issuer calls in a window of %d renewals: want one per renewal", calls, renewals)
	}
	if n := errs.Load(); n != 0 {
		t.Errorf("%d caller errors", n)
	}
	return perReplica
}

// A refresh ahead costs the refreshing replica five commands: the lock,
// the re-read under it, one script for the fencing generation, the
// issuer budget and the "refreshing" announcement, the write, the
// release. It happens at the replica's own moment, not at the next call,
// and only for a copy that callers used: an unused one waits for a call.
func TestRefreshAheadCommandsAndMoment(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	cmds := map[string]*atomic.Int64{"": {}, "set": {}, "evalsha": {}}
	for name, n := range cmds {
		rdb.AddHook(commandCounter{name: name, n: n})
	}
	observer := srv.Client(t) // not counted
	// A 4 s token: due 2 s after it was issued, served until 3.2 s.
	f := newFakeFetcher(4 * time.Second)
	// No probe: only the refresh's commands are counted.
	c := newCache(t, rdb, f, WithTuning(Tuning{ProbeInterval: time.Hour, ProbeTimeout: 2 * time.Second, RefreshJitter: -1}))
	ctx := ctxT(t)
	if _, err := c.Token(ctx); err != nil {
		t.Fatal(err)
	}
	before := map[string]int64{}
	for name, n := range cmds {
		before[name] = n.Load()
	}
	// No call from here on: the moment starts the refresh by itself. The
	// lock key is gone once the release was sent.
	eventually(t, "the refresh ahead at the replica's moment", func() bool {
		return c.Stats().Refreshes == 2 && observer.Exists(ctx, c.server.k.Lock).Val() == 0
	})
	for name, want := range map[string]int64{"": 5, "set": 1, "evalsha": 4} {
		if got := cmds[name].Load() - before[name]; got != want {
			t.Errorf("refresh ahead sent %d %q commands, want %d", got, name, want)
		}
	}
	second := c.server.mem.l1.Load().tok
	// Nobody used the new copy: its moment passes without a refresh. (A
	// sleep, not a wait: the subject is that nothing happens while real
	// time passes the moment on a real redis-server.)
	time.Sleep(2500 * time.Millisecond)
	if got := f.calls.Load(); got != 2 {
		t.Fatalf("%d issuer calls for an unused copy, want 2", got)
	}
	// The next call is served the copy, due but still valid, from memory
	// and refreshes it in the background.
	if tok, err := c.Token(ctx); err != nil || tok.AccessToken != second.AccessToken {
		t.Fatalf("the call after the moment: %v, %v; want the copy in memory", tok, err)
	}
	eventually(t, "the refresh after a call", func() bool { return c.Stats().Refreshes == 3 })
}

// A refresh ahead that learns under the lock that the fleet's last
// refresh failed (the failure key, written after this replica's last
// read) waits out the failure's window instead of calling the issuer,
// whether the token is still stored or was evicted meanwhile.
func TestRefreshAheadHonoursFleetFailureFoundUnderLock(t *testing.T) {
	for _, evicted := range []bool{false, true} {
		t.Run(fmt.Sprintf("evicted=%v", evicted), func(t *testing.T) {
			srv := redistest.Start(t)
			rdb := srv.Client(t)
			var sets atomic.Int64
			rdb.AddHook(commandCounter{name: "set", n: &sets})
			// A 4 s token: due 2 s after it was issued, served until 3.2 s.
			f := newFakeFetcher(4 * time.Second)
			c := newCache(t, rdb, f, WithTuning(Tuning{RefreshJitter: -1}))
			ctx := ctxT(t)
			if _, err := c.Token(ctx); err != nil {
				t.Fatal(err)
			}
			fl := failure{Code: "internal-server-error", Retryable: true, Fingerprint: c.server.cred.fingerprint(), Streak: 1}
			if err := c.st.remember(ctx, c.server.k, fl, 10*time.Second); err != nil {
				t.Fatal(err)
			}
			if evicted {
				srv.Client(t).Del(ctx, c.server.k.Token)
			}
			locks := sets.Load()
			// Past the moment, callers keep asking.
			deadline := time.Now().Add(2800 * time.Millisecond)
			for time.Now().Before(deadline) {
				if _, err := c.Token(ctx); err != nil {
					t.Fatal(err)
				}
				time.Sleep(10 * time.Millisecond) // the callers' pace through the window
			}
			if got := f.calls.Load(); got != 1 {
				t.Errorf("%d issuer calls during the fleet's back-off window, want 1 (the first)", got)
			}
			if got := sets.Load() - locks; got != 1 {
				t.Errorf("%d lock attempts, want 1: the failure found under the lock holds the replica back", got)
			}
		})
	}
}

// A replica's refresh-ahead moment for a token is drawn once: reading the
// same token again (at the moment itself, or after an event) does not move
// it, so the first replica to reach it refreshes instead of drawing again.
// Different replicas draw different moments.
func TestRefreshJitterStablePerToken(t *testing.T) {
	rdb, _ := miniBackend(t)
	a := newCache(t, rdb, newFakeFetcher(time.Hour), WithTuning(Tuning{RefreshJitter: 0.3}))
	b := newCache(t, rdb, newFakeFetcher(time.Hour), WithTuning(Tuning{RefreshJitter: 0.3}))
	now := time.Now()
	rec := newRecord(Token{AccessToken: "x", Expiry: now.Add(time.Hour)}, 1, now, 0, "h", "fp")
	first := a.server.snapshotFor(rec, 50*time.Minute, now, now)
	for range 20 {
		if s := a.server.snapshotFor(rec, 50*time.Minute, now, now); s.dueAt != first.dueAt {
			t.Fatalf("the same token read again moved the refresh moment by %v", time.Duration(s.dueAt-first.dueAt))
		}
	}
	if s := b.server.snapshotFor(rec, 50*time.Minute, now, now); a.monoAt(now)-first.dueAt == b.monoAt(now)-s.dueAt {
		t.Errorf("two replicas drew the same refresh moment")
	}
	other := newRecord(Token{AccessToken: "y", Expiry: now.Add(time.Hour)}, 2, now, 0, "h", "fp")
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
	gen := c.server.mem.l1.Load().gen
	reads := c.Stats().RedisReads
	// Our own event for a generation we have not installed yet.
	c.onEvent(protocol.Event{Type: protocol.EventRefreshed, Key: c.server.k.Token, Generation: gen + 1, Origin: c.origin})
	// A read-back would start at once; a sleep, as the subject is a read
	// that must not happen, so there is nothing to wait for.
	time.Sleep(50 * time.Millisecond)
	if got := c.Stats().RedisReads; got != reads {
		t.Errorf("%d reads after our own refreshed event, want 0", got-reads)
	}
	// Someone else's: one read.
	c.onEvent(protocol.Event{Type: protocol.EventRefreshed, Key: c.server.k.Token, Generation: gen + 1, Origin: "another"})
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
		replicas = 30
		// Half a second: a loaded machine (CI beside other suites) delays
		// a probe by a good part of a shorter interval, and every delayed
		// probe past twice the interval elects another prober.
		interval  = 500 * time.Millisecond
		intervals = 10
	)
	srv := redistest.Start(t)
	var publishes atomic.Int64
	var caches []*Cache
	for range replicas {
		rdb := srv.Client(t)
		rdb.AddHook(commandCounter{name: "publish", n: &publishes})
		caches = append(caches, newCache(t, rdb, newFakeFetcher(time.Hour),
			fastOpts(WithTuning(Tuning{ProbeInterval: interval, ProbeTimeout: time.Second}))...))
	}
	ctx := ctxT(t)
	for _, c := range caches {
		if _, err := c.Token(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// Let the first election settle, then count. The subject is a rate
	// (probes per interval of real time), so these sleeps are the
	// measurement window, not waits for an event.
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
	if resubs := total(caches, func(s Stats) uint64 { return s.Resubscribes }); resubs != 0 {
		t.Errorf("%d re-subscriptions of healthy subscriptions", resubs)
	}
}

// "refreshing" announcements that never end in a refresh (the announcer
// died, or someone publishes them by hand) cannot keep a replica from
// refreshing ahead: it holds back once per token, for at most half of the
// token's remaining validity, even with a lock TTL longer than the token's
// life. Counted: the token is replaced while still valid, so no caller ever
// has to go past memory.
func TestRefreshingAnnouncementsCannotStarveRefreshAhead(t *testing.T) {
	if testing.Short() {
		t.Skip("waits most of a token's life")
	}
	rdb := redistest.Start(t).Client(t) // real time: the key's PTTL must run down
	f := newFakeFetcher(4 * time.Second)
	c := newCache(t, rdb, f, WithTuning(Tuning{LockTTL: time.Minute, RefreshTimeout: 5 * time.Second}))
	ctx := ctxT(t)
	first, err := c.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { // a stream of announcements for ever newer leases
		defer close(done)
		for gen := int64(100); ; gen++ {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			c.onEvent(protocol.Event{Type: protocol.EventRefreshing, Key: c.server.k.Token, Generation: gen, Origin: "elsewhere", Credential: c.server.cred.fingerprint()})
		}
	}()
	defer func() { close(stop); <-done }()
	var second Token
	eventually(t, "a refresh ahead despite the announcements", func() bool {
		tok, err := c.Token(ctx)
		if err != nil {
			t.Fatal(err)
		}
		second = tok
		return tok.AccessToken != first.AccessToken
	})
	// The fake issuer mints a token life before its expiry: the second
	// one was fetched while the first could still be served (its key's
	// TTL ends a fifth of the life before its expiry), not after.
	fetched, servedUntil := second.Expiry.Add(-f.life), first.Expiry.Add(-f.life/5)
	if !fetched.Before(servedUntil) {
		t.Errorf("the second token was fetched %v after the first stopped being served: not ahead", fetched.Sub(servedUntil))
	}
	if st := c.Stats(); st.RedisHits != 0 || st.Waits != 0 {
		t.Errorf("callers left memory (%d Redis hits, %d waits): the refresh was not ahead", st.RedisHits, st.Waits)
	}
	if n := f.calls.Load(); n != 2 {
		t.Errorf("issuer calls = %d, want 2", n)
	}
}

// When Redis holds an older token than memory (it lost a write: a
// failover, a restart without persistence) and another replica holds the
// lock, a replica keeps serving its newer copy without reading Redis at
// every call.
func TestOlderTokenInRedisCausesNoReadStorm(t *testing.T) {
	rdb, _ := miniBackend(t)
	f := newFakeFetcher(time.Hour)
	c := newCache(t, rdb, f, fastOpts()...)
	ctx := ctxT(t)
	if _, err := c.Token(ctx); err != nil {
		t.Fatal(err)
	}
	key, lockKey, _, _ := c.Keys()
	older, err := rdb.Get(ctx, key).Result()
	if err != nil {
		t.Fatal(err)
	}
	f.setLife(time.Hour + time.Minute) // a later expiry for the next token
	newer, err := c.Refresh(ctx, 0, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := rdb.Set(ctx, key, older, 50*time.Minute).Err(); err != nil { // the write is lost
		t.Fatal(err)
	}
	someone, err := lock.New(rdb)
	if err != nil {
		t.Fatal(err)
	}
	lease, err := someone.TryAcquire(ctx, lockKey) // someone else refreshes
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = lease.Release(context.Background()) }()
	c.sub.onSubscribed() // a re-subscription: the copy is re-checked
	reads := c.Stats().RedisReads
	for range 200 {
		tok, err := c.Token(ctx)
		if err != nil || tok.AccessToken != newer.Token.AccessToken {
			t.Fatalf("served %v, %v; want the newer token", tok, err)
		}
		time.Sleep(time.Millisecond) // the callers' pace: calls spread over time, not a burst

	}
	if n := c.Stats().RedisReads - reads; n > 5 {
		t.Errorf("%d Redis reads for 200 calls: the newer copy is re-checked at every call", n)
	}
}

// With a late refresh-ahead share and a wide jitter, the jitter window is
// fitted before the end of the token's validity: no replica draws a
// refresh moment at the very end (which is no refresh ahead at all).
func TestRefreshJitterFitsBeforeExpiry(t *testing.T) {
	rdb, _ := miniBackend(t)
	c := newCache(t, rdb, newFakeFetcher(time.Hour), WithRefreshAhead(0.9), WithTuning(Tuning{RefreshJitter: 0.3}))
	now := time.Now()
	for i := range 500 {
		rec := newRecord(Token{AccessToken: fmt.Sprint("tok-", i), Expiry: now.Add(time.Hour)}, 1, now, 0, "h", "fp")
		s := c.server.snapshotFor(rec, time.Hour-30*time.Second, now, now)
		if left := time.Duration(s.validUntil - s.dueAt); left < time.Minute {
			t.Fatalf("token %d: refresh moment %v before the end of its validity", i, left)
		}
	}
}

// An issuer that starts handing out shorter-lived tokens (an admin
// shortened the lifetime, a session cap) must not make a replica refresh
// in a loop: a fresh token that expires before the one it replaces is
// still the newer one.
func TestShorterLivedTokenIsStillNewer(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a few token lifetimes")
	}
	rdb := redistest.Start(t).Client(t)
	f := newFakeFetcher(6 * time.Second)
	c := newCache(t, rdb, f, fastOpts()...)
	ctx := ctxT(t)
	if _, err := c.Token(ctx); err != nil {
		t.Fatal(err)
	}
	f.setLife(2 * time.Second)
	// The callers' pace through 5s of renewals of 2s tokens.
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if _, err := c.Token(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// 6 s token due after 3 s, then 2 s tokens due every second or so.
	if n := f.calls.Load(); n > 6 {
		t.Errorf("issuer calls = %d in 5 s, want at most 6: a refresh loop", n)
	}
	if n := c.Stats().RedisReads; n > 40 {
		t.Errorf("%d Redis reads in 5 s: a read loop", n)
	}
}

// A Redis user who may not PUBLISH (an ACL without +publish) still gets
// tokens cached: the scripts' publish is refused after the write, which
// stands, and the subscription probe, refused too, does not make the
// replica re-subscribe over and over.
func TestPublishRefusedByACL(t *testing.T) {
	srv := redistest.Start(t)
	admin := srv.Client(t)
	ctx := ctxT(t)
	if err := admin.Do(ctx, "ACL", "SETUSER", "nopub", "on", ">pw", "~*", "&*", "+@all", "-publish", "-spublish").Err(); err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, Username: "nopub", Password: "pw"})
	t.Cleanup(func() { _ = rdb.Close() })
	var publishes atomic.Int64 // attempted: the ACL refuses them
	rdb.AddHook(commandCounter{name: "publish", n: &publishes})
	f := newFakeFetcher(time.Hour)
	c := newCache(t, rdb, f, fastOpts(WithTuning(Tuning{ProbeInterval: 50 * time.Millisecond, ProbeTimeout: 50 * time.Millisecond}))...)
	tok, err := c.Token(ctx)
	if err != nil {
		t.Fatalf("Token with publish refused: %v", err)
	}
	key, _, _, _ := c.Keys()
	if v := admin.Get(ctx, key).Val(); !strings.Contains(v, tok.AccessToken) {
		t.Fatalf("the token was not stored")
	}
	if ok, err := c.Invalidate(ctx, tok); err != nil || !ok {
		t.Fatalf("invalidate with publish refused: %v, %v", ok, err)
	}
	sent := publishes.Load()
	eventually(t, "twenty more refused probes", func() bool { return publishes.Load() >= sent+20 })
	if n := c.Stats().Resubscribes; n > 1 {
		t.Errorf("%d re-subscriptions: a refused probe is not a dead subscription", n)
	}
}

// A budget key Redis cannot count (a hand edit left another type there)
// does not stop a refresh: the begin script still draws the generation,
// and the issuer call is counted in the process instead, as when Redis is
// unreachable.
func TestRefreshWithUncountableBudget(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	ctx := ctxT(t)
	f := newFakeFetcher(time.Hour)
	c := newCache(t, rdb, f, fastOpts()...)
	if err := rdb.HSet(ctx, c.budget.key, "x", 1).Err(); err != nil {
		t.Fatal(err)
	}
	var failed atomic.Int64
	rdb.AddHook(failedCommands{&failed})
	if _, err := c.Token(ctx); err != nil {
		t.Fatal(err)
	}
	res, err := c.Refresh(ctx, 0, true)
	if err != nil || !res.Refreshed {
		t.Fatalf("forced refresh with an uncountable budget: %+v, %v", res, err)
	}
	if got := f.calls.Load(); got != 2 {
		t.Errorf("%d issuer calls, want 2", got)
	}
	// One Redis error counted per refresh, and no command sent that fails
	// the same way again: the budget is not asked for a second time.
	if got := c.Stats().RedisErrors; got != 2 {
		t.Errorf("%d Redis errors for 2 refreshes, want 2", got)
	}
	if got := failed.Load(); got != 0 {
		t.Errorf("%d commands failed after the begin script could not count the budget, want 0", got)
	}
}

// failedCommands counts commands that come back with a WRONGTYPE error.
type failedCommands struct{ n *atomic.Int64 }

func (h failedCommands) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h failedCommands) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if err != nil && strings.HasPrefix(err.Error(), "WRONGTYPE") {
			h.n.Add(1)
		}
		return err
	}
}
func (h failedCommands) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
