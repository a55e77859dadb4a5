package tokencache

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"pgregory.net/rapid"
)

// idle reports whether no worker goroutine runs or is being started.
func (w *worker) idle() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return !w.running
}

// A worker loses no wake-up: every ask is followed by a run of its job
// that starts after the ask, however asks from many goroutines interleave
// with runs and with the worker's exits; one goroutine runs at a time;
// and asks that pile up while a run is going cost one more run, not one
// each. The interleavings are drawn by rapid: which goroutine asks which
// job, and where each run pauses.
func TestWorkerLosesNoWakeUpAndRunsOneAtATime(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		var (
			asked    [2]atomic.Int64 // per job: the last ask's number
			seen     [2]atomic.Int64 // per job: the highest ask number a run started after
			seq      atomic.Int64
			inRun    atomic.Int32
			overlaps atomic.Int32
			runs     atomic.Int32
			wg       sync.WaitGroup
		)
		pauses := rapid.SliceOfN(rapid.IntRange(0, 3), 1, 64).Draw(rt, "pauses")
		var w worker
		w.init(nil, func(fn func(context.Context)) bool {
			wg.Add(1)
			go func() { defer wg.Done(); fn(context.Background()) }()
			return true
		})
		w.run = func(_ context.Context, j job) {
			if inRun.Add(1) > 1 {
				overlaps.Add(1)
			}
			n := runs.Add(1)
			// What this run covers: every ask made before it began.
			now := seq.Load()
			for i, b := range []job{jobSync, jobCheck} {
				if j&b != 0 {
					for {
						s := seen[i].Load()
						if now <= s || seen[i].CompareAndSwap(s, now) {
							break
						}
					}
				}
			}
			for range pauses[int(n)%len(pauses)] {
				runtime.Gosched()
			}
			inRun.Add(-1)
		}
		askers := rapid.IntRange(1, 8).Draw(rt, "askers")
		plans := make([][]job, askers)
		yields := make([][]int, askers)
		for i := range plans {
			plans[i] = rapid.SliceOfN(rapid.SampledFrom([]job{jobSync, jobCheck, jobSync | jobCheck}), 1, 50).Draw(rt, "plan")
			yields[i] = rapid.SliceOfN(rapid.IntRange(0, 2), len(plans[i]), len(plans[i])).Draw(rt, "yields")
		}
		var askersWG sync.WaitGroup
		for a, plan := range plans {
			askersWG.Add(1)
			go func() {
				defer askersWG.Done()
				for k, j := range plan {
					for range yields[a][k] {
						runtime.Gosched()
					}
					// The ask's number is taken before the ask: a run that
					// read seq at or after it started after the ask began.
					n := seq.Add(1)
					for i, b := range []job{jobSync, jobCheck} {
						if j&b != 0 {
							asked[i].Store(max(asked[i].Load(), n))
						}
					}
					w.ask(j)
				}
			}()
		}
		askersWG.Wait()
		wg.Wait() // every worker goroutine has exited: nothing more will run
		if !w.idle() {
			rt.Fatal("the worker says it runs after its goroutine exited")
		}
		// A re-read asked must be followed by one that started after the
		// ask. (A check asked while a check runs is covered by that run:
		// the model test below pins that rule step by step.)
		if a, s := asked[0].Load(), seen[0].Load(); a > s {
			rt.Fatalf("sync asked at %d, but the last run of it started at %d: a lost wake-up", a, s)
		}
		if asked[1].Load() > 0 && seen[1].Load() == 0 {
			rt.Fatal("a check was asked and never ran")
		}
		if n := overlaps.Load(); n > 0 {
			rt.Fatalf("%d runs overlapped another", n)
		}
		total := 0
		for _, p := range plans {
			total += len(p)
		}
		if r := int(runs.Load()); r > total {
			rt.Fatalf("%d runs for %d asks", r, total)
		}
	})
}

