package localapi

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokencache/tokencache/internal/securitytest"
	"github.com/tokencache/tokencache/internal/testutil"
	"github.com/tokencache/tokencache/tokencache/issuertest"
)

func TestTwentyClientsAcrossDaemonsGetOneTokenFromOneIssuerCall(t *testing.T) {
	f := newFleet(t, issuertest.WithLatency(50*time.Millisecond))
	servers := []*server{tokenServer(t, f.source()), tokenServer(t, f.source()), tokenServer(t, f.source())}
	const clients = 20
	got := make([]TokenResponse, clients)
	var wg sync.WaitGroup
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i] = servers[i%len(servers)].token(t, "")
		}()
	}
	wg.Wait()
	for i, tr := range got {
		if tr.AccessToken == "" || tr.AccessToken != got[0].AccessToken {
			t.Fatalf("client %d got another token than client 0", i)
		}
		if tr.TokenType != "Bearer" || tr.ExpiresIn <= 0 || tr.ExpiresIn > 3600 {
			t.Errorf("client %d: token_type %q expires_in %d", i, tr.TokenType, tr.ExpiresIn)
		}
		if at, err := time.Parse(time.RFC3339, tr.ExpiresAt); err != nil || at.Before(time.Now()) {
			t.Errorf("client %d: expires_at %q: %v", i, tr.ExpiresAt, err)
		}
	}
	if n := f.issuer.Stats().TokenCalls; n != 1 {
		t.Errorf("issuer calls: got %d, want 1", n)
	}
	if !f.issuer.Valid(got[0].AccessToken) {
		t.Error("the token served is not one the issuer accepts")
	}
	var scan securitytest.Scanner
	scan.Add(t, "token", got[0].AccessToken)
	var ok, issuer float64
	for i, s := range servers {
		ok += counter(t, s.reg, "tokencache_local_tokens_served_total", "token", "server", "result", ResultOK)
		issuer += counter(t, s.reg, "tokencache_local_tokens_served_total", "tier", TierIssuer)
		lint(t, s.reg)
		mfs, _ := s.reg.Gather()
		for _, mf := range mfs {
			scan.Check(t, fmt.Sprintf("server %d metric %s", i, mf.GetName()), mf.String())
		}
	}
	if ok != clients || issuer < 1 {
		t.Errorf("metrics: %v tokens served ok (want %d), %v from the issuer tier (want at least 1)", ok, clients, issuer)
	}
}

