/*
 * test_router.c - the engine router (router.h): dispatch by injected cost
 * parameters (tiny unit -> low-overhead engine, big batch -> high-compute
 * engine), online correction moving work off an engine 5x slower than
 * predicted, splitting a big unit over two equal engines (results equal
 * the CPU reference), injected faults (every Nth, always, heaps-dirtying)
 * losing no unit and completing none twice, the circuit breaker's
 * closed -> open -> half-open -> closed / re-open cycle (injected clock),
 * pins, prefetch (forwarded to the engine the parameters favour, never to
 * one without device memory, to the pin; an accepted prefetch marks its
 * lists resident and so changes the prediction and the dispatch),
 * the calibration cache (written, hit, corrupt file rewritten, stale
 * key), a whole IVF index through the router equal to the CPU engine,
 * bad arguments refused, allocation failures at create.
 *
 * The engines besides the real CPU engine are TEST DOUBLES ("fake
 * engines", struct fake below): each wraps its own CPU engine, computes
 * a unit at submit and hands it back from poll() only once its delay has
 * passed on the test clock (asynchronous completion), and can refuse
 * units, answer EBUSY when its small ring is full, or fail units (with
 * heaps untouched, or "dirty": after merging a bogus result).
 */
#include <CUnit/Basic.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "quiver/alloc.h"
#include "quiver/engine.h"
#include "quiver/errors.h"
#include "quiver/ivf.h"
#include "quiver/router.h"
#include "quiver/timeutil.h"
#include "quiver/topk.h"

/* ---- the test clock: real time plus an offset tests can advance ---- */

static int64_t clock_offset;

static int64_t test_clock(void *arg)
{
    (void)arg;
    return qv_now_ns() + clock_offset;
}

/* ---- TEST DOUBLE: a fake asynchronous engine around a CPU engine ---- */

#define FAKE_RING 16

struct fake {
    struct qv_engine base;
    struct qv_engine *cpu;
    struct qv_engine_caps caps;
    int64_t delay_ns;               /* poll hands a unit back after this */
    unsigned fail_every;            /* fail every Nth submitted unit */
    int fail_always;
    int dirty;                      /* failures touch the heaps first */
    int refuse;                     /* submit answers QV_ENOTSUP */
    int unhealthy;
    unsigned submitted, completed;
    unsigned prefetches;            /* prefetch calls received */
    uint32_t prefetch_lists;        /* lists in the last one */
    int prefetch_rc;                /* what prefetch answers (>= 0: nlists) */
    struct { struct qv_work_unit *wu; int64_t due; int status; } ring[FAKE_RING];
    unsigned head, count;
};

static void fake_caps(const struct qv_engine *e, struct qv_engine_caps *out)
{
    *out = ((const struct fake *)e->priv)->caps;
}

static int fake_submit(struct qv_engine *e, struct qv_work_unit *wu)
{
    struct fake *F = e->priv;
    if (F->refuse)
        return qv_seterr(QV_ENOTSUP, "fake engine refuses");
    if (F->count == FAKE_RING)
        return qv_seterr(QV_EBUSY, "fake engine ring full");
    unsigned n = ++F->submitted;
    int fail = F->fail_always || (F->fail_every && n % F->fail_every == 0);
    int status = 0;
    if (!fail || F->dirty)
        status = qv_engine_run(F->cpu, wu);
    if (fail && F->dirty)
        qv_topk_push(&wu->heaps[0], -1e30f, 999999999);     /* garbage */
    if (fail)
        status = QV_EIO;
    unsigned at = (F->head + F->count++) % FAKE_RING;
    F->ring[at].wu = wu;
    F->ring[at].due = test_clock(NULL) + F->delay_ns;
    F->ring[at].status = status;
    return 0;
}

static int fake_poll(struct qv_engine *e, struct qv_work_unit **done, int max)
{
    struct fake *F = e->priv;
    int n = 0;
    while (n < max && F->count && F->ring[F->head].due <= test_clock(NULL)) {
        struct qv_work_unit *wu = F->ring[F->head].wu;
        wu->status = F->ring[F->head].status;
        wu->device_ns = 1000;
        wu->transfer_ns = 10;
        done[n++] = wu;
        F->head = (F->head + 1) % FAKE_RING;
        F->count--;
        F->completed++;
    }
    return n;
}

static int fake_prefetch(struct qv_engine *e, const struct qv_work_unit *wu)
{
    struct fake *F = e->priv;
    F->prefetches++;
    F->prefetch_lists = wu->nlists;
    if (F->prefetch_rc < 0)
        return qv_seterr(F->prefetch_rc, "fake engine declines the prefetch");
    return (int)wu->nlists;
}

static int fake_health(const struct qv_engine *e)
{
    return ((const struct fake *)e->priv)->unhealthy ? QV_EUNAVAIL : 0;
}

static void fake_free(struct qv_engine *e)
{
    struct fake *F = e->priv;
    qv_engine_free(F->cpu);
    free(F);
}

static const struct qv_engine_ops fake_ops = {
    .name = "fake", .caps = fake_caps, .submit = fake_submit, .poll = fake_poll,
    .health = fake_health, .free = fake_free, .prefetch = fake_prefetch,
};

static struct fake *fake_new(int64_t delay_ns)
{
    struct fake *F = calloc(1, sizeof *F);
    F->cpu = qv_engine_cpu_create(NULL);
    F->caps.kinds = 0xf;
    F->caps.max_dim = 65536;
    F->delay_ns = delay_ns;
    F->base.ops = &fake_ops;
    F->base.priv = F;
    return F;
}

/* ---- synthetic FLAT (IP) units and the CPU reference ---- */

#define K 10

struct tdata {
    uint32_t dim, nlists, n, nq;
    float **codes;
    uint64_t **ids;
    struct qv_wu_list *lists;
    float *queries, *qnorms;
    uint32_t *offs, *plist;
    float *ref_d;
    uint64_t *ref_i;
};

struct tunit {
    struct qv_work_unit wu;
    struct qv_topk *heaps;
    float *d;
    uint64_t *i;
};

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t urand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 32);
}

static void unit_init(struct tunit *t, const struct tdata *D)
{
    t->heaps = calloc(D->nq, sizeof *t->heaps);
    t->d = calloc((size_t)D->nq * K, sizeof *t->d);
    t->i = calloc((size_t)D->nq * K, sizeof *t->i);
    for (uint32_t q = 0; q < D->nq; q++)
        qv_topk_init(&t->heaps[q], K, t->d + q * K, t->i + q * K);
    t->wu = (struct qv_work_unit){
        .kind = QV_WU_FLAT, .metric = QV_METRIC_IP, .dim = D->dim, .nq = D->nq,
        .queries = D->queries, .qnorms = D->qnorms, .nlists = D->nlists, .lists = D->lists,
        .probe_offsets = D->offs, .probe_lists = D->plist, .heaps = t->heaps,
    };
}

static void unit_fini(struct tunit *t)
{
    free(t->heaps);
    free(t->d);
    free(t->i);
}

