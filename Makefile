# The developer's and CI's commands. `make test` is all CI runs.
GO ?= go

.PHONY: build test lint run demo bench bench-quick profile chaos fuzz kafka schemathesis clean

build:
	$(GO) build -o bin/ ./cmd/... ./tools/...

test:
	scripts/test.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) tool staticcheck ./...

run:
	scripts/run.sh

# schemathesis against the OpenAPI document the services serve, with real
# keys (part of make test); SCHEMATHESIS_EXAMPLES, SCHEMATHESIS_SEED.
schemathesis:
	scripts/schemathesis.sh

# A real Apache Kafka KRaft cluster from the broker's jars (fetched with mvn,
# cached outside the repository) in the foreground; prints
# KAFKA_BROKERS=... once every broker answers; Ctrl-C stops it.
# KAFKA_VERSION (4.1.1 or 3.9.1), KAFKA_NODES (1 or 3), KAFKA_DATA_DIR.
kafka:
	@$(GO) build -o .dev/bin/kafkacluster ./tools/kafkacluster
	@$(if $(KAFKA_VERSION),KAFKA_VERSION=$(KAFKA_VERSION)) $(if $(KAFKA_NODES),KAFKA_NODES=$(KAFKA_NODES)) \
	$(if $(KAFKA_DATA_DIR),KAFKA_DATA_DIR=$(KAFKA_DATA_DIR)) exec .dev/bin/kafkacluster

# Sends demo traffic to the stack `make run` started, then prints usage,
# quota states, breaches and the reconciliation report.
demo:
	$(GO) run ./tools/loadgen $(ARGS)

# 1,000,000 events through the whole pipeline while services are killed,
# the broker and Postgres restarted and Stripe fails 10 % of calls; exits
# non-zero unless every invariant holds. A reduced run is part of make test.
chaos:
	$(GO) run ./tools/chaos $(ARGS)

# Every benchmark in one run, written to BENCHMARKS.md with each figure
# beside its baseline; bench-quick is the same in a few minutes, a smoke
# check written to .dev/BENCHMARKS.quick.md. Both use TEST_DATABASE_URL's
# Postgres, or start a throwaway one (scripts/bench.sh).
bench:
	scripts/bench.sh

bench-quick:
	scripts/bench.sh -quick

# The pipeline benchmark with CPU and allocation profiles of ingest, the
# aggregator, the biller and the broker, written to .dev/profiles; prints
# the top of each. ARGS=-quick for the short steps.
profile:
	scripts/profile.sh $(ARGS)

# Fuzz every decoder and query parser for FUZZTIME each (default 30s);
# findings land in testdata/fuzz and then run as regression tests.
FUZZTIME ?= 30s
FUZZ_TARGETS = \
	FuzzDecodeJSON:./events FuzzDecodeNDJSON:./events FuzzDecodeCloudEvent:./events FuzzDecodeCloudEventBatch:./events \
	FuzzDecodeCloudEventBinary:./events FuzzUnmarshalJSON:./events FuzzWireScan:./events FuzzScan:./events/jsonscan FuzzAppendParse:./events/jsonstring FuzzChecks:./events/fieldcheck \
	FuzzParseUsageQuery:./internal/ingest FuzzParsePeriod:./internal/biller FuzzRun:./internal/cli FuzzLoad:./internal/config \
	FuzzDecodePack:./internal/storage/usagedata
fuzz:
	for t in $(FUZZ_TARGETS); do \
		$(GO) test -run '^$$' -fuzz "^$${t%%:*}$$" -fuzztime $(FUZZTIME) "$${t#*:}" || exit 1; done

clean:
	rm -rf bin .dev/bin
