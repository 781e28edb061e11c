/*
 * kmeans.c - k-means for coarse quantisers and codebooks; contract in
 * quiver/kmeans.h.
 *
 * Pipeline of qv_kmeans_train:
 *
 *   1. sample    m = min(n, max_points) points chosen by a partial
 *                Fisher-Yates shuffle driven by the seed, copied into one
 *                buffer (the sample is what every later step sees).
 *   2. seed      k-means++ over the first s = min(m, 32 k) sample points
 *                (the sample is already in random order): the first centre
 *                uniformly, each next one with probability proportional to
 *                the squared L2 distance to the nearest centre so far
 *                (uniformly when every distance is zero: duplicates).  The
 *                cap keeps seeding at O(32 k^2 dim) instead of O(m k dim)
 *                while giving each centre 32 candidates on average.
 *   3. Lloyd     iters rounds of
 *                  assign  nearest centroid of every sample point with the
 *                          fused batched scan (dist.h): centroids packed in
 *                          the blocked layout with |c|^2, points as the
 *                          queries, k = 1 heaps (the heap's id = centroid);
 *                          parallel on the pool over fixed chunks of points
 *                  update  centroid = mean of its points (double sums);
 *                          IP: renormalised to unit length (spherical)
 *                  repair  each empty cluster takes a copy of the largest
 *                          cluster's centroid; both are nudged apart by
 *                          +-1/1024 of each coordinate's magnitude in
 *                          alternating signs, and the point count is split
 *                          between them (as FAISS does)
 *   4. objective one last assignment against the final centroids (only
 *                when the caller asks for it).
 *
 * Determinism.  Every per-point value (seeding distances, assignments) is
 * computed independently of the others with the same kernel, and the
 * chunks of points handed to the scan kernel have a fixed size, so a point
 * always sits in the same register tile whatever the thread count; all
 * sums (seeding totals, centroid sums, the objective) are serial in point
 * order.  Same inputs + seed + SIMD level -> same centroids with 1 or N
 * threads.  (Different SIMD levels round differently.)
 *
 * Cost: seeding O(32 k^2 dim); each Lloyd round 2 m k dim flops in the
 * scan kernel plus O(m dim) for the update.  Memory: the sample (m dim
 * floats), the packed centroids, k dim doubles, per-worker chunk scratch.
 */
#include <math.h>
#include <string.h>

#include "quiver/alloc.h"
#include "quiver/errors.h"
#include "quiver/kmeans.h"
#include "quiver/pool.h"
#include "quiver/topk.h"

#define KM_CHUNK 256u               /* points per assignment task (fixed) */
#define KM_SEED_PER_CENTRE 32u      /* seeding candidates per centre */
#define KM_DEFAULT_ITERS 20u
#define KM_DEFAULT_SAMPLE 256u      /* points per centroid when max_points = 0 */
#define KM_SEED_CHUNK 1024u         /* points per seeding task */

/* ---- deterministic random numbers (splitmix64) ---- */

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* Uniform in [0, n). */
static uint64_t rng_below(uint64_t *s, uint64_t n)
{
    return n ? rng_next(s) % n : 0;
}

/* Uniform in [0, 1). */
static double rng_unit(uint64_t *s)
{
    return (double)(rng_next(s) >> 11) * (1.0 / 9007199254740992.0);
}

/* ---- assignment on the batched scan kernel ---- */

struct km_assign {
    const struct qv_dist_ops *ops;
    const float *x;                 /* points, row-major */
    size_t n;
    uint32_t dim;
    enum qv_metric metric;          /* L2 or IP */
    const float *blocks;            /* packed centroids */
    const float *cnorms;
    const uint64_t *cids;
    uint32_t k;
    uint32_t *assign;
    float *dist;                    /* may be NULL */
    /* per-worker scratch: KM_CHUNK of each */
    struct qv_topk *heaps;
    float *hd;
    uint64_t *hi;
    float *qn;
};

