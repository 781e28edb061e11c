/*
 * ivf.c - the IVF index with FLAT and SQ8 lists; contract in quiver/ivf.h.
 *
 * Memory.  Per list l (struct ivf_list), four arrays, each one 64-byte
 * aligned block from qv_malloc (or a range of the file mapping):
 *
 *   codes   FLAT: ceil(cap / 16) groups of 16 x dim floats (dist.h blocked
 *                 layout); SQ8: cap x dim bytes, row-major
 *   norms   FLAT + L2: |x|^2 per entry (absent otherwise)
 *   ids     u64 user id per entry
 *   rows    u32 row number per entry (the filter's bit)
 *
 * A list grows by qv_realloc of each array to twice its capacity (rounded
 * to 16 entries).  qv_malloc rather than an arena, because arenas never
 * free and a growing list abandons its old block each time; a realloc
 * that cannot extend in place copies, amortised O(1) per entry.  The
 * index also keeps a live bitmap over rows (tombstones: remove clears the
 * bit; search ANDs it into the filter when anything was removed) and an
 * id -> row map for remove and duplicate checks.
 *
 * Search.  (1) Probe selection: the centroids are kept packed in the
 * blocked layout with their norms, and the fused scan kernel finds each
 * query's nprobe nearest (heaps of k = nprobe), in parallel over chunks
 * of queries.  (2) One work unit: lists[] = every list of the index
 * (cached, refreshed after add), probes in CSR form nearest-first,
 * executed by the index's CPU engine.  (3) Sort each query's heap.
 * Prefetch (qv_ivf_prefetch) runs the same probe selection (probes_select)
 * and hands the engine the distinct probed lists, with the probes
 * renumbered into them, as one prefetch (engine.h).
 *
 * Index file (ixfile.h container; type QV_IX_IVF_FLAT or QV_IX_IVF_SQ8):
 *
 *   TAG   CONTENT
 *   IVFH  struct ivf_file_header (below): version, dim, metric,
 *         encoding, nlist, rows, live count, seed, iters
 *   CENT  nlist x dim float32 centroids
 *   SQ8R  SQ8 only: vmin[dim], vdiff[dim]
 *   LDIR  nlist x struct ivf_file_list: n and the byte offsets of the
 *         list's codes / norms / ids / rows inside CODE / NORM / IDS_ /
 *         ROWS (each a multiple of 64)
 *   CODE  the lists' codes, back to back, each padded to 64 bytes
 *   NORM  FLAT + L2: the lists' norms, likewise
 *   IDS_  the lists' ids
 *   ROWS  the lists' rows
 *   LIVE  ceil(rows / 64) u64: the live bitmap
 *
 * Loading maps the file (checksums verified by ixfile), checks every
 * directory entry against its section's bounds and every row against the
 * row count, and points the lists into the mapping: no list data is
 * copied.  The live bitmap is copied (rows / 8 bytes) so removes work; the
 * id map is built on the first add or remove.  Adding to a loaded index is
 * allowed: a mapped list is copied to the heap when it first grows.
 */
#include <math.h>
#include <pthread.h>
#include <string.h>

#include "idmap.h"
#include "quiver/alloc.h"
#include "quiver/engine.h"
#include "quiver/errors.h"
#include "quiver/ivf.h"
#include "quiver/ixfile.h"
#include "quiver/kmeans.h"
#include "quiver/pool.h"
#include "quiver/sq8.h"
#include "quiver/topk.h"

#define IVF_MAX_DIM 65536u
#define IVF_MAX_K 100000u
#define IVF_MAX_ROWS 0xFFFFFFFEull
#define IVF_PROBE_CHUNK 32u         /* queries per probe-selection task */
#define IVF_FILE_VERSION 1u

#define TAG_HEAD QV_FOURCC('I', 'V', 'F', 'H')
#define TAG_CENT QV_FOURCC('C', 'E', 'N', 'T')
#define TAG_SQ8R QV_FOURCC('S', 'Q', '8', 'R')
#define TAG_LDIR QV_FOURCC('L', 'D', 'I', 'R')
#define TAG_CODE QV_FOURCC('C', 'O', 'D', 'E')
#define TAG_NORM QV_FOURCC('N', 'O', 'R', 'M')
#define TAG_IDS  QV_FOURCC('I', 'D', 'S', '_')
#define TAG_ROWS QV_FOURCC('R', 'O', 'W', 'S')
#define TAG_LIVE QV_FOURCC('L', 'I', 'V', 'E')

struct ivf_file_header {
    uint32_t version;
    uint32_t dim;
    uint32_t metric;
    uint32_t encoding;
    uint32_t nlist;
    uint32_t iters;
    uint64_t rows;
    uint64_t live;
    uint64_t seed;
    uint64_t train_points;
};

struct ivf_file_list {
    uint64_t n;
    uint64_t codes_off;
    uint64_t norms_off;
    uint64_t ids_off;
    uint64_t rows_off;
};

struct ivf_list {
    void *codes;
    float *norms;
    uint64_t *ids;
    uint32_t *rows;
    uint32_t n;
    uint32_t cap;
    int owned;                      /* 0: points into the file mapping */
};

struct qv_ivf {
    struct qv_ivf_opts o;
    uint32_t dim;
    int trained;
    /* quantiser */
    float *centroids;               /* nlist x dim */
    float *cblocks;                 /* packed centroids */
    float *cnorms;
    uint64_t *cids;
    /* SQ8 ranges */
    float *vmin;
    float *vdiff;
    /* lists */
    struct ivf_list *lists;
    struct qv_wu_list *wl;          /* the engine's view of lists[] */
    uint64_t rows;
    size_t live;
    uint64_t *livebits;
    size_t live_words_cap;
    struct qv_idmap map;
    int map_built;
    /* execution */
    struct qv_engine *engine;       /* the index's own CPU engine */
    struct qv_engine *use;          /* borrowed engine for searches, or NULL */
    pthread_mutex_t lock;           /* serialises searches (engine scratch) */
    /* loaded */
    struct qv_ixfile file;
    int mapped;
    const float *file_centroids;
};

static size_t al64(size_t b) { return (b + 63) & ~(size_t)63; }

