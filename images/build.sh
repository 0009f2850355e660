#!/usr/bin/env bash
# Builds the edgesim example workloads as static binaries for x86_64 and aarch64 (musl),
# checks the arm64 binaries under qemu-user, and, when a Docker daemon answers, builds one
# `FROM scratch` image per workload and architecture, tagged edgesim/<name>:<version>-<arch>
# (plus edgesim/<name>:<version> for this machine's architecture). No registry is involved.
#
# Usage: images/build.sh [--arch amd64,arm64] [--only name,name] [--no-qemu] [--no-docker]
#
# Output: target/images/<arch>/<name> (also the Docker build context, with an empty data/),
#         and the Docker images. Cargo builds in target/images/cargo (IMAGES_TARGET_DIR overrides).
# Needs:  rustup (adds the musl targets if missing), a host cc for x86_64 musl; rust-lld (in the
#         toolchain) links aarch64 (see .cargo/config.toml). Optional: qemu-user-static with
#         binfmt_misc (apt-get install -y qemu-user-static binfmt-support), a Docker daemon.
#
# EDGESIM_REQUIRE (comma-separated) turns a skipped optional step into a failure:
# `qemu` for the arm64 check, `docker` for the image builds.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

ALL=(iot-collector cloud-sink edge-web edge-cache inference offline-first)
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
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
PROGRAMS=("${ALL[@]}")
if [ -n "$ONLY" ]; then IFS=, read -r -a PROGRAMS <<< "$ONLY"; fi
IFS=, read -r -a ARCH_LIST <<< "$ARCHES"

say() { printf '==> %s\n' "$*" >&2; }
required() { [[ ",${EDGESIM_REQUIRE:-}," == *",$1,"* ]]; }
skip() { # capability, reason
    if required "$1"; then echo "EDGESIM_REQUIRE lists $1 but: $2" >&2; exit 1; fi
    say "skipping the $1 step: $2"
}

VERSION=$(sed -n '/^\[workspace.package\]/,/^\[/ s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
[ -n "$VERSION" ] || { echo "no [workspace.package] version in Cargo.toml" >&2; exit 1; }

triple() { case "$1" in amd64) echo x86_64-unknown-linux-musl ;; arm64) echo aarch64-unknown-linux-musl ;; *) echo "unknown arch $1" >&2; exit 2 ;; esac; }

OUT=target/images
# A target directory of its own: release musl builds neither wait for nor evict the dev builds.
export CARGO_TARGET_DIR=${IMAGES_TARGET_DIR:-$OUT/cargo}

# --- 1. static binaries --------------------------------------------------------------------
for arch in "${ARCH_LIST[@]}"; do
    t=$(triple "$arch")
    if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx "$t"; then
        say "adding the $t target"
        rustup target add "$t"
    fi
    say "building ${PROGRAMS[*]} for $t"
    pkgs=()
    for p in "${PROGRAMS[@]}"; do pkgs+=(-p "$p"); done
    CARGO_PROFILE_RELEASE_STRIP=symbols cargo build --release --locked --target "$t" "${pkgs[@]}" 2>&1 \
        || CARGO_PROFILE_RELEASE_STRIP=symbols cargo build --release --target "$t" "${pkgs[@]}"
    mkdir -p "$OUT/$arch/data"
    for p in "${PROGRAMS[@]}"; do
        bin="$CARGO_TARGET_DIR/$t/release/$p"
        # Static: no program interpreter, no dynamic section.
        if readelf -l "$bin" | grep -q 'INTERP' || readelf -d "$bin" 2>/dev/null | grep -q NEEDED; then
            echo "$bin is not statically linked" >&2; exit 1
        fi
        cp "$bin" "$OUT/$arch/$p"
        printf '  %-14s %-6s %8s KiB  %s\n' "$p" "$arch" "$(( $(stat -c %s "$bin") / 1024 ))" \
            "$(file -b "$bin" 2>/dev/null | grep -o "static-pie linked\|statically linked" || true)"
    done
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
    runner=()
    if [ "$arch" = arm64 ] && [ "$(uname -m)" != aarch64 ]; then
        [ $QEMU -eq 1 ] || { say "arm64 check disabled (--no-qemu)"; continue; }
        if [ -d /proc/sys/fs/binfmt_misc ] && [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
            mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || true
        fi
        if [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] && command -v update-binfmts >/dev/null; then
            : # binfmt: run the binary directly
        elif command -v update-binfmts >/dev/null && update-binfmts --enable qemu-aarch64 2>/dev/null \
            && [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
            :
        elif command -v qemu-aarch64-static >/dev/null; then
            runner=(qemu-aarch64-static)
        elif command -v qemu-aarch64 >/dev/null; then
            runner=(qemu-aarch64)
        else
            skip qemu "no qemu-user for aarch64 (apt-get install -y qemu-user-static binfmt-support)"
            continue
        fi
        say "checking the arm64 binaries under qemu-user ${runner[*]:-(binfmt_misc)}"
    else
        say "checking the $arch binaries"
    fi
    for p in "${PROGRAMS[@]}"; do
        bin="$OUT/$arch/$p"
        v=$("${runner[@]}" "$bin" --version)
        file -b "$bin" | grep -q "$( [ "$arch" = arm64 ] && echo aarch64 || echo x86-64 )" \
            || { echo "$bin is not an $arch binary" >&2; exit 1; }
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
native=$(case "$(uname -m)" in x86_64) echo amd64 ;; aarch64) echo arm64 ;; esac)
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
for p in "${PROGRAMS[@]}"; do
    for arch in "${ARCH_LIST[@]}"; do
        tag="edgesim/$p:$VERSION-$arch"
        say "docker build $tag"
        # --no-cache: the legacy builder would reuse the other platform's layers and then refuse them.
        docker build --quiet --no-cache --platform "linux/$arch" \
            --label "org.opencontainers.image.version=$VERSION" \
            --label "org.opencontainers.image.title=$p" \
            -t "$tag" -f "images/$p/Dockerfile" "$OUT/$arch" >/dev/null
        got=$(docker image inspect -f '{{.Os}}/{{.Architecture}}' "$tag")
        [ "$got" = "linux/$arch" ] || { echo "$tag is $got, expected linux/$arch" >&2; exit 1; }
        [ "$arch" = "$native" ] && docker tag "$tag" "edgesim/$p:$VERSION"
        # Foreign images run through binfmt_misc's qemu (registered with the fix-binary flag).
        if [ "$arch" = "$native" ] || [ -e "/proc/sys/fs/binfmt_misc/qemu-$(triple "$arch" | cut -d- -f1)" ]; then
            smoke "$tag" "$p-$arch" "$arch"
        fi
    done
done
docker image ls 'edgesim/*' --format '  {{.Repository}}:{{.Tag}}  {{.Size}}'
