# quiverd-lib.sh - start and stop a quiverd from a bash script (sourced by
# tests/integration/*.sh, bench/run_net.sh and scripts/demo.sh).
#
#   qv_start QUIVERD CONF DIR     start QUIVERD -c CONF with --ready-file
#                                 DIR/ready and its stderr in DIR/log; wait
#                                 (30 s at most) until it serves; sets
#                                 QV_PID, QV_UDP, QV_TCP, QV_ADMIN
#   qv_stop                       SIGTERM, wait (20 s at most); returns 0
#                                 when it exited 0, else 1 (message on
#                                 stderr)
#   qv_kill                       SIGKILL if still running (for EXIT traps)
# Both report failures on stderr with the last lines of DIR/log.

QV_PID=
QV_LOGDIR=

qv__fail() {
    echo "quiverd: $*" >&2
    [ -n "$QV_LOGDIR" ] && { echo "--- quiverd log ---" >&2; tail -20 "$QV_LOGDIR/log" >&2 || true; }
    return 1
}

qv_start() {
    local quiverd=$1 conf=$2 dir=$3 ready _
    QV_LOGDIR=$dir
    rm -f "$dir/ready"
    "$quiverd" -c "$conf" --ready-file "$dir/ready" 2> "$dir/log" &
    QV_PID=$!
    for _ in $(seq 1 300); do
        [ -f "$dir/ready" ] && break
        kill -0 "$QV_PID" 2>/dev/null || { QV_PID=; qv__fail "exited during start"; return 1; }
        sleep 0.1
    done
    [ -f "$dir/ready" ] || { qv__fail "not ready after 30 s"; return 1; }
    read -r ready < "$dir/ready"
    QV_UDP=$(sed 's/.*udp=\([0-9]*\).*/\1/' <<< "$ready")
    QV_TCP=$(sed 's/.*tcp=\([0-9]*\).*/\1/' <<< "$ready")
    QV_ADMIN=$(sed 's/.*admin=\([0-9]*\).*/\1/' <<< "$ready")
}

qv_stop() {
    local rc=0 _
    [ -n "$QV_PID" ] || return 0
    kill -TERM "$QV_PID"
    for _ in $(seq 1 200); do
        kill -0 "$QV_PID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$QV_PID" 2>/dev/null; then
        qv__fail "still running 20 s after SIGTERM"
        return 1
    fi
    wait "$QV_PID" || rc=$?
    QV_PID=
    [ "$rc" -eq 0 ] || { qv__fail "exited $rc after SIGTERM"; return 1; }
}

qv_kill() {
    if [ -n "$QV_PID" ] && kill -0 "$QV_PID" 2>/dev/null; then kill -KILL "$QV_PID"; fi
    QV_PID=
}
