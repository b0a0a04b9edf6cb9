// Command devbroker runs the embedded Kafka-protocol broker (franz-go's
// kfake) of the local stack: one node on KAFKA_ADDR (default
// 127.0.0.1:9092) keeping its data in DATA_DIR (default .dev/kafka), so a
// restart resumes with the topics and offsets it had. It is for `make run`
// and benchmarks, not for production.
//
// Dev tooling, not product (see internal/testkit): it links no testing.
package main

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/usagemeter/metering/internal/service"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "devbroker:", err)
		os.Exit(1)
	}
}

func run() error {
	addr := envOr("KAFKA_ADDR", "127.0.0.1:9092")
	dir := envOr("DATA_DIR", ".dev/kafka")
	_, portText, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("KAFKA_ADDR %q: %w", addr, err)
	}
	port, err := strconv.Atoi(portText)
	if err != nil {
		return fmt.Errorf("KAFKA_ADDR %q: bad port", addr)
	}
	log, err := service.NewLogger(os.Stderr, envOr("LOG_LEVEL", "info"), "devbroker")
	if err != nil {
		return err
	}
	c, err := kfake.NewCluster(kfake.Ports(port), kfake.DataDir(dir), kfake.AllowAutoTopicCreation(),
		kfake.DefaultNumPartitions(12), kfake.GroupMinSessionTimeout(time.Second))
	if err != nil {
		return fmt.Errorf("starting broker on %s: %w", addr, err)
	}
	log.Info("kafka broker listening", "addr", c.ListenAddrs(), "data_dir", dir)
	ctx, stop := service.SignalContext()
	defer stop()
	<-ctx.Done()
	log.Info("stopping broker")
	c.Close()
	return nil
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
