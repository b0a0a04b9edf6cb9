// Package kafkaauth turns the Kafka transport-security settings (TLS,
// client certificates, SASL PLAIN or SCRAM) into the kafka-go values that
// carry them: a *tls.Config, a sasl.Mechanism, and from those a
// *kafka.Dialer (readers, consumer groups, Conn) and a shared
// *kafka.Transport (writers and clients). Every place in the product that
// talks to Kafka (internal/kafkalog's Cluster, the public Producer through
// its Transport) takes its Dialer and Transport from the one Security the
// service's config built at start, so a service never speaks plaintext to
// one broker and TLS to another. kafka-go reports a broker whose TLS
// handshake or SASL authentication failed as "Broker Not Available";
// Explain and Start put the real reason back.
//
// Invariant: New accepts only a coherent Config (it reads the CA, the
// certificate and the key, and rejects a half-given client certificate, a
// mechanism without a username or password, credentials without a
// mechanism, and TLS file options without TLS); the Dialer and Transport
// of a Security speak TLS exactly when Config.TLS is set and SASL exactly
// when a mechanism is named; Start fails when the brokers refuse the
// settings and only warns when they do not answer; and no kafka-go client
// in the product falls back to kafka-go's plaintext defaults
// (TestEveryKafkaClientTakesTheSecurity, TestNewRejectsIncoherentConfigs, TestDialerAndTransportCarryTheSettings,
// TestTLSVerifiesTheBroker, TestStartAndExplain; against a real SASL_SSL
// broker, internal/testkit/kafkasuite's SASLSSL scenario).
package kafkaauth

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"
	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/segmentio/kafka-go/sasl/scram"
)

// SASL mechanism names, as KAFKA_SASL_MECHANISM spells them.
const (
	Plain       = "plain"
	ScramSHA256 = "scram-sha-256"
	ScramSHA512 = "scram-sha-512"
)

// Mechanisms lists the SASL mechanisms New accepts.
var Mechanisms = []string{Plain, ScramSHA256, ScramSHA512}

// Config is the transport security of the Kafka clients, as the services'
// environment gives it. The zero value is plaintext without SASL.
type Config struct {
	// TLS turns TLS on for every broker connection (KAFKA_TLS).
	TLS bool
	// CAFile is a PEM file of the certificate authorities that sign the
	// brokers' certificates (KAFKA_TLS_CA_FILE); empty means the system's
	// roots.
	CAFile string
	// CertFile and KeyFile are the client certificate and its key, PEM,
	// for brokers that require client authentication (mutual TLS).
	CertFile, KeyFile string
	// ServerName is the name checked against the brokers' certificates;
	// empty means each broker's host as the client dials it.
	ServerName string
	// InsecureSkipVerify accepts any broker certificate. For tests only: it
	// gives up the authentication of the broker.
	InsecureSkipVerify bool
	// SASLMechanism is "", "plain", "scram-sha-256" or "scram-sha-512".
	SASLMechanism string
	// SASLUsername and SASLPassword are the SASL credentials.
	SASLUsername, SASLPassword string
}

// Security is a checked Config, ready to configure clients. A nil
// *Security is plaintext without SASL. It is safe for concurrent use.
type Security struct {
	tls  *tls.Config
	mech sasl.Mechanism
	desc string

	shareOnce sync.Once
	shared    *kafka.Transport
}

// dialTimeout is how long a connection to a broker may take to open,
// TLS handshake and SASL included, as in kafka-go's defaults.
const dialTimeout = 10 * time.Second

