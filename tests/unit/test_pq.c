/*
 * test_pq.c - product quantisation: training, encode/decode error falling
 * with m, ADC tables equal to exact distances to decoded vectors, the
 * fast-scan block layout, and every SIMD level's kernels (table
 * quantisation, 4-bit fast-scan, 8-bit scan) equal to the scalar
 * reference bit for bit on random codes; bad shapes refused; injected
 * allocation failures give ENOMEM without leaks.
 */
#include <CUnit/Basic.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "quiver/alloc.h"
#include "quiver/errors.h"
#include "quiver/pq.h"
#include "quiver/topk.h"

static uint64_t rng = 0x9e3779b97f4a7c15ULL;
static uint64_t rnext(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}
static float frand(void)
{
    return (float)(rnext() >> 40) / (float)(1u << 24);
}

/* n x dim points around 64 random centres (structured, like real data). */
static float *clustered(size_t n, size_t dim)
{
    float *c = malloc(64 * dim * sizeof(float));
    float *x = malloc(n * dim * sizeof(float));
    for (size_t i = 0; i < 64 * dim; i++)
        c[i] = frand() * 10.0f;
    for (size_t i = 0; i < n; i++) {
        size_t k = rnext() % 64;
        for (size_t d = 0; d < dim; d++)
            x[i * dim + d] = c[k * dim + d] + frand() - 0.5f;
    }
    free(c);
    return x;
}

static double mse(const struct qv_pq *pq, const float *x, size_t n)
{
    uint8_t *codes = malloc(n * pq->code_size);
    float *y = malloc(n * pq->dim * sizeof(float));
    qv_pq_encode(pq, x, n, codes);
    qv_pq_decode(pq, codes, n, y);
    double e = 0;
    for (size_t i = 0; i < n * pq->dim; i++)
        e += ((double)x[i] - y[i]) * ((double)x[i] - y[i]);
    free(y);
    free(codes);
    return e / (double)n;
}

static void test_error_falls_with_m(void)
{
    const size_t n = 3000, dim = 32;
    float *x = clustered(n, dim);
    for (uint32_t nbits = 4; nbits <= 8; nbits += 4) {
        double prev = INFINITY, first = 0;
        uint32_t ms[] = { 2, 4, 8, 16, 32 };
        for (int i = 0; i < 5; i++) {
            struct qv_pq pq;
            CU_ASSERT_EQUAL_FATAL(qv_pq_init(&pq, dim, ms[i], nbits), 0);
            CU_ASSERT_EQUAL_FATAL(qv_pq_train(&pq, x, n, 7, 0, NULL), 0);
            double e = mse(&pq, x, n);
            CU_ASSERT_TRUE(e < prev);
            if (i == 0)
                first = e;
            prev = e;
            qv_pq_fini(&pq);
        }
        /* 16x more sub-quantisers: much smaller error */
        CU_ASSERT_TRUE(prev < first / 4);
    }
    free(x);
}

/* ADC: bias + sum of table entries equals the exact distance to the
 * decoded vector, at every level. */
static void test_adc_equals_decoded(void)
{
    const size_t n = 600, dim = 24;
    float *x = clustered(n, dim);
    for (uint32_t nbits = 4; nbits <= 8; nbits += 4)
        for (int lv = 0; lv < QV_SIMD__COUNT; lv++) {
            const struct qv_dist_ops *ops = qv_kernels_level((enum qv_simd)lv);
            if (!ops)
                continue;
            struct qv_pq pq;
            CU_ASSERT_EQUAL_FATAL(qv_pq_init(&pq, dim, 6, nbits), 0);
            CU_ASSERT_EQUAL_FATAL(qv_pq_train(&pq, x, n, 3, 0, NULL), 0);
            uint8_t *codes = malloc(n * pq.code_size);
            float *y = malloc(n * dim * sizeof(float));
            float *lut = malloc(pq.m * pq.ksub * sizeof(float));
            qv_pq_encode(&pq, x, n, codes);
            qv_pq_decode(&pq, codes, n, y);
            for (int mt = 0; mt < 2; mt++) {
                const float *q = x + (size_t)(rnext() % n) * dim;
                ops->pq->lut_f32(q, pq.cents, pq.m, pq.ksub, pq.dsub, (enum qv_metric)mt, lut);
                for (size_t i = 0; i < n; i++) {
                    double want = 0, got = 0;
                    for (size_t d = 0; d < dim; d++)
                        want += mt == 0 ? ((double)q[d] - y[i * dim + d]) * ((double)q[d] - y[i * dim + d])
                                        : -(double)q[d] * y[i * dim + d];
                    for (uint32_t j = 0; j < pq.m; j++)
                        got += lut[j * pq.ksub + qv_pq_code_get(codes + i * pq.code_size, nbits, j)];
                    CU_ASSERT_DOUBLE_EQUAL(got, want, 1e-3 * (fabs(want) + 1));
                }
            }
            free(lut);
            free(y);
            free(codes);
            qv_pq_fini(&pq);
        }
    free(x);
}

