/*
 * flat.c - the flat (exact) index; contract in quiver/flat.h.
 *
 * Storage.  A segment holds `cap` rows (cap a multiple of 16):
 *
 *   blocks   cap * dim floats   blocked layout (dist.h): groups of 16 rows,
 *                               dimension-major, 64-byte aligned
 *   norms    cap floats         |x|^2 per row (L2; zero for IP/cosine)
 *   ids      cap u64            the user's id of each row
 *   live     cap / 64 words     bit set = row present (clear = tombstone
 *                               or never filled)
 *
 * all carved from one arena (huge pages, NUMA node from the options).
 * Rows are numbered globally: row = segment * cap + offset.  An id -> row
 * hash map (idmap.h) serves remove and row_of.
 *
 * Search.  The distance work runs in the fused scan kernel of the active
 * SIMD level (qv_kernels()->scan_f32), which keeps register tiles of
 * queries x 32 vectors and merges into per-query heaps without writing
 * distances out.  Work is split over the pool one of two ways, chosen per
 * call from the kernel's register-tile width QTILE (12 queries):
 *
 *   by queries  each worker owns a range of queries and scans every
 *               segment into the caller's result heaps (no merge);
 *               the kernel sweeps an L2-sized chunk of vectors with all
 *               of a task's query tiles, so each vector comes from
 *               memory once per task: tasks are few and wide (one tile
 *               per task read the whole set from DRAM per tile: batch 64
 *               on 200k x 128 ran at 2.3k QPS, 5.2k with 3 tiles a task);
 *               cost ~ ceil(ceil(nq / T) / QTILE) tiles x all groups
 *   by blocks   each worker scans a share of the groups for all queries
 *               into its own heaps, merged at the end;
 *               cost ~ ceil(nq / QTILE) tiles x groups / T + merge
 *
 * whichever predicts fewer tile sweeps per worker (ties go to queries,
 * which needs no merge).  One query, or a handful, is therefore split by
 * blocks across every core; a large batch by queries.  Eligibility
 * (live AND filter) is assembled into a per-worker mask only for segments
 * that have tombstones or when a filter is given.
 */
#include <math.h>
#include <string.h>

#include "idmap.h"
#include "quiver/alloc.h"
#include "quiver/engine.h"
#include "quiver/errors.h"
#include "quiver/flat.h"
#include "quiver/ixfile.h"
#include "quiver/pool.h"
#include "quiver/topk.h"

#define QV_FLAT_DEFAULT_CAP 65536u
#define QV_FLAT_MAX_DIM 65536u
#define QV_FLAT_MAX_K 100000u
#define QTILE 12u                   /* queries per register tile (avx512) */
#define TASKS_PER_WORKER 4u
#define MIN_GROUPS_PER_TASK 32u
#define MIN_TILES_PER_TASK 4u       /* by queries: wider tasks where possible */

struct qv_flat_segment {
    float *blocks;
    float *norms;
    uint64_t *ids;
    uint64_t *live;
    uint32_t count;                 /* rows filled */
    uint32_t dead;                  /* tombstones among them */
    int mapped;                     /* blocks/norms/ids point into a loaded
                                       file (read-only) */
    uint32_t *rows;                 /* row numbers for engine work units;
                                       made on first use (arena) */
};

struct qv_flat {
    uint32_t dim;
    enum qv_metric metric;
    uint32_t cap;
    uint32_t prefetch;
    struct qv_pool *pool;
    struct qv_arena *arena;
    struct qv_flat_segment *segs;
    size_t nsegs;
    size_t segs_alloc;
    uint64_t rows;
    size_t live;
    struct qv_idmap map;
    struct qv_ixfile file;          /* the mapping of a loaded index */
    struct qv_engine *engine;       /* the last engine qv_flat_search_engine
                                       used (borrowed): told of freed and
                                       rewritten segments (engine.h) */
};

/* Tell the engine that segment i's memory is about to change or go. */
static void forget_segment(const struct qv_flat *f, size_t i)
{
    qv_engine_forget(f->engine, f->segs[i].blocks);
    qv_engine_forget(f->engine, f->segs[i].norms);
}

struct qv_flat *qv_flat_create(const struct qv_flat_opts *o)
{
    if (!o || o->dim == 0 || o->dim > QV_FLAT_MAX_DIM) {
        qv_seterr(QV_EINVAL, "flat index: dim %u is out of range; use 1..%u",
                  o ? o->dim : 0, QV_FLAT_MAX_DIM);
        return NULL;
    }
    if ((unsigned)o->metric >= QV_METRIC__COUNT) {
        qv_seterr(QV_EINVAL, "flat index: unknown metric %d; use l2, ip or cosine",
                  (int)o->metric);
        return NULL;
    }
    uint32_t cap = o->segment_capacity ? o->segment_capacity : QV_FLAT_DEFAULT_CAP;
    if (cap % QV_BLOCK != 0 || cap > (1u << 24)) {
        qv_seterr(QV_EINVAL, "flat index: segment capacity %u must be a multiple of "
                  "%d and at most %u", cap, QV_BLOCK, 1u << 24);
        return NULL;
    }
    struct qv_flat *f = qv_calloc(1, sizeof *f, QV_MEM_INDEX);
    if (!f)
        goto fail_flat;
    f->dim = o->dim;
    f->metric = o->metric;
    f->cap = cap;
    f->prefetch = o->prefetch_groups;
    f->pool = o->pool;
    qv__idmap_init(&f->map);
    struct qv_arena_opts ao = {
        .chunk_size = 0,
        .numa_node = o->numa_node,
        .hugepages = o->hugepages,
    };
    f->arena = qv_arena_create(&ao);
    if (!f->arena)
        goto fail_arena;
    return f;

fail_arena:
    qv_free(f);
fail_flat:
    if (!qv_errno)
        qv_errno = QV_ENOMEM;
    return NULL;
}

