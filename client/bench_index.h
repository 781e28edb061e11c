/*
 * bench_index.h - how `quiverbench offline` drives an index type.
 *
 * Each index type is one file, client/bench_index_<name>.c, defining a
 * `const struct qv_bench_index qv__bench_index_<name>` and listed in
 * bench_index.c's table.  offline parses the common flags into
 * struct qv_bench_params, calls build() once over the whole base, then
 * search() per batch, with the parameter named by sweep_param varied by
 * --sweep.  All functions report errors through qv_errmsg().
 */
#ifndef QV_BENCH_INDEX_H
#define QV_BENCH_INDEX_H

#include <stddef.h>
#include <stdint.h>

#include "quiver/dist.h"

struct qv_pool;
struct qv_engine;

struct qv_bench_params {
    enum qv_metric metric;
    uint32_t dim;
    /* IVF family */
    uint32_t nlist;             /* 0 = the index's default for n */
    uint32_t nprobe;
    uint32_t m;                 /* PQ sub-quantisers */
    uint32_t nbits;             /* PQ bits per code (4 or 8) */
    uint32_t refine;            /* re-rank refine * k candidates; 0/1 = off */
    /* HNSW */
    uint32_t M;
    uint32_t ef_construction;
    uint32_t ef;
    uint64_t seed;
    struct qv_pool *pool;
    unsigned threads;
    /* flat and memory placement, from the configuration */
    uint32_t segment_capacity;
    uint32_t prefetch_groups;
    int numa_node;
    int hugepages;              /* enum qv_huge_mode */
    /* --engine: where list scans run (borrowed); NULL = the index's own
     * CPU path */
    struct qv_engine *engine;
};

struct qv_bench_index {
    const char *name;           /* --index value */
    const char *sweep_param;    /* "nprobe", "ef", or NULL: no sweep */
    /* Fill defaults that depend on n (e.g. nlist = 4 sqrt(n)). */
    void (*defaults)(struct qv_bench_params *p, size_t n);
    /* Build over base (n x dim); NULL + qv_errno/qv_errmsg on failure. */
    void *(*build)(const struct qv_bench_params *p, const float *base, size_t n);
    /* Search nq queries; filter: row bitmap or NULL.  0 or QV_E*. */
    int (*search)(void *ix, const struct qv_bench_params *p, const float *q, size_t nq,
                  uint32_t k, const uint64_t *filter, float *dist, uint64_t *ids);
    /* Save to path and load back (for --save / --load); may be NULL. */
    int (*save)(void *ix, const char *path);
    void *(*load)(const struct qv_bench_params *p, const char *path);
    void (*free)(void *ix);
};

/* The exact index, also used to score --filter runs. */
extern const struct qv_bench_index qv__bench_index_flat;

/* The table of index types (bench_index.c); NULL-terminated. */
extern const struct qv_bench_index *const qv__bench_indexes[];
const struct qv_bench_index *qv__bench_index_find(const char *name);

#endif
