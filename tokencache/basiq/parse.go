package basiq

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/tokencache/tokencache/tokencache"
)

// parseError explains why a success body is unusable. msg never holds the
// token or any other value from the body beyond field names and numbers.
type parseError struct {
	code string // CodeInvalidResponse or CodeInvalidToken
	msg  string
	err  error // tokencache.ErrInvalidToken for CodeInvalidToken
}

func invalidResponse(msg string) *parseError {
	return &parseError{code: CodeInvalidResponse, msg: msg}
}

func invalidToken(msg string) *parseError {
	return &parseError{code: CodeInvalidToken, msg: msg, err: tokencache.ErrInvalidToken}
}

// tokenResponse is the body of a successful POST /token:
//
//	{"access_token": "eyJ...", "token_type": "Bearer", "expires_in": 3600}
type tokenResponse struct {
	AccessToken *string         `json:"access_token"`
	TokenType   *string         `json:"token_type"`
	ExpiresIn   json.RawMessage `json:"expires_in"`
}

// parseTokenResponse turns a success body into a Token expiring
// expires_in after sent. It never panics, whatever the body.
func parseTokenResponse(body []byte, sent time.Time) (tokencache.Token, *parseError) {
	var tr tokenResponse
	if err := json.Unmarshal(body, &tr); err != nil {
		return tokencache.Token{}, invalidResponse(describeJSONError(body, err))
	}
	if tr.AccessToken == nil {
		return tokencache.Token{}, invalidToken("no access_token")
	}
	tok := *tr.AccessToken
	if tok == "" {
		return tokencache.Token{}, invalidToken("empty access_token")
	}
	for i := 0; i < len(tok); i++ {
		// A token goes into an Authorization header: visible ASCII only.
		if c := tok[i]; c <= ' ' || c >= 0x7f {
			return tokencache.Token{}, invalidToken("access_token holds whitespace, a control or a non-ASCII character")
		}
	}
	typ := "Bearer"
	if tr.TokenType != nil && *tr.TokenType != "" {
		typ = *tr.TokenType
		if !strings.EqualFold(typ, "bearer") {
			return tokencache.Token{}, invalidToken("token_type " + strconv.Quote(sanitize(typ, 32)) + " is not Bearer")
		}
		typ = "Bearer"
	}
	life, perr := parseExpiresIn(tr.ExpiresIn)
	if perr != nil {
		return tokencache.Token{}, perr
	}
	return tokencache.Token{AccessToken: tok, TokenType: typ, Expiry: sent.Add(life)}, nil
}

// parseExpiresIn accepts a JSON number of seconds, or a string holding
// one (some gateways quote it), fractions allowed; it must be positive
// and at most MaxExpiresIn.
func parseExpiresIn(raw json.RawMessage) (time.Duration, *parseError) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return 0, invalidToken("no expires_in")
	}
	s := string(raw)
	if raw[0] == '"' {
		if err := json.Unmarshal(raw, &s); err != nil {
			return 0, invalidResponse("expires_in is not a number")
		}
		s = strings.TrimSpace(s)
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, invalidResponse("expires_in is not a number")
	}
	if v <= 0 {
		return 0, invalidToken("expires_in " + strconv.FormatFloat(v, 'g', 6, 64) + " is not positive")
	}
	if v > MaxExpiresIn.Seconds() {
		return 0, invalidToken("expires_in " + strconv.FormatFloat(v, 'g', 6, 64) + "s exceeds " + MaxExpiresIn.String())
	}
	d := time.Duration(v * float64(time.Second))
	if d <= 0 {
		return 0, invalidToken("expires_in rounds to zero")
	}
	return d, nil
}

// describeJSONError says what is wrong with a body without quoting it.
func describeJSONError(body []byte, err error) string {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case len(bytes.TrimSpace(body)) == 0:
		return "empty body"
	case errors.As(err, &typ):
		return "field " + sanitize(typ.Field, 64) + " has the wrong type (" + typ.Value + ")"
	case errors.As(err, &syn):
		if !json.Valid(body) && syn.Offset >= int64(len(bytes.TrimRight(body, " \t\r\n"))) {
			return "truncated JSON"
		}
		return "not JSON (syntax error at byte " + strconv.FormatInt(syn.Offset, 10) + ")"
	case strings.Contains(err.Error(), "unexpected end"):
		return "truncated JSON"
	}
	return "not a JSON object"
}

// apiError is the first error object of a Basiq error answer.
type apiError struct {
	CorrelationID string
	Code          string
	Title         string
	Detail        string
	Source        string // "parameter userId", "pointer /scope", ...
}

// errorList is Basiq's error body:
//
//	{"type":"list","correlationId":"ac5ah5i","data":[{"type":"error",
//	 "code":"parameter-not-valid","title":"Parameter value is not valid",
//	 "detail":"...","source":{"parameter":"scope"}}]}
//
// A bare error object ({"type":"error","code":...}) and an OAuth2-style
// {"error":"...","error_description":"..."} are accepted too.
type errorList struct {
	Type          string            `json:"type"`
	CorrelationID json.RawMessage   `json:"correlationId"`
	Data          []json.RawMessage `json:"data"`

	errorObject

	OAuthError       json.RawMessage `json:"error"`
	OAuthDescription json.RawMessage `json:"error_description"`
}

type errorObject struct {
	Code   json.RawMessage `json:"code"`
	Title  json.RawMessage `json:"title"`
	Detail json.RawMessage `json:"detail"`
	Source json.RawMessage `json:"source"`
}

// parseErrorBody extracts Basiq's error from body; ok is false when the
// body holds no recognisable error (HTML, empty, other JSON). Fields are
// raw issuer text: the caller sanitizes them. It never panics.
func parseErrorBody(body []byte) (e apiError, ok bool) {
	var l errorList
	if err := json.Unmarshal(body, &l); err != nil {
		return apiError{}, false
	}
	e.CorrelationID = jsonText(l.CorrelationID)
	obj := l.errorObject
	for _, raw := range l.Data {
		var o errorObject
		if json.Unmarshal(raw, &o) == nil && (len(o.Code) > 0 || len(o.Title) > 0) {
			obj = o
			break
		}
	}
	e.Code = jsonText(obj.Code)
	e.Title = jsonText(obj.Title)
	e.Detail = jsonText(obj.Detail)
	e.Source = sourceText(obj.Source)
	if e.Code == "" && e.Title == "" {
		e.Code = jsonText(l.OAuthError)
		e.Detail = jsonText(l.OAuthDescription)
	}
	if e.Code == "" && e.Title == "" && e.Detail == "" && e.CorrelationID == "" {
		return apiError{}, false
	}
	return e, true
}

// jsonText renders a JSON string or number as text; anything else is "".
func jsonText(raw json.RawMessage) string {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return ""
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var n json.Number
	if json.Unmarshal(raw, &n) == nil {
		return n.String()
	}
	return ""
}

// sourceText renders Basiq's source object ({"parameter":"userId"} or
// {"pointer":"/scope"}) as "parameter userId", or a bare string as is.
func sourceText(raw json.RawMessage) string {
	if s := jsonText(raw); s != "" {
		return s
	}
	var m map[string]json.RawMessage
	if json.Unmarshal(raw, &m) != nil {
		return ""
	}
	for _, k := range []string{"parameter", "pointer", "header"} {
		if v := jsonText(m[k]); v != "" {
			return k + " " + v
		}
	}
	return ""
}
