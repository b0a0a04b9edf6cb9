// Package config loads each service's settings from environment variables
// and command-line flags of the same meaning (DATABASE_URL and
// -database-url); a flag wins over the variable, the variable over the
// default.
//
// Invariant: a loaded config is valid: every value was parsed and checked,
// and an error names the variable and what it expects.
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/usagemeter/metering/internal/anomaly"
	"github.com/usagemeter/metering/internal/kafkaauth"
	"github.com/usagemeter/metering/internal/recordsign"
)

// Common holds the settings every service has.
type Common struct {
	DatabaseURL  string
	KafkaBrokers []string
	HTTPAddr     string
	LogLevel     string
	// KafkaPartitions is used when a service creates a missing topic.
	KafkaPartitions int
	// ShutdownTimeout bounds the drain of in-flight work on SIGTERM.
	ShutdownTimeout time.Duration
	// HTTPMaxConnections caps the HTTP server's open connections (more
	// wait in the backlog); HTTPWriteTimeout cuts a request whose answer
	// is not read (or whose body is not sent) within it.
	HTTPMaxConnections int
	HTTPWriteTimeout   time.Duration
	// DedupHorizon is how old an event may be and how long ids are kept.
	DedupHorizon time.Duration
	// KafkaAuth is the Kafka clients' TLS and SASL settings (KAFKA_TLS*,
	// KAFKA_SASL_*), and KafkaSecurity the checked result that every
	// Kafka Dialer and Transport of the service is built from.
	KafkaAuth     kafkaauth.Config
	KafkaSecurity *kafkaauth.Security
}

// Defaults of the local stack.
const (
	DefaultDatabaseURL = "postgres://postgres@127.0.0.1:5432/metering?sslmode=disable"
	DefaultBrokers     = "127.0.0.1:9092"
)

// Ingest is cmd/ingest's configuration.
type Ingest struct {
	Common
	AdminAPIKey string
	// MaxBodyBytes bounds a request body, as sent and decompressed (413
	// above it).
	MaxBodyBytes int64
	// LargeBodyBytes: bodies above it hold one of MaxLargeBodiesInFlight
	// slots while their request runs (503 with Retry-After when none is
	// free).
	LargeBodyBytes         int64
	MaxLargeBodiesInFlight int
	// KeyEventsPerSecond and KeyBurst: token bucket per API key, in events.
	KeyEventsPerSecond float64
	KeyBurst           int
	// IPRequestsPerSecond and IPBurst: token bucket per client IP, in requests.
	IPRequestsPerSecond float64
	IPBurst             int
	// MaxInFlightEvents bounds the events waiting for Kafka (503 above it).
	MaxInFlightEvents int
	// PublishTimeout bounds the wait for Kafka's acknowledgement (503 after it).
	PublishTimeout time.Duration
	// DefaultPlan limits, in GET /v1/quotas, tenants without a plan
	// assignment in force ("" for none: unlimited).
	DefaultPlan string
	// AdjustmentSigning signs the adjustment records ingest writes.
	AdjustmentSigning AdjustmentSigning
	// BillerURL is the biller's base URL, to which ingest forwards the
	// biller's routes (GET /v1/reconciliation, /v1/admin/dlq/billing...)
	// for the console; nil: those routes answer 503.
	BillerURL *url.URL
	// WebhookAllowHTTP lets webhook endpoints use http:// URLs (tests,
	// development); otherwise only https:// is accepted.
	WebhookAllowHTTP bool
}

// AdjustmentSigning is how adjustment records are signed (ingest) and
// verified (the aggregator and its rebuild): ADJUSTMENT_SIGNING_KEYS (or
// the file ADJUSTMENT_SIGNING_KEYS_FILE names) and
// ALLOW_UNSIGNED_ADJUSTMENTS.
type AdjustmentSigning struct {
	// Keys: the first signs, every one verifies; empty when none is set.
	Keys *recordsign.Keyring
	// AllowUnsigned (development only) lets ingest write adjustments
	// without a signature when it has no key, and the aggregator apply
	// adjustments that carry no signature at all; a record that carries
	// a signature is always verified.
	AllowUnsigned bool
}

