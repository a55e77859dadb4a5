// Package jwtauth obtains and rotates tokens from "authenticate and rotate"
// issuers: APIs where a POST to {base}/authenticate with a JSON body
// {"apiKey":…,"clientSecret":…} returns a JWT, the JWT's exp claim is its
// expiry, and later API responses may carry a newer JWT in their
// Authorization header ("Bearer <jwt>").
//
// A Fetcher plugs such an issuer into a tokencache.Cache, which calls it once
// per token lifetime for the whole fleet:
//
//	f := jwtauth.New(apiKey, clientSecret,
//		jwtauth.WithBaseURL("https://api.example.com"),
//		jwtauth.WithHMACVerification(true), // optional: check HS256 with the secret
//	)
//	tok, err := f.Fetch(ctx) // tok.Expiry is the JWT's exp
//
// The authenticate answer may be the JWT as plain text, a JSON string, or a
// JSON object holding it under "token", "access_token" or "jwt"; each is
// accepted. A token without a numeric exp, with an implausible one, or
// already expired is refused, so the cache never shares a token it cannot age
// out.
//
// Later API responses may carry a newer JWT. The Fetcher's FromResponse
// method reads it and checks it as Fetch checks a fetched one (the
// signature with WithHMACVerification, an exp after now, an exp at most
// DefaultMaxLifetime ahead); give it to the cache, whose Transport then
// adopts rotated tokens once for the whole fleet:
//
//	cache, err := tokencache.New(rdb, f, tokencache.WithRotation(f.FromResponse))
//
// ExpiryOf reads the exp of any JWT.
//
// Errors never contain the API key, the client secret or a token: Fetch
// returns an *Error whose Retryable, RetryAfter and ErrorCode methods tell the
// cache whether and when to try again, and whose message is the issuer's,
// shortened and scrubbed.
package jwtauth
