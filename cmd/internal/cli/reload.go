package cli

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tokencache/tokencache/tokencache"
)

// This file is how daemon, serve and proxy pick up a secret rotated while
// they run: each secret read from a file is a watched value, re-read on
// SIGHUP and, between signals, whenever the file's content changes. A new
// content that cannot be used (empty, unreadable, not a key ring, not a
// PEM certificate) keeps the previous value, and one log line names the
// file; no log line ever holds a secret.

// DefaultReloadInterval is how often the secret files are looked at for a
// change. Reading a few small files costs next to nothing; a secret
// volume (Kubernetes, Vault Agent) is itself updated with a delay of this
// order, so a shorter interval buys little.
const DefaultReloadInterval = 5 * time.Second

// maxSecretFile bounds what is read of a secret file: a key, a key ring or
// a PEM bundle is a few KiB.
const maxSecretFile = 1 << 20

// watched is a value read from one or more files (read together, such as
// a certificate and its key) and re-read when they change. The value of
// the moment is behind an atomic pointer: readers never wait for a reload.
// A value from the environment has no files and never changes.
type watched[T any] struct {
	what     string   // what the value is, for logs: "the API key"
	paths    []string // the files, read together; none for a fixed value
	parse    func(contents [][]byte) (T, error)
	onChange func(T) // if not nil, told of each new value, after it is stored
	cred     bool    // a credential of the issuer: a change re-checks the token

	cur atomic.Pointer[T]

	mu      sync.Mutex // guards seen, good, readErr
	seen    [32]byte   // hash of the contents last looked at, usable or not
	good    [32]byte   // hash of the contents the current value came from
	readErr string     // the read failure last logged, so it is logged once
}

// fixed returns a watched that always holds v.
func fixed[T any](what string, v T) *watched[T] {
	w := &watched[T]{what: what}
	w.cur.Store(&v)
	return w
}

// get returns the value of the moment.
func (w *watched[T]) get() T { return *w.cur.Load() }

// readError is a file that could not be read, named by path.
type readError struct {
	path string
	err  error
}

func (e *readError) Error() string { return e.path + ": " + e.err.Error() }

// read reads every file, and hashes their contents together.
func (w *watched[T]) read() ([][]byte, [32]byte, error) {
	h := sha256.New()
	contents := make([][]byte, len(w.paths))
	for i, p := range w.paths {
		b, err := readSecretFile(p)
		if err != nil {
			return nil, [32]byte{}, &readError{path: p, err: err}
		}
		contents[i] = b
		fmt.Fprintf(h, "%d:", len(b))
		h.Write(b)
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return contents, sum, nil
}

// readSecretFile reads a file of at most maxSecretFile bytes, following
// symbolic links (a Kubernetes secret volume swaps a link to a new
// directory). Its error names the cause, not the path.
func readSecretFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, pathCause(err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxSecretFile+1))
	if err != nil {
		return nil, pathCause(err)
	}
	if len(b) > maxSecretFile {
		return nil, fmt.Errorf("larger than %d bytes", maxSecretFile)
	}
	return b, nil
}

// pathCause drops the *os.PathError layer, which repeats the path.
func pathCause(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// load reads and parses the files the first time. Its error is a
// *readError or the parse error; the caller turns it into a usage error.
func (w *watched[T]) load() error {
	contents, sum, err := w.read()
	if err != nil {
		return err
	}
	v, err := w.parse(contents)
	if err != nil {
		return err
	}
	w.mu.Lock()
	w.seen, w.good = sum, sum
	w.mu.Unlock()
	w.cur.Store(&v)
	if w.onChange != nil {
		w.onChange(v)
	}
	return nil
}

// files names the files in a log line.
func (w *watched[T]) files() string { return strings.Join(w.paths, ",") }

// reload re-reads the files and reports whether the value changed. It
// does nothing when the contents are the ones last looked at, unless
// forced (SIGHUP). A failure keeps the value and is logged once per
// failing content, and again on each forced reload.
func (w *watched[T]) reload(log *slog.Logger, force bool) bool {
	if len(w.paths) == 0 {
		return false
	}
	contents, sum, err := w.read()
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil {
		var re *readError
		if !errors.As(err, &re) {
			re = &readError{path: w.files(), err: err}
		}
		if msg := err.Error(); force || msg != w.readErr {
			log.Warn("tokencache: cannot read the secret file; keeping the previous value",
				"file", re.path, "secret", w.what, "err", re.err.Error())
			w.readErr = msg
		}
		return false
	}
	w.readErr = ""
	if sum == w.seen && !force {
		return false
	}
	w.seen = sum
	if sum == w.good {
		return false // back to the contents in use
	}
	v, err := w.parse(contents)
	if err != nil {
		log.Warn("tokencache: the secret file is unusable; keeping the previous value",
			"file", w.files(), "secret", w.what, "err", err.Error())
		return false
	}
	w.good = sum
	w.cur.Store(&v)
	if w.onChange != nil {
		w.onChange(v)
	}
	log.Info("tokencache: secret file re-read", "file", w.files(), "secret", w.what)
	return true
}

// reloadable is a watched value as the reloader drives it.
type reloadable interface {
	// reload re-reads the value and reports whether it changed.
	reload(log *slog.Logger, force bool) bool
	// credential reports whether the value is a credential of the issuer.
	credential() bool
}

func (w *watched[T]) credential() bool { return w.cred }

var _ reloadable = (*watched[string])(nil)

// watchList is the watched values of an invocation that have files.
type watchList struct {
	mu    sync.Mutex // guards items
	items []reloadable
}

func (l *watchList) add(r reloadable) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.items = append(l.items, r)
}

