/*
 * test_opencl.c - the OpenCL engine (opencl/engine_opencl.c) against the
 * CPU engine, its reference.
 *
 * Every result test builds one work unit by hand (flat single list, IVF
 * lists with probes, SQ8, PQ 4/8-bit with and without list tables), runs
 * it on the CPU engine and on the OpenCL engine into separate heaps and
 * compares rank by rank: distances within a tolerance, ids identical
 * unless the distances at that rank are a near-tie.  Also: the binary
 * cache (a fresh temp dir per run: the first creation builds, the second
 * loads), the documented errors (build failure with the log, allocation
 * over max_alloc, k too large, no device) with the CPU engine still
 * working afterwards, the resident-buffer path with LRU eviction,
 * asynchronous submission, and prefetch on a resident-copy engine (a unit
 * over prefetched lists copies no list bytes, waits for copies still in
 * flight, sees a list rewritten after forget; a short budget declines or
 * evicts; the indexes' prefetch copies exactly what their search scans).
 *
 * Without an OpenCL platform the suite prints SKIP and passes.
 */

#include <CUnit/Basic.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "quiver/alloc.h"
#include "quiver/config.h"
#include "quiver/dist.h"
#include "quiver/engine.h"
#include "quiver/engine_opencl.h"
#include "quiver/errors.h"
#include "quiver/flat.h"
#include "quiver/ivf.h"
#include "quiver/ivfpq.h"
#include "quiver/pq.h"
#include "quiver/sq8.h"
#include "quiver/timeutil.h"
#include "quiver/topk.h"
#include "wu_fixture.h"

static char cache_dir[64];
static struct qv_engine *ocl;       /* the shared engine of the suite */
static struct qv_engine *cpu;



/* CPU and OpenCL on the same unit; asserts equality. */
static void check_unit(struct unit *u, uint32_t k, float tol, const char *what)
{
    struct heaps hc, ho;
    int rc = run_into(cpu, u, &hc, k);
    CU_ASSERT_EQUAL(rc, 0);
    rc = run_into(ocl, u, &ho, k);
    if (rc)
        fprintf(stderr, "\n  %s: %s", what, qv_errmsg());
    CU_ASSERT_EQUAL(rc, 0);
    if (rc == 0) {
        int bad = compare(&hc, &ho, u->wu.nq, k, tol, what);
        CU_ASSERT_EQUAL(bad, 0);
        if (u->wu.nq && u->poff[u->wu.nq])
            CU_ASSERT(u->wu.device_ns > 0);
    }
    heaps_fini(&hc);
    heaps_fini(&ho);
}

static const uint32_t dims[] = { 1, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 64, 127, 128, 129, 784 };
#define NDIMS (sizeof dims / sizeof dims[0])

/* ---- result tests ---- */

static void test_flat_dims(void)
{
    static const uint32_t ks[] = { 1, 10, 100 };
    for (size_t di = 0; di < NDIMS; di++)
        for (int metric = 0; metric < 2; metric++) {
            uint32_t dim = dims[di];
            struct unit u;
            char what[96];
            uint32_t k = ks[(di + metric) % 3];
            uint32_t nq = 1 + (uint32_t)(rnd() % 40);
            unit_make(&u, QV_WU_FLAT, metric, dim, dim > 200 ? 700 : 1500, 1, nq, 1,
                      di % 3 == 1);
            snprintf(what, sizeof what, "flat %s dim %u k %u nq %u%s",
                     metric ? "ip" : "l2", dim, k, nq, u.filter ? " filter" : "");
            check_unit(&u, k, 1e-4f * (1 + dim / 64.0f), what);
            unit_free(&u);
        }
}

/* float16 lists (QV_WU_F16): every dim, both metrics, one list scanned
 * by tiles and by the one-query kernel; then IVF-shaped units. */
static void test_f16(void)
{
    for (size_t di = 0; di < NDIMS; di++)
        for (int metric = 0; metric < 2; metric++) {
            uint32_t dim = dims[di];
            struct unit u;
            char what[96];
            uint32_t k = di % 2 ? 10 : 1 + (uint32_t)(rnd() % 100);
            uint32_t nq = (di + metric) % 3 ? 1 + (uint32_t)(rnd() % 40) : 2;
            unit_make(&u, QV_WU_F16, metric, dim, dim > 200 ? 700 : 1500, 1, nq, 1,
                      di % 3 == 1);
            snprintf(what, sizeof what, "f16 %s dim %u k %u nq %u%s",
                     metric ? "ip" : "l2", dim, k, nq, u.filter ? " filter" : "");
            check_unit(&u, k, 1e-4f * (1 + dim / 64.0f), what);
            unit_free(&u);
        }
    struct unit u;
    unit_make(&u, QV_WU_F16, QV_METRIC_L2, 96, 20000, 64, 300, 8, 1);
    check_unit(&u, 10, 1e-3f, "f16 ivf 64 lists nprobe 8 filter");
    unit_free(&u);
    unit_make(&u, QV_WU_F16, QV_METRIC_IP, 128, 30000, 1, 600, 1, 0);
    check_unit(&u, 100, 1e-3f, "f16 one list 600 queries (large tiles)");
    unit_free(&u);
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
            unit_free(&u);
        }
}

static void test_flat_batches(void)
{
    static const uint32_t nqs[] = { 1, 2, 7, 8, 9, 64, 300, 4096 };
    for (size_t i = 0; i < sizeof nqs / sizeof nqs[0]; i++) {
        struct unit u;
        char what[96];
        uint32_t n = nqs[i] >= 4096 ? 4000 : 5000;
        unit_make(&u, QV_WU_FLAT, i % 2 ? QV_METRIC_IP : QV_METRIC_L2, 24, n, 1, nqs[i], 1,
                  i == 5);
        snprintf(what, sizeof what, "flat batch %u", nqs[i]);
        check_unit(&u, 10, 1e-4f, what);
        unit_free(&u);
    }
    /* work-group tiles of many queries (register sub-tiles, a partial
     * last one): small lists get one sub-tile per group; lists larger
     * than half a 32 MB device cache get tiles of up to 256 queries
     * (129 x 40000), or what local memory holds (784 with k 256) */
    static const struct { uint32_t dim, n, k, nq; int filt; } big[] = {
        { 17, 3000, 100, 300, 1 }, { 129, 40000, 10, 300, 0 },
        { 784, 8000, 256, 300, 1 },
    };
    for (size_t i = 0; i < sizeof big / sizeof big[0]; i++) {
        struct unit u;
        char what[96];
        unit_make(&u, QV_WU_FLAT, i % 2 ? QV_METRIC_IP : QV_METRIC_L2, big[i].dim, big[i].n, 1,
                  big[i].nq, 1, big[i].filt);
        snprintf(what, sizeof what, "flat tile dim %u k %u batch %u%s", big[i].dim,
                 big[i].k, big[i].nq, big[i].filt ? " filter" : "");
        check_unit(&u, big[i].k, 1e-4f * (1 + big[i].dim / 64.0f), what);
        unit_free(&u);
    }
}

