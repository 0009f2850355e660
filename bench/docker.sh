#!/usr/bin/env bash
# Bring-up + teardown of N Pi-shaped docker nodes (default 50), side by side in one run:
#   edgesim  `edgesim up --target docker` of a 50-node scenario + `edgesim down` (release
#            build): node containers with the profile's limits, wired into the fabric (veths,
#            bridge, routes, nftables), hosts entries, parent cgroups; `up` returns once every
#            node link forwards.
#   loop     what a user scripts by hand: `docker run -d` of the same image with the same
#            limits (`--cpus --memory --memory-swap --pids-limit`, block-IO throttles) and
#            `--network none`, one after another, then `docker rm -f` of each: no fabric.
#   compose  (with --compose, where docker-compose is installed) `docker-compose up -d` and
#            `down` of the equivalent services (Debian 12 ships the retired 1.29).
# Repetitions are interleaved (the order rotates every repetition); medians are reported,
# with edgesim's time as a ratio of the loop's.
#
# Usage: sudo bench/docker.sh [-n REPS] [--nodes N] [--no-build] [--compose] [--keep]
# Needs: root, a Docker Engine, the node image (`images/build.sh --only node`).
set -euo pipefail

REPS=3
NODES=50
BUILD=1
COMPOSE=0
KEEP=0
while [ $# -gt 0 ]; do
    case "$1" in
        -n) REPS="$2"; shift 2 ;;
        --nodes) NODES="$2"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --compose) COMPOSE=1; shift ;;
        --keep) KEEP=1; shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${EDGESIM_BIN:-$ROOT/target/release/edgesim}
die() { echo "docker.sh: $*" >&2; exit 3; }
[ "$(id -u)" = 0 ] || die "needs root"
docker info >/dev/null 2>&1 || die "no Docker Engine answers"
if [ "$BUILD" = 1 ] && [ -z "${EDGESIM_BIN:-}" ]; then
    (cd "$ROOT" && cargo build --release -p edgesim --quiet) || die "cargo build --release failed"
fi
[ -x "$BIN" ] || die "no edgesim binary at $BIN"
VERSION=$(sed -n '/^\[workspace.package\]/,/^\[/ s/^version *= *"\(.*\)"/\1/p' "$ROOT/Cargo.toml")
ARCH=$(case "$(uname -m)" in aarch64) echo arm64 ;; *) echo amd64 ;; esac)
IMAGE="edgesim/node:$VERSION-$ARCH"
docker image inspect "$IMAGE" >/dev/null 2>&1 || die "no $IMAGE: build it with images/build.sh --arch $ARCH --only node"
if [ "$COMPOSE" = 1 ]; then command -v docker-compose >/dev/null || die "docker-compose not found"; fi

WORK=$(mktemp -d /tmp/edgesim-dockerbench.XXXXXX)
TAG="esdbench-$$"
NAME="dbench-$$"
cleanup() {
    local rc=$?
    "$BIN" down "$NAME" >/dev/null 2>&1 || true
    docker ps -aq --filter "label=$TAG" | xargs -r docker rm -f >/dev/null 2>&1 || true
    if [ "$COMPOSE" = 1 ] && [ -f "$WORK/compose.yaml" ]; then
        (cd "$WORK" && docker-compose -p "$TAG" down -t 0 >/dev/null 2>&1) || true
    fi
    if [ "$KEEP" = 1 ]; then echo "work folder kept: $WORK"; else rm -rf "$WORK"; fi
    exit $rc
}
trap cleanup EXIT INT TERM

cat > "$WORK/scenario.yaml" <<EOF
apiVersion: edgesim.dev/v1alpha1
kind: Scenario
metadata: {name: $NAME}
spec:
  duration: 1s
  sites: {edge: {}}
  nodes:
    - {name: pi, count: $NODES, site: edge, profile: raspberry-pi-5-8gb}
EOF

# The loop gets exactly the limits edgesim gives a node on this host: read from a node
# container of a warm-up lab (which also warms the image and page caches for everyone).
"$BIN" up --target docker "$WORK/scenario.yaml" --out "$WORK/out" > "$WORK/up.log" 2>&1 || { cat "$WORK/up.log" >&2; die "edgesim up failed"; }
FIRST=$(docker ps -q --filter "label=edgesim.scenario=$NAME" | head -1)
read -r NANO MEM SWAP PIDS < <(docker inspect -f '{{.HostConfig.NanoCpus}} {{.HostConfig.Memory}} {{.HostConfig.MemorySwap}} {{.HostConfig.PidsLimit}}' "$FIRST")
BLKIO=()
while read -r kind path rate; do
    [ -n "$kind" ] && BLKIO+=("--device-$kind" "$path:$rate")
