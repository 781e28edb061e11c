#!/usr/bin/env python3
"""compare_faiss.py - the FAISS side of bench/run_flat.sh.

Runs the same measurement as `quiverbench offline --index flat` with FAISS's
exact IndexFlat (faiss-cpu from PyPI) on a TEXMEX directory
(DIR/base.fvecs, DIR/query.fvecs, DIR/groundtruth.ivecs) and prints one
JSON object with the same keys:

  recall_at_k qps mean_us p50_us p99_us build_s simd threads batch n dim
  (plus k nq index metric data repeat)

Semantics match quiverbench offline: the queries are searched in batches of
--batch (1 = one query per call); a query's latency is its batch's latency;
QPS = queries / wall time of the whole pass; --repeat R keeps the best-QPS
pass; recall@k = |first k returned ids & first k true ids| / k averaged.
Note that FAISS searches a single query on one core (its OpenMP loop is over
queries), so with --batch 1 extra threads do not help it.

BLAS.  For batches of 20 or more queries IndexFlat computes distances with
sgemm from the OpenBLAS bundled in the faiss-cpu wheel (0.3.15 in 1.15.1).
That OpenBLAS does not recognise Zen 5 and falls back to generic kernels
("Prescott"); the environment here also sets OPENBLAS_CORETYPE=Haswell
(AVX2 kernels).  So that FAISS is compared at its best, this script sets
OPENBLAS_CORETYPE=SkylakeX (the AVX-512 kernels, about 1.5x faster than
Haswell on a 200k x 1000 batch here) before loading it whenever the CPU has
AVX-512F, whatever the environment says; --openblas-coretype NAME overrides,
and --openblas-coretype "" leaves the environment alone.  The value in
effect is reported as openblas_coretype.
"""

import argparse
import json
import os
import sys
import time


def read_vecs(path, dtype):
    """Map an fvecs/ivecs file as an (n, d) array (no copy)."""
    import numpy as np
    raw = np.memmap(path, dtype=np.int32, mode="r")
    if raw.size == 0:
        sys.exit(f"compare_faiss.py: {path}: the file is empty")
    d = int(raw[0])
    if d <= 0 or raw.size % (d + 1) != 0:
        sys.exit(f"compare_faiss.py: {path}: not an fvecs/ivecs file (d={d})")
    rows = raw.reshape(-1, d + 1)
    if (rows[:, 0] != d).any():
        sys.exit(f"compare_faiss.py: {path}: records of different dimensions")
    return rows[:, 1:].view(dtype)


def positive_int(lo, hi, name):
    def parse(s):
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} {s}: expected an integer in {lo}..{hi}")
        if v < lo or v > hi:
            raise argparse.ArgumentTypeError(f"{name} {s}: expected an integer in {lo}..{hi}")
        return v
    return parse


def quantile(sorted_vals, q):
    """Nearest rank, as quiverbench: v[ceil(q * n) - 1]."""
    import math
    n = len(sorted_vals)
    r = min(max(int(math.ceil(q * n)), 1), n)
    return sorted_vals[r - 1]


def faiss_simd(faiss):
    """The SIMD level FAISS runs at: the dispatched level on builds with
    dynamic dispatch (faiss >= 1.12), else the best one compiled in."""
    try:
        return faiss.SIMDConfig.get_level_name().lower()
    except AttributeError:
        opts = faiss.get_compile_options().split()
        levels = [o.lower() for o in opts if o.startswith("AVX") or o in ("NEON", "SVE")]
        return levels[-1] if levels else "generic"


