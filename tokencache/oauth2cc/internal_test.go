package oauth2cc

import (
	"context"
	"errors"
	"testing"
	"time"

	"golang.org/x/oauth2/clientcredentials"

	"github.com/tokencache/tokencache/internal/hostile"
)

// TestOwnTimeout: without a deadline on the context, the
// Fetcher's own timeout (Timeout by default) bounds a
// token endpoint that never answers.
func TestOwnTimeout(t *testing.T) {
	cfg := &clientcredentials.Config{ClientID: "id", ClientSecret: "cc-secret-own-timeout", TokenURL: "http://127.0.0.1:1/token"}
	if f := New(cfg).(*fetcher); f.timeout != Timeout {
		t.Errorf("default timeout %v, want Timeout (%v)", f.timeout, Timeout)
	}
	url, hits := hostile.Hang(t)
	cfg.TokenURL = url + "/token"
	f := &fetcher{cfg: func() *clientcredentials.Config { return cfg }, now: time.Now, timeout: 50 * time.Millisecond}
	_, err := f.Fetch(context.Background())
	var oe *Error
	if !errors.As(err, &oe) || oe.Code != "timeout" {
		t.Errorf("got %v, want a timeout", err)
	}
	if hits.Load() == 0 {
		t.Error("the endpoint got no request")
	}
}
