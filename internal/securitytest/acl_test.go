package securitytest

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/tokencache/issuertest"
)

// cliOnly are the permissions of the README rule that only the command
// needs (it pings Redis before each command and in /readyz); the CLI's
// ACL test shows that they are needed.
var cliOnly = map[string]bool{"+ping": true}

// aclFlow creates user with rule on a fresh redis-server and runs the
// library's whole flow as that user, returning its error and what ACL LOG
// recorded as denied.
func aclFlow(t *testing.T, user string, rule []string, timeout time.Duration) (denied []string, err error) {
	t.Helper()
	s := redistest.Start(t)
	admin := s.Client(t)
	iss := issuertest.RunT(t, issuertest.WithLatency(100*time.Millisecond))
	SetUser(t, admin, user, "pw-"+user, rule)
	dial := func() redis.UniversalClient {
		c := redis.NewClient(&redis.Options{Addr: s.Addr, Username: user, Password: "pw-" + user, MaxRetries: -1})
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	err = libraryFlow(ctx, dial, iss, "acl")
	return ACLDenials(t, admin, user), err
}

// TestACLMinimalRule creates the user that README.md documents, exactly,
// and runs the library's whole flow as that user: it must work without a
// single denial in ACL LOG. Then, for each command of the rule, a user
// without that one command must make the flow fail: the rule is no larger
// than needed, and this test can fail.
func TestACLMinimalRule(t *testing.T) {
	rule := ReadmeACL(t)
	t.Logf("README rule: %s", strings.Join(rule, " "))
	denied, err := aclFlow(t, "tokencache", rule, time.Minute)
	if err != nil {
		t.Fatalf("the README's ACL rule is not enough for the library: %v; ACL LOG: %v", err, denied)
	}
	if len(denied) != 0 {
		t.Errorf("the library worked but Redis denied: %v", denied)
	}

	for _, perm := range rule {
		if !strings.HasPrefix(perm, "+") || cliOnly[perm] {
			continue
		}
		t.Run("without "+perm, func(t *testing.T) {
			t.Parallel()
			// A fresh server each: its script cache is empty, so EVAL is
			// needed as it is after a restart or a failover.
			denied, err := aclFlow(t, "tokencache", Without(rule, perm), 15*time.Second)
			if degrades[perm] {
				// Used (the denial shows in ACL LOG) but not needed: the
				// library falls back, as for a rule written before it.
				if err != nil {
					t.Errorf("without %s the flow failed (%v): it should degrade, not fail", perm, err)
				}
			} else if err == nil {
				t.Errorf("the flow worked without %s (ACL LOG: %v): the rule is larger than needed, or the flow misses a path", perm, denied)
			}
			if want := "command " + strings.TrimPrefix(perm, "+"); !contains(denied, want) {
				t.Errorf("without %s: ACL LOG %v lacks %q", perm, denied, want)
			}
		})
	}
}

// degrades lists the commands of the rule that the library uses but can do
// without: TIME (Redis's clock, on which tokens' ages are measured; without
// it, a key's PTTL alone, as with an ACL rule written for an earlier
// release).
var degrades = map[string]bool{"+time": true}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