/* Bytes of the codes of `cap` entries. */
static size_t codes_bytes(const struct qv_ivf *ix, size_t cap)
{
    if (ix->o.encoding == QV_IVF_FLAT)
        return (cap + QV_BLOCK - 1) / QV_BLOCK * QV_BLOCK * ix->dim * sizeof(float);
    return cap * ix->dim;
}

static int has_norms(const struct qv_ivf *ix)
{
    return ix->o.encoding == QV_IVF_FLAT && ix->o.metric == QV_METRIC_L2;
}

static enum qv_metric scan_metric(const struct qv_ivf *ix)
{
    return ix->o.metric == QV_METRIC_L2 ? QV_METRIC_L2 : QV_METRIC_IP;
}

static int check_opts(const struct qv_ivf_opts *o)
{
    if (!o)
        return qv_seterr(QV_EINVAL, "ivf: NULL options");
    if (o->dim == 0 || o->dim > IVF_MAX_DIM)
        return qv_seterr(QV_EINVAL, "ivf: dim %u is out of range; use 1..%u", o->dim,
                         IVF_MAX_DIM);
    if ((unsigned)o->metric >= QV_METRIC__COUNT)
        return qv_seterr(QV_EINVAL, "ivf: unknown metric %d; use l2, ip or cosine",
                         (int)o->metric);
    if (o->encoding != QV_IVF_FLAT && o->encoding != QV_IVF_SQ8)
        return qv_seterr(QV_EINVAL, "ivf: unknown list encoding %d; use flat or sq8",
                         (int)o->encoding);
    if (o->nlist == 0 || o->nlist > (1u << 24))
        return qv_seterr(QV_EINVAL, "ivf: nlist = %u; use 1..%u lists", o->nlist, 1u << 24);
    return 0;
}

struct qv_ivf *qv_ivf_create(const struct qv_ivf_opts *o)
{
    if (check_opts(o)) {
        qv_errno = QV_EINVAL;
        return NULL;
    }
    struct qv_ivf *ix = qv_calloc(1, sizeof *ix, QV_MEM_INDEX);
    if (!ix)
        goto fail;
    ix->o = *o;
    ix->dim = o->dim;
    ix->map_built = 1;
    qv__idmap_init(&ix->map);
    pthread_mutex_init(&ix->lock, NULL);
    size_t nl = o->nlist, dim = o->dim;
    size_t groups = (nl + QV_BLOCK - 1) / QV_BLOCK;
    ix->centroids = qv_malloc(nl * dim * sizeof(float), QV_MEM_INDEX);
    ix->cblocks = qv_calloc(groups * QV_BLOCK * dim, sizeof(float), QV_MEM_INDEX);
    ix->cnorms = qv_malloc(nl * sizeof(float), QV_MEM_INDEX);
    ix->cids = qv_malloc(nl * sizeof(uint64_t), QV_MEM_INDEX);
    ix->lists = qv_calloc(nl, sizeof *ix->lists, QV_MEM_INDEX);
    ix->wl = qv_calloc(nl, sizeof *ix->wl, QV_MEM_INDEX);
    if (!ix->centroids || !ix->cblocks || !ix->cnorms || !ix->cids || !ix->lists || !ix->wl)
        goto fail_ix;
    if (o->encoding == QV_IVF_SQ8) {
        ix->vmin = qv_calloc(dim, sizeof(float), QV_MEM_INDEX);
        ix->vdiff = qv_calloc(dim, sizeof(float), QV_MEM_INDEX);
        if (!ix->vmin || !ix->vdiff)
            goto fail_ix;
    }
    for (size_t l = 0; l < nl; l++) {
        ix->lists[l].owned = 1;
        ix->cids[l] = l;
    }
    ix->engine = qv_engine_cpu_create(o->pool);
    if (!ix->engine)
        goto fail_ix;
    return ix;

fail_ix:
    qv_ivf_free(ix);
fail:
    qv_seterr(QV_ENOMEM, "ivf: no memory for an index of %u lists, dim %u", o->nlist,
              o->dim);
    return NULL;
}

/* Tell engine e (the borrowed one; may be NULL) that list l's memory is
 * about to be freed or rewritten (engine.h, qv_engine_forget). */
static void forget_list(const struct qv_ivf *ix, struct qv_engine *e, uint32_t l)
{
    qv_engine_forget(e, ix->lists[l].codes);
    qv_engine_forget(e, ix->lists[l].norms);
}

static void forget_all(const struct qv_ivf *ix, struct qv_engine *e)
{
    if (e && ix->lists)
        for (uint32_t l = 0; l < ix->o.nlist; l++)
            forget_list(ix, e, l);
}

void qv_ivf_free(struct qv_ivf *ix)
{
    if (!ix)
        return;
    forget_all(ix, ix->use);
    qv_engine_free(ix->engine);
    if (ix->lists)
        for (uint32_t l = 0; l < ix->o.nlist; l++)
            if (ix->lists[l].owned) {
                qv_free(ix->lists[l].codes);
                qv_free(ix->lists[l].norms);
                qv_free(ix->lists[l].ids);
                qv_free(ix->lists[l].rows);
            }
    qv_free(ix->lists);
    qv_free(ix->wl);
    qv_free(ix->livebits);
    qv__idmap_fini(&ix->map);
    qv_free(ix->vdiff);
    qv_free(ix->vmin);
    qv_free(ix->cids);
    qv_free(ix->cnorms);
    qv_free(ix->cblocks);
    qv_free(ix->centroids);
    qv_ixfile_close(&ix->file);
    pthread_mutex_destroy(&ix->lock);
    qv_free(ix);
}

size_t qv_ivf_size(const struct qv_ivf *ix) { return ix->live; }
uint64_t qv_ivf_rows(const struct qv_ivf *ix) { return ix->rows; }
uint32_t qv_ivf_nlist(const struct qv_ivf *ix) { return ix->o.nlist; }
uint32_t qv_ivf_dim(const struct qv_ivf *ix) { return ix->dim; }
const float *qv_ivf_centroids(const struct qv_ivf *ix)
{
    return ix->trained ? ix->centroids : NULL;
}
uint32_t qv_ivf_list_size(const struct qv_ivf *ix, uint32_t l)
{
    return l < ix->o.nlist ? ix->lists[l].n : 0;
}

