package cli

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokencache/tokencache/tokencache"
	"github.com/tokencache/tokencache/tokencache/basiq"
	"github.com/tokencache/tokencache/tokencache/tokencacheprom"
)

// runArgs runs the CLI in-process with the given environment.
func runArgs(t *testing.T, env map[string]string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errb bytes.Buffer
	err = Run(context.Background(), args, Env{
		Stdout: &out, Stderr: &errb,
		Getenv: func(k string) string { return env[k] },
	})
	return out.String(), errb.String(), err
}

func TestUsageErrors(t *testing.T) {
	const secret = "sk-unit-SECRET-0123456789"
	base := map[string]string{EnvBasiqAPIKey: secret}
	tests := []struct {
		name string
		env  map[string]string
		args []string
		want string // substring of the one-line message
	}{
		{"no command", base, nil, "no command given"},
		{"unknown command", base, []string{"frobnicate"}, `unknown command "frobnicate"`},
		{"unknown flag", base, []string{"get", "--nope"}, "get: unknown flag --nope"},
		{"unknown global flag", base, []string{"--nope", "get"}, "unknown flag --nope"},
		{"bad duration", base, []string{"refresh", "--min-ttl", "soon"}, `refresh: --min-ttl "soon": want a duration, such as --min-ttl 45m`},
		{"duration without a unit", base, []string{"refresh", "--min-ttl", "45"}, `refresh: --min-ttl "45": want a duration, such as --min-ttl 45m`},
		{"flag without its value", base, []string{"refresh", "--min-ttl"}, `refresh: --min-ttl needs a value: a duration, such as --min-ttl 45m`},
		{"bad number", base, []string{"demo", "--replicas", "many"}, `demo: --replicas "many": want a whole number, such as --replicas 20`},
		{"negative min-ttl", base, []string{"refresh", "--min-ttl=-1m"}, "negative"},
		{"extra argument", base, []string{"get", "extra"}, `unexpected argument "extra"`},
		{"bad scope", base, []string{"--scope", "ALL", "get"}, `--scope "ALL"`},
		{"client scope without user", base, []string{"get", "--scope", "CLIENT_ACCESS"}, "needs --user-id"},
		{"user without client scope", base, []string{"get", "--user-id", "u1"}, "needs --scope CLIENT_ACCESS"},
		{"bad user id", base, []string{"get", "--scope", "CLIENT_ACCESS", "--user-id", "a}b"}, "holds a brace"},
		{"bad provider", base, []string{"get", "--provider", "magic"}, `--provider "magic"`},
		{"provider from env", map[string]string{EnvProvider: "magic"}, []string{"get"}, `--provider "magic"`},
		{"bad log level", map[string]string{EnvLogLevel: "loud"}, []string{"get"}, EnvLogLevel},
		{"bad log format", map[string]string{EnvLogFormat: "xml"}, []string{"get"}, EnvLogFormat},
		{"missing basiq key", nil, []string{"get"}, "set BASIQ_API_KEY"},
		{"missing jwt secret", map[string]string{EnvAPIKey: "k"}, []string{"get", "--provider", "jwt"}, "TOKENCACHE_CLIENT_SECRET"},
		{"oauth2 without token url", map[string]string{EnvClientID: "id", EnvClientSecret: secret}, []string{"get", "--provider", "oauth2"}, "needs --token-url"},
		{"missing secret file", nil, []string{"get", "--api-key-file", "/nonexistent/key"}, "cannot read secret file"},
		{"bad redis url", base, []string{"get", "--redis", "http://x"}, "--redis"},
		{"bad sentinel url", base, []string{"get", "--redis", "redis+sentinel://h:26379"}, "master name"},
		{"bad namespace", base, []string{"get", "--namespace", "a/b"}, "--namespace"},
		{"namespace with a colon", base, []string{"get", "--namespace", "bad:ns"}, `--namespace: invalid namespace "bad:ns": holds a colon`},
		{"namespace from env with a colon", map[string]string{EnvBasiqAPIKey: secret, EnvNamespace: "bad:ns"}, []string{"get"}, "holds a colon"},
		{"long namespace", base, []string{"get", "--namespace", strings.Repeat("n", 200)}, "--namespace: invalid namespace: longer than 128 bytes"},
		{"demo replicas", base, []string{"demo", "--replicas", "0"}, "--replicas 0"},
		{"daemon interval", base, []string{"daemon", "--interval", "1ms"}, "below 100ms"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stdout, stderr, err := runArgs(t, tt.env, tt.args...)
			if got := ExitCode(err); got != ExitUsage {
				t.Fatalf("exit code %d, want %d (err %v)", got, ExitUsage, err)
			}
			msg := err.Error()
			if !strings.Contains(msg, tt.want) {
				t.Errorf("message %q does not contain %q", msg, tt.want)
			}
			if strings.Contains(msg, "\n") {
				t.Errorf("message spans lines: %q", msg)
			}
			if strings.HasPrefix(msg, "tokencache:") {
				t.Errorf("message %q starts with tokencache:, which main adds once", msg)
			}
			if stdout != "" || stderr != "" {
				t.Errorf("a usage error printed more than its one line: stdout %q, stderr %q", stdout, stderr)
			}
			if strings.HasPrefix(strings.TrimPrefix(msg, "tokencache: "), "tokencache") {
				t.Errorf("message repeats its prefix: %q", msg)
			}
			for _, s := range []string{msg, stdout, stderr} {
				if strings.Contains(s, secret) {
					t.Errorf("secret leaked: %q", s)
				}
			}
		})
	}
}

