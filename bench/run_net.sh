#!/bin/bash
# run_net.sh - quiverbench net against a real quiverd on loopback.
#
# Starts quiverd on free ports with a temporary configuration (as
# tests/integration/daemon.sh does; seal_rows lowered so siftsmall's 10 000
# rows seal into segments whose flat / HNSW indexes get built), then on
# ../shared/data/siftsmall:
#   1. flat and hnsw at a low open-loop rate (RATE0/s for DUR s);
#   2. for each, steps the open-loop rate up (RATES) and reports the
#      highest rate whose p99 (measured from the intended send time) stays
#      under P99_US;
#   3. the peer at the same load: quiverd's flat collection closed loop
#      with one query in flight beside Milvus Lite serving the same data
#      over its own API (bench/compare_milvus.py, FLAT), when a virtual
#      environment with pymilvus and milvus-lite exists at MILVUS_VENV
#      (default BUILD_DIR/venv-milvus; make it with
#        python3 -m venv build/venv-milvus
#        build/venv-milvus/bin/pip install pymilvus milvus-lite);
# prints the tables and stops quiverd (SIGTERM).
#
# usage: bench/run_net.sh [BUILD_DIR]     (default build; env: DATA, RATE0,
#        DUR, RATES, P99_US, INDEXES, MILVUS_VENV)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
builddir=${1:-$here/build}
quiverd=$builddir/host/server/quiverd
bench=$builddir/client/quiverbench
data=${DATA:-$here/../shared/data/siftsmall}
rate0=${RATE0:-2000}
dur=${DUR:-3}
rates=${RATES:-"4000 8000 16000 24000 32000 48000"}
p99_limit=${P99_US:-1000}
indexes=${INDEXES:-"flat hnsw"}
for f in "$quiverd" "$bench"; do
    [ -x "$f" ] || { echo "run_net.sh: $f not built" >&2; exit 1; }
done
[ -f "$data/base.fvecs" ] || { echo "run_net.sh: no $data/base.fvecs" >&2; exit 1; }

tmp=$(mktemp -d)
. "$here/scripts/quiverd-lib.sh"
cleanup() { qv_kill; rm -rf "$tmp"; }
trap cleanup EXIT
fail() { echo "run_net.sh: FAIL: $*" >&2; echo "--- quiverd log ---" >&2; tail -20 "$tmp/log" >&2 || true; exit 1; }

cat > "$tmp/quiver.conf" <<CONF
[server]
udp_port = 0
tcp_port = 0
admin_port = 0
seal_rows = 2500
[cache]
# the queries cycle through query.fvecs: with the caches on, every pass
# after the first would be answered from memory and measure the cache
entries = 0
semantic_entries = 0
CONF
qv_start "$quiverd" "$tmp/quiver.conf" "$tmp" || fail "quiverd did not start"
pid=$QV_PID udp=$QV_UDP tcp=$QV_TCP admin=$QV_ADMIN
echo "run_net.sh: quiverd pid $pid on udp $udp tcp $tcp; data $data" >&2

# one run: INDEX RATE -> one JSON line appended to $tmp/results
run() {
    local index=$1 rate=$2 out
    out=$("$bench" net --server "127.0.0.1:$udp:$tcp" --data "$data" --index "$index" \
          --k 10 --rate "$rate" --duration "$dur" --json) || fail "quiverbench net $index $rate"
    echo "$index $rate $out" >> "$tmp/results"
    echo "$out"
}

: > "$tmp/results"
declare -A best
for index in $indexes; do
    best[$index]=none
    echo "run_net.sh: $index at $rate0/s" >&2
    run "$index" "$rate0" > /dev/null
    p99=$(tail -1 "$tmp/results" | sed 's/.*"p99_us":\([0-9.e+-]*\).*/\1/')
    awk -v p="$p99" -v l="$p99_limit" 'BEGIN { exit !(p < l) }' && best[$index]=$rate0
    for r in $rates; do
        echo "run_net.sh: $index at $r/s" >&2
        run "$index" "$r" > /dev/null
        p99=$(tail -1 "$tmp/results" | sed 's/.*"p99_us":\([0-9.e+-]*\).*/\1/')
        if awk -v p="$p99" -v l="$p99_limit" 'BEGIN { exit !(p < l) }'; then
            best[$index]=$r
        else
            break       # the tail has passed the limit: higher rates only worsen it
        fi
    done
