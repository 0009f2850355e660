#!/usr/bin/env bash
# Builds a Raspberry-Pi-5-like arm64 board for tests: Debian's stock arm64 kernel and a root
# filesystem with sshd, nftables, iproute2, python3 (for Ansible) and PAM, as one uncompressed
# initramfs, booted by `qemu-system-aarch64 -M virt -cpu cortex-a76 -smp 4` (the Pi 5's core)
# under TCG. No debootstrap: the packages' arm64 .debs are unpacked with `dpkg -x` (seconds,
# not the many minutes a `debootstrap --arch=arm64` takes under qemu-user), and registered in
# the board's dpkg database so Ansible's apt module finds them installed.
#
#   tests/board/arm64.sh            # builds target/board/arm64/ (cached: a second run is instant)
#   tests/board/arm64.sh systemd    # the same board with systemd as PID 1: target/board/arm64-systemd/
#
# Output, under target/board/arm64/ (or arm64-systemd/):
#   vmlinuz, initrd.cpio   the kernel and the board's whole filesystem
#   host_ed25519.pub       the board's SSH host key (the private half is inside the initrd)
#   version                what was built (the kernel's package version)
#
# The board's /init reads its settings from the kernel command line:
#   edgesim.addr=A/N          eth0's address (virtio-net)
#   edgesim.key=BASE64        an ed25519 public key authorised for root
#   edgesim.jetson=1          no sch_netem, sch_tbf or ifb (what stock Jetson L4T kernels lack):
#                             the modules are removed before anything can load them
#
# With `systemd`, /init brings up the virtio modules and the controller's key and hands PID 1
# to Debian 12's systemd (252), which mounts the cgroup2 hierarchy itself and starts eth0 and
# sshd from units of ours (board-net.service, board-sshd.service). The system's D-Bus, logind
# and pam_systemd run as on a Raspberry Pi OS or Ubuntu board (SSH logins are logind sessions;
# a lingering user's systemd manager starts at boot); what cannot work on a RAM-only board
# without udev or a tty login (gettys, firstboot, udev) is masked.
#
# Needs: apt-get (Debian's lists; arm64 is added as a foreign architecture if missing), dpkg,
# cpio, ssh-keygen, depmod. Nothing is installed on the host: everything stays under target/.
set -Eeuo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
INIT=${1:-busybox}
PACKAGES=(dash busybox-static openssh-server openssh-sftp-server nftables iproute2 python3 python3-apt
  passwd libpam-cap libcap2-bin kmod apt)
case "$INIT" in
  busybox) OUT="$ROOT/target/board/arm64" ;;
  # D-Bus, logind and pam_systemd as on a Raspberry Pi OS or Ubuntu board: a non-root agent's
  # workloads run under its user's systemd manager, which logind starts (linger).
  systemd) OUT="$ROOT/target/board/arm64-systemd"; PACKAGES+=(systemd dbus libpam-systemd) ;;
  *) echo "arm64 board: unknown init $INIT (busybox or systemd)" >&2; exit 2 ;;
esac
# Dependencies a board without maintainer scripts does not need (perl, debconf front ends,
# init systems, keyrings).
EXCLUDE='^(perl|perl-base|perl-modules-5.36|libperl5.36|cdebconf|libdebian-installer4|libnewt0.52|libslang2|libtextwrap1|adduser|ucf|runit-helper|usrmerge|usr-is-merged|init-system-helpers|libfile-find-rule-perl|libnumber-compare-perl|libtext-glob-perl|debian-archive-keyring|gpgv|gpgv1|gpgv2|install-info|sensible-utils|lsb-base|sysvinit-utils|libelogind0|mailcap|debconf|distro-info-data|readline-common)$'

retry() {
  local n=1
  until "$@"; do
    if [ $n -ge 5 ]; then echo "failed after $n attempts: $*" >&2; return 1; fi
    echo "attempt $n failed: $*; retrying in $((n * 5))s" >&2
    sleep $((n * 5)); n=$((n + 1))
  done
}

for p in apt-get apt-cache dpkg dpkg-deb cpio ssh-keygen depmod; do
  command -v $p >/dev/null || { echo "arm64 board: needs $p" >&2; exit 2; }
done

if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  dpkg --add-architecture arm64
fi
if ! apt-cache show busybox-static:arm64 >/dev/null 2>&1; then
  retry apt-get update -q >/dev/null
fi

