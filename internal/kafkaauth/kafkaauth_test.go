package kafkaauth_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/usagemeter/metering/internal/kafkaauth"
	"github.com/usagemeter/metering/internal/testkit/testpki"
)

// files writes a CA and a client pair issued by it into a test directory.
type files struct{ ca, cert, key, junk string }

func writeFiles(t *testing.T, ca *testpki.CA) files {
	t.Helper()
	dir := t.TempDir()
	pair := ca.MustIssue(t, "client")
	return files{
		ca:   testpki.MustWriteFile(t, dir, "ca.pem", ca.CertPEM),
		cert: testpki.MustWriteFile(t, dir, "client.pem", pair.CertPEM),
		key:  testpki.MustWriteFile(t, dir, "client-key.pem", pair.KeyPEM),
		junk: testpki.MustWriteFile(t, dir, "junk.pem", []byte("not a certificate")),
	}
}

func TestNewRejectsIncoherentConfigs(t *testing.T) {
	t.Parallel()
	f := writeFiles(t, testpki.MustCA(t, "kafkaauth test CA"))
	tests := []struct {
		name    string
		cfg     kafkaauth.Config
		wantErr string // "" means accepted
		want    string // String() when accepted
	}{
		{"zero is plaintext", kafkaauth.Config{}, "", "PLAINTEXT"},
		{"tls with system roots", kafkaauth.Config{TLS: true}, "", "SSL"},
		{"tls with a CA and a client certificate", kafkaauth.Config{TLS: true, CAFile: f.ca, CertFile: f.cert, KeyFile: f.key}, "", "SSL (client certificate)"},
		{"sasl_ssl scram-sha-512", kafkaauth.Config{TLS: true, CAFile: f.ca, SASLMechanism: "scram-sha-512", SASLUsername: "u", SASLPassword: "hunter2"}, "", "SASL_SSL (SCRAM-SHA-512 as u)"},
		{"mechanism in capitals", kafkaauth.Config{TLS: true, SASLMechanism: "SCRAM-SHA-256", SASLUsername: "u", SASLPassword: "hunter2"}, "", "SASL_SSL (SCRAM-SHA-256 as u)"},
		{"sasl_plaintext plain", kafkaauth.Config{SASLMechanism: "plain", SASLUsername: "u", SASLPassword: "hunter2"}, "", "SASL_PLAINTEXT (PLAIN as u)"},
		{"insecure is named", kafkaauth.Config{TLS: true, InsecureSkipVerify: true}, "", "SSL (broker certificates NOT verified)"},
		{"CA without TLS", kafkaauth.Config{CAFile: f.ca}, "KAFKA_TLS_CA_FILE is set but KAFKA_TLS is not", ""},
		{"server name without TLS", kafkaauth.Config{ServerName: "kafka"}, "KAFKA_TLS_SERVER_NAME is set but KAFKA_TLS is not", ""},
		{"insecure without TLS", kafkaauth.Config{InsecureSkipVerify: true}, "KAFKA_TLS_INSECURE_SKIP_VERIFY", ""},
		{"certificate without key", kafkaauth.Config{TLS: true, CertFile: f.cert}, "go together", ""},
		{"key without certificate", kafkaauth.Config{TLS: true, KeyFile: f.key}, "go together", ""},
		{"certificate and key swapped", kafkaauth.Config{TLS: true, CertFile: f.key, KeyFile: f.cert}, "KAFKA_TLS_CERT_FILE and KAFKA_TLS_KEY_FILE", ""},
		{"missing CA file", kafkaauth.Config{TLS: true, CAFile: f.ca + ".missing"}, "KAFKA_TLS_CA_FILE", ""},
		{"CA file without a certificate", kafkaauth.Config{TLS: true, CAFile: f.junk}, "holds no PEM certificate", ""},
		{"unknown mechanism", kafkaauth.Config{SASLMechanism: "gssapi", SASLUsername: "u", SASLPassword: "p"}, `KAFKA_SASL_MECHANISM "gssapi"`, ""},
		{"mechanism without username", kafkaauth.Config{SASLMechanism: "plain", SASLPassword: "p"}, "needs KAFKA_SASL_USERNAME", ""},
		{"mechanism without password", kafkaauth.Config{SASLMechanism: "scram-sha-512", SASLUsername: "u"}, "KAFKA_SASL_PASSWORD_FILE", ""},
		{"credentials without mechanism", kafkaauth.Config{SASLUsername: "u", SASLPassword: "p"}, "KAFKA_SASL_MECHANISM is not", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, err := kafkaauth.New(tt.cfg)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want it to mention %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := s.String(); got != tt.want {
				t.Errorf("String() = %q, want %q", got, tt.want)
			}
			if strings.Contains(s.String(), "hunter2") {
				t.Errorf("String() %q shows the password", s.String())
			}
		})
	}
}