void qv_flat_free(struct qv_flat *f)
{
    if (!f)
        return;
    for (size_t i = 0; f->engine && i < f->nsegs; i++)
        forget_segment(f, i);
    qv__idmap_fini(&f->map);
    qv_free(f->segs);
    qv_arena_free(f->arena);
    qv_ixfile_close(&f->file);
    qv_free(f);
}

size_t qv_flat_size(const struct qv_flat *f) { return f->live; }
uint64_t qv_flat_rows(const struct qv_flat *f) { return f->rows; }
uint32_t qv_flat_dim(const struct qv_flat *f) { return f->dim; }

void qv_flat_memory(const struct qv_flat *f, struct qv_arena_stats *out)
{
    qv_arena_stats(f->arena, out);
}

int64_t qv_flat_row_of(const struct qv_flat *f, uint64_t id)
{
    return qv__idmap_get(&f->map, id);
}

/* Give a segment that points into a loaded file its own writable memory
 * (copy on write), so rows can be appended to it. */
static int own_segment(struct qv_flat *f, struct qv_flat_segment *s)
{
    if (!s->mapped)
        return 0;
    size_t groups = (s->count + QV_BLOCK - 1) / QV_BLOCK;
    float *blocks = qv_arena_alloc(f->arena, (size_t)f->cap * f->dim * sizeof(float));
    float *norms = blocks ? qv_arena_alloc(f->arena, (size_t)f->cap * sizeof(float)) : NULL;
    uint64_t *ids = norms ? qv_arena_alloc(f->arena, (size_t)f->cap * sizeof(uint64_t)) : NULL;
    if (!ids)
        return qv_errno ? qv_errno : QV_ENOMEM;
    memcpy(blocks, s->blocks, groups * QV_BLOCK * f->dim * sizeof(float));
    memcpy(norms, s->norms, s->count * sizeof(float));
    memcpy(ids, s->ids, s->count * sizeof(uint64_t));
    s->blocks = blocks;
    s->norms = norms;
    s->ids = ids;
    s->mapped = 0;
    return 0;
}

/* Make sure segments exist for rows [f->rows, f->rows + n). */
static int reserve_segments(struct qv_flat *f, size_t n)
{
    if (n && f->rows % f->cap != 0) {
        int rc = own_segment(f, &f->segs[f->rows / f->cap]);
        if (rc)
            return rc;
    }
    size_t need = (size_t)((f->rows + n + f->cap - 1) / f->cap);
    if (need > f->segs_alloc) {
        size_t alloc = f->segs_alloc ? f->segs_alloc * 2 : 8;
        while (alloc < need)
            alloc *= 2;
        struct qv_flat_segment *s = qv_realloc(f->segs, alloc * sizeof *s, QV_MEM_INDEX);
        if (!s)
            return QV_ENOMEM;
        f->segs = s;
        f->segs_alloc = alloc;
    }
    while (f->nsegs < need) {
        struct qv_flat_segment s = { 0 };
        s.blocks = qv_arena_alloc(f->arena, (size_t)f->cap * f->dim * sizeof(float));
        s.norms = s.blocks ? qv_arena_alloc(f->arena, (size_t)f->cap * sizeof(float)) : NULL;
        s.ids = s.norms ? qv_arena_alloc(f->arena, (size_t)f->cap * sizeof(uint64_t)) : NULL;
        s.live = s.ids ? qv_arena_alloc(f->arena, ((size_t)f->cap / 64 + 1) * 8) : NULL;
        if (!s.live)
            return qv_errno ? qv_errno : QV_ENOMEM;
        f->segs[f->nsegs++] = s;    /* arena memory: kept even if add fails */
    }
    return 0;
}

