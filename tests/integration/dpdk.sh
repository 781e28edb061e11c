#!/bin/bash
# dpdk.sh - quiverd with the DPDK dataplane, end to end through a network
# namespace (suite "dpdk"; needs root and a quiverd built with DPDK).
#
#   root namespace                          namespace qvdp-$$
#   quiverd: DPDK net_af_packet on qvd0 ──veth── qvd1 10.77.0.2  (UDP via DPDK)
#            kernel UDP+TCP 10.77.1.1 ───veth── qvm1 10.77.1.2  (TCP, kernel UDP)
#
# A second port, net_tap0 (kernel side qvt0, in the root namespace),
# carries raw frames only: it shows one lcore serving several ports, and
# takes the IP fragments that af_packet's kernel side would reassemble.  A
# third, net_memif0 (server role), is driven by qv-dpmemif, a DPDK process
# at its other end: ARP, then 1000 protocol PINGs answered OK.
#
# Checks: ARP resolves the dataplane address to qvd0's MAC; ping answers;
# dp_client (in the namespace, libquiver over the kernel stack) loads
# siftsmall over TCP, gets the same answers through the dataplane as
# through kernel UDP (recall 1 for FLAT), prints both round trips, and
# runs 100k queries through the dataplane; malformed frames (short, bad IP
# header length, bad UDP length, IP fragment, wrong port) sent raw from the
# namespace are each counted under their reason in /metrics and dropped,
# and valid traffic is still answered after them; the mempool is back at
# its starting count after the 100k queries (no mbuf leak); SIGTERM: exit 0.
# Then two worker lcores on two queue pairs: flows spread, all answered.
# Huge pages: reserved and mounted when possible, else the dataplane runs
# with --no-huge and the log says so (and so does this script).
#
# usage: dpdk.sh QUIVERD DP_CLIENT DPMEMIF   (meson passes them; QV_DATA_DIR set)
set -euo pipefail
quiverd=$1
client=$2
dpmemif=$3
data=${QV_DATA_DIR:?QV_DATA_DIR is not set}/siftsmall
if [ "$(id -u)" != 0 ]; then
    echo "dpdk.sh: SKIP: needs root (network namespaces, af_packet)"; exit 77
fi
if ! "$quiverd" --help 2>&1 | grep -q "built with the DPDK"; then
    echo "dpdk.sh: SKIP: this quiverd was built without DPDK"; exit 77
fi
tmp=$(mktemp -d)
. "$(dirname "$0")/../../scripts/quiverd-lib.sh"
. "$(dirname "$0")/../../scripts/dp-netns.sh"
cleanup() { qv_kill; dp_netns_down; rm -rf "$tmp"; }
trap cleanup EXIT
fail() { echo "dpdk.sh: FAIL: $*" >&2; echo "--- quiverd log ---" >&2; cat "$tmp/log" >&2 || true; exit 1; }

dp_netns_up "qvdp-$$" || fail "cannot set up the namespace and veth pairs"
ns=$DP_NS dpmac=$DP_MAC
dp_hugepages
huge=$DP_HUGE
[ "$huge" = on ] || echo "dpdk.sh: huge pages could not be reserved: the dataplane runs with --no-huge"

cat > "$tmp/quiver.conf" <<CONF
[workers]
threads = 1
pin = false
[server]
bind = 10.77.1.1
udp_port = 0
tcp_port = 0
admin_port = 0
udp_workers = 1
[dataplane]
mode = dpdk
main_lcore = 0
lcores = 1
devices = net_af_packet0,iface=qvd0;net_tap0,iface=qvt0;net_memif0,role=server,socket=$tmp/memif.sock
ip = 10.77.0.1
udp_port = 7700
hugepages = $( [ "$huge" = on ] && echo auto || echo off )
memory = 256M
file_prefix = qvdp$$
CONF
qv_start "$quiverd" "$tmp/quiver.conf" "$tmp" || fail "quiverd did not start"
echo "dpdk.sh: quiverd pid $QV_PID: kernel udp $QV_UDP tcp $QV_TCP admin $QV_ADMIN; dataplane 10.77.0.1:7700 on qvd0 ($dpmac)"
grep -q "dataplane: EAL" "$tmp/log" || fail "no EAL line in the log"
if grep -q -- "--no-huge" "$tmp/log"; then echo "dpdk.sh: the dataplane runs with --no-huge"; fi

