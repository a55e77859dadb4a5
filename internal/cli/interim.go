package cli

// An interim Basiq fetcher, until the issuers branch (tokencache/basiq) is
// merged; it is replaced by basiq's constructor then.

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

// basiqFetcher fetches Basiq tokens: POST {base}/token.
type basiqFetcher struct {
	hc            *http.Client
	base, key     string
	scope, userID string
}

func newBasiqFetcher(hc *http.Client, base, key, scope, userID string) *basiqFetcher {
	return &basiqFetcher{hc: hc, base: strings.TrimRight(base, "/"), key: key, scope: scope, userID: userID}
}

// Identity names the credential, scope and user.
func (f *basiqFetcher) Identity() string {
	return "basiq\x00" + f.base + "\x00" + f.key + "\x00" + f.scope + "\x00" + f.userID
}

func (f *basiqFetcher) Fetch(ctx context.Context) (tokencache.Token, error) {
	form := url.Values{"scope": {f.scope}}
	if f.userID != "" {
		form.Set("userId", f.userID)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, f.base+"/token", strings.NewReader(form.Encode()))
	if err != nil {
		return tokencache.Token{}, &issuerError{Code: "invalid-issuer-url", Detail: "cannot build the request"}
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
		return tokencache.Token{}, &issuerError{Code: "unreachable", Detail: err.Error(), retry: true}
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
		return tokencache.Token{}, &issuerError{Code: "bad-response", Detail: "the token answer is not {access_token, expires_in}", retry: true}
	}
	return tokencache.Token{AccessToken: ok.AccessToken, TokenType: ok.TokenType, Expiry: time.Now().Add(time.Duration(ok.ExpiresIn * float64(time.Second)))}, nil
}

// issuerError is a Basiq error answer.
type issuerError struct {
	Status        int
	Code          string
	Title, Detail string
	Correlation   string
	retry         bool
}

func (e *issuerError) Error() string {
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

func (e *issuerError) Retryable() bool       { return e.retry }
func (e *issuerError) ErrorCode() string     { return e.Code }
func (e *issuerError) CorrelationID() string { return e.Correlation }

func parseBasiqError(status int, body []byte) error {
	e := &issuerError{Status: status, retry: status >= 500 || status == http.StatusTooManyRequests || status == http.StatusRequestTimeout}
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
