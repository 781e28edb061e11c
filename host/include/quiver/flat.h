/*
 * flat.h - the flat (exact) index over segments.
 *
 * Vectors are stored in segments of a fixed capacity (a multiple of 16)
 * carved from a huge-page, NUMA-bound arena, in the blocked layout of
 * dist.h, with |x|^2 per vector, the u64 id per vector and a live bitmap
 * (tombstones).  Rows are numbered in insertion order across segments; a
 * filter bitmap passed to search is indexed by row (issue: filters evaluate
 * attributes per row).  Removed rows stay as tombstones (never returned).
 *
 * Search is exact: the result of query i is the first k pairs of the full
 * sort of all live, eligible vectors by (distance, id).  With COSINE,
 * vectors are normalised at insert, queries at search, and the distance is
 * 1 - cos.  Work is spread over the pool: a batch is split by queries when
 * there are enough of them to keep every worker's registers full, else by
 * ranges of blocks (one query is always split by blocks) with per-worker
 * heaps merged at the end.
 *
 * Thread-safety: add/remove need exclusive access; searches may run
 * concurrently with each other (they only read) but are serialised by the
 * pool.  Search allocates O(threads * nq * k) scratch per call.
 */
#ifndef QUIVER_FLAT_H
#define QUIVER_FLAT_H

#include <stddef.h>
#include <stdint.h>

#include "quiver/arena.h"
#include "quiver/dist.h"

struct qv_pool;

struct qv_flat_opts {
    uint32_t dim;                   /* 1 .. 65536 */
    enum qv_metric metric;
    uint32_t segment_capacity;      /* vectors per segment, multiple of 16;
                                       0 = 65536 */
    struct qv_pool *pool;           /* borrowed; NULL = caller's thread only */
    int numa_node;                  /* -1 = unbound */
    enum qv_huge_mode hugepages;
    uint32_t prefetch_groups;       /* software prefetch distance for thin
                                       scans (groups of 16); 0 = none */
};

struct qv_flat;

/* Returns NULL and sets qv_errno: QV_EINVAL (dim, metric or capacity out
 * of range; message says which), QV_ENOMEM. */
struct qv_flat *qv_flat_create(const struct qv_flat_opts *opts);

/* Append n vectors (n x dim float32, row-major) with ids (n u64; NULL =
 * consecutive ids continuing from the number of rows).  All or nothing:
 * returns 0, QV_EEXIST (an id is already present or repeated in the
 * batch; message names it; nothing added), QV_EINVAL (a NaN/Inf value;
 * nothing added), QV_ENOMEM (nothing added).  O(n * dim). */
int qv_flat_add(struct qv_flat *f, size_t n, const float *vecs, const uint64_t *ids);

/* Tombstone the vectors with these ids; unknown ids are ignored.  Returns
 * the number removed (>= 0).  O(n). */
long qv_flat_remove(struct qv_flat *f, size_t n, const uint64_t *ids);

size_t qv_flat_size(const struct qv_flat *f);      /* live vectors */
uint64_t qv_flat_rows(const struct qv_flat *f);    /* rows incl. tombstones */
uint32_t qv_flat_dim(const struct qv_flat *f);
/* Row of id, or -1 when absent or removed.  O(1) expected. */
int64_t qv_flat_row_of(const struct qv_flat *f, uint64_t id);

/*
 * qv_flat_search - exact k-NN of nq queries (nq x dim float32, row-major).
 * filter: bitmap of qv_flat_rows() bits, bit r set = row r eligible
 * (word r / 64, bit r % 64); NULL = every live row.  Results: dist and ids
 * are nq x k, row i sorted ascending by (distance, id); slots beyond the
 * number of eligible vectors hold (+inf, QV_ID_NONE).
 * Returns 0, QV_EINVAL (k == 0 or k > 100000, nq == 0, NULL arrays),
 * QV_ENOMEM.
 */
int qv_flat_search(struct qv_flat *f, const float *queries, size_t nq, uint32_t k,
                   const uint64_t *filter, float *dist, uint64_t *ids);

/*
 * qv_flat_search_engine - the same exact search run as one work unit on
 * engine e (engine.h): each segment is a list, each query probes all of
 * them.  The index remembers e (borrowed) and tells it of segments it
 * rewrites or frees (qv_engine_forget), so e must outlive the index or
 * its next search on another engine.  Same arguments and results as qv_flat_search, plus the engine's
 * errors (QV_ENOTSUP: the engine cannot take this unit, e.g. k too large
 * for it; QV_EUNAVAIL).  For running flat search on an accelerator; on
 * the CPU, qv_flat_search is the faster path.
 */
struct qv_engine;
int qv_flat_search_engine(struct qv_flat *f, struct qv_engine *e, const float *queries,
                          size_t nq, uint32_t k, const uint64_t *filter, float *dist,
                          uint64_t *ids);

/*
 * qv_flat_prefetch - start copying every segment (vectors and, for L2,
 * norms) into the device memory of engine e (borrowed), so that the next
 * qv_flat_search_engine on e moves no list bytes: for a batch that waits.
 * Like that search, it makes e the engine the index tells of segments it
 * rewrites or frees (the previous one is told to forget them), so e must
 * outlive the index or its next search on another engine.  NULL e or an
 * empty index: 0.  Cost: O(segments) and one array of them allocated per
 * call; the engine's copies are asynchronous (qv_engine_prefetch,
 * engine.h).  A hint: callers may ignore the result.  Returns the
 * engine's result (>= 0: copies started; < 0: it declined segments), or
 * QV_ENOMEM, QV_ENOTSUP (more than 2^32 rows).  Thread-safety: as
 * qv_flat_search_engine (not against add or remove).
 */
int qv_flat_prefetch(struct qv_flat *f, struct qv_engine *e);

/* Memory of the index: bytes mapped by its arena and used in it. */
void qv_flat_memory(const struct qv_flat *f, struct qv_arena_stats *out);

/* Write the index to path (ixfile.h container, type QV_IX_FLAT; atomic
 * replace).  Returns 0, QV_EIO (message names the file), QV_ENOMEM. */
int qv_flat_save(const struct qv_flat *f, const char *path);

/* Map an index file written by qv_flat_save and search it in place: the
 * vectors, norms and ids are not copied (the live bitmaps and the id map
 * are).  Adds and removes work; an add first copies the last partly filled
 * segment.  pool is borrowed.  Returns NULL and sets qv_errno: QV_ENOENT /
 * QV_EIO, QV_EFORMAT (not a flat index file), QV_ECORRUPT (checksums or
 * sizes wrong; the message names the file), QV_ENOMEM. */
struct qv_flat *qv_flat_load(const char *path, struct qv_pool *pool);

/* qv_flat_free(NULL) is a no-op. */
void qv_flat_free(struct qv_flat *f);

#endif
