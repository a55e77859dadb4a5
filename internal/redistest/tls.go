package redistest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TLSFiles is a throwaway PKI in PEM files: a CA, a server certificate for
// 127.0.0.1 and localhost, and a client certificate, all signed by the CA.
type TLSFiles struct {
	Dir            string
	CAFile         string // the CA certificate
	CertFile       string // the server's certificate
	KeyFile        string // the server's key
	ClientCertFile string
	ClientKeyFile  string
	// AuthClients says whether the server asks for (and checks) a client
	// certificate (redis-server's tls-auth-clients).
	AuthClients bool

	pool       *x509.CertPool
	clientCert tls.Certificate
}

// StartTLS launches a TLS-only redis-server (--port 0 --tls-port N) with a
// fresh PKI from GenerateTLS in its directory; with authClients it refuses
// clients without a certificate signed by the CA. Addr and Port are the
// TLS port, URL is rediss://, and Client trusts the CA and presents the
// client certificate.
func StartTLS(tb testing.TB, authClients bool, extra ...string) *Server {
	tb.Helper()
	Binary(tb) // skip before generating keys
	files := GenerateTLS(tb, tb.TempDir())
	files.AuthClients = authClients
	return start(tb, files, extra)
}

// ClientConfig returns a TLS configuration that trusts the CA and presents
// the client certificate.
func (f *TLSFiles) ClientConfig() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		RootCAs:      f.pool,
		Certificates: []tls.Certificate{f.clientCert},
	}
}

func (f *TLSFiles) serverArgs() []string {
	auth := "no"
	if f.AuthClients {
		auth = "yes"
	}
	return []string{
		"--tls-cert-file", f.CertFile,
		"--tls-key-file", f.KeyFile,
		"--tls-ca-cert-file", f.CAFile,
		"--tls-auth-clients", auth,
	}
}

func (s *Server) clientTLS() *tls.Config {
	if s.TLS == nil {
		return nil
	}
	return s.TLS.ClientConfig()
}

// GenerateTLS writes a new CA, a server certificate (127.0.0.1, ::1,
// localhost) and a client certificate, with ECDSA P-256 keys, into dir.
// Each call makes a CA of its own, so a second call gives a CA that the
// first one's server does not chain to.
func GenerateTLS(tb testing.TB, dir string) *TLSFiles {
	tb.Helper()
	now := time.Now()
	caKey := newKey(tb)
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(tb),
		Subject:               pkix.Name{CommonName: "tokencache test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		tb.Fatalf("redistest: CA certificate: %v", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		tb.Fatalf("redistest: CA certificate: %v", err)
	}
	leaf := func(cn string, usage x509.ExtKeyUsage) ([]byte, *ecdsa.PrivateKey) {
		key := newKey(tb)
		tmpl := &x509.Certificate{
			SerialNumber: serial(tb),
			Subject:      pkix.Name{CommonName: cn},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		}
		if usage == x509.ExtKeyUsageServerAuth {
			tmpl.DNSNames = []string{"localhost"}
			tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			tb.Fatalf("redistest: %s certificate: %v", cn, err)
		}
		return der, key
	}
	serverDER, serverKey := leaf("redis-server", x509.ExtKeyUsageServerAuth)
	clientDER, clientKey := leaf("tokencache", x509.ExtKeyUsageClientAuth)

	f := &TLSFiles{
		Dir:            dir,
		CAFile:         filepath.Join(dir, "ca.crt"),
		CertFile:       filepath.Join(dir, "redis.crt"),
		KeyFile:        filepath.Join(dir, "redis.key"),
		ClientCertFile: filepath.Join(dir, "client.crt"),
		ClientKeyFile:  filepath.Join(dir, "client.key"),
		pool:           x509.NewCertPool(),
	}
	f.pool.AddCert(ca)
	writePEM(tb, f.CAFile, "CERTIFICATE", caDER)
	writePEM(tb, f.CertFile, "CERTIFICATE", serverDER)
	writePEM(tb, f.KeyFile, "PRIVATE KEY", marshalKey(tb, serverKey))
	writePEM(tb, f.ClientCertFile, "CERTIFICATE", clientDER)
	writePEM(tb, f.ClientKeyFile, "PRIVATE KEY", marshalKey(tb, clientKey))
	f.clientCert, err = tls.LoadX509KeyPair(f.ClientCertFile, f.ClientKeyFile)
	if err != nil {
		tb.Fatalf("redistest: client key pair: %v", err)
	}
	return f
}

func newKey(tb testing.TB) *ecdsa.PrivateKey {
	tb.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatalf("redistest: key: %v", err)
	}
	return k
}

func serial(tb testing.TB) *big.Int {
	tb.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		tb.Fatalf("redistest: serial: %v", err)
	}
	return n
}

func marshalKey(tb testing.TB, k *ecdsa.PrivateKey) []byte {
	tb.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		tb.Fatalf("redistest: key: %v", err)
	}
	return der
}

func writePEM(tb testing.TB, path, typ string, der []byte) {
	tb.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		tb.Fatalf("redistest: %v", err)
	}
}
