package jwtauth

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"math"
	"strconv"
	"strings"
	"time"
)

// The JWT is parsed by hand rather than with github.com/golang-jwt/jwt/v5.
// This package needs exactly two things from a token: its exp claim and, on
// request, an HS256 signature check. Both fit in the code below (base64url,
// three parts, one JSON object each, one HMAC), which keeps the module free of
// another dependency and, more importantly, keeps every accept/reject rule in
// view: a general JWT library accepts many algorithms and claim shapes
// (string-typed numeric dates, leeway, "none" when configured) that a token
// cache shared by a whole fleet should not. The parser is fuzzed
// (FuzzExpiryOf).

// maxTokenLen bounds the size of a JWT this package will parse. Real access
// tokens are a few hundred bytes to a few KiB; 16 KiB leaves room for large
// claim sets while keeping a hostile header or body cheap to reject.
const maxTokenLen = 16 << 10

// maxExp is the largest exp accepted: 9999-12-31T23:59:59Z. A larger value is
// not a date anyone meant, most often milliseconds written where RFC 7519
// asks for seconds.
const maxExp = 253402300799

// jwtParts is a syntactically valid compact JWS split into its parts.
type jwtParts struct {
	signingInput string // header "." payload, as received
	alg          string
	exp          time.Time
	sig          []byte
}

// ExpiryOf returns the expiry of a JWT: its exp claim (RFC 7519 §4.1.4, a
// JSON number of seconds since the Unix epoch, fractions allowed).
//
// It does not verify the signature and does not compare exp with the clock:
// it reads the claim. Surrounding whitespace is ignored. The error wraps
// ErrMalformedToken when jwt is not a compact JWS (three base64url parts, a
// JSON object header and payload), ErrMissingExpiry when there is no exp, and
// ErrInvalidExpiry when exp is not a number (a string, null, ...) or is not a
// plausible date (zero or negative, or beyond the year 9999, which is what a
// millisecond timestamp looks like). Each of these also matches
// tokencache.ErrInvalidToken with errors.Is. The error never contains the
// token.
func ExpiryOf(jwt string) (time.Time, error) {
	p, err := parseJWT(strings.TrimSpace(jwt))
	if err != nil {
		return time.Time{}, err
	}
	return p.exp, nil
}

// parseJWT splits and decodes a compact JWS, reading alg and exp.
func parseJWT(s string) (*jwtParts, error) {
	if s == "" {
		return nil, malformed("empty token")
	}
	if len(s) > maxTokenLen {
		return nil, malformed("token longer than " + strconv.Itoa(maxTokenLen) + " bytes")
	}
	for i := 0; i < len(s); i++ {
		if !isTokenByte(s[i]) {
			// base64.DecodeString skips \r and \n; a token holding them (or
			// spaces, quotes, ...) would later break an Authorization header.
			return nil, malformed("token holds a character outside base64url")
		}
	}
	h, rest, ok := strings.Cut(s, ".")
	if !ok {
		return nil, malformed("token is not three dot-separated parts")
	}
	p, sig, ok := strings.Cut(rest, ".")
	if !ok || strings.Contains(sig, ".") {
		return nil, malformed("token is not three dot-separated parts")
	}
	if h == "" || p == "" {
		return nil, malformed("token has an empty header or payload")
	}

	hb, err := decodeSegment(h)
	if err != nil {
		return nil, malformed("header is not base64url")
	}
	var header struct {
		Alg json.RawMessage `json:"alg"`
	}
	if err := decodeObject(hb, &header); err != nil {
		return nil, malformed("header is not a JSON object")
	}
	var alg string
	if len(header.Alg) > 0 && header.Alg[0] == '"' {
		if err := json.Unmarshal(header.Alg, &alg); err != nil {
			return nil, malformed("header alg is not a string")
		}
	}

	pb, err := decodeSegment(p)
	if err != nil {
		return nil, malformed("payload is not base64url")
	}
	var claims struct {
		Exp json.RawMessage `json:"exp"`
	}
	if err := decodeObject(pb, &claims); err != nil {
		return nil, malformed("payload is not a JSON object")
	}
	exp, err := numericDate(claims.Exp)
	if err != nil {
		return nil, err
	}

	sb, err := decodeSegment(sig)
	if err != nil {
		return nil, malformed("signature is not base64url")
	}
	return &jwtParts{signingInput: s[:len(h)+1+len(p)], alg: alg, exp: exp, sig: sb}, nil
}

// numericDate converts a raw exp claim to a time.
func numericDate(raw json.RawMessage) (time.Time, error) {
	if len(raw) == 0 {
		return time.Time{}, ErrMissingExpiry
	}
	// The decoder has validated raw as one JSON value; only a number is a
	// NumericDate. "1700000000" (a string) and null are refused.
	if c := raw[0]; c != '-' && (c < '0' || c > '9') {
		return time.Time{}, invalidExpiry("exp is not a number")
	}
	f, err := strconv.ParseFloat(string(raw), 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return time.Time{}, invalidExpiry("exp is not a finite number")
	}
	if f <= 0 {
		return time.Time{}, invalidExpiry("exp is not after 1970")
	}
	if f > maxExp {
		return time.Time{}, invalidExpiry("exp is beyond the year 9999 (milliseconds instead of seconds?)")
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)).UTC(), nil
}

// verifyHS256 checks that p was signed with HMAC-SHA256 under key. It refuses
// any other alg, "none" included, before looking at the signature, so a token
// cannot choose how it is checked.
func verifyHS256(p *jwtParts, key []byte) error {
	if p.alg != "HS256" {
		if strings.EqualFold(p.alg, "none") || p.alg == "" {
			return algorithm("token is unsigned (alg none or absent), want HS256")
		}
		return algorithm("token alg is " + strconv.Quote(truncate(p.alg, 16)) + ", want HS256")
	}
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(p.signingInput))
	if !hmac.Equal(mac.Sum(nil), p.sig) {
		return ErrSignature
	}
	return nil
}

// VerifyHS256 checks that jwt carries a valid HMAC-SHA256 signature under
// key (for this issuer style, the client secret) and returns its expiry. It
// refuses alg "none" and every alg other than HS256 with an error wrapping
// ErrAlgorithm, a wrong signature with ErrSignature, and the errors of
// ExpiryOf for a malformed token. The comparison is constant-time.
func VerifyHS256(jwt string, key []byte) (time.Time, error) {
	p, err := parseJWT(strings.TrimSpace(jwt))
	if err != nil {
		return time.Time{}, err
	}
	if err := verifyHS256(p, key); err != nil {
		return time.Time{}, err
	}
	return p.exp, nil
}

// decodeSegment decodes one base64url part, with or without padding.
func decodeSegment(s string) ([]byte, error) {
	return base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
}

// decodeObject decodes b, which must be exactly one JSON object, into v.
func decodeObject(b []byte, v any) error {
	b = bytes.TrimSpace(b)
	if len(b) == 0 || b[0] != '{' {
		return errNotObject
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errNotObject // trailing data after the object
	}
	return nil
}

// isTokenByte reports whether c may appear in a compact JWS.
func isTokenByte(c byte) bool {
	return 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' ||
		c == '-' || c == '_' || c == '.' || c == '='
}

// truncate shortens s to at most n bytes for use in a message.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
