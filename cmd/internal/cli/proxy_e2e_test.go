package cli

import (
	"net/http"
	"testing"
)

// TestE2EProxyDefaultsNeverThrottleOneSequentialClient sends 1,000
// sequential requests through "tokencache proxy" on loopback TCP (where
// every local process shares one bucket) with its default settings and
// counts the answers: every one is 200, none 429. The same client through
// a proxy given a limit (--rate 1 --burst 200: serve's burst, and a rate
// no machine is slow enough to stay under) is throttled, so the count
// tells the two apart. (Before, the default was serve's 100 a second.)
func TestE2EProxyDefaultsNeverThrottleOneSequentialClient(t *testing.T) {
	w := newWorld(t, 0)
	env := w.env(EnvListenSecret + "=" + e2eListenSecret)
	const n = 1000
	count := func(args ...string) map[int]int {
		t.Helper()
		addr := freeAddr(t)
		p := w.startLocal(env, addr, append([]string{"proxy", "--listen", addr, "--upstream", w.issuer.URL()}, args...)...)
		defer p.stop(w)
		c := &http.Client{Transport: &http.Transport{}}
		defer c.CloseIdleConnections()
		got := map[int]int{}
		for range n {
			code, _ := w.localDo(c, http.MethodGet, "http://"+addr+"/api/seq", "", e2eListenSecret)
			got[code]++
		}
		return got
	}
	if got := count(); got[http.StatusOK] != n {
		t.Errorf("default settings: answers by status %v, want %d 200s and no 429", got, n)
	}
	if got := count("--rate", "1", "--burst", "200"); got[http.StatusTooManyRequests] == 0 {
		t.Errorf("--rate 1 --burst 200: answers by status %v, want some 429s (else this test proves nothing)", got)
	} else {
		t.Logf("--rate 1 --burst 200: answers by status %v", got)
	}
}
