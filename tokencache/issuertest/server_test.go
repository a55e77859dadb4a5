package issuertest_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokencache/tokencache/internal/testutil"
	"github.com/tokencache/tokencache/tokencache/issuertest"
)

// newClock is the shared hand-moved clock, at a fixed moment so that
// the issuer's expiries are the same on every run.
func newClock() *testutil.Clock {
	return testutil.NewClock(time.Date(2025, 3, 14, 9, 0, 0, 0, time.UTC))
}

// response is a decoded answer.
type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("body %q is not a JSON object: %v", r.body, err)
	}
	return m
}

// basiqError checks r is a Basiq error object and returns its code and source.
func (r response) basiqError(t *testing.T) (code, source string) {
	t.Helper()
	var e struct {
		Type          string `json:"type"`
		CorrelationID string `json:"correlationId"`
		Data          []struct {
			Type   string            `json:"type"`
			Code   string            `json:"code"`
			Title  string            `json:"title"`
			Source map[string]string `json:"source"`
		} `json:"data"`
	}
	if err := json.Unmarshal(r.body, &e); err != nil {
		t.Fatalf("error body %q: %v", r.body, err)
	}
	if e.Type != "list" || e.CorrelationID == "" || len(e.Data) != 1 || e.Data[0].Type != "error" || e.Data[0].Title == "" {
		t.Fatalf("error body %s is not Basiq-shaped", r.body)
	}
	return e.Data[0].Code, e.Data[0].Source["parameter"]
}

func do(t *testing.T, req *http.Request) response {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{resp.StatusCode, resp.Header, body}
}

// tokenRequest builds a POST /token as Basiq's docs show it.
func tokenRequest(t *testing.T, srv *issuertest.Server, form url.Values) *http.Request {
	t.Helper()
	req, err := http.NewRequest("POST", srv.URL()+"/token", strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Basic "+srv.APIKey())
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("basiq-version", "3.0")
	return req
}

func getResource(t *testing.T, srv *issuertest.Server, path, token string) response {
	t.Helper()
	req, _ := http.NewRequest("GET", srv.URL()+path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	return do(t, req)
}

func TestTokenValidation(t *testing.T) {
	server := url.Values{"scope": {"SERVER_ACCESS"}}
	tests := []struct {
		name       string
		edit       func(*http.Request)
		form       url.Values
		wantStatus int
		wantCode   string
		wantSource string
	}{
		{name: "server", form: server, wantStatus: 200},
		{name: "client", form: url.Values{"scope": {"CLIENT_ACCESS"}, "userId": {"u1"}}, wantStatus: 200},
		{name: "client_credentials grant", form: url.Values{"scope": {"SERVER_ACCESS"}, "grant_type": {"client_credentials"}}, wantStatus: 200},
		{name: "version 2.0", form: server, edit: func(r *http.Request) { r.Header.Set("basiq-version", "2.0") }, wantStatus: 200},
		{name: "content type with charset", form: server,
			edit: func(r *http.Request) {
				r.Header.Set("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")
			}, wantStatus: 200},
		{name: "GET", form: server, edit: func(r *http.Request) { r.Method = "GET" }, wantStatus: 405, wantCode: "invalid-request"},
		{name: "no version", form: server, edit: func(r *http.Request) { r.Header.Del("basiq-version") },
			wantStatus: 400, wantCode: "parameter-not-valid", wantSource: "basiq-version"},
		{name: "old version", form: server, edit: func(r *http.Request) { r.Header.Set("basiq-version", "1.0") },
			wantStatus: 400, wantCode: "parameter-not-valid", wantSource: "basiq-version"},
		{name: "no Authorization", form: server, edit: func(r *http.Request) { r.Header.Del("Authorization") },
			wantStatus: 400, wantCode: "parameter-not-valid", wantSource: "Authorization"},
		{name: "Bearer scheme", form: server, edit: func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+issuertest.DefaultAPIKey) },
			wantStatus: 400, wantCode: "parameter-not-valid", wantSource: "Authorization"},
		{name: "empty Basic", form: server, edit: func(r *http.Request) { r.Header.Set("Authorization", "Basic ") },
			wantStatus: 400, wantCode: "parameter-not-valid", wantSource: "Authorization"},
		{name: "wrong key", form: server, edit: func(r *http.Request) { r.Header.Set("Authorization", "Basic d3Jvbmc=") },
			wantStatus: 401, wantCode: "invalid-client", wantSource: "Authorization"},
		{name: "key encoded again", form: server, edit: func(r *http.Request) {
			r.Header.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(issuertest.DefaultAPIKey)))
		}, wantStatus: 401, wantCode: "invalid-client", wantSource: "Authorization"},
		{name: "JSON body", form: server, edit: func(r *http.Request) { r.Header.Set("Content-Type", "application/json") },
			wantStatus: 400, wantCode: "invalid-request"},
		{name: "password grant", form: url.Values{"scope": {"SERVER_ACCESS"}, "grant_type": {"password"}},
			wantStatus: 400, wantCode: "unsupported-grant-type", wantSource: "grant_type"},
		{name: "no scope", form: url.Values{}, wantStatus: 400, wantCode: "invalid-request", wantSource: "scope"},
		{name: "unknown scope", form: url.Values{"scope": {"ADMIN_ACCESS"}}, wantStatus: 400, wantCode: "invalid-request", wantSource: "scope"},
		{name: "lowercase scope", form: url.Values{"scope": {"server_access"}}, wantStatus: 400, wantCode: "invalid-request", wantSource: "scope"},
		{name: "client without user", form: url.Values{"scope": {"CLIENT_ACCESS"}},
			wantStatus: 400, wantCode: "parameter-not-valid", wantSource: "userId"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := issuertest.RunT(t)
			req := tokenRequest(t, srv, tt.form)
			if tt.edit != nil {
				tt.edit(req)
			}
			resp := do(t, req)
			if resp.status != tt.wantStatus {
				t.Fatalf("got status %d (%s), want %d", resp.status, resp.body, tt.wantStatus)
			}
			if tt.wantStatus == 200 {
				m := resp.json(t)
				if m["token_type"] != "Bearer" || m["expires_in"] != 3600.0 || m["access_token"] == "" {
					t.Errorf("got %s, want a Bearer token for 3600s", resp.body)
				}
				if tok, _ := m["access_token"].(string); !srv.Valid(tok) {
					t.Errorf("the issued token is not valid")
				}
			} else {
				code, source := resp.basiqError(t)
				if code != tt.wantCode || source != tt.wantSource {
					t.Errorf("got code %q source %q, want %q %q", code, source, tt.wantCode, tt.wantSource)
				}
				if bytes.Contains(resp.body, []byte(srv.APIKey())) {
					t.Errorf("error body echoes the key")
				}
			}
			if got := srv.Stats().TokenCalls; got != 1 {
				t.Errorf("got %d token calls, want 1", got)
			}
			if got := srv.Requests(); len(got) != 1 || got[0].Status != tt.wantStatus {
				t.Errorf("got requests %+v, want one with status %d", got, tt.wantStatus)
			}
		})
	}
}

