package issuertest_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/tokencache/tokencache/tokencache/issuertest"
)

// fixture reads a file of the shared testdata/basiq.
func fixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "testdata", "basiq", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// token gets a token of scope (and user) from the fake.
func token(t *testing.T, srv *issuertest.Server, scope, userID string) string {
	t.Helper()
	form := url.Values{"scope": {scope}}
	if userID != "" {
		form.Set("userId", userID)
	}
	r := do(t, tokenRequest(t, srv, form))
	if r.status != 200 {
		t.Fatalf("POST /token %s: %d %s", scope, r.status, r.body)
	}
	return r.json(t)["access_token"].(string)
}

// call sends method path with token and, if body is not nil, a JSON body.
func call(t *testing.T, srv *issuertest.Server, method, path, token string, body any) response {
	t.Helper()
	var rd *bytes.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	} else {
		rd = bytes.NewReader(nil)
	}
	req, err := http.NewRequest(method, srv.URL()+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	return do(t, req)
}

func (r response) into(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("body %s: %v", r.body, err)
	}
}

var sandbox = func() issuertest.ConnectRequest {
	var c issuertest.ConnectRequest
	c.LoginID, c.Password, c.Institution.ID = issuertest.SandboxLoginID, issuertest.SandboxPassword, issuertest.SandboxInstitution
	return c
}()

type job struct {
	ID    string `json:"id"`
	Steps []struct {
		Title  string          `json:"title"`
		Status string          `json:"status"`
		Result json.RawMessage `json:"result"`
	} `json:"steps"`
}

func (j job) statuses() string {
	var s []string
	for _, st := range j.Steps {
		s = append(s, st.Status)
	}
	return strings.Join(s, ",")
}

func createUser(t *testing.T, srv *issuertest.Server, server string) string {
	t.Helper()
	r := call(t, srv, "POST", "/users", server, map[string]string{"email": "max@hooli.com", "mobile": "+61410888999"})
	if r.status != http.StatusCreated {
		t.Fatalf("POST /users: %d %s", r.status, r.body)
	}
	return r.json(t)["id"].(string)
}

