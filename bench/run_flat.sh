#!/usr/bin/env bash
# run_flat.sh - the flat-index benchmark: Quiver's exact scan against FAISS's
# IndexFlatL2 on the same generated data, threads and batching, next to this
# machine's FMA and DRAM ceilings.  See bench/README.md for how to read it.
#
# usage: bench/run_flat.sh [BUILD_DIR]        (default: build)
#
# BUILD_DIR must hold a built tree (meson setup BUILD_DIR && ninja -C
# BUILD_DIR).  Everything else is made on first use and reused after:
#   BUILD_DIR/venv        Python venv with faiss-cpu and numpy from PyPI
#                         (override: QV_BENCH_VENV=/path/to/venv)
#   BUILD_DIR/benchdata   generated sets gen-200k-128, gen-1m-128
#                         (override: QV_BENCH_DATA=/path)
#   BUILD_DIR/benchresults  the raw JSON of every run of the last invocation
# Environment: QV_BENCH_THREADS (default 2), QV_BENCH_REPEAT (default 3).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
build=${1:-build}
case $build in /*) ;; *) build=$root/$build ;; esac
if [ $# -gt 1 ]; then
    echo "usage: bench/run_flat.sh [BUILD_DIR]" >&2
    exit 2
fi

qb=$build/client/quiverbench
venv=${QV_BENCH_VENV:-$build/venv}
data=${QV_BENCH_DATA:-$build/benchdata}
results=$build/benchresults
threads=${QV_BENCH_THREADS:-2}
repeat=${QV_BENCH_REPEAT:-3}
k=10

if [ ! -x "$qb" ]; then
    echo "run_flat.sh: $qb not found: build first (meson setup $build && ninja -C $build)" >&2
    exit 1
fi

log() { printf '== %s\n' "$*" >&2; }

# (a) Python with faiss-cpu and numpy.
if ! "$venv/bin/python" -c 'import faiss, numpy' 2>/dev/null; then
    log "creating $venv (faiss-cpu, numpy from PyPI)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
    "$venv/bin/pip" install --quiet faiss-cpu numpy
fi
py=$venv/bin/python

# (b) Data sets: deterministic, so a directory that holds a complete set
# (gen.json is written last) is reused as is.
gen_set() {   # name n nq
    local dir=$data/$1
    if [ -f "$dir/gen.json" ] && [ -f "$dir/groundtruth.ivecs" ]; then
        log "reusing $dir"
        return
    fi
    log "generating $dir ($2 x 128, $3 queries)"
    "$qb" gen --n "$2" --dim 128 --nq "$3" --clusters 1000 --seed 20240611 \
        --gt-k 100 --gt-check 20 --out "$dir"
}
gen_set gen-200k-128 200000 1000
gen_set gen-1m-128 1000000 100
# 1M x 128 (512 MB) is what the milestone names, but this host's caches are
# shared and large (FIELD-NOTES: hundreds of MB of L3), so part of it can
# stay cache-resident between passes; 4M x 128 (2 GiB, the size of the
# peak's read buffer) is larger than any cache here.
gen_set gen-4m-128 4000000 50

# (c) Runs.  Each writes one JSON object to $results.
rm -rf "$results"
mkdir -p "$results"

# The host is shared and its ceilings drift between minutes, so the peak is
# measured before and after the runs and the table judges against the
# higher of the two (the conservative choice).
log "quiverbench peak --threads $threads (before the runs)"
"$qb" peak --threads "$threads" --json > "$results/peak-before.json"
cat "$results/peak-before.json"

run_pair() {   # tag set batch
    local tag=$1 dir=$data/$2 batch=$3
    log "$tag: quiverbench offline --data $dir --batch $batch"
    "$qb" offline --data "$dir" --index flat --k $k --threads "$threads" \
        --batch "$batch" --repeat "$repeat" --json > "$results/$tag.quiver.json"
    cat "$results/$tag.quiver.json"
    log "$tag: compare_faiss.py --data $dir --batch $batch"
    "$py" "$here/compare_faiss.py" --data "$dir" --k $k --threads "$threads" \
        --batch "$batch" --repeat "$repeat" > "$results/$tag.faiss.json"
    cat "$results/$tag.faiss.json"
}
run_pair 200k-batch gen-200k-128 1000
run_pair 200k-single gen-200k-128 1
run_pair 1m-batch gen-1m-128 100
run_pair 1m-single gen-1m-128 1
run_pair 4m-single gen-4m-128 1

log "quiverbench peak --threads $threads (after the runs)"
"$qb" peak --threads "$threads" --json > "$results/peak-after.json"
cat "$results/peak-after.json"

# (d) The table.
"$py" - "$results" <<'EOF'
import json, os, sys

res = sys.argv[1]
load = lambda name: json.load(open(os.path.join(res, name)))
pb, pa = load("peak-before.json"), load("peak-after.json")
peak = {"threads": pb["threads"],
        "fma_gflops": max(pb["fma_gflops"], pa["fma_gflops"]),
        "dram_gbps": max(pb["dram_gbps"], pa["dram_gbps"])}
rows = [("200k-batch", "200k x 128, batch 1000"),
        ("200k-single", "200k x 128, single query"),
        ("1m-batch", "1M x 128, batch 100"),
        ("1m-single", "1M x 128, single query"),
        ("4m-single", "4M x 128, single query")]

print()
print("peak (%d threads): fp32 FMA %.1f GFLOP/s, DRAM read %.1f GB/s "
      "(higher of before %.1f / %.1f and after %.1f / %.1f)" %
      (peak["threads"], peak["fma_gflops"], peak["dram_gbps"],
       pb["fma_gflops"], pb["dram_gbps"], pa["fma_gflops"], pa["dram_gbps"]))
fa = load("200k-batch.faiss.json")
print("Quiver simd %s; FAISS %s simd %s, OPENBLAS_CORETYPE %s; k=%d, best of %d passes" %
      (load("200k-batch.quiver.json")["simd"], fa.get("faiss_version", "?"), fa["simd"],
       fa.get("openblas_coretype", "?"), fa["k"], fa["repeat"]))
print()
hdr = ("run", "QPS quiver", "QPS faiss", "ratio", "p50us quiver", "p50us faiss",
       "ratio", "GFLOP/s %pk q", "GFLOP/s %pk f", "GB/s %dram q", "GB/s %dram f",
       "recall q", "recall f")
fmt = "%-26s %11s %11s %6s %13s %12s %6s %14s %14s %13s %13s %8s %8s"
print(fmt % hdr)
for tag, title in rows:
    q, f = load(tag + ".quiver.json"), load(tag + ".faiss.json")
    def gflops(r):          # 2 n dim flops per query, at the measured QPS
        return 2.0 * r["n"] * r["dim"] * r["qps"] / 1e9
    def gbps(r):            # the base read once per search call
        return r["n"] * r["dim"] * 4 / (r["p50_us"] * 1e-6) / 1e9
    print(fmt % (
        title,
        "%.0f" % q["qps"], "%.0f" % f["qps"], "%.2f" % (q["qps"] / f["qps"]),
        "%.0f" % q["p50_us"], "%.0f" % f["p50_us"], "%.2f" % (q["p50_us"] / f["p50_us"]),
        "%.0f %3.0f%%" % (gflops(q), 100 * gflops(q) / peak["fma_gflops"]),
        "%.0f %3.0f%%" % (gflops(f), 100 * gflops(f) / peak["fma_gflops"]),
        "%.1f %3.0f%%" % (gbps(q), 100 * gbps(q) / peak["dram_gbps"]),
        "%.1f %3.0f%%" % (gbps(f), 100 * gbps(f) / peak["dram_gbps"]),
        "%.4f" % q["recall_at_k"], "%.4f" % f["recall_at_k"]))
print()
print("QPS ratio = Quiver / FAISS (>1: Quiver faster); p50 ratio = Quiver / FAISS")
print("(<1: Quiver faster).  GFLOP/s = 2*n*dim*QPS; GB/s = n*dim*4 / p50 latency")
print("(one pass over the base per search call).  FAISS searches a single query on")
print("one core; Quiver splits it over %d threads." % peak["threads"])
EOF
