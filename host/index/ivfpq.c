/*
 * ivfpq.c - the IVF-PQ index; contract in quiver/ivfpq.h.
 *
 * Memory.
 *   coarse      nlist x dim floats, row-major, plus a blocked copy
 *               (dist.h) and |c|^2 per centroid for the probe scan
 *   pq          m codebooks of 2^nbits centroids, trained on residuals
 *   ltab        L2 only: nlist x m x ksub floats, |y_jc|^2 + 2 <c_lj, y_jc>,
 *               the list-only term of the residual distance (see
 *               cpu_pq.c); omitted above QV_IVFPQ_MAX_LTAB bytes, then
 *               the scanner builds tables from q - c
 *   lists[l]    codes (64-byte aligned; fast-scan blocks for nbits 4,
 *               n x m bytes for nbits 8), ids (u64), rows (u32);
 *               capacity doubles
 *   rows        row_ids (u64 per row), live bitmap, vectors (keep_vectors)
 *   map         id -> row (idmap.h), for remove, duplicates and refine
 *
 * A loaded index points lists, rows and vectors into the file mapping;
 * the first add/remove copies lists and row arrays out (materialise).
 * Centroids, codebooks and ltab are never written after training, so they
 * stay in the mapping.
 *
 * File sections (ixfile.h, type QV_IX_IVF_PQ):
 *   TAG   SIZE                      MEANING
 *   META  sizeof(struct file_meta)  shape, counts (below)
 *   CCEN  nlist * dim * 4           coarse centroids
 *   PQCB  m * ksub * dsub * 4       codebooks
 *   LTAB  nlist * m * ksub * 4      list tables (when present)
 *   LDIR  nlist * 24                per list: u64 code offset (64-aligned,
 *                                   into CODE), u64 first entry (into LIDS
 *                                   and LROW), u32 n, u32 0
 *   CODE  sum of lists' code bytes  codes of every list
 *   LIDS  entries * 8               ids of every list's entries
 *   LROW  entries * 4               rows of every list's entries
 *   RIDS  rows * 8                  id of each row
 *   LIVE  ceil(rows / 64) * 8       live bitmap
 *   VECS  rows * dim * 4            vectors (keep_vectors only)
 */
#include <math.h>
#include <string.h>

#include "idmap.h"
#include "quiver/alloc.h"
#include "quiver/engine.h"
#include "quiver/errors.h"
#include "quiver/ivfpq.h"
#include "quiver/ixfile.h"
#include "quiver/kmeans.h"
#include "quiver/pool.h"
#include "quiver/pq.h"
#include "quiver/topk.h"

#define QV_IVFPQ_MAX_DIM 65536u
#define QV_IVFPQ_MAX_K 100000u
#define QV_IVFPQ_MAX_LTAB ((size_t)256 << 20)
#define QCHUNK 16u                  /* queries per pool task */
/* Searches keeping at least QV_IVFPQ_RES_MIN_K candidates per query
 * (refine * k, or a large k) scan 4-bit lists into per-query reservoirs
 * (quiver/pq.h) of QV_IVFPQ_RES_FACTOR x that many slots instead of heaps:
 * a heap of 100 pays a sift-down of data-dependent branches for each of
 * the hundreds of candidates a query accepts, the reservoir an append. */
#define QV_IVFPQ_RES_MIN_K 32u
#define QV_IVFPQ_RES_FACTOR 4u

struct ivfpq_list {
    uint8_t *codes;
    uint64_t *ids;
    uint32_t *rows;
    uint64_t *rid;                  /* rows again, as u64: the "ids" that
                                       refine searches put in the heaps */
    uint32_t n;
    uint32_t cap;
};

struct qv_ivfpq {
    uint32_t dim;
    enum qv_metric metric;          /* as asked (COSINE kept) */
    enum qv_metric imetric;         /* internal: L2 or IP */
    uint32_t nlist;
    uint32_t kmeans_iters;
    size_t train_points;
    uint64_t seed;
    int keep_vectors;
    int trained;
    int mapped;                     /* lists / rows point into file */
    struct qv_pool *pool;
    struct qv_engine *engine;       /* the index's own CPU engine */
    struct qv_engine *use;          /* borrowed engine for searches, or NULL */

    struct qv_pq pq;
    float *coarse;                  /* nlist x dim */
    float *coarse_blk;              /* blocked copy */
    float *coarse_norms;
    uint64_t *list_nos;             /* 0..nlist-1, ids for the probe scan */
    float *ltab;
    int owns_tables;                /* coarse, ltab owned (not mapped) */

    struct ivfpq_list *lists;
    struct qv_wu_list *wl;          /* unit descriptors, one per list */
    struct qv_wu_list *wl_rows;     /* the same reporting rows (refine) */

    uint64_t *row_ids;
    uint64_t *live;
    float *vecs;
    uint64_t rows;
    uint64_t cap_rows;
    size_t nlive;
    struct qv_idmap map;

    struct qv_ixfile file;
};

struct file_meta {
    uint32_t dim, metric, nlist, m;
    uint32_t nbits, keep_vectors, has_ltab, reserved;
    uint64_t rows, nlive, entries, seed;
};

struct file_ldir {
    uint64_t code_off;
    uint64_t first;
    uint32_t n;
    uint32_t reserved;
};

static size_t list_code_bytes(const struct qv_ivfpq *ix, size_t n)
{
    return ix->pq.nbits == 4 ? qv_pq_fs_size(n, ix->pq.m) : n * ix->pq.m;
}

static int check_finite(const float *x, size_t n, const char *what)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return qv_seterr(QV_EINVAL, "ivfpq: %s: value %zu of the input is not finite; "
                             "remove NaN/Inf values", what, i);
    return 0;
}

struct qv_ivfpq *qv_ivfpq_create(const struct qv_ivfpq_opts *o)
{
    struct qv_ivfpq *ix;
    int rc;

    if (!o || o->dim == 0 || o->dim > QV_IVFPQ_MAX_DIM) {
        qv_errno = qv_seterr(QV_EINVAL, "ivfpq: dim %u is out of range; use 1..%u",
                             o ? o->dim : 0, QV_IVFPQ_MAX_DIM);
        return NULL;
    }
    if ((unsigned)o->metric >= QV_METRIC__COUNT) {
        qv_errno = qv_seterr(QV_EINVAL, "ivfpq: unknown metric %d", (int)o->metric);
        return NULL;
    }
    if (o->nlist == 0) {
        qv_errno = qv_seterr(QV_EINVAL, "ivfpq: nlist = 0; use at least 1 list");
        return NULL;
    }
    ix = qv_calloc(1, sizeof *ix, QV_MEM_INDEX);
    if (!ix) {
        qv_errno = qv_seterr(QV_ENOMEM, "ivfpq: no memory for the index");
        return NULL;
    }
    rc = qv_pq_init(&ix->pq, o->dim, o->m, o->nbits);
    if (rc) {
        qv_errno = rc;
        goto fail_pq;
    }
    ix->dim = o->dim;
    ix->metric = o->metric;
    ix->imetric = o->metric == QV_METRIC_L2 ? QV_METRIC_L2 : QV_METRIC_IP;
    ix->nlist = o->nlist;
    ix->kmeans_iters = o->kmeans_iters;
    ix->train_points = o->train_points;
    ix->seed = o->seed;
    ix->keep_vectors = o->keep_vectors != 0;
    ix->pool = o->pool;
    ix->owns_tables = 1;
    qv__idmap_init(&ix->map);
    ix->engine = qv_engine_cpu_create(o->pool);
    if (!ix->engine)
        goto fail_engine;
    ix->lists = qv_calloc(o->nlist, sizeof *ix->lists, QV_MEM_INDEX);
    ix->wl = qv_calloc(o->nlist, sizeof *ix->wl, QV_MEM_INDEX);
    ix->wl_rows = qv_calloc(o->nlist, sizeof *ix->wl_rows, QV_MEM_INDEX);
    ix->list_nos = qv_malloc((size_t)o->nlist * sizeof(uint64_t), QV_MEM_INDEX);
    if (!ix->lists || !ix->wl || !ix->wl_rows || !ix->list_nos)
        goto fail_lists;
    for (uint32_t l = 0; l < o->nlist; l++)
        ix->list_nos[l] = l;
    return ix;

fail_lists:
    qv_free(ix->list_nos);
    qv_free(ix->wl_rows);
    qv_free(ix->wl);
    qv_free(ix->lists);
    qv_engine_free(ix->engine);
fail_engine:
    qv_pq_fini(&ix->pq);
    qv_errno = qv_seterr(QV_ENOMEM, "ivfpq: no memory for %u lists", o->nlist);
fail_pq:
    qv_free(ix);
    return NULL;
}