done

python3 - "$tmp/results" "$p99_limit" "$indexes" \
    "$(for i in $indexes; do printf '%s=%s ' "$i" "${best[$i]}"; done)" <<'PY'
import json, sys
rows = []
for line in open(sys.argv[1]):
    index, rate, js = line.split(" ", 2)
    rows.append((index, float(rate), json.loads(js)))
limit = float(sys.argv[2])
best = dict(kv.split("=") for kv in sys.argv[4].split())
print("%-6s %8s %9s %9s %8s %9s %9s %9s %9s %5s %5s" % (
    "index", "rate", "offered", "qps", "recall", "p50_us", "p95_us", "p99_us", "p999_us",
    "tmo", "err"))
for index, rate, j in rows:
    print("%-6s %8.0f %9.1f %9.1f %8.4f %9.1f %9.1f %9.1f %9.1f %5d %5d%s" % (
        index, rate, j["offered_qps"], j["qps"], j["recall_at_k"], j["p50_us"], j["p95_us"],
        j["p99_us"], j["p999_us"], j["timeouts"], j["errors"],
        "  p99>%gus" % limit if j["p99_us"] >= limit else ""))
for index in sys.argv[3].split():
    b = best[index]
    print("highest open-loop rate with p99 < %g us: %s %s" % (
        limit, index, b + "/s" if b != "none" else "none of the rates tried"))
PY

# the peer, at the same load: one query in flight, closed loop
mvenv=${MILVUS_VENV:-$builddir/venv-milvus}
echo "run_net.sh: flat, 1 in flight (closed loop)" >&2
qv=$("$bench" net --server "127.0.0.1:$udp:$tcp" --data "$data" --index flat --k 10 \
     --inflight 1 --duration "$dur" --admin "127.0.0.1:$admin" --json) ||
    fail "quiverbench net --inflight 1"
if [ -x "$mvenv/bin/python" ]; then
    echo "run_net.sh: Milvus Lite, same data, 1 in flight" >&2
    mv=$("$mvenv/bin/python" "$here/bench/compare_milvus.py" --data "$data" --k 10) ||
        fail "compare_milvus.py"
else
    mv=""
    echo "run_net.sh: no $mvenv/bin/python: Milvus Lite skipped (see the header)" >&2
fi
python3 - "$qv" "$mv" <<'PY'
import json, sys
rows = [("quiverd (UDP)", json.loads(sys.argv[1]))]
if sys.argv[2]:
    rows.append(("Milvus Lite", json.loads(sys.argv[2])))
print()
print("same load: one query in flight, closed loop, flat (exact), k 10")
print("%-14s %8s %9s %9s %9s %9s %9s" % ("server", "recall", "qps", "p50_us", "p95_us",
                                           "p99_us", "p999_us"))
for name, j in rows:
    print("%-14s %8.4f %9.1f %9.1f %9.1f %9.1f %9.1f" % (name, j["recall_at_k"], j["qps"],
          j["p50_us"], j["p95_us"], j["p99_us"], j["p999_us"]))
st = rows[0][1].get("server_stages", {})
if st:
    print("quiverd's time per query by stage (its /metrics, p50 / p99 us): " +
          ", ".join("%s %.1f / %.1f" % (k, v["p50_us"], v["p99_us"]) for k, v in st.items()))
if len(rows) == 2:
    a, b = rows[0][1], rows[1][1]
    print("Milvus Lite / quiverd: p50 %.1fx, p99 %.1fx" % (b["p50_us"] / a["p50_us"],
                                                           b["p99_us"] / a["p99_us"]))
PY

qv_stop || fail "quiverd did not drain and exit 0 on SIGTERM"
echo "run_net.sh: quiverd stopped" >&2
