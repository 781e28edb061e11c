/*
 * test_batcher.c - the dynamic batcher (batcher.h), on an injected clock
 * (the `now` arguments): a full queue refuses at once and accepts again
 * after a poll; the batch size follows the arrival rate (fast stream ->
 * max_batch, slow -> 1 or 2) while no batch leaves later than its
 * earliest deadline minus its predicted cost and the margin; an early
 * deadline flushes its queue early; interactive before bulk; round-robin
 * over collections (a cold collection next to a hot one is served within
 * two polls); bulkhead budgets; batching off; two producer threads x
 * 100k offers with one poller losing and duplicating nothing; bad
 * arguments; allocation failures.  Removal: 1000 add / remove cycles
 * with max_collections 4 never hit ENOSPC; a busy collection is not
 * removed; the round-robin cursor stays put; removal while 4 producers
 * offer loses and duplicates nothing and later offers are QV_ENOENT.
 * The idle flush: a sparse stream is
 * served at once while the class is idle, a dense one still batches, a
 * busy class waits; next_flush() names the poll that flushes; the
 * arrival hook sees every query once, before any batch holds it.
 *
 * The cost model is a TEST DOUBLE: cost(n) = 50 us + 2 us x n.
 */
#include <CUnit/Basic.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quiver/alloc.h"
#include "quiver/batcher.h"
#include "quiver/config.h"
#include "quiver/errors.h"
#include "quiver/timeutil.h"

#define US 1000LL
#define MS 1000000LL

static double cost_calls;

static double test_cost(void *arg, uint64_t coll, uint32_t n)
{
    (void)arg;
    (void)coll;
    cost_calls++;
    return 50.0 * US + 2.0 * US * n;
}

static void opts_for_test(struct qv_batcher_opts *o)
{
    qv_batcher_opts_default(o);
    o->budget_ns[QV_BATCH_INTERACTIVE] = 10 * MS;
    o->budget_ns[QV_BATCH_BULK] = 100 * MS;
    o->margin_ns = 200 * US;
    o->cost_ns = test_cost;
}

static void *tag(uintptr_t i)
{
    return (void *)(i + 1);
}

static uintptr_t untag(void *p)
{
    return (uintptr_t)p - 1;
}

static int64_t live_router_blocks(void)
{
    struct qv_mem_stats st;
    qv_mem_stats(QV_MEM_ROUTER, &st);
    return st.live_blocks;
}

/* ---- backpressure ---------------------------------------------------- */

static void test_full_queue_ebusy(void)
{
    struct qv_batcher_opts o;
    struct qv_batcher_stats st;
    struct qv_batch *out[4];
    struct qv_batcher *b;
    int64_t now = 1000 * MS;

    opts_for_test(&o);
    o.queue_capacity = 4;
    o.max_batch = 4;
    b = qv_batcher_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_EQUAL(qv_batcher_add_collection(b, 1, NULL), 0);
    for (uintptr_t i = 0; i < 4; i++)
        CU_ASSERT_EQUAL(qv_batcher_offer(b, 1, QV_BATCH_INTERACTIVE, now, 0, tag(i)), 0);
    int64_t t0 = qv_now_ns();
    CU_ASSERT_EQUAL(qv_batcher_offer(b, 1, QV_BATCH_INTERACTIVE, now, 0, tag(4)), QV_EBUSY);
    CU_ASSERT_EQUAL(qv_batcher_offer(b, 1, QV_BATCH_INTERACTIVE, now, 0, tag(4)), QV_EBUSY);
    CU_ASSERT(qv_now_ns() - t0 < 50 * MS);          /* at once, no waiting */
    /* the other class's queue is separate */
    CU_ASSERT_EQUAL(qv_batcher_offer(b, 1, QV_BATCH_BULK, now, 0, tag(9)), 0);

    unsigned got = qv_batcher_poll(b, now, out, 1);
    CU_ASSERT_EQUAL_FATAL(got, 1);
    CU_ASSERT_EQUAL(out[0]->cls, QV_BATCH_INTERACTIVE);
    CU_ASSERT_EQUAL(out[0]->coll, 1);
    CU_ASSERT_EQUAL_FATAL(out[0]->n, 4);
    for (uintptr_t i = 0; i < 4; i++)
        CU_ASSERT_EQUAL(untag(out[0]->items[i]), i);
    /* space again, before done(): poll took the queries out of the ring */
    CU_ASSERT_EQUAL(qv_batcher_offer(b, 1, QV_BATCH_INTERACTIVE, now, 0, tag(5)), 0);
    qv_batcher_done(b, out[0]);

    qv_batcher_stats(b, &st);
    CU_ASSERT_EQUAL(st.cls[QV_BATCH_INTERACTIVE].offered, 7);
    CU_ASSERT_EQUAL(st.cls[QV_BATCH_INTERACTIVE].refused_busy, 2);
    CU_ASSERT_EQUAL(st.cls[QV_BATCH_INTERACTIVE].batches, 1);
    CU_ASSERT_EQUAL(st.cls[QV_BATCH_INTERACTIVE].hist[2], 1);
    CU_ASSERT_EQUAL(st.cls[QV_BATCH_BULK].offered, 1);
    CU_ASSERT_EQUAL(st.inflight[QV_BATCH_INTERACTIVE], 0);
    qv_batcher_free(b);
}

/* ---- rate adaptation -------------------------------------------------- */

struct stream_result {
    uint64_t batches, queries;
    uint32_t max_n, min_n;
    double mean_late;               /* sum of n over batches after the first 10 */
    uint64_t late_batches;
    int violations;                 /* now + cost(n) + margin > deadline */
};

/* nq arrivals every gap_ns on one queue, polled at each arrival and done
 * at once, then drained at the last arrival + budget. */
static void run_stream(struct qv_batcher *b, const struct qv_batcher_opts *o,
                       int64_t gap_ns, unsigned nq, struct stream_result *r)
{
    struct qv_batch *out[8];
    int64_t t = 5000 * MS;

    memset(r, 0, sizeof *r);
    r->min_n = UINT32_MAX;
    for (unsigned i = 0; i <= nq; i++) {
        int last = i == nq;
        if (last)
            t += o->budget_ns[QV_BATCH_INTERACTIVE];
        else
            CU_ASSERT_EQUAL(qv_batcher_offer(b, 1, QV_BATCH_INTERACTIVE, t, 0,
                                             tag(i)), 0);
        unsigned got;
        while ((got = qv_batcher_poll(b, t, out, 8)) != 0) {
            for (unsigned j = 0; j < got; j++) {
                uint32_t n = out[j]->n;
                if (!last && (double)t + test_cost(NULL, 1, n) + (double)o->margin_ns >
                    (double)out[j]->deadline)
                    r->violations++;
                r->batches++;
                r->queries += n;
                if (!last) {
                    if (n > r->max_n) r->max_n = n;
                    if (n < r->min_n) r->min_n = n;
                    if (r->batches > 10) {
                        r->mean_late += n;
                        r->late_batches++;
                    }
                }
                qv_batcher_done(b, out[j]);
            }
        }
        t += gap_ns;
    }
    if (r->late_batches)
        r->mean_late /= (double)r->late_batches;
}

