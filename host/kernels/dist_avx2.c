/*
 * dist_avx2.c - AVX2 + FMA + F16C distance kernels.  Compiled only with
 * -mavx2 -mfma -mf16c (host/meson.build); dispatch.c calls
 * qv__dist_fill_avx2() only when qv_simd_detect() reports at least
 * QV_SIMD_AVX2.
 *
 * Shape of every kernel:
 *   main loop   32 float elements (4 independent ymm accumulators, enough
 *               to cover FMA latency at two FMAs per cycle), or 16 for the
 *               three-sum cosine (6 accumulators);
 *   step loop   8 elements into the first accumulator;
 *   tail        float32: one VMASKMOVPS load (masked-out lanes read as 0
 *               and touch no memory); float16 and int8: the last < 8 / < 16
 *               elements are copied into a zeroed stack buffer and take the
 *               vector path (zeros add nothing to any sum).
 * float16 is widened with VCVTPH2PS and then follows the float32 path.
 *
 * int8 widens 16 codes to int16 (VPMOVSXBW) and multiplies pairs into
 * int32 with VPMADDWD; for L2 it subtracts in int16 first (|a - b| <= 255
 * fits).  One VPMADDWD lane gains at most 2 * 255^2 = 130050, so int32
 * lanes are flushed into an int64 total every QV_I8_CHUNK elements
 * (65536 / 16 = 4096 adds per lane, < 2^31 / 130050); the result is exact
 * for any dim and bit-identical to dist_ref.c.
 *
 * Float sums differ from the double reference by rounding only.  The
 * cosine finish is the reference's double expression.  All kernels are
 * pure, allocate nothing and cannot fail.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels_int.h"

#define QV_ALWAYS_INLINE static inline __attribute__((always_inline))
#define QV_I8_CHUNK ((size_t)65536)

static float cosine_finish(double dot, double na, double nb)
{
    if (na == 0.0 || nb == 0.0)
        return 1.0f;
    return (float)(1.0 - dot / sqrt(na * nb));
}

/* A sliding window of 8 -1s then 8 0s: &tail_mask[8 - n] masks n lanes. */
static const int32_t tail_mask[16] = {
    -1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0,
};

/* Sum of the 8 lanes of v. */
QV_ALWAYS_INLINE float hsum_ps(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v),
                          _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* ------------------------------------------------------------------ */
/* float32 / float16: loads widen to 8 floats                           */
/* ------------------------------------------------------------------ */

/* Elements i..i+7 of p as floats. */
QV_ALWAYS_INLINE __m256 load8(const void *p, size_t i, enum qv_elem e)
{
    if (e == QV_ELEM_F32)
        return _mm256_loadu_ps((const float *)p + i);
    return _mm256_cvtph_ps(
        _mm_loadu_si128((const __m128i *)((const uint16_t *)p + i)));
}

/* Elements i..i+n-1 of p (0 < n < 8), the other lanes 0. */
QV_ALWAYS_INLINE __m256 load8_tail(const void *p, size_t i, size_t n,
                                   enum qv_elem e)
{
    if (e == QV_ELEM_F32) {
        __m256i m = _mm256_loadu_si256((const __m256i *)&tail_mask[8 - n]);
        return _mm256_maskload_ps((const float *)p + i, m);
    }
    uint16_t buf[8] = { 0 };
    memcpy(buf, (const uint16_t *)p + i, n * sizeof buf[0]);
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)buf));
}

QV_ALWAYS_INLINE float l2_float(const void *a, const void *b, size_t dim,
                                enum qv_elem e)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    __m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    __m256 d;
    size_t i = 0;

    for (; i + 32 <= dim; i += 32) {
        d = _mm256_sub_ps(load8(a, i, e), load8(b, i, e));
        s0 = _mm256_fmadd_ps(d, d, s0);
        d = _mm256_sub_ps(load8(a, i + 8, e), load8(b, i + 8, e));
        s1 = _mm256_fmadd_ps(d, d, s1);
        d = _mm256_sub_ps(load8(a, i + 16, e), load8(b, i + 16, e));
        s2 = _mm256_fmadd_ps(d, d, s2);
        d = _mm256_sub_ps(load8(a, i + 24, e), load8(b, i + 24, e));
        s3 = _mm256_fmadd_ps(d, d, s3);
    }
    for (; i + 8 <= dim; i += 8) {
        d = _mm256_sub_ps(load8(a, i, e), load8(b, i, e));
        s0 = _mm256_fmadd_ps(d, d, s0);
    }
    if (i < dim) {
        d = _mm256_sub_ps(load8_tail(a, i, dim - i, e),
                          load8_tail(b, i, dim - i, e));
        s1 = _mm256_fmadd_ps(d, d, s1);
    }
    return hsum_ps(_mm256_add_ps(_mm256_add_ps(s0, s1),
                                 _mm256_add_ps(s2, s3)));
}

