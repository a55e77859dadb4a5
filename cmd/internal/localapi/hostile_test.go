package localapi

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

// The tests in this file are a hostile local client's attacks on serve and
// proxy (issue 22): each must fail without the defence it pins.

func TestServerTokenNeverAnswersARequestThatNamedAUser(t *testing.T) {
	f := newFleet(t)
	s := tokenServer(t, f.source())
	server := s.token(t, "").AccessToken
	for _, q := range []string{
		"?user_id=",            // present but empty
		"?user_id=%ZZ",         // does not parse
		"?user_id=bob%ZZ",      // does not parse, after a user
		"?User_Id=bob",         // the wrong case
		"?USER_ID=bob",         // the wrong case
		"?user_id=a&user_id=b", // twice
		"?user_id=a&user_id=a", // twice, the same
		"?user_id=bob&x=1",     // an unknown parameter besides
		"?userid=bob",          // a near miss
		"?&",                   // no parameter at all
		"?user_id",             // no value
		"?user_id=bob;x=1",     // a semicolon (does not parse)
	} {
		for _, path := range []string{TokenPath, InvalidatePath} {
			method, body := http.MethodGet, ""
			if path == InvalidatePath {
				method, body = http.MethodPost, `{"access_token":"`+server+`"}`
			}
			code, resp := s.do(t, method, path+q, body)
			if code != http.StatusBadRequest {
				t.Errorf("%s %s%s: %d %s, want 400", method, path, q, code, resp)
			}
			if strings.Contains(resp, server) {
				t.Errorf("%s %s%s: the answer holds the server token", method, path, q)
			}
		}
	}
	if tok := s.token(t, ""); tok.AccessToken != server {
		t.Error("the server token changed: an invalidation with a bad query went through")
	}
	if u := s.token(t, "bob"); u.AccessToken == server {
		t.Error("?user_id=bob answered with the server token")
	}
}

func TestProxyRefusesTraceAndTrack(t *testing.T) {
	f := newFleet(t)
	echoed := 0
	up := newUpstream(t, f, func(w http.ResponseWriter, r *http.Request) {
		if !strings.EqualFold(r.Method, http.MethodTrace) && !strings.EqualFold(r.Method, "TRACK") {
			return
		}
		// An upstream that echoes TRACE, headers included.
		echoed++
		w.Header().Set("Content-Type", "message/http")
		_ = r.Header.Write(w)
	})
	p := proxyServer(t, f.source(), up.url, ListenConfig{})
	for _, m := range []string{http.MethodTrace, "TRACK", "trace", "Track"} {
		req, _ := http.NewRequest(m, p.base+"/api/x", nil)
		req.Header.Set("Authorization", "Bearer "+p.secret)
		resp, err := p.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("%s: %d, want 405", m, resp.StatusCode)
		}
		if strings.Contains(strings.ToLower(string(b)), "bearer") {
			t.Errorf("%s: the answer echoes a bearer token: %s", m, b)
		}
	}
	if echoed != 0 || len(up.seen()) != 0 {
		t.Errorf("the upstream saw %d requests (%d traces), want 0", len(up.seen()), echoed)
	}
}

// loopGuard is the guard as serve configures it by default.
var loopGuard = GuardConfig{Rate: DefaultRate, Burst: DefaultBurst, CostlyRate: DefaultCostlyRate, CostlyBurst: DefaultCostlyBurst}

// reportLoop is a client that reports every token it gets as rejected, for
// rounds rounds; with users, a new user_id each round. It returns the
// issuer calls made and the statuses of the reports.
func reportLoop(t *testing.T, f *fleet, s *server, rounds int, users bool) (calls int, statuses map[int]int) {
	t.Helper()
	before := f.issuer.Stats().TokenCalls
	statuses = map[int]int{}
	for i := range rounds {
		q := ""
		if users {
			q = fmt.Sprintf("?user_id=loop-%d", i)
		}
		code, body := s.do(t, http.MethodGet, TokenPath+q, "")
		if code != http.StatusOK {
			statuses[code]++
			continue
		}
		var tr TokenResponse
		if err := json.Unmarshal([]byte(body), &tr); err != nil {
			t.Fatal(err)
		}
		code, _ = s.do(t, http.MethodPost, InvalidatePath+q, `{"access_token":"`+tr.AccessToken+`"}`)
		statuses[code]++
	}
	return int(f.issuer.Stats().TokenCalls - before), statuses
}

