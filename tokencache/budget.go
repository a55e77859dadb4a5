package tokencache

import (
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/time/rate"

	"github.com/tokencache/tokencache/tokencache/internal/protocol"
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
// 5 minutes per API key). A tenth of the limit (at least one call) is
// reserved for the server token: users' client tokens are refused once the
// rest is spent, so that per-user churn cannot starve the token every
// replica needs. A refused call is not counted.
func WithIssuerBudget(limit int, window time.Duration) Option {
	return func(c *config) error {
		if limit < 0 || (limit > 0 && window <= 0) {
			return fmt.Errorf("tokencache: invalid issuer budget %d per %v", limit, window)
		}
		c.budgetLimit, c.budgetWindow = limit, window
		return nil
	}
}

// budget is the cache's issuer budget.
type budget struct {
	key    string
	limit  int
	window time.Duration
	local  *rate.Limiter // while Redis is unreachable
	// users is the budget of users' client tokens: the same count, held
	// to limit less the share reserved for the server token, so that
	// per-user churn (a client asking for a new user's token in a loop)
	// cannot starve the token every replica's own calls need. Nil on the
	// users' budget itself.
	users *budget
}

// The budget's limit counts every call of the namespace; the server
// token's calls may spend all of it, users' client tokens all but a tenth
// (serverReserve).

// serverReserve is the share of the issuer budget only the server token
// may spend: a tenth, at least one call.
func serverReserve(limit int) int { return max(1, limit/10) }

func newBudget(key string, limit int, window time.Duration) *budget {
	if limit == 0 {
		return nil
	}
	b := &budget{key: key, limit: limit, window: window,
		local: rate.NewLimiter(rate.Every(window/time.Duration(limit)), max(1, limit/10))}
	if ul := limit - serverReserve(limit); ul > 0 {
		b.users = &budget{key: key, limit: ul, window: window,
			local: rate.NewLimiter(rate.Every(window/time.Duration(ul)), max(1, ul/10))}
	} else {
		// A budget of one call: nothing is left for users.
		b.users = &budget{key: key, limit: 0, window: window, local: rate.NewLimiter(0, 0)}
	}
	return b
}

// budgetFor is the budget the token of keys k spends from: the whole
// budget for the server token, the users' share for a user's.
func (c *Cache) budgetFor(k keys) *budget {
	if c.budget == nil || k.Token == c.server.k.Token {
		return c.budget
	}
	return c.budget.users
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

// takeBudget spends one call of the token of keys k from the budget (see
// budgetFor), or says when the next is allowed. With redisDown (the caller
// just failed to reach Redis) it goes straight to the per-process limiter
// instead of waiting out another Redis timeout.
func (c *Cache) takeBudget(ctx context.Context, k keys, redisDown bool) error {
	b := c.budgetFor(k)
	if b == nil {
		return nil
	}
	var res protocol.Budget
	var err error
	if !redisDown {
		res, err = c.st.takeBudget(ctx, protocol.BudgetSpec{Key: b.key, Limit: b.limit, Window: b.window})
		if err != nil {
			// Counted (by the store) and said: the fleet-wide budget is off
			// until this works again (Redis down, or an ACL without the
			// commands).
			c.log().Warn("tokencache: issuer budget unavailable; keeping to it in this process", "key", b.key, "err", err)
		}
	}
	if redisDown || err != nil {
		r := b.local.Reserve()
		if d := r.Delay(); d > 0 {
			r.Cancel()
			return &budgetError{reset: d, local: true}
		}
		if b != c.budget {
			// A user's call spends its share and the whole process's.
			all := c.budget.local.Reserve()
			if d := all.Delay(); d > 0 {
				all.Cancel()
				r.Cancel()
				return &budgetError{reset: d, local: true}
			}
		}
		return nil
	}
	return c.spent(res)
}

// spent turns the budget's verdict on one issuer call into an error, and
// keeps Stats.BudgetLeft (not for a call counted by an earlier try, whose
// count the reply does not carry).
func (c *Cache) spent(b protocol.Budget) error {
	if b.Counted > 0 {
		c.stats.budgetLeft.Store(max(0, int64(c.budget.limit)-b.Counted))
	}
	if !b.Allowed {
		return &budgetError{reset: b.ResetIn}
	}
	return nil
}
