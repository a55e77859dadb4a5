package protocol

import "encoding/json"

// Failure is the JSON stored at the failure key for the length of the
// fleet's back-off window: never a token or a credential, only what the
// issuer's error says.
type Failure struct {
	Code        string `json:"code"`
	Message     string `json:"message,omitempty"`
	Retryable   bool   `json:"retryable"`
	By          string `json:"by,omitempty"`
	Fingerprint string `json:"fingerprint"` // of the credential that failed
	Streak      int32  `json:"streak,omitempty"`
}

// DecodeFailure parses a failure key's value. ok is false for anything
// that is not a failure (too large, not JSON, no code): it is ignored.
func DecodeFailure(raw string) (f Failure, ok bool) {
	if len(raw) > MaxEventSize || json.Unmarshal([]byte(raw), &f) != nil || f.Code == "" {
		return Failure{}, false
	}
	return f, true
}