QV_ALWAYS_INLINE float ip_float(const void *a, const void *b, size_t dim,
                                enum qv_elem e)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    __m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    size_t i = 0;

    for (; i + 32 <= dim; i += 32) {
        s0 = _mm256_fmadd_ps(load8(a, i, e), load8(b, i, e), s0);
        s1 = _mm256_fmadd_ps(load8(a, i + 8, e), load8(b, i + 8, e), s1);
        s2 = _mm256_fmadd_ps(load8(a, i + 16, e), load8(b, i + 16, e), s2);
        s3 = _mm256_fmadd_ps(load8(a, i + 24, e), load8(b, i + 24, e), s3);
    }
    for (; i + 8 <= dim; i += 8)
        s0 = _mm256_fmadd_ps(load8(a, i, e), load8(b, i, e), s0);
    if (i < dim)
        s1 = _mm256_fmadd_ps(load8_tail(a, i, dim - i, e),
                             load8_tail(b, i, dim - i, e), s1);
    return -hsum_ps(_mm256_add_ps(_mm256_add_ps(s0, s1),
                                  _mm256_add_ps(s2, s3)));
}

QV_ALWAYS_INLINE float cos_float(const void *a, const void *b, size_t dim,
                                 enum qv_elem e)
{
    __m256 d0 = _mm256_setzero_ps(), d1 = _mm256_setzero_ps();
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    __m256 b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps();
    __m256 x, y;
    size_t i = 0;

    for (; i + 16 <= dim; i += 16) {
        x = load8(a, i, e);
        y = load8(b, i, e);
        d0 = _mm256_fmadd_ps(x, y, d0);
        a0 = _mm256_fmadd_ps(x, x, a0);
        b0 = _mm256_fmadd_ps(y, y, b0);
        x = load8(a, i + 8, e);
        y = load8(b, i + 8, e);
        d1 = _mm256_fmadd_ps(x, y, d1);
        a1 = _mm256_fmadd_ps(x, x, a1);
        b1 = _mm256_fmadd_ps(y, y, b1);
    }
    if (i + 8 <= dim) {
        x = load8(a, i, e);
        y = load8(b, i, e);
        d0 = _mm256_fmadd_ps(x, y, d0);
        a0 = _mm256_fmadd_ps(x, x, a0);
        b0 = _mm256_fmadd_ps(y, y, b0);
        i += 8;
    }
    if (i < dim) {
        x = load8_tail(a, i, dim - i, e);
        y = load8_tail(b, i, dim - i, e);
        d1 = _mm256_fmadd_ps(x, y, d1);
        a1 = _mm256_fmadd_ps(x, x, a1);
        b1 = _mm256_fmadd_ps(y, y, b1);
    }
    return cosine_finish(hsum_ps(_mm256_add_ps(d0, d1)),
                         hsum_ps(_mm256_add_ps(a0, a1)),
                         hsum_ps(_mm256_add_ps(b0, b1)));
}

static float avx2_l2_f32(const void *a, const void *b, size_t dim)
{
    return l2_float(a, b, dim, QV_ELEM_F32);
}

static float avx2_ip_f32(const void *a, const void *b, size_t dim)
{
    return ip_float(a, b, dim, QV_ELEM_F32);
}

static float avx2_cos_f32(const void *a, const void *b, size_t dim)
{
    return cos_float(a, b, dim, QV_ELEM_F32);
}

static float avx2_l2_f16(const void *a, const void *b, size_t dim)
{
    return l2_float(a, b, dim, QV_ELEM_F16);
}

static float avx2_ip_f16(const void *a, const void *b, size_t dim)
{
    return ip_float(a, b, dim, QV_ELEM_F16);
}

