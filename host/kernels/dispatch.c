/*
 * dispatch.c - the one place that chooses SIMD kernels (STYLE rule 11).
 *
 * Tables.  One static struct qv_dist_ops per level, filled exactly once
 * (pthread_once) for every level the CPU and OS can run: its ISA file's
 * qv__dist_fill_<isa>() plus scan_f32 = qv__scan_f32_<isa>.  After that the
 * tables are never written again, so any thread may read them.
 *
 * Detection (qv_simd_detect, computed once):
 *   QV_SIMD_AVX2    CPUID.1:ECX  FMA(12) OSXSAVE(27) AVX(28) F16C(29)
 *                   CPUID.7.0:EBX AVX2(5)
 *                   XCR0 bits 1,2 (OS saves XMM and YMM state)
 *   QV_SIMD_AVX512  all of the above, and
 *                   CPUID.7.0:EBX AVX512F(16) DQ(17) BW(30) VL(31)
 *                   XCR0 bits 5,6,7 (opmask, ZMM0-15 upper, ZMM16-31)
 * The AVX-512 file is also built with -mavx2 -mfma -mf16c, hence the
 * AVX2 requirements at the AVX-512 level.
 *
 * Selection.  The active level is min(detected, cap, QV_SIMD) and is held
 * in one atomic pointer.  qv_kernels_init() may be called again to choose
 * again (tests and benchmarks compare levels this way); since every table
 * stays valid forever, a thread that reads the pointer during a switch
 * gets either table, both correct.  qv_kernels() on first use selects with
 * no cap, unless qv_kernels_init() got there first.
 *
 * Cost: detection and filling run once (a few CPUID instructions);
 * qv_kernels() is one atomic load afterwards.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include "kernels_int.h"
#include "quiver/log.h"

static struct qv_dist_ops tables[QV_SIMD__COUNT];
static enum qv_simd detected;
static pthread_once_t tables_once = PTHREAD_ONCE_INIT;
static const struct qv_dist_ops *active;    /* __atomic access only */

static const char *const simd_names[QV_SIMD__COUNT] = {
    [QV_SIMD_REF] = "ref",
    [QV_SIMD_AVX2] = "avx2",
    [QV_SIMD_AVX512] = "avx512",
};

static const char *const metric_names[QV_METRIC__COUNT] = {
    [QV_METRIC_L2] = "l2",
    [QV_METRIC_IP] = "ip",
    [QV_METRIC_COSINE] = "cosine",
};

static const char *const elem_names[QV_ELEM__COUNT] = {
    [QV_ELEM_F32] = "f32",
    [QV_ELEM_F16] = "f16",
    [QV_ELEM_I8] = "i8",
};

/* ------------------------------------------------------------------ */
/* Detection                                                            */
/* ------------------------------------------------------------------ */

#if defined(__x86_64__) || defined(__i386__)
static uint64_t read_xcr0(void)
{
    uint32_t lo, hi;
    /* XGETBV with ECX = 0; encoded as bytes so no -mxsave is needed. */
    __asm__ volatile (".byte 0x0f, 0x01, 0xd0" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

static enum qv_simd detect_cpu(void)
{
    unsigned int eax, ebx, ecx, edx;
    unsigned int ecx1, ebx7;
    uint64_t xcr0;

    if (__get_cpuid_max(0, NULL) < 7)
        return QV_SIMD_REF;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx))
        return QV_SIMD_REF;
    ecx1 = ecx;
    __cpuid_count(7, 0, eax, ebx, ecx, edx);
    ebx7 = ebx;

    const unsigned int need1 = (1u << 12) | (1u << 27) | (1u << 28) | (1u << 29);
    if ((ecx1 & need1) != need1 || !(ebx7 & (1u << 5)))
        return QV_SIMD_REF;
    xcr0 = read_xcr0();             /* safe: OSXSAVE is set */
    if ((xcr0 & 0x6) != 0x6)
        return QV_SIMD_REF;

    const unsigned int need7 = (1u << 16) | (1u << 17) | (1u << 30) | (1u << 31);
    if ((ebx7 & need7) != need7 || (xcr0 & 0xe0) != 0xe0)
        return QV_SIMD_AVX2;
    return QV_SIMD_AVX512;
}
#else
static enum qv_simd detect_cpu(void)
{
    return QV_SIMD_REF;
}
#endif

