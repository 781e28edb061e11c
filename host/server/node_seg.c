/*
 * node_seg.c - the segments of a collection (node.h, "Segments" and "Rows
 * and keys"; fields and their rules in node_int.h): a growing segment's
 * creation and growth, tombstones, freeing, and the build of a sealed
 * segment's index from a selection of another segment's rows.
 *
 * Growth.  A growing segment starts with room for its seal size (at most
 * NSEG_GROW_CAP rows and NSEG_GROW_BYTES of vectors): the arrays are
 * reserved, not touched, so only the pages rows land in become resident,
 * and writers do not pay a doubling copy under the collection's mutex
 * (5-10 ms at 32k rows of dim 128 on the development VM).  Past that the
 * arrays double.  ids[] and the attribute columns are read by the
 * dispatcher (result translation, filters), so they are copied into new
 * arrays outside the pause and the pointers swapped inside a pause of
 * their own: a pause per doubling, a few pointer stores long.  vecs[] and
 * alive[] are the writers' alone and are swapped without one.
 */
#include <math.h>
#include <string.h>

#include "node_int.h"
#include "quiver/alloc.h"
#include "quiver/errors.h"
#include "quiver/flat.h"
#include "quiver/hnsw.h"
#include "quiver/ivf.h"
#include "quiver/ivfpq.h"
#include "quiver/ixfile.h"
#include "quiver/log.h"
#include "quiver/topk.h"

#define NSEG_MIN_CAP 1024u
#define NSEG_GROW_CAP (1u << 18)        /* rows a growing segment starts with,
                                           at most (its seal size below that) */
#define NSEG_GROW_BYTES (64u << 20)     /* and at most this much of vectors */
#define NSEG_FLAT_CAP 16384u            /* rows per chunk of a flat index */

static uint32_t flat_capacity(uint64_t rows)
{
    uint64_t cap = (rows + 15) / 16 * 16;

    if (cap < 16)
        cap = 16;
    return cap > NSEG_FLAT_CAP ? NSEG_FLAT_CAP : (uint32_t)cap;
}

static struct qv_flat *flat_new(const struct ncoll *c, uint64_t rows)
{
    struct qv_flat_opts fo = {
        .dim = c->spec.dim, .metric = c->spec.metric, .segment_capacity = flat_capacity(rows),
        .pool = c->node->o.pool, .numa_node = -1, .hugepages = QV_HUGE_OFF,
    };

    return qv_flat_create(&fo);
}

static struct nseg *seg_alloc(struct ncoll *c, uint32_t slot, enum nseg_kind kind)
{
    struct nseg *s = qv_calloc(1, sizeof *s, QV_MEM_SERVER);

    if (s == NULL)
        return NULL;
    s->coll = c;
    s->slot = slot;
    s->kind = kind;
    s->attrs.nattrs = c->spec.nattrs;
    for (uint32_t a = 0; a < c->spec.nattrs; a++)
        s->attrs.names[a] = c->attr_names[a];
    return s;
}

/* Arrays for cap rows; 0 or QV_ENOMEM (the segment keeps what it had). */
static int seg_arrays(struct nseg *s, uint64_t cap)
{
    const struct ncoll *c = s->coll;
    const uint32_t na = c->spec.nattrs;

    s->ids = qv_malloc(cap * sizeof *s->ids, QV_MEM_SERVER);
    s->vecs = qv_malloc(cap * c->spec.dim * sizeof *s->vecs, QV_MEM_SERVER);
    s->alive = qv_calloc((cap + 63) / 64, sizeof *s->alive, QV_MEM_SERVER);
    int bad = !s->ids || !s->vecs || !s->alive;
    for (uint32_t a = 0; a < na; a++) {
        s->cols[a] = qv_malloc(cap * sizeof(int64_t), QV_MEM_SERVER);
        bad |= s->cols[a] == NULL;
        s->attrs.cols[a] = s->cols[a];
    }
    if (bad)
        return QV_ENOMEM;
    s->cap = cap;
    return 0;
}

