package bench

import (
	"context"
	"encoding/json"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// holdRecorder measures, for tokencache replicas, how long after a
// refresh each replica holds the new token: from the moment the refresh's
// write script is sent to the moment a replica's read script returns the
// new generation (a replica serves from memory what its last read
// returned, so that is when it holds the token). It watches commands
// through a go-redis hook on each replica's client, by the scripts'
// shapes: the write script has 3 keys and the generation as its second
// argument, the read script 2 keys and no argument.
type holdRecorder struct {
	mu     sync.Mutex
	writes map[int64]time.Time         // generation -> write sent
	seen   map[int64]map[int]time.Time // generation -> replica -> first held
}

func newHoldRecorder() *holdRecorder {
	return &holdRecorder{writes: map[int64]time.Time{}, seen: map[int64]map[int]time.Time{}}
}

// hook returns the hook for replica i.
func (h *holdRecorder) hook(i int) redis.Hook { return holdHook{h: h, i: i} }

func (h *holdRecorder) held(gen int64, i int, at time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	m := h.seen[gen]
	if m == nil {
		m = map[int]time.Time{}
		h.seen[gen] = m
	}
	if _, ok := m[i]; !ok {
		m[i] = at
	}
}

func (h *holdRecorder) wrote(gen int64, at time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.writes[gen]; !ok {
		h.writes[gen] = at
	}
}

// HoldStats summarises the delays from refresh to holding, for the
// refreshes whose write was sent in [from, to).
type HoldStats struct {
	Refreshes int           `json:"refreshes"` // refreshes measured
	P50       time.Duration `json:"p50_ns"`    // over every replica and refresh
	P99       time.Duration `json:"p99_ns"`
	Last      time.Duration `json:"last_ns"` // worst "last replica to hold it" over the refreshes
	Missed    int           `json:"missed"`  // replica-refreshes never held (a newer token came first)
}

func (h *holdRecorder) stats(from, to time.Time, n int) HoldStats {
	h.mu.Lock()
	defer h.mu.Unlock()
	var st HoldStats
	var all []time.Duration
	for gen, w := range h.writes {
		if w.Before(from) || !w.Before(to) {
			continue
		}
		st.Refreshes++
		var last time.Duration
		for i := range n {
			at, ok := h.seen[gen][i]
			if !ok {
				st.Missed++
				continue
			}
			d := max(at.Sub(w), 0)
			all = append(all, d)
			last = max(last, d)
		}
		st.Last = max(st.Last, last)
	}
	if len(all) > 0 {
		slices.Sort(all)
		st.P50 = all[len(all)/2]
		st.P99 = all[min(len(all)-1, len(all)*99/100)]
	}
	return st
}

type holdHook struct {
	h *holdRecorder
	i int
}

func (k holdHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (k holdHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func (k holdHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		sent := time.Now()
		err := next(ctx, cmd)
		if err != nil || (cmd.Name() != "evalsha" && cmd.Name() != "eval") {
			return err
		}
		args := cmd.Args()
		if len(args) < 3 {
			return err
		}
		switch nkeys := toInt(args[2]); {
		case nkeys == 3 && len(args) == 12: // the write script
			if c, ok := cmd.(*redis.Cmd); ok {
				if res, _ := c.Int64Slice(); len(res) >= 2 && res[0] == 1 {
					gen := toInt(args[7])
					k.h.wrote(gen, sent)
					k.h.held(gen, k.i, time.Now())
				}
			}
		case nkeys == 2 && len(args) == 5: // the read script
			if c, ok := cmd.(*redis.Cmd); ok {
				if res, _ := c.Slice(); len(res) > 0 {
					if v, ok := res[0].(string); ok {
						var rec struct {
							Generation int64 `json:"generation"`
						}
						if json.Unmarshal([]byte(v), &rec) == nil && rec.Generation > 0 {
							k.h.held(rec.Generation, k.i, time.Now())
						}
					}
				}
			}
		}
		return err
	}
}

func toInt(v any) int64 {
	switch x := v.(type) {
	case int:
		return int64(x)
	case int64:
		return x
	case string:
		n, _ := strconv.ParseInt(x, 10, 64)
		return n
	}
	return -1
}
