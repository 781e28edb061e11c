/*
 * router.h - the engine router: one engine (engine.h) that sends each
 * work unit to whichever of its registered engines is predicted to
 * finish it first, splits big units over several engines, re-dispatches
 * failed units and stops using an engine that keeps failing.
 *
 * Indexes use it unchanged: qv_ivf_set_engine(ix, qv_router_engine(r)),
 * qv_flat_search_engine(f, qv_router_engine(r), ...),
 * qv_ivfpq_set_engine(...).  The design (cost model, calibration, split,
 * fallback, circuit breaker, the heap invariant) is described at the top
 * of host/router/router.c.  What a caller needs:
 *
 *   - Registry: up to QV_ROUTER_MAX_ENGINES engines, each borrowed (it
 *     must outlive the router, and while registered it is the router's
 *     alone: nothing else may submit to or poll it).
 *   - Cost model: per engine and per kind, struct qv_router_params; the
 *     predicted completion time of a unit on an engine is
 *       backlog + ewma x (overhead + link_bytes / link_Bps
 *                         + max(scanned_bytes / mem_Bps, ops / flops))
 *     with the unit's features defined in router.c.  Parameters come
 *     from qv_router_calibrate (measured, or cached on disk per host and
 *     engine), else from qv_router_set_params, else generic defaults.
 *   - Dispatch: the plain submit (engine.h ops) picks the earliest
 *     predicted completion among healthy engines whose breaker lets it
 *     through and that accept the unit; qv_router_submit_pinned() and
 *     qv_router_pin() force one engine.
 *   - Prefetch (qv_engine_prefetch on the router's engine): forwarded to
 *     the engine dispatch would pick for the unit now, when it has device
 *     memory; the lists are then assumed resident there (the model stops
 *     charging their link bytes).  A pinned router prefetches to its pin.
 *   - Completion: poll() hands every submitted unit back exactly once,
 *     with status 0 (its heaps hold the results) or the last error of the
 *     last engine that could not complete it (heaps unspecified).
 *     device_ns and transfer_ns are the sums over its parts and retries.
 *
 * Thread-safety: one thread at a time per router (submit, poll, forget,
 * prefetch and every function below).  That thread is also the only one
 * that touches a unit's heaps while it is in flight (see router.c).
 */
#ifndef QUIVER_ROUTER_H
#define QUIVER_ROUTER_H

#include <stddef.h>
#include <stdint.h>

#include "quiver/engine.h"

struct qv_config;
struct qv_router;

#define QV_ROUTER_MAX_ENGINES 8u
#define QV_ROUTER_NAME_MAX 32u      /* engine names, NUL included */
#define QV_ROUTER_DESC_MAX 256u     /* engine descriptions, NUL included */
#define QV_ROUTER_BUCKETS 40u       /* size classes: log2(predicted ns) */

/* Flags of qv_router_add(). */
#define QV_ROUTER_CLEAN_FAIL 0x1u   /* a unit this engine fails (status < 0)
                                       leaves its heaps untouched, so only
                                       the failed part is re-run (cpu,
                                       opencl and fpga all merge on success
                                       only).  Without it, a failure makes
                                       the router re-run the whole unit
                                       from freshly initialised heaps. */
#define QV_ROUTER_SYNC 0x2u         /* the engine completes units inside
                                       submit() (cpu): parts for it are
                                       submitted after those for
                                       asynchronous engines, and its
                                       observed time is submit()'s. */

#define QV_ROUTER_HOST_CORES 0x4u   /* the engine computes on this host's
                                       CPU cores (the cpu engine, an OpenCL
                                       CPU device such as POCL, a simulated
                                       card): engines with this flag take
                                       cores from each other, so a split
                                       uses at most one of them (on a
                                       2-vCPU host, splitting IVF over cpu,
                                       POCL and the simulated card ran at
                                       a quarter of cpu alone). */

/* The engines qv_router_parse_engines() knows, as bits. */
#define QV_ROUTER_USE_CPU 0x1u
#define QV_ROUTER_USE_OPENCL 0x2u
#define QV_ROUTER_USE_FPGA 0x4u

