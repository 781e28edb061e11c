/*
 * bench_offline.c - `quiverbench offline`: recall and speed of an index
 * on a TEXMEX-style data directory, with no network in the way.
 *
 * Input: DIR/base.fvecs (n x dim), DIR/query.fvecs (nq x dim) and
 * DIR/groundtruth.ivecs (nq rows of at least k ids: the true nearest base
 * rows, nearest first).  The files are mapped, not read (vecio.h); the base
 * is copied into the index in chunks of BUILD_CHUNK rows, which is the only
 * copy made.
 *
 * Measurement:
 *   build_s   the index's build over the whole base (or its load with
 *             --load), wall time.
 *   search    the queries in batches of --batch (the last batch may be
 *             short); each batch is one search call, timed with
 *             the monotonic clock.  A query's latency is its batch's
 *             latency: with --batch 1 that is the real per-query latency;
 *             with bigger batches it is the time until its answer exists.
 *   qps       queries / wall time of the whole pass (sum of batch calls
 *             plus the loop around them).
 *   latency   mean, p50, p99 (nearest rank) over queries, microseconds.
 *   recall@k  |returned first k ids  ∩  first k ground-truth ids| / k,
 *             averaged over queries (set overlap; order does not matter).
 *   --repeat  runs the whole query set R times; the pass with the best
 *             QPS is reported (latencies come from that same pass).
 *   --min-time  keeps adding passes (after the R) until the timed passes
 *             add up to S seconds (at most 100000 passes): a 100-query set
 *             searched in one batch takes under a millisecond, and the
 *             best of two such passes moved 2x between runs; the best of
 *             passes filling 0.3 s is steady.
 *
 * Index types plug in through bench_index.h (one file each).  --sweep
 * V1,V2,... runs the whole measurement once per value of the index's sweep
 * parameter (nprobe for IVF, ef for HNSW) and prints one row (or JSON line)
 * per value: a recall/QPS curve.
 *
 * --filter S gives every base row an attribute `a` drawn uniformly from
 * [0, 1000000) by a seeded hash of the row, searches with the predicate
 * `a < S * 1000000` evaluated into a row bitmap (filter.h), and scores
 * recall against an exact filtered search (the flat index with the same
 * bitmap) instead of groundtruth.ivecs.
 *
 * Nothing is warmed up outside the timed passes: use --repeat to see
 * steady state.  The pool is created pinned (worker i on the i-th CPU of
 * the affinity mask), with --threads workers including the caller.
 */
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "quiver/alloc.h"
#include "quiver/dist.h"
#include "quiver/config.h"
#include "quiver/engine.h"
#include "quiver/engines.h"
#include "quiver/errors.h"
#include "quiver/filter.h"
#include "quiver/flat.h"
#include "quiver/pool.h"
#include "quiver/router.h"
#include "quiver/timeutil.h"
#include "quiver/topk.h"
#include "quiver/vecio.h"

#include "bench.h"
#include "bench_index.h"

#define OFFLINE_MAX_SWEEP 64
#define OFFLINE_MAX_K     1000
#define OFFLINE_MAX_BATCH 1000000
#define OFFLINE_MAX_REPEAT 1000
#define OFFLINE_MAX_PASSES 100000u  /* --min-time's bound */
#define OFFLINE_MAX_THREADS 1024

const char qv__bench_offline_usage[] =
    "usage: quiverbench offline --data DIR [--index flat|ivf|sq8|ivfpq|hnsw] [--k K]\n"
    "                           [--threads T] [--batch B] [--metric l2|ip|cosine]\n"
    "                           [--nlist N] [--nprobe N] [--m M] [--nbits B]\n"
    "                           [--refine R] [--M M] [--ef-construction E] [--ef E]\n"
    "                           [--filter S] [--sweep V1,V2,...] [--save F | --load F]\n"
    "                           [--simd ref|avx2|avx512] [--nq N] [--repeat R]\n"
    "                           [--seed S] [--engine cpu|opencl|fpga|auto] [--conf FILE]\n"
    "                           [--rate R [--duration S] [--batching on|off]\n"
    "                           [--budget-us B]] [--json]\n"
    "\n"
    "Build an index from DIR/base.fvecs, search DIR/query.fvecs and report\n"
    "recall@k against DIR/groundtruth.ivecs, QPS, per-query latency and build\n"
    "time.  A query's latency is the latency of the batch it was searched in.\n"
    "\n"
    "  --data DIR      directory with base.fvecs, query.fvecs, groundtruth.ivecs\n"
    "  --index NAME    flat (exact), ivf (IVF-Flat), sq8 (IVF-SQ8), ivfpq\n"
    "                  (IVF-PQ), hnsw; default flat\n"
    "  --k K           neighbours per query (1..1000, at most the ground truth's\n"
    "                  columns; default 10)\n"
    "  --threads T     search threads incl. the caller (1..CPUs available;\n"
    "                  default all)\n"
    "  --batch B       queries per search call (1..1000000; default 1)\n"
    "  --metric M      l2, ip or cosine (default l2; the ground truth must have\n"
    "                  been computed with the same metric)\n"
    "  --nlist N       IVF lists (1..1048576; default: the index's choice for n)\n"
    "  --nprobe N      IVF lists probed per query (1..nlist)\n"
    "  --m M           PQ sub-quantisers (1..dim, dividing dim)\n"
    "  --nbits B       PQ bits per code: 4 or 8\n"
    "  --refine R      IVF-PQ: re-rank R*k candidates exactly (0 = off)\n"
    "  --M M           HNSW links per node (2..128)\n"
    "  --ef-construction E   HNSW build beam (1..10000)\n"
    "  --ef E          HNSW search beam (1..10000)\n"
    "  --filter S      search with a random attribute predicate passing a share\n"
    "                  S of the rows (0 < S <= 1); recall against exact\n"
    "                  filtered search\n"
    "  --sweep LIST    comma-separated values of the index's sweep parameter\n"
    "                  (nprobe or ef): one result per value (a recall/QPS curve)\n"
    "  --save FILE     write the built index to FILE\n"
    "  --load FILE     load the index from FILE instead of building it\n"
    "  --simd L        cap the kernels at ref, avx2 or avx512 (default: best)\n"
    "  --nq N          use only the first N queries (1..queries in the file)\n"
    "  --repeat R      search the query set R times, report the best-QPS pass\n"
    "                  (1..1000; default 1)\n"
    "  --min-time S    then add passes until the timed passes add up to S\n"
    "                  seconds (0..600; default 0; at most 100000 passes)\n"
    "  --seed S        seed of training and of --filter (default 1)\n"
    "  --engine E      where the list scans of flat and IVF indexes run: cpu\n"
    "                  (default), opencl (device from the [opencl] keys) or\n"
    "                  fpga (the card of the [fpga] keys: mode process = a\n"
    "                  running qv-fpga-sim, otherwise a simulated card started\n"
    "                  here as a thread; kernel% is then its modelled time), or\n"
    "                  auto (a router over cpu, opencl where there is one and\n"
    "                  fpga, per [router] keys, calibrated at start; each row\n"
    "                  then ends with the engine mix: parts completed there)\n"
    "  --conf FILE     read [simd] level, [workers] threads/pin, [memory]\n"
    "                  hugepages/numa_node, [flat], [opencl] and [fpga] keys\n"
    "                  from FILE (flags\n"
    "                  given here win; default: the built-in defaults)\n"
    "  --rate R        open loop instead: Poisson arrivals of R queries/s (the\n"
    "                  query file cycled) through the dynamic batcher ([batcher]\n"
    "                  keys), each batch one search; latency = completion -\n"
    "                  intended arrival; prints offered and achieved QPS,\n"
    "                  p50/p99/p999, refused (busy) and mean batch size\n"
    "  --duration S    open loop: seconds of arrivals (0.01..3600; default 2)\n"
    "  --batching B    open loop: on or off (default: [batcher] batching)\n"
    "  --budget-us B   open loop: latency budget per query in us (default:\n"
    "                  [batcher] interactive_budget_us)\n"
    "  --json          print one JSON object per result instead of text\n"
    "  -h, --help      this text\n";