/* Blocked centroids, norms and (L2) the list tables, from ix->coarse and
 * the codebooks.  0 or QV_ENOMEM. */
static int build_tables(struct qv_ivfpq *ix)
{
    const uint32_t nlist = ix->nlist, dim = ix->dim;
    size_t groups = (nlist + QV_BLOCK - 1) / QV_BLOCK;

    ix->coarse_blk = qv_malloc(groups * QV_BLOCK * dim * sizeof(float), QV_MEM_INDEX);
    ix->coarse_norms = qv_malloc(groups * QV_BLOCK * sizeof(float), QV_MEM_INDEX);
    if (!ix->coarse_blk || !ix->coarse_norms)
        return QV_ENOMEM;
    qv_block_pack(ix->coarse_blk, 0, ix->coarse, nlist, dim);
    memset(ix->coarse_norms, 0, groups * QV_BLOCK * sizeof(float));
    for (uint32_t l = 0; l < nlist; l++) {
        float s = 0.0f;
        for (uint32_t d = 0; d < dim; d++)
            s += ix->coarse[(size_t)l * dim + d] * ix->coarse[(size_t)l * dim + d];
        ix->coarse_norms[l] = s;
    }
    return 0;
}

static int build_ltab(struct qv_ivfpq *ix)
{
    const struct qv_pq *pq = &ix->pq;
    size_t tsz = (size_t)pq->m * pq->ksub;
    if (ix->imetric != QV_METRIC_L2 || (size_t)ix->nlist * tsz * sizeof(float) > QV_IVFPQ_MAX_LTAB)
        return 0;
    ix->ltab = qv_malloc((size_t)ix->nlist * tsz * sizeof(float), QV_MEM_INDEX);
    if (!ix->ltab)
        return QV_ENOMEM;
    for (uint32_t l = 0; l < ix->nlist; l++) {
        const float *c = ix->coarse + (size_t)l * ix->dim;
        float *t = ix->ltab + (size_t)l * tsz;
        for (uint32_t j = 0; j < pq->m; j++)
            for (uint32_t k = 0; k < pq->ksub; k++) {
                const float *y = pq->cents + ((size_t)j * pq->ksub + k) * pq->dsub;
                const float *cj = c + (size_t)j * pq->dsub;
                float yy = 0.0f, cy = 0.0f;
                for (uint32_t d = 0; d < pq->dsub; d++) {
                    yy += y[d] * y[d];
                    cy += cj[d] * y[d];
                }
                t[j * pq->ksub + k] = yy + 2.0f * cy;
            }
    }
    return 0;
}

/* Copy of x, normalised when the metric is cosine; else x itself. */
static const float *prepare(const struct qv_ivfpq *ix, const float *x, size_t n, float **own)
{
    *own = NULL;
    if (ix->metric != QV_METRIC_COSINE)
        return x;
    float *y = qv_malloc(n * ix->dim * sizeof(float), QV_MEM_INDEX);
    if (!y)
        return NULL;
    memcpy(y, x, n * ix->dim * sizeof(float));
    for (size_t i = 0; i < n; i++)
        qv_kernels()->normalize_f32(y + i * ix->dim, ix->dim);
    *own = y;
    return y;
}

