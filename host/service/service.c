/*
 * service.c - the query service (quiver/service.h, where the design is
 * described): options, create/free, collections, submit (the producers'
 * path), pause/resume and the dispatcher thread (batches, groups, the
 * index searches, completion).  The cost model is service_cost.c, the
 * metrics service_metrics.c; the shared structures service_int.h.
 */
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "quiver/alloc.h"
#include "quiver/config.h"
#include "quiver/errors.h"
#include "quiver/finite.h"
#include "quiver/flat.h"
#include "quiver/hnsw.h"
#include "quiver/ivf.h"
#include "quiver/ivfpq.h"
#include "quiver/timeutil.h"
#include "service_int.h"

#define SVC_BURST 16                        /* batches per poll */
#define SVC_IDLE_MAX_NS 100000000LL         /* longest idle wait: 100 ms */
#define SVC_SPIN_NS 100000LL               /* spin, not sleep, for a flush this near */
#define SVC_DRAIN_AHEAD_NS (1LL << 50)      /* drain: every deadline is near */
#define SVC_ENGINES_EVERY_NS 1000000000LL   /* re-read engine parameters */
#define SVC_HASH_SEED 0x5175697665725356ULL

/* ------------------------------------------------------------------ */
/* Options                                                             */
/* ------------------------------------------------------------------ */

void qv_service_opts_default(struct qv_service_opts *o)
{
    memset(o, 0, sizeof *o);
    qv_batcher_opts_default(&o->batcher);
    qv_cache_opts_default(&o->cache);
    o->max_k = 1024;
    o->cost_alpha = 0.1;
    o->model = (struct qv_router_params){
        .overhead_ns = 20000.0, .link_Bps = 10e9, .mem_Bps = 10e9, .flops = 20e9,
    };
}

int qv_service_opts_from_config(const struct qv_config *cfg, struct qv_service_opts *o)
{
    int rc;

    qv_service_opts_default(o);
    qv_batcher_opts_from_config(cfg, &o->batcher);
    if ((rc = qv_cache_opts_from_config(cfg, &o->cache)) != 0)
        return rc;
    o->max_k = (uint32_t)qv_config_int(cfg, "service", "max_k");
    o->cost_alpha = qv_config_double(cfg, "service", "cost_alpha");
    return 0;
}

static int check_model(const struct qv_router_params *p)
{
    if (!(p->overhead_ns >= 0.0 && p->overhead_ns < 1e18) ||
        !(p->mem_Bps > 0.0 && p->mem_Bps < 1e18) || !(p->flops > 0.0 && p->flops < 1e18) ||
        !(p->link_Bps > 0.0 && p->link_Bps < 1e18))
        return qv_seterr(QV_EINVAL, "service: model = {overhead %g ns, link %g B/s, memory "
                         "%g B/s, %g flop/s}: expected finite values, overhead >= 0, the "
                         "rest > 0", p->overhead_ns, p->link_Bps, p->mem_Bps, p->flops);
    return 0;
}

static int check_opts(const struct qv_service_opts *o)
{
    if (o->max_k < 1 || o->max_k > QV_SERVICE_MAX_K)
        return qv_seterr(QV_EINVAL, "service: max_k = %u: expected 1..%u", o->max_k,
                         QV_SERVICE_MAX_K);
    if (!(o->cost_alpha > 0.0 && o->cost_alpha <= 1.0))
        return qv_seterr(QV_EINVAL, "service: cost_alpha = %g: expected a number in (0, 1]",
                         o->cost_alpha);
    return check_model(&o->model);
}

/* ------------------------------------------------------------------ */
/* Waking and pausing the dispatcher                                   */
/* ------------------------------------------------------------------ */

static void futex_wake_one(struct qv_service *svc)
{
    atomic_fetch_add_explicit(&svc->wake_seq, 1, memory_order_release);
    syscall(SYS_futex, (void *)&svc->wake_seq, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

/* Producer side: after publishing a query.  See service.h, "Threads and
 * waking". */
static void wake_if_asleep(struct qv_service *svc)
{
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&svc->sleeping, memory_order_relaxed) &&
        atomic_exchange_explicit(&svc->sleeping, 0, memory_order_acq_rel))
        futex_wake_one(svc);
}

static void futex_wait_ns(struct qv_service *svc, uint32_t seq, int64_t ns)
{
    struct timespec ts = { .tv_sec = ns / 1000000000LL, .tv_nsec = ns % 1000000000LL };

    syscall(SYS_futex, (void *)&svc->wake_seq, FUTEX_WAIT_PRIVATE, seq, &ts, NULL, 0);
}

static int on_dispatcher(const struct qv_service *svc)
{
    return svc->started && pthread_equal(pthread_self(), svc->thread);
}

/*
 * A dispatcher asleep in idle_wait() searches nothing and, when it wakes,
 * clears `idle`, fences and checks pause_flag before anything else; so a
 * pause that finds it idle (after its own store and fence: Dekker) need
 * not wake it nor wait: it holds already.  Else wake it and wait until it
 * parks between batches.
 */
void qv_service_pause(struct qv_service *svc)
{
    pthread_mutex_lock(&svc->mu);
    svc->pause_req++;
    atomic_store_explicit(&svc->pause_flag, 1, memory_order_seq_cst);
    atomic_thread_fence(memory_order_seq_cst);
    if (svc->started && !on_dispatcher(svc) &&
        !atomic_load_explicit(&svc->idle, memory_order_seq_cst)) {
        futex_wake_one(svc);
        while (!svc->parked)
            pthread_cond_wait(&svc->cv, &svc->mu);
    }
    pthread_mutex_unlock(&svc->mu);
}

void qv_service_resume(struct qv_service *svc)
{
    pthread_mutex_lock(&svc->mu);
    if (svc->pause_req > 0)
        svc->pause_req--;
    if (svc->pause_req == 0) {
        atomic_store_explicit(&svc->pause_flag, 0, memory_order_release);
        pthread_cond_broadcast(&svc->cv);
    }
    pthread_mutex_unlock(&svc->mu);
}

/* Dispatcher side: stay parked while a pause is held. */
static void park(struct qv_service *svc)
{
    pthread_mutex_lock(&svc->mu);
    while (svc->pause_req > 0) {
        svc->parked = 1;
        pthread_cond_broadcast(&svc->cv);
        pthread_cond_wait(&svc->cv, &svc->mu);
    }
    svc->parked = 0;
    pthread_mutex_unlock(&svc->mu);
}

/* ------------------------------------------------------------------ */
/* Collections                                                         */
/* ------------------------------------------------------------------ */

static uint32_t hash_id(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return (uint32_t)x;
}

/* The mark of a removed collection's table slot (never dereferenced). */
static struct svc_coll svc_tombstone;
#define SVC_TOMB (&svc_tombstone)

/* The collection with id, or NULL; *slot (may be NULL) gets its table
 * slot.  Skips tombstones, stops at NULL or after hmask + 1 probes.
 * Inside a read section, on the dispatcher, or under add_mu or rm_mu
 * (service_int.h, "Lifetime"); the pointer returned is the one loaded
 * (the slot may change right after). */
static struct svc_coll *probe(const struct qv_service *svc, uint64_t id, uint32_t *slot)
{
    uint32_t h = hash_id(id) & svc->hmask;

