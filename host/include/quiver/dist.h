/*
 * dist.h - CPU distance kernels and their SIMD dispatch.
 *
 * Metrics.  Every distance in Quiver is "smaller is nearer":
 *   QV_METRIC_L2      squared Euclidean distance  sum (a_i - b_i)^2
 *   QV_METRIC_IP      negated inner product      -sum a_i b_i
 *   QV_METRIC_COSINE  cosine distance             1 - a.b / (|a| |b|)
 *                     (1 when either vector is all zeros)
 * Indexes implement cosine by normalising vectors at insert and queries at
 * search, then using 1 + IP; the COSINE kernels here compute the full
 * formula in one pass and serve data that cannot be normalised (int8).
 *
 * Element types: float32; float16 (IEEE binary16, stored as uint16_t);
 * int8 (scalar-quantised codes, computed exactly in int32 and returned as
 * float).
 *
 * Levels.  Each ISA has its own file compiled with only its own flags
 * (dist_ref.c: none; dist_avx2.c: -mavx2 -mfma -mf16c; dist_avx512.c:
 * -mavx512f -mavx512bw -mavx512vl -mavx512dq ...).  qv_kernels_init()
 * picks the highest level the CPU supports (CPUID + XGETBV for the OS
 * saving the registers), capped by its argument and by the environment
 * variable QV_SIMD=ref|avx2|avx512, and fills the one table of function
 * pointers that every caller uses (STYLE rule 11).  No #ifdef at call sites.
 */
#ifndef QUIVER_DIST_H
#define QUIVER_DIST_H

#include <stddef.h>
#include <stdint.h>

struct qv_topk;
struct qv_sq8_kernels;     /* quiver/sq8.h */
struct qv_pq_kernels;      /* quiver/pq.h */

enum qv_metric {
    QV_METRIC_L2 = 0,
    QV_METRIC_IP = 1,
    QV_METRIC_COSINE = 2,
    QV_METRIC__COUNT
};

enum qv_elem {
    QV_ELEM_F32 = 0,
    QV_ELEM_F16 = 1,
    QV_ELEM_I8 = 2,
    QV_ELEM__COUNT
};

enum qv_simd {
    QV_SIMD_REF = 0,
    QV_SIMD_AVX2 = 1,
    QV_SIMD_AVX512 = 2,
    QV_SIMD__COUNT
};

/* Distance between a and b, dim elements each of the function's element
 * type (dim >= 1; no alignment required).  Pure, thread-safe. */
typedef float (*qv_dist_fn)(const void *a, const void *b, size_t dim);

/*
 * Blocked layout of float32 vectors, used by scans: vectors are grouped by
 * QV_BLOCK; group g holds dim x QV_BLOCK floats where element d of the
 * group's vector j is at [g * dim * QV_BLOCK + d * QV_BLOCK + j].  A group
 * is 64-byte aligned when the base is.  Unused lanes of the last group are
 * zero.  One vector load then reads one dimension of 16 vectors, which is
 * what lets the batched scan keep many queries in registers.
 */
#define QV_BLOCK 16

/* Arguments of a fused scan: distances of nq queries to nvec blocked
 * vectors, merged straight into the queries' top-k heaps; no distance
 * matrix is written out. */
struct qv_scan_args {
    const float *queries;       /* nq x dim float32, row-major */
    size_t nq;
    size_t dim;
    const float *qnorms;        /* L2: |q|^2 per query; unused for IP */
    const float *blocks;        /* ceil(nvec / 16) groups, blocked layout */
    const float *norms;         /* L2: |x|^2 per vector; unused for IP */
    const uint64_t *ids;        /* id of each vector, reported in heaps */
    size_t nvec;
    const uint64_t *mask;       /* bit i set = vector i is eligible
                                   (nvec bits); NULL = all eligible */
    enum qv_metric metric;      /* QV_METRIC_L2 or QV_METRIC_IP */
    struct qv_topk *heaps;      /* nq heaps, heaps[i] for query i */
    uint32_t prefetch;          /* software prefetch distance in groups for
                                   thin (memory-bound) tiles; 0 = rely on
                                   the hardware prefetcher */
};

