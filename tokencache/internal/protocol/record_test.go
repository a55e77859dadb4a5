package protocol

import (
	"encoding/json"
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestRecordRoundTripsThroughItsJSON(t *testing.T) {
	r := testRecord(7, time.Hour)
	r.StoredMS = 1_700_000_000_000
	got, err := DecodeRecord("k", []byte(mustJSON(t, r)))
	if err != nil {
		t.Fatal(err)
	}
	if got != r {
		t.Errorf("decoded %+v, want %+v", got, r)
	}
	sealed := testRecord(3, time.Hour)
	sealed.AccessToken, sealed.Ciphertext, sealed.KeyID, sealed.Seal = "", "c2VhbGVk", "k1", 2
	if got, err := DecodeRecord("k", []byte(mustJSON(t, sealed))); err != nil || got != sealed {
		t.Errorf("sealed record decoded %+v, %v; want %+v", got, err, sealed)
	}
}

// The value's field names are documented (docs/redis.md, "Layout") and read
// by every replica of every release: they must not change.
func TestRecordFieldNamesAreTheDocumentedOnes(t *testing.T) {
	r := testRecord(1, time.Hour)
	r.Ciphertext, r.KeyID, r.Seal, r.StoredMS = "c", "k", 2, 1
	var m map[string]any
	if err := json.Unmarshal([]byte(mustJSON(t, r)), &m); err != nil {
		t.Fatal(err)
	}
	want := []string{"access_token", "ciphertext", "expires_at", "fingerprint", "generation", "issued_at", "key_id",
		"refreshed_by", "seal", "stored_ms", "token_fp", "token_type", "ttl_ms"}
	if got := slices.Sorted(maps.Keys(m)); !slices.Equal(got, want) {
		t.Errorf("fields %v, want %v", got, want)
	}
	if got := r.ExpiresAt; len(got) != len(ExpiryLayout) || !strings.HasSuffix(got, "Z") {
		t.Errorf("expires_at %q is not in the fixed layout %q", got, ExpiryLayout)
	}
}

func TestDecodeRecordRefusesUnusableValuesWithAReason(t *testing.T) {
	valid := func(edit func(m map[string]any)) string {
		var m map[string]any
		_ = json.Unmarshal([]byte(mustJSON(t, testRecord(1, time.Hour))), &m)
		edit(m)
		return mustJSON(t, m)
	}
	cases := []struct {
		name, raw, reason string
	}{
		{"too large", `{"access_token":"` + strings.Repeat("x", MaxValueSize) + `"}`, "exceeds"},
		{"not JSON", `secret-token garbage`, "not JSON"},
		{"wrong field type", `{"access_token":1}`, "field access_token has the wrong type"},
		{"no token", `{}`, "no access_token"},
		{"ciphertext without key id", valid(func(m map[string]any) { delete(m, "access_token"); m["ciphertext"] = "c" }), "no access_token"},
		{"bad expiry", valid(func(m map[string]any) { m["expires_at"] = "tomorrow" }), "expires_at is not an RFC 3339 time"},
		{"bad issue time", valid(func(m map[string]any) { m["issued_at"] = "today" }), "issued_at is not an RFC 3339 time"},
		{"expires before issued", valid(func(m map[string]any) { m["expires_at"] = m["issued_at"] }), "expires_at is not after issued_at"},
		{"negative generation", valid(func(m map[string]any) { m["generation"] = -1 }), "generation out of range"},
		{"generation past 2^53", valid(func(m map[string]any) { m["generation"] = MaxGeneration + 2 }), "generation out of range"},
		{"negative ttl", valid(func(m map[string]any) { m["ttl_ms"] = -1 }), "negative ttl_ms or stored_ms"},
		{"negative stored time", valid(func(m map[string]any) { m["stored_ms"] = -5 }), "negative ttl_ms or stored_ms"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeRecord("tc:{ns}:server", []byte(tc.raw))
			var re *RecordError
			if !errors.As(err, &re) {
				t.Fatalf("error %v (%T), want a *RecordError", err, err)
			}
			if re.Key != "tc:{ns}:server" || !strings.Contains(re.Reason, tc.reason) {
				t.Errorf("error %+v, want key tc:{ns}:server and a reason with %q", re, tc.reason)
			}
			if strings.Contains(err.Error(), "secret-token") {
				t.Errorf("the error %q repeats the value", err)
			}
		})
	}
	if _, err := DecodeRecord("k", []byte(valid(func(m map[string]any) { m["generation"] = MaxGeneration }))); err != nil {
		t.Errorf("generation 2^53 refused: %v", err)
	}
}

