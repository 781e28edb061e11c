#!/bin/bash
# daemon.sh - quiverd as a real process: start it on free ports with the
# embedded default engines (CPU, POCL where present, the simulated card),
# run the request-path suite (test_handler) against it over loopback
# (siftsmall created and loaded over TCP, searched over UDP and in a TCP
# batch with recall 1, malformed datagrams, GET / DELETE / LIST / STATS /
# DROP), check the admin API (/healthz, /metrics, /collections, 404,
# 405), SIGHUP (reload, still serving), then SIGTERM: it must drain and
# exit 0 within 20 s.
#
# Then libquiver's suite (test_client) runs against it the same way: its
# recall tests load siftsmall into IVF, IVF-SQ8, IVF-PQ and HNSW
# collections (seal_rows = 10000: one sealed segment each) and check the
# daemon's answers over UDP equal an index built offline.
#
# usage: daemon.sh QUIVERD TEST_HANDLER [TEST_CLIENT]    (meson passes all)
set -euo pipefail
quiverd=$1
client=$2
libclient=${3:-}
tmp=$(mktemp -d)
. "$(dirname "$0")/../../scripts/quiverd-lib.sh"
cleanup() { qv_kill; rm -rf "$tmp"; }
trap cleanup EXIT
fail() { echo "daemon.sh: FAIL: $*" >&2; echo "--- quiverd log ---" >&2; cat "$tmp/log" >&2 || true; exit 1; }

cat > "$tmp/quiver.conf" <<CONF
[server]
udp_port = 0
tcp_port = 0
seal_rows = 10000
admin_port = 0
CONF
qv_start "$quiverd" "$tmp/quiver.conf" "$tmp" || fail "quiverd did not start"
pid=$QV_PID udp=$QV_UDP tcp=$QV_TCP admin=$QV_ADMIN
echo "daemon.sh: quiverd pid $pid: udp $udp tcp $tcp admin $admin"

QV_TEST_SERVER="$udp,$tcp" "$client" > "$tmp/client.log" 2>&1 ||
    { cat "$tmp/client.log" >&2; fail "the request-path suite failed against quiverd"; }
grep -E "asserts" "$tmp/client.log"
if [ -n "$libclient" ]; then
    QV_TEST_SERVER="$udp,$tcp" "$libclient" > "$tmp/libclient.log" 2>&1 ||
        { cat "$tmp/libclient.log" >&2; fail "libquiver's suite failed against quiverd"; }
    grep -E "asserts|over the network" "$tmp/libclient.log"
fi

python3 - "$admin" <<'PY' || fail "admin API"
import json, sys, urllib.request, urllib.error
base = "http://127.0.0.1:%s" % sys.argv[1]
def get(path, method="GET"):
    req = urllib.request.Request(base + path, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
st, body = get("/healthz"); assert st == 200 and body == "ok\n", (st, body)
st, body = get("/metrics"); assert st == 200 and "quiver_batcher_queue_depth" in body, st
st, body = get("/collections"); assert st == 200 and isinstance(json.loads(body), list), body
st, body = get("/engines"); assert st == 200 and json.loads(body)[0]["name"] == "cpu", body
st, body = get("/stats"); assert st == 200 and json.loads(body)["handler"]["requests"] > 0, body
st, body = get("/collections/nope"); assert st == 404 and "nope" in body, (st, body)
st, body = get("/healthz", "POST"); assert st == 405, st
def post(path, doc):
    req = urllib.request.Request(base + path, data=json.dumps(doc).encode(), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
st, body = post("/collections", {"name": "viahttp", "dim": 8, "index": "hnsw", "metric": "ip",
                                 "attributes": ["color"]})
assert st == 201 and json.loads(body)["index"] == "hnsw", (st, body)
lab = 'collection="%d"' % json.loads(body)["id"]
st, body = get("/metrics"); assert st == 200 and "quiver_service_stage_ns" in body, st
assert 'stage="end_to_end"' in body and lab in body, lab
st, body = post("/collections", {"name": "viahttp", "dim": 8}); assert st == 409, (st, body)
st, body = post("/collections", {"name": "bad", "dim": 0}); assert st == 400 and "dim" in body, body
st, body = post("/collections", {"name": "bad", "dim": "x"}); assert st == 400 and "dim" in body, body
st, body = post("/collections", {"dim": 8}); assert st == 400 and "name" in body, body
st, body = get("/collections/viahttp", "DELETE"); assert st == 200, (st, body)
st, body = get("/metrics"); assert st == 200 and lab not in body, lab    # dropped: gone
print("daemon.sh: admin API ok")
PY

kill -HUP "$pid"
sleep 0.3
kill -0 "$pid" 2>/dev/null || fail "quiverd died on SIGHUP"
grep -q "SIGHUP: reloaded" "$tmp/log" || fail "no reload logged on SIGHUP"

qv_stop || fail "quiverd did not drain and exit 0 on SIGTERM"
grep -q "stopped in" "$tmp/log" || fail "no drain message"
echo "daemon.sh: SIGTERM drained, exit 0"