func TestTokensUniqueAndCounted(t *testing.T) {
	srv := issuertest.RunT(t)
	seen := map[string]bool{}
	for i := range 20 {
		form := url.Values{"scope": {"SERVER_ACCESS"}}
		if i%2 == 1 {
			form = url.Values{"scope": {"CLIENT_ACCESS"}, "userId": {"u1"}}
		}
		tok, _ := do(t, tokenRequest(t, srv, form)).json(t)["access_token"].(string)
		if len(tok) < 32 || seen[tok] {
			t.Fatalf("got token %q: short or repeated", tok)
		}
		seen[tok] = true
	}
	st := srv.Stats()
	if st.TokenCalls != 20 || st.ServerTokenCalls != 10 || st.ClientTokenCalls != 10 || st.TokensIssued != 20 {
		t.Errorf("got %+v, want 20 calls, 10 per scope, 20 issued", st)
	}
}

func TestLifetimeAndExpiry(t *testing.T) {
	clk := newClock()
	srv := issuertest.RunT(t, issuertest.WithClock(clk.Now), issuertest.WithLifetime(2*time.Second))
	m := do(t, tokenRequest(t, srv, url.Values{"scope": {"SERVER_ACCESS"}})).json(t)
	if m["expires_in"] != 2.0 {
		t.Errorf("got expires_in %v, want 2", m["expires_in"])
	}
	tok := m["access_token"].(string)
	if r := getResource(t, srv, "/api/ping", tok); r.status != 200 {
		t.Fatalf("got %d, want 200 before expiry", r.status)
	}
	clk.Advance(2 * time.Second)
	r := getResource(t, srv, "/api/ping", tok)
	if r.status != 401 {
		t.Fatalf("got %d, want 401 at expiry", r.status)
	}
	if code, _ := r.basiqError(t); code != "unauthorized-access" {
		t.Errorf("got code %q, want unauthorized-access", code)
	}

	srv.SetLifetime(250 * time.Millisecond)
	m = do(t, tokenRequest(t, srv, url.Values{"scope": {"SERVER_ACCESS"}})).json(t)
	if m["expires_in"] != 0.25 {
		t.Errorf("got expires_in %v, want 0.25", m["expires_in"])
	}
	if st := srv.Stats(); st.ResourceCalls != 2 || st.Unauthorized != 1 {
		t.Errorf("got %+v, want 2 resource calls, 1 unauthorized", st)
	}
}

