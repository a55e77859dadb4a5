package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/tokencache/tokencache/tokencache/issuertest"
)

// Demo defaults.
const (
	DefaultDemoReplicas = 20
	DefaultDemoLatency  = 200 * time.Millisecond
	demoNamespace       = "demo"
	demoAPIKey          = "demo-api-key-not-a-secret"
	demoStartTimeout    = 30 * time.Second
)

// replicaReport is what a demo replica prints when it has its token.
type replicaReport struct {
	PID         int     `json:"pid"`
	WaitMS      float64 `json:"wait_ms"`
	Fingerprint string  `json:"fingerprint,omitempty"`
	IssuerCalls uint64  `json:"issuer_calls"`
	Waited      bool    `json:"waited"`
	Err         string  `json:"err,omitempty"`
}

// runDemo shows the point of the library on one machine: an embedded
// Redis (or --redis), a fake issuer with real latency, and N replica
// processes of this binary that all ask for the token at the same moment.
func runDemo(ctx context.Context, a *app, args []string) error {
	fs := a.newFlagSet("demo")
	n := fs.Int("replicas", DefaultDemoReplicas, "number of replica processes")
	latency := fs.Duration("latency", DefaultDemoLatency, "the fake issuer's latency")
	hold := fs.Bool("hold", false, "keep Redis and the fake issuer running after the summary, until Ctrl-C, to look around with redis-cli")
	fs.Usage = a.subUsage(fs, "[--replicas N] [--latency D] [--hold]", "Embedded Redis + fake issuer + N replica processes: one issuer call serves them all.")
	if err := a.parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("demo: unexpected argument %q", fs.Arg(0))
	}
	if *n < 1 || *n > 500 {
		return usagef("demo: --replicas %d: want 1 to 500", *n)
	}
	if *latency < 0 || *latency > 10*time.Second {
		return usagef("demo: --latency %v: want 0 to 10s", *latency)
	}
	exe, err := a.env.executable()
	if err != nil {
		return fmt.Errorf("demo: cannot find this program to start replicas: %w", err)
	}
	w := a.env.Stdout

	// The demo's own settings: a fake issuer and, unless --redis or
	// TOKENCACHE_REDIS_URL says otherwise, an embedded Redis.
	issuer := issuertest.New(issuertest.WithAPIKey(demoAPIKey), issuertest.WithLatency(*latency))
	if err := issuer.Start(); err != nil {
		return fmt.Errorf("demo: start the fake issuer: %w", err)
	}
	defer issuer.Close()
	if !a.g.explicitRedis() {
		a.g.redisURL = "embedded"
	}
	if !a.g.visited["namespace"] && !a.g.fromEnv["namespace"] {
		a.g.namespace = demoNamespace
	}
	a.g.provider, a.g.issuerURL, a.g.scope, a.g.userID = "basiq", issuer.URL(), "SERVER_ACCESS", ""
	a.g.apiKeyFile = ""
	getenv := a.g.getenv
	a.g.getenv = func(k string) string {
		if k == EnvBasiqAPIKey {
			return demoAPIKey
		}
		return getenv(k)
	}
	if a.env.getenv(EnvLogLevel) == "" {
		// Keep the demo's screen for the demo: library logs only on warnings.
		a.g.logLevel = slog.LevelWarn
	}
	s, err := a.open(ctx, openOpts{ping: true})
	if err != nil {
		return err
	}
	defer s.Close()
	replicaURL := a.g.redisURL
	if s.redis.mini != nil {
		replicaURL = "redis://" + s.redis.mini.Addr() + "/0"
	}
	key, _, _, channel := s.cache.Keys()
	// Start from nothing, so that the demo shows a cold start.
	if _, err := s.tok.InvalidateFingerprint(ctx, "", 0); err != nil {
		return err
	}

	fmt.Fprintf(w, "tokencache demo: %d replica processes, one Redis (%s), a fake issuer (%s, %v latency)\n",
		*n, s.redis.addr, issuer.URL(), *latency)
	fmt.Fprintf(w, "starting replicas...")

	env := append(os.Environ(),
		EnvRedisURL+"="+replicaURL,
		EnvNamespace+"="+a.g.namespace,
		EnvIssuerURL+"="+issuer.URL(),
		EnvProvider+"=basiq",
		EnvBasiqAPIKey+"="+demoAPIKey,
		EnvLogLevel+"=warn",
	)
	reps, err := startReplicas(ctx, exe, env, *n)
	defer func() {
		for _, r := range reps {
			r.stop()
		}
	}()
	if err != nil {
		return err
	}
	fmt.Fprintf(w, " %d ready, subscribed and waiting.\n", len(reps))
	fmt.Fprintf(w, "all %d ask for the token at once:\n", len(reps))

	start := time.Now()
	for _, r := range reps {
		r.release()
	}
	results := make(chan replicaResult, len(reps))
	for i, r := range reps {
		go func() { results <- r.result(i) }()
	}
	var waits []time.Duration
	fps := map[string]int{}
	var failed []string
	for range reps {
		res := <-results
		if res.err != nil {
			failed = append(failed, fmt.Sprintf("replica %d: %v", res.i+1, res.err))
			fmt.Fprintf(w, "  replica %2d  FAILED: %v\n", res.i+1, res.err)
			continue
		}
		d := time.Duration(res.rep.WaitMS * float64(time.Millisecond))
		waits = append(waits, d)
		fps[res.rep.Fingerprint]++
		how := "read it from Redis"
		switch {
		case res.rep.IssuerCalls > 0:
			how = fmt.Sprintf("took the lock and called the issuer (%d call)", res.rep.IssuerCalls)
		case res.rep.Waited:
			how = "waited for the lock holder's event"
		}
		fmt.Fprintf(w, "  replica %2d  pid %-7d token %s after %7s  %s\n", res.i+1, res.rep.PID, res.rep.Fingerprint, roundDur(d), how)
	}
	elapsed := time.Since(start)

	fmt.Fprintf(w, "\nsummary\n")
	fmt.Fprintf(w, "  replicas served   %d of %d\n", len(waits), len(reps))
	fmt.Fprintf(w, "  distinct tokens   %d\n", len(fps))
	fmt.Fprintf(w, "  issuer calls      %d\n", issuer.Stats().TokenCalls)
	if len(waits) > 0 {
		fmt.Fprintf(w, "  wait p50 / p99    %s / %s (the issuer alone takes %v)\n", roundDur(percentile(waits, 50)), roundDur(percentile(waits, 99)), *latency)
	}
	fmt.Fprintf(w, "  wall time         %s\n", roundDur(elapsed))
	if st, err := s.tok.Inspect(ctx); err == nil && st.Found {
		fmt.Fprintf(w, "  cached            %s generation %d, TTL %s, refreshed by %s\n", st.Key, st.Generation, roundDur(st.TTL), st.RefreshedBy)
	}

	cli := "redis-cli -u " + redactURL(replicaURL)
	if strings.Contains(replicaURL, ",") || strings.Contains(replicaURL, "+sentinel://") {
		cli = "redis-cli -c -h <node> -p <port>"
	}
	fmt.Fprintf(w, "\nlook at it with redis-cli")
	if s.redis.mini != nil && !*hold {
		fmt.Fprintf(w, " (the embedded Redis stops with the demo: rerun with --hold, or with --redis redis://127.0.0.1:6379/0)")
	}
	fmt.Fprintf(w, ":\n")
	fmt.Fprintf(w, "  %s --scan --pattern 'tokencache:*'\n", cli)
	fmt.Fprintf(w, "  %s GET '%s'\n", cli, key)
	fmt.Fprintf(w, "  %s PTTL '%s'\n", cli, key)
	fmt.Fprintf(w, "  %s SUBSCRIBE '%s'\n", cli, channel)
	fmt.Fprintf(w, "  tokencache inspect --redis %s --namespace %s\n", redactURL(replicaURL), a.g.namespace)
	fmt.Fprintf(w, "  tokencache invalidate --redis %s --namespace %s   # compare-and-delete, publishes \"invalidated\"\n", redactURL(replicaURL), a.g.namespace)

	if len(failed) > 0 {
		return fmt.Errorf("demo: %d of %d replicas failed; first: %s", len(failed), len(reps), failed[0])
	}
	if *hold {
		fmt.Fprintf(w, "\nholding Redis and the fake issuer until Ctrl-C...\n")
		<-ctx.Done()
	}
	return nil
}

