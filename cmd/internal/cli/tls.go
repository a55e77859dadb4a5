package cli

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"os"
	"strings"
)

// redisTLS is what --redis-ca-file, --redis-cert-file and --redis-key-file
// add to a rediss:// connection. The zero value adds nothing: the system's
// CA pool, no client certificate.
type redisTLS struct {
	roots *x509.CertPool    // nil: the system pool
	certs []tls.Certificate // the client certificate, if any
	flags string            // the flags that set it, for errors
}

func (r *redisTLS) set() bool { return r != nil && (r.roots != nil || len(r.certs) > 0) }

// config returns base (go-redis's own, which may carry a ServerName, or
// nil) with the CA and client certificate added and TLS 1.2 as the floor.
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
			c.RootCAs = r.roots
		}
		if len(r.certs) > 0 {
			c.Certificates = r.certs
		}
	}
	return c
}

// redisTLS loads the TLS files named by the globals. Every problem is a
// usage error naming the flag and the path, never the files' contents.
func (g *globals) redisTLS() (*redisTLS, error) {
	r := &redisTLS{}
	var used []string
	if g.redisCAFile != "" {
		used = append(used, "--redis-ca-file")
		pem, err := readTLSFile("--redis-ca-file", g.redisCAFile)
		if err != nil {
			return nil, err
		}
		r.roots = x509.NewCertPool()
		if !r.roots.AppendCertsFromPEM(pem) {
			return nil, usagef("--redis-ca-file %s: no PEM certificate in it", g.redisCAFile)
		}
	}
	switch {
	case g.redisCertFile != "" && g.redisKeyFile == "":
		return nil, usagef("--redis-cert-file needs --redis-key-file (%s): a client certificate is useless without its key", EnvRedisKeyFile)
	case g.redisKeyFile != "" && g.redisCertFile == "":
		return nil, usagef("--redis-key-file needs --redis-cert-file (%s)", EnvRedisCertFile)
	case g.redisCertFile != "":
		used = append(used, "--redis-cert-file", "--redis-key-file")
		certPEM, err := readTLSFile("--redis-cert-file", g.redisCertFile)
		if err != nil {
			return nil, err
		}
		keyPEM, err := readTLSFile("--redis-key-file", g.redisKeyFile)
		if err != nil {
			return nil, err
		}
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			// The tls package's messages name the problem ("failed to find
			// any PEM data in key input", "private key does not match
			// public key"), never the key.
			return nil, usagef("--redis-cert-file %s, --redis-key-file %s: %s", g.redisCertFile, g.redisKeyFile, strings.TrimPrefix(err.Error(), "tls: "))
		}
		r.certs = []tls.Certificate{cert}
	}
	r.flags = strings.Join(used, ", ")
	return r, nil
}

func readTLSFile(flagName, path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, usagef("%s: cannot read %s: %v", flagName, path, err)
	}
	return b, nil
}
