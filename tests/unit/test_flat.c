/*
 * test_flat.c - the flat index: exact answers, ids, tombstones, filters,
 * threads, segments, bad input and injected allocation failures, and
 * recall@10 = 1.0 on every real data set in QV_DATA_DIR.
 */
#include <CUnit/Basic.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "quiver/alloc.h"
#include "quiver/engine.h"
#include "quiver/errors.h"
#include "quiver/flat.h"
#include "quiver/pool.h"
#include "quiver/topk.h"
#include "quiver/vecio.h"

static struct qv_pool *pool2;

static uint64_t rng = 0x1234567887654321ULL;
static float frand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)(rng >> 40) / (float)(1u << 24);
}

struct pr { double d; uint64_t id; };
static int cmp_pr(const void *a, const void *b)
{
    const struct pr *x = a, *y = b;
    if (x->d != y->d)
        return x->d < y->d ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static double exact(const float *q, const float *x, size_t dim, enum qv_metric m)
{
    double s = 0, qq = 0, xx = 0;
    for (size_t d = 0; d < dim; d++) {
        if (m == QV_METRIC_L2)
            s += ((double)q[d] - x[d]) * ((double)q[d] - x[d]);
        else
            s += (double)q[d] * x[d];
        qq += (double)q[d] * q[d];
        xx += (double)x[d] * x[d];
    }
    if (m == QV_METRIC_IP)
        return -s;
    if (m == QV_METRIC_COSINE)
        return 1.0 - s / sqrt(qq * xx);
    return s;
}

/* Brute-force check of one search result against the eligible rows. */
static int check_exact(const float *base, const uint64_t *ids, const int *eligible, size_t n,
                       size_t dim, enum qv_metric m, const float *q, uint32_t k,
                       const float *dist, const uint64_t *got)
{
    struct pr *r = malloc((n + 1) * sizeof *r);
    size_t cnt = 0;
    for (size_t i = 0; i < n; i++)
        if (eligible[i]) {
            r[cnt].d = exact(q, base + i * dim, dim, m);
            r[cnt].id = ids[i];
            cnt++;
        }
    qsort(r, cnt, sizeof *r, cmp_pr);
    int ok = 1;
    uint32_t want = cnt < k ? (uint32_t)cnt : k;
    double tol = 1e-4 * dim + 1e-4;
    for (uint32_t j = 0; j < want; j++) {
        if (fabs(dist[j] - r[j].d) > tol)
            ok = 0;
        if (got[j] != r[j].id) {
            int found = 0;
            for (size_t i = 0; i < cnt; i++)
                if (r[i].id == got[j] && r[i].d <= r[want - 1].d + tol)
                    found = 1;
            if (!found)
                ok = 0;
        }
    }
    for (uint32_t j = want; j < k; j++)
        if (got[j] != QV_ID_NONE || !isinf(dist[j]))
            ok = 0;
    free(r);
    return ok;
}

static struct qv_flat *make(size_t dim, enum qv_metric m, uint32_t cap, struct qv_pool *p)
{
    struct qv_flat_opts o = { .dim = (uint32_t)dim, .metric = m, .segment_capacity = cap,
                              .pool = p, .numa_node = -1, .hugepages = QV_HUGE_AUTO };
    return qv_flat_create(&o);
}

static void test_exact_all_metrics(void)
{
    const size_t n = 1500, dim = 33, nq = 20;
    float *base = malloc(n * dim * sizeof(float));
    float *q = malloc(nq * dim * sizeof(float));
    uint64_t *ids = malloc(n * sizeof(uint64_t));
    int *el = malloc(n * sizeof(int));
    for (size_t i = 0; i < n * dim; i++)
        base[i] = frand();
    for (size_t i = 0; i < nq * dim; i++)
        q[i] = frand();
    for (size_t i = 0; i < n; i++) {
        ids[i] = 5000000000ULL + i * 13;
        el[i] = 1;
    }
    for (int m = 0; m < QV_METRIC__COUNT; m++)
        for (int threads = 0; threads < 2; threads++) {
            struct qv_flat *f = make(dim, (enum qv_metric)m, 256, threads ? pool2 : NULL);
            CU_ASSERT_PTR_NOT_NULL_FATAL(f);
            CU_ASSERT_EQUAL(qv_flat_add(f, 700, base, ids), 0);
            CU_ASSERT_EQUAL(qv_flat_add(f, n - 700, base + 700 * dim, ids + 700), 0);
            CU_ASSERT_EQUAL(qv_flat_size(f), n);
            uint32_t ks[] = { 1, 10, 100 };
            for (int ki = 0; ki < 3; ki++) {
                uint32_t k = ks[ki];
                float *dist = malloc(nq * k * sizeof(float));
                uint64_t *got = malloc(nq * k * sizeof(uint64_t));
                /* whole batch, then one query at a time (split by blocks) */
                CU_ASSERT_EQUAL(qv_flat_search(f, q, nq, k, NULL, dist, got), 0);
                for (size_t i = 0; i < nq; i++)
                    CU_ASSERT_TRUE(check_exact(base, ids, el, n, dim, (enum qv_metric)m,
                                               q + i * dim, k, dist + i * k, got + i * k));
                for (size_t i = 0; i < nq; i++) {
                    CU_ASSERT_EQUAL(qv_flat_search(f, q + i * dim, 1, k, NULL, dist, got), 0);
                    CU_ASSERT_TRUE(check_exact(base, ids, el, n, dim, (enum qv_metric)m,
                                               q + i * dim, k, dist, got));
                }
                free(dist);
                free(got);
            }
            qv_flat_free(f);
        }
    free(el);
    free(ids);
    free(q);
    free(base);
}

static void test_remove_filter_segments(void)
{
    const size_t n = 1000, dim = 16, nq = 7;
    const uint32_t k = 50;
    float *base = malloc(n * dim * sizeof(float));
    float *q = malloc(nq * dim * sizeof(float));
    uint64_t *ids = malloc(n * sizeof(uint64_t));
    int *el = malloc(n * sizeof(int));
    uint64_t filter[16] = { 0 };
    float dist[7 * 50];
    uint64_t got[7 * 50];
    for (size_t i = 0; i < n * dim; i++)
        base[i] = frand();
    for (size_t i = 0; i < nq * dim; i++)
        q[i] = frand();
    for (size_t i = 0; i < n; i++)
        ids[i] = i * 3 + 1;
    /* capacity 48: a segment boundary falls inside filter words */
    struct qv_flat *f = make(dim, QV_METRIC_L2, 48, pool2);
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    CU_ASSERT_EQUAL(qv_flat_add(f, n, base, ids), 0);
    /* remove every 5th, and some unknown ids */
    uint64_t rm[250];
    size_t nrm = 0;
    for (size_t i = 0; i < n; i += 5)
        rm[nrm++] = ids[i];
    rm[nrm++] = 2;      /* never added */
    CU_ASSERT_EQUAL(qv_flat_remove(f, nrm, rm), (long)(nrm - 1));
    CU_ASSERT_EQUAL(qv_flat_remove(f, 1, rm), 0);       /* already removed */
    CU_ASSERT_EQUAL(qv_flat_size(f), n - (nrm - 1));
    CU_ASSERT_EQUAL(qv_flat_rows(f), n);
    CU_ASSERT_EQUAL(qv_flat_row_of(f, ids[0]), -1);
    CU_ASSERT_EQUAL(qv_flat_row_of(f, ids[1]), 1);
    for (size_t i = 0; i < n; i++)
        el[i] = i % 5 != 0;
    CU_ASSERT_EQUAL(qv_flat_search(f, q, nq, k, NULL, dist, got), 0);
    for (size_t i = 0; i < nq; i++)
        CU_ASSERT_TRUE(check_exact(base, ids, el, n, dim, QV_METRIC_L2, q + i * dim, k,
                                   dist + i * k, got + i * k));
    /* filter: rows with (row % 7 == 3) or row in [500, 520) */
    for (size_t i = 0; i < n; i++)
        if (i % 7 == 3 || (i >= 500 && i < 520))
            filter[i / 64] |= 1ULL << (i % 64);
    for (size_t i = 0; i < n; i++)
        el[i] = i % 5 != 0 && (i % 7 == 3 || (i >= 500 && i < 520));
    CU_ASSERT_EQUAL(qv_flat_search(f, q, nq, k, filter, dist, got), 0);
    for (size_t i = 0; i < nq; i++)
        CU_ASSERT_TRUE(check_exact(base, ids, el, n, dim, QV_METRIC_L2, q + i * dim, k,
                                   dist + i * k, got + i * k));
    /* a filter passing almost nothing: k > eligible pads */
    memset(filter, 0, sizeof filter);
    filter[0] = 1ULL << 3 | 1ULL << 5;     /* row 5 is a tombstone */
    memset(el, 0, n * sizeof(int));
    el[3] = 1;
    CU_ASSERT_EQUAL(qv_flat_search(f, q, 1, k, filter, dist, got), 0);
    CU_ASSERT_TRUE(check_exact(base, ids, el, n, dim, QV_METRIC_L2, q, k, dist, got));
    CU_ASSERT_EQUAL(got[0], ids[3]);
    CU_ASSERT_EQUAL(got[1], QV_ID_NONE);
    /* a removed id can be added again: new row */
    CU_ASSERT_EQUAL(qv_flat_add(f, 1, base, &ids[0]), 0);
    CU_ASSERT_EQUAL(qv_flat_row_of(f, ids[0]), (int64_t)n);
    qv_flat_free(f);
    free(el);
    free(ids);
    free(q);
    free(base);
}

static void test_bad_input(void)
{
    struct qv_flat_opts o = { .dim = 0, .metric = QV_METRIC_L2, .numa_node = -1 };
    CU_ASSERT_PTR_NULL(qv_flat_create(&o));
    CU_ASSERT_EQUAL(qv_errno, QV_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "dim"));
    o.dim = 8;
    o.segment_capacity = 100;
    CU_ASSERT_PTR_NULL(qv_flat_create(&o));
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "multiple of 16"));
    o.segment_capacity = 0;
    o.metric = (enum qv_metric)7;
    CU_ASSERT_PTR_NULL(qv_flat_create(&o));
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "metric"));

    struct qv_flat *f = make(4, QV_METRIC_L2, 0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    float v[12] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12 };
    uint64_t ids[3] = { 10, 11, 10 };
    CU_ASSERT_EQUAL(qv_flat_add(f, 3, v, ids), QV_EEXIST);      /* repeat in batch */
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "10"));
    CU_ASSERT_EQUAL(qv_flat_size(f), 0);
    CU_ASSERT_EQUAL(qv_flat_row_of(f, 10), -1);
    CU_ASSERT_EQUAL(qv_flat_add(f, 2, v, ids), 0);
    CU_ASSERT_EQUAL(qv_flat_add(f, 1, v, ids + 1), QV_EEXIST);  /* already present */
    CU_ASSERT_EQUAL(qv_flat_size(f), 2);
    uint64_t none = QV_ID_NONE;
    CU_ASSERT_EQUAL(qv_flat_add(f, 1, v, &none), QV_EINVAL);
    v[2] = NAN;
    uint64_t id12 = 12;
    CU_ASSERT_EQUAL(qv_flat_add(f, 1, v, &id12), QV_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "finite"));
    CU_ASSERT_EQUAL(qv_flat_size(f), 2);
    float d[4];
    uint64_t r[4];
    CU_ASSERT_EQUAL(qv_flat_search(f, v + 4, 1, 0, NULL, d, r), QV_EINVAL);
    CU_ASSERT_EQUAL(qv_flat_search(f, v + 4, 0, 1, NULL, d, r), QV_EINVAL);
    CU_ASSERT_EQUAL(qv_flat_search(f, NULL, 1, 1, NULL, d, r), QV_EINVAL);
    CU_ASSERT_EQUAL(qv_flat_search(f, v + 4, 1, 4, NULL, d, r), 0);
    CU_ASSERT_EQUAL(r[0], 11);
    CU_ASSERT_EQUAL(r[1], 10);
    CU_ASSERT_EQUAL(r[2], QV_ID_NONE);
    qv_flat_free(f);
    qv_flat_free(NULL);
}

