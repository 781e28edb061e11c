/*
 * test_service.c - the query service (service.h) on a small random set
 * (2000 x 16, L2): answers through the service equal direct qv_*_search
 * for flat, IVF (through a real router over the CPU engine) and HNSW;
 * requests of mixed k and nprobe in one batch are grouped into one search
 * per (k, nprobe); a repeat is a CACHED hit equal to the first answer;
 * bump_epoch makes the next one miss and see the vector just added; the
 * semantic threshold is obeyed both ways; a full queue refuses with
 * EBUSY; an expired request times out unsearched; invalid requests and
 * collections are refused with the right code and a message naming the
 * field; 4 producer threads x 1500 requests each complete exactly once;
 * free() completes queued requests; the idle flush serves a sparse stream
 * at once; the cost model grows with n; the metrics text holds the stage
 * histograms and cache counters with consistent values.  Removal: 1000
 * add / search / remove cycles with max_collections 4 never hit ENOSPC,
 * leave no series and no memory behind, and the id comes back new;
 * removal while 4 producers submit completes every accepted request once
 * and refuses later ones with QV_ENOENT.
 */
#include <CUnit/Basic.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "quiver/alloc.h"
#include "quiver/config.h"
#include "quiver/engine.h"
#include "quiver/errors.h"
#include "quiver/flat.h"
#include "quiver/hnsw.h"
#include "quiver/ivf.h"
#include "quiver/metrics.h"
#include "quiver/router.h"
#include "quiver/service.h"
#include "quiver/timeutil.h"
#include "quiver/topk.h"

#define DIM 16
#define NB 2000
#define NQ 64
#define KMAX 20
#define NLIST 16
#define MS 1000000LL

enum { C_FLAT = 1, C_IVF = 2, C_HNSW = 3 };

static struct {
    float *base, *queries;
    struct qv_flat *flat;
    struct qv_ivf *ivf;
    struct qv_hnsw *hnsw;
    struct qv_engine *cpu;
    struct qv_router *router;
} F;

/* ---- fixture ----------------------------------------------------------- */

static uint64_t rng = 0x9e3779b97f4a7c15ULL;

static float frand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

static int suite_init(void)
{
    F.base = malloc(sizeof(float) * NB * DIM);
    F.queries = malloc(sizeof(float) * NQ * DIM);
    if (!F.base || !F.queries)
        return -1;
    for (size_t i = 0; i < (size_t)NB * DIM; i++)
        F.base[i] = frand();
    for (size_t i = 0; i < (size_t)NQ * DIM; i++)
        F.queries[i] = frand();
    struct qv_flat_opts fo = { .dim = DIM, .metric = QV_METRIC_L2, .segment_capacity = 1024,
                               .numa_node = -1, .hugepages = QV_HUGE_OFF };
    F.flat = qv_flat_create(&fo);
    if (!F.flat || qv_flat_add(F.flat, NB, F.base, NULL) != 0)
        return -1;
    struct qv_ivf_opts io = { .dim = DIM, .metric = QV_METRIC_L2, .encoding = QV_IVF_FLAT,
                              .nlist = NLIST, .seed = 7 };
    F.ivf = qv_ivf_create(&io);
    if (!F.ivf || qv_ivf_train(F.ivf, F.base, NB) != 0 ||
        qv_ivf_add(F.ivf, NB, F.base, NULL) != 0)
        return -1;
    struct qv_hnsw_opts ho = { .dim = DIM, .metric = QV_METRIC_L2, .M = 8,
                               .ef_construction = 64, .ef_search = 32, .seed = 3,
                               .numa_node = -1, .hugepages = QV_HUGE_OFF };
    F.hnsw = qv_hnsw_build(&ho, NB, F.base, NULL);
    if (!F.hnsw)
        return -1;
    struct qv_router_opts ro;
    qv_router_opts_default(&ro);
    ro.calibrate = 0;
    F.router = qv_router_create(&ro);
    F.cpu = qv_engine_cpu_create(NULL);
    if (!F.router || !F.cpu ||
        qv_router_add(F.router, "cpu", F.cpu,
                      QV_ROUTER_CLEAN_FAIL | QV_ROUTER_SYNC | QV_ROUTER_HOST_CORES) != 0)
        return -1;
    return 0;
}

static int suite_fini(void)
{
    qv_hnsw_free(F.hnsw);
    qv_ivf_free(F.ivf);
    qv_flat_free(F.flat);
    qv_router_free(F.router);
    qv_engine_free(F.cpu);
    free(F.queries);
    free(F.base);
    return 0;
}

static const float *query(unsigned i)
{
    return F.queries + (size_t)(i % NQ) * DIM;
}

/* A request with its own result arrays and a completion record. */
struct treq {
    struct qv_service_request r;
    float dist[KMAX];
    uint64_t ids[KMAX];
    float q[DIM];                   /* a query of its own, when needed */
    _Atomic int calls;
    int inline_done;                /* done ran inside submit */
};

static __thread int in_submit;

static void on_done(struct qv_service_request *req, void *arg)
{
    struct treq *t = arg;

    (void)req;
    t->inline_done = in_submit;
    atomic_fetch_add_explicit(&t->calls, 1, memory_order_release);
}

static void treq_init(struct treq *t, uint64_t coll, const float *q, uint32_t k)
{
    memset(t, 0, sizeof *t);
    atomic_init(&t->calls, 0);
    t->r.collection = coll;
    t->r.query = q;
    t->r.k = k;
    t->r.dist = t->dist;
    t->r.ids = t->ids;
    t->r.done = on_done;
    t->r.done_arg = t;
}

static int submit(struct qv_service *svc, struct treq *t)
{
    in_submit = 1;
    int rc = qv_service_submit(svc, &t->r);
    in_submit = 0;
    return rc;
}

/* Wait until every request of t[0..n) completed (at most 10 s). */
static int wait_all(struct treq *t, unsigned n)
{
    int64_t give_up = qv_now_ns() + 10000 * MS;

    for (unsigned i = 0; i < n; i++)
        while (atomic_load_explicit(&t[i].calls, memory_order_acquire) == 0) {
            if (qv_now_ns() > give_up)
                return 0;
            sched_yield();
        }
    return 1;
}

static void sleep_ns(int64_t ns)
{
    struct timespec ts = { .tv_sec = ns / 1000000000LL, .tv_nsec = ns % 1000000000LL };
    nanosleep(&ts, NULL);
}

static struct qv_service *service(int router, int paused, uint32_t queue_capacity)
{
    struct qv_service_opts o;

    qv_service_opts_default(&o);
    o.router = router ? F.router : NULL;
    o.start_paused = paused;
    o.max_k = KMAX;
    o.cache.entries = 1000;
    o.cache.bytes = 1 << 20;
    o.cache.semantic_entries = 64;
    if (queue_capacity)
        o.batcher.queue_capacity = queue_capacity;
    return qv_service_create(&o);
}

static int add(struct qv_service *svc, uint64_t id)
{
    struct qv_service_collection c = { .dim = DIM, .metric = QV_METRIC_L2 };

    switch (id) {
    case C_FLAT:
        c.index.type = QV_SERVICE_FLAT;
        c.index.flat = F.flat;
        break;
    case C_IVF:
        c.index.type = QV_SERVICE_IVF;
        c.index.ivf = F.ivf;
        c.nprobe = 4;
        break;
    default:
        c.index.type = QV_SERVICE_HNSW;
        c.index.hnsw = F.hnsw;
        c.ef = 32;
        break;
    }
    return qv_service_add_collection(svc, id, &c);
}

/* Direct search of query i (before any service uses the index). */
static void direct(uint64_t coll, unsigned i, uint32_t k, uint32_t p, float *d, uint64_t *ids)
{
    int rc = -1;

    if (coll == C_FLAT)
        rc = qv_flat_search(F.flat, query(i), 1, k, NULL, d, ids);
    else if (coll == C_IVF)
        rc = qv_ivf_search(F.ivf, query(i), 1, k, p, NULL, d, ids);
    else
        rc = qv_hnsw_search(F.hnsw, query(i), 1, k, p < k ? k : p, NULL, d, ids);
    CU_ASSERT_EQUAL(rc, 0);
}

static int same_answer(const float *d1, const uint64_t *i1, const float *d2,
                       const uint64_t *i2, uint32_t k)
{
    for (uint32_t j = 0; j < k; j++)
        if (i1[j] != i2[j] || fabsf(d1[j] - d2[j]) > 1e-4f * (1.0f + fabsf(d1[j])))
            return 0;
    return 1;
}

/* ---- answers --------------------------------------------------------- */

