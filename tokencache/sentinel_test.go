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
	for range 3 {
		caches = append(caches, newCache(t, failover(), f, fastOpts()...))
	}
	tok, err := caches[0].Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rc := replica.Client(t)
	eventually(t, "the token to reach the replica", func() bool {
		return rc.Exists(ctx, "tokencache:{default}:server").Val() == 1
	})

	// Steady traffic across the failover.
	stop := make(chan struct{})
	var calls, errs atomic.Int64
	var wg sync.WaitGroup
	for _, c := range caches {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if got, err := c.Token(ctx); err != nil || got.AccessToken != tok.AccessToken {
					errs.Add(1)
				}
				calls.Add(1)
				time.Sleep(time.Millisecond)
			}
		}()
	}
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
	time.Sleep(300 * time.Millisecond) // some traffic on the new topology
	close(stop)
	wg.Wait()
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
}
