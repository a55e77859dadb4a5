package tokencache

import (
	"context"
	"errors"
	"time"

	"github.com/tokencache/tokencache/tokencache/internal/protocol"
)

// This file is what a Redis Cluster says while it reshards: a slot that
// is moving (TRYAGAIN, ASK, MOVED left over once go-redis has followed its
// redirections). Redis answered: it is not down, so nobody fails open over
// it. A cluster or node that cannot serve at all (CLUSTERDOWN, MASTERDOWN,
// LOADING) may stay so for long: it counts as Redis being down, and
// callers with nothing to serve fail open (WithFailOpen) as before. A caller with nothing to serve waits briefly
// and re-checks Redis (settle); a read that names a key the migrating
// source lacks is made again on the token key alone (protocol.Client.Read).

// isTransient reports whether err is a cluster's or a node's passing
// refusal rather than Redis being unreachable (protocol.Moving), through
// the store's *RedisError.
func isTransient(err error) bool {
	if protocol.Moving(err) {
		return true
	}
	var re *RedisError
	return errors.As(err, &re) && protocol.Moving(re.Err)
}

// transientWait is the mean wait before re-checking after a transient
// error (jittered ±25%): a slot's keys usually move within milliseconds.
const transientWait = 100 * time.Millisecond

// settle waits out a transient error (see isTransient) so that the caller
// re-checks Redis instead of failing open. It reports false, at once, for
// any other error, and when ctx ends during the wait: the caller's usual
// handling then applies (redisDown never fails open on a transient
// error). Waits are counted in Stats.TransientWaits and logged at debug
// level on the 1st, 2nd, 4th, 8th… of a Cache.
func (e *entry) settle(ctx context.Context, err error) bool {
	if !isTransient(err) {
		return false
	}
	if n := e.c.stats.transient.Add(1); n&(n-1) == 0 {
		e.c.log().Debug("tokencache: redis cluster slot moving or node not ready; waiting and re-checking",
			"key", e.k.Token, "waits", n, "err", err)
	}
	t := time.NewTimer(jitter(min(transientWait, e.c.cfg.waitRecheck)))
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
