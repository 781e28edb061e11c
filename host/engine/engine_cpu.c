/*
 * engine_cpu.c - the CPU engine: executes work units (quiver/engine.h)
 * synchronously inside submit(), on the worker pool, with the
 * per-encoding list scanners of cpu_int.h.
 *
 * Two ways to spread a unit over T workers; chosen per unit:
 *
 *   query-major  tasks are ranges of queries; a worker runs every probe of
 *                its queries, one (list, query) scan at a time, straight
 *                into the unit's heaps.  No two workers touch one heap, so
 *                there is no merge and no lock.  A list probed by many
 *                queries is read once per query.
 *   list-major   the CSR probes are inverted into list -> queries; tasks
 *                are lists (largest work first, so a big list does not end
 *                the run alone); a worker scans a list once for the whole
 *                group of queries probing it (the FLAT scanner hands the
 *                group to the batched kernel, which reads each vector once
 *                per register tile of queries), into its own private heaps.
 *                Worker 0 uses the unit's heaps; the others' heaps are
 *                merged into them at the end (O((T-1) nq k log k)).
 *
 * Rule: let P = total probes, L = distinct lists probed and share = P / L
 * (mean queries per probed list).  List-major when share >= 2 (the batched
 * kernel then reads each list for several queries at once) or when there
 * are fewer than 4 T queries (a single query or a handful could not keep
 * T workers busy: splitting its lists across workers is the only
 * parallelism); query-major otherwise.  With one worker the second clause
 * is moot and the rule only asks whether batching pays.
 *
 * Pieces.  When list-major has fewer lists than 4 T (a flat index of a
 * few segments, a single query probing a few IVF lists), whole lists
 * cannot keep T workers busy (nor balance lists of unequal sizes): a list of at least QV_CPU_SPLIT_MIN entries
 * is then scanned as up to 2 T pieces of a multiple of QV_CPU_SPLIT_ALIGN
 * entries (whole FLAT groups of 16, fast-scan blocks of 32, filter words
 * of 64).  A piece is a list of its own (codes, norms, ids and rows
 * offset; the same list_no) appended to an engine-owned copy of the
 * unit's list array, scanned for its parent's group of queries, into the
 * worker's private heaps like any list.  (siftsmall's one 10k segment, one
 * query: the unit ran on one of two cores.)  Not for PQ units yet: their
 * scanner keeps per-query state across a query's lists (tables, the
 * refine reservoir) that pieces have not been proven against.  O(pieces)
 * to set up; the engine-owned arrays grow like the others.
 *
 * PQ units skip the first clause: the PQ scanner has no batched kernel
 * (it builds one table and runs one scan per (query, list) either way),
 * so list-major buys nothing and costs the inversion, the private heaps
 * and their merge, and a query's table and candidate reservoir going
 * cold between its lists.  Measured on siftsmall (nlist 64, m 32x4, 100
 * queries, nprobe 16): query-major is 1.3x the QPS on one worker and
 * 2x on two.
 *
 * Memory.  Everything the execution needs lives in the engine and grows
 * only when a unit needs more than any before it: per-worker scanner
 * scratch (qv__cpu_scratch_<kind>(), 64-byte aligned), per-worker heaps
 * and their slots for list-major, and the inverted probe lists.  A unit
 * that fits what is there allocates nothing.  An allocation failure fails
 * the unit with QV_ENOMEM (its heaps untouched); the engine stays healthy.
 *
 * Completion.  Units complete inside submit(); their pointers wait in a
 * ring of QV_CPU_DONE_RING entries until poll() hands them back; submit
 * answers QV_EBUSY while the ring is full.  device_ns is the wall time of
 * the execution, transfer_ns 0.
 *
 * Thread-safety: one submitter at a time per engine (the scratch is the
 * engine's); different engines are independent.
 */
#include <string.h>

#include "cpu_int.h"
#include "quiver/alloc.h"
#include "quiver/errors.h"
#include "quiver/pool.h"
#include "quiver/pq.h"
#include "quiver/timeutil.h"
#include "quiver/topk.h"

