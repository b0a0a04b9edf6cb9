// Package kafkacluster runs a real Apache Kafka KRaft cluster of one or
// three nodes on loopback ports, from the broker's jars that
// scripts/kafka-fetch.sh fetches from Maven Central, for the real-Kafka
// tests and `make kafka`. Each node is its own JVM in combined mode
// (broker and controller), in its own process group, logging to
// Options.Log at WARN. The jars and a JVM class-data archive that speeds
// up later starts are cached outside the repository. Options.SASLSSL adds
// a SASL_SSL client listener to every node (PEM certificate, SCRAM users
// created at format time, PLAIN) for tests of the clients' TLS and SASL.
//
// Invariant: once Stop has returned, none of the JVMs the cluster started
// (first starts and Restarts alike) is running, and each has been reaped.
// Stop sends SIGTERM, then SIGKILL after StopGrace, and waits for every
// node; Kill reaps the node it kills; a Start that fails stops what it had
// started before it returns. On Linux a node also gets SIGKILL when the
// process that started it dies. The tests check the invariant against
// every process id a cluster had.
//
// Test and dev tooling, not product (see internal/testkit): no product
// package imports it, and it does not import testing, since the dev
// binaries under tools/ link it.
package kafkacluster

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"golang.org/x/sync/errgroup"
)

// DefaultVersion is the Kafka release Start runs when Options.Version is
// empty. The other release the project pins is "3.9.1".
const DefaultVersion = "4.1.1"

// StopGrace is how long Stop waits for the nodes to exit after SIGTERM
// before it sends SIGKILL.
const StopGrace = 20 * time.Second

// startTimeout bounds how long Start and Restart wait for brokers to answer
// when the caller's context has no deadline.
const startTimeout = 3 * time.Minute

// Options says which cluster Start runs.
type Options struct {
	// Version is the Kafka release, "4.1.1" (the default) or "3.9.1".
	Version string
	// Nodes is the number of nodes, 1 (the default) or 3.
	Nodes int
	// Dir holds the nodes' data. Empty means a fresh temporary directory
	// that Stop removes; a given Dir is kept, and a later Start on it
	// resumes the same cluster (same version, nodes, id and ports).
	Dir string
	// Log receives the brokers' output (WARN and above), each line
	// prefixed with its node ("kafka-0: "), and Start's and Stop's
	// progress. Nil discards it.
	Log io.Writer
	// Root is the repository root, where scripts/kafka-fetch.sh lives.
	// Empty means the nearest directory holding go.mod, walking up from
	// the working directory.
	Root string
	// Properties are extra server.properties entries for every node; they
	// override the ones Start writes.
	Properties map[string]string
	// HeapMB is each JVM's maximum heap in MiB; 0 means 384.
	HeapMB int
	// JVMFlags are extra JVM options for every node, after Start's own.
	JVMFlags []string
	// SASLSSL, when set, gives every node a second client listener that
	// speaks SASL_SSL, on a port of its own (SecureBrokers). The brokers
	// and controllers keep talking to each other over PLAINTEXT, and
	// Brokers, and every method of Cluster, keep using the PLAINTEXT
	// listener.
	SASLSSL *SASLSSL
}

// SASLSSL configures the SASL_SSL listener: TLS with the given broker
// certificate, then SASL with SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN.
type SASLSSL struct {
	// CertPEM is the brokers' certificate chain and KeyPEM its
	// unencrypted PKCS #8 key, PEM ("PRIVATE KEY"); the certificate must
	// name 127.0.0.1, where the listener is.
	CertPEM, KeyPEM []byte
	// ClientCAPEM, when set, makes the listener require a client
	// certificate signed by it (mutual TLS) besides SASL.
	ClientCAPEM []byte
	// Users maps each user to its password. Start creates SCRAM-SHA-512
	// and SCRAM-SHA-256 credentials for them when it formats the storage
	// (kafka-storage format --add-scram) and PLAIN ones in the listener's
	// JAAS configuration. Names and passwords are letters, digits, '-'
	// and '_'.
	Users map[string]string
}

var credentialRE = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

