// Package securitytest holds what the security tests share: the minimal
// Redis ACL rule as docs/redis.md documents it, a user created with it on a
// real redis-server, a recorder of everything the tokencache writes and
// publishes in Redis, and a scanner that looks for secrets in outputs and
// reports a leak by name and fingerprint, never by value.
package securitytest

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// ACLPrefix starts docs/redis.md's ACL line; the rule is what follows the
// password.
const ACLPrefix = "ACL SETUSER tokencache on "

// ReadmeACL returns the ACL rule that docs/redis.md documents for the
// tokencache user (everything after the password), split into its parts:
// key and channel patterns and command permissions, e.g. "~tokencache:*",
// "&tokencache:*", "resetchannels", "-@all", "+get".
func ReadmeACL(tb testing.TB) []string {
	tb.Helper()
	path := filepath.Join(repoRoot(tb), "docs", "redis.md")
	f, err := os.Open(path)
	if err != nil {
		tb.Fatalf("securitytest: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		i := strings.Index(line, ACLPrefix)
		if i < 0 {
			continue
		}
		fields := strings.Fields(line[i+len(ACLPrefix):])
		if len(fields) < 2 {
			break
		}
		rule := fields[1:] // drop the password
		for j, r := range rule {
			if strings.HasPrefix(r, "#") { // a shell comment ends the rule
				rule = rule[:j]
				break
			}
			rule[j] = strings.Trim(r, "'\"")
		}
		return rule
	}
	tb.Fatalf("securitytest: docs/redis.md has no line with %q", ACLPrefix)
	return nil
}

// Without returns rule with the permission perm ("+publish") left out.
func Without(rule []string, perm string) []string {
	var out []string
	for _, r := range rule {
		if !strings.EqualFold(r, perm) {
			out = append(out, r)
		}
	}
	return out
}

// SetUser creates (or resets) user with password pass and the given rule
// through admin, a client with ACL rights.
func SetUser(tb testing.TB, admin redis.UniversalClient, user, pass string, rule []string) {
	tb.Helper()
	args := []any{"ACL", "SETUSER", user, "reset", "on", ">" + pass}
	for _, r := range rule {
		args = append(args, r)
	}
	if err := admin.Do(context.Background(), args...).Err(); err != nil {
		tb.Fatalf("securitytest: ACL SETUSER %s %v: %v", user, rule, err)
	}
}

// ACLDenials returns the distinct denials in ACL LOG for user
// ("command get", "key ...", "channel ..."), and resets the log.
func ACLDenials(tb testing.TB, admin redis.UniversalClient, user string) []string {
	tb.Helper()
	ctx := context.Background()
	entries, err := admin.ACLLog(ctx, 128).Result()
	if err != nil {
		tb.Fatalf("securitytest: ACL LOG: %v", err)
	}
	_ = admin.ACLLogReset(ctx).Err()
	seen := map[string]bool{}
	var out []string
	for _, e := range entries {
		if e.Username != user {
			continue
		}
		d := e.Reason + " " + e.Object
		if !seen[d] {
			seen[d] = true
			out = append(out, d)
		}
	}
	sort.Strings(out)
	return out
}

// libraryModule is the module line of the repository root's go.mod.
var libraryModule = regexp.MustCompile(`(?m)^module\s+github\.com/tokencache/tokencache\s*$`)

// repoRoot is the repository root: the nearest directory above the working
// directory whose go.mod is the library's (the commands' module in cmd/
// has a go.mod of its own).
func repoRoot(tb testing.TB) string {
	tb.Helper()
	dir, err := os.Getwd()
	if err != nil {
		tb.Fatalf("securitytest: %v", err)
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && libraryModule.Match(b) {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			tb.Fatalf("securitytest: no go.mod of github.com/tokencache/tokencache above the working directory")
		}
		dir = parent
	}
}

// Fingerprint names a secret in a failure message without showing it: its
// length and the first 12 hex digits of its SHA-256.
func Fingerprint(s string) string {
	sum := sha256.Sum256([]byte(s))
	return fmt.Sprintf("len %d sha256:%s", len(s), hex.EncodeToString(sum[:6]))
}

// Scanner looks for secrets in everything a test saw. Each leak is
// reported with the secret's name, where it was found, and the position,
// never the secret or the text around it.
type Scanner struct {
	mu      sync.Mutex // guards secrets
	secrets []namedSecret
}

type namedSecret struct{ name, value string }

// Add registers a secret under a name ("API key"). Values shorter than 8
// bytes are refused: they would match by accident.
func (s *Scanner) Add(tb testing.TB, name, value string) {
	tb.Helper()
	if len(value) < 8 {
		tb.Fatalf("securitytest: secret %q is too short to scan for (%s)", name, Fingerprint(value))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.secrets = append(s.secrets, namedSecret{name, value})
}

// Leaks returns one line per secret found in text, naming where.
func (s *Scanner) Leaks(where, text string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, sec := range s.secrets {
		if i := strings.Index(text, sec.value); i >= 0 {
			out = append(out, fmt.Sprintf("%s (%s) found in %s at byte %d of %d", sec.name, Fingerprint(sec.value), where, i, len(text)))
		}
	}
	return out
}

// Check reports every secret found in text as a test error.
func (s *Scanner) Check(tb testing.TB, where, text string) {
	tb.Helper()
	for _, l := range s.Leaks(where, text) {
		tb.Error("leak: " + l)
	}
}

// Recorder keeps every message published on the tokencache channels while
// it runs (PSUBSCRIBE tokencache:*).
type Recorder struct {
	ps     *redis.PubSub
	done   chan struct{}
	mu     sync.Mutex // guards msgs
	msgs   []Message
	cancel context.CancelFunc
}

// Message is one published message.
type Message struct{ Channel, Payload string }

// Record starts recording the messages on the channels that match pattern
// (e.g. "tokencache:*"); it stops at test cleanup.
func Record(tb testing.TB, c *redis.Client, pattern string) *Recorder {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &Recorder{ps: c.PSubscribe(ctx, pattern), done: make(chan struct{}), cancel: cancel}
	if _, err := r.ps.Receive(ctx); err != nil {
		cancel()
		tb.Fatalf("securitytest: PSUBSCRIBE %s: %v", pattern, err)
	}
	go func() {
		defer close(r.done)
		ch := r.ps.Channel(redis.WithChannelSize(1024))
		for m := range ch {
			r.mu.Lock()
			r.msgs = append(r.msgs, Message{m.Channel, m.Payload})
			r.mu.Unlock()
		}
	}()
	tb.Cleanup(r.Stop)
	return r
}

// Messages returns what was recorded so far.
func (r *Recorder) Messages() []Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Message(nil), r.msgs...)
}

