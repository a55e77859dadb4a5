// Package redistest starts real redis-server processes for tests, each on
// a free loopback port (never 6379), and stops them when the test ends.
//
// Without redis-server on PATH the calling test is skipped with a message
// saying how to install it, unless TOKENCACHE_REQUIRE_REDIS=1 is set, in
// which case it fails: CI must not pass by skipping.
package redistest

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// RequireEnv is the environment variable that turns a missing redis-server
// from a skip into a failure.
const RequireEnv = "TOKENCACHE_REQUIRE_REDIS"

// Server is a running redis-server owned by one test.
type Server struct {
	Addr string // host:port
	Port int
	Dir  string // its working directory (logs, certificates)
	// TLS is the server's PKI when it was started by StartTLS: it then
	// listens for TLS only, on Addr and Port.
	TLS *TLSFiles

	tb   testing.TB
	args []string
	cmd  *exec.Cmd
}

// Binary returns the path of redis-server, or skips (or fails, under
// TOKENCACHE_REQUIRE_REDIS=1) the test when there is none.
func Binary(tb testing.TB) string {
	tb.Helper()
	path, err := exec.LookPath("redis-server")
	if err == nil {
		return path
	}
	msg := "redis-server not found on PATH; install it (Debian/Ubuntu: apt-get install redis-server, macOS: brew install redis) to run the integration tests"
	if os.Getenv(RequireEnv) == "1" {
		tb.Fatalf("%s (%s=1 forbids skipping)", msg, RequireEnv)
	}
	tb.Skip(msg)
	return ""
}

// Start launches redis-server on a free port with persistence off and the
// given extra arguments (e.g. "--maxmemory", "1mb"), waits until it answers
// PING, and registers its shutdown with tb.Cleanup.
func Start(tb testing.TB, extra ...string) *Server {
	tb.Helper()
	return start(tb, nil, extra)
}

// start starts a plain-text server or, with files, a TLS-only one.
func start(tb testing.TB, files *TLSFiles, extra []string) *Server {
	tb.Helper()
	bin := Binary(tb)
	s := &Server{tb: tb, TLS: files}
	if files != nil {
		s.Dir = files.Dir
	} else {
		s.Dir = tb.TempDir()
	}
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port, err := FreePort()
		if err != nil {
			tb.Fatalf("redistest: free port: %v", err)
		}
		s.Port = port
		s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		ports := []string{"--port", strconv.Itoa(port)}
		if files != nil {
			ports = append([]string{"--port", "0", "--tls-port", strconv.Itoa(port)}, files.serverArgs()...)
		}
		s.args = append(append(ports,
			"--bind", "127.0.0.1",
			"--save", "",
			"--appendonly", "no",
			"--dir", s.Dir,
			"--logfile", filepath.Join(s.Dir, "redis.log"),
		), extra...)
		if lastErr = s.start(bin); lastErr == nil {
			tb.Cleanup(s.Stop)
			return s
		}
	}
	tb.Fatalf("redistest: could not start redis-server: %v", lastErr)
	return nil
}

func (s *Server) start(bin string) error {
	cmd := exec.Command(bin, s.args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	s.cmd = cmd
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		c := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1, DialTimeout: 200 * time.Millisecond, TLSConfig: s.clientTLS()})
		err := c.Ping(context.Background()).Err()
		_ = c.Close()
		if err == nil {
			return nil
		}
		if cmd.ProcessState != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = cmd.Process.Kill()
	_, _ = cmd.Process.Wait()
	return fmt.Errorf("redis-server on %s did not answer PING; log:\n%s", s.Addr, s.Log())
}

// Log returns the server's log file.
func (s *Server) Log() string {
	b, _ := os.ReadFile(filepath.Join(s.Dir, "redis.log"))
	return string(b)
}

// URL returns a redis:// URL for the server (rediss:// for a TLS server).
func (s *Server) URL() string {
	if s.TLS != nil {
		return "rediss://" + s.Addr + "/0"
	}
	return "redis://" + s.Addr + "/0"
}

// Client returns a new go-redis client for the server, closed at cleanup.
// For a TLS server it trusts the server's CA and presents the client
// certificate.
func (s *Server) Client(tb testing.TB) *redis.Client {
	tb.Helper()
	c := redis.NewClient(&redis.Options{Addr: s.Addr, TLSConfig: s.clientTLS()})
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// Stop kills the server and waits for it. It is safe to call twice.
func (s *Server) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	_, _ = s.cmd.Process.Wait()
	s.cmd = nil
}

