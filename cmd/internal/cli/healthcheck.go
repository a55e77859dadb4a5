package cli

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"
)

// Healthcheck defaults.
const (
	// DefaultHealthURL is the daemon's readiness endpoint on its default
	// listen address.
	DefaultHealthURL = "http://127.0.0.1:9090/readyz"
	// DefaultHealthTimeout bounds the whole check, connection to body.
	DefaultHealthTimeout = 3 * time.Second
	// maxHealthBody bounds how much of the answer is read and echoed.
	maxHealthBody = 512
)

// runHealthcheck GETs a URL and exits 0 on a 2xx answer, 1 otherwise. It
// is for container health checks on images without a shell or curl
// (distroless): docker-compose runs it against the daemon and the fake
// issuer. It needs no Redis and no credentials, follows no redirects, and
// prints one line.
func runHealthcheck(ctx context.Context, a *app, args []string) error {
	fs := a.newFlagSet("healthcheck")
	target := fs.String("url", DefaultHealthURL, "the http:// or https:// URL to GET")
	timeout := fs.Duration("timeout", DefaultHealthTimeout, "give up after this long")
	fs.Usage = a.subUsage(fs, "[--url URL] [--timeout D]", "GET URL; exit 0 on a 2xx answer, 1 otherwise (a container health check).")
	if err := a.parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("healthcheck: unexpected argument %q", fs.Arg(0))
	}
	if *timeout <= 0 {
		return usagef("healthcheck: --timeout %v: want a positive duration", *timeout)
	}
	u, err := url.Parse(*target)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return usagef("healthcheck: --url %q: want an absolute http:// or https:// URL", redactURL(*target))
	}
	if u.User != nil {
		return usagef("healthcheck: --url must not hold credentials")
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return usagef("healthcheck: --url: %v", err)
	}
	hc := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("healthcheck %s: %w", u, redactURLErr(err))
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxHealthBody))
	line := firstLine(string(body))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("healthcheck %s: %s: %s", u, resp.Status, line)
	}
	_, err = fmt.Fprintf(a.env.Stdout, "healthy: %s %s %s\n", u, resp.Status, line)
	return err
}

// firstLine is s up to its first line break, printable ASCII only.
func firstLine(s string) string {
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '\n' || c == '\r' {
			break
		}
		if c < ' ' || c >= 0x7f {
			c = '?'
		}
		out = append(out, c)
	}
	return string(out)
}
