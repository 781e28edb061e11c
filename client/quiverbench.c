/*
 * quiverbench.c - entry point of the benchmark tool: picks the subcommand,
 * prints help, and holds the flag-parsing helpers every subcommand shares
 * (see bench.h for the layout of the tool and its exit codes).
 *
 * Every numeric flag goes through qv__bench_parse_u64/_double, so a bad
 * value always reads the same way:
 *   quiverbench offline: --k 0: expected an integer in 1..1000
 * followed by the subcommand's usage, exit status 2.
 */
#include <errno.h>
#include <math.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

static const char main_usage[] =
    "usage: quiverbench COMMAND [FLAGS]\n"
    "\n"
    "Measure Quiver's indexes and this machine.\n"
    "\n"
    "commands:\n"
    "  offline   build an index from DIR/{base,query}.fvecs and report\n"
    "            recall@k against DIR/groundtruth.ivecs, QPS and latency\n"
    "  gen       write a deterministic clustered synthetic data set with\n"
    "            exact ground truth\n"
    "  peak      measure fp32 FMA peak (GFLOP/s) and DRAM read bandwidth\n"
    "  fpga      the FPGA engine on a simulated card: submission cost, and a\n"
    "            flat scan's modelled device time beside the CPU's\n"
    "  net       a running quiverd over the network (libquiver): load,\n"
    "            then open- or closed-loop UDP searches: recall, QPS, tail\n"
    "  upsert    a running quiverd: UPSERT throughput and acknowledgement\n"
    "            latency (with [storage]: the WAL's sync policy's cost)\n"
    "  help      this text; `quiverbench help COMMAND` or\n"
    "            `quiverbench COMMAND --help` for a command's flags\n"
    "\n"
    "exit status: 0 ok, 1 runtime failure, 2 usage error\n";

struct bench_cmd {
    const char *name;
    int (*main)(int argc, char **argv);
    const char *usage;
};

static const struct bench_cmd bench_cmds[] = {
    { "offline", qv__bench_offline_main, qv__bench_offline_usage },
    { "gen",     qv__bench_gen_main,     qv__bench_gen_usage },
    { "peak",    qv__bench_peak_main,    qv__bench_peak_usage },
    { "fpga",    qv__bench_fpga_main,    qv__bench_fpga_usage },
    { "net",     qv__bench_net_main,     qv__bench_net_usage },
    { "upsert",  qv__bench_upsert_main,  qv__bench_upsert_usage },
};

#define N_CMDS (sizeof(bench_cmds) / sizeof(bench_cmds[0]))

static const struct bench_cmd *find_cmd(const char *name)
{
    for (size_t i = 0; i < N_CMDS; i++)
        if (strcmp(bench_cmds[i].name, name) == 0)
            return &bench_cmds[i];
    return NULL;
}

int qv__bench_usage(const char *cmd, const char *usage, const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "quiverbench %s: ", cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n\n%s", usage);
    return QV_BENCH_EXIT_USAGE;
}

int qv__bench_parse_u64(const char *cmd, const char *usage, const char *flag,
                        const char *val, uint64_t lo, uint64_t hi, uint64_t *out)
{
    char *end = NULL;
    unsigned long long v;
    uint64_t mul = 1;

    if (val == NULL || *val == '\0' || *val == '-' || *val == '+')
        goto bad;
    errno = 0;
    v = strtoull(val, &end, 10);
    if (errno != 0 || end == val)
        goto bad;
    if (*end == 'k' || *end == 'K')
        mul = 1000ULL, end++;
    else if (*end == 'm' || *end == 'M')
        mul = 1000000ULL, end++;
    else if (*end == 'g' || *end == 'G')
        mul = 1000000000ULL, end++;
    if (*end != '\0')
        goto bad;
    if (v > UINT64_MAX / mul)
        goto bad;
    v *= mul;
    if (v < lo || v > hi)
        goto bad;
    *out = v;
    return 0;

bad:
    qv__bench_usage(cmd, usage, "%s %s: expected an integer in %llu..%llu",
                    flag, val ? val : "(missing)",
                    (unsigned long long)lo, (unsigned long long)hi);
    return -1;
}

int qv__bench_parse_double(const char *cmd, const char *usage, const char *flag,
                           const char *val, double lo, double hi, double *out)
{
    char *end = NULL;
    double v;

    if (val == NULL || *val == '\0')
        goto bad;
    errno = 0;
    v = strtod(val, &end);
    if (errno != 0 || end == val || *end != '\0' || !isfinite(v))
        goto bad;
    if (v < lo || v > hi)
        goto bad;
    *out = v;
    return 0;

bad:
    qv__bench_usage(cmd, usage, "%s %s: expected a number in %g..%g",
                    flag, val ? val : "(missing)", lo, hi);
    return -1;
}

unsigned qv__bench_cpus(unsigned *cpus, unsigned max)
{
    cpu_set_t set;
    unsigned n = 0;

    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) != 0) {
        if (max > 0)
            cpus[0] = 0;
        return 1;
    }
    for (unsigned c = 0; c < CPU_SETSIZE; c++) {
        if (!CPU_ISSET(c, &set))
            continue;
        if (n < max)
            cpus[n] = c;
        n++;
    }
    if (n == 0) {
        if (max > 0)
            cpus[0] = 0;
        n = 1;
    }
    return n;
}

double qv__bench_quantile(const double *sorted, size_t n, double q)
{
    size_t rank;

    if (n == 0)
        return 0.0;
    rank = (size_t)ceil(q * (double)n);
    if (rank < 1)
        rank = 1;
    if (rank > n)
        rank = n;
    return sorted[rank - 1];
}

int main(int argc, char **argv)
{
    const struct bench_cmd *cmd;

    if (argc < 2) {
        fprintf(stderr, "quiverbench: missing COMMAND\n\n%s", main_usage);
        return QV_BENCH_EXIT_USAGE;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        if (argc >= 3 && strcmp(argv[1], "help") == 0) {
            cmd = find_cmd(argv[2]);
            if (cmd == NULL) {
                fprintf(stderr, "quiverbench help: unknown command '%s'\n\n%s",
                        argv[2], main_usage);
                return QV_BENCH_EXIT_USAGE;
            }
            fputs(cmd->usage, stdout);
            return QV_BENCH_EXIT_OK;
        }
        fputs(main_usage, stdout);
        return QV_BENCH_EXIT_OK;
    }
    cmd = find_cmd(argv[1]);
    if (cmd == NULL) {
        fprintf(stderr, "quiverbench: unknown command '%s'\n\n%s", argv[1], main_usage);
        return QV_BENCH_EXIT_USAGE;
    }
    return cmd->main(argc - 1, argv + 1);
}
