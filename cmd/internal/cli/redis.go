package cli

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// redisConn is an open Redis client and the address to name in errors
// (never the URL: it may hold a password).
type redisConn struct {
	client redis.UniversalClient
	addr   string
	mini   *miniredis.Miniredis // the embedded server, if any
}

func (r *redisConn) Close() error {
	err := r.client.Close()
	if r.mini != nil {
		r.mini.Close()
	}
	return err
}

// redisTimeouts keep a dead Redis from hanging a cron job for minutes.
const (
	redisDialTimeout = 3 * time.Second
	redisIOTimeout   = 3 * time.Second
)

// openRedis opens the Redis named by raw:
//
//	redis://[user:pass@]host:port/db          one server
//	rediss://...                              one server over TLS
//	redis://h1:7000,h2:7001  or  h1:7000,h2:7001   a cluster
//	redis+sentinel://[:pass@]s1:26379,s2:26379/master[/db]   Sentinel (rediss+sentinel for TLS)
//	redis://host:26379?master_name=m&addr=...  Sentinel, go-redis's own form
//	embedded                                  an in-process miniredis on loopback
//
// Every TLS form gets TLS 1.2 at least and, from tc, the CA pool and the
// client certificate of --redis-ca-file, --redis-cert-file and
// --redis-key-file; those flags on a plain-text URL are a usage error
// rather than silently ignored.
func openRedis(raw string, tc *redisTLS) (*redisConn, error) {
	raw = strings.TrimSpace(raw)
	if tc.set() && !tlsScheme(raw) {
		return nil, usagef("%s apply to rediss:// (or rediss+sentinel://) URLs only; --redis %s is not one", tc.flags, redactURL(raw))
	}
	switch {
	case raw == "embedded":
		m := miniredis.NewMiniRedis()
		if err := m.StartAddr("127.0.0.1:0"); err != nil {
			return nil, fmt.Errorf("embedded redis: %w", err)
		}
		c := redis.NewClient(&redis.Options{Addr: m.Addr()})
		return &redisConn{client: c, addr: "embedded " + m.Addr(), mini: m}, nil
	case strings.HasPrefix(raw, "redis+sentinel://"), strings.HasPrefix(raw, "rediss+sentinel://"):
		o, err := parseSentinel(raw)
		if err != nil {
			return nil, err
		}
		if o.TLSConfig != nil {
			o.TLSConfig = tc.config(o.TLSConfig)
			o.Dialer = tc.dialerFor(o.TLSConfig, o.DialTimeout)
		}
		addr := "sentinel " + strings.Join(o.SentinelAddrs, ",") + " master " + o.MasterName
		return &redisConn{client: redis.NewFailoverClient(o), addr: addr}, nil
	case strings.Contains(raw, ","):
		o, err := parseCluster(raw)
		if err != nil {
			return nil, err
		}
		if o.TLSConfig != nil {
			o.TLSConfig = tc.config(o.TLSConfig)
			o.Dialer = tc.dialerFor(o.TLSConfig, o.DialTimeout)
		}
		return &redisConn{client: redis.NewClusterClient(o), addr: "cluster " + strings.Join(o.Addrs, ",")}, nil
	case strings.HasPrefix(raw, "redis://"), strings.HasPrefix(raw, "rediss://"):
		if u, err := url.Parse(raw); err == nil && u.Query().Has("master_name") {
			o, err := redis.ParseFailoverURL(raw)
			if err != nil {
				return nil, usagef("--redis: %v", redactURLErr(err))
			}
			setFailoverTimeouts(o)
			if o.TLSConfig != nil {
				o.TLSConfig = tc.config(o.TLSConfig)
				o.Dialer = tc.dialerFor(o.TLSConfig, o.DialTimeout)
			}
			addr := "sentinel " + strings.Join(o.SentinelAddrs, ",") + " master " + o.MasterName
			return &redisConn{client: redis.NewFailoverClient(o), addr: addr}, nil
		}
		o, err := redis.ParseURL(raw)
		if err != nil {
			return nil, usagef("--redis: %v", redactURLErr(err))
		}
		if o.DialTimeout == 0 {
			o.DialTimeout = redisDialTimeout
		}
		if o.ReadTimeout == 0 {
			o.ReadTimeout = redisIOTimeout
		}
		if o.WriteTimeout == 0 {
			o.WriteTimeout = redisIOTimeout
		}
		if o.TLSConfig != nil {
			o.TLSConfig = tc.config(o.TLSConfig)
			o.Dialer = tc.dialerFor(o.TLSConfig, o.DialTimeout)
		}
		return &redisConn{client: redis.NewClient(o), addr: o.Addr}, nil
	default:
		return nil, usagef("--redis %q: want redis://host:port/db, rediss://..., a comma list of cluster nodes, redis+sentinel://host:port,.../master, or embedded", redactURL(raw))
	}
}

// tlsScheme reports whether a --redis value connects over TLS: rediss://,
// rediss+sentinel://, or a cluster list whose first node is rediss://.
func tlsScheme(raw string) bool {
	return strings.HasPrefix(raw, "rediss://") || strings.HasPrefix(raw, "rediss+sentinel://")
}

func setFailoverTimeouts(o *redis.FailoverOptions) {
	if o.DialTimeout == 0 {
		o.DialTimeout = redisDialTimeout
	}
	if o.ReadTimeout == 0 {
		o.ReadTimeout = redisIOTimeout
	}
}