func TestResourceAuth(t *testing.T) {
	srv := issuertest.RunT(t)
	server := do(t, tokenRequest(t, srv, url.Values{"scope": {"SERVER_ACCESS"}})).json(t)["access_token"].(string)
	client := do(t, tokenRequest(t, srv, url.Values{"scope": {"CLIENT_ACCESS"}, "userId": {"u1"}})).json(t)["access_token"].(string)
	tests := []struct {
		name, path, token string
		want              int
	}{
		{"server token, any user", "/users/u2/accounts", server, 200},
		{"server token, api", "/api/things", server, 200},
		{"client token, own user", "/users/u1", client, 200},
		{"client token, other user", "/users/u2", client, 403},
		{"no token", "/users/u1", "", 401},
		{"unknown token", "/users/u1", "not-a-token", 401},
		{"unknown path", "/nothing", server, 404},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := getResource(t, srv, tt.path, tt.token).status; got != tt.want {
				t.Errorf("GET %s: got %d, want %d", tt.path, got, tt.want)
			}
		})
	}

	if !srv.Revoke(client) || srv.Revoke(client) {
		t.Errorf("Revoke: want true once, then false")
	}
	srv.RevokeAll()
	if got := getResource(t, srv, "/api/x", server).status; got != 401 {
		t.Errorf("after RevokeAll: got %d, want 401", got)
	}
}

// verifyJWT checks an HS256 JWT and returns its claims.
func verifyJWT(t *testing.T, jwt, secret string) map[string]any {
	t.Helper()
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		t.Fatalf("got %q, want a compact JWT", jwt)
	}
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(parts[0] + "." + parts[1]))
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil || !hmac.Equal(sig, m.Sum(nil)) {
		t.Fatalf("bad signature on %q", jwt)
	}
	header, _ := base64.RawURLEncoding.DecodeString(parts[0])
	if string(header) != `{"alg":"HS256","typ":"JWT"}` {
		t.Errorf("got header %s", header)
	}
	payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
	var claims map[string]any
	if err := json.Unmarshal(payload, &claims); err != nil {
		t.Fatal(err)
	}
	return claims
}

