package cli

import (
	"net/http"
	"strings"
	"testing"

	"github.com/tokencache/tokencache/internal/hostile"
)

// TestIssuerRedirectCarriesNoCredential: whichever provider, when the
// issuer answers the token request with a redirect to another port of the
// same host, the command fails (exit 1) and the redirect target receives
// no request at all, so no API key or client secret reaches it.
func TestIssuerRedirectCarriesNoCredential(t *testing.T) {
	const (
		apiKey = "sk-REDIRECT-SECRET-9f3e1a"
		secret = "cs-REDIRECT-SECRET-4b7d2c"
		client = "id-REDIRECT-SECRET-6a5c8e"
	)
	target := hostile.NewTarget(t)
	for _, status := range []int{http.StatusTemporaryRedirect, http.StatusPermanentRedirect, http.StatusFound} {
		issuer := hostile.Redirect(t, status, target.URL)
		for _, tt := range []struct {
			provider string
			env      map[string]string
			args     []string
		}{
			{"basiq", map[string]string{EnvBasiqAPIKey: apiKey}, []string{"--issuer-url", issuer}},
			{"jwt", map[string]string{EnvAPIKey: apiKey, EnvClientSecret: secret}, []string{"--issuer-url", issuer}},
			{"oauth2", map[string]string{EnvClientID: client, EnvClientSecret: secret}, []string{"--token-url", issuer + "/oauth/token"}},
		} {
			args := append([]string{"get", "--redis", "embedded", "--provider", tt.provider}, tt.args...)
			stdout, stderr, err := runArgs(t, tt.env, args...)
			if ExitCode(err) != ExitFailure {
				t.Errorf("%s, %d: exit %d (%v), want 1", tt.provider, status, ExitCode(err), err)
				continue
			}
			for _, s := range []string{apiKey, secret, client} {
				if strings.Contains(err.Error()+stdout+stderr, s) {
					t.Errorf("%s, %d: a credential in the output: %v", tt.provider, status, err)
				}
			}
		}
	}
	if n := target.Requests(); n != 0 {
		t.Errorf("the redirect target got %d requests (%d with credentials), want 0", n, target.WithCredentials())
	}
}
