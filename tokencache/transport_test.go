package tokencache

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"golang.org/x/oauth2"
	"pgregory.net/rapid"

	"github.com/tokencache/tokencache/internal/redistest"
)

// api is a protected resource with its own token issuer: it accepts only
// the tokens it minted and has not revoked.
type api struct {
	mu     sync.Mutex // guards valid, rotate
	valid  map[string]time.Time
	rotate bool

	minted   atomic.Int64
	requests atomic.Int64
	rejected atomic.Int64
	bodies   sync.Map // request bodies seen, by token
}

func newAPI() *api { return &api{valid: map[string]time.Time{}} }

func (a *api) mint(life time.Duration) Token {
	n := a.minted.Add(1)
	t := Token{AccessToken: fmt.Sprintf("api-token-%d", n), TokenType: "Bearer", Expiry: time.Now().Add(life)}
	a.mu.Lock()
	a.valid[t.AccessToken] = t.Expiry
	a.mu.Unlock()
	return t
}

func (a *api) fetcher() Fetcher {
	return FetcherFunc(func(context.Context) (Token, error) { return a.mint(time.Hour), nil })
}

func (a *api) revokeAll() {
	a.mu.Lock()
	a.valid = map[string]time.Time{}
	a.mu.Unlock()
}

func (a *api) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.requests.Add(1)
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	a.mu.Lock()
	exp, known := a.valid[tok]
	rotate := a.rotate
	a.mu.Unlock()
	if !ok || !known || time.Now().After(exp) {
		a.rejected.Add(1)
		http.Error(w, `{"error":"unauthorized"}`, http.StatusUnauthorized)
		return
	}
	body, _ := io.ReadAll(r.Body)
	a.bodies.Store(string(body), true)
	if rotate {
		nt := a.mint(2 * time.Hour)
		w.Header().Set("Authorization", "Bearer "+nt.AccessToken)
	}
	fmt.Fprint(w, "ok")
}

// extract reads a rotated token the way the test API sends it.
func (a *api) extract(resp *http.Response) (Token, bool, error) {
	return extractMinted(resp, &a.mu, a.valid)
}

// extractMinted reads the rotated token a test API put in resp's
// Authorization header, with the expiry it recorded in valid (guarded by
// mu) when it minted it.
func extractMinted(resp *http.Response, mu *sync.Mutex, valid map[string]time.Time) (Token, bool, error) {
	tok, ok := strings.CutPrefix(resp.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return Token{}, false, nil
	}
	mu.Lock()
	exp, known := valid[tok]
	mu.Unlock()
	if !known {
		return Token{}, false, fmt.Errorf("unknown rotated token")
	}
	return Token{AccessToken: tok, TokenType: "Bearer", Expiry: exp}, true, nil
}

func TestTransportRetriesOnlyRewindableBodies(t *testing.T) {
	rdb, _ := miniBackend(t)
	a := newAPI()
	srv := httptest.NewServer(a)
	defer srv.Close()
	c := newCache(t, rdb, a.fetcher(), fastOpts()...)
	hc := &http.Client{Transport: c.Transport(nil)}
	if _, err := c.Token(ctxT(t)); err != nil {
		t.Fatal(err)
	}

	a.revokeAll()
	resp, err := hc.Post(srv.URL, "text/plain", bytes.NewReader([]byte("payload-1"))) // GetBody is set
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("rewindable POST after a 401: status %d, want 200", resp.StatusCode)
	}
	if _, ok := a.bodies.Load("payload-1"); !ok {
		t.Errorf("the retried request lost its body")
	}

	a.revokeAll()
	req, _ := http.NewRequest(http.MethodPost, srv.URL, io.NopCloser(strings.NewReader("payload-2")))
	resp, err = hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("non-rewindable POST after a 401: status %d, want the 401 back", resp.StatusCode)
	}
}

