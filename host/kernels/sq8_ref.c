/*
 * sq8_ref.c - SQ8 training, encoding, decoding and query preparation
 * (portable C, bit-identical everywhere) plus the scalar reference list
 * kernels.  Contract and formulas in quiver/sq8.h.
 */
#include <math.h>
#include <string.h>

#include "kernels_int.h"
#include "quiver/errors.h"
#include "quiver/sq8.h"

int qv_sq8_train(const float *x, size_t n, size_t dim, float *vmin, float *vdiff)
{
    if (n == 0 || dim == 0 || !x)
        return qv_seterr(QV_EINVAL, "sq8 train: %zu vectors of dim %zu; need at least one "
                         "vector of dim >= 1", n, dim);
    for (size_t d = 0; d < dim; d++) {
        vmin[d] = x[d];
        vdiff[d] = x[d];            /* max, for now */
    }
    for (size_t i = 0; i < n; i++) {
        const float *v = x + i * dim;
        for (size_t d = 0; d < dim; d++) {
            if (!isfinite(v[d]))
                return qv_seterr(QV_EINVAL, "sq8 train: vector %zu element %zu is not "
                                 "finite", i, d);
            if (v[d] < vmin[d])
                vmin[d] = v[d];
            if (v[d] > vdiff[d])
                vdiff[d] = v[d];
        }
    }
    for (size_t d = 0; d < dim; d++)
        vdiff[d] -= vmin[d];
    return 0;
}

void qv_sq8_encode(const float *x, size_t n, size_t dim, const float *vmin,
                   const float *vdiff, uint8_t *codes, size_t stride)
{
    for (size_t i = 0; i < n; i++) {
        const float *v = x + i * dim;
        uint8_t *c = codes + i * stride;
        for (size_t d = 0; d < dim; d++) {
            float t = vdiff[d] > 0.0f ? (v[d] - vmin[d]) / vdiff[d] * 255.0f : 0.0f;
            if (!(t > 0.0f))        /* also NaN */
                t = 0.0f;
            if (t > 255.0f)
                t = 255.0f;
            c[d] = (uint8_t)(t + 0.5f);
        }
        if (stride > dim)
            memset(c + dim, 0, stride - dim);
    }
}

void qv_sq8_decode(const uint8_t *codes, size_t n, size_t dim, size_t stride,
                   const float *vmin, const float *vdiff, float *x)
{
    for (size_t i = 0; i < n; i++)
        for (size_t d = 0; d < dim; d++)
            x[i * dim + d] = vmin[d] + (float)codes[i * stride + d] * (vdiff[d] / 255.0f);
}

void qv_sq8_scale(const float *vdiff, size_t dim, float *scale)
{
    for (size_t d = 0; d < dim; d++)
        scale[d] = vdiff[d] / 255.0f;
}

void qv_sq8_query_prepare(const float *q, size_t dim, enum qv_metric metric,
                          const float *vmin, const float *scale, float *buf,
                          struct qv_sq8_query *out)
{
    out->vec = buf;
    out->bias = 0.0f;
    if (metric == QV_METRIC_L2) {
        for (size_t d = 0; d < dim; d++)
            buf[d] = q[d] - vmin[d];
        return;
    }
    double b = 0.0;
    for (size_t d = 0; d < dim; d++) {
        buf[d] = q[d] * scale[d];
        b += (double)q[d] * vmin[d];
    }
    out->bias = (float)-b;
}

static void sq8_l2_ref(const float *qa, const float *scale, const uint8_t *codes,
                       size_t stride, size_t n, size_t dim, float *out)
{
    for (size_t i = 0; i < n; i++) {
        const uint8_t *c = codes + i * stride;
        float s = 0.0f;
        for (size_t d = 0; d < dim; d++) {
            float t = qa[d] - scale[d] * (float)c[d];
            s += t * t;
        }
        out[i] = s;
    }
}

static void sq8_ip_ref(const float *qs, float bias, const uint8_t *codes, size_t stride,
                       size_t n, size_t dim, float *out)
{
    for (size_t i = 0; i < n; i++) {
        const uint8_t *c = codes + i * stride;
        float s = 0.0f;
        for (size_t d = 0; d < dim; d++)
            s += qs[d] * (float)c[d];
        out[i] = bias - s;
    }
}

const struct qv_sq8_kernels qv__sq8_kernels_ref = {
    .level = QV_SIMD_REF,
    .l2 = sq8_l2_ref,
    .ip = sq8_ip_ref,
};