/* Every allocation of create, add and search fails in turn: each failure
 * is reported as QV_ENOMEM, nothing leaks, and the index still works. */
static void test_alloc_failures(void)
{
    struct qv_mem_stats s0, s1;
    const size_t dim = 8, n = 100;
    float base[100 * 8], dist[3 * 5];
    uint64_t got[3 * 5];
    for (size_t i = 0; i < n * dim; i++)
        base[i] = frand();
    qv_mem_stats(QV_MEM__COUNT, &s0);
    int created = 0;
    for (long step = 0; step < 50 && !created; step++) {
        qv_alloc_fail_after(step);
        struct qv_flat *f = make(dim, QV_METRIC_COSINE, 32, pool2);
        qv_alloc_fail_after(-1);
        if (!f) {
            CU_ASSERT_EQUAL(qv_errno, QV_ENOMEM);
            continue;
        }
        created = 1;
        int added = 0;
        for (long s2 = 0; s2 < 50 && !added; s2++) {
            qv_alloc_fail_after(s2);
            int rc = qv_flat_add(f, n, base, NULL);
            qv_alloc_fail_after(-1);
            if (rc == 0) {
                added = 1;
                break;
            }
            CU_ASSERT_EQUAL(rc, QV_ENOMEM);
        }
        CU_ASSERT_TRUE(added);
        CU_ASSERT_EQUAL(qv_flat_size(f), n);
        int searched = 0;
        for (long s3 = 0; s3 < 50 && !searched; s3++) {
            qv_alloc_fail_after(s3);
            int rc = qv_flat_search(f, base, 3, 5, NULL, dist, got);
            qv_alloc_fail_after(-1);
            if (rc == 0)
                searched = 1;
            else
                CU_ASSERT_EQUAL(rc, QV_ENOMEM);
        }
        CU_ASSERT_TRUE(searched);
        CU_ASSERT_EQUAL(got[0], 0);
        CU_ASSERT_EQUAL(got[5], 1);
        qv_flat_free(f);
    }
    CU_ASSERT_TRUE(created);
    qv_mem_stats(QV_MEM__COUNT, &s1);
    CU_ASSERT_EQUAL(s1.live_blocks, s0.live_blocks);
    CU_ASSERT_EQUAL(s1.live_bytes, s0.live_bytes);
}

