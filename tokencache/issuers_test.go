package tokencache_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/internal/testutil"
	"github.com/tokencache/tokencache/lock"
	"github.com/tokencache/tokencache/tokencache"
	"github.com/tokencache/tokencache/tokencache/basiq"
	"github.com/tokencache/tokencache/tokencache/issuertest"
	"github.com/tokencache/tokencache/tokencache/jwtauth"
)

// The cache against the real issuers (Basiq, authenticate-and-rotate) as
// the fake issuer implements them.

func TestBasiqErrorCodesThroughTheCache(t *testing.T) {
	cases := []struct {
		status     int
		code       string
		retryAfter string
		retryable  bool
	}{
		{400, "invalid-request", "", false},
		{400, "parameter-not-valid", "", false},
		{400, "unsupported-grant-type", "", false},
		{400, "invalid-grant", "", false},
		{403, "access-denied", "", false},
		{404, "parameter-not-valid", "", false},
		{500, "internal-server-error", "", true},
		{503, "service-unavailable", "1", true},
		{429, "too-many-requests", "1", true},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprint(tc.status, " ", tc.code), func(t *testing.T) {
			srv := issuertest.RunT(t)
			srv.FailAlways(issuertest.Failure{Status: tc.status, Code: tc.code, Title: "t", Detail: "d", RetryAfter: tc.retryAfter})
			c := tokencache.NewTestCache(t, tokencache.NewTestRedis(t), basiq.New(srv.APIKey(), basiq.WithBaseURL(srv.URL())))
			_, err := c.Token(context.Background())
			var fe *tokencache.FetchError
			if !errors.As(err, &fe) || fe.Code != tc.code || fe.Retryable != tc.retryable {
				t.Fatalf("got %v, want a FetchError %s (retryable %v)", err, tc.code, tc.retryable)
			}
			var be *basiq.Error
			if !errors.As(err, &be) || be.Status != tc.status || be.CorrelationID == "" {
				t.Errorf("got %v, want a *basiq.Error with status %d and a correlationId", err, tc.status)
			}
			want := 1
			if tc.retryable {
				want = 3 // the retry budget of newCache
			}
			if got := srv.Stats().TokenCalls; int(got) != want {
				t.Errorf("issuer calls = %d, want %d", got, want)
			}
		})
	}
}

func TestWrongKeyLosesNothing(t *testing.T) {
	srv := issuertest.RunT(t)
	rdb := tokencache.NewTestRedis(t)
	ctx := context.Background()
	good := tokencache.NewTestCache(t, rdb, basiq.New(srv.APIKey(), basiq.WithBaseURL(srv.URL())))
	tok, err := good.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	before, _ := rdb.Get(ctx, "tokencache:{default}:server").Result()

	const wrongKey = "d3Jvbmcta2V5LXRoYXQtbXVzdC1uZXZlci1sZWFr"
	bad := tokencache.NewTestCache(t, rdb, basiq.New(wrongKey, basiq.WithBaseURL(srv.URL())))
	_, err = bad.Token(ctx)
	var be *basiq.Error
	if !errors.As(err, &be) || be.Status != http.StatusUnauthorized {
		t.Fatalf("wrong key: got %v, want a 401 *basiq.Error", err)
	}
	if strings.Contains(err.Error(), wrongKey) || strings.Contains(fmt.Sprintf("%+v", err), wrongKey) {
		t.Fatalf("the error shows the key: %v", err)
	}
	after, _ := rdb.Get(ctx, "tokencache:{default}:server").Result()
	if after != before {
		t.Fatalf("a failed refresh with the wrong key changed the cached value")
	}
	if got, err := good.Token(ctx); err != nil || got.AccessToken != tok.AccessToken {
		t.Fatalf("the right replica after the wrong one: %v, %v; want its valid token", got, err)
	}
	// A forced refresh that fails leaves the valid token in place too.
	srv.FailNext(1, issuertest.Fail(http.StatusForbidden, "access-denied"))
	if _, err := good.Refresh(ctx, 0, true); err == nil {
		t.Fatal("forced refresh against a failing issuer succeeded")
	}
	if got, err := good.Token(ctx); err != nil || got.AccessToken != tok.AccessToken {
		t.Fatalf("after a failed forced refresh: %v, %v; want the valid token", got, err)
	}
}

func TestFleetWide401WithBasiq(t *testing.T) {
	srv := issuertest.RunT(t)
	rdb := redistest.Start(t).Client(t)
	var clients []*http.Client
	for range 5 {
		c := tokencache.NewTestCache(t, rdb, basiq.New(srv.APIKey(), basiq.WithBaseURL(srv.URL())))
		clients = append(clients, &http.Client{Transport: c.Transport(nil)})
	}
	get := func(hc *http.Client) error {
		resp, err := hc.Get(srv.URL() + "/users/abc/accounts")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	}
	for _, hc := range clients {
		if err := get(hc); err != nil {
			t.Fatal(err)
		}
	}
	srv.RevokeAll()
	var wg sync.WaitGroup
	for _, hc := range clients {
		for range 20 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := get(hc); err != nil {
					t.Errorf("after revocation: %v", err)
				}
			}()
		}
	}
	wg.Wait()
	if got := srv.Stats().TokenCalls; got != 2 {
		t.Errorf("issuer calls = %d, want 2 (one more after the fleet-wide 401)", got)
	}
}

