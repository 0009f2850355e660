#!/usr/bin/env bash
# Bring-up + teardown at 200 nodes (or 1000, 2000, 4000: SCALE_NODES), side by side in one run
# on this machine:
#   edgesim  `edgesim up <scenario>` + `edgesim down <name>` (release build); 200 nodes is
#            scenarios/scale-200.yaml itself, other sizes a copy of it with the four node
#            entries' counts scaled (`scale-<N>`, generated into the work folder)
#   mininet  `mn --switch lxbr --controller none --topo single,N --test none` (a Linux bridge
#            takes at most 1023 ports: above that `--topo linear,4,N/4`, four bridges)
#   floor    N bare `ip netns add` + four bridges (one per site, as edgesim builds) + N veth
#            pairs (peer created directly in each node namespace) via `ip -batch`, then the
#            namespaces deleted: what the kernel needs for the same shape with no addresses,
#            cgroups, tc, nftables or hosts files.
# Repetitions are interleaved (the order rotates every repetition) so that background load
# hits every contender alike; medians are reported, per size, then one line per size with the
# ratios. Also reports the peak RSS (VmHWM) of edgesim's lab process with the nodes up.
#
# Usage: sudo bench/scale.sh [-n REPS] [--no-build] [--no-mininet] [--keep]
#   -n REPS       repetitions of each contender (default 5)
#   --no-build    use target/release/edgesim as it is (default: cargo build --release first)
#   --no-mininet  skip Mininet (e.g. where it is not installed)
#   --keep        keep the work folder (logs, edgesim reports, raw samples)
# Env: EDGESIM_BIN (binary to measure); SCALE_NODES: node counts to measure, space- or
#   comma-separated (default 200; each a multiple of 4, at most 4088: four sites of at most
#   1022 nodes, validation's limit per site with the link emulator), e.g.
#   SCALE_NODES="1000 2000 4000".
#
# Needs root, iproute2, and for the peer the Debian packages `mininet` and `bridge-utils`
# (the lxbr switch calls brctl). The script never runs `mn -c`: that command kills every
# process named ping/mnexec/… on the machine and deletes /tmp/*.log; leftovers of our own
# Mininet runs are removed by name instead.
set -euo pipefail

REPS=5
BUILD=1
MININET=1
KEEP=0
while [ $# -gt 0 ]; do
    case "$1" in
        -n) REPS="$2"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --no-mininet) MININET=0; shift ;;
        --keep) KEEP=1; shift ;;
        -h|--help) sed -n '2,31p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SIZES=$(echo "${SCALE_NODES:-200}" | tr ',' ' ')
BIN=${EDGESIM_BIN:-$ROOT/target/release/edgesim}

die() { echo "scale.sh: $*" >&2; exit 3; }
for n in $SIZES; do
    case "$n" in *[!0-9]*|'') die "SCALE_NODES: \`$n\` is not a number" ;; esac
    [ $((n % 4)) = 0 ] && [ "$n" -ge 4 ] && [ "$n" -le 4088 ] \
        || die "SCALE_NODES: $n is not a multiple of 4 between 4 and 4088 (four sites of at most 1022)"
done
[ "$(id -u)" = 0 ] || die "needs root (network namespaces, cgroups, nftables)"
command -v ip >/dev/null || die "iproute2 (ip) not found"
if [ "$MININET" = 1 ]; then
    command -v mn >/dev/null || die "mininet not found (apt-get install mininet bridge-utils), or pass --no-mininet"
    command -v brctl >/dev/null || die "brctl not found: mn --switch lxbr needs bridge-utils (apt-get install bridge-utils)"
fi
if [ "$BUILD" = 1 ] && [ -z "${EDGESIM_BIN:-}" ]; then
    (cd "$ROOT" && cargo build --release -p edgesim --quiet) || die "cargo build --release failed"
