#!/bin/bash
# run_dpdk.sh - the DPDK dataplane's figures (issue "DPDK dataplane"), as
# root, on a machine with 2+ CPUs:
#
# 1. qv-dpbench: the dataplane loop alone over net_ring with a null engine
#    (answers at once): queries per second on one lcore, TSC cycles and ns
#    per query, for 128-d queries (siftsmall's size) at burst 32 and 1.
# 2. End to end through the network namespace of scripts/dp-netns.sh:
#    quiverd serves the same FLAT siftsmall collection through the DPDK
#    dataplane (af_packet on a veth, lcore on CPU 1) and through kernel UDP
#    (a second veth; that quiverd runs without the dataplane, so no CPU is
#    taken by a spinning lcore); the client (dp_client, in the namespace,
#    pinned to CPU 0) runs sequential round trips (one query in flight) on
#    each path, blocking (poll(2)) and spinning (busy_poll, cache on only),
#    alternating the paths, each twice.  Run with the result cache on (answers come from the
#    cache: the transport alone) and off (each query an exact scan of
#    10 000 vectors).  Per row: p50 / p99 / mean round trip, and the
#    server's CPU per query: quiverd's threads' CPU time (schedstat; the
#    lcore's spinning excluded, its busy cycles counted) plus the kernel's
#    softirq time (/proc/stat), in TSC cycles.
#
# usage: bench/run_dpdk.sh [BUILD_DIR] [QUERIES_PER_ROW]   (default build, 20000)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
n=${2:-20000}
data=${QV_DATA_DIR:-../shared/data}/siftsmall
quiverd=$build/host/server/quiverd
client=$build/tests/dp_client
dpbench=$build/dataplane/qv-dpbench
[ "$(id -u)" = 0 ] || { echo "run_dpdk.sh: needs root" >&2; exit 1; }
for f in "$quiverd" "$client" "$dpbench"; do
    [ -x "$f" ] || { echo "run_dpdk.sh: $f missing: build with DPDK (scripts/setup.sh; ninja -C $build)" >&2; exit 1; }
done
. scripts/quiverd-lib.sh
. scripts/dp-netns.sh
tmp=$(mktemp -d)
cleanup() { qv_kill; dp_netns_down; rm -rf "$tmp"; }
trap cleanup EXIT
dp_hugepages
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'); huge pages: $DP_HUGE"

echo "== 1. the dataplane loop over net_ring, null engine (qv-dpbench) =="
for b in 32 1; do
    "$dpbench" --seconds 5 --dim 128 --k 10 --burst "$b" 2> /dev/null | grep qv-dpbench
done

echo "== 2. end to end through the namespace (dp_client pinned to CPU 0, lcore on CPU 1) =="
dp_netns_up "qvbench-$$" > /dev/null
tsc_hz=2600000000
run_server() {   # run_server CACHE_ENTRIES dpdk|off
    cat > "$tmp/quiver.conf" <<CONF
[workers]
threads = 1
pin = false
[cache]
entries = $1
semantic_entries = 0
[server]
bind = 10.77.1.1
udp_port = 0
tcp_port = 0
admin_port = 0
udp_workers = 1
[dataplane]
mode = $2
main_lcore = 0
lcores = 1
devices = net_af_packet0,iface=qvd0
ip = 10.77.0.1
hugepages = $( [ "$DP_HUGE" = on ] && echo auto || echo off )
file_prefix = qvbench$$
CONF
    qv_start "$quiverd" "$tmp/quiver.conf" "$tmp" > /dev/null
    ip netns exec "$DP_NS" taskset -c 0 "$client" --dp 10.77.0.1:7700 \
        --kernel "10.77.1.1:$QV_UDP:$QV_TCP" --data "$data" --load-only > /dev/null
    local h
    h=$(curl -s "http://127.0.0.1:$QV_ADMIN/metrics" | awk '/^quiver_dataplane_tsc_hz/ {print $2}')
    [ -n "$h" ] && tsc_hz=$h
    return 0
}
lcore_tid() {   # the EAL worker thread (it spins: counted by its busy cycles instead)
    for t in /proc/$QV_PID/task/*; do
        case "$(cat "$t/comm")" in *worker*|lcore*) basename "$t"; return;; esac
    done
}
snap() {        # quiverd CPU ns (threads but the lcore), lcore busy cycles, softirq jiffies
    local cpu=0 lt busy si
    lt=$(lcore_tid)
    for t in /proc/$QV_PID/task/*; do
        [ "$(basename "$t")" = "$lt" ] && continue
        cpu=$((cpu + $(cut -d' ' -f1 "$t/schedstat")))
    done
    busy=$(curl -s "http://127.0.0.1:$QV_ADMIN/metrics" | awk '/^quiver_dataplane_busy_cycles_total/ {s += $2} END {printf "%d", s}')
    si=$(awk '/^cpu / {print $8}' /proc/stat)
    echo "$cpu $busy $si"
}
row() {         # row LABEL PATH MODE
    local s0 s1 out
    s0=$(snap)
    out=$(ip netns exec "$DP_NS" taskset -c 0 "$client" --dp 10.77.0.1:7700 \
        --kernel "10.77.1.1:$QV_UDP:$QV_TCP" --data "$data" --latency-only "$2" $3 \
        --latency-queries "$n")
    s1=$(snap)
    read -r c0 b0 i0 <<< "$s0"
    read -r c1 b1 i1 <<< "$s1"
    local hz=$(getconf CLK_TCK)
    # cycles per query: quiverd threads' ns x GHz + lcore busy cycles + softirq
    awk -v c="$((c1 - c0))" -v b="$((b1 - b0))" -v si="$((i1 - i0))" -v hz="$hz" \
        -v tsc="$tsc_hz" -v n="$n" -v l="$1" -v out="$out" 'BEGIN {
        split(out, f, " ");
        srv = (c * tsc / 1e9 + b) / n; soft = si / hz * tsc / n;
        printf "  %-12s %-7s %-9s p50 %6.1f us  p99 %6.1f us  mean %6.1f us  quiverd %6.0f + softirq %6.0f = %6.0f cycles/query\n",
               l, f[2], f[3], f[7], f[9], f[11], srv, soft, srv + soft }'
}
# The kernel rows run on a quiverd without the dataplane (every CPU its
# own); the dataplane rows on one with it (CPU 1 spinning, the rest moved
# to CPU 0).  The spinning client is measured with the cache on only: with
# searches to run, a client spinning on CPU 0 starves the server's
# dispatcher there (CPU 1 is the lcore's), which measures the box, not
# the path.
for cache in 100000 0; do
    if [ "$cache" = 0 ]; then label="cache off"; modes=""; else label="cache on"; modes="--busy-poll"; fi
    echo " $label ($n sequential queries per row; siftsmall FLAT, k 10)"
    for rep in 1 2; do
        for path in dp kernel; do
            if [ "$path" = dp ]; then run_server "$cache" dpdk; else run_server "$cache" off; fi
            row "$label" "$path" ""
            for m in $modes; do row "$label" "$path" "$m"; done
            qv_stop > /dev/null
        done
    done
done
echo " (TSC $(awk -v h="$tsc_hz" 'BEGIN {printf "%.2f", h / 1e9}') GHz; quiverd = its threads' CPU time, the spinning lcore's idle turns excluded, its busy cycles included; softirq = the kernel's, whole machine)"
