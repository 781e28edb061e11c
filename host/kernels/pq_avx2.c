/*
 * pq_avx2.c - PQ kernels for AVX2; contract in quiver/pq.h, scalar oracle
 * in pq_ref.c, the design explained in pq_avx512.c.
 *
 * 4-bit fast-scan on 256-bit registers: one load takes one 32-byte group
 * (sub-quantisers 2p, 2p+1 of 32 entries); vpshufb against T[2p]
 * broadcast to both 128-bit lanes (low nibbles) and T[2p+1] (high
 * nibbles).  The same even/odd 16-bit accumulation as AVX-512 gives u16
 * sums for entries 0..15 (even) and 16..31 (odd).  AVX2 has no unsigned
 * 16-bit compare, so sum <= T is max(sum, T) == T.
 *
 * The 8-bit scan and the table builders are the reference's loops,
 * compiled for this level (the compiler may vectorise the table loops;
 * the 8-bit sums stay in the reference's order).
 */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "kernels_int.h"
#include "pq_int.h"
#include "quiver/pq.h"
#include "quiver/topk.h"

static void lut_f32_avx2(const float *q, const float *cents, uint32_t m, uint32_t ksub,
                         uint32_t dsub, enum qv_metric metric, float *lut)
{
    for (uint32_t j = 0; j < m; j++) {
        const float *qj = q + (size_t)j * dsub;
        const float *yj = cents + (size_t)j * ksub * dsub;
        float *out = lut + (size_t)j * ksub;
        for (uint32_t c = 0; c < ksub; c++) {
            const float *y = yj + (size_t)c * dsub;
            float s = 0.0f;
            if (metric == QV_METRIC_L2) {
                for (uint32_t d = 0; d < dsub; d++) {
                    float t = qj[d] - y[d];
                    s += t * t;
                }
            } else {
                for (uint32_t d = 0; d < dsub; d++)
                    s += qj[d] * y[d];
                s = -s;
            }
            out[c] = s;
        }
    }
}

static inline float hmin8(__m256 v)
{
    __m128 x = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_min_ps(x, _mm_movehl_ps(x, x));
    x = _mm_min_ss(x, _mm_shuffle_ps(x, x, 1));
    return _mm_cvtss_f32(x);
}

static inline float hmax8(__m256 v)
{
    __m128 x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_max_ps(x, _mm_movehl_ps(x, x));
    x = _mm_max_ss(x, _mm_shuffle_ps(x, x, 1));
    return _mm_cvtss_f32(x);
}

static void lut_quantize4_avx2(const float *t2, const float *t3, uint32_t m,
                               uint8_t *lut8, float *scale, float *bias)
{
    float mins[256];
    __m256 r[512];
    __m256 vmax = _mm256_setzero_ps();
    const uint32_t mp = (m + 1) & ~1u;

    for (uint32_t j = 0; j < m; j++) {
        __m256 x0 = _mm256_loadu_ps(t3 + j * 16), x1 = _mm256_loadu_ps(t3 + j * 16 + 8);
        if (t2) {
            x0 = _mm256_add_ps(_mm256_loadu_ps(t2 + j * 16), x0);
            x1 = _mm256_add_ps(_mm256_loadu_ps(t2 + j * 16 + 8), x1);
        }
        float mn = hmin8(_mm256_min_ps(x0, x1));
        __m256 vm = _mm256_set1_ps(mn);
        mins[j] = mn;
        r[2 * j] = _mm256_sub_ps(x0, vm);
        r[2 * j + 1] = _mm256_sub_ps(x1, vm);
        vmax = _mm256_max_ps(vmax, _mm256_max_ps(r[2 * j], r[2 * j + 1]));
    }
    float span = hmax8(vmax);
    float a = span > 0.0f ? 255.0f / span : 0.0f;
    const __m256 va = _mm256_set1_ps(a);
    const __m256i lim = _mm256_set1_epi32(255);
    for (uint32_t j = 0; j < m; j++) {
        __m256i v0 = _mm256_min_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(r[2 * j], va)), lim);
        __m256i v1 = _mm256_min_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(r[2 * j + 1], va)), lim);
        __m256i w = _mm256_packus_epi32(v0, v1);            /* 0-3 8-11 | 4-7 12-15 */
        __m128i b = _mm_packus_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
        /* b = 0-3 8-11 4-7 12-15 */
        b = _mm_shuffle_epi32(b, _MM_SHUFFLE(3, 1, 2, 0));
        _mm_storeu_si128((__m128i *)(lut8 + j * 16), b);
    }
    if (mp != m)
        memset(lut8 + m * 16, 0, 16);
    float bs = 0.0f;
    for (uint32_t j = 0; j < m; j++)
        bs += mins[j];
    *bias = bs;
    *scale = span / 255.0f;
}

