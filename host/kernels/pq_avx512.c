/*
 * pq_avx512.c - PQ kernels for AVX-512 (F, BW, VL, DQ); contract in
 * quiver/pq.h, scalar oracle in pq_ref.c.
 *
 * 4-bit fast-scan.  A block holds 32 entries; its code bytes come in
 * groups of 32 (one group = sub-quantisers 2p / 2p+1 in low / high
 * nibbles).  One zmm load takes two groups, p and p + 1:
 *
 *   zmm lanes   0        1        2        3        (128 bits each)
 *   codes       group p (32 B)    group p+1 (32 B)
 *   table LL    T[2p]    T[2p]    T[2p+2]  T[2p+2]  (low nibbles)
 *   table LH    T[2p+1]  T[2p+1]  T[2p+3]  T[2p+3]  (high nibbles)
 *
 * vpshufb looks up 64 table bytes at once per nibble half.  A 16-bit lane
 * of the result holds entry e (even byte, e < 16) and entry 16 + e (odd
 * byte).  Accumulation is in 16 bits without masking the even byte:
 *   accE += r          (= sum even + 256 * sum odd, mod 2^16)
 *   accO += r >> 8     (= sum odd)
 * and at the end even = accE - (accO << 8) (mod 2^16), exact because
 * m <= 256 keeps every true sum <= 255 * 256 < 65536: the 16-bit
 * accumulators never saturate, which is how the kernel handles
 * saturation (the reference's clamp at 65535 never triggers).  The two
 * 256-bit halves (groups p and p + 1) are then added, giving 32 u16 sums
 * in entry order 0..31.
 *
 * Fused top-k: the heap's worst distance w is turned into the largest
 * integer sum T with fmaf(T, scale, bias) <= w (monotone in T, so exact);
 * one vpcmpuw against T selects the block's candidates, which are pushed
 * with their float distance computed as in the reference.  T is
 * recomputed only after a push; when no sum can qualify (T < 0) the scan
 * stops, because w never grows.
 *
 * 8-bit codes: 16 entries at a time, one vpgatherdd fetching 4 code bytes
 * per entry, then one vgatherdps per sub-quantiser into the float table;
 * sums in the reference's order.
 */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "kernels_int.h"
#include "pq_int.h"
#include "quiver/pq.h"
#include "quiver/topk.h"

static void lut_f32_avx512(const float *q, const float *cents, uint32_t m, uint32_t ksub,
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

static void lut_quantize4_avx512(const float *t2, const float *t3, uint32_t m,
                                 uint8_t *lut8, float *scale, float *bias)
{
    float mins[256];
    __m512 r[256];
    __m512 vmax = _mm512_setzero_ps();
    const uint32_t mp = (m + 1) & ~1u;

    for (uint32_t j = 0; j < m; j++) {
        __m512 t = _mm512_loadu_ps(t3 + j * 16);
        if (t2)
            t = _mm512_add_ps(_mm512_loadu_ps(t2 + j * 16), t);
        float mn = _mm512_reduce_min_ps(t);
        mins[j] = mn;
        r[j] = _mm512_sub_ps(t, _mm512_set1_ps(mn));
        vmax = _mm512_max_ps(vmax, r[j]);
    }
    float span = _mm512_reduce_max_ps(vmax);
    float a = span > 0.0f ? 255.0f / span : 0.0f;
    const __m512 va = _mm512_set1_ps(a);
    for (uint32_t j = 0; j < m; j++) {
        __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(r[j], va));
        _mm_storeu_si128((__m128i *)(lut8 + j * 16), _mm512_cvtusepi32_epi8(v));
    }
    if (mp != m)
        memset(lut8 + m * 16, 0, 16);
    float b = 0.0f;
    for (uint32_t j = 0; j < m; j++)
        b += mins[j];
    *bias = b;
    *scale = span / 255.0f;
}