static void seg_arrays_free(struct nseg *s)
{
    qv_free(s->alive);
    if (s->rows_file != NULL) {         /* ids, vecs, cols: the mapping's */
        qv_ixfile_close(s->rows_file);
        qv_free(s->rows_file);
        return;
    }
    qv_free(s->ids);
    qv_free(s->vecs);
    for (uint32_t a = 0; a < QV_NODE_MAX_ATTRS; a++)
        qv_free(s->cols[a]);
}

struct nseg *qv__seg_new_growing(struct ncoll *c, uint32_t slot)
{
    struct nseg *s = seg_alloc(c, slot, NSEG_FLAT);

    if (s == NULL)
        goto fail;
    s->state = NSEG_GROWING;
    uint64_t seal_at = qv__node_seal_at(c), cap = NSEG_MIN_CAP;
    while (cap < seal_at && cap < NSEG_GROW_CAP &&
           2 * cap * c->spec.dim * sizeof(float) <= NSEG_GROW_BYTES)
        cap *= 2;
    s->ix.flat = flat_new(c, seal_at);
    if (s->ix.flat == NULL || seg_arrays(s, cap) != 0)
        goto fail;
    return s;
fail:
    if (s) {
        qv_flat_free(s->ix.flat);
        seg_arrays_free(s);
        qv_free(s);
    }
    qv_seterr(QV_ENOMEM, "node: collection '%s': no memory for a new growing segment",
              c->name);
    return NULL;
}

/* Free the index of s; the caller holds a pause when an engine may have
 * seen it (see qv__seg_free). */
static void free_index(struct nseg *s)
{
    switch (s->kind) {
    case NSEG_FLAT: qv_flat_free(s->ix.flat); break;
    case NSEG_IVF: qv_ivf_free(s->ix.ivf); break;
    case NSEG_IVFPQ: qv_ivfpq_free(s->ix.ivfpq); break;
    case NSEG_HNSW: qv_hnsw_free(s->ix.hnsw); break;
    }
    s->ix.flat = NULL;
}

/*
 * Free s, which no search can reach any more.  An index that searched
 * through the node's engine tells the engine to forget its memory when
 * freed or detached (qv_engine_forget), and only the dispatcher may use
 * that engine: so with an engine, IVF / IVF-PQ are detached and a flat is
 * freed inside a pause (qv__seg_detach; `paused`: the caller holds one
 * already), unless that was done before.
 */
void qv__seg_detach(struct nseg *s)
{
    if (s->detached || s->coll->node->o.engine == NULL) {
        s->detached = 1;
        return;
    }
    if (s->kind == NSEG_IVF)
        qv_ivf_set_engine(s->ix.ivf, NULL);
    else if (s->kind == NSEG_IVFPQ)
        qv_ivfpq_set_engine(s->ix.ivfpq, NULL);
    else if (s->kind == NSEG_FLAT)
        free_index(s);
    s->detached = 1;
}

void qv__seg_free(struct nseg *s, int paused)
{
    int pause;

    if (s == NULL)
        return;
    pause = !paused && !s->detached && s->coll->node->o.engine != NULL;
    if (pause)
        qv__node_pause(s->coll);
    qv__seg_detach(s);
    if (pause)
        qv__node_resume(s->coll);
    free_index(s);
    seg_arrays_free(s);
    qv_free(s);
}

