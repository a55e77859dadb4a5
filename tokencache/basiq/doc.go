// Package basiq fetches access tokens from Basiq's POST /token endpoint,
// for a tokencache.Cache to share across replicas or for direct use.
//
// Basiq exchanges an API key for a 60-minute token. The key goes verbatim
// in "Authorization: Basic <key>" (it is already encoded: base64-encoding
// it again gets a 400), with a basiq-version header and a form body naming
// the scope:
//
//	POST /token HTTP/1.1
//	Authorization: Basic <API key>
//	Content-Type: application/x-www-form-urlencoded
//	basiq-version: 3.0
//
//	scope=SERVER_ACCESS
//
// A SERVER_ACCESS token opens every endpoint; a CLIENT_ACCESS token is
// restricted, bound to one userId, and meant for the browser (Basiq's
// Consent UI). New builds a SERVER_ACCESS Fetcher; ForUser derives a
// CLIENT_ACCESS one:
//
//	server := basiq.New(os.Getenv("BASIQ_API_KEY"))
//	cache, err := tokencache.New(rdb, server)
//	...
//	client, err := server.ForUser(userID) // CLIENT_ACCESS&userId=<userID>
//	tok, err := client.Fetch(ctx)
//
// Failures are typed. A *ConfigError (no key, a bad base URL) is found
// before anything is sent. An *Error carries what Basiq said — HTTP
// status, error code, title, detail, correlationId, Retry-After — or the
// transport failure (code "timeout", "canceled" or "network"; errors.Is
// still finds context.DeadlineExceeded). Both tell the cache whether to
// retry: 5xx, 429 and timeouts are retryable; invalid-grant, access-denied
// and other 4xx answers are not, and retrying them only burns the
// issuer's rate limit.
//
//	var be *basiq.Error
//	if errors.As(err, &be) {
//		log.Printf("basiq said %d %s (correlationId %s)", be.Status, be.Code, be.CorrelationID)
//	}
//
// Neither errors nor a printed Fetcher ever contain the API key or a
// token: issuer text is sanitized and echoes of the key are redacted,
// non-JSON error pages are not quoted, and response bodies are read up to
// MaxResponseBytes only.
//
// The issuertest package serves a faithful fake of this endpoint for tests.
package basiq
