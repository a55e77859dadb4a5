// Package fakeissuer is an interim, minimal Basiq-shaped token issuer for
// the CLI's demo and tests, the examples and docker-compose, until
// tokencache/issuertest (branch issuers) is merged. It serves POST /token,
// counts calls, and answers a wrong API key with Basiq's access-denied
// error and a correlationId. Any other GET path is an API call: 200 with a
// token it issued, 401 otherwise.
package fakeissuer

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Server is a running fake issuer.
type Server struct {
	URL string

	srv     *httptest.Server
	key     string
	latency time.Duration
	life    time.Duration
	calls   atomic.Int64
	issued  sync.Map // access token -> expiry (time.Time)
}

// Handler returns an issuer as an http.Handler, to serve on an address of
// the caller's choosing (cmd/fakeissuer). Its Calls counts as Start's do.
func Handler(apiKey string, latency, life time.Duration) *Server {
	return &Server{key: apiKey, latency: latency, life: life}
}

// Start starts an issuer on a loopback port that accepts apiKey (as Basiq
// does: the key itself is the Basic credential, or base64 of it), answers
// after latency, and mints tokens that live for life.
func Start(apiKey string, latency, life time.Duration) *Server {
	s := &Server{key: apiKey, latency: latency, life: life}
	s.srv = httptest.NewServer(s)
	s.URL = s.srv.URL
	return s
}

// Calls reports how many /token requests were served.
func (s *Server) Calls() int64 { return s.calls.Load() }

// Close stops the server.
func (s *Server) Close() { s.srv.Close() }

// ServeHTTP implements the issuer.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/token" && r.Method == http.MethodGet {
		s.api(w, r)
		return
	}
	if r.URL.Path != "/token" || r.Method != http.MethodPost {
		writeError(w, http.StatusNotFound, "resource-not-found", "Resource not found")
		return
	}
	s.calls.Add(1)
	if s.latency > 0 {
		select {
		case <-time.After(s.latency):
		case <-r.Context().Done():
			return
		}
	}
	auth := r.Header.Get("Authorization")
	if auth != "Basic "+s.key && auth != "Basic "+base64.StdEncoding.EncodeToString([]byte(s.key)) {
		writeError(w, http.StatusForbidden, "access-denied", "Access denied: the API key is not valid")
		return
	}
	if err := r.ParseForm(); err != nil || (r.PostForm.Get("scope") != "SERVER_ACCESS" && r.PostForm.Get("scope") != "CLIENT_ACCESS") {
		writeError(w, http.StatusBadRequest, "parameter-not-valid", "scope must be SERVER_ACCESS or CLIENT_ACCESS")
		return
	}
	tok := "fake-" + randHex(16)
	s.issued.Store(tok, time.Now().Add(s.life))
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"access_token": tok,
		"token_type":   "Bearer",
		"expires_in":   int(s.life / time.Second),
	})
}

// api answers an API call: 200 for a Bearer token it issued that has not
// expired, 401 otherwise.
func (s *Server) api(w http.ResponseWriter, r *http.Request) {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	exp, known := s.issued.Load(tok)
	if !ok || !known || time.Now().After(exp.(time.Time)) {
		writeError(w, http.StatusUnauthorized, "unauthorized-access", "Token missing, unknown or expired")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"type": "list", "path": r.URL.Path, "data": []any{}})
}

func writeError(w http.ResponseWriter, status int, code, detail string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{
		"type":          "list",
		"correlationId": "corr-" + randHex(6),
		"data": []map[string]any{{
			"type": "error", "code": code, "title": http.StatusText(status), "detail": detail,
			"source": map[string]string{"pointer": "Authorization"},
		}},
	})
}

func randHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return fmt.Sprint(time.Now().UnixNano())
	}
	return hex.EncodeToString(b)
}
