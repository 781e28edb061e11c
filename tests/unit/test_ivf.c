/*
 * test_ivf.c - IVF-Flat and IVF-SQ8 (ivf.h), the CPU engine and the SQ8
 * kernels: nprobe = nlist equals flat search (random data for l2 / ip /
 * cosine, siftsmall and glove-twitter-25), SQ8 recall floor, filtered
 * search equals filtered flat search, deleted ids never returned, save ->
 * load -> identical results, corrupted and truncated files rejected, a
 * work unit equals per-query units, every SQ8 level equals the reference,
 * bad parameters refused, injected allocation failures -> QV_ENOMEM
 * without a leak; qv_ivf_prefetch and qv_ivfpq_prefetch name exactly the
 * lists the next search of the same queries scans (a spy engine records
 * both).
 */
#include <CUnit/Basic.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "quiver/alloc.h"
#include "quiver/engine.h"
#include "quiver/errors.h"
#include "quiver/flat.h"
#include "quiver/ivf.h"
#include "quiver/ivfpq.h"
#include "quiver/pool.h"
#include "quiver/sq8.h"
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

static float *randvec(size_t n, size_t dim)
{
    float *x = malloc(n * dim * sizeof(float));
    for (size_t i = 0; i < n * dim; i++)
        x[i] = frand() - 0.3f;
    return x;
}

static struct qv_ivf *build(const float *x, size_t n, size_t dim, enum qv_metric m,
                            enum qv_ivf_encoding enc, uint32_t nlist, struct qv_pool *p,
                            const uint64_t *ids)
{
    struct qv_ivf_opts o = { .dim = (uint32_t)dim, .metric = m, .encoding = enc,
                             .nlist = nlist, .kmeans_iters = 10, .seed = 11, .pool = p };
    struct qv_ivf *ix = qv_ivf_create(&o);
    if (!ix)
        return NULL;
    if (qv_ivf_train(ix, x, n) || qv_ivf_add(ix, n / 2, x, ids) ||
        qv_ivf_add(ix, n - n / 2, x + n / 2 * dim, ids ? ids + n / 2 : NULL)) {
        qv_ivf_free(ix);
        return NULL;
    }
    return ix;
}

static struct qv_flat *build_flat(const float *x, size_t n, size_t dim, enum qv_metric m,
                                  const uint64_t *ids)
{
    struct qv_flat_opts o = { .dim = (uint32_t)dim, .metric = m, .numa_node = -1,
                              .pool = pool2 };
    struct qv_flat *f = qv_flat_create(&o);
    if (f && qv_flat_add(f, n, x, ids)) {
        qv_flat_free(f);
        return NULL;
    }
    return f;
}

/* Results equal up to rounding: same distances within tol at every rank,
 * and the same id unless two neighbours tie within tol. */
static size_t mismatches(const float *da, const uint64_t *ia, const float *db,
                         const uint64_t *ib, size_t nq, uint32_t k, double tol)
{
    size_t bad = 0;
    for (size_t i = 0; i < nq * k; i++) {
        if (isinf(da[i]) || isinf(db[i])) {
            bad += !(isinf(da[i]) && isinf(db[i]) && ia[i] == ib[i]);
            continue;
        }
        double t = tol * (1.0 + fabs(db[i]));
        if (fabs(da[i] - db[i]) > t) {
            bad++;
            continue;
        }
        if (ia[i] != ib[i]) {
            /* acceptable only when ia[i] is at the same distance in b */
            int tie = 0;
            size_t row = i / k;
            for (uint32_t j = 0; j < k; j++)
                if (ib[row * k + j] == ia[i] && fabs(db[row * k + j] - da[i]) <= t)
                    tie = 1;
            if (!tie && !(i % k + 1 == k && fabs(db[i] - da[i]) <= t))
                bad++;
        }
    }
    return bad;
}

