package tokencache

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/tokencache/internal/protocol"
)

// signal is a broadcast that waiters cannot miss: a waiter takes the
// current channel before it re-checks Redis, and every fire closes that
// channel and installs a new one.
type signal struct {
	mu  sync.Mutex // guards ch, seq
	ch  chan struct{}
	seq uint64
}

func newSignal() *signal { return &signal{ch: make(chan struct{})} }

// arm returns the channel closed by the next fire and the current sequence.
func (s *signal) arm() (<-chan struct{}, uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ch, s.seq
}

func (s *signal) fire() {
	s.mu.Lock()
	close(s.ch)
	s.ch = make(chan struct{})
	s.seq++
	s.mu.Unlock()
}

// subscriber owns the one pub/sub connection of a Cache. It dispatches
// events to the cache and tells it about every (re-)subscription, after
// which everything learnt from events must be re-checked in Redis.
type subscriber struct {
	c         *Cache
	ready     chan struct{} // closed on the first confirmed subscription
	readyOnce sync.Once
	suspect   chan struct{} // an event seems to have been missed; cap 1
}

// suspectSubscription asks the subscriber to probe its subscription now:
// the replica found in Redis a change whose event it should have heard
// (a newer token under the lock, a waiter that the re-check woke instead
// of the event). A probe costs one PUBLISH; a dead subscription is then
// replaced within the probe timeout, whatever the probe interval.
func (s *subscriber) suspectSubscription() {
	c := s.c
	select {
	case c.sub.suspect <- struct{}{}:
	default:
	}
}

