package tokencache

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// pubsub decides how a cache publishes and subscribes to its events
// channel: classic PUBLISH/SUBSCRIBE, or sharded SPUBLISH/SSUBSCRIBE.
//
// In a Redis Cluster a classic PUBLISH is copied to every node over the
// cluster bus; a sharded one stays on the shard that owns the channel's
// slot, which is where its subscribers are. So on a *redis.ClusterClient
// whose servers have sharded pub/sub (Redis 7.0+) the cache uses it, unless
// told otherwise (WithShardedPubSub); on a single node or Sentinel it uses
// classic pub/sub, which every tool (redis-cli SUBSCRIBE) understands.
//
// A script may only SPUBLISH to a channel in the slot of its keys: the
// server token's keys share the channel's hash tag, a user's do not. For
// those the script leaves the event to the caller, which publishes it
// right after (see command).
type pubsub struct {
	rdb  redis.UniversalClient
	want int8         // 0 auto, 1 sharded, -1 classic (WithShardedPubSub)
	mode atomic.Int32 // 0 not yet known, 1 classic, 2 sharded
	log  *slog.Logger
}

const (
	modeUnknown int32 = iota
	modeClassic
	modeSharded
)

func newPubSub(rdb redis.UniversalClient, want int8, log *slog.Logger) *pubsub {
	p := &pubsub{rdb: rdb, want: want, log: log}
	_, cluster := rdb.(*redis.ClusterClient)
	switch {
	case want > 0:
		p.mode.Store(modeSharded)
	case want < 0 || !cluster:
		p.mode.Store(modeClassic)
	}
	return p
}

// sharded reports whether events go over sharded pub/sub, asking the
// server once (COMMAND INFO SPUBLISH) on a cluster in auto mode. ok is
// false when that question could not be answered yet; the answer is then
// classic for this call and asked again next time.
func (p *pubsub) sharded(ctx context.Context) (sharded, ok bool) {
	switch p.mode.Load() {
	case modeSharded:
		return true, true
	case modeClassic:
		return false, true
	}
	res, err := p.rdb.Do(ctx, "COMMAND", "INFO", "SPUBLISH").Slice()
	// A server without the command answers nil for it; one that refuses the
	// question (an ACL without +command|info, a proxy or server without
	// COMMAND INFO) gets classic pub/sub. No answer (Redis down) or a
	// passing state (LOADING, CLUSTERDOWN, ...) is asked again later.
	var rerr redis.Error
	if err != nil && (!errors.As(err, &rerr) || transient(err)) {
		return false, false
	}
	m := modeClassic
	if err == nil && len(res) == 1 && res[0] != nil {
		m = modeSharded
	}
	p.mode.CompareAndSwap(modeUnknown, m)
	return p.mode.Load() == modeSharded, true
}

// transient reports whether a Redis error reply describes a passing state.
func transient(err error) bool {
	msg := strings.ToUpper(err.Error())
	for _, p := range []string{"LOADING", "CLUSTERDOWN", "TRYAGAIN", "MASTERDOWN", "BUSY", "MOVED", "ASK "} {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}

// resolve waits until the publish mode is known, asking again with a
// growing pause while Redis cannot answer. It is false only when ctx ends.
func (p *pubsub) resolve(ctx context.Context) bool {
	pause := 100 * time.Millisecond
	for {
		if _, ok := p.sharded(ctx); ok {
			return true
		}
		t := time.NewTimer(jitter(pause))
		select {
		case <-ctx.Done():
			t.Stop()
			return false
		case <-t.C:
		}
		pause = min(2*pause, 5*time.Second)
	}
}

// command is the publish command a script on k's keys should run, or ""
// with after set when the caller must publish the script's event itself:
// the keys are in another slot than the channel, or the mode is not known
// yet (then the event goes out both ways, so that nobody misses it).
func (p *pubsub) command(ctx context.Context, k keys) (cmd string, after bool) {
	s, ok := p.sharded(ctx)
	switch {
	case !ok:
		return "", true
	case !s:
		return "PUBLISH", false
	case k.nsSlot:
		return "SPUBLISH", false
	}
	return "", true
}

func (p *pubsub) publish(ctx context.Context, channel string, payload []byte) error {
	s, ok := p.sharded(ctx)
	switch {
	case !ok:
		// Not known yet: both ways, and one that went out is enough.
		serr := p.rdb.SPublish(ctx, channel, payload).Err()
		if perr := p.rdb.Publish(ctx, channel, payload).Err(); perr != nil && serr != nil {
			return perr
		}
		return nil
	case s:
		return p.rdb.SPublish(ctx, channel, payload).Err()
	}
	return p.rdb.Publish(ctx, channel, payload).Err()
}

// publishAfter publishes the event of a script that could not. The write
// stands either way; a lost event costs listeners what their next read
// finds, so a failure is logged, not returned.
func (p *pubsub) publishAfter(ctx context.Context, channel string, payload []byte) {
	if len(payload) == 0 {
		return
	}
	if err := p.publish(ctx, channel, payload); err != nil {
		p.log.Warn("tokencache: could not publish an event; replicas will see the change at their next read", "channel", channel, "err", err)
	}
}

// afterScript finishes the publishing of a script that changed a token:
// publish its event now (after), or log that the server refused the
// script's own publish (the event is then marked with a leading "!").
func (p *pubsub) afterScript(ctx context.Context, channel, cmd string, after bool, payload string) {
	switch {
	case after:
		p.publishAfter(ctx, channel, []byte(payload))
	case strings.HasPrefix(payload, "!"):
		p.refused(channel, cmd)
	}
}

// refused logs a publish command the server refused inside a script.
func (p *pubsub) refused(channel, cmd string) {
	p.log.Warn("tokencache: Redis refused to publish an event (check the ACL for +publish or +spublish); replicas will see the change at their next read",
		"channel", channel, "command", cmd)
}

// subscribe subscribes to channel the way events are published.
func (p *pubsub) subscribe(ctx context.Context, channel string) *redis.PubSub {
	if s, _ := p.sharded(ctx); s {
		return p.rdb.SSubscribe(ctx, channel)
	}
	return p.rdb.Subscribe(ctx, channel)
}

// reload asks a cluster client to refresh its slot map: after a shard
// channel's slot moved, or a subscription that stays silent.
func (p *pubsub) reload(ctx context.Context) {
	if cc, ok := p.rdb.(*redis.ClusterClient); ok {
		cc.ReloadState(ctx)
	}
}
