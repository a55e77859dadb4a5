package oauth2cc_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/tokencache/tokencache/tokencache"
	"github.com/tokencache/tokencache/tokencache/oauth2cc"
)

// Credentials distinctive enough that finding them in an error string
// cannot be a coincidence.
const (
	ccClientID     = "cc-client-4711"
	ccClientSecret = "cc_secret_Zx8Qw2Lp9Tn4Rv6Y"
	ccIssuedToken  = "at_9Hq2Wm5Kc8Xv3Bn7Lr4Ty6Ue1Io0Pa" // the access token the fake issues
)

// ccEndpoint is a fake OAuth2 token endpoint answering with a fixed status,
// headers and body, after checking the request.
type ccEndpoint struct {
	t      testing.TB
	status int
	header http.Header
	body   string
	calls  atomic.Int32
}

func (e *ccEndpoint) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	e.calls.Add(1)
	if err := r.ParseForm(); err != nil {
		e.t.Errorf("token endpoint: %v", err)
	}
	if got := r.PostForm.Get("grant_type"); got != "client_credentials" {
		e.t.Errorf("token endpoint: got grant_type %q, want client_credentials", got)
	}
	if id, secret, ok := r.BasicAuth(); !ok || id != ccClientID || secret != ccClientSecret {
		e.t.Errorf("token endpoint: got basic auth %q/%q, want the test credentials", id, secret)
	}
	for k, v := range e.header {
		w.Header()[k] = v
	}
	w.Header().Set("Content-Type", "application/json")
	status := e.status
	if status == 0 {
		status = http.StatusOK
	}
	w.WriteHeader(status)
	_, _ = io.WriteString(w, e.body)
}

// ccFetcher starts a token endpoint and returns it with a Fetcher for it.
func ccFetcher(t *testing.T, status int, body string, header http.Header) (*ccEndpoint, tokencache.Fetcher) {
	t.Helper()
	e := &ccEndpoint{t: t, status: status, body: body, header: header}
	srv := httptest.NewServer(e)
	t.Cleanup(srv.Close)
	return e, oauth2cc.New(ccConfig(srv.URL + "/oauth/token"))
}

func ccConfig(tokenURL string) *clientcredentials.Config {
	return &clientcredentials.Config{
		ClientID:     ccClientID,
		ClientSecret: ccClientSecret,
		TokenURL:     tokenURL,
		Scopes:       []string{"read", "write"},
		AuthStyle:    oauth2.AuthStyleInHeader, // one request per Fetch, even on 401
	}
}

func TestSuccess(t *testing.T) {
	tests := []struct {
		name     string
		body     string
		wantType string
	}{
		{"bearer lower case", `{"access_token":"` + ccIssuedToken + `","token_type":"bearer","expires_in":3600}`, "Bearer"},
		{"no token_type", `{"access_token":"` + ccIssuedToken + `","expires_in":3600}`, "Bearer"},
		{"expires_in as a string", `{"access_token":"` + ccIssuedToken + `","token_type":"Bearer","expires_in":"3600"}`, "Bearer"},
		{"other type kept", `{"access_token":"` + ccIssuedToken + `","token_type":"MAC","expires_in":3600}`, "MAC"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, f := ccFetcher(t, http.StatusOK, tt.body, nil)
			before := time.Now()
			got, err := f.Fetch(context.Background())
			after := time.Now()
			if err != nil {
				t.Fatalf("Fetch: got error %v, want nil", err)
			}
			if got.AccessToken != ccIssuedToken {
				t.Errorf("Fetch: got %v, want the issued token", got)
			}
			if got.TokenType != tt.wantType {
				t.Errorf("TokenType: got %q, want %q", got.TokenType, tt.wantType)
			}
			// x/oauth2 computes Expiry as its own time.Now() + expires_in.
			if lo, hi := before.Add(time.Hour-time.Second), after.Add(time.Hour); got.Expiry.Before(lo) || got.Expiry.After(hi) {
				t.Errorf("Expiry: got %v, want between %v and %v", got.Expiry, lo, hi)
			}
			// No caching in the Fetcher: every Fetch is a request.
			if _, err := f.Fetch(context.Background()); err != nil {
				t.Fatalf("second Fetch: %v", err)
			}
			if n := e.calls.Load(); n != 2 {
				t.Errorf("token endpoint calls: got %d, want 2", n)
			}
		})
	}
}