/* Fast-scan layout helpers: put/get/pack round trip. */
static void test_fs_layout(void)
{
    uint32_t ms[] = { 1, 2, 3, 8, 17, 32 };
    for (int mi = 0; mi < 6; mi++) {
        uint32_t m = ms[mi], cs = (m + 1) / 2;
        size_t n = 77;
        uint8_t *codes = malloc(n * cs);
        for (size_t i = 0; i < n * cs; i++)
            codes[i] = (uint8_t)rnext();
        if (m & 1)
            for (size_t i = 0; i < n; i++)
                codes[i * cs + cs - 1] &= 0x0f;    /* pad nibble is 0 */
        uint8_t *fs = malloc(qv_pq_fs_size(n, m));
        qv_pq_fs_pack(fs, codes, n, m);
        uint8_t back[128];
        for (size_t i = 0; i < n; i++) {
            qv_pq_fs_get(fs, i, m, back);
            CU_ASSERT_EQUAL(memcmp(back, codes + i * cs, cs), 0);
        }
        free(fs);
        free(codes);
    }
}

/* Heap contents sorted, for comparison. */
static void sorted(struct qv_topk *h)
{
    qv_topk_sort(h);
}

static int same_heap(const struct qv_topk *a, const struct qv_topk *b)
{
    if (a->n != b->n)
        return 0;
    for (uint32_t i = 0; i < a->n; i++)
        if (a->ids[i] != b->ids[i] || memcmp(&a->dist[i], &b->dist[i], sizeof(float)))
            return 0;
    return 1;
}

static void test_quantize_levels_equal(void)
{
    const struct qv_dist_ops *ref = qv_kernels_level(QV_SIMD_REF);
    uint32_t ms[] = { 1, 2, 3, 7, 8, 16, 31, 32, 64, 255, 256 };
    float *t2 = malloc(256 * 16 * sizeof(float)), *t3 = malloc(256 * 16 * sizeof(float));
    uint8_t *a8 = aligned_alloc(64, 256 * 16), *b8 = aligned_alloc(64, 256 * 16);
    for (int mi = 0; mi < 11; mi++) {
        uint32_t m = ms[mi];
        for (int rep = 0; rep < 4; rep++) {
            for (uint32_t i = 0; i < m * 16; i++) {
                t2[i] = (frand() - 0.3f) * 100.0f;
                t3[i] = (frand() - 0.7f) * 30.0f;
            }
            if (rep == 3)       /* one flat table */
                for (uint32_t c = 0; c < 16; c++)
                    t3[c] = 5.0f, t2[c] = 1.0f;
            float sr, br;
            const float *t2p = rep & 1 ? NULL : t2;
            ref->pq->lut_quantize4(t2p, t3, m, a8, &sr, &br);
            /* the quantised table approximates the float one */
            for (uint32_t j = 0; j < m; j++) {
                float mn = INFINITY;
                for (uint32_t c = 0; c < 16; c++) {
                    float t = t2p ? t2p[j * 16 + c] + t3[j * 16 + c] : t3[j * 16 + c];
                    mn = fminf(mn, t);
                }
                for (uint32_t c = 0; c < 16; c++) {
                    float t = t2p ? t2p[j * 16 + c] + t3[j * 16 + c] : t3[j * 16 + c];
                    CU_ASSERT_TRUE(fabsf(mn + a8[j * 16 + c] * sr - t) <= sr * 0.51f + 1e-3f);
                }
            }
            for (int lv = 1; lv < QV_SIMD__COUNT; lv++) {
                const struct qv_dist_ops *ops = qv_kernels_level((enum qv_simd)lv);
                if (!ops)
                    continue;
                float s, b;
                memset(b8, 0xee, 256 * 16);
                ops->pq->lut_quantize4(t2p, t3, m, b8, &s, &b);
                CU_ASSERT_EQUAL(memcmp(a8, b8, ((m + 1) & ~1u) * 16), 0);
                CU_ASSERT_EQUAL(memcmp(&s, &sr, sizeof s), 0);
                CU_ASSERT_EQUAL(memcmp(&b, &br, sizeof b), 0);
            }
        }
    }
    free(t2);
    free(t3);
    free(a8);
    free(b8);
}

