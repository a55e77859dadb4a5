package cli

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tokencache/tokencache/tokencache"
	"github.com/tokencache/tokencache/tokencache/issuertest"
)

// TestIssuerErrorSaysPermanentOnlyWhenItIs checks the retry note of an
// issuer failure: "permanent" for a permanent error, when the next try is
// for a retryable one, whether or not a back-off time is set.
func TestIssuerErrorSaysPermanentOnlyWhenItIs(t *testing.T) {
	now := time.Date(2026, 12, 5, 17, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		fe   tokencache.FetchError
		want string
	}{
		{"retryable with a back-off", tokencache.FetchError{Code: "connection-refused", Retryable: true, Until: now.Add(3 * time.Second)}, "retryable: next try at 17:00:03 (in 3s)"},
		{"retryable", tokencache.FetchError{Code: "timeout", Retryable: true}, "retryable: the next call tries again"},
		{"permanent", tokencache.FetchError{Code: "access-denied", Until: now.Add(10 * time.Second)}, "permanent error: the issuer is not called again before 17:00:10 (in 10s)"},
	}
	for _, tt := range tests {
		got := retryNote(&tt.fe, now)
		if !strings.Contains(got, tt.want) {
			t.Errorf("%s: %q, want %q", tt.name, got, tt.want)
		}
		if tt.fe.Retryable && strings.Contains(got, "permanent") {
			t.Errorf("%s: %q calls a retryable error permanent", tt.name, got)
		}
	}
}

// TestOneFailureIsOneLine checks that a failing command says its failure
// once: one line in its message, nothing on stderr that repeats it.
func TestOneFailureIsOneLine(t *testing.T) {
	o := newOffline(t)
	o.issuer.FailAlways(issuertest.Failure{Status: 403, Code: "access-denied"})
	o.env[EnvLogLevel] = "" // the default level, as a user runs it
	_, stderr, err := o.run(t, "get")
	if ExitCode(err) != ExitFailure {
		t.Fatalf("get against a refusing issuer: %v", err)
	}
	msg := err.Error()
	if strings.Contains(msg, "\n") || !strings.Contains(msg, "access-denied") || !strings.Contains(msg, "permanent") {
		t.Errorf("message %q: want one line naming access-denied as permanent", msg)
	}
	if strings.Contains(stderr, "access-denied") {
		t.Errorf("stderr repeats the failure the message gives:\n%s", stderr)
	}
}

// TestRedisUnreachableIsSaid checks that a command whose Redis does not
// answer says so, naming the address and where it comes from.
func TestRedisUnreachableIsSaid(t *testing.T) {
	o := newOffline(t)
	addr := o.redis.Addr()
	o.redis.Close()
	for _, cmd := range []string{"get", "refresh", "inspect"} {
		_, _, err := o.run(t, cmd)
		var f *failure
		if !errors.As(err, &f) {
			t.Fatalf("%s: %v", cmd, err)
		}
		msg := err.Error()
		if !strings.Contains(msg, "redis "+addr+" unreachable") || !strings.Contains(msg, "--redis / TOKENCACHE_REDIS_URL") {
			t.Errorf("%s: %q: want the address said unreachable, naming --redis / TOKENCACHE_REDIS_URL", cmd, msg)
		}
	}
}