static void compare_with_flat(const float *x, size_t n, const float *q, size_t nq,
                              size_t dim, enum qv_metric m, uint32_t nlist,
                              const uint64_t *filter, struct qv_pool *p, int single)
{
    const uint32_t k = 10;
    struct qv_ivf *ix = build(x, n, dim, m, QV_IVF_FLAT, nlist, p, NULL);
    struct qv_flat *f = build_flat(x, n, dim, m, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(ix);
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    float *d1 = malloc(nq * k * sizeof(float)), *d2 = malloc(nq * k * sizeof(float));
    uint64_t *i1 = malloc(nq * k * 8), *i2 = malloc(nq * k * 8);
    CU_ASSERT_EQUAL(qv_flat_search(f, q, nq, k, filter, d2, i2), 0);
    CU_ASSERT_EQUAL(qv_ivf_search(ix, q, nq, k, nlist, filter, d1, i1), 0);
    size_t bad = mismatches(d1, i1, d2, i2, nq, k, 1e-5);
    if (bad)
        fprintf(stderr, " [%zu of %zu mismatches, dim %zu metric %d] ", bad, nq * k, dim, m);
    CU_ASSERT_EQUAL(bad, 0);
    if (single) {
        for (size_t i = 0; i < nq; i++)
            CU_ASSERT_EQUAL(qv_ivf_search(ix, q + i * dim, 1, k, nlist + 5, filter,
                                          d1 + i * k, i1 + i * k), 0);
        CU_ASSERT_EQUAL(mismatches(d1, i1, d2, i2, nq, k, 1e-5), 0);
    }
    free(d1);
    free(d2);
    free(i1);
    free(i2);
    qv_flat_free(f);
    qv_ivf_free(ix);
}

static void test_equals_flat_random(void)
{
    size_t dims[] = { 3, 16, 33 };
    for (int di = 0; di < 3; di++)
        for (int m = 0; m < QV_METRIC__COUNT; m++)
            for (int t = 0; t < 2; t++) {
                size_t n = 3000, nq = 40, dim = dims[di];
                float *x = randvec(n, dim), *q = randvec(nq, dim);
                compare_with_flat(x, n, q, nq, dim, (enum qv_metric)m, 24, NULL,
                                  t ? pool2 : NULL, 1);
                free(x);
                free(q);
            }
}

static int load_set(const char *set, float **base, size_t *n, float **q, size_t *nq,
                    size_t *dim, struct qv_vecfile *gt)
{
    const char *dir = getenv("QV_DATA_DIR");
    char path[4096];
    struct qv_vecfile b = { 0 }, qf = { 0 };
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
    *dim = b.dim;
    *n = b.n;
    *nq = qf.n;
    *base = malloc(*n * *dim * sizeof(float));
    *q = malloc(*nq * *dim * sizeof(float));
    qv_vecfile_read_f32(&b, 0, *n, *base);
    qv_vecfile_read_f32(&qf, 0, *nq, *q);
    qv_vecfile_close(&b);
    qv_vecfile_close(&qf);
    if (gt) {
        snprintf(path, sizeof path, "%s/%s/groundtruth.ivecs", dir, set);
        if (qv_vecfile_open(gt, path, QV_VEC_IVECS))
            return -1;
    }
    return 0;
}

static void equals_flat_on(const char *set)
{
    float *x, *q;
    size_t n, nq, dim;
    CU_ASSERT_EQUAL_FATAL(load_set(set, &x, &n, &q, &nq, &dim, NULL), 0);
    if (nq > 200)
        nq = 200;
    compare_with_flat(x, n, q, nq, dim, QV_METRIC_L2, 64, NULL, pool2, 0);
    free(x);
    free(q);
}

static void test_equals_flat_siftsmall(void) { equals_flat_on("siftsmall"); }
static void test_equals_flat_glove(void) { equals_flat_on("glove-twitter-25"); }

static void test_sq8_recall(void)
{
    float *x, *q;
    size_t n, nq, dim;
    struct qv_vecfile g = { 0 };
    CU_ASSERT_EQUAL_FATAL(load_set("siftsmall", &x, &n, &q, &nq, &dim, &g), 0);
    const uint32_t k = 10, nlist = 64;
    struct qv_ivf *ix = build(x, n, dim, QV_METRIC_L2, QV_IVF_SQ8, nlist, pool2, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(ix);
    float *d = malloc(nq * k * sizeof(float));
    uint64_t *ids = malloc(nq * k * 8);
    uint32_t probes[] = { nlist, 8 };
    for (int pi = 0; pi < 2; pi++) {
        CU_ASSERT_EQUAL(qv_ivf_search(ix, q, nq, k, probes[pi], NULL, d, ids), 0);
        size_t hits = 0;
        for (size_t i = 0; i < nq; i++) {
            const int32_t *gt = qv_vecfile_row(&g, i);
            for (uint32_t j = 0; j < k; j++)
                for (uint32_t t = 0; t < k; t++)
                    hits += ids[i * k + j] == (uint64_t)gt[t];
        }
        double recall = (double)hits / (double)(nq * k);
        fprintf(stderr, " [sq8 siftsmall nprobe %u: recall@10 %.4f] ", probes[pi], recall);
        if (probes[pi] == nlist)
            CU_ASSERT_TRUE(recall >= 0.97);
    }
    free(d);
    free(ids);
    qv_ivf_free(ix);
    qv_vecfile_close(&g);
    free(x);
    free(q);
}

static void test_filtered(void)
{
    const size_t n = 4000, nq = 30, dim = 24;
    float *x = randvec(n, dim), *q = randvec(nq, dim);
    double sel[] = { 0.5, 0.1, 0.01 };
    uint64_t *bm = malloc((n + 63) / 64 * 8);
    for (int s = 0; s < 3; s++)
        for (int m = 0; m < 2; m++) {
            memset(bm, 0, (n + 63) / 64 * 8);
            for (size_t r = 0; r < n; r++)
                if (frand() < sel[s])
                    bm[r / 64] |= 1ull << (r % 64);
            compare_with_flat(x, n, q, nq, dim, (enum qv_metric)m, 30, bm, pool2, 1);
        }
    free(bm);
    free(x);
    free(q);
}

static void test_deletes(void)
{
    const size_t n = 3000, nq = 25, dim = 20;
    const uint32_t k = 20, nlist = 16;
    float *x = randvec(n, dim), *q = randvec(nq, dim);
    uint64_t *ids = malloc(n * 8);
    for (size_t i = 0; i < n; i++)
        ids[i] = 1000000 + i * 7;
    for (int enc = 0; enc < 2; enc++) {
        struct qv_ivf *ix = build(x, n, dim, QV_METRIC_L2, (enum qv_ivf_encoding)enc, nlist,
                                  pool2, ids);
        struct qv_flat *f = build_flat(x, n, dim, QV_METRIC_L2, ids);
        CU_ASSERT_PTR_NOT_NULL_FATAL(ix);
        float *d = malloc(nq * k * 4), *d2 = malloc(nq * k * 4);
        uint64_t *got = malloc(nq * k * 8), *got2 = malloc(nq * k * 8);
        /* delete the current top results of every query, plus every 3rd id */
        CU_ASSERT_EQUAL(qv_ivf_search(ix, q, nq, k, nlist, NULL, d, got), 0);
        uint64_t *del = malloc((nq * k + n / 3 + 1) * 8);
        size_t nd = 0;
        for (size_t i = 0; i < nq * k; i++)
            del[nd++] = got[i];
        for (size_t i = 0; i < n; i += 3)
            del[nd++] = ids[i];
        long removed = qv_ivf_remove(ix, nd, del);
        CU_ASSERT_TRUE(removed > 0);
        CU_ASSERT_EQUAL(qv_flat_remove(f, nd, del), removed);
        CU_ASSERT_EQUAL(qv_ivf_size(ix), n - (size_t)removed);
        CU_ASSERT_EQUAL(qv_ivf_remove(ix, nd, del), 0);
        CU_ASSERT_EQUAL(qv_ivf_search(ix, q, nq, k, nlist, NULL, d, got), 0);
        for (size_t i = 0; i < nq * k; i++)
            for (size_t j = 0; j < nd; j++)
                CU_ASSERT_NOT_EQUAL(got[i], del[j]);
        if (enc == QV_IVF_FLAT) {
            CU_ASSERT_EQUAL(qv_flat_search(f, q, nq, k, NULL, d2, got2), 0);
            CU_ASSERT_EQUAL(mismatches(d, got, d2, got2, nq, k, 1e-5), 0);
        }
        /* re-adding a deleted id is allowed; a live one is not */
        CU_ASSERT_EQUAL(qv_ivf_add(ix, 1, x, &del[0]), 0);
        CU_ASSERT_EQUAL(qv_ivf_add(ix, 1, x, &del[0]), QV_EEXIST);
        free(del);
        free(d);
        free(d2);
        free(got);
        free(got2);
        qv_flat_free(f);
        qv_ivf_free(ix);
    }
    free(ids);
    free(x);
    free(q);
}

static void tmp_path(char *buf, size_t len, const char *name)
{
    snprintf(buf, len, "/tmp/qv_test_ivf_%d_%s.qvix", (int)getpid(), name);
}

static void test_save_load(void)
{
    const size_t n = 2500, nq = 20, dim = 19;
    const uint32_t k = 10, nlist = 12;
    float *x = randvec(n, dim), *q = randvec(nq, dim);
    for (int enc = 0; enc < 2; enc++)
        for (int m = 0; m < QV_METRIC__COUNT; m++) {
            char path[256];
            tmp_path(path, sizeof path, "sl");
            struct qv_ivf *ix = build(x, n, dim, (enum qv_metric)m, (enum qv_ivf_encoding)enc,
                                      nlist, pool2, NULL);
            CU_ASSERT_PTR_NOT_NULL_FATAL(ix);
            uint64_t del[3] = { 5, 77, 1234 };
            CU_ASSERT_EQUAL(qv_ivf_remove(ix, 3, del), 3);
            CU_ASSERT_EQUAL(qv_ivf_save(ix, path), 0);
            struct qv_ivf *lx = qv_ivf_load(path, pool2);
            CU_ASSERT_PTR_NOT_NULL_FATAL(lx);
            CU_ASSERT_EQUAL(qv_ivf_size(lx), qv_ivf_size(ix));
            CU_ASSERT_EQUAL(qv_ivf_rows(lx), qv_ivf_rows(ix));
            float *d1 = malloc(nq * k * 4), *d2 = malloc(nq * k * 4);
            uint64_t *i1 = malloc(nq * k * 8), *i2 = malloc(nq * k * 8);
            uint32_t probes[] = { 1, 4, nlist };
            for (int pi = 0; pi < 3; pi++) {
                CU_ASSERT_EQUAL(qv_ivf_search(ix, q, nq, k, probes[pi], NULL, d1, i1), 0);
                CU_ASSERT_EQUAL(qv_ivf_search(lx, q, nq, k, probes[pi], NULL, d2, i2), 0);
                CU_ASSERT_EQUAL(memcmp(d1, d2, nq * k * 4), 0);
                CU_ASSERT_EQUAL(memcmp(i1, i2, nq * k * 8), 0);
            }
            /* the loaded index takes removes and adds (copy-on-write) */
            uint64_t nid = 999999;
            CU_ASSERT_EQUAL(qv_ivf_remove(lx, 1, &i2[0]), 1);
            CU_ASSERT_EQUAL(qv_ivf_add(lx, 1, q, &nid), 0);
            CU_ASSERT_EQUAL(qv_ivf_add(lx, 1, q, &nid), QV_EEXIST);
            CU_ASSERT_EQUAL(qv_ivf_search(lx, q, 1, k, nlist, NULL, d2, i2), 0);
            if (m != QV_METRIC_IP)      /* a vector is its own nearest but for ip */
                CU_ASSERT_EQUAL(i2[0], nid);
            qv_ivf_free(lx);
            free(d1);
            free(d2);
            free(i1);
            free(i2);
            qv_ivf_free(ix);
            unlink(path);
        }
    free(x);
    free(q);
}

static void test_corrupt_files(void)
{
    const size_t n = 1500, dim = 16;
    float *x = randvec(n, dim);
    char path[256];
    tmp_path(path, sizeof path, "bad");
    struct qv_ivf *ix = build(x, n, dim, QV_METRIC_L2, QV_IVF_FLAT, 8, NULL, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(ix);
    CU_ASSERT_EQUAL(qv_ivf_save(ix, path), 0);
    qv_ivf_free(ix);
    FILE *fp = fopen(path, "rb");
    fseek(fp, 0, SEEK_END);
    long size = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    unsigned char *buf = malloc(size);
    CU_ASSERT_EQUAL(fread(buf, 1, size, fp), (size_t)size);
    fclose(fp);
    /* flip one byte in the middle of every non-empty section (the table
     * at offset 64: per section tag, offset at +8, size at +16) */
    uint32_t nsec;
    memcpy(&nsec, buf + 24, 4);
    CU_ASSERT_TRUE(nsec >= 8);
    for (uint32_t s = 0; s < nsec; s++) {
        uint64_t off, sz;
        memcpy(&off, buf + 64 + 32 * s + 8, 8);
        memcpy(&sz, buf + 64 + 32 * s + 16, 8);
        if (!sz)
            continue;
        long spot = (long)(off + sz / 2);
        buf[spot] ^= 0x5A;
        fp = fopen(path, "wb");
        fwrite(buf, 1, size, fp);
        fclose(fp);
        buf[spot] ^= 0x5A;
        struct qv_ivf *bad = qv_ivf_load(path, NULL);
        CU_ASSERT_PTR_NULL(bad);
        qv_ivf_free(bad);
        CU_ASSERT_EQUAL(qv_errno, QV_ECORRUPT);
        CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), path));
    }
    /* truncated */
    fp = fopen(path, "wb");
    fwrite(buf, 1, size - 5000, fp);
    fclose(fp);
    CU_ASSERT_PTR_NULL(qv_ivf_load(path, NULL));
    CU_ASSERT_EQUAL(qv_errno, QV_ECORRUPT);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), path));
    /* intact again: loads */
    fp = fopen(path, "wb");
    fwrite(buf, 1, size, fp);
    fclose(fp);
    ix = qv_ivf_load(path, NULL);
    CU_ASSERT_PTR_NOT_NULL(ix);
    qv_ivf_free(ix);
    unlink(path);
    free(buf);
    free(x);
}