/* scan4 and scan8 at every level equal the reference exactly: random
 * codes, tables, k, filters, n not a multiple of 32. */
static void scan_levels(int bits)
{
    const struct qv_dist_ops *ref = qv_kernels_level(QV_SIMD_REF);
    size_t ns[] = { 1, 5, 16, 31, 32, 33, 63, 64, 65, 100, 257, 1000, 3001 };
    uint32_t ms[] = { 1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 32, 33, 64, 128, 256 };
    uint32_t ks[] = { 1, 10, 100, 5000 };
    int checked = 0;
    for (int ni = 0; ni < 13; ni++)
        for (int mi = 0; mi < 15; mi++) {
            size_t n = ns[ni];
            uint32_t m = ms[mi], mp = (m + 1) & ~1u;
            if (n * m > 400000)
                continue;
            size_t csz = bits == 4 ? qv_pq_fs_size(n, m) : n * m;
            uint8_t *codes = aligned_alloc(64, (csz + 63) & ~(size_t)63);
            uint64_t *ids = malloc(n * sizeof(uint64_t));
            uint32_t *rows = malloc(n * sizeof(uint32_t));
            uint64_t filter[64];
            uint8_t *lut8 = aligned_alloc(64, 256 * 16);
            float *lut = malloc((size_t)m * 256 * sizeof(float));
            if (bits == 4) {
                uint8_t pk[128];
                memset(codes, 0, csz);
                for (size_t i = 0; i < n; i++) {
                    for (uint32_t b = 0; b < mp / 2; b++)
                        pk[b] = (uint8_t)rnext();
                    if (m & 1)
                        pk[mp / 2 - 1] &= 0x0f;
                    qv_pq_fs_put(codes, i, m, pk);
                }
            } else {
                for (size_t i = 0; i < csz; i++)
                    codes[i] = (uint8_t)rnext();
            }
            for (size_t i = 0; i < n; i++) {
                ids[i] = 1000 + (rnext() % (n * 2));   /* repeats: ties by id */
                rows[i] = (uint32_t)(rnext() % 4096);
            }
            for (int w = 0; w < 64; w++)
                filter[w] = rnext() & rnext();
            int tiny = rnext() & 1;     /* small table values: many ties */
            for (uint32_t i = 0; i < mp * 16; i++)
                lut8[i] = i >= m * 16 ? 0 : (uint8_t)(tiny ? rnext() % 3 : rnext());
            for (uint32_t i = 0; i < m * 256; i++)
                lut[i] = tiny ? (float)(rnext() % 4) : frand() * 10.0f - 2.0f;
            for (int ki = 0; ki < 4; ki++)
                for (int f = 0; f < 2; f++) {
                    uint32_t k = ks[ki];
                    float *d0 = malloc(k * sizeof(float)), *d1 = malloc(k * sizeof(float));
                    uint64_t *i0 = malloc(k * sizeof(uint64_t)), *i1 = malloc(k * sizeof(uint64_t));
                    struct qv_topk h0, h1;
                    struct qv_pq_scan_args a = {
                        .codes = codes, .n = n, .m = m, .lut = lut, .lut8 = lut8,
                        .scale = 0.37f, .bias = -3.5f, .ids = ids,
                        .rows = f ? rows : NULL, .filter = f ? filter : NULL,
                    };
                    qv_topk_init(&h0, k, d0, i0);
                    a.heap = &h0;
                    if (bits == 4)
                        ref->pq->scan4(&a);
                    else
                        ref->pq->scan8(&a);
                    sorted(&h0);
                    for (int lv = 1; lv < QV_SIMD__COUNT; lv++) {
                        const struct qv_dist_ops *ops = qv_kernels_level((enum qv_simd)lv);
                        if (!ops)
                            continue;
                        /* two passes through one heap: the second one sees
                         * a full heap from the start */
                        qv_topk_init(&h1, k, d1, i1);
                        a.heap = &h1;
                        if (bits == 4)
                            ops->pq->scan4(&a);
                        else
                            ops->pq->scan8(&a);
                        sorted(&h1);
                        CU_ASSERT_TRUE(same_heap(&h0, &h1));
                        if (!same_heap(&h0, &h1))
                            fprintf(stderr, "\n  level %d bits %d n %zu m %u k %u filter %d\n",
                                    lv, bits, n, m, k, f);
                        checked++;
                    }
                    /* scan4 into a reservoir (every level, the reference
                     * too), through two passes as two lists would, then
                     * flushed: the same top-k as the reference heap */
                    for (int lv = 0; bits == 4 && lv < QV_SIMD__COUNT; lv++) {
                        const struct qv_dist_ops *ops = qv_kernels_level((enum qv_simd)lv);
                        if (!ops)
                            continue;
                        uint32_t cap = k + 1 + (uint32_t)(rnext() % (3 * k));
                        float *rd = malloc(cap * sizeof(float));
                        uint64_t *ri = malloc(cap * sizeof(uint64_t));
                        struct qv_pq_res res;
                        struct qv_topk h2;
                        qv_pq_res_init(&res, k, cap, rd, ri);
                        a.heap = NULL;
                        a.res = &res;
                        size_t half = n / 2 / QV_PQ_FS_BLOCK * QV_PQ_FS_BLOCK;
                        struct qv_pq_scan_args a2 = a;
                        a2.n = half;
                        ops->pq->scan4(&a2);
                        a2.codes = codes + qv_pq_fs_size(half, m);
                        a2.n = n - half;
                        a2.ids = ids + half;
                        a2.rows = f ? rows + half : NULL;
                        ops->pq->scan4(&a2);
                        a.res = NULL;
                        qv_pq_res_compact(&res);
                        CU_ASSERT_TRUE(res.n <= k);
                        qv_topk_init(&h2, k, d1, i1);
                        for (uint32_t c = 0; c < res.n; c++)
                            qv_topk_push(&h2, rd[c], ri[c]);
                        sorted(&h2);
                        CU_ASSERT_TRUE(same_heap(&h0, &h2));
                        if (!same_heap(&h0, &h2))
                            fprintf(stderr, "\n  reservoir level %d n %zu m %u k %u cap %u "
                                    "filter %d\n", lv, n, m, k, cap, f);
                        checked++;
                        free(rd);
                        free(ri);
                    }
                    free(d0);
                    free(d1);
                    free(i0);
                    free(i1);
                }
            free(lut);
            free(lut8);
            free(rows);
            free(ids);
            free(codes);
        }
    CU_ASSERT_TRUE(checked > 0);
}

