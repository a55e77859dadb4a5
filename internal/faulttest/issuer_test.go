package faulttest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokencache/tokencache/tokencache"
)

// issuerMode is what the fake issuer answers.
type issuerMode int32

const (
	modeOK           issuerMode = iota // a token
	modeUnavailable                    // 503 with Retry-After: 1
	modeHang                           // no answer until the client gives up
	modeStorm                          // alternately modeUnavailable and modeHang
	modeInvalidGrant                   // 400 invalid-grant: permanent
)

// issuer is a fake token endpoint shared by every replica of a test, in
// this process or in child processes. It counts its calls, mints unique
// tokens whose expiry it states absolutely (all processes share the
// machine's clock), and can be told to fail, to hang, or to hold the next
// calls until released.
type issuer struct {
	URL string

	calls  atomic.Int64 // requests received
	minted atomic.Int64 // tokens handed out
	life   atomic.Int64 // token lifetime, nanoseconds
	mode   atomic.Int32 // an issuerMode

	mu       sync.Mutex      // guards gates, answered
	gates    []chan struct{} // the next calls wait for these, in order
	answered []time.Time     // when each call was answered
	srv      *httptest.Server
}

// newIssuer starts a fake issuer minting tokens that live life; it is
// closed when the test ends.
func newIssuer(t testing.TB, life time.Duration) *issuer {
	t.Helper()
	is := &issuer{}
	is.life.Store(int64(life))
	is.srv = httptest.NewServer(is)
	is.URL = is.srv.URL
	t.Cleanup(is.close)
	return is
}

func (is *issuer) close() {
	is.mu.Lock()
	for _, g := range is.gates {
		close(g)
	}
	is.gates = nil
	is.mu.Unlock()
	is.srv.CloseClientConnections()
	is.srv.Close()
}

func (is *issuer) setMode(m issuerMode) { is.mode.Store(int32(m)) }

// holdNext makes the next call wait, unanswered, until release is called
// (or its client goes away).
func (is *issuer) holdNext() (release func()) {
	g := make(chan struct{})
	is.mu.Lock()
	is.gates = append(is.gates, g)
	is.mu.Unlock()
	var once sync.Once
	return func() { once.Do(func() { close(g) }) }
}

// lastAnswer is when the issuer last answered.
func (is *issuer) lastAnswer() time.Time {
	is.mu.Lock()
	defer is.mu.Unlock()
	if len(is.answered) == 0 {
		return time.Time{}
	}
	return is.answered[len(is.answered)-1]
}

func (is *issuer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := is.calls.Add(1)
	is.mu.Lock()
	var gate chan struct{}
	if len(is.gates) > 0 {
		gate, is.gates = is.gates[0], is.gates[1:]
	}
	is.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-r.Context().Done():
			return
		}
	}
	mode := issuerMode(is.mode.Load())
	if mode == modeStorm {
		mode = modeUnavailable
		if n%2 == 0 {
			mode = modeHang
		}
	}
	if mode == modeHang {
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
		return
	}
	defer func() {
		is.mu.Lock()
		is.answered = append(is.answered, time.Now())
		is.mu.Unlock()
	}()
	w.Header().Set("Content-Type", "application/json")
	switch mode {
	case modeUnavailable:
		w.Header().Set("Retry-After", "1")
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprint(w, `{"code":"internal-server-error"}`)
	case modeInvalidGrant:
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprint(w, `{"code":"invalid-grant"}`)
	default:
		m := is.minted.Add(1)
		exp := time.Now().Add(time.Duration(is.life.Load()))
		fmt.Fprintf(w, `{"access_token":"tok-%d-%d","token_type":"Bearer","expires_at_ns":%d}`, m, n, exp.UnixNano())
	}
}

// issuerError is what httpFetcher returns for a failed call. It has the
// optional methods documented on tokencache.Fetcher.
type issuerError struct {
	Status int    // HTTP status, 0 if no answer
	Code   string // issuer code, or "timeout", "network"
	After  time.Duration
	Err    error
}

func (e *issuerError) Error() string {
	if e.Status == 0 {
		return fmt.Sprintf("issuer: %s: %v", e.Code, e.Err)
	}
	return fmt.Sprintf("issuer: HTTP %d [%s]", e.Status, e.Code)
}
func (e *issuerError) Unwrap() error { return e.Err }
func (e *issuerError) Retryable() bool {
	return e.Status == 0 || e.Status >= 500 || e.Status == http.StatusTooManyRequests || e.Status == http.StatusRequestTimeout
}
func (e *issuerError) ErrorCode() string         { return e.Code }
func (e *issuerError) RetryAfter() time.Duration { return e.After }

// httpFetcher is every replica's Fetcher: a POST to the fake issuer with
// its own client timeout (a hung issuer is a retryable "timeout").
type httpFetcher struct {
	url    string
	client *http.Client
}

var _ tokencache.Fetcher = (*httpFetcher)(nil)

func newHTTPFetcher(url string, timeout time.Duration) *httpFetcher {
	return &httpFetcher{url: url, client: &http.Client{
		Timeout:   timeout,
		Transport: &http.Transport{MaxIdleConnsPerHost: 4, IdleConnTimeout: 5 * time.Second},
	}}
}

// close drops idle connections, so no transport goroutine outlives a test.
func (f *httpFetcher) close() { f.client.CloseIdleConnections() }

func (f *httpFetcher) Fetch(ctx context.Context) (tokencache.Token, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, f.url, nil)
	if err != nil {
		return tokencache.Token{}, err
	}
	resp, err := f.client.Do(req)
	if err != nil {
		code := "network"
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			code = "timeout"
		}
		if ctx.Err() != nil {
			return tokencache.Token{}, ctx.Err()
		}
		return tokencache.Token{}, &issuerError{Code: code, Err: err}
	}
	defer resp.Body.Close()
	var body struct {
		Code        string `json:"code"`
		AccessToken string `json:"access_token"`
		TokenType   string `json:"token_type"`
		ExpiresAtNS int64  `json:"expires_at_ns"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&body); err != nil {
		return tokencache.Token{}, &issuerError{Status: resp.StatusCode, Code: "invalid-response", Err: err}
	}
	if resp.StatusCode != http.StatusOK {
		e := &issuerError{Status: resp.StatusCode, Code: body.Code}
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil {
			e.After = time.Duration(s) * time.Second
		}
		return tokencache.Token{}, e
	}
	return tokencache.Token{AccessToken: body.AccessToken, TokenType: body.TokenType, Expiry: time.Unix(0, body.ExpiresAtNS)}, nil
}
