package tokencache

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/tokencache/internal/protocol"
)

func testKey(t *testing.T) []byte {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

func ring(t *testing.T, active string, keys map[string][]byte) *KeyRing {
	t.Helper()
	kr, err := NewKeyRing(active, keys)
	if err != nil {
		t.Fatal(err)
	}
	return kr
}

// redisHolds reports whether any key or value in Redis contains s.
func redisHolds(t *testing.T, rdb redis.UniversalClient, s string) bool {
	t.Helper()
	ctx := context.Background()
	keys, err := rdb.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if strings.Contains(k, s) {
			return true
		}
		if v, err := rdb.Get(ctx, k).Result(); err == nil && strings.Contains(v, s) {
			return true
		}
	}
	return false
}

func TestEncryptionAtRest(t *testing.T) {
	forEachBackend(t, func(t *testing.T, rdb redis.UniversalClient, _ *miniredis.Miniredis) {
		k1, k2 := testKey(t), testKey(t)
		ctx := ctxT(t)
		f := newFakeFetcher(time.Hour)
		a := newCache(t, rdb, f, fastOpts(WithEncryption(ring(t, "k1", map[string][]byte{"k1": k1, "k2": k2})))...)
		b := newCache(t, rdb, f, fastOpts(WithEncryption(ring(t, "k2", map[string][]byte{"k1": k1, "k2": k2})))...)
		tok, err := a.Token(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if redisHolds(t, rdb, tok.AccessToken) {
			t.Fatal("the token is readable in Redis despite encryption")
		}
		st, err := a.Inspect(ctx)
		if err != nil || st.KeyID != "k1" || st.Generation != 1 || st.ExpiresAt.IsZero() || st.TokenFingerprint != tok.Fingerprint() {
			t.Fatalf("Inspect of an encrypted token: %+v, %v; want its metadata and key id k1", st, err)
		}
		// b reads a's token (k1), then rotates to its own active key (k2).
		if got, err := b.Token(ctx); err != nil || got.AccessToken != tok.AccessToken {
			t.Fatalf("replica with the ring: %v, %v", got, err)
		}
		res, err := b.Refresh(ctx, 0, true)
		if err != nil {
			t.Fatal(err)
		}
		if st, _ := b.Inspect(ctx); st.KeyID != "k2" {
			t.Errorf("after b's refresh the key id is %q, want k2", st.KeyID)
		}
		eventually(t, "a to read the k2 token", func() bool {
			got, err := a.Token(ctx)
			return err == nil && got.AccessToken == res.Token.AccessToken
		})
	})
}

func TestEncryptionWrongOrMissingKey(t *testing.T) {
	rdb, _ := miniBackend(t)
	ctx := ctxT(t)
	k1 := testKey(t)
	f := newFakeFetcher(time.Hour)
	writer := newCache(t, rdb, f, fastOpts(WithEncryption(ring(t, "k1", map[string][]byte{"k1": k1})))...)
	if _, err := writer.Token(ctx); err != nil {
		t.Fatal(err)
	}
	for name, opts := range map[string][]Option{
		"unknown key id":     {WithEncryption(ring(t, "k9", map[string][]byte{"k9": testKey(t)}))},
		"right id wrong key": {WithEncryption(ring(t, "k1", map[string][]byte{"k1": testKey(t)}))},
		"no key ring":        nil,
	} {
		t.Run(name, func(t *testing.T) {
			c := newCache(t, rdb, f, fastOpts(opts...)...)
			_, err := c.Token(ctx)
			var ke *KeyError
			if !errors.As(err, &ke) || ke.KeyID != "k1" || !errors.Is(err, ErrDecrypt) {
				t.Fatalf("got %v, want a *KeyError naming key id k1", err)
			}
			if strings.Contains(err.Error(), base64.StdEncoding.EncodeToString(k1)) {
				t.Fatal("the error shows key material")
			}
		})
	}
	if got := f.calls.Load(); got != 1 {
		t.Errorf("issuer calls = %d, want 1: an undecryptable token must not be overwritten", got)
	}
}

func TestEncryptionBindsTheRedisKey(t *testing.T) {
	rdb, _ := miniBackend(t)
	ctx := ctxT(t)
	kr := ring(t, "k1", map[string][]byte{"k1": testKey(t)})
	f := newFakeFetcher(time.Hour)
	a := newCache(t, rdb, f, fastOpts(WithEncryption(kr), WithNamespace("a"))...)
	if _, err := a.Token(ctx); err != nil {
		t.Fatal(err)
	}
	// Copy a's value to namespace b's key: it must not decrypt there.
	v, _ := rdb.Get(ctx, "tokencache:{a}:server").Result()
	rdb.Set(ctx, "tokencache:{b}:server", v, time.Hour)
	b := newCache(t, rdb, f, fastOpts(WithEncryption(kr), WithNamespace("b"))...)
	if _, err := b.Token(ctx); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("a value moved to another key: got %v, want ErrDecrypt", err)
	}
}

func TestParseKeyRing(t *testing.T) {
	k := base64.StdEncoding.EncodeToString(make([]byte, 32))
	short := base64.StdEncoding.EncodeToString(make([]byte, 16))
	kr, err := ParseKeyRing("new:" + k + ", old:" + k)
	if err != nil || kr.ActiveKeyID() != "new" {
		t.Fatalf("ParseKeyRing: %v, %v; want active key new", kr, err)
	}
	for _, bad := range []string{"", "k1", ":" + k, "k1:not base64!", "k1:" + short, "k1:" + k + ",k1:" + k, "bad id:" + k, "k{1}:" + k} {
		if _, err := ParseKeyRing(bad); err == nil {
			t.Errorf("ParseKeyRing(%q) succeeded", bad)
		} else if strings.Contains(err.Error(), k) {
			t.Errorf("ParseKeyRing(%q) error shows the key: %v", bad, err)
		}
	}
}

