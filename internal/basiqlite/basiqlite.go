// Package basiqlite is an interim, minimal Basiq token fetcher (POST
// {base}/token with the API key as the Basic credential), used by the CLI
// and the examples until tokencache/basiq (branch issuers) is merged; it is
// deleted then.
package basiqlite

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/tokencache/tokencache/tokencache"
)

// Fetcher fetches Basiq tokens. It implements tokencache.Fetcher and
// tokencache.Identifier.
type Fetcher struct {
	hc            *http.Client
	base, key     string
	scope, userID string
}

// New returns a Fetcher for the API key at base (e.g.
// https://au-api.basiq.io) with scope SERVER_ACCESS, or CLIENT_ACCESS and
// a userID. hc nil means a client with a 15s timeout.
func New(hc *http.Client, base, key, scope, userID string) *Fetcher {
	if hc == nil {
		hc = &http.Client{Timeout: 15 * time.Second}
	}
	return &Fetcher{hc: hc, base: strings.TrimRight(base, "/"), key: key, scope: scope, userID: userID}
}

// Identity names the credential, scope and user.
func (f *Fetcher) Identity() string {
	return "basiq\x00" + f.base + "\x00" + f.key + "\x00" + f.scope + "\x00" + f.userID
}

// Fetch asks the issuer for a token.
func (f *Fetcher) Fetch(ctx context.Context) (tokencache.Token, error) {
	form := url.Values{"scope": {f.scope}}
	if f.userID != "" {
		form.Set("userId", f.userID)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, f.base+"/token", strings.NewReader(form.Encode()))
	if err != nil {
		return tokencache.Token{}, &Error{Code: "invalid-issuer-url", Detail: "cannot build the request"}
	}
	auth := f.key
	if _, err := base64.StdEncoding.DecodeString(auth); err != nil {
		auth = base64.StdEncoding.EncodeToString([]byte(auth))
	}
	req.Header.Set("Authorization", "Basic "+auth)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("basiq-version", "3.0")
	req.Header.Set("Accept", "application/json")
	resp, err := f.hc.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return tokencache.Token{}, &Error{Code: "unreachable", Detail: err.Error(), retry: true}
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return tokencache.Token{}, parseBasiqError(resp.StatusCode, body)
	}
	var ok struct {
		AccessToken string  `json:"access_token"`
		TokenType   string  `json:"token_type"`
		ExpiresIn   float64 `json:"expires_in"`
	}
	if json.Unmarshal(body, &ok) != nil || ok.AccessToken == "" || ok.ExpiresIn <= 0 {
		return tokencache.Token{}, &Error{Code: "bad-response", Detail: "the token answer is not {access_token, expires_in}", retry: true}
	}
	return tokencache.Token{AccessToken: ok.AccessToken, TokenType: ok.TokenType, Expiry: time.Now().Add(time.Duration(ok.ExpiresIn * float64(time.Second)))}, nil
}

// Error is a Basiq error answer, or a failure to get one.
type Error struct {
	Status        int
	Code          string
	Title, Detail string
	Correlation   string
	retry         bool
}

func (e *Error) Error() string {
	s := "basiq"
	if e.Status != 0 {
		s += fmt.Sprintf(" %d", e.Status)
	}
	s += " " + e.Code
	if e.Correlation != "" {
		s += " (correlationId " + e.Correlation + ")"
	}
	if d := firstNonEmpty(e.Detail, e.Title); d != "" {
		s += ": " + d
	}
	return s
}

// Retryable reports whether a later call may succeed (5xx, 429, network).
func (e *Error) Retryable() bool { return e.retry }

// ErrorCode is Basiq's error code.
func (e *Error) ErrorCode() string { return e.Code }

// CorrelationID is Basiq's correlationId of the failed request.
func (e *Error) CorrelationID() string { return e.Correlation }

func parseBasiqError(status int, body []byte) error {
	e := &Error{Status: status, retry: status >= 500 || status == http.StatusTooManyRequests || status == http.StatusRequestTimeout}
	var doc struct {
		CorrelationID string `json:"correlationId"`
		Data          []struct {
			Code, Title, Detail string
		} `json:"data"`
	}
	if json.Unmarshal(body, &doc) == nil {
		e.Correlation = doc.CorrelationID
		if len(doc.Data) > 0 {
			e.Code, e.Title, e.Detail = doc.Data[0].Code, doc.Data[0].Title, doc.Data[0].Detail
		}
	}
	if e.Code == "" {
		e.Code = fmt.Sprintf("http-%d", status)
	}
	if len(e.Detail) > 200 {
		e.Detail = e.Detail[:200]
	}
	return e
}

func firstNonEmpty(s ...string) string {
	for _, x := range s {
		if x != "" {
			return x
		}
	}
	return ""
}
