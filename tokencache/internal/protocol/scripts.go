package protocol

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// This file holds every Lua script the cache runs, each beside the Go
// method that runs it and decodes its reply into a typed result. A script
// answers with a status word first ("stored", "fenced", ...) and the
// values that status carries; nothing else travels up.
//
// Redis 5 and later replicate a script's effects, not the script, so a
// script may read TIME and then write.

// Client runs the protocol on one Redis deployment, publishing events the
// way its PubSub says. It is safe for concurrent use.
type Client struct {
	rdb redis.UniversalClient
	ps  *PubSub
}

// NewClient returns the protocol over rdb, publishing through ps.
func NewClient(rdb redis.UniversalClient, ps *PubSub) *Client {
	return &Client{rdb: rdb, ps: ps}
}

// FenceMargin is how long a fencing counter outlives the token written
// under it. Every key the cache writes expires, so a fleet whose users come
// and go leaves nothing behind in Redis; a counter that expired is
// re-derived from the stored token's generation by the next refresh
// (Begin lifts it past the generation it is given).
const FenceMargin = 10 * time.Minute

// redisNowLua sets the local "now" to Redis's own clock in Unix ms, or 0
// if the ACL refuses TIME (a rule written for an earlier release): then
// freshness falls back to the key's PTTL alone.
const redisNowLua = `local t = redis.pcall('TIME')
local now = 0
if type(t) == 'table' and t[1] then now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) end`

// stampLua is the value ARGV[1] with Redis's TIME added as stored_ms (a
// JSON object's closing brace replaced), or as it is without a TIME.
const stampLua = `local val = ARGV[1]
if now > 0 then val = string.sub(ARGV[1], 1, -2) .. ',"stored_ms":' .. string.format('%.0f', now) .. '}' end`

// readScript returns the value, its PTTL and the fleet's last refresh
// failure (if still in its back-off window) in one round trip.
//
//	KEYS[1] token key, KEYS[2] failure key
//	returns {value or nil, pttl ms, "WRONGTYPE" or nil, failure JSON or nil,
//	        failure pttl ms, Redis's TIME in Unix ms (0: TIME refused)}
var readScript = redis.NewScript(`
local v = redis.pcall('GET', KEYS[1])
local pttl = redis.call('PTTL', KEYS[1])
local f = redis.pcall('GET', KEYS[2])
if type(f) ~= 'string' then f = false end
local fttl = 0
if f then fttl = redis.call('PTTL', KEYS[2]) end
local bad = false
if type(v) == 'table' and v.err then
  v, bad = false, 'WRONGTYPE'
end
` + redisNowLua + `
return {v, pttl, bad, f, fttl, now}
`)

// readTokenScript is readScript on the token key alone, for a slot that
// is migrating: a script naming a key the source lacks (the failure key
// is usually absent) is sent to the target, which refuses it (TRYAGAIN)
// unless it holds every key, while one naming only the token key is served
// by whichever side holds it. The reply has readScript's shape without
// the failure: a replica reading during a move learns of the fleet's last
// failure by its event or its next read.
//
//	KEYS[1] token key
//	returns {value or nil, pttl ms, "WRONGTYPE" or nil, nil, 0, Redis's
//	        TIME in Unix ms}
var readTokenScript = redis.NewScript(`
local v = redis.pcall('GET', KEYS[1])
local pttl = redis.call('PTTL', KEYS[1])
local bad = false
if type(v) == 'table' and v.err then
  v, bad = false, 'WRONGTYPE'
end
` + redisNowLua + `
return {v, pttl, bad, false, 0, now}
`)

// ReadResult is one read of a token key.
type ReadResult struct {
	// Record is the stored record when Found or Stale.
	Record Record
	// PTTL is how long the token is still served, on Redis's clock: the
	// key's PTTL, capped by the value's own stored_ms + ttl_ms (a PEXPIRE,
	// or a node whose clock lags, can stretch a key's TTL, never a token's
	// life).
	PTTL  time.Duration
	Found bool         // a usable record
	Stale bool         // a record whose key outlives its token's life: a miss, not garbage
	Bad   *RecordError // the key holds garbage: a miss
	// Failure is the fleet's last refresh failure, while in its window,
	// which ends FailureTTL from now (on Redis's clock).
	Failure    *Failure
	FailureTTL time.Duration
	// TimeRefused: Redis refused TIME (an ACL rule without +time), so
	// PTTL is the key's alone.
	TimeRefused bool
}

