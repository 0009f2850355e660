#!/usr/bin/env bash
# The edgesim action's first step: the packages edgesim's targets use, then edgesim itself
# (built from the action's source, with the workload apps beside it, unless EDGESIM_BIN names
# a binary). Writes `edgesim=<path>` to $GITHUB_OUTPUT.
#
# Env: EDGESIM_BIN (a prebuilt binary, or empty), EDGESIM_INSTALL_PACKAGES (true|false),
# EDGESIM_SOURCE (the edgesim checkout to build), GITHUB_OUTPUT.
set -Eeuo pipefail

retry() {
  local n=1
  until "$@"; do
    if [ "$n" -ge 4 ]; then echo "failed after $n attempts: $*" >&2; return 1; fi
    echo "attempt $n failed: $*; retrying in $((n * 10))s" >&2
    sleep $((n * 10)); n=$((n + 1))
  done
}
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

start=$(date +%s)
if [ "${EDGESIM_INSTALL_PACKAGES:-true}" = true ]; then
  if ! command -v apt-get >/dev/null; then
    echo "::error::install-packages needs apt-get (Debian or Ubuntu runners); set it to false and provide iproute2, nftables and python3" >&2
    exit 1
  fi
  retry as_root apt-get update -q
  retry as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    iproute2 nftables iputils-ping iperf3 python3 kmod ethtool
  # netem where the runner's kernel has it (GitHub's Ubuntu runners do); linkem otherwise.
  as_root modprobe sch_netem 2>/dev/null || echo "sch_netem not available: edgesim uses linkem"
  echo "packages: $(( $(date +%s) - start ))s"
fi

if [ -n "${EDGESIM_BIN:-}" ]; then
  bin=$(realpath "$EDGESIM_BIN")
  [ -x "$bin" ] || { echo "::error::edgesim binary $EDGESIM_BIN is not executable" >&2; exit 1; }
else
  src=$(realpath "${EDGESIM_SOURCE:?EDGESIM_SOURCE or EDGESIM_BIN must be set}")
  [ -f "$src/simulator/Cargo.toml" ] || { echo "::error::$src is not an edgesim checkout" >&2; exit 1; }
  command -v cargo >/dev/null || { echo "::error::building edgesim needs cargo (rustup) on the runner" >&2; exit 1; }
  build=$(date +%s)
  # Release builds, like users install; the apps land beside edgesim, where it finds them.
  (cd "$src" && retry cargo fetch --locked && cargo build --release --locked --workspace --bins)
  bin="$src/target/release/edgesim"
  echo "edgesim built in $(( $(date +%s) - build ))s"
fi
"$bin" --version
echo "edgesim=$bin" >>"${GITHUB_OUTPUT:-/dev/null}"