static void test_equals_direct(void)
{
    static const uint64_t colls[] = { C_FLAT, C_IVF, C_HNSW };
    static struct treq t[NQ];
    float want_d[NQ][10];
    uint64_t want_i[NQ][10];

    for (unsigned c = 0; c < 3; c++) {
        for (unsigned i = 0; i < NQ; i++)
            direct(colls[c], i, 10, colls[c] == C_IVF ? 4 : 32, want_d[i], want_i[i]);
        struct qv_service *svc = service(1, 0, 0);
        CU_ASSERT_PTR_NOT_NULL_FATAL(svc);
        CU_ASSERT_EQUAL_FATAL(add(svc, colls[c]), 0);
        for (unsigned i = 0; i < NQ; i++) {
            treq_init(&t[i], colls[c], query(i), 10);
            CU_ASSERT_EQUAL(submit(svc, &t[i]), 0);
        }
        CU_ASSERT_FATAL(wait_all(t, NQ));
        unsigned bad = 0;
        for (unsigned i = 0; i < NQ; i++) {
            bad += t[i].r.status != 0 || atomic_load(&t[i].calls) != 1 ||
                   !same_answer(t[i].dist, t[i].ids, want_d[i], want_i[i], 10);
            CU_ASSERT(t[i].r.t_done >= t[i].r.t_searched && t[i].r.t_searched >= t[i].r.t_taken);
        }
        CU_ASSERT_EQUAL(bad, 0);
        struct qv_service_stats st;
        qv_service_stats(svc, &st);
        CU_ASSERT_EQUAL(st.searched, NQ);
        CU_ASSERT_EQUAL(st.outcomes[QV_SERVICE_OK], NQ);
        qv_service_free(svc);
    }
}

/* ---- predictive prefetch -------------------------------------------- */

/* An engine "with device memory" that runs units on a CPU engine of its
 * own and counts the prefetches it is asked for; prefetch answers ret
 * (> 0: the number of lists, as if every copy started). */
struct devfake {
    struct qv_engine base;
    struct qv_engine *cpu;
    int ret;
    unsigned prefetches, lists;
    struct qv_work_unit *done[64];
    unsigned ndone;
};

static void devfake_caps(const struct qv_engine *e, struct qv_engine_caps *out)
{
    (void)e;
    *out = (struct qv_engine_caps){ .kinds = (1u << QV_WU__COUNT) - 1, .max_dim = 65536,
                                    .device_memory = 1ull << 30 };
}

static int devfake_submit(struct qv_engine *e, struct qv_work_unit *wu)
{
    struct devfake *D = e->priv;
    if (D->ndone == 64)
        return QV_EBUSY;
    wu->status = qv_engine_run(D->cpu, wu);
    D->done[D->ndone++] = wu;
    return 0;
}

static int devfake_poll(struct qv_engine *e, struct qv_work_unit **done, int max)
{
    struct devfake *D = e->priv;
    int n = 0;
    while (n < max && D->ndone)
        done[n++] = D->done[--D->ndone];
    return n;
}

static int devfake_health(const struct qv_engine *e)
{
    (void)e;
    return 0;
}

static void devfake_free(struct qv_engine *e)
{
    (void)e;
}

static int devfake_prefetch(struct qv_engine *e, const struct qv_work_unit *wu)
{
    struct devfake *D = e->priv;
    D->prefetches++;
    D->lists += wu->nlists;
    return D->ret > 0 ? (int)wu->nlists : D->ret;
}

static const struct qv_engine_ops devfake_ops = {
    .name = "devfake", .caps = devfake_caps, .submit = devfake_submit,
    .poll = devfake_poll, .health = devfake_health, .free = devfake_free,
    .prefetch = devfake_prefetch,
};

/* n IVF requests through a service over a router holding only a devfake
 * answering ret; the service's stats and the fake's counts out. */
static void prefetch_run(int ret, unsigned n, struct qv_service_stats *st, struct devfake *D)
{
    static struct treq t[256];
    struct qv_router_opts ro;
    struct qv_service_opts o;

    memset(D, 0, sizeof *D);
    D->base = (struct qv_engine){ .ops = &devfake_ops, .priv = D };
    D->cpu = qv_engine_cpu_create(NULL);
    D->ret = ret;
    qv_router_opts_default(&ro);
    ro.calibrate = 0;
    struct qv_router *r = qv_router_create(&ro);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    CU_ASSERT_EQUAL_FATAL(qv_router_add(r, "dev", &D->base,
                                        QV_ROUTER_CLEAN_FAIL | QV_ROUTER_SYNC), 0);
    qv_service_opts_default(&o);
    o.router = r;
    o.max_k = KMAX;
    o.cache.entries = 0;
    o.cache.semantic_entries = 0;
    o.batcher.queue_capacity = 256;
    o.start_paused = 1;
    struct qv_service *svc = qv_service_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(svc);
    CU_ASSERT_EQUAL_FATAL(add(svc, C_IVF), 0);
    for (unsigned i = 0; i < n; i++) {
        treq_init(&t[i], C_IVF, query(i), 10);
        CU_ASSERT_EQUAL(submit(svc, &t[i]), 0);
    }
    qv_service_resume(svc);
    CU_ASSERT_FATAL(wait_all(t, n));
    unsigned bad = 0;
    for (unsigned i = 0; i < n; i++) {
        float d[10];
        uint64_t ids[10];
        direct(C_IVF, i, 10, 4, d, ids);
        bad += t[i].r.status != 0 || !same_answer(t[i].dist, t[i].ids, d, ids, 10);
    }
    CU_ASSERT_EQUAL(bad, 0);
    qv_service_stats(svc, st);
    qv_service_free(svc);
    qv_router_free(r);
    qv_engine_free(D->cpu);
}

/* Each waiting request's lists are prefetched (nprobe = 4 lists each)
 * while copies start; where none start, the service backs off to one
 * prefetch in 64 requests (1, 3, 7, 15, 31, 63, 127, 191: 8 of 200). */
static void test_prefetch(void)
{
    struct qv_service_stats st;
    struct devfake D;

    prefetch_run(1, 40, &st, &D);
    CU_ASSERT_EQUAL(st.prefetch_calls, 40);
    CU_ASSERT_EQUAL(st.prefetch_started, 40);
    CU_ASSERT_EQUAL(D.prefetches, 40);
    CU_ASSERT_EQUAL(D.lists, 40 * 4);
    prefetch_run(0, 200, &st, &D);
    CU_ASSERT_EQUAL(st.prefetch_calls, 8);
    CU_ASSERT_EQUAL(st.prefetch_started, 0);
    CU_ASSERT_EQUAL(D.prefetches, 8);
}

/* 12 requests, k in {5, 10} x nprobe in {2, 8} x 3, queued while paused:
 * one batch, four searches, each answer that of its own parameters. */