static void test_batch_size_follows_rate(void)
{
    struct qv_batcher_opts o;
    struct stream_result fast, slow, slower;
    struct qv_batcher *b;

    opts_for_test(&o);
    o.max_batch = 64;
    o.queue_capacity = 4096;
    o.idle_flush = 0;       /* the target rules (a)-(c); this stream's batches
                               complete at once, so (d) would always see an
                               idle dispatcher */

    b = qv_batcher_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_EQUAL(qv_batcher_add_collection(b, 1, NULL), 0);
    run_stream(b, &o, 20 * US, 5000, &fast);        /* 50k qps */
    CU_ASSERT_EQUAL(fast.queries, 5000);
    CU_ASSERT_EQUAL(fast.violations, 0);
    CU_ASSERT(fast.mean_late >= 0.9 * 64);
    CU_ASSERT_EQUAL(fast.max_n, 64);
    CU_ASSERT_EQUAL(qv_batcher_target(b, 1, QV_BATCH_INTERACTIVE), 64);
    qv_batcher_free(b);

    b = qv_batcher_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_EQUAL(qv_batcher_add_collection(b, 1, NULL), 0);
    run_stream(b, &o, 6 * MS, 200, &slow);          /* 167 qps */
    CU_ASSERT_EQUAL(slow.queries, 200);
    CU_ASSERT_EQUAL(slow.violations, 0);
    CU_ASSERT(slow.max_n <= 2);
    CU_ASSERT(slow.mean_late >= 1.0 && slow.mean_late <= 2.0);
    CU_ASSERT_EQUAL(qv_batcher_target(b, 1, QV_BATCH_INTERACTIVE), 2);
    qv_batcher_free(b);

    b = qv_batcher_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_EQUAL(qv_batcher_add_collection(b, 1, NULL), 0);
    run_stream(b, &o, 15 * MS, 100, &slower);       /* 67 qps: gap > budget */
    CU_ASSERT_EQUAL(slower.queries, 100);
    CU_ASSERT_EQUAL(slower.violations, 0);
    CU_ASSERT_EQUAL(slower.max_n, 1);
    qv_batcher_free(b);
}

/* A middle rate: batches are cut by the budget (rule c), not the size. */
static void test_budget_cuts_batches(void)
{
    struct qv_batcher_opts o;
    struct stream_result r;
    struct qv_batcher *b;

    opts_for_test(&o);
    o.max_batch = 4096;
    o.queue_capacity = 4096;
    o.idle_flush = 0;       /* rules (a)-(c) alone: with the idle flush this
                               stream (gap 100 us > fixed part 50 us) is
                               served one query at a time */
    b = qv_batcher_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_EQUAL(qv_batcher_add_collection(b, 1, NULL), 0);
    /* 1 query / 100 us, budget 10 ms: target = largest n with
     * (n - 1) 100 + 50 + 2 n <= 9800 -> n = 96 */
    run_stream(b, &o, 100 * US, 3000, &r);
    CU_ASSERT_EQUAL(r.queries, 3000);
    CU_ASSERT_EQUAL(r.violations, 0);
    CU_ASSERT_EQUAL(qv_batcher_target(b, 1, QV_BATCH_INTERACTIVE), 96);
    CU_ASSERT(r.max_n <= 96 && r.mean_late >= 90.0);
    qv_batcher_free(b);
}

static void test_early_deadline_flushes(void)
{
    struct qv_batcher_opts o;
    struct qv_batch *out[4];
    struct qv_batcher *b;
    int64_t t = 100 * MS, early_dl = 0;
    int found = 0;

    opts_for_test(&o);
    o.max_batch = 64;
    o.idle_flush = 0;       /* rule (b) alone (see test_budget_cuts_batches) */
    b = qv_batcher_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_EQUAL(qv_batcher_add_collection(b, 1, NULL), 0);
    /* a 100 us stream (target 64 with a 10 ms budget); query 5 is due in
     * 1 ms */
    for (uintptr_t i = 0; i < 64 && !found; i++, t += 100 * US) {
        int64_t dl = 0;
        if (i == 5)
            early_dl = dl = t + 1 * MS;
        CU_ASSERT_EQUAL(qv_batcher_offer(b, 1, QV_BATCH_INTERACTIVE, t, dl, tag(i)), 0);
        unsigned got = qv_batcher_poll(b, t, out, 4);
        CU_ASSERT(got <= 1);
        if (got == 1) {
            if (i < 5) {                /* the first ones, before a rate is known */
                qv_batcher_done(b, out[0]);
                continue;
            }
            found = 1;
            CU_ASSERT(out[0]->n < 20);
            CU_ASSERT_EQUAL(out[0]->deadline, early_dl);
            CU_ASSERT(t + test_cost(NULL, 1, out[0]->n) + o.margin_ns <= early_dl);
            int has = 0;
            for (uint32_t j = 0; j < out[0]->n; j++)
                has |= untag(out[0]->items[j]) == 5;
            CU_ASSERT(has);
            qv_batcher_done(b, out[0]);
        }
    }
    CU_ASSERT(found);
    CU_ASSERT(t < early_dl);
    qv_batcher_free(b);
}

/* ---- order, fairness, bulkheads --------------------------------------- */

static void test_interactive_before_bulk(void)
{
    struct qv_batch *out[4];
    struct qv_batcher *b;
    struct qv_batcher_opts o;
    int64_t t = 10 * MS;

    opts_for_test(&o);
    b = qv_batcher_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_EQUAL(qv_batcher_add_collection(b, 1, NULL), 0);
    CU_ASSERT_EQUAL(qv_batcher_add_collection(b, 2, NULL), 0);
    CU_ASSERT_EQUAL(qv_batcher_offer(b, 1, QV_BATCH_BULK, t, 0, tag(1)), 0);
    CU_ASSERT_EQUAL(qv_batcher_offer(b, 2, QV_BATCH_BULK, t, 0, tag(2)), 0);
    CU_ASSERT_EQUAL(qv_batcher_offer(b, 2, QV_BATCH_INTERACTIVE, t + 1, 0, tag(3)), 0);
    CU_ASSERT_EQUAL_FATAL(qv_batcher_poll(b, t + 1, out, 1), 1);
    CU_ASSERT_EQUAL(out[0]->cls, QV_BATCH_INTERACTIVE);
    CU_ASSERT_EQUAL(untag(out[0]->items[0]), 3);
    qv_batcher_done(b, out[0]);
    CU_ASSERT_EQUAL_FATAL(qv_batcher_poll(b, t + 1, out, 4), 2);
    CU_ASSERT_EQUAL(out[0]->cls, QV_BATCH_BULK);
    CU_ASSERT_EQUAL(out[1]->cls, QV_BATCH_BULK);
    qv_batcher_done(b, out[0]);
    qv_batcher_done(b, out[1]);
    /* both at once: interactive first in out[] */
    CU_ASSERT_EQUAL(qv_batcher_offer(b, 1, QV_BATCH_BULK, t + 2, 0, tag(4)), 0);
    CU_ASSERT_EQUAL(qv_batcher_offer(b, 1, QV_BATCH_INTERACTIVE, t + 3, 0, tag(5)), 0);
    /* coll 1's bulk queue now has a rate (2 ns gaps) and would wait for
     * more: poll once its deadline is near */
    CU_ASSERT_EQUAL_FATAL(qv_batcher_poll(b, t + 100 * MS, out, 4), 2);
    CU_ASSERT_EQUAL(out[0]->cls, QV_BATCH_INTERACTIVE);
    CU_ASSERT_EQUAL(out[1]->cls, QV_BATCH_BULK);
    qv_batcher_done(b, out[0]);
    qv_batcher_done(b, out[1]);
    qv_batcher_free(b);
}

/* hot = 1000 queued, cold = 1 queued: cold within the first two polls,
 * whichever collection the cursor starts at. */
