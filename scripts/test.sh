#!/bin/sh
# Build and pass every test: installs what is missing, builds the release
# configuration (build/) and runs all test suites, then builds the unit
# suites under AddressSanitizer + UndefinedBehaviorSanitizer (build-asan/)
# and runs them again.  Exits non-zero when anything fails.
# Usage: scripts/test.sh      (needs root for apt-get)
set -eu
cd "$(dirname "$0")/.."
./scripts/setup.sh

total_ok=0
total_fail=0
run_suite() {
    dir=$1
    shift
    log=$(mktemp)
    set +e
    meson test -C "$dir" --print-errorlogs "$@" 2>&1 | tee "$log"
    rc=$?
    set -e
    ok=$(sed -n 's/^Ok: *\([0-9]*\).*/\1/p' "$log" | tail -n1)
    fail=$(sed -n 's/^Fail: *\([0-9]*\).*/\1/p' "$log" | tail -n1)
    to=$(sed -n 's/^Timeout: *\([0-9]*\).*/\1/p' "$log" | tail -n1)
    rm -f "$log"
    total_ok=$((total_ok + ${ok:-0}))
    total_fail=$((total_fail + ${fail:-0} + ${to:-0}))
    if [ "$rc" -ne 0 ] && [ "${fail:-0}" -eq 0 ]; then total_fail=$((total_fail + 1)); fi
}

echo "== release build =="
if [ -f build/build.ninja ]; then meson setup --reconfigure build --buildtype=release >/dev/null
else meson setup build --buildtype=release; fi
ninja -C build
run_suite build

echo "== AddressSanitizer + UBSan build (unit suites) =="
if [ -f build-asan/build.ninja ]; then meson setup --reconfigure build-asan >/dev/null
else meson setup build-asan --buildtype=debug -Doptimization=1 \
        -Db_sanitize=address,undefined -Db_lundef=false; fi
ninja -C build-asan
run_suite build-asan --suite unit

echo "tests: $total_ok passed, $total_fail failed"
[ "$total_fail" -eq 0 ]
