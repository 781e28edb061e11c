/*
 * test_kmeans.c - k-means: same seed -> same centroids with 1 and 2
 * threads, the objective falls with more iterations, empty clusters are
 * repaired, assignment equals brute force, bad input is refused, and
 * injected allocation failures give QV_ENOMEM without a leak.
 */
#include <CUnit/Basic.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "quiver/alloc.h"
#include "quiver/errors.h"
#include "quiver/kmeans.h"
#include "quiver/pool.h"

static struct qv_pool *pool2;

static uint64_t rng = 0x9E3779B97F4A7C15ULL;
static float frand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)(rng >> 40) / (float)(1u << 24);
}

/* n points around nc random centres (noise amplitude `noise`). */
static float *clustered(size_t n, size_t dim, size_t nc, float noise)
{
    float *c = malloc(nc * dim * sizeof(float));
    float *x = malloc(n * dim * sizeof(float));
    for (size_t i = 0; i < nc * dim; i++)
        c[i] = frand() * 10.0f;
    for (size_t i = 0; i < n; i++)
        for (size_t d = 0; d < dim; d++)
            x[i * dim + d] = c[(i % nc) * dim + d] + (frand() - 0.5f) * noise;
    free(c);
    return x;
}

static void test_deterministic_threads(void)
{
    const size_t n = 6000, dim = 17;
    float *x = clustered(n, dim, 40, 2.0f);
    for (int m = 0; m < 2; m++) {
        struct qv_kmeans_opts o = { .k = 37, .dim = dim, .iters = 8, .seed = 42,
                                    .max_points = 5000, .metric = (enum qv_metric)m };
        float *c1 = malloc(o.k * dim * sizeof(float));
        float *c2 = malloc(o.k * dim * sizeof(float));
        float *c3 = malloc(o.k * dim * sizeof(float));
        double ob1 = 0, ob2 = 0;
        CU_ASSERT_EQUAL(qv_kmeans_train(&o, x, n, c1, &ob1), 0);
        o.pool = pool2;
        CU_ASSERT_EQUAL(qv_kmeans_train(&o, x, n, c2, &ob2), 0);
        CU_ASSERT_EQUAL(memcmp(c1, c2, o.k * dim * sizeof(float)), 0);
        CU_ASSERT_EQUAL(ob1, ob2);
        o.seed = 43;
        CU_ASSERT_EQUAL(qv_kmeans_train(&o, x, n, c3, NULL), 0);
        CU_ASSERT_NOT_EQUAL(memcmp(c1, c3, o.k * dim * sizeof(float)), 0);
        for (size_t i = 0; i < o.k * dim; i++)
            CU_ASSERT_TRUE(isfinite(c1[i]));
        free(c1);
        free(c2);
        free(c3);
    }
    free(x);
}

static void test_objective_decreases(void)
{
    const size_t n = 8000, dim = 8;
    float *x = malloc(n * dim * sizeof(float));
    for (size_t i = 0; i < n * dim; i++)
        x[i] = frand();
    float *c = malloc(64 * dim * sizeof(float));
    double prev = INFINITY;
    uint32_t iters[] = { 1, 2, 5, 15 };
    for (int t = 0; t < 4; t++) {
        struct qv_kmeans_opts o = { .k = 64, .dim = dim, .iters = iters[t], .seed = 7,
                                    .pool = pool2 };
        double obj = 0;
        CU_ASSERT_EQUAL(qv_kmeans_train(&o, x, n, c, &obj), 0);
        CU_ASSERT_TRUE(obj <= prev * (1 + 1e-9));
        if (t == 3)
            CU_ASSERT_TRUE(obj < prev);
        prev = obj;
    }
    free(c);
    free(x);
}

static void test_empty_cluster_repair(void)
{
    /* 5 distinct points, 200 copies each, k = 8: seeding must repeat a
     * point, so some clusters start empty and are split off */
    const size_t dim = 6, n = 1000;
    float *x = malloc(n * dim * sizeof(float));
    for (size_t i = 0; i < n; i++)
        for (size_t d = 0; d < dim; d++)
            x[i * dim + d] = (float)((i % 5) * 3 + d);
    struct qv_kmeans_opts o = { .k = 8, .dim = dim, .iters = 5, .seed = 1 };
    float *c = malloc(8 * dim * sizeof(float));
    double obj = -1;
    CU_ASSERT_EQUAL(qv_kmeans_train(&o, x, n, c, &obj), 0);
    for (size_t i = 0; i < 8 * dim; i++)
        CU_ASSERT_TRUE(isfinite(c[i]));
    for (size_t a = 0; a < 8; a++)
        for (size_t b = a + 1; b < 8; b++)
            CU_ASSERT_NOT_EQUAL(memcmp(c + a * dim, c + b * dim, dim * sizeof(float)), 0);
    CU_ASSERT_TRUE(obj >= 0 && obj < 1.0);      /* every point sits on a centroid */
    free(x);
    free(c);

    /* 6 tight blobs, k = 12: every cluster ends non-empty */
    float *y = clustered(3000, dim, 6, 0.5f);
    float *cy = malloc(12 * dim * sizeof(float));
    o = (struct qv_kmeans_opts){ .k = 12, .dim = dim, .iters = 10, .seed = 3, .pool = pool2 };
    CU_ASSERT_EQUAL(qv_kmeans_train(&o, y, 3000, cy, NULL), 0);
    uint32_t *as = malloc(3000 * sizeof(uint32_t));
    CU_ASSERT_EQUAL(qv_kmeans_assign(cy, 12, dim, QV_METRIC_L2, y, 3000, as, NULL, pool2), 0);
    size_t cnt[12] = { 0 };
    for (size_t i = 0; i < 3000; i++)
        cnt[as[i]]++;
    for (int j = 0; j < 12; j++)
        CU_ASSERT_TRUE(cnt[j] > 0);
    free(as);
    free(cy);
    free(y);
}

