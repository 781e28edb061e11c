/*
 * engine.h - the one interface for every place distance work can run.
 *
 * An engine executes work units.  A work unit is a batch of queries
 * against a set of lists: contiguous, 64-byte aligned blocks of encoded
 * vectors (an IVF inverted list, a range of flat segments), each with the
 * ids of its entries.  Which query scans which list is given in CSR form
 * (probe_offsets / probe_lists), so one unit carries a whole IVF batch:
 * probe selection happened on the CPU before; the engine does the list
 * scans and merges into per-query top-k heaps; the caller then sorts.
 * Lists are the unit an accelerator receives by DMA, which is why their
 * memory must stay put and aligned for the life of the unit.
 *
 * Encodings (enum qv_wu_kind) and the layout of codes in a list:
 *   QV_WU_FLAT  float32 in the blocked layout of dist.h (groups of 16,
 *               dimension-major); norms = |x|^2 per entry (L2).
 *   QV_WU_SQ8   uint8 codes, one per dimension, row-major, row stride
 *               `code_size` bytes; params -> struct qv_sq8_params.
 *   QV_WU_PQ    product-quantisation codes; layout and params defined by
 *               pq.h (4-bit fast-scan codes are packed in blocks of 32).
 *   QV_WU_F16   IEEE binary16 in the blocked layout of FLAT (half the
 *               bytes per entry: for memory-bound scans); norms = |x|^2
 *               of the float16 values, as float32 (L2).  Queries stay
 *               float32.
 *
 * Engines: "cpu" (host/engine/engine_cpu.c: synchronous, on the worker
 * pool), later "opencl", "fpga", "gpu".  Life cycle:
 *   submit(unit)  queue it; may run it at once (cpu).  The unit and all it
 *                 points to are borrowed until it completes.
 *   poll(...)     collect completed units (status, device_ns,
 *                 transfer_ns set), non-blocking.
 *   prefetch(...) optional: copy the lists of a unit that is coming into
 *                 device memory while it waits (qv_engine_prefetch).
 * A unit that fails (status < 0) leaves its heaps in an unspecified state
 * unless the engine says otherwise; the router re-dispatches from scratch.
 */
#ifndef QUIVER_ENGINE_H
#define QUIVER_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "quiver/dist.h"

struct qv_topk;
struct qv_pool;

enum qv_wu_kind {
    QV_WU_FLAT = 0,
    QV_WU_SQ8 = 1,
    QV_WU_PQ = 2,
    QV_WU_F16 = 3,
    QV_WU__COUNT
};

/* One contiguous list of encoded vectors. */
struct qv_wu_list {
    const void *codes;          /* entries, layout by kind (above) */
    const float *norms;         /* FLAT + L2: |x|^2 per entry; else NULL */
    const uint64_t *ids;        /* user id per entry */
    const uint32_t *rows;       /* row number per entry (filter lookup) */
    uint32_t n;                 /* entries */
    uint32_t list_no;           /* the index's list number (PQ: which
                                   coarse centroid, for residual tables) */
};

/* SQ8: x[d] ~= vmin[d] + code[d] * vdiff[d] / 255 */
struct qv_sq8_params {
    const float *vmin;          /* dim */
    const float *vdiff;         /* dim */
};

struct qv_work_unit {
    enum qv_wu_kind kind;
    enum qv_metric metric;      /* L2 or IP (cosine: IP on normalised) */
    uint32_t dim;
    uint32_t code_size;         /* bytes per entry for SQ8 / PQ */
    uint32_t nq;
    const float *queries;       /* nq x dim, row-major */
    const float *qnorms;        /* nq, |q|^2 (L2) */
    uint32_t nlists;
    const struct qv_wu_list *lists;
    const uint32_t *probe_offsets;  /* nq + 1 entries */
    const uint32_t *probe_lists;    /* indices into lists[] */
    const void *params;         /* kind-specific parameters */
    const uint64_t *filter;     /* row bitmap (bit set = eligible) or NULL */
    struct qv_topk *heaps;      /* nq heaps, results merged in */
    /* completion, set by the engine */
    int status;                 /* 0 or a negative QV_E* */
    uint64_t device_ns;         /* time spent scanning */
    uint64_t transfer_ns;       /* time spent moving data (0 on cpu) */
    void *user;                 /* caller's cookie */
};

struct qv_engine;

struct qv_engine_caps {
    uint32_t kinds;             /* bit (1 << kind) per supported encoding */
    uint32_t max_dim;
    uint64_t device_memory;     /* bytes; 0 = shares host memory */
};

