package tokencache

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tokencache/tokencache/tokencache/internal/protocol"
)

// FuzzDecodeRecord feeds the Redis value decoder whatever a hand edit or an
// attacker could store: it must return a record or a *ValueError, never
// panic, and a record it accepts must be usable.
func FuzzDecodeRecord(f *testing.F) {
	seeds, _ := filepath.Glob(filepath.Join("testdata", "values", "*.json"))
	for _, p := range seeds {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`{"access_token":1}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		rec, err := protocol.DecodeRecord("k", raw)
		if err != nil {
			if _, ok := err.(*protocol.RecordError); !ok {
				t.Fatalf("error of type %T, want *protocol.RecordError", err)
			}
			return
		}
		if rec.AccessToken == "" || rec.Lifetime() <= 0 {
			t.Fatalf("accepted an unusable record: %+v", rec)
		}
		if tok := recordToken(rec); tok.Expiry.IsZero() {
			t.Fatalf("accepted a record without an expiry")
		}
	})
}

// FuzzDecodeEvent feeds the events decoder arbitrary payloads: anyone who
// can PUBLISH on the channel can send them.
func FuzzDecodeEvent(f *testing.F) {
	f.Add(`{"type":"refreshed","key":"tokencache:{default}:server","generation":3,"expires_at":"2026-01-01T00:00:00Z"}`)
	f.Add(`{"type":"failed","key":"k","code":"invalid-grant","retry_at":"2026-01-01T00:00:00Z"}`)
	f.Add(`{"type":"invalidated","key":"k","generation":-1}`)
	f.Add(`not json`)
	f.Fuzz(func(t *testing.T, payload string) {
		ev, ok := protocol.DecodeEvent(payload)
		if ok && ev.Key == "" {
			t.Fatalf("accepted an event without a key")
		}
	})
}

// Decoded events are dispatched: garbage must not disturb the cache.
func TestGarbageEventsAreIgnored(t *testing.T) {
	rdb, _ := miniBackend(t)
	f := newFakeFetcher(time.Hour)
	c := newCache(t, rdb, f, fastOpts()...)
	ctx := ctxT(t)
	tok, err := c.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{
		`garbage`, `{"type":"refreshed"}`, `{"type":"invalidated","key":"other"}`,
		`{"type":"failed","key":"tokencache:{default}:server","code":"x"}`,
		`{"type":"refreshed","key":"tokencache:{default}:server","generation":99}`,
		`{"type":"bogus","key":"tokencache:{default}:server"}`,
	} {
		if err := rdb.Publish(ctx, "tokencache:{default}:events", p).Err(); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "the events to arrive", func() bool { return c.Stats().Events >= 4 })
	got, err := c.Token(ctx)
	if err != nil || got.AccessToken != tok.AccessToken {
		t.Fatalf("after garbage events: %v, %v; want the same token", got, err)
	}
	if n := f.calls.Load(); n != 1 {
		t.Errorf("issuer calls = %d, want 1", n)
	}
}
