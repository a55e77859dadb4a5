package jwtauth

import (
	"net/http"
	"strings"
	"time"

	"github.com/tokencache/tokencache/tokencache"
)

// DefaultMaxLifetime is how far in the future a rotated token's exp may lie
// before a Fetcher's FromResponse refuses it. The issuers of this style mint
// one-hour tokens; a day is generous for them, and it stops a response from
// the wrong host (or a forged header) from planting a token with a distant
// exp that a "newest expiry wins" cache would then keep forever.
const DefaultMaxLifetime = 24 * time.Hour

// FromResponse extracts the rotated token an authenticate-and-rotate API
// returns with its responses, in the Authorization header as
// "Bearer <jwt>" (the scheme in any case) or as a bare JWT, and trusts it
// no more than a token f fetched: its HS256 signature under the client
// secret when f has WithHMACVerification, an exp after now on f's clock,
// and an exp at most DefaultMaxLifetime ahead. Give it to the cache, whose
// Transport then adopts rotated tokens for the whole fleet:
//
//	tokencache.New(rdb, f, tokencache.WithRotation(f.FromResponse))
//
// It reports false and no error when resp is nil or carries no such
// header (or another scheme). A token that fails is reported as an error
// wrapping ErrMalformedToken, ErrMissingExpiry, ErrInvalidExpiry,
// ErrExpired, ErrSignature or ErrAlgorithm, and not adopted; the error
// never holds the token or the client secret.
func (f *Fetcher) FromResponse(resp *http.Response) (tokencache.Token, bool, error) {
	raw, p, err := rotatedJWT(resp)
	if p == nil || err != nil {
		return tokencache.Token{}, false, err
	}
	if f.verify {
		_, clientSecret := f.credentials()
		if err := verifyHS256(p, []byte(clientSecret)); err != nil {
			return tokencache.Token{}, false, err
		}
	}
	now := f.now()
	if !p.exp.After(now) {
		return tokencache.Token{}, false, ErrExpired
	}
	if p.exp.Sub(now) > DefaultMaxLifetime {
		return tokencache.Token{}, false, invalidExpiry("exp more than " + DefaultMaxLifetime.String() + " from now")
	}
	return tokencache.Token{AccessToken: raw, TokenType: "Bearer", Expiry: p.exp}, true, nil
}

// rotatedJWT reads the JWT resp's Authorization header carries: nil parts
// and no error when there is none.
func rotatedJWT(resp *http.Response) (string, *jwtParts, error) {
	if resp == nil {
		return "", nil, nil
	}
	raw, found := bearerToken(resp.Header)
	if !found {
		return "", nil, nil
	}
	p, err := parseJWT(raw)
	if err != nil {
		return "", nil, err
	}
	return raw, p, nil
}

// bearerToken returns the token of the first Authorization value that is
// "Bearer <token>" or a bare token (no scheme, no spaces).
func bearerToken(h http.Header) (string, bool) {
	for _, v := range h.Values("Authorization") {
		v = strings.TrimSpace(v)
		scheme, rest, hasSpace := v, "", false
		if i := strings.IndexAny(v, " \t"); i >= 0 {
			scheme, rest, hasSpace = v[:i], v[i+1:], true
		}
		switch {
		case !hasSpace && v != "" && strings.Count(v, ".") == 2:
			return v, true
		case hasSpace && strings.EqualFold(scheme, "bearer"):
			if tok := strings.TrimSpace(rest); tok != "" {
				return tok, true
			}
		}
	}
	return "", false
}