/* A work unit over hand-made lists equals one unit per query. */
static void test_engine_unit(void)
{
    const uint32_t dim = 21, nlists = 9, nq = 40, k = 7;
    const struct qv_dist_ops *ops = qv_kernels();
    struct qv_wu_list lists[9];
    void *mem[9][4];
    float vmin[21], vdiff[21];
    for (uint32_t d = 0; d < dim; d++) {
        vmin[d] = -0.3f;
        vdiff[d] = 1.0f;
    }
    struct qv_sq8_params sp = { vmin, vdiff };
    float *q = randvec(nq, dim);
    float qn[40];
    for (uint32_t i = 0; i < nq; i++)
        qn[i] = -ops->dist[QV_METRIC_IP][QV_ELEM_F32](q + i * dim, q + i * dim, dim);
    uint32_t poff[41], plist[40 * 9], np = 0;
    for (uint32_t i = 0; i < nq; i++) {
        poff[i] = np;
        for (uint32_t l = 0; l < nlists; l++)
            if (frand() < 0.5f)
                plist[np++] = l;
    }
    poff[nq] = np;
    uint64_t filter[8];
    for (int w = 0; w < 8; w++)
        filter[w] = ((uint64_t)rng * 0x9E3779B97F4A7C15ULL) | 0x5555ULL, frand();
    for (int kind = 0; kind < 2; kind++) {
        uint32_t row = 0;
        for (uint32_t l = 0; l < nlists; l++) {
            uint32_t cnt = l * 7 + 1;
            float *v = randvec(cnt, dim);
            for (size_t i = 0; i < (size_t)cnt * dim; i++)
                v[i] += 0.3f, v[i] = v[i] > 0.99f ? 0.99f : v[i], v[i] -= 0.3f;
            float *blk = qv_calloc((cnt + 15) / 16 * 16 * dim, 4, QV_MEM_TEST);
            uint8_t *codes = qv_malloc((size_t)cnt * dim, QV_MEM_TEST);
            float *norms = qv_malloc(cnt * 4, QV_MEM_TEST);
            uint64_t *ids = qv_malloc(cnt * 8, QV_MEM_TEST);
            uint32_t *rows = qv_malloc(cnt * 4, QV_MEM_TEST);
            qv_block_pack(blk, 0, v, cnt, dim);
            qv_sq8_encode(v, cnt, dim, vmin, vdiff, codes, dim);
            for (uint32_t i = 0; i < cnt; i++) {
                norms[i] = -ops->dist[QV_METRIC_IP][QV_ELEM_F32](v + i * dim, v + i * dim,
                                                                 dim);
                ids[i] = 100 * l + i;
                rows[i] = row++;
            }
            free(v);
            if (kind == 0) {
                qv_free(codes);
                codes = NULL;
            } else {
                qv_free(blk);
                blk = NULL;
            }
            mem[l][0] = kind ? (void *)codes : (void *)blk;
            mem[l][1] = norms;
            mem[l][2] = ids;
            mem[l][3] = rows;
            lists[l] = (struct qv_wu_list){ .codes = mem[l][0], .norms = norms, .ids = ids,
                                            .rows = rows, .n = cnt, .list_no = l };
        }
        for (int m = 0; m < 2; m++)
            for (int fl = 0; fl < 2; fl++) {
                float d1[40 * 7], d2[40 * 7];
                uint64_t i1[40 * 7], i2[40 * 7];
                struct qv_topk h1[40], h2[40];
                for (uint32_t i = 0; i < nq; i++) {
                    qv_topk_init(&h1[i], k, d1 + i * k, i1 + i * k);
                    qv_topk_init(&h2[i], k, d2 + i * k, i2 + i * k);
                }
                struct qv_work_unit wu = {
                    .kind = kind ? QV_WU_SQ8 : QV_WU_FLAT, .metric = (enum qv_metric)m,
                    .dim = dim, .code_size = dim, .nq = nq, .queries = q, .qnorms = qn,
                    .nlists = nlists, .lists = lists, .probe_offsets = poff,
                    .probe_lists = plist, .params = &sp, .filter = fl ? filter : NULL,
                    .heaps = h1,
                };
                struct qv_engine *e2 = qv_engine_cpu_create(pool2);
                struct qv_engine *e1 = qv_engine_cpu_create(NULL);
                CU_ASSERT_PTR_NOT_NULL_FATAL(e2);
                CU_ASSERT_EQUAL(qv_engine_run(e2, &wu), 0);
                CU_ASSERT_EQUAL(wu.status, 0);
                for (uint32_t i = 0; i < nq; i++) {
                    struct qv_work_unit one = wu;
                    one.nq = 1;
                    one.queries = q + i * dim;
                    one.qnorms = qn + i;
                    one.probe_offsets = poff + i;
                    one.heaps = &h2[i];
                    CU_ASSERT_EQUAL(qv_engine_run(e1, &one), 0);
                }
                for (uint32_t i = 0; i < nq; i++) {
                    qv_topk_sort(&h1[i]);
                    qv_topk_sort(&h2[i]);
                }
                CU_ASSERT_EQUAL(mismatches(d1, i1, d2, i2, nq, k, 1e-5), 0);
                /* and every result respects the filter */
                if (fl)
                    for (uint32_t i = 0; i < nq * k; i++)
                        if (i1[i] != QV_ID_NONE) {
                            uint32_t l = (uint32_t)(i1[i] / 100), off = (uint32_t)(i1[i] % 100);
                            uint32_t r = lists[l].rows[off];
                            CU_ASSERT_TRUE(filter[r / 64] >> (r % 64) & 1u);
                        }
                struct qv_engine_caps caps;
                e2->ops->caps(e2, &caps);
                CU_ASSERT_TRUE(caps.kinds & (1u << QV_WU_SQ8));
                CU_ASSERT_EQUAL(e2->ops->health(e2), 0);
                qv_engine_free(e1);
                qv_engine_free(e2);
            }
        for (uint32_t l = 0; l < nlists; l++)
            for (int j = 0; j < 4; j++)
                qv_free(mem[l][j]);
    }
    free(q);
}