static float avx2_cos_f16(const void *a, const void *b, size_t dim)
{
    return cos_float(a, b, dim, QV_ELEM_F16);
}

/* ------------------------------------------------------------------ */
/* int8: exact, int32 lanes flushed to int64 every QV_I8_CHUNK elements */
/* ------------------------------------------------------------------ */

/* Codes i..i+15 of p, sign-extended to int16. */
QV_ALWAYS_INLINE __m256i load16_i8(const int8_t *p, size_t i)
{
    return _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(p + i)));
}

/* Codes i..i+n-1 of p (0 < n < 16), the other lanes 0. */
QV_ALWAYS_INLINE __m256i load16_i8_tail(const int8_t *p, size_t i, size_t n)
{
    int8_t buf[16] = { 0 };
    memcpy(buf, p + i, n);
    return _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)buf));
}

/* Sum of the 8 int32 lanes of v, in int64. */
QV_ALWAYS_INLINE int64_t hsum_epi32(__m256i v)
{
    __m256i lo = _mm256_cvtepi32_epi64(_mm256_castsi256_si128(v));
    __m256i hi = _mm256_cvtepi32_epi64(_mm256_extracti128_si256(v, 1));
    __m256i s = _mm256_add_epi64(lo, hi);
    __m128i t = _mm_add_epi64(_mm256_castsi256_si128(s),
                              _mm256_extracti128_si256(s, 1));
    return _mm_cvtsi128_si64(t) + _mm_extract_epi64(t, 1);
}

/* Which sum i8_sum() computes. */
enum i8_sum { I8_L2, I8_DOT };

QV_ALWAYS_INLINE __m256i i8_term(__m256i x, __m256i y, enum i8_sum what)
{
    if (what == I8_L2) {
        __m256i d = _mm256_sub_epi16(x, y);
        return _mm256_madd_epi16(d, d);
    }
    return _mm256_madd_epi16(x, y);
}

/* L2 (what = I8_L2) or dot product (I8_DOT) of dim codes, exact. */
QV_ALWAYS_INLINE int64_t i8_sum(const int8_t *a, const int8_t *b, size_t dim,
                                enum i8_sum what)
{
    int64_t total = 0;
    size_t i = 0;

    while (i < dim) {
        size_t end = dim - i > QV_I8_CHUNK ? i + QV_I8_CHUNK : dim;
        __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();

        for (; i + 32 <= end; i += 32) {
            s0 = _mm256_add_epi32(s0, i8_term(load16_i8(a, i),
                                              load16_i8(b, i), what));
            s1 = _mm256_add_epi32(s1, i8_term(load16_i8(a, i + 16),
                                              load16_i8(b, i + 16), what));
        }
        if (i + 16 <= end) {
            s0 = _mm256_add_epi32(s0, i8_term(load16_i8(a, i),
                                              load16_i8(b, i), what));
            i += 16;
        }
        if (i < end) {
            s1 = _mm256_add_epi32(s1,
                    i8_term(load16_i8_tail(a, i, end - i),
                            load16_i8_tail(b, i, end - i), what));
            i = end;
        }
        total += hsum_epi32(_mm256_add_epi32(s0, s1));
    }
    return total;
}

static float avx2_l2_i8(const void *a, const void *b, size_t dim)
{
    return (float)i8_sum(a, b, dim, I8_L2);
}

static float avx2_ip_i8(const void *a, const void *b, size_t dim)
{
    return (float)-i8_sum(a, b, dim, I8_DOT);
}

