#!/bin/bash
# run_router.sh - the router (--engine auto) against each engine pinned,
# one table, one run: flat, IVF-Flat and IVF-PQ on siftsmall and on a
# generated 200k x 128 set, batch sizes 1, 8, 64, 512, 4096, QPS per
# engine (cpu, opencl, fpga: POCL and the simulated card on this host's
# cores) and auto, with auto / best pinned and auto's engine mix.
#
# usage: bench/run_router.sh [BUILD_DIR] [CONF]
# Environment: QV_DATA_DIR (../shared/data), QV_BENCH_THREADS (all CPUs),
#   QV_BENCH_REPEAT (2), QV_BENCH_MIN_TIME (0.3: passes are added until
#   they add up to this many seconds; best pass reported),
#   QV_BENCH_OUT (BUILD_DIR/benchresults/router).
# "cpu" is the index's own CPU path (no engine); auto / best compares
# auto with the best of cpu, opencl and fpga.
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
build=${1:-build}
case $build in /*) ;; *) build=$root/$build ;; esac
conf=${2:-}
qb=$build/client/quiverbench
data=${QV_DATA_DIR:-$root/../shared/data}
t=${QV_BENCH_THREADS:-$(nproc)}
rep=${QV_BENCH_REPEAT:-2}
mint=${QV_BENCH_MIN_TIME:-0.3}
out=${QV_BENCH_OUT:-$build/benchresults/router}
mkdir -p "$out"
confarg=()
[ -n "$conf" ] && confarg=(--conf "$conf")
gen=$out/gen-200k-128-q4096
[ -f "$gen/groundtruth.ivecs" ] ||
    "$qb" gen --n 200000 --dim 128 --nq 4096 --clusters 1000 --seed 20240611 --out "$gen" >&2
: > "$out/router.jsonl"
for set in "$data/siftsmall" "$gen"; do
    for ix in flat ivf ivfpq; do
        extra=()
        case $ix in
            ivf) extra=(--nlist 256 --nprobe 16) ;;
            ivfpq) extra=(--nlist 256 --nprobe 16 --m 16 --nbits 8) ;;
        esac
        ixf=$out/$(basename "$set")-$ix.qvx
        rm -f "$ixf"
        for b in 1 8 64 512 4096; do
            # cpu and auto twice, around the slow engines, best of each:
            # host memory bandwidth drifts between minutes here
            for e in cpu auto opencl fpga auto cpu; do
                io=(--load "$ixf")
                [ -f "$ixf" ] || io=(--save "$ixf")
                "$qb" offline --data "$set" --index "$ix" "${extra[@]}" "${io[@]}" --k 10 \
                    --threads "$t" \
                    --batch "$b" --engine "$e" "${confarg[@]}" --repeat "$rep" --min-time "$mint" --json \
                    2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    r = json.loads(line)
    r["set"] = sys.argv[1]
    print(json.dumps(r))' "$(basename "$set")" >> "$out/router.jsonl"
            done
        done
    done
done
python3 - "$out/router.jsonl" <<'PY'
import json, sys
rows = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    key = (r["set"], r["index"], r["batch"])
    old = rows.setdefault(key, {}).get(r["engine"])
    if old is None or r["qps"] > old["qps"]:
        rows[key][r["engine"]] = r
print("%-20s %-6s %6s %10s %10s %10s %10s %7s  %s" % ("data", "index", "batch", "cpu", "opencl",
      "fpga", "auto", "auto/best", "auto mix (parts)"))
for key in sorted(rows, key=lambda k: (k[0], k[1], k[2])):
    e = rows[key]
    q = {n: e[n]["qps"] for n in e}
    best = max(q.get(n, 0) for n in ("cpu", "opencl", "fpga"))
    mix = e.get("auto", {}).get("mix", {})
    tot = sum(mix.values()) or 1
    mixs = " ".join("%s %d%%" % (n, round(100 * v / tot)) for n, v in sorted(mix.items()))
    print("%-20s %-6s %6d %10.0f %10.0f %10.0f %10.0f %7.2f  %s" % (key[0], key[1], key[2],
          q.get("cpu", 0), q.get("opencl", 0), q.get("fpga", 0), q.get("auto", 0),
          q.get("auto", 0) / best if best else 0, mixs))
PY
