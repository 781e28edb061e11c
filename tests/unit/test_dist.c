/*
 * test_dist.c - CUnit suite for the distance kernels and their dispatch
 * (host/kernels/dist_*.c, dispatch.c; contract in quiver/dist.h).
 *
 * Every level this CPU can run (qv_kernels_level(l) != NULL) is checked:
 *   - known answers on tiny hand-computed vectors, per metric and type;
 *   - random data against the scalar reference and against an oracle
 *     computed here in double, on dims {1,3,7,...,784}, with buffers
 *     offset by one element (unaligned) and with vectors that end exactly
 *     at a PROT_NONE guard page (a tail that reads too far faults);
 *   - int8 bit-exact, including dims whose sums overflow int32;
 *   - float16 conversions: all 65536 halves, f32->f16 rounding cases,
 *     SIMD array conversions bit-equal to the scalar ones;
 *   - normalize: unit length, zero vectors untouched, no writes past dim;
 *   - dispatch: names, parsing, caps from the argument and QV_SIMD.
 * The scan_f32 entries are covered by test_scan.c.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <CUnit/Basic.h>

#include "quiver/dist.h"

static const size_t dims[] = {
    1, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 64, 127, 128, 129, 784,
};
#define NDIMS (sizeof dims / sizeof dims[0])
#define MAXDIM 784
#define PAIRS_PER_DIM 4

static const size_t elem_size[QV_ELEM__COUNT] = {
    [QV_ELEM_F32] = sizeof(float),
    [QV_ELEM_F16] = sizeof(uint16_t),
    [QV_ELEM_I8] = sizeof(int8_t),
};

/* Report at most this many mismatches per test, then just count. */
#define MAX_REPORTS 10

/* ------------------------------------------------------------------ */
/* Helpers                                                              */
/* ------------------------------------------------------------------ */

static uint64_t rng_state;

static void rng_seed(uint64_t seed)
{
    rng_state = seed;
}

static uint64_t rng_next(void)            /* splitmix64 */
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [-scale, scale). */
static float rng_float(float scale)
{
    return scale * (2.0f * (float)(rng_next() >> 40) * 0x1p-24f - 1.0f);
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static int half_is_nan(uint16_t h)
{
    return (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0;
}

/* Fill n elements of type e at p with random values (f16: exact halves). */
static void fill_random(void *p, enum qv_elem e, size_t n, float scale)
{
    for (size_t i = 0; i < n; i++) {
        switch (e) {
        case QV_ELEM_F32:
            ((float *)p)[i] = rng_float(scale);
            break;
        case QV_ELEM_F16:
            ((uint16_t *)p)[i] = qv_f32_to_f16(rng_float(scale));
            break;
        default:
            ((int8_t *)p)[i] = (int8_t)(rng_next() >> 56);
            break;
        }
    }
}

static double elem_value(const void *p, enum qv_elem e, size_t i)
{
    switch (e) {
    case QV_ELEM_F32:
        return ((const float *)p)[i];
    case QV_ELEM_F16:
        return qv_f16_to_f32(((const uint16_t *)p)[i]);
    default:
        return ((const int8_t *)p)[i];
    }
}

/*
 * The oracle: the distance computed here in double (exact for int8 up to
 * 2^53), and a magnitude that bounds the rounding a float kernel may make:
 * sum |terms| for L2 and IP, 1 for cosine (|a.b| <= |a||b|).
 */
static double oracle(enum qv_metric m, enum qv_elem e, const void *a,
                     const void *b, size_t dim, double *mag)
{
    double dot = 0, na = 0, nb = 0, l2 = 0, absdot = 0;
    for (size_t i = 0; i < dim; i++) {
        double x = elem_value(a, e, i), y = elem_value(b, e, i);
        dot += x * y;
        absdot += fabs(x * y);
        na += x * x;
        nb += y * y;
        l2 += (x - y) * (x - y);
    }
    switch (m) {
    case QV_METRIC_L2:
        *mag = l2;
        return l2;
    case QV_METRIC_IP:
        *mag = absdot;
        return -dot;
    default:
        *mag = 1.0;
        if (na == 0 || nb == 0)
            return 1.0;
        return 1.0 - dot / sqrt(na * nb);
    }
}

static double tolerance(size_t dim, double mag)
{
    return 1e-5 * sqrt((double)dim) * mag + 1e-6;
}

/* Two pages; the second is PROT_NONE.  Returns the first. */
static char *guarded_alloc(size_t *usable)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t len = 2 * page;
    while (len - page < MAXDIM * sizeof(float) + 64)
        len += page;
    char *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    if (mprotect(p + len - page, page, PROT_NONE) != 0) {
        munmap(p, len);
        return NULL;
    }
    *usable = len - page;
    return p;
}

static void guarded_free(char *p, size_t usable)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    if (p)
        munmap(p, usable + page);
}

