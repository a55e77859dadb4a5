package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/tokencache"
	"github.com/tokencache/tokencache/tokencache/basiq"
)

// app is one invocation: its environment, its global flags and the
// secrets it has read (kept to scrub them from any message).
type app struct {
	env     Env
	g       globals
	secrets scrubList // every secret read, to scrub from messages
	log     *slog.Logger
	watch   watchList // the values read from files, re-read while the command runs

	credMu sync.Mutex                  // guards creds
	creds  map[string]*watched[string] // the secrets read, by file and variable: read once
}

// session is what a command works with: Redis, the cache, and the token
// the command is about (the server token, or one user's client token).
type session struct {
	redis *redisConn
	cache *tokencache.Cache
	tok   *tokencache.Handle // the server token's, or the user's with --user-id
}

func (s *session) Close() {
	if s.cache != nil {
		_ = s.cache.Close()
	}
	if s.redis != nil {
		_ = s.redis.Close()
	}
}

// openOpts says what a command needs from open.
type openOpts struct {
	// ping makes Redis answer first, so that a one-shot command fails
	// with the Redis address rather than a timeout.
	ping bool
	// noFetch is for commands that only read or delete (inspect,
	// invalidate): they run without credentials.
	noFetch bool
	// wrap, if not nil, wraps the provider's fetcher (metrics).
	wrap func(tokencache.Fetcher) tokencache.Fetcher
	// logFailures keeps the library's log line of a failed refresh at
	// every level: for daemon, serve and proxy, whose log is where a
	// failure shows. The one-shot commands return the failure as their
	// one-line message, so the library's line would repeat it (it is kept
	// at debug level).
	logFailures bool
}

// open connects to Redis, builds the provider's fetcher and the cache.
func (a *app) open(ctx context.Context, o openOpts, opts ...tokencache.Option) (*session, error) {
	a.log = a.g.logger(a)
	redis.SetLogger(redisLogger{a.log})
	libLog := a.log
	if !o.logFailures && a.g.logLevel > slog.LevelDebug {
		libLog = slog.New(dropMessages{a.log.Handler(), refreshFailedMsg})
	}
	var f tokencache.Fetcher = noFetcher{}
	if !o.noFetch {
		var err error
		if f, err = a.fetcherFor(a.g.scope, a.g.userID); err != nil {
			return nil, err
		}
		if a.g.scope == "CLIENT_ACCESS" {
			// The server fetcher is never used: the command is about
			// one user's client token.
			f = noFetcher{}
		}
	}
	if o.wrap != nil {
		f = o.wrap(f)
	}
	if a.g.scope == "CLIENT_ACCESS" {
		opts = append(opts, tokencache.WithClientTokens(func(userID string) (tokencache.Fetcher, error) {
			if o.noFetch {
				return noFetcher{}, nil
			}
			uf, err := a.fetcherFor("CLIENT_ACCESS", userID)
			if err == nil && o.wrap != nil {
				uf = o.wrap(uf)
			}
			return uf, err
		}, 16))
	}
	tc, err := a.redisTLS()
	if err != nil {
		return nil, err
	}
	rc, err := openRedis(a.g.redisURL, tc)
	if err != nil {
		return nil, err
	}
	s := &session{redis: rc}
	if o.ping {
		if err := rc.ping(ctx); err != nil {
			s.Close()
			return nil, err
		}
	}
	base := []tokencache.Option{
		tokencache.WithNamespace(a.g.namespace),
		tokencache.WithLogger(libLog),
		// The CLI's job is the shared token: when Redis is down, say so
		// rather than calling the issuer from every cron host.
		tokencache.WithFailOpen(false),
		// The library's default, stated here because the daemon's
		// refresh-window gauge (metrics.go) is computed from it.
		tokencache.WithRefreshAhead(refreshAheadShare),
	}
	kr, err := a.keyRing()
	if err != nil {
		s.Close()
		return nil, err
	}
	if kr != nil {
		base = append(base, tokencache.WithEncryption(kr))
	}
	c, err := tokencache.New(rc.client, f, append(base, opts...)...)
	if err != nil {
		s.Close()
		return nil, usagef("%v", err)
	}
	s.cache, s.tok = c, c.Handle
	if a.g.scope == "CLIENT_ACCESS" {
		u, err := c.User(a.g.userID)
		if err != nil {
			s.Close()
			return nil, usagef("--user-id: %v", err)
		}
		s.tok = u
	}
	return s, nil
}

// refreshFailedMsg is the library's log message for a failed refresh.
const refreshFailedMsg = "tokencache: refresh failed"

// dropMessages is a slog handler that leaves out records with a given
// message.
type dropMessages struct {
	slog.Handler
	msg string
}

func (d dropMessages) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == d.msg {
		return nil
	}
	return d.Handler.Handle(ctx, r)
}

func (d dropMessages) WithAttrs(as []slog.Attr) slog.Handler {
	return dropMessages{d.Handler.WithAttrs(as), d.msg}
}

func (d dropMessages) WithGroup(name string) slog.Handler {
	return dropMessages{d.Handler.WithGroup(name), d.msg}
}

// label names the token for logs and metrics: the namespace, and the
// user of a client token.
func (a *app) label() string {
	if a.g.scope == "CLIENT_ACCESS" {
		return a.g.namespace + "/" + a.g.userID
	}
	return a.g.namespace
}