// Read fetches the value at key, its PTTL and the fleet's last failure in
// one round trip, and judges the value at now (the local clock, a guard
// only: see MaxClockSkew). A missing key, one without a TTL, or one
// holding garbage is not Found (Bad says why for garbage); only Redis
// failures are errors. While a cluster slot moves, the read is made again
// on the token key alone.
func (c *Client) Read(ctx context.Context, key string, now time.Time) (ReadResult, error) {
	res, err := readScript.Run(ctx, c.rdb, []string{key, key + FailedSuffix}).Slice()
	if Moving(err) {
		res, err = readTokenScript.Run(ctx, c.rdb, []string{key}).Slice()
	}
	if err != nil {
		return ReadResult{}, err
	}
	d := decoder{script: "read", res: res}
	v, pttlMS, bad, f, fttlMS, redisNow := d.res6()
	if d.err != nil {
		return ReadResult{}, d.err
	}
	out := ReadResult{PTTL: time.Duration(pttlMS) * time.Millisecond, TimeRefused: redisNow == 0}
	if f != nil && fttlMS > 0 {
		if fl, ok := DecodeFailure(*f); ok {
			out.Failure, out.FailureTTL = &fl, time.Duration(fttlMS)*time.Millisecond
		}
	}
	if bad {
		out.Bad = &RecordError{Key: key, Reason: "not a string value"}
		return out, nil
	}
	if v == nil {
		return out, nil // missing
	}
	rec, err := DecodeRecord(key, []byte(*v))
	if err != nil {
		out.Bad = err.(*RecordError)
		return out, nil
	}
	if pttlMS <= 0 {
		// -1: no TTL (a hand edit); the token's age could never be judged.
		out.Bad = &RecordError{Key: key, Reason: "key has no TTL"}
		return out, nil
	}
	if exp, _ := rec.Expiry(); exp.Before(now.Add(-MaxClockSkew)) {
		out.Bad = &RecordError{Key: key, Reason: "expires_at is in the past"}
		return out, nil
	}
	if out.PTTL > rec.Lifetime()+MaxClockSkew {
		out.Bad = &RecordError{Key: key, Reason: "TTL outlives the token"}
		return out, nil
	}
	if rec.StoredMS > 0 && rec.TTLMS > 0 && redisNow > 0 {
		left := time.Duration(rec.StoredMS+rec.TTLMS-redisNow) * time.Millisecond
		out.PTTL = min(out.PTTL, left)
	}
	out.Record = rec
	if out.PTTL <= 0 {
		// The key outlives its token: stale, not garbage. It counts as
		// missing, and the refresh under the lock replaces it.
		out.Stale = true
		return out, nil
	}
	out.Found = true
	return out, nil
}

// Remember stores the fleet's last refresh failure at k.Failed for window.
func (c *Client) Remember(ctx context.Context, k Keys, f Failure, window time.Duration) error {
	b, err := json.Marshal(f)
	if err != nil {
		return err
	}
	return c.rdb.Set(ctx, k.Failed, b, window).Err()
}

// MarkAccepted records that the API accepted the token with fingerprint
// tokenFP stored under k with generation gen, for ttl (the token's
// remaining life), unless it is recorded already.
func (c *Client) MarkAccepted(ctx context.Context, k Keys, gen int64, tokenFP string, ttl time.Duration) error {
	return c.rdb.SetNX(ctx, k.AcceptedKey(gen), tokenFP, ttl).Err()
}

// Accepted reports whether the API is recorded to have accepted the token
// with fingerprint tokenFP stored under k with generation gen.
func (c *Client) Accepted(ctx context.Context, k Keys, gen int64, tokenFP string) (bool, error) {
	v, err := c.rdb.Get(ctx, k.AcceptedKey(gen)).Result()
	if err == redis.Nil {
		return false, nil
	}
	return err == nil && v == tokenFP, err
}

// Publish sends ev on channel the way events are published.
func (c *Client) Publish(ctx context.Context, channel string, ev Event) error {
	b, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	return c.ps.Publish(ctx, channel, b)
}