int qv__seg_reserve(struct nseg *s, uint64_t need)
{
    const struct ncoll *c = s->coll;
    const uint32_t na = c->spec.nattrs, dim = c->spec.dim;
    uint64_t cap = s->cap ? s->cap : NSEG_MIN_CAP;
    uint64_t *ids, *alive, *old_ids;
    int64_t *cols[QV_NODE_MAX_ATTRS] = { 0 }, *old_cols[QV_NODE_MAX_ATTRS];
    float *vecs;
    int bad;

    if (need <= s->cap)
        return 0;
    if (need > NODE_MAX_SEG_ROWS)
        return qv_seterr(QV_ENOSPC, "node: collection '%s': a segment of %llu rows: at "
                         "most %llu", c->name, (unsigned long long)need,
                         (unsigned long long)NODE_MAX_SEG_ROWS);
    while (cap < need)
        cap *= 2;
    ids = qv_malloc(cap * sizeof *ids, QV_MEM_SERVER);
    vecs = qv_malloc(cap * dim * sizeof *vecs, QV_MEM_SERVER);
    alive = qv_calloc((cap + 63) / 64, sizeof *alive, QV_MEM_SERVER);
    bad = !ids || !vecs || !alive;
    for (uint32_t a = 0; a < na; a++) {
        cols[a] = qv_malloc(cap * sizeof(int64_t), QV_MEM_SERVER);
        bad |= cols[a] == NULL;
    }
    if (bad) {
        qv_free(ids);
        qv_free(vecs);
        qv_free(alive);
        for (uint32_t a = 0; a < na; a++)
            qv_free(cols[a]);
        return qv_seterr(QV_ENOMEM, "node: collection '%s': no memory to grow a segment "
                         "to %llu rows", c->name, (unsigned long long)cap);
    }
    /* the copies read what the dispatcher may read too: both only read */
    memcpy(ids, s->ids, s->rows * sizeof *ids);
    memcpy(vecs, s->vecs, s->rows * dim * sizeof *vecs);
    memcpy(alive, s->alive, (s->rows + 63) / 64 * sizeof *alive);
    for (uint32_t a = 0; a < na; a++)
        memcpy(cols[a], s->cols[a], s->rows * sizeof(int64_t));
    qv_free(s->vecs);
    qv_free(s->alive);
    s->vecs = vecs;
    s->alive = alive;
    old_ids = s->ids;
    qv__node_pause(s->coll);
    s->ids = ids;
    for (uint32_t a = 0; a < na; a++) {
        old_cols[a] = s->cols[a];
        s->cols[a] = cols[a];
        s->attrs.cols[a] = cols[a];
    }
    qv__node_resume(s->coll);
    s->cap = cap;
    qv_free(old_ids);
    for (uint32_t a = 0; a < na; a++)
        qv_free(old_cols[a]);
    return 0;
}

long qv__seg_remove_key(struct nseg *s, uint64_t key)
{
    switch (s->kind) {
    case NSEG_FLAT: return qv_flat_remove(s->ix.flat, 1, &key);
    case NSEG_IVF: return qv_ivf_remove(s->ix.ivf, 1, &key);
    case NSEG_IVFPQ: return qv_ivfpq_remove(s->ix.ivfpq, 1, &key);
    case NSEG_HNSW: return qv_hnsw_remove(s->ix.hnsw, 1, &key);
    }
    return 0;
}

int qv__seg_alive(const struct nseg *s, uint64_t row)
{
    return (int)(s->alive[row / 64] >> (row % 64) & 1);
}

/* ---- builds ---------------------------------------------------------- */

/* The index of kind for the n rows (vecs, keys) of a new segment; its
 * pointer in s->ix.  0, or the index's error (qv_errno set). */