func (s *SASLSSL) check() error {
	if len(s.CertPEM) == 0 || len(s.KeyPEM) == 0 {
		return errors.New("kafkacluster: SASLSSL needs CertPEM and KeyPEM")
	}
	if len(s.Users) == 0 {
		return errors.New("kafkacluster: SASLSSL needs at least one user")
	}
	for u, pw := range s.Users {
		if !credentialRE.MatchString(u) || !credentialRE.MatchString(pw) {
			return fmt.Errorf("kafkacluster: SASLSSL user %q or its password: use letters, digits, '-' and '_'", u)
		}
	}
	return nil
}

// properties are the listener's server.properties entries; PEM values
// are written with escaped newlines, which java.util.Properties reads
// back as newlines.
func (s *SASLSSL) properties() map[string]string {
	pemValue := func(b []byte) string {
		return strings.ReplaceAll(strings.TrimSpace(string(b)), "\n", `\n`)
	}
	users := slices.Sorted(maps.Keys(s.Users))
	var plain strings.Builder
	plain.WriteString("org.apache.kafka.common.security.plain.PlainLoginModule required")
	for _, u := range users {
		fmt.Fprintf(&plain, ` user_%s="%s"`, u, s.Users[u])
	}
	plain.WriteString(";")
	scram := "org.apache.kafka.common.security.scram.ScramLoginModule required;"
	p := map[string]string{
		"sasl.enabled.mechanisms":                               "SCRAM-SHA-512,SCRAM-SHA-256,PLAIN",
		"listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": scram,
		"listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config": scram,
		"listener.name.sasl_ssl.plain.sasl.jaas.config":         plain.String(),
		"ssl.keystore.type":                                     "PEM",
		"ssl.keystore.certificate.chain":                        pemValue(s.CertPEM),
		"ssl.keystore.key":                                      pemValue(s.KeyPEM),
	}
	if len(s.ClientCAPEM) > 0 {
		// The unprefixed ssl.client.auth does not apply to SASL_SSL
		// listeners; the listener's own does.
		p["listener.name.sasl_ssl.ssl.client.auth"] = "required"
		p["ssl.truststore.type"] = "PEM"
		p["ssl.truststore.certificates"] = pemValue(s.ClientCAPEM)
	}
	return p
}

// scramArgs are kafka-storage format's arguments that create the users.
func (s *SASLSSL) scramArgs() []string {
	var args []string
	for _, u := range slices.Sorted(maps.Keys(s.Users)) {
		for _, mech := range []string{"SCRAM-SHA-512", "SCRAM-SHA-256"} {
			args = append(args, "--add-scram", fmt.Sprintf("%s=[name=%s,password=%s]", mech, u, s.Users[u]))
		}
	}
	return args
}

// Cluster is a running cluster. Its methods are safe for concurrent use.
type Cluster struct {
	version   string
	dir       string
	removeDir bool
	libs      string
	java      string
	clusterID string
	jvmFlags  []string
	archive   *classArchive
	log       *lineLog
	nodes     []*node
	saslSSL   *SASLSSL

	mu       sync.Mutex // orders launches before Stop
	stopped  bool
	stopOnce sync.Once
}