KPKG=$(apt-cache depends linux-image-arm64:arm64 | awk '/Depends: linux-image-[0-9]/ {sub(":arm64", "", $2); print $2; exit}')
KVER=$(apt-cache show "$KPKG:arm64" | awk '/^Version:/ {print $2; exit}')
WANT="$KPKG $KVER $(printf '%s\n' "${PACKAGES[@]}" "$EXCLUDE" "$(sha256sum "$0" | cut -c1-16)" | sha256sum | cut -c1-16)"
if [ -f "$OUT/version" ] && [ "$(cat "$OUT/version")" = "$WANT" ] && [ -f "$OUT/initrd.cpio" ]; then
  echo "arm64 board ($INIT): $OUT is up to date ($KPKG $KVER)"
  exit 0
fi
t0=$(date +%s)
rm -rf "$OUT"
mkdir -p "$OUT/debs" "$OUT/kernel"
cd "$OUT/debs"

# The packages and their dependencies, for arm64 (arch-all ones as they are).
deps=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
  --no-replaces --no-enhances $(printf '%s:arm64 ' "${PACKAGES[@]}") 2>/dev/null |
  grep -v '^[ <]' | sort -u)
sel=()
for p in $(sed 's/:arm64$//' <<<"$deps" | sort -u | grep -Ev "$EXCLUDE"); do
  if grep -qx "$p:arm64" <<<"$deps"; then
    sel+=("$p:arm64")
  elif [ "$(apt-cache show "$p" 2>/dev/null | awk '/^Architecture:/ {print $2; exit}')" = all ]; then
    sel+=("$p")
  else
    sel+=("$p:arm64")
  fi
done
retry apt-get download -q "${sel[@]}" "$KPKG:arm64" >/dev/null 2>&1
echo "arm64 board: ${#sel[@]} packages and $KPKG downloaded ($(du -sh . | cut -f1))"