// Re-reads asked while a run is going are one more run between them, not
// one each; checks asked while a check runs are covered by it.
func TestWorkerCoalescesAsksMadeDuringARun(t *testing.T) {
	var w worker
	var wg sync.WaitGroup
	w.init(nil, func(fn func(context.Context)) bool {
		wg.Add(1)
		go func() { defer wg.Done(); fn(context.Background()) }()
		return true
	})
	entered, release := make(chan struct{}), make(chan struct{})
	var runs atomic.Int32
	w.run = func(context.Context, job) {
		if runs.Add(1) == 1 {
			close(entered)
			<-release
		}
	}
	w.ask(jobCheck)
	<-entered
	for range 100 {
		w.ask(jobCheck) // covered by the check under way
	}
	if w.jobs.Load() != 0 {
		t.Fatalf("checks asked during a check were queued: jobs %b", w.jobs.Load())
	}
	for range 100 {
		w.ask(jobSync)
	}
	close(release)
	wg.Wait()
	if got := runs.Load(); got != 2 {
		t.Errorf("runs = %d, want 2: the first, and one for the 100 re-reads asked during it", got)
	}
}

// A worker whose cache is closing starts nothing, and is not left marked
// running: it starts once the cache would take goroutines again.
func TestWorkerThatCannotStartIsNotLeftRunning(t *testing.T) {
	var w worker
	w.init(func(context.Context, job) { t.Fatal("ran although nothing could start") },
		func(func(context.Context)) bool { return false })
	w.ask(jobCheck)
	if !w.idle() {
		t.Fatal("marked running although it could not start")
	}
	started := false
	w.start = func(fn func(context.Context)) bool { started = true; return true }
	w.ask(jobCheck)
	if !started {
		t.Fatal("an ask after a failed start started nothing")
	}
}

// The worker's protocol, step by step, as a rapid state machine: the test
// plays the worker goroutine (start only records that one was started) and
// every asking goroutine, and steps an ask's three steps (set the bits,
// fill the slot, ensure a worker) one at a time, so every interleaving of
// asks' steps, takes, ends of runs and exits is one drawn sequence. After every step: at
// most one worker goroutine exists, running says whether one does, and
// once no ask is half-way, a job asked is one a worker will take (a full
// slot and a running worker). Every ask is taken by a take that comes
// after its first step.
func TestWorkerProtocolModel(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		var w worker
		goroutines := 0 // worker goroutines started and not exited
		w.init(nil, func(func(context.Context)) bool { goroutines++; return true })
		var owed job      // jobs asked and not taken since: the model
		var inRun job     // the batch taken last (its run is under way)
		var pending []int // asks half-way: the steps each has done (1 or 2)
		rt.Repeat(map[string]func(*rapid.T){
			"ask": func(rt *rapid.T) {
				j := rapid.SampledFrom([]job{jobSync, jobCheck, jobSync | jobCheck}).Draw(rt, "job")
				// A check asked while a check runs is covered by it.
				owed |= j &^ (inRun & jobCheck)
				if w.set(j) != 0 {
					pending = append(pending, 1)
				}
			},
			"step an ask": func(rt *rapid.T) {
				if len(pending) == 0 {
					rt.Skip("no ask half-way")
				}
				i := rapid.IntRange(0, len(pending)-1).Draw(rt, "ask")
				if pending[i] == 1 {
					w.signal()
					pending[i] = 2
					return
				}
				w.ensure()
				pending = append(pending[:i], pending[i+1:]...)
			},
			"take": func(rt *rapid.T) {
				if goroutines == 0 || inRun != 0 {
					rt.Skip("no worker goroutine, or its run is under way")
				}
				j := w.take()
				if j != 0 && j != owed {
					rt.Fatalf("took %b, want every job asked since the last take (%b)", j, owed)
				}
				if j == 0 && owed != 0 && len(pending) == 0 {
					rt.Fatalf("the worker exited with jobs %b asked", owed)
				}
				owed &^= j
				inRun = j
				if j == 0 {
					goroutines-- // the loop ends
				}
			},
			"the run ends": func(rt *rapid.T) {
				if inRun == 0 {
					rt.Skip("no run under way")
				}
				w.ran()
				inRun = 0
			},
			"": func(rt *rapid.T) {
				if goroutines > 1 {
					rt.Fatalf("%d worker goroutines", goroutines)
				}
				if w.idle() != (goroutines == 0) {
					rt.Fatalf("running = %v with %d goroutines", !w.idle(), goroutines)
				}
				if len(pending) > 0 || owed == 0 {
					return
				}
				if goroutines != 1 {
					rt.Fatalf("jobs %b asked with no worker to take them: a lost wake-up", owed)
				}
				if len(w.wake) != 1 {
					rt.Fatalf("jobs %b asked with the wake-up slot empty: a lost wake-up", owed)
				}
			},
		})
	})
}
