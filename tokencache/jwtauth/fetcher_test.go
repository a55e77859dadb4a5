package jwtauth_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokencache/tokencache/tokencache"
	"github.com/tokencache/tokencache/tokencache/jwtauth"
)

// issuer is a fake authenticate endpoint. It checks the request and answers
// with status, headers and body.
type issuer struct {
	t      testing.TB
	status int
	header http.Header
	body   string
	calls  atomic.Int32
}

func (is *issuer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	is.calls.Add(1)
	if r.Method != http.MethodPost {
		is.t.Errorf("issuer: got method %s, want POST", r.Method)
	}
	if r.URL.Path != "/authenticate" {
		is.t.Errorf("issuer: got path %s, want /authenticate", r.URL.Path)
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		is.t.Errorf("issuer: got Content-Type %q, want application/json", ct)
	}
	var creds struct {
		APIKey       string `json:"apiKey"`
		ClientSecret string `json:"clientSecret"`
	}
	if err := json.NewDecoder(r.Body).Decode(&creds); err != nil {
		is.t.Errorf("issuer: request body: %v", err)
	}
	if creds.APIKey != testAPIKey || creds.ClientSecret != testSecret {
		is.t.Errorf("issuer: got credentials %q/%q, want the test credentials", creds.APIKey, creds.ClientSecret)
	}
	for k, vs := range is.header {
		w.Header()[k] = vs
	}
	status := is.status
	if status == 0 {
		status = http.StatusOK
	}
	w.WriteHeader(status)
	_, _ = io.WriteString(w, is.body)
}

// newIssuer starts an issuer and returns it with a Fetcher pointed at it.
func newIssuer(t *testing.T, status int, body string, opts ...jwtauth.Option) (*issuer, *jwtauth.Fetcher) {
	t.Helper()
	is := &issuer{t: t, status: status, body: body, header: http.Header{}}
	srv := httptest.NewServer(is)
	t.Cleanup(srv.Close)
	opts = append([]jwtauth.Option{jwtauth.WithBaseURL(srv.URL), jwtauth.WithClock(fixedClock)}, opts...)
	return is, jwtauth.New(testAPIKey, testSecret, opts...)
}

func TestFetchAnswerFormats(t *testing.T) {
	exp := testNow.Add(time.Hour)
	tok := tokenExpiring(exp, "svc")
	tests := []struct {
		name string
		body string
	}{
		{"plain text", tok},
		{"plain text with whitespace", "\r\n  " + tok + " \n"},
		{"text in single quotes", "'" + tok + "'"},
		{"text with a Bearer prefix", "Bearer " + tok},
		{"UTF-8 BOM", "\xef\xbb\xbf" + tok},
		{"JSON string", `"` + tok + `"`},
		{"JSON string with whitespace inside", `" ` + tok + ` "`},
		{"JSON token", `{"token":"` + tok + `"}`},
		{"JSON access_token", `{"access_token":"` + tok + `","token_type":"Bearer","expires_in":3600}`},
		{"JSON jwt", `{"jwt":"` + tok + `","user":{"id":1}}`},
		{"JSON token null, jwt set", `{"token":null,"jwt":"` + tok + `"}`},
		{"JSON token empty, access_token set", `{"token":"","access_token":"` + tok + `"}`},
		{"JSON pretty-printed", "{\n  \"access_token\": \"" + tok + "\"\n}\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, f := newIssuer(t, http.StatusOK, tt.body)
			got, err := f.Fetch(context.Background())
			if err != nil {
				t.Fatalf("Fetch: got error %v, want nil", err)
			}
			if got.AccessToken != tok {
				t.Errorf("Fetch: got token %v, want the issued one", got)
			}
			if got.TokenType != "Bearer" {
				t.Errorf("Fetch: got type %q, want Bearer", got.TokenType)
			}
			if !got.Expiry.Equal(exp) {
				t.Errorf("Fetch: got expiry %v, want %v", got.Expiry, exp)
			}
		})
	}
}

