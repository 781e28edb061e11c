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
pid=
stop() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        wait "$pid" || true
    fi
    rm -rf "$tmp"
}
trap stop EXIT
./build/host/server/quiverd -c conf/quiver.conf --ready-file "$tmp/ready" &
pid=$!
for _ in $(seq 1 300); do
    [ -f "$tmp/ready" ] && break
    kill -0 "$pid" 2>/dev/null || { echo "demo: quiverd did not start" >&2; exit 1; }
    sleep 0.1
done
[ -f "$tmp/ready" ] || { echo "demo: quiverd not ready after 30 s" >&2; exit 1; }
echo "demo: quiverd serving ($(cat "$tmp/ready"))"
./build/client/quiverbench net --conf conf/quiver.conf --data "$DATA/siftsmall" \
    --index flat --k 10 --rate 2000 --duration 5
kill -TERM "$pid"
wait "$pid"
echo "demo: quiverd drained and exited $?"
pid=