/*
 * Cost parameters of one engine for one kind of unit.  All must be > 0
 * (finite), except overhead_ns >= 0.  link_Bps is used only for engines
 * with device memory (caps.device_memory != 0).
 */
struct qv_router_params {
    double overhead_ns;             /* fixed cost of a unit (launch, merge) */
    double link_Bps;                /* host -> device bytes per second */
    double mem_Bps;                 /* bytes scanned per second */
    double flops;                   /* distance operations per second */
};

struct qv_router_opts {
    int calibrate;                  /* 1: qv_router_calibrate() measures
                                       (or loads cached) parameters; 0: it
                                       does nothing.  Default 1. */
    const char *calibration_dir;    /* NULL or "" or "auto" =
                                       $XDG_CACHE_HOME/quiver/router, else
                                       $HOME/.cache/quiver/router, else
                                       /var/cache/quiver/router; "off" =
                                       no cache.  Borrowed. */
    double ewma_alpha;              /* 0..1, default 0.2 (0: no online
                                       correction) */
    uint32_t breaker_failures;      /* consecutive failures that open an
                                       engine's breaker, >= 1; default 3 */
    uint32_t breaker_cooldown_ms;   /* open -> half-open after this; >= 1;
                                       default 1000 */
    int split;                      /* 1 (default): split big units */
    uint64_t split_min_ns;          /* never split a unit predicted below
                                       this on its best engine; 200000 */
    uint32_t max_units;             /* units in flight in the router (not
                                       yet handed back by poll); 1..65536,
                                       default 256 */
    /* Clock for time stamps and the breaker (tests); NULL = qv_now_ns. */
    int64_t (*clock)(void *arg);
    void *clock_arg;
};

/* Defaults (above).  Cannot fail. */
void qv_router_opts_default(struct qv_router_opts *o);

/* Fill o from the [router] section of cfg (calibrate, calibration_dir,
 * ewma_alpha, breaker_failures, breaker_cooldown_ms, split, split_min_ns;
 * `engines` is read by qv_router_parse_engines).  Strings point into cfg,
 * which must outlive o.  Returns 0 (values were validated at load). */
int qv_router_opts_from_config(const struct qv_config *cfg, struct qv_router_opts *o);

/* Parse an engines list ("cpu,opencl,fpga": names separated by commas,
 * blanks ignored) into *mask (QV_ROUTER_USE_*).  Returns 0, or
 * QV_ECONFIG with a message naming the bad name and the choices (an
 * unknown name, an empty list).  Cannot fail otherwise. */
int qv_router_parse_engines(const char *list, unsigned *mask);

/* Create an empty router per o (NULL = defaults).  Returns NULL with
 * qv_errno QV_EINVAL (a value outside the ranges above; message names
 * it) or QV_ENOMEM.  All memory of the dispatch path (unit slots, part
 * records, the retry queue, the completion ring, resident-list sets) is
 * allocated here; see qv_router_reserve for split scratch. */
struct qv_router *qv_router_create(const struct qv_router_opts *o);

/* The router as an engine (ops: caps = union of the engines' kinds and
 * largest max_dim, device_memory 0; health = 0 while any registered
 * engine is healthy, else QV_EUNAVAIL; forget = forwarded to every
 * engine; prefetch = forwarded to the engine dispatch would choose for
 * the unit (pin included) when it has device memory and a prefetch op,
 * returning that engine's result, else 0 (QV_EINVAL for a unit of
 * unknown kind or without lists[]); free = qv_router_free).  Never NULL
 * for a router. */
struct qv_engine *qv_router_engine(struct qv_router *r);

/* Free the router (not its engines: they are borrowed).  Units still in
 * flight are abandoned: call only when poll() has handed every unit back.
 * qv_router_free(NULL) is a no-op. */
void qv_router_free(struct qv_router *r);