// writeScript stores a token only if its writer still holds the lease it
// drew its fencing generation under and that generation is current. It
// is idempotent: a write that already landed (the client retried it after
// a lost reply) is reported as replayed, not as fenced out.
//
//	KEYS[1] token key, KEYS[2] fence key, KEYS[3] failure key (deleted on
//	success), KEYS[4] lock key
//	ARGV[1] value JSON (an object without stored_ms: the script adds
//	Redis's TIME), ARGV[2] generation, ARGV[3] TTL ms, ARGV[4] event JSON,
//	ARGV[5] events channel (a channel, not a key: a user's keys live in
//	another cluster slot than the namespace's channel), ARGV[6] the publish
//	command (PUBLISH or SPUBLISH; empty: the caller publishes, see PubSub),
//	ARGV[7] the lease's value at the lock key, ARGV[8] the fence's TTL ms,
//	ARGV[9] the token's fingerprint
//	returns {"stored", generation, published 1|0, stored ms} written
//	        (published 0: the server refused the publish command, after
//	        the write, which stands),
//	        {"replayed", generation, stored ms} this write had already landed,
//	        {"fenced", fence} a newer lease drew a generation,
//	        {"stale", stored generation} the stored value has the same or a
//	        newer generation (a real token, or a hand edit the caller judged
//	        garbage),
//	        {"lease-lost"} another owner holds the lock
var writeScript = redis.NewScript(`
local gen = tonumber(ARGV[2])
local fence = tonumber(redis.call('GET', KEYS[2]))
local cur = redis.pcall('GET', KEYS[1])
local rec = false
if type(cur) == 'string' then
  local ok, r = pcall(cjson.decode, cur)
  if ok and type(r) == 'table' then rec = r end
end
if rec and rec.generation == gen and rec.token_fp == ARGV[9] then
  return {'replayed', gen, tonumber(rec.stored_ms) or 0}
end
if fence and fence > gen then return {'fenced', fence} end
local holder = redis.call('GET', KEYS[4])
if holder and holder ~= ARGV[7] then return {'lease-lost'} end
if rec and type(rec.generation) == 'number' and rec.generation >= gen then
  return {'stale', rec.generation}
end
` + redisNowLua + `
` + stampLua + `
redis.call('SET', KEYS[1], val, 'PX', ARGV[3])
redis.call('DEL', KEYS[3])
redis.call('SET', KEYS[2], gen, 'PX', ARGV[8])
local published = 1
if ARGV[6] ~= '' and type(redis.pcall(ARGV[6], ARGV[5], ARGV[4])) == 'table' then published = 0 end
return {'stored', gen, published, now}
`)

// WriteResult is what Write decided.
type WriteResult struct {
	// Stored: the token is stored, by this call or by an earlier try of
	// it (Replayed).
	Stored   bool
	Replayed bool
	// FencedBy is the generation that refused the write: a newer lease's
	// or a stored token's (Stale); 0 when stored or when the lease was lost.
	FencedBy int64
	// Stale: the stored value has the same or a newer generation (as
	// opposed to a newer lease having drawn one).
	Stale bool
	// LeaseLost: another owner holds the lock.
	LeaseLost bool
	// StoredMS is Redis's TIME when the token was stored (0: TIME refused).
	StoredMS int64
}

// Write stores rec (as it is stored: sealed, without stored_ms) at k.Token
// for ttl if the lease whose lock value is lease still holds k.Lock and
// rec's generation is current, and publishes ev ("refreshed").
func (c *Client) Write(ctx context.Context, k Keys, rec Record, ttl time.Duration, ev Event, lease string) (WriteResult, error) {
	val, err := json.Marshal(rec)
	if err != nil {
		return WriteResult{}, err
	}
	evb, err := json.Marshal(ev)
	if err != nil {
		return WriteResult{}, err
	}
	cmd, after := c.ps.command(ctx, k)
	res, err := writeScript.Run(ctx, c.rdb, []string{k.Token, k.Fence, k.Failed, k.Lock},
		val, rec.Generation, ttl.Milliseconds(), evb, k.Channel, cmd, lease,
		(ttl + FenceMargin).Milliseconds(), rec.TokenFP).Slice()
	if err != nil {
		return WriteResult{}, err
	}
	d := decoder{script: "write", res: res}
	var w WriteResult
	switch status := d.status(); status {
	case "stored":
		d.int(1)
		published := d.int(2) == 1
		w = WriteResult{Stored: true, StoredMS: d.int(3)}
		if d.err == nil {
			c.ps.afterScript(ctx, k.Channel, cmd, after, evb, published)
		}
	case "replayed":
		d.int(1)
		w = WriteResult{Stored: true, Replayed: true, StoredMS: d.int(2)}
		if d.err == nil {
			// Where the caller publishes (not the script), the first
			// try's event may not have gone out: send it now.
			c.ps.afterScript(ctx, k.Channel, cmd, after, evb, true)
		}
	case "fenced":
		w = WriteResult{FencedBy: d.int(1)}
	case "stale":
		w = WriteResult{FencedBy: d.int(1), Stale: true}
	case "lease-lost":
		w = WriteResult{LeaseLost: true}
	default:
		d.unknown(status)
	}
	if d.err != nil {
		return WriteResult{}, d.err
	}
	return w, nil
}