static void test_ivf_flat(void)
{
    static const uint32_t ks[] = { 1, 10, 100 };
    for (size_t di = 0; di < NDIMS; di += 2)
        for (int filt = 0; filt < 2; filt++) {
            uint32_t dim = dims[di + filt < NDIMS ? di + filt : di];
            struct unit u;
            char what[96];
            uint32_t k = ks[(di / 2 + filt) % 3];
            uint32_t nq = 1 + (uint32_t)(rnd() % 200);
            unit_make(&u, QV_WU_FLAT, (di / 2) % 2, dim, 4000, 37, nq, 5, filt);
            snprintf(what, sizeof what, "ivf flat dim %u k %u nq %u%s", dim, k, nq,
                     filt ? " filter" : "");
            check_unit(&u, k, 1e-4f * (1 + dim / 64.0f), what);
            unit_free(&u);
        }
    /* a big batch over many lists */
    struct unit u;
    unit_make(&u, QV_WU_FLAT, QV_METRIC_L2, 16, 20000, 64, 2048, 8, 1);
    check_unit(&u, 10, 1e-4f, "ivf flat 2048 queries");
    unit_free(&u);
}

static void test_sq8(void)
{
    static const uint32_t ks[] = { 1, 10, 100 };
    for (size_t di = 0; di < NDIMS; di++) {
        uint32_t dim = dims[di];
        struct unit u;
        char what[96];
        uint32_t k = ks[di % 3];
        int metric = (int)(di / 2 % 2);
        unit_make(&u, QV_WU_SQ8, metric, dim, dim > 200 ? 800 : 2000, di % 2 ? 9 : 1,
                  1 + (uint32_t)(rnd() % 70), di % 2 ? 3 : 1, di % 3 == 0);
        snprintf(what, sizeof what, "sq8 %s dim %u k %u nq %u%s", metric ? "ip" : "l2", dim,
                 k, u.wu.nq, u.filter ? " filter" : "");
        check_unit(&u, k, 1e-4f * (1 + dim / 64.0f), what);
        unit_free(&u);
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
        /* 4-bit: bit-identical arithmetic; 8-bit: float sums in order */
        check_unit(&u, c[i].k, c[i].nbits == 4 ? 1e-6f : 1e-4f, what);
        unit_free(&u);
    }
}

static struct qv_opencl_opts test_opts(void)
{
    struct qv_opencl_opts o;
    qv_opencl_opts_default(&o);
    o.cache_dir = cache_dir;
    return o;
}

/* Whole indexes: the same search with the CPU engine and with OpenCL,
 * on the suite's engine and on one that keeps resident copies; between
 * two searches the indexes take the queries themselves as vectors (a few
 * per list: into partly filled blocks, same pointers, often the same
 * sizes), which they must tell the engine of (qv_engine_forget), or a
 * resident engine serves the old contents and misses each query's
 * nearest neighbour, itself. */
static void test_indexes(void)
{
    const uint32_t dim = 24, n = 6000, nq = 50, k = 10;
    uint64_t qids[50];
    for (uint32_t i = 0; i < nq; i++)
        qids[i] = 1000000 + i;
    float *x = qv_malloc((size_t)n * dim * sizeof(float), QV_MEM_TEST);
    float *q = qv_malloc((size_t)nq * dim * sizeof(float), QV_MEM_TEST);
    for (size_t i = 0; i < (size_t)n * dim; i++)
        x[i] = rndf();
    for (size_t i = 0; i < (size_t)nq * dim; i++)
        q[i] = rndf();
    float *d1 = qv_malloc(nq * k * sizeof(float), QV_MEM_TEST);
    float *d2 = qv_malloc(nq * k * sizeof(float), QV_MEM_TEST);
    uint64_t *i1 = qv_malloc(nq * k * sizeof(uint64_t), QV_MEM_TEST);
    uint64_t *i2 = qv_malloc(nq * k * sizeof(uint64_t), QV_MEM_TEST);
    struct heaps a = { NULL, d1, i1 }, b = { NULL, d2, i2 };
    struct qv_opencl_opts ro = test_opts();
    ro.no_zero_copy = 1;
    struct qv_engine *res = qv_engine_opencl_create(&ro);
    CU_ASSERT_PTR_NOT_NULL_FATAL(res);
    struct qv_engine *engines[2] = { ocl, res };
    for (int ei = 0; ei < 2; ei++) {
        struct qv_engine *e = engines[ei];
        char what[64];
        for (int enc = 0; enc < 2; enc++) {
            struct qv_ivf_opts o = { .dim = dim, .metric = QV_METRIC_L2, .encoding = enc,
                                     .nlist = 32, .seed = 3 };
            struct qv_ivf *ix = qv_ivf_create(&o);
            CU_ASSERT_PTR_NOT_NULL_FATAL(ix);
            CU_ASSERT_EQUAL(qv_ivf_train(ix, x, n), 0);
            CU_ASSERT_EQUAL(qv_ivf_add(ix, n, x, NULL), 0);
            for (int step = 0; step < 2; step++) {
                if (step)
                    CU_ASSERT_EQUAL(qv_ivf_add(ix, nq, q, qids), 0);
                qv_ivf_set_engine(ix, NULL);
                CU_ASSERT_EQUAL(qv_ivf_search(ix, q, nq, k, 6, NULL, d1, i1), 0);
                qv_ivf_set_engine(ix, e);
                int rc = qv_ivf_search(ix, q, nq, k, 6, NULL, d2, i2);
                if (rc)
                    fprintf(stderr, "\n  ivf search on opencl: %s", qv_errmsg());
                CU_ASSERT_EQUAL(rc, 0);
                snprintf(what, sizeof what, "%s index, %s engine, step %d",
                         enc ? "ivf-sq8" : "ivf", ei ? "resident" : "suite", step);
                CU_ASSERT_EQUAL(compare(&a, &b, nq, k, 1e-4f, what), 0);
            }
            qv_ivf_set_engine(ix, NULL);
            qv_ivf_free(ix);
        }
        for (int nb = 4; nb <= 8; nb += 4) {
            struct qv_ivfpq_opts o = { .dim = dim, .metric = QV_METRIC_L2, .nlist = 16, .m = 8,
                                       .nbits = (uint32_t)nb, .seed = 5 };
            struct qv_ivfpq *ix = qv_ivfpq_create(&o);
            CU_ASSERT_PTR_NOT_NULL_FATAL(ix);
            CU_ASSERT_EQUAL(qv_ivfpq_train(ix, x, n), 0);
            CU_ASSERT_EQUAL(qv_ivfpq_add(ix, n, x, NULL), 0);
            for (int step = 0; step < 2; step++) {
                if (step)
                    CU_ASSERT_EQUAL(qv_ivfpq_add(ix, nq, q, qids), 0);
                qv_ivfpq_set_engine(ix, NULL);
                CU_ASSERT_EQUAL(qv_ivfpq_search(ix, q, nq, k, 4, 1, NULL, d1, i1), 0);
                qv_ivfpq_set_engine(ix, e);
                int rc = qv_ivfpq_search(ix, q, nq, k, 4, 1, NULL, d2, i2);
                if (rc)
                    fprintf(stderr, "\n  ivfpq search on opencl: %s", qv_errmsg());
                CU_ASSERT_EQUAL(rc, 0);
                snprintf(what, sizeof what, "ivfpq%d index, %s engine, step %d", nb,
                         ei ? "resident" : "suite", step);
                CU_ASSERT_EQUAL(compare(&a, &b, nq, k, 1e-4f, what), 0);
            }
            qv_ivfpq_set_engine(ix, NULL);
            qv_ivfpq_free(ix);
        }
        {
            struct qv_flat_opts o = { .dim = dim, .metric = QV_METRIC_L2,
                                      .segment_capacity = 2048, .numa_node = -1 };
            struct qv_flat *f = qv_flat_create(&o);
            CU_ASSERT_PTR_NOT_NULL_FATAL(f);
            CU_ASSERT_EQUAL(qv_flat_add(f, n, x, NULL), 0);
            for (int step = 0; step < 2; step++) {
                if (step)
                    CU_ASSERT_EQUAL(qv_flat_add(f, nq, q, qids), 0);
                CU_ASSERT_EQUAL(qv_flat_search(f, q, nq, k, NULL, d1, i1), 0);
                CU_ASSERT_EQUAL(qv_flat_search_engine(f, e, q, nq, k, NULL, d2, i2), 0);
                snprintf(what, sizeof what, "flat index, %s engine, step %d",
                         ei ? "resident" : "suite", step);
                CU_ASSERT_EQUAL(compare(&a, &b, nq, k, 1e-4f, what), 0);
            }
            qv_flat_free(f);
        }
    }
    qv_engine_free(res);
    qv_free(x);
    qv_free(q);
    qv_free(d1);
    qv_free(d2);
    qv_free(i1);
    qv_free(i2);
}