static void test_scan4_levels_equal(void) { scan_levels(4); }
static void test_scan8_levels_equal(void) { scan_levels(8); }

/* The reference fast-scan computes exactly sum of table bytes: check
 * against a direct computation from the packed codes. */
static void test_scan4_known_answer(void)
{
    const struct qv_dist_ops *ref = qv_kernels_level(QV_SIMD_REF);
    const uint32_t m = 5, mp = 6;
    const size_t n = 40;
    uint8_t pk[40][3];
    uint8_t *fs = aligned_alloc(64, qv_pq_fs_size(n, m));
    uint8_t *lut8 = aligned_alloc(64, 256);
    uint64_t ids[40];
    memset(fs, 0, qv_pq_fs_size(n, m));
    for (uint32_t i = 0; i < mp * 16; i++)
        lut8[i] = i < m * 16 ? (uint8_t)(i * 7 % 251) : 0;
    for (size_t i = 0; i < n; i++) {
        pk[i][0] = (uint8_t)rnext();
        pk[i][1] = (uint8_t)rnext();
        pk[i][2] = (uint8_t)(rnext() & 0x0f);
        qv_pq_fs_put(fs, i, m, pk[i]);
        ids[i] = i;
    }
    float dist[40];
    uint64_t got[40];
    struct qv_topk h;
    qv_topk_init(&h, 40, dist, got);
    struct qv_pq_scan_args a = { .codes = fs, .n = n, .m = m, .lut8 = lut8, .scale = 0.5f,
                                 .bias = 1.0f, .ids = ids, .heap = &h };
    ref->pq->scan4(&a);
    qv_topk_sort(&h);
    CU_ASSERT_EQUAL(h.n, 40);
    for (uint32_t r = 0; r < 40; r++) {
        size_t i = got[r];
        uint32_t acc = 0;
        for (uint32_t j = 0; j < m; j++)
            acc += lut8[j * 16 + qv_pq_code_get(pk[i], 4, j)];
        CU_ASSERT_EQUAL(dist[r], 1.0f + 0.5f * (float)acc);
    }
    free(fs);
    free(lut8);
}

