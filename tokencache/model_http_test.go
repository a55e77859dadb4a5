package tokencache

// The model's HTTP path (issue 19): the fleet of model_test.go also sends
// requests to an API (an httptest.Server) through each replica's
// Cache.Transport, and the API revokes tokens, sometimes twice within
// seconds, and for a while rejects every token. After every step, besides
// the model's own invariants (1-4, on Token calls and the issuer's budget,
// which now counts the API's doings), TestModelHTTP checks:
//
//  5. no caller gets a 401 (or an error) while a token the API accepts can
//     be had. With the issuer up, Transport's one retry after an
//     invalidation refetches a token the API accepts, so every request
//     returns 200 unless the API's own record of the request excuses it
//     (see modelHTTP.excuse; all by the order of recorded events, no
//     wall-clock slack):
//     A. an attempt of the request was rejected by a period in which the
//        API rejects every token;
//     B. its retry's token was revoked after its first attempt was
//        answered (a revocation at the very moment of the retry: one
//        retry is all Transport makes);
//     C. its 401 was held (one attempt), and before the request ended the
//        API had rejected a retry's token that it had never accepted from
//        anyone: the evidence the rule of evidence.go acts on, which no
//        replica can tell from an API that rejects every token; and the
//        token held is not one its replica knew the API accepted (see
//        knownAccepted);
//     D. an injected issuer failure was served since the request began
//        less the fleet's longest back-off (the refetch failed).
//  2. (the budget, extended) one issuer call per live token a revocation
//     revoked (about one per revocation for the fleet, not one per
//     replica), and during a period in which the API rejects every token,
//     one per replica per rejection window the period spans (the fleet's
//     replicas may each invalidate once before the first one's "rejected"
//     event reaches them; a few per window, not one per request).
//
// In half of the runs the API also revokes a token the moment it first
// sees it: mostly at the retry of the replica that just fetched it
// (excuse B; the fleet then holds on evidence, excuse C, for its window).
//
// Run (the default is 6 checks of about 20 steps, then 1.5 token lifetimes
// of steady traffic: 30-40 s on two loaded cores with -race):
//
//	go test -race -count=1 -run 'TestModelHTTP' ./tokencache/
//
// Longer, before a release:
//
//	TOKENCACHE_MODEL_HTTP_CHECKS=100 go test -race -count=1 -run 'TestModelHTTP$' -timeout 60m ./tokencache/
//
// A failure prints "-rapid.seed=N", the issuer's log and the steps.
// TOKENCACHE_MODEL_FAULTS narrows the injected faults as for TestModel
// (those of modelHTTPFaultKinds it names).

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"pgregory.net/rapid"
)

const (
	modelHTTPChecksEnv     = "TOKENCACHE_MODEL_HTTP_CHECKS"
	modelHTTPDefaultChecks = 6
	modelHTTPSteps         = 20
)

// modelHTTPFaultKinds are the model's faults TestModelHTTP injects: those
// whose effect on a request invariant 5 can judge from the API's record
// (a failed issuer call) or that must cost no 401 at all. Pauses and
// restarts stay TestModel's.
var modelHTTPFaultKinds = []string{"invalidate", "fail", "slow", "dropSubs", "del"}

// modelAttempt is one request the API answered.
type modelAttempt struct {
	seq int64
	tok string
	ok  bool
	why string // why it was rejected: "reject-all", "revoked", "unknown"
	rev int    // the revocation (index+1) that revoked tok, if "revoked"
}

// modelRevocation is one revocation: when (seq) and what.
type modelRevocation struct {
	seq  int64
	toks []string
}

// modelAPI is the protected resource. It knows the tokens the model's
// issuer minted and accepts them unless revoked or while it rejects every
// token. It does not judge expiry: invariant 1 does, on Token results.
type modelAPI struct {
	m   *model
	seq *atomic.Int64 // orders the API's records and the callers' starts and ends

	mu          sync.Mutex
	rejectAll   bool
	revocations []modelRevocation
	revokedBy   map[string]int            // token → revocation index+1
	accepted    map[string]int64          // token → seq of its first acceptance
	attempts    map[string][]modelAttempt // by request id
	licences    []int64                   // seqs of retries' rejections of tokens never accepted
	retries     int
	// onSight: revoke the first token minted after the issuer's mint
	// number onSightAfter the moment the API first sees it (see
	// revokeOnSight).
	onSight      bool
	onSightAfter int
}

