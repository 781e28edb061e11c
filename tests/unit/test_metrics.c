/*
 * test_metrics.c - the metrics registry: naming and label rules with their
 * errors, exact sums under concurrent updates (with a render running),
 * histogram geometry and quantiles of known distributions within the
 * documented 1/32 relative error, the Prometheus text format parsed back
 * line by line (escaping included), QV_ENOSPC sizing, unregistering
 * (reference counts, emptied families, bounded memory over 1000 series
 * that come and go), injected allocation failures without leaks, and a
 * printed micro-benchmark of the hot path.
 */
#include <CUnit/Basic.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quiver/alloc.h"
#include "quiver/errors.h"
#include "quiver/metrics.h"
#include "quiver/timeutil.h"

static struct qv_mem_stats mem0;

static int suite_init(void)
{
    qv_mem_stats(QV_MEM_METRICS, &mem0);
    return 0;
}

/* Every registry of every test is gone by the end: nothing leaked. */
static void test_no_leak(void)
{
    struct qv_mem_stats s;

    qv_mem_stats(QV_MEM_METRICS, &s);
    CU_ASSERT_EQUAL(s.live_blocks, mem0.live_blocks);
    CU_ASSERT_EQUAL(s.live_bytes, mem0.live_bytes);
}

/* ---- registration ------------------------------------------------------ */

static void expect_einval(void *p, const char *needle)
{
    if (p != NULL)
        printf("\n  registration expected to fail (\"%s\") succeeded", needle);
    CU_ASSERT_PTR_NULL(p);
    CU_ASSERT_EQUAL(qv_errno, QV_EINVAL);
    if (strstr(qv_errmsg(), needle) == NULL) {
        printf("\n  message \"%s\" lacks \"%s\"\n", qv_errmsg(), needle);
        CU_FAIL("error message does not name the problem");
    }
}

