/*
 * cpu_sq8.c - the CPU engine's scanner of QV_WU_SQ8 lists (uint8 codes,
 * one per dimension, row-major, `code_size` bytes per row; params =
 * struct qv_sq8_params).
 *
 * Per call: scale = vdiff / 255 once; each query of the group (at most
 * QV_CPU_SQ8_QCHUNK at a time) is prepared once (quiver/sq8.h: qa = q -
 * vmin for L2, qs = q * scale and a bias for IP).  The list is then walked
 * in tiles of QV_CPU_SQ8_NTILE codes (128 x dim bytes: stays in L1/L2) and
 * every prepared query runs the SIMD kernel of the active level over the
 * tile, so a list probed by many queries is read from memory once per
 * chunk of queries.  Distances land in a small buffer; an entry reaches
 * the heap only when it beats the heap's worst and its row passes the
 * filter.
 *
 * Scratch layout (each part 64-byte aligned):
 *   scale     dim floats
 *   prepared  QCHUNK x dim floats, then QCHUNK biases
 *   dist      NTILE floats
 */
#include "cpu_int.h"
#include "quiver/sq8.h"
#include "quiver/topk.h"

#define QV_CPU_SQ8_QCHUNK 32u
#define QV_CPU_SQ8_NTILE 128u

static size_t al64(size_t b) { return (b + 63) & ~(size_t)63; }

size_t qv__cpu_scratch_sq8(const struct qv_work_unit *wu)
{
    return al64(wu->dim * sizeof(float))
         + al64((size_t)QV_CPU_SQ8_QCHUNK * wu->dim * sizeof(float))
         + al64(QV_CPU_SQ8_QCHUNK * sizeof(float))
         + al64(QV_CPU_SQ8_NTILE * sizeof(float));
}

void qv__cpu_scan_sq8(const struct qv_work_unit *wu, uint32_t li, const uint32_t *qidx,
                      uint32_t nq, struct qv_topk *heaps, void *scratch)
{
    const struct qv_wu_list *L = &wu->lists[li];
    if (L->n == 0 || nq == 0)
        return;
    const struct qv_sq8_params *sp = wu->params;
    const size_t dim = wu->dim, stride = wu->code_size;
    char *p = scratch;
    float *scale = (float *)p;
    p += al64(dim * sizeof(float));
    float *prep = (float *)p;
    p += al64((size_t)QV_CPU_SQ8_QCHUNK * dim * sizeof(float));
    float *bias = (float *)p;
    p += al64(QV_CPU_SQ8_QCHUNK * sizeof(float));
    float *dist = (float *)p;

    const struct qv_sq8_kernels *K = qv_kernels()->sq8;
    const uint8_t *codes = L->codes;
    qv_sq8_scale(sp->vdiff, dim, scale);
    for (uint32_t c0 = 0; c0 < nq; c0 += QV_CPU_SQ8_QCHUNK) {
        uint32_t cn = nq - c0 < QV_CPU_SQ8_QCHUNK ? nq - c0 : QV_CPU_SQ8_QCHUNK;
        for (uint32_t i = 0; i < cn; i++) {
            struct qv_sq8_query pq;
            qv_sq8_query_prepare(wu->queries + (size_t)qidx[c0 + i] * dim, dim, wu->metric,
                                 sp->vmin, scale, prep + (size_t)i * dim, &pq);
            bias[i] = pq.bias;
        }
        for (uint32_t t0 = 0; t0 < L->n; t0 += QV_CPU_SQ8_NTILE) {
            uint32_t tn = L->n - t0 < QV_CPU_SQ8_NTILE ? L->n - t0 : QV_CPU_SQ8_NTILE;
            const uint8_t *tc = codes + (size_t)t0 * stride;
            for (uint32_t i = 0; i < cn; i++) {
                struct qv_topk *h = &heaps[qidx[c0 + i]];
                const float *qv = prep + (size_t)i * dim;
                if (wu->metric == QV_METRIC_L2)
                    K->l2(qv, scale, tc, stride, tn, dim, dist);
                else
                    K->ip(qv, bias[i], tc, stride, tn, dim, dist);
                for (uint32_t j = 0; j < tn; j++) {
                    float d = dist[j];
                    if (!(d <= h->worst))
                        continue;
                    if (wu->filter) {
                        uint32_t r = L->rows[t0 + j];
                        if (!(wu->filter[r / 64] >> (r % 64) & 1u))
                            continue;
                    }
                    qv_topk_push(h, d, L->ids[t0 + j]);
                }
            }
        }
    }
}
