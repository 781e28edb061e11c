/*
 * node_search.c - a collection's search, as the query service's CUSTOM
 * callback (node.h, "Search"), its prefetch, and the transports' check of
 * a search request (qv_node_search_prepare).
 *
 * qv__node_search runs on the service's dispatcher thread only, and reads
 * the collection's slot table, segments, indexes, ids[] and attribute
 * columns without a lock: writers change them only while the service is
 * paused, that is while this thread is parked between batches.
 *
 * One call, nq queries, k:
 *   parse the filter once (names of the collection's attributes);
 *   for each segment with rows:
 *     filter -> bitmap of its rows (none passing: skip the segment)
 *     search it for kk = k (IVF-PQ with refine > 1: refine x k, capped)
 *       flat    qv_flat_search_engine on the node's engine (the CPU path
 *               qv_flat_search when there is none, or when the engine
 *               refuses the unit), on the node's pool
 *       IVF     qv_ivf_search with nprobe (its engine: the node's)
 *       IVF-PQ  qv_ivfpq_search, then exact distances to the kept
 *               vectors of the refine x k candidates
 *       HNSW    qv_hnsw_search in chunks of HNSW_CHUNK queries over the
 *               node's pool (the index's own pool is NULL: node.h)
 *     keys -> user ids (segment ids[]), pushed into one top-k heap per
 *     query, which lives in the caller's dist / ids rows;
 *   sort each heap by (distance, id).
 * Scratch (allocated per call, as the indexes' own search scratch):
 * nq x kk results, one bitmap of the largest segment, the heaps.
 */
#include <stdio.h>
#include <string.h>

#include "node_int.h"
#include "quiver/alloc.h"
#include "quiver/errors.h"
#include "quiver/flat.h"
#include "quiver/hnsw.h"
#include "quiver/ivf.h"
#include "quiver/ivfpq.h"
#include "quiver/pool.h"
#include "quiver/service.h"
#include "quiver/topk.h"

#define HNSW_CHUNK 4u                   /* queries per pool task */

struct hnsw_run {
    struct qv_hnsw *h;
    const float *q;
    size_t nq;
    uint32_t dim, k, ef;
    const uint64_t *filter;
    float *d;
    uint64_t *i;
    _Atomic int rc;
};

static void hnsw_task(void *arg, unsigned task, unsigned worker)
{
    struct hnsw_run *R = arg;
    size_t q0 = (size_t)task * HNSW_CHUNK, n = R->nq - q0 < HNSW_CHUNK ? R->nq - q0
                                                                           : HNSW_CHUNK;
    int rc;

    (void)worker;
    rc = qv_hnsw_search(R->h, R->q + q0 * R->dim, n, R->k, R->ef, R->filter,
                        R->d + q0 * R->k, R->i + q0 * R->k);
    if (rc != 0)
        atomic_store_explicit(&R->rc, rc, memory_order_relaxed);
}

/* One segment's kk nearest of the nq queries into d / i (nq x kk). */
static int seg_search(const struct ncoll *c, const struct nseg *s, const float *q, size_t nq,
                      uint32_t kk, uint32_t p1, const uint64_t *filter, float *d,
                      uint64_t *i)
{
    struct qv_engine *e = c->node->o.engine;
    uint32_t p;
    int rc;

    switch (s->kind) {
    case NSEG_FLAT:
        if (e != NULL) {
            rc = qv_flat_search_engine(s->ix.flat, e, q, nq, kk, filter, d, i);
            if (rc != QV_ENOTSUP && rc != QV_EUNAVAIL && rc != QV_EBUSY)
                return rc;
        }
        return qv_flat_search(s->ix.flat, q, nq, kk, filter, d, i);
    case NSEG_IVF:
        return qv_ivf_search(s->ix.ivf, q, nq, kk, p1 ? p1 : c->nprobe, filter, d, i);
    case NSEG_IVFPQ:
        return qv_ivfpq_search(s->ix.ivfpq, q, nq, kk, p1 ? p1 : c->nprobe, 0, filter, d, i);
    case NSEG_HNSW: {
        p = p1 ? p1 : c->spec.ef_search;
        struct hnsw_run R = {
            .h = s->ix.hnsw, .q = q, .nq = nq, .dim = c->spec.dim, .k = kk,
            .ef = p < kk ? kk : p, .filter = filter, .d = d, .i = i,
        };
        atomic_init(&R.rc, 0);
        qv_pool_run(c->node->o.pool, (unsigned)((nq + HNSW_CHUNK - 1) / HNSW_CHUNK),
                    hnsw_task, &R);
        return atomic_load(&R.rc);
    }
    }
    return QV_EINVAL;
}