// Start fetches the jars of opts.Version when they are not cached yet,
// formats each node's storage with one cluster id, starts every node and
// returns once every broker answers a metadata request listing all the
// brokers and a topic with replication factor Nodes can be created. A
// failing Start leaves nothing running.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	if opts.Version == "" {
		opts.Version = DefaultVersion
	}
	if !versionRE.MatchString(opts.Version) {
		return nil, fmt.Errorf("kafkacluster: bad Kafka version %q: want MAJOR.MINOR.PATCH, for example %s", opts.Version, DefaultVersion)
	}
	if opts.Nodes == 0 {
		opts.Nodes = 1
	}
	if opts.Nodes != 1 && opts.Nodes != 3 {
		return nil, fmt.Errorf("kafkacluster: %d nodes: use 1 or 3", opts.Nodes)
	}
	if opts.HeapMB == 0 {
		opts.HeapMB = 384
	}
	if opts.SASLSSL != nil {
		if err := opts.SASLSSL.check(); err != nil {
			return nil, err
		}
	}
	log := newLineLog(opts.Log)
	t0 := time.Now()
	libs, err := fetch(ctx, opts.Root, opts.Version, log)
	if err != nil {
		return nil, err
	}
	log.printf("Kafka %s jars in %s (%.1fs)", opts.Version, libs, time.Since(t0).Seconds())
	java, err := exec.LookPath("java")
	if err != nil {
		return nil, fmt.Errorf("kafkacluster: java not found: install Java 17 or later (Debian: apt-get install default-jdk-headless): %w", err)
	}

	c := &Cluster{version: opts.Version, libs: libs, java: java, log: log, dir: opts.Dir, archive: newClassArchive(java, libs), saslSSL: opts.SASLSSL}
	if c.dir == "" {
		if c.dir, err = os.MkdirTemp("", "kafkacluster-"); err != nil {
			return nil, fmt.Errorf("kafkacluster: data directory: %w", err)
		}
		c.removeDir = true
	} else if c.dir, err = filepath.Abs(c.dir); err != nil {
		return nil, fmt.Errorf("kafkacluster: data directory %s: %w", opts.Dir, err)
	}
	if err := c.setUp(ctx, opts); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

var versionRE = regexp.MustCompile(`^[0-9]+\.[0-9]+\.[0-9]+$`)

// state is what a kept Dir remembers between runs, in cluster.json.
type state struct {
	Version   string   `json:"version"`
	ClusterID string   `json:"cluster_id"`
	Ports     [][2]int `json:"ports"` // per node: broker, controller
	// SecurePorts are the SASL_SSL listeners' ports, per node, when
	// Options.SASLSSL is set.
	SecurePorts []int `json:"secure_ports,omitempty"`
}

func (c *Cluster) setUp(ctx context.Context, opts Options) error {
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		return fmt.Errorf("kafkacluster: data directory: %w", err)
	}
	st, err := c.loadState(opts)
	if err != nil {
		return err
	}
	c.clusterID = st.ClusterID
	if err := c.writeLogConfigs(); err != nil {
		return err
	}
	c.jvmFlags = append(jvmFlags(opts.HeapMB, c.dir), opts.JVMFlags...)
	voters := make([]string, opts.Nodes)
	for i, p := range st.Ports {
		voters[i] = fmt.Sprintf("%d@127.0.0.1:%d", i, p[1])
	}
	for i, p := range st.Ports {
		n := &node{id: i, brokerPort: p[0], controllerPort: p[1], dir: filepath.Join(c.dir, fmt.Sprintf("node-%d", i))}
		n.out = c.log.node(i)
		props := serverProperties(c.version, opts.Nodes, n, strings.Join(voters, ","))
		if opts.SASLSSL != nil {
			n.securePort = st.SecurePorts[i]
			secure := fmt.Sprintf("SASL_SSL://127.0.0.1:%d", n.securePort)
			props["listeners"] += "," + secure
			props["advertised.listeners"] += "," + secure
			props["listener.security.protocol.map"] += ",SASL_SSL:SASL_SSL"
			maps.Copy(props, opts.SASLSSL.properties())
		}
		for k, v := range opts.Properties {
			props[k] = v
		}
		if err := writeProperties(n.config(), props); err != nil {
			return err
		}
		c.nodes = append(c.nodes, n)
	}
	t0 := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	for _, n := range c.nodes {
		g.Go(func() error { return c.format(gctx, n) })
	}
	if err := g.Wait(); err != nil {
		return err
	}
	c.log.printf("formatted %d node(s) of cluster %s in %s (%.1fs)", len(c.nodes), c.clusterID, c.dir, time.Since(t0).Seconds())
	t0 = time.Now()
	for _, n := range c.nodes {
		if err := c.launch(n); err != nil {
			return err
		}
	}
	c.log.printf("started node JVM(s) %v", c.PIDs())
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	if err := c.waitReady(ctx); err != nil {
		return err
	}
	c.log.printf("every broker answers: %s (%.1fs after the JVMs started)", c.BrokerList(), time.Since(t0).Seconds())
	return nil
}

