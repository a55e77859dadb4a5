package localapi

import (
	"errors"
	"io"
	"net/http"
	"os"
	"time"
)

// Timeouts of a connection to serve or proxy, so that no client can hold
// the process: after the headers, a connection that sends no request is
// closed after DefaultIdleTimeout, and a request body must arrive within
// DefaultBodyTimeout (408 otherwise).
const (
	DefaultReadHeaderTimeout = 5 * time.Second
	DefaultIdleTimeout       = 30 * time.Second
	DefaultBodyTimeout       = 30 * time.Second
)

// NewServer returns the http.Server of h with the local API's timeouts:
// idle, if positive, replaces DefaultIdleTimeout.
func NewServer(h http.Handler, idle time.Duration) *http.Server {
	if idle <= 0 {
		idle = DefaultIdleTimeout
	}
	return &http.Server{Handler: h, ReadHeaderTimeout: DefaultReadHeaderTimeout, IdleTimeout: idle}
}

// deadlineBody is a request body that must arrive in time: whole, by a
// deadline (the body the handler reads in full: a token request's, a
// proxied body kept for a retry), or, once streamed, with each read
// making progress within idle. The connection's read deadline is cleared
// once the body is read in full: the server's own read that watches for
// the client leaving must not time out.
type deadlineBody struct {
	io.ReadCloser
	rc    *http.ResponseController
	whole time.Time     // the body must be read by then; zero: streaming
	idle  time.Duration // while streaming, each read must end within it
	done  bool
}

// withBodyDeadline gives r's body d to arrive in full. A body that cannot
// have a deadline (a connection that does not support one) is left as is.
func withBodyDeadline(w http.ResponseWriter, r *http.Request, d time.Duration) {
	if d <= 0 || r.Body == nil || r.Body == http.NoBody {
		return
	}
	rc := http.NewResponseController(w)
	at := time.Now().Add(d)
	if rc.SetReadDeadline(at) != nil {
		return
	}
	r.Body = &deadlineBody{ReadCloser: r.Body, rc: rc, whole: at, idle: d}
}

// streaming switches body, if it has a deadline, from the whole-body
// deadline to one per read: a body streamed to the upstream may take as
// long as it keeps coming.
func streaming(body io.ReadCloser) {
	if b, ok := body.(*deadlineBody); ok && !b.done {
		b.whole = time.Time{}
	}
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	if b.done {
		return b.ReadCloser.Read(p)
	}
	if b.whole.IsZero() {
		_ = b.rc.SetReadDeadline(time.Now().Add(b.idle))
	}
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.done = true
		_ = b.rc.SetReadDeadline(time.Time{})
	}
	// On any other error the deadline stays: the server, discarding
	// what is left of the body, must not wait for it without end.
	return n, err
}

// bodyTimedOut reports whether err is a body that did not arrive in time.
func bodyTimedOut(err error) bool {
	return errors.Is(err, os.ErrDeadlineExceeded)
}

// writeTimeout answers 408 a request whose body did not arrive in time,
// and closes the connection (its read deadline has passed).
func writeTimeout(w http.ResponseWriter) {
	w.Header().Set("Connection", "close")
	writeError(w, http.StatusRequestTimeout, "the request body did not arrive in time")
}
