// Package testutil holds the helpers the test suites share: waiting on a
// condition, a context bounded for a test, and a clock the test moves by
// hand. It is imported by _test.go files only.
package testutil

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"
)

// WaitBound is how long Eventually waits for its condition before it
// fails the test: generous, so that a loaded machine is not a failure.
const WaitBound = 30 * time.Second

// ContextBound is how long a Context lives: a test that hangs on Redis or
// an issuer fails with the context's error instead of the test binary's
// timeout.
const ContextBound = 20 * time.Second

// Eventually polls cond (a count or a state, never a duration) until it
// holds, and fails the test naming what it waited for if it does not
// within WaitBound. It must be called from the test's goroutine.
func Eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(WaitBound)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

// Context returns a context that ends after ContextBound or when the test
// ends, whichever comes first.
func Context(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), ContextBound)
	t.Cleanup(cancel)
	return ctx
}

// Buffer is a bytes.Buffer safe for concurrent writes and reads: a
// logger's output, or a child process's stderr, read while it is written.
type Buffer struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (l *Buffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// Len returns the number of bytes written so far.
func (l *Buffer) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Len()
}

// String returns what was written so far.
func (l *Buffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
