/*
 * test_fpga.c - the FPGA engine (host/engine/fpga.c) against the CPU
 * engine, its reference, on the simulated card (firmware-sim/).
 *
 * Thread mode (the card is a thread of this process, scans on the card's
 * CPU engine for speed): every result test builds one work unit by hand
 * (the helpers of test_opencl.c: flat single list and IVF lists with
 * probes, F16, SQ8, PQ 4/8-bit with and without list tables, filters),
 * runs it on the CPU engine and on the FPGA engine into separate heaps and
 * compares rank by rank.  Then: units split over several SCANs (more than
 * MAX_NQ queries), asynchronous submission (8 in flight, EBUSY, order,
 * forget while in flight), LRU eviction under a small hbm_budget, forget,
 * the documented refusals, an error completion (BAD_PARAM) and an
 * allocation failure each failing one unit, prefetch (UPLOADs ahead of a
 * unit, which then issues none; a unit or a forget meeting UPLOADs in
 * flight; a declined prefetch with the ring full or the budget short),
 * and every injectable fault (HANG by the watchdog and by the timeout,
 * ECC, LINK_DOWN, THROTTLE, a killed card): the units in flight come back
 * with QV_EIO and untouched heaps, the fault is counted, the engine
 * recovers (or, for a dead card, stays unhealthy) and resubmitted units
 * equal the CPU again.
 *
 * Process mode: fork + exec of qv-fpga-sim ($QV_FPGA_SIM, set by
 * tests/meson.build), connect by name, units == CPU, then SIGKILL of the
 * card with work in flight (detected within the watchdog period, units
 * handed back), then a new card process of the same name, which the
 * engine finds and returns to service with.  Where this process may not be read by
 * another (process_vm_readv refused: ptrace restrictions), that part
 * prints SKIP.
 */

#include <CUnit/Basic.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fpga_sim.h"
#include "quiver/alloc.h"
#include "quiver/config.h"
#include "quiver/dist.h"
#include "quiver/engine.h"
#include "quiver/engine_fpga.h"
#include "quiver/errors.h"
#include "quiver/pq.h"
#include "quiver/sq8.h"
#include "quiver/timeutil.h"
#include "quiver/topk.h"
#include "wu_fixture.h"

static struct qv_engine *fpga;      /* the shared engine of the suite */
static struct qv_fpga_sim *sim;     /* its card */
static struct qv_engine *cpu;

/* Free u after telling the suite's card engine, which keeps copies of
 * lists (unit_forget). */
static void unit_release(struct unit *u)
{
    unit_forget(fpga, u);
    unit_free(u);
}


/* ---- the card and the engine ---- */

#define MS 1000000LL

static struct qv_fpga_sim *sim_make(uint64_t hbm)
{
    struct qv_fpga_sim_opts o;
    qv_fpga_sim_opts_default(&o);
    o.use_opencl = 0;                   /* the card's CPU engine: fast, deterministic */
    if (hbm)
        o.hbm_bytes = hbm;
    struct qv_fpga_sim *s = qv_fpga_sim_create(&o, QV_FPGA_SIM_THREAD);
    if (!s)
        fprintf(stderr, "\n  qv_fpga_sim_create: %s", qv_errmsg());
    return s;
}

static struct qv_engine *engine_on(struct qv_fpga_sim *s, uint32_t watchdog_ms,
                                   uint32_t timeout_ms, uint64_t budget)
{
    struct qv_fpga_opts o;
    qv_fpga_opts_default(&o);
    o.bar0 = qv_fpga_sim_bar0(s);
    o.watchdog_ms = watchdog_ms;
    o.timeout_ms = timeout_ms;
    o.reset_timeout_ms = 300;
    o.hbm_budget = budget;
    struct qv_engine *e = qv_engine_fpga_create(&o);
    if (!e)
        fprintf(stderr, "\n  qv_engine_fpga_create: %s", qv_errmsg());
    return e;
}

static struct qv_fpga_stats stats_of(struct qv_engine *e)
{
    struct qv_fpga_stats st;
    memset(&st, 0, sizeof st);
    CU_ASSERT_EQUAL(qv_engine_fpga_stats(e, &st), 0);
    return st;
}

/* CPU and FPGA on the same unit; asserts equality. */
static void check_unit_on(struct qv_engine *e, struct unit *u, uint32_t k, float tol,
                          const char *what)
{
    struct heaps hc, hf;
    int rc = run_into(cpu, u, &hc, k);
    CU_ASSERT_EQUAL(rc, 0);
    rc = run_into(e, u, &hf, k);
    if (rc)
        fprintf(stderr, "\n  %s: %s", what, qv_errmsg());
    CU_ASSERT_EQUAL(rc, 0);
    if (rc == 0) {
        int bad = compare(&hc, &hf, u->wu.nq, k, tol, what);
        CU_ASSERT_EQUAL(bad, 0);
        if (u->wu.nq && u->poff[u->wu.nq])
            CU_ASSERT(u->wu.device_ns > 0 && u->wu.transfer_ns > 0);
    }
    heaps_fini(&hc);
    heaps_fini(&hf);
}

static void check_unit(struct unit *u, uint32_t k, float tol, const char *what)
{
    check_unit_on(fpga, u, k, tol, what);
}

/* Apply fault f and wait until the card has (FAULT_INJECT reads 0). */
static void inject(struct qv_fpga_sim *s, enum qv_fpga_fault f)
{
    CU_ASSERT_EQUAL_FATAL(qv_fpga_sim_inject(s, f), 0);
    volatile uint32_t *fi = (volatile uint32_t *)((volatile uint8_t *)qv_fpga_sim_bar0(s) +
                                                  QV_FPGA_REG_FAULT_INJECT);
    int64_t t0 = qv_now_ns();
    while (__atomic_load_n(fi, __ATOMIC_ACQUIRE) && qv_now_ns() - t0 < 2000 * MS)
        usleep(50);
    CU_ASSERT_EQUAL(*fi, 0);
}

/* Poll e until every unit of want[0..n) came back or limit_ns passed.
 * Returns how many came back; a unit handed back twice fails. */
static int collect(struct qv_engine *e, struct qv_work_unit **want, int n, int64_t limit_ns)
{
    int got = 0, seen[16] = { 0 };
    int64_t t0 = qv_now_ns();
    while (got < n && qv_now_ns() - t0 < limit_ns) {
        struct qv_work_unit *done[16];
        int m = e->ops->poll(e, done, 16);
        for (int j = 0; j < m; j++)
            for (int i = 0; i < n; i++)
                if (done[j] == want[i]) {
                    CU_ASSERT_EQUAL(seen[i], 0);
                    seen[i]++;
                    got++;
                }
        if (!m)
            usleep(100);
    }
    return got;
}

/* Poll until the engine is healthy again (or limit).  Returns health. */
static int wait_healthy(struct qv_engine *e, int64_t limit_ns)
{
    int64_t t0 = qv_now_ns();
    struct qv_work_unit *done[16];
    while (e->ops->health(e) && qv_now_ns() - t0 < limit_ns) {
        e->ops->poll(e, done, 16);
        usleep(200);
    }
    return e->ops->health(e);
}

static const uint32_t dims_all[] = { 1, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 64, 127, 128,
                                     129, 784 };