/* Push segment s's results (nq x kk keys in i) into the heaps; with
 * exact set, by exact distance to the kept vectors (refine). */
static void merge(const struct ncoll *c, const struct nseg *s, const float *q, size_t nq,
                  uint32_t kk, const float *d, const uint64_t *i, int exact,
                  struct qv_topk *heaps)
{
    const uint32_t dim = c->spec.dim;
    const qv_dist_fn df = qv_kernels()->dist[c->spec.metric][QV_ELEM_F32];

    for (size_t a = 0; a < nq; a++) {
        for (uint32_t j = 0; j < kk; j++) {
            uint64_t key = i[a * kk + j], row = key & NODE_ROW_MASK;
            if (key == QV_ID_NONE)
                break;
            if ((key >> NODE_ROW_BITS) != s->slot || row >= s->rows)
                continue;           /* cannot happen: keys are the segment's */
            float dist = exact ? df(q + a * dim, s->vecs + row * dim, dim) : d[a * kk + j];
            qv_topk_push(&heaps[a], dist, s->ids[row]);
        }
    }
}

int qv__node_search(void *ix, const float *q, size_t nq, uint32_t k, uint32_t p1,
                    uint32_t refine, const char *filter_text, float *dist, uint64_t *ids)
{
    const struct ncoll *c = ix;
    struct qv_pred pred;
    int64_t *in = NULL;
    const struct qv_pred *pp = NULL;
    struct qv_topk *heaps = NULL;
    float *sd = NULL;
    uint64_t *si = NULL, *bm = NULL, maxrows = 0;
    uint32_t kmax = k, kpq = k;
    int rc = 0;

    if (refine > 1) {
        uint64_t want = (uint64_t)k * refine;
        kpq = want > NODE_MAX_CANDIDATES ? NODE_MAX_CANDIDATES : (uint32_t)want;
        if (kpq < k)
            kpq = k;
        kmax = kpq;
    }
    for (uint32_t s = 0; s < c->nslots; s++)
        if (c->slots[s] != NULL && c->slots[s]->rows > maxrows)
            maxrows = c->slots[s]->rows;
    heaps = qv_malloc(nq * sizeof *heaps, QV_MEM_SERVER);
    sd = qv_malloc(nq * kmax * sizeof *sd, QV_MEM_SERVER);
    si = qv_malloc(nq * kmax * sizeof *si, QV_MEM_SERVER);
    if (heaps == NULL || sd == NULL || si == NULL)
        goto nomem;
    if (filter_text != NULL && filter_text[0] != '\0') {
        in = qv_malloc(NODE_IN_CAP * sizeof *in, QV_MEM_SERVER);
        bm = qv_malloc(((maxrows + 63) / 64 + 1) * sizeof *bm, QV_MEM_SERVER);
        if (in == NULL || bm == NULL)
            goto nomem;
        if ((rc = qv_pred_parse(filter_text, &c->names, &pred, in, NODE_IN_CAP)) != 0)
            goto out;
        pp = &pred;
    }
    for (size_t a = 0; a < nq; a++)
        qv_topk_init(&heaps[a], k, dist + a * k, ids + a * k);
    for (uint32_t s = 0; s < c->nslots; s++) {
        const struct nseg *g = c->slots[s];
        const uint64_t *filter = NULL;
        uint32_t kk = g != NULL && g->kind == NSEG_IVFPQ ? kpq : k;
        if (g == NULL || g->rows == 0)
            continue;
        if (pp != NULL) {
            uint64_t pass = 0;
            if ((rc = qv_filter_eval(pp, &g->attrs, bm, &pass)) != 0)
                goto out;
            if (pass == 0)
                continue;
            filter = bm;
        }
        if ((rc = seg_search(c, g, q, nq, kk, p1, filter, sd, si)) != 0)
            goto out;
        merge(c, g, q, nq, kk, sd, si, kk != k, heaps);
    }
    for (size_t a = 0; a < nq; a++)
        qv_topk_sort(&heaps[a]);
    goto out;
nomem:
    rc = qv_seterr(QV_ENOMEM, "SEARCH: collection '%s': no memory for the search of %zu "
                   "queries", c->name, nq);
out:
    qv_free(bm);
    qv_free(in);
    qv_free(si);
    qv_free(sd);
    qv_free(heaps);
    return rc;
}

