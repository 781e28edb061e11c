/*
 * service_int.h - private structures of the query service (service.h,
 * whose header comment holds the design).  Three files share them:
 *   service.c          create/free, collections, submit, the dispatcher
 *   service_cost.c     the batcher's cost model
 *   service_metrics.c  registration, refresh at render, rendering
 *
 * Ownership and threads, field by field:
 *   [any]   read by any thread, written before publication (add_collection
 *           fills a collection, then publishes its pointer with release)
 *   [disp]  the dispatcher thread only (or anyone while it is parked)
 *   [mu]    guarded by svc->mu
 *   [add]   guarded by svc->add_mu
 *   [rm]    guarded by svc->rm_mu
 *   [atom]  atomics
 *
 * Lifetime of a struct svc_coll.  Published in the table by add, found
 * there without a lock by submit (and bump_epoch, epoch, stage_hist,
 * predict_ns), each inside a read section of the service's grace periods
 * (quiver/grace.h, the scheme the batcher's table uses too:
 * host/router/batcher.c "Removal and reclamation").  remove_collection
 * (under rm_mu) retires and drains it, replaces its table slot with a
 * tombstone, waits for a grace period (no read section can still hold
 * it), removes it from the batcher with the dispatcher parked (the
 * dispatcher, which looks collections up without a read section, is thus
 * between batches and holds none of it), takes it out of colls[] (under
 * add_mu, where stats reads them), unregisters its metrics and frees it.
 * Only rm_mu holders free collections, so retire and remove may use a
 * pointer they looked up under rm_mu without a read section.
 */
#ifndef QUIVER_SERVICE_INT_H
#define QUIVER_SERVICE_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "quiver/metrics.h"
#include "quiver/router.h"
#include "quiver/grace.h"
#include "quiver/service.h"

#define SVC_CACHELINE 64
#define SVC_CACHES 2                /* 0 result, 1 semantic */

/* The cost model of one collection [disp]. */
struct svc_model {
    enum qv_wu_kind kind;           /* the router parameters it uses */
    double rows;                    /* vectors (tombstones included) */
    double nlist;                   /* IVF*: lists; flat: 1 */
    double bpe;                     /* bytes per list entry */
    double opp;                     /* distance ops per (query, entry) */
    uint32_t p_default;             /* nprobe (IVF*) or ef (HNSW) */
    uint64_t shape_epoch;           /* epoch rows/nlist were read at */
    double corr;                    /* EWMA of observed / predicted */
    /* HNSW: cost(n) = a + b n, exponentially weighted least squares */
    double mn, mt, mnn, mnt;        /* weighted means of n, t, n^2, n t */
    uint64_t nobs;
    double a, b;                    /* current fit */
    double prior_a, prior_b;        /* before two sizes were seen */
};

struct svc_coll {
    uint64_t id;                                        /* [any] */
    struct qv_service_collection spec;                  /* [any] */
    char label[48];                                     /* collection="id" */
    int64_t budget[QV_BATCH_CLASSES];                   /* [any] */
    _Atomic uint64_t epoch;                             /* [atom] */
    _Atomic int retired;            /* submits refused (service.h,
                                       "Retiring and removing") [atom] */
    _Atomic uint64_t queued;        /* offered to the batcher, not yet
                                       completed           [atom] */
    int detached;                   /* the engine was taken off its IVF /
                                       IVF-PQ index (retire) [rm] */
    float *gather;                  /* max_batch x dim   [disp] */
    struct svc_model model;                             /* [disp] */
    uint32_t pf_interval;           /* prefetch 1 request in this many [disp] */
    uint32_t pf_skip;               /* requests to pass before the next [disp] */
    /* metrics: pointers [any], updates lock-free */
    struct qv_hist *stage[QV_SERVICE_STAGES];
    struct qv_hist *batch_queries;
    struct qv_counter *outcome[QV_SERVICE_OUTCOMES];
    struct qv_counter *hits[SVC_CACHES], *misses[SVC_CACHES];
    struct qv_counter *searches;
};

/* What the removed collections counted (qv_service_stats) [add]. */
struct svc_gone {
    uint64_t outcomes[QV_SERVICE_OUTCOMES];
    uint64_t hits[SVC_CACHES], misses[SVC_CACHES];
};

/* Engine parameters the cost model reads [disp]. */
struct svc_engines {
    unsigned n;                     /* 1 without a router */
    struct qv_router_params p[QV_ROUTER_MAX_ENGINES][QV_WU__COUNT];
    int64_t read_at;                /* when they were read */
};

