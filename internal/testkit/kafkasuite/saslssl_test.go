package kafkasuite_test

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/usagemeter/metering/internal/kafkaauth"
	"github.com/usagemeter/metering/internal/kafkalog"
	"github.com/usagemeter/metering/internal/testkit/kafkacluster"
	"github.com/usagemeter/metering/internal/testkit/testpki"
	"github.com/usagemeter/metering/internal/topics"
)

// probeLimit is how long a refused connection may take to be reported:
// a wrong password or an untrusted broker must fail fast, never hang.
const probeLimit = 15 * time.Second

// saslSSL: a one-broker cluster whose clients must speak SASL_SSL (TLS
// with a CA the test made, a client certificate required, then SCRAM).
// Every mechanism the product offers authenticates, the listener
// advertises only itself, and a wrong password, an untrusted CA, a
// missing client certificate or a plaintext client fail within probeLimit
// with an error that says why. The services, given only that listener and
// the KAFKA_TLS* and KAFKA_SASL_* settings, count every event exactly.
func saslSSL(t *testing.T, version string, figs *figures) {
	started := time.Now()
	ctx := context.Background()
	dir := t.TempDir()
	const user, password = "metering", "metering-secret-1"
	ca := testpki.MustCA(t, "metering test CA")
	stranger := testpki.MustCA(t, "a CA nobody trusts")
	brokerCert := ca.MustIssue(t, "127.0.0.1", "localhost")
	clientCert := ca.MustIssue(t, "metering-services")
	file := func(name string, data []byte) string { return testpki.MustWriteFile(t, dir, name, data) }
	caFile, strangerFile := file("ca.pem", ca.CertPEM), file("stranger.pem", stranger.CertPEM)
	certFile, keyFile := file("client.pem", clientCert.CertPEM), file("client-key.pem", clientCert.KeyPEM)
	passwordFile := file("kafka-password", []byte(password+"\n"))

	startCtx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	c, err := kafkacluster.Start(startCtx, kafkacluster.Options{Version: version, Nodes: 1, Root: repoRoot(t), Log: io.Discard,
		SASLSSL: &kafkacluster.SASLSSL{CertPEM: brokerCert.CertPEM, KeyPEM: brokerCert.KeyPEM, ClientCAPEM: ca.CertPEM,
			Users: map[string]string{user: password}}})
	if err != nil {
		t.Fatalf("starting Apache Kafka %s with a SASL_SSL listener: %v", version, err)
	}
	t.Cleanup(c.Stop)
	upIn := time.Since(started)
	secure := c.SecureBrokers()
	t.Logf("Apache Kafka %s, 1 broker, SASL_SSL on %v, up in %s", version, secure, upIn.Round(100*time.Millisecond))

	good := kafkaauth.Config{TLS: true, CAFile: caFile, CertFile: certFile, KeyFile: keyFile,
		SASLMechanism: kafkaauth.ScramSHA512, SASLUsername: user, SASLPassword: password}
	with := func(change func(*kafkaauth.Config)) kafkaauth.Config {
		cfg := good
		change(&cfg)
		return cfg
	}
	// Each mechanism, through the product's own metadata call.
	for _, mech := range kafkaauth.Mechanisms {
		cfg := with(func(c *kafkaauth.Config) { c.SASLMechanism = mech })
		if err := probe(ctx, secure, cfg); err != nil {
			t.Errorf("SASL_SSL with %s: %v", mech, err)
		}
	}
	// The listener advertises itself only, so a client that came in over
	// SASL_SSL is never sent to a plaintext port.
	sec, err := kafkaauth.New(good)
	if err != nil {
		t.Fatal(err)
	}
	tr := sec.NewTransport()
	meta, err := (&kafka.Client{Addr: kafka.TCP(secure...), Transport: tr, Timeout: 10 * time.Second}).Metadata(ctx, &kafka.MetadataRequest{})
	tr.CloseIdleConnections()
	if err != nil {
		t.Fatalf("metadata over SASL_SSL: %v", err)
	}
	for _, b := range meta.Brokers {
		if addr := net.JoinHostPort(b.Host, fmt.Sprint(b.Port)); addr != secure[b.ID] {
			t.Errorf("the SASL_SSL listener advertises broker %d at %s, want %s", b.ID, addr, secure[b.ID])
		}
	}

	refusals := []struct {
		name  string
		cfg   kafkaauth.Config
		check func(error) bool
		want  string
	}{
		{"wrong password", with(func(c *kafkaauth.Config) { c.SASLPassword = "not-the-password" }),
			func(err error) bool { return errors.Is(err, kafka.SASLAuthenticationFailed) }, "SASL Authentication Failed"},
		{"unknown user, SCRAM-SHA-256", with(func(c *kafkaauth.Config) { c.SASLMechanism, c.SASLUsername = kafkaauth.ScramSHA256, "mallory" }),
			func(err error) bool { return errors.Is(err, kafka.SASLAuthenticationFailed) }, "SASL Authentication Failed"},
		{"wrong password, PLAIN", with(func(c *kafkaauth.Config) { c.SASLMechanism, c.SASLPassword = kafkaauth.Plain, "not-the-password" }),
			func(err error) bool { return errors.Is(err, kafka.SASLAuthenticationFailed) }, "SASL Authentication Failed"},
		{"untrusted CA", with(func(c *kafkaauth.Config) { c.CAFile = strangerFile }),
			func(err error) bool { _, ok := errors.AsType[x509.UnknownAuthorityError](err); return ok }, "certificate signed by unknown authority"},
		{"wrong server name", with(func(c *kafkaauth.Config) { c.ServerName = "kafka.example.com" }),
			func(err error) bool { _, ok := errors.AsType[x509.HostnameError](err); return ok }, "not kafka.example.com"},
		{"no client certificate", with(func(c *kafkaauth.Config) { c.CertFile, c.KeyFile = "", "" }),
			func(err error) bool { return err != nil && !errors.Is(err, context.DeadlineExceeded) }, ""},
		{"plaintext client", kafkaauth.Config{},
			func(err error) bool { return err != nil && !errors.Is(err, context.DeadlineExceeded) }, ""},
	}
	for _, r := range refusals {
		t0 := time.Now()
		err := probe(ctx, secure, r.cfg)
		took := time.Since(t0)
		switch {
		case err == nil:
			t.Errorf("%s: the broker accepted the client", r.name)
		case !r.check(err) || !strings.Contains(err.Error(), r.want):
			t.Errorf("%s: error %v (%T), want one that says %q", r.name, err, err, r.want)
		case took > probeLimit:
			t.Errorf("%s: refused only after %s, want within %s", r.name, took.Round(100*time.Millisecond), probeLimit)
		default:
			t.Logf("%s: refused in %s: %v", r.name, took.Round(time.Millisecond), err)
		}
	}
	if t.Failed() {
		return
	}

	// The pipeline, configured as an operator would: the secure listener
	// only, the password in a file.
	kafkaEnv := []string{"KAFKA_TLS=true", "KAFKA_TLS_CA_FILE=" + caFile, "KAFKA_TLS_CERT_FILE=" + certFile, "KAFKA_TLS_KEY_FILE=" + keyFile,
		"KAFKA_SASL_MECHANISM=scram-sha-512", "KAFKA_SASL_USERNAME=" + user, "KAFKA_SASL_PASSWORD_FILE=" + passwordFile}
	e := startPipelineOn(t, c, "secure", strings.Join(secure, ","), kafkaEnv)
	var stats sendStats
	e.send(ctx, 4000, 200, 2, 0.3, &stats)
	e.waitConsumed(2 * time.Minute)
	windows := e.checkTruth()
	if b, err := os.ReadFile(filepath.Clean(e.st.LogFile)); err == nil && strings.Contains(string(b), password) {
		t.Error("the services' log holds the SASL password")
	}
	exitIn := refusedAtStart(t, e.st.DBURL, secure, kafkaEnv)
	figs.add("%s SASL_SSL: 1 broker up in %s; SCRAM-SHA-512, SCRAM-SHA-256 and PLAIN accepted; wrong password, unknown user, untrusted CA, wrong server name, missing client certificate and a plaintext client refused within %s; ingest + aggregator + biller over SASL_SSL (SCRAM-SHA-512, client certificate): %d events (%d unique), %d windows exact; ingest with a wrong password exits in %s saying why; %s",
		version, upIn.Round(100*time.Millisecond), probeLimit, stats.events.Load(), e.truth.unique(), windows, exitIn.Round(100*time.Millisecond), time.Since(started).Round(time.Second))
}

