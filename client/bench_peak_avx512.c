/*
 * bench_peak_avx512.c - the peak loops of `quiverbench peak` with zmm
 * registers.  Compiled into its own static library with only -mavx512f
 * -mfma (client/meson.build), and called only when qv_simd_detect() says
 * AVX-512 runs here; the rest of quiverbench is built for the baseline ISA.
 *
 * FMA: the loop has the shape of a GEMM micro-kernel with operands in
 * registers: 8 broadcast scalars x 2 vectors feed 16 independent
 * accumulators, acc[i][j] += b[i] * x[j], so each FMA's dependency runs
 * through its addend only.  (An earlier loop chained through the
 * multiplicand, acc = acc * b + c, and measured less than half of what
 * the flat scan itself sustains on Zen 5: a peak that a real kernel beats
 * is no peak.)  Operands are tiny (1e-9) so 16 lanes x 1e10 steps stay
 * finite; the result is stored to *sink so nothing is folded away.
 */
#include <immintrin.h>

#include "bench.h"

uint64_t qv__peak_fma_avx512(uint64_t iters, float *sink)
{
    __m512 x0 = _mm512_set1_ps(1e-9f), x1 = _mm512_set1_ps(2e-9f);
    __m512 b[8], acc0[8], acc1[8];
    for (int i = 0; i < 8; i++) {
        b[i] = _mm512_set1_ps(1e-9f * (float)(i + 1));
        acc0[i] = _mm512_setzero_ps();
        acc1[i] = _mm512_setzero_ps();
    }
    for (uint64_t it = 0; it < iters; it++) {
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) {
            acc0[i] = _mm512_fmadd_ps(b[i], x0, acc0[i]);
            acc1[i] = _mm512_fmadd_ps(b[i], x1, acc1[i]);
        }
    }
    __m512 t = _mm512_setzero_ps();
    for (int i = 0; i < 8; i++)
        t = _mm512_add_ps(t, _mm512_add_ps(acc0[i], acc1[i]));
    *sink = _mm512_reduce_add_ps(t);
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
