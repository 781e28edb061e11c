/*
 * block.c - packing row-major float32 vectors into the blocked layout of
 * dist.h (groups of QV_BLOCK vectors stored dimension-major) and back.
 * Runs at insert time, not per query: a plain scalar transpose is enough.
 */
#include <string.h>

#include "quiver/dist.h"

void qv_block_pack(float *dst, size_t first, const float *src, size_t n, size_t dim)
{
    for (size_t i = 0; i < n; i++) {
        size_t row = first + i;
        float *g = dst + (row / QV_BLOCK) * dim * QV_BLOCK;
        size_t lane = row % QV_BLOCK;
        const float *v = src + i * dim;
        for (size_t d = 0; d < dim; d++)
            g[d * QV_BLOCK + lane] = v[d];
    }
}

void qv_block_unpack_row(const float *blocks, size_t row, size_t dim, float *out)
{
    const float *g = blocks + (row / QV_BLOCK) * dim * QV_BLOCK;
    size_t lane = row % QV_BLOCK;
    for (size_t d = 0; d < dim; d++)
        out[d] = g[d * QV_BLOCK + lane];
}