RFS="$OUT/rootfs"
mkdir -p "$RFS"
mkdir -p "$RFS"/{etc,proc,sys,dev,run,tmp,root,home,var/lib/dpkg/info,var/log,var/tmp}
chmod 1777 "$RFS/tmp" "$RFS/var/tmp"
status="$RFS/var/lib/dpkg/status"
: >"$status"
for deb in ./*.deb; do
  case "$deb" in ./linux-image-*) continue ;; esac
  dpkg -x "$deb" "$RFS"
  # Registered as installed, so `apt`/python-apt (Ansible) see the packages present.
  dpkg-deb -f "$deb" | sed '/^Package:/a Status: install ok installed' >>"$status"
  echo >>"$status"
  pkg=$(dpkg-deb -f "$deb" Package)
  arch=$(dpkg-deb -f "$deb" Architecture)
  list="$RFS/var/lib/dpkg/info/$pkg.list"
  [ "$arch" = all ] || list="$RFS/var/lib/dpkg/info/$pkg:$arch.list"
  dpkg -c "$deb" | awk '{print $6}' | sed 's|^\.||; s|^$|/.|' >"$list"
done
# Debian 12 is merged-/usr, but `dpkg -x` (tar) makes /bin, /sbin and /lib directories again:
# their contents move under /usr, and they become the links they are on a real system.
mkdir -p "$RFS"/usr/{bin,sbin,lib}
for d in bin sbin lib; do
  if [ -d "$RFS/$d" ] && [ ! -L "$RFS/$d" ]; then
    cp -a "$RFS/$d/." "$RFS/usr/$d/"
    rm -rf "${RFS:?}/$d"
  fi
  ln -sfn usr/$d "$RFS/$d"
done
# What a board does not need in RAM.
rm -rf "$RFS"/usr/share/{doc,man,info,locale,lintian} "$RFS"/usr/lib/python3.11/test
# busybox provides the rest of the userland (mount, hostname, sleep, …); real binaries from the
# packages win, and /bin/sh is dash, as on Debian (busybox ash would run its own applets first).
for a in $("$RFS/usr/bin/busybox" --list 2>/dev/null || qemu-aarch64-static "$RFS/usr/bin/busybox" --list 2>/dev/null || true); do
  [ -e "$RFS/usr/bin/$a" ] || [ -e "$RFS/usr/sbin/$a" ] || ln -s busybox "$RFS/usr/bin/$a"
done
[ -e "$RFS/usr/bin/sh" ] || ln -s busybox "$RFS/usr/bin/sh"

# Accounts, sshd, PAM.
cat >"$RFS/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
sshd:x:100:65534::/run/sshd:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
EOF
cat >"$RFS/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
printf 'root:*:20000:0:99999:7:::\nsshd:*:20000:0:99999:7:::\nnobody:*:20000:0:99999:7:::\n' >"$RFS/etc/shadow"
printf 'root:*::\nnogroup:*::\n' >"$RFS/etc/gshadow"
chmod 640 "$RFS/etc/shadow" "$RFS/etc/gshadow"
printf 'pi5-board\n' >"$RFS/etc/hostname"
printf '127.0.0.1 localhost\n::1 localhost\n' >"$RFS/etc/hosts"
printf 'hosts: files\npasswd: files\ngroup: files\nshadow: files\n' >"$RFS/etc/nsswitch.conf"
# pam-auth-update (perl) would write these.
printf 'auth\t[success=1 default=ignore]\tpam_unix.so nullok\nauth\trequisite\tpam_deny.so\nauth\trequired\tpam_permit.so\n' >"$RFS/etc/pam.d/common-auth"
printf 'account\t[success=1 new_authtok_reqd=done default=ignore]\tpam_unix.so\naccount\trequisite\tpam_deny.so\naccount\trequired\tpam_permit.so\n' >"$RFS/etc/pam.d/common-account"
printf 'session\trequired\tpam_permit.so\nsession\trequired\tpam_unix.so\n' >"$RFS/etc/pam.d/common-session"
cp "$RFS/etc/pam.d/common-session" "$RFS/etc/pam.d/common-session-noninteractive"
printf 'password\trequired\tpam_unix.so\n' >"$RFS/etc/pam.d/common-password"
cp "$RFS/usr/share/openssh/sshd_config" "$RFS/etc/ssh/sshd_config"
cat >>"$RFS/etc/ssh/sshd_config" <<'EOF'
# edgesim test board
PermitRootLogin prohibit-password
PasswordAuthentication no
UseDNS no
EOF
ssh-keygen -q -t ed25519 -N '' -C pi5-board -f "$RFS/etc/ssh/ssh_host_ed25519_key"
cp "$RFS/etc/ssh/ssh_host_ed25519_key.pub" "$OUT/host_ed25519.pub"

# The kernel and the modules a board uses (networking whole, the virtio drivers), with what
# they depend on.
dpkg -x ./"$KPKG"_*.deb "$OUT/kernel"
KREL=$(ls "$OUT/kernel/lib/modules")
cp "$OUT/kernel/boot/vmlinuz-$KREL" "$OUT/vmlinuz"
depmod -b "$OUT/kernel" "$KREL"
M="$OUT/kernel/lib/modules/$KREL"
# (crypto and lib whole: modules such as libcrc32c need their algorithm through the crypto API,
# a soft dependency that modules.dep does not list.)
want=$( (cd "$M" && find kernel/net kernel/lib kernel/crypto kernel/arch -name '*.ko*'
  for m in virtio_pci virtio_net ifb veth dummy; do modinfo -b "$OUT/kernel" -k "$KREL" -n $m | sed "s|^$M/||"; done))
closure=$(for f in $want; do echo "$f"; grep "^$f:" "$M/modules.dep" | cut -d: -f2 | tr ' ' '\n'; done | grep . | sort -u)
for f in $closure; do
  mkdir -p "$RFS/lib/modules/$KREL/$(dirname "$f")"
  cp "$M/$f" "$RFS/lib/modules/$KREL/$f"
done
cp "$M"/modules.{order,builtin,builtin.modinfo} "$RFS/lib/modules/$KREL/" 2>/dev/null || true
depmod -b "$RFS" "$KREL"

if [ "$INIT" = systemd ]; then
  # (base-files, which ships it, is not unpacked.)
  printf 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm), edgesim test board"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\nID=debian\n' >"$RFS/usr/lib/os-release"
  ln -sfn ../usr/lib/os-release "$RFS/etc/os-release"
  # A first boot would run systemd-firstboot and write one.
  printf '5ed9e5b0a7d14c0e9d0c1a2b3c4d5e6f\n' >"$RFS/etc/machine-id"
  S="$RFS/etc/systemd/system"
  mkdir -p "$S/multi-user.target.wants"
  ln -sfn /lib/systemd/system/multi-user.target "$S/default.target"
  # The system bus's user (dbus's maintainer script would add it), the bus socket enabled
  # (deb-systemd-helper would link it), and SSH logins registered with logind as on a real
  # board (pam-auth-update would add pam_systemd).
  echo 'messagebus:x:101:101::/nonexistent:/usr/sbin/nologin' >>"$RFS/etc/passwd"
  echo 'messagebus:x:101:' >>"$RFS/etc/group"
  echo 'messagebus:*:20000:0:99999:7:::' >>"$RFS/etc/shadow"
  echo 'messagebus:!::' >>"$RFS/etc/gshadow"
  mkdir -p "$S/sockets.target.wants" "$RFS/var/lib/systemd"
  ln -sfn /lib/systemd/system/dbus.socket "$S/sockets.target.wants/dbus.socket"
  printf 'session\toptional\tpam_systemd.so\n' >>"$RFS/etc/pam.d/common-session"
  # No udev, no tty logins, no clock daemon: masked, not failed.
  for u in getty.target getty@.service serial-getty@.service \
    console-getty.service systemd-networkd-wait-online.service systemd-firstboot.service \
    systemd-timesyncd.service systemd-pstore.service systemd-udevd.service \
    systemd-hwdb-update.service ldconfig.service systemd-journal-catalog-update.service; do
    ln -sfn /dev/null "$S/$u"
  done
  cat >"$S/board-net.service" <<'EOF'
[Unit]
Description=edgesim test board: eth0 from the kernel command line
DefaultDependencies=no
Before=network.target board-sshd.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'ip link set lo up; ip addr add "$(cat /etc/edgesim-addr)" dev eth0; ip link set eth0 up'

[Install]
WantedBy=multi-user.target
EOF
  cat >"$S/board-sshd.service" <<'EOF'
[Unit]
Description=edgesim test board: sshd
After=board-net.service
Requires=board-net.service

[Service]
ExecStartPre=/bin/mkdir -p /run/sshd
ExecStart=/usr/sbin/sshd -D -E /run/sshd.log
KillMode=process

[Install]
WantedBy=multi-user.target
EOF
  # The test waits for this line on the console: sshd listens.
  cat >"$S/board-ready.service" <<'EOF'
[Unit]
Description=edgesim test board: say when sshd listens
After=board-sshd.service

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'until ss -Hltn "sport = :22" | grep -q .; do sleep 0.2; done; echo "edgesim-board: sshd up on $(cat /etc/edgesim-addr) (systemd $(systemctl --version | head -1 | cut -d" " -f2) as PID 1)" >/dev/console'

[Install]
WantedBy=multi-user.target
EOF
  ln -sfn ../board-ready.service "$S/multi-user.target.wants/board-ready.service"
  ln -sfn ../board-net.service "$S/multi-user.target.wants/board-net.service"
  ln -sfn ../board-sshd.service "$S/multi-user.target.wants/board-sshd.service"
  cat >"$RFS/init" <<'EOF'
#!/bin/sh
# The systemd test board's first process: what the kernel command line says (eth0's address,
# the controller's key, a Jetson's missing modules), then PID 1 goes to systemd.
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
arg() { tr ' ' '\n' </proc/cmdline | sed -n "s/^$1=//p" | tail -1; }
if [ "$(arg edgesim.jetson)" = 1 ]; then
  find /lib/modules -name 'sch_netem.ko*' -o -name 'sch_tbf.ko*' -o -name 'ifb.ko*' | xargs rm -f
fi
modprobe virtio_pci; modprobe virtio_net
arg edgesim.addr >/etc/edgesim-addr
mkdir -p /root/.ssh
chmod 700 /root/.ssh
echo "ssh-ed25519 $(arg edgesim.key) controller" >/root/.ssh/authorized_keys
exec /lib/systemd/systemd
EOF
else
cat >"$RFS/init" <<'EOF'
#!/bin/sh
# The test board's PID 1: mounts, network, sshd; powers off when sshd is told to stop.
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=0755 run /run
mount -t cgroup2 cgroup2 /sys/fs/cgroup
echo "+cpuset +cpu +io +memory +pids" >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null
hostname -F /etc/hostname
arg() { tr ' ' '\n' </proc/cmdline | sed -n "s/^$1=//p" | tail -1; }
if [ "$(arg edgesim.jetson)" = 1 ]; then
  find /lib/modules -name 'sch_netem.ko*' -o -name 'sch_tbf.ko*' -o -name 'ifb.ko*' | xargs rm -f
fi
modprobe virtio_pci; modprobe virtio_net
ip link set lo up
ip addr add "$(arg edgesim.addr)" dev eth0
ip link set eth0 up
mkdir -p /root/.ssh /run/sshd
chmod 700 /root/.ssh
echo "ssh-ed25519 $(arg edgesim.key) controller" >/root/.ssh/authorized_keys
/usr/sbin/sshd -E /run/sshd.log
echo "edgesim-board: sshd up on $(arg edgesim.addr)"
# Stay PID 1; the test powers the board off through qemu.
while :; do sleep 3600; done
EOF
fi
chmod 755 "$RFS/init"

(cd "$RFS" && find . | cpio -o -H newc --quiet >"$OUT/initrd.cpio")
rm -rf "$RFS" "$OUT/kernel" "$OUT/debs"
echo "$WANT" >"$OUT/version"
echo "arm64 board ($INIT): built $OUT in $(($(date +%s) - t0)) s ($KPKG $KVER, initrd $(du -h "$OUT/initrd.cpio" | cut -f1))"