    for (uint32_t n = 0; n <= svc->hmask; n++) {
        struct svc_coll *c = atomic_load_explicit(&svc->table[h], memory_order_acquire);
        if (c == NULL)
            return NULL;
        if (c != SVC_TOMB && c->id == id) {
            if (slot != NULL)
                *slot = h;
            return c;
        }
        h = (h + 1) & svc->hmask;
    }
    return NULL;
}

struct svc_coll *qv__svc_lookup(const struct qv_service *svc, uint64_t id)
{
    return probe(svc, id, NULL);
}

static const char *type_name(enum qv_service_index_type t)
{
    static const char *const names[] = { "flat", "ivf", "ivfpq", "hnsw", "custom" };
    return (unsigned)t < 5 ? names[t] : "unknown";
}

/* The index's dim (0: a NULL index). */
static uint32_t index_dim(const struct qv_service_index *ix)
{
    switch (ix->type) {
    case QV_SERVICE_FLAT: return ix->flat ? qv_flat_dim(ix->flat) : 0;
    case QV_SERVICE_IVF: return ix->ivf ? qv_ivf_dim(ix->ivf) : 0;
    case QV_SERVICE_IVFPQ: return ix->ivfpq ? qv_ivfpq_dim(ix->ivfpq) : 0;
    case QV_SERVICE_HNSW: return ix->hnsw ? qv_hnsw_dim(ix->hnsw) : 0;
    case QV_SERVICE_CUSTOM: return 0;       /* the spec's dim: check_spec */
    }
    return 0;
}

/* Validate spec; fill the defaults of the copy *out. */
static int check_spec(uint64_t id, const struct qv_service_collection *spec,
                      struct qv_service_collection *out)
{
    const unsigned long long cid = (unsigned long long)id;
    uint32_t dim, nlist = 0;

    if (spec == NULL)
        return qv_seterr(QV_EINVAL, "service: collection %llu: no description (NULL)", cid);
    *out = *spec;
    if ((unsigned)spec->index.type > QV_SERVICE_CUSTOM)
        return qv_seterr(QV_EINVAL, "service: collection %llu: index type %d: expected "
                         "QV_SERVICE_FLAT, _IVF, _IVFPQ, _HNSW or _CUSTOM", cid,
                         (int)spec->index.type);
    if (spec->index.type == QV_SERVICE_CUSTOM) {
        if (spec->index.custom.search == NULL)
            return qv_seterr(QV_EINVAL, "service: collection %llu: custom index without a "
                             "search callback: set index.custom.search", cid);
        if (spec->dim == 0 || spec->dim > 65536)
            return qv_seterr(QV_EINVAL, "service: collection %llu: dim = %u: a custom index "
                             "needs its dim, 1..65536", cid, spec->dim);
    }
    dim = spec->index.type == QV_SERVICE_CUSTOM ? spec->dim : index_dim(&spec->index);
    if (dim == 0)
        return qv_seterr(QV_EINVAL, "service: collection %llu: the %s index is NULL: pass "
                         "the index to serve", cid, type_name(spec->index.type));
    if (spec->dim != 0 && spec->dim != dim)
        return qv_seterr(QV_EINVAL, "service: collection %llu: dim = %u but the %s index "
                         "has dim %u", cid, spec->dim, type_name(spec->index.type), dim);
    out->dim = dim;
    if ((unsigned)spec->metric >= QV_METRIC__COUNT)
        return qv_seterr(QV_EINVAL, "service: collection %llu: metric %d: expected "
                         "QV_METRIC_L2, _IP or _COSINE", cid, (int)spec->metric);
    switch (spec->index.type) {
    case QV_SERVICE_IVF:
        if (qv_ivf_centroids(spec->index.ivf) == NULL)
            return qv_seterr(QV_EINVAL, "service: collection %llu: the IVF index is not "
                             "trained: train it before serving it", cid);
        nlist = qv_ivf_nlist(spec->index.ivf);
        break;
    case QV_SERVICE_IVFPQ:
        nlist = qv_ivfpq_nlist(spec->index.ivfpq);
        break;
    case QV_SERVICE_HNSW:
        if (spec->metric != qv_hnsw_metric(spec->index.hnsw))
            return qv_seterr(QV_EINVAL, "service: collection %llu: metric %s but the HNSW "
                             "index was built with %s", cid, qv_metric_name(spec->metric),
                             qv_metric_name(qv_hnsw_metric(spec->index.hnsw)));
        if (out->ef == 0) {
            struct qv_hnsw_stats hs;
            qv_hnsw_stats(spec->index.hnsw, &hs);
            out->ef = hs.ef_search;
        }
        break;
    case QV_SERVICE_FLAT:
    case QV_SERVICE_CUSTOM:
        break;
    }
    if (out->nprobe == 0 && nlist != 0)
        out->nprobe = nlist < 8 ? nlist : 8;
    if (out->refine <= 1)
        out->refine = 0;
    return 0;
}

/* Free c and unregister its metrics: nothing can reach it any more. */
static void coll_free(struct qv_service *svc, struct svc_coll *c)
{
    if (c == NULL)
        return;
    qv__svc_metrics_coll_fini(svc, c);
    qv_free(c->gather);
    qv_free(c);
}

/* A collection record for spec (checked), not yet published. */
static struct svc_coll *coll_new(struct qv_service *svc, uint64_t id,
                                 const struct qv_service_collection *spec)
{
    struct svc_coll *c = qv_calloc(1, sizeof *c, QV_MEM_ROUTER);

    if (c == NULL)
        return NULL;
    c->id = id;
    c->spec = *spec;
    atomic_init(&c->epoch, 0);
    snprintf(c->label, sizeof c->label, "collection=\"%llu\"", (unsigned long long)id);
    for (unsigned k = 0; k < QV_BATCH_CLASSES; k++)
        c->budget[k] = spec->queue.budget_ns[k] > 0 ? spec->queue.budget_ns[k]
                                                    : svc->o.batcher.budget_ns[k];
    c->gather = qv_malloc((size_t)svc->max_batch * spec->dim * sizeof(float), QV_MEM_ROUTER);
    if (c->gather == NULL || qv__svc_metrics_coll(svc, c) != 0) {
        coll_free(svc, c);
        qv_errno = QV_ENOMEM;
        return NULL;
    }
    return c;
}

/* Attach the service's engine to an IVF / IVF-PQ index (NULL: detach).
 * Dispatcher parked. */
static void set_engine(struct svc_coll *c, struct qv_engine *e)
{
    if (c->spec.index.type == QV_SERVICE_IVF)
        qv_ivf_set_engine(c->spec.index.ivf, e);
    else if (c->spec.index.type == QV_SERVICE_IVFPQ)
        qv_ivfpq_set_engine(c->spec.index.ivfpq, e);
}

/* Publish c: the batcher's queues, the engine, the model, the table.
 * Dispatcher parked, add_mu held. */
