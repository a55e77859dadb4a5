package bench

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
)

// cmdCounter counts the commands replicas send, by name, through a
// go-redis hook. Commands a Lua script runs inside Redis are not sent and
// not counted here (INFO commandstats counts them); the commands of a
// pub/sub connection (SUBSCRIBE, its health-check PING) bypass hooks and
// are taken from commandstats instead.
type cmdCounter struct {
	m sync.Map // command name -> *atomic.Int64
}

var _ redis.Hook = (*cmdCounter)(nil)

func (c *cmdCounter) add(name string) {
	v, ok := c.m.Load(name)
	if !ok {
		v, _ = c.m.LoadOrStore(name, new(atomic.Int64))
	}
	v.(*atomic.Int64).Add(1)
}

// snapshot returns the counts so far.
func (c *cmdCounter) snapshot() CommandStats {
	out := CommandStats{}
	if c == nil {
		return out
	}
	c.m.Range(func(k, v any) bool {
		out[k.(string)] = v.(*atomic.Int64).Load()
		return true
	})
	return out
}

// DialHook passes dials through.
func (c *cmdCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

// ProcessHook counts one command.
func (c *cmdCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.add(cmd.Name())
		return next(ctx, cmd)
	}
}

// ProcessPipelineHook counts each command of a pipeline or transaction.
func (c *cmdCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, cmd := range cmds {
			c.add(cmd.Name())
		}
		return next(ctx, cmds)
	}
}

// pubsubCommands are sent on pub/sub connections, which bypass hooks:
// their counts come from INFO commandstats. (Nothing else in a cell sends
// PING.)
var pubsubCommands = []string{"subscribe", "unsubscribe", "ssubscribe", "sunsubscribe", "psubscribe", "punsubscribe", "ping"}

// sentCommands merges what the hooks counted with the pub/sub commands
// of the server-side delta.
func sentCommands(hooked, server CommandStats) CommandStats {
	out := CommandStats{}
	for k, v := range hooked {
		if v > 0 {
			out[k] = v
		}
	}
	for _, k := range pubsubCommands {
		if v := server[k]; v > 0 {
			out[k] += v
		}
	}
	return out
}
