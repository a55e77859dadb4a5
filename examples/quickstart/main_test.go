package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/tokencache"
	"github.com/tokencache/tokencache/tokencache/issuertest"
)

// env is a fake environment.
type env map[string]string

func (e env) get(k string) string { return e[k] }

// fast makes the job polls quick: the fake's jobs move a step per poll,
// whatever the wait between polls.
func fast(e env) env {
	e["QUICKSTART_POLL"] = "1ms"
	return e
}

// against points the program at srv and the Redis at redisURL.
func against(srv *issuertest.Server, redisURL string) env {
	return fast(env{
		"BASIQ_API_KEY":         srv.APIKey(),
		"TOKENCACHE_ISSUER_URL": srv.URL(),
		"TOKENCACHE_REDIS_URL":  redisURL,
		"QUICKSTART_CONNECT":    connectSandbox,
	})
}

// wantLines fails unless each pattern matches a line of out, in order.
func wantLines(t *testing.T, out string, patterns ...string) {
	t.Helper()
	lines := strings.Split(out, "\n")
	i := 0
	for _, p := range patterns {
		re := regexp.MustCompile(p)
		for i < len(lines) && !re.MatchString(lines[i]) {
			i++
		}
		if i == len(lines) {
			t.Fatalf("no line matching %q (in order) in:\n%s", p, out)
		}
		i++
	}
}

// noSecrets fails if out holds the API key or any token srv issued.
func noSecrets(t *testing.T, srv *issuertest.Server, out string) {
	t.Helper()
	if strings.Contains(out, srv.APIKey()) {
		t.Errorf("the API key appears in:\n%s", out)
	}
	toks := srv.LiveTokens()
	if len(toks) == 0 {
		t.Fatal("the fake issued no token")
	}
	for _, tok := range toks {
		if strings.Contains(out, tok) {
			t.Errorf("a token (%.6s…) appears in:\n%s", tok, out)
		}
	}
}

var quickStartSteps = []string{
	`^Basiq quick start against `,
	`^1\. server token +Token\(Bearer sha256:[0-9a-f]{16}, expires .*\), cached for the fleet at tokencache:\{default\}:server$`,
	`^2\. create a user +POST /users -> 201, user [0-9a-f-]{36}$`,
	`^3\. client token +CLIENT_ACCESS bound to the user: Token\(Bearer sha256:[0-9a-f]{16}, .*\), cached at tokencache:\{default/[0-9a-f-]{36}\}:client$`,
	`^4\. consent +https://consent\.basiq\.io/home\?token=<redacted sha256:[0-9a-f]{16}>$`,
	`^ +POST /users/[0-9a-f-]{36}/connections -> 202, job `,
	`^5\. job +GET /jobs/`,
	`poll 1: verify-credentials in-progress, retrieve-accounts pending, retrieve-transactions pending$`,
	`poll 2: verify-credentials success, retrieve-accounts in-progress, retrieve-transactions pending$`,
	`poll 3: verify-credentials success, retrieve-accounts success, retrieve-transactions in-progress$`,
	`poll 4: verify-credentials success, retrieve-accounts success, retrieve-transactions success$`,
	`done after 4 polls$`,
}

// accountLines are the lines the program prints for the accounts the
// fake serves: those of the shared testdata/basiq/accounts.json.
func accountLines(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "testdata", "basiq", "accounts.json"))
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Data []account `json:"data"`
	}
	if err := json.Unmarshal(b, &list); err != nil || len(list.Data) == 0 {
		t.Fatalf("testdata/basiq/accounts.json: %v", err)
	}
	lines := []string{fmt.Sprintf(`^6\. accounts +GET /users/[0-9a-f-]{36}/accounts -> %d accounts$`, len(list.Data))}
	for _, a := range list.Data {
		lines = append(lines, regexp.QuoteMeta(a.Name)+` +`+regexp.QuoteMeta(a.AccountNo)+` +balance +`+
			regexp.QuoteMeta(a.Balance)+` `+a.Currency+` +available +`+regexp.QuoteMeta(a.AvailableFunds)+`$`)
	}
	return lines
}

// quickStart is every line the program prints for a successful run, in
// order, and then last.
func quickStart(t *testing.T, last string) []string {
	return append(append(append([]string(nil), quickStartSteps...), accountLines(t)...), last)
}

