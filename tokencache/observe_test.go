package tokencache

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// traceKey marks the contexts of one test's calls, so that a recorder
// keeps only the steps made on their behalf (not the subscription's or the
// scheduler's background reads).
type traceKey struct{}

// recorder is an Observer that records, in order, the start ("+op") and
// the end ("-op:result[:code]") of every step whose context carries
// traceKey, with each step's Step and Outcome.
type recorder struct {
	mu       sync.Mutex // guards the fields below
	log      []string
	steps    []Step
	outcomes map[Op][]Outcome
	started  chan Op // if not nil, told of each recorded start
}

var _ Observer = (*recorder)(nil)

func newRecorder() *recorder { return &recorder{outcomes: map[Op][]Outcome{}} }

type spanKey struct{}

func (r *recorder) Start(ctx context.Context, s Step) (context.Context, func(Outcome)) {
	if ctx.Value(traceKey{}) == nil {
		return ctx, nil
	}
	r.mu.Lock()
	r.log = append(r.log, "+"+s.Op.String())
	r.steps = append(r.steps, s)
	started := r.started
	r.mu.Unlock()
	if started != nil {
		started <- s.Op
	}
	return context.WithValue(ctx, spanKey{}, s.Op), func(o Outcome) {
		r.mu.Lock()
		defer r.mu.Unlock()
		line := "-" + s.Op.String() + ":" + o.Result
		if o.Code != "" {
			line += ":" + o.Code
		}
		r.log = append(r.log, line)
		r.outcomes[s.Op] = append(r.outcomes[s.Op], o)
	}
}

func (r *recorder) lines() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.log)
}

func (r *recorder) outcome(op Op) []Outcome {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.outcomes[op])
}

func traced(t testing.TB) context.Context {
	return context.WithValue(ctxT(t), traceKey{}, "caller")
}

func TestObserverSeesTheStepsOfARefreshInOrder(t *testing.T) {
	forEachBackend(t, func(t *testing.T, rdb redis.UniversalClient, _ *miniredis.Miniredis) {
		rec := newRecorder()
		c := newCache(t, rdb, newFakeFetcher(time.Hour), fastOpts(WithNamespace("obs"), WithObserver(rec))...)
		if _, err := c.Token(traced(t)); err != nil {
			t.Fatal(err)
		}
		want := []string{
			"+redis_read", "-redis_read:absent", // the first look
			"+redis_read", "-redis_read:absent", // the re-check once subscribed
			"+lock", "-lock:acquired",
			"+refresh",
			"+redis_read", "-redis_read:absent", // the re-check under the lock
			"+issuer_call", "-issuer_call:ok",
			"+write", "-write:stored",
			"-refresh:ok",
		}
		if got := rec.lines(); !slices.Equal(got, want) {
			t.Fatalf("steps:\n got %q\nwant %q", got, want)
		}
		for _, s := range rec.steps {
			if s.Namespace != "obs" || s.Tier != TierServer {
				t.Errorf("step %v: namespace %q tier %q, want obs and server", s.Op, s.Namespace, s.Tier)
			}
		}
		w, r := rec.outcome(OpWrite), rec.outcome(OpRefresh)
		if len(w) != 1 || w[0].Generation <= 0 || len(r) != 1 || r[0].Generation != w[0].Generation {
			t.Errorf("write %+v, refresh %+v: want one each, with the same positive generation", w, r)
		}
	})
}

func TestObserverIsNotCalledOnTheMemoryPath(t *testing.T) {
	rdb, _ := miniBackend(t)
	var calls countingObserver
	c := newCache(t, rdb, newFakeFetcher(time.Hour), fastOpts(WithObserver(&calls))...)
	ctx := ctxT(t)
	if _, err := c.Token(ctx); err != nil {
		t.Fatal(err)
	}
	before := calls.n.Load()
	if before == 0 {
		t.Fatal("the observer saw no step of the first Token call")
	}
	allocs := testing.AllocsPerRun(1000, func() {
		if _, err := c.Token(ctx); err != nil {
			t.Fatal(err)
		}
	})
	if got := calls.n.Load(); got != before {
		t.Errorf("the observer was called %d times by Token calls served from memory, want 0", got-before)
	}
	if allocs != 0 {
		t.Errorf("Token from memory with an observer: %v allocs, want 0", allocs)
	}
}

func TestObserverSeesTheWaitForAnotherReplica(t *testing.T) {
	rdb, _ := miniBackend(t)
	f := newFakeFetcher(time.Hour)
	gate := make(chan struct{})
	f.setGate(gate)
	holder := newCache(t, rdb, f, fastOpts()...)
	rec := newRecorder()
	rec.started = make(chan Op, 32)
	waiter := newCache(t, rdb, f, fastOpts(WithTuning(Tuning{WaitRecheck: time.Minute}), WithObserver(rec))...)

	ctx := ctxT(t)
	held := make(chan error, 1)
	go func() { _, err := holder.Token(ctx); held <- err }()
	eventually(t, "the holder in the issuer call", func() bool { return f.calls.Load() == 1 }) // the holder is in the issuer call

	got := make(chan error, 1)
	go func() { _, err := waiter.Token(traced(t)); got <- err }()
	for op := range rec.started {
		if op == OpWait {
			break
		}
	}
	close(gate)
	if err := <-held; err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	lines := rec.lines()
	for _, want := range []string{"-lock:contended", "-wait:event"} {
		if !slices.Contains(lines, want) {
			t.Errorf("steps %q: no %q", lines, want)
		}
	}
	if slices.Contains(lines, "+issuer_call") {
		t.Errorf("steps %q: the waiter called the issuer", lines)
	}
}

