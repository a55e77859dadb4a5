package jwtauth_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokencache/tokencache/tokencache"
	"github.com/tokencache/tokencache/tokencache/jwtauth"
)

// recordingOfferer is a hand-written fake Offerer: it records every token
// offered and answers with stored and err.
type recordingOfferer struct {
	mu     sync.Mutex // guards offers
	offers []tokencache.Token
	stored bool
	err    error
}

var _ jwtauth.Offerer = (*recordingOfferer)(nil)

func (o *recordingOfferer) Offer(_ context.Context, t tokencache.Token) (bool, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.offers = append(o.offers, t)
	return o.stored, o.err
}

func (o *recordingOfferer) got() []tokencache.Token {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]tokencache.Token(nil), o.offers...)
}

// apiServer answers each request with the Authorization header named by
// the request's X-Rotate header (a key into headers) and a fixed body.
func apiServer(t *testing.T, headers map[string]string) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if v, ok := headers[r.Header.Get("X-Rotate")]; ok {
			w.Header().Set("Authorization", v)
		}
		_, _ = io.WriteString(w, "payload")
	}))
	t.Cleanup(srv.Close)
	return srv
}

// get sends a GET through rt with the given X-Rotate key and bearer token,
// and checks that the response arrives whole.
func get(t *testing.T, rt http.RoundTripper, url, rotate, bearer string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Rotate", rotate)
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := (&http.Client{Transport: rt}).Do(req)
	if err != nil {
		t.Fatalf("request: got error %v, want nil", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || string(body) != "payload" {
		t.Errorf("response body: got %q (%v), want payload", body, err)
	}
}

func TestRotationTransport(t *testing.T) {
	newer := testNow.Add(55 * time.Minute)
	tokNewer := tokenExpiring(newer, "newer")
	tokSent := tokenExpiring(testNow.Add(10*time.Minute), "sent")
	tokExpired := tokenExpiring(testNow.Add(-time.Minute), "expired")
	tokFar := tokenExpiring(testNow.Add(30*24*time.Hour), "far")
	tokForeign := makeJWT(`{"alg":"HS256"}`, fmt.Sprintf(`{"exp":%d}`, newer.Unix()), "someone-else")
	tokNone := makeJWT(`{"alg":"none"}`, fmt.Sprintf(`{"exp":%d}`, newer.Unix()), "")
	headers := map[string]string{
		"newer":       "Bearer " + tokNewer,
		"lower":       "bearer " + tokNewer,
		"upper":       "BEARER\t" + tokNewer,
		"bare":        tokNewer,
		"echo":        "Bearer " + tokSent,
		"malformed":   "Bearer not-a-jwt-" + testSecret,
		"no exp":      "Bearer " + makeJWT(`{"alg":"HS256"}`, `{"sub":"x"}`, testSecret),
		"expired":     "Bearer " + tokExpired,
		"far":         "Bearer " + tokFar,
		"foreign":     "Bearer " + tokForeign,
		"none":        "Bearer " + tokNone,
		"basic":       "Basic dXNlcjpwYXNz",
		"empty":       "Bearer ",
		"absent-none": "",
	}
	srv := apiServer(t, headers)

	tests := []struct {
		name      string
		rotate    string
		sent      string // the request's own bearer token
		hmacKey   []byte
		maxLife   time.Duration
		want      []time.Time // expiries offered
		wantLog   string      // substring of the log; "" means no warning
		noRecord  bool
		offerErr  error
		wantToken string
	}{
		{name: "newer token offered", rotate: "newer", sent: tokSent, want: []time.Time{newer}, wantToken: tokNewer},
		{name: "lower-case scheme", rotate: "lower", want: []time.Time{newer}},
		{name: "upper-case scheme, tab", rotate: "upper", want: []time.Time{newer}},
		{name: "bare JWT", rotate: "bare", want: []time.Time{newer}},
		{name: "header absent", rotate: "unknown"},
		{name: "header empty", rotate: "absent-none"},
		{name: "other scheme", rotate: "basic"},
		{name: "Bearer without a token", rotate: "empty"},
		{name: "echo of the request's token", rotate: "echo", sent: tokSent},
		{name: "malformed", rotate: "malformed", wantLog: "malformed"},
		{name: "no exp", rotate: "no exp", wantLog: "malformed"},
		{name: "expired", rotate: "expired", wantLog: "expired"},
		{name: "exp too far ahead", rotate: "far", wantLog: "too far"},
		{name: "exp far ahead, no limit", rotate: "far", maxLife: -1, want: []time.Time{tokFarExp(tokFar)}},
		{name: "exp far ahead, 60 days allowed", rotate: "far", maxLife: 60 * 24 * time.Hour, want: []time.Time{tokFarExp(tokFar)}},
		{name: "HMAC key, signed", rotate: "newer", hmacKey: []byte(testSecret), want: []time.Time{newer}},
		{name: "HMAC key, other signer", rotate: "foreign", hmacKey: []byte(testSecret), wantLog: "signature"},
		{name: "HMAC key, alg none", rotate: "none", hmacKey: []byte(testSecret), wantLog: "signature"},
		{name: "no HMAC key, other signer", rotate: "foreign", want: []time.Time{newer}},
		{name: "Offer fails", rotate: "newer", offerErr: errors.New("redis down"), want: []time.Time{newer}, wantLog: "offering rotated token failed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logs syncBuffer
			o := &recordingOfferer{stored: true, err: tt.offerErr}
			rt := &jwtauth.RotationTransport{
				Offerer:     o,
				Logger:      slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn})),
				HMACKey:     tt.hmacKey,
				MaxLifetime: tt.maxLife,
				Now:         fixedClock,
			}
			get(t, rt, srv.URL, tt.rotate, tt.sent)

			got := o.got()
			if len(got) != len(tt.want) {
				t.Fatalf("offers: got %d (%v), want %d", len(got), got, len(tt.want))
			}
			for i := range got {
				if !got[i].Expiry.Equal(tt.want[i]) {
					t.Errorf("offer %d: got expiry %v, want %v", i, got[i].Expiry, tt.want[i])
				}
				if got[i].TokenType != "Bearer" {
					t.Errorf("offer %d: got type %q, want Bearer", i, got[i].TokenType)
				}
			}
			if tt.wantToken != "" && got[0].AccessToken != tt.wantToken {
				t.Errorf("offer: got %v, want the rotated token", got[0])
			}
			out := logs.String()
			if tt.wantLog == "" && out != "" {
				t.Errorf("log: got %q, want nothing", out)
			}
			if !strings.Contains(out, tt.wantLog) {
				t.Errorf("log: got %q, want it to mention %q", out, tt.wantLog)
			}
			assertNoSecrets(t, "log", out, tokNewer, tokSent, tokExpired, tokFar, tokForeign, tokNone)
		})
	}
}

