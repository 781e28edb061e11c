/*
 * test_cache.c - the query caches: exact keys (any differing field or one
 * flipped query bit misses), LRU and LFU eviction orders with aging and
 * ties, TTL on an injected clock, epoch invalidation, byte capacity, the
 * semantic threshold at its exact boundary, shared bitmaps by refcount,
 * exact counters, two threads at once, allocation failures, bad options
 * and the [cache] configuration.
 */
#include <CUnit/Basic.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "quiver/alloc.h"
#include "quiver/cache.h"
#include "quiver/config.h"
#include "quiver/errors.h"
#include "quiver/timeutil.h"
#include "quiver/topk.h"

#define DIM 8
#define K 4

/* host/cache/cache_int.h: a constant hook makes every key hash collide. */
extern uint64_t (*qv__cache_hash_hook)(uint64_t h);
static uint64_t same_hash(uint64_t h)
{
    (void)h;
    return 0x1234;
}

static int64_t fake_ns;
static int64_t fake_clock(void)
{
    return fake_ns;
}

static struct qv_cache_opts small_opts(enum qv_cache_policy policy, uint64_t entries)
{
    struct qv_cache_opts o;
    qv_cache_opts_default(&o);
    o.policy = policy;
    o.entries = entries;
    o.shards = 1;
    o.clock = fake_clock;
    return o;
}

/* Query number i: distinct and deterministic. */
static void make_query(float *q, uint32_t dim, int i)
{
    for (uint32_t d = 0; d < dim; d++)
        q[d] = (float)i + 0.125f * (float)d;
}

static struct qv_cache_key make_key(uint64_t coll, uint64_t epoch, const float *q, uint32_t k)
{
    struct qv_cache_key key = { .collection = coll, .epoch = epoch, .query = q, .dim = DIM,
                                .k = k, .filter = NULL, .params_hash = 42 };
    return key;
}

static void make_results(float *dist, uint64_t *ids, uint32_t k, uint64_t tag)
{
    for (uint32_t j = 0; j < k; j++) {
        dist[j] = (float)j * 0.5f + (float)tag;
        ids[j] = tag * 100 + j;
    }
}

/* Insert query i of collection 1 with results tagged i. */
static int put(struct qv_result_cache *c, int i)
{
    float q[DIM], dist[K];
    uint64_t ids[K];
    make_query(q, DIM, i);
    make_results(dist, ids, K, (uint64_t)i);
    struct qv_cache_key key = make_key(1, 1, q, K);
    return qv_result_cache_insert(c, &key, dist, ids);
}

/* 1 when query i hits with the results tagged i, 0 on a miss, -1 wrong. */
static int get(struct qv_result_cache *c, int i)
{
    float q[DIM], dist[K], want_d[K];
    uint64_t ids[K], want_i[K];
    make_query(q, DIM, i);
    make_results(want_d, want_i, K, (uint64_t)i);
    struct qv_cache_key key = make_key(1, 1, q, K);
    int rc = qv_result_cache_lookup(c, &key, dist, ids);
    if (rc == 1 && (memcmp(dist, want_d, sizeof dist) || memcmp(ids, want_i, sizeof ids)))
        return -1;
    return rc;
}

static void check_invariant(const struct qv_cache_stats *s)
{
    CU_ASSERT_EQUAL(s->entries, s->inserts - s->evictions - s->expirations - s->invalidations);
}

static void test_exact_keys(void)
{
    struct qv_cache_opts o = small_opts(QV_CACHE_LRU, 100);
    struct qv_result_cache *c = qv_result_cache_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    float q[DIM], dist[K + 1], out_d[K + 1];
    uint64_t ids[K + 1], out_i[K + 1];
    make_query(q, DIM, 7);
    make_results(dist, ids, K, 7);
    struct qv_cache_key key = make_key(1, 3, q, K);
    CU_ASSERT_EQUAL(qv_result_cache_lookup(c, &key, out_d, out_i), 0);
    CU_ASSERT_EQUAL(qv_result_cache_insert(c, &key, dist, ids), 0);
    memset(out_i, 0, sizeof out_i);
    CU_ASSERT_EQUAL(qv_result_cache_lookup(c, &key, out_d, out_i), 1);
    CU_ASSERT_EQUAL(memcmp(out_d, dist, K * sizeof(float)), 0);
    CU_ASSERT_EQUAL(memcmp(out_i, ids, K * sizeof(uint64_t)), 0);

    struct qv_cache_key v;
    v = key; v.k = K + 1;           CU_ASSERT_EQUAL(qv_result_cache_lookup(c, &v, out_d, out_i), 0);
    v = key; v.filter = "a = 1";    CU_ASSERT_EQUAL(qv_result_cache_lookup(c, &v, out_d, out_i), 0);
    v = key; v.filter = "";         CU_ASSERT_EQUAL(qv_result_cache_lookup(c, &v, out_d, out_i), 0);
    v = key; v.params_hash++;       CU_ASSERT_EQUAL(qv_result_cache_lookup(c, &v, out_d, out_i), 0);
    v = key; v.collection++;        CU_ASSERT_EQUAL(qv_result_cache_lookup(c, &v, out_d, out_i), 0);
    v = key; v.epoch++;             CU_ASSERT_EQUAL(qv_result_cache_lookup(c, &v, out_d, out_i), 0);
    for (int bit = 0; bit < 32; bit += 31) {        /* lowest and sign bit */
        float q2[DIM];
        uint32_t w;
        memcpy(q2, q, sizeof q2);
        memcpy(&w, &q2[5], 4);
        w ^= 1u << bit;
        memcpy(&q2[5], &w, 4);
        v = key; v.query = q2;
        CU_ASSERT_EQUAL(qv_result_cache_lookup(c, &v, out_d, out_i), 0);
    }
    /* filter text is compared exactly; NULL and "" differ */
    v = key; v.filter = "a = 1";
    CU_ASSERT_EQUAL(qv_result_cache_insert(c, &v, dist, ids), 0);
    CU_ASSERT_EQUAL(qv_result_cache_lookup(c, &v, out_d, out_i), 1);
    v.filter = "a = 2";
    CU_ASSERT_EQUAL(qv_result_cache_lookup(c, &v, out_d, out_i), 0);
    /* an update replaces the results */
    dist[0] = -1.0f; ids[0] = 999;
    CU_ASSERT_EQUAL(qv_result_cache_insert(c, &key, dist, ids), 0);
    CU_ASSERT_EQUAL(qv_result_cache_lookup(c, &key, out_d, out_i), 1);
    CU_ASSERT_EQUAL(out_i[0], 999);
    CU_ASSERT_EQUAL(out_d[0], -1.0f);

    struct qv_cache_stats s;
    qv_result_cache_stats(c, &s);
    CU_ASSERT_EQUAL(s.hits, 3);
    CU_ASSERT_EQUAL(s.misses, 10);
    CU_ASSERT_EQUAL(s.inserts, 2);
    CU_ASSERT_EQUAL(s.updates, 1);
    CU_ASSERT_EQUAL(s.entries, 2);
    CU_ASSERT_EQUAL(s.evictions, 0);
    check_invariant(&s);

    /* bad keys */
    v = key; v.dim = 0;
    CU_ASSERT_EQUAL(qv_result_cache_lookup(c, &v, out_d, out_i), QV_EINVAL);
    v = key; v.k = 0;
    CU_ASSERT_EQUAL(qv_result_cache_insert(c, &v, dist, ids), QV_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "k = 0"));
    v = key; v.query = NULL;
    CU_ASSERT_EQUAL(qv_result_cache_lookup(c, &v, out_d, out_i), QV_EINVAL);
    CU_ASSERT_EQUAL(qv_result_cache_lookup(c, NULL, out_d, out_i), QV_EINVAL);
    CU_ASSERT_EQUAL(qv_result_cache_lookup(c, &key, NULL, out_i), QV_EINVAL);
    qv_result_cache_free(c);
    qv_result_cache_free(NULL);
}