/*
 * qv_router_add - register engine e (borrowed) under name (1 to
 * QV_ROUTER_NAME_MAX - 1 characters, copied) with flags QV_ROUTER_*.
 * Its caps are read now; its parameters start at the generic defaults
 * (overhead 20 us, link 10 GB/s, memory 10 GB/s, 20 Gflop/s) until
 * calibrated or set.  Its description (the calibration cache key) starts
 * as the name.  Returns 0, QV_EINVAL (NULL e, bad name, unknown flag),
 * QV_EEXIST (name taken), QV_ENOSPC (QV_ROUTER_MAX_ENGINES registered).
 * O(1).
 */
int qv_router_add(struct qv_router *r, const char *name, struct qv_engine *e,
                  unsigned flags);

/* Describe engine `name` for the calibration cache key (device, driver,
 * firmware, thread count: anything that changes its speed), e.g. the
 * OpenCL device and driver from qv_engine_opencl_info.  desc is copied
 * (truncated at QV_ROUTER_DESC_MAX - 1).  Returns 0, QV_ENOENT. */
int qv_router_set_desc(struct qv_router *r, const char *name, const char *desc);

/* Set (inject) the cost parameters of engine `name` for units of kind:
 * calibration then leaves that (engine, kind) alone.  Returns 0,
 * QV_ENOENT (no such engine), QV_EINVAL (kind out of range, a parameter
 * not finite or not > 0, overhead_ns < 0).  Resets that kind's online
 * correction factors to 1. */
int qv_router_set_params(struct qv_router *r, const char *name, enum qv_wu_kind kind,
                         const struct qv_router_params *p);

/* Read them back.  Returns 0, QV_ENOENT, QV_EINVAL (kind). */
int qv_router_get_params(const struct qv_router *r, const char *name, enum qv_wu_kind kind,
                         struct qv_router_params *out);

/*
 * qv_router_calibrate - for each registered engine, load its parameters
 * from the calibration cache (file <dir>/<host>-<name>.json, key = host
 * name + engine name + description + format version) or, on a miss, a
 * stale or a corrupt file (a warning is logged), measure them with a
 * few synthetic units per kind (FLAT, F16, SQ8; PQ takes SQ8's) and
 * rewrite the file.  Kinds set with qv_router_set_params are skipped.
 * Under about 2 s for three engines; an engine that fails a synthetic
 * unit keeps its defaults (warning).  A cache that cannot be written is
 * a warning.  With opts.calibrate = 0: does nothing, returns 0.  Call
 * with no unit in flight.  Returns 0 or QV_ENOMEM.
 */
int qv_router_calibrate(struct qv_router *r);

/* Pin every later plain submit to engine `name` (NULL: back to automatic
 * dispatch).  Returns 0, QV_ENOENT (the pin is then unchanged). */
int qv_router_pin(struct qv_router *r, const char *name);

/*
 * qv_router_submit_pinned - submit wu to engine `name` only (no split, no
 * fallback: a refusal or failure completes the unit with that error; the
 * breaker is ignored, health is not: an unhealthy engine completes it
 * with QV_EUNAVAIL).  name NULL = the plain (automatic) submit.  The unit
 * is borrowed until poll() hands it back.  Returns 0, QV_ENOENT (no such
 * engine), QV_EINVAL (a unit without queries, probes or heaps, a kind out
 * of range), QV_EBUSY (max_units units not yet handed back).
 */
int qv_router_submit_pinned(struct qv_router *r, struct qv_work_unit *wu, const char *name);

/* What the cost model predicts for a unit on one engine. */
struct qv_router_prediction {
    char engine[QV_ROUTER_NAME_MAX];
    double completion_ns;           /* backlog + corrected service time */
    double service_ns;              /* uncorrected: overhead + link + scan */
    double link_bytes;              /* bytes charged to the link: 0 on
                                       shared memory, else the queries and
                                       the lists not assumed resident */
};

/*
 * qv_router_predict - the prediction dispatch would make for wu on engine
 * `name` (NULL: on the engine dispatch would pick now, pin included;
 * health and breaker are not consulted when a name is given).  wu as for
 * a prefetch (engine.h): probes optional (without them, one query over
 * every list); queries and heaps are not read.  For tests, benchmarks and
 * logs.  Returns 0, QV_ENOENT (no such engine; NULL name and no healthy
 * engine takes the unit), QV_EINVAL (unknown kind, lists[] missing, NULL
 * out).  O(probes + lists x engines); changes nothing but the per-list
 * scratch (grown like a dispatch's).
 */
