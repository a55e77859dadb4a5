// Command quickstart runs Basiq's quick start end to end with tokencache:
// a server token, a user (POST /users), a CLIENT_ACCESS token bound to
// that user, the Consent UI URL, the job the user's bank connection starts
// (GET /jobs/{id}, polled with backoff until its steps succeed or a
// deadline passes), and the user's accounts (GET /users/{id}/accounts).
//
// Every Basiq call goes through Cache.Transport: the fleet's server token
// for the server's calls, and the user's client token, cached once per
// user, for what the Consent UI does on the user's behalf. The program
// ends by counting the issuer calls it cost: one server token and one
// client token, however many API calls used them.
//
// With no set-up it runs against the fake Basiq of package issuertest and
// an embedded Redis:
//
//	go run ./examples/quickstart
//
// Against Basiq, with your API key (a new user is created unless
// BASIQ_USER_ID names one; open the link the program prints, which
// redirects to the Consent UI with the client token, or let the program
// connect Basiq's sandbox bank with QUICKSTART_CONNECT=sandbox):
//
//	BASIQ_API_KEY=... TOKENCACHE_REDIS_URL=redis://127.0.0.1:6379/0 go run ./examples/quickstart
//
// It talks to Basiq only when BASIQ_API_KEY is set and
// TOKENCACHE_ISSUER_URL is unset or on basiq.io; with the URL of another
// issuer (cmd/fakeissuer) it runs the fake's flow against it. Its first
// line says which, and how it connects the bank. Interrupted, it says so.
//
// Settings, all from the environment:
//
//	BASIQ_API_KEY          your API key; unset: the embedded fake Basiq
//	TOKENCACHE_ISSUER_URL  the API root (default https://au-api.basiq.io)
//	TOKENCACHE_REDIS_URL   Redis (default: an embedded, in-process Redis)
//	BASIQ_USER_ID          use this user instead of creating one
//	QUICKSTART_CONNECT     "sandbox": the program connects Basiq's sandbox bank
//	                       (Hooli) for the user with POST /users/{id}/connections
//	                       and the client token, as the Consent UI would (the
//	                       fake accepts it; on Basiq it needs an application
//	                       whose API version still offers that endpoint);
//	                       "consent": a person opens the link the program
//	                       prints (a local page that redirects to the consent
//	                       URL with the token), connects a bank, and the
//	                       program waits for the job to appear in
//	                       GET /users/{id}/jobs. Default: sandbox for the fake,
//	                       consent for Basiq.
//	QUICKSTART_LISTEN      where that local page listens (default 127.0.0.1:0, any port)
//	QUICKSTART_TIMEOUT     how long to wait for the job (default 2m; 10m for consent)
//	QUICKSTART_POLL        the first wait between job polls, doubled up to 16x (default 500ms)
//
// The tokens never appear in the output: the consent URL is printed with
// its token redacted and tokens are shown by fingerprint.
package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/tokencache"
	"github.com/tokencache/tokencache/tokencache/basiq"
	"github.com/tokencache/tokencache/tokencache/issuertest"
)

// Defaults.
const (
	consentURL     = "https://consent.basiq.io/home"
	defaultTimeout = 2 * time.Minute
	consentTimeout = 10 * time.Minute
	defaultPoll    = 500 * time.Millisecond
	maxPollFactor  = 16
)

// Connect modes.
const (
	connectSandbox = "sandbox"
	connectConsent = "consent"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Stdout, os.Getenv)
	stop()
	if err != nil {
		if errors.Is(err, context.Canceled) && !errors.Is(err, errInterrupted) {
			err = errInterrupted
		}
		fmt.Fprintln(os.Stderr, "quickstart:", err)
		os.Exit(1)
	}
}

// config is the program's settings, read from the environment.
type config struct {
	apiKey, baseURL, redisURL, userID, connect, listen string
	timeout, poll                                      time.Duration
}

// configError is a setting the program cannot use.
type configError struct {
	Name, Value, Reason string
}

func (e *configError) Error() string {
	return fmt.Sprintf("%s=%q: %s", e.Name, e.Value, e.Reason)
}

