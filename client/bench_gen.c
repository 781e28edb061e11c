/*
 * bench_gen.c - `quiverbench gen`: a deterministic clustered data set with
 * exact ground truth, in the TEXMEX layout that `offline` reads.
 *
 * Model.  C clusters.  Cluster c has a centre uniform in [0, 100)^D, a
 * spread sigma_c uniform in [4, 16) and a weight uniform in [0.25, 2)
 * (so cluster sizes differ by up to 8x, as real data's do).  A point picks
 * a cluster with probability proportional to its weight and is
 * centre + sigma_c * g, g a vector of independent standard normals.  Base
 * points and queries come from the same mixture through independent
 * random streams, so queries are not copies of base points.
 *
 * Determinism.  The same arguments give the same bytes on any machine:
 *   - the generator is xoshiro256** seeded through splitmix64, one stream
 *     per purpose (model, base, queries, gt-check sample), derived from
 *     --seed and a fixed constant per stream;
 *   - normals avoid libm (whose log/cos may differ between versions by an
 *     ulp): g = (popcount(64 random bits) - 32 + u) / sqrt(16 + 1/12), u
 *     uniform in [-0.5, 0.5): a binomial smoothed into a continuous
 *     distribution with mean 0, variance 1 and tails to 8 sigma;
 *   - arithmetic is IEEE double with only +, -, *, /, sqrt (correctly
 *     rounded everywhere) and the tool is built with -ffp-contract=off so
 *     no compiler fuses a multiply-add differently on another target.
 *
 * Ground truth.  Exact top gt-k by the metric (squared L2 by default),
 * ties broken by the lower id.  Computed in two steps: qv_flat on all
 * threads returns the gt-k + GT_MARGIN nearest candidates by its float
 * distances; the candidates are then re-ranked by distances computed in
 * double from the stored floats, in a fixed order.  The float step only has
 * to get the true neighbours somewhere into the candidate list, which
 * rounding (relative ~1e-6) cannot spoil with a margin of 32 ranks unless
 * the data has dozens of near-equal distances at rank gt-k; the result is
 * then independent of the SIMD level the flat index ran at.
 *
 * --gt-check N recomputes the truth of N random queries with a plain
 * scalar double loop over the whole base (no Quiver code involved) and
 * compares it id for id with what was written; any difference fails the
 * command with exit 1.  Cost O(N * n * dim), single-threaded.
 *
 * Memory: the whole base is built in RAM (n * dim * 4 bytes), plus a copy
 * inside the flat index while the truth is computed.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <json-c/json.h>

#include "quiver/alloc.h"
#include "quiver/dist.h"
#include "quiver/errors.h"
#include "quiver/flat.h"
#include "quiver/pool.h"
#include "quiver/timeutil.h"
#include "quiver/topk.h"
#include "quiver/vecio.h"

#include "bench.h"

#define GT_MARGIN        32        /* extra candidates fetched from qv_flat */
#define GT_BATCH         256       /* queries per qv_flat_search call */
#define GEN_ADD_CHUNK    65536     /* rows per qv_flat_add */
#define GEN_MAX_N        2147483647ULL   /* ids must fit the int32 of ivecs */
#define GEN_MAX_NQ       10000000ULL
#define GEN_MAX_CLUSTERS 1000000ULL
#define GEN_MAX_GT_K     1000ULL
#define GEN_MAX_THREADS  1024

/* Stream constants: one independent generator per purpose. */
#define STREAM_MODEL   0x6d6f64656cULL   /* "model" */
#define STREAM_BASE    0x62617365ULL     /* "base" */
#define STREAM_QUERY   0x7175657279ULL   /* "query" */
#define STREAM_CHECK   0x636865636bULL   /* "check" */