/* ------------------------------------------------------------------ */
/* Dispatch                                                             */
/* ------------------------------------------------------------------ */

static void test_names(void)
{
    CU_ASSERT_STRING_EQUAL(qv_simd_name(QV_SIMD_REF), "ref");
    CU_ASSERT_STRING_EQUAL(qv_simd_name(QV_SIMD_AVX2), "avx2");
    CU_ASSERT_STRING_EQUAL(qv_simd_name(QV_SIMD_AVX512), "avx512");
    CU_ASSERT_STRING_EQUAL(qv_simd_name(QV_SIMD__COUNT), "unknown");
    CU_ASSERT_STRING_EQUAL(qv_metric_name(QV_METRIC_L2), "l2");
    CU_ASSERT_STRING_EQUAL(qv_metric_name(QV_METRIC_IP), "ip");
    CU_ASSERT_STRING_EQUAL(qv_metric_name(QV_METRIC_COSINE), "cosine");
    CU_ASSERT_STRING_EQUAL(qv_metric_name(QV_METRIC__COUNT), "unknown");
    CU_ASSERT_STRING_EQUAL(qv_elem_name(QV_ELEM_F32), "f32");
    CU_ASSERT_STRING_EQUAL(qv_elem_name(QV_ELEM_F16), "f16");
    CU_ASSERT_STRING_EQUAL(qv_elem_name(QV_ELEM_I8), "i8");
    CU_ASSERT_STRING_EQUAL(qv_elem_name(QV_ELEM__COUNT), "unknown");

    for (int l = 0; l < QV_SIMD__COUNT; l++)
        CU_ASSERT_EQUAL(qv_simd_parse(qv_simd_name((enum qv_simd)l)), l);
    for (int m = 0; m < QV_METRIC__COUNT; m++)
        CU_ASSERT_EQUAL(qv_metric_parse(qv_metric_name((enum qv_metric)m)), m);
    CU_ASSERT_EQUAL(qv_simd_parse("avx9"), -1);
    CU_ASSERT_EQUAL(qv_simd_parse("AVX2"), -1);
    CU_ASSERT_EQUAL(qv_simd_parse(""), -1);
    CU_ASSERT_EQUAL(qv_simd_parse(NULL), -1);
    CU_ASSERT_EQUAL(qv_metric_parse("euclid"), -1);
    CU_ASSERT_EQUAL(qv_metric_parse(NULL), -1);
}

static void test_levels(void)
{
    enum qv_simd det = qv_simd_detect();

    CU_ASSERT((unsigned)det < QV_SIMD__COUNT);
    CU_ASSERT_PTR_NOT_NULL_FATAL(qv_kernels_level(QV_SIMD_REF));
    CU_ASSERT_PTR_NULL(qv_kernels_level(QV_SIMD__COUNT));
    for (int l = 0; l < QV_SIMD__COUNT; l++) {
        const struct qv_dist_ops *ops = qv_kernels_level((enum qv_simd)l);
        if (l > (int)det) {
            CU_ASSERT_PTR_NULL(ops);
            continue;
        }
        CU_ASSERT_PTR_NOT_NULL_FATAL(ops);
        CU_ASSERT_EQUAL((int)ops->level, l);
        for (int m = 0; m < QV_METRIC__COUNT; m++)
            for (int e = 0; e < QV_ELEM__COUNT; e++)
                CU_ASSERT_PTR_NOT_NULL(ops->dist[m][e]);
        CU_ASSERT_PTR_NOT_NULL(ops->normalize_f32);
        CU_ASSERT_PTR_NOT_NULL(ops->f32_to_f16);
        CU_ASSERT_PTR_NOT_NULL(ops->f16_to_f32);
        /* Stable: the same table every time. */
        CU_ASSERT_PTR_EQUAL(ops, qv_kernels_level((enum qv_simd)l));
    }
    printf("\n    cpu supports: %s\n", qv_simd_name(det));
}