#define NDIMS (sizeof dims_all / sizeof dims_all[0])

/* ---- result tests ---- */

static void test_flat_dims(void)
{
    static const uint32_t ks[] = { 1, 10, 100 };
    for (size_t di = 0; di < NDIMS; di++)
        for (int metric = 0; metric < 2; metric++) {
            uint32_t dim = dims_all[di];
            struct unit u;
            char what[96];
            uint32_t k = ks[(di + metric) % 3];
            uint32_t nq = 1 + (uint32_t)(rnd() % 40);
            unit_make(&u, QV_WU_FLAT, metric, dim, dim > 200 ? 700 : 1500, 1, nq, 1,
                      di % 3 == 1);
            snprintf(what, sizeof what, "flat %s dim %u k %u nq %u%s",
                     metric ? "ip" : "l2", dim, k, nq, u.filter ? " filter" : "");
            check_unit(&u, k, 1e-4f * (1 + dim / 64.0f), what);
            unit_release(&u);
        }
}

static void test_flat_k(void)
{
    static const uint32_t ks[] = { 1, 10, 100, 256 };
    for (size_t ki = 0; ki < 4; ki++)
        for (int filt = 0; filt < 2; filt++) {
            struct unit u;
            char what[96];
            unit_make(&u, QV_WU_FLAT, QV_METRIC_L2, 32, 3000, 1, 33, 1, filt);
            snprintf(what, sizeof what, "flat k %u%s", ks[ki], filt ? " filter" : "");
            check_unit(&u, ks[ki], 1e-4f, what);
            unit_release(&u);
        }
}

static void test_ivf_flat(void)
{
    static const uint32_t ks[] = { 1, 10, 100 };
    for (size_t di = 0; di < NDIMS; di += 3)
        for (int filt = 0; filt < 2; filt++) {
            uint32_t dim = dims_all[di];
            struct unit u;
            char what[96];
            uint32_t k = ks[(di / 3 + filt) % 3];
            uint32_t nq = 1 + (uint32_t)(rnd() % 200);
            unit_make(&u, QV_WU_FLAT, (di / 3) % 2, dim, 4000, 37, nq, 5, filt);
            snprintf(what, sizeof what, "ivf flat dim %u k %u nq %u%s", dim, k, nq,
                     filt ? " filter" : "");
            check_unit(&u, k, 1e-4f * (1 + dim / 64.0f), what);
            unit_release(&u);
        }
}

/* More queries than the card's MAX_NQ: one unit, several SCANs. */
static void test_split(void)
{
    struct unit u;
    unit_make(&u, QV_WU_FLAT, QV_METRIC_L2, 8, 1200, 6, QV_FPGA_SIM_MAX_NQ * 2 + 37, 2, 1);
    check_unit(&u, 10, 1e-4f, "flat, 2 x MAX_NQ + 37 queries");
    unit_release(&u);
}

static void test_f16(void)
{
    for (size_t di = 0; di < NDIMS; di += 2)
        for (int metric = 0; metric < 2; metric++) {
            uint32_t dim = dims_all[di + (size_t)metric];
            struct unit u;
            char what[96];
            uint32_t k = di % 4 ? 10 : 1 + (uint32_t)(rnd() % 100);
            uint32_t nq = 1 + (uint32_t)(rnd() % 40);
            unit_make(&u, QV_WU_F16, metric, dim, dim > 200 ? 700 : 1500, 1, nq, 1,
                      di % 3 == 1);
            snprintf(what, sizeof what, "f16 %s dim %u k %u nq %u%s",
                     metric ? "ip" : "l2", dim, k, nq, u.filter ? " filter" : "");
            check_unit(&u, k, 1e-4f * (1 + dim / 64.0f), what);
            unit_release(&u);
        }
    struct unit u;
    unit_make(&u, QV_WU_F16, QV_METRIC_L2, 96, 8000, 32, 100, 8, 1);
    check_unit(&u, 10, 1e-3f, "f16 ivf 32 lists nprobe 8 filter");
    unit_release(&u);
}

static void test_sq8(void)
{
    static const uint32_t ks[] = { 1, 10, 100 };
    for (size_t di = 0; di < NDIMS; di++) {
        uint32_t dim = dims_all[di];
        struct unit u;
        char what[96];
        uint32_t k = ks[di % 3];
        int metric = (int)(di / 2 % 2);
        unit_make(&u, QV_WU_SQ8, metric, dim, dim > 200 ? 800 : 2000, di % 2 ? 9 : 1,
                  1 + (uint32_t)(rnd() % 70), di % 2 ? 3 : 1, di % 3 == 0);
        snprintf(what, sizeof what, "sq8 %s dim %u k %u nq %u%s", metric ? "ip" : "l2", dim,
                 k, u.wu.nq, u.filter ? " filter" : "");
        check_unit(&u, k, 1e-4f * (1 + dim / 64.0f), what);
        unit_release(&u);
    }
}

static void test_pq(void)
{
    struct { uint32_t dim, m, nbits; int metric, ltab, filter; uint32_t k, nq; } c[] = {
        { 32, 8, 4, QV_METRIC_L2, 1, 0, 10, 20 },
        { 32, 8, 4, QV_METRIC_L2, 0, 1, 100, 7 },
        { 32, 16, 4, QV_METRIC_IP, 0, 0, 1, 33 },
        { 33, 11, 4, QV_METRIC_L2, 1, 1, 10, 5 },    /* odd m: a pad nibble */
        { 16, 16, 4, QV_METRIC_L2, 1, 0, 10, 300 },
        { 32, 8, 8, QV_METRIC_L2, 1, 0, 10, 20 },
        { 32, 8, 8, QV_METRIC_L2, 0, 1, 100, 9 },
        { 36, 12, 8, QV_METRIC_IP, 0, 1, 1, 17 },
        { 128, 16, 8, QV_METRIC_L2, 1, 0, 10, 64 },
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        struct unit u;
        char what[128];
        unit_make_pq(&u, c[i].metric, c[i].dim, c[i].m, c[i].nbits, 3000, 16, c[i].nq, 4,
                     c[i].filter, c[i].ltab);
        snprintf(what, sizeof what, "pq%u %s dim %u m %u%s%s k %u nq %u", c[i].nbits,
                 c[i].metric ? "ip" : "l2", c[i].dim, c[i].m, c[i].ltab ? " ltab" : "",
                 c[i].filter ? " filter" : "", c[i].k, c[i].nq);
        /* 4-bit: the host's byte tables, bit-identical sums; 8-bit: float
         * sums in order */
        check_unit(&u, c[i].k, c[i].nbits == 4 ? 0.0f : 1e-4f, what);
        unit_release(&u);
    }
}

/* ---- behaviour ---- */