int qv_ivfpq_train(struct qv_ivfpq *ix, const float *x, size_t n)
{
    const struct qv_pq *pq = &ix->pq;
    float *own = NULL, *res = NULL;
    uint32_t *assign = NULL;
    int rc;

    if (ix->trained)
        return qv_seterr(QV_EINVAL, "ivfpq: already trained; create a new index to retrain");
    if (n < ix->nlist || n < pq->ksub)
        return qv_seterr(QV_EINVAL, "ivfpq: %zu training vectors for nlist = %u and %u "
                         "codes per sub-quantiser; give at least %u", n, ix->nlist, pq->ksub,
                         ix->nlist > pq->ksub ? ix->nlist : pq->ksub);
    rc = check_finite(x, n * ix->dim, "train");
    if (rc)
        return rc;
    const float *xs = prepare(ix, x, n, &own);
    if (!xs)
        return qv_seterr(QV_ENOMEM, "ivfpq: no memory to normalise the training set");
    ix->coarse = qv_malloc((size_t)ix->nlist * ix->dim * sizeof(float), QV_MEM_INDEX);
    if (!ix->coarse) {
        rc = QV_ENOMEM;
        goto out;
    }
    struct qv_kmeans_opts ko = {
        .k = ix->nlist, .dim = ix->dim, .iters = ix->kmeans_iters, .seed = ix->seed,
        .max_points = ix->train_points ? ix->train_points : (size_t)256 * ix->nlist,
        .metric = ix->imetric, .pool = ix->pool,
    };
    rc = qv_kmeans_train(&ko, xs, n, ix->coarse, NULL);
    if (rc)
        goto out;
    /* Residuals of an even-stride sample for the codebooks. */
    size_t ns = ix->train_points ? ix->train_points : (size_t)256 * pq->ksub;
    if (ns > n)
        ns = n;
    res = qv_malloc(ns * ix->dim * sizeof(float), QV_MEM_INDEX);
    assign = qv_malloc(ns * sizeof(uint32_t), QV_MEM_INDEX);
    if (!res || !assign) {
        rc = QV_ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < ns; i++) {
        size_t src = ns == n ? i : (size_t)((double)i * (double)n / (double)ns);
        memcpy(res + i * ix->dim, xs + src * ix->dim, ix->dim * sizeof(float));
    }
    rc = qv_kmeans_assign(ix->coarse, ix->nlist, ix->dim, ix->imetric, res, ns, assign, NULL,
                          ix->pool);
    if (rc)
        goto out;
    for (size_t i = 0; i < ns; i++)
        for (uint32_t d = 0; d < ix->dim; d++)
            res[i * ix->dim + d] -= ix->coarse[(size_t)assign[i] * ix->dim + d];
    rc = qv_pq_train(&ix->pq, res, ns, ix->seed + 1, ns, ix->pool);
    if (rc)
        goto out;
    rc = build_tables(ix);
    if (!rc)
        rc = build_ltab(ix);
    if (!rc)
        ix->trained = 1;
out:
    if (rc && !ix->trained) {
        qv_free(ix->coarse);
        qv_free(ix->coarse_blk);
        qv_free(ix->coarse_norms);
        qv_free(ix->ltab);
        ix->coarse = ix->coarse_blk = ix->coarse_norms = ix->ltab = NULL;
        if (rc == QV_ENOMEM)
            qv_seterr(rc, "ivfpq: no memory to train on %zu vectors", n);
    }
    qv_free(assign);
    qv_free(res);
    qv_free(own);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Mutation                                                              */
/* ------------------------------------------------------------------ */

static void sync_wl(struct qv_ivfpq *ix, uint32_t l)
{
    struct ivfpq_list *L = &ix->lists[l];
    ix->wl[l] = (struct qv_wu_list){
        .codes = L->codes, .norms = NULL, .ids = L->ids, .rows = L->rows,
        .n = L->n, .list_no = l,
    };
    ix->wl_rows[l] = ix->wl[l];
    ix->wl_rows[l].ids = L->rid;
}

static int list_reserve(struct qv_ivfpq *ix, struct ivfpq_list *L, size_t need)
{
    if (need <= L->cap)
        return 0;
    if (need > UINT32_MAX)
        return QV_ENOMEM;
    size_t cap = L->cap ? L->cap : 32;
    while (cap < need)
        cap *= 2;
    size_t old_bytes = list_code_bytes(ix, L->cap);
    uint8_t *codes = qv_realloc(L->codes, list_code_bytes(ix, cap), QV_MEM_INDEX);
    if (!codes)
        return QV_ENOMEM;
    memset(codes + old_bytes, 0, list_code_bytes(ix, cap) - old_bytes);
    L->codes = codes;
    uint64_t *ids = qv_realloc(L->ids, cap * sizeof(uint64_t), QV_MEM_INDEX);
    if (!ids)
        return QV_ENOMEM;
    L->ids = ids;
    uint32_t *rows = qv_realloc(L->rows, cap * sizeof(uint32_t), QV_MEM_INDEX);
    if (!rows)
        return QV_ENOMEM;
    L->rows = rows;
    uint64_t *rid = qv_realloc(L->rid, cap * sizeof(uint64_t), QV_MEM_INDEX);
    if (!rid)
        return QV_ENOMEM;
    L->rid = rid;
    L->cap = (uint32_t)cap;
    return 0;
}

static int rows_reserve(struct qv_ivfpq *ix, uint64_t need)
{
    if (need <= ix->cap_rows)
        return 0;
    if (need > UINT32_MAX)
        return QV_ENOMEM;
    uint64_t cap = ix->cap_rows ? ix->cap_rows : 1024;
    while (cap < need)
        cap *= 2;
    uint64_t *ri = qv_realloc(ix->row_ids, cap * sizeof(uint64_t), QV_MEM_INDEX);
    if (!ri)
        return QV_ENOMEM;
    ix->row_ids = ri;
    uint64_t *lv = qv_realloc(ix->live, cap / 64 * sizeof(uint64_t), QV_MEM_INDEX);
    if (!lv)
        return QV_ENOMEM;
    memset(lv + ix->cap_rows / 64, 0, (cap - ix->cap_rows) / 64 * sizeof(uint64_t));
    ix->live = lv;
    if (ix->keep_vectors) {
        float *v = qv_realloc(ix->vecs, cap * ix->dim * sizeof(float), QV_MEM_INDEX);
        if (!v)
            return QV_ENOMEM;
        ix->vecs = v;
    }
    ix->cap_rows = cap;
    return 0;
}

/* Copy lists and row arrays out of the file mapping.  0 or QV_ENOMEM
 * (nothing changed). */
/* Tell engine e (the borrowed one; may be NULL) that list l's codes are
 * about to be freed or rewritten (engine.h, qv_engine_forget). */
static void forget_list(const struct qv_ivfpq *ix, struct qv_engine *e, uint32_t l)
{
    qv_engine_forget(e, ix->lists[l].codes);
}

/* ... every list and the tables units pass in params. */
static void forget_all(const struct qv_ivfpq *ix, struct qv_engine *e)
{
    if (!e)
        return;
    for (uint32_t l = 0; ix->lists && l < ix->nlist; l++)
        forget_list(ix, e, l);
    qv_engine_forget(e, ix->pq.cents);
    qv_engine_forget(e, ix->coarse);
    qv_engine_forget(e, ix->ltab);
}

static int materialise(struct qv_ivfpq *ix)
{
    if (!ix->mapped)
        return 0;
    forget_all(ix, ix->use);        /* the mapped lists go away */
    struct ivfpq_list *nl = qv_calloc(ix->nlist, sizeof *nl, QV_MEM_INDEX);
    struct qv_ivfpq tmp = *ix;
    int rc = QV_ENOMEM;
    if (!nl)
        return qv_seterr(QV_ENOMEM, "ivfpq: no memory to copy a loaded index's lists");
    for (uint32_t l = 0; l < ix->nlist; l++) {
        const struct ivfpq_list *L = &ix->lists[l];
        if (list_reserve(ix, &nl[l], L->n ? L->n : 1))
            goto fail;
        memcpy(nl[l].codes, L->codes, list_code_bytes(ix, L->n));
        memcpy(nl[l].ids, L->ids, L->n * sizeof(uint64_t));
        memcpy(nl[l].rows, L->rows, L->n * sizeof(uint32_t));
        memcpy(nl[l].rid, L->rid, L->n * sizeof(uint64_t));
        nl[l].n = L->n;
    }
    tmp.row_ids = NULL;
    tmp.live = NULL;
    tmp.vecs = NULL;
    tmp.cap_rows = 0;
    if (rows_reserve(&tmp, ix->rows ? ix->rows : 1))
        goto fail_rows;
    memcpy(tmp.row_ids, ix->row_ids, ix->rows * sizeof(uint64_t));
    memcpy(tmp.live, ix->live, (ix->rows + 63) / 64 * sizeof(uint64_t));
    if (ix->keep_vectors)
        memcpy(tmp.vecs, ix->vecs, ix->rows * ix->dim * sizeof(float));
    ix->row_ids = tmp.row_ids;
    ix->live = tmp.live;
    ix->vecs = tmp.vecs;
    ix->cap_rows = tmp.cap_rows;
    for (uint32_t l = 0; l < ix->nlist; l++)
        qv_free(ix->lists[l].rid);
    qv_free(ix->lists);
    ix->lists = nl;
    for (uint32_t l = 0; l < ix->nlist; l++)
        sync_wl(ix, l);
    ix->mapped = 0;
    return 0;

fail_rows:
    qv_free(tmp.row_ids);
    qv_free(tmp.live);
    qv_free(tmp.vecs);
fail:
    for (uint32_t l = 0; l < ix->nlist; l++) {
        qv_free(nl[l].codes);
        qv_free(nl[l].ids);
        qv_free(nl[l].rows);
        qv_free(nl[l].rid);
    }
    qv_free(nl);
    return qv_seterr(rc, "ivfpq: no memory to copy a loaded index's lists");
}

struct encode_job {
    struct qv_ivfpq *ix;
    const float *x;
    const uint32_t *assign;
    uint8_t *codes;
    float *resid;               /* per worker dim floats */
    size_t n;
};

#define ENC_CHUNK 256u

static void encode_task(void *arg, unsigned task, unsigned worker)
{
    struct encode_job *J = arg;
    const uint32_t dim = J->ix->dim;
    float *r = J->resid + (size_t)worker * dim;
    size_t lo = (size_t)task * ENC_CHUNK, hi = lo + ENC_CHUNK < J->n ? lo + ENC_CHUNK : J->n;
    for (size_t i = lo; i < hi; i++) {
        const float *c = J->ix->coarse + (size_t)J->assign[i] * dim;
        for (uint32_t d = 0; d < dim; d++)
            r[d] = J->x[i * dim + d] - c[d];
        qv_pq_encode(&J->ix->pq, r, 1, J->codes + i * J->ix->pq.code_size);
    }
}

int qv_ivfpq_add(struct qv_ivfpq *ix, size_t n, const float *vecs, const uint64_t *ids)
{
    float *own = NULL, *resid = NULL;
    uint32_t *assign = NULL, *count = NULL;
    uint8_t *codes = NULL;
    int rc;

    if (!ix->trained)
        return qv_seterr(QV_EINVAL, "ivfpq: add before train; train the index first");
    if (n == 0)
        return 0;
    rc = check_finite(vecs, n * ix->dim, "add");
    if (rc)
        return rc;
    /* duplicates: against the index, then within the batch */
    for (size_t i = 0; ids && i < n; i++)
        if (ids[i] == QV_ID_NONE || qv__idmap_get(&ix->map, ids[i]) >= 0)
            return qv_seterr(QV_EEXIST, "ivfpq: id %llu is already in the index",
                             (unsigned long long)ids[i]);
    rc = materialise(ix);
    if (rc)
        return rc;
    rc = QV_ENOMEM;
    const float *xs = prepare(ix, vecs, n, &own);
    if (!xs)
        goto fail;
    assign = qv_malloc(n * sizeof(uint32_t), QV_MEM_INDEX);
    codes = qv_malloc(n * ix->pq.code_size, QV_MEM_INDEX);
    count = qv_calloc(ix->nlist, sizeof(uint32_t), QV_MEM_INDEX);
    unsigned threads = ix->pool ? qv_pool_threads(ix->pool) : 1;
    resid = qv_malloc((size_t)threads * ix->dim * sizeof(float), QV_MEM_INDEX);
    if (!assign || !codes || !count || !resid)
        goto fail;
    if (qv__idmap_reserve(&ix->map, n))
        goto fail;
    for (size_t i = 0; ids && i < n; i++) {
        if (qv__idmap_get(&ix->map, ids[i]) >= 0) {
            rc = qv_seterr(QV_EEXIST, "ivfpq: id %llu is repeated in the batch",
                           (unsigned long long)ids[i]);
            goto undo_ids;
        }
        qv__idmap_put(&ix->map, ids[i], ix->rows + i);     /* reserved: cannot fail */
    }
    for (size_t i = 0; !ids && i < n; i++) {
        if (qv__idmap_get(&ix->map, ix->rows + i) >= 0) {
            rc = qv_seterr(QV_EEXIST, "ivfpq: id %llu (the next row number) is already "
                           "in the index; pass ids", (unsigned long long)(ix->rows + i));
            goto undo_ids;
        }
        qv__idmap_put(&ix->map, ix->rows + i, ix->rows + i);
    }
    rc = qv_kmeans_assign(ix->coarse, ix->nlist, ix->dim, ix->imetric, xs, n, assign, NULL,
                          ix->pool);
    if (rc)
        goto undo_ids;
    rc = QV_ENOMEM;
    for (size_t i = 0; i < n; i++)
        count[assign[i]]++;
    for (uint32_t l = 0; l < ix->nlist; l++)
        if (count[l])           /* reallocated or appended to in place */
            forget_list(ix, ix->use, l);
    for (uint32_t l = 0; l < ix->nlist; l++)
        if (count[l] && list_reserve(ix, &ix->lists[l], (size_t)ix->lists[l].n + count[l]))
            goto undo_ids;
    if (rows_reserve(ix, ix->rows + n))
        goto undo_ids;

    struct encode_job J = { .ix = ix, .x = xs, .assign = assign, .codes = codes,
                            .resid = resid, .n = n };
    unsigned tasks = (unsigned)((n + ENC_CHUNK - 1) / ENC_CHUNK);
    if (ix->pool)
        qv_pool_run(ix->pool, tasks, encode_task, &J);
    else
        for (unsigned t = 0; t < tasks; t++)
            encode_task(&J, t, 0);

    for (size_t i = 0; i < n; i++) {
        uint64_t row = ix->rows + i;
        struct ivfpq_list *L = &ix->lists[assign[i]];
        const uint8_t *code = codes + i * ix->pq.code_size;
        if (ix->pq.nbits == 4)
            qv_pq_fs_put(L->codes, L->n, ix->pq.m, code);
        else
            memcpy(L->codes + (size_t)L->n * ix->pq.m, code, ix->pq.m);
        L->ids[L->n] = ids ? ids[i] : row;
        L->rows[L->n] = (uint32_t)row;
        L->rid[L->n] = row;
        L->n++;
        ix->row_ids[row] = ids ? ids[i] : row;
        ix->live[row / 64] |= 1ULL << (row % 64);
        if (ix->keep_vectors)
            memcpy(ix->vecs + row * ix->dim, xs + i * ix->dim, ix->dim * sizeof(float));
    }
    for (uint32_t l = 0; l < ix->nlist; l++)
        if (count[l])
            sync_wl(ix, l);
    ix->rows += n;
    ix->nlive += n;
    rc = 0;
    goto done;

undo_ids:
    for (size_t i = 0; i < n; i++) {
        uint64_t id = ids ? ids[i] : ix->rows + i;
        int64_t r = qv__idmap_get(&ix->map, id);
        if (r >= 0 && (uint64_t)r >= ix->rows)
            qv__idmap_del(&ix->map, id);
    }
fail:
    if (rc == QV_ENOMEM)
        qv_seterr(rc, "ivfpq: no memory to add %zu vectors", n);
done:
    qv_free(resid);
    qv_free(count);
    qv_free(codes);
    qv_free(assign);
    qv_free(own);
    return rc;
}

long qv_ivfpq_remove(struct qv_ivfpq *ix, size_t n, const uint64_t *ids)
{
    long removed = 0;
    int rc = materialise(ix);
    if (rc)
        return rc;
    for (size_t i = 0; i < n; i++) {
        int64_t r = qv__idmap_get(&ix->map, ids[i]);
        if (r < 0)
            continue;
        qv__idmap_del(&ix->map, ids[i]);
        ix->live[r / 64] &= ~(1ULL << (r % 64));
        ix->nlive--;
        removed++;
    }
    return removed;
}

/* ------------------------------------------------------------------ */
/* Search                                                                */
/* ------------------------------------------------------------------ */

struct search_job {
    struct qv_ivfpq *ix;
    const float *q;
    size_t nq;
    uint32_t k, kk, nprobe;
    float *qnorms;
    float *pdist;
    uint64_t *pids;
    uint32_t *probe_lists;
    float *qtab;
    struct qv_topk *heaps;
    struct qv_pq_res *res;          /* nq reservoirs, or NULL */
    float *dist;
    uint64_t *ids;
};

/* Probe selection and per-query tables for queries [lo, hi). */
static void probe_task(void *arg, unsigned task, unsigned worker)
{
    struct search_job *S = arg;
    struct qv_ivfpq *ix = S->ix;
    const struct qv_pq *pq = &ix->pq;
    const uint32_t dim = ix->dim, np = S->nprobe;
    size_t lo = (size_t)task * QCHUNK, hi = lo + QCHUNK < S->nq ? lo + QCHUNK : S->nq;
    struct qv_topk ph[QCHUNK];

    for (size_t i = lo; i < hi; i++)
        qv_topk_init(&ph[i - lo], np, S->pdist + i * np, S->pids + i * np);
    struct qv_scan_args a = {
        .queries = S->q + lo * dim, .nq = hi - lo, .dim = dim,
        .qnorms = S->qnorms + lo, .blocks = ix->coarse_blk, .norms = ix->coarse_norms,
        .ids = ix->list_nos, .nvec = ix->nlist, .mask = NULL, .metric = ix->imetric,
        .heaps = ph, .prefetch = 0,
    };
    qv_kernels()->scan_f32(&a);
    const size_t tsz = (size_t)pq->m * pq->ksub;
    for (size_t i = lo; i < hi; i++) {
        qv_topk_sort(&ph[i - lo]);
        for (uint32_t j = 0; j < np; j++)
            S->probe_lists[i * np + j] = (uint32_t)S->pids[i * np + j];
        if (S->qtab && (ix->imetric == QV_METRIC_IP || ix->ltab)) {
            float *t = S->qtab + i * tsz;
            qv_kernels()->pq->lut_f32(S->q + i * dim, pq->cents, pq->m, pq->ksub, pq->dsub,
                                      QV_METRIC_IP, t);
            if (ix->imetric == QV_METRIC_L2)
                for (size_t e = 0; e < tsz; e++)
                    t[e] *= 2.0f;
        }
    }
}

/* Results of queries [lo, hi): re-rank or copy out. */
static void result_task(void *arg, unsigned task, unsigned worker)
{
    struct search_job *S = arg;
    struct qv_ivfpq *ix = S->ix;
    const uint32_t k = S->k, dim = ix->dim;
    size_t lo = (size_t)task * QCHUNK, hi = lo + QCHUNK < S->nq ? lo + QCHUNK : S->nq;
    const float add = ix->metric == QV_METRIC_COSINE ? 1.0f : 0.0f;

    for (size_t i = lo; i < hi; i++) {
        struct qv_topk *h = &S->heaps[i];
        float *od = S->dist + i * k;
        uint64_t *oi = S->ids + i * k;
        const float *cd = h->dist;
        const uint64_t *ci = h->ids;
        uint32_t cn = h->n;
        if (S->res) {
            /* the best kk are the best of the reservoir and the heap
             * (filled by other workers' merges): one selection */
            struct qv_pq_res *r = &S->res[i];
            for (uint32_t c = 0; c < h->n; c++)
                if (qv_pq_res_admits(r, h->dist[c], h->ids[c]))
                    qv_pq_res_add(r, h->dist[c], h->ids[c]);
            qv_pq_res_compact(r);
            cd = r->dist;
            ci = r->ids;
            cn = r->n;
        }
        if (S->kk > k) {
            /* the heap holds rows (wl_rows): start fetching every
             * candidate's vector, then compute */
            qv_dist_fn fn = qv_kernels()->dist[ix->imetric][QV_ELEM_F32];
            struct qv_topk t;
            qv_topk_init(&t, k, od, oi);
            for (uint32_t c = 0; c < cn; c++) {
                const char *v = (const char *)(ix->vecs + ci[c] * dim);
                for (size_t b = 0; b < dim * sizeof(float); b += 64)
                    __builtin_prefetch(v + b);
                __builtin_prefetch(&ix->row_ids[ci[c]]);
            }
            for (uint32_t c = 0; c < cn; c++) {
                uint64_t r = ci[c];
                float d = fn(S->q + i * dim, ix->vecs + r * dim, dim);
                qv_topk_push(&t, d + add, ix->row_ids[r]);
            }
            qv_topk_sort(&t);
        } else if (S->res) {
            struct qv_topk t;
            qv_topk_init(&t, k, od, oi);
            for (uint32_t c = 0; c < cn; c++)
                qv_topk_push(&t, cd[c], ci[c]);
            qv_topk_sort(&t);       /* pads with +inf, which + add keeps */
            for (uint32_t j = 0; j < k; j++)
                od[j] += add;
        } else {
            uint32_t got = qv_topk_sort(h);
            for (uint32_t j = 0; j < k; j++) {
                od[j] = j < got ? h->dist[j] + add : INFINITY;
                oi[j] = j < got ? h->ids[j] : QV_ID_NONE;
            }
        }
    }
}

static void run_chunks(struct qv_pool *pool, size_t nq, qv_pool_fn fn, void *arg)
{
    unsigned tasks = (unsigned)((nq + QCHUNK - 1) / QCHUNK);
    if (pool && tasks > 1)
        qv_pool_run(pool, tasks, fn, arg);
    else
        for (unsigned t = 0; t < tasks; t++)
            fn(arg, t, 0);
}

/* Probe selection of S's queries, what search and prefetch share: query
 * norms, CSR offsets (nprobe per query; offsets has nq + 1 entries) and
 * each query's nprobe nearest lists into S->probe_lists (with its query
 * table when S->qtab is set), on the pool.  O(nq * nlist * dim). */
static void select_probes(struct search_job *S, uint32_t *offsets)
{
    const uint32_t dim = S->ix->dim;
    for (size_t i = 0; i < S->nq; i++) {
        float s = 0.0f;
        for (uint32_t d = 0; d < dim; d++)
            s += S->q[i * dim + d] * S->q[i * dim + d];
        S->qnorms[i] = s;
        offsets[i] = (uint32_t)(i * S->nprobe);
    }
    offsets[S->nq] = (uint32_t)(S->nq * S->nprobe);
    run_chunks(S->ix->pool, S->nq, probe_task, S);
}

int qv_ivfpq_search(struct qv_ivfpq *ix, const float *queries, size_t nq, uint32_t k,
                    uint32_t nprobe, uint32_t refine, const uint64_t *filter, float *dist,
                    uint64_t *ids)
{
    const struct qv_pq *pq = &ix->pq;
    float *own = NULL;
    int rc = QV_ENOMEM;

    if (!ix->trained)
        return qv_seterr(QV_EINVAL, "ivfpq: search before train; train the index first");
    if (!queries || !dist || !ids || nq == 0 || nq > UINT32_MAX)
        return qv_seterr(QV_EINVAL, "ivfpq: search needs 1..2^32-1 queries and result arrays");
    if (k == 0 || k > QV_IVFPQ_MAX_K)
        return qv_seterr(QV_EINVAL, "ivfpq: k = %u is out of range; use 1..%u", k,
                         QV_IVFPQ_MAX_K);
    if (nprobe == 0)
        return qv_seterr(QV_EINVAL, "ivfpq: nprobe = 0; probe at least 1 list");
    if (refine > 1 && !ix->keep_vectors)
        return qv_seterr(QV_EINVAL, "ivfpq: refine = %u needs the vectors; create the "
                         "index with keep_vectors", refine);
    /* a NaN query has no nearest lists: its probe slots would stay empty
     * (QV_ID_NONE) and name list 2^32-1 in the unit */
    int frc = check_finite(queries, nq * ix->dim, "search");
    if (frc)
        return frc;
    if (nprobe > ix->nlist)
        nprobe = ix->nlist;
    uint64_t kk64 = refine > 1 ? (uint64_t)refine * k : k;
    uint32_t kk = kk64 > QV_IVFPQ_MAX_K * 10ULL ? QV_IVFPQ_MAX_K * 10u : (uint32_t)kk64;

    struct search_job S = { .ix = ix, .nq = nq, .k = k, .kk = kk, .nprobe = nprobe,
                            .dist = dist, .ids = ids };
    const size_t tsz = (size_t)pq->m * pq->ksub;
    const size_t words = (ix->rows + 63) / 64;
    int need_qtab = ix->imetric == QV_METRIC_IP || ix->ltab;
    int need_elig = filter || ix->nlive != ix->rows;
    uint32_t *offsets = NULL;
    uint64_t *elig = NULL, *hids = NULL, *rids = NULL;
    float *hdist = NULL, *rdist = NULL;
    int use_res = pq->nbits == 4 && kk >= QV_IVFPQ_RES_MIN_K;
    const size_t rcap = (size_t)kk * QV_IVFPQ_RES_FACTOR;

    S.q = prepare(ix, queries, nq, &own);
    S.qnorms = qv_malloc(nq * sizeof(float), QV_MEM_INDEX);
    S.pdist = qv_malloc(nq * nprobe * sizeof(float), QV_MEM_INDEX);
    S.pids = qv_malloc(nq * nprobe * sizeof(uint64_t), QV_MEM_INDEX);
    S.probe_lists = qv_malloc(nq * nprobe * sizeof(uint32_t), QV_MEM_INDEX);
    offsets = qv_malloc((nq + 1) * sizeof(uint32_t), QV_MEM_INDEX);
    S.qtab = need_qtab ? qv_malloc(nq * tsz * sizeof(float), QV_MEM_INDEX) : NULL;
    S.heaps = qv_malloc(nq * sizeof(struct qv_topk), QV_MEM_INDEX);
    hdist = qv_malloc(nq * kk * sizeof(float), QV_MEM_INDEX);
    hids = qv_malloc(nq * kk * sizeof(uint64_t), QV_MEM_INDEX);
    elig = need_elig ? qv_malloc((words ? words : 1) * sizeof(uint64_t), QV_MEM_INDEX) : NULL;
    if (use_res) {
        S.res = qv_malloc(nq * sizeof(struct qv_pq_res), QV_MEM_INDEX);
        rdist = qv_malloc(nq * rcap * sizeof(float), QV_MEM_INDEX);
        rids = qv_malloc(nq * rcap * sizeof(uint64_t), QV_MEM_INDEX);
    }
    if (!S.q || !S.qnorms || !S.pdist || !S.pids || !S.probe_lists || !offsets ||
        (need_qtab && !S.qtab) || !S.heaps || !hdist || !hids || (need_elig && !elig) ||
        (use_res && (!S.res || !rdist || !rids)))
        goto out;

    const uint32_t dim = ix->dim;
    for (size_t i = 0; i < nq; i++) {
        qv_topk_init(&S.heaps[i], kk, hdist + i * kk, hids + i * kk);
        if (use_res)
            qv_pq_res_init(&S.res[i], kk, (uint32_t)rcap, rdist + i * rcap, rids + i * rcap);
    }
    for (size_t w = 0; need_elig && w < words; w++)
        elig[w] = (filter ? filter[w] : ~0ULL) & ix->live[w];

    select_probes(&S, offsets);

    struct qv_pq_params P = {
        .pq = pq, .coarse = ix->coarse, .nlist = ix->nlist, .qtab = S.qtab, .ltab = ix->ltab,
        .res = S.res,
    };
    struct qv_work_unit wu = {
        .kind = QV_WU_PQ, .metric = ix->imetric, .dim = dim,
        .code_size = pq->nbits == 4 ? (pq->m + 1) / 2 : pq->m,
        .nq = (uint32_t)nq, .queries = S.q, .qnorms = S.qnorms,
        .nlists = ix->nlist, .lists = kk > k ? ix->wl_rows : ix->wl,
        .probe_offsets = offsets, .probe_lists = S.probe_lists,
        .params = &P, .filter = elig, .heaps = S.heaps,
    };
    rc = qv_engine_run(ix->use ? ix->use : ix->engine, &wu);
    if (rc)
        goto out;
    run_chunks(ix->pool, nq, result_task, &S);
    rc = 0;
out:
    if (rc == QV_ENOMEM)
        qv_seterr(rc, "ivfpq: no memory to search %zu queries (k %u, nprobe %u)", nq, k,
                  nprobe);
    qv_free(rids);
    qv_free(rdist);
    qv_free(S.res);
    qv_free(elig);
    qv_free(hids);
    qv_free(hdist);
    qv_free(S.heaps);
    qv_free(S.qtab);
    qv_free(offsets);
    qv_free(S.probe_lists);
    qv_free(S.pids);
    qv_free(S.pdist);
    qv_free(S.qnorms);
    qv_free(own);
    return rc;
}

int qv_ivfpq_prefetch(struct qv_ivfpq *ix, const float *queries, size_t nq, uint32_t nprobe)
{
    if (!ix->use)
        return 0;                   /* the CPU engine reads lists where they are */
    if (!ix->trained)
        return qv_seterr(QV_EINVAL, "ivfpq: prefetch before train; train the index first");
    if (!queries || nq == 0 || nq > UINT32_MAX)
        return qv_seterr(QV_EINVAL, "ivfpq: prefetch needs 1..2^32-1 queries");
    if (nprobe == 0)
        return qv_seterr(QV_EINVAL, "ivfpq: nprobe = 0; probe at least 1 list");
    if (nprobe > ix->nlist)
        nprobe = ix->nlist;
    if ((uint64_t)nq * nprobe > UINT32_MAX)
        return qv_seterr(QV_EINVAL, "ivfpq: prefetch of nq x nprobe = %zu x %u probes; split "
                         "the batch", nq, nprobe);
    const struct qv_pq *pq = &ix->pq;
    float *own = NULL;
    int rc = QV_ENOMEM;
    /* the PQ query tables are per query and small: not prefetched */
    struct search_job S = { .ix = ix, .nq = nq, .nprobe = nprobe };
    const size_t np = nq * nprobe, nd_cap = np < ix->nlist ? np : ix->nlist;
    S.q = prepare(ix, queries, nq, &own);
    S.qnorms = qv_malloc(nq * sizeof(float), QV_MEM_INDEX);
    S.pdist = qv_malloc(np * sizeof(float), QV_MEM_INDEX);
    S.pids = qv_malloc(np * sizeof(uint64_t), QV_MEM_INDEX);
    S.probe_lists = qv_malloc(np * sizeof(uint32_t), QV_MEM_INDEX);
    uint32_t *offsets = qv_malloc((nq + 1) * sizeof(uint32_t), QV_MEM_INDEX);
    uint32_t *compact = qv_malloc(ix->nlist * sizeof(uint32_t), QV_MEM_INDEX);
    struct qv_wu_list *dl = qv_malloc(nd_cap * sizeof *dl, QV_MEM_INDEX);
    if (!S.q || !S.qnorms || !S.pdist || !S.pids || !S.probe_lists || !offsets || !compact ||
        !dl)
        goto out;
    select_probes(&S, offsets);
    /* the distinct probed lists, in first-probe order, and the probes
     * renumbered into them (the router's cost model reads the probes);
     * a slot that names no list (a query with NaNs found none) is left
     * out of the CSR */
    memset(compact, 0xFF, ix->nlist * sizeof(uint32_t));
    uint32_t nd = 0, w = 0;
    for (size_t i = 0; i < nq; i++) {
        offsets[i] = w;
        for (size_t p = i * nprobe; p < (i + 1) * nprobe; p++) {
            uint32_t l = S.probe_lists[p];
            if (l >= ix->nlist)
                continue;
            if (compact[l] == UINT32_MAX) {
                compact[l] = nd;
                dl[nd++] = ix->wl[l];
            }
            S.probe_lists[w++] = compact[l];
        }
    }
    offsets[nq] = w;
    struct qv_pq_params P = {
        .pq = pq, .coarse = ix->coarse, .nlist = ix->nlist, .ltab = ix->ltab,
    };
    struct qv_work_unit wu = {
        .kind = QV_WU_PQ, .metric = ix->imetric, .dim = ix->dim,
        .code_size = pq->nbits == 4 ? (pq->m + 1) / 2 : pq->m,
        .nq = (uint32_t)nq, .queries = S.q, .qnorms = S.qnorms,
        .nlists = nd, .lists = dl, .probe_offsets = offsets, .probe_lists = S.probe_lists,
        .params = &P,
    };
    rc = qv_engine_prefetch(ix->use, &wu);
out:
    if (rc == QV_ENOMEM)
        qv_seterr(rc, "ivfpq: no memory to prefetch for %zu queries (nprobe %u)", nq, nprobe);
    qv_free(dl);
    qv_free(compact);
    qv_free(offsets);
    qv_free(S.probe_lists);
    qv_free(S.pids);
    qv_free(S.pdist);
    qv_free(S.qnorms);
    qv_free(own);
    return rc;
}

size_t qv_ivfpq_size(const struct qv_ivfpq *ix) { return ix->nlive; }
uint64_t qv_ivfpq_rows(const struct qv_ivfpq *ix) { return ix->rows; }
uint32_t qv_ivfpq_nlist(const struct qv_ivfpq *ix) { return ix->nlist; }
uint32_t qv_ivfpq_dim(const struct qv_ivfpq *ix) { return ix->dim; }

/* ------------------------------------------------------------------ */
/* Files                                                                 */
/* ------------------------------------------------------------------ */

#define TAG_META QV_FOURCC('M', 'E', 'T', 'A')
#define TAG_CCEN QV_FOURCC('C', 'C', 'E', 'N')
#define TAG_PQCB QV_FOURCC('P', 'Q', 'C', 'B')
#define TAG_LTAB QV_FOURCC('L', 'T', 'A', 'B')
#define TAG_LDIR QV_FOURCC('L', 'D', 'I', 'R')
#define TAG_CODE QV_FOURCC('C', 'O', 'D', 'E')
#define TAG_LIDS QV_FOURCC('L', 'I', 'D', 'S')
#define TAG_LROW QV_FOURCC('L', 'R', 'O', 'W')
#define TAG_RIDS QV_FOURCC('R', 'I', 'D', 'S')
#define TAG_LIVE QV_FOURCC('L', 'I', 'V', 'E')
#define TAG_VECS QV_FOURCC('V', 'E', 'C', 'S')

int qv_ivfpq_save(const struct qv_ivfpq *ix, const char *path)
{
    const struct qv_pq *pq = &ix->pq;
    struct qv_ixfile_writer *w = NULL;
    struct file_ldir *dir = NULL;
    uint8_t *codes = NULL;
    uint64_t *lids = NULL;
    uint32_t *lrow = NULL;
    uint64_t entries = 0, cbytes = 0;
    int rc = QV_ENOMEM;

    if (!ix->trained)
        return qv_seterr(QV_EINVAL, "ivfpq: save before train: %s not written", path);
    for (uint32_t l = 0; l < ix->nlist; l++) {
        entries += ix->lists[l].n;
        cbytes += (list_code_bytes(ix, ix->lists[l].n) + 63) & ~(uint64_t)63;
    }
    w = qv_malloc(sizeof *w, QV_MEM_INDEX);
    dir = qv_calloc(ix->nlist, sizeof *dir, QV_MEM_INDEX);
    codes = qv_calloc(cbytes ? cbytes : 1, 1, QV_MEM_INDEX);
    lids = qv_malloc((entries ? entries : 1) * sizeof(uint64_t), QV_MEM_INDEX);
    lrow = qv_malloc((entries ? entries : 1) * sizeof(uint32_t), QV_MEM_INDEX);
    if (!w || !dir || !codes || !lids || !lrow) {
        qv_seterr(rc, "ivfpq: no memory to save %s", path);
        goto out;
    }
    uint64_t co = 0, eo = 0;
    for (uint32_t l = 0; l < ix->nlist; l++) {
        const struct ivfpq_list *L = &ix->lists[l];
        dir[l].code_off = co;
        dir[l].first = eo;
        dir[l].n = L->n;
        memcpy(codes + co, L->codes, list_code_bytes(ix, L->n));
        memcpy(lids + eo, L->ids, L->n * sizeof(uint64_t));
        memcpy(lrow + eo, L->rows, L->n * sizeof(uint32_t));
        co += (list_code_bytes(ix, L->n) + 63) & ~(uint64_t)63;
        eo += L->n;
    }
    struct file_meta meta = {
        .dim = ix->dim, .metric = ix->metric, .nlist = ix->nlist, .m = pq->m,
        .nbits = pq->nbits, .keep_vectors = (uint32_t)ix->keep_vectors,
        .has_ltab = ix->ltab != NULL, .rows = ix->rows, .nlive = ix->nlive,
        .entries = entries, .seed = ix->seed,
    };
    qv_ixfile_writer_init(w, path, QV_IX_IVF_PQ);
    qv_ixfile_add(w, TAG_META, &meta, sizeof meta);
    qv_ixfile_add(w, TAG_CCEN, ix->coarse, (uint64_t)ix->nlist * ix->dim * sizeof(float));
    qv_ixfile_add(w, TAG_PQCB, pq->cents, (uint64_t)pq->ksub * pq->dim * sizeof(float));
    if (ix->ltab)
        qv_ixfile_add(w, TAG_LTAB, ix->ltab,
                      (uint64_t)ix->nlist * pq->m * pq->ksub * sizeof(float));
    qv_ixfile_add(w, TAG_LDIR, dir, (uint64_t)ix->nlist * sizeof *dir);
    qv_ixfile_add(w, TAG_CODE, codes, cbytes);
    qv_ixfile_add(w, TAG_LIDS, lids, entries * sizeof(uint64_t));
    qv_ixfile_add(w, TAG_LROW, lrow, entries * sizeof(uint32_t));
    qv_ixfile_add(w, TAG_RIDS, ix->row_ids, ix->rows * sizeof(uint64_t));
    qv_ixfile_add(w, TAG_LIVE, ix->live, (ix->rows + 63) / 64 * sizeof(uint64_t));
    if (ix->keep_vectors)
        qv_ixfile_add(w, TAG_VECS, ix->vecs, ix->rows * ix->dim * sizeof(float));
    rc = qv_ixfile_commit(w);
out:
    qv_free(lrow);
    qv_free(lids);
    qv_free(codes);
    qv_free(dir);
    qv_free(w);
    return rc;
}

/* Section `tag` of exactly `size` bytes (any size when size is
 * UINT64_MAX), or NULL with QV_ECORRUPT naming the file. */
static const void *section(const struct qv_ixfile *f, uint32_t tag, uint64_t size, int *rc)
{
    uint64_t got;
    const void *p = qv_ixfile_section(f, tag, &got);
    if (!p || (size != UINT64_MAX && got != size)) {
        char t[5] = { (char)tag, (char)(tag >> 8), (char)(tag >> 16), (char)(tag >> 24), 0 };
        *rc = qv_seterr(QV_ECORRUPT, "%s: ivfpq section %s is %s (%llu bytes, expected "
                        "%llu)", f->path, t, p ? "the wrong size" : "missing",
                        (unsigned long long)got, (unsigned long long)size);
        return NULL;
    }
    return p;
}

struct qv_ivfpq *qv_ivfpq_load(const char *path, struct qv_pool *pool)
{
    struct qv_ixfile f = { 0 };
    struct qv_ivfpq *ix = NULL;
    int rc = qv_ixfile_open(&f, path, QV_IX_IVF_PQ);
    if (rc)
        goto fail;
    const struct file_meta *meta = section(&f, TAG_META, sizeof(struct file_meta), &rc);
    if (!meta)
        goto fail;
    if (meta->metric >= QV_METRIC__COUNT || meta->dim == 0 || meta->dim > QV_IVFPQ_MAX_DIM ||
        meta->nlist == 0 || meta->m == 0 || meta->m > 256 || meta->dim % meta->m ||
        (meta->nbits != 4 && meta->nbits != 8) || meta->rows > UINT32_MAX ||
        meta->nlive > meta->rows || meta->entries != meta->rows || meta->keep_vectors > 1) {
        rc = qv_seterr(QV_ECORRUPT, "%s: ivfpq header fields out of range", path);
        goto fail;
    }
    struct qv_ivfpq_opts o = {
        .dim = meta->dim, .metric = (enum qv_metric)meta->metric, .nlist = meta->nlist,
        .m = meta->m, .nbits = meta->nbits, .keep_vectors = (int)meta->keep_vectors,
        .seed = meta->seed, .pool = pool,
    };
    ix = qv_ivfpq_create(&o);
    if (!ix) {
        rc = qv_errno;
        goto fail;
    }
    const struct qv_pq *pq = &ix->pq;
    const uint64_t nlist = meta->nlist, rows = meta->rows, ent = meta->entries;
    const float *ccen = section(&f, TAG_CCEN, nlist * meta->dim * 4, &rc);
    const float *cb = ccen ? section(&f, TAG_PQCB, (uint64_t)pq->ksub * meta->dim * 4, &rc) : NULL;
    const float *lt = NULL;
    if (cb && meta->has_ltab)
        lt = section(&f, TAG_LTAB, nlist * pq->m * pq->ksub * 4, &rc);
    const struct file_ldir *dir = (cb && (lt || !meta->has_ltab))
                                  ? section(&f, TAG_LDIR, nlist * sizeof *dir, &rc) : NULL;
    uint64_t cbytes = 0;
    const uint8_t *code = dir ? qv_ixfile_section(&f, TAG_CODE, &cbytes) : NULL;
    const uint64_t *lids = code ? section(&f, TAG_LIDS, ent * 8, &rc) : NULL;
    const uint32_t *lrow = lids ? section(&f, TAG_LROW, ent * 4, &rc) : NULL;
    const uint64_t *rids = lrow ? section(&f, TAG_RIDS, rows * 8, &rc) : NULL;
    const uint64_t *live = rids ? section(&f, TAG_LIVE, (rows + 63) / 64 * 8, &rc) : NULL;
    const float *vecs = NULL;
    if (live && meta->keep_vectors)
        vecs = section(&f, TAG_VECS, rows * meta->dim * 4, &rc);
    if (dir && !code)
        rc = qv_seterr(QV_ECORRUPT, "%s: ivfpq section CODE is missing", path);
    if (!live || (meta->keep_vectors && !vecs))
        goto fail;
    /* directory bounds: lists tile the entries and stay inside CODE */
    uint64_t next = 0;
    for (uint64_t l = 0; l < nlist; l++) {
        if (dir[l].first != next || dir[l].code_off % 64 ||
            dir[l].code_off > cbytes || list_code_bytes(ix, dir[l].n) > cbytes - dir[l].code_off) {
            rc = qv_seterr(QV_ECORRUPT, "%s: ivfpq list %llu is out of bounds", path,
                           (unsigned long long)l);
            goto fail;
        }
        next += dir[l].n;
    }
    if (next != ent) {
        rc = qv_seterr(QV_ECORRUPT, "%s: ivfpq lists hold %llu entries, header says %llu",
                       path, (unsigned long long)next, (unsigned long long)ent);
        goto fail;
    }
    for (uint64_t e = 0; e < ent; e++)
        if (lrow[e] >= rows) {
            rc = qv_seterr(QV_ECORRUPT, "%s: ivfpq entry %llu has row %u of %llu", path,
                           (unsigned long long)e, lrow[e], (unsigned long long)rows);
            goto fail;
        }

    /* tables point into the mapping */
    qv_pq_fini(&ix->pq);
    qv_pq_init_borrowed(&ix->pq, meta->dim, meta->m, meta->nbits, cb);
    ix->coarse = (float *)ccen;
    ix->ltab = (float *)lt;
    ix->owns_tables = 0;
    rc = build_tables(ix);
    if (rc)
        goto fail_nomem;
    for (uint32_t l = 0; l < nlist; l++) {
        struct ivfpq_list *L = &ix->lists[l];
        L->codes = (uint8_t *)code + dir[l].code_off;
        L->ids = (uint64_t *)lids + dir[l].first;
        L->rows = (uint32_t *)lrow + dir[l].first;
        L->n = L->cap = dir[l].n;
        L->rid = qv_malloc((L->n ? L->n : 1) * sizeof(uint64_t), QV_MEM_INDEX);
        if (!L->rid)
            goto fail_nomem;
        for (uint32_t e = 0; e < L->n; e++)
            L->rid[e] = L->rows[e];
        sync_wl(ix, l);
    }
    ix->row_ids = (uint64_t *)rids;
    ix->live = (uint64_t *)live;
    ix->vecs = (float *)vecs;
    ix->rows = ix->cap_rows = rows;
    ix->mapped = 1;
    ix->trained = 1;
    size_t nlive = 0;
    if (qv__idmap_reserve(&ix->map, meta->nlive))
        goto fail_nomem;
    for (uint64_t r = 0; r < rows; r++)
        if ((live[r / 64] >> (r % 64)) & 1) {
            if (qv__idmap_get(&ix->map, rids[r]) >= 0) {
                rc = qv_seterr(QV_ECORRUPT, "%s: ivfpq id %llu appears twice", path,
                               (unsigned long long)rids[r]);
                goto fail;
            }
            qv__idmap_put(&ix->map, rids[r], r);
            nlive++;
        }
    if (nlive != meta->nlive) {
        rc = qv_seterr(QV_ECORRUPT, "%s: ivfpq live rows %zu, header says %llu", path, nlive,
                       (unsigned long long)meta->nlive);
        goto fail;
    }
    ix->nlive = nlive;
    ix->file = f;
    return ix;

fail_nomem:
    rc = qv_seterr(QV_ENOMEM, "%s: no memory to load the ivfpq index", path);
fail:
    if (ix) {
        ix->mapped = 1;           /* nothing of the file is owned (rid is,
                                     freed whatever mapped says) */
        ix->row_ids = NULL;
        ix->live = NULL;
        ix->vecs = NULL;
        qv_ivfpq_free(ix);
    }
    qv_ixfile_close(&f);
    qv_errno = rc;
    return NULL;
}

void qv_ivfpq_free(struct qv_ivfpq *ix)
{
    if (!ix)
        return;
    forget_all(ix, ix->use);
    if (!ix->mapped) {
        for (uint32_t l = 0; l < ix->nlist; l++) {
            qv_free(ix->lists[l].codes);
            qv_free(ix->lists[l].ids);
            qv_free(ix->lists[l].rows);
        }
        qv_free(ix->row_ids);
        qv_free(ix->live);
        qv_free(ix->vecs);
    }
    for (uint32_t l = 0; ix->lists && l < ix->nlist; l++)
        qv_free(ix->lists[l].rid);
    if (ix->owns_tables) {
        qv_free(ix->coarse);
        qv_free(ix->ltab);
    }
    qv_free(ix->coarse_blk);
    qv_free(ix->coarse_norms);
    qv_pq_fini(&ix->pq);
    qv__idmap_fini(&ix->map);
    qv_free(ix->list_nos);
    qv_free(ix->wl);
    qv_free(ix->wl_rows);
    qv_free(ix->lists);
    qv_engine_free(ix->engine);
    qv_ixfile_close(&ix->file);
    qv_free(ix);
}

void qv_ivfpq_set_engine(struct qv_ivfpq *ix, struct qv_engine *engine)
{
    if (ix->use != engine)
        forget_all(ix, ix->use);    /* it will not hear of later changes */
    ix->use = engine;
}