#define QV_CPU_DONE_RING 256u
#define QV_CPU_MAX_DIM 65536u
#define QV_CPU_TASKS_PER_WORKER 4u
#define QV_CPU_SPLIT_MIN 4096u      /* entries: a list this long may be cut */
#define QV_CPU_SPLIT_ALIGN 64u      /* entries per piece: a multiple of this */

struct cpu_engine {
    struct qv_engine base;
    struct qv_pool *pool;
    unsigned nworkers;
    /* per-worker scanner scratch */
    void **scratch;
    size_t scratch_bytes;
    /* list-major: private heaps of workers 1..T-1 and their slots */
    struct qv_topk *wheaps;
    float *wdist;
    uint64_t *wids;
    size_t wheaps_cap;              /* heaps per worker */
    size_t wslots_cap;              /* slots per worker */
    /* list-major: inverted probes */
    uint32_t *loff;                 /* nlists + 1 */
    uint32_t *lcur;                 /* nlists (fill cursors, then order) */
    uint32_t *lq;                   /* P query indices grouped by list */
    size_t lists_cap;
    size_t probes_cap;
    /* pieces: the unit's lists followed by pieces of long ones, the list
     * each entry's queries come from, and the task order over them */
    struct qv_wu_list *vlists;
    uint32_t *vparent;
    uint32_t *vorder;
    size_t vcap;
    /* completed units waiting for poll */
    struct qv_work_unit *done[QV_CPU_DONE_RING];
    unsigned done_head, done_count;
};

static const qv_cpu_scan_fn scan_fns[QV_WU__COUNT] = {
    [QV_WU_FLAT] = qv__cpu_scan_flat,
    [QV_WU_SQ8] = qv__cpu_scan_sq8,
    [QV_WU_PQ] = qv__cpu_scan_pq,
    [QV_WU_F16] = qv__cpu_scan_f16,
};

static const qv_cpu_scratch_fn scratch_fns[QV_WU__COUNT] = {
    [QV_WU_FLAT] = qv__cpu_scratch_flat,
    [QV_WU_SQ8] = qv__cpu_scratch_sq8,
    [QV_WU_PQ] = qv__cpu_scratch_pq,
    [QV_WU_F16] = qv__cpu_scratch_f16,
};

/* ---- growth of engine-owned memory ---- */

static int grow_scratch(struct cpu_engine *E, size_t bytes)
{
    if (bytes <= E->scratch_bytes)
        return 0;
    bytes = (bytes + 63) & ~(size_t)63;
    for (unsigned w = 0; w < E->nworkers; w++) {
        void *p = qv_malloc(bytes, QV_MEM_KERNEL);
        if (!p)
            return QV_ENOMEM;       /* the old blocks stay, still valid */
        qv_free(E->scratch[w]);
        E->scratch[w] = p;
    }
    E->scratch_bytes = bytes;
    return 0;
}

static int grow_heaps(struct cpu_engine *E, size_t nq, size_t k)
{
    size_t others = E->nworkers - 1;
    if (!others)
        return 0;
    if (nq > E->wheaps_cap) {
        struct qv_topk *h = qv_malloc(others * nq * sizeof *h, QV_MEM_KERNEL);
        if (!h)
            return QV_ENOMEM;
        qv_free(E->wheaps);
        E->wheaps = h;
        E->wheaps_cap = nq;
    }
    if (nq * k > E->wslots_cap) {
        float *d = qv_malloc(others * nq * k * sizeof(float), QV_MEM_KERNEL);
        uint64_t *i = qv_malloc(others * nq * k * sizeof(uint64_t), QV_MEM_KERNEL);
        if (!d || !i) {
            qv_free(d);
            qv_free(i);
            return QV_ENOMEM;
        }
        qv_free(E->wdist);
        qv_free(E->wids);
        E->wdist = d;
        E->wids = i;
        E->wslots_cap = nq * k;
    }
    return 0;
}

