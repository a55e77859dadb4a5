package tokencache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// This file is the boundary with Redis: the value's JSON shape, the Lua
// scripts, and the translation of go-redis results (redis.Nil, script
// replies) into this package's terms. Nothing above it imports go-redis
// error values.

// MaxValueSize bounds a cached value. A larger one (a hand edit, an attack)
// is treated as a miss and overwritten on the next refresh.
const MaxValueSize = 64 << 10

// maxClockSkew is how far a replica's clock may be off the clock of the
// replica that wrote a token. Freshness is measured on Redis's clock (the
// value's stored_ms and ttl_ms against TIME, and the key's PTTL); the local
// clock is only a guard: a token is never served later than its expires_at
// minus the skew plus this much, on the local clock, and a value whose
// expires_at is further in the past than this is garbage.
const maxClockSkew = 2 * time.Minute

// maxGeneration bounds a stored generation: Lua numbers are doubles, and a
// hand-edited generation past 2^53 would be written back to the fence in
// a form INCR refuses.
const maxGeneration = 1 << 53

// expiryLayout formats expires_at with fixed millisecond precision in UTC,
// so that two values compare correctly as strings inside Lua.
const expiryLayout = "2006-01-02T15:04:05.000Z"

// record is the JSON value stored at the token key, readable with
// `redis-cli GET`.
type record struct {
	AccessToken string `json:"access_token,omitempty"` // absent when encrypted
	Ciphertext  string `json:"ciphertext,omitempty"`   // AES-256-GCM, base64(nonce|sealed)
	KeyID       string `json:"key_id,omitempty"`       // the key that sealed it
	TokenType   string `json:"token_type"`
	ExpiresAt   string `json:"expires_at"` // expiryLayout, UTC
	IssuedAt    string `json:"issued_at"`  // expiryLayout, UTC
	Generation  int64  `json:"generation"`
	RefreshedBy string `json:"refreshed_by"`
	Fingerprint string `json:"fingerprint"` // of the credential identity that minted it
	TokenFP     string `json:"token_fp"`    // of the access token, for compare-and-delete and logs
	// TTLMS is the key TTL the value was written with, and StoredMS
	// Redis's own clock (TIME, in Unix ms) when it was written, set by the
	// write script itself: together they say when the token stops being
	// served on the one clock every replica shares, whatever a later
	// PEXPIRE, a replica's clock, or a node restarted with another clock
	// says.
	TTLMS    int64 `json:"ttl_ms,omitempty"`
	StoredMS int64 `json:"stored_ms,omitempty"`
	// Seal is the version of the associated data an encrypted token was
	// sealed with (see sealVersion).
	Seal int `json:"seal,omitempty"`
}

func newRecord(t Token, gen int64, issued time.Time, ttl time.Duration, by, credFP string) record {
	return record{
		TTLMS:       ttl.Milliseconds(),
		AccessToken: t.AccessToken,
		TokenType:   t.typ(),
		ExpiresAt:   t.Expiry.UTC().Format(expiryLayout),
		IssuedAt:    issued.UTC().Format(expiryLayout),
		Generation:  gen,
		RefreshedBy: by,
		Fingerprint: credFP,
		TokenFP:     t.Fingerprint(),
	}
}

// decodeRecord parses a stored value. Every way it can be wrong is a
// *ValueError; it never panics.
func decodeRecord(key string, raw []byte) (record, error) {
	var r record
	if len(raw) > MaxValueSize {
		return r, &ValueError{Key: key, Reason: fmt.Sprintf("value of %d bytes exceeds %d", len(raw), MaxValueSize)}
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &te):
			return r, &ValueError{Key: key, Reason: "field " + te.Field + " has the wrong type"}
		case errors.As(err, &se):
			return r, &ValueError{Key: key, Reason: "not JSON"}
		default:
			return r, &ValueError{Key: key, Reason: "not a JSON object"}
		}
	}
	if r.AccessToken == "" && (r.Ciphertext == "" || r.KeyID == "") {
		return r, &ValueError{Key: key, Reason: "no access_token (nor ciphertext and key_id)"}
	}
	exp, err := r.expiry()
	if err != nil {
		return r, &ValueError{Key: key, Reason: "expires_at is not an RFC 3339 time"}
	}
	iss, err := time.Parse(time.RFC3339Nano, r.IssuedAt)
	if err != nil {
		return r, &ValueError{Key: key, Reason: "issued_at is not an RFC 3339 time"}
	}
	if !exp.After(iss) {
		return r, &ValueError{Key: key, Reason: "expires_at is not after issued_at"}
	}
	if r.Generation < 0 || r.Generation > maxGeneration {
		return r, &ValueError{Key: key, Reason: "generation out of range"}
	}
	if r.TTLMS < 0 || r.StoredMS < 0 {
		return r, &ValueError{Key: key, Reason: "negative ttl_ms or stored_ms"}
	}
	return r, nil
}

