/*
 * bench_peak_avx512.c - the peak loops of `quiverbench peak` with zmm
 * registers.  Compiled into its own static library with only -mavx512f
 * -mfma (client/meson.build), and called only when qv_simd_detect() says
 * AVX-512 runs here; the rest of quiverbench is built for the baseline ISA.
 *
 * FMA: 16 independent accumulators.  A zmm FMA has a latency of about 4
 * cycles and up to 2 issue per cycle, so at least 8 chains are needed to
 * keep both pipes busy; 16 leaves a margin and still fits the 32 registers
 * with the two operands.  acc = acc * b + c with b just below 1 converges
 * to c / (1 - b): no overflow, no denormals, and the compiler cannot fold
 * the chain away because the result is stored to *sink.
 */
#include <immintrin.h>

#include "bench.h"

uint64_t qv__peak_fma_avx512(uint64_t iters, float *sink)
{
    const __m512 b = _mm512_set1_ps(0.9999999f);
    const __m512 c = _mm512_set1_ps(1e-7f);
    __m512 a0 = _mm512_set1_ps(0.1f), a1 = _mm512_set1_ps(0.2f);
    __m512 a2 = _mm512_set1_ps(0.3f), a3 = _mm512_set1_ps(0.4f);
    __m512 a4 = _mm512_set1_ps(0.5f), a5 = _mm512_set1_ps(0.6f);
    __m512 a6 = _mm512_set1_ps(0.7f), a7 = _mm512_set1_ps(0.8f);
    __m512 a8 = _mm512_set1_ps(0.9f), a9 = _mm512_set1_ps(1.0f);
    __m512 a10 = _mm512_set1_ps(1.1f), a11 = _mm512_set1_ps(1.2f);
    __m512 a12 = _mm512_set1_ps(1.3f), a13 = _mm512_set1_ps(1.4f);
    __m512 a14 = _mm512_set1_ps(1.5f), a15 = _mm512_set1_ps(1.6f);

    for (uint64_t i = 0; i < iters; i++) {
        a0 = _mm512_fmadd_ps(a0, b, c);
        a1 = _mm512_fmadd_ps(a1, b, c);
        a2 = _mm512_fmadd_ps(a2, b, c);
        a3 = _mm512_fmadd_ps(a3, b, c);
        a4 = _mm512_fmadd_ps(a4, b, c);
        a5 = _mm512_fmadd_ps(a5, b, c);
        a6 = _mm512_fmadd_ps(a6, b, c);
        a7 = _mm512_fmadd_ps(a7, b, c);
        a8 = _mm512_fmadd_ps(a8, b, c);
        a9 = _mm512_fmadd_ps(a9, b, c);
        a10 = _mm512_fmadd_ps(a10, b, c);
        a11 = _mm512_fmadd_ps(a11, b, c);
        a12 = _mm512_fmadd_ps(a12, b, c);
        a13 = _mm512_fmadd_ps(a13, b, c);
        a14 = _mm512_fmadd_ps(a14, b, c);
        a15 = _mm512_fmadd_ps(a15, b, c);
    }
    a0 = _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
    a4 = _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7));
    a8 = _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11));
    a12 = _mm512_add_ps(_mm512_add_ps(a12, a13), _mm512_add_ps(a14, a15));
    a0 = _mm512_add_ps(_mm512_add_ps(a0, a4), _mm512_add_ps(a8, a12));
    *sink = _mm512_reduce_add_ps(a0);
    /* 16 accumulators x 16 lanes x 2 flops per iteration */
    return iters * 16u * 16u * 2u;
}

/* 256 floats (16 zmm loads, 1 KiB) per step into 8 accumulators. */
float qv__peak_read_avx512(const float *p, size_t n)
{
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    __m512 s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
    __m512 s4 = _mm512_setzero_ps(), s5 = _mm512_setzero_ps();
    __m512 s6 = _mm512_setzero_ps(), s7 = _mm512_setzero_ps();

    for (size_t i = 0; i < n; i += 256) {
        const float *q = p + i;
        s0 = _mm512_add_ps(s0, _mm512_load_ps(q + 0));
        s1 = _mm512_add_ps(s1, _mm512_load_ps(q + 16));
        s2 = _mm512_add_ps(s2, _mm512_load_ps(q + 32));
        s3 = _mm512_add_ps(s3, _mm512_load_ps(q + 48));
        s4 = _mm512_add_ps(s4, _mm512_load_ps(q + 64));
        s5 = _mm512_add_ps(s5, _mm512_load_ps(q + 80));
        s6 = _mm512_add_ps(s6, _mm512_load_ps(q + 96));
        s7 = _mm512_add_ps(s7, _mm512_load_ps(q + 112));
        s0 = _mm512_add_ps(s0, _mm512_load_ps(q + 128));
        s1 = _mm512_add_ps(s1, _mm512_load_ps(q + 144));
        s2 = _mm512_add_ps(s2, _mm512_load_ps(q + 160));
        s3 = _mm512_add_ps(s3, _mm512_load_ps(q + 176));
        s4 = _mm512_add_ps(s4, _mm512_load_ps(q + 192));
        s5 = _mm512_add_ps(s5, _mm512_load_ps(q + 208));
        s6 = _mm512_add_ps(s6, _mm512_load_ps(q + 224));
        s7 = _mm512_add_ps(s7, _mm512_load_ps(q + 240));
    }
    s0 = _mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3));
    s4 = _mm512_add_ps(_mm512_add_ps(s4, s5), _mm512_add_ps(s6, s7));
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s4));
}
