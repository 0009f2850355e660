#!/usr/bin/env bash
# Builds the edgesim example workloads as static binaries for x86_64 and aarch64 (musl),
# checks the arm64 binaries under qemu-user, and, when a Docker daemon answers, builds one
# `FROM scratch` image per workload and architecture, tagged edgesim/<name>:<version>-<arch>
# (plus edgesim/<name>:<version> for this machine's architecture). No registry is involved.
# `node` is the image of a scenario node's own container: the edgesim-node init as PID 1 and
# Debian's static busybox (fetched with apt-get download, per architecture) for its commands.
# `agent` (only with `--only agent`) is edgesim itself, built without the `kube` feature: the
# agent the kind target delivers to a cluster of your own as a DaemonSet.
#
# Usage: images/build.sh [--arch amd64,arm64] [--only name,name] [--no-qemu] [--no-docker]
#
# Output: target/images/<arch>/<name> (also the Docker build context, with an empty data/),
#         target/images/<arch>/node-rootfs/ (the node image's files) and node.commands (the
#         commands it offers, one a line), and the Docker images. Cargo builds in
#         target/images/cargo (IMAGES_TARGET_DIR overrides); busybox is kept in target/images/busybox.
# Needs:  rustup (adds the musl targets if missing), a host cc for x86_64 musl; rust-lld (in the
#         toolchain) links aarch64 (see .cargo/config.toml); for node, apt-get and dpkg-deb (as
#         root, it adds the foreign architecture to dpkg if missing; BUSYBOX_AMD64 or
#         BUSYBOX_ARM64 names a static busybox to use instead). Optional: qemu-user-static with
#         binfmt_misc (apt-get install -y qemu-user-static binfmt-support), a Docker daemon.
#
# EDGESIM_REQUIRE (comma-separated) turns a skipped optional step into a failure:
# `qemu` for the arm64 check, `docker` for the image builds.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

ALL=(iot-collector cloud-sink edge-web edge-cache inference offline-first node)
# Built only when named (`--only agent`): a release build of all of edgesim per architecture.
ARCHES=amd64,arm64
ONLY=""
QEMU=1
DOCKER=1
while [ $# -gt 0 ]; do
    case "$1" in
        --arch) ARCHES=$2; shift 2 ;;
        --only) ONLY=$2; shift 2 ;;
        --no-qemu) QEMU=0; shift ;;
        --no-docker) DOCKER=0; shift ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
PROGRAMS=("${ALL[@]}")
if [ -n "$ONLY" ]; then IFS=, read -r -a PROGRAMS <<< "$ONLY"; fi
IFS=, read -r -a ARCH_LIST <<< "$ARCHES"

say() { printf '==> %s\n' "$*" >&2; }
die() { echo "$*" >&2; exit 1; }
required() { [[ ",${EDGESIM_REQUIRE:-}," == *",$1,"* ]]; }
skip() { # capability, reason
    if required "$1"; then echo "EDGESIM_REQUIRE lists $1 but: $2" >&2; exit 1; fi
    say "skipping the $1 step: $2"
}

VERSION=$(sed -n '/^\[workspace.package\]/,/^\[/ s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
[ -n "$VERSION" ] || { echo "no [workspace.package] version in Cargo.toml" >&2; exit 1; }

triple() { case "$1" in amd64) echo x86_64-unknown-linux-musl ;; arm64) echo aarch64-unknown-linux-musl ;; *) echo "unknown arch $1" >&2; exit 2 ;; esac; }
# The cargo package and binary behind an image name.
crate() { case "$1" in node) echo edgesim-node ;; agent) echo edgesim ;; *) echo "$1" ;; esac; }
# What `file` says of an architecture's binaries.
elf_arch() { if [ "$1" = arm64 ]; then echo aarch64; else echo x86-64; fi; }
native=$(case "$(uname -m)" in x86_64) echo amd64 ;; aarch64) echo arm64 ;; esac)
static_or_die() { # binary: no program interpreter, no dynamic section
    if readelf -l "$1" | grep -q 'INTERP' || readelf -d "$1" 2>/dev/null | grep -q NEEDED; then
        die "$1 is not statically linked"
    fi
}
# Retries a command that may fail for transient (network) reasons.
retry() {
    local n=1
    until "$@"; do
        [ $n -lt 4 ] || { echo "failed after $n attempts: $*" >&2; return 1; }
        echo "attempt $n failed: $*; retrying in $((n * 5))s" >&2
        sleep $((n * 5)); n=$((n + 1))
    done
}