const char qv__bench_gen_usage[] =
    "usage: quiverbench gen --n N --dim D --nq Q --clusters C --seed S --out DIR\n"
    "                       [--gt-k K] [--metric l2|ip|cosine] [--threads T]\n"
    "                       [--gt-check M]\n"
    "\n"
    "Write DIR/base.fvecs (N x D), DIR/query.fvecs (Q x D) and\n"
    "DIR/groundtruth.ivecs (Q x K exact nearest base ids, nearest first, ties\n"
    "to the lower id) for a mixture of C Gaussian clusters.  The same flags\n"
    "give the same files on any machine.  Counts accept k/m suffixes (1m).\n"
    "\n"
    "  --n N          base vectors (1..2147483647)\n"
    "  --dim D        dimension (1..65536)\n"
    "  --nq Q         queries (1..10000000)\n"
    "  --clusters C   clusters (1..min(N, 1000000))\n"
    "  --seed S       seed (0..18446744073709551615)\n"
    "  --out DIR      output directory (created if missing)\n"
    "  --gt-k K       ground-truth neighbours per query (1..min(N, 1000);\n"
    "                 default 100)\n"
    "  --metric M     metric of the ground truth (default l2)\n"
    "  --threads T    threads for the ground truth (1..CPUs; default all)\n"
    "  --gt-check M   re-verify M random queries' truth with a scalar double\n"
    "                 loop independent of the index (0..Q; default 0)\n"
    "  -h, --help     this text\n";

struct gen_args {
    uint64_t n, dim, nq, clusters, seed, gt_k, threads, gt_check;
    bool have_n, have_dim, have_nq, have_clusters, have_seed;
    const char *out;
    enum qv_metric metric;
};

/* ---- the generator ---------------------------------------------------- */

struct gen_rng {
    uint64_t s[4];
};

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static void rng_seed(struct gen_rng *r, uint64_t seed, uint64_t stream)
{
    uint64_t x = seed ^ (stream * 0xd1342543de82ef95ULL);

    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&x);
}

static inline uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

/* xoshiro256** */
static inline uint64_t rng_next(struct gen_rng *r)
{
    uint64_t *s = r->s;
    uint64_t res = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;

    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return res;
}

