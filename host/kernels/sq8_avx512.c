/*
 * sq8_avx512.c - SQ8 list kernels for AVX-512 (formulas in quiver/sq8.h).
 *
 * Four code rows at a time share each load of qa/scale (or qs): 16 bytes
 * per row widen to 16 floats (vpmovzxbd + vcvtdq2ps), one FMA forms
 * qa - scale * c, a second accumulates its square.  The dimension tail is
 * one masked pass (masked byte loads never touch memory past the row), so
 * every dim is handled without a scalar loop.  Compiled with AVX-512 flags
 * only.
 */
#include <immintrin.h>

#include "kernels_int.h"
#include "quiver/sq8.h"

static inline __m512 load16_u8(const uint8_t *p, __mmask16 m)
{
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, p)));
}

static void sq8_l2_avx512(const float *qa, const float *scale, const uint8_t *codes,
                          size_t stride, size_t n, size_t dim, float *out)
{
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const uint8_t *c0 = codes + i * stride, *c1 = c0 + stride;
        const uint8_t *c2 = c1 + stride, *c3 = c2 + stride;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (size_t d = 0; d < dim; d += 16) {
            __mmask16 m = dim - d >= 16 ? 0xFFFF : (__mmask16)((1u << (dim - d)) - 1u);
            __m512 q = _mm512_maskz_loadu_ps(m, qa + d);
            __m512 s = _mm512_maskz_loadu_ps(m, scale + d);
            __m512 t0 = _mm512_fnmadd_ps(s, load16_u8(c0 + d, m), q);
            __m512 t1 = _mm512_fnmadd_ps(s, load16_u8(c1 + d, m), q);
            __m512 t2 = _mm512_fnmadd_ps(s, load16_u8(c2 + d, m), q);
            __m512 t3 = _mm512_fnmadd_ps(s, load16_u8(c3 + d, m), q);
            a0 = _mm512_fmadd_ps(t0, t0, a0);
            a1 = _mm512_fmadd_ps(t1, t1, a1);
            a2 = _mm512_fmadd_ps(t2, t2, a2);
            a3 = _mm512_fmadd_ps(t3, t3, a3);
        }
        out[i] = _mm512_reduce_add_ps(a0);
        out[i + 1] = _mm512_reduce_add_ps(a1);
        out[i + 2] = _mm512_reduce_add_ps(a2);
        out[i + 3] = _mm512_reduce_add_ps(a3);
    }
    for (; i < n; i++) {
        const uint8_t *c = codes + i * stride;
        __m512 a = _mm512_setzero_ps();
        for (size_t d = 0; d < dim; d += 16) {
            __mmask16 m = dim - d >= 16 ? 0xFFFF : (__mmask16)((1u << (dim - d)) - 1u);
            __m512 t = _mm512_fnmadd_ps(_mm512_maskz_loadu_ps(m, scale + d),
                                        load16_u8(c + d, m), _mm512_maskz_loadu_ps(m, qa + d));
            a = _mm512_fmadd_ps(t, t, a);
        }
        out[i] = _mm512_reduce_add_ps(a);
    }
}

static void sq8_ip_avx512(const float *qs, float bias, const uint8_t *codes, size_t stride,
                          size_t n, size_t dim, float *out)
{
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const uint8_t *c0 = codes + i * stride, *c1 = c0 + stride;
        const uint8_t *c2 = c1 + stride, *c3 = c2 + stride;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (size_t d = 0; d < dim; d += 16) {
            __mmask16 m = dim - d >= 16 ? 0xFFFF : (__mmask16)((1u << (dim - d)) - 1u);
            __m512 q = _mm512_maskz_loadu_ps(m, qs + d);
            a0 = _mm512_fmadd_ps(q, load16_u8(c0 + d, m), a0);
            a1 = _mm512_fmadd_ps(q, load16_u8(c1 + d, m), a1);
            a2 = _mm512_fmadd_ps(q, load16_u8(c2 + d, m), a2);
            a3 = _mm512_fmadd_ps(q, load16_u8(c3 + d, m), a3);
        }
        out[i] = bias - _mm512_reduce_add_ps(a0);
        out[i + 1] = bias - _mm512_reduce_add_ps(a1);
        out[i + 2] = bias - _mm512_reduce_add_ps(a2);
        out[i + 3] = bias - _mm512_reduce_add_ps(a3);
    }
    for (; i < n; i++) {
        const uint8_t *c = codes + i * stride;
        __m512 a = _mm512_setzero_ps();
        for (size_t d = 0; d < dim; d += 16) {
            __mmask16 m = dim - d >= 16 ? 0xFFFF : (__mmask16)((1u << (dim - d)) - 1u);
            a = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, qs + d), load16_u8(c + d, m), a);
        }
        out[i] = bias - _mm512_reduce_add_ps(a);
    }
}

const struct qv_sq8_kernels qv__sq8_kernels_avx512 = {
    .level = QV_SIMD_AVX512,
    .l2 = sq8_l2_avx512,
    .ip = sq8_ip_avx512,
};