func TestSecretFlagsRefused(t *testing.T) {
	const secret = "sk-flag-SECRET-42"
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"get", "--api-key=" + secret}, "BASIQ_API_KEY"},
		{[]string{"-api-key", secret, "get"}, "--api-key-file"},
		{[]string{"refresh", "--client-secret", secret}, "TOKENCACHE_CLIENT_SECRET"},
		{[]string{"get", "--client-id=" + secret, "--provider", "oauth2"}, "TOKENCACHE_CLIENT_ID"},
		{[]string{"get", "--secret=" + secret}, "--client-secret-file"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			stdout, stderr, err := runArgs(t, nil, tt.args...)
			if got := ExitCode(err); got != ExitUsage {
				t.Fatalf("exit code %d, want %d (err %v)", got, ExitUsage, err)
			}
			if !strings.Contains(err.Error(), "is refused") || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("message %q should refuse the flag and mention %q", err, tt.want)
			}
			for _, s := range []string{err.Error(), stdout, stderr} {
				if strings.Contains(s, secret) {
					t.Errorf("secret echoed: %q", s)
				}
			}
		})
	}
	// After "--" nothing is a flag.
	if err := refuseSecretFlags([]string{"get", "--", "--api-key=x"}); err != nil {
		t.Errorf("after --: %v", err)
	}
}

