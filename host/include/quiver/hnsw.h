/*
 * hnsw.h - the HNSW graph index (hierarchical navigable small world).
 *
 * An HNSW index is built once over a sealed set of vectors (the DESIGN's
 * sealed segment), then searched, tombstoned and saved; new vectors go to
 * a growing (flat) segment until the next seal.  Build inserts the
 * vectors in parallel on the pool, then renumbers the nodes in graph
 * order (BFS from the entry point) so that vectors and neighbour lists
 * that are visited together lie together in memory.  Rows are the
 * insertion order of the build (row r = vecs[r]); filter bitmaps are
 * indexed by row, as for every index (flat.h), and the index keeps the
 * row <-> node maps.
 *
 * Metrics: L2 (squared), IP (negated inner product) and COSINE (vectors
 * normalised at build, queries at search; distance 1 - cos).
 *
 * Memory: one region laid out exactly like the index file (see
 * host/index/hnsw_int.h), so qv_hnsw_load() maps the file and searches it
 * in place.  The only memory not in the region is the tombstone bitmap
 * (n / 8 bytes, writable) and the search scratch (per concurrent search:
 * a 16-bit visited tag per node plus the candidate lists).
 *
 * Thread-safety: searches may run concurrently with each other from any
 * threads (each takes a scratch slot; no locks on the search path).
 * qv_hnsw_remove must not run concurrently with searches or other
 * removes.  Build and load are not shared until they return.
 */
#ifndef QUIVER_HNSW_H
#define QUIVER_HNSW_H

#include <stddef.h>
#include <stdint.h>

#include "quiver/arena.h"
#include "quiver/dist.h"

struct qv_pool;

#define QV_HNSW_MAX_M 128u          /* M at most this (level 0 gets 2 M) */
#define QV_HNSW_MAX_EF 100000u      /* ef_construction / ef at most this */
#define QV_HNSW_MAX_DIM 65536u
#define QV_HNSW_MAX_N 0x7ffffff0u   /* nodes are 31-bit offsets */
/* Default selectivity under which a filtered search scans the passing rows
 * exactly instead of walking the graph (see qv_hnsw_search). */
#define QV_HNSW_DEFAULT_FLAT_BELOW 0.02

struct qv_hnsw_opts {
    uint32_t dim;                   /* 1 .. 65536 */
    enum qv_metric metric;
    uint32_t M;                     /* links per node on upper levels, 2 ..
                                       128 (level 0: 2 M); 0 = 16 */
    uint32_t ef_construction;       /* candidates kept while inserting,
                                       >= M; 0 = 200 */
    uint32_t ef_search;             /* default ef of searches; 0 = 64 */
    uint64_t seed;                  /* level draws; same seed + one thread
                                       = the same graph */
    double flat_below;              /* filter selectivity (passing rows /
                                       rows) under which search scans the
                                       passing rows exactly; 0 = the
                                       default above, < 0 = never */
    struct qv_pool *pool;           /* borrowed, for build and batched
                                       search; NULL = caller's thread */
    int numa_node;                  /* -1 = unbound */
    enum qv_huge_mode hugepages;
};

struct qv_hnsw;

/*
 * qv_hnsw_build - build an index over n vectors (n x dim float32,
 * row-major; the index keeps its own copy) with ids (n u64, distinct,
 * not QV_ID_NONE; NULL = ids 0 .. n-1).  Runs on opts->pool.
 * Cost: O(n log n * ef_construction * M) distance evaluations.
 * Returns NULL and sets qv_errno: QV_EINVAL (dim, metric, M < 2 or
 * > 128, ef_construction < M, n == 0 or > QV_HNSW_MAX_N, a NaN/Inf value,
 * a repeated or reserved id; the message says which), QV_ENOMEM (nothing
 * is leaked).
 */
struct qv_hnsw *qv_hnsw_build(const struct qv_hnsw_opts *opts, size_t n,
                              const float *vecs, const uint64_t *ids);

/*
 * qv_hnsw_search - approximate k-NN of nq queries (nq x dim float32,
 * row-major).  ef: candidates kept per query, >= k (0 = the index's
 * default ef_search, or k when that is smaller than k).
 * filter: bitmap over qv_hnsw_rows() rows (bit r set = row r eligible),
 * NULL = all.  Tombstoned and ineligible nodes are walked through but
 * never returned.  When the filter passes fewer than flat_below x rows
 * rows (its popcount, computed per call in O(rows / 64)), the passing
 * rows are scanned exactly instead (results are then exact).
 * Results: dist and ids are nq x k, row i ascending by (distance, id);
 * slots beyond what was found hold (+inf, QV_ID_NONE).  Batches of more
 * than one query are split over the pool.  No allocation on the hot path
 * (a scratch slot is allocated only when more searches run at once than
 * ever before, or ef grows past what a slot holds).
 * Returns 0, QV_EINVAL (NULL arrays, nq == 0, k == 0, ef < k or
 * ef > QV_HNSW_MAX_EF; message says which), QV_ENOMEM.
 */
int qv_hnsw_search(struct qv_hnsw *h, const float *queries, size_t nq, uint32_t k,
                   uint32_t ef, const uint64_t *filter, float *dist, uint64_t *ids);

/* Tombstone the vectors with these ids (unknown or already removed ids
 * are ignored).  Returns the number removed.  O(n log rows). */
long qv_hnsw_remove(struct qv_hnsw *h, size_t n, const uint64_t *ids);

size_t qv_hnsw_size(const struct qv_hnsw *h);       /* live vectors */
uint64_t qv_hnsw_rows(const struct qv_hnsw *h);     /* rows incl. tombstones */
uint32_t qv_hnsw_dim(const struct qv_hnsw *h);
enum qv_metric qv_hnsw_metric(const struct qv_hnsw *h);
/* Row of id, or -1 when absent or removed.  O(log rows). */
int64_t qv_hnsw_row_of(const struct qv_hnsw *h, uint64_t id);

struct qv_hnsw_stats {
    uint32_t M, M0, ef_construction, ef_search;
    uint32_t max_level;
    uint64_t links0;            /* level-0 links in use */
    uint64_t region_bytes;      /* the file-shaped region (or mapping) */
    int mapped;                 /* 1 when searching a loaded file in place */
};
void qv_hnsw_stats(const struct qv_hnsw *h, struct qv_hnsw_stats *out);

/*
 * qv_hnsw_save - write the index (tombstones included) to path through
 * ixfile.h (atomic replace).  Returns 0 or QV_EIO (message names the
 * file).  May run concurrently with searches.
 */
int qv_hnsw_save(const struct qv_hnsw *h, const char *path);

/*
 * qv_hnsw_load - map an index file and search it in place (no copy, no
 * pointer fix-ups; every link is checked to be in range once).  pool:
 * borrowed, as in the options.  Returns NULL and sets qv_errno:
 * QV_ENOENT / QV_EIO (cannot open or map), QV_EFORMAT (not an HNSW index
 * file or another version), QV_ECORRUPT (checksum, size or a field out of
 * range), QV_ENOMEM.  Every message names the file.
 */
struct qv_hnsw *qv_hnsw_load(const char *path, struct qv_pool *pool);

/* Release the index (unmaps a loaded file).  qv_hnsw_free(NULL) is a
 * no-op.  No search may be running. */
void qv_hnsw_free(struct qv_hnsw *h);

#endif
