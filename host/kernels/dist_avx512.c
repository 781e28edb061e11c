/*
 * dist_avx512.c - AVX-512 distance kernels (AVX512F/BW/VL/DQ + FMA + F16C).
 * Compiled only with those flags (host/meson.build); dispatch.c calls
 * qv__dist_fill_avx512() only when qv_simd_detect() says QV_SIMD_AVX512.
 *
 * Shape of every kernel:
 *   main loop   64 float elements (4 independent zmm accumulators, enough
 *               to cover FMA latency at two FMAs per cycle), or 32 for the
 *               three-sum cosine (6 accumulators);
 *   step loop   16 elements into the first accumulator;
 *   tail        one masked load (_mm512_maskz_loadu_ps, or the 16-bit /
 *               8-bit masked loads for f16 / int8): masked-out lanes read
 *               as 0, never touch memory past the vector, and add nothing.
 * float16 is widened with VCVTPH2PS and then follows the float32 path.
 *
 * int8 widens 32 codes to int16 (VPMOVSXBW) and multiplies pairs into
 * int32 with VPMADDWD (no VNNI needed); for L2 it subtracts in int16 first
 * (|a - b| <= 255 fits).  One VPMADDWD lane gains at most 2 * 255^2 =
 * 130050, so int32 lanes are flushed into an int64 total every
 * QV_I8_CHUNK elements (65536 / 32 = 2048 adds per lane, < 2^31 / 130050);
 * the result is exact for any dim and bit-identical to dist_ref.c.
 *
 * Float sums differ from the double reference by rounding only (a few
 * ulps times sqrt(dim) in practice).  The cosine finish is the reference's
 * double expression.  All kernels are pure, allocate nothing, cannot fail.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#include "kernels_int.h"

#define QV_ALWAYS_INLINE static inline __attribute__((always_inline))
#define QV_I8_CHUNK ((size_t)65536)
/* VCVTPS2PH rounding: nearest even, no exceptions (an immediate). */
#define QV_F16_ROUND (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)

static float cosine_finish(double dot, double na, double nb)
{
    if (na == 0.0 || nb == 0.0)
        return 1.0f;
    return (float)(1.0 - dot / sqrt(na * nb));
}

/* ------------------------------------------------------------------ */
/* float32 / float16: loads widen to 16 floats                          */
/* ------------------------------------------------------------------ */

/* Elements i..i+15 of p as floats. */
QV_ALWAYS_INLINE __m512 load16(const void *p, size_t i, enum qv_elem e)
{
    if (e == QV_ELEM_F32)
        return _mm512_loadu_ps((const float *)p + i);
    return _mm512_cvtph_ps(
        _mm256_loadu_si256((const __m256i *)((const uint16_t *)p + i)));
}

/* Elements i..i+n-1 of p (0 < n < 16), the other lanes 0. */
QV_ALWAYS_INLINE __m512 load16_tail(const void *p, size_t i, size_t n,
                                    enum qv_elem e)
{
    __mmask16 m = (__mmask16)((1u << n) - 1u);
    if (e == QV_ELEM_F32)
        return _mm512_maskz_loadu_ps(m, (const float *)p + i);
    return _mm512_cvtph_ps(
        _mm256_maskz_loadu_epi16(m, (const uint16_t *)p + i));
}

QV_ALWAYS_INLINE float l2_float(const void *a, const void *b, size_t dim,
                                enum qv_elem e)
{
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    __m512 s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
    __m512 d;
    size_t i = 0;