/* Uniform in [0, 1) with 53 random bits; exact in double. */
static inline double rng_uniform(struct gen_rng *r)
{
    return (double)(rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

/* Uniform in [0, bound); bound >= 1.  Lemire's multiply-shift, with the
 * rejection step, so every value is exactly equally likely. */
static uint64_t rng_below(struct gen_rng *r, uint64_t bound)
{
    __uint128_t m = (__uint128_t)rng_next(r) * bound;
    uint64_t lo = (uint64_t)m;

    if (lo < bound) {
        uint64_t thresh = -bound % bound;
        while (lo < thresh) {
            m = (__uint128_t)rng_next(r) * bound;
            lo = (uint64_t)m;
        }
    }
    return (uint64_t)(m >> 64);
}

/* Approximately standard normal without libm (see the essay). */
static inline double rng_normal(struct gen_rng *r, double inv_sd)
{
    double bits = (double)__builtin_popcountll(rng_next(r)) - 32.0;
    double u = rng_uniform(r) - 0.5;

    return (bits + u) * inv_sd;
}

/* ---- the mixture ------------------------------------------------------ */

struct gen_model {
    size_t dim, clusters;
    double *centres;        /* clusters x dim */
    double *sigma;          /* clusters */
    double *cum;            /* clusters: cumulative weights, last = 1 */
    double inv_sd;          /* 1 / sqrt(16 + 1/12) */
};

static int model_init(struct gen_model *m, size_t dim, size_t clusters, uint64_t seed)
{
    struct gen_rng r;
    double total = 0.0;

    memset(m, 0, sizeof(*m));
    m->dim = dim;
    m->clusters = clusters;
    m->inv_sd = 1.0 / sqrt(16.0 + 1.0 / 12.0);
    m->centres = qv_malloc(clusters * dim * sizeof(double), QV_MEM_BENCH);
    m->sigma = qv_malloc(clusters * sizeof(double), QV_MEM_BENCH);
    m->cum = qv_malloc(clusters * sizeof(double), QV_MEM_BENCH);
    if (!m->centres || !m->sigma || !m->cum)
        return QV_ENOMEM;
    rng_seed(&r, seed, STREAM_MODEL);
    for (size_t c = 0; c < clusters; c++) {
        for (size_t d = 0; d < dim; d++)
            m->centres[c * dim + d] = 100.0 * rng_uniform(&r);
        m->sigma[c] = 4.0 + 12.0 * rng_uniform(&r);
        total += 0.25 + 1.75 * rng_uniform(&r);
        m->cum[c] = total;
    }
    for (size_t c = 0; c < clusters; c++)
        m->cum[c] /= total;
    m->cum[clusters - 1] = 1.0;
    return 0;
}

static void model_fini(struct gen_model *m)
{
    qv_free(m->cum);
    qv_free(m->sigma);
    qv_free(m->centres);
}

/* Draw count points into out (count x dim floats), reporting progress. */
static void model_draw(const struct gen_model *m, struct gen_rng *r, float *out,
                       size_t count, const char *what)
{
    size_t dim = m->dim;
    size_t step = count / 10 ? count / 10 : 1;

    for (size_t i = 0; i < count; i++) {
        double u = rng_uniform(r);
        size_t lo = 0, hi = m->clusters - 1;
        const double *centre;
        double sigma;

        /* first cluster whose cumulative weight exceeds u */
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            if (m->cum[mid] > u)
                hi = mid;
            else
                lo = mid + 1;
        }
        centre = m->centres + lo * dim;
        sigma = m->sigma[lo];
        for (size_t d = 0; d < dim; d++)
            out[i * dim + d] = (float)(centre[d] + sigma * rng_normal(r, m->inv_sd));
        if ((i + 1) % step == 0 && count >= 100000)
            fprintf(stderr, "gen: %s %zu/%zu\n", what, i + 1, count);
    }
}

/* ---- exact distances, double precision, fixed order -------------------- */

static double exact_dist(enum qv_metric metric, const float *a, const float *b, size_t dim)
{
    double s = 0.0, na = 0.0, nb = 0.0;

    switch (metric) {
    case QV_METRIC_L2:
        for (size_t d = 0; d < dim; d++) {
            double t = (double)a[d] - (double)b[d];
            s += t * t;
        }
        return s;
    case QV_METRIC_IP:
        for (size_t d = 0; d < dim; d++)
            s += (double)a[d] * (double)b[d];
        return -s;
    default:
        for (size_t d = 0; d < dim; d++) {
            s += (double)a[d] * (double)b[d];
            na += (double)a[d] * (double)a[d];
            nb += (double)b[d] * (double)b[d];
        }
        if (na == 0.0 || nb == 0.0)
            return 0.0;
        return 1.0 - s / (sqrt(na) * sqrt(nb));
    }
}

struct gen_pair {
    double d;
    uint64_t id;
};

static int pair_less(const struct gen_pair *x, const struct gen_pair *y)
{
    return x->d < y->d || (x->d == y->d && x->id < y->id);
}

static int cmp_pair(const void *a, const void *b)
{
    const struct gen_pair *x = a, *y = b;
    return pair_less(x, y) ? -1 : pair_less(y, x) ? 1 : 0;
}

/* Bounded max-heap of pairs (root = worst kept); independent of topk.c. */
static void heap_offer(struct gen_pair *h, size_t *n, size_t k, struct gen_pair p)
{
    size_t i;

    if (*n < k) {
        i = (*n)++;
        while (i > 0 && pair_less(&h[(i - 1) / 2], &p)) {
            h[i] = h[(i - 1) / 2];
            i = (i - 1) / 2;
        }
        h[i] = p;
        return;
    }
    if (!pair_less(&p, &h[0]))
        return;
    i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, big = i;
        const struct gen_pair *bp = &p;
        if (l < k && pair_less(bp, &h[l]))
            big = l, bp = &h[l];
        if (r < k && pair_less(bp, &h[r]))
            big = r;
        if (big == i)
            break;
        h[i] = h[big];
        i = big;
    }
    h[i] = p;
}

/* ---- ground truth ----------------------------------------------------- */

