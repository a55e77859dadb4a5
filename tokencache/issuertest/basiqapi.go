package issuertest

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/mail"
	"sort"
	"strings"
	"time"
)

// The Basiq API surface of the quick start, besides POST /token.
const (
	// UsersPath answers POST (create a user, SERVER_ACCESS only). Under
	// it: GET /users/{id}, GET /users/{id}/accounts, GET /users/{id}/jobs
	// and POST /users/{id}/connections.
	UsersPath = "/users"
	// JobsPath prefixes GET /jobs/{id}.
	JobsPath = "/jobs"
)

// Basiq's sandbox bank and its test login, which the fake's connections
// accept. Any other login is taken, as Basiq takes it, and its job fails
// at verify-credentials.
const (
	SandboxInstitution = "AU00000" // Hooli
	SandboxLoginID     = "gavinBelson"
	SandboxPassword    = "hooli2016"
)

// The steps of a connection's job, in order, and their statuses.
const (
	StepVerifyCredentials    = "verify-credentials"
	StepRetrieveAccounts     = "retrieve-accounts"
	StepRetrieveTransactions = "retrieve-transactions"

	StepPending    = "pending"
	StepInProgress = "in-progress"
	StepSuccess    = "success"
	StepFailed     = "failed"
)

var jobSteps = [...]string{StepVerifyCredentials, StepRetrieveAccounts, StepRetrieveTransactions}

// maxUsers and maxJobs bound what a long-running fake remembers.
const (
	maxUsers = 10_000
	maxJobs  = 10_000
)

// maxUserID bounds the ids of users the fake adopts (see WithStrictUsers).
const maxUserID = 128

// WithStrictUsers makes the fake answer 404 resource-not-found, as Basiq
// does, for user ids it did not create with POST /users. By default
// (false) an unknown id is adopted as an existing user with no
// connections, as if it had been created before the fake started, so that
// code written against a fixed user id keeps working.
func WithStrictUsers(on bool) Option { return func(s *Server) { s.strictUsers = on } }

// FailJobs makes every job created from now on fail at
// verify-credentials, as a wrong bank login does, whatever the login.
// Reset turns it off.
func (s *Server) FailJobs(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failJobs = on
}

