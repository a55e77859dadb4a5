package localapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// Paths of the token endpoint.
const (
	TokenPath      = "/v1/token"
	InvalidatePath = "/v1/token/invalidate"
)

// tokenTimeout bounds one token request: a refresh the fleet shares goes
// on past it, this client gets its 503 and may ask again.
const tokenTimeout = 30 * time.Second

// maxInvalidateBody bounds the body of an invalidation.
const maxInvalidateBody = 16 << 10

// TokenResponse is the answer of GET /v1/token.
type TokenResponse struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	ExpiresAt   string `json:"expires_at"` // RFC 3339, the issuer's expiry
	ExpiresIn   int64  `json:"expires_in"` // whole seconds left
}

// InvalidateRequest is the body of POST /v1/token/invalidate: the
// fingerprint of the token that got a 401, or the token itself.
type InvalidateRequest struct {
	Fingerprint string `json:"fingerprint,omitempty"`
	AccessToken string `json:"access_token,omitempty"`
}

// InvalidateResponse says whether the token was deleted. False means it
// had been replaced already (by another client's report, or a refresh),
// or, with Held, that the rejection is taken as the API's fault: the
// token is kept, and reporting it again before RetryAfter (whole seconds)
// changes nothing.
type InvalidateResponse struct {
	Invalidated bool  `json:"invalidated"`
	Held        bool  `json:"held,omitempty"`
	RetryAfter  int64 `json:"retry_after,omitempty"`
}

// ErrorResponse is the body of every error answer: a code and one line
// naming the cause, never a secret.
type ErrorResponse struct {
	Error  string `json:"error"`
	Reason string `json:"reason"`
}

// NewTokenHandler returns the token endpoint over src: GET /v1/token
// (?user_id= for a user's client token) and POST /v1/token/invalidate.
// Put it behind Guard. m may be nil.
func NewTokenHandler(src Source, m *Metrics, now func() time.Time) http.Handler {
	if now == nil {
		now = time.Now
	}
	h := &tokenHandler{src: src, m: m, now: now}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+TokenPath, h.token)
	mux.HandleFunc("POST "+InvalidatePath, h.invalidate)
	return mux
}

type tokenHandler struct {
	src Source
	m   *Metrics
	now func() time.Time
}

// userParam is the request's user_id: "" (the server token) only when
// the query names no user at all. The query is parsed strictly, since the
// server token must never answer a request that named a user: a query
// that does not parse, a parameter other than user_id (User_Id included),
// a user_id given twice or given empty are all errors (answered 400).
func userParam(r *http.Request) (string, error) {
	raw := r.URL.RawQuery
	if raw == "" {
		return "", nil
	}
	q, err := url.ParseQuery(raw)
	if err != nil {
		return "", fmt.Errorf("%w: the query does not parse: want ?user_id=ID", ErrBadRequest)
	}
	for k := range q {
		if k != "user_id" {
			return "", fmt.Errorf("%w: unknown query parameter %q: the only one is user_id", ErrBadRequest, truncateParam(k))
		}
	}
	vs := q["user_id"]
	switch {
	case len(vs) == 0:
		// A query of "&" or ";"-free noise such as "?&": no parameter.
		return "", fmt.Errorf("%w: want ?user_id=ID or no query", ErrBadRequest)
	case len(vs) > 1:
		return "", fmt.Errorf("%w: user_id is given %d times, want once", ErrBadRequest, len(vs))
	case vs[0] == "":
		return "", fmt.Errorf("%w: user_id is empty", ErrBadRequest)
	}
	return vs[0], nil
}

// truncateParam bounds a parameter name echoed in an error.
func truncateParam(k string) string {
	if len(k) > 40 {
		return k[:40] + "…"
	}
	return k
}

func (h *tokenHandler) token(w http.ResponseWriter, r *http.Request) {
	user, err := userParam(r)
	if err != nil {
		h.m.tokenServed(true, TierNone, ResultBadRequest)
		writeError(w, http.StatusBadRequest, h.src.Explain(err))
		return
	}
	// A user's first token (none in memory here) may cost an issuer
	// call: it is refused once the client's costly requests are spent,
	// and charged to them when it did cost one.
	costly := user != "" && !h.src.Cached(user)
	if costly && !CostlyLeft(r) {
		h.m.tokenServed(true, TierNone, ResultRateLimited)
		tooManyCostly(w)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), tokenTimeout)
	defer cancel()
	tok, tier, err := h.src.Token(ctx, user)
	if costly && tier == TierIssuer {
		Charge(r)
	}
	if err != nil {
		if r.Context().Err() != nil {
			return // the client left
		}
		code, result := h.failure(err)
		h.m.tokenServed(user != "", tier, result)
		writeError(w, code, h.src.Explain(err))
		return
	}
	typ := tok.TokenType
	if typ == "" {
		typ = "Bearer"
	}
	left := tok.Expiry.Sub(h.now())
	h.m.tokenServed(user != "", tier, ResultOK)
	writeToken(w, TokenResponse{
		AccessToken: tok.AccessToken,
		TokenType:   typ,
		ExpiresIn:   int64(math.Max(0, math.Floor(left.Seconds()))),
	}, tok.Expiry)
}

