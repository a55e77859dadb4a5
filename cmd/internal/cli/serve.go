package cli

import (
	"context"
	"net/http"
	"time"

	"github.com/tokencache/tokencache/cmd/internal/localapi"
	"github.com/tokencache/tokencache/tokencache"
	"github.com/tokencache/tokencache/tokencache/basiq"
)

// DefaultServeListen is serve's default listener: a socket of mode 0600
// in the working directory, reachable by its owner only.
const DefaultServeListen = "unix:tokencache.sock"

// runServe is the local token endpoint: GET /v1/token (?user_id= for a
// user's client token) and POST /v1/token/invalidate, answered from the
// fleet's cache, until the context ends; then it drains and exits 0.
func runServe(ctx context.Context, a *app, args []string) error {
	fs := a.newFlagSet("serve")
	var lf localFlags
	lf.register(fs, DefaultServeListen, localapi.DefaultRate)
	fs.Usage = a.subUsage(fs, serveSynopsis, "Serve the fleet's token to local programs in any language: GET /v1/token[?user_id=ID], POST /v1/token/invalidate.")
	if err := a.parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("serve: unexpected argument %q", fs.Arg(0))
	}
	if a.g.scope != DefaultScope {
		return usagef("serve: serves the server token and, with ?user_id=, any user's client token; drop --scope and --user-id")
	}
	lc, err := lf.listenConfig(a, "serve")
	if err != nil {
		return err
	}

	var stats func() tokencache.Stats
	m := newMetrics(a.label(), func() tokencache.Stats { return stats() })
	lm := localapi.NewMetrics(m.reg, a.g.namespace)
	// Per-user client tokens are Basiq's; each user's fetcher derives from
	// the server's, so the key is read once.
	var opts []tokencache.Option
	users := false
	if a.g.provider == "basiq" {
		f, err := a.fetcherFor(DefaultScope, "")
		if err != nil {
			return err
		}
		bf, ok := f.(*basiq.Fetcher)
		if !ok {
			return usagef("serve: the basiq provider built no Basiq fetcher")
		}
		users = true
		opts = append(opts, localapi.UserTokens(func(userID string) (localapi.Fetcher, error) {
			uf, err := bf.ForUser(userID)
			if err != nil {
				return nil, err
			}
			return m.wrap(uf), nil
		}))
	}
	s, err := a.open(ctx, openOpts{wrap: m.wrap, logFailures: true}, opts...)
	if err != nil {
		return err
	}
	defer s.Close()
	stats = s.cache.Stats
	defer a.watchSecrets(ctx, lf.reload, a.recheck(s.tok))()
	src := localapi.NewSource(s.cache, users, a.explainLine)

	// Warm up: the first client finds the token in memory. The warm-up
	// ends with ctx, and is waited for before the cache closes.
	warm := make(chan struct{})
	defer func() { <-warm }()
	go func() {
		defer close(warm)
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if _, _, err := src.Token(wctx, ""); err != nil && ctx.Err() == nil {
			a.log.Warn("tokencache serve: no token yet", "err", a.explainLine(err))
		}
	}()
	h := lf.guard(localapi.NewTokenHandler(src, lm, nil), lc, func(r *http.Request, result string) {
		lm.Rejected(r.URL.Query().Get("user_id") != "", result)
	})
	return lf.serveLocal(ctx, a, "serve", lc, h, m)
}

const serveSynopsis = "[--listen unix:PATH|ADDR] [--socket-mode 0600] [--listen-secret-file F] [--tls-cert-file F --tls-key-file F] [--rate N] [--burst N] [--costly-rate N] [--costly-burst N] [--metrics-listen ADDR] [--reload-interval D]"
