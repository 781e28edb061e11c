#!/bin/sh
# Install every Debian package Quiver needs to build, test and benchmark.
# Idempotent and non-interactive: safe to run again; used by both README
# commands and by .ci/run.  Needs root (or sudo) on Debian 12.
set -eu

# build and tests
PKGS="build-essential meson ninja-build pkg-config python3 python3-venv \
      libcunit1-dev libinih-dev libnuma-dev libjson-c-dev libmicrohttpd-dev libssl-dev \
      ocl-icd-opencl-dev opencl-c-headers pocl-opencl-icd"
# the DPDK dataplane (dataplane/) and its test in a network namespace
# (tests/integration/dpdk.sh: ip, ping, curl)
PKGS="$PKGS libdpdk-dev iproute2 iputils-ping curl"
# benchmarks (bench/): the hnswlib headers for the side-by-side run and
# gnuplot for the recall/QPS plots
PKGS="$PKGS libhnswlib-dev gnuplot-nox"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done

if [ -n "$missing" ]; then
    echo "setup: installing:$missing"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q
    # shellcheck disable=SC2086
    $SUDO apt-get install -y -q --no-install-recommends $missing
else
    echo "setup: all packages present"
fi