fi
[ -x "$BIN" ] || die "no edgesim binary at $BIN (build with cargo build --release -p edgesim)"
command -v python3 >/dev/null || die "python3 not found (used to read edgesim's JSON state and report)"
# jget FILE EXPR: a value from a JSON file (`d` is the document).
jget() { python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }
for f in /run/edgesim/*.json; do
    [ -e "$f" ] || continue
    for n in $SIZES; do
        [ "$(jget "$f" 'd.get("scenario")' 2>/dev/null)" = "scale-$n" ] \
            && die "a scale-$n lab is already up on this machine ($f); edgesim down scale-$n first"
    done
done
if [ "$MININET" = 1 ]; then
    for sw in s1 s2 s3 s4; do
        ip link show "$sw" >/dev/null 2>&1 \
            && die "an interface named $sw exists: another Mininet is running (or left over); not touching it"
    done
fi

WORK=$(mktemp -d /tmp/edgesim-scale.XXXXXX)
TAG="esbench-$$"
FLOOR_FAB="$TAG-fab"
LAB_UP=0
POLLER=""

now() { date +%s%N; }
ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (b - a) / 1e6 }'; }

cleanup() {
    local rc=$?
    [ -n "$POLLER" ] && kill "$POLLER" 2>/dev/null || true
    if [ "$LAB_UP" = 1 ]; then "$BIN" down "$NAME" >/dev/null 2>&1 || true; fi
    # Our floor namespaces, by our tag only.
    ip netns list 2>/dev/null | awk '{print $1}' | grep "^$TAG-" | sed 's/^/netns del /' > "$WORK/leftover.batch" || true
    [ -s "$WORK/leftover.batch" ] && ip -force -batch "$WORK/leftover.batch" 2>/dev/null || true
    mininet_leftovers
    if [ "$KEEP" = 1 ]; then echo "work folder kept: $WORK"; else rm -rf "$WORK"; fi
    exit $rc
}
# What a finished or interrupted `mn` run of ours may leave in the root namespace: the lxbr
# bridges s1 (s1-s4 with the linear topology) and the switch ends s<K>-eth<N> (host ends live
# in the hosts' namespaces, which vanish with their processes). Nothing else is touched.
mininet_leftovers() {
    [ "$MININET" = 1 ] || return 0
    local left
    left=$(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' | grep -E '^s[1-4](-eth[0-9]+)?$' || true)
    if [ -n "$left" ]; then
        echo "$left" | sed 's/^/link del /' > "$WORK/mnleft.batch"
        ip -force -batch "$WORK/mnleft.batch" 2>/dev/null || true
        echo "removed $(echo "$left" | wc -l) Mininet leftover interface(s)" >&2
    fi
}
trap cleanup EXIT INT TERM

# --- per size: the scenario copy and the floor batches -------------------------------------
# prepare N: sets NODES, SCEN, NAME and writes the floor's batches for N nodes.
prepare() {
    NODES=$1
    NAME="scale-$NODES"
    SCEN="$WORK/$NAME.yaml"
    if [ "$NODES" = 200 ]; then
        SCEN="$ROOT/scenarios/scale-200.yaml"
    else
        local per=$((NODES / 4))
        sed -e "s/^  name: scale-200$/  name: $NAME/" \
            -e "s/count: 50,/count: $per,/" \
            -e "s/ping: d-50,/ping: d-$per,/" \
            -e "1s/^# 200 /# $NODES /" -e "1i # Generated by bench/scale.sh from scenarios/scale-200.yaml." \
            -e "s/description: 200 Pi 5 nodes/description: $NODES Pi 5 nodes/" \
            "$ROOT/scenarios/scale-200.yaml" > "$SCEN"
        [ "$(grep -c "count: $per," "$SCEN")" = 4 ] || die "could not generate $SCEN from scale-200.yaml"
        "$BIN" validate "$SCEN" > "$WORK/validate-$NODES.log" 2>&1 \
            || { cat "$WORK/validate-$NODES.log" >&2; die "the generated $SCEN does not validate"; }
    fi
    # The floor: four bridges as edgesim's four sites (a bridge takes at most 1023 ports).
    {
        echo "netns add $FLOOR_FAB"
        for i in $(seq 1 "$NODES"); do echo "netns add $TAG-n$i"; done
    } > "$WORK/floor-ns.batch"
    {
        for b in 0 1 2 3; do echo "link add br$b type bridge"; echo "link set br$b up"; done
        for i in $(seq 1 "$NODES"); do echo "link add v$i type veth peer name eth0 netns $TAG-n$i"; done
        for i in $(seq 1 "$NODES"); do echo "link set v$i master br$(( (i - 1) * 4 / NODES )) up"; done
    } > "$WORK/floor-fab.batch"
    {
        for i in $(seq "$NODES" -1 1); do echo "netns del $TAG-n$i"; done
        echo "netns del $FLOOR_FAB"
    } > "$WORK/floor-del.batch"
}

run_floor() {
    local i=$1 t0 t1 t2
    t0=$(now)
    ip -batch "$WORK/floor-ns.batch"
    ip -n "$FLOOR_FAB" -batch "$WORK/floor-fab.batch"
    t1=$(now)
    [ "$(ip -n "$FLOOR_FAB" -o link show type veth | wc -l)" = "$NODES" ] || die "floor: expected $NODES veths"
    t2=$(now)
    ip -batch "$WORK/floor-del.batch"
    local t3; t3=$(now)
    echo "floor $i $(ms "$t0" "$t1") $(ms "$t2" "$t3")" >> "$WORK/samples-$NODES"
}

# Polls the lab process (no forks: bash builtins only) and records when it has exited,
# i.e. turned zombie or vanished, so `down` can be split into "lab gone" and CLI overhead.
watch_exit() {
    local pid=$1 out=$2 line st fd
    exec {fd}<> <(:)
    while :; do
        if ! read -r line < "/proc/$pid/stat" 2>/dev/null; then break; fi
        st=${line##*) }; st=${st%% *}
        [ "$st" = Z ] || [ "$st" = X ] && break
        read -t 0.001 -u "$fd" _ || true
    done
    now > "$out"
}

run_edgesim() {
    local i=$1 out="$WORK/es-$NODES-$i" t0 t1 t2 t3 run pid hwm rss
    t0=$(now)
    "$BIN" up "$SCEN" --out "$out" > "$WORK/es-up-$i.log" 2>&1 || { cat "$WORK/es-up-$i.log" >&2; die "edgesim up failed"; }
    t1=$(now)
    LAB_UP=1
    run=$(grep -o 'run [0-9a-f]\{6\}' "$WORK/es-up-$i.log" | head -1 | cut -d' ' -f2)
    pid=$(jget "/run/edgesim/$run.json" 'd["pid"]')
    [ "$(ip netns list | grep -c "^edgesim-$run-")" -ge "$NODES" ] || die "edgesim: fewer than $NODES namespaces up"
    hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status")
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
    watch_exit "$pid" "$WORK/exit-$i" &
    POLLER=$!
    t2=$(now)
    "$BIN" down "$NAME" > "$WORK/es-down-$i.log" 2>&1 || { cat "$WORK/es-down-$i.log" >&2; die "edgesim down failed"; }
    t3=$(now)
    LAB_UP=0
    wait "$POLLER" 2>/dev/null || true
    POLLER=""
    local exited; exited=$(cat "$WORK/exit-$i")
    [ "$(ip netns list | grep -c "^edgesim-$run-")" = 0 ] || die "edgesim: namespaces of run $run left after down"
    # Phases the engine itself timed (report.json is written by the lab process before it exits).
    local prov tear
    prov=$(jget "$out/report.json" '"%.1f" % (1e3 * next(p["seconds"] for p in d["phases"] if p["name"] == "provision"))')
    tear=$(jget "$out/report.json" '"%.1f" % (1e3 * d["teardown"]["seconds"])')
    echo "edgesim $i $(ms "$t0" "$t1") $(ms "$t2" "$t3") $hwm $rss $prov $tear $(ms "$t2" "$exited")" >> "$WORK/samples-$NODES"
}

mn_topo() { if [ "$NODES" -le 1023 ]; then echo "single,$NODES"; else echo "linear,4,$((NODES / 4))"; fi; }

run_mininet() {
    local i=$1 t0 t1
    t0=$(now)
    mn --switch lxbr --controller none --topo "$(mn_topo)" --test none > "$WORK/mn-$i.log" 2>&1 \
        || { tail -20 "$WORK/mn-$i.log" >&2; die "mininet failed"; }
    t1=$(now)
    mininet_leftovers
    local own; own=$(grep -o 'completed in [0-9.]*' "$WORK/mn-$i.log" | awk '{printf "%.1f", $3*1000}')
    echo "mininet $i $(ms "$t0" "$t1") ${own:-nan}" >> "$WORK/samples-$NODES"
}

contenders=(floor edgesim)
[ "$MININET" = 1 ] && contenders+=(mininet)
echo "host: $(nproc) CPUs, kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg); $REPS repetitions of" \
    "$(echo $SIZES | sed 's/ /, /g') nodes" >&2
echo "edgesim: $BIN ($("$BIN" --version 2>/dev/null || echo unknown version))" >&2
[ "$MININET" = 1 ] && echo "mininet: $(mn --version 2>/dev/null)" >&2

med() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) { print "nan"; exit } m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.1f", m }'; }
minmax() { sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.1f–%.1f", lo, hi }'; }
col() { awk -v c="$1" -v k="$2" '$1 == c { print $k }' "$SAMPLES"; }
sumcol() { awk -v c="$1" '$1 == c { printf "%.3f\n", $3 + $4 }' "$SAMPLES"; }

# summary N: the per-size report, and one line of the final table into $WORK/table.
summary() {
    f_up=$(col floor 3 | med); f_down=$(col floor 4 | med); f_tot=$(sumcol floor | med)
    e_up=$(col edgesim 3 | med); e_down=$(col edgesim 4 | med); e_tot=$(sumcol edgesim | med)
    e_hwm=$(col edgesim 5 | med); e_rss=$(col edgesim 6 | med)
    e_prov=$(col edgesim 7 | med); e_tear=$(col edgesim 8 | med); e_exit=$(col edgesim 9 | med)

    echo
    echo "$NODES-node bring-up + teardown on $(hostname) ($(nproc) CPUs, $(uname -r)), median of $REPS, milliseconds"
    printf '%-34s %10s %10s %10s %16s\n' "contender" "up" "down" "up+down" "up+down range"
    printf '%-34s %10s %10s %10s %16s\n' "floor (ip -batch, netns+veth)" "$f_up" "$f_down" "$f_tot" "$(sumcol floor | minmax)"
    printf '%-34s %10s %10s %10s %16s\n' "edgesim up + down" "$e_up" "$e_down" "$e_tot" "$(sumcol edgesim | minmax)"
    m_tot=nan
    if [ "$MININET" = 1 ]; then
        m_tot=$(col mininet 3 | med); m_own=$(col mininet 4 | med)
        printf '%-34s %10s %10s %10s %16s\n' "mininet (mn --topo $(mn_topo))" "-" "-" "$m_tot" "$(col mininet 3 | minmax)"
    fi
    echo
    echo "edgesim detail (medians): provision ${e_prov} ms, teardown ${e_tear} ms (engine's own phases);"
    echo "  lab process gone ${e_exit} ms after \`down\` started; \`down\` returned after ${e_down} ms"
    echo "  (the difference is the CLI waiting for the exited lab process to be reaped, and its 50 ms poll)."
    e_gone=$(awk '$1 == "edgesim" { printf "%.3f\n", $3 + $9 }' "$SAMPLES" | med)
    echo "  up + lab gone (what \`down\` would cost if it returned when the lab process exits): ${e_gone} ms"
    awk -v h="$e_hwm" -v r="$e_rss" -v n="$NODES" 'BEGIN { printf "edgesim lab process memory with %s nodes up: peak RSS (VmHWM) %.1f MB, RSS %.1f MB  [goal < 100 MB: %s]\n", n, h/1024, r/1024, (h/1024 < 100 ? "met" : "MISSED") }'
    awk -v e="$e_tot" -v f="$f_tot" 'BEGIN { printf "edgesim / floor: %.1fx\n", e / f }'
    if [ "$MININET" = 1 ]; then
        echo "mininet's own \"completed in\": ${m_own} ms"
        awk -v m="$m_tot" -v e="$e_tot" 'BEGIN {
            printf "ratio mininet / edgesim: %.1fx  [goal >= 10x: %s]\n", m / e, (m / e >= 10 ? "met" : "MISSED") }'
        awk -v m="$m_tot" -v g="$e_gone" 'BEGIN { printf "ratio mininet / (edgesim up + lab gone): %.1fx  (not what a user sees today; see above)\n", m / g }'
    fi
    echo
    echo "raw samples (contender rep up_ms down_ms [hwm_kB rss_kB provision_ms teardown_ms exit_ms]):"
    sed 's/^/  /' "$SAMPLES"
    awk -v n="$NODES" -v fu="$f_up" -v fd="$f_down" -v ft="$f_tot" -v eu="$e_up" -v ed="$e_down" \
        -v et="$e_tot" -v h="$e_hwm" -v m="$m_tot" 'BEGIN {
        printf "%6s %9.0f %9.0f %9.0f %9.0f %9.0f %9.0f %8.1fx %8s %8.1f\n", n, fu, fd, ft, eu, ed, et, et / ft,
            (m == "nan" ? "-" : sprintf("%.1fx", m / et)), h / 1024 }' >> "$WORK/table"
}

: > "$WORK/table"
for size in $SIZES; do
    prepare "$size"
    SAMPLES="$WORK/samples-$NODES"
    : > "$SAMPLES"
    for i in $(seq 1 "$REPS"); do
        n=${#contenders[@]}
        for k in $(seq 0 $((n - 1))); do
            c=${contenders[$(((i + k) % n))]}
            printf '  %d nodes: rep %d/%d %-8s\r' "$NODES" "$i" "$REPS" "$c" >&2
            "run_$c" "$i"
        done
    done
    printf '%50s\r' '' >&2
    summary
done

echo
echo "all sizes (medians of $REPS, ms; floor and edgesim measured interleaved at each size)"
printf '%6s %9s %9s %9s %9s %9s %9s %9s %8s %8s\n' nodes "floor up" "fl. down" "floor" "es up" "es down" "edgesim" "es/floor" "mn/es" "HWM MB"
cat "$WORK/table"
