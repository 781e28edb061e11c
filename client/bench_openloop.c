/*
 * bench_openloop.c - `quiverbench offline ... --rate R`: open-loop load on
 * the built index through the dynamic batcher (quiver/batcher.h).
 *
 * A generator thread offers queries (cycling through the query file) at
 * Poisson arrivals of rate R for --duration seconds to a batcher with one
 * collection, class INTERACTIVE, deadline = intended arrival + budget.
 * It sleeps until the next intended arrival (absolute clock_nanosleep;
 * no spinning, which on hyperthreaded CPUs would slow the searches) and
 * then offers every arrival now due, each with `now` = its intended
 * arrival time (the timer's slack, tens of us, shows in the latency), so a late generator
 * does not slow the offered load down: it offers the backlog at once.
 * The main thread is the dispatcher: it polls the batcher, runs each
 * batch as one search of the index (its queries gathered into one
 * array), and hands the batch back.  A query's latency is completion -
 * INTENDED arrival time, so queueing behind a slow batch counts in full
 * (no coordinated omission).  Refused offers (QV_EBUSY: the queue of
 * [batcher] queue_capacity queries is full) are counted as busy and have
 * no latency.
 *
 * Cost model for the batcher: cost(n) = a + b n ns, fitted before the
 * run from the median of timed searches of batches of 1 and of max_batch
 * queries.  1e9 / cost(1) is printed as the batch-1 capacity.
 *
 * Reported: offered_qps (arrivals / duration), qps (completed / time from
 * the first arrival to the last completion), p50/p99/p999 latency (us,
 * nearest rank over completed queries), busy (refused), mean_batch,
 * deadline_misses (batches dispatched after their earliest deadline).
 */
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <json-c/json.h>

#include "quiver/alloc.h"
#include "quiver/batcher.h"
#include "quiver/errors.h"
#include "quiver/timeutil.h"

#include "bench.h"
#include "bench_index.h"

#define OL_COLL 1
#define OL_FIT_REPS 7

struct ol_query {
    int64_t arrival;                /* intended arrival, ns */
    int64_t done;                   /* completion, ns; 0 = not completed */
    uint32_t qidx;                  /* row of the query file */
    int refused;
};

struct ol_gen {
    struct qv_batcher *b;
    struct ol_query *q;
    size_t n;
    _Atomic size_t offered;         /* arrivals handled (offered or refused) */
    _Atomic size_t refused;
};

struct ol_cost {
    double a, b;                    /* ns, ns per query */
};