/* Pack the centroids for probe selection.  Cannot fail. */
static void pack_centroids(struct qv_ivf *ix)
{
    const struct qv_dist_ops *ops = qv_kernels();
    const size_t dim = ix->dim;
    qv_block_pack(ix->cblocks, 0, ix->centroids, ix->o.nlist, dim);
    for (uint32_t l = 0; l < ix->o.nlist; l++) {
        const float *c = ix->centroids + (size_t)l * dim;
        ix->cnorms[l] = -ops->dist[QV_METRIC_IP][QV_ELEM_F32](c, c, dim);
    }
}

static void refresh_wl(struct qv_ivf *ix)
{
    for (uint32_t l = 0; l < ix->o.nlist; l++) {
        const struct ivf_list *L = &ix->lists[l];
        ix->wl[l] = (struct qv_wu_list){
            .codes = L->codes, .norms = L->norms, .ids = L->ids, .rows = L->rows,
            .n = L->n, .list_no = l,
        };
    }
}

/* A normalised copy of n vectors for cosine, else x itself (*copy NULL). */
static const float *maybe_normalise(const struct qv_ivf *ix, const float *x, size_t n,
                                    float **copy)
{
    *copy = NULL;
    if (ix->o.metric != QV_METRIC_COSINE)
        return x;
    float *c = qv_malloc(n * ix->dim * sizeof(float), QV_MEM_INDEX);
    if (!c)
        return NULL;
    memcpy(c, x, n * ix->dim * sizeof(float));
    const struct qv_dist_ops *ops = qv_kernels();
    for (size_t i = 0; i < n; i++)
        ops->normalize_f32(c + i * ix->dim, ix->dim);
    *copy = c;
    return c;
}

static int check_finite(const float *x, size_t n, size_t dim, const char *what)
{
    for (size_t i = 0; i < n * dim; i++)
        if (!isfinite(x[i]))
            return qv_seterr(QV_EINVAL, "ivf %s: vector %zu element %zu is not finite; "
                             "only finite values can be indexed", what, i / dim, i % dim);
    return 0;
}

int qv_ivf_train(struct qv_ivf *ix, const float *x, size_t n)
{
    if (!x)
        return qv_seterr(QV_EINVAL, "ivf train: vectors are NULL");
    if (ix->rows)
        return qv_seterr(QV_EINVAL, "ivf train: the index already holds %llu vectors; "
                         "train an empty index", (unsigned long long)ix->rows);
    if (ix->o.nlist > n)
        return qv_seterr(QV_EINVAL, "ivf train: nlist = %u lists need at least as many "
                         "training vectors, got %zu; lower nlist or give more vectors",
                         ix->o.nlist, n);
    int rc = check_finite(x, n, ix->dim, "train");
    if (rc)
        return rc;
    float *copy;
    const float *v = maybe_normalise(ix, x, n, &copy);
    if (!v)
        return qv_seterr(QV_ENOMEM, "ivf train: no memory");
    struct qv_kmeans_opts ko = {
        .k = ix->o.nlist, .dim = ix->dim, .iters = ix->o.kmeans_iters, .seed = ix->o.seed,
        .max_points = ix->o.train_points, .metric = scan_metric(ix), .pool = ix->o.pool,
    };
    rc = qv_kmeans_train(&ko, v, n, ix->centroids, NULL);
    if (rc == 0 && ix->o.encoding == QV_IVF_SQ8)
        rc = qv_sq8_train(v, n, ix->dim, ix->vmin, ix->vdiff);
    qv_free(copy);
    if (rc)
        return rc;
    pack_centroids(ix);
    ix->trained = 1;
    return 0;
}

/* Build the id map of a loaded index (live entries only). */
static int ensure_map(struct qv_ivf *ix)
{
    if (ix->map_built)
        return 0;
    if (qv__idmap_reserve(&ix->map, ix->live))
        return qv_seterr(QV_ENOMEM, "ivf: no memory for the id map of %zu vectors",
                         ix->live);
    for (uint32_t l = 0; l < ix->o.nlist; l++) {
        const struct ivf_list *L = &ix->lists[l];
        for (uint32_t i = 0; i < L->n; i++) {
            uint32_t r = L->rows[i];
            if (ix->livebits[r / 64] >> (r % 64) & 1u)
                qv__idmap_put(&ix->map, L->ids[i], r);
        }
    }
    ix->map_built = 1;
    return 0;
}

/* Make list L hold at least `need` entries, heap-owned.  On failure the
 * list is unchanged. */
static int list_reserve(struct qv_ivf *ix, struct ivf_list *L, uint32_t need)
{
    if (need <= L->cap && L->owned)
        return 0;
    size_t cap = L->cap > 16 ? L->cap : 16;
    while (cap < need)
        cap *= 2;
    if (cap > IVF_MAX_ROWS)
        cap = IVF_MAX_ROWS;
    cap = (cap + QV_BLOCK - 1) / QV_BLOCK * QV_BLOCK;
    size_t cb_old = codes_bytes(ix, L->n), cb = codes_bytes(ix, cap);
    void *codes = qv_malloc(cb, QV_MEM_INDEX);
    float *norms = has_norms(ix) ? qv_malloc(cap * sizeof(float), QV_MEM_INDEX) : NULL;
    uint64_t *ids = qv_malloc(cap * sizeof(uint64_t), QV_MEM_INDEX);
    uint32_t *rows = qv_malloc(cap * sizeof(uint32_t), QV_MEM_INDEX);
    if (!codes || (has_norms(ix) && !norms) || !ids || !rows) {
        qv_free(codes);
        qv_free(norms);
        qv_free(ids);
        qv_free(rows);
        return QV_ENOMEM;
    }
    /* fresh blocks rather than qv_realloc: the copy is the same work and
     * the unused lanes of the blocked layout must read as zero */
    if (L->n) {
        memcpy(codes, L->codes, cb_old);
        if (norms)
            memcpy(norms, L->norms, L->n * sizeof(float));
        memcpy(ids, L->ids, L->n * sizeof(uint64_t));
        memcpy(rows, L->rows, L->n * sizeof(uint32_t));
    }
    memset((char *)codes + cb_old, 0, cb - cb_old);
    if (L->owned) {
        qv_free(L->codes);
        qv_free(L->norms);
        qv_free(L->ids);
        qv_free(L->rows);
    }
    L->codes = codes;
    L->norms = norms;
    L->ids = ids;
    L->rows = rows;
    L->cap = (uint32_t)cap;
    L->owned = 1;
    return 0;
}