static int compute_truth(const struct gen_args *a, const float *base, const float *queries,
                         int32_t *gt)
{
    size_t n = a->n, dim = a->dim, nq = a->nq, gt_k = a->gt_k;
    uint32_t cand = (uint32_t)(gt_k + GT_MARGIN < n ? gt_k + GT_MARGIN : n);
    struct qv_pool *pool;
    struct qv_flat *flat = NULL;
    struct qv_flat_opts fo;
    float *dist = NULL;
    uint64_t *ids = NULL;
    struct gen_pair *pairs = NULL;
    int64_t t0 = qv_now_ns();
    int rc = QV_ENOMEM;

    pool = qv_pool_create((unsigned)a->threads, true);
    if (pool == NULL) {
        fprintf(stderr, "quiverbench gen: cannot start %llu threads: %s\n",
                (unsigned long long)a->threads, qv_errmsg());
        return qv_errno ? qv_errno : QV_ENOMEM;
    }
    memset(&fo, 0, sizeof(fo));
    fo.dim = (uint32_t)dim;
    fo.metric = a->metric;
    fo.pool = pool;
    fo.numa_node = -1;
    fo.hugepages = QV_HUGE_AUTO;
    flat = qv_flat_create(&fo);
    if (flat == NULL) {
        rc = qv_errno;
        fprintf(stderr, "quiverbench gen: cannot create the flat index: %s\n", qv_errmsg());
        goto out;
    }
    for (size_t first = 0; first < n; first += GEN_ADD_CHUNK) {
        size_t cnt = n - first < GEN_ADD_CHUNK ? n - first : GEN_ADD_CHUNK;
        rc = qv_flat_add(flat, cnt, base + first * dim, NULL);
        if (rc != 0) {
            fprintf(stderr, "quiverbench gen: adding rows %zu..%zu: %s\n", first,
                    first + cnt - 1, qv_errmsg());
            goto out;
        }
    }
    dist = qv_malloc((size_t)GT_BATCH * cand * sizeof(float), QV_MEM_BENCH);
    ids = qv_malloc((size_t)GT_BATCH * cand * sizeof(uint64_t), QV_MEM_BENCH);
    pairs = qv_malloc((size_t)cand * sizeof(*pairs), QV_MEM_BENCH);
    if (!dist || !ids || !pairs) {
        rc = QV_ENOMEM;
        fprintf(stderr, "quiverbench gen: out of memory for the ground truth\n");
        goto out;
    }
    fprintf(stderr, "gen: ground truth: %zu queries, top %zu of %u candidates (%llu "
            "threads, %s)\n", nq, gt_k, cand, (unsigned long long)a->threads,
            qv_simd_name(qv_kernels()->level));
    for (size_t b = 0; b < nq; b += GT_BATCH) {
        size_t nb = nq - b < GT_BATCH ? nq - b : GT_BATCH;

        rc = qv_flat_search(flat, queries + b * dim, nb, cand, NULL, dist, ids);
        if (rc != 0) {
            fprintf(stderr, "quiverbench gen: search failed: %s\n", qv_errmsg());
            goto out;
        }
        for (size_t i = 0; i < nb; i++) {
            const float *q = queries + (b + i) * dim;
            size_t m = 0;

            for (uint32_t j = 0; j < cand; j++) {
                uint64_t id = ids[i * cand + j];
                if (id >= n)        /* QV_ID_NONE or garbage: not a row */
                    continue;
                pairs[m].id = id;
                pairs[m].d = exact_dist(a->metric, q, base + id * dim, dim);
                m++;
            }
            if (m < gt_k) {
                rc = QV_ECORRUPT;
                fprintf(stderr, "quiverbench gen: the flat index returned %zu valid ids "
                        "for query %zu, %zu needed\n", m, b + i, gt_k);
                goto out;
            }
            qsort(pairs, m, sizeof(*pairs), cmp_pair);
            for (size_t j = 0; j < gt_k; j++)
                gt[(b + i) * gt_k + j] = (int32_t)pairs[j].id;
        }
        if (nq >= 1000 && ((b / GT_BATCH) % 8 == 7 || b + nb == nq))
            fprintf(stderr, "gen: ground truth %zu/%zu\n", b + nb, nq);
    }
    fprintf(stderr, "gen: ground truth took %.2f s\n", (double)(qv_now_ns() - t0) * 1e-9);
    rc = 0;
out:
    qv_free(pairs);
    qv_free(ids);
    qv_free(dist);
    qv_flat_free(flat);
    qv_pool_free(pool);
    return rc;
}

/* Independent re-check of `count` random queries.  Returns the number of
 * queries whose truth differs (0 = all good), or a negative code. */
