package jwtauth_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tokencache/tokencache/tokencache"
	"github.com/tokencache/tokencache/tokencache/jwtauth"
)

func TestExpiryOf(t *testing.T) {
	const h = `{"alg":"HS256","typ":"JWT"}`
	valid := makeJWT(h, `{"exp":1700003600}`, "k")
	tests := []struct {
		name    string
		jwt     string
		want    time.Time
		wantErr error
	}{
		{"integer exp", valid, time.Unix(1700003600, 0), nil},
		{"surrounding whitespace", " \n" + valid + "\t", time.Unix(1700003600, 0), nil},
		{"fractional exp", makeJWT(h, `{"exp":1700003600.25}`, "k"), time.Unix(1700003600, 250_000_000), nil},
		{"exponent notation", makeJWT(h, `{"exp":1.7e9}`, "k"), time.Unix(1_700_000_000, 0), nil},
		{"padded base64", strings.Replace(makeJWT(h, `{"exp":1700003600}`, ""), ".", "==.", 1), time.Unix(1700003600, 0), nil},
		{"unsigned token still has an exp", makeJWT(`{"alg":"none"}`, `{"exp":1700003600}`, ""), time.Unix(1700003600, 0), nil},
		{"other claims around exp", makeJWT(h, `{"iss":"x","aud":["a","b"],"exp":1700003600,"nested":{"exp":"no"}}`, "k"), time.Unix(1700003600, 0), nil},
		{"fixture", readFixture(t, "jwt/valid_hs256.jwt"), fixtureExp, nil},
		{"fixture with fraction", readFixture(t, "jwt/exp_fraction.jwt"), fixtureExp.Add(500 * time.Millisecond), nil},

		{"empty", "", time.Time{}, jwtauth.ErrMalformedToken},
		{"opaque token", "a1b2c3d4e5", time.Time{}, jwtauth.ErrMalformedToken},
		{"two parts", b64(h) + "." + b64(`{"exp":1}`), time.Time{}, jwtauth.ErrMalformedToken},
		{"four parts", valid + ".x", time.Time{}, jwtauth.ErrMalformedToken},
		{"five parts (JWE)", "a.b.c.d.e", time.Time{}, jwtauth.ErrMalformedToken},
		{"empty payload", b64(h) + "..sig", time.Time{}, jwtauth.ErrMalformedToken},
		{"standard base64 alphabet", b64(h) + "." + b64(`{"exp":1700003600}`) + ".ab+/", time.Time{}, jwtauth.ErrMalformedToken},
		{"embedded newline", b64(h) + ".\n" + b64(`{"exp":1700003600}`) + ".", time.Time{}, jwtauth.ErrMalformedToken},
		{"header not JSON", b64("nope") + "." + b64(`{"exp":1700003600}`) + ".", time.Time{}, jwtauth.ErrMalformedToken},
		{"header a JSON array", b64(`["HS256"]`) + "." + b64(`{"exp":1700003600}`) + ".", time.Time{}, jwtauth.ErrMalformedToken},
		{"payload a JSON number", b64(h) + "." + b64(`1700003600`) + ".", time.Time{}, jwtauth.ErrMalformedToken},
		{"payload with trailing data", b64(h) + "." + b64(`{"exp":1700003600}}`) + ".", time.Time{}, jwtauth.ErrMalformedToken},
		{"signature not base64url", makeJWT(h, `{"exp":1700003600}`, "") + "a", time.Time{}, jwtauth.ErrMalformedToken},
		{"too long", makeJWT(h, `{"exp":1700003600,"pad":"`+strings.Repeat("x", 20000)+`"}`, "k"), time.Time{}, jwtauth.ErrMalformedToken},

		{"no exp", makeJWT(h, `{"sub":"x"}`, "k"), time.Time{}, jwtauth.ErrMissingExpiry},
		{"no exp fixture", readFixture(t, "jwt/no_exp.jwt"), time.Time{}, jwtauth.ErrMissingExpiry},
		{"exp as a string", readFixture(t, "jwt/exp_string.jwt"), time.Time{}, jwtauth.ErrInvalidExpiry},
		{"exp null", makeJWT(h, `{"exp":null}`, "k"), time.Time{}, jwtauth.ErrInvalidExpiry},
		{"exp bool", makeJWT(h, `{"exp":true}`, "k"), time.Time{}, jwtauth.ErrInvalidExpiry},
		{"exp object", makeJWT(h, `{"exp":{"v":1}}`, "k"), time.Time{}, jwtauth.ErrInvalidExpiry},
		{"exp zero", makeJWT(h, `{"exp":0}`, "k"), time.Time{}, jwtauth.ErrInvalidExpiry},
		{"exp negative", makeJWT(h, `{"exp":-5}`, "k"), time.Time{}, jwtauth.ErrInvalidExpiry},
		{"exp in milliseconds", readFixture(t, "jwt/exp_milliseconds.jwt"), time.Time{}, jwtauth.ErrInvalidExpiry},
		{"exp overflows float64", makeJWT(h, `{"exp":1e400}`, "k"), time.Time{}, jwtauth.ErrInvalidExpiry},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := jwtauth.ExpiryOf(tt.jwt)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("ExpiryOf: got error %v, want %v", err, tt.wantErr)
				}
				if !errors.Is(err, tokencache.ErrInvalidToken) {
					t.Errorf("ExpiryOf: error %v does not match tokencache.ErrInvalidToken", err)
				}
				if !got.IsZero() {
					t.Errorf("ExpiryOf: got time %v with an error, want zero", got)
				}
				assertNoSecrets(t, "ExpiryOf error", err.Error(), tt.jwt)
				return
			}
			if err != nil {
				t.Fatalf("ExpiryOf: got error %v, want nil", err)
			}
			if !got.Equal(tt.want) {
				t.Errorf("ExpiryOf: got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestExpiredFixtureParses(t *testing.T) {
	// ExpiryOf reads the claim; judging it against a clock is the caller's job.
	got, err := jwtauth.ExpiryOf(readFixture(t, "jwt/expired_2001.jwt"))
	if err != nil {
		t.Fatalf("ExpiryOf: got error %v, want nil", err)
	}
	if want := time.Unix(1_000_000_000, 0); !got.Equal(want) {
		t.Errorf("ExpiryOf: got %v, want %v", got, want)
	}
}

func TestVerifyHS256(t *testing.T) {
	const h = `{"alg":"HS256","typ":"JWT"}`
	good := makeJWT(h, `{"exp":1700003600}`, "key")
	parts := strings.Split(good, ".")
	tampered := parts[0] + "." + b64(`{"exp":1900003600}`) + "." + parts[2]
	tests := []struct {
		name    string
		jwt     string
		key     string
		wantErr error
	}{
		{"valid", good, "key", nil},
		{"fixture", readFixture(t, "jwt/valid_hs256.jwt"), fixtureSecret, nil},
		{"wrong key", good, "other", jwtauth.ErrSignature},
		{"empty key", good, "", jwtauth.ErrSignature},
		{"tampered payload", tampered, "key", jwtauth.ErrSignature},
		{"signature stripped", parts[0] + "." + parts[1] + ".", "key", jwtauth.ErrSignature},
		{"truncated signature", good[:len(good)-4], "key", jwtauth.ErrSignature},
		{"alg none", makeJWT(`{"alg":"none"}`, `{"exp":1700003600}`, ""), "key", jwtauth.ErrAlgorithm},
		{"alg None", makeJWT(`{"alg":"None"}`, `{"exp":1700003600}`, ""), "key", jwtauth.ErrAlgorithm},
		{"alg none fixture", readFixture(t, "jwt/alg_none.jwt"), fixtureSecret, jwtauth.ErrAlgorithm},
		{"alg absent", makeJWT(`{"typ":"JWT"}`, `{"exp":1700003600}`, "key"), "key", jwtauth.ErrAlgorithm},
		{"alg not a string", makeJWT(`{"alg":256}`, `{"exp":1700003600}`, "key"), "key", jwtauth.ErrAlgorithm},
		{"alg hs256 lower case", makeJWT(`{"alg":"hs256"}`, `{"exp":1700003600}`, "key"), "key", jwtauth.ErrAlgorithm},
		{"alg HS512", readFixture(t, "jwt/alg_hs512.jwt"), fixtureSecret, jwtauth.ErrAlgorithm},
		{"alg RS256 signed with the key", makeJWT(`{"alg":"RS256"}`, `{"exp":1700003600}`, "key"), "key", jwtauth.ErrAlgorithm},
		{"malformed", "x.y", "key", jwtauth.ErrMalformedToken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			exp, err := jwtauth.VerifyHS256(tt.jwt, []byte(tt.key))
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
				t.Fatalf("VerifyHS256: got error %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				if !errors.Is(err, tokencache.ErrInvalidToken) {
					t.Errorf("VerifyHS256: error %v does not match tokencache.ErrInvalidToken", err)
				}
				assertNoSecrets(t, "VerifyHS256 error", err.Error(), tt.jwt, tt.key)
				return
			}
			if exp.IsZero() {
				t.Errorf("VerifyHS256: got zero expiry, want the exp claim")
			}
		})
	}
}
