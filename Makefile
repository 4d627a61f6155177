# Neuwerk: `make demo` shows the firewall end to end, `make test` runs every test.
# Both install what they need (Debian packages) when it is missing.

CARGO ?= cargo
BIN := target/release/neuwerk
# Namespace tests run in parallel, each with its own three namespaces.
INTEGRATION_THREADS ?= 4

.PHONY: all deps build test test.unit test.integration test.integration.single lint demo bench clean

all: build

## deps: Debian packages for the eBPF build and the namespace tests, and a pinned nats-server
deps:
	@scripts/deps.sh
	@scripts/nats-server.sh

## build: the release binary target/release/neuwerk
build: deps
	$(CARGO) build --release --locked

## lint: formatting and clippy, warnings are errors
lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

## test.unit: unprivileged tests of every crate
test.unit: deps
	$(CARGO) test --workspace --exclude neuwerk-integration --locked

## test.integration: every namespace test (root)
test.integration: build
	$(CARGO) test -p neuwerk-integration --release --locked -- --test-threads=$(INTEGRATION_THREADS)

## test.integration.single: the single-node namespace tests (root)
test.integration.single: build
	$(CARGO) test -p neuwerk-integration --release --locked -- --test-threads=$(INTEGRATION_THREADS)

## test: lint, unit and integration tests
test: lint test.unit test.integration

## demo: build, lay out the seed topology, run neuwerk, show allowed and blocked traffic, clean up
demo: build
	@scripts/demo.sh

## bench: neuwerk vs plain forwarding, nftables, dnsdist and unbound, in one run (root; ~30 min)
bench: build
	@scripts/bench-deps.sh
	$(CARGO) build --release --locked -p neuwerk-bench
	/usr/bin/python3 bench/run.py $(BENCH_ARGS)

clean:
	$(CARGO) clean
