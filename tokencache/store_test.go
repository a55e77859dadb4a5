package tokencache

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// slotMoving refuses the scripts sent on one key, as a cluster whose slot
// is moving refuses them (TRYAGAIN: the script did not run), while armed
// is set and until it has refused left of them (or for ever).
type slotMoving struct {
	key     string
	forever bool
	armed   *atomic.Bool
	left    *atomic.Int64
	refused *atomic.Int64
}

func (h slotMoving) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h slotMoving) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		args := cmd.Args()
		name := strings.ToLower(cmd.Name())
		if h.armed.Load() && (name == "evalsha" || name == "eval") && len(args) > 3 && args[3] == h.key {
			if h.forever || h.left.Add(-1) >= 0 {
				h.refused.Add(1)
				err := errors.New("TRYAGAIN Multiple keys request during rehashing of slot")
				cmd.SetErr(err)
				return err
			}
		}
		return next(ctx, cmd)
	}
}
func (h slotMoving) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// armingFetcher arms the hook's refusals when the issuer is called: what
// follows the issuer call (the write under the lock) meets the moving slot.
type armingFetcher struct {
	*fakeFetcher
	arm *atomic.Bool
}

func (f armingFetcher) Fetch(ctx context.Context) (Token, error) {
	tok, err := f.fakeFetcher.Fetch(ctx)
	f.arm.Store(true)
	return tok, err
}

func newSlotMoving(t *testing.T, left int64) (redis.UniversalClient, slotMoving) {
	rdb, _ := realBackend(t)
	h := slotMoving{key: "tokencache:{default}:server", forever: left < 0, armed: new(atomic.Bool), left: new(atomic.Int64), refused: new(atomic.Int64)}
	h.left.Store(left)
	rdb.AddHook(h)
	return rdb, h
}

func TestAMovingSlotIsWaitedOutBelowTheCoreAndIsNoError(t *testing.T) {
	t.Run("a caller's read", func(t *testing.T) {
		rdb, h := newSlotMoving(t, 5)
		f := newFakeFetcher(time.Hour)
		c := newCache(t, rdb, f, fastOpts()...)
		h.armed.Store(true)
		tok, err := c.Token(ctxT(t))
		if err != nil || tok.AccessToken == "" {
			t.Fatalf("Token through a moving slot: %v", err)
		}
		st := c.Stats()
		if h.refused.Load() != 5 || st.TransientWaits == 0 || st.RedisErrors != 0 || st.FailOpen != 0 || f.calls.Load() != 1 {
			t.Errorf("refused %d; stats %+v, issuer calls %d: want 5 refusals waited out, no Redis error, no fail-open, one issuer call",
				h.refused.Load(), st, f.calls.Load())
		}
	})
	t.Run("the write under the lock", func(t *testing.T) {
		rdb, h := newSlotMoving(t, 4)
		f := newFakeFetcher(time.Hour)
		c := newCache(t, rdb, armingFetcher{f, h.armed}, fastOpts()...)
		tok, err := c.Token(ctxT(t))
		if err != nil {
			t.Fatalf("Token whose write met a moving slot: %v", err)
		}
		st := c.Stats()
		if h.refused.Load() != 4 || st.RedisErrors != 0 || f.calls.Load() != 1 {
			t.Errorf("refused %d; stats %+v, issuer calls %d: want 4 refusals waited out, no Redis error, one issuer call",
				h.refused.Load(), st, f.calls.Load())
		}
		// Stored for the fleet, not only served from memory.
		other := newCache(t, rdb, f, fastOpts()...)
		if got, err := other.Token(ctxT(t)); err != nil || got.AccessToken != tok.AccessToken || f.calls.Load() != 1 {
			t.Errorf("another replica got %v (same: %v), issuer calls %d: the token was not stored", err, got.AccessToken == tok.AccessToken, f.calls.Load())
		}
	})
	t.Run("a slot that keeps moving until the refresh's bound", func(t *testing.T) {
		rdb, h := newSlotMoving(t, -1)
		f := newFakeFetcher(time.Hour)
		c := newCache(t, rdb, f, fastOpts(WithRefreshTimeout(time.Second), WithFailOpen(true))...)
		h.armed.Store(true)
		_, err := c.Token(context.Background())
		var re *RedisError
		if !errors.Is(err, ErrUnavailable) || !errors.As(err, &re) || errors.Is(err, ErrRedisUnavailable) {
			t.Fatalf("Token while the slot moves for good: %v; want ErrUnavailable wrapping the store's *RedisError", err)
		}
		st := c.Stats()
		if st.RedisErrors != 1 || st.FailOpen != 0 || f.calls.Load() != 0 || st.TransientWaits < 2 {
			t.Errorf("stats %+v, issuer calls %d: want the one error counted once, waits before it, and no fail-open (Redis answered)",
				st, f.calls.Load())
		}
	})
}