static int coll_publish(struct qv_service *svc, struct svc_coll *c)
{
    uint32_t h = hash_id(c->id) & svc->hmask;
    int rc = qv_batcher_add_collection(svc->batcher, c->id, &c->spec.queue);

    if (rc != 0)
        return rc;
    set_engine(c, svc->engine);
    qv__svc_model_init(svc, c);
    for (;;) {                  /* the first free or tombstoned slot */
        struct svc_coll *o = atomic_load_explicit(&svc->table[h], memory_order_relaxed);
        if (o == NULL || o == SVC_TOMB)
            break;
        h = (h + 1) & svc->hmask;
    }
    svc->colls[svc->ncoll++] = c;
    atomic_store_explicit(&svc->table[h], c, memory_order_release);
    return 0;
}

int qv_service_add_collection(struct qv_service *svc, uint64_t id,
                              const struct qv_service_collection *spec)
{
    struct qv_service_collection s;
    struct svc_coll *c = NULL;
    int rc;

    pthread_mutex_lock(&svc->add_mu);
    if ((rc = check_spec(id, spec, &s)) != 0)
        goto out;
    if (qv__svc_lookup(svc, id) != NULL) {
        rc = qv_seterr(QV_EEXIST, "service: collection %llu is already registered",
                       (unsigned long long)id);
        goto out;
    }
    if (svc->ncoll >= svc->o.batcher.max_collections) {
        rc = qv_seterr(QV_ENOSPC, "service: collection %llu: all %u collections are "
                       "registered; remove one or raise [batcher] max_collections",
                       (unsigned long long)id, svc->o.batcher.max_collections);
        goto out;
    }
    c = coll_new(svc, id, &s);
    if (c == NULL) {
        rc = qv_seterr(QV_ENOMEM, "service: collection %llu: no memory for its buffers",
                       (unsigned long long)id);
        goto out;
    }
    qv_service_pause(svc);
    rc = coll_publish(svc, c);
    qv_service_resume(svc);
    if (rc == QV_EEXIST)        /* out of our table, not yet out of the batcher */
        rc = qv_seterr(QV_EEXIST, "service: collection %llu is being removed: add it "
                       "again once qv_service_remove_collection returned",
                       (unsigned long long)id);
    if (rc == 0)
        c = NULL;
out:
    coll_free(svc, c);
    pthread_mutex_unlock(&svc->add_mu);
    return rc;
}

int qv_service_bump_epoch(struct qv_service *svc, uint64_t id)
{
    unsigned tok = qv_grace_lock(&svc->grace);
    struct svc_coll *c = qv__svc_lookup(svc, id);

    if (c != NULL)
        atomic_fetch_add_explicit(&c->epoch, 1, memory_order_acq_rel);
    qv_grace_unlock(&svc->grace, tok);
    if (c == NULL)
        return qv_seterr(QV_ENOENT, "service: bump_epoch: collection %llu is not "
                         "registered", (unsigned long long)id);
    if (svc->rcache)
        qv_result_cache_invalidate(svc->rcache, id);
    if (svc->scache)
        qv_semantic_cache_invalidate(svc->scache, id);
    return 0;
}

/* Refuse c's new requests, wait until its accepted ones completed, and
 * take the service's engine off its IVF / IVF-PQ index (service.h,
 * "Retiring and removing").  rm_mu held. */
static void retire(struct qv_service *svc, struct svc_coll *c)
{
    atomic_store_explicit(&c->retired, 1, memory_order_seq_cst);
    pthread_mutex_lock(&svc->mu);
    while (atomic_load_explicit(&c->queued, memory_order_seq_cst) != 0)
        pthread_cond_wait(&svc->cv, &svc->mu);
    pthread_mutex_unlock(&svc->mu);
    if (!c->detached && svc->engine != NULL &&
        (c->spec.index.type == QV_SERVICE_IVF || c->spec.index.type == QV_SERVICE_IVFPQ)) {
        qv_service_pause(svc);          /* the engine is the dispatcher's */
        set_engine(c, NULL);
        qv_service_resume(svc);
    }
    c->detached = 1;
}

int qv_service_retire_collection(struct qv_service *svc, uint64_t id)
{
    struct svc_coll *c;

    pthread_mutex_lock(&svc->rm_mu);
    c = qv__svc_lookup(svc, id);
    if (c != NULL)
        retire(svc, c);
    pthread_mutex_unlock(&svc->rm_mu);
    if (c == NULL)
        return qv_seterr(QV_ENOENT, "service: retire: collection %llu is not registered",
                         (unsigned long long)id);
    return 0;
}

/* Slot h was just tombstoned: clear the run of tombstones ending at h
 * when a NULL slot follows it (no probe sequence of a live id passes
 * through such a run; batcher.c, "Collections").  add_mu held. */
static void clear_tombstones(struct qv_service *svc, uint32_t h)
{
    if (atomic_load_explicit(&svc->table[(h + 1) & svc->hmask], memory_order_relaxed) != NULL)
        return;
    while (atomic_load_explicit(&svc->table[h], memory_order_relaxed) == SVC_TOMB) {
        atomic_store_explicit(&svc->table[h], NULL, memory_order_release);
        h = (h - 1) & svc->hmask;
    }
}

/* Take c out of colls[] and keep its counters for qv_service_stats.
 * add_mu held; nothing updates c's counters any more. */
static void coll_unlist(struct qv_service *svc, struct svc_coll *c)
{
    struct svc_gone *g = &svc->gone;
    uint32_t i;

    for (i = 0; svc->colls[i] != c; i++)
        ;
    memmove(&svc->colls[i], &svc->colls[i + 1], (svc->ncoll - i - 1) * sizeof *svc->colls);
    svc->ncoll--;
    for (unsigned k = 0; k < QV_SERVICE_OUTCOMES; k++)
        g->outcomes[k] += qv_counter_get(c->outcome[k]);
    for (unsigned k = 0; k < SVC_CACHES; k++) {
        g->hits[k] += qv_counter_get(c->hits[k]);
        g->misses[k] += qv_counter_get(c->misses[k]);
    }
}

int qv_service_remove_collection(struct qv_service *svc, uint64_t id)
{
    struct svc_coll *c;
    uint32_t h = 0;
    int rc;

    pthread_mutex_lock(&svc->rm_mu);
    c = qv__svc_lookup(svc, id);
    if (c == NULL) {
        pthread_mutex_unlock(&svc->rm_mu);
        return qv_seterr(QV_ENOENT, "service: remove: collection %llu is not registered",
                         (unsigned long long)id);
    }
    retire(svc, c);                     /* no submit offers it again */
    pthread_mutex_lock(&svc->add_mu);
    probe(svc, id, &h);                 /* c, where adds cannot move it */
    atomic_store_explicit(&svc->table[h], SVC_TOMB, memory_order_release);
    pthread_mutex_unlock(&svc->add_mu);
    qv_grace_synchronize(&svc->grace);                /* no submit holds c */
    pthread_mutex_lock(&svc->add_mu);
    qv_service_pause(svc);              /* the dispatcher holds none of c */
    rc = qv_batcher_remove_collection(svc->batcher, id);
    if (svc->cost_last == c)
        svc->cost_last = NULL;
    qv_service_resume(svc);
    if (rc != 0) {                      /* retire drained it: cannot happen */
        fprintf(stderr, "qv_service_remove_collection: collection %llu: %s\n",
                (unsigned long long)id, qv_errmsg());
        abort();
    }
    clear_tombstones(svc, h);
    coll_unlist(svc, c);
    coll_free(svc, c);      /* under add_mu: a new add of id gets new series */
    pthread_mutex_unlock(&svc->add_mu);
    pthread_mutex_unlock(&svc->rm_mu);
    return 0;
}