// TestFetchFixtures runs every answer in testdata/jwtauth/authenticate through
// Fetch. Each holds testdata/jwtauth/jwt/valid_hs256.jwt.
func TestFetchFixtures(t *testing.T) {
	want := readFixture(t, "jwt/valid_hs256.jwt")
	files, err := filepath.Glob(filepath.Join(fixtures, "authenticate", "*"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no fixtures: %v", err)
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			body, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			is := &issuer{t: t, body: string(body)}
			srv := httptest.NewServer(is)
			defer srv.Close()
			// The fixtures are signed with fixtureSecret, not testSecret,
			// which the issuer fake insists on: check the signature apart.
			f := jwtauth.New(testAPIKey, testSecret, jwtauth.WithBaseURL(srv.URL), jwtauth.WithClock(fixedClock))
			got, err := f.Fetch(context.Background())
			if err != nil {
				t.Fatalf("Fetch: got error %v, want nil", err)
			}
			if got.AccessToken != want || !got.Expiry.Equal(fixtureExp) {
				t.Errorf("Fetch: got %v, want the fixture token expiring %v", got, fixtureExp)
			}
			if _, err := jwtauth.VerifyHS256(got.AccessToken, []byte(fixtureSecret)); err != nil {
				t.Errorf("VerifyHS256(fixture): %v", err)
			}
		})
	}
}

func TestFetchUnusableAnswers(t *testing.T) {
	const h = `{"alg":"HS256","typ":"JWT"}`
	tests := []struct {
		name     string
		body     string
		wantErr  error
		wantCode string
	}{
		{"empty body", "", jwtauth.ErrResponse, "invalid-response"},
		{"whitespace body", " \n ", jwtauth.ErrResponse, "invalid-response"},
		{"JSON without a token field", `{"data":{"token":"x"}}`, jwtauth.ErrResponse, "invalid-response"},
		{"JSON token not a string", `{"token":{"value":"x"}}`, jwtauth.ErrResponse, "invalid-response"},
		{"JSON array", `["a.b.c"]`, jwtauth.ErrResponse, "invalid-response"},
		{"broken JSON", `{"token":`, jwtauth.ErrResponse, "invalid-response"},
		{"HTML page", "<html><body>Welcome</body></html>", jwtauth.ErrResponse, "invalid-response"},
		{"text with spaces", "access granted", jwtauth.ErrResponse, "invalid-response"},
		{"JSON null", "null", jwtauth.ErrMalformedToken, "invalid-token"},
		{"opaque token", `{"token":"abcdef0123456789"}`, jwtauth.ErrMalformedToken, "invalid-token"},
		{"no exp", makeJWT(h, `{"sub":"svc"}`, testSecret), jwtauth.ErrMissingExpiry, "invalid-token"},
		{"exp string", makeJWT(h, `{"exp":"1700003600"}`, testSecret), jwtauth.ErrInvalidExpiry, "invalid-token"},
		{"exp milliseconds", makeJWT(h, `{"exp":1700003600000}`, testSecret), jwtauth.ErrInvalidExpiry, "invalid-token"},
		{"expired", tokenExpiring(testNow.Add(-time.Second), "svc"), jwtauth.ErrExpired, "expired-token"},
		{"expiring exactly now", tokenExpiring(testNow, "svc"), jwtauth.ErrExpired, "expired-token"},
		{"too large", `{"token":"` + strings.Repeat("a", 70<<10) + `"}`, jwtauth.ErrResponseTooLarge, "invalid-response"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, f := newIssuer(t, http.StatusOK, tt.body)
			got, err := f.Fetch(context.Background())
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Fetch: got error %v, want %v", err, tt.wantErr)
			}
			if got != (tokencache.Token{}) {
				t.Errorf("Fetch: got token %v with an error, want zero", got)
			}
			if !errors.Is(err, tokencache.ErrInvalidToken) {
				t.Errorf("Fetch: error %v does not match tokencache.ErrInvalidToken", err)
			}
			var e *jwtauth.Error
			if !errors.As(err, &e) {
				t.Fatalf("Fetch: got %T, want *jwtauth.Error", err)
			}
			if e.StatusCode != http.StatusOK || e.ErrorCode() != tt.wantCode {
				t.Errorf("Fetch: got status %d code %q, want 200 %q", e.StatusCode, e.ErrorCode(), tt.wantCode)
			}
			if e.Retryable() {
				t.Errorf("Fetch: Retryable() = true for an unusable token, want false")
			}
			assertNoSecrets(t, "Fetch error", err.Error(), tt.body)
		})
	}
}