func (l *watchList) list() []reloadable {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]reloadable(nil), l.items...)
}

// reloadAll re-reads every watched file and reports whether a credential
// of the issuer changed.
func (a *app) reloadAll(force bool) (credChanged bool) {
	for _, r := range a.watch.list() {
		if r.reload(a.log, force) && r.credential() {
			credChanged = true
		}
	}
	return credChanged
}

// watchSecrets re-reads the secret files on SIGHUP (or a receive on
// Env.Reload) and every interval (0: on the signal only), until ctx ends;
// the returned func stops it and waits for it. After a credential of the
// issuer changed, recheck runs (the token is checked against the new
// credential): at once after a SIGHUP, which an operator sends once every
// file is written, and after a poll only once a whole interval has passed
// with no further change, so that a credential in two files (an API key
// and a client secret) is not used half rotated. The SIGHUP handler is in
// place when watchSecrets returns.
func (a *app) watchSecrets(ctx context.Context, interval time.Duration, recheck func(context.Context)) (stop func()) {
	var hup chan os.Signal
	if a.env.Reload == nil {
		hup = make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
	}
	var tick <-chan time.Time
	var ticker *time.Ticker
	if interval > 0 {
		ticker = time.NewTicker(interval)
		tick = ticker.C
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		pending := false // a credential changed on a poll, not rechecked yet
		for {
			force := false
			select {
			case <-ctx.Done():
				return
			case <-tick:
			case <-hup:
				force = true
			case <-a.env.Reload:
				force = true
			}
			if force {
				a.log.Info("tokencache: re-reading the secret files", "files", strconv.Itoa(len(a.watch.list())))
			}
			changed := a.reloadAll(force)
			if changed && !force {
				pending = true // wait for the files to settle
				continue
			}
			if !changed && !pending {
				continue
			}
			pending = false
			if recheck != nil {
				recheck(ctx)
			}
		}
	}()
	return func() {
		cancel()
		<-done
		if hup != nil {
			signal.Stop(hup)
		}
		if ticker != nil {
			ticker.Stop()
		}
	}
}

// scrubList is the secrets an invocation has read, to scrub from its
// messages; reloads add to it while handlers read it.
type scrubList struct {
	mu sync.Mutex // guards s
	s  []string
}

func (l *scrubList) add(s ...string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.s = append(l.s, s...)
}

func (l *scrubList) list() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.s...)
}

// keyRing loads the at-rest encryption keys, if any: from the file given
// by --encryption-keys-file, watched (a new ring applies to the next
// write and read: KeyRing.Replace), else from the environment. An empty
// file means no encryption, as an unset variable does.
func (a *app) keyRing() (*tokencache.KeyRing, error) {
	parse := func(spec string) (*tokencache.KeyRing, error) {
		kr, err := tokencache.ParseKeyRing(spec)
		if err != nil {
			return nil, errors.New(strings.TrimPrefix(err.Error(), "tokencache: "))
		}
		return kr, nil
	}
	file := a.g.encKeysFile
	if file == "" {
		spec := a.g.getenv(EnvEncryptionKeys)
		if strings.TrimSpace(spec) == "" {
			return nil, nil
		}
		kr, err := parse(spec)
		if err != nil {
			return nil, usagef("encryption keys: %v", err)
		}
		return kr, nil
	}
	w := &watched[*tokencache.KeyRing]{what: "the encryption key ring", paths: []string{file},
		parse: func(c [][]byte) (*tokencache.KeyRing, error) {
			spec := string(c[0])
			if strings.TrimSpace(spec) == "" {
				return nil, errEmptyFile
			}
			a.secrets.add(keySpecSecrets(spec)...)
			return parse(spec)
		}}
	if err := w.load(); err != nil {
		var re *readError
		switch {
		case errors.As(err, &re):
			return nil, usagef("--encryption-keys-file %s: %v", file, re.err)
		case errors.Is(err, errEmptyFile):
			return nil, nil
		default:
			return nil, usagef("encryption keys: %v", err)
		}
	}
	kr := w.get()
	w.onChange = kr.Replace
	a.watch.add(w)
	return kr, nil
}

// recheck returns what runs after a credential of the issuer changed: the
// token h is checked against the new credential at once, rather than at
// its next refresh. A token minted under the previous credential is
// another credential's (DESIGN.md), so Handle.Refresh with no minimum
// fetches one under the new credential, once for the fleet; a token that
// another replica already fetched under it is taken as it is.
func (a *app) recheck(h *tokencache.Handle) func(context.Context) {
	return func(ctx context.Context) {
		rctx, cancel := context.WithTimeout(ctx, tickTimeout)
		defer cancel()
		res, err := h.Refresh(rctx, 0, false)
		if err != nil {
			if ctx.Err() == nil {
				a.log.Warn("tokencache: no token under the new credential yet; the held token is served until it expires", "err", a.explainLine(err))
			}
			return
		}
		a.log.Info("tokencache: token checked against the new credential", "fetched", res.Refreshed, "token", res.Token)
	}
}
