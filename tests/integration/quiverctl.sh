#!/bin/bash
# quiverctl.sh - the command-line client against a real quiverd: start it
# on free ports (--ready-file), then through quiverctl: create a flat
# collection for siftsmall, load base.fvecs, describe (10000 rows),
# search query row 0 with --json and check the ids against groundtruth
# row 0, list, stats, ping, the error and usage exit codes (an unknown
# name exits 1 naming it; a bad flag exits 2); SIGHUP turning auth on
# (unsigned requests refused, --key-file accepted), rotating the key,
# keeping it on a bad file, turning it off, and naming a key that needs a
# restart; drop; then SIGTERM: quiverd must exit 0.
#
# usage: quiverctl.sh QUIVERD QUIVERCTL    (meson passes both; QV_DATA_DIR
# from the test environment)
set -euo pipefail
quiverd=$1
ctl=$2
data=${QV_DATA_DIR:?QV_DATA_DIR is not set}/siftsmall
tmp=$(mktemp -d)
. "$(dirname "$0")/../../scripts/quiverd-lib.sh"
cleanup() { qv_kill; rm -rf "$tmp"; }
trap cleanup EXIT
fail() { echo "quiverctl.sh: FAIL: $*" >&2; echo "--- quiverd log ---" >&2; cat "$tmp/log" >&2 || true; exit 1; }

cat > "$tmp/quiver.conf" <<CONF
[server]
udp_port = 0
tcp_port = 0
admin_port = 0
CONF
qv_start "$quiverd" "$tmp/quiver.conf" "$tmp" || fail "quiverd did not start"
pid=$QV_PID udp=$QV_UDP tcp=$QV_TCP
echo "quiverctl.sh: quiverd pid $pid: udp $udp tcp $tcp"

q() { "$ctl" --server "127.0.0.1:$udp:$tcp" "$@"; }

q ping || fail "ping"
q create sift --dim 128 --metric l2 --index flat || fail "create"
q load sift "$data/base.fvecs" --batch-bytes 1048576 2> "$tmp/progress" || fail "load"
grep -q "100%" "$tmp/progress" || fail "load: no 100% progress line: $(cat "$tmp/progress")"
q describe sift | tee "$tmp/describe" || fail "describe"
grep -Eq "^rows: +10000$" "$tmp/describe" || fail "describe does not show 10000 rows"
q --json describe sift | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["rows"] == 10000 and d["dim"] == 128, d' ||
    fail "describe --json"

q --json search sift --query-file "$data/query.fvecs" --row 0 --k 10 > "$tmp/search.json" || fail "search"
python3 - "$tmp/search.json" "$data/groundtruth.ivecs" <<'PY' || fail "search ids differ from the ground truth"
import json, struct, sys
got = json.load(open(sys.argv[1]))["ids"]
with open(sys.argv[2], "rb") as f:
    (d,) = struct.unpack("<i", f.read(4))
    gt = list(struct.unpack("<%di" % d, f.read(4 * d)))[:10]
assert got == gt, (got, gt)
print("quiverctl.sh: search row 0 = ground truth", got)
PY
q search sift --query-file "$data/query.fvecs" --row 0 --k 3 || fail "search (human)"

q status | tee "$tmp/status" || fail "status"
grep -q "^sift .*in memory only" "$tmp/status" || fail "status of a node without data_dir"
q list | tee "$tmp/list" || fail "list"
grep -q "sift" "$tmp/list" || fail "list does not show sift"
q --json list | python3 -c 'import json,sys; l=json.load(sys.stdin); assert [c["name"] for c in l] == ["sift"], l' ||
    fail "list --json"
q stats > /dev/null || fail "stats"
q --json stats sift | python3 -c 'import json,sys; json.load(sys.stdin)' || fail "stats sift --json"

