#!/usr/bin/env bash
# Action lag on boards beside netns, in the same run: how late each timeline action has taken
# effect on every board (the device target's `apply` returns once every board's agent has
# answered, so `journal[].lag_ms` = in effect on the boards − scheduled), against the same
# scenario on the netns target on this machine, run alternately.
#
# The boards are network namespaces each running a real sshd (Debian openssh-server) with
# per-run keys, reached from a controller namespace over SSH, each with its own agent: the
# path a real board takes (SSH, JSON lines, netlink on the board), without a LAN's latency.
# `--inventory FILE` measures real boards instead (their nodes must be named sink, e-1, e-2,
# w-1; the netns runs then stay on this machine).
#
# Usage: sudo bench/device-lag.sh [-n RUNS] [--no-build] [--inventory FILE] [--keep]
# Prints lagstats.py's tables for `netns` and `device`, and the ratio of their p50 and p99.
set -euo pipefail

RUNS=3
BUILD=1
KEEP=0
INVENTORY=""
while [ $# -gt 0 ]; do
    case "$1" in
        -n) RUNS="$2"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --inventory) INVENTORY="$2"; shift 2 ;;
        --keep) KEEP=1; shift ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${EDGESIM_BIN:-$ROOT/target/release/edgesim}
die() { echo "device-lag.sh: $*" >&2; exit 3; }
[ "$(id -u)" = 0 ] || die "needs root"
for p in python3 ssh ssh-keygen /usr/sbin/sshd; do command -v "$p" >/dev/null || die "needs $p"; done
if [ "$BUILD" = 1 ] && [ -z "${EDGESIM_BIN:-}" ]; then
    (cd "$ROOT" && cargo build --release -p edgesim --quiet) || die "cargo build --release failed"
fi
[ -x "$BIN" ] || die "no edgesim binary at $BIN"

WORK=$(mktemp -d /tmp/edgesim-devlag.XXXXXX)
P="edgesim-dl$$"
NAMES=(sink e-1 e-2 w-1)
SSHD_PIDS=()
cleanup() {
    local rc=$?
    for pid in "${SSHD_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for ns in $(ip netns list | awk '{print $1}' | grep "^$P-" || true); do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || true
    done
    [ -n "${MADE_RUN_SSHD:-}" ] && rmdir /run/sshd 2>/dev/null || true
    if [ "$KEEP" = 1 ]; then echo "work folder kept: $WORK"; else rm -rf "$WORK"; fi
    exit $rc
}
trap cleanup EXIT

# A profile shaped like this host: namespace boards are this host.
mem_kib=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
arch=$([ "$(uname -m)" = aarch64 ] && echo arm64 || echo amd64)
mkdir -p "$WORK/profiles"
cat >"$WORK/profiles/this-host.yaml" <<EOF
apiVersion: edgesim.dev/v1alpha1
kind: HardwareProfile
metadata: {name: this-host, description: this machine as a board}
spec:
  arch: $arch
  cpu: {model: this host, cores: $(nproc), clockGHz: 2.0, relativeSpeed: 1.0}
  memory: {total: ${mem_kib}Ki, reserved: 256Mi}
  storage: {kind: nvme, readMBps: 1000, writeMBps: 1000, readIops: 10000, writeIops: 10000}
  network: {nic: 1gbit}
  kernel: {netem: false}
EOF

# The lag scenario without what boards do not do (workloads, cpu, memory, freeze): per 2 s
# cycle a partition healed after 300 ms, an uplink impairment restored after 300 ms and a node
# isolated for 200 ms; two ping probes throughout.
python3 - "$WORK/lag.yaml" <<'PY'
import sys
t = []
for c in range(10):
    b = 1000 + 2000 * c
    t.append(f"    - {{at: {b}ms, for: 300ms, partition: {{name: cut-{c}, between: [[site/east], [site/cloud]]}}}}")
    t.append(f"    - {{at: {b + 400}ms, for: 300ms, impair: {{link: west-uplink, rate: 5mbit, loss: 1%}}}}")
    t.append(f"    - {{at: {b + 800}ms, for: 200ms, node-down: {{nodes: [e-2], mode: isolate}}}}")
open(sys.argv[1], "w").write("""apiVersion: edgesim.dev/v1alpha1
kind: Scenario
metadata: {name: bench-device-lag, description: 60 network actions over 21 s on four boards}
spec:
  seed: 11
  duration: 22s
  sites:
    cloud: {}
    east: {uplink: {site: cloud, rate: 50mbit, loss: 0.1%}}
    west: {uplink: {site: cloud, rate: 20mbit}}
  nodes:
    - {name: sink, site: cloud, profile: this-host}
    - {name: e, count: 2, site: east, profile: this-host}
    - {name: w-1, site: west, profile: this-host}
  timeline:
""" + "\n".join(t) + """
  probes:
    - {name: east, from: e-1, ping: sink, every: 100ms}
    - {name: west, from: w-1, ping: sink, every: 100ms}
""")
PY

