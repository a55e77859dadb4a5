// Package tokencache shares one API access token among every replica of a
// backend through Redis, so the issuer's token endpoint is called once per
// token lifetime for the whole fleet, not once per replica.
//
// The happy path:
//
//	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
//	cache, err := tokencache.New(rdb, fetcher) // the token "default", as the command's
//	if err != nil { ... }
//	defer cache.Close()
//
//	tok, err := cache.Token(ctx) // from memory in ~50ns; from Redis; or refreshed once for the fleet
//	req.Header.Set("Authorization", tok.HeaderValue())
//
// A Token call reads, in order: the in-process copy (lock-free, no
// allocation), Redis (value and PTTL in one round trip), and, when neither
// holds a valid token, refreshes it: one goroutine per process tries a
// Redis lock; the winner re-checks Redis, calls the Fetcher, and writes the
// token with a fencing generation in one atomic script that also publishes
// a "refreshed" event. Everyone else waits for that event (one
// subscription per process), bounded by jittered re-checks of Redis and by
// their context. Once a token has used a share of its life (see
// WithRefreshAhead) one replica refreshes it in the background while every
// caller keeps getting the current one, so in steady state nobody waits.
//
// Freshness is judged by Redis's clock (the key's PTTL), never by
// comparing replicas' clocks, and a token is never returned past its
// skewed expiry. A failed refresh leaves a valid cached token in place; a
// permanent issuer error reaches the waiters of every replica at once
// through a "failed" event and is remembered briefly (Tuning.NegativeTTL).
//
// Redis layout (prefix "tokencache", namespace "default"):
//
//	tokencache:{default}:server        the token: JSON readable with GET; TTL ends at the skewed expiry
//	tokencache:{default}:server:lock   the refresh lock while a refresh runs
//	tokencache:{default}:server:fence  the fencing counter
//	tokencache:{default}:events        channel: refreshing / refreshed / invalidated / failed, never the token
//
// The value at the token key is JSON that an operator can read with GET:
// access_token, token_type, expires_at (the issuer's expiry), issued_at,
// generation (the fencing generation that wrote it), refreshed_by,
// fingerprint (of the credential that minted it), token_fp (of the token),
// ttl_ms and stored_ms (Redis's TIME at the write); an encrypted value
// carries ciphertext, key_id and seal instead of access_token. A value is
// at most 64 KiB.
//
// Events are JSON messages on the channel, at most 4 KiB, that never carry
// a token or a credential:
//
//	{"type":"refreshing","key":…,"generation":…}            a replica holds the lock and calls the issuer ahead of expiry
//	{"type":"refreshed","key":…,"generation":…,"expires_at":…}  a new token is stored: read it from Redis
//	{"type":"invalidated","key":…,"token_fp":…}             the token with that fingerprint was deleted
//	{"type":"failed","key":…,"code":…,"message":…,"retryable":…,"retry_in_ms":…}  the issuer refused; do not call it for retry_in_ms
//	{"type":"probe","key":…,"origin":…}                     a replica checking that its subscription still hears
//
// Every event also names its publisher ("by", host/pid; "origin", the
// Cache's random id). Anything else heard on the channel is ignored.
//
// ARCHITECTURE.md at the repository root maps the package's files and
// follows one Token call through them.
package tokencache