/* nlists lists of n entries (dim), nq queries each probing np distinct
 * lists; the CPU engine's results kept as the reference. */
static struct tdata *data_new(uint32_t dim, uint32_t nlists, uint32_t n, uint32_t nq,
                              uint32_t np)
{
    struct tdata *D = calloc(1, sizeof *D);
    *D = (struct tdata){ .dim = dim, .nlists = nlists, .n = n, .nq = nq };
    D->codes = calloc(nlists, sizeof *D->codes);
    D->ids = calloc(nlists, sizeof *D->ids);
    D->lists = calloc(nlists, sizeof *D->lists);
    for (uint32_t l = 0; l < nlists; l++) {
        D->codes[l] = aligned_alloc(64, ((size_t)n * dim * sizeof(float) + 63) / 64 * 64);
        D->ids[l] = malloc(n * sizeof(uint64_t));
        for (size_t j = 0; j < (size_t)n * dim; j++)
            D->codes[l][j] = (float)(urand() >> 8) / 16777216.0f - 0.5f;
        for (uint32_t j = 0; j < n; j++)
            D->ids[l][j] = (uint64_t)l * n + j;
        D->lists[l] = (struct qv_wu_list){ .codes = D->codes[l], .ids = D->ids[l], .n = n,
                                           .list_no = l };
    }
    D->queries = malloc((size_t)nq * dim * sizeof(float));
    D->qnorms = calloc(nq, sizeof(float));
    for (size_t j = 0; j < (size_t)nq * dim; j++)
        D->queries[j] = (float)(urand() >> 8) / 16777216.0f - 0.5f;
    D->offs = malloc((nq + 1) * sizeof(uint32_t));
    D->plist = malloc((size_t)nq * np * sizeof(uint32_t));
    for (uint32_t q = 0; q <= nq; q++)
        D->offs[q] = q * np;
    for (uint32_t q = 0; q < nq; q++) {
        uint32_t first = urand() % nlists;
        for (uint32_t p = 0; p < np; p++)
            D->plist[q * np + p] = (first + p * 7) % nlists;   /* distinct if 7 !| nlists */
    }
    struct qv_engine *cpu = qv_engine_cpu_create(NULL);
    struct tunit t;
    unit_init(&t, D);
    CU_ASSERT_EQUAL(qv_engine_run(cpu, &t.wu), 0);
    for (uint32_t q = 0; q < nq; q++)
        qv_topk_sort(&t.heaps[q]);
    D->ref_d = t.d;
    D->ref_i = t.i;
    free(t.heaps);
    qv_engine_free(cpu);
    return D;
}

static void data_free(struct tdata *D)
{
    for (uint32_t l = 0; l < D->nlists; l++) {
        free(D->codes[l]);
        free(D->ids[l]);
    }
    free(D->codes);
    free(D->ids);
    free(D->lists);
    free(D->queries);
    free(D->qnorms);
    free(D->offs);
    free(D->plist);
    free(D->ref_d);
    free(D->ref_i);
    free(D);
}

/* Sort t's heaps; 1 when they equal D's reference (ids exact, distances
 * within float rounding). */
static int unit_matches(struct tunit *t, const struct tdata *D)
{
    int ok = 1;
    for (uint32_t q = 0; q < D->nq; q++)
        qv_topk_sort(&t->heaps[q]);
    for (size_t j = 0; j < (size_t)D->nq * K; j++)
        if (t->i[j] != D->ref_i[j] ||
            fabsf(t->d[j] - D->ref_d[j]) > 1e-4f * (1.0f + fabsf(D->ref_d[j])))
            ok = 0;
    return ok;
}

/* Run a fresh unit of D through the router: its status, *match = equal
 * to the reference. */
static int run_unit(struct qv_router *r, const struct tdata *D, int *match)
{
    struct tunit t;
    unit_init(&t, D);
    int rc = qv_engine_run(qv_router_engine(r), &t.wu);
    *match = rc == 0 && unit_matches(&t, D);
    unit_fini(&t);
    return rc;
}

static struct qv_router *router_new(int split)
{
    struct qv_router_opts o;
    qv_router_opts_default(&o);
    o.calibrate = 0;
    o.split = split;
    o.clock = test_clock;
    o.breaker_cooldown_ms = 1000;
    return qv_router_create(&o);
}

static const struct qv_router_engine_stats *est(const struct qv_router_stats *s,
                                                const char *name)
{
    for (unsigned i = 0; i < s->nengines; i++)
        if (strcmp(s->engine[i].name, name) == 0)
            return &s->engine[i];
    return NULL;
}

static void set_all(struct qv_router *r, const char *name, double ovh, double mem, double fl)
{
    struct qv_router_params p = { ovh, 10e9, mem, fl };
    for (int k = 0; k < QV_WU__COUNT; k++)
        CU_ASSERT_EQUAL(qv_router_set_params(r, name, (enum qv_wu_kind)k, &p), 0);
}

/* ---- tests ---- */

static void test_cost_choice(void)
{
    struct tdata *tiny = data_new(16, 4, 16, 1, 1);
    struct tdata *big = data_new(32, 32, 256, 64, 16);
    struct fake *lo = fake_new(0), *hi = fake_new(0);
    struct qv_router *r = router_new(0);
    struct qv_router_stats s;
    int match;
    CU_ASSERT_EQUAL(qv_router_add(r, "lo", &lo->base, QV_ROUTER_CLEAN_FAIL), 0);
    CU_ASSERT_EQUAL(qv_router_add(r, "hi", &hi->base, QV_ROUTER_CLEAN_FAIL), 0);
    set_all(r, "lo", 1e3, 1e9, 1e9);        /* 1 us launch, slow scans */
    set_all(r, "hi", 1e6, 1e12, 1e12);      /* 1 ms launch, fast scans */
    CU_ASSERT_EQUAL(run_unit(r, tiny, &match), 0);
    CU_ASSERT_TRUE(match);
    qv_router_stats(r, &s);
    CU_ASSERT_EQUAL(est(&s, "lo")->units, 1);
    CU_ASSERT_EQUAL(est(&s, "hi")->units, 0);
    CU_ASSERT_EQUAL(run_unit(r, big, &match), 0);
    CU_ASSERT_TRUE(match);
    qv_router_stats(r, &s);
    CU_ASSERT_EQUAL(est(&s, "lo")->units, 1);
    CU_ASSERT_EQUAL(est(&s, "hi")->units, 1);
    /* swapping the parameters swaps the choice */
    set_all(r, "hi", 1e3, 1e9, 1e9);
    set_all(r, "lo", 1e6, 1e12, 1e12);
    CU_ASSERT_EQUAL(run_unit(r, tiny, &match), 0);
    CU_ASSERT_EQUAL(run_unit(r, big, &match), 0);
    qv_router_stats(r, &s);
    CU_ASSERT_EQUAL(est(&s, "lo")->units, 2);
    CU_ASSERT_EQUAL(est(&s, "hi")->units, 2);
    CU_ASSERT_EQUAL(s.submitted, 4);
    CU_ASSERT_EQUAL(s.completed, 4);
    qv_router_free(r);
    fake_free(&lo->base);
    fake_free(&hi->base);
    data_free(tiny);
    data_free(big);
}

