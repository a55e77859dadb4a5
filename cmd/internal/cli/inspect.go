package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/tokencache/tokencache/tokencache"
)

// inspectJSON is inspect --json's document. It never holds the token.
type inspectJSON struct {
	Key              string    `json:"key"`
	Found            bool      `json:"found"`
	Problem          string    `json:"problem,omitempty"`
	Generation       int64     `json:"generation,omitempty"`
	TokenType        string    `json:"token_type,omitempty"`
	ExpiresAt        time.Time `json:"expires_at,omitzero"`
	ExpiresInSeconds float64   `json:"expires_in_seconds,omitempty"`
	IssuedAt         time.Time `json:"issued_at,omitzero"`
	TTLSeconds       float64   `json:"ttl_seconds,omitempty"`
	RefreshedBy      string    `json:"refreshed_by,omitempty"`
	Fingerprint      string    `json:"fingerprint,omitempty"`
	TokenFingerprint string    `json:"token_fingerprint,omitempty"`
	KeyID            string    `json:"key_id,omitempty"`
	LastFailure      string    `json:"last_failure,omitempty"`
	FailureTTLSecs   float64   `json:"failure_ttl_seconds,omitempty"`
	LockKey          string    `json:"lock_key"`
	LockHeld         bool      `json:"lock_held"`
	LockTTLSeconds   float64   `json:"lock_ttl_seconds,omitempty"`
	FenceKey         string    `json:"fence_key"`
	Fence            int64     `json:"fence"`
	Channel          string    `json:"channel"`
}

// runInspect prints what is cached, as a table or as JSON: everything but
// the token itself.
func runInspect(ctx context.Context, a *app, args []string) error {
	fs := a.newFlagSet("inspect")
	asJSON := fs.Bool("json", false, "print JSON for scripts instead of a table")
	fs.Usage = a.subUsage(fs, "[--json]", "Show the cached token's key, generation, expiry, TTL, writer and fingerprints; never the token.")
	if err := a.parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("inspect: unexpected argument %q", fs.Arg(0))
	}
	s, err := a.open(ctx, openOpts{ping: true, noFetch: true})
	if err != nil {
		return err
	}
	defer s.Close()
	st, err := s.tok.Inspect(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		return writeInspectJSON(a.env.Stdout, st, time.Now())
	}
	return writeInspectTable(a.env.Stdout, st, time.Now())
}

func writeInspectJSON(w io.Writer, st tokencache.Status, now time.Time) error {
	doc := inspectJSON{
		Key: st.Key, Found: st.Found, Problem: st.Problem, Generation: st.Generation, TokenType: st.TokenType,
		ExpiresAt: st.ExpiresAt.UTC(), IssuedAt: st.IssuedAt.UTC(), TTLSeconds: st.TTL.Seconds(),
		RefreshedBy: st.RefreshedBy, Fingerprint: st.Fingerprint, TokenFingerprint: st.TokenFingerprint,
		KeyID: st.KeyID, LastFailure: st.LastFailure, FailureTTLSecs: st.FailureTTL.Round(time.Millisecond).Seconds(),
		LockKey: st.LockKey, LockHeld: st.LockHeld, LockTTLSeconds: st.LockTTL.Seconds(),
		FenceKey: st.FenceKey, Fence: st.Fence, Channel: st.Channel,
	}
	if !st.ExpiresAt.IsZero() {
		doc.ExpiresInSeconds = st.ExpiresAt.Sub(now).Round(time.Millisecond).Seconds()
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(doc)
}

func writeInspectTable(w io.Writer, st tokencache.Status, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k, format string, args ...any) { fmt.Fprintf(tw, "%s\t"+format+"\n", append([]any{k}, args...)...) }
	row("KEY", "%s", st.Key)
	switch {
	case st.Found:
		row("STATUS", "valid")
	case st.Problem != "":
		row("STATUS", "unusable: %s", st.Problem)
	case st.Generation != 0:
		row("STATUS", "not served (minted for another credential)")
	default:
		row("STATUS", "no token cached")
	}
	if st.Generation != 0 || st.Found {
		row("GENERATION", "%d", st.Generation)
		row("TOKEN TYPE", "%s", st.TokenType)
		row("EXPIRES AT", "%s", st.ExpiresAt.UTC().Format(time.RFC3339))
		row("EXPIRES IN", "%s", roundDur(st.ExpiresAt.Sub(now)))
		row("TTL", "%s (Redis PTTL; ends before the expiry by the skew)", roundDur(st.TTL))
		row("ISSUED AT", "%s", st.IssuedAt.UTC().Format(time.RFC3339))
		row("REFRESHED BY", "%s", st.RefreshedBy)
		row("CREDENTIAL", "%s", orDash(st.Fingerprint))
		row("TOKEN", "redacted, fingerprint %s", orDash(st.TokenFingerprint))
		if st.KeyID != "" {
			row("ENCRYPTED", "AES-256-GCM, key id %s", st.KeyID)
		}
	}
	if st.LastFailure != "" {
		row("LAST FAILURE", "%s (no issuer call for %s)", st.LastFailure, roundDur(st.FailureTTL))
	}
	if st.LockHeld {
		row("LOCK", "%s held, %s left", st.LockKey, roundDur(st.LockTTL))
	} else {
		row("LOCK", "%s free", st.LockKey)
	}
	row("FENCE", "%s = %d", st.FenceKey, st.Fence)
	row("CHANNEL", "%s", st.Channel)
	return tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
