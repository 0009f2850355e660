#!/usr/bin/env bash
# Regenerates the golden fixtures next to this script: the exact nf_tables batch that the `nft`
# tool sends for each ruleset below, captured with strace (the `sendmsg` of the batch) while
# nft runs in a throwaway network namespace (the host's ruleset is never touched).
#
# Each case is written the way edgesim's firewall spells it: both tables `inet T` and
# `bridge T`, each with its forward base chain, flushed, the bridged-mark rule, then the drop
# rules in order. `golden_tests.rs` restates every case as a typed `Ruleset` and compares the
# encoder's batch with the capture message by message (sequence numbers and set ids are
# renumbered, see there).
#
# Usage (as root, with nftables, iproute2 and strace installed):
#   simulator/src/host/nft/golden/capture.sh            (every case)
#   CASES="host" simulator/src/host/nft/golden/capture.sh   (only the cases named)
# then run `cargo test -p edgesim --lib host::nft::golden_tests`.
set -euo pipefail
cd "$(dirname "$0")"

nft_version=$(nft --version)
kernel=$(uname -r)
ns=""
cleanup() { [[ -n $ns ]] && ip netns del "$ns" 2>/dev/null || true; }
trap cleanup EXIT

MARK_INET='meta mark & 0x40000000 == 0x40000000 return comment "edgesim: bridged"'
MARK_BRIDGE='meta mark set meta mark | 0x40000000 comment "edgesim: bridged"'

# apply_script TABLE RULE...: the transaction that makes both tables hold exactly RULE...
apply_script() {
    local t=$1 fam prio mark r
    shift
    for fam in inet bridge; do
        if [[ $fam == bridge ]]; then prio=-200 mark=$MARK_BRIDGE; else prio=0 mark=$MARK_INET; fi
        echo "add table $fam $t"
        echo "add chain $fam $t forward { type filter hook forward priority $prio; policy accept; }"
        echo "flush table $fam $t"
        echo "add rule $fam $t forward $mark"
        for r in "$@"; do
            echo "add rule $fam $t forward $r"
        done
    done
}

# capture NAME < SCRIPT: runs `nft -f` on SCRIPT in a fresh namespace and writes NAME.nft (the
# input) and NAME.txt (the batch as hex, 32 bytes a line).
capture() {
    local name=$1 out hex
    if [[ -n ${CASES:-} && " $CASES " != *" $name "* ]]; then
        cat >/dev/null
        return
    fi
    cat >"${name}.nft"
    ns="edgesim-golden-$$-${name}"
    ip netns add "$ns"
    out=$(ip netns exec "$ns" strace -f -qq -e trace=sendmsg -e write=all nft -f "${name}.nft" 2>&1 >/dev/null)
    ip netns del "$ns"
    ns=""
    # strace dumps each sendmsg's data as ` | OFFSET  HEX…  ASCII |` lines: keep the hex columns.
    hex=$(grep -E '^ \| [0-9a-f]{5}  ' <<<"$out" | cut -c11-59 | tr -d ' \n')
    if [[ ${hex:0:16} != "1400000010000100" ]]; then
        echo "no batch captured for ${name}" >&2
        echo "$out" >&2
        exit 1
    fi
    {
        echo "# Captured by capture.sh with ${nft_version} on Linux ${kernel}; do not edit."
        echo "# Input: ${name}.nft"
        fold -w 64 <<<"$hex"
    } >"${name}.txt"
    echo "${name}: $(( ${#hex} / 2 )) bytes"
}

# The tables and their marking rules only: what an empty ruleset looks like.
apply_script edgesim_g | capture empty

