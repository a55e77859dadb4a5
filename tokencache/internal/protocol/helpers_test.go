package protocol

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/internal/redistest"
)

// server is a Redis for one test: miniredis, or a real redis-server
// (started by redistest; skipped without one unless
// TOKENCACHE_REQUIRE_REDIS=1).
type server struct {
	rdb  *redis.Client
	mr   *miniredis.Miniredis // nil on a real redis-server
	real *redistest.Server    // nil on miniredis
}

// forEachServer runs f on miniredis and on a real redis-server.
func forEachServer(t *testing.T, f func(t *testing.T, s server)) {
	t.Run("miniredis", func(t *testing.T) {
		mr := miniredis.RunT(t)
		rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
		t.Cleanup(func() { _ = rdb.Close() })
		f(t, server{rdb: rdb, mr: mr})
	})
	t.Run("redis-server", func(t *testing.T) {
		rs := redistest.Start(t)
		f(t, server{rdb: rs.Client(t), real: rs})
	})
}

// as returns a client of s logged in as an ACL user that may run
// everything but the commands denied (a real redis-server only).
func (s server) as(t *testing.T, user string, denied ...string) *redis.Client {
	t.Helper()
	ctx := ctxT(t)
	args := []any{"ACL", "SETUSER", user, "on", ">pw-" + user, "~*", "&*", "+@all"}
	for _, c := range denied {
		args = append(args, "-"+c)
	}
	if err := s.rdb.Do(ctx, args...).Err(); err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(&redis.Options{Addr: s.real.Addr, Username: user, Password: "pw-" + user})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// logBuffer is a slog handler's output, safe for concurrent use.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// newClient is the protocol over rdb in mode, logging to the returned
// buffer.
func newClient(rdb redis.UniversalClient, mode Mode) (*Client, *logBuffer) {
	logs := &logBuffer{}
	ps := NewPubSub(rdb, mode, slog.New(slog.NewTextHandler(logs, nil)))
	return NewClient(rdb, ps), logs
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// listen subscribes to channel (sharded or not) and returns the next
// message's payload, or "" if none arrives within a second after the
// caller's action.
func listen(t *testing.T, rdb *redis.Client, channel string, sharded bool) func() string {
	t.Helper()
	ctx := ctxT(t)
	var ps *redis.PubSub
	if sharded {
		ps = rdb.SSubscribe(ctx, channel)
	} else {
		ps = rdb.Subscribe(ctx, channel)
	}
	t.Cleanup(func() { _ = ps.Close() })
	if _, err := ps.Receive(ctx); err != nil { // the subscription's confirmation
		t.Fatal(err)
	}
	return func() string {
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		m, err := ps.ReceiveMessage(ctx)
		if err != nil {
			return ""
		}
		return m.Payload
	}
}

// record is a valid record of a token expiring in life, written now.
func testRecord(gen int64, life time.Duration) Record {
	now := time.Now()
	return Record{
		AccessToken: "secret-token", TokenType: "Bearer",
		ExpiresAt:  now.Add(life).UTC().Format(ExpiryLayout),
		IssuedAt:   now.UTC().Format(ExpiryLayout),
		Generation: gen, RefreshedBy: "host/1", Fingerprint: "cred-fp", TokenFP: "tok-fp",
		TTLMS: life.Milliseconds(),
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// stored decodes the record at key.
func stored(t *testing.T, rdb *redis.Client, key string) Record {
	t.Helper()
	raw, err := rdb.Get(context.Background(), key).Bytes()
	if err != nil {
		t.Fatalf("GET %s: %v", key, err)
	}
	var r Record
	if err := json.Unmarshal(raw, &r); err != nil {
		t.Fatal(err)
	}
	return r
}