func (r record) expiry() (time.Time, error) { return time.Parse(time.RFC3339Nano, r.ExpiresAt) }

func (r record) lifetime() time.Duration {
	exp, _ := r.expiry()
	iss, _ := time.Parse(time.RFC3339Nano, r.IssuedAt)
	return exp.Sub(iss)
}

func (r record) token() Token {
	exp, _ := r.expiry()
	return Token{AccessToken: r.AccessToken, TokenType: r.TokenType, Expiry: exp}
}

// readScript returns the value, its PTTL and the fleet's last refresh
// failure (if still in its back-off window) in one round trip.
//
//	KEYS[1] token key, KEYS[2] failure key
//	returns {value or nil, pttl ms, "WRONGTYPE" or nil, failure JSON or nil,
//	        failure pttl ms, Redis's TIME in Unix ms}
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

// redisNowLua sets the local "now" to Redis's own clock in Unix ms, or 0
// if the ACL refuses TIME (a rule written for an earlier release): then
// freshness falls back to the key's PTTL alone. Redis 5 and later
// replicate a script's effects, not the script, so a script may read TIME
// and then write.
const redisNowLua = `local t = redis.pcall('TIME')
local now = 0
if type(t) == 'table' and t[1] then now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) end`

// stampLua is the value ARGV[1] with Redis's TIME added as stored_ms (a
// JSON object's closing brace replaced), or as it is without a TIME.
const stampLua = `local val = ARGV[1]
if now > 0 then val = string.sub(ARGV[1], 1, -2) .. ',"stored_ms":' .. string.format('%.0f', now) .. '}' end`

// writeScript stores a token only if its writer still holds the lease it
// drew its fencing generation under and that generation is current. It
// is idempotent: a write that already landed (the client retried it after
// a lost reply) is reported as stored again, not as fenced out.
//
//	KEYS[1] token key, KEYS[2] fence key, KEYS[3] failure key (deleted on
//	success), KEYS[4] lock key
//	ARGV[1] value JSON (an object without stored_ms: the script adds
//	Redis's TIME), ARGV[2] generation, ARGV[3] TTL ms, ARGV[4] event JSON,
//	ARGV[5] events channel (a channel, not a key: a user's keys live in
//	another cluster slot than the namespace's channel), ARGV[6] the publish
//	command (PUBLISH or SPUBLISH; empty: the caller publishes, see pubsub),
//	ARGV[7] the lease's value at the lock key, ARGV[8] the fence's TTL ms,
//	ARGV[9] the token's fingerprint
//	returns {1, generation, published, stored ms} written (published 0:
//	        the server refused the publish command, after the write,
//	        which stands), {2, generation, 1, stored ms} this write had
//	        already landed,
//	        {-1, fence} a newer lease drew a generation,
//	        {-2, stored generation} the stored value has the same or a newer
//	        generation (a real token, or a hand edit the caller judged garbage),
//	        {-3, 0} another owner holds the lock: our lease is gone
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
  return {2, gen, 1, tonumber(rec.stored_ms) or 0}
end
if fence and fence > gen then return {-1, fence} end
local holder = redis.call('GET', KEYS[4])
if holder and holder ~= ARGV[7] then return {-3, 0} end
if rec and type(rec.generation) == 'number' and rec.generation >= gen then
  return {-2, rec.generation}
