// Package protocol is tokencache's Redis protocol, below one boundary: the
// names of a token's keys, the JSON value stored at the token key (the
// record) and at the failure key, the events published on a namespace's
// channel, how they are published (classic or sharded pub/sub), and every
// Lua script the cache runs, each behind a Go method that decodes its reply
// once into a typed result.
//
// Nothing here knows about tokens in memory, the lock's watchdog or the
// issuer: the package says what is stored where and what a script did.
// Errors from Redis come back as go-redis returns them (the caller wraps
// them in its own error types); a value that cannot be used is a
// *RecordError. Replies carry no sentinel numbers or marker characters:
// every script answers with a status word or a fixed tuple, decoded in
// scripts.go.
//
// The layout, for a namespace ns under prefix p (docs/redis.md, "Layout"):
//
//	p:{ns}:server          the server token (a Record, JSON)
//	p:{ns}:server:lock     the refresh lock (a lease value)
//	p:{ns}:server:fence    the fencing counter
//	p:{ns}:server:drawn    the generation the current lease drew
//	p:{ns}:server:failed   the fleet's last refresh failure (a Failure)
//	p:{ns/user}:client...  the same five for a user's client token
//	p:{ns}:events          the channel (Events)
//	p:{ns}:budget          the issuer budget's counter
package protocol
