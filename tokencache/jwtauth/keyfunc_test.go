package jwtauth_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/tokencache/tokencache/tokencache/issuertest"
	"github.com/tokencache/tokencache/tokencache/jwtauth"
)

// TestNewFuncUsesTheCredentialsOfTheMoment: credentials rotated while the
// Fetcher is in use are sent by the next authenticate request, and the
// Identity follows them.
func TestNewFuncUsesTheCredentialsOfTheMoment(t *testing.T) {
	const (
		key1, secret1 = "first-api-key-0123456789", "first-client-secret-0123456789"
		key2, secret2 = "second-api-key-0123456789", "second-client-secret-0123456789"
	)
	srv := issuertest.RunT(t, issuertest.WithAPIKey(key1), issuertest.WithClientSecret(secret1))
	type pair struct{ key, secret string }
	var cur atomic.Pointer[pair]
	cur.Store(&pair{key1, secret1})
	f := jwtauth.NewFunc(func() (string, string) { p := cur.Load(); return p.key, p.secret },
		jwtauth.WithBaseURL(srv.URL()), jwtauth.WithHMACVerification(true))
	if _, err := f.Fetch(context.Background()); err != nil {
		t.Fatalf("first credentials: %v", err)
	}
	before := f.Identity()

	srv.SetAPIKey(key2)
	srv.SetClientSecret(secret2)
	_, err := f.Fetch(context.Background())
	var je *jwtauth.Error
	if !errors.As(err, &je) || je.StatusCode != 401 {
		t.Fatalf("old credentials after the issuer's rotation: got %v, want a 401 *Error", err)
	}
	for _, s := range []string{key1, secret1, key2, secret2} {
		if containsSecret(err, s) {
			t.Fatalf("the error holds a credential")
		}
	}
	cur.Store(&pair{key2, secret2})
	// The JWT is signed with the new secret: verified with the new one.
	if _, err := f.Fetch(context.Background()); err != nil {
		t.Fatalf("rotated credentials: %v", err)
	}
	if f.Identity() == before {
		t.Error("the Identity did not change with the credentials")
	}
	if got := srv.Stats().AuthenticateCalls; got != 3 {
		t.Errorf("got %d authenticate calls, want 3", got)
	}
}

func TestNewFuncNilIsAConfigError(t *testing.T) {
	f := jwtauth.NewFunc(nil, jwtauth.WithBaseURL("http://127.0.0.1:1"))
	if err := f.Validate(); !errors.Is(err, jwtauth.ErrConfig) {
		t.Errorf("Validate: got %v, want ErrConfig", err)
	}
	if _, err := f.Fetch(context.Background()); !errors.Is(err, jwtauth.ErrConfig) {
		t.Errorf("Fetch: got %v, want ErrConfig", err)
	}
	_ = f.Identity() // no panic
}

func containsSecret(err error, s string) bool {
	for e := err; e != nil; e = errors.Unwrap(e) {
		if len(s) > 0 && strings.Contains(e.Error(), s) {
			return true
		}
	}
	return false
}
