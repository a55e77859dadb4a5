// Package hostile serves, for tests, the issuers an HTTP client must
// survive without leaking a credential or hanging: one that redirects to
// another server, one that never answers, and one whose body never ends.
// Each server is an httptest.Server closed when the test ends.
package hostile

import (
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
)

// Target is a server that records what reaches it. It answers 200 with an
// empty JSON object.
type Target struct {
	URL string

	requests    atomic.Int64
	credentials atomic.Int64
	mu          sync.Mutex // guards seen
	seen        []string   // Authorization values received
}

// NewTarget starts a Target.
func NewTarget(t testing.TB) *Target {
	t.Helper()
	tg := &Target{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tg.requests.Add(1)
		if a := r.Header.Get("Authorization"); a != "" || r.ContentLength > 0 {
			tg.credentials.Add(1)
			tg.mu.Lock()
			tg.seen = append(tg.seen, a)
			tg.mu.Unlock()
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte("{}"))
	}))
	t.Cleanup(srv.Close)
	tg.URL = srv.URL
	return tg
}

// Requests is how many requests reached the target.
func (tg *Target) Requests() int64 { return tg.requests.Load() }

// WithCredentials is how many requests reached it carrying an
// Authorization header or a body (where a form or JSON credential goes).
func (tg *Target) WithCredentials() int64 { return tg.credentials.Load() }

// Redirect starts a server that answers every request with status (a 3xx)
// and Location to (its path appended), and returns its URL.
func Redirect(t testing.TB, status int, to string) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Location", to+r.URL.Path)
		w.WriteHeader(status)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// Hang starts a server that reads each request and never answers it (until
// the client gives up or the test ends), and returns its URL and a count
// of the requests it received.
func Hang(t testing.TB) (string, *atomic.Int64) {
	t.Helper()
	stop := make(chan struct{})
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		select {
		case <-r.Context().Done():
		case <-stop:
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(stop) }) // runs first: releases the handlers
	return srv.URL, &n
}

// Endless starts a server that answers status with contentType and a body
// that does not end (it stops after 1 GiB, or when the client hangs up),
// and returns its URL and the bytes it managed to send.
func Endless(t testing.TB, status int, contentType string) (string, *atomic.Int64) {
	t.Helper()
	var sent atomic.Int64
	rest := make([]byte, 32<<10)
	for i := range rest {
		rest[i] = 'a'
	}
	first := rest
	if contentType == "application/json" {
		first = append([]byte(`{"access_token":"`), rest...) // a string that never closes
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", contentType)
		w.WriteHeader(status)
		chunk := first
		for i := 0; i < 1<<15; i++ {
			n, err := w.Write(chunk)
			sent.Add(int64(n))
			if err != nil || r.Context().Err() != nil {
				return
			}
			chunk = rest
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL, &sent
}