static void test_online_correction(void)
{
    struct tdata *D = data_new(16, 4, 32, 2, 1);
    struct fake *a = fake_new(1500000), *b = fake_new(300000);     /* 1.5 ms, 0.3 ms */
    struct qv_router *r = router_new(0);
    struct qv_router_stats s;
    int match, ok = 1;
    qv_router_add(r, "a", &a->base, QV_ROUTER_CLEAN_FAIL);
    qv_router_add(r, "b", &b->base, QV_ROUTER_CLEAN_FAIL);
    set_all(r, "a", 300000, 1e12, 1e12);    /* both predicted 0.3 ms */
    set_all(r, "b", 300000, 1e12, 1e12);
    for (int i = 0; i < 30; i++)
        ok &= run_unit(r, D, &match) == 0 && match;
    CU_ASSERT_TRUE(ok);
    qv_router_stats(r, &s);
    const struct qv_router_engine_stats *sa = est(&s, "a"), *sb = est(&s, "b");
    uint32_t bk = (uint32_t)ilogb(300000.0);
    CU_ASSERT(sa->units >= 1);              /* ties go to the first */
    CU_ASSERT(sb->units >= 25);
    CU_ASSERT(sa->ewma[QV_WU_FLAT][bk] > 1.5f);
    /* relative, not absolute: b's own factor rises too when the host is
     * loaded (observed = wall time to the poll that returned it; a CI run
     * under ASan beside two compilers read b at 1.5).  a got one unit: its
     * factor is 1.6 (one clamped step), b's stays near 1 */
    CU_ASSERT(sa->ewma[QV_WU_FLAT][bk] > sb->ewma[QV_WU_FLAT][bk]);
    CU_ASSERT(sa->observed_ns > 2 * sa->predicted_ns);
    qv_router_free(r);
    fake_free(&a->base);
    fake_free(&b->base);
    data_free(D);
}

/* One completion far off its prediction (a preempted unit) must not hand
 * the next units to an engine the model rates much slower: the ratio is
 * clamped per completion.  Then a sustained 30x does move them. */
static void test_outlier(void)
{
    struct tdata *D = data_new(16, 4, 32, 2, 1);
    struct fake *a = fake_new(300000), *b = fake_new(900000);     /* 0.3 ms, 0.9 ms */
    struct qv_router *r = router_new(0);
    struct qv_router_stats s;
    int match, ok = 1;
    qv_router_add(r, "a", &a->base, QV_ROUTER_CLEAN_FAIL);
    qv_router_add(r, "b", &b->base, QV_ROUTER_CLEAN_FAIL);
    set_all(r, "a", 300000, 1e12, 1e12);    /* a predicted 3x faster than b */
    set_all(r, "b", 900000, 1e12, 1e12);
    ok &= run_unit(r, D, &match) == 0 && match;
    a->delay_ns = 9000000;                  /* one unit at 30x */
    ok &= run_unit(r, D, &match) == 0 && match;
    a->delay_ns = 300000;
    for (int i = 0; i < 10; i++)
        ok &= run_unit(r, D, &match) == 0 && match;
    CU_ASSERT_TRUE(ok);
    qv_router_stats(r, &s);
    CU_ASSERT_EQUAL(est(&s, "a")->units, 12);
    CU_ASSERT_EQUAL(est(&s, "b")->units, 0);
    uint32_t bk = (uint32_t)ilogb(300000.0);
    CU_ASSERT(est(&s, "a")->ewma[QV_WU_FLAT][bk] < 1.7f);
    /* sustained: a at 30x for good -> within a few units b takes over */
    a->delay_ns = 9000000;
    for (int i = 0; i < 10; i++)
        ok &= run_unit(r, D, &match) == 0 && match;
    CU_ASSERT_TRUE(ok);
    qv_router_stats(r, &s);
    CU_ASSERT(est(&s, "a")->units <= 12 + 4);
    CU_ASSERT(est(&s, "b")->units >= 6);
    qv_router_free(r);
    fake_free(&a->base);
    fake_free(&b->base);
    data_free(D);
}

static void test_split(void)
{
    struct tdata *D = data_new(32, 64, 128, 40, 16);
    int match;
    for (int with_cpu = 0; with_cpu < 2; with_cpu++) {
        struct fake *a = fake_new(0), *b = fake_new(200000);
        struct qv_engine *cpu = qv_engine_cpu_create(NULL);
        struct qv_router *r = router_new(1);
        struct qv_router_stats s;
        if (with_cpu)
            qv_router_add(r, "a", cpu, QV_ROUTER_CLEAN_FAIL | QV_ROUTER_SYNC);
        else
            qv_router_add(r, "a", &a->base, QV_ROUTER_CLEAN_FAIL);
        qv_router_add(r, "b", &b->base, QV_ROUTER_CLEAN_FAIL);
        set_all(r, "a", 10000, 1e9, 1e9);   /* equal rates, ~ms per unit */
        set_all(r, "b", 10000, 1e9, 1e9);
        CU_ASSERT_EQUAL(run_unit(r, D, &match), 0);
        CU_ASSERT_TRUE(match);
        qv_router_stats(r, &s);
        CU_ASSERT_EQUAL(s.split, 1);
        CU_ASSERT_EQUAL(est(&s, "a")->split_parts, 1);
        CU_ASSERT_EQUAL(est(&s, "b")->split_parts, 1);
        /* below split_min_ns: not split */
        struct tdata *small = data_new(8, 4, 16, 1, 2);
        CU_ASSERT_EQUAL(run_unit(r, small, &match), 0);
        CU_ASSERT_TRUE(match);
        qv_router_stats(r, &s);
        CU_ASSERT_EQUAL(s.split, 1);
        data_free(small);
        qv_router_free(r);
        qv_engine_free(cpu);
        fake_free(&a->base);
        fake_free(&b->base);
    }
    /* two engines on the host's cores take cores from each other: the
     * same unit and rates are not split, and run on one of them */
    {
        struct fake *a = fake_new(0), *b = fake_new(200000);
        struct qv_router *r = router_new(1);
        struct qv_router_stats s;
        qv_router_add(r, "a", &a->base, QV_ROUTER_CLEAN_FAIL | QV_ROUTER_HOST_CORES);
        qv_router_add(r, "b", &b->base, QV_ROUTER_CLEAN_FAIL | QV_ROUTER_HOST_CORES);
        set_all(r, "a", 10000, 1e9, 1e9);
        set_all(r, "b", 10000, 1e9, 1e9);
        CU_ASSERT_EQUAL(run_unit(r, D, &match), 0);
        CU_ASSERT_TRUE(match);
        qv_router_stats(r, &s);
        CU_ASSERT_EQUAL(s.split, 0);
        CU_ASSERT_EQUAL(est(&s, "a")->units + est(&s, "b")->units, 1);
        qv_router_free(r);
        fake_free(&a->base);
        fake_free(&b->base);
    }
    data_free(D);
}