static int live_reserve(struct qv_ivf *ix, uint64_t rows)
{
    size_t words = (size_t)((rows + 63) / 64);
    if (words <= ix->live_words_cap)
        return 0;
    size_t cap = ix->live_words_cap ? ix->live_words_cap * 2 : 16;
    while (cap < words)
        cap *= 2;
    uint64_t *b = qv_realloc(ix->livebits, cap * sizeof(uint64_t), QV_MEM_INDEX);
    if (!b)
        return QV_ENOMEM;
    memset(b + ix->live_words_cap, 0, (cap - ix->live_words_cap) * sizeof(uint64_t));
    ix->livebits = b;
    ix->live_words_cap = cap;
    return 0;
}

int qv_ivf_add(struct qv_ivf *ix, size_t n, const float *vecs, const uint64_t *ids)
{
    if (n == 0)
        return 0;
    if (!ix->trained)
        return qv_seterr(QV_EINVAL, "ivf add: the index is not trained; call "
                         "qv_ivf_train first");
    if (!vecs)
        return qv_seterr(QV_EINVAL, "ivf add: vectors are NULL");
    if (ix->rows + n > IVF_MAX_ROWS)
        return qv_seterr(QV_EINVAL, "ivf add: %llu + %zu rows exceed the limit of %llu",
                         (unsigned long long)ix->rows, n, IVF_MAX_ROWS);
    const size_t dim = ix->dim;
    int rc = check_finite(vecs, n, dim, "add");
    if (rc)
        return rc;
    if ((rc = ensure_map(ix)) != 0)
        return rc;
    if (qv__idmap_reserve(&ix->map, n))
        return qv_seterr(QV_ENOMEM, "ivf add: no memory for the id map of %zu vectors", n);
    size_t i;
    for (i = 0; i < n; i++) {
        uint64_t id = ids ? ids[i] : ix->rows + i;
        if (id == QV_ID_NONE) {
            rc = qv_seterr(QV_EINVAL, "ivf add: id %llu is reserved; use ids below 2^64-1",
                           (unsigned long long)id);
            break;
        }
        int64_t r = qv__idmap_get(&ix->map, id);
        if (r >= 0) {
            rc = qv_seterr(QV_EEXIST, "ivf add: id %llu is %s", (unsigned long long)id,
                           r >= (int64_t)ix->rows ? "repeated in the batch"
                                                  : "already in the index");
            break;
        }
        qv__idmap_put(&ix->map, id, ix->rows + i);     /* reserved: cannot fail */
    }

    float *copy = NULL;
    uint32_t *assign = NULL, *count = NULL;
    const float *v = NULL;
    if (rc)
        goto undo;
    rc = QV_ENOMEM;
    v = maybe_normalise(ix, vecs, n, &copy);
    assign = qv_malloc(n * sizeof(uint32_t), QV_MEM_INDEX);
    count = qv_calloc(ix->o.nlist, sizeof(uint32_t), QV_MEM_INDEX);
    if (!v || !assign || !count || live_reserve(ix, ix->rows + n))
        goto fail;
    if (qv_kmeans_assign(ix->centroids, ix->o.nlist, (uint32_t)dim, scan_metric(ix), v, n,
                         assign, NULL, ix->o.pool))
        goto fail;
    for (size_t j = 0; j < n; j++)
        count[assign[j]]++;
    for (uint32_t l = 0; l < ix->o.nlist; l++)
        if (count[l])           /* grown (freed) or appended to in place */
            forget_list(ix, ix->use, l);
    for (uint32_t l = 0; l < ix->o.nlist; l++)
        if (count[l] && list_reserve(ix, &ix->lists[l], ix->lists[l].n + count[l]))
            goto fail;

    /* nothing can fail from here */
    const struct qv_dist_ops *ops = qv_kernels();
    for (size_t j = 0; j < n; j++) {
        struct ivf_list *L = &ix->lists[assign[j]];
        const float *x = v + j * dim;
        uint64_t row = ix->rows + j;
        if (ix->o.encoding == QV_IVF_FLAT)
            qv_block_pack(L->codes, L->n, x, 1, dim);
        else
            qv_sq8_encode(x, 1, dim, ix->vmin, ix->vdiff, (uint8_t *)L->codes + (size_t)L->n * dim,
                          dim);
        if (L->norms)
            L->norms[L->n] = -ops->dist[QV_METRIC_IP][QV_ELEM_F32](x, x, dim);
        L->ids[L->n] = ids ? ids[j] : row;
        L->rows[L->n] = (uint32_t)row;
        L->n++;
        ix->livebits[row / 64] |= 1ull << (row % 64);
    }
    ix->rows += n;
    ix->live += n;
    refresh_wl(ix);
    qv_free(count);
    qv_free(assign);
    qv_free(copy);
    return 0;

fail:
    qv_seterr(rc, "ivf add: no memory to add %zu vectors", n);
undo:
    for (size_t j = 0; j < i; j++) {
        uint64_t id = ids ? ids[j] : ix->rows + j;
        if (qv__idmap_get(&ix->map, id) == (int64_t)(ix->rows + j))
            qv__idmap_del(&ix->map, id);
    }
    qv_free(count);
    qv_free(assign);
    qv_free(copy);
    return rc;
}

long qv_ivf_remove(struct qv_ivf *ix, size_t n, const uint64_t *ids)
{
    if (!ids || n == 0)
        return 0;
    int rc = ensure_map(ix);
    if (rc)
        return rc;
    long removed = 0;
    for (size_t i = 0; i < n; i++) {
        int64_t row = qv__idmap_get(&ix->map, ids[i]);
        if (row < 0)
            continue;
        qv__idmap_del(&ix->map, ids[i]);
        ix->livebits[row / 64] &= ~(1ull << (row % 64));
        ix->live--;
        removed++;
    }
    return removed;
}