func TestClientReportingEveryTokenRejectedCannotDrainTheIssuer(t *testing.T) {
	const rounds = 100
	f := newFleet(t)
	newServer := func() *server {
		return serve(t, ListenConfig{}, func(m *Metrics) http.Handler { return NewTokenHandler(f.source(), m, nil) }, loopGuard)
	}
	s := newServer()
	calls, statuses := reportLoop(t, f, s, rounds, false)
	t.Logf("server token: %d rounds, %d issuer calls, report statuses %v", rounds, calls, statuses)
	if calls > 3 {
		t.Errorf("server token: %d issuer calls for %d rounds, want at most 3 (the token, one replacement; the rest held)", calls, rounds)
	}
	s = newServer()
	calls, statuses = reportLoop(t, f, s, rounds, true)
	t.Logf("a new user each round: %d rounds, %d issuer calls, statuses %v", rounds, calls, statuses)
	if calls > DefaultCostlyBurst+3 {
		t.Errorf("new users: %d issuer calls for %d rounds, want about the costly burst (%d)", calls, rounds, DefaultCostlyBurst)
	}
	if statuses[http.StatusTooManyRequests] == 0 {
		t.Errorf("new users: no 429 in %v", statuses)
	}
	// Reports of made-up tokens for new users: none fetches a token to
	// judge the report.
	s = newServer()
	before := f.issuer.Stats().TokenCalls
	statuses = map[int]int{}
	for i := range rounds {
		code, _ := s.do(t, http.MethodPost, InvalidatePath+fmt.Sprintf("?user_id=madeup-%d", i), `{"fingerprint":"sha256:0123456789abcdef"}`)
		statuses[code]++
	}
	calls = int(f.issuer.Stats().TokenCalls - before)
	t.Logf("made-up reports for new users: %d rounds, %d issuer calls, statuses %v", rounds, calls, statuses)
	if calls != 0 {
		t.Errorf("made-up reports: %d issuer calls for %d rounds, want 0", calls, rounds)
	}
	// The server token is still served.
	if tok := newServer().token(t, ""); tok.AccessToken == "" {
		t.Error("no server token after the loops")
	}
}

// A proxy client that alternates a request the API accepts with one it
// answers 401 whatever the token (a path that wants other credentials)
// makes the proxy's Transport see an accepted token rejected, each time:
// an invalidation per pair, unless the client's costly limit stops them.
func TestProxyClientCannotTurnAlternating401sIntoIssuerCalls(t *testing.T) {
	const rounds = 60
	f := newFleet(t)
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		if r.URL.Path == "/deny" || !f.issuer.Valid(tok) {
			w.WriteHeader(http.StatusUnauthorized)
		}
	}))
	t.Cleanup(api.Close)
	up, _ := url.Parse(api.URL)
	src := f.source()
	p := serve(t, ListenConfig{}, func(m *Metrics) http.Handler {
		h, err := NewProxy(src, ProxyConfig{Upstream: up, Metrics: m})
		if err != nil {
			t.Fatal(err)
		}
		return h
	}, GuardConfig{CostlyRate: DefaultCostlyRate, CostlyBurst: DefaultCostlyBurst})
	before := f.issuer.Stats().TokenCalls
	okStatuses := map[int]int{}
	for range rounds {
		code, _ := p.do(t, http.MethodGet, "/ok", "")
		okStatuses[code]++
		p.do(t, http.MethodGet, "/deny", "")
	}
	calls := f.issuer.Stats().TokenCalls - before
	t.Logf("%d rounds: %d issuer calls; /ok answered %v", rounds, calls, okStatuses)
	if calls > DefaultCostlyBurst+3 {
		t.Errorf("%d issuer calls for %d rounds, want about the costly burst (%d)", calls, rounds, DefaultCostlyBurst)
	}
	if okStatuses[http.StatusOK] != rounds {
		t.Errorf("/ok answered %v, want 200 every time", okStatuses)
	}
}

// Wrong secrets count against the client: after a burst, nothing of it is
// looked at (429) until the bucket refills; another client is not affected.
func TestWrongSecretsAreRateLimited(t *testing.T) {
	ok := http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})
	g := Guard(ok, GuardConfig{Secret: testSecret})
	status := func(remote, secret string) int {
		req := httptest.NewRequest(http.MethodGet, TokenPath, nil)
		req.RemoteAddr = remote
		req.Header.Set("Authorization", "Bearer "+secret)
		rec := httptest.NewRecorder()
		g.ServeHTTP(rec, req)
		return rec.Code
	}
	codes := map[int]int{}
	for i := range 500 {
		codes[status("10.0.0.1:1", fmt.Sprintf("guess-%030d", i))]++
	}
	if codes[http.StatusUnauthorized] > failedBurst+1 || codes[http.StatusTooManyRequests] < 480 {
		t.Errorf("500 guesses answered %v, want %d 401s and the rest 429", codes, failedBurst)
	}
	if code := status("10.0.0.1:1", testSecret); code != http.StatusTooManyRequests {
		t.Errorf("the right secret from the guessing client: %d, want 429 until its bucket refills", code)
	}
	if code := status("10.0.0.2:1", testSecret); code != http.StatusOK {
		t.Errorf("another client: %d, want 200", code)
	}
}

// A full table of clients drops the least recently seen one, not all: a
// client at its limit stays at its limit however many others come.
func TestFullClientTableDropsTheLeastRecentlySeen(t *testing.T) {
	ok := http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})
	g := Guard(ok, GuardConfig{Rate: 1e-6, Burst: 1})
	status := func(remote string) int {
		req := httptest.NewRequest(http.MethodGet, TokenPath, nil)
		req.RemoteAddr = remote
		rec := httptest.NewRecorder()
		g.ServeHTTP(rec, req)
		return rec.Code
	}
	status("10.1.0.1:1")
	status("10.1.0.2:1") // seen, then not again: the least recently seen
	for i := range maxClients {
		if i%100 == 0 && status("10.1.0.1:1") != http.StatusTooManyRequests {
			t.Fatalf("after %d other clients, the limited client got through", i)
		}
		status(fmt.Sprintf("10.2.%d.%d:1", i/256, i%256))
	}
	if code := status("10.1.0.1:1"); code != http.StatusTooManyRequests {
		t.Errorf("the limited client after %d others: %d, want 429", maxClients, code)
	}
	if code := status("10.1.0.2:1"); code != http.StatusOK {
		t.Errorf("the least recently seen client: %d, want 200 (dropped, a new bucket)", code)
	}
}