func authenticate(t *testing.T, srv *issuertest.Server, apiKey, secret string) response {
	t.Helper()
	body, _ := json.Marshal(map[string]string{"apiKey": apiKey, "clientSecret": secret})
	req, _ := http.NewRequest("POST", srv.URL()+"/authenticate", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	return do(t, req)
}

func TestAuthenticate(t *testing.T) {
	clk := newClock()
	tests := []struct {
		format issuertest.AuthFormat
		field  string // "" for plain text
	}{
		{issuertest.AuthText, ""},
		{issuertest.AuthJSONToken, "token"},
		{issuertest.AuthJSONAccessToken, "access_token"},
		{issuertest.AuthJSONJWT, "jwt"},
	}
	for _, tt := range tests {
		t.Run(tt.field, func(t *testing.T) {
			srv := issuertest.RunT(t, issuertest.WithClock(clk.Now), issuertest.WithAuthFormat(tt.format),
				issuertest.WithClientSecret("s3cret-for-hs256"), issuertest.WithLifetime(90*time.Second))
			r := authenticate(t, srv, srv.APIKey(), srv.ClientSecret())
			if r.status != 200 {
				t.Fatalf("got %d %s, want 200", r.status, r.body)
			}
			jwt := string(r.body)
			if tt.field != "" {
				jwt, _ = r.json(t)[tt.field].(string)
			}
			claims := verifyJWT(t, jwt, "s3cret-for-hs256")
			if want := float64(clk.Now().Add(90 * time.Second).Unix()); claims["exp"] != want {
				t.Errorf("got exp %v, want %v", claims["exp"], want)
			}
			if got := getResource(t, srv, "/api/x", jwt).status; got != 200 {
				t.Errorf("resource with the JWT: got %d, want 200", got)
			}
		})
	}
	t.Run("errors", func(t *testing.T) {
		srv := issuertest.RunT(t)
		if r := authenticate(t, srv, srv.APIKey(), "wrong"); r.status != 401 {
			t.Errorf("wrong secret: got %d, want 401", r.status)
		}
		if r := authenticate(t, srv, "wrong", srv.ClientSecret()); r.status != 401 {
			t.Errorf("wrong key: got %d, want 401", r.status)
		}
		if r := authenticate(t, srv, "", ""); r.status != 400 {
			t.Errorf("empty: got %d, want 400", r.status)
		}
		req, _ := http.NewRequest("POST", srv.URL()+"/authenticate", strings.NewReader("apiKey=x"))
		if r := do(t, req); r.status != 400 {
			t.Errorf("not JSON: got %d, want 400", r.status)
		}
		req, _ = http.NewRequest("GET", srv.URL()+"/authenticate", nil)
		if r := do(t, req); r.status != 405 {
			t.Errorf("GET: got %d, want 405", r.status)
		}
		if st := srv.Stats(); st.AuthenticateCalls != 5 || st.TokensIssued != 0 {
			t.Errorf("got %+v, want 5 authenticate calls, none issued", st)
		}
	})
}

func TestRotation(t *testing.T) {
	clk := newClock()
	srv := issuertest.RunT(t, issuertest.WithClock(clk.Now))
	jwt := string(authenticate(t, srv, srv.APIKey(), srv.ClientSecret()).body)
	basiqTok := do(t, tokenRequest(t, srv, url.Values{"scope": {"SERVER_ACCESS"}})).json(t)["access_token"].(string)

	if h := getResource(t, srv, "/api/x", jwt).header.Get("Authorization"); h != "" {
		t.Errorf("rotation off: got Authorization %q, want none", h)
	}
	srv.SetRotation(true)
	clk.Advance(10 * time.Second)
	r := getResource(t, srv, "/api/x", jwt)
	next, ok := strings.CutPrefix(r.header.Get("Authorization"), "Bearer ")
	if !ok || next == jwt {
		t.Fatalf("got Authorization %q, want a newer Bearer JWT", r.header.Get("Authorization"))
	}
	old, newer := verifyJWT(t, jwt, srv.ClientSecret()), verifyJWT(t, next, srv.ClientSecret())
	if newer["exp"].(float64) <= old["exp"].(float64) {
		t.Errorf("got exp %v after %v, want later", newer["exp"], old["exp"])
	}
	if got := getResource(t, srv, "/api/x", next).status; got != 200 {
		t.Errorf("rotated JWT: got %d, want 200", got)
	}
	if h := getResource(t, srv, "/api/x", basiqTok).header.Get("Authorization"); h != "" {
		t.Errorf("Basiq tokens do not rotate: got %q", h)
	}
	if st := srv.Stats(); st.Rotations != 2 {
		t.Errorf("got %d rotations, want 2", st.Rotations)
	}
}

func TestFailures(t *testing.T) {
	srv := issuertest.RunT(t)
	f := issuertest.Fail(429, "")
	f.RetryAfter = "30"
	srv.FailNext(2, f)
	for i := range 2 {
		r := do(t, tokenRequest(t, srv, url.Values{"scope": {"SERVER_ACCESS"}}))
		if code, _ := r.basiqError(t); r.status != 429 || code != "too-many-requests" || r.header.Get("Retry-After") != "30" {
			t.Errorf("call %d: got %d %s Retry-After %q", i, r.status, code, r.header.Get("Retry-After"))
		}
	}
	if r := do(t, tokenRequest(t, srv, url.Values{"scope": {"SERVER_ACCESS"}})); r.status != 200 {
		t.Errorf("after the injected failures: got %d, want 200", r.status)
	}

	srv.FailAlways(issuertest.Fail(500, ""))
	for range 3 {
		if r := authenticate(t, srv, srv.APIKey(), srv.ClientSecret()); r.status != 500 {
			t.Errorf("FailAlways on /authenticate: got %d, want 500", r.status)
		}
	}
	srv.Reset()
	if r := authenticate(t, srv, srv.APIKey(), srv.ClientSecret()); r.status != 200 {
		t.Errorf("after Reset: got %d, want 200", r.status)
	}
	srv.FailNext(1, issuertest.Failure{Status: 502, Body: "<html>bad gateway</html>"})
	r := do(t, tokenRequest(t, srv, url.Values{"scope": {"SERVER_ACCESS"}}))
	if r.status != 502 || !strings.HasPrefix(r.header.Get("Content-Type"), "text/html") || string(r.body) != "<html>bad gateway</html>" {
		t.Errorf("got %d %q %q, want the raw HTML 502", r.status, r.header.Get("Content-Type"), r.body)
	}
	if got := srv.Stats().Injected; got != 6 {
		t.Errorf("got %d injected, want 6", got)
	}
	for _, tt := range []struct {
		status int
		code   string
	}{{400, "invalid-grant"}, {403, "access-denied"}, {404, "parameter-not-valid"}, {400, "unsupported-grant-type"}} {
		srv.FailNext(1, issuertest.Fail(tt.status, tt.code))
		r := do(t, tokenRequest(t, srv, url.Values{"scope": {"SERVER_ACCESS"}}))
		if code, _ := r.basiqError(t); r.status != tt.status || code != tt.code {
			t.Errorf("got %d %s, want %d %s", r.status, code, tt.status, tt.code)
		}
	}
}

func TestGarbage(t *testing.T) {
	srv := issuertest.RunT(t)
	for _, g := range []issuertest.Garbage{issuertest.GarbageNotJSON, issuertest.GarbageTruncated,
		issuertest.GarbageEmptyToken, issuertest.GarbageZeroExpiry, issuertest.GarbageHuge} {
		t.Run(g.String(), func(t *testing.T) {
			srv.GarbleNext(1, g)
			r := do(t, tokenRequest(t, srv, url.Values{"scope": {"SERVER_ACCESS"}}))
			if r.status != 200 {
				t.Fatalf("got %d, want 200", r.status)
			}
			var m map[string]any
			err := json.Unmarshal(r.body, &m)
			switch g {
			case issuertest.GarbageNotJSON, issuertest.GarbageTruncated:
				if err == nil {
					t.Errorf("got valid JSON %s", r.body)
				}
			case issuertest.GarbageEmptyToken:
				if err != nil || m["access_token"] != "" {
					t.Errorf("got %s, want an empty token", r.body)
				}
			case issuertest.GarbageZeroExpiry:
				if err != nil || m["expires_in"] != 0.0 {
					t.Errorf("got %s, want expires_in 0", r.body)
				}
			case issuertest.GarbageHuge:
				if err != nil || len(r.body) <= 1<<20 {
					t.Errorf("got %d bytes (%v), want valid JSON over 1 MiB", len(r.body), err)
				}
			}
			srv.GarbleNext(1, g)
			if r := authenticate(t, srv, srv.APIKey(), srv.ClientSecret()); r.status != 200 {
				t.Errorf("/authenticate: got %d, want 200 with garbage", r.status)
			}
			if r := do(t, tokenRequest(t, srv, url.Values{"scope": {"SERVER_ACCESS"}})); r.status != 200 || json.Unmarshal(r.body, &m) != nil {
				t.Errorf("after one garbled call: got %d %q, want a good token", r.status, r.body)
			}
		})
	}
}

func TestLatencyHonoursContextAndClose(t *testing.T) {
	srv := issuertest.RunT(t, issuertest.WithLatency(time.Hour))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	req := tokenRequest(t, srv, url.Values{"scope": {"SERVER_ACCESS"}}).WithContext(ctx)
	if _, err := http.DefaultClient.Do(req); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("got %v, want the client's deadline", err)
	}
	// A request parked in the latency wait does not keep Close waiting.
	done := make(chan error, 1)
	go func() {
		_, err := http.DefaultClient.Do(tokenRequest(t, srv, url.Values{"scope": {"SERVER_ACCESS"}}))
		done <- err
	}()
	testutil.Eventually(t, "the second call to reach the issuer", func() bool { return srv.Stats().TokenCalls >= 2 })
	srv.Close()
	<-done // returns (with a 503 or a closed connection) instead of hanging
	srv.Close()
}

