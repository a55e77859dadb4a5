package cli

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/time/rate"

	"github.com/tokencache/tokencache/cmd/internal/localapi"
)

// The timeouts of serve's and proxy's connections (see localapi): a
// connection idle this long after a request is closed, and a request body
// must arrive within bodyTimeout. Variables so that tests need not wait
// them out.
var (
	idleTimeout = localapi.DefaultIdleTimeout
	bodyTimeout = localapi.DefaultBodyTimeout
)

// localFlags are the listener flags that serve and proxy share.
type localFlags struct {
	listen        string
	socketMode    string
	secretFile    string
	certFile      string
	keyFile       string
	rate          float64
	burst         int
	costlyRate    float64
	costlyBurst   int
	metricsListen string
	reload        time.Duration

	secret func() string // the bearer secret of the moment; nil if none
}

// register adds the listener flags; defRate is the command's default
// --rate (serve: localapi.DefaultRate; proxy: DefaultProxyRate, off).
func (f *localFlags) register(fs *flag.FlagSet, defListen string, defRate float64) {
	fs.StringVar(&f.listen, "listen", defListen, "unix:PATH (a socket of --socket-mode), a loopback HOST:PORT (needs the bearer secret), or any other address (needs TLS and the secret)")
	fs.StringVar(&f.socketMode, "socket-mode", "0600", "permission bits of the unix: socket, octal")
	fs.StringVar(&f.secretFile, "listen-secret-file", "", "read the bearer secret clients must send from this file ($"+EnvListenSecret+")")
	fs.StringVar(&f.certFile, "tls-cert-file", "", "serve TLS with this PEM certificate (with --tls-key-file)")
	fs.StringVar(&f.keyFile, "tls-key-file", "", "the PEM private key of --tls-cert-file")
	fs.Float64Var(&f.rate, "rate", defRate, "requests per second allowed to one client (0: no limit)")
	fs.IntVar(&f.burst, "burst", localapi.DefaultBurst, "burst of requests allowed to one client")
	fs.Float64Var(&f.costlyRate, "costly-rate", localapi.DefaultCostlyRate, "requests per second that may cost an issuer call (an invalidation, a user's first token) allowed to one client (0: no limit)")
	fs.IntVar(&f.costlyBurst, "costly-burst", localapi.DefaultCostlyBurst, "burst of requests that may cost an issuer call allowed to one client")
	fs.StringVar(&f.metricsListen, "metrics-listen", "", "address of a plain HTTP /healthz and /metrics server (default none)")
	fs.DurationVar(&f.reload, "reload-interval", DefaultReloadInterval, "how often to look for changed secret files (0: on SIGHUP only)")
}

// listenConfig reads the secret and checks the listener rules: a
// configuration they refuse is a usage error (exit 2) in one line.
func (f *localFlags) listenConfig(a *app, cmd string) (localapi.ListenConfig, error) {
	mode, err := strconv.ParseUint(f.socketMode, 8, 32)
	if err != nil || mode > 0o777 {
		return localapi.ListenConfig{}, usagef("%s: --socket-mode %q: want octal permission bits such as 0600", cmd, f.socketMode)
	}
	if mode == 0 {
		return localapi.ListenConfig{}, usagef("%s: --socket-mode 0 would lock everyone out", cmd)
	}
	if f.reload < 0 {
		return localapi.ListenConfig{}, usagef("%s: --reload-interval %v is negative (0: on SIGHUP only)", cmd, f.reload)
	}
	if f.rate < 0 || f.burst < 1 {
		return localapi.ListenConfig{}, usagef("%s: --rate must be 0 or more and --burst 1 or more", cmd)
	}
	if f.costlyRate < 0 || f.costlyBurst < 1 {
		return localapi.ListenConfig{}, usagef("%s: --costly-rate must be 0 or more and --costly-burst 1 or more", cmd)
	}
	w, err := a.secretValue(f.secretFile, EnvListenSecret, "the listen secret", false, func(s string) error {
		if len(s) < localapi.MinSecretLen {
			return fmt.Errorf("the bearer secret is %d bytes, want at least %d", len(s), localapi.MinSecretLen)
		}
		return nil
	})
	if err != nil {
		return localapi.ListenConfig{}, err
	}
	secret := ""
	if w != nil {
		secret = w.get()
		// The secret of the moment for each request: a rotated secret
		// file is checked from the next request on.
		f.secret = w.get
	}
	log := a.log
	if log == nil { // the command has not opened its session yet
		log = a.g.logger(a)
	}
	if f.secretFile != "" {
		if fi, err := os.Stat(f.secretFile); err == nil && fi.Mode().Perm()&0o004 != 0 {
			log.Warn("tokencache "+cmd+": the listen secret file is readable by every user of the machine; make it 0600 (or 0640 for a group)",
				"file", f.secretFile, "mode", fmt.Sprintf("%#o", uint32(fi.Mode().Perm())))
		}
	}
	c := localapi.ListenConfig{Addr: f.listen, Mode: os.FileMode(mode), Secret: secret, CertFile: f.certFile, KeyFile: f.keyFile}
	if _, unix := localapi.SocketPath(c.Addr); unix && secret == "" && mode&0o070 != 0 && mode&0o007 == 0 {
		log.Warn("tokencache "+cmd+": the socket's group can ask for the token, with no bearer secret", "socket_mode", fmt.Sprintf("%#o", mode))
	}
	if err := c.Check(); err != nil {
		return c, usagef("%s: %v (secret: $%s or --listen-secret-file; TLS: --tls-cert-file and --tls-key-file)", cmd, err, EnvListenSecret)
	}
	if c.CertFile != "" {
		w, err := a.certPair("the listener's TLS certificate", c.CertFile, c.KeyFile)
		if err != nil {
			return c, usagef("%s: listen %s: TLS certificate: %v", cmd, c.Addr, err)
		}
		// The certificate of the moment for each handshake: a renewed
		// pair is used by the next connection.
		c.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return w.get(), nil }
	}
	return c, nil
}