static void test_mixed_groups(void)
{
    static struct treq t[12];
    float want_d[12][10];
    uint64_t want_i[12][10];
    struct qv_service_stats st;

    for (unsigned i = 0; i < 12; i++)
        direct(C_IVF, i, i % 2 ? 10 : 5, (i / 2) % 2 ? 8 : 2, want_d[i], want_i[i]);
    struct qv_service *svc = service(1, 1, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(svc);
    CU_ASSERT_EQUAL_FATAL(add(svc, C_IVF), 0);
    for (unsigned i = 0; i < 12; i++) {
        treq_init(&t[i], C_IVF, query(i), i % 2 ? 10 : 5);
        t[i].r.nprobe = (i / 2) % 2 ? 8 : 2;
        CU_ASSERT_EQUAL(submit(svc, &t[i]), 0);
    }
    qv_service_resume(svc);
    CU_ASSERT_FATAL(wait_all(t, 12));
    for (unsigned i = 0; i < 12; i++) {
        CU_ASSERT_EQUAL(t[i].r.status, 0);
        CU_ASSERT(same_answer(t[i].dist, t[i].ids, want_d[i], want_i[i], t[i].r.k));
        CU_ASSERT_EQUAL(t[i].r.t_taken, t[0].r.t_taken);      /* one batch */
    }
    qv_service_stats(svc, &st);
    CU_ASSERT_EQUAL(st.batches, 1);
    CU_ASSERT_EQUAL(st.searches, 4);
    CU_ASSERT_EQUAL(st.searched, 12);
    qv_service_free(svc);
}

/* ---- caches ------------------------------------------------------------- */

static void test_cache_hit_and_epoch(void)
{
    struct treq a, b, c;
    float q[DIM];
    struct qv_service_stats st;

    struct qv_service *svc = service(0, 0, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(svc);
    CU_ASSERT_EQUAL_FATAL(add(svc, C_FLAT), 0);
    memcpy(q, query(5), sizeof q);
    for (unsigned d = 0; d < DIM; d++)
        q[d] += 3.0f;                   /* far from every base vector */
    treq_init(&a, C_FLAT, q, 10);
    CU_ASSERT_EQUAL(submit(svc, &a), 0);
    CU_ASSERT_FATAL(wait_all(&a, 1));
    CU_ASSERT_EQUAL(a.r.flags, 0);
    CU_ASSERT_FALSE(a.inline_done);

    treq_init(&b, C_FLAT, q, 10);       /* a repeat: inline, CACHED, equal */
    CU_ASSERT_EQUAL(submit(svc, &b), 0);
    CU_ASSERT_EQUAL(atomic_load(&b.calls), 1);
    CU_ASSERT(b.inline_done);
    CU_ASSERT_EQUAL(b.r.flags, QV_SERVICE_CACHED);
    CU_ASSERT_EQUAL(b.r.t_taken, 0);
    CU_ASSERT(same_answer(a.dist, a.ids, b.dist, b.ids, 10));

    /* a write: the vector q itself under id 99999, then a new epoch */
    qv_service_pause(svc);
    CU_ASSERT_EQUAL(qv_flat_add(F.flat, 1, q, (const uint64_t[]){ 99999 }), 0);
    CU_ASSERT_EQUAL(qv_service_bump_epoch(svc, C_FLAT), 0);
    qv_service_resume(svc);
    CU_ASSERT_EQUAL(qv_service_epoch(svc, C_FLAT), 1);
    treq_init(&c, C_FLAT, q, 10);
    CU_ASSERT_EQUAL(submit(svc, &c), 0);
    CU_ASSERT_FATAL(wait_all(&c, 1));
    CU_ASSERT_EQUAL(c.r.flags, 0);      /* searched again */
    CU_ASSERT_FALSE(c.inline_done);
    CU_ASSERT_EQUAL(c.ids[0], 99999);
    CU_ASSERT_EQUAL(c.dist[0], 0.0f);
    CU_ASSERT_EQUAL(c.ids[1], a.ids[0]);
    qv_service_stats(svc, &st);
    CU_ASSERT_EQUAL(st.result_hits, 1);
    CU_ASSERT_EQUAL(st.result_misses, 2);
    CU_ASSERT_EQUAL(st.outcomes[QV_SERVICE_OUT_CACHED], 1);
    CU_ASSERT_EQUAL(st.searched, 2);
    qv_service_free(svc);
    qv_flat_remove(F.flat, 1, (const uint64_t[]){ 99999 });
}

static void test_semantic_threshold(void)
{
    struct treq a, near, far, off;
    float q[DIM], qn[DIM], qf[DIM];
    struct qv_service_stats st;

    struct qv_service *svc = service(0, 0, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(svc);
    CU_ASSERT_EQUAL_FATAL(add(svc, C_FLAT), 0);
    memcpy(q, query(9), sizeof q);
    memcpy(qn, q, sizeof q);
    memcpy(qf, q, sizeof q);
    qn[0] += 0.01f;                     /* L2^2 = 1e-4 */
    qf[0] += 1.0f;                      /* L2^2 = 1 */
    treq_init(&a, C_FLAT, q, 10);
    a.r.semantic_threshold = 0.01f;
    CU_ASSERT_EQUAL(submit(svc, &a), 0);
    CU_ASSERT_FATAL(wait_all(&a, 1));
    CU_ASSERT_EQUAL(a.r.flags, 0);

    treq_init(&near, C_FLAT, qn, 10);
    near.r.semantic_threshold = 0.01f;
    CU_ASSERT_EQUAL(submit(svc, &near), 0);
    CU_ASSERT(near.inline_done);
    CU_ASSERT_EQUAL(near.r.flags, QV_SERVICE_CACHED | QV_SERVICE_APPROXIMATE);
    CU_ASSERT(same_answer(a.dist, a.ids, near.dist, near.ids, 10));

    treq_init(&far, C_FLAT, qf, 10);
    far.r.semantic_threshold = 0.01f;
    CU_ASSERT_EQUAL(submit(svc, &far), 0);
    CU_ASSERT_FATAL(wait_all(&far, 1));
    CU_ASSERT_FALSE(far.inline_done);
    CU_ASSERT_EQUAL(far.r.flags, 0);

    treq_init(&off, C_FLAT, qn, 10);    /* no threshold: exact only, a miss */
    CU_ASSERT_EQUAL(submit(svc, &off), 0);
    CU_ASSERT_FATAL(wait_all(&off, 1));
    CU_ASSERT_EQUAL(off.r.flags, 0);
    qv_service_stats(svc, &st);
    CU_ASSERT_EQUAL(st.semantic_hits, 1);
    CU_ASSERT_EQUAL(st.semantic_misses, 2);
    CU_ASSERT_EQUAL(st.outcomes[QV_SERVICE_OUT_APPROXIMATE], 1);
    qv_service_free(svc);
}

/* ---- backpressure, deadlines, shutdown ------------------------------------ */

static void test_busy_and_free_drains(void)
{
    static struct treq t[5];
    struct qv_service_stats st;

    struct qv_service *svc = service(1, 1, 4);      /* paused, 4 slots */
    CU_ASSERT_PTR_NOT_NULL_FATAL(svc);
    CU_ASSERT_EQUAL_FATAL(add(svc, C_IVF), 0);
    for (unsigned i = 0; i < 4; i++) {
        treq_init(&t[i], C_IVF, query(i), 10);
        CU_ASSERT_EQUAL(submit(svc, &t[i]), 0);
    }
    treq_init(&t[4], C_IVF, query(4), 10);
    int64_t t0 = qv_now_ns();
    CU_ASSERT_EQUAL(submit(svc, &t[4]), QV_EBUSY);
    CU_ASSERT(qv_now_ns() - t0 < 50 * MS);
    CU_ASSERT_EQUAL(t[4].r.status, QV_EBUSY);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "queue_capacity"));
    qv_service_stats(svc, &st);
    CU_ASSERT_EQUAL(st.outcomes[QV_SERVICE_OUT_BUSY], 1);
    CU_ASSERT_EQUAL(st.searched, 0);
    qv_service_free(svc);                   /* still paused: free drains */
    for (unsigned i = 0; i < 4; i++) {
        CU_ASSERT_EQUAL(atomic_load(&t[i].calls), 1);
        CU_ASSERT_EQUAL(t[i].r.status, 0);
        CU_ASSERT(t[i].r.t_searched > 0);
    }
    CU_ASSERT_EQUAL(atomic_load(&t[4].calls), 0);
}

static void test_deadline_timeout(void)
{
    struct treq a, late;
    struct qv_service_stats st;

    struct qv_service *svc = service(1, 1, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(svc);
    CU_ASSERT_EQUAL_FATAL(add(svc, C_IVF), 0);
    treq_init(&a, C_IVF, query(1), 10);
    a.r.deadline = qv_now_ns() + 2 * MS;
    CU_ASSERT_EQUAL(submit(svc, &a), 0);
    sleep_ns(5 * MS);                       /* its deadline passes, queued */
    qv_service_resume(svc);
    CU_ASSERT_FATAL(wait_all(&a, 1));
    CU_ASSERT_EQUAL(a.r.status, QV_ETIMEDOUT);
    CU_ASSERT_EQUAL(a.r.t_searched, 0);
    CU_ASSERT(a.r.t_taken > 0);
    qv_service_stats(svc, &st);
    CU_ASSERT_EQUAL(st.searches, 0);
    CU_ASSERT_EQUAL(st.outcomes[QV_SERVICE_OUT_TIMEOUT], 1);
    /* a deadline already past at submit: refused at once */
    treq_init(&late, C_IVF, query(2), 10);
    late.r.deadline = qv_now_ns() - 1;
    CU_ASSERT_EQUAL(submit(svc, &late), QV_ETIMEDOUT);
    CU_ASSERT_EQUAL(atomic_load(&late.calls), 0);
    qv_service_free(svc);
}

static void test_free_completes_queued(void)
{
    static struct treq t[50];

    struct qv_service *svc = service(0, 1, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(svc);
    CU_ASSERT_EQUAL_FATAL(add(svc, C_HNSW), 0);
    for (unsigned i = 0; i < 50; i++) {
        treq_init(&t[i], C_HNSW, query(i), 5);
        t[i].r.cls = i % 2 ? QV_BATCH_BULK : QV_BATCH_INTERACTIVE;
        CU_ASSERT_EQUAL(submit(svc, &t[i]), 0);
    }
    qv_service_free(svc);
    unsigned bad = 0;
    for (unsigned i = 0; i < 50; i++)
        bad += atomic_load(&t[i].calls) != 1 || t[i].r.status != 0 ||
               t[i].ids[0] == QV_ID_NONE;
    CU_ASSERT_EQUAL(bad, 0);
}

/* ---- refusals ------------------------------------------------------------ */

static void expect_refused(struct qv_service *svc, struct treq *t, int code,
                           const char *needle)
{
    CU_ASSERT_EQUAL(submit(svc, t), code);
    CU_ASSERT_EQUAL(t->r.status, code);
    CU_ASSERT_EQUAL(atomic_load(&t->calls), 0);
    if (needle && !strstr(qv_errmsg(), needle)) {
        fprintf(stderr, "\n  message \"%s\" lacks \"%s\"\n", qv_errmsg(), needle);
        CU_FAIL("message");
    }
}

static void test_invalid(void)
{
    struct treq t;
    float nan_q[DIM];
    struct qv_service_collection c = { .dim = DIM, .metric = QV_METRIC_L2 };
    struct qv_service_stats st;

    struct qv_service *svc = service(0, 0, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(svc);
    CU_ASSERT_EQUAL_FATAL(add(svc, C_FLAT), 0);
    CU_ASSERT_EQUAL(qv_service_submit(svc, NULL), QV_EINVAL);
    treq_init(&t, 77, query(0), 10);
    expect_refused(svc, &t, QV_ENOENT, "77");
    treq_init(&t, C_FLAT, query(0), 0);
    expect_refused(svc, &t, QV_EINVAL, "k = 0");
    treq_init(&t, C_FLAT, query(0), KMAX + 1);
    expect_refused(svc, &t, QV_EINVAL, "max_k");
    treq_init(&t, C_FLAT, NULL, 10);
    expect_refused(svc, &t, QV_EINVAL, "query is NULL");
    treq_init(&t, C_FLAT, query(0), 10);
    t.r.ids = NULL;
    expect_refused(svc, &t, QV_EINVAL, "ids");
    treq_init(&t, C_FLAT, query(0), 10);
    t.r.done = NULL;
    expect_refused(svc, &t, QV_EINVAL, "done");
    memcpy(nan_q, query(0), sizeof nan_q);
    nan_q[3] = NAN;
    treq_init(&t, C_FLAT, nan_q, 10);
    expect_refused(svc, &t, QV_EINVAL, "query[3]");
    nan_q[3] = INFINITY;
    expect_refused(svc, &t, QV_EINVAL, "query[3] = inf");
    treq_init(&t, C_FLAT, query(0), 10);
    t.r.cls = (enum qv_batch_class)9;
    expect_refused(svc, &t, QV_EINVAL, "class");
    treq_init(&t, C_FLAT, query(0), 10);
    t.r.semantic_threshold = -1.0f;
    expect_refused(svc, &t, QV_EINVAL, "semantic_threshold");
    treq_init(&t, C_FLAT, query(0), 10);
    t.r.filter_text = "color = red";
    expect_refused(svc, &t, QV_EINVAL, "filter_text");
    CU_ASSERT_EQUAL(add(svc, C_HNSW), 0);
    treq_init(&t, C_HNSW, query(0), 10);
    t.r.ef = QV_HNSW_MAX_EF + 1;
    expect_refused(svc, &t, QV_EINVAL, "ef = ");
    qv_service_stats(svc, &st);
    CU_ASSERT_EQUAL(st.outcomes[QV_SERVICE_OUT_INVALID], 13);

    /* collections */
    CU_ASSERT_EQUAL(add(svc, C_FLAT), QV_EEXIST);
    c.index.type = QV_SERVICE_IVF;
    CU_ASSERT_EQUAL(qv_service_add_collection(svc, 9, &c), QV_EINVAL);     /* NULL */
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "NULL"));
    c.index.ivf = F.ivf;
    c.dim = DIM + 1;
    CU_ASSERT_EQUAL(qv_service_add_collection(svc, 9, &c), QV_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "dim"));
    c.dim = DIM;
    c.index.type = QV_SERVICE_HNSW;
    c.index.hnsw = F.hnsw;
    c.metric = QV_METRIC_IP;
    CU_ASSERT_EQUAL(qv_service_add_collection(svc, 9, &c), QV_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "metric"));
    c.index.type = (enum qv_service_index_type)8;
    CU_ASSERT_EQUAL(qv_service_add_collection(svc, 9, &c), QV_EINVAL);
    CU_ASSERT_EQUAL(qv_service_add_collection(svc, 9, NULL), QV_EINVAL);
    CU_ASSERT_EQUAL(qv_service_bump_epoch(svc, 9), QV_ENOENT);
    CU_ASSERT_EQUAL(qv_service_epoch(svc, 9), UINT64_MAX);
    CU_ASSERT_PTR_NULL(qv_service_stage_hist(svc, 9, QV_SERVICE_STAGE_QUEUE));
    qv_service_free(svc);
    qv_service_free(NULL);

    struct qv_service_opts o;
    qv_service_opts_default(&o);
    o.max_k = 0;
    CU_ASSERT_PTR_NULL(qv_service_create(&o));
    CU_ASSERT_EQUAL(qv_errno, QV_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "max_k"));
    qv_service_opts_default(&o);
    o.batcher.queue_capacity = 1000;
    CU_ASSERT_PTR_NULL(qv_service_create(&o));
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "queue_capacity"));
    qv_service_opts_default(&o);
    o.cost_alpha = 2.0;
    CU_ASSERT_PTR_NULL(qv_service_create(&o));
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "cost_alpha"));
}

