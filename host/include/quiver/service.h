/*
 * service.h - the node's query path: collections, caches, the dynamic
 * batcher, one dispatcher thread that searches the indexes through the
 * engine router, and the metrics of every stage.  The daemon's transports
 * (kernel UDP/TCP, later DPDK) parse a query into a struct
 * qv_service_request and hand it to qv_service_submit(); the service calls
 * the request's `done` callback once with the answer.
 *
 *   producers (any threads)            dispatcher thread (one)
 *   -----------------------            -----------------------
 *   submit: validate                   poll the batcher
 *           result cache  --hit-->     per batch: stamp, expire, group
 *           semantic cache --hit-->      per group: gather, ONE index
 *           offer to the batcher           search, scatter, cache fill,
 *           wake the dispatcher            complete (callback)
 *             if it sleeps             done(batch); sleep until the
 *                                      batcher's next flush or a wake
 *
 * Decisions, and why
 * ------------------
 * Collections.  A collection id names one borrowed index (flat, IVF,
 * IVF-PQ or HNSW: struct qv_service_index, a tagged pointer) with its
 * dim, metric and default search parameters.  Flat, IVF and IVF-PQ
 * search through the service's engine (normally the router's:
 * qv_router_engine; NULL = the indexes' own CPU paths); IVF and IVF-PQ
 * get it with qv_*_set_engine when registered (and NULL again at
 * qv_service_free, which tells the engine to forget their lists), flat
 * per search through qv_flat_search_engine (flat has no detach: an engine
 * given to the service must outlive its flat indexes).  HNSW walks its
 * graph on the CPU.  While registered, an index is searched by the
 * dispatcher only; the caller changes it only inside qv_service_pause() /
 * qv_service_resume() (the dispatcher is then parked between batches),
 * then calls qv_service_bump_epoch().
 *
 * Custom collections.  A fifth type, QV_SERVICE_CUSTOM, is a search
 * callback instead of an index: an index made of several (the node's
 * segmented collections, host/server/node.c, search a growing flat
 * segment and sealed IVF / HNSW segments and merge).  The service treats
 * it like the others (validation, caches, batching, groups, metrics) with
 * three differences: the callback gets the request's filter TEXT, not a
 * bitmap (it has no single row space: each segment evaluates the text
 * against its own rows), so a custom request passes filter_text alone
 * and requests group by equal text; p1 is the resolved ef when the
 * collection was registered with ef != 0 (raised to k, as for HNSW), else
 * the resolved nprobe (0 when both defaults are 0); and its cost model is
 * the fitted a + b n of HNSW (service_cost.c), since the service cannot
 * count its work.  The callback and the optional prefetch run on the
 * dispatcher thread only, under the same rules as an index search (the
 * owner changes what they read only while the service is paused).
 *
 * Retiring and removing.  qv_service_remove_collection() ends a
 * collection for good: submits for it are refused (QV_ENOENT) from then
 * on, the requests already accepted are searched as usual (when their
 * batch flushes: at once when the dispatcher is idle, at the latest by
 * their deadlines, so a removal may wait up to the class's budget), and
 * once the last of them has completed the collection is unlinked from
 * the service's table and, after a grace period, from the batcher (its
 * queues freed), its metric series are unregistered (/metrics no longer
 * shows them; qv_service_stats keeps their counts) and its record is
 * freed.  Then its id is free: it counts no more against [batcher]
 * max_collections, which bounds the collections registered at one time,
 * and it may be added again.  The service never touches the index or
 * callback again, and its owner may free it.  qv_service_retire_collection()
 * is the first half alone: refuse, drain, take the engine off an IVF /
 * IVF-PQ index (the index may then be freed), but keep the id registered
 * (QV_EEXIST to a second add, it counts against max_collections) until a
 * remove or qv_service_free.  (Polling every queue ahead, as free does,
 * would flush other collections' batches early and count them as
 * deadline misses.)
 *   Draining: a submit counts itself in the collection's `queued` before
 * it checks `retired` and offers, the retirer sets `retired` before it
 * waits for `queued` to reach 0 (both seq_cst: either the submit sees the
 * flag and backs out, or the retirer waits for its request), so once the
 * wait ends no submit will offer to the collection again.
 *   Freeing: submit finds the collection in a lock-free table and uses it
 * (the flag, the counters, an inline cache hit's completion) with no
 * lock, so a submitter may hold the pointer between its lookup and its
 * check of `retired`, or while it backs out.  Every such use is inside a
 * read section of the service's grace periods (the batcher's scheme,
 * host/router/batcher.c "Removal and reclamation": two atomic increments
 * on a per-thread shard, no lock, no allocation).  Removal replaces the
 * table slot with a tombstone (lookups skip it), waits until every read
 * section that might have found the collection has ended, then pauses
 * the dispatcher (which looks collections up only for its own batches:
 * parked between batches, it holds none of a drained collection) to
 * remove it from the batcher, and frees it.  The lifetime rules per field
 * are in host/service/service_int.h.
 *
 * Requests are the caller's memory (no allocation per query): the query
 * vector, the filter bitmap and the result arrays are borrowed until the
 * callback.  submit() refuses (returns < 0, no callback) or accepts
 * (returns 0; `done` runs exactly once, later or already).  `done` runs
 *   - inline, inside submit(), on the submitter's thread, for a cache hit
 *     (flags CACHED, and APPROXIMATE for a near-duplicate);
 *   - else on the dispatcher thread, after the search (status 0 or the
 *     search's error), or without a search when the request's deadline
 *     passed before its group was searched (QV_ETIMEDOUT).
 * After `done` starts the service never touches the request again, so
 * the callback may free or reuse it.  A callback must be short (it delays
 * every query behind it, and an inline one delays a removal's grace
 * period) and must not call qv_service_pause, resume, add_collection,
 * retire_collection, remove_collection, render_metrics or free (they wait
 * for the dispatcher or for the submit that runs the callback).
 *
 * Caches.  The exact result cache is keyed by (collection, write epoch,
 * query bytes, k, filter text, hash of the resolved nprobe/ef/refine);
 * the semantic cache is asked only when the request gives a threshold
 * (distance under the collection's metric).  A request with a filter
 * bitmap but no filter text has no key and bypasses both.  Results are
 * inserted by the dispatcher under the epoch read just before the
 * search, so a write made (under pause) before the search can never be
 * hidden by an older answer; bump_epoch also invalidates the collection's
 * entries to reclaim their memory at once.
 *
 * Batches.  The batcher (batcher.h) queues per (collection, class); the
 * service's cost callback predicts a batch's search time (below) and its
 * arrival hook prefetches each waiting request's lists into the memory of
 * the engine the router would choose (svc_prefetch in
 * host/service/service.c, backed off where it copies nothing).  A batch's requests are stamped (queue wait),
 * those past their deadline completed with QV_ETIMEDOUT, the rest grouped
 * by equal (k, resolved nprobe or ef, refine, filter bitmap) and each
 * group run as ONE index search over its gathered queries (a gather
 * buffer of max_batch x dim floats per collection and one result buffer
 * of max_batch x max_k pairs, allocated up front).  Expiry is checked
 * again before each group, since groups run one after another.
 *
 * Cost model (host/service/service_cost.c).  Flat, IVF, IVF-PQ: the
 * router's features for a batch of n (batcher.h) under each engine's
 * qv_router_params for the collection's kind (qv_router_get_params via
 * qv_router_stats, re-read every second by the dispatcher; without a
 * router, opts.model), the minimum over engines (the router sends a unit
 * to the earliest), times a per-collection correction: an EWMA (weight
 * cost_alpha) of observed / predicted group search time, as the router
 * corrects its own.  HNSW: cost(n) = a + b n fitted by exponentially
 * weighted least squares over observed group searches (before two sizes
 * are seen, a prior from ef and dim scaled to the observed mean).  Both
 * are O(engines) per call and non-decreasing in n, as the batcher needs.
 *
 * Threads and waking.  The router is single-threaded (router.h), so one
 * dispatcher thread runs every search, and also owns the batcher's
 * consumer side.  When no batch is ready it sleeps on a futex with a
 * timeout at qv_batcher_next_flush() (at most 100 ms; its timer slack is
 * set to 1 ns).  A producer wakes it only if it is asleep: the
 * dispatcher sets `sleeping`, fences, polls once more, then waits on a
 * wake sequence number read before that poll; a producer publishes its
 * query (the batcher's ring), fences, and if it reads `sleeping` set
 * claims it (exchange to 0) and bumps the sequence + FUTEX_WAKE.  Either
 * the dispatcher's second poll sees the query or the producer sees the
 * flag (Dekker, both fences seq_cst), and a wake between the read of the
 * sequence and the wait makes the wait return at once.  So a producer
 * pays one fence and one load on a read-mostly line, plus one syscall
 * only when the dispatcher was idle.
 *
 * Pause.  qv_service_pause() raises a flag, wakes the dispatcher and
 * waits (mutex + condition variable, the slow path) until it is parked
 * between batches; a dispatcher asleep in its idle wait is already as
 * good as parked (it checks the flag first when it wakes), so then the
 * pause neither wakes it nor waits.  qv_service_resume() lets it go.  Pauses nest.  Used
 * for index writes, add_collection (the batcher's registration is a
 * consumer-side call) and for reading the router's and the batcher's
 * counters at render time; opts.start_paused starts parked (collections
 * loaded before serving; tests that need a full queue).
 *
 * Shutdown.  qv_service_free() refuses new requests (QV_EUNAVAIL), lifts
 * any pause, and the dispatcher drains: it polls as if every deadline
 * were near, so every queued request is searched (or times out if its
 * deadline passed), then it exits; then everything is freed.  Every
 * accepted request has completed when free returns.
 *
 * Metrics (host/service/service_metrics.c), in opts.metrics or a
 * registry of the service's own, names prefixed quiver_:
 *   quiver_service_stage_ns{collection,stage}  summary; stages:
 *       queue_wait   arrival -> batch taken (per request)
 *       search       one group's index search (per group)
 *       distance     of that, engine time: the router's observed_ns
 *                    delta over the search (only with a router)
 *       traversal    search - distance: probe selection, graph walk,
 *                    merge and sort (only with a router)
 *       respond      scatter + cache fill + callbacks (per group)
 *       end_to_end   arrival -> completion (per request, hits included)
 *   quiver_service_batch_queries{collection}           summary
 *   quiver_service_requests_total{collection,outcome}  ok, cached,
 *       approximate, busy, timeout, invalid, error, shutdown (unknown
 *       collections count under collection="unknown")
 *   quiver_service_cache_{hits,misses}_total{collection,cache}
 *   quiver_service_searches_total{collection}
 * and, refreshed by qv_service_render_metrics():
 *   quiver_engine_{units,failures}_total{engine}, quiver_engine_
 *   breaker_state{engine} (0 closed, 1 open, 2 half-open), quiver_engine_
 *   utilisation_ppm{engine} (observed busy ns / wall ns since the
 *   previous render), quiver_engine_route_share_ppm{engine} (its share
 *   of the parts completed since the previous render);
 *   quiver_batcher_queue_depth{class} (offered - refused - taken),
 *   quiver_batcher_inflight{class}, quiver_batcher_deadline_misses_total
 *   {class}; quiver_cache_{entries,bytes}{cache},
 *   quiver_cache_{evictions,invalidations}_total{cache}.
 *
 * Hot path.  submit(): validation O(dim), the cache lookups (the result
 * cache takes one of its striped shard locks for O(dim + k); the
 * semantic cache, only when asked, its one lock for O(entries x dim)),
 * the collection's `queued` add and `retired` load (seq_cst, see
 * "Retiring"), one lock-free offer, relaxed counter adds, and the futex
 * wake above.  No allocation.  The dispatcher allocates nothing per
 * batch except in the caches' inserts (cache.h: they allocate an entry)
 * and the indexes' (or custom callbacks') own search scratch.
 */