/* The same checks with every key in one bucket: only full compares. */
static void test_exact_keys_colliding(void)
{
    qv__cache_hash_hook = same_hash;
    test_exact_keys();
    struct qv_cache_opts o = small_opts(QV_CACHE_LRU, 10);
    struct qv_bitmap_cache *bc = qv_bitmap_cache_create(&o);
    struct qv_bitmap *b = qv_bitmap_create(64);
    CU_ASSERT_PTR_NOT_NULL_FATAL(bc);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_EQUAL(qv_bitmap_cache_insert(bc, 1, 1, "a = 1", b), 0);
    CU_ASSERT_PTR_NULL(qv_bitmap_cache_lookup(bc, 1, 1, "a = 2"));
    CU_ASSERT_PTR_NULL(qv_bitmap_cache_lookup(bc, 2, 1, "a = 1"));
    CU_ASSERT_PTR_NULL(qv_bitmap_cache_lookup(bc, 1, 2, "a = 1"));
    CU_ASSERT_PTR_NULL(qv_bitmap_cache_lookup(bc, 1, 1, "a = 1 "  "x"));
    CU_ASSERT_PTR_NULL(qv_bitmap_cache_lookup(bc, 1, 1, "a ="));
    struct qv_bitmap *h = qv_bitmap_cache_lookup(bc, 1, 1, "a  = 1");
    CU_ASSERT_PTR_EQUAL(h, b);
    qv_bitmap_unref(h);
    qv_bitmap_unref(b);
    qv_bitmap_cache_free(bc);
    qv__cache_hash_hook = NULL;
}

static void test_lru_order(void)
{
    struct qv_cache_opts o = small_opts(QV_CACHE_LRU, 3);
    struct qv_result_cache *c = qv_result_cache_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    for (int i = 0; i < 3; i++)
        CU_ASSERT_EQUAL(put(c, i), 0);
    CU_ASSERT_EQUAL(get(c, 0), 1);          /* recency now: 0, 2, 1 */
    CU_ASSERT_EQUAL(put(c, 3), 0);          /* evicts 1 */
    CU_ASSERT_EQUAL(get(c, 1), 0);
    CU_ASSERT_EQUAL(get(c, 0), 1);          /* recency: 0, 3, 2 */
    CU_ASSERT_EQUAL(get(c, 3), 1);          /* recency: 3, 0, 2 */
    CU_ASSERT_EQUAL(put(c, 4), 0);          /* evicts 2 */
    CU_ASSERT_EQUAL(get(c, 2), 0);
    CU_ASSERT_EQUAL(get(c, 0), 1);
    CU_ASSERT_EQUAL(get(c, 3), 1);
    CU_ASSERT_EQUAL(get(c, 4), 1);
    struct qv_cache_stats s;
    qv_result_cache_stats(c, &s);
    CU_ASSERT_EQUAL(s.evictions, 2);
    CU_ASSERT_EQUAL(s.entries, 3);
    CU_ASSERT_EQUAL(s.hits, 6);
    CU_ASSERT_EQUAL(s.misses, 2);
    check_invariant(&s);
    qv_result_cache_free(c);
}

