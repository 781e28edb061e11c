/*
 * cpu_pq.c - the CPU scanner of QV_WU_PQ work units (residual IVF-PQ).
 *
 * For each query probing list li the scanner builds that (query, list)'s
 * table in the worker's scratch and runs one fused kernel over the list:
 *
 *   L2, ltab given   t = ltab[list] + qtab[q]     (m x ksub adds)
 *                    bias = |q - c|^2
 *     This is the standard decomposition
 *       |q - c - y|^2 = |q - c|^2 + (|y|^2 + 2<c, y>) - 2<q, y>
 *     summed over sub-spaces: the middle term depends on the list only,
 *     the last on the query only, so neither is recomputed per pair.
 *   L2, no ltab      t = lut_f32(q - c)           (m x ksub x dsub)
 *   IP               t = qtab[q], bias = -<q, c>
 *
 * nbits 4: t is quantised to bytes (lut_quantize4) and the fast-scan
 * kernel runs, into the query's reservoir when the unit carries them and
 * the heaps are the unit's own (quiver/pq.h, struct qv_pq_params);
 * nbits 8: the float table feeds scan8.  Scratch layout
 * (64-byte aligned pieces, qv_pq_scratch_bytes):
 *   float lut[m * ksub] | float resid[dim] | uint8 lut8[mp * 16]
 * Cost per (query, list): O(m * ksub) for the table (O(dim * ksub) without
 * ltab) plus the scan, O(n * m / 64) shuffles (4-bit) or O(n * m) lookups.
 * No allocation, no locks.
 */
#include <stdint.h>

#include "cpu_int.h"
#include "quiver/pq.h"
#include "quiver/topk.h"

size_t qv__cpu_scratch_pq(const struct qv_work_unit *wu)
{
    const struct qv_pq_params *p = wu->params;
    return qv_pq_scratch_bytes(p->pq);
}

void qv__cpu_scan_pq(const struct qv_work_unit *wu, uint32_t li, const uint32_t *qidx,
                     uint32_t nq, struct qv_topk *heaps, void *scratch)
{
    const struct qv_pq_params *p = wu->params;
    const struct qv_pq *pq = p->pq;
    const struct qv_wu_list *L = &wu->lists[li];
    const struct qv_dist_ops *ops = qv_kernels();
    const struct qv_pq_kernels *K = ops->pq;
    const uint32_t m = pq->m, ksub = pq->ksub, dim = pq->dim;
    const size_t tsz = (size_t)m * ksub;

    if (L->n == 0)
        return;
    float *lut = scratch;
    float *resid = (float *)((uint8_t *)scratch + ((tsz * sizeof(float) + 63) & ~(size_t)63));
    uint8_t *lut8 = (uint8_t *)resid + (((size_t)dim * sizeof(float) + 63) & ~(size_t)63);

    struct qv_pq_scan_args a = {
        .codes = L->codes,
        .n = L->n,
        .m = m,
        .lut = lut,
        .lut8 = lut8,
        .ids = L->ids,
        .rows = L->rows,
        .filter = wu->filter,
    };
    for (uint32_t i = 0; i < nq; i++) {
        uint32_t qi = qidx[i];
        const float *t2, *t3;
        float bias;
        qv_pq_probe(p, wu->metric, wu->queries + (size_t)qi * dim, qi, L->list_no, 1, lut,
                    resid, &t2, &t3, &bias);
        a.heap = &heaps[qi];
        a.res = p->res && heaps == wu->heaps ? &p->res[qi] : NULL;
        if (pq->nbits == 4) {
            float qbias;
            K->lut_quantize4(t2, t3, m, lut8, &a.scale, &qbias);
            a.bias = bias + qbias;
            K->scan4(&a);
        } else {
            if (t2) {
                for (size_t e = 0; e < tsz; e++)
                    lut[e] = t2[e] + t3[e];
            } else if (t3 != lut) {
                a.lut = t3;
            }
            a.bias = bias;
            K->scan8(&a);
            a.lut = lut;
        }
    }
}
