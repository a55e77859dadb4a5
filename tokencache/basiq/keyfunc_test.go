package basiq_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/tokencache/tokencache/tokencache/basiq"
)

// TestNewFuncUsesTheKeyOfTheMoment: a key rotated while the Fetcher is in
// use is sent by the next request, and the Identity follows it.
func TestNewFuncUsesTheKeyOfTheMoment(t *testing.T) {
	srv, _, clk := setup(t)
	const newKey = "bmV3LWFwaS1rZXktYWZ0ZXItcm90YXRpb24tNDI0Mg=="
	var key atomic.Pointer[string]
	k := testKey
	key.Store(&k)
	f := basiq.NewFunc(func() string { return *key.Load() }, basiq.WithBaseURL(srv.URL()), basiq.WithClock(clk.Now))
	if err := f.Validate(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Fetch(context.Background()); err != nil {
		t.Fatalf("with the first key: %v", err)
	}
	before := f.Identity()
	uf, err := f.ForUser("user-1")
	if err != nil {
		t.Fatal(err)
	}

	srv.SetAPIKey(newKey) // the issuer accepts only the new key now
	_, err = f.Fetch(context.Background())
	assertNoSecret(t, err, testKey, newKey)
	if be := asError(t, err); be.Status != http.StatusUnauthorized {
		t.Fatalf("old key after the issuer's rotation: got status %d, want 401", be.Status)
	}
	nk := newKey
	key.Store(&nk)
	if _, err := f.Fetch(context.Background()); err != nil {
		t.Fatalf("with the rotated key: %v", err)
	}
	if _, err := uf.Fetch(context.Background()); err != nil {
		t.Fatalf("a user's fetcher with the rotated key: %v", err)
	}
	if f.Identity() == before {
		t.Error("the Identity did not change with the key")
	}
	reqs := srv.Requests()
	if n := len(reqs); n != 4 || reqs[0].KeyOK != true || reqs[1].KeyOK || !reqs[2].KeyOK || !reqs[3].KeyOK {
		t.Errorf("got requests %+v, want ok, refused, ok, ok", reqs)
	}
}

// TestNewFuncChecksEachKey: a key func that returns an unusable key fails
// the Fetch with a *ConfigError, sends nothing, and recovers with the next
// good key; a nil func is a configuration error.
func TestNewFuncChecksEachKey(t *testing.T) {
	var calls atomic.Int64
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.WriteHeader(http.StatusBadRequest)
		_, _ = io.WriteString(w, `{"type":"list","correlationId":"c","data":[{"type":"error","code":"invalid-request","title":"t","detail":"echo `+r.Header.Get("Authorization")+`"}]}`)
	}))
	defer ts.Close()
	var key atomic.Pointer[string]
	set := func(s string) { key.Store(&s) }
	set("")
	f := basiq.NewFunc(func() string { return *key.Load() }, basiq.WithBaseURL(ts.URL))
	var ce *basiq.ConfigError
	if err := f.Validate(); !errors.As(err, &ce) {
		t.Fatalf("Validate with an empty key: got %v, want a *ConfigError", err)
	}
	for _, bad := range []string{"", "has space", "Basic " + testKey} {
		set(bad)
		if _, err := f.Fetch(context.Background()); !errors.As(err, &ce) || ce.Field != "api key" {
			t.Errorf("key %d bytes: got %v, want an api key *ConfigError", len(bad), err)
		}
	}
	if calls.Load() != 0 {
		t.Errorf("the issuer got %d requests with unusable keys", calls.Load())
	}
	set(testKey)
	_, err := f.Fetch(context.Background())
	assertNoSecret(t, err, testKey)
	if calls.Load() != 1 {
		t.Errorf("got %d requests, want 1", calls.Load())
	}
	if err := basiq.NewFunc(nil).Validate(); !errors.As(err, &ce) {
		t.Errorf("NewFunc(nil): got %v, want a *ConfigError", err)
	}
	if _, err := basiq.NewFunc(nil).Fetch(context.Background()); !errors.As(err, &ce) {
		t.Errorf("NewFunc(nil).Fetch: got %v, want a *ConfigError", err)
	}
}
