/*
 * dist_ref.c - portable scalar distance kernels: the reference every SIMD
 * level is tested against (STYLE rule 11), and the level used when the CPU
 * has no AVX2 or QV_SIMD=ref caps it.
 *
 * Accuracy.  float32 and float16 sums are accumulated in double, one element
 * at a time, so the reference is more accurate than any float SIMD kernel;
 * the SIMD levels must agree within a tolerance that grows with dim.  int8
 * sums are exact (int64) and converted to float once at the end, so every
 * level returns bit-identical int8 results.
 *
 * Cosine.  All levels finish with the same double expression,
 *   1 - dot / sqrt(|a|^2 |b|^2),  or 1 when |a|^2 or |b|^2 is 0,
 * so a vector compared with itself gives exactly 0 (its dot equals its
 * squared norm n bit for bit, and sqrt(n * n) == n in double).
 *
 * Conversions.  qv_f16_to_f32 / qv_f32_to_f16 are bit-exact with the x86
 * F16C instructions (VCVTPH2PS, VCVTPS2PH with round-to-nearest-even):
 * subnormals are kept, overflow gives infinity, and NaNs stay NaN with
 * their payload's top bits kept and the quiet bit set.
 *
 * Cost: every kernel is O(dim), reads each input once, allocates nothing
 * and cannot fail.  All functions are pure and thread-safe.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels_int.h"

/* ------------------------------------------------------------------ */
/* float16 <-> float32                                                  */
/* ------------------------------------------------------------------ */

float qv_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    uint32_t bits;
    float f;

    if (exp == 0) {
        /* Zero or subnormal: mant * 2^-24, exact in float. */
        f = (float)mant * 0x1p-24f;
        return sign ? -f : f;
    }
    if (exp == 31) {
        bits = sign | 0x7f800000u | (mant << 13);
        if (mant)
            bits |= 0x00400000u;        /* NaN: set the quiet bit */
    } else {
        bits = sign | ((exp + 112u) << 23) | (mant << 13);
    }
    memcpy(&f, &bits, sizeof f);
    return f;
}

uint16_t qv_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t absx = x & 0x7fffffffu;

    if (absx >= 0x7f800000u) {
        if (absx == 0x7f800000u)
            return (uint16_t)(sign | 0x7c00u);                  /* inf */
        return (uint16_t)(sign | 0x7e00u | ((absx >> 13) & 0x3ffu)); /* NaN */
    }
    /* 65520 = 65504 + half an ulp: the tie rounds to even, i.e. up to inf. */
    if (absx >= 0x477ff000u)
        return (uint16_t)(sign | 0x7c00u);
    if (absx >= 0x38800000u) {
        /* Normal half (>= 2^-14).  A carry out of the mantissa moves into
         * the exponent, which is the right encoding. */
        uint32_t h = ((absx >> 23) - 112u) << 10 | ((absx >> 13) & 0x3ffu);
        uint32_t rem = absx & 0x1fffu;
        if (rem > 0x1000u || (rem == 0x1000u && (h & 1u)))
            h++;
        return (uint16_t)(sign | h);
    }
    if (absx < 0x33000000u)             /* below 2^-25: rounds to zero */
        return (uint16_t)sign;
    /* Subnormal half: round(m * 2^(e - 126)) units of 2^-24, where m is
     * the 24-bit significand and e the biased float exponent (102..112). */
    uint32_t e = absx >> 23;
    uint32_t m = (absx & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126u - e;          /* 14..24 */
    uint32_t h = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1u);
    uint32_t halfway = 1u << (shift - 1u);
    if (rem > halfway || (rem == halfway && (h & 1u)))
        h++;                            /* may reach 0x400: smallest normal */
    return (uint16_t)(sign | h);
}

static void ref_f32_to_f16(const float *src, uint16_t *dst, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = qv_f32_to_f16(src[i]);
}

static void ref_f16_to_f32(const uint16_t *src, float *dst, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = qv_f16_to_f32(src[i]);
}

/* ------------------------------------------------------------------ */
/* Shared finish                                                        */
/* ------------------------------------------------------------------ */

static float cosine_finish(double dot, double na, double nb)
{
    if (na == 0.0 || nb == 0.0)
        return 1.0f;
    return (float)(1.0 - dot / sqrt(na * nb));
}

/* ------------------------------------------------------------------ */
/* float32                                                              */
/* ------------------------------------------------------------------ */

static float ref_l2_f32(const void *va, const void *vb, size_t dim)
{
    const float *a = va, *b = vb;
    double s = 0.0;
    for (size_t i = 0; i < dim; i++) {
        double d = (double)a[i] - (double)b[i];
        s += d * d;
    }
    return (float)s;
}

