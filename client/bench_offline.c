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
 *   build_s   qv_flat_create + every qv_flat_add, wall time.
 *   search    the queries in batches of --batch (the last batch may be
 *             short); each batch is one qv_flat_search call, timed with
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
#include "quiver/errors.h"
#include "quiver/flat.h"
#include "quiver/pool.h"
#include "quiver/timeutil.h"
#include "quiver/topk.h"
#include "quiver/vecio.h"

#include "bench.h"

#define BUILD_CHUNK       65536       /* rows per qv_flat_add */
#define OFFLINE_MAX_K     1000
#define OFFLINE_MAX_BATCH 1000000
#define OFFLINE_MAX_REPEAT 1000
#define OFFLINE_MAX_THREADS 1024

const char qv__bench_offline_usage[] =
    "usage: quiverbench offline --data DIR [--index flat] [--k K] [--threads T]\n"
    "                           [--batch B] [--metric l2|ip|cosine]\n"
    "                           [--simd ref|avx2|avx512] [--nq N] [--repeat R]\n"
    "                           [--conf FILE] [--json]\n"
    "\n"
    "Build an index from DIR/base.fvecs, search DIR/query.fvecs and report\n"
    "recall@k against DIR/groundtruth.ivecs, QPS, per-query latency and build\n"
    "time.  A query's latency is the latency of the batch it was searched in.\n"
    "\n"
    "  --data DIR      directory with base.fvecs, query.fvecs, groundtruth.ivecs\n"
    "  --index NAME    index type (only flat in this build; default flat)\n"
    "  --k K           neighbours per query (1..1000, at most the ground truth's\n"
    "                  columns; default 10)\n"
    "  --threads T     search threads incl. the caller (1..CPUs available;\n"
    "                  default all)\n"
    "  --batch B       queries per search call (1..1000000; default 1)\n"
    "  --metric M      l2, ip or cosine (default l2; the ground truth must have\n"
    "                  been computed with the same metric)\n"
    "  --simd L        cap the kernels at ref, avx2 or avx512 (default: best)\n"
    "  --nq N          use only the first N queries (1..queries in the file)\n"
    "  --repeat R      search the query set R times, report the best-QPS pass\n"
    "                  (1..1000; default 1)\n"
    "  --conf FILE     read [simd] level, [workers] threads/pin, [memory]\n"
    "                  hugepages/numa_node and [flat] keys from FILE (flags\n"
    "                  given here win; default: the built-in defaults)\n"
    "  --json          print one JSON object instead of text\n"
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
    bool json;
    const char *conf;           /* NULL: schema defaults */
    bool threads_set;           /* --threads given: overrides [workers] */
};

/* Everything acquired by a run, released by offline_release(). */
struct offline_run {
    struct qv_vecfile base, query, gt;
    struct qv_pool *pool;
    struct qv_flat *flat;
    float *chunk;
    float *queries;
    float *dist;
    uint64_t *ids;
    double *lat_us;             /* per query, pass being measured */
    double *best_lat_us;        /* per query, best pass */
    uint64_t *truth;            /* scratch for recall, k ids */
    uint64_t *found;            /* scratch for recall, k ids */
};