/* ---- search ---- */

struct probe_job {
    const struct qv_ivf *ix;
    const struct qv_dist_ops *ops;
    const float *queries;
    const float *qnorms;
    size_t nq;
    uint32_t nprobe;
    struct qv_topk *heaps;          /* nq, over pd / pi */
    float *pd;
    uint64_t *pi;
    uint32_t *probe_lists;          /* nq x nprobe */
    uint32_t *probe_n;              /* nq: probes kept */
};

static void probe_task(void *arg, unsigned task, unsigned worker)
{
    (void)worker;
    const struct probe_job *J = arg;
    const struct qv_ivf *ix = J->ix;
    size_t q0 = (size_t)task * IVF_PROBE_CHUNK;
    size_t q1 = q0 + IVF_PROBE_CHUNK < J->nq ? q0 + IVF_PROBE_CHUNK : J->nq;
    for (size_t q = q0; q < q1; q++)
        qv_topk_init(&J->heaps[q], J->nprobe, J->pd + q * J->nprobe, J->pi + q * J->nprobe);
    struct qv_scan_args a = {
        .queries = J->queries + q0 * ix->dim, .nq = q1 - q0, .dim = ix->dim,
        .qnorms = J->qnorms + q0, .blocks = ix->cblocks, .norms = ix->cnorms,
        .ids = ix->cids, .nvec = ix->o.nlist, .mask = NULL, .metric = scan_metric(ix),
        .heaps = J->heaps + q0, .prefetch = 0,
    };
    J->ops->scan_f32(&a);
    for (size_t q = q0; q < q1; q++) {
        uint32_t np = qv_topk_sort(&J->heaps[q]);
        for (uint32_t j = 0; j < np; j++)
            J->probe_lists[q * J->nprobe + j] = (uint32_t)J->pi[q * J->nprobe + j];
        J->probe_n[q] = np;
    }
}

/* The probes of a batch: what search and prefetch share.  All arrays are
 * allocated by probes_alloc and freed by probes_free. */
struct ivf_probes {
    const float *q;                 /* the queries (normalised for cosine) */
    float *copy;                    /* owned normalised copy, or NULL */
    float *qnorms;                  /* nq: -|q|^2 (L2) or 0 */
    struct qv_topk *heaps;          /* nq: probe heaps, then search's */
    float *pd;                      /* nq x nprobe */
    uint64_t *pi;                   /* nq x nprobe */
    uint32_t *plists;               /* CSR probe lists, nearest first */
    uint32_t *pn;                   /* nq: probes kept */
    uint32_t *poff;                 /* nq + 1: CSR offsets */
};

/* The checks search and prefetch share (op names the caller in the
 * message); *nprobe is lowered to nlist.  0 or QV_EINVAL. */
static int check_batch(const struct qv_ivf *ix, const float *queries, size_t nq,
                       uint32_t *nprobe, const char *op)
{
    if (!queries)
        return qv_seterr(QV_EINVAL, "ivf %s: NULL queries", op);
    if (!ix->trained)
        return qv_seterr(QV_EINVAL, "ivf %s: the index is not trained", op);
    if (nq == 0 || nq > UINT32_MAX / 2)
        return qv_seterr(QV_EINVAL, "ivf %s: nq = %zu; use 1..%u queries", op, nq,
                         UINT32_MAX / 2);
    if (*nprobe == 0)
        return qv_seterr(QV_EINVAL, "ivf %s: nprobe = 0; probe at least one list "
                         "(1..%u)", op, ix->o.nlist);
    if (*nprobe > ix->o.nlist)
        *nprobe = ix->o.nlist;
    if ((uint64_t)nq * *nprobe > UINT32_MAX)
        return qv_seterr(QV_EINVAL, "ivf %s: nq x nprobe = %zu x %u is too many probes "
                         "for one call; split the batch", op, nq, *nprobe);
    return 0;
}

static void probes_free(struct ivf_probes *P)
{
    qv_free(P->poff);
    qv_free(P->pn);
    qv_free(P->plists);
    qv_free(P->pi);
    qv_free(P->pd);
    qv_free(P->heaps);
    qv_free(P->qnorms);
    qv_free(P->copy);
}

/* Allocate P for nq queries x nprobe, normalise the queries (cosine) and
 * compute their norms.  0 or QV_ENOMEM (P freed).  O(nq * dim). */
static int probes_alloc(const struct qv_ivf *ix, const float *queries, size_t nq,
                        uint32_t nprobe, struct ivf_probes *P)
{
    const size_t dim = ix->dim;
    const struct qv_dist_ops *ops = qv_kernels();
    memset(P, 0, sizeof *P);
    P->q = maybe_normalise(ix, queries, nq, &P->copy);
    P->qnorms = qv_malloc(nq * sizeof(float), QV_MEM_INDEX);
    P->heaps = qv_malloc(nq * sizeof *P->heaps, QV_MEM_INDEX);
    P->pd = qv_malloc(nq * nprobe * sizeof(float), QV_MEM_INDEX);
    P->pi = qv_malloc(nq * nprobe * sizeof(uint64_t), QV_MEM_INDEX);
    P->plists = qv_malloc(nq * nprobe * sizeof(uint32_t), QV_MEM_INDEX);
    P->pn = qv_malloc(nq * sizeof(uint32_t), QV_MEM_INDEX);
    P->poff = qv_malloc((nq + 1) * sizeof(uint32_t), QV_MEM_INDEX);
    if (!P->q || !P->qnorms || !P->heaps || !P->pd || !P->pi || !P->plists || !P->pn ||
        !P->poff) {
        probes_free(P);
        return QV_ENOMEM;
    }
    for (size_t i = 0; i < nq; i++)
        P->qnorms[i] = ix->o.metric == QV_METRIC_L2
                     ? -ops->dist[QV_METRIC_IP][QV_ELEM_F32](P->q + i * dim, P->q + i * dim,
                                                             dim)
                     : 0.0f;
    return 0;
}