/* ---- engine behaviour ---- */


static void test_cache_hit(void)
{
    struct qv_opencl_info i1, i2;
    CU_ASSERT_EQUAL_FATAL(qv_engine_opencl_info(ocl, &i1), 0);
    /* the suite's engine was the first creation in a fresh dir */
    CU_ASSERT_EQUAL(i1.cache_hit, 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(i1.cache_path, cache_dir));
    struct stat st;
    CU_ASSERT_EQUAL(stat(i1.cache_path, &st), 0);
    CU_ASSERT(st.st_size > 0);
    struct qv_opencl_opts o = test_opts();
    struct qv_engine *e = qv_engine_opencl_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    CU_ASSERT_EQUAL(qv_engine_opencl_info(e, &i2), 0);
    CU_ASSERT_EQUAL(i2.cache_hit, 1);
    CU_ASSERT_STRING_EQUAL(i1.cache_path, i2.cache_path);
    fprintf(stderr, "\n  %s / %s: build %.1f ms, cached load %.1f ms ",
            i1.platform, i1.device, i1.build_ns / 1e6, i2.build_ns / 1e6);
    CU_ASSERT(i2.build_ns < i1.build_ns);
    /* different build options: another key, a miss */
    o.build_options = "-DQV_TEST_OTHER_KEY=1";
    struct qv_engine *e3 = qv_engine_opencl_create(&o);
    CU_ASSERT_PTR_NOT_NULL(e3);
    if (e3) {
        struct qv_opencl_info i3;
        qv_engine_opencl_info(e3, &i3);
        CU_ASSERT_EQUAL(i3.cache_hit, 0);
        CU_ASSERT_STRING_NOT_EQUAL(i3.cache_path, i1.cache_path);
    }
    qv_engine_free(e3);
    /* a corrupt cache file is rebuilt, not fatal */
    FILE *f = fopen(i1.cache_path, "wb");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fputs("not a binary", f);
    fclose(f);
    qv_engine_free(e);
    o.build_options = NULL;
    e = qv_engine_opencl_create(&o);
    CU_ASSERT_PTR_NOT_NULL(e);
    if (e) {
        qv_engine_opencl_info(e, &i2);
        CU_ASSERT_EQUAL(i2.cache_hit, 0);
    }
    qv_engine_free(e);
    e = qv_engine_opencl_create(&o);
    CU_ASSERT_PTR_NOT_NULL(e);
    if (e) {
        qv_engine_opencl_info(e, &i2);
        CU_ASSERT_EQUAL(i2.cache_hit, 1);
    }
    qv_engine_free(e);
    /* an engine that is not opencl */
    struct qv_opencl_info i4;
    CU_ASSERT_EQUAL(qv_engine_opencl_info(cpu, &i4), QV_EINVAL);
}

/* After a failure, the CPU engine still serves. */
static void assert_cpu_works(void)
{
    struct unit u;
    struct heaps h;
    unit_make(&u, QV_WU_FLAT, QV_METRIC_L2, 8, 500, 1, 3, 1, 0);
    CU_ASSERT_EQUAL(run_into(cpu, &u, &h, 5), 0);
    CU_ASSERT_EQUAL(h.h[0].n, 5);
    heaps_fini(&h);
    unit_free(&u);
}

static void test_build_failure(void)
{
    struct qv_opencl_opts o = test_opts();
    o.build_options = "-DQV_FORCE_ERROR";
    qv_clearerr();
    struct qv_engine *e = qv_engine_opencl_create(&o);
    CU_ASSERT_PTR_NULL(e);
    CU_ASSERT_EQUAL(qv_errno, QV_EUNAVAIL);
    const char *msg = qv_errmsg();
    CU_ASSERT_PTR_NOT_NULL(strstr(msg, "CL_BUILD_PROGRAM_FAILURE"));
    CU_ASSERT_PTR_NOT_NULL(strstr(msg, "build log"));
    CU_ASSERT_PTR_NOT_NULL(strstr(msg, "QV_FORCE_ERROR"));
    qv_engine_free(e);
    assert_cpu_works();
}

