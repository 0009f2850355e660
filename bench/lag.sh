#!/usr/bin/env bash
# Timeline lag: how late each timeline action takes effect against its schedule.
#
# Runs bench/scenarios/lag.yaml (100 actions of every kind over 21 s on five nodes, two ping
# probes running) with the release build and `--report`, RUNS times, and prints the lag from
# the reports' journals (`journal[].lag_ms` = applied - scheduled, `apply_ms` = time spent
# applying) pooled over the runs, broken down by action verb, against the goal p99 <= 5 ms
# (bench/lagstats.py). Then, in the same run, the physical baselines (bench/phases.rs
# `actions`): the same actions applied back to back outside the engine, how late a thread
# wakes at a deadline on this machine right now, and the CPU time of an nft transaction.
#
# Usage: sudo bench/lag.sh [-n RUNS] [--no-build] [--no-baseline] [--prio P | --compare P] [--keep]
#   -n RUNS        scenario runs to pool (default 3; each takes ~23 s)
#   --no-build     use the binaries as they are
#   --no-baseline  skip bench/phases.rs actions
#   --prio P       run edgesim under P = nice:N (`nice -n N`) or fifo:N (`chrt -f N`); children
#                  such as nft inherit it. An experiment: does CPU contention explain the tail?
#   --compare P    alternate runs at normal priority and under P; print both tables
#   --keep         keep the work folder with the reports
# Env: EDGESIM_BIN (binary to measure).
set -euo pipefail

RUNS=3
BUILD=1
BASELINE=1
PRIO=""
COMPARE=0
KEEP=0
while [ $# -gt 0 ]; do
    case "$1" in
        -n) RUNS="$2"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --no-baseline) BASELINE=0; shift ;;
        --prio) PRIO="$2"; shift 2 ;;
        --compare) PRIO="$2"; COMPARE=1; shift 2 ;;
        --keep) KEEP=1; shift ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SCEN="$ROOT/bench/scenarios/lag.yaml"
BIN=${EDGESIM_BIN:-$ROOT/target/release/edgesim}
die() { echo "lag.sh: $*" >&2; exit 3; }
[ "$(id -u)" = 0 ] || die "needs root"
command -v python3 >/dev/null || die "python3 not found (reads the JSON reports)"
case "$PRIO" in
    "") WRAP=() ;;
    nice:*) WRAP=(nice -n "${PRIO#nice:}") ;;
    fifo:*) WRAP=(chrt -f "${PRIO#fifo:}") ;;
    *) die "--prio/--compare take nice:N or fifo:N" ;;
esac

if [ "$BUILD" = 1 ] && [ -z "${EDGESIM_BIN:-}" ]; then
    (cd "$ROOT" && cargo build --release -p edgesim --quiet) || die "cargo build --release failed"
fi
[ -x "$BIN" ] || die "no edgesim binary at $BIN"
if [ "$BASELINE" = 1 ] && [ "$BUILD" = 1 ]; then
    (cd "$ROOT" && cargo bench -p edgesim --bench phases --no-run --quiet 2>/dev/null) || die "building bench/phases.rs failed"
fi

WORK=$(mktemp -d /tmp/edgesim-lag.XXXXXX)
cleanup() { local rc=$?; if [ "$KEEP" = 1 ]; then echo "work folder kept: $WORK"; else rm -rf "$WORK"; fi; exit $rc; }
trap cleanup EXIT

# run_one LABEL I [WRAPPER...]
run_one() {
    local label=$1 i=$2 rc=0
    shift 2
    "$@" "$BIN" run "$SCEN" --report "$WORK/$label-$i.json" --out "$WORK/$label-out-$i" \
        > "$WORK/$label-$i.log" 2>&1 || rc=$?
    # Exit 0 or 1 (an assertion failed) both leave a full journal; anything else is a failure.
    if [ "$rc" -gt 1 ] || [ ! -s "$WORK/$label-$i.json" ]; then
        tail -20 "$WORK/$label-$i.log" >&2
        die "edgesim run failed (exit $rc)"
    fi
}

normal=normal
prio=${PRIO:-normal}
echo "host: $(nproc) CPUs, kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg);" \
    "$RUNS run(s) of $(basename "$SCEN")${PRIO:+ under $PRIO}$([ "$COMPARE" = 1 ] && echo ", alternating with normal priority" || true)" >&2
for i in $(seq 1 "$RUNS"); do
    printf '  run %d/%d\r' "$i" "$RUNS" >&2
    if [ "$COMPARE" = 1 ]; then
        run_one "$normal" "$i"
        run_one "$prio" "$i" "${WRAP[@]}"
    else
        run_one "$prio" "$i" "${WRAP[@]}"
    fi
done
echo "load after the runs: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

labels=("$prio")
[ "$COMPARE" = 1 ] && labels=("$normal" "$prio")
for l in "${labels[@]}"; do
    python3 "$ROOT/bench/lagstats.py" "$l" "$WORK/$l"-[0-9]*.json
done

if [ "$BASELINE" = 1 ]; then
    exe=$(ls -t "$ROOT"/target/release/deps/phases-* 2>/dev/null | grep -v '\.d$' | head -1 || true)
    [ -n "$exe" ] || die "no bench/phases.rs binary: cargo bench -p edgesim --bench phases --no-run"
    echo
    echo "baselines (bench/phases.rs actions, normal priority), same machine, now:"
    "$exe" actions --reps 1 | sed '/^$/d'
fi
