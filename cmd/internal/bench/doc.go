// Package bench measures tokencache against the strategies people use
// today to share an API token among replicas, side by side in one run:
//
//   - oauth2: a per-replica in-memory cache, golang.org/x/oauth2's
//     ReuseTokenSource, as the Basiq samples do it;
//   - gocache: github.com/go-redis/cache/v9 Once, a shared Redis value with
//     in-process singleflight and no cross-replica lock;
//   - redsync: a shared Redis value guarded by a redsync lock, waiters
//     polling Redis every 50 ms;
//   - tokencache (defaults) and tokencache-min (the settings that send the
//     fewest Redis commands).
//
// Each cell of the run (a strategy at N replicas) starts N replicas against
// one redis-server and one fake issuer with a fixed latency, lets callers
// ask for the token continuously, and reports issuer calls per renewal and
// per lifetime, time-to-token percentiles, Redis commands per replica per
// lifetime (from INFO commandstats) and CPU time. Replicas are goroutines
// with their own go-redis client, or separate OS processes (the binary
// re-executes itself as a child).
//
// cmd/tokencache-bench is the thin main; Main is the whole program.
package bench