static int grow_inverse(struct cpu_engine *E, size_t nlists, size_t probes)
{
    if (nlists > E->lists_cap) {
        uint32_t *o = qv_malloc((nlists + 1) * sizeof(uint32_t), QV_MEM_KERNEL);
        uint32_t *c = qv_malloc(nlists * sizeof(uint32_t), QV_MEM_KERNEL);
        if (!o || !c) {
            qv_free(o);
            qv_free(c);
            return QV_ENOMEM;
        }
        qv_free(E->loff);
        qv_free(E->lcur);
        E->loff = o;
        E->lcur = c;
        E->lists_cap = nlists;
    }
    if (probes > E->probes_cap) {
        uint32_t *q = qv_malloc(probes * sizeof(uint32_t), QV_MEM_KERNEL);
        if (!q)
            return QV_ENOMEM;
        qv_free(E->lq);
        E->lq = q;
        E->probes_cap = probes;
    }
    return 0;
}

/* ---- execution ---- */

struct cpu_run {
    const struct cpu_engine *E;
    const struct qv_work_unit *wu;
    qv_cpu_scan_fn scan;
    /* query-major */
    uint32_t q_per_task;
    /* list-major */
    const uint32_t *order;          /* task -> list (of wu->lists) */
    const uint32_t *parent;         /* list -> list whose queries it takes
                                       (NULL: itself) */
    uint32_t nq;
};

static void run_queries(void *arg, unsigned task, unsigned worker)
{
    const struct cpu_run *R = arg;
    const struct qv_work_unit *wu = R->wu;
    void *scratch = R->E->scratch[worker];
    uint32_t q0 = task * R->q_per_task;
    uint32_t q1 = q0 + R->q_per_task < wu->nq ? q0 + R->q_per_task : wu->nq;
    for (uint32_t q = q0; q < q1; q++)
        for (uint32_t p = wu->probe_offsets[q]; p < wu->probe_offsets[q + 1]; p++)
            R->scan(wu, wu->probe_lists[p], &q, 1, wu->heaps, scratch);
}

static void run_lists(void *arg, unsigned task, unsigned worker)
{
    const struct cpu_run *R = arg;
    const struct cpu_engine *E = R->E;
    uint32_t li = R->order[task];
    uint32_t pl = R->parent ? R->parent[li] : li;
    struct qv_topk *heaps = worker ? E->wheaps + (size_t)(worker - 1) * R->nq : R->wu->heaps;
    R->scan(R->wu, li, E->lq + E->loff[pl], E->loff[pl + 1] - E->loff[pl], heaps,
            E->scratch[worker]);
}

/* Sort list numbers by descending work (entries x queries), ties by list
 * number, so the biggest scans start first and the small ones fill the
 * gaps at the end.  Shell sort: in place, no allocation; O(L^1.3) for L
 * lists, small next to the scans. */
static void order_lists(uint32_t *order, uint32_t n, const struct qv_work_unit *wu,
                        const uint32_t *loff)
{
    static const uint32_t gaps[] = { 701, 301, 132, 57, 23, 10, 4, 1 };
    for (size_t gi = 0; gi < sizeof gaps / sizeof gaps[0]; gi++) {
        uint32_t gap = gaps[gi];
        for (uint32_t i = gap; i < n; i++) {
            uint32_t t = order[i];
            uint64_t wt = (uint64_t)wu->lists[t].n * (loff[t + 1] - loff[t]);
            uint32_t j = i;
            while (j >= gap) {
                uint32_t u = order[j - gap];
                uint64_t wu_ = (uint64_t)wu->lists[u].n * (loff[u + 1] - loff[u]);
                if (wu_ > wt || (wu_ == wt && u < t))
                    break;
                order[j] = u;
                j -= gap;
            }
            order[j] = t;
        }
    }
}

/* Byte offset of entry off (a multiple of QV_CPU_SPLIT_ALIGN) in a list's
 * codes, by the layout of the unit's kind (engine.h). */
