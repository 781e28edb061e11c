/*
 * scan_avx512.c - the fused batched scan (queries x blocked vectors ->
 * top-k) for AVX-512.  Compiled with AVX-512 flags only; reached through
 * the dispatch table (dist.h), never called directly.
 *
 * Design.  The distance work of a batch is a matrix product Q.X^T, so the
 * scan is built like a GEMM micro-kernel, with the top-k selection fused
 * where a GEMM would store its tile:
 *
 *   register tile   QN <= 12 queries x 2 groups (32 vectors) = 24 zmm
 *                   accumulators.  Per dimension d: 2 vector loads of the
 *                   groups' row d, QN scalar broadcasts of q[i][d] (folded
 *                   into the FMA as an embedded broadcast) and 2*QN FMAs,
 *                   so the two FMA pipes are the bound, not the loads.
 *   cache tile      a chunk of groups sized to stay in L2 (QV_SCAN_L2_BYTES)
 *                   is swept by every query tile before the next chunk is
 *                   read from memory, so each vector crosses the memory bus
 *                   once per call however many queries there are.
 *   top-k           after a tile, distances are formed in registers
 *                   (L2: |q|^2 + |x|^2 - 2 q.x; IP: -q.x), compared with
 *                   each query's current worst kept distance, masked by
 *                   eligibility, and only the lanes that pass are pushed
 *                   into the heap (rare once the heap is warm).  The n x nq
 *                   distance matrix never exists.
 *   prefetch        with few queries the scan streams from DRAM; the next
 *                   groups are prefetched a fixed distance ahead.
 *
 * Cost: 2 * nq * nvec * dim flops; memory: nvec * (dim + 1) * 4 bytes read
 * once per chunk.  No allocation, no locks, no syscalls.
 */
#include <immintrin.h>
#include <stdint.h>

#include "kernels_int.h"
#include "quiver/topk.h"

#define QT 12                       /* queries per register tile */
#define QV_SCAN_L2_BYTES (384u * 1024u)
#define PF_AHEAD 4                  /* groups ahead for prefetch */

#define ALWAYS_INLINE inline __attribute__((always_inline))

/* 16-bit eligibility mask of group g (lanes beyond nvec cleared). */
static ALWAYS_INLINE __mmask16 group_mask(const struct qv_scan_args *a, size_t g)
{
    uint32_t m = 0xFFFFu;
    if (a->mask)
        m = (uint32_t)(a->mask[g / 4] >> ((g % 4) * 16)) & 0xFFFFu;
    size_t first = g * QV_BLOCK;
    if (first + QV_BLOCK > a->nvec)
        m &= (1u << (a->nvec - first)) - 1u;
    return (__mmask16)m;
}

static ALWAYS_INLINE void push_lanes(struct qv_topk *h, __m512 dv, __mmask16 m,
                                     const uint64_t *ids)
{
    float tmp[16] __attribute__((aligned(64)));
    _mm512_store_ps(tmp, dv);
    uint32_t bits = m;
    while (bits) {
        int l = __builtin_ctz(bits);
        bits &= bits - 1;
        qv_topk_push(h, tmp[l], ids[l]);
    }
}

/* One register tile: QN queries starting at q0 against groups g and g+1
 * (ng = 1 or 2 of them). */