static float ref_ip_f32(const void *va, const void *vb, size_t dim)
{
    const float *a = va, *b = vb;
    double s = 0.0;
    for (size_t i = 0; i < dim; i++)
        s += (double)a[i] * (double)b[i];
    return (float)-s;
}

static float ref_cos_f32(const void *va, const void *vb, size_t dim)
{
    const float *a = va, *b = vb;
    double dot = 0.0, na = 0.0, nb = 0.0;
    for (size_t i = 0; i < dim; i++) {
        double x = a[i], y = b[i];
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    return cosine_finish(dot, na, nb);
}

/* ------------------------------------------------------------------ */
/* float16                                                              */
/* ------------------------------------------------------------------ */

static float ref_l2_f16(const void *va, const void *vb, size_t dim)
{
    const uint16_t *a = va, *b = vb;
    double s = 0.0;
    for (size_t i = 0; i < dim; i++) {
        double d = (double)qv_f16_to_f32(a[i]) - (double)qv_f16_to_f32(b[i]);
        s += d * d;
    }
    return (float)s;
}

static float ref_ip_f16(const void *va, const void *vb, size_t dim)
{
    const uint16_t *a = va, *b = vb;
    double s = 0.0;
    for (size_t i = 0; i < dim; i++)
        s += (double)qv_f16_to_f32(a[i]) * (double)qv_f16_to_f32(b[i]);
    return (float)-s;
}

static float ref_cos_f16(const void *va, const void *vb, size_t dim)
{
    const uint16_t *a = va, *b = vb;
    double dot = 0.0, na = 0.0, nb = 0.0;
    for (size_t i = 0; i < dim; i++) {
        double x = qv_f16_to_f32(a[i]), y = qv_f16_to_f32(b[i]);
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    return cosine_finish(dot, na, nb);
}

/* ------------------------------------------------------------------ */
/* int8 (exact)                                                         */
/* ------------------------------------------------------------------ */

static float ref_l2_i8(const void *va, const void *vb, size_t dim)
{
    const int8_t *a = va, *b = vb;
    int64_t s = 0;
    for (size_t i = 0; i < dim; i++) {
        int32_t d = (int32_t)a[i] - (int32_t)b[i];
        s += d * d;
    }
    return (float)s;
}

static float ref_ip_i8(const void *va, const void *vb, size_t dim)
{
    const int8_t *a = va, *b = vb;
    int64_t s = 0;
    for (size_t i = 0; i < dim; i++)
        s += (int32_t)a[i] * (int32_t)b[i];
    return (float)-s;
}

static float ref_cos_i8(const void *va, const void *vb, size_t dim)
{
    const int8_t *a = va, *b = vb;
    int64_t dot = 0, na = 0, nb = 0;
    for (size_t i = 0; i < dim; i++) {
        int32_t x = a[i], y = b[i];
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    return cosine_finish((double)dot, (double)na, (double)nb);
}

/* ------------------------------------------------------------------ */
/* normalize                                                            */
/* ------------------------------------------------------------------ */

static void ref_normalize_f32(float *v, size_t dim)
{
    double s = 0.0;
    for (size_t i = 0; i < dim; i++)
        s += (double)v[i] * (double)v[i];
    if (s == 0.0)
        return;
    double inv = 1.0 / sqrt(s);
    for (size_t i = 0; i < dim; i++)
        v[i] = (float)(v[i] * inv);
}

void qv__dist_fill_ref(struct qv_dist_ops *ops)
{
    ops->level = QV_SIMD_REF;
    ops->dist[QV_METRIC_L2][QV_ELEM_F32] = ref_l2_f32;
    ops->dist[QV_METRIC_IP][QV_ELEM_F32] = ref_ip_f32;
    ops->dist[QV_METRIC_COSINE][QV_ELEM_F32] = ref_cos_f32;
    ops->dist[QV_METRIC_L2][QV_ELEM_F16] = ref_l2_f16;
    ops->dist[QV_METRIC_IP][QV_ELEM_F16] = ref_ip_f16;
    ops->dist[QV_METRIC_COSINE][QV_ELEM_F16] = ref_cos_f16;
    ops->dist[QV_METRIC_L2][QV_ELEM_I8] = ref_l2_i8;
    ops->dist[QV_METRIC_IP][QV_ELEM_I8] = ref_ip_i8;
    ops->dist[QV_METRIC_COSINE][QV_ELEM_I8] = ref_cos_i8;
    ops->normalize_f32 = ref_normalize_f32;
    ops->f32_to_f16 = ref_f32_to_f16;
    ops->f16_to_f32 = ref_f16_to_f32;
}