int qv_flat_add(struct qv_flat *f, size_t n, const float *vecs, const uint64_t *ids)
{
    if (n == 0)
        return 0;
    if (!vecs)
        return qv_seterr(QV_EINVAL, "flat add: vectors are NULL");
    const size_t dim = f->dim;
    for (size_t i = 0; i < n * dim; i++)
        if (!isfinite(vecs[i]))
            return qv_seterr(QV_EINVAL, "flat add: vector %zu element %zu is %f; only "
                             "finite values can be indexed", i / dim, i % dim,
                             (double)vecs[i]);
    /* Validate ids before changing anything: all or nothing. */
    int rc = qv__idmap_reserve(&f->map, n);
    if (rc)
        return qv_seterr(rc, "flat add: no memory for the id map of %zu vectors", n);
    size_t i;
    for (i = 0; i < n; i++) {
        uint64_t id = ids ? ids[i] : f->rows + i;
        if (id == QV_ID_NONE) {
            rc = qv_seterr(QV_EINVAL, "flat add: id %llu is reserved; use ids below "
                           "2^64-1", (unsigned long long)id);
            break;
        }
        if (qv__idmap_get(&f->map, id) >= 0) {
            rc = qv_seterr(QV_EEXIST, "flat add: id %llu is %s", (unsigned long long)id,
                           i && qv__idmap_get(&f->map, id) >= (int64_t)f->rows
                               ? "repeated in the batch" : "already in the index");
            break;
        }
        /* provisional entry to catch repeats within the batch; cannot
         * fail after the reserve above */
        qv__idmap_put(&f->map, id, f->rows + i);
    }
    if (rc == 0)
        rc = reserve_segments(f, n);
    if (rc) {
        for (size_t j = 0; j < i; j++) {
            uint64_t id = ids ? ids[j] : f->rows + j;
            if (qv__idmap_get(&f->map, id) == (int64_t)(f->rows + j))
                qv__idmap_del(&f->map, id);
        }
        return rc;
    }

    float *tmp = NULL;
    if (f->metric == QV_METRIC_COSINE) {
        tmp = qv_malloc(dim * sizeof(float), QV_MEM_INDEX);
        if (!tmp) {
            for (size_t j = 0; j < n; j++)
                qv__idmap_del(&f->map, ids ? ids[j] : f->rows + j);
            return qv_seterr(QV_ENOMEM, "flat add: no memory");
        }
    }
    if (f->engine)                  /* segments written in place */
        for (uint64_t s = f->rows / f->cap; s <= (f->rows + n - 1) / f->cap; s++)
            forget_segment(f, (size_t)s);
    const struct qv_dist_ops *k = qv_kernels();
    for (size_t j = 0; j < n; j++) {
        uint64_t row = f->rows + j;
        struct qv_flat_segment *s = &f->segs[row / f->cap];
        uint32_t off = (uint32_t)(row % f->cap);
        const float *v = vecs + j * dim;
        if (tmp) {
            memcpy(tmp, v, dim * sizeof(float));
            k->normalize_f32(tmp, dim);
            v = tmp;
        }
        qv_block_pack(s->blocks, off, v, 1, dim);
        if (f->metric == QV_METRIC_L2) {
            float nrm = -k->dist[QV_METRIC_IP][QV_ELEM_F32](v, v, dim);
            s->norms[off] = nrm;
        }
        s->ids[off] = ids ? ids[j] : row;
        s->live[off / 64] |= 1ULL << (off % 64);
        s->count = off + 1;
    }
    qv_free(tmp);
    f->rows += n;
    f->live += n;
    return 0;
}

long qv_flat_remove(struct qv_flat *f, size_t n, const uint64_t *ids)
{
    long removed = 0;
    if (!ids)
        return 0;
    for (size_t i = 0; i < n; i++) {
        int64_t row = qv__idmap_get(&f->map, ids[i]);
        if (row < 0)
            continue;
        qv__idmap_del(&f->map, ids[i]);
        struct qv_flat_segment *s = &f->segs[(uint64_t)row / f->cap];
        uint32_t off = (uint32_t)((uint64_t)row % f->cap);
        s->live[off / 64] &= ~(1ULL << (off % 64));
        s->dead++;
        f->live--;
        removed++;
    }
    return removed;
}

/* ---- search ---- */

struct flat_task {
    uint32_t seg;           /* by blocks: segment */
    uint32_t g_begin;       /* by blocks: group range in the segment */
    uint32_t g_end;
    uint32_t q_begin;       /* by queries: query range */
    uint32_t q_end;
};

struct flat_search {
    const struct qv_flat *f;
    const struct qv_dist_ops *ops;
    const float *queries;   /* normalised copy for cosine */
    const float *qnorms;
    size_t nq;
    uint32_t k;
    const uint64_t *filter;
    int by_blocks;
    struct flat_task *tasks;
    struct qv_topk *heaps;  /* [worker][nq] */
    uint64_t *masks;        /* [worker][mask_words] */
    size_t mask_words;
};

/* 64 bits of bitmap bm starting at bit p (bits past nbits read as 0). */
static inline uint64_t bits64(const uint64_t *bm, uint64_t p, uint64_t nbits)
{
    if (p >= nbits)
        return 0;
    uint64_t w = p / 64, s = p % 64;
    uint64_t v = bm[w] >> s;
    if (s && p - s + 64 < nbits)
        v |= bm[w + 1] << (64 - s);
    if (nbits - p < 64)
        v &= (1ULL << (nbits - p)) - 1;
    return v;
}

/* Scan groups [gb, ge) of segment si for queries [q0, q1) into heaps. */
static void scan_range(const struct flat_search *S, unsigned worker, uint32_t si,
                       uint32_t gb, uint32_t ge, size_t q0, size_t q1,
                       struct qv_topk *heaps)
{
    const struct qv_flat *f = S->f;
    const struct qv_flat_segment *s = &f->segs[si];
    size_t first = (size_t)gb * QV_BLOCK;
    if (first >= s->count)
        return;
    size_t nvec = (size_t)ge * QV_BLOCK;
    if (nvec > s->count)
        nvec = s->count;
    nvec -= first;
    const uint64_t *mask = NULL;
    if (s->dead || S->filter) {
        uint64_t *m = S->masks + (size_t)worker * S->mask_words;
        uint64_t seg_row0 = (uint64_t)si * f->cap;
        size_t words = (nvec + 63) / 64;
        for (size_t w = 0; w < words; w++) {
            uint64_t v = bits64(s->live, first + w * 64, s->count);
            if (S->filter)
                v &= bits64(S->filter, seg_row0 + first + w * 64, f->rows);
            m[w] = v;
        }
        mask = m;
    }
    struct qv_scan_args a = {
        .queries = S->queries + q0 * f->dim,
        .nq = q1 - q0,
        .dim = f->dim,
        .qnorms = S->qnorms + q0,
        .blocks = s->blocks + first * f->dim,
        .norms = s->norms + first,
        .ids = s->ids + first,
        .nvec = nvec,
        .mask = mask,
        .metric = f->metric == QV_METRIC_L2 ? QV_METRIC_L2 : QV_METRIC_IP,
        .heaps = heaps + q0,
        .prefetch = f->prefetch,
    };
    S->ops->scan_f32(&a);
}

