package redistest

import (
	"crypto/tls"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestStartTLS(t *testing.T) {
	for _, auth := range []bool{false, true} {
		s := StartTLS(t, auth)
		if !strings.HasPrefix(s.URL(), "rediss://") {
			t.Errorf("URL %q is not rediss://", s.URL())
		}
		ctx := t.Context()
		if err := s.Client(t).Set(ctx, "k", "v", 0).Err(); err != nil {
			t.Fatalf("auth-clients=%v: TLS client: %v", auth, err)
		}
		ping := func(o *redis.Options) error {
			o.Addr, o.MaxRetries, o.DialTimeout = s.Addr, -1, 2*time.Second
			c := redis.NewClient(o)
			defer c.Close()
			return c.Ping(ctx).Err()
		}
		if err := ping(&redis.Options{}); err == nil {
			t.Errorf("auth-clients=%v: a plain-text client was answered on the TLS port", auth)
		}
		noCert := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: s.TLS.ClientConfig().RootCAs}
		if err := ping(&redis.Options{TLSConfig: noCert}); (err == nil) == auth {
			t.Errorf("auth-clients=%v: a client without a certificate: err %v", auth, err)
		}
		other := GenerateTLS(t, t.TempDir())
		if err := ping(&redis.Options{TLSConfig: other.ClientConfig()}); err == nil {
			t.Errorf("auth-clients=%v: a client trusting another CA accepted the server", auth)
		}
	}
}
