package localapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
)

// DefaultMaxIdleConns is the number of idle connections the proxy keeps
// to the upstream when ProxyConfig.Base is nil.
const DefaultMaxIdleConns = 64

// bufferPool holds ReverseProxy's 32 KiB copy buffers, reused instead of
// allocated per request.
type bufferPool struct{ p sync.Pool }

func newBufferPool() *bufferPool {
	return &bufferPool{p: sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}}
}

func (b *bufferPool) Get() []byte  { return *b.p.Get().(*[]byte) }
func (b *bufferPool) Put(v []byte) { b.p.Put(&v) }

// DefaultMaxRetryBody is the largest request body the proxy keeps in
// memory so that a request the upstream answers 401 can be sent again
// with the new token. A larger body streams through, and its 401 goes
// back to the client (the next request recovers).
const DefaultMaxRetryBody = 1 << 20

// DefaultMaxBuffered bounds the bytes of request bodies the proxy keeps
// for retries across all requests at once: past it, a body streams
// through without a retry, however small. Slow clients sending many
// bodies at once cannot make the proxy hold more than this.
const DefaultMaxBuffered = 16 << 20

// ProxyConfig configures NewProxy.
type ProxyConfig struct {
	// Upstream is the API's base URL (scheme, host, optional path): the
	// only place requests go.
	Upstream *url.URL
	// UserID, if not empty, authorizes with that user's client token
	// instead of the server token.
	UserID string
	// Base carries requests to the upstream; nil means a clone of
	// http.DefaultTransport.
	Base http.RoundTripper
	// MaxRetryBody overrides DefaultMaxRetryBody; negative means never
	// buffer.
	MaxRetryBody int64
	// MaxBuffered overrides DefaultMaxBuffered.
	MaxBuffered int64
	Metrics     *Metrics
	Logger      *slog.Logger
}

// NewProxy returns an API proxy to c.Upstream: it strips the client's
// Authorization, adds the fleet's token itself (src.Transport: on a 401 it
// invalidates the token once for the fleet and retries once), refuses
// requests for any other host and CONNECT, streams bodies, and removes
// any token from the upstream's response headers. Put it behind Guard.
func NewProxy(src Source, c ProxyConfig) (http.Handler, error) {
	u := c.Upstream
	if u == nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, errors.New("upstream: want http(s)://host[:port][/path] without credentials, query or fragment")
	}
	base := c.Base
	if base == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		// Every request goes to one host: keep as many idle connections
		// to it as clients may have in flight (the default, 2, closes
		// and redials the rest under any concurrency).
		t.MaxIdleConns = DefaultMaxIdleConns
		t.MaxIdleConnsPerHost = DefaultMaxIdleConns
		base = t
	}
	rt, err := src.Transport(c.UserID, countingBase{base})
	if err != nil {
		return nil, err
	}
	if c.MaxRetryBody == 0 {
		c.MaxRetryBody = DefaultMaxRetryBody
	}
	if c.MaxBuffered <= 0 {
		c.MaxBuffered = DefaultMaxBuffered
	}
	log := c.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &proxy{src: src, c: c, log: log}
	p.rp = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(u)
			pr.Out.Header.Del("Authorization")
			pr.Out.Header.Del("Proxy-Authorization")
		},
		Transport: &outerTransport{rt: rt, plain: &plainTransport{src: src, user: c.UserID, base: countingBase{base}}, m: c.Metrics},
		// No forced flush per write: a body of known length goes out in
		// full buffers; ReverseProxy still flushes each write of a body
		// of unknown length and of text/event-stream, so streams stream.
		FlushInterval:  0,
		BufferPool:     newBufferPool(),
		ModifyResponse: modifyResponse,
		ErrorHandler:   p.failed,
		ErrorLog:       slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	return p, nil
}

type proxy struct {
	src Source
	c   ProxyConfig
	rp  *httputil.ReverseProxy
	log *slog.Logger

	buffered atomic.Int64 // bytes of request bodies held for retries now
}

