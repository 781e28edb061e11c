/*
 * service_cost.c - the batcher's cost model (batcher.h: cost_ns): the
 * predicted ns to search a batch of n queries of one collection.
 *
 * Flat, IVF, IVF-PQ: the router's features of the unit the index will
 * submit (router.c, "Features"), for n queries with nprobe p over a
 * collection of N rows, nlist lists (flat: one list of N rows, p = 1),
 * bytes per entry bpe and distance ops per (query, entry) opp:
 *     probes  = n p                       (query, list) pairs
 *     lists   = min(probes, nlist)        distinct lists probed
 *     scanned = lists (N / nlist) bpe ceil(probes / nlist / 64)
 *     ops     = probes (N / nlist) opp
 *     raw_E   = overhead_E + max(scanned / mem_Bps_E, ops / flops_E)
 *     cost(n) = corr x min over engines E of raw_E
 * with bpe = 4 d + 4 and opp = 2 d for float lists (FLAT kind), bpe = d
 * for SQ8, bpe = code_size and opp = 2 code_size for PQ (as router.c
 * counts them).  The engine parameters are the router's for the kind
 * (qv_router_stats, re-read every second by the dispatcher), or opts.model
 * without a router.  The link term is left out: which lists are resident
 * is the router's business, and corr absorbs the average.
 *
 * corr is the online correction: after each group search of n queries
 * with parameter p that took t ns,
 *     ratio = clamp(t / (corr raw(n, p)), 1/32, 32)
 *     corr <- corr ((1 - alpha) + alpha ratio),   clamped to [1e-3, 1e3]
 * the multiplicative EWMA the router applies to its own predictions, so
 * corr converges to observed / raw.  It stands for everything the formula
 * leaves out (probe selection, heap merges, sort, the generic defaults).
 *
 * HNSW: no features to count (the graph walk's length depends on the
 * data), so cost(n) = a + b n is fitted to observed group searches by
 * exponentially weighted least squares: weighted means of n, t, n^2 and
 * n t with weight alpha per observation, b = cov(n, t) / var(n), a =
 * mean t - b mean n, both kept >= 0.  Until the sizes seen differ (var(n)
 * tiny: a lone client sends batches of 1), the prior a0 + b0 n, with a0
 * = the model's overhead and b0 = 2 ef 32 d / flops (about 32 neighbours
 * evaluated per expanded candidate), is scaled to the mean observed time.
 *
 * CUSTOM (a callback the service cannot look into): the same fitted
 * a + b n as HNSW, with the prior b0 = 2 d 4096 / flops (a scan of 4096
 * vectors per query) until the sizes seen differ.
 *
 * Every prediction is O(engines), non-decreasing in n (min of
 * non-decreasing functions; a, b >= 0), and uses only dispatcher state.
 */
#include <math.h>
#include <string.h>

#include "quiver/flat.h"
#include "quiver/hnsw.h"
#include "quiver/ivf.h"
#include "quiver/ivfpq.h"
#include "service_int.h"

#define CORR_MIN 1e-3
#define CORR_MAX 1e3
#define RATIO_MAX 32.0
#define HNSW_NEIGHBOURS 32.0        /* distance evaluations per expansion */
#define VAR_MIN 0.01                /* var(n) below this: one size seen */
#define CUSTOM_PRIOR_VECTORS 4096.0 /* CUSTOM prior: vectors scanned per query */

void qv__svc_engines_read(struct qv_service *svc, int64_t now)
{
    struct svc_engines *e = &svc->eng;

    e->read_at = now;
    e->n = 0;
    if (svc->router) {
        struct qv_router_stats rs;
        qv_router_stats(svc->router, &rs);
        for (unsigned i = 0; i < rs.nengines && i < QV_ROUTER_MAX_ENGINES; i++)
            memcpy(e->p[e->n++], rs.engine[i].params, sizeof e->p[0]);
    }
    if (e->n == 0) {
        for (unsigned k = 0; k < QV_WU__COUNT; k++)
            e->p[0][k] = svc->o.model;
        e->n = 1;
    }
}

void qv__svc_model_shape(struct svc_coll *c)
{
    struct svc_model *m = &c->model;
    const struct qv_service_index *ix = &c->spec.index;

    m->shape_epoch = atomic_load_explicit(&c->epoch, memory_order_acquire);
    m->nlist = 1.0;
    switch (ix->type) {
    case QV_SERVICE_FLAT:
        m->rows = (double)qv_flat_rows(ix->flat);
        break;
    case QV_SERVICE_IVF:
        m->rows = (double)qv_ivf_rows(ix->ivf);
        m->nlist = (double)qv_ivf_nlist(ix->ivf);
        break;
    case QV_SERVICE_IVFPQ:
        m->rows = (double)qv_ivfpq_rows(ix->ivfpq);
        m->nlist = (double)qv_ivfpq_nlist(ix->ivfpq);
        break;
    case QV_SERVICE_HNSW:
        m->rows = (double)qv_hnsw_rows(ix->hnsw);
        break;
    case QV_SERVICE_CUSTOM:
        m->rows = 0.0;              /* unknown: the fit does not need it */
        break;
    }
    if (m->nlist < 1.0)
        m->nlist = 1.0;
}