def cpu_has_avx512f():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return "avx512f" in line.split()
    except OSError:
        pass
    return False


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="directory with base/query/groundtruth")
    ap.add_argument("--k", type=positive_int(1, 1000, "--k"), default=10)
    ap.add_argument("--threads", type=positive_int(1, 1024, "--threads"),
                    default=os.cpu_count())
    ap.add_argument("--batch", type=positive_int(1, 1000000, "--batch"), default=1)
    ap.add_argument("--metric", choices=["l2", "ip"], default="l2")
    ap.add_argument("--nq", type=positive_int(1, 2**31 - 1, "--nq"), default=None)
    ap.add_argument("--repeat", type=positive_int(1, 1000, "--repeat"), default=1)
    ap.add_argument("--openblas-coretype", default=None,
                    help="OPENBLAS_CORETYPE for FAISS's sgemm (default: SkylakeX on "
                         "AVX-512 CPUs; '' = keep the environment's)")
    args = ap.parse_args()

    # Must happen before numpy/faiss load their OpenBLAS.
    coretype = args.openblas_coretype
    if coretype is None:
        coretype = "SkylakeX" if cpu_has_avx512f() else ""
    if coretype:
        os.environ["OPENBLAS_CORETYPE"] = coretype
    coretype = os.environ.get("OPENBLAS_CORETYPE", "")

    import numpy as np
    import faiss

    base = read_vecs(os.path.join(args.data, "base.fvecs"), np.float32)
    queries = read_vecs(os.path.join(args.data, "query.fvecs"), np.float32)
    gt = read_vecs(os.path.join(args.data, "groundtruth.ivecs"), np.int32)
    n, dim = base.shape
    if queries.shape[1] != dim:
        sys.exit(f"compare_faiss.py: queries have dim {queries.shape[1]}, base {dim}")
    nq = queries.shape[0]
    if args.nq is not None:
        if args.nq > nq:
            sys.exit(f"compare_faiss.py: --nq {args.nq}: only {nq} queries")
        nq = args.nq
    if gt.shape[0] < nq:
        sys.exit(f"compare_faiss.py: {gt.shape[0]} ground-truth rows for {nq} queries")
    k = args.k
    if k > gt.shape[1]:
        sys.exit(f"compare_faiss.py: --k {k}: the ground truth has only {gt.shape[1]} columns")
    batch = min(args.batch, nq)
    q = np.ascontiguousarray(queries[:nq])

    faiss.omp_set_num_threads(args.threads)

    t0 = time.perf_counter()
    index = faiss.IndexFlatL2(dim) if args.metric == "l2" else faiss.IndexFlatIP(dim)
    chunk = 65536
    for first in range(0, n, chunk):
        index.add(np.ascontiguousarray(base[first:first + chunk]))
    build_s = time.perf_counter() - t0

    ids = np.empty((nq, k), dtype=np.int64)
    best_qps, best_pass_s, best_lat = 0.0, 0.0, None
    for _ in range(args.repeat):
        lat = np.empty(nq, dtype=np.float64)
        p0 = time.perf_counter()
        for b in range(0, nq, batch):
            qb = q[b:b + batch]
            t0 = time.perf_counter()
            _, ib = index.search(qb, k)
            t1 = time.perf_counter()
            ids[b:b + len(qb)] = ib
            lat[b:b + len(qb)] = (t1 - t0) * 1e6
        pass_s = time.perf_counter() - p0
        qps = nq / pass_s
        if best_lat is None or qps > best_qps:
            best_qps, best_pass_s, best_lat = qps, pass_s, lat

    truth = gt[:nq, :k]
    hits = 0
    for i in range(nq):
        hits += len(set(ids[i].tolist()) & set(truth[i].tolist()))
    recall = hits / (nq * k)

    srt = np.sort(best_lat)
    simd = faiss_simd(faiss)
    print(json.dumps({
        "recall_at_k": recall,
        "qps": best_qps,
        "mean_us": float(best_lat.mean()),
        "p50_us": float(quantile(srt, 0.50)),
        "p99_us": float(quantile(srt, 0.99)),
        "build_s": build_s,
        "simd": simd,
        "threads": args.threads,
        "batch": batch,
        "n": int(n),
        "dim": int(dim),
        "k": k,
        "nq": nq,
        "repeat": args.repeat,
        "index": "faiss.IndexFlat" + ("L2" if args.metric == "l2" else "IP"),
        "metric": args.metric,
        "data": args.data,
        "faiss_version": faiss.__version__,
        "openblas_coretype": coretype or "autodetect",
    }))


if __name__ == "__main__":
    main()