// guard returns h behind the secret and the rate limit of the flags.
func (f *localFlags) guard(h http.Handler, c localapi.ListenConfig, rejected func(*http.Request, string)) http.Handler {
	return localapi.Guard(h, localapi.GuardConfig{Secret: c.Secret, SecretFunc: f.secret, Rate: rate.Limit(f.rate), Burst: f.burst,
		CostlyRate: rate.Limit(f.costlyRate), CostlyBurst: f.costlyBurst, BodyTimeout: bodyTimeout, Rejected: rejected})
}

// serveLocal serves h on the listener of c, and the metrics on
// --metrics-listen if set, until ctx ends; then drains.
func (f *localFlags) serveLocal(ctx context.Context, a *app, cmd string, c localapi.ListenConfig, h http.Handler, m *metrics) error {
	ln, err := c.Listen()
	if err != nil {
		var ce *localapi.ConfigError
		if errors.As(err, &ce) {
			return usagef("%s: %v", cmd, err)
		}
		return fmt.Errorf("%s: %w", cmd, err)
	}
	servers := []*http.Server{localapi.NewServer(h, idleTimeout)}
	listeners := []net.Listener{ln}
	if f.metricsListen != "" {
		mln, err := net.Listen("tcp", f.metricsListen)
		if err != nil {
			_ = ln.Close()
			return fmt.Errorf("%s: --metrics-listen %s: %w", cmd, f.metricsListen, err)
		}
		mux := http.NewServeMux()
		mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
		mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
		servers = append(servers, localapi.NewServer(mux, idleTimeout))
		listeners = append(listeners, mln)
	}
	served := make(chan error, len(servers))
	for i, srv := range servers {
		go func() { served <- srv.Serve(listeners[i]) }()
	}
	auth := "bearer secret"
	if c.Secret == "" {
		auth = "socket mode " + fmt.Sprintf("%#o", uint32(c.Mode))
	}
	attrs := []any{"listen", ln.Addr().String(), "access", auth, "tls", c.CertFile != "", "token", a.label()}
	if f.metricsListen != "" {
		attrs = append(attrs, "metrics", listeners[1].Addr().String())
	}
	a.log.Info("tokencache "+cmd+" started", attrs...)

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-served:
	}
	a.log.Info("tokencache " + cmd + " stopping")
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	for _, srv := range servers {
		if err := srv.Shutdown(sctx); err != nil && serveErr == nil {
			serveErr = err
		}
	}
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return fmt.Errorf("%s: serve: %w", cmd, serveErr)
	}
	a.log.Info("tokencache " + cmd + " stopped")
	return nil
}

// explainLine is the reason a client of serve or proxy sees for an error:
// the CLI's one line, scrubbed.
func (a *app) explainLine(err error) string { return a.explain(err).Error() }
