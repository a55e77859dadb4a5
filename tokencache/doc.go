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
// through a "failed" event and is remembered briefly (WithNegativeTTL).
//
// Redis layout (prefix "tokencache", namespace "default"):
//
//	tokencache:{default}:server        the token: JSON readable with GET; TTL ends at the skewed expiry
//	tokencache:{default}:server:lock   the refresh lock while a refresh runs
//	tokencache:{default}:server:fence  the fencing counter
//	tokencache:{default}:events        channel: refreshing / refreshed / invalidated / failed, never the token
package tokencache
