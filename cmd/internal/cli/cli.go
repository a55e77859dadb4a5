// Package cli is the tokencache command: a set of small subcommands over
// the tokencache library, each in its own file with its own flag.FlagSet.
//
// The main package only wires signals and the process environment in:
//
//	err := cli.Run(ctx, os.Args[1:], cli.Env{Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv})
//	os.Exit(cli.ExitCode(err))
//
// Exit codes are decided in one place, ExitCode: 0 for success (and for
// -h), 2 for usage and configuration errors, 1 for every other failure.
// Error messages name their cause (the issuer's code and correlationId,
// the Redis address) and never a secret: Run scrubs every configured
// secret from the message it returns as a last line of defence.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strings"
	"time"
)

// Env is the process environment a command runs in. Tests fill it with
// buffers and a map; main fills it with the real thing.
type Env struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	// Getenv looks up an environment variable; nil means os.Getenv.
	Getenv func(string) string
	// Executable is the path of this program, used by the demo to start
	// replicas; empty means os.Executable().
	Executable string
	// Reload, if not nil, replaces SIGHUP for daemon, serve and proxy:
	// each receive makes them re-read their secret files at once. Tests
	// use it; nil means SIGHUP.
	Reload <-chan struct{}
}

func (e Env) getenv(k string) string {
	if e.Getenv == nil {
		return os.Getenv(k)
	}
	return e.Getenv(k)
}

func (e Env) executable() (string, error) {
	if e.Executable != "" {
		return e.Executable, nil
	}
	return os.Executable()
}

// command is one subcommand.
type command struct {
	name   string
	args   string // synopsis of its own flags
	short  string // one line for the usage text
	hidden bool
	run    func(ctx context.Context, a *app, args []string) error
}

func commands() []command {
	return []command{
		{name: "get", args: "[--header]", short: "print a valid token (or an Authorization header), fetching or waiting as needed", run: runGet},
		{name: "refresh", args: "[--min-ttl D] [--force]", short: "cron mode: refresh the shared token if less than D remains; one status line", run: runRefresh},
		{name: "daemon", args: "[--listen ADDR] [--interval D] [--reload-interval D]", short: "keep the token fresh ahead of expiry; serves /healthz, /readyz, /metrics", run: runDaemon},
		{name: "serve", args: "[--listen unix:PATH|ADDR]", short: "serve the token to local programs in any language: GET /v1/token, POST /v1/token/invalidate", run: runServe},
		{name: "proxy", args: "[--upstream URL] [--listen unix:PATH|ADDR]", short: "forward API requests to the upstream, adding the token; a 401 refreshes it once for the fleet", run: runProxy},
		{name: "inspect", args: "[--json]", short: "show the cached token's key, generation, expiry, TTL, writer, fingerprints (never the token)", run: runInspect},
		{name: "invalidate", args: "[--fingerprint FP] [--generation N]", short: "compare-and-delete the cached token and publish \"invalidated\"", run: runInvalidate},
		{name: "healthcheck", args: "[--url URL] [--timeout D]", short: "GET a URL, exit 0 on 2xx: a container health check for images without curl", run: runHealthcheck},
		{name: "demo", args: "[--replicas N] [--latency D]", short: "embedded Redis + fake issuer + N replica processes: one issuer call serves all", run: runDemo},
		{name: "version", short: "print the module version, VCS revision and time, and Go version (also --version)", run: runVersion},
		{name: "demo-replica", hidden: true, run: runDemoReplica},
	}
}

// Run runs the tokencache command line args (without the program name).
// Its error, if any, is meant to be printed as one line and turned into an
// exit status with ExitCode.
func Run(ctx context.Context, args []string, env Env) error {
	if env.Stdout == nil {
		env.Stdout = io.Discard
	}
	if env.Stderr == nil {
		env.Stderr = io.Discard
	}
	if env.Stdin == nil {
		env.Stdin = strings.NewReader("")
	}
	a := &app{env: env}
	err := a.run(ctx, args)
	var rp *reported
	if err == nil || errors.Is(err, flag.ErrHelp) || errors.As(err, &rp) {
		return err
	}
	return a.explain(err)
}