static void run_task(void *arg, unsigned t, unsigned worker)
{
    const struct flat_search *S = arg;
    const struct flat_task *task = &S->tasks[t];
    if (S->by_blocks) {
        scan_range(S, worker, task->seg, task->g_begin, task->g_end, 0, S->nq,
                   S->heaps + (size_t)worker * S->nq);
    } else {
        const struct qv_flat *f = S->f;
        for (uint32_t si = 0; si < f->nsegs; si++) {
            uint32_t groups = (f->segs[si].count + QV_BLOCK - 1) / QV_BLOCK;
            scan_range(S, worker, si, 0, groups, task->q_begin, task->q_end, S->heaps);
        }
    }
}

/* Queries as the scans take them: with COSINE a normalised copy (*copy,
 * which the caller frees), and |q|^2 per query into qnorms for L2 (0
 * otherwise).  Returns the queries to scan, or NULL when the copy cannot
 * be allocated. */
static const float *prepare_queries(const struct qv_flat *f, const struct qv_dist_ops *ops,
                                    const float *queries, size_t nq, float *qnorms,
                                    float **copy)
{
    const size_t dim = f->dim;
    *copy = NULL;
    if (f->metric == QV_METRIC_COSINE) {
        *copy = qv_malloc(nq * dim * sizeof(float), QV_MEM_INDEX);
        if (!*copy)
            return NULL;
        memcpy(*copy, queries, nq * dim * sizeof(float));
        for (size_t i = 0; i < nq; i++)
            ops->normalize_f32(*copy + i * dim, dim);
        queries = *copy;
    }
    for (size_t i = 0; i < nq; i++)
        qnorms[i] = f->metric == QV_METRIC_L2
                  ? -ops->dist[QV_METRIC_IP][QV_ELEM_F32](queries + i * dim,
                                                          queries + i * dim, dim)
                  : 0.0f;
    return queries;
}

/* Sort each query's heap into its result row; COSINE reports 1 - cos. */
static void finish_results(const struct qv_flat *f, struct qv_topk *heaps, size_t nq,
                           uint32_t k, float *dist)
{
    for (size_t i = 0; i < nq; i++) {
        qv_topk_sort(&heaps[i]);
        if (f->metric == QV_METRIC_COSINE)
            for (uint32_t j = 0; j < k; j++)
                dist[i * k + j] += 1.0f;
    }
}

static size_t ceil_div(size_t a, size_t b) { return (a + b - 1) / b; }