static void test_registration(void)
{
    struct qv_metrics *m = qv_metrics_create();
    CU_ASSERT_PTR_NOT_NULL_FATAL(m);

    struct qv_counter *c = qv_metrics_register_counter(m, "qv_queries_total",
            "Queries.", "engine=\"opencl\",class=\"interactive\"");
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    /* Same name and labels (reordered, spaced): the same metric. */
    CU_ASSERT_PTR_EQUAL(qv_metrics_register_counter(m, "qv_queries_total", "other",
            " class = \"interactive\" , engine=\"opencl\" "), c);
    /* Other labels: another series of the same family. */
    struct qv_counter *c2 = qv_metrics_register_counter(m, "qv_queries_total",
            NULL, "engine=\"cpu\",class=\"interactive\"");
    CU_ASSERT_PTR_NOT_NULL(c2);
    CU_ASSERT_PTR_NOT_EQUAL(c2, c);
    struct qv_counter *c3 = qv_metrics_register_counter(m, "qv_queries_total", NULL, "");
    CU_ASSERT_PTR_NOT_NULL(c3);
    CU_ASSERT_PTR_EQUAL(qv_metrics_register_counter(m, "qv_queries_total", NULL, NULL), c3);
    CU_ASSERT_PTR_NOT_NULL(qv_metrics_register_gauge(m, ":odd:name_9", NULL, NULL));
    CU_ASSERT_PTR_NOT_NULL(qv_metrics_register_hist(m, "qv_lat_ns", "x",
            "path=\"a\\\\b\\\"c\\nd\""));

    /* Names. */
    expect_einval(qv_metrics_register_gauge(m, "", NULL, NULL), "needs a name");
    expect_einval(qv_metrics_register_gauge(m, NULL, NULL, NULL), "needs a name");
    expect_einval(qv_metrics_register_gauge(m, "9lives", NULL, NULL), "9lives");
    expect_einval(qv_metrics_register_gauge(m, "a-b", NULL, NULL), "[a-zA-Z_:]");
    expect_einval(qv_metrics_register_gauge(m, "a b", NULL, NULL), "\"a b\"");
    expect_einval(qv_metrics_register_counter(m, "qv_queries", NULL, NULL), "_total");
    expect_einval(qv_metrics_register_counter(m, "_total", NULL, NULL), "_total");
    /* Same name, another type. */
    expect_einval(qv_metrics_register_gauge(m, "qv_queries_total", NULL, NULL),
                  "already registered as a counter");
    expect_einval(qv_metrics_register_hist(m, "qv_queries_total", NULL, NULL),
                  "not a histogram");

    /* Labels. */
    static const struct { const char *labels, *needle; } bad[] = {
        { "engine=opencl",          "name=\"value\"" },
        { "engine=\"opencl",        "unterminated" },
        { "engine=\"a\nb\"",        "unterminated" },
        { "engine=\"a\\tb\"",       "escapes" },
        { "9engine=\"x\"",          "label names must match" },
        { "en-gine=\"x\"",          "name=\"value\"" },
        { "__name__=\"x\"",         "reserved" },
        { "a=\"1\",a=\"2\"",        "given twice" },
        { "a=\"1\" b=\"2\"",        "','" },
        { "a=\"1\",",               "must follow" },
        { ",a=\"1\"",               "label names must match" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_einval(qv_metrics_register_counter(m, "qv_bad_total", NULL,
                                                  bad[i].labels), bad[i].needle);
    expect_einval(qv_metrics_register_hist(m, "qv_h", NULL, "quantile=\"0.5\""),
                  "reserved by the summary");
    CU_ASSERT_PTR_NOT_NULL(qv_metrics_register_gauge(m, "qv_g", NULL,
                                                     "quantile=\"ok for gauges\""));
    char many[512] = "";
    for (int i = 0; i <= QV_METRICS_MAX_LABELS; i++)
        snprintf(many + strlen(many), sizeof many - strlen(many), "%sl%d=\"v\"",
                 i ? "," : "", i);
    expect_einval(qv_metrics_register_counter(m, "qv_many_total", NULL, many),
                  "more than");
    many[strrchr(many, ',') - many] = '\0';         /* exactly the maximum */
    CU_ASSERT_PTR_NOT_NULL(qv_metrics_register_counter(m, "qv_many_total", NULL, many));

    qv_metrics_free(m);
    qv_metrics_free(NULL);
}

/* ---- concurrency ------------------------------------------------------- */

#define NUPD 1000000

struct shared {
    struct qv_metrics *m;
    struct qv_counter *c;
    struct qv_gauge *g_up, *g_down;
    struct qv_hist *h;
    _Atomic int done;
    unsigned renders;
};

static void *updater(void *arg)
{
    struct shared *s = arg;

    for (uint64_t i = 0; i < NUPD; i++) {
        qv_counter_add(s->c, 1);
        qv_gauge_add(s->g_up, 1);
        qv_gauge_add(s->g_down, -3);
        qv_hist_record(s->h, i % 1000);
    }
    return NULL;
}

static void *renderer(void *arg)
{
    struct shared *s = arg;
    static char buf[1 << 16];
    size_t len;

    while (!atomic_load(&s->done)) {
        if (qv_metrics_render(s->m, buf, sizeof buf, &len) != 0 || len == 0)
            break;
        s->renders++;
    }
    return NULL;
}

static void test_concurrent_updates(void)
{
    struct shared s = { .m = qv_metrics_create() };
    pthread_t t[3];

    CU_ASSERT_PTR_NOT_NULL_FATAL(s.m);
    s.c = qv_metrics_register_counter(s.m, "qv_ops_total", "ops", NULL);
    s.g_up = qv_metrics_register_gauge(s.m, "qv_up", "up", NULL);
    s.g_down = qv_metrics_register_gauge(s.m, "qv_down", "down", NULL);
    s.h = qv_metrics_register_hist(s.m, "qv_mod_1000", "i % 1000", NULL);
    CU_ASSERT_FATAL(s.c && s.g_up && s.g_down && s.h);
    qv_gauge_set(s.g_down, 5);

    pthread_create(&t[2], NULL, renderer, &s);
    pthread_create(&t[0], NULL, updater, &s);
    pthread_create(&t[1], NULL, updater, &s);
    pthread_join(t[0], NULL);
    pthread_join(t[1], NULL);
    atomic_store(&s.done, 1);
    pthread_join(t[2], NULL);

    struct qv_hist_snapshot snap;
    qv_hist_snapshot(s.h, &snap);
    CU_ASSERT_EQUAL(qv_counter_get(s.c), 2ull * NUPD);
    CU_ASSERT_EQUAL(qv_gauge_get(s.g_up), 2 * NUPD);
    CU_ASSERT_EQUAL(qv_gauge_get(s.g_down), 5 - 6LL * NUPD);
    CU_ASSERT_EQUAL(snap.count, 2ull * NUPD);
    CU_ASSERT_EQUAL(snap.sum, 2ull * (NUPD / 1000) * 499500);
    CU_ASSERT_EQUAL(snap.min, 0);
    CU_ASSERT_EQUAL(snap.max, 999);
    printf("\n  (%u renders ran during the updates)", s.renders);
    qv_metrics_free(s.m);
}

/* ---- histogram geometry and quantiles ---------------------------------- */

static void check_bucket(uint64_t v)
{
    unsigned i = qv_hist_bucket_index(v);
    uint64_t lo = qv_hist_bucket_lower(i);

    CU_ASSERT_FATAL(i < QV_HIST_NBUCKETS);
    CU_ASSERT_FATAL(lo <= v);
    if (i + 1 < QV_HIST_NBUCKETS) {
        uint64_t hi = qv_hist_bucket_lower(i + 1);
        CU_ASSERT_FATAL(v < hi);
        CU_ASSERT_FATAL(lo < 32 ? hi - lo == 1 : (hi - lo) * 16 <= lo);
    }
}

static void test_bucket_geometry(void)
{
    uint64_t x = 88172645463325252ull;

    for (uint64_t v = 0; v < 100000; v++)
        check_bucket(v);
    for (int i = 0; i < 1000000; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        check_bucket(x >> (x & 63));
    }
    for (unsigned i = 1; i < QV_HIST_NBUCKETS; i++) {
        CU_ASSERT_FATAL(qv_hist_bucket_lower(i) > qv_hist_bucket_lower(i - 1));
        CU_ASSERT_FATAL(qv_hist_bucket_index(qv_hist_bucket_lower(i)) == i);
        CU_ASSERT_FATAL(qv_hist_bucket_index(qv_hist_bucket_lower(i) - 1) == i - 1);
    }
    CU_ASSERT_EQUAL(qv_hist_bucket_index(31), 31);
    CU_ASSERT_EQUAL(qv_hist_bucket_index((1ull << 40) - 1), QV_HIST_OVERFLOW - 1);
    CU_ASSERT_EQUAL(qv_hist_bucket_index(1ull << 40), QV_HIST_OVERFLOW);
    CU_ASSERT_EQUAL(qv_hist_bucket_index(UINT64_MAX), QV_HIST_OVERFLOW);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Quantiles of sorted values v[0..n) against the histogram of them. */
static void check_quantiles(const struct qv_hist *h, const uint64_t *v, size_t n)
{
    static const double qs[] = { 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95,
                                 0.99, 0.999, 0.9999 };
    double worst = 0;

    for (size_t i = 0; i < sizeof qs / sizeof qs[0]; i++) {
        size_t rank = (size_t)ceil(qs[i] * (double)n);
        uint64_t truth = v[rank - 1], est = qv_hist_quantile(h, qs[i]);
        double err = fabs((double)est - (double)truth);

        if (truth)
            worst = fmax(worst, err / (double)truth);
        if (err > (double)truth / 32.0) {
            printf("\n  q=%g: estimate %" PRIu64 ", truth %" PRIu64, qs[i], est, truth);
            CU_FAIL("quantile outside the documented 1/32 relative error");
        }
    }
    CU_ASSERT_EQUAL(qv_hist_quantile(h, 0.0), v[0]);
    CU_ASSERT_EQUAL(qv_hist_quantile(h, 1.0), v[n - 1]);
    printf(" [worst rel. err %.4f]", worst);
}

static void test_quantiles(void)
{
    struct qv_metrics *m = qv_metrics_create();
    CU_ASSERT_PTR_NOT_NULL_FATAL(m);
    const size_t n = 1000000;
    uint64_t *v = qv_malloc(n * sizeof *v, QV_MEM_TEST);
    CU_ASSERT_PTR_NOT_NULL_FATAL(v);
    struct qv_hist_snapshot s;

    /* Empty. */
    struct qv_hist *h = qv_metrics_register_hist(m, "qv_empty", NULL, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(h);
    qv_hist_snapshot(h, &s);
    CU_ASSERT(s.count == 0 && s.sum == 0 && s.min == 0 && s.max == 0);
    CU_ASSERT_EQUAL(qv_hist_quantile(h, 0.5), 0);

    /* Uniform 1..1e6 (recorded in a scrambled order). */
    h = qv_metrics_register_hist(m, "qv_uniform", NULL, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(h);
    for (size_t i = 0; i < n; i++)
        v[i] = i + 1;
    for (size_t i = 0; i < n; i++)
        qv_hist_record(h, v[(i * 7919) % n]);
    qv_hist_snapshot(h, &s);
    CU_ASSERT_EQUAL(s.count, n);
    CU_ASSERT_EQUAL(s.sum, (uint64_t)n * (n + 1) / 2);
    CU_ASSERT_EQUAL(s.min, 1);
    CU_ASSERT_EQUAL(s.max, n);
    CU_ASSERT_EQUAL(qv_hist_snapshot_quantile(&s, 0.5), qv_hist_quantile(h, 0.5));
    check_quantiles(h, v, n);

    /* Exponential, mean 100 us in ns. */
    h = qv_metrics_register_hist(m, "qv_exp", NULL, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(h);
    uint64_t x = 0x9E3779B97F4A7C15ull, sum = 0;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        double u = ((double)(x >> 11) + 0.5) / 9007199254740992.0;
        v[i] = (uint64_t)(-100000.0 * log(u));
        sum += v[i];
        qv_hist_record(h, v[i]);
    }
    qsort(v, n, sizeof *v, cmp_u64);
    qv_hist_snapshot(h, &s);
    CU_ASSERT_EQUAL(s.count, n);
    CU_ASSERT_EQUAL(s.sum, sum);
    CU_ASSERT_EQUAL(s.min, v[0]);
    CU_ASSERT_EQUAL(s.max, v[n - 1]);
    check_quantiles(h, v, n);

    /* A constant: every quantile exact (clamped to min = max). */
    h = qv_metrics_register_hist(m, "qv_const", NULL, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(h);
    for (int i = 0; i < 1000; i++)
        qv_hist_record(h, 123457);
    for (double q = 0; q <= 1.0; q += 0.125)
        CU_ASSERT_EQUAL(qv_hist_quantile(h, q), 123457);

    /* Small values are exact; huge ones land in the overflow bucket. */
    h = qv_metrics_register_hist(m, "qv_small", NULL, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(h);
    for (uint64_t i = 0; i < 30; i++)
        qv_hist_record(h, i);
    CU_ASSERT_EQUAL(qv_hist_quantile(h, 0.5), 14);   /* rank 15 */
    CU_ASSERT_EQUAL(qv_hist_quantile(h, 0.1), 2);    /* rank 3 */
    qv_hist_record(h, 1ull << 50);
    qv_hist_record(h, 1ull << 45);
    qv_hist_snapshot(h, &s);
    CU_ASSERT_EQUAL(s.buckets[QV_HIST_OVERFLOW], 2);
    CU_ASSERT_EQUAL(s.max, 1ull << 50);
    CU_ASSERT_EQUAL(s.sum, 435 + (1ull << 50) + (1ull << 45));
    CU_ASSERT_EQUAL(qv_hist_quantile(h, 0.99), 1ull << 50);
    CU_ASSERT_EQUAL(qv_hist_quantile(h, -1), 0);
    CU_ASSERT_EQUAL(qv_hist_quantile(h, 2), 1ull << 50);

    qv_free(v);
    qv_metrics_free(m);
}

/* ---- the text format, parsed back -------------------------------------- */

#define MAXS 64

struct sample {
    char name[64];
    char key[256];          /* unescaped labels: "k=v;k=v;" in text order */
    char family[64];
    char type[16];
    double value;
};

static struct sample samples[MAXS];
static int nsamples;
static char helps[MAXS][128];   /* unescaped help per family, by index */
static char fam_names[MAXS][64];
static int nfams;

/* Undo the format's escapes: \\ -> \, \n -> newline, and \" -> " when
 * quote is set.  Returns 0 on an unknown escape. */
static int unescape(const char *s, size_t n, char *out, int quote)
{
    size_t w = 0;

    for (size_t i = 0; i < n; i++) {
        if (s[i] != '\\') {
            out[w++] = s[i];
            continue;
        }
        i++;
        if (i < n && s[i] == '\\')
            out[w++] = '\\';
        else if (i < n && s[i] == 'n')
            out[w++] = '\n';
        else if (quote && i < n && s[i] == '"')
            out[w++] = '"';
        else
            return 0;
    }
    out[w] = '\0';
    return 1;
}

/* Parse the whole exposition; CU_FAIL on any line out of format. */
static void parse_exposition(const char *text)
{
    char cur_type[16] = "", cur_help_name[64] = "";

    nsamples = nfams = 0;
    for (const char *line = text; *line; ) {
        const char *end = strchr(line, '\n');
        CU_ASSERT_PTR_NOT_NULL_FATAL(end);          /* every line ends in \n */
        size_t n = (size_t)(end - line);
        char name[64];
        int k;

        if (strncmp(line, "# HELP ", 7) == 0) {
            CU_ASSERT_FATAL(sscanf(line + 7, "%63[a-zA-Z0-9_:]%n", name, &k) == 1);
            CU_ASSERT_FATAL(line[7 + k] == ' ');
            CU_ASSERT_FATAL(nfams < MAXS);
            CU_ASSERT_FATAL(unescape(line + 8 + k, n - 8 - (size_t)k, helps[nfams], 0));
            strcpy(cur_help_name, name);
            cur_type[0] = '\0';
        } else if (strncmp(line, "# TYPE ", 7) == 0) {
            CU_ASSERT_FATAL(sscanf(line + 7, "%63[a-zA-Z0-9_:] %15[a-z]%n", name,
                                   cur_type, &k) == 2);
            CU_ASSERT_FATAL((size_t)(7 + k) == n);
            CU_ASSERT_FATAL(strcmp(name, cur_help_name) == 0);  /* HELP, TYPE */
            CU_ASSERT_FATAL(!strcmp(cur_type, "counter") || !strcmp(cur_type, "gauge")
                            || !strcmp(cur_type, "summary"));
            for (int f = 0; f < nfams; f++)                   /* one block per name */
                CU_ASSERT_FATAL(strcmp(fam_names[f], name) != 0);
            strcpy(fam_names[nfams++], name);
        } else {
            struct sample *s = &samples[nsamples];
            const char *p;

            CU_ASSERT_FATAL(line[0] != '#' && cur_type[0] && nsamples < MAXS);
            CU_ASSERT_FATAL(sscanf(line, "%63[a-zA-Z0-9_:]%n", s->name, &k) == 1);
            strcpy(s->family, fam_names[nfams - 1]);
            strcpy(s->type, cur_type);
            p = line + k;
            s->key[0] = '\0';
            if (*p == '{') {
                p++;
                while (*p != '}') {
                    char lname[64], lval[128];
                    const char *v;

                    CU_ASSERT_FATAL(sscanf(p, "%63[a-zA-Z0-9_]%n", lname, &k) == 1);
                    p += k;
                    CU_ASSERT_FATAL(p[0] == '=' && p[1] == '"');
                    v = p += 2;
                    while (*p != '"') {
                        CU_ASSERT_FATAL(*p != '\n' && *p != '\0');
                        p += *p == '\\' ? 2 : 1;
                    }
                    CU_ASSERT_FATAL(unescape(v, (size_t)(p - v), lval, 1));
                    snprintf(s->key + strlen(s->key), sizeof s->key - strlen(s->key),
                             "%s=%s;", lname, lval);
                    p++;
                    if (*p == ',')
                        p++;
                    else
                        CU_ASSERT_FATAL(*p == '}');
                }
                p++;
            }
            CU_ASSERT_FATAL(*p == ' ');
            char *vend;
            s->value = strtod(p + 1, &vend);
            CU_ASSERT_FATAL(vend == end && vend > p + 1);
            /* The sample belongs to the family announced last. */
            size_t fl = strlen(s->family);
            int ok = strcmp(s->name, s->family) == 0;
            if (!strcmp(s->type, "summary") && !strncmp(s->name, s->family, fl))
                ok |= !strcmp(s->name + fl, "_sum") || !strcmp(s->name + fl, "_count");
            CU_ASSERT_FATAL(ok);
            nsamples++;
        }
        line = end + 1;
    }
}

static const struct sample *find(const char *name, const char *key)
{
    for (int i = 0; i < nsamples; i++)
        if (!strcmp(samples[i].name, name) && !strcmp(samples[i].key, key))
            return &samples[i];
    printf("\n  no sample %s {%s}", name, key);
    return NULL;
}

static double value_of(const char *name, const char *key)
{
    const struct sample *s = find(name, key);
    CU_ASSERT_PTR_NOT_NULL(s);
    return s ? s->value : -12345.0;
}

static void test_render_format(void)
{
    struct qv_metrics *m = qv_metrics_create();
    static char buf[1 << 14];
    size_t len;
    char esc[64];

    CU_ASSERT_PTR_NOT_NULL_FATAL(m);
    /* A label value built from a raw string with ", \ and a newline. */
    CU_ASSERT_EQUAL(qv_metrics_escape_label("a\"b\\c\nd", esc, sizeof esc, &len), 0);
    CU_ASSERT_STRING_EQUAL(esc, "a\\\"b\\\\c\\nd");
    CU_ASSERT_EQUAL(len, strlen(esc));
    char labels[128];
    snprintf(labels, sizeof labels, "path=\"%s\",engine=\"opencl\"", esc);

    struct qv_counter *c1 = qv_metrics_register_counter(m, "qv_requests_total",
            "Requests served.\nSecond line with a \\ backslash.", labels);
    struct qv_counter *c2 = qv_metrics_register_counter(m, "qv_requests_total",
            NULL, "engine=\"cpu\"");
    struct qv_counter *c3 = qv_metrics_register_counter(m, "qv_plain_total", "", NULL);
    struct qv_gauge *g = qv_metrics_register_gauge(m, "qv_queue_depth",
            "Items \"queued\".", "ring=\"rx\"");
    struct qv_hist *h = qv_metrics_register_hist(m, "qv_latency_ns", "Latency.",
            "class=\"interactive\"");
    struct qv_hist *he = qv_metrics_register_hist(m, "qv_empty_ns", "Nothing yet.", NULL);
    CU_ASSERT_FATAL(c1 && c2 && c3 && g && h && he);

    qv_counter_add(c1, 41);
    qv_counter_inc(c1);
    qv_counter_add(c2, 7);
    qv_gauge_set(g, 10);
    qv_gauge_add(g, -25);
    for (uint64_t v = 1; v <= 1000; v++)
        qv_hist_record(h, v * 1000);

    CU_ASSERT_EQUAL_FATAL(qv_metrics_render(m, buf, sizeof buf, &len), 0);
    CU_ASSERT_EQUAL(len, strlen(buf));
    parse_exposition(buf);

    CU_ASSERT_EQUAL(nfams, 5);
    CU_ASSERT_STRING_EQUAL(fam_names[0], "qv_requests_total");
    CU_ASSERT_STRING_EQUAL(helps[0], "Requests served.\nSecond line with a \\ backslash.");
    CU_ASSERT_STRING_EQUAL(helps[2], "Items \"queued\".");
    CU_ASSERT_STRING_EQUAL(helps[1], "");
    CU_ASSERT_PTR_NOT_NULL(strstr(buf, "# TYPE qv_latency_ns summary\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(buf, "# TYPE qv_requests_total counter\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(buf, "# TYPE qv_queue_depth gauge\n"));
    /* Labels come back unescaped, sorted by name. */
    CU_ASSERT_EQUAL(value_of("qv_requests_total", "engine=opencl;path=a\"b\\c\nd;"), 42);
    CU_ASSERT_EQUAL(value_of("qv_requests_total", "engine=cpu;"), 7);
    CU_ASSERT_EQUAL(value_of("qv_plain_total", ""), 0);
    CU_ASSERT_EQUAL(value_of("qv_queue_depth", "ring=rx;"), -15);
    double q50 = value_of("qv_latency_ns", "class=interactive;quantile=0.5;");
    double q999 = value_of("qv_latency_ns", "class=interactive;quantile=0.999;");
    CU_ASSERT(fabs(q50 - 500000) <= 500000 / 32.0);
    CU_ASSERT(fabs(q999 - 999000) <= 999000 / 32.0);
    CU_ASSERT_PTR_NOT_NULL(find("qv_latency_ns", "class=interactive;quantile=0.95;"));
    CU_ASSERT_PTR_NOT_NULL(find("qv_latency_ns", "class=interactive;quantile=0.99;"));
    CU_ASSERT_EQUAL(value_of("qv_latency_ns_sum", "class=interactive;"), 500500000.0);
    CU_ASSERT_EQUAL(value_of("qv_latency_ns_count", "class=interactive;"), 1000);
    CU_ASSERT(isnan(value_of("qv_empty_ns", "quantile=0.5;")));
    CU_ASSERT_EQUAL(value_of("qv_empty_ns_count", ""), 0);
    CU_ASSERT_EQUAL(nsamples, 3 + 1 + 6 + 6);

    qv_metrics_free(m);
}

static void test_render_enospc(void)
{
    struct qv_metrics *m = qv_metrics_create();
    char small[16], *buf;
    size_t need, len;

    CU_ASSERT_PTR_NOT_NULL_FATAL(m);
    /* Empty registry: empty text. */
    CU_ASSERT_EQUAL(qv_metrics_render(m, small, sizeof small, &len), 0);
    CU_ASSERT_EQUAL(len, 0);
    CU_ASSERT_STRING_EQUAL(small, "");
    CU_ASSERT_EQUAL(qv_metrics_render(m, NULL, 0, &need), QV_ENOSPC);
    CU_ASSERT_EQUAL(need, 1);

    qv_counter_add(qv_metrics_register_counter(m, "qv_a_total", "a", "x=\"1\""), 3);
    qv_hist_record(qv_metrics_register_hist(m, "qv_b", "b", NULL), 77);
    CU_ASSERT_EQUAL(qv_metrics_render(m, NULL, 0, &need), QV_ENOSPC);
    CU_ASSERT(need > 100);
    buf = qv_malloc(need, QV_MEM_TEST);
    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    CU_ASSERT_EQUAL(qv_metrics_render(m, buf, need, &len), 0);
    CU_ASSERT_EQUAL(len, need - 1);
    CU_ASSERT_EQUAL(strlen(buf), len);
    CU_ASSERT_EQUAL(qv_metrics_render(m, buf, need - 1, &len), QV_ENOSPC);
    CU_ASSERT_EQUAL(len, need);
    CU_ASSERT_EQUAL(strlen(buf), need - 2);              /* truncated, terminated */
    CU_ASSERT_EQUAL(qv_metrics_render(m, small, sizeof small, &len), QV_ENOSPC);
    CU_ASSERT_EQUAL(len, need);
    CU_ASSERT_EQUAL(memcmp(small, "# HELP qv_a_tot", 15), 0);
    CU_ASSERT_EQUAL(small[15], '\0');

    /* The label escaper's own sizing. */
    CU_ASSERT_EQUAL(qv_metrics_escape_label("\"\"", small, 4, &len), QV_ENOSPC);
    CU_ASSERT_EQUAL(len, 5);
    CU_ASSERT_EQUAL(qv_metrics_escape_label("\"\"", small, 5, &len), 0);
    CU_ASSERT_STRING_EQUAL(small, "\\\"\\\"");

    qv_free(buf);
    qv_metrics_free(m);
}

/* ---- unregistering -------------------------------------------------------- */

static char *render_all(struct qv_metrics *m)
{
    size_t need = 0, len;
    char *buf;

    CU_ASSERT_EQUAL(qv_metrics_render(m, NULL, 0, &need), QV_ENOSPC);
    buf = qv_malloc(need + 1024, QV_MEM_TEST);
    if (buf != NULL && qv_metrics_render(m, buf, need + 1024, &len) != 0)
        buf[0] = '\0';
    return buf;
}

/* A series unregistered as often as registered leaves the text, the rest
 * keep their order, an emptied family goes too (HELP and TYPE), and a
 * registration of it afterwards starts from zero; double unregistering
 * and foreign pointers are QV_ENOENT. */
static void test_unregister(void)
{
    struct qv_metrics *m = qv_metrics_create(), *other = qv_metrics_create();
    char *text;

    CU_ASSERT_PTR_NOT_NULL_FATAL(m);
    CU_ASSERT_PTR_NOT_NULL_FATAL(other);
    struct qv_counter *a = qv_metrics_register_counter(m, "qv_req_total", "requests",
                                                       "collection=\"1\"");
    struct qv_counter *b = qv_metrics_register_counter(m, "qv_req_total", "requests",
                                                       "collection=\"2\"");
    struct qv_counter *c = qv_metrics_register_counter(m, "qv_req_total", "requests",
                                                       "collection=\"3\"");
    struct qv_gauge *g = qv_metrics_register_gauge(m, "qv_depth", "depth",
                                                   "collection=\"2\"");
    struct qv_hist *h = qv_metrics_register_hist(m, "qv_lat_ns", "latency",
                                                 "collection=\"2\"");
    CU_ASSERT_FATAL(a && b && c && g && h);
    qv_counter_add(a, 11);
    qv_counter_add(b, 22);
    qv_counter_add(c, 33);
    qv_gauge_set(g, 5);
    qv_hist_record(h, 100);
    /* b registered twice: one unregister keeps it */
    CU_ASSERT_PTR_EQUAL(qv_metrics_register_counter(m, "qv_req_total", NULL,
                                                    "collection=\"2\""), b);
    CU_ASSERT_EQUAL(qv_metrics_unregister_counter(m, b), 0);
    text = render_all(m);
    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "qv_req_total{collection=\"2\"} 22\n"));
    qv_free(text);
    /* now every series of collection 2 */
    CU_ASSERT_EQUAL(qv_metrics_unregister_counter(m, b), 0);
    CU_ASSERT_EQUAL(qv_metrics_unregister_gauge(m, g), 0);
    CU_ASSERT_EQUAL(qv_metrics_unregister_hist(m, h), 0);
    text = render_all(m);
    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    CU_ASSERT_PTR_NULL(strstr(text, "collection=\"2\""));
    CU_ASSERT_PTR_NULL(strstr(text, "qv_depth"));           /* emptied families */
    CU_ASSERT_PTR_NULL(strstr(text, "qv_lat_ns"));
    const char *p1 = strstr(text, "qv_req_total{collection=\"1\"} 11\n");
    const char *p3 = strstr(text, "qv_req_total{collection=\"3\"} 33\n");
    CU_ASSERT(p1 != NULL && p3 != NULL && p1 < p3);
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "# TYPE qv_req_total counter\n"));
    qv_free(text);
    /* unregistered: not any more; from another registry: never */
    CU_ASSERT_EQUAL(qv_metrics_unregister_counter(m, b), QV_ENOENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "not registered"));
    CU_ASSERT_EQUAL(qv_metrics_unregister_gauge(m, g), QV_ENOENT);
    CU_ASSERT_EQUAL(qv_metrics_unregister_counter(other, a), QV_ENOENT);
    CU_ASSERT_EQUAL(qv_metrics_unregister_counter(m, NULL), 0);
    /* the same name and labels again: a new series from zero */
    g = qv_metrics_register_gauge(m, "qv_depth", "depth again", "collection=\"2\"");
    CU_ASSERT_PTR_NOT_NULL_FATAL(g);
    CU_ASSERT_EQUAL(qv_gauge_get(g), 0);
    text = render_all(m);
    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "# HELP qv_depth depth again\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "qv_depth{collection=\"2\"} 0\n"));
    qv_free(text);
    /* the last series of every family: an empty text */
    CU_ASSERT_EQUAL(qv_metrics_unregister_counter(m, a), 0);
    CU_ASSERT_EQUAL(qv_metrics_unregister_counter(m, c), 0);
    CU_ASSERT_EQUAL(qv_metrics_unregister_gauge(m, g), 0);
    text = render_all(m);
    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    CU_ASSERT_STRING_EQUAL(text, "");
    qv_free(text);
    qv_metrics_free(other);
    qv_metrics_free(m);
}

/* Series of collections that come and go: 1000 rounds of register,
 * update, unregister leave the registry (its memory included) as it was. */
static void test_unregister_bounded(void)
{
    struct qv_metrics *m = qv_metrics_create();
    struct qv_mem_stats s0, s1;
    char lab[64];
    unsigned bad = 0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(m);
    CU_ASSERT_PTR_NOT_NULL_FATAL(qv_metrics_register_counter(m, "qv_keep_total", "k",
                                                             NULL));
    qv_mem_stats(QV_MEM_METRICS, &s0);
    for (unsigned i = 0; i < 1000; i++) {
        snprintf(lab, sizeof lab, "collection=\"%u\"", 100 + i);
        struct qv_counter *c = qv_metrics_register_counter(m, "qv_req_total", "r", lab);
        struct qv_hist *h = qv_metrics_register_hist(m, "qv_lat_ns", "l", lab);
        if (c == NULL || h == NULL) {
            bad++;
            break;
        }
        qv_counter_inc(c);
        qv_hist_record(h, i);
        bad += qv_metrics_unregister_counter(m, c) != 0;
        bad += qv_metrics_unregister_hist(m, h) != 0;
    }
    qv_mem_stats(QV_MEM_METRICS, &s1);
    CU_ASSERT_EQUAL(bad, 0);
    CU_ASSERT_EQUAL(s1.live_blocks, s0.live_blocks);
    CU_ASSERT_EQUAL(s1.live_bytes, s0.live_bytes);
    char *text = render_all(m);
    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    CU_ASSERT_PTR_NULL(strstr(text, "collection="));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "qv_keep_total 0\n"));
    qv_free(text);
    qv_metrics_free(m);
}

/* ---- allocation failures ------------------------------------------------ */

/* Build a small registry; returns 0 or the first failure's code. */
static int build_registry(void)
{
    struct qv_metrics *m = qv_metrics_create();
    int rc = 0;

    if (m == NULL)
        return qv_errno;
    for (int i = 0; i < 12 && rc == 0; i++) {     /* grows the arrays past 8 */
        char name[32];
        snprintf(name, sizeof name, "qv_c%d_total", i % 10);
        if (qv_metrics_register_counter(m, name, "h", i < 10 ? NULL : "k=\"v\"") == NULL ||
            qv_metrics_register_hist(m, i % 2 ? "qv_h" : "qv_h2", "h",
                                     i % 3 ? "a=\"1\"" : NULL) == NULL)
            rc = qv_errno;
    }
    qv_metrics_free(m);
    return rc;
}

static void test_alloc_failure(void)
{
    struct qv_mem_stats s0, s1;
    int failures = 0;

    qv_mem_stats(QV_MEM_METRICS, &s0);
    for (long step = 0; step < 1000; step++) {
        qv_alloc_fail_after(step);
        int rc = build_registry();
        qv_alloc_fail_after(-1);
        if (rc == 0)
            break;
        CU_ASSERT_EQUAL(rc, QV_ENOMEM);
        failures++;
    }
    qv_mem_stats(QV_MEM_METRICS, &s1);
    CU_ASSERT(failures > 20);
    CU_ASSERT_EQUAL(s1.live_blocks, s0.live_blocks);
    CU_ASSERT_EQUAL(s1.live_bytes, s0.live_bytes);
}

/* ---- micro-benchmark (printed, not asserted) ---------------------------- */

static void test_bench(void)
{
    struct qv_metrics *m = qv_metrics_create();
    CU_ASSERT_PTR_NOT_NULL_FATAL(m);
    struct qv_counter *c = qv_metrics_register_counter(m, "qv_bench_total", "", NULL);
    struct qv_gauge *g = qv_metrics_register_gauge(m, "qv_bench_g", "", NULL);
    struct qv_hist *h = qv_metrics_register_hist(m, "qv_bench_ns", "", NULL);
    const uint64_t n = 20000000;
    int64_t t0, t1, t2, t3;
    uint64_t x = 1;

    CU_ASSERT_FATAL(c && g && h);
    t0 = qv_now_ns();
    for (uint64_t i = 0; i < n; i++)
        qv_counter_add(c, 1);
    t1 = qv_now_ns();
    for (uint64_t i = 0; i < n; i++)
        qv_gauge_add(g, 1);
    t2 = qv_now_ns();
    for (uint64_t i = 0; i < n; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        qv_hist_record(h, 1000 + (x >> 44));        /* ~1 us .. 1 ms spread */
    }
    t3 = qv_now_ns();
    CU_ASSERT_EQUAL(qv_counter_get(c), n);
    CU_ASSERT_EQUAL(qv_hist_quantile(h, 1.0) >= 1000, 1);
    printf("\n  single thread: counter_add %.2f ns, gauge_add %.2f ns, "
           "hist_record %.2f ns (incl. an LCG step)",
           (double)(t1 - t0) / (double)n, (double)(t2 - t1) / (double)n,
           (double)(t3 - t2) / (double)n);
    qv_metrics_free(m);
}

int main(void)
{
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    CU_pSuite s = CU_add_suite("metrics", suite_init, NULL);
    CU_add_test(s, "registration: names, labels, same series, type clash", test_registration);
    CU_add_test(s, "2 threads x 1e6 updates sum exactly, render running", test_concurrent_updates);
    CU_add_test(s, "histogram bucket geometry", test_bucket_geometry);
    CU_add_test(s, "quantiles: uniform, exponential, constant, edges", test_quantiles);
    CU_add_test(s, "render: text format 0.0.4 parsed back", test_render_format);
    CU_add_test(s, "render: QV_ENOSPC gives the size needed", test_render_enospc);
    CU_add_test(s, "unregister: series and emptied families leave the text", test_unregister);
    CU_add_test(s, "1000 series registered and unregistered: nothing grows",
                test_unregister_bounded);
    CU_add_test(s, "allocation failures: ENOMEM, no leak", test_alloc_failure);
    CU_add_test(s, "micro-benchmark (printed)", test_bench);
    CU_add_test(s, "nothing leaked", test_no_leak);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failed = CU_get_number_of_failures();
    int err = CU_get_error();
    CU_cleanup_registry();
    return failed || err ? 1 : 0;
}
