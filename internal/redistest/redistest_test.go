package redistest

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

func TestStartAndRestart(t *testing.T) {
	s := Start(t)
	c := s.Client(t)
	if s.Port == 6379 {
		t.Fatal("started on 6379")
	}
	if err := c.Set(t.Context(), "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	s.Restart()
	if n := c.Exists(t.Context(), "k").Val(); n != 0 {
		t.Errorf("restarted server kept data")
	}
	info, err := Info(t.Context(), c, "server")
	if err != nil || info["tcp_port"] == "" {
		t.Errorf("Info: %v, %v", info, err)
	}
}

// Without redis-server, tests skip with install advice, unless
// TOKENCACHE_REQUIRE_REDIS=1 makes them fail. Checked in a child process
// whose PATH holds no redis-server.
func TestMissingServer(t *testing.T) {
	if os.Getenv("REDISTEST_CHILD") == "1" {
		Binary(t)
		t.Log("redis-server was found")
		return
	}
	for _, tc := range []struct {
		require  string
		wantFail bool
		wantText string
	}{
		{"", false, "apt-get install redis-server"},
		{"1", true, "forbids skipping"},
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestMissingServer$", "-test.v")
		cmd.Env = append(os.Environ(), "REDISTEST_CHILD=1", "PATH="+t.TempDir(), RequireEnv+"="+tc.require)
		out, err := cmd.CombinedOutput()
		if failed := err != nil; failed != tc.wantFail {
			t.Errorf("%s=%q: failed=%v, want %v\n%s", RequireEnv, tc.require, failed, tc.wantFail, out)
		}
		if !strings.Contains(string(out), tc.wantText) {
			t.Errorf("%s=%q: output lacks %q:\n%s", RequireEnv, tc.require, tc.wantText, out)
		}
	}
}