// loadState reads the state of a kept Dir, or makes a new one: a fresh
// cluster id and free loopback ports.
func (c *Cluster) loadState(opts Options) (state, error) {
	path := filepath.Join(c.dir, "cluster.json")
	var st state
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		if err := json.Unmarshal(b, &st); err != nil {
			return st, fmt.Errorf("kafkacluster: %s: %w", path, err)
		}
		if st.Version != opts.Version || len(st.Ports) != opts.Nodes || (opts.SASLSSL != nil) != (len(st.SecurePorts) > 0) {
			return st, fmt.Errorf("kafkacluster: %s holds a %d-node Kafka %s cluster, not %d-node %s: use another directory",
				c.dir, len(st.Ports), st.Version, opts.Nodes, opts.Version)
		}
		for _, p := range st.Ports {
			for _, port := range append(p[:], st.SecurePorts...) {
				if err := portFree(port); err != nil {
					return st, fmt.Errorf("kafkacluster: the cluster in %s uses port %d: %w", c.dir, port, err)
				}
			}
		}
		return st, nil
	case !errors.Is(err, os.ErrNotExist):
		return st, fmt.Errorf("kafkacluster: %w", err)
	}
	perNode := 2
	if opts.SASLSSL != nil {
		perNode = 3
	}
	ports, err := freePorts(perNode * opts.Nodes)
	if err != nil {
		return st, err
	}
	st = state{Version: opts.Version, ClusterID: newClusterID()}
	for i := 0; i < opts.Nodes; i++ {
		st.Ports = append(st.Ports, [2]int{ports[perNode*i], ports[perNode*i+1]})
		if opts.SASLSSL != nil {
			st.SecurePorts = append(st.SecurePorts, ports[perNode*i+2])
		}
	}
	b, err = json.MarshalIndent(st, "", "  ")
	if err != nil {
		return st, fmt.Errorf("kafkacluster: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return st, fmt.Errorf("kafkacluster: %w", err)
	}
	return st, nil
}

// newClusterID returns a Kafka Uuid in its text form: 16 random bytes in
// unpadded URL-safe base64, not starting with '-' (Kafka's own rule, so
// the id never reads as a command-line flag).
func newClusterID() string {
	for {
		u := uuid.New()
		id := base64.RawURLEncoding.EncodeToString(u[:])
		if !strings.HasPrefix(id, "-") {
			return id
		}
	}
}

// serverProperties is a node's configuration in combined mode.
func serverProperties(version string, nodes int, n *node, voters string) map[string]string {
	rf := strconv.Itoa(min(3, nodes))
	minISR := "1"
	if nodes == 3 {
		minISR = "2"
	}
	p := map[string]string{
		"process.roles":                            "broker,controller",
		"node.id":                                  strconv.Itoa(n.id),
		"controller.quorum.voters":                 voters,
		"listeners":                                fmt.Sprintf("PLAINTEXT://127.0.0.1:%d,CONTROLLER://127.0.0.1:%d", n.brokerPort, n.controllerPort),
		"advertised.listeners":                     fmt.Sprintf("PLAINTEXT://127.0.0.1:%d", n.brokerPort),
		"controller.listener.names":                "CONTROLLER",
		"inter.broker.listener.name":               "PLAINTEXT",
		"listener.security.protocol.map":           "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
		"log.dirs":                                 filepath.Join(n.dir, "data"),
		"offsets.topic.replication.factor":         rf,
		"transaction.state.log.replication.factor": rf,
		"transaction.state.log.min.isr":            minISR,
		"default.replication.factor":               strconv.Itoa(nodes),
		"min.insync.replicas":                      minISR,
		"group.initial.rebalance.delay.ms":         "0",
		// A test cluster: fewer internal partitions make the first
		// consumer group and the first transaction quick to set up.
		"offsets.topic.num.partitions":         "10",
		"transaction.state.log.num.partitions": "10",
		// Fence a killed node after 6 s rather than 9 s; shorter makes
		// brokers starting on a busy two-core machine miss heartbeats.
		"broker.heartbeat.interval.ms": "1000",
		"broker.session.timeout.ms":    "6000",
	}
	if major, _, _ := strings.Cut(version, "."); major != "3" {
		p["share.coordinator.state.topic.replication.factor"] = rf
		p["share.coordinator.state.topic.min.isr"] = minISR
	}
	return p
}