/* Submit nu units at once through the router (split on or off), poll
 * until all are back: each must come back exactly once; returns how many
 * completed with status 0 and matched the reference, *errs the others. */
static int run_many(struct qv_router *r, const struct tdata *D, int nu, int *errs,
                    int *twice)
{
    struct tunit *t = calloc((size_t)nu, sizeof *t);
    int *seen = calloc((size_t)nu, sizeof *seen);
    struct qv_engine *e = qv_router_engine(r);
    int submitted = 0, back = 0, good = 0;
    *errs = 0;
    *twice = 0;
    for (int i = 0; i < nu; i++) {
        unit_init(&t[i], D);
        t[i].wu.user = &seen[i];
    }
    int64_t t0 = qv_now_ns();
    while (back < nu && qv_now_ns() - t0 < 10000000000LL) {
        while (submitted < nu && e->ops->submit(e, &t[submitted].wu) == 0)
            submitted++;
        struct qv_work_unit *done[8];
        int n = e->ops->poll(e, done, 8);
        for (int j = 0; j < n; j++) {
            int *c = done[j]->user;
            if (++*c > 1)
                (*twice)++;
            back++;
        }
    }
    for (int i = 0; i < nu; i++) {
        if (seen[i] == 1 && t[i].wu.status == 0 && unit_matches(&t[i], D))
            good++;
        else if (seen[i] == 1 && t[i].wu.status != 0)
            (*errs)++;
        unit_fini(&t[i]);
    }
    free(t);
    free(seen);
    return good;
}

static void test_faults(void)
{
    struct tdata *D = data_new(16, 32, 64, 8, 8);
    int errs, twice;
    for (int split = 0; split < 2; split++) {
        struct fake *a = fake_new(0), *b = fake_new(50000);
        struct qv_router *r = router_new(split);
        struct qv_router_stats s;
        qv_router_add(r, "a", &a->base, QV_ROUTER_CLEAN_FAIL);
        qv_router_add(r, "b", &b->base, QV_ROUTER_CLEAN_FAIL);
        set_all(r, "a", 1000, 1e9, 1e9);
        set_all(r, "b", 1000, 1e9, 1e9);
        /* every 3rd unit on a fails: all still complete once, correct */
        a->fail_every = 3;
        CU_ASSERT_EQUAL(run_many(r, D, 60, &errs, &twice), 60);
        CU_ASSERT_EQUAL(errs, 0);
        CU_ASSERT_EQUAL(twice, 0);
        qv_router_stats(r, &s);
        CU_ASSERT(est(&s, "a")->failures >= 1);
        CU_ASSERT_EQUAL(est(&s, "a")->redispatches, est(&s, "a")->failures);
        CU_ASSERT(s.queued >= 1);           /* rings of 16 were full */
        /* a fails always: b takes everything */
        a->fail_every = 0;
        a->fail_always = 1;
        CU_ASSERT_EQUAL(run_many(r, D, 40, &errs, &twice), 40);
        CU_ASSERT_EQUAL(twice, 0);
        /* both fail always: every unit completes once, with the error */
        b->fail_always = 1;
        CU_ASSERT_EQUAL(run_many(r, D, 30, &errs, &twice), 0);
        CU_ASSERT_EQUAL(errs, 30);
        CU_ASSERT_EQUAL(twice, 0);
        qv_router_stats(r, &s);
        CU_ASSERT_EQUAL(s.completed, 130);
        CU_ASSERT_EQUAL(s.failed, 30);
        qv_router_free(r);
        fake_free(&a->base);
        fake_free(&b->base);
    }
    /* heaps-dirtying failures (no CLEAN_FAIL): whole unit re-run */
    for (int split = 0; split < 2; split++) {
        struct fake *a = fake_new(0), *b = fake_new(20000);
        struct qv_router *r = router_new(split);
        struct qv_router_stats s;
        a->fail_every = 2;
        a->dirty = 1;
        qv_router_add(r, "a", &a->base, 0);
        qv_router_add(r, "b", &b->base, QV_ROUTER_CLEAN_FAIL);
        set_all(r, "a", 1000, 1e9, 1e9);
        set_all(r, "b", 1000, 1e9, 1e9);
        CU_ASSERT_EQUAL(run_many(r, D, 40, &errs, &twice), 40);
        CU_ASSERT_EQUAL(twice, 0);
        qv_router_stats(r, &s);
        CU_ASSERT(s.reruns >= 1);
        qv_router_free(r);
        fake_free(&a->base);
        fake_free(&b->base);
    }
    data_free(D);
}

static void test_breaker(void)
{
    struct tdata *D = data_new(16, 4, 32, 2, 1);
    struct fake *a = fake_new(0), *b = fake_new(0);
    struct qv_router *r = router_new(0);
    struct qv_router_stats s;
    int match;
    qv_router_add(r, "a", &a->base, QV_ROUTER_CLEAN_FAIL);
    qv_router_add(r, "b", &b->base, QV_ROUTER_CLEAN_FAIL);
    set_all(r, "a", 1000, 1e12, 1e12);      /* a is preferred */
    set_all(r, "b", 100000, 1e12, 1e12);
    a->fail_always = 1;
    for (int i = 0; i < 3; i++) {
        CU_ASSERT_EQUAL(run_unit(r, D, &match), 0);
        CU_ASSERT_TRUE(match);
    }
    qv_router_stats(r, &s);
    CU_ASSERT_EQUAL(est(&s, "a")->breaker, QV_ROUTER_BREAKER_OPEN);
    CU_ASSERT_EQUAL(est(&s, "a")->breaker_opens, 1);
    CU_ASSERT_EQUAL(est(&s, "a")->failures, 3);
    /* open: a gets nothing */
    for (int i = 0; i < 3; i++)
        CU_ASSERT_EQUAL(run_unit(r, D, &match), 0);
    qv_router_stats(r, &s);
    CU_ASSERT_EQUAL(a->submitted, 3);
    CU_ASSERT_EQUAL(est(&s, "b")->units, 6);
    /* after the cooldown one probe goes to a: half-open while it runs,
     * closed when it succeeds */
    clock_offset += 2000000000LL;
    a->fail_always = 0;
    a->delay_ns = 2000000;
    struct tunit t;
    unit_init(&t, D);
    struct qv_engine *e = qv_router_engine(r);
    CU_ASSERT_EQUAL(e->ops->submit(e, &t.wu), 0);
    qv_router_stats(r, &s);
    CU_ASSERT_EQUAL(est(&s, "a")->breaker, QV_ROUTER_BREAKER_HALF_OPEN);
    CU_ASSERT_EQUAL(a->submitted, 4);
    /* while the probe is out, a second unit goes to b */
    CU_ASSERT_EQUAL(run_unit(r, D, &match), 0);
    CU_ASSERT_EQUAL(a->submitted, 4);
    struct qv_work_unit *done[4];
    int got = 0;
    while (!got)
        got = e->ops->poll(e, done, 4);
    CU_ASSERT_EQUAL(got, 1);
    CU_ASSERT_PTR_EQUAL(done[0], &t.wu);
    CU_ASSERT_EQUAL(t.wu.status, 0);
    CU_ASSERT_TRUE(unit_matches(&t, D));
    unit_fini(&t);
    qv_router_stats(r, &s);
    CU_ASSERT_EQUAL(est(&s, "a")->breaker, QV_ROUTER_BREAKER_CLOSED);
    /* open again; a failed probe re-opens it */
    a->delay_ns = 0;
    a->fail_always = 1;
    for (int i = 0; i < 3; i++)
        CU_ASSERT_EQUAL(run_unit(r, D, &match), 0);
    qv_router_stats(r, &s);
    CU_ASSERT_EQUAL(est(&s, "a")->breaker, QV_ROUTER_BREAKER_OPEN);
    CU_ASSERT_EQUAL(est(&s, "a")->breaker_opens, 2);
    clock_offset += 2000000000LL;
    CU_ASSERT_EQUAL(run_unit(r, D, &match), 0);    /* probe fails, b serves */
    CU_ASSERT_TRUE(match);
    qv_router_stats(r, &s);
    CU_ASSERT_EQUAL(est(&s, "a")->breaker, QV_ROUTER_BREAKER_OPEN);
    CU_ASSERT_EQUAL(est(&s, "a")->breaker_opens, 3);
    CU_ASSERT_EQUAL(a->submitted, 8);
    qv_router_free(r);
    fake_free(&a->base);
    fake_free(&b->base);
    data_free(D);
}

