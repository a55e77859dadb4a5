package protocol

import (
	"strings"

	"github.com/redis/go-redis/v9"
)

// Moving reports whether err is what a Redis Cluster says while it
// reshards: a slot that is moving (TRYAGAIN, ASK, or MOVED left over once
// go-redis has followed its redirections). Redis answered: it is not down.
func Moving(err error) bool {
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
	msg := strings.TrimPrefix(err.Error(), "ERR ")
	for _, p := range []string{"TRYAGAIN ", "ASK ", "MOVED "} {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}
