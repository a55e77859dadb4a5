package jwtauth_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Credentials distinctive enough that finding them in an error string cannot
// be a coincidence.
const (
	testAPIKey = "ak_live_7Qx9ZpL2mN4vB8cR"
	testSecret = "cs_9fK3hT6wY1uE5oI2aS8dG4jL"
)

// testNow is the fixed clock of these tests: 2023-11-14T22:13:20Z.
var testNow = time.Unix(1_700_000_000, 0).UTC()

func fixedClock() time.Time { return testNow }

// fixtureExp is the exp of the fixtures in testdata/jwtauth/jwt: 2100-01-01T00:00:00Z.
var fixtureExp = time.Unix(4102444800, 0).UTC()

// fixtureSecret is the HMAC key of the fixtures in testdata/jwtauth/jwt.
const fixtureSecret = "fixture-secret"

func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

// makeJWT builds a compact JWS from raw JSON header and claims, signed with
// HS256 under key, or with an empty signature when key is "".
func makeJWT(header, claims, key string) string {
	si := b64(header) + "." + b64(claims)
	if key == "" {
		return si + "."
	}
	mac := hmac.New(sha256.New, []byte(key))
	mac.Write([]byte(si))
	return si + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

// tokenExpiring returns an HS256 token signed with testSecret that expires
// at exp; sub makes tokens with the same exp distinct.
func tokenExpiring(exp time.Time, sub string) string {
	return makeJWT(`{"alg":"HS256","typ":"JWT"}`, fmt.Sprintf(`{"sub":%q,"exp":%d}`, sub, exp.Unix()), testSecret)
}

// fixtures is the repository's shared testdata for this issuer style
// (testdata/jwtauth at the top of the repository).
var fixtures = filepath.Join("..", "..", "testdata", "jwtauth")

// readFixture returns the shared fixture <name> without its trailing
// newline.
func readFixture(t testing.TB, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(fixtures, name))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimRight(string(b), "\n")
}

// assertNoSecrets fails if s contains a credential or any of the tokens.
func assertNoSecrets(t testing.TB, what, s string, tokens ...string) {
	t.Helper()
	for _, secret := range append([]string{testAPIKey, testSecret}, tokens...) {
		if secret != "" && strings.Contains(s, secret) {
			t.Errorf("%s leaks a secret or token: %q", what, s)
		}
	}
	// A token's signature alone would do harm too.
	for _, tok := range tokens {
		if i := strings.LastIndexByte(tok, '.'); i >= 0 && len(tok)-i > 10 && strings.Contains(s, tok[i+1:]) {
			t.Errorf("%s leaks a token signature: %q", what, s)
		}
	}
}