end
` + redisNowLua + `
` + stampLua + `
redis.call('SET', KEYS[1], val, 'PX', ARGV[3])
redis.call('DEL', KEYS[3])
redis.call('SET', KEYS[2], gen, 'PX', ARGV[8])
local published = 1
if ARGV[6] ~= '' and type(redis.pcall(ARGV[6], ARGV[5], ARGV[4])) == 'table' then published = 0 end
return {1, gen, published, now}
`)

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
//	returns {generation (0: the lease is gone), allowed 1|0 (-1: the
//	        budget could not be counted, say a key of another type), ms
//	        until the budget window resets, calls counted (-1: already
//	        counted by this lease's first call), event JSON ('!' first: the
//	        server refused the publish command)}
var beginScript = redis.NewScript(`
if redis.call('GET', KEYS[2]) ~= ARGV[7] then return {0, 1, 0, 0, ''} end
local drawn = redis.call('GET', KEYS[3])
if drawn then
  local sp = string.find(drawn, ' ', 1, true)
  if sp and string.sub(drawn, 1, sp - 1) == ARGV[7] then
    return {tonumber(string.sub(drawn, sp + 1)), 1, 0, -1, ''}
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
local spent = {1, 0, 0}
if #KEYS > 3 and not pcall(function()` + budgetLua(4, 2) + `end) then
  spent = {-1, 0, 0}
end
local payload = ''
if ARGV[4] ~= '' then
  local ev = cjson.decode(ARGV[4])
  ev.generation = gen
  payload = cjson.encode(ev)
  if ARGV[6] ~= '' and type(redis.pcall(ARGV[6], ARGV[5], payload)) == 'table' then payload = '!' .. payload end
end
return {gen, spent[1], spent[2], spent[3], payload}
`)

// raiseFenceScript lifts a fencing counter that fell behind the stored
// token's generation (the counter was evicted or lost in a failover), so
// the lease holder can still write. It refuses if another lease was
// granted since ours.
//
//	KEYS[1] fence key
//	ARGV[1] our lease generation, ARGV[2] the generation we need, ARGV[3]
//	the fence's TTL ms
//	returns the new generation, or -1 if the fence moved past ours
var raiseFenceScript = redis.NewScript(`
local f = tonumber(redis.call('GET', KEYS[1])) or 0
if f > tonumber(ARGV[1]) then return -1 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return tonumber(ARGV[2])
`)

// offerExpiryLua returns {0, 0, ”} when the stored token (KEYS[1]) was
// minted for the same credential (ARGV[4]) and expires as late as
// ARGV[2] or later: a rotated token is stored only if it is newer.
const offerExpiryLua = `
local cur = redis.pcall('GET', KEYS[1])
local stored = 0
if type(cur) == 'string' then
  local ok, rec = pcall(cjson.decode, cur)
  if ok and type(rec) == 'table' then
    if type(rec.expires_at) == 'string' and rec.fingerprint == ARGV[4] and rec.expires_at >= ARGV[2] then
      return {0, 0, ''}
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
//	ARGV[2] expires_at (expiryLayout), ARGV[3] the fence's TTL ms,
//	ARGV[4] credential fingerprint
//	returns {generation, 0, ''}, or {0, 0, ''} if the stored token
//	expires as late or later
var offerDrawScript = redis.NewScript(offerExpiryLua + `
local gen = math.max(tonumber(redis.call('GET', KEYS[2])) or 0, stored) + 1
redis.call('SET', KEYS[2], gen, 'PX', ARGV[3])
return {gen, 0, ''}
`)

// offerScript stores a rotated token with the generation offerDrawScript
// drew, unless a newer one was drawn since or the stored token now
// expires as late or later.
//
//	KEYS[1] token key, KEYS[2] failure key (deleted when stored), KEYS[3]
//	fence key
//	ARGV[1] value JSON (an object without stored_ms: the script adds
//	Redis's TIME), ARGV[2] expires_at (expiryLayout), ARGV[3] TTL ms,
//	ARGV[4] credential fingerprint, ARGV[5] event JSON, ARGV[6] events
//	channel, ARGV[7] publish command, ARGV[8] the generation
//	returns {generation, stored ms, event JSON}, {0, 0, ''} if the stored
//	token expires as late or later, or {-1, 0, ''} if a newer generation
//	was drawn since (draw again); the event JSON starts with '!' when the
//	server refused the publish command (after the write, which stands)
var offerScript = redis.NewScript(offerExpiryLua + `
local gen = tonumber(ARGV[8])
if (tonumber(redis.call('GET', KEYS[3])) or 0) > gen or stored >= gen then return {-1, 0, ''} end
` + redisNowLua + `
` + stampLua + `
redis.call('SET', KEYS[1], val, 'PX', ARGV[3])
redis.call('DEL', KEYS[2])
local payload = ARGV[5]
if ARGV[7] ~= '' and type(redis.pcall(ARGV[7], ARGV[6], payload)) == 'table' then payload = '!' .. payload end
return {gen, now, payload}
`)

