# dp-netns.sh - the two-link network namespace that quiverd's DPDK
# dataplane is tested and measured through (sourced by
# tests/integration/dpdk.sh and bench/run_dpdk.sh; needs root).
#
#   root namespace                         namespace $DP_NS
#   qvd0 (up, promisc, no IP: DPDK's)  ── veth ──  qvd1 10.77.0.2/24
#   qvm0 10.77.1.1/24 (kernel sockets) ── veth ──  qvm1 10.77.1.2/24
#   qvt0 (a tap the dataplane creates; raw frames only)
#
#   dp_netns_up NAME     create it all (removing leftovers of a killed run);
#                        sets DP_NS, DP_MAC (qvd0's MAC = the dataplane's)
#   dp_netns_down        remove it all (safe to call twice)
#   dp_hugepages         reserve 160 huge pages and mount hugetlbfs when
#                        possible; sets DP_HUGE=on|off
# The dataplane serves 10.77.0.1 on qvd0; TCP and kernel UDP listen on
# 10.77.1.1.

DP_NS=
DP_MAC=

dp_netns_down() {   # every step may find nothing to remove (set -e safe)
    if [ -n "$DP_NS" ]; then ip netns del "$DP_NS" 2>/dev/null || true; fi
    ip link del qvd0 2>/dev/null || true
    ip link del qvm0 2>/dev/null || true
    ip link del qvt0 2>/dev/null || true
}

dp_netns_up() {
    DP_NS=$1
    dp_netns_down
    ip netns add "$DP_NS" &&
    ip link add qvd0 type veth peer name qvd1 &&
    ip link add qvm0 type veth peer name qvm1 &&
    ip link set qvd1 netns "$DP_NS" &&
    ip link set qvm1 netns "$DP_NS" &&
    ip link set qvd0 up promisc on &&
    ip addr add 10.77.1.1/24 dev qvm0 &&
    ip link set qvm0 up &&
    ip -n "$DP_NS" link set lo up &&
    ip -n "$DP_NS" addr add 10.77.0.2/24 dev qvd1 &&
    ip -n "$DP_NS" link set qvd1 up &&
    ip -n "$DP_NS" addr add 10.77.1.2/24 dev qvm1 &&
    ip -n "$DP_NS" link set qvm1 up || return 1
    DP_MAC=$(cat /sys/class/net/qvd0/address)
}

dp_hugepages() {
    local have
    DP_HUGE=on
    if ! grep -q hugetlbfs /proc/mounts; then
        mkdir -p /dev/hugepages
        mount -t hugetlbfs nodev /dev/hugepages 2>/dev/null || DP_HUGE=off
    fi
    if [ "$DP_HUGE" = on ]; then
        have=$(awk '/HugePages_Free/ {print $2}' /proc/meminfo)
        if [ "${have:-0}" -lt 160 ]; then
            echo $(( $(cat /proc/sys/vm/nr_hugepages) + 160 - ${have:-0} )) \
                > /proc/sys/vm/nr_hugepages 2>/dev/null || true
        fi
        have=$(awk '/HugePages_Free/ {print $2}' /proc/meminfo)
        [ "${have:-0}" -ge 128 ] || DP_HUGE=off
    fi
}