static void assign_task(void *arg, unsigned task, unsigned worker)
{
    const struct km_assign *A = arg;
    size_t p0 = (size_t)task * KM_CHUNK;
    size_t cnt = A->n - p0 < KM_CHUNK ? A->n - p0 : KM_CHUNK;
    struct qv_topk *h = A->heaps + (size_t)worker * KM_CHUNK;
    float *hd = A->hd + (size_t)worker * KM_CHUNK;
    uint64_t *hi = A->hi + (size_t)worker * KM_CHUNK;
    float *qn = A->qn + (size_t)worker * KM_CHUNK;
    const float *x = A->x + p0 * A->dim;
    for (size_t i = 0; i < cnt; i++) {
        qv_topk_init(&h[i], 1, &hd[i], &hi[i]);
        qn[i] = A->metric == QV_METRIC_L2
              ? -A->ops->dist[QV_METRIC_IP][QV_ELEM_F32](x + i * A->dim, x + i * A->dim,
                                                         A->dim)
              : 0.0f;
    }
    struct qv_scan_args a = {
        .queries = x, .nq = cnt, .dim = A->dim, .qnorms = qn,
        .blocks = A->blocks, .norms = A->cnorms, .ids = A->cids, .nvec = A->k,
        .mask = NULL, .metric = A->metric, .heaps = h, .prefetch = 0,
    };
    A->ops->scan_f32(&a);
    for (size_t i = 0; i < cnt; i++) {
        /* a NaN distance is never kept: fall back to centroid 0 */
        A->assign[p0 + i] = h[i].n ? (uint32_t)hi[i] : 0;
        if (A->dist) {
            float d = h[i].n ? hd[i] : INFINITY;
            if (A->metric == QV_METRIC_L2 && d < 0.0f)
                d = 0.0f;           /* |q|^2 + |c|^2 - 2 q.c rounding */
            A->dist[p0 + i] = d;
        }
    }
}

/* Packed centroids and the per-worker scratch of an assignment. */
struct km_packed {
    float *blocks;
    float *norms;
    uint64_t *ids;
    struct qv_topk *heaps;
    float *hd;
    uint64_t *hi;
    float *qn;
};

static void packed_fini(struct km_packed *P)
{
    qv_free(P->qn);
    qv_free(P->hi);
    qv_free(P->hd);
    qv_free(P->heaps);
    qv_free(P->ids);
    qv_free(P->norms);
    qv_free(P->blocks);
    memset(P, 0, sizeof *P);
}

static int packed_init(struct km_packed *P, uint32_t k, uint32_t dim, unsigned workers)
{
    memset(P, 0, sizeof *P);
    size_t groups = ((size_t)k + QV_BLOCK - 1) / QV_BLOCK;
    size_t slots = (size_t)workers * KM_CHUNK;
    P->blocks = qv_malloc(groups * QV_BLOCK * dim * sizeof(float), QV_MEM_INDEX);
    P->norms = qv_malloc((size_t)k * sizeof(float), QV_MEM_INDEX);
    P->ids = qv_malloc((size_t)k * sizeof(uint64_t), QV_MEM_INDEX);
    P->heaps = qv_malloc(slots * sizeof *P->heaps, QV_MEM_INDEX);
    P->hd = qv_malloc(slots * sizeof(float), QV_MEM_INDEX);
    P->hi = qv_malloc(slots * sizeof(uint64_t), QV_MEM_INDEX);
    P->qn = qv_malloc(slots * sizeof(float), QV_MEM_INDEX);
    if (!P->blocks || !P->norms || !P->ids || !P->heaps || !P->hd || !P->hi || !P->qn) {
        packed_fini(P);
        return QV_ENOMEM;
    }
    memset(P->blocks, 0, groups * QV_BLOCK * dim * sizeof(float));
    for (uint32_t c = 0; c < k; c++)
        P->ids[c] = c;
    return 0;
}