uint64_t qv_service_epoch(struct qv_service *svc, uint64_t id)
{
    unsigned tok = qv_grace_lock(&svc->grace);
    struct svc_coll *c = qv__svc_lookup(svc, id);
    uint64_t e = c ? atomic_load_explicit(&c->epoch, memory_order_acquire) : UINT64_MAX;

    qv_grace_unlock(&svc->grace, tok);
    return e;
}

/* ------------------------------------------------------------------ */
/* Completion                                                          */
/* ------------------------------------------------------------------ */

/* Finish req: status, flags, stamps, counters, then the callback, after
 * which req is never touched again. */
static void complete(struct svc_coll *c, struct qv_service_request *req, int status,
                     uint32_t flags, enum qv_service_outcome out)
{
    int64_t t = qv_now_ns();

    req->status = status;
    req->flags = flags;
    req->t_done = t;
    qv__svc_hist_ns(c->stage[QV_SERVICE_STAGE_END_TO_END], t - req->priv.arrival);
    qv_counter_inc(c->outcome[out]);
    req->done(req, req->done_arg);
}

static struct qv_cache_key cache_key(const struct svc_coll *c,
                                     const struct qv_service_request *req, uint64_t epoch)
{
    return (struct qv_cache_key){
        .collection = c->id,
        .epoch = epoch,
        .query = req->query,
        .dim = c->spec.dim,
        .k = req->k,
        .filter = req->filter_text,
        .params_hash = req->priv.params_hash,
    };
}

/* ------------------------------------------------------------------ */
/* Submit (producers)                                                  */
/* ------------------------------------------------------------------ */

static int check_request(const struct qv_service *svc, const struct svc_coll *c,
                         const struct qv_service_request *req)
{
    const unsigned long long id = (unsigned long long)c->id;
    uint32_t bad;

    if (req->query == NULL)
        return qv_seterr(QV_EINVAL, "service: collection %llu: query is NULL: pass %u "
                         "floats", id, c->spec.dim);
    if (req->dist == NULL || req->ids == NULL)
        return qv_seterr(QV_EINVAL, "service: collection %llu: %s is NULL: pass k = %u "
                         "slots", id, req->dist == NULL ? "dist" : "ids", req->k);
    if (req->done == NULL)
        return qv_seterr(QV_EINVAL, "service: collection %llu: done is NULL: a completion "
                         "callback is required", id);
    if (req->k == 0 || req->k > svc->o.max_k)
        return qv_seterr(QV_EINVAL, "service: collection %llu: k = %u: expected 1..%u "
                         "([service] max_k)", id, req->k, svc->o.max_k);
    if ((unsigned)req->cls >= QV_BATCH_CLASSES)
        return qv_seterr(QV_EINVAL, "service: collection %llu: class %d: expected "
                         "QV_BATCH_INTERACTIVE or QV_BATCH_BULK", id, (int)req->cls);
    if (!(req->semantic_threshold >= 0.0f))
        return qv_seterr(QV_EINVAL, "service: collection %llu: semantic_threshold = %g: "
                         "expected >= 0 (0 = exact answers only)", id,
                         (double)req->semantic_threshold);
    if (c->spec.index.type == QV_SERVICE_CUSTOM) {
        if (req->filter != NULL)
            return qv_seterr(QV_EINVAL, "service: collection %llu: a filter bitmap for a "
                             "custom collection: pass filter_text alone (it evaluates "
                             "the text itself)", id);
    } else if (req->filter_text != NULL && req->filter == NULL) {
        return qv_seterr(QV_EINVAL, "service: collection %llu: filter_text \"%.40s\" "
                         "without a filter bitmap: pass the bitmap it evaluates to", id,
                         req->filter_text);
    }
    if ((c->spec.index.type == QV_SERVICE_HNSW ||
         (c->spec.index.type == QV_SERVICE_CUSTOM && c->spec.ef != 0)) &&
        req->ef > QV_HNSW_MAX_EF)
        return qv_seterr(QV_EINVAL, "service: collection %llu: ef = %u: expected at most "
                         "%u (0 = the collection's)", id, req->ef, QV_HNSW_MAX_EF);
    bad = (uint32_t)qv_first_nonfinite(req->query, c->spec.dim);
    if (bad < c->spec.dim)
        return qv_seterr(QV_EINVAL, "service: collection %llu: query[%u] = %g: queries "
                         "must be finite", id, bad, (double)req->query[bad]);
    return 0;
}

/* Fill req->priv: parameters, times, epoch, cache key parts. */
static void resolve(const struct svc_coll *c, struct qv_service_request *req, int64_t now)
{
    struct qv__service_req_priv *p = &req->priv;
    const struct qv_service_collection *s = &c->spec;
    uint32_t h[3];

    p->coll = (void *)c;
    p->arrival = req->arrival ? req->arrival : now;
    p->deadline = req->deadline ? req->deadline : p->arrival + c->budget[req->cls];
    p->p1 = 0;
    p->refine = 0;
    switch (s->index.type) {
    case QV_SERVICE_IVF:
        p->p1 = req->nprobe ? req->nprobe : s->nprobe;
        break;
    case QV_SERVICE_IVFPQ:
        p->p1 = req->nprobe ? req->nprobe : s->nprobe;
        p->refine = req->refine ? req->refine : s->refine;
        if (p->refine <= 1)
            p->refine = 0;
        break;
    case QV_SERVICE_HNSW:
        p->p1 = req->ef ? req->ef : s->ef;
        if (p->p1 < req->k)
            p->p1 = req->k;
        break;
    case QV_SERVICE_CUSTOM:
        if (s->ef != 0) {
            p->p1 = req->ef ? req->ef : s->ef;
            if (p->p1 < req->k)
                p->p1 = req->k;
        } else {
            p->p1 = req->nprobe ? req->nprobe : s->nprobe;
        }
        p->refine = req->refine ? req->refine : s->refine;
        if (p->refine <= 1)
            p->refine = 0;
        break;
    case QV_SERVICE_FLAT:
        break;
    }
    p->epoch = atomic_load_explicit(&((struct svc_coll *)c)->epoch, memory_order_acquire);
    p->cacheable = req->filter == NULL || req->filter_text != NULL;
    h[0] = (uint32_t)s->index.type;
    h[1] = p->p1;
    h[2] = p->refine;
    p->params_hash = qv_cache_hash64(h, sizeof h, SVC_HASH_SEED);
}

/* Answer req from a cache: 1 (completed inline), 0 (missed). */
static int try_caches(struct qv_service *svc, struct svc_coll *c,
                      struct qv_service_request *req)
{
    struct qv_cache_key key = cache_key(c, req, req->priv.epoch);
    int approx = 0;

