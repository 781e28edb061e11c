/*
 * pq_ref.c - the scalar reference of the PQ kernels (quiver/pq.h).
 *
 * The 4-bit fast-scan here does exactly the arithmetic of the SIMD
 * versions, one entry at a time: an integer sum of the quantised table
 * entries saturated at 65535, then d = fmaf(acc, scale, bias).  So every
 * level returns bit-identical distances and the tests compare them with
 * ==.  The 8-bit scan sums the float table in order j = 0..m-1 from 0 and
 * adds the bias last, which the SIMD versions also do (per lane).
 *
 * Used on CPUs without AVX2 and as the tests' oracle.
 */
#include <math.h>

#include "kernels_int.h"
#include "quiver/pq.h"
#include "quiver/topk.h"

static void lut_f32_ref(const float *q, const float *cents, uint32_t m, uint32_t ksub,
                        uint32_t dsub, enum qv_metric metric, float *lut)
{
    for (uint32_t j = 0; j < m; j++) {
        const float *qj = q + (size_t)j * dsub;
        for (uint32_t c = 0; c < ksub; c++) {
            const float *y = cents + ((size_t)j * ksub + c) * dsub;
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
            lut[(size_t)j * ksub + c] = s;
        }
    }
}

static void lut_quantize4_ref(const float *t2, const float *t3, uint32_t m,
                              uint8_t *lut8, float *scale, float *bias)
{
    float mins[256];
    float span = 0.0f;
    uint32_t mp = (m + 1) & ~1u;

    for (uint32_t j = 0; j < m; j++) {
        float mn = INFINITY;
        for (uint32_t c = 0; c < 16; c++) {
            float t = t2 ? t2[j * 16 + c] + t3[j * 16 + c] : t3[j * 16 + c];
            mn = t < mn ? t : mn;
        }
        mins[j] = mn;
        for (uint32_t c = 0; c < 16; c++) {
            float t = t2 ? t2[j * 16 + c] + t3[j * 16 + c] : t3[j * 16 + c];
            float r = t - mn;
            span = r > span ? r : span;
        }
    }
    float a = span > 0.0f ? 255.0f / span : 0.0f;
    for (uint32_t j = 0; j < m; j++) {
        for (uint32_t c = 0; c < 16; c++) {
            float t = t2 ? t2[j * 16 + c] + t3[j * 16 + c] : t3[j * 16 + c];
            float v = nearbyintf((t - mins[j]) * a);
            v = v < 0.0f ? 0.0f : v > 255.0f ? 255.0f : v;
            lut8[j * 16 + c] = (uint8_t)v;
        }
    }
    for (uint32_t j = m; j < mp; j++)
        for (uint32_t c = 0; c < 16; c++)
            lut8[j * 16 + c] = 0;
    float b = 0.0f;
    for (uint32_t j = 0; j < m; j++)
        b += mins[j];
    *bias = b;
    *scale = span / 255.0f;
}

static inline int eligible(const struct qv_pq_scan_args *a, size_t i)
{
    if (!a->filter)
        return 1;
    uint32_t r = a->rows[i];
    return (a->filter[r >> 6] >> (r & 63)) & 1;
}

static void scan8_ref(const struct qv_pq_scan_args *a)
{
    const uint32_t m = a->m;
    for (size_t i = 0; i < a->n; i++) {
        const uint8_t *c = a->codes + i * m;
        float s = 0.0f;
        for (uint32_t j = 0; j < m; j++)
            s += a->lut[(size_t)j * 256 + c[j]];
        s += a->bias;
        if (eligible(a, i))
            qv_topk_push(a->heap, s, a->ids[i]);
    }
}

static void scan4_ref(const struct qv_pq_scan_args *a)
{
    const uint32_t m = a->m;
    const uint32_t mp = (m + 1) & ~1u;
    const size_t bsize = (size_t)QV_PQ_FS_BLOCK * mp / 2;

    for (size_t i = 0; i < a->n; i++) {
        const uint8_t *blk = a->codes + (i / QV_PQ_FS_BLOCK) * bsize;
        size_t e = i % QV_PQ_FS_BLOCK;
        size_t byte = e < 16 ? 2 * e : 2 * (e - 16) + 1;
        uint32_t acc = 0;
        for (uint32_t j = 0; j < mp; j++) {
            uint32_t code = (blk[(j / 2) * 32 + byte] >> ((j & 1) * 4)) & 15u;
            acc += a->lut8[j * 16 + code];
        }
        if (acc > 65535u)
            acc = 65535u;
        float d = fmaf((float)acc, a->scale, a->bias);
        if (eligible(a, i))
            qv_topk_push(a->heap, d, a->ids[i]);
    }
}

const struct qv_pq_kernels qv__pq_kernels_ref = {
    .level = QV_SIMD_REF,
    .lut_f32 = lut_f32_ref,
    .lut_quantize4 = lut_quantize4_ref,
    .scan8 = scan8_ref,
    .scan4 = scan4_ref,
};
