/*
 * cpu_flat.c - the CPU engine's scanners of QV_WU_FLAT lists (float32 in
 * the blocked layout of dist.h, |x|^2 per entry for L2) and QV_WU_F16
 * lists (the same layout in IEEE binary16).
 *
 * A call scans one list for a group of queries with the fused batched
 * kernel (qv_kernels()->scan_f32), QV_CPU_FLAT_QCHUNK queries at a time:
 * the kernel keeps register tiles of 12 queries x 32 vectors, so each
 * vector of the list is loaded once per tile instead of once per query.
 * The group's queries, |q|^2 and heap descriptors are gathered into the
 * worker's scratch (the heap descriptors point at the caller's slots and
 * are copied back afterwards); a group that is already consecutive in the
 * unit (query-major runs: one query) is passed in place.  With a filter,
 * the eligibility mask of the list's entries is built from rows[] once per
 * call: O(n) bit lookups next to the O(n dim nq) scan.
 *
 * F16 lists are widened to float32 a chunk at a time (f16_to_f32 of the
 * active SIMD level, F16C: one conversion per element per call, against
 * nq multiply-adds per element in the scan) and each chunk is scanned as
 * a FLAT list; a chunk is a multiple of 64 entries (whole mask words)
 * holding about QV_CPU_F16_CHUNK_BYTES of floats, so it stays in L2.
 *
 * Scratch layout (each part 64-byte aligned):
 *   queries   QCHUNK x dim floats
 *   qnorms    QCHUNK floats
 *   heaps     QCHUNK struct qv_topk
 *   mask      ceil(max list n / 64) words
 *   widened   (F16 only) chunk entries x dim floats
 */
#include <string.h>

#include "cpu_int.h"
#include "quiver/topk.h"

#define QV_CPU_FLAT_QCHUNK 96u
#define QV_CPU_F16_CHUNK_BYTES (256u * 1024u)

static size_t al64(size_t b) { return (b + 63) & ~(size_t)63; }

/* Entries per widened F16 chunk: a multiple of 64, at least 64. */
static size_t f16_chunk(size_t dim)
{
    size_t c = QV_CPU_F16_CHUNK_BYTES / (dim * sizeof(float)) / 64 * 64;
    return c ? c : 64;
}

size_t qv__cpu_scratch_flat(const struct qv_work_unit *wu)
{
    uint32_t maxn = 0;
    for (uint32_t l = 0; l < wu->nlists; l++)
        if (wu->lists[l].n > maxn)
            maxn = wu->lists[l].n;
    return al64((size_t)QV_CPU_FLAT_QCHUNK * wu->dim * sizeof(float))
         + al64(QV_CPU_FLAT_QCHUNK * sizeof(float))
         + al64(QV_CPU_FLAT_QCHUNK * sizeof(struct qv_topk))
         + al64(((size_t)maxn / 64 + 1) * sizeof(uint64_t));
}

size_t qv__cpu_scratch_f16(const struct qv_work_unit *wu)
{
    return qv__cpu_scratch_flat(wu) + al64(f16_chunk(wu->dim) * wu->dim * sizeof(float));
}

/* Scan entries [off, off + nvec) of list li, whose float32 blocks are at
 * blocks (the list's own, or a widened chunk), for the group of queries. */
static void scan_range(const struct qv_work_unit *wu, uint32_t li, const uint32_t *qidx,
                       uint32_t nq, struct qv_topk *heaps, void *scratch,
                       const float *blocks, size_t off, size_t nvec, const uint64_t *mask);

static uint64_t *build_mask(const struct qv_work_unit *wu, const struct qv_wu_list *L,
                            void *scratch)
{
    if (!wu->filter)
        return NULL;
    const size_t dim = wu->dim;
    char *p = scratch;
    p += al64((size_t)QV_CPU_FLAT_QCHUNK * dim * sizeof(float));
    p += al64(QV_CPU_FLAT_QCHUNK * sizeof(float));
    p += al64(QV_CPU_FLAT_QCHUNK * sizeof(struct qv_topk));
    uint64_t *mask = (uint64_t *)p;
    memset(mask, 0, ((size_t)L->n + 63) / 64 * sizeof(uint64_t));
    for (uint32_t i = 0; i < L->n; i++) {
        uint32_t r = L->rows[i];
        mask[i / 64] |= (wu->filter[r / 64] >> (r % 64) & 1u) << (i % 64);
    }
    return mask;
}

