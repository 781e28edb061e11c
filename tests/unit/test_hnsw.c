/*
 * test_hnsw.c - the HNSW index: recall floors on real data (built with one
 * and two threads), every metric against brute force, filtered search
 * against the flat index with the same filter at several selectivities
 * (exact where it falls back to a flat scan), tombstones, save -> load ->
 * identical results, corrupted and truncated files, bad parameters and
 * injected allocation failures.
 */
#include <CUnit/Basic.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "quiver/alloc.h"
#include "quiver/errors.h"
#include "quiver/flat.h"
#include "quiver/hnsw.h"
#include "quiver/pool.h"
#include "quiver/topk.h"
#include "quiver/vecio.h"

static struct qv_pool *pool2;

static uint64_t rng = 0x9e3779b97f4a7c15ULL;
static uint64_t next_u64(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}
static float frand(void) { return (float)(next_u64() >> 40) / (float)(1u << 24); }

/* A real data set, read whole. */
struct dataset {
    size_t n, nq, dim;
    float *base, *q;
    struct qv_vecfile gt;
};

static int load_set(const char *set, struct dataset *d)
{
    const char *dir = getenv("QV_DATA_DIR");
    char path[4096];
    struct qv_vecfile b = { 0 }, qf = { 0 };
    memset(d, 0, sizeof *d);
    if (!dir) {
        CU_FAIL("QV_DATA_DIR is not set (meson test sets it)");
        return -1;
    }
    snprintf(path, sizeof path, "%s/%s/base.fvecs", dir, set);
    if (qv_vecfile_open(&b, path, QV_VEC_FVECS))
        return -1;
    snprintf(path, sizeof path, "%s/%s/query.fvecs", dir, set);
    if (qv_vecfile_open(&qf, path, QV_VEC_FVECS))
        return -1;
    snprintf(path, sizeof path, "%s/%s/groundtruth.ivecs", dir, set);
    if (qv_vecfile_open(&d->gt, path, QV_VEC_IVECS))
        return -1;
    d->n = b.n;
    d->nq = qf.n;
    d->dim = b.dim;
    d->base = malloc(d->n * d->dim * sizeof(float));
    d->q = malloc(d->nq * d->dim * sizeof(float));
    qv_vecfile_read_f32(&b, 0, d->n, d->base);
    qv_vecfile_read_f32(&qf, 0, d->nq, d->q);
    qv_vecfile_close(&b);
    qv_vecfile_close(&qf);
    return 0;
}

static void free_set(struct dataset *d)
{
    free(d->base);
    free(d->q);
    qv_vecfile_close(&d->gt);
}

static struct qv_hnsw *build(const float *base, size_t n, size_t dim, enum qv_metric m,
                             struct qv_pool *p, const uint64_t *ids)
{
    struct qv_hnsw_opts o = { .dim = (uint32_t)dim, .metric = m, .M = 16,
                              .ef_construction = 200, .ef_search = 64, .seed = 7,
                              .pool = p, .numa_node = -1, .hugepages = QV_HUGE_AUTO };
    return qv_hnsw_build(&o, n, base, ids);
}

static struct qv_flat *flat_of(const float *base, size_t n, size_t dim, enum qv_metric m,
                               const uint64_t *ids)
{
    struct qv_flat_opts o = { .dim = (uint32_t)dim, .metric = m, .pool = pool2,
                              .numa_node = -1, .hugepages = QV_HUGE_AUTO };
    struct qv_flat *f = qv_flat_create(&o);
    if (f && qv_flat_add(f, n, base, ids)) {
        qv_flat_free(f);
        return NULL;
    }
    return f;
}

/* |a ∩ b| over k ids, QV_ID_NONE in a never matches. */
static size_t overlap(const uint64_t *a, const uint64_t *b, uint32_t k)
{
    size_t hits = 0;
    for (uint32_t i = 0; i < k; i++)
        for (uint32_t j = 0; j < k; j++)
            if (a[i] != QV_ID_NONE && a[i] == b[j]) {
                hits++;
                break;
            }
    return hits;
}