static void test_async(void)
{
    enum { N = 9 };
    struct unit u[N];
    struct heaps h[N], ref[N];
    int submitted = 0;
    for (int i = 0; i < N; i++) {
        unit_make(&u[i], QV_WU_FLAT, QV_METRIC_L2, 16, 3000, 4, 20, 2, i % 2);
        CU_ASSERT_EQUAL(run_into(cpu, &u[i], &ref[i], 10), 0);
        heaps_init(&h[i], u[i].wu.nq, 10);
        u[i].wu.heaps = h[i].h;
    }
    for (int i = 0; i < N; i++) {
        int rc = fpga->ops->submit(fpga, &u[i].wu);
        if (i < 8) {
            CU_ASSERT_EQUAL(rc, 0);
            submitted += rc == 0;
        } else {
            CU_ASSERT_EQUAL(rc, QV_EBUSY);      /* 8 in flight, none polled */
        }
    }
    /* forgetting a list in use does not disturb the units in flight (the
     * FREE runs after them) */
    CU_ASSERT_EQUAL(qv_engine_fpga_forget(fpga, u[0].lists[u[0].plist[0]].codes), 1);
    CU_ASSERT_EQUAL(qv_engine_fpga_wait(fpga), 0);
    struct qv_work_unit *done[16];
    int got = 0, order_ok = 1;
    while (got < submitted) {
        int n = fpga->ops->poll(fpga, done, 3);
        for (int j = 0; j < n; j++) {
            order_ok &= done[j] == &u[got + j].wu;
            CU_ASSERT_EQUAL(done[j]->status, 0);
            CU_ASSERT(done[j]->device_ns > 0);
        }
        got += n;
    }
    CU_ASSERT(order_ok);
    CU_ASSERT_EQUAL(fpga->ops->poll(fpga, done, 16), 0);
    for (int i = 0; i < submitted; i++) {
        for (uint32_t q = 0; q < u[i].wu.nq; q++)
            qv_topk_sort(&h[i].h[q]);
        CU_ASSERT_EQUAL(compare(&ref[i], &h[i], u[i].wu.nq, 10, 1e-4f, "async"), 0);
    }
    for (int i = 0; i < N; i++) {
        heaps_fini(&h[i]);
        heaps_fini(&ref[i]);
        unit_release(&u[i]);
    }
}

/* A small budget: two units whose lists do not fit together evict each
 * other (results stay right, evictions are counted); a unit that does
 * not fit at all completes with QV_ENOMEM; forget drops a copy once. */
static void test_eviction(void)
{
    /* a card of its own: a second engine on the suite's card would reset
     * it under the suite's engine */
    struct qv_fpga_sim *s = sim_make(0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    struct qv_engine *saved = fpga;
    fpga = engine_on(s, 250, 2000, 300000);
    CU_ASSERT_PTR_NOT_NULL_FATAL(fpga);
    struct unit a, b, big;
    unit_make(&a, QV_WU_FLAT, QV_METRIC_L2, 32, 1500, 4, 20, 2, 0);    /* ~200 KB */
    unit_make(&b, QV_WU_FLAT, QV_METRIC_IP, 32, 1500, 4, 20, 2, 1);
    check_unit(&a, 10, 1e-4f, "evict: a");
    struct qv_fpga_stats s0 = stats_of(fpga);
    check_unit(&b, 10, 1e-4f, "evict: b");
    check_unit(&a, 10, 1e-4f, "evict: a again");
    struct qv_fpga_stats s1 = stats_of(fpga);
    CU_ASSERT(s1.evictions > s0.evictions);
    CU_ASSERT(s1.uploads > s0.uploads);
    check_unit(&a, 10, 1e-4f, "evict: a hot");
    struct qv_fpga_stats s2 = stats_of(fpga);
    CU_ASSERT_EQUAL(s2.uploads, s1.uploads);          /* all resident: no upload */
    /* forget: once held, then not */
    const void *c0 = a.lists[a.plist[0]].codes;
    CU_ASSERT_EQUAL(qv_engine_fpga_forget(fpga, c0), 1);
    CU_ASSERT_EQUAL(qv_engine_fpga_forget(fpga, c0), 0);
    CU_ASSERT_EQUAL(qv_engine_fpga_forget(fpga, NULL), 0);
    check_unit(&a, 10, 1e-4f, "evict: a after forget");
    CU_ASSERT_EQUAL(stats_of(fpga).uploads, s2.uploads + 1);
    /* too big for the budget together */
    unit_make(&big, QV_WU_FLAT, QV_METRIC_L2, 64, 6000, 3, 5, 3, 0);  /* ~1.5 MB */
    struct heaps h;
    int rc = run_into(fpga, &big, &h, 10);
    CU_ASSERT_EQUAL(rc, QV_ENOMEM);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "hbm_budget"));
    CU_ASSERT_EQUAL(fpga->ops->health(fpga), 0);
    heaps_fini(&h);
    struct qv_fpga_stats s3 = stats_of(fpga);
    CU_ASSERT_EQUAL(s3.evictions, stats_of(fpga).evictions);
    check_unit(&a, 10, 1e-4f, "evict: a after a refusal");  /* nothing evicted for big */
    CU_ASSERT_EQUAL(stats_of(fpga).uploads, s3.uploads);
    check_unit(&b, 10, 1e-4f, "evict: b after a refusal");
    unit_release(&a);
    unit_release(&b);
    unit_release(&big);
    qv_engine_free(fpga);
    qv_fpga_sim_free(s);
    fpga = saved;
}

static void test_refusals(void)
{
    struct unit u;
    struct heaps h;
    unit_make(&u, QV_WU_FLAT, QV_METRIC_L2, 8, 100, 1, 3, 1, 0);
    heaps_init(&h, 3, 300);
    u.wu.heaps = h.h;
    CU_ASSERT_EQUAL(fpga->ops->submit(fpga, &u.wu), QV_ENOTSUP);     /* k 300 > 256 */
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "k = 300"));
    heaps_fini(&h);
    heaps_init(&h, 3, 10);
    u.wu.heaps = h.h;
    u.wu.metric = QV_METRIC_COSINE;
    CU_ASSERT_EQUAL(fpga->ops->submit(fpga, &u.wu), QV_ENOTSUP);
    u.wu.metric = QV_METRIC_L2;
    u.wu.dim = QV_FPGA_SIM_MAX_DIM + 1;
    CU_ASSERT_EQUAL(fpga->ops->submit(fpga, &u.wu), QV_ENOTSUP);
    u.wu.dim = 8;
    u.wu.kind = (enum qv_wu_kind)7;
    CU_ASSERT_EQUAL(fpga->ops->submit(fpga, &u.wu), QV_ENOTSUP);
    u.wu.kind = QV_WU_FLAT;
    u.wu.qnorms = NULL;
    CU_ASSERT_EQUAL(fpga->ops->submit(fpga, &u.wu), QV_EINVAL);
    u.wu.qnorms = u.qnorms;
    /* empty unit: completes at once */
    u.wu.nq = 0;
    CU_ASSERT_EQUAL(qv_engine_run(fpga, &u.wu), 0);
    u.wu.nq = 3;
    CU_ASSERT_EQUAL(fpga->ops->health(fpga), 0);
    heaps_fini(&h);
    unit_release(&u);
    /* caps */
    struct qv_engine_caps caps;
    fpga->ops->caps(fpga, &caps);
    CU_ASSERT_EQUAL(caps.kinds, 0xFu);
    CU_ASSERT_EQUAL(caps.max_dim, QV_FPGA_SIM_MAX_DIM);
    CU_ASSERT(caps.device_memory > 0);
    struct qv_fpga_stats st;
    CU_ASSERT_EQUAL(qv_engine_fpga_stats(cpu, &st), QV_EINVAL);
}