/* Probe selection: each query's nprobe nearest lists into P's CSR
 * (poff / plists, nearest first; fewer only for NaN queries), on the
 * pool.  Caller holds ix->lock.  O(nq * nlist * dim). */
static void probes_select(struct qv_ivf *ix, struct ivf_probes *P, size_t nq, uint32_t nprobe)
{
    struct probe_job J = {
        .ix = ix, .ops = qv_kernels(), .queries = P->q, .qnorms = P->qnorms, .nq = nq,
        .nprobe = nprobe, .heaps = P->heaps, .pd = P->pd, .pi = P->pi,
        .probe_lists = P->plists, .probe_n = P->pn,
    };
    qv_pool_run(ix->o.pool, (unsigned)((nq + IVF_PROBE_CHUNK - 1) / IVF_PROBE_CHUNK),
                probe_task, &J);
    /* CSR: compact each query's probes (all nprobe unless NaN queries) */
    uint32_t p = 0;
    for (size_t i = 0; i < nq; i++) {
        P->poff[i] = p;
        memmove(P->plists + p, P->plists + i * nprobe, P->pn[i] * sizeof(uint32_t));
        p += P->pn[i];
    }
    P->poff[nq] = p;
}

/* The unit of a batch whose probes are P's, over every list of the index
 * (lists[] = ix->wl); sp holds the SQ8 ranges it points to. */
static struct qv_work_unit batch_unit(const struct qv_ivf *ix, const struct ivf_probes *P,
                                      size_t nq, struct qv_sq8_params *sp)
{
    *sp = (struct qv_sq8_params){ .vmin = ix->vmin, .vdiff = ix->vdiff };
    return (struct qv_work_unit){
        .kind = ix->o.encoding == QV_IVF_FLAT ? QV_WU_FLAT : QV_WU_SQ8,
        .metric = scan_metric(ix),
        .dim = ix->dim,
        .code_size = ix->o.encoding == QV_IVF_SQ8 ? ix->dim : 0,
        .nq = (uint32_t)nq,
        .queries = P->q,
        .qnorms = P->qnorms,
        .nlists = ix->o.nlist,
        .lists = ix->wl,
        .probe_offsets = P->poff,
        .probe_lists = P->plists,
        .params = ix->o.encoding == QV_IVF_SQ8 ? sp : NULL,
    };
}

int qv_ivf_search(struct qv_ivf *ix, const float *queries, size_t nq, uint32_t k,
                  uint32_t nprobe, const uint64_t *filter, float *dist, uint64_t *ids)
{
    if (!queries || !dist || !ids)
        return qv_seterr(QV_EINVAL, "ivf search: NULL queries or result arrays");
    if (k == 0 || k > IVF_MAX_K)
        return qv_seterr(QV_EINVAL, "ivf search: k = %u is out of range; use 1..%u", k,
                         IVF_MAX_K);
    int rc = check_batch(ix, queries, nq, &nprobe, "search");
    if (rc)
        return rc;
    struct ivf_probes P;
    uint64_t *fbits = NULL;
    rc = QV_ENOMEM;
    if (probes_alloc(ix, queries, nq, nprobe, &P))
        goto nomem;
    /* eligibility: tombstones and the caller's filter in one bitmap */
    const uint64_t *elig = filter;
    if (ix->live != ix->rows) {
        size_t words = (size_t)((ix->rows + 63) / 64);
        fbits = qv_malloc(words * sizeof(uint64_t), QV_MEM_INDEX);
        if (!fbits)
            goto out;
        for (size_t w = 0; w < words; w++)
            fbits[w] = ix->livebits[w] & (filter ? filter[w] : ~0ull);
        elig = fbits;
    }

    pthread_mutex_lock(&ix->lock);
    probes_select(ix, &P, nq, nprobe);
    for (size_t i = 0; i < nq; i++)
        qv_topk_init(&P.heaps[i], k, dist + i * k, ids + i * k);
    struct qv_sq8_params sp;
    struct qv_work_unit wu = batch_unit(ix, &P, nq, &sp);
    wu.filter = elig;
    wu.heaps = P.heaps;
    rc = qv_engine_run(ix->use ? ix->use : ix->engine, &wu);
    pthread_mutex_unlock(&ix->lock);
    if (rc)
        goto out;
    for (size_t i = 0; i < nq; i++) {
        qv_topk_sort(&P.heaps[i]);
        if (ix->o.metric == QV_METRIC_COSINE)
            for (uint32_t j = 0; j < k; j++)
                dist[i * k + j] += 1.0f;
    }

out:
    qv_free(fbits);
    probes_free(&P);
nomem:
    if (rc == QV_ENOMEM)
        qv_seterr(rc, "ivf search: no memory for %zu queries x nprobe %u, k %u", nq,
                  nprobe, k);
    return rc;
}

int qv_ivf_prefetch(struct qv_ivf *ix, const float *queries, size_t nq, uint32_t nprobe)
{
    if (!ix->use)
        return 0;                   /* the CPU engine reads lists where they are */
    int rc = check_batch(ix, queries, nq, &nprobe, "prefetch");
    if (rc)
        return rc;
    struct ivf_probes P;
    uint32_t *compact = NULL;
    struct qv_wu_list *dl = NULL;
    rc = QV_ENOMEM;
    if (probes_alloc(ix, queries, nq, nprobe, &P))
        goto nomem;
    compact = qv_malloc(ix->o.nlist * sizeof(uint32_t), QV_MEM_INDEX);
    dl = qv_malloc((nq * nprobe < ix->o.nlist ? nq * nprobe : ix->o.nlist) * sizeof *dl,
                   QV_MEM_INDEX);
    if (!compact || !dl)
        goto out;
    memset(compact, 0xFF, ix->o.nlist * sizeof(uint32_t));

    pthread_mutex_lock(&ix->lock);
    probes_select(ix, &P, nq, nprobe);
    /* the distinct probed lists, in first-probe order, and the probes
     * renumbered into them (the router's cost model reads the probes) */
    uint32_t nd = 0;
    for (uint32_t p = 0; p < P.poff[nq]; p++) {
        uint32_t l = P.plists[p];
        if (compact[l] == UINT32_MAX) {
            compact[l] = nd;
            dl[nd++] = ix->wl[l];
        }
        P.plists[p] = compact[l];
    }
    struct qv_sq8_params sp;
    struct qv_work_unit wu = batch_unit(ix, &P, nq, &sp);
    wu.nlists = nd;
    wu.lists = dl;
    rc = qv_engine_prefetch(ix->use, &wu);
    pthread_mutex_unlock(&ix->lock);

out:
    qv_free(dl);
    qv_free(compact);
    probes_free(&P);
nomem:
    if (rc == QV_ENOMEM)
        qv_seterr(rc, "ivf prefetch: no memory for %zu queries x nprobe %u", nq, nprobe);
    return rc;
}