/* recall@10 at ef = 64 against the data set's ground truth. */
static void recall_floor(const char *set, struct qv_pool *p, double floor_)
{
    struct dataset d;
    if (load_set(set, &d)) {
        CU_FAIL("cannot read the data set");
        return;
    }
    struct qv_hnsw *h = build(d.base, d.n, d.dim, QV_METRIC_L2, p, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(h);
    const uint32_t k = 10;
    float *dist = malloc(d.nq * k * sizeof(float));
    uint64_t *ids = malloc(d.nq * k * sizeof(uint64_t));
    CU_ASSERT_EQUAL(qv_hnsw_search(h, d.q, d.nq, k, 64, NULL, dist, ids), 0);
    size_t hits = 0;
    for (size_t i = 0; i < d.nq; i++) {
        const int32_t *gt = qv_vecfile_row(&d.gt, i);
        uint64_t want[10];
        for (uint32_t j = 0; j < k; j++)
            want[j] = (uint64_t)gt[j];
        hits += overlap(ids + i * k, want, k);
        for (uint32_t j = 1; j < k; j++)
            CU_ASSERT_TRUE(dist[i * k + j - 1] <= dist[i * k + j]);
    }
    double recall = (double)hits / (double)(d.nq * k);
    fprintf(stderr, " [%s, %u thread(s): recall@10 %.4f] ", set, qv_pool_threads(p), recall);
    CU_ASSERT_TRUE(recall >= floor_);
    /* one query per call gives the same answers as the batch */
    float d1[10];
    uint64_t i1[10];
    for (size_t i = 0; i < d.nq; i += 37) {
        CU_ASSERT_EQUAL(qv_hnsw_search(h, d.q + i * d.dim, 1, k, 64, NULL, d1, i1), 0);
        CU_ASSERT_EQUAL(memcmp(i1, ids + i * k, sizeof i1), 0);
    }
    free(ids);
    free(dist);
    qv_hnsw_free(h);
    free_set(&d);
}

static void test_recall_siftsmall_1t(void) { recall_floor("siftsmall", NULL, 0.99); }
static void test_recall_siftsmall_2t(void) { recall_floor("siftsmall", pool2, 0.99); }
static void test_recall_glove_1t(void) { recall_floor("glove-twitter-25", NULL, 0.99); }
static void test_recall_glove_2t(void) { recall_floor("glove-twitter-25", pool2, 0.99); }

/* L2, IP and cosine on random data against brute force; returned
 * distances are the true distances of the returned ids; same seed and one
 * thread build the same graph. */
static void test_metrics(void)
{
    const size_t n = 3000, dim = 37, nq = 30;
    const uint32_t k = 10;
    float *base = malloc(n * dim * sizeof(float)), *q = malloc(nq * dim * sizeof(float));
    uint64_t *uids = malloc(n * sizeof(uint64_t));
    for (size_t i = 0; i < n * dim; i++)
        base[i] = frand() - 0.5f;
    for (size_t i = 0; i < nq * dim; i++)
        q[i] = frand() - 0.5f;
    for (size_t i = 0; i < n; i++)
        uids[i] = 1000000007ULL * (i + 1);
    for (int m = 0; m < QV_METRIC__COUNT; m++) {
        struct qv_hnsw *h = build(base, n, dim, (enum qv_metric)m, NULL, uids);
        struct qv_hnsw *h2 = build(base, n, dim, (enum qv_metric)m, NULL, uids);
        struct qv_flat *f = flat_of(base, n, dim, (enum qv_metric)m, uids);
        CU_ASSERT_PTR_NOT_NULL_FATAL(h);
        CU_ASSERT_PTR_NOT_NULL_FATAL(h2);
        CU_ASSERT_PTR_NOT_NULL_FATAL(f);
        CU_ASSERT_EQUAL(qv_hnsw_size(h), n);
        CU_ASSERT_EQUAL(qv_hnsw_metric(h), (enum qv_metric)m);
        float hd[30 * 10], fd[30 * 10], hd2[30 * 10];
        uint64_t hi[30 * 10], fi[30 * 10], hi2[30 * 10];
        CU_ASSERT_EQUAL(qv_hnsw_search(h, q, nq, k, 200, NULL, hd, hi), 0);
        CU_ASSERT_EQUAL(qv_hnsw_search(h2, q, nq, k, 200, NULL, hd2, hi2), 0);
        CU_ASSERT_EQUAL(memcmp(hi, hi2, sizeof hi), 0);
        CU_ASSERT_EQUAL(qv_flat_search(f, q, nq, k, NULL, fd, fi), 0);
        size_t hits = 0;
        for (size_t i = 0; i < nq; i++) {
            hits += overlap(hi + i * k, fi + i * k, k);
            /* a returned id's distance is its flat distance */
            for (uint32_t j = 0; j < k; j++)
                for (uint32_t t = 0; t < k; t++)
                    if (hi[i * k + j] == fi[i * k + t])
                        CU_ASSERT_DOUBLE_EQUAL(hd[i * k + j], fd[i * k + t], 1e-4);
        }
        double recall = (double)hits / (double)(nq * k);
        fprintf(stderr, " [%s recall@10 %.3f] ", qv_metric_name((enum qv_metric)m), recall);
        CU_ASSERT_TRUE(recall >= 0.95);
        /* a base vector finds itself first */
        CU_ASSERT_EQUAL(qv_hnsw_search(h, base + 123 * dim, 1, k, 64, NULL, hd, hi), 0);
        CU_ASSERT_EQUAL(hi[0], uids[123]);
        CU_ASSERT_EQUAL(qv_hnsw_row_of(h, uids[123]), 123);
        CU_ASSERT_EQUAL(qv_hnsw_row_of(h, 5), -1);
        qv_flat_free(f);
        qv_hnsw_free(h2);
        qv_hnsw_free(h);
    }
    free(uids);
    free(q);
    free(base);
}

/* Filtered search vs flat search with the same random filter. */
static void test_filters(void)
{
    struct dataset d;
    if (load_set("siftsmall", &d)) {
        CU_FAIL("cannot read siftsmall");
        return;
    }
    struct qv_hnsw *h = build(d.base, d.n, d.dim, QV_METRIC_L2, pool2, NULL);
    struct qv_flat *f = flat_of(d.base, d.n, d.dim, QV_METRIC_L2, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(h);
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    const uint32_t k = 10;
    const size_t words = (d.n + 63) / 64;
    uint64_t *filter = calloc(words, sizeof(uint64_t));
    float *hd = malloc(d.nq * k * sizeof(float)), *fd = malloc(d.nq * k * sizeof(float));
    uint64_t *hi = malloc(d.nq * k * sizeof(uint64_t)), *fi = malloc(d.nq * k * sizeof(uint64_t));
    const double sel[] = { 0.5, 0.1, 0.01, 0.001 };
    for (int s = 0; s < 4; s++) {
        memset(filter, 0, words * sizeof(uint64_t));
        size_t pass = 0;
        for (size_t r = 0; r < d.n; r++)
            if ((double)(next_u64() >> 11) / 9007199254740992.0 < sel[s]) {
                filter[r / 64] |= 1ULL << (r % 64);
                pass++;
            }
        CU_ASSERT_EQUAL(qv_hnsw_search(h, d.q, d.nq, k, 64, filter, hd, hi), 0);
        CU_ASSERT_EQUAL(qv_flat_search(f, d.q, d.nq, k, filter, fd, fi), 0);
        size_t hits = 0, want = 0, bad = 0;
        for (size_t i = 0; i < d.nq * k; i++) {
            if (hi[i] != QV_ID_NONE && !(filter[hi[i] / 64] >> (hi[i] % 64) & 1))
                bad++;
            want += fi[i] != QV_ID_NONE;
        }
        for (size_t i = 0; i < d.nq; i++)
            hits += overlap(hi + i * k, fi + i * k, k);
        double recall = want ? (double)hits / (double)want : 1.0;
        fprintf(stderr, " [selectivity %.3f (%zu rows): recall vs flat %.4f] ", sel[s], pass,
                recall);
        CU_ASSERT_EQUAL(bad, 0);
        if (sel[s] < QV_HNSW_DEFAULT_FLAT_BELOW) {
            /* the flat fallback: exact */
            CU_ASSERT_EQUAL(hits, want);
            for (size_t i = 0; i < d.nq * k; i++)
                if (fi[i] != QV_ID_NONE)
                    CU_ASSERT_DOUBLE_EQUAL(hd[i], fd[i], 1e-2 * fabs(fd[i]) + 1e-3);
            for (size_t i = 0; i < d.nq * k; i++)
                CU_ASSERT_EQUAL(hi[i] == QV_ID_NONE, fi[i] == QV_ID_NONE);
        } else {
            CU_ASSERT_TRUE(recall >= 0.95);
        }
    }
    /* an empty filter returns nothing */
    memset(filter, 0, words * sizeof(uint64_t));
    CU_ASSERT_EQUAL(qv_hnsw_search(h, d.q, 1, k, 64, filter, hd, hi), 0);
    CU_ASSERT_EQUAL(hi[0], QV_ID_NONE);
    CU_ASSERT_TRUE(isinf(hd[0]));
    free(fi);
    free(hi);
    free(fd);
    free(hd);
    free(filter);
    qv_flat_free(f);
    qv_hnsw_free(h);
    free_set(&d);
}

/* Removed ids are never returned, still traversed; the rest is found. */
static void test_remove(void)
{
    struct dataset d;
    if (load_set("siftsmall", &d)) {
        CU_FAIL("cannot read siftsmall");
        return;
    }
    struct qv_hnsw *h = build(d.base, d.n, d.dim, QV_METRIC_L2, NULL, NULL);
    struct qv_flat *f = flat_of(d.base, d.n, d.dim, QV_METRIC_L2, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(h);
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    const uint32_t k = 10;
    /* remove every query's true nearest neighbour plus 20% at random */
    uint64_t *rm = malloc(d.n * sizeof(uint64_t));
    char *gone = calloc(d.n, 1);
    size_t nrm = 0;
    for (size_t i = 0; i < d.nq; i++) {
        const int32_t *gt = qv_vecfile_row(&d.gt, i);
        if (!gone[gt[0]]) {
            gone[gt[0]] = 1;
            rm[nrm++] = (uint64_t)gt[0];
        }
    }
    for (size_t r = 0; r < d.n; r++)
        if (!gone[r] && next_u64() % 5 == 0) {
            gone[r] = 1;
            rm[nrm++] = r;
        }
    CU_ASSERT_EQUAL(qv_hnsw_remove(h, nrm, rm), (long)nrm);
    CU_ASSERT_EQUAL(qv_hnsw_remove(h, nrm, rm), 0);          /* already removed */
    uint64_t unknown = 999999999;
    CU_ASSERT_EQUAL(qv_hnsw_remove(h, 1, &unknown), 0);
    CU_ASSERT_EQUAL(qv_flat_remove(f, nrm, rm), (long)nrm);
    CU_ASSERT_EQUAL(qv_hnsw_size(h), d.n - nrm);
    CU_ASSERT_EQUAL(qv_hnsw_rows(h), d.n);
    CU_ASSERT_EQUAL(qv_hnsw_row_of(h, rm[0]), -1);
    float *hd = malloc(d.nq * k * sizeof(float)), *fd = malloc(d.nq * k * sizeof(float));
    uint64_t *hi = malloc(d.nq * k * sizeof(uint64_t)), *fi = malloc(d.nq * k * sizeof(uint64_t));
    CU_ASSERT_EQUAL(qv_hnsw_search(h, d.q, d.nq, k, 64, NULL, hd, hi), 0);
    CU_ASSERT_EQUAL(qv_flat_search(f, d.q, d.nq, k, NULL, fd, fi), 0);
    size_t returned_dead = 0, hits = 0;
    for (size_t i = 0; i < d.nq * k; i++)
        returned_dead += hi[i] != QV_ID_NONE && gone[hi[i]];
    for (size_t i = 0; i < d.nq; i++)
        hits += overlap(hi + i * k, fi + i * k, k);
    double recall = (double)hits / (double)(d.nq * k);
    fprintf(stderr, " [%zu removed: recall vs flat %.4f] ", nrm, recall);
    CU_ASSERT_EQUAL(returned_dead, 0);
    CU_ASSERT_TRUE(recall >= 0.95);
    /* removed base vectors searched for themselves are not found */
    for (size_t j = 0; j < 20; j++) {
        CU_ASSERT_EQUAL(qv_hnsw_search(h, d.base + rm[j] * d.dim, 1, k, 32, NULL, hd, hi), 0);
        for (uint32_t t = 0; t < k; t++)
            CU_ASSERT_TRUE(hi[t] == QV_ID_NONE || !gone[hi[t]]);
    }
    free(fi);
    free(hi);
    free(fd);
    free(hd);
    free(gone);
    free(rm);
    qv_flat_free(f);
    qv_hnsw_free(h);
    free_set(&d);
}

static void tmp_path(char *buf, size_t len, const char *name)
{
    const char *dir = getenv("TMPDIR");
    snprintf(buf, len, "%s/qv_test_hnsw_%d_%s", dir ? dir : "/tmp", (int)getpid(), name);
}

static long file_size(const char *path)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return -1;
    fseek(fp, 0, SEEK_END);
    long s = ftell(fp);
    fclose(fp);
    return s;
}

static void copy_file(const char *src, const char *dst, long limit, long flip_at)
{
    FILE *in = fopen(src, "rb"), *out = fopen(dst, "wb");
    long i = 0;
    int c;
    while (in && out && (limit < 0 || i < limit) && (c = fgetc(in)) != EOF) {
        if (i == flip_at)
            c ^= 0x5a;
        fputc(c, out);
        i++;
    }
    if (in)
        fclose(in);
    if (out)
        fclose(out);
}

/* save -> load -> identical results; bad files rejected naming the file. */
static void test_save_load(void)
{
    const size_t n = 4000, dim = 24, nq = 25;
    const uint32_t k = 10;
    float *base = malloc(n * dim * sizeof(float)), *q = malloc(nq * dim * sizeof(float));
    for (size_t i = 0; i < n * dim; i++)
        base[i] = frand();
    for (size_t i = 0; i < nq * dim; i++)
        q[i] = frand();
    struct qv_hnsw *h = build(base, n, dim, QV_METRIC_COSINE, pool2, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(h);
    uint64_t rm[3] = { 5, 77, 3999 };
    CU_ASSERT_EQUAL(qv_hnsw_remove(h, 3, rm), 3);
    uint64_t filter[(4000 + 63) / 64];
    for (size_t w = 0; w < sizeof filter / 8; w++)
        filter[w] = next_u64();
    char path[4096], bad[4096];
    tmp_path(path, sizeof path, "ok.qvix");
    tmp_path(bad, sizeof bad, "bad.qvix");
    CU_ASSERT_EQUAL_FATAL(qv_hnsw_save(h, path), 0);
    struct qv_hnsw *l = qv_hnsw_load(path, pool2);
    CU_ASSERT_PTR_NOT_NULL_FATAL(l);
    struct qv_hnsw_stats st;
    qv_hnsw_stats(l, &st);
    CU_ASSERT_EQUAL(st.mapped, 1);
    CU_ASSERT_EQUAL(st.M, 16);
    CU_ASSERT_EQUAL(qv_hnsw_size(l), n - 3);
    CU_ASSERT_EQUAL(qv_hnsw_dim(l), dim);
    float d1[25 * 10], d2[25 * 10];
    uint64_t i1[25 * 10], i2[25 * 10];
    for (int withf = 0; withf < 2; withf++) {
        CU_ASSERT_EQUAL(qv_hnsw_search(h, q, nq, k, 50, withf ? filter : NULL, d1, i1), 0);
        CU_ASSERT_EQUAL(qv_hnsw_search(l, q, nq, k, 50, withf ? filter : NULL, d2, i2), 0);
        CU_ASSERT_EQUAL(memcmp(i1, i2, sizeof i1), 0);
        CU_ASSERT_EQUAL(memcmp(d1, d2, sizeof d1), 0);
    }
    /* removes on a loaded index work (tombstones are a private copy) */
    CU_ASSERT_EQUAL(qv_hnsw_remove(l, 1, &i2[0]), 1);
    CU_ASSERT_EQUAL(qv_hnsw_search(l, q, 1, k, 50, NULL, d2, i2), 0);
    CU_ASSERT_NOT_EQUAL(i2[0], i1[0]);
    qv_hnsw_free(l);

    long size = file_size(path);
    CU_ASSERT_TRUE_FATAL(size > 8192);
    /* one flipped byte in the header, in the section table, and in the
     * first, middle and last byte of every section (the table says where
     * they are: u64 offset at +8 and u64 size at +16 of each 32-byte
     * entry from byte 64; padding between sections is not data) */
    long flips[3 + 3 * 16];
    int nflips = 0;
    flips[nflips++] = 10;
    flips[nflips++] = 70;
    flips[nflips++] = 64 + 8;
    {
        FILE *fp = fopen(path, "rb");
        unsigned char hdr[64 + 32 * 16];
        CU_ASSERT_FATAL(fp && fread(hdr, 1, sizeof hdr, fp) == sizeof hdr);
        fclose(fp);
        uint32_t nsec;
        memcpy(&nsec, hdr + 24, 4);
        CU_ASSERT_EQUAL(nsec, 11);
        for (uint32_t i = 0; i < nsec && i < 16; i++) {
            uint64_t off, sz;
            memcpy(&off, hdr + 64 + 32 * i + 8, 8);
            memcpy(&sz, hdr + 64 + 32 * i + 16, 8);
            flips[nflips++] = (long)off;
            flips[nflips++] = (long)(off + sz / 2);
            flips[nflips++] = (long)(off + sz - 1);
        }
    }
    for (int i = 0; i < nflips; i++) {
        copy_file(path, bad, -1, flips[i]);
        CU_ASSERT_PTR_NULL(qv_hnsw_load(bad, NULL));
        CU_ASSERT_TRUE(qv_errno == QV_ECORRUPT || qv_errno == QV_EFORMAT);
        CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), bad));
    }
    /* truncated */
    const long cuts[] = { 0, 10, 100, size / 2, size - 1 };
    for (int i = 0; i < 5; i++) {
        copy_file(path, bad, cuts[i], -1);
        CU_ASSERT_PTR_NULL(qv_hnsw_load(bad, NULL));
        CU_ASSERT_TRUE(qv_errno == QV_ECORRUPT || qv_errno == QV_EFORMAT);
        CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), bad));
    }
    /* missing */
    unlink(bad);
    CU_ASSERT_PTR_NULL(qv_hnsw_load(bad, NULL));
    CU_ASSERT_EQUAL(qv_errno, QV_ENOENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), bad));
    /* a file of another index type */
    {
        FILE *fp = fopen(bad, "wb");
        fputs("not an index file at all, just text that is long enough", fp);
        fclose(fp);
        CU_ASSERT_PTR_NULL(qv_hnsw_load(bad, NULL));
        CU_ASSERT_TRUE(qv_errno == QV_EFORMAT || qv_errno == QV_ECORRUPT);
    }
    unlink(bad);
    unlink(path);
    qv_hnsw_free(h);
    free(q);
    free(base);
}

