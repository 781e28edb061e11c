#!/usr/bin/env python3
"""compare_faiss_ivf.py - the FAISS side of the IVF benchmarks.

Builds FAISS's IndexIVFFlat (--index ivf) or IndexIVFScalarQuantizer with
QT_8bit (--index sq8) on a TEXMEX directory (DIR/base.fvecs,
DIR/query.fvecs, DIR/groundtruth.ivecs) with the given nlist (default
4 sqrt(n), as quiverbench), the coarse quantiser trained on a sample of
256 x nlist base vectors (FAISS's own default cap), then sweeps nprobe and
prints one JSON line per nprobe:

  {index, nlist, nprobe, recall_at_k, qps, p50_us, p99_us, threads,
   build_s, k, nq, batch, n, dim, openblas_coretype}

Semantics match `quiverbench offline`: queries are searched in batches of
--batch (0 = all in one call, 1 = one query per call); a query's latency
is its batch's latency; QPS = queries / wall time of a pass; --repeat R
keeps the best-QPS pass; recall@k = |returned ids & true first k| / k,
averaged.  Threads: faiss.omp_set_num_threads(--threads).

OPENBLAS_CORETYPE is set to SkylakeX before FAISS is imported on AVX-512
CPUs (the wheel's OpenBLAS does not know Zen 5; see compare_faiss.py);
the IVF search path itself does not use BLAS for small batches, but the
quantiser's training and assignment do.
"""

import argparse
import json
import math
import os
import sys
import time


def read_vecs(path, dtype):
    import numpy as np
    raw = np.memmap(path, dtype=np.int32, mode="r")
    if raw.size == 0:
        sys.exit(f"compare_faiss_ivf.py: {path}: the file is empty")
    d = int(raw[0])
    if d <= 0 or raw.size % (d + 1) != 0:
        sys.exit(f"compare_faiss_ivf.py: {path}: not an fvecs/ivecs file (d={d})")
    return raw.reshape(-1, d + 1)[:, 1:].view(dtype)


def cpu_has_avx512f():
    try:
        with open("/proc/cpuinfo") as f:
            return " avx512f" in f.read()
    except OSError:
        return False


def quantile(vals, q):
    if not vals:
        return 0.0
    i = min(len(vals) - 1, max(0, int(math.ceil(q * len(vals))) - 1))
    return vals[i]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir", help="TEXMEX folder with base/query/groundtruth")
    ap.add_argument("--index", choices=["ivf", "sq8"], default="ivf")
    ap.add_argument("--nlist", type=int, default=0, help="lists (0 = 4 sqrt(n))")
    ap.add_argument("--nprobe", default="1,2,4,8,16,32,64",
                    help="comma-separated nprobe values to sweep")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--batch", type=int, default=0, help="queries per call (0 = all)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--niter", type=int, default=20, help="k-means iterations")
    args = ap.parse_args()
    if args.threads < 1 or args.k < 1 or args.repeat < 1 or args.batch < 0:
        sys.exit("compare_faiss_ivf.py: --threads, --k and --repeat must be >= 1, "
                 "--batch >= 0")
    if cpu_has_avx512f():
        os.environ["OPENBLAS_CORETYPE"] = "SkylakeX"
    import numpy as np
    import faiss

    base = np.ascontiguousarray(read_vecs(os.path.join(args.dir, "base.fvecs"), np.float32))
    queries = np.ascontiguousarray(read_vecs(os.path.join(args.dir, "query.fvecs"),
                                             np.float32))
    gt = read_vecs(os.path.join(args.dir, "groundtruth.ivecs"), np.int32)
    n, dim = base.shape
    nq = queries.shape[0]
    nlist = args.nlist or max(1, int(4 * math.sqrt(n)))
    faiss.omp_set_num_threads(args.threads)

    t0 = time.perf_counter()
    quant = faiss.IndexFlatL2(dim)
    if args.index == "ivf":
        index = faiss.IndexIVFFlat(quant, dim, nlist, faiss.METRIC_L2)
    else:
        index = faiss.IndexIVFScalarQuantizer(quant, dim, nlist,
                                              faiss.ScalarQuantizer.QT_8bit,
                                              faiss.METRIC_L2)
    index.cp.niter = args.niter
    index.train(base)
    index.add(base)
    build_s = time.perf_counter() - t0

    k = args.k
    batch = args.batch or nq
    truth = [set(gt[i, :k].tolist()) for i in range(nq)]
    for nprobe in [int(v) for v in args.nprobe.split(",") if v]:
        index.nprobe = nprobe
        best = None
        for _ in range(args.repeat):
            lat = []
            ids_all = np.empty((nq, k), dtype=np.int64)
            t_pass = time.perf_counter()
            for b0 in range(0, nq, batch):
                qb = queries[b0:b0 + batch]
                t1 = time.perf_counter()
                _, ids = index.search(qb, k)
                dt = (time.perf_counter() - t1) * 1e6
                ids_all[b0:b0 + len(qb)] = ids
                lat.extend([dt] * len(qb))
            wall = time.perf_counter() - t_pass
            qps = nq / wall
            if best is None or qps > best[0]:
                best = (qps, sorted(lat), ids_all)
        qps, lat, ids_all = best
        hits = sum(len(truth[i] & set(ids_all[i].tolist())) for i in range(nq))
        print(json.dumps({
            "index": args.index, "nlist": nlist, "nprobe": nprobe,
            "recall_at_k": round(hits / (nq * k), 4), "qps": round(qps, 1),
            "p50_us": round(quantile(lat, 0.5), 1), "p99_us": round(quantile(lat, 0.99), 1),
            "threads": args.threads, "build_s": round(build_s, 3), "k": k, "nq": nq,
            "batch": batch, "n": n, "dim": dim,
            "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE", "autodetect"),
        }), flush=True)


if __name__ == "__main__":
    main()