# What a run's shaper produces, with each shape of address match: single prefix and address,
# merged overlapping prefixes, a hash set of addresses, an interval set, IPv4 and IPv6 rules
# from one mixed block, match-everything, loss with and without numgen.
apply_script edgesim_g \
    'ip saddr 10.0.0.0/24 ip daddr 10.0.1.2 counter drop comment "no-path a->b"' \
    'ip6 saddr fd00::/64 ip6 daddr fd00:1::1 counter drop comment "no-path a->b"' \
    'ip saddr { 10.0.3.1, 10.0.3.2 } ip daddr { 10.0.4.0/24, 10.0.5.9 } counter drop comment "partition p #0"' \
    'counter drop comment "all"' \
    'ip daddr 10.0.2.0/24 numgen random mod 10000 0-999 counter drop comment "loss a->c"' \
    'ip saddr 10.0.9.0/24 counter drop comment "certain"' \
    'numgen random mod 10000 0-0 counter drop comment "tiny"' |
    capture representative

# Prefix shapes: not byte-aligned (/20, /31, IPv6 /60), zero-length, adjacent intervals that
# merge, intervals starting at 0 and reaching the top, an IPv6 hash set and interval set.
apply_script edgesim_g \
    'ip saddr 10.0.16.0/20 ip daddr 0.0.0.0/0 counter drop comment "odd"' \
    'ip6 saddr fd00::/60 ip6 daddr ::/0 counter drop comment "odd"' \
    'ip daddr { 10.0.1.0/24, 10.0.2.0/24 } counter drop comment "adjacent"' \
    'ip daddr { 0.0.0.0/8, 240.0.0.0/4 } counter drop comment "edges"' \
    'ip saddr 10.1.2.2/31 counter drop comment "pair"' \
    'ip6 saddr { fd00::1, fd00::2 } ip6 daddr { fd00:1::/64, fd00:2::5 } counter drop comment "v6 sets"' |
    capture prefixes

# Removing both tables, whether or not they exist.
printf '%s\n' 'add table inet edgesim_g' 'delete table inet edgesim_g' \
    'add table bridge edgesim_g' 'delete table bridge edgesim_g' | capture delete

# A board's own traffic (Layout::Host): one inet table with an input chain; the management
# connection's accept rules first, then blocks and losses (all on arrival).
{
    echo 'add table inet edgesim_g'
    echo 'add chain inet edgesim_g input { type filter hook input priority 0; policy accept; }'
    echo 'flush table inet edgesim_g'
    echo 'add rule inet edgesim_g input ip saddr 192.0.2.1 ip daddr 192.0.2.9 tcp sport 50000 tcp dport 22 accept comment "edgesim: management"'
    echo 'add rule inet edgesim_g input ip6 saddr fd00::1 ip6 daddr fd00::9 tcp sport 40000 tcp dport 2222 accept comment "edgesim: management"'
    echo 'add rule inet edgesim_g input ip saddr 192.0.2.10 ip daddr 192.0.2.9 counter drop comment "partition p #0"'
    echo 'add rule inet edgesim_g input counter drop comment "isolate"'
    echo 'add rule inet edgesim_g input ip saddr 192.0.2.11 numgen random mod 10000 0-499 counter drop comment "loss from orin"'
} | capture host

# A board whose workloads run in a linkem cell (boards without sch_netem): the host table also
# carries the cell's NAT — new connections arriving on the lab interface for the board's
# address, but for its SSH port, go to the cell; what the cell sends leaves as the board.
{
    echo 'add table inet edgesim_g'
    echo 'add chain inet edgesim_g input { type filter hook input priority 0; policy accept; }'
    echo 'add chain inet edgesim_g cell-in { type nat hook prerouting priority -100; policy accept; }'
    echo 'add chain inet edgesim_g cell-out { type nat hook postrouting priority 100; policy accept; }'
    echo 'flush table inet edgesim_g'
    echo 'add rule inet edgesim_g cell-in iifname "eth0" ip daddr 192.0.2.9 tcp dport != 22 dnat ip to 169.254.237.2 comment "edgesim: cell"'
    echo 'add rule inet edgesim_g cell-in iifname "eth0" ip daddr 192.0.2.9 meta l4proto != tcp dnat ip to 169.254.237.2 comment "edgesim: cell"'
    echo 'add rule inet edgesim_g cell-out oifname "eth0" ip saddr 169.254.237.2 snat ip to 192.0.2.9 comment "edgesim: cell"'
} | capture cell