/* Metrics refreshed at render [mu_render]. */
struct svc_gauges {
    char names[QV_ROUTER_MAX_ENGINES][QV_ROUTER_NAME_MAX];
    struct qv_counter *units[QV_ROUTER_MAX_ENGINES], *failures[QV_ROUTER_MAX_ENGINES];
    struct qv_gauge *breaker[QV_ROUTER_MAX_ENGINES], *util[QV_ROUTER_MAX_ENGINES];
    struct qv_gauge *share[QV_ROUTER_MAX_ENGINES];
    uint64_t last_units[QV_ROUTER_MAX_ENGINES], last_failures[QV_ROUTER_MAX_ENGINES];
    uint64_t last_observed[QV_ROUTER_MAX_ENGINES];
    int64_t last_at;
    struct qv_gauge *depth[QV_BATCH_CLASSES], *inflight[QV_BATCH_CLASSES];
    struct qv_counter *misses[QV_BATCH_CLASSES];
    uint64_t last_misses[QV_BATCH_CLASSES];
    struct qv_gauge *entries[SVC_CACHES], *bytes[SVC_CACHES];
    struct qv_counter *evictions[SVC_CACHES], *invalidations[SVC_CACHES];
    uint64_t last_evictions[SVC_CACHES], last_invalidations[SVC_CACHES];
};

struct qv_service {
    /* producers' read-mostly line: the dispatcher writes `sleeping` only
     * around an idle wait */
    _Alignas(SVC_CACHELINE) _Atomic int sleeping;       /* [atom] */
    _Atomic uint32_t wake_seq;      /* the futex word    [atom] */
    _Atomic int closing;                                /* [atom] */
    _Atomic int pause_flag;         /* mirror of pause_req > 0 [atom] */
    _Atomic int idle;               /* the dispatcher is in its idle futex
                                       wait and checks pause_flag before it
                                       does anything else [atom] */

    _Alignas(SVC_CACHELINE) struct qv_service_opts o;   /* [any] */
    struct qv_batcher *batcher;
    struct qv_result_cache *rcache; /* NULL: off */
    struct qv_semantic_cache *scache;   /* NULL: off */
    struct qv_engine *engine;       /* borrowed or NULL */
    struct qv_router *router;       /* borrowed or NULL */
    struct qv_metrics *metrics;
    int own_metrics;
    uint32_t max_batch;             /* the batcher's max_batch option */

    /* collections: open addressing, 2 x max_collections slots; a slot
     * is NULL, a live collection or SVC_TOMB (removed: probes go on) */
    uint32_t hmask;
    _Atomic(struct svc_coll *) *table;  /* written under add_mu [atom] */
    struct svc_coll **colls;        /* dense             [add] */
    uint32_t ncoll;                                     /* [add] */
    pthread_mutex_t add_mu;         /* serialises add_collection, the
                                       table's writes, colls[] and the
                                       batcher's add / remove */
    pthread_mutex_t rm_mu;          /* serialises retire and remove */
    struct svc_gone gone;                               /* [add] */

    /* dispatcher scratch [disp] */
    float *res_dist;                /* max_batch x max_k */
    uint64_t *res_ids;
    struct qv_service_request **grp;    /* max_batch */
    struct svc_engines eng;
    struct svc_coll *cost_last;     /* the cost callback's last lookup */

    /* thread control */
    pthread_t thread;
    int started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int pause_req;                                      /* [mu] */
    int parked;                                         /* [mu] */

    /* counters written by the dispatcher, read anywhere [atom] */
    _Atomic uint64_t n_batches, n_searches, n_searched;
    _Atomic uint64_t n_prefetch_calls, n_prefetch_started;

    /* invalid requests of unknown collections */
    struct qv_counter *unknown_invalid;
    pthread_mutex_t render_mu;
    struct svc_gauges g;                                /* [render_mu] */

    /* grace periods: a read section per submit, synchronize per remove
     * (quiver/grace.h) [atom] */
    struct qv_grace grace;
};

/* service.c */
struct svc_coll *qv__svc_lookup(const struct qv_service *svc, uint64_t id);

/* service_cost.c */
void qv__svc_engines_read(struct qv_service *svc, int64_t now);
int qv__svc_model_init(struct qv_service *svc, struct svc_coll *c);
void qv__svc_model_shape(struct svc_coll *c);
double qv__svc_model_cost(const struct qv_service *svc, const struct svc_coll *c,
                          uint32_t n, uint32_t p);
void qv__svc_model_observe(struct qv_service *svc, struct svc_coll *c, uint32_t n,
                           uint32_t p, double ns);
double qv__svc_cost_cb(void *arg, uint64_t coll, uint32_t n);

/* service_metrics.c */
int qv__svc_metrics_init(struct qv_service *svc);
int qv__svc_metrics_coll(struct qv_service *svc, struct svc_coll *c);
void qv__svc_metrics_coll_fini(struct qv_service *svc, struct svc_coll *c);
void qv__svc_hist_ns(struct qv_hist *h, int64_t ns);
uint64_t qv__svc_router_busy_ns(const struct qv_service *svc);

#endif