func TestTransportCapturesRotation(t *testing.T) {
	forEachBackend(t, func(t *testing.T, rdb redis.UniversalClient, _ *miniredis.Miniredis) {
		a := newAPI()
		srv := httptest.NewServer(a)
		defer srv.Close()
		clk := newFakeClock()
		c := newCache(t, rdb, a.fetcher(), fastOpts(withClock(clk), WithRotation(a.extract))...)
		other := newCache(t, rdb, a.fetcher(), fastOpts(withClock(clk))...)
		ctx := ctxT(t)
		first, err := c.Token(ctx)
		if err != nil {
			t.Fatal(err)
		}
		a.mu.Lock()
		a.rotate = true
		a.mu.Unlock()
		hc := &http.Client{Transport: c.Transport(nil)}
		get := func() {
			t.Helper()
			resp, err := hc.Get(srv.URL)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
		}

		get() // early in the token's life: the rotated token is not adopted
		if tok, err := c.Token(ctx); err != nil || tok.AccessToken != first.AccessToken {
			t.Fatalf("early rotation: %v, %v; want the first token kept", tok, err)
		}
		toRefreshMoment(t, clk, c)
		get()
		tok, err := c.Token(ctx)
		if err != nil || tok.AccessToken == first.AccessToken {
			t.Fatalf("after rotation: %v, %v; want the rotated token", tok, err)
		}
		eventually(t, "the other replica to see the rotated token", func() bool {
			o, err := other.Token(ctx)
			return err == nil && o.AccessToken == tok.AccessToken
		})
	})
}

// TestRotationWithoutMemory: with the in-process copy off, a rotated token
// is judged by the expiry of the token the request carried: adopted once
// what is left of it is no more than refresh-ahead leaves of a lifetime
// (the rotated token's).
func TestRotationWithoutMemory(t *testing.T) {
	rdb, mr := miniBackend(t)
	// A whole second, so that the API's expiries (whole seconds, like a
	// JWT's exp) fall exactly where the arithmetic below says.
	clk := newFakeClockAt(time.Now().Truncate(time.Second))
	a := newRotatingAPI(clk.Now)
	srv := httptest.NewServer(a)
	defer srv.Close()
	c := newCache(t, rdb, a.fetcher(), fastOpts(withClock(clk), withL1(false), WithRotation(a.extract))...)
	ctx := ctxT(t)
	first, err := c.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: c.Transport(nil)}
	get := func() {
		t.Helper()
		resp, err := hc.Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	advance := func(d time.Duration) { clk.Advance(d); mr.FastForward(d) }

	advance(29 * time.Minute) // 31 of 60 minutes left: more than half
	get()
	if tok, err := c.Token(ctx); err != nil || tok.AccessToken != first.AccessToken {
		t.Fatalf("rotation before half the life: %v, %v; want the first token kept", tok, err)
	}
	// Half the life: 30 of 60 minutes left, half of the rotated token's
	// hour. (The cache's own refresh-ahead comes a jittered share of the
	// window later, so this answer, not the issuer, renews the token.)
	advance(time.Minute)
	get()
	if tok, err := c.Token(ctx); err != nil || tok.AccessToken == first.AccessToken {
		t.Fatalf("rotation past half the life: %v, %v; want the rotated token", tok, err)
	}
	if n := a.authenticate.Load(); n != 1 {
		t.Errorf("%d authenticate calls, want 1", n)
	}
}

func TestTokenSourceWithOAuth2Client(t *testing.T) {
	rdb, _ := miniBackend(t)
	a := newAPI()
	srv := httptest.NewServer(a)
	defer srv.Close()
	c := newCache(t, rdb, a.fetcher(), fastOpts()...)
	hc := oauth2.NewClient(context.Background(), c.TokenSource(context.Background()))
	resp, err := hc.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, want 200", resp.StatusCode)
	}
	ot, err := c.TokenSource(context.Background()).Token()
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := c.Token(context.Background())
	if ot.AccessToken != tok.AccessToken || !ot.Expiry.Before(tok.Expiry) {
		t.Errorf("oauth2 token %v, want the cached token with a skewed expiry before %v", ot.Expiry, tok.Expiry)
	}
}

