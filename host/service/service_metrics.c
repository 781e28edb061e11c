/*
 * service_metrics.c - the service's metrics (the list is in service.h):
 * registration (create and add_collection: the registry's slow path),
 * the refresh of what other modules count (router, batcher, caches) at
 * render time, and the render itself.
 *
 * Counters of other modules.  The router, the batcher and the caches
 * keep their own counters since create; the registry's counters only
 * add, so at each render the difference since the previous render is
 * added (last_* remember what was added so far).  Gauges are set.  The
 * router and the batcher belong to the dispatcher thread, so their
 * counters are copied while it is paused (qv_service_pause: it finishes
 * the batch in hand first; the copy takes microseconds); the caches are
 * thread-safe.  Windowed gauges (utilisation, route share) cover the time
 * since the previous render.  render_mu serialises concurrent renders.
 *
 * A collection's series (labelled collection="id") are registered when
 * it is added and unregistered when it is removed (or the service
 * freed), after its grace period, so /metrics shows the live collections
 * only.  The batcher's totals keep counting removed collections.
 */
#include <stdio.h>
#include <string.h>

#include "quiver/alloc.h"
#include "quiver/errors.h"
#include "quiver/timeutil.h"
#include "service_int.h"

static const char *const stage_name[QV_SERVICE_STAGES] = {
    "queue_wait", "search", "distance", "traversal", "respond", "end_to_end",
};
static const char *const outcome_name[QV_SERVICE_OUTCOMES] = {
    "ok", "cached", "approximate", "busy", "timeout", "invalid", "error", "shutdown",
};
static const char *const cache_name[SVC_CACHES] = { "result", "semantic" };
static const char *const class_name[QV_BATCH_CLASSES] = { "interactive", "bulk" };

void qv__svc_hist_ns(struct qv_hist *h, int64_t ns)
{
    qv_hist_record(h, ns > 0 ? (uint64_t)ns : 0);
}

uint64_t qv__svc_router_busy_ns(const struct qv_service *svc)
{
    struct qv_router_stats rs;
    uint64_t sum = 0;

    qv_router_stats(svc->router, &rs);
    for (unsigned i = 0; i < rs.nengines; i++)
        sum += rs.engine[i].observed_ns;
    return sum;
}

/* ---- registration ------------------------------------------------------ */

static int engine_metrics(struct qv_service *svc, unsigned i, const char *name);

/* Count the router's engines from now on: what they did before this
 * service existed is not the service's. */
static int engines_baseline(struct qv_service *svc)
{
    struct qv_router_stats rs;
    struct svc_gauges *g = &svc->g;
    int rc;

    qv_router_stats(svc->router, &rs);
    for (unsigned i = 0; i < rs.nengines && i < QV_ROUTER_MAX_ENGINES; i++) {
        if ((rc = engine_metrics(svc, i, rs.engine[i].name)) != 0)
            return rc;
        g->last_units[i] = rs.engine[i].units;
        g->last_failures[i] = rs.engine[i].failures;
        g->last_observed[i] = rs.engine[i].observed_ns;
    }
    return 0;
}

#define REG_FAILED(p) ((p) == NULL)

int qv__svc_metrics_init(struct qv_service *svc)
{
    struct qv_metrics *m = svc->metrics;
    struct svc_gauges *g = &svc->g;
    char lab[64];

    svc->unknown_invalid = qv_metrics_register_counter(m, "quiver_service_requests_total",
        "requests by outcome", "collection=\"unknown\",outcome=\"invalid\"");
    if (REG_FAILED(svc->unknown_invalid))
        return qv_errno;
    for (unsigned c = 0; c < QV_BATCH_CLASSES; c++) {
        snprintf(lab, sizeof lab, "class=\"%s\"", class_name[c]);
        g->depth[c] = qv_metrics_register_gauge(m, "quiver_batcher_queue_depth",
            "queries queued, not yet taken by the dispatcher", lab);
        g->inflight[c] = qv_metrics_register_gauge(m, "quiver_batcher_inflight",
            "batches handed out and not yet done", lab);
        g->misses[c] = qv_metrics_register_counter(m, "quiver_batcher_deadline_misses_total",
            "batches handed out after their earliest deadline", lab);
        if (!g->depth[c] || !g->inflight[c] || !g->misses[c])
            return qv_errno;
    }
    for (unsigned k = 0; k < SVC_CACHES; k++) {
        snprintf(lab, sizeof lab, "cache=\"%s\"", cache_name[k]);
        g->entries[k] = qv_metrics_register_gauge(m, "quiver_cache_entries",
            "entries held", lab);
        g->bytes[k] = qv_metrics_register_gauge(m, "quiver_cache_bytes", "bytes held", lab);
        g->evictions[k] = qv_metrics_register_counter(m, "quiver_cache_evictions_total",
            "entries evicted for room", lab);
        g->invalidations[k] = qv_metrics_register_counter(m,
            "quiver_cache_invalidations_total", "entries dropped after a write", lab);
        if (!g->entries[k] || !g->bytes[k] || !g->evictions[k] || !g->invalidations[k])
            return qv_errno;
    }
    g->last_at = qv_now_ns();
    return svc->router ? engines_baseline(svc) : 0;
}

