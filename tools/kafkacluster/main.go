// Command kafkacluster is `make kafka`: it runs a real Apache Kafka KRaft
// cluster on loopback ports (see internal/testkit/kafkacluster), prints
// one line KAFKA_BROKERS=host:port,... on stdout once every broker
// answers, and stops the cluster on SIGINT or SIGTERM. Progress and the
// brokers' own warnings go to stderr.
//
// Settings, each an environment variable with a flag of the same meaning:
//
//	KAFKA_VERSION  -version   Kafka release: 4.1.1 (default) or 3.9.1
//	KAFKA_NODES    -nodes     1 (default) or 3
//	KAFKA_DATA_DIR -data-dir  keep the data here and resume it next time;
//	                          default a fresh temporary directory, removed on exit
//	LOG_LEVEL      -log-level debug, info (default), warn or error
//
// Dev tooling, not product (see internal/testkit): it links no testing.
package main

import (
	"flag"
	"fmt"
	"os"
	"strconv"

	"github.com/usagemeter/metering/internal/service"
	"github.com/usagemeter/metering/internal/testkit/kafkacluster"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("kafkacluster", flag.ContinueOnError)
	version := fs.String("version", envOr("KAFKA_VERSION", kafkacluster.DefaultVersion), "Kafka release (KAFKA_VERSION)")
	nodesText := fs.String("nodes", envOr("KAFKA_NODES", "1"), "number of nodes, 1 or 3 (KAFKA_NODES)")
	dataDir := fs.String("data-dir", os.Getenv("KAFKA_DATA_DIR"), "data directory kept between runs; empty: a temporary one (KAFKA_DATA_DIR)")
	level := fs.String("log-level", envOr("LOG_LEVEL", "info"), "log level (LOG_LEVEL)")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("kafkacluster: %w", err)
	}
	nodes, err := strconv.Atoi(*nodesText)
	if err != nil {
		return fmt.Errorf("kafkacluster: KAFKA_NODES %q: use 1 or 3", *nodesText)
	}
	log, err := service.NewLogger(os.Stderr, *level, "kafkacluster")
	if err != nil {
		return fmt.Errorf("kafkacluster: %w", err)
	}

	ctx, stop := service.SignalContext()
	defer stop()
	log.Info("starting kafka", "version", *version, "nodes", nodes, "data_dir", *dataDir)
	c, err := kafkacluster.Start(ctx, kafkacluster.Options{Version: *version, Nodes: nodes, Dir: *dataDir, Log: os.Stderr})
	if err != nil {
		return err
	}
	defer func() {
		log.Info("stopping kafka")
		c.Stop()
		log.Info("kafka stopped")
	}()
	log.Info("kafka ready", "brokers", c.BrokerList(), "data_dir", c.Dir(), "pids", c.PIDs())
	fmt.Printf("KAFKA_BROKERS=%s\n", c.BrokerList())
	<-ctx.Done()
	return nil
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
