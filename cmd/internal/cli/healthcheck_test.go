package cli

import (
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

func TestHealthcheck(t *testing.T) {
	var redirected atomic.Int64
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		redirected.Add(1)
	}))
	defer target.Close()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ok":
			w.Write([]byte("ready: token sha256:0123456789abcdef\nsecond line"))
		case "/down":
			http.Error(w, "not ready: no valid token yet", http.StatusServiceUnavailable)
		case "/moved":
			http.Redirect(w, r, target.URL+"/ok", http.StatusTemporaryRedirect)
		case "/hang":
			<-r.Context().Done()
		}
	}))
	defer srv.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + ln.Addr().String() + "/readyz"
	ln.Close()

	tests := []struct {
		name string
		args []string
		code int
		want string // in stdout on success, in the error otherwise
	}{
		{"healthy", []string{"--url", srv.URL + "/ok"}, ExitOK, "healthy: " + srv.URL + "/ok 200 OK ready: token sha256:0123456789abcdef\n"},
		{"unhealthy", []string{"--url", srv.URL + "/down"}, ExitFailure, "503 Service Unavailable: not ready: no valid token yet"},
		{"redirect not followed", []string{"--url", srv.URL + "/moved"}, ExitFailure, "307 Temporary Redirect"},
		{"nothing listening", []string{"--url", closed}, ExitFailure, "connection refused"},
		{"no answer", []string{"--url", srv.URL + "/hang", "--timeout", "50ms"}, ExitFailure, "deadline exceeded"},
		{"not http", []string{"--url", "ftp://127.0.0.1/x"}, ExitUsage, "want an absolute http:// or https:// URL"},
		{"relative", []string{"--url", "/readyz"}, ExitUsage, "want an absolute"},
		{"credentials", []string{"--url", "http://u:p@127.0.0.1/"}, ExitUsage, "must not hold credentials"},
		{"bad timeout", []string{"--timeout", "0s"}, ExitUsage, "--timeout 0s"},
		{"extra argument", []string{"http://127.0.0.1/"}, ExitUsage, `unexpected argument`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stdout, stderr, err := runArgs(t, nil, append([]string{"healthcheck"}, tt.args...)...)
			if got := ExitCode(err); got != tt.code {
				t.Fatalf("exit %d, want %d (err %v)", got, tt.code, err)
			}
			if stderr != "" {
				t.Errorf("stderr %q, want nothing", stderr)
			}
			if tt.code == ExitOK {
				if stdout != tt.want {
					t.Errorf("stdout %q, want %q", stdout, tt.want)
				}
				return
			}
			if msg := err.Error(); !strings.Contains(msg, tt.want) || strings.Contains(msg, "\n") {
				t.Errorf("error %q: want one line containing %q", msg, tt.want)
			}
		})
	}
	if n := redirected.Load(); n != 0 {
		t.Errorf("the redirect target got %d requests, want 0", n)
	}
}
