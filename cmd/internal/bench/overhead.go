package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The overhead benchmark measures what tokencache's local API adds to a
// request, side by side in one run, against the least a program could
// do in its place:
//
//   - an API GET sent directly with the token (the application holds
//     it), through a bare httputil.ReverseProxy that adds a fixed
//     Authorization header, and through "tokencache proxy", both proxies
//     separate processes on loopback TCP;
//   - GET /v1/token on "tokencache serve"'s Unix socket, and the same
//     request to a bare handler on a Unix socket that returns the same
//     bytes as a constant.
//
// The upstream is the fake issuer's protected resource (issuertest), in
// this process. Requests are sequential, one client per target with
// keep-alive, interleaved round by round so that the noise of a shared
// machine falls on every target alike.

// BareFlag is the hidden first argument that makes the binary serve the
// bare reference of the overhead benchmark (RunBare).
const BareFlag = "-bench-bare"

// OverheadConfig configures Overhead.
type OverheadConfig struct {
	// Tokencache is the tokencache binary (go build ./cmd/tokencache).
	Tokencache string
	// Self is this program, re-executed with BareFlag for the bare
	// servers; empty means os.Executable().
	Self string
	// Rounds is the number of requests to each target; default 3000.
	Rounds int
	// Warmup rounds are sent first and not measured; default 200.
	Warmup int
	// Redis is a Redis address; empty starts a redis-server.
	Redis string
}

// OverheadResult is one run of Overhead: medians (p50) of sequential
// requests, what each proxy adds over the direct call, and the CPU time
// each server process spent per request it answered.
type OverheadResult struct {
	Rounds int

	Direct time.Duration // GET to the upstream with the token
	Bare   time.Duration // the same through the bare proxy
	Proxy  time.Duration // the same through tokencache proxy
	// BareAdded and ProxyAdded are Bare and Proxy minus Direct;
	// ProxyRatio is ProxyAdded / BareAdded (goal: at most 1.2).
	BareAdded, ProxyAdded time.Duration
	ProxyRatio            float64

	Handler time.Duration // GET on a Unix socket to a constant handler
	Serve   time.Duration // GET /v1/token on tokencache serve's socket
	// ServeRatio is Serve / Handler (goal: at most 1.2).
	ServeRatio float64

	// CPU per request of each server process (user and system, all
	// threads, over the measured rounds; 0 where /proc is missing): far
	// less noisy than latency on a shared machine.
	BareCPU, ProxyCPU, HandlerCPU, ServeCPU time.Duration
}

// String is the result as a few lines of text.
func (r OverheadResult) String() string {
	us := func(d time.Duration) string { return fmt.Sprintf("%.1f µs", float64(d)/1e3) }
	return fmt.Sprintf("p50 of %d sequential requests each\n"+
		"API GET    direct %s, bare proxy %s (+%s), tokencache proxy %s (+%s): proxy adds %.2fx what the bare proxy adds\n"+
		"token GET  bare handler %s, tokencache serve %s: %.2fx\n"+
		"CPU/req    bare proxy %s, tokencache proxy %s; bare handler %s, tokencache serve %s",
		r.Rounds, us(r.Direct), us(r.Bare), us(r.BareAdded), us(r.Proxy), us(r.ProxyAdded), r.ProxyRatio,
		us(r.Handler), us(r.Serve), r.ServeRatio,
		us(r.BareCPU), us(r.ProxyCPU), us(r.HandlerCPU), us(r.ServeCPU))
}

// bareConfig is what a bare process reads from stdin: a proxy (Upstream
// set) or a constant handler (Socket set).
type bareConfig struct {
	Upstream string `json:"upstream,omitempty"` // base URL the proxy forwards to
	Auth     string `json:"auth,omitempty"`     // the Authorization value it adds
	Socket   string `json:"socket,omitempty"`   // Unix socket of the constant handler
	Body     []byte `json:"body,omitempty"`     // what the handler answers
}

// bareAddr is what a bare process prints once it listens.
type bareAddr struct {
	Addr string `json:"addr"`
}

// RunBare is a bare reference process: it reads a bareConfig line from
// stdin, serves the bare proxy on a free loopback port, or the constant
// handler on the socket, prints its address as one JSON line, and serves
// until stdin closes or ctx ends.
func RunBare(ctx context.Context, stdin io.Reader, stdout io.Writer) error {
	in := bufio.NewReader(stdin)
	var cfg bareConfig
	if err := readJSONLine(in, &cfg); err != nil {
		return fmt.Errorf("bench: bare: %w", err)
	}
	var (
		h  http.Handler
		ln net.Listener
	)
	switch {
	case cfg.Upstream != "":
		up, err := url.Parse(cfg.Upstream)
		if err != nil {
			return fmt.Errorf("bench: bare: upstream: %w", err)
		}
		h = &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(up)
			pr.Out.Header.Set("Authorization", cfg.Auth)
		}}
		if ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			return err
		}
	case cfg.Socket != "":
		h = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(cfg.Body)
		})
		var err error
		if ln, err = net.Listen("unix", cfg.Socket); err != nil {
			return err
		}
	default:
		return errors.New("bench: bare: neither upstream nor socket")
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	if err := json.NewEncoder(stdout).Encode(bareAddr{Addr: ln.Addr().String()}); err != nil {
		return err
	}
	eof := make(chan struct{})
	go func() { _, _ = io.Copy(io.Discard, in); close(eof) }()
	select {
	case <-eof:
	case <-ctx.Done():
	}
	return nil
}

