package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestServeAndProxyListenerRulesAreUsageErrors checks that serve and proxy
// refuse, before touching Redis or the issuer, every listener the rules
// forbid: exit 2, one line naming the cause, no secret.
func TestServeAndProxyListenerRulesAreUsageErrors(t *testing.T) {
	const (
		apiKey = "sk-unit-SECRET-0123456789"
		secret = "listen-unit-SECRET-0123456789"
	)
	short := filepath.Join(t.TempDir(), "short")
	if err := os.WriteFile(short, []byte("tiny\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	withSecret := map[string]string{EnvBasiqAPIKey: apiKey, EnvListenSecret: secret}
	noSecret := map[string]string{EnvBasiqAPIKey: apiKey}
	for _, c := range []struct {
		env  map[string]string
		args []string
		want string
	}{
		{withSecret, []string{"serve", "--listen", "0.0.0.0:8200"}, "non-loopback address needs both TLS and a bearer secret"},
		{withSecret, []string{"proxy", "--listen", ":8200"}, "non-loopback address needs both TLS and a bearer secret"},
		{noSecret, []string{"serve", "--listen", "10.1.2.3:8200", "--tls-cert-file", "c.pem", "--tls-key-file", "k.pem"}, "non-loopback address needs both TLS and a bearer secret"},
		{noSecret, []string{"serve", "--listen", "127.0.0.1:8200"}, "TCP needs a bearer secret"},
		{noSecret, []string{"proxy", "--listen", "localhost:8200"}, "TCP needs a bearer secret"},
		{noSecret, []string{"serve", "--listen", "127.0.0.1:8200", "--listen-secret-file", short}, "at least 16"},
		{noSecret, []string{"serve", "--listen", "127.0.0.1:8200", "--listen-secret-file", short + ".missing"}, "cannot read secret file"},
		{withSecret, []string{"serve", "--listen-secret", secret}, "--listen-secret is refused"},
		{withSecret, []string{"serve", "--socket-mode", "999"}, "--socket-mode"},
		{withSecret, []string{"serve", "--socket-mode", "0"}, "lock everyone out"},
		{withSecret, []string{"serve", "--rate", "-1"}, "--rate"},
		{withSecret, []string{"serve", "--costly-rate", "-1"}, "--costly-rate"},
		{withSecret, []string{"proxy", "--costly-burst", "0"}, "--costly-burst"},
		{noSecret, []string{"serve", "--socket-mode", "0666"}, "every user of the machine"},
		{noSecret, []string{"proxy", "--socket-mode", "0601"}, "every user of the machine"},
		{withSecret, []string{"serve", "--scope", "CLIENT_ACCESS", "--user-id", "u-1"}, "drop --scope"},
		{withSecret, []string{"serve", "extra"}, "unexpected argument"},
		{withSecret, []string{"proxy", "--upstream", "ftp://example.com"}, "--upstream"},
		{withSecret, []string{"proxy", "--upstream", "https://user:" + secret + "@example.com"}, "--upstream"},
	} {
		_, _, err := runArgs(t, c.env, c.args...)
		if ExitCode(err) != ExitUsage {
			t.Errorf("%v: exit %d (%v), want %d", c.args, ExitCode(err), err, ExitUsage)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, c.want) || strings.Contains(msg, "\n") {
			t.Errorf("%v: %q, want one line naming %q", c.args, msg, c.want)
		}
		if strings.Contains(msg, secret) || strings.Contains(msg, apiKey) {
			t.Errorf("%v: the message holds a secret", c.args)
		}
	}
}

func TestServeAndProxyHelp(t *testing.T) {
	for _, cmd := range []string{"serve", "proxy"} {
		out, _, err := runArgs(t, nil, cmd, "-h")
		if ExitCode(err) != ExitOK || !strings.Contains(out, "--listen") || !strings.Contains(out, "--listen-secret-file") {
			t.Errorf("%s -h: exit %d, output %q", cmd, ExitCode(err), out)
		}
	}
}

// A listen secret file that every user can read is warned of (here, before
// a listener the rules refuse ends the command).
func TestServeWarnsOfASecretFileReadableByOthers(t *testing.T) {
	file := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(file, []byte("listen-unit-SECRET-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(file, 0o644); err != nil {
		t.Fatal(err)
	}
	_, errOut, err := runArgs(t, map[string]string{EnvBasiqAPIKey: "sk-unit-SECRET-0123456789"}, "serve", "--listen", "0.0.0.0:8200", "--listen-secret-file", file)
	if ExitCode(err) != ExitUsage {
		t.Fatalf("exit %d (%v), want %d", ExitCode(err), err, ExitUsage)
	}
	if !strings.Contains(errOut, "readable by every user") {
		t.Errorf("no warning of the file's mode in %q", errOut)
	}
	if strings.Contains(errOut, "listen-unit-SECRET") {
		t.Error("the warning holds the secret")
	}
}
