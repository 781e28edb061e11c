/*
 * test_topk.c - top-k selection equals a full sort by (distance, id).
 *
 * Random data with many ties (distances drawn from a small set of values),
 * k = 1..1000 and k > n, pushes in random order; merge of split heaps
 * equals one heap; NaN never kept; empty slots padded.
 */
#include <CUnit/Basic.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "quiver/alloc.h"
#include "quiver/topk.h"

struct pair { float d; uint64_t id; };

static int cmp_pair(const void *a, const void *b)
{
    const struct pair *x = a, *y = b;
    if (x->d != y->d)
        return x->d < y->d ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static uint64_t rng = 88172645463325252ULL;
static uint64_t next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* n random pairs with ties: distances from `levels` distinct values; ids a
 * random permutation of 0..n-1. */
static struct pair *make_pairs(size_t n, unsigned levels)
{
    struct pair *p = qv_malloc(n * sizeof *p, QV_MEM_TEST);
    for (size_t i = 0; i < n; i++) {
        p[i].d = (float)(next_rand() % levels) * 0.5f;
        p[i].id = i;
    }
    for (size_t i = n; i > 1; i--) {
        size_t j = next_rand() % i;
        uint64_t t = p[i - 1].id;
        p[i - 1].id = p[j].id;
        p[j].id = t;
    }
    return p;
}

static void check_topk(size_t n, uint32_t k, unsigned levels)
{
    struct pair *p = make_pairs(n, levels);
    float *dist = qv_malloc(k * sizeof(float), QV_MEM_TEST);
    uint64_t *ids = qv_malloc(k * sizeof(uint64_t), QV_MEM_TEST);
    struct qv_topk t;
    qv_topk_init(&t, k, dist, ids);
    for (size_t i = 0; i < n; i++)
        qv_topk_push(&t, p[i].d, p[i].id);
    uint32_t got = qv_topk_sort(&t);
    qsort(p, n, sizeof *p, cmp_pair);
    uint32_t want = n < k ? (uint32_t)n : k;
    CU_ASSERT_EQUAL_FATAL(got, want);
    int ok = 1;
    for (uint32_t i = 0; i < want; i++)
        if (dist[i] != p[i].d || ids[i] != p[i].id)
            ok = 0;
    for (uint32_t i = want; i < k; i++)
        if (!isinf(dist[i]) || ids[i] != QV_ID_NONE)
            ok = 0;
    CU_ASSERT_TRUE(ok);
    qv_free(ids);
    qv_free(dist);
    qv_free(p);
}

static void test_sort_equivalence(void)
{
    for (uint32_t k = 1; k <= 1000; k++)
        check_topk(1500, k, 50);
    check_topk(2000, 1000, 50);
    check_topk(2000, 1000, 3);      /* almost everything ties */
    check_topk(5000, 10, 1);        /* everything ties: smallest ids win */
}

static void test_k_larger_than_n(void)
{
    check_topk(0, 5, 10);
    check_topk(1, 5, 10);
    check_topk(7, 10, 3);
    check_topk(999, 1000, 20);
}

static void test_merge(void)
{
    const size_t n = 3000;
    const uint32_t k = 100;
    struct pair *p = make_pairs(n, 40);
    float d[4][100];
    uint64_t id[4][100];
    struct qv_topk parts[3], all;
    for (int i = 0; i < 3; i++)
        qv_topk_init(&parts[i], k, d[i], id[i]);
    qv_topk_init(&all, k, d[3], id[3]);
    for (size_t i = 0; i < n; i++) {
        qv_topk_push(&parts[i % 3], p[i].d, p[i].id);
        qv_topk_push(&all, p[i].d, p[i].id);
    }
    qv_topk_merge(&parts[0], &parts[1]);
    qv_topk_merge(&parts[0], &parts[2]);
    qv_topk_sort(&parts[0]);
    qv_topk_sort(&all);
    CU_ASSERT_EQUAL(memcmp(d[0], d[3], sizeof d[0]), 0);
    CU_ASSERT_EQUAL(memcmp(id[0], id[3], sizeof id[0]), 0);
    qv_free(p);
}

static void test_nan_and_worst(void)
{
    float d[3];
    uint64_t id[3];
    struct qv_topk t;
    qv_topk_init(&t, 3, d, id);
    CU_ASSERT_TRUE(isinf(t.worst));
    qv_topk_push(&t, NAN, 1);
    CU_ASSERT_EQUAL(t.n, 0);
    qv_topk_push(&t, 5.0f, 10);
    qv_topk_push(&t, 1.0f, 11);
    qv_topk_push(&t, 3.0f, 12);
    CU_ASSERT_EQUAL(t.n, 3);
    CU_ASSERT_EQUAL(t.worst, 5.0f);
    CU_ASSERT_EQUAL(t.worst_id, 10);
    qv_topk_push(&t, 5.0f, 9);      /* tie on distance, smaller id wins */
    CU_ASSERT_EQUAL(t.worst_id, 9);
    qv_topk_push(&t, 5.0f, 20);     /* tie, larger id: rejected */
    CU_ASSERT_EQUAL(t.worst_id, 9);
    qv_topk_push(&t, 2.0f, 30);
    CU_ASSERT_EQUAL(t.worst, 3.0f);
    qv_topk_sort(&t);
    CU_ASSERT_EQUAL(id[0], 11);
    CU_ASSERT_EQUAL(id[1], 30);
    CU_ASSERT_EQUAL(id[2], 12);
}

int main(void)
{
    struct qv_mem_stats before, after;
    qv_mem_stats(QV_MEM_TEST, &before);
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    CU_pSuite s = CU_add_suite("topk", NULL, NULL);
    CU_add_test(s, "top-k equals full sort with ties, k=1..1000", test_sort_equivalence);
    CU_add_test(s, "k larger than n pads with (inf, none)", test_k_larger_than_n);
    CU_add_test(s, "merge of split heaps equals one heap", test_merge);
    CU_add_test(s, "NaN rejected, worst tracks ties by id", test_nan_and_worst);
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