static void test_bad_opts(void)
{
    struct qv_opencl_opts o = test_opts();
    o.platform = "no-such-platform-xyz";
    CU_ASSERT_PTR_NULL(qv_engine_opencl_create(&o));
    CU_ASSERT_EQUAL(qv_errno, QV_EUNAVAIL);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "no-such-platform-xyz"));
    o = test_opts();
    o.device_index = 200;
    CU_ASSERT_PTR_NULL(qv_engine_opencl_create(&o));
    CU_ASSERT_EQUAL(qv_errno, QV_EUNAVAIL);
    o = test_opts();
    o.local_size = 48;
    CU_ASSERT_PTR_NULL(qv_engine_opencl_create(&o));
    CU_ASSERT_EQUAL(qv_errno, QV_EINVAL);
    o = test_opts();
    o.binary = "/nonexistent/quiver.bin";
    CU_ASSERT_PTR_NULL(qv_engine_opencl_create(&o));
    CU_ASSERT_EQUAL(qv_errno, QV_EUNAVAIL);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "/nonexistent/quiver.bin"));
    CU_ASSERT_STRING_EQUAL(qv_opencl_strerror(-5), "CL_OUT_OF_RESOURCES");
    CU_ASSERT_STRING_EQUAL(qv_opencl_strerror(-11), "CL_BUILD_PROGRAM_FAILURE");
    CU_ASSERT_STRING_EQUAL(qv_opencl_strerror(-4), "CL_MEM_OBJECT_ALLOCATION_FAILURE");
    assert_cpu_works();
}

/* A prebuilt binary (the FPGA path): the cache file is one. */
static void test_prebuilt_binary(void)
{
    struct qv_opencl_info i;
    qv_engine_opencl_info(ocl, &i);
    struct qv_opencl_opts o = test_opts();
    o.binary = i.cache_path;
    struct qv_engine *e = qv_engine_opencl_create(&o);
    if (!e)
        fprintf(stderr, "\n  %s", qv_errmsg());
    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    qv_engine_opencl_info(e, &i);
    CU_ASSERT_EQUAL(i.from_binary, 1);
    struct unit u;
    struct heaps h;
    unit_make(&u, QV_WU_FLAT, QV_METRIC_L2, 8, 500, 1, 3, 1, 0);
    CU_ASSERT_EQUAL(run_into(e, &u, &h, 5), 0);
    CU_ASSERT_EQUAL(h.h[0].n, 5);
    heaps_fini(&h);
    unit_free(&u);
    qv_engine_free(e);
}

static void test_oom(void)
{
    struct qv_opencl_opts o = test_opts();
    o.max_alloc = 16384;
    struct qv_engine *e = qv_engine_opencl_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    struct unit u;
    struct heaps h;
    unit_make(&u, QV_WU_FLAT, QV_METRIC_L2, 64, 2000, 1, 4, 1, 0);  /* 512 KB list */
    int rc = run_into(e, &u, &h, 10);
    CU_ASSERT_EQUAL(rc, QV_ENOMEM);
    CU_ASSERT_EQUAL(u.wu.status, QV_ENOMEM);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "CL_DEVICE_MAX_MEM_ALLOC_SIZE"));
    CU_ASSERT_EQUAL(e->ops->health(e), 0);      /* a unit failed, not the engine */
    heaps_fini(&h);
    unit_free(&u);
    /* the same engine still runs a unit that fits */
    unit_make(&u, QV_WU_FLAT, QV_METRIC_L2, 4, 100, 1, 2, 1, 0);
    CU_ASSERT_EQUAL(run_into(e, &u, &h, 3), 0);
    CU_ASSERT_EQUAL(h.h[1].n, 3);
    heaps_fini(&h);
    unit_free(&u);
    qv_engine_free(e);
    /* a host allocation failure inside submit: the unit fails cleanly */
    e = qv_engine_opencl_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    int failed = 0, ok = 0;
    for (long n = 0; n < 12; n++) {
        unit_make(&u, QV_WU_SQ8, QV_METRIC_L2, 4, 100, 3, 5, 2, 1);
        heaps_init(&h, u.wu.nq, 3);
        u.wu.heaps = h.h;
        qv_alloc_fail_after(n);
        rc = qv_engine_run(e, &u.wu);
        qv_alloc_fail_after(-1);
        failed += rc == QV_ENOMEM;
        ok += rc == 0;
        CU_ASSERT(rc == 0 || rc == QV_ENOMEM);
        heaps_fini(&h);
        unit_free(&u);
    }
    CU_ASSERT(failed > 0);
    CU_ASSERT(ok > 0);
    qv_engine_free(e);
    assert_cpu_works();
}