static void test_init_cap(void)
{
    enum qv_simd det = qv_simd_detect();
    enum qv_simd top = (enum qv_simd)(QV_SIMD__COUNT - 1);
    char *saved = getenv("QV_SIMD") ? strdup(getenv("QV_SIMD")) : NULL;

    unsetenv("QV_SIMD");
    CU_ASSERT_PTR_NOT_NULL(qv_kernels());
    CU_ASSERT_EQUAL(qv_kernels_init(top), det);
    CU_ASSERT_PTR_EQUAL(qv_kernels(), qv_kernels_level(det));

    /* The argument caps; a cap above the CPU is lowered to it. */
    CU_ASSERT_EQUAL(qv_kernels_init(QV_SIMD_REF), QV_SIMD_REF);
    CU_ASSERT_EQUAL(qv_kernels()->level, QV_SIMD_REF);
    CU_ASSERT_PTR_EQUAL(qv_kernels(), qv_kernels_level(QV_SIMD_REF));
    CU_ASSERT_EQUAL(qv_kernels_init(QV_SIMD_AVX2),
                    det < QV_SIMD_AVX2 ? det : QV_SIMD_AVX2);
    CU_ASSERT_EQUAL(qv_kernels()->level,
                    det < QV_SIMD_AVX2 ? det : QV_SIMD_AVX2);
    CU_ASSERT_EQUAL(qv_kernels_init(QV_SIMD__COUNT), det);

    /* QV_SIMD caps too, and the lower of the two caps wins. */
    setenv("QV_SIMD", "ref", 1);
    CU_ASSERT_EQUAL(qv_kernels_init(top), QV_SIMD_REF);
    CU_ASSERT_EQUAL(qv_kernels()->level, QV_SIMD_REF);
    setenv("QV_SIMD", "avx2", 1);
    CU_ASSERT_EQUAL(qv_kernels_init(top), det < QV_SIMD_AVX2 ? det : QV_SIMD_AVX2);
    CU_ASSERT_EQUAL(qv_kernels_init(QV_SIMD_REF), QV_SIMD_REF);
    setenv("QV_SIMD", "avx512", 1);
    CU_ASSERT_EQUAL(qv_kernels_init(top), det);
    setenv("QV_SIMD", "auto", 1);
    CU_ASSERT_EQUAL(qv_kernels_init(top), det);
    setenv("QV_SIMD", "", 1);
    CU_ASSERT_EQUAL(qv_kernels_init(top), det);
    /* Unknown value: ignored (with a warning on stderr). */
    setenv("QV_SIMD", "avx9000", 1);
    CU_ASSERT_EQUAL(qv_kernels_init(top), det);
    CU_ASSERT_EQUAL(qv_kernels()->level, det);

    if (saved) {
        setenv("QV_SIMD", saved, 1);
        free(saved);
    } else {
        unsetenv("QV_SIMD");
    }
    qv_kernels_init(top);
}

/* ------------------------------------------------------------------ */
/* Known answers                                                        */
/* ------------------------------------------------------------------ */

/* a = (1, 2, 3, -4), b = (4, -5, 6, 0.5) in every type but i8's b, which
 * is (4, -5, 6, 1): exact in f16 and representable in int8. */
static void store_values(void *p, enum qv_elem e, const float *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (e == QV_ELEM_F32)
            ((float *)p)[i] = v[i];
        else if (e == QV_ELEM_F16)
            ((uint16_t *)p)[i] = qv_f32_to_f16(v[i]);
        else
            ((int8_t *)p)[i] = (int8_t)v[i];
    }
}

