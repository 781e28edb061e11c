/*
 * pq.h - product quantisation: codebooks, encode/decode, asymmetric
 * distance tables (ADC) and the list-scan kernels, including the 4-bit
 * fast-scan.
 *
 * A vector of dim floats is cut into m sub-vectors of dsub = dim / m
 * floats; sub-vector j is replaced by the index of its nearest centroid in
 * codebook j (ksub = 2^nbits centroids, nbits 4 or 8).  Codebooks are
 * trained with qv_kmeans_train on each sub-space.
 *
 * Code layouts.
 *   nbits = 8  "flat":  one byte per sub-quantiser, row-major: entry i's
 *              code j at [i * m + j].  qv_pq_code_size() = m bytes.
 *   nbits = 4  "packed": entry i's codes j (even) and j + 1 share byte
 *              [i * mp / 2 + j / 2]: low nibble j, high nibble j + 1;
 *              mp = m rounded up to even (a pad nibble is 0).
 *              qv_pq_code_size() = mp / 2 bytes.  Used by encode/decode.
 *   nbits = 4  "fast-scan" (lists, QV_WU_PQ): entries grouped in blocks
 *              of QV_PQ_FS_BLOCK = 32; a block holds mp / 2 groups of 32
 *              bytes, group p = sub-quantisers 2p (low nibble) and 2p + 1
 *              (high nibble).  Byte b of a group holds entry
 *                  b even: entry b / 2        (entries 0..15)
 *                  b odd:  entry 16 + b / 2   (entries 16..31)
 *              so one 16-bit lane of the accumulators holds entries 0..15
 *              (even bytes) and 16..31 (odd bytes) in order.  Block size:
 *              QV_PQ_FS_BLOCK * mp / 2 bytes; pad entries (and pad
 *              sub-quantisers) are code 0.  See qv_pq_fs_pack.
 *
 * Distances (ADC).  For a query q the float table lut[j * ksub + c] is the
 * contribution of sub-quantiser j taking code c:
 *   L2   |q_j - y_jc|^2          (distance = bias + sum_j lut[j][c_j])
 *   IP   -<q_j, y_jc>
 * For the 4-bit fast-scan, the float table is quantised per query/list to
 * bytes:  lut[j][c] ~= bias_j + q8[j][c] / a, with bias_j the minimum of
 * table j and a = 255 / max_j (max_j - bias_j), so the distance estimate
 * is
 *   d = fmaf((float)acc, scale, bias),  acc = min(65535, sum_j q8[j][c_j]),
 *   scale = 1 / a, bias = table bias + sum_j bias_j.
 * Every level computes acc exactly in integers and d with one fused
 * multiply-add, so all levels return bit-identical distances.
 *
 * Thread safety: all functions are pure on their arguments except where a
 * struct is written; a struct qv_pq is read-only after training and may be
 * shared by any number of threads.
 */
#ifndef QUIVER_PQ_H
#define QUIVER_PQ_H

#include <stddef.h>
#include <stdint.h>

#include "quiver/dist.h"

struct qv_topk;
struct qv_pool;

#define QV_PQ_FS_BLOCK 32       /* entries per fast-scan block */

/* ------------------------------------------------------------------ */
/* Kernels (one table per SIMD level, host/kernels/pq_<isa>.c)          */
/* ------------------------------------------------------------------ */

/*
 * Candidate reservoir: an unordered buffer standing for a top-`keep`
 * selection, the cheap alternative to a heap when keep is large (refine
 * searches keep refine * k candidates).  A heap pays O(log keep)
 * data-dependent branches per accepted candidate; the reservoir appends
 * (O(1)) and, when its cap slots are full, compacts: one selection
 * (quickselect, O(cap) expected) keeps the best keep pairs and tightens
 * the bound.  Pairs are ordered as in topk.h: by distance, then by id.
 *
 * Invariant: the best `keep` pairs (as a multiset) of everything added
 * are among dist/ids[0..n); a pair >= (bound, bound_id) cannot be one of
 * them (keep held pairs are <= it), so scans skip it.  bound is +inf
 * until the first compaction.  After qv_pq_res_compact, dist/ids[0..n)
 * (n <= keep) are exactly the best min(keep, added) pairs, unordered.
 *
 * Storage is the caller's (cap >= keep + 1 slots each); no allocation.
 * One thread at a time per reservoir.
 */
struct qv_pq_res {
    float *dist;                /* cap slots, caller's storage */
    uint64_t *ids;              /* cap slots, caller's storage */
    uint32_t n;                 /* pairs held, < cap between calls */
    uint32_t cap;
    uint32_t keep;              /* >= 1 */
    float bound;                /* admit only (d, id) < (bound, bound_id) */
    uint64_t bound_id;
};

/* Start an empty reservoir (keep >= 1, cap >= keep + 1).  Cannot fail. */
void qv_pq_res_init(struct qv_pq_res *r, uint32_t keep, uint32_t cap, float *dist,
                    uint64_t *ids);

/* Keep only the best min(keep, n) pairs; when n > keep tighten the bound
 * to the worst pair kept.  O(n) expected.  Cannot fail. */