    for (; i + 64 <= dim; i += 64) {
        d = _mm512_sub_ps(load16(a, i, e), load16(b, i, e));
        s0 = _mm512_fmadd_ps(d, d, s0);
        d = _mm512_sub_ps(load16(a, i + 16, e), load16(b, i + 16, e));
        s1 = _mm512_fmadd_ps(d, d, s1);
        d = _mm512_sub_ps(load16(a, i + 32, e), load16(b, i + 32, e));
        s2 = _mm512_fmadd_ps(d, d, s2);
        d = _mm512_sub_ps(load16(a, i + 48, e), load16(b, i + 48, e));
        s3 = _mm512_fmadd_ps(d, d, s3);
    }
    for (; i + 16 <= dim; i += 16) {
        d = _mm512_sub_ps(load16(a, i, e), load16(b, i, e));
        s0 = _mm512_fmadd_ps(d, d, s0);
    }
    if (i < dim) {
        d = _mm512_sub_ps(load16_tail(a, i, dim - i, e),
                          load16_tail(b, i, dim - i, e));
        s1 = _mm512_fmadd_ps(d, d, s1);
    }
    return _mm512_reduce_add_ps(
        _mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

QV_ALWAYS_INLINE float ip_float(const void *a, const void *b, size_t dim,
                                enum qv_elem e)
{
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    __m512 s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
    size_t i = 0;

    for (; i + 64 <= dim; i += 64) {
        s0 = _mm512_fmadd_ps(load16(a, i, e), load16(b, i, e), s0);
        s1 = _mm512_fmadd_ps(load16(a, i + 16, e), load16(b, i + 16, e), s1);
        s2 = _mm512_fmadd_ps(load16(a, i + 32, e), load16(b, i + 32, e), s2);
        s3 = _mm512_fmadd_ps(load16(a, i + 48, e), load16(b, i + 48, e), s3);
    }
    for (; i + 16 <= dim; i += 16)
        s0 = _mm512_fmadd_ps(load16(a, i, e), load16(b, i, e), s0);
    if (i < dim)
        s1 = _mm512_fmadd_ps(load16_tail(a, i, dim - i, e),
                             load16_tail(b, i, dim - i, e), s1);
    return -_mm512_reduce_add_ps(
        _mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

QV_ALWAYS_INLINE float cos_float(const void *a, const void *b, size_t dim,
                                 enum qv_elem e)
{
    __m512 d0 = _mm512_setzero_ps(), d1 = _mm512_setzero_ps();
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    __m512 b0 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps();
    __m512 x, y;
    size_t i = 0;

    for (; i + 32 <= dim; i += 32) {
        x = load16(a, i, e);
        y = load16(b, i, e);
        d0 = _mm512_fmadd_ps(x, y, d0);
        a0 = _mm512_fmadd_ps(x, x, a0);
        b0 = _mm512_fmadd_ps(y, y, b0);
        x = load16(a, i + 16, e);
        y = load16(b, i + 16, e);
        d1 = _mm512_fmadd_ps(x, y, d1);
        a1 = _mm512_fmadd_ps(x, x, a1);
        b1 = _mm512_fmadd_ps(y, y, b1);
    }
    for (; i + 16 <= dim; i += 16) {
        x = load16(a, i, e);
        y = load16(b, i, e);
        d0 = _mm512_fmadd_ps(x, y, d0);
        a0 = _mm512_fmadd_ps(x, x, a0);
        b0 = _mm512_fmadd_ps(y, y, b0);
    }
    if (i < dim) {
        x = load16_tail(a, i, dim - i, e);
        y = load16_tail(b, i, dim - i, e);
        d1 = _mm512_fmadd_ps(x, y, d1);
        a1 = _mm512_fmadd_ps(x, x, a1);
        b1 = _mm512_fmadd_ps(y, y, b1);
    }
    return cosine_finish(_mm512_reduce_add_ps(_mm512_add_ps(d0, d1)),
                         _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)),
                         _mm512_reduce_add_ps(_mm512_add_ps(b0, b1)));
}

static float avx512_l2_f32(const void *a, const void *b, size_t dim)
{
    return l2_float(a, b, dim, QV_ELEM_F32);
}

static float avx512_ip_f32(const void *a, const void *b, size_t dim)
{
    return ip_float(a, b, dim, QV_ELEM_F32);
}

static float avx512_cos_f32(const void *a, const void *b, size_t dim)
{
    return cos_float(a, b, dim, QV_ELEM_F32);
}

static float avx512_l2_f16(const void *a, const void *b, size_t dim)
{
    return l2_float(a, b, dim, QV_ELEM_F16);
}

static float avx512_ip_f16(const void *a, const void *b, size_t dim)
{
    return ip_float(a, b, dim, QV_ELEM_F16);
}

static float avx512_cos_f16(const void *a, const void *b, size_t dim)
{
    return cos_float(a, b, dim, QV_ELEM_F16);
}

/* ------------------------------------------------------------------ */
/* int8: exact, int32 lanes flushed to int64 every QV_I8_CHUNK elements */
/* ------------------------------------------------------------------ */

/* Codes i..i+31 of p, sign-extended to int16. */
QV_ALWAYS_INLINE __m512i load32_i8(const int8_t *p, size_t i)
{
    return _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(p + i)));
}