static int build_index(struct nseg *s, const struct ncoll *c, const float *vecs,
                       const uint64_t *keys, uint64_t n, uint32_t nlist)
{
    const struct qv_node_coll_spec *sp = &c->spec;
    const uint64_t seed = c->node->o.build_seed;
    int rc;

    switch (s->kind) {
    case NSEG_FLAT:
        s->ix.flat = flat_new(c, n);
        if (s->ix.flat == NULL)
            return qv_errno;
        return qv_flat_add(s->ix.flat, n, vecs, keys);
    case NSEG_IVF: {
        struct qv_ivf_opts io = {
            .dim = sp->dim, .metric = sp->metric, .nlist = nlist, .seed = seed,
            .encoding = sp->index == QV_NODE_IVF_SQ8 ? QV_IVF_SQ8 : QV_IVF_FLAT,
        };
        s->ix.ivf = qv_ivf_create(&io);
        if (s->ix.ivf == NULL)
            return qv_errno;
        if ((rc = qv_ivf_train(s->ix.ivf, vecs, n)) != 0)
            return rc;
        return qv_ivf_add(s->ix.ivf, n, vecs, keys);
    }
    case NSEG_IVFPQ: {
        struct qv_ivfpq_opts po = {
            .dim = sp->dim, .metric = sp->metric, .nlist = nlist, .m = sp->pq_m,
            .nbits = sp->pq_nbits, .seed = seed,
        };
        s->ix.ivfpq = qv_ivfpq_create(&po);
        if (s->ix.ivfpq == NULL)
            return qv_errno;
        if ((rc = qv_ivfpq_train(s->ix.ivfpq, vecs, n)) != 0)
            return rc;
        return qv_ivfpq_add(s->ix.ivfpq, n, vecs, keys);
    }
    case NSEG_HNSW: {
        struct qv_hnsw_opts ho = {
            .dim = sp->dim, .metric = sp->metric, .M = sp->hnsw_m,
            .ef_construction = sp->ef_construction, .ef_search = sp->ef_search,
            .seed = seed, .numa_node = -1, .hugepages = QV_HUGE_OFF,
        };
        s->ix.hnsw = qv_hnsw_build(&ho, n, vecs, keys);
        return s->ix.hnsw ? 0 : qv_errno;
    }
    }
    return QV_EINVAL;
}

/* The kind a build of n rows gets, and its nlist (IVF*): IVF types need
 * 39 rows per list (nlist lowered to fit) and IVF-PQ 2^nbits rows for its
 * codebooks; below that a flat segment. */
static enum nseg_kind build_kind(const struct ncoll *c, uint64_t n, uint32_t *nlist)
{
    const struct qv_node_coll_spec *sp = &c->spec;
    uint64_t fit = n / QV_NODE_TRAIN_PER_CENTROID;

    switch (sp->index) {
    case QV_NODE_FLAT:
        return NSEG_FLAT;
    case QV_NODE_HNSW:
        return NSEG_HNSW;
    case QV_NODE_IVF:
    case QV_NODE_IVF_SQ8:
    case QV_NODE_IVF_PQ:
        if (fit < 1 || (sp->index == QV_NODE_IVF_PQ && n < (1ULL << sp->pq_nbits)))
            return NSEG_FLAT;
        if (*nlist > fit)
            *nlist = (uint32_t)fit;
        return sp->index == QV_NODE_IVF_PQ ? NSEG_IVFPQ : NSEG_IVF;
    default:
        return NSEG_FLAT;
    }
}