/* Few long lists and few queries: the 2-worker CPU engine scans each
 * long list in pieces on both workers ("Pieces" in engine_cpu.c).  The
 * results must equal a 1-worker engine's, which scans lists whole: IVF
 * flat and SQ8 (nlist 2, ~10k entries a list, with a filter), and a flat
 * index of one 20k segment through qv_flat_search_engine against
 * qv_flat_search. */
static void test_engine_pieces(void)
{
    const size_t n = 20000, dim = 24;
    const uint32_t k = 10;
    float *x = malloc(n * dim * sizeof(float));
    float q[5 * 24], d1[5 * 10], d2[5 * 10];
    uint64_t i1[5 * 10], i2[5 * 10];
    uint64_t *filter = calloc((n + 63) / 64, sizeof(uint64_t));
    for (size_t i = 0; i < n * dim; i++)
        x[i] = frand();
    for (size_t i = 0; i < 5 * dim; i++)
        q[i] = frand();
    for (size_t r = 0; r < n; r++)
        if (r % 5 != 2)
            filter[r / 64] |= 1ull << (r % 64);
    struct qv_engine *one = qv_engine_cpu_create(NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(one);
    for (int enc = 0; enc < 2; enc++) {
        struct qv_ivf *ix = build(x, n, dim, QV_METRIC_L2, (enum qv_ivf_encoding)enc, 2,
                                  pool2, NULL);
        CU_ASSERT_PTR_NOT_NULL_FATAL(ix);
        for (uint32_t nq = 1; nq <= 5; nq += 4)
            for (int f = 0; f < 2; f++) {
                const uint64_t *flt = f ? filter : NULL;
                qv_ivf_set_engine(ix, NULL);        /* its own: 2 workers */
                CU_ASSERT_EQUAL(qv_ivf_search(ix, q, nq, k, 2, flt, d1, i1), 0);
                qv_ivf_set_engine(ix, one);
                CU_ASSERT_EQUAL(qv_ivf_search(ix, q, nq, k, 2, flt, d2, i2), 0);
                CU_ASSERT_EQUAL(mismatches(d1, i1, d2, i2, nq, k, 1e-5), 0);
            }
        qv_ivf_set_engine(ix, NULL);
        qv_ivf_free(ix);
    }
    struct qv_flat_opts fo = { .dim = (uint32_t)dim, .metric = QV_METRIC_L2, .numa_node = -1,
                               .pool = pool2, .segment_capacity = 32768 };
    struct qv_flat *fl = qv_flat_create(&fo);
    CU_ASSERT_PTR_NOT_NULL_FATAL(fl);
    CU_ASSERT_EQUAL(qv_flat_add(fl, n, x, NULL), 0);
    struct qv_engine *two = qv_engine_cpu_create(pool2);
    CU_ASSERT_PTR_NOT_NULL_FATAL(two);
    for (uint32_t nq = 1; nq <= 5; nq += 4)
        for (int f = 0; f < 2; f++) {
            const uint64_t *flt = f ? filter : NULL;
            CU_ASSERT_EQUAL(qv_flat_search(fl, q, nq, k, flt, d1, i1), 0);
            CU_ASSERT_EQUAL(qv_flat_search_engine(fl, two, q, nq, k, flt, d2, i2), 0);
            CU_ASSERT_EQUAL(mismatches(d1, i1, d2, i2, nq, k, 1e-4), 0);
        }
    qv_flat_free(fl);
    qv_engine_free(two);
    qv_engine_free(one);
    free(filter);
    free(x);
}

static void test_sq8_kernels(void)
{
    size_t dims[] = { 1, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 64, 127, 128, 129, 784 };
    const struct qv_sq8_kernels *ref = qv_kernels_level(QV_SIMD_REF)->sq8;
    for (int di = 0; di < 16; di++) {
        size_t dim = dims[di], n = 13, stride = dim + 3;
        float *x = randvec(n, dim), *qq = randvec(1, dim), *dec = malloc(n * dim * 4);
        float *vmin = malloc(dim * 4), *vdiff = malloc(dim * 4), *scale = malloc(dim * 4);
        float *buf = malloc(dim * 4);
        uint8_t *codes = malloc(n * stride);
        CU_ASSERT_EQUAL(qv_sq8_train(x, n, dim, vmin, vdiff), 0);
        qv_sq8_encode(x, n, dim, vmin, vdiff, codes, stride);
        qv_sq8_decode(codes, n, dim, stride, vmin, vdiff, dec);
        for (size_t i = 0; i < n * dim; i++)
            CU_ASSERT_TRUE(fabsf(dec[i] - x[i]) <= vdiff[i % dim] / 510.0f * 1.001f + 1e-6f);
        qv_sq8_scale(vdiff, dim, scale);
        for (int m = 0; m < 2; m++) {
            struct qv_sq8_query pq;
            qv_sq8_query_prepare(qq, dim, (enum qv_metric)m, vmin, scale, buf, &pq);
            float want[13], got[13];
            if (m == 0)
                ref->l2(pq.vec, scale, codes, stride, n, dim, want);
            else
                ref->ip(pq.vec, pq.bias, codes, stride, n, dim, want);
            /* the reference equals the distance to the decoded vector */
            for (size_t i = 0; i < n; i++) {
                double s = 0;
                for (size_t d = 0; d < dim; d++)
                    s += m == 0 ? ((double)qq[d] - dec[i * dim + d]) * (qq[d] - dec[i * dim + d])
                                : -(double)qq[d] * dec[i * dim + d];
                CU_ASSERT_TRUE(fabs(want[i] - s) <= 1e-4 * (1 + fabs(s)));
            }
            for (int lv = QV_SIMD_AVX2; lv < QV_SIMD__COUNT; lv++) {
                const struct qv_dist_ops *ops = qv_kernels_level((enum qv_simd)lv);
                if (!ops)
                    continue;
                if (m == 0)
                    ops->sq8->l2(pq.vec, scale, codes, stride, n, dim, got);
                else
                    ops->sq8->ip(pq.vec, pq.bias, codes, stride, n, dim, got);
                for (size_t i = 0; i < n; i++)
                    CU_ASSERT_TRUE(fabsf(got[i] - want[i]) <= 1e-5f * (1 + fabsf(want[i])));
            }
        }
        free(x);
        free(qq);
        free(dec);
        free(vmin);
        free(vdiff);
        free(scale);
        free(buf);
        free(codes);
    }
}

/* ---- prefetch: a spy engine around the CPU engine ---- */

#define SPY_MAX 512

struct spy {
    struct qv_engine base;
    struct qv_engine *cpu;
    const void *pre[SPY_MAX];       /* codes of the last prefetch's lists */
    uint32_t npre;
    const void *scan[SPY_MAX];      /* codes of the lists the last unit probed */
    uint32_t nscan;
    int probes_ok;                  /* the prefetch's CSR named its lists */
};

static void spy_caps(const struct qv_engine *e, struct qv_engine_caps *out)
{
    const struct spy *S = e->priv;
    S->cpu->ops->caps(S->cpu, out);
}

static void add_once(const void **set, uint32_t *n, const void *p)
{
    for (uint32_t i = 0; i < *n; i++)
        if (set[i] == p)
            return;
    if (*n < SPY_MAX)
        set[(*n)++] = p;
}

static int spy_submit(struct qv_engine *e, struct qv_work_unit *wu)
{
    struct spy *S = e->priv;
    S->nscan = 0;
    for (uint32_t p = wu->probe_offsets[0]; p < wu->probe_offsets[wu->nq]; p++)
        if (wu->lists[wu->probe_lists[p]].n)
            add_once(S->scan, &S->nscan, wu->lists[wu->probe_lists[p]].codes);
    return S->cpu->ops->submit(S->cpu, wu);
}

static int spy_poll(struct qv_engine *e, struct qv_work_unit **done, int max)
{
    struct spy *S = e->priv;
    return S->cpu->ops->poll(S->cpu, done, max);
}

static int spy_health(const struct qv_engine *e) { (void)e; return 0; }
static void spy_free(struct qv_engine *e) { (void)e; }

static int spy_prefetch(struct qv_engine *e, const struct qv_work_unit *wu)
{
    struct spy *S = e->priv;
    S->npre = 0;
    for (uint32_t l = 0; l < wu->nlists; l++)
        if (wu->lists[l].n)
            add_once(S->pre, &S->npre, wu->lists[l].codes);
    S->probes_ok = wu->probe_offsets && wu->probe_lists && wu->probe_offsets[0] == 0;
    for (uint32_t p = 0; S->probes_ok && p < wu->probe_offsets[wu->nq]; p++)
        S->probes_ok = wu->probe_lists[p] < wu->nlists;
    return 0;
}

static const struct qv_engine_ops spy_ops = {
    .name = "spy", .caps = spy_caps, .submit = spy_submit, .poll = spy_poll,
    .health = spy_health, .free = spy_free, .prefetch = spy_prefetch,
};

/* 1 when the spy's last prefetch named exactly the lists its last unit
 * probed (non-empty ones, as sets). */
static int spy_sets_equal(const struct spy *S)
{
    if (S->npre != S->nscan)
        return 0;
    for (uint32_t i = 0; i < S->npre; i++) {
        uint32_t j = 0;
        while (j < S->nscan && S->scan[j] != S->pre[i])
            j++;
        if (j == S->nscan)
            return 0;
    }
    return 1;
}

static void test_prefetch(void)
{
    const size_t n = 4000, dim = 20, k = 5;
    float *x = randvec(n, dim), *q = randvec(64, dim);
    float *d = malloc(64 * k * sizeof(float));
    uint64_t *ids = malloc(64 * k * sizeof(uint64_t));
    struct spy S = { .base = { &spy_ops, &S }, .cpu = qv_engine_cpu_create(NULL) };
    static const enum qv_metric metrics[] = { QV_METRIC_L2, QV_METRIC_IP, QV_METRIC_COSINE };
    static const struct { size_t nq; uint32_t nprobe; } shapes[] = {
        { 1, 1 }, { 1, 7 }, { 5, 3 }, { 64, 4 }, { 3, 100 },
    };
    int mismatches = 0, cases = 0;
    for (int mi = 0; mi < 3; mi++) {
        for (int enc = 0; enc < 2; enc++) {
            struct qv_ivf *ix = build(x, n, dim, metrics[mi], enc ? QV_IVF_SQ8 : QV_IVF_FLAT,
                                      40, pool2, NULL);
            CU_ASSERT_PTR_NOT_NULL_FATAL(ix);
            CU_ASSERT_EQUAL(qv_ivf_prefetch(ix, q, 4, 3), 0);       /* no engine */
            qv_ivf_set_engine(ix, &S.base);
            for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
                S.npre = S.nscan = 0;
                CU_ASSERT_EQUAL(qv_ivf_prefetch(ix, q, shapes[si].nq, shapes[si].nprobe), 0);
                CU_ASSERT_EQUAL(qv_ivf_search(ix, q, shapes[si].nq, (uint32_t)k,
                                              shapes[si].nprobe, NULL, d, ids), 0);
                CU_ASSERT(S.npre > 0);
                CU_ASSERT_TRUE(S.probes_ok);
                mismatches += !spy_sets_equal(&S);
                cases++;
            }
            CU_ASSERT_EQUAL(qv_ivf_prefetch(ix, q, 0, 3), QV_EINVAL);
            CU_ASSERT_EQUAL(qv_ivf_prefetch(ix, q, 4, 0), QV_EINVAL);
            CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "nprobe"));
            CU_ASSERT_EQUAL(qv_ivf_prefetch(ix, NULL, 4, 3), QV_EINVAL);
            qv_ivf_set_engine(ix, NULL);
            qv_ivf_free(ix);
        }
        struct qv_ivfpq_opts po = { .dim = (uint32_t)dim, .metric = metrics[mi], .nlist = 32,
                                    .m = 4, .nbits = 4, .kmeans_iters = 5, .seed = 7,
                                    .pool = pool2 };
        struct qv_ivfpq *pq = qv_ivfpq_create(&po);
        CU_ASSERT_PTR_NOT_NULL_FATAL(pq);
        qv_ivfpq_set_engine(pq, &S.base);
        CU_ASSERT_EQUAL(qv_ivfpq_prefetch(pq, q, 4, 3), QV_EINVAL);  /* not trained */
        qv_ivfpq_set_engine(pq, NULL);
        CU_ASSERT_EQUAL(qv_ivfpq_train(pq, x, n), 0);
        CU_ASSERT_EQUAL(qv_ivfpq_add(pq, n, x, NULL), 0);
        CU_ASSERT_EQUAL(qv_ivfpq_prefetch(pq, q, 4, 3), 0);           /* no engine */
        qv_ivfpq_set_engine(pq, &S.base);
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
            S.npre = S.nscan = 0;
            CU_ASSERT_EQUAL(qv_ivfpq_prefetch(pq, q, shapes[si].nq, shapes[si].nprobe), 0);
            CU_ASSERT_EQUAL(qv_ivfpq_search(pq, q, shapes[si].nq, (uint32_t)k,
                                            shapes[si].nprobe, 1, NULL, d, ids), 0);
            CU_ASSERT(S.npre > 0);
            CU_ASSERT_TRUE(S.probes_ok);
            mismatches += !spy_sets_equal(&S);
            cases++;
        }
        qv_ivfpq_set_engine(pq, NULL);
        qv_ivfpq_free(pq);
    }
    if (mismatches)
        fprintf(stderr, "\n  prefetch named other lists than the search scanned in %d of %d "
                "cases", mismatches, cases);
    CU_ASSERT_EQUAL(mismatches, 0);
    qv_engine_free(S.cpu);
    free(x);
    free(q);
    free(d);
    free(ids);
}

