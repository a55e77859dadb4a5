// Command cron refreshes the shared token if less than MIN_TTL (default
// 45m) of it remains, and prints one line. Run it from cron on as many
// hosts as you like: they queue on the lock and one issuer call serves them
// all. (The tokencache binary's "refresh" command does the same with more
// options.) Every 20 minutes with MIN_TTL 45m replaces Basiq's 60-minute
// token three times an hour, and one failed run still leaves the next one
// time to refresh it: see docs/cron.md.
//
//	*/20 * * * * TOKENCACHE_REDIS_URL=redis://redis:6379/0 BASIQ_API_KEY=... cron
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/tokencache"
	"github.com/tokencache/tokencache/tokencache/basiq"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "cron:", err)
		os.Exit(1)
	}
}

func getenv(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func run() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	minTTL, err := time.ParseDuration(getenv("MIN_TTL", "45m"))
	if err != nil {
		return fmt.Errorf("MIN_TTL: %w", err)
	}
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

	f := basiq.New(key, basiq.WithBaseURL(getenv("TOKENCACHE_ISSUER_URL", basiq.DefaultBaseURL)))
	cache, err := tokencache.New(rdb, f,
		tokencache.WithNamespace(getenv("TOKENCACHE_NAMESPACE", "default")),
		tokencache.WithFailOpen(false))
	if err != nil {
		return err
	}
	defer cache.Close()
	res, err := cache.Refresh(ctx, minTTL, false)
	if err != nil {
		return err
	}
	fmt.Printf("key=%s generation=%d expires_in=%s refreshed=%t\n", res.Key, res.Generation, res.ExpiresIn.Round(time.Second), res.Refreshed)
	return nil
}