// invalidateScript deletes the token only if it is still the one the
// caller means (compare-and-delete) and publishes "invalidated".
//
//	KEYS[1] token key, KEYS[2] failure key (deleted with the token: a new
//	token is wanted now, whatever failed before)
//	ARGV[1] token fingerprint or "" (any), ARGV[2] generation or "" (any),
//	ARGV[3] events channel, ARGV[4] publish command
//	returns {1, generation, event JSON} deleted, {0, 0, ''} not (missing or
//	another token); the event JSON starts with '!' when the server refused
//	the publish command (after the delete, which stands)
var invalidateScript = redis.NewScript(`
local cur = redis.pcall('GET', KEYS[1])
if type(cur) ~= 'string' then
  if type(cur) == 'table' and ARGV[1] == '' and ARGV[2] == '' then
    redis.call('DEL', KEYS[1])
    return {1, 0, ''}
  end
  return {0, 0, ''}
end
local ok, rec = pcall(cjson.decode, cur)
if not ok or type(rec) ~= 'table' then rec = {} end
if ARGV[1] ~= '' and rec.token_fp ~= ARGV[1] then return {0, 0, ''} end
if ARGV[2] ~= '' and tostring(rec.generation) ~= ARGV[2] then return {0, 0, ''} end
local gen = 0
if type(rec.generation) == 'number' then gen = rec.generation end
redis.call('DEL', KEYS[1], KEYS[2])
local payload = cjson.encode({type = 'invalidated', key = KEYS[1], generation = gen, token_fp = rec.token_fp})
if ARGV[4] ~= '' and type(redis.pcall(ARGV[4], ARGV[3], payload)) == 'table' then payload = '!' .. payload end
return {1, gen, payload}
`)

// readResult is one read of a token key.
type readResult struct {
	rec record
	// pttl is how long the token is still served, on Redis's clock: the
	// key's PTTL, capped by the value's own stored_ms + ttl_ms (a PEXPIRE,
	// or a node whose clock lags, can stretch a key's TTL, never a token's
	// life).
	pttl   time.Duration
	found  bool        // a usable record
	stale  bool        // a record whose key outlives its token's life
	bad    error       // *ValueError when the key holds garbage
	failed *FetchError // the fleet's last refresh failure, while in its window
	// failedCred and failedStreak: the credential that failed and the
	// fleet's count of failed refreshes in a row.
	failedCred   string
	failedStreak int32
}

// failedSuffix names the key that remembers the last refresh failure for
// the fleet, for the length of its back-off window.
const failedSuffix = ":failed"

// failure is the JSON stored at the failure key: never a token or a
// credential, only what the issuer's error says.
type failure struct {
	Code        string `json:"code"`
	Message     string `json:"message,omitempty"`
	Retryable   bool   `json:"retryable"`
	By          string `json:"by,omitempty"`
	Fingerprint string `json:"fingerprint"` // of the credential that failed
	Streak      int32  `json:"streak,omitempty"`
}

func decodeFailure(raw string, ttl time.Duration, now time.Time) (*FetchError, failure) {
	var f failure
	if len(raw) > maxEventSize || json.Unmarshal([]byte(raw), &f) != nil || f.Code == "" || ttl <= 0 {
		return nil, f
	}
	return &FetchError{Code: f.Code, Message: f.Message, Retryable: f.Retryable, Remote: true, Until: now.Add(ttl)}, f
}

// remember stores the fleet's last refresh failure for window.
func (s *store) remember(ctx context.Context, k keys, f failure, window time.Duration) error {
	b, err := json.Marshal(f)
	if err != nil {
		return err
	}
	if err := s.rdb.Set(ctx, k.failed, b, window).Err(); err != nil {
		return &RedisError{Op: "remember failure", Key: k.failed, Err: err}
	}
	return nil
}