static void test_pin(void)
{
    struct tdata *D = data_new(16, 4, 32, 2, 1);
    struct fake *a = fake_new(0), *b = fake_new(0);
    struct qv_router *r = router_new(0);
    struct qv_router_stats s;
    int match;
    qv_router_add(r, "a", &a->base, QV_ROUTER_CLEAN_FAIL);
    qv_router_add(r, "b", &b->base, QV_ROUTER_CLEAN_FAIL);
    set_all(r, "a", 1000, 1e12, 1e12);
    set_all(r, "b", 1e6, 1e12, 1e12);
    CU_ASSERT_EQUAL(qv_router_pin(r, "b"), 0);
    for (int i = 0; i < 3; i++)
        CU_ASSERT_EQUAL(run_unit(r, D, &match), 0);
    CU_ASSERT_EQUAL(b->submitted, 3);
    CU_ASSERT_EQUAL(a->submitted, 0);
    CU_ASSERT_EQUAL(qv_router_pin(r, NULL), 0);
    CU_ASSERT_EQUAL(run_unit(r, D, &match), 0);
    CU_ASSERT_EQUAL(a->submitted, 1);
    /* a per-unit pin */
    struct tunit t;
    unit_init(&t, D);
    struct qv_engine *e = qv_router_engine(r);
    CU_ASSERT_EQUAL(qv_router_submit_pinned(r, &t.wu, "b"), 0);
    struct qv_work_unit *done[2];
    while (e->ops->poll(e, done, 2) == 0)
        ;
    CU_ASSERT_EQUAL(b->submitted, 4);
    CU_ASSERT_TRUE(unit_matches(&t, D));
    /* a pinned unit the engine refuses completes with its error */
    b->refuse = 1;
    unit_fini(&t);
    unit_init(&t, D);
    CU_ASSERT_EQUAL(qv_router_submit_pinned(r, &t.wu, "b"), 0);
    while (e->ops->poll(e, done, 2) == 0)
        ;
    CU_ASSERT_EQUAL(t.wu.status, QV_ENOTSUP);
    unit_fini(&t);
    /* while an unpinned one falls back to a */
    a->refuse = 0;
    CU_ASSERT_EQUAL(qv_router_pin(r, NULL), 0);
    CU_ASSERT_EQUAL(run_unit(r, D, &match), 0);
    CU_ASSERT_TRUE(match);
    qv_router_stats(r, &s);
    CU_ASSERT_EQUAL(est(&s, "b")->refusals, 1);
    /* errors */
    CU_ASSERT_EQUAL(qv_router_pin(r, "nope"), QV_ENOENT);
    CU_ASSERT_EQUAL(qv_router_submit_pinned(r, &t.wu, "nope"), QV_ENOENT);
    qv_router_free(r);
    fake_free(&a->base);
    fake_free(&b->base);
    data_free(D);
}

static void set_link(struct qv_router *r, const char *name, double ovh, double link,
                     double mem, double fl)
{
    struct qv_router_params p = { ovh, link, mem, fl };
    for (int k = 0; k < QV_WU__COUNT; k++)
        CU_ASSERT_EQUAL(qv_router_set_params(r, name, (enum qv_wu_kind)k, &p), 0);
}

/* Prefetch goes to the engine the injected parameters favour, never to
 * one without device memory, to the pin when pinned; a decline marks
 * nothing; an accepted prefetch marks the lists resident, so the model
 * stops charging their link bytes and dispatch moves to that engine. */