void qv__cpu_scan_flat(const struct qv_work_unit *wu, uint32_t li, const uint32_t *qidx,
                       uint32_t nq, struct qv_topk *heaps, void *scratch)
{
    const struct qv_wu_list *L = &wu->lists[li];
    if (L->n == 0 || nq == 0)
        return;
    scan_range(wu, li, qidx, nq, heaps, scratch, L->codes, 0, L->n,
               build_mask(wu, L, scratch));
}

void qv__cpu_scan_f16(const struct qv_work_unit *wu, uint32_t li, const uint32_t *qidx,
                      uint32_t nq, struct qv_topk *heaps, void *scratch)
{
    const struct qv_wu_list *L = &wu->lists[li];
    if (L->n == 0 || nq == 0)
        return;
    const size_t dim = wu->dim, chunk = f16_chunk(dim);
    const uint64_t *mask = build_mask(wu, L, scratch);
    float *wide = (float *)((char *)scratch + qv__cpu_scratch_flat(wu));
    const uint16_t *codes = L->codes;
    const struct qv_dist_ops *ops = qv_kernels();
    for (size_t off = 0; off < L->n; off += chunk) {
        size_t cn = L->n - off < chunk ? L->n - off : chunk;
        size_t groups = (cn + QV_BLOCK - 1) / QV_BLOCK;
        ops->f16_to_f32(codes + off * dim, wide, groups * QV_BLOCK * dim);
        scan_range(wu, li, qidx, nq, heaps, scratch, wide, off, cn,
                   mask ? mask + off / 64 : NULL);
    }
}

static void scan_range(const struct qv_work_unit *wu, uint32_t li, const uint32_t *qidx,
                       uint32_t nq, struct qv_topk *heaps, void *scratch,
                       const float *blocks, size_t off, size_t nvec, const uint64_t *mask)
{
    const struct qv_wu_list *L = &wu->lists[li];
    const size_t dim = wu->dim;
    char *p = scratch;
    float *qbuf = (float *)p;
    p += al64((size_t)QV_CPU_FLAT_QCHUNK * dim * sizeof(float));
    float *nbuf = (float *)p;
    p += al64(QV_CPU_FLAT_QCHUNK * sizeof(float));
    struct qv_topk *hbuf = (struct qv_topk *)p;
    struct qv_scan_args a = {
        .dim = dim,
        .blocks = blocks,
        .norms = L->norms ? L->norms + off : NULL,
        .ids = L->ids + off,
        .nvec = nvec,
        .mask = mask,
        .metric = wu->metric,
        .prefetch = 0,
    };
    const struct qv_dist_ops *ops = qv_kernels();
    int consecutive = 1;
    for (uint32_t i = 1; i < nq && consecutive; i++)
        consecutive = qidx[i] == qidx[0] + i;
    if (consecutive) {
        a.queries = wu->queries + (size_t)qidx[0] * dim;
        a.qnorms = wu->qnorms ? wu->qnorms + qidx[0] : NULL;
        a.nq = nq;
        a.heaps = heaps + qidx[0];
        ops->scan_f32(&a);
        return;
    }
    for (uint32_t c0 = 0; c0 < nq; c0 += QV_CPU_FLAT_QCHUNK) {
        uint32_t cn = nq - c0 < QV_CPU_FLAT_QCHUNK ? nq - c0 : QV_CPU_FLAT_QCHUNK;
        for (uint32_t i = 0; i < cn; i++) {
            uint32_t q = qidx[c0 + i];
            memcpy(qbuf + (size_t)i * dim, wu->queries + (size_t)q * dim,
                   dim * sizeof(float));
            nbuf[i] = wu->qnorms ? wu->qnorms[q] : 0.0f;
            hbuf[i] = heaps[q];
        }
        a.queries = qbuf;
        a.qnorms = nbuf;
        a.nq = cn;
        a.heaps = hbuf;
        ops->scan_f32(&a);
        for (uint32_t i = 0; i < cn; i++)
            heaps[qidx[c0 + i]] = hbuf[i];
    }
}
