package issuertest

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Failure is an error answer injected into issuer calls with FailNext or
// FailAlways. Build one with Fail and adjust fields as needed.
type Failure struct {
	Status int    // HTTP status, e.g. 500
	Code   string // Basiq error code, e.g. "internal-server-error"
	Title  string
	Detail string
	// Source, if set, is reported as {"parameter": Source}.
	Source string
	// RetryAfter, if set, is sent verbatim as the Retry-After header:
	// delay-seconds ("30") or an HTTP-date.
	RetryAfter string
	// Body, if set, is sent verbatim instead of a Basiq error object
	// (e.g. a proxy's HTML error page), with ContentType (default
	// "text/html; charset=utf-8").
	Body        string
	ContentType string
}

// basiqError returns the title and detail Basiq documents for code, from
// the shared fixtures the fake embeds (served/error_<code>.json).
func basiqError(code string) (title, detail string, ok bool) {
	e, ok := errorCatalogue()[code]
	return e.Title, e.Detail, ok
}

// defaultCode names the Basiq code for a status when Fail gets none.
func defaultCode(status int) string {
	switch status {
	case http.StatusBadRequest:
		return "invalid-request"
	case http.StatusUnauthorized:
		return "invalid-client"
	case http.StatusForbidden:
		return "access-denied"
	case http.StatusNotFound:
		return "resource-not-found"
	case http.StatusTooManyRequests:
		return "too-many-requests"
	case http.StatusInternalServerError:
		return "internal-server-error"
	case http.StatusServiceUnavailable:
		return "service-unavailable"
	}
	return "http-" + strconv.Itoa(status)
}

// Fail returns the Failure Basiq would send for status and code, with
// its documented title and detail. An empty code picks the usual one for
// the status (400 invalid-request, 403 access-denied, 404
// resource-not-found, 429 too-many-requests, 500 internal-server-error,
// ...). For example Fail(400, "invalid-grant"), Fail(403, ""), or
//
//	f := issuertest.Fail(429, "")
//	f.RetryAfter = "30"
func Fail(status int, code string) Failure {
	if code == "" {
		code = defaultCode(status)
	}
	f := Failure{Status: status, Code: code}
	if title, detail, ok := basiqError(code); ok {
		f.Title, f.Detail = title, detail
	} else {
		f.Title = http.StatusText(status)
	}
	if status == http.StatusNotFound && code == "parameter-not-valid" {
		// Basiq's answer once a partner account is deleted.
		if e, ok := errorCatalogue()["not-found"]; ok {
			f.Title, f.Detail = e.Title, e.Detail
		}
	}
	return f
}

func (f Failure) write(w http.ResponseWriter) {
	status := f.Status
	if status == 0 {
		status = http.StatusInternalServerError
	}
	if f.RetryAfter != "" {
		w.Header().Set("Retry-After", f.RetryAfter)
	}
	if f.Body != "" {
		ct := f.ContentType
		if ct == "" {
			ct = "text/html; charset=utf-8"
		}
		w.Header().Set("Content-Type", ct)
		w.WriteHeader(status)
		_, _ = w.Write([]byte(f.Body))
		return
	}
	var src map[string]string
	if f.Source != "" {
		src = map[string]string{"parameter": f.Source}
	}
	writeError(w, status, f.Code, f.Title, f.Detail, src)
}

// Garbage is an unusable success answer injected into issuer calls with
// GarbleNext or GarbleAlways. Each is sent with status 200.
type Garbage int

// The kinds of garbage.
const (
	// GarbageNotJSON is an HTML page, as from a captive portal or proxy.
	GarbageNotJSON Garbage = iota + 1
	// GarbageTruncated is a token answer cut off halfway.
	GarbageTruncated
	// GarbageEmptyToken is well-formed JSON with an empty token.
	GarbageEmptyToken
	// GarbageZeroExpiry is a token answer with expires_in 0 (for
	// /authenticate: a JWT whose exp has passed).
	GarbageZeroExpiry
	// GarbageHuge is a well-formed token answer padded past 1 MiB.
	GarbageHuge
)

// String names the garbage kind.
func (g Garbage) String() string {
	switch g {
	case GarbageNotJSON:
		return "not-json"
	case GarbageTruncated:
		return "truncated"
	case GarbageEmptyToken:
		return "empty-token"
	case GarbageZeroExpiry:
		return "zero-expiry"
	case GarbageHuge:
		return "huge"
	}
	return "garbage(" + strconv.Itoa(int(g)) + ")"
}

// hugePadding is the size of GarbageHuge's padding: well past any sane
// client's body limit.
const hugePadding = 1<<20 + 1

func (s *Server) garbleToken(w http.ResponseWriter, g Garbage) {
	tok := randomToken()
	switch g {
	case GarbageNotJSON:
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(proxyErrorPage())
	case GarbageTruncated:
		body, _ := json.Marshal(tokenBody{AccessToken: tok, TokenType: "Bearer", ExpiresIn: json.RawMessage("3600")})
		writeRaw(w, "application/json", body[:len(body)/2])
	case GarbageEmptyToken:
		writeRaw(w, "application/json", []byte(`{"access_token":"","token_type":"Bearer","expires_in":3600}`))
	case GarbageZeroExpiry:
		writeRaw(w, "application/json", []byte(`{"access_token":"`+tok+`","token_type":"Bearer","expires_in":0}`))
	default: // GarbageHuge and unknown kinds
		writeRaw(w, "application/json", []byte(`{"access_token":"`+tok+`","token_type":"Bearer","expires_in":3600,"padding":"`+
			strings.Repeat("x", hugePadding)+`"}`))
	}
}

func (s *Server) garbleAuthenticate(w http.ResponseWriter, g Garbage) {
	switch g {
	case GarbageNotJSON:
		// An HTML page where a JWT or JSON was expected.
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(proxyErrorPage())
	case GarbageTruncated:
		jwt, _ := SignHS256(s.ClientSecret(), map[string]any{"exp": s.now().Add(time.Hour).Unix()})
		writeRaw(w, "application/json", []byte(`{"token":"`+jwt[:len(jwt)/2]))
	case GarbageEmptyToken:
		writeRaw(w, "application/json", []byte(`{"token":""}`))
	case GarbageZeroExpiry:
		jwt, _ := SignHS256(s.ClientSecret(), map[string]any{"exp": s.now().Add(-time.Minute).Unix()})
		writeRaw(w, "text/plain; charset=utf-8", []byte(jwt))
	default:
		writeRaw(w, "text/plain; charset=utf-8", []byte(strings.Repeat("x", hugePadding)))
	}
}

// errorBody is Basiq's error answer.
type errorBody struct {
	Type          string        `json:"type"`
	CorrelationID string        `json:"correlationId"`
	Data          []errorObject `json:"data"`
}

type errorObject struct {
	Type   string            `json:"type"`
	Code   string            `json:"code"`
	Title  string            `json:"title"`
	Detail string            `json:"detail,omitempty"`
	Source map[string]string `json:"source,omitempty"`
}

// writeError answers with a Basiq error object and a fresh correlationId.
func writeError(w http.ResponseWriter, status int, code, title, detail string, source map[string]string) {
	writeJSON(w, status, errorBody{
		Type:          "list",
		CorrelationID: randomHex(6),
		Data:          []errorObject{{Type: "error", Code: code, Title: title, Detail: detail, Source: source}},
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "issuertest: encode answer", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func writeRaw(w http.ResponseWriter, contentType string, body []byte) {
	w.Header().Set("Content-Type", contentType)
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
}

func hs256(secret, signing string) []byte {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(signing))
	return m.Sum(nil)
}