#ifndef QUIVER_SERVICE_H
#define QUIVER_SERVICE_H

#include <stddef.h>
#include <stdint.h>

#include "quiver/batcher.h"
#include "quiver/cache.h"
#include "quiver/dist.h"
#include "quiver/router.h"

struct qv_config;
struct qv_engine;
struct qv_metrics;
struct qv_hist;
struct qv_flat;
struct qv_ivf;
struct qv_ivfpq;
struct qv_hnsw;
struct qv_service;

#define QV_SERVICE_MAX_K 100000u    /* largest max_k (the indexes' limit) */

enum qv_service_index_type {
    QV_SERVICE_FLAT = 0,
    QV_SERVICE_IVF = 1,             /* IVF-Flat or IVF-SQ8 */
    QV_SERVICE_IVFPQ = 2,
    QV_SERVICE_HNSW = 3,
    QV_SERVICE_CUSTOM = 4,          /* a search callback (top of file) */
};

/*
 * A custom collection's search: the k nearest of nq queries (nq x dim
 * floats, row-major, finite) into dist / ids (nq x k, each row ascending
 * by (distance, id), unfilled slots (+inf, QV_ID_NONE)), with p1 the
 * resolved nprobe or ef (see "Custom collections" above), refine the
 * resolved refine (0 = off) and filter_text the requests' predicate
 * (filter.h syntax) or NULL.  Returns 0 or a negative QV_E* code, which
 * becomes the status of every request of the group.  Called on the
 * dispatcher thread only.
 */
