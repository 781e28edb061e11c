/*
 * bench_peak.c - `quiverbench peak`: the two roofs a scan lives under.
 *
 * A flat scan of n x dim floats for nq queries does 2 * n * dim * nq
 * flops and reads n * dim * 4 bytes once per batch; whether it is fast is
 * only meaningful against what this machine can do at all.  This command
 * measures both ceilings with the same threads the benchmarks use:
 *
 *   fp32 FMA peak   T threads, thread i pinned to the i-th CPU of the
 *                   affinity mask, each runs register-only FMA chains
 *                   (bench_peak_avx512.c / _avx2.c) for --seconds;
 *                   GFLOP/s = sum over threads of flops / own elapsed.
 *   DRAM read       a --buffer-mib buffer (default 2 GiB, far beyond any
 *                   L3 here), first written by the thread that later
 *                   reads each share (so pages are local and faulted in),
 *                   then read by all T threads at once with the widest
 *                   loads summed into accumulators; a pass is timed from
 *                   a barrier before to a barrier after; best of 10 passes.
 *                   GB/s is 1e9 bytes per second.
 *
 * The ISA loops are chosen at run time from qv_simd_detect() (capped by
 * --simd); the portable fallback below serves CPUs without AVX2.
 */
#include <getopt.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "quiver/alloc.h"
#include "quiver/arena.h"
#include "quiver/dist.h"
#include "quiver/errors.h"
#include "quiver/timeutil.h"

#include "bench.h"

#define PEAK_MAX_THREADS 1024
#define PEAK_READ_PASSES 10
#define PEAK_FMA_CHUNK   (1u << 18)    /* iterations between clock reads */

const char qv__bench_peak_usage[] =
    "usage: quiverbench peak [--threads T] [--seconds S] [--buffer-mib M]\n"
    "                        [--simd ref|avx2|avx512] [--json]\n"
    "\n"
    "Measure fp32 FMA peak and DRAM read bandwidth with T pinned threads.\n"
    "\n"
    "  --threads T      threads, one per CPU of the affinity mask\n"
    "                   (1..CPUs available; default all)\n"
    "  --seconds S      duration of the FMA loop per thread (0.05..60; default 1)\n"
    "  --buffer-mib M   DRAM read buffer in MiB (64..65536; default 2048)\n"
    "  --simd L         use at most this ISA's loops (default: best the CPU has)\n"
    "  --json           print one JSON object: fma_gflops, dram_gbps, threads, ...\n"
    "  -h, --help       this text\n";

struct peak_thread {
    pthread_t tid;
    unsigned idx;
    unsigned cpu;
    struct peak_ctx *ctx;
    uint64_t flops;
    double fma_s;
    float sink;
    int pinned;
};

struct peak_ctx {
    enum qv_simd level;
    unsigned nthreads;
    double seconds;
    float *buf;
    size_t share_floats;            /* per thread, multiple of 256 */
    pthread_barrier_t barrier;
    double pass_s[PEAK_READ_PASSES];
    struct peak_thread *threads;
};

/* Portable fallbacks: 8 scalar chains / accumulators. */
static uint64_t peak_fma_ref(uint64_t iters, float *sink)
{
    float a[8] = { 0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f, 0.7f, 0.8f };
    const float b = 0.9999999f, c = 1e-7f;

    for (uint64_t i = 0; i < iters; i++)
        for (int j = 0; j < 8; j++)
            a[j] = a[j] * b + c;
    *sink = a[0] + a[1] + a[2] + a[3] + a[4] + a[5] + a[6] + a[7];
    return iters * 8u * 2u;
}

static float peak_read_ref(const float *p, size_t n)
{
    float s[8] = { 0 };

    for (size_t i = 0; i < n; i += 8)
        for (int j = 0; j < 8; j++)
            s[j] += p[i + j];
    return s[0] + s[1] + s[2] + s[3] + s[4] + s[5] + s[6] + s[7];
}

static uint64_t peak_fma(enum qv_simd level, uint64_t iters, float *sink)
{
    switch (level) {
    case QV_SIMD_AVX512: return qv__peak_fma_avx512(iters, sink);
    case QV_SIMD_AVX2:   return qv__peak_fma_avx2(iters, sink);
    default:             return peak_fma_ref(iters, sink);
    }
}

static float peak_read(enum qv_simd level, const float *p, size_t n)
{
    switch (level) {
    case QV_SIMD_AVX512: return qv__peak_read_avx512(p, n);
    case QV_SIMD_AVX2:   return qv__peak_read_avx2(p, n);
    default:             return peak_read_ref(p, n);
    }
}

static const char *peak_fma_shape(enum qv_simd level)
{
    switch (level) {
    case QV_SIMD_AVX512: return "8x2 zmm GEMM-shaped tile, 16 accumulators";
    case QV_SIMD_AVX2:   return "5x2 ymm GEMM-shaped tile, 10 accumulators";
    default:             return "8 scalar accumulators";
    }
}

