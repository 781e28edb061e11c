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
    const __m256 b = _mm256_set1_ps(0.9999999f);
    const __m256 c = _mm256_set1_ps(1e-7f);
    __m256 a0 = _mm256_set1_ps(0.1f), a1 = _mm256_set1_ps(0.2f);
    __m256 a2 = _mm256_set1_ps(0.3f), a3 = _mm256_set1_ps(0.4f);
    __m256 a4 = _mm256_set1_ps(0.5f), a5 = _mm256_set1_ps(0.6f);
    __m256 a6 = _mm256_set1_ps(0.7f), a7 = _mm256_set1_ps(0.8f);
    __m256 a8 = _mm256_set1_ps(0.9f), a9 = _mm256_set1_ps(1.0f);
    __m256 a10 = _mm256_set1_ps(1.1f), a11 = _mm256_set1_ps(1.2f);

    for (uint64_t i = 0; i < iters; i++) {
        a0 = _mm256_fmadd_ps(a0, b, c);
        a1 = _mm256_fmadd_ps(a1, b, c);
        a2 = _mm256_fmadd_ps(a2, b, c);
        a3 = _mm256_fmadd_ps(a3, b, c);
        a4 = _mm256_fmadd_ps(a4, b, c);
        a5 = _mm256_fmadd_ps(a5, b, c);
        a6 = _mm256_fmadd_ps(a6, b, c);
        a7 = _mm256_fmadd_ps(a7, b, c);
        a8 = _mm256_fmadd_ps(a8, b, c);
        a9 = _mm256_fmadd_ps(a9, b, c);
        a10 = _mm256_fmadd_ps(a10, b, c);
        a11 = _mm256_fmadd_ps(a11, b, c);
    }
    a0 = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
    a4 = _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7));
    a8 = _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11));
    *sink = hsum256(_mm256_add_ps(_mm256_add_ps(a0, a4), a8));
    /* 12 accumulators x 8 lanes x 2 flops per iteration */
    return iters * 12u * 8u * 2u;
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