static void scan4_avx512(const struct qv_pq_scan_args *a)
{
    const uint32_t m = a->m;
    const uint32_t mp = (m + 1) & ~1u;
    const uint32_t npair = mp / 2;
    const uint32_t ng = (npair + 1) / 2;
    const size_t bsize = (size_t)16 * mp;
    const size_t nblk = (a->n + QV_PQ_FS_BLOCK - 1) / QV_PQ_FS_BLOCK;
    __m512i LL[64], LH[64];

    for (uint32_t g = 0; g < ng; g++) {
        const uint8_t *t = a->lut8 + (size_t)g * 64;
        __m128i l0 = _mm_loadu_si128((const __m128i *)t);
        __m128i h0 = _mm_loadu_si128((const __m128i *)(t + 16));
        __m128i l1 = _mm_setzero_si128(), h1 = _mm_setzero_si128();
        if (2 * g + 1 < npair) {
            l1 = _mm_loadu_si128((const __m128i *)(t + 32));
            h1 = _mm_loadu_si128((const __m128i *)(t + 48));
        }
        LL[g] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_broadcastsi128_si256(l0)),
                                   _mm256_broadcastsi128_si256(l1), 1);
        LH[g] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_broadcastsi128_si256(h0)),
                                   _mm256_broadcastsi128_si256(h1), 1);
    }
    const __mmask64 last_load = (npair & 1) ? 0xffffffffULL : ~0ULL;
    const __m512i nib = _mm512_set1_epi8(0x0f);
    const float scale = a->scale, bias = a->bias;
    struct qv_topk *h = a->heap;
    struct qv_pq_res *res = a->res;
    int thr = qv__pq_threshold(res ? res->bound : h->worst, scale, bias);
    if (thr < 0)
        return;
    __m512i vthr = _mm512_set1_epi16((short)thr);

    for (size_t b = 0; b < nblk; b++) {
        const uint8_t *blk = a->codes + b * bsize;
        __m512i accE = _mm512_setzero_si512(), accO = _mm512_setzero_si512();
        uint32_t g = 0;
        for (; g + 1 < ng; g++) {
            __m512i c = _mm512_loadu_si512((const void *)(blk + (size_t)g * 64));
            __m512i lo = _mm512_and_si512(c, nib);
            __m512i hi = _mm512_and_si512(_mm512_srli_epi16(c, 4), nib);
            __m512i r1 = _mm512_shuffle_epi8(LL[g], lo);
            __m512i r2 = _mm512_shuffle_epi8(LH[g], hi);
            accE = _mm512_add_epi16(accE, r1);
            accO = _mm512_add_epi16(accO, _mm512_srli_epi16(r1, 8));
            accE = _mm512_add_epi16(accE, r2);
            accO = _mm512_add_epi16(accO, _mm512_srli_epi16(r2, 8));
        }
        {
            __m512i c = _mm512_maskz_loadu_epi8(last_load, blk + (size_t)g * 64);
            __m512i lo = _mm512_and_si512(c, nib);
            __m512i hi = _mm512_and_si512(_mm512_srli_epi16(c, 4), nib);
            __m512i r1 = _mm512_shuffle_epi8(LL[g], lo);
            __m512i r2 = _mm512_shuffle_epi8(LH[g], hi);
            accE = _mm512_add_epi16(accE, r1);
            accO = _mm512_add_epi16(accO, _mm512_srli_epi16(r1, 8));
            accE = _mm512_add_epi16(accE, r2);
            accO = _mm512_add_epi16(accO, _mm512_srli_epi16(r2, 8));
        }
        accE = _mm512_sub_epi16(accE, _mm512_slli_epi16(accO, 8));
        __m256i e = _mm256_add_epi16(_mm512_castsi512_si256(accE),
                                     _mm512_extracti64x4_epi64(accE, 1));
        __m256i o = _mm256_add_epi16(_mm512_castsi512_si256(accO),
                                     _mm512_extracti64x4_epi64(accO, 1));
        __m512i acc = _mm512_inserti64x4(_mm512_castsi256_si512(e), o, 1);
        uint32_t cand = (uint32_t)_mm512_cmple_epu16_mask(acc, vthr);
        size_t left = a->n - b * QV_PQ_FS_BLOCK;
        if (left < QV_PQ_FS_BLOCK)
            cand &= (1u << left) - 1;
        if (!cand)
            continue;
        uint16_t sums[32];
        _mm512_storeu_si512((void *)sums, acc);
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
            vthr = _mm512_set1_epi16((short)thr);
        }
    }
}

static void scan8_avx512(const struct qv_pq_scan_args *a)
{
    const uint32_t m = a->m;
    const float *lut = a->lut;
    struct qv_topk *h = a->heap;
    size_t i = 0;

    if (m >= 4) {
        const __m512i offs = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32((int)m));
        const __m512i ff = _mm512_set1_epi32(0xff);
        const __m512 vb = _mm512_set1_ps(a->bias);
        const uint32_t tail = m & 3;
        for (; i + 16 <= a->n; i += 16) {
            const uint8_t *base = a->codes + i * m;
            __m512 s = _mm512_setzero_ps();
            uint32_t j0 = 0;
            for (; j0 + 4 <= m; j0 += 4) {
                __m512i w = _mm512_i32gather_epi32(offs, (const void *)(base + j0), 1);
                for (uint32_t k = 0; k < 4; k++) {
                    __m512i idx = _mm512_and_si512(_mm512_srli_epi32(w, 8 * k), ff);
                    s = _mm512_add_ps(s, _mm512_i32gather_ps(idx, lut + (size_t)(j0 + k) * 256, 4));
                }
            }
            if (tail) {
                __m512i w = _mm512_i32gather_epi32(offs, (const void *)(base + m - 4), 1);
                for (uint32_t k = 4 - tail; k < 4; k++) {
                    __m512i idx = _mm512_and_si512(_mm512_srli_epi32(w, 8 * k), ff);
                    s = _mm512_add_ps(s, _mm512_i32gather_ps(idx, lut + (size_t)(m - 4 + k) * 256, 4));
                }
            }
            s = _mm512_add_ps(s, vb);
            __mmask16 cand = _mm512_cmp_ps_mask(s, _mm512_set1_ps(h->worst), _CMP_LE_OQ);
            if (!cand)
                continue;
            float d[16];
            _mm512_storeu_ps(d, s);
            do {
                uint32_t lane = (uint32_t)__builtin_ctz(cand);
                cand &= cand - 1;
                if (qv__pq_eligible(a, i + lane))
                    qv_topk_push(h, d[lane], a->ids[i + lane]);
            } while (cand);
        }
    }
    for (; i < a->n; i++) {
        const uint8_t *c = a->codes + i * m;
        float s = 0.0f;
        for (uint32_t j = 0; j < m; j++)
            s += lut[(size_t)j * 256 + c[j]];
        s += a->bias;
        if (qv__pq_eligible(a, i))
            qv_topk_push(h, s, a->ids[i]);
    }
}

const struct qv_pq_kernels qv__pq_kernels_avx512 = {
    .level = QV_SIMD_AVX512,
    .lut_f32 = lut_f32_avx512,
    .lut_quantize4 = lut_quantize4_avx512,
    .scan8 = scan8_avx512,
    .scan4 = scan4_avx512,
};