static void test_refusals(void)
{
    struct unit u;
    struct heaps h;
    unit_make(&u, QV_WU_FLAT, QV_METRIC_L2, 8, 500, 1, 2, 1, 0);
    heaps_init(&h, 2, QV_OPENCL_MAX_K + 1);
    u.wu.heaps = h.h;
    CU_ASSERT_EQUAL(ocl->ops->submit(ocl, &u.wu), QV_ENOTSUP);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "k = 257"));
    heaps_fini(&h);
    heaps_init(&h, 2, 10);
    u.wu.heaps = h.h;
    u.wu.metric = QV_METRIC_COSINE;
    CU_ASSERT_EQUAL(ocl->ops->submit(ocl, &u.wu), QV_ENOTSUP);
    u.wu.metric = QV_METRIC_L2;
    u.wu.kind = QV_WU__COUNT;
    CU_ASSERT_EQUAL(ocl->ops->submit(ocl, &u.wu), QV_ENOTSUP);
    u.wu.kind = QV_WU_FLAT;
    struct qv_engine_caps caps;
    ocl->ops->caps(ocl, &caps);
    CU_ASSERT_EQUAL(caps.kinds, 15u);     /* FLAT, SQ8, PQ, F16 */
    CU_ASSERT_EQUAL(ocl->ops->health(ocl), 0);
    CU_ASSERT_STRING_EQUAL(ocl->ops->name, "opencl");
    /* an empty unit completes at once */
    uint32_t off0[3] = { 0, 0, 0 };
    const uint32_t *saved = u.wu.probe_offsets;
    u.wu.probe_offsets = off0;
    CU_ASSERT_EQUAL(qv_engine_run(ocl, &u.wu), 0);
    CU_ASSERT_EQUAL(h.h[0].n, 0);
    u.wu.probe_offsets = saved;
    heaps_fini(&h);
    unit_free(&u);
}

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
        u[i].wu.user = &u[i];
    }
    for (int i = 0; i < N; i++) {
        int rc = ocl->ops->submit(ocl, &u[i].wu);
        if (i < 8) {
            CU_ASSERT_EQUAL(rc, 0);
            submitted += rc == 0;
        } else {
            CU_ASSERT_EQUAL(rc, QV_EBUSY);      /* 8 in flight, none polled */
        }
    }
    CU_ASSERT_EQUAL(qv_engine_opencl_wait(ocl), 0);
    struct qv_work_unit *done[16];
    int got = 0, order_ok = 1;
    while (got < submitted) {
        int n = ocl->ops->poll(ocl, done, 3);
        for (int j = 0; j < n; j++) {
            order_ok &= done[j] == &u[got + j].wu;
            CU_ASSERT_EQUAL(done[j]->status, 0);
            CU_ASSERT(done[j]->device_ns > 0);
        }
        got += n;
    }
    CU_ASSERT(order_ok);
    CU_ASSERT_EQUAL(ocl->ops->poll(ocl, done, 16), 0);
    for (int i = 0; i < submitted; i++) {
        for (uint32_t q = 0; q < u[i].wu.nq; q++)
            qv_topk_sort(&h[i].h[q]);
        CU_ASSERT_EQUAL(compare(&ref[i], &h[i], u[i].wu.nq, 10, 1e-4f, "async"), 0);
    }
    for (int i = 0; i < N; i++) {
        heaps_fini(&h[i]);
        heaps_fini(&ref[i]);
        unit_free(&u[i]);
    }
}

/* Devices without shared memory: resident copies, LRU eviction, forget. */
static void test_resident(void)
{
    struct qv_opencl_opts o = test_opts();
    o.no_zero_copy = 1;
    o.resident_bytes = 200000;          /* a few lists at a time */
    struct qv_engine *saved = ocl;
    ocl = qv_engine_opencl_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(ocl);
    struct qv_opencl_info i;
    qv_engine_opencl_info(ocl, &i);
    CU_ASSERT_EQUAL(i.shared_memory, 0);
    struct unit u;
    unit_make(&u, QV_WU_FLAT, QV_METRIC_L2, 32, 8000, 16, 40, 6, 1);
    check_unit(&u, 10, 1e-4f, "resident flat");
    check_unit(&u, 10, 1e-4f, "resident flat again");   /* hits and evictions */
    CU_ASSERT_EQUAL(qv_engine_opencl_forget(ocl, u.lists[u.plist[0]].codes) +
                    qv_engine_opencl_forget(ocl, (const char *)u.lists[0].codes + 1), 1);
    check_unit(&u, 10, 1e-4f, "resident flat after forget");
    CU_ASSERT_EQUAL(qv_engine_opencl_forget(ocl, NULL), 0);    /* not a crash */
    unit_forget(ocl, &u);
    unit_free(&u);
    unit_make_pq(&u, QV_METRIC_L2, 32, 8, 8, 3000, 8, 20, 3, 0, 1);
    check_unit(&u, 10, 1e-4f, "resident pq8");
    unit_forget(ocl, &u);
    unit_free(&u);
    qv_engine_free(ocl);
    ocl = saved;
}

/* Rewrite u's FLAT lists in place (x -> 1 - 2x, norms recomputed): same
 * pointers, same sizes, other contents. */
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

static uint32_t nonempty_lists(const struct unit *u)
{
    uint32_t n = 0;
    for (uint32_t l = 0; l < u->wu.nlists; l++)
        n += u->lists[l].n > 0;
    return n;
}

static struct qv_opencl_stats ocl_stats(struct qv_engine *e)
{
    struct qv_opencl_stats st;
    memset(&st, 0, sizeof st);
    CU_ASSERT_EQUAL(qv_engine_opencl_stats(e, &st), 0);
    return st;
}

/* Prefetch on an engine that keeps resident copies (no_zero_copy, the
 * mode of devices without shared memory): the copies start at prefetch;
 * a unit over the same lists then copies no list bytes (resident_bytes
 * unchanged) and equals the CPU; a second prefetch has nothing to do;
 * forget right after a prefetch (copies in flight) then a rewrite: the
 * unit sees the new contents; a budget too small: the prefetch declines
 * or evicts per LRU, and later units are right.  In place: nothing. */
