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
	if st.TokenFingerprint == "" {
		// Nothing cached (or nothing readable): say so, whatever was asked.
		fmt.Fprintf(a.env.Stdout, "key=%s invalidated=false reason=%q\n", st.Key, "no token cached")
		return errNothingDeleted
	}
	wantFP, wantGen := st.TokenFingerprint, st.Generation
	if *fp != "" {
		wantFP, wantGen = *fp, *gen
	}
	ok, err := s.tok.InvalidateFingerprint(ctx, wantFP, wantGen)
	if err != nil {
		return err
	}
	if !ok {
		reason := "the cached token changed meanwhile; nothing deleted"
		if *fp != "" && (wantFP != st.TokenFingerprint || wantGen != 0 && wantGen != st.Generation) {
			reason = fmt.Sprintf("the cached token is another (fingerprint %s, generation %d); nothing deleted", st.TokenFingerprint, st.Generation)
		}
		fmt.Fprintf(a.env.Stdout, "key=%s invalidated=false fingerprint=%s generation=%d reason=%q\n", st.Key, wantFP, wantGen, reason)
		return errNothingDeleted
	}
	// What was deleted is the token read above: its fingerprint matched
	// (and its generation, if one was asked for).
	_, err = fmt.Fprintf(a.env.Stdout, "key=%s invalidated=true fingerprint=%s generation=%d\n", st.Key, wantFP, st.Generation)
	return err
}

// errNothingDeleted ends an invalidate that deleted nothing. Its status
// line is already printed on stdout, so it has no message of its own; it
// exits with ExitNothingDeleted.
var errNothingDeleted error = &reported{code: ExitNothingDeleted}
