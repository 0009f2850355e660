#!/usr/bin/env bash
# The kernel path on a stock kernel: boots Debian's own x86_64 kernel (linux-image-amd64, with
# sch_netem and a cgroup v2 hierarchy that has real controllers) under qemu TCG and runs, inside
# it, the tests this machine's kernel cannot show (tests/vm/inside.sh says which).
#
#   tests/vm/run.sh            # after `cargo test --workspace` (or `--no-run`) has built the tests
#   EDGESIM_VM_FILTER=fidelity tests/vm/run.sh      # only the checks whose test names contain it
#   EDGESIM_VM_CMD='tc qdisc help' tests/vm/run.sh  # a command instead of the checks (debugging)
#
# How: the host's root filesystem is shared read-only over 9p and mounted in the VM under a tmpfs
# overlay, so the VM runs the very binaries, ip/tc/nft and iproute2's netem tables this host has,
# and every write stays in the VM's memory. The kernel's modules come from the package, on a
# second read-only share; a third, writable share (a temporary folder, removed on exit) carries
# the job in and the results out. Nothing is installed or left behind on the host: the kernel
# package is unpacked under target/vm/ (Cargo's build folder), never into /boot or /lib/modules.
#
# Needs: qemu-system-x86, cpio, kmod (depmod), python3, apt-get download (Debian's package lists).
# KVM does not work on our machines (../shared/notes/vm-kernel.md): TCG boots in seconds and runs
# everything about 10× slower, which is why every check inside judges by effect or against a
# zero-delay path measured in the same VM.
set -Eeuo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
CACHE="$ROOT/target/vm"
VM_MEM=${EDGESIM_VM_MEM:-3072}
VM_CPUS=${EDGESIM_VM_CPUS:-2}
VM_TIMEOUT=${EDGESIM_VM_TIMEOUT:-540}
mkdir -p "$CACHE"

retry() {
  local n=1
  until "$@"; do
    if [ $n -ge 5 ]; then echo "failed after $n attempts: $*" >&2; return 1; fi
    echo "attempt $n failed: $*; retrying in $((n * 5))s" >&2
    sleep $((n * 5)); n=$((n + 1))
  done
}

for p in qemu-system-x86_64 cpio depmod modinfo python3 apt-get dpkg; do
  command -v "$p" >/dev/null || { echo "tests/vm: \`$p\` is not installed" >&2; exit 2; }
done

