package redisbaseline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"

	"github.com/usagemeter/metering/events"
	"github.com/usagemeter/metering/internal/windows"
)

// countScript is the whole of the baseline's exactly-once: the event's id
// key is set only when absent, with the dedup horizon as its TTL, and only
// then are its window counters incremented, atomically with the set.
// KEYS[1] is the id key, KEYS[2..] the window keys; ARGV[1] the TTL in
// seconds, ARGV[2] the value.
const countScript = `
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  for i = 2, #KEYS do redis.call('INCRBY', KEYS[i], ARGV[2]) end
  return 1
end
return 0`

// WindowKeyPrefix starts every counter key: usage:TENANT:METRIC:GRANULARITY:UNIX_START.
const WindowKeyPrefix = "usage:"

// IDKey is the dedup key of an event id of tenant.
func IDKey(tenant, id string) string { return "seen:" + tenant + ":" + id }

// WindowKey is the counter key of tenant's metric in the window of
// granularity g starting at start.
func WindowKey(tenant, metric string, g windows.Granularity, start time.Time) string {
	return WindowKeyPrefix + tenant + ":" + metric + ":" + string(g) + ":" + strconv.FormatInt(start.Unix(), 10)
}

// TruthKey is the key under which a ground truth and Totals hold a
// window's value: TENANT/METRIC/GRANULARITY/UNIX_START.
func TruthKey(tenant, metric string, g windows.Granularity, start time.Time) string {
	return tenant + "/" + metric + "/" + string(g) + "/" + strconv.FormatInt(start.Unix(), 10)
}

// ConsumerConfig configures the baseline consumer.
type ConsumerConfig struct {
	Brokers   []string
	Topic     string
	Group     string
	RedisAddr string
	// Horizon is the dedup keys' TTL (default 35 days, the ledger's).
	Horizon time.Duration
	// BatchSize is the most events per pipeline (default 2000); BatchWait
	// how long a batch waits to fill once it has one (default 20ms).
	BatchSize int
	BatchWait time.Duration
	// SessionTimeout of the group member (default 6s).
	SessionTimeout time.Duration
	Log            *slog.Logger
}

// Consumer is the baseline: a kafka-go consumer group member counting
// into Redis.
type Consumer struct {
	cfg    ConsumerConfig
	reader *kafka.Reader
	rdb    *redis.Client
	script *redis.Script
}

// NewConsumer returns a consumer; Run starts it.
func NewConsumer(cfg ConsumerConfig) *Consumer {
	if cfg.Horizon <= 0 {
		cfg.Horizon = 35 * 24 * time.Hour
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = 2000
	}
	if cfg.BatchWait <= 0 {
		cfg.BatchWait = 20 * time.Millisecond
	}
	if cfg.SessionTimeout <= 0 {
		cfg.SessionTimeout = 6 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Consumer{
		cfg: cfg,
		reader: kafka.NewReader(kafka.ReaderConfig{Brokers: cfg.Brokers, Topic: cfg.Topic, GroupID: cfg.Group,
			StartOffset: kafka.FirstOffset, MinBytes: 1, MaxBytes: 16 << 20, MaxWait: cfg.BatchWait,
			SessionTimeout: cfg.SessionTimeout, HeartbeatInterval: cfg.SessionTimeout / 3,
			RebalanceTimeout: 2 * cfg.SessionTimeout, QueueCapacity: cfg.BatchSize,
			ErrorLogger: kafka.LoggerFunc(func(msg string, args ...any) { cfg.Log.Warn("kafka: " + fmt.Sprintf(msg, args...)) })}),
		rdb:    redis.NewClient(&redis.Options{Addr: cfg.RedisAddr, MaxRetries: -1, DialTimeout: time.Second, ReadTimeout: 10 * time.Second}),
		script: redis.NewScript(countScript),
	}
}

// Close releases the reader and the Redis client.
func (c *Consumer) Close() error {
	return errors.Join(c.reader.Close(), c.rdb.Close())
}

// Run consumes until ctx ends: fetch a batch, count it in one pipeline
// (retried whole until Redis answers), commit its offsets.
func (c *Consumer) Run(ctx context.Context) error {
	// The script is loaded once here, and again after a restart of Redis
	// (count sees NOSCRIPT).
	for c.script.Load(ctx, c.rdb).Err() != nil {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(100 * time.Millisecond):
		}
	}
	msgs := make([]kafka.Message, 0, c.cfg.BatchSize)
	for {
		msgs = msgs[:0]
		m, err := c.reader.FetchMessage(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("fetching from %s: %w", c.cfg.Topic, err)
		}
		msgs = append(msgs, m)
		fill, cancel := context.WithTimeout(ctx, c.cfg.BatchWait)
		for len(msgs) < c.cfg.BatchSize {
			m, err := c.reader.FetchMessage(fill)
			if err != nil {
				break
			}
			msgs = append(msgs, m)
		}
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		for attempt := 0; ; attempt++ {
			err := c.count(ctx, msgs)
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return nil
			}
			if attempt%50 == 0 {
				c.cfg.Log.Warn("counting a batch in Redis failed; retrying", "err", err, "attempt", attempt)
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err := c.reader.CommitMessages(ctx, msgs...); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			c.cfg.Log.Warn("committing offsets failed; the batch will be read again", "err", err)
		}
	}
}