static size_t codes_offset(const struct qv_work_unit *wu, uint32_t off)
{
    switch (wu->kind) {
    case QV_WU_FLAT:
        return (size_t)off * wu->dim * sizeof(float);
    case QV_WU_F16:
        return (size_t)off * wu->dim * sizeof(uint16_t);
    case QV_WU_PQ: {
        const struct qv_pq_params *pp = wu->params;
        if (pp->pq->nbits == 4)
            return qv_pq_fs_size(off, pp->pq->m);
        return (size_t)off * wu->code_size;
    }
    default:
        return (size_t)off * wu->code_size;
    }
}

/*
 * Cut the long lists among the ntasks of order[] into pieces (see
 * "Pieces").  Fills E->vlists (the unit's lists, then the pieces),
 * E->vparent and E->vorder; returns the number of tasks in E->vorder, or
 * 0 when nothing is cut (or no memory: then the lists run whole).
 */
static uint32_t cut_pieces(struct cpu_engine *E, const struct qv_work_unit *wu,
                           const uint32_t *order, uint32_t ntasks)
{
    const unsigned T = E->nworkers;
    uint32_t extra = 0;
    for (uint32_t t = 0; t < ntasks; t++)
        if (wu->lists[order[t]].n >= QV_CPU_SPLIT_MIN)
            extra += 2 * T;
    if (!extra)
        return 0;
    size_t need = (size_t)wu->nlists + extra;
    if (need > E->vcap) {
        struct qv_wu_list *v = qv_malloc(need * sizeof *v, QV_MEM_KERNEL);
        uint32_t *par = qv_malloc(need * sizeof *par, QV_MEM_KERNEL);
        uint32_t *ord = qv_malloc(need * sizeof *ord, QV_MEM_KERNEL);
        if (!v || !par || !ord) {
            qv_free(v);
            qv_free(par);
            qv_free(ord);
            return 0;
        }
        qv_free(E->vlists);
        qv_free(E->vparent);
        qv_free(E->vorder);
        E->vlists = v;
        E->vparent = par;
        E->vorder = ord;
        E->vcap = need;
    }
    memcpy(E->vlists, wu->lists, wu->nlists * sizeof *E->vlists);
    for (uint32_t l = 0; l < wu->nlists; l++)
        E->vparent[l] = l;
    uint32_t nv = wu->nlists, nt = 0;
    for (uint32_t t = 0; t < ntasks; t++) {
        uint32_t l = order[t];
        const struct qv_wu_list *L = &wu->lists[l];
        uint32_t pieces = L->n / QV_CPU_SPLIT_MIN;
        if (pieces > 2 * T)
            pieces = 2 * T;
        if (pieces < 2) {
            E->vorder[nt++] = l;
            continue;
        }
        uint32_t len = (L->n + pieces - 1) / pieces;
        len = (len + QV_CPU_SPLIT_ALIGN - 1) / QV_CPU_SPLIT_ALIGN * QV_CPU_SPLIT_ALIGN;
        for (uint32_t off = 0; off < L->n; off += len) {
            struct qv_wu_list *P = &E->vlists[nv];
            *P = *L;
            P->codes = (const char *)L->codes + codes_offset(wu, off);
            P->norms = L->norms ? L->norms + off : NULL;
            P->ids = L->ids + off;
            P->rows = L->rows ? L->rows + off : NULL;
            P->n = L->n - off < len ? L->n - off : len;
            E->vparent[nv] = l;
            E->vorder[nt++] = nv++;
        }
    }
    return nt;
}