func (a *app) run(ctx context.Context, args []string) error {
	if err := refuseSecretFlags(args); err != nil {
		return err
	}
	if err := a.g.init(a.env.getenv); err != nil {
		return err
	}
	fs := a.newFlagSet("tokencache")
	version := fs.Bool("version", false, "print the version and exit (the version command)")
	fs.Usage = func() { a.usage(a.env.Stdout) }
	if err := a.parse(fs, args); err != nil {
		return err
	}
	if *version {
		return runVersion(ctx, a, fs.Args())
	}
	if fs.NArg() == 0 {
		return usagef("no command given (commands: %s; run \"tokencache -h\" for help)", strings.Join(visibleNames(), ", "))
	}
	name, rest := fs.Arg(0), fs.Args()[1:]
	if name == "help" {
		a.usage(a.env.Stdout)
		return nil
	}
	for _, c := range commands() {
		if c.name == name {
			return c.run(ctx, a, rest)
		}
	}
	return usagef("unknown command %q (commands: %s)", name, strings.Join(visibleNames(), ", "))
}

func visibleNames() []string {
	var names []string
	for _, c := range commands() {
		if !c.hidden {
			names = append(names, c.name)
		}
	}
	return names
}

// newFlagSet returns a FlagSet that reports errors to Run instead of
// printing them, with the global flags registered on it, so that they may
// be given before or after the command name.
func (a *app) newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	a.g.register(fs)
	return fs
}

// parse parses args into fs and turns flag errors into usage errors.
func (a *app) parse(fs *flag.FlagSet, args []string) error {
	// The flag package prints the usage on every parse error; a usage
	// error here is one line, and the usage is printed for -h only.
	usage := fs.Usage
	fs.Usage = func() {}
	err := fs.Parse(args)
	fs.Usage = usage
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			if usage != nil {
				usage()
			}
			return flag.ErrHelp
		}
		msg := flagError(fs, err)
		if fs.Name() == "tokencache" {
			return usagef("%s", msg)
		}
		return usagef("%s: %s", fs.Name(), msg)
	}
	fs.Visit(func(f *flag.Flag) { a.g.visited[f.Name] = true })
	return a.g.check()
}

// flagErrorRE matches the flag package's parse errors.
var (
	badValueRE  = regexp.MustCompile(`^invalid (?:boolean )?value "(.*)" for flag -([^:]+): `)
	undefinedRE = regexp.MustCompile(`^flag provided but not defined: -+(.+)$`)
	needsArgRE  = regexp.MustCompile(`^flag needs an argument: -+(.+)$`)
)

// flagError rewrites a flag parse error as people write flags: the flag
// named with --, and for a bad value, what it wants with an example
// ("--min-ttl \"45\": want a duration, such as --min-ttl 45m").
func flagError(fs *flag.FlagSet, err error) string {
	msg := err.Error()
	if m := undefinedRE.FindStringSubmatch(msg); m != nil {
		return fmt.Sprintf("unknown flag --%s (run \"tokencache %s -h\" for the flags)", m[1], strings.TrimPrefix(fs.Name(), "tokencache"))
	}
	name, value := "", ""
	if m := badValueRE.FindStringSubmatch(msg); m != nil {
		value, name = m[1], m[2]
	} else if m := needsArgRE.FindStringSubmatch(msg); m != nil {
		name = m[1]
	} else {
		return msg
	}
	f := fs.Lookup(name)
	if f == nil {
		return msg
	}
	want, example := "a value", f.DefValue
	if g, ok := f.Value.(flag.Getter); ok {
		switch g.Get().(type) {
		case time.Duration:
			// A failed Set has zeroed the value: the example is the default.
			want, example = "a duration", "30s"
			if d, err := time.ParseDuration(f.DefValue); err == nil && d > 0 {
				example = shortDur(d)
			}
		case int, int64, uint, uint64:
			want = "a whole number"
		case float64:
			want = "a number"
		case bool:
			want, example = "true or false", "true"
		}
	}
	if example == "" {
		example = "VALUE"
	}
	if value == "" && !strings.HasPrefix(msg, "invalid") {
		return fmt.Sprintf("--%s needs a value: %s, such as --%s %s", name, want, name, example)
	}
	return fmt.Sprintf("--%s %q: want %s, such as --%s %s", name, value, want, name, example)
}

