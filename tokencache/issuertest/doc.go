// Package issuertest runs a fake token issuer over real HTTP, for tests,
// examples and the demo: Basiq's POST /token, an authenticate-and-rotate
// POST /authenticate that mints HS256 JWTs, and a protected resource that
// accepts only the tokens it issued and has not expired or revoked.
//
// The fake is strict where the real issuer is strict, so a client that
// passes against it sends what Basiq expects: the exact API key verbatim
// in "Authorization: Basic <key>", a basiq-version header, a form body
// with scope=SERVER_ACCESS, or scope=CLIENT_ACCESS and a userId. Mistakes
// get Basiq's error objects (with a correlationId) and statuses.
//
//	srv := issuertest.RunT(t) // closed when the test ends
//	f := basiq.New(srv.APIKey(), basiq.WithBaseURL(srv.URL()))
//	tok, err := f.Fetch(ctx)
//	if got := srv.Stats().TokenCalls; got != 1 { ... }
//
// Faults are injected at run time and are safe to change while requests
// are in flight: FailNext and FailAlways answer issuer calls with a given
// status and Basiq error code (and Retry-After); GarbleNext and
// GarbleAlways answer 200 with an unusable body; SetLatency delays issuer
// calls; RevokeAll makes the resource reject every token so far.
// Counters (Stats) are atomic; assert on call counts, not on timing.
//
// The server listens on a loopback TCP port, so child processes reach it
// through its URL: pass them Env(), and read its counters from another
// process with FetchStats (GET /_issuertest/stats).
package issuertest