// TestRunNoSetup runs the program as `go run ./examples/quickstart` does
// with nothing set: the embedded fake and Redis.
func TestRunNoSetup(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), &out, fast(env{}).get); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	wantLines(t, out.String(), `^Basiq quick start against the fake Basiq at http://127\.0\.0\.1:\d+ \(set BASIQ_API_KEY for the real one\), Redis embedded`)
	wantLines(t, out.String(), quickStart(t, `^issuer calls: 1 server token, 1 client token `)...)
	if strings.Contains(out.String(), issuertest.DefaultAPIKey) {
		t.Errorf("the fake's API key appears in the output")
	}
}

// TestRunAgainstBasiqAPI runs the Basiq path (BASIQ_API_KEY set) against
// a fake it does not own, with a real redis-server: exactly one server
// token and one client token are fetched, and no secret is printed.
func TestRunAgainstBasiqAPI(t *testing.T) {
	srv := issuertest.RunT(t, issuertest.WithStrictUsers(true))
	rs := redistest.Start(t)
	var out bytes.Buffer
	if err := run(context.Background(), &out, against(srv, rs.URL()).get); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	wantLines(t, out.String(), quickStart(t, `^issuer calls: 1 server token, 1 client token `)...)
	if st := srv.Stats(); st.ServerTokenCalls != 1 || st.ClientTokenCalls != 1 || st.TokenCalls != 2 {
		t.Errorf("issuer saw %+v, want one SERVER_ACCESS and one CLIENT_ACCESS call", st)
	}
	if users := srv.Users(); len(users) != 1 || !strings.Contains(out.String(), users[0]) {
		t.Errorf("fake users %v, want the one the output names", users)
	}
	noSecrets(t, srv, out.String())

	// The token is shared through Redis under the default namespace: a
	// second run (another replica) fetches no server token.
	rdb := rs.Client(t)
	if n, err := rdb.Exists(context.Background(), "tokencache:{"+tokencache.DefaultNamespace+"}:server").Result(); err != nil || n != 1 {
		t.Fatalf("server token key in Redis: %d, %v", n, err)
	}
	out.Reset()
	if err := run(context.Background(), &out, against(srv, rs.URL()).get); err != nil {
		t.Fatalf("second run: %v\n%s", err, out.String())
	}
	wantLines(t, out.String(), `^issuer calls: 0 server token, 1 client token `)
	if st := srv.Stats(); st.ServerTokenCalls != 1 || st.ClientTokenCalls != 2 {
		t.Errorf("after a second run the issuer saw %+v, want still one SERVER_ACCESS call", st)
	}
	noSecrets(t, srv, out.String())
}

// TestRunConsent: in consent mode the program waits for a person to
// connect a bank in the Consent UI, then polls the job that starts.
func TestRunConsent(t *testing.T) {
	srv := issuertest.RunT(t, issuertest.WithStrictUsers(true))
	e := against(srv, "")
	e["QUICKSTART_CONNECT"] = connectConsent
	pr, pw := io.Pipe()
	defer pr.Close() // a failed test does not leave run blocked on a write
	done := make(chan error, 1)
	go func() {
		err := run(context.Background(), pw, e.get)
		pw.CloseWithError(err)
		done <- err
	}()
	var out strings.Builder
	userRE := regexp.MustCompile(`POST /users -> 201, user (\S+)$`)
	linkRE := regexp.MustCompile(`open (http://127\.0\.0\.1:\d+/consent) in a browser`)
	var userID, link string
	sc := bufio.NewScanner(pr)
	for sc.Scan() {
		line := sc.Text()
		out.WriteString(line + "\n")
		if m := userRE.FindStringSubmatch(line); m != nil {
			userID = m[1]
		}
		if m := linkRE.FindStringSubmatch(line); m != nil {
			link = m[1]
		}
		if strings.Contains(line, "waiting up to") {
			// The person opens the link, lands on the Consent UI with a
			// client token bound to them, and connects a bank.
			tok := followConsent(t, srv, link)
			if !srv.Valid(tok) {
				t.Errorf("the consent link carries a token the issuer does not know")
			}
			if _, err := srv.Connect(userID, sandboxRequest()); err != nil {
				t.Fatalf("Connect(%q): %v", userID, err)
			}
		}
	}
	if err := <-done; err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	wantLines(t, out.String(),
		`^4\. consent +https://consent\.basiq\.io/home\?token=<redacted sha256:[0-9a-f]{16}>$`,
		`open http://127\.0\.0\.1:\d+/consent in a browser: it redirects to the URL above`,
		`^ +GET /users/[0-9a-f-]{36}/jobs -> job `,
		`done after 4 polls$`,
		` -> \d+ accounts$`,
		`^issuer calls: 1 server token, 1 client token `)
	noSecrets(t, srv, out.String())
}

