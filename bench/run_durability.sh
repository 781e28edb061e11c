#!/bin/bash
# run_durability.sh - the write-ahead log's figures (the durability issue):
#
# 1. UPSERT throughput and acknowledgement latency for each [storage] sync
#    policy (always / interval / never) and without a data_dir (in memory),
#    with quiverbench upsert: 4 clients x batches of 64 rows of dim 128,
#    and 1 client x single rows (the latency of one small write).
# 2. Restart time of a 1M x 128 collection per index type (INDEXES,
#    default "flat ivf hnsw"): from its snapshot (the segment and index
#    files mapped back, the WAL after it replayed) next to rebuilding it
#    from the fvecs file (an empty quiverd + quiverctl load + the index
#    builds); for FLAT also from the WAL alone; and from the snapshot with
#    100k more rows in the WAL after it.  Times run until DESCRIBE shows no
#    build pending.
# The data directory lives under BUILD_DIR (the build's disk: fdatasync
# means something there, unlike on a tmpfs /tmp).
#
# usage: bench/run_durability.sh [BUILD_DIR] [SECONDS_PER_ROW] [N]
#        (defaults build, 5, 1m); POLICIES= (empty) skips part 1,
#        INDEXES="flat ivf" picks part 2's index types (empty: none)
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
for p in ${POLICIES-always interval never none}; do
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

# Seconds until collection big answers DESCRIBE with no build pending.
wait_built() {
    python3 - "$ctl" "127.0.0.1:$QV_UDP:$QV_TCP" <<'PY'
import json, subprocess, sys, time
while True:
    out = subprocess.run([sys.argv[1], "--server", sys.argv[2], "--json", "stats", "big"],
                         capture_output=True, text=True)
    if out.returncode == 0:
        d = json.loads(out.stdout)
        if d["pending_builds"] == 0 and d["growing_rows"] < d["rows"]:
            print(d["rows"], d["segments"])
            break
    time.sleep(0.05)
PY
}

secs_since() { python3 -c "import sys,time; print('%.2f' % (time.time() - float(sys.argv[1])))" "$1"; }

srv() { echo "127.0.0.1:$QV_UDP:$QV_TCP"; }

echo "== 2. restart of a $n x 128 collection: snapshot (segment and index files mapped) + WAL vs rebuilding from fvecs =="
"$bench" gen --n "$n" --dim 128 --nq 10 --clusters 100 --seed 7 --out "$work/gen" > /dev/null 2>&1
"$bench" gen --n 100k --dim 128 --nq 10 --clusters 100 --seed 8 --out "$work/gen2" > /dev/null 2>&1
# times until the collection is back with every index built (DESCRIBE:
# no build pending): the point at which it searches at full speed
for ix in ${INDEXES-flat ivf hnsw}; do
    rm -rf "$work/data"
    start never
    t=$(date +%s.%N)
    "$ctl" --server "$(srv)" create big --dim 128 --index "$ix" > /dev/null
    "$ctl" --server "$(srv)" load big "$work/gen/base.fvecs" > /dev/null 2>&1
    r=$(wait_built)
    load=$(secs_since "$t")
    if [ "$ix" = flat ]; then           # the WAL alone (no snapshot yet)
        qv_stop > /dev/null
        t=$(date +%s.%N)
        start never
        r=$(wait_built)
        walrs=$(secs_since "$t")
        walmb=$(du -sm "$work/data" | cut -f1)
        echo "  $ix: restart from the WAL alone ($walmb MiB), until built: $walrs s ($r rows, segments)"
    fi
    t=$(date +%s.%N)
    "$ctl" --admin "127.0.0.1:$QV_ADMIN" snapshot big > /dev/null
    snap=$(secs_since "$t")
    qv_stop > /dev/null
    mb=$(du -sm "$work/data" | cut -f1)
    t=$(date +%s.%N)
    start never
    r2=$(wait_built)
    rs=$(secs_since "$t")
    st=$("$ctl" --server "$(srv)" status big | awk '$1 == "big" { print $9 " files, " $10 " mapped" }')
    qv_stop > /dev/null
    cold=n/a
    if sync && echo 3 > /proc/sys/vm/drop_caches 2> /dev/null; then
        t=$(date +%s.%N)
        start never
        wait_built > /dev/null
        cold=$(secs_since "$t")
        qv_stop > /dev/null
    fi
    # 100k more rows after the snapshot: the restart maps the snapshot,
    # replays them from the WAL and builds the segment they seal
    start never
    "$ctl" --server "$(srv)" load big "$work/gen2/base.fvecs" --first-id 2000000 > /dev/null 2>&1
    qv_stop > /dev/null
    t=$(date +%s.%N)
    start never
    r3=$(wait_built)
    plus=$(secs_since "$t")
    qv_stop > /dev/null
    rm -rf "$work/data"
    start none
    t=$(date +%s.%N)
    "$ctl" --server "$(srv)" create big --dim 128 --index "$ix" > /dev/null
    "$ctl" --server "$(srv)" load big "$work/gen/base.fvecs" > /dev/null 2>&1
    wait_built > /dev/null
    rebuild=$(secs_since "$t")
    qv_stop > /dev/null
    echo "  $ix: load + build with the WAL (sync never) $load s; quiverctl snapshot $snap s (data_dir $mb MiB)"
    echo "  $ix: restart from the snapshot until built: $rs s ($r2 rows, segments; $st); with the page cache dropped first $cold s; with 100k rows in the WAL after the snapshot $plus s ($r3 rows, segments) | rebuild from fvecs (empty quiverd, load, builds; file in the page cache) $rebuild s"
done
