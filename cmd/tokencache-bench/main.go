// Command tokencache-bench measures tokencache against the strategies
// people use today to share an API token among replicas (per-replica
// oauth2.ReuseTokenSource, go-redis/cache Once, a redsync lock with
// polling), side by side in one run against one redis-server and one fake
// issuer. docs/bench.md has the command, the results and how to read them.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/tokencache/tokencache/cmd/internal/bench"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := bench.ExitCode(run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
	stop()
	os.Exit(code)
}

// run runs the program and prints its error, if any, as one line.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	err := bench.Main(ctx, args, stdin, stdout, stderr)
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(stderr, "tokencache-bench:", err)
	}
	return err
}
