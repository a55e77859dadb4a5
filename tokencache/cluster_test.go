package tokencache

import (
	"bufio"
	"context"
	"io"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/tokencache/internal/protocol"
)

// On a 3-master Redis Cluster: separate OS processes stampede, one issuer
// call; events reach replicas whose subscriptions sit on any node.
func TestClusterMultiProcessStampede(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster and processes")
	}
	cl := redistest.StartCluster(t, 3)
	issuer := &slowIssuer{latency: 200 * time.Millisecond}
	hs := httptest.NewServer(issuer)
	defer hs.Close()
	const procs, goroutines = 10, 10
	var reps []*replicaProc
	for range procs {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), helperEnv+"=1", "TC_CLUSTER="+strings.Join(cl.Addrs(), ","),
			"TC_ISSUER="+hs.URL, "TC_GOROUTINES="+strconv.Itoa(goroutines))
		cmd.Stderr = os.Stderr
		stdin, _ := cmd.StdinPipe()
		stdout, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		reps = append(reps, &replicaProc{cmd: cmd, stdin: stdin, out: bufio.NewScanner(stdout)})
		t.Cleanup(func() { _ = stdin.Close(); _ = cmd.Process.Kill(); _, _ = cmd.Process.Wait() })
	}
	for _, p := range reps {
		p.expect(t, "ready")
	}
	for _, p := range reps {
		if _, err := io.WriteString(p.stdin, "go\n"); err != nil {
			t.Fatal(err)
		}
	}
	tokens := map[string]int{}
	for _, p := range reps {
		for p.out.Scan() && p.out.Text() != "done" {
			f := strings.Fields(p.out.Text())
			if len(f) != 3 || f[0] != "tok" {
				t.Fatalf("replica: %s", p.out.Text())
			}
			tokens[f[1]]++
		}
	}
	if n := issuer.calls.Load(); n != 1 {
		t.Errorf("issuer calls = %d on the cluster, want 1", n)
	}
	if len(tokens) != 1 {
		t.Errorf("%d distinct tokens, want 1", len(tokens))
	}
	total := 0
	for _, n := range tokens {
		total += n
	}
	if total != procs*goroutines {
		t.Errorf("%d callers served, want %d", total, procs*goroutines)
	}
}

// All keys of one token share a slot; users' tokens spread over every
// master; client tokens and invalidation work across nodes.
func TestClusterKeysAndUsers(t *testing.T) {
	cl := redistest.StartCluster(t, 3)
	cc := cl.Client(t)
	ctx := ctxT(t)
	uf := &userFetchers{}
	// 1,000 users is more than the default issuer budget allows in 5 minutes.
	a := newCache(t, cc, newFakeFetcher(time.Hour), fastOpts(WithClientTokens(uf.new, 2000), WithIssuerBudget(0, 0))...)
	b := newCache(t, cl.Client(t), newFakeFetcher(time.Hour), fastOpts(WithClientTokens(uf.new, 2000))...)

	tok, err := a.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	k := protocol.ServerKeys(defaultKeyPrefix, DefaultNamespace)
	slot := cc.ClusterKeySlot(ctx, k.Token).Val()
	for _, key := range []string{k.Lock, k.Fence, k.Failed, k.Channel} {
		if s := cc.ClusterKeySlot(ctx, key).Val(); s != slot {
			t.Errorf("%s is in slot %d, the token in %d", key, s, slot)
		}
	}
	if got, err := b.Token(ctx); err != nil || got.AccessToken != tok.AccessToken {
		t.Fatalf("second replica: %v, %v", got, err)
	}

	const users = 1000
	for i := range users {
		if _, err := clientToken(a, ctx, "user-"+strconv.Itoa(i)); err != nil {
			t.Fatalf("user %d: %v", i, err)
		}
	}
	for i, n := range cl.Nodes {
		c := n.Client(t)
		keys, err := c.DBSize(context.Background()).Result()
		if err != nil {
			t.Fatal(err)
		}
		if keys == 0 {
			t.Errorf("master %d holds no key: users do not spread over slots", i)
		}
		t.Logf("master %d holds %d keys", i, keys)
	}
	if got := uf.calls(); got != users {
		t.Errorf("issuer calls = %d, want %d", got, users)
	}
	// A user's token, shared and invalidated across nodes.
	u1, _ := b.User("user-7")
	first, err := u1.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := u1.Invalidate(ctx, first); err != nil || !ok {
		t.Fatalf("invalidate on the cluster: %v, %v", ok, err)
	}
	eventually(t, "replica a to drop user-7's token", func() bool {
		got, err := clientToken(a, ctx, "user-7")
		return err == nil && got.AccessToken != first.AccessToken
	})
}