static void test_known_answers(void)
{
    static const float va[4] = { 1, 2, 3, -4 };
    static const float vb_f[4] = { 4, -5, 6, 0.5f };
    static const float vb_i[4] = { 4, -5, 6, 1 };
    static const float zero[4] = { 0, 0, 0, 0 };
    static const float neg[4] = { -1, -2, -3, 4 };
    /* float: a.b = 4 - 10 + 18 - 2 = 10; |a|^2 = 30; |b|^2 = 77.25;
     *        L2 = 9 + 49 + 9 + 20.25 = 87.25
     * int8:  a.b = 8; |b|^2 = 78; L2 = 9 + 49 + 9 + 25 = 92 */
    const double want_f[3] = { 87.25, -10.0, 1.0 - 10.0 / sqrt(30.0 * 77.25) };
    const double want_i[3] = { 92.0, -8.0, 1.0 - 8.0 / sqrt(30.0 * 78.0) };
    union { float f[8]; uint16_t h[8]; int8_t i[8]; } a, b, z, n;

    for (int l = 0; l < QV_SIMD__COUNT; l++) {
        const struct qv_dist_ops *ops = qv_kernels_level((enum qv_simd)l);
        if (!ops)
            continue;
        for (int e = 0; e < QV_ELEM__COUNT; e++) {
            const double *want = e == QV_ELEM_I8 ? want_i : want_f;
            store_values(&a, (enum qv_elem)e, va, 4);
            store_values(&b, (enum qv_elem)e, e == QV_ELEM_I8 ? vb_i : vb_f, 4);
            store_values(&z, (enum qv_elem)e, zero, 4);
            store_values(&n, (enum qv_elem)e, neg, 4);
            for (int m = 0; m < QV_METRIC__COUNT; m++) {
                float got = ops->dist[m][e](&a, &b, 4);
                if (fabs(got - want[m]) > 1e-6) {
                    printf("\n    %s %s %s: got %.9g want %.9g",
                           qv_simd_name((enum qv_simd)l),
                           qv_metric_name((enum qv_metric)m),
                           qv_elem_name((enum qv_elem)e), got, want[m]);
                    CU_FAIL("known answer");
                }
                /* dim 1 reads only the first element. */
                double w1 = m == QV_METRIC_L2 ? 9.0 : m == QV_METRIC_IP ? -4.0 : 0.0;
                CU_ASSERT_DOUBLE_EQUAL(ops->dist[m][e](&a, &b, 1), w1, 1e-6);
            }
            qv_dist_fn cosine = ops->dist[QV_METRIC_COSINE][e];
            /* Zero vectors: cosine distance 1; self: 0; opposite: 2. */
            CU_ASSERT_EQUAL(cosine(&a, &z, 4), 1.0f);
            CU_ASSERT_EQUAL(cosine(&z, &b, 4), 1.0f);
            CU_ASSERT_EQUAL(cosine(&z, &z, 4), 1.0f);
            CU_ASSERT_EQUAL(cosine(&a, &a, 4), 0.0f);
            CU_ASSERT_DOUBLE_EQUAL(cosine(&a, &n, 4), 2.0, 1e-6);
            CU_ASSERT_EQUAL(ops->dist[QV_METRIC_L2][e](&a, &a, 4), 0.0f);
            CU_ASSERT_EQUAL(ops->dist[QV_METRIC_L2][e](&a, &z, 4), 30.0f);
            CU_ASSERT_EQUAL(ops->dist[QV_METRIC_IP][e](&a, &a, 4), -30.0f);
            CU_ASSERT_EQUAL(ops->dist[QV_METRIC_IP][e](&a, &z, 4), 0.0f);
        }
    }
}

/* ------------------------------------------------------------------ */
/* Random data against the reference and the oracle                     */
/* ------------------------------------------------------------------ */

/* Checks one level on (a, b) for every metric; returns mismatches. */
static int check_pair(const struct qv_dist_ops *ops,
                      const struct qv_dist_ops *ref, enum qv_elem e,
                      const void *a, const void *b, size_t dim,
                      const char *what, int *reports)
{
    int bad = 0;
    for (int m = 0; m < QV_METRIC__COUNT; m++) {
        double mag, want = oracle((enum qv_metric)m, e, a, b, dim, &mag);
        float got = ops->dist[m][e](a, b, dim);
        float r = ref->dist[m][e](a, b, dim);
        int ok;
        if (e == QV_ELEM_I8)
            /* Exact: every level returns the same float; the oracle is
             * exact too (int64-sized sums, within 2^53). */
            ok = got == r && (m == QV_METRIC_COSINE
                              ? fabs(got - want) <= 1e-6
                              : got == (float)want);
        else
            ok = fabs(got - want) <= tolerance(dim, mag) &&
                 fabs(got - r) <= tolerance(dim, mag) &&
                 fabs(r - want) <= 1e-7 * mag + 1e-7;
        if (!ok) {
            bad++;
            if ((*reports)++ < MAX_REPORTS)
                printf("\n    %s %s %s dim %zu (%s): got %.9g ref %.9g "
                       "oracle %.9g", qv_simd_name(ops->level),
                       qv_metric_name((enum qv_metric)m),
                       qv_elem_name(e), dim, what, got, r, want);
        }
    }
    return bad;
}