// overheadListenSecret is the bearer secret of the benchmark's
// tokencache proxy (loopback TCP needs one).
const overheadListenSecret = "bench-listen-secret-0123456789abcdef"

// Overhead runs the overhead benchmark once.
func Overhead(ctx context.Context, cfg OverheadConfig) (OverheadResult, error) {
	if cfg.Tokencache == "" {
		return OverheadResult{}, errors.New("bench: overhead: no tokencache binary given")
	}
	if cfg.Rounds <= 0 {
		cfg.Rounds = 3000
	}
	if cfg.Warmup <= 0 {
		cfg.Warmup = 200
	}
	if cfg.Self == "" {
		exe, err := os.Executable()
		if err != nil {
			return OverheadResult{}, err
		}
		cfg.Self = exe
	}
	redisAddr := cfg.Redis
	if redisAddr == "" {
		rs, err := StartRedis(ctx)
		if err != nil {
			return OverheadResult{}, err
		}
		defer rs.Stop()
		redisAddr = rs.Addr
	}
	is, err := StartIssuer(0, time.Hour)
	if err != nil {
		return OverheadResult{}, err
	}
	defer is.Close()
	dir, err := os.MkdirTemp("", "tcbench-")
	if err != nil {
		return OverheadResult{}, err
	}
	defer os.RemoveAll(dir)

	env := []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"),
		"TOKENCACHE_REDIS_URL=redis://" + redisAddr, "TOKENCACHE_NAMESPACE=overhead",
		"TOKENCACHE_ISSUER_URL=" + is.URL, "BASIQ_API_KEY=" + is.APIKey,
		"TOKENCACHE_LOG_LEVEL=warn",
	}

	secretFile := filepath.Join(dir, "listen-secret")
	if err := os.WriteFile(secretFile, []byte(overheadListenSecret), 0o600); err != nil {
		return OverheadResult{}, err
	}
	proxyAddr, err := freeLoopback()
	if err != nil {
		return OverheadResult{}, err
	}
	serveSock := filepath.Join(dir, "serve.sock")
	var procs []*exec.Cmd
	defer func() {
		for _, p := range procs {
			_ = p.Process.Kill()
			_ = p.Wait()
		}
	}()
	start := func(args ...string) (*exec.Cmd, *lockedBuffer, error) {
		cmd := exec.Command(cfg.Tokencache, args...)
		cmd.Env = env
		out := &lockedBuffer{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			return nil, nil, err
		}
		procs = append(procs, cmd)
		return cmd, out, nil
	}
	// serve keeps its rate limit, set far above this client's rate so
	// that its cost is measured and it never answers 429; proxy runs
	// with its defaults.
	serveProc, serveOut, err := start("serve", "--listen", "unix:"+serveSock, "--rate", "1e9", "--burst", "1000000000")
	if err != nil {
		return OverheadResult{}, err
	}
	proxyProc, proxyOut, err := start("proxy", "--listen", proxyAddr, "--listen-secret-file", secretFile, "--upstream", is.URL)
	if err != nil {
		return OverheadResult{}, err
	}
	serveClient := unixHTTPClient(serveSock)
	proxyClient := &http.Client{Transport: &http.Transport{}}
	if err := waitDial(ctx, "unix", serveSock); err != nil {
		return OverheadResult{}, fmt.Errorf("bench: tokencache serve: %w\n%s", err, serveOut.String())
	}
	if err := waitDial(ctx, "tcp", proxyAddr); err != nil {
		return OverheadResult{}, fmt.Errorf("bench: tokencache proxy: %w\n%s", err, proxyOut.String())
	}

	// The token, from serve; the bare handler answers the same bytes.
	body, err := fetch(serveClient, "http://serve/v1/token", "")
	if err != nil {
		return OverheadResult{}, fmt.Errorf("bench: serve: %w", err)
	}
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.Unmarshal(body, &tok); err != nil || tok.AccessToken == "" {
		return OverheadResult{}, fmt.Errorf("bench: serve answered no token (%v)", err)
	}
	auth := "Bearer " + tok.AccessToken

	bareSock := filepath.Join(dir, "bare.sock")
	startBare := func(c bareConfig) (*exec.Cmd, string, error) {
		cmd := exec.Command(cfg.Self, BareFlag)
		errOut := &lockedBuffer{}
		cmd.Stderr = errOut
		in, err := cmd.StdinPipe()
		if err != nil {
			return nil, "", err
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			return nil, "", err
		}
		if err := cmd.Start(); err != nil {
			return nil, "", err
		}
		procs = append(procs, cmd) // killed at the end, which also closes in
		if err := json.NewEncoder(in).Encode(c); err != nil {
			return nil, "", err
		}
		var a bareAddr
		if err := readJSONLine(bufio.NewReader(out), &a); err != nil {
			return nil, "", fmt.Errorf("bench: bare process: %w: %s", err, errOut.String())
		}
		return cmd, a.Addr, nil
	}
	bareProc, bareAddr, err := startBare(bareConfig{Upstream: is.URL, Auth: auth})
	if err != nil {
		return OverheadResult{}, err
	}
	handlerProc, _, err := startBare(bareConfig{Socket: bareSock, Body: body})
	if err != nil {
		return OverheadResult{}, err
	}

	direct := &http.Client{Transport: &http.Transport{}}
	bareProxy := &http.Client{Transport: &http.Transport{}}
	handler := unixHTTPClient(bareSock)
	const path = "/api/bench"
	targets := []struct {
		c    *http.Client
		url  string
		auth string
	}{
		{direct, is.URL + path, auth},
		{bareProxy, "http://" + bareAddr + path, ""},
		{proxyClient, "http://" + proxyAddr + path, "Bearer " + overheadListenSecret},
		{handler, "http://bare/v1/token", ""},
		{serveClient, "http://serve/v1/token", ""},
	}
	lat := make([][]time.Duration, len(targets))
	for i := range lat {
		lat[i] = make([]time.Duration, 0, cfg.Rounds)
	}
	// The server process of each target but the direct one.
	servers := []*exec.Cmd{nil, bareProc, proxyProc, handlerProc, serveProc}
	cpu0 := make([]time.Duration, len(servers))
	for round := range cfg.Warmup + cfg.Rounds {
		if err := ctx.Err(); err != nil {
			return OverheadResult{}, err
		}
		if round == cfg.Warmup {
			for i, p := range servers {
				if p != nil {
					cpu0[i] = cpuTime(p.Process.Pid)
				}
			}
		}
		for k := range targets {
			// Rotate the order, so that no target always follows another.
			i := (k + round) % len(targets)
			t := targets[i]
			t0 := time.Now()
			if _, err := fetch(t.c, t.url, t.auth); err != nil {
				return OverheadResult{}, fmt.Errorf("bench: %s: %w", t.url, err)
			}
			if round >= cfg.Warmup {
				lat[i] = append(lat[i], time.Since(t0))
			}
		}
	}
	cpu := make([]time.Duration, len(servers))
	for i, p := range servers {
		if p != nil && cpu0[i] > 0 {
			cpu[i] = (cpuTime(p.Process.Pid) - cpu0[i]) / time.Duration(cfg.Rounds)
		}
	}
	p50 := make([]time.Duration, len(lat))
	for i, l := range lat {
		slices.Sort(l)
		p50[i] = Percentile(l, 50)
	}
	r := OverheadResult{Rounds: cfg.Rounds, Direct: p50[0], Bare: p50[1], Proxy: p50[2], Handler: p50[3], Serve: p50[4],
		BareCPU: cpu[1], ProxyCPU: cpu[2], HandlerCPU: cpu[3], ServeCPU: cpu[4]}
	r.BareAdded, r.ProxyAdded = r.Bare-r.Direct, r.Proxy-r.Direct
	if r.BareAdded > 0 {
		r.ProxyRatio = float64(r.ProxyAdded) / float64(r.BareAdded)
	}
	if r.Handler > 0 {
		r.ServeRatio = float64(r.Serve) / float64(r.Handler)
	}
	return r, nil
}

// cpuTime is the CPU time a process has used so far, all threads, from
// /proc/PID/task/*/schedstat (nanoseconds); 0 where that is missing.
func cpuTime(pid int) time.Duration {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	var sum time.Duration
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		f := strings.Fields(string(b))
		if len(f) == 0 {
			continue
		}
		if ns, err := strconv.ParseInt(f[0], 10, 64); err == nil {
			sum += time.Duration(ns)
		}
	}
	return sum
}

// fetch GETs url and returns the body; anything but a 200 is an error.
func fetch(c *http.Client, url, auth string) ([]byte, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %d: %s", resp.StatusCode, strings.TrimSpace(string(b)))
	}
	return b, nil
}

func unixHTTPClient(path string) *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}}
}

// freeLoopback returns a loopback address with a port free right now.
func freeLoopback() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// waitDial waits until addr accepts a connection (30 s at most).
func waitDial(ctx context.Context, network, addr string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.Dial(network, addr)
		if err == nil {
			return c.Close()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s never accepted a connection: %w", addr, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