func (a *modelAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	id := r.Header.Get("X-Model-Request")
	_, minted := a.m.iss.mint(tok)
	a.mu.Lock()
	if n, _ := strconv.Atoi(strings.TrimPrefix(tok, "model-token-")); minted && a.onSight && n > a.onSightAfter && a.revokedBy[tok] == 0 {
		a.onSight = false
		a.revocations = append(a.revocations, modelRevocation{seq: a.seq.Add(1), toks: []string{tok}})
		a.revokedBy[tok] = len(a.revocations)
		a.m.note("API revokes %s on sight", tok)
	}
	at := modelAttempt{seq: a.seq.Add(1), tok: tok}
	switch {
	case !minted:
		at.why = "unknown"
	case a.rejectAll:
		at.why = "reject-all"
	case a.revokedBy[tok] > 0:
		at.why, at.rev = "revoked", a.revokedBy[tok]
	default:
		at.ok = true
		if a.accepted[tok] == 0 {
			a.accepted[tok] = at.seq
		}
	}
	prev := a.attempts[id]
	if len(prev) > 0 {
		a.retries++
		if !at.ok && a.accepted[tok] == 0 {
			// A retry's token rejected before the API ever accepted it:
			// what evidence.go takes for the API's fault.
			a.licences = append(a.licences, at.seq)
		}
	}
	a.attempts[id] = append(prev, at)
	a.mu.Unlock()
	_, _ = io.Copy(io.Discard, r.Body)
	if !at.ok {
		http.Error(w, `{"error":"invalid_token"}`, http.StatusUnauthorized)
		return
	}
	_, _ = io.WriteString(w, "ok")
}

// modelRequest is one request a caller made through Transport.
type modelRequest struct {
	id               string
	r                *modelReplica
	start, end       time.Time
	startSeq, endSeq int64
	status           int
	err              error
}

// modelHTTP is a model run with the API.
type modelHTTP struct {
	*model
	api    *modelAPI
	srv    *httptest.Server
	seq    atomic.Int64
	nextID atomic.Int64
	client []*http.Client

	mu      sync.Mutex // guards results and done
	results []modelRequest
	done    [][]modelRequest // every request made, by replica
	tally   *modelHTTPTally
}

// modelHTTPTally counts, over a test, what the requests met: to show the
// invariant was exercised.
type modelHTTPTally struct {
	requests, ok, retried, unauthorized atomic.Int64
	excused                             [4]atomic.Int64 // A-D
	revocations, rejectAlls             atomic.Int64
}

func (ty *modelHTTPTally) String() string {
	return fmt.Sprintf("%d requests: %d 200, %d retried by the API's record, %d 401s or errors to the caller (excused: A reject-all %d, B revoked at the retry %d, C held on evidence %d, D issuer failed %d); %d revocations, %d reject-all periods",
		ty.requests.Load(), ty.ok.Load(), ty.retried.Load(), ty.unauthorized.Load(),
		ty.excused[0].Load(), ty.excused[1].Load(), ty.excused[2].Load(), ty.excused[3].Load(), ty.revocations.Load(), ty.rejectAlls.Load())
}

func newModelHTTP(t modelTB, env *modelEnv, cfg modelConfig, tally *modelHTTPTally) *modelHTTP {
	m := newModel(t, env, cfg)
	h := &modelHTTP{model: m, tally: tally}
	h.api = &modelAPI{m: m, seq: &h.seq, revokedBy: map[string]int{}, accepted: map[string]int64{}, attempts: map[string][]modelAttempt{}}
	h.srv = httptest.NewServer(h.api)
	h.done = make([][]modelRequest, len(m.reps))
	base := &http.Transport{MaxIdleConnsPerHost: 64}
	for _, r := range m.reps {
		h.client = append(h.client, &http.Client{Transport: r.c.Transport(base)})
	}
	t.Cleanup(func() {
		base.CloseIdleConnections()
		h.srv.Close()
	})
	return h
}