#define PEAK_READ_STREAMS 4

static void *peak_worker(void *arg)
{
    struct peak_thread *t = arg;
    struct peak_ctx *ctx = t->ctx;
    const float *share = ctx->buf + (size_t)t->idx * ctx->share_floats;
    int64_t budget = (int64_t)(ctx->seconds * 1e9);
    int64_t t0, now;
    float sink = 0.0f, s;
    cpu_set_t set;

    CPU_ZERO(&set);
    CPU_SET(t->cpu, &set);
    t->pinned = pthread_setaffinity_np(pthread_self(), sizeof(set), &set) == 0;

    /* FMA: all threads start together. */
    pthread_barrier_wait(&ctx->barrier);
    t0 = qv_now_ns();
    t->flops = 0;
    do {
        t->flops += peak_fma(ctx->level, PEAK_FMA_CHUNK, &s);
        sink += s;
        now = qv_now_ns();
    } while (now - t0 < budget);
    t->fma_s = (double)(now - t0) * 1e-9;

    /* First touch of this thread's share, then timed passes.  The fill is
     * not zero and differs per cache line, so no layer below us (KSM in a
     * hypervisor, zero-page tricks) can back the buffer with shared pages
     * and turn a DRAM test into a cache test. */
    {
        float *w = ctx->buf + (size_t)t->idx * ctx->share_floats;
        for (size_t i = 0; i < ctx->share_floats; i++)
            w[i] = (float)((i + (size_t)t->idx * ctx->share_floats) & 0xffff) + 1.0f;
    }
    for (int p = 0; p < PEAK_READ_PASSES; p++) {
        pthread_barrier_wait(&ctx->barrier);
        t0 = qv_now_ns();
        if (p % 2 == 0) {
            sink += peak_read(ctx->level, share, ctx->share_floats);
        } else {
            /* Odd passes read the share as PEAK_READ_STREAMS interleaved
             * sequential streams, 8 KiB at a time from each, which is how
             * a blocked scan walks memory; some prefetchers keep more
             * lines in flight that way.  The best pass of either kind is
             * the figure. */
            size_t quarter = ctx->share_floats / PEAK_READ_STREAMS / 2048 * 2048;
            for (size_t off = 0; off < quarter; off += 2048)
                for (int j = 0; j < PEAK_READ_STREAMS; j++)
                    sink += peak_read(ctx->level, share + (size_t)j * quarter + off, 2048);
        }
        pthread_barrier_wait(&ctx->barrier);
        if (t->idx == 0)
            ctx->pass_s[p] = (double)(qv_now_ns() - t0) * 1e-9;
    }
    t->sink = sink;
    return NULL;
}

