package cli

import (
	"errors"
	"net/http"
	"strings"
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
		key, err := a.needSecret(a.g.apiKeyFile, EnvBasiqAPIKey, "--api-key-file", "the Basiq API key", func(k string) error {
			return basiq.New(k).Validate()
		})
		if err != nil {
			return nil, err
		}
		// The key of the moment at each request: a rotated key file is
		// used by the next issuer call.
		f := basiq.NewFunc(key.get, basiq.WithBaseURL(a.g.issuerURL), basiq.WithHTTPClient(hc))
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
		key, err := a.needSecret(a.g.apiKeyFile, EnvAPIKey, "--api-key-file", "the API key", nil)
		if err != nil {
			return nil, err
		}
		secret, err := a.needSecret(a.g.clientSecretFile, EnvClientSecret, "--client-secret-file", "the client secret", nil)
		if err != nil {
			return nil, err
		}
		creds := func() (string, string) { return key.get(), secret.get() }
		return jwtauth.NewFunc(creds, jwtauth.WithBaseURL(a.g.issuerURL), jwtauth.WithHTTPClient(hc)), nil
	case "oauth2":
		if a.g.tokenURL == "" {
			return nil, usagef("--provider oauth2 needs --token-url")
		}
		id, err := a.needSecret(a.g.clientIDFile, EnvClientID, "--client-id-file", "the client id", nil)
		if err != nil {
			return nil, err
		}
		secret, err := a.needSecret(a.g.clientSecretFile, EnvClientSecret, "--client-secret-file", "the client secret", nil)
		if err != nil {
			return nil, err
		}
		// The adapter bounds each call (oauth2cc.Timeout)
		// and follows no redirect, whatever client x/oauth2 finds.
		tokenURL := a.g.tokenURL
		return oauth2cc.NewFunc(func() *clientcredentials.Config {
			return &clientcredentials.Config{ClientID: id.get(), ClientSecret: secret.get(), TokenURL: tokenURL}
		}), nil
	}
	return nil, usagef("--provider %q: want basiq, jwt or oauth2", a.g.provider)
}

// needSecret reads a required secret of the issuer, from its file (then
// watched: re-read while the command runs) or the environment, and
// remembers it for scrubbing. check, if not nil, refuses a value the
// issuer could not use, at start (a usage error) and on a reload (the
// previous value is kept). Each secret is read once per invocation.
func (a *app) needSecret(file, envKey, fileFlag, what string, check func(string) error) (*watched[string], error) {
	w, err := a.secretValue(file, envKey, what, true, check)
	if err != nil {
		return nil, err
	}
	if w == nil {
		return nil, usagef("%s is missing: set %s in the environment or pass %s PATH (--provider %s)", what, envKey, fileFlag, a.g.provider)
	}
	return w, nil
}

// secretValue returns a secret from its file, watched, else from the
// environment, fixed; nil if neither is set. cred marks a credential of
// the issuer (its change re-checks the token).
func (a *app) secretValue(file, envKey, what string, cred bool, check func(string) error) (*watched[string], error) {
	a.credMu.Lock()
	defer a.credMu.Unlock()
	memo := file + "\x00" + envKey
	if w, ok := a.creds[memo]; ok {
		return w, nil
	}
	var w *watched[string]
	if file == "" {
		v := strings.TrimSpace(a.g.getenv(envKey))
		if v == "" {
			return nil, nil
		}
		// The issuer's own checks (Validate) refuse a bad value here.
		a.secrets.add(v)
		w = fixed(what, v)
	} else {
		w = &watched[string]{what: what, paths: []string{file}, cred: cred, onChange: func(v string) { a.secrets.add(v) },
			parse: func(c [][]byte) (string, error) {
				v := strings.TrimSpace(string(c[0]))
				if v == "" {
					return "", errEmptyFile
				}
				if check != nil {
					if err := check(v); err != nil {
						return "", err
					}
				}
				return v, nil
			}}
		if err := w.load(); err != nil {
			var re *readError
			switch {
			case errors.As(err, &re):
				return nil, usagef("cannot read secret file %s: %v", file, re.err)
			case errors.Is(err, errEmptyFile):
				return nil, usagef("secret file %s is empty", file)
			default:
				return nil, usagef("%v", err)
			}
		}
		a.watch.add(w)
	}
	if a.creds == nil {
		a.creds = map[string]*watched[string]{}
	}
	a.creds[memo] = w
	return w, nil
}

// errEmptyFile is a secret file that holds nothing but whitespace.
var errEmptyFile = errors.New("empty")