func TestDialerAndTransportCarryTheSettings(t *testing.T) {
	t.Parallel()
	f := writeFiles(t, testpki.MustCA(t, "kafkaauth test CA"))
	var nilSec *kafkaauth.Security
	if d := nilSec.Dialer(); d.TLS != nil || d.SASLMechanism != nil || d.Timeout == 0 {
		t.Errorf("a nil Security's dialer: TLS %v, SASL %v, timeout %s", d.TLS, d.SASLMechanism, d.Timeout)
	}
	if tr := nilSec.Transport(); tr != nil {
		t.Errorf("a nil Security's shared transport is %v, want nil (kafka-go's default)", tr)
	}
	if tr := nilSec.NewTransport(); tr.TLS != nil || tr.SASL != nil {
		t.Error("a nil Security's transport has TLS or SASL")
	}
	plain, err := kafkaauth.New(kafkaauth.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if d, tr := plain.Dialer(), plain.NewTransport(); d.TLS != nil || d.SASLMechanism != nil || tr.TLS != nil || tr.SASL != nil {
		t.Error("the zero Config gives TLS or SASL")
	}
	for _, mech := range []struct{ cfg, name string }{{"plain", "PLAIN"}, {"scram-sha-256", "SCRAM-SHA-256"}, {"scram-sha-512", "SCRAM-SHA-512"}} {
		s, err := kafkaauth.New(kafkaauth.Config{TLS: true, CAFile: f.ca, CertFile: f.cert, KeyFile: f.key, ServerName: "kafka.internal",
			SASLMechanism: mech.cfg, SASLUsername: "u", SASLPassword: "p"})
		if err != nil {
			t.Fatal(err)
		}
		d, tr := s.Dialer(), s.NewTransport()
		if shared, ok := s.Transport().(*kafka.Transport); !ok || shared != s.Transport() || shared.TLS == nil || shared.SASL == nil {
			t.Errorf("%s: the shared transport %v is not one transport with the settings", mech.cfg, s.Transport())
		}
		for what, c := range map[string]*tls.Config{"dialer": d.TLS, "transport": tr.TLS} {
			if c == nil || c.RootCAs == nil || len(c.Certificates) != 1 || c.ServerName != "kafka.internal" || c.InsecureSkipVerify || c.MinVersion < tls.VersionTLS12 {
				t.Errorf("%s %s: TLS config %+v", mech.cfg, what, c)
			}
		}
		if d.SASLMechanism == nil || d.SASLMechanism.Name() != mech.name || tr.SASL == nil || tr.SASL.Name() != mech.name {
			t.Errorf("%s: SASL %v / %v, want %s", mech.cfg, d.SASLMechanism, tr.SASL, mech.name)
		}
		if d.TLS == tr.TLS {
			t.Error("the dialer and the transport share one *tls.Config; kafka-go may set ServerName on it")
		}
	}
	insecure, err := kafkaauth.New(kafkaauth.Config{TLS: true, InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	if !insecure.Insecure() || !insecure.Dialer().TLS.InsecureSkipVerify || plain.Insecure() {
		t.Error("Insecure does not follow InsecureSkipVerify")
	}
}

// TestTLSVerifiesTheBroker: the TLS settings trust the given CA and only
// it, and present the client certificate to a broker that asks for one.
func TestTLSVerifiesTheBroker(t *testing.T) {
	t.Parallel()
	ca, other := testpki.MustCA(t, "broker CA"), testpki.MustCA(t, "someone else's CA")
	cfg := ca.MustServerConfig(t, "127.0.0.1")
	cfg.ClientAuth, cfg.ClientCAs = tls.RequireAndVerifyClientCert, ca.Pool()
	ln := testpki.MustListen(t, cfg)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.(*tls.Conn).Handshake()
				_, _ = c.Read(make([]byte, 1))
			}()
		}
	}()
	good, bad := writeFiles(t, ca), writeFiles(t, other)
	tests := []struct {
		name    string
		cfg     kafkaauth.Config
		wantErr string
	}{
		{"trusted CA and client certificate", kafkaauth.Config{TLS: true, CAFile: good.ca, CertFile: good.cert, KeyFile: good.key}, ""},
		{"untrusted CA", kafkaauth.Config{TLS: true, CAFile: bad.ca, CertFile: good.cert, KeyFile: good.key}, "certificate signed by unknown authority"},
		{"wrong server name", kafkaauth.Config{TLS: true, CAFile: good.ca, CertFile: good.cert, KeyFile: good.key, ServerName: "kafka.example"}, "kafka.example"},
		{"no client certificate", kafkaauth.Config{TLS: true, CAFile: good.ca}, "certificate required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, err := kafkaauth.New(tt.cfg)
			if err != nil {
				t.Fatal(err)
			}
			err = handshake(ln.Addr().String(), s.TLSConfig())
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("handshake: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("handshake error %v, want it to mention %q", err, tt.wantErr)
			}
		})
	}
}