metric() {   # metric NAME_WITH_LABELS -> value (sum over lcores)
    curl -s "http://127.0.0.1:$QV_ADMIN/metrics" | awk -v m="$1" 'index($0, m) == 1 { s += $NF } END { print s + 0 }'
}
stat() {     # stat KEY of /stats "dataplane"
    curl -s "http://127.0.0.1:$QV_ADMIN/stats" | python3 -c "import json,sys; print(json.load(sys.stdin)['dataplane']['$1'])"
}

# ARP and ping
ip netns exec "$ns" ping -c 3 -i 0.2 -W 2 10.77.0.1 > "$tmp/ping" || { cat "$tmp/ping"; fail "ping 10.77.0.1 got no answer"; }
grep -E "3 received" "$tmp/ping" || fail "ping: not 3 answers: $(cat "$tmp/ping")"
ip -n "$ns" neigh show 10.77.0.1 | grep -qi "$dpmac" || fail "ARP: 10.77.0.1 is not $dpmac: $(ip -n "$ns" neigh show)"
echo "dpdk.sh: ARP 10.77.0.1 -> $dpmac, ping answered"
[ "$(metric 'quiver_dataplane_arp_replies_total')" -ge 1 ] || fail "no ARP reply counted"
[ "$(metric 'quiver_dataplane_icmp_replies_total')" -ge 3 ] || fail "fewer than 3 ICMP replies counted"

free0=$(stat mempool_free)
ip netns exec "$ns" taskset -c 0 "$client" --dp 10.77.0.1:7700 --kernel "10.77.1.1:$QV_UDP:$QV_TCP" \
    --data "$data" --queries 100000 --inflight 32 | tee "$tmp/client" || fail "dp_client failed"

# a third port: net_memif, with another DPDK process at the other end
"$dpmemif" "$tmp/memif.sock" 10.77.0.1 7700 1000 > "$tmp/memif" 2>&1 || { cat "$tmp/memif"; fail "memif: ARP / PING"; }
grep "qv-dpmemif" "$tmp/memif" | sed 's/^/dpdk.sh: /'

# malformed frames, raw from the namespace
before() { for r in short ip_hlen udp_len ip_frag udp_port; do echo "$r $(metric "quiver_dataplane_drops_total{lcore=\"1\",reason=\"$r\"}")"; done; }
before > "$tmp/drops0"
# On the af_packet port from the namespace (the kernel's af_packet fanout
# reassembles IP fragments before DPDK sees them: an incomplete fragment
# is dropped by the kernel, never reaching the dataplane) and on the tap
# port from the root namespace (raw: fragments reach the dataplane).
tapmac=$(sed -n 's/.*port net_tap0: .* mac \([0-9a-f:]*\),.*/\1/p' "$tmp/log")
[ -n "$tapmac" ] || fail "no MAC of the tap port in the log"
cat > "$tmp/raw.py" <<'PY'
# raw.py IFACE DSTMAC: 3 frames of each malformed kind to DSTMAC
import socket, struct, sys
iface = sys.argv[1]
dst = bytes.fromhex(sys.argv[2].replace(":", ""))
with open("/sys/class/net/%s/address" % iface) as f:
    src = bytes.fromhex(f.read().strip().replace(":", ""))
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
def ip(payload, ihl=5, total=None, frag=0, proto=17):
    total = 20 + len(payload) if total is None else total
    h = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total, 1, frag, 64, proto, 0,
                    socket.inet_aton("10.77.0.2"), socket.inet_aton("10.77.0.1"))
    h = h[:10] + struct.pack("!H", csum(h)) + h[12:]
    return h + payload
def udp(dport=7700, ulen=None, body=b"x" * 40):
    ulen = 8 + len(body) if ulen is None else ulen
    return struct.pack("!HHHH", 40000, dport, ulen, 0) + body
eth = dst + src + b"\x08\x00"
frames = {
    "short": [eth + b"\x45\x00"] * 3,
    "ip_hlen": [eth + ip(udp(), ihl=4)] * 3,
    "udp_len": [eth + ip(udp(ulen=4000))] * 3,
    "ip_frag": [eth + ip(udp(), frag=0x2000)] * 3,
    "udp_port": [eth + ip(udp(dport=9))] * 3,
}
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((iface, 0))
for name, fs in frames.items():
    for f in fs:
        s.send(f)