static void test_lfu_order(void)
{
    struct qv_cache_opts o = small_opts(QV_CACHE_LFU, 3);
    struct qv_result_cache *c = qv_result_cache_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    for (int i = 0; i < 3; i++)                 /* A=0, B=1, C=2 */
        CU_ASSERT_EQUAL(put(c, i), 0);
    for (int r = 0; r < 3; r++)
        CU_ASSERT_EQUAL(get(c, 0), 1);          /* A: freq 4 */
    CU_ASSERT_EQUAL(get(c, 2), 1);              /* C: freq 3, most recent */
    CU_ASSERT_EQUAL(get(c, 2), 1);
    CU_ASSERT_EQUAL(get(c, 1), 1);              /* B: freq 2 */
    CU_ASSERT_EQUAL(put(c, 3), 0);              /* D evicts B (freq 2) */
    CU_ASSERT_EQUAL(get(c, 1), 0);
    CU_ASSERT_EQUAL(put(c, 4), 0);              /* E evicts D (freq 1) */
    CU_ASSERT_EQUAL(get(c, 3), 0);
    CU_ASSERT_EQUAL(get(c, 4), 1);              /* E: freq 3, ties with C; */
    CU_ASSERT_EQUAL(get(c, 4), 1);              /* C is the older of the two */
    CU_ASSERT_EQUAL(put(c, 5), 0);              /* F evicts C (tie by age) */
    CU_ASSERT_EQUAL(get(c, 2), 0);
    CU_ASSERT_EQUAL(get(c, 0), 1);
    CU_ASSERT_EQUAL(get(c, 4), 1);
    CU_ASSERT_EQUAL(get(c, 5), 1);
    struct qv_cache_stats s;
    qv_result_cache_stats(c, &s);
    CU_ASSERT_EQUAL(s.evictions, 3);
    check_invariant(&s);
    qv_result_cache_free(c);

    /* Aging: 2 entries per shard, so frequencies halve every 16 hits. */
    o = small_opts(QV_CACHE_LFU, 2);
    c = qv_result_cache_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    CU_ASSERT_EQUAL(put(c, 0), 0);              /* A */
    for (int r = 0; r < 16; r++)                /* A: 17, halved to 8 */
        CU_ASSERT_EQUAL(get(c, 0), 1);
    CU_ASSERT_EQUAL(put(c, 1), 0);              /* B */
    for (int r = 0; r < 9; r++)                 /* B: 10 > A: 8 */
        CU_ASSERT_EQUAL(get(c, 1), 1);
    CU_ASSERT_EQUAL(put(c, 2), 0);              /* evicts A; unaged, B */
    CU_ASSERT_EQUAL(get(c, 0), 0);
    CU_ASSERT_EQUAL(get(c, 1), 1);
    CU_ASSERT_EQUAL(get(c, 2), 1);
    qv_result_cache_free(c);

    /* Aging keeps recency order across merged levels: 3 per shard, so 24
     * hits age.  A at 2 and B at 3 both halve to 1; B, used last, stays. */
    o = small_opts(QV_CACHE_LFU, 3);
    c = qv_result_cache_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    for (int i = 0; i < 3; i++)                 /* A=0, B=1, H=2 */
        CU_ASSERT_EQUAL(put(c, i), 0);
    for (int r = 0; r < 21; r++)                /* H: 22 */
        CU_ASSERT_EQUAL(get(c, 2), 1);
    CU_ASSERT_EQUAL(get(c, 0), 1);              /* A: 2 */
    CU_ASSERT_EQUAL(get(c, 1), 1);              /* B: 3 ... */
    CU_ASSERT_EQUAL(get(c, 1), 1);              /* 24th hit: A 1, B 1, H 11 */
    CU_ASSERT_EQUAL(put(c, 3), 0);              /* evicts A, the older */
    CU_ASSERT_EQUAL(get(c, 0), 0);
    CU_ASSERT_EQUAL(get(c, 1), 1);
    CU_ASSERT_EQUAL(get(c, 2), 1);
    qv_result_cache_free(c);
}

static void test_ttl(void)
{
    for (int p = 0; p < 2; p++) {
        struct qv_cache_opts o = small_opts(p ? QV_CACHE_LFU : QV_CACHE_LRU, 10);
        o.ttl_ms = 100;
        struct qv_result_cache *c = qv_result_cache_create(&o);
        CU_ASSERT_PTR_NOT_NULL_FATAL(c);
        fake_ns = 1000000000;
        CU_ASSERT_EQUAL(put(c, 0), 0);
        CU_ASSERT_EQUAL(put(c, 1), 0);
        fake_ns += 60 * 1000000;
        CU_ASSERT_EQUAL(put(c, 1), 0);                  /* update: reborn */
        fake_ns += 40 * 1000000 - 1;                    /* 0 is 100 ms - 1 ns old */
        CU_ASSERT_EQUAL(get(c, 0), 1);
        fake_ns += 1;                                   /* exactly 100 ms */
        CU_ASSERT_EQUAL(get(c, 0), 0);
        CU_ASSERT_EQUAL(get(c, 1), 1);                  /* 40 ms old */
        fake_ns += 60 * 1000000;
        CU_ASSERT_EQUAL(get(c, 1), 0);
        struct qv_cache_stats s;
        qv_result_cache_stats(c, &s);
        CU_ASSERT_EQUAL(s.expirations, 2);
        CU_ASSERT_EQUAL(s.entries, 0);
        CU_ASSERT_EQUAL(s.bytes, 0);
        CU_ASSERT_EQUAL(s.misses, 2);
        check_invariant(&s);
        qv_result_cache_free(c);
    }
}