// handshake dials addr as kafka-go does (ServerName from the address when
// unset) and completes a TLS handshake and one read, where a TLS 1.3
// server's refusal of the client certificate arrives.
func handshake(addr string, cfg *tls.Config) error {
	if cfg.ServerName == "" {
		cfg.ServerName, _, _ = net.SplitHostPort(addr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d := tls.Dialer{Config: cfg}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte{0}); err != nil {
		return err
	}
	if _, err := c.Read(make([]byte, 1)); err != nil && !errors.Is(err, net.ErrClosed) && !isEOF(err) {
		return err
	}
	return nil
}

func isEOF(err error) bool { return err != nil && err.Error() == "EOF" }

func TestLogStartWarnsWhenCertificatesAreNotVerified(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		cfg      kafkaauth.Config
		wantWarn bool
	}{{kafkaauth.Config{TLS: true}, false}, {kafkaauth.Config{TLS: true, InsecureSkipVerify: true}, true}} {
		s, err := kafkaauth.New(tt.cfg)
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		s.LogStart(context.Background(), slog.New(slog.NewTextHandler(&buf, nil)))
		if got := strings.Contains(buf.String(), "level=WARN") && strings.Contains(buf.String(), "KAFKA_TLS_INSECURE_SKIP_VERIFY"); got != tt.wantWarn {
			t.Errorf("%+v: warned %v, want %v:\n%s", tt.cfg, got, tt.wantWarn, buf.String())
		}
		if !strings.Contains(buf.String(), "security=SSL") && !strings.Contains(buf.String(), `security="SSL `) {
			t.Errorf("the start log does not name the protocol:\n%s", buf.String())
		}
	}
}

func TestIsRefusalTellsSettingsFromOutages(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"wrong password", fmt.Errorf("could not authenticate: %w", kafka.SASLAuthenticationFailed), true},
		{"mechanism not enabled", fmt.Errorf("handshake: %w", kafka.UnsupportedSASLMechanism), true},
		{"untrusted CA", &tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}, true},
		{"wrong name", fmt.Errorf("dial: %w", x509.HostnameError{Certificate: &x509.Certificate{}, Host: "kafka"}), true},
		{"client certificate refused", errors.New("SASL handshake failed: remote error: tls: bad certificate"), true},
		{"connection refused", &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connect: connection refused")}, false},
		{"timeout", context.DeadlineExceeded, false},
		{"broker not available", kafka.BrokerNotAvailable, false},
	}
	for _, tt := range tests {
		if got := kafkaauth.IsRefusal(tt.err); got != tt.want {
			t.Errorf("%s: IsRefusal(%v) = %v, want %v", tt.name, tt.err, got, tt.want)
		}
	}
}

// TestStartAndExplain: with TLS on, Start fails on a broker whose
// certificate does not verify and only logs one that does not answer;
// Explain adds the direct connection's reason to a request's error.
func TestStartAndExplain(t *testing.T) {
	t.Parallel()
	ca, other := testpki.MustCA(t, "broker CA"), testpki.MustCA(t, "another CA")
	ln := testpki.MustListen(t, ca.MustServerConfig(t, "127.0.0.1"))
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _ = c.(*tls.Conn).Handshake(); c.Close() }()
		}
	}()
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := closed.Addr().String()
	closed.Close()

	untrusting, err := kafkaauth.New(kafkaauth.Config{TLS: true, CAFile: writeFiles(t, other).ca})
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	ctx := context.Background()
	err = untrusting.Start(ctx, log, []string{ln.Addr().String()})
	if err == nil || !strings.Contains(err.Error(), "certificate signed by unknown authority") || !strings.Contains(err.Error(), "KAFKA_TLS") {
		t.Errorf("Start against an untrusted broker: %v, want an error naming the certificate and the settings", err)
	}
	if err := untrusting.Start(ctx, log, []string{down}); err != nil {
		t.Errorf("Start with the broker down: %v, want only a warning", err)
	}
	var plain *kafkaauth.Security
	if err := plain.Start(ctx, log, []string{down}); err != nil {
		t.Errorf("plaintext Start: %v, want no connection at all", err)
	}

	requestErr := fmt.Errorf("creating topics: %w", kafka.BrokerNotAvailable)
	explained := untrusting.Explain(ctx, []string{ln.Addr().String()}, requestErr)
	if !errors.Is(explained, kafka.BrokerNotAvailable) || !kafkaauth.IsRefusal(explained) || !strings.Contains(explained.Error(), "unknown authority") {
		t.Errorf("Explain = %v, want the request's error and the certificate's", explained)
	}
	if got := plain.Explain(ctx, []string{down}, requestErr); got != requestErr {
		t.Errorf("plaintext Explain = %v, want the error unchanged", got)
	}
	if got := untrusting.Explain(ctx, []string{down}, nil); got != nil {
		t.Errorf("Explain(nil) = %v", got)
	}
}
