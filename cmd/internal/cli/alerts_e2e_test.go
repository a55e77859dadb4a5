package cli

// The shipped alert rules (deploy/prometheus) on a real Prometheus server
// scraping a real daemon: skipped without the prometheus binary unless
// TOKENCACHE_REQUIRE_PROMETHEUS=1 (as in .ci/run).

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/tokencache/issuertest"
)

// alertRules is the shipped rules file, from this package's directory.
const alertRules = "../../../deploy/prometheus/tokencache-alerts.yml"

// requirePrometheus returns the prometheus binary, or skips the test.
func requirePrometheus(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		if os.Getenv("TOKENCACHE_REQUIRE_PROMETHEUS") == "1" {
			t.Fatal("prometheus is not on PATH and TOKENCACHE_REQUIRE_PROMETHEUS=1 (Debian: apt-get install prometheus)")
		}
		t.Skip("prometheus is not on PATH (Debian: apt-get install prometheus; TOKENCACHE_REQUIRE_PROMETHEUS=1 makes this a failure)")
	}
	return bin
}

// promServer is a Prometheus server of one test.
type promServer struct {
	base string
	out  *lockedBuffer
}

// startPrometheus starts Prometheus on a free port, scraping target every
// second with the shipped rules evaluated every second, and waits until
// it is ready. It is killed at cleanup.
func startPrometheus(t *testing.T, bin, target string) *promServer {
	t.Helper()
	rules, err := filepath.Abs(alertRules)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 900ms
  evaluation_interval: 1s
rule_files: [%q]
scrape_configs:
  - job_name: tokencache
    static_configs:
      - targets: [%q]
`, rules, target)
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	port, err := redistest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	p := &promServer{base: "http://127.0.0.1:" + strconv.Itoa(port), out: &lockedBuffer{}}
	cmd := exec.Command(bin, "--config.file="+cfgPath, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address=127.0.0.1:"+strconv.Itoa(port))
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	waitUntil(t, 60*time.Second, "prometheus ready", func() (bool, string) {
		select {
		case err := <-done:
			t.Fatalf("prometheus exited: %v\n%s", err, p.out.String())
		default:
		}
		resp, err := http.Get(p.base + "/-/ready")
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status
	})
	return p
}

// promAlert is an alert as /api/v1/alerts lists it.
type promAlert struct {
	Labels map[string]string `json:"labels"`
	State  string            `json:"state"`
}

// alerts lists the active (pending or firing) alerts.
func (p *promServer) alerts() ([]promAlert, error) {
	resp, err := http.Get(p.base + "/api/v1/alerts")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var body struct {
		Status string `json:"status"`
		Data   struct {
			Alerts []promAlert `json:"alerts"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, err
	}
	if body.Status != "success" {
		return nil, fmt.Errorf("/api/v1/alerts: status %q", body.Status)
	}
	return body.Data.Alerts, nil
}

// state is the state of the named alert whose labels include match
// ("" when not active), and a summary of every active alert.
func (p *promServer) state(name string, match map[string]string) (string, string) {
	list, err := p.alerts()
	if err != nil {
		return "", err.Error()
	}
	var all []string
	state := ""
	for _, a := range list {
		all = append(all, a.Labels["alertname"]+"{result="+a.Labels["result"]+"}="+a.State)
		if a.Labels["alertname"] != name {
			continue
		}
		ok := true
		for k, v := range match {
			ok = ok && a.Labels[k] == v
		}
		if ok {
			state = a.State
		}
	}
	return state, strings.Join(all, ", ")
}

// waitUntil polls cond until it holds; the deadline only catches a hang.
// cond's second result says what it saw, for the failure message.
func waitUntil(t *testing.T, deadline time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	end := time.Now().Add(deadline)
	for {
		ok, saw := cond()
		if ok {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("timed out after %v waiting for %s; last seen: %s", deadline, what, saw)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestE2EAlertFiresAndResolves: a daemon holds a 20-second token, the
// issuer starts failing, and Prometheus, scraping the daemon with the
// shipped rules unchanged, fires TokencacheTokenNotRefreshed once the
// token's time left falls below 0.6 of its refresh window (and
// TokencacheIssuerFailing by the issuer's code); once the issuer answers
// again the daemon holds a new token and the alert resolves.
func TestE2EAlertFiresAndResolves(t *testing.T) {
	promBin := requirePrometheus(t)
	w := newWorld(t, 0)
	const lifetime = 20 * time.Second
	w.issuer.SetLifetime(lifetime)
	d := w.startDaemon(w.env())
	t.Cleanup(func() { w.record(d.out.String()) })
	p := startPrometheus(t, promBin, strings.TrimPrefix(d.base, "http://"))

	// Prometheus scrapes the daemon before anything fails.
	waitUntil(t, 60*time.Second, "the first scrape", func() (bool, string) {
		resp, err := http.Get(p.base + "/api/v1/query?query=" + "tokencache_token_refresh_window_seconds%3E0")
		if err != nil {
			return false, err.Error()
		}
		defer resp.Body.Close()
		var body struct {
			Data struct {
				Result []json.RawMessage `json:"result"`
			} `json:"data"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
			return false, err.Error()
		}
		return len(body.Data.Result) == 1, fmt.Sprintf("%d series", len(body.Data.Result))
	})
	if s, all := p.state("TokencacheTokenNotRefreshed", nil); s != "" {
		t.Fatalf("alert active before any failure: %s", all)
	}

	before := w.issuer.Stats().TokenCalls
	failedAt := time.Now()
	w.issuer.FailAlways(issuertest.Fail(http.StatusServiceUnavailable, ""))
	waitUntil(t, 90*time.Second, "TokencacheTokenNotRefreshed firing", func() (bool, string) {
		s, all := p.state("TokencacheTokenNotRefreshed", map[string]string{"namespace": w.ns, "job": "tokencache"})
		return s == "firing", all
	})
	firedAfter := time.Since(failedAt)
	waitUntil(t, 60*time.Second, "TokencacheIssuerFailing firing by code", func() (bool, string) {
		s, all := p.state("TokencacheIssuerFailing", map[string]string{"namespace": w.ns, "result": "service-unavailable"})
		return s == "firing", all
	})
	failedCalls := w.issuer.Stats().TokenCalls - before

	recoveredAt := time.Now()
	w.issuer.Reset()
	waitUntil(t, 90*time.Second, "TokencacheTokenNotRefreshed resolved", func() (bool, string) {
		s, all := p.state("TokencacheTokenNotRefreshed", nil)
		return s == "", all
	})
	resolvedAfter := time.Since(recoveredAt)
	t.Logf("token lifetime %v: TokencacheTokenNotRefreshed firing %v after the issuer started failing (%d failed issuer calls), resolved %v after it answered again",
		lifetime, firedAfter.Round(100*time.Millisecond), failedCalls, resolvedAfter.Round(100*time.Millisecond))
}
