package cli

import (
	"context"
	"net/http"
	"net/url"

	"github.com/tokencache/tokencache/cmd/internal/localapi"
	"github.com/tokencache/tokencache/tokencache"
)

// DefaultProxyListen is proxy's default listener: a socket of mode 0600
// in the working directory.
const DefaultProxyListen = "unix:tokencache-proxy.sock"

// DefaultProxyRate is proxy's default --rate: no per-client limit. Every
// local process shares one bucket (one IP on loopback, one socket), so
// serve's 100 a second would throttle the backend's own traffic; the
// upstream enforces its own rate, and a client in a loop of 401s costs
// one issuer call per rejection window (the library holds the rest).
const DefaultProxyRate = 0

// runProxy is the API proxy: it forwards every request to --upstream
// (default the issuer URL) with the fleet's token in its Authorization
// header, recovering from a 401 once for the fleet, until the context
// ends; then it drains and exits 0.
func runProxy(ctx context.Context, a *app, args []string) error {
	fs := a.newFlagSet("proxy")
	var lf localFlags
	lf.register(fs, DefaultProxyListen, DefaultProxyRate)
	upstream := fs.String("upstream", "", "the API's base URL, the only place requests go (default --issuer-url)")
	fs.Usage = a.subUsage(fs, proxySynopsis, "Forward requests to the API adding the fleet's token; a 401 invalidates it once for the fleet and the request is retried once.")
	if err := a.parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("proxy: unexpected argument %q", fs.Arg(0))
	}
	up := *upstream
	if up == "" {
		up = a.g.issuerURL
	}
	u, err := url.Parse(up)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return usagef("proxy: --upstream %q: want http(s)://host[:port][/path] without credentials, query or fragment", redactURL(up))
	}
	lc, err := lf.listenConfig(a, "proxy")
	if err != nil {
		return err
	}
	var stats func() tokencache.Stats
	m := newMetrics(a.label(), func() tokencache.Stats { return stats() })
	lm := localapi.NewMetrics(m.reg, a.g.namespace)
	s, err := a.open(ctx, openOpts{wrap: m.wrap, logFailures: true})
	if err != nil {
		return err
	}
	defer s.Close()
	stats = s.cache.Stats
	defer a.watchSecrets(ctx, lf.reload, a.recheck(s.tok))()
	user := ""
	if a.g.scope == "CLIENT_ACCESS" {
		user = a.g.userID
	}
	src := localapi.NewSource(s.cache, user != "", a.explainLine)
	p, err := localapi.NewProxy(src, localapi.ProxyConfig{Upstream: u, UserID: user, Metrics: lm, Logger: a.log})
	if err != nil {
		return usagef("proxy: %v", err)
	}
	h := lf.guard(p, lc, func(*http.Request, string) { lm.ProxyRefused() })
	return lf.serveLocal(ctx, a, "proxy", lc, h, m)
}

const proxySynopsis = "[--upstream URL] [--listen unix:PATH|ADDR] [--socket-mode 0600] [--listen-secret-file F] [--tls-cert-file F --tls-key-file F] [--rate N] [--burst N] [--costly-rate N] [--costly-burst N] [--metrics-listen ADDR] [--reload-interval D]"