static void test_prefetch(void)
{
    struct tdata *D = data_new(16, 8, 64, 4, 2);
    struct fake *d1 = fake_new(0), *d2 = fake_new(0), *h = fake_new(0);
    d1->caps.device_memory = d2->caps.device_memory = 1ull << 30;
    struct qv_router *r = router_new(0);
    struct qv_engine *e = qv_router_engine(r);
    struct qv_router_stats s;
    qv_router_add(r, "d1", &d1->base, QV_ROUTER_CLEAN_FAIL);
    qv_router_add(r, "d2", &d2->base, QV_ROUTER_CLEAN_FAIL);
    qv_router_add(r, "host", &h->base, QV_ROUTER_CLEAN_FAIL);
    /* the lists of a batch, without probes (one query over each list) */
    struct qv_work_unit pw = { .kind = QV_WU_FLAT, .metric = QV_METRIC_IP, .dim = D->dim,
                               .nlists = D->nlists, .lists = D->lists };
    set_all(r, "d1", 1e3, 1e12, 1e12);
    set_all(r, "d2", 1e6, 1e12, 1e12);
    set_all(r, "host", 1e7, 1e9, 1e9);
    CU_ASSERT_EQUAL(qv_engine_prefetch(e, &pw), (int)D->nlists);
    CU_ASSERT_EQUAL(d1->prefetches, 1);
    CU_ASSERT_EQUAL(d1->prefetch_lists, D->nlists);
    CU_ASSERT_EQUAL(d2->prefetches + h->prefetches, 0);
    set_all(r, "d1", 1e6, 1e12, 1e12);      /* now d2 is favoured */
    set_all(r, "d2", 1e3, 1e12, 1e12);
    CU_ASSERT_EQUAL(qv_engine_prefetch(e, &pw), (int)D->nlists);
    CU_ASSERT_EQUAL(d2->prefetches, 1);
    CU_ASSERT_EQUAL(d1->prefetches, 1);
    set_all(r, "host", 1e2, 1e12, 1e12);    /* host memory wins: nothing to move */
    CU_ASSERT_EQUAL(qv_engine_prefetch(e, &pw), 0);
    CU_ASSERT_EQUAL(h->prefetches, 0);
    CU_ASSERT_EQUAL(d1->prefetches + d2->prefetches, 2);
    CU_ASSERT_EQUAL(qv_router_pin(r, "d1"), 0);     /* the pin decides */
    CU_ASSERT_EQUAL(qv_engine_prefetch(e, &pw), (int)D->nlists);
    CU_ASSERT_EQUAL(d1->prefetches, 2);
    CU_ASSERT_EQUAL(qv_router_pin(r, "host"), 0);
    CU_ASSERT_EQUAL(qv_engine_prefetch(e, &pw), 0);
    CU_ASSERT_EQUAL(h->prefetches, 0);
    CU_ASSERT_EQUAL(qv_router_pin(r, NULL), 0);
    d2->unhealthy = 1;                      /* an unhealthy engine is skipped */
    set_all(r, "host", 1e7, 1e9, 1e9);
    set_all(r, "d1", 1e4, 1e12, 1e12);
    CU_ASSERT_EQUAL(qv_engine_prefetch(e, &pw), (int)D->nlists);
    CU_ASSERT_EQUAL(d1->prefetches, 3);
    CU_ASSERT_EQUAL(d2->prefetches, 1);
    d2->unhealthy = 0;
    qv_router_stats(r, &s);
    CU_ASSERT_EQUAL(s.prefetch_calls, 6);
    CU_ASSERT_EQUAL(s.prefetch_kept, 2);
    CU_ASSERT_EQUAL(est(&s, "d1")->prefetches, 3);
    CU_ASSERT_EQUAL(est(&s, "d1")->prefetch_lists, 3 * D->nlists);
    CU_ASSERT_EQUAL(est(&s, "d2")->prefetches, 1);
    CU_ASSERT_EQUAL(est(&s, "host")->prefetches, 0);
    struct qv_work_unit bad = pw;
    bad.lists = NULL;
    CU_ASSERT_EQUAL(qv_engine_prefetch(e, &bad), QV_EINVAL);
    qv_router_free(r);

    /* residency: d1 has a slow link (100 MB/s), host scans slowly; cold
     * lists cost d1 ~0.3 ms of link, so units go to host; once a prefetch
     * (pinned to d1) marked them resident, only the queries cross the link
     * and units go to d1 (no online correction: the fakes' timing is not
     * what the parameters say) */
    struct qv_router_opts ro;
    qv_router_opts_default(&ro);
    ro.calibrate = 0;
    ro.split = 0;
    ro.ewma_alpha = 0;
    ro.clock = test_clock;
    r = qv_router_create(&ro);
    e = qv_router_engine(r);
    d1->submitted = h->submitted = 0;
    qv_router_add(r, "d1", &d1->base, QV_ROUTER_CLEAN_FAIL);
    qv_router_add(r, "host", &h->base, QV_ROUTER_CLEAN_FAIL);
    set_link(r, "d1", 1e3, 1e8, 1e12, 1e12);
    set_link(r, "host", 1e3, 10e9, 1e9, 1e9);
    struct tunit t;
    unit_init(&t, D);
    struct qv_router_prediction p0, p1, ph;
    CU_ASSERT_EQUAL(qv_router_predict(r, "d1", &t.wu, &p0), 0);
    CU_ASSERT_EQUAL(qv_router_predict(r, "host", &t.wu, &ph), 0);
    CU_ASSERT_EQUAL(ph.link_bytes, 0.0);    /* shares host memory */
    const double qbytes = 4.0 * D->nq * D->dim;
    CU_ASSERT(p0.link_bytes > qbytes + 4000.0);
    CU_ASSERT(p0.completion_ns > ph.completion_ns);
    CU_ASSERT_EQUAL(qv_router_predict(r, NULL, &t.wu, &p1), 0);
    CU_ASSERT_STRING_EQUAL(p1.engine, "host");
    int match;
    CU_ASSERT_EQUAL(run_unit(r, D, &match), 0);
    CU_ASSERT_TRUE(match);
    CU_ASSERT_EQUAL(h->submitted, 1);
    CU_ASSERT_EQUAL(d1->submitted, 0);
    /* unpinned, the prefetch is not forwarded: host would run it */
    CU_ASSERT_EQUAL(qv_engine_prefetch(e, &t.wu), 0);
    CU_ASSERT_EQUAL(d1->prefetches, 3);
    /* a decline marks nothing */
    qv_router_pin(r, "d1");
    d1->prefetch_rc = QV_EBUSY;
    CU_ASSERT_EQUAL(qv_engine_prefetch(e, &t.wu), QV_EBUSY);
    CU_ASSERT_EQUAL(qv_router_predict(r, "d1", &t.wu, &p1), 0);
    CU_ASSERT_EQUAL(p1.link_bytes, p0.link_bytes);
    d1->prefetch_rc = 0;
    /* accepted: the unit's lists are resident on d1 (its probes given) */
    CU_ASSERT_EQUAL(qv_engine_prefetch(e, &t.wu), (int)D->nlists);
    CU_ASSERT_EQUAL(qv_router_predict(r, "d1", &t.wu, &p1), 0);
    CU_ASSERT_EQUAL(p1.link_bytes, qbytes);
    CU_ASSERT(p1.completion_ns < ph.completion_ns);
    qv_router_pin(r, NULL);
    CU_ASSERT_EQUAL(qv_router_predict(r, NULL, &t.wu, &p1), 0);
    CU_ASSERT_STRING_EQUAL(p1.engine, "d1");
    CU_ASSERT_EQUAL(run_unit(r, D, &match), 0);
    CU_ASSERT_TRUE(match);
    CU_ASSERT_EQUAL(d1->submitted, 1);
    /* forget drops the mark */
    for (uint32_t l = 0; l < D->nlists; l++)
        qv_engine_forget(e, D->lists[l].codes);
    CU_ASSERT_EQUAL(qv_router_predict(r, "d1", &t.wu, &p1), 0);
    CU_ASSERT_EQUAL(p1.link_bytes, p0.link_bytes);
    qv_router_stats(r, &s);
    CU_ASSERT_EQUAL(est(&s, "d1")->prefetch_declined, 1);
    CU_ASSERT_EQUAL(est(&s, "d1")->prefetches, 2);
    CU_ASSERT_EQUAL(qv_router_predict(r, "zz", &t.wu, &p1), QV_ENOENT);
    unit_fini(&t);
    qv_router_free(r);
    fake_free(&d1->base);
    fake_free(&d2->base);
    fake_free(&h->base);
    data_free(D);
}

static int file_has(const char *path, const char *needle)
{
    char buf[8192];
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    return strstr(buf, needle) != NULL;
}

static struct qv_router *calibrated(const char *dir, struct qv_engine *cpu, const char *desc)
{
    struct qv_router_opts o;
    qv_router_opts_default(&o);
    o.calibration_dir = dir;
    struct qv_router *r = qv_router_create(&o);
    CU_ASSERT_EQUAL(qv_router_add(r, "cpu", cpu, QV_ROUTER_CLEAN_FAIL | QV_ROUTER_SYNC), 0);
    CU_ASSERT_EQUAL(qv_router_set_desc(r, "cpu", desc), 0);
    CU_ASSERT_EQUAL(qv_router_calibrate(r), 0);
    return r;
}