static void packed_load(struct km_packed *P, const float *centroids, uint32_t k, uint32_t dim)
{
    const struct qv_dist_ops *ops = qv_kernels();
    qv_block_pack(P->blocks, 0, centroids, k, dim);
    for (uint32_t c = 0; c < k; c++)
        P->norms[c] = -ops->dist[QV_METRIC_IP][QV_ELEM_F32](centroids + (size_t)c * dim,
                                                            centroids + (size_t)c * dim, dim);
}

static void packed_assign(struct km_packed *P, uint32_t k, uint32_t dim,
                          enum qv_metric metric, const float *x, size_t n, uint32_t *assign,
                          float *dist, struct qv_pool *pool)
{
    struct km_assign A = {
        .ops = qv_kernels(), .x = x, .n = n, .dim = dim,
        .metric = metric == QV_METRIC_L2 ? QV_METRIC_L2 : QV_METRIC_IP,
        .blocks = P->blocks, .cnorms = P->norms, .cids = P->ids, .k = k,
        .assign = assign, .dist = dist,
        .heaps = P->heaps, .hd = P->hd, .hi = P->hi, .qn = P->qn,
    };
    size_t tasks = (n + KM_CHUNK - 1) / KM_CHUNK;
    qv_pool_run(pool, (unsigned)tasks, assign_task, &A);
}

int qv_kmeans_assign(const float *centroids, uint32_t k, uint32_t dim, enum qv_metric metric,
                     const float *x, size_t n, uint32_t *assign, float *dist,
                     struct qv_pool *pool)
{
    if (!centroids || k == 0 || dim == 0 || (n && (!x || !assign)))
        return qv_seterr(QV_EINVAL, "kmeans assign: k = %u, dim = %u, NULL arrays; need "
                         "k >= 1, dim >= 1 and non-NULL centroids, points and assign", k, dim);
    if (n == 0)
        return 0;
    if (n / KM_CHUNK >= UINT32_MAX)
        return qv_seterr(QV_EINVAL, "kmeans assign: %zu points is too many", n);
    struct km_packed P;
    if (packed_init(&P, k, dim, qv_pool_threads(pool)))
        return qv_seterr(QV_ENOMEM, "kmeans assign: no memory for %u centroids of dim %u",
                         k, dim);
    packed_load(&P, centroids, k, dim);
    packed_assign(&P, k, dim, metric, x, n, assign, dist, pool);
    packed_fini(&P);
    return 0;
}

/* ---- k-means++ seeding ---- */

struct km_seed {
    const struct qv_dist_ops *ops;
    const float *x;
    size_t s;
    uint32_t dim;
    const float *centre;            /* the newest centre */
    float *d2;                      /* s: distance to the nearest centre */
};

static void seed_task(void *arg, unsigned task, unsigned worker)
{
    const struct km_seed *S = arg;
    size_t i0 = (size_t)task * KM_SEED_CHUNK;
    size_t i1 = i0 + KM_SEED_CHUNK < S->s ? i0 + KM_SEED_CHUNK : S->s;
    qv_dist_fn l2 = S->ops->dist[QV_METRIC_L2][QV_ELEM_F32];
    for (size_t i = i0; i < i1; i++) {
        float d = l2(S->x + i * S->dim, S->centre, S->dim);
        if (d < S->d2[i])
            S->d2[i] = d;
    }
}

