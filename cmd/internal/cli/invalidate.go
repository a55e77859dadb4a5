package cli

import (
	"context"
	"fmt"
)

// runInvalidate deletes the cached token if it is still the one just read
// (compare-and-delete by token fingerprint and generation) and publishes
// "invalidated", so every replica drops its copy. With --fingerprint (and
// --generation) it deletes only that token.
func runInvalidate(ctx context.Context, a *app, args []string) error {
	fs := a.newFlagSet("invalidate")
	fp := fs.String("fingerprint", "", "delete only if the cached token has this fingerprint (as inspect shows it)")
	gen := fs.Int64("generation", 0, "delete only if the cached token has this generation")
	fs.Usage = a.subUsage(fs, "[--fingerprint FP] [--generation N]", "Compare-and-delete the cached token and publish \"invalidated\".")
	if err := a.parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("invalidate: unexpected argument %q", fs.Arg(0))
	}
	if *gen < 0 {
		return usagef("invalidate: --generation %d is negative", *gen)
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
	if st.TokenFingerprint == "" && *fp == "" {
		_, err = fmt.Fprintf(a.env.Stdout, "key=%s invalidated=false reason=%q\n", st.Key, "no token cached")
		return err
	}
	wantFP, wantGen := st.TokenFingerprint, st.Generation
	if *fp != "" {
		wantFP, wantGen = *fp, *gen
	}
	ok, err := s.tok.InvalidateFingerprint(ctx, wantFP, wantGen)
	if err != nil {
		return err
	}
	reason := ""
	if !ok {
		reason = fmt.Sprintf(" reason=%q", "the cached token changed meanwhile; nothing deleted")
	}
	_, err = fmt.Fprintf(a.env.Stdout, "key=%s invalidated=%t fingerprint=%s generation=%d%s\n", st.Key, ok, wantFP, wantGen, reason)
	return err
}
