package tokencache

import (
	"context"
	"errors"
	"testing"
	"time"

	"golang.org/x/oauth2/clientcredentials"

	"github.com/tokencache/tokencache/internal/hostile"
)

// TestClientCredentialsOwnTimeout: without a deadline on the context, the
// Fetcher's own timeout (ClientCredentialsTimeout by default) bounds a
// token endpoint that never answers.
func TestClientCredentialsOwnTimeout(t *testing.T) {
	cfg := &clientcredentials.Config{ClientID: "id", ClientSecret: "cc-secret-own-timeout", TokenURL: "http://127.0.0.1:1/token"}
	if f := ClientCredentials(cfg).(*clientCredentialsFetcher); f.timeout != ClientCredentialsTimeout {
		t.Errorf("default timeout %v, want ClientCredentialsTimeout (%v)", f.timeout, ClientCredentialsTimeout)
	}
	url, hits := hostile.Hang(t)
	cfg.TokenURL = url + "/token"
	f := &clientCredentialsFetcher{cfg: cfg, now: time.Now, timeout: 50 * time.Millisecond}
	_, err := f.Fetch(context.Background())
	var oe *OAuth2Error
	if !errors.As(err, &oe) || oe.Code != "timeout" {
		t.Errorf("got %v, want a timeout", err)
	}
	if hits.Load() == 0 {
		t.Error("the endpoint got no request")
	}
}
