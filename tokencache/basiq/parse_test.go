package basiq

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/tokencache/tokencache/internal/httpx"
)

// addFixtures seeds f with the files of the shared testdata/basiq matching
// pattern.
func addFixtures(f *testing.F, pattern string) {
	f.Helper()
	files, err := filepath.Glob(filepath.Join("..", "..", "testdata", "basiq", pattern))
	if err != nil || len(files) == 0 {
		f.Fatalf("no fixtures match %s: %v", pattern, err)
	}
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
}

// FuzzParseTokenResponse: any body gives a usable token or an error,
// never a panic, and the error never quotes the token.
func FuzzParseTokenResponse(f *testing.F) {
	addFixtures(f, "token*.json")
	for _, s := range []string{
		`{"access_token":"abc","token_type":"Bearer","expires_in":3600}`,
		`{"access_token":"abc","expires_in":"3600"}`,
		`{"access_token":"","expires_in":3600}`,
		`{"access_token":"abc","expires_in":-1}`,
		`{"access_token":"abc","expires_in":1e400}`,
		`{"access_token":"abc","expires_in":"NaN"}`,
		`{"access_token":"abc","token_type":"mac","expires_in":1}`,
		`{"access_token":"abc","expi`,
		`<html>`, ``, `null`, `[]`, `"x"`,
	} {
		f.Add([]byte(s))
	}
	sent := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, body []byte) {
		tok, perr := parseTokenResponse(body, sent)
		if perr != nil {
			if perr.code != CodeInvalidResponse && perr.code != CodeInvalidToken {
				t.Fatalf("got code %q", perr.code)
			}
			if tok.AccessToken != "" {
				t.Fatalf("got a token with an error")
			}
			if !utf8.ValidString(perr.msg) || len(perr.msg) > 300 {
				t.Fatalf("got message %q", perr.msg)
			}
			var probe struct {
				AccessToken string `json:"access_token"`
			}
			if json.Unmarshal(body, &probe) == nil && len(probe.AccessToken) >= 8 && strings.Contains(perr.msg, probe.AccessToken) {
				t.Fatalf("message %q quotes the token", perr.msg)
			}
			return
		}
		if tok.AccessToken == "" || tok.TokenType != "Bearer" {
			t.Fatalf("got token %q type %q", tok.AccessToken, tok.TokenType)
		}
		for i := 0; i < len(tok.AccessToken); i++ {
			if c := tok.AccessToken[i]; c <= ' ' || c >= 0x7f {
				t.Fatalf("token holds byte %#x", c)
			}
		}
		if life := tok.Expiry.Sub(sent); life <= 0 || life > MaxExpiresIn {
			t.Fatalf("got lifetime %v", life)
		}
	})
}

// FuzzParseErrorBody: any body parses or is rejected without a panic,
// and what the Fetcher keeps of it is bounded, printable text.
func FuzzParseErrorBody(f *testing.F) {
	addFixtures(f, "error_*")
	for _, s := range []string{
		`{"type":"list","correlationId":"abc","data":[{"type":"error","code":"invalid-grant","title":"t","detail":"d","source":{"parameter":"scope"}}]}`,
		`{"type":"error","code":"access-denied","title":"Forbidden"}`,
		`{"error":"invalid_client","error_description":"bad"}`,
		`{"data":[1,"x",null,{"code":5}],"correlationId":7}`,
		`{"data":{"code":"x"}}`,
		`{"source":"pointer"}`,
		`<html>502</html>`, ``, `null`,
	} {
		f.Add([]byte(s))
	}
	r := newRedactor("fuzz-secret-key")
	f.Fuzz(func(t *testing.T, body []byte) {
		e, ok := parseErrorBody(body)
		if !ok {
			if e != (apiError{}) {
				t.Fatalf("not ok but got %+v", e)
			}
			return
		}
		for _, s := range []string{e.Code, e.Title, e.Detail, e.CorrelationID, e.Source} {
			c := r.clean(s, maxFieldLen)
			if len(c) > maxFieldLen+len("…") || !utf8.ValidString(c) || strings.ContainsAny(c, "\r\n\t\x00\x1b") {
				t.Fatalf("clean(%q) = %q", s, c)
			}
			if strings.Contains(c, "fuzz-secret-key") {
				t.Fatalf("clean(%q) kept the secret", s)
			}
		}
	})
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2025, 3, 14, 9, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"0", 0},
		{"120", 2 * time.Minute},
		{" 5 ", 5 * time.Second},
		{"3600", time.Hour},
		{"3601", MaxRetryAfter},
		{"18446744073709551616", MaxRetryAfter},
		{"-5", 0},
		{"1.5", 0},
		{"soon", 0},
		{now.Add(45 * time.Second).Format(http.TimeFormat), 45 * time.Second},
		{"Fri, 14 Mar 2025 09:01:00 GMT", time.Minute},
		{"Friday, 14-Mar-25 09:00:30 GMT", 30 * time.Second}, // RFC 850
		{"Fri Mar 14 09:00:10 2025", 10 * time.Second},       // asctime
		{"Fri, 14 Mar 2025 08:00:00 GMT", 0},
		{"Sat, 14 Mar 2026 09:00:00 GMT", MaxRetryAfter},
	}
	for _, tt := range tests {
		if got := httpx.RetryAfter(tt.in, now, MaxRetryAfter); got != tt.want {
			t.Errorf("RetryAfter(%q): got %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestSanitize(t *testing.T) {
	tests := []struct {
		in   string
		max  int
		want string
	}{
		{"plain text", 100, "plain text"},
		{"a\r\nb\tc\x00d\x1b[31me", 100, "a b c d [31me"},
		{"  lots   of    space  ", 100, "lots of space"},
		{"\xff\xfebad utf8", 100, "bad utf8"},
		{"abcdefghij", 5, "abcde…"},
		{"ééééé", 5, "éé…"},
		{"zero\u200bwidth", 100, "zero width"},
	}
	for _, tt := range tests {
		if got := sanitize(tt.in, tt.max); got != tt.want {
			t.Errorf("sanitize(%q, %d): got %q, want %q", tt.in, tt.max, got, tt.want)
		}
	}
	r := newRedactor("sekret-value", "x")
	if got := r.clean("key sekret-value and x", 100); got != "key [REDACTED] and x" {
		t.Errorf("got %q, want the long secret redacted and the 1-byte one ignored", got)
	}
}
