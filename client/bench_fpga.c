/*
 * bench_fpga.c - `quiverbench fpga`: the figures of the FPGA engine on a
 * simulated card ([fpga] mode thread, the default here; or process).
 *
 *   nop    the host-side cost of a submission: NOP descriptors, one at a
 *          time, each timed by the host from before the doorbell to the
 *          completion seen (qv_engine_fpga_nop); median and p99.  On the
 *          simulator this is the driver plus the card loop's reaction, not
 *          a PCIe round trip (a real card adds ~1-2 us; LAUNCH_NS models it).
 *   scan   one generated flat list of n x dim (uniform [0, 1) floats, L2),
 *          nq queries, top-k: run through the card, whose completions
 *          report the modelled device time (docs/REGISTERS.md, "Timing
 *          model"), and through the CPU engine on T threads, whose time is
 *          measured.  Both are the median of --reps runs after a warm-up
 *          run (the card's warm-up includes the list's upload, reported
 *          apart).  The results of the two are compared.
 *
 * List-scan throughput through the simulator with a real index is
 * `quiverbench offline --engine fpga`.  The modelled time is a model: it
 * says what the contract's U55C-like card would take, not what this
 * simulator takes (its wall time is printed too, for honesty).
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "fpga_sim.h"
#include "quiver/alloc.h"
#include "quiver/config.h"
#include "quiver/dist.h"
#include "quiver/engine.h"
#include "quiver/engines.h"
#include "quiver/engine_fpga.h"
#include "quiver/errors.h"
#include "quiver/pool.h"
#include "quiver/timeutil.h"
#include "quiver/topk.h"

const char qv__bench_fpga_usage[] =
    "usage: quiverbench fpga [--n N] [--dim D] [--nq Q] [--k K] [--reps R]\n"
    "                        [--nops N] [--threads T] [--seed S] [--conf FILE]\n"
    "\n"
    "Measure the FPGA engine on a simulated card: the host-side cost of a\n"
    "submission (NOP round trips), and a flat scan of a generated list: the\n"
    "card's modelled device time beside the CPU engine's measured time.\n"
    "\n"
    "  --n N         vectors in the list (16..100000000; default 1000000)\n"
    "  --dim D       dimensions (1..4096; default 128)\n"
    "  --nq Q        queries per unit (1..4096; default 1)\n"
    "  --k K         neighbours (1..256; default 10)\n"
    "  --reps R      timed runs of each engine, median reported (1..1000;\n"
    "                default 5)\n"
    "  --nops N      NOP round trips (1..10000000; default 10000)\n"
    "  --threads T   CPU engine threads incl. the caller (default all CPUs)\n"
    "  --seed S      data seed (default 1)\n"
    "  --conf FILE   [fpga] keys (mode thread or process, the card's timing\n"
    "                model) and [workers] pin; default: built-in defaults\n"
    "  -h, --help    this text\n";

static uint64_t mix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static float unif(uint64_t *s) { return (float)(mix(s) >> 40) / (float)(1u << 24); }

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Run wu on e into fresh heaps; 0 or the unit's error. */
static int run_unit(struct qv_engine *e, struct qv_work_unit *wu, struct qv_topk *heaps,
                    float *dist, uint64_t *ids, uint32_t k)
{
    for (uint32_t q = 0; q < wu->nq; q++)
        qv_topk_init(&heaps[q], k, dist + (size_t)q * k, ids + (size_t)q * k);
    wu->heaps = heaps;
    int rc = qv_engine_run(e, wu);
    for (uint32_t q = 0; rc == 0 && q < wu->nq; q++)
        qv_topk_sort(&heaps[q]);
    return rc;
}