/* One ISA's kernel table. */
struct qv_dist_ops {
    enum qv_simd level;
    /* dist[metric][elem] */
    qv_dist_fn dist[QV_METRIC__COUNT][QV_ELEM__COUNT];
    /* Scale v (dim floats) to unit length in place; all-zero v unchanged. */
    void (*normalize_f32)(float *v, size_t dim);
    /* n conversions; round to nearest even; NaN/Inf preserved. */
    void (*f32_to_f16)(const float *src, uint16_t *dst, size_t n);
    void (*f16_to_f32)(const uint16_t *src, float *dst, size_t n);
    /* Fused batched scan with top-k (see struct qv_scan_args).  L2 uses
     * |q|^2 + |x|^2 - 2 q.x, so its distances differ from dist[] by
     * rounding only.  No allocation, no locks. */
    void (*scan_f32)(const struct qv_scan_args *args);
    /* Encoded-list kernels of this level (SQ8 scans: quiver/sq8.h; PQ
     * tables and fast-scan: quiver/pq.h).  Never NULL. */
    const struct qv_sq8_kernels *sq8;
    const struct qv_pq_kernels *pq;
};

/* The table of each level lives in host/kernels/dispatch.c, filled once
 * by its ISA file's qv__dist_fill_<level>() plus qv__scan_f32_<level>
 * (host/kernels/kernels_int.h). */

/*
 * qv_kernels_init - choose the active level: the highest the CPU and OS
 * support, capped by cap and by QV_SIMD in the environment.  Returns the
 * level chosen.  QV_SIMD unset, empty or "auto" means no cap; an unknown
 * value is ignored with a warning.  A cap above what the CPU supports is
 * lowered to it.  Call once at start before threads use qv_kernels().
 * Calling it again chooses again (the same arguments give the same
 * result); tests and benchmarks use this to switch levels.  Every level's
 * table stays valid for the life of the process, so a switch is safe even
 * while other threads run kernels: each sees the old or the new table.
 * Cannot fail.
 */
enum qv_simd qv_kernels_init(enum qv_simd cap);

/* The active table (initialises with no cap on first use).  Never NULL. */
const struct qv_dist_ops *qv_kernels(void);

/* The table of a given level, or NULL when this CPU cannot run it.  For
 * tests and benchmarks that compare levels. */
const struct qv_dist_ops *qv_kernels_level(enum qv_simd level);

/* What CPUID + XGETBV allow (ignores caps). */
enum qv_simd qv_simd_detect(void);

/* Names; out-of-range values give "unknown".  Parsers are exact and
 * case-sensitive; NULL or an unknown name gives -1. */
const char *qv_simd_name(enum qv_simd level);     /* "ref", "avx2", "avx512" */
int qv_simd_parse(const char *name);              /* -1 when unknown */
const char *qv_metric_name(enum qv_metric m);     /* "l2", "ip", "cosine" */
int qv_metric_parse(const char *name);            /* -1 when unknown */
const char *qv_elem_name(enum qv_elem e);         /* "f32", "f16", "i8" */

/* Scalar conversions (portable, used by ref kernels and tests), bit-exact
 * with x86 F16C: round to nearest even, subnormals kept, overflow to inf,
 * NaN stays NaN (quiet bit set, top payload bits kept).  Pure. */
float qv_f16_to_f32(uint16_t h);
uint16_t qv_f32_to_f16(float f);

/* Pack n row-major vectors (dim floats each) into the blocked layout at
 * dst (ceil(n/16) * dim * 16 floats; unused lanes zeroed), starting at
 * lane offset `first` (0 <= first, the row index within dst's groups).
 * Cannot fail. */
void qv_block_pack(float *dst, size_t first, const float *src, size_t n, size_t dim);

/* Read vector `row` back out of a blocked layout into out (dim floats). */
void qv_block_unpack_row(const float *blocks, size_t row, size_t dim, float *out);

#endif
