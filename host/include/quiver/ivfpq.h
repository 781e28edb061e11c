/*
 * ivfpq.h - the IVF-PQ index: a coarse quantiser (k-means centroids) and,
 * per list, product-quantised residuals (pq.h) scanned with asymmetric
 * distance tables; 4-bit codes use the SIMD fast-scan.
 *
 * Layout.  List l holds its entries' residual codes r = x - c_l
 * contiguously and 64-byte aligned (the fast-scan block layout of pq.h
 * for nbits 4, flat m-byte codes for nbits 8), with a u64 id and a u32
 * row per entry.  Rows are numbered in insertion order; a filter bitmap
 * passed to search is indexed by row.  Removed rows stay as tombstones
 * (a live bitmap), never returned.  With keep_vectors the original float
 * vectors are kept by row, for re-ranking (as FAISS's IndexRefineFlat).
 *
 * Search of a batch: (1) probe selection on the CPU: the fused batched
 * scan (dist.h) over the centroids gives each query its nprobe nearest
 * lists; (2) per-query distance tables; (3) one QV_WU_PQ work unit (CSR
 * probes) run on the CPU engine (engine.h), which scans the lists into
 * per-query heaps of k (or refine * k) estimates; (4) with refine > 1,
 * the candidates are re-ranked with exact distances to the kept vectors;
 * (5) results sorted by (distance, id).
 *
 * Metrics: L2 (squared) and IP (negated inner product); COSINE normalises
 * vectors at add and queries at search and reports 1 - cos.
 *
 * Thread-safety: train/add/remove need exclusive access; searches may
 * run concurrently with each other only through separate indexes (the
 * engine's scratch is per index): serialise searches on one index.
 */
#ifndef QUIVER_IVFPQ_H
#define QUIVER_IVFPQ_H

#include <stddef.h>
#include <stdint.h>

#include "quiver/dist.h"

struct qv_pool;

struct qv_ivfpq_opts {
    uint32_t dim;                   /* 1 .. 65536, a multiple of m */
    enum qv_metric metric;
    uint32_t nlist;                 /* lists, >= 1 (<= training points) */
    uint32_t m;                     /* sub-quantisers, 1 .. 256 */
    uint32_t nbits;                 /* 4 (fast-scan) or 8 */
    int keep_vectors;               /* keep float vectors for refine */
    uint32_t kmeans_iters;          /* 0 = 20 */
    size_t train_points;            /* sample for both k-means; 0 = 256 *
                                       max(nlist, 2^nbits) */
    uint64_t seed;
    struct qv_pool *pool;           /* borrowed; NULL = caller's thread */
};

struct qv_ivfpq;

/* Returns NULL and sets qv_errno: QV_EINVAL (a bad option; the message
 * says which), QV_ENOMEM. */
struct qv_ivfpq *qv_ivfpq_create(const struct qv_ivfpq_opts *opts);

/* Train the coarse quantiser and the PQ codebooks (on residuals) from n
 * vectors (n x dim).  Once only; 0, QV_EINVAL (already trained, n <
 * nlist or n < 2^nbits, NaN/Inf), QV_ENOMEM.  O(iters * n * (nlist +
 * 2^nbits) * dim). */
int qv_ivfpq_train(struct qv_ivfpq *ix, const float *x, size_t n);

/* Append n vectors (n x dim) with ids (NULL = consecutive ids from the
 * number of rows).  All or nothing: 0, QV_EINVAL (not trained, NaN/Inf),
 * QV_EEXIST (an id present or repeated; message names it), QV_ENOMEM.
 * O(n * (nlist + 2^nbits) * dim). */
int qv_ivfpq_add(struct qv_ivfpq *ix, size_t n, const float *vecs, const uint64_t *ids);

/* Tombstone these ids; unknown ids ignored.  Returns how many were
 * removed (>= 0) or QV_ENOMEM (a loaded index copies its lists out of
 * the file first).  O(n). */
long qv_ivfpq_remove(struct qv_ivfpq *ix, size_t n, const uint64_t *ids);