func TestReported401RefreshesOnceAndEveryDaemonServesTheNewToken(t *testing.T) {
	f := newFleet(t)
	servers := []*server{tokenServer(t, f.source()), tokenServer(t, f.source()), tokenServer(t, f.source())}
	old := servers[0].token(t, "").AccessToken
	for _, s := range servers[1:] {
		if s.token(t, "").AccessToken != old {
			t.Fatal("daemons disagree before the revocation")
		}
	}
	f.issuer.RevokeAll()

	// One client reports the token by fingerprint, another by value, a
	// third reports it late: one deletion between them.
	var fp string
	{
		src := f.source()
		fp = src.Fingerprint(old)
	}
	reports := []string{`{"fingerprint":"` + fp + `"}`, `{"access_token":"` + old + `"}`}
	deleted := 0
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i, body := range reports {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, resp := servers[i].do(t, http.MethodPost, InvalidatePath, body)
			var ir InvalidateResponse
			if code != http.StatusOK || json.Unmarshal([]byte(resp), &ir) != nil {
				t.Errorf("invalidate: %d %s", code, resp)
				return
			}
			if ir.Invalidated {
				mu.Lock()
				deleted++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if deleted != 1 {
		t.Errorf("deletions: got %d, want 1 (compare-and-delete)", deleted)
	}
	for i, s := range servers {
		testutil.Eventually(t, "daemon to serve the new token", func() bool { return s.token(t, "").AccessToken != old })
		if tok := s.token(t, "").AccessToken; !f.issuer.Valid(tok) {
			t.Errorf("daemon %d serves a token the issuer rejects", i)
		}
	}
	fresh := servers[0].token(t, "").AccessToken
	for i, s := range servers {
		if s.token(t, "").AccessToken != fresh {
			t.Errorf("daemon %d serves another new token", i)
		}
	}
	code, resp := servers[2].do(t, http.MethodPost, InvalidatePath, reports[0])
	if code != http.StatusOK || !strings.Contains(resp, `"invalidated":false`) {
		t.Errorf("a late report of the old token: %d %s, want invalidated false", code, resp)
	}
	if n := f.issuer.Stats().TokenCalls; n != 2 {
		t.Errorf("issuer calls: got %d, want 2 (one before, one after the 401)", n)
	}
}

func TestClientTokensPerUserAcrossDaemons(t *testing.T) {
	f := newFleet(t)
	a, b := tokenServer(t, f.source()), tokenServer(t, f.source())
	ta, tb := a.token(t, "u-1"), b.token(t, "u-1")
	if ta.AccessToken != tb.AccessToken {
		t.Error("two daemons serve user u-1 different tokens")
	}
	if ta.AccessToken == a.token(t, "").AccessToken {
		t.Error("the client token is the server token")
	}
	if st := f.issuer.Stats(); st.ClientTokenCalls != 1 || st.ServerTokenCalls != 1 {
		t.Errorf("issuer calls: client %d, server %d, want 1 and 1", st.ClientTokenCalls, st.ServerTokenCalls)
	}
	code, body := a.do(t, http.MethodPost, InvalidatePath+"?user_id=u-1", `{"access_token":"`+ta.AccessToken+`"}`)
	if code != http.StatusOK || !strings.Contains(body, `"invalidated":true`) {
		t.Errorf("invalidate u-1: %d %s", code, body)
	}
	testutil.Eventually(t, "a new client token", func() bool { return b.token(t, "u-1").AccessToken != ta.AccessToken })
	if st := f.issuer.Stats(); st.ClientTokenCalls != 2 {
		t.Errorf("client token calls: %d, want 2", st.ClientTokenCalls)
	}
}

func TestBadRequestsAre400WithAReason(t *testing.T) {
	f := newFleet(t)
	s := tokenServer(t, f.source())
	for _, c := range []struct{ method, path, body, want string }{
		{http.MethodGet, TokenPath + "?user_id=a%7Bb", "", "user_id"},
		{http.MethodPost, InvalidatePath, `{}`, "fingerprint or access_token"},
		{http.MethodPost, InvalidatePath, `not json`, "JSON"},
		{http.MethodPost, InvalidatePath, `{"fingerprint":"x","other":1}`, "JSON"},
		{http.MethodPost, InvalidatePath, `{"fingerprint":"sha256:00","access_token":"abc"}`, "not the access_token's"},
	} {
		code, body := s.do(t, c.method, c.path, c.body)
		if code != http.StatusBadRequest || !strings.Contains(body, c.want) {
			t.Errorf("%s %s %s: %d %s, want 400 naming %q", c.method, c.path, c.body, code, body, c.want)
		}
	}
	if code, _ := s.do(t, http.MethodDelete, TokenPath, ""); code != http.StatusMethodNotAllowed {
		t.Errorf("DELETE %s: %d, want 405", TokenPath, code)
	}
	if n := f.issuer.Stats().TokenCalls; n != 0 {
		t.Errorf("issuer calls: %d, want 0", n)
	}
}

func TestNoTokenIs503WithTheReason(t *testing.T) {
	f := newFleet(t)
	f.issuer.FailAlways(issuertest.Fail(http.StatusForbidden, "access-denied"))
	s := tokenServer(t, f.source())
	code, body := s.do(t, http.MethodGet, TokenPath, "")
	if code != http.StatusServiceUnavailable {
		t.Fatalf("GET %s: %d %s, want 503", TokenPath, code, body)
	}
	var er ErrorResponse
	if err := json.Unmarshal([]byte(body), &er); err != nil || er.Error != "unavailable" || !strings.Contains(er.Reason, "access-denied") {
		t.Errorf("503 body %s: want error unavailable and a reason naming access-denied", body)
	}
	if strings.Contains(body, testAPIKey) {
		t.Error("the 503 body holds the API key")
	}
}

func TestEveryAnswerIsNoStore(t *testing.T) {
	f := newFleet(t)
	s := tokenServer(t, f.source())
	for _, c := range []struct{ method, path, secret string }{
		{http.MethodGet, TokenPath, testSecret},
		{http.MethodPost, InvalidatePath, testSecret},
		{http.MethodGet, TokenPath, "wrong-secret-0123456789"},
		{http.MethodGet, "/nope", testSecret},
	} {
		req, _ := http.NewRequest(c.method, s.base+c.path, strings.NewReader("{}"))
		req.Header.Set("Authorization", "Bearer "+c.secret)
		resp, err := s.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got := resp.Header.Values("Cache-Control"); len(got) != 1 || got[0] != "no-store" {
			t.Errorf("%s %s (%d): Cache-Control %q, want no-store", c.method, c.path, resp.StatusCode, got)
		}
	}
}