/* Codes i..i+n-1 of p (0 < n < 32), the other lanes 0. */
QV_ALWAYS_INLINE __m512i load32_i8_tail(const int8_t *p, size_t i, size_t n)
{
    __mmask32 m = (__mmask32)((1u << n) - 1u);
    return _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(m, p + i));
}

/* Sum of the 16 int32 lanes of v, in int64. */
QV_ALWAYS_INLINE int64_t hsum_epi32(__m512i v)
{
    __m512i lo = _mm512_cvtepi32_epi64(_mm512_castsi512_si256(v));
    __m512i hi = _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(v, 1));
    return _mm512_reduce_add_epi64(_mm512_add_epi64(lo, hi));
}

/* Which sum i8_sum() computes. */
enum i8_sum { I8_L2, I8_DOT };

QV_ALWAYS_INLINE __m512i i8_term(__m512i x, __m512i y, enum i8_sum what)
{
    if (what == I8_L2) {
        __m512i d = _mm512_sub_epi16(x, y);
        return _mm512_madd_epi16(d, d);
    }
    return _mm512_madd_epi16(x, y);
}

/* L2 (what = I8_L2) or dot product (I8_DOT) of dim codes, exact. */
QV_ALWAYS_INLINE int64_t i8_sum(const int8_t *a, const int8_t *b, size_t dim,
                                enum i8_sum what)
{
    int64_t total = 0;
    size_t i = 0;

    while (i < dim) {
        size_t end = dim - i > QV_I8_CHUNK ? i + QV_I8_CHUNK : dim;
        __m512i s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();

        for (; i + 64 <= end; i += 64) {
            s0 = _mm512_add_epi32(s0, i8_term(load32_i8(a, i),
                                              load32_i8(b, i), what));
            s1 = _mm512_add_epi32(s1, i8_term(load32_i8(a, i + 32),
                                              load32_i8(b, i + 32), what));
        }
        if (i + 32 <= end) {
            s0 = _mm512_add_epi32(s0, i8_term(load32_i8(a, i),
                                              load32_i8(b, i), what));
            i += 32;
        }
        if (i < end) {
            s1 = _mm512_add_epi32(s1,
                    i8_term(load32_i8_tail(a, i, end - i),
                            load32_i8_tail(b, i, end - i), what));
            i = end;
        }
        total += hsum_epi32(_mm512_add_epi32(s0, s1));
    }
    return total;
}

static float avx512_l2_i8(const void *a, const void *b, size_t dim)
{
    return (float)i8_sum(a, b, dim, I8_L2);
}

static float avx512_ip_i8(const void *a, const void *b, size_t dim)
{
    return (float)-i8_sum(a, b, dim, I8_DOT);
}

static float avx512_cos_i8(const void *va, const void *vb, size_t dim)
{
    const int8_t *a = va, *b = vb;
    int64_t dot = 0, na = 0, nb = 0;
    size_t i = 0;

    while (i < dim) {
        size_t end = dim - i > QV_I8_CHUNK ? i + QV_I8_CHUNK : dim;
        __m512i sd = _mm512_setzero_si512();
        __m512i sa = _mm512_setzero_si512();
        __m512i sb = _mm512_setzero_si512();
        __m512i x, y;

        for (; i + 32 <= end; i += 32) {
            x = load32_i8(a, i);
            y = load32_i8(b, i);
            sd = _mm512_add_epi32(sd, _mm512_madd_epi16(x, y));
            sa = _mm512_add_epi32(sa, _mm512_madd_epi16(x, x));
            sb = _mm512_add_epi32(sb, _mm512_madd_epi16(y, y));
        }
        if (i < end) {
            x = load32_i8_tail(a, i, end - i);
            y = load32_i8_tail(b, i, end - i);
            sd = _mm512_add_epi32(sd, _mm512_madd_epi16(x, y));
            sa = _mm512_add_epi32(sa, _mm512_madd_epi16(x, x));
            sb = _mm512_add_epi32(sb, _mm512_madd_epi16(y, y));
            i = end;
        }
        dot += hsum_epi32(sd);
        na += hsum_epi32(sa);
        nb += hsum_epi32(sb);
    }
    return cosine_finish((double)dot, (double)na, (double)nb);
}

