#!/bin/bash
# run_batcher.sh - the dynamic batcher under open-loop load: IVF-Flat on
# siftsmall (and on a generated 200k x 128 set unless QV_BENCH_SMALL=1),
# Poisson arrivals at 20%, 50%, 80%, 100% and 150% of the measured
# batch-1 capacity (closed loop, --batch 1), batching on and off; one
# table of rate, batching, achieved QPS, p50, p99 and refused (busy).
# Latency = completion - intended arrival (no coordinated omission).
#
# usage: bench/run_batcher.sh [BUILD_DIR] [CONF]
# Environment: QV_DATA_DIR (../shared/data), QV_BENCH_THREADS (1: the
#   dispatcher searches alone; the generator takes another CPU),
#   QV_BENCH_DURATION (1 s per point), QV_BENCH_BUDGET_US (2000),
#   QV_BENCH_SMALL (0), QV_BENCH_ENGINE (auto: the router, whose
#   calibrated parameters feed the service's cost model; cpu: the index's
#   own path and generic parameters), QV_BENCH_OUT
#   (BUILD_DIR/benchresults/batcher).
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
build=${1:-build}
case $build in /*) ;; *) build=$root/$build ;; esac
conf=${2:-}
qb=$build/client/quiverbench
data=${QV_DATA_DIR:-$root/../shared/data}
t=${QV_BENCH_THREADS:-1}
dur=${QV_BENCH_DURATION:-1}
budget=${QV_BENCH_BUDGET_US:-2000}
engine=${QV_BENCH_ENGINE:-auto}
out=${QV_BENCH_OUT:-$build/benchresults/batcher}
mkdir -p "$out"
confarg=()
[ -n "$conf" ] && confarg=(--conf "$conf")
sets=("$data/siftsmall")
if [ "${QV_BENCH_SMALL:-0}" != 1 ]; then
    gen=$out/gen-200k-128-q4096
    [ -f "$gen/groundtruth.ivecs" ] ||
        "$qb" gen --n 200000 --dim 128 --nq 4096 --clusters 1000 --seed 20240611 \
            --out "$gen" >&2
    sets+=("$gen")
fi
: > "$out/batcher.jsonl"
for set in "${sets[@]}"; do
    name=$(basename "$set")
    ixf=$out/$name-ivf.qvx
    common=(--data "$set" --index ivf --nlist 256 --nprobe 16 --k 10 --threads "$t"
            --engine "$engine" "${confarg[@]}")
    rm -f "$ixf"
    cap=$("$qb" offline "${common[@]}" --save "$ixf" --batch 1 --repeat 3 --json \
          2>/dev/null | python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())["qps"])')
    echo "$name: batch-1 capacity $cap qps (closed loop, $t thread(s))" >&2
    for pct in 20 50 80 100 150; do
        rate=$(python3 -c "print(round($cap * $pct / 100.0, 1))")
        for bat in off on; do
            "$qb" offline "${common[@]}" --load "$ixf" --rate "$rate" --duration "$dur" \
                --batching "$bat" --budget-us "$budget" --json 2>/dev/null |
            python3 -c '
import json, sys
for line in sys.stdin:
    r = json.loads(line)
    r["set"], r["pct"], r["cap1"] = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    print(json.dumps(r))' "$name" "$pct" "$cap" >> "$out/batcher.jsonl"
        done
    done
done
python3 - "$out/batcher.jsonl" "$budget" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("open loop, IVF-Flat nlist 256 nprobe 16, budget %s us; latency from intended arrival"
      % sys.argv[2])
print("%-22s %5s %10s %8s %10s %10s %10s %10s %8s %7s" % (
    "set", "load", "rate", "batching", "qps", "p50_us", "p99_us", "p999_us", "busy", "batch"))
for r in rows:
    print("%-22s %4d%% %10.0f %8s %10.0f %10.1f %10.1f %10.1f %8d %7.1f" % (
        r["set"], r["pct"], r["offered_qps"], "on" if r["batching"] else "off", r["qps"],
        r["p50_us"], r["p99_us"], r["p999_us"], r["busy"], r["mean_batch"]))
PY
