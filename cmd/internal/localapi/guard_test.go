package localapi

import (
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
)

// TestGuardChecksTheSecretOfTheMoment: with SecretFunc, the next request
// after a rotation is checked against the new secret, the old one is
// refused, and a SecretFunc that returns "" refuses everyone.
func TestGuardChecksTheSecretOfTheMoment(t *testing.T) {
	const old, rotated = "old-listen-secret-0123456789", "new-listen-secret-9876543210"
	var cur atomic.Pointer[string]
	set := func(s string) { cur.Store(&s) }
	set(old)
	ok := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {})
	g := Guard(ok, GuardConfig{Secret: "ignored-when-SecretFunc-is-set", SecretFunc: func() string { return *cur.Load() }})
	status := func(secret string) int {
		req := httptest.NewRequest(http.MethodGet, TokenPath, nil)
		req.Header.Set("Authorization", "Bearer "+secret)
		rec := httptest.NewRecorder()
		g.ServeHTTP(rec, req)
		return rec.Code
	}
	if status(old) != http.StatusOK || status(rotated) != http.StatusUnauthorized {
		t.Fatal("before the rotation: want the old secret only")
	}
	set(rotated)
	if status(rotated) != http.StatusOK || status(old) != http.StatusUnauthorized {
		t.Error("after the rotation: want the new secret only")
	}
	set("")
	if status("") != http.StatusUnauthorized || status(rotated) != http.StatusUnauthorized {
		t.Error("an empty secret of the moment: want every request refused")
	}
}