static void test_bad_input(void)
{
    float v[4 * 8];
    for (int i = 0; i < 32; i++)
        v[i] = (float)i;
    struct qv_hnsw_opts o = { .dim = 8, .metric = QV_METRIC_L2, .M = 1, .numa_node = -1 };
    CU_ASSERT_PTR_NULL(qv_hnsw_build(&o, 4, v, NULL));
    CU_ASSERT_EQUAL(qv_errno, QV_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "M = 1"));
    o.M = 1000;
    CU_ASSERT_PTR_NULL(qv_hnsw_build(&o, 4, v, NULL));
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "M = 1000"));
    o.M = 16;
    o.ef_construction = 8;
    CU_ASSERT_PTR_NULL(qv_hnsw_build(&o, 4, v, NULL));
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "ef_construction"));
    o.ef_construction = 0;
    o.dim = 0;
    CU_ASSERT_PTR_NULL(qv_hnsw_build(&o, 4, v, NULL));
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "dim"));
    o.dim = 8;
    o.metric = (enum qv_metric)9;
    CU_ASSERT_PTR_NULL(qv_hnsw_build(&o, 4, v, NULL));
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "metric"));
    o.metric = QV_METRIC_L2;
    CU_ASSERT_PTR_NULL(qv_hnsw_build(&o, 0, v, NULL));
    CU_ASSERT_EQUAL(qv_errno, QV_EINVAL);
    uint64_t dup[4] = { 1, 2, 1, 3 };
    CU_ASSERT_PTR_NULL(qv_hnsw_build(&o, 4, v, dup));
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "repeated"));
    uint64_t none[4] = { 1, 2, QV_ID_NONE, 3 };
    CU_ASSERT_PTR_NULL(qv_hnsw_build(&o, 4, v, none));
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "reserved"));
    v[9] = NAN;
    CU_ASSERT_PTR_NULL(qv_hnsw_build(&o, 4, v, NULL));
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "finite"));
    v[9] = 9.0f;

    struct qv_hnsw *h = qv_hnsw_build(&o, 4, v, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(h);
    float d[8];
    uint64_t r[8];
    CU_ASSERT_EQUAL(qv_hnsw_search(h, v, 1, 5, 4, NULL, d, r), QV_EINVAL);  /* ef < k */
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "ef = 4"));
    CU_ASSERT_EQUAL(qv_hnsw_search(h, v, 1, 0, 0, NULL, d, r), QV_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "k = 0"));
    CU_ASSERT_EQUAL(qv_hnsw_search(h, v, 0, 1, 0, NULL, d, r), QV_EINVAL);
    CU_ASSERT_EQUAL(qv_hnsw_search(h, NULL, 1, 1, 0, NULL, d, r), QV_EINVAL);
    CU_ASSERT_EQUAL(qv_hnsw_search(h, v, 1, 1, QV_HNSW_MAX_EF + 1, NULL, d, r), QV_EINVAL);
    /* k above n: the rest is (+inf, QV_ID_NONE) */
    CU_ASSERT_EQUAL(qv_hnsw_search(h, v + 8, 1, 6, 0, NULL, d, r), 0);
    CU_ASSERT_EQUAL(r[0], 1);
    CU_ASSERT_EQUAL(r[4], QV_ID_NONE);
    CU_ASSERT_TRUE(isinf(d[5]));
    qv_hnsw_free(h);
    qv_hnsw_free(NULL);
    CU_ASSERT_PTR_NULL(qv_hnsw_load(NULL, NULL));
}

