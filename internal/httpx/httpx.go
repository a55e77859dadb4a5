// Package httpx holds the HTTP details the issuer packages share: reading
// Retry-After, and making an issuer's message safe to put in an error.
package httpx

import (
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// RetryAfter reads a Retry-After value, delay-seconds or an HTTP-date, as a
// delay from now clamped to [0, ceiling]. Garbage gives 0; a number too
// large to parse gives ceiling.
func RetryAfter(v string, now time.Time, ceiling time.Duration) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if strings.Trim(v, "0123456789") == "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil || n > uint64(ceiling/time.Second) {
			return ceiling
		}
		return time.Duration(n) * time.Second
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0
	}
	if d := t.Sub(now); d > 0 {
		return min(ceiling, d)
	}
	return 0
}

// Redacted replaces whatever Scrub removes.
const Redacted = "[redacted]"

// Scrub makes an issuer's message safe to put in an error: it removes
// every occurrence of the secrets, replaces anything shaped like a token (a
// run of base64 or base64url characters 40 long, or 24 long with a digit:
// access tokens, JWTs, API keys, but not words) with "[redacted]", turns
// control characters and invalid UTF-8 into spaces, and cuts the result at
// limit bytes on a rune boundary, marking the cut with "...". A secret that
// could only be removed by removing the markers themselves (a part of
// "[redacted]") gives "".
func Scrub(msg string, limit int, secrets ...string) string {
	// Secrets are removed before and after the clean-up: turning a control
	// character into a space, or cutting, can make a secret appear that was
	// not there byte for byte.
	out := cut(redactSecrets(clean(redactSecrets(msg, secrets)), secrets), limit)
	for _, s := range secrets {
		if s != "" && strings.Contains(out, s) {
			// Only a secret that overlaps the markers themselves gets
			// here; nothing of the message is safe to keep.
			return ""
		}
	}
	return out
}

func redactSecrets(msg string, secrets []string) string {
	for _, s := range secrets {
		if s != "" {
			msg = strings.ReplaceAll(msg, s, Redacted)
		}
	}
	return msg
}

// clean replaces token-shaped words with Redacted and control characters
// and invalid UTF-8 with spaces, and trims the result.
func clean(msg string) string {
	var b strings.Builder
	start := -1 // start of the current run of token characters
	flush := func(end int) {
		w := msg[start:end]
		if len(w) >= 40 || len(w) >= 24 && strings.ContainsAny(w, "0123456789") {
			w = Redacted
		}
		b.WriteString(w)
		start = -1
	}
	for i := 0; i < len(msg); {
		c := msg[i]
		if isTokenByte(c) {
			if start < 0 {
				start = i
			}
			i++
			continue
		}
		if start >= 0 {
			flush(i)
		}
		r, size := utf8.DecodeRuneInString(msg[i:])
		if r < ' ' || r == 0x7f || r == utf8.RuneError {
			b.WriteByte(' ')
		} else {
			b.WriteString(msg[i : i+size])
		}
		i += size
	}
	if start >= 0 {
		flush(len(msg))
	}
	return strings.TrimSpace(b.String())
}

// cut shortens s to at most limit bytes on a rune boundary, marking the cut
// with "...".
func cut(s string, limit int) string {
	if len(s) <= limit {
		return s
	}
	n := max(limit, 0)
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "..."
}

func isTokenByte(c byte) bool {
	return 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' ||
		c == '-' || c == '_' || c == '.' || c == '=' || c == '+' || c == '/' || c == '~'
}
