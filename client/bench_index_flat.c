/*
 * bench_index_flat.c - `quiverbench offline --index flat`: the exact index
 * (flat.h) behind the bench_index.h interface.  No sweep parameter.
 */
#include "bench_index.h"
#include "quiver/arena.h"
#include "quiver/errors.h"
#include "quiver/flat.h"

#define ADD_CHUNK 65536

static void flat_defaults(struct qv_bench_params *p, size_t n)
{
    (void)p;
    (void)n;
}

static void *flat_build(const struct qv_bench_params *p, const float *base, size_t n)
{
    struct qv_flat_opts o = {
        .dim = p->dim,
        .metric = p->metric,
        .segment_capacity = p->segment_capacity,
        .pool = p->pool,
        .numa_node = p->numa_node,
        .hugepages = (enum qv_huge_mode)p->hugepages,
        .prefetch_groups = p->prefetch_groups,
    };
    struct qv_flat *f = qv_flat_create(&o);
    if (!f)
        return NULL;
    for (size_t first = 0; first < n; first += ADD_CHUNK) {
        size_t cnt = n - first < ADD_CHUNK ? n - first : ADD_CHUNK;
        if (qv_flat_add(f, cnt, base + first * p->dim, NULL) != 0) {
            int e = qv_errno;
            qv_flat_free(f);
            qv_errno = e;
            return NULL;
        }
    }
    return f;
}

static int flat_search(void *ix, const struct qv_bench_params *p, const float *q, size_t nq,
                       uint32_t k, const uint64_t *filter, float *dist, uint64_t *ids)
{
    if (p->engine)
        return qv_flat_search_engine(ix, p->engine, q, nq, k, filter, dist, ids);
    return qv_flat_search(ix, q, nq, k, filter, dist, ids);
}

static int flat_save(void *ix, const char *path)
{
    return qv_flat_save(ix, path);
}

static void *flat_load(const struct qv_bench_params *p, const char *path)
{
    return qv_flat_load(path, p->pool);
}

static void flat_free(void *ix)
{
    qv_flat_free(ix);
}

const struct qv_bench_index qv__bench_index_flat = {
    .name = "flat",
    .sweep_param = NULL,
    .defaults = flat_defaults,
    .build = flat_build,
    .search = flat_search,
    .save = flat_save,
    .load = flat_load,
    .free = flat_free,
};
