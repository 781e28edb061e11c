#!/bin/sh
# The main job on the embedded default: install what is missing, build, and
# run the exact (flat) search benchmark on the siftsmall data set, printing
# recall@10, QPS and latency.  (A later milestone replaces this with the
# daemon demo.)  Usage: scripts/demo.sh [DATA_DIR]   (needs root for apt-get)
set -eu
cd "$(dirname "$0")/.."
./scripts/setup.sh
DATA=${1:-${QV_DATA_DIR:-../shared/data}}
[ -f build/build.ninja ] || meson setup build --buildtype=release
ninja -C build
./build/client/quiverbench offline --data "$DATA/siftsmall" --index flat --k 10 \
    --threads "$(nproc)" --batch 16
