package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"
)

// maxBody bounds every API answer read.
const maxBody = 1 << 20

// apiClient calls the Basiq API. server carries the fleet's server token
// (Cache.Transport); calls made for a user take that user's client.
type apiClient struct {
	base   string
	server *http.Client
}

// apiError is a Basiq error answer: {"type":"list","correlationId",
// "data":[{"type":"error","code","title","detail","source"}]}.
type apiError struct {
	Op            string // e.g. "POST /users"
	Status        int
	Code, Title   string
	Detail        string
	CorrelationID string
}

func (e *apiError) Error() string {
	s := fmt.Sprintf("%s: %d %s", e.Op, e.Status, e.Code)
	if e.Title != "" {
		s += ": " + e.Title
	}
	if e.Detail != "" {
		s += ": " + e.Detail
	}
	if e.CorrelationID != "" {
		s += " (correlationId " + e.CorrelationID + ")"
	}
	return s
}

// jobFailedError is a job whose step failed.
type jobFailedError struct {
	JobID, Step, Code, Title string
}

func (e *jobFailedError) Error() string {
	return fmt.Sprintf("job %s failed at %s: %s: %s", e.JobID, e.Step, e.Code, e.Title)
}

// errNoJob is returned when the deadline passes before a job appears or
// finishes; it wraps the context's error.
var errNoJob = errors.New("no finished job before the deadline")

// errInterrupted is returned when the program is interrupted (Ctrl-C,
// SIGTERM) while it waits; it wraps context.Canceled.
var errInterrupted = errors.New("interrupted")

// ended reports that ctx ended while waiting for a job: interrupted if it
// was cancelled, else errNoJob; with the context's error, whatever err the
// interrupted call returned.
func ended(ctx context.Context, err error) error {
	why := errNoJob
	if errors.Is(ctx.Err(), context.Canceled) {
		why = errInterrupted
	}
	if err != nil {
		return fmt.Errorf("%w while waiting for the job: %w (%v)", why, ctx.Err(), err)
	}
	return fmt.Errorf("%w while waiting for the job: %w", why, ctx.Err())
}

// do sends method path (with body as JSON, if not nil) through hc and
// decodes a 2xx answer into v.
func (a *apiClient) do(ctx context.Context, hc *http.Client, method, path string, body, v any) error {
	op := method + " " + path
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
		rd = bytes.NewReader(b) // rewindable: the transport may retry after a 401
	}
	req, err := http.NewRequestWithContext(ctx, method, a.base+path, rd)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	if err != nil {
		return fmt.Errorf("%s: read the answer: %w", op, err)
	}
	if len(b) > maxBody {
		return fmt.Errorf("%s: answer larger than %d bytes", op, maxBody)
	}
	if resp.StatusCode/100 != 2 {
		return parseError(op, resp.StatusCode, b)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %d with an unreadable body: %w", op, resp.StatusCode, err)
	}
	return nil
}

// parseError reads a Basiq error body; anything else is reported by its
// status alone (a body that is not Basiq's is not echoed).
func parseError(op string, status int, body []byte) *apiError {
	e := &apiError{Op: op, Status: status, Code: "http-" + fmt.Sprint(status), Title: http.StatusText(status)}
	var list struct {
		CorrelationID string `json:"correlationId"`
		Data          []struct {
			Code   string `json:"code"`
			Title  string `json:"title"`
			Detail string `json:"detail"`
		} `json:"data"`
	}
	if json.Unmarshal(body, &list) == nil && len(list.Data) > 0 && list.Data[0].Code != "" {
		d := list.Data[0]
		e.Code, e.Title, e.Detail, e.CorrelationID = clean(d.Code), clean(d.Title), clean(d.Detail), clean(list.CorrelationID)
	}
	return e
}

// clean keeps up to 200 printable characters of text from the API.
func clean(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return -1
		}
		return r
	}, s)
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}

type newUser struct {
	Email     string `json:"email,omitempty"`
	Mobile    string `json:"mobile,omitempty"`
	FirstName string `json:"firstName,omitempty"`
	LastName  string `json:"lastName,omitempty"`
}

type userBody struct {
	ID string `json:"id"`
}

func (a *apiClient) createUser(ctx context.Context, u newUser) (userBody, error) {
	var out userBody
	if err := a.do(ctx, a.server, http.MethodPost, "/users", u, &out); err != nil {
		return out, err
	}
	if out.ID == "" {
		return out, fmt.Errorf("POST /users: 201 without a user id")
	}
	return out, nil
}

func (a *apiClient) user(ctx context.Context, id string) (userBody, error) {
	var out userBody
	err := a.do(ctx, a.server, http.MethodGet, "/users/"+id, nil, &out)
	return out, err
}

// connectRequest is a bank login, as the Consent UI sends it.
type connectRequest struct {
	LoginID     string `json:"loginId"`
	Password    string `json:"password"`
	Institution struct {
		ID string `json:"id"`
	} `json:"institution"`
}

