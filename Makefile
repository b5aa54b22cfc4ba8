# Kamaitachi — see README.md.
SHELL := /bin/bash
CARGO ?= cargo
# release (default) or debug: which build `make build` copies into bin/.
PROFILE ?= release
BINS := kamaitachi-node kamaitachi-gateway kamaitachi-bench
# Sample data size for `make data`.
SUBJECTS ?= 5000
# Ports of the local cluster (see scripts/cluster.sh).
export MASTER_PORT SLAVE1_PORT SLAVE2_PORT GATEWAY_PORT ETCD_PORT ETCD_MEMBERS

ifeq ($(PROFILE),release)
CARGO_PROFILE_FLAG := --release
else
CARGO_PROFILE_FLAG :=
endif
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)

.PHONY: all deps build data cluster stop status node monitor test bench fmt clippy clean

all: build

deps:
	@scripts/install-deps.sh

build: deps
	$(CARGO) build $(CARGO_PROFILE_FLAG) --workspace --bins
	@mkdir -p bin
	@for b in $(BINS); do cp -f $(TARGET_DIR)/$(PROFILE)/$$b bin/; done

data: build
	@[ -f data/master.db ] || ./bin/kamaitachi-node gen-data --db data/master.db --subjects $(SUBJECTS)

cluster: data
	@scripts/cluster.sh start

stop:
	@scripts/monitor.sh stop
	@scripts/cluster.sh stop

status:
	@scripts/cluster.sh status

# make node N=3: one more slave on the next free port.
node:
	@scripts/cluster.sh add $(N)

# A real Prometheus scraping every node through the gateway (deploy/prometheus/).
monitor: deps
	@scripts/monitor.sh start

test: deps
	$(CARGO) build --workspace --all-targets
	$(CARGO) test --workspace -- --test-threads=2

bench: build
	@bench/compare.sh

fmt:
	$(CARGO) fmt --all

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
	rm -rf bin