/* ---- threads --------------------------------------------------------------- */

#define MT_THREADS 4
#define MT_PER 1500

struct producer {
    struct qv_service *svc;
    struct treq *t;
    unsigned id;
    unsigned busy, failed;
};

static void *producer_main(void *arg)
{
    struct producer *p = arg;

    for (unsigned i = 0; i < MT_PER; i++) {
        unsigned v = p->id * MT_PER + i;
        struct treq *t = &p->t[i];
        int rc;
        treq_init(t, v % 3 == 0 ? C_HNSW : C_FLAT, t->q, 1 + v % 10);
        memcpy(t->q, query(v), sizeof t->q);
        if (v % 8 != 0)                 /* unique, but for 1 in 8 */
            t->q[v % DIM] += (float)(v / NQ + 1) * 1e-3f;
        t->r.cls = v % 5 == 0 ? QV_BATCH_BULK : QV_BATCH_INTERACTIVE;
        while ((rc = qv_service_submit(p->svc, &t->r)) == QV_EBUSY) {
            p->busy++;
            sched_yield();
        }
        p->failed += rc != 0;
    }
    return NULL;
}

static void test_producers(void)
{
    struct producer prod[MT_THREADS];
    pthread_t th[MT_THREADS];
    struct treq *all = calloc((size_t)MT_THREADS * MT_PER, sizeof *all);
    struct qv_service_stats st;

    CU_ASSERT_PTR_NOT_NULL_FATAL(all);
    struct qv_service_opts o;
    qv_service_opts_default(&o);
    o.max_k = KMAX;
    o.batcher.queue_capacity = 64;          /* producers meet EBUSY too */
    o.batcher.budget_ns[QV_BATCH_INTERACTIVE] = 10000 * MS;    /* no timeouts, */
    o.batcher.budget_ns[QV_BATCH_BULK] = 10000 * MS;           /* even on a busy host */
    struct qv_service *svc = qv_service_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(svc);
    CU_ASSERT_EQUAL_FATAL(add(svc, C_FLAT), 0);
    CU_ASSERT_EQUAL_FATAL(add(svc, C_HNSW), 0);
    for (unsigned i = 0; i < MT_THREADS; i++) {
        prod[i] = (struct producer){ .svc = svc, .t = all + (size_t)i * MT_PER, .id = i };
        CU_ASSERT_EQUAL_FATAL(pthread_create(&th[i], NULL, producer_main, &prod[i]), 0);
    }
    for (unsigned i = 0; i < MT_THREADS; i++)
        pthread_join(th[i], NULL);
    CU_ASSERT(wait_all(all, MT_THREADS * MT_PER));
    unsigned not_once = 0, bad = 0, failed = 0;
    for (unsigned i = 0; i < MT_THREADS * MT_PER; i++) {
        not_once += atomic_load(&all[i].calls) != 1;
        bad += all[i].r.status != 0 || all[i].ids[0] == QV_ID_NONE;
    }
    for (unsigned i = 0; i < MT_THREADS; i++)
        failed += prod[i].failed;
    CU_ASSERT_EQUAL(failed, 0);
    CU_ASSERT_EQUAL(not_once, 0);
    CU_ASSERT_EQUAL(bad, 0);
    qv_service_stats(svc, &st);
    CU_ASSERT_EQUAL(st.outcomes[QV_SERVICE_OK] + st.outcomes[QV_SERVICE_OUT_CACHED],
                    MT_THREADS * MT_PER);
    fprintf(stderr, "\n  %u requests: %llu searched in %llu searches of %llu batches, "
            "%llu cached, %llu busy refusals\n", MT_THREADS * MT_PER,
            (unsigned long long)st.searched, (unsigned long long)st.searches,
            (unsigned long long)st.batches,
            (unsigned long long)st.outcomes[QV_SERVICE_OUT_CACHED],
            (unsigned long long)st.outcomes[QV_SERVICE_OUT_BUSY]);
    qv_service_free(svc);
    for (unsigned i = 0; i < MT_THREADS * MT_PER; i++)
        CU_ASSERT_EQUAL(atomic_load(&all[i].calls), 1);
    free(all);
}

/* ---- the batcher's idle flush and the cost model through the service ------ */

/* 20 requests 2 ms apart, interactive budget 50 ms: with the idle flush
 * each is searched at once; without it they wait for batches. */
static double sparse_stream_mean_us(int idle_flush)
{
    static struct treq t[20];
    struct qv_service_opts o;
    double sum = 0;

    qv_service_opts_default(&o);
    o.cache.entries = 0;
    o.cache.semantic_entries = 0;
    o.batcher.idle_flush = idle_flush;
    o.batcher.budget_ns[QV_BATCH_INTERACTIVE] = 50 * MS;
    struct qv_service *svc = qv_service_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(svc);
    CU_ASSERT_EQUAL_FATAL(add(svc, C_FLAT), 0);
    for (unsigned i = 0; i < 20; i++) {
        treq_init(&t[i], C_FLAT, query(i), 10);
        CU_ASSERT_EQUAL(submit(svc, &t[i]), 0);
        sleep_ns(2 * MS);
    }
    CU_ASSERT(wait_all(t, 20));
    for (unsigned i = 5; i < 20; i++)
        sum += (double)(t[i].r.t_done - t[i].r.priv.arrival) * 1e-3;
    qv_service_free(svc);
    return sum / 15.0;
}

