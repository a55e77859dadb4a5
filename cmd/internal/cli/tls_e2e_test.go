package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tokencache/tokencache/internal/redistest"
)

// TestE2ETLS runs get, refresh and inspect over rediss:// against a
// TLS-only redis-server: with the CA alone, then with a client certificate
// for a server that demands one; a wrong or missing CA, or a missing client
// certificate, fails with exit 1 naming the address.
func TestE2ETLS(t *testing.T) {
	for _, auth := range []bool{false, true} {
		name := "server-auth"
		if auth {
			name = "mutual"
		}
		t.Run(name, func(t *testing.T) {
			srv := redistest.StartTLS(t, auth)
			w := newWorldOn(t, srv, 0)
			files := srv.TLS
			// The CA from the environment; the client certificate as flags.
			env := w.env(EnvRedisCAFile + "=" + files.CAFile)
			var cert []string
			if auth {
				cert = []string{"--redis-cert-file", files.ClientCertFile, "--redis-key-file", files.ClientKeyFile}
			}
			args := func(cmd ...string) []string { return append(append([]string{}, cert...), cmd...) }

			r := w.run(env, args("get")...)
			if r.code != 0 || !w.issuer.Valid(strings.TrimSpace(r.stdout)) {
				t.Fatalf("get over TLS: exit %d\n%s", r.code, r.stderr)
			}
			if r := w.run(env, args("refresh", "--force")...); r.code != 0 || !strings.Contains(r.stdout, "refreshed=true") {
				t.Errorf("refresh over TLS: exit %d\n%s%s", r.code, r.stdout, r.stderr)
			}
			if r := w.run(env, args("inspect", "--json")...); r.code != 0 || !strings.Contains(r.stdout, `"found": true`) {
				t.Errorf("inspect over TLS: exit %d\n%s%s", r.code, r.stdout, r.stderr)
			}
			if got := w.issuer.Stats().TokenCalls; got != 2 {
				t.Errorf("issuer calls = %d, want 2", got)
			}

			other := redistest.GenerateTLS(t, t.TempDir())
			fails := map[string][]string{
				"wrong CA":   w.env(EnvRedisCAFile + "=" + other.CAFile),
				"system CAs": w.env(),
			}
			if auth {
				fails["no client certificate"] = env
			}
			for what, env := range fails {
				c := cert
				if what == "no client certificate" {
					c = nil
				}
				r := w.run(env, append(append([]string{}, c...), "get")...)
				if r.code != 1 || !strings.Contains(r.stderr, "tokencache: redis "+srv.Addr+": ") {
					t.Errorf("%s: exit %d, want 1 naming %s\n%s", what, r.code, srv.Addr, r.stderr)
				}
				if r.stdout != "" {
					t.Errorf("%s: get printed %d bytes on failure", what, len(r.stdout))
				}
			}
		})
	}
}

// TestE2ETLSUsage: unreadable or invalid TLS files, a certificate without
// its key, or TLS files with a plain-text URL are usage errors: exit 2,
// one line naming the flag.
func TestE2ETLSUsage(t *testing.T) {
	w := newWorld(t, 0)
	files := redistest.GenerateTLS(t, t.TempDir())
	garbage := filepath.Join(t.TempDir(), "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rediss := EnvRedisURL + "=rediss://127.0.0.1:1/0"
	for _, tc := range []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"unreadable CA", []string{rediss}, []string{"--redis-ca-file", "/nonexistent/ca.pem"}, "--redis-ca-file: cannot read /nonexistent/ca.pem"},
		{"CA not PEM", []string{rediss}, []string{"--redis-ca-file", garbage}, "no PEM certificate"},
		{"cert without key", []string{rediss}, []string{"--redis-cert-file", files.ClientCertFile}, "--redis-cert-file needs --redis-key-file"},
		{"key without cert", []string{rediss, EnvRedisKeyFile + "=" + files.ClientKeyFile}, nil, "--redis-key-file needs --redis-cert-file"},
		{"key of another cert", []string{rediss}, []string{"--redis-cert-file", files.ClientCertFile, "--redis-key-file", files.KeyFile}, "private key does not match"},
		{"garbage cert", []string{rediss}, []string{"--redis-cert-file", garbage, "--redis-key-file", files.ClientKeyFile}, "--redis-cert-file " + garbage},
		{"plain-text URL", nil, []string{"--redis-ca-file", files.CAFile}, "rediss://"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := w.run(w.env(tc.env...), append(tc.args, "get")...)
			if r.code != 2 {
				t.Errorf("exit %d, want 2\n%s", r.code, r.stderr)
			}
			if strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("stderr %q: want one line containing %q", r.stderr, tc.want)
			}
		})
	}
	// Key material never shows, whatever goes wrong.
	key, err := os.ReadFile(files.ClientKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	body := strings.Split(strings.TrimSpace(string(key)), "\n")[1]
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, out := range w.outputs {
		if strings.Contains(out, body) {
			t.Errorf("client key material in an output (%d bytes)", len(out))
		}
	}
}
