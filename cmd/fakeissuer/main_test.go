package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tokencache/tokencache/tokencache/basiq"
	"github.com/tokencache/tokencache/tokencache/issuertest"
	"github.com/tokencache/tokencache/tokencache/jwtauth"
)

// serve runs the command on a free port until the test ends and returns
// its base URL.
func serve(t *testing.T, env map[string]string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	urls := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, append([]string{"--listen", "127.0.0.1:0"}, args...),
			func(k string) string { return env[k] }, slog.New(slog.DiscardHandler), func(u string) { urls <- u })
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})
	select {
	case u := <-urls:
		return u
	case err := <-done:
		t.Fatalf("run: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("not listening after 10s")
	}
	return ""
}

func TestServesIssuertest(t *testing.T) {
	const key, secret = "compose-dev-key", "compose-dev-secret"
	base := serve(t, map[string]string{envBasiqAPIKey: key, envClientSecret: secret}, "--latency", "0")
	ctx := context.Background()

	tok, err := basiq.New(key, basiq.WithBaseURL(base)).Fetch(ctx)
	if err != nil {
		t.Fatalf("basiq fetch: %v", err)
	}
	jwt, err := jwtauth.New(key, secret, jwtauth.WithBaseURL(base)).Fetch(ctx)
	if err != nil {
		t.Fatalf("jwt fetch: %v", err)
	}
	var be *basiq.Error
	if _, err := basiq.New("wrong-key", basiq.WithBaseURL(base)).Fetch(ctx); !errors.As(err, &be) || be.Status != 401 || be.Code != "invalid-client" {
		t.Errorf("wrong key: %v, want 401 invalid-client", err)
	}

	// Basiq-like API paths the example backend proxies, and the
	// issuertest resource paths, check the Bearer token.
	for _, tc := range []struct {
		path, token string
		want        int
	}{
		{"/institutions", tok.AccessToken, 200},
		{"/institutions", jwt.AccessToken, 200},
		{"/institutions", "nope", 401},
		{"/users/u-1/accounts", tok.AccessToken, 200},
		{"/jobs/no-such-job", tok.AccessToken, 404}, // the Basiq API's, not the catch-all resource
		{"/api/x", "", 401},
	} {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+tc.path, nil)
		if tc.token != "" {
			req.Header.Set("Authorization", "Bearer "+tc.token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("GET %s: %d, want %d", tc.path, resp.StatusCode, tc.want)
		}
	}

	st, err := issuertest.FetchStats(ctx, base)
	if err != nil {
		t.Fatal(err)
	}
	if st.TokenCalls != 2 || st.AuthenticateCalls != 1 || st.ResourceCalls != 6 {
		t.Errorf("stats %+v: want 2 token, 1 authenticate and 6 resource calls", st)
	}
}

func TestDefaultsAndLatency(t *testing.T) {
	base := serve(t, map[string]string{envLatency: "150ms"})
	start := time.Now()
	if _, err := basiq.New(issuertest.DefaultAPIKey, basiq.WithBaseURL(base)).Fetch(context.Background()); err != nil {
		t.Fatalf("fetch with the default key: %v", err)
	}
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Errorf("answered after %v, want the 150ms latency", d)
	}
}

func TestUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		env  map[string]string
	}{
		{[]string{"--latency", "x"}, nil},
		{[]string{"--lifetime", "0s"}, nil},
		{[]string{"extra"}, nil},
		{nil, map[string]string{envLatency: "soon"}},
	} {
		err := run(context.Background(), tc.args, func(k string) string { return tc.env[k] }, slog.New(slog.DiscardHandler), nil)
		if !errors.Is(err, errUsage) {
			t.Errorf("%v %v: %v, want a usage error", tc.args, tc.env, err)
		}
	}
}

// TestLogsWhichKeyItAccepts checks that the start line names where the
// accepted API key comes from, and never holds the key itself.
func TestLogsWhichKeyItAccepts(t *testing.T) {
	const key = "fakeissuer-log-key-0123456789"
	tests := []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"default", nil, nil, `accepts="the default demo key`},
		{"BASIQ_API_KEY", map[string]string{envBasiqAPIKey: key}, nil, `accepts="the key from $BASIQ_API_KEY"`},
		{"TOKENCACHE_API_KEY", map[string]string{envAPIKey: key}, nil, `accepts="the key from $TOKENCACHE_API_KEY"`},
		{"flag", nil, []string{"--api-key", key}, `accepts="the key given with --api-key"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logs strings.Builder
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() {
				done <- run(ctx, append([]string{"--listen", "127.0.0.1:0"}, tt.args...), func(k string) string { return tt.env[k] },
					slog.New(slog.NewTextHandler(&logs, nil)), func(string) { cancel() })
			}()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			out := logs.String()
			if !strings.Contains(out, tt.want) {
				t.Errorf("log %q does not say %q", out, tt.want)
			}
			if strings.Contains(out, key) || strings.Contains(out, issuertest.DefaultAPIKey) {
				t.Errorf("log holds the key: %q", out)
			}
		})
	}
}
