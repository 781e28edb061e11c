/*
 * bench_openloop.c - `quiverbench offline ... --rate R`: open-loop load on
 * the built index through the query service (quiver/service.h): its
 * batcher, its dispatcher thread and its cost model.
 *
 * The index is registered as collection 1 of a service whose [batcher]
 * options come from the configuration (--batching and --budget-us
 * override them; one batch in flight at a time, as the one dispatcher
 * runs them) and whose caches are off (the queries cycle through the
 * query file: with caches on, repeats would be answered from memory and
 * the run would measure the cache, not the search).  Flat, IVF and
 * IVF-PQ search on --engine through the service; HNSW on the CPU.
 *
 * A generator thread submits queries (cycling through the query file) at
 * Poisson arrivals of rate R for --duration seconds, class INTERACTIVE,
 * each with `arrival` = its intended arrival time and the default
 * deadline (intended arrival + budget).  It sleeps until the next
 * intended arrival (absolute clock_nanosleep; no spinning, which on
 * hyperthreaded CPUs would slow the searches) and then submits every
 * arrival now due (the timer's slack, tens of us, shows in the latency),
 * so a late generator does not slow the offered load down: it submits
 * the backlog at once.  The service completes each request on its
 * dispatcher thread; the callback stamps the completion.  A query's
 * latency is completion - INTENDED arrival time, so queueing behind a
 * slow batch counts in full (no coordinated omission).  Refused
 * submissions (QV_EBUSY: the queue of [batcher] queue_capacity queries is
 * full) are counted as busy and have no latency; requests whose deadline
 * passed before their search are completed unsearched by the service
 * (QV_ETIMEDOUT): they count as deadline misses and keep their latency.
 *
 * Cost model: the service's (service_cost.c: the router's formula under
 * the router's calibrated parameters with --engine auto, else the generic
 * engine parameters, corrected online from observed
 * searches; for HNSW a fitted a + b n).  After the run it is read back as
 * a + b n from its predictions for batches of 1 and max_batch;
 * 1e9 / cost(1) is printed as the batch-1 capacity.
 *
 * Reported: offered_qps (arrivals / duration), qps (searched / time from
 * the first arrival to the last completion), p50/p99/p999 latency (us,
 * nearest rank over completed queries), busy (refused), mean_batch
 * (queries per index search), deadline_misses (requests that timed out),
 * and in the text output the p50/p99 of each stage of the service's
 * histograms (queue wait, search, respond, end to end).
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <json-c/json.h>

#include "quiver/alloc.h"
#include "quiver/errors.h"
#include "quiver/metrics.h"
#include "quiver/service.h"
#include "quiver/timeutil.h"

#include "bench.h"
#include "bench_index.h"

#define OL_COLL 1

struct ol_query {
    struct qv_service_request r;
    int64_t arrival;                /* intended arrival, ns */
    int64_t done;                   /* completion, ns; 0 = not completed */
    uint32_t qidx;                  /* row of the query file */
    int refused;                    /* submit's code, 0 = accepted */
};

struct ol_gen {
    struct qv_service *svc;
    const struct qv__bench_openloop *ol;
    struct ol_query *q;
    float *dist;                    /* n x k */
    uint64_t *ids;                  /* n x k */
    size_t n;
    _Atomic size_t offered;         /* arrivals handled (submitted or refused) */
    _Atomic size_t refused;
    _Atomic size_t completed;
};

static void ol_done(struct qv_service_request *req, void *arg)
{
    struct ol_gen *g = arg;
    struct ol_query *q = (struct ol_query *)req;

    q->done = req->t_done;
    atomic_fetch_add_explicit(&g->completed, 1, memory_order_release);
}