struct qv_engine_ops {
    const char *name;
    void (*caps)(const struct qv_engine *e, struct qv_engine_caps *out);
    /* 0, QV_ENOTSUP (kind or dim not supported), QV_EBUSY (queue full),
     * QV_EUNAVAIL (engine unhealthy). */
    int (*submit)(struct qv_engine *e, struct qv_work_unit *wu);
    /* Up to max completed units into done[]; returns the count. */
    int (*poll)(struct qv_engine *e, struct qv_work_unit **done, int max);
    /* 0 when healthy, else the QV_E* that made it unhealthy. */
    int (*health)(const struct qv_engine *e);
    void (*free)(struct qv_engine *e);
    /* Optional (NULL: the engine keeps no copies).  Drop any copy the
     * engine keeps of the host memory starting at `host` (a list's codes
     * or norms, an index table), because its owner is about to free or
     * rewrite it.  Units in flight that use it are not disturbed. */
    void (*forget)(struct qv_engine *e, const void *host);
    /* Optional (NULL: nothing to prefetch).  See qv_engine_prefetch. */
    int (*prefetch)(struct qv_engine *e, const struct qv_work_unit *wu);
};

struct qv_engine {
    const struct qv_engine_ops *ops;
    void *priv;
};

/* The CPU engine: executes units synchronously in submit() on pool
 * (borrowed; NULL = the caller's thread), parallel over queries or over
 * lists, whichever the unit's shape favours.  Completion is immediate and
 * poll() hands the unit back.  Returns NULL + qv_errno on ENOMEM. */
struct qv_engine *qv_engine_cpu_create(struct qv_pool *pool);

/* Convenience: submit then poll until this unit is done.  0 or the
 * unit's status / submit's error. */
int qv_engine_run(struct qv_engine *e, struct qv_work_unit *wu);

/*
 * The duty of an index whose lists an engine scans: call this for a
 * list's codes and norms (and any table it passed in params) before it
 * frees that memory or changes its contents in place (an add into a
 * partly filled block keeps the pointer and even the size).  Engines
 * that copy lists to device memory key their copies by host pointer and
 * would otherwise serve the old contents.  NULL e or host: nothing.
 */
static inline void qv_engine_forget(struct qv_engine *e, const void *host)
{
    if (e && host && e->ops->forget)
        e->ops->forget(e, host);
}

/*
 * Predictive prefetch: start making the lists of a unit that is coming
 * resident in the engine's device memory, so that the unit, when it is
 * submitted, moves no list bytes.  A hint: the result never decides the
 * fate of a query, and callers may ignore it.
 *
 * wu describes the lists as the unit will carry them: kind, metric, dim,
 * code_size, params (SQ8, PQ: for the sizes of codes) and lists[0 ..
 * nlists), every list to make resident, each once (an index passes the
 * distinct lists its probes name, not all of its lists).  Optionally nq
 * with probe_offsets / probe_lists (indices into lists[]): the queries
 * expected to scan them, which the router's cost model reads to choose
 * where to prefetch (no probes: one query over every list).  queries,
 * qnorms, filter and heaps are not read and may be NULL.  wu and its
 * arrays are read during the call only; the memory of the lists (codes,
 * norms) is held to the same rule as for units: it must not change until
 * the engine was told to forget it (qv_engine_forget above).
 *
 * Asynchronous and cheap: the engine queues the copies and returns; it
 * never waits for them.  A unit that needs a list whose copy is still in
 * flight waits for that copy (it does not copy again); a list forgotten
 * after a prefetch is never served stale (forget of a list whose copy is
 * in flight waits for the copy, which reads the host memory).  Engines
 * without device memory (cpu, an OpenCL device using host memory in
 * place) have nothing to do.
 *
 * Returns the number of lists whose copy this call started (>= 0; 0 when
 * every list was resident or on its way already, or the engine keeps no
 * copies), or a negative QV_E* when it declined at least one list, with a
 * message: QV_EBUSY (its copy queue or ring is full), QV_ENOSPC (its
 * device memory budget cannot take the list without evicting lists in
 * use), QV_ENOTSUP (a kind or dim it does not scan), QV_EUNAVAIL
 * (unhealthy), QV_ENOMEM, QV_EIO (a device error, which the next unit
 * will meet too).  Lists before the declined one may have been
 * started; they are resident afterwards like any other.  NULL e or no
 * prefetch op: 0.  Same thread rules as submit.
 */
static inline int qv_engine_prefetch(struct qv_engine *e, const struct qv_work_unit *wu)
{
    if (!e || !wu || !e->ops->prefetch)
        return 0;
    return e->ops->prefetch(e, wu);
}

static inline void qv_engine_free(struct qv_engine *e)
{
    if (e)
        e->ops->free(e);
}

#endif