int qv_flat_search(struct qv_flat *f, const float *queries, size_t nq, uint32_t k,
                   const uint64_t *filter, float *dist, uint64_t *ids)
{
    if (!queries || !dist || !ids)
        return qv_seterr(QV_EINVAL, "flat search: NULL queries or result arrays");
    if (nq == 0)
        return qv_seterr(QV_EINVAL, "flat search: no queries (nq = 0)");
    if (k == 0 || k > QV_FLAT_MAX_K)
        return qv_seterr(QV_EINVAL, "flat search: k = %u is out of range; use 1..%u",
                         k, QV_FLAT_MAX_K);
    const unsigned T = qv_pool_threads(f->pool);
    size_t groups_total = 0;
    for (size_t si = 0; si < f->nsegs; si++)
        groups_total += ceil_div(f->segs[si].count, QV_BLOCK);

    /* Cost model (see the header comment): tile sweeps per worker. */
    size_t cost_q = ceil_div(ceil_div(nq, T), QTILE) * groups_total;
    size_t cost_b = ceil_div(nq, QTILE) * ceil_div(groups_total, T) + nq * k / 64;
    int by_blocks = T > 1 && cost_b < cost_q;

    struct flat_search S = {
        .f = f, .ops = qv_kernels(), .nq = nq, .k = k, .filter = filter,
        .by_blocks = by_blocks,
    };
    unsigned nworkers = by_blocks ? T : 1;
    size_t ntasks_max = by_blocks ? f->nsegs + (size_t)T * TASKS_PER_WORKER + 1
                                  : (size_t)T * TASKS_PER_WORKER + 1;
    size_t heap_slots = (size_t)(nworkers - 1) * nq * k;
    S.mask_words = f->cap / 64 + 2;

    int rc = QV_ENOMEM;
    float *qcopy = NULL;
    float *qnorms = qv_malloc(nq * sizeof(float), QV_MEM_INDEX);
    S.tasks = qv_malloc(ntasks_max * sizeof *S.tasks, QV_MEM_INDEX);
    S.heaps = qv_malloc((size_t)nworkers * nq * sizeof *S.heaps, QV_MEM_INDEX);
    S.masks = qv_malloc((size_t)T * S.mask_words * sizeof(uint64_t), QV_MEM_INDEX);
    float *hd = heap_slots ? qv_malloc(heap_slots * sizeof(float), QV_MEM_INDEX) : NULL;
    uint64_t *hi = heap_slots ? qv_malloc(heap_slots * sizeof(uint64_t), QV_MEM_INDEX) : NULL;
    if (!qnorms || !S.tasks || !S.heaps || !S.masks || (heap_slots && (!hd || !hi)))
        goto out;
    queries = prepare_queries(f, S.ops, queries, nq, qnorms, &qcopy);
    if (!queries)
        goto out;
    S.queries = queries;
    S.qnorms = qnorms;

    for (size_t i = 0; i < nq; i++)
        qv_topk_init(&S.heaps[i], k, dist + i * k, ids + i * k);
    for (unsigned w = 1; w < nworkers; w++)
        for (size_t i = 0; i < nq; i++) {
            size_t slot = ((size_t)(w - 1) * nq + i) * k;
            qv_topk_init(&S.heaps[(size_t)w * nq + i], k, hd + slot, hi + slot);
        }

    size_t ntasks = 0;
    if (by_blocks) {
        size_t per = ceil_div(groups_total, (size_t)T * TASKS_PER_WORKER);
        if (per < MIN_GROUPS_PER_TASK)
            per = MIN_GROUPS_PER_TASK;
        for (uint32_t si = 0; si < f->nsegs; si++) {
            uint32_t g = (uint32_t)ceil_div(f->segs[si].count, QV_BLOCK);
            for (uint32_t b = 0; b < g && ntasks < ntasks_max; b += (uint32_t)per) {
                uint32_t e = b + (uint32_t)per < g ? b + (uint32_t)per : g;
                if (ntasks == ntasks_max - 1)
                    e = g;
                S.tasks[ntasks++] = (struct flat_task){ .seg = si, .g_begin = b, .g_end = e };
            }
        }
    } else {
        /* query ranges in whole register tiles: T x m tasks, m up to
         * TASKS_PER_WORKER (balance) but each of at least MIN_TILES_PER_TASK
         * tiles where there are enough (each task reads every vector
         * from memory once, so fewer, wider tasks read less) */
        size_t tiles = ceil_div(nq, QTILE);
        size_t m = tiles / ((size_t)T * MIN_TILES_PER_TASK);
        m = m < 1 ? 1 : m > TASKS_PER_WORKER ? TASKS_PER_WORKER : m;
        size_t nt = (size_t)T * m;
        if (nt > tiles)
            nt = tiles;
        size_t per = ceil_div(tiles, nt);
        for (size_t t = 0; t * per < tiles; t++) {
            size_t qb = t * per * QTILE, qe = (t + 1) * per * QTILE;
            if (qe > nq)
                qe = nq;
            S.tasks[ntasks++] = (struct flat_task){ .q_begin = (uint32_t)qb,
                                                    .q_end = (uint32_t)qe };
        }
    }
    qv_pool_run(f->pool, (unsigned)ntasks, run_task, &S);

    for (unsigned w = 1; w < nworkers; w++)
        for (size_t i = 0; i < nq; i++)
            qv_topk_merge(&S.heaps[i], &S.heaps[(size_t)w * nq + i]);
    finish_results(f, S.heaps, nq, k, dist);
    rc = 0;

out:
    qv_free(hi);
    qv_free(hd);
    qv_free(S.masks);
    qv_free(S.heaps);
    qv_free(S.tasks);
    qv_free(qcopy);
    qv_free(qnorms);
    if (rc)
        qv_seterr(rc, "flat search: no memory for %zu queries x k %u", nq, k);
    return rc;
}

/* ---- index files ----
 *
 * Sections (ixfile.h container, type QV_IX_FLAT):
 *   FHDR  struct flat_file_hdr
 *   FSEG  per segment: u32 count, u32 dead
 *   FBLK  every segment's filled groups, back to back (blocked layout;
 *         each segment's part is a multiple of 64 bytes, so every group
 *         stays 64-byte aligned in the mapping)
 *   FNRM  |x|^2 of every row, segment after segment
 *   FIDS  the id of every row
 *   FLIV  every segment's live bitmap (cap / 64 + 1 words each)
 * Loading points the segments' vectors, norms and ids into the mapping;
 * live bitmaps are copied (removes write them) and the id map is rebuilt.
 * Appending to a loaded index first copies the last, partly filled
 * segment (own_segment).
 */
struct flat_file_hdr {
    uint32_t dim;
    uint32_t metric;
    uint32_t cap;
    uint32_t nsegs;
    uint64_t rows;
    uint64_t live;
};

#define TAG_FHDR QV_FOURCC('F', 'H', 'D', 'R')
#define TAG_FSEG QV_FOURCC('F', 'S', 'E', 'G')
#define TAG_FBLK QV_FOURCC('F', 'B', 'L', 'K')
#define TAG_FNRM QV_FOURCC('F', 'N', 'R', 'M')
#define TAG_FIDS QV_FOURCC('F', 'I', 'D', 'S')
#define TAG_FLIV QV_FOURCC('F', 'L', 'I', 'V')