func TestFetchVerification(t *testing.T) {
	exp := testNow.Add(time.Hour)
	claims := `{"sub":"svc","exp":1700003600}`
	tests := []struct {
		name    string
		token   string
		verify  bool
		wantErr error
	}{
		{"signed with the secret", tokenExpiring(exp, "svc"), true, nil},
		{"signed with another key", makeJWT(`{"alg":"HS256"}`, claims, "not-the-secret"), true, jwtauth.ErrSignature},
		{"alg none", makeJWT(`{"alg":"none"}`, claims, ""), true, jwtauth.ErrAlgorithm},
		{"alg HS512", makeJWT(`{"alg":"HS512"}`, claims, testSecret), true, jwtauth.ErrAlgorithm},
		{"unsigned, verification off", makeJWT(`{"alg":"none"}`, claims, ""), false, nil},
		{"wrong key, verification off", makeJWT(`{"alg":"HS256"}`, claims, "not-the-secret"), false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var opts []jwtauth.Option
			if tt.verify {
				opts = append(opts, jwtauth.WithHMACVerification(true))
			}
			_, f := newIssuer(t, http.StatusOK, tt.token, opts...)
			got, err := f.Fetch(context.Background())
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("Fetch: got error %v, want nil", err)
				}
				if !got.Expiry.Equal(exp) {
					t.Errorf("Fetch: got expiry %v, want %v", got.Expiry, exp)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Fetch: got error %v, want %v", err, tt.wantErr)
			}
			var e *jwtauth.Error
			if !errors.As(err, &e) || e.Retryable() || e.ErrorCode() != "invalid-signature" {
				t.Errorf("Fetch: got %#v, want a permanent *Error with code invalid-signature", err)
			}
			assertNoSecrets(t, "Fetch error", err.Error(), tt.token)
		})
	}
}

