#!/bin/bash
# crash.sh - crash recovery of quiverd's write-ahead log (meson test
# "crash_recover"): the durability issue's kill -9 and full-disk tests.
#
# 1. Rounds (ROUNDS, default 12, and at most ~60 s): start quiverd on the
#    same [storage] data_dir (sync cycling always / interval / never: a
#    process crash must lose nothing acknowledged under any of them);
#    crash_client streams upserts and deletes, logging what was
#    acknowledged; in every other round quiverctl snapshot runs during the
#    load (the WAL behind it is removed); after a random 0.2..1.2 s more,
#    kill -9; restart (snapshot + WAL replay); crash_client
#    verify: every acknowledged upsert is there with its vector, no
#    acknowledged delete came back, searches (collection "crash" is HNSW,
#    sealed every 16384 rows) find live ids and never a deleted one.  The
#    next round writes on.  At the end: once the builds are done, a
#    snapshot lists every segment's files and a restart maps them all back
#    (quiverctl status), with the same checks.
# 2. Full disk, when tmpfs can be mounted (root): data_dir on a 2 MiB
#    tmpfs, partly taken by a filler file; the writer runs until the node
#    refuses a write with a clear error (UNAVAILABLE, naming the disk);
#    what was acknowledged is intact after a restart; with the filler
#    removed, writes are accepted again (until the 2 MiB fill up anew).
#
# usage: crash.sh QUIVERD CRASH_CLIENT QUIVERCTL   (meson passes them)
set -euo pipefail
quiverd=$1
client=$2
ctl=$3
rounds=${ROUNDS:-12}
tmp=$(mktemp -d)
. "$(dirname "$0")/../../scripts/quiverd-lib.sh"
small=
cleanup() {
    qv_kill
    wait 2>/dev/null || true        # the killed quiverd holds files on the tmpfs
    if [ -n "$small" ]; then umount "$small" 2>/dev/null || true; fi
    rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "crash.sh: FAIL: $*" >&2; echo "--- quiverd log ---" >&2; tail -30 "$tmp/log" >&2 || true; exit 1; }

conf() {   # conf DATA_DIR SYNC
    cat > "$tmp/quiver.conf" <<CONF
[server]
seal_rows = 16384
udp_port = 0
tcp_port = 0
admin_port = 0
[storage]
data_dir = $1
sync = $2
wal_segment_bytes = 64K
CONF
}

t_end=$(( $(date +%s) + 60 ))
policies=(always interval never)
for r in $(seq 1 "$rounds"); do
    [ "$(date +%s)" -lt "$t_end" ] || { echo "crash.sh: time is up after $((r - 1)) rounds"; break; }
    sync=${policies[$(( (r - 1) % 3 ))]}
    conf "$tmp/data" "$sync"
    qv_start "$quiverd" "$tmp/quiver.conf" "$tmp" || fail "round $r: quiverd did not start (recovery failed?)"
    srv="127.0.0.1:$QV_UDP:$QV_TCP"
    if [ "$r" -gt 1 ]; then
        "$client" verify --server "$srv" --log "$tmp/acks" || fail "round $r: after the kill of round $((r - 1))"
    fi
    "$client" write --server "$srv" --log "$tmp/acks" --seconds 10 --index hnsw > "$tmp/writer" 2>&1 &
    wpid=$!
    if [ $((r % 2)) = 0 ]; then
        # a snapshot taken during the load, then the kill
        sleep 0.2
        "$ctl" --admin "127.0.0.1:$QV_ADMIN" snapshot crash > "$tmp/snap" 2>&1 ||
            { cat "$tmp/snap"; fail "round $r: snapshot during the load"; }
        echo "crash.sh: round $r: $(cat "$tmp/snap")"
    fi
    sleep "0.$(( RANDOM % 10 + 2 ))"
    kill -KILL "$QV_PID"
    wait "$QV_PID" 2>/dev/null || true
    QV_PID=
    wait "$wpid" || { cat "$tmp/writer"; fail "round $r: the writer failed"; }
    echo "crash.sh: round $r (sync $sync): killed mid-stream; $(tail -1 "$tmp/writer")"