static int execute(struct cpu_engine *E, struct qv_work_unit *wu)
{
    const uint32_t nq = wu->nq;
    const unsigned T = E->nworkers;
    const uint32_t P = wu->probe_offsets[nq] - wu->probe_offsets[0];
    if (P == 0)
        return 0;
    int rc = grow_scratch(E, scratch_fns[wu->kind](wu));
    if (rc)
        return rc;

    /* distinct lists probed, counted in the inverse's offsets */
    rc = grow_inverse(E, wu->nlists, P);
    if (rc)
        return rc;
    memset(E->loff, 0, (wu->nlists + 1) * sizeof(uint32_t));
    for (uint32_t p = wu->probe_offsets[0]; p < wu->probe_offsets[nq]; p++)
        E->loff[wu->probe_lists[p] + 1]++;
    uint32_t distinct = 0;
    for (uint32_t l = 0; l < wu->nlists; l++)
        distinct += E->loff[l + 1] != 0;
    int list_major = (wu->kind != QV_WU_PQ && P >= 2u * distinct) || (T > 1 && nq < 4u * T);

    struct cpu_run R = { .E = E, .wu = wu, .scan = scan_fns[wu->kind], .nq = nq };
    if (!list_major) {
        uint32_t tasks = T * QV_CPU_TASKS_PER_WORKER;
        if (tasks > nq)
            tasks = nq;
        R.q_per_task = (nq + tasks - 1) / tasks;
        qv_pool_run(E->pool, (nq + R.q_per_task - 1) / R.q_per_task, run_queries, &R);
        return 0;
    }

    const uint32_t k = wu->heaps[0].k;
    rc = grow_heaps(E, nq, k);
    if (rc)
        return rc;
    for (uint32_t l = 0; l < wu->nlists; l++)
        E->loff[l + 1] += E->loff[l];
    memcpy(E->lcur, E->loff, wu->nlists * sizeof(uint32_t));
    for (uint32_t q = 0; q < nq; q++)
        for (uint32_t p = wu->probe_offsets[q]; p < wu->probe_offsets[q + 1]; p++)
            E->lq[E->lcur[wu->probe_lists[p]]++] = q;
    /* lcur is free again: reuse it as the task order */
    uint32_t ntasks = 0;
    for (uint32_t l = 0; l < wu->nlists; l++)
        if (E->loff[l + 1] != E->loff[l])
            E->lcur[ntasks++] = l;
    if (T > 1)
        order_lists(E->lcur, ntasks, wu, E->loff);
    R.order = E->lcur;
    struct qv_work_unit vwu;
    if (T > 1 && ntasks < 4 * T && wu->kind != QV_WU_PQ) {
        uint32_t nt = cut_pieces(E, wu, E->lcur, ntasks);
        if (nt) {
            vwu = *wu;
            vwu.lists = E->vlists;
            R.wu = &vwu;
            R.order = E->vorder;
            R.parent = E->vparent;
            ntasks = nt;
        }
    }
    for (unsigned w = 1; w < T; w++)
        for (uint32_t q = 0; q < nq; q++) {
            size_t slot = ((size_t)(w - 1) * nq + q) * k;
            qv_topk_init(&E->wheaps[(size_t)(w - 1) * nq + q], k, E->wdist + slot,
                         E->wids + slot);
        }
    qv_pool_run(E->pool, ntasks, run_lists, &R);
    for (unsigned w = 1; w < T; w++)
        for (uint32_t q = 0; q < nq; q++)
            if (E->wheaps[(size_t)(w - 1) * nq + q].n)
                qv_topk_merge(&wu->heaps[q], &E->wheaps[(size_t)(w - 1) * nq + q]);
    return 0;
}

/* ---- ops ---- */

static void cpu_caps(const struct qv_engine *e, struct qv_engine_caps *out)
{
    (void)e;
    out->kinds = 1u << QV_WU_FLAT | 1u << QV_WU_SQ8 | 1u << QV_WU_PQ | 1u << QV_WU_F16;
    out->max_dim = QV_CPU_MAX_DIM;
    out->device_memory = 0;
}

