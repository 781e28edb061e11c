#!/bin/bash
# run_durability.sh - the write-ahead log's figures (the durability issue):
#
# 1. UPSERT throughput and acknowledgement latency for each [storage] sync
#    policy (always / interval / never) and without a data_dir (in memory),
#    with quiverbench upsert: 4 clients x batches of 64 rows of dim 128,
#    and 1 client x single rows (the latency of one small write).
# 2. Restart time of a 1M x 128 FLAT collection recovered from its WAL
#    alone, then from a snapshot (quiverctl snapshot), next to rebuilding
#    it from the fvecs file (an empty quiverd + quiverctl load).
# The data directory lives under BUILD_DIR (the build's disk: fdatasync
# means something there, unlike on a tmpfs /tmp).
#
# usage: bench/run_durability.sh [BUILD_DIR] [SECONDS_PER_ROW] [N]
#        (defaults build, 5, 1m)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
secs=${2:-5}
n=${3:-1m}
quiverd=$build/host/server/quiverd
bench=$build/client/quiverbench
ctl=$build/client/quiverctl
work=$(realpath "$build")/durability-bench
. scripts/quiverd-lib.sh
rm -rf "$work"
mkdir -p "$work"
cleanup() { qv_kill; rm -rf "$work"; }
trap cleanup EXIT
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'); data on $(df --output=source,fstype "$work" | tail -1)"

start() {   # start SYNC|none
    local dd=none
    [ "$1" != none ] && dd=$work/data
    cat > "$work/quiver.conf" <<CONF
[server]
udp_port = 0
tcp_port = 0
admin_port = 0
[storage]
data_dir = $dd
sync = $( [ "$1" = none ] && echo always || echo "$1" )
CONF
    qv_start "$quiverd" "$work/quiver.conf" "$work" > /dev/null
}

echo "== 1. UPSERT throughput and acknowledgement latency, per sync policy =="
for p in always interval never none; do
    rm -rf "$work/data"
    start "$p"
    srv="127.0.0.1:$QV_UDP:$QV_TCP"
    a=$("$bench" upsert --server "$srv" --clients 4 --batch 64 --dim 128 --seconds "$secs" --json)
    b=$("$bench" upsert --server "$srv" --clients 1 --batch 1 --dim 128 --seconds "$secs" --json)
    qv_stop > /dev/null
    label=$p; [ "$p" = none ] && label="in memory"
    python3 - "$label" "$a" "$b" <<'PY'
import json, sys
a, b = json.loads(sys.argv[2]), json.loads(sys.argv[3])
print("  %-10s 4 x 64 rows: %9.0f vectors/s  ack p50 %7.1f us p99 %7.1f us | 1 x 1 row: %7.0f upserts/s  ack p50 %7.1f us p99 %7.1f us"
      % (sys.argv[1], a["vectors_per_s"], a["p50_us"], a["p99_us"], b["upserts_per_s"], b["p50_us"], b["p99_us"]))
PY
done

echo "== 2. restart of a $n x 128 FLAT collection: WAL replay vs rebuilding from fvecs =="
"$bench" gen --n "$n" --dim 128 --nq 10 --clusters 100 --seed 7 --out "$work/gen" > /dev/null 2>&1
rm -rf "$work/data"
start never
t0=$(date +%s.%N)
"$ctl" --server "127.0.0.1:$QV_UDP:$QV_TCP" create big --dim 128 > /dev/null
"$ctl" --server "127.0.0.1:$QV_UDP:$QV_TCP" load big "$work/gen/base.fvecs" 2> /dev/null | tail -1
t1=$(date +%s.%N)
qv_stop > /dev/null
wal=$(du -sb "$work/data" | cut -f1)
t2=$(date +%s.%N)
start never
t3=$(date +%s.%N)
rows=$("$ctl" --server "127.0.0.1:$QV_UDP:$QV_TCP" --json describe big | python3 -c 'import json,sys; print(json.load(sys.stdin)["rows"])')
t6=$(date +%s.%N)
"$ctl" --admin "127.0.0.1:$QV_ADMIN" snapshot big > /dev/null
t7=$(date +%s.%N)
qv_stop > /dev/null
snap=$(du -sb "$work/data" | cut -f1)
t8=$(date +%s.%N)
start never
t9=$(date +%s.%N)
rows2=$("$ctl" --server "127.0.0.1:$QV_UDP:$QV_TCP" --json describe big | python3 -c 'import json,sys; print(json.load(sys.stdin)["rows"])')
qv_stop > /dev/null
rm -rf "$work/data"
start none
t4=$(date +%s.%N)
"$ctl" --server "127.0.0.1:$QV_UDP:$QV_TCP" create big --dim 128 > /dev/null
"$ctl" --server "127.0.0.1:$QV_UDP:$QV_TCP" load big "$work/gen/base.fvecs" 2> /dev/null > /dev/null
t5=$(date +%s.%N)
qv_stop > /dev/null
python3 - "$t0" "$t1" "$t2" "$t3" "$t4" "$t5" "$wal" "$rows" "$t6" "$t7" "$t8" "$t9" "$snap" "$rows2" <<'PY'
import sys
a = sys.argv
t0, t1, t2, t3, t4, t5 = map(float, a[1:7])
t6, t7, t8, t9 = map(float, a[9:13])
print("  load with the WAL (sync never): %.2f s; WAL %.0f MiB" % (t1 - t0, int(a[7]) / 2**20))
print("  restart from the WAL alone (quiverd start to serving, %s rows back): %.2f s" % (a[8], t3 - t2))
print("  snapshot (quiverctl snapshot): %.2f s; data_dir then %.0f MiB (the WAL behind it removed)" % (t7 - t6, int(a[13]) / 2**20))
print("  restart from the snapshot (mapped, rows loaded, nothing to replay; %s rows back): %.2f s" % (a[14], t9 - t8))
print("  rebuild instead (empty quiverd, quiverctl load of the fvecs file): %.2f s" % (t5 - t4))
PY
