// Command fakeissuer serves a fake Basiq-shaped token issuer for
// docker-compose and local experiments: POST /token with the API key from
// BASIQ_API_KEY, and Bearer-checked API calls on any other GET path.
// It is not an issuer to use in production.
//
//	BASIQ_API_KEY=dev-key fakeissuer --listen :8080 --latency 200ms
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/tokencache/tokencache/internal/fakeissuer"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:])
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "fakeissuer:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("fakeissuer", flag.ContinueOnError)
	listen := fs.String("listen", ":8080", "address to serve on")
	latency := fs.Duration("latency", 200*time.Millisecond, "delay before each token answer")
	life := fs.Duration("life", time.Hour, "lifetime of the tokens it mints")
	if err := fs.Parse(args); err != nil {
		return err
	}
	key := os.Getenv("BASIQ_API_KEY")
	if key == "" {
		return errors.New("set BASIQ_API_KEY to the key the fake issuer accepts")
	}
	srv := &http.Server{Addr: *listen, Handler: fakeissuer.Handler(key, *latency, *life), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	slog.Info("fake issuer listening", "addr", *listen, "latency", *latency)
	if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
