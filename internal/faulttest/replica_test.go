package faulttest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/internal/testutil"
	"github.com/tokencache/tokencache/tokencache"
)

// replicaEnv, when set, makes TestMain run replicaMain instead of the
// tests: the test binary re-executed as one replica process. Its value is
// the replica's config as JSON.
const replicaEnv = "TOKENCACHE_FAULTTEST_REPLICA"

// config is one replica's setup, shared by child processes (as JSON) and
// by the in-process caches of the same test.
type config struct {
	Redis          string        // host:port
	Issuer         string        // the fake issuer's URL
	LockTTL        time.Duration // WithLockTTL
	WaitRecheck    time.Duration // WithWaitRecheck
	RefreshTimeout time.Duration // WithRefreshTimeout
	FetchTimeout   time.Duration // the issuer HTTP client's timeout
	NegativeTTL    time.Duration // WithNegativeTTL, if positive
	RefreshAhead   float64       // WithRefreshAhead, if positive
	Attempts       int           // WithRetry(Attempts, BackoffBase, BackoffMax), if positive
	BackoffBase    time.Duration
	BackoffMax     time.Duration
}

func (c config) options() []tokencache.Option {
	opts := []tokencache.Option{
		tokencache.WithTuning(tokencache.Tuning{LockTTL: c.LockTTL, WaitRecheck: c.WaitRecheck, RefreshTimeout: c.RefreshTimeout}),
	}
	if c.NegativeTTL > 0 {
		opts = append(opts, tokencache.WithTuning(tokencache.Tuning{NegativeTTL: c.NegativeTTL}))
	}
	if c.RefreshAhead > 0 {
		opts = append(opts, tokencache.WithRefreshAhead(c.RefreshAhead))
	}
	if c.Attempts > 0 {
		opts = append(opts, tokencache.WithTuning(tokencache.Tuning{RetryAttempts: c.Attempts, RetryBase: c.BackoffBase, RetryMax: c.BackoffMax}))
	}
	return opts
}

// baseConfig is a replica config with test-sized waits.
func baseConfig(redisAddr, issuerURL string) config {
	return config{
		Redis:          redisAddr,
		Issuer:         issuerURL,
		LockTTL:        2 * time.Second,
		WaitRecheck:    200 * time.Millisecond,
		RefreshTimeout: 20 * time.Second,
		FetchTimeout:   30 * time.Second,
	}
}

// classify names the kind of a Token error, for the reports replicas send
// and for the checks that only typed errors reach callers.
func classify(err error) string {
	var fe *tokencache.FetchError
	var re *tokencache.RedisError
	switch {
	case errors.As(err, &fe):
		return "fetch"
	case errors.Is(err, tokencache.ErrUnavailable):
		return "unavailable"
	case errors.Is(err, tokencache.ErrRedisUnavailable):
		return "redis-unavailable"
	case errors.As(err, &re):
		return "redis"
	case errors.Is(err, tokencache.ErrBudgetExhausted):
		return "budget"
	case errors.Is(err, tokencache.ErrClosed):
		return "closed"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return "ctx"
	}
	return "other"
}

// ---- the child side ----

// replicaMain runs one replica process. Protocol, one line each way, every
// reply starting with the request's id:
//
//	<id> get <timeout>        -> <id> tok <token> <expiry-ns> <returned-ns>
//	                             <id> err <class> <code> <remote> <returned-ns> <message>
//	<id> stats                -> <id> stats <Stats as JSON>
//	<id> soak <for> <every>   -> <id> soak <soakReport as JSON>
//
// Requests run concurrently. It prints "ready" once the cache exists and
// exits when stdin closes.
func replicaMain() int {
	var cfg config
	if err := json.Unmarshal([]byte(os.Getenv(replicaEnv)), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, "replica: bad config:", err)
		return 2
	}
	rdb := redis.NewClient(&redis.Options{Addr: cfg.Redis})
	defer rdb.Close()
	f := newHTTPFetcher(cfg.Issuer, cfg.FetchTimeout)
	defer f.close()
	c, err := tokencache.New(rdb, f, cfg.options()...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "replica: New:", err)
		return 2
	}
	defer c.Close()

	var outMu sync.Mutex // guards stdout
	say := func(format string, a ...any) {
		outMu.Lock()
		fmt.Fprintf(os.Stdout, format+"\n", a...)
		outMu.Unlock()
	}
	say("ready")
	var wg sync.WaitGroup
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		f := strings.Fields(in.Text())
		if len(f) < 2 {
			continue
		}
		id, args := f[0], f[1:]
		wg.Add(1)
		go func() {
			defer wg.Done()
			switch args[0] {
			case "get":
				d, _ := time.ParseDuration(args[1])
				say("%s %s", id, getLine(c, d))
			case "stats":
				b, _ := json.Marshal(c.Stats())
				say("%s stats %s", id, b)
			case "soak":
				d, _ := time.ParseDuration(args[1])
				every, _ := time.ParseDuration(args[2])
				b, _ := json.Marshal(soakLoop(c, d, every))
				say("%s soak %s", id, b)
			}
		}()
	}
	wg.Wait()
	return 0
}