int qv__bench_fpga_main(int argc, char **argv)
{
    const char *cmd = "fpga", *usage = qv__bench_fpga_usage, *conf = NULL;
    unsigned cpus[1024];
    unsigned ncpus = qv__bench_cpus(cpus, 1024);
    uint64_t n = 1000000, dim = 128, nq = 1, k = 10, reps = 5, nops = 10000, seed = 1;
    uint64_t threads = ncpus;
    static const struct option longopts[] = {
        { "n", required_argument, NULL, 'n' },
        { "dim", required_argument, NULL, 'd' },
        { "nq", required_argument, NULL, 'q' },
        { "k", required_argument, NULL, 'k' },
        { "reps", required_argument, NULL, 'r' },
        { "nops", required_argument, NULL, 'o' },
        { "threads", required_argument, NULL, 't' },
        { "seed", required_argument, NULL, 's' },
        { "conf", required_argument, NULL, 'c' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        int bad = 0;
        switch (c) {
        case 'n': bad = qv__bench_parse_u64(cmd, usage, "--n", optarg, 16, 100000000, &n); break;
        case 'd': bad = qv__bench_parse_u64(cmd, usage, "--dim", optarg, 1, 4096, &dim); break;
        case 'q': bad = qv__bench_parse_u64(cmd, usage, "--nq", optarg, 1, 4096, &nq); break;
        case 'k': bad = qv__bench_parse_u64(cmd, usage, "--k", optarg, 1, 256, &k); break;
        case 'r': bad = qv__bench_parse_u64(cmd, usage, "--reps", optarg, 1, 1000, &reps); break;
        case 'o':
            bad = qv__bench_parse_u64(cmd, usage, "--nops", optarg, 1, 10000000, &nops);
            break;
        case 't':
            bad = qv__bench_parse_u64(cmd, usage, "--threads", optarg, 1, ncpus, &threads);
            break;
        case 's':
            bad = qv__bench_parse_u64(cmd, usage, "--seed", optarg, 0, UINT64_MAX, &seed);
            break;
        case 'c': conf = optarg; break;
        case 'h': fputs(usage, stdout); return QV_BENCH_EXIT_OK;
        default: return qv__bench_usage(cmd, usage, "unknown flag");
        }
        if (bad)
            return QV_BENCH_EXIT_USAGE;
    }
    if (optind < argc)
        return qv__bench_usage(cmd, usage, "unexpected argument '%s'", argv[optind]);

    int ret = QV_BENCH_EXIT_FAIL;
    struct qv_config *cfg = conf ? qv_config_load(conf) : qv_config_defaults();
    struct qv_fpga_sim *sim = NULL;
    struct qv_engine *drv = NULL, *cpu = NULL;
    struct qv_pool *pool = NULL;
    float *codes = NULL, *norms = NULL, *queries = NULL, *qnorms = NULL, *dist = NULL;
    uint64_t *ids = NULL, *lids = NULL, *ns = NULL, *cns = NULL;
    struct qv_topk *heaps = NULL;
    uint32_t *poff = NULL, *plist = NULL;
    if (!cfg) {
        fprintf(stderr, "quiverbench fpga: %s\n", qv_errmsg());
        return QV_BENCH_EXIT_FAIL;
    }
    if (qv_engines_fpga_open(cfg, QV_ENGINES_SLOW_CARD, &sim, &drv)) {
        fprintf(stderr, "quiverbench fpga: %s\n", qv_errmsg());
        goto out;
    }
    pool = qv_pool_create((unsigned)threads, qv_config_bool(cfg, "workers", "pin"));
    cpu = pool ? qv_engine_cpu_create(pool) : NULL;
    if (!cpu) {
        fprintf(stderr, "quiverbench fpga: cannot start %llu threads: %s\n",
                (unsigned long long)threads, qv_errmsg());
        goto out;
    }

    printf("card          %s (%s)\n", qv_config_string(cfg, "fpga", "name"),
           sim ? "simulated, a thread of this process" : "process mode: a running card");
    if (sim) {
        volatile uint8_t *bar = qv_fpga_sim_bar0(sim);
#define R32(off) (*(volatile uint32_t *)(bar + (off)))
        printf("model         %u MHz x %u lanes, HBM %u MB/s, PCIe %u MB/s, launch %u ns, "
               "qtile %u; scans run on the card's %s engine\n",
               R32(QV_FPGA_REG_CLOCK_MHZ), R32(QV_FPGA_REG_LANES), R32(QV_FPGA_REG_HBM_MBPS),
               R32(QV_FPGA_REG_PCIE_MBPS), R32(QV_FPGA_REG_LAUNCH_NS), R32(QV_FPGA_REG_QTILE),
               qv_config_bool(cfg, "fpga", "sim_opencl") ? "opencl (else cpu)" : "cpu");
#undef R32
    }

    /* (a) NOP round trips */
    ns = qv_malloc(nops * sizeof *ns, QV_MEM_BENCH);
    if (!ns)
        goto nomem;
    for (int i = 0; i < 100; i++)
        (void)qv_engine_fpga_nop(drv, &ns[0]);
    for (uint64_t i = 0; i < nops; i++)
        if (qv_engine_fpga_nop(drv, &ns[i])) {
            fprintf(stderr, "quiverbench fpga: NOP: %s\n", qv_errmsg());
            goto out;
        }
    qsort(ns, nops, sizeof *ns, cmp_u64);
    printf("nop           %llu round trips: median %llu ns, p99 %llu ns (host clock, "
           "doorbell to completion seen)\n", (unsigned long long)nops,
           (unsigned long long)ns[nops / 2], (unsigned long long)ns[(nops * 99) / 100]);

    /* (c) the flat list, written in the blocked layout directly */
    size_t groups = (n + QV_BLOCK - 1) / QV_BLOCK;
    codes = qv_malloc(groups * QV_BLOCK * dim * sizeof(float), QV_MEM_BENCH);
    norms = qv_calloc(n, sizeof(float), QV_MEM_BENCH);
    lids = qv_malloc(n * sizeof(uint64_t), QV_MEM_BENCH);
    queries = qv_malloc(nq * dim * sizeof(float), QV_MEM_BENCH);
    qnorms = qv_calloc(nq, sizeof(float), QV_MEM_BENCH);
    heaps = qv_malloc(nq * sizeof *heaps, QV_MEM_BENCH);
    dist = qv_malloc(2 * nq * k * sizeof(float), QV_MEM_BENCH);
    ids = qv_malloc(2 * nq * k * sizeof(uint64_t), QV_MEM_BENCH);
    poff = qv_malloc((nq + 1) * sizeof(uint32_t), QV_MEM_BENCH);
    plist = qv_calloc(nq, sizeof(uint32_t), QV_MEM_BENCH);
    cns = qv_malloc(2 * reps * sizeof(uint64_t), QV_MEM_BENCH);
    if (!codes || !norms || !lids || !queries || !qnorms || !heaps || !dist || !ids ||
        !poff || !plist || !cns)
        goto nomem;
    uint64_t rs = seed;
    for (size_t g = 0; g < groups; g++)
        for (size_t d = 0; d < dim; d++)
            for (size_t j = 0; j < QV_BLOCK; j++) {
                size_t i = g * QV_BLOCK + j;
                float v = i < n ? unif(&rs) : 0.0f;
                codes[(g * dim + d) * QV_BLOCK + j] = v;
                if (i < n)
                    norms[i] += v * v;
            }
    for (size_t i = 0; i < n; i++)
        lids[i] = i;
    for (size_t i = 0; i < nq * dim; i++) {
        queries[i] = unif(&rs);
        qnorms[i / dim] += queries[i] * queries[i];
    }
    for (uint32_t q = 0; q <= nq; q++)
        poff[q] = q;
    struct qv_wu_list list = {
        .codes = codes, .norms = norms, .ids = lids, .n = (uint32_t)n,
    };
    struct qv_work_unit wu = {
        .kind = QV_WU_FLAT, .metric = QV_METRIC_L2, .dim = (uint32_t)dim,
        .nq = (uint32_t)nq, .queries = queries, .qnorms = qnorms, .nlists = 1,
        .lists = &list, .probe_offsets = poff, .probe_lists = plist,
    };
    double mb = (double)(groups * QV_BLOCK * dim * 4 + n * 4) / 1e6;

    /* the card: warm-up (upload + scan), then reps */
    int rc = run_unit(drv, &wu, heaps, dist, ids, (uint32_t)k);
    uint64_t first_ns = wu.device_ns;
    uint64_t *dev = cns + reps, wall_sum = 0, xfer = 0;
    for (uint64_t r = 0; rc == 0 && r < reps; r++) {
        int64_t t0 = qv_now_ns();
        rc = run_unit(drv, &wu, heaps, dist, ids, (uint32_t)k);
        wall_sum += (uint64_t)(qv_now_ns() - t0);
        dev[r] = wu.device_ns;
        xfer = wu.transfer_ns;
    }
    if (rc) {
        fprintf(stderr, "quiverbench fpga: the scan on the card failed: %s\n", qv_errmsg());
        goto out;
    }
    qsort(dev, reps, sizeof *dev, cmp_u64);
    /* the CPU engine: warm-up, then reps */
    float *cdist = dist + nq * k;
    uint64_t *cids = ids + nq * k;
    rc = run_unit(cpu, &wu, heaps, cdist, cids, (uint32_t)k);
    for (uint64_t r = 0; rc == 0 && r < reps; r++) {
        rc = run_unit(cpu, &wu, heaps, cdist, cids, (uint32_t)k);
        cns[r] = wu.device_ns;
    }
    if (rc) {
        fprintf(stderr, "quiverbench fpga: the scan on the cpu failed: %s\n", qv_errmsg());
        goto out;
    }
    qsort(cns, reps, sizeof *cns, cmp_u64);
    uint64_t same = 0;
    for (size_t i = 0; i < nq * k; i++)
        same += ids[i] == cids[i];
    double fpga_ms = (double)dev[reps / 2] / 1e6, cpu_ms = (double)cns[reps / 2] / 1e6;
    printf("flat scan     n=%llu dim=%llu nq=%llu k=%llu, L2, one list of %.1f MB "
           "(codes + norms)\n", (unsigned long long)n, (unsigned long long)dim,
           (unsigned long long)nq, (unsigned long long)k, mb);
    printf("  upload      modelled %.3f ms, once (the list then stays on the card)\n",
           (double)(first_ns > dev[0] ? first_ns - dev[0] : 0) / 1e6);
    printf("  fpga        modelled %.3f ms per unit (median of %llu; PCIe share %.4f ms); "
           "simulator wall %.1f ms\n", fpga_ms, (unsigned long long)reps, (double)xfer / 1e6,
           (double)wall_sum / (double)reps / 1e6);
    printf("  cpu         measured %.3f ms per unit (median of %llu, %llu threads, %s)\n",
           cpu_ms, (unsigned long long)reps, (unsigned long long)threads,
           qv_simd_name(qv_kernels()->level));
    printf("  cpu / fpga  %.1fx\n", fpga_ms > 0 ? cpu_ms / fpga_ms : 0.0);
    printf("  results     %llu of %llu top-%llu ids identical\n", (unsigned long long)same,
           (unsigned long long)(nq * k), (unsigned long long)k);
    ret = QV_BENCH_EXIT_OK;
    goto out;

nomem:
    fprintf(stderr, "quiverbench fpga: out of memory for a list of %llu x %llu\n",
            (unsigned long long)n, (unsigned long long)dim);
out:
    if (drv && codes) {
        qv_engine_forget(drv, codes);
        qv_engine_forget(drv, norms);
    }
    qv_engine_free(drv);
    qv_fpga_sim_free(sim);
    qv_engine_free(cpu);
    qv_pool_free(pool);
    qv_free(codes);
    qv_free(norms);
    qv_free(lids);
    qv_free(queries);
    qv_free(qnorms);
    qv_free(heaps);
    qv_free(dist);
    qv_free(ids);
    qv_free(poff);
    qv_free(plist);
    qv_free(ns);
    qv_free(cns);
    qv_config_free(cfg);
    return ret;
}