// parseSentinel parses redis+sentinel://[user:pass@]h1:p1,h2:p2/master[/db].
func parseSentinel(raw string) (*redis.FailoverOptions, error) {
	scheme, rest, _ := strings.Cut(raw, "://")
	o := &redis.FailoverOptions{DialTimeout: redisDialTimeout, ReadTimeout: redisIOTimeout, WriteTimeout: redisIOTimeout}
	if i := strings.LastIndex(rest, "@"); i >= 0 {
		user, pass, _ := strings.Cut(rest[:i], ":")
		o.Username, o.Password = user, pass
		rest = rest[i+1:]
	}
	hosts, path, _ := strings.Cut(rest, "/")
	master, db, _ := strings.Cut(path, "/")
	if master == "" {
		return nil, usagef("--redis: a sentinel URL needs the master name: %s://host:26379,.../MASTER[/db]", scheme)
	}
	o.MasterName = master
	if db != "" {
		n, err := strconv.Atoi(strings.TrimSuffix(db, "/"))
		if err != nil || n < 0 {
			return nil, usagef("--redis: sentinel database %q is not a number", db)
		}
		o.DB = n
	}
	for _, h := range strings.Split(hosts, ",") {
		h = strings.TrimSpace(h)
		if h == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(h); err != nil {
			h = net.JoinHostPort(h, "26379")
		}
		o.SentinelAddrs = append(o.SentinelAddrs, h)
	}
	if len(o.SentinelAddrs) == 0 {
		return nil, usagef("--redis: a sentinel URL needs at least one sentinel host")
	}
	if scheme == "rediss+sentinel" {
		o.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	return o, nil
}

// parseCluster parses a comma list of nodes; the first may carry a
// scheme and credentials for all of them.
func parseCluster(raw string) (*redis.ClusterOptions, error) {
	o := &redis.ClusterOptions{DialTimeout: redisDialTimeout, ReadTimeout: redisIOTimeout, WriteTimeout: redisIOTimeout}
	for i, part := range strings.Split(raw, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		if !strings.Contains(part, "://") {
			if _, _, err := net.SplitHostPort(part); err != nil {
				return nil, usagef("--redis: cluster node %q is not host:port", part)
			}
			o.Addrs = append(o.Addrs, part)
			continue
		}
		u, err := url.Parse(part)
		if err != nil || (u.Scheme != "redis" && u.Scheme != "rediss") || u.Host == "" {
			return nil, usagef("--redis: cluster node %q is not redis://host:port", redactURL(part))
		}
		if i == 0 {
			if u.User != nil {
				o.Username = u.User.Username()
				o.Password, _ = u.User.Password()
			}
			if u.Scheme == "rediss" {
				o.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
			}
		}
		o.Addrs = append(o.Addrs, u.Host)
	}
	if len(o.Addrs) == 0 {
		return nil, usagef("--redis: empty cluster node list")
	}
	return o, nil
}

// redactURL hides the password of a Redis URL.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		if i := strings.LastIndex(raw, "@"); i >= 0 {
			return "…@" + raw[i+1:]
		}
		return raw
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	return u.String()
}

// redactURLErr drops the URL that url.Parse errors quote.
func redactURLErr(err error) error {
	if ue, ok := err.(*url.Error); ok {
		return fmt.Errorf("%s", ue.Err)
	}
	return err
}

// ping checks that Redis answers, naming its address if it does not.
func (r *redisConn) ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, redisDialTimeout+time.Second)
	defer cancel()
	if err := r.client.Ping(ctx).Err(); err != nil {
		return &redisFailure{addr: r.addr, err: err}
	}
	return nil
}

// redisFailure is a failed Redis operation, named by address.
type redisFailure struct {
	addr string
	err  error
}

func (e *redisFailure) Error() string {
	if unreachable(e.err) {
		return unreachableMsg(e.addr, e.err)
	}
	return fmt.Sprintf("redis %s: %v", e.addr, e.err)
}

// redisHint is where the Redis address comes from, for messages.
const redisHint = "--redis / " + EnvRedisURL

// unreachableMsg says that Redis at addr did not answer, and where its
// address comes from.
func unreachableMsg(addr string, err error) string {
	return fmt.Sprintf("redis %s unreachable (check %s): %v", addr, redisHint, err)
}

// unreachable reports whether err means that Redis could not be reached
// (a refused or timed-out connection), rather than that it answered with
// an error.
func unreachable(err error) bool {
	var (
		op    *net.OpError
		re    redis.Error
		alert tls.AlertError
		cv    *tls.CertificateVerificationError
	)
	switch {
	case err == nil, errors.As(err, &re):
		return false
	case errors.As(err, &alert), errors.As(err, &cv), strings.Contains(err.Error(), "tls: "), strings.Contains(err.Error(), "x509: "):
		return false // reached, but the TLS handshake failed: named as it is
	case errors.As(err, &op), errors.Is(err, context.DeadlineExceeded), errors.Is(err, io.EOF):
		return true
	}
	return false
}
func (e *redisFailure) Unwrap() error { return e.err }

// parseURLHost returns the host:port of a redis:// URL.
func parseURLHost(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", redactURLErr(err)
	}
	return u.Host, nil
}

// redisLogger routes go-redis's internal messages (dial retries, pool
// warnings) to the command's logger at debug level, instead of go-redis's
// default of printing them on stderr. go-redis has one process-wide
// logger; this package is the program, so setting it here is the
// program's choice.
type redisLogger struct{ log *slog.Logger }

func (l redisLogger) Printf(ctx context.Context, format string, v ...any) {
	l.log.DebugContext(ctx, "go-redis: "+fmt.Sprintf(format, v...))
}