func (p *proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Del("Cache-Control") // the upstream's answer decides (see modifyResponse)
	if refusedMethod(r.Method) {
		p.c.Metrics.proxyFailed("refused")
		writeError(w, http.StatusMethodNotAllowed, strings.ToUpper(r.Method)+" is refused: this proxy forwards only to "+p.upstreamName())
		return
	}
	if r.URL.Host != "" && !p.sameUpstream(r.URL) {
		p.c.Metrics.proxyFailed("refused")
		writeError(w, http.StatusForbidden, "this proxy forwards only to "+p.upstreamName())
		return
	}
	release, err := p.rewindable(r)
	defer release()
	if bodyTimedOut(err) {
		p.c.Metrics.proxyFailed("error")
		writeTimeout(w)
		return
	}
	if err != nil {
		p.c.Metrics.proxyFailed("error")
		writeError(w, http.StatusBadRequest, "reading the request body: "+err.Error())
		return
	}
	// The attempt counter lives on the incoming request's context, so that
	// both the transport and the error handler see it.
	ctx := context.WithValue(r.Context(), attemptsKey{}, new(atomic.Int32))
	if !CostlyLeft(r) {
		// This client's requests have made the fleet invalidate its token
		// too often of late: its 401s go back to it as they are.
		ctx = context.WithValue(ctx, noRecoveryKey{}, true)
	}
	p.rp.ServeHTTP(w, r.WithContext(ctx))
	if attemptsOf(ctx) > 1 {
		Charge(r) // a 401 recovered from: an invalidation, an issuer call
	}
}

// noRecoveryKey marks a request sent without the 401 recovery.
type noRecoveryKey struct{}

// refusedMethod reports whether the proxy refuses method: CONNECT would
// tunnel past the host check; TRACE and TRACK make an upstream (or a load
// balancer before it) that echoes them hand the fleet's token back to the
// client. Compared without case, as some servers compare them.
func refusedMethod(method string) bool {
	for _, m := range []string{http.MethodConnect, http.MethodTrace, "TRACK"} {
		if strings.EqualFold(method, m) {
			return true
		}
	}
	return false
}

func (p *proxy) upstreamName() string { return p.c.Upstream.Scheme + "://" + p.c.Upstream.Host }

// sameUpstream reports whether an absolute-form request target names the
// upstream.
func (p *proxy) sameUpstream(t *url.URL) bool {
	return strings.EqualFold(t.Host, p.c.Upstream.Host) && (t.Scheme == "" || strings.EqualFold(t.Scheme, p.c.Upstream.Scheme))
}

// rewindable buffers a body of at most MaxRetryBody bytes, so that the
// token transport may send it again after a 401; a larger one streams, and
// so does any body once the bodies buffered by all requests reach
// MaxBuffered. The memory is counted as it is allocated, and given back
// by release once the request is done.
func (p *proxy) rewindable(r *http.Request) (release func(), err error) {
	var held int64
	release = func() { p.buffered.Add(-held) }
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 || p.c.MaxRetryBody < 0 {
		return release, nil
	}
	limit := p.c.MaxRetryBody
	if r.ContentLength > limit {
		streaming(r.Body)
		return release, nil
	}
	take := func(n int64) bool {
		if p.buffered.Add(n) > p.c.MaxBuffered {
			p.buffered.Add(-n)
			return false
		}
		held += n
		return true
	}
	size := min(int64(32<<10), limit+1)
	if r.ContentLength > 0 {
		size = r.ContentLength + 1 // the byte after: the end of the body
	}
	if !take(size) {
		streaming(r.Body)
		return release, nil
	}
	buf := make([]byte, 0, size)
	for {
		if len(buf) == cap(buf) {
			n := min(2*int64(cap(buf)), limit+1)
			// The new buffer is counted in full while the old one is
			// copied into it.
			if int64(len(buf)) > limit || !take(n) {
				// Too long, or too much held by all: stream what was
				// read, then the rest (no retry).
				streaming(r.Body)
				r.Body = struct {
					io.Reader
					io.Closer
				}{io.MultiReader(bytes.NewReader(buf), r.Body), r.Body}
				return release, nil
			}
			nb := make([]byte, len(buf), n)
			copy(nb, buf)
			held -= int64(cap(buf)) // the old buffer is garbage now
			p.buffered.Add(-int64(cap(buf)))
			buf = nb
		}
		n, err := r.Body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			break
		}
		if err != nil {
			return release, err
		}
	}
	_ = r.Body.Close()
	r.ContentLength = int64(len(buf))
	r.TransferEncoding = nil
	r.Body = io.NopCloser(bytes.NewReader(buf))
	r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf)), nil }
	return release, nil
}