func TestFetchErrorStatuses(t *testing.T) {
	leakyToken := tokenExpiring(testNow.Add(time.Hour), "leak")
	tests := []struct {
		name          string
		status        int
		header        http.Header
		body          string
		wantCode      string
		wantRetryable bool
		wantAfter     time.Duration
		wantMessage   string // substring; "" means Message must be empty
	}{
		{"400 code and message", 400, nil, `{"code":"invalid-request","message":"clientSecret is required"}`,
			"invalid-request", false, 0, "clientSecret is required"},
		{"401 RFC 6749 shape", 401, nil, `{"error":"invalid_client","error_description":"Client authentication failed"}`,
			"invalid_client", false, 0, "Client authentication failed"},
		{"401 message echoing the credentials", 401, nil,
			`{"code":"unauthorized","message":"bad key ` + testAPIKey + ` or secret ` + testSecret + `"}`,
			"unauthorized", false, 0, "bad key [redacted] or secret [redacted]"},
		{"403 plain text", 403, nil, "Forbidden\nmore details here", "http-403", false, 0, "Forbidden"},
		{"404 empty", 404, nil, "", "http-404", false, 0, ""},
		{"408", 408, nil, "", "http-408", true, 0, ""},
		{"429 Retry-After seconds", 429, http.Header{"Retry-After": {"7"}}, `{"message":"slow down"}`,
			"http-429", true, 7 * time.Second, "slow down"},
		{"429 Retry-After HTTP date", 429, http.Header{"Retry-After": {testNow.Add(30 * time.Second).Format(http.TimeFormat)}}, "",
			"http-429", true, 30 * time.Second, ""},
		{"429 Retry-After in the past", 429, http.Header{"Retry-After": {testNow.Add(-time.Hour).Format(http.TimeFormat)}}, "",
			"http-429", true, 0, ""},
		{"429 Retry-After huge", 429, http.Header{"Retry-After": {"99999999999"}}, "", "http-429", true, 24 * time.Hour, ""},
		{"429 Retry-After garbage", 429, http.Header{"Retry-After": {"soon"}}, "", "http-429", true, 0, ""},
		{"500 HTML", 500, nil, "<html><body>Internal Server Error</body></html>", "http-500", true, 0, ""},
		{"503 nested errors list", 503, http.Header{"Retry-After": {"120"}}, `{"errors":[{"code":"maintenance","message":"back soon"}]}`,
			"maintenance", true, 2 * time.Minute, "back soon"},
		{"500 Basiq-style body", 500, nil, `{"type":"list","correlationId":"c-1","data":[{"type":"error","code":"internal-server-error","title":"Internal error","detail":"try again"}]}`,
			"internal-server-error", true, 0, "try again"},
		{"502 body echoing a token", 502, nil, `{"message":"upstream said ` + leakyToken + `"}`,
			"http-502", true, 0, "upstream said [redacted]"},
		{"400 huge body", 400, nil, `{"message":"` + strings.Repeat("é", 100<<10) + `"}`, "http-400", false, 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			is, f := newIssuer(t, tt.status, tt.body)
			for k, v := range tt.header {
				is.header[k] = v
			}
			_, err := f.Fetch(context.Background())
			var e *jwtauth.Error
			if !errors.As(err, &e) {
				t.Fatalf("Fetch: got %v (%T), want *jwtauth.Error", err, err)
			}
			if e.StatusCode != tt.status {
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
			if tt.wantMessage == "" && tt.name != "400 huge body" && e.Message != "" {
				t.Errorf("Message: got %q, want empty", e.Message)
			}
			if !strings.Contains(e.Message, tt.wantMessage) {
				t.Errorf("Message: got %q, want it to contain %q", e.Message, tt.wantMessage)
			}
			if len(e.Message) > 210 {
				t.Errorf("Message: got %d bytes, want at most ~200", len(e.Message))
			}
			if errors.Is(err, tokencache.ErrInvalidToken) {
				t.Errorf("Fetch: an HTTP error matches ErrInvalidToken, want not")
			}
			assertNoSecrets(t, "Fetch error", err.Error(), leakyToken)
		})
	}
}

func TestFetchTransportErrors(t *testing.T) {
	t.Run("connection refused", func(t *testing.T) {
		srv := httptest.NewServer(http.NotFoundHandler())
		url := srv.URL
		srv.Close()
		f := jwtauth.New(testAPIKey, testSecret, jwtauth.WithBaseURL(url))
		_, err := f.Fetch(context.Background())
		var e *jwtauth.Error
		if !errors.As(err, &e) {
			t.Fatalf("Fetch: got %v, want *jwtauth.Error", err)
		}
		if e.ErrorCode() != "network" || !e.Retryable() || e.StatusCode != 0 {
			t.Errorf("Fetch: got code %q retryable %v status %d, want network true 0", e.ErrorCode(), e.Retryable(), e.StatusCode)
		}
		assertNoSecrets(t, "Fetch error", err.Error())
	})
	t.Run("cancelled context", func(t *testing.T) {
		is, f := newIssuer(t, http.StatusOK, "x")
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := f.Fetch(ctx)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Fetch: got %v, want context.Canceled in the chain", err)
		}
		if got := jwtauthCode(err); got != "canceled" {
			t.Errorf("ErrorCode: got %q, want canceled", got)
		}
		if n := is.calls.Load(); n != 0 {
			t.Errorf("issuer calls: got %d, want 0", n)
		}
	})
	t.Run("deadline passed", func(t *testing.T) {
		_, f := newIssuer(t, http.StatusOK, "x")
		ctx, cancel := context.WithDeadline(context.Background(), time.Unix(1, 0))
		defer cancel()
		_, err := f.Fetch(ctx)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Fetch: got %v, want context.DeadlineExceeded in the chain", err)
		}
		if got := jwtauthCode(err); got != "timeout" {
			t.Errorf("ErrorCode: got %q, want timeout", got)
		}
	})
	t.Run("credentials in the base URL are not printed", func(t *testing.T) {
		f := jwtauth.New(testAPIKey, testSecret, jwtauth.WithBaseURL("http://user:"+testSecret+"@127.0.0.1:1/?key="+testAPIKey))
		_, err := f.Fetch(context.Background())
		if err == nil {
			t.Fatal("Fetch: got nil error, want one")
		}
		assertNoSecrets(t, "Fetch error", err.Error())
	})
}