/* ------------------------------------------------------------------ */
/* normalize and conversions                                            */
/* ------------------------------------------------------------------ */

static void avx512_normalize_f32(float *v, size_t dim)
{
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    __m512 x;
    size_t i = 0;

    for (; i + 32 <= dim; i += 32) {
        x = _mm512_loadu_ps(v + i);
        s0 = _mm512_fmadd_ps(x, x, s0);
        x = _mm512_loadu_ps(v + i + 16);
        s1 = _mm512_fmadd_ps(x, x, s1);
    }
    for (; i + 16 <= dim; i += 16) {
        x = _mm512_loadu_ps(v + i);
        s0 = _mm512_fmadd_ps(x, x, s0);
    }
    if (i < dim) {
        x = load16_tail(v, i, dim - i, QV_ELEM_F32);
        s1 = _mm512_fmadd_ps(x, x, s1);
    }
    float s = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
    if (s == 0.0f)
        return;
    __m512 inv = _mm512_set1_ps((float)(1.0 / sqrt((double)s)));

    for (i = 0; i + 16 <= dim; i += 16)
        _mm512_storeu_ps(v + i, _mm512_mul_ps(_mm512_loadu_ps(v + i), inv));
    if (i < dim) {
        __mmask16 m = (__mmask16)((1u << (dim - i)) - 1u);
        _mm512_mask_storeu_ps(v + i, m,
                              _mm512_mul_ps(_mm512_maskz_loadu_ps(m, v + i), inv));
    }
}

static void avx512_f32_to_f16(const float *src, uint16_t *dst, size_t n)
{
    size_t i = 0;

    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(dst + i),
                            _mm512_cvtps_ph(_mm512_loadu_ps(src + i), QV_F16_ROUND));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
        _mm256_mask_storeu_epi16(dst + i, m,
            _mm512_cvtps_ph(_mm512_maskz_loadu_ps(m, src + i), QV_F16_ROUND));
    }
}

static void avx512_f16_to_f32(const uint16_t *src, float *dst, size_t n)
{
    size_t i = 0;

    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(dst + i, load16(src, i, QV_ELEM_F16));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
        _mm512_mask_storeu_ps(dst + i, m, load16_tail(src, i, n - i, QV_ELEM_F16));
    }
}

void qv__dist_fill_avx512(struct qv_dist_ops *ops)
{
    ops->level = QV_SIMD_AVX512;
    ops->dist[QV_METRIC_L2][QV_ELEM_F32] = avx512_l2_f32;
    ops->dist[QV_METRIC_IP][QV_ELEM_F32] = avx512_ip_f32;
    ops->dist[QV_METRIC_COSINE][QV_ELEM_F32] = avx512_cos_f32;
    ops->dist[QV_METRIC_L2][QV_ELEM_F16] = avx512_l2_f16;
    ops->dist[QV_METRIC_IP][QV_ELEM_F16] = avx512_ip_f16;
    ops->dist[QV_METRIC_COSINE][QV_ELEM_F16] = avx512_cos_f16;
    ops->dist[QV_METRIC_L2][QV_ELEM_I8] = avx512_l2_i8;
    ops->dist[QV_METRIC_IP][QV_ELEM_I8] = avx512_ip_i8;
    ops->dist[QV_METRIC_COSINE][QV_ELEM_I8] = avx512_cos_i8;
    ops->normalize_f32 = avx512_normalize_f32;
    ops->f32_to_f16 = avx512_f32_to_f16;
    ops->f16_to_f32 = avx512_f16_to_f32;
}