func TestAPIRejectingEveryTokenCostsOneIssuerCallPerWindow(t *testing.T) {
	s := redistest.Start(t)
	ctx := ctxT(t)
	var issued atomic.Int64
	f := FetcherFunc(func(context.Context) (Token, error) {
		n := issued.Add(1)
		return Token{AccessToken: fmt.Sprint("rejected-token-", n), TokenType: "Bearer", Expiry: time.Now().Add(time.Hour)}, nil
	})
	var apiUp atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !apiUp.Load() {
			w.WriteHeader(http.StatusUnauthorized) // a revoked application: every token is refused
		}
	}))
	t.Cleanup(srv.Close)
	var clients []*http.Client
	var caches []*Cache
	for range 3 {
		c := newCache(t, s.Client(t), f, fastOpts()...)
		caches = append(caches, c)
		clients = append(clients, &http.Client{Transport: c.Transport(nil)})
	}
	get := func(c *http.Client) int {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		return resp.StatusCode
	}
	for i := range 90 {
		if code := get(clients[i%3]); code != http.StatusUnauthorized {
			t.Fatalf("request %d: status %d, want the API's 401", i, code)
		}
	}
	// The first token, and the one fetched after the first 401; the new
	// token is rejected at once, so every later 401 is the API's fault.
	if n := issued.Load(); n > 2 {
		t.Errorf("issuer calls = %d for 90 requests against an API that rejects every token, want at most 2", n)
	}
	if held := total(caches, func(s Stats) uint64 { return s.RejectionsHeld }); held < 80 {
		t.Errorf("RejectionsHeld = %d over the fleet, want most of the 90 requests", held)
	}
	// The API recovers: the token is accepted, and the window is back to
	// its minimum.
	apiUp.Store(true)
	for i := range 3 {
		if code := get(clients[i]); code != http.StatusOK {
			t.Fatalf("after recovery: status %d", code)
		}
	}
	for _, c := range caches {
		if hold, _, _ := c.server.mem.verdict401(Token{AccessToken: "never-seen"}); hold {
			t.Errorf("401s are still held after a success")
		}
	}
}

// sameTokenFetcher is an issuer that hands back the same token (or, with
// fresh, a new one each call) with a fixed expiry.
type sameTokenFetcher struct {
	calls atomic.Int64
	exp   time.Time
	fresh bool
}

func (f *sameTokenFetcher) Identity() string { return "test-credential" }
func (f *sameTokenFetcher) Fetch(ctx context.Context) (Token, error) {
	n := f.calls.Add(1)
	at := "same-token"
	if f.fresh {
		at = "fresh-" + time.Now().Format(time.RFC3339Nano) + string(rune('a'+n%26))
	}
	return Token{AccessToken: at, TokenType: "Bearer", Expiry: f.exp}, nil
}

func TestRejectionWindowGrowsWhateverTheIssuerAndMemory(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fresh bool
		l1    bool
	}{
		{"fresh tokens", true, true},
		{"reusing issuer", false, true},
		{"fresh tokens, withL1(false)", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := redistest.Start(t)
			ctx := ctxT(t)
			clock := newFakeClock()
			f := &sameTokenFetcher{exp: clock.Now().Add(2 * time.Hour), fresh: tc.fresh}
			c := newCache(t, s.Client(t), f, fastOpts(withClock(clock), withL1(tc.l1))...)
			api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(401) }))
			defer api.Close()
			hc := &http.Client{Transport: c.Transport(nil)}
			for i := 0; i < 300; i++ { // 300 virtual seconds, one request a second
				clock.Advance(time.Second)
				req, _ := http.NewRequestWithContext(ctx, "GET", api.URL, nil)
				resp, err := hc.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
			}
			if f.calls.Load() > 8 {
				t.Errorf("issuer calls = %d, want the window to double (10,20,40,80,160 s: about 6)", f.calls.Load())
			}
		})
	}
}

// TokenSource hands oauth2 an expiry that keeps the skew the writer used
// for the token's whole lifetime, not one recomputed from the life that
// remains: oauth2 must not reuse the token past the cache's own skewed
// expiry.
func TestTokenSourceExpiryKeepsTheWritersSkew(t *testing.T) {
	rdb, _ := miniBackend(t)
	ctx := ctxT(t)
	f := newFakeFetcher(time.Hour)
	key := "tokencache:{default}:server"
	now := time.Now()
	exp := now.Add(60 * time.Second)
	rec := newRecord(Token{AccessToken: "t", Expiry: exp}, 1, now.Add(-59*time.Minute), 0, "w", identityFingerprint(f, nil))
	b, _ := json.Marshal(rec)
	rdb.Set(ctx, key, b, 30*time.Second) // what the writer set: 60s left - 30s skew
	c := newCache(t, rdb, f, fastOpts()...)
	ot, err := c.TokenSource(ctx).Token()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cache serves until ~%v from now; oauth2 Expiry %v from now (Valid() until %v)",
		30*time.Second, time.Until(ot.Expiry).Round(time.Second), (time.Until(ot.Expiry) - 10*time.Second).Round(time.Second))
	if time.Until(ot.Expiry)-10*time.Second > 31*time.Second {
		t.Errorf("oauth2 would reuse the token past the cache's skewed expiry")
	}
}