// count runs the script for every valid event of msgs in one pipeline.
// Records that are not a valid event are skipped.
func (c *Consumer) count(ctx context.Context, msgs []kafka.Message) error {
	pipe, n := c.pipeline(ctx, msgs)
	if n == 0 {
		return nil
	}
	_, err := pipe.Exec(ctx)
	if err != nil && strings.Contains(err.Error(), "NOSCRIPT") {
		// A restarted Redis has lost its scripts: load it, run the batch
		// again (the ids already counted are skipped).
		if lerr := c.script.Load(ctx, c.rdb).Err(); lerr != nil {
			return fmt.Errorf("loading the script: %w", lerr)
		}
		pipe, _ = c.pipeline(ctx, msgs)
		_, err = pipe.Exec(ctx)
	}
	if err != nil {
		return fmt.Errorf("pipeline of %d events: %w", n, err)
	}
	return nil
}

// pipeline queues the script for every valid event of msgs and returns
// the pipeline and how many it queued.
func (c *Consumer) pipeline(ctx context.Context, msgs []kafka.Message) (redis.Pipeliner, int) {
	pipe := c.rdb.Pipeline()
	ttl := strconv.FormatInt(int64(c.cfg.Horizon/time.Second), 10)
	n := 0
	for _, m := range msgs {
		var e events.Event
		if err := e.UnmarshalJSON(m.Value); err != nil || e.Tenant == "" || e.ID == "" {
			continue
		}
		keys := make([]string, 0, 1+len(windows.All))
		keys = append(keys, IDKey(e.Tenant, e.ID))
		for _, g := range windows.All {
			keys = append(keys, WindowKey(e.Tenant, e.Metric, g, g.Start(e.Time)))
		}
		c.script.EvalSha(ctx, pipe, keys, ttl, e.Value)
		n++
	}
	return pipe, n
}

// Totals reads every window counter from the Redis at addr, by TruthKey.
func Totals(ctx context.Context, addr string) (map[string]int64, error) {
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	got := map[string]int64{}
	iter := rdb.Scan(ctx, 0, WindowKeyPrefix+"*", 5000).Iterator()
	var keys []string
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	if err := iter.Err(); err != nil {
		return nil, fmt.Errorf("scanning the counters: %w", err)
	}
	for start := 0; start < len(keys); start += 1000 {
		chunk := keys[start:min(start+1000, len(keys))]
		vals, err := rdb.MGet(ctx, chunk...).Result()
		if err != nil {
			return nil, fmt.Errorf("reading the counters: %w", err)
		}
		for i, v := range vals {
			s, _ := v.(string)
			n, err := strconv.ParseInt(s, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("counter %s holds %v", chunk[i], v)
			}
			// TENANT:METRIC:GRANULARITY:START, the tenant possibly with colons.
			parts := strings.Split(strings.TrimPrefix(chunk[i], WindowKeyPrefix), ":")
			if len(parts) < 4 {
				return nil, fmt.Errorf("unexpected counter key %s", chunk[i])
			}
			k := len(parts) - 3
			got[strings.Join(parts[:k], ":")+"/"+strings.Join(parts[k:], "/")] = n
		}
	}
	return got, nil
}