// get sends one request from r and records it.
func (h *modelHTTP) get(r *modelReplica) {
	q := h.do(r)
	h.mu.Lock()
	h.results = append(h.results, q)
	h.done[r.i] = append(h.done[r.i], q)
	h.mu.Unlock()
}

func (h *modelHTTP) do(r *modelReplica) modelRequest {
	q := modelRequest{id: strconv.FormatInt(h.nextID.Add(1), 10), r: r}
	// A request is a Token call, and after a 401 an invalidation and
	// another Token call: twice a caller's bound.
	ctx, cancel := context.WithTimeout(context.Background(), 2*h.callBound())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.srv.URL, nil)
	if err != nil {
		h.t.Fatalf("NewRequest: %v", err)
	}
	req.Header.Set("X-Model-Request", q.id)
	q.start, q.startSeq = time.Now(), h.seq.Add(1)
	resp, err := h.client[r.i].Do(req)
	if err == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		q.status = resp.StatusCode
	}
	q.err = err
	q.endSeq, q.end = h.seq.Add(1), time.Now()
	if q.status != http.StatusOK {
		h.note("replica %d request %s: %d after %v (err %v)", r.i, q.id, q.status, q.end.Sub(q.start).Round(time.Millisecond), err)
	}
	return q
}

// burstHTTP: every replica sends two requests at once.
func (h *modelHTTP) burstHTTP() {
	var wg sync.WaitGroup
	for _, r := range h.reps {
		for range 2 {
			wg.Add(1)
			go func() { defer wg.Done(); h.get(r) }()
		}
	}
	wg.Wait()
}

// traffic runs during() while every replica sends requests, one every
// 20-50 ms, and returns when during has and the requests under way are
// answered.
func (h *modelHTTP) traffic(during func()) {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, r := range h.reps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			gap := time.Duration(20+10*r.i) * time.Millisecond
			for {
				select {
				case <-stop:
					return
				default:
				}
				h.get(r)
				time.Sleep(gap) // paces the traffic; nothing waits on it
			}
		}()
	}
	during()
	close(stop)
	wg.Wait()
}

// revoke makes the API reject the tokens minted so far (all) or the
// issuer's latest one. Each revoked token still alive may cost the fleet
// one issuer call: its one invalidation.
func (h *modelHTTP) revoke(all bool) {
	a := h.api
	a.mu.Lock()
	rev := modelRevocation{seq: a.seq.Add(1)}
	h.iss.mu.Lock()
	now := time.Now()
	live := 0
	for tok, mt := range h.iss.minted {
		if a.revokedBy[tok] > 0 || !all && tok != h.iss.last {
			continue
		}
		rev.toks = append(rev.toks, tok)
		if mt.exp.After(now) {
			live++
		}
	}
	h.iss.mu.Unlock()
	a.revocations = append(a.revocations, rev)
	for _, tok := range rev.toks {
		a.revokedBy[tok] = len(a.revocations)
	}
	a.mu.Unlock()
	h.apiCalls += live
	h.tally.revocations.Add(1)
	slices.Sort(rev.toks)
	h.note("API revokes %s (all: %v; %d alive)", strings.Join(rev.toks, ","), all, live)
}

// revokeOnSight makes the API revoke the next token the issuer mints the
// moment a request first brings it: most often the retry of the replica
// that fetched it after a 401 (a revocation at the very moment of the
// retry, which only a second retry could overcome, and which the fleet
// cannot tell from an API that rejects every token), or the first request
// after a renewal. It may cost one issuer call: that token's invalidation.
func (h *modelHTTP) revokeOnSight() {
	h.iss.mu.Lock()
	n := h.iss.seq
	h.iss.mu.Unlock()
	h.api.mu.Lock()
	h.api.onSight, h.api.onSightAfter = true, n
	h.api.mu.Unlock()
	h.apiCalls++
	h.tally.revocations.Add(1)
	h.note("API will revoke the token minted after model-token-%d on sight", n)
}