static void fairness_case(int cold_first_registered, int warm_up)
{
    struct qv_batcher_opts o;
    struct qv_batch *out[1];
    struct qv_batcher *b;
    const uint64_t hot = 70, cold = 90;
    int64_t t = 10 * MS;
    int cold_at = -1;

    opts_for_test(&o);
    o.max_batch = 8;
    b = qv_batcher_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    if (cold_first_registered)
        CU_ASSERT_EQUAL(qv_batcher_add_collection(b, cold, NULL), 0);
    CU_ASSERT_EQUAL(qv_batcher_add_collection(b, hot, NULL), 0);
    if (!cold_first_registered)
        CU_ASSERT_EQUAL(qv_batcher_add_collection(b, cold, NULL), 0);
    for (uintptr_t i = 0; i < 1000; i++)
        CU_ASSERT_EQUAL(qv_batcher_offer(b, hot, QV_BATCH_INTERACTIVE, t, 0, tag(i)), 0);
    for (int w = 0; w < warm_up; w++) {         /* hot alone for a while */
        CU_ASSERT_EQUAL_FATAL(qv_batcher_poll(b, t, out, 1), 1);
        CU_ASSERT_EQUAL(out[0]->coll, hot);
        qv_batcher_done(b, out[0]);
    }
    CU_ASSERT_EQUAL(qv_batcher_offer(b, cold, QV_BATCH_INTERACTIVE, t, 0, tag(5000)), 0);
    for (int p = 0; p < 4 && cold_at < 0; p++) {
        CU_ASSERT_EQUAL_FATAL(qv_batcher_poll(b, t, out, 1), 1);
        if (out[0]->coll == cold)
            cold_at = p;
        qv_batcher_done(b, out[0]);
    }
    CU_ASSERT(cold_at >= 0 && cold_at <= 1);
    qv_batcher_free(b);
}

static void test_round_robin_fairness(void)
{
    fairness_case(0, 0);
    fairness_case(1, 0);
    fairness_case(0, 3);
    fairness_case(1, 3);
}

static void test_bulkheads(void)
{
    struct qv_batcher_opts o;
    struct qv_batcher_stats st;
    struct qv_batch *out[32];
    struct qv_batcher *b;
    int64_t t = 10 * MS;
    unsigned got, per[3] = { 0, 0, 0 };

    opts_for_test(&o);
    o.max_batch = 4;
    o.inflight[QV_BATCH_INTERACTIVE] = 2;
    o.workers[QV_BATCH_INTERACTIVE] = 3;
    o.inflight[QV_BATCH_BULK] = 1;
    o.workers[QV_BATCH_BULK] = 1;
    b = qv_batcher_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    for (uint64_t c = 1; c <= 2; c++) {
        CU_ASSERT_EQUAL(qv_batcher_add_collection(b, c, NULL), 0);
        for (uintptr_t i = 0; i < 40; i++) {
            CU_ASSERT_EQUAL(qv_batcher_offer(b, c, QV_BATCH_INTERACTIVE, t, 0, tag(i)), 0);
            CU_ASSERT_EQUAL(qv_batcher_offer(b, c, QV_BATCH_BULK, t, 0, tag(i)), 0);
        }
    }
    got = qv_batcher_poll(b, t, out, 32);
    CU_ASSERT_EQUAL_FATAL(got, 4);                  /* 3 interactive + 1 bulk */
    for (unsigned j = 0; j < 3; j++) {
        CU_ASSERT_EQUAL(out[j]->cls, QV_BATCH_INTERACTIVE);
        per[out[j]->coll]++;
    }
    CU_ASSERT(per[1] <= 2 && per[2] <= 2);
    CU_ASSERT_EQUAL(out[3]->cls, QV_BATCH_BULK);
    CU_ASSERT_EQUAL(qv_batcher_poll(b, t, out + 4, 28), 0);      /* all budgets full */
    qv_batcher_stats(b, &st);
    CU_ASSERT_EQUAL(st.inflight[QV_BATCH_INTERACTIVE], 3);
    CU_ASSERT_EQUAL(st.inflight[QV_BATCH_BULK], 1);

    qv_batcher_done(b, out[0]);                     /* frees one interactive */
    got = qv_batcher_poll(b, t, out + 4, 28);
    CU_ASSERT_EQUAL_FATAL(got, 1);
    CU_ASSERT_EQUAL(out[4]->cls, QV_BATCH_INTERACTIVE);
    qv_batcher_done(b, out[3]);                     /* frees the bulk one */
    got = qv_batcher_poll(b, t, out + 5, 27);
    CU_ASSERT_EQUAL_FATAL(got, 1);
    CU_ASSERT_EQUAL(out[5]->cls, QV_BATCH_BULK);
    for (unsigned j = 1; j < 6; j++)
        if (j != 3)
            qv_batcher_done(b, out[j]);
    qv_batcher_stats(b, &st);
    CU_ASSERT_EQUAL(st.inflight[QV_BATCH_INTERACTIVE], 0);
    CU_ASSERT_EQUAL(st.inflight[QV_BATCH_BULK], 0);

    /* one collection alone gets at most its own budget (2), not 3 */
    qv_batcher_free(b);
    b = qv_batcher_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_EQUAL(qv_batcher_add_collection(b, 1, NULL), 0);
    for (uintptr_t i = 0; i < 40; i++)
        CU_ASSERT_EQUAL(qv_batcher_offer(b, 1, QV_BATCH_INTERACTIVE, t, 0, tag(i)), 0);
    got = qv_batcher_poll(b, t, out, 32);
    CU_ASSERT_EQUAL(got, 2);
    for (unsigned j = 0; j < got; j++)
        qv_batcher_done(b, out[j]);
    qv_batcher_free(b);
}

static void test_batching_off(void)
{
    struct qv_batcher_opts o;
    struct qv_batcher_stats st;
    struct qv_batch *out[16];
    int64_t t = 10 * MS;

    for (int mode = 0; mode < 2; mode++) {
        opts_for_test(&o);
        if (mode == 0)
            o.batching = 0;
        else
            o.max_batch = 1;
        o.inflight[QV_BATCH_INTERACTIVE] = 16;
        o.workers[QV_BATCH_INTERACTIVE] = 16;
        struct qv_batcher *b = qv_batcher_create(&o);
        CU_ASSERT_PTR_NOT_NULL_FATAL(b);
        CU_ASSERT_EQUAL(qv_batcher_add_collection(b, 3, NULL), 0);
        for (uintptr_t i = 0; i < 10; i++)
            CU_ASSERT_EQUAL(qv_batcher_offer(b, 3, QV_BATCH_INTERACTIVE, t, 0, tag(i)), 0);
        unsigned got = qv_batcher_poll(b, t, out, 16);
        CU_ASSERT_EQUAL(got, 10);
        for (unsigned j = 0; j < got; j++) {
            CU_ASSERT_EQUAL(out[j]->n, 1);
            CU_ASSERT_EQUAL(untag(out[j]->items[0]), j);
            qv_batcher_done(b, out[j]);
        }
        CU_ASSERT_EQUAL(qv_batcher_target(b, 3, QV_BATCH_INTERACTIVE), 1);
        qv_batcher_stats(b, &st);
        CU_ASSERT_EQUAL(st.cls[0].hist[0], 10);
        CU_ASSERT_EQUAL(st.cls[0].batches, 10);
        qv_batcher_free(b);
    }
}

static void test_deadline_miss_counted(void)
{
    struct qv_batcher_opts o;
    struct qv_batcher_stats st;
    struct qv_batch *out[2];

    opts_for_test(&o);
    o.workers[QV_BATCH_INTERACTIVE] = 1;
    o.inflight[QV_BATCH_INTERACTIVE] = 1;
    struct qv_batcher *b = qv_batcher_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_EQUAL(qv_batcher_add_collection(b, 1, NULL), 0);
    CU_ASSERT_EQUAL(qv_batcher_offer(b, 1, QV_BATCH_INTERACTIVE, 0 + 1, 0, tag(0)), 0);
    CU_ASSERT_EQUAL_FATAL(qv_batcher_poll(b, 1, out, 2), 1);
    CU_ASSERT_EQUAL(qv_batcher_offer(b, 1, QV_BATCH_INTERACTIVE, 2, 5 * MS, tag(1)), 0);
    CU_ASSERT_EQUAL(qv_batcher_poll(b, 3, out + 1, 1), 0);     /* bulkhead full */
    qv_batcher_done(b, out[0]);
    CU_ASSERT_EQUAL_FATAL(qv_batcher_poll(b, 6 * MS, out + 1, 1), 1);  /* too late */
    qv_batcher_done(b, out[1]);
    qv_batcher_stats(b, &st);
    CU_ASSERT_EQUAL(st.cls[0].deadline_misses, 1);
    CU_ASSERT_EQUAL(st.cls[0].queries, 2);
    qv_batcher_free(b);
}

