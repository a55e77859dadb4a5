package basiq_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tokencache/tokencache/internal/hostile"
	"github.com/tokencache/tokencache/tokencache/basiq"
)

// TestHostileIssuers: a redirect never carries the API key anywhere, with
// the default client or the caller's; an issuer that never answers is
// bounded by the timeout; an endless body is cut off with a clear error.
func TestHostileIssuers(t *testing.T) {
	t.Run("redirect", func(t *testing.T) {
		target := hostile.NewTarget(t)
		clients := map[string][]basiq.Option{
			"default client":      nil,
			"the caller's client": {basiq.WithHTTPClient(&http.Client{Timeout: time.Minute})},
			"a client that follows": {basiq.WithHTTPClient(&http.Client{
				CheckRedirect: func(*http.Request, []*http.Request) error { return nil },
			})},
		}
		for name, opts := range clients {
			for _, status := range []int{301, 302, 303, 307, 308} {
				base := hostile.Redirect(t, status, target.URL)
				f := basiq.New(testKey, append([]basiq.Option{basiq.WithBaseURL(base)}, opts...)...)
				_, err := f.Fetch(context.Background())
				be := asError(t, err)
				if be.Status != status || be.Retryable() {
					t.Errorf("%s, %d: got status %d retryable=%v, want a permanent %d", name, status, be.Status, be.Retryable(), status)
				}
				assertNoSecret(t, err, testKey)
			}
		}
		if n := target.Requests(); n != 0 {
			t.Errorf("the redirect target got %d requests (%d with credentials), want 0", n, target.WithCredentials())
		}
	})
	t.Run("never answers", func(t *testing.T) {
		url, hits := hostile.Hang(t)
		_, err := basiq.New(testKey, basiq.WithBaseURL(url), basiq.WithTimeout(50*time.Millisecond)).Fetch(context.Background())
		be := asError(t, err)
		if be.Code != basiq.CodeTimeout || !be.Retryable() {
			t.Errorf("got code %q retryable=%v, want a retryable %q", be.Code, be.Retryable(), basiq.CodeTimeout)
		}
		if n := hits.Load(); n != 1 {
			t.Errorf("the issuer got %d requests, want 1", n)
		}
	})
	t.Run("endless body", func(t *testing.T) {
		for _, status := range []int{200, 500} {
			url, _ := hostile.Endless(t, status, "application/json")
			_, err := basiq.New(testKey, basiq.WithBaseURL(url)).Fetch(context.Background())
			be := asError(t, err)
			if be.Code != basiq.CodeResponseTooLarge || !strings.Contains(be.Error(), "exceeds") {
				t.Errorf("%d: got %v (code %q), want %q", status, err, be.Code, basiq.CodeResponseTooLarge)
			}
		}
	})
}