// New checks c, reads the files it names and returns the Security that
// applies it. Errors name the environment variable to fix.
func New(c Config) (*Security, error) {
	var errs []error
	if !c.TLS {
		for _, f := range []struct{ env, v string }{
			{"KAFKA_TLS_CA_FILE", c.CAFile}, {"KAFKA_TLS_CERT_FILE", c.CertFile}, {"KAFKA_TLS_KEY_FILE", c.KeyFile},
			{"KAFKA_TLS_SERVER_NAME", c.ServerName},
		} {
			if f.v != "" {
				errs = append(errs, fmt.Errorf("%s is set but KAFKA_TLS is not: set KAFKA_TLS=true to use TLS", f.env))
			}
		}
		if c.InsecureSkipVerify {
			errs = append(errs, errors.New("KAFKA_TLS_INSECURE_SKIP_VERIFY is set but KAFKA_TLS is not"))
		}
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		errs = append(errs, errors.New("KAFKA_TLS_CERT_FILE and KAFKA_TLS_KEY_FILE go together: set both for a client certificate, or neither"))
	}
	mech, err := mechanism(c)
	if err != nil {
		errs = append(errs, err)
	}
	s := &Security{mech: mech}
	if c.TLS {
		if s.tls, err = tlsConfig(c); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	s.desc = describe(c)
	return s, nil
}

func mechanism(c Config) (sasl.Mechanism, error) {
	name := strings.ToLower(strings.TrimSpace(c.SASLMechanism))
	if name == "" {
		if c.SASLUsername != "" || c.SASLPassword != "" {
			return nil, fmt.Errorf("KAFKA_SASL_USERNAME or a password is set but KAFKA_SASL_MECHANISM is not: set it to one of %s", strings.Join(Mechanisms, ", "))
		}
		return nil, nil
	}
	if c.SASLUsername == "" || c.SASLPassword == "" {
		return nil, fmt.Errorf("KAFKA_SASL_MECHANISM=%s needs KAFKA_SASL_USERNAME and a password (KAFKA_SASL_PASSWORD or KAFKA_SASL_PASSWORD_FILE)", name)
	}
	switch name {
	case Plain:
		return plain.Mechanism{Username: c.SASLUsername, Password: c.SASLPassword}, nil
	case ScramSHA256, ScramSHA512:
		algo := scram.SHA256
		if name == ScramSHA512 {
			algo = scram.SHA512
		}
		m, err := scram.Mechanism(algo, c.SASLUsername, c.SASLPassword)
		if err != nil {
			return nil, fmt.Errorf("KAFKA_SASL_USERNAME or password: %w", err)
		}
		return m, nil
	default:
		return nil, fmt.Errorf("KAFKA_SASL_MECHANISM %q: use one of %s", c.SASLMechanism, strings.Join(Mechanisms, ", "))
	}
}

func tlsConfig(c Config) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.ServerName, InsecureSkipVerify: c.InsecureSkipVerify} //nolint:gosec // InsecureSkipVerify is the operator's explicit, logged choice.
	var errs []error
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			errs = append(errs, fmt.Errorf("KAFKA_TLS_CA_FILE: %w", err))
		} else {
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				errs = append(errs, fmt.Errorf("KAFKA_TLS_CA_FILE %s holds no PEM certificate", c.CAFile))
			}
			cfg.RootCAs = pool
		}
	}
	if c.CertFile != "" && c.KeyFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			errs = append(errs, fmt.Errorf("KAFKA_TLS_CERT_FILE and KAFKA_TLS_KEY_FILE: %w", err))
		} else {
			cfg.Certificates = []tls.Certificate{cert}
		}
	}
	return cfg, errors.Join(errs...)
}

func describe(c Config) string {
	proto := "PLAINTEXT"
	switch {
	case c.TLS && c.SASLMechanism != "":
		proto = "SASL_SSL"
	case c.TLS:
		proto = "SSL"
	case c.SASLMechanism != "":
		proto = "SASL_PLAINTEXT"
	}
	var parts []string
	if c.SASLMechanism != "" {
		parts = append(parts, strings.ToUpper(c.SASLMechanism)+" as "+c.SASLUsername)
	}
	if c.CertFile != "" {
		parts = append(parts, "client certificate")
	}
	if c.InsecureSkipVerify {
		parts = append(parts, "broker certificates NOT verified")
	}
	if len(parts) == 0 {
		return proto
	}
	return proto + " (" + strings.Join(parts, ", ") + ")"
}

// String names the security protocol in Kafka's words (PLAINTEXT, SSL,
// SASL_PLAINTEXT, SASL_SSL) with the mechanism and user, never the
// password: for the start-up log.
func (s *Security) String() string {
	if s == nil {
		return "PLAINTEXT"
	}
	return s.desc
}

// LogStart logs, at start, how the service reaches Kafka, and warns loudly
// when broker certificates go unverified.
func (s *Security) LogStart(ctx context.Context, log *slog.Logger) {
	log.InfoContext(ctx, "kafka transport security", "security", s.String())
	if s.Insecure() {
		log.WarnContext(ctx, "KAFKA_TLS_INSECURE_SKIP_VERIFY is on: any broker certificate is accepted, so anyone between this service and Kafka can read and change usage events; use it in tests only")
	}
}

// Start is LogStart, then, when TLS or SASL is on, one connection to the
// brokers: a broker that refuses the credentials or a certificate that
// fails verification is an error (waiting does not cure it, so the
// service should exit saying so); a broker that does not answer yet is
// only logged, as the services tolerate a Kafka that comes up later.
func (s *Security) Start(ctx context.Context, log *slog.Logger, brokers []string) error {
	s.LogStart(ctx, log)
	if !s.secured() {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, startCheckTimeout)
	defer cancel()
	if err := s.Check(ctx, brokers); err != nil {
		if IsRefusal(err) {
			return fmt.Errorf("kafka refuses this service's TLS or SASL settings (KAFKA_TLS*, KAFKA_SASL_*): %w", err)
		}
		log.WarnContext(ctx, "kafka did not answer at start", "security", s.String(), "err", err)
	}
	return nil
}

