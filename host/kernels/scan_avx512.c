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
#define QV_SCAN_PACK_DIM 1024
#define QV_SCAN_THIN 2              /* tiles of <= this many queries are memory-bound */
#define QV_SCAN_STREAMS 4           /* concurrent sequential streams for thin tiles */       /* transposed query tile: 64 KiB of stack */

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

/* One register tile: QN queries starting at q0 against groups g and g+1
 * (ng = 1 or 2 of them). */
static ALWAYS_INLINE void tile(const struct qv_scan_args *a, const float *qt, const int packed,
                               size_t q0, const int QN, size_t g, const int ng, const int pf)
{
    const size_t dim = a->dim;
    const float *x0 = a->blocks + g * dim * QV_BLOCK;
    const float *x1 = x0 + dim * QV_BLOCK;
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
                _mm_prefetch((const char *)(x0 + ((size_t)a->prefetch * dim + d) * QV_BLOCK),
                             _MM_HINT_T0);
#pragma GCC unroll 12
            for (int i = 0; i < QN; i++) {
                __m512 b = _mm512_set1_ps((packed ? qt[d * QV_BLOCK + i] : a->queries[(q0 + i) * dim + d]));
                acc0[i] = _mm512_fmadd_ps(b, v0, acc0[i]);
                acc1[i] = _mm512_fmadd_ps(b, v1, acc1[i]);
            }
        }
    } else {
        for (size_t d = 0; d < dim; d++) {
            __m512 v0 = _mm512_load_ps(x0 + d * QV_BLOCK);
#pragma GCC unroll 12
            for (int i = 0; i < QN; i++) {
                __m512 b = _mm512_set1_ps((packed ? qt[d * QV_BLOCK + i] : a->queries[(q0 + i) * dim + d]));
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
    /* Distances and pass masks for every query first, pushes after: a
     * push is a call, which clobbers every vector register, so calls made
     * while accumulators are still live would make the compiler keep the
     * accumulators in memory for the whole tile (measured: half the FMA
     * rate).  Heap i only changes by pushes of query i, so comparing all
     * queries against their worst before any push is exact. */
    const __m512 m2 = _mm512_set1_ps(-2.0f);
    float dbuf[QT][2 * QV_BLOCK] __attribute__((aligned(64)));
    uint32_t pass[QT];
    uint32_t any = 0;
#pragma GCC unroll 12
    for (int i = 0; i < QN; i++) {
        const struct qv_topk *h = &a->heaps[q0 + i];
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
        uint32_t p0 = _mm512_mask_cmp_ps_mask(m0, d0, w, _CMP_LE_OQ);
        uint32_t p1 = ng == 2 ? _mm512_mask_cmp_ps_mask(m1, d1, w, _CMP_LE_OQ) : 0;
        _mm512_store_ps(dbuf[i], d0);
        _mm512_store_ps(dbuf[i] + QV_BLOCK, d1);
        pass[i] = p0 | p1 << 16;
        any |= pass[i];
    }
    if (!any)
        return;
    for (int i = 0; i < QN; i++) {
        uint32_t bits = pass[i];
        struct qv_topk *h = &a->heaps[q0 + i];
        while (bits) {
            int l = __builtin_ctz(bits);
            bits &= bits - 1;
            qv_topk_push(h, dbuf[i][l], ids0[l]);
        }
    }
}

/* All groups [g_begin, g_end) against queries [q0, q0 + QN). */
static ALWAYS_INLINE void sweep(const struct qv_scan_args *a, const float *qt,
                                const int packed, size_t q0, const int QN,
                                size_t g_begin, size_t g_end, const int pf)
{
    size_t g = g_begin;
    if (QN <= QV_SCAN_THIN && g_end - g_begin >= 4 * QV_SCAN_STREAMS) {
        /* Thin tiles stream from memory: walk QV_SCAN_STREAMS distant parts
         * of the range in turn, so the hardware prefetchers run that many
         * sequential streams at once (one stream per core measured ~45,
         * four ~80 GB/s on two Zen 5 cores). */
        size_t part = ((g_end - g_begin) / QV_SCAN_STREAMS) & ~(size_t)1;
        for (size_t i = 0; i < part; i += 2)
#pragma GCC unroll 4
            for (int s = 0; s < QV_SCAN_STREAMS; s++)
                tile(a, qt, packed, q0, QN, g_begin + (size_t)s * part + i, 2, pf);
        g = g_begin + QV_SCAN_STREAMS * part;
    }
    for (; g + 2 <= g_end; g += 2)
        tile(a, qt, packed, q0, QN, g, 2, pf);
    if (g < g_end)
        tile(a, qt, packed, q0, QN, g, 1, 0);
}

/* software prefetch only for thin tiles (streaming from memory), and only
 * when asked for: on Zen 5 the hardware prefetcher alone measured faster */
#define SWEEP_CASE(n) case n: \
    if (n <= 4 && a->prefetch) sweep(a, qt, packed, q0, n, gb, ge, 1); \
    else sweep(a, qt, packed, q0, n, gb, ge, 0); \
    break;

/* Sweep groups [gb, ge) with queries [q0, q0 + qn).  When dim <=
 * QV_SCAN_PACK_DIM the caller has transposed the query tile into qt
 * (dimension-major, 16 floats per dimension), so the inner loop broadcasts
 * from one pointer at fixed offsets; with qn row pointers instead, the
 * register allocator spills inside the loop and the FMA rate halves.
 * Larger dims (rare) read the rows in place (qt == NULL). */
static ALWAYS_INLINE void sweep_any(const struct qv_scan_args *a, const float *qt,
                                    const int packed, size_t q0, size_t qn,
                                    size_t gb, size_t ge)
{
    switch (qn) {
    SWEEP_CASE(1) SWEEP_CASE(2) SWEEP_CASE(3) SWEEP_CASE(4)
    SWEEP_CASE(5) SWEEP_CASE(6) SWEEP_CASE(7) SWEEP_CASE(8)
    SWEEP_CASE(9) SWEEP_CASE(10) SWEEP_CASE(11) SWEEP_CASE(12)
    default: break;
    }
}

static void sweep_packed(const struct qv_scan_args *a, const float *qt, size_t q0,
                         size_t qn, size_t gb, size_t ge)
{
    sweep_any(a, qt, 1, q0, qn, gb, ge);
}

static void sweep_rows(const struct qv_scan_args *a, size_t q0, size_t qn,
                       size_t gb, size_t ge)
{
    sweep_any(a, NULL, 0, q0, qn, gb, ge);
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
    float qt[QV_SCAN_PACK_DIM * QV_BLOCK] __attribute__((aligned(64)));
    for (size_t gb = 0; gb < ngroups; gb += chunk) {
        size_t ge = gb + chunk < ngroups ? gb + chunk : ngroups;
        for (size_t q0 = 0; q0 < a->nq; q0 += QT) {
            size_t qn = a->nq - q0 < QT ? a->nq - q0 : QT;
            if (a->dim <= QV_SCAN_PACK_DIM) {
                for (size_t d = 0; d < a->dim; d++)
                    for (size_t i = 0; i < qn; i++)
                        qt[d * QV_BLOCK + i] = a->queries[(q0 + i) * a->dim + d];
                sweep_packed(a, qt, q0, qn, gb, ge);
            } else {
                sweep_rows(a, q0, qn, gb, ge);
            }
        }
    }
}
