package protocol

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// MaxValueSize bounds a cached value. A larger one (a hand edit, an attack)
// is treated as a miss and overwritten on the next refresh.
const MaxValueSize = 64 << 10

// MaxGeneration bounds a stored generation: Lua numbers are doubles, and a
// hand-edited generation past 2^53 would be written back to the fence in
// a form INCR refuses.
const MaxGeneration = 1 << 53

// ExpiryLayout formats expires_at and issued_at with fixed millisecond
// precision in UTC, so that two values compare correctly as strings inside
// Lua.
const ExpiryLayout = "2006-01-02T15:04:05.000Z"

// MaxClockSkew is how far a replica's clock may be off the clock of the
// replica that wrote a token. Freshness is measured on Redis's clock (the
// value's stored_ms and ttl_ms against TIME, and the key's PTTL); the local
// clock is only a guard: a token is never served later than its expires_at
// minus the skew plus this much, on the local clock, and a value whose
// expires_at is further in the past than this is garbage.
const MaxClockSkew = 2 * time.Minute

// Record is the JSON value stored at the token key, readable with
// `redis-cli GET`.
type Record struct {
	AccessToken string `json:"access_token,omitempty"` // absent when encrypted
	Ciphertext  string `json:"ciphertext,omitempty"`   // AES-256-GCM, base64(nonce|sealed)
	KeyID       string `json:"key_id,omitempty"`       // the key that sealed it
	TokenType   string `json:"token_type"`
	ExpiresAt   string `json:"expires_at"` // ExpiryLayout, UTC
	IssuedAt    string `json:"issued_at"`  // ExpiryLayout, UTC
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
	// sealed with (tokencache's sealVersion).
	Seal int `json:"seal,omitempty"`
}

// RecordError reports a stored value that cannot be used: garbage at the
// token key (a hand edit, another program, an attack), or a token whose key
// outlives it. It is a miss, never a failure.
type RecordError struct {
	Key    string
	Reason string
}

func (e *RecordError) Error() string {
	return fmt.Sprintf("unusable value at %s: %s", e.Key, e.Reason)
}

// DecodeRecord parses the value stored at key. Every way it can be wrong
// is a *RecordError; it never panics.
func DecodeRecord(key string, raw []byte) (Record, error) {
	var r Record
	if len(raw) > MaxValueSize {
		return r, &RecordError{Key: key, Reason: fmt.Sprintf("value of %d bytes exceeds %d", len(raw), MaxValueSize)}
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &te):
			return r, &RecordError{Key: key, Reason: "field " + te.Field + " has the wrong type"}
		case errors.As(err, &se):
			return r, &RecordError{Key: key, Reason: "not JSON"}
		default:
			return r, &RecordError{Key: key, Reason: "not a JSON object"}
		}
	}
	if r.AccessToken == "" && (r.Ciphertext == "" || r.KeyID == "") {
		return r, &RecordError{Key: key, Reason: "no access_token (nor ciphertext and key_id)"}
	}
	exp, err := r.Expiry()
	if err != nil {
		return r, &RecordError{Key: key, Reason: "expires_at is not an RFC 3339 time"}
	}
	iss, err := r.Issued()
	if err != nil {
		return r, &RecordError{Key: key, Reason: "issued_at is not an RFC 3339 time"}
	}
	if !exp.After(iss) {
		return r, &RecordError{Key: key, Reason: "expires_at is not after issued_at"}
	}
	if r.Generation < 0 || r.Generation > MaxGeneration {
		return r, &RecordError{Key: key, Reason: "generation out of range"}
	}
	if r.TTLMS < 0 || r.StoredMS < 0 {
		return r, &RecordError{Key: key, Reason: "negative ttl_ms or stored_ms"}
	}
	return r, nil
}

// Expiry is expires_at as a time.
func (r Record) Expiry() (time.Time, error) { return time.Parse(time.RFC3339Nano, r.ExpiresAt) }

// Issued is issued_at as a time.
func (r Record) Issued() (time.Time, error) { return time.Parse(time.RFC3339Nano, r.IssuedAt) }

// Lifetime is the token's life as the issuer gave it: expires_at minus
// issued_at (0 for a record DecodeRecord would refuse).
func (r Record) Lifetime() time.Duration {
	exp, _ := r.Expiry()
	iss, _ := r.Issued()
	return exp.Sub(iss)
}