/* ---- threads ---------------------------------------------------------- */

#define MT_PER_THREAD 100000u

struct producer {
    struct qv_batcher *b;
    unsigned id;
    uint64_t busy;
};

static void *producer_main(void *arg)
{
    struct producer *p = arg;

    for (uintptr_t i = 0; i < MT_PER_THREAD; i++) {
        uintptr_t v = p->id * MT_PER_THREAD + i;
        int rc;
        while ((rc = qv_batcher_offer(p->b, 1, QV_BATCH_INTERACTIVE, qv_now_ns(), 0,
                                      tag(v))) == QV_EBUSY) {
            p->busy++;
            sched_yield();
        }
        if (rc != 0)
            return (void *)1;
    }
    return NULL;
}

static void test_multithreaded_offers(void)
{
    struct qv_batcher_opts o;
    struct qv_batcher_stats st;
    struct producer prod[2];
    pthread_t th[2];
    struct qv_batch *out[8];
    uint8_t *seen;
    uint64_t total = 0, dup = 0;
    void *ret;

    opts_for_test(&o);
    o.queue_capacity = 32;          /* small: producers meet EBUSY too */
    o.max_batch = 16;
    o.cost_ns = NULL;
    struct qv_batcher *b = qv_batcher_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_EQUAL(qv_batcher_add_collection(b, 1, NULL), 0);
    seen = calloc(2 * MT_PER_THREAD, 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(seen);
    for (unsigned i = 0; i < 2; i++) {
        prod[i] = (struct producer){ .b = b, .id = i };
        CU_ASSERT_EQUAL_FATAL(pthread_create(&th[i], NULL, producer_main, &prod[i]), 0);
    }
    int64_t give_up = qv_now_ns() + 60000 * MS;
    while (total < 2 * MT_PER_THREAD && qv_now_ns() < give_up) {
        unsigned got = qv_batcher_poll(b, qv_now_ns(), out, 8);
        for (unsigned j = 0; j < got; j++) {
            for (uint32_t k = 0; k < out[j]->n; k++) {
                uintptr_t v = untag(out[j]->items[k]);
                if (v >= 2 * MT_PER_THREAD || seen[v]++)
                    dup++;
            }
            total += out[j]->n;
            qv_batcher_done(b, out[j]);
        }
    }
    for (unsigned i = 0; i < 2; i++) {
        pthread_join(th[i], &ret);
        CU_ASSERT_PTR_NULL(ret);
    }
    CU_ASSERT_EQUAL(total, 2 * MT_PER_THREAD);
    CU_ASSERT_EQUAL(dup, 0);
    uint64_t missing = 0;
    for (uint64_t v = 0; v < 2 * MT_PER_THREAD; v++)
        missing += seen[v] != 1;
    CU_ASSERT_EQUAL(missing, 0);
    qv_batcher_stats(b, &st);
    CU_ASSERT_EQUAL(st.cls[0].offered - st.cls[0].refused_busy, 2 * MT_PER_THREAD);
    CU_ASSERT_EQUAL(st.cls[0].refused_busy, prod[0].busy + prod[1].busy);
    CU_ASSERT_EQUAL(st.cls[0].queries, 2 * MT_PER_THREAD);
    fprintf(stderr, "\n  mt: %llu batches, mean %.1f, %llu busy refusals\n",
            (unsigned long long)st.cls[0].batches,
            (double)st.cls[0].queries / (double)st.cls[0].batches,
            (unsigned long long)st.cls[0].refused_busy);
    free(seen);
    qv_batcher_free(b);
}

/* ---- idle flush, next_flush, arrival hook ------------------------------ */

/* Sparse stream (1 ms gaps; the fixed part of a batch is 50 us): with the
 * idle flush every query leaves at the poll of its own arrival, in a
 * batch of 1; without it the same stream waits for batches: target n
 * = 10, the largest with (n - 1) 1000 + 50 + 2 n <= 9800 us. */
static void test_idle_flush_low_rate(void)
{
    struct qv_batcher_opts o;
    struct qv_batch *out[4];
    int64_t t = 100 * MS;

    for (int on = 0; on < 2; on++) {
        unsigned at_once = 0, batched = 0, total = 0;
        opts_for_test(&o);
        o.idle_flush = on;
        struct qv_batcher *b = qv_batcher_create(&o);
        CU_ASSERT_PTR_NOT_NULL_FATAL(b);
        CU_ASSERT_EQUAL(qv_batcher_add_collection(b, 1, NULL), 0);
        for (uintptr_t i = 0; i < 200; i++, t += 1 * MS) {
            CU_ASSERT_EQUAL(qv_batcher_offer(b, 1, QV_BATCH_INTERACTIVE, t, 0, tag(i)), 0);
            unsigned got = qv_batcher_poll(b, t, out, 4);
            for (unsigned j = 0; j < got; j++) {
                if (out[j]->n == 1 && untag(out[j]->items[0]) == i)
                    at_once++;
                if (out[j]->n > 1)
                    batched++;
                total += out[j]->n;
                qv_batcher_done(b, out[j]);
            }
        }
        if (on) {
            CU_ASSERT_EQUAL(at_once, 200);
            CU_ASSERT_EQUAL(batched, 0);
        } else {
            CU_ASSERT(at_once < 10);            /* the first, before a rate */
            CU_ASSERT(batched > 10);
            CU_ASSERT_EQUAL(qv_batcher_target(b, 1, QV_BATCH_INTERACTIVE), 10);
        }
        CU_ASSERT(total <= 200);
        qv_batcher_free(b);
    }
}

/* Dense stream (20 us gaps < 50 us fixed part) with an always idle
 * dispatcher: idle flush still batches, n queries leaving once n x 20 us
 * exceeds the fixed part (n = 3), not one by one and not waiting for
 * max_batch; and a class with a batch in flight is not idle: a sparse
 * stream then waits for its batch as before. */
static void test_idle_flush_high_rate_and_busy(void)
{
    struct qv_batcher_opts o;
    struct stream_result fast;
    struct qv_batch *out[4], *held;
    struct qv_batcher *b;
    int64_t t = 100 * MS;

    opts_for_test(&o);
    o.max_batch = 64;
    o.queue_capacity = 4096;
    CU_ASSERT_EQUAL(o.idle_flush, 1);           /* the default */
    b = qv_batcher_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_EQUAL(qv_batcher_add_collection(b, 1, NULL), 0);
    run_stream(b, &o, 20 * US, 5000, &fast);
    CU_ASSERT_EQUAL(fast.queries, 5000);
    CU_ASSERT_EQUAL(fast.violations, 0);
    CU_ASSERT(fast.mean_late >= 2.5 && fast.mean_late <= 3.5);
    CU_ASSERT_EQUAL(fast.max_n, 3);
    qv_batcher_free(b);

    opts_for_test(&o);
    o.inflight[QV_BATCH_INTERACTIVE] = 2;
    b = qv_batcher_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_EQUAL(qv_batcher_add_collection(b, 1, NULL), 0);
    CU_ASSERT_EQUAL(qv_batcher_add_collection(b, 2, NULL), 0);
    /* collection 2 holds a batch: the interactive class is busy */
    CU_ASSERT_EQUAL(qv_batcher_offer(b, 2, QV_BATCH_INTERACTIVE, t, 0, tag(999)), 0);
    CU_ASSERT_EQUAL_FATAL(qv_batcher_poll(b, t, out, 1), 1);
    held = out[0];
    unsigned polled_at_once = 0;
    for (uintptr_t i = 0; i < 20; i++, t += 1 * MS) {
        CU_ASSERT_EQUAL(qv_batcher_offer(b, 1, QV_BATCH_INTERACTIVE, t, 0, tag(i)), 0);
        unsigned got = qv_batcher_poll(b, t, out, 4);
        for (unsigned j = 0; j < got; j++) {
            if (i >= 2 && out[j]->n == 1)   /* rate known from query 2 on */
                polled_at_once++;
            qv_batcher_done(b, out[j]);
        }
    }
    CU_ASSERT_EQUAL(polled_at_once, 0);
    /* once idle again, the waiting queries leave at the next poll */
    qv_batcher_done(b, held);
    CU_ASSERT_EQUAL(qv_batcher_poll(b, t, out, 1), 1);
    CU_ASSERT(out[0]->n >= 1);
    qv_batcher_done(b, out[0]);
    qv_batcher_free(b);
}

/* next_flush(now) names the poll that flushes: none 1 us before it, one
 * at it; INT64_MAX with nothing queued; now when a queue is ready. */
static void next_flush_case(int idle_flush, int64_t gap)
{
    struct qv_batcher_opts o;
    struct qv_batch *out[2];
    int64_t t = 100 * MS;

    opts_for_test(&o);
    o.idle_flush = idle_flush;
    struct qv_batcher *b = qv_batcher_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_EQUAL(qv_batcher_add_collection(b, 1, NULL), 0);
    CU_ASSERT_EQUAL(qv_batcher_next_flush(b, t), INT64_MAX);
    /* two queries establish the rate; the first leaves at once (no rate) */
    CU_ASSERT_EQUAL(qv_batcher_offer(b, 1, QV_BATCH_INTERACTIVE, t, 0, tag(0)), 0);
    CU_ASSERT_EQUAL(qv_batcher_next_flush(b, t), t);
    CU_ASSERT_EQUAL_FATAL(qv_batcher_poll(b, t, out, 2), 1);
    qv_batcher_done(b, out[0]);
    for (uintptr_t i = 1; i < 4; i++) {
        t += gap;
        CU_ASSERT_EQUAL(qv_batcher_offer(b, 1, QV_BATCH_INTERACTIVE, t, 0, tag(i)), 0);
    }
    int64_t next = qv_batcher_next_flush(b, t);
    CU_ASSERT(next > t && next < t + 10 * MS);
    CU_ASSERT_EQUAL(qv_batcher_poll(b, next - 1 * US, out, 2), 0);
    CU_ASSERT_EQUAL(qv_batcher_next_flush(b, next - 1 * US), next);
    CU_ASSERT_EQUAL_FATAL(qv_batcher_poll(b, next, out, 2), 1);
    CU_ASSERT_EQUAL(out[0]->n, 3);
    qv_batcher_done(b, out[0]);
    CU_ASSERT_EQUAL(qv_batcher_next_flush(b, next), INT64_MAX);
    qv_batcher_free(b);
}

static void test_next_flush(void)
{
    next_flush_case(0, 20 * US);    /* rule (c): the next arrival is late */
    next_flush_case(1, 10 * US);    /* rule (d): 3 x 10 us gaps < 50 us fixed part */
    next_flush_case(0, 1 * US);     /* (c) with a fast rate: later */
}

#define HOOK_PER_THREAD 20000u

struct hook_state {
    _Atomic unsigned calls;
    uint8_t *hooked;                /* per item: times the hook saw it */
    int wrong;                      /* coll/cls not as offered */
};

static void count_arrival(void *arg, uint64_t coll, enum qv_batch_class cls, void *item)
{
    struct hook_state *h = arg;
    uintptr_t v = untag(item);

    if (coll != 1 + (v & 1) || cls != (enum qv_batch_class)((v >> 1) & 1))
        h->wrong++;
    h->hooked[v]++;
    atomic_fetch_add(&h->calls, 1);
}

static void *hook_producer(void *arg)
{
    struct producer *p = arg;

    for (uintptr_t i = 0; i < HOOK_PER_THREAD; i++) {
        uintptr_t v = p->id * HOOK_PER_THREAD + i;
        while (qv_batcher_offer(p->b, 1 + (v & 1), (enum qv_batch_class)((v >> 1) & 1),
                                qv_now_ns(), 0, tag(v)) == QV_EBUSY)
            sched_yield();
    }
    return NULL;
}

/* 2 producers over 2 collections x 2 classes; the poller also calls
 * next_flush: the hook sees each item exactly once, before its batch. */
static void test_arrival_hook(void)
{
    struct qv_batcher_opts o;
    struct hook_state h = { .wrong = 0 };
    struct producer prod[2];
    struct qv_batch *out[8];
    pthread_t th[2];
    uint64_t total = 0, early = 0;

    opts_for_test(&o);
    o.queue_capacity = 64;
    o.max_batch = 16;
    o.cost_ns = NULL;
    o.on_arrival = count_arrival;
    o.on_arrival_arg = &h;
    h.hooked = calloc(2 * HOOK_PER_THREAD, 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(h.hooked);
    atomic_init(&h.calls, 0);
    struct qv_batcher *b = qv_batcher_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_EQUAL(qv_batcher_add_collection(b, 1, NULL), 0);
    CU_ASSERT_EQUAL(qv_batcher_add_collection(b, 2, NULL), 0);
    for (unsigned i = 0; i < 2; i++) {
        prod[i] = (struct producer){ .b = b, .id = i };
        CU_ASSERT_EQUAL_FATAL(pthread_create(&th[i], NULL, hook_producer, &prod[i]), 0);
    }
    int64_t give_up = qv_now_ns() + 60000 * MS;
    while (total < 2 * HOOK_PER_THREAD && qv_now_ns() < give_up) {
        (void)qv_batcher_next_flush(b, qv_now_ns());
        unsigned got = qv_batcher_poll(b, qv_now_ns(), out, 8);
        for (unsigned j = 0; j < got; j++) {
            for (uint32_t k = 0; k < out[j]->n; k++)
                early += h.hooked[untag(out[j]->items[k])] != 1;
            total += out[j]->n;
            qv_batcher_done(b, out[j]);
        }
    }
    for (unsigned i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    CU_ASSERT_EQUAL(total, 2 * HOOK_PER_THREAD);
    CU_ASSERT_EQUAL(early, 0);
    CU_ASSERT_EQUAL(atomic_load(&h.calls), 2 * HOOK_PER_THREAD);
    CU_ASSERT_EQUAL(h.wrong, 0);
    uint64_t not_once = 0;
    for (uint64_t v = 0; v < 2 * HOOK_PER_THREAD; v++)
        not_once += h.hooked[v] != 1;
    CU_ASSERT_EQUAL(not_once, 0);
    free(h.hooked);
    qv_batcher_free(b);
}

/* ---- removal ----------------------------------------------------------- */

/* Poll and hand back everything ready at t; returns the queries seen. */
static unsigned drain(struct qv_batcher *b, int64_t t)
{
    struct qv_batch *out[16];
    unsigned got, n = 0;

    while ((got = qv_batcher_poll(b, t, out, 16)) != 0) {
        for (unsigned j = 0; j < got; j++) {
            n += out[j]->n;
            qv_batcher_done(b, out[j]);
        }
    }
    return n;
}

/* max_collections 4, three collections live: 1000 times add a fourth,
 * use it, remove it; never ENOSPC, the live ones keep working, nothing
 * leaks, the counters keep the removed collections' queries. */
static void test_add_remove_cycles(void)
{
    struct qv_batcher_opts o;
    struct qv_batcher_stats st;
    int64_t base = live_router_blocks(), t = 10 * MS;

    opts_for_test(&o);
    o.max_collections = 4;
    o.batching = 0;
    struct qv_batcher *b = qv_batcher_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    for (uint64_t c = 1; c <= 3; c++)
        CU_ASSERT_EQUAL_FATAL(qv_batcher_add_collection(b, c, NULL), 0);
    int64_t with3 = live_router_blocks();
    unsigned enospc = 0, bad = 0, served = 0;
    for (uint64_t i = 0; i < 1000; i++) {
        uint64_t id = 100 + i;
        int rc = qv_batcher_add_collection(b, id, NULL);
        enospc += rc == QV_ENOSPC;
        if (rc != 0)
            break;
        bad += qv_batcher_add_collection(b, 9999, NULL) != QV_ENOSPC;   /* 4 live */
        bad += qv_batcher_offer(b, id, (enum qv_batch_class)(i % 2), t, 0, tag(i)) != 0;
        bad += qv_batcher_offer(b, 1 + i % 3, QV_BATCH_INTERACTIVE, t, 0, tag(i)) != 0;
        served += drain(b, t);
        bad += qv_batcher_remove_collection(b, id) != 0;
        bad += qv_batcher_offer(b, id, QV_BATCH_INTERACTIVE, t, 0, tag(i)) != QV_ENOENT;
        bad += qv_batcher_target(b, id, QV_BATCH_INTERACTIVE) != 0;
        bad += qv_batcher_remove_collection(b, id) != QV_ENOENT;
        bad += live_router_blocks() != with3;
    }
    CU_ASSERT_EQUAL(enospc, 0);
    CU_ASSERT_EQUAL(bad, 0);
    CU_ASSERT_EQUAL(served, 2000);
    qv_batcher_stats(b, &st);
    CU_ASSERT_EQUAL(st.collections, 3);
    CU_ASSERT_EQUAL(st.cls[0].offered + st.cls[1].offered, 2000);
    CU_ASSERT_EQUAL(st.cls[0].queries + st.cls[1].queries, 2000);
    /* the same id again: a fresh collection */
    CU_ASSERT_EQUAL(qv_batcher_add_collection(b, 100, NULL), 0);
    CU_ASSERT_EQUAL(qv_batcher_offer(b, 100, QV_BATCH_BULK, t, 0, tag(7)), 0);
    CU_ASSERT_EQUAL(drain(b, t), 1);
    /* every one of 1, 2, 3 and 100 can be removed, in any order */
    CU_ASSERT_EQUAL(qv_batcher_remove_collection(b, 2), 0);
    CU_ASSERT_EQUAL(qv_batcher_offer(b, 3, QV_BATCH_BULK, t, 0, tag(8)), 0);
    CU_ASSERT_EQUAL(qv_batcher_offer(b, 100, QV_BATCH_BULK, t, 0, tag(9)), 0);
    CU_ASSERT_EQUAL(drain(b, t), 2);
    CU_ASSERT_EQUAL(qv_batcher_remove_collection(b, 100), 0);
    CU_ASSERT_EQUAL(qv_batcher_remove_collection(b, 1), 0);
    CU_ASSERT_EQUAL(qv_batcher_remove_collection(b, 3), 0);
    qv_batcher_stats(b, &st);
    CU_ASSERT_EQUAL(st.collections, 0);
    CU_ASSERT_EQUAL(st.cls[0].offered + st.cls[1].offered, 2003);
    CU_ASSERT_EQUAL(qv_batcher_poll(b, t, (struct qv_batch *[1]){ NULL }, 1), 0);
    CU_ASSERT_EQUAL(qv_batcher_next_flush(b, t), INT64_MAX);
    for (uint64_t c = 1; c <= 4; c++)                   /* all 4 places free */
        CU_ASSERT_EQUAL(qv_batcher_add_collection(b, 50 + c, NULL), 0);
    qv_batcher_free(b);
    CU_ASSERT_EQUAL(live_router_blocks(), base);
}

/* A collection with queries not yet taken, or a batch out, is not
 * removed (QV_EBUSY, still registered); unknown ids are QV_ENOENT. */
static void test_remove_busy(void)
{
    struct qv_batcher_opts o;
    struct qv_batch *out[2];
    int64_t t = 10 * MS;

    opts_for_test(&o);
    o.batching = 0;
    o.inflight[QV_BATCH_BULK] = 2;
    struct qv_batcher *b = qv_batcher_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_EQUAL(qv_batcher_remove_collection(b, 5), QV_ENOENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "5 is not registered"));
    CU_ASSERT_EQUAL_FATAL(qv_batcher_add_collection(b, 5, NULL), 0);
    CU_ASSERT_EQUAL(qv_batcher_offer(b, 5, QV_BATCH_BULK, t, 0, tag(0)), 0);
    CU_ASSERT_EQUAL(qv_batcher_remove_collection(b, 5), QV_EBUSY);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "1 queries"));
    CU_ASSERT_EQUAL(qv_batcher_offer(b, 5, QV_BATCH_BULK, t, 0, tag(1)), 0);  /* still there */
    CU_ASSERT_EQUAL_FATAL(qv_batcher_poll(b, t, out, 2), 2);
    CU_ASSERT_EQUAL(qv_batcher_remove_collection(b, 5), QV_EBUSY);            /* batches out */
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "2 batches out"));
    qv_batcher_done(b, out[0]);
    CU_ASSERT_EQUAL(qv_batcher_remove_collection(b, 5), QV_EBUSY);
    qv_batcher_done(b, out[1]);
    CU_ASSERT_EQUAL(qv_batcher_remove_collection(b, 5), 0);
    CU_ASSERT_EQUAL(qv_batcher_offer(b, 5, QV_BATCH_BULK, t, 0, tag(2)), QV_ENOENT);
    qv_batcher_free(b);
}