func tokFarExp(tok string) time.Time {
	exp, err := jwtauth.ExpiryOf(tok)
	if err != nil {
		panic(err)
	}
	return exp
}

func TestRotationTransportBaseError(t *testing.T) {
	o := &recordingOfferer{}
	boom := errors.New("boom")
	rt := &jwtauth.RotationTransport{
		Base:    roundTripFunc(func(*http.Request) (*http.Response, error) { return nil, boom }),
		Offerer: o,
	}
	req := httptest.NewRequest(http.MethodGet, "http://api.example/x", nil)
	if _, err := rt.RoundTrip(req); !errors.Is(err, boom) {
		t.Errorf("RoundTrip: got %v, want the base transport's error", err)
	}
	if n := len(o.got()); n != 0 {
		t.Errorf("offers: got %d, want 0", n)
	}
}

func TestRotationTransportDefaults(t *testing.T) {
	// No Base, no Logger, no Now: the zero value plus an Offerer works with
	// http.DefaultTransport and the real clock.
	exp := time.Now().Add(time.Hour).Truncate(time.Second)
	srv := apiServer(t, map[string]string{"newer": "Bearer " + tokenExpiring(exp, "svc"), "bad": "Bearer x.y.z"})
	o := &recordingOfferer{}
	rt := &jwtauth.RotationTransport{Offerer: o}
	get(t, rt, srv.URL, "newer", "")
	get(t, rt, srv.URL, "bad", "")
	got := o.got()
	if len(got) != 1 || !got[0].Expiry.Equal(exp) {
		t.Errorf("offers: got %v, want one expiring %v", got, exp)
	}

	// Without an Offerer the transport is a plain pass-through.
	get(t, &jwtauth.RotationTransport{}, srv.URL, "newer", "")
}