print("dpdk.sh: sent 3 frames each on %s: %s" % (iface, ", ".join(frames)))
PY
ip netns exec "$ns" python3 "$tmp/raw.py" qvd1 "$dpmac" || fail "sending raw frames on qvd1"
python3 "$tmp/raw.py" qvt0 "$tapmac" || fail "sending raw frames on qvt0"
sleep 0.5
before > "$tmp/drops1"
while read -r r n1; do
    n0=$(awk -v r="$r" '$1 == r { print $2 }' "$tmp/drops0")
    echo "dpdk.sh: reason $r: $((n1 - n0)) dropped"
    want=6; [ "$r" = ip_frag ] && want=3
    [ $((n1 - n0)) -ge $want ] || fail "reason $r: $((n1 - n0)) drops counted for 3 frames sent; $(curl -s "http://127.0.0.1:$QV_ADMIN/metrics" | grep -E '^quiver_dataplane_(drops|not_linear|rx)' | grep -v ' 0$' | paste -sd' ')"
done < "$tmp/drops1"
echo "dpdk.sh: malformed frames dropped and counted: $(paste -sd' ' "$tmp/drops1")"
# valid traffic is still served
ip netns exec "$ns" ping -c 1 -W 2 10.77.0.1 > /dev/null || fail "no ping answer after the malformed frames"
ip netns exec "$ns" taskset -c 0 "$client" --dp 10.77.0.1:7700 --kernel "10.77.1.1:$QV_UDP:$QV_TCP" \
    --data "$data" --queries 1000 --inflight 8 --latency-queries 500 > "$tmp/client2" ||
    { cat "$tmp/client2"; fail "searches after the malformed frames failed"; }
echo "dpdk.sh: valid traffic still served after them"

# no mbuf leak: back at the starting count once idle
free1=$free0
for _ in $(seq 1 20); do
    free1=$(stat mempool_free)
    [ "$free1" = "$free0" ] && break
    sleep 0.1
done
[ "$free1" = "$free0" ] || fail "mempool: $free0 free mbufs before the 100k queries, $free1 after"
echo "dpdk.sh: mempool free $free0 before and $free1 after 101k queries: no mbuf leak"

qv_stop || fail "quiverd did not drain and exit 0 on SIGTERM"

# Two worker lcores (sharing CPU 1: this may be a 2-CPU machine) on two
# queue pairs of the af_packet port (the kernel's fanout hash spreads the
# flows): 16 clients, each its own flow, all answered; both lcores served.
sed -i -e 's/^lcores = 1$/lcores = 1,1/' \
    -e 's/^devices = .*/devices = net_af_packet0,iface=qvd0,qpairs=2/' "$tmp/quiver.conf"
qv_start "$quiverd" "$tmp/quiver.conf" "$tmp" || fail "quiverd with two lcores did not start"
ip netns exec "$ns" taskset -c 0 "$client" --dp 10.77.0.1:7700 --kernel "10.77.1.1:$QV_UDP:$QV_TCP" \
    --data "$data" --load-only > /dev/null || fail "load for the two-lcore run"
for i in $(seq 1 16); do
    ip netns exec "$ns" taskset -c 0 "$client" --dp 10.77.0.1:7700 --kernel "10.77.1.1:$QV_UDP:$QV_TCP" \
        --data "$data" --latency-only dp --latency-queries 500 > /dev/null ||
        fail "client $i of the two-lcore run"
done
r1=$(metric 'quiver_dataplane_requests_total{lcore="1"}')
r2=$(metric 'quiver_dataplane_requests_total{lcore="2"}')
echo "dpdk.sh: two lcores on two queues: $r1 and $r2 requests from 16 flows"
[ "$r1" -gt 0 ] && [ "$r2" -gt 0 ] || fail "one lcore served nothing: $r1 / $r2"
[ $((r1 + r2)) -ge 8000 ] || fail "$((r1 + r2)) requests served, 8000 sent"
qv_stop || fail "quiverd with two lcores did not exit 0 on SIGTERM"
echo "dpdk.sh: ok"