static void fill_tables(void)
{
    detected = detect_cpu();

    qv__dist_fill_ref(&tables[QV_SIMD_REF]);
    tables[QV_SIMD_REF].scan_f32 = qv__scan_f32_ref;
    tables[QV_SIMD_REF].sq8 = &qv__sq8_kernels_ref;
    tables[QV_SIMD_REF].pq = &qv__pq_kernels_ref;
    if (detected >= QV_SIMD_AVX2) {
        qv__dist_fill_avx2(&tables[QV_SIMD_AVX2]);
        tables[QV_SIMD_AVX2].scan_f32 = qv__scan_f32_avx2;
        tables[QV_SIMD_AVX2].sq8 = &qv__sq8_kernels_avx2;
        tables[QV_SIMD_AVX2].pq = &qv__pq_kernels_avx2;
    }
    if (detected >= QV_SIMD_AVX512) {
        qv__dist_fill_avx512(&tables[QV_SIMD_AVX512]);
        tables[QV_SIMD_AVX512].scan_f32 = qv__scan_f32_avx512;
        tables[QV_SIMD_AVX512].sq8 = &qv__sq8_kernels_avx512;
        tables[QV_SIMD_AVX512].pq = &qv__pq_kernels_avx512;
    }
}

static void ensure_tables(void)
{
    pthread_once(&tables_once, fill_tables);
}

enum qv_simd qv_simd_detect(void)
{
    ensure_tables();
    return detected;
}

/* ------------------------------------------------------------------ */
/* Selection                                                            */
/* ------------------------------------------------------------------ */

/* The cap from QV_SIMD: unset, empty or "auto" mean none. */
static enum qv_simd env_cap(void)
{
    const char *s = getenv("QV_SIMD");
    int level;

    if (s == NULL || s[0] == '\0' || strcmp(s, "auto") == 0)
        return QV_SIMD__COUNT - 1;
    level = qv_simd_parse(s);
    if (level < 0) {
        QV_WARN("QV_SIMD=%s: unknown SIMD level, ignored "
                "(expected one of auto, ref, avx2, avx512)", s);
        return QV_SIMD__COUNT - 1;
    }
    return (enum qv_simd)level;
}

/* min(detected, cap, QV_SIMD); a cap out of range means none. */
static enum qv_simd select_level(enum qv_simd cap)
{
    enum qv_simd level, env;

    ensure_tables();
    level = detected;
    if ((unsigned int)cap < (unsigned int)level)
        level = cap;
    env = env_cap();
    if (env < level)
        level = env;
    QV_DEBUG("simd: using %s kernels (cpu supports %s)",
             qv_simd_name(level), qv_simd_name(detected));
    return level;
}

enum qv_simd qv_kernels_init(enum qv_simd cap)
{
    enum qv_simd level = select_level(cap);

    __atomic_store_n(&active, &tables[level], __ATOMIC_RELEASE);
    return level;
}

const struct qv_dist_ops *qv_kernels(void)
{
    const struct qv_dist_ops *ops = __atomic_load_n(&active, __ATOMIC_ACQUIRE);

    if (ops == NULL) {
        /* First use without qv_kernels_init(): select with no cap, but
         * never overwrite a choice another thread made meanwhile. */
        const struct qv_dist_ops *expected = NULL;
        ops = &tables[select_level(QV_SIMD__COUNT - 1)];
        if (!__atomic_compare_exchange_n(&active, &expected, ops, 0,
                                         __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            ops = expected;
    }
    return ops;
}

const struct qv_dist_ops *qv_kernels_level(enum qv_simd level)
{
    ensure_tables();
    if ((unsigned int)level > (unsigned int)detected)
        return NULL;
    return &tables[level];
}

/* ------------------------------------------------------------------ */
/* Names                                                                */
/* ------------------------------------------------------------------ */

static int parse_name(const char *const *names, int count, const char *name)
{
    if (name == NULL)
        return -1;
    for (int i = 0; i < count; i++)
        if (strcmp(names[i], name) == 0)
            return i;
    return -1;
}

const char *qv_simd_name(enum qv_simd level)
{
    if ((unsigned int)level >= QV_SIMD__COUNT)
        return "unknown";
    return simd_names[level];
}

int qv_simd_parse(const char *name)
{
    return parse_name(simd_names, QV_SIMD__COUNT, name);
}

const char *qv_metric_name(enum qv_metric m)
{
    if ((unsigned int)m >= QV_METRIC__COUNT)
        return "unknown";
    return metric_names[m];
}

int qv_metric_parse(const char *name)
{
    return parse_name(metric_names, QV_METRIC__COUNT, name);
}

const char *qv_elem_name(enum qv_elem e)
{
    if ((unsigned int)e >= QV_ELEM__COUNT)
        return "unknown";
    return elem_names[e];
}
