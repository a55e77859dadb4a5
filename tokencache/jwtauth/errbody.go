package jwtauth

import (
	"bytes"
	"encoding/json"

	"github.com/tokencache/tokencache/internal/httpx"
)

// maxMessageLen bounds the issuer message kept in an *Error.
const maxMessageLen = 200

// errorDetails pulls a code and a message out of an error body. It knows the
// common JSON shapes — {"code","message"}, RFC 6749's {"error",
// "error_description"}, {"error":{…}}, and lists under "errors" or "data"
// (Basiq's {"data":[{"code","title","detail"}]}) — and otherwise takes the
// first line of a text body. HTML pages yield nothing.
func errorDetails(body []byte) (code, msg string) {
	b := bytes.TrimSpace(body)
	if len(b) == 0 {
		return "", ""
	}
	if b[0] == '{' {
		var m map[string]json.RawMessage
		if err := decodeObject(b, &m); err != nil {
			return "", ""
		}
		return detailsFromObject(m, 0)
	}
	if b[0] == '<' || b[0] == '[' {
		return "", ""
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	return "", string(line)
}

func detailsFromObject(m map[string]json.RawMessage, depth int) (code, msg string) {
	for _, k := range []string{"code", "error_code", "errorCode", "error"} {
		if c := codeValue(m[k]); c != "" {
			code = c
			break
		}
	}
	for _, k := range []string{"message", "error_description", "detail", "title", "errorMessage", "msg"} {
		if s := stringValue(m[k]); s != "" {
			msg = s
			break
		}
	}
	if (code != "" && msg != "") || depth > 2 {
		return code, msg
	}
	// Nested shapes: {"error":{…}}, {"errors":[{…}]}, {"data":[{…}]}.
	for _, k := range []string{"error", "errors", "data"} {
		v := bytes.TrimSpace(m[k])
		if len(v) == 0 {
			continue
		}
		var inner map[string]json.RawMessage
		switch v[0] {
		case '{':
			_ = json.Unmarshal(v, &inner)
		case '[':
			var list []json.RawMessage
			if json.Unmarshal(v, &list) == nil && len(list) > 0 {
				_ = json.Unmarshal(list[0], &inner)
			}
		}
		if inner == nil {
			continue
		}
		c, s := detailsFromObject(inner, depth+1)
		if code == "" {
			code = c
		}
		if msg == "" {
			msg = s
		}
		break
	}
	return code, msg
}

// codeValue accepts a short identifier-like string or an integer as a code.
func codeValue(raw json.RawMessage) string {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return ""
	}
	var s string
	if raw[0] == '"' {
		if json.Unmarshal(raw, &s) != nil {
			return ""
		}
	} else if raw[0] >= '0' && raw[0] <= '9' {
		s = string(raw)
	}
	if s == "" || len(s) > 64 {
		return ""
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.') {
			return ""
		}
	}
	return s
}

func stringValue(raw json.RawMessage) string {
	var s string
	if len(raw) == 0 || raw[0] != '"' || json.Unmarshal(raw, &s) != nil {
		return ""
	}
	return s
}

// scrub makes an issuer message safe to put in an error (httpx.Scrub).
func scrub(msg string, secrets ...string) string {
	return httpx.Scrub(msg, maxMessageLen, secrets...)
}