static void test_invalidate(void)
{
    struct qv_cache_opts o = small_opts(QV_CACHE_LRU, 100);
    o.shards = 4;
    struct qv_result_cache *c = qv_result_cache_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    float q[5][DIM], dist[K], out_d[K];
    uint64_t ids[K], out_i[K];
    make_results(dist, ids, K, 1);
    for (int i = 0; i < 5; i++) {
        make_query(q[i], DIM, i);
        struct qv_cache_key key = make_key(i < 3 ? 1 : 2, 5, q[i], K);
        CU_ASSERT_EQUAL(qv_result_cache_insert(c, &key, dist, ids), 0);
    }
    /* a write bumps collection 1 to epoch 6: its old entries never hit */
    struct qv_cache_key k6 = make_key(1, 6, q[0], K);
    CU_ASSERT_EQUAL(qv_result_cache_lookup(c, &k6, out_d, out_i), 0);
    CU_ASSERT_EQUAL(qv_result_cache_invalidate(c, 1), 3);
    CU_ASSERT_EQUAL(qv_result_cache_invalidate(c, 1), 0);
    for (int i = 0; i < 5; i++) {
        struct qv_cache_key key = make_key(i < 3 ? 1 : 2, 5, q[i], K);
        CU_ASSERT_EQUAL(qv_result_cache_lookup(c, &key, out_d, out_i), i < 3 ? 0 : 1);
    }
    struct qv_cache_stats s;
    qv_result_cache_stats(c, &s);
    CU_ASSERT_EQUAL(s.invalidations, 3);
    CU_ASSERT_EQUAL(s.entries, 2);
    check_invariant(&s);
    qv_result_cache_free(c);
}

static void test_bytes_capacity(void)
{
    enum { BDIM = 64 };
    float q[BDIM], dist[K];
    uint64_t ids[K];
    make_results(dist, ids, K, 3);
    struct qv_cache_opts o = small_opts(QV_CACHE_LRU, 1000);
    struct qv_result_cache *c = qv_result_cache_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    make_query(q, BDIM, 0);
    struct qv_cache_key key = make_key(1, 1, q, K);
    key.dim = BDIM;
    CU_ASSERT_EQUAL(qv_result_cache_insert(c, &key, dist, ids), 0);
    struct qv_cache_stats s;
    qv_result_cache_stats(c, &s);
    uint64_t one = s.bytes;
    CU_ASSERT_TRUE(one >= BDIM * 4 + K * 12);
    qv_result_cache_free(c);

    o.bytes = 3 * one + one / 2;                /* room for 3 entries */
    c = qv_result_cache_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    for (int i = 0; i < 10; i++) {
        make_query(q, BDIM, i);
        CU_ASSERT_EQUAL(qv_result_cache_insert(c, &key, dist, ids), 0);
        qv_result_cache_stats(c, &s);
        CU_ASSERT_TRUE(s.bytes <= o.bytes);
    }
    CU_ASSERT_EQUAL(s.entries, 3);
    CU_ASSERT_EQUAL(s.bytes, 3 * one);
    CU_ASSERT_EQUAL(s.evictions, 7);
    float big[1024] = { 0 };
    key.query = big;
    key.dim = 1024;
    CU_ASSERT_EQUAL(qv_result_cache_insert(c, &key, dist, ids), QV_ENOSPC);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "[cache] bytes"));
    qv_result_cache_free(c);
}

