package cli

import (
	"context"
	"fmt"
)

// runGet prints a valid token, or with --header an Authorization header
// line, fetching it or waiting for another replica as needed.
func runGet(ctx context.Context, a *app, args []string) error {
	fs := a.newFlagSet("get")
	header := fs.Bool("header", false, "print \"Authorization: Bearer <token>\" instead of the bare token")
	fs.Usage = a.subUsage(fs, "[--header]", "Print a valid token, fetching it or waiting for another replica as needed.")
	if err := a.parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("get: unexpected argument %q", fs.Arg(0))
	}
	s, err := a.open(ctx, openOpts{ping: true})
	if err != nil {
		return err
	}
	defer s.Close()
	tok, err := s.tok.Token(ctx)
	if err != nil {
		return err
	}
	if *header {
		_, err = fmt.Fprintf(a.env.Stdout, "Authorization: %s\n", tok.HeaderValue())
	} else {
		_, err = fmt.Fprintln(a.env.Stdout, tok.AccessToken)
	}
	return err
}
