#!/usr/bin/env bash
# run_hnsw.sh - the HNSW benchmark: Quiver's graph index against hnswlib
# (Debian's libhnswlib-dev headers, g++ -O3 -march=native) on the same
# data sets, the same parameters (M = 16, efConstruction = 200, k = 10),
# the same ef sweep, one thread each, one query per call, pinned to the
# same CPU.  Prints a side-by-side recall/QPS table per data set, then
# "QPS at recall@10 >= 0.95" for each side and the build times.
#
# usage: bench/run_hnsw.sh [BUILD_DIR]        (default: build)
#
# BUILD_DIR must hold a built tree (meson setup BUILD_DIR && ninja -C
# BUILD_DIR).  The peer is compiled into BUILD_DIR/bench/hnswlib_bench;
# raw JSON lines go to BUILD_DIR/benchresults/hnsw/.
# Environment:
#   QV_DATA_DIR      data sets (default: ../shared/data beside the repo)
#   QV_BENCH_SETS    data sets to run (default: "siftsmall mnist")
#   QV_BENCH_EFS     ef sweep (default: 10,12,16,20,24,32,40,48,64,100,128,200)
#   QV_BENCH_REPEAT  passes over the queries per ef, best kept (default 5)
#   QV_BENCH_ROUNDS  alternating runs of both sides, best kept per ef
#                    (default 2: the host is shared, timings drift)
#   QV_BENCH_CPU     CPU both sides are pinned to (default: 0)
#
# How the two are matched: hnswlib_bench adds the points in file order
# (label = row) and calls searchKnn once per query; `quiverbench offline
# --index hnsw --threads 1 --batch 1` builds over the same rows and calls
# qv_hnsw_search once per query.  Both report QPS as queries / wall time of
# the best pass, p50 of that pass, and recall@10 as set overlap with
# groundtruth.ivecs.  "QPS at recall >= 0.95" is linear interpolation of
# QPS in recall between the two sweep points around 0.95 (and, beside it,
# the QPS of the first ef that reaches 0.95).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
build=${1:-build}
case $build in /*) ;; *) build=$root/$build ;; esac
if [ $# -gt 1 ]; then
    echo "usage: bench/run_hnsw.sh [BUILD_DIR]" >&2
    exit 2
fi

qb=$build/client/quiverbench
data=${QV_DATA_DIR:-$root/../shared/data}
sets=${QV_BENCH_SETS:-siftsmall mnist}
efs=${QV_BENCH_EFS:-10,12,16,20,24,32,40,48,64,100,128,200}
repeat=${QV_BENCH_REPEAT:-5}
rounds=${QV_BENCH_ROUNDS:-2}
cpu=${QV_BENCH_CPU:-0}
results=$build/benchresults/hnsw
peer=$build/bench/hnswlib_bench

log() { printf '== %s\n' "$*" >&2; }

if [ ! -x "$qb" ]; then
    echo "run_hnsw.sh: $qb not found: build first (meson setup $build && ninja -C $build)" >&2
    exit 1
fi
if [ ! -f /usr/include/hnswlib/hnswlib.h ]; then
    echo "run_hnsw.sh: hnswlib headers not found: apt-get install -y libhnswlib-dev" >&2
    exit 1
fi
pin=()
if command -v taskset >/dev/null 2>&1; then
    pin=(taskset -c "$cpu")
fi

mkdir -p "$(dirname "$peer")"
if [ ! -x "$peer" ] || [ "$here/hnswlib_bench.cpp" -nt "$peer" ]; then
    log "compiling $peer (g++ -O3 -march=native)"
    g++ -O3 -march=native -std=c++17 -o "$peer" "$here/hnswlib_bench.cpp"
fi

rm -rf "$results"
mkdir -p "$results"
for set in $sets; do
    dir=$data/$set
    if [ ! -f "$dir/base.fvecs" ]; then
        echo "run_hnsw.sh: $dir/base.fvecs not found (set QV_DATA_DIR)" >&2
        exit 1
    fi
    for round in $(seq 1 "$rounds"); do
        log "$set round $round: hnswlib"
        "${pin[@]}" "$peer" "$dir" --M 16 --ef-construction 200 --k 10 --ef "$efs" \
            --repeat "$repeat" > "$results/$set-hnswlib-$round.jsonl"
        log "$set round $round: quiver"
        "${pin[@]}" "$qb" offline --data "$dir" --index hnsw --M 16 --ef-construction 200 \
            --k 10 --threads 1 --batch 1 --repeat "$repeat" --sweep "$efs" --json \
            > "$results/$set-quiver-$round.jsonl"
    done
done

python3 - "$results" $sets <<'EOF'
import glob, json, sys

results, sets = sys.argv[1], sys.argv[2:]

def load(set_, side):
    best, builds = {}, []
    for path in sorted(glob.glob(f"{results}/{set_}-{side}-*.jsonl")):
        for line in open(path):
            line = line.strip()
            if not line.startswith("{"):
                continue
            r = json.loads(line)
            ef = int(r["ef"])
            builds.append(float(r["build_s"]))
            if ef not in best or r["qps"] > best[ef]["qps"]:
                best[ef] = r
    return best, (min(builds) if builds else float("nan"))

def at_target(rows, target=0.95):
    """(interpolated QPS, ef of the first point reaching target, its QPS)."""
    pts = [(ef, rows[ef]["recall_at_k"], rows[ef]["qps"]) for ef in sorted(rows)]
    for i, (ef, r, q) in enumerate(pts):
        if r >= target:
            if i == 0:
                return q, ef, q
            _, r0, q0 = pts[i - 1]
            t = (target - r0) / (r - r0) if r > r0 else 1.0
            return q0 + t * (q - q0), ef, q
    return None, None, None

verdicts = []
for s in sets:
    h, hb = load(s, "hnswlib")
    q, qbuild = load(s, "quiver")
    print(f"\n## {s}: M=16, efConstruction=200, k=10, one thread, one query per call\n")
    print("|  ef | hnswlib recall | hnswlib QPS | p50 us | quiver recall | quiver QPS | p50 us | QPS ratio |")
    print("|----:|---------------:|------------:|-------:|--------------:|-----------:|-------:|----------:|")
    for ef in sorted(set(h) | set(q)):
        a, b = h.get(ef), q.get(ef)
        cell = lambda r, key, fmt: (fmt % r[key]) if r else "-"
        ratio = f"{b['qps'] / a['qps']:.2f}x" if a and b else "-"
        print(f"| {ef:3d} | {cell(a, 'recall_at_k', '%.4f'):>14} | {cell(a, 'qps', '%.0f'):>11} "
              f"| {cell(a, 'p50_us', '%.1f'):>6} | {cell(b, 'recall_at_k', '%.4f'):>13} "
              f"| {cell(b, 'qps', '%.0f'):>10} | {cell(b, 'p50_us', '%.1f'):>6} | {ratio:>9} |")
    hq, hef, hfq = at_target(h)
    qq, qef, qfq = at_target(q)
    print()
    if hq and qq:
        print(f"QPS at recall@10 >= 0.95 (interpolated): hnswlib {hq:.0f}, quiver {qq:.0f}"
              f" -> {qq / hq:.2f}x (target 1.20x)")
        print(f"first ef reaching 0.95: hnswlib ef={hef} {hfq:.0f} QPS, quiver ef={qef}"
              f" {qfq:.0f} QPS -> {qfq / hfq:.2f}x")
        verdicts.append((s, qq / hq, qbuild / hb))
    else:
        print("recall 0.95 not reached by one side: widen QV_BENCH_EFS")
    print(f"build (best of runs): hnswlib {hb:.3f} s, quiver {qbuild:.3f} s"
          f" -> quiver takes {qbuild / hb:.2f}x hnswlib's time (target <= 1.00x)")

print("\n## verdict\n")
for s, ratio, build in verdicts:
    ok = ratio >= 1.2 and build <= 1.0
    print(f"{s}: QPS {ratio:.2f}x, build {build:.2f}x -> {'meets' if ok else 'MISSES'} the target")
EOF