func jwtauthCode(err error) string {
	var e *jwtauth.Error
	if errors.As(err, &e) {
		return e.ErrorCode()
	}
	return ""
}

func TestFetchConfigErrors(t *testing.T) {
	for _, base := range []string{"", "ftp://example.com", "not a url", "/relative"} {
		t.Run(base, func(t *testing.T) {
			f := jwtauth.New(testAPIKey, testSecret, jwtauth.WithBaseURL(base))
			_, err := f.Fetch(context.Background())
			if !errors.Is(err, jwtauth.ErrConfig) {
				t.Fatalf("Fetch: got %v, want ErrConfig", err)
			}
			var e *jwtauth.Error
			if !errors.As(err, &e) || e.Retryable() {
				t.Errorf("Fetch: got %v, want a permanent *jwtauth.Error", err)
			}
		})
	}
}

// TestOptionsRefuseInvalidValues: an option given a value it cannot use
// makes Validate and Fetch report a permanent *Error wrapping ErrConfig
// that names the option, before anything is sent; the border values are
// accepted.
func TestOptionsRefuseInvalidValues(t *testing.T) {
	tests := []struct {
		name    string
		opts    []jwtauth.Option
		wantMsg string // "" means accepted
	}{
		{"nil HTTP client", []jwtauth.Option{jwtauth.WithHTTPClient(nil)}, "WithHTTPClient(nil)"},
		{"nil clock", []jwtauth.Option{jwtauth.WithClock(nil)}, "WithClock(nil)"},
		{"negative timeout", []jwtauth.Option{jwtauth.WithTimeout(-time.Second)}, "WithTimeout(-1s)"},
		{"zero timeout", []jwtauth.Option{jwtauth.WithTimeout(0)}, ""},
		{"empty path", []jwtauth.Option{jwtauth.WithPath("")}, `WithPath("")`},
		{"slash path", []jwtauth.Option{jwtauth.WithPath("/")}, `WithPath("/")`},
		{"other path", []jwtauth.Option{jwtauth.WithPath("/v2/auth")}, ""},
		{"no base URL", []jwtauth.Option{jwtauth.WithBaseURL("")}, "no base URL"},
		{"relative base URL", []jwtauth.Option{jwtauth.WithBaseURL("/api")}, "not an absolute"},
		{"first bad option wins", []jwtauth.Option{jwtauth.WithClock(nil), jwtauth.WithTimeout(-1)}, "WithClock(nil)"},
		{"bad option before a good one", []jwtauth.Option{jwtauth.WithHTTPClient(nil), jwtauth.WithHTTPClient(http.DefaultClient)}, "WithHTTPClient(nil)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var calls atomic.Int64
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				calls.Add(1)
				_, _ = io.WriteString(w, tokenExpiring(time.Now().Add(time.Hour), "svc"))
			}))
			defer srv.Close()
			f := jwtauth.New(testAPIKey, testSecret, append([]jwtauth.Option{jwtauth.WithBaseURL(srv.URL)}, tt.opts...)...)
			if tt.wantMsg == "" {
				if err := f.Validate(); err != nil {
					t.Fatalf("Validate: got %v, want nil", err)
				}
				if _, err := f.Fetch(context.Background()); err != nil {
					t.Fatalf("Fetch: got %v, want a token", err)
				}
				return
			}
			verr := f.Validate()
			_, ferr := f.Fetch(context.Background())
			for what, err := range map[string]error{"Validate": verr, "Fetch": ferr} {
				var e *jwtauth.Error
				if !errors.Is(err, jwtauth.ErrConfig) || !errors.As(err, &e) || e.Retryable() || e.ErrorCode() != "invalid-config" {
					t.Fatalf("%s: got %v, want a permanent invalid-config *jwtauth.Error wrapping ErrConfig", what, err)
				}
				if !strings.Contains(err.Error(), tt.wantMsg) {
					t.Errorf("%s: got %q, want it to mention %q", what, err, tt.wantMsg)
				}
				assertNoSecrets(t, what+" error", err.Error())
			}
			if n := calls.Load(); n != 0 {
				t.Errorf("issuer calls: got %d, want 0", n)
			}
		})
	}
	if err := (*jwtauth.Fetcher)(nil).Validate(); !errors.Is(err, jwtauth.ErrConfig) {
		t.Errorf("nil Fetcher: got %v, want ErrConfig", err)
	}
}