/* save -> load -> search gives identical answers; the loaded index takes
 * adds and removes; damaged files are refused naming the file. */
static void test_save_load(void)
{
    const size_t n = 1000, dim = 20, nq = 9;
    const uint32_t k = 15;
    char dir[] = "/tmp/qv-flat-XXXXXX", path[64];
    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/flat.qvx", dir);
    float *base = malloc(n * dim * sizeof(float)), q[9 * 20];
    uint64_t ids[1000], rm[3] = { 7, 500, 999 };
    for (size_t i = 0; i < n * dim; i++)
        base[i] = frand();
    for (size_t i = 0; i < nq * dim; i++)
        q[i] = frand();
    for (size_t i = 0; i < n; i++)
        ids[i] = 1000000 + i;
    float d1[9 * 15], d2[9 * 15];
    uint64_t r1[9 * 15], r2[9 * 15];
    for (int m = 0; m < QV_METRIC__COUNT; m++) {
        struct qv_flat *f = make(dim, (enum qv_metric)m, 256, pool2);
        CU_ASSERT_PTR_NOT_NULL_FATAL(f);
        CU_ASSERT_EQUAL(qv_flat_add(f, 900, base, ids), 0);      /* last segment partial */
        rm[0] = ids[7];
        rm[1] = ids[500];
        rm[2] = ids[899];
        CU_ASSERT_EQUAL(qv_flat_remove(f, 3, rm), 3);
        CU_ASSERT_EQUAL(qv_flat_save(f, path), 0);
        struct qv_flat *g = qv_flat_load(path, pool2);
        CU_ASSERT_PTR_NOT_NULL_FATAL(g);
        CU_ASSERT_EQUAL(qv_flat_size(g), qv_flat_size(f));
        CU_ASSERT_EQUAL(qv_flat_rows(g), qv_flat_rows(f));
        CU_ASSERT_EQUAL(qv_flat_search(f, q, nq, k, NULL, d1, r1), 0);
        CU_ASSERT_EQUAL(qv_flat_search(g, q, nq, k, NULL, d2, r2), 0);
        CU_ASSERT_EQUAL(memcmp(r1, r2, sizeof r1), 0);
        CU_ASSERT_EQUAL(memcmp(d1, d2, sizeof d1), 0);
        /* both take the same adds and removes and still agree */
        CU_ASSERT_EQUAL(qv_flat_add(f, 100, base + 900 * dim, ids + 900), 0);
        CU_ASSERT_EQUAL(qv_flat_add(g, 100, base + 900 * dim, ids + 900), 0);
        CU_ASSERT_EQUAL(qv_flat_add(g, 1, base, ids + 900), QV_EEXIST);  /* changes nothing */
        rm[0] = ids[950];
        CU_ASSERT_EQUAL(qv_flat_remove(f, 1, rm), 1);
        CU_ASSERT_EQUAL(qv_flat_remove(g, 1, rm), 1);
        CU_ASSERT_EQUAL(qv_flat_row_of(g, ids[950]), -1);
        CU_ASSERT_EQUAL(qv_flat_search(f, q, nq, k, NULL, d1, r1), 0);
        CU_ASSERT_EQUAL(qv_flat_search(g, q, nq, k, NULL, d2, r2), 0);
        CU_ASSERT_EQUAL(memcmp(r1, r2, sizeof r1), 0);
        qv_flat_free(g);
        qv_flat_free(f);
    }
    /* damage: a flipped byte deep in the vectors, a truncation */
    FILE *fp = fopen(path, "r+b");
    CU_ASSERT_PTR_NOT_NULL_FATAL(fp);
    fseek(fp, 3 * 4096 + 100, SEEK_SET);
    int c = fgetc(fp);
    fseek(fp, 3 * 4096 + 100, SEEK_SET);
    fputc(c ^ 0x10, fp);
    fclose(fp);
    CU_ASSERT_PTR_NULL(qv_flat_load(path, NULL));
    CU_ASSERT_EQUAL(qv_errno, QV_ECORRUPT);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), path));
    CU_ASSERT_EQUAL(truncate(path, 5000), 0);
    CU_ASSERT_PTR_NULL(qv_flat_load(path, NULL));
    CU_ASSERT_EQUAL(qv_errno, QV_ECORRUPT);
    CU_ASSERT_PTR_NULL(qv_flat_load("/nonexistent/flat.qvx", NULL));
    CU_ASSERT_EQUAL(qv_errno, QV_ENOENT);
    unlink(path);
    rmdir(dir);
    free(base);
}

