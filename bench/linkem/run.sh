#!/usr/bin/env bash
# Measures linkem against a bare veth pair on this machine, side by side, in one run:
# one-stream TCP throughput (iperf3), added RTT (ping -i 0.01), delay fidelity at 20 ms,
# loss fidelity (1/10/30 % over 10,000 packets; Gilbert-Elliott burst length) and rate
# fidelity (1/10/100 Mbit/s TCP goodput). Needs root, iproute2, iperf3 and ping.
#
#   sudo bench/linkem/run.sh            # full run, about 3 minutes after the build
#   sudo bench/linkem/run.sh --quick    # shorter samples
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$here"
[ -f Cargo.lock ] || cp "$root/Cargo.lock" Cargo.lock
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
cargo build --release --quiet
exec "$CARGO_TARGET_DIR/release/linkem-bench" "$@"
