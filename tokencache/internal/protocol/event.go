package protocol

import (
	"encoding/json"
	"time"
)

// Event types published on the events channel.
const (
	EventRefreshed   = "refreshed"
	EventInvalidated = "invalidated"
	EventFailed      = "failed"
	// EventRefreshing says a replica holds the lock and is calling the
	// issuer for a token that is still valid (refresh ahead). Replicas
	// that hear it hold back their own refresh-ahead for one lock TTL
	// instead of each reading Redis and trying the lock: in steady state
	// a renewal costs every other replica one read, after "refreshed".
	EventRefreshing = "refreshing"
	// EventProbe is the type of the liveness probes a cache publishes on
	// its own events channel when it has heard nothing for a while.
	EventProbe = "probe"
	// EventRejected says the API rejected a token fetched after an
	// invalidation before accepting any: every replica holds the 401s of
	// tokens the API has not accepted for RetryInMS (see the Transport of
	// package tokencache). Streak counts such tokens in a row.
	EventRejected = "rejected"
)

// Event is the JSON message published on the channel
// "<prefix>:{<namespace>}:events". It never carries a token or a
// credential: replicas that see "refreshed" read the new token from Redis.
type Event struct {
	Type       string    `json:"type"`
	Key        string    `json:"key"`
	Generation int64     `json:"generation,omitempty"`
	ExpiresAt  time.Time `json:"expires_at,omitzero"`
	By         string    `json:"by,omitempty"`     // host/pid of the publisher
	Origin     string    `json:"origin,omitempty"` // random id of the publishing Cache
	// For "failed":
	Code      string `json:"code,omitempty"`
	Message   string `json:"message,omitempty"`
	Retryable bool   `json:"retryable,omitempty"`
	RetryInMS int64  `json:"retry_in_ms,omitempty"` // how long not to call the issuer (a permanent error)
	// Credential is the keyed fingerprint of the credential (with a key
	// ring), absent otherwise.
	Credential string `json:"credential,omitempty"`
	// For "invalidated": the fingerprint of the deleted token; for
	// "rejected", of the token the API rejected.
	TokenFP string `json:"token_fp,omitempty"`
	// For "rejected": fresh tokens rejected in a row.
	Streak int32 `json:"streak,omitempty"`
}

// MaxEventSize bounds an event (or a failure key's value) we are willing
// to decode.
const MaxEventSize = 4 << 10

// DecodeEvent parses a message heard on the events channel. ok is false
// for anything that is not an event (too large, not JSON, no key): anyone
// who may publish on the channel can send it, and it is ignored.
func DecodeEvent(payload string) (ev Event, ok bool) {
	if len(payload) > MaxEventSize || json.Unmarshal([]byte(payload), &ev) != nil || ev.Key == "" {
		return ev, false
	}
	return ev, true
}