int qv__node_prefetch(void *ix, const float *q, size_t nq, uint32_t p1)
{
    const struct ncoll *c = ix;
    struct qv_engine *e = c->node->o.engine;
    int started = 0, declined = 0;

    if (e == NULL)
        return 0;
    for (uint32_t s = 0; s < c->nslots; s++) {
        const struct nseg *g = c->slots[s];
        int rc = 0;
        if (g == NULL || g->rows == 0)
            continue;
        switch (g->kind) {
        case NSEG_FLAT: rc = qv_flat_prefetch(g->ix.flat, e); break;
        case NSEG_IVF: rc = qv_ivf_prefetch(g->ix.ivf, q, nq, p1 ? p1 : c->nprobe); break;
        case NSEG_IVFPQ:
            rc = qv_ivfpq_prefetch(g->ix.ivfpq, q, nq, p1 ? p1 : c->nprobe);
            break;
        case NSEG_HNSW: break;
        }
        if (rc > 0)
            started += rc;
        else if (rc < 0 && declined == 0)
            declined = rc;
    }
    return started > 0 ? started : declined;
}

/* ------------------------------------------------------------------ */
/* The transports' check                                               */
/* ------------------------------------------------------------------ */

static int check_search(const struct ncoll *c, const struct qv_node_search_args *a)
{
    const struct qv_node_coll_spec *s = &c->spec;
    const int ivf = s->index == QV_NODE_IVF || s->index == QV_NODE_IVF_SQ8 ||
                    s->index == QV_NODE_IVF_PQ;
    uint32_t top = s->nlist ? s->nlist : QV_NODE_MAX_NLIST;

    if (a->dim != s->dim)
        return qv_seterr(QV_EINVAL, "SEARCH: dim = %u: collection '%s' has dim %u", a->dim,
                         c->name, s->dim);
    if (a->k == 0 || a->k > QV_NODE_MAX_K)
        return qv_seterr(QV_EINVAL, "SEARCH: k = %u: use 1..%u", a->k, QV_NODE_MAX_K);
    if (ivf && a->nprobe > top)
        return qv_seterr(QV_EINVAL, "SEARCH: nprobe = %u: use 1..nlist (%u), or 0 = the "
                         "collection's (%u)", a->nprobe, top, c->nprobe);
    if (s->index == QV_NODE_HNSW && a->ef != 0 && (a->ef < a->k || a->ef > QV_NODE_MAX_EF))
        return qv_seterr(QV_EINVAL, "SEARCH: ef = %u: use k (%u)..%u, or 0 = the "
                         "collection's (%u)", a->ef, a->k, QV_NODE_MAX_EF, s->ef_search);
    if (a->filter_text != NULL && a->filter_text[0] != '\0') {
        size_t len = strnlen(a->filter_text, QV_NODE_MAX_FILTER + 1);
        struct qv_pred pred;
        int64_t in[NODE_IN_CAP];
        if (len > QV_NODE_MAX_FILTER)
            return qv_seterr(QV_EINVAL, "SEARCH: filter is longer than %u bytes",
                             QV_NODE_MAX_FILTER);
        if (qv_pred_parse(a->filter_text, &c->names, &pred, in, NODE_IN_CAP) != 0) {
            char why[400];
            snprintf(why, sizeof why, "%s", qv_errmsg());  /* qv_seterr writes over it */
            return qv_seterr(QV_EINVAL, "SEARCH: filter: %s", why);
        }
    }
    return 0;
}

int qv_node_search_prepare(struct qv_node *node, uint64_t id,
                           const struct qv_node_search_args *a,
                           struct qv_service_request *req)
{
    struct ncoll *c;
    int rc;

    if (a == NULL || req == NULL)
        return qv_seterr(QV_EINVAL, "SEARCH: %s is NULL", a == NULL ? "args" : "request");
    pthread_rwlock_rdlock(&node->tab_lock);
    c = qv__node_find_locked(node, id);
    if (c == NULL) {
        rc = qv_seterr(QV_ENOENT, "SEARCH: collection %llu does not exist",
                       (unsigned long long)id);
    } else if ((rc = check_search(c, a)) == 0) {
        const enum qv_node_index t = c->spec.index;
        req->collection = id;
        req->k = a->k;
        req->nprobe = t == QV_NODE_FLAT || t == QV_NODE_HNSW ? 0 : a->nprobe;
        req->ef = t == QV_NODE_HNSW ? a->ef : 0;
        req->refine = 0;
        req->filter = NULL;
        req->filter_text = a->filter_text && a->filter_text[0] ? a->filter_text : NULL;
    }
    pthread_rwlock_unlock(&node->tab_lock);
    return rc;
}