// followConsent opens the program's consent link without following the
// redirect, checks it leads to the Consent UI, and returns the token.
func followConsent(t *testing.T, srv *issuertest.Server, link string) string {
	t.Helper()
	hc := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := hc.Get(link)
	if err != nil {
		t.Fatalf("GET %q: %v", link, err)
	}
	resp.Body.Close()
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		t.Fatalf("GET %s: unparseable Location", link)
	}
	if resp.StatusCode != http.StatusFound || loc.Scheme+"://"+loc.Host+loc.Path != consentURL {
		t.Fatalf("GET %s: %d to %s://%s%s, want 302 to %s", link, resp.StatusCode, loc.Scheme, loc.Host, loc.Path, consentURL)
	}
	return loc.Query().Get("token")
}

func sandboxRequest() issuertest.ConnectRequest {
	var c issuertest.ConnectRequest
	c.LoginID, c.Password, c.Institution.ID = issuertest.SandboxLoginID, issuertest.SandboxPassword, issuertest.SandboxInstitution
	return c
}

// TestRunFailedJob: a job that fails ends the program with a typed error
// naming the step and Basiq's code.
func TestRunFailedJob(t *testing.T) {
	srv := issuertest.RunT(t)
	srv.FailJobs(true)
	var out bytes.Buffer
	err := run(context.Background(), &out, against(srv, "").get)
	var je *jobFailedError
	if !errors.As(err, &je) || je.Step != "verify-credentials" || je.Code != "invalid-credentials" {
		t.Fatalf("got %v, want a job failed at verify-credentials with invalid-credentials", err)
	}
	wantLines(t, out.String(), `poll 2: verify-credentials failed, retrieve-accounts pending, retrieve-transactions pending$`)
	noSecrets(t, srv, out.String()+err.Error())
}

// TestRunDeadline: when no job comes before QUICKSTART_TIMEOUT, the
// program stops with errNoJob and the context's error.
func TestRunDeadline(t *testing.T) {
	srv := issuertest.RunT(t)
	e := against(srv, "")
	e["QUICKSTART_CONNECT"] = connectConsent
	e["QUICKSTART_TIMEOUT"] = "20ms"
	var out bytes.Buffer
	err := run(context.Background(), &out, e.get)
	if !errors.Is(err, errNoJob) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want errNoJob and DeadlineExceeded", err)
	}
}

// TestRunErrors: bad settings and API errors are typed and name their
// cause without a secret.
func TestRunErrors(t *testing.T) {
	srv := issuertest.RunT(t, issuertest.WithStrictUsers(true))
	tests := []struct {
		name  string
		edit  func(env)
		check func(t *testing.T, err error)
	}{
		{"issuer URL without a key", func(e env) { delete(e, "BASIQ_API_KEY") }, wantConfigError("TOKENCACHE_ISSUER_URL")},
		{"bad connect mode", func(e env) { e["QUICKSTART_CONNECT"] = "browser" }, wantConfigError("QUICKSTART_CONNECT")},
		{"bad poll", func(e env) { e["QUICKSTART_POLL"] = "-1s" }, wantConfigError("QUICKSTART_POLL")},
		{"bad timeout", func(e env) { e["QUICKSTART_TIMEOUT"] = "soon" }, wantConfigError("QUICKSTART_TIMEOUT")},
		{"bad user id", func(e env) { e["BASIQ_USER_ID"] = "a:b" }, wantConfigError("BASIQ_USER_ID")},
		{"bad Redis URL", func(e env) { e["TOKENCACHE_REDIS_URL"] = "redis://:hunter2@[::1" }, func(t *testing.T, err error) {
			wantConfigError("TOKENCACHE_REDIS_URL")(t, err)
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("the Redis password appears in %q", err)
			}
		}},
		{"unknown user", func(e env) { e["BASIQ_USER_ID"] = "no-such-user" }, func(t *testing.T, err error) {
			var ae *apiError
			if !errors.As(err, &ae) || ae.Status != 404 || ae.Code != "resource-not-found" || ae.CorrelationID == "" {
				t.Errorf("got %v, want GET /users/{id} 404 resource-not-found", err)
			}
		}},
		{"wrong API key", func(e env) { e["BASIQ_API_KEY"] = "d3Jvbmcta2V5LW5vdC10aGlzLW9uZQ==" }, func(t *testing.T, err error) {
			if err == nil || !strings.Contains(err.Error(), "invalid-client") || strings.Contains(err.Error(), "d3Jvbmcta2V5") {
				t.Errorf("got %v, want invalid-client without the key", err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := against(srv, "")
			tt.edit(e)
			var out bytes.Buffer
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			err := run(ctx, &out, e.get)
			tt.check(t, err)
			if err != nil && strings.Contains(out.String()+err.Error(), srv.APIKey()) {
				t.Errorf("the API key appears in the output or error")
			}
		})
	}
}

func wantConfigError(name string) func(*testing.T, error) {
	return func(t *testing.T, err error) {
		t.Helper()
		var ce *configError
		if !errors.As(err, &ce) || ce.Name != name {
			t.Errorf("got %v, want a configError for %s", err, name)
		}
	}
}

// TestRunBadUserIDFromAPI: a user id that cannot name a cached token (or
// a URL path) is refused before it is used.
func TestRunBadUserIDFromAPI(t *testing.T) {
	fake := issuertest.New()
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && r.URL.Path == "/users" {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusCreated)
			_, _ = io.WriteString(w, `{"type":"user","id":"../../jobs/x"}`)
			return
		}
		fake.ServeHTTP(w, r)
	}))
	defer ts.Close()
	e := fast(env{"BASIQ_API_KEY": fake.APIKey(), "TOKENCACHE_ISSUER_URL": ts.URL, "QUICKSTART_CONNECT": connectSandbox})
	var out bytes.Buffer
	err := run(context.Background(), &out, e.get)
	if !errors.Is(err, tokencache.ErrInvalidUserID) {
		t.Fatalf("got %v, want ErrInvalidUserID", err)
	}
	if strings.Contains(out.String(), "jobs/x") {
		t.Errorf("the bad id was printed:\n%s", out.String())
	}
}

