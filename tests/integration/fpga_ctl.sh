#!/bin/bash
# fpga_ctl.sh - the card simulator as its own process and its control CLI:
# qv-fpga-sim comes up, qv-fpga-ctl reads its registers, injects each fault
# the CLI offers, resets the card and reads the error log; SIGTERM stops
# the card with exit status 0 and removes its BAR0; the CLI names a
# missing card.  usage: fpga_ctl.sh SIM CTL
set -u
sim=$1
ctl=$2
name=ctltest-$$
fail() { echo "FAIL: $*"; kill "$pid" 2>/dev/null; exit 1; }
"$sim" --name "$name" --no-opencl 2>"/tmp/$name.log" &
pid=$!
for _ in $(seq 100); do
    [ -e "/dev/shm/quiver-fpga-$name" ] && "$ctl" --name "$name" status >/dev/null 2>&1 && break
    sleep 0.05
done
out=$("$ctl" --name "$name" status) || fail "status: $out"
grep -q "status .*READY" <<<"$out" || fail "not READY: $out"
hb1=$(awk '/^heartbeat/ {print $2}' <<<"$out")
sleep 0.1
hb2=$("$ctl" --name "$name" status | awk '/^heartbeat/ {print $2}')
[ "$hb2" -gt "$hb1" ] || fail "heartbeat did not move: $hb1 -> $hb2"
"$ctl" --name "$name" inject link-down >/dev/null || fail "inject link-down"
"$ctl" --name "$name" status | grep -q "LINK_DOWN" || fail "no LINK_DOWN in status"
"$ctl" --name "$name" inject clear >/dev/null || fail "inject clear"
"$ctl" --name "$name" status | grep -q "LINK_DOWN" && fail "LINK_DOWN after clear"
"$ctl" --name "$name" inject throttle --factor 8 >/dev/null || fail "inject throttle"
"$ctl" --name "$name" status | grep -q "THROTTLED" || fail "no THROTTLED in status"
"$ctl" --name "$name" inject ecc-corrected >/dev/null || fail "inject ecc-corrected"
"$ctl" --name "$name" status | grep -q "corrected 1" || fail "ECC corrected not counted"
"$ctl" --name "$name" inject hang >/dev/null || fail "inject hang"
hb1=$("$ctl" --name "$name" status | awk '/^heartbeat/ {print $2}')
sleep 0.1
hb2=$("$ctl" --name "$name" status | awk '/^heartbeat/ {print $2}')
[ "$hb2" = "$hb1" ] || fail "heartbeat moved during a hang: $hb1 -> $hb2"
"$ctl" --name "$name" reset >/dev/null || fail "reset"
"$ctl" --name "$name" status | grep -q "active -" || fail "faults still active after reset"
"$ctl" --name "$name" errlog | grep -q "EV_RESET" || fail "no EV_RESET in the error log"
"$ctl" --name "$name" inject nonsense >/dev/null 2>&1 && fail "unknown fault accepted"
kill -TERM "$pid"
wait "$pid"
rc=$?
[ "$rc" = 0 ] || fail "qv-fpga-sim exited $rc on SIGTERM"
[ -e "/dev/shm/quiver-fpga-$name" ] && fail "BAR0 left behind"
msg=$("$ctl" --name "$name" status 2>&1) && fail "status of a stopped card succeeded"
grep -q "no card named $name" <<<"$msg" || fail "unclear message: $msg"
rm -f "/tmp/$name.log"
echo "fpga_ctl: ok"