int qv__bench_peak_main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "threads",    required_argument, NULL, 't' },
        { "seconds",    required_argument, NULL, 's' },
        { "buffer-mib", required_argument, NULL, 'b' },
        { "simd",       required_argument, NULL, 'S' },
        { "json",       no_argument,       NULL, 'j' },
        { "help",       no_argument,       NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *cmd = "peak";
    const char *usage = qv__bench_peak_usage;
    static unsigned cpus[PEAK_MAX_THREADS];
    unsigned ncpus = qv__bench_cpus(cpus, PEAK_MAX_THREADS);
    uint64_t nthreads = ncpus > PEAK_MAX_THREADS ? PEAK_MAX_THREADS : ncpus;
    uint64_t buffer_mib = 2048;
    double seconds = 1.0;
    enum qv_simd level = qv_simd_detect();
    bool json = false;
    struct peak_ctx ctx;
    struct peak_thread *threads = NULL;
    enum qv_page_kind kind;
    size_t buf_bytes;
    unsigned started = 0;
    double gflops = 0.0, best_s, worst_s, gbps;
    int c, rc = QV_BENCH_EXIT_FAIL;

    if (ncpus > PEAK_MAX_THREADS)
        ncpus = PEAK_MAX_THREADS;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case 't':
            if (qv__bench_parse_u64(cmd, usage, "--threads", optarg, 1, ncpus, &nthreads))
                return QV_BENCH_EXIT_USAGE;
            break;
        case 's':
            if (qv__bench_parse_double(cmd, usage, "--seconds", optarg, 0.05, 60, &seconds))
                return QV_BENCH_EXIT_USAGE;
            break;
        case 'b':
            if (qv__bench_parse_u64(cmd, usage, "--buffer-mib", optarg, 64, 65536,
                                    &buffer_mib))
                return QV_BENCH_EXIT_USAGE;
            break;
        case 'S': {
            int want = qv_simd_parse(optarg);
            if (want < 0)
                return qv__bench_usage(cmd, usage,
                                       "--simd %s: expected one of ref, avx2, avx512",
                                       optarg);
            if ((enum qv_simd)want < level)
                level = (enum qv_simd)want;
            break;
        }
        case 'j':
            json = true;
            break;
        case 'h':
            fputs(usage, stdout);
            return QV_BENCH_EXIT_OK;
        case ':':
            return qv__bench_usage(cmd, usage, "%s needs a value", argv[optind - 1]);
        default:
            return qv__bench_usage(cmd, usage, "unknown flag '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return qv__bench_usage(cmd, usage, "unexpected argument '%s'", argv[optind]);

    memset(&ctx, 0, sizeof(ctx));
    ctx.level = level;
    ctx.nthreads = (unsigned)nthreads;
    ctx.seconds = seconds;
    ctx.share_floats = ((size_t)buffer_mib << 20) / sizeof(float) / nthreads / 8192 * 8192;
    buf_bytes = ctx.share_floats * sizeof(float) * nthreads;

    fprintf(stderr, "peak: %u threads, %s loops, %.2f s FMA, %zu MiB buffer\n",
            ctx.nthreads, qv_simd_name(level), seconds, buf_bytes >> 20);
    ctx.buf = qv_vmem_map(buf_bytes, QV_HUGE_THP, -1, &kind);
    if (ctx.buf == NULL) {
        fprintf(stderr, "quiverbench peak: cannot map a %zu MiB read buffer: %s "
                "(try a smaller --buffer-mib)\n", buf_bytes >> 20, qv_errmsg());
        return QV_BENCH_EXIT_FAIL;
    }
    threads = qv_calloc(nthreads, sizeof(*threads), QV_MEM_BENCH);
    if (threads == NULL) {
        fprintf(stderr, "quiverbench peak: out of memory\n");
        goto fail_threads;
    }
    ctx.threads = threads;
    if (pthread_barrier_init(&ctx.barrier, NULL, ctx.nthreads) != 0) {
        fprintf(stderr, "quiverbench peak: cannot create a barrier\n");
        goto fail_barrier;
    }
    for (unsigned i = 0; i < ctx.nthreads; i++) {
        threads[i].idx = i;
        threads[i].cpu = cpus[i];
        threads[i].ctx = &ctx;
        if (pthread_create(&threads[i].tid, NULL, peak_worker, &threads[i]) != 0) {
            /* The barrier would never open: nothing sane to do but exit. */
            fprintf(stderr, "quiverbench peak: cannot start thread %u\n", i);
            exit(QV_BENCH_EXIT_FAIL);
        }
        started++;
    }
    for (unsigned i = 0; i < started; i++)
        pthread_join(threads[i].tid, NULL);

    for (unsigned i = 0; i < ctx.nthreads; i++) {
        gflops += (double)threads[i].flops / threads[i].fma_s * 1e-9;
        if (!threads[i].pinned)
            fprintf(stderr, "peak: warning: thread %u could not be pinned to CPU %u\n",
                    i, threads[i].cpu);
    }
    best_s = worst_s = ctx.pass_s[0];
    for (int p = 1; p < PEAK_READ_PASSES; p++) {
        if (ctx.pass_s[p] < best_s)
            best_s = ctx.pass_s[p];
        if (ctx.pass_s[p] > worst_s)
            worst_s = ctx.pass_s[p];
    }
    gbps = (double)buf_bytes / best_s * 1e-9;

    if (json) {
        struct json_object *o = json_object_new_object();
        json_object_object_add(o, "fma_gflops", json_object_new_double(gflops));
        json_object_object_add(o, "dram_gbps", json_object_new_double(gbps));
        json_object_object_add(o, "threads", json_object_new_int((int)ctx.nthreads));
        json_object_object_add(o, "simd", json_object_new_string(qv_simd_name(level)));
        json_object_object_add(o, "fma_seconds", json_object_new_double(seconds));
        json_object_object_add(o, "buffer_mib",
                               json_object_new_int64((int64_t)(buf_bytes >> 20)));
        printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
        json_object_put(o);
    } else {
        printf("threads       %u (CPUs", ctx.nthreads);
        for (unsigned i = 0; i < ctx.nthreads; i++)
            printf("%s%u", i ? "," : " ", cpus[i]);
        printf(")\n");
        printf("fp32 FMA      %.1f GFLOP/s (%.1f per thread; %s %s, %.2f s)\n",
               gflops, gflops / ctx.nthreads, qv_simd_name(level),
               peak_fma_shape(level), seconds);
        printf("DRAM read     %.1f GB/s (%zu MiB, best of %d passes, %.1f GB/s worst)\n",
               gbps, buf_bytes >> 20, PEAK_READ_PASSES,
               (double)buf_bytes / worst_s * 1e-9);
    }
    rc = QV_BENCH_EXIT_OK;

    pthread_barrier_destroy(&ctx.barrier);
fail_barrier:
    qv_free(threads);
fail_threads:
    qv_vmem_unmap(ctx.buf, buf_bytes);
    return rc;
}