// connect creates a connection for the user with the user's client
// (client token), and returns its job's id.
func (a *apiClient) connect(ctx context.Context, client *http.Client, userID string, login connectRequest) (string, error) {
	var out struct {
		ID string `json:"id"`
	}
	path := "/users/" + userID + "/connections"
	if err := a.do(ctx, client, http.MethodPost, path, login, &out); err != nil {
		return "", err
	}
	if out.ID == "" {
		return "", fmt.Errorf("POST %s: no job id in the answer", path)
	}
	return out.ID, nil
}

// job is Basiq's job object.
type job struct {
	ID    string `json:"id"`
	Steps []struct {
		Title  string `json:"title"`
		Status string `json:"status"`
		Result *struct {
			Code  string `json:"code"`
			Title string `json:"title"`
		} `json:"result"`
	} `json:"steps"`
}

// state reports whether every step succeeded, or the first failed step.
func (j job) state() (done bool, err error) {
	if len(j.Steps) == 0 {
		return false, nil
	}
	done = true
	for _, s := range j.Steps {
		switch s.Status {
		case "failed":
			e := &jobFailedError{JobID: j.ID, Step: clean(s.Title)}
			if s.Result != nil {
				e.Code, e.Title = clean(s.Result.Code), clean(s.Result.Title)
			}
			return false, e
		case "success":
		default:
			done = false
		}
	}
	return done, nil
}

func (j job) summary() string {
	var parts []string
	for _, s := range j.Steps {
		parts = append(parts, clean(s.Title)+" "+clean(s.Status))
	}
	return strings.Join(parts, ", ")
}

// backoff waits d, then doubles d up to max; it returns the context's
// error if ctx ends first.
func backoff(ctx context.Context, d *time.Duration, max time.Duration) error {
	t := time.NewTimer(*d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ended(ctx, nil)
	case <-t.C:
	}
	*d = min(2**d, max)
	return nil
}

// pollJob polls GET /jobs/{id} with backoff until every step has
// succeeded, a step fails, or ctx ends. It reports each answer to seen and
// returns the number of polls.
func (a *apiClient) pollJob(ctx context.Context, id string, first time.Duration, seen func(int, job)) (int, error) {
	wait := first
	for n := 1; ; n++ {
		var j job
		if err := a.do(ctx, a.server, http.MethodGet, "/jobs/"+id, nil, &j); err != nil {
			if ctx.Err() != nil {
				return n, ended(ctx, err)
			}
			return n, err
		}
		seen(n, j)
		done, err := j.state()
		if err != nil || done {
			return n, err
		}
		if err := backoff(ctx, &wait, first*maxPollFactor); err != nil {
			return n, err
		}
	}
}

// jobIDs lists the ids of the user's jobs (GET /users/{id}/jobs).
func (a *apiClient) jobIDs(ctx context.Context, userID string) ([]string, error) {
	var list struct {
		Data []job `json:"data"`
	}
	if err := a.do(ctx, a.server, http.MethodGet, "/users/"+userID+"/jobs", nil, &list); err != nil {
		return nil, err
	}
	var ids []string
	for _, j := range list.Data {
		if j.ID != "" {
			ids = append(ids, j.ID)
		}
	}
	return ids, nil
}

// awaitJob polls GET /users/{id}/jobs with backoff until the user has a
// job that is not in known, as once they finish the Consent UI, and
// returns its id.
func (a *apiClient) awaitJob(ctx context.Context, userID string, known []string, first time.Duration) (string, error) {
	wait := first
	for {
		ids, err := a.jobIDs(ctx, userID)
		if err != nil {
			if ctx.Err() != nil {
				return "", ended(ctx, err)
			}
			return "", err
		}
		for _, id := range ids {
			if !slices.Contains(known, id) {
				return id, nil
			}
		}
		if err := backoff(ctx, &wait, first*maxPollFactor); err != nil {
			return "", err
		}
	}
}

// account is the part of Basiq's account object the quick start shows.
type account struct {
	ID             string `json:"id"`
	Name           string `json:"name"`
	AccountNo      string `json:"accountNo"`
	Balance        string `json:"balance"`
	AvailableFunds string `json:"availableFunds"`
	Currency       string `json:"currency"`
}

func (a *apiClient) accounts(ctx context.Context, userID string) ([]account, error) {
	var list struct {
		Data []account `json:"data"`
	}
	if err := a.do(ctx, a.server, http.MethodGet, "/users/"+userID+"/accounts", nil, &list); err != nil {
		return nil, err
	}
	for i := range list.Data {
		a := &list.Data[i]
		a.Name, a.AccountNo, a.Balance, a.AvailableFunds, a.Currency =
			clean(a.Name), clean(a.AccountNo), clean(a.Balance), clean(a.AvailableFunds), clean(a.Currency)
	}
	return list.Data, nil
}
