package protocol

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// PubSub decides how a cache publishes and subscribes to its events
// channel: classic PUBLISH/SUBSCRIBE, or sharded SPUBLISH/SSUBSCRIBE.
//
// In a Redis Cluster a classic PUBLISH is copied to every node over the
// cluster bus; a sharded one stays on the shard that owns the channel's
// slot, which is where its subscribers are. So on a *redis.ClusterClient
// whose servers have sharded pub/sub (Redis 7.0+) the cache uses it, unless
// told otherwise; on a single node or Sentinel it uses classic pub/sub,
// which every tool (redis-cli SUBSCRIBE) understands.
//
// A script may only SPUBLISH to a channel in the slot of its keys: the
// server token's keys share the channel's hash tag, a user's do not. For
// those the script leaves the event to the caller, which publishes it
// right after (see command).
type PubSub struct {
	rdb  redis.UniversalClient
	mode atomic.Int32 // a Mode; ModeAuto until known
	log  *slog.Logger
}

// Mode is how events are published.
type Mode int32

// The modes. ModeAuto, given to NewPubSub, asks a cluster's servers
// whether they have sharded pub/sub; as a PubSub's Mode it means the
// answer is not known yet.
const (
	ModeAuto Mode = iota
	ModeClassic
	ModeSharded
)

// NewPubSub returns the pub/sub of rdb in mode want: ModeAuto is sharded
// on a cluster whose servers have it, classic elsewhere. Warnings (a
// publish the server refused or that failed) go to log.
func NewPubSub(rdb redis.UniversalClient, want Mode, log *slog.Logger) *PubSub {
	p := &PubSub{rdb: rdb, log: log}
	_, cluster := rdb.(*redis.ClusterClient)
	switch {
	case want == ModeSharded:
		p.mode.Store(int32(ModeSharded))
	case want == ModeClassic || !cluster:
		p.mode.Store(int32(ModeClassic))
	}
	return p
}

// Mode is the mode in use: ModeAuto while it is not known yet.
func (p *PubSub) Mode() Mode { return Mode(p.mode.Load()) }

// Sharded reports whether events go over sharded pub/sub, asking the
// server once (COMMAND INFO SPUBLISH) on a cluster in auto mode. ok is
// false when that question could not be answered yet; the answer is then
// classic for this call and asked again next time.
func (p *PubSub) Sharded(ctx context.Context) (sharded, ok bool) {
	switch p.Mode() {
	case ModeSharded:
		return true, true
	case ModeClassic:
		return false, true
	}
	res, err := p.rdb.Do(ctx, "COMMAND", "INFO", "SPUBLISH").Slice()
	// A server without the command answers nil for it; one that refuses the
	// question (an ACL without +command|info, a proxy or server without
	// COMMAND INFO) gets classic pub/sub. No answer (Redis down) or a
	// passing state (LOADING, CLUSTERDOWN, ...) is asked again later.
	var rerr redis.Error
	if err != nil && (!errors.As(err, &rerr) || passing(err)) {
		return false, false
	}
	m := ModeClassic
	if err == nil && len(res) == 1 && res[0] != nil {
		m = ModeSharded
	}
	p.mode.CompareAndSwap(int32(ModeAuto), int32(m))
	return p.Mode() == ModeSharded, true
}

// passing reports whether a Redis error reply describes a passing state.
func passing(err error) bool {
	msg := strings.ToUpper(err.Error())
	for _, p := range []string{"LOADING", "CLUSTERDOWN", "TRYAGAIN", "MASTERDOWN", "BUSY", "MOVED", "ASK "} {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}

// Resolve waits until the publish mode is known, asking again with a
// growing pause while Redis cannot answer. It is false only when ctx ends.
func (p *PubSub) Resolve(ctx context.Context) bool {
	pause := 100 * time.Millisecond
	for {
		if _, ok := p.Sharded(ctx); ok {
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

// jitter spreads d by ±25%.
func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return d
	}
	return d*3/4 + time.Duration(rand.Int64N(int64(d)/2+1))
}

// command is the publish command a script on k's keys should run, or ""
// with after set when the caller must publish the script's event itself:
// the keys are in another slot than the channel, or the mode is not known
// yet (then the event goes out both ways, so that nobody misses it).
func (p *PubSub) command(ctx context.Context, k Keys) (cmd string, after bool) {
	s, ok := p.Sharded(ctx)
	switch {
	case !ok:
		return "", true
	case !s:
		return "PUBLISH", false
	case k.NSSlot:
		return "SPUBLISH", false
	}
	return "", true
}

// Publish sends payload on channel the way events are published. While
// the mode is not known it goes out both ways, and one that went out is
// enough.
func (p *PubSub) Publish(ctx context.Context, channel string, payload []byte) error {
	s, ok := p.Sharded(ctx)
	switch {
	case !ok:
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
func (p *PubSub) publishAfter(ctx context.Context, channel string, payload []byte) {
	if len(payload) == 0 {
		return
	}
	if err := p.Publish(ctx, channel, payload); err != nil {
		p.log.Warn("tokencache: could not publish an event; replicas will see the change at their next read", "channel", channel, "err", err)
	}
}

// afterScript finishes the publishing of a script that changed a token:
// publish its event now (after), or log that the server refused the
// script's own publish (published false).
func (p *PubSub) afterScript(ctx context.Context, channel, cmd string, after bool, payload []byte, published bool) {
	switch {
	case after:
		p.publishAfter(ctx, channel, payload)
	case !published:
		p.log.Warn("tokencache: Redis refused to publish an event (check the ACL for +publish or +spublish); replicas will see the change at their next read",
			"channel", channel, "command", cmd)
	}
}

// Subscribe subscribes to channel the way events are published.
func (p *PubSub) Subscribe(ctx context.Context, channel string) *redis.PubSub {
	if s, _ := p.Sharded(ctx); s {
		return p.rdb.SSubscribe(ctx, channel)
	}
	return p.rdb.Subscribe(ctx, channel)
}

// Reload asks a cluster client to refresh its slot map: after a shard
// channel's slot moved, or a subscription that stays silent.
func (p *PubSub) Reload(ctx context.Context) {
	if cc, ok := p.rdb.(*redis.ClusterClient); ok {
		cc.ReloadState(ctx)
	}
}