# --- the kernel: Debian's current stock package, unpacked (not installed) -----------------------
pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$pkg" ] || { echo "tests/vm: no linux-image-amd64 in the package lists (apt-get update?)" >&2; exit 2; }
kver=${pkg#linux-image-}
KDIR="$CACHE/$pkg"
if [ ! -f "$KDIR/.unpacked" ]; then
  rm -rf "$KDIR" && mkdir -p "$KDIR/deb"
  (cd "$KDIR/deb" && retry apt-get download -q "$pkg" busybox-static 2>&1 | grep -v "unsandboxed" || true)
  ls "$KDIR"/deb/*.deb >/dev/null
  for d in "$KDIR"/deb/*.deb; do dpkg -x "$d" "$KDIR/root"; done
  rm -rf "$KDIR/deb"
  # The package ships no modules.dep: modprobe (the kernel's request_module too) needs one.
  depmod -b "$KDIR/root" "$kver"
  touch "$KDIR/.unpacked"
fi
MODS="$KDIR/root/lib/modules/$kver"
VMLINUZ="$KDIR/root/boot/vmlinuz-$kver"
grep -q '^CONFIG_NET_SCH_NETEM=m' "$KDIR/root/boot/config-$kver" \
  || { echo "tests/vm: $pkg has no sch_netem module" >&2; exit 2; }

# --- what to run: the test binaries the README's test command built ----------------------------
# The same profile and features as `cargo test --workspace`: nothing is compiled again.
mapfile -t EXES < <(cargo test -q --workspace --no-run --message-format=json 2>/dev/null \
  | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if (m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]
            and m["package_id"].find("simulator") >= 0 and m["target"]["name"] in ("netns", "cli")):
        print(m["target"]["name"] + "=" + m["executable"])
')
[ ${#EXES[@]} -eq 2 ] || { echo "tests/vm: expected the netns and cli test binaries, got: ${EXES[*]:-none}" >&2; exit 2; }
EDGESIM_BIN="$ROOT/target/debug/edgesim"
[ -x "$EDGESIM_BIN" ] || { echo "tests/vm: $EDGESIM_BIN is not built" >&2; exit 2; }

IO=$(mktemp -d /tmp/edgesim-vm.XXXXXX)
INITRD_DIR=$(mktemp -d /tmp/edgesim-vm-initrd.XXXXXX)
cleanup() { rm -rf "$IO" "$INITRD_DIR"; }
trap cleanup EXIT

{
  echo "ROOT=$ROOT"
  echo "EDGESIM_BIN=$EDGESIM_BIN"
  for e in "${EXES[@]}"; do echo "TEST_${e%%=*}=${e#*=}"; done
  echo "KVER=$kver"
  echo "FILTER='${EDGESIM_VM_FILTER:-}'"
  printf 'VM_CMD=%q\n' "${EDGESIM_VM_CMD:-}"
} > "$IO/job"

# --- the initramfs: busybox and the modules needed to reach the host's root ---------------------
# Its /init mounts the shares, builds the overlay and switch_roots into it, so the kernel's own
# request_module finds the host's /sbin/modprobe and the package's modules.
mkdir -p "$INITRD_DIR"/{bin,dev,proc,sys,newroot,lower,upper,mods,io}
cp "$KDIR/root/bin/busybox" "$INITRD_DIR/bin/busybox"
for a in sh mount mkdir modprobe switch_root echo cat poweroff sleep; do ln -s busybox "$INITRD_DIR/bin/$a"; done
mkdir -p "$INITRD_DIR/lib/modules/$kver"
cp "$MODS"/modules.{order,builtin,builtin.modinfo} "$INITRD_DIR/lib/modules/$kver/"
declare -A added=()
add_module() { # a module and, first, everything it depends on
  local m=$1 f d
  [ -z "${added[$m]:-}" ] || return 0
  added[$m]=1
  f=$(find "$MODS/kernel" -name "$m.ko*" | head -1)
  [ -n "$f" ] || { echo "tests/vm: module $m is not in $pkg" >&2; exit 2; }
  for d in $(modinfo -F depends "$f" | tr ',' ' '); do add_module "$d"; done
  install -D -m 0644 "$f" "$INITRD_DIR/lib/modules/$kver/${f#"$MODS/"}"
}
for m in virtio_pci 9pnet_virtio 9p overlay; do add_module "$m"; done
depmod -b "$INITRD_DIR" "$kver"
cat > "$INITRD_DIR/init" <<'EOF'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
fail() { echo "edgesim-vm: $*"; echo o > /proc/sysrq-trigger; sleep 5; }
for m in virtio_pci 9pnet_virtio 9p overlay; do modprobe $m || fail "modprobe $m"; done
opts=trans=virtio,version=9p2000.L,msize=524288,cache=loose
mount -t 9p -o ro,$opts hostroot /lower || fail "mounting the host's root"
mount -t 9p -o $opts io /io || fail "mounting the io share"
mount -t tmpfs -o size=75% tmpfs /upper || fail "tmpfs"
mkdir -p /upper/u /upper/w
mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w /newroot || fail "overlay"
. /io/job
mkdir -p /newroot/vmio /newroot/lib/modules/$KVER
mount --move /io /newroot/vmio
mount -t 9p -o ro,$opts modules /newroot/lib/modules/$KVER || fail "mounting the kernel's modules"
umount /proc /sys /dev 2>/dev/null
exec switch_root /newroot /bin/bash "$ROOT/tests/vm/inside.sh"
EOF
chmod +x "$INITRD_DIR/init"
(cd "$INITRD_DIR" && find . | cpio -o -H newc --quiet | gzip -1) > "$IO/initrd.gz"

# --- boot -------------------------------------------------------------------------------------
echo "tests/vm: booting $pkg under qemu TCG ($VM_CPUS vCPUs, $VM_MEM MiB), host root shared read-only"
# clocksource=tsc: the kernel would pick the HPET under TCG, whose every read is an exit into
# qemu; with the TSC, netem's timers and ping's stamps are steadier (measured: mdev 0.2 ms).
share() { echo "local,path=$1,mount_tag=$2,security_model=none,multidevs=remap${3:+,$3}"; }
set +e
timeout --foreground -k 10 "$VM_TIMEOUT" qemu-system-x86_64 -accel tcg,thread=multi ${EDGESIM_VM_QEMU_ARGS:-} -smp "$VM_CPUS" -m "$VM_MEM" \
  -nographic -no-reboot -nodefaults -serial stdio -monitor none \
  -kernel "$VMLINUZ" -initrd "$IO/initrd.gz" \
  -append "console=ttyS0 quiet loglevel=3 panic=-1 sysrq_always_enabled=1 clocksource=tsc tsc=reliable ${EDGESIM_VM_APPEND:-}" \
  -virtfs "$(share / hostroot readonly=on)" \
  -virtfs "$(share "$MODS" modules readonly=on)" \
  -virtfs "$(share "$IO" io)" \
  | tr -d '\r'
qrc=${PIPESTATUS[0]}
set -e
if [ ! -f "$IO/rc" ]; then
  echo "tests/vm: the VM ended without a result (qemu exit $qrc; 124 = timed out after ${VM_TIMEOUT}s)" >&2
  exit 1
fi
rc=$(cat "$IO/rc")
echo "tests/vm: exit $rc"
exit "$rc"
