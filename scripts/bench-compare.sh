#!/usr/bin/env bash
# `make bench-compare BASE=<git rev>`: the benchmark (benches/perf.rs) of this tree against
# another revision in one run, so a regression shows as a ratio rather than as an absolute
# time on a machine whose load changes from run to run.
#
# 1. BASE is built once with `cargo build --release` in a temporary git worktree under
#    target/bench-base/<sha>/tree (sharing this tree's target directory, so dependencies
#    are compiled once for both) and its binary kept as target/bench-base/<sha>/exec-server;
#    a later comparison with the same revision reuses it.
# 2. This tree is built the same way and its binary kept as target/bench-base/current/
#    exec-server (unless BENCH_BIN names the current binary).
# 3. The bench runs with BASE_BIN: for each scenario the current binary and then the base
#    (BENCH_ROUNDS=n: n rounds, alternating A B / B A, each figure the median), prints both
#    tables and a current/base table, and writes the JSON report (BENCH_JSON, default
#    target/bench/perf-<unix time>.json and target/bench/latest.json).
# BENCH_ONLY, BENCH_ROUNDS, BENCH_JSON and BENCH_BIN (the "current" binary) pass through.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
CARGO=${CARGO:-cargo}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

say() { printf 'bench-compare: %s\n' "$*"; }
fail() { printf 'bench-compare: FAIL: %s\n' "$*" >&2; exit 1; }

BASE=${1:-${BASE:-}}
[ -n "$BASE" ] || fail "usage: make bench-compare BASE=<git rev> (or $0 <rev>)"
SHA=$(git rev-parse --verify --quiet "${BASE}^{commit}") || fail "not a commit: $BASE"
SHORT=${SHA:0:12}
DIR=$TARGET_DIR/bench-base/$SHORT
BASE_BIN=$DIR/exec-server
TREE=$DIR/tree

remove_tree() {
    if [ -e "$TREE" ]; then
        git worktree remove --force "$TREE" >/dev/null 2>&1 || rm -rf "$TREE"
    fi
    git worktree prune
}

if [ -x "$BASE_BIN" ]; then
    say "base $BASE ($SHORT): reusing $BASE_BIN"
else
    say "base $BASE ($SHORT): building in $TREE"
    mkdir -p "$DIR"
    remove_tree
    trap remove_tree EXIT
    git worktree add --quiet --detach "$TREE" "$SHA"
    # The shared target directory: the dependencies are compiled once for both trees.
    (cd "$TREE" && CARGO_TARGET_DIR="$TARGET_DIR" "$CARGO" build --release)
    cp "$TARGET_DIR/release/exec-server" "$BASE_BIN.tmp"
    mv "$BASE_BIN.tmp" "$BASE_BIN"
    remove_tree
    trap - EXIT
fi

if [ -n "${BENCH_BIN:-}" ]; then
    say "current: BENCH_BIN=$BENCH_BIN"
else
    say "current tree: building"
    "$CARGO" build --release
    # Kept apart: `cargo bench` builds the crate's binary again with the dev-dependencies'
    # features unified into it and puts that one at target/release/exec-server; the base
    # was built as this one, by `cargo build --release`.
    BENCH_BIN=$TARGET_DIR/bench-base/current/exec-server
    mkdir -p "$(dirname "$BENCH_BIN")"
    cp "$TARGET_DIR/release/exec-server" "$BENCH_BIN.tmp"
    mv "$BENCH_BIN.tmp" "$BENCH_BIN"
    export BENCH_BIN
fi

CURRENT=$(git rev-parse --short=12 HEAD)
git diff --quiet HEAD -- src Cargo.toml Cargo.lock || CURRENT="$CURRENT with uncommitted changes"
say "running the bench: current ($CURRENT) against base $SHORT"
BASE_BIN="$BASE_BIN" BASE_NAME="$SHORT" "$CARGO" bench --bench perf