// TestQuickStartFlow walks Basiq's quick start against the fake: a user,
// a client token bound to it, a connection, a job polled to success, and
// the accounts.
func TestQuickStartFlow(t *testing.T) {
	srv := issuertest.RunT(t, issuertest.WithStrictUsers(true))
	server := token(t, srv, "SERVER_ACCESS", "")
	userID := createUser(t, srv, server)
	if got := srv.Users(); len(got) != 1 || got[0] != userID {
		t.Fatalf("Users() = %v, want [%s]", got, userID)
	}
	client := token(t, srv, "CLIENT_ACCESS", userID)

	if r := call(t, srv, "GET", "/users/"+userID, client, nil); r.status != 200 || r.json(t)["email"] != "max@hooli.com" {
		t.Fatalf("GET /users/{id} with its client token: %d %s", r.status, r.body)
	}
	var accounts struct {
		Count int              `json:"count"`
		Data  []map[string]any `json:"data"`
	}
	call(t, srv, "GET", "/users/"+userID+"/accounts", server, nil).into(t, &accounts)
	if accounts.Count != 0 {
		t.Fatalf("accounts before any connection: %d, want 0", accounts.Count)
	}

	r := call(t, srv, "POST", "/users/"+userID+"/connections", client, sandbox)
	if r.status != http.StatusAccepted {
		t.Fatalf("POST connections: %d %s", r.status, r.body)
	}
	var started job
	r.into(t, &started)

	wantPolls := []string{
		"in-progress,pending,pending",
		"success,in-progress,pending",
		"success,success,in-progress",
		"success,success,success",
		"success,success,success", // a finished job stays finished
	}
	for i, want := range wantPolls {
		var j job
		r := call(t, srv, "GET", "/jobs/"+started.ID, client, nil)
		if r.status != 200 {
			t.Fatalf("poll %d: %d %s", i+1, r.status, r.body)
		}
		r.into(t, &j)
		if got := j.statuses(); got != want {
			t.Errorf("poll %d: steps %s, want %s", i+1, got, want)
		}
		if i == 1 {
			// After the accounts step has started but not finished, none are listed.
			call(t, srv, "GET", "/users/"+userID+"/accounts", server, nil).into(t, &accounts)
			if accounts.Count != 0 {
				t.Errorf("accounts while retrieving: %d, want 0", accounts.Count)
			}
		}
	}

	call(t, srv, "GET", "/users/"+userID+"/accounts", client, nil).into(t, &accounts)
	var want struct {
		Data []map[string]any `json:"data"`
	}
	if err := json.Unmarshal(fixture(t, "accounts.json"), &want); err != nil {
		t.Fatal(err)
	}
	if accounts.Count != len(want.Data) || len(accounts.Data) != len(want.Data) {
		t.Fatalf("got %d accounts, want the %d of testdata/basiq/accounts.json", accounts.Count, len(want.Data))
	}
	for i, a := range accounts.Data {
		for _, k := range []string{"name", "accountNo", "balance", "availableFunds", "currency", "class"} {
			if fmt.Sprint(a[k]) != fmt.Sprint(want.Data[i][k]) {
				t.Errorf("account %d %s = %v, want %v", i, k, a[k], want.Data[i][k])
			}
		}
		self := a["links"].(map[string]any)["self"]
		if wantSelf := srv.URL() + "/users/" + userID + "/accounts/" + a["id"].(string); self != wantSelf {
			t.Errorf("account %d links.self = %v, want %s", i, self, wantSelf)
		}
	}

	var user struct {
		Connections struct{ Count int } `json:"connections"`
		Accounts    struct{ Count int } `json:"accounts"`
	}
	call(t, srv, "GET", "/users/"+userID, server, nil).into(t, &user)
	if user.Connections.Count != 1 || user.Accounts.Count != len(want.Data) {
		t.Errorf("user lists %d connections and %d accounts, want 1 and %d", user.Connections.Count, user.Accounts.Count, len(want.Data))
	}
	var jobs struct {
		Count int   `json:"count"`
		Data  []job `json:"data"`
	}
	call(t, srv, "GET", "/users/"+userID+"/jobs", client, nil).into(t, &jobs)
	if jobs.Count != 1 || jobs.Data[0].ID != started.ID {
		t.Errorf("user's jobs: %+v, want the one job %s", jobs, started.ID)
	}
}