int qv_flat_save(const struct qv_flat *f, const char *path)
{
    /* only segments holding rows (an add that failed may have left an
     * empty one at the end) */
    size_t nsegs = (size_t)((f->rows + f->cap - 1) / f->cap);
    struct flat_file_hdr h = { .dim = f->dim, .metric = (uint32_t)f->metric, .cap = f->cap,
                               .nsegs = (uint32_t)nsegs, .rows = f->rows,
                               .live = f->live };
    size_t words = (size_t)f->cap / 64 + 1;
    size_t groups = 0;
    for (size_t i = 0; i < nsegs; i++)
        groups += (f->segs[i].count + QV_BLOCK - 1) / QV_BLOCK;
    uint32_t *seg = qv_malloc(nsegs * 2 * sizeof(uint32_t) + 1, QV_MEM_INDEX);
    float *blk = qv_malloc(groups * QV_BLOCK * f->dim * sizeof(float) + 1, QV_MEM_INDEX);
    float *nrm = qv_malloc(f->rows * sizeof(float) + 1, QV_MEM_INDEX);
    uint64_t *ids = qv_malloc(f->rows * sizeof(uint64_t) + 1, QV_MEM_INDEX);
    uint64_t *liv = qv_malloc(nsegs * words * sizeof(uint64_t) + 1, QV_MEM_INDEX);
    int rc = QV_ENOMEM;
    if (!seg || !blk || !nrm || !ids || !liv) {
        qv_seterr(rc, "%s: no memory to stage the flat index", path);
        goto out;
    }
    size_t gpos = 0, rpos = 0;
    for (size_t i = 0; i < nsegs; i++) {
        const struct qv_flat_segment *sg = &f->segs[i];
        size_t g = (sg->count + QV_BLOCK - 1) / QV_BLOCK;
        seg[2 * i] = sg->count;
        seg[2 * i + 1] = sg->dead;
        memcpy(blk + gpos * QV_BLOCK * f->dim, sg->blocks, g * QV_BLOCK * f->dim * sizeof(float));
        memcpy(nrm + rpos, sg->norms, sg->count * sizeof(float));
        memcpy(ids + rpos, sg->ids, sg->count * sizeof(uint64_t));
        memcpy(liv + i * words, sg->live, words * sizeof(uint64_t));
        gpos += g;
        rpos += sg->count;
    }
    struct qv_ixfile_writer w;
    qv_ixfile_writer_init(&w, path, QV_IX_FLAT);
    if ((rc = qv_ixfile_add(&w, TAG_FHDR, &h, sizeof h)) ||
        (rc = qv_ixfile_add(&w, TAG_FSEG, seg, nsegs * 2 * sizeof(uint32_t))) ||
        (rc = qv_ixfile_add(&w, TAG_FBLK, blk, groups * QV_BLOCK * f->dim * sizeof(float))) ||
        (rc = qv_ixfile_add(&w, TAG_FNRM, nrm, rpos * sizeof(float))) ||
        (rc = qv_ixfile_add(&w, TAG_FIDS, ids, rpos * sizeof(uint64_t))) ||
        (rc = qv_ixfile_add(&w, TAG_FLIV, liv, nsegs * words * sizeof(uint64_t))))
        goto out;
    rc = qv_ixfile_commit(&w);
out:
    qv_free(liv);
    qv_free(ids);
    qv_free(nrm);
    qv_free(blk);
    qv_free(seg);
    return rc;
}