static void test_prefetch(void)
{
    const uint32_t dim = 32;
    struct unit u, a, b, big;
    struct qv_opencl_info i;
    qv_engine_opencl_info(ocl, &i);
    unit_make(&u, QV_WU_FLAT, QV_METRIC_L2, dim, 60000, 24, 40, 6, 0);
    if (i.shared_memory) {
        struct qv_opencl_stats st0 = ocl_stats(ocl);
        CU_ASSERT_EQUAL(qv_engine_prefetch(ocl, &u.wu), 0);
        CU_ASSERT_EQUAL(ocl_stats(ocl).prefetch_calls, st0.prefetch_calls);
    }
    struct qv_opencl_opts o = test_opts();
    o.no_zero_copy = 1;
    struct qv_engine *saved = ocl;
    ocl = qv_engine_opencl_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(ocl);
    const uint32_t ne = nonempty_lists(&u);

    /* prefetch, then at once the unit: it waits for copies in flight */
    struct qv_opencl_stats s0 = ocl_stats(ocl);
    CU_ASSERT_EQUAL(qv_engine_prefetch(ocl, &u.wu), (int)ne);
    struct qv_opencl_stats s1 = ocl_stats(ocl);
    CU_ASSERT_EQUAL(s1.prefetch_copies - s0.prefetch_copies, 2 * ne);     /* codes, norms */
    CU_ASSERT(s1.prefetch_bytes > (uint64_t)u.n * dim * 4);
    {
        /* the engine first, while the copies may still run; then the CPU */
        struct heaps ho, hc;
        CU_ASSERT_EQUAL(run_into(ocl, &u, &ho, 10), 0);
        CU_ASSERT_EQUAL(run_into(cpu, &u, &hc, 10), 0);
        CU_ASSERT_EQUAL(compare(&hc, &ho, u.wu.nq, 10, 1e-4f, "prefetch: unit right after"),
                        0);
        heaps_fini(&ho);
        heaps_fini(&hc);
    }
    struct qv_opencl_stats s2 = ocl_stats(ocl);
    CU_ASSERT_EQUAL(s2.resident_bytes, s1.resident_bytes);     /* no list bytes moved */
    CU_ASSERT_EQUAL(s2.resident_copies, s1.resident_copies);
    fprintf(stderr, "\n  prefetch: %llu of %u buffers still in flight when the unit came ",
            (unsigned long long)(s2.prefetch_waits - s1.prefetch_waits), 2 * ne);
    CU_ASSERT_EQUAL(qv_engine_prefetch(ocl, &u.wu), 0);         /* all resident */
    CU_ASSERT_EQUAL(ocl_stats(ocl).prefetch_copies, s2.prefetch_copies);
    check_unit(&u, 10, 1e-4f, "prefetch: unit again");
    CU_ASSERT_EQUAL(ocl_stats(ocl).resident_bytes, s1.resident_bytes);

    /* forget while the copies are in flight, rewrite, unit: new contents */
    unit_forget(ocl, &u);
    CU_ASSERT_EQUAL(qv_engine_prefetch(ocl, &u.wu), (int)ne);
    unit_forget(ocl, &u);               /* waits for the copies */
    rewrite_flat_lists(&u, dim);
    struct qv_opencl_stats s3 = ocl_stats(ocl);
    check_unit(&u, 10, 1e-4f, "prefetch: forgotten, rewritten");
    CU_ASSERT_EQUAL(ocl_stats(ocl).resident_copies - s3.resident_copies, 2 * ne);
    /* prefetch of rewritten lists after forget: copies of the new data */
    unit_forget(ocl, &u);
    rewrite_flat_lists(&u, dim);
    CU_ASSERT_EQUAL(qv_engine_prefetch(ocl, &u.wu), (int)ne);
    CU_ASSERT_EQUAL(qv_engine_opencl_wait(ocl), 0);
    s3 = ocl_stats(ocl);
    check_unit(&u, 10, 1e-4f, "prefetch: rewritten then prefetched");
    CU_ASSERT_EQUAL(ocl_stats(ocl).resident_bytes, s3.resident_bytes);
    unit_forget(ocl, &u);
    qv_engine_free(ocl);

    /* a small budget: two units' lists evict each other (LRU), a unit
     * whose lists cannot fit declines, units stay right */
    o.resident_bytes = 200000;
    ocl = qv_engine_opencl_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(ocl);
    unit_make(&a, QV_WU_FLAT, QV_METRIC_L2, dim, 1000, 4, 20, 2, 0);  /* ~130 KB */
    unit_make(&b, QV_WU_FLAT, QV_METRIC_L2, dim, 1000, 4, 20, 2, 1);
    unit_make(&big, QV_WU_FLAT, QV_METRIC_L2, dim, 8000, 6, 10, 3, 0); /* ~1 MB */
    CU_ASSERT_EQUAL(qv_engine_prefetch(ocl, &a.wu), (int)nonempty_lists(&a));
    s0 = ocl_stats(ocl);
    CU_ASSERT_EQUAL(qv_engine_prefetch(ocl, &b.wu), (int)nonempty_lists(&b));
    s1 = ocl_stats(ocl);
    CU_ASSERT(s1.evictions > s0.evictions);             /* a's lists made room */
    check_unit(&b, 10, 1e-4f, "prefetch budget: b");
    CU_ASSERT_EQUAL(ocl_stats(ocl).resident_bytes, s1.resident_bytes);
    check_unit(&a, 10, 1e-4f, "prefetch budget: a, evicted");
    CU_ASSERT(ocl_stats(ocl).resident_bytes > s1.resident_bytes);
    s2 = ocl_stats(ocl);
    CU_ASSERT_EQUAL(qv_engine_prefetch(ocl, &big.wu), QV_ENOSPC);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "resident"));
    CU_ASSERT_EQUAL(ocl_stats(ocl).prefetch_declined, s2.prefetch_declined + 1);
    CU_ASSERT_EQUAL(ocl->ops->health(ocl), 0);
    check_unit(&big, 10, 1e-4f, "prefetch budget: big after a decline");
    check_unit(&a, 10, 1e-4f, "prefetch budget: a after big");
    check_unit(&b, 10, 1e-4f, "prefetch budget: b after big");
    unit_forget(ocl, &a);
    unit_forget(ocl, &b);
    unit_forget(ocl, &big);
    unit_free(&a);
    unit_free(&b);
    unit_free(&big);
    unit_free(&u);
    qv_engine_free(ocl);
    ocl = saved;
}

/* qv_ivf_prefetch / qv_ivfpq_prefetch / qv_flat_prefetch copy exactly the
 * lists the next search of those queries scans: the search then copies
 * nothing (resident_bytes unchanged) and equals the CPU, and the bytes
 * prefetched equal the bytes a plain search copies on a fresh engine. */