static int seed_plus_plus(const float *x, size_t s, uint32_t dim, uint32_t k, uint64_t *rng,
                          float *centroids, struct qv_pool *pool)
{
    float *d2 = qv_malloc(s * sizeof(float), QV_MEM_INDEX);
    if (!d2)
        return QV_ENOMEM;
    for (size_t i = 0; i < s; i++)
        d2[i] = INFINITY;
    struct km_seed S = { .ops = qv_kernels(), .x = x, .s = s, .dim = dim, .d2 = d2 };
    unsigned tasks = (unsigned)((s + KM_SEED_CHUNK - 1) / KM_SEED_CHUNK);
    size_t pick = rng_below(rng, s);
    for (uint32_t c = 0; c < k; c++) {
        if (c > 0) {
            double total = 0.0;
            for (size_t i = 0; i < s; i++)
                total += d2[i];
            if (!(total > 0.0)) {
                pick = rng_below(rng, s);
            } else {
                double r = rng_unit(rng) * total, acc = 0.0;
                pick = s - 1;
                for (size_t i = 0; i < s; i++) {
                    acc += d2[i];
                    if (acc > r && d2[i] > 0.0f) {
                        pick = i;
                        break;
                    }
                }
            }
        }
        float *cen = centroids + (size_t)c * dim;
        memcpy(cen, x + pick * dim, dim * sizeof(float));
        if (c + 1 < k) {
            S.centre = cen;
            qv_pool_run(pool, tasks, seed_task, &S);
        }
    }
    qv_free(d2);
    return 0;
}

/* ---- Lloyd ---- */

static void normalize_rows(float *v, uint32_t k, uint32_t dim)
{
    const struct qv_dist_ops *ops = qv_kernels();
    for (uint32_t c = 0; c < k; c++)
        ops->normalize_f32(v + (size_t)c * dim, dim);
}

/* Recompute centroids as means; repair empty clusters.  count: k. */
static void update(const float *x, size_t m, uint32_t dim, uint32_t k, enum qv_metric metric,
                   const uint32_t *assign, double *sums, size_t *count, float *centroids)
{
    memset(sums, 0, (size_t)k * dim * sizeof(double));
    memset(count, 0, (size_t)k * sizeof(size_t));
    for (size_t i = 0; i < m; i++) {
        uint32_t c = assign[i];
        double *s = sums + (size_t)c * dim;
        const float *v = x + i * dim;
        for (uint32_t d = 0; d < dim; d++)
            s[d] += v[d];
        count[c]++;
    }
    for (uint32_t c = 0; c < k; c++) {
        if (!count[c])
            continue;
        float *cen = centroids + (size_t)c * dim;
        double inv = 1.0 / (double)count[c];
        for (uint32_t d = 0; d < dim; d++)
            cen[d] = (float)(sums[(size_t)c * dim + d] * inv);
    }
    /* repair: split the largest cluster into each empty one */
    for (uint32_t c = 0; c < k; c++) {
        if (count[c])
            continue;
        uint32_t big = 0;
        for (uint32_t j = 1; j < k; j++)
            if (count[j] > count[big])
                big = j;
        float *dst = centroids + (size_t)c * dim, *src = centroids + (size_t)big * dim;
        for (uint32_t d = 0; d < dim; d++) {
            float delta = (fabsf(src[d]) + 1e-6f) * (1.0f / 1024.0f);
            if (d % 2)
                delta = -delta;
            dst[d] = src[d] + delta;
            src[d] = src[d] - delta;
        }
        count[c] = count[big] / 2;
        count[big] -= count[c];
    }
    if (metric != QV_METRIC_L2)
        normalize_rows(centroids, k, dim);
}

