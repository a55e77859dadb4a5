package tokencache

import (
	"time"

	"github.com/tokencache/tokencache/tokencache/internal/protocol"
)

// This file is what the fleet's events do to one token: a "refreshed"
// re-reads Redis (sync) unless the copy held is that token, a
// "refreshing" holds this replica's refresh-ahead, an "invalidated" drops
// the token and rejects it, a "failed" is remembered; and every one wakes
// the callers waiting for the token.

// onEvent applies an event about this token (see Cache.onEvent).
func (e *entry) onEvent(ev protocol.Event) {
	switch ev.Type {
	case protocol.EventRefreshed:
		if ev.Origin == e.c.origin {
			// Our own write: we install what we stored as soon as the
			// script returns, which may be just after this event arrives.
			// Reading it back would be a wasted command.
			e.sig.fire()
			return
		}
		if s := e.mem.l1.Load(); s != nil && e.c.monoNow() < s.validUntil && (ev.TokenFP != "" && ev.TokenFP == s.fp ||
			ev.TokenFP == "" && s.gen >= ev.Generation) {
			// We already hold this token: nothing to read.
			e.sig.fire()
			return
		}
		e.sched.sync()
	case protocol.EventRefreshing:
		if ev.Origin != e.c.origin && (ev.Credential == "" || e.cred.same(ev.Credential)) {
			e.mem.hold(ev.Generation, e.c.cfg.lockTTL)
		}
	case protocol.EventInvalidated:
		e.fails.clear()
		// The token is rejected up to the generation deleted (a read
		// racing the deletion must not bring it back; the same token
		// stored again, at a newer generation, may), and noted as
		// invalidated before the copy is dropped, so Transport never holds
		// a 401 of the invalidated token itself.
		e.mem.heardInvalidated(ev.TokenFP, ev.Generation)
		e.sig.fire()
	case protocol.EventRejected:
		if ev.Origin != e.c.origin {
			e.mem.heardRejected(ev.Streak, time.Duration(ev.RetryInMS)*time.Millisecond)
		}
	case protocol.EventFailed:
		if ev.Origin == e.c.origin || ev.Credential != "" && !e.cred.same(ev.Credential) {
			return // our own failure (recorded with its cause), or another credential's
		}
		if ev.Credential == "" && e.cred.fingerprint() != "" {
			// Without a key ring no event names the credential (that would
			// be an offline oracle for it): whose failure it is, the
			// failure key in Redis says, read with the token.
			e.sched.sync()
			return
		}
		fe := &FetchError{Code: ev.Code, Retryable: ev.Retryable, Remote: true, Message: ev.Message}
		if ev.RetryInMS > 0 {
			// The window is the sender's, but never longer than ours: a
			// sender (or anyone who can PUBLISH) cannot silence us longer.
			fe.Until = e.c.now().Add(min(time.Duration(ev.RetryInMS)*time.Millisecond, e.fails.limit(ev.Retryable)))
		}
		e.fails.record(fe)
	}
}
