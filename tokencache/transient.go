package tokencache

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// This file is what a Redis Cluster says while it reshards: a slot that
// is moving (TRYAGAIN, ASK, MOVED left over once go-redis has followed its
// redirections). Redis answered: it is not down, so nobody fails open over
// it. A cluster or node that cannot serve at all (CLUSTERDOWN, MASTERDOWN,
// LOADING) may stay so for long: it counts as Redis being down, and
// callers with nothing to serve fail open (WithFailOpen) as before. A caller with nothing to serve waits briefly
// and re-checks Redis (settle); a read that names a key the migrating
// source lacks is made again on the token key alone (readTokenOnly).

// isTransient reports whether err is a cluster's or a node's passing
// refusal rather than Redis being unreachable. The store wraps go-redis
// errors in *RedisError; the helpers below unwrap.
func isTransient(err error) bool {
	if err == nil {
		return false
	}
	if _, ok := redis.IsAskError(err); ok {
		return true
	}
	if _, ok := redis.IsMovedError(err); ok {
		return true
	}
	if redis.IsTryAgainError(err) {
		return true
	}
	// Replies the helpers miss (another client's wrapping of the reply):
	// the reply's first word.
	var re *RedisError
	if errors.As(err, &re) && re.Err != nil {
		msg := strings.TrimPrefix(re.Err.Error(), "ERR ")
		for _, p := range transientReplies {
			if strings.HasPrefix(msg, p) {
				return true
			}
		}
	}
	return false
}

var transientReplies = []string{"TRYAGAIN ", "ASK ", "MOVED "}

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
			"key", e.k.token, "waits", n, "err", err)
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

// readTokenScript is readScript on the token key alone, for a slot that
// is migrating: a script naming a key the source lacks (the failure key
// is usually absent) is sent to the target, which refuses it (TRYAGAIN)
// unless it holds every key, while one naming only the token key is served
// by whichever side holds it. The reply has readScript's shape without
// the failure: a replica reading during a move learns of the fleet's last
// failure by its event or its next read.
//
//	KEYS[1] token key
//	returns {value or nil, pttl ms, "WRONGTYPE" or nil, nil, 0, Redis's
//	        TIME in Unix ms}
var readTokenScript = redis.NewScript(`
local v = redis.pcall('GET', KEYS[1])
local pttl = redis.call('PTTL', KEYS[1])
local bad = false
if type(v) == 'table' and v.err then
  v, bad = false, 'WRONGTYPE'
end
` + redisNowLua + `
return {v, pttl, bad, false, 0, now}
`)

// readTokenOnly runs readTokenScript after readScript failed with err, if
// err is transient; otherwise it returns err.
func readTokenOnly(ctx context.Context, rdb redis.Scripter, key string, err error) ([]any, error) {
	if !isTransient(err) {
		return nil, err
	}
	return readTokenScript.Run(ctx, rdb, []string{key}).Slice()
}