int qv__svc_model_init(struct qv_service *svc, struct svc_coll *c)
{
    struct svc_model *m = &c->model;
    const struct qv_service_collection *s = &c->spec;
    const double d = (double)s->dim;
    double code;

    memset(m, 0, sizeof *m);
    m->corr = 1.0;
    m->kind = QV_WU_FLAT;
    m->bpe = 4.0 * d + 4.0;
    m->opp = 2.0 * d;
    switch (s->index.type) {
    case QV_SERVICE_FLAT:
        break;
    case QV_SERVICE_IVF:
        m->p_default = s->nprobe;
        if (s->code_size) {
            m->kind = QV_WU_SQ8;
            m->bpe = (double)s->code_size;
        }
        break;
    case QV_SERVICE_IVFPQ:
        m->p_default = s->nprobe;
        code = s->code_size ? (double)s->code_size : (d / 4.0 < 1.0 ? 1.0 : d / 4.0);
        m->kind = QV_WU_PQ;
        m->bpe = code;
        m->opp = 2.0 * code;
        break;
    case QV_SERVICE_HNSW:
        m->p_default = s->ef;
        m->prior_a = svc->o.model.overhead_ns;
        m->prior_b = 2.0 * (double)s->ef * HNSW_NEIGHBOURS * d / svc->o.model.flops;
        m->a = m->prior_a;
        m->b = m->prior_b;
        break;
    case QV_SERVICE_CUSTOM:
        m->p_default = s->ef ? s->ef : s->nprobe;
        m->prior_a = svc->o.model.overhead_ns;
        m->prior_b = 2.0 * d * CUSTOM_PRIOR_VECTORS / svc->o.model.flops;
        m->a = m->prior_a;
        m->b = m->prior_b;
        break;
    }
    qv__svc_model_shape(c);
    return 0;
}

/* Uncorrected prediction: the best engine's time for n queries with
 * nprobe p. */
static double raw_cost(const struct qv_service *svc, const struct svc_model *m, double n,
                       double p)
{
    double nl = m->nlist, lpl, probes, lists, tiles, scanned, ops, best = INFINITY;

    if (p < 1.0 || m->nlist <= 1.0)
        p = 1.0;
    if (p > nl)
        p = nl;
    lpl = m->rows / nl;
    probes = n * p;
    lists = probes < nl ? probes : nl;
    tiles = ceil(probes / nl / 64.0);
    scanned = lists * lpl * m->bpe * tiles;
    ops = probes * lpl * m->opp;
    for (unsigned e = 0; e < svc->eng.n; e++) {
        const struct qv_router_params *pe = &svc->eng.p[e][m->kind];
        double mem = scanned / pe->mem_Bps, cpu = ops / pe->flops;
        double t = pe->overhead_ns + 1e9 * (mem > cpu ? mem : cpu);
        if (t < best)
            best = t;
    }
    return best;
}

double qv__svc_model_cost(const struct qv_service *svc, const struct svc_coll *c,
                          uint32_t n, uint32_t p)
{
    const struct svc_model *m = &c->model;

    if (c->spec.index.type == QV_SERVICE_HNSW || c->spec.index.type == QV_SERVICE_CUSTOM)
        return m->a + m->b * (double)n;
    return m->corr * raw_cost(svc, m, (double)n, (double)p);
}

/* Refit a + b n from the weighted means (HNSW). */
static void hnsw_fit(struct svc_model *m)
{
    double var = m->mnn - m->mn * m->mn;

    if (m->nobs >= 2 && var > VAR_MIN) {
        m->b = (m->mnt - m->mn * m->mt) / var;
        m->a = m->mt - m->b * m->mn;
        if (m->b < 0.0) {
            m->b = 0.0;
            m->a = m->mt;
        }
        if (m->a < 0.0) {
            m->a = 0.0;
            m->b = m->mt / m->mn;
        }
        return;
    }
    double prior = m->prior_a + m->prior_b * m->mn;
    double r = prior > 0.0 ? m->mt / prior : 1.0;
    m->a = m->prior_a * r;
    m->b = m->prior_b * r;
}

static void hnsw_observe(struct svc_model *m, double alpha, double n, double t)
{
    if (m->nobs++ == 0) {
        m->mn = n;
        m->mt = t;
        m->mnn = n * n;
        m->mnt = n * t;
    } else {
        m->mn += alpha * (n - m->mn);
        m->mt += alpha * (t - m->mt);
        m->mnn += alpha * (n * n - m->mnn);
        m->mnt += alpha * (n * t - m->mnt);
    }
    hnsw_fit(m);
}

void qv__svc_model_observe(struct qv_service *svc, struct svc_coll *c, uint32_t n,
                           uint32_t p, double ns)
{
    struct svc_model *m = &c->model;
    const double alpha = svc->o.cost_alpha;
    double pred, ratio;

    if (!(ns > 0.0))
        return;
    if (c->spec.index.type == QV_SERVICE_HNSW || c->spec.index.type == QV_SERVICE_CUSTOM) {
        hnsw_observe(m, alpha, (double)n, ns);
        return;
    }
    pred = m->corr * raw_cost(svc, m, (double)n, (double)p);
    if (!(pred > 0.0) || !isfinite(pred))
        return;
    ratio = ns / pred;
    if (ratio > RATIO_MAX)
        ratio = RATIO_MAX;
    if (ratio < 1.0 / RATIO_MAX)
        ratio = 1.0 / RATIO_MAX;
    m->corr *= (1.0 - alpha) + alpha * ratio;
    if (m->corr < CORR_MIN)
        m->corr = CORR_MIN;
    if (m->corr > CORR_MAX)
        m->corr = CORR_MAX;
}

double qv__svc_cost_cb(void *arg, uint64_t coll, uint32_t n)
{
    struct qv_service *svc = arg;
    struct svc_coll *c = svc->cost_last;

    if (c == NULL || c->id != coll) {
        c = qv__svc_lookup(svc, coll);
        if (c == NULL)
            return 0.0;
        svc->cost_last = c;
    }
    return qv__svc_model_cost(svc, c, n, c->model.p_default);
}
