package tokencache

import (
	"context"
	"sync"

	"github.com/redis/go-redis/v9"
)

type nameCounter struct {
	mu *sync.Mutex
	m  map[string]int
}

func (h nameCounter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h nameCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.mu.Lock()
		n := cmd.Name()
		if n == "evalsha" || n == "eval" {
			n += ":" + cmd.Args()[1].(string)[:6]
		}
		h.m[n]++
		h.mu.Unlock()
		return next(ctx, cmd)
	}
}
func (h nameCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
