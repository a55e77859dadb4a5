package cli

import (
	"net/http"
	"time"

	"golang.org/x/oauth2/clientcredentials"

	"github.com/tokencache/tokencache/tokencache"
	"github.com/tokencache/tokencache/tokencache/basiq"
	"github.com/tokencache/tokencache/tokencache/jwtauth"
	"github.com/tokencache/tokencache/tokencache/oauth2cc"
)

// issuerTimeout bounds one issuer call.
const issuerTimeout = 15 * time.Second

// fetcherFor builds the provider's Fetcher for a scope and user from the
// global flags and the secrets in the environment (or --*-file). A missing
// secret is a configuration error.
func (a *app) fetcherFor(scope, userID string) (tokencache.Fetcher, error) {
	if scope == "CLIENT_ACCESS" && a.g.provider != "basiq" {
		return nil, usagef("--scope CLIENT_ACCESS is a Basiq scope; --provider %s has no per-user tokens", a.g.provider)
	}
	// No redirects: a redirected token request would carry the credential
	// to wherever the issuer points (Go forwards Authorization to the same
	// host on another port or scheme). The fetchers refuse them on any
	// client too; this says so where the client is made.
	hc := &http.Client{
		Timeout:       issuerTimeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	switch a.g.provider {
	case "basiq":
		key, err := a.needSecret(a.g.apiKeyFile, EnvBasiqAPIKey, "--api-key-file", "the Basiq API key")
		if err != nil {
			return nil, err
		}
		f := basiq.New(key, basiq.WithBaseURL(a.g.issuerURL), basiq.WithHTTPClient(hc))
		if err := f.Validate(); err != nil {
			return nil, usagef("%v", err)
		}
		if scope == basiq.ScopeClient {
			uf, err := f.ForUser(userID)
			if err != nil {
				return nil, usagef("%v", err)
			}
			return uf, nil
		}
		return f, nil
	case "jwt":
		key, err := a.needSecret(a.g.apiKeyFile, EnvAPIKey, "--api-key-file", "the API key")
		if err != nil {
			return nil, err
		}
		secret, err := a.needSecret(a.g.clientSecretFile, EnvClientSecret, "--client-secret-file", "the client secret")
		if err != nil {
			return nil, err
		}
		return jwtauth.New(key, secret, jwtauth.WithBaseURL(a.g.issuerURL), jwtauth.WithHTTPClient(hc)), nil
	case "oauth2":
		if a.g.tokenURL == "" {
			return nil, usagef("--provider oauth2 needs --token-url")
		}
		id, err := a.needSecret(a.g.clientIDFile, EnvClientID, "--client-id-file", "the client id")
		if err != nil {
			return nil, err
		}
		secret, err := a.needSecret(a.g.clientSecretFile, EnvClientSecret, "--client-secret-file", "the client secret")
		if err != nil {
			return nil, err
		}
		// The adapter bounds each call (oauth2cc.Timeout)
		// and follows no redirect, whatever client x/oauth2 finds.
		return oauth2cc.New(&clientcredentials.Config{ClientID: id, ClientSecret: secret, TokenURL: a.g.tokenURL}), nil
	}
	return nil, usagef("--provider %q: want basiq, jwt or oauth2", a.g.provider)
}

// needSecret reads a required secret and remembers it for scrubbing.
func (a *app) needSecret(file, envKey, fileFlag, what string) (string, error) {
	s, err := a.g.secret(file, envKey)
	if err != nil {
		return "", err
	}
	if s == "" {
		return "", usagef("%s is missing: set %s in the environment or pass %s PATH (--provider %s)", what, envKey, fileFlag, a.g.provider)
	}
	a.secrets = append(a.secrets, s)
	return s, nil
}