// writeToken answers 200 with resp (ExpiresAt from expiry), encoded by
// hand into one buffer: the same bytes as writeJSON, without reflection,
// for the endpoint every API call of a client goes through. A string that
// needs escaping goes through encoding/json.
func writeToken(w http.ResponseWriter, resp TokenResponse, expiry time.Time) {
	if !plainJSON(resp.AccessToken) || !plainJSON(resp.TokenType) {
		resp.ExpiresAt = expiry.UTC().Format(time.RFC3339)
		writeJSON(w, http.StatusOK, resp)
		return
	}
	b := make([]byte, 0, 96+len(resp.AccessToken))
	b = append(b, `{"access_token":"`...)
	b = append(b, resp.AccessToken...)
	b = append(b, `","token_type":"`...)
	b = append(b, resp.TokenType...)
	b = append(b, `","expires_at":"`...)
	b = expiry.UTC().AppendFormat(b, time.RFC3339)
	b = append(b, `","expires_in":`...)
	b = strconv.AppendInt(b, resp.ExpiresIn, 10)
	b = append(b, "}\n"...)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b)
}

// plainJSON reports whether s is printable ASCII that encoding/json writes
// as is: no quote, backslash or HTML character (which it escapes).
func plainJSON(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
}

func (h *tokenHandler) invalidate(w http.ResponseWriter, r *http.Request) {
	user, err := userParam(r)
	if err != nil {
		h.m.invalidated("client", "bad_request")
		writeError(w, http.StatusBadRequest, h.src.Explain(err))
		return
	}
	var req InvalidateRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxInvalidateBody))
	dec.DisallowUnknownFields()
	err = dec.Decode(&req)
	if err == nil {
		if err = dec.Decode(&struct{}{}); err == io.EOF {
			err = nil
		} else if err == nil {
			err = errors.New("more than one JSON value")
		}
	}
	if bodyTimedOut(err) {
		h.m.invalidated("client", "timeout")
		writeTimeout(w)
		return
	}
	if err != nil {
		h.m.invalidated("client", "bad_request")
		writeError(w, http.StatusBadRequest, `want a JSON object {"fingerprint": "..."} or {"access_token": "..."}`)
		return
	}
	fp := req.Fingerprint
	if req.AccessToken != "" {
		if fp != "" && fp != h.src.Fingerprint(req.AccessToken) {
			h.m.invalidated("client", "bad_request")
			writeError(w, http.StatusBadRequest, "the fingerprint is not the access_token's")
			return
		}
		fp = h.src.Fingerprint(req.AccessToken)
	}
	if fp == "" {
		// An empty fingerprint would delete whatever is cached: a client
		// must name the token that failed.
		h.m.invalidated("client", "bad_request")
		writeError(w, http.StatusBadRequest, "name the token that got a 401: fingerprint or access_token")
		return
	}
	// An invalidation costs an issuer call: refused once the client's
	// costly requests are spent, and charged to them when it happened (a
	// report held or stale costs nothing, not even for a user with no
	// token cached: nothing is fetched to judge it).
	if !CostlyLeft(r) {
		h.m.invalidated("client", ResultRateLimited)
		tooManyCostly(w)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), tokenTimeout)
	defer cancel()
	rep, err := h.src.Invalidate(ctx, user, fp)
	if err != nil {
		code, _ := h.failure(err)
		h.m.invalidated("client", "error")
		writeError(w, code, h.src.Explain(err))
		return
	}
	if rep.Invalidated {
		Charge(r)
	}
	result := "kept"
	switch {
	case rep.Invalidated:
		result = "deleted"
	case rep.Held:
		result = "held"
	}
	h.m.invalidated("client", result)
	resp := InvalidateResponse{Invalidated: rep.Invalidated, Held: rep.Held}
	if rep.Held {
		resp.RetryAfter = int64(math.Ceil(rep.HeldFor.Seconds()))
	}
	writeJSON(w, http.StatusOK, resp)
}

// tooManyCostly answers 429 a request refused by the client's costly limit.
func tooManyCostly(w http.ResponseWriter) {
	w.Header().Set("Retry-After", "2")
	writeError(w, http.StatusTooManyRequests, "too many requests that may cost an issuer call (invalidations, users' first tokens) from this client")
}

// failure maps a Source error to a status and a metrics result.
func (h *tokenHandler) failure(err error) (int, string) {
	if errors.Is(err, ErrBadRequest) {
		return http.StatusBadRequest, ResultBadRequest
	}
	return http.StatusServiceUnavailable, ResultUnavailable
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, reason string) {
	name := "unavailable"
	switch code {
	case http.StatusBadRequest:
		name = "bad_request"
	case http.StatusForbidden:
		name = "forbidden"
	case http.StatusMethodNotAllowed:
		name = "method_not_allowed"
	case http.StatusBadGateway:
		name = "bad_gateway"
	case http.StatusTooManyRequests:
		name = "rate_limited"
	case http.StatusRequestTimeout:
		name = "timeout"
	}
	writeJSON(w, code, ErrorResponse{Error: name, Reason: reason})
}