void qv_pq_res_compact(struct qv_pq_res *r);

/* Whether (d, id) may still be among the best keep pairs.  NaN never. */
static inline int qv_pq_res_admits(const struct qv_pq_res *r, float d, uint64_t id)
{
    return d < r->bound || (d == r->bound && id < r->bound_id);
}

/* Add a pair the reservoir admits (compacts when the slots fill up). */
static inline void qv_pq_res_add(struct qv_pq_res *r, float d, uint64_t id)
{
    r->dist[r->n] = d;
    r->ids[r->n] = id;
    if (++r->n == r->cap)
        qv_pq_res_compact(r);
}

/* Arguments of a fused list scan: distance estimates of n codes merged
 * into one top-k heap (or, scan4 only, a reservoir).  No allocation, no
 * locks. */
struct qv_pq_scan_args {
    const uint8_t *codes;       /* scan8: n x m bytes row-major;
                                   scan4: ceil(n / 32) fast-scan blocks */
    size_t n;                   /* entries */
    uint32_t m;                 /* sub-quantisers (scan4: codes laid out
                                   for mp = m rounded up to even) */
    const float *lut;           /* scan8: m x 256 floats */
    const uint8_t *lut8;        /* scan4: mp x 16 bytes (pad tables 0),
                                   64-byte aligned */
    float scale;                /* scan4 only */
    float bias;                 /* added to every distance */
    const uint64_t *ids;        /* n ids, reported in the heap */
    const uint32_t *rows;       /* n rows, for the filter; NULL when
                                   filter is NULL */
    const uint64_t *filter;     /* row bitmap, bit set = eligible; NULL =
                                   all eligible */
    struct qv_topk *heap;
    struct qv_pq_res *res;      /* scan4: when not NULL, candidates go to
                                   this reservoir and heap is unused */
};

struct qv_pq_kernels {
    enum qv_simd level;
    /*
     * (a) Float tables from scratch: lut[j * ksub + c] for the query q
     * (dim = m * dsub floats) and codebooks cents (m x ksub x dsub,
     * row-major), metric L2 or IP (see above).
     */
    void (*lut_f32)(const float *q, const float *cents, uint32_t m, uint32_t ksub,
                    uint32_t dsub, enum qv_metric metric, float *lut);
    /*
     * (a') 4-bit tables: t = t2 + t3 (t2 may be NULL: t = t3), m x 16
     * floats each, quantised into lut8 (mp x 16 bytes, pad tables
     * zeroed); *scale and *bias receive 1 / a and sum_j bias_j.  A table
     * whose entries are all equal gives zeros; when every table is flat
     * *scale is 0.  Rounding is to nearest even, clamped to 0..255.
     */
    void (*lut_quantize4)(const float *t2, const float *t3, uint32_t m,
                          uint8_t *lut8, float *scale, float *bias);
    /* (b) 8-bit codes, float table: d = bias + sum_j lut[j][c_j], summed
     * in order j = 0..m-1 starting from 0, bias added last. */
    void (*scan8)(const struct qv_pq_scan_args *a);
    /* (c) 4-bit fast-scan (see the layout and the arithmetic above). */
    void (*scan4)(const struct qv_pq_scan_args *a);
};

/* ------------------------------------------------------------------ */
/* Product quantiser                                                     */
/* ------------------------------------------------------------------ */

struct qv_pq {
    uint32_t dim;
    uint32_t m;                 /* sub-quantisers, dim % m == 0 */
    uint32_t nbits;             /* 4 or 8 */
    uint32_t ksub;              /* 1 << nbits */
    uint32_t dsub;              /* dim / m */
    uint32_t code_size;         /* bytes per encoded vector */
    float *cents;               /* m x ksub x dsub (owned unless borrowed) */
    int owns_cents;
};

/* Initialise pq for dim, m, nbits (cents allocated, zeroed, QV_MEM_INDEX).
 * Returns 0, QV_EINVAL with a message (dim % m != 0, m == 0, m > 256,
 * nbits not 4 or 8), QV_ENOMEM. */
int qv_pq_init(struct qv_pq *pq, uint32_t dim, uint32_t m, uint32_t nbits);

/* As qv_pq_init but codebooks borrowed from cents (e.g. an mmapped file);
 * they must outlive pq. */
int qv_pq_init_borrowed(struct qv_pq *pq, uint32_t dim, uint32_t m, uint32_t nbits,
                        const float *cents);

/* Release owned codebooks; pq becomes unusable.  NULL-safe. */
void qv_pq_fini(struct qv_pq *pq);

/* Bytes per encoded vector in the flat (8-bit) or packed (4-bit) layout. */
static inline uint32_t qv_pq_code_size(uint32_t m, uint32_t nbits)
{
    return nbits == 8 ? m : (m + 1) / 2;
}

/* Train the m codebooks on n vectors x (n x dim) with k-means (L2, seed,
 * sample of at most max_points, 0 = 256 * ksub).  Returns 0, QV_EINVAL
 * (n < ksub), QV_ENOMEM.  O(iters * n * ksub * dim). */
