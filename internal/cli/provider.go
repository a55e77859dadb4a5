package cli

import (
	"context"
	"net/http"
	"strings"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/tokencache/tokencache/tokencache"
	"github.com/tokencache/tokencache/tokencache/basiq"
	"github.com/tokencache/tokencache/tokencache/jwtauth"
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
	hc := &http.Client{Timeout: issuerTimeout}
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
		return newOAuth2Fetcher(hc, a.g.tokenURL, id, secret), nil
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
		return "", usagef("no %s: set %s in the environment or pass %s PATH (--provider %s)", what, envKey, fileFlag, a.g.provider)
	}
	a.secrets = append(a.secrets, s)
	return s, nil
}

// oauth2Fetcher is a client-credentials Fetcher on golang.org/x/oauth2.
//
// TODO(jwt branch): replace with tokencache.ClientCredentials once merged.
type oauth2Fetcher struct {
	cfg *clientcredentials.Config
	hc  *http.Client
}

func newOAuth2Fetcher(hc *http.Client, tokenURL, id, secret string) *oauth2Fetcher {
	return &oauth2Fetcher{cfg: &clientcredentials.Config{ClientID: id, ClientSecret: secret, TokenURL: tokenURL}, hc: hc}
}

func (f *oauth2Fetcher) Fetch(ctx context.Context) (tokencache.Token, error) {
	ctx = context.WithValue(ctx, oauth2.HTTPClient, f.hc)
	t, err := f.cfg.Token(ctx)
	if err != nil {
		return tokencache.Token{}, scrubErr(err, f.cfg.ClientSecret)
	}
	return tokencache.Token{AccessToken: t.AccessToken, TokenType: t.TokenType, Expiry: t.Expiry}, nil
}

// Identity names the credential the tokens are minted for.
func (f *oauth2Fetcher) Identity() string {
	return "oauth2\x00" + f.cfg.TokenURL + "\x00" + f.cfg.ClientID + "\x00" + f.cfg.ClientSecret
}

type scrubbedError struct {
	msg string
	err error
}

func (e *scrubbedError) Error() string { return e.msg }
func (e *scrubbedError) Unwrap() error { return e.err }

// scrubErr removes secret from err's text, keeping the chain for errors.As.
func scrubErr(err error, secret string) error {
	if secret == "" || !strings.Contains(err.Error(), secret) {
		return err
	}
	return &scrubbedError{msg: strings.ReplaceAll(err.Error(), secret, "[redacted]"), err: err}
}