struct nseg *qv__seg_build(struct ncoll *c, uint32_t slot, struct nseg *const *src,
                           uint32_t *const *sel, const uint64_t *n_of, uint32_t nsrc,
                           uint32_t nlist)
{
    const uint32_t dim = c->spec.dim, na = c->spec.nattrs;
    uint64_t *keys = NULL, n = 0, i = 0;
    struct nseg *s;
    int rc = QV_ENOMEM;

    for (uint32_t j = 0; j < nsrc; j++)
        n += n_of[j];
    s = seg_alloc(c, slot, build_kind(c, n, &nlist));
    if (s == NULL)
        goto fail;
    s->nlist = nlist;
    s->state = NSEG_SEALED;
    keys = qv_malloc((n ? n : 1) * sizeof *keys, QV_MEM_SERVER);
    if (keys == NULL || seg_arrays(s, n ? n : 1) != 0)
        goto fail;
    for (uint32_t j = 0; j < nsrc; j++) {
        const struct nseg *from = src[j];
        for (uint64_t t = 0; t < n_of[j]; t++, i++) {
            uint64_t r = sel[j][t];
            memcpy(s->vecs + i * dim, from->vecs + r * dim, dim * sizeof(float));
            s->ids[i] = from->ids[r];
            for (uint32_t a = 0; a < na; a++)
                s->cols[a][i] = from->cols[a][r];
            s->alive[i / 64] |= 1ULL << (i % 64);
            keys[i] = node_key(slot, i);
        }
    }
    s->rows = n;
    s->live = n;
    s->attrs.rows = n;
    if ((rc = build_index(s, c, s->vecs, keys, n, nlist)) != 0)
        goto fail;
    qv_free(keys);
    return s;
fail:
    QV_WARN("node: collection '%s': building a %s segment of %llu rows failed: %s",
            c->name, qv_node_index_name(c->spec.index), (unsigned long long)n,
            qv_errmsg());
    qv_free(keys);
    if (s) {
        free_index(s);          /* never seen by an engine */
        seg_arrays_free(s);
        qv_free(s);
    }
    qv_errno = rc ? rc : QV_ENOMEM;
    return NULL;
}

int qv__seg_ix_type(const struct ncoll *c, enum nseg_kind kind)
{
    switch (kind) {
    case NSEG_FLAT: return QV_IX_FLAT;
    case NSEG_IVF: return c->spec.index == QV_NODE_IVF_SQ8 ? QV_IX_IVF_SQ8 : QV_IX_IVF_FLAT;
    case NSEG_IVFPQ: return QV_IX_IVF_PQ;
    case NSEG_HNSW: return QV_IX_HNSW;
    }
    return 0;
}

static uint64_t index_rows(const struct nseg *s)
{
    switch (s->kind) {
    case NSEG_FLAT: return qv_flat_rows(s->ix.flat);
    case NSEG_IVF: return qv_ivf_rows(s->ix.ivf);
    case NSEG_IVFPQ: return qv_ivfpq_rows(s->ix.ivfpq);
    case NSEG_HNSW: return qv_hnsw_rows(s->ix.hnsw);
    }
    return 0;
}

/* A flat segment's index from its (mapped) rows: keys slot << 40 | row,
 * as build_index gives them.  0 or the error. */
static int flat_from_rows(struct nseg *s, const struct ncoll *c, uint32_t slot, uint64_t rows)
{
    uint64_t *keys = qv_malloc((rows ? rows : 1) * sizeof *keys, QV_MEM_SERVER);
    if (keys == NULL)
        return qv_seterr(QV_ENOMEM, "node: collection '%s': no memory for a flat segment of "
                         "%llu rows", c->name, (unsigned long long)rows);
    for (uint64_t r = 0; r < rows; r++)
        keys[r] = node_key(slot, r);
    int rc = build_index(s, c, s->vecs, keys, rows, 0);
    qv_free(keys);
    return rc;
}