// TestAPIAuth: every Basiq API call needs a live token; a CLIENT_ACCESS
// token works only for its own user, and never creates users.
func TestAPIAuth(t *testing.T) {
	clock := newClock()
	srv := issuertest.RunT(t, issuertest.WithClock(clock.Now))
	server := token(t, srv, "SERVER_ACCESS", "")
	alice, bob := createUser(t, srv, server), createUser(t, srv, server)
	aliceTok := token(t, srv, "CLIENT_ACCESS", alice)
	bobTok := token(t, srv, "CLIENT_ACCESS", bob)
	jobID, err := srv.Connect(bob, sandbox)
	if err != nil {
		t.Fatal(err)
	}
	revoked := token(t, srv, "SERVER_ACCESS", "")
	srv.Revoke(revoked)

	tests := []struct {
		name, method, path, token string
		body                      any
		want                      int
		code                      string
	}{
		{"create user, no token", "POST", "/users", "", map[string]string{"email": "a@b.co"}, 401, "unauthorized-access"},
		{"create user, unknown token", "POST", "/users", "nope", map[string]string{"email": "a@b.co"}, 401, "unauthorized-access"},
		{"create user, revoked token", "POST", "/users", revoked, map[string]string{"email": "a@b.co"}, 401, "unauthorized-access"},
		{"create user, client token", "POST", "/users", aliceTok, map[string]string{"email": "a@b.co"}, 403, "access-denied"},
		{"user, no token", "GET", "/users/" + alice, "", nil, 401, "unauthorized-access"},
		{"user, own client token", "GET", "/users/" + alice, aliceTok, nil, 200, ""},
		{"user, other's client token", "GET", "/users/" + alice, bobTok, nil, 403, "access-denied"},
		{"accounts, other's client token", "GET", "/users/" + alice + "/accounts", bobTok, nil, 403, "access-denied"},
		{"jobs, other's client token", "GET", "/users/" + bob + "/jobs", aliceTok, nil, 403, "access-denied"},
		{"connect, other's client token", "POST", "/users/" + alice + "/connections", bobTok, sandbox, 403, "access-denied"},
		{"job, other's client token", "GET", "/jobs/" + jobID, aliceTok, nil, 403, "access-denied"},
		{"job, no token", "GET", "/jobs/" + jobID, "", nil, 401, "unauthorized-access"},
		{"job, own client token", "GET", "/jobs/" + jobID, bobTok, nil, 200, ""},
		{"job, server token", "GET", "/jobs/" + jobID, server, nil, 200, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := call(t, srv, tt.method, tt.path, tt.token, tt.body)
			if r.status != tt.want {
				t.Fatalf("%s %s: got %d %s, want %d", tt.method, tt.path, r.status, r.body, tt.want)
			}
			if tt.code != "" {
				if code, _ := r.basiqError(t); code != tt.code {
					t.Errorf("got code %q, want %q", code, tt.code)
				}
			}
		})
	}

	// An expired token is refused everywhere, as a revoked one is.
	clock.Advance(issuertest.DefaultLifetime)
	for _, path := range []string{"/users/" + alice, "/jobs/" + jobID, "/users/" + bob + "/accounts"} {
		r := call(t, srv, "GET", path, server, nil)
		if code, _ := r.basiqError(t); r.status != 401 || code != "unauthorized-access" {
			t.Errorf("GET %s with an expired token: %d %s, want 401 unauthorized-access", path, r.status, code)
		}
	}
}

