#!/bin/bash
# The main job on the embedded default: install what is missing, build,
# start quiverd with conf/quiver.conf (one node; the CPU engine, POCL and
# the simulated FPGA card behind the router; kernel sockets), load
# siftsmall into it over TCP and search it over UDP with quiverbench net
# (open loop, 2000 queries/s for 5 s), print recall@10 and latency, and
# stop the daemon (SIGTERM: it drains and exits 0).
# Usage: scripts/demo.sh [DATA_DIR]   (needs root for apt-get)
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
DATA=${1:-${QV_DATA_DIR:-../shared/data}}
[ -f build/build.ninja ] || meson setup build --buildtype=release
ninja -C build
tmp=$(mktemp -d)
. scripts/quiverd-lib.sh
trap 'qv_kill; rm -rf "$tmp"' EXIT
qv_start ./build/host/server/quiverd conf/quiver.conf "$tmp" || exit 1
echo "demo: quiverd serving (udp $QV_UDP, tcp $QV_TCP, admin http://127.0.0.1:$QV_ADMIN)"
./build/client/quiverbench net --conf conf/quiver.conf --data "$DATA/siftsmall" \
    --index flat --k 10 --rate 2000 --duration 5
qv_stop
echo "demo: quiverd drained and exited 0"