static float avx2_cos_i8(const void *va, const void *vb, size_t dim)
{
    const int8_t *a = va, *b = vb;
    int64_t dot = 0, na = 0, nb = 0;
    size_t i = 0;

    while (i < dim) {
        size_t end = dim - i > QV_I8_CHUNK ? i + QV_I8_CHUNK : dim;
        __m256i sd = _mm256_setzero_si256();
        __m256i sa = _mm256_setzero_si256();
        __m256i sb = _mm256_setzero_si256();
        __m256i x, y;

        for (; i + 16 <= end; i += 16) {
            x = load16_i8(a, i);
            y = load16_i8(b, i);
            sd = _mm256_add_epi32(sd, _mm256_madd_epi16(x, y));
            sa = _mm256_add_epi32(sa, _mm256_madd_epi16(x, x));
            sb = _mm256_add_epi32(sb, _mm256_madd_epi16(y, y));
        }
        if (i < end) {
            x = load16_i8_tail(a, i, end - i);
            y = load16_i8_tail(b, i, end - i);
            sd = _mm256_add_epi32(sd, _mm256_madd_epi16(x, y));
            sa = _mm256_add_epi32(sa, _mm256_madd_epi16(x, x));
            sb = _mm256_add_epi32(sb, _mm256_madd_epi16(y, y));
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

static void avx2_normalize_f32(float *v, size_t dim)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    __m256 x;
    size_t i = 0;

    for (; i + 16 <= dim; i += 16) {
        x = _mm256_loadu_ps(v + i);
        s0 = _mm256_fmadd_ps(x, x, s0);
        x = _mm256_loadu_ps(v + i + 8);
        s1 = _mm256_fmadd_ps(x, x, s1);
    }
    for (; i + 8 <= dim; i += 8) {
        x = _mm256_loadu_ps(v + i);
        s0 = _mm256_fmadd_ps(x, x, s0);
    }
    if (i < dim) {
        x = load8_tail(v, i, dim - i, QV_ELEM_F32);
        s1 = _mm256_fmadd_ps(x, x, s1);
    }
    float s = hsum_ps(_mm256_add_ps(s0, s1));
    if (s == 0.0f)
        return;
    __m256 inv = _mm256_set1_ps((float)(1.0 / sqrt((double)s)));

    for (i = 0; i + 8 <= dim; i += 8)
        _mm256_storeu_ps(v + i, _mm256_mul_ps(_mm256_loadu_ps(v + i), inv));
    if (i < dim) {
        __m256i m = _mm256_loadu_si256((const __m256i *)&tail_mask[8 - (dim - i)]);
        _mm256_maskstore_ps(v + i, m,
                            _mm256_mul_ps(_mm256_maskload_ps(v + i, m), inv));
    }
}

static void avx2_f32_to_f16(const float *src, uint16_t *dst, size_t n)
{
    size_t i = 0;

    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + i),
                                         _MM_FROUND_TO_NEAREST_INT));
    if (i < n) {
        uint16_t buf[8];
        _mm_storeu_si128((__m128i *)buf,
                         _mm256_cvtps_ph(load8_tail(src, i, n - i, QV_ELEM_F32),
                                         _MM_FROUND_TO_NEAREST_INT));
        memcpy(dst + i, buf, (n - i) * sizeof buf[0]);
    }
}

static void avx2_f16_to_f32(const uint16_t *src, float *dst, size_t n)
{
    size_t i = 0;

    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, load8(src, i, QV_ELEM_F16));
    if (i < n) {
        __m256i m = _mm256_loadu_si256((const __m256i *)&tail_mask[8 - (n - i)]);
        _mm256_maskstore_ps(dst + i, m, load8_tail(src, i, n - i, QV_ELEM_F16));
    }
}

void qv__dist_fill_avx2(struct qv_dist_ops *ops)
{
    ops->level = QV_SIMD_AVX2;
    ops->dist[QV_METRIC_L2][QV_ELEM_F32] = avx2_l2_f32;
    ops->dist[QV_METRIC_IP][QV_ELEM_F32] = avx2_ip_f32;
    ops->dist[QV_METRIC_COSINE][QV_ELEM_F32] = avx2_cos_f32;
    ops->dist[QV_METRIC_L2][QV_ELEM_F16] = avx2_l2_f16;
    ops->dist[QV_METRIC_IP][QV_ELEM_F16] = avx2_ip_f16;
    ops->dist[QV_METRIC_COSINE][QV_ELEM_F16] = avx2_cos_f16;
    ops->dist[QV_METRIC_L2][QV_ELEM_I8] = avx2_l2_i8;
    ops->dist[QV_METRIC_IP][QV_ELEM_I8] = avx2_ip_i8;
    ops->dist[QV_METRIC_COSINE][QV_ELEM_I8] = avx2_cos_i8;
    ops->normalize_f32 = avx2_normalize_f32;
    ops->f32_to_f16 = avx2_f32_to_f16;
    ops->f16_to_f32 = avx2_f16_to_f32;
}