// refusedAtStart runs the ingest service with the pipeline's settings but
// a wrong password: it must exit non-zero within probeLimit with an error
// that names the SASL failure and the settings to fix, rather than serve
// and answer 503 for ever.
func refusedAtStart(t *testing.T, dbURL string, brokers, kafkaEnv []string) time.Duration {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "ingest")
	build := exec.Command("go", "build", "-o", bin, "./cmd/ingest")
	build.Dir = repoRoot(t)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building ingest: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*probeLimit)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin)
	cmd.Env = append(os.Environ(), "DATABASE_URL="+dbURL, "KAFKA_BROKERS="+strings.Join(brokers, ","), "HTTP_ADDR=127.0.0.1:0", "LOG_LEVEL=warn")
	for _, kv := range kafkaEnv {
		if !strings.HasPrefix(kv, "KAFKA_SASL_PASSWORD_FILE=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "KAFKA_SASL_PASSWORD=not-the-password")
	t0 := time.Now()
	out, err := cmd.CombinedOutput()
	took := time.Since(t0)
	if err == nil || ctx.Err() != nil || took > probeLimit {
		t.Fatalf("ingest with a wrong Kafka password: exit %v after %s, want a non-zero exit within %s; output:\n%s", err, took.Round(100*time.Millisecond), probeLimit, out)
	}
	for _, want := range []string{"SASL Authentication Failed", "KAFKA_SASL_"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("ingest with a wrong Kafka password exited without saying %q:\n%s", want, out)
		}
	}
	return took
}

// probe asks the brokers for the usage.events topic's metadata with the
// product's own call and the security cfg describes.
func probe(ctx context.Context, brokers []string, cfg kafkaauth.Config) error {
	sec, err := kafkaauth.New(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*probeLimit)
	defer cancel()
	err = kafkalog.Cluster{Brokers: brokers, Security: sec}.Ensure(ctx, 4, topics.UsageEvents)
	if tr, ok := sec.Transport().(*kafka.Transport); ok {
		tr.CloseIdleConnections()
	}
	return err
}