func percentile(ds []time.Duration, p int) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := (len(s)*p + 99) / 100
	if i < 1 {
		i = 1
	}
	return s[i-1]
}

// replica is one demo-replica process.
type replica struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string // its stdout, line by line; closed at EOF
	errb  *lockedBuffer
	once  sync.Once
}

type replicaResult struct {
	i   int
	rep replicaReport
	err error
}

// startReplicas starts n replicas and waits until each says it is ready.
func startReplicas(ctx context.Context, exe string, env []string, n int) ([]*replica, error) {
	reps := make([]*replica, 0, n)
	for i := 0; i < n; i++ {
		cmd := exec.CommandContext(ctx, exe, "demo-replica")
		cmd.Env = env
		r := &replica{cmd: cmd, lines: make(chan string, 4), errb: &lockedBuffer{}}
		cmd.Stderr = r.errb
		stdin, err := cmd.StdinPipe()
		if err != nil {
			return reps, err
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			return reps, err
		}
		r.stdin = stdin
		if err := cmd.Start(); err != nil {
			return reps, fmt.Errorf("demo: start replica: %w", err)
		}
		go func() {
			defer close(r.lines)
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				r.lines <- sc.Text()
			}
		}()
		reps = append(reps, r)
	}
	deadline := time.NewTimer(demoStartTimeout)
	defer deadline.Stop()
	for i, r := range reps {
		select {
		case line, ok := <-r.lines:
			if !ok || line != "ready" {
				return reps, fmt.Errorf("demo: replica %d did not start: %s", i+1, r.stderrLine())
			}
		case <-deadline.C:
			return reps, fmt.Errorf("demo: replicas not ready after %v", demoStartTimeout)
		case <-ctx.Done():
			return reps, ctx.Err()
		}
	}
	return reps, nil
}

