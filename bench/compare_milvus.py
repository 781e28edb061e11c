#!/usr/bin/env python3
"""compare_milvus.py - the peer for bench/run_net.sh: Milvus Lite (pymilvus
with milvus-lite, in a virtual environment: never a test dependency)
serving the same data over its own API, measured the way quiverbench net
measures quiverd in closed loop with one request in flight: each query's
round trip through the client library, recall@k against the data set's
ground truth, p50/p95/p99/p999 in microseconds.

  python3 -m venv build/venv-milvus
  build/venv-milvus/bin/pip install pymilvus milvus-lite
  build/venv-milvus/bin/python bench/compare_milvus.py --data ../shared/data/siftsmall

Milvus Lite keeps its data in a local file and serves it from a server
process of its own (gRPC on a local socket); its index here is FLAT
(exact), like the flat collection quiverbench net measures.  Prints one
JSON line (the keys of quiverbench net --json).
"""
import argparse
import json
import os
import tempfile
import time

import numpy as np
from pymilvus import MilvusClient


def vecs(path, dtype):
    a = np.fromfile(path, dtype=np.int32)
    d = int(a[0])
    return a.reshape(-1, d + 1)[:, 1:].view(dtype)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--queries", type=int, default=2000, help="queries sent (cycling)")
    ap.add_argument("--warmup", type=int, default=100)
    a = ap.parse_args()
    base = vecs(os.path.join(a.data, "base.fvecs"), np.float32)
    qs = vecs(os.path.join(a.data, "query.fvecs"), np.float32)
    gt = vecs(os.path.join(a.data, "groundtruth.ivecs"), np.int32)
    tmp = tempfile.mkdtemp(prefix="qv-milvus-")
    t0 = time.time()
    c = MilvusClient(os.path.join(tmp, "bench.db"))
    c.create_collection("bench", dimension=base.shape[1], metric_type="L2",
                        index_type="FLAT")
    step = 2000
    for i in range(0, len(base), step):
        c.insert("bench", [{"id": int(j), "vector": base[j].tolist()}
                           for j in range(i, min(i + step, len(base)))])
    c.flush("bench") if hasattr(c, "flush") else None
    load_s = time.time() - t0
    for i in range(a.warmup):
        c.search("bench", data=[qs[i % len(qs)].tolist()], limit=a.k)
    lat, hits, n = [], 0, 0
    t1 = time.perf_counter()
    for i in range(a.queries):
        qi = i % len(qs)
        s = time.perf_counter()
        r = c.search("bench", data=[qs[qi].tolist()], limit=a.k)
        lat.append((time.perf_counter() - s) * 1e6)
        ids = [h["id"] for h in r[0]]
        hits += len(set(ids[:a.k]) & set(int(x) for x in gt[qi][:a.k]))
        n += 1
    wall = time.perf_counter() - t1
    lat.sort()

    def q(p):
        return lat[min(len(lat) - 1, int(p * len(lat)))]

    print(json.dumps({"peer": "milvus-lite", "index": "FLAT", "k": a.k,
                      "recall_at_k": hits / (n * a.k), "qps": n / wall,
                      "p50_us": q(0.50), "p95_us": q(0.95), "p99_us": q(0.99),
                      "p999_us": q(0.999), "load_s": load_s, "inflight": 1}))
    c.close()


if __name__ == "__main__":
    main()