// Policy is what the aggregator accepts.
func (s AdjustmentSigning) Policy() recordsign.Policy {
	return recordsign.Policy{Keys: s.Keys, AllowUnsigned: s.AllowUnsigned}
}

// binder registers settings on a FlagSet with environment fallbacks.
type binder struct {
	fs     *flag.FlagSet
	getenv func(string) string
	errs   []error
	// checks run after the flags are parsed, on the final values.
	checks []func() error
}

func flagName(env string) string { return strings.ReplaceAll(strings.ToLower(env), "_", "-") }

func (b *binder) env(env, def string) string {
	if v := b.getenv(env); v != "" {
		return v
	}
	return def
}

func (b *binder) str(p *string, env, def, usage string) {
	b.fs.StringVar(p, flagName(env), b.env(env, def), usage+" (env "+env+")")
}

// planName is the shape of a plan's name.
var planName = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,128}$`)

// defaultPlan registers DEFAULT_PLAN (-default-plan): the plan limiting
// tenants without a plan assignment in force; empty for none.
func (b *binder) defaultPlan(p *string) {
	b.str(p, "DEFAULT_PLAN", "", "plan whose version in force limits tenants without a plan assignment in force; empty: none, they are unlimited")
	b.checks = append(b.checks, func() error {
		if *p != "" && (!planName.MatchString(*p) || *p == "." || *p == "..") {
			return fmt.Errorf("DEFAULT_PLAN: plan names are 1-128 characters of A-Z a-z 0-9 . _ : -, got %q", *p)
		}
		return nil
	})
}

// parsed registers a flag whose text is parsed by parse into p.
func parsed[T any](b *binder, p *T, env, def, usage string, parse func(string) (T, error)) {
	set := func(s string) error {
		v, err := parse(s)
		if err != nil {
			return fmt.Errorf("%s: %w", env, err)
		}
		*p = v
		return nil
	}
	initial := b.env(env, def)
	if err := set(initial); err != nil {
		b.errs = append(b.errs, fmt.Errorf("%w (got %q)", err, initial))
	}
	b.fs.Func(flagName(env), usage+" (env "+env+", default "+def+")", set)
}

func positiveInt(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		return 0, errors.New("must be a positive integer")
	}
	return n, nil
}

func positiveFloat(s string) (float64, error) {
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f <= 0 {
		return 0, errors.New("must be a positive number")
	}
	return f, nil
}

func positiveDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, errors.New("must be a positive duration such as 30s, 5m or 840h")
	}
	return d, nil
}

func brokerList(s string) ([]string, error) {
	var out []string
	for b := range strings.SplitSeq(s, ",") {
		if b = strings.TrimSpace(b); b != "" {
			out = append(out, b)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("must list at least one host:port")
	}
	return out, nil
}

func (b *binder) common(c *Common, httpAddr string) {
	b.str(&c.DatabaseURL, "DATABASE_URL", DefaultDatabaseURL, "Postgres connection URL")
	parsed(b, &c.KafkaBrokers, "KAFKA_BROKERS", DefaultBrokers, "comma-separated Kafka bootstrap brokers", brokerList)
	b.str(&c.HTTPAddr, "HTTP_ADDR", httpAddr, "HTTP listen address")
	b.str(&c.LogLevel, "LOG_LEVEL", "info", "log level: debug, info, warn or error")
	parsed(b, &c.KafkaPartitions, "KAFKA_PARTITIONS", "12", "partitions of topics this service creates", positiveInt)
	parsed(b, &c.ShutdownTimeout, "SHUTDOWN_TIMEOUT", "30s", "how long SIGTERM waits for in-flight work", positiveDuration)
	parsed(b, &c.HTTPMaxConnections, "HTTP_MAX_CONNECTIONS", "1024", "most HTTP connections open at once; more wait until one closes", positiveInt)
	parsed(b, &c.HTTPWriteTimeout, "HTTP_WRITE_TIMEOUT", "2m", "longest a request may take from its headers to the end of its answer (body upload included)", positiveDuration)
	parsed(b, &c.DedupHorizon, "DEDUP_HORIZON", "840h", "how old an event may be; ids are remembered this long", positiveDuration)
	b.kafkaAuth(c)
}

// flagBool registers a boolean setting; the flag alone (-kafka-tls) means
// true, as with the standard library's boolean flags.
func (b *binder) flagBool(p *bool, env, def, usage string) {
	set := func(s string) error {
		v, err := strconv.ParseBool(s)
		if err != nil {
			return fmt.Errorf("%s: must be true or false", env)
		}
		*p = v
		return nil
	}
	if initial := b.env(env, def); set(initial) != nil {
		b.errs = append(b.errs, fmt.Errorf("%s: must be true or false (got %q)", env, initial))
	}
	b.fs.BoolFunc(flagName(env), usage+" (env "+env+", default "+def+")", set)
}

// kafkaAuth registers the Kafka TLS and SASL settings and builds
// KafkaSecurity from their final values. The password has no flag, so
// that it never shows in a process list: it comes from KAFKA_SASL_PASSWORD
// or from the file KAFKA_SASL_PASSWORD_FILE names (a mounted secret).
func (b *binder) kafkaAuth(c *Common) {
	k := &c.KafkaAuth
	b.flagBool(&k.TLS, "KAFKA_TLS", "false", "connect to Kafka over TLS")
	b.str(&k.CAFile, "KAFKA_TLS_CA_FILE", "", "PEM file of the CAs that sign the brokers' certificates; empty for the system's roots")
	b.str(&k.CertFile, "KAFKA_TLS_CERT_FILE", "", "PEM client certificate, for brokers that require one (with KAFKA_TLS_KEY_FILE)")
	b.str(&k.KeyFile, "KAFKA_TLS_KEY_FILE", "", "PEM private key (PKCS #8, PKCS #1 or EC) of KAFKA_TLS_CERT_FILE")
	b.str(&k.ServerName, "KAFKA_TLS_SERVER_NAME", "", "name checked against the brokers' certificates; empty for each broker's host")
	b.flagBool(&k.InsecureSkipVerify, "KAFKA_TLS_INSECURE_SKIP_VERIFY", "false", "accept any broker certificate: tests only, never in production")
	b.str(&k.SASLMechanism, "KAFKA_SASL_MECHANISM", "", "SASL mechanism: plain, scram-sha-256 or scram-sha-512; empty for none")
	b.str(&k.SASLUsername, "KAFKA_SASL_USERNAME", "", "SASL username")
	password := b.secret("KAFKA_SASL_PASSWORD", func(s string) string { return strings.TrimRight(s, "\r\n") })
	b.checks = append(b.checks, func() error {
		k.SASLPassword = password
		sec, err := kafkaauth.New(*k)
		if err != nil {
			return fmt.Errorf("kafka TLS/SASL settings: %w", err)
		}
		c.KafkaSecurity = sec
		return nil
	})
}

// adminKey reads the bootstrap admin key from ADMIN_API_KEY, or from the
// file ADMIN_API_KEY_FILE names (a mounted secret). Neither has a flag: a
// secret on a command line is visible to every user in ps.
func (b *binder) adminKey(p *string) {
	*p = b.secret("ADMIN_API_KEY", strings.TrimSpace)
}

// secret reads a secret from the variable env, or from the file that
// env+"_FILE" names, trimmed by trim; setting both, an unreadable file or
// an empty one is an error. Secrets have no flag.
func (b *binder) secret(env string, trim func(string) string) string {
	value, file := b.getenv(env), b.getenv(env+"_FILE")
	switch {
	case value != "" && file != "":
		b.errs = append(b.errs, fmt.Errorf("set %s or %s_FILE, not both", env, env))
		return ""
	case file != "":
		raw, err := os.ReadFile(file)
		if err != nil {
			b.errs = append(b.errs, fmt.Errorf("%s_FILE: %w", env, err))
			return ""
		}
		value = trim(string(raw))
		if value == "" {
			b.errs = append(b.errs, fmt.Errorf("%s_FILE: %s is empty", env, file))
		}
	}
	return value
}

// adjustmentSigning registers ADJUSTMENT_SIGNING_KEYS (a secret: no
// flag; or ADJUSTMENT_SIGNING_KEYS_FILE) and ALLOW_UNSIGNED_ADJUSTMENTS.
// Errors name the key, never its secret.
func (b *binder) adjustmentSigning(p *AdjustmentSigning) {
	raw := b.secret("ADJUSTMENT_SIGNING_KEYS", strings.TrimSpace)
	b.flagBool(&p.AllowUnsigned, "ALLOW_UNSIGNED_ADJUSTMENTS", "false",
		"development only: ingest without ADJUSTMENT_SIGNING_KEYS writes adjustments unsigned, and the aggregator applies unsigned adjustments (signed ones are still verified)")
	keys, err := recordsign.ParseKeys(raw)
	if err != nil {
		b.errs = append(b.errs, fmt.Errorf("ADJUSTMENT_SIGNING_KEYS: %w (want id=secret,id=secret: the first signs, all verify)", err))
		return
	}
	p.Keys = keys
}

func (b *binder) parse(args []string) error {
	if err := b.fs.Parse(args); err != nil {
		return err
	}
	if len(b.errs) > 0 {
		return errors.Join(b.errs...)
	}
	for _, check := range b.checks {
		if err := check(); err != nil {
			return err
		}
	}
	return nil
}

// LoadIngest reads cmd/ingest's settings. args are the command-line
// arguments after the program name (and subcommand).
func LoadIngest(name string, args []string, getenv func(string) string, output io.Writer) (Ingest, []string, error) {
	var c Ingest
	b := &binder{fs: flag.NewFlagSet(name, flag.ContinueOnError), getenv: getenv}
	b.fs.SetOutput(output)
	b.common(&c.Common, ":8080")
	b.adminKey(&c.AdminAPIKey)
	parsed(b, &c.MaxBodyBytes, "MAX_BODY_BYTES", "5242880", "largest request body accepted, as sent and decompressed", func(s string) (int64, error) {
		n, err := positiveInt(s)
		return int64(n), err
	})
	parsed(b, &c.LargeBodyBytes, "LARGE_BODY_BYTES", "1048576", "bodies above this size count against MAX_LARGE_BODIES_IN_FLIGHT", func(s string) (int64, error) {
		n, err := positiveInt(s)
		return int64(n), err
	})
	parsed(b, &c.MaxLargeBodiesInFlight, "MAX_LARGE_BODIES_IN_FLIGHT", "32", "requests with a body above LARGE_BODY_BYTES processed at once; more get 503", positiveInt)
	parsed(b, &c.KeyEventsPerSecond, "RATE_LIMIT_KEY_EVENTS", "50000", "events per second per API key", positiveFloat)
	parsed(b, &c.KeyBurst, "RATE_LIMIT_KEY_BURST", "100000", "burst of events per API key (at least 1000)", positiveInt)
	parsed(b, &c.IPRequestsPerSecond, "RATE_LIMIT_IP_REQUESTS", "1000", "requests per second per client IP", positiveFloat)
	parsed(b, &c.IPBurst, "RATE_LIMIT_IP_BURST", "2000", "burst of requests per client IP", positiveInt)
	parsed(b, &c.MaxInFlightEvents, "MAX_INFLIGHT_EVENTS", "100000", "events waiting for Kafka before new requests get 503 (at least 1000)", positiveInt)
	parsed(b, &c.PublishTimeout, "PUBLISH_TIMEOUT", "5s", "how long a request waits for Kafka before 503", positiveDuration)
	b.defaultPlan(&c.DefaultPlan)
	b.adjustmentSigning(&c.AdjustmentSigning)
	parsed(b, &c.BillerURL, "BILLER_URL", "", "the biller's base URL (http://host:port), to which ingest forwards the reconciliation and the billing DLQ routes for the console; empty: they answer 503", parseBillerURL)
	b.flagBool(&c.WebhookAllowHTTP, "WEBHOOK_ALLOW_HTTP", "false", "accept http:// webhook endpoint URLs (development only; https:// otherwise)")
	if err := b.parse(args); err != nil {
		return Ingest{}, nil, err
	}
	if c.KeyBurst < 1000 || c.MaxInFlightEvents < 1000 {
		return Ingest{}, nil, errors.New("RATE_LIMIT_KEY_BURST and MAX_INFLIGHT_EVENTS must be at least 1000, the largest batch")
	}
	return c, b.fs.Args(), nil
}

// Aggregator is cmd/aggregator's configuration.
type Aggregator struct {
	Common
	// ConsumerGroup is the Kafka group id and the key of stored offsets.
	ConsumerGroup string
	// BatchSize and BatchWait cut batches.
	BatchSize int
	BatchWait time.Duration
	// SessionTimeout of the consumer group membership: how soon a dead
	// member's partitions move to the others.
	SessionTimeout time.Duration
	// RetentionInterval is how often old ledger rows and published outbox
	// rows are deleted.
	RetentionInterval time.Duration
	// HourPackInterval is how often the hour packer packs grouped hour
	// windows of days old enough, and repacks days changed since.
	HourPackInterval time.Duration
	// MaxLag bounds how far back a record's broker timestamp is trusted:
	// event-time limits are judged at that timestamp clamped into
	// [now - MaxLag, now], never at a producer-set time alone.
	MaxLag time.Duration
	// ConflictAlertThreshold: held and raised conflicts of one tenant in
	// one UTC day beyond which the aggregator logs an error and the API
	// marks the tenant alerting.
	ConflictAlertThreshold int
	// DefaultPlan limits tenants without a plan assignment in force,
	// unknown tenants included ("" for none: unlimited).
	DefaultPlan string
	// AdjustmentSigning verifies adjustment records before they are
	// applied, live and in rebuilds.
	AdjustmentSigning AdjustmentSigning
	// Anomalies tunes the leader loop that flags spikes and drops of
	// hourly usage (usage.anomalies).
	Anomalies Anomalies
}

// Anomalies is the anomaly detection of the aggregator's leader loop
// "anomalies" (internal/anomaly).
type Anomalies struct {
	// Enabled runs the loop.
	Enabled bool
	// Detector is the detector's configuration: sensitivity, weeks and
	// minimum volume.
	Detector anomaly.Config
	// Lateness is how long after an hour's end its records may still
	// arrive: the hour is judged once every partition is applied that far.
	Lateness time.Duration
	// Interval is how often the loop looks for hours to judge.
	Interval time.Duration
}

// anomalies registers the ANOMALY_* settings.
func (b *binder) anomalies(a *Anomalies) {
	a.Detector = anomaly.DefaultConfig()
	b.flagBool(&a.Enabled, "ANOMALY_ENABLED", "true", "flag spikes and drops of each tenant's hourly usage per meter on usage.anomalies (leader loop anomalies)")
	parsed(b, &a.Detector.Sensitivity, "ANOMALY_SENSITIVITY", anomaly.DefaultSensitivity, "robust score (estimated standard deviations from the seasonal median) an hour must reach to be a spike, or its opposite a drop; higher flags less", anomaly.ParseSensitivity)
	parsed(b, &a.Detector.Weeks, "ANOMALY_WEEKS", strconv.Itoa(anomaly.DefaultWeeks), "previous weeks whose same hour of the week (and neighbouring hours) make an hour's baseline; a series younger than this is not judged", positiveInt)
	parsed(b, &a.Detector.MinVolume, "ANOMALY_MIN_VOLUME", strconv.Itoa(anomaly.DefaultMinVolume), "smallest difference from the expected hourly total, in the meter's units, that can be anomalous; a drop also needs an expected total this large", nonNegativeBigInt)
	parsed(b, &a.Lateness, "ANOMALY_LATENESS", "10m", "how long after an hour's end its records may still arrive; the hour is judged once every partition is applied that far", positiveDuration)
	parsed(b, &a.Interval, "ANOMALY_INTERVAL", "1m", "how often the anomalies leader looks for complete hours to judge", positiveDuration)
}

func nonNegativeBigInt(s string) (*big.Int, error) {
	n, ok := new(big.Int).SetString(s, 10)
	if !ok || n.Sign() < 0 || len(s) > 30 {
		return nil, errors.New("must be a whole number, 0 or more")
	}
	return n, nil
}

// LoadAggregator reads cmd/aggregator's settings; see LoadIngest.
func LoadAggregator(name string, args []string, getenv func(string) string, output io.Writer) (Aggregator, []string, error) {
	var c Aggregator
	b := &binder{fs: flag.NewFlagSet(name, flag.ContinueOnError), getenv: getenv}
	b.fs.SetOutput(output)
	b.common(&c.Common, ":8081")
	b.str(&c.ConsumerGroup, "CONSUMER_GROUP", "metering-aggregator", "Kafka consumer group; offsets are stored in Postgres under this name")
	parsed(b, &c.BatchSize, "BATCH_SIZE", "10000", "most records per batch transaction", positiveInt)
	parsed(b, &c.BatchWait, "BATCH_WAIT", "100ms", "longest a batch waits for more records", positiveDuration)
	parsed(b, &c.SessionTimeout, "SESSION_TIMEOUT", "10s", "consumer group session timeout", positiveDuration)
	parsed(b, &c.RetentionInterval, "RETENTION_INTERVAL", "1h", "how often ledger rows past the horizon are deleted", positiveDuration)
	parsed(b, &c.HourPackInterval, "HOUR_PACK_INTERVAL", "10m", "how often grouped meters' hour windows of days three or more days old are packed for reads", positiveDuration)
	parsed(b, &c.MaxLag, "AGGREGATOR_MAX_LAG", "72h", "how far behind its record timestamps the aggregator may be and still judge event times at them", positiveDuration)
	parsed(b, &c.ConflictAlertThreshold, "CONFLICT_ALERT_THRESHOLD", "10", "held and raised conflicts per tenant per UTC day beyond which an alert is raised", positiveInt)
	b.defaultPlan(&c.DefaultPlan)
	b.adjustmentSigning(&c.AdjustmentSigning)
	b.anomalies(&c.Anomalies)
	if err := b.parse(args); err != nil {
		return Aggregator{}, nil, err
	}
	return c, b.fs.Args(), nil
}

// Biller is cmd/biller's configuration.
type Biller struct {
	Common
	StripeAPIKey        string
	StripeAPIBase       string
	StripeWebhookSecret string
	// SyncInterval is how often deltas are pushed and the DLQ depth checked.
	SyncInterval time.Duration
	// StripeRate bounds calls per second to Stripe.
	StripeRate float64
	// StripeTimeout bounds one Stripe call.
	StripeTimeout time.Duration
	// MaxAttempts of one push before it is dead-lettered.
	MaxAttempts int
	AdminAPIKey string
	// ConsumerGroup is the aggregator's consumer group, whose stored
	// offsets and watermarks say how far usage is counted.
	ConsumerGroup string
	// AllowedLateness is how long after a billing period's end records
	// may still be appended for it: the period is complete (and announced
	// with period.closed) once every partition is applied that far.
	AllowedLateness time.Duration
	// DefaultPlan bills tenants without a plan assignment in force and is
	// the plan plan.changed names when an assignment ends ("" for none).
	DefaultPlan string
	// Webhooks is how webhook notifications are read, checked and sent.
	Webhooks Webhooks
}

// Webhooks are the biller's webhook notification settings.
type Webhooks struct {
	// Timeout bounds one delivery attempt (a 2xx within it succeeds).
	Timeout time.Duration
	// RetryFor is how long a delivery is retried before it is dead.
	RetryFor time.Duration
	// FailingAfter is how long an endpoint may only fail before it is
	// marked failing and its deliveries park.
	FailingAfter time.Duration
	// Workers bounds the attempts in flight per biller.
	Workers int
	// Poll is how often due deliveries are looked for.
	Poll time.Duration
	// CheckInterval is how often grants about to expire and spend
	// thresholds are checked.
	CheckInterval time.Duration
	// GrantWarning is how long before a grant's expiry grant.expiring is
	// sent.
	GrantWarning time.Duration
}

// LoadBiller reads cmd/biller's settings; see LoadIngest.
func LoadBiller(name string, args []string, getenv func(string) string, output io.Writer) (Biller, []string, error) {
	var c Biller
	b := &binder{fs: flag.NewFlagSet(name, flag.ContinueOnError), getenv: getenv}
	b.fs.SetOutput(output)
	b.common(&c.Common, ":8082")
	b.str(&c.StripeAPIKey, "STRIPE_API_KEY", "", "Stripe secret key (sk_...)")
	b.str(&c.StripeAPIBase, "STRIPE_API_BASE", "", "Stripe API base URL; empty for api.stripe.com (stripe-mock or the test server otherwise)")
	b.str(&c.StripeWebhookSecret, "STRIPE_WEBHOOK_SECRET", "", "signing secret of the Stripe webhook endpoint (whsec_...)")
	b.adminKey(&c.AdminAPIKey)
	parsed(b, &c.SyncInterval, "SYNC_INTERVAL", "1m", "how often deltas are pushed to Stripe", positiveDuration)
	parsed(b, &c.StripeRate, "STRIPE_RATE_LIMIT", "20", "Stripe calls per second, client side", positiveFloat)
	parsed(b, &c.StripeTimeout, "STRIPE_TIMEOUT", "20s", "timeout of one Stripe call", positiveDuration)
	parsed(b, &c.MaxAttempts, "STRIPE_MAX_ATTEMPTS", "8", "tries of one push before it is dead-lettered", positiveInt)
	b.str(&c.ConsumerGroup, "CONSUMER_GROUP", "metering-aggregator", "the aggregator's Kafka consumer group, whose stored offsets say how far usage is counted")
	parsed(b, &c.AllowedLateness, "BILLING_ALLOWED_LATENESS", "1h", "how long after a billing period's end its records may still arrive before it is complete", positiveDuration)
	b.defaultPlan(&c.DefaultPlan)
	w := &c.Webhooks
	parsed(b, &w.Timeout, "WEBHOOK_TIMEOUT", "10s", "longest wait for a webhook receiver's 2xx", positiveDuration)
	parsed(b, &w.RetryFor, "WEBHOOK_RETRY_FOR", "72h", "how long a webhook delivery is retried before it is dead", positiveDuration)
	parsed(b, &w.FailingAfter, "WEBHOOK_FAILING_AFTER", "24h", "how long an endpoint may answer only failures before it is marked failing and its deliveries park", positiveDuration)
	parsed(b, &w.Workers, "WEBHOOK_WORKERS", "4", "webhook deliveries in flight at once per biller", positiveInt)
	parsed(b, &w.Poll, "WEBHOOK_POLL_INTERVAL", "1s", "how often due webhook deliveries are looked for", positiveDuration)
	parsed(b, &w.CheckInterval, "WEBHOOK_CHECK_INTERVAL", "5m", "how often grants about to expire and spend thresholds are checked", positiveDuration)
	parsed(b, &w.GrantWarning, "GRANT_EXPIRING_WARNING", "72h", "how long before a credit grant expires grant.expiring is sent", positiveDuration)
	if err := b.parse(args); err != nil {
		return Biller{}, nil, err
	}
	return c, b.fs.Args(), nil
}

// Variables returns the environment variables service ("ingest",
// "aggregator" or "biller") reads, in the order it registers them.
func Variables(service string) []string {
	var names []string
	record := func(k string) string { names = append(names, k); return "" }
	switch service {
	case "ingest":
		_, _, _ = LoadIngest(service, nil, record, io.Discard)
	case "aggregator":
		_, _, _ = LoadAggregator(service, nil, record, io.Discard)
	case "biller":
		_, _, _ = LoadBiller(service, nil, record, io.Discard)
	}
	return names
}

// parseBillerURL parses BILLER_URL: empty, or an http or https URL with a
// host and no query, user or fragment.
func parseBillerURL(s string) (*url.URL, error) {
	if s == "" {
		return nil, nil
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, errors.New("must be an http or https URL with a host, such as http://127.0.0.1:8082")
	}
	return u, nil
}