func readConfig(getenv func(string) string) (config, error) {
	c := config{
		apiKey:   getenv("BASIQ_API_KEY"),
		baseURL:  getenv("TOKENCACHE_ISSUER_URL"),
		redisURL: getenv("TOKENCACHE_REDIS_URL"),
		userID:   getenv("BASIQ_USER_ID"),
		connect:  getenv("QUICKSTART_CONNECT"),
		listen:   getenv("QUICKSTART_LISTEN"),
		poll:     defaultPoll,
	}
	if c.apiKey == "" && c.baseURL != "" {
		return c, &configError{"TOKENCACHE_ISSUER_URL", c.baseURL, "needs BASIQ_API_KEY (unset both for the embedded fake)"}
	}
	if c.baseURL != "" {
		u, err := url.Parse(c.baseURL)
		if err != nil || u.Host == "" {
			return c, &configError{"TOKENCACHE_ISSUER_URL", c.baseURL, "want an absolute URL such as https://au-api.basiq.io"}
		}
	}
	if c.userID != "" {
		if err := tokencache.ValidateUserID(c.userID); err != nil {
			return c, &configError{"BASIQ_USER_ID", c.userID, err.Error()}
		}
	}
	if c.listen == "" {
		c.listen = "127.0.0.1:0"
	}
	switch c.connect {
	case "":
		// A person opens the consent page only on Basiq itself; a fake
		// (embedded, or cmd/fakeissuer at TOKENCACHE_ISSUER_URL) connects
		// the sandbox bank at once.
		c.connect = connectSandbox
		if c.realBasiq() {
			c.connect = connectConsent
		}
	case connectSandbox, connectConsent:
	default:
		return c, &configError{"QUICKSTART_CONNECT", c.connect, "want sandbox or consent"}
	}
	c.timeout = defaultTimeout
	if c.connect == connectConsent {
		c.timeout = consentTimeout
	}
	for _, d := range []struct {
		name string
		dst  *time.Duration
	}{{"QUICKSTART_TIMEOUT", &c.timeout}, {"QUICKSTART_POLL", &c.poll}} {
		v := getenv(d.name)
		if v == "" {
			continue
		}
		n, err := time.ParseDuration(v)
		if err != nil || n <= 0 || n > time.Hour {
			return c, &configError{d.name, v, "want a duration from 1ns to 1h, e.g. 500ms"}
		}
		*d.dst = n
	}
	return c, nil
}

// realBasiq reports whether the program talks to Basiq itself: with an
// API key, and an issuer URL that is unset or on basiq.io. A key exported
// for another program (say, the daemon against cmd/fakeissuer) does not
// send it to Basiq when TOKENCACHE_ISSUER_URL names the fake.
func (c config) realBasiq() bool {
	if c.apiKey == "" {
		return false
	}
	if c.baseURL == "" {
		return true
	}
	u, err := url.Parse(c.baseURL)
	if err != nil {
		return false
	}
	h := u.Hostname()
	return h == "basiq.io" || strings.HasSuffix(h, ".basiq.io")
}

// counted counts the Fetch calls of a Basiq fetcher: the issuer calls the
// quick start costs. Embedding keeps the fetcher's Identity, so the cache
// still ties each token to the key, scope and user that minted it.
type counted struct {
	*basiq.Fetcher
	n *atomic.Int64
}

func (c counted) Fetch(ctx context.Context) (tokencache.Token, error) {
	c.n.Add(1)
	return c.Fetcher.Fetch(ctx)
}