// read fetches the value and PTTL of key in one round trip. A missing key,
// or one without a TTL, or one holding garbage, is reported as not found
// (with bad set for garbage); only Redis failures are errors.
func (s *store) read(ctx context.Context, key string, now time.Time) (readResult, error) {
	res, err := readScript.Run(ctx, s.rdb, []string{key, key + failedSuffix}).Slice()
	if err != nil {
		res, err = readTokenOnly(ctx, s.rdb, key, err) // a cluster slot moving: see transient.go
	}
	if err != nil {
		return readResult{}, &RedisError{Op: "read", Key: key, Err: err}
	}
	var out readResult
	if len(res) < 2 {
		return out, &RedisError{Op: "read", Key: key, Err: fmt.Errorf("unexpected script reply of %d elements", len(res))}
	}
	pttl, _ := res[1].(int64)
	var redisNow int64
	if len(res) >= 6 {
		redisNow, _ = res[5].(int64)
		if redisNow == 0 && s.timeRefused.CompareAndSwap(false, true) {
			s.ps.log.Warn("tokencache: Redis refused TIME (an ACL rule without +time?); token ages are measured on the key's PTTL alone, which a PEXPIRE or a lagging node can stretch",
				"key", key)
		}
	}
	out.pttl = time.Duration(pttl) * time.Millisecond
	if len(res) >= 5 {
		if raw, ok := res[3].(string); ok {
			fttl, _ := res[4].(int64)
			var f failure
			out.failed, f = decodeFailure(raw, time.Duration(fttl)*time.Millisecond, now)
			out.failedCred, out.failedStreak = f.Fingerprint, f.Streak
		}
	}
	if len(res) > 2 && res[2] != nil {
		out.bad = &ValueError{Key: key, Reason: "not a string value"}
		return out, nil
	}
	raw, ok := res[0].(string)
	if !ok {
		return out, nil // missing
	}
	rec, err := decodeRecord(key, []byte(raw))
	if err != nil {
		out.bad = err
		return out, nil
	}
	if pttl <= 0 {
		// -1: no TTL (a hand edit); the token's age could never be judged.
		out.bad = &ValueError{Key: key, Reason: "key has no TTL"}
		return out, nil
	}
	if exp, _ := rec.expiry(); exp.Before(now.Add(-maxClockSkew)) {
		out.bad = &ValueError{Key: key, Reason: "expires_at is in the past"}
		return out, nil
	}
	if out.pttl > rec.lifetime()+maxClockSkew {
		out.bad = &ValueError{Key: key, Reason: "TTL outlives the token"}
		return out, nil
	}
	if rec.StoredMS > 0 && rec.TTLMS > 0 && redisNow > 0 {
		left := time.Duration(rec.StoredMS+rec.TTLMS-redisNow) * time.Millisecond
		out.pttl = min(out.pttl, left)
	}
	out.rec = rec
	if out.pttl <= 0 {
		// The key outlives its token: stale, not garbage. It counts as
		// missing, and the refresh under the lock replaces it.
		out.stale = true
		return out, nil
	}
	out.found = true
	return out, nil
}

type store struct {
	rdb         redis.UniversalClient
	ps          *pubsub
	timeRefused atomic.Bool // logged that Redis refuses TIME
}

// fenceMargin is how long a fencing counter outlives the token written
// under it. Every key the cache writes expires, so a fleet whose users come
// and go leaves nothing behind in Redis; a counter that expired is
// re-derived from the stored token's generation by the next refresh
// (beginScript lifts it past the generation it is given).
const fenceMargin = 10 * time.Minute

// writeResult is what writeScript decided.
type writeResult struct {
	Stored bool // the token is stored (by this call, or by an earlier try of it)
	// FencedBy is the generation that refused the write: a newer lease's
	// or a stored token's; 0 when stored or when the lease was lost.
	FencedBy int64
	// Stale: the stored value has the same or a newer generation (as
	// opposed to a newer lease having drawn one).
	Stale bool
	// LeaseLost: another owner holds the lock.
	LeaseLost bool
	// StoredMS is Redis's TIME when the token was stored.
	StoredMS int64
}

