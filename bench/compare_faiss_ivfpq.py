#!/usr/bin/env python3
"""compare_faiss_ivfpq.py - the FAISS side of the IVF-PQ comparison.

Builds FAISS's IVF-PQ on a TEXMEX directory (DIR/base.fvecs,
DIR/query.fvecs, DIR/groundtruth.ivecs) with the same nlist, m and nbits
as `quiverbench offline --index ivfpq`, sweeps nprobe and prints one JSON
line per nprobe:

  {index, nlist, m, nbits, nprobe, refine, recall_at_k, qps, p50_us,
   threads, build_s} (plus k, nq, batch, n, dim, faiss_version)

nbits 4 uses the fast-scan index (IndexIVFPQFastScan, residual encoding,
as quiver); nbits 8 uses IndexIVFPQ.  --refine R > 1 wraps the index in
IndexRefineFlat with k_factor R (re-rank R*k candidates exactly), as
quiver's --refine.  Semantics match quiverbench offline: queries searched
in batches of --batch; a query's latency is its batch's latency; QPS =
queries / wall time of the pass; --repeat keeps the best-QPS pass;
recall@k = |first k returned & first k true| / k averaged.

OPENBLAS_CORETYPE is set to SkylakeX on AVX-512 CPUs before FAISS loads
(see compare_faiss.py: the bundled OpenBLAS does not know Zen 5).
"""

import argparse
import json
import os
import sys
import time


def read_vecs(path, dtype):
    import numpy as np
    raw = np.memmap(path, dtype=np.int32, mode="r")
    if raw.size == 0:
        sys.exit(f"compare_faiss_ivfpq.py: {path}: the file is empty")
    d = int(raw[0])
    if d <= 0 or raw.size % (d + 1) != 0:
        sys.exit(f"compare_faiss_ivfpq.py: {path}: not an fvecs/ivecs file (d={d})")
    return raw.reshape(-1, d + 1)[:, 1:].view(dtype)


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
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--nlist", type=int, required=True)
    ap.add_argument("--m", type=int, required=True)
    ap.add_argument("--nbits", type=int, choices=[4, 8], default=4)
    ap.add_argument("--refine", type=int, default=0)
    ap.add_argument("--sweep", default="1,2,4,8,16,32,64",
                    help="comma-separated nprobe values")
    ap.add_argument("--nq", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()

    if cpu_has_avx512f():
        os.environ["OPENBLAS_CORETYPE"] = "SkylakeX"
    import numpy as np
    import faiss

    base = read_vecs(os.path.join(args.data, "base.fvecs"), np.float32)
    queries = read_vecs(os.path.join(args.data, "query.fvecs"), np.float32)
    gt = read_vecs(os.path.join(args.data, "groundtruth.ivecs"), np.int32)
    n, dim = base.shape
    nq = queries.shape[0] if args.nq is None else min(args.nq, queries.shape[0])
    k = args.k
    if k > gt.shape[1]:
        sys.exit(f"compare_faiss_ivfpq.py: --k {k}: ground truth has {gt.shape[1]} columns")
    if dim % args.m:
        sys.exit(f"compare_faiss_ivfpq.py: --m {args.m} does not divide dim {dim}")
    q = np.ascontiguousarray(queries[:nq])
    batch = max(1, min(args.batch, nq))
    faiss.omp_set_num_threads(args.threads)

    t0 = time.perf_counter()
    quantizer = faiss.IndexFlatL2(dim)
    if args.nbits == 4:
        ivf = faiss.IndexIVFPQFastScan(quantizer, dim, args.nlist, args.m, 4)
        name = "faiss.IndexIVFPQFastScan"
    else:
        ivf = faiss.IndexIVFPQ(quantizer, dim, args.nlist, args.m, 8)
        name = "faiss.IndexIVFPQ"
    index = ivf
    if args.refine > 1:
        index = faiss.IndexRefineFlat(ivf)
        index.k_factor = args.refine
        name += "+RefineFlat"
    index.train(np.ascontiguousarray(base))
    for first in range(0, n, 65536):
        index.add(np.ascontiguousarray(base[first:first + 65536]))
    build_s = time.perf_counter() - t0

    truth = gt[:nq, :k]
    for nprobe in [int(v) for v in args.sweep.split(",")]:
        ivf.nprobe = min(nprobe, args.nlist)
        ids = np.empty((nq, k), dtype=np.int64)
        best_qps, best_lat = 0.0, None
        for _ in range(args.repeat):
            lat = np.empty(nq)
            p0 = time.perf_counter()
            for b in range(0, nq, batch):
                t1 = time.perf_counter()
                _, ib = index.search(q[b:b + batch], k)
                t2 = time.perf_counter()
                ids[b:b + len(ib)] = ib
                lat[b:b + len(ib)] = (t2 - t1) * 1e6
            qps = nq / (time.perf_counter() - p0)
            if best_lat is None or qps > best_qps:
                best_qps, best_lat = qps, lat
        hits = sum(len(set(ids[i].tolist()) & set(truth[i].tolist())) for i in range(nq))
        print(json.dumps({
            "index": name, "nlist": args.nlist, "m": args.m, "nbits": args.nbits,
            "nprobe": ivf.nprobe, "refine": args.refine,
            "recall_at_k": hits / (nq * k), "qps": best_qps,
            "p50_us": float(np.median(best_lat)), "threads": args.threads,
            "build_s": build_s, "k": k, "nq": nq, "batch": batch, "n": int(n),
            "dim": int(dim), "faiss_version": faiss.__version__,
        }), flush=True)


if __name__ == "__main__":
    main()
