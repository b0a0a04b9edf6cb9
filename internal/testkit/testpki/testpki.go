// Package testpki makes throwaway certificate authorities and the
// certificates they sign, in PEM, for tests of TLS connections to real
// brokers and databases: nothing to install, nothing kept.
//
// Invariant: a certificate Issue returns verifies against its CA's pool
// for each of the names and addresses it was issued for, and against no
// other CA (TestIssuedCertificatesVerifyOnlyAgainstTheirCA).
//
// Test and dev tooling, not product (see internal/testkit): a test helper,
// which may import testing; only tests import it.
package testpki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// CA is a certificate authority.
type CA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	// CertPEM is the CA's certificate, for trust stores.
	CertPEM []byte
}

// Pair is an issued certificate and its private key.
type Pair struct {
	// CertPEM is the certificate followed by its CA's: a full chain.
	CertPEM []byte
	// KeyPEM is the unencrypted private key in PKCS #8 ("PRIVATE KEY"),
	// the form Java (Kafka) and Postgres both read.
	KeyPEM []byte
}

// NewCA returns a CA valid for a day, named name.
func NewCA(name string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("testpki: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("testpki: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("testpki: %w", err)
	}
	return &CA{cert: cert, key: key, CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}, nil
}

// Issue returns a certificate for hosts (DNS names or IP addresses, the
// first also the common name), usable by servers and clients alike.
func (ca *CA) Issue(hosts ...string) (*Pair, error) {
	if len(hosts) == 0 {
		return nil, fmt.Errorf("testpki: Issue needs at least one host")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("testpki: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: hosts[0]},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, fmt.Errorf("testpki: %w", err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("testpki: %w", err)
	}
	chain := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), ca.CertPEM...)
	return &Pair{CertPEM: chain, KeyPEM: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8})}, nil
}

// Pool returns a pool holding only the CA's certificate.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

// WriteFile writes data to name in dir with mode 0600 and returns its path.
func WriteFile(dir, name string, data []byte) (string, error) {
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return "", fmt.Errorf("testpki: %w", err)
	}
	return path, nil
}

// The Must helpers below are the functions above for tests: each fails t
// (t.Fatal) where its counterpart returns an error. Only tests import this
// package, so it may import testing.

// MustCA is NewCA that fails t on error.
func MustCA(t testing.TB, name string) *CA {
	t.Helper()
	ca, err := NewCA(name)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// MustIssue is Issue that fails t on error.
func (ca *CA) MustIssue(t testing.TB, hosts ...string) *Pair {
	t.Helper()
	p, err := ca.Issue(hosts...)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// MustCertificate returns the pair as a tls.Certificate, failing t if it
// does not load.
func (p *Pair) MustCertificate(t testing.TB) tls.Certificate {
	t.Helper()
	cert, err := tls.X509KeyPair(p.CertPEM, p.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// MustServerConfig issues a certificate for hosts and returns a server TLS
// configuration that presents it and nothing else; set ClientAuth and
// ClientCAs on it to ask for client certificates.
func (ca *CA) MustServerConfig(t testing.TB, hosts ...string) *tls.Config {
	t.Helper()
	return &tls.Config{Certificates: []tls.Certificate{ca.MustIssue(t, hosts...).MustCertificate(t)}}
}

// MustListen listens for TLS connections with cfg on a free port of
// 127.0.0.1, failing t if it cannot; the listener closes when the test
// ends.
func MustListen(t testing.TB, cfg *tls.Config) net.Listener {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// MustWriteFile is WriteFile that fails t on error.
func MustWriteFile(t testing.TB, dir, name string, data []byte) string {
	t.Helper()
	path, err := WriteFile(dir, name, data)
	if err != nil {
		t.Fatal(err)
	}
	return path
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n
}