static void test_semantic(void)
{
    struct qv_cache_opts o = small_opts(QV_CACHE_LRU, 10);
    o.semantic_entries = 3;
    struct qv_semantic_cache *sc = qv_semantic_cache_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(sc);
    float q0[DIM] = { 0 }, q2[DIM] = { 0 }, q[DIM] = { 0 }, dist[K], out_d[K];
    uint64_t ids[K], out_i[K];
    int approx = -1;
    make_results(dist, ids, K, 1);
    struct qv_cache_key key = make_key(1, 1, q0, K);
    CU_ASSERT_EQUAL(qv_semantic_cache_insert(sc, &key, QV_METRIC_L2, dist, ids), 0);
    key.query = q;
    /* L2 squared distance exactly 0.25 at q = (0.5, 0, ...) */
    q[0] = 0.5f;
    CU_ASSERT_EQUAL(qv_semantic_cache_lookup(sc, &key, QV_METRIC_L2, 0.25f, out_d, out_i,
                                             &approx), 1);
    CU_ASSERT_EQUAL(approx, 1);
    CU_ASSERT_EQUAL(out_i[0], ids[0]);
    CU_ASSERT_EQUAL(qv_semantic_cache_lookup(sc, &key, QV_METRIC_L2, nextafterf(0.25f, 0),
                                             out_d, out_i, &approx), 0);
    q[0] = 0.5f - 1.0f / 1024;                  /* distance t - eps: hit */
    CU_ASSERT_EQUAL(qv_semantic_cache_lookup(sc, &key, QV_METRIC_L2, 0.25f, out_d, out_i,
                                             &approx), 1);
    q[0] = 0.5f + 1.0f / 1024;                  /* distance t + eps: miss */
    CU_ASSERT_EQUAL(qv_semantic_cache_lookup(sc, &key, QV_METRIC_L2, 0.25f, out_d, out_i,
                                             &approx), 0);
    key.query = q0;                             /* identical: not approximate */
    CU_ASSERT_EQUAL(qv_semantic_cache_lookup(sc, &key, QV_METRIC_L2, 0, out_d, out_i,
                                             &approx), 1);
    CU_ASSERT_EQUAL(approx, 0);
    /* never another collection, epoch, k, params, metric or filter */
    struct qv_cache_key v;
    float big_d[K + 1];
    uint64_t big_i[K + 1];
    v = key; v.collection = 2;
    CU_ASSERT_EQUAL(qv_semantic_cache_lookup(sc, &v, QV_METRIC_L2, 1e9f, big_d, big_i, &approx), 0);
    v = key; v.epoch = 2;
    CU_ASSERT_EQUAL(qv_semantic_cache_lookup(sc, &v, QV_METRIC_L2, 1e9f, big_d, big_i, &approx), 0);
    v = key; v.k = K + 1;
    CU_ASSERT_EQUAL(qv_semantic_cache_lookup(sc, &v, QV_METRIC_L2, 1e9f, big_d, big_i, &approx), 0);
    v = key; v.params_hash = 1;
    CU_ASSERT_EQUAL(qv_semantic_cache_lookup(sc, &v, QV_METRIC_L2, 1e9f, big_d, big_i, &approx), 0);
    v = key; v.filter = "a = 1";
    CU_ASSERT_EQUAL(qv_semantic_cache_lookup(sc, &v, QV_METRIC_L2, 1e9f, big_d, big_i, &approx), 0);
    CU_ASSERT_EQUAL(qv_semantic_cache_lookup(sc, &key, QV_METRIC_IP, 1e9f, big_d, big_i, &approx), 0);
    /* the nearest candidate wins */
    q2[0] = 0.25f;
    make_results(dist, ids, K, 2);
    key.query = q2;
    CU_ASSERT_EQUAL(qv_semantic_cache_insert(sc, &key, QV_METRIC_L2, dist, ids), 0);
    q[0] = 0.375f;
    key.query = q;
    CU_ASSERT_EQUAL(qv_semantic_cache_lookup(sc, &key, QV_METRIC_L2, 1.0f, out_d, out_i,
                                             &approx), 1);
    CU_ASSERT_EQUAL(out_i[0], 200);
    /* cosine: a scaled query is at distance 0 */
    float c1[DIM] = { 1 }, c2[DIM] = { 2 };
    v = key; v.collection = 3; v.query = c1;
    CU_ASSERT_EQUAL(qv_semantic_cache_insert(sc, &v, QV_METRIC_COSINE, dist, ids), 0);
    v.query = c2;
    CU_ASSERT_EQUAL(qv_semantic_cache_lookup(sc, &v, QV_METRIC_COSINE, 1e-6f, out_d, out_i,
                                             &approx), 1);
    CU_ASSERT_EQUAL(approx, 1);
    /* a full ring (3 slots: q0, q2, q3) evicts the least recently used, q0 */
    float q3[DIM] = { 3 }, q4[DIM] = { 4 };
    key.query = q3;
    CU_ASSERT_EQUAL(qv_semantic_cache_insert(sc, &key, QV_METRIC_L2, dist, ids), 0);
    key.query = q4;
    CU_ASSERT_EQUAL(qv_semantic_cache_insert(sc, &key, QV_METRIC_L2, dist, ids), 0);
    key.query = q0;
    CU_ASSERT_EQUAL(qv_semantic_cache_lookup(sc, &key, QV_METRIC_L2, 0, out_d, out_i,
                                             &approx), 0);
    key.query = q2;
    CU_ASSERT_EQUAL(qv_semantic_cache_lookup(sc, &key, QV_METRIC_L2, 0, out_d, out_i,
                                             &approx), 1);
    /* errors */
    CU_ASSERT_EQUAL(qv_semantic_cache_lookup(sc, &key, QV_METRIC_L2, NAN, out_d, out_i,
                                             &approx), QV_EINVAL);
    CU_ASSERT_EQUAL(qv_semantic_cache_insert(sc, &key, (enum qv_metric)7, dist, ids),
                    QV_EINVAL);
    struct qv_cache_stats s;
    qv_semantic_cache_stats(sc, &s);
    CU_ASSERT_EQUAL(s.inserts, 5);
    CU_ASSERT_EQUAL(s.evictions, 1);
    CU_ASSERT_EQUAL(s.hits, 6);
    CU_ASSERT_EQUAL(s.misses, 9);
    CU_ASSERT_EQUAL(qv_semantic_cache_invalidate(sc, 1), 3);
    CU_ASSERT_EQUAL(qv_semantic_cache_lookup(sc, &key, QV_METRIC_L2, 1e9f, out_d, out_i,
                                             &approx), 0);
    qv_semantic_cache_stats(sc, &s);
    CU_ASSERT_EQUAL(s.entries, 1);
    check_invariant(&s);
    qv_semantic_cache_free(sc);

    /* TTL on the injected clock */
    o.ttl_ms = 10;
    sc = qv_semantic_cache_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(sc);
    fake_ns = 5000000000LL;
    CU_ASSERT_EQUAL(qv_semantic_cache_insert(sc, &key, QV_METRIC_L2, dist, ids), 0);
    fake_ns += 10 * 1000000 - 1;
    CU_ASSERT_EQUAL(qv_semantic_cache_lookup(sc, &key, QV_METRIC_L2, 0, out_d, out_i, &approx), 1);
    fake_ns += 1;
    CU_ASSERT_EQUAL(qv_semantic_cache_lookup(sc, &key, QV_METRIC_L2, 0, out_d, out_i, &approx), 0);
    qv_semantic_cache_stats(sc, &s);
    CU_ASSERT_EQUAL(s.expirations, 1);
    CU_ASSERT_EQUAL(s.entries, 0);
    qv_semantic_cache_free(sc);
}