/* Every allocation of build (both threads), search and load fails in turn:
 * each reports QV_ENOMEM, nothing leaks, and the next try works. */
static void test_alloc_failures(void)
{
    const size_t n = 300, dim = 16;
    float *base = malloc(n * dim * sizeof(float));
    for (size_t i = 0; i < n * dim; i++)
        base[i] = frand();
    char path[4096];
    tmp_path(path, sizeof path, "enomem.qvix");
    struct qv_mem_stats s0, s1;
    qv_mem_stats(QV_MEM__COUNT, &s0);
    struct qv_hnsw *h = NULL;
    long step;
    for (step = 0; step < 200 && !h; step++) {
        qv_alloc_fail_after(step);
        h = build(base, n, dim, QV_METRIC_COSINE, pool2, NULL);
        qv_alloc_fail_after(-1);
        if (!h)
            CU_ASSERT_EQUAL(qv_errno, QV_ENOMEM);
    }
    CU_ASSERT_PTR_NOT_NULL_FATAL(h);
    CU_ASSERT_TRUE(step > 3);           /* the failures were really injected */
    float d[4 * 5];
    uint64_t r[4 * 5];
    int ok = 0;
    for (step = 0; step < 50 && !ok; step++) {
        qv_alloc_fail_after(step);
        int rc = qv_hnsw_search(h, base, 4, 5, 20, NULL, d, r);
        qv_alloc_fail_after(-1);
        if (rc == 0)
            ok = 1;
        else
            CU_ASSERT_EQUAL(rc, QV_ENOMEM);
    }
    CU_ASSERT_TRUE(ok);
    CU_ASSERT_EQUAL(r[0], 0);
    CU_ASSERT_EQUAL(r[5], 1);
    CU_ASSERT_EQUAL(qv_hnsw_save(h, path), 0);
    qv_hnsw_free(h);
    struct qv_hnsw *l = NULL;
    for (step = 0; step < 50 && !l; step++) {
        qv_alloc_fail_after(step);
        l = qv_hnsw_load(path, NULL);
        qv_alloc_fail_after(-1);
        if (!l)
            CU_ASSERT_EQUAL(qv_errno, QV_ENOMEM);
    }
    CU_ASSERT_PTR_NOT_NULL(l);
    qv_hnsw_free(l);
    unlink(path);
    qv_mem_stats(QV_MEM__COUNT, &s1);
    CU_ASSERT_EQUAL(s1.live_blocks, s0.live_blocks);
    CU_ASSERT_EQUAL(s1.live_bytes, s0.live_bytes);
    free(base);
}

