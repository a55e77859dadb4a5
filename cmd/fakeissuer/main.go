// Command fakeissuer serves the fake issuer of package
// tokencache/issuertest on a listen address, for docker-compose and local
// experiments: Basiq's POST /token, the authenticate-and-rotate POST
// /authenticate (HS256 JWTs), the Basiq API of the quick start (/users,
// /jobs), a Bearer-checked resource, and its counters at GET
// /_issuertest/stats. It is not an issuer to use in production.
//
//	BASIQ_API_KEY=dev-key fakeissuer --listen :8080 --latency 200ms
//
// Settings, flags first, then the environment, then the default:
//
//	--listen          FAKEISSUER_LISTEN         :8080
//	--latency         FAKEISSUER_LATENCY        200ms
//	--lifetime        FAKEISSUER_LIFETIME       1h
//	(API key)         BASIQ_API_KEY, else TOKENCACHE_API_KEY, else issuertest.DefaultAPIKey
//	(client secret)   TOKENCACHE_CLIENT_SECRET, else issuertest.DefaultClientSecret
//
// Its start line says which key it accepts without printing it: accepts="the
// default demo key (issuertest.DefaultAPIKey)", "the key from $BASIQ_API_KEY", …
//
// The API key and client secret also have flags (--api-key,
// --client-secret), but command lines are visible to other users of the
// host: prefer the environment.
//
// Besides the issuertest paths (/users, /users/..., /jobs/..., /api/...), any other
// GET path (/institutions, ...) is served as the resource, so that the
// example backend can proxy Basiq-like API paths to it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/tokencache/tokencache/tokencache/issuertest"
)

// Environment variables.
const (
	envListen       = "FAKEISSUER_LISTEN"
	envLatency      = "FAKEISSUER_LATENCY"
	envLifetime     = "FAKEISSUER_LIFETIME"
	envBasiqAPIKey  = "BASIQ_API_KEY"
	envAPIKey       = "TOKENCACHE_API_KEY"
	envClientSecret = "TOKENCACHE_CLIENT_SECRET"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, slog.New(slog.NewTextHandler(os.Stderr, nil)), nil)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "fakeissuer:", err)
		if errors.Is(err, errUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

var errUsage = errors.New("usage")

// run serves until ctx ends. If started is not nil it gets the base URL
// once the server listens (for tests).
func run(ctx context.Context, args []string, getenv func(string) string, log *slog.Logger, started func(url string)) error {
	first := func(keys ...string) string {
		for _, k := range keys {
			if v := getenv(k); v != "" {
				return v
			}
		}
		return ""
	}
	envDur := func(key string, def time.Duration) (time.Duration, error) {
		v := getenv(key)
		if v == "" {
			return def, nil
		}
		d, err := time.ParseDuration(v)
		if err != nil {
			return 0, fmt.Errorf("%w: %s=%q: %v", errUsage, key, v, err)
		}
		return d, nil
	}
	defLatency, err := envDur(envLatency, 200*time.Millisecond)
	if err != nil {
		return err
	}
	defLifetime, err := envDur(envLifetime, issuertest.DefaultLifetime)
	if err != nil {
		return err
	}
	defListen := first(envListen)
	if defListen == "" {
		defListen = ":8080"
	}
	// Where the accepted key and secret come from, to log without them.
	keyFrom, secretFrom := "the default demo key (issuertest.DefaultAPIKey)", "the default demo secret (issuertest.DefaultClientSecret)"
	defKey := first(envBasiqAPIKey, envAPIKey)
	switch {
	case defKey == "":
		defKey = issuertest.DefaultAPIKey
	case getenv(envBasiqAPIKey) != "":
		keyFrom = "the key from $" + envBasiqAPIKey
	default:
		keyFrom = "the key from $" + envAPIKey
	}
	defSecret := first(envClientSecret)
	if defSecret == "" {
		defSecret = issuertest.DefaultClientSecret
	} else {
		secretFrom = "the secret from $" + envClientSecret
	}

	fs := flag.NewFlagSet("fakeissuer", flag.ContinueOnError)
	listen := fs.String("listen", defListen, "address to serve on ($"+envListen+")")
	latency := fs.Duration("latency", defLatency, "delay before each /token and /authenticate answer ($"+envLatency+")")
	lifetime := fs.Duration("lifetime", defLifetime, "lifetime of the tokens it mints ($"+envLifetime+")")
	fs.DurationVar(lifetime, "life", defLifetime, "alias of --lifetime")
	key := fs.String("api-key", "", "the API key it accepts (default $"+envBasiqAPIKey+", $"+envAPIKey+" or issuertest's)")
	secret := fs.String("client-secret", "", "the /authenticate client secret (default $"+envClientSecret+" or issuertest's)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	if *key == "" {
		*key = defKey
	} else {
		keyFrom = "the key given with --api-key"
	}
	if *secret == "" {
		*secret = defSecret
	} else {
		secretFrom = "the secret given with --client-secret"
	}
	if *latency < 0 {
		return fmt.Errorf("%w: --latency %v is negative", errUsage, *latency)
	}
	if *lifetime <= 0 {
		return fmt.Errorf("%w: --lifetime %v: want a positive duration", errUsage, *lifetime)
	}

	iss := issuertest.New(
		issuertest.WithAPIKey(*key),
		issuertest.WithClientSecret(*secret),
		issuertest.WithLatency(*latency),
		issuertest.WithLifetime(*lifetime),
	)
	srv := &http.Server{Addr: *listen, Handler: apiPaths(iss), ReadHeaderTimeout: 5 * time.Second}
	ln, err := listenTCP(ctx, *listen)
	if err != nil {
		return err
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.Info("fake issuer listening", "addr", ln.Addr().String(), "latency", *latency, "lifetime", *lifetime,
		"accepts", keyFrom, "authenticate_secret", secretFrom)
	if started != nil {
		started("http://" + ln.Addr().String())
	}
	select {
	case err := <-served:
		iss.Close()
		return err
	case <-ctx.Done():
	}
	iss.Close() // ends latency waits at once
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return err
	}
	st := iss.Stats()
	log.Info("fake issuer stopped", "token_calls", st.TokenCalls, "authenticate_calls", st.AuthenticateCalls, "resource_calls", st.ResourceCalls)
	return nil
}

// apiPaths serves the issuertest routes as they are, and any other GET
// path as the resource under /api, so that Basiq-like API paths
// (/institutions, ...) answer with the token check.
func apiPaths(iss *issuertest.Server) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := r.URL.Path
		known := p == issuertest.TokenPath || p == issuertest.AuthenticatePath ||
			strings.HasPrefix(p, "/_issuertest/") || p == issuertest.UsersPath || strings.HasPrefix(p, "/users/") ||
			strings.HasPrefix(p, issuertest.JobsPath+"/") || strings.HasPrefix(p, "/api/")
		if !known && r.Method == http.MethodGet && p != "/" {
			r2 := r.Clone(r.Context())
			r2.URL.Path = "/api" + p
			r2.URL.RawPath = ""
			iss.ServeHTTP(w, r2)
			return
		}
		iss.ServeHTTP(w, r)
	})
}

func listenTCP(ctx context.Context, addr string) (net.Listener, error) {
	var lc net.ListenConfig
	return lc.Listen(ctx, "tcp", addr)
}