/* The flat search as an engine work unit (CPU engine) answers exactly
 * like the direct path, with tombstones and a filter, for every metric. */
static void test_engine_path(void)
{
    const size_t n = 700, dim = 17, nq = 13;
    const uint32_t k = 20;
    float *base = malloc(n * dim * sizeof(float)), q[13 * 17];
    float d1[13 * 20], d2[13 * 20];
    uint64_t r1[13 * 20], r2[13 * 20], filter[11] = { 0 }, rm[2] = { 3, 400 };
    for (size_t i = 0; i < n * dim; i++)
        base[i] = frand();
    for (size_t i = 0; i < nq * dim; i++)
        q[i] = frand();
    for (size_t i = 0; i < n; i++)
        if (i % 3)
            filter[i / 64] |= 1ULL << (i % 64);
    struct qv_engine *e = qv_engine_cpu_create(pool2);
    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    for (int m = 0; m < QV_METRIC__COUNT; m++) {
        struct qv_flat *f = make(dim, (enum qv_metric)m, 128, pool2);
        CU_ASSERT_PTR_NOT_NULL_FATAL(f);
        CU_ASSERT_EQUAL(qv_flat_add(f, n, base, NULL), 0);
        for (int pass = 0; pass < 3; pass++) {
            const uint64_t *flt = pass == 2 ? filter : NULL;
            if (pass == 1)
                CU_ASSERT_EQUAL(qv_flat_remove(f, 2, rm), 2);
            CU_ASSERT_EQUAL(qv_flat_search(f, q, nq, k, flt, d1, r1), 0);
            CU_ASSERT_EQUAL(qv_flat_search_engine(f, e, q, nq, k, flt, d2, r2), 0);
            int ok = 1;
            for (size_t i = 0; i < nq * k; i++)
                if (fabsf(d1[i] - d2[i]) > 1e-4f || (r1[i] != r2[i] && d1[i] != d2[i]))
                    ok = 0;
            CU_ASSERT_TRUE(ok);
        }
        CU_ASSERT_EQUAL(qv_flat_search_engine(f, e, q, nq, 0, NULL, d2, r2), QV_EINVAL);
        CU_ASSERT_EQUAL(qv_flat_search_engine(f, NULL, q, nq, k, NULL, d2, r2), QV_EINVAL);
        qv_flat_free(f);
    }
    qv_engine_free(e);
    free(base);
}