func TestFetchOptions(t *testing.T) {
	tok := tokenExpiring(testNow.Add(time.Hour), "svc")
	var gotPath string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotPath = r.URL.Path
		_, _ = io.WriteString(w, tok)
	}))
	defer srv.Close()
	var viaClient atomic.Bool
	client := &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		viaClient.Store(true)
		return http.DefaultTransport.RoundTrip(r)
	})}
	f := jwtauth.New(testAPIKey, testSecret,
		jwtauth.WithBaseURL(srv.URL+"/api/v2/"),
		jwtauth.WithPath("auth/login"),
		jwtauth.WithHTTPClient(client),
		jwtauth.WithClock(fixedClock),
	)
	if _, err := f.Fetch(context.Background()); err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	if gotPath != "/api/v2/auth/login" {
		t.Errorf("path: got %q, want /api/v2/auth/login", gotPath)
	}
	if !viaClient.Load() {
		t.Errorf("WithHTTPClient: the request did not go through the given client")
	}
	// The default clock is the real one: the token above, minted for 2023,
	// is expired by now.
	f = jwtauth.New(testAPIKey, testSecret, jwtauth.WithBaseURL(srv.URL))
	if _, err := f.Fetch(context.Background()); !errors.Is(err, jwtauth.ErrExpired) {
		t.Errorf("Fetch with the real clock: got %v, want ErrExpired", err)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func TestIdentity(t *testing.T) {
	base := jwtauth.New("key", "secret", jwtauth.WithBaseURL("https://a.example"))
	same := jwtauth.New("key", "secret", jwtauth.WithBaseURL("https://a.example"), jwtauth.WithHMACVerification(true))
	if base.Identity() != same.Identity() {
		t.Errorf("Identity: differs for the same endpoint and credentials")
	}
	others := map[string]*jwtauth.Fetcher{
		"base URL": jwtauth.New("key", "secret", jwtauth.WithBaseURL("https://b.example")),
		"path":     jwtauth.New("key", "secret", jwtauth.WithBaseURL("https://a.example"), jwtauth.WithPath("/login")),
		"api key":  jwtauth.New("key2", "secret", jwtauth.WithBaseURL("https://a.example")),
		"secret":   jwtauth.New("key", "secret2", jwtauth.WithBaseURL("https://a.example")),
		"shifted":  jwtauth.New("keys", "ecret", jwtauth.WithBaseURL("https://a.example")),
	}
	for name, f := range others {
		if f.Identity() == base.Identity() {
			t.Errorf("Identity: same identity with a different %s", name)
		}
	}
}

// TestErrorsNeverLeak drives every failure path with an issuer that echoes
// the credentials and a token everywhere it can, and scans every error.
func TestErrorsNeverLeak(t *testing.T) {
	tok := tokenExpiring(testNow.Add(time.Hour), "svc")
	expired := tokenExpiring(testNow.Add(-time.Hour), "old")
	echo := testAPIKey + " " + testSecret + " " + tok
	bodies := []string{
		echo,
		`{"code":"` + testAPIKey + `","message":"` + echo + `"}`,
		`{"error":"` + testSecret + `","error_description":"` + echo + `"}`,
		`{"errors":[{"message":"` + echo + `"}]}`,
		"<html>" + echo + "</html>",
		`{"token":"` + testSecret + `"}`,
		`{"token":"` + expired + `"}`,
		expired,
		makeJWT(`{"alg":"none"}`, `{"exp":1700003600,"secret":"`+testSecret+`"}`, ""),
		makeJWT(`{"alg":"HS256"}`, `{"exp":"`+testSecret+`"}`, testSecret),
		strings.Repeat(echo, 3000),
	}
	for _, status := range []int{200, 400, 401, 403, 429, 500, 503} {
		for i, body := range bodies {
			is, f := newIssuer(t, status, body, jwtauth.WithHMACVerification(true))
			is.header.Set("Retry-After", testSecret)
			is.header.Set("X-Echo", echo)
			_, err := f.Fetch(context.Background())
			if err == nil {
				continue
			}
			assertNoSecrets(t, fmt.Sprintf("Fetch error (status %d, body %d)", status, i), err.Error(), tok, expired)
			var e *jwtauth.Error
			if errors.As(err, &e) {
				assertNoSecrets(t, "Error.Message", e.Message, tok, expired)
				assertNoSecrets(t, "Error.Code", e.Code, tok, expired)
			}
		}
	}
}

func TestFetchRedirects(t *testing.T) {
	tok := tokenExpiring(testNow.Add(time.Hour), "svc")
	var elsewhere atomic.Int32
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		elsewhere.Add(1)
		_, _ = io.WriteString(w, tok)
	}))
	defer other.Close()
	mux := http.NewServeMux()
	mux.HandleFunc("/authenticate", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL+"/authenticate", http.StatusTemporaryRedirect)
	})
	mux.HandleFunc("/old/authenticate", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/new/authenticate", http.StatusPermanentRedirect)
	})
	mux.HandleFunc("/new/authenticate", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, tok)
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()

	t.Run("to another host: refused", func(t *testing.T) {
		f := jwtauth.New(testAPIKey, testSecret, jwtauth.WithBaseURL(srv.URL), jwtauth.WithClock(fixedClock))
		_, err := f.Fetch(context.Background())
		if !errors.Is(err, jwtauth.ErrRedirect) {
			t.Fatalf("Fetch: got %v, want ErrRedirect", err)
		}
		var e *jwtauth.Error
		if !errors.As(err, &e) || e.Retryable() || e.ErrorCode() != "redirect" {
			t.Errorf("Fetch: got %v, want a permanent *Error with code redirect", err)
		}
		if n := elsewhere.Load(); n != 0 {
			t.Errorf("other host: got %d requests, want 0", n)
		}
	})
	t.Run("same host: refused too", func(t *testing.T) {
		// A 308 resends the body, credentials and all, to the new path;
		// even on the same host that is not where the caller pointed.
		var asked atomic.Bool
		client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { asked.Store(true); return nil }}
		f := jwtauth.New(testAPIKey, testSecret, jwtauth.WithBaseURL(srv.URL+"/old"), jwtauth.WithClock(fixedClock), jwtauth.WithHTTPClient(client))
		_, err := f.Fetch(context.Background())
		if !errors.Is(err, jwtauth.ErrRedirect) || !strings.Contains(err.Error(), "/new/authenticate") {
			t.Fatalf("Fetch: got %v, want ErrRedirect naming /new/authenticate", err)
		}
		if asked.Load() {
			t.Errorf("the client's own CheckRedirect was asked: a policy that follows must not get the chance")
		}
		if client.CheckRedirect == nil {
			t.Errorf("the caller's client was modified")
		}
	})
}
