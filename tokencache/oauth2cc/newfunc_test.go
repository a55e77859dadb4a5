package oauth2cc_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/tokencache/tokencache/tokencache"
	"github.com/tokencache/tokencache/tokencache/oauth2cc"
)

// TestNewFuncUsesTheConfigOfTheMoment: a client secret rotated while the
// Fetcher is in use is sent by the next request; the endpoint accepts only
// the new one after the rotation, and the Identity follows it.
func TestNewFuncUsesTheConfigOfTheMoment(t *testing.T) {
	const newSecret = "cc_rotated_Q7w3Er5Ty8Ui2Op4"
	var accepted atomic.Pointer[string]
	s := ccClientSecret
	accepted.Store(&s)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if id, secret, ok := r.BasicAuth(); !ok || id != ccClientID || secret != *accepted.Load() {
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, `{"error":"invalid_client","error_description":"bad secret `+secret+`"}`)
			return
		}
		_, _ = io.WriteString(w, `{"access_token":"`+ccIssuedToken+`","token_type":"Bearer","expires_in":3600}`)
	}))
	t.Cleanup(srv.Close)
	cfgOf := func(secret string) *clientcredentials.Config {
		return &clientcredentials.Config{ClientID: ccClientID, ClientSecret: secret, TokenURL: srv.URL, AuthStyle: oauth2.AuthStyleInHeader}
	}
	var cur atomic.Pointer[clientcredentials.Config]
	cur.Store(cfgOf(ccClientSecret))
	f := oauth2cc.NewFunc(cur.Load)
	if _, err := f.Fetch(context.Background()); err != nil {
		t.Fatalf("first secret: %v", err)
	}
	before := f.(tokencache.Identifier).Identity()

	ns := newSecret
	accepted.Store(&ns)
	_, err := f.Fetch(context.Background())
	var ce *oauth2cc.Error
	if !errors.As(err, &ce) || ce.Code != "invalid_client" {
		t.Fatalf("old secret after the issuer's rotation: got %v, want invalid_client", err)
	}
	if strings.Contains(err.Error(), ccClientSecret) {
		t.Fatal("the error holds the secret")
	}
	cur.Store(cfgOf(newSecret))
	if _, err := f.Fetch(context.Background()); err != nil {
		t.Fatalf("rotated secret: %v", err)
	}
	if f.(tokencache.Identifier).Identity() == before {
		t.Error("the Identity did not change with the secret")
	}
}

func TestNewFuncNilIsAConfigError(t *testing.T) {
	for _, f := range []tokencache.Fetcher{oauth2cc.NewFunc(nil), oauth2cc.NewFunc(func() *clientcredentials.Config { return nil })} {
		_, err := f.Fetch(context.Background())
		var ce *oauth2cc.Error
		if !errors.As(err, &ce) || ce.Code != "invalid-config" {
			t.Errorf("got %v, want an invalid-config *Error", err)
		}
		_ = f.(tokencache.Identifier).Identity()
	}
}