static void test_random_vs_ref(void)
{
    const struct qv_dist_ops *ref = qv_kernels_level(QV_SIMD_REF);
    /* +1 element: the vectors start one element past an aligned base. */
    float *abuf = aligned_alloc(64, (MAXDIM + 64) * sizeof(float));
    float *bbuf = aligned_alloc(64, (MAXDIM + 64) * sizeof(float));
    int bad = 0, reports = 0, checks = 0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(abuf);
    CU_ASSERT_PTR_NOT_NULL_FATAL(bbuf);
    rng_seed(12345);
    for (int e = 0; e < QV_ELEM__COUNT; e++) {
        size_t es = elem_size[e];
        for (size_t di = 0; di < NDIMS; di++) {
            size_t dim = dims[di];
            for (int pair = 0; pair < PAIRS_PER_DIM; pair++) {
                /* Alternate aligned / unaligned, and scales. */
                size_t off = (size_t)(pair & 1) * es;
                float scale = pair < 2 ? 1.0f : 37.5f;
                char *a = (char *)abuf + off, *b = (char *)bbuf + off;
                fill_random(a, (enum qv_elem)e, dim, scale);
                fill_random(b, (enum qv_elem)e, dim, scale);
                if (pair == 3)          /* b near a: small L2, cosine ~ 0 */
                    for (size_t i = 0; i < dim && e == QV_ELEM_F32; i++)
                        ((float *)b)[i] = ((float *)a)[i] + rng_float(0.01f);
                for (int l = 0; l < QV_SIMD__COUNT; l++) {
                    const struct qv_dist_ops *ops =
                        qv_kernels_level((enum qv_simd)l);
                    if (!ops)
                        continue;
                    bad += check_pair(ops, ref, (enum qv_elem)e, a, b, dim,
                                      off ? "unaligned" : "aligned", &reports);
                    checks++;
                }
            }
        }
    }
    printf("\n    %d level x type x dim x pair checks, %d mismatches ", checks, bad);
    CU_ASSERT_EQUAL(bad, 0);
    free(abuf);
    free(bbuf);
}

/* Vectors ending exactly at a PROT_NONE page: a kernel that reads past
 * dim faults here.  Every dim from 1 to 130 and 784. */
static void test_guard_page(void)
{
    const struct qv_dist_ops *ref = qv_kernels_level(QV_SIMD_REF);
    size_t ua = 0, ub = 0;
    char *pa = guarded_alloc(&ua), *pb = guarded_alloc(&ub);
    int bad = 0, reports = 0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(pa);
    CU_ASSERT_PTR_NOT_NULL_FATAL(pb);
    rng_seed(777);
    for (int e = 0; e < QV_ELEM__COUNT; e++) {
        for (size_t dim = 1; dim <= 784; dim = dim < 130 ? dim + 1 : 784 + 1) {
            size_t bytes = dim * elem_size[e];
            char *a = pa + ua - bytes, *b = pb + ub - bytes;
            fill_random(a, (enum qv_elem)e, dim, 2.0f);
            fill_random(b, (enum qv_elem)e, dim, 2.0f);
            for (int l = 0; l < QV_SIMD__COUNT; l++) {
                const struct qv_dist_ops *ops = qv_kernels_level((enum qv_simd)l);
                if (ops)
                    bad += check_pair(ops, ref, (enum qv_elem)e, a, b, dim,
                                      "at guard page", &reports);
            }
            if (dim == 130)
                dim = 783;
        }
    }
    CU_ASSERT_EQUAL(bad, 0);
    guarded_free(pa, ua);
    guarded_free(pb, ub);
}

/* int8 sums that overflow int32 stay exact, even where a kernel's single
 * int32 lane would overflow (L2: 2 * 255^2 per VPMADDWD lane, so past
 * about 2^31 / 130050 * 32 = 528k codes for 16 lanes; IP: past 2.1M). */
static void test_i8_large(void)
{
    const size_t dim = 2200000;
    int8_t *lo = malloc(dim), *hi = malloc(dim);

    CU_ASSERT_PTR_NOT_NULL_FATAL(lo);
    CU_ASSERT_PTR_NOT_NULL_FATAL(hi);
    memset(lo, -128, dim);
    memset(hi, 127, dim);
    for (int l = 0; l < QV_SIMD__COUNT; l++) {
        const struct qv_dist_ops *ops = qv_kernels_level((enum qv_simd)l);
        if (!ops)
            continue;
        /* 255^2 * 2.2M = 1.43e11 > 2^37 */
        CU_ASSERT_EQUAL(ops->dist[QV_METRIC_L2][QV_ELEM_I8](lo, hi, dim),
                        (float)(65025.0 * dim));
        /* -(128^2 * 2.2M) = -3.6e10 < -2^35 */
        CU_ASSERT_EQUAL(ops->dist[QV_METRIC_IP][QV_ELEM_I8](lo, lo, dim),
                        (float)(-16384.0 * dim));
        CU_ASSERT_DOUBLE_EQUAL(ops->dist[QV_METRIC_COSINE][QV_ELEM_I8](lo, hi, dim),
                               2.0, 1e-6);
        CU_ASSERT_EQUAL(ops->dist[QV_METRIC_COSINE][QV_ELEM_I8](lo, lo, dim), 0.0f);
    }
    /* Random codes at a large odd dim: all levels bit-equal to ref. */
    rng_seed(99);
    fill_random(lo, QV_ELEM_I8, dim, 0);
    fill_random(hi, QV_ELEM_I8, dim, 0);
    const struct qv_dist_ops *ref = qv_kernels_level(QV_SIMD_REF);
    for (int l = 1; l < QV_SIMD__COUNT; l++) {
        const struct qv_dist_ops *ops = qv_kernels_level((enum qv_simd)l);
        if (!ops)
            continue;
        for (int m = 0; m < QV_METRIC__COUNT; m++)
            CU_ASSERT_EQUAL(ops->dist[m][QV_ELEM_I8](lo + 1, hi + 1, dim - 3),
                            ref->dist[m][QV_ELEM_I8](lo + 1, hi + 1, dim - 3));
    }
    free(lo);
    free(hi);
}