static void ol_submit(struct ol_gen *g, size_t i)
{
    struct ol_query *q = &g->q[i];
    const struct qv__bench_openloop *ol = g->ol;

    memset(&q->r, 0, sizeof q->r);
    q->r.collection = OL_COLL;
    q->r.query = ol->queries + (size_t)q->qidx * ol->dim;
    q->r.k = ol->k;
    q->r.cls = QV_BATCH_INTERACTIVE;
    q->r.arrival = q->arrival;
    q->r.dist = g->dist + i * ol->k;
    q->r.ids = g->ids + i * ol->k;
    q->r.done = ol_done;
    q->r.done_arg = g;
    int rc = qv_service_submit(g->svc, &q->r);
    if (rc != 0) {
        q->refused = rc;
        atomic_fetch_add(&g->refused, 1);
    }
}

static void *ol_generator(void *arg)
{
    struct ol_gen *g = arg;
    size_t i = 0;

    while (i < g->n) {
        int64_t now = qv_now_ns();
        if (now < g->q[i].arrival) {
            struct timespec ts = { .tv_sec = g->q[i].arrival / 1000000000LL,
                                   .tv_nsec = g->q[i].arrival % 1000000000LL };
            clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
            continue;
        }
        /* every arrival now due, each with its intended time */
        for (; i < g->n && g->q[i].arrival <= now; i++) {
            ol_submit(g, i);
            atomic_store(&g->offered, i + 1);
        }
    }
    return NULL;
}

