package tokencache

import (
	"bufio"
	"context"
	"io"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tokencache/tokencache/internal/redistest"
)

// On a 3-master Redis Cluster: separate OS processes stampede, one issuer
// call; events reach replicas whose subscriptions sit on any node.
func TestClusterMultiProcessStampede(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster and processes")
	}
	cl := redistest.StartCluster(t, 3)
	issuer := &slowIssuer{latency: 200 * time.Millisecond}
	hs := httptest.NewServer(issuer)
	defer hs.Close()
	const procs, goroutines = 10, 10
	var reps []*replicaProc
	for range procs {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), helperEnv+"=1", "TC_CLUSTER="+strings.Join(cl.Addrs(), ","),
			"TC_ISSUER="+hs.URL, "TC_GOROUTINES="+strconv.Itoa(goroutines))
		cmd.Stderr = os.Stderr
		stdin, _ := cmd.StdinPipe()
		stdout, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		reps = append(reps, &replicaProc{cmd: cmd, stdin: stdin, out: bufio.NewScanner(stdout)})
		t.Cleanup(func() { _ = stdin.Close(); _ = cmd.Process.Kill(); _, _ = cmd.Process.Wait() })
	}
	for _, p := range reps {
		p.expect(t, "ready")
	}
	for _, p := range reps {
		if _, err := io.WriteString(p.stdin, "go\n"); err != nil {
			t.Fatal(err)
		}
	}
	tokens := map[string]int{}
	for _, p := range reps {
		for p.out.Scan() && p.out.Text() != "done" {
			f := strings.Fields(p.out.Text())
			if len(f) != 3 || f[0] != "tok" {
				t.Fatalf("replica: %s", p.out.Text())
			}
			tokens[f[1]]++
		}
	}
	if n := issuer.calls.Load(); n != 1 {
		t.Errorf("issuer calls = %d on the cluster, want 1", n)
	}
	if len(tokens) != 1 {
		t.Errorf("%d distinct tokens, want 1", len(tokens))
	}
	total := 0
	for _, n := range tokens {
		total += n
	}
	if total != procs*goroutines {
		t.Errorf("%d callers served, want %d", total, procs*goroutines)
	}
}

// All keys of one token share a slot; users' tokens spread over every
// master; client tokens and invalidation work across nodes.
func TestClusterKeysAndUsers(t *testing.T) {
	cl := redistest.StartCluster(t, 3)
	cc := cl.Client(t)
	ctx := ctxT(t)
	uf := &userFetchers{}
	// 1,000 users is more than the default issuer budget allows in 5 minutes.
	a := newCache(t, cc, newFakeFetcher(time.Hour), fastOpts(WithClientTokens(uf.new, 2000), WithIssuerBudget(0, 0))...)
	b := newCache(t, cl.Client(t), newFakeFetcher(time.Hour), fastOpts(WithClientTokens(uf.new, 2000))...)

	tok, err := a.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	k := serverKeys(DefaultKeyPrefix, DefaultNamespace)
	slot := cc.ClusterKeySlot(ctx, k.token).Val()
	for _, key := range []string{k.lock, k.fence, k.failed, k.channel} {
		if s := cc.ClusterKeySlot(ctx, key).Val(); s != slot {
			t.Errorf("%s is in slot %d, the token in %d", key, s, slot)
		}
	}
	if got, err := b.Token(ctx); err != nil || got.AccessToken != tok.AccessToken {
		t.Fatalf("second replica: %v, %v", got, err)
	}

	const users = 1000
	for i := range users {
		if _, err := a.ClientToken(ctx, "user-"+strconv.Itoa(i)); err != nil {
			t.Fatalf("user %d: %v", i, err)
		}
	}
	for i, n := range cl.Nodes {
		c := n.Client(t)
		keys, err := c.DBSize(context.Background()).Result()
		if err != nil {
			t.Fatal(err)
		}
		if keys == 0 {
			t.Errorf("master %d holds no key: users do not spread over slots", i)
		}
		t.Logf("master %d holds %d keys", i, keys)
	}
	if got := uf.calls(); got != users {
		t.Errorf("issuer calls = %d, want %d", got, users)
	}
	// A user's token, shared and invalidated across nodes.
	u1, _ := b.User("user-7")
	first, err := u1.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := u1.Invalidate(ctx, first); err != nil || !ok {
		t.Fatalf("invalidate on the cluster: %v, %v", ok, err)
	}
	eventually(t, "replica a to drop user-7's token", func() bool {
		got, err := a.ClientToken(ctx, "user-7")
		return err == nil && got.AccessToken != first.AccessToken
	})
}