/* ------------------------------------------------------------------ */
/* float16 conversions                                                  */
/* ------------------------------------------------------------------ */

/* The value of half h, from its definition. */
static double half_value(uint16_t h)
{
    int exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    double v = exp == 0 ? ldexp(mant, -24) : ldexp(mant | 0x400, exp - 25);
    return (h & 0x8000) ? -v : v;
}

static void test_f16_exhaustive(void)
{
    int bad = 0;
    float prev = -1.0f;

    for (uint32_t u = 0; u < 65536; u++) {
        uint16_t h = (uint16_t)u;
        float f = qv_f16_to_f32(h);
        uint16_t back = qv_f32_to_f16(f);
        int ok;

        if (half_is_nan(h)) {
            /* NaN stays NaN, sign kept, quiet bit set, payload kept. */
            ok = isnan(f) && half_is_nan(back) &&
                 (back & 0x8000) == (h & 0x8000) &&
                 back == (h | 0x200);
        } else if ((h & 0x7fff) == 0x7c00) {
            ok = isinf(f) && (f < 0) == !!(h & 0x8000) && back == h;
        } else {
            ok = (double)f == half_value(h) && back == h &&
                 !!signbit(f) == !!(h & 0x8000);
        }
        /* Positive halves map to strictly increasing floats. */
        if (h > 0 && h <= 0x7c00) {
            ok = ok && f > prev;
            prev = f;
        }
        if (!ok && bad++ < MAX_REPORTS)
            printf("\n    half 0x%04x -> %a -> 0x%04x", h, f, back);
    }
    CU_ASSERT_EQUAL(bad, 0);

    CU_ASSERT_EQUAL(qv_f16_to_f32(0x3c00), 1.0f);
    CU_ASSERT_EQUAL(qv_f16_to_f32(0xc000), -2.0f);
    CU_ASSERT_EQUAL(qv_f16_to_f32(0x7bff), 65504.0f);
    CU_ASSERT_EQUAL(qv_f16_to_f32(0x0001), 0x1p-24f);
    CU_ASSERT_EQUAL(qv_f16_to_f32(0x03ff), 0x3ffp-24f);
    CU_ASSERT_EQUAL(qv_f16_to_f32(0x0400), 0x1p-14f);
    CU_ASSERT_EQUAL(qv_f16_to_f32(0x3555), 0x1.554p-2f);
    CU_ASSERT(signbit(qv_f16_to_f32(0x8000)) && qv_f16_to_f32(0x8000) == 0.0f);
}

