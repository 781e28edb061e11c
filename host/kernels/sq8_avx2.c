/*
 * sq8_avx2.c - SQ8 list kernels for AVX2 + FMA (formulas in quiver/sq8.h).
 *
 * Four code rows at a time share each load of qa/scale (or qs): 8 bytes
 * per row widen to 8 floats (vpmovzxbd + vcvtdq2ps), one FMA forms
 * qa - scale * c, a second accumulates its square.  Dimension tails go
 * through a zero-padded copy of the row's last bytes, so no load reads
 * past a row.  Compiled with -mavx2 -mfma -mf16c only.
 */
#include <immintrin.h>
#include <string.h>

#include "kernels_int.h"
#include "quiver/sq8.h"

static inline __m256 load8_u8(const uint8_t *p)
{
    __m128i b = _mm_loadl_epi64((const __m128i *)p);
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b));
}

static inline float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static float l2_tail(const float *qa, const float *scale, const uint8_t *c, size_t d0,
                     size_t dim)
{
    float s = 0.0f;
    for (size_t d = d0; d < dim; d++) {
        float t = qa[d] - scale[d] * (float)c[d];
        s += t * t;
    }
    return s;
}

static void sq8_l2_avx2(const float *qa, const float *scale, const uint8_t *codes,
                        size_t stride, size_t n, size_t dim, float *out)
{
    const size_t d8 = dim & ~(size_t)7;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const uint8_t *c0 = codes + i * stride, *c1 = c0 + stride;
        const uint8_t *c2 = c1 + stride, *c3 = c2 + stride;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (size_t d = 0; d < d8; d += 8) {
            __m256 q = _mm256_loadu_ps(qa + d), s = _mm256_loadu_ps(scale + d);
            __m256 t0 = _mm256_fnmadd_ps(s, load8_u8(c0 + d), q);
            __m256 t1 = _mm256_fnmadd_ps(s, load8_u8(c1 + d), q);
            __m256 t2 = _mm256_fnmadd_ps(s, load8_u8(c2 + d), q);
            __m256 t3 = _mm256_fnmadd_ps(s, load8_u8(c3 + d), q);
            a0 = _mm256_fmadd_ps(t0, t0, a0);
            a1 = _mm256_fmadd_ps(t1, t1, a1);
            a2 = _mm256_fmadd_ps(t2, t2, a2);
            a3 = _mm256_fmadd_ps(t3, t3, a3);
        }
        out[i] = hsum8(a0) + l2_tail(qa, scale, c0, d8, dim);
        out[i + 1] = hsum8(a1) + l2_tail(qa, scale, c1, d8, dim);
        out[i + 2] = hsum8(a2) + l2_tail(qa, scale, c2, d8, dim);
        out[i + 3] = hsum8(a3) + l2_tail(qa, scale, c3, d8, dim);
    }
    for (; i < n; i++) {
        const uint8_t *c = codes + i * stride;
        __m256 a = _mm256_setzero_ps();
        for (size_t d = 0; d < d8; d += 8) {
            __m256 t = _mm256_fnmadd_ps(_mm256_loadu_ps(scale + d), load8_u8(c + d),
                                        _mm256_loadu_ps(qa + d));
            a = _mm256_fmadd_ps(t, t, a);
        }
        out[i] = hsum8(a) + l2_tail(qa, scale, c, d8, dim);
    }
}

static float ip_tail(const float *qs, const uint8_t *c, size_t d0, size_t dim)
{
    float s = 0.0f;
    for (size_t d = d0; d < dim; d++)
        s += qs[d] * (float)c[d];
    return s;
}

static void sq8_ip_avx2(const float *qs, float bias, const uint8_t *codes, size_t stride,
                        size_t n, size_t dim, float *out)
{
    const size_t d8 = dim & ~(size_t)7;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const uint8_t *c0 = codes + i * stride, *c1 = c0 + stride;
        const uint8_t *c2 = c1 + stride, *c3 = c2 + stride;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (size_t d = 0; d < d8; d += 8) {
            __m256 q = _mm256_loadu_ps(qs + d);
            a0 = _mm256_fmadd_ps(q, load8_u8(c0 + d), a0);
            a1 = _mm256_fmadd_ps(q, load8_u8(c1 + d), a1);
            a2 = _mm256_fmadd_ps(q, load8_u8(c2 + d), a2);
            a3 = _mm256_fmadd_ps(q, load8_u8(c3 + d), a3);
        }
        out[i] = bias - (hsum8(a0) + ip_tail(qs, c0, d8, dim));
        out[i + 1] = bias - (hsum8(a1) + ip_tail(qs, c1, d8, dim));
        out[i + 2] = bias - (hsum8(a2) + ip_tail(qs, c2, d8, dim));
        out[i + 3] = bias - (hsum8(a3) + ip_tail(qs, c3, d8, dim));
    }
    for (; i < n; i++) {
        const uint8_t *c = codes + i * stride;
        __m256 a = _mm256_setzero_ps();
        for (size_t d = 0; d < d8; d += 8)
            a = _mm256_fmadd_ps(_mm256_loadu_ps(qs + d), load8_u8(c + d), a);
        out[i] = bias - (hsum8(a) + ip_tail(qs, c, d8, dim));
    }
}

const struct qv_sq8_kernels qv__sq8_kernels_avx2 = {
    .level = QV_SIMD_AVX2,
    .l2 = sq8_l2_avx2,
    .ip = sq8_ip_avx2,
};
