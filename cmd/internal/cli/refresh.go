package cli

import (
	"context"
	"fmt"
	"strings"
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
// minutes earlier. TestCronArithmetic keeps docs/cron.md, examples/cron and
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
	if res.Refreshed && !*force && *minTTL > res.ExpiresIn {
		// A token just stored has less than --min-ttl left: no run will
		// ever find it fresh enough, so every run calls the issuer.
		fmt.Fprintf(a.env.Stderr, "tokencache: warning: --min-ttl %v is longer than the token's life (%v): every run will call the issuer; use less, such as --min-ttl %v\n",
			shortDur(*minTTL), roundDur(res.ExpiresIn), shortDur(suggestedMinTTL(res.ExpiresIn)))
	}
	expiresIn := time.Duration(0)
	if !res.Token.Expiry.IsZero() {
		expiresIn = time.Until(res.Token.Expiry)
	}
	_, err = fmt.Fprintln(a.env.Stdout, refreshLine(res.Key, res.Generation, expiresIn, res.ExpiresIn, res.Refreshed))
	return err
}

// suggestedMinTTL is a --min-ttl that a token living life passes: the
// default when it fits (3/4 of Basiq's hour), else three quarters of life.
func suggestedMinTTL(life time.Duration) time.Duration {
	if life > DefaultMinTTL {
		return DefaultMinTTL
	}
	return (life * 3 / 4).Round(time.Second)
}

// shortDur writes d as people write it on a command line: 45m, 2h, 1h30m.
func shortDur(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// refreshLine is refresh's status line, logfmt so that people and log
// pipelines both read it. expires_in is the time left before the issuer's
// expiry, as inspect says it; ttl is the key's remaining TTL in Redis,
// which ends earlier by the skew.
func refreshLine(key string, gen int64, expiresIn, ttl time.Duration, refreshed bool) string {
	return fmt.Sprintf("key=%s generation=%d expires_in=%s ttl=%s refreshed=%t", key, gen, roundDur(expiresIn), roundDur(ttl), refreshed)
}

// roundDur rounds d for display: to the second above a minute, else to the
// millisecond.
func roundDur(d time.Duration) time.Duration {
	if d > time.Minute || d < -time.Minute {
		return d.Round(time.Second)
	}
	return d.Round(time.Millisecond)
}