func getLine(c *tokencache.Cache, timeout time.Duration) string {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	tok, err := c.Token(ctx)
	now := time.Now().UnixNano()
	if err != nil {
		code, remote := "-", false
		var fe *tokencache.FetchError
		if errors.As(err, &fe) {
			code, remote = fe.Code, fe.Remote
			if code == "" {
				code = "-"
			}
		}
		return fmt.Sprintf("err %s %s %t %d %s", classify(err), code, remote, now, strings.ReplaceAll(err.Error(), "\n", " "))
	}
	return fmt.Sprintf("tok %s %d %d", tok.AccessToken, tok.Expiry.UnixNano(), now)
}

// soakReport is what one soak loop saw.
type soakReport struct {
	Calls   int
	Expired []string   // tokens returned at or after their expiry
	Errors  []callSpan // failed calls (the first maxSoakErrors)
	Other   []string   // messages of untyped errors
	Stats   tokencache.Stats
}

// callSpan is one failed call: when it started and returned, and why.
type callSpan struct {
	Start, End time.Time
	Class      string
}

const maxSoakErrors = 500

// soakLoop calls Token every ~every for d and checks each answer.
func soakLoop(c *tokencache.Cache, d, every time.Duration) soakReport {
	var r soakReport
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), soakCallTimeout)
		tok, err := c.Token(ctx)
		cancel()
		now := time.Now()
		r.Calls++
		switch {
		case err != nil:
			if len(r.Errors) < maxSoakErrors {
				r.Errors = append(r.Errors, callSpan{Start: start, End: now, Class: classify(err)})
			}
			if classify(err) == "other" && len(r.Other) < 20 {
				r.Other = append(r.Other, err.Error())
			}
		case !now.Before(tok.Expiry):
			r.Expired = append(r.Expired, fmt.Sprintf("%s expired %v before it was returned", tok.Fingerprint(), now.Sub(tok.Expiry)))
		}
		time.Sleep(every/2 + rand.N(every)) // the caller's pace, jittered
	}
	r.Stats = c.Stats()
	return r
}

// soakCallTimeout bounds each Token call of a soak loop.
const soakCallTimeout = 5 * time.Second

// ---- the parent side ----

// replica is a replica process owned by a test.
type replica struct {
	t    testing.TB
	name string
	cmd  *exec.Cmd

	inMu  sync.Mutex // guards stdin, next
	stdin io.WriteCloser
	next  int

	mu      sync.Mutex // guards replies
	replies map[string]chan string
	exited  chan struct{} // closed when its stdout ends
	stderr  *testutil.Buffer
}

// startReplica starts a replica process with cfg and waits for its
// "ready". The process is stopped (SIGCONT, stdin closed, then SIGKILL if
// it lingers) when the test ends.
func startReplica(t testing.TB, name string, cfg config) *replica {
	t.Helper()
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), replicaEnv+"="+string(b))
	r := &replica{t: t, name: name, cmd: cmd, replies: map[string]chan string{}, exited: make(chan struct{}), stderr: &testutil.Buffer{}}
	cmd.Stderr = r.stderr
	if r.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.stop)
	ready := make(chan struct{})
	go r.read(stdout, ready)
	select {
	case <-ready:
	case <-r.exited:
		t.Fatalf("replica %s exited before it was ready; stderr:\n%s", name, r.stderr)
	case <-time.After(30 * time.Second):
		t.Fatalf("replica %s not ready after 30s", name)
	}
	return r
}

func (r *replica) read(stdout io.Reader, ready chan struct{}) {
	defer close(r.exited)
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "ready" {
			close(ready)
			continue
		}
		id, rest, _ := strings.Cut(line, " ")
		r.reply(id) <- rest
	}
}

