package cli

import (
	"context"
	"fmt"
	"time"
)

// DefaultMinTTL is refresh's default threshold, for a cron job every 20
// minutes (Basiq advises refreshing its 60-minute token 2-3 times an hour).
// A run 20 minutes after a refresh finds at most 39.5 minutes left (the
// key's TTL ends 30 s before the token's expiry), below 45, so it
// refreshes: three times an hour. If it fails, the next run finds 19.5
// minutes left and refreshes, so one failed run costs nothing; only a
// second failure in a row lets the token lapse. A run skips the refresh
// when someone else (the daemon, another host) refreshed less than 14.5
// minutes earlier. TestCronArithmetic keeps the README, examples/cron and
// the Kubernetes CronJob on these numbers.
const DefaultMinTTL = 45 * time.Minute

// runRefresh is the cron mode: refresh the shared token if less than
// --min-ttl of it remains (or always with --force), then print one status
// line. Many hosts may run it at once; one issuer call serves them all.
func runRefresh(ctx context.Context, a *app, args []string) error {
	fs := a.newFlagSet("refresh")
	minTTL := fs.Duration("min-ttl", DefaultMinTTL, "refresh only if less than this remains of the cached token")
	force := fs.Bool("force", false, "refresh even if the cached token is fresh enough")
	fs.Usage = a.subUsage(fs, "[--min-ttl D] [--force]", "Refresh the shared token if less than D remains; print one status line.")
	if err := a.parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("refresh: unexpected argument %q", fs.Arg(0))
	}
	if *minTTL < 0 {
		return usagef("refresh: --min-ttl %v is negative", *minTTL)
	}
	s, err := a.open(ctx, openOpts{ping: true})
	if err != nil {
		return err
	}
	defer s.Close()
	res, err := s.tok.Refresh(ctx, *minTTL, *force)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(a.env.Stdout, refreshLine(res.Key, res.Generation, res.ExpiresIn, res.Refreshed))
	return err
}

// refreshLine is refresh's status line, logfmt so that people and log
// pipelines both read it.
func refreshLine(key string, gen int64, expiresIn time.Duration, refreshed bool) string {
	return fmt.Sprintf("key=%s generation=%d expires_in=%s refreshed=%t", key, gen, roundDur(expiresIn), refreshed)
}

// roundDur rounds d for display: to the second above a minute, else to the
// millisecond.
func roundDur(d time.Duration) time.Duration {
	if d > time.Minute || d < -time.Minute {
		return d.Round(time.Second)
	}
	return d.Round(time.Millisecond)
}