// TestRotationOutOfOrder: deciding which of two racing rotations wins is the
// cache's job, but the transport must offer both, each with its own expiry,
// whatever order the responses arrive in.
func TestRotationOutOfOrder(t *testing.T) {
	later := testNow.Add(60 * time.Minute)
	earlier := testNow.Add(50 * time.Minute)
	srv := apiServer(t, map[string]string{
		"later":   "Bearer " + tokenExpiring(later, "later"),
		"earlier": "Bearer " + tokenExpiring(earlier, "earlier"),
	})
	o := &recordingOfferer{}
	rt := &jwtauth.RotationTransport{Offerer: o, Now: fixedClock}
	get(t, rt, srv.URL, "later", "")   // the newer token arrives first,
	get(t, rt, srv.URL, "earlier", "") // then a response minted before it.
	got := o.got()
	if len(got) != 2 {
		t.Fatalf("offers: got %d, want 2", len(got))
	}
	if !got[0].Expiry.Equal(later) || !got[1].Expiry.Equal(earlier) {
		t.Errorf("offers: got expiries %v, %v; want %v, %v", got[0].Expiry, got[1].Expiry, later, earlier)
	}
	if got[0].AccessToken == got[1].AccessToken {
		t.Errorf("offers: got the same token twice, want each response's own")
	}
}

// TestRotationConcurrent runs many requests at once (meaningful under -race):
// each response's token must be offered exactly once with its own expiry.
func TestRotationConcurrent(t *testing.T) {
	const n = 32
	headers := make(map[string]string, n)
	want := make(map[string]time.Time, n)
	for i := range n {
		exp := testNow.Add(time.Duration(30+i) * time.Minute)
		tok := tokenExpiring(exp, fmt.Sprint("svc-", i))
		headers[fmt.Sprint(i)] = "Bearer " + tok
		want[tok] = exp
	}
	srv := apiServer(t, headers)
	o := &recordingOfferer{}
	rt := &jwtauth.RotationTransport{Offerer: o, Now: fixedClock, Logger: slog.New(slog.DiscardHandler)}
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { get(t, rt, srv.URL, fmt.Sprint(i), "") })
	}
	wg.Wait()
	got := o.got()
	if len(got) != n {
		t.Fatalf("offers: got %d, want %d", len(got), n)
	}
	for _, tok := range got {
		exp, ok := want[tok.AccessToken]
		if !ok {
			t.Errorf("offer: got unknown or duplicate token %v", tok)
			continue
		}
		if !tok.Expiry.Equal(exp) {
			t.Errorf("offer: got expiry %v, want %v", tok.Expiry, exp)
		}
		delete(want, tok.AccessToken)
	}
}

func TestFromResponse(t *testing.T) {
	exp := testNow.Add(time.Hour)
	tok := tokenExpiring(exp, "svc")
	tests := []struct {
		name      string
		values    []string
		wantOK    bool
		wantErr   error
		wantToken string
	}{
		{"Bearer", []string{"Bearer " + tok}, true, nil, tok},
		{"bearer, extra spaces", []string{"  bearer   " + tok + " "}, true, nil, tok},
		{"bare JWT", []string{tok}, true, nil, tok},
		{"Basic first, Bearer second", []string{"Basic abc", "Bearer " + tok}, true, nil, tok},
		{"absent", nil, false, nil, ""},
		{"other scheme", []string{"Basic abc"}, false, nil, ""},
		{"opaque bare value", []string{"opaque"}, false, nil, ""},
		{"malformed", []string{"Bearer a.b"}, false, jwtauth.ErrMalformedToken, ""},
		{"no exp", []string{"Bearer " + makeJWT(`{"alg":"HS256"}`, `{}`, "k")}, false, jwtauth.ErrMissingExpiry, ""},
		{"bad exp", []string{"Bearer " + makeJWT(`{"alg":"HS256"}`, `{"exp":"soon"}`, "k")}, false, jwtauth.ErrInvalidExpiry, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := &http.Response{Header: http.Header{}}
			for _, v := range tt.values {
				resp.Header.Add("Authorization", v)
			}
			got, ok, err := jwtauth.FromResponse(resp)
			if ok != tt.wantOK || !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
				t.Fatalf("FromResponse: got ok=%v err=%v, want ok=%v err=%v", ok, err, tt.wantOK, tt.wantErr)
			}
			if got.AccessToken != tt.wantToken {
				t.Errorf("FromResponse: got %v, want token %q", got, tt.wantToken)
			}
			if ok && (!got.Expiry.Equal(exp) || got.TokenType != "Bearer") {
				t.Errorf("FromResponse: got %v, want a Bearer token expiring %v", got, exp)
			}
		})
	}
	if _, ok, err := jwtauth.FromResponse(nil); ok || err != nil {
		t.Errorf("FromResponse(nil): got ok=%v err=%v, want false, nil", ok, err)
	}
}

