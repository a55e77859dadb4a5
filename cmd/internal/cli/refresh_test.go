package cli

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"
)

var refreshFields = regexp.MustCompile(`expires_in=(\S+) ttl=(\S+) refreshed=(true|false)`)

// TestRefreshAndInspectAgreeOnExpiresIn checks that expires_in means the
// time left before the issuer's expiry in refresh's line as in inspect,
// and that refresh prints the key's TTL, which ends earlier by the skew,
// as ttl.
func TestRefreshAndInspectAgreeOnExpiresIn(t *testing.T) {
	o := newOffline(t)
	out, _, err := o.run(t, "refresh")
	if err != nil {
		t.Fatal(err)
	}
	m := refreshFields.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("refresh printed %q: no expires_in=… ttl=… refreshed=…", out)
	}
	expiresIn, ttl := mustDuration(t, "expires_in", m[1]), mustDuration(t, "ttl", m[2])

	js, _, err := o.run(t, "inspect", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		ExpiresIn float64 `json:"expires_in_seconds"`
		TTL       float64 `json:"ttl_seconds"`
	}
	if err := json.Unmarshal([]byte(js), &doc); err != nil {
		t.Fatal(err)
	}
	inspectExpires := time.Duration(doc.ExpiresIn * float64(time.Second))
	if d := (expiresIn - inspectExpires).Abs(); d > 5*time.Second {
		t.Errorf("refresh says expires_in=%v, inspect says expires in %v: two meanings", expiresIn, inspectExpires)
	}
	if d := expiresIn - ttl; d < 20*time.Second || d > 40*time.Second {
		t.Errorf("expires_in=%v ttl=%v: the TTL should end the skew (30s) before the expiry", expiresIn, ttl)
	}
	if expiresIn < 59*time.Minute || expiresIn > time.Hour {
		t.Errorf("expires_in=%v for a fresh 60-minute token", expiresIn)
	}
}

// TestRefreshWarnsWhenMinTTLOutlivesTheToken checks that a --min-ttl
// longer than the token's life, which makes every run call the issuer,
// is warned about in one line that gives a value that works, and that a
// sensible one is not.
func TestRefreshWarnsWhenMinTTLOutlivesTheToken(t *testing.T) {
	o := newOffline(t)
	out, stderr, err := o.run(t, "refresh", "--min-ttl", "2h")
	if err != nil {
		t.Fatalf("refresh --min-ttl 2h: %v", err)
	}
	if !strings.Contains(out, "refreshed=true") {
		t.Errorf("stdout %q: want a refresh", out)
	}
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	if len(lines) != 1 || !strings.Contains(lines[0], "warning: --min-ttl 2h is longer than the token's life") || !strings.Contains(lines[0], "--min-ttl 45m") {
		t.Errorf("stderr %q: want one warning line naming --min-ttl and a value that works", stderr)
	}
	_, stderr, err = o.run(t, "refresh", "--min-ttl", "45m", "--force")
	if err != nil || stderr != "" {
		t.Errorf("refresh --min-ttl 45m: err %v, stderr %q: want no warning", err, stderr)
	}
}