/* recall@10 on a real data set, with the data set's own ground truth. */
static void recall_on(const char *set, const char *gt_name, enum qv_metric m)
{
    const char *dir = getenv("QV_DATA_DIR");
    char path[4096];
    struct qv_vecfile b = { 0 }, qf = { 0 }, g = { 0 };
    if (!dir) {
        CU_FAIL("QV_DATA_DIR is not set (meson test sets it)");
        return;
    }
    snprintf(path, sizeof path, "%s/%s/base.fvecs", dir, set);
    CU_ASSERT_EQUAL_FATAL(qv_vecfile_open(&b, path, QV_VEC_FVECS), 0);
    snprintf(path, sizeof path, "%s/%s/query.fvecs", dir, set);
    CU_ASSERT_EQUAL_FATAL(qv_vecfile_open(&qf, path, QV_VEC_FVECS), 0);
    snprintf(path, sizeof path, "%s/%s/%s", dir, set, gt_name);
    CU_ASSERT_EQUAL_FATAL(qv_vecfile_open(&g, path, QV_VEC_IVECS), 0);
    const uint32_t k = 10;
    size_t dim = b.dim, n = b.n, nq = qf.n;
    float *base = malloc(n * dim * sizeof(float));
    float *q = malloc(nq * dim * sizeof(float));
    CU_ASSERT_EQUAL(qv_vecfile_read_f32(&b, 0, n, base), 0);
    CU_ASSERT_EQUAL(qv_vecfile_read_f32(&qf, 0, nq, q), 0);
    struct qv_flat *f = make(dim, m, 0, pool2);
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    CU_ASSERT_EQUAL(qv_flat_add(f, n, base, NULL), 0);
    float *dist = malloc(nq * k * sizeof(float));
    uint64_t *ids = malloc(nq * k * sizeof(uint64_t));
    CU_ASSERT_EQUAL(qv_flat_search(f, q, nq, k, NULL, dist, ids), 0);
    size_t hits = 0, tie_hits = 0;
    for (size_t i = 0; i < nq; i++) {
        const int32_t *gt = qv_vecfile_row(&g, i);
        double kth = exact(q + i * dim, base + (size_t)gt[k - 1] * dim, dim, m);
        for (uint32_t j = 0; j < k; j++) {
            int in = 0;
            for (uint32_t t = 0; t < k; t++)
                if ((uint64_t)gt[t] == ids[i * k + j])
                    in = 1;
            hits += in;
            /* a neighbour at exactly the k-th distance is as right as the
             * one the ground truth happened to list */
            if (in || exact(q + i * dim, base + ids[i * k + j] * dim, dim, m) <=
                          kth * (1 + 1e-6) + 1e-6)
                tie_hits++;
        }
    }
    double recall = (double)hits / (double)(nq * k);
    double tie_recall = (double)tie_hits / (double)(nq * k);
    fprintf(stderr, " [%s %s: recall@10 %.4f, tie-aware %.4f] ", set, qv_metric_name(m),
            recall, tie_recall);
    CU_ASSERT_EQUAL(recall, 1.0);
    CU_ASSERT_EQUAL(tie_recall, 1.0);
    free(ids);
    free(dist);
    qv_flat_free(f);
    free(q);
    free(base);
    qv_vecfile_close(&g);
    qv_vecfile_close(&qf);
    qv_vecfile_close(&b);
}