# RUNNER: how to run a binary of architecture $1 here: () natively or through binfmt_misc,
# (qemu-aarch64-static) or (qemu-aarch64) otherwise. Returns 1 when it cannot be run.
RUNNER=()
find_runner() {
    RUNNER=()
    [ "$1" = "$native" ] && return 0
    [ "$1" = arm64 ] || return 1
    if [ -d /proc/sys/fs/binfmt_misc ] && [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || true
    fi
    if [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] && command -v update-binfmts >/dev/null; then
        : # binfmt: run the binary directly
    elif command -v update-binfmts >/dev/null && update-binfmts --enable qemu-aarch64 2>/dev/null \
        && [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
        :
    elif command -v qemu-aarch64-static >/dev/null; then
        RUNNER=(qemu-aarch64-static)
    elif command -v qemu-aarch64 >/dev/null; then
        RUNNER=(qemu-aarch64)
    else
        return 1
    fi
}

OUT=target/images
# A target directory of its own: release musl builds neither wait for nor evict the dev builds.
export CARGO_TARGET_DIR=${IMAGES_TARGET_DIR:-$OUT/cargo}

# --- 1. static binaries --------------------------------------------------------------------
# One cargo invocation for every architecture: the host's build scripts and proc macros are
# built once, and one target's long final compiles overlap the other's.
targets=()
for arch in "${ARCH_LIST[@]}"; do
    t=$(triple "$arch")
    if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx "$t"; then
        say "adding the $t target"
        rustup target add "$t"
    fi
    targets+=(--target "$t")
done
say "building ${PROGRAMS[*]} for ${ARCHES}"
pkgs=()
for p in "${PROGRAMS[@]}"; do [ "$p" = agent ] || pkgs+=(-p "$(crate "$p")"); done
if [ ${#pkgs[@]} -gt 0 ]; then
    CARGO_PROFILE_RELEASE_STRIP=symbols cargo build --release --locked "${targets[@]}" "${pkgs[@]}" 2>&1 \
        || CARGO_PROFILE_RELEASE_STRIP=symbols cargo build --release "${targets[@]}" "${pkgs[@]}"
fi
if [[ " ${PROGRAMS[*]} " == *" agent "* ]]; then
    # The agent: no `kube` feature (its TLS stack has C and assembly; an agent never
    # talks to Kubernetes), so aarch64 links with rust-lld alone.
    CARGO_PROFILE_RELEASE_STRIP=symbols cargo build --release --locked "${targets[@]}" \
        -p edgesim --bin edgesim --no-default-features 2>&1
fi
for arch in "${ARCH_LIST[@]}"; do
    t=$(triple "$arch")
    mkdir -p "$OUT/$arch/data"
    for p in "${PROGRAMS[@]}"; do
        bin="$CARGO_TARGET_DIR/$t/release/$(crate "$p")"
        static_or_die "$bin"
        cp "$bin" "$OUT/$arch/$(crate "$p")"
        printf '  %-14s %-6s %8s KiB  %s\n' "$(crate "$p")" "$arch" "$(( $(stat -c %s "$bin") / 1024 ))" \
            "$(file -b "$bin" 2>/dev/null | grep -o "static-pie linked\|statically linked" || true)"
    done
done

# --- 1b. the node image's files ------------------------------------------------------------
# target/images/<arch>/node-rootfs/: bin/busybox with one symlink per applet, sbin/edgesim-node,
# etc/edgesim-node/commands (what a `command:` workload may run: every name in bin/), a
# world-writable tmp/. The command list is also written to target/images/<arch>/node.commands.
NODE_COMMANDS=(sh sleep cat echo ping nc wget ls ps kill true false env date dd head tail grep
    sed awk mkdir rm touch seq printf timeout)

# Debian's busybox-static for an architecture, unpacked once into target/images/busybox/<arch>/.
busybox_deb_fetch() { # dir arch
    rm -f "$1"/*.deb
    (cd "$1" && apt-get download -q -o APT::Sandbox::User=root "busybox-static:$2") \
        || { apt-get update -q >&2 || true; return 1; }
}
busybox_for() { # arch; prints the path of a static busybox for it
    local arch=$1 dir="$OUT/busybox/$1" var deb
    var="BUSYBOX_$(tr a-z A-Z <<<"$arch")"
    if [ -n "${!var:-}" ]; then echo "${!var}"; return; fi
    if [ ! -x "$dir/bin/busybox" ]; then
        command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null \
            || die "node: needs apt-get and dpkg-deb to fetch busybox-static:$arch (or set $var)"
        if [ "$arch" != "$(dpkg --print-architecture)" ] \
            && ! dpkg --print-foreign-architectures | grep -qx "$arch"; then
            [ "$(id -u)" = 0 ] || die "node: run 'dpkg --add-architecture $arch && apt-get update' as root (or set $var)"
            say "adding the $arch architecture to dpkg, for busybox-static:$arch"
            dpkg --add-architecture "$arch"
            retry apt-get update -q >&2
        fi
        mkdir -p "$dir"
        say "fetching busybox-static:$arch"
        retry busybox_deb_fetch "$dir" "$arch" >&2
        deb=$(ls "$dir"/busybox-static_*_"$arch".deb)
        dpkg-deb -x "$deb" "$dir"
        dpkg-deb -f "$deb" Version > "$dir/version"
    fi
    echo "$dir/bin/busybox"
}

for arch in "${ARCH_LIST[@]}"; do
    [[ " ${PROGRAMS[*]} " == *" node "* ]] || break
    bb=$(busybox_for "$arch")
    static_or_die "$bb"
    file -b "$bb" | grep -q "$(elf_arch "$arch")" || die "$bb is not an $arch binary"
    # The applets are what this very binary lists; a foreign one is run through qemu-user. Without
    # qemu, the host's busybox of the same Debian version stands in (same source, same config).
    lister=$bb
    if ! find_runner "$arch"; then
        lister=$(busybox_for "$native")
        [ "$(cat "$OUT/busybox/$arch/version")" = "$(cat "$OUT/busybox/$native/version")" ] \
            || die "node: cannot run the $arch busybox to list its applets (no qemu-user) and the $native one is another version"
        say "no qemu-user: listing the $arch busybox's applets with the $native build of the same version"
    fi
    applets=$("${RUNNER[@]}" "$lister" --list)
    root="$OUT/$arch/node-rootfs"
    rm -rf "$root"
    mkdir -p "$root/bin" "$root/sbin" "$root/etc/edgesim-node" "$root/tmp"
    chmod 1777 "$root/tmp"
    cp "$OUT/$arch/edgesim-node" "$root/sbin/edgesim-node"
    cp "$bb" "$root/bin/busybox"
    for a in $applets; do [ "$a" = busybox ] || ln -s busybox "$root/bin/$a"; done
    (cd "$root/bin" && ls -1A | LC_ALL=C sort) > "$root/etc/edgesim-node/commands"
    cp "$root/etc/edgesim-node/commands" "$OUT/$arch/node.commands"
    for c in "${NODE_COMMANDS[@]}"; do
        grep -qxF "$c" "$OUT/$arch/node.commands" || die "node: the $arch busybox has no $c applet"
    done
    grep -qx ip "$OUT/$arch/node.commands" && has_ip=" (ip included)" || has_ip=" (no ip applet)"
    printf '  %-14s %-6s %8s KiB  busybox %s, %s commands%s\n' node-rootfs "$arch" \
        "$(du -sk "$root" | cut -f1)" "$(cat "$OUT/busybox/$arch/version" 2>/dev/null || echo "from \$BUSYBOX_*")" \
        "$(wc -l < "$OUT/$arch/node.commands")" "$has_ip"
done

# --- 2. run them: natively for amd64, under qemu-user for arm64 ------------------------------
# Each program starts on 127.0.0.1 with an ephemeral port and must answer /healthz.
healthz() { # runner... binary name
    local name=${*: -1} dir; dir=$(mktemp -d)
    local argv=("${@:1:$#-1}")
    EDGESIM_WORKDIR="$dir" SINK_URL=http://127.0.0.1:9 ORIGIN_URL=http://127.0.0.1:9 \
        "${argv[@]}" --listen 127.0.0.1:0 --ready-file "$dir/addr" >"$dir/log" 2>&1 &
    local pid=$! addr="" _i
    for _i in $(seq 1 600); do
        [ -s "$dir/addr" ] && { addr=$(cat "$dir/addr"); break; }
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    local ok=1
    if [ -n "$addr" ]; then
        exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}"
        printf 'GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n' >&3
        grep -q '^ok' <&3 && ok=0
        exec 3<&-
    fi
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    if [ $ok -ne 0 ]; then echo "$name did not answer /healthz; its log:" >&2; cat "$dir/log" >&2; fi
    rm -rf "$dir"
    return $ok
}

for arch in "${ARCH_LIST[@]}"; do
    if [ "$arch" != "$native" ]; then
        [ $QEMU -eq 1 ] || { say "$arch check disabled (--no-qemu)"; continue; }
        if ! find_runner "$arch"; then
            skip qemu "no qemu-user for aarch64 (apt-get install -y qemu-user-static binfmt-support)"
            continue
        fi
        say "checking the $arch binaries under qemu-user ${RUNNER[*]:-(binfmt_misc)}"
    else
        RUNNER=()
        say "checking the $arch binaries"
    fi
    runner=("${RUNNER[@]}")
    for p in "${PROGRAMS[@]}"; do
        bin="$OUT/$arch/$(crate "$p")"
        v=$("${runner[@]}" "$bin" --version)
        file -b "$bin" | grep -q "$(elf_arch "$arch")" || die "$bin is not an $arch binary"
        if [ "$p" = agent ]; then
            # The agent answers the protocol's hello with this architecture's facts.
            got=$(printf '{"id":1,"op":"hello"}\n{"id":2,"op":"bye"}\n' \
                | EDGESIM_LOG=error "${runner[@]}" "$bin" agent --state "$(mktemp -d)/agent.json")
            got=${got%%$'\n'*}
            grep -q "\"arch\":\"$arch\"" <<<"$got" || die "the $arch agent answered hello with: $got"
            echo "  $arch $v; agent hello ok"
            continue
        fi
        if [ "$p" = node ]; then
            # The init only makes sense as PID 1 (the image smoke test below runs it so); here
            # its busybox must run and the shell must work.
            got=$("${runner[@]}" "$OUT/$arch/node-rootfs/bin/busybox" sh -c 'echo ok')
            [ "$got" = ok ] || die "the $arch node busybox's sh printed '$got', not ok"
            echo "  $arch $v; busybox sh ok"
            continue
        fi
        healthz "${runner[@]}" "$bin" "$p"
        echo "  $arch $v: /healthz ok"
    done
done

# --- 3. images ---------------------------------------------------------------------------
if [ $DOCKER -eq 0 ]; then say "images disabled (--no-docker)"; exit 0; fi
if ! command -v docker >/dev/null || ! docker info >/dev/null 2>&1; then
    skip docker "no Docker daemon answers (apt-get install -y docker.io; dockerd &)"
    exit 0
fi
# Runs a native image without any network, waits for it to listen, stops it (SIGTERM) and
# checks that it exited cleanly. The container is labelled and removed either way.
smoke() { # image name arch
    local c="edgesim-images-smoke-$2-$$" _i
    docker run -d --platform "linux/$3" --network none --label edgesim.test=images --name "$c" "$1" >/dev/null
    for _i in $(seq 1 100); do
        docker logs "$c" 2>&1 | grep -q 'listening' && break
        sleep 0.1
    done
    docker stop -t 10 "$c" >/dev/null
    local code; code=$(docker inspect -f '{{.State.ExitCode}}' "$c")
    local log; log=$(docker logs "$c" 2>&1)
    docker rm "$c" >/dev/null
    if ! grep -q 'listening' <<<"$log" || [ "$code" != 0 ]; then
        echo "$1 did not start and stop cleanly (exit $code):" >&2; echo "$log" >&2; exit 1
    fi
    echo "  $1: ran, listened, stopped cleanly"
}
# The node image: its shell answers through docker exec, and its init exits 0 on SIGTERM.
smoke_node() { # image name arch
    local c="edgesim-images-smoke-$2-$$" out code log
    docker run -d --platform "linux/$3" --network none --label edgesim.test=images --name "$c" "$1" >/dev/null
    out=$(docker exec "$c" sh -c 'echo ok' 2>&1) || true
    docker stop -t 5 "$c" >/dev/null
    code=$(docker inspect -f '{{.State.ExitCode}}' "$c")
    log=$(docker logs "$c" 2>&1)
    docker rm "$c" >/dev/null
    if [ "$out" != ok ] || [ "$code" != 0 ]; then
        echo "$1: docker exec sh printed '$out', exit after docker stop $code; log:" >&2; echo "$log" >&2; exit 1
    fi
    echo "  $1: sh ran through docker exec, stopped cleanly"
}
# The agent image: it idles, and `edgesim agent` exec'd in it (as the kind target does through
# the API server) answers hello with the image's architecture.
smoke_agent() { # image name arch
    local c="edgesim-images-smoke-$2-$$" out
    docker run -d --platform "linux/$3" --network none --label edgesim.test=images --name "$c" "$1" >/dev/null
    out=$(printf '{"id":1,"op":"hello"}\n{"id":2,"op":"bye"}\n' | docker exec -i -e EDGESIM_LOG=error "$c" /edgesim agent 2>&1) || true
    out=${out%%$'\n'*}
    docker rm -f "$c" >/dev/null
    grep -q "\"arch\":\"$3\"" <<<"$out" || { echo "$1: the agent answered hello with: $out" >&2; exit 1; }
    echo "  $1: the agent answered hello through docker exec"
}
for p in "${PROGRAMS[@]}"; do
    for arch in "${ARCH_LIST[@]}"; do
        tag="edgesim/$p:$VERSION-$arch"
        say "docker build $tag"
        # --no-cache: the legacy builder would reuse the other platform's layers and then refuse them.
        # The node image names its commands in a label too: `edgesim validate --target docker`
        # checks `command:` workloads against it without starting a container.
        extra=()
        [ "$p" = node ] && extra=(--label "edgesim.commands=$(paste -sd, "$OUT/$arch/node.commands")")
        docker build --quiet --no-cache --platform "linux/$arch" \
            --label "org.opencontainers.image.version=$VERSION" \
            --label "org.opencontainers.image.title=$p" \
            --label "edgesim.image=$p" "${extra[@]}" \
            -t "$tag" -f "images/$p/Dockerfile" "$OUT/$arch" >/dev/null
        got=$(docker image inspect -f '{{.Os}}/{{.Architecture}}' "$tag")
        [ "$got" = "linux/$arch" ] || { echo "$tag is $got, expected linux/$arch" >&2; exit 1; }
        [ "$arch" = "$native" ] && docker tag "$tag" "edgesim/$p:$VERSION"
        # Foreign images run through binfmt_misc's qemu (registered with the fix-binary flag).
        if [ "$arch" = "$native" ] || [ -e "/proc/sys/fs/binfmt_misc/qemu-$(triple "$arch" | cut -d- -f1)" ]; then
            case "$p" in
                node) smoke_node "$tag" "$p-$arch" "$arch" ;;
                agent) smoke_agent "$tag" "$p-$arch" "$arch" ;;
                *) smoke "$tag" "$p-$arch" "$arch" ;;
            esac
        fi
    done
done
docker image ls 'edgesim/*' --format '  {{.Repository}}:{{.Tag}}  {{.Size}}'
