// Command peruser sends a user to Basiq's Consent UI with a CLIENT_ACCESS
// token bound to their userId, as in the Basiq quick start (step 4):
//
//	window.location = `https://consent.basiq.io/home?token={{client_token_bound_to_userId}}`
//
// Each user's client token is shared by every replica through Redis
// (tokencache:{<ns>/<user>}:client), so a user who reloads the page, or
// lands on another replica, gets the same token without another issuer
// call. It listens on :8084 by default, as in docker-compose, where
// :8081-8083 are the backend replicas; examples/README.md runs it offline.
//
//	TOKENCACHE_REDIS_URL=redis://127.0.0.1:6379/0 BASIQ_API_KEY=... LISTEN=:8084 go run ./examples/peruser
//	curl -i 'localhost:8084/consent?userId=1234567-1234-1234-1234-123456781234'
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/signal"
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
		log.Error("peruser failed", "err", err)
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
	api := getenv("TOKENCACHE_ISSUER_URL", "https://au-api.basiq.io")
	consent := getenv("CONSENT_URL", "https://consent.basiq.io/home")
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

	server := basiq.New(key, basiq.WithBaseURL(api))
	cache, err := tokencache.New(rdb, server,
		tokencache.WithNamespace(getenv("TOKENCACHE_NAMESPACE", "default")),
		tokencache.WithLogger(log),
		tokencache.WithClientTokens(func(userID string) (tokencache.Fetcher, error) {
			return server.ForUser(userID)
		}, 0))
	if err != nil {
		return err
	}
	defer cache.Close()

	mux := http.NewServeMux()
	mux.HandleFunc("GET /consent", func(w http.ResponseWriter, r *http.Request) {
		userID := r.URL.Query().Get("userId")
		if err := tokencache.ValidateUserID(userID); err != nil {
			http.Error(w, "a valid userId is required", http.StatusBadRequest)
			return
		}
		user, err := cache.User(userID)
		var tok tokencache.Token
		if err == nil {
			tok, err = user.Token(r.Context())
		}
		if err != nil {
			log.Warn("no client token", "user", userID, "err", err)
			http.Error(w, "cannot start the consent journey right now", http.StatusServiceUnavailable)
			return
		}
		// The client token goes to the user's browser, as Basiq intends;
		// it is bound to this user and CLIENT_ACCESS only.
		http.Redirect(w, r, consent+"?token="+url.QueryEscape(tok.AccessToken), http.StatusFound)
	})

	srv := &http.Server{Addr: getenv("LISTEN", ":8084"), Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	log.Info("peruser listening", "addr", srv.Addr)
	if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
