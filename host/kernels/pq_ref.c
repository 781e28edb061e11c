/*
 * pq_ref.c - the scalar reference of the PQ kernels (quiver/pq.h).
 *
 * The 4-bit fast-scan here does exactly the arithmetic of the SIMD
 * versions, one entry at a time: an integer sum of the quantised table
 * entries saturated at 65535, then d = fmaf(acc, scale, bias).  So every
 * level returns bit-identical distances and the tests compare them with
 * ==.  The 8-bit scan sums the float table in order j = 0..m-1 from 0 and
 * adds the bias last, which the SIMD versions also do (per lane).
 *
 * Used on CPUs without AVX2 and as the tests' oracle.
 */
#include <math.h>
#include <stddef.h>

#include "kernels_int.h"
#include "pq_int.h"
#include "quiver/pq.h"
#include "quiver/topk.h"

static void lut_f32_ref(const float *q, const float *cents, uint32_t m, uint32_t ksub,
                        uint32_t dsub, enum qv_metric metric, float *lut)
{
    for (uint32_t j = 0; j < m; j++) {
        const float *qj = q + (size_t)j * dsub;
        for (uint32_t c = 0; c < ksub; c++) {
            const float *y = cents + ((size_t)j * ksub + c) * dsub;
            float s = 0.0f;
            if (metric == QV_METRIC_L2) {
                for (uint32_t d = 0; d < dsub; d++) {
                    float t = qj[d] - y[d];
                    s += t * t;
                }
            } else {
                for (uint32_t d = 0; d < dsub; d++)
                    s += qj[d] * y[d];
                s = -s;
            }
            lut[(size_t)j * ksub + c] = s;
        }
    }
}

static void lut_quantize4_ref(const float *t2, const float *t3, uint32_t m,
                              uint8_t *lut8, float *scale, float *bias)
{
    float mins[256];
    float span = 0.0f;
    uint32_t mp = (m + 1) & ~1u;

    for (uint32_t j = 0; j < m; j++) {
        float mn = INFINITY;
        for (uint32_t c = 0; c < 16; c++) {
            float t = t2 ? t2[j * 16 + c] + t3[j * 16 + c] : t3[j * 16 + c];
            mn = t < mn ? t : mn;
        }
        mins[j] = mn;
        for (uint32_t c = 0; c < 16; c++) {
            float t = t2 ? t2[j * 16 + c] + t3[j * 16 + c] : t3[j * 16 + c];
            float r = t - mn;
            span = r > span ? r : span;
        }
    }
    float a = span > 0.0f ? 255.0f / span : 0.0f;
    for (uint32_t j = 0; j < m; j++) {
        for (uint32_t c = 0; c < 16; c++) {
            float t = t2 ? t2[j * 16 + c] + t3[j * 16 + c] : t3[j * 16 + c];
            float v = nearbyintf((t - mins[j]) * a);
            v = v < 0.0f ? 0.0f : v > 255.0f ? 255.0f : v;
            lut8[j * 16 + c] = (uint8_t)v;
        }
    }
    for (uint32_t j = m; j < mp; j++)
        for (uint32_t c = 0; c < 16; c++)
            lut8[j * 16 + c] = 0;
    float b = 0.0f;
    for (uint32_t j = 0; j < m; j++)
        b += mins[j];
    *bias = b;
    *scale = span / 255.0f;
}

static void scan8_ref(const struct qv_pq_scan_args *a)
{
    const uint32_t m = a->m;
    for (size_t i = 0; i < a->n; i++) {
        const uint8_t *c = a->codes + i * m;
        float s = 0.0f;
        for (uint32_t j = 0; j < m; j++)
            s += a->lut[(size_t)j * 256 + c[j]];
        s += a->bias;
        if (qv__pq_eligible(a, i))
            qv_topk_push(a->heap, s, a->ids[i]);
    }
}

/* ---- candidate reservoir (shared by every level) ---- */

void qv_pq_res_init(struct qv_pq_res *r, uint32_t keep, uint32_t cap, float *dist,
                    uint64_t *ids)
{
    r->dist = dist;
    r->ids = ids;
    r->n = 0;
    r->cap = cap;
    r->keep = keep;
    r->bound = INFINITY;
    r->bound_id = UINT64_MAX;
}

static inline int pair_lt(float da, uint64_t ia, float db, uint64_t ib)
{
    return da < db || (da == db && ia < ib);
}

/* Hoare-style selection (Wirth) on pairs [0, n): afterwards [0, kth] hold
 * the kth + 1 smallest pairs and position kth the largest of them.
 * Median-of-three pivots; O(n) expected. */