struct offline_args {
    const char *data;
    const char *index;
    uint64_t k;
    uint64_t threads;
    uint64_t batch;
    enum qv_metric metric;
    int simd;                   /* -1: no cap */
    uint64_t nq;                /* 0: all */
    uint64_t repeat;
    double min_time;            /* seconds of timed passes, at least */
    bool json;
    const char *conf;           /* NULL: schema defaults */
    bool threads_set;           /* --threads given: overrides [workers] */
    uint64_t nlist, nprobe, m, nbits, refine, M, efc, ef, seed;
    double filter;              /* 0: none */
    uint64_t sweep[OFFLINE_MAX_SWEEP];
    unsigned nsweep;
    const char *save;
    const char *load;
    const char *engine;         /* "cpu" (default), "opencl", "fpga" or "auto" */
    double rate;                /* --rate: open loop; 0: closed loop */
    double duration;
    int batching;               /* -1: [batcher] batching */
    uint64_t budget_us;         /* 0: [batcher] interactive_budget_us */
};

/* Everything acquired by a run, released by offline_release(). */
struct offline_run {
    struct qv_vecfile base, query, gt;
    struct qv_pool *pool;
    struct qv_engine *engine;   /* --engine other than cpu */
    struct qv_router *router;   /* --engine auto: the router inside engine */
    const struct qv_bench_index *ops;
    void *ix;
    float *basev;               /* n x dim */
    float *queries;
    float *dist;
    uint64_t *ids;
    uint64_t *truth_ids;        /* nq x k: what recall is scored against */
    double *lat_us;             /* per query, pass being measured */
    double *best_lat_us;        /* per query, best pass */
    uint64_t *truth;            /* scratch for recall, k ids */
    uint64_t *found;            /* scratch for recall, k ids */
    int64_t *attr;              /* --filter: attribute per row */
    uint64_t *filter;           /* --filter: row bitmap */
};

static int parse_sweep(const char *cmd, const char *usage, const char *text,
                       struct offline_args *a)
{
    const char *s = text;
    a->nsweep = 0;
    while (*s) {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(s, &end, 10);
        if (end == s || errno || v == 0 || v > 1000000 || (*end && *end != ',') ||
            a->nsweep >= OFFLINE_MAX_SWEEP) {
            qv__bench_usage(cmd, usage, "--sweep %s: expected up to %d comma-separated "
                            "integers in 1..1000000", text, OFFLINE_MAX_SWEEP);
            return -1;
        }
        a->sweep[a->nsweep++] = v;
        s = *end ? end + 1 : end;
    }
    if (a->nsweep == 0) {
        qv__bench_usage(cmd, usage, "--sweep needs at least one value");
        return -1;
    }
    return 0;
}