static void test_bad_params(void)
{
    struct qv_ivf_opts o = { .dim = 8, .metric = QV_METRIC_L2, .nlist = 0 };
    CU_ASSERT_PTR_NULL(qv_ivf_create(&o));
    CU_ASSERT_EQUAL(qv_errno, QV_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "nlist"));
    o.nlist = 4;
    o.dim = 0;
    CU_ASSERT_PTR_NULL(qv_ivf_create(&o));
    o.dim = 8;
    o.encoding = (enum qv_ivf_encoding)7;
    CU_ASSERT_PTR_NULL(qv_ivf_create(&o));
    o.encoding = QV_IVF_FLAT;
    o.nlist = 50;
    struct qv_ivf *ix = qv_ivf_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(ix);
    float *x = randvec(40, 8), d[10];
    uint64_t ids[10];
    CU_ASSERT_EQUAL(qv_ivf_search(ix, x, 1, 10, 1, NULL, d, ids), QV_EINVAL);
    CU_ASSERT_EQUAL(qv_ivf_add(ix, 4, x, NULL), QV_EINVAL);
    CU_ASSERT_EQUAL(qv_ivf_train(ix, x, 40), QV_EINVAL);        /* nlist 50 > n 40 */
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "nlist"));
    qv_ivf_free(ix);
    o.nlist = 4;
    ix = qv_ivf_create(&o);
    CU_ASSERT_EQUAL(qv_ivf_train(ix, x, 40), 0);
    CU_ASSERT_EQUAL(qv_ivf_add(ix, 40, x, NULL), 0);
    CU_ASSERT_EQUAL(qv_ivf_train(ix, x, 40), QV_EINVAL);        /* not empty */
    CU_ASSERT_EQUAL(qv_ivf_search(ix, x, 1, 10, 0, NULL, d, ids), QV_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "nprobe"));
    CU_ASSERT_EQUAL(qv_ivf_search(ix, x, 1, 0, 1, NULL, d, ids), QV_EINVAL);
    CU_ASSERT_EQUAL(qv_ivf_search(ix, x, 0, 10, 1, NULL, d, ids), QV_EINVAL);
    CU_ASSERT_EQUAL(qv_ivf_search(ix, x, 1, 10, 99, NULL, d, ids), 0);   /* clamped */
    x[3] = NAN;
    CU_ASSERT_EQUAL(qv_ivf_add(ix, 1, x, NULL), QV_EINVAL);
    CU_ASSERT_EQUAL(qv_ivf_size(ix), 40);
    CU_ASSERT_PTR_NULL(qv_ivf_load("/nonexistent/ivf.qvix", NULL));
    CU_ASSERT_EQUAL(qv_errno, QV_ENOENT);
    qv_ivf_free(ix);
    free(x);
}

