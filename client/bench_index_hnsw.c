/*
 * bench_index_hnsw.c - `quiverbench offline --index hnsw`: the HNSW graph
 * index (hnsw.h) behind the bench_index.h interface.  Parameters: --M
 * (default 16), --ef-construction (default 200), --ef (default 64; the
 * sweep parameter, raised to k when smaller).  The build runs on the
 * bench's pool (--threads); searches of one query per call run on the
 * caller's thread.
 */
#include "bench_index.h"
#include "quiver/arena.h"
#include "quiver/errors.h"
#include "quiver/hnsw.h"

static void hnsw_defaults(struct qv_bench_params *p, size_t n)
{
    (void)n;
    if (p->M == 0)
        p->M = 16;
    if (p->ef_construction == 0)
        p->ef_construction = 200;
    if (p->ef == 0)
        p->ef = 64;
}

static void *hnsw_build(const struct qv_bench_params *p, const float *base, size_t n)
{
    struct qv_hnsw_opts o = {
        .dim = p->dim,
        .metric = p->metric,
        .M = p->M,
        .ef_construction = p->ef_construction,
        .ef_search = p->ef,
        .seed = p->seed,
        .pool = p->pool,
        .numa_node = p->numa_node,
        .hugepages = (enum qv_huge_mode)p->hugepages,
    };
    return qv_hnsw_build(&o, n, base, NULL);
}

static int hnsw_search(void *ix, const struct qv_bench_params *p, const float *q, size_t nq,
                       uint32_t k, const uint64_t *filter, float *dist, uint64_t *ids)
{
    if (p->engine)
        return qv_seterr(QV_ENOTSUP, "--engine: HNSW walks its graph on the CPU; engines "
                         "run the list scans of the flat and IVF indexes");
    uint32_t ef = p->ef < k ? k : p->ef;
    return qv_hnsw_search(ix, q, nq, k, ef, filter, dist, ids);
}

static int hnsw_save(void *ix, const char *path)
{
    return qv_hnsw_save(ix, path);
}

static void *hnsw_load(const struct qv_bench_params *p, const char *path)
{
    return qv_hnsw_load(path, p->pool);
}

static void hnsw_free(void *ix)
{
    qv_hnsw_free(ix);
}

const struct qv_bench_index qv__bench_index_hnsw = {
    .name = "hnsw",
    .sweep_param = "ef",
    .defaults = hnsw_defaults,
    .build = hnsw_build,
    .search = hnsw_search,
    .save = hnsw_save,
    .load = hnsw_load,
    .free = hnsw_free,
};