func TestStatsAndRevokeOverHTTP(t *testing.T) {
	srv := issuertest.RunT(t)
	tok := do(t, tokenRequest(t, srv, url.Values{"scope": {"SERVER_ACCESS"}})).json(t)["access_token"].(string)
	st, err := issuertest.FetchStats(context.Background(), srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	if st != srv.Stats() || st.TokenCalls != 1 {
		t.Errorf("got %+v over HTTP, want %+v", st, srv.Stats())
	}
	resp, err := http.Post(srv.URL()+issuertest.RevokePath, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if srv.Valid(tok) {
		t.Errorf("token valid after POST %s", issuertest.RevokePath)
	}
}

func TestLifecycle(t *testing.T) {
	srv := issuertest.New()
	if srv.URL() != "" {
		t.Errorf("got URL %q before Start, want empty", srv.URL())
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err == nil {
		t.Errorf("second Start: got nil, want an error")
	}
	srv.Close()
	srv.Close()
	if err := srv.StartOn("127.0.0.1:0"); err == nil {
		t.Errorf("Start after Close: got nil, want an error")
	}
	s2 := issuertest.NewServer()
	defer s2.Close()
	env := strings.Join(s2.Env(), " ")
	for _, want := range []string{"TOKENCACHE_ISSUER_URL=http://", "BASIQ_API_KEY=" + issuertest.DefaultAPIKey, "TOKENCACHE_CLIENT_SECRET="} {
		if !strings.Contains(env, want) {
			t.Errorf("Env() = %s, want %s", env, want)
		}
	}
}

// childEnv marks the process as the child of TestChildProcess.
const childEnv = "ISSUERTEST_CHILD"

// TestChildProcess: another process reaches the fake through its URL and
// Env, and the parent sees the calls in its counters.
func TestChildProcess(t *testing.T) {
	if os.Getenv(childEnv) == "1" {
		return // the child runs TestMain's branch, not this test
	}
	srv := issuertest.RunT(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestChildProcess$", "-test.count=1")
	cmd.Env = append(append(os.Environ(), childEnv+"=1"), srv.Env()...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	if st := srv.Stats(); st.TokenCalls != 1 || st.TokensIssued != 1 || st.ResourceCalls != 1 || st.Unauthorized != 0 {
		t.Errorf("got %+v, want the child's token call and resource call", st)
	}
}

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		os.Exit(child())
	}
	os.Exit(m.Run())
}

// child fetches a Basiq token from the server named in its environment
// and uses it once; it exits non-zero on any surprise.
func child() int {
	base := os.Getenv("TOKENCACHE_ISSUER_URL")
	req, _ := http.NewRequest("POST", base+"/token", strings.NewReader("scope=SERVER_ACCESS"))
	req.Header.Set("Authorization", "Basic "+os.Getenv("BASIQ_API_KEY"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("basiq-version", "3.0")
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		return 3
	}
	var body struct {
		AccessToken string `json:"access_token"`
	}
	err = json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	if err != nil {
		return 4
	}
	req, _ = http.NewRequest("GET", base+"/users/u1", nil)
	req.Header.Set("Authorization", "Bearer "+body.AccessToken)
	resp, err = http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		return 5
	}
	resp.Body.Close()
	if st, err := issuertest.FetchStats(context.Background(), base); err != nil || st.TokenCalls != 1 {
		return 6
	}
	return 0
}

// TestConcurrentUse hammers every endpoint while settings change (-race).
func TestConcurrentUse(t *testing.T) {
	srv := issuertest.RunT(t)
	const n = 8
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			srv.SetRotation(i%2 == 0)
			srv.SetAuthFormat(issuertest.AuthFormat(i % 4))
			srv.SetLifetime(time.Duration(i%5+1) * time.Hour)
			_ = srv.Requests()
			_ = srv.Stats()
		}
	}()
	var calls sync.WaitGroup
	for range n {
		calls.Add(1)
		go func() {
			defer calls.Done()
			client := &http.Client{}
			for range 10 {
				req := tokenRequest(t, srv, url.Values{"scope": {"SERVER_ACCESS"}})
				resp, err := client.Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				var m map[string]any
				_ = json.NewDecoder(resp.Body).Decode(&m)
				resp.Body.Close()
				tok, _ := m["access_token"].(string)
				req, _ = http.NewRequest("GET", srv.URL()+"/api/x", nil)
				req.Header.Set("Authorization", "Bearer "+tok)
				if resp, err := client.Do(req); err == nil {
					resp.Body.Close()
				}
			}
		}()
	}
	calls.Wait()
	close(stop)
	wg.Wait()
	if st := srv.Stats(); st.TokenCalls != n*10 || st.ResourceCalls != n*10 || st.Unauthorized != 0 {
		t.Errorf("got %+v, want %d token and resource calls, no 401", st, n*10)
	}
}

// fatalTB is a TB that records Fatalf instead of ending the test.
type fatalTB struct{ fatal string }

func (*fatalTB) Helper()                             {}
func (*fatalTB) Cleanup(func())                      {}
func (f *fatalTB) Fatalf(format string, args ...any) { f.fatal = fmt.Sprintf(format, args...) }

// TestOptionsRefuseInvalidValues: an option given a value the Server cannot
// use is reported, wrapping ErrConfig and naming the option, by Validate
// and Start, by RunT as a test failure, and to every request as a 500; the
// border values are accepted.
func TestOptionsRefuseInvalidValues(t *testing.T) {
	tests := []struct {
		name    string
		opts    []issuertest.Option
		wantMsg string // "" means accepted
	}{
		{"empty API key", []issuertest.Option{issuertest.WithAPIKey("")}, `WithAPIKey("")`},
		{"empty client secret", []issuertest.Option{issuertest.WithClientSecret("")}, `WithClientSecret("")`},
		{"nil clock", []issuertest.Option{issuertest.WithClock(nil)}, "WithClock(nil)"},
		{"negative latency", []issuertest.Option{issuertest.WithLatency(-time.Millisecond)}, "WithLatency(-1ms)"},
		{"zero latency", []issuertest.Option{issuertest.WithLatency(0)}, ""},
		{"unknown auth format", []issuertest.Option{issuertest.WithAuthFormat(issuertest.AuthJSONJWT + 1)}, "WithAuthFormat(4)"},
		{"negative auth format", []issuertest.Option{issuertest.WithAuthFormat(-1)}, "WithAuthFormat(-1)"},
		{"last auth format", []issuertest.Option{issuertest.WithAuthFormat(issuertest.AuthJSONJWT)}, ""},
		{"no version", []issuertest.Option{issuertest.WithVersions()}, "WithVersions([])"},
		{"an empty version", []issuertest.Option{issuertest.WithVersions("3.0", "")}, `WithVersions(["3.0" ""])`},
		{"one version", []issuertest.Option{issuertest.WithVersions("3.0")}, ""},
		{"expired lifetime is a feature", []issuertest.Option{issuertest.WithLifetime(-time.Second)}, ""},
		{"first bad option wins", []issuertest.Option{issuertest.WithClock(nil), issuertest.WithLatency(-1)}, "WithClock(nil)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := issuertest.New(tt.opts...)
			defer s.Close()
			rec := httptest.NewRecorder()
			s.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, issuertest.StatsPath, nil))
			if tt.wantMsg == "" {
				if err := s.Validate(); err != nil {
					t.Fatalf("Validate: got %v, want nil", err)
				}
				if rec.Code != http.StatusOK {
					t.Errorf("GET %s: got %d, want 200", issuertest.StatsPath, rec.Code)
				}
				return
			}
			for what, err := range map[string]error{"Validate": s.Validate(), "Start": s.Start()} {
				if !errors.Is(err, issuertest.ErrConfig) || !strings.Contains(err.Error(), tt.wantMsg) {
					t.Errorf("%s: got %v, want ErrConfig mentioning %s", what, err, tt.wantMsg)
				}
			}
			if s.URL() != "" {
				t.Errorf("URL: got %q, want none: a misconfigured server does not listen", s.URL())
			}
			if rec.Code != http.StatusInternalServerError || !strings.Contains(rec.Body.String(), tt.wantMsg) {
				t.Errorf("GET %s: got %d %q, want 500 naming %s", issuertest.StatsPath, rec.Code, rec.Body, tt.wantMsg)
			}
			var tb fatalTB
			issuertest.RunT(&tb, tt.opts...)
			if !strings.Contains(tb.fatal, tt.wantMsg) {
				t.Errorf("RunT: got failure %q, want one naming %s", tb.fatal, tt.wantMsg)
			}
		})
	}
	for _, secret := range []string{issuertest.DefaultAPIKey, issuertest.DefaultClientSecret} {
		if err := issuertest.New(issuertest.WithClock(nil)).Validate(); strings.Contains(err.Error(), secret) {
			t.Errorf("config error holds a credential: %v", err)
		}
	}
}
