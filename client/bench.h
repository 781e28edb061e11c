/*
 * bench.h - internals of quiverbench, the benchmark tool (client/).
 *
 * quiverbench is one binary with subcommands, each in its own file:
 *
 *   quiverbench.c        main(): dispatch, shared flag parsing, --help
 *   bench_gen.c          `gen`: deterministic clustered data + exact truth
 *   bench_offline.c      `offline`: build an index from fvecs, measure
 *                        recall@k, QPS and per-query latency
 *   bench_peak.c         `peak`: fp32 FMA peak and DRAM read bandwidth
 *   bench_fpga.c         `fpga`: the FPGA engine on a simulated card: NOP
 *                        round trip, a flat scan's modelled device time
 *                        beside the CPU engine's measured time
 *   bench_net.c          `net`: a running quiverd over UDP/TCP (libquiver):
 *                        recall, QPS, open-loop tail latency
 *   bench_peak_avx512.c  the peak loops with zmm registers (own library,
 *   bench_peak_avx2.c    compiled with only its ISA's flags; STYLE rule 11)
 *
 * Exit codes, the same in every subcommand: 0 success, 1 a runtime failure
 * (a file that cannot be read, an allocation that failed; the message names
 * the thing), 2 a usage error (unknown flag, value out of range, missing
 * required flag; the message names the flag and the range, then the
 * subcommand's usage follows).
 *
 * Nothing here is on a hot path; the tool may allocate and print freely
 * outside the timed regions.
 */
#ifndef QUIVER_CLIENT_BENCH_H
#define QUIVER_CLIENT_BENCH_H

#include <stddef.h>
#include <stdint.h>

#include "quiver/batcher.h"

#define QV_BENCH_EXIT_OK    0
#define QV_BENCH_EXIT_FAIL  1
#define QV_BENCH_EXIT_USAGE 2

/* Subcommands: argv[0] is the subcommand's name.  Return an exit code. */
int qv__bench_gen_main(int argc, char **argv);
int qv__bench_offline_main(int argc, char **argv);
int qv__bench_peak_main(int argc, char **argv);

/* Usage texts (static strings), printed by --help and after usage errors. */
extern const char qv__bench_gen_usage[];
extern const char qv__bench_offline_usage[];
extern const char qv__bench_peak_usage[];

/*
 * Print "quiverbench CMD: <message>" and then CMD's usage to stderr.
 * Returns QV_BENCH_EXIT_USAGE so callers write `return qv__bench_usage(...)`.
 */