static void test_bitmaps(void)
{
    struct qv_mem_stats m0, m1;
    qv_mem_stats(QV_MEM_CACHE, &m0);
    struct qv_cache_opts o = small_opts(QV_CACHE_LRU, 10);
    o.bitmap_bytes = 1500;                      /* two 4096-row bitmaps fit */
    struct qv_bitmap_cache *bc = qv_bitmap_cache_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(bc);
    struct qv_bitmap *b[3];
    for (int i = 0; i < 3; i++) {
        b[i] = qv_bitmap_create(4096);
        CU_ASSERT_PTR_NOT_NULL_FATAL(b[i]);
        b[i]->words[0] = 1u + (unsigned)i;
        b[i]->nset = 1;
    }
    CU_ASSERT_EQUAL(qv_bitmap_cache_insert(bc, 1, 1, "  a = 1   and\tb = 2 ", b[0]), 0);
    struct qv_bitmap *h = qv_bitmap_cache_lookup(bc, 1, 1, "a = 1 and b = 2");
    CU_ASSERT_PTR_EQUAL(h, b[0]);               /* shared, no copy */
    CU_ASSERT_EQUAL(atomic_load(&b[0]->refs), 3);
    qv_bitmap_unref(h);
    CU_ASSERT_PTR_NULL(qv_bitmap_cache_lookup(bc, 1, 1, "a = 1 and b = 3"));
    CU_ASSERT_PTR_NULL(qv_bitmap_cache_lookup(bc, 1, 2, "a = 1 and b = 2"));
    CU_ASSERT_PTR_NULL(qv_bitmap_cache_lookup(bc, 2, 1, "a = 1 and b = 2"));
    CU_ASSERT_PTR_NULL(qv_bitmap_cache_lookup(bc, 1, 1, "a=1 and b = 2"));
    CU_ASSERT_PTR_NULL(qv_bitmap_cache_lookup(bc, 1, 1, "a = 1 and b = 2 x"));
    /* the same key again keeps the first bitmap */
    CU_ASSERT_EQUAL(qv_bitmap_cache_insert(bc, 1, 1, "a = 1 and b = 2", b[1]), 0);
    CU_ASSERT_EQUAL(atomic_load(&b[1]->refs), 1);
    h = qv_bitmap_cache_lookup(bc, 1, 1, " a = 1 and b = 2\n");
    CU_ASSERT_PTR_EQUAL_FATAL(h, b[0]);
    for (int i = 0; i < 3; i++)                 /* the caches' own refs remain */
        qv_bitmap_unref(b[i]);
    b[1] = qv_bitmap_create(4096);
    b[2] = qv_bitmap_create(4096);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b[1]);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b[2]);
    CU_ASSERT_EQUAL(qv_bitmap_cache_insert(bc, 1, 1, "c = 3", b[1]), 0);
    CU_ASSERT_EQUAL(qv_bitmap_cache_insert(bc, 1, 1, "c = 4", b[2]), 0);   /* evicts b[0] */
    qv_bitmap_unref(b[1]);
    qv_bitmap_unref(b[2]);
    CU_ASSERT_PTR_NULL(qv_bitmap_cache_lookup(bc, 1, 1, "a = 1 and b = 2"));
    CU_ASSERT_EQUAL(atomic_load(&h->refs), 1);  /* our reference keeps it */
    CU_ASSERT_EQUAL(h->words[0], 1);
    qv_bitmap_unref(h);                         /* frees it (ASan: no UAF, no leak) */

    struct qv_bitmap *huge = qv_bitmap_create(1 << 16);
    CU_ASSERT_PTR_NOT_NULL_FATAL(huge);
    CU_ASSERT_EQUAL(qv_bitmap_cache_insert(bc, 1, 1, "x", huge), QV_ENOSPC);
    CU_ASSERT_EQUAL(atomic_load(&huge->refs), 1);
    qv_bitmap_unref(huge);
    CU_ASSERT_PTR_NULL(qv_bitmap_create(0));
    CU_ASSERT_EQUAL(qv_errno, QV_EINVAL);

    struct qv_cache_stats s;
    qv_bitmap_cache_stats(bc, &s);
    CU_ASSERT_EQUAL(s.inserts, 3);
    CU_ASSERT_EQUAL(s.updates, 1);
    CU_ASSERT_EQUAL(s.evictions, 1);
    CU_ASSERT_EQUAL(s.hits, 2);
    CU_ASSERT_EQUAL(s.misses, 6);
    CU_ASSERT_EQUAL(s.entries, 2);
    CU_ASSERT_TRUE(s.bytes <= o.bitmap_bytes);
    CU_ASSERT_EQUAL(qv_bitmap_cache_invalidate(bc, 1), 2);
    qv_bitmap_cache_stats(bc, &s);
    CU_ASSERT_EQUAL(s.entries, 0);
    CU_ASSERT_EQUAL(s.bytes, 0);
    check_invariant(&s);
    qv_bitmap_cache_free(bc);
    qv_mem_stats(QV_MEM_CACHE, &m1);
    CU_ASSERT_EQUAL(m1.live_blocks, m0.live_blocks);
    CU_ASSERT_EQUAL(m1.live_bytes, m0.live_bytes);
}

struct worker {
    struct qv_result_cache *c;
    unsigned seed;
    uint64_t lookups, hits, inserts, wrong;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    uint64_t x = w->seed;
    for (int op = 0; op < 20000; op++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        int i = (int)(x % 2000);
        int rc = get(w->c, i);
        w->lookups++;
        if (rc == 1)
            w->hits++;
        else if (rc < 0)
            w->wrong++;
        else if (put(w->c, i) == 0)
            w->inserts++;
    }
    return NULL;
}