func writeProperties(path string, props map[string]string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("kafkacluster: %w", err)
	}
	keys := make([]string, 0, len(props))
	for k := range props {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%s\n", k, props[k])
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("kafkacluster: %w", err)
	}
	return nil
}

// The brokers log to stdout at WARN: log4j2 for Kafka 4.x, reload4j for 3.x.
const (
	log4j2Config = `status = warn
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.target = SYSTEM_OUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = %d{HH:mm:ss.SSS} %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.stdout.ref = STDOUT
`
	log4jConfig = `log4j.rootLogger=WARN, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.Target=System.out
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=%d{HH:mm:ss,SSS} %p %m (%c)%n
`
)

func (c *Cluster) writeLogConfigs() error {
	for name, text := range map[string]string{"log4j2.properties": log4j2Config, "log4j.properties": log4jConfig} {
		if err := os.WriteFile(filepath.Join(c.dir, name), []byte(text), 0o644); err != nil {
			return fmt.Errorf("kafkacluster: %w", err)
		}
	}
	return nil
}

// jvmFlags are every node's JVM options, chosen so three brokers and a
// test fit on a two-core machine: a small heap with the serial collector
// (G1 took about 30 % more memory for the same throughput), and only the
// C1 compiler, which cuts the CPU a node needs to start by about 40 % and,
// on two cores, outpaces C2 for the first million records or so; C2
// overtakes it only in longer runs (pass -XX:TieredStopAtLevel=4 in
// Options.JVMFlags for those).
func jvmFlags(heapMB int, dir string) []string {
	return []string{
		fmt.Sprintf("-Xmx%dm", heapMB),
		"-Xms64m",
		"-XX:+UseSerialGC",
		"-XX:TieredStopAtLevel=1",
		"-XX:-UsePerfData",
		"-Djava.awt.headless=true",
		"-Dlog4j2.configurationFile=" + filepath.Join(dir, "log4j2.properties"),
		"-Dlog4j.configuration=file:" + filepath.Join(dir, "log4j.properties"),
	}
}

// format writes a node's storage metadata with the cluster id; a node
// already formatted (a kept Dir) is left as it is.
func (c *Cluster) format(ctx context.Context, n *node) error {
	args := append(append(slices.Clone(c.jvmFlags), c.archive.useFlags()...), "-cp", filepath.Join(c.libs, "*"),
		"kafka.tools.StorageTool", "format", "--ignore-formatted",
		"--cluster-id", c.clusterID, "--config", n.config())
	if c.saslSSL != nil {
		args = append(args, c.saslSSL.scramArgs()...)
	}
	cmd := exec.CommandContext(ctx, c.java, args...)
	cmd.Dir = n.dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("kafkacluster: formatting node %d: %w\n%s", n.id, err, out)
	}
	return nil
}

// fetch runs scripts/kafka-fetch.sh and returns the libs directory it
// prints.
func fetch(ctx context.Context, root, version string, log *lineLog) (string, error) {
	if root == "" {
		var err error
		if root, err = findRoot(); err != nil {
			return "", err
		}
	}
	script := filepath.Join(root, "scripts", "kafka-fetch.sh")
	if _, err := os.Stat(script); err != nil {
		return "", fmt.Errorf("kafkacluster: %w (set Options.Root to the repository root)", err)
	}
	cmd := exec.CommandContext(ctx, "bash", script, version)
	var stderr strings.Builder
	cmd.Stderr = io.MultiWriter(&stderr, log.prefixed("fetch"))
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("kafkacluster: fetching Kafka %s: %w\n%s", version, err, stderr.String())
	}
	libs := strings.TrimSpace(string(out))
	if _, err := os.Stat(filepath.Join(libs, "kafka_2.13-"+version+".jar")); err != nil {
		return "", fmt.Errorf("kafkacluster: fetching Kafka %s: %w", version, err)
	}
	return libs, nil
}