func TestErrors(t *testing.T) {
	tests := []struct {
		name          string
		status        int
		header        http.Header
		body          string
		wantCode      string
		wantRetryable bool
		wantAfter     time.Duration
		wantDesc      string
		wantInvalid   bool // errors.Is(err, ErrInvalidToken)
	}{
		{name: "401 invalid_client", status: 401,
			body:     `{"error":"invalid_client","error_description":"Client authentication failed"}`,
			wantCode: "invalid_client", wantDesc: "Client authentication failed"},
		{name: "400 invalid_scope", status: 400, body: `{"error":"invalid_scope"}`, wantCode: "invalid_scope"},
		{name: "403 without a body", status: 403, wantCode: "http-403"},
		{name: "500 text body", status: 500, body: "upstream exploded", wantCode: "http-500", wantRetryable: true},
		{name: "503 Retry-After", status: 503, header: http.Header{"Retry-After": {"30"}}, body: `{"error":"temporarily_unavailable"}`,
			wantCode: "temporarily_unavailable", wantRetryable: true, wantAfter: 30 * time.Second},
		{name: "429 Retry-After", status: 429, header: http.Header{"Retry-After": {"12"}}, body: `{"error":"slow_down"}`,
			wantCode: "slow_down", wantRetryable: true, wantAfter: 12 * time.Second},
		{name: "429 Retry-After HTTP date in the past", status: 429, header: http.Header{"Retry-After": {"Mon, 02 Jan 2006 15:04:05 GMT"}},
			wantCode: "http-429", wantRetryable: true},
		{name: "200 with an RFC 6749 error", status: 200, body: `{"error":"invalid_grant","error_description":"grant revoked"}`,
			wantCode: "invalid_grant", wantDesc: "grant revoked"},
		{name: "zero expiry", status: 200, body: `{"access_token":"` + ccIssuedToken + `","token_type":"bearer"}`,
			wantCode: "invalid-token", wantDesc: "expires_in", wantInvalid: true},
		{name: "no access_token", status: 200, body: `{"token_type":"bearer","expires_in":3600}`,
			wantCode: "invalid-response", wantInvalid: true},
		{name: "not JSON", status: 200, body: `<html>`, wantCode: "invalid-response", wantInvalid: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, f := ccFetcher(t, tt.status, tt.body, tt.header)
			got, err := f.Fetch(context.Background())
			if err == nil {
				t.Fatalf("Fetch: got %v, want an error", got)
			}
			var e *oauth2cc.Error
			if !errors.As(err, &e) {
				t.Fatalf("Fetch: got %v (%T), want *oauth2cc.Error", err, err)
			}
			if tt.status != 200 && e.StatusCode != tt.status {
				t.Errorf("StatusCode: got %d, want %d", e.StatusCode, tt.status)
			}
			if got := e.ErrorCode(); got != tt.wantCode {
				t.Errorf("ErrorCode: got %q, want %q", got, tt.wantCode)
			}
			if got := e.Retryable(); got != tt.wantRetryable {
				t.Errorf("Retryable: got %v, want %v", got, tt.wantRetryable)
			}
			if got := e.RetryAfter(); got != tt.wantAfter {
				t.Errorf("RetryAfter: got %v, want %v", got, tt.wantAfter)
			}
			if !strings.Contains(e.Description, tt.wantDesc) {
				t.Errorf("Description: got %q, want it to mention %q", e.Description, tt.wantDesc)
			}
			if got := errors.Is(err, tokencache.ErrInvalidToken); got != tt.wantInvalid {
				t.Errorf("errors.Is(err, ErrInvalidToken): got %v, want %v", got, tt.wantInvalid)
			}
			var rerr *oauth2.RetrieveError
			if errors.As(err, &rerr) {
				t.Errorf("Fetch: the *oauth2.RetrieveError (which prints the body) is in the chain")
			}
			ccAssertNoSecrets(t, err)
		})
	}
}