static int offline_parse(int argc, char **argv, struct offline_args *a)
{
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

    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case 'd':
            a->data = optarg;
            break;
        case 'x':
            a->index = optarg;
            break;
        case 'k':
            if (qv__bench_parse_u64(cmd, usage, "--k", optarg, 1, OFFLINE_MAX_K, &a->k))
                return -1;
            break;
        case 't':
            if (qv__bench_parse_u64(cmd, usage, "--threads", optarg, 1, ncpus, &a->threads))
                return -1;
            a->threads_set = true;
            break;
        case 'c':
            a->conf = optarg;
            break;
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
        case 'j':
            a->json = true;
            break;
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
    if (strcmp(a->index, "flat") != 0) {
        qv__bench_usage(cmd, usage, "--index %s: only flat is available in this build",
                        a->index);
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
 * ground-truth ids, over k.  Both sides are sorted and merged: O(k log k).
 * Empty result slots (QV_ID_NONE) and negative truth ids never match.
 */
static double query_recall(const uint64_t *ids, const int32_t *gt_row, uint32_t k,
                           uint64_t *found, uint64_t *truth)
{
    uint32_t i = 0, j = 0, hit = 0;

    memcpy(found, ids, k * sizeof(*found));
    for (uint32_t t = 0; t < k; t++)
        truth[t] = gt_row[t] < 0 ? QV_ID_NONE - 1 : (uint64_t)gt_row[t];
    qsort(found, k, sizeof(*found), cmp_u64);
    qsort(truth, k, sizeof(*truth), cmp_u64);
    while (i < k && j < k) {
        if (found[i] == truth[j]) {
            if (found[i] != QV_ID_NONE && found[i] != QV_ID_NONE - 1)
                hit++;
            i++, j++;
        } else if (found[i] < truth[j]) {
            i++;
        } else {
            j++;
        }
    }
    return (double)hit / k;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void offline_release(struct offline_run *r)
{
    qv_free(r->found);
    qv_free(r->truth);
    qv_free(r->best_lat_us);
    qv_free(r->lat_us);
    qv_free(r->ids);
    qv_free(r->dist);
    qv_free(r->queries);
    qv_free(r->chunk);
    qv_flat_free(r->flat);
    qv_pool_free(r->pool);
    qv_vecfile_close(&r->gt);
    qv_vecfile_close(&r->query);
    qv_vecfile_close(&r->base);
}

int qv__bench_offline_main(int argc, char **argv)
{
    struct offline_args a;
    struct offline_run r;
    struct qv_flat_opts fo;
    enum qv_simd level;
    uint64_t n, nq;
    uint32_t dim, k;
    int64_t t0, t1, pass_t0;
    double build_s, best_pass_s = 0.0, best_qps = 0.0, recall = 0.0;
    double mean_us = 0.0, p50_us, p99_us;
    int rc;

    rc = offline_parse(argc, argv, &a);
    if (rc != 0)
        return rc > 0 ? QV_BENCH_EXIT_OK : QV_BENCH_EXIT_USAGE;

    memset(&r, 0, sizeof(r));
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
    bool pin = qv_config_bool(cfg, "workers", "pin");
    int hugepages = qv_huge_mode_parse(qv_config_string(cfg, "memory", "hugepages"));
    int numa_node = (int)qv_config_int(cfg, "memory", "numa_node");
    uint32_t segment_capacity = (uint32_t)qv_config_int(cfg, "flat", "segment_capacity");
    uint32_t prefetch_groups = (uint32_t)qv_config_int(cfg, "flat", "prefetch_groups");
    qv_config_free(cfg);

    level = qv_kernels_init(a.simd < 0 ? QV_SIMD_AVX512 : (enum qv_simd)a.simd);
    if (a.simd >= 0 && (int)level < a.simd)
        fprintf(stderr, "offline: note: --simd %s asked, this CPU runs at most %s\n",
                qv_simd_name((enum qv_simd)a.simd), qv_simd_name(level));
    level = qv_kernels()->level;

    if (open_in(&r.base, a.data, "base.fvecs", QV_VEC_FVECS) ||
        open_in(&r.query, a.data, "query.fvecs", QV_VEC_FVECS) ||
        open_in(&r.gt, a.data, "groundtruth.ivecs", QV_VEC_IVECS))
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
            offline_release(&r);
            return QV_BENCH_EXIT_USAGE;
        }
        nq = a.nq;
    }
    if (r.gt.n < nq) {
        fprintf(stderr, "quiverbench offline: %s: %llu ground-truth rows for %llu "
                "queries\n", r.gt.path, (unsigned long long)r.gt.n,
                (unsigned long long)nq);
        goto fail;
    }
    if (a.k > r.gt.dim) {
        qv__bench_usage("offline", qv__bench_offline_usage,
                        "--k %llu: the ground truth in %s has only %u columns",
                        (unsigned long long)a.k, r.gt.path, r.gt.dim);
        offline_release(&r);
        return QV_BENCH_EXIT_USAGE;
    }
    if (a.k > n) {
        qv__bench_usage("offline", qv__bench_offline_usage,
                        "--k %llu: the base has only %llu vectors",
                        (unsigned long long)a.k, (unsigned long long)n);
        offline_release(&r);
        return QV_BENCH_EXIT_USAGE;
    }
    k = (uint32_t)a.k;
    if (a.batch > nq)
        a.batch = nq;

    if (!a.json)
        fprintf(stderr, "offline: %s: n=%llu dim=%u nq=%llu, building flat (%s, %llu "
                "threads, %s)\n", a.data, (unsigned long long)n, dim,
                (unsigned long long)nq, qv_metric_name(a.metric),
                (unsigned long long)a.threads, qv_simd_name(level));

    /* Allocation outside every timed region. */
    r.chunk = qv_malloc((size_t)BUILD_CHUNK * dim * sizeof(float), QV_MEM_BENCH);
    r.queries = qv_malloc((size_t)nq * dim * sizeof(float), QV_MEM_BENCH);
    r.dist = qv_malloc((size_t)nq * k * sizeof(float), QV_MEM_BENCH);
    r.ids = qv_malloc((size_t)nq * k * sizeof(uint64_t), QV_MEM_BENCH);
    r.lat_us = qv_malloc((size_t)nq * sizeof(double), QV_MEM_BENCH);
    r.best_lat_us = qv_malloc((size_t)nq * sizeof(double), QV_MEM_BENCH);
    r.truth = qv_malloc((size_t)k * sizeof(uint64_t), QV_MEM_BENCH);
    r.found = qv_malloc((size_t)k * sizeof(uint64_t), QV_MEM_BENCH);
    if (!r.chunk || !r.queries || !r.dist || !r.ids || !r.lat_us || !r.best_lat_us ||
        !r.truth || !r.found) {
        fprintf(stderr, "quiverbench offline: out of memory for %llu queries of dim %u\n",
                (unsigned long long)nq, dim);
        goto fail;
    }
    rc = qv_vecfile_read_f32(&r.query, 0, nq, r.queries);
    if (rc != 0) {
        fprintf(stderr, "quiverbench offline: %s: %s\n", r.query.path, qv_errmsg());
        goto fail;
    }

    r.pool = qv_pool_create((unsigned)a.threads, pin);
    if (r.pool == NULL) {
        fprintf(stderr, "quiverbench offline: cannot start %llu threads: %s\n",
                (unsigned long long)a.threads, qv_errmsg());
        goto fail;
    }

    /* Build. */
    memset(&fo, 0, sizeof(fo));
    fo.dim = dim;
    fo.metric = a.metric;
    fo.segment_capacity = segment_capacity;
    fo.pool = r.pool;
    fo.numa_node = numa_node;
    fo.hugepages = hugepages < 0 ? QV_HUGE_AUTO : (enum qv_huge_mode)hugepages;
    fo.prefetch_groups = prefetch_groups;
    t0 = qv_now_ns();
    r.flat = qv_flat_create(&fo);
    if (r.flat == NULL) {
        fprintf(stderr, "quiverbench offline: cannot create the flat index: %s\n",
                qv_errmsg());
        goto fail;
    }
    for (uint64_t first = 0; first < n; first += BUILD_CHUNK) {
        uint64_t cnt = n - first < BUILD_CHUNK ? n - first : BUILD_CHUNK;
        rc = qv_vecfile_read_f32(&r.base, first, cnt, r.chunk);
        if (rc == 0)
            rc = qv_flat_add(r.flat, cnt, r.chunk, NULL);
        if (rc != 0) {
            fprintf(stderr, "quiverbench offline: %s: rows %llu..%llu: %s\n",
                    r.base.path, (unsigned long long)first,
                    (unsigned long long)(first + cnt - 1), qv_errmsg());
            goto fail;
        }
    }
    t1 = qv_now_ns();
    build_s = (double)(t1 - t0) * 1e-9;
    if (!a.json)
        fprintf(stderr, "offline: built in %.3f s, searching %llu queries in batches "
                "of %llu, %llu pass(es)\n", build_s, (unsigned long long)nq,
                (unsigned long long)a.batch, (unsigned long long)a.repeat);

    /* Search passes. */
    for (uint64_t pass = 0; pass < a.repeat; pass++) {
        double pass_s, qps;

        pass_t0 = qv_now_ns();
        for (uint64_t b = 0; b < nq; b += a.batch) {
            uint64_t nb = nq - b < a.batch ? nq - b : a.batch;
            double us;

            t0 = qv_now_ns();
            rc = qv_flat_search(r.flat, r.queries + b * dim, nb, k, NULL,
                                r.dist + b * k, r.ids + b * k);
            t1 = qv_now_ns();
            if (rc != 0) {
                fprintf(stderr, "quiverbench offline: search of queries %llu..%llu "
                        "failed: %s\n", (unsigned long long)b,
                        (unsigned long long)(b + nb - 1), qv_errmsg());
                goto fail;
            }
            us = (double)(t1 - t0) * 1e-3;
            for (uint64_t i = 0; i < nb; i++)
                r.lat_us[b + i] = us;
        }
        pass_s = (double)(qv_now_ns() - pass_t0) * 1e-9;
        qps = (double)nq / pass_s;
        if (!a.json && a.repeat > 1)
            fprintf(stderr, "offline: pass %llu: %.1f QPS\n",
                    (unsigned long long)pass + 1, qps);
        if (pass == 0 || qps > best_qps) {
            best_qps = qps;
            best_pass_s = pass_s;
            memcpy(r.best_lat_us, r.lat_us, (size_t)nq * sizeof(double));
        }
    }

    /* Recall: every pass returns the same answers; use the last. */
    for (uint64_t i = 0; i < nq; i++)
        recall += query_recall(r.ids + i * k, qv_vecfile_row(&r.gt, i), k,
                               r.found, r.truth);
    recall /= (double)nq;

    for (uint64_t i = 0; i < nq; i++)
        mean_us += r.best_lat_us[i];
    mean_us /= (double)nq;
    qsort(r.best_lat_us, nq, sizeof(double), cmp_double);
    p50_us = qv__bench_quantile(r.best_lat_us, nq, 0.50);
    p99_us = qv__bench_quantile(r.best_lat_us, nq, 0.99);

    if (a.json) {
        struct json_object *o = json_object_new_object();
        json_object_object_add(o, "recall_at_k", json_object_new_double(recall));
        json_object_object_add(o, "qps", json_object_new_double(best_qps));
        json_object_object_add(o, "mean_us", json_object_new_double(mean_us));
        json_object_object_add(o, "p50_us", json_object_new_double(p50_us));
        json_object_object_add(o, "p99_us", json_object_new_double(p99_us));
        json_object_object_add(o, "build_s", json_object_new_double(build_s));
        json_object_object_add(o, "simd", json_object_new_string(qv_simd_name(level)));
        json_object_object_add(o, "threads", json_object_new_int64((int64_t)a.threads));
        json_object_object_add(o, "batch", json_object_new_int64((int64_t)a.batch));
        json_object_object_add(o, "n", json_object_new_int64((int64_t)n));
        json_object_object_add(o, "dim", json_object_new_int64(dim));
        json_object_object_add(o, "k", json_object_new_int64(k));
        json_object_object_add(o, "nq", json_object_new_int64((int64_t)nq));
        json_object_object_add(o, "repeat", json_object_new_int64((int64_t)a.repeat));
        json_object_object_add(o, "index", json_object_new_string(a.index));
        json_object_object_add(o, "metric", json_object_new_string(qv_metric_name(a.metric)));
        json_object_object_add(o, "data", json_object_new_string(a.data));
        printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
        json_object_put(o);
    } else {
        printf("data          %s (n=%llu, dim=%u, nq=%llu)\n", a.data,
               (unsigned long long)n, dim, (unsigned long long)nq);
        printf("index         %s, metric %s, k=%u\n", a.index, qv_metric_name(a.metric), k);
        printf("simd          %s\n", qv_simd_name(level));
        printf("threads       %llu\n", (unsigned long long)a.threads);
        printf("batch         %llu\n", (unsigned long long)a.batch);
        printf("build         %.3f s\n", build_s);
        printf("recall@%-6u %.4f\n", k, recall);
        if (a.repeat > 1)
            printf("QPS           %.1f (best of %llu passes; %.3f s)\n", best_qps,
                   (unsigned long long)a.repeat, best_pass_s);
        else
            printf("QPS           %.1f (%.3f s)\n", best_qps, best_pass_s);
        printf("latency us    mean %.1f  p50 %.1f  p99 %.1f%s\n", mean_us, p50_us, p99_us,
               a.batch > 1 ? "  (per query = its batch's latency)" : "");
    }
    offline_release(&r);
    return QV_BENCH_EXIT_OK;

fail:
    offline_release(&r);
    return QV_BENCH_EXIT_FAIL;
}