// write runs writeScript for rec under the lease whose lock value is
// lease.
func (s *store) write(ctx context.Context, k keys, rec record, ttl time.Duration, ev Event, lease string) (writeResult, error) {
	val, err := json.Marshal(rec)
	if err != nil {
		return writeResult{}, err
	}
	evb, err := json.Marshal(ev)
	if err != nil {
		return writeResult{}, err
	}
	cmd, after := s.ps.command(ctx, k)
	res, err := writeScript.Run(ctx, s.rdb, []string{k.token, k.fence, k.failed, k.lock},
		val, rec.Generation, ttl.Milliseconds(), evb, k.channel, cmd, lease,
		(ttl + fenceMargin).Milliseconds(), rec.TokenFP).Int64Slice()
	if err == nil && (len(res) < 2 || res[0] > 0 && len(res) != 4) {
		err = fmt.Errorf("unexpected script reply of %d elements", len(res))
	}
	if err != nil {
		return writeResult{}, &RedisError{Op: "write", Key: k.token, Err: err}
	}
	switch res[0] {
	case 1:
		payload := string(evb)
		if res[2] == 0 {
			payload = "!" + payload // the same mark the other scripts use
		}
		s.ps.afterScript(ctx, k.channel, cmd, after, payload)
		return writeResult{Stored: true, StoredMS: res[3]}, nil
	case 2:
		// An earlier try landed. Where the caller publishes (not the
		// script), its event may not have gone out: send it now.
		s.ps.afterScript(ctx, k.channel, cmd, after, string(evb))
		return writeResult{Stored: true, StoredMS: res[3]}, nil
	case -1:
		return writeResult{FencedBy: res[1]}, nil
	case -2:
		return writeResult{FencedBy: res[1], Stale: true}, nil
	case -3:
		return writeResult{LeaseLost: true}, nil
	}
	return writeResult{}, &RedisError{Op: "write", Key: k.token, Err: fmt.Errorf("unexpected script reply code %d", res[0])}
}

// begin runs beginScript for a refresh of k, under the lease whose lock
// value is lease, drawing a generation above floor. If b is not nil the
// first issuer call is counted (spent is the budget's reply, allowed -1 if
// it could not be counted, counted -1 if an earlier try of this call
// counted it); if announce is not nil it is published with the generation
// drawn, by the script or, where it cannot, by finish, which the caller
// runs once it no longer holds anything up. gen 0 means the lease is gone.
func (s *store) begin(ctx context.Context, k keys, lease string, floor int64, b *budget, announce *Event) (gen int64, spent []int64, finish func(context.Context), err error) {
	finish = func(context.Context) {}
	fail := func(err error) (int64, []int64, func(context.Context), error) {
		return 0, nil, finish, &RedisError{Op: "fence", Key: k.fence, Err: err}
	}
	keys := []string{k.fence, k.lock, k.drawn}
	limit, window := 0, int64(0)
	if b != nil {
		keys = append(keys, b.key)
		limit, window = b.limit, b.window.Milliseconds()
	}
	var evb []byte
	cmd, after := "", false
	if announce != nil {
		if evb, err = json.Marshal(announce); err != nil {
			return fail(err)
		}
		cmd, after = s.ps.command(ctx, k)
	}
	res, err := beginScript.Run(ctx, s.rdb, keys, floor, limit, window, evb, k.channel, cmd, lease,
		fenceMargin.Milliseconds()).Slice()
	if err != nil {
		return fail(err)
	}
	if len(res) != 5 {
		return fail(fmt.Errorf("unexpected script reply of %d elements", len(res)))
	}
	nums := make([]int64, 4)
	for i := range nums {
		n, ok := res[i].(int64)
		if !ok {
			return fail(fmt.Errorf("unexpected script reply element %T", res[i]))
		}
		nums[i] = n
	}
	if payload, _ := res[4].(string); payload != "" {
		finish = func(ctx context.Context) { s.ps.afterScript(ctx, k.channel, cmd, after, payload) }
	}
	if b != nil {
		spent = nums[1:]
	}
	return nums[0], spent, finish, nil
}

func (s *store) raiseFence(ctx context.Context, k keys, ours, want int64, ttl time.Duration) (int64, error) {
	n, err := raiseFenceScript.Run(ctx, s.rdb, []string{k.fence}, ours, want, (ttl + fenceMargin).Milliseconds()).Int64()
	if err != nil {
		return 0, &RedisError{Op: "fence", Key: k.fence, Err: err}
	}
	return n, nil
}

// offerDraw runs offerDrawScript: the generation for a rotated token
// that expires at expiresAt, or 0 if the stored token expires as late or
// later.
func (s *store) offerDraw(ctx context.Context, k keys, expiresAt, credFP string, ttl time.Duration) (int64, error) {
	res, err := offerDrawScript.Run(ctx, s.rdb, []string{k.token, k.fence},
		"", expiresAt, (ttl + fenceMargin).Milliseconds(), credFP).Slice()
	if err == nil && len(res) != 3 {
		err = fmt.Errorf("unexpected script reply of %d elements", len(res))
	}
	if err != nil {
		return 0, &RedisError{Op: "offer", Key: k.fence, Err: err}
	}
	gen, _ := res[0].(int64)
	return gen, nil
}