static void test_threads(void)
{
    for (int p = 0; p < 2; p++) {
        struct qv_cache_opts o;
        qv_cache_opts_default(&o);
        o.policy = p ? QV_CACHE_LFU : QV_CACHE_LRU;
        o.entries = 512;
        o.shards = 4;
        struct qv_result_cache *c = qv_result_cache_create(&o);
        CU_ASSERT_PTR_NOT_NULL_FATAL(c);
        struct worker w[2] = { { .c = c, .seed = 12345 }, { .c = c, .seed = 777 } };
        pthread_t t[2];
        int64_t t0 = qv_now_ns();
        for (int i = 0; i < 2; i++)
            CU_ASSERT_EQUAL_FATAL(pthread_create(&t[i], NULL, worker_main, &w[i]), 0);
        for (int i = 0; i < 2; i++)
            pthread_join(t[i], NULL);
        int64_t t1 = qv_now_ns();
        struct qv_cache_stats s;
        qv_result_cache_stats(c, &s);
        CU_ASSERT_EQUAL(w[0].wrong + w[1].wrong, 0);
        CU_ASSERT_EQUAL(s.hits + s.misses, w[0].lookups + w[1].lookups);
        CU_ASSERT_EQUAL(s.hits, w[0].hits + w[1].hits);
        CU_ASSERT_EQUAL(s.inserts + s.updates, w[0].inserts + w[1].inserts);
        CU_ASSERT_TRUE(s.entries <= 512);
        CU_ASSERT_TRUE(s.evictions > 0);
        check_invariant(&s);
        printf("\n    %s, 2 threads: %.0f ns per operation (lookup or insert), %llu hits / "
               "%llu lookups ", p ? "lfu" : "lru",
               (double)(t1 - t0) / (double)(w[0].lookups + w[0].inserts),
               (unsigned long long)s.hits, (unsigned long long)(s.hits + s.misses));
        qv_result_cache_free(c);
    }

    /* single-thread hit latency, dim 128, k 10 */
    struct qv_cache_opts o;
    qv_cache_opts_default(&o);
    struct qv_result_cache *c = qv_result_cache_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    enum { N = 1000, PDIM = 128, PK = 10, REPS = 100 };
    static float q[N][PDIM];
    float dist[PK];
    uint64_t ids[PK];
    make_results(dist, ids, PK, 1);
    for (int i = 0; i < N; i++) {
        make_query(q[i], PDIM, i);
        struct qv_cache_key key = { 1, 1, q[i], PDIM, PK, NULL, 9 };
        CU_ASSERT_EQUAL(qv_result_cache_insert(c, &key, dist, ids), 0);
    }
    int hits = 0;
    int64_t t0 = qv_now_ns();
    for (int r = 0; r < REPS; r++)
        for (int i = 0; i < N; i++) {
            struct qv_cache_key key = { 1, 1, q[i], PDIM, PK, NULL, 9 };
            hits += qv_result_cache_lookup(c, &key, dist, ids);
        }
    int64_t t1 = qv_now_ns();
    CU_ASSERT_EQUAL(hits, N * REPS);
    printf("\n    lookup hit, dim %d, k %d: %.0f ns ", PDIM, PK,
           (double)(t1 - t0) / (N * REPS));
    qv_result_cache_free(c);
}

static void test_alloc_failure(void)
{
    struct qv_mem_stats m0, m1;
    qv_mem_stats(QV_MEM_CACHE, &m0);
    struct qv_cache_opts o = small_opts(QV_CACHE_LFU, 10);
    o.shards = 2;
    for (long step = 0; step < 4; step++) {     /* cache, shards, 2 x buckets */
        qv_alloc_fail_after(step);
        CU_ASSERT_PTR_NULL(qv_result_cache_create(&o));
        CU_ASSERT_EQUAL(qv_errno, QV_ENOMEM);
    }
    qv_alloc_fail_after(-1);
    struct qv_result_cache *c = qv_result_cache_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    CU_ASSERT_EQUAL(put(c, 0), 0);
    qv_alloc_fail_after(0);
    CU_ASSERT_EQUAL(put(c, 1), QV_ENOMEM);
    CU_ASSERT_EQUAL(get(c, 0), 1);              /* still usable */
    CU_ASSERT_EQUAL(get(c, 1), 0);
    CU_ASSERT_EQUAL(put(c, 1), 0);
    CU_ASSERT_EQUAL(get(c, 1), 1);
    struct qv_cache_stats s;
    qv_result_cache_stats(c, &s);
    CU_ASSERT_EQUAL(s.inserts, 2);
    CU_ASSERT_EQUAL(s.entries, 2);
    qv_result_cache_free(c);

    struct qv_semantic_cache *sc = qv_semantic_cache_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(sc);
    float q[DIM] = { 1 }, dist[K], out_d[K];
    uint64_t ids[K], out_i[K];
    int approx;
    make_results(dist, ids, K, 4);
    struct qv_cache_key key = make_key(1, 1, q, K);
    for (long step = 0; step < 2; step++) {     /* slot, ring */
        qv_alloc_fail_after(step);
        CU_ASSERT_EQUAL(qv_semantic_cache_insert(sc, &key, QV_METRIC_L2, dist, ids), QV_ENOMEM);
        CU_ASSERT_EQUAL(qv_semantic_cache_lookup(sc, &key, QV_METRIC_L2, 0, out_d, out_i,
                                                 &approx), 0);
    }
    CU_ASSERT_EQUAL(qv_semantic_cache_insert(sc, &key, QV_METRIC_L2, dist, ids), 0);
    CU_ASSERT_EQUAL(qv_semantic_cache_lookup(sc, &key, QV_METRIC_L2, 0, out_d, out_i, &approx), 1);
    qv_semantic_cache_free(sc);

    struct qv_bitmap_cache *bc = qv_bitmap_cache_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(bc);
    qv_alloc_fail_after(0);
    CU_ASSERT_PTR_NULL(qv_bitmap_create(100));
    CU_ASSERT_EQUAL(qv_errno, QV_ENOMEM);
    struct qv_bitmap *b = qv_bitmap_create(100);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    qv_alloc_fail_after(0);
    CU_ASSERT_EQUAL(qv_bitmap_cache_insert(bc, 1, 1, "a = 1", b), QV_ENOMEM);
    CU_ASSERT_EQUAL(atomic_load(&b->refs), 1);
    CU_ASSERT_EQUAL(qv_bitmap_cache_insert(bc, 1, 1, "a = 1", b), 0);
    qv_bitmap_unref(b);
    qv_bitmap_cache_free(bc);
    qv_alloc_fail_after(-1);
    qv_mem_stats(QV_MEM_CACHE, &m1);
    CU_ASSERT_EQUAL(m1.live_blocks, m0.live_blocks);
}

