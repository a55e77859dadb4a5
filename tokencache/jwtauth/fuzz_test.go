package jwtauth_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tokencache/tokencache/tokencache"
	"github.com/tokencache/tokencache/tokencache/jwtauth"
)

// FuzzExpiryOf checks that no input makes ExpiryOf or VerifyHS256 panic,
// that every failure is one of the documented sentinels, and that every
// success is a plausible date. Seeds: testdata/fuzz/FuzzExpiryOf.
func FuzzExpiryOf(f *testing.F) {
	f.Add(makeJWT(`{"alg":"HS256"}`, `{"exp":1700003600}`, "k"))
	f.Add(makeJWT(`{"alg":"none"}`, `{"exp":1.5e9}`, ""))
	f.Add(makeJWT(`{"alg":"HS256"}`, `{"exp":"1700003600"}`, "k"))
	f.Add("a.b.c")
	f.Add("")
	minExp, maxExp := time.Unix(0, 0), time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, jwt string) {
		exp, err := jwtauth.ExpiryOf(jwt)
		if err != nil {
			if !errors.Is(err, jwtauth.ErrMalformedToken) && !errors.Is(err, jwtauth.ErrMissingExpiry) && !errors.Is(err, jwtauth.ErrInvalidExpiry) {
				t.Fatalf("ExpiryOf: got undocumented error %v", err)
			}
			if !errors.Is(err, tokencache.ErrInvalidToken) {
				t.Fatalf("ExpiryOf: error %v does not match tokencache.ErrInvalidToken", err)
			}
			if len(jwt) >= 8 && strings.Contains(err.Error(), jwt) {
				t.Fatalf("ExpiryOf: error %q quotes its input", err)
			}
			return
		}
		if !exp.After(minExp) || !exp.Before(maxExp) {
			t.Fatalf("ExpiryOf: got %v, want a date between 1970 and 9999", exp)
		}
		// Verification must agree on the expiry whenever it succeeds.
		if vexp, err := jwtauth.VerifyHS256(jwt, []byte("k")); err == nil && !vexp.Equal(exp) {
			t.Fatalf("VerifyHS256: got exp %v, ExpiryOf got %v", vexp, exp)
		}
	})
}

// FuzzParseAuthenticateResponse checks that no authenticate answer makes the
// parser (or the error-body reader) panic, that every token it returns could travel in a header, and
// that answers it accepts survive being wrapped in each accepted form. Seeds:
// testdata/fuzz/FuzzParseAuthenticateResponse.
func FuzzParseAuthenticateResponse(f *testing.F) {
	tok := makeJWT(`{"alg":"HS256"}`, `{"exp":1700003600}`, "k")
	f.Add([]byte(tok))
	f.Add([]byte(`{"token":"` + tok + `"}`))
	f.Add([]byte(`{"access_token":"` + tok + `","expires_in":3600}`))
	f.Add([]byte(`"` + tok + `"`))
	f.Add([]byte(`<html></html>`))
	f.Fuzz(func(t *testing.T, body []byte) {
		// The same bytes as an error answer: the code must be short and
		// plain, the scrubbed message short.
		code, msg := jwtauth.ErrorDetails(body)
		if len(code) > 64 || strings.ContainsAny(code, " \n\"") {
			t.Fatalf("errorDetails: got code %q", code)
		}
		if s := jwtauth.Scrub(msg, "k"); len(s) > 203 {
			t.Fatalf("scrub: got %d bytes, want at most 203", len(s))
		}

		got, err := jwtauth.ParseAuthenticateResponse(body)
		if err != nil {
			if !errors.Is(err, jwtauth.ErrResponse) {
				t.Fatalf("parse: got undocumented error %v", err)
			}
			return
		}
		if got == "" || len(got) > 16<<10 {
			t.Fatalf("parse: got a token of %d bytes, want 1..16384", len(got))
		}
		for i := 0; i < len(got); i++ {
			c := got[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-_.=", c) >= 0) {
				t.Fatalf("parse: token holds %q, want base64url only", c)
			}
		}
		// The same token in each other accepted form parses the same.
		for _, form := range []string{got, `"` + got + `"`, `{"token":"` + got + `"}`, `{"access_token":"` + got + `"}`, `{"jwt":"` + got + `"}`, " Bearer " + got + "\n"} {
			again, err := jwtauth.ParseAuthenticateResponse([]byte(form))
			if err != nil || again != got {
				t.Fatalf("parse(%q): got %q, %v; want %q", form, again, err, got)
			}
		}
		_, _ = jwtauth.ExpiryOf(got) // must not panic either
	})
}