static void test_idle_flush(void)
{
    double on = sparse_stream_mean_us(1), off = sparse_stream_mean_us(0);

    fprintf(stderr, "\n  2 ms gaps: mean latency %.0f us with the idle flush, %.0f us "
            "without\n", on, off);
    CU_ASSERT(on < 1500.0);
    CU_ASSERT(off > 3.0 * on);
}

static void test_cost_model(void)
{
    static struct treq t[NQ];

    struct qv_service *svc = service(1, 0, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(svc);
    CU_ASSERT_EQUAL_FATAL(add(svc, C_FLAT), 0);
    CU_ASSERT_EQUAL_FATAL(add(svc, C_IVF), 0);
    CU_ASSERT_EQUAL_FATAL(add(svc, C_HNSW), 0);
    for (uint64_t c = C_FLAT; c <= C_HNSW; c++) {
        for (unsigned i = 0; i < NQ; i++) {
            treq_init(&t[i], c, query(i), 10);
            CU_ASSERT_EQUAL(submit(svc, &t[i]), 0);
            if (i % 8 == 7)
                sleep_ns(200000);
        }
        CU_ASSERT_FATAL(wait_all(t, NQ));
    }
    qv_service_pause(svc);
    for (uint64_t c = C_FLAT; c <= C_HNSW; c++) {
        double prev = 0;
        for (uint32_t n = 1; n <= 256; n *= 2) {
            double p = qv_service_predict_ns(svc, c, n);
            CU_ASSERT(p > 0 && isfinite(p));
            CU_ASSERT(p >= prev);
            prev = p;
        }
        /* corrected toward what was observed: within 100x of a search */
        const struct qv_hist *h = qv_service_stage_hist(svc, c, QV_SERVICE_STAGE_SEARCH);
        double p1 = qv_service_predict_ns(svc, c, 1), obs = (double)qv_hist_quantile(h, 0.5);
        CU_ASSERT(obs > 0 && p1 < 100.0 * obs && p1 > obs / 100.0);
    }
    CU_ASSERT(qv_service_predict_ns(svc, 42, 1) < 0);
    qv_service_resume(svc);
    qv_service_free(svc);
}

/* ---- metrics ----------------------------------------------------------------- */

/* The value of the first line of name{...} holding every label given. */
static double metric(const char *text, const char *name, const char *l1, const char *l2)
{
    size_t nl = strlen(name);

    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        const char *end = strchr(p, '\n');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        char line[512];
        if (len >= sizeof line || strncmp(p, name, nl) != 0 || p[nl] != '{')
            continue;
        memcpy(line, p, len);
        line[len] = '\0';
        if ((l1 && !strstr(line, l1)) || (l2 && !strstr(line, l2)))
            continue;
        return strtod(strrchr(line, ' ') + 1, NULL);
    }
    return -1.0;
}

static void test_metrics(void)
{
    static struct treq t[40];
    struct treq hit;
    size_t len = 0, cap;
    char *buf;

    struct qv_service *svc = service(1, 0, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(svc);
    CU_ASSERT_EQUAL_FATAL(add(svc, C_IVF), 0);
    for (unsigned i = 0; i < 40; i++) {
        treq_init(&t[i], C_IVF, query(i), 10);
        CU_ASSERT_EQUAL(submit(svc, &t[i]), 0);
    }
    CU_ASSERT_FATAL(wait_all(t, 40));
    treq_init(&hit, C_IVF, query(3), 10);
    CU_ASSERT_EQUAL(submit(svc, &hit), 0);
    CU_ASSERT_EQUAL(hit.r.flags, QV_SERVICE_CACHED);
    CU_ASSERT_EQUAL(qv_service_render_metrics(svc, NULL, 0, &len), QV_ENOSPC);
    CU_ASSERT_FATAL(len > 0);
    cap = len + 4096;
    buf = malloc(cap);
    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    CU_ASSERT_EQUAL_FATAL(qv_service_render_metrics(svc, buf, cap, &len), 0);

    struct qv_service_stats st;
    qv_service_stats(svc, &st);
    const char *c2 = "collection=\"2\"";
    double searches = metric(buf, "quiver_service_stage_ns_count", c2, "stage=\"search\"");
    CU_ASSERT_EQUAL(searches, (double)st.searches);
    CU_ASSERT_EQUAL(metric(buf, "quiver_service_stage_ns_count", c2, "stage=\"queue_wait\""),
                    40.0);
    CU_ASSERT_EQUAL(metric(buf, "quiver_service_stage_ns_count", c2, "stage=\"end_to_end\""),
                    41.0);
    CU_ASSERT_EQUAL(metric(buf, "quiver_service_stage_ns_count", c2, "stage=\"respond\""),
                    searches);
    CU_ASSERT_EQUAL(metric(buf, "quiver_service_stage_ns_count", c2, "stage=\"distance\""),
                    searches);
    double search_p50 = metric(buf, "quiver_service_stage_ns", c2, "stage=\"search\",quantile=\"0.5\"");
    double dist_p50 = metric(buf, "quiver_service_stage_ns", c2, "stage=\"distance\",quantile=\"0.5\"");
    double e2e_p99 = metric(buf, "quiver_service_stage_ns", c2, "stage=\"end_to_end\",quantile=\"0.99\"");
    CU_ASSERT(search_p50 > 0 && search_p50 < 1e9);
    CU_ASSERT(dist_p50 > 0 && dist_p50 <= search_p50 * 1.1);
    CU_ASSERT(e2e_p99 >= search_p50 && e2e_p99 < 5e9);
    CU_ASSERT_EQUAL(metric(buf, "quiver_service_requests_total", c2, "outcome=\"ok\""), 40.0);
    CU_ASSERT_EQUAL(metric(buf, "quiver_service_requests_total", c2, "outcome=\"cached\""), 1.0);
    CU_ASSERT_EQUAL(metric(buf, "quiver_service_cache_hits_total", c2, "cache=\"result\""),
                    1.0);
    CU_ASSERT_EQUAL(metric(buf, "quiver_service_cache_misses_total", c2, "cache=\"result\""),
                    40.0);
    CU_ASSERT_EQUAL(metric(buf, "quiver_service_batch_queries_count", c2, NULL),
                    (double)st.batches);
    CU_ASSERT_EQUAL(metric(buf, "quiver_service_batch_queries_sum", c2, NULL), 40.0);
    CU_ASSERT_EQUAL(metric(buf, "quiver_cache_entries", "cache=\"result\"", NULL), 40.0);
    CU_ASSERT_EQUAL(metric(buf, "quiver_engine_units_total", "engine=\"cpu\"", NULL),
                    (double)st.searches);
    CU_ASSERT_EQUAL(metric(buf, "quiver_engine_route_share_ppm", "engine=\"cpu\"", NULL),
                    1e6);
    CU_ASSERT_EQUAL(metric(buf, "quiver_engine_breaker_state", "engine=\"cpu\"", NULL), 0.0);
    double util = metric(buf, "quiver_engine_utilisation_ppm", "engine=\"cpu\"", NULL);
    CU_ASSERT(util > 0 && util <= 1e6);
    CU_ASSERT_EQUAL(metric(buf, "quiver_batcher_queue_depth", "class=\"interactive\"", NULL),
                    0.0);
    CU_ASSERT(strstr(buf, "# TYPE quiver_service_stage_ns summary") != NULL);
    /* a second render adds only what happened since: nothing */
    CU_ASSERT_EQUAL_FATAL(qv_service_render_metrics(svc, buf, cap, &len), 0);
    CU_ASSERT_EQUAL(metric(buf, "quiver_engine_units_total", "engine=\"cpu\"", NULL),
                    (double)st.searches);
    free(buf);
    qv_service_free(svc);
}

static void test_config(void)
{
    struct qv_service_opts a, d;
    struct qv_config *cfg = qv_config_defaults();

    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    CU_ASSERT_EQUAL(qv_service_opts_from_config(cfg, &a), 0);
    qv_service_opts_default(&d);
    CU_ASSERT_EQUAL(a.max_k, d.max_k);
    CU_ASSERT_EQUAL(a.cost_alpha, d.cost_alpha);
    CU_ASSERT_EQUAL(a.batcher.idle_flush, 1);
    CU_ASSERT_EQUAL(qv_config_set(cfg, "service", "max_k", "0"), QV_ECONFIG);
    CU_ASSERT_EQUAL(qv_config_set(cfg, "service", "max_k", "50"), 0);
    CU_ASSERT_EQUAL(qv_config_set(cfg, "batcher", "idle_flush", "off"), 0);
    CU_ASSERT_EQUAL(qv_service_opts_from_config(cfg, &a), 0);
    CU_ASSERT_EQUAL(a.max_k, 50);
    CU_ASSERT_EQUAL(a.batcher.idle_flush, 0);
    qv_config_free(cfg);
}

/* Each cache is off on its own: semantic_entries = 0 with a result cache,
 * entries = 0 with a semantic cache, both 0; a bad value of a cache that
 * is on still names its key. */
static void test_config_caches_off(void)
{
    struct qv_service_opts o;
    struct qv_service_stats st;
    struct qv_config *cfg = qv_config_defaults();
    struct qv_service *s;

    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    CU_ASSERT_EQUAL(qv_config_set(cfg, "cache", "semantic_entries", "0"), 0);
    CU_ASSERT_EQUAL_FATAL(qv_service_opts_from_config(cfg, &o), 0);
    CU_ASSERT_EQUAL(o.cache.semantic_entries, 0);
    CU_ASSERT(o.cache.entries > 0);
    s = qv_service_create(&o);
    CU_ASSERT_PTR_NOT_NULL(s);
    if (s) {
        /* the result cache is there: a lookup counts a miss or a hit */
        CU_ASSERT_EQUAL(add(s, C_FLAT), 0);
        struct treq a, b;
        treq_init(&a, C_FLAT, query(3), 10);
        CU_ASSERT_EQUAL(submit(s, &a), 0);
        CU_ASSERT(wait_all(&a, 1));
        treq_init(&b, C_FLAT, query(3), 10);
        CU_ASSERT_EQUAL(submit(s, &b), 0);
        CU_ASSERT(wait_all(&b, 1));
        qv_service_stats(s, &st);
        CU_ASSERT_EQUAL(st.result_hits, 1);
        qv_service_free(s);
    }
    CU_ASSERT_EQUAL(qv_config_set(cfg, "cache", "semantic_entries", "64"), 0);
    CU_ASSERT_EQUAL(qv_config_set(cfg, "cache", "entries", "0"), 0);
    CU_ASSERT_EQUAL_FATAL(qv_service_opts_from_config(cfg, &o), 0);
    s = qv_service_create(&o);
    CU_ASSERT_PTR_NOT_NULL(s);
    qv_service_free(s);
    CU_ASSERT_EQUAL(qv_config_set(cfg, "cache", "semantic_entries", "0"), 0);
    CU_ASSERT_EQUAL_FATAL(qv_service_opts_from_config(cfg, &o), 0);
    s = qv_service_create(&o);
    CU_ASSERT_PTR_NOT_NULL(s);
    qv_service_free(s);
    /* a cache that is on is still checked */
    CU_ASSERT_EQUAL(qv_config_set(cfg, "cache", "entries", "10"), 0);
    CU_ASSERT_EQUAL(qv_config_set(cfg, "cache", "bytes", "100"), 0);
    CU_ASSERT_EQUAL(qv_service_opts_from_config(cfg, &o), QV_ECONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "[cache] bytes = 100"));
    qv_config_free(cfg);
}

