#!/usr/bin/env bash
# Builds edgesim's cargo-fuzz targets and runs each for a bounded time, starting from seeds made
# of the project's own inputs: the shipped scenarios and the test scenarios, the hardware
# profiles, the trace CSVs, the golden tc and nf_tables netlink messages, and a few frames.
#
#   fuzz/run.sh                      # every target, 30 s each
#   fuzz/run.sh 300 scenario trace   # chosen targets, 300 s each
#   fuzz/run.sh ci                   # what .ci/run does: a fixed seed and a fixed number of
#                                    # inputs per target, so a commit always gets the same verdict
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`). libFuzzer's instrumentation uses
# unstable compiler flags: a nightly toolchain where `rustup toolchain list` shows one, else the
# pinned toolchain with RUSTC_BOOTSTRAP=1. No sanitizer (`-s none`): the code under test is safe
# Rust, and what is hunted is panics (index, overflow, unwrap), which debug assertions catch.
# 16 codegen units: the build takes 6 minutes on 2 CPUs instead of about 10.
# A crash leaves its input under fuzz/artifacts/<target>/; keep it as a regression test in
# simulator/src/fuzzing/regressions/<target>/ once fixed (`cargo test -p edgesim --lib fuzzing`).
set -Eeuo pipefail
cd "$(dirname "$0")"
SECS=${1:-30}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(scenario profile trace tc_decode nft_decode frame)
# `ci`: libFuzzer's own PRNG seeded with 1 and each target stopped after a number of inputs
# (about 10 s each on a 2-CPU machine), so the run is reproducible: the same commit meets the
# same inputs every time, and a crash is the commit's, not the draw's. Random campaigns (a
# time budget and a random seed) are the nightly workflow's: fuzz/run.sh 120.
declare -A CI_RUNS=([scenario]=30000 [profile]=60000 [trace]=40000 [tc_decode]=1000000
                    [nft_decode]=1000000 [frame]=10000000)

# EDGESIM_FUZZ_TOOLCHAIN=pinned forces the second way (to test it where a nightly exists).
if [ "${EDGESIM_FUZZ_TOOLCHAIN:-}" != pinned ] && rustup toolchain list | grep -q '^nightly'; then
  TOOLCHAIN=(+nightly)
  echo "fuzz: nightly toolchain ($(rustc +nightly --version))"
else
  TOOLCHAIN=()
  export RUSTC_BOOTSTRAP=1
  echo "fuzz: no nightly toolchain: pinned $(rustc --version) with RUSTC_BOOTSTRAP=1"
fi

# --- seeds --------------------------------------------------------------------------------------
rm -rf seeds && mkdir -p seeds
for t in scenario profile trace tc_decode nft_decode frame; do mkdir -p "seeds/$t" "corpus/$t"; done
cp ../scenarios/*.yaml ../tests/scenarios/*/*.yaml seeds/scenario/
cp ../hardware-profiles/*.yaml seeds/profile/
cp ../scenarios/traces/*.csv seeds/trace/
python3 - <<'EOF'
import glob, os, struct

def hexlines(lines):
    return bytes.fromhex("".join(l.strip() for l in lines if l.strip() and all(c in "0123456789abcdef" for c in l.strip())))

# tc: each golden file holds one request (type, flags, body after the netlink header). As a
# datagram with its header it is what the kernel's dump answer looks like (RTM_NEWQDISC etc.).
for p in glob.glob("../simulator/src/host/tc/golden/*.txt"):
    lines = open(p).read().splitlines()
    kind = next(int(l.split()[1], 16) for l in lines if l.startswith("type:"))
    body = hexlines(lines[lines.index("body:") + 1:])
    msg = struct.pack("=IHHII", 16 + len(body), kind, 0x2, 1, 0) + body
    open(f"seeds/tc_decode/{os.path.basename(p)[:-4]}", "wb").write(msg)
    open(f"seeds/tc_decode/{os.path.basename(p)[:-4]}.options", "wb").write(body[20:])
# An error answer with an extended-ack message.
err = struct.pack("=i", -22) + struct.pack("=IHHII", 16, 0x24, 5, 1, 0)
ack = b"Invalid argument\0"
tlv = struct.pack("=HH", 4 + len(ack), 1) + ack + b"\0" * (-len(ack) % 4)
open("seeds/tc_decode/error", "wb").write(struct.pack("=IHHII", 16 + len(err) + len(tlv), 2, 0x300, 1, 0) + err + tlv)
open("seeds/nft_decode/error", "wb").write(struct.pack("=IHHII", 16 + len(err) + len(tlv), 2, 0x300, 1, 0) + err + tlv)

# nf_tables: the golden batches are whole datagrams (headers included).
for p in glob.glob("../simulator/src/host/nft/golden/*.txt"):
    lines = [l for l in open(p).read().splitlines() if not l.startswith("#")]
    open(f"seeds/nft_decode/{os.path.basename(p)[:-4]}", "wb").write(hexlines(lines))

# Frames: IPv4/UDP, VLAN-tagged IPv4/TCP, IPv6/ICMPv6, a fragment, ARP.
eth = lambda et: b"\x02" * 6 + b"\x04" * 6 + struct.pack("!H", et)
ip4 = lambda proto, frag=0: struct.pack("!BBHHHBBH4s4s", 0x45, 0, 48, 1, frag, 64, proto, 0, bytes([10, 90, 0, 2]), bytes([10, 90, 1, 3]))
frames = {
    "udp4": eth(0x0800) + ip4(17) + struct.pack("!HHHH", 4000, 5000, 28, 0) + b"x" * 20,
    "vlan_tcp4": eth(0x8100) + struct.pack("!HH", 5, 0x0800) + ip4(6) + b"\0" * 20,
    "qinq": eth(0x88a8) + struct.pack("!HH", 5, 0x8100) + struct.pack("!HH", 6, 0x0800) + ip4(1) + b"\0" * 8,
    "icmp6": eth(0x86dd) + struct.pack("!IHBB", 0x60000000, 8, 58, 64) + b"\xfd" + b"\0" * 15 + b"\xfd" + b"\0" * 14 + b"\1" + b"\x80\0\0\0\0\1\0\1",
    "frag4": eth(0x0800) + ip4(17, 0x2001) + b"\0" * 8,
    "arp": eth(0x0806) + b"\0\1\x08\0\6\4\0\1" + b"\0" * 20,
}
for k, v in frames.items():
    open(f"seeds/frame/{k}", "wb").write(v)
EOF

# --- build and run ------------------------------------------------------------------------------
t0=$(date +%s)
cargo "${TOOLCHAIN[@]}" fuzz build -s none --debug-assertions --codegen-units 16
echo "fuzz: built in $(( $(date +%s) - t0 ))s"
mkdir -p logs
failed=()
for t in "${TARGETS[@]}"; do
  if [ "$SECS" = ci ]; then
    # Kept corpora would change what a run meets: a CI run starts from the seeds alone.
    dirs=("seeds/$t")
    budget=(-seed=1 -runs="${CI_RUNS[$t]}" -max_total_time=120)
    echo "=== fuzz $t: ${CI_RUNS[$t]} inputs, seed 1, from $(ls "seeds/$t" | wc -l) seeds"
  else
    dirs=("corpus/$t" "seeds/$t")
    budget=(-max_total_time="$SECS")
    echo "=== fuzz $t: ${SECS}s from $(ls "seeds/$t" | wc -l) seeds (+ $(ls "corpus/$t" | wc -l) kept in fuzz/corpus/)"
  fi
  set +e
  cargo "${TOOLCHAIN[@]}" fuzz run -s none --debug-assertions --codegen-units 16 "$t" "${dirs[@]}" -- \
    "${budget[@]}" -max_len=65536 -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 \
    > "logs/$t.log" 2>&1
  rc=$?
  set -e
  grep -E "^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb)" "logs/$t.log" || true
  if [ "$SECS" = ci ] && ! grep -q "^Done ${CI_RUNS[$t]} runs" "logs/$t.log"; then
    echo "  (stopped by the 120 s backstop before ${CI_RUNS[$t]} inputs: this run is not reproducible)"
  fi

  if [ $rc != 0 ]; then
    failed+=("$t")
    tail -40 "logs/$t.log"
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashes in: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
  exit 1
fi
echo "fuzz: no crashes in ${TARGETS[*]}"
