package cli

import (
	"testing"

	"github.com/alicebob/miniredis/v2"

	"github.com/tokencache/tokencache/tokencache/issuertest"
)

// offline is an in-process Redis (miniredis) and a fake Basiq issuer,
// with the environment that points the command at both.
type offline struct {
	redis  *miniredis.Miniredis
	issuer *issuertest.Server
	env    map[string]string
}

func newOffline(t *testing.T, opts ...issuertest.Option) *offline {
	t.Helper()
	mr := miniredis.RunT(t)
	iss := issuertest.RunT(t, opts...)
	return &offline{redis: mr, issuer: iss, env: map[string]string{
		EnvRedisURL:    "redis://" + mr.Addr() + "/0",
		EnvIssuerURL:   iss.URL(),
		EnvBasiqAPIKey: iss.APIKey(),
		EnvLogLevel:    "warn",
	}}
}

// run runs the command in-process against o.
func (o *offline) run(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	return runArgs(t, o.env, args...)
}
