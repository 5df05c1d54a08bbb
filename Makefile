# omnifold — see README.md.
#   make run    build, start a local broker, load demo data, serve
#   make test   every test, starting the broker it needs
#   make soak   long fault runs (hundreds of kills)
#   make fuzz   a long fuzz run of decode + validate + fold
#   make bench  benchmarks (results in docs/benchmarks.md)

SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
BIN := $(TARGET_DIR)/release/omnifold

.PHONY: run test soak fuzz bench deps build fmt lint clean

## Install what a fresh machine lacks: libclang (RocksDB bindings), a C/C++
## toolchain, and the tansu broker.
deps:
	@deploy/install-deps.sh

build: deps
	cargo build --release --workspace --bins

run: build
	@OMNIFOLD_BIN=$(BIN) deploy/run-local.sh

test: deps
	cargo test --workspace

## The long fault runs: hundreds of kills in the crash loop.
soak: deps
	CRASHLOOP_KILLS=$${CRASHLOOP_KILLS:-300} cargo test --workspace --test crashloop -- --nocapture

## A long fuzz run (a short one is part of `make test`); failures are kept in
## crates/ingest/tests/fuzz.proptest-regressions.
fuzz: deps
	FUZZ_CASES=$${FUZZ_CASES:-20000} cargo test --workspace --test fuzz -- --nocapture

bench: build
	OMNIFOLD_BIN=$(abspath $(BIN)) cargo bench --workspace

fmt:
	cargo fmt --all

lint: deps
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	$${OMNIFOLD_TOOLS:-$$HOME/.cache/omnifold/tools}/node_modules/.bin/buf lint

clean:
	rm -rf .omnifold
