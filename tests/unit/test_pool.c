/*
 * test_pool.c - the fork-join pool runs every task exactly once, on
 * workers within range, across many back-to-back runs (spinning and
 * sleeping workers alike), and refuses a bad size.
 */
#include <CUnit/Basic.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

#include "quiver/alloc.h"
#include "quiver/errors.h"
#include "quiver/pool.h"

#define NTASKS 997

struct run_state {
    _Atomic int hits[NTASKS];
    _Atomic int bad_worker;
    unsigned nthreads;
};

static void count_task(void *arg, unsigned task, unsigned worker)
{
    struct run_state *s = arg;
    atomic_fetch_add(&s->hits[task], 1);
    if (worker >= s->nthreads)
        atomic_store(&s->bad_worker, 1);
}

static void run_and_check(struct qv_pool *p, unsigned ntasks)
{
    static struct run_state s;
    memset(&s, 0, sizeof s);
    s.nthreads = qv_pool_threads(p);
    qv_pool_run(p, ntasks, count_task, &s);
    int ok = 1;
    for (unsigned t = 0; t < NTASKS; t++)
        if (atomic_load(&s.hits[t]) != (t < ntasks ? 1 : 0))
            ok = 0;
    CU_ASSERT_TRUE(ok);
    CU_ASSERT_EQUAL(atomic_load(&s.bad_worker), 0);
}

static void test_every_task_once(void)
{
    for (unsigned n = 1; n <= 3; n++) {
        struct qv_pool *p = qv_pool_create(n, n != 2);
        CU_ASSERT_PTR_NOT_NULL_FATAL(p);
        CU_ASSERT_EQUAL(qv_pool_threads(p), n);
        run_and_check(p, 0);
        run_and_check(p, 1);
        run_and_check(p, NTASKS);
        for (int r = 0; r < 2000; r++)          /* back to back: spinning */
            run_and_check(p, (unsigned)(r % NTASKS) + 1);
        usleep(20000);                          /* workers fall asleep */
        run_and_check(p, 5);
        qv_pool_free(p);
    }
    run_and_check(NULL, 17);                    /* no pool: the caller alone */
}

static void test_default_and_bad_size(void)
{
    struct qv_pool *p = qv_pool_create(0, false);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    CU_ASSERT_TRUE(qv_pool_threads(p) >= 1);
    qv_pool_free(p);
    qv_pool_free(NULL);
    CU_ASSERT_PTR_NULL(qv_pool_create(5000, false));
    CU_ASSERT_EQUAL(qv_errno, QV_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "5000"));
}

static void test_alloc_failure(void)
{
    struct qv_mem_stats s0, s1;
    qv_mem_stats(QV_MEM_POOL, &s0);
    for (long step = 0; step < 3; step++) {
        qv_alloc_fail_after(step);
        struct qv_pool *p = qv_pool_create(2, false);
        qv_alloc_fail_after(-1);
        if (p) {
            qv_pool_free(p);
            break;
        }
        CU_ASSERT_EQUAL(qv_errno, QV_ENOMEM);
    }
    qv_mem_stats(QV_MEM_POOL, &s1);
    CU_ASSERT_EQUAL(s1.live_blocks, s0.live_blocks);
}

int main(void)
{
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    CU_pSuite s = CU_add_suite("pool", NULL, NULL);
    CU_add_test(s, "every task runs exactly once, workers in range", test_every_task_once);
    CU_add_test(s, "default size; too many threads refused", test_default_and_bad_size);
    CU_add_test(s, "allocation failures: ENOMEM, no leak", test_alloc_failure);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failed = CU_get_number_of_failures();
    int err = CU_get_error();
    CU_cleanup_registry();
    return failed || err ? 1 : 0;
}
