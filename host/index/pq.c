/*
 * pq.c - product quantisation; contract and layouts in quiver/pq.h.
 *
 * Training runs one k-means per sub-space (qv_kmeans_train, L2) on the
 * sub-vectors of a sample, gathered into a contiguous n x dsub buffer.
 * Encoding is a brute-force nearest centroid per sub-space (ksub <= 256
 * centroids of dsub floats: O(dim * ksub) per vector), decoding a table
 * copy.  The fast-scan block helpers move one entry's nibbles between the
 * packed layout and the interleaved block layout the kernels read.
 */
#include <math.h>
#include <string.h>

#include "quiver/alloc.h"
#include "quiver/errors.h"
#include "quiver/kmeans.h"
#include "quiver/pq.h"

static int check_shape(uint32_t dim, uint32_t m, uint32_t nbits)
{
    if (m == 0 || m > 256)
        return qv_seterr(QV_EINVAL, "pq: m = %u is out of range; use 1..256", m);
    if (dim == 0 || dim % m)
        return qv_seterr(QV_EINVAL, "pq: dim %u is not a multiple of m = %u; "
                         "choose m dividing dim", dim, m);
    if (nbits != 4 && nbits != 8)
        return qv_seterr(QV_EINVAL, "pq: nbits = %u; use 4 or 8", nbits);
    return 0;
}

static void set_shape(struct qv_pq *pq, uint32_t dim, uint32_t m, uint32_t nbits)
{
    pq->dim = dim;
    pq->m = m;
    pq->nbits = nbits;
    pq->ksub = 1u << nbits;
    pq->dsub = dim / m;
    pq->code_size = qv_pq_code_size(m, nbits);
}

int qv_pq_init(struct qv_pq *pq, uint32_t dim, uint32_t m, uint32_t nbits)
{
    int rc = check_shape(dim, m, nbits);
    if (rc)
        return rc;
    set_shape(pq, dim, m, nbits);
    pq->cents = qv_calloc((size_t)pq->ksub * dim, sizeof(float), QV_MEM_INDEX);
    if (!pq->cents)
        return qv_seterr(QV_ENOMEM, "pq: no memory for %u x %u codebooks", m, pq->ksub);
    pq->owns_cents = 1;
    return 0;
}

int qv_pq_init_borrowed(struct qv_pq *pq, uint32_t dim, uint32_t m, uint32_t nbits,
                        const float *cents)
{
    int rc = check_shape(dim, m, nbits);
    if (rc)
        return rc;
    set_shape(pq, dim, m, nbits);
    pq->cents = (float *)cents;
    pq->owns_cents = 0;
    return 0;
}

void qv_pq_fini(struct qv_pq *pq)
{
    if (!pq)
        return;
    if (pq->owns_cents)
        qv_free(pq->cents);
    pq->cents = NULL;
    pq->owns_cents = 0;
}

int qv_pq_train(struct qv_pq *pq, const float *x, size_t n, uint64_t seed,
                size_t max_points, struct qv_pool *pool)
{
    if (n < pq->ksub)
        return qv_seterr(QV_EINVAL, "pq: %zu training vectors for %u centroids per "
                         "sub-space; give at least %u", n, pq->ksub, pq->ksub);
    if (max_points == 0)
        max_points = (size_t)256 * pq->ksub;
    /* Deterministic even-stride sample, so every sub-space sees the same
     * vectors. */
    size_t ns = n < max_points ? n : max_points;
    float *sub = qv_malloc(ns * pq->dsub * sizeof(float), QV_MEM_INDEX);
    if (!sub)
        return qv_seterr(QV_ENOMEM, "pq: no memory for a %zu-vector training sample", ns);
    int rc = 0;
    for (uint32_t j = 0; j < pq->m && !rc; j++) {
        for (size_t i = 0; i < ns; i++) {
            size_t src = ns == n ? i : (size_t)((double)i * (double)n / (double)ns);
            memcpy(sub + i * pq->dsub, x + src * pq->dim + (size_t)j * pq->dsub,
                   pq->dsub * sizeof(float));
        }
        struct qv_kmeans_opts o = {
            .k = pq->ksub, .dim = pq->dsub, .iters = 25, .seed = seed + j,
            .max_points = ns, .metric = QV_METRIC_L2, .pool = pool,
        };
        rc = qv_kmeans_train(&o, sub, ns, pq->cents + (size_t)j * pq->ksub * pq->dsub, NULL);
    }
    qv_free(sub);
    return rc;
}

