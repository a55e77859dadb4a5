package tokencache

import (
	"context"
	"crypto/sha1"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/tokencache/internal/protocol"
)

// rotatingAPI is an authenticate-and-rotate API on a test clock: the
// fetcher stands for POST /authenticate, and every authorized answer
// carries a newer token in its Authorization header, whose expiry, like a
// JWT's exp, is in whole seconds of the clock. Every token it minted stays
// valid until it expires.
type rotatingAPI struct {
	now  func() time.Time
	life time.Duration

	mu    sync.Mutex // guards valid
	valid map[string]time.Time

	minted, authenticate, requests, rejected atomic.Int64
	forge                                    atomic.Bool // rotate to a token it never minted
}

func newRotatingAPI(now func() time.Time) *rotatingAPI {
	return &rotatingAPI{now: now, life: time.Hour, valid: map[string]time.Time{}}
}

func (a *rotatingAPI) mint() Token {
	n := a.minted.Add(1)
	t := Token{AccessToken: "rot-" + strconv.FormatInt(n, 10), TokenType: "Bearer", Expiry: a.now().Add(a.life).Truncate(time.Second)}
	a.mu.Lock()
	a.valid[t.AccessToken] = t.Expiry
	a.mu.Unlock()
	return t
}

func (a *rotatingAPI) fetcher() Fetcher {
	return FetcherFunc(func(context.Context) (Token, error) { a.authenticate.Add(1); return a.mint(), nil })
}

