/*
 * ivf.h - the inverted-file index (IVF) with FLAT or SQ8 list encodings.
 *
 * A coarse quantiser of nlist centroids (k-means, kmeans.h, trained on a
 * sample) splits the vectors into nlist inverted lists; a query scans only
 * the nprobe lists whose centroids are nearest to it.  Lists are
 * contiguous, 64-byte aligned blocks (the unit an accelerator receives):
 *   QV_IVF_FLAT  float32 in the blocked layout of dist.h + |x|^2 per entry
 *   QV_IVF_SQ8   uint8 codes, one per dimension, row-major (sq8.h), with
 *                one per-dimension range trained on the training set
 * plus the u64 id and u32 row of each entry.  Rows number the vectors in
 * insertion order (0, 1, ...); the filter bitmap of search is indexed by
 * row, as in flat.h.  (IVF-PQ is ivfpq.h.)
 *
 * Search = probe selection on the CPU (the batched scan over the
 * centroids, k = nprobe), then ONE work unit (engine.h) carrying every
 * (query, probed list) pair, executed by the index's CPU engine (parallel
 * over queries or over lists, see host/engine/engine_cpu.c), then a sort
 * of each query's heap.  Metrics: L2; IP; COSINE = vectors normalised at
 * add, queries at search, IP underneath, distance reported as 1 - cos.
 * With nprobe = nlist and FLAT lists the result equals an exact (flat)
 * search up to float rounding.
 *
 * Thread-safety: add / remove / train need exclusive access.  Searches
 * may be called from several threads: they are serialised by a mutex of
 * the index (the engine's scratch is shared) and run in parallel on the
 * pool inside.
 */
#ifndef QUIVER_IVF_H
#define QUIVER_IVF_H

#include <stddef.h>
#include <stdint.h>

#include "quiver/dist.h"

struct qv_pool;

enum qv_ivf_encoding {
    QV_IVF_FLAT = 0,
    QV_IVF_SQ8 = 1,
};

struct qv_ivf_opts {
    uint32_t dim;                   /* 1 .. 65536 */
    enum qv_metric metric;
    enum qv_ivf_encoding encoding;
    uint32_t nlist;                 /* lists, >= 1 (and <= training points) */
    uint32_t kmeans_iters;          /* 0 = 20 */
    size_t train_points;            /* k-means sample; 0 = 256 * nlist */
    uint64_t seed;                  /* k-means seed */
    struct qv_pool *pool;           /* borrowed; NULL = caller's thread */
};

struct qv_ivf;

/* An empty, untrained index.  Returns NULL and sets qv_errno: QV_EINVAL
 * (dim, metric, encoding or nlist out of range; the message says which),
 * QV_ENOMEM. */
struct qv_ivf *qv_ivf_create(const struct qv_ivf_opts *opts);

/* Train the quantiser (and, for SQ8, the per-dimension ranges) on n
 * vectors (n x dim, row-major; borrowed for the call).  Only an empty
 * index can be trained; training again replaces the centroids.  Returns
 * 0, QV_EINVAL (nlist > n, a non-finite value, vectors already added),
 * QV_ENOMEM.  O(iters * sample * nlist * dim). */
int qv_ivf_train(struct qv_ivf *ix, const float *x, size_t n);

/* Append n vectors (n x dim) with ids (NULL = their row numbers).  Each
 * goes to the list of its nearest centroid; a list grows by qv_realloc of
 * its arrays to twice its capacity (amortised O(1) per vector; a list's
 * memory moves on growth, so units must not be in flight during add).
 * All or nothing: 0, QV_EINVAL (not trained, a non-finite value, id
 * QV_ID_NONE, more than 2^32 - 2 rows), QV_EEXIST (an id present or
 * repeated; message names it), QV_ENOMEM.  Works on a loaded index too:
 * a list still in the file mapping is copied to the heap the first time
 * it grows (copy-on-write). */
int qv_ivf_add(struct qv_ivf *ix, size_t n, const float *vecs, const uint64_t *ids);

/* Tombstone the vectors with these ids (unknown ids ignored); they are
 * never returned again.  Returns the number removed, or QV_ENOMEM when
 * the id map of a loaded index could not be built.  The entries stay in
 * their lists (scanned, then filtered out) until the index is rebuilt. */
long qv_ivf_remove(struct qv_ivf *ix, size_t n, const uint64_t *ids);