// budgetLua counts one issuer call in a fixed window: KEYS[kb] is the
// budget key, ARGV[ab] the limit and ARGV[ab+1] the window in ms. A call
// refused is not counted (the count it would have had is returned): a
// caller held to a lower limit than another's (a user's token, below the
// share reserved for the server token) cannot push the count past the
// other's. It sets {allowed 1|0, ms until the window resets, calls
// counted (with this one)} in the
// local "spent", which the script declares before it. beginScript runs it
// too, so that a refresh takes its first issuer call's budget in the same
// round trip as its fencing generation.
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
  if n > tonumber(ARGV[%[2]d]) then
    allowed = 0
    redis.call('DECR', KEYS[%[1]d])
  end
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

// Budget is the verdict of the fleet's issuer budget on one issuer call.
type Budget struct {
	Allowed bool          // the call may go ahead
	ResetIn time.Duration // until the window resets
	// Counted is the number of calls counted in the window, this one
	// included; 0 when this call was counted by an earlier try of the
	// same Begin (a replay), which allowed it.
	Counted int64
	// Uncountable: Redis could not count the call (the budget key holds
	// another type); nothing else is meaningful.
	Uncountable bool
}

// BudgetSpec is a fleet-wide issuer budget: at most Limit calls per
// Window, counted at Key.
type BudgetSpec struct {
	Key    string
	Limit  int
	Window time.Duration
}

// TakeBudget counts one issuer call in b's window.
func (c *Client) TakeBudget(ctx context.Context, b BudgetSpec) (Budget, error) {
	res, err := budgetScript.Run(ctx, c.rdb, []string{b.Key}, b.Limit, b.Window.Milliseconds()).Slice()
	if err != nil {
		return Budget{}, err
	}
	d := decoder{script: "budget", res: res}
	d.length(3)
	out := Budget{Allowed: d.int(0) == 1, ResetIn: time.Duration(d.int(1)) * time.Millisecond, Counted: d.int(2)}
	if d.err != nil {
		return Budget{}, d.err
	}
	return out, nil
}

// beginScript starts a refresh the lease holder has decided on, in one
// round trip: it draws the lease's fencing generation (lifted past the
// stored token's when the counter fell behind it: evicted, or lost in a
// failover), counts the first issuer call in the fleet's budget when the
// budget key shares the token's slot, and announces "refreshing" when the
// fleet still has a valid token to serve meanwhile.
//
// Only the lease holder draws: the script checks that the lock key still
// holds the lease's value (a holder paused past its lease must not draw a
// generation above the new holder's). It is idempotent per lease: the
// generation drawn is remembered at the drawn key for the lease's life,
// and a retried call (the client resent it after a lost reply) returns it
// again without counting or announcing twice.
//
//	KEYS[1] fence key, KEYS[2] lock key, KEYS[3] drawn key, KEYS[4]
//	budget key (absent: not counted here)
//	ARGV[1] the generation to draw above (the stored token's, or a newer
//	one held in memory; 0: none), ARGV[2] budget limit,
//	ARGV[3] budget window ms, ARGV[4] event JSON (generation filled in by
//	the script; empty: no announcement), ARGV[5] events channel, ARGV[6]
//	the publish command (empty: the caller publishes), ARGV[7] the lease's
//	value, ARGV[8] the fence's minimum TTL ms
//	returns {"lease-lost"} another owner holds the lock,
//	        {"replayed", generation} this lease drew it already,
//	        {"drawn", generation, budget "none"|"counted"|"uncountable",
//	        allowed 1|0, ms until the budget window resets, calls counted,
//	        event JSON (empty: none), published 1|0 (0: the server refused
//	        the publish command)}
var beginScript = redis.NewScript(`
if redis.call('GET', KEYS[2]) ~= ARGV[7] then return {'lease-lost'} end
local drawn = redis.call('GET', KEYS[3])
if drawn then
  local sp = string.find(drawn, ' ', 1, true)
  if sp and string.sub(drawn, 1, sp - 1) == ARGV[7] then
    return {'replayed', tonumber(string.sub(drawn, sp + 1))}
  end
end
local gen = redis.call('INCR', KEYS[1])
local stored = tonumber(ARGV[1])
if stored >= gen then
  gen = stored + 1
  redis.call('SET', KEYS[1], gen)
end
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[8]) then redis.call('PEXPIRE', KEYS[1], ARGV[8]) end
local lttl = redis.call('PTTL', KEYS[2])
if lttl > 0 then redis.call('SET', KEYS[3], ARGV[7] .. ' ' .. gen, 'PX', lttl) end
local budget = 'none'
local spent = {1, 0, 0}
if #KEYS > 3 then
  if pcall(function()` + budgetLua(4, 2) + `end) then budget = 'counted' else budget, spent = 'uncountable', {1, 0, 0} end
end
local payload, published = '', 1
if ARGV[4] ~= '' then
  local ev = cjson.decode(ARGV[4])
  ev.generation = gen
  payload = cjson.encode(ev)
  if ARGV[6] ~= '' and type(redis.pcall(ARGV[6], ARGV[5], payload)) == 'table' then published = 0 end
end
return {'drawn', gen, budget, spent[1], spent[2], spent[3], payload, published}
`)