int qv__svc_metrics_coll(struct qv_service *svc, struct svc_coll *c)
{
    struct qv_metrics *m = svc->metrics;
    char lab[128];

    for (unsigned s = 0; s < QV_SERVICE_STAGES; s++) {
        snprintf(lab, sizeof lab, "%s,stage=\"%s\"", c->label, stage_name[s]);
        c->stage[s] = qv_metrics_register_hist(m, "quiver_service_stage_ns",
            "latency of each stage of the query path, ns", lab);
        if (REG_FAILED(c->stage[s]))
            return qv_errno;
    }
    c->batch_queries = qv_metrics_register_hist(m, "quiver_service_batch_queries",
        "queries per batch taken by the dispatcher", c->label);
    c->searches = qv_metrics_register_counter(m, "quiver_service_searches_total",
        "index searches run (one per group of a batch)", c->label);
    if (!c->batch_queries || !c->searches)
        return qv_errno;
    for (unsigned o = 0; o < QV_SERVICE_OUTCOMES; o++) {
        snprintf(lab, sizeof lab, "%s,outcome=\"%s\"", c->label, outcome_name[o]);
        c->outcome[o] = qv_metrics_register_counter(m, "quiver_service_requests_total",
            "requests by outcome", lab);
        if (REG_FAILED(c->outcome[o]))
            return qv_errno;
    }
    for (unsigned k = 0; k < SVC_CACHES; k++) {
        snprintf(lab, sizeof lab, "%s,cache=\"%s\"", c->label, cache_name[k]);
        c->hits[k] = qv_metrics_register_counter(m, "quiver_service_cache_hits_total",
            "cache lookups that answered the request", lab);
        c->misses[k] = qv_metrics_register_counter(m, "quiver_service_cache_misses_total",
            "cache lookups that did not", lab);
        if (!c->hits[k] || !c->misses[k])
            return qv_errno;
    }
    return 0;
}

/* Unregister what qv__svc_metrics_coll registered (NULLs skipped): once
 * no thread can update them (the collection's grace period is over, or
 * the service is being freed). */
void qv__svc_metrics_coll_fini(struct qv_service *svc, struct svc_coll *c)
{
    struct qv_metrics *m = svc->metrics;

    for (unsigned s = 0; s < QV_SERVICE_STAGES; s++)
        qv_metrics_unregister_hist(m, c->stage[s]);
    qv_metrics_unregister_hist(m, c->batch_queries);
    qv_metrics_unregister_counter(m, c->searches);
    for (unsigned o = 0; o < QV_SERVICE_OUTCOMES; o++)
        qv_metrics_unregister_counter(m, c->outcome[o]);
    for (unsigned k = 0; k < SVC_CACHES; k++) {
        qv_metrics_unregister_counter(m, c->hits[k]);
        qv_metrics_unregister_counter(m, c->misses[k]);
    }
    memset(c->stage, 0, sizeof c->stage);
    memset(c->outcome, 0, sizeof c->outcome);
    memset(c->hits, 0, sizeof c->hits);
    memset(c->misses, 0, sizeof c->misses);
    c->batch_queries = NULL;
    c->searches = NULL;
}

/* ---- refresh ------------------------------------------------------------ */

/* Add to ctr what the module counted since the previous refresh. */
static void add_delta(struct qv_counter *ctr, uint64_t now_value, uint64_t *last)
{
    if (now_value > *last)
        qv_counter_add(ctr, now_value - *last);
    *last = now_value;
}

/* Register engine i's metrics under its name (first time, or a new name
 * in that slot).  0 or QV_E*. */