static void test_f32_to_f16_rounding(void)
{
    static const struct { float f; uint16_t h; } cases[] = {
        { 0.0f, 0x0000 }, { -0.0f, 0x8000 }, { 1.0f, 0x3c00 },
        { -2.0f, 0xc000 }, { 0.1f, 0x2e66 }, { 1.0f / 3.0f, 0x3555 },
        /* ties to even in the normal range */
        { 1.0f + 0x1p-11f, 0x3c00 },                 /* 1 | 1+ulp -> 1 */
        { 1.0f + 3 * 0x1p-11f, 0x3c02 },             /* odd | even -> even */
        { 1.0f + 0x1p-11f + 0x1p-20f, 0x3c01 },      /* just above a tie */
        { 1.0f + 0x1p-11f - 0x1p-23f, 0x3c00 },      /* just below a tie */
        { 2047.5f, 0x6800 },                         /* 2047|2048 -> 2048 */
        { 2046.5f, 0x67fe },                         /* 2046|2047 -> 2046 */
        /* largest half, overflow */
        { 65504.0f, 0x7bff }, { 65519.996f, 0x7bff },
        { 65520.0f, 0x7c00 }, { -65520.0f, 0xfc00 },
        { 1e10f, 0x7c00 }, { -3.4e38f, 0xfc00 },
        /* subnormal halves (units of 2^-24) */
        { 0x1p-24f, 0x0001 }, { -0x1p-24f, 0x8001 },
        { 0x1p-25f, 0x0000 },                        /* 0 | 1 -> 0 */
        { 0x1.000002p-25f, 0x0001 },                 /* above the tie */
        { 3 * 0x1p-25f, 0x0002 },                    /* 1 | 2 -> 2 */
        { 5 * 0x1p-25f, 0x0002 },                    /* 2 | 3 -> 2 */
        { 0x3ffp-24f, 0x03ff },
        { 0x1p-14f - 0x1p-25f, 0x0400 },             /* 0x3ff | 0x400 -> 0x400 */
        { 0x1p-14f, 0x0400 },
        { 0x1p-26f, 0x0000 }, { 1e-10f, 0x0000 }, { -1e-10f, 0x8000 },
        { 0x1p-149f, 0x0000 },                       /* float subnormal */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint16_t got = qv_f32_to_f16(cases[i].f);
        if (got != cases[i].h) {
            printf("\n    %a -> 0x%04x, want 0x%04x", cases[i].f, got, cases[i].h);
            CU_FAIL("f32 -> f16 rounding");
        }
    }
    CU_ASSERT_EQUAL(qv_f32_to_f16(INFINITY), 0x7c00);
    CU_ASSERT_EQUAL(qv_f32_to_f16(-INFINITY), 0xfc00);
    CU_ASSERT(half_is_nan(qv_f32_to_f16(NAN)));
    CU_ASSERT(half_is_nan(qv_f32_to_f16(bits_f32(0x7f800001u))));  /* sNaN */
    CU_ASSERT(half_is_nan(qv_f32_to_f16(bits_f32(0xff800001u))));
    CU_ASSERT(qv_f32_to_f16(bits_f32(0xff800001u)) & 0x8000);

    /* Nearest: for random floats in the half range, no half is closer. */
    int bad = 0;
    rng_seed(4242);
    for (int i = 0; i < 200000; i++) {
        float f = bits_f32((uint32_t)(rng_next() >> 32) % 0x477fe000u);
        uint16_t h = qv_f32_to_f16(f);
        double err = fabs(half_value(h) - f);
        double lo = fabs(half_value(h == 0 ? 0 : (uint16_t)(h - 1)) - f);
        double hi = fabs(half_value((uint16_t)(h + 1)) - f);
        if (err > lo || err > hi)
            if (bad++ < MAX_REPORTS)
                printf("\n    %a -> 0x%04x is not nearest", f, h);
    }
    CU_ASSERT_EQUAL(bad, 0);
}

/* SIMD array conversions equal the scalar ones bit for bit. */
static void test_f16_arrays(void)
{
    const size_t nrand = 1 << 18;
    uint16_t *h = malloc(65536 * sizeof *h), *h2 = malloc((nrand + 64) * sizeof *h2);
    float *f = malloc((65536 + 64) * sizeof *f), *fr = malloc((nrand + 64) * sizeof *fr);
    int bad = 0;

    CU_ASSERT_FATAL(h && h2 && f && fr);
    for (uint32_t u = 0; u < 65536; u++)
        h[u] = (uint16_t)u;
    rng_seed(5);
    for (size_t i = 0; i < nrand; i++)
        fr[i] = bits_f32((uint32_t)(rng_next() >> 32));     /* any bits */
    static const float special[] = {
        0.0f, -0.0f, INFINITY, -INFINITY, NAN, 65520.0f, 65519.996f,
        0x1p-25f, 3 * 0x1p-25f, 1.0f + 0x1p-11f, 1.0f + 3 * 0x1p-11f,
    };
    memcpy(fr, special, sizeof special);

    for (int l = 0; l < QV_SIMD__COUNT; l++) {
        const struct qv_dist_ops *ops = qv_kernels_level((enum qv_simd)l);
        if (!ops)
            continue;
        ops->f16_to_f32(h, f, 65536);
        for (uint32_t u = 0; u < 65536; u++) {
            float s = qv_f16_to_f32((uint16_t)u);
            if (f32_bits(f[u]) != f32_bits(s) && bad++ < MAX_REPORTS)
                printf("\n    %s f16_to_f32(0x%04x) = 0x%08x, scalar 0x%08x",
                       qv_simd_name(ops->level), u, f32_bits(f[u]), f32_bits(s));
        }
        ops->f32_to_f16(fr, h2, nrand);
        for (size_t i = 0; i < nrand; i++) {
            uint16_t s = qv_f32_to_f16(fr[i]);
            if (h2[i] != s && bad++ < MAX_REPORTS)
                printf("\n    %s f32_to_f16(0x%08x) = 0x%04x, scalar 0x%04x",
                       qv_simd_name(ops->level), f32_bits(fr[i]), h2[i], s);
        }
        /* Every length 0..40 at an unaligned start; nothing written past
         * n (sentinels). */
        for (size_t n = 0; n <= 40; n++) {
            for (size_t i = 0; i < n + 8; i++) {
                h2[1 + i] = 0xdead;
                f[1 + i] = -777.0f;
            }
            ops->f32_to_f16(fr + 100, h2 + 1, n);
            ops->f16_to_f32(h + 0x3000, f + 1, n);
            for (size_t i = 0; i < n; i++) {
                if (h2[1 + i] != qv_f32_to_f16(fr[100 + i]))
                    bad++;
                if (f[1 + i] != qv_f16_to_f32((uint16_t)(0x3000 + i)))
                    bad++;
            }
            for (size_t i = n; i < n + 8; i++)
                if (h2[1 + i] != 0xdead || f[1 + i] != -777.0f)
                    bad++;
        }
    }
    CU_ASSERT_EQUAL(bad, 0);
    free(h);
    free(h2);
    free(f);
    free(fr);
}