static void test_index_prefetch(void)
{
    const uint32_t dim = 24, n = 6000, nq = 20, k = 10, nprobe = 5;
    float *x = qv_malloc((size_t)n * dim * sizeof(float), QV_MEM_TEST);
    float *q = qv_malloc((size_t)nq * dim * sizeof(float), QV_MEM_TEST);
    for (size_t j = 0; j < (size_t)n * dim; j++)
        x[j] = rndf();
    for (size_t j = 0; j < (size_t)nq * dim; j++)
        q[j] = rndf();
    float *d1 = qv_malloc(nq * k * sizeof(float), QV_MEM_TEST);
    float *d2 = qv_malloc(nq * k * sizeof(float), QV_MEM_TEST);
    uint64_t *i1 = qv_malloc(nq * k * sizeof(uint64_t), QV_MEM_TEST);
    uint64_t *i2 = qv_malloc(nq * k * sizeof(uint64_t), QV_MEM_TEST);
    struct heaps ha = { NULL, d1, i1 }, hb = { NULL, d2, i2 };
    struct qv_opencl_opts o = test_opts();
    o.no_zero_copy = 1;
    for (int kind = 0; kind < 3; kind++) {
        /* pre: prefetch then search; plain: search alone */
        struct qv_engine *pre = qv_engine_opencl_create(&o);
        struct qv_engine *plain = qv_engine_opencl_create(&o);
        CU_ASSERT_PTR_NOT_NULL_FATAL(pre);
        CU_ASSERT_PTR_NOT_NULL_FATAL(plain);
        struct qv_ivf *ivf = NULL;
        struct qv_ivfpq *pq = NULL;
        struct qv_flat *flat = NULL;
        int rc = 0;
        const char *what = kind == 0 ? "ivf" : kind == 1 ? "ivfpq" : "flat";
        if (kind == 0) {
            struct qv_ivf_opts io = { .dim = dim, .metric = QV_METRIC_L2, .nlist = 32,
                                      .seed = 3 };
            ivf = qv_ivf_create(&io);
            CU_ASSERT_PTR_NOT_NULL_FATAL(ivf);
            CU_ASSERT_EQUAL(qv_ivf_train(ivf, x, n), 0);
            CU_ASSERT_EQUAL(qv_ivf_add(ivf, n, x, NULL), 0);
            CU_ASSERT_EQUAL(qv_ivf_prefetch(ivf, q, nq, nprobe), 0);    /* no engine */
            CU_ASSERT_EQUAL(qv_ivf_search(ivf, q, nq, k, nprobe, NULL, d1, i1), 0);
            qv_ivf_set_engine(ivf, plain);
            CU_ASSERT_EQUAL(qv_ivf_search(ivf, q, nq, k, nprobe, NULL, d2, i2), 0);
            qv_ivf_set_engine(ivf, pre);
            rc = qv_ivf_prefetch(ivf, q, nq, nprobe);
        } else if (kind == 1) {
            struct qv_ivfpq_opts po = { .dim = dim, .metric = QV_METRIC_L2, .nlist = 32,
                                        .m = 8, .nbits = 4, .seed = 5 };
            pq = qv_ivfpq_create(&po);
            CU_ASSERT_PTR_NOT_NULL_FATAL(pq);
            CU_ASSERT_EQUAL(qv_ivfpq_train(pq, x, n), 0);
            CU_ASSERT_EQUAL(qv_ivfpq_add(pq, n, x, NULL), 0);
            CU_ASSERT_EQUAL(qv_ivfpq_prefetch(pq, q, nq, nprobe), 0);
            CU_ASSERT_EQUAL(qv_ivfpq_search(pq, q, nq, k, nprobe, 1, NULL, d1, i1), 0);
            qv_ivfpq_set_engine(pq, plain);
            CU_ASSERT_EQUAL(qv_ivfpq_search(pq, q, nq, k, nprobe, 1, NULL, d2, i2), 0);
            qv_ivfpq_set_engine(pq, pre);
            rc = qv_ivfpq_prefetch(pq, q, nq, nprobe);
        } else {
            struct qv_flat_opts fo = { .dim = dim, .metric = QV_METRIC_L2,
                                       .segment_capacity = 1024, .numa_node = -1 };
            flat = qv_flat_create(&fo);
            CU_ASSERT_PTR_NOT_NULL_FATAL(flat);
            CU_ASSERT_EQUAL(qv_flat_add(flat, n, x, NULL), 0);
            CU_ASSERT_EQUAL(qv_flat_search(flat, q, nq, k, NULL, d1, i1), 0);
            CU_ASSERT_EQUAL(qv_flat_search_engine(flat, plain, q, nq, k, NULL, d2, i2), 0);
            rc = qv_flat_prefetch(flat, pre);
        }
        struct qv_opencl_stats sp = ocl_stats(plain), s0 = ocl_stats(pre);
        if (rc <= 0)
            fprintf(stderr, "\n  %s prefetch: %d %s", what, rc, qv_errmsg());
        CU_ASSERT(rc > 0);
        CU_ASSERT_EQUAL(s0.prefetch_bytes, sp.resident_bytes);  /* exactly those lists */
        CU_ASSERT_EQUAL(s0.prefetch_copies, sp.resident_copies);
        CU_ASSERT_EQUAL(s0.resident_bytes, 0);
        if (kind == 0)
            rc = qv_ivf_search(ivf, q, nq, k, nprobe, NULL, d2, i2);
        else if (kind == 1)
            rc = qv_ivfpq_search(pq, q, nq, k, nprobe, 1, NULL, d2, i2);
        else
            rc = qv_flat_search_engine(flat, pre, q, nq, k, NULL, d2, i2);
        CU_ASSERT_EQUAL(rc, 0);
        CU_ASSERT_EQUAL(ocl_stats(pre).resident_bytes, 0);       /* nothing missed */
        CU_ASSERT_EQUAL(compare(&ha, &hb, nq, k, 1e-4f, what), 0);
        if (ivf) {
            qv_ivf_set_engine(ivf, NULL);
            qv_ivf_free(ivf);
        }
        if (pq) {
            qv_ivfpq_set_engine(pq, NULL);
            qv_ivfpq_free(pq);
        }
        if (flat) {
            qv_flat_search_engine(flat, plain, q, nq, k, NULL, d2, i2);
            qv_flat_free(flat);         /* tells plain; pre was told at the switch */
        }
        qv_engine_free(pre);
        qv_engine_free(plain);
    }
    qv_free(x);
    qv_free(q);
    qv_free(d1);
    qv_free(d2);
    qv_free(i1);
    qv_free(i2);
}

/* Host memory rewritten in place between units (same pointers, same
 * sizes: what a growing segment or a reused query buffer does) must be
 * what the next unit scans, whether the engine copies or caches
 * in-place wrappers. */