func (a *rotatingAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.requests.Add(1)
	tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	a.mu.Lock()
	exp, ok := a.valid[tok]
	a.mu.Unlock()
	if !ok || !a.now().Before(exp) {
		a.rejected.Add(1)
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	rotated := a.mint().AccessToken
	if a.forge.Load() {
		rotated = "forged-" + rotated
	}
	w.Header().Set("Authorization", "Bearer "+rotated)
	fmt.Fprint(w, "ok")
}

// extract reads the rotated token as a jwtauth Fetcher's FromResponse would.
func (a *rotatingAPI) extract(resp *http.Response) (Token, bool, error) {
	return extractMinted(resp, &a.mu, a.valid)
}

// offerCounter is a go-redis hook counting the offer script's runs: the
// only write a rotation makes.
type offerCounter struct{ n atomic.Int64 }

func (o *offerCounter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (o *offerCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		a := cmd.Args()
		if len(a) < 2 || (err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT")) {
			return err // go-redis retries with EVAL: count that one
		}
		switch name, arg := strings.ToLower(fmt.Sprint(a[0])), fmt.Sprint(a[1]); {
		case name == "evalsha" && arg == protocol.Script("offer").Hash(),
			name == "eval" && fmt.Sprintf("%x", sha1.Sum([]byte(arg))) == protocol.Script("offer").Hash():
			o.n.Add(1)
		}
		return err
	}
}
func (o *offerCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// redisWrites is the server's count of writes to the dataset (INFO
// persistence's rdb_changes_since_last_save: every command or script
// command that changed a key).
func redisWrites(t *testing.T, rdb redis.UniversalClient) int64 {
	t.Helper()
	info, err := redistest.Info(context.Background(), rdb, "persistence")
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.ParseInt(info["rdb_changes_since_last_save"], 10, 64)
	if err != nil {
		t.Fatalf("rdb_changes_since_last_save: %v", err)
	}
	return n
}

// toRefreshMoment sets clk to the latest refresh-ahead moment of the
// token the caches hold, which must come before any cache's jittered
// refresh timer (else the test would measure that timer's refresh too).
func toRefreshMoment(t *testing.T, clk *fakeClock, caches ...*Cache) {
	t.Helper()
	var moment time.Time
	for _, c := range caches {
		s := c.server.mem.l1.Load()
		if s == nil {
			t.Fatal("a replica holds no token")
		}
		if m := c.epoch.Add(time.Duration(c.server.sched.moment(s))); m.After(moment) {
			moment = m
		}
	}
	for _, c := range caches {
		if due := c.epoch.Add(time.Duration(c.server.mem.l1.Load().next)); !moment.Before(due) {
			t.Skipf("a replica's jittered refresh moment (%v) falls within the moments' spread; rerun", due.Sub(moment))
		}
	}
	clk.Advance(moment.Sub(clk.Now()))
}

// TestRotationAdoptedAtTheRefreshMoment: five replicas behind one
// redis-server call an API that rotates the token on every answer. Early
// in the token's life a thousand requests make one Redis write, the
// fleet's record that the API accepted the token (see evidence.go: a
// SET NX from each replica, one of which writes), and adopt nothing; the first
// answer after the refresh-ahead moment is adopted once for the whole
// fleet, every other replica picks it up with one read, and the renewal
// costs no authenticate call at all.
func TestRotationAdoptedAtTheRefreshMoment(t *testing.T) {
	srv := redistest.Start(t)
	admin := srv.Client(t)
	clk := newFakeClock()
	a := newRotatingAPI(clk.Now)
	api := httptest.NewServer(a)
	defer api.Close()

	const replicas = 5
	var offers offerCounter
	caches := make([]*Cache, replicas)
	clients := make([]*http.Client, replicas)
	for i := range caches {
		rdb := srv.Client(t)
		rdb.AddHook(&offers)
		caches[i] = newCache(t, rdb, a.fetcher(), fastOpts(withClock(clk), WithRotation(a.extract),
			WithTuning(Tuning{ProbeInterval: time.Hour, ProbeTimeout: time.Second}))...)
		clients[i] = &http.Client{Transport: caches[i].Transport(nil)}
	}
	ctx := ctxT(t)
	first, err := caches[0].Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range caches[1:] {
		if tok, err := c.Token(ctx); err != nil || tok.AccessToken != first.AccessToken {
			t.Fatalf("replica: %v, %v; want the fleet's token", tok, err)
		}
	}
	get := func(i int) {
		t.Helper()
		resp, err := clients[i%replicas].Get(api.URL)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d", resp.StatusCode)
		}
	}
	// requests sends n requests round the fleet, the clock moving a second
	// every 10 (rotated tokens then expire a second later every 10).
	requests := func(n int) {
		t.Helper()
		for i := range n {
			get(i)
			if i%10 == 9 {
				clk.Advance(time.Second)
			}
		}
	}

	// Early in the token's life (100 s of its hour): nothing to adopt.
	writes0, offers0 := redisWrites(t, admin), offers.n.Load()
	requests(1000)
	for _, c := range caches {
		waitFleetAccepted(t, c, first.AccessToken)
	}
	early := redisWrites(t, admin) - writes0
	t.Logf("early: 1000 requests from %d replicas: %d offers, %d Redis writes", replicas, offers.n.Load()-offers0, early)
	if n := offers.n.Load() - offers0; n != 0 || early != 1 {
		t.Errorf("early in the token's life: %d offers and %d Redis writes, want no offer and one write (the token's acceptance)", n, early)
	}

	// The refresh-ahead moment: the next answer's token is adopted once.
	toRefreshMoment(t, clk, caches...)
	reads0 := total(caches, func(s Stats) uint64 { return s.RedisReads })
	writes1, offers1 := redisWrites(t, admin), offers.n.Load()
	// A rotated token the extractor refuses (as jwtauth refuses a bad
	// signature or a distant exp) is not adopted, even now.
	a.forge.Store(true)
	get(0)
	a.forge.Store(false)
	if s := caches[0].server.mem.l1.Load(); s.tok.AccessToken != first.AccessToken || offers.n.Load() != offers1 {
		t.Fatalf("a refused rotated token was offered")
	}
	get(0)
	adopted, err := caches[0].Token(ctx)
	if err != nil || adopted.AccessToken == first.AccessToken {
		t.Fatalf("after the refresh moment: %v, %v; want the rotated token", adopted, err)
	}
	for i, c := range caches {
		eventually(t, fmt.Sprintf("replica %d to hold the adopted token", i), func() bool {
			s := c.server.mem.l1.Load()
			return s != nil && s.tok.AccessToken == adopted.AccessToken
		})
	}
	// Then the rest of the fleet keeps calling, well into the new token's life.
	requests(1000)
	offersAfter := offers.n.Load() - offers1
	writesAfter := redisWrites(t, admin) - writes1
	reads := total(caches, func(s Stats) uint64 { return s.RedisReads }) - reads0
	t.Logf("from the refresh moment: 1002 requests: %d offers, %d Redis writes, %d reads by the fleet, %d authenticate calls in all",
		offersAfter, writesAfter, reads, a.authenticate.Load())
	if offersAfter != 1 {
		t.Errorf("%d offers from the refresh moment on, want 1 for the fleet", offersAfter)
	}
	if writesAfter == 0 {
		t.Error("the adopted token was not written to Redis")
	}
	if reads != replicas-1 {
		t.Errorf("the fleet made %d reads to pick up the adopted token, want %d (one per other replica)", reads, replicas-1)
	}
	if n := a.authenticate.Load(); n != 1 {
		t.Errorf("%d authenticate calls, want 1 (the first token; the renewal came from a response)", n)
	}
	if n := a.rejected.Load(); n != 0 {
		t.Errorf("the API rejected %d requests", n)
	}
}