int qv__bench_usage(const char *cmd, const char *usage, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/*
 * Parse a decimal unsigned integer flag value into *out and check that it
 * lies in [lo, hi].  Accepts k/m/g suffixes (x1000) for readability of big
 * counts ("--n 1m").  On failure prints the usage error naming the flag
 * and the range, and returns -1; 0 on success.
 */
int qv__bench_parse_u64(const char *cmd, const char *usage, const char *flag,
                        const char *val, uint64_t lo, uint64_t hi, uint64_t *out);

/* As qv__bench_parse_u64 for a finite decimal number in [lo, hi]. */
int qv__bench_parse_double(const char *cmd, const char *usage, const char *flag,
                           const char *val, double lo, double hi, double *out);

/*
 * CPUs in this process's affinity mask: fills cpus[] (up to max entries)
 * with their numbers in ascending order and returns how many there are
 * (at least 1; the count may exceed max).  Cannot fail.
 */
unsigned qv__bench_cpus(unsigned *cpus, unsigned max);

/* Value at quantile q in [0, 1] of v[0..n) (sorted ascending, n >= 1), by
 * the nearest-rank rule: v[ceil(q * n) - 1]. */
double qv__bench_quantile(const double *sorted, size_t n, double q);

/* The OpenCL and FPGA engines alone (--engine opencl | fpga) come from
 * quiver/engines.h: qv_engines_opencl, qv_engines_fpga (with
 * QV_ENGINES_SLOW_CARD), qv_engines_fpga_open. */
struct qv_config;
struct qv_engine;

/* `net`: a running quiverd measured through libquiver (bench_net.c). */
int qv__bench_net_main(int argc, char **argv);
extern const char qv__bench_net_usage[];
int qv__bench_upsert_main(int argc, char **argv);
extern const char qv__bench_upsert_usage[];

/* `fpga`: the FPGA figures (bench_fpga.c). */
int qv__bench_fpga_main(int argc, char **argv);
extern const char qv__bench_fpga_usage[];

/*
 * A meter around an engine: an engine that forwards submit/poll/health to
 * inner (owned: freed with the meter) and adds up, over the units it sees
 * complete, their count, device_ns and transfer_ns, so quiverbench can
 * print the share of wall time spent in kernels and in transfers (forget
 * is forwarded too).  NULL +
 * qv_errno (QV_ENOMEM) on failure, inner then freed.
 */
struct qv__bench_meter {
    uint64_t units, device_ns, transfer_ns;
};
struct qv_engine *qv__bench_meter_wrap(struct qv_engine *inner);
/* The totals since the last read, then reset them.  Cannot fail. */
void qv__bench_meter_take(struct qv_engine *meter, struct qv__bench_meter *out);

/*
 * --engine auto (bench_engine.c): the node's engines and router as
 * qv_engines_create (quiver/engines.h) builds them from cfg, over pool
 * (borrowed), with QV_ENGINES_SLOW_CARD (and QV_ENGINES_VERBOSE when
 * verbose).  Returns one engine that owns the router and everything
 * under it; *router is the router inside it (for qv_router_stats), valid
 * while the engine lives.  NULL + qv_errmsg() on failure.
 */
struct qv_pool;
struct qv_router;
struct qv_engine *qv__bench_auto_engine(const struct qv_config *cfg, struct qv_pool *pool,
                                        int verbose, struct qv_router **router);

/*
 * `offline --rate R` (bench_openloop.c): open-loop Poisson load of rate R
 * through the dynamic batcher onto the built index ix (ops), the queries
 * cycling through queries[0..nq) (nq x dim).  bopts come from [batcher];
 * batching (-1: bopts') and budget_us (0: bopts') override them.  Prints
 * one result (text, or one JSON object with json) and returns an exit
 * code.
 */
struct qv_bench_index;
struct qv_bench_params;
struct qv__bench_openloop {
    double rate;                    /* arrivals per second */
    double duration_s;
    int batching;                   /* -1, 0, 1 */
    int64_t budget_us;              /* 0: bopts' */
    struct qv_batcher_opts bopts;
    const struct qv_bench_index *ops;
    void *ix;
    const struct qv_bench_params *p;
    struct qv_router *router;       /* --engine auto: the router under
                                       p->engine (its model and metrics
                                       feed the service); else NULL */
    const float *queries;
    size_t nq;
    uint32_t dim, k;
    uint64_t seed;
    int json;
    const char *index, *engine, *data;  /* for the JSON record */
};
int qv__bench_openloop(const struct qv__bench_openloop *ol);

/*
 * Peak loops, one set per ISA (bench_peak_avx512.c, bench_peak_avx2.c,
 * and the portable fallback in bench_peak.c).  Call a level's functions
 * only when qv_simd_detect() says the CPU runs it.
 *
 * fma: run `iters` iterations of independent fused multiply-adds over
 * register accumulators (no memory traffic) and return the number of
 * floating-point operations performed (2 per lane per FMA).  *sink gets
 * a value derived from the accumulators so the work cannot be removed.
 *
 * read: sum n floats at p (p 64-byte aligned, n a multiple of 256) with
 * the widest loads and several independent accumulators; returns the sum
 * so the loads cannot be removed.
 */
uint64_t qv__peak_fma_avx512(uint64_t iters, float *sink);
float qv__peak_read_avx512(const float *p, size_t n);
uint64_t qv__peak_fma_avx2(uint64_t iters, float *sink);
float qv__peak_read_avx2(const float *p, size_t n);

#endif
