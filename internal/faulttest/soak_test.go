package faulttest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"runtime/pprof"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/internal/faultproxy"
	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/tokencache"
)

// Soak parameters. The token lives soakLife; refresh-ahead replaces it
// once soakShare of its life has passed.
const (
	soakLife      = 3 * time.Second
	soakShare     = 0.5
	soakReplicas  = 50 // in all
	soakProcesses = 3  // of which separate OS processes
	soakEvery     = 20 * time.Millisecond
	// soakGrace is how long after a fault ends a caller error is still
	// blamed on it: a refresh that started during the fault may run out
	// its lock TTL and retries first.
	soakGrace = 3 * time.Second
)

// faultWindow is one injected fault.
type faultWindow struct {
	kind       string
	start, end time.Time
}

// Scenario 16: 50 replicas (47 Caches in this process, each with its own
// Redis client, and 3 replica processes) share a 3-second token through a
// fault proxy while faults are injected at random for -soak (default 20s):
// Redis restarts (empty), pub/sub connections killed, every connection
// dropped repeatedly, issuer 503 bursts, and 200ms of added Redis latency.
// It fails on any token served at or after its expiry, on any caller error
// outside a fault window (plus soakGrace), on any untyped error, on more
// tokens minted than the formula below allows, and on goroutines left
// behind once every Cache is closed.
func TestSoak(t *testing.T) {
	if testing.Short() {
		t.Skip("soak skipped in -short mode")
	}
	dur := *soakFor
	srv := redistest.Start(t)
	direct := srv.Client(t)
	is := newIssuer(t, soakLife)
	runtime.GC()
	baseline := runtime.NumGoroutine()

	proxy, err := faultproxy.New(srv.Addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = proxy.Close() })
	cfg := baseConfig(proxy.Addr, is.URL)
	cfg.LockTTL = 2 * time.Second
	cfg.RefreshTimeout = 10 * time.Second
	cfg.FetchTimeout = time.Second
	cfg.RefreshAhead = soakShare
	cfg.Attempts, cfg.BackoffBase, cfg.BackoffMax = 3, 50*time.Millisecond, 400*time.Millisecond

	type local struct {
		c   *tokencache.Cache
		rdb *redis.Client
		f   *httpFetcher
	}
	var locals []local
	closeLocals := func() {
		for _, l := range locals {
			_ = l.c.Close()
			_ = l.rdb.Close()
			l.f.close()
		}
	}
	t.Cleanup(closeLocals)
	for range soakReplicas - soakProcesses {
		rdb := redis.NewClient(&redis.Options{Addr: proxy.Addr})
		f := newHTTPFetcher(is.URL, cfg.FetchTimeout)
		c, err := tokencache.New(rdb, f, cfg.options()...)
		if err != nil {
			t.Fatal(err)
		}
		locals = append(locals, local{c, rdb, f})
	}
	var procs []*replica
	for i := range soakProcesses {
		procs = append(procs, startReplica(t, fmt.Sprintf("p%d", i), cfg))
	}
	_, _, _, channel := locals[0].c.Keys()
	waitSubscribers(t, direct, channel, soakReplicas)

	// Callers.
	start := time.Now()
	var procSoaks []pending
	for _, p := range procs {
		procSoaks = append(procSoaks, pending{r: p, id: p.send("soak", dur.String(), soakEvery.String())})
	}
	reports := make([]soakReport, len(locals))
	var wg sync.WaitGroup
	for i, l := range locals {
		wg.Add(1)
		go func() {
			defer wg.Done()
			reports[i] = soakLoop(l.c, dur, soakEvery)
		}()
	}

	// Faults, until the callers stop: every kind in turn, in a random
	// order, so that a short soak still sees each of them.
	var faults []faultWindow
	order := rand.Perm(5)
	end := start.Add(dur)
	for {
		gap := 1500*time.Millisecond + rand.N(1500*time.Millisecond)
		if time.Now().Add(gap + 2*time.Second).After(end) {
			break
		}
		time.Sleep(gap) // the fault schedule: a random quiet gap of real time, then a fault held for its phase
		w := faultWindow{start: time.Now()}
		switch order[len(faults)%len(order)] {
		case 0:
			w.kind = "redis-restart"
			srv.Restart()
		case 1:
			w.kind = "pubsub-kill"
			if err := direct.ClientKillByFilter(context.Background(), "TYPE", "pubsub").Err(); err != nil {
				t.Errorf("CLIENT KILL: %v", err)
			}
		case 2:
			w.kind = "drop-connections"
			for range 5 {
				proxy.DropAll()
				time.Sleep(200 * time.Millisecond)
			}
		case 3:
			w.kind = "issuer-503"
			is.setMode(modeUnavailable)
			time.Sleep(time.Second)
			is.setMode(modeOK)
		case 4:
			w.kind = "slow-redis"
			proxy.SetDelay(200 * time.Millisecond)
			time.Sleep(1500 * time.Millisecond)
			proxy.SetDelay(0)
		}
		w.end = time.Now()
		faults = append(faults, w)
	}
	wg.Wait()
	for i, p := range procSoaks {
		line, ok := p.r.await(p.id, dur+time.Minute)
		body, found := strings.CutPrefix(line, "soak ")
		if !ok || !found {
			t.Fatalf("replica %s: no soak report (got %q)", procs[i].name, line)
		}
		var r soakReport
		if err := jsonUnmarshal(body, &r); err != nil {
			t.Fatalf("replica %s: %v", procs[i].name, err)
		}
		reports = append(reports, r)
	}
	elapsed := time.Since(start)

	// Invariants.
	excused := func(s callSpan) bool {
		for _, w := range faults {
			if !s.End.Before(w.start) && !s.Start.After(w.end.Add(soakGrace)) {
				return true
			}
		}
		return false
	}
	var calls, expired, excusedErrs int
	var unexcused []callSpan
	var redisReads, failOpen, fenced uint64
	for _, r := range reports {
		calls += r.Calls
		expired += len(r.Expired)
		for _, e := range r.Expired {
			t.Errorf("expired token served: %s", e)
		}
		for _, o := range r.Other {
			t.Errorf("untyped error: %s", o)
		}
		for _, s := range r.Errors {
			if excused(s) {
				excusedErrs++
			} else {
				unexcused = append(unexcused, s)
			}
		}
		redisReads += r.Stats.RedisReads
		failOpen += r.Stats.FailOpen
		fenced += r.Stats.FencedWrites
	}
	sort.Slice(unexcused, func(i, j int) bool { return unexcused[i].Start.Before(unexcused[j].Start) })
	for i, s := range unexcused {
		if i == 10 {
			t.Errorf("... and %d more errors outside fault windows", len(unexcused)-10)
			break
		}
		t.Errorf("caller error outside any fault window: %s at +%v (took %v)", s.Class, s.Start.Sub(start).Round(time.Millisecond), s.End.Sub(s.Start).Round(time.Millisecond))
	}

	// Tokens minted: refresh-ahead replaces the token once share·life of
	// it has passed, so a fault-free run mints ⌊elapsed/(share·life)⌋ + 1
	// (the first token included). Each Redis restart loses the token and
	// may cost one more. Allowed: that, plus one.
	restarts := 0
	kinds := map[string]int{}
	for _, w := range faults {
		kinds[w.kind]++
		if w.kind == "redis-restart" {
			restarts++
		}
	}
	expected := int64(elapsed/time.Duration(soakShare*float64(soakLife))) + 1
	allowed := expected + int64(restarts) + 1
	minted := is.minted.Load()
	t.Logf("soak: %v, %d replicas (%d processes), faults %v", elapsed.Round(time.Millisecond), soakReplicas, soakProcesses, kinds)
	t.Logf("soak: %d Token calls, %d expired tokens served, %d errors inside fault windows, %d outside", calls, expired, excusedErrs, len(unexcused))
	t.Logf("soak: %d tokens minted (expected %d = ⌊%v/(%.1f·%v)⌋+1; allowed %d = expected + %d restarts + 1), %d issuer calls in all, %d Redis reads, %d fail-open fetches, %d fenced writes",
		minted, expected, elapsed.Round(time.Millisecond), soakShare, soakLife, allowed, restarts, is.calls.Load(), redisReads, failOpen, fenced)
	if minted > allowed {
		t.Errorf("tokens minted = %d, want at most %d", minted, allowed)
	}

	// Leaks: with every Cache, client and replica closed, the goroutine
	// count returns to what it was before they were made.
	for _, p := range procs {
		p.stop()
	}
	closeLocals()
	_ = proxy.Close()
	is.srv.CloseClientConnections()
	deadline := time.Now().Add(15 * time.Second)
	for runtime.NumGoroutine() > baseline+2 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond) // the poll of a wait on a condition; on timeout the goroutines are dumped below
	}
	if n := runtime.NumGoroutine(); n > baseline+2 {
		var b strings.Builder
		_ = pprof.Lookup("goroutine").WriteTo(&b, 1)
		t.Errorf("goroutines after closing everything = %d, want at most %d (baseline %d + 2):\n%s", n, baseline+2, baseline, b.String())
	} else {
		t.Logf("soak: goroutines %d before, %d after closing everything", baseline, n)
	}
}