// subUsage returns a Usage function printing one command's flags.
func (a *app) subUsage(fs *flag.FlagSet, synopsis, short string) func() {
	return func() {
		w := a.env.Stdout
		fmt.Fprintf(w, "usage: tokencache %s %s\n\n%s\n\nflags (global flags may also be given):\n", fs.Name(), synopsis, short)
		fs.VisitAll(func(f *flag.Flag) {
			if !globalFlag(f.Name) {
				printFlag(w, f)
			}
		})
	}
}

func (a *app) usage(w io.Writer) {
	fmt.Fprintf(w, "usage: tokencache [global flags] <command> [flags]\n\n")
	fmt.Fprintf(w, "tokencache shares one API access token among many replicas through Redis.\n\ncommands:\n")
	for _, c := range commands() {
		if !c.hidden {
			fmt.Fprintf(w, "  %-11s %s\n", c.name, c.short)
		}
	}
	fmt.Fprintf(w, "\nglobal flags:\n")
	fs := flag.NewFlagSet("tokencache", flag.ContinueOnError)
	var g globals
	_ = g.init(func(string) string { return "" })
	g.register(fs)
	fs.VisitAll(func(f *flag.Flag) { printFlag(w, f) })
	fmt.Fprintf(w, "\nsecrets come only from the environment or a --*-file flag:\n")
	keys := make([]string, 0, len(secretEnv))
	for k := range secretEnv {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(w, "  %-8s %s\n", k, secretEnv[k])
	}
	fmt.Fprintf(w, "\n--version prints the version (the version command).\n")
	fmt.Fprintf(w, "\nlogs: TOKENCACHE_LOG_LEVEL (debug|info|warn|error, default info), TOKENCACHE_LOG_FORMAT (text|json, default text)\n")
}

func printFlag(w io.Writer, f *flag.Flag) {
	def := ""
	if f.DefValue != "" && f.DefValue != "false" {
		def = fmt.Sprintf(" (default %s)", f.DefValue)
	}
	fmt.Fprintf(w, "  --%-18s %s%s\n", f.Name, f.Usage, def)
}

// UsageError is a mistake in the command line or the configuration. It
// exits with status 2.
type UsageError struct{ msg string }

func (e *UsageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &UsageError{msg: fmt.Sprintf(format, args...)}
}

// Exit statuses.
const (
	ExitOK      = 0
	ExitFailure = 1
	ExitUsage   = 2
	// ExitNothingDeleted is invalidate's status when it deleted nothing:
	// no token was cached, or the cached one was not the one named.
	ExitNothingDeleted = 3
)

// reported is an outcome the command has already printed: it carries only
// its exit status, and an empty message, which main does not print.
type reported struct{ code int }

func (*reported) Error() string { return "" }

// ExitCode maps an error returned by Run to the process exit status: nil
// and a request for help are 0, usage and configuration errors 2, an
// invalidate that deleted nothing 3, anything else 1. It is the only place
// exit statuses are decided.
func ExitCode(err error) int {
	var (
		ue *UsageError
		rp *reported
	)
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return ExitOK
	case errors.As(err, &rp):
		return rp.code
	case errors.As(err, &ue):
		return ExitUsage
	default:
		return ExitFailure
	}
}
