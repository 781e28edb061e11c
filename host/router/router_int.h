/*
 * router_int.h - private structures of the engine router (router.c,
 * calibrate.c).  The design is described at the top of router.c.
 */
#ifndef QUIVER_ROUTER_INT_H
#define QUIVER_ROUTER_INT_H

#include <stdint.h>

#include "quiver/engine.h"
#include "quiver/router.h"

#define QV_ROUTER_QTILE 64u         /* queries per list read (features) */
#define QV_ROUTER_RESIDENT_SLOTS 4096u  /* resident-list set per engine */
#define QV_ROUTER_TOMB ((const void *)1)

/* The features of a unit (or part), computed once per dispatch: see
 * "Features" in router.c. */
struct rt_shape {
    uint32_t kind, dim, nq;
    uint64_t probes;                /* (query, list) pairs */
    uint32_t lists;                 /* distinct lists probed */
    uint64_t pairs;                 /* (query, entry) pairs scanned */
    uint64_t list_bytes;            /* bytes of the distinct lists */
    uint64_t scanned;               /* bytes read: per list per query tile */
    uint64_t ops;                   /* distance operations */
    uint64_t query_bytes;           /* nq x dim x 4 */
    int exact;                      /* 0: per-list scratch missing, every
                                       probe counted as a distinct list */
};

struct rt_engine {
    char name[QV_ROUTER_NAME_MAX];
    char desc[QV_ROUTER_DESC_MAX];
    struct qv_engine *e;            /* borrowed */
    unsigned flags;
    struct qv_engine_caps caps;
    struct qv_router_params params[QV_WU__COUNT];
    enum qv_router_calib calib[QV_WU__COUNT];
    float ewma[QV_WU__COUNT][QV_ROUTER_BUCKETS];
    double backlog_ns;              /* predicted ns of parts in flight */
    uint32_t inflight;
    /* circuit breaker */
    enum qv_router_breaker breaker;
    uint32_t consecutive;           /* failures in a row */
    int64_t opened_at;
    int probe_out;                  /* half-open: the probe is in flight */
    /* lists assumed resident in device memory (device_memory != 0):
     * open addressing on the codes pointer, QV_ROUTER_TOMB = removed */
    const void **resident;
    uint32_t resident_n;
    struct qv_router_engine_stats st;
};

enum rt_part_state { PART_FREE = 0, PART_INFLIGHT, PART_QUEUED, PART_DONE };

struct rt_unit;

struct rt_part {
    struct qv_work_unit wu;         /* what the engine sees; user = this */
    struct rt_unit *unit;
    enum rt_part_state state;
    int engine;                     /* where it runs (INFLIGHT) */
    int prefer;                     /* split plan's engine, or -1 */
    uint32_t tried;                 /* engines that refused or failed it */
    int64_t t_submit, t_done;       /* t_done: SYNC engines, else 0 */
    double predicted;               /* backlog + service at submit */
    double service;                 /* corrected service (in backlog) */
    uint32_t bucket;                /* size class of the raw service */
    int probe;                      /* the breaker's half-open probe */
};

struct rt_unit {
    struct qv_work_unit *wu;        /* the caller's; NULL = free slot */
    int pin;                        /* engine index, or -1 */
    uint32_t nparts;
    uint32_t active;                /* parts INFLIGHT or QUEUED */
    int last_err;
    int failed;                     /* a part found no engine */
    int dirty;                      /* a part failed on a non-clean engine */
    uint32_t dirty_mask;            /* those engines */
    int heaps_fresh;                /* every heap was empty at submit */
    uint32_t reruns;
    uint64_t device_ns, transfer_ns;
    struct rt_part parts[QV_ROUTER_MAX_ENGINES];
    /* split scratch: CSR of the parts, grown on demand */
    uint32_t *offs;                 /* nparts x (nq + 1) */
    size_t offs_cap;
    uint32_t *plist;                /* probes, grouped by part */
    size_t plist_cap;
};

struct qv_router {
    struct qv_engine base;
    struct qv_router_opts o;
    char calibration_dir[512];
    struct rt_engine eng[QV_ROUTER_MAX_ENGINES];
    unsigned n;
    int pin;                        /* qv_router_pin, or -1 */
    /* unit slots and their free stack */
    struct rt_unit *units;
    uint32_t *free_units;
    uint32_t nfree;
    /* completed units waiting for poll: ring of max_units */
    struct qv_work_unit **done;
    uint32_t done_head, done_count;
    /* parts waiting for an engine (all busy): ring of max_units x 8;
     * every entry is a QUEUED part (cancelled ones are removed) */
    struct rt_part **queue;
    uint32_t q_head, q_count, q_cap;
    /* per-list scratch of the features and the split (nlists) */
    uint32_t *cnt;                  /* queries probing each list */
    uint32_t *distinct;             /* the distinct lists, in order */
    uint8_t *owner;                 /* split: part of each list */
    size_t lists_cap;
    /* stats */
    struct qv_router_stats st;
};

static inline int64_t qv__router_now(const struct qv_router *r)
{
    return r->o.clock(r->o.clock_arg);
}

/* Features of wu into *s; fills r->cnt / r->distinct for its lists (the
 * caller clears them with qv__router_shape_done).  Returns 0, or
 * QV_ENOMEM when the per-list scratch could not grow (then s holds an
 * approximation: every probe counted as a distinct list). */
int qv__router_shape(struct qv_router *r, const struct qv_work_unit *wu, struct rt_shape *s);
void qv__router_shape_done(struct qv_router *r, const struct rt_shape *s);

/* Uncorrected service time (ns) of shape s on engine E. */
double qv__router_service(const struct qv_router *r, const struct rt_engine *E,
                          const struct rt_shape *s);

/* Where the calibration cache lives (r->calibration_dir) and its file
 * name for E; "" when the cache is off. */
void qv__router_cache_path(const struct qv_router *r, const struct rt_engine *E,
                           char *buf, size_t len);

#endif