void qv_pq_encode(const struct qv_pq *pq, const float *x, size_t n, uint8_t *codes)
{
    const uint32_t dsub = pq->dsub, ksub = pq->ksub;
    for (size_t i = 0; i < n; i++) {
        const float *v = x + i * pq->dim;
        uint8_t *out = codes + i * pq->code_size;
        memset(out, 0, pq->code_size);
        for (uint32_t j = 0; j < pq->m; j++) {
            const float *vj = v + (size_t)j * dsub;
            const float *cj = pq->cents + (size_t)j * ksub * dsub;
            float best = INFINITY;
            uint32_t arg = 0;
            for (uint32_t c = 0; c < ksub; c++) {
                float s = 0.0f;
                for (uint32_t d = 0; d < dsub; d++) {
                    float t = vj[d] - cj[(size_t)c * dsub + d];
                    s += t * t;
                }
                if (s < best) {
                    best = s;
                    arg = c;
                }
            }
            if (pq->nbits == 8)
                out[j] = (uint8_t)arg;
            else
                out[j >> 1] |= (uint8_t)(arg << ((j & 1) * 4));
        }
    }
}

void qv_pq_decode(const struct qv_pq *pq, const uint8_t *codes, size_t n, float *x)
{
    for (size_t i = 0; i < n; i++) {
        const uint8_t *c = codes + i * pq->code_size;
        for (uint32_t j = 0; j < pq->m; j++) {
            uint32_t k = qv_pq_code_get(c, pq->nbits, j);
            memcpy(x + i * pq->dim + (size_t)j * pq->dsub,
                   pq->cents + ((size_t)j * pq->ksub + k) * pq->dsub,
                   pq->dsub * sizeof(float));
        }
    }
}

void qv_pq_lut(const struct qv_pq *pq, const float *q, enum qv_metric metric, float *lut)
{
    qv_kernels()->pq->lut_f32(q, pq->cents, pq->m, pq->ksub, pq->dsub, metric, lut);
}

/* Byte of entry e (0..31) inside a 32-byte group (see pq.h). */
static inline size_t fs_byte(size_t e)
{
    return e < 16 ? 2 * e : 2 * (e - 16) + 1;
}

void qv_pq_fs_put(uint8_t *dst, size_t i, uint32_t m, const uint8_t *code)
{
    size_t mp = (m + 1u) & ~1u;
    uint8_t *blk = dst + (i / QV_PQ_FS_BLOCK) * QV_PQ_FS_BLOCK * mp / 2;
    size_t b = fs_byte(i % QV_PQ_FS_BLOCK);
    for (size_t p = 0; p < mp / 2; p++)
        blk[p * 32 + b] = code[p];
}

void qv_pq_fs_get(const uint8_t *src, size_t i, uint32_t m, uint8_t *code)
{
    size_t mp = (m + 1u) & ~1u;
    const uint8_t *blk = src + (i / QV_PQ_FS_BLOCK) * QV_PQ_FS_BLOCK * mp / 2;
    size_t b = fs_byte(i % QV_PQ_FS_BLOCK);
    for (size_t p = 0; p < mp / 2; p++)
        code[p] = blk[p * 32 + b];
}

void qv_pq_fs_pack(uint8_t *dst, const uint8_t *codes, size_t n, uint32_t m)
{
    memset(dst, 0, qv_pq_fs_size(n, m));
    for (size_t i = 0; i < n; i++)
        qv_pq_fs_put(dst, i, m, codes + i * ((m + 1) / 2));
}

void qv_pq_probe(const struct qv_pq_params *p, enum qv_metric metric, const float *q,
                 uint32_t qi, uint32_t list_no, int tables, float *lut, float *resid,
                 const float **t2, const float **t3, float *bias)
{
    const struct qv_pq *pq = p->pq;
    const uint32_t dim = pq->dim;
    const size_t tsz = (size_t)pq->m * pq->ksub;
    const struct qv_dist_ops *ops = qv_kernels();
    const float *c = p->coarse + (size_t)list_no * dim;
    *t2 = NULL;
    *t3 = p->qtab + (size_t)qi * tsz;
    if (metric != QV_METRIC_L2) {
        *bias = ops->dist[QV_METRIC_IP][QV_ELEM_F32](q, c, dim);
    } else if (p->ltab) {
        *bias = ops->dist[QV_METRIC_L2][QV_ELEM_F32](q, c, dim);
        *t2 = p->ltab + (size_t)list_no * tsz;
    } else {
        *bias = 0.0f;
        if (tables) {
            for (uint32_t d = 0; d < dim; d++)
                resid[d] = q[d] - c[d];
            ops->pq->lut_f32(resid, pq->cents, pq->m, pq->ksub, pq->dsub, QV_METRIC_L2, lut);
            *t3 = lut;
        }
    }
}

size_t qv_pq_scratch_bytes(const struct qv_pq *pq)
{
    size_t mp = (pq->m + 1u) & ~1u;
    /* float table (m x ksub), the residual (dim), the byte table (mp x 16),
     * each rounded to 64 bytes. */
    size_t a = ((size_t)pq->m * pq->ksub * sizeof(float) + 63) & ~(size_t)63;
    size_t b = ((size_t)pq->dim * sizeof(float) + 63) & ~(size_t)63;
    size_t c = (mp * 16 + 63) & ~(size_t)63;
    return a + b + c + 64;
}