static void test_assign_brute_force(void)
{
    size_t dims[] = { 1, 3, 16, 33, 128 };
    for (int di = 0; di < 5; di++)
        for (int m = 0; m < 2; m++) {
            size_t dim = dims[di], n = 700;
            uint32_t k = 53;
            float *x = malloc(n * dim * sizeof(float));
            float *c = malloc(k * dim * sizeof(float));
            for (size_t i = 0; i < n * dim; i++)
                x[i] = frand() - 0.5f;
            for (size_t i = 0; i < k * dim; i++)
                c[i] = frand() - 0.5f;
            uint32_t *as = malloc(n * sizeof(uint32_t));
            float *ds = malloc(n * sizeof(float));
            CU_ASSERT_EQUAL(qv_kmeans_assign(c, k, dim, (enum qv_metric)m, x, n, as, ds,
                                             pool2), 0);
            for (size_t i = 0; i < n; i++) {
                double best = INFINITY, got = 0;
                for (uint32_t j = 0; j < k; j++) {
                    double s = 0;
                    for (size_t d = 0; d < dim; d++) {
                        double a = x[i * dim + d], b = c[j * dim + d];
                        s += m == 0 ? (a - b) * (a - b) : -a * b;
                    }
                    if (s < best)
                        best = s;
                    if (j == as[i])
                        got = s;
                }
                CU_ASSERT_TRUE(as[i] < k);
                CU_ASSERT_TRUE(got <= best + 1e-4 * (double)dim);
                CU_ASSERT_TRUE(fabs(ds[i] - got) <= 1e-4 * (double)dim);
            }
            free(as);
            free(ds);
            free(x);
            free(c);
        }
}

static void test_bad_input(void)
{
    float x[8] = { 0 }, c[8];
    struct qv_kmeans_opts o = { .k = 0, .dim = 2 };
    CU_ASSERT_EQUAL(qv_kmeans_train(&o, x, 4, c, NULL), QV_EINVAL);
    o.k = 5;
    CU_ASSERT_EQUAL(qv_kmeans_train(&o, x, 4, c, NULL), QV_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "4 points"));
    o.k = 2;
    o.dim = 0;
    CU_ASSERT_EQUAL(qv_kmeans_train(&o, x, 4, c, NULL), QV_EINVAL);
    o.dim = 2;
    o.metric = QV_METRIC_COSINE;
    CU_ASSERT_EQUAL(qv_kmeans_train(&o, x, 4, c, NULL), QV_EINVAL);
    uint32_t as[4];
    CU_ASSERT_EQUAL(qv_kmeans_assign(c, 0, 2, QV_METRIC_L2, x, 4, as, NULL, NULL), QV_EINVAL);
}

static void test_alloc_failures(void)
{
    const size_t n = 2000, dim = 9;
    float *x = clustered(n, dim, 10, 1.0f);
    float *c = malloc(20 * dim * sizeof(float));
    struct qv_mem_stats s0, s1;
    qv_mem_stats(QV_MEM__COUNT, &s0);
    int ok = 0;
    for (long i = 0; i < 200 && !ok; i++) {
        struct qv_kmeans_opts o = { .k = 20, .dim = dim, .iters = 3, .seed = 5,
                                    .max_points = 1500, .pool = pool2 };
        double obj;
        qv_alloc_fail_after(i);
        int rc = qv_kmeans_train(&o, x, n, c, &obj);
        qv_alloc_fail_after(-1);
        if (rc == 0)
            ok = 1;
        else
            CU_ASSERT_EQUAL(rc, QV_ENOMEM);
    }
    CU_ASSERT_TRUE(ok);
    qv_mem_stats(QV_MEM__COUNT, &s1);
    CU_ASSERT_EQUAL(s1.live_blocks, s0.live_blocks);
    CU_ASSERT_EQUAL(s1.live_bytes, s0.live_bytes);
    free(c);
    free(x);
}

int main(void)
{
    pool2 = qv_pool_create(2, true);
    if (!pool2)
        return 2;
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    CU_pSuite s = CU_add_suite("kmeans", NULL, NULL);
    CU_add_test(s, "same seed, same centroids with 1 and 2 threads", test_deterministic_threads);
    CU_add_test(s, "objective decreases with iterations", test_objective_decreases);
    CU_add_test(s, "empty clusters repaired (duplicate points)", test_empty_cluster_repair);
    CU_add_test(s, "assign equals brute force (l2, ip)", test_assign_brute_force);
    CU_add_test(s, "bad input is refused with a message", test_bad_input);
    CU_add_test(s, "injected allocation failures: ENOMEM, no leak", test_alloc_failures);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failed = CU_get_number_of_failures();
    int err = CU_get_error();
    CU_cleanup_registry();
    qv_pool_free(pool2);
    return failed || err ? 1 : 0;
}