int qv_kmeans_train(const struct qv_kmeans_opts *o, const float *x, size_t n,
                    float *centroids, double *objective)
{
    if (!o || !x || !centroids)
        return qv_seterr(QV_EINVAL, "kmeans train: NULL options, points or centroids");
    if (o->k == 0 || o->dim == 0)
        return qv_seterr(QV_EINVAL, "kmeans train: k = %u, dim = %u; both must be >= 1",
                         o->k, o->dim);
    if (n < o->k)
        return qv_seterr(QV_EINVAL, "kmeans train: %zu points cannot make %u clusters; "
                         "give at least k points or lower k", n, o->k);
    if (o->metric != QV_METRIC_L2 && o->metric != QV_METRIC_IP)
        return qv_seterr(QV_EINVAL, "kmeans train: metric %d; use l2 or ip (normalise for "
                         "cosine)", (int)o->metric);
    const uint32_t k = o->k, dim = o->dim;
    const uint32_t iters = o->iters ? o->iters : KM_DEFAULT_ITERS;
    size_t m = o->max_points ? o->max_points : (size_t)KM_DEFAULT_SAMPLE * k;
    if (m < k)
        m = k;
    if (m > n)
        m = n;
    uint64_t rng = o->seed ^ 0x6B6D65616E732B2BULL;     /* "kmeans++" */

    int rc = QV_ENOMEM;
    size_t *perm = NULL;
    float *sample = NULL;
    uint32_t *assign = NULL;
    double *sums = NULL;
    size_t *count = NULL;
    struct km_packed P = { 0 };

    sample = qv_malloc(m * dim * sizeof(float), QV_MEM_INDEX);
    assign = qv_malloc(m * sizeof(uint32_t), QV_MEM_INDEX);
    sums = qv_malloc((size_t)k * dim * sizeof(double), QV_MEM_INDEX);
    count = qv_malloc((size_t)k * sizeof(size_t), QV_MEM_INDEX);
    if (!sample || !assign || !sums || !count)
        goto out;
    if (m < n) {
        perm = qv_malloc(n * sizeof(size_t), QV_MEM_INDEX);
        if (!perm)
            goto out;
        for (size_t i = 0; i < n; i++)
            perm[i] = i;
        for (size_t i = 0; i < m; i++) {
            size_t j = i + rng_below(&rng, n - i);
            size_t t = perm[i];
            perm[i] = perm[j];
            perm[j] = t;
            memcpy(sample + i * dim, x + perm[i] * dim, dim * sizeof(float));
        }
    } else {
        /* whole set: shuffle the seeding prefix [0, s) so that the
         * k-means++ candidates are a random subset of all points */
        memcpy(sample, x, m * dim * sizeof(float));
        size_t s = (size_t)KM_SEED_PER_CENTRE * k;
        if (s < m)
            for (size_t i = 0; i < s; i++) {
                size_t j = i + rng_below(&rng, m - i);
                if (j != i) {
                    float *a = sample + i * dim, *b = sample + j * dim;
                    for (uint32_t d = 0; d < dim; d++) {
                        float t = a[d];
                        a[d] = b[d];
                        b[d] = t;
                    }
                }
            }
    }
    size_t s = (size_t)KM_SEED_PER_CENTRE * k;
    if (s > m)
        s = m;
    if (seed_plus_plus(sample, s, dim, k, &rng, centroids, o->pool))
        goto out;
    if (o->metric != QV_METRIC_L2)
        normalize_rows(centroids, k, dim);
    if (packed_init(&P, k, dim, qv_pool_threads(o->pool)))
        goto out;
    for (uint32_t it = 0; it < iters; it++) {
        packed_load(&P, centroids, k, dim);
        packed_assign(&P, k, dim, o->metric, sample, m, assign, NULL, o->pool);
        update(sample, m, dim, k, o->metric, assign, sums, count, centroids);
    }
    if (objective) {
        float *dist = qv_malloc(m * sizeof(float), QV_MEM_INDEX);
        if (!dist)
            goto out;
        packed_load(&P, centroids, k, dim);
        packed_assign(&P, k, dim, o->metric, sample, m, assign, dist, o->pool);
        double obj = 0.0;
        for (size_t i = 0; i < m; i++)
            obj += dist[i];
        *objective = obj;
        qv_free(dist);
    }
    rc = 0;

out:
    packed_fini(&P);
    qv_free(perm);
    qv_free(count);
    qv_free(sums);
    qv_free(assign);
    qv_free(sample);
    if (rc)
        qv_seterr(rc, "kmeans train: no memory for %zu points x dim %u, k %u", m, dim, k);
    return rc;
}
