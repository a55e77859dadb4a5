package tokencache

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/time/rate"
)

// Default issuer budget: at most 300 token requests per 5 minutes for the
// whole fleet sharing a namespace, a fifth of Basiq's 1,500 per 5 minutes,
// so that a fleet looping through faults can never exhaust the API key's
// rate limit for everything else that uses it.
const (
	defaultBudgetLimit  = 300
	defaultBudgetWindow = 5 * time.Minute
)

// ErrBudgetExhausted is wrapped by the error returned when the fleet-wide
// issuer budget (WithIssuerBudget) allows no more calls in this window.
var ErrBudgetExhausted = errors.New("tokencache: issuer budget exhausted")

// WithIssuerBudget caps the issuer calls of every replica sharing the
// namespace at limit per window, counted in Redis (the key
// "<prefix>:{<namespace>}:budget"); while Redis is unreachable each
// process keeps to the same rate on its own. limit 0 disables the budget.
// Default 300 per 5 minutes (Basiq allows 1,500). Every issuer call of
// the namespace counts, per-user client tokens included: an application
// that mints many client tokens at once (a cold start with a thousand
// users) should raise the limit toward its issuer's own (Basiq: 1,500 per
// 5 minutes per API key).
func WithIssuerBudget(limit int, window time.Duration) Option {
	return func(c *config) error {
		if limit < 0 || (limit > 0 && window <= 0) {
			return fmt.Errorf("tokencache: invalid issuer budget %d per %v", limit, window)
		}
		c.budgetLimit, c.budgetWindow = limit, window
		return nil
	}
}

// budgetLua counts one issuer call in a fixed window: KEYS[kb] is the
// budget key, ARGV[ab] the limit and ARGV[ab+1] the window in ms. It
// sets {allowed 1|0, ms until the window resets, calls counted} in the
// local "spent", which the script declares before it. The refresh's begin script (store.go) runs it too, so
// that a refresh takes its first issuer call's budget in the same round
// trip as its fencing generation.
func budgetLua(kb, ab int) string {
	return fmt.Sprintf(`
do
  local n = redis.call('INCR', KEYS[%[1]d])
  local ttl = redis.call('PTTL', KEYS[%[1]d])
  if ttl < 0 then
    redis.call('PEXPIRE', KEYS[%[1]d], ARGV[%[3]d])
    ttl = tonumber(ARGV[%[3]d])
  end
  local allowed = 1
  if n > tonumber(ARGV[%[2]d]) then allowed = 0 end
  spent = {allowed, ttl, n}
end
`, kb, ab, ab+1)
}

// budgetScript counts one issuer call in a fixed window.
//
//	KEYS[1] budget key
//	ARGV[1] limit, ARGV[2] window ms
//	returns {allowed 1|0, ms until the window resets, calls counted}
var budgetScript = redis.NewScript("local spent\n" + budgetLua(1, 1) + "return spent\n")

// budget is the cache's issuer budget.
type budget struct {
	key    string
	limit  int
	window time.Duration
	local  *rate.Limiter // while Redis is unreachable
}

func newBudget(key string, limit int, window time.Duration) *budget {
	if limit == 0 {
		return nil
	}
	return &budget{key: key, limit: limit, window: window,
		local: rate.NewLimiter(rate.Every(window/time.Duration(limit)), max(1, limit/10))}
}

// budgetError says the budget is spent until the window resets. It is
// retryable after RetryAfter.
type budgetError struct {
	reset time.Duration
	local bool
}

func (e *budgetError) Error() string {
	where := "fleet-wide"
	if e.local {
		where = "in this process (redis unreachable)"
	}
	return fmt.Sprintf("%v %s; next call allowed in %v", ErrBudgetExhausted, where, e.reset.Round(time.Millisecond))
}
func (e *budgetError) Unwrap() error             { return ErrBudgetExhausted }
func (e *budgetError) Retryable() bool           { return true }
func (e *budgetError) RetryAfter() time.Duration { return e.reset }
func (e *budgetError) ErrorCode() string         { return "issuer-budget-exhausted" }

// take spends one call from the budget, or says when the next is allowed.
// With redisDown (the caller just failed to reach Redis) it goes straight
// to the per-process limiter instead of waiting out another Redis timeout.
func (c *Cache) takeBudget(ctx context.Context, redisDown bool) error {
	b := c.budget
	if b == nil {
		return nil
	}
	var res []int64
	var err error
	if !redisDown {
		res, err = budgetScript.Run(ctx, c.rdb, []string{b.key}, b.limit, b.window.Milliseconds()).Int64Slice()
		if err == nil && len(res) != 3 {
			err = fmt.Errorf("unexpected script reply of %d elements", len(res))
		}
		if err != nil {
			// Counted and said: the fleet-wide budget is off until this
			// works again (Redis down, or an ACL without the commands).
			c.stats.redisErrors.Add(1)
			c.log().Warn("tokencache: issuer budget unavailable; keeping to it in this process", "key", b.key, "err", err)
		}
	}
	if redisDown || err != nil {
		r := b.local.Reserve()
		if d := r.Delay(); d > 0 {
			r.Cancel()
			return &budgetError{reset: d, local: true}
		}
		return nil
	}
	return c.spent(res)
}

// spent turns a budget count, {allowed 1|0, ms until the window resets,
// calls counted}, into the verdict on one issuer call.
func (c *Cache) spent(res []int64) error {
	c.stats.budgetLeft.Store(max(0, int64(c.budget.limit)-res[2]))
	if res[0] == 0 {
		return &budgetError{reset: time.Duration(res[1]) * time.Millisecond}
	}
	return nil
}