func TestOffererFunc(t *testing.T) {
	var got tokencache.Token
	var o jwtauth.Offerer = jwtauth.OffererFunc(func(_ context.Context, tok tokencache.Token) (bool, error) {
		got = tok
		return true, nil
	})
	want := tokencache.Token{AccessToken: "x", Expiry: testNow}
	if ok, err := o.Offer(context.Background(), want); !ok || err != nil || got != want {
		t.Errorf("OffererFunc: got %v %v %v, want true nil and the token passed through", ok, err, got)
	}
}

// TestFetcherFromResponse: a rotated token read through the Fetcher passes
// the checks a fetched one does: its signature when verification is on,
// an exp after now, and the lifetime cap.
func TestFetcherFromResponse(t *testing.T) {
	plain := jwtauth.New(testAPIKey, testSecret, jwtauth.WithBaseURL("https://issuer.example"), jwtauth.WithClock(fixedClock))
	verifying := jwtauth.New(testAPIKey, testSecret, jwtauth.WithBaseURL("https://issuer.example"), jwtauth.WithClock(fixedClock), jwtauth.WithHMACVerification())
	claims := func(exp time.Time) string { return fmt.Sprintf(`{"sub":"svc","exp":%d}`, exp.Unix()) }
	good := tokenExpiring(testNow.Add(time.Hour), "svc")
	tests := []struct {
		name    string
		f       *jwtauth.Fetcher
		tok     string
		wantErr error // nil: adopted
	}{
		{"valid", plain, good, nil},
		{"valid, verified", verifying, good, nil},
		{"expired", plain, tokenExpiring(testNow.Add(-time.Second), "svc"), jwtauth.ErrExpired},
		{"past the lifetime cap", plain, tokenExpiring(testNow.Add(jwtauth.DefaultMaxLifetime+time.Minute), "svc"), jwtauth.ErrInvalidExpiry},
		{"another key, unverified", plain, makeJWT(`{"alg":"HS256"}`, claims(testNow.Add(time.Hour)), "not-the-secret"), nil},
		{"another key, verified", verifying, makeJWT(`{"alg":"HS256"}`, claims(testNow.Add(time.Hour)), "not-the-secret"), jwtauth.ErrSignature},
		{"alg none, verified", verifying, makeJWT(`{"alg":"none"}`, claims(testNow.Add(time.Hour)), ""), jwtauth.ErrAlgorithm},
		{"malformed", plain, "a.b", jwtauth.ErrMalformedToken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := &http.Response{Header: http.Header{"Authorization": {"Bearer " + tt.tok}}}
			got, ok, err := tt.f.FromResponse(resp)
			if tt.wantErr == nil {
				if !ok || err != nil || got.AccessToken != tt.tok {
					t.Fatalf("got %v, %v, %v; want the token", got, ok, err)
				}
				return
			}
			if ok || !errors.Is(err, tt.wantErr) || got.AccessToken != "" {
				t.Fatalf("got %v, %v, %v; want no token and %v", got, ok, err, tt.wantErr)
			}
			if strings.Contains(err.Error(), tt.tok) || strings.Contains(err.Error(), testSecret) {
				t.Errorf("the error holds the token or the secret: %v", err)
			}
		})
	}
	if _, ok, err := plain.FromResponse(&http.Response{Header: http.Header{}}); ok || err != nil {
		t.Errorf("no header: got %v, %v; want false, nil", ok, err)
	}
	if _, ok, err := plain.FromResponse(nil); ok || err != nil {
		t.Errorf("nil response: got %v, %v; want false, nil", ok, err)
	}
}
