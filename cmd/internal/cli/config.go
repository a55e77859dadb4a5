package cli

import (
	"flag"
	"log/slog"
	"strings"

	"github.com/tokencache/tokencache/tokencache"
)

// Environment variables of the CLI contract (DESIGN.md).
const (
	EnvRedisURL     = "TOKENCACHE_REDIS_URL"
	EnvNamespace    = "TOKENCACHE_NAMESPACE"
	EnvIssuerURL    = "TOKENCACHE_ISSUER_URL"
	EnvProvider     = "TOKENCACHE_PROVIDER"
	EnvLogLevel     = "TOKENCACHE_LOG_LEVEL"
	EnvLogFormat    = "TOKENCACHE_LOG_FORMAT"
	EnvBasiqAPIKey  = "BASIQ_API_KEY"
	EnvAPIKey       = "TOKENCACHE_API_KEY"
	EnvClientID     = "TOKENCACHE_CLIENT_ID"
	EnvClientSecret = "TOKENCACHE_CLIENT_SECRET"
	// EnvEncryptionKeys holds the at-rest key ring, "id:base64key[,...]",
	// the first key active (or use --encryption-keys-file).
	EnvEncryptionKeys = "TOKENCACHE_ENCRYPTION_KEYS"
	// EnvRedisCAFile, EnvRedisCertFile and EnvRedisKeyFile name the PEM
	// files of a rediss:// connection: the CA that signed the server's
	// certificate, and the client certificate and key for a server that
	// asks for one (tls-auth-clients).
	EnvRedisCAFile   = "TOKENCACHE_REDIS_CA_FILE"
	EnvRedisCertFile = "TOKENCACHE_REDIS_CERT_FILE"
	EnvRedisKeyFile  = "TOKENCACHE_REDIS_KEY_FILE"
	// EnvListenSecret is the bearer secret clients of serve and proxy
	// send (or use --listen-secret-file).
	EnvListenSecret = "TOKENCACHE_LISTEN_SECRET"
)

// Defaults of the global flags.
const (
	DefaultRedisURL  = "redis://127.0.0.1:6379/0"
	DefaultNamespace = "default"
	DefaultIssuerURL = "https://au-api.basiq.io"
	DefaultProvider  = "basiq"
	DefaultScope     = "SERVER_ACCESS"
)

// secretEnv lists the environment variables that carry secrets, with the
// provider that reads them.
var secretEnv = map[string]string{
	EnvBasiqAPIKey:    "basiq: the API key (or --api-key-file)",
	EnvAPIKey:         "jwt: the API key (or --api-key-file)",
	EnvClientID:       "oauth2: the client id (or --client-id-file)",
	EnvClientSecret:   "jwt, oauth2: the client secret (or --client-secret-file)",
	EnvEncryptionKeys: "encryption at rest: id:base64key,... (or --encryption-keys-file)",
	EnvListenSecret:   "serve, proxy: the bearer secret clients send (or --listen-secret-file)",
}

// secretFlags are flags that would put a secret on the command line, where
// ps and shell history see it; they are refused before parsing, so the
// value is never echoed back in an error.
var secretFlags = map[string]string{
	"api-key":         "set BASIQ_API_KEY (basiq) or TOKENCACHE_API_KEY (jwt) in the environment, or pass --api-key-file PATH",
	"apikey":          "set BASIQ_API_KEY (basiq) or TOKENCACHE_API_KEY (jwt) in the environment, or pass --api-key-file PATH",
	"client-secret":   "set TOKENCACHE_CLIENT_SECRET in the environment, or pass --client-secret-file PATH",
	"secret":          "set TOKENCACHE_CLIENT_SECRET in the environment, or pass --client-secret-file PATH",
	"client-id":       "set TOKENCACHE_CLIENT_ID in the environment, or pass --client-id-file PATH",
	"password":        "put the Redis password in the URL from the environment (TOKENCACHE_REDIS_URL)",
	"encryption-keys": "set TOKENCACHE_ENCRYPTION_KEYS in the environment, or pass --encryption-keys-file PATH",
	"encryption-key":  "set TOKENCACHE_ENCRYPTION_KEYS in the environment, or pass --encryption-keys-file PATH",
	"listen-secret":   "set TOKENCACHE_LISTEN_SECRET in the environment, or pass --listen-secret-file PATH",
	"bearer-secret":   "set TOKENCACHE_LISTEN_SECRET in the environment, or pass --listen-secret-file PATH",
}