/* A unit the card refuses (BAD_*: here PQ 8-bit L2 without list tables,
 * which needs the coarse centroids, with lists whose list_no is not below
 * ncoarse: the driver passes that through unchecked) fails alone with
 * QV_EIO and a message naming the status; the engine stays healthy and
 * the next unit is right. */
static void test_error_completion(void)
{
    struct unit u;
    unit_make_pq(&u, QV_METRIC_L2, 32, 8, 8, 1000, 6, 10, 3, 0, 0);
    check_unit(&u, 10, 1e-4f, "before an error completion");
    struct qv_fpga_stats s0 = stats_of(fpga);
    u.pqp.nlist = 2;                    /* lists 2..5 name coarse rows >= ncoarse */
    struct heaps h;
    int rc = run_into(fpga, &u, &h, 10);
    CU_ASSERT_EQUAL(rc, QV_EIO);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "BAD_PARAM"));
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "error log"));
    for (uint32_t q = 0; q < u.wu.nq; q++)
        CU_ASSERT_EQUAL(h.h[q].n, 0);
    heaps_fini(&h);
    CU_ASSERT_EQUAL(fpga->ops->health(fpga), 0);
    struct qv_fpga_stats s1 = stats_of(fpga);
    CU_ASSERT_EQUAL(s1.error_completions, s0.error_completions + 1);
    CU_ASSERT_EQUAL(s1.faults, s0.faults);
    if (rc != QV_EIO)
        fprintf(stderr, "\n  error completion: rc %d: %s", rc, qv_errmsg());
    u.pqp.nlist = 6;
    check_unit(&u, 10, 1e-4f, "after an error completion");
    unit_release(&u);
}

/* An allocation that fails while a unit is built fails that unit with
 * QV_ENOMEM, heaps untouched; the engine stays healthy.  (The card is
 * idle, so the injected failure is the driver's.) */
static void test_oom(void)
{
    struct unit u;
    struct heaps h;
    unit_make(&u, QV_WU_FLAT, QV_METRIC_L2, 8, 5000, 900, 5, 2, 0);  /* new sizes */
    heaps_init(&h, u.wu.nq, 10);
    u.wu.heaps = h.h;
    CU_ASSERT_EQUAL(qv_engine_fpga_wait(fpga), 0);
    qv_alloc_fail_after(0);
    int rc = qv_engine_run(fpga, &u.wu);
    qv_alloc_fail_after(-1);
    CU_ASSERT_EQUAL(rc, QV_ENOMEM);
    for (uint32_t q = 0; q < u.wu.nq; q++)
        CU_ASSERT_EQUAL(h.h[q].n, 0);
    CU_ASSERT_EQUAL(fpga->ops->health(fpga), 0);
    heaps_fini(&h);
    check_unit(&u, 10, 1e-4f, "after an allocation failure");
    unit_release(&u);
}

static void test_create_errors(void)
{
    struct qv_fpga_opts o;
    qv_fpga_opts_default(&o);
    o.name = "qv-no-such-card";
    CU_ASSERT_PTR_NULL(qv_engine_fpga_create(&o));
    CU_ASSERT_EQUAL(qv_errno, QV_EUNAVAIL);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "no card named qv-no-such-card"));
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "qv-fpga-sim --name qv-no-such-card"));
    qv_fpga_opts_default(&o);
    o.bar0 = qv_fpga_sim_bar0(sim);
    o.ring_entries = 100;
    CU_ASSERT_PTR_NULL(qv_engine_fpga_create(&o));
    CU_ASSERT_EQUAL(qv_errno, QV_EINVAL);
    o.ring_entries = 16;
    o.name = "a/b";
    CU_ASSERT_PTR_NULL(qv_engine_fpga_create(&o));
    CU_ASSERT_EQUAL(qv_errno, QV_EINVAL);
    /* a card of another major version is refused with a message */
    uint8_t *fake = qv_calloc(1, QV_FPGA_BAR0_SIZE, QV_MEM_TEST);
    *(uint32_t *)(fake + QV_FPGA_REG_MAGIC) = QV_FPGA_MAGIC;
    *(uint32_t *)(fake + QV_FPGA_REG_VERSION) = 2u << 16;
    qv_fpga_opts_default(&o);
    o.bar0 = fake;
    o.reset_timeout_ms = 50;
    CU_ASSERT_PTR_NULL(qv_engine_fpga_create(&o));
    CU_ASSERT_EQUAL(qv_errno, QV_EUNAVAIL);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "version 2.0"));
    /* no MAGIC: not up */
    *(uint32_t *)(fake + QV_FPGA_REG_MAGIC) = 0;
    CU_ASSERT_PTR_NULL(qv_engine_fpga_create(&o));
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "MAGIC"));
    qv_free(fake);
}

static void test_config(void)
{
    struct qv_config *cfg = qv_config_parse(
        "[fpga]\nmode = process\nname = card7\nring_entries = 64\ntimeout_ms = 1500\n"
        "watchdog_ms = 120\nreset_timeout_ms = 800\nhbm_budget = 1G\nhbm_bytes = 2G\n"
        "lanes = 1024\nsim_opencl = false\nsim_pace = true\n", "t.conf");
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    struct qv_fpga_opts o;
    CU_ASSERT_EQUAL(qv_fpga_opts_from_config(cfg, &o), 0);
    CU_ASSERT_STRING_EQUAL(o.name, "card7");
    CU_ASSERT_EQUAL(o.ring_entries, 64);
    CU_ASSERT_EQUAL(o.timeout_ms, 1500);
    CU_ASSERT_EQUAL(o.watchdog_ms, 120);
    CU_ASSERT_EQUAL(o.reset_timeout_ms, 800);
    CU_ASSERT_EQUAL(o.hbm_budget, 1ull << 30);
    CU_ASSERT_PTR_NULL(o.bar0);
    CU_ASSERT_EQUAL(qv_config_enum(cfg, "fpga", "mode"), 2);
    struct qv_fpga_sim_opts so;
    qv_fpga_sim_opts_default(&so);
    CU_ASSERT_EQUAL(qv_fpga_sim_opts_from_config(cfg, &so), 0);
    CU_ASSERT_EQUAL(so.hbm_bytes, 2ull << 30);
    CU_ASSERT_EQUAL(so.lanes, 1024);
    CU_ASSERT_EQUAL(so.use_opencl, 0);
    CU_ASSERT_EQUAL(so.pace, 1);
    qv_config_free(cfg);
    /* defaults agree with docs/REGISTERS.md and the simulator's */
    cfg = qv_config_defaults();
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    qv_fpga_opts_from_config(cfg, &o);
    struct qv_fpga_opts d;
    qv_fpga_opts_default(&d);
    CU_ASSERT_STRING_EQUAL(o.name, d.name);
    CU_ASSERT_EQUAL(o.ring_entries, d.ring_entries);
    CU_ASSERT_EQUAL(o.timeout_ms, d.timeout_ms);
    CU_ASSERT_EQUAL(o.watchdog_ms, d.watchdog_ms);
    CU_ASSERT_EQUAL(o.reset_timeout_ms, d.reset_timeout_ms);
    struct qv_fpga_sim_opts sd, sc;
    qv_fpga_sim_opts_default(&sd);
    qv_fpga_sim_opts_default(&sc);
    qv_fpga_sim_opts_from_config(cfg, &sc);
    CU_ASSERT_EQUAL(sc.hbm_bytes, sd.hbm_bytes);
    CU_ASSERT_EQUAL(sc.clock_mhz, 300);
    CU_ASSERT_EQUAL(sc.lanes, 2048);
    CU_ASSERT_EQUAL(sc.hbm_mbps, 460000);
    CU_ASSERT_EQUAL(sc.pcie_mbps, 12000);
    CU_ASSERT_EQUAL(sc.launch_ns, 5000);
    CU_ASSERT_EQUAL(sc.use_opencl, sd.use_opencl);
    CU_ASSERT_EQUAL(sc.pace, sd.pace);
    CU_ASSERT_EQUAL(qv_config_enum(cfg, "fpga", "mode"), 0);
    qv_config_free(cfg);
    cfg = qv_config_parse("[fpga]\nring_entries = 100\n", "t.conf");
    CU_ASSERT_PTR_NULL(cfg);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "power of two"));
}