/* ---- custom collections, retirement ---------------------------------- */

enum { C_CUSTOM = 7 };

/* A custom index: F.flat behind the callback, recording what it got. */
static struct {
    _Atomic unsigned calls, prefetches;
    uint32_t p1, refine;
    char text[64];
    unsigned with_text;
} CX;

static int custom_search(void *ix, const float *q, size_t nq, uint32_t k, uint32_t p1,
                         uint32_t refine, const char *filter_text, float *dist,
                         uint64_t *ids)
{
    atomic_fetch_add(&CX.calls, 1);
    CX.p1 = p1;
    CX.refine = refine;
    if (filter_text) {
        snprintf(CX.text, sizeof CX.text, "%s", filter_text);
        CX.with_text++;
    }
    return qv_flat_search(ix, q, nq, k, NULL, dist, ids);
}

static int custom_prefetch(void *ix, const float *q, size_t nq, uint32_t p1)
{
    (void)ix;
    (void)q;
    (void)nq;
    (void)p1;
    atomic_fetch_add(&CX.prefetches, 1);
    return 1;
}

static int add_custom(struct qv_service *svc, uint32_t ef, uint32_t nprobe)
{
    struct qv_service_collection c = { .dim = DIM, .metric = QV_METRIC_L2, .ef = ef,
                                       .nprobe = nprobe, .refine = 3 };

    c.index.type = QV_SERVICE_CUSTOM;
    c.index.custom = (struct qv_service_custom){
        .search = custom_search, .prefetch = custom_prefetch, .ix = F.flat,
    };
    return qv_service_add_collection(svc, C_CUSTOM, &c);
}

/* A custom collection answers like its index; it gets the resolved p1 and
 * refine and the filter text, requests group by equal text, a bitmap is
 * refused, a custom without callback or dim is refused; retire waits for
 * the queued requests (searched, not dropped) and refuses later ones. */
static void test_custom_and_retire(void)
{
    static struct treq t[8];
    struct treq bad;
    struct qv_service_stats st;
    struct qv_service_collection nocb = { .dim = DIM };
    uint64_t bitmap[(NB + 63) / 64];

    memset(&CX, 0, sizeof CX);
    struct qv_service *svc = service(0, 1, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(svc);
    nocb.index.type = QV_SERVICE_CUSTOM;
    CU_ASSERT_EQUAL(qv_service_add_collection(svc, C_CUSTOM, &nocb), QV_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "search callback"));
    nocb.index.custom.search = custom_search;
    nocb.dim = 0;
    CU_ASSERT_EQUAL(qv_service_add_collection(svc, C_CUSTOM, &nocb), QV_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "dim"));
    CU_ASSERT_EQUAL_FATAL(add_custom(svc, 40, 0), 0);
    /* 8 requests while paused: texts "a" x 4, "b" x 2, none x 2 */
    for (unsigned i = 0; i < 8; i++) {
        treq_init(&t[i], C_CUSTOM, query(i), 10);
        t[i].r.filter_text = i < 4 ? "a" : i < 6 ? "b" : NULL;
        CU_ASSERT_EQUAL(submit(svc, &t[i]), 0);
    }
    treq_init(&bad, C_CUSTOM, query(0), 10);
    bad.r.filter = bitmap;
    expect_refused(svc, &bad, QV_EINVAL, "filter_text alone");
    qv_service_resume(svc);
    CU_ASSERT_FATAL(wait_all(t, 8));
    for (unsigned i = 0; i < 8; i++) {
        float d[10];
        uint64_t ids[10];
        direct(C_FLAT, i, 10, 0, d, ids);
        CU_ASSERT_EQUAL(t[i].r.status, 0);
        CU_ASSERT(same_answer(t[i].dist, t[i].ids, d, ids, 10));
    }
    CU_ASSERT_EQUAL(atomic_load(&CX.calls), 3);     /* one search per text */
    CU_ASSERT_EQUAL(CX.with_text, 2);
    CU_ASSERT_EQUAL(CX.p1, 40);                     /* ef, raised to k: 40 */
    CU_ASSERT_EQUAL(CX.refine, 3);
    CU_ASSERT(atomic_load(&CX.prefetches) >= 1);
    /* ef below k is raised to k */
    treq_init(&t[0], C_CUSTOM, query(20), 10);
    t[0].r.ef = 5;
    CU_ASSERT_EQUAL(submit(svc, &t[0]), 0);
    CU_ASSERT_FATAL(wait_all(t, 1));
    CU_ASSERT_EQUAL(CX.p1, 10);

    /* retire: 6 queued while paused complete (searched) before it returns */
    qv_service_pause(svc);
    for (unsigned i = 0; i < 6; i++) {
        treq_init(&t[i], C_CUSTOM, query(30 + i), 5);
        t[i].r.cls = i % 2 ? QV_BATCH_BULK : QV_BATCH_INTERACTIVE;
        CU_ASSERT_EQUAL(submit(svc, &t[i]), 0);
    }
    qv_service_resume(svc);
    CU_ASSERT_EQUAL(qv_service_retire_collection(svc, C_CUSTOM), 0);
    unsigned done = 0;
    for (unsigned i = 0; i < 6; i++)
        done += atomic_load(&t[i].calls) == 1 && t[i].r.status == 0 && t[i].r.t_searched > 0;
    CU_ASSERT_EQUAL(done, 6);
    treq_init(&bad, C_CUSTOM, query(0), 10);
    expect_refused(svc, &bad, QV_ENOENT, "retired");
    CU_ASSERT_EQUAL(add_custom(svc, 40, 0), QV_EEXIST);
    CU_ASSERT_EQUAL(qv_service_retire_collection(svc, C_CUSTOM), 0);   /* again */
    CU_ASSERT_EQUAL(qv_service_retire_collection(svc, 12345), QV_ENOENT);
    qv_service_stats(svc, &st);
    CU_ASSERT_EQUAL(st.outcomes[QV_SERVICE_OUT_INVALID], 2);
    /* a retired collection can still be removed; then its id is free */
    CU_ASSERT_EQUAL(qv_service_remove_collection(svc, C_CUSTOM), 0);
    expect_refused(svc, &bad, QV_ENOENT, "not registered");
    CU_ASSERT_EQUAL(add_custom(svc, 40, 0), 0);
    treq_init(&t[0], C_CUSTOM, query(3), 10);
    CU_ASSERT_EQUAL(submit(svc, &t[0]), 0);
    CU_ASSERT_FATAL(wait_all(t, 1));
    CU_ASSERT_EQUAL(t[0].r.status, 0);
    qv_service_stats(svc, &st);         /* kept after removal, + the unknown id's */
    CU_ASSERT_EQUAL(st.outcomes[QV_SERVICE_OUT_INVALID], 3);
    qv_service_free(svc);
}

/* ---- removal ------------------------------------------------------------- */

