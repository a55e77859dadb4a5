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
//		jwtauth.WithHMACVerification(), // optional: check HS256 with the secret
//	)
//	tok, err := f.Fetch(ctx) // tok.Expiry is the JWT's exp
//
// The authenticate answer may be the JWT as plain text, a JSON string, or a
// JSON object holding it under "token", "access_token" or "jwt"; each is
// accepted. A token without a numeric exp, with an implausible one, or
// already expired is refused, so the cache never shares a token it cannot age
// out.
//
// RotationTransport wraps the http.RoundTripper that talks to the API and
// hands each rotated token to an Offerer (the cache), which keeps it only if
// it expires later than the one it holds:
//
//	client := &http.Client{Transport: &jwtauth.RotationTransport{Offerer: cache}}
//
// FromResponse does the same extraction for callers that see responses some
// other way, and ExpiryOf reads the exp of any JWT. A Fetcher's FromResponse
// method also applies the checks Fetch does (signature, exp, lifetime cap);
// it is the extractor to give the cache's transport:
//
//	cache, err := tokencache.New(rdb, f, tokencache.WithRotation(f.FromResponse))
//
// Errors never contain the API key, the client secret or a token: Fetch
// returns an *Error whose Retryable, RetryAfter and ErrorCode methods tell the
// cache whether and when to try again, and whose message is the issuer's,
// shortened and scrubbed.
package jwtauth