/* ---- prefetch ---- */

static uint64_t hbm_used(struct qv_fpga_sim *s)
{
    return __atomic_load_n((volatile uint64_t *)((volatile uint8_t *)qv_fpga_sim_bar0(s) +
                                                 QV_FPGA_REG_HBM_USED), __ATOMIC_ACQUIRE);
}

static uint32_t nonempty_lists(const struct unit *u)
{
    uint32_t n = 0;
    for (uint32_t l = 0; l < u->wu.nlists; l++)
        n += u->lists[l].n > 0;
    return n;
}

/* x -> 1 - 2x in u's FLAT lists, norms recomputed (same pointers). */
static void rewrite_flat_lists(struct unit *u, uint32_t dim)
{
    for (uint32_t l = 0; l < u->wu.nlists; l++) {
        struct qv_wu_list *L = &u->lists[l];
        float *c = (float *)L->codes, *nr = (float *)L->norms;
        size_t cn = (size_t)(L->n + QV_BLOCK - 1) / QV_BLOCK * QV_BLOCK * dim;
        for (size_t e = 0; e < cn; e++)
            c[e] = 1.0f - 2.0f * c[e];
        for (uint32_t e = 0; e < L->n; e++) {
            float s2 = 0;
            for (uint32_t d = 0; d < dim; d++) {
                float v = c[(size_t)(e / QV_BLOCK) * QV_BLOCK * dim + (size_t)d * QV_BLOCK +
                            e % QV_BLOCK];
                s2 += v * v;
            }
            nr[e] = s2;
        }
    }
}

/* Prefetch UPLOADs the lists (HBM use grows once they complete, through
 * the poll path); the unit over them then issues no UPLOAD and equals the
 * CPU; a unit right after a prefetch uses the uploads in flight instead
 * of uploading again; forget right after a prefetch waits, and a rewrite
 * is what the next unit sees; PQ 4-bit lists likewise. */
static void test_prefetch(void)
{
    struct qv_fpga_sim *s = sim_make(0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    struct qv_engine *saved = fpga;
    fpga = engine_on(s, 250, 2000, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(fpga);
    const uint32_t dim = 32;
    struct unit u, p;
    unit_make(&u, QV_WU_FLAT, QV_METRIC_L2, dim, 6000, 10, 20, 3, 0);
    const uint32_t ne = nonempty_lists(&u);
    uint64_t h0 = hbm_used(s);
    struct qv_fpga_stats s0 = stats_of(fpga);
    CU_ASSERT_EQUAL(qv_engine_prefetch(fpga, &u.wu), (int)ne);
    CU_ASSERT_EQUAL(qv_engine_fpga_wait(fpga), 0);      /* completions reaped */
    struct qv_fpga_stats s1 = stats_of(fpga);
    CU_ASSERT_EQUAL(s1.prefetch_uploads - s0.prefetch_uploads, 2 * ne);   /* codes, norms */
    CU_ASSERT_EQUAL(s1.uploads - s0.uploads, 2 * ne);
    CU_ASSERT(hbm_used(s) >= h0 + (uint64_t)u.n * dim * 4);
    check_unit(&u, 10, 1e-4f, "prefetch: unit over prefetched lists");
    CU_ASSERT_EQUAL(stats_of(fpga).uploads, s1.uploads);        /* no UPLOAD */
    CU_ASSERT_EQUAL(qv_engine_prefetch(fpga, &u.wu), 0);        /* all resident */
    CU_ASSERT_EQUAL(stats_of(fpga).prefetch_bytes, s1.prefetch_bytes);

    /* a unit right after the prefetch: it waits for the UPLOADs */
    unit_forget(fpga, &u);
    s1 = stats_of(fpga);
    CU_ASSERT_EQUAL(qv_engine_prefetch(fpga, &u.wu), (int)ne);
    {
        struct heaps hf, hc;
        CU_ASSERT_EQUAL(run_into(fpga, &u, &hf, 10), 0);
        CU_ASSERT_EQUAL(run_into(cpu, &u, &hc, 10), 0);
        CU_ASSERT_EQUAL(compare(&hc, &hf, u.wu.nq, 10, 1e-4f, "prefetch: unit right after"),
                        0);
        heaps_fini(&hf);
        heaps_fini(&hc);
    }
    struct qv_fpga_stats s2 = stats_of(fpga);
    CU_ASSERT_EQUAL(s2.uploads - s1.uploads, 2 * ne);           /* no second upload */
    fprintf(stderr, "\n  prefetch: %llu of %u blocks still uploading when the unit came ",
            (unsigned long long)(s2.prefetch_waits - s1.prefetch_waits), 2 * ne);

    /* forget while the UPLOADs are in flight, rewrite: the unit sees it */
    unit_forget(fpga, &u);
    CU_ASSERT_EQUAL(qv_engine_prefetch(fpga, &u.wu), (int)ne);
    unit_forget(fpga, &u);              /* waits for them */
    rewrite_flat_lists(&u, dim);
    check_unit(&u, 10, 1e-4f, "prefetch: forgotten, rewritten");
    CU_ASSERT_EQUAL(fpga->ops->health(fpga), 0);
    CU_ASSERT_EQUAL(stats_of(fpga).error_completions, s0.error_completions);

    /* PQ 4-bit codes */
    unit_make_pq(&p, QV_METRIC_L2, 32, 8, 4, 3000, 8, 20, 3, 0, 0);
    CU_ASSERT_EQUAL(qv_engine_prefetch(fpga, &p.wu), (int)nonempty_lists(&p));
    CU_ASSERT_EQUAL(qv_engine_fpga_wait(fpga), 0);
    s2 = stats_of(fpga);
    check_unit(&p, 10, 1e-4f, "prefetch: pq4");
    CU_ASSERT_EQUAL(stats_of(fpga).uploads, s2.uploads);
    unit_release(&p);
    unit_release(&u);
    qv_engine_free(fpga);
    qv_fpga_sim_free(s);
    fpga = saved;
}

/* A prefetch never fills the ring: with the card hung (no completions),
 * it stops with a quarter of the ring free and declines (QV_EBUSY), a
 * second one declines at once; once the card runs again the UPLOADs
 * complete, the engine is healthy and units are right.  A budget smaller
 * than the lists: QV_ENOSPC, nothing broken. */
static void test_prefetch_full(void)
{
    struct qv_fpga_sim *s = sim_make(0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    struct qv_engine *saved = fpga;
    struct qv_fpga_opts o;
    qv_fpga_opts_default(&o);
    o.bar0 = qv_fpga_sim_bar0(s);
    o.ring_entries = 16;
    o.watchdog_ms = 10000;
    o.timeout_ms = 10000;
    o.reset_timeout_ms = 300;
    fpga = qv_engine_fpga_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(fpga);
    struct unit u, big;
    unit_make(&u, QV_WU_FLAT, QV_METRIC_IP, 16, 4000, 24, 10, 4, 0);  /* no norms */
    CU_ASSERT(nonempty_lists(&u) > 12);
    inject(s, QV_FPGA_FAULT_HANG);
    struct qv_fpga_stats s0 = stats_of(fpga);
    CU_ASSERT_EQUAL(qv_engine_prefetch(fpga, &u.wu), QV_EBUSY);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "ring"));
    struct qv_fpga_stats s1 = stats_of(fpga);
    CU_ASSERT(s1.prefetch_bytes > s0.prefetch_bytes);          /* some were sent */
    CU_ASSERT_EQUAL(s1.prefetch_declined, s0.prefetch_declined + 1);
    CU_ASSERT_EQUAL(qv_engine_prefetch(fpga, &u.wu), QV_EBUSY);   /* still full */
    CU_ASSERT_EQUAL(stats_of(fpga).prefetch_bytes, s1.prefetch_bytes);
    inject(s, QV_FPGA_FAULT_CLEAR);
    CU_ASSERT_EQUAL(qv_engine_fpga_wait(fpga), 0);
    struct qv_fpga_stats s2 = stats_of(fpga);
    CU_ASSERT_EQUAL(s2.faults, 0);
    CU_ASSERT_EQUAL(s2.prefetch_uploads, 16u - 16u / 4 - 1);      /* ring - kept - 1 */
    check_unit(&u, 10, 1e-4f, "prefetch: after the ring was full");
    unit_release(&u);
    qv_engine_free(fpga);
    qv_fpga_sim_free(s);

    /* a budget the lists do not fit in together */
    s = sim_make(0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    fpga = engine_on(s, 250, 2000, 300000);
    CU_ASSERT_PTR_NOT_NULL_FATAL(fpga);
    unit_make(&big, QV_WU_FLAT, QV_METRIC_L2, 64, 6000, 3, 5, 3, 0);  /* ~1.5 MB */
    CU_ASSERT_EQUAL(qv_engine_prefetch(fpga, &big.wu), QV_ENOSPC);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "hbm_budget"));
    CU_ASSERT_EQUAL(qv_engine_fpga_wait(fpga), 0);
    CU_ASSERT_EQUAL(fpga->ops->health(fpga), 0);
    struct heaps h;
    CU_ASSERT_EQUAL(run_into(fpga, &big, &h, 10), QV_ENOMEM);  /* as without prefetch */
    heaps_fini(&h);
    unit_release(&big);
    qv_engine_free(fpga);
    qv_fpga_sim_free(s);
    fpga = saved;
}

