// Command redisbaseline is the design users would pick instead of the
// aggregator, run as its own process so that the kill test can SIGKILL
// it: a consumer group member reading usage.events and counting each
// event in Redis with a Lua script (SET NX on its id with the dedup
// horizon as TTL, then INCRBY on its minute, hour, day and month
// windows), pipelined per batch, offsets committed after the pipeline
// (see internal/testkit/redisbaseline). `make bench` measures it beside
// the aggregator.
//
//	KAFKA_BROKERS (127.0.0.1:9092)  REDIS_ADDR (127.0.0.1:6379)
//	KAFKA_TOPIC (usage.events)      GROUP (redis-baseline)
//	BATCH_SIZE (2000)  BATCH_WAIT (20ms)  SESSION_TIMEOUT (6s)
//	DEDUP_HORIZON (840h)  LOG_LEVEL (info)
//
// Dev tooling, not product (see internal/testkit): it links no testing.
package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/usagemeter/metering/internal/service"
	"github.com/usagemeter/metering/internal/testkit/redisbaseline"
	"github.com/usagemeter/metering/internal/topics"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "redisbaseline:", err)
		os.Exit(1)
	}
}

func run() error {
	log, err := service.NewLogger(os.Stderr, envOr("LOG_LEVEL", "info"), "redisbaseline")
	if err != nil {
		return err
	}
	batch, err := strconv.Atoi(envOr("BATCH_SIZE", "2000"))
	if err != nil {
		return fmt.Errorf("BATCH_SIZE: %w", err)
	}
	durations := map[string]time.Duration{}
	for k, def := range map[string]string{"BATCH_WAIT": "20ms", "SESSION_TIMEOUT": "6s", "DEDUP_HORIZON": "840h"} {
		if durations[k], err = time.ParseDuration(envOr(k, def)); err != nil {
			return fmt.Errorf("%s: %w", k, err)
		}
	}
	c := redisbaseline.NewConsumer(redisbaseline.ConsumerConfig{
		Brokers: strings.Split(envOr("KAFKA_BROKERS", "127.0.0.1:9092"), ","), Topic: envOr("KAFKA_TOPIC", topics.UsageEvents),
		Group: envOr("GROUP", "redis-baseline"), RedisAddr: envOr("REDIS_ADDR", "127.0.0.1:6379"),
		Horizon: durations["DEDUP_HORIZON"], BatchSize: batch, BatchWait: durations["BATCH_WAIT"],
		SessionTimeout: durations["SESSION_TIMEOUT"], Log: log,
	})
	defer c.Close()
	ctx, stop := service.SignalContext()
	defer stop()
	log.Info("counting into Redis", "redis", envOr("REDIS_ADDR", "127.0.0.1:6379"))
	return c.Run(ctx)
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