static void test_alloc_failures(void)
{
    const size_t n = 1200, dim = 12, nq = 9;
    float *x = randvec(n, dim), *q = randvec(nq, dim);
    float d[9 * 5];
    uint64_t ids[9 * 5];
    struct qv_mem_stats s0, s1;
    for (int enc = 0; enc < 2; enc++) {
        qv_mem_stats(QV_MEM__COUNT, &s0);
        int built = 0, searched = 0;
        for (long i = 0; i < 400 && !built; i++) {
            qv_alloc_fail_after(i);
            struct qv_ivf *ix = build(x, n, dim, QV_METRIC_COSINE, (enum qv_ivf_encoding)enc,
                                      10, pool2, NULL);
            int e = qv_errno;
            qv_alloc_fail_after(-1);
            if (ix) {
                built = 1;
                for (long j = 0; j < 100 && !searched; j++) {
                    qv_alloc_fail_after(j);
                    int rc = qv_ivf_search(ix, q, nq, 5, 4, NULL, d, ids);
                    qv_alloc_fail_after(-1);
                    if (rc == 0)
                        searched = 1;
                    else
                        CU_ASSERT_EQUAL(rc, QV_ENOMEM);
                }
                qv_ivf_free(ix);
            } else {
                CU_ASSERT_EQUAL(e, QV_ENOMEM);
            }
        }
        CU_ASSERT_TRUE(built);
        CU_ASSERT_TRUE(searched);
        qv_mem_stats(QV_MEM__COUNT, &s1);
        CU_ASSERT_EQUAL(s1.live_blocks, s0.live_blocks);
        CU_ASSERT_EQUAL(s1.live_bytes, s0.live_bytes);
    }
    free(x);
    free(q);
}