typedef int qv_service_search_fn(void *ix, const float *q, size_t nq, uint32_t k,
                                 uint32_t p1, uint32_t refine, const char *filter_text,
                                 float *dist, uint64_t *ids);

/* Optional: start copying what a search of q (nq x dim) with p1 will scan
 * into an engine's memory (a hint, as qv_ivf_prefetch): > 0 when copies
 * started, 0 when none were needed, < 0 declined.  The service calls it
 * for waiting requests, backed off like the indexes' prefetch.
 * Dispatcher thread only. */
typedef int qv_service_prefetch_fn(void *ix, const float *q, size_t nq, uint32_t p1);

struct qv_service_custom {
    qv_service_search_fn *search;   /* required */
    qv_service_prefetch_fn *prefetch;   /* NULL: none */
    void *ix;                       /* borrowed; passed to both */
};

/* A borrowed index and its type. */
struct qv_service_index {
    enum qv_service_index_type type;
    union {
        struct qv_flat *flat;
        struct qv_ivf *ivf;
        struct qv_ivfpq *ivfpq;
        struct qv_hnsw *hnsw;
        struct qv_service_custom custom;
    };
};

/* What qv_service_add_collection() registers.  Copied; index borrowed. */
struct qv_service_collection {
    struct qv_service_index index;  /* must outlive the service (or the
                                       collection's retirement or
                                       removal) */
    uint32_t dim;                   /* must equal the index's dim; CUSTOM:
                                       required, 1..65536 */
    enum qv_metric metric;          /* the index's metric (HNSW: checked);
                                       the semantic cache measures with it */
    uint32_t nprobe;                /* IVF, IVF-PQ default; 0 = min(8, nlist);
                                       CUSTOM: the default p1 when ef is 0 */
    uint32_t ef;                    /* HNSW default; 0 = the index's
                                       ef_search (raised to k); CUSTOM: != 0
                                       makes p1 an ef (default, raised to k) */
    uint32_t refine;                /* IVF-PQ and CUSTOM default; 0 or 1 = off */
    uint32_t code_size;             /* cost model only: bytes per list
                                       entry of IVF-SQ8 (= dim) or IVF-PQ
                                       (m x nbits / 8); 0 = float lists
                                       (flat, IVF-Flat; IVF-PQ: dim / 4) */
    struct qv_batcher_coll_opts queue;  /* batcher overrides; zeros = the
                                       service's */
};

