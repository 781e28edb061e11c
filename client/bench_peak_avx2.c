/*
 * bench_peak_avx2.c - the peak loops of `quiverbench peak` with ymm
 * registers, for CPUs without AVX-512.  Own static library, compiled with
 * only -mavx2 -mfma; called only when qv_simd_detect() >= QV_SIMD_AVX2.
 *
 * FMA: 12 independent accumulators (16 ymm registers: 12 chains plus the
 * two operands), enough to cover a 4-5 cycle latency on two FMA pipes.
 * The recurrence is the one of bench_peak_avx512.c.
 */
#include <immintrin.h>

#include "bench.h"

static float hsum256(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

uint64_t qv__peak_fma_avx2(uint64_t iters, float *sink)
{
    /* GEMM-shaped, as in bench_peak_avx512.c: 5 broadcasts x 2 vectors
     * into 10 accumulators, dependencies through the addend only. */
    __m256 x0 = _mm256_set1_ps(1e-9f), x1 = _mm256_set1_ps(2e-9f);
    __m256 b[5], acc0[5], acc1[5];
    for (int i = 0; i < 5; i++) {
        b[i] = _mm256_set1_ps(1e-9f * (float)(i + 1));
        acc0[i] = _mm256_setzero_ps();
        acc1[i] = _mm256_setzero_ps();
    }
    for (uint64_t it = 0; it < iters; it++) {
#pragma GCC unroll 5
        for (int i = 0; i < 5; i++) {
            acc0[i] = _mm256_fmadd_ps(b[i], x0, acc0[i]);
            acc1[i] = _mm256_fmadd_ps(b[i], x1, acc1[i]);
        }
    }
    __m256 t = _mm256_setzero_ps();
    for (int i = 0; i < 5; i++)
        t = _mm256_add_ps(t, _mm256_add_ps(acc0[i], acc1[i]));
    *sink = hsum256(t);
    /* 10 accumulators x 8 lanes x 2 flops per iteration */
    return iters * 10u * 8u * 2u;
}

/* 256 floats (32 ymm loads) per step into 8 accumulators. */
float qv__peak_read_avx2(const float *p, size_t n)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    __m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    __m256 s4 = _mm256_setzero_ps(), s5 = _mm256_setzero_ps();
    __m256 s6 = _mm256_setzero_ps(), s7 = _mm256_setzero_ps();

    for (size_t i = 0; i < n; i += 256) {
        for (size_t j = 0; j < 256; j += 64) {
            const float *q = p + i + j;
            s0 = _mm256_add_ps(s0, _mm256_load_ps(q + 0));
            s1 = _mm256_add_ps(s1, _mm256_load_ps(q + 8));
            s2 = _mm256_add_ps(s2, _mm256_load_ps(q + 16));
            s3 = _mm256_add_ps(s3, _mm256_load_ps(q + 24));
            s4 = _mm256_add_ps(s4, _mm256_load_ps(q + 32));
            s5 = _mm256_add_ps(s5, _mm256_load_ps(q + 40));
            s6 = _mm256_add_ps(s6, _mm256_load_ps(q + 48));
            s7 = _mm256_add_ps(s7, _mm256_load_ps(q + 56));
        }
    }
    s0 = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
    s4 = _mm256_add_ps(_mm256_add_ps(s4, s5), _mm256_add_ps(s6, s7));
    return hsum256(_mm256_add_ps(s0, s4));
}
