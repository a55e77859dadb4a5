package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"strings"
	"time"
)

// redisTLS is what --redis-ca-file, --redis-cert-file and --redis-key-file
// add to a rediss:// connection, each file watched: every new connection
// is made with the files of the moment (see dialer), so a renewed
// certificate or CA is used without a restart. The zero value adds
// nothing: the system's CA pool, no client certificate.
type redisTLS struct {
	roots *watched[*x509.CertPool]   // nil: the system pool
	cert  *watched[*tls.Certificate] // nil: no client certificate
	flags string                     // the flags that set it, for errors
}

func (r *redisTLS) set() bool { return r != nil && (r.roots != nil || r.cert != nil) }

// config returns base (go-redis's own, which may carry a ServerName, or
// nil) with the CA and client certificate of the moment added and TLS 1.2
// as the floor.
func (r *redisTLS) config(base *tls.Config) *tls.Config {
	c := &tls.Config{}
	if base != nil {
		c = base.Clone()
	}
	if c.MinVersion < tls.VersionTLS12 {
		c.MinVersion = tls.VersionTLS12
	}
	if r != nil {
		if r.roots != nil {
			c.RootCAs = r.roots.get()
		}
		if r.cert != nil {
			c.Certificates = []tls.Certificate{*r.cert.get()}
		}
	}
	return c
}

// dialerFor is dialer when TLS files are set, else nil (go-redis's own
// dialer, with base).
func (r *redisTLS) dialerFor(base *tls.Config, timeout time.Duration) func(ctx context.Context, network, addr string) (net.Conn, error) {
	if !r.set() {
		return nil
	}
	return r.dialer(base, timeout)
}

// dialer returns go-redis's Dialer for TLS connections made with the
// files of the moment: each dial builds its tls.Config from base and the
// current CA and certificate (go-redis's own dialer would keep the config
// it was given for the client's life). The server name is base's, else
// the host dialed, as tls.Dial does.
func (r *redisTLS) dialer(base *tls.Config, timeout time.Duration) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, timeout)
			defer cancel()
		}
		nd := &net.Dialer{KeepAlive: 5 * time.Minute}
		raw, err := nd.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		c := r.config(base)
		if c.ServerName == "" {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				host = addr
			}
			c.ServerName = host
		}
		conn := tls.Client(raw, c)
		if err := conn.HandshakeContext(ctx); err != nil {
			_ = raw.Close()
			return nil, err
		}
		return conn, nil
	}
}

// redisTLS loads the TLS files named by the globals, watched. Every
// problem at start is a usage error naming the flag and the path, never
// the files' contents; a problem with a changed file keeps the previous
// certificate and logs one line naming the file.
func (a *app) redisTLS() (*redisTLS, error) {
	g := &a.g
	r := &redisTLS{}
	var used []string
	if g.redisCAFile != "" {
		used = append(used, "--redis-ca-file")
		w := &watched[*x509.CertPool]{what: "the Redis CA", paths: []string{g.redisCAFile},
			parse: func(c [][]byte) (*x509.CertPool, error) {
				pool := x509.NewCertPool()
				if !pool.AppendCertsFromPEM(c[0]) {
					return nil, errNoPEMCert
				}
				return pool, nil
			}}
		if err := w.load(); err != nil {
			var re *readError
			if errors.As(err, &re) {
				return nil, usagef("--redis-ca-file: cannot read %s: %v", re.path, re.err)
			}
			return nil, usagef("--redis-ca-file %s: %v", g.redisCAFile, err)
		}
		a.watch.add(w)
		r.roots = w
	}
	switch {
	case g.redisCertFile != "" && g.redisKeyFile == "":
		return nil, usagef("--redis-cert-file needs --redis-key-file (%s): a client certificate is useless without its key", EnvRedisKeyFile)
	case g.redisKeyFile != "" && g.redisCertFile == "":
		return nil, usagef("--redis-key-file needs --redis-cert-file (%s)", EnvRedisCertFile)
	case g.redisCertFile != "":
		used = append(used, "--redis-cert-file", "--redis-key-file")
		w, err := a.certPair("the Redis client certificate", g.redisCertFile, g.redisKeyFile)
		if err != nil {
			var re *readError
			if errors.As(err, &re) {
				flag := "--redis-cert-file"
				if re.path == g.redisKeyFile {
					flag = "--redis-key-file"
				}
				return nil, usagef("%s: cannot read %s: %v", flag, re.path, re.err)
			}
			return nil, usagef("--redis-cert-file %s, --redis-key-file %s: %v", g.redisCertFile, g.redisKeyFile, err)
		}
		r.cert = w
	}
	r.flags = strings.Join(used, ", ")
	return r, nil
}

// certPair reads a PEM certificate and its key, watched: read together,
// as a renewal rewrites both and the pair is used only once the two match.
// Its error is a *readError or the tls package's, which names the problem
// ("failed to find any PEM data in key input", "private key does not match
// public key"), never the key.
func (a *app) certPair(what, certFile, keyFile string) (*watched[*tls.Certificate], error) {
	w := &watched[*tls.Certificate]{what: what, paths: []string{certFile, keyFile},
		parse: func(c [][]byte) (*tls.Certificate, error) {
			cert, err := tls.X509KeyPair(c[0], c[1])
			if err != nil {
				return nil, errors.New(strings.TrimPrefix(err.Error(), "tls: "))
			}
			return &cert, nil
		}}
	if err := w.load(); err != nil {
		return nil, err
	}
	a.watch.add(w)
	return w, nil
}

// errNoPEMCert is a CA file without a PEM certificate.
var errNoPEMCert = errors.New("no PEM certificate in it")