/* The CPU engine's QV_WU_F16 scanner: a list of float16 values in the
 * blocked layout, several widened chunks long, against the exact
 * distances of the same (rounded) values; every dim of the SIMD test
 * list, l2 and ip, with and without a filter. */
static void test_engine_f16(void)
{
    static const uint32_t dims[] = { 1, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 64, 127, 128,
                                     129, 784 };
    const uint32_t n = 1300, nq = 7, k = 10;
    struct qv_engine *e = qv_engine_cpu_create(pool2);
    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    struct qv_engine_caps caps;
    e->ops->caps(e, &caps);
    CU_ASSERT(caps.kinds & (1u << QV_WU_F16));
    for (size_t di = 0; di < sizeof dims / sizeof dims[0]; di++)
        for (int m = 0; m < 2; m++) {
            const uint32_t dim = dims[di];
            const int filtered = (int)(di + m) % 2;
            size_t groups = (n + QV_BLOCK - 1) / QV_BLOCK;
            float *x = malloc((size_t)n * dim * sizeof(float));
            float *blk = calloc(groups * QV_BLOCK * dim, sizeof(float));
            uint16_t *h = calloc(groups * QV_BLOCK * dim, sizeof(uint16_t));
            float *norms = malloc(n * sizeof(float)), q[7 * 784], qn[7];
            uint64_t *ids = malloc(n * sizeof(uint64_t)), filter[21] = { 0 };
            uint32_t *rows = malloc(n * sizeof(uint32_t));
            for (size_t i = 0; i < (size_t)n * dim; i++)
                x[i] = qv_f16_to_f32(qv_f32_to_f16(frand() * 4.0f - 2.0f));
            qv_block_pack(blk, 0, x, n, dim);
            for (size_t i = 0; i < groups * QV_BLOCK * dim; i++)
                h[i] = qv_f32_to_f16(blk[i]);
            for (uint32_t i = 0; i < n; i++) {
                double s2 = 0;
                for (uint32_t d = 0; d < dim; d++)
                    s2 += (double)x[(size_t)i * dim + d] * x[(size_t)i * dim + d];
                norms[i] = (float)s2;
                ids[i] = 5000 + (uint64_t)i * 13;
                rows[i] = i;
                if (i % 3 != 1)
                    filter[i / 64] |= 1ull << (i % 64);
            }
            for (uint32_t i = 0; i < nq * dim; i++)
                q[i] = frand() * 4.0f - 2.0f;
            for (uint32_t i = 0; i < nq; i++) {
                double s2 = 0;
                for (uint32_t d = 0; d < dim; d++)
                    s2 += (double)q[i * dim + d] * q[i * dim + d];
                qn[i] = (float)s2;
            }
            struct qv_wu_list L = { h, norms, ids, rows, n, 0 };
            uint32_t poff[8], plist[7] = { 0 };
            for (uint32_t i = 0; i <= nq; i++)
                poff[i] = i;
            struct qv_topk heaps[7];
            float hd[7 * 10];
            uint64_t hid[7 * 10];
            for (uint32_t i = 0; i < nq; i++)
                qv_topk_init(&heaps[i], k, hd + i * k, hid + i * k);
            struct qv_work_unit wu = {
                .kind = QV_WU_F16, .metric = (enum qv_metric)m, .dim = dim, .nq = nq,
                .queries = q, .qnorms = qn, .nlists = 1, .lists = &L,
                .probe_offsets = poff, .probe_lists = plist,
                .filter = filtered ? filter : NULL, .heaps = heaps,
            };
            CU_ASSERT_EQUAL(qv_engine_run(e, &wu), 0);
            int ok = 1;
            struct pr *all = malloc(n * sizeof *all);
            for (uint32_t i = 0; i < nq; i++) {
                size_t ne = 0;
                for (uint32_t r = 0; r < n; r++)
                    if (!filtered || (filter[r / 64] >> (r % 64) & 1))
                        all[ne++] = (struct pr){ exact(q + i * dim, x + (size_t)r * dim, dim,
                                                       (enum qv_metric)m), ids[r] };
                qsort(all, ne, sizeof *all, cmp_pr);
                size_t got = qv_topk_sort(&heaps[i]);
                const float *dd = heaps[i].dist;
                const uint64_t *ii = heaps[i].ids;
                if (got != k)
                    ok = 0;
                double tol = 1e-4 * (1.0 + fabs(all[0].d)) + 1e-4 * dim;
                for (size_t j = 0; j < got && j < ne; j++) {
                    /* the rank's distance, and the reported id really at
                     * that distance (ids may differ only in near-ties) */
                    uint64_t row = (ii[j] - 5000) / 13;
                    if (ii[j] < 5000 || row >= n || (ii[j] - 5000) % 13 ||
                        fabs(dd[j] - all[j].d) > tol ||
                        fabs(exact(q + i * dim, x + row * dim, dim, (enum qv_metric)m) -
                             dd[j]) > tol ||
                        (filtered && !(filter[row / 64] >> (row % 64) & 1)))
                        ok = 0;
                }
            }
            if (!ok)
                fprintf(stderr, "\n  f16 unit: dim %u metric %d filter %d differs", dim, m,
                        filtered);
            CU_ASSERT_TRUE(ok);
            free(all);
            free(x);
            free(blk);
            free(h);
            free(norms);
            free(ids);
            free(rows);
        }
    qv_engine_free(e);
}

