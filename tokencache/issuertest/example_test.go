package issuertest_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/tokencache/tokencache/tokencache/issuertest"
)

// The fake answers POST /token exactly as Basiq's docs describe it.
func Example() {
	srv := issuertest.NewServer()
	defer srv.Close()

	form := url.Values{"scope": {"SERVER_ACCESS"}}
	req, _ := http.NewRequest("POST", srv.URL()+"/token", strings.NewReader(form.Encode()))
	req.Header.Set("Authorization", "Basic "+srv.APIKey()) // verbatim, not re-encoded
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("basiq-version", "3.0")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer resp.Body.Close()
	var tok struct {
		AccessToken string `json:"access_token"`
		TokenType   string `json:"token_type"`
		ExpiresIn   int    `json:"expires_in"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&tok)
	fmt.Println(resp.StatusCode, tok.TokenType, tok.ExpiresIn, srv.Valid(tok.AccessToken))
	fmt.Printf("%+v\n", srv.Stats())
	// Output:
	// 200 Bearer 3600 true
	// {TokenCalls:1 ServerTokenCalls:1 ClientTokenCalls:0 TokensIssued:1 AuthenticateCalls:0 ResourceCalls:0 Unauthorized:0 Rotations:0 Injected:0}
}

// Inject Basiq's errors, then count how often the client under test called.
func ExampleServer_FailNext() {
	srv := issuertest.NewServer()
	defer srv.Close()

	f := issuertest.Fail(429, "")
	f.RetryAfter = "30"
	srv.FailNext(2, f) // two rate-limited answers, then the usual checks again

	for range 3 {
		// No Authorization or basiq-version: once the injected failures
		// are used up, the fake rejects this request as Basiq would.
		resp, err := http.Post(srv.URL()+"/token", "application/x-www-form-urlencoded", strings.NewReader("scope=SERVER_ACCESS"))
		if err != nil {
			fmt.Println(err)
			return
		}
		resp.Body.Close()
		fmt.Printf("%d Retry-After=%q\n", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	st, _ := issuertest.FetchStats(context.Background(), srv.URL()) // works from any process
	fmt.Println("token calls:", st.TokenCalls, "injected:", st.Injected)
	// Output:
	// 429 Retry-After="30"
	// 429 Retry-After="30"
	// 400 Retry-After=""
	// token calls: 3 injected: 2
}

// The rest of Basiq's quick start: a user, a bank connection (what the
// Consent UI does), and its job, one step further at each poll.
func ExampleServer_Connect() {
	srv := issuertest.NewServer()
	defer srv.Close()

	// A SERVER_ACCESS token, then POST /users with it.
	req, _ := http.NewRequest("POST", srv.URL()+"/token", strings.NewReader("scope=SERVER_ACCESS"))
	req.Header.Set("Authorization", "Basic "+srv.APIKey())
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("basiq-version", "3.0")
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	if err := send(req, &tok); err != nil {
		fmt.Println(err)
		return
	}
	req, _ = http.NewRequest("POST", srv.URL()+"/users", strings.NewReader(`{"email":"max@hooli.com"}`))
	req.Header.Set("Authorization", "Bearer "+tok.AccessToken)
	req.Header.Set("Content-Type", "application/json")
	var user struct {
		ID string `json:"id"`
	}
	if err := send(req, &user); err != nil {
		fmt.Println(err)
		return
	}

	var login issuertest.ConnectRequest
	login.LoginID, login.Password, login.Institution.ID = issuertest.SandboxLoginID, issuertest.SandboxPassword, issuertest.SandboxInstitution
	jobID, err := srv.Connect(user.ID, login)
	if err != nil {
		fmt.Println(err)
		return
	}
	for range 4 {
		req, _ = http.NewRequest("GET", srv.URL()+"/jobs/"+jobID, nil)
		req.Header.Set("Authorization", "Bearer "+tok.AccessToken)
		var job struct {
			Steps []struct{ Title, Status string }
		}
		if err := send(req, &job); err != nil {
			fmt.Println(err)
			return
		}
		fmt.Println(job.Steps)
	}
	// Output:
	// [{verify-credentials in-progress} {retrieve-accounts pending} {retrieve-transactions pending}]
	// [{verify-credentials success} {retrieve-accounts in-progress} {retrieve-transactions pending}]
	// [{verify-credentials success} {retrieve-accounts success} {retrieve-transactions in-progress}]
	// [{verify-credentials success} {retrieve-accounts success} {retrieve-transactions success}]
}

// send does req and decodes a 2xx JSON answer into v.
func send(req *http.Request, v any) error {
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s %s: %s", req.Method, req.URL.Path, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}
