package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tokencache/tokencache/tokencache"
)

// Daemon defaults.
const (
	DefaultListen = ":9090"
	// DefaultInterval is how often the daemon asks for the token. A call
	// answered from memory costs nothing; past the refresh-ahead point it
	// starts one background refresh, which the lock makes fleet-wide
	// unique, so several daemons make no extra issuer calls.
	DefaultInterval = 5 * time.Second
	// shutdownGrace bounds draining HTTP requests on SIGTERM.
	shutdownGrace = 5 * time.Second
)

// daemon keeps one token fresh and reports on it over HTTP.
type daemon struct {
	a        *app
	s        *session
	m        *metrics
	interval time.Duration

	mu      sync.Mutex // guards tok, lastErr
	tok     tokencache.Token
	lastErr error
}

// runDaemon keeps the shared token fresh ahead of its expiry and serves
// /healthz, /readyz and /metrics until the context ends (SIGINT/SIGTERM),
// then drains and exits 0.
func runDaemon(ctx context.Context, a *app, args []string) error {
	fs := a.newFlagSet("daemon")
	listen := fs.String("listen", DefaultListen, "address of the /healthz, /readyz and /metrics server")
	interval := fs.Duration("interval", DefaultInterval, "how often to ask for the token (refresh-ahead does the rest)")
	reload := fs.Duration("reload-interval", DefaultReloadInterval, "how often to look for changed secret files (0: on SIGHUP only)")
	fs.Usage = a.subUsage(fs, "[--listen ADDR] [--interval D] [--reload-interval D]", "Keep the token fresh ahead of expiry; serve /healthz, /readyz and /metrics.")
	if err := a.parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("daemon: unexpected argument %q", fs.Arg(0))
	}
	if *interval < 100*time.Millisecond {
		return usagef("daemon: --interval %v is below 100ms", *interval)
	}
	if *reload < 0 {
		return usagef("daemon: --reload-interval %v is negative (0: on SIGHUP only)", *reload)
	}
	d := &daemon{a: a, interval: *interval}
	var stats func() tokencache.Stats
	d.m = newMetrics(a.label(), func() tokencache.Stats { return stats() })
	d.m.trackToken()
	s, err := a.open(ctx, openOpts{wrap: d.m.wrap, logFailures: true})
	if err != nil {
		return err
	}
	defer s.Close()
	d.s = s
	stats = s.cache.Stats
	defer a.watchSecrets(ctx, *reload, a.recheck(s.tok))()

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("daemon: listen %s: %w", *listen, err)
	}
	srv := &http.Server{Handler: d.handler(), ReadHeaderTimeout: 5 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	a.log.Info("tokencache daemon started", "listen", ln.Addr().String(), "token", a.label(), "interval", *interval)

	d.loop(ctx)

	a.log.Info("tokencache daemon stopping")
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("daemon: shutdown: %w", err)
	}
	if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("daemon: serve: %w", err)
	}
	a.log.Info("tokencache daemon stopped")
	return nil
}

// loop asks for the token at once and then every interval until ctx ends.
func (d *daemon) loop(ctx context.Context) {
	t := time.NewTicker(d.interval)
	defer t.Stop()
	for {
		d.tick(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// tickTimeout bounds one tick's Token call: the cache's own bound on a
// refresh (Tuning.RefreshTimeout's default), so a tick never outwaits it.
const tickTimeout = 30 * time.Second

func (d *daemon) tick(ctx context.Context) {
	before := d.s.cache.Stats()
	tctx, cancel := context.WithTimeout(ctx, tickTimeout)
	tok, err := d.s.tok.Token(tctx)
	cancel()
	if ctx.Err() != nil {
		return
	}
	after := d.s.cache.Stats()
	tier := "memory"
	switch {
	case after.IssuerCalls > before.IssuerCalls:
		tier = "issuer"
	case after.RedisReads > before.RedisReads:
		tier = "redis"
	}
	d.mu.Lock()
	prevErr := d.lastErr
	d.lastErr = err
	if err == nil {
		d.tok = tok
	}
	d.mu.Unlock()
	if err != nil {
		if prevErr == nil || prevErr.Error() != err.Error() {
			d.a.log.Warn("tokencache daemon: no token", "err", d.a.explain(err).Error())
		}
		return
	}
	d.m.tokenCalls.WithLabelValues(tier).Inc()
	d.m.observeToken(tok)
	if prevErr != nil {
		d.a.log.Info("tokencache daemon: token available again", "token", tok)
	}
}

func (d *daemon) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", d.ready)
	mux.Handle("GET /metrics", promhttp.HandlerFor(d.m.reg, promhttp.HandlerOpts{}))
	return mux
}

// ready answers 200 when Redis answers and the daemon holds a valid token.
func (d *daemon) ready(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := d.s.redis.ping(ctx); err != nil {
		http.Error(w, "not ready: "+d.a.scrub(err.Error()), http.StatusServiceUnavailable)
		return
	}
	d.mu.Lock()
	tok, lastErr := d.tok, d.lastErr
	d.mu.Unlock()
	if !tok.Valid(time.Now()) {
		msg := "not ready: no valid token yet"
		if lastErr != nil {
			msg = "not ready: " + d.a.explain(lastErr).Error()
		}
		http.Error(w, msg, http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintf(w, "ready: token %s, expires in %s\n", tok.Fingerprint(), roundDur(time.Until(tok.Expiry)))
}