struct nseg *qv__seg_load(struct ncoll *c, uint32_t slot, enum nseg_kind kind, uint32_t nlist,
                          uint64_t rows, const uint64_t *alive, const char *rows_path,
                          const char *ix_path)
{
    const uint32_t dim = c->spec.dim, na = c->spec.nattrs;
    const uint64_t words = (rows + 63) / 64;
    struct qv_pool *pool = c->node->o.pool;
    struct nseg *s = seg_alloc(c, slot, kind);
    uint64_t sz;
    int rc = QV_ENOMEM;

    if (s == NULL)
        goto nomem;
    s->state = NSEG_SEALED;
    s->nlist = nlist;
    s->rows_file = qv_calloc(1, sizeof *s->rows_file, QV_MEM_SERVER);
    s->alive = qv_malloc((words ? words : 1) * sizeof *s->alive, QV_MEM_SERVER);
    if (s->rows_file == NULL || s->alive == NULL)
        goto nomem;
    if ((rc = qv_ixfile_open(s->rows_file, rows_path, QV_IX_SEGMENT)) != 0)
        goto fail;
    const struct nseg_file_hdr *h = qv_ixfile_section(s->rows_file, NSEG_TAG_SHDR, &sz);
    if (h == NULL || sz != sizeof *h || h->version != NSEG_FILE_VERSION || h->dim != dim ||
        h->nattrs != na || h->slot != slot || h->kind != (uint32_t)kind || h->rows != rows ||
        h->coll_id != c->id) {
        rc = qv_seterr(QV_ECORRUPT, "%s: its header does not describe the segment the "
                       "snapshot lists (collection %llu, slot %u, kind %d, %llu rows, dim %u, "
                       "%u attributes)", rows_path, (unsigned long long)c->id, slot, (int)kind,
                       (unsigned long long)rows, dim, na);
        goto fail;
    }
    s->ids = (uint64_t *)qv_ixfile_section(s->rows_file, NSEG_TAG_SIDS, &sz);
    if (s->ids == NULL || sz != rows * sizeof(uint64_t))
        goto bad;
    s->vecs = (float *)qv_ixfile_section(s->rows_file, NSEG_TAG_SVEC, &sz);
    if (s->vecs == NULL || sz != rows * dim * sizeof(float))
        goto bad;
    for (uint32_t a = 0; a < na; a++) {
        s->cols[a] = (int64_t *)qv_ixfile_section(s->rows_file, NSEG_TAG_SCOL(a), &sz);
        if (s->cols[a] == NULL || sz != rows * sizeof(int64_t))
            goto bad;
        s->attrs.cols[a] = s->cols[a];
    }
    if (words)
        memcpy(s->alive, alive, words * sizeof *alive);
    for (uint64_t r = 0; r < rows; r++)
        s->live += (uint64_t)qv__seg_alive(s, r);
    s->rows = rows;
    s->cap = rows;
    s->attrs.rows = rows;

    switch (kind) {
    case NSEG_FLAT:                 /* no index file: built from the rows */
        if ((rc = flat_from_rows(s, c, slot, rows)) != 0)
            goto fail;
        break;
    case NSEG_IVF: s->ix.ivf = qv_ivf_load(ix_path, pool); break;
    case NSEG_IVFPQ: s->ix.ivfpq = qv_ivfpq_load(ix_path, pool); break;
    case NSEG_HNSW: s->ix.hnsw = qv_hnsw_load(ix_path, pool); break;
    }
    if (s->ix.flat == NULL) {
        rc = qv_errno;
        goto fail;
    }
    if (index_rows(s) != rows) {
        rc = qv_seterr(QV_ECORRUPT, "%s: %llu rows, but its rows file %s has %llu: the two "
                       "files are not of the same segment", ix_path,
                       (unsigned long long)index_rows(s), rows_path, (unsigned long long)rows);
        goto fail;
    }
    for (uint64_t r = 0; r < rows; r++)     /* deletes since the index was written */
        if (!qv__seg_alive(s, r) && qv__seg_remove_key(s, node_key(slot, r)) < 0) {
            rc = qv_errno;
            goto fail;
        }
    return s;
bad:
    rc = qv_seterr(QV_ECORRUPT, "%s: the sections do not hold %llu rows of dim %u and %u "
                   "attributes: the file is not this segment's", rows_path,
                   (unsigned long long)rows, dim, na);
    goto fail;
nomem:
    rc = qv_seterr(QV_ENOMEM, "node: collection '%s': no memory to load a segment of %llu "
                   "rows", c->name, (unsigned long long)rows);
fail:
    if (s) {
        free_index(s);              /* never seen by an engine */
        seg_arrays_free(s);
        qv_free(s);
    }
    qv_errno = rc;
    return NULL;
}

uint32_t qv__slot_free(const struct ncoll *c)
{
    for (uint32_t i = 0; i < c->nslots; i++)
        if (c->slots[i] == NULL)
            return i;
    return c->nslots;
}
