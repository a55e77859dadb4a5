// Command backend is one replica of a replicated HTTP backend that calls a
// Basiq-shaped API through the shared token cache. Run as many replicas as
// you like against one Redis: the issuer is called once per token
// lifetime for all of them.
//
// Every outgoing API request goes through Cache.Transport, which sets
// "Authorization: Bearer <token>" and recovers from a 401 once
// (compare-and-delete, refetch, retry).
//
//	TOKENCACHE_REDIS_URL=redis://127.0.0.1:6379/0 BASIQ_API_KEY=... \
//	TOKENCACHE_ISSUER_URL=https://au-api.basiq.io LISTEN=:8081 go run ./examples/backend
//	curl localhost:8081/institutions
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/tokencache"
	"github.com/tokencache/tokencache/tokencache/basiq"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	if err := run(ctx, log); err != nil {
		log.Error("backend failed", "err", err)
		os.Exit(1)
	}
}

func getenv(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func run(ctx context.Context, log *slog.Logger) error {
	api := strings.TrimRight(getenv("TOKENCACHE_ISSUER_URL", "https://au-api.basiq.io"), "/")
	key := os.Getenv("BASIQ_API_KEY")
	if key == "" {
		return errors.New("set BASIQ_API_KEY")
	}
	opt, err := redis.ParseURL(getenv("TOKENCACHE_REDIS_URL", "redis://127.0.0.1:6379/0"))
	if err != nil {
		return fmt.Errorf("TOKENCACHE_REDIS_URL: %w", err)
	}
	rdb := redis.NewClient(opt)
	defer rdb.Close()

	fetcher := basiq.New(key, basiq.WithBaseURL(api))
	cache, err := tokencache.New(rdb, fetcher,
		tokencache.WithNamespace(getenv("TOKENCACHE_NAMESPACE", "default")),
		tokencache.WithLogger(log))
	if err != nil {
		return err
	}
	defer cache.Close()
	client := &http.Client{Transport: cache.Transport(nil), Timeout: 30 * time.Second}

	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	// /institutions, /users/{id}/accounts, ...: proxied to the API.
	mux.HandleFunc("GET /", func(w http.ResponseWriter, r *http.Request) {
		req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, api+r.URL.Path, nil)
		if err != nil {
			http.Error(w, "bad path", http.StatusBadRequest)
			return
		}
		req.Header.Set("basiq-version", "3.0")
		resp, err := client.Do(req)
		if err != nil {
			log.Warn("api call failed", "path", r.URL.Path, "err", err)
			http.Error(w, "upstream unavailable", http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		w.Header().Set("Content-Type", resp.Header.Get("Content-Type"))
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, io.LimitReader(resp.Body, 10<<20))
	})

	srv := &http.Server{Addr: getenv("LISTEN", ":8081"), Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	log.Info("backend listening", "addr", srv.Addr, "api", api)
	if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