// offer runs offerScript for rec, whose generation offerDraw drew: the
// generation it was stored with and Redis's TIME then, 0 if it was not
// stored, or -1 if a newer generation was drawn since.
func (s *store) offer(ctx context.Context, k keys, rec record, ttl time.Duration, ev Event) (gen, storedMS int64, err error) {
	val, err := json.Marshal(rec)
	if err != nil {
		return 0, 0, err
	}
	evb, err := json.Marshal(ev)
	if err != nil {
		return 0, 0, err
	}
	cmd, after := s.ps.command(ctx, k)
	res, err := offerScript.Run(ctx, s.rdb, []string{k.token, k.failed, k.fence},
		val, rec.ExpiresAt, ttl.Milliseconds(), rec.Fingerprint, evb, k.channel, cmd, rec.Generation).Slice()
	_, payload, err := genAndPayload(res, err)
	if err == nil && len(res) != 3 {
		err = fmt.Errorf("unexpected script reply of %d elements", len(res))
	}
	if err != nil {
		return 0, 0, &RedisError{Op: "offer", Key: k.token, Err: err}
	}
	n, _ := res[0].(int64)
	if n > 0 {
		storedMS, _ = res[1].(int64)
		s.ps.afterScript(ctx, k.channel, cmd, after, payload)
	}
	return n, storedMS, nil
}

// genAndPayload decodes the {number, event JSON} tail of a script reply.
func genAndPayload(res []any, err error) (int64, string, error) {
	if err != nil {
		return 0, "", err
	}
	if len(res) < 2 {
		return 0, "", fmt.Errorf("unexpected script reply of %d elements", len(res))
	}
	n, ok1 := res[len(res)-2].(int64)
	payload, ok2 := res[len(res)-1].(string)
	if !ok1 || !ok2 {
		return 0, "", fmt.Errorf("unexpected script reply %T, %T", res[len(res)-2], res[len(res)-1])
	}
	return n, payload, nil
}

func (s *store) invalidate(ctx context.Context, k keys, tokenFP string, gen int64) (bool, int64, error) {
	g := ""
	if gen > 0 {
		g = strconv.FormatInt(gen, 10)
	}
	cmd, after := s.ps.command(ctx, k)
	res, err := invalidateScript.Run(ctx, s.rdb, []string{k.token, k.failed}, tokenFP, g, k.channel, cmd).Slice()
	gen, payload, err := genAndPayload(res, err)
	if err == nil && len(res) != 3 {
		err = fmt.Errorf("unexpected script reply of %d elements", len(res))
	}
	if err != nil {
		return false, 0, &RedisError{Op: "invalidate", Key: k.token, Err: err}
	}
	deleted := res[0] == int64(1)
	if deleted {
		s.ps.afterScript(ctx, k.channel, cmd, after, payload)
	}
	return deleted, gen, nil
}

// publish sends ev on channel, sharded where the cache's pub/sub is.
func (s *store) publish(ctx context.Context, channel string, ev Event) error {
	b, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	if err := s.ps.publish(ctx, channel, b); err != nil {
		return &RedisError{Op: "publish", Key: channel, Err: err}
	}
	return nil
}

// keys are the Redis names of one cached token. The keys share a hash tag,
// so they live in one cluster slot and one script may touch them all; the
// channel is the namespace's, shared by its users' tokens.
type keys struct {
	// drawn remembers, for the life of a lease, the generation it drew
	// (see beginScript).
	token, lock, fence, failed, drawn, channel string
	// nsSlot: the keys share the namespace's hash tag, so a script on
	// them may SPUBLISH to its channel in a cluster and count its issuer
	// budget.
	nsSlot bool
}

func serverKeys(prefix, ns string) keys {
	base := prefix + ":{" + ns + "}:server"
	return keys{token: base, lock: base + ":lock", fence: base + ":fence", failed: base + failedSuffix,
		drawn: base + ":drawn", channel: eventsChannel(prefix, ns), nsSlot: true}
}

func clientKeys(prefix, ns, user string) keys {
	base := prefix + ":{" + ns + "/" + user + "}:client"
	return keys{token: base, lock: base + ":lock", fence: base + ":fence", failed: base + failedSuffix,
		drawn: base + ":drawn", channel: eventsChannel(prefix, ns)}
}

func eventsChannel(prefix, ns string) string { return prefix + ":{" + ns + "}:events" }

func budgetKey(prefix, ns string) string { return prefix + ":{" + ns + "}:budget" }