/* ------------------------------------------------------------------ */
/* normalize                                                            */
/* ------------------------------------------------------------------ */

static void test_normalize(void)
{
    const struct qv_dist_ops *ref = qv_kernels_level(QV_SIMD_REF);
    float *v = malloc((MAXDIM + 16) * sizeof *v);
    float *w = malloc((MAXDIM + 16) * sizeof *w);
    int bad = 0;

    CU_ASSERT_FATAL(v && w);
    rng_seed(31337);
    for (int l = 0; l < QV_SIMD__COUNT; l++) {
        const struct qv_dist_ops *ops = qv_kernels_level((enum qv_simd)l);
        if (!ops)
            continue;
        for (size_t di = 0; di < NDIMS; di++) {
            size_t dim = dims[di];
            float scale = di & 1 ? 1000.0f : 0.01f;
            for (size_t i = 0; i < dim; i++)
                v[1 + i] = w[1 + i] = rng_float(scale);
            v[1 + dim] = w[1 + dim] = 12345.0f;             /* sentinel */
            ops->normalize_f32(v + 1, dim);                 /* unaligned */
            ref->normalize_f32(w + 1, dim);
            double n2 = 0;
            for (size_t i = 0; i < dim; i++) {
                n2 += (double)v[1 + i] * v[1 + i];
                if (fabsf(v[1 + i] - w[1 + i]) > 1e-6f * (1 + fabsf(w[1 + i])))
                    bad++;
            }
            if (fabs(sqrt(n2) - 1.0) > 1e-6 || v[1 + dim] != 12345.0f) {
                bad++;
                printf("\n    %s normalize dim %zu: |v| = %.9g",
                       qv_simd_name(ops->level), dim, sqrt(n2));
            }
            /* All-zero vectors are left as they are. */
            memset(v, 0, (dim + 1) * sizeof *v);
            v[1 + dim] = 12345.0f;
            ops->normalize_f32(v + 1, dim);
            for (size_t i = 0; i < dim; i++)
                if (f32_bits(v[1 + i]) != 0)
                    bad++;
            if (v[1 + dim] != 12345.0f)
                bad++;
        }
    }
    CU_ASSERT_EQUAL(bad, 0);
    free(v);
    free(w);
}

/* ------------------------------------------------------------------ */

int main(void)
{
    CU_pSuite suite;
    unsigned int failures;

    if (CU_initialize_registry() != CUE_SUCCESS)
        return 1;
    suite = CU_add_suite("dist", NULL, NULL);
    if (suite == NULL ||
        !CU_add_test(suite, "names and parsing", test_names) ||
        !CU_add_test(suite, "levels and tables", test_levels) ||
        !CU_add_test(suite, "init caps and QV_SIMD", test_init_cap) ||
        !CU_add_test(suite, "known answers", test_known_answers) ||
        !CU_add_test(suite, "random data vs reference", test_random_vs_ref) ||
        !CU_add_test(suite, "tails at a guard page", test_guard_page) ||
        !CU_add_test(suite, "int8 beyond int32 range", test_i8_large) ||
        !CU_add_test(suite, "f16 exhaustive round trip", test_f16_exhaustive) ||
        !CU_add_test(suite, "f32 -> f16 rounding", test_f32_to_f16_rounding) ||
        !CU_add_test(suite, "f16 array conversions", test_f16_arrays) ||
        !CU_add_test(suite, "normalize", test_normalize)) {
        CU_cleanup_registry();
        return 1;
    }
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    failures = CU_get_number_of_failures();
    failures += CU_get_error() != CUE_SUCCESS;
    CU_cleanup_registry();
    return failures ? 1 : 0;
}