// explain turns an error into the one line the user sees: the cause named
// (issuer code and correlationId, Redis address), secrets scrubbed. Usage
// errors stay usage errors.
func (a *app) explain(err error) error {
	var ue *UsageError
	if errors.As(err, &ue) {
		// main prefixes every message with "tokencache: " once.
		return &UsageError{msg: a.scrub(strings.TrimPrefix(ue.msg, "tokencache: "))}
	}
	return &failure{msg: a.scrub(a.describe(err)), err: err}
}

func (a *app) describe(err error) string {
	var (
		fe *tokencache.FetchError
		re *tokencache.RedisError
		rf *redisFailure
	)
	switch {
	case errors.Is(err, context.Canceled):
		return "interrupted"
	case errors.As(err, &fe):
		return a.describeFetch(fe)
	case errors.As(err, &rf):
		return rf.Error()
	case errors.As(err, &re) && unreachable(re.Err):
		return unreachableMsg(a.redisAddr(), re.Err)
	case errors.As(err, &re):
		return fmt.Sprintf("redis %s: %s %s: %v", a.redisAddr(), re.Op, re.Key, re.Err)
	case errors.Is(err, tokencache.ErrRedisUnavailable):
		return fmt.Sprintf("redis %s unreachable (check %s) and no valid token held", a.redisAddr(), redisHint)
	}
	return strings.TrimPrefix(err.Error(), "tokencache: ")
}

func (a *app) describeFetch(fe *tokencache.FetchError) string {
	var b strings.Builder
	fmt.Fprintf(&b, "issuer %s: token request failed", a.issuerName())
	if fe.Remote {
		b.WriteString(" (reported by the replica holding the lock)")
	}
	if fe.Code != "" {
		fmt.Fprintf(&b, ": code %s", fe.Code)
	}
	msg := fe.Message
	if fe.Err != nil {
		msg = strings.TrimPrefix(fe.Err.Error(), "tokencache: ")
	}
	if id := correlationID(fe.Err); id != "" && !strings.Contains(msg, id) {
		fmt.Fprintf(&b, " (correlationId %s)", id)
	}
	if msg != "" {
		fmt.Fprintf(&b, ": %s", msg)
	}
	b.WriteString(retryNote(fe, time.Now()))
	return b.String()
}

// retryNote says whether a failed issuer call is tried again, and when:
// "permanent" only for an error the issuer says will not go away.
func retryNote(fe *tokencache.FetchError, now time.Time) string {
	when := func() string {
		return fmt.Sprintf("%s (in %s)", fe.Until.UTC().Format(time.TimeOnly), roundDur(max(fe.Until.Sub(now), 0)))
	}
	switch {
	case !fe.Retryable && !fe.Until.IsZero():
		return "; permanent error: the issuer is not called again before " + when()
	case !fe.Retryable:
		return "; permanent error"
	case !fe.Until.IsZero():
		return "; retryable: next try at " + when()
	default:
		return "; retryable: the next call tries again"
	}
}

// correlationID finds an issuer correlation id in err's chain.
func correlationID(err error) string {
	var be *basiq.Error
	if err != nil && errors.As(err, &be) {
		return be.CorrelationID
	}
	return ""
}

func (a *app) issuerName() string {
	if a.g.provider == "oauth2" && a.g.tokenURL != "" {
		return redactURL(a.g.tokenURL)
	}
	return redactURL(a.g.issuerURL)
}

func (a *app) redisAddr() string {
	if rc, err := redisAddrOf(a.g.redisURL); err == nil {
		return rc
	}
	return "(unparsable URL)"
}

// redisAddrOf names the server(s) of a Redis URL without its password.
func redisAddrOf(raw string) (string, error) {
	if raw == "embedded" {
		return "embedded", nil
	}
	if strings.Contains(raw, ",") || strings.Contains(raw, "+sentinel://") {
		return redactURL(raw), nil
	}
	u, err := parseURLHost(raw)
	return u, err
}

// scrub replaces by [redacted] every secret this invocation read, and
// every secret its environment holds even if it was not read yet: a key
// pasted into the wrong flag or argument must not come back in the usage
// error that rejects it.
func (a *app) scrub(s string) string {
	for _, sec := range a.secretsToScrub() {
		if len(sec) >= 4 {
			s = strings.ReplaceAll(s, sec, "[redacted]")
		}
	}
	return s
}

func (a *app) secretsToScrub() []string {
	out := a.secrets.list()
	for k := range secretEnv {
		v := strings.TrimSpace(a.env.getenv(k))
		switch {
		case v == "":
		case k == EnvEncryptionKeys:
			out = append(out, keySpecSecrets(v)...)
		default:
			out = append(out, v)
		}
	}
	// Longest first, so that a secret containing another is replaced whole.
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

// keySpecSecrets returns the secret parts of a key ring "id:base64key,...":
// each entry and each key, but not the ids, which messages name.
func keySpecSecrets(spec string) []string {
	var out []string
	for _, part := range strings.Split(spec, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		out = append(out, part)
		if _, key, ok := strings.Cut(part, ":"); ok && key != "" {
			out = append(out, key)
		}
	}
	return out
}

// failure is a scrubbed, explained error that exits 1.
type failure struct {
	msg string
	err error
}

func (f *failure) Error() string { return f.msg }
func (f *failure) Unwrap() error { return f.err }

// noFetcher is the fetcher of commands that never fetch.
type noFetcher struct{}

func (noFetcher) Fetch(context.Context) (tokencache.Token, error) {
	return tokencache.Token{}, errors.New("this command does not fetch tokens")
}
