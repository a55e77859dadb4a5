package faulttest

import (
	"context"
	"encoding/json"
	"flag"
	"os"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/internal/testutil"
	"github.com/tokencache/tokencache/tokencache"
)

var soakFor = flag.Duration("soak", 20*time.Second, "how long TestSoak injects faults (CI runs the default; try -soak=2m)")

func TestMain(m *testing.M) {
	if os.Getenv(replicaEnv) != "" {
		os.Exit(replicaMain())
	}
	os.Exit(m.Run())
}

// newCache returns an in-process replica with its own Redis client at addr
// and its own issuer client; everything is closed when the test ends.
func newCache(t testing.TB, addr string, cfg config, extra ...tokencache.Option) *tokencache.Cache {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	f := newHTTPFetcher(cfg.Issuer, cfg.FetchTimeout)
	c, err := tokencache.New(rdb, f, append(cfg.options(), extra...)...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		_ = c.Close()
		_ = rdb.Close()
		f.close()
	})
	return c
}

// waitSubscribers waits until the events channel has at least n
// subscribers: every replica started so far is listening.
func waitSubscribers(t testing.TB, rdb redis.UniversalClient, channel string, n int64) {
	t.Helper()
	testutil.Eventually(t, "replicas to subscribe", func() bool {
		m, err := rdb.PubSubNumSub(context.Background(), channel).Result()
		return err == nil && m[channel] >= n
	})
}

// fingerprint is tokencache's fingerprint of an access token.
func fingerprint(access string) string {
	return tokencache.Token{AccessToken: access}.Fingerprint()
}

func ctxFor(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func jsonUnmarshal(s string, v any) error { return json.Unmarshal([]byte(s), v) }