/*
 * qv_ivfpq_search - k approximate nearest neighbours of nq queries (nq x
 * dim), probing nprobe lists each (clamped to nlist), re-ranking refine *
 * k candidates exactly when refine > 1.  filter: row bitmap of
 * qv_ivfpq_rows() bits (bit set = eligible) or NULL.  dist / ids: nq x k,
 * each row ascending by (distance, id), unfilled slots (+inf,
 * QV_ID_NONE).  Without refine the distances are PQ estimates.
 * Returns 0, QV_EINVAL (not trained, k == 0 or > 100000, nq == 0,
 * nprobe == 0, refine > 1 without keep_vectors), QV_ENOMEM.
 */
int qv_ivfpq_search(struct qv_ivfpq *ix, const float *queries, size_t nq, uint32_t k,
                    uint32_t nprobe, uint32_t refine, const uint64_t *filter, float *dist,
                    uint64_t *ids);

/*
 * qv_ivfpq_prefetch - start copying the lists (their codes) that
 * qv_ivfpq_search of these queries (nq x dim) with this nprobe will scan
 * into the device memory of the index's engine (qv_ivfpq_set_engine), so
 * that the search moves no list bytes: for a batch that waits.  Probes
 * are selected exactly as search selects them (the same code); the
 * distinct lists go to the engine as one prefetch (qv_engine_prefetch,
 * engine.h) with the probes.  The PQ query tables are per query: not
 * prefetched.  No engine set: returns 0 at once.  Cost: one coarse
 * quantisation of the queries, O(nq * nlist * dim) on the pool, plus
 * O(nq * nprobe + nlist) scratch per call; the copies are asynchronous.
 * A hint: callers may ignore the result.  Returns the engine's result
 * (>= 0: copies started; < 0: it declined lists, see engine.h), or
 * QV_EINVAL (not trained, NULL queries, nq == 0, nprobe == 0), QV_ENOMEM.
 * Thread-safety: as search (serialise with searches on one index).
 */
int qv_ivfpq_prefetch(struct qv_ivfpq *ix, const float *queries, size_t nq, uint32_t nprobe);

size_t qv_ivfpq_size(const struct qv_ivfpq *ix);        /* live vectors */
uint64_t qv_ivfpq_rows(const struct qv_ivfpq *ix);      /* rows incl. tombstones */
uint32_t qv_ivfpq_nlist(const struct qv_ivfpq *ix);
uint32_t qv_ivfpq_dim(const struct qv_ivfpq *ix);

/* Write the index to path (ixfile.h; atomic).  0, QV_EINVAL (not
 * trained), QV_EIO (message names the file), QV_ENOMEM. */
int qv_ivfpq_save(const struct qv_ivfpq *ix, const char *path);

/* Map an index file: lists, codebooks and vectors point into the mapping
 * (no copy; the id -> row map is rebuilt, O(rows)).  A later add/remove
 * copies the lists out first.  NULL + qv_errno: QV_ENOENT/QV_EIO,
 * QV_EFORMAT, QV_ECORRUPT (checksum, size or a field out of range; the
 * message names the file), QV_ENOMEM.  pool is borrowed. */
struct qv_ivfpq *qv_ivfpq_load(const char *path, struct qv_pool *pool);

/* qv_ivfpq_free(NULL) is a no-op. */
void qv_ivfpq_free(struct qv_ivfpq *ix);

/* Run this index's list scans on `engine` (borrowed; it must outlive its
 * use here) instead of the index's own CPU engine; NULL goes back to the
 * CPU engine.  An engine that refuses or fails a unit makes the search
 * fail with its error (the router re-dispatches; the index does not).
 * The index tells the engine of lists it rewrites or frees (adds, free,
 * switching engines: qv_engine_forget), so the engine must outlive the
 * index or be detached first (set_engine NULL).
 * Not thread-safe against searches in flight. */
struct qv_engine;
void qv_ivfpq_set_engine(struct qv_ivfpq *ix, struct qv_engine *engine);

#endif