// TestAPIErrors: bad requests and unknown ids get Basiq's error objects.
func TestAPIErrors(t *testing.T) {
	strict := issuertest.RunT(t, issuertest.WithStrictUsers(true))
	server := token(t, strict, "SERVER_ACCESS", "")
	userID := createUser(t, strict, server)
	badInstitution := sandbox
	badInstitution.Institution.ID = "AU99999"
	noLogin := sandbox
	noLogin.LoginID = ""

	tests := []struct {
		name, method, path string
		body               any
		raw, contentType   string // a raw body instead of body
		want               int
		code, source       string
	}{
		{name: "no email nor mobile", method: "POST", path: "/users", body: map[string]string{"firstName": "Max"},
			want: 400, code: "parameter-not-supplied", source: "data/email"},
		{name: "bad email", method: "POST", path: "/users", body: map[string]string{"email": "max at hooli"},
			want: 400, code: "parameter-not-valid", source: "data/email"},
		{name: "bad mobile", method: "POST", path: "/users", body: map[string]string{"mobile": "0410 888 999"},
			want: 400, code: "parameter-not-valid", source: "data/mobile"},
		{name: "form body", method: "POST", path: "/users", raw: "email=max@hooli.com", contentType: "application/x-www-form-urlencoded",
			want: 400, code: "invalid-request"},
		{name: "not JSON", method: "POST", path: "/users", raw: "{email", contentType: "application/json", want: 400, code: "invalid-request"},
		{name: "two objects", method: "POST", path: "/users", raw: `{"email":"a@b.co"}{}`, contentType: "application/json",
			want: 400, code: "invalid-request"},
		{name: "wrong method", method: "PUT", path: "/users", body: map[string]string{}, want: 405, code: "invalid-request"},
		{name: "unknown user", method: "GET", path: "/users/no-such-user", want: 404, code: "resource-not-found"},
		{name: "unknown user's accounts", method: "GET", path: "/users/no-such-user/accounts", want: 404, code: "resource-not-found"},
		{name: "unknown job", method: "GET", path: "/jobs/no-such-job", want: 404, code: "resource-not-found"},
		{name: "job sub-path", method: "GET", path: "/jobs/a/b", want: 404, code: "resource-not-found"},
		{name: "connect, no loginId", method: "POST", path: "/users/" + userID + "/connections", body: noLogin,
			want: 400, code: "parameter-not-supplied", source: "data/loginId"},
		{name: "connect, unknown institution", method: "POST", path: "/users/" + userID + "/connections", body: badInstitution,
			want: 400, code: "parameter-not-valid", source: "data/institution/id"},
		{name: "connect, unknown user", method: "POST", path: "/users/no-such-user/connections", body: sandbox,
			want: 404, code: "resource-not-found"},
		{name: "GET connections", method: "GET", path: "/users/" + userID + "/connections", want: 405, code: "invalid-request"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r response
			if tt.raw != "" {
				req, _ := http.NewRequest(tt.method, strict.URL()+tt.path, strings.NewReader(tt.raw))
				req.Header.Set("Authorization", "Bearer "+server)
				req.Header.Set("Content-Type", tt.contentType)
				r = do(t, req)
			} else {
				r = call(t, strict, tt.method, tt.path, server, tt.body)
			}
			if r.status != tt.want {
				t.Fatalf("got %d %s, want %d", r.status, r.body, tt.want)
			}
			var e struct {
				Data []struct {
					Code   string            `json:"code"`
					Source map[string]string `json:"source"`
				} `json:"data"`
			}
			r.basiqError(t) // Basiq-shaped
			r.into(t, &e)
			if e.Data[0].Code != tt.code || (tt.source != "" && e.Data[0].Source["pointer"] != tt.source) {
				t.Errorf("got %s, want code %s pointer %q", r.body, tt.code, tt.source)
			}
		})
	}
	if n := len(strict.Users()); n != 1 {
		t.Errorf("strict fake knows %d users, want 1: an unknown id is not adopted", n)
	}
	if _, err := strict.Connect("no-such-user", sandbox); !errors.Is(err, issuertest.ErrUnknownUser) {
		t.Errorf("Connect to an unknown user: %v, want ErrUnknownUser", err)
	}
	if _, err := strict.Connect(userID, noLogin); err == nil || !strings.Contains(err.Error(), "parameter-not-supplied") {
		t.Errorf("Connect without a login: %v, want parameter-not-supplied", err)
	}
}

// TestUnknownUsersAdopted: by default an id the fake did not create is an
// existing user with no connections, so code with a fixed id keeps working.
func TestUnknownUsersAdopted(t *testing.T) {
	srv := issuertest.RunT(t)
	server := token(t, srv, "SERVER_ACCESS", "")
	r := call(t, srv, "GET", "/users/ea3a81/accounts", server, nil)
	var accounts struct {
		Type  string `json:"type"`
		Count int    `json:"count"`
	}
	r.into(t, &accounts)
	if r.status != 200 || accounts.Type != "list" || accounts.Count != 0 {
		t.Fatalf("unknown user's accounts: %d %s, want 200 and an empty list", r.status, r.body)
	}
	if got := srv.Users(); len(got) != 1 || got[0] != "ea3a81" {
		t.Errorf("Users() = %v, want the adopted [ea3a81]", got)
	}
	if r := call(t, srv, "GET", "/users/ea3a81", server, nil); r.status != 200 || r.json(t)["type"] != "user" {
		t.Errorf("adopted user: %d %s, want a Basiq user object", r.status, r.body)
	}
	if _, err := srv.Connect("ea3a81", sandbox); err != nil {
		t.Errorf("Connect to an adopted user: %v", err)
	}
	if _, err := srv.Connect("never-seen", sandbox); err != nil {
		t.Errorf("Connect adopts an unknown user too: %v", err)
	}
	if r := call(t, srv, "GET", "/users/"+strings.Repeat("x", 200), server, nil); r.status != 404 {
		t.Errorf("a 200-byte id: %d, want 404", r.status)
	}
}

