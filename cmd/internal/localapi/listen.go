package localapi

import (
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
)

// DefaultSocketMode is the mode of a Unix socket: its owner only, so no
// other user of the machine can ask for the token.
const DefaultSocketMode os.FileMode = 0o600

// MinSecretLen is the shortest bearer secret accepted: 16 bytes, so that
// it cannot be guessed over a rate-limited listener.
const MinSecretLen = 16

// ListenConfig is where and how the local API listens. The rules:
//
//   - "unix:PATH": a Unix socket created with Mode (DefaultSocketMode if
//     zero); the bearer secret is optional (the mode is the access rule).
//   - a loopback TCP address (127.0.0.0/8, ::1, localhost): the bearer
//     secret is required.
//   - any other address, including ":port" (every interface): TLS and the
//     secret are both required.
type ListenConfig struct {
	Addr string
	// Mode is the Unix socket's permission bits; 0 means DefaultSocketMode.
	Mode os.FileMode
	// Secret is the bearer secret clients must send ("Authorization:
	// Bearer <secret>"); empty means none.
	Secret string
	// CertFile and KeyFile, both or neither, serve TLS.
	CertFile, KeyFile string
	// GetCertificate, if not nil, gives the certificate of each TLS
	// handshake instead of the pair Listen would load from CertFile and
	// KeyFile once (which must still be set: they say TLS is on), so that
	// a certificate renewed while the server runs is used by the next
	// connection.
	GetCertificate func(*tls.ClientHelloInfo) (*tls.Certificate, error)
}

// ConfigError is a listener configuration the rules refuse. Its message is
// one line naming the address and what is missing, never the secret.
type ConfigError struct {
	Addr string
	Msg  string
}

func (e *ConfigError) Error() string { return "listen " + e.Addr + ": " + e.Msg }

// SocketPath returns the path of a "unix:PATH" address, and whether it is one.
func SocketPath(addr string) (string, bool) {
	return strings.CutPrefix(addr, "unix:")
}

// Check applies the rules without listening.
func (c ListenConfig) Check() error {
	bad := func(format string, args ...any) error {
		return &ConfigError{Addr: c.Addr, Msg: fmt.Sprintf(format, args...)}
	}
	if c.Secret != "" && len(c.Secret) < MinSecretLen {
		return bad("the bearer secret is %d bytes, want at least %d", len(c.Secret), MinSecretLen)
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return bad("TLS needs both a certificate and a key file")
	}
	if path, ok := SocketPath(c.Addr); ok {
		if path == "" {
			return bad("empty socket path")
		}
		if c.Mode&^os.ModePerm != 0 {
			return bad("socket mode %#o has bits other than permissions", uint32(c.Mode))
		}
		if c.Mode&0o007 != 0 && c.Secret == "" {
			return bad("socket mode %#o lets every user of the machine ask for the token: set a bearer secret, or take the bits for others away (0600, or 0660 for a group)", uint32(c.Mode))
		}
		return nil
	}
	host, port, err := net.SplitHostPort(c.Addr)
	if err != nil {
		return bad("want unix:PATH or HOST:PORT")
	}
	if port == "" {
		return bad("no port")
	}
	if loopback(host) {
		if c.Secret == "" {
			return bad("TCP needs a bearer secret, even on loopback (or use a unix: socket)")
		}
		return nil
	}
	if c.Secret == "" || c.CertFile == "" {
		return bad("a non-loopback address needs both TLS and a bearer secret")
	}
	return nil
}

// loopback reports whether host names only this machine. An empty host
// (every interface) does not.
func loopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip != nil && ip.IsLoopback()
}

// Listen checks the rules and listens. A Unix socket gets its mode before
// it is reachable under its path: it is created under a random name in the
// same directory, given the mode, then renamed into place (a stale socket
// at the path is replaced; any other file there is an error). Closing the
// listener removes the socket.
func (c ListenConfig) Listen() (net.Listener, error) {
	if err := c.Check(); err != nil {
		return nil, err
	}
	var (
		ln  net.Listener
		err error
	)
	if path, ok := SocketPath(c.Addr); ok {
		ln, err = listenUnix(path, c.mode())
	} else {
		ln, err = net.Listen("tcp", c.Addr)
	}
	if err != nil {
		return nil, err
	}
	if c.CertFile == "" {
		return ln, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: c.GetCertificate}
	if c.GetCertificate == nil {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			_ = ln.Close()
			return nil, &ConfigError{Addr: c.Addr, Msg: fmt.Sprintf("TLS certificate: %v", err)}
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tls.NewListener(ln, tc), nil
}

func (c ListenConfig) mode() os.FileMode {
	if c.Mode == 0 {
		return DefaultSocketMode
	}
	return c.Mode
}

func listenUnix(path string, mode os.FileMode) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("listen unix:%s: a file that is not a socket is in the way", path)
		}
		if conn, err := net.Dial("unix", path); err == nil {
			_ = conn.Close()
			return nil, fmt.Errorf("listen unix:%s: another server is listening there", path)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("listen unix:%s: %w", path, err)
	}
	// The socket is created in a directory of its own that only this
	// user may enter (mode 0700, whatever the umask), so that under its
	// temporary name, before it has its mode, nobody else can connect;
	// then it gets its mode and is renamed into place (the same file
	// system: the directory is beside the path).
	var b [6]byte
	_, _ = rand.Read(b[:])
	dir := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+"."+hex.EncodeToString(b[:]))
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, fmt.Errorf("listen unix:%s: %w", path, err)
	}
	defer os.Remove(dir)
	if err := os.Chmod(dir, 0o700); err != nil { // the umask may have taken bits, never added any
		return nil, fmt.Errorf("listen unix:%s: %w", path, err)
	}
	tmp := filepath.Join(dir, "s")
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen unix:%s: %w", path, err)
	}
	ul.SetUnlinkOnClose(false)
	fail := func(err error) (net.Listener, error) {
		_ = ul.Close()
		_ = os.Remove(tmp)
		return nil, fmt.Errorf("listen unix:%s: %w", path, err)
	}
	if socketCreated != nil {
		socketCreated(tmp)
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(err)
	}
	return &unixListener{UnixListener: ul, path: path}, nil
}

// socketCreated, if not nil, is called with the socket's temporary path
// once it exists, before it has its mode: for tests.
var socketCreated func(tmp string)

// unixListener removes its socket (under its final name) on Close.
type unixListener struct {
	*net.UnixListener
	path string
}

// Addr names the socket by its final path, not the name it was created under.
func (l *unixListener) Addr() net.Addr { return &net.UnixAddr{Name: l.path, Net: "unix"} }

func (l *unixListener) Close() error {
	err := l.UnixListener.Close()
	_ = os.Remove(l.path)
	return err
}