static int offline_parse(int argc, char **argv, struct offline_args *a)
{
    enum { O_NLIST = 256, O_NPROBE, O_M, O_NBITS, O_REFINE, O_BIGM, O_EFC, O_EF, O_FILTER,
           O_SWEEP, O_SAVE, O_LOAD, O_SEED, O_ENGINE, O_MIN_TIME, O_RATE, O_DURATION, O_BATCHING,
           O_BUDGET };
    static const struct option opts[] = {
        { "data",    required_argument, NULL, 'd' },
        { "index",   required_argument, NULL, 'x' },
        { "k",       required_argument, NULL, 'k' },
        { "threads", required_argument, NULL, 't' },
        { "batch",   required_argument, NULL, 'b' },
        { "metric",  required_argument, NULL, 'm' },
        { "simd",    required_argument, NULL, 's' },
        { "nq",      required_argument, NULL, 'n' },
        { "repeat",  required_argument, NULL, 'r' },
        { "json",    no_argument,       NULL, 'j' },
        { "conf",    required_argument, NULL, 'c' },
        { "nlist",   required_argument, NULL, O_NLIST },
        { "nprobe",  required_argument, NULL, O_NPROBE },
        { "m",       required_argument, NULL, O_M },
        { "nbits",   required_argument, NULL, O_NBITS },
        { "refine",  required_argument, NULL, O_REFINE },
        { "M",       required_argument, NULL, O_BIGM },
        { "ef-construction", required_argument, NULL, O_EFC },
        { "ef",      required_argument, NULL, O_EF },
        { "filter",  required_argument, NULL, O_FILTER },
        { "sweep",   required_argument, NULL, O_SWEEP },
        { "save",    required_argument, NULL, O_SAVE },
        { "load",    required_argument, NULL, O_LOAD },
        { "seed",    required_argument, NULL, O_SEED },
        { "engine",  required_argument, NULL, O_ENGINE },
        { "min-time", required_argument, NULL, O_MIN_TIME },
        { "rate",    required_argument, NULL, O_RATE },
        { "duration", required_argument, NULL, O_DURATION },
        { "batching", required_argument, NULL, O_BATCHING },
        { "budget-us", required_argument, NULL, O_BUDGET },
        { "help",    no_argument,       NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *cmd = "offline";
    const char *usage = qv__bench_offline_usage;
    unsigned cpus[OFFLINE_MAX_THREADS];
    unsigned ncpus = qv__bench_cpus(cpus, OFFLINE_MAX_THREADS);
    int c, v;

    if (ncpus > OFFLINE_MAX_THREADS)
        ncpus = OFFLINE_MAX_THREADS;
    memset(a, 0, sizeof(*a));
    a->index = "flat";
    a->k = 10;
    a->threads = ncpus;
    a->batch = 1;
    a->metric = QV_METRIC_L2;
    a->simd = -1;
    a->repeat = 1;
    a->seed = 1;
    a->engine = "cpu";
    a->duration = 2.0;
    a->batching = -1;

    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case 'd': a->data = optarg; break;
        case 'x': a->index = optarg; break;
        case 'k':
            if (qv__bench_parse_u64(cmd, usage, "--k", optarg, 1, OFFLINE_MAX_K, &a->k))
                return -1;
            break;
        case 't':
            if (qv__bench_parse_u64(cmd, usage, "--threads", optarg, 1, ncpus, &a->threads))
                return -1;
            a->threads_set = true;
            break;
        case 'c': a->conf = optarg; break;
        case 'b':
            if (qv__bench_parse_u64(cmd, usage, "--batch", optarg, 1, OFFLINE_MAX_BATCH,
                                    &a->batch))
                return -1;
            break;
        case 'm':
            v = qv_metric_parse(optarg);
            if (v < 0) {
                qv__bench_usage(cmd, usage, "--metric %s: expected one of l2, ip, cosine",
                                optarg);
                return -1;
            }
            a->metric = (enum qv_metric)v;
            break;
        case 's':
            v = qv_simd_parse(optarg);
            if (v < 0) {
                qv__bench_usage(cmd, usage, "--simd %s: expected one of ref, avx2, avx512",
                                optarg);
                return -1;
            }
            a->simd = v;
            break;
        case 'n':
            if (qv__bench_parse_u64(cmd, usage, "--nq", optarg, 1, UINT32_MAX, &a->nq))
                return -1;
            break;
        case 'r':
            if (qv__bench_parse_u64(cmd, usage, "--repeat", optarg, 1, OFFLINE_MAX_REPEAT,
                                    &a->repeat))
                return -1;
            break;
        case O_NLIST:
            if (qv__bench_parse_u64(cmd, usage, "--nlist", optarg, 1, 1u << 20, &a->nlist))
                return -1;
            break;
        case O_NPROBE:
            if (qv__bench_parse_u64(cmd, usage, "--nprobe", optarg, 1, 1u << 20, &a->nprobe))
                return -1;
            break;
        case O_M:
            if (qv__bench_parse_u64(cmd, usage, "--m", optarg, 1, 65536, &a->m))
                return -1;
            break;
        case O_NBITS:
            if (qv__bench_parse_u64(cmd, usage, "--nbits", optarg, 4, 8, &a->nbits))
                return -1;
            if (a->nbits != 4 && a->nbits != 8) {
                qv__bench_usage(cmd, usage, "--nbits %s: expected 4 or 8", optarg);
                return -1;
            }
            break;
        case O_REFINE:
            if (qv__bench_parse_u64(cmd, usage, "--refine", optarg, 0, 1000, &a->refine))
                return -1;
            break;
        case O_BIGM:
            if (qv__bench_parse_u64(cmd, usage, "--M", optarg, 2, 128, &a->M))
                return -1;
            break;
        case O_EFC:
            if (qv__bench_parse_u64(cmd, usage, "--ef-construction", optarg, 1, 10000,
                                    &a->efc))
                return -1;
            break;
        case O_EF:
            if (qv__bench_parse_u64(cmd, usage, "--ef", optarg, 1, 10000, &a->ef))
                return -1;
            break;
        case O_FILTER:
            if (qv__bench_parse_double(cmd, usage, "--filter", optarg, 1e-9, 1.0, &a->filter))
                return -1;
            break;
        case O_SWEEP:
            if (parse_sweep(cmd, usage, optarg, a))
                return -1;
            break;
        case O_SAVE: a->save = optarg; break;
        case O_ENGINE:
            if (strcmp(optarg, "cpu") != 0 && strcmp(optarg, "opencl") != 0 &&
                strcmp(optarg, "fpga") != 0 && strcmp(optarg, "auto") != 0) {
                qv__bench_usage(cmd, usage, "--engine %s: expected cpu, opencl, fpga or auto",
                                optarg);
                return -1;
            }
            a->engine = optarg;
            break;
        case O_LOAD: a->load = optarg; break;
        case O_MIN_TIME:
            if (qv__bench_parse_double(cmd, usage, "--min-time", optarg, 0, 600,
                                       &a->min_time))
                return -1;
            break;
        case O_RATE:
            if (qv__bench_parse_double(cmd, usage, "--rate", optarg, 1e-3, 1e7, &a->rate))
                return -1;
            break;
        case O_DURATION:
            if (qv__bench_parse_double(cmd, usage, "--duration", optarg, 0.01, 3600,
                                       &a->duration))
                return -1;
            break;
        case O_BATCHING:
            if (strcmp(optarg, "on") != 0 && strcmp(optarg, "off") != 0) {
                qv__bench_usage(cmd, usage, "--batching %s: expected on or off", optarg);
                return -1;
            }
            a->batching = strcmp(optarg, "on") == 0;
            break;
        case O_BUDGET:
            if (qv__bench_parse_u64(cmd, usage, "--budget-us", optarg, 1, 100000000,
                                    &a->budget_us))
                return -1;
            break;
        case O_SEED:
            if (qv__bench_parse_u64(cmd, usage, "--seed", optarg, 0, UINT64_MAX, &a->seed))
                return -1;
            break;
        case 'j': a->json = true; break;
        case 'h':
            fputs(usage, stdout);
            return 1;
        case ':':
            qv__bench_usage(cmd, usage, "%s needs a value", argv[optind - 1]);
            return -1;
        default:
            qv__bench_usage(cmd, usage, "unknown flag '%s'", argv[optind - 1]);
            return -1;
        }
    }
    if (optind < argc) {
        qv__bench_usage(cmd, usage, "unexpected argument '%s'", argv[optind]);
        return -1;
    }
    if (a->data == NULL) {
        qv__bench_usage(cmd, usage, "--data DIR is required");
        return -1;
    }
    const struct qv_bench_index *ops = qv__bench_index_find(a->index);
    if (!ops) {
        qv__bench_usage(cmd, usage, "--index %s: expected one of flat, ivf, sq8, ivfpq, hnsw",
                        a->index);
        return -1;
    }
    if (a->nsweep && !ops->sweep_param) {
        qv__bench_usage(cmd, usage, "--sweep: the %s index has no parameter to sweep",
                        a->index);
        return -1;
    }
    if ((a->save || a->load) && (!ops->save || !ops->load)) {
        qv__bench_usage(cmd, usage, "--save/--load: the %s index has no file format",
                        a->index);
        return -1;
    }
    if (a->rate == 0 && (a->batching >= 0 || a->budget_us)) {
        qv__bench_usage(cmd, usage, "--batching and --budget-us need --rate");
        return -1;
    }
    if (a->rate > 0 && (a->nsweep || a->filter)) {
        qv__bench_usage(cmd, usage, "--rate excludes --sweep and --filter");
        return -1;
    }
    if (a->save && a->load) {
        qv__bench_usage(cmd, usage, "--save and --load exclude each other");
        return -1;
    }
    return 0;
}