/* Request flags (out). */
#define QV_SERVICE_CACHED 0x1u      /* answered from a cache, inline */
#define QV_SERVICE_APPROXIMATE 0x2u /* the answer of a near-duplicate query
                                       (semantic cache) */

struct qv_service_request;

/* Completion callback: runs exactly once per accepted request (see the
 * top of this file for the thread).  req->status, flags, dist, ids and
 * the time stamps are final. */
typedef void qv_service_done_fn(struct qv_service_request *req, void *arg);

/* The service's part of a request; callers never touch it. */
struct qv__service_req_priv {
    void *coll;                     /* struct svc_coll */
    uint64_t epoch;                 /* at submit */
    uint64_t params_hash;
    int64_t arrival, deadline;      /* resolved */
    uint32_t p1;                    /* resolved nprobe (IVF*) or ef (HNSW) */
    uint32_t refine;                /* resolved refine */
    uint32_t cacheable;             /* has a cache key */
};

/*
 * One query.  The caller fills the "in" part, keeps the request and every
 * array it points to alive and unchanged until `done` has been called,
 * and reads the "out" part there (or after).
 */
struct qv_service_request {
    /* ---- in ---- */
    uint64_t collection;
    const float *query;             /* dim floats, finite */
    uint32_t k;                     /* 1..max_k */
    uint32_t nprobe;                /* IVF, IVF-PQ; 0 = the collection's */
    uint32_t ef;                    /* HNSW; 0 = the collection's; an ef
                                       below k is raised to k */
    uint32_t refine;                /* IVF-PQ; 0 = the collection's */
    const uint64_t *filter;         /* row bitmap of the index's rows (bit
                                       set = eligible) or NULL; CUSTOM:
                                       must be NULL */
    const char *filter_text;        /* the predicate it came from, for the
                                       cache key; NULL: a filtered request
                                       is not cached.  CUSTOM: the filter
                                       itself (NULL = none), passed to the
                                       callback */
    float semantic_threshold;       /* > 0: a cached answer of a query
                                       within this distance is good enough
                                       (APPROXIMATE); 0 = exact only */
    enum qv_batch_class cls;        /* INTERACTIVE or BULK */
    int64_t arrival;                /* ns (qv_now_ns clock) the query
                                       reached the node, e.g. its rx time;
                                       0 = at submit */
    int64_t deadline;               /* absolute ns; 0 = arrival + the
                                       class's budget ([batcher]) */
    float *dist;                    /* k slots (out) */
    uint64_t *ids;                  /* k slots (out); unfilled slots hold
                                       (+inf, QV_ID_NONE) */
    qv_service_done_fn *done;       /* required */
    void *done_arg;
    /* ---- out ---- */
    int status;                     /* 0, QV_ETIMEDOUT, the search's
                                       error; on refusal submit's code */
    uint32_t flags;                 /* QV_SERVICE_* */
    int64_t t_taken;                /* its batch was taken (0: cache hit) */
    int64_t t_searched;             /* its search ended (0: not searched) */
    int64_t t_done;                 /* completed, just before `done` */
    /* ---- the service's ---- */
    struct qv__service_req_priv priv;
};

