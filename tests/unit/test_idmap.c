/*
 * test_idmap.c - the id -> row hash map agrees with a plain array model
 * through long random sequences of puts and deletes (backward-shift
 * deletion keeps every probe run intact), and fails cleanly on ENOMEM.
 */
#include <CUnit/Basic.h>
#include <stdlib.h>

#include "../../host/index/idmap.h"
#include "quiver/alloc.h"
#include "quiver/errors.h"
#include "quiver/topk.h"

#define KEYS 3000

static uint64_t rng = 0xdeadbeefcafef00dULL;
static uint64_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void test_random_model(void)
{
    static int64_t model[KEYS];
    static uint64_t keys[KEYS];
    struct qv_idmap m;
    qv__idmap_init(&m);
    for (int i = 0; i < KEYS; i++) {
        model[i] = -1;
        /* clustered and spread keys, so probe runs wrap and collide */
        keys[i] = i % 3 ? (uint64_t)i : next();
    }
    size_t count = 0;
    int ok = 1;
    for (int step = 0; step < 200000; step++) {
        int i = (int)(next() % KEYS);
        if (next() % 3) {
            uint64_t v = next() % 1000000;
            CU_ASSERT_EQUAL_FATAL(qv__idmap_put(&m, keys[i], v), 0);
            if (model[i] < 0)
                count++;
            model[i] = (int64_t)v;
        } else {
            int had = model[i] >= 0;
            if (qv__idmap_del(&m, keys[i]) != had)
                ok = 0;
            if (had)
                count--;
            model[i] = -1;
        }
        if (step % 1000 == 0)
            for (int j = 0; j < KEYS; j++)
                if (qv__idmap_get(&m, keys[j]) != model[j])
                    ok = 0;
    }
    CU_ASSERT_TRUE(ok);
    CU_ASSERT_EQUAL(m.count, count);
    CU_ASSERT_EQUAL(qv__idmap_get(&m, QV_ID_NONE), -1);
    CU_ASSERT_EQUAL(qv__idmap_del(&m, QV_ID_NONE), 0);
    qv__idmap_fini(&m);
}

static void test_enomem(void)
{
    struct qv_idmap m;
    qv__idmap_init(&m);
    CU_ASSERT_EQUAL(qv__idmap_put(&m, 1, 10), 0);
    qv_alloc_fail_after(0);
    CU_ASSERT_EQUAL(qv__idmap_reserve(&m, 1000), QV_ENOMEM);
    qv_alloc_fail_after(-1);
    CU_ASSERT_EQUAL(qv__idmap_get(&m, 1), 10);     /* unchanged */
    qv__idmap_fini(&m);
    struct qv_mem_stats st;
    qv_mem_stats(QV_MEM_INDEX, &st);
    CU_ASSERT_EQUAL(st.live_blocks, 0);
}

int main(void)
{
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    CU_pSuite s = CU_add_suite("idmap", NULL, NULL);
    CU_add_test(s, "agrees with a model over random puts and deletes", test_random_model);
    CU_add_test(s, "ENOMEM leaves the map unchanged", test_enomem);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failed = CU_get_number_of_failures();
    int err = CU_get_error();
    CU_cleanup_registry();
    return failed || err ? 1 : 0;
}
