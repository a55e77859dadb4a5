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
// POST /token checks, in this order, and answers the first failure:
//
//	method not POST                              405 invalid-request
//	no basiq-version header                      400 parameter-not-valid (parameter basiq-version)
//	basiq-version not accepted (WithVersions)    400 parameter-not-valid (parameter basiq-version)
//	no "Authorization: Basic <something>"        400 parameter-not-valid (parameter Authorization)
//	not exactly "Basic <the key>" (re-encoded?)  401 invalid-client (parameter Authorization)
//	Content-Type not form-urlencoded             400 invalid-request
//	grant_type other than client_credentials     400 unsupported-grant-type
//	scope=CLIENT_ACCESS without userId           400 parameter-not-valid (parameter userId)
//	scope not SERVER_ACCESS nor CLIENT_ACCESS    400 invalid-request (parameter scope)
//
// and otherwise 200 {"access_token","token_type":"Bearer","expires_in"}
// with a fresh random token.
//
// The rest of Basiq's quick start is there too, so that it runs end to end
// (examples/quickstart):
//
//	POST /users                      create a user (SERVER_ACCESS only): 201
//	GET  /users/{id}                 the user, with its connections and accounts
//	POST /users/{id}/connections     connect a bank, the fake's stand-in for the
//	                                 Consent UI: 202 with the job (Connect does it without HTTP)
//	GET  /jobs/{id}                  the job: verify-credentials, retrieve-accounts,
//	                                 retrieve-transactions, one step further each poll
//	GET  /users/{id}/jobs            the user's jobs
//	GET  /users/{id}/accounts        the accounts, once the job has retrieved them
//
// Every call needs a live Bearer token: 401 unauthorized-access to a
// missing, unknown, expired or revoked one; a CLIENT_ACCESS token acts
// only for the user it is bound to (403 access-denied otherwise) and never
// creates users. Bad bodies get 400 parameter-not-supplied or
// parameter-not-valid with the field's pointer, unknown jobs (and, with
// WithStrictUsers, unknown users) 404 resource-not-found. A wrong bank
// login (anything but SandboxLoginID and SandboxPassword) or FailJobs
// makes the job fail at verify-credentials with invalid-credentials.
//
// Error titles and details, the accounts served and the failed step's
// result are the shared fixtures of the repository's testdata/basiq,
// embedded (a test keeps the copies identical).
//
// Other paths under /users/{id}/ and /api/ are a generic protected
// resource with the same token rules.
//
// POST /authenticate takes {"apiKey","clientSecret"} as JSON (401 if
// either is wrong) and returns a JWT signed HS256 with the client secret,
// its exp claim the token's expiry, as text or under "token",
// "access_token" or "jwt" (WithAuthFormat). With WithRotation, every 200
// from the resource to a JWT carries a newer JWT in its Authorization
// response header ("Bearer <jwt>").
//
// Faults are injected at run time and are safe to change while requests
// are in flight: FailNext and FailAlways answer issuer calls with a given
// status and Basiq error code (and Retry-After); GarbleNext and
// GarbleAlways answer 200 with an unusable body; SetLatency delays issuer
// calls; RevokeAll makes the resource reject every token so far;
// FailJobs fails new jobs.
// Counters (Stats) are atomic; assert on call counts, not on timing.
//
// The server listens on a loopback TCP port, so child processes reach it
// through its URL: pass them Env(), and read its counters from another
// process with FetchStats (GET /_issuertest/stats).
package issuertest