// release tells the replica to ask for its token.
func (r *replica) release() { _, _ = io.WriteString(r.stdin, "go\n") }

func (r *replica) result(i int) replicaResult {
	line, ok := <-r.lines
	if !ok {
		_ = r.cmd.Wait()
		return replicaResult{i: i, err: errors.New(r.stderrLine())}
	}
	var rep replicaReport
	if err := json.Unmarshal([]byte(line), &rep); err != nil {
		return replicaResult{i: i, err: fmt.Errorf("unreadable report %q", line)}
	}
	if rep.Err != "" {
		return replicaResult{i: i, err: errors.New(rep.Err)}
	}
	return replicaResult{i: i, rep: rep}
}

func (r *replica) stderrLine() string {
	s := strings.TrimSpace(r.errb.String())
	if s == "" {
		return "exited without a word"
	}
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return s
}

func (r *replica) stop() {
	r.once.Do(func() {
		_ = r.stdin.Close()
		done := make(chan struct{})
		go func() { _ = r.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = r.cmd.Process.Kill()
			<-done
		}
	})
}

type lockedBuffer struct {
	mu sync.Mutex // guards b
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.b.Len() > 64<<10 {
		return len(p), nil
	}
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// runDemoReplica is one replica of the demo (hidden): it opens the cache,
// says "ready", waits for "go" on stdin, asks for the token and prints a
// JSON report on stdout.
func runDemoReplica(ctx context.Context, a *app, args []string) error {
	fs := a.newFlagSet("demo-replica")
	if err := a.parse(fs, args); err != nil {
		return err
	}
	s, err := a.open(ctx, openOpts{ping: true})
	if err != nil {
		return err
	}
	defer s.Close()
	out := json.NewEncoder(a.env.Stdout)
	fmt.Fprintln(a.env.Stdout, "ready")
	if _, err := bufio.NewReader(a.env.Stdin).ReadString('\n'); err != nil {
		return fmt.Errorf("demo-replica: no go signal: %w", err)
	}
	start := time.Now()
	tok, err := s.tok.Token(ctx)
	rep := replicaReport{PID: os.Getpid(), WaitMS: float64(time.Since(start)) / float64(time.Millisecond)}
	st := s.cache.Stats()
	rep.IssuerCalls, rep.Waited = st.IssuerCalls, st.Waits > 0
	if err != nil {
		rep.Err = a.explain(err).Error()
	} else {
		rep.Fingerprint = tok.Fingerprint()
	}
	return out.Encode(rep)
}
