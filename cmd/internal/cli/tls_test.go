package cli

import (
	"crypto/tls"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/internal/redistest"
)

// Every TLS form of --redis gets the CA, the client certificate and the
// TLS 1.2 floor.
func TestOpenRedisTLSForms(t *testing.T) {
	files := redistest.GenerateTLS(t, t.TempDir())
	a := &app{g: globals{redisCAFile: files.CAFile, redisCertFile: files.ClientCertFile, redisKeyFile: files.ClientKeyFile}}
	tc, err := a.redisTLS()
	if err != nil {
		t.Fatal(err)
	}
	for _, raw := range []string{
		"rediss://h:6380/0",
		"rediss://h:26379?master_name=m",
		"rediss+sentinel://s1:26379,s2:26379/m/0",
		"rediss://n1:7000,rediss://n2:7001",
	} {
		rc, err := openRedis(raw, tc)
		if err != nil {
			t.Errorf("%s: %v", raw, err)
			continue
		}
		var c *tls.Config
		switch o := rc.client.(type) {
		case *redis.Client: // single server, and sentinel (NewFailoverClient)
			c = o.Options().TLSConfig
		case *redis.ClusterClient:
			c = o.Options().TLSConfig
		}
		_ = rc.Close()
		if c == nil || c.MinVersion < tls.VersionTLS12 || c.RootCAs == nil || len(c.Certificates) != 1 {
			t.Errorf("%s: TLS config lacks the CA, the certificate or the TLS 1.2 floor", raw)
		}
	}
	if _, err := openRedis("redis://h:6379/0", tc); ExitCode(err) != ExitUsage {
		t.Errorf("TLS files with redis://: %v, want a usage error", err)
	}
	if _, err := openRedis("rediss://h:6380/0", nil); err != nil {
		t.Errorf("rediss:// without TLS files: %v", err)
	}
}