func TestGlobalsFromEnvAndFlags(t *testing.T) {
	env := map[string]string{
		EnvRedisURL: "redis://10.0.0.1:6379/2", EnvNamespace: "payments",
		EnvIssuerURL: "https://issuer.example", EnvProvider: "oauth2",
	}
	var g globals
	if err := g.init(func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	if g.redisURL != env[EnvRedisURL] || g.namespace != "payments" || g.issuerURL != env[EnvIssuerURL] || g.provider != "oauth2" {
		t.Fatalf("env not applied: %+v", g)
	}
	if !g.explicitRedis() {
		t.Error("redis from env should count as explicit")
	}
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	g.register(fs)
	if err := fs.Parse([]string{"--namespace", "billing", "--scope", "CLIENT_ACCESS", "--user-id", "u-1"}); err != nil {
		t.Fatal(err)
	}
	if g.namespace != "billing" || g.redisURL != env[EnvRedisURL] {
		t.Errorf("flag should override env and keep the rest: %+v", g)
	}
	a := &app{g: g}
	if got, want := a.label(), "billing/u-1"; got != want {
		t.Errorf("namespace %q, want %q", got, want)
	}

	var d globals
	if err := d.init(func(string) string { return "" }); err != nil {
		t.Fatal(err)
	}
	if d.redisURL != DefaultRedisURL || d.namespace != DefaultNamespace || d.issuerURL != DefaultIssuerURL || d.provider != DefaultProvider || d.scope != DefaultScope {
		t.Errorf("defaults: %+v", d)
	}
	if d.explicitRedis() {
		t.Error("default redis is not explicit")
	}
}

func TestSecretFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "key")
	if err := os.WriteFile(p, []byte("  from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a := &app{g: globals{getenv: func(string) string { return "from-env" }}}
	if w, err := a.secretValue(p, EnvBasiqAPIKey, "the key", true, nil); err != nil || w.get() != "from-file" {
		t.Errorf("file: got %v, %v", w, err)
	}
	if w, err := a.secretValue("", EnvBasiqAPIKey, "the key", true, nil); err != nil || w.get() != "from-env" {
		t.Errorf("env: got %v, %v", w, err)
	}
	empty := filepath.Join(dir, "empty")
	_ = os.WriteFile(empty, nil, 0o600)
	if _, err := a.secretValue(empty, EnvBasiqAPIKey, "the key", true, nil); ExitCode(err) != ExitUsage {
		t.Errorf("empty file: %v", err)
	}
}

func TestExitCode(t *testing.T) {
	tests := []struct {
		err  error
		want int
	}{
		{nil, 0},
		{flag.ErrHelp, 0},
		{usagef("bad"), 2},
		{&failure{msg: "x", err: usagef("inner")}, 2},
		{errors.New("boom"), 1},
		{&tokencache.FetchError{Code: "access-denied"}, 1},
	}
	for _, tt := range tests {
		if got := ExitCode(tt.err); got != tt.want {
			t.Errorf("ExitCode(%v) = %d, want %d", tt.err, got, tt.want)
		}
	}
}

func TestHelp(t *testing.T) {
	stdout, _, err := runArgs(t, nil, "-h")
	if ExitCode(err) != 0 || !strings.Contains(stdout, "commands:") || !strings.Contains(stdout, "BASIQ_API_KEY") {
		t.Errorf("help: err %v, out %q", err, stdout)
	}
	if strings.Contains(stdout, "demo-replica") {
		t.Error("hidden command listed")
	}
	stdout, _, err = runArgs(t, nil, "refresh", "-h")
	if ExitCode(err) != 0 || !strings.Contains(stdout, "--min-ttl") || strings.Contains(stdout, "--namespace") {
		t.Errorf("refresh help: err %v, out %q", err, stdout)
	}
}

func TestExplainFetchError(t *testing.T) {
	a := &app{g: globals{issuerURL: "https://au-api.basiq.io", provider: "basiq"}, secrets: scrubList{s: []string{"sk-SECRET-xyz"}}}
	inner := &basiq.Error{Status: 403, Code: "access-denied", CorrelationID: "corr-1", Detail: "bad key sk-SECRET-xyz"}
	err := a.explain(&tokencache.FetchError{Code: "access-denied", Err: inner, Until: time.Now()})
	msg := err.Error()
	for _, want := range []string{"https://au-api.basiq.io", "access-denied", "correlationId corr-1", "[redacted]"} {
		if !strings.Contains(msg, want) {
			t.Errorf("%q lacks %q", msg, want)
		}
	}
	if strings.Contains(msg, "sk-SECRET-xyz") {
		t.Errorf("secret in %q", msg)
	}
	if ExitCode(err) != 1 {
		t.Errorf("exit %d", ExitCode(err))
	}
	rerr := a.explain(&redisFailure{addr: "10.1.2.3:6379", err: errors.New("connection refused")})
	if !strings.Contains(rerr.Error(), "10.1.2.3:6379") {
		t.Errorf("redis failure %q lacks the address", rerr)
	}
}

func TestParseRedis(t *testing.T) {
	o, err := parseSentinel("redis+sentinel://:pw@s1:26379,s2/mymaster/3")
	if err != nil {
		t.Fatal(err)
	}
	if o.MasterName != "mymaster" || o.DB != 3 || o.Password != "pw" || len(o.SentinelAddrs) != 2 || o.SentinelAddrs[1] != "s2:26379" {
		t.Errorf("sentinel: %+v", o)
	}
	c, err := parseCluster("redis://u:pw@n1:7000,n2:7001, redis://n3:7002")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Addrs) != 3 || c.Username != "u" || c.Password != "pw" || c.Addrs[2] != "n3:7002" {
		t.Errorf("cluster: %+v", c)
	}
	if _, err := parseCluster("n1,n2"); ExitCode(err) != ExitUsage {
		t.Errorf("cluster without ports: %v", err)
	}
	if got := redactURL("redis://user:hunter2@h:6379/0"); strings.Contains(got, "hunter2") {
		t.Errorf("redactURL kept the password: %q", got)
	}
	for _, raw := range []string{"redis://127.0.0.1:1/0", "rediss://h:6380", "h1:7000,h2:7001", "redis+sentinel://s:26379/m", "redis://s:26379?master_name=m", "embedded"} {
		rc, err := openRedis(raw, nil)
		if err != nil {
			t.Errorf("openRedis(%q): %v", raw, err)
			continue
		}
		if rc.addr == "" {
			t.Errorf("openRedis(%q): no address to name", raw)
		}
		_ = rc.Close()
	}
}