static void test_calibration_cache(void)
{
    char dir[] = "/tmp/qv_router_XXXXXX", sub[128], path[300], host[128];
    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
    snprintf(sub, sizeof sub, "%s/a/b", dir);       /* created on write */
    struct qv_engine *cpu = qv_engine_cpu_create(NULL);
    struct qv_router_stats s;
    struct qv_router_params p1, p2;

    struct qv_router *r = calibrated(sub, cpu, "test cpu 1");
    qv_router_stats(r, &s);
    CU_ASSERT_EQUAL(s.calib_cache_hits, 0);
    CU_ASSERT_EQUAL(s.engine[0].calib[QV_WU_FLAT], QV_ROUTER_CALIB_MEASURED);
    CU_ASSERT_EQUAL(s.engine[0].calib[QV_WU_PQ], QV_ROUTER_CALIB_MEASURED);
    CU_ASSERT(s.calibrate_ns < 2000000000ull);
    qv_router_get_params(r, "cpu", QV_WU_FLAT, &p1);
    CU_ASSERT(p1.overhead_ns > 0 && p1.mem_Bps > 1e8 && p1.flops > 1e8);
    qv_router_free(r);
    if (gethostname(host, sizeof host) != 0)
        snprintf(host, sizeof host, "localhost");
    for (char *c = host; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
              (*c >= '0' && *c <= '9') || *c == '-' || *c == '_' || *c == '.'))
            *c = '_';
    snprintf(path, sizeof path, "%s/%s-cpu.json", sub, host);
    CU_ASSERT_TRUE(file_has(path, "\"format\""));
    CU_ASSERT_TRUE(file_has(path, "test cpu 1"));

    /* a second router loads it */
    r = calibrated(sub, cpu, "test cpu 1");
    qv_router_stats(r, &s);
    CU_ASSERT_EQUAL(s.calib_cache_hits, 1);
    CU_ASSERT_EQUAL(s.engine[0].calib[QV_WU_FLAT], QV_ROUTER_CALIB_CACHED);
    qv_router_get_params(r, "cpu", QV_WU_FLAT, &p2);
    CU_ASSERT_DOUBLE_EQUAL(p2.mem_Bps, p1.mem_Bps, p1.mem_Bps * 1e-9);
    CU_ASSERT_DOUBLE_EQUAL(p2.flops, p1.flops, p1.flops * 1e-9);
    qv_router_free(r);

    /* a corrupt file is ignored and rewritten */
    FILE *f = fopen(path, "w");
    fputs("{ \"format\": 1, \"key\": ", f);
    fclose(f);
    r = calibrated(sub, cpu, "test cpu 1");
    qv_router_stats(r, &s);
    CU_ASSERT_EQUAL(s.calib_cache_hits, 0);
    CU_ASSERT_EQUAL(s.engine[0].calib[QV_WU_FLAT], QV_ROUTER_CALIB_MEASURED);
    qv_router_free(r);
    CU_ASSERT_TRUE(file_has(path, "\"kinds\""));

    /* another description (device, driver) makes it stale */
    r = calibrated(sub, cpu, "test cpu 2");
    qv_router_stats(r, &s);
    CU_ASSERT_EQUAL(s.calib_cache_hits, 0);
    qv_router_free(r);
    CU_ASSERT_TRUE(file_has(path, "test cpu 2"));

    /* injected kinds are left alone; calibrate = 0 does nothing */
    struct qv_router_opts o;
    qv_router_opts_default(&o);
    o.calibrate = 0;
    o.calibration_dir = sub;
    r = qv_router_create(&o);
    qv_router_add(r, "cpu", cpu, QV_ROUTER_SYNC);
    CU_ASSERT_EQUAL(qv_router_calibrate(r), 0);
    qv_router_stats(r, &s);
    CU_ASSERT_EQUAL(s.engine[0].calib[QV_WU_FLAT], QV_ROUTER_CALIB_DEFAULT);
    qv_router_free(r);

    unlink(path);
    rmdir(sub);
    snprintf(sub, sizeof sub, "%s/a", dir);
    rmdir(sub);
    rmdir(dir);
    qv_engine_free(cpu);
}

static void test_ivf_through_router(void)
{
    const uint32_t dim = 24, n = 3000, nq = 50, k = 10, nprobe = 8;
    float *x = malloc((size_t)n * dim * sizeof(float));
    float *q = malloc((size_t)nq * dim * sizeof(float));
    for (size_t i = 0; i < (size_t)n * dim; i++)
        x[i] = (float)(urand() >> 8) / 16777216.0f;
    for (size_t i = 0; i < (size_t)nq * dim; i++)
        q[i] = (float)(urand() >> 8) / 16777216.0f;
    for (int enc = 0; enc < 2; enc++) {
        struct qv_ivf_opts io = { .dim = dim, .metric = QV_METRIC_L2,
                                  .encoding = enc ? QV_IVF_SQ8 : QV_IVF_FLAT, .nlist = 32,
                                  .kmeans_iters = 5, .seed = 3 };
        struct qv_ivf *ix = qv_ivf_create(&io);
        CU_ASSERT_PTR_NOT_NULL_FATAL(ix);
        CU_ASSERT_EQUAL(qv_ivf_train(ix, x, n), 0);
        CU_ASSERT_EQUAL(qv_ivf_add(ix, n, x, NULL), 0);
        float *d0 = malloc((size_t)nq * k * sizeof(float)), *d1 = malloc((size_t)nq * k * 4);
        uint64_t *i0 = malloc((size_t)nq * k * 8), *i1 = malloc((size_t)nq * k * 8);
        CU_ASSERT_EQUAL(qv_ivf_search(ix, q, nq, k, nprobe, NULL, d0, i0), 0);

        struct qv_engine *cpu = qv_engine_cpu_create(NULL);
        struct fake *a = fake_new(10000);
        struct qv_router_opts o;
        qv_router_opts_default(&o);
        o.calibrate = 0;
        o.split_min_ns = 0;
        struct qv_router *r = qv_router_create(&o);
        qv_router_add(r, "cpu", cpu, QV_ROUTER_CLEAN_FAIL | QV_ROUTER_SYNC);
        qv_router_add(r, "fake", &a->base, QV_ROUTER_CLEAN_FAIL);
        set_all(r, "cpu", 1000, 1e9, 1e9);
        set_all(r, "fake", 1000, 1e9, 1e9);
        qv_ivf_set_engine(ix, qv_router_engine(r));
        for (int rep = 0; rep < 3; rep++) {
            CU_ASSERT_EQUAL(qv_ivf_search(ix, q, nq, k, nprobe, NULL, d1, i1), 0);
            CU_ASSERT_EQUAL(memcmp(i0, i1, (size_t)nq * k * 8), 0);
            for (size_t j = 0; j < (size_t)nq * k; j++)
                if (fabsf(d0[j] - d1[j]) > 1e-4f * (1 + fabsf(d0[j]))) {
                    CU_FAIL("distance differs");
                    break;
                }
        }
        struct qv_router_stats s;
        qv_router_stats(r, &s);
        CU_ASSERT_EQUAL(s.completed, 3);
        CU_ASSERT(s.split >= 1);
        CU_ASSERT(est(&s, "cpu")->units >= 1 && est(&s, "fake")->units >= 1);
        char desc[2048];
        CU_ASSERT(qv_router_describe(r, desc, sizeof desc) > 0);
        CU_ASSERT_PTR_NOT_NULL(strstr(desc, "router: fake"));
        qv_ivf_set_engine(ix, NULL);
        qv_ivf_free(ix);
        qv_router_free(r);
        qv_engine_free(cpu);
        fake_free(&a->base);
        free(d0);
        free(d1);
        free(i0);
        free(i1);
    }
    free(x);
    free(q);
}