// Restart stops the server and starts it again on the same port, empty.
func (s *Server) Restart() {
	s.tb.Helper()
	s.Stop()
	var err error
	for i := 0; i < 50; i++ {
		if err = s.start(Binary(s.tb)); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.tb.Fatalf("redistest: restart on %s: %v", s.Addr, err)
}

// Signal sends sig to the server process (SIGSTOP/SIGCONT to pause it).
func (s *Server) Signal(sig syscall.Signal) error {
	if s.cmd == nil {
		return fmt.Errorf("redistest: server not running")
	}
	return s.cmd.Process.Signal(sig)
}

// FreePort asks the kernel for a free loopback TCP port other than 6379.
func FreePort() (int, error) {
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		if port != 6379 {
			return port, nil
		}
	}
}

// Info returns one section of INFO as a map, for assertions on command
// counts (section "commandstats") and the like.
func Info(ctx context.Context, c redis.UniversalClient, section string) (map[string]string, error) {
	txt, err := c.Info(ctx, section).Result()
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(txt))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if k, v, ok := strings.Cut(line, ":"); ok {
			out[k] = v
		}
	}
	return out, sc.Err()
}

// Cluster is a Redis Cluster of masters started by StartCluster.
type Cluster struct {
	Nodes []*Server
}

// Addrs returns the nodes' addresses, to seed a cluster client.
func (c *Cluster) Addrs() []string {
	out := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		out[i] = n.Addr
	}
	return out
}

// Client returns a cluster client seeded with every node, closed at cleanup.
func (c *Cluster) Client(tb testing.TB) *redis.ClusterClient {
	tb.Helper()
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs()})
	tb.Cleanup(func() { _ = cc.Close() })
	return cc
}

// StartCluster starts masters redis-servers with cluster mode on, joins
// them with `redis-cli --cluster create` (no replicas) and waits until the
// cluster reports cluster_state:ok on every node.
func StartCluster(tb testing.TB, masters int) *Cluster {
	tb.Helper()
	if _, err := exec.LookPath("redis-cli"); err != nil {
		Binary(tb) // same skip or failure semantics as a missing server
		tb.Fatalf("redistest: redis-cli not found on PATH (it comes with redis-server)")
	}
	c := &Cluster{}
	args := []string{"--cluster", "create"}
	for i := 0; i < masters; i++ {
		dir := tb.TempDir()
		n := Start(tb, "--cluster-enabled", "yes", "--cluster-config-file", filepath.Join(dir, "nodes.conf"),
			"--cluster-node-timeout", "2000")
		c.Nodes = append(c.Nodes, n)
		args = append(args, n.Addr)
	}
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	if out, err := exec.Command("redis-cli", args...).CombinedOutput(); err != nil {
		tb.Fatalf("redistest: redis-cli --cluster create: %v\n%s", err, out)
	}
	deadline := time.Now().Add(20 * time.Second)
	for _, n := range c.Nodes {
		cl := redis.NewClient(&redis.Options{Addr: n.Addr})
		for {
			info, err := cl.ClusterInfo(context.Background()).Result()
			if err == nil && strings.Contains(info, "cluster_state:ok") {
				break
			}
			if time.Now().After(deadline) {
				_ = cl.Close()
				tb.Fatalf("redistest: cluster node %s not ok: %v %s", n.Addr, err, info)
			}
			time.Sleep(50 * time.Millisecond)
		}
		_ = cl.Close()
	}
	return c
}

// Owner returns the index in Nodes of the master serving slot.
func (c *Cluster) Owner(tb testing.TB, slot int) int {
	tb.Helper()
	ctx := context.Background()
	for i, n := range c.Nodes {
		cl := redis.NewClient(&redis.Options{Addr: n.Addr})
		id, err := cl.ClusterMyID(ctx).Result()
		var shards []redis.ClusterShard
		if err == nil {
			shards, err = cl.ClusterShards(ctx).Result()
		}
		_ = cl.Close()
		if err != nil {
			tb.Fatalf("redistest: cluster state of %s: %v", c.Nodes[i].Addr, err)
		}
		for _, sh := range shards {
			for _, r := range sh.Slots {
				if int(r.Start) > slot || slot > int(r.End) {
					continue
				}
				for _, n := range sh.Nodes {
					if n.ID == id && n.Role == "master" {
						return i
					}
				}
			}
		}
	}
	tb.Fatalf("redistest: no master serves slot %d", slot)
	return -1
}

// MoveSlot reshards one slot, with its keys, from master from to master to,
// the way redis-cli --cluster reshard does: IMPORTING and MIGRATING
// (StartMove), MIGRATE of every key (MigrateKeys), then SETSLOT NODE on
// every master (AssignSlot). Tests that need to act between the steps call
// them one by one.
func (c *Cluster) MoveSlot(tb testing.TB, slot, from, to int) {
	tb.Helper()
	c.StartMove(tb, slot, from, to)
	c.MigrateKeys(tb, slot, from, to)
	c.AssignSlot(tb, slot, from, to)
}