// Users returns the ids of the users the fake knows, sorted.
func (s *Server) Users() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := make([]string, 0, len(s.users))
	for id := range s.users {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// LiveTokens returns every token the server issued that is neither
// expired nor revoked, so that a test can check none of them leaked into
// logs or output.
func (s *Server) LiveTokens() []string {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	var toks []string
	for t, it := range s.tokens {
		if now.Before(it.expiry) {
			toks = append(toks, t)
		}
	}
	return toks
}

// ConnectRequest is the body of POST /users/{id}/connections: a bank
// login at an institution.
type ConnectRequest struct {
	LoginID     string `json:"loginId"`
	Password    string `json:"password"`
	Institution struct {
		ID string `json:"id"`
	} `json:"institution"`
}

// ErrUnknownUser is returned by Connect for a user the fake does not know
// (with WithStrictUsers; otherwise an unknown id is adopted).
var ErrUnknownUser = errors.New("issuertest: unknown user")

// Connect does what the user does in the Consent UI: it connects a bank
// for userID and returns the id of the job that retrieves its data. It is
// POST /users/{id}/connections without HTTP, for tests that play the user.
func (s *Server) Connect(userID string, req ConnectRequest) (jobID string, err error) {
	if e := req.validate(); e != nil {
		return "", fmt.Errorf("issuertest: %s: %s", e.code, e.detail)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	u, e := s.userLocked(userID)
	if e != nil {
		return "", fmt.Errorf("%w %q", ErrUnknownUser, userID)
	}
	j, e := s.connectLocked(u, req)
	if e != nil {
		return "", fmt.Errorf("issuertest: %s: %s", e.code, e.detail)
	}
	return j.id, nil
}

// apiUser is a Basiq user as the fake keeps it. Guarded by Server.mu.
type apiUser struct {
	id                              string
	email, mobile                   string
	firstName, middleName, lastName string
	connections                     []*apiConnection
	jobs                            []*apiJob
}

// apiConnection is one bank connection of a user.
type apiConnection struct {
	id, institution string
	accountIDs      []string
	job             *apiJob // the job that retrieves its data
}

// apiJob is a connection's job. The first GET /jobs/{id} sees its first
// step in progress, and each later one moves it a step on before
// answering, so a client sees it progress over a few polls (four to
// success, two to a failure), without any clock. What the job has done is
// what the API shows: the accounts appear once retrieve-accounts is seen
// to succeed.
type apiJob struct {
	id, userID, connID string
	created, updated   time.Time
	polls              int  // GET /jobs/{id} answered
	stage              int  // steps done: 0 to len(jobSteps)
	fail               bool // fails at verify-credentials
}

func (j *apiJob) done() bool { return j.stage >= len(jobSteps) || (j.fail && j.stage >= 1) }

// accountsReady reports whether the job has retrieved the accounts.
func (j *apiJob) accountsReady() bool { return !j.fail && j.stage >= 2 }

// apiErr is a Basiq error answer of the API surface.
type apiErr struct {
	status       int
	code, detail string
	source       map[string]string
}

// write answers with e; the title, and the detail if e has none, are the
// served fixture's for the code.
func (e *apiErr) write(w http.ResponseWriter) {
	title, detail := http.StatusText(e.status), e.detail
	if t, d, ok := basiqError(e.code); ok {
		title = t
		if detail == "" {
			detail = d
		}
	}
	writeError(w, e.status, e.code, title, detail, e.source)
}

func pointer(p string) map[string]string { return map[string]string{"pointer": p} }

func notFound(what string) *apiErr {
	return &apiErr{status: http.StatusNotFound, code: "resource-not-found",
		detail: what + " not found.", source: map[string]string{"parameter": "id"}}
}

func methodNotAllowed(w http.ResponseWriter, r *http.Request, allow string) {
	w.Header().Set("Allow", allow)
	(&apiErr{status: http.StatusMethodNotAllowed, code: "invalid-request",
		detail: "Method " + r.Method + " is not allowed on " + r.URL.Path + "."}).write(w)
}

// authorize checks the Bearer token as the resource does and answers 401
// to a missing, unknown, expired or revoked one.
func (s *Server) authorize(w http.ResponseWriter, r *http.Request) (issued, bool) {
	s.counters.resource.Add(1)
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	var it issued
	if ok {
		it, ok = s.lookup(tok)
	}
	if !ok {
		s.counters.unauthorized.Add(1)
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		(&apiErr{status: http.StatusUnauthorized, code: "unauthorized-access"}).write(w)
		return issued{}, false
	}
	s.rotate(w, it)
	return it, true
}

// rotate sends a newer JWT in the Authorization response header to a
// request made with a JWT, when rotation is on.
func (s *Server) rotate(w http.ResponseWriter, it issued) {
	if it.scope != ScopeJWT {
		return
	}
	s.mu.Lock()
	on := s.rotation
	s.mu.Unlock()
	if !on {
		return
	}
	if next, err := s.mintJWT(); err == nil {
		s.counters.rotations.Add(1)
		w.Header().Set("Authorization", "Bearer "+next)
	}
}

// allowUser answers 403 unless the token may act for userID: a
// SERVER_ACCESS token (or a JWT) for anyone, a CLIENT_ACCESS token only
// for the user it is bound to.
func allowUser(w http.ResponseWriter, it issued, userID string) bool {
	if it.scope == ScopeClient && it.userID != userID {
		(&apiErr{status: http.StatusForbidden, code: "access-denied",
			detail: "This CLIENT_ACCESS token is bound to another user."}).write(w)
		return false
	}
	return true
}

// serveCreateUser answers POST /users.
func (s *Server) serveCreateUser(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		methodNotAllowed(w, r, http.MethodPost)
		return
	}
	it, ok := s.authorize(w, r)
	if !ok {
		return
	}
	if it.scope == ScopeClient {
		(&apiErr{status: http.StatusForbidden, code: "access-denied",
			detail: "Creating a user needs a SERVER_ACCESS token."}).write(w)
		return
	}
	var req struct {
		Email      string `json:"email"`
		Mobile     string `json:"mobile"`
		FirstName  string `json:"firstName"`
		MiddleName string `json:"middleName"`
		LastName   string `json:"lastName"`
	}
	if e := decodeJSON(w, r, &req); e != nil {
		e.write(w)
		return
	}
	switch {
	case req.Email == "" && req.Mobile == "":
		(&apiErr{status: http.StatusBadRequest, code: "parameter-not-supplied",
			detail: "Email or mobile is required.", source: pointer("data/email")}).write(w)
		return
	case req.Email != "" && !validEmail(req.Email):
		(&apiErr{status: http.StatusBadRequest, code: "parameter-not-valid",
			detail: "Email is not a valid email address.", source: pointer("data/email")}).write(w)
		return
	case req.Mobile != "" && !validMobile(req.Mobile):
		(&apiErr{status: http.StatusBadRequest, code: "parameter-not-valid",
			detail: "Mobile must be in international format, e.g. +61410888999.", source: pointer("data/mobile")}).write(w)
		return
	}
	u := &apiUser{id: randomUUID(), email: req.Email, mobile: req.Mobile,
		firstName: req.FirstName, middleName: req.MiddleName, lastName: req.LastName}
	s.mu.Lock()
	if len(s.users) >= maxUsers {
		s.mu.Unlock()
		(&apiErr{status: http.StatusTooManyRequests, code: "too-many-requests",
			detail: fmt.Sprintf("The fake holds at most %d users.", maxUsers)}).write(w)
		return
	}
	s.users[u.id] = u
	body := s.userBodyLocked(baseURL(r), u)
	s.mu.Unlock()
	writeJSON(w, http.StatusCreated, body)
}

// serveUser answers the paths under /users/{id}. It reports false for a
// path it does not know, which the generic resource then answers.
func (s *Server) serveUser(w http.ResponseWriter, r *http.Request, userID, rest string) bool {
	var allow string
	switch rest {
	case "", "accounts", "jobs":
		allow = http.MethodGet
	case "connections":
		allow = http.MethodPost
	default:
		return false
	}
	if r.Method != allow {
		methodNotAllowed(w, r, allow)
		return true
	}
	it, ok := s.authorize(w, r)
	if !ok || !allowUser(w, it, userID) {
		return true
	}
	if rest == "connections" {
		s.serveConnect(w, r, userID)
		return true
	}
	base := baseURL(r)
	s.mu.Lock()
	u, e := s.userLocked(userID)
	var body any
	if e == nil {
		switch rest {
		case "":
			body = s.userBodyLocked(base, u)
		case "accounts":
			body = accountsBody(base, u)
		case "jobs":
			jobs := make([]jobBody, 0, len(u.jobs))
			for _, j := range u.jobs {
				jobs = append(jobs, j.body(base))
			}
			body = listBody{Type: "list", Count: len(jobs), Data: jobs,
				Links: map[string]string{"self": base + UsersPath + "/" + u.id + "/jobs"}}
		}
	}
	s.mu.Unlock()
	if e != nil {
		e.write(w)
		return true
	}
	writeJSON(w, http.StatusOK, body)
	return true
}

// userLocked finds a user, adopting an unknown id unless users are strict.
func (s *Server) userLocked(id string) (*apiUser, *apiErr) {
	if u, ok := s.users[id]; ok {
		return u, nil
	}
	if s.strictUsers || id == "" || len(id) > maxUserID {
		return nil, notFound("User")
	}
	u := &apiUser{id: id}
	if len(s.users) < maxUsers {
		s.users[id] = u
	}
	return u, nil
}

// serveConnect answers POST /users/{id}/connections: the fake's stand-in
// for the Consent UI, where the user logs in to a bank. It answers 202
// with the job that verifies the login and retrieves the data.
func (s *Server) serveConnect(w http.ResponseWriter, r *http.Request, userID string) {
	var req ConnectRequest
	if e := decodeJSON(w, r, &req); e != nil {
		e.write(w)
		return
	}
	if e := req.validate(); e != nil {
		e.write(w)
		return
	}
	s.mu.Lock()
	u, e := s.userLocked(userID)
	var j *apiJob
	if e == nil {
		j, e = s.connectLocked(u, req)
	}
	s.mu.Unlock()
	if e != nil {
		e.write(w)
		return
	}
	base := baseURL(r)
	writeJSON(w, http.StatusAccepted, map[string]any{
		"type":  "job",
		"id":    j.id,
		"links": map[string]string{"self": base + JobsPath + "/" + j.id},
	})
}

func (c ConnectRequest) validate() *apiErr {
	switch {
	case c.LoginID == "":
		return &apiErr{status: http.StatusBadRequest, code: "parameter-not-supplied",
			detail: "loginId is required.", source: pointer("data/loginId")}
	case c.Password == "":
		return &apiErr{status: http.StatusBadRequest, code: "parameter-not-supplied",
			detail: "password is required.", source: pointer("data/password")}
	case c.Institution.ID == "":
		return &apiErr{status: http.StatusBadRequest, code: "parameter-not-supplied",
			detail: "institution.id is required.", source: pointer("data/institution/id")}
	case c.Institution.ID != SandboxInstitution:
		return &apiErr{status: http.StatusBadRequest, code: "parameter-not-valid",
			detail: "The fake knows only the sandbox institution " + SandboxInstitution + ".",
			source: pointer("data/institution/id")}
	}
	return nil
}

func (s *Server) connectLocked(u *apiUser, req ConnectRequest) (*apiJob, *apiErr) {
	if len(s.jobs) >= maxJobs {
		return nil, &apiErr{status: http.StatusTooManyRequests, code: "too-many-requests",
			detail: fmt.Sprintf("The fake holds at most %d jobs.", maxJobs)}
	}
	now := s.now()
	c := &apiConnection{id: randomHex(4), institution: req.Institution.ID}
	for range accountTemplates() {
		c.accountIDs = append(c.accountIDs, randomHex(4))
	}
	j := &apiJob{
		id: randomUUID(), userID: u.id, connID: c.id, created: now, updated: now,
		fail: s.failJobs || req.LoginID != SandboxLoginID || req.Password != SandboxPassword,
	}
	c.job = j
	u.connections = append(u.connections, c)
	u.jobs = append(u.jobs, j)
	s.jobs[j.id] = j
	return j, nil
}

// serveJob answers GET /jobs/{id}; every poll but the first moves the job
// one step on first.
func (s *Server) serveJob(w http.ResponseWriter, r *http.Request, jobID string) {
	if r.Method != http.MethodGet {
		methodNotAllowed(w, r, http.MethodGet)
		return
	}
	it, ok := s.authorize(w, r)
	if !ok {
		return
	}
	now := s.now()
	s.mu.Lock()
	j, found := s.jobs[jobID]
	var body jobBody
	if found && (it.scope != ScopeClient || it.userID == j.userID) {
		j.polls++
		if j.polls > 1 && !j.done() {
			j.stage++
			j.updated = now
		}
		body = j.body(baseURL(r))
	}
	s.mu.Unlock()
	switch {
	case !found:
		notFound("Job").write(w)
	case it.scope == ScopeClient && it.userID != j.userID:
		(&apiErr{status: http.StatusForbidden, code: "access-denied",
			detail: "This CLIENT_ACCESS token is bound to another user."}).write(w)
	default:
		writeJSON(w, http.StatusOK, body)
	}
}

// jobBody is Basiq's job object.
type jobBody struct {
	Type    string            `json:"type"`
	ID      string            `json:"id"`
	Created string            `json:"created"`
	Updated string            `json:"updated"`
	Steps   []jobStep         `json:"steps"`
	Links   map[string]string `json:"links"`
}

type jobStep struct {
	Title  string          `json:"title"`
	Status string          `json:"status"`
	Result json.RawMessage `json:"result"`
}

// body renders the job as it stands. Steps before the stage have
// succeeded, the one at the stage is in progress, the rest are pending; a
// failing job's first step fails instead of succeeding.
func (j *apiJob) body(base string) jobBody {
	userPath := UsersPath + "/" + j.userID
	results := [...]string{
		userPath + "/connections/" + j.connID,
		userPath + "/accounts?filter=connection.id.eq('" + j.connID + "')",
		userPath + "/transactions?filter=connection.id.eq('" + j.connID + "')",
	}
	b := jobBody{
		Type: "job", ID: j.id,
		Created: j.created.UTC().Format(time.RFC3339),
		Updated: j.updated.UTC().Format(time.RFC3339),
		Links: map[string]string{
			"self":   base + JobsPath + "/" + j.id,
			"source": base + userPath + "/connections/" + j.connID,
		},
	}
	for i, title := range jobSteps {
		st := jobStep{Title: title, Status: StepPending, Result: json.RawMessage("null")}
		switch {
		case j.fail && i == 0 && j.stage >= 1:
			st.Status = StepFailed
			if r := failedStepResult(); r != nil {
				st.Result = r
			}
		case j.fail && j.stage >= 1:
			// later steps of a failed job never start
		case i < j.stage:
			st.Status = StepSuccess
			st.Result, _ = json.Marshal(map[string]string{"type": "link", "url": results[i]})
		case i == j.stage:
			st.Status = StepInProgress
		}
		b.Steps = append(b.Steps, st)
	}
	return b
}

// listBody is Basiq's list envelope.
type listBody struct {
	Type  string            `json:"type"`
	Count int               `json:"count"`
	Size  int               `json:"size,omitempty"`
	Data  any               `json:"data"`
	Links map[string]string `json:"links,omitempty"`
}

type ref struct {
	Type  string            `json:"type"`
	ID    string            `json:"id"`
	Links map[string]string `json:"links"`
}

// userBodyLocked renders a user as GET /users/{id} (and POST /users) do.
func (s *Server) userBodyLocked(base string, u *apiUser) map[string]any {
	self := base + UsersPath + "/" + u.id
	conns := []ref{}
	accts := []ref{}
	for _, c := range u.connections {
		conns = append(conns, ref{Type: "connection", ID: c.id,
			Links: map[string]string{"self": self + "/connections/" + c.id}})
		if c.job.accountsReady() {
			for _, id := range c.accountIDs {
				accts = append(accts, ref{Type: "account", ID: id,
					Links: map[string]string{"self": self + "/accounts/" + id}})
			}
		}
	}
	return map[string]any{
		"type":        "user",
		"id":          u.id,
		"email":       u.email,
		"mobile":      u.mobile,
		"firstName":   u.firstName,
		"middleName":  u.middleName,
		"lastName":    u.lastName,
		"connections": listBody{Type: "list", Count: len(conns), Data: conns},
		"accounts":    listBody{Type: "list", Count: len(accts), Data: accts},
		"links":       map[string]string{"self": self},
	}
}

// accountsBody renders GET /users/{id}/accounts: the served accounts of
// every connection whose job has retrieved them, with this user's ids and
// links.
func accountsBody(base string, u *apiUser) listBody {
	self := base + UsersPath + "/" + u.id
	data := []map[string]any{}
	for _, c := range u.connections {
		if !c.job.accountsReady() {
			continue
		}
		for i, a := range accountTemplates() {
			if i >= len(c.accountIDs) {
				break
			}
			id := c.accountIDs[i]
			a["id"] = id
			a["connection"] = c.id
			a["institution"] = c.institution
			a["lastUpdated"] = c.job.updated.UTC().Format(time.RFC3339)
			a["links"] = map[string]string{
				"self":         self + "/accounts/" + id,
				"transactions": self + "/transactions?filter=account.id.eq('" + id + "')",
				"institution":  base + "/institutions/" + c.institution,
				"connection":   self + "/connections/" + c.id,
			}
			data = append(data, a)
		}
	}
	return listBody{Type: "list", Count: len(data), Size: 500, Data: data,
		Links: map[string]string{"self": self + "/accounts"}}
}

// decodeJSON reads a JSON object body of at most 64 KiB.
func decodeJSON(w http.ResponseWriter, r *http.Request, v any) *apiErr {
	if mediaType(r.Header.Get("Content-Type")) != "application/json" {
		return &apiErr{status: http.StatusBadRequest, code: "invalid-request",
			detail: "Content-Type must be application/json."}
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10))
	if err := dec.Decode(v); err != nil || dec.More() {
		return &apiErr{status: http.StatusBadRequest, code: "invalid-request",
			detail: "The body must be one JSON object."}
	}
	return nil
}

func validEmail(s string) bool {
	if len(s) > 254 {
		return false
	}
	a, err := mail.ParseAddress(s)
	return err == nil && a.Address == s
}

// validMobile accepts an international number: "+" then 8 to 15 digits.
func validMobile(s string) bool {
	if len(s) < 9 || len(s) > 16 || s[0] != '+' {
		return false
	}
	for _, c := range s[1:] {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// baseURL is the server's root as the client reached it, for links.
func baseURL(r *http.Request) string { return "http://" + r.Host }

// randomUUID returns a random (version 4) UUID, as Basiq's user ids are.
func randomUUID() string {
	h := randomHex(16)
	b := []byte(h)
	b[12] = '4'
	b[16] = "89ab"[int(b[16])%4]
	return string(b[0:8]) + "-" + string(b[8:12]) + "-" + string(b[12:16]) + "-" + string(b[16:20]) + "-" + string(b[20:32])
}
