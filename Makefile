# Kamaitachi — see README.md.
SHELL := /bin/bash
CARGO ?= cargo
BINS := kamaitachi-node kamaitachi-gateway kamaitachi-bench

.PHONY: all deps build data cluster stop status test bench fmt clippy clean

all: build

deps:
	@scripts/install-deps.sh

build: deps
	$(CARGO) build --release --workspace
	@mkdir -p bin
	@for b in $(BINS); do cp -f target/release/$$b bin/; done

data: build
	@[ -f data/master.db ] || ./bin/kamaitachi-node gen-data --db data/master.db

cluster: data
	@scripts/cluster.sh start

stop:
	@scripts/cluster.sh stop

status:
	@scripts/cluster.sh status

test: deps
	$(CARGO) build --workspace --all-targets
	$(CARGO) test --workspace -- --test-threads=2

bench: build
	@bench/node.sh

fmt:
	$(CARGO) fmt --all

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
	rm -rf bin
