// Package faultproxy is a TCP proxy for tests that injects network faults
// between a client and a server: added latency, connections dropped
// mid-command, and half-open connections that accept bytes and deliver
// nothing back.
package faultproxy

import (
	"bytes"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Proxy forwards a loopback listener to an upstream address.
type Proxy struct {
	Addr string // the proxy's listening address: give this to the client

	upstream string
	ln       net.Listener
	delay    atomic.Int64 // nanoseconds added before each chunk is forwarded
	// swallowNext: the next server->client chunk that starts with it is
	// swallowed, and its connection turned half-open (see SwallowReply).
	swallowNext atomic.Pointer[[]byte]
	swallowed   atomic.Int64 // replies swallowed by SwallowReply
	dropMsgs    atomic.Bool  // drop pub/sub messages (see DropMessages)
	dropped     atomic.Int64 // messages dropped

	mu     sync.Mutex // guards conns, closed
	conns  map[*pair]struct{}
	closed bool
	wg     sync.WaitGroup
}

type pair struct {
	client, server net.Conn
	swallow        atomic.Bool // drop server->client bytes (half-open)
}

// New starts a proxy to upstream on a free loopback port.
func New(upstream string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{Addr: ln.Addr().String(), upstream: upstream, ln: ln, conns: map[*pair]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.upstream)
		if err != nil {
			_ = c.Close()
			continue
		}
		pr := &pair{client: c, server: s}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			_ = c.Close()
			_ = s.Close()
			return
		}
		p.conns[pr] = struct{}{}
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(pr, s, c, true)
		go p.pipe(pr, c, s, false)
	}
}

// pipe copies src to dst; downstream is the server->client direction.
func (p *Proxy) pipe(pr *pair, src, dst net.Conn, downstream bool) {
	defer p.wg.Done()
	defer p.drop(pr)
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if d := time.Duration(p.delay.Load()); d > 0 {
				time.Sleep(d)
			}
			if m := p.swallowNext.Load(); downstream && m != nil && bytes.HasPrefix(buf[:n], *m) && p.swallowNext.CompareAndSwap(m, nil) {
				pr.swallow.Store(true)
				p.swallowed.Add(1)
			}
			if downstream && p.dropMsgs.Load() && isMessage(buf[:n]) {
				p.dropped.Add(1)
				continue
			}
			if !(downstream && pr.swallow.Load()) {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
		}
		if err != nil {
			if err != io.EOF {
				return
			}
			return
		}
	}
}

func (p *Proxy) drop(pr *pair) {
	_ = pr.client.Close()
	_ = pr.server.Close()
	p.mu.Lock()
	delete(p.conns, pr)
	p.mu.Unlock()
}

// SwallowReply makes the next reply from the server that starts with
// prefix vanish, once: the command ran, its reply never arrives, and its
// connection turns half-open, so the client's read times out, as when a
// network fails between a command's execution and its reply.
func (p *Proxy) SwallowReply(prefix []byte) { p.swallowNext.Store(&prefix) }

// DropMessages makes every pub/sub message the server pushes vanish, while
// replies and subscription confirmations pass: a subscriber that stays
// subscribed and hears nothing, as when a message is lost on its way.
func (p *Proxy) DropMessages() { p.dropMsgs.Store(true) }

// Dropped reports how many messages DropMessages has dropped.
func (p *Proxy) Dropped() int64 { return p.dropped.Load() }

// isMessage reports whether a chunk from the server starts with a pub/sub
// message: "message" or "smessage" as a RESP2 array or a RESP3 push.
func isMessage(b []byte) bool {
	if len(b) < 4 || (b[0] != '*' && b[0] != '>') || b[1] != '3' {
		return false
	}
	rest := b[2:]
	return bytes.HasPrefix(rest, []byte("\r\n$7\r\nmessage\r\n")) || bytes.HasPrefix(rest, []byte("\r\n$8\r\nsmessage\r\n"))
}

// Swallowed reports how many replies SwallowReply has swallowed.
func (p *Proxy) Swallowed() int64 { return p.swallowed.Load() }

// SetDelay adds d before every chunk forwarded in either direction.
func (p *Proxy) SetDelay(d time.Duration) { p.delay.Store(int64(d)) }

// SwallowExisting turns every open connection half-open: what the client
// sends still reaches the server, but nothing comes back. New connections
// work normally.
func (p *Proxy) SwallowExisting() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	for pr := range p.conns {
		pr.swallow.Store(true)
	}
	return len(p.conns)
}

// DropAll closes every open connection, as a network blip would.
func (p *Proxy) DropAll() {
	p.mu.Lock()
	prs := make([]*pair, 0, len(p.conns))
	for pr := range p.conns {
		prs = append(prs, pr)
	}
	p.mu.Unlock()
	for _, pr := range prs {
		p.drop(pr)
	}
}

// Conns reports the number of open connections.
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// Close stops the proxy and closes every connection.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	err := p.ln.Close()
	p.DropAll()
	p.wg.Wait()
	return err
}
