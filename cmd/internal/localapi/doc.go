// Package localapi serves the fleet's token to programs in any language on
// the local machine: a token endpoint (GET /v1/token, POST
// /v1/token/invalidate) and an API proxy that adds the Authorization
// header itself, both answered from the same tokencache.Cache (memory
// first, one issuer call for the fleet).
//
// The listener is safe by default (ListenConfig): a Unix socket of mode
// 0600, or loopback TCP with a required bearer secret compared in constant
// time; any other address needs TLS and the secret. Every answer carries
// Cache-Control: no-store, every client is rate limited, and no token
// reaches a log line or a metric.
//
//	src := localapi.NewSource(cache, true, nil) // true: ?user_id= serves client tokens
//	ln, err := localapi.ListenConfig{Addr: "unix:/run/tokencache.sock"}.Listen()
//	h := localapi.NewTokenHandler(src, localapi.NewMetrics(reg, "default"), nil)
//	err = (&http.Server{Handler: localapi.Guard(h, localapi.GuardConfig{Rate: 100, Burst: 200})}).Serve(ln)
//
// NewProxy is the API proxy over the same Source, behind the same Guard.
//
// The package never imports the tokencache library outside source.go, the
// one adapter between the cache's handles and the handlers.
package localapi