static char *render(struct qv_service *svc)
{
    size_t need = 0, len;
    char *buf;

    CU_ASSERT_EQUAL(qv_service_render_metrics(svc, NULL, 0, &need), QV_ENOSPC);
    buf = malloc(need + 65536);
    if (buf != NULL && qv_service_render_metrics(svc, buf, need + 65536, &len) != 0)
        buf[0] = '\0';
    return buf;
}

/* A flat collection over F.flat under id. */
static int add_flat(struct qv_service *svc, uint64_t id)
{
    struct qv_service_collection c = { .dim = DIM, .metric = QV_METRIC_L2 };

    c.index.type = QV_SERVICE_FLAT;
    c.index.flat = F.flat;
    return qv_service_add_collection(svc, id, &c);
}

static int64_t live_blocks(enum qv_mem_tag tag)
{
    struct qv_mem_stats st;

    qv_mem_stats(tag, &st);
    return st.live_blocks;
}

/* [batcher] max_collections 4, three collections live: 1000 times add a
 * fourth, search it, remove it.  Never ENOSPC; a removed id is unknown
 * (submit, epoch, stage_hist, bump_epoch, retire, a second remove), has
 * no series in /metrics, and may be added again; stats keep its counts;
 * nothing grows (memory of the service, the batcher and the metrics). */
static void test_remove_cycles(void)
{
    static struct treq t[2];
    struct qv_service_stats st;
    struct qv_service_opts o;
    char lab[64];
    unsigned enospc = 0, bad = 0;

    qv_service_opts_default(&o);
    o.max_k = KMAX;
    o.router = F.router;
    o.batcher.max_collections = 4;
    o.cache.entries = 1000;
    o.cache.bytes = 1 << 20;
    struct qv_service *svc = qv_service_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(svc);
    CU_ASSERT_EQUAL_FATAL(add(svc, C_FLAT), 0);
    CU_ASSERT_EQUAL_FATAL(add(svc, C_HNSW), 0);
    CU_ASSERT_EQUAL_FATAL(add_custom(svc, 0, 0), 0);
    /* an IVF collection (its engine set by the router) removed first */
    CU_ASSERT_EQUAL_FATAL(add(svc, C_IVF), 0);
    CU_ASSERT_EQUAL(add_flat(svc, 99), QV_ENOSPC);
    treq_init(&t[0], C_IVF, query(1), 10);
    CU_ASSERT_EQUAL(submit(svc, &t[0]), 0);
    CU_ASSERT_EQUAL(qv_service_remove_collection(svc, C_IVF), 0);
    CU_ASSERT_EQUAL(atomic_load(&t[0].calls), 1);           /* drained first */
    CU_ASSERT_EQUAL(t[0].r.status, 0);
    int64_t router0 = live_blocks(QV_MEM_ROUTER), metrics0 = live_blocks(QV_MEM_METRICS);
    for (uint64_t i = 0; i < 1000; i++) {
        uint64_t id = 100 + i;
        int rc = add_flat(svc, id);
        enospc += rc == QV_ENOSPC;
        if (rc != 0)
            break;
        bad += qv_service_epoch(svc, id) != 0;
        treq_init(&t[0], id, query((unsigned)i), 1 + (uint32_t)(i % 10));
        bad += submit(svc, &t[0]) != 0;
        if (i % 2) {                    /* half of them removed with it queued */
            bad += !wait_all(t, 1);
            bad += t[0].r.status != 0;
        }
        bad += qv_service_remove_collection(svc, id) != 0;
        bad += atomic_load(&t[0].calls) != 1 || t[0].r.status != 0;
        treq_init(&t[1], id, query(0), 10);
        bad += submit(svc, &t[1]) != QV_ENOENT;
        bad += strstr(qv_errmsg(), "not registered") == NULL;
        bad += qv_service_epoch(svc, id) != UINT64_MAX;
        bad += qv_service_stage_hist(svc, id, QV_SERVICE_STAGE_SEARCH) != NULL;
        bad += qv_service_bump_epoch(svc, id) != QV_ENOENT;
        bad += qv_service_remove_collection(svc, id) != QV_ENOENT;
        bad += qv_service_retire_collection(svc, id) != QV_ENOENT;
        if (i % 100 == 99) {
            char *text = render(svc);
            CU_ASSERT_PTR_NOT_NULL_FATAL(text);
            snprintf(lab, sizeof lab, "collection=\"%llu\"", (unsigned long long)id);
            bad += strstr(text, lab) != NULL;
            bad += strstr(text, "collection=\"2\"") != NULL;      /* the IVF one */
            bad += strstr(text, "collection=\"1\"") == NULL;
            bad += strstr(text, "collection=\"7\"") == NULL;
            free(text);
        }
    }
    CU_ASSERT_EQUAL(enospc, 0);
    CU_ASSERT_EQUAL(bad, 0);
    CU_ASSERT_EQUAL(live_blocks(QV_MEM_ROUTER), router0);
    CU_ASSERT_EQUAL(live_blocks(QV_MEM_METRICS), metrics0);
    qv_service_stats(svc, &st);
    CU_ASSERT_EQUAL(st.outcomes[QV_SERVICE_OK], 1001);
    CU_ASSERT_EQUAL(st.outcomes[QV_SERVICE_OUT_INVALID], 1000);  /* refused after removal */
    /* the live ones still answer; a removed id comes back as new */
    treq_init(&t[0], C_HNSW, query(5), 10);
    CU_ASSERT_EQUAL(submit(svc, &t[0]), 0);
    CU_ASSERT_EQUAL(add(svc, C_IVF), 0);
    treq_init(&t[1], C_IVF, query(1), 10);
    CU_ASSERT_EQUAL(submit(svc, &t[1]), 0);
    CU_ASSERT_FATAL(wait_all(t, 2));
    CU_ASSERT_EQUAL(t[1].r.flags, 0);          /* not the removed one's cached answer */
    CU_ASSERT_EQUAL(qv_hist_quantile(qv_service_stage_hist(svc, C_IVF,
                                                           QV_SERVICE_STAGE_QUEUE), 1.0) > 0 ||
                    t[1].r.t_taken > 0, 1);
    char *text = render(svc);
    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    CU_ASSERT_EQUAL(metric(text, "quiver_service_requests_total", "collection=\"2\"",
                           "outcome=\"ok\""), 1.0);        /* from zero again */
    free(text);
    qv_service_free(svc);
}

/* A submit answered from the cache runs its callback inside submit: a
 * removal started meanwhile waits for that submit to return (its grace
 * period), though the collection has nothing queued. */
static struct {
    _Atomic int entered, release;
} GP;

static void blocking_done(struct qv_service_request *req, void *arg)
{
    on_done(req, arg);
    atomic_store(&GP.entered, 1);
    while (!atomic_load(&GP.release))
        sched_yield();
}

struct gp_call {
    struct qv_service *svc;
    struct treq *t;
    uint64_t id;
    int rc;
    _Atomic int returned;
};

static void *gp_submit_main(void *arg)
{
    struct gp_call *g = arg;

    g->rc = qv_service_submit(g->svc, &g->t->r);
    atomic_store(&g->returned, 1);
    return NULL;
}

static void *gp_remove_main(void *arg)
{
    struct gp_call *g = arg;

    g->rc = qv_service_remove_collection(g->svc, g->id);
    atomic_store(&g->returned, 1);
    return NULL;
}