// On a cluster the events channel is a shard channel: events stay on the
// shard that owns its slot, reach replicas whatever node they were seeded
// with, for the server token (published by the write script) and users'
// tokens (published after the script: their keys are in other slots), and
// keep reaching them after the slot is resharded to another master.
//
// Delivery is proved by effect: tokens live an hour and the lock TTL is a
// minute, so replica b holds a refreshed token, or drops an invalidated
// one, only if the event reached it.
func TestClusterShardedEventsSurviveResharding(t *testing.T) {
	cl := redistest.StartCluster(t, 3)
	ctx := ctxT(t)
	uf := &userFetchers{}
	seed := 0
	newReplica := func() *Cache {
		// Each replica has its own client, seeded with a different node
		// first; its subscription goes wherever the channel's slot lives.
		addrs := cl.Addrs()
		seed++
		addrs = append(addrs[seed%len(addrs):], addrs[:seed%len(addrs)]...)
		rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
		t.Cleanup(func() { _ = rdb.Close() })
		return newCache(t, rdb, newFakeFetcher(time.Hour),
			fastOpts(WithClientTokens(uf.new, 100), WithTuning(Tuning{LockTTL: time.Minute, ProbeInterval: time.Hour, ProbeTimeout: 2 * time.Second}))...)
	}
	a, b := newReplica(), newReplica()
	if _, err := a.Token(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Token(ctx); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*Cache{a, b} {
		// Each cache asks the cluster once, from its subscriber.
		eventually(t, "sharded pub/sub on a Redis 7 cluster", func() bool { return c.st.ps.Mode() == protocol.ModeSharded })
	}
	k := protocol.ServerKeys(defaultKeyPrefix, DefaultNamespace)
	cc := cl.Client(t)
	slot := int(cc.ClusterKeySlot(ctx, k.Channel).Val())
	owner := cl.Owner(t, slot)
	subscribers := func(node int) (sharded, classic int64) {
		c := cl.Nodes[node].Client(t)
		sn, err := c.PubSubShardNumSub(ctx, k.Channel).Result()
		if err != nil {
			t.Fatal(err)
		}
		n, err := c.PubSubNumSub(ctx, k.Channel).Result()
		if err != nil {
			t.Fatal(err)
		}
		return sn[k.Channel], n[k.Channel]
	}
	eventually(t, "both replicas to SSUBSCRIBE on the owner of the channel's slot", func() bool {
		s, c := subscribers(owner)
		return s == 2 && c == 0
	})

	// refreshReaches: a's forced refresh reaches b by its "refreshed"
	// (published by the write script, in the token's slot).
	refreshReaches := func(when string) {
		t.Helper()
		r, err := a.Refresh(ctx, 0, true)
		if err != nil {
			t.Fatal(err)
		}
		eventually(t, "b to take the token a refreshed "+when, func() bool {
			got, err := b.Token(ctx)
			return err == nil && got.AccessToken == r.Token.AccessToken
		})
	}
	// userEventsReach: a user's refresh and invalidation on a reach b by
	// events published after the scripts (the user's keys are elsewhere).
	userEventsReach := func(user, when string) {
		t.Helper()
		ua, _ := a.User(user)
		ub, _ := b.User(user)
		if _, err := ua.Token(ctx); err != nil {
			t.Fatal(err)
		}
		r, err := ua.Refresh(ctx, 0, true)
		if err != nil {
			t.Fatal(err)
		}
		eventually(t, "b to take "+user+"'s refreshed token "+when, func() bool {
			got, err := ub.Token(ctx)
			return err == nil && got.AccessToken == r.Token.AccessToken
		})
		if ok, err := ua.Invalidate(ctx, r.Token); err != nil || !ok {
			t.Fatalf("invalidate: %v %v", ok, err)
		}
		eventually(t, "b to drop "+user+"'s invalidated token "+when, func() bool {
			got, err := ub.Token(ctx)
			return err == nil && got.AccessToken != r.Token.AccessToken
		})
	}
	refreshReaches("before the resharding")
	userEventsReach("user-1", "before the resharding")

	// Reshard the channel's slot (and the server token's keys with it).
	to := (owner + 1) % len(cl.Nodes)
	resubs := a.Stats().Resubscribes + b.Stats().Resubscribes
	cl.MoveSlot(t, slot, owner, to)
	eventually(t, "both replicas to follow the slot to its new owner", func() bool {
		s, _ := subscribers(to)
		return s == 2
	})
	if s, _ := subscribers(owner); s != 0 {
		t.Errorf("%d subscriptions left on the old owner", s)
	}
	// One re-subscription each, straight to the new owner: not a first
	// attempt on the old one that only the confirmation timeout repairs.
	if n := a.Stats().Resubscribes + b.Stats().Resubscribes - resubs; n != 2 {
		t.Errorf("%d re-subscriptions for two replicas, want 2", n)
	}
	refreshReaches("after the resharding")
	userEventsReach("user-2", "after the resharding")
}

// The pub/sub mode: classic on a single node unless asked (no detection
// command sent), sharded on request there too (Redis 7 has SSUBSCRIBE on
// a single node), and classic on a cluster when told so; in every mode an
// invalidation on one replica reaches the other, for the server token and
// a user's.
func TestPubSubModes(t *testing.T) {
	type setup struct {
		name  string
		rdb   func(t *testing.T) (a, b redis.UniversalClient)
		opts  []Option
		want  protocol.Mode
		watch func(t *testing.T, rdb redis.UniversalClient, channel string) int64
	}
	single := func(t *testing.T) (redis.UniversalClient, redis.UniversalClient) {
		s := redistest.Start(t)
		return s.Client(t), s.Client(t)
	}
	cluster := func(t *testing.T) (redis.UniversalClient, redis.UniversalClient) {
		cl := redistest.StartCluster(t, 3)
		return cl.Client(t), cl.Client(t)
	}
	classicSubs := func(t *testing.T, rdb redis.UniversalClient, ch string) int64 {
		return rdb.PubSubNumSub(context.Background(), ch).Val()[ch]
	}
	shardSubs := func(t *testing.T, rdb redis.UniversalClient, ch string) int64 {
		return rdb.PubSubShardNumSub(context.Background(), ch).Val()[ch]
	}
	for _, s := range []setup{
		{"single node, default", single, nil, protocol.ModeClassic, classicSubs},
		{"single node, sharded asked", single, []Option{withShardedPubSub(true)}, protocol.ModeSharded, shardSubs},
		{"cluster, classic asked", cluster, []Option{withShardedPubSub(false)}, protocol.ModeClassic, classicSubs},
	} {
		t.Run(s.name, func(t *testing.T) {
			ctx := ctxT(t)
			ra, rb := s.rdb(t)
			var cmds atomic.Int64
			ra.AddHook(commandCounter{name: "command", n: &cmds})
			uf := &userFetchers{}
			opts := append(fastOpts(WithClientTokens(uf.new, 10)), s.opts...)
			a := newCache(t, ra, newFakeFetcher(time.Hour), opts...)
			b := newCache(t, rb, newFakeFetcher(time.Hour), opts...)
			tok, err := a.Token(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := b.Token(ctx); err != nil {
				t.Fatal(err)
			}
			eventually(t, "the pub/sub mode", func() bool { return b.st.ps.Mode() == s.want })
			_, _, _, ch := b.Keys()
			eventually(t, "both subscriptions", func() bool { return s.watch(t, rb, ch) == 2 })
			before := b.Stats().Events
			if ok, err := a.Invalidate(ctx, tok); err != nil || !ok {
				t.Fatalf("invalidate: %v %v", ok, err)
			}
			eventually(t, "the invalidation to reach b", func() bool { return b.Stats().Events > before })
			ua, _ := a.User("u")
			ut, err := ua.Token(ctx)
			if err != nil {
				t.Fatal(err)
			}
			before = b.Stats().Events
			if ok, err := ua.Invalidate(ctx, ut); err != nil || !ok {
				t.Fatalf("user invalidate: %v %v", ok, err)
			}
			eventually(t, "the user's invalidation to reach b", func() bool { return b.Stats().Events > before })
			if _, ok := ra.(*redis.Client); ok && cmds.Load() != 0 {
				t.Errorf("%d COMMAND calls on a single node: the mode needs no detection there", cmds.Load())
			}
		})
	}
}

// commandCounter counts the commands with a given name a client sends.
type commandCounter struct {
	name string
	n    *atomic.Int64
}

func (h commandCounter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h commandCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if h.name == "" || cmd.Name() == h.name {
			h.n.Add(1)
		}
		return next(ctx, cmd)
	}
}
func (h commandCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, cmd := range cmds {
			if h.name == "" || cmd.Name() == h.name {
				h.n.Add(1)
			}
		}
		return next(ctx, cmds)
	}
}

