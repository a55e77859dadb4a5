package cli

import (
	"bufio"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/internal/testutil"
)

// TestRedisTLSFilesApplyToNewConnections: the CA file and the client
// certificate and key are re-read, and each new connection to a mutual-TLS
// redis-server uses the files of the moment: another CA fails the next
// connection, the right one restores it; a certificate the server's CA did
// not sign is refused by the server; an unusable file (not PEM, a key that
// does not match) keeps the previous one and logs a line naming the file.
func TestRedisTLSFilesApplyToNewConnections(t *testing.T) {
	srv := redistest.StartTLS(t, true)
	other := redistest.GenerateTLS(t, t.TempDir())
	dir := t.TempDir()
	read := func(p string) string {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	caPEM, certPEM, keyPEM := read(srv.TLS.CAFile), read(srv.TLS.ClientCertFile), read(srv.TLS.ClientKeyFile)
	ca, cert, key := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writeFileAtomic(t, ca, caPEM)
	writeFileAtomic(t, cert, certPEM)
	writeFileAtomic(t, key, keyPEM)

	var logs testutil.Buffer
	a := &app{g: globals{redisCAFile: ca, redisCertFile: cert, redisKeyFile: key}, log: slog.New(slog.NewTextHandler(&logs, nil))}
	tc, err := a.redisTLS()
	if err != nil {
		t.Fatal(err)
	}
	rc, err := openRedis(srv.URL(), tc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rc.Close() })
	o := rc.client.(*redis.Client).Options()
	// pingNew makes a new connection and sends PING: with TLS 1.3 the
	// server checks the client certificate after the handshake, so the
	// answer (or the lack of one) is what says it was accepted.
	pingNew := func() error {
		conn, err := o.Dialer(context.Background(), "tcp", o.Addr)
		if err != nil {
			return err
		}
		defer conn.Close()
		if _, err := conn.Write([]byte("PING\r\n")); err != nil {
			return err
		}
		line, err := bufio.NewReader(conn).ReadString('\n')
		if err == nil && !strings.HasPrefix(line, "+PONG") {
			return &readError{path: "PING", err: os.ErrInvalid}
		}
		return err
	}
	step := func(what string, change func(), wantOK bool) {
		t.Helper()
		change()
		if got := a.reloadAll(false); got {
			t.Errorf("%s: reported a credential change (TLS files are not the issuer's)", what)
		}
		if err := pingNew(); (err == nil) != wantOK {
			t.Errorf("%s: new connection error %v, want ok=%v", what, err, wantOK)
		}
	}
	if err := pingNew(); err != nil {
		t.Fatalf("with the files at start: %v", err)
	}
	step("another CA", func() { writeFileAtomic(t, ca, read(other.CAFile)) }, false)
	step("the right CA again", func() { writeFileAtomic(t, ca, caPEM) }, true)
	step("a CA file without PEM", func() { writeFileAtomic(t, ca, "not a certificate\n") }, true)
	if n := countLines(logs.String(), "the secret file is unusable", "file="+ca); n != 1 {
		t.Errorf("%d lines naming the CA file, want 1:\n%s", n, logs.String())
	}
	step("a certificate of another CA", func() {
		writeFileAtomic(t, cert, read(other.ClientCertFile))
		writeFileAtomic(t, key, read(other.ClientKeyFile))
	}, false)
	step("a key that does not match", func() { writeFileAtomic(t, cert, certPEM) }, false)
	if n := countLines(logs.String(), "the secret file is unusable", "file="+cert+","+key); n != 1 {
		t.Errorf("%d lines naming the certificate and key files, want 1:\n%s", n, logs.String())
	}
	step("the right pair again", func() { writeFileAtomic(t, key, keyPEM) }, true)
	if err := rc.ping(context.Background()); err != nil {
		t.Errorf("the client's own pool after the rotations: %v", err)
	}
	if strings.Contains(logs.String(), "PRIVATE KEY") {
		t.Error("a log line holds the key")
	}
}
