package testutil

import (
	"sync/atomic"
	"testing"
	"time"
)

func TestClockTimersFireOnlyWhenAdvancedPastTheirMoment(t *testing.T) {
	clk := NewClock(time.Date(2025, 3, 14, 9, 0, 0, 0, time.UTC))
	var fired atomic.Int64
	tm := clk.AfterFunc(time.Minute, func() { fired.Add(1) })
	clk.Advance(59 * time.Second)
	if tm.Stop() != true {
		t.Fatal("Stop before the moment: want true (the timer was active)")
	}
	clk.Advance(time.Hour)
	if tm.Reset(time.Second) {
		t.Fatal("Reset of a stopped timer: want false")
	}
	clk.Advance(time.Second)
	Eventually(t, "the timer to fire once", func() bool { return fired.Load() == 1 })
	clk.Advance(time.Hour)
	if tm.Stop() {
		t.Error("Stop after the timer fired: want false")
	}
	if got, want := clk.Now(), time.Date(2025, 3, 14, 11, 1, 0, 0, time.UTC); !got.Equal(want) {
		t.Errorf("Now = %v, want %v", got, want)
	}
	if n := fired.Load(); n != 1 {
		t.Errorf("timer fired %d times, want 1", n)
	}
}

func TestContextEndsWithTheTest(t *testing.T) {
	var ctx interface{ Err() error }
	t.Run("inner", func(t *testing.T) {
		ctx = Context(t)
		if ctx.Err() != nil {
			t.Fatal("context ended while the test runs")
		}
	})
	if ctx.Err() == nil {
		t.Error("context still live after its test ended")
	}
}
