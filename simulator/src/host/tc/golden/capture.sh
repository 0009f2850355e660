#!/usr/bin/env bash
# Regenerates the golden fixtures next to this script: the exact netlink requests that
# iproute2's `tc` sends for each command below, captured with strace against a veth pair in a
# throwaway network namespace (the host's namespace is never touched). The kernel need not
# accept a request (this one has no sch_netem): strace sees the bytes on the way out.
#
# Usage (as root, with iproute2 and strace installed):
#   simulator/src/host/tc/golden/capture.sh
# then run `cargo test -p edgesim --lib host::tc::golden_tests` to compare the encoders.
set -euo pipefail
cd "$(dirname "$0")"

ns="edgesim-golden-$$"
cleanup() { ip netns del "$ns" 2>/dev/null || true; }
trap cleanup EXIT
ip netns add "$ns"
ip -n "$ns" link add v0 type veth peer name v1
ip -n "$ns" link set v0 up

tc_version=$(tc -V | head -1)
kernel=$(uname -r)

# capture NAME TC-ARGS...: writes NAME.txt with the command, nlmsg type and flags, and the
# message body after the 16-byte nlmsghdr (struct tcmsg + attributes) in hex.
capture() {
    local name=$1
    shift
    local out line type flags body
    out=$(strace -f -qq -X raw -xx -s 1000000 -e trace=sendmsg \
        ip netns exec "$ns" tc "$@" 2>&1 >/dev/null || true)
    line=$(grep -E 'nlmsg_type=0x(24|25|28|29|2c|2d),' <<<"$out" | tail -1)
    if [[ -z $line ]]; then
        echo "no tc request captured for: tc $*" >&2
        echo "$out" >&2
        exit 1
    fi
    type=$(sed -E 's/.*nlmsg_type=(0x[0-9a-f]+),.*/\1/' <<<"$line")
    flags=$(sed -E 's/.*nlmsg_flags=(0x[0-9a-f]+),.*/\1/' <<<"$line")
    body=$(sed -E 's/.*nlmsg_pid=[0-9]+\}, "([^"]*)".*/\1/; s/\\x//g' <<<"$line")
    {
        echo "# Captured by capture.sh with ${tc_version} on Linux ${kernel}; do not edit."
        echo "command: tc $*"
        echo "type: ${type}"
        echo "flags: ${flags}"
        echo "body:"
        fold -w 64 <<<"$body"
    } >"${name}.txt"
    echo "${name}: tc $*"
}

capture tbf_8mbit qdisc replace dev v0 root handle 1: tbf rate 8mbit burst 32kb latency 50ms
capture tbf_40gbit qdisc replace dev v0 root handle 1: tbf rate 40gbit burst 1mb limit 2mb
capture htb_root qdisc replace dev v0 root handle 1: htb default 10 r2q 10
capture htb_class_full class replace dev v0 parent 1: classid 1:10 htb rate 2mbit ceil 4mbit burst 15k cburst 15k prio 1 quantum 1514
capture htb_class_default class replace dev v0 parent 1: classid 1:20 htb rate 2mbit
capture htb_class_64bit class replace dev v0 parent 1:1 classid 1:30 htb rate 40gbit ceil 50gbit burst 1mb cburst 1mb
capture pfifo qdisc replace dev v0 parent 1:10 handle 10: pfifo limit 100
capture bfifo qdisc replace dev v0 root bfifo limit 10000
capture netem_delay_uniform qdisc replace dev v0 root netem delay 10ms 2ms
capture netem_delay_normal qdisc replace dev v0 root netem delay 100ms 20ms 25% distribution normal
capture netem_delay_pareto qdisc replace dev v0 root netem delay 10ms 2ms distribution pareto
capture netem_delay_paretonormal qdisc replace dev v0 root handle 2: netem delay 50ms 10ms distribution paretonormal
capture netem_loss_random qdisc replace dev v0 root netem loss random 1% 30%
capture netem_loss_ge qdisc replace dev v0 root netem loss gemodel 1% 10% 70% 0.1%
capture netem_loss_ge_defaults qdisc replace dev v0 root netem loss gemodel 1%
capture netem_dup_corrupt_reorder qdisc replace dev v0 root netem delay 10ms reorder 5% 50% gap 3 duplicate 2% corrupt 0.5% 10%
capture netem_rate qdisc replace dev v0 root netem rate 10mbit
capture netem_rate64_overheads qdisc replace dev v0 root netem rate 50gbit 20 1500 -4 limit 5000
capture netem_everything qdisc replace dev v0 parent 1:10 handle 10: netem delay 10ms 2ms 25% distribution pareto loss 1% 30% duplicate 2% corrupt 0.5% reorder 5% 50% gap 3 rate 10mbit limit 200
capture u32_src_dst filter add dev v0 parent 1: protocol ip prio 1 u32 match ip src 10.0.0.0/24 match ip dst 10.0.1.2/32 flowid 1:10
capture u32_dst filter add dev v0 parent 1: protocol ip prio 2 u32 match ip dst 10.200.0.2/32 flowid 1:20
capture u32_all filter add dev v0 parent 2: protocol ip prio 7 u32 match u32 0 0 flowid 2:1
capture qdisc_del_root qdisc del dev v0 root
capture qdisc_del_parent qdisc del dev v0 parent 1:10
capture class_del class del dev v0 classid 1:10
capture filter_del filter del dev v0 parent 1: prio 1