/* Removing a collection keeps the round-robin cursor on the collection
 * it named: A, B, C registered, B with two queries and C with one; a
 * poll serves B (the cursor moves to C); A is removed; the next poll
 * serves C, not B again. */
static void test_remove_keeps_round_robin(void)
{
    struct qv_batcher_opts o;
    struct qv_batch *out[1];
    int64_t t = 10 * MS;

    opts_for_test(&o);
    o.batching = 0;
    o.inflight[QV_BATCH_INTERACTIVE] = 4;
    struct qv_batcher *b = qv_batcher_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    for (uint64_t c = 1; c <= 3; c++)
        CU_ASSERT_EQUAL_FATAL(qv_batcher_add_collection(b, c, NULL), 0);
    CU_ASSERT_EQUAL(qv_batcher_offer(b, 2, QV_BATCH_INTERACTIVE, t, 0, tag(20)), 0);
    CU_ASSERT_EQUAL(qv_batcher_offer(b, 2, QV_BATCH_INTERACTIVE, t, 0, tag(21)), 0);
    CU_ASSERT_EQUAL(qv_batcher_offer(b, 3, QV_BATCH_INTERACTIVE, t, 0, tag(30)), 0);
    CU_ASSERT_EQUAL_FATAL(qv_batcher_poll(b, t, out, 1), 1);
    CU_ASSERT_EQUAL(out[0]->coll, 2);
    qv_batcher_done(b, out[0]);
    CU_ASSERT_EQUAL(qv_batcher_remove_collection(b, 1), 0);
    CU_ASSERT_EQUAL_FATAL(qv_batcher_poll(b, t, out, 1), 1);
    CU_ASSERT_EQUAL(out[0]->coll, 3);
    qv_batcher_done(b, out[0]);
    /* the last one removed while the cursor names it: back to the first */
    CU_ASSERT_EQUAL(qv_batcher_remove_collection(b, 3), 0);
    CU_ASSERT_EQUAL_FATAL(qv_batcher_poll(b, t, out, 1), 1);
    CU_ASSERT_EQUAL(out[0]->coll, 2);
    qv_batcher_done(b, out[0]);
    qv_batcher_free(b);
}