struct qv_flat *qv_flat_load(const char *path, struct qv_pool *pool)
{
    struct qv_ixfile file;
    if (qv_ixfile_open(&file, path, QV_IX_FLAT) != 0)
        return NULL;
    uint64_t sz_h, sz_s, sz_b, sz_n, sz_i, sz_l;
    const struct flat_file_hdr *h = qv_ixfile_section(&file, TAG_FHDR, &sz_h);
    const uint32_t *seg = qv_ixfile_section(&file, TAG_FSEG, &sz_s);
    const float *blk = qv_ixfile_section(&file, TAG_FBLK, &sz_b);
    const float *nrm = qv_ixfile_section(&file, TAG_FNRM, &sz_n);
    const uint64_t *ids = qv_ixfile_section(&file, TAG_FIDS, &sz_i);
    const uint64_t *liv = qv_ixfile_section(&file, TAG_FLIV, &sz_l);
    struct qv_flat *f = NULL;
    if (!h || sz_h != sizeof *h) {
        qv_seterr(QV_ECORRUPT, "%s: flat index header is missing or has the wrong size", path);
        goto fail;
    }
    size_t words = (size_t)h->cap / 64 + 1;
    int bad = h->dim == 0 || h->dim > QV_FLAT_MAX_DIM || h->metric >= QV_METRIC__COUNT ||
              h->cap == 0 || h->cap % QV_BLOCK || h->cap > (1u << 24) ||
              h->nsegs != (h->rows + h->cap - 1) / h->cap || h->live > h->rows;
    if (!bad) {
        bad = !seg || sz_s != (uint64_t)h->nsegs * 2 * sizeof(uint32_t) ||
              !liv || sz_l != (uint64_t)h->nsegs * words * sizeof(uint64_t) ||
              sz_n != h->rows * sizeof(float) || sz_i != h->rows * sizeof(uint64_t);
    }
    uint64_t rows = 0, groups = 0, dead = 0;
    for (uint32_t i = 0; !bad && i < h->nsegs; i++) {
        if (seg[2 * i] > h->cap || seg[2 * i + 1] > seg[2 * i] ||
            (i + 1 < h->nsegs && seg[2 * i] != h->cap))
            bad = 1;
        rows += seg[2 * i];
        dead += seg[2 * i + 1];
        groups += (seg[2 * i] + QV_BLOCK - 1) / QV_BLOCK;
    }
    if (!bad && (rows != h->rows || h->live != rows - dead ||
                 sz_b != groups * QV_BLOCK * h->dim * sizeof(float)))
        bad = 1;
    if (bad) {
        qv_seterr(QV_ECORRUPT, "%s: the flat index's sizes are inconsistent", path);
        goto fail;
    }
    struct qv_flat_opts o = { .dim = h->dim, .metric = (enum qv_metric)h->metric,
                              .segment_capacity = h->cap, .pool = pool, .numa_node = -1 };
    f = qv_flat_create(&o);
    if (!f)
        goto fail;
    f->segs = qv_calloc(h->nsegs ? h->nsegs : 1, sizeof *f->segs, QV_MEM_INDEX);
    if (!f->segs || qv__idmap_reserve(&f->map, h->live) != 0) {
        qv_seterr(QV_ENOMEM, "%s: no memory to load %llu rows", path,
                  (unsigned long long)h->rows);
        goto fail;
    }
    f->segs_alloc = h->nsegs ? h->nsegs : 1;
    size_t gpos = 0, rpos = 0;
    for (uint32_t i = 0; i < h->nsegs; i++) {
        struct qv_flat_segment *sg = &f->segs[i];
        sg->count = seg[2 * i];
        sg->dead = seg[2 * i + 1];
        sg->blocks = (float *)(blk + gpos * QV_BLOCK * h->dim);
        sg->norms = (float *)(nrm + rpos);
        sg->ids = (uint64_t *)(ids + rpos);
        sg->mapped = 1;
        sg->live = qv_arena_alloc(f->arena, words * sizeof(uint64_t));
        if (!sg->live)
            goto fail;
        memcpy(sg->live, liv + (size_t)i * words, words * sizeof(uint64_t));
        uint64_t nlive = 0;
        for (uint32_t r = 0; r < sg->count; r++)
            if ((sg->live[r / 64] >> (r % 64)) & 1) {
                if (qv__idmap_get(&f->map, sg->ids[r]) >= 0) {
                    qv_seterr(QV_ECORRUPT, "%s: id %llu appears twice", path,
                              (unsigned long long)sg->ids[r]);
                    goto fail;
                }
                qv__idmap_put(&f->map, sg->ids[r], (uint64_t)i * h->cap + r);
                nlive++;
            }
        if (nlive != sg->count - sg->dead) {
            qv_seterr(QV_ECORRUPT, "%s: segment %u's live bitmap disagrees with its count",
                      path, i);
            goto fail;
        }
        f->nsegs++;
        gpos += (sg->count + QV_BLOCK - 1) / QV_BLOCK;
        rpos += sg->count;
    }
    f->rows = h->rows;
    f->live = h->live;
    f->file = file;
    return f;
fail:
    if (!qv_errno)
        qv_errno = QV_ENOMEM;
    {
        int e = qv_errno;
        qv_flat_free(f);
        qv_ixfile_close(&file);
        qv_errno = e;
    }
    return NULL;
}

/* ---- search through an engine ----
 *
 * The same exact search expressed as one QV_WU_FLAT work unit: every
 * segment is a list (its blocked vectors, norms and ids are already the
 * layout engine.h asks for) and every query probes every list.  Row
 * numbers per entry (for the filter) are made once per segment.  Used to
 * run flat search on an accelerator engine; the CPU path above stays the
 * fast one for the CPU.
 */