int main(void)
{
    pool2 = qv_pool_create(2, true);
    if (!pool2)
        return 2;
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    CU_pSuite s = CU_add_suite("ivf", NULL, NULL);
    CU_add_test(s, "nprobe = nlist equals flat (l2/ip/cosine, 1 and 2 threads)",
                test_equals_flat_random);
    CU_add_test(s, "nprobe = nlist equals flat on siftsmall", test_equals_flat_siftsmall);
    CU_add_test(s, "nprobe = nlist equals flat on glove-twitter-25",
                test_equals_flat_glove);
    CU_add_test(s, "sq8 recall floor on siftsmall", test_sq8_recall);
    CU_add_test(s, "filtered search equals filtered flat (0.5, 0.1, 0.01)", test_filtered);
    CU_add_test(s, "deleted ids never returned", test_deletes);
    CU_add_test(s, "save -> load -> identical results; adds after load", test_save_load);
    CU_add_test(s, "corrupted and truncated files rejected", test_corrupt_files);
    CU_add_test(s, "engine: a work unit equals per-query units", test_engine_unit);
    CU_add_test(s, "engine: long lists in pieces equal whole lists", test_engine_pieces);
    CU_add_test(s, "sq8 kernels: every level equals the reference", test_sq8_kernels);
    CU_add_test(s, "prefetch names exactly the lists the search scans (ivf, ivf-pq)",
                test_prefetch);
    CU_add_test(s, "bad parameters refused with a message", test_bad_params);
    CU_add_test(s, "injected allocation failures: ENOMEM, no leak", test_alloc_failures);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failed = CU_get_number_of_failures();
    int err = CU_get_error();
    CU_cleanup_registry();
    qv_pool_free(pool2);
    return failed || err ? 1 : 0;
}
