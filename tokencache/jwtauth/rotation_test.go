package jwtauth_test

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokencache/tokencache/tokencache/jwtauth"
)

// TestFetcherFromResponseReadsTheAuthorizationHeader: the rotated token is
// read from "Bearer <jwt>" in any case and spacing, or from a bare JWT; an
// absent header or another scheme is no token and no error; a token that
// cannot be read is an error that holds neither it nor the secret.
func TestFetcherFromResponseReadsTheAuthorizationHeader(t *testing.T) {
	f := jwtauth.New(testAPIKey, testSecret, jwtauth.WithBaseURL("https://issuer.example"), jwtauth.WithClock(fixedClock))
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
		{"BEARER, tab", []string{"BEARER\t" + tok}, true, nil, tok},
		{"bare JWT", []string{tok}, true, nil, tok},
		{"Basic first, Bearer second", []string{"Basic abc", "Bearer " + tok}, true, nil, tok},
		{"absent", nil, false, nil, ""},
		{"empty", []string{""}, false, nil, ""},
		{"Bearer without a token", []string{"Bearer "}, false, nil, ""},
		{"other scheme", []string{"Basic dXNlcjpwYXNz"}, false, nil, ""},
		{"opaque bare value", []string{"opaque"}, false, nil, ""},
		{"malformed", []string{"Bearer a.b"}, false, jwtauth.ErrMalformedToken, ""},
		{"malformed, holding the secret", []string{"Bearer not-a-jwt-" + testSecret}, false, jwtauth.ErrMalformedToken, ""},
		{"no exp", []string{"Bearer " + makeJWT(`{"alg":"HS256"}`, `{"sub":"x"}`, testSecret)}, false, jwtauth.ErrMissingExpiry, ""},
		{"bad exp", []string{"Bearer " + makeJWT(`{"alg":"HS256"}`, `{"exp":"soon"}`, testSecret)}, false, jwtauth.ErrInvalidExpiry, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := &http.Response{Header: http.Header{}}
			for _, v := range tt.values {
				resp.Header.Add("Authorization", v)
			}
			got, ok, err := f.FromResponse(resp)
			if ok != tt.wantOK || !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
				t.Fatalf("FromResponse: got ok=%v err=%v, want ok=%v err=%v", ok, err, tt.wantOK, tt.wantErr)
			}
			if got.AccessToken != tt.wantToken {
				t.Errorf("FromResponse: got %v, want token %q", got, tt.wantToken)
			}
			if ok && (!got.Expiry.Equal(exp) || got.TokenType != "Bearer") {
				t.Errorf("FromResponse: got %v, want a Bearer token expiring %v", got, exp)
			}
			if err != nil {
				assertNoSecrets(t, "error", err.Error(), strings.TrimPrefix(tt.values[0], "Bearer "))
			}
		})
	}
}

// TestFetcherFromResponse: a rotated token read through the Fetcher passes
// the checks a fetched one does: its signature when verification is on,
// an exp after now, and the lifetime cap.
func TestFetcherFromResponse(t *testing.T) {
	plain := jwtauth.New(testAPIKey, testSecret, jwtauth.WithBaseURL("https://issuer.example"), jwtauth.WithClock(fixedClock))
	verifying := jwtauth.New(testAPIKey, testSecret, jwtauth.WithBaseURL("https://issuer.example"), jwtauth.WithClock(fixedClock), jwtauth.WithHMACVerification(true))
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
		{"no exp", plain, makeJWT(`{"alg":"HS256"}`, `{"sub":"x"}`, testSecret), jwtauth.ErrMissingExpiry},
		{"expired, verified", verifying, tokenExpiring(testNow.Add(-time.Minute), "svc"), jwtauth.ErrExpired},
		{"past the lifetime cap, verified", verifying, tokenExpiring(testNow.Add(30*24*time.Hour), "svc"), jwtauth.ErrInvalidExpiry},
		{"at the lifetime cap", plain, tokenExpiring(testNow.Add(jwtauth.DefaultMaxLifetime), "svc"), nil},
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

// TestFetcherFromResponseConcurrent reads many responses at once (meaningful
// under -race): each yields its own token with its own expiry.
func TestFetcherFromResponseConcurrent(t *testing.T) {
	f := jwtauth.New(testAPIKey, testSecret, jwtauth.WithBaseURL("https://issuer.example"),
		jwtauth.WithClock(fixedClock), jwtauth.WithHMACVerification(true))
	const n = 32
	toks := make([]string, n)
	exps := make([]time.Time, n)
	for i := range n {
		exps[i] = testNow.Add(time.Duration(30+i) * time.Minute)
		toks[i] = tokenExpiring(exps[i], fmt.Sprint("svc-", i))
	}
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			resp := &http.Response{Header: http.Header{"Authorization": {"Bearer " + toks[i]}}}
			got, ok, err := f.FromResponse(resp)
			if !ok || err != nil || got.AccessToken != toks[i] || !got.Expiry.Equal(exps[i]) {
				t.Errorf("response %d: got %v, %v, %v; want its own token expiring %v", i, got, ok, err, exps[i])
			}
		})
	}
	wg.Wait()
}