// Stop ends the recording; it is safe to call twice.
func (r *Recorder) Stop() {
	if r.cancel == nil {
		return
	}
	_ = r.ps.Close()
	r.cancel()
	r.cancel = nil
	select {
	case <-r.done:
	case <-time.After(5 * time.Second):
	}
}

// Dump returns every key matching pattern with its value as a string (GET
// for strings; TYPE otherwise), found with SCAN.
func Dump(tb testing.TB, c *redis.Client, pattern string) map[string]string {
	tb.Helper()
	ctx := context.Background()
	out := map[string]string{}
	iter := c.Scan(ctx, 0, pattern, 100).Iterator()
	for iter.Next(ctx) {
		k := iter.Val()
		typ, err := c.Type(ctx, k).Result()
		if err != nil {
			tb.Fatalf("securitytest: TYPE %s: %v", k, err)
		}
		if typ != "string" {
			out[k] = "(" + typ + ")"
			continue
		}
		v, err := c.Get(ctx, k).Result()
		if err != nil && err != redis.Nil {
			tb.Fatalf("securitytest: GET %s: %v", k, err)
		}
		out[k] = v
	}
	if err := iter.Err(); err != nil {
		tb.Fatalf("securitytest: SCAN %s: %v", pattern, err)
	}
	return out
}