static void test_inplace(void)
{
    struct qv_opencl_info i;
    qv_engine_opencl_info(ocl, &i);
    if (i.shared_memory)                /* POCL: proven at create */
        CU_ASSERT_EQUAL(i.inplace, 1);
    struct unit u;
    const uint32_t dim = 24;
    unit_make(&u, QV_WU_FLAT, QV_METRIC_L2, dim, 3000, 8, 30, 3, 0);
    check_unit(&u, 10, 1e-4f, "inplace: before");
    for (uint32_t l = 0; l < u.wu.nlists; l++) {
        struct qv_wu_list *L = &u.lists[l];
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
    for (uint32_t q = 0; q < u.wu.nq; q++) {
        float s2 = 0;
        for (uint32_t d = 0; d < dim; d++) {
            float *v = &u.queries[(size_t)q * dim + d];
            *v = 0.5f - *v;
            s2 += *v * *v;
        }
        u.qnorms[q] = s2;
    }
    if (!i.inplace)                     /* copies: the documented duty */
        for (uint32_t l = 0; l < u.wu.nlists; l++) {
            qv_engine_opencl_forget(ocl, u.lists[l].codes);
            qv_engine_opencl_forget(ocl, u.lists[l].norms);
        }
    check_unit(&u, 10, 1e-4f, "inplace: rewritten lists and queries");
    unit_free(&u);
}

static void test_config(void)
{
    struct qv_config *cfg = qv_config_parse(
        "[opencl]\nplatform = Portable\ndevice_type = cpu\ndevice_index = 0\n"
        "cache_dir = off\nlocal_size = 128\nmax_alloc = 1G\n", "test");
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    struct qv_opencl_opts o;
    CU_ASSERT_EQUAL(qv_opencl_opts_from_config(cfg, &o), 0);
    CU_ASSERT_STRING_EQUAL(o.platform, "Portable");
    CU_ASSERT_EQUAL(o.device_type, QV_OPENCL_DEV_CPU);
    CU_ASSERT_STRING_EQUAL(o.cache_dir, "off");
    CU_ASSERT_PTR_NULL(o.binary);
    CU_ASSERT_EQUAL(o.local_size, 128);
    CU_ASSERT_EQUAL(o.max_alloc, 1ull << 30);
    qv_config_free(cfg);
    cfg = qv_config_defaults();
    CU_ASSERT_EQUAL(qv_opencl_opts_from_config(cfg, &o), 0);
    CU_ASSERT_PTR_NULL(o.platform);
    CU_ASSERT_PTR_NULL(o.cache_dir);
    CU_ASSERT_EQUAL(o.local_size, 0);
    qv_config_free(cfg);
    cfg = qv_config_parse("[opencl]\nlocal_size = 48\n", "test");
    CU_ASSERT_PTR_NULL(cfg);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "power of two"));
    cfg = qv_config_parse("[opencl]\ndevice_type = fpga\n", "test");
    CU_ASSERT_PTR_NULL(cfg);
}

/* Overheads, printed for the report (not asserted beyond sanity). */
static void test_overheads(void)
{
    struct unit u;
    struct heaps h;
    unit_make(&u, QV_WU_FLAT, QV_METRIC_L2, 16, 16, 1, 1, 1, 0);
    heaps_init(&h, 1, 1);
    u.wu.heaps = h.h;
    for (int i = 0; i < 20; i++)
        qv_engine_run(ocl, &u.wu);
    enum { reps = 301 };
    int64_t t[reps];
    for (int i = 0; i < reps; i++) {
        qv_topk_init(&h.h[0], 1, h.d, h.id);
        int64_t t0 = qv_now_ns();
        CU_ASSERT_EQUAL(qv_engine_run(ocl, &u.wu), 0);
        t[i] = qv_now_ns() - t0;
        /* insertion sort as we go */
        for (int j = i; j > 0 && t[j - 1] > t[j]; j--) {
            int64_t x = t[j];
            t[j] = t[j - 1];
            t[j - 1] = x;
        }
    }
    fprintf(stderr, "\n  tiny unit round trip (1 query x 16 vectors): median %.1f us, "
            "p90 %.1f us ", t[reps / 2] / 1e3, t[reps * 9 / 10] / 1e3);
    CU_ASSERT(t[reps / 2] < 5000000);   /* a sanity bound; the figure is printed */
    heaps_fini(&h);
    unit_free(&u);
}

int main(void)
{
    struct qv_mem_stats before, after;
    qv_mem_stats(QV_MEM_TEST, &before);
    snprintf(cache_dir, sizeof cache_dir, "/tmp/qv-ocl-test-XXXXXX");
    if (!mkdtemp(cache_dir)) {
        perror("mkdtemp");
        return 1;
    }
    cpu = qv_engine_cpu_create(NULL);
    struct qv_opencl_opts o = test_opts();
    ocl = qv_engine_opencl_create(&o);
    if (!ocl) {
        int code = qv_errno;
        fprintf(stderr, "test_opencl: %s\n", qv_errmsg());
        qv_engine_free(cpu);
        rmdir(cache_dir);
        if (code == QV_EUNAVAIL && strstr(qv_errmsg(), "no OpenCL platform")) {
            printf("SKIP: no OpenCL platform on this machine (install pocl-opencl-icd)\n");
            return 0;
        }
        return 1;
    }
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 1;
    CU_pSuite s = CU_add_suite("opencl", NULL, NULL);
    CU_add_test(s, "binary cache: second creation loads the binary", test_cache_hit);
    CU_add_test(s, "build failure: EUNAVAIL with the build log", test_build_failure);
    CU_add_test(s, "bad options and error names", test_bad_opts);
    CU_add_test(s, "prebuilt binary (FPGA path)", test_prebuilt_binary);
    CU_add_test(s, "allocation failures fail the unit, not the process", test_oom);
    CU_add_test(s, "refusals: k, metric, kind; empty unit", test_refusals);
    CU_add_test(s, "config: [opencl] keys", test_config);
    CU_add_test(s, "flat: every dim, l2/ip, == cpu", test_flat_dims);
    CU_add_test(s, "flat: k 1..256, filter, == cpu", test_flat_k);
    CU_add_test(s, "flat: batch sizes 1..4096, == cpu", test_flat_batches);
    CU_add_test(s, "ivf flat: many lists and probes, == cpu", test_ivf_flat);
    CU_add_test(s, "sq8: every dim, == cpu", test_sq8);
    CU_add_test(s, "f16: every dim, ivf shapes, == cpu", test_f16);
    CU_add_test(s, "pq: 4/8 bits, ltab, ip, filter, == cpu", test_pq);
    CU_add_test(s, "indexes: ivf, ivf-sq8, ivf-pq searches, == cpu", test_indexes);
    CU_add_test(s, "async: 8 in flight, EBUSY, completion order", test_async);
    CU_add_test(s, "resident buffers: LRU eviction, forget", test_resident);
    CU_add_test(s, "in place: rewritten host memory is what is scanned", test_inplace);
    CU_add_test(s, "prefetch: resident copies ahead of a unit, forget, budget",
                test_prefetch);
    CU_add_test(s, "prefetch: ivf, ivf-pq, flat copy exactly what search scans",
                test_index_prefetch);
    CU_add_test(s, "overheads (printed)", test_overheads);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failed = CU_get_number_of_failures();
    int err = CU_get_error();
    CU_cleanup_registry();
    qv_engine_free(ocl);
    qv_engine_free(cpu);
    /* remove the temp cache */
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", cache_dir);
    if (system(cmd) != 0)
        fprintf(stderr, "test_opencl: could not remove %s\n", cache_dir);
    qv_mem_stats(QV_MEM_TEST, &after);
    if (after.live_blocks != before.live_blocks) {
        fprintf(stderr, "test_opencl: %lld test blocks leaked\n",
                (long long)(after.live_blocks - before.live_blocks));
        failed++;
    }
    return failed || err ? 1 : 0;
}