// BeginArgs are the inputs of Begin.
type BeginArgs struct {
	Lease string // the lease's value at the lock key
	// Floor is the generation to draw above: the stored token's, or a
	// newer one held in memory; 0: none.
	Floor int64
	// Budget, if not nil, counts the first issuer call (its key must be
	// in the token's slot: Keys.NSSlot).
	Budget *BudgetSpec
	// Announce, if not nil, is published ("refreshing") with the
	// generation drawn.
	Announce *Event
}

// BeginResult is what Begin decided.
type BeginResult struct {
	// Generation is the lease's fencing generation; 0 when LeaseLost.
	Generation int64
	// LeaseLost: another owner holds the lock; nothing was drawn.
	LeaseLost bool
	// Replayed: this lease had drawn Generation already (a retried call);
	// nothing was counted or announced again.
	Replayed bool
	// Budget is the budget's verdict on the first issuer call when
	// BeginArgs.Budget was given and a generation was drawn.
	Budget *Budget
	finish func(context.Context)
}

// Finish publishes the announcement where the script could not (a user's
// token in a cluster, or the pub/sub mode unknown yet), or logs that the
// server refused the script's publish. The caller runs it once it no
// longer holds anything up; it does nothing when there is nothing left to
// do.
func (r BeginResult) Finish(ctx context.Context) {
	if r.finish != nil {
		r.finish(ctx)
	}
}

// Pending reports whether Finish has anything to do.
func (r BeginResult) Pending() bool { return r.finish != nil }

// Begin runs beginScript for a refresh of k.
func (c *Client) Begin(ctx context.Context, k Keys, a BeginArgs) (BeginResult, error) {
	keys := []string{k.Fence, k.Lock, k.Drawn}
	limit, window := 0, int64(0)
	if a.Budget != nil {
		keys = append(keys, a.Budget.Key)
		limit, window = a.Budget.Limit, a.Budget.Window.Milliseconds()
	}
	var evb []byte
	cmd, after := "", false
	if a.Announce != nil {
		var err error
		if evb, err = json.Marshal(a.Announce); err != nil {
			return BeginResult{}, err
		}
		cmd, after = c.ps.command(ctx, k)
	}
	res, err := beginScript.Run(ctx, c.rdb, keys, a.Floor, limit, window, evb, k.Channel, cmd, a.Lease,
		FenceMargin.Milliseconds()).Slice()
	if err != nil {
		return BeginResult{}, err
	}
	d := decoder{script: "begin", res: res}
	var out BeginResult
	switch status := d.status(); status {
	case "lease-lost":
		out.LeaseLost = true
	case "replayed":
		out = BeginResult{Generation: d.int(1), Replayed: true}
		if a.Budget != nil {
			out.Budget = &Budget{Allowed: true}
		}
	case "drawn":
		d.length(8)
		out.Generation = d.int(1)
		switch b := d.str(2); b {
		case "counted":
			out.Budget = &Budget{Allowed: d.int(3) == 1, ResetIn: time.Duration(d.int(4)) * time.Millisecond, Counted: d.int(5)}
		case "uncountable":
			out.Budget = &Budget{Uncountable: true}
		case "none":
		default:
			d.unknown(b)
		}
		if payload, published := d.str(6), d.int(7) == 1; d.err == nil && payload != "" && (after || !published) {
			out.finish = func(ctx context.Context) {
				c.ps.afterScript(ctx, k.Channel, cmd, after, []byte(payload), published)
			}
		}
	default:
		d.unknown(status)
	}
	if d.err != nil {
		return BeginResult{}, d.err
	}
	return out, nil
}

