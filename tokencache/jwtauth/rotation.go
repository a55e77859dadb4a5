package jwtauth

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/tokencache/tokencache/tokencache"
)

// DefaultMaxLifetime is how far in the future a rotated token's exp may lie
// before RotationTransport refuses it. The issuers of this style mint
// one-hour tokens; a day is generous for them, and it stops a response from
// the wrong host (or a forged header) from planting a token with a distant
// exp that a "newest expiry wins" cache would then keep forever.
const DefaultMaxLifetime = 24 * time.Hour

// Offerer accepts a token captured outside the normal refresh, such as a
// rotated JWT from a response header. Offer stores t only if it expires later
// than the token currently held, and reports whether it did. The cache
// implements it; Offer must be safe for concurrent use.
type Offerer interface {
	Offer(ctx context.Context, t tokencache.Token) (bool, error)
}

// OffererFunc adapts an ordinary function to the Offerer interface.
type OffererFunc func(ctx context.Context, t tokencache.Token) (bool, error)

// Offer calls f(ctx, t).
func (f OffererFunc) Offer(ctx context.Context, t tokencache.Token) (bool, error) { return f(ctx, t) }

// RotationTransport is an http.RoundTripper that captures the newer token an
// authenticate-and-rotate API returns with its responses, in the
// Authorization header as "Bearer <jwt>", and offers it to Offerer, so the
// whole fleet benefits from every rotation.
//
// It never changes the request or the response, and a token it cannot use
// (malformed, expired, too far in the future, badly signed, or the one the
// request itself carried) is ignored and logged. A failed Offer is logged
// too and does not fail the response. Offer runs before RoundTrip returns,
// on the request's context. Logs carry the token's fingerprint, never the
// token.
//
// The zero value passes requests to http.DefaultTransport and captures
// nothing; set Offerer. Its fields must not change once it is in use.
type RotationTransport struct {
	// Base makes the requests. Default: http.DefaultTransport.
	Base http.RoundTripper

	// Offerer receives each usable rotated token. Nil disables capture.
	Offerer Offerer

	// Logger receives one record per ignored token or failed Offer
	// (warnings) and per offered token (debug). Default: no logs.
	Logger *slog.Logger

	// HMACKey, when set, makes the transport offer only tokens with a
	// valid HS256 signature under it (for this issuer style, the client
	// secret). Default: no verification.
	HMACKey []byte

	// MaxLifetime refuses tokens whose exp lies further than this from
	// now. Zero means DefaultMaxLifetime; a negative value means no limit.
	MaxLifetime time.Duration

	// Now is the clock used to refuse expired tokens. Default: time.Now.
	Now func() time.Time
}

var _ http.RoundTripper = (*RotationTransport)(nil)

// RoundTrip makes the request with Base and then offers any rotated token
// the response carries.
func (t *RotationTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	base := t.Base
	if base == nil {
		base = http.DefaultTransport
	}
	resp, err := base.RoundTrip(req)
	if err != nil || t.Offerer == nil {
		return resp, err
	}
	t.capture(req, resp)
	return resp, nil
}

// capture offers resp's rotated token, if any and if usable.
func (t *RotationTransport) capture(req *http.Request, resp *http.Response) {
	raw, found := bearerToken(resp.Header)
	if !found {
		return
	}
	if sent, ok := bearerToken(req.Header); ok && sent == raw {
		return // the API echoed the token we sent: nothing new
	}
	log := t.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx := req.Context()
	attrs := []any{slog.Int("status", resp.StatusCode), slog.String("host", req.URL.Host)}
	ignore := func(reason string, err error) {
		log.WarnContext(ctx, "jwtauth: ignoring rotated token: "+reason, append(attrs, slog.Any("error", err))...)
	}

	p, err := parseJWT(raw)
	if err != nil {
		ignore("malformed", err)
		return
	}
	now := time.Now()
	if t.Now != nil {
		now = t.Now()
	}
	if reason, err := checkRotated(p, t.HMACKey, now, t.MaxLifetime); err != nil {
		ignore(reason, err)
		return
	}

	tok := tokencache.Token{AccessToken: raw, TokenType: "Bearer", Expiry: p.exp}
	attrs = append(attrs, slog.Any("token", tok))
	stored, err := t.Offerer.Offer(ctx, tok)
	if err != nil {
		log.WarnContext(ctx, "jwtauth: offering rotated token failed", append(attrs, slog.Any("error", err))...)
		return
	}
	log.DebugContext(ctx, "jwtauth: offered rotated token", append(attrs, slog.Bool("stored", stored))...)
}

// checkRotated applies to a rotated token the checks a fetched one gets:
// an HS256 signature under hmacKey when it is set, an exp after now, and an
// exp at most maxLifetime ahead (zero: DefaultMaxLifetime; negative: no
// limit). It returns why a token fails, for logs, and the error.
func checkRotated(p *jwtParts, hmacKey []byte, now time.Time, maxLifetime time.Duration) (string, error) {
	if hmacKey != nil {
		if err := verifyHS256(p, hmacKey); err != nil {
			return "signature", err
		}
	}
	if !p.exp.After(now) {
		return "expired", ErrExpired
	}
	if maxLifetime == 0 {
		maxLifetime = DefaultMaxLifetime
	}
	if maxLifetime > 0 && p.exp.Sub(now) > maxLifetime {
		return "exp too far in the future", invalidExpiry("exp more than " + maxLifetime.String() + " from now")
	}
	return "", nil
}

// FromResponse is the package's FromResponse with the checks f's own Fetch
// applies, so that a rotated token is trusted no more than a fetched one:
// its HS256 signature under the client secret when f has
// WithHMACVerification, an exp after now on f's clock, and, as
// RotationTransport, an exp at most DefaultMaxLifetime ahead. Use it with
// the cache: tokencache.WithRotation(f.FromResponse). A token that fails
// is reported as an error (ErrSignature, ErrAlgorithm, ErrExpired or
// ErrInvalidExpiry) and not adopted.
func (f *Fetcher) FromResponse(resp *http.Response) (tokencache.Token, bool, error) {
	raw, p, err := rotatedJWT(resp)
	if p == nil || err != nil {
		return tokencache.Token{}, false, err
	}
	var key []byte
	if f.verify {
		key = []byte(f.clientSecret)
	}
	if _, err := checkRotated(p, key, f.now(), DefaultMaxLifetime); err != nil {
		return tokencache.Token{}, false, err
	}
	return tokencache.Token{AccessToken: raw, TokenType: "Bearer", Expiry: p.exp}, true, nil
}

// FromResponse extracts a rotated token from resp's Authorization header:
// "Bearer <jwt>" (the scheme in any case) or a bare JWT. It reports false and
// no error when there is no such header or it holds another scheme, and an
// error wrapping ErrMalformedToken, ErrMissingExpiry or ErrInvalidExpiry when
// the token cannot be read. It does not check the signature or compare the
// expiry with the clock; RotationTransport and the Fetcher's FromResponse
// method do both.
func FromResponse(resp *http.Response) (tokencache.Token, bool, error) {
	raw, p, err := rotatedJWT(resp)
	if p == nil || err != nil {
		return tokencache.Token{}, false, err
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
