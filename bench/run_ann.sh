#!/usr/bin/env bash
# run_ann.sh - the approximate indexes against their peers, side by side,
# with recall/QPS plots:
#
#   HNSW      vs hnswlib (Debian headers), 1 thread, one query per call,
#             siftsmall and mnist                      (bench/run_hnsw.sh)
#   IVF-Flat  vs faiss-cpu IndexIVFFlat, threads 1 and 2, batches of 100,
#             siftsmall (nlist 100) and gen-1m-128 (nlist 1024)
#   IVF-PQ    vs faiss-cpu IndexIVFPQFastScan (m 32, 4-bit), with and
#             without refine 10 (IndexRefineFlat), threads 1 and 2,
#             siftsmall (nlist 64) and gen-1m-128 (nlist 1024)
#
# Each pair runs on the same data, with the same nlist / m / nbits / M /
# efConstruction, the same threads and the same sweep, one after the other
# in this invocation.  Writes, under BUILD_DIR/benchresults/ann/, the JSON
# lines of every run, one PNG plot and one Markdown table per pair, and
# summary.md with the QPS of each side at recall 0.90 / 0.95 / the best
# recall both reach (bench/ann_summary.py); with --publish it also copies
# the plots and summary into docs/bench/ for the README.
#
# usage: bench/run_ann.sh [BUILD_DIR] [--publish]     (default build)
# Needs: a built tree, the venv of bench/run_flat.sh (BUILD_DIR/venv or
# QV_BENCH_VENV), the generated set BUILD_DIR/benchdata/gen-1m-128 (made by
# bench/run_flat.sh), g++ and libhnswlib-dev, gnuplot (scripts/setup.sh).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
build=build
publish=0
for arg in "$@"; do
    case $arg in
        --publish) publish=1 ;;
        -*) echo "usage: bench/run_ann.sh [BUILD_DIR] [--publish]" >&2; exit 2 ;;
        *) build=$arg ;;
    esac
done
case $build in /*) ;; *) build=$root/$build ;; esac
qb=$build/client/quiverbench
venv=${QV_BENCH_VENV:-$build/venv}
py=$venv/bin/python
shared=${QV_DATA_DIR:-$root/../shared/data}
gen=${QV_BENCH_DATA:-$build/benchdata}
out=$build/benchresults/ann
repeat=${QV_BENCH_REPEAT:-5}

[ -x "$qb" ] || { echo "run_ann.sh: build first ($qb missing)" >&2; exit 1; }
[ -x "$py" ] || { echo "run_ann.sh: no venv at $venv: run bench/run_flat.sh first" >&2; exit 1; }
[ -f "$gen/gen-1m-128/base.fvecs" ] || { echo "run_ann.sh: $gen/gen-1m-128 missing: run bench/run_flat.sh first" >&2; exit 1; }
rm -rf "$out"
mkdir -p "$out"
log() { printf '== %s\n' "$*" >&2; }
summary=$out/summary.md
: > "$summary"

pair_done() {   # tag title
    python3 "$here/plot_curves.py" "$out/$1" "$2" "$out/$1.quiver.jsonl:Quiver" \
        "$out/$1.peer.jsonl:$3" > /dev/null
    python3 "$here/ann_summary.py" "$2" "$out/$1.quiver.jsonl" "$out/$1.peer.jsonl" \
        | tee -a "$summary"
    echo >> "$summary"
}

# --- HNSW ---------------------------------------------------------------
log "HNSW vs hnswlib (bench/run_hnsw.sh)"
QV_DATA_DIR=$shared "$here/run_hnsw.sh" "$build" > "$out/hnsw-table.txt"
for set in siftsmall mnist; do
    cat "$build"/benchresults/hnsw/$set-quiver-*.jsonl > "$out/hnsw-$set.quiver.jsonl"
    cat "$build"/benchresults/hnsw/$set-hnswlib-*.jsonl > "$out/hnsw-$set.peer.jsonl"
    pair_done "hnsw-$set" "HNSW $set, 1 thread, M16 efC200" hnswlib
done

# --- IVF-Flat -----------------------------------------------------------
ivf_pair() {    # tag dir nlist threads sweep
    local tag=$1 dir=$2 nlist=$3 t=$4 sweep=$5
    log "$tag: quiverbench offline --index ivf --nlist $nlist --threads $t"
    "$qb" offline --data "$dir" --index ivf --nlist "$nlist" --k 10 --threads "$t" \
        --batch 100 --repeat "$repeat" --sweep "$sweep" --json > "$out/$tag.quiver.jsonl"
    log "$tag: compare_faiss_ivf.py --nlist $nlist --threads $t"
    "$py" "$here/compare_faiss_ivf.py" "$dir" --index ivf --nlist "$nlist" --k 10 \
        --threads "$t" --batch 100 --repeat "$repeat" --nprobe "$sweep" \
        > "$out/$tag.peer.jsonl"
    pair_done "$tag" "IVF-Flat $(basename "$dir"), nlist $nlist, $t thread(s)" \
        "FAISS IVFFlat"
}
ivf_pair ivf-siftsmall-t1 "$shared/siftsmall" 100 1 1,2,3,4,6,8,12,16,24,32
ivf_pair ivf-siftsmall-t2 "$shared/siftsmall" 100 2 1,2,3,4,6,8,12,16,24,32
ivf_pair ivf-1m-t1 "$gen/gen-1m-128" 1024 1 1,2,3,4,6,8,16
ivf_pair ivf-1m-t2 "$gen/gen-1m-128" 1024 2 1,2,3,4,6,8,16

# --- IVF-PQ -------------------------------------------------------------
pq_pair() {     # tag dir nlist threads refine sweep
    local tag=$1 dir=$2 nlist=$3 t=$4 refine=$5 sweep=$6
    log "$tag: quiverbench offline --index ivfpq --nlist $nlist --m 32 --nbits 4 --refine $refine --threads $t"
    "$qb" offline --data "$dir" --index ivfpq --nlist "$nlist" --m 32 --nbits 4 \
        --refine "$refine" --k 10 --threads "$t" --batch 100 --repeat "$repeat" \
        --sweep "$sweep" --json > "$out/$tag.quiver.jsonl"
    log "$tag: compare_faiss_ivfpq.py"
    "$py" "$here/compare_faiss_ivfpq.py" --data "$dir" --nlist "$nlist" --m 32 --nbits 4 \
        --refine "$refine" --k 10 --threads "$t" --batch 100 --repeat "$repeat" \
        --sweep "$sweep" > "$out/$tag.peer.jsonl"
    pair_done "$tag" "IVF-PQ $(basename "$dir"), nlist $nlist, m32x4, refine $refine, $t thread(s)" \
        "FAISS IVFPQFastScan"
}
for t in 1 2; do
    for refine in 0 10; do
        pq_pair pq-siftsmall-r$refine-t$t "$shared/siftsmall" 64 "$t" "$refine" 1,2,4,8,16,32
        pq_pair pq-1m-r$refine-t$t "$gen/gen-1m-128" 1024 "$t" "$refine" 1,2,4,8,16,32
    done
done

if [ "$publish" = 1 ]; then
    mkdir -p "$root/docs/bench"
    cp "$out"/*.png "$out/summary.md" "$root/docs/bench/"
    cp "$out/hnsw-table.txt" "$root/docs/bench/"
    log "copied plots and summary to docs/bench/"
fi
log "done: $out/summary.md"
