package tokencache

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// rotatingFetcher is a fakeFetcher whose credential rotates while the cache
// runs, as basiq.NewFunc's does when its key file changes.
type rotatingFetcher struct {
	*fakeFetcher
	id atomic.Pointer[string]
}

func (f *rotatingFetcher) Identity() string { return *f.id.Load() }

func (f *rotatingFetcher) rotate(id string) { f.id.Store(&id) }

// TestCredentialRotationMakesTheOldTokenAnotherCredentials pins what a
// credential rotated under a running cache does: the token in memory is
// served until the cache next reads Redis; that read finds a token minted
// under the previous credential, which is another credential's, and
// fetches one under the new credential, recorded with the new fingerprint.
func TestCredentialRotationMakesTheOldTokenAnotherCredentials(t *testing.T) {
	rdb, _ := miniBackend(t)
	ctx := ctxT(t)
	f := &rotatingFetcher{fakeFetcher: newFakeFetcher(time.Hour)}
	f.rotate("key-1")
	c := newCache(t, rdb, f, fastOpts()...)
	old, err := c.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st, err := c.Inspect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	oldFP := st.Fingerprint

	f.rotate("key-2")
	if tok, err := c.Token(ctx); err != nil || tok.AccessToken != old.AccessToken || f.calls.Load() != 1 {
		t.Fatalf("after the rotation, from memory: got %v, %v, %d issuer calls; want the held token, 1 call", tok, err, f.calls.Load())
	}
	res, err := c.Refresh(ctx, 0, false)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Refreshed || f.calls.Load() != 2 {
		t.Fatalf("a read after the rotation: refreshed=%v with %d issuer calls, want a refresh, 2 calls", res.Refreshed, f.calls.Load())
	}
	if tok, err := c.Token(ctx); err != nil || tok.AccessToken == old.AccessToken {
		t.Fatalf("after the read: got %v, %v; want the new credential's token", tok, err)
	}
	st, err = c.Inspect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Fingerprint == oldFP || st.Fingerprint != identityFingerprint(f, nil) {
		t.Errorf("stored fingerprint %s, want the new credential's %s (the old was %s)", st.Fingerprint, identityFingerprint(f, nil), oldFP)
	}

	// A replica still on the previous credential does not serve it.
	stale := &rotatingFetcher{fakeFetcher: newFakeFetcher(time.Hour)}
	stale.rotate("key-1")
	b := newCache(t, rdb, stale, fastOpts()...)
	tok, err := b.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if stale.calls.Load() != 1 || tok.AccessToken == old.AccessToken {
		t.Errorf("a replica on the old credential made %d issuer calls, want 1 of its own", stale.calls.Load())
	}
}

// TestKeyRingReplace: a ring replaced under a running cache seals the next
// token under its active key and still opens what the previous active key
// sealed, as long as it holds that key.
func TestKeyRingReplace(t *testing.T) {
	rdb, _ := miniBackend(t)
	ctx := ctxT(t)
	k1, k2 := testKey(t), testKey(t)
	kr := ring(t, "k1", map[string][]byte{"k1": k1})
	f := newFakeFetcher(time.Hour)
	c := newCache(t, rdb, f, fastOpts(WithEncryption(kr))...)
	if _, err := c.Token(ctx); err != nil {
		t.Fatal(err)
	}
	kr.Replace(ring(t, "k2", map[string][]byte{"k2": k2, "k1": k1}))
	if kr.ActiveKeyID() != "k2" {
		t.Fatalf("active key %q after Replace, want k2", kr.ActiveKeyID())
	}
	// Another replica with only the new ring reads the token k1 sealed.
	reader := newCache(t, rdb, f, fastOpts(WithEncryption(ring(t, "k2", map[string][]byte{"k2": k2, "k1": k1})))...)
	if _, err := reader.Token(ctx); err != nil || f.calls.Load() != 1 {
		t.Fatalf("reading the k1 token with the new ring: %v, %d issuer calls; want it served, 1 call", err, f.calls.Load())
	}
	if _, err := c.Refresh(ctx, 0, true); err != nil {
		t.Fatal(err)
	}
	st, err := c.Inspect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.KeyID != "k2" || !strings.HasPrefix(st.Fingerprint, "hmac-sha256:k2:") {
		t.Errorf("after Replace, sealed under %q with fingerprint %s; want k2 for both", st.KeyID, st.Fingerprint)
	}
	kr.Replace(nil) // ignored
	if kr.ActiveKeyID() != "k2" {
		t.Errorf("Replace(nil) changed the ring")
	}
}