/*
 * Removal while 4 producers offer.  Collections 1 and 2 stay; a victim
 * (a new id each round) is added and offered to by the producers, then
 * removed: every other round after it was closed (producers stop choosing
 * it, but one that chose it just before may still offer: the window the
 * service's retire has), in the others while they go on offering to it
 * (drained and removed again until a removal finds it idle: those
 * removals race with offers in flight).  The producers also offer to the
 * id removed last (every such offer must be QV_ENOENT).  Each accepted
 * query must come out of exactly one batch; offers to 1 and 2 are never
 * QV_ENOENT; under ASan, no offer touches a freed collection.
 */
#define RM_THREADS 4
#define RM_PER_THREAD 200000u       /* offers tracked per producer */
#define RM_ROUNDS 60

static struct {
    _Atomic uint64_t victim;        /* open victim, 0: none */
    _Atomic uint64_t removed;       /* removed last, 0: none yet */
    _Atomic int stop;
} RM;

struct rm_producer {
    struct qv_batcher *b;
    unsigned id;
    uint8_t *accepted;              /* RM_PER_THREAD flags */
    unsigned bad_enoent, stale_ok, stale_offers, victim_offers;
};

/* Offers until told to stop; past RM_PER_THREAD tracked offers, only to
 * the id removed last (never accepted, so nothing to track). */
