#!/bin/bash
# run_opencl.sh - the OpenCL engine against the CPU path, same binary,
# same data, same run: exact (flat) search on siftsmall (100 queries) and
# on a generated 200k x 128 set (4096 queries) at batch sizes 1, 16, 256,
# 4096, and an IVF-Flat nprobe sweep on the 200k set, each with --engine
# cpu and --engine opencl.  OpenCL rows also give the share of the pass's
# wall time the engine reported as kernels and as transfers.
#
# usage: bench/run_opencl.sh [BUILD_DIR] [CONF]
#   CONF: a configuration file whose [opencl] keys pick the device
#         (default: the built-in defaults, i.e. the first device found)
# Environment: QV_DATA_DIR (../shared/data), QV_BENCH_THREADS (all CPUs),
#   QV_BENCH_OUT (BUILD_DIR/benchresults/opencl).  To use a vendor ICD that
#   is installed but not registered, point OCL_ICD_VENDORS at a folder
#   holding a .icd file that names the vendor library (for NVIDIA:
#   "libnvidia-opencl.so.1").
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
build=${1:-build}
case $build in /*) ;; *) build=$root/$build ;; esac
conf=${2:-}
qb=$build/client/quiverbench
data=${QV_DATA_DIR:-$root/../shared/data}
t=${QV_BENCH_THREADS:-$(nproc)}
out=${QV_BENCH_OUT:-$build/benchresults/opencl}
mkdir -p "$out"
: > "$out/flat.jsonl"
: > "$out/ivf.jsonl"
confarg=()
[ -n "$conf" ] && confarg=(--conf "$conf")
gen=$out/gen-200k-128-q4096
[ -f "$gen/groundtruth.ivecs" ] ||
    "$qb" gen --n 200000 --dim 128 --nq 4096 --clusters 1000 --seed 20240611 --out "$gen" >&2
printf '%-20s %6s %8s %12s %12s %10s %8s %6s\n' data batch engine QPS p50_us recall kernel% xfer%
for set in "$data/siftsmall" "$gen"; do
    for b in 1 16 256 4096; do
        for e in cpu opencl; do
            "$qb" offline --data "$set" --index flat --k 10 --threads "$t" --batch "$b" \
                --engine "$e" "${confarg[@]}" --repeat 3 --json 2>/dev/null \
                | tee -a "$out/flat.jsonl" | python3 -c '
import json, sys
for line in sys.stdin:
    r = json.loads(line)
    sh = ("%7.1f%% %5.1f%%" % (100 * r["device_share"], 100 * r["transfer_share"])
          if "device_share" in r else "%8s %6s" % ("-", "-"))
    print("%-20s %6d %8s %12.0f %12.1f %10.4f %s" % (sys.argv[1], r["batch"], sys.argv[2],
          r["qps"], r["p50_us"], r["recall_at_k"], sh))' "$(basename "$set")" "$e"
        done
    done
done
for e in cpu opencl; do
    "$qb" offline --data "$gen" --index ivf --nlist 1024 --k 10 --threads "$t" --batch 4096 \
        --engine "$e" "${confarg[@]}" --repeat 3 --sweep 1,4,16,64 --json 2>/dev/null \
        | tee -a "$out/ivf.jsonl" | python3 -c '
import json, sys
for line in sys.stdin:
    r = json.loads(line)
    sh = (" kernel %.1f%% xfer %.1f%% units %d" % (100 * r["device_share"],
          100 * r["transfer_share"], r["units"]) if "device_share" in r else "")
    print("ivf nprobe %-4d %8s %12.0f QPS  recall %.4f%s" % (r["nprobe"], sys.argv[1], r["qps"],
          r["recall_at_k"], sh))' "$e"
done
