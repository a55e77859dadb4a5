package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/internal/redistest"
)

// ErrNoRedisServer reports that redis-server is not on PATH and no
// --redis address was given.
var ErrNoRedisServer = errors.New("bench: redis-server not found on PATH (apt-get install redis-server, or pass --redis)")

// RedisServer is a redis-server process this program started on a free
// loopback port, with persistence off.
type RedisServer struct {
	Addr string
	dir  string
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has been reaped
}

// StartRedis starts redis-server on a free port (never 6379) and waits
// until it answers PING. Stop ends it and removes its directory.
func StartRedis(ctx context.Context) (*RedisServer, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, ErrNoRedisServer
	}
	dir, err := os.MkdirTemp("", "tokencache-bench-redis-")
	if err != nil {
		return nil, err
	}
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port, err := redistest.FreePort()
		if err != nil {
			lastErr = err
			continue
		}
		s := &RedisServer{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), dir: dir}
		if lastErr = s.start(ctx, bin, port); lastErr == nil {
			return s, nil
		}
	}
	_ = os.RemoveAll(dir)
	return nil, fmt.Errorf("bench: could not start redis-server: %w", lastErr)
}

func (s *RedisServer) start(ctx context.Context, bin string, port int) error {
	cmd := exec.Command(bin,
		"--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no",
		"--maxclients", "20000",
		"--dir", s.dir, "--logfile", filepath.Join(s.dir, "redis.log"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	s.cmd = cmd
	exited := make(chan struct{})
	s.done = exited
	go func() { _ = cmd.Wait(); close(exited) }()
	c := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	defer func() { _ = c.Close() }()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if err := c.Ping(ctx).Err(); err == nil {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("redis-server on %s exited: %s", s.Addr, s.log())
		case <-ctx.Done():
			s.Stop()
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	s.Stop()
	return fmt.Errorf("redis-server on %s did not answer PING: %s", s.Addr, s.log())
}

func (s *RedisServer) log() string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
	return strings.TrimSpace(string(b))
}

// Stop kills the server and removes its directory. It is safe to call
// twice.
func (s *RedisServer) Stop() {
	if s == nil || s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
	}
	s.cmd = nil
	_ = os.RemoveAll(s.dir)
}

// CommandStats maps a command name (lower case, "get", "evalsha", …) to
// the number of calls Redis has counted for it.
type CommandStats map[string]int64

// ParseCommandStats reads the text of INFO commandstats: lines such as
// "cmdstat_get:calls=12,usec=30,usec_per_call=2.50,rejected_calls=0,failed_calls=0".
// Other lines (headers, other sections) are ignored; a cmdstat line
// without a readable calls field is an error.
func ParseCommandStats(info string) (CommandStats, error) {
	out := CommandStats{}
	sc := bufio.NewScanner(strings.NewReader(info))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		name, rest, ok := strings.Cut(line, ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		name = strings.TrimPrefix(name, "cmdstat_")
		calls, found := int64(0), false
		for _, field := range strings.Split(rest, ",") {
			k, v, _ := strings.Cut(field, "=")
			if k != "calls" {
				continue
			}
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("bench: commandstats %q: bad calls %q", name, v)
			}
			calls, found = n, true
		}
		if !found {
			return nil, fmt.Errorf("bench: commandstats line without calls: %q", line)
		}
		out[name] = calls
	}
	return out, sc.Err()
}

// Sub returns the calls counted in s but not in before, by command,
// leaving out commands whose count did not grow and the commands that
// only the benchmark itself sends (INFO).
func (s CommandStats) Sub(before CommandStats) CommandStats {
	out := CommandStats{}
	for k, v := range s {
		if k == "info" {
			continue
		}
		if d := v - before[k]; d > 0 {
			out[k] = d
		}
	}
	return out
}

// Total is the sum of calls over every command.
func (s CommandStats) Total() int64 {
	var n int64
	for _, v := range s {
		n += v
	}
	return n
}

// Top names the commands in s by descending count, at most n of them,
// each with its count scaled by scale: "evalsha 2.01, publish 0.10".
func (s CommandStats) Top(n int, scale float64) string {
	names := make([]string, 0, len(s))
	for k := range s {
		names = append(names, k)
	}
	slices.SortFunc(names, func(a, b string) int {
		if s[a] != s[b] {
			if s[a] > s[b] {
				return -1
			}
			return 1
		}
		return strings.Compare(a, b)
	})
	if len(names) > n {
		names = names[:n]
	}
	parts := make([]string, len(names))
	for i, k := range names {
		parts[i] = fmt.Sprintf("%s %.2f", k, float64(s[k])*scale)
	}
	return strings.Join(parts, ", ")
}

// redisSnapshot is what one INFO call tells about the server.
type redisSnapshot struct {
	cmds CommandStats
	cpu  time.Duration // used_cpu_user + used_cpu_sys
}

// snapshotRedis reads INFO commandstats and INFO cpu.
func snapshotRedis(ctx context.Context, rdb *redis.Client) (redisSnapshot, error) {
	txt, err := rdb.Info(ctx, "commandstats", "cpu").Result()
	if err != nil {
		return redisSnapshot{}, fmt.Errorf("bench: INFO on %s: %w", rdb.Options().Addr, err)
	}
	cmds, err := ParseCommandStats(txt)
	if err != nil {
		return redisSnapshot{}, err
	}
	var cpu float64
	for _, line := range strings.Split(txt, "\n") {
		k, v, _ := strings.Cut(strings.TrimSpace(line), ":")
		if k == "used_cpu_user" || k == "used_cpu_sys" {
			f, _ := strconv.ParseFloat(v, 64)
			cpu += f
		}
	}
	return redisSnapshot{cmds: cmds, cpu: time.Duration(cpu * float64(time.Second))}, nil
}

// processCPU returns this process's user+system CPU time so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