    if (svc->rcache) {
        if (qv_result_cache_lookup(svc->rcache, &key, req->dist, req->ids) == 1) {
            qv_counter_inc(c->hits[0]);
            complete(c, req, 0, QV_SERVICE_CACHED, QV_SERVICE_OUT_CACHED);
            return 1;
        }
        qv_counter_inc(c->misses[0]);
    }
    if (svc->scache && req->semantic_threshold > 0.0f) {
        if (qv_semantic_cache_lookup(svc->scache, &key, c->spec.metric,
                                     req->semantic_threshold, req->dist, req->ids,
                                     &approx) == 1) {
            qv_counter_inc(c->hits[1]);
            complete(c, req, 0, QV_SERVICE_CACHED | (approx ? QV_SERVICE_APPROXIMATE : 0),
                     approx ? QV_SERVICE_OUT_APPROXIMATE : QV_SERVICE_OUT_CACHED);
            return 1;
        }
        qv_counter_inc(c->misses[1]);
    }
    return 0;
}

static int refuse(struct svc_coll *c, struct qv_counter *unknown,
                  struct qv_service_request *req, int rc, enum qv_service_outcome out)
{
    qv_counter_inc(c ? c->outcome[out] : unknown);
    req->status = rc;
    return rc;
}

/* n requests of c left the queue (completed, or backed out of submit);
 * the last one of a retired collection wakes its retirer. */
static void unqueue(struct qv_service *svc, struct svc_coll *c, uint64_t n)
{
    if (atomic_fetch_sub_explicit(&c->queued, n, memory_order_seq_cst) == n &&
        atomic_load_explicit(&c->retired, memory_order_seq_cst)) {
        pthread_mutex_lock(&svc->mu);
        pthread_cond_broadcast(&svc->cv);
        pthread_mutex_unlock(&svc->mu);
    }
}

static int refuse_retired(struct svc_coll *c, struct qv_service_request *req)
{
    qv_seterr(QV_ENOENT, "service: collection %llu was retired (dropped): no new "
              "requests", (unsigned long long)c->id);
    return refuse(c, NULL, req, QV_ENOENT, QV_SERVICE_OUT_INVALID);
}

/* The body of submit, inside its read section (every use of c is). */
static int submit_locked(struct qv_service *svc, struct qv_service_request *req)
{
    static const char *const cname[QV_BATCH_CLASSES] = { "interactive", "bulk" };
    struct svc_coll *c;
    int64_t now;
    int rc;

    c = qv__svc_lookup(svc, req->collection);
    if (atomic_load_explicit(&svc->closing, memory_order_acquire)) {
        qv_seterr(QV_EUNAVAIL, "service: shutting down: no new requests");
        return refuse(c, svc->unknown_invalid, req, QV_EUNAVAIL, QV_SERVICE_OUT_SHUTDOWN);
    }
    if (c == NULL) {
        qv_seterr(QV_ENOENT, "service: collection %llu is not registered; register it "
                  "with qv_service_add_collection", (unsigned long long)req->collection);
        return refuse(NULL, svc->unknown_invalid, req, QV_ENOENT, QV_SERVICE_OUT_INVALID);
    }
    if (atomic_load_explicit(&c->retired, memory_order_acquire))
        return refuse_retired(c, req);
    if ((rc = check_request(svc, c, req)) != 0)
        return refuse(c, NULL, req, rc, QV_SERVICE_OUT_INVALID);
    now = qv_now_ns();
    resolve(c, req, now);
    if (req->priv.deadline <= now) {
        qv_seterr(QV_ETIMEDOUT, "service: collection %llu: the deadline passed %lld ns "
                  "before submit", (unsigned long long)c->id,
                  (long long)(now - req->priv.deadline));
        return refuse(c, NULL, req, QV_ETIMEDOUT, QV_SERVICE_OUT_TIMEOUT);
    }
    req->status = 0;
    req->flags = 0;
    req->t_taken = req->t_searched = req->t_done = 0;
    if (req->priv.cacheable && try_caches(svc, c, req))
        return 0;
    /* count first, then look at `retired` (service.h, "Retiring and removing") */
    atomic_fetch_add_explicit(&c->queued, 1, memory_order_seq_cst);
    if (atomic_load_explicit(&c->retired, memory_order_seq_cst)) {
        unqueue(svc, c, 1);
        return refuse_retired(c, req);
    }
    rc = qv_batcher_offer(svc->batcher, c->id, req->cls, req->priv.arrival,
                          req->priv.deadline, req);
    if (rc != 0) {
        unqueue(svc, c, 1);
        qv_seterr(rc, "service: collection %llu: the %s queue is full; retry later, or "
                  "raise [batcher] queue_capacity", (unsigned long long)c->id,
                  cname[req->cls]);
        return refuse(c, NULL, req, rc, QV_SERVICE_OUT_BUSY);
    }
    /* req belongs to the dispatcher now: not one more access */
    wake_if_asleep(svc);
    return 0;
}

int qv_service_submit(struct qv_service *svc, struct qv_service_request *req)
{
    unsigned tok;
    int rc;

    if (req == NULL) {
        qv_counter_inc(svc->unknown_invalid);
        return qv_seterr(QV_EINVAL, "service: submit: the request is NULL");
    }
    tok = qv_grace_lock(&svc->grace);
    rc = submit_locked(svc, req);
    qv_grace_unlock(&svc->grace, tok);
    return rc;
}

/* ------------------------------------------------------------------ */
/* The dispatcher                                                      */
/* ------------------------------------------------------------------ */

/*
 * Predictive prefetch.  svc_prefetch() runs on the dispatcher thread once
 * for every queued request, when the batcher first sees it (its
 * on_arrival hook), before any batch can hold it: it starts copying the
 * lists the request will probe into the memory of the engine the router
 * would send them to, while the request waits for its batch (IVF and
 * IVF-PQ: qv_*_prefetch selects the request's probes as the search will;
 * flat: every segment; HNSW: nothing, it runs on the CPU).  The router
 * forwards it only to an engine with device memory that its model would
 * choose now, and the engine copies asynchronously.
 *
 * Backoff.  A prefetch costs a probe selection (O(nlist dim) for one
 * query) even when it does nothing: the chosen engine reads host memory
 * (the CPU, POCL in place), or the lists are already resident.  So each
 * collection prefetches one request in pf_interval: a prefetch that
 * started copies resets the interval to 1, one that started none doubles
 * it up to SVC_PREFETCH_MAX_INTERVAL.  Where nothing is ever copied that
 * is one probe selection per 64 requests; a collection whose lists start
 * to move (new lists, an engine with device memory winning) is back to
 * every request after at most 64.
 */
#define SVC_PREFETCH_MAX_INTERVAL 64u

static void svc_prefetch(struct qv_service *svc, struct svc_coll *c,
                         struct qv_service_request *req)
{
    const struct qv_service_index *ix = &c->spec.index;
    int rc;

    if (ix->type == QV_SERVICE_HNSW ||
        (ix->type == QV_SERVICE_CUSTOM ? ix->custom.prefetch == NULL : svc->engine == NULL))
        return;
    if (c->pf_skip > 0) {
        c->pf_skip--;
        return;
    }
    switch (ix->type) {
    case QV_SERVICE_IVF:
        rc = qv_ivf_prefetch(ix->ivf, req->query, 1, req->priv.p1);
        break;
    case QV_SERVICE_IVFPQ:
        rc = qv_ivfpq_prefetch(ix->ivfpq, req->query, 1, req->priv.p1);
        break;
    case QV_SERVICE_CUSTOM:
        rc = ix->custom.prefetch(ix->custom.ix, req->query, 1, req->priv.p1);
        break;
    default:
        rc = qv_flat_prefetch(ix->flat, svc->engine);
        break;
    }
    atomic_fetch_add_explicit(&svc->n_prefetch_calls, 1, memory_order_relaxed);
    if (rc > 0) {
        atomic_fetch_add_explicit(&svc->n_prefetch_started, 1, memory_order_relaxed);
        c->pf_interval = 1;
    } else if (c->pf_interval < SVC_PREFETCH_MAX_INTERVAL) {
        c->pf_interval = c->pf_interval ? 2 * c->pf_interval : 2;
    }
    c->pf_skip = c->pf_interval ? c->pf_interval - 1 : 0;
}

