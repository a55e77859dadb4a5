package tokencache

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/internal/redistest"
)

// Sentinel failover during steady traffic: callers keep being served from
// memory, the library follows the new master, and the issuer is called at
// most once more.
func TestSentinelFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a master, a replica and three sentinels")
	}
	master := redistest.Start(t)
	replica := redistest.Start(t, "--replicaof", "127.0.0.1", strings.Split(master.Addr, ":")[1])
	var sentinels []string
	for range 3 {
		sentinels = append(sentinels, redistest.StartSentinel(t, "tc", master.Addr).Addr)
	}
	ctx := ctxT(t)
	failover := func() redis.UniversalClient {
		c := redis.NewFailoverClient(&redis.FailoverOptions{MasterName: "tc", SentinelAddrs: sentinels,
			DialTimeout: 500 * time.Millisecond, ReadTimeout: time.Second, WriteTimeout: time.Second})
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	f := newFakeFetcher(time.Hour)
	var caches []*Cache
	var clients []redis.UniversalClient
	for range 3 {
		clients = append(clients, failover())
		// go-redis leaves a subscription on the demoted master after a
		// failover: the probe is what moves it, so keep it short here.
		caches = append(caches, newCache(t, clients[len(clients)-1], f,
			fastOpts(WithTuning(Tuning{ProbeInterval: 300 * time.Millisecond, ProbeTimeout: 300 * time.Millisecond}))...))
	}
	// following reports whether every replica's client talks to server.
	following := func(server *redistest.Server) bool {
		port := "tcp_port:" + strings.Split(server.Addr, ":")[1] + "\r"
		for _, c := range clients {
			info, err := c.Info(context.Background(), "server").Result()
			if err != nil || !strings.Contains(info, port) {
				return false
			}
		}
		return true
	}
	tok, err := caches[0].Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rc := replica.Client(t)
	eventually(t, "the token to reach the replica", func() bool {
		return rc.Exists(ctx, "tokencache:{default}:server").Val() == 1
	})

	// traffic keeps every replica asking, every millisecond, until the
	// returned stop is called; a call that fails, or (want not empty)
	// returns another token, counts in errs; one served at or past its
	// Expiry counts in expired, through every phase.
	var calls, errs, expired atomic.Int64
	traffic := func(want string) (stop func()) {
		done := make(chan struct{})
		var wg sync.WaitGroup
		for _, c := range caches {
			wg.Go(func() {
				for {
					select {
					case <-done:
						return
					default:
					}
					got, err := c.Token(ctx)
					if err != nil || want != "" && got.AccessToken != want {
						errs.Add(1)
					}
					if err == nil && !got.Expiry.After(time.Now()) {
						expired.Add(1)
					}
					calls.Add(1)
					time.Sleep(time.Millisecond) // the callers' pace
				}
			})
		}
		return func() { close(done); wg.Wait() }
	}

	// Steady traffic across the failover.
	stop := traffic(tok.AccessToken)
	sc := redis.NewSentinelClient(&redis.Options{Addr: sentinels[0]})
	defer sc.Close()
	if err := sc.Failover(ctx, "tc").Err(); err != nil {
		t.Fatalf("SENTINEL FAILOVER: %v", err)
	}
	eventually(t, "the sentinels to promote the replica", func() bool {
		addr, err := sc.GetMasterAddrByName(ctx, "tc").Result()
		return err == nil && len(addr) == 2 && addr[0]+":"+addr[1] == replica.Addr
	})
	eventually(t, "the new master to accept writes", func() bool {
		info, err := rc.Info(ctx, "replication").Result()
		return err == nil && strings.Contains(info, "role:master")
	})
	// Some traffic on the new topology: every client has moved to the
	// new master, and the callers went on through it.
	eventually(t, "every replica's client to follow the new master", func() bool { return following(replica) })
	promoted := calls.Load()
	eventually(t, "some traffic on the new topology", func() bool { return calls.Load() >= promoted+100 })
	stop()
	if n := errs.Load(); n != 0 {
		t.Errorf("%d of %d calls failed or changed token across the failover, want 0", n, calls.Load())
	}

	// The library follows the new master: a refresh lands there and every
	// replica picks it up.
	res, err := caches[1].Refresh(ctx, 0, true)
	if err != nil {
		t.Fatalf("refresh after the failover: %v", err)
	}
	if v := rc.Get(ctx, "tokencache:{default}:server").Val(); !strings.Contains(v, res.Token.AccessToken) {
		t.Fatalf("the refreshed token is not on the new master")
	}
	for _, c := range caches {
		eventually(t, "every replica to follow the new master", func() bool {
			got, err := c.Token(context.Background())
			return err == nil && got.AccessToken == res.Token.AccessToken
		})
	}
	if got := f.calls.Load(); got > 3 {
		t.Errorf("issuer calls = %d, want at most 3 (first, at most one lost to the failover, the forced refresh)", got)
	}

	// A failover back to the first server while a refresh is in flight:
	// the holder's write lands on the new master or, refused by the
	// demoted one, is served from memory and written back. Callers keep
	// being served, the fleet converges on one token, and the issuer is
	// called at most once more than the refresh itself.
	ctx = ctxT(t) // a fresh bound for this phase
	mc := master.Client(t)
	before := f.calls.Load()
	f.setDelay(time.Second)
	done := make(chan error, 1)
	go func() { _, err := caches[2].Refresh(ctx, 0, true); done <- err }()
	eventually(t, "the refresh to reach the issuer", func() bool { return f.calls.Load() > before })
	errs.Store(0)
	reads := func() uint64 { return total(caches, func(s Stats) uint64 { return s.RedisReads }) }
	readsBefore := reads()
	stop = traffic("")
	eventually(t, "the sentinels to accept a failover back", func() bool {
		return sc.Failover(ctx, "tc").Err() == nil
	})
	eventually(t, "the first server to be master again", func() bool {
		info, err := mc.Info(ctx, "replication").Result()
		return err == nil && strings.Contains(info, "role:master")
	})
	if err := <-done; err != nil {
		t.Errorf("refresh across the failover: %v", err)
	}
	f.setDelay(0)
	eventually(t, "every replica's client to follow the failover back", func() bool { return following(master) })
	// The demoted server may not have caught up before it was promoted
	// back (replication is asynchronous): Redis may then hold an older,
	// still valid token than the replicas' memory. Either is a valid token;
	// the next refresh puts the fleet on one again, on the new master.
	res, err = caches[0].Refresh(ctx, 0, true)
	if err != nil {
		t.Fatalf("refresh on the new master: %v", err)
	}
	if v := mc.Get(ctx, "tokencache:{default}:server").Val(); !strings.Contains(v, res.Token.AccessToken) {
		t.Fatalf("the refreshed token is not on the new master")
	}
	for _, c := range caches {
		eventually(t, "every replica to take the new master's token", func() bool {
			got, err := c.Token(ctx)
			return err == nil && got.AccessToken == res.Token.AccessToken
		})
	}
	stop()
	// Redis may now hold an older token than memory (asynchronous
	// replication): callers asking every millisecond must not turn that
	// into a read per call.
	if n := reads() - readsBefore; n > 100 {
		t.Errorf("%d Redis reads by 3 replicas across the failover: a read storm", n)
	}
	if n := errs.Load(); n != 0 {
		t.Errorf("%d calls failed across the failover during a refresh", n)
	}
	if got := f.calls.Load() - before; got > 3 {
		t.Errorf("issuer calls = %d for a refresh across a failover and one after, want at most 3", got)
	}
	if n := expired.Load(); n != 0 {
		t.Errorf("%d of %d calls across the failovers returned a token at or past its expiry", n, calls.Load())
	}
}