/*
 * qv_ivf_search - approximate k-NN of nq queries (nq x dim, row-major)
 * scanning each query's nprobe nearest lists (nprobe > nlist is lowered
 * to nlist).  filter: bitmap of qv_ivf_rows() bits (bit r set = row r
 * eligible) or NULL.  dist and ids are nq x k, each row sorted ascending
 * by (distance, id); missing results are (+inf, QV_ID_NONE).  Returns 0,
 * QV_EINVAL (not trained, nq == 0, k == 0 or > 100000, nprobe == 0, NULL
 * arrays), QV_ENOMEM.  Allocates O(nq (nprobe + k)) scratch per call.
 */
int qv_ivf_search(struct qv_ivf *ix, const float *queries, size_t nq, uint32_t k,
                  uint32_t nprobe, const uint64_t *filter, float *dist, uint64_t *ids);

/*
 * qv_ivf_prefetch - start copying the lists that qv_ivf_search of these
 * queries (nq x dim, row-major) with this nprobe will scan into the device
 * memory of the index's engine (qv_ivf_set_engine), so that the search,
 * when it comes, moves no list bytes: for a batch that waits (a batcher's
 * arrival hook).  The probes are selected exactly as search selects them
 * (the same code); the distinct lists go to the engine as one prefetch
 * (qv_engine_prefetch, engine.h), with the probes, which the router's
 * cost model reads.  No engine set (the CPU engine): returns 0 at once.
 * Cost: one coarse quantisation of the queries, O(nq * nlist * dim) on
 * the pool, plus O(nq * nprobe + nlist) scratch allocated per call; the
 * engine's copies are asynchronous (it does not wait for them).  A hint:
 * the result never affects a later search, and callers may ignore it.
 * Returns the engine's result (>= 0: copies started; a negative QV_E*
 * when it declined lists, see engine.h), or QV_EINVAL (NULL queries, not
 * trained, nq == 0, nprobe == 0), QV_ENOMEM.  Thread-safety: as search
 * (serialised with searches by the index's mutex).
 */
int qv_ivf_prefetch(struct qv_ivf *ix, const float *queries, size_t nq, uint32_t nprobe);

size_t qv_ivf_size(const struct qv_ivf *ix);        /* live vectors */
uint64_t qv_ivf_rows(const struct qv_ivf *ix);      /* rows incl. tombstones */
uint32_t qv_ivf_nlist(const struct qv_ivf *ix);
uint32_t qv_ivf_dim(const struct qv_ivf *ix);
/* Entries (tombstones included) of list l < nlist. */
uint32_t qv_ivf_list_size(const struct qv_ivf *ix, uint32_t l);
/* Centroids (nlist x dim, row-major; owned by the index) or NULL before
 * training. */
const float *qv_ivf_centroids(const struct qv_ivf *ix);

/*
 * qv_ivf_save - write the index to path (ixfile.h container, type
 * QV_IX_IVF_FLAT or QV_IX_IVF_SQ8; sections listed in ivf.c).  Returns 0,
 * QV_EINVAL (not trained), QV_ENOMEM, QV_EIO (message names the file).
 */
int qv_ivf_save(const struct qv_ivf *ix, const char *path);

/*
 * qv_ivf_load - map an index file; the lists point into the mapping (no
 * copy; the mapping lives until qv_ivf_free).  pool is borrowed.  Returns
 * NULL and sets qv_errno: QV_ENOENT / QV_EIO, QV_EFORMAT (not an IVF
 * file), QV_ECORRUPT (checksum, size or an inconsistent section; the
 * message names the file), QV_ENOMEM.
 */
struct qv_ivf *qv_ivf_load(const char *path, struct qv_pool *pool);

/* qv_ivf_free(NULL) is a no-op. */
void qv_ivf_free(struct qv_ivf *ix);

/* Run this index's list scans on `engine` (borrowed; it must outlive its
 * use here) instead of the index's own CPU engine; NULL goes back to the
 * CPU engine.  An engine that refuses or fails a unit makes the search
 * fail with its error (the router re-dispatches; the index does not).
 * The index tells the engine of lists it rewrites or frees (adds, free,
 * switching engines: qv_engine_forget), so the engine must outlive the
 * index or be detached first (set_engine NULL).
 * Not thread-safe against searches in flight. */
struct qv_engine;
void qv_ivf_set_engine(struct qv_ivf *ix, struct qv_engine *engine);

#endif