func TestObserverSeesAnIssuerFailureWithItsCode(t *testing.T) {
	rdb, _ := miniBackend(t)
	f := newFakeFetcher(time.Hour)
	f.failNext(&issuerErr{code: "access-denied"})
	rec := newRecorder()
	c := newCache(t, rdb, f, fastOpts(WithObserver(rec))...)
	if _, err := c.Token(traced(t)); !isFetchError(err, "access-denied", false) {
		t.Fatalf("Token: %v, want the access-denied FetchError", err)
	}
	lines := rec.lines()
	for _, want := range []string{"-issuer_call:error:access-denied", "-refresh:error:access-denied"} {
		if !slices.Contains(lines, want) {
			t.Errorf("steps %q: no %q", lines, want)
		}
	}
	if slices.Contains(lines, "+write") {
		t.Errorf("steps %q: a write after a failed issuer call", lines)
	}
}

func TestObserverSeesAClientTokenAsTheClientTier(t *testing.T) {
	rdb, _ := miniBackend(t)
	rec := newRecorder()
	c := newCache(t, rdb, newFakeFetcher(time.Hour), fastOpts(WithObserver(rec),
		WithClientTokens(func(string) (Fetcher, error) { return newFakeFetcher(time.Hour), nil }, 10))...)
	if _, err := clientToken(c, traced(t), "user-1"); err != nil {
		t.Fatal(err)
	}
	if len(rec.steps) == 0 {
		t.Fatal("no step observed")
	}
	for _, s := range rec.steps {
		if s.Tier != TierClient || s.Namespace != DefaultNamespace {
			t.Errorf("step %v: tier %q namespace %q, want client and %q", s.Op, s.Tier, s.Namespace, DefaultNamespace)
		}
	}
}

func TestObserverSeesTransportsHandlingOfA401(t *testing.T) {
	tests := []struct {
		name    string
		accept  func(n int) bool // whether the API accepts its n-th request (from 1)
		body    io.Reader        // a body without GetBody, if not nil
		want    string
		refetch bool // a new token is fetched under the 401's step
	}{
		{"retried and accepted", func(n int) bool { return n > 1 }, nil, "-unauthorized:retried", true},
		{"retried and rejected", func(int) bool { return false }, nil, "-unauthorized:rejected", true},
		{"a body that cannot be sent again", func(int) bool { return false }, io.NopCloser(strings.NewReader("x")), "-unauthorized:returned", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var mu sync.Mutex
			n := 0
			api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				n++
				ok := tt.accept(n)
				mu.Unlock()
				if !ok {
					w.WriteHeader(http.StatusUnauthorized)
				}
			}))
			defer api.Close()
			rdb, _ := miniBackend(t)
			rec := newRecorder()
			c := newCache(t, rdb, newFakeFetcher(time.Hour), fastOpts(WithObserver(rec))...)
			if _, err := c.Token(ctxT(t)); err != nil { // untraced: only the 401 is recorded
				t.Fatal(err)
			}
			req, err := http.NewRequestWithContext(traced(t), http.MethodPost, api.URL, tt.body)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := (&http.Client{Transport: c.Transport(nil)}).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			_ = resp.Body.Close()
			lines := rec.lines()
			if len(lines) == 0 || lines[0] != "+unauthorized" || lines[len(lines)-1] != tt.want {
				t.Fatalf("steps %q: want them inside one unauthorized step ending %q", lines, tt.want)
			}
			if got := slices.Contains(lines, "-issuer_call:ok"); got != tt.refetch {
				t.Errorf("steps %q: an issuer call under the 401: %v, want %v", lines, got, tt.refetch)
			}
		})
	}
}

func TestWithObserverTellsEachObserverInTurn(t *testing.T) {
	rdb, _ := miniBackend(t)
	var order []string
	var mu sync.Mutex
	mark := func(name string) Observer {
		return ObserverFunc(func(ctx context.Context, s Step) (context.Context, func(Outcome)) {
			if s.Op != OpIssuerCall {
				return ctx, nil
			}
			mu.Lock()
			order = append(order, "+"+name+"/"+stringValue(ctx))
			mu.Unlock()
			return context.WithValue(ctx, spanKey{}, name), func(Outcome) {
				mu.Lock()
				order = append(order, "-"+name)
				mu.Unlock()
			}
		})
	}
	c := newCache(t, rdb, newFakeFetcher(time.Hour), fastOpts(WithObserver(mark("a")), WithObserver(mark("b")))...)
	if _, err := c.Token(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	want := []string{"+a/", "+b/a", "-b", "-a"}
	if !slices.Equal(order, want) {
		t.Errorf("order %q, want %q", order, want)
	}
	if _, err := New(rdb, newFakeFetcher(time.Hour), WithObserver(nil)); err == nil {
		t.Error("WithObserver(nil): no error")
	}
}

// countingObserver counts the steps it is told of.
type countingObserver struct{ n atomic.Int64 }

func (o *countingObserver) Start(ctx context.Context, _ Step) (context.Context, func(Outcome)) {
	o.n.Add(1)
	return ctx, nil
}

func stringValue(ctx context.Context) string {
	s, _ := ctx.Value(spanKey{}).(string)
	return s
}

func TestOpNames(t *testing.T) {
	want := []string{"redis_read", "lock", "refresh", "issuer_call", "write", "wait", "unauthorized"}
	var got []string
	for _, op := range Ops() {
		got = append(got, op.String())
	}
	if !slices.Equal(got, want) {
		t.Errorf("Ops names %q, want %q", got, want)
	}
	if s := Op(0).String(); s != "unknown" {
		t.Errorf("Op(0) = %q, want unknown", s)
	}
}