int main(void)
{
    pool2 = qv_pool_create(2, true);
    if (!pool2)
        return 2;
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    CU_pSuite s = CU_add_suite("hnsw", NULL, NULL);
    CU_add_test(s, "recall@10 >= 0.99 at ef 64: siftsmall, 1 thread", test_recall_siftsmall_1t);
    CU_add_test(s, "recall@10 >= 0.99 at ef 64: siftsmall, 2 threads", test_recall_siftsmall_2t);
    CU_add_test(s, "recall@10 >= 0.99 at ef 64: glove-25, 1 thread", test_recall_glove_1t);
    CU_add_test(s, "recall@10 >= 0.99 at ef 64: glove-25, 2 threads", test_recall_glove_2t);
    CU_add_test(s, "l2/ip/cosine vs flat; deterministic build", test_metrics);
    CU_add_test(s, "filters of selectivity 0.5..0.001 vs flat", test_filters);
    CU_add_test(s, "removed ids are never returned", test_remove);
    CU_add_test(s, "save -> load -> identical; bad files rejected", test_save_load);
    CU_add_test(s, "bad parameters are refused with a message", test_bad_input);
    CU_add_test(s, "injected allocation failures: ENOMEM, no leak", test_alloc_failures);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failed = CU_get_number_of_failures();
    int err = CU_get_error();
    CU_cleanup_registry();
    qv_pool_free(pool2);
    return failed || err ? 1 : 0;
}