done < <(docker inspect -f '{{range .HostConfig.BlkioDeviceReadBps}}read-bps {{.Path}} {{.Rate}}{{"\n"}}{{end}}{{range .HostConfig.BlkioDeviceWriteBps}}write-bps {{.Path}} {{.Rate}}{{"\n"}}{{end}}{{range .HostConfig.BlkioDeviceReadIOps}}read-iops {{.Path}} {{.Rate}}{{"\n"}}{{end}}{{range .HostConfig.BlkioDeviceWriteIOps}}write-iops {{.Path}} {{.Rate}}{{"\n"}}{{end}}' "$FIRST")
"$BIN" down "$NAME" > "$WORK/down.log" 2>&1 || die "edgesim down failed"
# No CPU limit when the profile's cores exceed this host's (the quota arithmetic of netns):
# NanoCpus 0.
CPU_ARG=()
[ "${NANO:-0}" -gt 0 ] 2>/dev/null && CPU_ARG=(--cpus "$(awk -v n="$NANO" 'BEGIN { printf "%.3f", n / 1e9 }')")
PIDS_ARG=()
[ "${PIDS:-0}" -gt 0 ] 2>/dev/null && PIDS_ARG=(--pids-limit "$PIDS")
echo "nodes: $NODES × $IMAGE, ${CPU_ARG[*]} --memory $MEM --memory-swap $SWAP ${PIDS_ARG[*]} ${BLKIO[*]}" >&2

now() { date +%s%N; }
ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (b - a) / 1e6 }'; }

run_edgesim() {
    local t0 t1 t2
    t0=$(now)
    "$BIN" up --target docker "$WORK/scenario.yaml" --out "$WORK/out" > "$WORK/up.log" 2>&1 || { cat "$WORK/up.log" >&2; die "edgesim up failed"; }
    t1=$(now)
    "$BIN" down "$NAME" > "$WORK/down.log" 2>&1 || { cat "$WORK/down.log" >&2; die "edgesim down failed"; }
    t2=$(now)
    [ -z "$(docker ps -aq --filter "label=edgesim.scenario=$NAME")" ] || die "edgesim left containers"
    echo "edgesim $(ms "$t0" "$t1") $(ms "$t1" "$t2")" >> "$WORK/samples"
}

run_loop() {
    local t0 t1 t2 i
    t0=$(now)
    for i in $(seq 1 "$NODES"); do
        docker run -d --name "$TAG-$i" --label "$TAG" --network none --hostname "pi-$i" \
            "${CPU_ARG[@]}" --memory "$MEM" --memory-swap "$SWAP" "${PIDS_ARG[@]}" \
            "${BLKIO[@]}" "$IMAGE" >/dev/null
    done
    t1=$(now)
    for i in $(seq 1 "$NODES"); do docker rm -f "$TAG-$i" >/dev/null; done
    t2=$(now)
    echo "loop $(ms "$t0" "$t1") $(ms "$t1" "$t2")" >> "$WORK/samples"
}

if [ "$COMPOSE" = 1 ]; then
    {
        echo 'version: "2.4"'
        echo "services:"
        for i in $(seq 1 "$NODES"); do
            cat <<EOF
  pi-$i:
    image: $IMAGE
    network_mode: none
    hostname: pi-$i
$( [ "${NANO:-0}" -gt 0 ] && echo "    cpus: $(awk -v n="$NANO" 'BEGIN { printf "%.3f", n / 1e9 }')")
    mem_limit: $MEM
    memswap_limit: $SWAP
    labels: [$TAG]
EOF
        done
    } > "$WORK/compose.yaml"
fi
run_compose() {
    local t0 t1 t2
    t0=$(now)
    (cd "$WORK" && docker-compose -p "$TAG" -f compose.yaml up -d >/dev/null 2>&1)
    t1=$(now)
    (cd "$WORK" && docker-compose -p "$TAG" -f compose.yaml down -t 10 >/dev/null 2>&1)
    t2=$(now)
    echo "compose $(ms "$t0" "$t1") $(ms "$t1" "$t2")" >> "$WORK/samples"
}

CONTENDERS=(edgesim loop)
[ "$COMPOSE" = 1 ] && CONTENDERS+=(compose)
for r in $(seq 1 "$REPS"); do
    n=${#CONTENDERS[@]}
    for k in $(seq 0 $((n - 1))); do
        c=${CONTENDERS[$(((k + r) % n))]}
        echo "rep $r: $c" >&2
        "run_$c"
    done
done

python3 - "$WORK/samples" "$NODES" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
nodes = sys.argv[2]
by = {}
for name, up, down in rows:
    by.setdefault(name, []).append((float(up), float(down)))
med = {k: (statistics.median(u for u, _ in v), statistics.median(d for _, d in v)) for k, v in by.items()}
print(f"{nodes} Pi-shaped docker nodes, medians of {len(next(iter(by.values())))} interleaved runs (ms):")
print(f"  {'':10} {'up':>9} {'down':>9} {'total':>9}")
for k, (u, d) in med.items():
    print(f"  {k:10} {u:9.0f} {d:9.0f} {u + d:9.0f}")
lu, ld = med["loop"]
eu, ed = med["edgesim"]
print(f"edgesim / loop: up {eu / lu:.2f}x, down {ed / ld:.2f}x, total {(eu + ed) / (lu + ld):.2f}x (below 1 = faster than the loop)")
EOF