// raiseFenceScript lifts a fencing counter that fell behind the stored
// token's generation (the counter was evicted or lost in a failover), so
// the lease holder can still write. It refuses if another lease was
// granted since ours.
//
//	KEYS[1] fence key
//	ARGV[1] our lease generation, ARGV[2] the generation we need, ARGV[3]
//	the fence's TTL ms
//	returns {"raised", the new generation} or {"moved", fence} if the
//	fence moved past ours
var raiseFenceScript = redis.NewScript(`
local f = tonumber(redis.call('GET', KEYS[1])) or 0
if f > tonumber(ARGV[1]) then return {'moved', f} end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return {'raised', tonumber(ARGV[2])}
`)

// Raise is what RaiseFence decided.
type Raise struct {
	// Raised: the fence is now Generation. Otherwise another lease was
	// granted since ours and Generation is its fence.
	Raised     bool
	Generation int64
}

// RaiseFence lifts k's fence to want for the lease that drew ours, unless
// another lease drew a generation since; the fence then lives ttl plus
// FenceMargin.
func (c *Client) RaiseFence(ctx context.Context, k Keys, ours, want int64, ttl time.Duration) (Raise, error) {
	res, err := raiseFenceScript.Run(ctx, c.rdb, []string{k.Fence}, ours, want, (ttl + FenceMargin).Milliseconds()).Slice()
	if err != nil {
		return Raise{}, err
	}
	d := decoder{script: "raise fence", res: res}
	var out Raise
	switch status := d.status(); status {
	case "raised":
		out = Raise{Raised: true, Generation: d.int(1)}
	case "moved":
		out = Raise{Generation: d.int(1)}
	default:
		d.unknown(status)
	}
	if d.err != nil {
		return Raise{}, d.err
	}
	return out, nil
}

// offerExpiryLua returns {"not-newer"} when the stored token (KEYS[1]) was
// minted for the same credential (ARGV[4]) and expires as late as ARGV[2]
// or later: a rotated token is stored only if it is newer. It leaves the
// stored generation in the local "stored" (0: none).
const offerExpiryLua = `
local cur = redis.pcall('GET', KEYS[1])
local stored = 0
if type(cur) == 'string' then
  local ok, rec = pcall(cjson.decode, cur)
  if ok and type(rec) == 'table' then
    if type(rec.expires_at) == 'string' and rec.fingerprint == ARGV[4] and rec.expires_at >= ARGV[2] then
      return {'not-newer'}
    end
    if type(rec.generation) == 'number' then stored = rec.generation end
  end
end`

// offerDrawScript draws the generation of a rotated token: above the
// fence and the stored token's, like a refresh's, so that a refresh under
// way is fenced out by it rather than overwriting it. The token is sealed
// (encryption binds the generation) and stored by offerScript.
//
//	KEYS[1] token key, KEYS[2] fence key
//	ARGV[2] expires_at (ExpiryLayout), ARGV[3] the fence's TTL ms,
//	ARGV[4] credential fingerprint
//	returns {"drawn", generation}, or {"not-newer"} if the stored token
//	expires as late or later
var offerDrawScript = redis.NewScript(offerExpiryLua + `
local gen = math.max(tonumber(redis.call('GET', KEYS[2])) or 0, stored) + 1
redis.call('SET', KEYS[2], gen, 'PX', ARGV[3])
return {'drawn', gen}
`)

// Draw is what OfferDraw decided.
type Draw struct {
	// Generation is the rotated token's generation, 0 when NotNewer.
	Generation int64
	// NotNewer: the stored token was minted for the same credential and
	// expires as late or later; nothing was drawn.
	NotNewer bool
}

// OfferDraw draws the generation of a rotated token for credential credFP
// that expires at expiresAt (ExpiryLayout), unless the stored one is as
// new; the fence then lives ttl plus FenceMargin.
func (c *Client) OfferDraw(ctx context.Context, k Keys, expiresAt, credFP string, ttl time.Duration) (Draw, error) {
	res, err := offerDrawScript.Run(ctx, c.rdb, []string{k.Token, k.Fence},
		"", expiresAt, (ttl + FenceMargin).Milliseconds(), credFP).Slice()
	if err != nil {
		return Draw{}, err
	}
	d := decoder{script: "offer draw", res: res}
	var out Draw
	switch status := d.status(); status {
	case "drawn":
		out.Generation = d.int(1)
	case "not-newer":
		out.NotNewer = true
	default:
		d.unknown(status)
	}
	if d.err != nil {
		return Draw{}, d.err
	}
	return out, nil
}