// revokingAPI is an API that revokes every token it minted when told to,
// and counts, per token, the requests it accepted from each replica (by a
// header the test's transports send).
type revokingAPI struct {
	*api
	mu       sync.Mutex
	accepted map[string]map[string]int // token → replica → requests accepted
}

func (a *revokingAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec := httptest.NewRecorder()
	a.api.ServeHTTP(rec, r)
	if rec.Code == http.StatusOK {
		tok := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		a.mu.Lock()
		if a.accepted[tok] == nil {
			a.accepted[tok] = map[string]int{}
		}
		a.accepted[tok][r.Header.Get("X-Replica")]++
		a.mu.Unlock()
	}
	w.WriteHeader(rec.Code)
	_, _ = w.Write(rec.Body.Bytes())
}

// replicasAccepted is how many replicas the API accepted tok from.
func (a *revokingAPI) replicasAccepted(tok string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.accepted[tok])
}

// replicaHeader tags each request with the replica that sent it.
type replicaHeader struct {
	name string
	next http.RoundTripper
}

func (h replicaHeader) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("X-Replica", h.name)
	return h.next.RoundTrip(r)
}

// A token that the API accepted, revoked soon after the revocation that
// replaced its predecessor, is the token's fault, not the API's: every
// request is retried with a new token and succeeds, and each revocation
// costs the fleet one issuer call. The revocations are drawn by rapid:
// how many, and how many requests each token serves first (at least one
// per replica, so every replica has seen the API accept it), with the
// replicas' requests concurrent.
func TestRevocationsInQuickSuccessionAreRetriedNotHeld(t *testing.T) {
	srv := redistest.Start(t)
	rapid.Check(t, func(rt *rapid.T) {
		ctx := ctxT(t)
		rdb := srv.Client(t)
		if err := rdb.FlushAll(ctx).Err(); err != nil {
			rt.Fatal(err)
		}
		a := &revokingAPI{api: newAPI(), accepted: map[string]map[string]int{}}
		hs := httptest.NewServer(a)
		defer hs.Close()
		replicas := rapid.IntRange(2, 4).Draw(rt, "replicas")
		revocations := rapid.IntRange(1, 4).Draw(rt, "revocations")
		var clients []*http.Client
		for i := range replicas {
			c := newCache(t, srv.Client(t), a.fetcher(), fastOpts()...)
			defer c.Close()
			clients = append(clients, &http.Client{Transport: replicaHeader{fmt.Sprint(i), c.Transport(nil)}})
		}
		get := func(i int) int {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, hs.URL, nil)
			resp, err := clients[i].Do(req)
			if err != nil {
				rt.Fatalf("replica %d: %v", i, err)
			}
			_ = resp.Body.Close()
			return resp.StatusCode
		}
		// round sends n requests from every replica at once and counts
		// the answers that were not 200.
		round := func(n int) int64 {
			var failed atomic.Int64
			var wg sync.WaitGroup
			for i := range replicas {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range n {
						if code := get(i); code != http.StatusOK {
							failed.Add(1)
						}
					}
				}()
			}
			wg.Wait()
			return failed.Load()
		}
		if failed := round(1); failed > 0 {
			rt.Fatalf("%d requests failed before any revocation", failed)
		}
		for k := range revocations {
			cur := a.minted.Load()
			if got := a.replicasAccepted(fmt.Sprintf("api-token-%d", cur)); got != replicas {
				rt.Fatalf("the current token was accepted from %d of %d replicas", got, replicas)
			}
			a.revokeAll()
			if failed := round(rapid.IntRange(1, 5).Draw(rt, "requests")); failed > 0 {
				rt.Fatalf("revocation %d: %d requests came back with the API's 401 although a new token would be accepted", k+1, failed)
			}
		}
		if got, want := a.minted.Load(), int64(1+revocations); got != want {
			rt.Fatalf("issuer calls = %d, want %d: the first token and one per revocation", got, want)
		}
	})
}