static void test_opts(void)
{
    struct qv_cache_opts o;
    qv_cache_opts_default(&o);
    o.entries = 0;
    CU_ASSERT_PTR_NULL(qv_result_cache_create(&o));
    CU_ASSERT_EQUAL(qv_errno, QV_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "[cache] entries"));
    qv_cache_opts_default(&o);
    o.shards = 5000;
    CU_ASSERT_PTR_NULL(qv_semantic_cache_create(&o));
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "shards = 5000"));
    qv_cache_opts_default(&o);
    o.bitmap_bytes = 10;
    CU_ASSERT_PTR_NULL(qv_bitmap_cache_create(&o));
    CU_ASSERT_EQUAL(qv_errno, QV_EINVAL);
    CU_ASSERT_PTR_NULL(qv_result_cache_create(NULL));
    CU_ASSERT_NOT_EQUAL(qv_cache_hash64("abc", 3, 0), qv_cache_hash64("abd", 3, 0));
    CU_ASSERT_NOT_EQUAL(qv_cache_hash64("abc", 3, 0), qv_cache_hash64("abc", 3, 1));

    struct qv_config *cfg = qv_config_defaults();
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    CU_ASSERT_EQUAL(qv_cache_opts_from_config(cfg, &o), 0);
    CU_ASSERT_EQUAL(o.policy, QV_CACHE_LRU);
    CU_ASSERT_EQUAL(o.entries, 100000);
    CU_ASSERT_EQUAL(o.bytes, 256ULL << 20);
    CU_ASSERT_EQUAL(o.ttl_ms, 0);
    CU_ASSERT_EQUAL(o.semantic_entries, 1024);
    CU_ASSERT_EQUAL(o.bitmap_bytes, 64ULL << 20);
    /* where the schema has the keys, file values reach the options */
    if (qv_config_set(cfg, "cache", "policy", "lfu") == 0 &&
        qv_config_set(cfg, "cache", "ttl_ms", "250") == 0 &&
        qv_config_set(cfg, "cache", "bytes", "1M") == 0) {
        CU_ASSERT_EQUAL(qv_cache_opts_from_config(cfg, &o), 0);
        CU_ASSERT_EQUAL(o.policy, QV_CACHE_LFU);
        CU_ASSERT_EQUAL(o.ttl_ms, 250);
        CU_ASSERT_EQUAL(o.bytes, 1ULL << 20);
        /* 0 turns one cache off (quiver.conf); the others are still
         * checked, and still created */
        if (qv_config_set(cfg, "cache", "semantic_entries", "0") == 0) {
            CU_ASSERT_EQUAL(qv_cache_opts_from_config(cfg, &o), 0);
            CU_ASSERT_EQUAL(o.semantic_entries, 0);
            struct qv_result_cache *rc = qv_result_cache_create(&o);
            CU_ASSERT_PTR_NOT_NULL(rc);
            qv_result_cache_free(rc);
            CU_ASSERT_EQUAL(qv_config_set(cfg, "cache", "semantic_entries", "16"), 0);
        }
        if (qv_config_set(cfg, "cache", "entries", "0") == 0) {
            CU_ASSERT_EQUAL(qv_cache_opts_from_config(cfg, &o), 0);
            CU_ASSERT_EQUAL(o.entries, 0);
            struct qv_semantic_cache *sc = qv_semantic_cache_create(&o);
            CU_ASSERT_PTR_NOT_NULL(sc);
            qv_semantic_cache_free(sc);
            CU_ASSERT_EQUAL(qv_config_set(cfg, "cache", "entries", "10"), 0);
            CU_ASSERT_EQUAL(qv_config_set(cfg, "cache", "bytes", "100"), 0);
            CU_ASSERT_EQUAL(qv_cache_opts_from_config(cfg, &o), QV_ECONFIG);
            CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "[cache] bytes = 100"));
        }
    } else {
        printf("\n    [cache] keys not in the schema yet: defaults only ");
    }
    qv_config_free(cfg);
}

int main(void)
{
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    CU_pSuite s = CU_add_suite("cache", NULL, NULL);
    CU_add_test(s, "exact keys: every field and query bit counts", test_exact_keys);
    CU_add_test(s, "exact keys with every hash colliding", test_exact_keys_colliding);
    CU_add_test(s, "LRU evicts the least recently used", test_lru_order);
    CU_add_test(s, "LFU evicts the least frequent; ties by age; aging", test_lfu_order);
    CU_add_test(s, "TTL on an injected clock, with LRU and LFU", test_ttl);
    CU_add_test(s, "epoch bump misses; invalidate drops a collection", test_invalidate);
    CU_add_test(s, "byte capacity respected; oversized entry refused", test_bytes_capacity);
    CU_add_test(s, "semantic cache: exact threshold, key isolation", test_semantic);
    CU_add_test(s, "bitmap cache: normalised keys, refcounts, eviction", test_bitmaps);
    CU_add_test(s, "two threads: consistent counters; ns per lookup", test_threads);
    CU_add_test(s, "allocation failures: ENOMEM, cache usable, no leak", test_alloc_failure);
    CU_add_test(s, "bad options refused; [cache] configuration", test_opts);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failed = CU_get_number_of_failures();
    int err = CU_get_error();
    CU_cleanup_registry();
    return failed || err ? 1 : 0;
}
