/*
 * bench_index_ivf.c - `quiverbench offline --index ivf|sq8`: IVF with
 * FLAT lists and IVF with SQ8 lists (ivf.h) behind the bench_index.h
 * interface.  --sweep varies nprobe.  nlist defaults to 4 sqrt(n) (at
 * least 1, at most n); the quantiser trains on a sample of 256 x nlist
 * points of the base (the k-means default), as FAISS does.
 */
#include <math.h>

#include "bench_index.h"
#include "quiver/errors.h"
#include "quiver/ivf.h"

#define ADD_CHUNK 65536

static void ivf_defaults(struct qv_bench_params *p, size_t n)
{
    if (p->nlist == 0) {
        double nl = 4.0 * sqrt((double)n);
        p->nlist = nl < 1.0 ? 1 : (uint32_t)nl;
    }
    if (p->nlist > n && n > 0)
        p->nlist = (uint32_t)n;
    if (p->nprobe == 0)
        p->nprobe = p->nlist < 8 ? p->nlist : 8;
}

static void *build(const struct qv_bench_params *p, const float *base, size_t n,
                   enum qv_ivf_encoding enc)
{
    struct qv_ivf_opts o = {
        .dim = p->dim,
        .metric = p->metric,
        .encoding = enc,
        .nlist = p->nlist,
        .seed = p->seed,
        .pool = p->pool,
    };
    struct qv_ivf *ix = qv_ivf_create(&o);
    if (!ix)
        return NULL;
    int rc = qv_ivf_train(ix, base, n);
    for (size_t first = 0; rc == 0 && first < n; first += ADD_CHUNK) {
        size_t cnt = n - first < ADD_CHUNK ? n - first : ADD_CHUNK;
        rc = qv_ivf_add(ix, cnt, base + first * p->dim, NULL);
    }
    if (rc) {
        qv_ivf_free(ix);
        qv_errno = rc;
        return NULL;
    }
    return ix;
}

static void *ivf_build(const struct qv_bench_params *p, const float *base, size_t n)
{
    return build(p, base, n, QV_IVF_FLAT);
}

static void *sq8_build(const struct qv_bench_params *p, const float *base, size_t n)
{
    return build(p, base, n, QV_IVF_SQ8);
}

static int ivf_search(void *ix, const struct qv_bench_params *p, const float *q, size_t nq,
                      uint32_t k, const uint64_t *filter, float *dist, uint64_t *ids)
{
    qv_ivf_set_engine(ix, p->engine);
    return qv_ivf_search(ix, q, nq, k, p->nprobe, filter, dist, ids);
}

static int ivf_save(void *ix, const char *path)
{
    return qv_ivf_save(ix, path);
}

static void *ivf_load(const struct qv_bench_params *p, const char *path)
{
    return qv_ivf_load(path, p->pool);
}

static void ivf_free(void *ix)
{
    qv_ivf_free(ix);
}

const struct qv_bench_index qv__bench_index_ivf = {
    .name = "ivf",
    .sweep_param = "nprobe",
    .defaults = ivf_defaults,
    .build = ivf_build,
    .search = ivf_search,
    .save = ivf_save,
    .load = ivf_load,
    .free = ivf_free,
};

const struct qv_bench_index qv__bench_index_sq8 = {
    .name = "sq8",
    .sweep_param = "nprobe",
    .defaults = ivf_defaults,
    .build = sq8_build,
    .search = ivf_search,
    .save = ivf_save,
    .load = ivf_load,
    .free = ivf_free,
};