// offerScript stores a rotated token with the generation offerDrawScript
// drew, unless a newer one was drawn since or the stored token now
// expires as late or later.
//
//	KEYS[1] token key, KEYS[2] failure key (deleted when stored), KEYS[3]
//	fence key
//	ARGV[1] value JSON (an object without stored_ms: the script adds
//	Redis's TIME), ARGV[2] expires_at (ExpiryLayout), ARGV[3] TTL ms,
//	ARGV[4] credential fingerprint, ARGV[5] event JSON, ARGV[6] events
//	channel, ARGV[7] publish command, ARGV[8] the generation
//	returns {"stored", stored ms, published 1|0} (published 0: the
//	server refused the publish command, after the write, which stands),
//	{"not-newer"} if the stored token expires as late or later, or
//	{"redraw"} if a newer generation was drawn since
var offerScript = redis.NewScript(offerExpiryLua + `
local gen = tonumber(ARGV[8])
if (tonumber(redis.call('GET', KEYS[3])) or 0) > gen or stored >= gen then return {'redraw'} end
` + redisNowLua + `
` + stampLua + `
redis.call('SET', KEYS[1], val, 'PX', ARGV[3])
redis.call('DEL', KEYS[2])
local published = 1
if ARGV[7] ~= '' and type(redis.pcall(ARGV[7], ARGV[6], ARGV[5])) == 'table' then published = 0 end
return {'stored', now, published}
`)

// OfferResult is what Offer decided.
type OfferResult struct {
	Stored   bool
	StoredMS int64 // Redis's TIME when stored (0: TIME refused)
	// NotNewer: the stored token expires as late or later; give up.
	NotNewer bool
	// Redraw: a newer generation was drawn since OfferDraw; draw again.
	Redraw bool
}

// Offer stores rec (sealed, with the generation OfferDraw drew) at
// k.Token for ttl and publishes ev, unless OfferDraw has drawn a newer
// generation since or the stored token is now as new.
func (c *Client) Offer(ctx context.Context, k Keys, rec Record, ttl time.Duration, ev Event) (OfferResult, error) {
	val, err := json.Marshal(rec)
	if err != nil {
		return OfferResult{}, err
	}
	evb, err := json.Marshal(ev)
	if err != nil {
		return OfferResult{}, err
	}
	cmd, after := c.ps.command(ctx, k)
	res, err := offerScript.Run(ctx, c.rdb, []string{k.Token, k.Failed, k.Fence},
		val, rec.ExpiresAt, ttl.Milliseconds(), rec.Fingerprint, evb, k.Channel, cmd, rec.Generation).Slice()
	if err != nil {
		return OfferResult{}, err
	}
	d := decoder{script: "offer", res: res}
	var out OfferResult
	switch status := d.status(); status {
	case "stored":
		out = OfferResult{Stored: true, StoredMS: d.int(1)}
		if published := d.int(2) == 1; d.err == nil {
			c.ps.afterScript(ctx, k.Channel, cmd, after, evb, published)
		}
	case "not-newer":
		out.NotNewer = true
	case "redraw":
		out.Redraw = true
	default:
		d.unknown(status)
	}
	if d.err != nil {
		return OfferResult{}, d.err
	}
	return out, nil
}

// invalidateScript deletes the token only if it is still the one the
// caller means (compare-and-delete) and publishes "invalidated".
//
//	KEYS[1] token key, KEYS[2] failure key (deleted with the token: a new
//	token is wanted now, whatever failed before)
//	ARGV[1] token fingerprint or "" (any), ARGV[2] generation or "" (any),
//	ARGV[3] events channel, ARGV[4] publish command
//	returns {"deleted", generation, event JSON, published 1|0} (a value
//	of another type, deleted when neither is given, has generation 0 and
//	no event; published 0: the server refused the publish command, after
//	the delete, which stands), {"kept"} not deleted (missing or another
//	token)
var invalidateScript = redis.NewScript(`
local cur = redis.pcall('GET', KEYS[1])
if type(cur) ~= 'string' then
  if type(cur) == 'table' and ARGV[1] == '' and ARGV[2] == '' then
    redis.call('DEL', KEYS[1])
    return {'deleted', 0, '', 1}
  end
  return {'kept'}
end
local ok, rec = pcall(cjson.decode, cur)
if not ok or type(rec) ~= 'table' then rec = {} end
if ARGV[1] ~= '' and rec.token_fp ~= ARGV[1] then return {'kept'} end
if ARGV[2] ~= '' and tostring(rec.generation) ~= ARGV[2] then return {'kept'} end
local gen = 0
if type(rec.generation) == 'number' then gen = rec.generation end
redis.call('DEL', KEYS[1], KEYS[2])
local payload = cjson.encode({type = 'invalidated', key = KEYS[1], generation = gen, token_fp = rec.token_fp})
local published = 1
if ARGV[4] ~= '' and type(redis.pcall(ARGV[4], ARGV[3], payload)) == 'table' then published = 0 end
return {'deleted', gen, payload, published}
`)