static long check_truth(const struct gen_args *a, const float *base, const float *queries,
                        const int32_t *gt)
{
    size_t n = a->n, dim = a->dim, nq = a->nq, gt_k = a->gt_k, count = a->gt_check;
    struct gen_pair *heap;
    size_t *order;
    struct gen_rng r;
    long bad = 0;
    int64_t t0 = qv_now_ns();

    heap = qv_malloc(gt_k * sizeof(*heap), QV_MEM_BENCH);
    order = qv_malloc(nq * sizeof(*order), QV_MEM_BENCH);
    if (!heap || !order) {
        qv_free(order);
        qv_free(heap);
        return QV_ENOMEM;
    }
    for (size_t i = 0; i < nq; i++)
        order[i] = i;
    rng_seed(&r, a->seed, STREAM_CHECK);
    for (size_t c = 0; c < count; c++) {      /* partial Fisher-Yates */
        size_t j = c + (size_t)rng_below(&r, nq - c);
        size_t t = order[c];
        order[c] = order[j];
        order[j] = t;
    }
    for (size_t c = 0; c < count; c++) {
        size_t qi = order[c], held = 0, wrong = 0, first_wrong = 0;
        const float *q = queries + qi * dim;

        for (size_t x = 0; x < n; x++) {
            struct gen_pair p = { exact_dist(a->metric, q, base + x * dim, dim), x };
            heap_offer(heap, &held, gt_k, p);
        }
        qsort(heap, held, sizeof(*heap), cmp_pair);
        for (size_t j = 0; j < gt_k; j++)
            if ((uint64_t)gt[qi * gt_k + j] != heap[j].id && wrong++ == 0)
                first_wrong = j;
        if (wrong) {
            bad++;
            fprintf(stderr, "gen: gt-check: query %zu: %zu of %zu ids differ (first at "
                    "rank %zu: %d, expected %llu)\n", qi, wrong, gt_k, first_wrong,
                    gt[qi * gt_k + first_wrong],
                    (unsigned long long)heap[first_wrong].id);
        }
    }
    fprintf(stderr, "gen: gt-check: %zu queries re-scanned in %.2f s, %ld differ\n",
            count, (double)(qv_now_ns() - t0) * 1e-9, bad);
    qv_free(order);
    qv_free(heap);
    return bad;
}

/* ---- files ------------------------------------------------------------ */

static int make_dirs(const char *path)
{
    char buf[4096];
    size_t len = strlen(path);

    if (len == 0 || len >= sizeof(buf))
        return -1;
    memcpy(buf, path, len + 1);
    for (size_t i = 1; i <= len; i++) {
        if (buf[i] == '/' || buf[i] == '\0') {
            char save = buf[i];
            buf[i] = '\0';
            if (mkdir(buf, 0777) != 0 && errno != EEXIST)
                return -1;
            buf[i] = save;
        }
    }
    return 0;
}

static int write_out(const char *dir, const char *name, enum qv_vec_kind kind,
                     uint32_t dim, uint64_t n, const void *data)
{
    char path[4096];
    int rc;

    if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, name) >= sizeof(path)) {
        fprintf(stderr, "quiverbench gen: %s/%s: path too long\n", dir, name);
        return QV_EINVAL;
    }
    rc = qv_vecfile_write(path, kind, dim, n, data);
    if (rc != 0 && strstr(qv_errmsg(), path) != NULL)
        fprintf(stderr, "quiverbench gen: %s\n", qv_errmsg());
    else if (rc != 0)
        fprintf(stderr, "quiverbench gen: %s: %s\n", path, qv_errmsg());
    else
        fprintf(stderr, "gen: wrote %s (%llu x %u)\n", path, (unsigned long long)n, dim);
    return rc;
}

static int write_params(const struct gen_args *a)
{
    char path[4096];
    struct json_object *o;
    FILE *f;
    int rc = 0;

    if ((size_t)snprintf(path, sizeof(path), "%s/gen.json", a->out) >= sizeof(path))
        return QV_EINVAL;
    o = json_object_new_object();
    json_object_object_add(o, "generator", json_object_new_string("quiverbench gen"));
    json_object_object_add(o, "n", json_object_new_int64((int64_t)a->n));
    json_object_object_add(o, "dim", json_object_new_int64((int64_t)a->dim));
    json_object_object_add(o, "nq", json_object_new_int64((int64_t)a->nq));
    json_object_object_add(o, "clusters", json_object_new_int64((int64_t)a->clusters));
    json_object_object_add(o, "seed", json_object_new_uint64(a->seed));
    json_object_object_add(o, "gt_k", json_object_new_int64((int64_t)a->gt_k));
    json_object_object_add(o, "metric", json_object_new_string(qv_metric_name(a->metric)));
    f = fopen(path, "w");
    if (f == NULL || fprintf(f, "%s\n", json_object_to_json_string_ext(o,
                             JSON_C_TO_STRING_PRETTY)) < 0 || fclose(f) != 0) {
        fprintf(stderr, "quiverbench gen: %s: cannot write: %s\n", path, strerror(errno));
        rc = QV_EIO;
    }
    json_object_put(o);
    return rc;
}