/* Reservoir compaction keeps exactly the best keep pairs (by distance,
 * then id) of everything added, whatever the distances: many ties,
 * repeated ids, negative values, infinities, all equal; the bound is the
 * worst pair kept and admits only better pairs. */
static int pair_cmp(const void *x, const void *y)
{
    const float *a = x, *b = y;
    const uint64_t *ia = (const uint64_t *)(a + 2), *ib = (const uint64_t *)(b + 2);
    if (*a != *b)
        return *a < *b ? -1 : 1;
    return *ia < *ib ? -1 : *ia > *ib;
}

static void test_res_compact(void)
{
    uint32_t keeps[] = { 1, 2, 7, 32, 100, 1000 };
    int checked = 0;
    for (int ki = 0; ki < 6; ki++)
        for (int kind = 0; kind < 5; kind++) {
            uint32_t keep = keeps[ki];
            uint32_t cap = keep + 1 + (uint32_t)(rnext() % (4 * keep));
            size_t total = (size_t)cap * 3 + rnext() % 100;
            float *rd = malloc(cap * sizeof(float));
            uint64_t *ri = malloc(cap * sizeof(uint64_t));
            /* every added pair: float, pad, u64 id (16 bytes a record) */
            float *all = malloc(total * 4 * sizeof(float));
            size_t nall = 0;
            struct qv_pq_res r;
            qv_pq_res_init(&r, keep, cap, rd, ri);
            for (size_t i = 0; i < total; i++) {
                float d;
                switch (kind) {
                case 0: d = frand() * 100.0f - 50.0f; break;
                case 1: d = (float)(rnext() % 5); break;            /* ties */
                case 2: d = 7.0f; break;                            /* all equal */
                case 3: d = rnext() % 7 ? frand() : INFINITY; break;
                default: d = (float)i * -0.5f; break;               /* falling */
                }
                uint64_t id = rnext() % (total / 2 + 1);
                if (!qv_pq_res_admits(&r, d, id))
                    continue;
                qv_pq_res_add(&r, d, id);
                all[nall * 4] = d;
                memcpy(&all[nall * 4 + 2], &id, sizeof id);
                nall++;
            }
            qv_pq_res_compact(&r);
            qsort(all, nall, 4 * sizeof(float), pair_cmp);
            uint32_t want = nall < keep ? (uint32_t)nall : keep;
            CU_ASSERT_EQUAL(r.n, want);
            float *got = malloc((size_t)r.n * 4 * sizeof(float));
            for (uint32_t i = 0; i < r.n; i++) {
                got[i * 4] = rd[i];
                memcpy(&got[i * 4 + 2], &ri[i], sizeof(uint64_t));
            }
            qsort(got, r.n, 4 * sizeof(float), pair_cmp);
            int same = r.n == want;
            for (uint32_t i = 0; same && i < want; i++)
                same = pair_cmp(&got[i * 4], &all[i * 4]) == 0;
            CU_ASSERT_TRUE(same);
            if (!same)
                fprintf(stderr, "\n  compact keep %u cap %u kind %d\n", keep, cap, kind);
            if (nall > keep) {
                uint64_t bid;
                memcpy(&bid, &got[(want - 1) * 4 + 2], sizeof bid);
                CU_ASSERT_TRUE(r.bound == got[(want - 1) * 4] && r.bound_id == bid);
                CU_ASSERT_FALSE(qv_pq_res_admits(&r, r.bound, r.bound_id));
            }
            checked++;
            free(got);
            free(all);
            free(rd);
            free(ri);
        }
    CU_ASSERT_EQUAL(checked, 30);
}