done
conf "$tmp/data" always
qv_start "$quiverd" "$tmp/quiver.conf" "$tmp" || fail "final restart"
"$client" verify --server "127.0.0.1:$QV_UDP:$QV_TCP" --log "$tmp/acks" || fail "after the last kill"
grep -E "storage: .* rows from" "$tmp/log" | tail -1 | sed 's/.*storage: /crash.sh: recovery: /'
"$ctl" --server "127.0.0.1:$QV_UDP:$QV_TCP" status crash | tee "$tmp/status" || fail "quiverctl status"
awk '$1 == "crash" && $3 == "always" && $4 > 0 && $5 == $4 && $6 > 0 && $8 > 0 { ok = 1 } END { exit !ok }' "$tmp/status" ||
    fail "quiverctl status: no durable LSNs or no snapshot LSN for 'crash'"
# the builds the kills cut short finish; a snapshot then lists every sealed
# segment's files, and the next start maps them all back
for i in $(seq 1 600); do
    pending=$("$ctl" --server "127.0.0.1:$QV_UDP:$QV_TCP" --json stats crash |
              python3 -c 'import json,sys; print(json.load(sys.stdin)["pending_builds"])')
    [ "$pending" = 0 ] && break
    sleep 0.2
done
[ "$pending" = 0 ] || fail "the builds of 'crash' did not finish in 120 s"
"$ctl" --admin "127.0.0.1:$QV_ADMIN" snapshot crash > /dev/null || fail "snapshot after the builds"
qv_stop || fail "quiverd did not exit 0 on SIGTERM"
qv_start "$quiverd" "$tmp/quiver.conf" "$tmp" || fail "restart from the segment files"
"$client" verify --server "127.0.0.1:$QV_UDP:$QV_TCP" --log "$tmp/acks" || fail "after the restart from the segment files"
"$ctl" --server "127.0.0.1:$QV_UDP:$QV_TCP" status crash | tee "$tmp/status" || fail "quiverctl status"
awk '$1 == "crash" && $9 > 0 && $10 == $9 { ok = 1 } END { exit !ok }' "$tmp/status" ||
    fail "quiverctl status: the segments of 'crash' were not all mapped from their files"
grep -E "storage: .* rows from" "$tmp/log" | tail -1 | sed 's/.*storage: /crash.sh: recovery: /'
qv_stop || fail "quiverd did not exit 0 on SIGTERM"

# 2. full disk
if [ "$(id -u)" != 0 ]; then
    echo "crash.sh: full-disk part skipped: mounting a tmpfs needs root"
    exit 0
fi
small=$tmp/small
mkdir -p "$small"
mount -t tmpfs -o size=2m tmpfs "$small" || { echo "crash.sh: full-disk part skipped: no tmpfs"; small=; exit 0; }
head -c 1200000 /dev/zero > "$small/filler"
conf "$small/data" always
qv_start "$quiverd" "$tmp/quiver.conf" "$tmp" || fail "full disk: start"
srv="127.0.0.1:$QV_UDP:$QV_TCP"
"$client" write --server "$srv" --log "$tmp/acks2" --seconds 30 > "$tmp/writer" 2>&1 || { cat "$tmp/writer"; fail "full disk: writer"; }
grep -q "stopped" "$tmp/writer" || fail "full disk: 30 s of writes fit in 2 MiB?"
grep -qi "UNAVAILABLE.*cannot log writes" "$tmp/writer" || fail "full disk: unclear error: $(cat "$tmp/writer")"
echo "crash.sh: full disk: $(grep stopped "$tmp/writer" | cut -c1-200)"
"$client" verify --server "$srv" --log "$tmp/acks2" || fail "full disk: acknowledged writes damaged (before restart)"
qv_stop || fail "full disk: SIGTERM"
qv_start "$quiverd" "$tmp/quiver.conf" "$tmp" || fail "full disk: restart on a full disk"
srv="127.0.0.1:$QV_UDP:$QV_TCP"
"$client" verify --server "$srv" --log "$tmp/acks2" || fail "full disk: acknowledged writes damaged (after restart)"
rm -f "$small/filler"
"$client" write --server "$srv" --log "$tmp/acks2" --seconds 0.5 > "$tmp/writer" 2>&1 || fail "full disk: writer after freeing space"
n=$(sed -n 's/.*write: \([0-9]*\) upserts.*/\1/p' "$tmp/writer")
[ "${n:-0}" -gt 0 ] || fail "full disk: writes still refused with space free: $(cat "$tmp/writer")"
echo "crash.sh: full disk: with the filler removed, $n more upserts acknowledged"
"$client" verify --server "$srv" --log "$tmp/acks2" || fail "full disk: after freeing space"
qv_stop || fail "full disk: final SIGTERM"
echo "crash.sh: ok"