struct qv_service_opts {
    struct qv_batcher_opts batcher; /* queues, budgets, batching; cost_ns
                                       and on_arrival are the service's
                                       own (ignored here) */
    struct qv_cache_opts cache;     /* entries or bytes 0: no result
                                       cache; semantic_entries 0: no
                                       semantic cache */
    uint32_t max_k;                 /* 1..QV_SERVICE_MAX_K; default 1024 */
    double cost_alpha;              /* (0, 1]: weight of each observed
                                       search in the cost correction;
                                       default 0.1 */
    struct qv_router_params model;  /* engine parameters of the cost model
                                       without a router; default the
                                       router's generic ones (20 us, 10
                                       GB/s, 10 GB/s, 20 Gflop/s) */
    struct qv_router *router;       /* borrowed or NULL: its parameters
                                       feed the cost model and its
                                       counters the metrics.  Only the
                                       dispatcher uses it (router.h is
                                       single-threaded): nobody else may
                                       while the service lives. */
    struct qv_engine *engine;       /* borrowed; NULL = qv_router_engine(
                                       router) with a router, else none
                                       (the indexes' CPU paths) */
    struct qv_metrics *metrics;     /* borrowed; NULL = the service's own */
    int start_paused;               /* 1: start as if qv_service_pause()
                                       had been called once */
};

/* Defaults (above, batcher and cache defaults).  Cannot fail. */
void qv_service_opts_default(struct qv_service_opts *o);

/* Defaults, then the [batcher], [cache] and [service] sections of cfg
 * (max_k, cost_alpha).  Borrowed fields stay NULL.  Returns 0 or
 * QV_ECONFIG (message names the key). */
int qv_service_opts_from_config(const struct qv_config *cfg, struct qv_service_opts *o);

/*
 * qv_service_create - batcher, caches, metrics, scratch, and the
 * dispatcher thread (started now; parked when start_paused).  o NULL =
 * defaults.  Returns NULL with qv_errno QV_EINVAL (an option out of
 * range: the message names it), QV_ENOMEM, or the -errno of
 * pthread_create.  Nothing leaks on failure.
 */