static void test_remove_waits_for_submit(void)
{
    static struct treq t[3];
    struct gp_call sub, rem;
    pthread_t ts, tr;

    struct qv_service *svc = service(0, 0, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(svc);
    CU_ASSERT_EQUAL_FATAL(add_flat(svc, 50), 0);
    treq_init(&t[0], 50, query(1), 10);
    CU_ASSERT_EQUAL(submit(svc, &t[0]), 0);
    CU_ASSERT_FATAL(wait_all(t, 1));
    atomic_store(&GP.entered, 0);
    atomic_store(&GP.release, 0);
    treq_init(&t[1], 50, query(1), 10);         /* a cache hit: done inline */
    t[1].r.done = blocking_done;
    sub = (struct gp_call){ .svc = svc, .t = &t[1] };
    rem = (struct gp_call){ .svc = svc, .id = 50 };
    CU_ASSERT_EQUAL_FATAL(pthread_create(&ts, NULL, gp_submit_main, &sub), 0);
    while (!atomic_load(&GP.entered))
        sched_yield();
    CU_ASSERT_EQUAL_FATAL(pthread_create(&tr, NULL, gp_remove_main, &rem), 0);
    sleep_ns(50 * MS);
    CU_ASSERT_EQUAL(atomic_load(&rem.returned), 0);     /* waits for the submit */
    treq_init(&t[2], 50, query(2), 10);
    CU_ASSERT_EQUAL(submit(svc, &t[2]), QV_ENOENT);     /* already refused */
    atomic_store(&GP.release, 1);
    pthread_join(ts, NULL);
    pthread_join(tr, NULL);
    CU_ASSERT_EQUAL(sub.rc, 0);
    CU_ASSERT_EQUAL(t[1].r.flags, QV_SERVICE_CACHED);
    CU_ASSERT_EQUAL(rem.rc, 0);
    CU_ASSERT_EQUAL(qv_service_epoch(svc, 50), UINT64_MAX);
    qv_service_free(svc);
}

/*
 * Removal under load: 4 producers submit without pause to two
 * collections that stay, to the collection being removed (a new id each
 * round, removed while they submit to it) and to the id removed last.
 * Each producer cycles through a ring of requests and reuses one only
 * after its previous request completed (accepted: done exactly once;
 * refused: never).  Submits to a removed id are QV_ENOENT; to the ones
 * that stay never; /metrics never shows a removed collection; under
 * ASan, nothing is used after its free.
 */
#define RM_THREADS 4
#define RM_RING 1024
#define RM_ROUNDS 60

static struct {
    _Atomic uint64_t victim, removed;
    _Atomic int stop;
} RMV;

struct rm_producer {
    struct qv_service *svc;
    struct treq *t;                 /* RM_RING */
    uint8_t accepted[RM_RING];
    unsigned id;
    unsigned sent, accepted_n, stale, stale_enoent, stay_enoent, to_victim, failed;
    unsigned not_once, bad_status;
};

/* Wait until ring slot t may be reused; check how its request ended. */
static void rm_settle(struct rm_producer *p, unsigned j)
{
    struct treq *t = &p->t[j];
    int64_t give_up = qv_now_ns() + 20000 * MS;

    if (!p->accepted[j]) {
        p->not_once += atomic_load(&t->calls) != 0;
        return;
    }
    while (atomic_load_explicit(&t->calls, memory_order_acquire) == 0 &&
           qv_now_ns() < give_up)
        sched_yield();
    p->not_once += atomic_load(&t->calls) != 1;
    p->bad_status += t->r.status != 0;
    p->accepted[j] = 0;
}

static void *rm_producer_main(void *arg)
{
    struct rm_producer *p = arg;

    for (unsigned i = 0; !atomic_load(&RMV.stop); i++) {
        unsigned v = p->id * 1000003u + i, j = i % RM_RING;
        struct treq *t = &p->t[j];
        uint64_t coll = i % 2 ? C_FLAT : C_HNSW, stale = 0;
        int rc;
        if (i >= RM_RING)
            rm_settle(p, j);
        if (i % 4 == 1) {
            uint64_t vic = atomic_load(&RMV.victim);
            if (vic != 0)
                coll = vic;
        } else if (i % 8 == 2) {
            stale = atomic_load(&RMV.removed);
            if (stale != 0)
                coll = stale;
        }
        treq_init(t, coll, t->q, 1 + v % 10);
        memcpy(t->q, query(v), sizeof t->q);
        if (v % 4 != 0)                 /* unique, but for 1 in 4 (cache hits) */
            t->q[v % DIM] += (float)(v / NQ % 1000 + 1) * 1e-3f;
        t->r.cls = v % 5 == 0 ? QV_BATCH_BULK : QV_BATCH_INTERACTIVE;
        rc = qv_service_submit(p->svc, &t->r);
        p->accepted[j] = rc == 0;
        p->accepted_n += rc == 0;
        p->sent++;
        if (stale != 0) {
            p->stale++;
            p->stale_enoent += rc == QV_ENOENT;
        } else if (coll >= 100) {
            p->to_victim++;
            p->failed += rc != 0 && rc != QV_ENOENT && rc != QV_EBUSY;
        } else {
            p->stay_enoent += rc == QV_ENOENT;
            p->failed += rc != 0 && rc != QV_EBUSY;
        }
        if (rc == QV_EBUSY)
            sched_yield();
    }
    for (unsigned j = 0; j < RM_RING; j++)
        rm_settle(p, j);
    return NULL;
}

static void test_remove_under_load(void)
{
    static struct rm_producer prod[RM_THREADS];
    pthread_t th[RM_THREADS];
    struct treq *all = calloc((size_t)RM_THREADS * RM_RING, sizeof *all);
    struct qv_service_opts o;
    char lab[64];
    unsigned rounds = 0, shown = 0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(all);
    qv_service_opts_default(&o);
    o.max_k = KMAX;
    o.batcher.max_collections = 4;
    o.batcher.queue_capacity = 64;
    o.batcher.budget_ns[QV_BATCH_INTERACTIVE] = 5000 * MS;     /* no timeouts */
    o.batcher.budget_ns[QV_BATCH_BULK] = 5000 * MS;
    o.cache.entries = 1000;
    o.cache.bytes = 1 << 20;
    struct qv_service *svc = qv_service_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(svc);
    CU_ASSERT_EQUAL_FATAL(add(svc, C_FLAT), 0);
    CU_ASSERT_EQUAL_FATAL(add(svc, C_HNSW), 0);
    atomic_store(&RMV.victim, 0);
    atomic_store(&RMV.removed, 0);
    atomic_store(&RMV.stop, 0);
    for (unsigned i = 0; i < RM_THREADS; i++) {
        memset(&prod[i], 0, sizeof prod[i]);
        prod[i].svc = svc;
        prod[i].t = all + (size_t)i * RM_RING;
        prod[i].id = i;
        CU_ASSERT_EQUAL_FATAL(pthread_create(&th[i], NULL, rm_producer_main, &prod[i]), 0);
    }
    for (uint64_t vic = 100; rounds < RM_ROUNDS; vic++) {
        CU_ASSERT_EQUAL_FATAL(add_flat(svc, vic), 0);
        atomic_store(&RMV.victim, vic);
        sleep_ns(MS);
        CU_ASSERT_EQUAL(qv_service_remove_collection(svc, vic), 0);   /* while submitted to */
        atomic_store(&RMV.removed, vic);
        rounds++;
        if (rounds % 8 == 0) {
            char *text = render(svc);
            CU_ASSERT_PTR_NOT_NULL_FATAL(text);
            snprintf(lab, sizeof lab, "collection=\"%llu\"", (unsigned long long)vic);
            shown += strstr(text, lab) != NULL;
            free(text);
        }
    }
    atomic_store(&RMV.stop, 1);
    unsigned sent = 0, accepted = 0, stale = 0, stale_enoent = 0, stay_enoent = 0;
    unsigned to_victim = 0, failed = 0, not_once = 0, bad_status = 0;
    for (unsigned i = 0; i < RM_THREADS; i++) {
        pthread_join(th[i], NULL);
        sent += prod[i].sent;
        accepted += prod[i].accepted_n;
        stale += prod[i].stale;
        stale_enoent += prod[i].stale_enoent;
        stay_enoent += prod[i].stay_enoent;
        to_victim += prod[i].to_victim;
        failed += prod[i].failed;
        not_once += prod[i].not_once;
        bad_status += prod[i].bad_status;
    }
    fprintf(stderr, "\n  %u removals; %u accepted of %u; %u submits to victims, %u to "
            "removed ids\n", rounds, accepted, sent, to_victim, stale);
    CU_ASSERT(stale > 0);
    CU_ASSERT_EQUAL(stale_enoent, stale);
    CU_ASSERT_EQUAL(stay_enoent, 0);
    CU_ASSERT_EQUAL(failed, 0);
    CU_ASSERT_EQUAL(not_once, 0);
    CU_ASSERT_EQUAL(bad_status, 0);
    CU_ASSERT_EQUAL(shown, 0);
    qv_service_free(svc);
    for (size_t k = 0; k < (size_t)RM_THREADS * RM_RING; k++)  /* none done late */
        not_once += atomic_load(&all[k].calls) > 1;
    CU_ASSERT_EQUAL(not_once, 0);
    free(all);
}

int main(void)
{
    static const struct {
        const char *name;
        void (*fn)(void);
    } tests[] = {
        { "answers equal direct flat / ivf (router) / hnsw search", test_equals_direct },
        { "mixed k and nprobe: one batch, one search per group", test_mixed_groups },
        { "a repeat is a cached hit; bump_epoch makes it miss", test_cache_hit_and_epoch },
        { "semantic threshold: near hits, far misses", test_semantic_threshold },
        { "a full queue refuses with EBUSY; free drains the queue", test_busy_and_free_drains },
        { "an expired request times out unsearched", test_deadline_timeout },
        { "free() completes every queued request", test_free_completes_queued },
        { "invalid requests, collections and options are refused", test_invalid },
        { "4 producers: every request completes exactly once", test_producers },
        { "the idle flush serves a sparse stream at once", test_idle_flush },
        { "the cost model grows with n and follows observations", test_cost_model },
        { "metrics: stage histograms, cache counters, engine gauges", test_metrics },
        { "[service] configuration", test_config },
        { "[cache] each cache can be off on its own", test_config_caches_off },
        { "prefetch: every waiting request, backed off where nothing copies",
          test_prefetch },
        { "custom collections: callback, text groups; retire drains",
          test_custom_and_retire },
        { "add / search / remove 1000 times with max_collections 4", test_remove_cycles },
        { "remove waits for a submit that holds the collection",
          test_remove_waits_for_submit },
        { "remove while 4 producers submit: each accepted once, ENOENT after",
          test_remove_under_load },
    };
    CU_pSuite s;
    unsigned fails;

    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    s = CU_add_suite("service", suite_init, suite_fini);
    for (size_t i = 0; s && i < sizeof tests / sizeof tests[0]; i++)
        CU_add_test(s, tests[i].name, tests[i].fn);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    fails = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
    CU_cleanup_registry();
    return fails ? 1 : 0;
}