static void test_bad_shapes(void)
{
    struct qv_pq pq;
    CU_ASSERT_EQUAL(qv_pq_init(&pq, 32, 0, 8), QV_EINVAL);
    CU_ASSERT_EQUAL(qv_pq_init(&pq, 32, 5, 8), QV_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "multiple"));
    CU_ASSERT_EQUAL(qv_pq_init(&pq, 32, 8, 6), QV_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "nbits"));
    CU_ASSERT_EQUAL(qv_pq_init(&pq, 1024, 512, 4), QV_EINVAL);
    CU_ASSERT_EQUAL(qv_pq_init(&pq, 32, 8, 8), 0);
    float x[32 * 10] = { 0 };
    CU_ASSERT_EQUAL(qv_pq_train(&pq, x, 10, 1, 0, NULL), QV_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "training vectors"));
    qv_pq_fini(&pq);
    qv_pq_fini(NULL);
}

static void test_alloc_failures(void)
{
    const size_t n = 400, dim = 16;
    float *x = clustered(n, dim);
    struct qv_mem_stats s0, s1;
    qv_mem_stats(QV_MEM__COUNT, &s0);
    int saw_ok = 0, saw_nomem = 0;
    for (long f = 0; f < 200 && !saw_ok; f++) {
        struct qv_pq pq;
        qv_alloc_fail_after(f);
        int rc = qv_pq_init(&pq, dim, 4, 4);
        if (rc == 0) {
            rc = qv_pq_train(&pq, x, n, 1, 0, NULL);
            qv_pq_fini(&pq);
        }
        qv_alloc_fail_after(-1);
        if (rc == 0)
            saw_ok = 1;
        else {
            CU_ASSERT_EQUAL(rc, QV_ENOMEM);
            saw_nomem = 1;
        }
    }
    qv_mem_stats(QV_MEM__COUNT, &s1);
    CU_ASSERT_TRUE(saw_ok && saw_nomem);
    CU_ASSERT_EQUAL(s1.live_blocks, s0.live_blocks);
    CU_ASSERT_EQUAL(s1.live_bytes, s0.live_bytes);
    free(x);
}

int main(void)
{
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    CU_pSuite s = CU_add_suite("pq", NULL, NULL);
    CU_add_test(s, "encode/decode error falls with m", test_error_falls_with_m);
    CU_add_test(s, "ADC tables equal distances to decoded vectors", test_adc_equals_decoded);
    CU_add_test(s, "fast-scan layout round trip", test_fs_layout);
    CU_add_test(s, "4-bit table quantisation: levels equal, error bounded",
                test_quantize_levels_equal);
    CU_add_test(s, "fast-scan known answer", test_scan4_known_answer);
    CU_add_test(s, "fast-scan: every level equals the reference", test_scan4_levels_equal);
    CU_add_test(s, "8-bit scan: every level equals the reference", test_scan8_levels_equal);
    CU_add_test(s, "reservoir compaction keeps exactly the best pairs", test_res_compact);
    CU_add_test(s, "bad shapes refused with a message", test_bad_shapes);
    CU_add_test(s, "injected allocation failures: ENOMEM, no leak", test_alloc_failures);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failed = CU_get_number_of_failures();
    int err = CU_get_error();
    CU_cleanup_registry();
    return failed || err ? 1 : 0;
}