// runSubscriber owns the cache's one subscription. Besides dispatching
// events it proves the subscription alive: go-redis's health check only
// writes a PING and never notices a half-open connection that swallows
// messages. Any message received is proof of life; after a quiet
// probeInterval the cache publishes a probe to its own channel, and if
// that does not come back within probeTimeout it drops the connection and
// subscribes again.
//
// Every replica hears every probe, so one probe per interval proves the
// whole fleet's subscriptions. To keep it at one, the fleet has a probe
// leader: the replica with the smallest origin among the probes heard in
// the last two intervals (until one is heard, every replica thinks it
// leads). The leader probes after a quiet interval; the others wait a
// fifth of an interval longer (more than the timer's jitter), so they
// probe only when the leader's probe did not
// reach them: the leader is gone (the next election follows), or their own
// subscription is dead (and their probe does not come back either).
//
// A (re-)subscription must be confirmed within probeTimeout too. In a
// cluster with sharded pub/sub, the server ends a shard channel's
// subscriptions when its slot moves to another node (a resharding, a
// failover): the cache then reloads the slot map and subscribes again, on
// the new owner.
func (s *subscriber) runSubscriber(ctx context.Context) {
	c := s.c
	defer c.wg.Done()
	if !c.st.ps.Resolve(ctx) {
		return
	}
	ps, msgs := c.sub.subscribe(ctx)
	defer func() { _ = ps.Close() }()

	lastHeard := time.Now()
	// probeSent is when a probe went out, or a subscription was asked for,
	// that has not come back yet; zero when nothing is outstanding.
	probeSent := lastHeard
	var leader string // smallest origin of the recent probes
	var leaderHeard time.Time
	quiet := func(now time.Time) time.Duration {
		if leader == "" || c.origin <= leader || now.Sub(leaderHeard) > 2*c.cfg.probeInterval {
			return c.cfg.probeInterval
		}
		return c.cfg.probeInterval * 6 / 5
	}
	// wait is how long an outstanding probe or subscription may take. It
	// doubles with each failed attempt in a row (Redis is down: go-redis
	// keeps dialling meanwhile), up to the probe interval.
	fails := 0
	wait := func() time.Duration {
		return min(c.cfg.probeTimeout<<min(fails, 6), max(c.cfg.probeInterval, c.cfg.probeTimeout))
	}
	tick := time.NewTimer(wait())
	defer tick.Stop()
	// schedule sets the timer for the next check: the outstanding probe's
	// deadline, or the end of the quiet time.
	// The quiet time is spread by a tenth of the interval; a deadline by a
	// tenth of itself (a tenth of an hour-long interval would be minutes).
	schedule := func(now time.Time) {
		next := quiet(now) - now.Sub(lastHeard) + jitter(c.cfg.probeInterval/10)
		if !probeSent.IsZero() {
			next = wait() - now.Sub(probeSent) + jitter(wait()/10)
		}
		tick.Reset(max(next, 10*time.Millisecond))
	}
	probeRefused := false // logged once
	var probeErr error    // why the last probe could not be sent, if it could not
	// probe publishes a probe to our own channel. One that could not be
	// sent counts as sent: if it does not come back, subscribing again is
	// harmless. One the server refused (an ACL without +publish) proves
	// nothing either way: skip this round rather than re-subscribe.
	probe := func(now time.Time) {
		pctx, cancel := context.WithTimeout(ctx, c.cfg.probeTimeout)
		err := c.st.publish(pctx, c.channel, protocol.Event{Type: protocol.EventProbe, Key: c.channel, Origin: c.origin})
		cancel()
		var rerr redis.Error
		probeErr = err // the reason to give if the probe does not come back
		if err != nil && errors.As(err, &rerr) {
			if !probeRefused {
				probeRefused = true
				c.log().Warn("tokencache: Redis refused the subscription probe; a silent subscription will not be detected", "channel", c.channel, "err", err)
			}
			lastHeard = now
		} else {
			probeSent = now
		}
	}
	// pending: the old subscription is closed and a new one is due when
	// the timer fires (msgs is nil meanwhile).
	pending := false
	subscribeAgain := func(now time.Time) {
		ps, msgs = c.sub.subscribe(ctx)
		probeSent, lastHeard = now, now
		tick.Reset(wait())
	}
	resubscribe := func(why string, after time.Duration) {
		c.stats.resubscribes.Add(1)
		c.log().Warn("tokencache: subscribing again", "channel", c.channel, "reason", why, "attempt", fails+1)
		_ = ps.Close()
		c.st.ps.Reload(ctx)
		if after > 0 {
			// Give the cluster client time to load the new slot map first:
			// subscribing with the old one would ask the old owner.
			pending, msgs = true, nil
			tick.Reset(jitter(after))
			return
		}
		subscribeAgain(time.Now())
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			now := time.Now()
			if pending {
				pending = false
				subscribeAgain(now)
				continue
			}
			switch {
			case !probeSent.IsZero() && now.Sub(probeSent) >= wait():
				fails++
				why := "the subscription delivered nothing, not even our probe"
				if probeErr == nil {
					// Nothing was published: ask whether Redis answers at all.
					pctx, cancel := context.WithTimeout(ctx, c.cfg.probeTimeout)
					probeErr = c.rdb.Ping(pctx).Err()
					cancel()
				}
				var rerr redis.Error
				if probeErr != nil && !errors.As(probeErr, &rerr) {
					why = "Redis unreachable: " + probeErr.Error()
				}
				resubscribe(why, 0)
				continue
			case probeSent.IsZero() && now.Sub(lastHeard) >= quiet(now):
				probe(now)
			}
			schedule(now)
		case <-c.sub.suspect:
			// Probed at once, by this replica whoever leads: it is our
			// subscription that is in doubt.
			if now := time.Now(); probeSent.IsZero() && !pending {
				probe(now)
				schedule(now)
			}
		case m, ok := <-msgs:
			if !ok {
				return
			}
			lastHeard = time.Now()
			switch v := m.(type) {
			case *redis.Subscription:
				switch v.Kind {
				case "subscribe", "ssubscribe":
					probeSent, fails = time.Time{}, 0
					schedule(lastHeard)
					c.sub.readyOnce.Do(func() { close(c.sub.ready) })
					c.sub.onSubscribed()
				case "sunsubscribe", "unsubscribe":
					// We never unsubscribe: the server did (the slot moved).
					resubscribe("the server ended the subscription ("+v.Kind+")", slotMapDelay)
				}
			case *redis.Message:
				ev, ok := protocol.DecodeEvent(v.Payload)
				if !ok {
					continue
				}
				if ev.Type == protocol.EventProbe {
					if leader == "" || ev.Origin <= leader || lastHeard.Sub(leaderHeard) > 2*c.cfg.probeInterval {
						leader, leaderHeard = ev.Origin, lastHeard
					}
					if ev.Origin == c.origin && !probeSent.IsZero() {
						probeSent, fails = time.Time{}, 0
						schedule(lastHeard)
					}
					continue
				}
				c.onEvent(ev)
			}
		}
	}
}

func (s *subscriber) subscribe(ctx context.Context) (*redis.PubSub, <-chan any) {
	c := s.c
	ps := c.st.ps.Subscribe(ctx, c.channel)
	return ps, ps.ChannelWithSubscriptions(
		redis.WithChannelSize(256),
		redis.WithChannelHealthCheckInterval(c.cfg.pubsubHealth),
	)
}

// slotMapDelay is how long the cache waits, after the server ended its
// subscription because the channel's slot moved, before subscribing again.
const slotMapDelay = 200 * time.Millisecond

// waitSubscribed waits, at most d, for the first confirmed subscription.
func (s *subscriber) waitSubscribed(ctx context.Context, d time.Duration) bool {
	c := s.c
	select {
	case <-c.sub.ready:
		return true
	default:
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-c.sub.ready:
		return true
	case <-t.C:
	case <-ctx.Done():
	}
	return false
}