// run is the whole program: it writes what it does to stdout and returns
// the first error.
func run(ctx context.Context, stdout io.Writer, getenv func(string) string) error {
	cfg, err := readConfig(getenv)
	if err != nil {
		return err
	}
	where := "the issuer at " + cfg.baseURL + " (not basiq.io: the fake's flow)"
	if cfg.realBasiq() {
		where = "Basiq at " + cmp.Or(cfg.baseURL, basiq.DefaultBaseURL) + " (BASIQ_API_KEY is set and TOKENCACHE_ISSUER_URL is unset or on basiq.io)"
	}
	if cfg.apiKey == "" {
		// No key: the fake Basiq, in this process.
		fake := issuertest.New(issuertest.WithStrictUsers(true)) // unknown users are 404, as on Basiq
		if err := fake.Start(); err != nil {
			return fmt.Errorf("start the fake Basiq: %w", err)
		}
		defer fake.Close()
		cfg.apiKey, cfg.baseURL = fake.APIKey(), fake.URL()
		where = "the fake Basiq at " + fake.URL() + " (set BASIQ_API_KEY for the real one)"
	} else if cfg.baseURL == "" {
		cfg.baseURL = basiq.DefaultBaseURL
	}

	rdb, redisName, closeRedis, err := openRedis(ctx, cfg.redisURL)
	if err != nil {
		return err
	}
	defer closeRedis()

	var serverCalls, clientCalls atomic.Int64
	server := basiq.New(cfg.apiKey, basiq.WithBaseURL(cfg.baseURL))
	if err := server.Validate(); err != nil {
		return err
	}
	cache, err := tokencache.New(rdb, counted{server, &serverCalls},
		tokencache.WithClientTokens(func(userID string) (tokencache.Fetcher, error) {
			f, err := server.ForUser(userID)
			if err != nil {
				return nil, err
			}
			return counted{f, &clientCalls}, nil
		}, 0))
	if err != nil {
		return err
	}
	defer cache.Close()

	out := &printer{w: stdout}
	out.line("Basiq quick start against %s, Redis %s; connect: %s, giving up after %v", where, redisName, cfg.connect, cfg.timeout)

	// 1. The server token, shared by the fleet through Redis.
	tok, err := cache.Token(ctx)
	if err != nil {
		return fmt.Errorf("server token: %w", err)
	}
	key, _, _, _ := cache.Keys()
	out.step("1", "server token", "%s, cached for the fleet at %s", tok, key)
	api := &apiClient{base: cfg.baseURL, server: &http.Client{Transport: cache.Transport(nil)}}

	// 2. A user.
	userID := cfg.userID
	if userID == "" {
		u, err := api.createUser(ctx, newUser{Email: "max@hooli.com", Mobile: "+61410888999", FirstName: "Max", LastName: "Hooli"})
		if err != nil {
			return err
		}
		if err := tokencache.ValidateUserID(u.ID); err != nil {
			return fmt.Errorf("POST /users: the user id cannot name a cached token: %w", err)
		}
		userID = u.ID
		out.step("2", "create a user", "POST /users -> 201, user %s", userID)
	} else {
		if _, err := api.user(ctx, userID); err != nil {
			return err
		}
		out.step("2", "use a user", "GET /users/%s -> 200 (BASIQ_USER_ID)", userID)
	}

	// 3. A CLIENT_ACCESS token bound to the user, cached once per user.
	user, err := cache.User(userID)
	if err != nil {
		return err
	}
	clientTok, err := user.Token(ctx)
	if err != nil {
		return fmt.Errorf("client token: %w", err)
	}
	ckey, _, _, _ := user.Keys()
	out.step("3", "client token", "CLIENT_ACCESS bound to the user: %s, cached at %s", clientTok, ckey)
	client := &http.Client{Transport: user.Transport(nil)}

	// 4. The Consent UI, where the user connects a bank.
	var known []string // the user's jobs so far, to recognise the new one
	if cfg.connect == connectConsent {
		if known, err = api.jobIDs(ctx, userID); err != nil {
			return err
		}
	}
	out.step("4", "consent", "%s?token=<redacted %s>", consentURL, clientTok.Fingerprint())
	jctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()
	var jobID string
	if cfg.connect == connectSandbox {
		jobID, err = api.connect(jctx, client, userID, sandboxLogin())
		if err != nil {
			return err
		}
		out.detail("the user connects the sandbox bank %s (here the program plays the user, with the client token):", issuertest.SandboxInstitution)
		out.detail("POST /users/%s/connections -> 202, job %s", userID, jobID)
	} else {
		link, stop, err := serveConsent(user, cfg.listen)
		if err != nil {
			return err
		}
		defer stop()
		out.detail("open %s in a browser: it redirects to the URL above, with the token, to connect a bank", link)
		out.detail("waiting up to %s for the user %s to start a job", cfg.timeout, userID)
		jobID, err = api.awaitJob(jctx, userID, known, cfg.poll)
		if err != nil {
			return err
		}
		out.detail("GET /users/%s/jobs -> job %s", userID, jobID)
	}

	// 5. Poll the job until its steps succeed.
	out.step("5", "job", "GET /jobs/%s until every step succeeds", jobID)
	polls, err := api.pollJob(jctx, jobID, cfg.poll, func(n int, j job) {
		out.detail("poll %d: %s", n, j.summary())
	})
	if err != nil {
		return err
	}
	out.detail("done after %d polls", polls)

	// 6. The accounts.
	accts, err := api.accounts(ctx, userID)
	if err != nil {
		return err
	}
	out.step("6", "accounts", "GET /users/%s/accounts -> %d accounts", userID, len(accts))
	for _, a := range accts {
		out.detail("%-14s %-18s balance %10s %s  available %10s", a.Name, a.AccountNo, a.Balance, a.Currency, a.AvailableFunds)
	}
	out.line("issuer calls: %d server token, %d client token (every API call above reused them)",
		serverCalls.Load(), clientCalls.Load())
	return out.err
}