// setRejectAll starts or ends a period in which the API rejects every
// token, even one just minted.
func (h *modelHTTP) setRejectAll(on bool) {
	h.api.mu.Lock()
	h.api.rejectAll = on
	h.api.mu.Unlock()
	h.note("API rejects every token: %v", on)
}

// rejectAllFor is a period of d in which the API rejects every token,
// with traffic before, during and after it. The period may cost each
// replica one issuer call per rejection window it spans.
func (h *modelHTTP) rejectAllFor(lead, d, tail time.Duration) {
	h.tally.rejectAlls.Add(1)
	h.apiCalls += len(h.reps) * (1 + int(d/rejectionWindowMin))
	h.traffic(func() {
		time.Sleep(lead)
		h.setRejectAll(true)
		time.Sleep(d)
		h.setRejectAll(false)
		time.Sleep(tail)
	})
}

// revokeUnderTraffic revokes at a moment while every replica sends
// requests, and, if again > 0, revokes the new token too that long after.
func (h *modelHTTP) revokeUnderTraffic(lead time.Duration, all bool, again, tail time.Duration) {
	h.traffic(func() {
		time.Sleep(lead)
		h.revoke(all)
		if again > 0 {
			time.Sleep(again)
			h.revoke(false)
		}
		time.Sleep(tail)
	})
}

// checkHTTP runs after every step: the model's checks, then invariant 5
// on the requests the step made.
func (h *modelHTTP) checkHTTP() {
	h.t.Helper()
	h.mu.Lock()
	results := h.results
	h.results = nil
	h.mu.Unlock()
	h.check()
	for _, q := range results {
		h.checkRequest(q)
	}
}

func (h *modelHTTP) checkRequest(q modelRequest) {
	h.t.Helper()
	h.api.mu.Lock()
	attempts := slices.Clone(h.api.attempts[q.id])
	h.api.mu.Unlock()
	ty := h.tally
	ty.requests.Add(1)
	if len(attempts) > 1 {
		ty.retried.Add(1)
	}
	for _, at := range attempts {
		if at.why == "unknown" {
			h.fatalf("replica %d sent the API %q, which the issuer never minted", q.r.i, at.tok)
		}
	}
	if len(attempts) > 2 {
		h.fatalf("request %s of replica %d reached the API %d times: Transport retries once", q.id, q.r.i, len(attempts))
	}
	if q.err == nil && q.status == http.StatusOK {
		ty.ok.Add(1)
		return
	}
	ty.unauthorized.Add(1)
	if q.err == nil && q.status != http.StatusUnauthorized {
		h.fatalf("request %s of replica %d: status %d", q.id, q.r.i, q.status)
	}
	k := h.excuse(q, attempts)
	if k < 0 {
		var tr []string
		for _, at := range attempts {
			tr = append(tr, fmt.Sprintf("seq %d %s ok=%v %s rev=%d", at.seq, at.tok, at.ok, at.why, at.rev))
		}
		h.fatalf("invariant 5 (no 401 while a token the API accepts can be had): request %s of replica %d (seq %d-%d) returned %d (err %v) after %v; the API's record of it: [%s]; no reject-all period, no revocation at its retry, no prior evidence against the API, no issuer failure",
			q.id, q.r.i, q.startSeq, q.endSeq, q.status, q.err, q.end.Sub(q.start).Round(time.Millisecond), strings.Join(tr, "; "))
	}
	ty.excused[k].Add(1)
}