// TestFailingJob: a wrong bank login, or FailJobs, fails the job at
// verify-credentials with Basiq's invalid-credentials, and it stays failed.
func TestFailingJob(t *testing.T) {
	srv := issuertest.RunT(t)
	server := token(t, srv, "SERVER_ACCESS", "")
	var want job
	if err := json.Unmarshal(fixture(t, "job_failed.json"), &want); err != nil {
		t.Fatal(err)
	}
	wrong := sandbox
	wrong.Password = "not-the-password"

	poll := func(t *testing.T, userID string, req issuertest.ConnectRequest) {
		t.Helper()
		jobID, err := srv.Connect(userID, req)
		if err != nil {
			t.Fatal(err)
		}
		for i, st := range []string{"in-progress,pending,pending", "failed,pending,pending", "failed,pending,pending"} {
			var j job
			call(t, srv, "GET", "/jobs/"+jobID, server, nil).into(t, &j)
			if got := j.statuses(); got != st {
				t.Fatalf("poll %d: %s, want %s", i+1, got, st)
			}
			if i > 0 && !bytes.Equal(compact(t, j.Steps[0].Result), compact(t, want.Steps[0].Result)) {
				t.Errorf("failed step result %s, want testdata/basiq/job_failed.json's %s", j.Steps[0].Result, want.Steps[0].Result)
			}
		}
		var accounts struct{ Count int }
		call(t, srv, "GET", "/users/"+userID+"/accounts", server, nil).into(t, &accounts)
		if accounts.Count != 0 {
			t.Errorf("a failed job left %d accounts", accounts.Count)
		}
	}
	t.Run("wrong login", func(t *testing.T) { poll(t, createUser(t, srv, server), wrong) })
	t.Run("FailJobs", func(t *testing.T) {
		srv.FailJobs(true)
		poll(t, createUser(t, srv, server), sandbox)
	})
	t.Run("Reset", func(t *testing.T) {
		srv.Reset()
		userID := createUser(t, srv, server)
		jobID, err := srv.Connect(userID, sandbox)
		if err != nil {
			t.Fatal(err)
		}
		var j job
		for range 4 {
			call(t, srv, "GET", "/jobs/"+jobID, server, nil).into(t, &j)
		}
		if got := j.statuses(); got != "success,success,success" {
			t.Errorf("after Reset: %s, want success", got)
		}
	})
}

func compact(t *testing.T, raw json.RawMessage) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// TestShapesMatchFixtures: the fake's answers have the fields, nesting and
// JSON types of the shared Basiq fixtures.
func TestShapesMatchFixtures(t *testing.T) {
	srv := issuertest.RunT(t)
	server := token(t, srv, "SERVER_ACCESS", "")
	r := call(t, srv, "POST", "/users", server, map[string]string{"email": "max@hooli.com", "mobile": "+61410888999"})
	userID := r.json(t)["id"].(string)
	sameShape(t, "user.json", fixture(t, "user.json"), r.body)

	r = call(t, srv, "POST", "/users/"+userID+"/connections", server, sandbox)
	sameShape(t, "connection_job.json", fixture(t, "connection_job.json"), r.body)
	var started job
	r.into(t, &started)

	sameShape(t, "user_jobs.json", fixture(t, "user_jobs.json"), call(t, srv, "GET", "/users/"+userID+"/jobs", server, nil).body)
	var last response
	for range 4 {
		last = call(t, srv, "GET", "/jobs/"+started.ID, server, nil)
	}
	sameShape(t, "job_success.json", fixture(t, "job_success.json"), last.body)
	sameShape(t, "accounts.json", fixture(t, "accounts.json"), call(t, srv, "GET", "/users/"+userID+"/accounts", server, nil).body)
	sameShape(t, "error_resource-not-found.json", fixture(t, "error_resource-not-found.json"), call(t, srv, "GET", "/jobs/nope", server, nil).body)
	unauthorized := call(t, srv, "GET", "/jobs/nope", "", nil).body
	sameShape(t, "error_unauthorized-access.json", fixture(t, "error_unauthorized-access.json"), unauthorized)

	// The 401's words are the fixture's.
	type words struct {
		Data []struct{ Code, Title, Detail string } `json:"data"`
	}
	var got, want words
	if json.Unmarshal(unauthorized, &got) != nil || json.Unmarshal(fixture(t, "error_unauthorized-access.json"), &want) != nil ||
		fmt.Sprint(got.Data) != fmt.Sprint(want.Data) {
		t.Errorf("401 body %s, want the words of testdata/basiq/error_unauthorized-access.json", unauthorized)
	}
}