// TestModeFollowsTheIssuerURL checks that BASIQ_API_KEY alone does not
// send the program to Basiq: with TOKENCACHE_ISSUER_URL naming another
// issuer (cmd/fakeissuer) it runs the fake's flow, connecting the sandbox
// bank at once instead of waiting for a person; and that it says which.
func TestModeFollowsTheIssuerURL(t *testing.T) {
	tests := []struct {
		name        string
		env         env
		real        bool
		wantConnect string
	}{
		{"nothing set", env{}, false, connectSandbox},
		{"key only", env{"BASIQ_API_KEY": "k"}, true, connectConsent},
		{"key and Basiq's URL", env{"BASIQ_API_KEY": "k", "TOKENCACHE_ISSUER_URL": "https://au-api.basiq.io"}, true, connectConsent},
		{"key and a fake's URL", env{"BASIQ_API_KEY": "k", "TOKENCACHE_ISSUER_URL": "http://127.0.0.1:8080"}, false, connectSandbox},
	}
	for _, tt := range tests {
		c, err := readConfig(tt.env.get)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if c.realBasiq() != tt.real || c.connect != tt.wantConnect {
			t.Errorf("%s: real Basiq %t, connect %s; want %t, %s", tt.name, c.realBasiq(), c.connect, tt.real, tt.wantConnect)
		}
	}

	// A key exported for the daemon, and the issuer URL of a fake: the
	// run finishes at once, and its first line says it is not Basiq.
	srv := issuertest.RunT(t, issuertest.WithStrictUsers(true))
	e := against(srv, "")
	delete(e, "QUICKSTART_CONNECT")
	var out bytes.Buffer
	if err := run(context.Background(), &out, e.get); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	wantLines(t, out.String(), `^Basiq quick start against the issuer at http://127\.0\.0\.1:\d+ \(not basiq\.io: the fake's flow\), Redis .*; connect: sandbox`)
}

// TestRunInterrupted checks that a run interrupted while it waits for the
// user's bank connection says "interrupted", not that a deadline passed.
func TestRunInterrupted(t *testing.T) {
	srv := issuertest.RunT(t, issuertest.WithStrictUsers(true))
	e := against(srv, "")
	e["QUICKSTART_CONNECT"] = connectConsent
	e["QUICKSTART_TIMEOUT"] = "1h"
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	defer pr.Close()
	done := make(chan error, 1)
	go func() {
		err := run(ctx, pw, e.get)
		pw.CloseWithError(err)
		done <- err
	}()
	sc := bufio.NewScanner(pr)
	for sc.Scan() {
		if strings.Contains(sc.Text(), "in a browser") {
			cancel() // Ctrl-C while it waits for the person
			break
		}
	}
	go func() { _, _ = io.Copy(io.Discard, pr) }()
	err := <-done
	if !errors.Is(err, errInterrupted) || !errors.Is(err, context.Canceled) || strings.Contains(err.Error(), "deadline") {
		t.Fatalf("got %v, want interrupted (context.Canceled), no deadline", err)
	}
}