static void *rm_producer_main(void *arg)
{
    struct rm_producer *p = arg;

    for (uintptr_t i = 0; !atomic_load(&RM.stop); i++) {
        uintptr_t v = p->id * RM_PER_THREAD + i;
        uint64_t coll = 1 + i % 2, stale = 0;
        int rc;
        if (i >= RM_PER_THREAD) {
            stale = atomic_load(&RM.removed);
            if (stale == 0) {
                sched_yield();
                continue;
            }
            coll = stale;
        } else if (i % 4 == 2) {
            uint64_t vic = atomic_load(&RM.victim);
            if (vic != 0)
                coll = vic;
        } else if (i % 8 == 3) {
            stale = atomic_load(&RM.removed);
            if (stale != 0)
                coll = stale;
        }
        rc = qv_batcher_offer(p->b, coll, (enum qv_batch_class)(i % 3 == 0), qv_now_ns(), 0,
                              i < RM_PER_THREAD ? tag(v) : tag(UINT32_MAX));
        if (stale != 0) {
            p->stale_offers++;
            p->stale_ok += rc == QV_ENOENT;
        } else if (coll > 2) {
            p->victim_offers++;
        } else {
            p->bad_enoent += rc == QV_ENOENT;
        }
        if (i < RM_PER_THREAD)
            p->accepted[i] = rc == 0;
        if ((i & 63) == 0)
            sched_yield();
    }
    return NULL;
}

/* Take what poll gives at now: mark each query seen, count repeats. */
static void rm_take(struct qv_batcher *b, int64_t now, uint8_t *seen, uint64_t total,
                    uint64_t *polled, uint64_t *dup, unsigned *got_out)
{
    struct qv_batch *out[16];
    unsigned got = qv_batcher_poll(b, now, out, 16);

    for (unsigned j = 0; j < got; j++) {
        for (uint32_t q = 0; q < out[j]->n; q++) {
            uintptr_t v = untag(out[j]->items[q]);
            if (v >= total || seen[v]++)
                (*dup)++;
        }
        *polled += out[j]->n;
        qv_batcher_done(b, out[j]);
    }
    *got_out = got;
}

static void test_remove_while_offering(void)
{
    struct qv_batcher_opts o;
    struct rm_producer prod[RM_THREADS];
    pthread_t th[RM_THREADS];
    const uint64_t total = (uint64_t)RM_THREADS * RM_PER_THREAD;
    uint8_t *seen = calloc(total, 1);
    uint64_t polled = 0, dup = 0, rounds = 0, busy = 0;
    int64_t base = live_router_blocks();
    unsigned got;

    CU_ASSERT_PTR_NOT_NULL_FATAL(seen);
    opts_for_test(&o);
    o.cost_ns = NULL;
    o.max_collections = 4;
    o.queue_capacity = 64;
    o.max_batch = 16;
    struct qv_batcher *b = qv_batcher_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_EQUAL_FATAL(qv_batcher_add_collection(b, 1, NULL), 0);
    CU_ASSERT_EQUAL_FATAL(qv_batcher_add_collection(b, 2, NULL), 0);
    atomic_store(&RM.victim, 0);
    atomic_store(&RM.removed, 0);
    atomic_store(&RM.stop, 0);
    for (unsigned i = 0; i < RM_THREADS; i++) {
        prod[i] = (struct rm_producer){ .b = b, .id = i, .accepted = calloc(RM_PER_THREAD, 1) };
        CU_ASSERT_PTR_NOT_NULL_FATAL(prod[i].accepted);
        CU_ASSERT_EQUAL_FATAL(pthread_create(&th[i], NULL, rm_producer_main, &prod[i]), 0);
    }
    for (uint64_t vic = 1000; rounds < RM_ROUNDS; vic++) {
        int hot = vic % 2, rc;      /* hot: removed while the producers offer to it */
        CU_ASSERT_EQUAL_FATAL(qv_batcher_add_collection(b, vic, NULL), 0);
        atomic_store(&RM.victim, vic);
        for (unsigned k = 0; k < 100; k++) {        /* serve a while */
            rm_take(b, qv_now_ns(), seen, total, &polled, &dup, &got);
            if (got == 0)
                sched_yield();
        }
        if (!hot)
            atomic_store(&RM.victim, 0);
        while ((rc = qv_batcher_remove_collection(b, vic)) == QV_EBUSY) {
            busy++;
            rm_take(b, qv_now_ns() + 1000 * MS, seen, total, &polled, &dup, &got);
        }
        CU_ASSERT_EQUAL(rc, 0);
        atomic_store(&RM.victim, 0);
        atomic_store(&RM.removed, vic);
        rounds++;
    }
    /* let the producers meet the last removal, then stop them */
    for (unsigned k = 0; k < 100; k++) {
        rm_take(b, qv_now_ns(), seen, total, &polled, &dup, &got);
        sched_yield();
    }
    atomic_store(&RM.stop, 1);
    unsigned bad_enoent = 0, stale_ok = 0, stale = 0, victim = 0;
    uint64_t accepted = 0, lost = 0;
    for (unsigned i = 0; i < RM_THREADS; i++)
        pthread_join(th[i], NULL);
    do
        rm_take(b, qv_now_ns() + 1000 * MS, seen, total, &polled, &dup, &got);
    while (got != 0);
    for (unsigned i = 0; i < RM_THREADS; i++) {
        bad_enoent += prod[i].bad_enoent;
        stale_ok += prod[i].stale_ok;
        stale += prod[i].stale_offers;
        victim += prod[i].victim_offers;
        for (uint64_t k = 0; k < RM_PER_THREAD; k++) {
            accepted += prod[i].accepted[k];
            lost += prod[i].accepted[k] && !seen[i * RM_PER_THREAD + k];
        }
        free(prod[i].accepted);
    }
    fprintf(stderr, "\n  %llu rounds, %u offers to victims, %u to removed ids, "
            "%llu busy removals\n", (unsigned long long)rounds, victim, stale,
            (unsigned long long)busy);
    CU_ASSERT(stale > 0);
    CU_ASSERT_EQUAL(stale_ok, stale);
    CU_ASSERT_EQUAL(bad_enoent, 0);
    CU_ASSERT_EQUAL(dup, 0);
    CU_ASSERT_EQUAL(lost, 0);
    CU_ASSERT_EQUAL(polled, accepted);
    qv_batcher_free(b);
    CU_ASSERT_EQUAL(live_router_blocks(), base);
    free(seen);
}

/* ---- errors, configuration, allocation failures ----------------------- */