static int engine_metrics(struct qv_service *svc, unsigned i, const char *name)
{
    struct svc_gauges *g = &svc->g;
    struct qv_metrics *m = svc->metrics;
    char esc[2 * QV_ROUTER_NAME_MAX], lab[3 * QV_ROUTER_NAME_MAX];
    size_t len;

    if (g->units[i] != NULL && strcmp(g->names[i], name) == 0)
        return 0;
    if (qv_metrics_escape_label(name, esc, sizeof esc, &len) != 0)
        return QV_ENOSPC;
    snprintf(lab, sizeof lab, "engine=\"%s\"", esc);
    g->units[i] = qv_metrics_register_counter(m, "quiver_engine_units_total",
        "work units (parts) completed by the engine", lab);
    g->failures[i] = qv_metrics_register_counter(m, "quiver_engine_failures_total",
        "failed units and submits of the engine", lab);
    g->breaker[i] = qv_metrics_register_gauge(m, "quiver_engine_breaker_state",
        "circuit breaker: 0 closed, 1 open, 2 half-open", lab);
    g->util[i] = qv_metrics_register_gauge(m, "quiver_engine_utilisation_ppm",
        "observed busy ns / wall ns since the previous scrape, parts per million", lab);
    g->share[i] = qv_metrics_register_gauge(m, "quiver_engine_route_share_ppm",
        "share of the parts routed to the engine since the previous scrape, ppm", lab);
    if (!g->units[i] || !g->failures[i] || !g->breaker[i] || !g->util[i] || !g->share[i]) {
        g->units[i] = NULL;
        return qv_errno;
    }
    snprintf(g->names[i], sizeof g->names[i], "%s", name);
    g->last_units[i] = g->last_failures[i] = g->last_observed[i] = 0;
    return 0;
}

static void refresh_engines(struct qv_service *svc, const struct qv_router_stats *rs,
                            int64_t now)
{
    struct svc_gauges *g = &svc->g;
    double wall = (double)(now - g->last_at);
    uint64_t total = 0, du[QV_ROUTER_MAX_ENGINES] = { 0 };
    int ok[QV_ROUTER_MAX_ENGINES] = { 0 };

    for (unsigned i = 0; i < rs->nengines && i < QV_ROUTER_MAX_ENGINES; i++) {
        ok[i] = engine_metrics(svc, i, rs->engine[i].name) == 0;
        if (ok[i] && rs->engine[i].units >= g->last_units[i])
            total += du[i] = rs->engine[i].units - g->last_units[i];
    }
    for (unsigned i = 0; i < rs->nengines && i < QV_ROUTER_MAX_ENGINES; i++) {
        const struct qv_router_engine_stats *e = &rs->engine[i];
        if (!ok[i])
            continue;
        uint64_t busy = e->observed_ns - g->last_observed[i];
        qv_gauge_set(g->util[i], wall > 0 ? (int64_t)(1e6 * (double)busy / wall) : 0);
        qv_gauge_set(g->share[i], total ? (int64_t)(1e6 * (double)du[i] / (double)total) : 0);
        qv_gauge_set(g->breaker[i], (int64_t)e->breaker);
        add_delta(g->units[i], e->units, &g->last_units[i]);
        add_delta(g->failures[i], e->failures, &g->last_failures[i]);
        g->last_observed[i] = e->observed_ns;
    }
}

static void refresh_batcher(struct qv_service *svc, const struct qv_batcher_stats *bs)
{
    struct svc_gauges *g = &svc->g;

    for (unsigned c = 0; c < QV_BATCH_CLASSES; c++) {
        const struct qv_batcher_class_stats *cs = &bs->cls[c];
        qv_gauge_set(g->depth[c], (int64_t)(cs->offered - cs->refused_busy - cs->queries));
        qv_gauge_set(g->inflight[c], (int64_t)bs->inflight[c]);
        add_delta(g->misses[c], cs->deadline_misses, &g->last_misses[c]);
    }
}

static void refresh_caches(struct qv_service *svc)
{
    struct svc_gauges *g = &svc->g;
    struct qv_cache_stats cs;

    for (unsigned k = 0; k < SVC_CACHES; k++) {
        memset(&cs, 0, sizeof cs);
        if (k == 0 && svc->rcache)
            qv_result_cache_stats(svc->rcache, &cs);
        if (k == 1 && svc->scache)
            qv_semantic_cache_stats(svc->scache, &cs);
        qv_gauge_set(g->entries[k], (int64_t)cs.entries);
        qv_gauge_set(g->bytes[k], (int64_t)cs.bytes);
        add_delta(g->evictions[k], cs.evictions + cs.expirations, &g->last_evictions[k]);
        add_delta(g->invalidations[k], cs.invalidations, &g->last_invalidations[k]);
    }
}

int qv_service_render_metrics(struct qv_service *svc, char *buf, size_t cap, size_t *len)
{
    struct qv_router_stats rs;
    struct qv_batcher_stats bs;
    int64_t now;

    if (buf == NULL || cap == 0)     /* a size probe is not a scrape */
        return qv_metrics_render(svc->metrics, buf, cap, len);
    pthread_mutex_lock(&svc->render_mu);
    qv_service_pause(svc);
    if (svc->router)
        qv_router_stats(svc->router, &rs);
    qv_batcher_stats(svc->batcher, &bs);
    qv_service_resume(svc);
    now = qv_now_ns();
    if (svc->router)
        refresh_engines(svc, &rs, now);
    svc->g.last_at = now;
    refresh_batcher(svc, &bs);
    refresh_caches(svc);
    pthread_mutex_unlock(&svc->render_mu);
    return qv_metrics_render(svc->metrics, buf, cap, len);
}