static void test_nop(void)
{
    enum { N = 2000 };
    static uint64_t ns[N];
    for (int i = 0; i < N; i++)
        CU_ASSERT_EQUAL_FATAL(qv_engine_fpga_nop(fpga, &ns[i]), 0);
    for (int i = 1; i < N; i++)                 /* insertion sort: small */
        for (int j = i; j > 0 && ns[j - 1] > ns[j]; j--) {
            uint64_t t = ns[j];
            ns[j] = ns[j - 1];
            ns[j - 1] = t;
        }
    CU_ASSERT(ns[0] > 0);
    printf("\n    NOP round trip (thread mode): median %llu ns, p99 %llu ns ",
           (unsigned long long)ns[N / 2], (unsigned long long)ns[N * 99 / 100]);
}

/* ---- faults ---- */

/* The units of a fault test: small IVF shapes, their CPU reference. */
struct fault_set {
    struct unit u[3];
    struct heaps ref[3], h[3];
    struct qv_work_unit *want[3];
    int n;                              /* accepted by submit */
};

static void fset_make(struct fault_set *F)
{
    for (int i = 0; i < 3; i++) {
        unit_make(&F->u[i], QV_WU_FLAT, i == 1 ? QV_METRIC_IP : QV_METRIC_L2, 24, 2000, 5,
                  30, 2, i == 2);
        CU_ASSERT_EQUAL(run_into(cpu, &F->u[i], &F->ref[i], 10), 0);
        heaps_init(&F->h[i], F->u[i].wu.nq, 10);
    }
}

/* Submit the three (fresh heaps); the accepted ones go into want[]. */
static void fset_submit(struct qv_engine *e, struct fault_set *F)
{
    F->n = 0;
    for (int i = 0; i < 3; i++) {
        for (uint32_t q = 0; q < F->u[i].wu.nq; q++)
            qv_topk_init(&F->h[i].h[q], 10, F->h[i].d + (size_t)q * 10,
                         F->h[i].id + (size_t)q * 10);
        F->u[i].wu.heaps = F->h[i].h;
        int rc = e->ops->submit(e, &F->u[i].wu);
        if (rc == 0)
            F->want[F->n++] = &F->u[i].wu;
        else
            CU_ASSERT_EQUAL(rc, QV_EUNAVAIL);  /* the fault struck: refused */
    }
}

/* Every accepted unit came back failed, heaps untouched. */
static void fset_expect_failed(struct fault_set *F)
{
    for (int i = 0; i < F->n; i++) {
        CU_ASSERT_EQUAL(F->want[i]->status, QV_EIO);
        for (uint32_t q = 0; q < F->want[i]->nq; q++)
            CU_ASSERT_EQUAL(F->want[i]->heaps[q].n, 0);
    }
}

/* Resubmitted, they equal the CPU. */
static void fset_expect_good(struct qv_engine *e, struct fault_set *F, const char *what)
{
    for (int i = 0; i < 3; i++) {
        struct heaps h;
        int rc = run_into(e, &F->u[i], &h, 10);
        if (rc)
            fprintf(stderr, "\n  %s: %s", what, qv_errmsg());
        CU_ASSERT_EQUAL(rc, 0);
        if (rc == 0)
            CU_ASSERT_EQUAL(compare(&F->ref[i], &h, F->u[i].wu.nq, 10, 1e-4f, what), 0);
        heaps_fini(&h);
    }
}

static void fset_free(struct fault_set *F)
{
    for (int i = 0; i < 3; i++) {
        heaps_fini(&F->ref[i]);
        heaps_fini(&F->h[i]);
        unit_release(&F->u[i]);
    }
}

/* One fault on a card of its own: inject, submit, see every accepted
 * unit come back with QV_EIO (detection within limit_ms), the engine
 * unhealthy, then healthy again, the fault counted, resubmission right. */