// findRoot walks up from the working directory to the one holding go.mod.
func findRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("kafkacluster: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("kafkacluster: no go.mod above the working directory: set Options.Root to the repository root")
		}
		dir = parent
	}
}

// freePorts returns n distinct loopback ports that were free a moment ago.
func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("kafkacluster: picking a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func portFree(port int) error {
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return err
	}
	return l.Close()
}

func withDefaultTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, startTimeout)
}

// Version is the Kafka release the cluster runs.
func (c *Cluster) Version() string { return c.version }

// Dir is the directory holding the nodes' data.
func (c *Cluster) Dir() string { return c.dir }

// Brokers returns every node's broker address, host:port, by node index,
// whether the node is running or not.
func (c *Cluster) Brokers() []string {
	addrs := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		addrs[i] = n.addr()
	}
	return addrs
}

// BrokerList is Brokers joined with commas, the form of KAFKA_BROKERS.
func (c *Cluster) BrokerList() string { return strings.Join(c.Brokers(), ",") }

// SecureBrokers returns every node's SASL_SSL listener, host:port, by
// node index; nil when the cluster has none (Options.SASLSSL unset).
func (c *Cluster) SecureBrokers() []string {
	if c.saslSSL == nil {
		return nil
	}
	addrs := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		addrs[i] = net.JoinHostPort("127.0.0.1", strconv.Itoa(n.securePort))
	}
	return addrs
}

// PIDs returns each node's JVM process id by node index, 0 for a node
// that is not running.
func (c *Cluster) PIDs() []int {
	pids := make([]int, len(c.nodes))
	for i, n := range c.nodes {
		pids[i] = n.pid()
	}
	return pids
}

// Kill sends SIGKILL to node's JVM and reaps it. The node's data stays
// for Restart.
func (c *Cluster) Kill(node int) error {
	n, err := c.node(node)
	if err != nil {
		return err
	}
	return n.kill()
}

// Restart starts a node that Kill stopped again, with the same data and
// ports, and returns once it answers a metadata request listing every
// broker. It fails after Stop.
func (c *Cluster) Restart(ctx context.Context, node int) error {
	n, err := c.node(node)
	if err != nil {
		return err
	}
	if err := c.launch(n); err != nil {
		return err
	}
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	return c.waitNode(ctx, n)
}

// Stop ends every node: SIGTERM, then SIGKILL to any still running after
// StopGrace; it returns once each is reaped, then removes a temporary Dir.
// Calling it again does nothing.
func (c *Cluster) Stop() {
	c.stopOnce.Do(func() {
		c.mu.Lock()
		c.stopped = true
		c.mu.Unlock()
		t0 := time.Now()
		var wg sync.WaitGroup
		for _, n := range c.nodes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if how := n.stop(StopGrace); how != "" {
					c.log.printf("node %d %s %.1fs after Stop", n.id, how, time.Since(t0).Seconds())
				}
			}()
		}
		wg.Wait()
		if c.removeDir {
			os.RemoveAll(c.dir)
		}
	})
}

func (c *Cluster) node(i int) (*node, error) {
	if i < 0 || i >= len(c.nodes) {
		return nil, fmt.Errorf("kafkacluster: no node %d in a %d-node cluster", i, len(c.nodes))
	}
	return c.nodes[i], nil
}

// launch starts n's JVM.
func (c *Cluster) launch(n *node) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return fmt.Errorf("kafkacluster: node %d: the cluster is stopped", n.id)
	}
	cds, writeTo := c.archive.nodeFlags()
	args := append(append(slices.Clone(c.jvmFlags), cds...), "-cp", filepath.Join(c.libs, "*"), "kafka.Kafka", n.config())
	err := n.start(c.java, args, func(exit *os.ProcessState) { c.archive.finish(writeTo, exit) })
	if err != nil {
		c.archive.finish(writeTo, nil)
	}
	return err
}