static double ol_cost_fn(void *arg, uint64_t coll, uint32_t n)
{
    const struct ol_cost *c = arg;
    (void)coll;
    return c->a + c->b * n;
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
            if (qv_batcher_offer(g->b, OL_COLL, QV_BATCH_INTERACTIVE, g->q[i].arrival, 0,
                                 &g->q[i]) != 0) {
                g->q[i].refused = 1;
                atomic_fetch_add(&g->refused, 1);
            }
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

/* Median ns of OL_FIT_REPS searches of n queries. */
static double time_search(const struct qv__bench_openloop *ol, uint32_t n, float *dist,
                          uint64_t *ids)
{
    double t[OL_FIT_REPS];

    for (int r = 0; r < OL_FIT_REPS; r++) {
        size_t first = ((size_t)r * n) % (ol->nq - n + 1);
        int64_t t0 = qv_now_ns();
        if (ol->ops->search(ol->ix, ol->p, ol->queries + first * ol->dim, n, ol->k, NULL,
                            dist, ids) != 0)
            return -1.0;
        t[r] = (double)(qv_now_ns() - t0);
    }
    qsort(t, OL_FIT_REPS, sizeof t[0], cmp_dbl);
    return t[OL_FIT_REPS / 2];
}

static uint64_t ol_rand(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

int qv__bench_openloop(const struct qv__bench_openloop *ol)
{
    struct qv_batcher_opts bo = ol->bopts;
    struct qv_batcher *b = NULL;
    struct ol_gen gen;
    struct ol_cost cost;
    struct qv_batcher_stats st;
    struct ol_query *q = NULL;
    float *gather = NULL, *dist = NULL;
    uint64_t *ids = NULL;
    double *lat = NULL;
    pthread_t th;
    size_t n, ncomplete = 0, nlat = 0;
    uint32_t maxb;
    int64_t start, last_done = 0;
    int rc = QV_BENCH_EXIT_FAIL, started = 0;

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
    bo.cost_ns = ol_cost_fn;
    bo.cost_arg = &cost;

    n = (size_t)ceil(ol->rate * ol->duration_s);
    if (n == 0)
        n = 1;
    q = qv_calloc(n, sizeof *q, QV_MEM_BENCH);
    lat = qv_malloc(n * sizeof *lat, QV_MEM_BENCH);
    gather = qv_malloc((size_t)maxb * ol->dim * sizeof(float), QV_MEM_BENCH);
    dist = qv_malloc((size_t)maxb * ol->k * sizeof(float), QV_MEM_BENCH);
    ids = qv_malloc((size_t)maxb * ol->k * sizeof(uint64_t), QV_MEM_BENCH);
    if (!q || !lat || !gather || !dist || !ids) {
        fprintf(stderr, "quiverbench offline: --rate: no memory for %zu arrivals\n", n);
        goto out;
    }

    /* cost model: a + b n from batches of 1 and maxb */
    double t1 = time_search(ol, 1, dist, ids);
    double tm = maxb > 1 ? time_search(ol, maxb, dist, ids) : t1;
    if (t1 < 0 || tm < 0) {
        fprintf(stderr, "quiverbench offline: --rate: search failed: %s\n", qv_errmsg());
        goto out;
    }
    cost.b = maxb > 1 ? (tm - t1) / (maxb - 1) : 0.0;
    if (cost.b < 0)
        cost.b = 0;
    cost.a = t1 - cost.b;
    if (cost.a < 0)
        cost.a = 0;

    b = qv_batcher_create(&bo);
    if (b == NULL || qv_batcher_add_collection(b, OL_COLL, NULL) != 0) {
        fprintf(stderr, "quiverbench offline: --rate: batcher: %s\n", qv_errmsg());
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
    gen = (struct ol_gen){ .b = b, .q = q, .n = n };
    atomic_init(&gen.offered, 0);
    atomic_init(&gen.refused, 0);
    if (pthread_create(&th, NULL, ol_generator, &gen) != 0) {
        fprintf(stderr, "quiverbench offline: --rate: cannot start the generator\n");
        goto out;
    }
    started = 1;

    for (;;) {
        struct qv_batch *batch[1];
        size_t offered = atomic_load(&gen.offered);
        size_t refused = atomic_load(&gen.refused);
        if (offered == n && ncomplete + refused == n)
            break;
        if (qv_batcher_poll(b, qv_now_ns(), batch, 1) == 0) {
            sched_yield();
            continue;
        }
        struct qv_batch *bt = batch[0];
        for (uint32_t j = 0; j < bt->n; j++) {
            const struct ol_query *oq = bt->items[j];
            memcpy(gather + (size_t)j * ol->dim, ol->queries + (size_t)oq->qidx * ol->dim,
                   ol->dim * sizeof(float));
        }
        int src = ol->ops->search(ol->ix, ol->p, gather, bt->n, ol->k, NULL, dist, ids);
        int64_t now = qv_now_ns();
        if (src != 0) {
            fprintf(stderr, "quiverbench offline: --rate: search failed: %s\n",
                    qv_errmsg());
            qv_batcher_done(b, bt);
            goto out;
        }
        for (uint32_t j = 0; j < bt->n; j++)
            ((struct ol_query *)bt->items[j])->done = now;
        ncomplete += bt->n;
        last_done = now;
        qv_batcher_done(b, bt);
    }
    pthread_join(th, NULL);
    started = 0;

    for (size_t i = 0; i < n; i++)
        if (!q[i].refused)
            lat[nlat++] = (double)(q[i].done - q[i].arrival) * 1e-3;
    qsort(lat, nlat, sizeof *lat, cmp_dbl);
    qv_batcher_stats(b, &st);
    {
        const struct qv_batcher_class_stats *cs = &st.cls[QV_BATCH_INTERACTIVE];
        double span = (double)(q[n - 1].arrival - start) * 1e-9;
        double offered_qps = span > 0 ? (double)n / span : 0;
        double qps = last_done > start ? (double)ncomplete / ((double)(last_done - start) * 1e-9)
                                       : 0;
        double p50 = nlat ? qv__bench_quantile(lat, nlat, 0.50) : 0;
        double p99 = nlat ? qv__bench_quantile(lat, nlat, 0.99) : 0;
        double p999 = nlat ? qv__bench_quantile(lat, nlat, 0.999) : 0;
        double mean_batch = cs->batches ? (double)cs->queries / (double)cs->batches : 0;
        double cap1 = 1e9 / (cost.a + cost.b);

        if (ol->json) {
            struct json_object *o = json_object_new_object();
            json_object_object_add(o, "mode", json_object_new_string("openloop"));
            json_object_object_add(o, "rate", json_object_new_double(ol->rate));
            json_object_object_add(o, "offered_qps", json_object_new_double(offered_qps));
            json_object_object_add(o, "qps", json_object_new_double(qps));
            json_object_object_add(o, "p50_us", json_object_new_double(p50));
            json_object_object_add(o, "p99_us", json_object_new_double(p99));
            json_object_object_add(o, "p999_us", json_object_new_double(p999));
            json_object_object_add(o, "busy", json_object_new_int64((int64_t)cs->refused_busy));
            json_object_object_add(o, "mean_batch", json_object_new_double(mean_batch));
            json_object_object_add(o, "deadline_misses",
                                   json_object_new_int64((int64_t)cs->deadline_misses));
            json_object_object_add(o, "batching", json_object_new_boolean(bo.batching));
            json_object_object_add(o, "max_batch", json_object_new_int64(maxb));
            json_object_object_add(o, "budget_us", json_object_new_double(
                                       (double)bo.budget_ns[QV_BATCH_INTERACTIVE] * 1e-3));
            json_object_object_add(o, "duration_s", json_object_new_double(ol->duration_s));
            json_object_object_add(o, "arrivals", json_object_new_int64((int64_t)n));
            json_object_object_add(o, "cost_a_us", json_object_new_double(cost.a * 1e-3));
            json_object_object_add(o, "cost_b_us", json_object_new_double(cost.b * 1e-3));
            json_object_object_add(o, "capacity1_qps", json_object_new_double(cap1));
            json_object_object_add(o, "index", json_object_new_string(ol->index));
            json_object_object_add(o, "engine", json_object_new_string(ol->engine));
            json_object_object_add(o, "data", json_object_new_string(ol->data));
            printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
                                                          JSON_C_TO_STRING_NOSLASHESCAPE));
            json_object_put(o);
        } else {
            printf("open loop     Poisson %.0f/s for %.2f s (%zu arrivals), batching %s "
                   "(max %u), budget %.0f us\n", ol->rate, ol->duration_s, n,
                   bo.batching ? "on" : "off", maxb,
                   (double)bo.budget_ns[QV_BATCH_INTERACTIVE] * 1e-3);
            printf("cost model    %.1f us + %.2f us x n (batch-1 capacity %.0f qps)\n",
                   cost.a * 1e-3, cost.b * 1e-3, cap1);
            printf("%12s %12s %10s %10s %10s %8s %10s %8s\n", "offered_qps", "qps",
                   "p50_us", "p99_us", "p999_us", "busy", "mean_batch", "misses");
            printf("%12.1f %12.1f %10.1f %10.1f %10.1f %8llu %10.2f %8llu\n", offered_qps,
                   qps, p50, p99, p999, (unsigned long long)cs->refused_busy, mean_batch,
                   (unsigned long long)cs->deadline_misses);
        }
        fflush(stdout);
    }
    rc = QV_BENCH_EXIT_OK;

out:
    if (started) {
        /* a failed search: let the generator finish its schedule, then free */
        pthread_join(th, NULL);
    }
    qv_batcher_free(b);
    qv_free(ids);
    qv_free(dist);
    qv_free(gather);
    qv_free(lat);
    qv_free(q);
    return rc;
}