static void test_recall_siftsmall(void) { recall_on("siftsmall", "groundtruth.ivecs", QV_METRIC_L2); }
static void test_recall_bigann10k(void) { recall_on("bigann10k", "groundtruth.ivecs", QV_METRIC_L2); }
static void test_recall_mnist(void) { recall_on("mnist", "groundtruth.ivecs", QV_METRIC_L2); }
static void test_recall_glove(void) { recall_on("glove-twitter-25", "groundtruth.ivecs", QV_METRIC_L2); }
static void test_recall_glove_ip(void) { recall_on("glove-twitter-25", "groundtruth_ip.ivecs", QV_METRIC_IP); }

int main(void)
{
    pool2 = qv_pool_create(2, true);
    if (!pool2)
        return 2;
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    CU_pSuite s = CU_add_suite("flat", NULL, NULL);
    CU_add_test(s, "exact for l2/ip/cosine, k 1/10/100, 1 and 2 threads", test_exact_all_metrics);
    CU_add_test(s, "tombstones, filters, segment boundaries, re-add", test_remove_filter_segments);
    CU_add_test(s, "bad input is refused with a message", test_bad_input);
    CU_add_test(s, "injected allocation failures: ENOMEM, no leak", test_alloc_failures);
    CU_add_test(s, "save, load in place, add/remove after load, damage", test_save_load);
    CU_add_test(s, "search as an engine work unit equals the direct path", test_engine_path);
    CU_add_test(s, "cpu engine: float16 units (QV_WU_F16) == exact", test_engine_f16);
    CU_add_test(s, "recall@10 siftsmall", test_recall_siftsmall);
    CU_add_test(s, "recall@10 bigann10k", test_recall_bigann10k);
    CU_add_test(s, "recall@10 mnist", test_recall_mnist);
    CU_add_test(s, "recall@10 glove-twitter-25 (l2)", test_recall_glove);
    CU_add_test(s, "recall@10 glove-twitter-25 (ip)", test_recall_glove_ip);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failed = CU_get_number_of_failures();
    int err = CU_get_error();
    CU_cleanup_registry();
    qv_pool_free(pool2);
    return failed || err ? 1 : 0;
}