static int open_in(struct qv_vecfile *vf, const char *dir, const char *name,
                   enum qv_vec_kind kind)
{
    char path[4096];
    int rc;

    if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, name) >= sizeof(path)) {
        fprintf(stderr, "quiverbench offline: %s/%s: path too long\n", dir, name);
        return -1;
    }
    rc = qv_vecfile_open(vf, path, kind);
    if (rc != 0) {
        const char *msg = qv_errmsg();
        if (strstr(msg, path) != NULL)      /* vecio names the file itself */
            fprintf(stderr, "quiverbench offline: %s\n", msg);
        else
            fprintf(stderr, "quiverbench offline: %s: %s\n", path, msg);
        return -1;
    }
    if (vf->n == 0) {
        fprintf(stderr, "quiverbench offline: %s: the file is empty\n", path);
        return -1;
    }
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/*
 * recall of one query: overlap of the first k returned ids with the first k
 * true ids, over k.  Both sides are sorted and merged: O(k log k).  Empty
 * result slots (QV_ID_NONE) never match.  When fewer than k rows are
 * eligible (a selective filter), the denominator is the number of true ids.
 */
static double query_recall(const uint64_t *ids, const uint64_t *true_ids, uint32_t k,
                           uint64_t *found, uint64_t *truth)
{
    uint32_t i = 0, j = 0, hit = 0, have = 0;

    memcpy(found, ids, k * sizeof(*found));
    memcpy(truth, true_ids, k * sizeof(*truth));
    for (uint32_t t = 0; t < k; t++)
        have += truth[t] != QV_ID_NONE;
    if (have == 0)
        return 1.0;
    qsort(found, k, sizeof(*found), cmp_u64);
    qsort(truth, k, sizeof(*truth), cmp_u64);
    while (i < k && j < k) {
        if (found[i] == truth[j]) {
            if (found[i] != QV_ID_NONE)
                hit++;
            i++, j++;
        } else if (found[i] < truth[j]) {
            i++;
        } else {
            j++;
        }
    }
    return (double)hit / have;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void offline_release(struct offline_run *r)
{
    qv_free(r->filter);
    qv_free(r->attr);
    qv_free(r->found);
    qv_free(r->truth);
    qv_free(r->best_lat_us);
    qv_free(r->lat_us);
    qv_free(r->truth_ids);
    qv_free(r->ids);
    qv_free(r->dist);
    qv_free(r->queries);
    qv_free(r->basev);
    if (r->ix)
        r->ops->free(r->ix);
    qv_engine_free(r->engine);
    qv_pool_free(r->pool);
    qv_vecfile_close(&r->gt);
    qv_vecfile_close(&r->query);
    qv_vecfile_close(&r->base);
}

static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* --filter: attribute column, predicate, bitmap, and the exact filtered
 * answers (flat index, same bitmap) as the truth.  Returns the number of
 * rows passing, or -1. */
static int64_t make_filter(struct offline_run *r, const struct offline_args *a,
                           const struct qv_bench_params *p, size_t n, size_t nq, uint32_t k)
{
    struct qv_attrs attrs = { .nattrs = 1, .rows = n };
    struct qv_pred pred;
    char text[64];
    uint64_t count = 0;

    r->attr = qv_malloc(n * sizeof(int64_t), QV_MEM_BENCH);
    r->filter = qv_calloc((n + 63) / 64, sizeof(uint64_t), QV_MEM_BENCH);
    if (!r->attr || !r->filter) {
        fprintf(stderr, "quiverbench offline: no memory for the filter of %zu rows\n", n);
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        r->attr[i] = (int64_t)(mix64(a->seed * 0x100000001b3ULL + i) % 1000000);
    attrs.names[0] = "a";
    attrs.cols[0] = r->attr;
    snprintf(text, sizeof text, "a < %lld", (long long)(a->filter * 1000000.0 + 0.5));
    if (qv_pred_parse(text, &attrs, &pred, NULL, 0) != 0 ||
        qv_filter_eval(&pred, &attrs, r->filter, &count) != 0) {
        fprintf(stderr, "quiverbench offline: filter '%s': %s\n", text, qv_errmsg());
        return -1;
    }
    /* exact filtered answers */
    struct qv_bench_params fp = *p;
    void *exact = qv__bench_index_flat.build(&fp, r->basev, n);
    if (!exact) {
        fprintf(stderr, "quiverbench offline: exact index for the filter: %s\n", qv_errmsg());
        return -1;
    }
    int rc = qv__bench_index_flat.search(exact, &fp, r->queries, nq, k, r->filter, r->dist,
                                         r->truth_ids);
    qv__bench_index_flat.free(exact);
    if (rc != 0) {
        fprintf(stderr, "quiverbench offline: exact filtered search: %s\n", qv_errmsg());
        return -1;
    }
    if (!a->json)
        fprintf(stderr, "offline: filter '%s' passes %llu of %zu rows (%.4f)\n", text,
                (unsigned long long)count, n, (double)count / (double)n);
    return (int64_t)count;
}

struct result {
    double recall, qps, pass_s, mean_us, p50_us, p99_us;
    uint64_t passes;            /* timed passes run */
    /* --engine other than cpu, best pass: units completed, seconds of
     * kernels and of transfers the engine reported */
    uint64_t units;
    double device_s, transfer_s;
    /* --engine auto, over all passes: parts completed per engine */
    unsigned nmix;
    char mix_name[QV_ROUTER_MAX_ENGINES][QV_ROUTER_NAME_MAX];
    uint64_t mix[QV_ROUTER_MAX_ENGINES];
};

/* All passes over the queries with the current parameters. */
static int measure(struct offline_run *r, const struct offline_args *a,
                   const struct qv_bench_params *p, size_t nq, uint32_t dim, uint32_t k,
                   struct result *res)
{
    double best_qps = 0.0, best_pass_s = 0.0, recall = 0.0, mean_us = 0.0, timed_s = 0.0;
    struct qv__bench_meter m = { 0 }, best_m = { 0 };
    struct qv_router_stats rs0, rs1;

    if (r->router)
        qv_router_stats(r->router, &rs0);

    uint64_t pass;
    for (pass = 0; pass < a->repeat || (timed_s < a->min_time && pass < OFFLINE_MAX_PASSES);
         pass++) {
        if (r->engine)
            qv__bench_meter_take(r->engine, &m);        /* reset */
        int64_t pass_t0 = qv_now_ns();
        for (uint64_t b = 0; b < nq; b += a->batch) {
            uint64_t nb = nq - b < a->batch ? nq - b : a->batch;
            int64_t t0 = qv_now_ns();
            int rc = r->ops->search(r->ix, p, r->queries + b * dim, nb, k, r->filter,
                                    r->dist + b * k, r->ids + b * k);
            int64_t t1 = qv_now_ns();
            if (rc != 0) {
                fprintf(stderr, "quiverbench offline: search of queries %llu..%llu "
                        "failed: %s\n", (unsigned long long)b,
                        (unsigned long long)(b + nb - 1), qv_errmsg());
                return -1;
            }
            double us = (double)(t1 - t0) * 1e-3;
            for (uint64_t i = 0; i < nb; i++)
                r->lat_us[b + i] = us;
        }
        double pass_s = (double)(qv_now_ns() - pass_t0) * 1e-9;
        double qps = (double)nq / pass_s;
        timed_s += pass_s;
        if (r->engine)
            qv__bench_meter_take(r->engine, &m);
        if (!a->json && a->repeat > 1 && a->min_time == 0)
            fprintf(stderr, "offline: pass %llu: %.1f QPS\n", (unsigned long long)pass + 1,
                    qps);
        if (pass == 0 || qps > best_qps) {
            best_qps = qps;
            best_pass_s = pass_s;
            best_m = m;
            memcpy(r->best_lat_us, r->lat_us, nq * sizeof(double));
        }
    }
    for (size_t i = 0; i < nq; i++)
        recall += query_recall(r->ids + i * k, r->truth_ids + i * k, k, r->found, r->truth);
    for (size_t i = 0; i < nq; i++)
        mean_us += r->best_lat_us[i];
    qsort(r->best_lat_us, nq, sizeof(double), cmp_double);
    res->recall = recall / (double)nq;
    res->qps = best_qps;
    res->passes = pass;
    res->pass_s = best_pass_s;
    res->mean_us = mean_us / (double)nq;
    res->p50_us = qv__bench_quantile(r->best_lat_us, nq, 0.50);
    res->p99_us = qv__bench_quantile(r->best_lat_us, nq, 0.99);
    res->units = best_m.units;
    res->device_s = (double)best_m.device_ns * 1e-9;
    res->transfer_s = (double)best_m.transfer_ns * 1e-9;
    res->nmix = 0;
    if (r->router) {
        qv_router_stats(r->router, &rs1);
        res->nmix = rs1.nengines;
        for (unsigned i = 0; i < rs1.nengines; i++) {
            memcpy(res->mix_name[i], rs1.engine[i].name, QV_ROUTER_NAME_MAX);
            res->mix[i] = rs1.engine[i].units - (i < rs0.nengines ? rs0.engine[i].units : 0);
        }
    }
    return 0;
}

static void json_param(struct json_object *o, const char *key, uint64_t v)
{
    json_object_object_add(o, key, json_object_new_int64((int64_t)v));
}

int qv__bench_offline_main(int argc, char **argv)
{
    struct offline_args a;
    struct offline_run r;
    struct qv_bench_params p;
    enum qv_simd level;
    uint64_t n, nq;
    uint32_t dim, k;
    int64_t t0;
    double build_s;
    int rc;

    rc = offline_parse(argc, argv, &a);
    if (rc != 0)
        return rc > 0 ? QV_BENCH_EXIT_OK : QV_BENCH_EXIT_USAGE;

    memset(&r, 0, sizeof(r));
    r.ops = qv__bench_index_find(a.index);
    /* Configuration: the file's values (or the schema defaults), with the
     * command line's flags taking precedence. */
    struct qv_config *cfg = a.conf ? qv_config_load(a.conf) : qv_config_defaults();
    if (cfg == NULL) {
        fprintf(stderr, "quiverbench offline: %s\n", qv_errmsg());
        return QV_BENCH_EXIT_USAGE;
    }
    if (a.simd < 0) {
        int conf_level = qv_config_enum(cfg, "simd", "level");   /* auto|ref|avx2|avx512 */
        if (conf_level > 0)
            a.simd = conf_level - 1;
    }
    if (!a.threads_set && qv_config_int(cfg, "workers", "threads") > 0) {
        unsigned cpus[OFFLINE_MAX_THREADS];
        uint64_t t = (uint64_t)qv_config_int(cfg, "workers", "threads");
        uint64_t ncpu = qv__bench_cpus(cpus, OFFLINE_MAX_THREADS);
        a.threads = t < ncpu ? t : ncpu;
    }
    memset(&p, 0, sizeof p);
    bool pin = qv_config_bool(cfg, "workers", "pin");
    int hugepages = qv_huge_mode_parse(qv_config_string(cfg, "memory", "hugepages"));
    p.hugepages = hugepages < 0 ? QV_HUGE_AUTO : hugepages;
    p.numa_node = (int)qv_config_int(cfg, "memory", "numa_node");
    p.segment_capacity = (uint32_t)qv_config_int(cfg, "flat", "segment_capacity");
    p.prefetch_groups = (uint32_t)qv_config_int(cfg, "flat", "prefetch_groups");

    level = qv_kernels_init(a.simd < 0 ? QV_SIMD_AVX512 : (enum qv_simd)a.simd);
    if (a.simd >= 0 && (int)level < a.simd)
        fprintf(stderr, "offline: note: --simd %s asked, this CPU runs at most %s\n",
                qv_simd_name((enum qv_simd)a.simd), qv_simd_name(level));
    level = qv_kernels()->level;

    if (open_in(&r.base, a.data, "base.fvecs", QV_VEC_FVECS) ||
        open_in(&r.query, a.data, "query.fvecs", QV_VEC_FVECS))
        goto fail;
    if (!a.filter && open_in(&r.gt, a.data, "groundtruth.ivecs", QV_VEC_IVECS))
        goto fail;
    n = r.base.n;
    dim = r.base.dim;
    if (r.query.dim != dim) {
        fprintf(stderr, "quiverbench offline: %s: queries have dim %u but the base has "
                "dim %u\n", r.query.path, r.query.dim, dim);
        goto fail;
    }
    nq = r.query.n;
    if (a.nq != 0) {
        if (a.nq > nq) {
            qv__bench_usage("offline", qv__bench_offline_usage,
                            "--nq %llu: expected an integer in 1..%llu (queries in %s)",
                            (unsigned long long)a.nq, (unsigned long long)nq, r.query.path);
            qv_config_free(cfg);
            offline_release(&r);
            return QV_BENCH_EXIT_USAGE;
        }
        nq = a.nq;
    }
    if (!a.filter && r.gt.n < nq) {
        fprintf(stderr, "quiverbench offline: %s: %llu ground-truth rows for %llu "
                "queries\n", r.gt.path, (unsigned long long)r.gt.n,
                (unsigned long long)nq);
        goto fail;
    }
    if (!a.filter && a.k > r.gt.dim) {
        qv__bench_usage("offline", qv__bench_offline_usage,
                        "--k %llu: the ground truth in %s has only %u columns",
                        (unsigned long long)a.k, r.gt.path, r.gt.dim);
        qv_config_free(cfg);
        offline_release(&r);
        return QV_BENCH_EXIT_USAGE;
    }
    if (a.k > n) {
        qv__bench_usage("offline", qv__bench_offline_usage,
                        "--k %llu: the base has only %llu vectors",
                        (unsigned long long)a.k, (unsigned long long)n);
        qv_config_free(cfg);
        offline_release(&r);
        return QV_BENCH_EXIT_USAGE;
    }
    k = (uint32_t)a.k;
    if (a.batch > nq)
        a.batch = nq;

    /* Allocation outside every timed region. */
    r.basev = qv_malloc((size_t)n * dim * sizeof(float), QV_MEM_BENCH);
    r.queries = qv_malloc((size_t)nq * dim * sizeof(float), QV_MEM_BENCH);
    r.dist = qv_malloc((size_t)nq * k * sizeof(float), QV_MEM_BENCH);
    r.ids = qv_malloc((size_t)nq * k * sizeof(uint64_t), QV_MEM_BENCH);
    r.truth_ids = qv_malloc((size_t)nq * k * sizeof(uint64_t), QV_MEM_BENCH);
    r.lat_us = qv_malloc((size_t)nq * sizeof(double), QV_MEM_BENCH);
    r.best_lat_us = qv_malloc((size_t)nq * sizeof(double), QV_MEM_BENCH);
    r.truth = qv_malloc((size_t)k * sizeof(uint64_t), QV_MEM_BENCH);
    r.found = qv_malloc((size_t)k * sizeof(uint64_t), QV_MEM_BENCH);
    if (!r.basev || !r.queries || !r.dist || !r.ids || !r.truth_ids || !r.lat_us ||
        !r.best_lat_us || !r.truth || !r.found) {
        fprintf(stderr, "quiverbench offline: out of memory for %llu x %u base vectors\n",
                (unsigned long long)n, dim);
        goto fail;
    }
    if (qv_vecfile_read_f32(&r.query, 0, nq, r.queries) != 0 ||
        qv_vecfile_read_f32(&r.base, 0, n, r.basev) != 0) {
        fprintf(stderr, "quiverbench offline: %s\n", qv_errmsg());
        goto fail;
    }
    if (!a.filter)
        for (uint64_t i = 0; i < nq; i++) {
            const int32_t *g = qv_vecfile_row(&r.gt, i);
            for (uint32_t j = 0; j < k; j++)
                r.truth_ids[i * k + j] = g[j] < 0 ? QV_ID_NONE : (uint64_t)g[j];
        }

    r.pool = qv_pool_create((unsigned)a.threads, pin);
    if (r.pool == NULL) {
        fprintf(stderr, "quiverbench offline: cannot start %llu threads: %s\n",
                (unsigned long long)a.threads, qv_errmsg());
        goto fail;
    }
    if (strcmp(a.engine, "cpu") != 0) {
        if (strcmp(a.engine, "auto") == 0)
            r.engine = qv__bench_auto_engine(cfg, r.pool, !a.json, &r.router);
        else
            r.engine = strcmp(a.engine, "opencl") == 0
                     ? qv_engines_opencl(cfg)
                     : qv_engines_fpga(cfg, QV_ENGINES_SLOW_CARD);
        if (r.engine)
            r.engine = qv__bench_meter_wrap(r.engine);
        if (!r.engine) {
            fprintf(stderr, "quiverbench offline: --engine %s: %s\n", a.engine, qv_errmsg());
            goto fail;
        }
    }
    if (r.router && !a.json) {
        char text[4096];
        struct qv_router_stats rs;
        qv_router_stats(r.router, &rs);
        qv_router_describe(r.router, text, sizeof text);
        fprintf(stderr, "offline: --engine auto: calibration %.0f ms (%d of %u engines from "
                "the cache)\n%s", (double)rs.calibrate_ns * 1e-6, rs.calib_cache_hits,
                rs.nengines, text);
    }
    struct qv_batcher_opts bopts;
    qv_batcher_opts_from_config(cfg, &bopts);
    qv_config_free(cfg);
    cfg = NULL;

    p.metric = a.metric;
    p.dim = dim;
    p.pool = r.pool;
    p.engine = r.engine;
    p.threads = (unsigned)a.threads;
    p.seed = a.seed;
    r.ops->defaults(&p, n);
    if (a.nlist) p.nlist = (uint32_t)a.nlist;
    if (a.nprobe) p.nprobe = (uint32_t)a.nprobe;
    if (a.m) p.m = (uint32_t)a.m;
    if (a.nbits) p.nbits = (uint32_t)a.nbits;
    if (a.refine) p.refine = (uint32_t)a.refine;
    if (a.M) p.M = (uint32_t)a.M;
    if (a.efc) p.ef_construction = (uint32_t)a.efc;
    if (a.ef) p.ef = (uint32_t)a.ef;

    if (a.filter && make_filter(&r, &a, &p, n, nq, k) < 0)
        goto fail;

    if (!a.json)
        fprintf(stderr, "offline: %s: n=%llu dim=%u nq=%llu, %s %s (%s, %llu threads, "
                "%s)\n", a.data, (unsigned long long)n, dim, (unsigned long long)nq,
                a.load ? "loading" : "building", a.index, qv_metric_name(a.metric),
                (unsigned long long)a.threads, qv_simd_name(level));
    t0 = qv_now_ns();
    r.ix = a.load ? r.ops->load(&p, a.load) : r.ops->build(&p, r.basev, n);
    build_s = (double)(qv_now_ns() - t0) * 1e-9;
    if (!r.ix) {
        fprintf(stderr, "quiverbench offline: cannot %s the %s index: %s\n",
                a.load ? "load" : "build", a.index, qv_errmsg());
        goto fail;
    }
    if (a.save && r.ops->save(r.ix, a.save) != 0) {
        fprintf(stderr, "quiverbench offline: cannot save the index: %s\n", qv_errmsg());
        goto fail;
    }
    if (a.rate > 0) {
        struct qv__bench_openloop ol = {
            .rate = a.rate, .duration_s = a.duration, .batching = a.batching,
            .budget_us = (int64_t)a.budget_us, .bopts = bopts, .ops = r.ops, .ix = r.ix,
            .router = r.router,
            .p = &p, .queries = r.queries, .nq = nq, .dim = dim, .k = k, .seed = a.seed,
            .json = a.json, .index = a.index, .engine = a.engine, .data = a.data,
        };
        if (!a.json)
            fprintf(stderr, "offline: %s in %.3f s; open loop at %.0f queries/s\n",
                    a.load ? "loaded" : "built", build_s, a.rate);
        rc = qv__bench_openloop(&ol);
        offline_release(&r);
        return rc;
    }
    if (!a.json)
        fprintf(stderr, "offline: %s in %.3f s, searching %llu queries in batches of "
                "%llu, %llu pass(es)\n", a.load ? "loaded" : "built", build_s,
                (unsigned long long)nq, (unsigned long long)a.batch,
                (unsigned long long)a.repeat);

    unsigned runs = a.nsweep ? a.nsweep : 1;
    if (!a.json) {
        printf("data          %s (n=%llu, dim=%u, nq=%llu)\n", a.data,
               (unsigned long long)n, dim, (unsigned long long)nq);
        printf("index         %s, metric %s, k=%u", a.index, qv_metric_name(a.metric), k);
        if (p.nlist) printf(", nlist %u", p.nlist);
        if (p.m) printf(", m %u nbits %u", p.m, p.nbits);
        if (p.refine > 1) printf(", refine %u", p.refine);
        if (p.M) printf(", M %u efC %u", p.M, p.ef_construction);
        printf("\n");
        printf("simd          %s\n", qv_simd_name(level));
        printf("threads       %llu\n", (unsigned long long)a.threads);
        printf("batch         %llu%s\n", (unsigned long long)a.batch,
               a.batch > 1 ? "  (a query's latency = its batch's latency)" : "");
        printf("%s         %.3f s\n", a.load ? "load " : "build", build_s);
        if (a.filter)
            printf("filter        a < %.0f (share %.4f); recall vs exact filtered search\n",
                   a.filter * 1000000.0, a.filter);
        if (a.min_time > 0)
            printf("passes        at least %llu, until %.2f s of passes (best QPS reported)\n",
                   (unsigned long long)a.repeat, a.min_time);
        else if (a.repeat > 1)
            printf("passes        %llu (best QPS reported)\n", (unsigned long long)a.repeat);
        printf("%-8s %10s %12s %10s %10s %10s%s\n",
               r.ops->sweep_param ? r.ops->sweep_param : "-", "recall@k", "QPS",
               "mean_us", "p50_us", "p99_us",
               r.engine ? "    units  kernel%  xfer%" : "");
    }
    for (unsigned run = 0; run < runs; run++) {
        struct result res;
        uint64_t sv = 0;
        if (a.nsweep) {
            sv = a.sweep[run];
            if (strcmp(r.ops->sweep_param, "nprobe") == 0)
                p.nprobe = (uint32_t)sv;
            else if (strcmp(r.ops->sweep_param, "ef") == 0)
                p.ef = (uint32_t)sv;
        } else if (r.ops->sweep_param) {
            sv = strcmp(r.ops->sweep_param, "nprobe") == 0 ? p.nprobe : p.ef;
        }
        if (measure(&r, &a, &p, nq, dim, k, &res) != 0)
            goto fail;
        if (a.json) {
            struct json_object *o = json_object_new_object();
            json_object_object_add(o, "recall_at_k", json_object_new_double(res.recall));
            json_object_object_add(o, "qps", json_object_new_double(res.qps));
            json_object_object_add(o, "mean_us", json_object_new_double(res.mean_us));
            json_object_object_add(o, "p50_us", json_object_new_double(res.p50_us));
            json_object_object_add(o, "p99_us", json_object_new_double(res.p99_us));
            json_object_object_add(o, "build_s", json_object_new_double(build_s));
            json_object_object_add(o, "simd", json_object_new_string(qv_simd_name(level)));
            json_param(o, "threads", a.threads);
            json_param(o, "batch", a.batch);
            json_param(o, "n", n);
            json_param(o, "dim", dim);
            json_param(o, "k", k);
            json_param(o, "nq", nq);
            json_param(o, "repeat", a.repeat);
            json_param(o, "passes", res.passes);
            json_object_object_add(o, "index", json_object_new_string(a.index));
            json_object_object_add(o, "metric",
                                   json_object_new_string(qv_metric_name(a.metric)));
            json_object_object_add(o, "data", json_object_new_string(a.data));
            if (p.nlist) {
                json_param(o, "nlist", p.nlist);
                json_param(o, "nprobe", p.nprobe);
            }
            if (p.m) {
                json_param(o, "m", p.m);
                json_param(o, "nbits", p.nbits);
                json_param(o, "refine", p.refine);
            }
            if (p.M) {
                json_param(o, "M", p.M);
                json_param(o, "ef_construction", p.ef_construction);
                json_param(o, "ef", p.ef);
            }
            if (a.filter)
                json_object_object_add(o, "filter", json_object_new_double(a.filter));
            json_object_object_add(o, "engine", json_object_new_string(a.engine));
            if (res.nmix) {
                struct json_object *mix = json_object_new_object();
                for (unsigned i = 0; i < res.nmix; i++)
                    json_object_object_add(mix, res.mix_name[i],
                                           json_object_new_int64((int64_t)res.mix[i]));
                json_object_object_add(o, "mix", mix);
            }
            if (r.engine) {
                /* of the best pass: engine-reported kernel and transfer
                 * time, and their shares of the pass's wall time (kernels
                 * of concurrent units may overlap: shares can pass 1) */
                json_param(o, "units", res.units);
                json_object_object_add(o, "device_ms",
                                       json_object_new_double(res.device_s * 1e3));
                json_object_object_add(o, "transfer_ms",
                                       json_object_new_double(res.transfer_s * 1e3));
                json_object_object_add(o, "device_share",
                                       json_object_new_double(res.device_s / res.pass_s));
                json_object_object_add(o, "transfer_share",
                                       json_object_new_double(res.transfer_s / res.pass_s));
            }
            printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
                                                          JSON_C_TO_STRING_NOSLASHESCAPE));
            json_object_put(o);
        } else {
            char col[32] = "-";
            if (r.ops->sweep_param)
                snprintf(col, sizeof col, "%llu", (unsigned long long)sv);
            printf("%-8s %10.4f %12.1f %10.1f %10.1f %10.1f", col, res.recall, res.qps,
                   res.mean_us, res.p50_us, res.p99_us);
            if (r.engine)
                printf(" %8llu %7.1f%% %5.1f%%", (unsigned long long)res.units,
                       100.0 * res.device_s / res.pass_s,
                       100.0 * res.transfer_s / res.pass_s);
            if (res.nmix) {
                uint64_t tot = 0;
                for (unsigned i = 0; i < res.nmix; i++)
                    tot += res.mix[i];
                printf("  mix");
                for (unsigned i = 0; i < res.nmix; i++)
                    printf(" %s %.0f%%", res.mix_name[i],
                           tot ? 100.0 * (double)res.mix[i] / (double)tot : 0.0);
            }
            printf("\n");
        }
        fflush(stdout);
    }
    offline_release(&r);
    return QV_BENCH_EXIT_OK;

fail:
    qv_config_free(cfg);
    offline_release(&r);
    return QV_BENCH_EXIT_FAIL;
}
