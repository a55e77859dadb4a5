package localapi

import (
	"net/http/httptest"
	"testing"
	"time"
)

func TestWriteTokenIsWriteJSONsBytes(t *testing.T) {
	exp := time.Date(2026, 12, 5, 13, 0, 0, 0, time.FixedZone("x", 3600))
	for _, tc := range []struct{ name, tok, typ string }{
		{"jwt", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlLV8", "Bearer"},
		{"base64", "YWJj+/=", "bearer"},
		{"quote and backslash", `a"b\c`, "Bearer"},
		{"html", "a<b>&c", "Bearer"},
		{"control", "a\nb\x00", "Bearer"},
		{"unicode", "tökén\u2028", "Bearer"},
		{"odd type", "t", `Be"arer`},
		{"empty", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := TokenResponse{AccessToken: tc.tok, TokenType: tc.typ, ExpiresIn: 3599}
			got := httptest.NewRecorder()
			writeToken(got, resp, exp)
			resp.ExpiresAt = exp.UTC().Format(time.RFC3339)
			want := httptest.NewRecorder()
			writeJSON(want, 200, resp)
			if got.Code != 200 || got.Body.String() != want.Body.String() {
				t.Errorf("writeToken = %d %q, want %q", got.Code, got.Body.String(), want.Body.String())
			}
			for _, h := range []string{"Content-Type", "Cache-Control"} {
				if got.Header().Get(h) != want.Header().Get(h) {
					t.Errorf("%s = %q, want %q", h, got.Header().Get(h), want.Header().Get(h))
				}
			}
		})
	}
}
