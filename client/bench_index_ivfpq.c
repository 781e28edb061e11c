/*
 * bench_index_ivfpq.c - `quiverbench offline --index ivfpq`: the IVF-PQ
 * index (ivfpq.h) behind the bench_index.h interface.  --sweep varies
 * nprobe.  Defaults: nlist = 4 sqrt(n) (1..n), m = dim / 4 when that
 * divides (else the largest divisor of dim <= dim / 2, at most 256),
 * nbits = 4 (fast-scan), refine off.  With --refine > 1 the index keeps
 * the float vectors and re-ranks refine x k candidates exactly (as FAISS's
 * IndexRefineFlat).
 */
#include <math.h>

#include "bench_index.h"
#include "quiver/errors.h"
#include "quiver/ivfpq.h"

#define ADD_CHUNK 65536

static void ivfpq_defaults(struct qv_bench_params *p, size_t n)
{
    if (p->nlist == 0) {
        double nl = 4.0 * sqrt((double)n);
        p->nlist = nl < 1.0 ? 1 : (uint32_t)nl;
    }
    if (p->nlist > n && n > 0)
        p->nlist = (uint32_t)n;
    if (p->nprobe == 0)
        p->nprobe = p->nlist < 8 ? p->nlist : 8;
    if (p->nbits == 0)
        p->nbits = 4;
    if (p->m == 0) {
        uint32_t m = p->dim % 4 == 0 ? p->dim / 4 : p->dim / 2;
        while (m > 1 && (p->dim % m || m > 256))
            m--;
        p->m = m ? m : 1;
    }
}

static void *ivfpq_build(const struct qv_bench_params *p, const float *base, size_t n)
{
    struct qv_ivfpq_opts o = {
        .dim = p->dim,
        .metric = p->metric,
        .nlist = p->nlist,
        .m = p->m,
        .nbits = p->nbits,
        .keep_vectors = p->refine > 1,
        .seed = p->seed,
        .pool = p->pool,
    };
    struct qv_ivfpq *ix = qv_ivfpq_create(&o);
    if (!ix)
        return NULL;
    int rc = qv_ivfpq_train(ix, base, n);
    for (size_t first = 0; rc == 0 && first < n; first += ADD_CHUNK) {
        size_t cnt = n - first < ADD_CHUNK ? n - first : ADD_CHUNK;
        rc = qv_ivfpq_add(ix, cnt, base + first * p->dim, NULL);
    }
    if (rc) {
        qv_ivfpq_free(ix);
        qv_errno = rc;
        return NULL;
    }
    return ix;
}

static int ivfpq_search(void *ix, const struct qv_bench_params *p, const float *q, size_t nq,
                        uint32_t k, const uint64_t *filter, float *dist, uint64_t *ids)
{
    qv_ivfpq_set_engine(ix, p->engine);
    return qv_ivfpq_search(ix, q, nq, k, p->nprobe, p->refine, filter, dist, ids);
}

static int ivfpq_save(void *ix, const char *path)
{
    return qv_ivfpq_save(ix, path);
}

static void *ivfpq_load(const struct qv_bench_params *p, const char *path)
{
    return qv_ivfpq_load(path, p->pool);
}

static void ivfpq_free(void *ix)
{
    qv_ivfpq_free(ix);
}

const struct qv_bench_index qv__bench_index_ivfpq = {
    .name = "ivfpq",
    .sweep_param = "nprobe",
    .defaults = ivfpq_defaults,
    .build = ivfpq_build,
    .search = ivfpq_search,
    .save = ivfpq_save,
    .load = ivfpq_load,
    .free = ivfpq_free,
};