struct qv_service *qv_service_create(const struct qv_service_opts *o);

/*
 * qv_service_free - refuse new requests, drain (every accepted request
 * completes: searched, or QV_ETIMEDOUT), stop the dispatcher, detach the
 * service's engine from its IVF / IVF-PQ indexes, free everything the
 * service owns.  Call once no producer can still be inside submit() and
 * never from a callback.  NULL is a no-op.
 */
void qv_service_free(struct qv_service *svc);

/*
 * qv_service_add_collection - register collection id with c (copied;
 * the index borrowed).  Allocates its queues, gather buffer and metrics;
 * requests for id may be submitted once it returns.  Pauses the
 * dispatcher for the registration.  Thread-safe (not from a callback).
 * Returns 0, QV_EINVAL (NULL index, unknown type, dim 0 or unlike the
 * index's, HNSW metric unlike the index's, nlist 0 (untrained IVF); a
 * CUSTOM without search callback or dim; a batcher override out of
 * range), QV_EEXIST (id registered, retired ones included, or being
 * removed right now), QV_ENOSPC ([batcher] max_collections registered
 * now, retired ones included; removed ones do not count), QV_ENOMEM.
 * Messages name the field.
 */
int qv_service_add_collection(struct qv_service *svc, uint64_t id,
                              const struct qv_service_collection *c);

/*
 * qv_service_submit - hand one request to the service.  Never blocks,
 * never allocates; thread-safe for any number of producers, also while
 * collections are added and removed (what makes removal safe costs it
 * two atomic increments, no lock: "Retiring and removing").  Returns
 *   0            accepted: req->done runs exactly once (already, inline,
 *                for a cache hit; else on the dispatcher thread);
 *   QV_EINVAL    req NULL; query, dist, ids or done NULL; k outside
 *                1..max_k; class unknown; HNSW ef > QV_HNSW_MAX_EF; a
 *                NaN or infinite query value;
 *                semantic_threshold negative or NaN; filter_text without
 *                filter (not CUSTOM); a filter bitmap for a CUSTOM
 *                collection (the message names the field);
 *   QV_ENOENT    the collection is not registered, retired or removed;
 *   QV_ETIMEDOUT the deadline has already passed;
 *   QV_EBUSY     the collection's queue for that class is full (shed the
 *                query or retry later);
 *   QV_EUNAVAIL  the service is shutting down.
 * On refusal done is not called and req->status holds the code.
 */
int qv_service_submit(struct qv_service *svc, struct qv_service_request *req);

/*
 * qv_service_retire_collection - stop collection id without removing it
 * (see "Retiring and removing" at the top): refuse its new requests with
 * QV_ENOENT, let the accepted ones be searched, return once every one of
 * them has completed, the service's engine taken off an IVF / IVF-PQ
 * index; then the service never calls into its index (or custom
 * callbacks) again and the owner may free it.  The id stays registered
 * until qv_service_remove_collection or qv_service_free.  Waits for the
 * dispatcher, so never call it from a callback or while this thread holds
 * a pause.  Retiring twice waits again (returns 0).  Thread-safe
 * (serialised with remove).  Returns 0 or QV_ENOENT (not registered).
 */
int qv_service_retire_collection(struct qv_service *svc, uint64_t id);

/*
 * qv_service_remove_collection - retire collection id as above (it may
 * be retired already), then remove it (see "Retiring and removing"): out
 * of the service's table and the batcher, its metric series unregistered,
 * its memory freed.  When it returns, id is unknown to the service (its
 * submits answer QV_ENOENT, "not registered"), no longer counts against
 * [batcher] max_collections and may be added again; pointers from
 * qv_service_stage_hist(id) are dangling; qv_service_stats still counts
 * its requests.  Waits for the accepted requests (up to the class's
 * budget), for every submit that may hold the collection (a grace
 * period: the length of a submit) and for the dispatcher to park between
 * batches; so never call it from a callback or while this thread holds a
 * pause.  Thread-safe (removals, retires and adds of other ids may run
 * at the same time; an add of this id while it runs is QV_EEXIST).  No
 * allocation.  Returns 0 or QV_ENOENT (not registered, or already
 * removed).  O(collections), plus O(series in the registry) for each of
 * its ~20 series, plus the waits.
 */