func TestClientTokensWithBasiq(t *testing.T) {
	srv := issuertest.RunT(t)
	f := basiq.New(srv.APIKey(), basiq.WithBaseURL(srv.URL()))
	c := tokencache.NewTestCache(t, tokencache.NewTestRedis(t), f, tokencache.WithClientTokens(func(id string) (tokencache.Fetcher, error) {
		return f.ForUser(id)
	}, 100))
	u, err := c.User("ea3a81a9-0d2c-4a63-b7b2-3c9b3e2f5b1a")
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: u.Transport(nil)}
	for path, want := range map[string]int{
		"/users/ea3a81a9-0d2c-4a63-b7b2-3c9b3e2f5b1a": http.StatusOK,
		"/users/someone-else":                         http.StatusForbidden,
	} {
		resp, err := hc.Get(srv.URL() + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s with the user's client token: %d, want %d", path, resp.StatusCode, want)
		}
	}
	if _, err := c.User("bad:id"); !errors.Is(err, tokencache.ErrInvalidUserID) {
		t.Errorf("bad user id: got %v, want ErrInvalidUserID", err)
	}
}

// TestJWTRotationRefusedTokenLeavesNoSecretInLogs: through the one
// rotation path (WithRotation with the Fetcher's FromResponse), a rotated
// token signed with another key is refused, the cache keeps its token, and
// the warning it logs holds neither token nor credential.
func TestJWTRotationRefusedTokenLeavesNoSecretInLogs(t *testing.T) {
	srv := issuertest.RunT(t)
	forged, err := issuertest.SignHS256("not-the-client-secret", map[string]any{"sub": "x", "exp": time.Now().Add(2 * time.Hour).Unix()})
	if err != nil {
		t.Fatal(err)
	}
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Authorization", "Bearer "+forged)
		fmt.Fprint(w, "ok")
	}))
	t.Cleanup(api.Close)
	f := jwtauth.New(srv.APIKey(), srv.ClientSecret(), jwtauth.WithBaseURL(srv.URL()), jwtauth.WithHMACVerification(true))
	var logs testutil.Buffer
	// Without the in-process copy every response is read for a rotated
	// token, whatever the held token's age.
	c := tokencache.NewTestCache(t, tokencache.NewTestRedis(t), f, tokencache.WithRotation(f.FromResponse), tokencache.WithL1ForTest(false),
		tokencache.WithLogger(slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))))
	ctx := context.Background()
	held, err := c.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := (&http.Client{Transport: c.Transport(nil)}).Get(api.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got, err := c.Token(ctx); err != nil || got.AccessToken != held.AccessToken {
		t.Fatalf("after a forged rotation: got %v, %v; want the token held before", got, err)
	}
	if n := srv.Stats().AuthenticateCalls; n != 1 {
		t.Errorf("authenticate calls: got %d, want 1", n)
	}
	out := logs.String()
	if !strings.Contains(out, "unusable rotated token") {
		t.Errorf("log: got %q, want a warning about the unusable rotated token", out)
	}
	for name, secret := range map[string]string{"forged token": forged, "held token": held.AccessToken,
		"API key": srv.APIKey(), "client secret": srv.ClientSecret()} {
		if strings.Contains(out, secret) {
			t.Errorf("log holds the %s: %q", name, out)
		}
	}
}

func TestJWTRotationLaterExpiryWins(t *testing.T) {
	srv := issuertest.RunT(t)
	rdb := tokencache.NewTestRedis(t)
	f := jwtauth.New(srv.APIKey(), srv.ClientSecret(), jwtauth.WithBaseURL(srv.URL()))
	c := tokencache.NewTestCache(t, rdb, f, tokencache.WithRotation(f.FromResponse))
	ctx := context.Background()
	cur, err := c.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	jwt := func(exp time.Time) tokencache.Token {
		s, err := issuertest.SignHS256(srv.ClientSecret(), map[string]any{"sub": "x", "exp": exp.Unix()})
		if err != nil {
			t.Fatal(err)
		}
		return tokencache.Token{AccessToken: s, TokenType: "Bearer", Expiry: time.Unix(exp.Unix(), 0)}
	}
	later, earlier := jwt(cur.Expiry.Add(20*time.Minute)), jwt(cur.Expiry.Add(10*time.Minute))
	// Two responses carry rotated tokens; they arrive out of order.
	var wg sync.WaitGroup
	for _, tok := range []tokencache.Token{later, earlier} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := c.Offer(ctx, tok); err != nil {
				t.Errorf("Offer: %v", err)
			}
		}()
	}
	wg.Wait()
	got, err := c.Token(ctx)
	if err != nil || got.AccessToken != later.AccessToken {
		t.Fatalf("after the race: %v, %v; want the later-expiring token", got, err)
	}
	// And through the transport: the resource rotates on every 200.
	srv.SetRotation(true)
	hc := &http.Client{Transport: c.Transport(nil)}
	resp, err := hc.Get(srv.URL() + "/api/me")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if srv.Stats().Rotations == 0 {
		t.Fatal("the resource did not rotate")
	}
}

// TestNewReturnsTheLockConfigError: a lock option the lock package refuses
// (here a nil Redlock master, which the cache's own odd-count check lets
// through) makes tokencache.New fail with the lock's error.
func TestNewReturnsTheLockConfigError(t *testing.T) {
	f := tokencache.FetcherFunc(func(context.Context) (tokencache.Token, error) {
		return tokencache.Token{}, errors.New("not called")
	})
	c, err := tokencache.New(tokencache.NewTestRedis(t), f, tokencache.WithRedlock(nil, nil))
	if c != nil || !errors.Is(err, lock.ErrConfig) || !strings.Contains(err.Error(), "WithRedlock") {
		t.Fatalf("New: got %v, %v; want no cache and lock.ErrConfig naming WithRedlock", c, err)
	}
}