static void scan4_avx2(const struct qv_pq_scan_args *a)
{
    const uint32_t m = a->m;
    const uint32_t mp = (m + 1) & ~1u;
    const uint32_t npair = mp / 2;
    const size_t bsize = (size_t)16 * mp;
    const size_t nblk = (a->n + QV_PQ_FS_BLOCK - 1) / QV_PQ_FS_BLOCK;
    __m256i LL[128], LH[128];

    for (uint32_t p = 0; p < npair; p++) {
        LL[p] = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(a->lut8 + p * 32)));
        LH[p] = _mm256_broadcastsi128_si256(
            _mm_loadu_si128((const __m128i *)(a->lut8 + p * 32 + 16)));
    }
    const __m256i nib = _mm256_set1_epi8(0x0f);
    const float scale = a->scale, bias = a->bias;
    struct qv_topk *h = a->heap;
    struct qv_pq_res *res = a->res;
    int thr = qv__pq_threshold(res ? res->bound : h->worst, scale, bias);
    if (thr < 0)
        return;
    __m256i vthr = _mm256_set1_epi16((short)thr);

    for (size_t b = 0; b < nblk; b++) {
        const uint8_t *blk = a->codes + b * bsize;
        __m256i accE = _mm256_setzero_si256(), accO = _mm256_setzero_si256();
        for (uint32_t p = 0; p < npair; p++) {
            __m256i c = _mm256_loadu_si256((const __m256i *)(blk + (size_t)p * 32));
            __m256i lo = _mm256_and_si256(c, nib);
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(c, 4), nib);
            __m256i r1 = _mm256_shuffle_epi8(LL[p], lo);
            __m256i r2 = _mm256_shuffle_epi8(LH[p], hi);
            accE = _mm256_add_epi16(accE, r1);
            accO = _mm256_add_epi16(accO, _mm256_srli_epi16(r1, 8));
            accE = _mm256_add_epi16(accE, r2);
            accO = _mm256_add_epi16(accO, _mm256_srli_epi16(r2, 8));
        }
        accE = _mm256_sub_epi16(accE, _mm256_slli_epi16(accO, 8));
        __m256i le = _mm256_cmpeq_epi16(_mm256_max_epu16(accE, vthr), vthr);
        __m256i lo_ = _mm256_cmpeq_epi16(_mm256_max_epu16(accO, vthr), vthr);
        __m256i pk = _mm256_permute4x64_epi64(_mm256_packs_epi16(le, lo_), _MM_SHUFFLE(3, 1, 2, 0));
        uint32_t cand = (uint32_t)_mm256_movemask_epi8(pk);
        size_t left = a->n - b * QV_PQ_FS_BLOCK;
        if (left < QV_PQ_FS_BLOCK)
            cand &= (1u << left) - 1;
        if (!cand)
            continue;
        uint16_t sums[32];
        _mm256_storeu_si256((__m256i *)sums, accE);
        _mm256_storeu_si256((__m256i *)(sums + 16), accO);
        int pushed = 0;
        do {
            uint32_t lane = (uint32_t)__builtin_ctz(cand);
            cand &= cand - 1;
            size_t i = b * QV_PQ_FS_BLOCK + lane;
            if (!qv__pq_eligible(a, i))
                continue;
            float d = fmaf((float)sums[lane], scale, bias);
            if (!res) {
                qv_topk_push(h, d, a->ids[i]);
                pushed = 1;
            } else if (qv_pq_res_admits(res, d, a->ids[i])) {
                qv_pq_res_add(res, d, a->ids[i]);
                pushed |= res->n == res->keep;  /* compacted: bound moved */
            }
        } while (cand);
        if (pushed) {
            thr = qv__pq_threshold(res ? res->bound : h->worst, scale, bias);
            if (thr < 0)
                return;
            vthr = _mm256_set1_epi16((short)thr);
        }
    }
}

static void scan8_avx2(const struct qv_pq_scan_args *a)
{
    const uint32_t m = a->m;
    for (size_t i = 0; i < a->n; i++) {
        const uint8_t *c = a->codes + i * m;
        float s = 0.0f;
        for (uint32_t j = 0; j < m; j++)
            s += a->lut[(size_t)j * 256 + c[j]];
        s += a->bias;
        if (s <= a->heap->worst && qv__pq_eligible(a, i))
            qv_topk_push(a->heap, s, a->ids[i]);
    }
}

const struct qv_pq_kernels qv__pq_kernels_avx2 = {
    .level = QV_SIMD_AVX2,
    .lut_f32 = lut_f32_avx2,
    .lut_quantize4 = lut_quantize4_avx2,
    .scan8 = scan8_avx2,
    .scan4 = scan4_avx2,
};