static int cpu_submit(struct qv_engine *e, struct qv_work_unit *wu)
{
    struct cpu_engine *E = e->priv;
    if ((unsigned)wu->kind >= QV_WU__COUNT)
        return qv_seterr(QV_ENOTSUP, "cpu engine: work unit kind %d is not supported",
                         (int)wu->kind);
    if (wu->dim == 0 || wu->dim > QV_CPU_MAX_DIM)
        return qv_seterr(QV_ENOTSUP, "cpu engine: dim %u is outside 1..%u", wu->dim,
                         QV_CPU_MAX_DIM);
    if (wu->metric != QV_METRIC_L2 && wu->metric != QV_METRIC_IP)
        return qv_seterr(QV_ENOTSUP, "cpu engine: metric %d; units carry l2 or ip "
                         "(cosine is ip on normalised vectors)", (int)wu->metric);
    if (E->done_count == QV_CPU_DONE_RING)
        return qv_seterr(QV_EBUSY, "cpu engine: %u completed units not yet polled",
                         QV_CPU_DONE_RING);
    int64_t t0 = qv_now_ns();
    int rc = 0;
    if (wu->nq && (!wu->probe_offsets || !wu->heaps || !wu->queries))
        rc = qv_seterr(QV_EINVAL, "cpu engine: unit without probes, heaps or queries");
    else if (wu->nq && (rc = execute(E, wu)) != 0)
        qv_seterr(rc, "cpu engine: no memory for the scratch of a unit of %u queries, "
                  "dim %u", wu->nq, wu->dim);
    wu->status = rc;
    wu->device_ns = (uint64_t)(qv_now_ns() - t0);
    wu->transfer_ns = 0;
    E->done[(E->done_head + E->done_count) % QV_CPU_DONE_RING] = wu;
    E->done_count++;
    return 0;
}

static int cpu_poll(struct qv_engine *e, struct qv_work_unit **done, int max)
{
    struct cpu_engine *E = e->priv;
    int n = 0;
    while (n < max && E->done_count) {
        done[n++] = E->done[E->done_head];
        E->done_head = (E->done_head + 1) % QV_CPU_DONE_RING;
        E->done_count--;
    }
    return n;
}

static int cpu_health(const struct qv_engine *e)
{
    (void)e;
    return 0;                       /* the CPU cannot go away */
}

static void cpu_free(struct qv_engine *e)
{
    struct cpu_engine *E = e->priv;
    for (unsigned w = 0; w < E->nworkers; w++)
        qv_free(E->scratch[w]);
    qv_free(E->scratch);
    qv_free(E->wheaps);
    qv_free(E->wdist);
    qv_free(E->wids);
    qv_free(E->loff);
    qv_free(E->lcur);
    qv_free(E->lq);
    qv_free(E->vlists);
    qv_free(E->vparent);
    qv_free(E->vorder);
    qv_free(E);
}

static const struct qv_engine_ops cpu_ops = {
    .name = "cpu",
    .caps = cpu_caps,
    .submit = cpu_submit,
    .poll = cpu_poll,
    .health = cpu_health,
    .free = cpu_free,
};

struct qv_engine *qv_engine_cpu_create(struct qv_pool *pool)
{
    struct cpu_engine *E = qv_calloc(1, sizeof *E, QV_MEM_KERNEL);
    if (!E)
        goto fail;
    E->pool = pool;
    E->nworkers = qv_pool_threads(pool);
    E->scratch = qv_calloc(E->nworkers, sizeof *E->scratch, QV_MEM_KERNEL);
    if (!E->scratch)
        goto fail_scratch;
    E->base.ops = &cpu_ops;
    E->base.priv = E;
    return &E->base;

fail_scratch:
    qv_free(E);
fail:
    qv_seterr(QV_ENOMEM, "cpu engine: no memory");
    return NULL;
}

int qv_engine_run(struct qv_engine *e, struct qv_work_unit *wu)
{
    int rc = e->ops->submit(e, wu);
    if (rc)
        return rc;
    for (;;) {
        struct qv_work_unit *done[16];
        int n = e->ops->poll(e, done, 16);
        int found = 0;
        for (int i = 0; i < n; i++)
            found |= done[i] == wu;
        if (found)
            return wu->status;
        if (!found && e->ops->health(e))
            return e->ops->health(e);
        /* an asynchronous engine completes later: keep polling */
    }
}