static void select_pairs(float *d, uint64_t *id, ptrdiff_t n, ptrdiff_t kth)
{
    ptrdiff_t lo = 0, hi = n - 1;
    while (lo < hi) {
        ptrdiff_t mid = lo + (hi - lo) / 2;
        float pa = d[lo], pb = d[mid], pc = d[hi];
        uint64_t ia = id[lo], ib = id[mid], ic = id[hi];
        float pd;
        uint64_t pi;
        if (pair_lt(pa, ia, pb, ib)) {
            if (pair_lt(pb, ib, pc, ic)) { pd = pb; pi = ib; }
            else if (pair_lt(pa, ia, pc, ic)) { pd = pc; pi = ic; }
            else { pd = pa; pi = ia; }
        } else {
            if (pair_lt(pa, ia, pc, ic)) { pd = pa; pi = ia; }
            else if (pair_lt(pb, ib, pc, ic)) { pd = pc; pi = ic; }
            else { pd = pb; pi = ib; }
        }
        ptrdiff_t i = lo, j = hi;
        do {
            while (pair_lt(d[i], id[i], pd, pi))
                i++;
            while (pair_lt(pd, pi, d[j], id[j]))
                j--;
            if (i <= j) {
                float td = d[i];
                uint64_t ti = id[i];
                d[i] = d[j];
                id[i] = id[j];
                d[j] = td;
                id[j] = ti;
                i++;
                j--;
            }
        } while (i <= j);
        if (j < kth && kth < i)
            break;
        if (j < kth)
            lo = i;
        else
            hi = j;
    }
}

#define RES_BUCKETS 256u

/* Bucket of d in [lo, lo + 256 / sc]: monotone non-decreasing in d (each
 * step rounds monotonically), so a lower bucket means a smaller d. */
static inline uint32_t res_bucket(float d, float lo, float sc)
{
    float x = (d - lo) * sc;
    uint32_t b = (uint32_t)x;
    return b < RES_BUCKETS - 1 ? b : RES_BUCKETS - 1;
}

/*
 * Compaction without a pair sort: a 256-bucket histogram of the held
 * distances over [min, max] finds the bucket B holding the keep-th
 * pair; everything below B is kept outright, everything above dropped,
 * and only B's few pairs go through the exact selection (by distance,
 * then id).  Four linear, mostly branch-free passes; the general
 * selection remains for degenerate ranges (all equal, infinities).
 */
void qv_pq_res_compact(struct qv_pq_res *r)
{
    if (r->n <= r->keep)
        return;
    float *d = r->dist;
    uint64_t *id = r->ids;
    const uint32_t n = r->n, keep = r->keep;
    float mn = d[0], mx = d[0];
    for (uint32_t i = 1; i < n; i++) {
        mn = d[i] < mn ? d[i] : mn;
        mx = d[i] > mx ? d[i] : mx;
    }
    float sc = (float)RES_BUCKETS / (mx - mn);
    if (!(mx > mn) || !(sc > 0.0f) || !(sc < INFINITY)) {
        select_pairs(d, id, n, keep - 1);
        goto done;
    }
    uint32_t hist[RES_BUCKETS] = { 0 };
    for (uint32_t i = 0; i < n; i++)
        hist[res_bucket(d[i], mn, sc)]++;
    uint32_t B = 0, below = 0;
    while (below + hist[B] < keep)
        below += hist[B++];
    /* pass 1: pairs in buckets <= B to the front, in order */
    uint32_t j = 0;
    for (uint32_t i = 0; i < n; i++) {
        float x = d[i];
        uint64_t y = id[i];
        d[j] = x;
        id[j] = y;
        j += res_bucket(x, mn, sc) <= B;
    }
    /* pass 2: those below B before those in B (branch-free Lomuto) */
    uint32_t w = 0;
    for (uint32_t i = 0; i < j; i++) {
        float x = d[i];
        uint64_t y = id[i];
        int lt = res_bucket(x, mn, sc) < B;
        d[i] = d[w];
        id[i] = id[w];
        d[w] = x;
        id[w] = y;
        w += lt;
    }
    /* pass 3: the best keep - below of bucket B, exactly */
    select_pairs(d + below, id + below, j - below, keep - below - 1);
done:
    r->n = keep;
    r->bound = d[keep - 1];
    r->bound_id = id[keep - 1];
}

/* ---- scans ---- */

static void scan4_ref(const struct qv_pq_scan_args *a)
{
    const uint32_t m = a->m;
    const uint32_t mp = (m + 1) & ~1u;
    const size_t bsize = (size_t)QV_PQ_FS_BLOCK * mp / 2;

    for (size_t i = 0; i < a->n; i++) {
        const uint8_t *blk = a->codes + (i / QV_PQ_FS_BLOCK) * bsize;
        size_t e = i % QV_PQ_FS_BLOCK;
        size_t byte = e < 16 ? 2 * e : 2 * (e - 16) + 1;
        uint32_t acc = 0;
        for (uint32_t j = 0; j < mp; j++) {
            uint32_t code = (blk[(j / 2) * 32 + byte] >> ((j & 1) * 4)) & 15u;
            acc += a->lut8[j * 16 + code];
        }
        if (acc > 65535u)
            acc = 65535u;
        float d = fmaf((float)acc, a->scale, a->bias);
        if (!qv__pq_eligible(a, i))
            continue;
        if (!a->res)
            qv_topk_push(a->heap, d, a->ids[i]);
        else if (qv_pq_res_admits(a->res, d, a->ids[i]))
            qv_pq_res_add(a->res, d, a->ids[i]);
    }
}

const struct qv_pq_kernels qv__pq_kernels_ref = {
    .level = QV_SIMD_REF,
    .lut_f32 = lut_f32_ref,
    .lut_quantize4 = lut_quantize4_ref,
    .scan8 = scan8_ref,
    .scan4 = scan4_ref,
};