int qv_service_remove_collection(struct qv_service *svc, uint64_t id);

/* After the caller changed collection id's index (inside pause/resume):
 * a new write epoch, so no earlier cached answer can hit again, and the
 * caches drop its entries now (O(entries)).  Thread-safe.  Returns 0 or
 * QV_ENOENT. */
int qv_service_bump_epoch(struct qv_service *svc, uint64_t id);

/* The write epoch of collection id (0 at registration); UINT64_MAX when
 * not registered.  Thread-safe. */
uint64_t qv_service_epoch(struct qv_service *svc, uint64_t id);

/* Park the dispatcher between batches and return once it is parked
 * (waits for the batch in hand).  Requests are still accepted and queue
 * up.  Nests; each pause needs a resume.  Thread-safe; never from a
 * callback (on the dispatcher thread it only counts). */
void qv_service_pause(struct qv_service *svc);
void qv_service_resume(struct qv_service *svc);

enum qv_service_outcome {
    QV_SERVICE_OK = 0,              /* searched */
    QV_SERVICE_OUT_CACHED,          /* exact cache hit */
    QV_SERVICE_OUT_APPROXIMATE,     /* semantic cache hit */
    QV_SERVICE_OUT_BUSY,            /* refused: queue full */
    QV_SERVICE_OUT_TIMEOUT,         /* deadline passed (refused or expired) */
    QV_SERVICE_OUT_INVALID,         /* refused: EINVAL / ENOENT */
    QV_SERVICE_OUT_ERROR,           /* the search failed */
    QV_SERVICE_OUT_SHUTDOWN,        /* refused: shutting down */
    QV_SERVICE_OUTCOMES
};

enum qv_service_stage {
    QV_SERVICE_STAGE_QUEUE = 0,
    QV_SERVICE_STAGE_SEARCH,
    QV_SERVICE_STAGE_DISTANCE,
    QV_SERVICE_STAGE_TRAVERSAL,
    QV_SERVICE_STAGE_RESPOND,
    QV_SERVICE_STAGE_END_TO_END,
    QV_SERVICE_STAGES
};

struct qv_service_stats {
    uint64_t outcomes[QV_SERVICE_OUTCOMES];     /* over all collections */
    uint64_t batches;               /* batches taken by the dispatcher */
    uint64_t searches;              /* index searches (groups) run */
    uint64_t searched;              /* requests in those searches */
    uint64_t prefetch_calls;        /* predictive prefetches made (one per
                                       request, backed off where they copy
                                       nothing: service.c) */
    uint64_t prefetch_started;      /* of those, ones that started copies */
    uint64_t result_hits, result_misses;
    uint64_t semantic_hits, semantic_misses;
};

/* Counters since create, removed collections included (relaxed reads:
 * exact once quiet).  Thread-safe, not from a callback (it waits for an
 * add or remove in hand, which may wait for the dispatcher);
 * O(collections). */
void qv_service_stats(struct qv_service *svc, struct qv_service_stats *out);

/* The histogram of a stage of collection id (ns), for quantiles
 * (qv_hist_snapshot_quantile); NULL when id is not registered.  Valid
 * until id is removed (qv_service_remove_collection) or qv_service_free.
 * Thread-safe. */
const struct qv_hist *qv_service_stage_hist(struct qv_service *svc, uint64_t id,
                                            enum qv_service_stage stage);

/* The cost model's corrected prediction (ns) for a batch of n queries of
 * collection id with its default parameters; < 0 when not registered.
 * Dispatcher state: call while paused (or from a callback). */
double qv_service_predict_ns(struct qv_service *svc, uint64_t id, uint32_t n);

/*
 * qv_service_render_metrics - refresh the gauges and counters taken from
 * the router, the batcher (both read while the dispatcher is paused for a
 * moment) and the caches, then qv_metrics_render() the registry into buf:
 * 0 with *len the text's length, or QV_ENOSPC with *len the capacity
 * needed (see metrics.h).  A size probe (buf NULL or cap 0) renders
 * without refreshing, so it does not cut the window of the windowed
 * gauges.  Thread-safe; not from a callback.
 */
int qv_service_render_metrics(struct qv_service *svc, char *buf, size_t cap, size_t *len);

#endif