static int cmp_dbl(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static uint64_t ol_rand(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

/* The collection for the bench's index type; 0 or QV_EINVAL. */
static int ol_collection(const struct qv__bench_openloop *ol, struct qv_service_collection *c)
{
    const struct qv_bench_params *p = ol->p;

    memset(c, 0, sizeof *c);
    c->dim = ol->dim;
    c->metric = p->metric;
    c->nprobe = p->nprobe;
    c->refine = p->refine;
    if (strcmp(ol->index, "flat") == 0) {
        c->index.type = QV_SERVICE_FLAT;
        c->index.flat = ol->ix;
    } else if (strcmp(ol->index, "ivf") == 0 || strcmp(ol->index, "sq8") == 0) {
        c->index.type = QV_SERVICE_IVF;
        c->index.ivf = ol->ix;
        c->code_size = strcmp(ol->index, "sq8") == 0 ? ol->dim : 0;
    } else if (strcmp(ol->index, "ivfpq") == 0) {
        c->index.type = QV_SERVICE_IVFPQ;
        c->index.ivfpq = ol->ix;
        c->code_size = p->m * p->nbits / 8 ? p->m * p->nbits / 8 : 1;
    } else if (strcmp(ol->index, "hnsw") == 0) {
        c->index.type = QV_SERVICE_HNSW;
        c->index.hnsw = ol->ix;
        c->ef = p->ef < ol->k ? ol->k : p->ef;
    } else {
        return qv_seterr(QV_EINVAL, "--rate: the %s index is not served by the service",
                         ol->index);
    }
    return 0;
}

/* The service over the bench's index; NULL + qv_errmsg(). */
static struct qv_service *ol_service(const struct qv__bench_openloop *ol,
                                     struct qv_batcher_opts *bo)
{
    struct qv_service_opts so;
    struct qv_service_collection c;
    struct qv_service *svc;

    qv_service_opts_default(&so);
    so.batcher = *bo;
    so.cache.entries = 0;           /* see the top of this file */
    so.cache.semantic_entries = 0;
    so.max_k = ol->k;
    so.engine = ol->p->engine;
    so.router = ol->router;         /* the model's parameters, the metrics */
    if (ol_collection(ol, &c) != 0)
        return NULL;
    svc = qv_service_create(&so);
    if (svc == NULL)
        return NULL;
    if (qv_service_add_collection(svc, OL_COLL, &c) != 0) {
        int rc = qv_errno;
        qv_service_free(svc);
        qv_errno = rc;
        return NULL;
    }
    return svc;
}

struct ol_stage {
    const char *name;
    double p50, p99;
    uint64_t count;
};

static void ol_stages(struct qv_service *svc, struct ol_stage st[QV_SERVICE_STAGES])
{
    static const char *const names[QV_SERVICE_STAGES] = {
        "queue_wait", "search", "distance", "traversal", "respond", "end_to_end",
    };
    struct qv_hist_snapshot *snap = qv_malloc(sizeof *snap, QV_MEM_BENCH);

    for (unsigned s = 0; s < QV_SERVICE_STAGES; s++) {
        st[s] = (struct ol_stage){ .name = names[s] };
        if (snap == NULL)
            continue;
        qv_hist_snapshot(qv_service_stage_hist(svc, OL_COLL, (enum qv_service_stage)s), snap);
        st[s].count = snap->count;
        st[s].p50 = (double)qv_hist_snapshot_quantile(snap, 0.50) * 1e-3;
        st[s].p99 = (double)qv_hist_snapshot_quantile(snap, 0.99) * 1e-3;
    }
    qv_free(snap);
}

struct ol_result {
    double offered_qps, qps, p50, p99, p999, mean_batch, cost_a, cost_b, cap1;
    uint64_t busy, timeouts, errors;
    struct ol_stage stage[QV_SERVICE_STAGES];
};

static void ol_print_json(const struct qv__bench_openloop *ol, const struct qv_batcher_opts *bo,
                          uint32_t maxb, size_t n, const struct ol_result *r)
{
    struct json_object *o = json_object_new_object();
    struct json_object *stages = json_object_new_object();

    json_object_object_add(o, "mode", json_object_new_string("openloop"));
    json_object_object_add(o, "rate", json_object_new_double(ol->rate));
    json_object_object_add(o, "offered_qps", json_object_new_double(r->offered_qps));
    json_object_object_add(o, "qps", json_object_new_double(r->qps));
    json_object_object_add(o, "p50_us", json_object_new_double(r->p50));
    json_object_object_add(o, "p99_us", json_object_new_double(r->p99));
    json_object_object_add(o, "p999_us", json_object_new_double(r->p999));
    json_object_object_add(o, "busy", json_object_new_int64((int64_t)r->busy));
    json_object_object_add(o, "mean_batch", json_object_new_double(r->mean_batch));
    json_object_object_add(o, "deadline_misses", json_object_new_int64((int64_t)r->timeouts));
    json_object_object_add(o, "batching", json_object_new_boolean(bo->batching));
    json_object_object_add(o, "max_batch", json_object_new_int64(maxb));
    json_object_object_add(o, "budget_us", json_object_new_double(
                               (double)bo->budget_ns[QV_BATCH_INTERACTIVE] * 1e-3));
    json_object_object_add(o, "duration_s", json_object_new_double(ol->duration_s));
    json_object_object_add(o, "arrivals", json_object_new_int64((int64_t)n));
    json_object_object_add(o, "cost_a_us", json_object_new_double(r->cost_a * 1e-3));
    json_object_object_add(o, "cost_b_us", json_object_new_double(r->cost_b * 1e-3));
    json_object_object_add(o, "capacity1_qps", json_object_new_double(r->cap1));
    for (unsigned s = 0; s < QV_SERVICE_STAGES; s++) {
        struct json_object *so = json_object_new_object();
        json_object_object_add(so, "p50_us", json_object_new_double(r->stage[s].p50));
        json_object_object_add(so, "p99_us", json_object_new_double(r->stage[s].p99));
        json_object_object_add(so, "count", json_object_new_int64((int64_t)r->stage[s].count));
        json_object_object_add(stages, r->stage[s].name, so);
    }
    json_object_object_add(o, "stages", stages);
    json_object_object_add(o, "index", json_object_new_string(ol->index));
    json_object_object_add(o, "engine", json_object_new_string(ol->engine));
    json_object_object_add(o, "data", json_object_new_string(ol->data));
    printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
                                                  JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put(o);
}

static void ol_print_text(const struct qv__bench_openloop *ol, const struct qv_batcher_opts *bo,
                          uint32_t maxb, size_t n, const struct ol_result *r)
{
    printf("open loop     Poisson %.0f/s for %.2f s (%zu arrivals), batching %s "
           "(max %u), budget %.0f us, through the service\n", ol->rate, ol->duration_s, n,
           bo->batching ? "on" : "off", maxb,
           (double)bo->budget_ns[QV_BATCH_INTERACTIVE] * 1e-3);
    printf("cost model    %.1f us + %.2f us x n, corrected online (batch-1 capacity "
           "%.0f qps)\n", r->cost_a * 1e-3, r->cost_b * 1e-3, r->cap1);
    printf("%12s %12s %10s %10s %10s %8s %10s %8s\n", "offered_qps", "qps", "p50_us",
           "p99_us", "p999_us", "busy", "mean_batch", "misses");
    printf("%12.1f %12.1f %10.1f %10.1f %10.1f %8llu %10.2f %8llu\n", r->offered_qps, r->qps,
           r->p50, r->p99, r->p999, (unsigned long long)r->busy, r->mean_batch,
           (unsigned long long)r->timeouts);
    printf("%-12s %10s %10s %10s   (service histograms, from submit)\n", "stage", "p50_us",
           "p99_us", "count");
    for (unsigned s = 0; s < QV_SERVICE_STAGES; s++)
        if (r->stage[s].count)
            printf("%-12s %10.1f %10.1f %10llu\n", r->stage[s].name, r->stage[s].p50,
                   r->stage[s].p99, (unsigned long long)r->stage[s].count);
}

/* The model read back as a + b n (paused: the model is dispatcher state). */
static void ol_model(struct qv_service *svc, uint32_t maxb, struct ol_result *r)
{
    qv_service_pause(svc);
    double c1 = qv_service_predict_ns(svc, OL_COLL, 1);
    double cm = qv_service_predict_ns(svc, OL_COLL, maxb);
    qv_service_resume(svc);
    r->cost_b = maxb > 1 ? (cm - c1) / (maxb - 1) : 0.0;
    r->cost_a = c1 - r->cost_b;
    r->cap1 = c1 > 0 ? 1e9 / c1 : 0;
}

static void ol_summarise(struct ol_gen *g, int64_t start, uint32_t maxb, double *lat,
                         struct ol_result *r)
{
    struct qv_service_stats st;
    size_t nlat = 0, n = g->n;
    int64_t last_done = start;

    for (size_t i = 0; i < n; i++) {
        if (g->q[i].refused)
            continue;
        lat[nlat++] = (double)(g->q[i].done - g->q[i].arrival) * 1e-3;
        if (g->q[i].done > last_done)
            last_done = g->q[i].done;
    }
    qsort(lat, nlat, sizeof *lat, cmp_dbl);
    qv_service_stats(g->svc, &st);
    double span = (double)(g->q[n - 1].arrival - start) * 1e-9;
    r->offered_qps = span > 0 ? (double)n / span : 0;
    r->qps = last_done > start ? (double)st.searched / ((double)(last_done - start) * 1e-9) : 0;
    r->p50 = nlat ? qv__bench_quantile(lat, nlat, 0.50) : 0;
    r->p99 = nlat ? qv__bench_quantile(lat, nlat, 0.99) : 0;
    r->p999 = nlat ? qv__bench_quantile(lat, nlat, 0.999) : 0;
    r->mean_batch = st.searches ? (double)st.searched / (double)st.searches : 0;
    r->busy = st.outcomes[QV_SERVICE_OUT_BUSY];
    r->timeouts = st.outcomes[QV_SERVICE_OUT_TIMEOUT];
    r->errors = st.outcomes[QV_SERVICE_OUT_ERROR];
    ol_model(g->svc, maxb, r);
    ol_stages(g->svc, r->stage);
}

int qv__bench_openloop(const struct qv__bench_openloop *ol)
{
    struct qv_batcher_opts bo = ol->bopts;
    struct qv_service *svc = NULL;
    struct ol_gen gen;
    struct ol_result res;
    struct ol_query *q = NULL;
    float *dist = NULL;
    uint64_t *ids = NULL;
    double *lat = NULL;
    pthread_t th;
    size_t n;
    uint32_t maxb;
    int64_t start;
    int rc = QV_BENCH_EXIT_FAIL;

    if (ol->batching >= 0)
        bo.batching = ol->batching;
    if (ol->budget_us > 0)
        bo.budget_ns[QV_BATCH_INTERACTIVE] = ol->budget_us * 1000;
    maxb = bo.batching ? bo.max_batch : 1;
    if (maxb > ol->nq)
        maxb = (uint32_t)ol->nq;
    if (bo.batching && bo.max_batch > maxb)
        bo.max_batch = maxb;
    /* the dispatcher runs one batch at a time: in-flight budgets of 1 */
    bo.inflight[QV_BATCH_INTERACTIVE] = 1;
    bo.workers[QV_BATCH_INTERACTIVE] = 1;

    n = (size_t)ceil(ol->rate * ol->duration_s);
    if (n == 0)
        n = 1;
    q = qv_calloc(n, sizeof *q, QV_MEM_BENCH);
    lat = qv_malloc(n * sizeof *lat, QV_MEM_BENCH);
    dist = qv_malloc(n * ol->k * sizeof(float), QV_MEM_BENCH);
    ids = qv_malloc(n * ol->k * sizeof(uint64_t), QV_MEM_BENCH);
    if (!q || !lat || !dist || !ids) {
        fprintf(stderr, "quiverbench offline: --rate: no memory for %zu arrivals\n", n);
        goto out;
    }
    svc = ol_service(ol, &bo);
    if (svc == NULL) {
        fprintf(stderr, "quiverbench offline: --rate: service: %s\n", qv_errmsg());
        goto out;
    }

    /* the Poisson schedule, from 20 ms in the future */
    uint64_t rs = ol->seed * 0x9e3779b97f4a7c15ULL + 1;
    start = qv_now_ns() + 20000000;
    double t = 0;
    for (size_t i = 0; i < n; i++) {
        double u = ((double)(ol_rand(&rs) >> 11) + 0.5) / 9007199254740992.0;
        t += -log(u) / ol->rate * 1e9;
        q[i].arrival = start + (int64_t)t;
        q[i].qidx = (uint32_t)(i % ol->nq);
    }
    gen = (struct ol_gen){ .svc = svc, .ol = ol, .q = q, .dist = dist, .ids = ids, .n = n };
    atomic_init(&gen.offered, 0);
    atomic_init(&gen.refused, 0);
    atomic_init(&gen.completed, 0);
    if (pthread_create(&th, NULL, ol_generator, &gen) != 0) {
        fprintf(stderr, "quiverbench offline: --rate: cannot start the generator\n");
        goto out;
    }
    /* the service's dispatcher searches; this thread only waits */
    for (;;) {
        size_t offered = atomic_load(&gen.offered);
        size_t done = atomic_load_explicit(&gen.completed, memory_order_acquire);
        if (offered == n && done + atomic_load(&gen.refused) == n)
            break;
        struct timespec ts = { .tv_sec = 0, .tv_nsec = 1000000 };
        nanosleep(&ts, NULL);
    }
    pthread_join(th, NULL);

    ol_summarise(&gen, start, maxb, lat, &res);
    if (res.errors) {
        size_t i = 0;
        while (i < n && (q[i].refused || q[i].r.status == 0 || q[i].r.status == QV_ETIMEDOUT))
            i++;
        fprintf(stderr, "quiverbench offline: --rate: %llu searches failed (first: %s)\n",
                (unsigned long long)res.errors, i < n ? qv_strerror(q[i].r.status) : "?");
        goto out;
    }
    if (ol->json)
        ol_print_json(ol, &bo, maxb, n, &res);
    else
        ol_print_text(ol, &bo, maxb, n, &res);
    fflush(stdout);
    rc = QV_BENCH_EXIT_OK;

out:
    qv_service_free(svc);
    qv_free(ids);
    qv_free(dist);
    qv_free(lat);
    qv_free(q);
    return rc;
}