func TestCredentialFingerprintIsKeyedAndNeverAnEventOracle(t *testing.T) {
	s := redistest.Start(t)
	ctx := ctxT(t)
	k1, k2 := testKey(t), testKey(t)
	f := newFakeFetcher(time.Hour)
	unkeyed := identityFingerprint(f, nil)

	// Without a ring: the events carry no fingerprint of the credential.
	sub := s.Client(t).Subscribe(ctx, "tokencache:{plain}:events")
	t.Cleanup(func() { _ = sub.Close() })
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	plain := newCache(t, s.Client(t), f, fastOpts(WithNamespace("plain"), WithRefreshAhead(0.01))...)
	if _, err := plain.Token(ctx); err != nil {
		t.Fatal(err)
	}
	f.failNext(&issuerErr{code: "access-denied"})
	if _, err := plain.Refresh(ctx, 0, true); err == nil {
		t.Fatal("the forced refresh did not fail")
	}
	seen := map[string]bool{}
	for len(seen) < 2 {
		m, err := sub.ReceiveMessage(ctx)
		if err != nil {
			t.Fatalf("waiting for the refreshed and failed events (have %v): %v", seen, err)
		}
		if strings.Contains(m.Payload, unkeyed) || strings.Contains(m.Payload, `"credential"`) {
			t.Fatalf("an event carries the credential's unkeyed fingerprint: %s", m.Payload)
		}
		var ev protocol.Event
		_ = json.Unmarshal([]byte(m.Payload), &ev)
		if ev.Type == protocol.EventRefreshed || ev.Type == protocol.EventFailed {
			seen[ev.Type] = true
		}
	}

	// With a ring: the stored fingerprint is an HMAC, and replicas whose
	// active keys differ (a rotation under way) share one token.
	a := newCache(t, s.Client(t), f, fastOpts(WithNamespace("sealed"), WithEncryption(ring(t, "k1", map[string][]byte{"k1": k1, "k2": k2})))...)
	b := newCache(t, s.Client(t), f, fastOpts(WithNamespace("sealed"), WithEncryption(ring(t, "k2", map[string][]byte{"k1": k1, "k2": k2})))...)
	before := f.calls.Load()
	ta, err := a.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tb, err := b.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ta.AccessToken != tb.AccessToken || f.calls.Load()-before != 1 {
		t.Fatalf("replicas with different active keys: same token %v, issuer calls %d; want one token, one call",
			ta.AccessToken == tb.AccessToken, f.calls.Load()-before)
	}
	st, err := b.Inspect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(st.Fingerprint, "hmac-sha256:k1:") || strings.Contains(st.Fingerprint, strings.TrimPrefix(unkeyed, "sha256:")) {
		t.Fatalf("stored fingerprint %q, want an HMAC under key k1", st.Fingerprint)
	}
}

func TestSealedValueWithRaisedGenerationIsRefused(t *testing.T) {
	s := redistest.Start(t)
	ctx := ctxT(t)
	rdb := s.Client(t)
	kr := ring(t, "k1", map[string][]byte{"k1": testKey(t)})
	f := newFakeFetcher(time.Hour)
	a := newCache(t, rdb, f, fastOpts(WithEncryption(kr))...)
	if _, err := a.Token(ctx); err != nil {
		t.Fatal(err)
	}
	key, _, _, _ := a.Keys()
	raw, err := rdb.Get(ctx, key).Result()
	if err != nil {
		t.Fatal(err)
	}
	// Someone with write access puts back the sealed value claiming a
	// newer generation, so that it would win over the fleet's token.
	var v map[string]any
	if err := json.Unmarshal([]byte(raw), &v); err != nil {
		t.Fatal(err)
	}
	v["generation"] = 99
	edited, _ := json.Marshal(v)
	if err := rdb.Set(ctx, key, edited, time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	b := newCache(t, rdb, f, fastOpts(WithEncryption(kr))...)
	if _, err := b.Token(ctx); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("Token over a sealed value with its generation raised = %v, want ErrDecrypt", err)
	}
}

// A token sealed with a key this replica lacks carries a credential
// fingerprint keyed under that key: the replica cannot tell whether it is
// its own credential's (and it lacks the key) or another deployment's, so
// it reports a KeyError naming the key id and does not overwrite it. (An
// unkeyed fingerprint that would tell would also let anyone who can read
// it test guesses of the credential offline.)
func TestValueSealedWithAKeyThisReplicaLacksIsReportedNotOverwritten(t *testing.T) {
	rdb, _ := miniBackend(t)
	k1, k2 := make([]byte, 32), make([]byte, 32)
	rand.Read(k1)
	rand.Read(k2)
	r1, _ := NewKeyRing("a", map[string][]byte{"a": k1})
	r2, _ := NewKeyRing("b", map[string][]byte{"b": k2})
	f1 := newFakeFetcher(time.Hour)
	f1.id = "deployment-1"
	f2 := newFakeFetcher(time.Hour)
	f2.id = "deployment-2"
	c1 := newCache(t, rdb, f1, fastOpts(WithEncryption(r1))...)
	c2 := newCache(t, rdb, f2, fastOpts(WithEncryption(r2))...)
	ctx := ctxT(t)
	if _, err := c1.Token(ctx); err != nil {
		t.Fatal(err)
	}
	_, err := c2.Token(ctx)
	var ke *KeyError
	if !errors.As(err, &ke) || ke.KeyID != "a" || f2.calls.Load() != 0 {
		t.Errorf("deployment-2 over a value sealed with a key it lacks: %v, issuer calls %d; want a KeyError naming key id a, no issuer call", err, f2.calls.Load())
	}
}
