package oauth2cc_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/tokencache/tokencache/internal/hostile"
	"github.com/tokencache/tokencache/tokencache"
	"github.com/tokencache/tokencache/tokencache/oauth2cc"
)

// TestHostileIssuers: a redirect never carries the client
// secret anywhere, whether x/oauth2 sends it in the header or the form and
// whatever client the context holds; an endpoint that never answers is
// bounded by the context's deadline; an endless body ends in a clear
// error.
func TestHostileIssuers(t *testing.T) {
	t.Run("redirect", func(t *testing.T) {
		target := hostile.NewTarget(t)
		contexts := map[string]context.Context{
			"no client": context.Background(),
			"a client that follows": context.WithValue(context.Background(), oauth2.HTTPClient, &http.Client{
				CheckRedirect: func(*http.Request, []*http.Request) error { return nil },
			}),
		}
		for name, ctx := range contexts {
			for _, style := range []oauth2.AuthStyle{oauth2.AuthStyleInHeader, oauth2.AuthStyleInParams, oauth2.AuthStyleAutoDetect} {
				for _, status := range []int{301, 302, 303, 307, 308} {
					cfg := ccConfig(hostile.Redirect(t, status, target.URL) + "/oauth/token")
					cfg.AuthStyle = style
					_, err := oauth2cc.New(cfg).Fetch(ctx)
					var oe *oauth2cc.Error
					if !errors.As(err, &oe) || oe.Code != "redirect" || oe.Retryable() {
						t.Errorf("%s, style %d, %d: got %v, want a permanent *OAuth2Error with code redirect", name, style, status, err)
						continue
					}
					if !strings.Contains(err.Error(), target.URL+"/oauth/token") || strings.Contains(err.Error(), ccClientSecret) {
						t.Errorf("%s, style %d, %d: %q: want where the issuer pointed, and no secret", name, style, status, err)
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
		cfg := ccConfig(url + "/oauth/token")
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		_, err := oauth2cc.New(cfg).Fetch(ctx)
		var oe *oauth2cc.Error
		if !errors.As(err, &oe) || oe.Code != "timeout" || !oe.Retryable() {
			t.Errorf("got %v, want a retryable timeout", err)
		}
		if n := hits.Load(); n != 1 {
			t.Errorf("the endpoint got %d requests, want 1", n)
		}
	})
	t.Run("endless body", func(t *testing.T) {
		for _, ctype := range []string{"application/json", "application/x-www-form-urlencoded"} {
			url, _ := hostile.Endless(t, 200, ctype)
			_, err := oauth2cc.New(ccConfig(url + "/oauth/token")).Fetch(context.Background())
			var oe *oauth2cc.Error
			if !errors.As(err, &oe) || oe.Retryable() || !errors.Is(err, tokencache.ErrInvalidToken) || len(err.Error()) > 600 {
				t.Errorf("%s: got %v, want a short permanent error wrapping ErrInvalidToken", ctype, err)
			}
		}
	})
}