// On Redis Cluster a user's token key ("{ns/user}") and the events
// channel ("{ns}") hash to different slots, so no one script may take
// both: client tokens are stored, shared and invalidated there all the
// same, beside the server token.
func TestClusterSharesClientTokens(t *testing.T) {
	s := redistest.Start(t, "--cluster-enabled", "yes", "--cluster-config-file", filepath.Join(t.TempDir(), "nodes.conf"))
	ctx := ctxT(t)
	plain := redis.NewClient(&redis.Options{Addr: s.Addr})
	if err := plain.Do(ctx, "CLUSTER", "ADDSLOTSRANGE", 0, 16383).Err(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "cluster ok", func() bool {
		info, _ := plain.ClusterInfo(ctx).Result()
		return strings.Contains(info, "cluster_state:ok")
	})
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{s.Addr}})
	defer cc.Close()
	defer plain.Close()
	var calls [2]int
	mk := func(i int) *Cache {
		return newCache(t, cc, newFakeFetcher(time.Hour), fastOpts(WithClientTokens(func(u string) (Fetcher, error) {
			calls[i]++
			return newFakeFetcher(time.Hour), nil
		}, 0))...)
	}
	a, b := mk(0), mk(1)
	// The premise: one script over a user's key and the channel is refused.
	if err := cc.Eval(ctx, "return 1", []string{"tokencache:{default/alice}:client", "tokencache:{default}:events"}).Err(); err == nil || !strings.Contains(err.Error(), "CROSSSLOT") {
		t.Fatalf("a script over a user's key and the events channel: %v, want CROSSSLOT", err)
	}
	ta, errA := clientToken(a, ctx, "alice")
	tb, errB := clientToken(b, ctx, "alice")
	n, _ := cc.Exists(ctx, "tokencache:{default/alice}:client").Result()
	t.Logf("errA=%v errB=%v sameToken=%v keyExists=%d", errA, errB, ta.AccessToken == tb.AccessToken, n)
	if n == 0 || ta.AccessToken != tb.AccessToken {
		t.Errorf("client token not shared on cluster")
	}
	u, _ := a.User("alice")
	if _, err := u.Invalidate(ctx, ta); err != nil {
		t.Errorf("Invalidate of a client token on cluster: %v", err)
	}
	// server token works
	if _, err := a.Token(ctx); err != nil {
		t.Errorf("server token: %v", err)
	}
}