rc=0; q describe no_such_coll 2> "$tmp/err" || rc=$?
[ "$rc" -eq 1 ] || fail "describe of an unknown name exited $rc, not 1"
[ "$(wc -l < "$tmp/err")" -eq 1 ] || fail "describe of an unknown name: not one line: $(cat "$tmp/err")"
grep -q "no_such_coll" "$tmp/err" || fail "the error does not name the collection: $(cat "$tmp/err")"
rc=0; q create sift --dim 128 2> "$tmp/err" || rc=$?
[ "$rc" -eq 1 ] || fail "create of an existing name exited $rc, not 1"
echo "quiverctl.sh: create twice: $(cat "$tmp/err")"
rc=0; q create other --dim 0 2> /dev/null || rc=$?
[ "$rc" -eq 2 ] || fail "a usage error exited $rc, not 2"
rc=0; q frobnicate 2> /dev/null || rc=$?
[ "$rc" -eq 2 ] || fail "an unknown command exited $rc, not 2"

q --admin "127.0.0.1:$QV_ADMIN" engines | tee "$tmp/engines" || fail "engines"
grep -q "^cpu " "$tmp/engines" || fail "engines: no cpu row"
q --admin "127.0.0.1:$QV_ADMIN" --json engines | python3 -c 'import json,sys; assert json.load(sys.stdin)[0]["name"] == "cpu"' ||
    fail "engines --json"

# SIGHUP: auth turned on, rotated, off; a restart-only key is named; a
# bad file changes nothing.  The log level goes to debug and back.
hup() {   # rewrite the conf with "$@" appended to [server], HUP, wait for the reload
    local n
    n=$(grep -c "SIGHUP: reloaded\|keeping the running configuration" "$tmp/log" || true)
    { printf '[server]\nudp_port = 0\ntcp_port = 0\nadmin_port = 0\n'; printf '%s\n' "$@"; } > "$tmp/quiver.conf"
    kill -HUP "$pid"
    for _ in $(seq 1 50); do
        [ "$(grep -c "SIGHUP: reloaded\|keeping the running configuration" "$tmp/log")" -gt "$n" ] && return 0
        sleep 0.1
    done
    fail "no reload logged after SIGHUP"
}
head -c 32 /dev/urandom | base64 > "$tmp/key1"
head -c 32 /dev/urandom | base64 > "$tmp/key2"
hup "auth_key_file = $tmp/key1" "replay_entries = 1024"
grep -q "auth key on" "$tmp/log" || fail "SIGHUP did not turn auth on"
grep -q "\[server\] replay_entries = 1024 .*running with 65536: takes effect at the next restart" "$tmp/log" ||
    fail "the restart-only key was not named"
rc=0; q ping 2> "$tmp/err" || rc=$?
[ "$rc" -eq 1 ] && grep -q "UNAUTHORIZED" "$tmp/err" || fail "an unsigned ping was not refused after auth went on: $(cat "$tmp/err")"
q --key-file "$tmp/key1" ping || fail "a ping signed with the key was refused"
q --key-file "$tmp/key1" search sift --query-file "$data/query.fvecs" --row 0 --k 3 > /dev/null ||
    fail "a signed search was refused"
hup "auth_key_file = $tmp/key2" "[log]" "level = debug"
grep -q "auth key rotated" "$tmp/log" || fail "SIGHUP did not rotate the key"
grep -q "SIGHUP: \[log\] level = debug" "$tmp/log" || fail "SIGHUP did not set the log level"
rc=0; q --key-file "$tmp/key1" ping 2> /dev/null || rc=$?
[ "$rc" -eq 1 ] || fail "the old key still works after rotation"
q --key-file "$tmp/key2" ping || fail "the new key is refused after rotation"
hup "auth_key_file = $tmp/key2" "max_collections = banana"
grep -q "keeping the running configuration" "$tmp/log" || fail "a bad file was not refused"
q --key-file "$tmp/key2" ping || fail "the key changed on a bad file"
hup "auth_key_file = $tmp/nokey"
grep -q "keeping the key in force" "$tmp/log" || fail "a missing key file was not reported"
q --key-file "$tmp/key2" ping || fail "a missing key file changed the key"
hup "auth_key_file = none"
grep -q "auth key off" "$tmp/log" || fail "SIGHUP did not turn auth off"
q ping || fail "an unsigned ping was refused after auth went off"
echo "quiverctl.sh: SIGHUP: auth on, rotated, kept on bad files, off; restart-only keys named"

q drop sift || fail "drop"
rc=0; q describe sift 2> /dev/null || rc=$?
[ "$rc" -eq 1 ] || fail "sift still there after drop"

qv_stop || fail "quiverd did not drain and exit 0 on SIGTERM"
echo "quiverctl.sh: ok"