// StartMove sets slot IMPORTING on master to and MIGRATING on master from:
// until MigrateKeys has moved a key, the source serves it; a command naming
// a key the source lacks is redirected (ASK), and one naming several keys
// that are not all on one side gets TRYAGAIN.
func (c *Cluster) StartMove(tb testing.TB, slot, from, to int) {
	tb.Helper()
	src, dst := c.node(tb, from), c.node(tb, to)
	c.must(tb, slot, "importing", dst.Do(context.Background(), "CLUSTER", "SETSLOT", slot, "IMPORTING", c.id(tb, from)).Err())
	c.must(tb, slot, "migrating", src.Do(context.Background(), "CLUSTER", "SETSLOT", slot, "MIGRATING", c.id(tb, to)).Err())
}

// MigrateKeys moves every key of slot from master from to master to
// (MIGRATE, 100 keys at a time), once StartMove has run.
func (c *Cluster) MigrateKeys(tb testing.TB, slot, from, to int) {
	tb.Helper()
	ctx := context.Background()
	src := c.node(tb, from)
	host, port, _ := net.SplitHostPort(c.Nodes[to].Addr)
	for {
		keys, err := src.ClusterGetKeysInSlot(ctx, slot, 100).Result()
		c.must(tb, slot, "getkeysinslot", err)
		if len(keys) == 0 {
			return
		}
		args := []any{"MIGRATE", host, port, "", 0, 5000, "KEYS"}
		for _, k := range keys {
			args = append(args, k)
		}
		c.must(tb, slot, "migrate", src.Do(ctx, args...).Err())
	}
}

// AssignSlot ends a move: SETSLOT NODE to master to, on the target, the
// source, then every other master.
func (c *Cluster) AssignSlot(tb testing.TB, slot, from, to int) {
	tb.Helper()
	dstID := c.id(tb, to)
	order := []int{to, from}
	for i := range c.Nodes {
		if i != from && i != to {
			order = append(order, i)
		}
	}
	for _, i := range order {
		c.must(tb, slot, "node", c.node(tb, i).Do(context.Background(), "CLUSTER", "SETSLOT", slot, "NODE", dstID).Err())
	}
}

// CancelMove abandons a move StartMove began (SETSLOT STABLE on both
// masters): the slot stays with from. Keys already migrated, or created on
// the target while it imported, stay there, out of reach.
func (c *Cluster) CancelMove(tb testing.TB, slot, from, to int) {
	tb.Helper()
	for _, i := range []int{to, from} {
		c.must(tb, slot, "stable", c.node(tb, i).Do(context.Background(), "CLUSTER", "SETSLOT", slot, "STABLE").Err())
	}
}

// node returns a client of master i alone, closed at cleanup.
func (c *Cluster) node(tb testing.TB, i int) *redis.Client {
	cl := redis.NewClient(&redis.Options{Addr: c.Nodes[i].Addr})
	tb.Cleanup(func() { _ = cl.Close() })
	return cl
}

// id returns master i's node id.
func (c *Cluster) id(tb testing.TB, i int) string {
	tb.Helper()
	id, err := c.node(tb, i).ClusterMyID(context.Background()).Result()
	if err != nil {
		tb.Fatalf("redistest: node id of %s: %v", c.Nodes[i].Addr, err)
	}
	return id
}

func (c *Cluster) must(tb testing.TB, slot int, what string, err error) {
	tb.Helper()
	if err != nil {
		tb.Fatalf("redistest: moving slot %d: %s: %v", slot, what, err)
	}
}

// StartSentinel starts a Redis Sentinel on a free port monitoring the
// master at masterAddr under name, with quorum 2 and a one-second
// down-after, and registers its shutdown with tb.Cleanup.
func StartSentinel(tb testing.TB, name, masterAddr string) *Server {
	tb.Helper()
	bin := Binary(tb)
	host, port, err := net.SplitHostPort(masterAddr)
	if err != nil {
		tb.Fatalf("redistest: master address %q: %v", masterAddr, err)
	}
	s := &Server{tb: tb, Dir: tb.TempDir()}
	p, err := FreePort()
	if err != nil {
		tb.Fatalf("redistest: free port: %v", err)
	}
	s.Port = p
	s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
	conf := filepath.Join(s.Dir, "sentinel.conf")
	text := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\nlogfile %s\n"+
		"sentinel monitor %s %s %s 2\n"+
		"sentinel down-after-milliseconds %s 1000\n"+
		"sentinel failover-timeout %s 5000\n"+
		"sentinel parallel-syncs %s 1\n",
		p, s.Dir, filepath.Join(s.Dir, "redis.log"), name, host, port, name, name, name)
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		tb.Fatal(err)
	}
	s.args = []string{conf, "--sentinel"}
	if err := s.start(bin); err != nil {
		tb.Fatalf("redistest: sentinel: %v", err)
	}
	tb.Cleanup(s.Stop)
	return s
}
