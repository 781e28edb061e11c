#!/bin/bash
# run_fpga.sh - the FPGA engine on the simulated card (firmware-sim/), the
# figures of its issue, in one run:
#   1. quiverbench fpga: the host-side cost of a submission (NOP round
#      trips, doorbell to completion seen) and a 1M x 128 flat scan: the
#      card's modelled device time at the default card parameters (an
#      Alveo U55C, docs/REGISTERS.md) beside the CPU engine's measured time;
#   2. list-scan throughput through the simulator: quiverbench offline
#      --engine fpga next to --engine cpu, same binary, data and threads:
#      flat on siftsmall and a generated 200k x 128 set, IVF-Flat nprobe
#      sweep on the 200k set.  The card's scans run on its OpenCL engine
#      (POCL on the same cores) unless CONF says sim_opencl = false, so
#      these rates measure the simulator, not a card: the card's own time
#      is the modelled device time (kernel% = modelled time / wall).
#
# usage: bench/run_fpga.sh [BUILD_DIR] [CONF]
# Environment: QV_DATA_DIR (../shared/data), QV_BENCH_THREADS (all CPUs),
#   QV_BENCH_OUT (BUILD_DIR/benchresults/fpga).
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
build=${1:-build}
case $build in /*) ;; *) build=$root/$build ;; esac
conf=${2:-}
qb=$build/client/quiverbench
data=${QV_DATA_DIR:-$root/../shared/data}
t=${QV_BENCH_THREADS:-$(nproc)}
out=${QV_BENCH_OUT:-$build/benchresults/fpga}
mkdir -p "$out"
confarg=()
[ -n "$conf" ] && confarg=(--conf "$conf")

echo "== quiverbench fpga: submission cost, 1M x 128 flat scan (modelled vs measured) =="
"$qb" fpga --n 1000000 --dim 128 --nq 1 --threads "$t" "${confarg[@]}" 2>/dev/null |
    tee "$out/fpga.txt"

gen=$out/gen-200k-128
[ -f "$gen/groundtruth.ivecs" ] ||
    "$qb" gen --n 200000 --dim 128 --nq 1000 --clusters 1000 --seed 20240611 --out "$gen" >&2
: > "$out/offline.jsonl"
echo
echo "== list scans through the simulator (quiverbench offline) =="
printf '%-12s %-5s %6s %7s %8s %12s %10s %10s %8s\n' data index batch nprobe engine QPS p50_us \
    recall kernel%
show() {
    python3 -c '
import json, sys
for line in sys.stdin:
    r = json.loads(line)
    sh = "%7.1f%%" % (100 * r["device_share"]) if "device_share" in r else "%8s" % "-"
    print("%-12s %-5s %6d %7s %8s %12.0f %10.1f %10.4f %s" % (sys.argv[1], r["index"],
          r["batch"], r.get("nprobe", "-"), r["engine"], r["qps"], r["p50_us"],
          r["recall_at_k"], sh))' "$1"
}
for set in "$data/siftsmall" "$gen"; do
    for b in 1 256; do
        for e in cpu fpga; do
            "$qb" offline --data "$set" --index flat --k 10 --threads "$t" --batch "$b" \
                --engine "$e" "${confarg[@]}" --repeat 3 --json 2>/dev/null |
                tee -a "$out/offline.jsonl" | show "$(basename "$set")"
        done
    done
done
for e in cpu fpga; do
    "$qb" offline --data "$gen" --index ivf --nlist 1024 --k 10 --threads "$t" --batch 256 \
        --engine "$e" "${confarg[@]}" --repeat 3 --sweep 4,16 --json 2>/dev/null |
        tee -a "$out/offline.jsonl" | show "$(basename "$gen")"
done