// excuse reports which of invariant 5's excuses (0-3: A-D) a request that
// did not get its 200 has, or -1.
func (h *modelHTTP) excuse(q modelRequest, attempts []modelAttempt) int {
	a := h.api
	a.mu.Lock()
	defer a.mu.Unlock()
	// A: the API rejected every token at one of its attempts.
	for _, at := range attempts {
		if at.why == "reject-all" {
			return 0
		}
	}
	// B: the retry's token was revoked after the first attempt was
	// answered: revoked at the moment of the retry.
	if len(attempts) == 2 && attempts[1].why == "revoked" && a.revocations[attempts[1].rev-1].seq > attempts[0].seq {
		return 1
	}
	// C: held (one attempt) on evidence the API gave before the request
	// ended: a retry's token rejected before the API accepted it from
	// anyone; and not a token this replica knew the API accepted.
	if len(attempts) == 1 && q.err == nil && len(a.licences) > 0 && a.licences[0] < q.endSeq && !h.knownAccepted(q, attempts[0].tok) {
		return 2
	}
	// D: the refetch could fail.
	if h.issuerFailedSince(q.start.Add(-maxRetryWindow)) {
		return 3
	}
	return -1
}

// knownAccepted reports whether, when q's 401 came, q's replica knew tok
// for the last token the API accepted from it (evidence.accepted), so that
// the rule must retry it: a request R of the replica's got its 200 with
// tok and ended before q began, and no request of the replica that may
// have been answered after R's acceptedBy and before q's verdict got its
// 200 with another token (acceptedBy of that one) or was retried with tok
// and rejected (rejectedFresh forgets tok: "accepted once, rejected now").
// a.mu is held.
func (h *modelHTTP) knownAccepted(q modelRequest, tok string) bool {
	h.mu.Lock()
	done := h.done[q.r.i]
	h.mu.Unlock()
	final := func(r modelRequest) []modelAttempt { return h.api.attempts[r.id] }
	for _, r := range done {
		at := final(r)
		if r.status != http.StatusOK || len(at) == 0 || at[len(at)-1].tok != tok || r.endSeq >= q.startSeq {
			continue
		}
		clean := true
		for _, o := range done {
			if o.id == r.id || o.id == q.id || o.startSeq >= q.endSeq || o.endSeq <= r.startSeq {
				continue
			}
			oa := final(o)
			if len(oa) == 0 {
				continue
			}
			if last := oa[len(oa)-1]; last.ok && last.tok != tok || len(oa) == 2 && !last.ok && last.tok == tok {
				clean = false
				break
			}
		}
		if clean {
			return true
		}
	}
	return false
}

// steadyHTTP ends a run with 1.5 token lifetimes of steady traffic: every
// replica sends a request in turn every tenth of the life.
func (h *modelHTTP) steadyHTTP() {
	h.t.Helper()
	h.note("steady traffic")
	round := 0
	for end := time.Now().Add(3 * h.cfg.life / 2); time.Now().Before(end); round++ {
		for j := range h.reps {
			h.get(h.reps[(round+j)%len(h.reps)])
			h.checkHTTP()
		}
		h.wait(h.cfg.life / 10)
		h.checkHTTP()
	}
}

func modelHTTPFaults(t *testing.T) []string {
	if os.Getenv("TOKENCACHE_MODEL_FAULTS") == "" {
		return modelHTTPFaultKinds
	}
	var out []string
	for _, f := range modelFaults(t) {
		if slices.Contains(modelHTTPFaultKinds, f) {
			out = append(out, f)
		}
	}
	return out
}