CTL=()
if [ -z "$INVENTORY" ]; then
    # A LAN bridge, a controller namespace and one namespace per board, each with an sshd.
    ip netns add "$P-lan"
    ip -n "$P-lan" link add br0 type bridge
    ip -n "$P-lan" link set br0 up
    join() { # NS ADDR PORT
        ip netns add "$1"
        ip -n "$P-lan" link add "$3" type veth peer name eth0 netns "$1"
        ip -n "$P-lan" link set "$3" master br0 up
        ip -n "$1" addr add "$2/24" dev eth0
        ip -n "$1" link set eth0 up
        ip -n "$1" link set lo up
    }
    join "$P-ctl" 10.202.0.1 pc
    [ -d /run/sshd ] || { mkdir -p /run/sshd; MADE_RUN_SSHD=1; }
    ssh-keygen -q -t ed25519 -N '' -f "$WORK/user_key"
    INVENTORY="$WORK/inventory.yaml"
    printf 'all:\n  vars: {ansible_user: root, edgesim_profile: this-host}\n  hosts:\n' >"$INVENTORY"
    for i in "${!NAMES[@]}"; do
        ns="$P-b$i" addr="10.202.0.$((11 + i))" d="$WORK/board$i"
        mkdir -p "$d"
        join "$ns" "$addr" "p$i"
        ssh-keygen -q -t ed25519 -N '' -f "$d/host_key"
        cp "$WORK/user_key.pub" "$d/authorized_keys"
        echo "$addr $(cut -d' ' -f1,2 "$d/host_key.pub")" >"$d/known_hosts"
        printf 'Port 22\nListenAddress %s\nHostKey %s\nPidFile %s\nAuthorizedKeysFile %s\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nUsePAM no\nStrictModes no\nLogLevel FATAL\n' \
            "$addr" "$d/host_key" "$d/sshd.pid" "$d/authorized_keys" >"$d/sshd_config"
        ip netns exec "$ns" /usr/sbin/sshd -D -f "$d/sshd_config" &
        SSHD_PIDS+=($!)
        printf '    %s:\n      ansible_host: %s\n      ansible_ssh_private_key_file: %s\n      edgesim_known_hosts_file: %s\n      edgesim_cache_dir: %s\n' \
            "${NAMES[$i]}" "$addr" "$WORK/user_key" "$d/known_hosts" "$WORK/cache" >>"$INVENTORY"
    done
    for i in "${!NAMES[@]}"; do
        for _ in $(seq 50); do ip netns exec "$P-b$i" ss -Hltn 'sport = :22' | grep -q . && break; sleep 0.1; done
    done
    CTL=(ip netns exec "$P-ctl")
    # Namespace boards share this host's filesystem: this very binary is their agent.
    export EDGESIM_AGENT_X86_64="$BIN" EDGESIM_AGENT_AARCH64="$BIN"
fi
export EDGESIM_HOST_SPEED=1.0

run_one() { # TARGET I
    local rc=0 extra=()
    [ "$1" = device ] && extra=(--target device --inventory "$INVENTORY")
    [ "$1" = device ] && pre=("${CTL[@]}") || pre=()
    "${pre[@]}" "$BIN" --profiles "$WORK/profiles" run "$WORK/lag.yaml" "${extra[@]}" \
        --report "$WORK/$1-$2.json" --out "$WORK/$1-out-$2" >"$WORK/$1-$2.log" 2>&1 || rc=$?
    if [ "$rc" -gt 1 ] || [ ! -s "$WORK/$1-$2.json" ]; then
        tail -20 "$WORK/$1-$2.log" >&2
        die "edgesim run --target $1 failed (exit $rc)"
    fi
}

echo "host: $(nproc) CPUs, kernel $(uname -r); $RUNS run(s) per target, alternating" >&2
for i in $(seq 1 "$RUNS"); do
    printf '  run %d/%d\r' "$i" "$RUNS" >&2
    run_one netns "$i"
    run_one device "$i"
done
python3 "$ROOT/bench/lagstats.py" netns "$WORK"/netns-[0-9]*.json
python3 "$ROOT/bench/lagstats.py" device "$WORK"/device-[0-9]*.json
python3 - "$WORK" "$RUNS" <<'PY'
import json, math, sys
work, runs = sys.argv[1], int(sys.argv[2])
def lags(t):
    v = []
    for i in range(1, runs + 1):
        v += [j["lag_ms"] for j in json.load(open(f"{work}/{t}-{i}.json"))["journal"] if j.get("lag_ms") is not None]
    return sorted(v)
def pct(v, p):
    return v[max(1, math.ceil(p * len(v))) - 1]
n, d = lags("netns"), lags("device")
print(f"\ndevice / netns, all actions pooled: p50 {pct(d, .5):.2f} / {pct(n, .5):.2f} ms = {pct(d, .5) / pct(n, .5):.1f}x, "
      f"p99 {pct(d, .99):.2f} / {pct(n, .99):.2f} ms = {pct(d, .99) / pct(n, .99):.1f}x ({len(d)} and {len(n)} actions)")
PY