// sameShape fails unless got has exactly want's object keys, recursively,
// with values of the same JSON kind. Arrays compare by their first
// element; an empty array in either matches any array.
func sameShape(t *testing.T, name string, want, got []byte) {
	t.Helper()
	var w, g any
	if err := json.Unmarshal(want, &w); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("%s: the fake answered %s: %v", name, got, err)
	}
	var diffs []string
	shape(w, g, "$", &diffs)
	sort.Strings(diffs)
	for _, d := range diffs {
		t.Errorf("%s: %s", name, d)
	}
}

func shape(w, g any, at string, diffs *[]string) {
	kind := func(v any) string { return fmt.Sprintf("%T", v) }
	if kind(w) != kind(g) {
		*diffs = append(*diffs, fmt.Sprintf("%s: got a %s, want a %s", at, kind(g), kind(w)))
		return
	}
	switch w := w.(type) {
	case map[string]any:
		g := g.(map[string]any)
		for k, v := range w {
			gv, ok := g[k]
			if !ok {
				*diffs = append(*diffs, fmt.Sprintf("%s.%s: missing", at, k))
				continue
			}
			shape(v, gv, at+"."+k, diffs)
		}
		for k := range g {
			if _, ok := w[k]; !ok {
				*diffs = append(*diffs, fmt.Sprintf("%s.%s: not in the fixture", at, k))
			}
		}
	case []any:
		g := g.([]any)
		if len(w) > 0 && len(g) > 0 {
			shape(w[0], g[0], at+"[0]", diffs)
		}
	}
}

// TestAPIConcurrentUse creates users, connects and polls from many
// goroutines at once (run with -race).
func TestAPIConcurrentUse(t *testing.T) {
	srv := issuertest.RunT(t)
	server := token(t, srv, "SERVER_ACCESS", "")
	// get answers GET path's status, or 0 if the request failed.
	get := func(path string) int {
		req, _ := http.NewRequest("GET", srv.URL()+path, nil)
		req.Header.Set("Authorization", "Bearer "+server)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	const n = 8
	ids := make([]string, n)
	for i := range ids {
		ids[i] = createUser(t, srv, server)
	}
	var wg sync.WaitGroup
	for _, userID := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			jobID, err := srv.Connect(userID, sandbox)
			if err != nil {
				t.Error(err)
				return
			}
			for range 4 {
				if a, b := get("/jobs/"+jobID), get("/users/"+userID); a != 200 || b != 200 {
					t.Errorf("user %s: job %d, user %d", userID, a, b)
				}
			}
		}()
	}
	wg.Wait()
	for _, userID := range ids {
		var accounts struct{ Count int }
		call(t, srv, "GET", "/users/"+userID+"/accounts", server, nil).into(t, &accounts)
		if accounts.Count == 0 {
			t.Errorf("user %s: no accounts after the job", userID)
		}
	}
}