int qv_pq_train(struct qv_pq *pq, const float *x, size_t n, uint64_t seed,
                size_t max_points, struct qv_pool *pool);

/* Encode n vectors (n x dim) into codes (n x code_size, flat or packed
 * layout).  Nearest centroid per sub-space (L2).  Cannot fail. */
void qv_pq_encode(const struct qv_pq *pq, const float *x, size_t n, uint8_t *codes);

/* Decode n codes into x (n x dim).  Cannot fail. */
void qv_pq_decode(const struct qv_pq *pq, const uint8_t *codes, size_t n, float *x);

/* Code j of an encoded vector in the flat / packed layout. */
static inline uint32_t qv_pq_code_get(const uint8_t *code, uint32_t nbits, uint32_t j)
{
    if (nbits == 8)
        return code[j];
    return (code[j >> 1] >> ((j & 1) * 4)) & 15u;
}

/* Float table of q (dim floats) into lut (m x ksub): see above.  Uses the
 * active kernel level.  Cannot fail. */
void qv_pq_lut(const struct qv_pq *pq, const float *q, enum qv_metric metric, float *lut);

/* Bytes of n entries in the fast-scan layout (whole blocks). */
static inline size_t qv_pq_fs_size(size_t n, uint32_t m)
{
    size_t mp = (m + 1u) & ~1u;
    return (n + QV_PQ_FS_BLOCK - 1) / QV_PQ_FS_BLOCK * QV_PQ_FS_BLOCK * mp / 2;
}

/* Store the packed 4-bit code of entry i (code: (m + 1) / 2 bytes, the
 * packed layout) into fast-scan blocks at dst.  The block's other entries
 * are untouched; a fresh buffer should start zeroed.  Cannot fail. */
void qv_pq_fs_put(uint8_t *dst, size_t i, uint32_t m, const uint8_t *code);

/* Read entry i of fast-scan blocks back into the packed layout. */
void qv_pq_fs_get(const uint8_t *src, size_t i, uint32_t m, uint8_t *code);

/* Pack n packed-layout codes into fast-scan blocks (qv_pq_fs_size bytes;
 * pads zeroed).  Cannot fail. */
void qv_pq_fs_pack(uint8_t *dst, const uint8_t *codes, size_t n, uint32_t m);

/* ------------------------------------------------------------------ */
/* Parameters of a QV_WU_PQ work unit (struct qv_work_unit.params)       */
/* ------------------------------------------------------------------ */

/*
 * Lists hold residual codes r = x - coarse[list_no], fast-scan layout for
 * nbits 4, flat layout for nbits 8 (code_size = m).  The caller (the
 * IVF-PQ index) computes the per-query tables before submitting:
 *   qtab  nq x m x ksub floats: L2: -2 <q_j, y_jc>;  IP: -<q_j, y_jc>
 * and the scanner adds, per (query, list):
 *   L2  ltab[list_no] (|y_jc|^2 + 2 <c_j, y_jc>, nlist x m x ksub) when
 *       not NULL, with bias |q - c|^2; when ltab is NULL it builds the
 *       table of q - c from scratch (lut_f32).
 *   IP  bias -<q, c>; the table is the query's alone.
 *
 * res (nbits 4 only; may be NULL): one reservoir per query of the unit,
 * keep = the heaps' k.  The scanner sends query q's candidates to res[q]
 * instead of heaps[q] whenever the engine hands it the unit's own heaps
 * (query-major, or the first worker of list-major); candidates headed
 * for a worker's private heaps still go to those.  So after the unit
 * the best k of query q are the best k of heaps[q] and res[q] together:
 * the submitter merges them.  A query's reservoir is touched by one
 * worker at a time, as its heap is.
 */
struct qv_pq_params {
    const struct qv_pq *pq;
    const float *coarse;        /* nlist x dim centroids */
    uint32_t nlist;
    const float *qtab;          /* nq x m x ksub, per query (see above) */
    const float *ltab;          /* L2: nlist x m x ksub, or NULL */
    struct qv_pq_res *res;      /* nq reservoirs, or NULL (see above) */
};

/*
 * qv_pq_probe - the bias and tables of one probe by the rules above: query
 * qi of the unit (q = its vector) scanning the list with coarse centroid
 * list_no.  The table is t2 + t3 (*t2 may be NULL: the table is *t3):
 * qtab's row and ltab's, or, for L2 without ltab, the table of q - c built
 * into lut (m x ksub floats; resid: dim floats of scratch) -- only when
 * `tables` is set (callers that build that table elsewhere pass 0 and get
 * *t3 = the qtab row, unused).  The one definition every engine (cpu,
 * opencl, fpga) uses, so their 4-bit tables stay bit-identical.
 * O(dim) for the bias, O(dim x ksub) when the table is built.  Cannot fail.
 */
void qv_pq_probe(const struct qv_pq_params *p, enum qv_metric metric, const float *q,
                 uint32_t qi, uint32_t list_no, int tables, float *lut, float *resid,
                 const float **t2, const float **t3, float *bias);

/* Scratch bytes the CPU scanner needs for a unit of this dim / pq. */
size_t qv_pq_scratch_bytes(const struct qv_pq *pq);

#endif
