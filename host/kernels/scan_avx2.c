/*
 * scan_avx2.c - the fused batched scan for AVX2 + FMA.  Same design as
 * scan_avx512.c (see its header comment), with 8-lane registers: a register
 * tile is QN <= 6 queries x 1 group (16 vectors = 2 ymm) = 12 accumulators,
 * which with the two group loads and one broadcast fills the 16 ymm
 * registers.  Compiled with AVX2 flags only; reached through dispatch.
 */
#include <immintrin.h>
#include <stdint.h>

#include "kernels_int.h"
#include "quiver/topk.h"

#define QT 6
#define QV_SCAN_L2_BYTES (384u * 1024u)
#define QV_SCAN_STREAMS 4

#define ALWAYS_INLINE inline __attribute__((always_inline))

static ALWAYS_INLINE uint32_t group_mask(const struct qv_scan_args *a, size_t g)
{
    uint32_t m = 0xFFFFu;
    if (a->mask)
        m = (uint32_t)(a->mask[g / 4] >> ((g % 4) * 16)) & 0xFFFFu;
    size_t first = g * QV_BLOCK;
    if (first + QV_BLOCK > a->nvec)
        m &= (1u << (a->nvec - first)) - 1u;
    return m;
}

static ALWAYS_INLINE void tile(const struct qv_scan_args *a, size_t q0, const int QN,
                               size_t g, const int pf)
{
    const size_t dim = a->dim;
    const float *x = a->blocks + g * dim * QV_BLOCK;
    const float *q = a->queries + q0 * dim;
    __m256 lo[QT], hi[QT];

#pragma GCC unroll 6
    for (int i = 0; i < QN; i++) {
        lo[i] = _mm256_setzero_ps();
        hi[i] = _mm256_setzero_ps();
    }
    for (size_t d = 0; d < dim; d++) {
        __m256 v0 = _mm256_load_ps(x + d * QV_BLOCK);
        __m256 v1 = _mm256_load_ps(x + d * QV_BLOCK + 8);
        if (pf)
            _mm_prefetch((const char *)(x + ((size_t)a->prefetch * dim + d) * QV_BLOCK), _MM_HINT_T0);
#pragma GCC unroll 6
        for (int i = 0; i < QN; i++) {
            __m256 b = _mm256_broadcast_ss(q + (size_t)i * dim + d);
            lo[i] = _mm256_fmadd_ps(b, v0, lo[i]);
            hi[i] = _mm256_fmadd_ps(b, v1, hi[i]);
        }
    }

    uint32_t m = group_mask(a, g);
    if (!m)
        return;
    const uint64_t *ids = a->ids + g * QV_BLOCK;
    const int l2 = a->metric == QV_METRIC_L2;
    float nrm[16] __attribute__((aligned(32)));
    if (l2) {
        size_t first = g * QV_BLOCK;
        size_t left = a->nvec - first;
        for (int l = 0; l < 16; l++)
            nrm[l] = (size_t)l < left ? a->norms[first + l] : 0.0f;
    }
    __m256 n0 = l2 ? _mm256_load_ps(nrm) : _mm256_setzero_ps();
    __m256 n1 = l2 ? _mm256_load_ps(nrm + 8) : _mm256_setzero_ps();
    /* Distances and pass masks first, pushes after (a push is a call that
     * clobbers vector registers; see scan_avx512.c). */
    const __m256 m2 = _mm256_set1_ps(-2.0f);
    float dbuf[QT][QV_BLOCK] __attribute__((aligned(32)));
    uint32_t pass[QT];
    uint32_t any = 0;
#pragma GCC unroll 6
    for (int i = 0; i < QN; i++) {
        const struct qv_topk *h = &a->heaps[q0 + i];
        __m256 d0, d1;
        if (l2) {
            __m256 qn = _mm256_set1_ps(a->qnorms[q0 + i]);
            d0 = _mm256_fmadd_ps(m2, lo[i], _mm256_add_ps(qn, n0));
            d1 = _mm256_fmadd_ps(m2, hi[i], _mm256_add_ps(qn, n1));
        } else {
            d0 = _mm256_sub_ps(_mm256_setzero_ps(), lo[i]);
            d1 = _mm256_sub_ps(_mm256_setzero_ps(), hi[i]);
        }
        __m256 w = _mm256_set1_ps(h->worst);
        uint32_t p = (uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(d0, w, _CMP_LE_OQ)) |
                     ((uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(d1, w, _CMP_LE_OQ)) << 8);
        _mm256_store_ps(dbuf[i], d0);
        _mm256_store_ps(dbuf[i] + 8, d1);
        pass[i] = p & m;
        any |= pass[i];
    }
    if (!any)
        return;
    for (int i = 0; i < QN; i++) {
        uint32_t p = pass[i];
        struct qv_topk *h = &a->heaps[q0 + i];
        while (p) {
            int l = __builtin_ctz(p);
            p &= p - 1;
            qv_topk_push(h, dbuf[i][l], ids[l]);
        }
    }
}

static ALWAYS_INLINE void sweep(const struct qv_scan_args *a, size_t q0, const int QN,
                                size_t g_begin, size_t g_end, const int pf)
{
    size_t g = g_begin;
    if (QN <= 1 && g_end - g_begin >= 2 * QV_SCAN_STREAMS) {
        /* a thin tile streams from memory: several sequential streams at
         * once keep more lines in flight (see scan_avx512.c) */
        size_t part = (g_end - g_begin) / QV_SCAN_STREAMS;
        for (size_t i = 0; i < part; i++)
#pragma GCC unroll 4
            for (int s = 0; s < QV_SCAN_STREAMS; s++)
                tile(a, q0, QN, g_begin + (size_t)s * part + i, pf);
        g = g_begin + QV_SCAN_STREAMS * part;
    }
    for (; g < g_end; g++)
        tile(a, q0, QN, g, pf);
}

#define SWEEP_CASE(n) case n: \
    if (n <= 2 && a->prefetch) sweep(a, q0, n, gb, ge, 1); \
    else sweep(a, q0, n, gb, ge, 0); \
    break;

static void sweep_any(const struct qv_scan_args *a, size_t q0, size_t qn,
                      size_t gb, size_t ge)
{
    switch (qn) {
    SWEEP_CASE(1) SWEEP_CASE(2) SWEEP_CASE(3)
    SWEEP_CASE(4) SWEEP_CASE(5) SWEEP_CASE(6)
    default: break;
    }
}

void qv__scan_f32_avx2(const struct qv_scan_args *a)
{
    if (a->nq == 0 || a->nvec == 0)
        return;
    size_t ngroups = (a->nvec + QV_BLOCK - 1) / QV_BLOCK;
    size_t group_bytes = a->dim * QV_BLOCK * sizeof(float);
    size_t chunk = QV_SCAN_L2_BYTES / group_bytes;
    if (chunk < 1)
        chunk = 1;
    if (a->nq <= QT)
        chunk = ngroups;
    for (size_t gb = 0; gb < ngroups; gb += chunk) {
        size_t ge = gb + chunk < ngroups ? gb + chunk : ngroups;
        for (size_t q0 = 0; q0 < a->nq; q0 += QT) {
            size_t qn = a->nq - q0 < QT ? a->nq - q0 : QT;
            sweep_any(a, q0, qn, gb, ge);
        }
    }
}