/* ---- save / load ---- */

int qv_ivf_save(const struct qv_ivf *ix, const char *path)
{
    if (!ix->trained)
        return qv_seterr(QV_EINVAL, "ivf save %s: the index is not trained", path);
    const uint32_t nl = ix->o.nlist;
    const size_t dim = ix->dim;
    struct ivf_file_header h = {
        .version = IVF_FILE_VERSION, .dim = (uint32_t)dim, .metric = ix->o.metric,
        .encoding = ix->o.encoding, .nlist = nl, .iters = ix->o.kmeans_iters,
        .rows = ix->rows, .live = ix->live, .seed = ix->o.seed,
        .train_points = ix->o.train_points,
    };
    size_t cb = 0, nb = 0, ib = 0, rb = 0;
    for (uint32_t l = 0; l < nl; l++) {
        const struct ivf_list *L = &ix->lists[l];
        cb += al64(codes_bytes(ix, L->n));
        nb += has_norms(ix) ? al64(L->n * sizeof(float)) : 0;
        ib += al64(L->n * sizeof(uint64_t));
        rb += al64(L->n * sizeof(uint32_t));
    }
    int rc = QV_ENOMEM;
    struct ivf_file_list *dir = qv_calloc(nl, sizeof *dir, QV_MEM_INDEX);
    uint8_t *codes = qv_calloc(1, cb, QV_MEM_INDEX);
    uint8_t *norms = qv_calloc(1, nb, QV_MEM_INDEX);
    uint8_t *idsb = qv_calloc(1, ib, QV_MEM_INDEX);
    uint8_t *rowsb = qv_calloc(1, rb, QV_MEM_INDEX);
    struct qv_ixfile_writer *w = qv_malloc(sizeof *w, QV_MEM_INDEX);
    if (!dir || !codes || !norms || !idsb || !rowsb || !w) {
        qv_seterr(rc, "ivf save %s: no memory to stage %zu bytes", path, cb + nb + ib + rb);
        goto out;
    }
    size_t co = 0, no = 0, io = 0, ro = 0;
    for (uint32_t l = 0; l < nl; l++) {
        const struct ivf_list *L = &ix->lists[l];
        dir[l] = (struct ivf_file_list){ .n = L->n, .codes_off = co, .norms_off = no,
                                         .ids_off = io, .rows_off = ro };
        if (!L->n)
            continue;
        memcpy(codes + co, L->codes, codes_bytes(ix, L->n));
        co += al64(codes_bytes(ix, L->n));
        if (has_norms(ix)) {
            memcpy(norms + no, L->norms, L->n * sizeof(float));
            no += al64(L->n * sizeof(float));
        }
        memcpy(idsb + io, L->ids, L->n * sizeof(uint64_t));
        io += al64(L->n * sizeof(uint64_t));
        memcpy(rowsb + ro, L->rows, L->n * sizeof(uint32_t));
        ro += al64(L->n * sizeof(uint32_t));
    }
    qv_ixfile_writer_init(w, path, ix->o.encoding == QV_IVF_FLAT ? QV_IX_IVF_FLAT
                                                                 : QV_IX_IVF_SQ8);
    static const uint64_t zero;
    size_t lw = (size_t)((ix->rows + 63) / 64);
    if ((rc = qv_ixfile_add(w, TAG_HEAD, &h, sizeof h)) ||
        (rc = qv_ixfile_add(w, TAG_CENT, ix->centroids, (uint64_t)nl * dim * sizeof(float))) ||
        (ix->o.encoding == QV_IVF_SQ8 &&
         ((rc = qv_ixfile_add(w, TAG_SQ8R, ix->vmin, dim * sizeof(float))) ||
          (rc = qv_ixfile_add(w, QV_FOURCC('S', 'Q', '8', 'D'), ix->vdiff,
                              dim * sizeof(float))))) ||
        (rc = qv_ixfile_add(w, TAG_LDIR, dir, (uint64_t)nl * sizeof *dir)) ||
        (rc = qv_ixfile_add(w, TAG_CODE, codes, cb)) ||
        (rc = qv_ixfile_add(w, TAG_NORM, norms, nb)) ||
        (rc = qv_ixfile_add(w, TAG_IDS, idsb, ib)) ||
        (rc = qv_ixfile_add(w, TAG_ROWS, rowsb, rb)) ||
        (rc = qv_ixfile_add(w, TAG_LIVE, lw ? (const void *)ix->livebits : &zero,
                            lw * sizeof(uint64_t))))
        goto out;
    rc = qv_ixfile_commit(w);

out:
    qv_free(w);
    qv_free(rowsb);
    qv_free(idsb);
    qv_free(norms);
    qv_free(codes);
    qv_free(dir);
    return rc;
}

static const void *need_section(const struct qv_ixfile *f, uint32_t tag, uint64_t size,
                                const char *name, int *rc)
{
    uint64_t got;
    const void *p = qv_ixfile_section(f, tag, &got);
    if (*rc)
        return NULL;
    if (!p || got != size) {
        *rc = qv_seterr(QV_ECORRUPT, "%s: ivf section %s is %s (%llu bytes, expected %llu)",
                        f->path, name, p ? "the wrong size" : "missing",
                        (unsigned long long)got, (unsigned long long)size);
        return NULL;
    }
    return p;
}

