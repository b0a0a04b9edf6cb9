package testpki_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"testing"

	"github.com/usagemeter/metering/internal/testkit/testpki"
)

func TestIssuedCertificatesVerifyOnlyAgainstTheirCA(t *testing.T) {
	t.Parallel()
	ca, other := testpki.MustCA(t, "test CA"), testpki.MustCA(t, "other CA")
	pair := ca.MustIssue(t, "localhost", "127.0.0.1")
	if _, err := tls.X509KeyPair(pair.CertPEM, pair.KeyPEM); err != nil {
		t.Fatalf("the pair does not load: %v", err)
	}
	block, _ := pem.Decode(pair.CertPEM)
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"localhost", "127.0.0.1"} {
		if _, err := cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), DNSName: name}); err != nil {
			t.Errorf("%s: does not verify against its CA: %v", name, err)
		}
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), DNSName: "example.com"}); err == nil {
		t.Error("verifies for a name it was not issued for")
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: other.Pool(), DNSName: "localhost"}); err == nil {
		t.Error("verifies against another CA")
	}
	if _, err := ca.Issue(); err == nil {
		t.Error("Issue with no host succeeded")
	}
}

// TestServerConfigAndListen: a listener from MustListen with
// MustServerConfig completes a handshake with a client that trusts only
// the CA and checks the name the certificate was issued for.
func TestServerConfigAndListen(t *testing.T) {
	t.Parallel()
	ca := testpki.MustCA(t, "test CA")
	ln := testpki.MustListen(t, ca.MustServerConfig(t, "127.0.0.1"))
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.(*tls.Conn).Handshake()
	}()
	c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	c.Close()
}
