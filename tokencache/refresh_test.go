package tokencache

import (
	"errors"
	"fmt"
	"testing"
)

// Every outcome of a refresh under the lock, for each caller, maps to one
// answer (refresher.refresh's one switch), without Redis.
func TestRefreshOutcomeForEachCaller(t *testing.T) {
	someErr := errors.New("x")
	type row struct {
		out    outcome
		hasTok bool
		err    error
		want   [3]verdict // forCaller, forAhead, forCron
	}
	for _, tc := range []row{
		{stored, true, nil, [3]verdict{serve, serve, serve}},
		{fenced, true, nil, [3]verdict{serve, serve, serve}},
		{foundFresh, true, nil, [3]verdict{serve, serve, serve}},
		// A refresh ahead that found the fleet in a failure's window.
		{foundFresh, false, someErr, [3]verdict{fail, fail, fail}},
		// The issuer's token, not stored: served, written back later.
		{redisDown, true, someErr, [3]verdict{serve, serve, serve}},
		// Nothing to serve: a caller fails open (or closed); a refresh
		// ahead keeps its copy; a cron job reports it.
		{redisDown, false, someErr, [3]verdict{failOpen, fail, fail}},
		// Another owner's token is on the way: only a caller waits.
		{leaseLost, false, nil, [3]verdict{waitHolder, fail, fail}},
		{issuerFailed, false, someErr, [3]verdict{fail, fail, fail}},
		{unreadable, false, someErr, [3]verdict{fail, fail, fail}},
	} {
		for w, want := range tc.want {
			t.Run(fmt.Sprintf("outcome %d tok %v for %d", tc.out, tc.hasTok, w), func(t *testing.T) {
				if got := answer(why(w), tc.out, tc.hasTok, tc.err); got != want {
					t.Errorf("answer = %d, want %d", got, want)
				}
			})
		}
	}
}
