/*
 * test_scan.c - the fused batched scan of every SIMD level equals the
 * pairwise reference kernels, and a batch equals its queries run alone.
 *
 * For dims {1,3,7,...,784}, several batch sizes and vector counts that
 * straddle the 16-wide groups and the 12/6-query register tiles, L2 and IP,
 * with and without an eligibility mask: the k results of each query are
 * the reference's k nearest up to float rounding (a returned id's exact
 * distance is within tolerance of the reference's k-th), and distances
 * agree within a tolerance scaled with dim.
 */
#include <CUnit/Basic.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "quiver/alloc.h"
#include "quiver/dist.h"
#include "quiver/topk.h"

static const size_t dims[] = { 1, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 64, 127, 128, 129, 784 };

static uint64_t rng = 0x9E3779B97F4A7C15ULL;
static float frand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)(rng >> 40) / (float)(1u << 24) * 2.0f - 1.0f;
}

struct ref_pair { double d; uint64_t id; };
static int cmp_ref(const void *a, const void *b)
{
    const struct ref_pair *x = a, *y = b;
    if (x->d != y->d)
        return x->d < y->d ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static double exact(const float *q, const float *x, size_t dim, enum qv_metric m)
{
    double s = 0;
    for (size_t d = 0; d < dim; d++)
        s += m == QV_METRIC_L2 ? ((double)q[d] - x[d]) * ((double)q[d] - x[d])
                               : -(double)q[d] * x[d];
    return s;
}

static unsigned failures;

static void check_case(const struct qv_dist_ops *ops, size_t dim, size_t nq, size_t n,
                       uint32_t k, enum qv_metric metric, int use_mask)
{
    size_t groups = (n + QV_BLOCK - 1) / QV_BLOCK;
    float *x = qv_malloc(n * dim * sizeof(float), QV_MEM_TEST);
    float *q = qv_malloc(nq * dim * sizeof(float), QV_MEM_TEST);
    float *blocks = qv_calloc(groups * QV_BLOCK * dim, sizeof(float), QV_MEM_TEST);
    float *norms = qv_calloc(groups * QV_BLOCK, sizeof(float), QV_MEM_TEST);
    float *qn = qv_malloc(nq * sizeof(float), QV_MEM_TEST);
    uint64_t *ids = qv_malloc(n * sizeof(uint64_t), QV_MEM_TEST);
    uint64_t *mask = qv_calloc((n + 63) / 64 + 1, sizeof(uint64_t), QV_MEM_TEST);
    struct qv_topk *h = qv_malloc(nq * sizeof *h, QV_MEM_TEST);
    struct qv_topk *h1 = qv_malloc(nq * sizeof *h1, QV_MEM_TEST);
    float *hd = qv_malloc(nq * k * sizeof(float) * 2, QV_MEM_TEST);
    uint64_t *hi = qv_malloc(nq * k * sizeof(uint64_t) * 2, QV_MEM_TEST);
    struct ref_pair *ref = qv_malloc((n + 1) * sizeof *ref, QV_MEM_TEST);

    for (size_t i = 0; i < n * dim; i++)
        x[i] = frand();
    for (size_t i = 0; i < nq * dim; i++)
        q[i] = frand();
    qv_block_pack(blocks, 0, x, n, dim);
    for (size_t i = 0; i < n; i++) {
        double s = 0;
        for (size_t d = 0; d < dim; d++)
            s += (double)x[i * dim + d] * x[i * dim + d];
        norms[i] = (float)s;
        ids[i] = 1000 + (i * 7919) % n;        /* ids unrelated to rows */
        if (!use_mask || (i * 2654435761u) % 3 != 0)
            mask[i / 64] |= 1ULL << (i % 64);
    }
    for (size_t i = 0; i < nq; i++) {
        double s = 0;
        for (size_t d = 0; d < dim; d++)
            s += (double)q[i * dim + d] * q[i * dim + d];
        qn[i] = (float)s;
    }
    for (size_t i = 0; i < nq; i++) {
        qv_topk_init(&h[i], k, hd + i * k, hi + i * k);
        qv_topk_init(&h1[i], k, hd + (nq + i) * k, hi + (nq + i) * k);
    }
    struct qv_scan_args a = {
        .queries = q, .nq = nq, .dim = dim, .qnorms = qn, .blocks = blocks,
        .norms = norms, .ids = ids, .nvec = n, .mask = use_mask ? mask : NULL,
        .metric = metric, .heaps = h,
    };
    ops->scan_f32(&a);
    /* each query alone must give the identical answer */
    for (size_t i = 0; i < nq; i++) {
        struct qv_scan_args b = a;
        b.queries = q + i * dim;
        b.nq = 1;
        b.qnorms = qn + i;
        b.heaps = &h1[i];
        ops->scan_f32(&b);
    }

    double scale = metric == QV_METRIC_L2 ? 4.0 * dim : (double)dim;
    double tol = 1e-5 * scale + 1e-5;
    for (size_t i = 0; i < nq; i++) {
        size_t m = 0;
        for (size_t v = 0; v < n; v++)
            if (!use_mask || ((mask[v / 64] >> (v % 64)) & 1)) {
                ref[m].d = exact(q + i * dim, x + v * dim, dim, metric);
                ref[m].id = ids[v];
                m++;
            }
        qsort(ref, m, sizeof *ref, cmp_ref);
        uint32_t got = qv_topk_sort(&h[i]);
        qv_topk_sort(&h1[i]);
        uint32_t want = m < k ? (uint32_t)m : k;
        int ok = got == want;
        double kth = want ? ref[want - 1].d : 0;
        for (uint32_t j = 0; ok && j < want; j++) {
            if (fabs(h[i].dist[j] - ref[j].d) > tol)
                ok = 0;
            if (h[i].ids[j] != ref[j].id) {
                /* allowed only for a near tie: its exact distance must be
                 * within tolerance of the reference's k-th */
                double dj = 0;
                int found = 0;
                for (size_t r = 0; r < m; r++)
                    if (ref[r].id == h[i].ids[j]) {
                        dj = ref[r].d;
                        found = 1;
                    }
                if (!found || dj > kth + tol)
                    ok = 0;
            }
        }
        for (uint32_t j = want; ok && j < k; j++)
            if (h[i].ids[j] != QV_ID_NONE || !isinf(h[i].dist[j]))
                ok = 0;
        if (memcmp(h[i].ids, h1[i].ids, k * sizeof(uint64_t)) != 0 ||
            memcmp(h[i].dist, h1[i].dist, k * sizeof(float)) != 0)
            ok = 0;
        if (!ok && failures++ < 5)
            fprintf(stderr, "\nscan mismatch: level %s dim %zu nq %zu n %zu k %u %s mask %d q %zu\n",
                    qv_simd_name(ops->level), dim, nq, n, k, qv_metric_name(metric),
                    use_mask, i);
        CU_ASSERT_TRUE(ok);
    }
    qv_free(ref);
    qv_free(hi);
    qv_free(hd);
    qv_free(h1);
    qv_free(h);
    qv_free(mask);
    qv_free(ids);
    qv_free(qn);
    qv_free(norms);
    qv_free(blocks);
    qv_free(q);
    qv_free(x);
}

static void run_level(enum qv_simd level)
{
    const struct qv_dist_ops *ops = qv_kernels_level(level);
    if (!ops) {
        fprintf(stderr, " (level %s not supported by this CPU: skipped) ", qv_simd_name(level));
        return;
    }
    static const size_t nqs[] = { 1, 5, 12, 13, 30 };
    static const size_t ns[] = { 1, 15, 16, 17, 33, 100, 300 };
    for (size_t di = 0; di < sizeof dims / sizeof dims[0]; di++)
        for (size_t a = 0; a < sizeof nqs / sizeof nqs[0]; a++)
            for (size_t b = 0; b < sizeof ns / sizeof ns[0]; b++) {
                if (dims[di] == 784 && (nqs[a] > 13 || ns[b] > 100))
                    continue;
                uint32_t k = (uint32_t)((a + b) % 3 == 0 ? 1 : (a + b) % 3 == 1 ? 10 : 50);
                check_case(ops, dims[di], nqs[a], ns[b], k,
                           (b % 2) ? QV_METRIC_IP : QV_METRIC_L2, (a + b) % 2);
                check_case(ops, dims[di], nqs[a], ns[b], k,
                           (b % 2) ? QV_METRIC_L2 : QV_METRIC_IP, (a + b + 1) % 2);
            }
    /* a chunked sweep: more groups than fit the L2 cache tile */
    check_case(ops, 128, 40, 5000, 10, QV_METRIC_L2, 0);
    check_case(ops, 128, 40, 5000, 100, QV_METRIC_IP, 1);
    /* thin tiles walk several streams at once, with a remainder */
    check_case(ops, 128, 1, 5000, 10, QV_METRIC_L2, 1);
    check_case(ops, 64, 2, 1001, 10, QV_METRIC_IP, 0);
    check_case(ops, 17, 1, 16 * 37 + 5, 3, QV_METRIC_L2, 0);
}

static void test_ref(void) { run_level(QV_SIMD_REF); }
static void test_avx2(void) { run_level(QV_SIMD_AVX2); }
static void test_avx512(void) { run_level(QV_SIMD_AVX512); }

static void test_pack_roundtrip(void)
{
    const size_t n = 37, dim = 19;
    float x[37 * 19], back[19];
    float *blocks = qv_calloc(3 * QV_BLOCK * dim, sizeof(float), QV_MEM_TEST);
    for (size_t i = 0; i < n * dim; i++)
        x[i] = (float)i;
    qv_block_pack(blocks, 0, x, 20, dim);
    qv_block_pack(blocks, 20, x + 20 * dim, n - 20, dim);
    int ok = 1;
    for (size_t i = 0; i < n; i++) {
        qv_block_unpack_row(blocks, i, dim, back);
        if (memcmp(back, x + i * dim, sizeof back) != 0)
            ok = 0;
    }
    CU_ASSERT_TRUE(ok);
    /* unused lanes of the last group stay zero */
    for (size_t d = 0; d < dim; d++)
        for (size_t l = n % QV_BLOCK; l < QV_BLOCK; l++)
            if (blocks[2 * dim * QV_BLOCK + d * QV_BLOCK + l] != 0.0f)
                ok = 0;
    CU_ASSERT_TRUE(ok);
    qv_free(blocks);
}

int main(void)
{
    struct qv_mem_stats before, after;
    qv_mem_stats(QV_MEM_TEST, &before);
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    CU_pSuite s = CU_add_suite("scan", NULL, NULL);
    CU_add_test(s, "blocked pack/unpack round trip", test_pack_roundtrip);
    CU_add_test(s, "ref scan equals exact top-k", test_ref);
    CU_add_test(s, "avx2 scan equals exact top-k", test_avx2);
    CU_add_test(s, "avx512 scan equals exact top-k", test_avx512);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failed = CU_get_number_of_failures();
    int err = CU_get_error();
    CU_cleanup_registry();
    qv_mem_stats(QV_MEM_TEST, &after);
    if (after.live_blocks != before.live_blocks) {
        fprintf(stderr, "leak: %lld test blocks still live\n",
                (long long)(after.live_blocks - before.live_blocks));
        return 1;
    }
    return failed || err ? 1 : 0;
}
