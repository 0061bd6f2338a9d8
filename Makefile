# Thin aliases over cargo and scripts/. `make run` and `make test` are all a fresh machine needs.

CARGO ?= cargo
ARGS ?=

.PHONY: build run test lint fmt

build:
	$(CARGO) build --release

# Starts the daemon in local mode in the foreground (prints its ws:// URL; Ctrl-C stops it).
run:
	$(CARGO) run --release -- $(ARGS)

# Installs the few system tools the integration tests start (scripts/test-deps.sh), then
# builds the binary and runs every test; the benchmark is only compiled, never run.
test:
	./scripts/test-deps.sh
	CARGO_INCREMENTAL=0 $(CARGO) check --benches
	CARGO_INCREMENTAL=0 $(CARGO) test --bins --tests -- --test-threads=2

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

# Static musl release binary: build, then check linkage, size (<= 3.0 MB) and a run inside an
# empty root (scripts/static.sh).
.PHONY: static
static:
	./scripts/static.sh

# Performance table against an echo floor (benches/perf.rs), each row with its floor, ratio
# and issue-19 target (PASS/MISS); also written as JSON to target/bench/perf-<unix time>.json
# and target/bench/latest.json (BENCH_JSON=path instead). BENCH_BIN=path measures another
# build (e.g. the static one of `make static`), REFERENCE_BIN=path adds the same table for
# another server, BENCH_ONLY=size,true10k,... picks scenarios, BENCH_ROUNDS=n repeats each
# and takes medians. `make test` never runs it (the bench needs --bench).
.PHONY: bench
bench:
	$(CARGO) bench --bench perf

# This tree against another revision in one interleaved run (scripts/bench-compare.sh):
# builds BASE once into target/bench-base/<sha>/ from a temporary git worktree, builds this
# tree, runs every scenario on both binaries back to back (BENCH_ROUNDS=n: A B, B A, ...,
# medians) and prints a current/base ratio per row, plus the JSON report.
BASE ?=
.PHONY: bench-compare
bench-compare:
	./scripts/bench-compare.sh $(BASE)

# The real codex 0.171 client runs a scripted task through exec-server in both sandbox modes,
# with a fake model server (scripts/e2e/). Fetches the client once into .cache/e2e/ (npm);
# not part of `make test`. EXEC_SERVER_BIN=path tests another server (`upstream` = the client's
# own `codex exec-server`); CODEX_E2E_BIN=path uses a client on disk; E2E_MODES picks modes.
.PHONY: e2e
e2e:
	$(if $(EXEC_SERVER_BIN),,$(CARGO) build --release)
	./scripts/e2e/run.sh

# Interop of cloud mode v2 with the codex 0.171 binary (CODEX_BIN, default the cached musl
# build) in both roles, through a fake registry and relay. Not part of `make test`.
.PHONY: e2e-cloud
e2e-cloud:
	$(CARGO) test --test e2e_cloud -- --ignored --test-threads=1

# Property tests of the decoders, base64, seq paging and TOML against the toml crate with many
# fresh random cases (src/rpc/proptests.rs, src/process/proptests.rs, src/toml/tests.rs);
# `make test` runs the same properties on one fixed seed, 1,024-2,048 cases each.
# FUZZ_CASES=n changes the count; minutes at the default.
FUZZ_CASES ?= 200000
.PHONY: fuzz
fuzz:
	PROPTEST_CASES=$(FUZZ_CASES) $(CARGO) test --bin exec-server -- proptests toml::tests --test-threads=2

# Leak soak (tests/soak.rs) at full size: 10,000 sequential starts mixed with PTYs, reads,
# writes, terminates and session drops, then fds/threads/children back to idle and RSS
# within 8 MiB; and 1,000 processes alive at once, every byte checked. `make test` runs
# the same tests small (200 and 100).
.PHONY: soak
soak:
	SOAK_SEQUENTIAL=10000 SOAK_CONCURRENT=1000 $(CARGO) test --test soak -- --test-threads=1 --nocapture