// InvalidateResult is what Invalidate decided.
type InvalidateResult struct {
	// Deleted: the token was deleted (and "invalidated" published);
	// otherwise the key held nothing, or another token.
	Deleted bool
	// Generation is the deleted token's generation (0: none recorded).
	Generation int64
}

// Invalidate deletes k's token if it is still the one with fingerprint
// tokenFP ("": any) and generation gen (0: any), with the fleet's last
// failure, and publishes "invalidated".
func (c *Client) Invalidate(ctx context.Context, k Keys, tokenFP string, gen int64) (InvalidateResult, error) {
	g := ""
	if gen > 0 {
		g = strconv.FormatInt(gen, 10)
	}
	cmd, after := c.ps.command(ctx, k)
	res, err := invalidateScript.Run(ctx, c.rdb, []string{k.Token, k.Failed}, tokenFP, g, k.Channel, cmd).Slice()
	if err != nil {
		return InvalidateResult{}, err
	}
	d := decoder{script: "invalidate", res: res}
	var out InvalidateResult
	switch status := d.status(); status {
	case "deleted":
		out = InvalidateResult{Deleted: true, Generation: d.int(1)}
		if payload, published := d.str(2), d.int(3) == 1; d.err == nil {
			c.ps.afterScript(ctx, k.Channel, cmd, after, []byte(payload), published)
		}
	case "kept":
	default:
		d.unknown(status)
	}
	if d.err != nil {
		return InvalidateResult{}, d.err
	}
	return out, nil
}

// Script returns the named script (read, read token, write, begin,
// budget, raise fence, offer draw, offer, invalidate), or nil: for tests
// and tools that recognise the cache's commands (by Script.Hash) or run
// one on its own.
func Script(name string) *redis.Script {
	return scripts[name]
}

var scripts = map[string]*redis.Script{
	"read":        readScript,
	"read token":  readTokenScript,
	"write":       writeScript,
	"begin":       beginScript,
	"budget":      budgetScript,
	"raise fence": raiseFenceScript,
	"offer draw":  offerDrawScript,
	"offer":       offerScript,
	"invalidate":  invalidateScript,
}

// decoder reads a script's reply, keeping the first thing wrong with it.
// It never reports the reply's content, which may hold a token.
type decoder struct {
	script string
	res    []any
	err    error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("unexpected %s script reply: "+format, append([]any{d.script}, args...)...)
	}
}

func (d *decoder) length(n int) {
	if len(d.res) != n {
		d.fail("%d elements, want %d", len(d.res), n)
	}
}

func (d *decoder) at(i int) any {
	if i >= len(d.res) {
		d.fail("%d elements, want more than %d", len(d.res), i)
		return nil
	}
	return d.res[i]
}

func (d *decoder) int(i int) int64 {
	v := d.at(i)
	n, ok := v.(int64)
	if !ok && d.err == nil {
		d.fail("element %d is %T, want an integer", i, v)
	}
	return n
}

func (d *decoder) str(i int) string {
	v := d.at(i)
	s, ok := v.(string)
	if !ok && d.err == nil {
		d.fail("element %d is %T, want a string", i, v)
	}
	return s
}

func (d *decoder) status() string { return d.str(0) }

func (d *decoder) unknown(status string) {
	if len(status) > 16 {
		status = status[:16]
	}
	d.fail("status %q", status)
}

// res6 decodes the read scripts' {value, pttl, bad, failure, failure pttl,
// now}: value and failure nil when absent.
func (d *decoder) res6() (v *string, pttl int64, bad bool, f *string, fttl, now int64) {
	d.length(6)
	if d.err != nil {
		return
	}
	if s, ok := d.res[0].(string); ok {
		v = &s
	}
	if s, ok := d.res[3].(string); ok {
		f = &s
	}
	bad = d.res[2] != nil
	return v, d.int(1), bad, f, d.int(4), d.int(5)
}