func TestTransportErrors(t *testing.T) {
	t.Run("connection refused", func(t *testing.T) {
		srv := httptest.NewServer(http.NotFoundHandler())
		srv.Close()
		f := oauth2cc.New(ccConfig(srv.URL + "/oauth/token?client_secret=" + ccClientSecret))
		_, err := f.Fetch(context.Background())
		var e *oauth2cc.Error
		if !errors.As(err, &e) || e.ErrorCode() != "network" || !e.Retryable() {
			t.Fatalf("Fetch: got %v, want a retryable network *OAuth2Error", err)
		}
		ccAssertNoSecrets(t, err)
	})
	t.Run("cancelled context", func(t *testing.T) {
		ep, f := ccFetcher(t, 200, "{}", nil)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := f.Fetch(ctx)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Fetch: got %v, want context.Canceled in the chain", err)
		}
		var e *oauth2cc.Error
		if !errors.As(err, &e) || e.ErrorCode() != "canceled" {
			t.Errorf("Fetch: got %v, want code canceled", err)
		}
		if n := ep.calls.Load(); n != 0 {
			t.Errorf("token endpoint calls: got %d, want 0", n)
		}
	})
	t.Run("nil config", func(t *testing.T) {
		f := oauth2cc.New(nil)
		if _, err := f.Fetch(context.Background()); err == nil {
			t.Errorf("Fetch: got nil error, want one")
		}
		if id, ok := f.(tokencache.Identifier); !ok || id.Identity() == "" {
			t.Errorf("Identity: want a non-empty identity even for a nil config")
		}
	})
}

// TestSecretNeverInErrors: an endpoint that echoes the
// secret and a token everywhere, at every status.
func TestSecretNeverInErrors(t *testing.T) {
	echo := ccClientSecret + " " + ccIssuedToken
	bodies := []string{
		echo,
		`{"error":"invalid_client","error_description":"secret ` + ccClientSecret + ` rejected"}`,
		`{"error":"` + ccClientSecret + `"}`,
		`{"error":"server_error","error_description":"` + strings.Repeat(echo+" ", 500) + `"}`,
		`{"access_token":"` + ccIssuedToken + `","token_type":"bearer"}`,
		`{"access_token":"` + ccIssuedToken + `","expires_in":-10}`,
	}
	for _, status := range []int{200, 400, 401, 403, 429, 500, 502} {
		for i, body := range bodies {
			_, f := ccFetcher(t, status, body, http.Header{"Retry-After": {ccClientSecret}})
			_, err := f.Fetch(context.Background())
			if err == nil {
				continue
			}
			t.Run(fmt.Sprintf("status %d body %d", status, i), func(t *testing.T) { ccAssertNoSecrets(t, err) })
		}
	}
}

func ccAssertNoSecrets(t *testing.T, err error) {
	t.Helper()
	for e := err; e != nil; e = errors.Unwrap(e) {
		s := e.Error()
		if strings.Contains(s, ccClientSecret) || strings.Contains(s, ccIssuedToken) || strings.Contains(s, url.QueryEscape(ccClientSecret)) {
			t.Errorf("error %q leaks the client secret or the token", s)
		}
	}
}

func TestIdentity(t *testing.T) {
	id := func(mod func(*clientcredentials.Config)) string {
		cfg := ccConfig("https://issuer.example/token")
		cfg.EndpointParams = url.Values{"audience": {"api"}}
		if mod != nil {
			mod(cfg)
		}
		return oauth2cc.New(cfg).(tokencache.Identifier).Identity()
	}
	base := id(nil)
	if base != id(nil) {
		t.Errorf("Identity: differs for the same configuration")
	}
	if id(func(c *clientcredentials.Config) { c.AuthStyle = oauth2.AuthStyleInParams }) != base {
		t.Errorf("Identity: changes with AuthStyle, which does not change the token")
	}
	others := map[string]func(*clientcredentials.Config){
		"token URL":       func(c *clientcredentials.Config) { c.TokenURL = "https://other.example/token" },
		"client id":       func(c *clientcredentials.Config) { c.ClientID = "other" },
		"client secret":   func(c *clientcredentials.Config) { c.ClientSecret = "other" },
		"scopes":          func(c *clientcredentials.Config) { c.Scopes = []string{"read"} },
		"endpoint params": func(c *clientcredentials.Config) { c.EndpointParams = url.Values{"audience": {"other"}} },
	}
	for name, mod := range others {
		if id(mod) == base {
			t.Errorf("Identity: same identity with a different %s", name)
		}
	}
}