int qv_flat_search_engine(struct qv_flat *f, struct qv_engine *e, const float *queries,
                          size_t nq, uint32_t k, const uint64_t *filter, float *dist,
                          uint64_t *ids)
{
    if (!e || !queries || !dist || !ids)
        return qv_seterr(QV_EINVAL, "flat search: NULL engine, queries or result arrays");
    if (nq == 0 || nq > UINT32_MAX)
        return qv_seterr(QV_EINVAL, "flat search: nq = %zu; use 1..2^32-1", nq);
    if (k == 0 || k > QV_FLAT_MAX_K)
        return qv_seterr(QV_EINVAL, "flat search: k = %u is out of range; use 1..%u", k,
                         QV_FLAT_MAX_K);
    if (f->rows > UINT32_MAX)
        return qv_seterr(QV_ENOTSUP, "flat search: engine work units address 2^32 rows");
    const struct qv_dist_ops *ops = qv_kernels();
    size_t nsegs = (size_t)((f->rows + f->cap - 1) / f->cap);
    size_t words = (size_t)((f->rows + 63) / 64);
    int need_mask = filter != NULL;
    for (size_t i = 0; i < nsegs; i++) {
        struct qv_flat_segment *sg = &f->segs[i];
        need_mask |= sg->dead != 0;
        if (!sg->rows) {
            sg->rows = qv_arena_alloc(f->arena, (size_t)f->cap * sizeof(uint32_t));
            if (!sg->rows)
                return qv_seterr(QV_ENOMEM, "flat search: no memory for row numbers");
            for (uint32_t r = 0; r < f->cap; r++)
                sg->rows[r] = (uint32_t)(i * f->cap + r);
        }
    }
    int rc = QV_ENOMEM;
    float *qcopy = NULL;
    float *qnorms = qv_malloc(nq * sizeof(float) + 1, QV_MEM_INDEX);
    struct qv_wu_list *lists = qv_calloc(nsegs + 1, sizeof *lists, QV_MEM_INDEX);
    uint32_t *offs = qv_malloc((nq + 1) * sizeof(uint32_t), QV_MEM_INDEX);
    uint32_t *probes = qv_malloc(nq * nsegs * sizeof(uint32_t) + 1, QV_MEM_INDEX);
    struct qv_topk *heaps = qv_malloc(nq * sizeof *heaps, QV_MEM_INDEX);
    uint64_t *mask = need_mask ? qv_malloc(words * sizeof(uint64_t) + 1, QV_MEM_INDEX) : NULL;
    if (!qnorms || !lists || !offs || !probes || !heaps || (need_mask && !mask))
        goto out;
    queries = prepare_queries(f, ops, queries, nq, qnorms, &qcopy);
    if (!queries)
        goto out;
    for (size_t i = 0; i < nq; i++) {
        offs[i] = (uint32_t)(i * nsegs);
        for (size_t j = 0; j < nsegs; j++)
            probes[i * nsegs + j] = (uint32_t)j;
        qv_topk_init(&heaps[i], k, dist + i * k, ids + i * k);
    }
    offs[nq] = (uint32_t)(nq * nsegs);
    for (size_t j = 0; j < nsegs; j++) {
        const struct qv_flat_segment *sg = &f->segs[j];
        lists[j] = (struct qv_wu_list){
            .codes = sg->blocks, .norms = f->metric == QV_METRIC_L2 ? sg->norms : NULL,
            .ids = sg->ids, .rows = sg->rows, .n = sg->count, .list_no = (uint32_t)j,
        };
    }
    if (need_mask)
        for (size_t w = 0; w < words; w++) {
            uint64_t row0 = (uint64_t)w * 64, v = 0;
            for (uint32_t b = 0; b < 64 && row0 + b < f->rows; b++) {
                uint64_t r = row0 + b;
                const struct qv_flat_segment *sg = &f->segs[r / f->cap];
                uint32_t off = (uint32_t)(r % f->cap);
                v |= ((sg->live[off / 64] >> (off % 64)) & 1) << b;
            }
            mask[w] = filter ? v & filter[w] : v;
        }
    struct qv_work_unit wu = {
        .kind = QV_WU_FLAT,
        .metric = f->metric == QV_METRIC_L2 ? QV_METRIC_L2 : QV_METRIC_IP,
        .dim = f->dim,
        .nq = (uint32_t)nq,
        .queries = queries,
        .qnorms = qnorms,
        .nlists = (uint32_t)nsegs,
        .lists = lists,
        .probe_offsets = offs,
        .probe_lists = probes,
        .filter = mask,
        .heaps = heaps,
    };
    if (f->engine != e) {
        for (size_t j = 0; f->engine && j < nsegs; j++)
            forget_segment(f, j);   /* it will not hear of later changes */
        f->engine = e;
    }
    rc = qv_engine_run(e, &wu);
    if (rc == 0)
        finish_results(f, heaps, nq, k, dist);
out:
    qv_free(mask);
    qv_free(heaps);
    qv_free(probes);
    qv_free(offs);
    qv_free(lists);
    qv_free(qcopy);
    qv_free(qnorms);
    if (rc == QV_ENOMEM && qv_errno != QV_ENOMEM)
        qv_seterr(rc, "flat search: no memory for a work unit of %zu queries", nq);
    return rc;
}


/* ---- prefetch into an engine ----
 *
 * The unit qv_flat_search_engine builds scans every segment, so a
 * prefetch names them all (no probes: the router's cost model takes one
 * query over every list).  Like a search on e, it makes e the engine the
 * index tells of rewritten and freed segments (f->engine), since e may
 * now hold copies of them.
 */
int qv_flat_prefetch(struct qv_flat *f, struct qv_engine *e)
{
    if (!e || !f->rows)
        return 0;
    size_t nsegs = (size_t)((f->rows + f->cap - 1) / f->cap);
    if (nsegs > UINT32_MAX || f->rows > UINT32_MAX)
        return qv_seterr(QV_ENOTSUP, "flat prefetch: engine work units address 2^32 rows");
    struct qv_wu_list *lists = qv_calloc(nsegs, sizeof *lists, QV_MEM_INDEX);
    if (!lists)
        return qv_seterr(QV_ENOMEM, "flat prefetch: no memory for %zu segments", nsegs);
    for (size_t j = 0; j < nsegs; j++) {
        const struct qv_flat_segment *sg = &f->segs[j];
        lists[j] = (struct qv_wu_list){
            .codes = sg->blocks, .norms = f->metric == QV_METRIC_L2 ? sg->norms : NULL,
            .ids = sg->ids, .rows = sg->rows, .n = sg->count, .list_no = (uint32_t)j,
        };
    }
    struct qv_work_unit wu = {
        .kind = QV_WU_FLAT,
        .metric = f->metric == QV_METRIC_L2 ? QV_METRIC_L2 : QV_METRIC_IP,
        .dim = f->dim,
        .nlists = (uint32_t)nsegs,
        .lists = lists,
    };
    if (f->engine != e) {
        for (size_t j = 0; f->engine && j < nsegs; j++)
            forget_segment(f, j);   /* it will not hear of later changes */
        f->engine = e;
    }
    int rc = qv_engine_prefetch(e, &wu);
    qv_free(lists);
    return rc;
}
