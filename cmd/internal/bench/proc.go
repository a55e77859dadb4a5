package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ChildFlag is the hidden first argument that makes the binary run as one
// replica process of the processes mode.
const ChildFlag = "-bench-child"

// childConfig is what the parent sends a child, as one JSON line.
type childConfig struct {
	Strategy string        `json:"strategy"`
	Env      replicaEnv    `json:"env"`
	Interval time.Duration `json:"interval"`
	Warmup   time.Duration `json:"warmup"`
	Duration time.Duration `json:"duration"`
}

// childStart is the parent's go signal: when the clock starts.
type childStart struct {
	T0 int64 `json:"t0"` // Unix nanoseconds
}

// runChild is the child side: read the config, build the replica, say
// "ready", wait for the start time, run the callers, print the run.
func runChild(ctx context.Context, stdin io.Reader, stdout io.Writer) error {
	in := bufio.NewReader(stdin)
	var cfg childConfig
	if err := readJSONLine(in, &cfg); err != nil {
		return fmt.Errorf("bench child: config: %w", err)
	}
	cfg.Env.counter = &cmdCounter{}
	r, err := newReplica(cfg.Strategy, cfg.Env)
	if err != nil {
		return err
	}
	defer func() { _ = r.Close() }()
	if _, err := io.WriteString(stdout, "ready\n"); err != nil {
		return err
	}
	var start childStart
	if err := readJSONLine(in, &start); err != nil {
		return fmt.Errorf("bench child: start: %w", err)
	}
	t0 := time.Unix(0, start.T0)
	stopAt := t0.Add(cfg.Warmup + cfg.Duration)
	done := make(chan replicaRun, 1)
	go func() { done <- callLoop(ctx, r, t0, stopAt, cfg.Interval) }()
	if err := sleepUntil(ctx, t0.Add(cfg.Warmup)); err != nil {
		return err
	}
	cpu1, cmds1 := processCPU(), cfg.Env.counter.snapshot()
	if err := sleepUntil(ctx, stopAt); err != nil {
		return err
	}
	cpu2, cmds2 := processCPU(), cfg.Env.counter.snapshot()
	run := <-done
	run.CPU = [2]time.Duration{cpu1, cpu2}
	run.Cmds = [2]CommandStats{cmds1, cmds2}
	return json.NewEncoder(stdout).Encode(run)
}

func readJSONLine(r *bufio.Reader, v any) error {
	line, err := r.ReadBytes('\n')
	if err != nil && len(line) == 0 {
		return err
	}
	return json.Unmarshal(line, v)
}

// child is a running replica process, seen from the parent.
type child struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	out    *bufio.Reader
	stderr lockedBuffer
}

// lockedBuffer is a bytes.Buffer that a child's stderr copier writes
// while the parent may read it.
type lockedBuffer struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// runProcCell runs one cell with each replica in its own process.
func (e *env) runProcCell(ctx context.Context, c cell, seq int) (Result, error) {
	e.issuer.Reset()
	renv := e.replicaEnv(c, seq)
	kids := make([]*child, 0, c.N)
	defer func() {
		for _, k := range kids {
			_ = k.stdin.Close()
			if k.cmd.ProcessState == nil {
				_ = k.cmd.Process.Kill()
				_ = k.cmd.Wait()
			}
		}
	}()
	for i := range c.N {
		renv.Owner = "bench-proc-" + strconv.Itoa(i)
		k, err := e.startChild(childConfig{Strategy: c.Strategy, Env: renv, Interval: c.Interval, Warmup: c.Warmup, Duration: c.Duration})
		if err != nil {
			return Result{}, err
		}
		kids = append(kids, k)
	}
	for i, k := range kids {
		line, err := k.out.ReadString('\n')
		if strings.TrimSpace(line) != "ready" {
			return Result{}, fmt.Errorf("bench: replica process %d did not start (%v): %s", i, err, strings.TrimSpace(k.stderr.String()))
		}
	}
	settle(ctx, 0)
	t0 := time.Now().Add(100 * time.Millisecond)
	for _, k := range kids {
		if err := json.NewEncoder(k.stdin).Encode(childStart{T0: t0.UnixNano()}); err != nil {
			return Result{}, err
		}
	}
	runs := make([]replicaRun, c.N)
	errs := make([]error, c.N)
	var wg sync.WaitGroup
	for i, k := range kids {
		wg.Go(func() {
			if err := json.NewDecoder(k.out).Decode(&runs[i]); err != nil {
				errs[i] = fmt.Errorf("bench: replica process %d: %w: %s", i, err, strings.TrimSpace(k.stderr.String()))
			}
			_ = k.cmd.Wait()
		})
	}
	m, err := e.measure(ctx, t0, c, func() (time.Duration, CommandStats) { return 0, nil })
	wg.Wait()
	if err := errors.Join(append(errs, err)...); err != nil {
		return Result{}, err
	}
	// The children's own snapshots replace the parent's (empty) ones; a
	// child counts from its start, so the cold numbers of this mode also
	// include what it sent while connecting.
	m.sent = [3]CommandStats{{}, {}, {}}
	for _, r := range runs {
		m.cpu[1] += r.CPU[0]
		m.cpu[2] += r.CPU[1]
		for k, v := range r.Cmds[0] {
			m.sent[1][k] += v
		}
		for k, v := range r.Cmds[1] {
			m.sent[2][k] += v
		}
	}
	return e.result(c, t0, m, runs), nil
}

func (e *env) startChild(cfg childConfig) (*child, error) {
	cmd := exec.Command(e.exe, ChildFlag)
	k := &child{cmd: cmd}
	cmd.Stderr = &k.stderr
	var err error
	if k.stdin, err = cmd.StdinPipe(); err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	k.out = bufio.NewReader(stdout)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("bench: start replica process %s: %w", e.exe, err)
	}
	if err := json.NewEncoder(k.stdin).Encode(cfg); err != nil {
		return nil, err
	}
	return k, nil
}