static void test_bad_args(void)
{
    struct qv_router_opts o;
    struct fake *a = fake_new(0);
    unsigned mask;
    qv_router_opts_default(&o);
    o.ewma_alpha = 1.5;
    CU_ASSERT_PTR_NULL(qv_router_create(&o));
    CU_ASSERT_EQUAL(qv_errno, QV_EINVAL);
    o.ewma_alpha = 0.2;
    o.max_units = 0;
    CU_ASSERT_PTR_NULL(qv_router_create(&o));
    CU_ASSERT_EQUAL(qv_errno, QV_EINVAL);
    struct qv_router *r = router_new(1);
    CU_ASSERT_EQUAL(qv_router_add(r, "x", NULL, 0), QV_EINVAL);
    CU_ASSERT_EQUAL(qv_router_add(r, "", &a->base, 0), QV_EINVAL);
    CU_ASSERT_EQUAL(qv_router_add(r, "x", &a->base, 0x80), QV_EINVAL);
    char names[9][16];
    for (int i = 0; i < 8; i++) {
        snprintf(names[i], sizeof names[i], "e%d", i);
        CU_ASSERT_EQUAL(qv_router_add(r, names[i], &a->base, 0), 0);
    }
    CU_ASSERT_EQUAL(qv_router_add(r, "e0", &a->base, 0), QV_EEXIST);
    CU_ASSERT_EQUAL(qv_router_add(r, "e8", &a->base, 0), QV_ENOSPC);
    struct qv_router_params p = { 1, 1, 1, 1 }, bad = { 1, 0, 1, 1 };
    CU_ASSERT_EQUAL(qv_router_set_params(r, "zz", QV_WU_FLAT, &p), QV_ENOENT);
    CU_ASSERT_EQUAL(qv_router_set_params(r, "e0", QV_WU__COUNT, &p), QV_EINVAL);
    CU_ASSERT_EQUAL(qv_router_set_params(r, "e0", QV_WU_FLAT, &bad), QV_EINVAL);
    CU_ASSERT_EQUAL(qv_router_set_desc(r, "zz", "d"), QV_ENOENT);
    struct qv_work_unit wu = { .kind = QV_WU__COUNT, .nq = 1 };
    CU_ASSERT_EQUAL(qv_router_submit_pinned(r, &wu, NULL), QV_EINVAL);
    qv_router_free(r);
    qv_router_free(NULL);
    CU_ASSERT_EQUAL(qv_router_parse_engines("cpu, fpga", &mask), 0);
    CU_ASSERT_EQUAL(mask, QV_ROUTER_USE_CPU | QV_ROUTER_USE_FPGA);
    CU_ASSERT_EQUAL(qv_router_parse_engines("cpu,gpu", &mask), QV_ECONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "gpu"));
    CU_ASSERT_EQUAL(qv_router_parse_engines(" , ", &mask), QV_ECONFIG);
    /* no engine: a unit completes with QV_EUNAVAIL; too many units: EBUSY */
    qv_router_opts_default(&o);
    o.max_units = 1;
    r = qv_router_create(&o);
    struct tdata *D = data_new(8, 2, 16, 1, 1);
    struct tunit t, t2;
    unit_init(&t, D);
    unit_init(&t2, D);
    struct qv_engine *e = qv_router_engine(r);
    CU_ASSERT_EQUAL(e->ops->submit(e, &t.wu), 0);
    CU_ASSERT_EQUAL(e->ops->submit(e, &t2.wu), QV_EBUSY);
    struct qv_work_unit *done[2];
    CU_ASSERT_EQUAL(e->ops->poll(e, done, 2), 1);
    CU_ASSERT_EQUAL(t.wu.status, QV_EUNAVAIL);
    CU_ASSERT_EQUAL(e->ops->health(e), QV_EUNAVAIL);
    unit_fini(&t);
    unit_fini(&t2);
    data_free(D);
    qv_router_free(r);
    fake_free(&a->base);
}

static void test_alloc_failures(void)
{
    struct qv_mem_stats s0, s1;
    int failed = 0;
    qv_mem_stats(QV_MEM_ROUTER, &s0);
    for (long n = 0; n < 50; n++) {
        qv_alloc_fail_after(n);
        struct qv_router *r = qv_router_create(NULL);
        qv_alloc_fail_after(-1);
        if (!r) {
            CU_ASSERT_EQUAL(qv_errno, QV_ENOMEM);
            failed++;
            continue;
        }
        qv_router_free(r);
        break;
    }
    CU_ASSERT(failed >= 4);
    qv_mem_stats(QV_MEM_ROUTER, &s1);
    CU_ASSERT_EQUAL(s1.live_blocks, s0.live_blocks);
    CU_ASSERT_EQUAL(s1.live_bytes, s0.live_bytes);
}

int main(void)
{
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 1;
    CU_pSuite s = CU_add_suite("router", NULL, NULL);
    CU_add_test(s, "cost model picks: tiny -> low overhead, big -> high compute",
                test_cost_choice);
    CU_add_test(s, "online correction moves work off a 5x-slow engine", test_online_correction);
    CU_add_test(s, "one outlier completion does not move work; a sustained one does",
                test_outlier);
    CU_add_test(s, "split over two equal engines equals the CPU reference", test_split);
    CU_add_test(s, "faults: no unit lost or completed twice, results correct", test_faults);
    CU_add_test(s, "circuit breaker: open, half-open probe, close, re-open", test_breaker);
    CU_add_test(s, "pin: router-wide and per unit", test_pin);
    CU_add_test(s, "prefetch: forwarded by the model, pins, resident marking", test_prefetch);
    CU_add_test(s, "calibration cache: write, hit, corrupt, stale", test_calibration_cache);
    CU_add_test(s, "IVF through the router equals the CPU engine", test_ivf_through_router);
    CU_add_test(s, "bad arguments refused", test_bad_args);
    CU_add_test(s, "allocation failures at create: ENOMEM, no leak", test_alloc_failures);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failed = CU_get_number_of_failures();
    int err = CU_get_error();
    CU_cleanup_registry();
    return failed || err ? 1 : 0;
}