// refuseSecretFlags rejects a secret given as a plain flag value, naming
// the flag and what to do instead, never repeating the value.
func refuseSecretFlags(args []string) error {
	for _, arg := range args {
		if arg == "--" {
			return nil
		}
		if !strings.HasPrefix(arg, "-") {
			continue
		}
		name := strings.TrimLeft(arg, "-")
		name, _, _ = strings.Cut(name, "=")
		if hint, ok := secretFlags[strings.ToLower(name)]; ok {
			return usagef("--%s is refused: a secret on the command line shows in ps and shell history; %s", name, hint)
		}
	}
	return nil
}

// globals are the flags every command accepts, each defaulting to its
// environment variable.
type globals struct {
	redisURL  string
	namespace string
	issuerURL string
	scope     string
	userID    string
	provider  string
	tokenURL  string

	apiKeyFile       string
	clientIDFile     string
	clientSecretFile string
	encKeysFile      string

	redisCAFile   string
	redisCertFile string
	redisKeyFile  string

	logLevel  slog.Level
	logFormat string

	getenv  func(string) string
	fromEnv map[string]bool // globals set by the environment
	visited map[string]bool // flags set on the command line
}

var globalNames = map[string]bool{
	"redis": true, "namespace": true, "issuer-url": true, "scope": true, "user-id": true,
	"provider": true, "token-url": true, "api-key-file": true, "client-id-file": true, "client-secret-file": true,
	"encryption-keys-file": true, "redis-ca-file": true, "redis-cert-file": true, "redis-key-file": true,
}

func globalFlag(name string) bool { return globalNames[name] }

func (g *globals) init(getenv func(string) string) error {
	g.getenv = getenv
	g.fromEnv = map[string]bool{}
	g.visited = map[string]bool{}
	env := func(name, key, def string) string {
		if v := getenv(key); v != "" {
			g.fromEnv[name] = true
			return v
		}
		return def
	}
	g.redisURL = env("redis", EnvRedisURL, DefaultRedisURL)
	g.namespace = env("namespace", EnvNamespace, DefaultNamespace)
	g.issuerURL = env("issuer-url", EnvIssuerURL, DefaultIssuerURL)
	g.provider = env("provider", EnvProvider, DefaultProvider)
	g.redisCAFile = env("redis-ca-file", EnvRedisCAFile, "")
	g.redisCertFile = env("redis-cert-file", EnvRedisCertFile, "")
	g.redisKeyFile = env("redis-key-file", EnvRedisKeyFile, "")
	g.scope = DefaultScope

	switch lv := strings.ToLower(getenv(EnvLogLevel)); lv {
	case "", "info":
		g.logLevel = slog.LevelInfo
	case "debug":
		g.logLevel = slog.LevelDebug
	case "warn", "warning":
		g.logLevel = slog.LevelWarn
	case "error":
		g.logLevel = slog.LevelError
	default:
		return usagef("%s=%q: want debug, info, warn or error", EnvLogLevel, lv)
	}
	switch f := strings.ToLower(getenv(EnvLogFormat)); f {
	case "", "text":
		g.logFormat = "text"
	case "json":
		g.logFormat = "json"
	default:
		return usagef("%s=%q: want text or json", EnvLogFormat, f)
	}
	return nil
}