func sandboxLogin() connectRequest {
	var c connectRequest
	c.LoginID, c.Password, c.Institution.ID = issuertest.SandboxLoginID, issuertest.SandboxPassword, issuertest.SandboxInstitution
	return c
}

// serveConsent serves GET /consent on addr: a redirect to the Consent UI
// with the user's client token, as a backend hands it to the user's
// browser (see examples/peruser). The token never reaches the output. It
// returns the page's URL and a function that stops it.
func serveConsent(user *tokencache.Handle, addr string) (string, func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, &configError{"QUICKSTART_LISTEN", addr, err.Error()}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /consent", func(w http.ResponseWriter, r *http.Request) {
		tok, err := user.Token(r.Context())
		if err != nil {
			http.Error(w, "no client token right now", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Cache-Control", "no-store")
		http.Redirect(w, r, consentURL+"?token="+url.QueryEscape(tok.AccessToken), http.StatusFound)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return "http://" + ln.Addr().String() + "/consent", func() { _ = srv.Close() }, nil
}

// openRedis connects to url, or starts an embedded Redis when it is empty.
func openRedis(ctx context.Context, rawURL string) (redis.UniversalClient, string, func(), error) {
	if rawURL == "" {
		mr := miniredis.NewMiniRedis()
		if err := mr.Start(); err != nil {
			return nil, "", nil, fmt.Errorf("start the embedded Redis: %w", err)
		}
		rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
		return rdb, "embedded (" + mr.Addr() + ")", func() { _ = rdb.Close(); mr.Close() }, nil
	}
	opt, err := redis.ParseURL(rawURL)
	if err != nil {
		// ParseURL's message may quote the URL, password and all.
		return nil, "", nil, &configError{"TOKENCACHE_REDIS_URL", redactURL(rawURL), "not a redis:// or rediss:// URL"}
	}
	rdb := redis.NewClient(opt)
	if err := rdb.Ping(ctx).Err(); err != nil {
		_ = rdb.Close()
		return nil, "", nil, fmt.Errorf("redis %s: %w", opt.Addr, err)
	}
	return rdb, opt.Addr, func() { _ = rdb.Close() }, nil
}

// redactURL drops a URL's password.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		if err != nil {
			return "<unparseable URL>"
		}
		return raw
	}
	return u.Redacted()
}

// printer writes the program's report and keeps the first write error.
type printer struct {
	w   io.Writer
	err error
}

func (p *printer) line(format string, args ...any) {
	if p.err == nil {
		_, p.err = fmt.Fprintf(p.w, format+"\n", args...)
	}
}

func (p *printer) step(n, title, format string, args ...any) {
	p.line("%s. %-14s %s", n, title, fmt.Sprintf(format, args...))
}

func (p *printer) detail(format string, args ...any) {
	p.line("   %-14s %s", "", strings.TrimRight(fmt.Sprintf(format, args...), " "))
}
