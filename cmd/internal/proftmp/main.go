package main

import (
	"context"
	"os"
	"runtime/pprof"
	"time"

	"github.com/tokencache/tokencache/cmd/internal/cli"
)

func main() {
	if len(os.Args) > 1 {
		f, _ := os.Create("/tmp/prof-" + os.Args[1] + ".prof")
		_ = pprof.StartCPUProfile(f)
		go func() {
			time.Sleep(time.Duration(6) * time.Second)
			pprof.StopCPUProfile()
			f.Close()
		}()
	}
	_ = cli.Run(context.Background(), os.Args[1:], cli.Env{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv})
}