static void test_bad_arguments(void)
{
    struct qv_batcher_opts o;
    struct qv_batcher_coll_opts co;
    struct qv_batcher *b;

    opts_for_test(&o);
    o.queue_capacity = 1000;
    CU_ASSERT_PTR_NULL(qv_batcher_create(&o));
    CU_ASSERT_EQUAL(qv_errno, QV_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "queue_capacity"));
    opts_for_test(&o);
    o.max_batch = 0;
    CU_ASSERT_PTR_NULL(qv_batcher_create(&o));
    CU_ASSERT_EQUAL(qv_errno, QV_EINVAL);
    opts_for_test(&o);
    o.max_batch = QV_BATCHER_MAX_BATCH + 1;
    CU_ASSERT_PTR_NULL(qv_batcher_create(&o));
    opts_for_test(&o);
    o.ewma_alpha = 0;
    CU_ASSERT_PTR_NULL(qv_batcher_create(&o));
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "ewma_alpha"));
    opts_for_test(&o);
    o.budget_ns[QV_BATCH_BULK] = 0;
    CU_ASSERT_PTR_NULL(qv_batcher_create(&o));
    opts_for_test(&o);
    o.inflight[QV_BATCH_INTERACTIVE] = 0;
    CU_ASSERT_PTR_NULL(qv_batcher_create(&o));
    opts_for_test(&o);
    o.workers[QV_BATCH_BULK] = 0;
    CU_ASSERT_PTR_NULL(qv_batcher_create(&o));
    opts_for_test(&o);
    o.max_collections = 0;
    CU_ASSERT_PTR_NULL(qv_batcher_create(&o));
    opts_for_test(&o);
    o.margin_ns = -1;
    CU_ASSERT_PTR_NULL(qv_batcher_create(&o));

    opts_for_test(&o);
    o.max_collections = 2;
    b = qv_batcher_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_EQUAL(qv_batcher_offer(b, 1, QV_BATCH_INTERACTIVE, 1, 0, tag(0)), QV_ENOENT);
    CU_ASSERT_EQUAL(qv_batcher_add_collection(b, 1, NULL), 0);
    CU_ASSERT_EQUAL(qv_batcher_add_collection(b, 1, NULL), QV_EEXIST);
    memset(&co, 0, sizeof co);
    co.queue_capacity = 3;
    CU_ASSERT_EQUAL(qv_batcher_add_collection(b, 2, &co), QV_EINVAL);
    co.queue_capacity = 8;
    co.inflight[QV_BATCH_BULK] = 5000;
    CU_ASSERT_EQUAL(qv_batcher_add_collection(b, 2, &co), QV_EINVAL);
    co.inflight[QV_BATCH_BULK] = 0;
    co.budget_ns[0] = -5;
    CU_ASSERT_EQUAL(qv_batcher_add_collection(b, 2, &co), QV_EINVAL);
    co.budget_ns[0] = 0;
    CU_ASSERT_EQUAL(qv_batcher_add_collection(b, 2, &co), 0);     /* capacity 8 */
    for (uintptr_t i = 0; i < 8; i++)
        CU_ASSERT_EQUAL(qv_batcher_offer(b, 2, QV_BATCH_BULK, 1, 0, tag(i)), 0);
    CU_ASSERT_EQUAL(qv_batcher_offer(b, 2, QV_BATCH_BULK, 1, 0, tag(8)), QV_EBUSY);
    CU_ASSERT_EQUAL(qv_batcher_add_collection(b, 3, NULL), QV_ENOSPC);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "max_collections"));
    CU_ASSERT_EQUAL(qv_batcher_offer(b, 1, (enum qv_batch_class)7, 1, 0, tag(0)),
                    QV_EINVAL);
    CU_ASSERT_EQUAL(qv_batcher_target(b, 99, QV_BATCH_INTERACTIVE), 0);
    qv_batcher_free(b);
    qv_batcher_free(NULL);
}

static void test_config(void)
{
    struct qv_batcher_opts a, d;
    struct qv_config *cfg = qv_config_defaults();

    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    CU_ASSERT_EQUAL(qv_batcher_opts_from_config(cfg, &a), 0);
    qv_batcher_opts_default(&d);
    CU_ASSERT_EQUAL(memcmp(&a, &d, sizeof a), 0);
    CU_ASSERT_EQUAL(qv_config_set(cfg, "batcher", "queue_capacity", "1000"), QV_ECONFIG);
    CU_ASSERT_EQUAL(qv_config_set(cfg, "batcher", "max_batch", "0"), QV_ECONFIG);
    CU_ASSERT_EQUAL(qv_config_set(cfg, "batcher", "batching", "off"), 0);
    CU_ASSERT_EQUAL(qv_config_set(cfg, "batcher", "interactive_budget_us", "2500"), 0);
    CU_ASSERT_EQUAL(qv_batcher_opts_from_config(cfg, &a), 0);
    CU_ASSERT_EQUAL(a.batching, 0);
    CU_ASSERT_EQUAL(a.budget_ns[QV_BATCH_INTERACTIVE], 2500 * US);
    qv_config_free(cfg);
}

static void test_enomem(void)
{
    int64_t base = live_router_blocks();
    struct qv_batcher *b = NULL;
    long n, fails = 0;

    for (n = 0; n < 100; n++) {
        qv_alloc_fail_after(n);
        b = qv_batcher_create(NULL);
        qv_alloc_fail_after(-1);
        if (b != NULL)
            break;
        fails++;
        CU_ASSERT_EQUAL(qv_errno, QV_ENOMEM);
        CU_ASSERT_EQUAL(live_router_blocks(), base);
    }
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_EQUAL(fails, 3);
    int64_t with_b = live_router_blocks();
    int rc = -1;
    for (n = 0, fails = 0; n < 100; n++) {
        qv_alloc_fail_after(n);
        rc = qv_batcher_add_collection(b, 42, NULL);
        qv_alloc_fail_after(-1);
        if (rc == 0)
            break;
        fails++;
        CU_ASSERT_EQUAL(rc, QV_ENOMEM);
        CU_ASSERT_EQUAL(live_router_blocks(), with_b);
    }
    CU_ASSERT_EQUAL(rc, 0);
    CU_ASSERT_EQUAL(fails, 7);      /* the collection + 3 blocks per queue */
    CU_ASSERT_EQUAL(qv_batcher_offer(b, 42, QV_BATCH_BULK, 1, 0, tag(0)), 0);
    qv_batcher_free(b);
    CU_ASSERT_EQUAL(live_router_blocks(), base);
}

int main(void)
{
    static const struct {
        const char *name;
        void (*fn)(void);
    } tests[] = {
        { "full queue refuses with EBUSY at once, accepts after poll", test_full_queue_ebusy },
        { "batch size follows the arrival rate, deadlines kept", test_batch_size_follows_rate },
        { "the budget cuts batches at a middle rate", test_budget_cuts_batches },
        { "an early deadline flushes its queue early", test_early_deadline_flushes },
        { "interactive before bulk", test_interactive_before_bulk },
        { "round-robin: a cold collection within two polls", test_round_robin_fairness },
        { "bulkheads cap batches in flight; done releases", test_bulkheads },
        { "batching off: batches of 1", test_batching_off },
        { "a batch dispatched late counts as a deadline miss", test_deadline_miss_counted },
        { "idle flush: a sparse stream leaves at once", test_idle_flush_low_rate },
        { "idle flush: a dense stream batches, a busy class waits",
          test_idle_flush_high_rate_and_busy },
        { "next_flush names the poll that flushes", test_next_flush },
        { "the arrival hook sees each query once, before its batch", test_arrival_hook },
        { "2 producers x 100k offers, one poller: each query once", test_multithreaded_offers },
        { "add / remove 1000 times with max_collections 4", test_add_remove_cycles },
        { "remove refuses a collection with queries or batches out", test_remove_busy },
        { "remove keeps the round-robin cursor", test_remove_keeps_round_robin },
        { "remove while 4 producers offer: each query once, ENOENT after",
          test_remove_while_offering },
        { "bad arguments", test_bad_arguments },
        { "[batcher] configuration", test_config },
        { "allocation failures at create and add_collection", test_enomem },
    };
    CU_pSuite s;
    unsigned fails;

    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    s = CU_add_suite("batcher", NULL, NULL);
    for (size_t i = 0; s && i < sizeof tests / sizeof tests[0]; i++)
        CU_add_test(s, tests[i].name, tests[i].fn);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    fails = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
    CU_cleanup_registry();
    return fails ? 1 : 0;
}