// TestModelHTTP: callers get no 401 while a token the API accepts can be
// had, and revocations and an API that rejects every token cost the fleet
// a bounded number of issuer calls (invariants 5 and 2 above, with the
// model's 1, 3 and 4 on Token calls).
func TestModelHTTP(t *testing.T) {
	env := newModelEnv(t)
	modelFlagsFor(t, modelHTTPChecksEnv, modelHTTPDefaultChecks, modelHTTPSteps)
	faults := modelHTTPFaults(t)
	tally := &modelHTTPTally{}
	rapid.Check(t, func(t *rapid.T) {
		h := newModelHTTP(t, env, drawModelConfig(t), tally)
		h.faultKinds = faults
		get := func(t *rapid.T) { h.get(h.replica(t)) }
		wait := func(t *rapid.T) {
			k := rapid.IntRange(1, 7).Draw(t, "waitShare")
			h.wait(h.cfg.life * time.Duration(8-k) / 40)
		}
		ms := func(t *rapid.T, label string, lo, hi int) time.Duration {
			return time.Duration(rapid.IntRange(lo, hi).Draw(t, label)) * time.Millisecond
		}
		steps := map[string]func(*rapid.T){
			"get":    get,
			"get#2":  get,
			"get#3":  get,
			"burst":  func(t *rapid.T) { h.burstHTTP() },
			"call":   func(t *rapid.T) { h.call(h.replica(t)) },
			"wait":   wait,
			"wait#2": wait,
			"revoke": func(t *rapid.T) { h.revoke(rapid.Bool().Draw(t, "all")) },
			"revokeUnderTraffic": func(t *rapid.T) {
				lead := ms(t, "leadMS", 0, 500)
				all := rapid.Bool().Draw(t, "all")
				var again time.Duration
				if rapid.Bool().Draw(t, "revokeTwice") {
					again = ms(t, "againMS", 0, 2000)
				}
				h.revokeUnderTraffic(lead, all, again, ms(t, "tailMS", 0, 500))
			},
			"rejectAll": func(t *rapid.T) {
				h.rejectAllFor(ms(t, "leadMS", 0, 300), ms(t, "rejectMS", 100, 2500), ms(t, "tailMS", 0, 800))
			},
			"": func(t *rapid.T) { h.checkHTTP() },
		}
		if len(faults) > 0 {
			steps["fault"] = func(t *rapid.T) { h.fault(t) }
		}
		// A revocation at the retry opens a rejection window that excuses
		// the 401s of tokens not yet accepted (excuse C) for 10 s: about
		// the rest of the run. Half of the runs have none, so that a 401
		// without evidence is caught there.
		if rapid.Bool().Draw(t, "revocationsAtTheRetry") {
			steps["revokeOnSight"] = func(t *rapid.T) {
				h.revokeOnSight()
				h.revokeUnderTraffic(ms(t, "leadMS", 0, 300), rapid.Bool().Draw(t, "all"), 0, ms(t, "tailMS", 0, 500))
			}
		}
		t.Repeat(steps)
		h.steadyHTTP()
	})
	t.Log(tally)
}

// allOK runs step and fails unless every request it made got its 200:
// for a scripted sequence in which no 401 is excusable.
func (h *modelHTTP) allOK(what string, step func()) {
	h.t.Helper()
	h.mu.Lock()
	from := len(h.results)
	h.mu.Unlock()
	step()
	h.mu.Lock()
	got := slices.Clone(h.results[from:])
	h.mu.Unlock()
	for _, q := range got {
		if q.err != nil || q.status != http.StatusOK {
			h.fatalf("%s: request %s of replica %d got %d (err %v)", what, q.id, q.r.i, q.status, q.err)
		}
	}
}

