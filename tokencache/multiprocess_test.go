package tokencache

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/internal/redistest"
)

// The multi-process test re-executes this test binary as replicas: with
// helperEnv set, TestMain runs replicaMain instead of the tests.
const helperEnv = "TOKENCACHE_TEST_REPLICA"

func sprintf(format string, a ...any) string { return fmt.Sprintf(format, a...) }

// slowIssuer is an HTTP token endpoint with a fixed latency that counts
// its calls and records when it answered.
type slowIssuer struct {
	calls    atomic.Int64
	latency  time.Duration
	mu       sync.Mutex // guards answered
	answered []time.Time
}

func (s *slowIssuer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := s.calls.Add(1)
	time.Sleep(s.latency) // the issuer's latency is the fixture, not a wait
	s.mu.Lock()
	s.answered = append(s.answered, time.Now())
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"access_token":"tok-%d-%d","token_type":"Bearer","expires_in":3600}`, n, time.Now().UnixNano())
}

func (s *slowIssuer) lastAnswer() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.answered[len(s.answered)-1]
}

// httpFetcher is the replicas' Fetcher: a plain POST to the test issuer.
func httpFetcher(url string) FetcherFunc {
	return func(ctx context.Context) (Token, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, nil)
		if err != nil {
			return Token{}, err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return Token{}, err
		}
		defer resp.Body.Close()
		var body struct {
			AccessToken string `json:"access_token"`
			TokenType   string `json:"token_type"`
			ExpiresIn   int64  `json:"expires_in"`
		}
		if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&body); err != nil {
			return Token{}, err
		}
		return Token{AccessToken: body.AccessToken, TokenType: body.TokenType, Expiry: time.Now().Add(time.Duration(body.ExpiresIn) * time.Second)}, nil
	}
}

// replicaMain is one replica process. Protocol on stdin/stdout: it prints
// "ready" once subscribed; on each "go" line its goroutines all call Token
// at once and it prints one "tok <token> <unix-nanos>" or "err <msg>" line
// each, then "done"; before answering the next "go" it waits until the
// invalidation of the previous token has reached it.
func replicaMain() int {
	var rdb redis.UniversalClient = redis.NewClient(&redis.Options{Addr: os.Getenv("TC_REDIS"), PoolSize: 20})
	if seeds := os.Getenv("TC_CLUSTER"); seeds != "" {
		rdb = redis.NewClusterClient(&redis.ClusterOptions{Addrs: strings.Split(seeds, ","), PoolSize: 20})
	}
	defer rdb.Close()
	c, err := New(rdb, httpFetcher(os.Getenv("TC_ISSUER")), WithTuning(Tuning{LockTTL: 5 * time.Second, L1MaxAge: 200 * time.Millisecond}))
	if err != nil {
		fmt.Println("err", err)
		return 1
	}
	defer c.Close()
	n, _ := strconv.Atoi(os.Getenv("TC_GOROUTINES"))
	if !c.sub.waitSubscribed(context.Background(), 10*time.Second) {
		fmt.Println("err not subscribed")
		return 1
	}
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	out := bufio.NewWriter(os.Stdout)
	for in.Scan() {
		switch in.Text() {
		case "wait-invalidated":
			// An invalidation event drops the copy at once; a raw DEL is
			// seen by the background re-check that the first call after
			// the copy's max age starts.
			deadline := time.Now().Add(10 * time.Second)
			for c.server.mem.l1.Load() != nil && time.Now().Before(deadline) {
				if s := c.server.mem.l1.Load(); s != nil && c.monoNow() >= s.next {
					_, _ = c.Token(context.Background())
				}
				time.Sleep(time.Millisecond) // the poll of a wait on a condition: a replica process has no testing.T
			}
			fmt.Fprintln(out, "ready")
			out.Flush()
		case "go":
			lines := make([]string, n)
			var wg sync.WaitGroup
			for i := range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
					defer cancel()
					tok, err := c.Token(ctx)
					at := time.Now().UnixNano()
					if err != nil {
						lines[i] = "err " + strings.ReplaceAll(err.Error(), "\n", " ")
						return
					}
					lines[i] = fmt.Sprintf("tok %s %d", tok.AccessToken, at)
				}()
			}
			wg.Wait()
			for _, l := range lines {
				fmt.Fprintln(out, l)
			}
			fmt.Fprintln(out, "done")
			out.Flush()
		}
	}
	return 0
}

type replicaProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Scanner
}

func (p *replicaProc) expect(t *testing.T, want string) {
	t.Helper()
	if !p.out.Scan() {
		t.Fatalf("replica exited early, waiting for %q", want)
	}
	if got := p.out.Text(); got != want {
		t.Fatalf("replica said %q, want %q", got, want)
	}
}

func TestMultiProcessStampede(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test skipped in -short mode")
	}
	const procs, goroutines = 20, 10
	srv := redistest.Start(t)
	issuer := &slowIssuer{latency: 200 * time.Millisecond}
	hs := httptest.NewServer(issuer)
	defer hs.Close()

	reps := make([]*replicaProc, procs)
	for i := range reps {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), helperEnv+"=1", "TC_REDIS="+srv.Addr, "TC_ISSUER="+hs.URL,
			"TC_GOROUTINES="+strconv.Itoa(goroutines))
		cmd.Stderr = os.Stderr
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		p := &replicaProc{cmd: cmd, stdin: stdin, out: bufio.NewScanner(stdout)}
		reps[i] = p
		t.Cleanup(func() {
			_ = stdin.Close()
			done := make(chan struct{})
			go func() { _ = cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				_ = cmd.Process.Kill()
			}
		})
	}
	for _, p := range reps {
		p.expect(t, "ready")
	}

	round := func(name string, wantCalls int64) {
		for _, p := range reps {
			if _, err := io.WriteString(p.stdin, "go\n"); err != nil {
				t.Fatal(err)
			}
		}
		tokens := map[string]int{}
		var got []time.Time
		for _, p := range reps {
			for p.out.Scan() && p.out.Text() != "done" {
				f := strings.Fields(p.out.Text())
				if len(f) != 3 || f[0] != "tok" {
					t.Errorf("%s: replica: %s", name, p.out.Text())
					continue
				}
				tokens[f[1]]++
				ns, _ := strconv.ParseInt(f[2], 10, 64)
				got = append(got, time.Unix(0, ns))
			}
		}
		if calls := issuer.calls.Load(); calls != wantCalls {
			t.Errorf("%s: issuer calls = %d, want %d", name, calls, wantCalls)
		}
		if len(tokens) != 1 {
			t.Errorf("%s: %d distinct tokens among %d callers, want 1", name, len(tokens), len(got))
		}
		if len(got) != procs*goroutines {
			t.Errorf("%s: %d callers got a token, want %d", name, len(got), procs*goroutines)
			return
		}
		sort.Slice(got, func(i, j int) bool { return got[i].Before(got[j]) })
		answered := issuer.lastAnswer()
		t.Logf("%s: %d callers in %d processes, %d issuer calls in all; after the issuer's answer the median caller had the token in %v, the last in %v (goal: under 5ms)",
			name, len(got), procs, issuer.calls.Load(), got[len(got)/2].Sub(answered), got[len(got)-1].Sub(answered))
	}
	round("cold start", 1)

	// Delete the key the way an operator does (compare-and-delete with
	// an "invalidated" event), then the whole fleet asks again.
	ops := newCache(t, srv.Client(t), FetcherFunc(func(context.Context) (Token, error) {
		return Token{}, fmt.Errorf("the operator's cache must not fetch")
	}))
	if ok, err := ops.InvalidateFingerprint(context.Background(), "", 0); err != nil || !ok {
		t.Fatalf("invalidate: %v, %v", ok, err)
	}
	for _, p := range reps {
		if _, err := io.WriteString(p.stdin, "wait-invalidated\n"); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range reps {
		p.expect(t, "ready")
	}
	round("after invalidation", 2)

	// And the raw way: redis-cli DEL, no event.
	if err := srv.Client(t).Del(context.Background(), "tokencache:{default}:server").Err(); err != nil {
		t.Fatal(err)
	}
	for _, p := range reps {
		if _, err := io.WriteString(p.stdin, "wait-invalidated\n"); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range reps {
		p.expect(t, "ready")
	}
	round("after a raw DEL", 3)
}