// failed answers a request the transport could not complete: 503 with the
// reason when no token could be had (nothing was sent), 502 when the
// upstream did not answer.
func (p *proxy) failed(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		return // the client left
	}
	if attemptsOf(r.Context()) == 0 {
		p.c.Metrics.proxyFailed("unavailable")
		writeError(w, http.StatusServiceUnavailable, "no token: "+p.src.Explain(err))
		return
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	p.c.Metrics.proxyFailed("error")
	p.log.Warn("tokencache proxy: upstream did not answer", "upstream", p.upstreamName(), "err", err)
	writeError(w, http.StatusBadGateway, fmt.Sprintf("upstream %s: %v", p.upstreamName(), err))
}

// modifyResponse removes any token the upstream sends back (a rotating
// issuer's Authorization header: the client never holds a token) and
// marks the answer no-store unless the upstream said otherwise.
func modifyResponse(resp *http.Response) error {
	resp.Header.Del("Authorization")
	if resp.Header.Get("Cache-Control") == "" {
		resp.Header.Set("Cache-Control", "no-store")
	}
	return nil
}

// attemptsKey is the context key of a request's upstream attempt counter.
type attemptsKey struct{}

func attemptsOf(ctx context.Context) int32 {
	if n, ok := ctx.Value(attemptsKey{}).(*atomic.Int32); ok {
		return n.Load()
	}
	return 0
}

// outerTransport counts each proxied request by the upstream's final
// status, and the 401s the token transport recovered from: a request sent
// twice was answered 401, its token invalidated for the fleet, and retried.
type outerTransport struct {
	rt    http.RoundTripper
	plain http.RoundTripper // without the 401 recovery (noRecoveryKey)
	m     *Metrics
}

func (t *outerTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	rt := t.rt
	if req.Context().Value(noRecoveryKey{}) != nil {
		rt = t.plain
	}
	resp, err := rt.RoundTrip(req)
	if attemptsOf(req.Context()) > 1 {
		t.m.invalidated("proxy", "retried")
	}
	if err == nil {
		t.m.proxyStatus(resp.StatusCode)
	}
	return resp, err
}

// countingBase counts the attempts that reach the upstream.
type countingBase struct{ rt http.RoundTripper }

func (b countingBase) RoundTrip(req *http.Request) (*http.Response, error) {
	if n, ok := req.Context().Value(attemptsKey{}).(*atomic.Int32); ok {
		n.Add(1)
	}
	return b.rt.RoundTrip(req)
}

// plainTransport authorizes a request with the token and sends it once: a
// 401 goes back as it is, with no invalidation.
type plainTransport struct {
	src  Source
	user string
	base http.RoundTripper
}

func (t *plainTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	tok, _, err := t.src.Token(req.Context(), t.user)
	if err != nil {
		if req.Body != nil {
			_ = req.Body.Close()
		}
		return nil, err
	}
	typ := tok.TokenType
	if typ == "" || strings.EqualFold(typ, "bearer") {
		typ = "Bearer"
	}
	r := req.Clone(req.Context())
	r.Header.Set("Authorization", typ+" "+tok.AccessToken)
	return t.base.RoundTrip(r)
}