// startCheckTimeout bounds Start's connection to the brokers.
const startCheckTimeout = 5 * time.Second

func (s *Security) secured() bool { return s != nil && (s.tls != nil || s.mech != nil) }

// Check opens one connection to the first broker of brokers that takes
// it, TLS handshake and SASL authentication included, and closes it. When
// none does, the error gives each broker's reason as the TLS or SASL
// layer stated it.
func (s *Security) Check(ctx context.Context, brokers []string) error {
	var errs []error
	for _, b := range brokers {
		conn, err := s.Dialer().DialContext(ctx, "tcp", b)
		if err == nil {
			return conn.Close()
		}
		errs = append(errs, fmt.Errorf("%s: %w", b, err))
		if ctx.Err() != nil {
			break
		}
	}
	if len(errs) == 0 {
		return errors.New("no Kafka broker to connect to")
	}
	return errors.Join(errs...)
}

// explainTimeout bounds the connection Explain opens.
const explainTimeout = 5 * time.Second

// Explain returns err, a failed request to brokers, with the reason a
// direct connection to them fails added when TLS or SASL is on: kafka-go's
// clients report a broker whose TLS handshake or SASL authentication
// failed as "[8] Broker Not Available" and drop the reason. The result
// wraps both errors (errors.Is and errors.As see through it); nil stays
// nil.
func (s *Security) Explain(ctx context.Context, brokers []string, err error) error {
	if err == nil || !s.secured() {
		return err
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), explainTimeout)
	defer cancel()
	if cause := s.Check(ctx, brokers); cause != nil {
		return fmt.Errorf("%w; a direct connection fails: %w", err, cause)
	}
	return err
}

// IsRefusal reports whether err holds a broker's refusal of the client's
// credentials or certificate, or a broker certificate that failed
// verification: settings to fix, not an outage to wait out.
func IsRefusal(err error) bool {
	if errors.Is(err, kafka.SASLAuthenticationFailed) || errors.Is(err, kafka.UnsupportedSASLMechanism) || errors.Is(err, kafka.IllegalSASLState) {
		return true
	}
	if _, ok := errors.AsType[*tls.CertificateVerificationError](err); ok {
		return true
	}
	if _, ok := errors.AsType[x509.HostnameError](err); ok {
		return true
	}
	if _, ok := errors.AsType[x509.UnknownAuthorityError](err); ok {
		return true
	}
	// A broker's TLS alert (Go reports it only as text): a client
	// certificate missing or not trusted, or no protocol in common.
	return strings.Contains(err.Error(), "remote error: tls: ")
}

// Insecure reports whether broker certificates go unverified, which a
// service logs as a warning at start.
func (s *Security) Insecure() bool { return s != nil && s.tls != nil && s.tls.InsecureSkipVerify }

// TLSConfig returns a copy of the TLS configuration, nil without TLS.
func (s *Security) TLSConfig() *tls.Config {
	if s == nil || s.tls == nil {
		return nil
	}
	return s.tls.Clone()
}

// SASL returns the SASL mechanism, nil without SASL.
func (s *Security) SASL() sasl.Mechanism {
	if s == nil {
		return nil
	}
	return s.mech
}

// Dialer returns a new dialer with kafka-go's default timeouts and the
// settings of s, for kafka.ReaderConfig, kafka.ConsumerGroupConfig and
// kafka.Conn.
func (s *Security) Dialer() *kafka.Dialer {
	return &kafka.Dialer{Timeout: dialTimeout, DualStack: true, TLS: s.TLSConfig(), SASLMechanism: s.SASL()}
}

// Transport returns the transport that the service's kafka.Writers and
// kafka.Clients share, as kafka-go's own clients share
// kafka.DefaultTransport: one connection pool per broker, authenticated
// once. A nil Security returns nil, which kafka-go reads as its default.
func (s *Security) Transport() kafka.RoundTripper {
	if s == nil {
		return nil
	}
	s.shareOnce.Do(func() { s.shared = s.NewTransport() })
	return s.shared
}

// NewTransport returns a transport of its own with kafka-go's defaults and
// the settings of s, for a caller that wants fresh connections and
// metadata; the caller closes it with CloseIdleConnections.
func (s *Security) NewTransport() *kafka.Transport {
	return &kafka.Transport{TLS: s.TLSConfig(), SASL: s.SASL()}
}