static void on_arrival(void *arg, uint64_t coll, enum qv_batch_class cls, void *item)
{
    struct qv_service_request *req = item;

    (void)coll;
    (void)cls;
    svc_prefetch(arg, req->priv.coll, req);
}

/* Custom requests carry their filter as text: equal texts (or none). */
static int same_text(const char *a, const char *b)
{
    return a == b || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

static int same_group(const struct qv_service_request *a, const struct qv_service_request *b)
{
    return a->k == b->k && a->priv.p1 == b->priv.p1 && a->priv.refine == b->priv.refine &&
           a->filter == b->filter &&
           (((const struct svc_coll *)a->priv.coll)->spec.index.type != QV_SERVICE_CUSTOM ||
            same_text(a->filter_text, b->filter_text));
}

/* Move the requests of r[0]'s group to the front; returns its size.
 * O(m). */
static uint32_t take_group(struct qv_service_request **r, uint32_t m)
{
    uint32_t g = 1;

    for (uint32_t j = 1; j < m; j++) {
        if (same_group(r[0], r[j])) {
            struct qv_service_request *t = r[g];
            r[g++] = r[j];
            r[j] = t;
        }
    }
    return g;
}

/* One index search of n gathered queries into the result buffer. */
static int index_search(struct qv_service *svc, const struct svc_coll *c, uint32_t n,
                        const struct qv_service_request *r0)
{
    const struct qv_service_index *ix = &c->spec.index;
    float *d = svc->res_dist;
    uint64_t *ids = svc->res_ids;

    switch (ix->type) {
    case QV_SERVICE_FLAT:
        if (svc->engine)
            return qv_flat_search_engine(ix->flat, svc->engine, c->gather, n, r0->k,
                                         r0->filter, d, ids);
        return qv_flat_search(ix->flat, c->gather, n, r0->k, r0->filter, d, ids);
    case QV_SERVICE_IVF:
        return qv_ivf_search(ix->ivf, c->gather, n, r0->k, r0->priv.p1, r0->filter, d, ids);
    case QV_SERVICE_IVFPQ:
        return qv_ivfpq_search(ix->ivfpq, c->gather, n, r0->k, r0->priv.p1, r0->priv.refine,
                               r0->filter, d, ids);
    case QV_SERVICE_HNSW:
        return qv_hnsw_search(ix->hnsw, c->gather, n, r0->k, r0->priv.p1, r0->filter, d, ids);
    case QV_SERVICE_CUSTOM:
        return ix->custom.search(ix->custom.ix, c->gather, n, r0->k, r0->priv.p1,
                                 r0->priv.refine, r0->filter_text, d, ids);
    }
    return QV_EINVAL;
}

static void fill_caches(struct qv_service *svc, const struct svc_coll *c,
                        const struct qv_service_request *req, uint64_t epoch)
{
    struct qv_cache_key key;

    if (!req->priv.cacheable)
        return;
    key = cache_key(c, req, epoch);
    if (svc->rcache)            /* best effort: a failed insert only misses later */
        (void)qv_result_cache_insert(svc->rcache, &key, req->dist, req->ids);
    if (svc->scache && req->semantic_threshold > 0.0f)
        (void)qv_semantic_cache_insert(svc->scache, &key, c->spec.metric, req->dist,
                                       req->ids);
}

/* Stage times of one search: search, and with a router distance and
 * traversal. */
static void record_search(struct qv_service *svc, struct svc_coll *c, int64_t ns,
                          uint64_t busy0)
{
    qv__svc_hist_ns(c->stage[QV_SERVICE_STAGE_SEARCH], ns);
    if (svc->router) {
        int64_t dist = (int64_t)(qv__svc_router_busy_ns(svc) - busy0);
        if (dist > ns)
            dist = ns;
        qv__svc_hist_ns(c->stage[QV_SERVICE_STAGE_DISTANCE], dist);
        qv__svc_hist_ns(c->stage[QV_SERVICE_STAGE_TRAVERSAL], ns - dist);
    }
}

/* Complete r's expired requests with QV_ETIMEDOUT and compact the rest
 * to the front; returns how many are left. */
static uint32_t expire(struct svc_coll *c, struct qv_service_request **r, uint32_t g)
{
    int64_t now = qv_now_ns();
    uint32_t n = 0;

    for (uint32_t i = 0; i < g; i++) {
        if (r[i]->priv.deadline < now)
            complete(c, r[i], QV_ETIMEDOUT, 0, QV_SERVICE_OUT_TIMEOUT);
        else
            r[n++] = r[i];
    }
    return n;
}

/* One group: gather, ONE search, scatter, cache fill, complete. */
static void run_group(struct qv_service *svc, struct svc_coll *c,
                      struct qv_service_request **r, uint32_t g)
{
    const uint32_t dim = c->spec.dim;
    uint32_t n = expire(c, r, g), k;
    uint64_t epoch, busy0 = 0;
    int64_t t0, t1;
    int rc;

    if (n == 0)
        return;
    k = r[0]->k;
    t0 = qv_now_ns();
    for (uint32_t i = 0; i < n; i++)
        memcpy(c->gather + (size_t)i * dim, r[i]->query, dim * sizeof(float));
    epoch = atomic_load_explicit(&c->epoch, memory_order_acquire);
    if (epoch != c->model.shape_epoch)
        qv__svc_model_shape(c);
    if (svc->router)
        busy0 = qv__svc_router_busy_ns(svc);
    rc = index_search(svc, c, n, r[0]);
    t1 = qv_now_ns();
    record_search(svc, c, t1 - t0, busy0);
    if (rc == 0)
        qv__svc_model_observe(svc, c, n, r[0]->priv.p1, (double)(t1 - t0));
    qv_counter_inc(c->searches);
    atomic_fetch_add_explicit(&svc->n_searches, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&svc->n_searched, n, memory_order_relaxed);
    for (uint32_t i = 0; i < n; i++) {
        struct qv_service_request *req = r[i];
        req->t_searched = t1;
        if (rc == 0) {
            memcpy(req->dist, svc->res_dist + (size_t)i * k, k * sizeof(float));
            memcpy(req->ids, svc->res_ids + (size_t)i * k, k * sizeof(uint64_t));
            fill_caches(svc, c, req, epoch);
        }
        complete(c, req, rc, 0, rc == 0 ? QV_SERVICE_OK : QV_SERVICE_OUT_ERROR);
    }
    qv__svc_hist_ns(c->stage[QV_SERVICE_STAGE_RESPOND], qv_now_ns() - t1);
}

/* One batch: stamp, then its groups one after another. */
static void run_batch(struct qv_service *svc, const struct qv_batch *b)
{
    struct svc_coll *c = qv__svc_lookup(svc, b->coll);
    struct qv_service_request **r = svc->grp;
    int64_t now = qv_now_ns();
    uint32_t m = b->n;

    atomic_fetch_add_explicit(&svc->n_batches, 1, memory_order_relaxed);
    qv_hist_record(c->batch_queries, b->n);
    for (uint32_t i = 0; i < m; i++) {
        r[i] = b->items[i];
        r[i]->t_taken = now;
        qv__svc_hist_ns(c->stage[QV_SERVICE_STAGE_QUEUE], now - r[i]->priv.arrival);
    }
    while (m > 0) {
        uint32_t g = take_group(r, m);
        run_group(svc, c, r, g);
        r += g;
        m -= g;
    }
    unqueue(svc, c, b->n);
}

static void run_batches(struct qv_service *svc, struct qv_batch **out, unsigned got)
{
    for (unsigned i = 0; i < got; i++) {
        run_batch(svc, out[i]);
        qv_batcher_done(svc->batcher, out[i]);
    }
}

/* Queries offered and not yet taken (consumer thread). */
static uint64_t queued(const struct qv_service *svc)
{
    struct qv_batcher_stats st;
    uint64_t q = 0;

    qv_batcher_stats(svc->batcher, &st);
    for (unsigned c = 0; c < QV_BATCH_CLASSES; c++)
        q += st.cls[c].offered - st.cls[c].refused_busy - st.cls[c].queries;
    return q;
}

static void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Nothing ready: sleep until the next flush or a wake (spin instead when
 * the next flush is under SVC_SPIN_NS away).  See service.h, "Threads and
 * waking". */
static void idle_wait(struct qv_service *svc, uint32_t seq)
{
    struct qv_batch *out[SVC_BURST];
    int64_t now, next, wait;
    unsigned got;

    atomic_store_explicit(&svc->sleeping, 1, memory_order_seq_cst);
    atomic_thread_fence(memory_order_seq_cst);
    now = qv_now_ns();
    got = qv_batcher_poll(svc->batcher, now, out, SVC_BURST);
    if (got != 0) {
        atomic_store_explicit(&svc->sleeping, 0, memory_order_relaxed);
        run_batches(svc, out, got);
        return;
    }
    next = qv_batcher_next_flush(svc->batcher, now);
    wait = next - now;
    if (wait > 0 && wait <= SVC_SPIN_NS) {
        /* a queue flushes within microseconds: a timed futex wait would
         * oversleep it by its timer's latency (tens of us on a VM) */
        atomic_store_explicit(&svc->sleeping, 0, memory_order_relaxed);
        while (qv_now_ns() < next && !atomic_load_explicit(&svc->pause_flag,
                                                            memory_order_acquire))
            cpu_relax();
        return;
    }
    if (next == INT64_MAX || wait > SVC_IDLE_MAX_NS)
        wait = SVC_IDLE_MAX_NS;
    if (wait > 0 && !atomic_load_explicit(&svc->pause_flag, memory_order_acquire) &&
        !atomic_load_explicit(&svc->closing, memory_order_acquire)) {
        /* idle: a pause from here on holds without waking us (see
         * qv_service_pause); one that came first is seen below */
        atomic_store_explicit(&svc->idle, 1, memory_order_seq_cst);
        atomic_thread_fence(memory_order_seq_cst);
        if (!atomic_load_explicit(&svc->pause_flag, memory_order_seq_cst))
            futex_wait_ns(svc, seq, wait);
        atomic_store_explicit(&svc->idle, 0, memory_order_seq_cst);
        atomic_thread_fence(memory_order_seq_cst);  /* before the caller's pause check */
    }
    atomic_store_explicit(&svc->sleeping, 0, memory_order_relaxed);
}

static void *dispatcher_main(void *arg)
{
    struct qv_service *svc = arg;
    struct qv_batch *out[SVC_BURST];

    prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);   /* precise idle timeouts */
    for (;;) {
        if (atomic_load_explicit(&svc->pause_flag, memory_order_acquire))
            park(svc);
        int closing = atomic_load_explicit(&svc->closing, memory_order_acquire);
        int64_t now = qv_now_ns();
        if (now - svc->eng.read_at >= SVC_ENGINES_EVERY_NS)
            qv__svc_engines_read(svc, now);
        uint32_t seq = atomic_load_explicit(&svc->wake_seq, memory_order_acquire);
        unsigned got = qv_batcher_poll(svc->batcher, closing ? now + SVC_DRAIN_AHEAD_NS : now,
                                       out, SVC_BURST);
        if (got != 0) {
            run_batches(svc, out, got);
            continue;
        }
        if (closing) {
            if (queued(svc) == 0)
                break;
            sched_yield();          /* an offer between its claim and publication */
            continue;
        }
        idle_wait(svc, seq);
    }
    return NULL;
}

