/*
 * sq8.h - 8-bit scalar quantisation (SQ8): training, encoding, decoding
 * and the SIMD list-scan kernels.
 *
 * Encoding.  Each dimension d has a range [vmin[d], vmin[d] + vdiff[d]]
 * learnt from training data (per-dimension min and max).  A value maps to
 * one byte
 *     code = clamp(round((x - vmin) / vdiff * 255), 0, 255)
 * (0 when vdiff == 0) and back to
 *     x' = vmin + code * scale,      scale[d] = vdiff[d] / 255.
 * The error per dimension is at most vdiff / 510 for values inside the
 * trained range.  Codes are stored row-major, one byte per dimension,
 * `stride` bytes per row (stride >= dim; IVF uses stride = dim).
 *
 * Distances.  A query is prepared once per (query, quantiser) so that the
 * inner loop is one multiply-add per byte:
 *     L2   |q - x'|^2  = sum_d (qa[d] - scale[d] * code[d])^2,
 *                        qa[d] = q[d] - vmin[d]
 *     IP   -q.x'       = bias - sum_d qs[d] * code[d],
 *                        qs[d] = q[d] * scale[d], bias = -q.vmin
 * The kernels compute exactly those sums; the SIMD levels differ from the
 * scalar reference by float rounding (different summation order) only.
 *
 * Kernel table.  struct qv_sq8_kernels is reached through
 * qv_kernels()->sq8 (dist.h), one instance per ISA level
 * (host/kernels/sq8_<isa>.c), chosen with the rest of the kernels.  All
 * kernels are pure, allocate nothing, take no locks, and need no
 * alignment.  The training / encoding functions below are portable C in
 * host/kernels/sq8_ref.c and give bit-identical codes on every machine.
 */
#ifndef QUIVER_SQ8_H
#define QUIVER_SQ8_H

#include <stddef.h>
#include <stdint.h>

#include "quiver/dist.h"

struct qv_sq8_kernels {
    enum qv_simd level;
    /* out[i] = sum_{d<dim} (qa[d] - scale[d] * codes[i*stride + d])^2 for
     * i < n.  dim >= 1. */
    void (*l2)(const float *qa, const float *scale, const uint8_t *codes,
               size_t stride, size_t n, size_t dim, float *out);
    /* out[i] = bias - sum_{d<dim} qs[d] * codes[i*stride + d] for i < n. */
    void (*ip)(const float *qs, float bias, const uint8_t *codes,
               size_t stride, size_t n, size_t dim, float *out);
};

/* A query prepared for one quantiser (caller's memory, see
 * qv_sq8_query_prepare). */
struct qv_sq8_query {
    const float *vec;           /* qa (L2) or qs (IP): dim floats */
    float bias;                 /* IP: -q.vmin; L2: 0 */
};

/*
 * qv_sq8_train - per-dimension range of n training vectors (n x dim,
 * row-major): vmin[d] = min, vdiff[d] = max - min (dim floats each,
 * caller's memory).  Returns 0, or QV_EINVAL when n == 0, dim == 0 or a
 * value is not finite.  O(n dim).  Thread-safe.
 */
int qv_sq8_train(const float *x, size_t n, size_t dim, float *vmin, float *vdiff);

/* Encode n vectors (n x dim floats) into codes (n rows of `stride` bytes;
 * bytes dim..stride-1 of a row are zeroed).  Values outside the trained
 * range clamp; NaN encodes as 0.  Cannot fail.  O(n dim). */
void qv_sq8_encode(const float *x, size_t n, size_t dim, const float *vmin,
                   const float *vdiff, uint8_t *codes, size_t stride);

/* Decode n code rows back into x (n x dim floats).  Cannot fail. */
void qv_sq8_decode(const uint8_t *codes, size_t n, size_t dim, size_t stride,
                   const float *vmin, const float *vdiff, float *x);

/* scale[d] = vdiff[d] / 255 (dim floats).  Cannot fail. */
void qv_sq8_scale(const float *vdiff, size_t dim, float *scale);

/*
 * qv_sq8_query_prepare - fill buf (dim floats, caller's) and *out for
 * query q under metric L2 (qa = q - vmin) or IP (qs = q * scale,
 * bias = -q.vmin; cosine callers normalise q and pass IP).  scale comes
 * from qv_sq8_scale.  Cannot fail.  O(dim).
 */
void qv_sq8_query_prepare(const float *q, size_t dim, enum qv_metric metric,
                          const float *vmin, const float *scale, float *buf,
                          struct qv_sq8_query *out);

#endif