func TestRefreshLine(t *testing.T) {
	got := refreshLine("tokencache:{default}:server", 7, 59*time.Minute+59*time.Second+700*time.Millisecond, 59*time.Minute+30*time.Second+400*time.Millisecond, true)
	want := "key=tokencache:{default}:server generation=7 expires_in=1h0m0s ttl=59m30s refreshed=true"
	if got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestInspectTableNeverShowsToken(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	st := tokencache.Status{
		Key: "tokencache:{default}:server", Found: true, Generation: 3, TokenType: "Bearer",
		ExpiresAt: now.Add(time.Hour), IssuedAt: now, TTL: time.Hour - 30*time.Second,
		RefreshedBy: "host/1", Fingerprint: "sha256:aaaa", TokenFingerprint: "sha256:bbbb",
		LockKey: "tokencache:{default}:server:lock", FenceKey: "tokencache:{default}:server:fence", Fence: 3,
		Channel: "tokencache:{default}:events",
	}
	var b bytes.Buffer
	if err := writeInspectTable(&b, st, now); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"GENERATION    3", "EXPIRES IN    1h0m0s", "TTL           59m30s", "REFRESHED BY  host/1", "redacted, fingerprint sha256:bbbb", "free"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
}

func TestMetricsWrapKeepsIdentity(t *testing.T) {
	m := newMetrics("default", func() tokencache.Stats { return tokencache.Stats{} })
	f := basiq.New("k", basiq.WithBaseURL("https://x"))
	w := m.wrap(f)
	id, ok := w.(tokencache.Identifier)
	if !ok || id.Identity() != f.Identity() {
		t.Fatalf("wrapped fetcher lost its identity")
	}
	plain := m.wrap(tokencache.FetcherFunc(func(context.Context) (tokencache.Token, error) {
		return tokencache.Token{}, &basiq.Error{Code: "invalid-grant"}
	}))
	if _, ok := plain.(tokencache.Identifier); ok {
		t.Error("wrapper invented an identity")
	}
	if _, err := plain.Fetch(context.Background()); err == nil {
		t.Fatal("want error")
	}
	if got := tokencacheprom.Result(&basiq.Error{Code: "invalid-grant"}); got != "invalid-grant" {
		t.Errorf("Result = %q", got)
	}
	if n, err := m.reg.Gather(); err != nil || len(n) == 0 {
		t.Errorf("gather: %v", err)
	}
}

func TestGetOAuth2Embedded(t *testing.T) {
	const secret = "oauth2-SECRET-abcdef"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if id, sec, ok := r.BasicAuth(); !ok || id != "client-1" || sec != secret {
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, `{"error":"invalid_client"}`)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"access_token":"oa-tok","token_type":"bearer","expires_in":3600}`)
	}))
	defer srv.Close()
	env := map[string]string{EnvClientID: "client-1", EnvClientSecret: secret}
	stdout, stderr, err := runArgs(t, env, "get", "--redis", "embedded", "--provider", "oauth2", "--token-url", srv.URL)
	if err != nil || stdout != "oa-tok\n" {
		t.Fatalf("get: %v, stdout %q, stderr %q", err, stdout, stderr)
	}
	env[EnvClientSecret] = "wrong-SECRET-123456"
	_, stderr, err = runArgs(t, env, "get", "--redis", "embedded", "--provider", "oauth2", "--token-url", srv.URL)
	if ExitCode(err) != 1 || !strings.Contains(err.Error(), "401") {
		t.Fatalf("wrong secret: %v", err)
	}
	if strings.Contains(err.Error()+stderr, "wrong-SECRET-123456") {
		t.Errorf("secret leaked: %v %s", err, stderr)
	}
}
