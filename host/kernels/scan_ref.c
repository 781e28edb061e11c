/*
 * scan_ref.c - the scalar reference of the fused batched scan: the plain
 * triple loop, with the same distance formula as the SIMD versions (L2 as
 * |q|^2 + |x|^2 - 2 q.x) so that every level ranks identically up to
 * float rounding.  Used on CPUs without AVX2 and as the tests' oracle.
 */
#include "kernels_int.h"
#include "quiver/topk.h"

void qv__scan_f32_ref(const struct qv_scan_args *a)
{
    const size_t dim = a->dim;
    for (size_t qi = 0; qi < a->nq; qi++) {
        const float *q = a->queries + qi * dim;
        struct qv_topk *h = &a->heaps[qi];
        for (size_t v = 0; v < a->nvec; v++) {
            if (a->mask && !((a->mask[v / 64] >> (v % 64)) & 1))
                continue;
            const float *x = a->blocks + (v / QV_BLOCK) * dim * QV_BLOCK + v % QV_BLOCK;
            float dot = 0.0f;
            for (size_t d = 0; d < dim; d++)
                dot += q[d] * x[d * QV_BLOCK];
            float dist = a->metric == QV_METRIC_L2
                       ? a->qnorms[qi] + a->norms[v] - 2.0f * dot
                       : -dot;
            qv_topk_push(h, dist, a->ids[v]);
        }
    }
}