static ALWAYS_INLINE void tile(const struct qv_scan_args *a, size_t q0, const int QN,
                               size_t g, const int ng, const int pf)
{
    const size_t dim = a->dim;
    const float *x0 = a->blocks + g * dim * QV_BLOCK;
    const float *x1 = x0 + dim * QV_BLOCK;
    const float *q = a->queries + q0 * dim;
    __m512 acc0[QT], acc1[QT];

#pragma GCC unroll 12
    for (int i = 0; i < QN; i++) {
        acc0[i] = _mm512_setzero_ps();
        acc1[i] = _mm512_setzero_ps();
    }
    if (ng == 2) {
        for (size_t d = 0; d < dim; d++) {
            __m512 v0 = _mm512_load_ps(x0 + d * QV_BLOCK);
            __m512 v1 = _mm512_load_ps(x1 + d * QV_BLOCK);
            if (pf)
                _mm_prefetch((const char *)(x0 + (PF_AHEAD * dim + d) * QV_BLOCK),
                             _MM_HINT_T0);
#pragma GCC unroll 12
            for (int i = 0; i < QN; i++) {
                __m512 b = _mm512_set1_ps(q[(size_t)i * dim + d]);
                acc0[i] = _mm512_fmadd_ps(b, v0, acc0[i]);
                acc1[i] = _mm512_fmadd_ps(b, v1, acc1[i]);
            }
        }
    } else {
        for (size_t d = 0; d < dim; d++) {
            __m512 v0 = _mm512_load_ps(x0 + d * QV_BLOCK);
#pragma GCC unroll 12
            for (int i = 0; i < QN; i++) {
                __m512 b = _mm512_set1_ps(q[(size_t)i * dim + d]);
                acc0[i] = _mm512_fmadd_ps(b, v0, acc0[i]);
            }
        }
    }

    __mmask16 m0 = group_mask(a, g);
    __mmask16 m1 = ng == 2 ? group_mask(a, g + 1) : 0;
    const uint64_t *ids0 = a->ids + g * QV_BLOCK;
    const int l2 = a->metric == QV_METRIC_L2;
    __m512 n0 = _mm512_setzero_ps(), n1 = _mm512_setzero_ps();
    if (l2) {
        /* norms are padded to whole groups by the segment store, but the
         * last group of a caller's array may be partial: mask the load. */
        size_t first = g * QV_BLOCK;
        size_t left = a->nvec - first;
        n0 = _mm512_maskz_loadu_ps(left >= 16 ? 0xFFFF : (__mmask16)((1u << left) - 1u),
                                   a->norms + first);
        if (ng == 2 && left > 16) {
            size_t left1 = left - 16;
            n1 = _mm512_maskz_loadu_ps(left1 >= 16 ? 0xFFFF
                                                   : (__mmask16)((1u << left1) - 1u),
                                       a->norms + first + 16);
        }
    }
    const __m512 m2 = _mm512_set1_ps(-2.0f);
#pragma GCC unroll 12
    for (int i = 0; i < QN; i++) {
        struct qv_topk *h = &a->heaps[q0 + i];
        __m512 d0, d1;
        if (l2) {
            __m512 qn = _mm512_set1_ps(a->qnorms[q0 + i]);
            d0 = _mm512_fmadd_ps(m2, acc0[i], _mm512_add_ps(qn, n0));
            d1 = _mm512_fmadd_ps(m2, acc1[i], _mm512_add_ps(qn, n1));
        } else {
            d0 = _mm512_sub_ps(_mm512_setzero_ps(), acc0[i]);
            d1 = _mm512_sub_ps(_mm512_setzero_ps(), acc1[i]);
        }
        __m512 w = _mm512_set1_ps(h->worst);
        __mmask16 p0 = _mm512_mask_cmp_ps_mask(m0, d0, w, _CMP_LE_OQ);
        if (p0)
            push_lanes(h, d0, p0, ids0);
        if (ng == 2) {
            w = _mm512_set1_ps(h->worst);
            __mmask16 p1 = _mm512_mask_cmp_ps_mask(m1, d1, w, _CMP_LE_OQ);
            if (p1)
                push_lanes(h, d1, p1, ids0 + QV_BLOCK);
        }
    }
}

/* All groups [g_begin, g_end) against queries [q0, q0 + QN). */
static ALWAYS_INLINE void sweep(const struct qv_scan_args *a, size_t q0, const int QN,
                                size_t g_begin, size_t g_end)
{
    size_t g = g_begin;
    const int pf = QN <= 4;
    for (; g + 2 <= g_end; g += 2)
        tile(a, q0, QN, g, 2, pf);
    if (g < g_end)
        tile(a, q0, QN, g, 1, 0);
}

#define SWEEP_CASE(n) case n: sweep(a, q0, n, gb, ge); break;

static void sweep_any(const struct qv_scan_args *a, size_t q0, size_t qn,
                      size_t gb, size_t ge)
{
    switch (qn) {
    SWEEP_CASE(1) SWEEP_CASE(2) SWEEP_CASE(3) SWEEP_CASE(4)
    SWEEP_CASE(5) SWEEP_CASE(6) SWEEP_CASE(7) SWEEP_CASE(8)
    SWEEP_CASE(9) SWEEP_CASE(10) SWEEP_CASE(11) SWEEP_CASE(12)
    default: break;
    }
}

void qv__scan_f32_avx512(const struct qv_scan_args *a)
{
    if (a->nq == 0 || a->nvec == 0)
        return;
    size_t ngroups = (a->nvec + QV_BLOCK - 1) / QV_BLOCK;
    size_t group_bytes = a->dim * QV_BLOCK * sizeof(float);
    size_t chunk = QV_SCAN_L2_BYTES / group_bytes;
    if (chunk < 2)
        chunk = 2;
    chunk &= ~(size_t)1;
    if (a->nq <= QT)
        chunk = ngroups;            /* one query tile: no reuse to block for */
    for (size_t gb = 0; gb < ngroups; gb += chunk) {
        size_t ge = gb + chunk < ngroups ? gb + chunk : ngroups;
        for (size_t q0 = 0; q0 < a->nq; q0 += QT) {
            size_t qn = a->nq - q0 < QT ? a->nq - q0 : QT;
            sweep_any(a, q0, qn, gb, ge);
        }
    }
}
