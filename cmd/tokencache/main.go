// Command tokencache shares one API access token among many replicas
// through Redis: a cron refresher, a daemon, ops inspection and a demo.
// Run "tokencache -h" for the commands; docs/cli.md has the details.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/tokencache/tokencache/cmd/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.ExitCode(run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
	stop()
	os.Exit(code)
}

// run runs the command and prints its error, if any, as one line (an
// outcome the command already printed has an empty message).
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	err := cli.Run(ctx, args, cli.Env{Stdin: stdin, Stdout: stdout, Stderr: stderr, Getenv: os.Getenv})
	if err != nil && cli.ExitCode(err) != cli.ExitOK && err.Error() != "" {
		fmt.Fprintln(stderr, "tokencache:", err)
	}
	return err
}