/* ------------------------------------------------------------------ */
/* Create and free                                                     */
/* ------------------------------------------------------------------ */

/* Free what create() made; any part may be missing.  The thread is not
 * running. */
static void release(struct qv_service *svc)
{
    for (uint32_t i = 0; i < svc->ncoll; i++)
        coll_free(svc, svc->colls[i]);
    qv_free(svc->colls);
    qv_free(svc->table);
    qv_free(svc->grp);
    qv_free(svc->res_ids);
    qv_free(svc->res_dist);
    qv_batcher_free(svc->batcher);
    qv_semantic_cache_free(svc->scache);
    qv_result_cache_free(svc->rcache);
    if (svc->own_metrics)
        qv_metrics_free(svc->metrics);
    pthread_mutex_destroy(&svc->render_mu);
    pthread_mutex_destroy(&svc->rm_mu);
    pthread_mutex_destroy(&svc->add_mu);
    pthread_cond_destroy(&svc->cv);
    pthread_mutex_destroy(&svc->mu);
    qv_free(svc);
}

static int init_locks(struct qv_service *svc)
{
    int rc;

    if ((rc = pthread_mutex_init(&svc->mu, NULL)) != 0)
        goto fail;
    if ((rc = pthread_cond_init(&svc->cv, NULL)) != 0)
        goto fail_cv;
    if ((rc = pthread_mutex_init(&svc->add_mu, NULL)) != 0)
        goto fail_add;
    if ((rc = pthread_mutex_init(&svc->rm_mu, NULL)) != 0)
        goto fail_rm;
    if ((rc = pthread_mutex_init(&svc->render_mu, NULL)) != 0)
        goto fail_render;
    return 0;

fail_render:
    pthread_mutex_destroy(&svc->rm_mu);
fail_rm:
    pthread_mutex_destroy(&svc->add_mu);
fail_add:
    pthread_cond_destroy(&svc->cv);
fail_cv:
    pthread_mutex_destroy(&svc->mu);
fail:
    return qv_seterr(-rc, "service: cannot initialise its locks: %s", strerror(rc));
}

