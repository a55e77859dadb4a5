package bench

import (
	"math"
	"slices"
	"time"
)

// Sample is one Token call as a caller saw it: when it started, relative
// to the cell's start, and how long it took.
type Sample struct {
	Start time.Duration `json:"s"`
	Took  time.Duration `json:"d"`
}

// Latency summarises time-to-token over a set of samples.
type Latency struct {
	Count int           `json:"count"`
	P50   time.Duration `json:"p50_ns"`
	P99   time.Duration `json:"p99_ns"`
	Max   time.Duration `json:"max_ns"`
}

// Percentile returns the p-th percentile (0 < p <= 100) of sorted by the
// nearest-rank method: the smallest value such that at least p percent of
// the values are at or below it. It returns 0 for an empty slice.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	if p <= 0 {
		return sorted[0]
	}
	rank := int(math.Ceil(p / 100 * float64(n)))
	rank = min(max(rank, 1), n)
	return sorted[rank-1]
}

// Summarize returns the count, p50, p99 and max of durations. It sorts
// durations in place.
func Summarize(durations []time.Duration) Latency {
	if len(durations) == 0 {
		return Latency{}
	}
	slices.Sort(durations)
	return Latency{
		Count: len(durations),
		P50:   Percentile(durations, 50),
		P99:   Percentile(durations, 99),
		Max:   durations[len(durations)-1],
	}
}

// Window is a closed interval of time since a cell's start.
type Window struct {
	From, To time.Duration
}

// Rounds groups sorted issuer call times into renewal rounds: a call
// more than gap after the previous one starts a new round. Each round is
// returned as the window from its first to its last call, and counts
// holds the number of calls in each.
func Rounds(calls []time.Duration, gap time.Duration) (rounds []Window, counts []int) {
	for i, t := range calls {
		if i == 0 || t-calls[i-1] > gap {
			rounds = append(rounds, Window{From: t, To: t})
			counts = append(counts, 0)
		}
		rounds[len(rounds)-1].To = t
		counts[len(counts)-1]++
	}
	return rounds, counts
}

// Overlaps reports whether a sample's call was in flight at any moment of
// one of windows, each widened by pad on both sides.
func Overlaps(s Sample, windows []Window, pad time.Duration) bool {
	end := s.Start + s.Took
	for _, w := range windows {
		if s.Start <= w.To+pad && end >= w.From-pad {
			return true
		}
	}
	return false
}