int qv_router_predict(struct qv_router *r, const char *name, const struct qv_work_unit *wu,
                      struct qv_router_prediction *out);

/*
 * qv_router_reserve - grow the split scratch so that units of up to nq
 * queries, probes (query, list) pairs and nlists lists split without
 * allocating.  Optional: a split that would need more grows it on the
 * spot (the first such unit pays the allocation), and where that fails
 * the unit is simply not split.  Returns 0 or QV_ENOMEM.
 */
int qv_router_reserve(struct qv_router *r, uint32_t nq, uint64_t probes, uint32_t nlists);

enum qv_router_breaker {
    QV_ROUTER_BREAKER_CLOSED = 0,   /* units flow */
    QV_ROUTER_BREAKER_OPEN,         /* no units until the cooldown ends */
    QV_ROUTER_BREAKER_HALF_OPEN,    /* one probe unit allowed */
};

enum qv_router_calib {
    QV_ROUTER_CALIB_DEFAULT = 0,    /* generic defaults */
    QV_ROUTER_CALIB_MEASURED,       /* measured by qv_router_calibrate */
    QV_ROUTER_CALIB_CACHED,         /* loaded from the calibration cache */
    QV_ROUTER_CALIB_INJECTED,       /* qv_router_set_params */
};

struct qv_router_engine_stats {
    char name[QV_ROUTER_NAME_MAX];
    uint64_t units;                 /* parts completed OK here (an unsplit
                                       unit is one part) */
    uint64_t split_parts;           /* of those, parts of split units */
    uint64_t failures;              /* completions with status < 0, and
                                       submit errors other than ENOTSUP /
                                       EBUSY */
    uint64_t refusals;              /* submits answered ENOTSUP or EBUSY */
    uint64_t redispatches;          /* parts failed here and sent on */
    uint64_t breaker_opens;         /* closed/half-open -> open */
    enum qv_router_breaker breaker;
    uint64_t predicted_ns;          /* sum over OK completions */
    uint64_t observed_ns;           /* sum over OK completions */
    uint64_t prefetches;            /* prefetch calls forwarded here */
    uint64_t prefetch_lists;        /* lists in those calls */
    uint64_t prefetch_declined;     /* of those calls, declined (< 0) */
    enum qv_router_calib calib[QV_WU__COUNT];
    struct qv_router_params params[QV_WU__COUNT];
    float ewma[QV_WU__COUNT][QV_ROUTER_BUCKETS];  /* correction factors */
};

struct qv_router_stats {
    unsigned nengines;
    uint64_t submitted;             /* units accepted by submit */
    uint64_t completed;             /* units handed back by poll */
    uint64_t failed;                /* of those, with status < 0 */
    uint64_t split;                 /* units split over several engines */
    uint64_t reruns;                /* units re-run whole from clean heaps */
    uint64_t queued;                /* parts that waited (every engine
                                       busy) in the router's queue */
    uint64_t prefetch_calls;        /* prefetches asked of the router */
    uint64_t prefetch_kept;         /* of those, not forwarded: the best
                                       engine shares host memory, has no
                                       prefetch op, or none takes the unit */
    uint64_t calibrate_ns;          /* time of the last calibration */
    int calib_cache_hits;           /* engines loaded from the cache then */
    struct qv_router_engine_stats engine[QV_ROUTER_MAX_ENGINES];
};

/* Copy the counters (since create) into *out.  Cannot fail.  O(engines). */
void qv_router_stats(const struct qv_router *r, struct qv_router_stats *out);

/* One line per engine for logs: name, breaker, units, failures, the FLAT
 * parameters and their source.  Writes at most len bytes (NUL included)
 * and returns the length it needed, like snprintf. */
int qv_router_describe(const struct qv_router *r, char *buf, size_t len);

#endif