func TestRecordLifetimeIsExpiryMinusIssue(t *testing.T) {
	r := testRecord(1, 90*time.Minute)
	if got := r.Lifetime(); got != 90*time.Minute {
		t.Errorf("lifetime %v, want 1h30m", got)
	}
	if got := (Record{ExpiresAt: "x"}).Lifetime(); got != 0 {
		t.Errorf("lifetime of an unusable record %v, want 0", got)
	}
}

func TestDecodeEventAcceptsOnlyKeyedEventsOfBoundedSize(t *testing.T) {
	ev := Event{Type: EventRefreshed, Key: "p:{ns}:server", Generation: 3, Origin: "o", ExpiresAt: time.Unix(1700000000, 0).UTC()}
	got, ok := DecodeEvent(mustJSON(t, ev))
	if !ok || got != ev {
		t.Errorf("decoded %+v, %v; want %+v", got, ok, ev)
	}
	for name, p := range map[string]string{
		"not JSON":  "garbage",
		"no key":    `{"type":"refreshed"}`,
		"too large": `{"type":"refreshed","key":"k","message":"` + strings.Repeat("x", MaxEventSize) + `"}`,
	} {
		if _, ok := DecodeEvent(p); ok {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestDecodeFailureAcceptsOnlyAFailureWithACode(t *testing.T) {
	f := Failure{Code: "invalid-client", Message: "m", Retryable: true, By: "h", Fingerprint: "fp", Streak: 2}
	if got, ok := DecodeFailure(mustJSON(t, f)); !ok || got != f {
		t.Errorf("decoded %+v, %v; want %+v", got, ok, f)
	}
	for name, raw := range map[string]string{
		"not JSON":  "garbage",
		"no code":   `{"message":"m"}`,
		"too large": `{"code":"c","message":"` + strings.Repeat("x", MaxEventSize) + `"}`,
	} {
		if _, ok := DecodeFailure(raw); ok {
			t.Errorf("%s: accepted", name)
		}
	}
}

// The key layout is documented (docs/redis.md "Layout", DESIGN) and shared
// by every replica of every release.
func TestKeyLayout(t *testing.T) {
	s := ServerKeys("tc", "payments")
	want := Keys{Token: "tc:{payments}:server", Lock: "tc:{payments}:server:lock", Fence: "tc:{payments}:server:fence",
		Failed: "tc:{payments}:server:failed", Accepted: "tc:{payments}:server:accepted", Drawn: "tc:{payments}:server:drawn",
		Channel: "tc:{payments}:events", NSSlot: true}
	if s != want {
		t.Errorf("server keys %+v, want %+v", s, want)
	}
	c := ClientKeys("tc", "payments", "user-1")
	want = Keys{Token: "tc:{payments/user-1}:client", Lock: "tc:{payments/user-1}:client:lock", Fence: "tc:{payments/user-1}:client:fence",
		Failed: "tc:{payments/user-1}:client:failed", Accepted: "tc:{payments/user-1}:client:accepted",
		Drawn: "tc:{payments/user-1}:client:drawn", Channel: "tc:{payments}:events"}
	if c != want {
		t.Errorf("client keys %+v, want %+v", c, want)
	}
	if got := s.AcceptedKey(12); got != "tc:{payments}:server:accepted:12" {
		t.Errorf("accepted key %q", got)
	}
	if got := BudgetKey("tc", "payments"); got != "tc:{payments}:budget" {
		t.Errorf("budget key %q", got)
	}
}

func TestMovingRecognisesASlotOnTheMove(t *testing.T) {
	for msg, want := range map[string]bool{
		"TRYAGAIN Multiple keys request during rehashing of slot": true,
		"ASK 3999 127.0.0.1:6381":                                 true,
		"MOVED 3999 127.0.0.1:6381":                               true,
		"ERR TRYAGAIN the slot is moving":                         true,
		"LOADING Redis is loading the dataset in memory":          false,
		"CLUSTERDOWN The cluster is down":                         false,
		"dial tcp: connection refused":                            false,
	} {
		if got := Moving(errors.New(msg)); got != want {
			t.Errorf("Moving(%q) = %v, want %v", msg, got, want)
		}
	}
	if Moving(nil) {
		t.Error("Moving(nil)")
	}
}
