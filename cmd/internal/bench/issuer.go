package bench

import (
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/tokencache/tokencache/tokencache/issuertest"
)

// Issuer is the fake token issuer every replica calls: issuertest's
// Basiq-style /token with a fixed latency and token lifetime, behind a
// recorder that notes when each token request arrived.
type Issuer struct {
	URL    string
	APIKey string

	fake *issuertest.Server
	srv  *http.Server

	mu    sync.Mutex // guards calls
	calls []time.Time
}

// StartIssuer serves a fake issuer on a free loopback port.
func StartIssuer(latency, lifetime time.Duration) (*Issuer, error) {
	fake := issuertest.New(issuertest.WithLatency(latency), issuertest.WithLifetime(lifetime))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	is := &Issuer{URL: "http://" + ln.Addr().String(), APIKey: fake.APIKey(), fake: fake}
	is.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == issuertest.TokenPath {
			now := time.Now()
			is.mu.Lock()
			is.calls = append(is.calls, now)
			is.mu.Unlock()
		}
		fake.ServeHTTP(w, r)
	}), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = is.srv.Serve(ln) }()
	return is, nil
}

// Calls returns the arrival times of the token requests at or after
// since, each relative to since, sorted.
func (is *Issuer) Calls(since time.Time) []time.Duration {
	is.mu.Lock()
	defer is.mu.Unlock()
	var out []time.Duration
	for _, t := range is.calls {
		if !t.Before(since) {
			out = append(out, t.Sub(since))
		}
	}
	slices.Sort(out)
	return out
}

// Reset forgets the recorded calls.
func (is *Issuer) Reset() {
	is.mu.Lock()
	is.calls = nil
	is.mu.Unlock()
}

// Close stops the issuer.
func (is *Issuer) Close() {
	_ = is.srv.Close()
	is.fake.Close()
}