struct qv_ivf *qv_ivf_load(const char *path, struct qv_pool *pool)
{
    struct qv_ixfile f;
    memset(&f, 0, sizeof f);
    int rc = qv_ixfile_open(&f, path, QV_IX_IVF_FLAT);
    if (rc == QV_EFORMAT) {
        qv_ixfile_close(&f);
        memset(&f, 0, sizeof f);
        rc = qv_ixfile_open(&f, path, QV_IX_IVF_SQ8);
    }
    if (rc) {
        qv_errno = rc;
        return NULL;
    }
    struct qv_ivf *ix = NULL;
    const struct ivf_file_header *h = need_section(&f, TAG_HEAD, sizeof *h, "IVFH", &rc);
    if (rc)
        goto fail;
    struct qv_ivf_opts o = {
        .dim = h->dim, .metric = (enum qv_metric)h->metric,
        .encoding = (enum qv_ivf_encoding)h->encoding, .nlist = h->nlist,
        .kmeans_iters = h->iters, .train_points = h->train_points, .seed = h->seed,
        .pool = pool,
    };
    if (h->version != IVF_FILE_VERSION || h->metric >= QV_METRIC__COUNT ||
        h->encoding > QV_IVF_SQ8 || h->dim == 0 || h->dim > IVF_MAX_DIM || h->nlist == 0 ||
        h->nlist > (1u << 24) || h->rows > IVF_MAX_ROWS || h->live > h->rows ||
        (f.type == QV_IX_IVF_FLAT) != (h->encoding == QV_IVF_FLAT)) {
        rc = qv_seterr(QV_ECORRUPT, "%s: ivf header is inconsistent (version %u, dim %u, "
                       "nlist %u, encoding %u)", path, h->version, h->dim, h->nlist,
                       h->encoding);
        goto fail;
    }
    ix = qv_ivf_create(&o);
    if (!ix) {
        rc = qv_errno;
        goto fail;
    }
    const size_t dim = h->dim, nl = h->nlist;
    const float *cent = need_section(&f, TAG_CENT, nl * dim * sizeof(float), "CENT", &rc);
    const struct ivf_file_list *dir = need_section(&f, TAG_LDIR, nl * sizeof *dir, "LDIR",
                                                   &rc);
    uint64_t lw = (h->rows + 63) / 64;
    const uint64_t *live = need_section(&f, TAG_LIVE, lw * sizeof(uint64_t), "LIVE", &rc);
    if (rc)
        goto fail;
    if (h->encoding == QV_IVF_SQ8) {
        const float *vmin = need_section(&f, TAG_SQ8R, dim * sizeof(float), "SQ8R", &rc);
        const float *vdiff = need_section(&f, QV_FOURCC('S', 'Q', '8', 'D'),
                                          dim * sizeof(float), "SQ8D", &rc);
        if (rc)
            goto fail;
        memcpy(ix->vmin, vmin, dim * sizeof(float));
        memcpy(ix->vdiff, vdiff, dim * sizeof(float));
    }
    uint64_t csz, nsz, isz, rsz;
    const uint8_t *codes = qv_ixfile_section(&f, TAG_CODE, &csz);
    const uint8_t *norms = qv_ixfile_section(&f, TAG_NORM, &nsz);
    const uint8_t *idsb = qv_ixfile_section(&f, TAG_IDS, &isz);
    const uint8_t *rowsb = qv_ixfile_section(&f, TAG_ROWS, &rsz);
    uint64_t total = 0;
    for (size_t l = 0; l < nl; l++) {
        const struct ivf_file_list *d = &dir[l];
        struct ivf_list *L = &ix->lists[l];
        uint64_t n = d->n;
        int bad = n > h->rows || (n && (!codes || !idsb || !rowsb)) ||
                  (d->codes_off | d->norms_off | d->ids_off | d->rows_off) % 64 ||
                  d->codes_off > csz || codes_bytes(ix, n) > csz - d->codes_off ||
                  d->ids_off > isz || n * 8 > isz - d->ids_off ||
                  d->rows_off > rsz || n * 4 > rsz - d->rows_off ||
                  (has_norms(ix) && n && (!norms || d->norms_off > nsz ||
                                          n * 4 > nsz - d->norms_off));
        if (!bad && n) {
            L->codes = (void *)(codes + d->codes_off);
            L->norms = has_norms(ix) ? (float *)(norms + d->norms_off) : NULL;
            L->ids = (uint64_t *)(idsb + d->ids_off);
            L->rows = (uint32_t *)(rowsb + d->rows_off);
            for (uint64_t i = 0; i < n && !bad; i++)
                bad = L->rows[i] >= h->rows;
        }
        if (bad) {
            memset(L, 0, sizeof *L);
            L->owned = 1;
            rc = qv_seterr(QV_ECORRUPT, "%s: ivf list %zu directory entry is out of "
                           "bounds or its rows exceed the row count", path, l);
            goto fail;
        }
        L->n = L->cap = (uint32_t)n;
        L->owned = 0;
        total += n;
    }
    if (total != h->rows) {
        rc = qv_seterr(QV_ECORRUPT, "%s: ivf lists hold %llu entries, header says %llu rows",
                       path, (unsigned long long)total, (unsigned long long)h->rows);
        goto fail;
    }
    if (live_reserve(ix, h->rows)) {
        rc = qv_seterr(QV_ENOMEM, "%s: no memory for the live bitmap", path);
        goto fail;
    }
    memcpy(ix->livebits, live, lw * sizeof(uint64_t));
    memcpy(ix->centroids, cent, nl * dim * sizeof(float));
    ix->rows = h->rows;
    ix->live = h->live;
    ix->map_built = 0;
    ix->trained = 1;
    ix->file = f;
    ix->mapped = 1;
    pack_centroids(ix);
    refresh_wl(ix);
    return ix;

fail:
    qv_ivf_free(ix);                /* frees owned lists only; f is not its */
    qv_ixfile_close(&f);
    qv_errno = rc;
    return NULL;
}

void qv_ivf_set_engine(struct qv_ivf *ix, struct qv_engine *engine)
{
    if (ix->use != engine)
        forget_all(ix, ix->use);    /* it will not hear of later changes */
    ix->use = engine;
}
