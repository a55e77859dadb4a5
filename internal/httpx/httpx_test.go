package httpx

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 22, 8, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		in   string
		want time.Duration
	}{
		{"", 0}, {"  ", 0}, {"30", 30 * time.Second}, {" 5 ", 5 * time.Second}, {"0", 0},
		{"-5", 0}, {"soon", 0}, {"1.5", 0},
		{"99999999999999999999999", time.Hour}, {"7200", time.Hour},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{now.Add(-time.Minute).Format(http.TimeFormat), 0},
		{now.Add(48 * time.Hour).Format(http.TimeFormat), time.Hour},
	} {
		if got := RetryAfter(tc.in, now, time.Hour); got != tc.want {
			t.Errorf("RetryAfter(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestScrub(t *testing.T) {
	jwt := "eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjE3MDAwMDAwMDB9.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
	for _, tc := range []struct {
		in, want string
	}{
		{"invalid key my-secret-key given", "invalid key [redacted] given"},
		{"token " + jwt + " rejected", "token [redacted] rejected"},
		{"a correlationId ed06254381fd is kept", "a correlationId ed06254381fd is kept"},
		{"long words like internationalization stay", "long words like internationalization stay"},
		{"line\nbreak\x00and\xffbad", "line break and bad"},
		// A control character that becomes a space must not rebuild a
		// secret with a space in it (found by FuzzScrub).
		{"key my-secret\x00key given", "key [redacted] given"},
	} {
		if got := Scrub(tc.in, 200, "my-secret-key", "my-secret key"); got != tc.want {
			t.Errorf("Scrub(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	long := strings.Repeat("é", 300)
	if got := Scrub(long, 101); len(got) > 104 || !strings.HasSuffix(got, "...") {
		t.Errorf("Scrub did not cut at a rune boundary: %d bytes", len(got))
	}
}

func FuzzScrub(f *testing.F) {
	f.Add("invalid key sk_live_0123456789abcdefghij", "sk_live_0123456789abcdefghij")
	f.Add("0000000\x000", "0000000 0")
	f.Add("abcdefgh[redacted]", "h[redacted]")
	f.Add(strings.Repeat("x", 198)+"abcdefghij", "xxxxxx...")
	f.Fuzz(func(t *testing.T, msg, secret string) {
		if len(secret) < 8 {
			return
		}
		out := Scrub(msg, 200, secret)
		if strings.Contains(out, secret) || len(out) > 203 {
			t.Fatalf("secret survived: %q", out)
		}
	})
}