// TestModelHTTPRegressions replays, as scripted step sequences, what
// TestModelHTTP checks at random; invariants 1-5 are checked after every
// step.
func TestModelHTTPRegressions(t *testing.T) {
	env := newModelEnv(t)
	// A life long enough that no renewal comes within a case: every
	// issuer call is the revocations' or the rejections'.
	long := modelConfig{replicas: 4, life: 20 * time.Second, lockTTL: 800 * time.Millisecond}
	cases := []struct {
		name string
		cfg  modelConfig
		// calls is how many issuer calls the case may make in all.
		calls int
		steps func(h *modelHTTP, step func(func()))
	}{{
		// A token the API accepted from every replica, revoked soon after
		// the revocation that replaced its predecessor, is the token's
		// fault: every request is retried and succeeds, one issuer call
		// per revocation.
		name:  "revocations in quick succession are retried not held",
		cfg:   long,
		calls: 4,
		steps: func(h *modelHTTP, step func(func())) {
			step(h.burstHTTP)
			for range 3 {
				step(func() { h.revoke(true) })
				step(func() { h.allOK("after a revocation", h.burstHTTP) })
				step(func() { h.wait(200 * time.Millisecond) })
			}
		},
	}, {
		// The same under traffic: the second revocation comes while
		// every replica is sending, a second after the first.
		name:  "a second revocation under traffic costs one issuer call",
		cfg:   long,
		calls: 3,
		steps: func(h *modelHTTP, step func(func())) {
			step(h.burstHTTP)
			step(func() { h.revokeUnderTraffic(200*time.Millisecond, true, time.Second, 300*time.Millisecond) })
			step(func() { h.allOK("after the revocations", h.burstHTTP) })
		},
	}, {
		// Revoking the current token only, with an older one still
		// alive: the fleet moves on with one call.
		name:  "revoking the current token only costs one issuer call",
		cfg:   long,
		calls: 3,
		steps: func(h *modelHTTP, step func(func())) {
			step(h.burstHTTP)
			step(func() { h.revoke(false) })
			step(func() { h.allOK("after the revocation", h.burstHTTP) })
			step(func() { h.revoke(false) })
			step(func() { h.allOK("after the second revocation", h.burstHTTP) })
		},
	}, {
		// An API that rejects every token for a while: the fleet holds
		// its 401s after the first new token is rejected (a few issuer
		// calls, not one per request), and the first request after the
		// API recovers is accepted with the token held.
		name:  "an API rejecting every token costs a few issuer calls and recovers at once",
		cfg:   long,
		calls: 1 + 4,
		steps: func(h *modelHTTP, step func(func())) {
			step(h.burstHTTP)
			step(func() { h.rejectAllFor(100*time.Millisecond, 1500*time.Millisecond, 0) })
			step(func() { h.allOK("after the API recovered", h.burstHTTP) })
		},
	}, {
		// After a rejection period, a token every replica saw accepted
		// and then revoked is retried, though the rejection window is
		// still open.
		name:  "a revocation inside the rejection window is retried for a token seen accepted",
		cfg:   long,
		calls: 1 + 4 + 1,
		steps: func(h *modelHTTP, step func(func())) {
			step(h.burstHTTP)
			step(func() { h.rejectAllFor(0, time.Second, 0) })
			step(func() { h.allOK("after the API recovered", h.burstHTTP) })
			step(func() { h.revoke(false) })
			step(func() { h.allOK("after the revocation", h.burstHTTP) })
		},
	}, {
		// Inside the rejection window, a token that the API accepted
		// from one replica only, then revoked, is retried by the
		// replicas that never saw it accepted: the one whose retry it
		// failed (the evidence) and one that only heard of that. The
		// fleet records the acceptance (evidence.go).
		name:  "a revocation inside the rejection window is retried for a token accepted on another replica",
		cfg:   long,
		calls: 1 + 1 + 1,
		steps: func(h *modelHTTP, step func(func())) {
			step(h.burstHTTP)
			step(func() {
				h.setRejectAll(true)
				h.apiCalls++ // replica 0's invalidation of the token all had
				h.get(h.reps[0])
				h.setRejectAll(false)
			})
			step(func() {
				h.allOK("after the API recovered", func() { h.get(h.reps[2]) })
				h.mu.Lock()
				last := h.results[len(h.results)-1]
				h.mu.Unlock()
				h.api.mu.Lock()
				at := h.api.attempts[last.id]
				h.api.mu.Unlock()
				waitFleetAccepted(h.t, h.reps[2].c, at[len(at)-1].tok)
			})
			step(func() { h.revoke(false) })
			step(func() {
				h.allOK("after the revocation", func() { h.get(h.reps[0]); h.get(h.reps[3]); h.get(h.reps[1]) })
			})
		},
	}}
	for _, tc := range cases {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			h := newModelHTTP(t, env, tc.cfg, &modelHTTPTally{})
			tc.steps(h, func(f func()) {
				t.Helper()
				f()
				h.checkHTTP()
			})
			h.iss.mu.Lock()
			calls := h.iss.calls
			h.iss.mu.Unlock()
			if calls > tc.calls {
				h.fatalf("%d issuer calls, want at most %d", calls, tc.calls)
			}
			t.Logf("%d issuer calls; %v%s", calls, h.tally, h.iss.history())
		})
	}
}
