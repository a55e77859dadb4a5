package jwtauth_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tokencache/tokencache/internal/hostile"
	"github.com/tokencache/tokencache/tokencache/jwtauth"
)

// TestHostileIssuers: a redirect never carries the credentials anywhere,
// with the default client or the caller's; an issuer that never answers
// is bounded by the timeout; an endless body is cut off with a clear
// error.
func TestHostileIssuers(t *testing.T) {
	t.Run("redirect", func(t *testing.T) {
		target := hostile.NewTarget(t)
		clients := map[string][]jwtauth.Option{
			"default client":      nil,
			"the caller's client": {jwtauth.WithHTTPClient(&http.Client{Timeout: time.Minute})},
			"a client that follows": {jwtauth.WithHTTPClient(&http.Client{
				CheckRedirect: func(*http.Request, []*http.Request) error { return nil },
			})},
		}
		for name, opts := range clients {
			for _, status := range []int{301, 302, 303, 307, 308} {
				base := hostile.Redirect(t, status, target.URL)
				f := jwtauth.New(testAPIKey, testSecret, append([]jwtauth.Option{jwtauth.WithBaseURL(base)}, opts...)...)
				_, err := f.Fetch(context.Background())
				var e *jwtauth.Error
				if !errors.Is(err, jwtauth.ErrRedirect) || !errors.As(err, &e) || e.Retryable() || e.ErrorCode() != "redirect" {
					t.Errorf("%s, %d: got %v, want a permanent *Error wrapping ErrRedirect", name, status, err)
					continue
				}
				if !strings.Contains(err.Error(), target.URL+"/authenticate") {
					t.Errorf("%s, %d: %q does not say where the issuer pointed", name, status, err)
				}
				for _, s := range []string{testAPIKey, testSecret} {
					if strings.Contains(err.Error(), s) {
						t.Errorf("%s, %d: the error holds a credential", name, status)
					}
				}
			}
		}
		if n := target.Requests(); n != 0 {
			t.Errorf("the redirect target got %d requests (%d with credentials), want 0", n, target.WithCredentials())
		}
	})
	t.Run("never answers", func(t *testing.T) {
		url, hits := hostile.Hang(t)
		_, err := jwtauth.New(testAPIKey, testSecret, jwtauth.WithBaseURL(url), jwtauth.WithTimeout(50*time.Millisecond)).Fetch(context.Background())
		var e *jwtauth.Error
		if !errors.As(err, &e) || e.ErrorCode() != "timeout" || !e.Retryable() || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("got %v, want a retryable timeout wrapping context.DeadlineExceeded", err)
		}
		if n := hits.Load(); n != 1 {
			t.Errorf("the issuer got %d requests, want 1", n)
		}
	})
	t.Run("default timeout", func(t *testing.T) {
		// The same bound as "never answers", at its default length.
		f := jwtauth.New(testAPIKey, testSecret, jwtauth.WithBaseURL("http://127.0.0.1:1"))
		if got := jwtauth.TimeoutOf(f); got != jwtauth.DefaultTimeout || got <= 0 || got > time.Minute {
			t.Errorf("a Fetcher without WithTimeout bounds requests by %v, want DefaultTimeout (%v, under a minute)", got, jwtauth.DefaultTimeout)
		}
	})
	t.Run("endless body", func(t *testing.T) {
		for _, tt := range []struct {
			status int
			ctype  string
		}{{200, "application/json"}, {200, "text/plain"}, {500, "application/json"}} {
			url, _ := hostile.Endless(t, tt.status, tt.ctype)
			_, err := jwtauth.New(testAPIKey, testSecret, jwtauth.WithBaseURL(url)).Fetch(context.Background())
			var e *jwtauth.Error
			if !errors.As(err, &e) {
				t.Fatalf("%d %s: got %v, want an *Error", tt.status, tt.ctype, err)
			}
			if tt.status == 200 && !errors.Is(err, jwtauth.ErrResponseTooLarge) {
				t.Errorf("%d %s: got %v, want ErrResponseTooLarge", tt.status, tt.ctype, err)
			}
			if tt.status == 500 && (e.StatusCode != 500 || len(e.Error()) > 1000) {
				t.Errorf("%d %s: got %q, want a short HTTP 500 error", tt.status, tt.ctype, e.Error())
			}
		}
	})
}