/* ---- command ---------------------------------------------------------- */

static int gen_parse(int argc, char **argv, struct gen_args *a)
{
    static const struct option opts[] = {
        { "n",        required_argument, NULL, 'n' },
        { "dim",      required_argument, NULL, 'd' },
        { "nq",       required_argument, NULL, 'q' },
        { "clusters", required_argument, NULL, 'c' },
        { "seed",     required_argument, NULL, 's' },
        { "out",      required_argument, NULL, 'o' },
        { "gt-k",     required_argument, NULL, 'k' },
        { "metric",   required_argument, NULL, 'm' },
        { "threads",  required_argument, NULL, 't' },
        { "gt-check", required_argument, NULL, 'C' },
        { "help",     no_argument,       NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *cmd = "gen";
    const char *usage = qv__bench_gen_usage;
    unsigned cpus[GEN_MAX_THREADS];
    unsigned ncpus = qv__bench_cpus(cpus, GEN_MAX_THREADS);
    int c, v;

    if (ncpus > GEN_MAX_THREADS)
        ncpus = GEN_MAX_THREADS;
    memset(a, 0, sizeof(*a));
    a->gt_k = 100;
    a->threads = ncpus;
    a->metric = QV_METRIC_L2;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case 'n':
            if (qv__bench_parse_u64(cmd, usage, "--n", optarg, 1, GEN_MAX_N, &a->n))
                return -1;
            a->have_n = true;
            break;
        case 'd':
            if (qv__bench_parse_u64(cmd, usage, "--dim", optarg, 1, QV_VECIO_MAX_DIM,
                                    &a->dim))
                return -1;
            a->have_dim = true;
            break;
        case 'q':
            if (qv__bench_parse_u64(cmd, usage, "--nq", optarg, 1, GEN_MAX_NQ, &a->nq))
                return -1;
            a->have_nq = true;
            break;
        case 'c':
            if (qv__bench_parse_u64(cmd, usage, "--clusters", optarg, 1, GEN_MAX_CLUSTERS,
                                    &a->clusters))
                return -1;
            a->have_clusters = true;
            break;
        case 's':
            if (qv__bench_parse_u64(cmd, usage, "--seed", optarg, 0, UINT64_MAX, &a->seed))
                return -1;
            a->have_seed = true;
            break;
        case 'o':
            a->out = optarg;
            break;
        case 'k':
            if (qv__bench_parse_u64(cmd, usage, "--gt-k", optarg, 1, GEN_MAX_GT_K, &a->gt_k))
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
        case 't':
            if (qv__bench_parse_u64(cmd, usage, "--threads", optarg, 1, ncpus, &a->threads))
                return -1;
            break;
        case 'C':
            if (qv__bench_parse_u64(cmd, usage, "--gt-check", optarg, 0, GEN_MAX_NQ,
                                    &a->gt_check))
                return -1;
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
    if (!a->have_n || !a->have_dim || !a->have_nq || !a->have_clusters || !a->have_seed ||
        a->out == NULL) {
        qv__bench_usage(cmd, usage, "%s is required",
                        !a->have_n ? "--n N" : !a->have_dim ? "--dim D" :
                        !a->have_nq ? "--nq Q" : !a->have_clusters ? "--clusters C" :
                        !a->have_seed ? "--seed S" : "--out DIR");
        return -1;
    }
    if (a->clusters > a->n) {
        qv__bench_usage(cmd, usage, "--clusters %llu: expected an integer in 1..%llu "
                        "(at most --n)", (unsigned long long)a->clusters,
                        (unsigned long long)a->n);
        return -1;
    }
    if (a->gt_k > a->n) {
        qv__bench_usage(cmd, usage, "--gt-k %llu: expected an integer in 1..%llu "
                        "(at most --n)", (unsigned long long)a->gt_k,
                        (unsigned long long)a->n);
        return -1;
    }
    if (a->gt_check > a->nq) {
        qv__bench_usage(cmd, usage, "--gt-check %llu: expected an integer in 0..%llu "
                        "(at most --nq)", (unsigned long long)a->gt_check,
                        (unsigned long long)a->nq);
        return -1;
    }
    return 0;
}

int qv__bench_gen_main(int argc, char **argv)
{
    struct gen_args a;
    struct gen_model model;
    struct gen_rng r;
    float *base = NULL, *queries = NULL;
    int32_t *gt = NULL;
    int64_t t0;
    long bad;
    int rc, exit_rc = QV_BENCH_EXIT_FAIL;

    rc = gen_parse(argc, argv, &a);
    if (rc != 0)
        return rc > 0 ? QV_BENCH_EXIT_OK : QV_BENCH_EXIT_USAGE;

    if (make_dirs(a.out) != 0) {
        fprintf(stderr, "quiverbench gen: --out %s: cannot create the directory: %s\n",
                a.out, strerror(errno));
        return QV_BENCH_EXIT_FAIL;
    }
    if (model_init(&model, a.dim, a.clusters, a.seed) != 0) {
        fprintf(stderr, "quiverbench gen: out of memory for %llu cluster centres\n",
                (unsigned long long)a.clusters);
        goto fail_model;
    }
    base = qv_malloc(a.n * a.dim * sizeof(float), QV_MEM_BENCH);
    queries = qv_malloc(a.nq * a.dim * sizeof(float), QV_MEM_BENCH);
    gt = qv_malloc(a.nq * a.gt_k * sizeof(int32_t), QV_MEM_BENCH);
    if (!base || !queries || !gt) {
        fprintf(stderr, "quiverbench gen: out of memory for %llu x %llu floats (%.1f GiB); "
                "use a smaller --n\n", (unsigned long long)a.n, (unsigned long long)a.dim,
                (double)(a.n * a.dim * sizeof(float)) / (1 << 30));
        goto fail_alloc;
    }

    t0 = qv_now_ns();
    fprintf(stderr, "gen: %llu x %llu base, %llu queries, %llu clusters, seed %llu\n",
            (unsigned long long)a.n, (unsigned long long)a.dim, (unsigned long long)a.nq,
            (unsigned long long)a.clusters, (unsigned long long)a.seed);
    rng_seed(&r, a.seed, STREAM_BASE);
    model_draw(&model, &r, base, a.n, "base");
    rng_seed(&r, a.seed, STREAM_QUERY);
    model_draw(&model, &r, queries, a.nq, "queries");
    fprintf(stderr, "gen: vectors drawn in %.2f s\n", (double)(qv_now_ns() - t0) * 1e-9);

    if (write_out(a.out, "base.fvecs", QV_VEC_FVECS, (uint32_t)a.dim, a.n, base) ||
        write_out(a.out, "query.fvecs", QV_VEC_FVECS, (uint32_t)a.dim, a.nq, queries))
        goto fail_alloc;

    if (compute_truth(&a, base, queries, gt) != 0)
        goto fail_alloc;
    if (a.gt_check > 0) {
        bad = check_truth(&a, base, queries, gt);
        if (bad != 0) {
            if (bad < 0)
                fprintf(stderr, "quiverbench gen: gt-check: out of memory\n");
            else
                fprintf(stderr, "quiverbench gen: gt-check FAILED: %ld of %llu queries "
                        "differ; groundtruth.ivecs not written\n", bad,
                        (unsigned long long)a.gt_check);
            goto fail_alloc;
        }
    }
    if (write_out(a.out, "groundtruth.ivecs", QV_VEC_IVECS, (uint32_t)a.gt_k, a.nq, gt) ||
        write_params(&a))
        goto fail_alloc;
    fprintf(stderr, "gen: done in %.2f s\n", (double)(qv_now_ns() - t0) * 1e-9);
    exit_rc = QV_BENCH_EXIT_OK;

fail_alloc:
    qv_free(gt);
    qv_free(queries);
    qv_free(base);
fail_model:
    model_fini(&model);
    return exit_rc;
}
