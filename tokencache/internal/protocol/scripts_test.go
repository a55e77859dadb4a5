package protocol

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Each script is tested on its own, on miniredis and on a real
// redis-server, through the method that runs it: every typed outcome, and
// what it leaves in Redis.

// marker proves that nothing else was published on channel before it:
// next (from listen) must return it first.
func marker(t *testing.T, rdb *redis.Client, channel string, next func() string) string {
	t.Helper()
	if err := rdb.Publish(context.Background(), channel, "marker").Err(); err != nil {
		t.Fatal(err)
	}
	return next()
}

func TestScriptRead(t *testing.T) {
	forEachServer(t, func(t *testing.T, s server) {
		ctx := ctxT(t)
		c, _ := newClient(s.rdb, ModeClassic)
		k := ServerKeys("tc", "read")
		nowMS := time.Now().UnixMilli()
		set := func(v any, ttl time.Duration) {
			t.Helper()
			if err := s.rdb.Del(ctx, k.Token, k.Failed).Err(); err != nil {
				t.Fatal(err)
			}
			if v != nil {
				if err := s.rdb.Set(ctx, k.Token, v, ttl).Err(); err != nil {
					t.Fatal(err)
				}
			}
		}
		read := func() ReadResult {
			t.Helper()
			r, err := c.Read(ctx, k.Token, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			return r
		}
		bad := func(r ReadResult, reason string) {
			t.Helper()
			if r.Found || r.Stale || r.Bad == nil || r.Bad.Reason != reason || r.Bad.Key != k.Token {
				t.Errorf("read %+v, want unusable: %s", r, reason)
			}
		}

		set(nil, 0)
		if r := read(); r.Found || r.Stale || r.Bad != nil || r.Failure != nil {
			t.Errorf("missing key: %+v, want a plain miss", r)
		}

		rec := testRecord(4, time.Hour)
		rec.StoredMS = nowMS
		set(mustJSON(t, rec), time.Hour)
		r := read()
		if !r.Found || r.Record != rec || r.PTTL <= 59*time.Minute || r.PTTL > time.Hour || r.TimeRefused {
			t.Errorf("stored token: %+v, want found with about an hour left on Redis's clock", r)
		}

		// A key stretched past its token's life (a PEXPIRE, a lagging
		// node): served until stored_ms + ttl_ms only.
		rec = testRecord(4, time.Hour)
		rec.StoredMS = nowMS - (50 * time.Minute).Milliseconds()
		set(mustJSON(t, rec), time.Hour)
		if r := read(); !r.Found || r.PTTL > 10*time.Minute || r.PTTL < 9*time.Minute {
			t.Errorf("stretched key: %+v, want found with at most 10 minutes left", r)
		}

		// A key that outlives its token: stale, a miss that is not garbage.
		rec = testRecord(4, 3*time.Hour)
		rec.IssuedAt = time.Now().Add(-2 * time.Hour).UTC().Format(ExpiryLayout)
		rec.ExpiresAt = time.Now().Add(time.Hour).UTC().Format(ExpiryLayout)
		rec.TTLMS, rec.StoredMS = time.Hour.Milliseconds(), nowMS-(2*time.Hour).Milliseconds()
		set(mustJSON(t, rec), 30*time.Minute)
		if r := read(); r.Found || !r.Stale || r.Bad != nil || r.Record.Generation != 4 {
			t.Errorf("key past its token's life: %+v, want stale", r)
		}

		set(nil, 0)
		if err := s.rdb.RPush(ctx, k.Token, "x").Err(); err != nil {
			t.Fatal(err)
		}
		bad(read(), "not a string value")
		set("garbage", time.Hour)
		bad(read(), "not JSON")
		set(mustJSON(t, testRecord(1, time.Hour)), 0)
		bad(read(), "key has no TTL")
		old := testRecord(1, time.Hour)
		old.IssuedAt = time.Now().Add(-time.Hour).UTC().Format(ExpiryLayout)
		old.ExpiresAt = time.Now().Add(-3 * time.Minute).UTC().Format(ExpiryLayout)
		set(mustJSON(t, old), time.Minute)
		bad(read(), "expires_at is in the past")
		set(mustJSON(t, testRecord(1, 10*time.Minute)), time.Hour)
		bad(read(), "TTL outlives the token")

		// The fleet's last failure, while in its window, with or without
		// a token.
		set(nil, 0)
		f := Failure{Code: "invalid-client", Retryable: false, Fingerprint: "cred-fp", Streak: 3}
		if err := c.Remember(ctx, k, f, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		if r := read(); r.Failure == nil || *r.Failure != f || r.FailureTTL <= 0 || r.FailureTTL > 5*time.Second {
			t.Errorf("failure in its window: %+v, want %+v for at most 5s", r, f)
		}
		if err := s.rdb.Set(ctx, k.Failed, "garbage", time.Minute).Err(); err != nil {
			t.Fatal(err)
		}
		if r := read(); r.Failure != nil {
			t.Errorf("garbage at the failure key: %+v, want no failure", r.Failure)
		}

		// An ACL that refuses TIME: the key's PTTL alone.
		if s.real == nil {
			return // miniredis has no ACL rules
		}
		notime, _ := newClient(s.as(t, "notime", "time"), ModeClassic)
		rec = testRecord(4, time.Hour)
		rec.StoredMS = nowMS - (50 * time.Minute).Milliseconds()
		set(mustJSON(t, rec), time.Hour)
		r, err := notime.Read(ctx, k.Token, time.Now())
		if err != nil || !r.Found || !r.TimeRefused || r.PTTL <= 59*time.Minute {
			t.Errorf("without TIME: %+v, %v; want found on the key's PTTL, TIME refused", r, err)
		}
	})
}

// writeSetup holds k.Lock under lease "L" with generation 1 drawn.
func writeSetup(t *testing.T, s server) (context.Context, Keys) {
	ctx := ctxT(t)
	k := ServerKeys("tc", "write")
	if err := s.rdb.Set(ctx, k.Lock, "L", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	if err := s.rdb.Set(ctx, k.Fence, 1, time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	return ctx, k
}

func TestScriptWrite(t *testing.T) {
	forEachServer(t, func(t *testing.T, s server) {
		ctx, k := writeSetup(t, s)
		c, _ := newClient(s.rdb, ModeClassic)
		next := listen(t, s.rdb, k.Channel, false)
		if err := c.Remember(ctx, k, Failure{Code: "x", Fingerprint: "cred-fp"}, time.Minute); err != nil {
			t.Fatal(err)
		}
		rec := testRecord(1, time.Hour)
		ev := Event{Type: EventRefreshed, Key: k.Token, Generation: 1, Origin: "me", TokenFP: rec.TokenFP}

		w, err := c.Write(ctx, k, rec, 59*time.Minute, ev, "L")
		if err != nil || !w.Stored || w.Replayed || w.StoredMS <= 0 || w.FencedBy != 0 {
			t.Fatalf("write: %+v, %v; want stored at Redis's time", w, err)
		}
		got := stored(t, s.rdb, k.Token)
		if want := rec; got.StoredMS != w.StoredMS || func() bool { want.StoredMS = got.StoredMS; return got != want }() {
			t.Errorf("stored %+v, want %+v stamped with stored_ms %d", got, rec, w.StoredMS)
		}
		if ttl := s.rdb.PTTL(ctx, k.Token).Val(); ttl <= 58*time.Minute || ttl > 59*time.Minute {
			t.Errorf("token key TTL %v, want 59m", ttl)
		}
		if ttl := s.rdb.PTTL(ctx, k.Fence).Val(); ttl <= 59*time.Minute+FenceMargin-time.Minute {
			t.Errorf("fence TTL %v, want the token's plus %v", ttl, FenceMargin)
		}
		if n := s.rdb.Exists(ctx, k.Failed).Val(); n != 0 {
			t.Error("the failure key survived a stored token")
		}
		if p, ok := DecodeEvent(next()); !ok || p != ev {
			t.Errorf("published %+v, want %+v", p, ev)
		}

		// Retried after a lost reply: replayed, not fenced out by itself,
		// and published again only where the caller publishes.
		w2, err := c.Write(ctx, k, rec, 59*time.Minute, ev, "L")
		if err != nil || !w2.Stored || !w2.Replayed || w2.StoredMS != w.StoredMS {
			t.Errorf("retried write: %+v, %v; want replayed, stored at %d", w2, err, w.StoredMS)
		}
		if p := marker(t, s.rdb, k.Channel, next); p != "marker" {
			t.Errorf("a replay published %q", p)
		}

		other := testRecord(2, time.Hour)
		other.TokenFP = "other-fp"
		if err := s.rdb.Set(ctx, k.Fence, 5, time.Minute).Err(); err != nil {
			t.Fatal(err)
		}
		if w, err := c.Write(ctx, k, other, time.Hour, ev, "L"); err != nil || w.Stored || w.FencedBy != 5 || w.Stale || w.LeaseLost {
			t.Errorf("write under an older generation: %+v, %v; want fenced by 5", w, err)
		}
		if err := s.rdb.Set(ctx, k.Fence, 2, time.Minute).Err(); err != nil {
			t.Fatal(err)
		}
		if err := s.rdb.Set(ctx, k.Lock, "another-owner", time.Minute).Err(); err != nil {
			t.Fatal(err)
		}
		if w, err := c.Write(ctx, k, other, time.Hour, ev, "L"); err != nil || w.Stored || !w.LeaseLost || w.FencedBy != 0 {
			t.Errorf("write after the lease was lost: %+v, %v; want lease lost", w, err)
		}
		// The fence lost (evicted, a failover) and a token of the same
		// generation stored: stale.
		if err := s.rdb.Set(ctx, k.Lock, "L", time.Minute).Err(); err != nil {
			t.Fatal(err)
		}
		if err := s.rdb.Del(ctx, k.Fence).Err(); err != nil {
			t.Fatal(err)
		}
		same := testRecord(1, time.Hour)
		same.TokenFP = "other-fp"
		if w, err := c.Write(ctx, k, same, time.Hour, ev, "L"); err != nil || w.Stored || !w.Stale || w.FencedBy != 1 {
			t.Errorf("write over a token of the same generation: %+v, %v; want stale, fenced by 1", w, err)
		}
		if got := stored(t, s.rdb, k.Token); got.TokenFP != rec.TokenFP {
			t.Errorf("a refused write changed the token: %+v", got)
		}
		if p := marker(t, s.rdb, k.Channel, next); p != "marker" {
			t.Errorf("a refused write published %q", p)
		}
	})
}

// An ACL without +publish refuses the script's publish, after the write,
// which stands; without +time the value carries no stored_ms.
func TestScriptWriteUnderRestrictiveACLs(t *testing.T) {
	forEachServer(t, func(t *testing.T, s server) {
		if s.real == nil {
			t.Skip("miniredis has no ACL rules")
		}
		ctx, k := writeSetup(t, s)
		c, logs := newClient(s.as(t, "nopub", "publish", "spublish"), ModeClassic)
		rec := testRecord(1, time.Hour)
		ev := Event{Type: EventRefreshed, Key: k.Token, Generation: 1}
		w, err := c.Write(ctx, k, rec, time.Hour, ev, "L")
		if err != nil || !w.Stored {
			t.Fatalf("write without +publish: %+v, %v; want stored", w, err)
		}
		if !strings.Contains(logs.String(), "Redis refused to publish an event") {
			t.Errorf("the refused publish was not logged: %q", logs.String())
		}
		if err := s.rdb.Del(ctx, k.Token).Err(); err != nil {
			t.Fatal(err)
		}
		c, _ = newClient(s.as(t, "notime", "time"), ModeClassic)
		if w, err := c.Write(ctx, k, rec, time.Hour, ev, "L"); err != nil || !w.Stored || w.StoredMS != 0 {
			t.Fatalf("write without +time: %+v, %v; want stored without a time", w, err)
		}
		if got := stored(t, s.rdb, k.Token); got != rec {
			t.Errorf("stored %+v, want %+v as given", got, rec)
		}
	})
}

// Where a script may not publish (a user's keys are in another slot than
// the sharded channel), the caller publishes the event after it.
func TestScriptWritePublishesAfterWhereTheScriptCannot(t *testing.T) {
	forEachServer(t, func(t *testing.T, s server) {
		if s.real == nil {
			t.Skip("miniredis has no sharded pub/sub")
		}
		ctx := ctxT(t)
		c, _ := newClient(s.rdb, ModeSharded)
		for _, k := range []Keys{ServerKeys("tc", "shard"), ClientKeys("tc", "shard", "u1")} {
			next := listen(t, s.rdb, k.Channel, true)
			if err := s.rdb.Set(ctx, k.Lock, "L", time.Minute).Err(); err != nil {
				t.Fatal(err)
			}
			ev := Event{Type: EventRefreshed, Key: k.Token, Generation: 1}
			if w, err := c.Write(ctx, k, testRecord(1, time.Hour), time.Hour, ev, "L"); err != nil || !w.Stored {
				t.Fatalf("%s: %+v, %v", k.Token, w, err)
			}
			if p, ok := DecodeEvent(next()); !ok || p != ev {
				t.Errorf("%s: heard %+v, want %+v", k.Token, p, ev)
			}
		}
	})
}

func TestScriptBegin(t *testing.T) {
	forEachServer(t, func(t *testing.T, s server) {
		ctx := ctxT(t)
		c, _ := newClient(s.rdb, ModeClassic)
		k := ServerKeys("tc", "begin")
		next := listen(t, s.rdb, k.Channel, false)
		budget := &BudgetSpec{Key: BudgetKey("tc", "begin"), Limit: 1, Window: time.Minute}
		lease := func(v string) {
			t.Helper()
			if err := s.rdb.Set(ctx, k.Lock, v, time.Minute).Err(); err != nil {
				t.Fatal(err)
			}
		}
		begin := func(a BeginArgs) BeginResult {
			t.Helper()
			r, err := c.Begin(ctx, k, a)
			if err != nil {
				t.Fatal(err)
			}
			return r
		}

		if r := begin(BeginArgs{Lease: "A", Budget: budget}); !r.LeaseLost || r.Generation != 0 || r.Budget != nil {
			t.Errorf("without the lock: %+v, want lease lost", r)
		}
		if n := s.rdb.Exists(ctx, k.Fence, budget.Key).Val(); n != 0 {
			t.Errorf("a lost lease drew or counted (%d keys)", n)
		}

		lease("A")
		announce := &Event{Type: EventRefreshing, Key: k.Token, Origin: "me"}
		r := begin(BeginArgs{Lease: "A", Budget: budget, Announce: announce})
		if r.LeaseLost || r.Replayed || r.Generation != 1 || r.Budget == nil || *r.Budget != (Budget{Allowed: true, ResetIn: r.Budget.ResetIn, Counted: 1}) ||
			r.Budget.ResetIn <= 0 || r.Budget.ResetIn > time.Minute || r.Pending() {
			t.Errorf("first draw: %+v (budget %+v), want generation 1, counted 1 and allowed, published by the script", r, r.Budget)
		}
		want := *announce
		want.Generation = 1
		if p, ok := DecodeEvent(next()); !ok || p != want {
			t.Errorf("announced %+v, want %+v", p, want)
		}
		if ttl := s.rdb.PTTL(ctx, k.Fence).Val(); ttl <= FenceMargin-time.Minute {
			t.Errorf("fence TTL %v, want at least %v", ttl, FenceMargin)
		}
		if got := s.rdb.Get(ctx, k.Drawn).Val(); got != "A 1" {
			t.Errorf("drawn key %q, want %q", got, "A 1")
		}

		// Resent after a lost reply: the same generation, nothing counted
		// or announced again.
		r = begin(BeginArgs{Lease: "A", Budget: budget, Announce: announce})
		if !r.Replayed || r.Generation != 1 || r.Budget == nil || *r.Budget != (Budget{Allowed: true}) || r.Pending() {
			t.Errorf("replay: %+v (budget %+v), want generation 1 again, allowed, not counted", r, r.Budget)
		}
		if n := s.rdb.Get(ctx, budget.Key).Val(); n != "1" {
			t.Errorf("budget count %s after a replay, want 1", n)
		}
		if p := marker(t, s.rdb, k.Channel, next); p != "marker" {
			t.Errorf("a replay announced %q", p)
		}

		// The next lease draws above the floor it is given; the budget
		// is spent.
		lease("B")
		r = begin(BeginArgs{Lease: "B", Floor: 10, Budget: budget})
		if r.Generation != 11 || r.Budget == nil || r.Budget.Allowed || r.Budget.Counted != 2 || r.Budget.Uncountable {
			t.Errorf("draw above 10 past the budget: %+v (budget %+v), want generation 11, refused at count 2", r, r.Budget)
		}
		if n, _ := s.rdb.Get(ctx, k.Fence).Int64(); n != 11 {
			t.Errorf("fence %d, want 11", n)
		}

		// A budget key of another type: the generation is drawn, the call
		// uncountable.
		lease("C")
		if err := s.rdb.Del(ctx, budget.Key).Err(); err != nil {
			t.Fatal(err)
		}
		if err := s.rdb.RPush(ctx, budget.Key, "x").Err(); err != nil {
			t.Fatal(err)
		}
		r = begin(BeginArgs{Lease: "C", Budget: budget})
		if r.Generation != 12 || r.Budget == nil || !r.Budget.Uncountable {
			t.Errorf("budget key of another type: %+v (budget %+v), want generation 12, uncountable", r, r.Budget)
		}
		lease("D")
		if r := begin(BeginArgs{Lease: "D"}); r.Generation != 13 || r.Budget != nil {
			t.Errorf("without a budget: %+v, want generation 13 and no verdict", r)
		}
	})
}

// Where the script may not publish, Finish sends the announcement.
func TestScriptBeginLeavesTheAnnouncementToFinishWhereTheScriptCannot(t *testing.T) {
	forEachServer(t, func(t *testing.T, s server) {
		if s.real == nil {
			t.Skip("miniredis has no sharded pub/sub")
		}
		ctx := ctxT(t)
		c, _ := newClient(s.rdb, ModeSharded)
		k := ClientKeys("tc", "begin", "u1")
		next := listen(t, s.rdb, k.Channel, true)
		if err := s.rdb.Set(ctx, k.Lock, "A", time.Minute).Err(); err != nil {
			t.Fatal(err)
		}
		r, err := c.Begin(ctx, k, BeginArgs{Lease: "A", Announce: &Event{Type: EventRefreshing, Key: k.Token}})
		if err != nil || r.Generation != 1 || !r.Pending() {
			t.Fatalf("begin: %+v, %v; want generation 1 with the announcement pending", r, err)
		}
		r.Finish(ctx)
		if p, ok := DecodeEvent(next()); !ok || p.Type != EventRefreshing || p.Generation != 1 {
			t.Errorf("heard %+v, want refreshing at generation 1", p)
		}
	})
}

func TestScriptBudget(t *testing.T) {
	forEachServer(t, func(t *testing.T, s server) {
		ctx := ctxT(t)
		c, _ := newClient(s.rdb, ModeClassic)
		b := BudgetSpec{Key: BudgetKey("tc", "budget"), Limit: 2, Window: time.Minute}
		for i, wantAllowed := range []bool{true, true, false} {
			got, err := c.TakeBudget(ctx, b)
			if err != nil || got.Allowed != wantAllowed || got.Counted != int64(i+1) || got.Uncountable ||
				got.ResetIn <= 0 || got.ResetIn > time.Minute {
				t.Errorf("call %d: %+v, %v; want allowed %v, counted %d, reset within the window", i+1, got, err, wantAllowed, i+1)
			}
		}
		if ttl := s.rdb.PTTL(ctx, b.Key).Val(); ttl <= 0 || ttl > time.Minute {
			t.Errorf("budget key TTL %v, want the window", ttl)
		}
		if err := s.rdb.Del(ctx, b.Key).Err(); err != nil {
			t.Fatal(err)
		}
		if err := s.rdb.RPush(ctx, b.Key, "x").Err(); err != nil {
			t.Fatal(err)
		}
		if got, err := c.TakeBudget(ctx, b); err == nil {
			t.Errorf("budget key of another type: %+v, want an error", got)
		}
	})
}

func TestScriptRaiseFence(t *testing.T) {
	forEachServer(t, func(t *testing.T, s server) {
		ctx := ctxT(t)
		c, _ := newClient(s.rdb, ModeClassic)
		k := ServerKeys("tc", "raise")
		if r, err := c.RaiseFence(ctx, k, 3, 7, time.Hour); err != nil || r != (Raise{Raised: true, Generation: 7}) {
			t.Errorf("raise a lost fence: %+v, %v; want raised to 7", r, err)
		}
		if n, _ := s.rdb.Get(ctx, k.Fence).Int64(); n != 7 {
			t.Errorf("fence %d, want 7", n)
		}
		if ttl := s.rdb.PTTL(ctx, k.Fence).Val(); ttl <= time.Hour+FenceMargin-time.Minute {
			t.Errorf("fence TTL %v, want an hour plus %v", ttl, FenceMargin)
		}
		if err := s.rdb.Set(ctx, k.Fence, 9, 0).Err(); err != nil {
			t.Fatal(err)
		}
		if r, err := c.RaiseFence(ctx, k, 7, 10, time.Hour); err != nil || r != (Raise{Generation: 9}) {
			t.Errorf("raise past a newer lease: %+v, %v; want refused at 9", r, err)
		}
		if n, _ := s.rdb.Get(ctx, k.Fence).Int64(); n != 9 {
			t.Errorf("fence %d after a refused raise, want 9", n)
		}
	})
}

func TestScriptOfferDraw(t *testing.T) {
	forEachServer(t, func(t *testing.T, s server) {
		ctx := ctxT(t)
		c, _ := newClient(s.rdb, ModeClassic)
		k := ServerKeys("tc", "draw")
		later := time.Now().Add(2 * time.Hour).UTC().Format(ExpiryLayout)
		if d, err := c.OfferDraw(ctx, k, later, "cred-fp", time.Hour); err != nil || d != (Draw{Generation: 1}) {
			t.Errorf("draw on an empty namespace: %+v, %v; want generation 1", d, err)
		}
		cur := testRecord(5, time.Hour)
		if err := s.rdb.Set(ctx, k.Token, mustJSON(t, cur), time.Hour).Err(); err != nil {
			t.Fatal(err)
		}
		if d, err := c.OfferDraw(ctx, k, later, "cred-fp", time.Hour); err != nil || d != (Draw{Generation: 6}) {
			t.Errorf("draw above a stored generation 5: %+v, %v; want 6", d, err)
		}
		if d, err := c.OfferDraw(ctx, k, cur.ExpiresAt, "cred-fp", time.Hour); err != nil || d != (Draw{NotNewer: true}) {
			t.Errorf("draw for a token expiring with the stored one: %+v, %v; want not newer", d, err)
		}
		if n, _ := s.rdb.Get(ctx, k.Fence).Int64(); n != 6 {
			t.Errorf("fence %d after a refused draw, want 6", n)
		}
		if d, err := c.OfferDraw(ctx, k, cur.ExpiresAt, "another-credential", time.Hour); err != nil || d != (Draw{Generation: 7}) {
			t.Errorf("draw for another credential's token: %+v, %v; want 7", d, err)
		}
	})
}

func TestScriptOffer(t *testing.T) {
	forEachServer(t, func(t *testing.T, s server) {
		ctx := ctxT(t)
		c, _ := newClient(s.rdb, ModeClassic)
		k := ServerKeys("tc", "offer")
		next := listen(t, s.rdb, k.Channel, false)
		cur := testRecord(5, 30*time.Minute)
		if err := s.rdb.Set(ctx, k.Token, mustJSON(t, cur), 30*time.Minute).Err(); err != nil {
			t.Fatal(err)
		}
		if err := c.Remember(ctx, k, Failure{Code: "x"}, time.Minute); err != nil {
			t.Fatal(err)
		}
		rot := testRecord(0, time.Hour)
		rot.TokenFP = "rotated-fp"
		d, err := c.OfferDraw(ctx, k, rot.ExpiresAt, rot.Fingerprint, time.Hour)
		if err != nil || d.Generation != 6 {
			t.Fatalf("draw: %+v, %v", d, err)
		}
		rot.Generation = d.Generation
		ev := Event{Type: EventRefreshed, Key: k.Token, Generation: 6, TokenFP: rot.TokenFP}
		o, err := c.Offer(ctx, k, rot, time.Hour, ev)
		if err != nil || !o.Stored || o.StoredMS <= 0 || o.NotNewer || o.Redraw {
			t.Fatalf("offer: %+v, %v; want stored", o, err)
		}
		if got := stored(t, s.rdb, k.Token); got.TokenFP != "rotated-fp" || got.StoredMS != o.StoredMS || got.Generation != 6 {
			t.Errorf("stored %+v, want the rotated token at generation 6 stamped %d", got, o.StoredMS)
		}
		if n := s.rdb.Exists(ctx, k.Failed).Val(); n != 0 {
			t.Error("the failure key survived a stored token")
		}
		if p, ok := DecodeEvent(next()); !ok || p != ev {
			t.Errorf("published %+v, want %+v", p, ev)
		}

		same := rot
		same.TokenFP, same.Generation = "same-expiry-fp", 7
		if o, err := c.Offer(ctx, k, same, time.Hour, ev); err != nil || o != (OfferResult{NotNewer: true}) {
			t.Errorf("offer expiring with the stored token: %+v, %v; want not newer", o, err)
		}
		newer := testRecord(7, 2*time.Hour)
		newer.TokenFP = "newer-fp"
		if err := s.rdb.Set(ctx, k.Fence, 9, time.Hour).Err(); err != nil {
			t.Fatal(err)
		}
		if o, err := c.Offer(ctx, k, newer, 2*time.Hour, ev); err != nil || o != (OfferResult{Redraw: true}) {
			t.Errorf("offer after a newer draw: %+v, %v; want redraw", o, err)
		}
		if got := stored(t, s.rdb, k.Token); got.TokenFP != "rotated-fp" {
			t.Errorf("a refused offer changed the token: %+v", got)
		}
		if p := marker(t, s.rdb, k.Channel, next); p != "marker" {
			t.Errorf("a refused offer published %q", p)
		}
	})
}

func TestScriptInvalidate(t *testing.T) {
	forEachServer(t, func(t *testing.T, s server) {
		ctx := ctxT(t)
		c, _ := newClient(s.rdb, ModeClassic)
		k := ServerKeys("tc", "invalidate")
		next := listen(t, s.rdb, k.Channel, false)
		inv := func(fp string, gen int64) InvalidateResult {
			t.Helper()
			r, err := c.Invalidate(ctx, k, fp, gen)
			if err != nil {
				t.Fatal(err)
			}
			return r
		}
		if r := inv("tok-fp", 0); r.Deleted {
			t.Errorf("missing token: %+v, want kept", r)
		}
		rec := testRecord(5, time.Hour)
		if err := s.rdb.Set(ctx, k.Token, mustJSON(t, rec), time.Hour).Err(); err != nil {
			t.Fatal(err)
		}
		if err := c.Remember(ctx, k, Failure{Code: "x"}, time.Minute); err != nil {
			t.Fatal(err)
		}
		if r := inv("another-token", 0); r.Deleted {
			t.Errorf("another token's fingerprint: %+v, want kept", r)
		}
		if r := inv("tok-fp", 4); r.Deleted {
			t.Errorf("an older generation: %+v, want kept", r)
		}
		if p := marker(t, s.rdb, k.Channel, next); p != "marker" {
			t.Errorf("a miss published %q", p)
		}
		if r := inv("tok-fp", 5); r != (InvalidateResult{Deleted: true, Generation: 5}) {
			t.Errorf("the token at its generation: %+v, want deleted at 5", r)
		}
		if n := s.rdb.Exists(ctx, k.Token, k.Failed).Val(); n != 0 {
			t.Errorf("%d of the token and failure keys survived", n)
		}
		want := Event{Type: EventInvalidated, Key: k.Token, Generation: 5, TokenFP: "tok-fp"}
		if p, ok := DecodeEvent(next()); !ok || p != want {
			t.Errorf("published %+v, want %+v", p, want)
		}
		if err := s.rdb.Set(ctx, k.Token, mustJSON(t, rec), time.Hour).Err(); err != nil {
			t.Fatal(err)
		}
		if r := inv("", 0); r != (InvalidateResult{Deleted: true, Generation: 5}) {
			t.Errorf("any token: %+v, want deleted at 5", r)
		}
		next()
		// A value of another type goes only when no token is named; no
		// event is published for it.
		if err := s.rdb.RPush(ctx, k.Token, "x").Err(); err != nil {
			t.Fatal(err)
		}
		if r := inv("tok-fp", 0); r.Deleted {
			t.Errorf("another type with a fingerprint: %+v, want kept", r)
		}
		if r := inv("", 0); r != (InvalidateResult{Deleted: true}) {
			t.Errorf("another type, any token: %+v, want deleted at generation 0", r)
		}
		if n := s.rdb.Exists(ctx, k.Token).Val(); n != 0 {
			t.Error("the value of another type survived")
		}
		if p := marker(t, s.rdb, k.Channel, next); p != "marker" {
			t.Errorf("deleting garbage published %q", p)
		}
	})
}

// Every script is in one place and reachable by name.
func TestScriptsAreNamed(t *testing.T) {
	for _, name := range []string{"read", "read token", "write", "begin", "budget", "raise fence", "offer draw", "offer", "invalidate"} {
		if Script(name) == nil {
			t.Errorf("no script %q", name)
		}
	}
	if Script("nope") != nil {
		t.Error("an unknown name has a script")
	}
}

// The read made while a cluster slot moves names the token key alone: the
// token as the full read sees it, without the fleet's failure.
func TestScriptReadTokenOnly(t *testing.T) {
	forEachServer(t, func(t *testing.T, s server) {
		ctx := ctxT(t)
		k := ServerKeys("tc", "moving")
		rec := testRecord(2, time.Hour)
		if err := s.rdb.Set(ctx, k.Token, mustJSON(t, rec), time.Hour).Err(); err != nil {
			t.Fatal(err)
		}
		if err := s.rdb.Set(ctx, k.Failed, mustJSON(t, Failure{Code: "x"}), time.Minute).Err(); err != nil {
			t.Fatal(err)
		}
		res, err := readTokenScript.Run(ctx, s.rdb, []string{k.Token}).Slice()
		if err != nil {
			t.Fatal(err)
		}
		d := decoder{script: "read token", res: res}
		v, pttl, bad, f, fttl, now := d.res6()
		if d.err != nil || v == nil || *v != mustJSON(t, rec) || pttl <= 0 || bad || f != nil || fttl != 0 || now <= 0 {
			t.Errorf("read token only: value %v, pttl %d, bad %v, failure %v (%d), now %d, %v; want the token, no failure",
				v != nil, pttl, bad, f, fttl, now, d.err)
		}
	})
}

func TestPubSubModeOnASingleNode(t *testing.T) {
	forEachServer(t, func(t *testing.T, s server) {
		ctx := ctxT(t)
		for want, mode := range map[Mode]Mode{ModeAuto: ModeClassic, ModeClassic: ModeClassic, ModeSharded: ModeSharded} {
			ps := NewPubSub(s.rdb, want, nil)
			if got := ps.Mode(); got != mode {
				t.Errorf("asked %d: mode %d, want %d", want, got, mode)
			}
			if sharded, ok := ps.Sharded(ctx); !ok || sharded != (mode == ModeSharded) {
				t.Errorf("asked %d: sharded %v, %v", want, sharded, ok)
			}
		}
		c, _ := newClient(s.rdb, ModeAuto)
		next := listen(t, s.rdb, "tc:{ns}:events", false)
		ev := Event{Type: EventProbe, Key: "tc:{ns}:events", Origin: "me"}
		if err := c.Publish(ctx, "tc:{ns}:events", ev); err != nil {
			t.Fatal(err)
		}
		if p, ok := DecodeEvent(next()); !ok || p != ev {
			t.Errorf("heard %+v, want %+v", p, ev)
		}
	})
}