static void fault_case(const char *what, enum qv_fpga_fault f, uint32_t watchdog_ms,
                       uint32_t timeout_ms, size_t counter_off, int64_t limit_ms)
{
    struct qv_fpga_sim *s = sim_make(0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    struct qv_engine *e = engine_on(s, watchdog_ms, timeout_ms, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    struct qv_engine *saved = fpga;
    fpga = e;
    struct fault_set F;
    fset_make(&F);
    fset_expect_good(e, &F, what);              /* warm: lists resident */
    inject(s, f);
    int64_t t0 = qv_now_ns();
    fset_submit(e, &F);
    CU_ASSERT(F.n >= 1);
    int got = collect(e, F.want, F.n, 5000 * MS);
    int64_t el = qv_now_ns() - t0;
    CU_ASSERT_EQUAL(got, F.n);
    fset_expect_failed(&F);
    CU_ASSERT_EQUAL(e->ops->health(e), QV_EUNAVAIL);
    if (el >= limit_ms * MS)
        fprintf(stderr, "\n  %s: detected after %lld ms (limit %lld)", what,
                (long long)(el / MS), (long long)limit_ms);
    CU_ASSERT(el < limit_ms * MS);
    CU_ASSERT_EQUAL(wait_healthy(e, 3000 * MS), 0);
    struct qv_fpga_stats st = stats_of(e);
    CU_ASSERT_EQUAL(st.faults, 1);
    CU_ASSERT_EQUAL(st.resets, 1);
    CU_ASSERT_EQUAL(st.units_handed_back, (uint64_t)F.n);
    if (counter_off != SIZE_MAX)
        CU_ASSERT_EQUAL(*(uint64_t *)((char *)&st + counter_off), 1);
    fset_expect_good(e, &F, what);              /* blocks uploaded again */
    CU_ASSERT(stats_of(e).uploads > st.uploads);
    fset_free(&F);
    qv_engine_free(e);
    qv_fpga_sim_free(s);
    fpga = saved;
}

static void test_fault_hang_watchdog(void)
{
    fault_case("hang (watchdog)", QV_FPGA_FAULT_HANG, 100, 5000,
               offsetof(struct qv_fpga_stats, watchdog_trips), 300);
}

static void test_fault_hang_timeout(void)
{
    fault_case("hang (timeout)", QV_FPGA_FAULT_HANG, 10000, 150,
               offsetof(struct qv_fpga_stats, timeouts), 1000);
}

static void test_fault_ecc(void)
{
    fault_case("ecc", QV_FPGA_FAULT_ECC, 100, 5000,
               offsetof(struct qv_fpga_stats, ecc_errors), 300);
}

static void test_fault_link_down(void)
{
    fault_case("link down", QV_FPGA_FAULT_LINK_DOWN, 100, 5000, SIZE_MAX, 300);
}

/* THROTTLE: no failure, device time x THROTTLE_FACTOR (4). */
static void test_fault_throttle(void)
{
    struct unit u;
    unit_make(&u, QV_WU_FLAT, QV_METRIC_L2, 64, 5000, 1, 16, 1, 0);
    check_unit(&u, 10, 1e-4f, "before throttle (uploads)");
    check_unit(&u, 10, 1e-4f, "before throttle");
    uint64_t d1 = u.wu.device_ns;
    struct qv_fpga_stats s0 = stats_of(fpga);
    inject(sim, QV_FPGA_FAULT_THROTTLE);
    check_unit(&u, 10, 1e-4f, "throttled");
    uint64_t d2 = u.wu.device_ns;
    inject(sim, QV_FPGA_FAULT_CLEAR);
    check_unit(&u, 10, 1e-4f, "after throttle");
    uint64_t d3 = u.wu.device_ns;
    CU_ASSERT(d2 >= 4 * d1 - 4 && d2 <= 4 * d1 + 4);
    CU_ASSERT_EQUAL(d3, d1);
    struct qv_fpga_stats s1 = stats_of(fpga);
    CU_ASSERT_EQUAL(s1.faults, s0.faults);
    CU_ASSERT_EQUAL(fpga->ops->health(fpga), 0);
    unit_release(&u);
}

/* A card that dies with work in flight: detected within the watchdog
 * period, every unit back with QV_EIO, the engine stays unhealthy (it
 * probes again, the card never answers). */
static void test_fault_kill(void)
{
    const uint32_t wd = 100;
    struct qv_fpga_sim *s = sim_make(0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    struct qv_engine *e = engine_on(s, wd, 5000, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    struct qv_engine *saved = fpga;
    fpga = e;
    struct fault_set F;
    fset_make(&F);
    fset_expect_good(e, &F, "kill: warm");
    qv_fpga_sim_kill(s);
    int64_t t0 = qv_now_ns();
    fset_submit(e, &F);
    CU_ASSERT_EQUAL(F.n, 3);
    int got = collect(e, F.want, F.n, 5000 * MS);
    int64_t el = qv_now_ns() - t0;
    CU_ASSERT_EQUAL(got, F.n);
    fset_expect_failed(&F);
    if (el >= 3 * wd * MS)
        fprintf(stderr, "\n  kill: detected after %lld ms", (long long)(el / MS));
    CU_ASSERT(el < 3 * wd * MS);
    /* through reset timeouts and probes, it stays down */
    CU_ASSERT_EQUAL(wait_healthy(e, 1000 * MS), QV_EUNAVAIL);
    CU_ASSERT_EQUAL(e->ops->submit(e, &F.u[0].wu), QV_EUNAVAIL);
    struct qv_fpga_stats st = stats_of(e);
    CU_ASSERT_EQUAL(st.faults, 1);
    CU_ASSERT_EQUAL(st.watchdog_trips, 1);
    CU_ASSERT_EQUAL(st.resets, 0);
    CU_ASSERT_EQUAL(st.units_handed_back, 3);
    CU_ASSERT_EQUAL(qv_engine_fpga_wait(e), QV_EUNAVAIL);
    fset_free(&F);
    qv_engine_free(e);
    qv_fpga_sim_free(s);
    fpga = saved;
}

/* ---- process mode ---- */

static volatile uint64_t probe_word;

/* May a child process read this one's memory (process_vm_readv), as the
 * card process must?  1 yes, 0 no (EPERM and the like). */
static int can_be_read(void)
{
    int pfd[2];
    if (pipe(pfd))
        return 0;
    pid_t c = fork();
    if (c < 0)
        return 0;
    if (c == 0) {
        char x;
        close(pfd[1]);
        if (read(pfd[0], &x, 1) != 1)
            _exit(3);
        uint64_t v = 0;
        struct iovec l = { &v, sizeof v }, r = { (void *)&probe_word, sizeof v };
        ssize_t n = process_vm_readv(getppid(), &l, 1, &r, 1, 0);
        _exit(n == (ssize_t)sizeof v && v == 0x5eed5eedull ? 0 : 1);
    }
    close(pfd[0]);
    probe_word = 0x5eed5eedull;
    (void)prctl(PR_SET_PTRACER, (unsigned long)c, 0, 0, 0);
    if (write(pfd[1], "x", 1) != 1) {
        close(pfd[1]);
        return 0;
    }
    close(pfd[1]);
    int st = 0;
    waitpid(c, &st, 0);
    return WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

static void test_process(void)
{
    const char *exe = getenv("QV_FPGA_SIM");
    if (!exe || access(exe, X_OK)) {
        printf("\n    SKIP: QV_FPGA_SIM (the qv-fpga-sim executable) not set ");
        return;
    }
    if (!can_be_read()) {
        printf("\n    SKIP: process_vm_readv of this process is refused (ptrace "
               "restrictions) ");
        return;
    }
    char name[64], path[96];
    snprintf(name, sizeof name, "qvtest-%d", (int)getpid());
    snprintf(path, sizeof path, "/dev/shm%s%s", QV_FPGA_SHM_PREFIX, name);
    unlink(path);
    pid_t pid = fork();
    CU_ASSERT_FATAL(pid >= 0);
    if (pid == 0) {
        execl(exe, exe, "--name", name, "--no-opencl", "--hbm", "256M", (char *)NULL);
        _exit(127);
    }
    /* the card's BAR0 appears empty, is sized, then initialised (MAGIC
     * last): retry the probe until the card is up, as an operator's tool
     * would */
    struct qv_fpga_opts o;
    qv_fpga_opts_default(&o);
    o.name = name;
    o.watchdog_ms = 150;
    o.reset_timeout_ms = 300;
    int64_t t0 = qv_now_ns();
    struct qv_engine *e;
    while (!(e = qv_engine_fpga_create(&o)) && qv_now_ns() - t0 < 10000 * MS)
        usleep(2000);
    if (!e)
        fprintf(stderr, "\n  process mode: %s", qv_errmsg());
    CU_ASSERT_PTR_NOT_NULL(e);
    if (e) {
        struct qv_engine *saved = fpga;
        fpga = e;
        struct unit u;
        unit_make(&u, QV_WU_FLAT, QV_METRIC_L2, 48, 4000, 8, 50, 3, 1);
        check_unit(&u, 10, 1e-4f, "process: ivf flat");
        unit_release(&u);
        unit_make_pq(&u, QV_METRIC_L2, 32, 8, 4, 2000, 8, 20, 3, 0, 1);
        check_unit(&u, 10, 0.0f, "process: pq4");
        unit_release(&u);
        uint64_t ns;
        CU_ASSERT_EQUAL(qv_engine_fpga_nop(e, &ns), 0);
        /* the card process dies with work in flight (stopped first, so
         * the work is certainly in flight) */
        struct fault_set F;
        fset_make(&F);
        fset_expect_good(e, &F, "process: warm");
        kill(pid, SIGSTOP);
        fset_submit(e, &F);
        CU_ASSERT_EQUAL(F.n, 3);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        pid = 0;
        t0 = qv_now_ns();
        int got = collect(e, F.want, F.n, 5000 * MS);
        int64_t el = qv_now_ns() - t0;
        CU_ASSERT_EQUAL(got, F.n);
        fset_expect_failed(&F);
        if (el >= 3 * (int64_t)o.watchdog_ms * MS)
            fprintf(stderr, "\n  process kill: detected after %lld ms", (long long)(el / MS));
        CU_ASSERT(el < 3 * (int64_t)o.watchdog_ms * MS);
        CU_ASSERT_EQUAL(wait_healthy(e, 800 * MS), QV_EUNAVAIL);
        struct qv_fpga_stats st = stats_of(e);
        CU_ASSERT_EQUAL(st.units_handed_back, 3);
        CU_ASSERT_EQUAL(st.watchdog_trips, 1);
        /* a new card process of the same name: found by the next probe,
         * reset, back in service */
        pid = fork();
        CU_ASSERT_FATAL(pid >= 0);
        if (pid == 0) {
            execl(exe, exe, "--name", name, "--no-opencl", "--hbm", "256M", (char *)NULL);
            _exit(127);
        }
        CU_ASSERT_EQUAL(wait_healthy(e, 10000 * MS), 0);
        CU_ASSERT_EQUAL(stats_of(e).resets, 1);
        fset_expect_good(e, &F, "process: restarted card");
        fset_free(&F);
        qv_engine_free(e);
        fpga = saved;
    }
    if (pid > 0) {
        kill(pid, SIGTERM);
        waitpid(pid, NULL, 0);
    }
    unlink(path);                       /* SIGKILL leaves the shm behind */
}

int main(void)
{
    struct qv_mem_stats before, after;
    qv_mem_stats(QV_MEM_TEST, &before);
    cpu = qv_engine_cpu_create(NULL);
    sim = sim_make(0);
    fpga = sim ? engine_on(sim, 250, 2000, 0) : NULL;
    if (!cpu || !fpga)
        return 1;
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 1;
    CU_pSuite s = CU_add_suite("fpga", NULL, NULL);
    CU_add_test(s, "config: [fpga] keys", test_config);
    CU_add_test(s, "create: errors with messages", test_create_errors);
    CU_add_test(s, "refusals: k, metric, dim, kind; empty unit; caps", test_refusals);
    CU_add_test(s, "flat: every dim, l2/ip, == cpu", test_flat_dims);
    CU_add_test(s, "flat: k 1..256, filter, == cpu", test_flat_k);
    CU_add_test(s, "ivf flat: many lists and probes, == cpu", test_ivf_flat);
    CU_add_test(s, "split: more than MAX_NQ queries, == cpu", test_split);
    CU_add_test(s, "f16: dims, ivf shapes, == cpu", test_f16);
    CU_add_test(s, "sq8: every dim, == cpu", test_sq8);
    CU_add_test(s, "pq: 4/8 bits, ltab, ip, filter, == cpu", test_pq);
    CU_add_test(s, "async: 8 in flight, EBUSY, completion order", test_async);
    CU_add_test(s, "error completion: BAD_PARAM fails the unit only", test_error_completion);
    CU_add_test(s, "allocation failure fails the unit only", test_oom);
    CU_add_test(s, "eviction: small budget, LRU, forget, ENOMEM", test_eviction);
    CU_add_test(s, "prefetch: uploads ahead, no UPLOAD at the SCAN, forget", test_prefetch);
    CU_add_test(s, "prefetch: ring full or budget short: declines", test_prefetch_full);
    CU_add_test(s, "nop: round trip (printed)", test_nop);
    CU_add_test(s, "fault: hang, found by the watchdog", test_fault_hang_watchdog);
    CU_add_test(s, "fault: hang, found by the timeout", test_fault_hang_timeout);
    CU_add_test(s, "fault: ecc", test_fault_ecc);
    CU_add_test(s, "fault: link down", test_fault_link_down);
    CU_add_test(s, "fault: throttle (slower, no failure)", test_fault_throttle);
    CU_add_test(s, "fault: card killed, stays down", test_fault_kill);
    CU_add_test(s, "process mode: qv-fpga-sim, units, SIGKILL", test_process);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failed = CU_get_number_of_failures();
    int err = CU_get_error();
    CU_cleanup_registry();
    qv_engine_free(fpga);
    qv_fpga_sim_free(sim);
    qv_engine_free(cpu);
    qv_mem_stats(QV_MEM_TEST, &after);
    if (after.live_blocks != before.live_blocks) {
        fprintf(stderr, "test_fpga: %lld test blocks leaked\n",
                (long long)(after.live_blocks - before.live_blocks));
        failed++;
    }
    return failed || err ? 1 : 0;
}
