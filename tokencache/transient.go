package tokencache

import (
	"errors"
	"time"

	"github.com/tokencache/tokencache/tokencache/internal/protocol"
)

// This file is what a Redis Cluster says while it reshards: a slot that
// is moving (TRYAGAIN, ASK, MOVED left over once go-redis has followed its
// redirections). Redis answered: it is not down, so nobody fails open over
// it. A cluster or node that cannot serve at all (CLUSTERDOWN, MASTERDOWN,
// LOADING) may stay so for long: it counts as Redis being down, and
// callers with nothing to serve fail open (WithFailOpen) as before. The
// store waits briefly and sends the command again (store.do) until the
// caller's context ends; a read that names a key the migrating source
// lacks is made again on the token key alone (protocol.Client.Read).

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

// transientWait is the mean wait before trying again after a transient
// error (jittered ±25%): a slot's keys usually move within milliseconds.
const transientWait = 100 * time.Millisecond