// register adds the global flags to fs, defaulting to their current values.
func (g *globals) register(fs *flag.FlagSet) {
	fs.StringVar(&g.redisURL, "redis", g.redisURL, "Redis: redis://, rediss://, a comma list for cluster, redis+sentinel://host:port,.../master/db, or embedded ($"+EnvRedisURL+")")
	fs.StringVar(&g.redisCAFile, "redis-ca-file", g.redisCAFile, "rediss: verify the server against the CA certificates in this PEM file instead of the system's ($"+EnvRedisCAFile+")")
	fs.StringVar(&g.redisCertFile, "redis-cert-file", g.redisCertFile, "rediss: present this PEM client certificate, with --redis-key-file ($"+EnvRedisCertFile+")")
	fs.StringVar(&g.redisKeyFile, "redis-key-file", g.redisKeyFile, "rediss: the PEM private key of --redis-cert-file ($"+EnvRedisKeyFile+")")
	fs.StringVar(&g.namespace, "namespace", g.namespace, "name of the shared token ($"+EnvNamespace+")")
	fs.StringVar(&g.issuerURL, "issuer-url", g.issuerURL, "issuer base URL ($"+EnvIssuerURL+")")
	fs.StringVar(&g.scope, "scope", g.scope, "SERVER_ACCESS or CLIENT_ACCESS (with --user-id)")
	fs.StringVar(&g.userID, "user-id", g.userID, "user id of a CLIENT_ACCESS token")
	fs.StringVar(&g.provider, "provider", g.provider, "basiq, jwt or oauth2 ($"+EnvProvider+")")
	fs.StringVar(&g.tokenURL, "token-url", g.tokenURL, "token endpoint of the oauth2 provider")
	fs.StringVar(&g.apiKeyFile, "api-key-file", g.apiKeyFile, "read the API key from this file instead of the environment")
	fs.StringVar(&g.clientIDFile, "client-id-file", g.clientIDFile, "read the oauth2 client id from this file")
	fs.StringVar(&g.clientSecretFile, "client-secret-file", g.clientSecretFile, "read the client secret from this file")
	fs.StringVar(&g.encKeysFile, "encryption-keys-file", g.encKeysFile, "encrypt tokens at rest with the key ring in this file (id:base64key,...; $"+EnvEncryptionKeys+")")
}

// explicitRedis reports whether the Redis URL was chosen by a flag or the
// environment rather than defaulted.
func (g *globals) explicitRedis() bool { return g.visited["redis"] || g.fromEnv["redis"] }

// check validates the globals after parsing.
func (g *globals) check() error {
	switch g.provider {
	case "basiq", "jwt", "oauth2":
	default:
		return usagef("--provider %q: want basiq, jwt or oauth2", g.provider)
	}
	switch g.scope {
	case "SERVER_ACCESS":
		if g.userID != "" {
			return usagef("--user-id needs --scope CLIENT_ACCESS")
		}
	case "CLIENT_ACCESS":
		if g.userID == "" {
			return usagef("--scope CLIENT_ACCESS needs --user-id")
		}
		if err := checkUserID(g.userID); err != nil {
			return err
		}
	default:
		return usagef("--scope %q: want SERVER_ACCESS or CLIENT_ACCESS", g.scope)
	}
	if err := tokencache.ValidateNamespace(g.namespace); err != nil {
		// One rule, the library's: 1-128 printable ASCII bytes without
		// braces, colons, slashes, quotes or whitespace.
		return usagef("--namespace: %s (%s)", strings.TrimPrefix(err.Error(), "tokencache: "), namespaceRule)
	}
	if g.redisURL == "" {
		return usagef("--redis is empty")
	}
	return nil
}

// namespaceRule is ValidateNamespace's rule, for messages.
const namespaceRule = "1-128 printable ASCII bytes without braces, colons, slashes, quotes or whitespace, such as --namespace billing"

func checkUserID(id string) error {
	if err := tokencache.ValidateUserID(id); err != nil {
		return usagef("--user-id %q: %s", id, strings.TrimPrefix(err.Error(), "tokencache: "))
	}
	return nil
}

func (g *globals) logger(a *app) *slog.Logger {
	opts := &slog.HandlerOptions{Level: g.logLevel}
	if g.logFormat == "json" {
		return slog.New(slog.NewJSONHandler(a.env.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(a.env.Stderr, opts))
}