func (r *replica) reply(id string) chan string {
	r.mu.Lock()
	defer r.mu.Unlock()
	ch, ok := r.replies[id]
	if !ok {
		ch = make(chan string, 1)
		r.replies[id] = ch
	}
	return ch
}

// stop ends the process: a stopped one is continued first, so that it can
// see its stdin close; one that lingers is killed.
func (r *replica) stop() {
	_ = r.cmd.Process.Signal(syscall.SIGCONT)
	_ = r.stdin.Close()
	done := make(chan struct{})
	go func() { _ = r.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = r.cmd.Process.Kill()
		<-done
	}
	if r.t.Failed() && r.stderr.Len() > 0 {
		r.t.Logf("replica %s stderr:\n%s", r.name, r.stderr)
	}
}

// signal sends sig to the process.
func (r *replica) signal(sig syscall.Signal) {
	r.t.Helper()
	if err := r.cmd.Process.Signal(sig); err != nil {
		r.t.Fatalf("signal %v to replica %s: %v", sig, r.name, err)
	}
}

// send writes one request and returns its id.
func (r *replica) send(args ...string) string {
	r.t.Helper()
	r.inMu.Lock()
	defer r.inMu.Unlock()
	r.next++
	id := strconv.Itoa(r.next)
	if _, err := io.WriteString(r.stdin, id+" "+strings.Join(args, " ")+"\n"); err != nil {
		r.t.Fatalf("replica %s: %v", r.name, err)
	}
	return id
}

// await returns the reply to id, waiting at most within.
func (r *replica) await(id string, within time.Duration) (string, bool) {
	select {
	case s := <-r.reply(id):
		return s, true
	case <-r.exited:
		select {
		case s := <-r.reply(id):
			return s, true
		default:
			return "", false
		}
	case <-time.After(within):
		return "", false
	}
}

// result is a replica's answer to get.
type result struct {
	Token    string
	Expiry   time.Time
	At       time.Time // when Token returned
	Class    string    // error class (see classify), "" on success
	Code     string    // FetchError code
	Remote   bool      // FetchError.Remote
	Message  string
	Received bool // false: no answer (the process died, or the bound passed)
}

func (res result) String() string {
	switch {
	case !res.Received:
		return "no answer"
	case res.Class == "":
		return "token " + res.Token
	}
	return fmt.Sprintf("error %s [%s] remote=%t: %s", res.Class, res.Code, res.Remote, res.Message)
}

// pending is a get in flight.
type pending struct {
	r  *replica
	id string
}

// get asks for a token with a caller timeout; collect the answer with wait.
func (r *replica) get(timeout time.Duration) pending {
	r.t.Helper()
	return pending{r: r, id: r.send("get", timeout.String())}
}

// wait returns the get's answer, waiting at most within (a generous bound:
// the call itself is bounded by its timeout).
func (p pending) wait(within time.Duration) result {
	line, ok := p.r.await(p.id, within)
	if !ok {
		return result{}
	}
	return parseResult(line)
}

func parseResult(line string) result {
	f := strings.SplitN(line, " ", 6)
	res := result{Received: true}
	switch {
	case len(f) == 4 && f[0] == "tok":
		exp, _ := strconv.ParseInt(f[2], 10, 64)
		at, _ := strconv.ParseInt(f[3], 10, 64)
		res.Token, res.Expiry, res.At = f[1], time.Unix(0, exp), time.Unix(0, at)
	case len(f) == 6 && f[0] == "err":
		at, _ := strconv.ParseInt(f[4], 10, 64)
		res.Class, res.Code, res.Remote, res.At, res.Message = f[1], f[2], f[3] == "true", time.Unix(0, at), f[5]
	default:
		res.Class, res.Message = "protocol", line
	}
	return res
}

// stats returns the replica's Cache.Stats.
func (r *replica) stats() tokencache.Stats {
	r.t.Helper()
	line, ok := r.await(r.send("stats"), 10*time.Second)
	var s tokencache.Stats
	body, found := strings.CutPrefix(line, "stats ")
	if !ok || !found {
		r.t.Fatalf("replica %s: no stats (got %q)", r.name, line)
	}
	if err := json.Unmarshal([]byte(body), &s); err != nil {
		r.t.Fatalf("replica %s: stats: %v", r.name, err)
	}
	return s
}