/* The batcher (with the service's cost model and hook) and the caches. */
static int make_parts(struct qv_service *svc)
{
    struct qv_batcher_opts bo = svc->o.batcher;
    const struct qv_cache_opts *co = &svc->o.cache;

    bo.cost_ns = qv__svc_cost_cb;
    bo.cost_arg = svc;
    bo.on_arrival = on_arrival;
    bo.on_arrival_arg = svc;
    svc->batcher = qv_batcher_create(&bo);
    if (svc->batcher == NULL)
        return qv_errno;
    if (co->entries > 0 && co->bytes > 0 &&
        (svc->rcache = qv_result_cache_create(co)) == NULL)
        return qv_errno;
    if (co->semantic_entries > 0 && (svc->scache = qv_semantic_cache_create(co)) == NULL)
        return qv_errno;
    svc->metrics = svc->o.metrics;
    if (svc->metrics == NULL) {
        svc->metrics = qv_metrics_create();
        if (svc->metrics == NULL)
            return qv_errno;
        svc->own_metrics = 1;
    }
    return 0;
}

/* Tables and the dispatcher's buffers. */
static int make_buffers(struct qv_service *svc)
{
    uint32_t hsize = 1;
    size_t pairs = (size_t)svc->max_batch * svc->o.max_k;

    while (hsize < 2 * svc->o.batcher.max_collections)
        hsize <<= 1;
    svc->hmask = hsize - 1;
    svc->table = qv_calloc(hsize, sizeof *svc->table, QV_MEM_ROUTER);
    svc->colls = qv_calloc(svc->o.batcher.max_collections, sizeof *svc->colls, QV_MEM_ROUTER);
    svc->res_dist = qv_malloc(pairs * sizeof(float), QV_MEM_ROUTER);
    svc->res_ids = qv_malloc(pairs * sizeof(uint64_t), QV_MEM_ROUTER);
    svc->grp = qv_malloc(svc->max_batch * sizeof *svc->grp, QV_MEM_ROUTER);
    if (!svc->table || !svc->colls || !svc->res_dist || !svc->res_ids || !svc->grp)
        return qv_seterr(QV_ENOMEM, "service: no memory for %zu result slots (max_batch "
                         "%u x max_k %u)", pairs, svc->max_batch, svc->o.max_k);
    return 0;
}

struct qv_service *qv_service_create(const struct qv_service_opts *o)
{
    struct qv_service_opts def;
    struct qv_service *svc;
    int rc;

    if (o == NULL) {
        qv_service_opts_default(&def);
        o = &def;
    }
    if ((rc = check_opts(o)) != 0)
        goto fail;
    svc = qv_calloc(1, sizeof *svc, QV_MEM_ROUTER);
    if (svc == NULL) {
        rc = QV_ENOMEM;
        goto fail;
    }
    svc->o = *o;
    svc->router = o->router;
    svc->engine = o->engine ? o->engine : (o->router ? qv_router_engine(o->router) : NULL);
    svc->max_batch = o->batcher.max_batch > 0 ? o->batcher.max_batch : 1;
    if ((rc = init_locks(svc)) != 0) {
        qv_free(svc);
        goto fail;
    }
    if ((rc = make_parts(svc)) != 0 || (rc = make_buffers(svc)) != 0 ||
        (rc = qv__svc_metrics_init(svc)) != 0)
        goto fail_parts;
    qv__svc_engines_read(svc, qv_now_ns());
    svc->pause_req = o->start_paused ? 1 : 0;
    atomic_store(&svc->pause_flag, svc->pause_req);
    if ((rc = pthread_create(&svc->thread, NULL, dispatcher_main, svc)) != 0) {
        rc = qv_seterr(-rc, "service: cannot start the dispatcher thread: %s", strerror(rc));
        goto fail_parts;
    }
    svc->started = 1;
    pthread_setname_np(svc->thread, "qv-dispatch");
    return svc;

fail_parts:
    release(svc);
fail:
    qv_errno = rc;
    return NULL;
}

void qv_service_free(struct qv_service *svc)
{
    if (svc == NULL)
        return;
    if (svc->started) {
        pthread_mutex_lock(&svc->mu);
        atomic_store_explicit(&svc->closing, 1, memory_order_release);
        svc->pause_req = 0;
        atomic_store_explicit(&svc->pause_flag, 0, memory_order_release);
        pthread_cond_broadcast(&svc->cv);
        pthread_mutex_unlock(&svc->mu);
        futex_wake_one(svc);
        pthread_join(svc->thread, NULL);
        svc->started = 0;
    }
    for (uint32_t i = 0; i < svc->ncoll; i++)
        if (!svc->colls[i]->detached)       /* retired ones are already */
            set_engine(svc->colls[i], NULL);
    release(svc);
}

/* ------------------------------------------------------------------ */
/* Queries about the service                                           */
/* ------------------------------------------------------------------ */

void qv_service_stats(struct qv_service *svc, struct qv_service_stats *out)
{
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&svc->add_mu);
    for (unsigned k = 0; k < QV_SERVICE_OUTCOMES; k++)
        out->outcomes[k] = svc->gone.outcomes[k];
    out->result_hits = svc->gone.hits[0];
    out->result_misses = svc->gone.misses[0];
    out->semantic_hits = svc->gone.hits[1];
    out->semantic_misses = svc->gone.misses[1];
    for (uint32_t i = 0; i < svc->ncoll; i++) {
        const struct svc_coll *c = svc->colls[i];
        for (unsigned k = 0; k < QV_SERVICE_OUTCOMES; k++)
            out->outcomes[k] += qv_counter_get(c->outcome[k]);
        out->result_hits += qv_counter_get(c->hits[0]);
        out->result_misses += qv_counter_get(c->misses[0]);
        out->semantic_hits += qv_counter_get(c->hits[1]);
        out->semantic_misses += qv_counter_get(c->misses[1]);
    }
    pthread_mutex_unlock(&svc->add_mu);
    out->outcomes[QV_SERVICE_OUT_INVALID] += qv_counter_get(svc->unknown_invalid);
    out->batches = atomic_load_explicit(&svc->n_batches, memory_order_relaxed);
    out->searches = atomic_load_explicit(&svc->n_searches, memory_order_relaxed);
    out->prefetch_calls = atomic_load_explicit(&svc->n_prefetch_calls, memory_order_relaxed);
    out->prefetch_started = atomic_load_explicit(&svc->n_prefetch_started,
                                                 memory_order_relaxed);
    out->searched = atomic_load_explicit(&svc->n_searched, memory_order_relaxed);
}

const struct qv_hist *qv_service_stage_hist(struct qv_service *svc, uint64_t id,
                                            enum qv_service_stage stage)
{
    const struct qv_hist *h = NULL;
    unsigned tok = qv_grace_lock(&svc->grace);
    struct svc_coll *c = qv__svc_lookup(svc, id);

    if (c != NULL && (unsigned)stage < QV_SERVICE_STAGES)
        h = c->stage[stage];
    qv_grace_unlock(&svc->grace, tok);
    return h;
}

double qv_service_predict_ns(struct qv_service *svc, uint64_t id, uint32_t n)
{
    double ns = -1.0;
    unsigned tok = qv_grace_lock(&svc->grace);
    struct svc_coll *c = qv__svc_lookup(svc, id);

    if (c != NULL)
        ns = qv__svc_model_cost(svc, c, n ? n : 1, c->model.p_default);
    qv_grace_unlock(&svc->grace, tok);
    return ns;
}
