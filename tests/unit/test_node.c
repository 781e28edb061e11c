/*
 * test_node.c - the node's collection store (node.h) with a real query
 * service, on small clustered random sets (dim 16): CREATE / DESCRIBE /
 * LIST / DROP of every index type and every bad spec (the message names
 * the field); FLAT searches through the service equal a brute-force
 * answer across several sealed segments (also through a router over the
 * CPU engine); IVF and HNSW after a seal equal a direct search of an
 * index built the same way and reach recall@10 >= 0.9 over several
 * segments (IVF_SQ8 and IVF_PQ, with refine, too); an upsert of an
 * existing id replaces it (never returned with its old vector, before
 * and after a seal); deletes hide ids, also after a seal and a
 * compacting rebuild; GET returns the stored vectors; filters over
 * attributes across segments equal brute force; a write bumps the epoch
 * and the cached answer misses; UPSERT / DELETE / GET / SEARCH errors
 * name the field and apply nothing, also under injected allocation
 * failures; 2 writers and a searcher stay consistent; a drop completes
 * the searches queued for it; 200 create / upsert / search / drop cycles
 * with max_collections 4 (node and service) all succeed, ids growing and
 * the dropped collections gone from /metrics; free with a build in
 * progress.  Durability: a node restarted on its data_dir has the same
 * collections and rows, from the WAL alone or from a snapshot plus the
 * WAL after it (also with snapshots taken while upserts go on); a
 * damaged snapshot falls back to an older one or is refused naming the
 * file; failed and impossible snapshots change nothing.
 */
#include <CUnit/Basic.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "quiver/alloc.h"
#include "quiver/config.h"
#include "quiver/engine.h"
#include "quiver/errors.h"
#include "quiver/hnsw.h"
#include "quiver/ivf.h"
#include "quiver/node.h"
#include "quiver/router.h"
#include "quiver/service.h"
#include "quiver/timeutil.h"
#include "quiver/topk.h"

#define DIM 16
#define NB 3000
#define NQ 40
#define KMAX 100
#define MS 1000000LL
#define SEC (1000 * MS)
#define BASE_ID 1000000ULL          /* user ids: BASE_ID + row of F.base */

static struct {
    float *base, *queries;
    int64_t *color, *size;          /* attributes of base rows */
} F;

/* One node under test and its service. */
static struct qv_service *SVC;
static struct qv_node *N;
static const char *DATA_DIR;        /* [storage] data_dir of start(); NULL: none */
static uint64_t WAL_SEG;            /* [storage] wal_segment_bytes of start(); 0: default */
static uint64_t SNAP_BYTES;         /* [storage] snapshot_wal_bytes of start(); 0: off */
static double BUILD_SHARE;          /* [server] build_share of start(); 0: the default */

/* ---- fixture ----------------------------------------------------------- */

static uint64_t rng = 0x9e3779b97f4a7c15ULL;

static float frand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

/* Points around 40 centres, queries near base points. */
static int suite_init(void)
{
    float centres[40][DIM];

    F.base = malloc(sizeof(float) * NB * DIM);
    F.queries = malloc(sizeof(float) * NQ * DIM);
    F.color = malloc(sizeof(int64_t) * NB);
    F.size = malloc(sizeof(int64_t) * NB);
    if (!F.base || !F.queries || !F.color || !F.size)
        return -1;
    for (unsigned c = 0; c < 40; c++)
        for (unsigned d = 0; d < DIM; d++)
            centres[c][d] = frand();
    for (unsigned i = 0; i < NB; i++) {
        unsigned c = (unsigned)((frand() + 1.0f) * 20.0f) % 40;
        for (unsigned d = 0; d < DIM; d++)
            F.base[i * DIM + d] = centres[c][d] + 0.8f * frand();
        F.color[i] = i % 7;
        F.size[i] = (int64_t)(i * 37 % 100);
    }
    for (unsigned q = 0; q < NQ; q++)
        for (unsigned d = 0; d < DIM; d++)
            F.queries[q * DIM + d] = F.base[(q * 71 % NB) * DIM + d] + 0.1f * frand();
    return 0;
}

static int suite_fini(void)
{
    free(F.base);
    free(F.queries);
    free(F.color);
    free(F.size);
    return 0;
}

static const float *query(unsigned i)
{
    return F.queries + (size_t)(i % NQ) * DIM;
}

static void sleep_ns(int64_t ns)
{
    struct timespec ts = { .tv_sec = ns / 1000000000LL, .tv_nsec = ns % 1000000000LL };
    nanosleep(&ts, NULL);
}

/* A service (cache on, small) and a node sealing at seal_rows; max
 * collections of both ([batcher] and [server]) max_coll, 0: 64 and 8. */
static void start_with(uint32_t seal_rows, struct qv_router *router, int paused,
                       uint32_t max_coll)
{
    struct qv_service_opts so;
    struct qv_node_opts no;

    qv_service_opts_default(&so);
    if (max_coll)
        so.batcher.max_collections = max_coll;
    so.max_k = KMAX;
    so.cache.entries = 1000;
    so.cache.bytes = 1 << 20;
    so.cache.semantic_entries = 16;  /* 0 is refused by the result cache: see the report */
    so.router = router;
    so.start_paused = paused;
    SVC = qv_service_create(&so);
    if (SVC == NULL)
        fprintf(stderr, "\n  service: %s\n", qv_errmsg());
    CU_ASSERT_PTR_NOT_NULL_FATAL(SVC);
    qv_node_opts_default(&no);
    no.service = SVC;
    no.seal_rows = seal_rows;
    no.max_collections = max_coll ? max_coll : 8;
    no.engine = router ? qv_router_engine(router) : NULL;
    no.data_dir = DATA_DIR;
    no.wal_segment_bytes = WAL_SEG;
    no.snapshot_wal_bytes = SNAP_BYTES;
    if (BUILD_SHARE > 0)
        no.build_share = BUILD_SHARE;
    N = qv_node_create(&no);
    if (N == NULL)
        fprintf(stderr, "\n  node: %s\n", qv_errmsg());
    CU_ASSERT_PTR_NOT_NULL_FATAL(N);
}

static void start(uint32_t seal_rows, struct qv_router *router, int paused)
{
    start_with(seal_rows, router, paused, 0);
}

static void stop(void)
{
    qv_node_free(N);
    qv_service_free(SVC);
    N = NULL;
    SVC = NULL;
}

static struct qv_node_coll_spec spec_of(const char *name, enum qv_node_index t)
{
    struct qv_node_coll_spec s = {
        .name = name, .dim = DIM, .metric = QV_METRIC_L2, .index = t, .nattrs = 2,
        .attrs = { "color", "size" },
    };
    if (t == QV_NODE_IVF || t == QV_NODE_IVF_SQ8 || t == QV_NODE_IVF_PQ) {
        s.nlist = 16;
        s.nprobe = 6;
    }
    if (t == QV_NODE_IVF_PQ) {
        s.pq_m = 8;
        s.pq_nbits = 4;
    }
    if (t == QV_NODE_HNSW) {
        s.hnsw_m = 8;
        s.ef_construction = 64;
        s.ef_search = 40;
    }
    return s;
}

static uint64_t create(const char *name, enum qv_node_index t)
{
    struct qv_node_coll_spec s = spec_of(name, t);
    uint64_t id = 0;
    int rc = qv_node_create_collection(N, &s, &id);

    if (rc)
        fprintf(stderr, "\n  create %s: %s\n", name, qv_errmsg());
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    return id;
}

/* Upsert base rows [from, to) under ids BASE_ID + row (or id0 + i). */
static int upsert_range(uint64_t coll, unsigned from, unsigned to, uint64_t *epoch)
{
    static uint64_t ids[NB];
    struct qv_node_rows r = {
        .n = to - from, .dim = DIM, .nattrs = 2, .ids = ids,
        .vectors = F.base + (size_t)from * DIM,
        .attrs = { F.color + from, F.size + from },
    };

    for (unsigned i = from; i < to; i++)
        ids[i - from] = BASE_ID + i;
    int rc = qv_node_upsert(N, coll, &r, epoch);
    if (rc && rc != QV_ENOENT)
        fprintf(stderr, "\n  upsert: %s\n", qv_errmsg());
    return rc;
}

static int upsert_one(uint64_t coll, uint64_t id, const float *v, int64_t color, int64_t size)
{
    struct qv_node_rows r = {
        .n = 1, .dim = DIM, .nattrs = 2, .ids = &id, .vectors = v,
        .attrs = { &color, &size },
    };
    return qv_node_upsert(N, coll, &r, NULL);
}

/* ---- searches through the service ---------------------------------------- */

struct sreq {
    struct qv_service_request r;
    float dist[KMAX];
    uint64_t ids[KMAX];
    _Atomic int done;
};

static void on_done(struct qv_service_request *req, void *arg)
{
    (void)req;
    atomic_store_explicit(&((struct sreq *)arg)->done, 1, memory_order_release);
}

static enum qv_batch_class submit_cls = QV_BATCH_INTERACTIVE;

/* Prepare and submit; 0 or the refusal. */
static int submit(uint64_t coll, const float *q, uint32_t k, uint32_t nprobe, uint32_t ef,
                  const char *filter, struct sreq *s)
{
    struct qv_node_search_args a = { .dim = DIM, .k = k, .nprobe = nprobe, .ef = ef,
                                     .filter_text = filter };
    int rc;

    memset(s, 0, sizeof *s);
    atomic_init(&s->done, 0);
    if ((rc = qv_node_search_prepare(N, coll, &a, &s->r)) != 0)
        return rc;
    s->r.query = q;
    s->r.cls = submit_cls;
    s->r.dist = s->dist;
    s->r.ids = s->ids;
    s->r.done = on_done;
    s->r.done_arg = s;
    return qv_service_submit(SVC, &s->r);
}

static int wait_done(struct sreq *s)
{
    int64_t give_up = qv_now_ns() + 10 * SEC;

    while (!atomic_load_explicit(&s->done, memory_order_acquire)) {
        if (qv_now_ns() > give_up)
            return 0;
        sched_yield();
    }
    return 1;
}

/* A synchronous search: the request's status (or the refusal). */
static int search(uint64_t coll, const float *q, uint32_t k, uint32_t nprobe, uint32_t ef,
                  const char *filter, struct sreq *s)
{
    int rc = submit(coll, q, k, nprobe, ef, filter, s);

    if (rc)
        return rc;
    CU_ASSERT_FATAL(wait_done(s));
    return s->r.status;
}

/* ---- reference answers ---------------------------------------------------- */

static float l2(const float *a, const float *b)
{
    float s = 0.0f;
    for (unsigned d = 0; d < DIM; d++)
        s += (a[d] - b[d]) * (a[d] - b[d]);
    return s;
}

/* Exact k nearest of q among base rows with live[row] (NULL: all of
 * [0, n)), ids BASE_ID + row, by (distance, id). */
static void brute(const float *q, unsigned n, const uint8_t *live, uint32_t k, float *d,
                  uint64_t *ids)
{
    struct qv_topk t;

    qv_topk_init(&t, k, d, ids);
    for (unsigned i = 0; i < n; i++)
        if (live == NULL || live[i])
            qv_topk_push(&t, l2(q, F.base + (size_t)i * DIM), BASE_ID + i);
    qv_topk_sort(&t);
}

/* Same neighbours: equal ids, or equal distances where rounding may swap
 * two of them. */
static int same_knn(const float *d1, const uint64_t *i1, const float *d2, const uint64_t *i2,
                    uint32_t k)
{
    for (uint32_t j = 0; j < k; j++) {
        if (i1[j] == i2[j])
            continue;
        if (i1[j] == QV_ID_NONE || i2[j] == QV_ID_NONE ||
            fabsf(d1[j] - d2[j]) > 1e-4f * (1.0f + fabsf(d1[j])))
            return 0;
    }
    return 1;
}

static unsigned overlap(const uint64_t *a, const uint64_t *b, uint32_t k)
{
    unsigned hit = 0;
    for (uint32_t i = 0; i < k; i++)
        for (uint32_t j = 0; j < k; j++)
            if (a[i] != QV_ID_NONE && a[i] == b[j]) {
                hit++;
                break;
            }
    return hit;
}

/* recall@k of coll's answers against the brute force of base [0, n)
 * (rows with live[row], NULL: all). */
static double recall(uint64_t coll, unsigned n, const uint8_t *live, uint32_t k,
                     uint32_t nprobe, uint32_t ef, uint32_t refine)
{
    unsigned hit = 0;

    for (unsigned q = 0; q < NQ; q++) {
        struct sreq s;
        float d[KMAX];
        uint64_t ids[KMAX];
        struct qv_node_search_args a = { .dim = DIM, .k = k, .nprobe = nprobe, .ef = ef };
        memset(&s, 0, sizeof s);
        CU_ASSERT_EQUAL_FATAL(qv_node_search_prepare(N, coll, &a, &s.r), 0);
        s.r.refine = refine;
        s.r.query = query(q);
        s.r.dist = s.dist;
        s.r.ids = s.ids;
        s.r.done = on_done;
        s.r.done_arg = &s;
        CU_ASSERT_EQUAL_FATAL(qv_service_submit(SVC, &s.r), 0);
        CU_ASSERT_FATAL(wait_done(&s));
        CU_ASSERT_EQUAL(s.r.status, 0);
        brute(query(q), n, live, k, d, ids);
        hit += overlap(s.ids, ids, k);
    }
    return (double)hit / (NQ * k);
}

static void describe(uint64_t id, struct qv_node_coll_info *info)
{
    CU_ASSERT_EQUAL_FATAL(qv_node_describe(N, id, info), 0);
}

static void expect_err(int rc, int code, const char *needle)
{
    CU_ASSERT_EQUAL(rc, code);
    if (rc != code)
        fprintf(stderr, "\n  rc %d, expected %d (%s)\n", rc, code, qv_errmsg());
    if (needle && !strstr(qv_errmsg(), needle)) {
        fprintf(stderr, "\n  message \"%s\" lacks \"%s\"\n", qv_errmsg(), needle);
        CU_FAIL("message");
    }
}

/* ---- CREATE, DESCRIBE, LIST, DROP ---------------------------------------- */

static void test_create_describe_list_drop(void)
{
    static const char *const names[] = { "flat", "ivf.1", "ivf_sq8", "ivf-pq", "HNSW_9" };
    struct qv_node_coll_info info, all[8];
    uint64_t ids[5], found;
    uint32_t n;

    start(1000, NULL, 0);
    for (unsigned t = 0; t < 5; t++)
        ids[t] = create(names[t], (enum qv_node_index)t);
    for (unsigned t = 0; t < 5; t++) {
        describe(ids[t], &info);
        CU_ASSERT_EQUAL(info.id, ids[t]);
        CU_ASSERT_STRING_EQUAL(info.name, names[t]);
        CU_ASSERT_EQUAL(info.dim, DIM);
        CU_ASSERT_EQUAL(info.index, (enum qv_node_index)t);
        CU_ASSERT_EQUAL(info.nattrs, 2);
        CU_ASSERT_STRING_EQUAL(info.attrs[1], "size");
        CU_ASSERT_EQUAL(info.rows, 0);
        CU_ASSERT_EQUAL(info.epoch, 0);
        CU_ASSERT_EQUAL(info.segments, 1);
        CU_ASSERT_EQUAL(info.trained, t == QV_NODE_FLAT || t == QV_NODE_HNSW);
        CU_ASSERT_EQUAL(qv_service_epoch(SVC, ids[t]), 0);      /* registered */
    }
    describe(ids[1], &info);
    CU_ASSERT_EQUAL(info.nlist, 16);
    CU_ASSERT_EQUAL(info.nprobe, 6);
    CU_ASSERT_EQUAL(info.seal_at, 624);         /* first: 39 x 16, then 1000 */
    describe(ids[3], &info);
    CU_ASSERT_EQUAL(info.pq_m, 8);
    CU_ASSERT_EQUAL(info.pq_nbits, 4);
    CU_ASSERT_EQUAL(info.seal_at, 624);         /* 39 x 2^4 */
    describe(ids[4], &info);
    CU_ASSERT_EQUAL(info.seal_at, 1000);
    describe(ids[4], &info);
    CU_ASSERT_EQUAL(info.hnsw_m, 8);
    CU_ASSERT_EQUAL(info.ef_search, 40);
    /* defaults resolved */
    struct qv_node_coll_spec s = { .name = "defaults", .dim = 4, .index = QV_NODE_HNSW };
    uint64_t dflt;
    CU_ASSERT_EQUAL_FATAL(qv_node_create_collection(N, &s, &dflt), 0);
    describe(dflt, &info);
    CU_ASSERT_EQUAL(info.hnsw_m, 16);
    CU_ASSERT_EQUAL(info.ef_construction, 200);
    CU_ASSERT_EQUAL(info.ef_search, 64);
    CU_ASSERT_EQUAL(qv_node_drop_collection(N, dflt), 0);
    s = (struct qv_node_coll_spec){ .name = "auto", .dim = 4, .index = QV_NODE_IVF };
    CU_ASSERT_EQUAL_FATAL(qv_node_create_collection(N, &s, &dflt), 0);
    describe(dflt, &info);
    CU_ASSERT_EQUAL(info.nlist, 0);
    CU_ASSERT_EQUAL(info.nprobe, 16);
    CU_ASSERT_EQUAL(info.seal_at, 10000);       /* nlist 0: the first train */
    CU_ASSERT_EQUAL(qv_node_drop_collection(N, dflt), 0);

    /* LIST: id order; a short buffer reports the count */
    CU_ASSERT_EQUAL(qv_node_list(N, all, 8, &n), 0);
    CU_ASSERT_EQUAL(n, 5);
    for (unsigned t = 0; t < 5 && t < n; t++)
        CU_ASSERT_EQUAL(all[t].id, ids[t]);
    CU_ASSERT_EQUAL(qv_node_list(N, all, 2, &n), 0);
    CU_ASSERT_EQUAL(n, 5);
    CU_ASSERT_EQUAL(qv_node_find(N, "ivf_sq8", &found), 0);
    CU_ASSERT_EQUAL(found, ids[2]);
    expect_err(qv_node_find(N, "nope", &found), QV_ENOENT, "nope");

    /* DROP: gone from the node and the service; the name is free again
     * and gets a new id */
    CU_ASSERT_EQUAL(upsert_range(ids[0], 0, 10, NULL), 0);
    CU_ASSERT_EQUAL(qv_node_drop_collection(N, ids[0]), 0);
    expect_err(qv_node_describe(N, ids[0], &info), QV_ENOENT, "does not exist");
    expect_err(qv_node_drop_collection(N, ids[0]), QV_ENOENT, "DROP");
    expect_err(upsert_range(ids[0], 0, 1, NULL), QV_ENOENT, "UPSERT");
    struct sreq sr;
    CU_ASSERT_EQUAL(submit(ids[0], query(0), 5, 0, 0, NULL, &sr), QV_ENOENT);
    sr.r.collection = ids[0];               /* straight to the service: retired */
    CU_ASSERT_EQUAL(qv_service_submit(SVC, &sr.r), QV_ENOENT);
    uint64_t again = create("flat", QV_NODE_FLAT);
    CU_ASSERT(again > ids[4]);
    CU_ASSERT_EQUAL(qv_node_list(N, all, 8, &n), 0);
    CU_ASSERT_EQUAL(n, 5);
    stop();
}

struct bad_case {
    const char *what;
    void (*edit)(struct qv_node_coll_spec *s);
    const char *needle;
};

/* One edit of a good spec per bad case. */
#define EDIT(fn, ...) static void fn(struct qv_node_coll_spec *s) { __VA_ARGS__; }
EDIT(e_dim0, s->dim = 0)
EDIT(e_dim_big, s->dim = 4097)
EDIT(e_metric, s->metric = (enum qv_metric)3)
EDIT(e_index, s->index = (enum qv_node_index)5)
EDIT(e_nattrs, s->nattrs = 17)
EDIT(e_name_null, s->name = NULL)
EDIT(e_name_empty, s->name = "")
EDIT(e_name_space, s->name = "a b")
EDIT(e_name_long, s->name = "a12345678901234567890123456789012345678901234567890123456789"
                            "0123456789")
EDIT(e_attr_bad, s->attrs[1] = "si/ze")
EDIT(e_attr_null, s->attrs[1] = NULL)
EDIT(e_attr_dup, s->attrs[1] = "color")
EDIT(e_nlist_big, s->index = QV_NODE_IVF; s->nlist = 70000)
EDIT(e_nprobe, s->index = QV_NODE_IVF; s->nlist = 8; s->nprobe = 9)
EDIT(e_nlist_flat, s->nlist = 8)
EDIT(e_nprobe_hnsw, s->index = QV_NODE_HNSW; s->nprobe = 4)
EDIT(e_pq_m, s->index = QV_NODE_IVF_PQ; s->pq_m = 5; s->pq_nbits = 8)
EDIT(e_pq_m0, s->index = QV_NODE_IVF_PQ; s->pq_nbits = 8)
EDIT(e_pq_nbits, s->index = QV_NODE_IVF_PQ; s->pq_m = 4; s->pq_nbits = 6)
EDIT(e_pq_ivf, s->index = QV_NODE_IVF; s->pq_m = 4)
EDIT(e_nbits_flat, s->pq_nbits = 4)
EDIT(e_m_small, s->index = QV_NODE_HNSW; s->hnsw_m = 3)
EDIT(e_m_big, s->index = QV_NODE_HNSW; s->hnsw_m = 65)
EDIT(e_efc, s->index = QV_NODE_HNSW; s->ef_construction = 7)
EDIT(e_efc_m, s->index = QV_NODE_HNSW; s->hnsw_m = 32; s->ef_construction = 16)
EDIT(e_efs, s->index = QV_NODE_HNSW; s->ef_search = 4097)
EDIT(e_m_flat, s->hnsw_m = 16)
EDIT(e_efs_ivf, s->index = QV_NODE_IVF; s->ef_search = 10)

static void test_bad_specs(void)
{
    static const struct bad_case cases[] = {
        { "dim 0", e_dim0, "dim = 0" },
        { "dim 4097", e_dim_big, "dim = 4097" },
        { "metric", e_metric, "metric = 3" },
        { "index", e_index, "index = 5" },
        { "nattrs", e_nattrs, "nattrs = 17" },
        { "name NULL", e_name_null, "name is missing" },
        { "name empty", e_name_empty, "name = \"\"" },
        { "name space", e_name_space, "byte 1" },
        { "name long", e_name_long, "name = " },
        { "attr bad", e_attr_bad, "attrs[1]" },
        { "attr NULL", e_attr_null, "attrs[1] is missing" },
        { "attr dup", e_attr_dup, "repeats attrs[0]" },
        { "nlist", e_nlist_big, "nlist = 70000" },
        { "nprobe", e_nprobe, "nprobe = 9" },
        { "nlist flat", e_nlist_flat, "only IVF, IVF_SQ8 and IVF_PQ collections take nlist" },
        { "nprobe hnsw", e_nprobe_hnsw, "take nprobe" },
        { "pq_m", e_pq_m, "pq_m = 5" },
        { "pq_m 0", e_pq_m0, "pq_m = 0" },
        { "pq_nbits", e_pq_nbits, "pq_nbits = 6" },
        { "pq_m ivf", e_pq_ivf, "only IVF_PQ collections take pq_m" },
        { "nbits flat", e_nbits_flat, "take pq_nbits" },
        { "hnsw_m 3", e_m_small, "hnsw_m = 3" },
        { "hnsw_m 65", e_m_big, "hnsw_m = 65" },
        { "efc", e_efc, "ef_construction = 7" },
        { "efc < m", e_efc_m, "at least hnsw_m (32)" },
        { "efs", e_efs, "ef_search = 4097" },
        { "m flat", e_m_flat, "only HNSW collections take hnsw_m" },
        { "efs ivf", e_efs_ivf, "take ef_search" },
    };
    struct qv_node_coll_info info[8];
    uint32_t n;
    uint64_t id;

    start(1000, NULL, 0);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct qv_node_coll_spec s = spec_of("bad", QV_NODE_FLAT);
        cases[i].edit(&s);
        qv_clearerr();
        int rc = qv_node_create_collection(N, &s, &id);
        if (rc != QV_EINVAL || !strstr(qv_errmsg(), cases[i].needle)) {
            fprintf(stderr, "\n  %s: rc %d, \"%s\" (wanted \"%s\")\n", cases[i].what, rc,
                    qv_errmsg(), cases[i].needle);
            CU_FAIL("bad spec");
        }
    }
    expect_err(qv_node_create_collection(N, NULL, &id), QV_EINVAL, "NULL");
    CU_ASSERT_EQUAL(qv_node_list(N, info, 8, &n), 0);
    CU_ASSERT_EQUAL(n, 0);                      /* nothing half-created */
    create("dup", QV_NODE_FLAT);
    struct qv_node_coll_spec s = spec_of("dup", QV_NODE_HNSW);
    expect_err(qv_node_create_collection(N, &s, &id), QV_EEXIST, "name = \"dup\" is in use");
    char name[16];
    for (unsigned i = 1; i < 8; i++) {
        snprintf(name, sizeof name, "c%u", i);
        create(name, QV_NODE_FLAT);
    }
    s = spec_of("ninth", QV_NODE_FLAT);
    expect_err(qv_node_create_collection(N, &s, &id), QV_ENOSPC, "max_collections");
    stop();

    /* options */
    struct qv_node_opts o;
    qv_node_opts_default(&o);
    CU_ASSERT_PTR_NULL(qv_node_create(&o));
    expect_err(qv_errno, QV_EINVAL, "service");
    o.service = (struct qv_service *)&o;    /* never used: refused first */
    o.seal_rows = 8;
    CU_ASSERT_PTR_NULL(qv_node_create(&o));
    expect_err(qv_errno, QV_EINVAL, "seal_rows = 8");
    o.seal_rows = 100;
    o.compact_ratio = 1.5;
    CU_ASSERT_PTR_NULL(qv_node_create(&o));
    expect_err(qv_errno, QV_EINVAL, "compact_ratio");
}

/* ---- answers ---------------------------------------------------------------- */

/* FLAT over 5 sealed segments + a growing one equals brute force, on the
 * CPU and through a router over the CPU engine. */
static void test_flat_exact(void)
{
    for (int via_router = 0; via_router < 2; via_router++) {
        struct qv_router *router = NULL;
        struct qv_engine *cpu = NULL;
        if (via_router) {
            struct qv_router_opts ro;
            qv_router_opts_default(&ro);
            ro.calibrate = 0;
            router = qv_router_create(&ro);
            cpu = qv_engine_cpu_create(NULL);
            CU_ASSERT_PTR_NOT_NULL_FATAL(router);
            CU_ASSERT_EQUAL_FATAL(qv_router_add(router, "cpu", cpu, QV_ROUTER_CLEAN_FAIL |
                                                QV_ROUTER_SYNC | QV_ROUTER_HOST_CORES), 0);
        }
        start(512, router, 0);
        uint64_t c = create("f", QV_NODE_FLAT);
        for (unsigned at = 0; at < 2800; at += 700)
            CU_ASSERT_EQUAL_FATAL(upsert_range(c, at, at + 700, NULL), 0);
        struct qv_node_coll_info info;
        describe(c, &info);
        CU_ASSERT_EQUAL(info.rows, 2800);
        CU_ASSERT_EQUAL(info.segments, 5);      /* 4 seals of 700 + growing */
        CU_ASSERT_EQUAL(info.sealed, 4);
        unsigned bad = 0;
        for (unsigned q = 0; q < NQ; q++) {
            struct sreq s;
            float d[20];
            uint64_t ids[20];
            CU_ASSERT_EQUAL_FATAL(search(c, query(q), 20, 0, 0, NULL, &s), 0);
            brute(query(q), 2800, NULL, 20, d, ids);
            bad += !same_knn(s.dist, s.ids, d, ids, 20);
        }
        CU_ASSERT_EQUAL(bad, 0);
        /* k beyond the rows: the rest is (+inf, NONE) */
        uint64_t small = create("small", QV_NODE_FLAT);
        CU_ASSERT_EQUAL(upsert_range(small, 0, 3, NULL), 0);
        struct sreq s;
        CU_ASSERT_EQUAL(search(small, query(0), 5, 0, 0, NULL, &s), 0);
        CU_ASSERT(s.ids[2] != QV_ID_NONE && s.ids[3] == QV_ID_NONE && isinf(s.dist[4]));
        /* IVF segments on the same engine: attached when swapped in,
         * detached when compacted away; nprobe = nlist is exact */
        static uint8_t live[NB];
        static uint64_t del[NB];
        unsigned nd = 0;
        uint64_t v = create("v", QV_NODE_IVF);
        CU_ASSERT_EQUAL_FATAL(upsert_range(v, 0, 1200, NULL), 0);
        CU_ASSERT_EQUAL(qv_node_wait_builds(N, v, 10 * SEC), 0);
        for (unsigned i = 0; i < 1200; i++) {
            live[i] = i % 3 == 0;
            if (!live[i])
                del[nd++] = BASE_ID + i;
        }
        CU_ASSERT_EQUAL(qv_node_delete(N, v, nd, del, NULL), (long)nd);
        CU_ASSERT_EQUAL(qv_node_wait_builds(N, v, 10 * SEC), 0);
        describe(v, &info);
        CU_ASSERT_EQUAL(info.dead_rows, 0);
        CU_ASSERT_EQUAL(info.rows, 400);
        bad = 0;
        for (unsigned q = 0; q < NQ; q++) {
            float d[10];
            uint64_t ids[10];
            CU_ASSERT_EQUAL_FATAL(search(v, query(q), 10, 16, 0, NULL, &s), 0);
            brute(query(q), 1200, live, 10, d, ids);
            bad += !same_knn(s.dist, s.ids, d, ids, 10);
        }
        CU_ASSERT_EQUAL(bad, 0);
        stop();
        qv_router_free(router);
        qv_engine_free(cpu);
    }
}

/* IVF: one sealed segment equals a direct IVF built the same way;
 * recall@10 over 3 segments (2 IVF + growing). */
static void test_ivf_seal(void)
{
    float d2[10];
    uint64_t i2[10];
    struct qv_node_coll_info info;
    struct qv_node_opts no;

    qv_node_opts_default(&no);
    start(1000, NULL, 0);
    uint64_t c = create("ivf", QV_NODE_IVF);
    CU_ASSERT_EQUAL_FATAL(upsert_range(c, 0, 623, NULL), 0);
    describe(c, &info);
    CU_ASSERT_EQUAL(info.trained, 0);
    CU_ASSERT_EQUAL(info.segments, 1);
    CU_ASSERT_EQUAL(info.seal_at, 624);
    CU_ASSERT_EQUAL_FATAL(upsert_range(c, 623, 624, NULL), 0);      /* seals: trains */
    CU_ASSERT_EQUAL(qv_node_wait_builds(N, c, 10 * SEC), 0);
    describe(c, &info);
    CU_ASSERT_EQUAL(info.trained, 1);
    CU_ASSERT_EQUAL(info.segments, 2);
    CU_ASSERT_EQUAL(info.sealed, 1);
    CU_ASSERT_EQUAL(info.pending, 0);
    CU_ASSERT_EQUAL(info.rows, 624);
    CU_ASSERT_EQUAL(info.seal_at, 1000);        /* later seals: seal_rows */

    struct qv_ivf_opts io = { .dim = DIM, .metric = QV_METRIC_L2, .encoding = QV_IVF_FLAT,
                              .nlist = 16, .seed = no.build_seed };
    struct qv_ivf *ivf = qv_ivf_create(&io);
    CU_ASSERT_PTR_NOT_NULL_FATAL(ivf);
    CU_ASSERT_EQUAL_FATAL(qv_ivf_train(ivf, F.base, 624), 0);
    CU_ASSERT_EQUAL_FATAL(qv_ivf_add(ivf, 624, F.base, NULL), 0);
    unsigned bad = 0;
    for (unsigned q = 0; q < NQ; q++) {
        struct sreq s;
        CU_ASSERT_EQUAL_FATAL(search(c, query(q), 10, 0, 0, NULL, &s), 0);  /* nprobe 6 */
        CU_ASSERT_EQUAL(qv_ivf_search(ivf, query(q), 1, 10, 6, NULL, d2, i2), 0);
        for (unsigned j = 0; j < 10; j++)
            i2[j] = i2[j] == QV_ID_NONE ? QV_ID_NONE : BASE_ID + i2[j];
        bad += !same_knn(s.dist, s.ids, d2, i2, 10);
    }
    CU_ASSERT_EQUAL(bad, 0);
    qv_ivf_free(ivf);

    CU_ASSERT_EQUAL_FATAL(upsert_range(c, 624, 2500, NULL), 0);
    CU_ASSERT_EQUAL(qv_node_wait_builds(N, c, 10 * SEC), 0);
    describe(c, &info);
    CU_ASSERT_EQUAL(info.segments, 3);
    CU_ASSERT_EQUAL(info.rows, 2500);
    double r = recall(c, 2500, NULL, 10, 0, 0, 0);
    printf("\n  IVF nlist 16 nprobe 6, 2 sealed + growing: recall@10 %.3f ", r);
    CU_ASSERT(r >= 0.9);
    stop();
}

/* HNSW: one sealed segment equals a direct HNSW built the same way;
 * recall@10 over 2 sealed + growing. */
static void test_hnsw_seal(void)
{
    float d2[10];
    uint64_t i2[10];
    struct qv_node_coll_info info;
    struct qv_node_opts no;

    qv_node_opts_default(&no);
    start(1000, NULL, 0);
    uint64_t c = create("hnsw", QV_NODE_HNSW);
    CU_ASSERT_EQUAL_FATAL(upsert_range(c, 0, 1000, NULL), 0);
    CU_ASSERT_EQUAL(qv_node_wait_builds(N, c, 10 * SEC), 0);
    describe(c, &info);
    CU_ASSERT_EQUAL(info.segments, 2);
    CU_ASSERT_EQUAL(info.sealed, 1);
    CU_ASSERT_EQUAL(info.growing_rows, 0);
    struct qv_hnsw_opts ho = { .dim = DIM, .metric = QV_METRIC_L2, .M = 8,
                               .ef_construction = 64, .ef_search = 40,
                               .seed = no.build_seed, .numa_node = -1,
                               .hugepages = QV_HUGE_OFF };
    struct qv_hnsw *h = qv_hnsw_build(&ho, 1000, F.base, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(h);
    unsigned bad = 0;
    for (unsigned q = 0; q < NQ; q++) {
        struct sreq s;
        CU_ASSERT_EQUAL_FATAL(search(c, query(q), 10, 0, 0, NULL, &s), 0);
        CU_ASSERT_EQUAL(qv_hnsw_search(h, query(q), 1, 10, 40, NULL, d2, i2), 0);
        for (unsigned j = 0; j < 10; j++)
            i2[j] = i2[j] == QV_ID_NONE ? QV_ID_NONE : BASE_ID + i2[j];
        bad += !same_knn(s.dist, s.ids, d2, i2, 10);
    }
    CU_ASSERT_EQUAL(bad, 0);
    qv_hnsw_free(h);
    CU_ASSERT_EQUAL_FATAL(upsert_range(c, 1000, 2000, NULL), 0);
    CU_ASSERT_EQUAL_FATAL(upsert_range(c, 2000, 2600, NULL), 0);
    CU_ASSERT_EQUAL(qv_node_wait_builds(N, c, 10 * SEC), 0);
    describe(c, &info);
    CU_ASSERT_EQUAL(info.segments, 3);
    CU_ASSERT_EQUAL(info.growing_rows, 600);
    double r = recall(c, 2600, NULL, 10, 0, 0, 0);
    printf("\n  HNSW M 8 ef 40, 2 sealed + growing: recall@10 %.3f ", r);
    CU_ASSERT(r >= 0.9);
    /* ef below k is raised; ef over 4096 refused */
    struct sreq s;
    CU_ASSERT_EQUAL(search(c, query(1), 50, 0, 0, NULL, &s), 0);
    CU_ASSERT(s.ids[49] != QV_ID_NONE);
    stop();
}

/* IVF_SQ8 and IVF_PQ seal, train and answer; PQ refine helps. */
static void test_sq8_pq(void)
{
    struct qv_node_coll_info info;

    start(1000, NULL, 0);
    uint64_t sq = create("sq8", QV_NODE_IVF_SQ8), pq = create("pq", QV_NODE_IVF_PQ);
    for (unsigned at = 0; at < 2000; at += 1000) {
        CU_ASSERT_EQUAL_FATAL(upsert_range(sq, at, at + 1000, NULL), 0);
        CU_ASSERT_EQUAL_FATAL(upsert_range(pq, at, at + 1000, NULL), 0);
    }
    CU_ASSERT_EQUAL(qv_node_wait_builds(N, sq, 10 * SEC), 0);
    CU_ASSERT_EQUAL(qv_node_wait_builds(N, pq, 10 * SEC), 0);
    describe(pq, &info);
    CU_ASSERT_EQUAL(info.trained, 1);
    CU_ASSERT_EQUAL(info.sealed, 2);
    double rs = recall(sq, 2000, NULL, 10, 0, 0, 0);
    double rp = recall(pq, 2000, NULL, 10, 0, 0, 0);
    double rr = recall(pq, 2000, NULL, 10, 0, 0, 8);
    printf("\n  recall@10: IVF_SQ8 %.3f, IVF_PQ m 8 x 4 bits %.3f, with refine 8 %.3f ",
           rs, rp, rr);
    CU_ASSERT(rs >= 0.85);
    CU_ASSERT(rp >= 0.3);
    CU_ASSERT(rr >= 0.9);
    CU_ASSERT(rr > rp);
    stop();
}

/* qv_node_seal flushes whatever the growing segment holds; an IVF build
 * of too few rows to train is a flat segment, and the answers stay exact. */
static void test_seal(void)
{
    struct qv_node_coll_info info;
    struct sreq s;
    float d[5];
    uint64_t ids[5];

    start(1000, NULL, 0);
    uint64_t f = create("f", QV_NODE_FLAT), v = create("v", QV_NODE_IVF);
    CU_ASSERT_EQUAL(qv_node_seal(N, f), 0);             /* empty */
    CU_ASSERT_EQUAL_FATAL(upsert_range(f, 0, 30, NULL), 0);
    CU_ASSERT_EQUAL_FATAL(upsert_range(v, 0, 30, NULL), 0);
    CU_ASSERT_EQUAL(qv_node_seal(N, f), 1);
    CU_ASSERT_EQUAL(qv_node_seal(N, v), 1);
    CU_ASSERT_EQUAL(qv_node_wait_builds(N, v, 10 * SEC), 0);
    describe(v, &info);
    CU_ASSERT_EQUAL(info.segments, 2);
    CU_ASSERT_EQUAL(info.sealed, 1);
    CU_ASSERT_EQUAL(info.trained, 0);                   /* 30 rows: a flat segment */
    CU_ASSERT_EQUAL(info.seal_at, 1000);
    CU_ASSERT_EQUAL_FATAL(upsert_range(f, 30, 40, NULL), 0);
    describe(f, &info);
    CU_ASSERT_EQUAL(info.segments, 2);
    CU_ASSERT_EQUAL(info.growing_rows, 10);
    for (unsigned q = 0; q < 5; q++) {
        brute(query(q), 30, NULL, 5, d, ids);
        CU_ASSERT_EQUAL(search(v, query(q), 5, 0, 0, NULL, &s), 0);
        CU_ASSERT(same_knn(s.dist, s.ids, d, ids, 5));
        brute(query(q), 40, NULL, 5, d, ids);
        CU_ASSERT_EQUAL(search(f, query(q), 5, 0, 0, NULL, &s), 0);
        CU_ASSERT(same_knn(s.dist, s.ids, d, ids, 5));
    }
    expect_err(qv_node_seal(N, 999), QV_ENOENT, "999");
    expect_err(qv_node_wait_builds(N, 999, 0), QV_ENOENT, "999");
    stop();
}

/* ---- writes ----------------------------------------------------------------- */

/* An upsert of a present id replaces it, before and after a seal. */
static void test_upsert_replaces(void)
{
    float far[DIM];
    struct sreq s;
    struct qv_node_coll_info info;
    float got[DIM];
    uint8_t found;

    for (unsigned d = 0; d < DIM; d++)
        far[d] = 5.0f + (float)d;
    start(600, NULL, 0);
    uint64_t c = create("h", QV_NODE_HNSW);
    CU_ASSERT_EQUAL_FATAL(upsert_range(c, 0, 400, NULL), 0);
    const float *v7 = F.base + 7 * DIM;
    for (int round = 0; round < 2; round++) {
        /* id BASE_ID + 7 moves far away: a query at its old place never
         * sees it; one at the new place finds it at distance 0, once */
        CU_ASSERT_EQUAL(upsert_one(c, BASE_ID + 7, far, 0, 0), 0);
        CU_ASSERT_EQUAL(search(c, v7, 50, 0, 0, NULL, &s), 0);
        for (unsigned j = 0; j < 50; j++)
            CU_ASSERT(s.ids[j] != BASE_ID + 7);
        CU_ASSERT_EQUAL(search(c, far, 10, 0, 0, NULL, &s), 0);
        CU_ASSERT_EQUAL(s.ids[0], BASE_ID + 7);
        CU_ASSERT_EQUAL(s.dist[0], 0.0f);
        for (unsigned j = 1; j < 10; j++)
            CU_ASSERT(s.ids[j] != BASE_ID + 7);
        CU_ASSERT_EQUAL(qv_node_get(N, c, 1, (uint64_t[]){ BASE_ID + 7 }, DIM, got, &found), 1);
        CU_ASSERT_EQUAL(memcmp(got, far, sizeof far), 0);
        /* and back */
        CU_ASSERT_EQUAL(upsert_one(c, BASE_ID + 7, v7, 0, 0), 0);
        CU_ASSERT_EQUAL(search(c, v7, 10, 0, 0, NULL, &s), 0);
        CU_ASSERT_EQUAL(s.ids[0], BASE_ID + 7);
        describe(c, &info);
        CU_ASSERT_EQUAL(info.rows, 400 + 200 * (unsigned)round);
        /* second round: rows sealed into HNSW first */
        CU_ASSERT_EQUAL_FATAL(upsert_range(c, 400, 600, NULL), 0);
        CU_ASSERT_EQUAL(qv_node_wait_builds(N, c, 10 * SEC), 0);
        describe(c, &info);
        CU_ASSERT_EQUAL(info.rows, 600);
        CU_ASSERT_EQUAL(info.sealed, 1);
    }
    stop();
}

/* Deletes hide ids; a sealed segment that loses half its rows is rebuilt
 * (compaction) and still hides them. */
static void test_delete(void)
{
    static uint8_t live[NB];
    static uint64_t del[NB];
    struct qv_node_coll_info info;
    uint64_t e0, e1;
    unsigned nd = 0;

    start(1000, NULL, 0);
    uint64_t c = create("ivf", QV_NODE_IVF);
    CU_ASSERT_EQUAL_FATAL(upsert_range(c, 0, 1200, &e0), 0);
    CU_ASSERT_EQUAL(qv_node_wait_builds(N, c, 10 * SEC), 0);
    for (unsigned i = 0; i < 1200; i++)
        live[i] = 1;
    /* every 5th row, plus an absent id and a repeat */
    for (unsigned i = 0; i < 1200; i += 5) {
        del[nd++] = BASE_ID + i;
        live[i] = 0;
    }
    del[nd++] = 42;
    del[nd++] = BASE_ID + 5;
    CU_ASSERT_EQUAL(qv_node_delete(N, c, nd, del, &e1), 240);
    CU_ASSERT_EQUAL(e1, e0 + 1);
    CU_ASSERT_EQUAL(qv_node_delete(N, c, 2, del, &e1), 0);      /* nothing: same epoch */
    CU_ASSERT_EQUAL(e1, e0 + 1);
    describe(c, &info);
    CU_ASSERT_EQUAL(info.rows, 960);
    CU_ASSERT_EQUAL(info.dead_rows, 240);
    unsigned bad = 0;
    for (unsigned q = 0; q < NQ; q++) {
        struct sreq s;
        float d[10];
        uint64_t ids[10];
        CU_ASSERT_EQUAL_FATAL(search(c, query(q), 10, 16, 0, NULL, &s), 0);   /* all lists */
        brute(query(q), 1200, live, 10, d, ids);
        bad += !same_knn(s.dist, s.ids, d, ids, 10);
    }
    CU_ASSERT_EQUAL(bad, 0);
    /* more than half of the sealed segment gone: rebuilt from its live rows */
    nd = 0;
    for (unsigned i = 1; i < 1000; i += 5)
        for (unsigned j = 0; j < 3; j++) {
            del[nd++] = BASE_ID + i + j;
            live[i + j] = 0;
        }
    CU_ASSERT_EQUAL(qv_node_delete(N, c, nd, del, NULL), (long)nd);
    CU_ASSERT_EQUAL(qv_node_wait_builds(N, c, 10 * SEC), 0);
    describe(c, &info);
    CU_ASSERT_EQUAL(info.rows, 960 - nd);
    CU_ASSERT_EQUAL(info.dead_rows, 0);         /* compacted (the growing has none) */
    CU_ASSERT_EQUAL(info.sealed, 1);
    bad = 0;
    for (unsigned q = 0; q < NQ; q++) {
        struct sreq s;
        float d[10];
        uint64_t ids[10];
        CU_ASSERT_EQUAL_FATAL(search(c, query(q), 10, 16, 0, NULL, &s), 0);
        brute(query(q), 1200, live, 10, d, ids);
        bad += !same_knn(s.dist, s.ids, d, ids, 10);
    }
    CU_ASSERT_EQUAL(bad, 0);
    /* GET after the rebuild: the survivors, not the dead */
    uint64_t gids[3] = { BASE_ID + 0, BASE_ID + 4, BASE_ID + 1101 };
    float got[3 * DIM];
    uint8_t found[3];
    CU_ASSERT_EQUAL(qv_node_get(N, c, 3, gids, DIM, got, found), 2);
    CU_ASSERT(!found[0] && found[1] && found[2]);
    CU_ASSERT_EQUAL(memcmp(got + DIM, F.base + 4 * DIM, DIM * sizeof(float)), 0);
    CU_ASSERT_EQUAL(got[0], 0.0f);
    /* delete everything: the sealed segment goes */
    nd = 0;
    for (unsigned i = 0; i < 1200; i++)
        del[nd++] = BASE_ID + i;
    CU_ASSERT_EQUAL(qv_node_delete(N, c, nd, del, NULL), (long)(info.rows));
    CU_ASSERT_EQUAL(qv_node_wait_builds(N, c, 10 * SEC), 0);
    describe(c, &info);
    CU_ASSERT_EQUAL(info.rows, 0);
    CU_ASSERT_EQUAL(info.segments, 1);
    struct sreq s;
    CU_ASSERT_EQUAL(search(c, query(0), 5, 0, 0, NULL, &s), 0);
    CU_ASSERT_EQUAL(s.ids[0], QV_ID_NONE);
    stop();
}

static void test_get(void)
{
    float v[2 * DIM], got[3 * DIM];
    uint64_t ids[2] = { 10, 20 }, ask[3] = { 20, 30, 10 };
    int64_t col[2] = { 1, 2 };
    uint8_t found[3];

    start(1000, NULL, 0);
    struct qv_node_coll_spec s = spec_of("cos", QV_NODE_FLAT);
    s.metric = QV_METRIC_COSINE;
    uint64_t c;
    CU_ASSERT_EQUAL_FATAL(qv_node_create_collection(N, &s, &c), 0);
    for (unsigned d = 0; d < 2 * DIM; d++)
        v[d] = (float)d - 3.5f;                 /* not unit length */
    struct qv_node_rows r = { .n = 2, .dim = DIM, .nattrs = 2, .ids = ids, .vectors = v,
                              .attrs = { col, col } };
    CU_ASSERT_EQUAL_FATAL(qv_node_upsert(N, c, &r, NULL), 0);
    memset(got, 0xff, sizeof got);
    CU_ASSERT_EQUAL(qv_node_get(N, c, 3, ask, DIM, got, found), 2);
    CU_ASSERT(found[0] == 1 && found[1] == 0 && found[2] == 1);
    CU_ASSERT_EQUAL(memcmp(got, v + DIM, DIM * sizeof(float)), 0);   /* as given */
    CU_ASSERT_EQUAL(memcmp(got + 2 * DIM, v, DIM * sizeof(float)), 0);
    for (unsigned d = 0; d < DIM; d++)
        CU_ASSERT_EQUAL(got[DIM + d], 0.0f);
    expect_err(qv_node_get(N, c, 3, ask, DIM + 1, got, found), QV_EINVAL, "dim = 17");
    expect_err(qv_node_get(N, c, 0, ask, DIM, got, found), QV_EINVAL, "n = 0");
    expect_err(qv_node_get(N, c, 3, NULL, DIM, got, found), QV_EINVAL, "ids is NULL");
    expect_err(qv_node_get(N, 999, 3, ask, DIM, got, found), QV_ENOENT, "999");
    /* a cosine search: 1 - cos of the stored vector */
    struct sreq sr;
    CU_ASSERT_EQUAL(search(c, v, 2, 0, 0, NULL, &sr), 0);
    CU_ASSERT_EQUAL(sr.ids[0], 10);
    CU_ASSERT(fabsf(sr.dist[0]) < 1e-5f);
    stop();
}

/* Filters across segments equal brute force over the passing rows. */
static void test_filters(void)
{
    static uint8_t pass[NB];
    static const char *const filters[] = {
        "color = 3",
        "color in (1, 2) and size between 10 and 60",
        "not color = 0 or size = 99",
        "size between 200 and 300",             /* nothing passes */
    };

    start(500, NULL, 0);
    uint64_t c = create("f", QV_NODE_FLAT), h = create("h", QV_NODE_HNSW);
    for (unsigned at = 0; at < 1800; at += 700) {     /* 2 sealed + 400 growing */
        CU_ASSERT_EQUAL_FATAL(upsert_range(c, at, at + 700 < 1800 ? at + 700 : 1800, NULL), 0);
        CU_ASSERT_EQUAL_FATAL(upsert_range(h, at, at + 700 < 1800 ? at + 700 : 1800, NULL), 0);
    }
    CU_ASSERT_EQUAL(qv_node_wait_builds(N, h, 10 * SEC), 0);
    struct qv_node_coll_info info;
    describe(h, &info);
    CU_ASSERT_EQUAL(info.segments, 3);
    CU_ASSERT_EQUAL(info.growing_rows, 400);
    for (unsigned f = 0; f < 4; f++) {
        unsigned npass = 0;
        for (unsigned i = 0; i < 1800; i++) {
            int64_t col = F.color[i], sz = F.size[i];
            pass[i] = f == 0 ? col == 3
                    : f == 1 ? (col == 1 || col == 2) && sz >= 10 && sz <= 60
                    : f == 2 ? !(col == 0) || sz == 99
                    : 0;
            npass += pass[i];
        }
        unsigned bad = 0, wrong = 0, hit = 0;
        for (unsigned q = 0; q < NQ; q++) {
            struct sreq s, t;
            float d[10];
            uint64_t ids[10];
            CU_ASSERT_EQUAL_FATAL(search(c, query(q), 10, 0, 0, filters[f], &s), 0);
            CU_ASSERT_EQUAL_FATAL(search(h, query(q), 10, 0, 100, filters[f], &t), 0);
            brute(query(q), 1800, pass, 10, d, ids);
            bad += !same_knn(s.dist, s.ids, d, ids, 10);
            for (unsigned j = 0; j < 10; j++)
                if (t.ids[j] != QV_ID_NONE)
                    wrong += !pass[t.ids[j] - BASE_ID];
            hit += overlap(t.ids, ids, 10);
        }
        CU_ASSERT_EQUAL(bad, 0);
        CU_ASSERT_EQUAL(wrong, 0);
        if (npass)
            CU_ASSERT((double)hit / (NQ * 10) >= 0.9);
    }
    /* filters the transport must refuse, naming the fault */
    struct sreq s;
    expect_err(submit(c, query(0), 5, 0, 0, "colour = 3", &s), QV_EINVAL, "filter");
    expect_err(submit(c, query(0), 5, 0, 0, "color = ", &s), QV_EINVAL, "filter");
    char longf[1100];
    memset(longf, ' ', sizeof longf - 1);
    longf[sizeof longf - 1] = '\0';
    expect_err(submit(c, query(0), 5, 0, 0, longf, &s), QV_EINVAL, "longer than 1024");
    stop();
}

/* A write bumps the epoch; the cached answer misses afterwards. */
static void test_epoch_and_cache(void)
{
    struct sreq a, b, c2;
    uint64_t e;
    float q[DIM];

    start(1000, NULL, 0);
    uint64_t c = create("f", QV_NODE_FLAT);
    CU_ASSERT_EQUAL_FATAL(upsert_range(c, 0, 300, &e), 0);
    CU_ASSERT_EQUAL(e, 1);
    memcpy(q, query(3), sizeof q);
    q[0] += 10.0f;                      /* far from everything */
    CU_ASSERT_EQUAL(search(c, q, 5, 0, 0, NULL, &a), 0);
    CU_ASSERT_EQUAL(a.r.flags, 0);
    CU_ASSERT_EQUAL(search(c, q, 5, 0, 0, NULL, &b), 0);
    CU_ASSERT_EQUAL(b.r.flags, QV_SERVICE_CACHED);
    CU_ASSERT_EQUAL(upsert_one(c, 77, q, 0, 0), 0);
    struct qv_node_coll_info info;
    describe(c, &info);
    CU_ASSERT_EQUAL(info.epoch, 2);
    CU_ASSERT_EQUAL(search(c, q, 5, 0, 0, NULL, &c2), 0);
    CU_ASSERT_EQUAL(c2.r.flags, 0);                 /* searched again */
    CU_ASSERT_EQUAL(c2.ids[0], 77);
    CU_ASSERT_EQUAL(c2.ids[1], a.ids[0]);
    CU_ASSERT_EQUAL(qv_node_delete(N, c, 1, (uint64_t[]){ 77 }, &e), 1);
    CU_ASSERT_EQUAL(e, 3);
    CU_ASSERT_EQUAL(search(c, q, 5, 0, 0, NULL, &c2), 0);
    CU_ASSERT_EQUAL(c2.r.flags, 0);
    CU_ASSERT_EQUAL(c2.ids[0], a.ids[0]);
    stop();
}

/* Every UPSERT error names the field and applies nothing; allocation
 * failures anywhere apply nothing either. */
static void test_upsert_errors(void)
{
    static uint64_t ids[8];
    static float v[8 * DIM];
    static int64_t col[8];
    struct qv_node_coll_info info;
    uint64_t e;

    start(1000, NULL, 0);
    uint64_t c = create("f", QV_NODE_FLAT);
    CU_ASSERT_EQUAL_FATAL(upsert_range(c, 0, 100, &e), 0);
    for (unsigned i = 0; i < 8; i++)
        ids[i] = 500 + i;
    memcpy(v, F.base, sizeof v);
    struct qv_node_rows ok = { .n = 8, .dim = DIM, .nattrs = 2, .ids = ids, .vectors = v,
                               .attrs = { col, col } }, r;
    expect_err(qv_node_upsert(N, c, NULL, NULL), QV_EINVAL, "rows is NULL");
    r = ok; r.n = 0;
    expect_err(qv_node_upsert(N, c, &r, NULL), QV_EINVAL, "n = 0");
    r = ok; r.n = QV_NODE_MAX_UPSERT + 1;
    expect_err(qv_node_upsert(N, c, &r, NULL), QV_EINVAL, "n = 65537");
    r = ok; r.dim = 8;
    expect_err(qv_node_upsert(N, c, &r, NULL), QV_EINVAL, "dim = 8");
    r = ok; r.nattrs = 1;
    expect_err(qv_node_upsert(N, c, &r, NULL), QV_EINVAL, "nattrs = 1");
    r = ok; r.ids = NULL;
    expect_err(qv_node_upsert(N, c, &r, NULL), QV_EINVAL, "ids is NULL");
    r = ok; r.vectors = NULL;
    expect_err(qv_node_upsert(N, c, &r, NULL), QV_EINVAL, "vectors is NULL");
    r = ok; r.attrs[1] = NULL;
    expect_err(qv_node_upsert(N, c, &r, NULL), QV_EINVAL, "attribute 1 ('size')");
    ids[6] = QV_ID_NONE;
    expect_err(qv_node_upsert(N, c, &ok, NULL), QV_EINVAL, "ids[6] = 2^64-1");
    ids[6] = 506;
    v[5 * DIM + 3] = NAN;
    expect_err(qv_node_upsert(N, c, &ok, NULL), QV_EINVAL, "vectors[5][3]");
    v[5 * DIM + 3] = INFINITY;
    expect_err(qv_node_upsert(N, c, &ok, NULL), QV_EINVAL, "vectors[5][3]");
    v[5 * DIM + 3] = 0.5f;
    ids[7] = 502;
    expect_err(qv_node_upsert(N, c, &ok, NULL), QV_EINVAL, "ids[7] = 502 repeats ids[2]");
    ids[7] = 507;
    expect_err(qv_node_upsert(N, 424242, &ok, NULL), QV_ENOENT, "424242");
    describe(c, &info);
    CU_ASSERT_EQUAL(info.rows, 100);
    CU_ASSERT_EQUAL(info.epoch, 1);
    expect_err((int)qv_node_delete(N, c, 3, NULL, NULL), QV_EINVAL, "ids is NULL");
    expect_err((int)qv_node_delete(N, 424242, 1, ids, NULL), QV_ENOENT, "DELETE");

    /* injected allocation failures: nothing applied, until one succeeds
     * (8 new ids, 2 of them replacing rows 0 and 1) */
    ids[0] = BASE_ID + 0;
    ids[1] = BASE_ID + 1;
    long n, fails = 0;
    int rc = -1;
    for (n = 0; n < 1000 && rc != 0; n++) {
        qv_alloc_fail_after(n);
        rc = qv_node_upsert(N, c, &ok, &e);
        qv_alloc_fail_after(-1);
        if (rc != 0) {
            fails++;
            CU_ASSERT_EQUAL(rc, QV_ENOMEM);
            describe(c, &info);
            CU_ASSERT_EQUAL(info.rows, 100);
            CU_ASSERT_EQUAL(info.epoch, 1);
        }
    }
    CU_ASSERT_EQUAL(rc, 0);
    CU_ASSERT(fails >= 3);
    describe(c, &info);
    CU_ASSERT_EQUAL(info.rows, 106);
    CU_ASSERT_EQUAL(info.epoch, 2);
    struct sreq s;
    CU_ASSERT_EQUAL(search(c, F.base, 3, 0, 0, NULL, &s), 0);
    CU_ASSERT_EQUAL(s.ids[0], BASE_ID + 0);     /* v[0] is base row 0 */
    CU_ASSERT(s.ids[1] != BASE_ID + 0);
    /* deletes under failures: all or nothing */
    rc = -1;
    for (n = 0; n < 100 && rc < 0; n++) {
        qv_alloc_fail_after(n);
        rc = (int)qv_node_delete(N, c, 8, ids, NULL);
        qv_alloc_fail_after(-1);
        describe(c, &info);
        CU_ASSERT_EQUAL(info.rows, rc < 0 ? 106 : 98);
    }
    CU_ASSERT_EQUAL(rc, 8);
    stop();
}

static void test_search_errors(void)
{
    struct sreq s;

    start(1000, NULL, 0);
    uint64_t f = create("f", QV_NODE_FLAT), v = create("v", QV_NODE_IVF),
             h = create("h", QV_NODE_HNSW);
    struct qv_node_search_args a = { .dim = DIM + 1, .k = 5 };
    memset(&s, 0, sizeof s);
    expect_err(qv_node_search_prepare(N, f, &a, &s.r), QV_EINVAL, "dim = 17");
    expect_err(qv_node_search_prepare(N, f, NULL, &s.r), QV_EINVAL, "args");
    expect_err(qv_node_search_prepare(N, 999, &a, &s.r), QV_ENOENT, "999");
    expect_err(submit(f, query(0), 0, 0, 0, NULL, &s), QV_EINVAL, "k = 0");
    expect_err(submit(f, query(0), 1025, 0, 0, NULL, &s), QV_EINVAL, "k = 1025");
    expect_err(submit(v, query(0), 5, 17, 0, NULL, &s), QV_EINVAL, "nprobe = 17");
    expect_err(submit(h, query(0), 10, 0, 5, NULL, &s), QV_EINVAL, "ef = 5");
    expect_err(submit(h, query(0), 10, 0, 4097, NULL, &s), QV_EINVAL, "ef = 4097");
    /* the other type's parameter is ignored (and zeroed) */
    CU_ASSERT_EQUAL(submit(f, query(0), 5, 3, 7, NULL, &s), 0);
    CU_ASSERT(wait_done(&s));
    CU_ASSERT_EQUAL(s.r.nprobe, 0);
    CU_ASSERT_EQUAL(s.r.ef, 0);
    /* a NaN query: the service refuses it */
    float q[DIM];
    memcpy(q, query(0), sizeof q);
    q[2] = NAN;
    expect_err(submit(f, q, 5, 0, 0, NULL, &s), QV_EINVAL, "query[2]");
    stop();
}

/* ---- concurrency ---------------------------------------------------------- */

struct writer {
    uint64_t coll;
    unsigned from, to;              /* base rows it owns */
    unsigned deleted;               /* of them, deleted at the end */
    int rc;
    _Atomic int finished;
};

static _Atomic unsigned searches_done;      /* completed by the searcher */

/* Before its op-th write: let the searcher complete 2 searches per write,
 * so that writes and searches interleave however the threads are
 * scheduled (at most 10 s). */
static void pace(unsigned op)
{
    int64_t give_up = qv_now_ns() + 10 * SEC;

    while (atomic_load(&searches_done) < 2 * op && qv_now_ns() < give_up)
        sched_yield();
}

/* Upsert its rows in chunks, re-upsert (replace) half of them three
 * times, delete a tenth. */
static void *writer_main(void *arg)
{
    struct writer *w = arg;
    uint64_t ids[64];
    int64_t col[64];
    unsigned op = 0;

    memset(col, 0, sizeof col);
    for (int pass = 0; pass < 4 && w->rc == 0; pass++) {
        for (unsigned at = w->from; at < w->to && w->rc == 0; at += 50) {
            unsigned n = w->to - at < 50 ? w->to - at : 50;
            if (pass > 0 && (at / 50) % 2 == (unsigned)pass % 2)
                continue;
            for (unsigned i = 0; i < n; i++)
                ids[i] = BASE_ID + at + i;
            struct qv_node_rows r = { .n = n, .dim = DIM, .nattrs = 2, .ids = ids,
                                      .vectors = F.base + (size_t)at * DIM,
                                      .attrs = { col, col } };
            pace(op++);
            w->rc = qv_node_upsert(N, w->coll, &r, NULL);
        }
    }
    for (unsigned at = w->from; at < w->to && w->rc == 0; at += 10) {
        uint64_t id = BASE_ID + at;
        pace(op++);
        long got = qv_node_delete(N, w->coll, 1, &id, NULL);
        if (got != 1)
            w->rc = -1;
        w->deleted++;
    }
    atomic_store(&w->finished, 1);
    return NULL;
}

static void test_concurrent(void)
{
    enum { INFLIGHT = 16 };
    static struct sreq s[INFLIGHT];
    static float qbuf[INFLIGHT][DIM];   /* distinct queries: no cache hits */
    struct writer w[2];
    pthread_t t[2];
    unsigned searched = 0, dup = 0, failed = 0, cached = 0, during = 0;

    start(400, NULL, 0);
    atomic_store(&searches_done, 0);
    submit_cls = QV_BATCH_BULK;         /* a 1 s budget: slow builds (sanitizers) do
                                           not time searches out */
    uint64_t c = create("hc", QV_NODE_HNSW);
    w[0] = (struct writer){ .coll = c, .from = 0, .to = 1400 };
    w[1] = (struct writer){ .coll = c, .from = 1400, .to = 2800 };
    atomic_init(&w[0].finished, 0);
    atomic_init(&w[1].finished, 0);
    for (unsigned i = 0; i < 2; i++)
        CU_ASSERT_EQUAL_FATAL(pthread_create(&t[i], NULL, writer_main, &w[i]), 0);
    /* searches with up to 16 in flight while they write */
    for (unsigned i = 0; i < INFLIGHT; i++)
        atomic_init(&s[i].done, 1);
    int64_t until = qv_now_ns() + 20 * SEC;
    for (unsigned n = 0; qv_now_ns() < until; n++) {
        struct sreq *r = &s[n % INFLIGHT];
        while (!atomic_load_explicit(&r->done, memory_order_acquire))
            sched_yield();
        if (n >= INFLIGHT) {
            searched++;
            if (r->r.status != 0) {
                failed++;
                fprintf(stderr, "\n  search %u: status %d\n", n, r->r.status);
            }
            cached += (r->r.flags & QV_SERVICE_CACHED) != 0;
            during += !atomic_load(&w[0].finished) || !atomic_load(&w[1].finished);
            atomic_store(&searches_done, searched);
            for (unsigned a = 0; a < 20 && r->r.status == 0; a++)
                for (unsigned b = a + 1; b < 20; b++)
                    dup += r->ids[a] != QV_ID_NONE && r->ids[a] == r->ids[b];
        }
        for (unsigned d = 0; d < DIM; d++)
            qbuf[n % INFLIGHT][d] = query(n)[d] + 1e-3f * (float)(n % 997) * (d == n % DIM);
        int rc = submit(c, qbuf[n % INFLIGHT], 20, 0, 0, NULL, r);
        if (rc != 0) {
            atomic_store(&r->done, 1);
            failed += rc != QV_EBUSY;
        }
        if (searched > 2000 && atomic_load(&w[0].finished) && atomic_load(&w[1].finished))
            break;
    }
    for (unsigned i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    for (unsigned i = 0; i < INFLIGHT; i++)
        CU_ASSERT(wait_done(&s[i]));
    submit_cls = QV_BATCH_INTERACTIVE;
    CU_ASSERT_EQUAL(w[0].rc, 0);
    CU_ASSERT_EQUAL(w[1].rc, 0);
    CU_ASSERT_EQUAL(dup, 0);
    CU_ASSERT_EQUAL(failed, 0);
    CU_ASSERT(searched > 100);
    CU_ASSERT_EQUAL(qv_node_wait_builds(N, c, 20 * SEC), 0);
    struct qv_node_coll_info info;
    describe(c, &info);
    CU_ASSERT_EQUAL(info.rows, 2800 - w[0].deleted - w[1].deleted);
    printf("\n  %u searches (%u cached, %u while writing) with 2 writers' upserts, "
           "replaces and deletes; %u segments ", searched, cached, during, info.segments);
    CU_ASSERT(during >= 200);
    /* counts add up: every live id found by GET, every deleted one not */
    static uint64_t all[2800];
    static float got[2800 * DIM];
    static uint8_t found[2800];
    for (unsigned i = 0; i < 2800; i++)
        all[i] = BASE_ID + i;
    CU_ASSERT_EQUAL(qv_node_get(N, c, 2800, all, DIM, got, found), (long)info.rows);
    unsigned badget = 0;
    for (unsigned i = 0; i < 2800; i++)
        badget += found[i] != (i % 10 != 0) ||
                  (found[i] && memcmp(got + (size_t)i * DIM, F.base + (size_t)i * DIM,
                                      DIM * sizeof(float)) != 0);
    CU_ASSERT_EQUAL(badget, 0);
    static uint8_t live[2800];
    for (unsigned i = 0; i < 2800; i++)
        live[i] = i % 10 != 0;
    double r = recall(c, 2800, live, 10, 0, 0, 0);
    printf("recall@10 %.3f ", r);
    CU_ASSERT(r >= 0.9);
    stop();
}

/* ---- drop and free -------------------------------------------------------- */

struct dropper {
    uint64_t coll;
    _Atomic int returned;
    int rc;
};

static void *drop_main(void *arg)
{
    struct dropper *d = arg;
    d->rc = qv_node_drop_collection(N, d->coll);
    atomic_store(&d->returned, 1);
    return NULL;
}

/* Searches queued for a collection complete (searched) before its drop
 * returns; later ones are refused. */
static void test_drop_completes_queued(void)
{
    static struct sreq s[20];
    struct dropper d;
    pthread_t t;

    start(1000, NULL, 0);
    uint64_t c = create("f", QV_NODE_FLAT);
    CU_ASSERT_EQUAL_FATAL(upsert_range(c, 0, 500, NULL), 0);
    qv_service_pause(SVC);
    submit_cls = QV_BATCH_BULK;         /* a 1 s budget: searched by then at the latest */
    for (unsigned i = 0; i < 20; i++)
        CU_ASSERT_EQUAL(submit(c, query(i), 5, 0, 0, NULL, &s[i]), 0);
    submit_cls = QV_BATCH_INTERACTIVE;
    d = (struct dropper){ .coll = c };
    atomic_init(&d.returned, 0);
    CU_ASSERT_EQUAL_FATAL(pthread_create(&t, NULL, drop_main, &d), 0);
    sleep_ns(50 * MS);
    CU_ASSERT_EQUAL(atomic_load(&d.returned), 0);       /* waits for them */
    struct qv_node_coll_info info;
    expect_err(qv_node_describe(N, c, &info), QV_ENOENT, "");   /* gone at once */
    int64_t t0 = qv_now_ns();
    qv_service_resume(SVC);
    pthread_join(t, NULL);
    CU_ASSERT(qv_now_ns() - t0 < 1500 * MS);
    CU_ASSERT_EQUAL(d.rc, 0);
    unsigned ok = 0;
    for (unsigned i = 0; i < 20; i++)
        ok += atomic_load(&s[i].done) && s[i].r.status == 0 && s[i].ids[0] != QV_ID_NONE;
    CU_ASSERT_EQUAL(ok, 20);
    struct sreq late;
    memset(&late, 0, sizeof late);
    late.r = s[0].r;
    late.r.dist = late.dist;
    late.r.ids = late.ids;
    late.r.done_arg = &late;
    CU_ASSERT_EQUAL(qv_service_submit(SVC, &late.r), QV_ENOENT);
    stop();
}

static char *render_metrics(void)
{
    size_t need = 0, len;
    char *buf;

    CU_ASSERT_EQUAL(qv_service_render_metrics(SVC, NULL, 0, &need), QV_ENOSPC);
    buf = malloc(need + 65536);
    if (buf != NULL && qv_service_render_metrics(SVC, buf, need + 65536, &len) != 0)
        buf[0] = '\0';
    return buf;
}

/* 200 cycles of CREATE, UPSERT, SEARCH, DROP under [batcher] and
 * [server] max_collections 4 with three other collections live: every
 * CREATE succeeds (a DROP frees the collection's place in the service),
 * the name is reused, ids keep growing and are never reused, and /metrics
 * shows the live collections only.  The limits bound live collections:
 * a fourth one fits, a fifth is QV_ENOSPC. */
static void test_create_drop_cycles(void)
{
    struct qv_mem_stats m0, m1;
    char lab[64];
    unsigned bad = 0;

    start_with(1000, NULL, 0, 4);
    uint64_t keep[3] = { create("k0", QV_NODE_FLAT), create("k1", QV_NODE_HNSW),
                         create("k2", QV_NODE_IVF) };
    CU_ASSERT_EQUAL_FATAL(upsert_range(keep[0], 0, 300, NULL), 0);
    uint64_t prev = keep[2], first = 0;
    qv_mem_stats(QV_MEM_SERVER, &m0);
    for (unsigned i = 0; i < 200; i++) {
        struct qv_node_coll_spec sp = spec_of("cycle", QV_NODE_FLAT);
        struct sreq s;
        uint64_t c = 0;
        unsigned row = (i * 37) % 2000, from = row - row % 100;
        int rc = qv_node_create_collection(N, &sp, &c);
        if (rc != 0) {
            fprintf(stderr, "\n  cycle %u: create: %s\n", i, qv_errmsg());
            CU_FAIL_FATAL("CREATE after DROP");
        }
        if (first == 0)
            first = c;
        bad += c <= prev;                       /* ids grow, never reused */
        prev = c;
        bad += upsert_range(c, from, from + 100, NULL) != 0;
        bad += search(c, F.base + (size_t)row * DIM, 1, 0, 0, NULL, &s) != 0;
        bad += s.ids[0] != BASE_ID + row;
        if (i % 10 == 0) {                      /* the others still answer */
            bad += search(keep[0], F.base, 1, 0, 0, NULL, &s) != 0;
            bad += s.ids[0] != BASE_ID;
        }
        bad += qv_node_drop_collection(N, c) != 0;
        bad += qv_service_epoch(SVC, c) != UINT64_MAX;         /* gone from the service */
        bad += search(c, query(0), 1, 0, 0, NULL, &s) != QV_ENOENT;
    }
    CU_ASSERT_EQUAL(bad, 0);
    qv_mem_stats(QV_MEM_SERVER, &m1);
    CU_ASSERT_EQUAL(m1.live_blocks, m0.live_blocks);
    char *text = render_metrics();
    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    snprintf(lab, sizeof lab, "collection=\"%llu\"", (unsigned long long)first);
    CU_ASSERT_PTR_NULL(strstr(text, lab));
    snprintf(lab, sizeof lab, "collection=\"%llu\"", (unsigned long long)prev);
    CU_ASSERT_PTR_NULL(strstr(text, lab));
    snprintf(lab, sizeof lab, "collection=\"%llu\"", (unsigned long long)keep[0]);
    CU_ASSERT_PTR_NOT_NULL(strstr(text, lab));
    free(text);
    uint64_t last = create("k3", QV_NODE_FLAT);
    CU_ASSERT(last > prev);
    struct qv_node_coll_spec sp = spec_of("k4", QV_NODE_FLAT);
    uint64_t none;
    expect_err(qv_node_create_collection(N, &sp, &none), QV_ENOSPC, "max_collections");
    stop();
}

/* Free while builds are queued and running: no leak, no crash. */
static void test_free_during_build(void)
{
    struct qv_mem_stats m0, m1;

    qv_mem_stats(QV_MEM_SERVER, &m0);
    start(500, NULL, 0);
    uint64_t h = create("h", QV_NODE_HNSW), v = create("v", QV_NODE_IVF);
    for (unsigned at = 0; at < 2000; at += 500) {
        CU_ASSERT_EQUAL_FATAL(upsert_range(h, at, at + 500, NULL), 0);
        CU_ASSERT_EQUAL_FATAL(upsert_range(v, at, at + 500, NULL), 0);
    }
    struct qv_node_coll_info info;
    describe(h, &info);
    CU_ASSERT(info.pending >= 1);               /* queued or building */
    stop();
    qv_mem_stats(QV_MEM_SERVER, &m1);
    CU_ASSERT_EQUAL(m1.live_blocks, m0.live_blocks);
    CU_ASSERT_EQUAL(m1.live_bytes, m0.live_bytes);
}

/* ---- durability: recovery from [storage] data_dir ---------------------------- */

static char *mk_data_dir(void)
{
    static char tmpl[64];
    snprintf(tmpl, sizeof tmpl, "/tmp/qv_node_wal_XXXXXX");
    return mkdtemp(tmpl);
}

static void rm_data_dir(const char *dir)
{
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CU_ASSERT_EQUAL(system(cmd), 0);
}

/* Writes, a drop, a stop; a node on the same directory has the same
 * collections (ids, names, specs), rows, deleted ids gone, the same exact
 * answers; dropped ids are not given out again; a collection created
 * after the restart survives the next one. */
static void test_recover(void)
{
    char *dir = mk_data_dir();
    CU_ASSERT_PTR_NOT_NULL_FATAL(dir);
    DATA_DIR = dir;
    start(500, NULL, 0);
    uint64_t f = create("f", QV_NODE_FLAT), h = create("h", QV_NODE_HNSW),
             g = create("gone", QV_NODE_IVF);
    CU_ASSERT_EQUAL_FATAL(upsert_range(f, 0, 1200, NULL), 0);
    CU_ASSERT_EQUAL_FATAL(upsert_range(h, 0, 1200, NULL), 0);
    CU_ASSERT_EQUAL_FATAL(upsert_range(g, 0, 100, NULL), 0);
    uint64_t del[50];
    for (unsigned i = 0; i < 50; i++)
        del[i] = BASE_ID + 7 * i;
    CU_ASSERT_EQUAL(qv_node_delete(N, f, 50, del, NULL), 50);
    CU_ASSERT_EQUAL(qv_node_delete(N, f, 50, del, NULL), 0);      /* nothing: not logged */
    CU_ASSERT_EQUAL(upsert_one(f, BASE_ID + 7, F.base + 8 * DIM, 5, 6), 0);  /* back, moved */
    CU_ASSERT_EQUAL(qv_node_drop_collection(N, g), 0);
    struct qv_node_coll_info fi, hi;
    describe(f, &fi);
    describe(h, &hi);
    static struct sreq s[4];
    uint64_t before[4][10];
    for (unsigned q = 0; q < 4; q++) {
        CU_ASSERT_EQUAL_FATAL(search(f, F.queries + q * DIM, 10, 0, 0, NULL, &s[q]), 0);
        memcpy(before[q], s[q].ids, sizeof before[q]);
    }
    stop();

    start(500, NULL, 0);
    struct qv_node_coll_info fj, hj;
    describe(f, &fj);
    describe(h, &hj);
    CU_ASSERT_STRING_EQUAL(fj.name, "f");
    CU_ASSERT_STRING_EQUAL(hj.name, "h");
    CU_ASSERT_EQUAL(fj.rows, fi.rows);
    CU_ASSERT_EQUAL(fj.rows, 1200 - 50 + 1);
    CU_ASSERT_EQUAL(hj.rows, hi.rows);
    CU_ASSERT_EQUAL(hj.index, QV_NODE_HNSW);
    CU_ASSERT_EQUAL(hj.hnsw_m, hi.hnsw_m);
    CU_ASSERT_EQUAL(fj.nattrs, 2);
    CU_ASSERT_STRING_EQUAL(fj.attrs[1], "size");
    CU_ASSERT_EQUAL(qv_node_describe(N, g, &hj), QV_ENOENT);
    float v[DIM];
    uint8_t found = 0;
    CU_ASSERT_EQUAL(qv_node_get(N, f, 1, &del[2], DIM, v, &found), 1 - 1);
    CU_ASSERT_EQUAL(found, 0);
    CU_ASSERT_EQUAL(qv_node_get(N, f, 1, &del[1], DIM, v, &found), 1);
    CU_ASSERT_EQUAL(memcmp(v, F.base + 8 * DIM, sizeof v), 0);      /* the moved row */
    for (unsigned q = 0; q < 4; q++) {
        CU_ASSERT_EQUAL_FATAL(search(f, F.queries + q * DIM, 10, 0, 0, NULL, &s[q]), 0);
        CU_ASSERT_EQUAL(memcmp(before[q], s[q].ids, sizeof before[q]), 0);
    }
    uint64_t n = create("new", QV_NODE_FLAT);
    CU_ASSERT(n > g);                       /* the dropped id is not given out again */
    CU_ASSERT_EQUAL(upsert_range(n, 0, 10, NULL), 0);
    stop();
    start(500, NULL, 0);
    struct qv_node_coll_info ni;
    describe(n, &ni);
    CU_ASSERT_EQUAL(ni.rows, 10);
    stop();
    DATA_DIR = NULL;
    rm_data_dir(dir);
}

/* An allocation failing at every step of an upsert (log, then apply):
 * whatever was acknowledged is there after a restart and nothing that
 * failed is (a write that failed after its record was logged leaves an
 * ABORT record that recovery honours). */
static void test_recover_enomem(void)
{
    char *dir = mk_data_dir();
    CU_ASSERT_PTR_NOT_NULL_FATAL(dir);
    DATA_DIR = dir;
    start(100000, NULL, 0);
    uint64_t f = create("f", QV_NODE_FLAT);
    static uint8_t acked[64];
    unsigned failed = 0, ok = 0;
    for (long n = 0; n < 64; n++) {
        uint64_t id = BASE_ID + (uint64_t)n;
        qv_alloc_fail_after(n / 2);
        int rc = upsert_one(f, id, F.base + (size_t)n * DIM, n, n);
        qv_alloc_fail_after(-1);
        CU_ASSERT(rc == 0 || rc == QV_ENOMEM);
        acked[n] = rc == 0;
        ok += rc == 0;
        failed += rc != 0;
    }
    CU_ASSERT(failed > 0 && ok > 0);
    stop();
    start(100000, NULL, 0);
    unsigned bad = 0;
    for (long n = 0; n < 64; n++) {
        uint64_t id = BASE_ID + (uint64_t)n;
        float v[DIM];
        uint8_t found = 0;
        CU_ASSERT(qv_node_get(N, f, 1, &id, DIM, v, &found) >= 0);
        bad += found != acked[n];
    }
    CU_ASSERT_EQUAL(bad, 0);
    printf("\n    %u upserts acknowledged, %u failed at an injected ENOMEM; after the restart "
           "exactly the acknowledged ones are there ", ok, failed);
    stop();
    DATA_DIR = NULL;
    rm_data_dir(dir);
}

/* ---- snapshots ------------------------------------------------------------ */

/* What a collection should hold: per base row, its id's state. */
struct expect {
    uint8_t live[NB];
    unsigned vec_of[NB];            /* the base row whose vector it has */
};

static void expect_upsert(struct expect *E, unsigned from, unsigned to)
{
    for (unsigned i = from; i < to; i++) {
        E->live[i] = 1;
        E->vec_of[i] = i;
    }
}

/* Upsert base rows [from, to) in batches of 100 (one WAL record each). */
static void upsert_batches(uint64_t coll, struct expect *E, unsigned from, unsigned to)
{
    for (unsigned i = from; i < to; i += 100)
        CU_ASSERT_EQUAL_FATAL(upsert_range(coll, i, i + 100 < to ? i + 100 : to, NULL), 0);
    if (E)
        expect_upsert(E, from, to);
}

static void delete_rows(uint64_t coll, struct expect *E, unsigned from, unsigned to,
                        unsigned step)
{
    uint64_t ids[NB];
    size_t n = 0;
    for (unsigned i = from; i < to; i += step) {
        ids[n++] = BASE_ID + i;
        E->live[i] = 0;
    }
    CU_ASSERT(qv_node_delete(N, coll, n, ids, NULL) >= 0);
}

/* Every base row's id is there exactly when E says so, with its vector;
 * DESCRIBE counts the live ones. */
static void check_expect(uint64_t coll, const struct expect *E)
{
    static uint64_t ids[NB];
    static float v[NB * DIM];
    static uint8_t found[NB];
    unsigned live = 0, bad_found = 0, bad_vec = 0;
    for (unsigned i = 0; i < NB; i++)
        ids[i] = BASE_ID + i;
    CU_ASSERT(qv_node_get(N, coll, NB, ids, DIM, v, found) >= 0);
    for (unsigned i = 0; i < NB; i++) {
        live += E->live[i];
        bad_found += found[i] != E->live[i];
        if (found[i] && E->live[i])
            bad_vec += memcmp(v + (size_t)i * DIM, F.base + (size_t)E->vec_of[i] * DIM,
                              DIM * sizeof(float)) != 0;
    }
    CU_ASSERT_EQUAL(bad_found, 0);
    CU_ASSERT_EQUAL(bad_vec, 0);
    struct qv_node_coll_info info;
    describe(coll, &info);
    CU_ASSERT_EQUAL(info.rows, live);
    if (bad_found || bad_vec || info.rows != live)
        fprintf(stderr, "\n  %u ids wrongly present/absent, %u wrong vectors, rows %llu of "
                "%u\n", bad_found, bad_vec, (unsigned long long)info.rows, live);
}

static void snap_file(const char *dir, uint64_t coll, uint64_t lsn, char *path, size_t cap)
{
    snprintf(path, cap, "%s/c%llu/snap-%020llu.qvs", dir, (unsigned long long)coll,
             (unsigned long long)lsn);
}

static int file_exists(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f)
        fclose(f);
    return f != NULL;
}

/* Flip one byte of path at off. */
static void flip_byte(const char *path, long off)
{
    FILE *f = fopen(path, "r+b");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    CU_ASSERT_EQUAL(fseek(f, off, SEEK_SET), 0);
    int b = fgetc(f);
    CU_ASSERT_NOT_EQUAL(b, EOF);
    CU_ASSERT_EQUAL(fseek(f, off, SEEK_SET), 0);
    fputc(b ^ 0x5a, f);
    fclose(f);
}

/* A node on dir must refuse to start with QV_ECORRUPT, the message
 * naming `file` (and saying `why` when not NULL). */
static void start_refused(const char *dir, const char *file, const char *why)
{
    struct qv_service_opts so;
    struct qv_node_opts no;
    qv_service_opts_default(&so);
    SVC = qv_service_create(&so);
    CU_ASSERT_PTR_NOT_NULL_FATAL(SVC);
    qv_node_opts_default(&no);
    no.service = SVC;
    no.data_dir = dir;
    no.wal_segment_bytes = WAL_SEG;
    no.snapshot_wal_bytes = SNAP_BYTES;
    if (BUILD_SHARE > 0)
        no.build_share = BUILD_SHARE;
    N = qv_node_create(&no);
    CU_ASSERT_PTR_NULL(N);
    expect_err(qv_errno, QV_ECORRUPT, file);
    if (why)
        expect_err(qv_errno, QV_ECORRUPT, why);
    qv_node_free(N);
    N = NULL;
    qv_service_free(SVC);
    SVC = NULL;
}

/* Writes (rows in several sealed segments and the growing one), deletes,
 * a snapshot, more writes and deletes (of rows in the snapshot and after
 * it, and an upsert that moves a row of the snapshot), a stop: the node
 * on the same directory holds exactly the expected rows; the WAL starts
 * after the first records (its segments up to the snapshot removed),
 * snapshot_lsn says the snapshot's LSN; a second snapshot with nothing
 * new writes nothing; a later one replaces the first file; a leftover
 * .qvs.tmp is removed at start. */
static void test_recover_snapshot(void)
{
    static struct expect E;
    char *dir = mk_data_dir(), path[512], path2[512];
    CU_ASSERT_PTR_NOT_NULL_FATAL(dir);
    memset(&E, 0, sizeof E);
    DATA_DIR = dir;
    WAL_SEG = QV_WAL_SEGMENT_MIN;
    start(500, NULL, 0);
    uint64_t f = create("f", QV_NODE_FLAT), h = create("h", QV_NODE_HNSW);
    upsert_batches(f, &E, 0, 1500);
    upsert_batches(h, NULL, 0, 700);
    delete_rows(f, &E, 0, 600, 3);
    struct qv_node_storage st0, st1;
    CU_ASSERT_EQUAL(qv_node_storage(N, f, &st0), 0);
    CU_ASSERT_EQUAL(st0.snapshot_lsn, 0);
    CU_ASSERT_EQUAL(st0.first_lsn, 1);
    CU_ASSERT(st0.segments > 2);
    uint64_t L = 0, L2 = 0;
    int rc = qv_node_snapshot(N, f, &L);
    if (rc)
        fprintf(stderr, "\n  snapshot: %s\n", qv_errmsg());
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT_EQUAL(L, st0.last_lsn);
    CU_ASSERT_EQUAL(qv_node_storage(N, f, &st1), 0);
    CU_ASSERT_EQUAL(st1.snapshot_lsn, L);
    CU_ASSERT(st1.first_lsn > 1 && st1.first_lsn <= L + 1);
    CU_ASSERT(st1.segments < st0.segments);
    snap_file(dir, f, L, path, sizeof path);
    CU_ASSERT(file_exists(path));
    CU_ASSERT_EQUAL(qv_node_snapshot(N, f, &L2), 0);          /* nothing new */
    CU_ASSERT_EQUAL(L2, L);
    CU_ASSERT_EQUAL(qv_node_snapshot(N, h, &L2), 0);          /* another collection */
    CU_ASSERT(L2 > 0);

    upsert_batches(f, &E, 1500, 2000);
    delete_rows(f, &E, 1000, 1010, 1);                      /* rows of the snapshot */
    delete_rows(f, &E, 1600, 1610, 1);                      /* rows after it */
    CU_ASSERT_EQUAL(upsert_one(f, BASE_ID + 5, F.base + 8 * DIM, 5, 6), 0);  /* moved */
    E.vec_of[5] = 8;
    CU_ASSERT_EQUAL(upsert_one(f, BASE_ID + 3, F.base + 9 * DIM, 5, 6), 0);  /* back */
    E.live[3] = 1;
    E.vec_of[3] = 9;
    check_expect(f, &E);
    CU_ASSERT_EQUAL(qv_node_storage(N, f, &st0), 0);
    /* a snapshot that cannot be written (a directory where its .tmp goes):
     * QV_EIO naming the file, the previous snapshot and the WAL kept */
    snprintf(path2, sizeof path2, "%s/c%llu/snap-%020llu.qvs.tmp", dir,
             (unsigned long long)f, (unsigned long long)st0.last_lsn);
    CU_ASSERT_EQUAL_FATAL(mkdir(path2, 0700), 0);
    expect_err(qv_node_snapshot(N, f, &L2), QV_EIO, path2);
    CU_ASSERT_EQUAL(L2, 0);
    CU_ASSERT(file_exists(path));
    CU_ASSERT_EQUAL(qv_node_storage(N, f, &st1), 0);
    CU_ASSERT_EQUAL(st1.snapshot_lsn, L);
    CU_ASSERT_EQUAL(st1.first_lsn, st0.first_lsn);
    CU_ASSERT_EQUAL(st1.segments, st0.segments);
    CU_ASSERT_EQUAL(rmdir(path2), 0);
    stop();
    snprintf(path2, sizeof path2, "%s/c%llu/snap-%020llu.qvs.tmp", dir,
             (unsigned long long)f, (unsigned long long)(L + 1));
    FILE *t = fopen(path2, "wb");                           /* a snapshot cut short */
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    fputs("partial", t);
    fclose(t);

    start(500, NULL, 0);
    CU_ASSERT_FALSE(file_exists(path2));
    check_expect(f, &E);
    CU_ASSERT_EQUAL(qv_node_storage(N, f, &st1), 0);
    CU_ASSERT_EQUAL(st1.snapshot_lsn, L);
    CU_ASSERT_EQUAL(st1.first_lsn, st0.first_lsn);
    CU_ASSERT_EQUAL(st1.last_lsn, st0.last_lsn);
    struct qv_node_coll_info hi;
    describe(h, &hi);
    CU_ASSERT_EQUAL(hi.rows, 700);
    /* a second snapshot after the restart replaces the first */
    CU_ASSERT_EQUAL(qv_node_snapshot(N, f, &L2), 0);
    CU_ASSERT(L2 > L);
    CU_ASSERT_FALSE(file_exists(path));
    snap_file(dir, f, L2, path, sizeof path);
    CU_ASSERT(file_exists(path));
    stop();
    start(500, NULL, 0);
    check_expect(f, &E);
    CU_ASSERT_EQUAL(qv_node_storage(N, f, &st1), 0);
    CU_ASSERT_EQUAL(st1.snapshot_lsn, L2);
    stop();
    DATA_DIR = NULL;
    WAL_SEG = 0;
    rm_data_dir(dir);
}

static void *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    void *p = malloc(*len ? *len : 1);
    if (p && fread(p, 1, *len, f) != *len) {
        free(p);
        p = NULL;
    }
    fclose(f);
    return p;
}

static void write_all(const char *path, const void *p, size_t len)
{
    FILE *f = fopen(path, "wb");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    CU_ASSERT_EQUAL(fwrite(p, 1, len, f), len);
    fclose(f);
}

/* A damaged newest snapshot: (1) with an older intact one that the WAL
 * still continues (one large segment, so nothing was truncated), recovery
 * uses the older one and replays the rest; (2) the only snapshot damaged
 * and the WAL truncated past its start: the start is refused with
 * QV_ECORRUPT naming the file. */
static void test_recover_snapshot_damaged(void)
{
    static struct expect E;
    char *dir = mk_data_dir(), a[512], b[512];
    CU_ASSERT_PTR_NOT_NULL_FATAL(dir);
    memset(&E, 0, sizeof E);
    DATA_DIR = dir;
    start(500, NULL, 0);
    uint64_t f = create("f", QV_NODE_FLAT);
    upsert_batches(f, &E, 0, 800);
    uint64_t La = 0, Lb = 0;
    CU_ASSERT_EQUAL_FATAL(qv_node_snapshot(N, f, &La), 0);
    snap_file(dir, f, La, a, sizeof a);
    size_t alen = 0;
    void *acopy = read_all(a, &alen);
    CU_ASSERT_PTR_NOT_NULL_FATAL(acopy);
    upsert_batches(f, &E, 800, 1200);
    delete_rows(f, &E, 0, 900, 4);
    CU_ASSERT_EQUAL_FATAL(qv_node_snapshot(N, f, &Lb), 0);
    CU_ASSERT(Lb > La);
    CU_ASSERT_FALSE(file_exists(a));                        /* replaced by B */
    upsert_batches(f, &E, 1200, 1300);
    stop();
    write_all(a, acopy, alen);                              /* A back */
    free(acopy);
    snap_file(dir, f, Lb, b, sizeof b);
    flip_byte(b, 130);                                      /* a byte of B's body */
    start(500, NULL, 0);
    check_expect(f, &E);
    struct qv_node_storage st;
    CU_ASSERT_EQUAL(qv_node_storage(N, f, &st), 0);
    CU_ASSERT_EQUAL(st.snapshot_lsn, La);
    CU_ASSERT_EQUAL(st.first_lsn, 1);
    stop();
    DATA_DIR = NULL;
    rm_data_dir(dir);

    /* (2) the only snapshot damaged, the WAL truncated */
    dir = mk_data_dir();
    CU_ASSERT_PTR_NOT_NULL_FATAL(dir);
    DATA_DIR = dir;
    WAL_SEG = QV_WAL_SEGMENT_MIN;
    start(500, NULL, 0);
    f = create("f", QV_NODE_FLAT);
    upsert_batches(f, NULL, 0, 1500);
    CU_ASSERT_EQUAL_FATAL(qv_node_snapshot(N, f, &La), 0);
    CU_ASSERT_EQUAL(qv_node_storage(N, f, &st), 0);
    CU_ASSERT(st.first_lsn > 1);
    stop();
    snap_file(dir, f, La, a, sizeof a);
    flip_byte(a, 130);                                      /* a byte of its body */
    start_refused(dir, a, "body CRC");
    DATA_DIR = NULL;
    WAL_SEG = 0;
    rm_data_dir(dir);
}

/* A snapshot needs a data_dir (QV_EINVAL naming it) and a collection
 * (QV_ENOENT). */
static void test_snapshot_errors(void)
{
    start(500, NULL, 0);
    uint64_t f = create("f", QV_NODE_FLAT), lsn = 7;
    CU_ASSERT_EQUAL(upsert_range(f, 0, 10, NULL), 0);
    expect_err(qv_node_snapshot(N, f, &lsn), QV_EINVAL, "data_dir");
    CU_ASSERT_EQUAL(lsn, 0);
    expect_err(qv_node_snapshot(N, f + 100, &lsn), QV_ENOENT, "does not exist");
    struct qv_node_storage st;
    CU_ASSERT_EQUAL(qv_node_storage(N, f, &st), 0);
    CU_ASSERT_EQUAL(st.enabled, 0);
    CU_ASSERT_EQUAL(st.snapshot_lsn, 0);
    stop();
}

struct snap_writer {
    uint64_t coll;
    _Atomic unsigned acked;         /* base rows [0, acked) acknowledged */
    _Atomic int stop;
    int failed;
};

static void *snap_writer_main(void *arg)
{
    struct snap_writer *w = arg;
    unsigned i = 0;
    while (i < NB && !atomic_load(&w->stop)) {
        unsigned to = i + 20 < NB ? i + 20 : NB;
        if (upsert_range(w->coll, i, to, NULL) != 0) {
            w->failed = 1;
            break;
        }
        i = to;
        atomic_store(&w->acked, i);
    }
    return NULL;
}

/* Snapshots taken while another thread keeps upserting: after a restart
 * every acknowledged upsert is there (none lost between the copy and the
 * WAL truncation), and nothing else. */
static void test_recover_snapshot_load(void)
{
    char *dir = mk_data_dir();
    CU_ASSERT_PTR_NOT_NULL_FATAL(dir);
    DATA_DIR = dir;
    WAL_SEG = QV_WAL_SEGMENT_MIN;
    start(500, NULL, 0);
    static struct snap_writer w;
    memset(&w, 0, sizeof w);
    w.coll = create("f", QV_NODE_FLAT);
    pthread_t t;
    CU_ASSERT_EQUAL_FATAL(pthread_create(&t, NULL, snap_writer_main, &w), 0);
    unsigned snaps = 0, during = 0;
    uint64_t last = 0;
    for (int k = 0; k < 40 && atomic_load(&w.acked) < NB; k++) {
        uint64_t lsn = 0;
        unsigned before = atomic_load(&w.acked);
        int rc = qv_node_snapshot(N, w.coll, &lsn);
        if (rc)
            fprintf(stderr, "\n  snapshot: %s\n", qv_errmsg());
        CU_ASSERT_EQUAL(rc, 0);
        CU_ASSERT(lsn >= last);
        last = lsn;
        snaps++;
        during += atomic_load(&w.acked) != before;
        sleep_ns(2 * MS);
    }
    atomic_store(&w.stop, 1);
    pthread_join(t, NULL);
    CU_ASSERT_EQUAL(w.failed, 0);
    unsigned acked = atomic_load(&w.acked);
    CU_ASSERT(snaps > 1 && acked > 0);
    stop();
    start(500, NULL, 0);
    static struct expect E;
    memset(&E, 0, sizeof E);
    expect_upsert(&E, 0, acked);
    check_expect(w.coll, &E);
    struct qv_node_storage st;
    CU_ASSERT_EQUAL(qv_node_storage(N, w.coll, &st), 0);
    CU_ASSERT_EQUAL(st.snapshot_lsn, last);
    CU_ASSERT(last > 0);
    printf("\n    %u snapshots (%u while upserts went on), %u rows acknowledged, all back ",
           snaps, during, acked);
    stop();
    DATA_DIR = NULL;
    WAL_SEG = 0;
    rm_data_dir(dir);
}

/* ---- segment files, mapped recovery, merging compaction ------------------- */

/* The answers of the NQ queries (k 10, the collection's defaults). */
struct answers {
    float d[NQ][10];
    uint64_t ids[NQ][10];
};

static void answers_of(uint64_t coll, struct answers *A)
{
    for (unsigned q = 0; q < NQ; q++) {
        struct sreq s;
        CU_ASSERT_EQUAL_FATAL(search(coll, query(q), 10, 0, 0, NULL, &s), 0);
        memcpy(A->d[q], s.dist, sizeof A->d[q]);
        memcpy(A->ids[q], s.ids, sizeof A->ids[q]);
    }
}

/* Files of coll's directory whose name starts with prefix and ends with
 * suffix. */
static unsigned count_files(const char *dir, uint64_t coll, const char *prefix,
                            const char *suffix)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "ls '%s/c%llu' | grep -c '^%s.*%s$'", dir,
             (unsigned long long)coll, prefix, suffix);
    FILE *p = popen(cmd, "r");
    unsigned n = 0;
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    if (fscanf(p, "%u", &n) != 1)
        n = 0;
    pclose(p);
    return n;
}

/* The path of coll's first file whose name ends with suffix. */
static void first_file(const char *dir, uint64_t coll, const char *suffix, char *path,
                       size_t cap)
{
    char cmd[512], name[256] = "";
    snprintf(cmd, sizeof cmd, "ls '%s/c%llu' | grep '%s$' | head -1", dir,
             (unsigned long long)coll, suffix);
    FILE *p = popen(cmd, "r");
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    CU_ASSERT_PTR_NOT_NULL(fgets(name, sizeof name, p));
    pclose(p);
    name[strcspn(name, "\n")] = 0;
    snprintf(path, cap, "%s/c%llu/%s", dir, (unsigned long long)coll, name);
}

/* For each index type: rows in sealed segments (built, their files
 * written), deletes before and after a snapshot, a stop.  The restarted
 * node maps every built segment with its index (no build runs: the
 * builder's count stays 0), answers the queries exactly as before the
 * stop (same ids, same distances), holds the expected rows; a snapshot
 * and a second restart keep the same files. */
static void test_recover_segments(void)
{
    static const enum qv_node_index types[] = { QV_NODE_FLAT, QV_NODE_IVF, QV_NODE_IVF_PQ,
                                                QV_NODE_HNSW };
    static struct expect E;
    static struct answers A, B;
    for (unsigned t = 0; t < sizeof types / sizeof types[0]; t++) {
        char *dir = mk_data_dir();
        CU_ASSERT_PTR_NOT_NULL_FATAL(dir);
        memset(&E, 0, sizeof E);
        DATA_DIR = dir;
        start(700, NULL, 0);
        uint64_t c = create("seg", types[t]);
        upsert_batches(c, &E, 0, 2500);
        CU_ASSERT_EQUAL_FATAL(qv_node_wait_builds(N, c, 60 * SEC), 0);
        delete_rows(c, &E, 0, 2500, 9);             /* in the segments' bitmaps */
        uint64_t L = 0;
        CU_ASSERT_EQUAL_FATAL(qv_node_snapshot(N, c, &L), 0);
        delete_rows(c, &E, 1, 2500, 11);            /* in the WAL after it */
        upsert_batches(c, &E, 2500, 2600);
        struct qv_node_storage st;
        CU_ASSERT_EQUAL(qv_node_storage(N, c, &st), 0);
        unsigned files = st.segment_files;
        CU_ASSERT(files >= 3);
        CU_ASSERT_EQUAL(st.segments_mapped, 0);
        CU_ASSERT_EQUAL(count_files(dir, c, "seg-", ".qvseg"), files);
        /* a flat segment's index is rebuilt from its rows file: no .qvix */
        CU_ASSERT_EQUAL(count_files(dir, c, "seg-", ".qvix"),
                        types[t] == QV_NODE_FLAT ? 0 : files);
        answers_of(c, &A);
        stop();

        start(700, NULL, 0);
        CU_ASSERT_EQUAL(qv_node_storage(N, c, &st), 0);
        CU_ASSERT_EQUAL(st.segment_files, files);
        CU_ASSERT_EQUAL(st.segments_mapped, files);
        struct qv_node_build_stats bs;
        qv_node_build_stats(N, &bs);
        CU_ASSERT_EQUAL(bs.builds, 0);
        answers_of(c, &B);
        unsigned same = 0;
        for (unsigned q = 0; q < NQ; q++)
            same += memcmp(A.ids[q], B.ids[q], sizeof A.ids[q]) == 0 &&
                    memcmp(A.d[q], B.d[q], sizeof A.d[q]) == 0;
        CU_ASSERT_EQUAL(same, NQ);
        check_expect(c, &E);
        printf("\n    %-6s %u segments mapped back, %u builds at start, %u/%u answers "
               "identical ", qv_node_index_name(types[t]), st.segments_mapped,
               (unsigned)bs.builds, same, NQ);
        /* a snapshot of the mapped node keeps its files; a second restart */
        delete_rows(c, &E, 2, 2500, 13);
        CU_ASSERT_EQUAL(qv_node_snapshot(N, c, &L), 0);
        CU_ASSERT_EQUAL(count_files(dir, c, "seg-", ".qvseg"), files);
        stop();
        start(700, NULL, 0);
        check_expect(c, &E);
        CU_ASSERT_EQUAL(qv_node_storage(N, c, &st), 0);
        CU_ASSERT_EQUAL(st.segments_mapped, files);
        stop();
        DATA_DIR = NULL;
        rm_data_dir(dir);
    }
}

/* A damaged segment file: with the whole WAL still there, the node comes
 * back from the WAL (all rows); with the WAL behind the snapshot removed,
 * the start is refused with QV_ECORRUPT naming the file. */
static void test_recover_segment_damaged(void)
{
    static struct expect E;
    for (int truncated = 0; truncated < 2; truncated++) {
        char *dir = mk_data_dir(), path[1024];
        CU_ASSERT_PTR_NOT_NULL_FATAL(dir);
        memset(&E, 0, sizeof E);
        DATA_DIR = dir;
        WAL_SEG = truncated ? QV_WAL_SEGMENT_MIN : 0;
        start(700, NULL, 0);
        uint64_t c = create("dmg", QV_NODE_IVF);
        upsert_batches(c, &E, 0, 3000);
        CU_ASSERT_EQUAL_FATAL(qv_node_wait_builds(N, c, 60 * SEC), 0);
        uint64_t L;
        CU_ASSERT_EQUAL_FATAL(qv_node_snapshot(N, c, &L), 0);
        struct qv_node_storage st;
        CU_ASSERT_EQUAL(qv_node_storage(N, c, &st), 0);
        CU_ASSERT_EQUAL(st.first_lsn > 1, truncated);
        stop();
        first_file(dir, c, truncated ? ".qvseg" : ".qvix", path, sizeof path);
        flip_byte(path, 4096 + 100);                /* in the first section */
        if (!truncated) {
            start(700, NULL, 0);
            check_expect(c, &E);
            CU_ASSERT_EQUAL(qv_node_storage(N, c, &st), 0);
            CU_ASSERT_EQUAL(st.snapshot_lsn, 0);
            CU_ASSERT_EQUAL(st.segments_mapped, 0);
            stop();
        } else {
            start_refused(dir, path, NULL);
        }
        WAL_SEG = 0;
        DATA_DIR = NULL;
        rm_data_dir(dir);
    }
}

/* The sealed segments, live rows and dead rows of coll. */
static void seg_counts(uint64_t coll, unsigned *sealed, uint64_t *dead)
{
    struct qv_node_coll_info info;
    describe(coll, &info);
    *sealed = info.sealed;
    *dead = info.dead_rows;
}

/* Compaction merges: segments that lost compact_ratio of their rows are
 * rebuilt together into fewer segments, small segments (early seals) are
 * merged, a single small segment is left alone; the rows stay exactly
 * the expected ones and FLAT answers stay exact.  With a data_dir the
 * replaced segments' files go at the next snapshot and a restart maps the
 * merged ones. */
static void test_merge_compaction(void)
{
    static struct expect E;
    for (int durable = 0; durable < 2; durable++) {
        char *dir = durable ? mk_data_dir() : NULL;
        memset(&E, 0, sizeof E);
        DATA_DIR = dir;
        start(500, NULL, 0);
        uint64_t c = create("merge", QV_NODE_FLAT);
        upsert_batches(c, &E, 0, 2000);             /* 4 sealed segments of 500 */
        CU_ASSERT_EQUAL_FATAL(qv_node_wait_builds(N, c, 60 * SEC), 0);
        unsigned sealed;
        uint64_t dead;
        seg_counts(c, &sealed, &dead);
        CU_ASSERT_EQUAL(sealed, 4);
        /* 3 of every 5 rows of each: 200 live in each, half of 500 allows 2 a merge */
        static uint64_t ids[NB];
        size_t n = 0;
        for (unsigned i = 0; i < 2000; i++)
            if (i % 5 < 3) {
                ids[n++] = BASE_ID + i;
                E.live[i] = 0;
            }
        CU_ASSERT_EQUAL(qv_node_delete(N, c, n, ids, NULL), (long)n);
        CU_ASSERT_EQUAL_FATAL(qv_node_wait_builds(N, c, 60 * SEC), 0);
        seg_counts(c, &sealed, &dead);
        CU_ASSERT_EQUAL(sealed, 2);
        CU_ASSERT_EQUAL(dead, 0);
        check_expect(c, &E);
        unsigned exact = 0;
        for (unsigned q = 0; q < NQ; q++) {
            struct sreq s;
            float d[10];
            uint64_t want[10];
            CU_ASSERT_EQUAL_FATAL(search(c, query(q), 10, 0, 0, NULL, &s), 0);
            brute(query(q), 2000, E.live, 10, d, want);
            exact += same_knn(s.dist, s.ids, d, want, 10);
        }
        CU_ASSERT_EQUAL(exact, NQ);
        printf("\n    %s: 4 segments at 40%% live merged into %u, %u/%u answers exact ",
               durable ? "data_dir" : "memory", sealed, exact, NQ);
        /* early seals: 6 segments of 100 -> one of 500, the sixth left alone */
        for (unsigned i = 2000; i < 2600; i += 100) {
            upsert_batches(c, &E, i, i + 100);
            CU_ASSERT_EQUAL(qv_node_seal(N, c), 1);
        }
        CU_ASSERT_EQUAL_FATAL(qv_node_wait_builds(N, c, 60 * SEC), 0);
        /* the merges run after a write: one more */
        upsert_batches(c, &E, 2600, 2601);
        CU_ASSERT_EQUAL_FATAL(qv_node_wait_builds(N, c, 60 * SEC), 0);
        seg_counts(c, &sealed, &dead);
        CU_ASSERT_EQUAL(sealed, 4);                 /* 2 + the merge of 5 + the 6th */
        check_expect(c, &E);
        if (durable) {
            uint64_t L;
            CU_ASSERT_EQUAL(qv_node_snapshot(N, c, &L), 0);
            struct qv_node_storage st;
            CU_ASSERT_EQUAL(qv_node_storage(N, c, &st), 0);
            CU_ASSERT_EQUAL(st.segment_files, 4);
            CU_ASSERT_EQUAL(count_files(dir, c, "seg-", ".qvseg"), 4);
            CU_ASSERT_EQUAL(count_files(dir, c, "seg-", ".qvix"), 0);    /* flat */
            stop();
            start(500, NULL, 0);
            check_expect(c, &E);
            CU_ASSERT_EQUAL(qv_node_storage(N, c, &st), 0);
            CU_ASSERT_EQUAL(st.segments_mapped, 4);
        }
        stop();
        DATA_DIR = NULL;
        if (dir)
            rm_data_dir(dir);
    }
}

/* An HNSW writer for test_recover_snapshot_builds: batches of 20 rows,
 * each but every third followed by a delete of 40 rows (repeats and
 * absent ids included), so that builds, compactions and merges run while snapshots
 * are taken. */
struct build_writer {
    uint64_t coll;
    struct expect *E;
    _Atomic int done;
    int failed;
};

static void *build_writer_main(void *arg)
{
    struct build_writer *w = arg;
    for (unsigned i = 0, b = 0; i < NB && !w->failed; i += 20, b++) {
        if (upsert_range(w->coll, i, i + 20, NULL) != 0) {
            w->failed = 1;
            break;
        }
        expect_upsert(w->E, i, i + 20);
        sleep_ns(MS);                   /* let builds and snapshots interleave */
        if (b % 3 != 0) {
            uint64_t ids[40];
            for (unsigned k = 0; k < 40; k++) {
                unsigned r = (unsigned)(((uint64_t)i * 2654435761u + k * 97u) % (i + 20));
                ids[k] = BASE_ID + r;
                w->E->live[r] = 0;
            }
            if (qv_node_delete(N, w->coll, 40, ids, NULL) < 0)
                w->failed = 1;
        }
    }
    atomic_store(&w->done, 1);
    return NULL;
}

/* Snapshots in a loop while an HNSW collection takes writes and deletes
 * (seal size 200: builds, compactions and merges run meanwhile, each
 * writing its files while a snapshot may be listing and removing them):
 * a restart brings back exactly the acknowledged state; then, once the
 * builds are done, a snapshot lists every sealed segment, the directory
 * holds only their files, and a restart maps all of them. */
static void test_recover_snapshot_builds(void)
{
    static struct expect E;
    char *dir = mk_data_dir();
    CU_ASSERT_PTR_NOT_NULL_FATAL(dir);
    memset(&E, 0, sizeof E);
    DATA_DIR = dir;
    start(200, NULL, 0);
    static struct build_writer w;
    memset(&w, 0, sizeof w);
    w.coll = create("hb", QV_NODE_HNSW);
    w.E = &E;
    pthread_t t;
    CU_ASSERT_EQUAL_FATAL(pthread_create(&t, NULL, build_writer_main, &w), 0);
    unsigned snaps = 0;
    while (!atomic_load(&w.done)) {
        uint64_t lsn;
        int rc = qv_node_snapshot(N, w.coll, &lsn);
        if (rc)
            fprintf(stderr, "\n  snapshot: %s\n", qv_errmsg());
        CU_ASSERT_EQUAL(rc, 0);
        snaps++;
        sleep_ns(1 * MS);
    }
    pthread_join(t, NULL);
    CU_ASSERT_EQUAL_FATAL(w.failed, 0);
    struct qv_node_build_stats bs;
    qv_node_build_stats(N, &bs);
    stop();
    start(200, NULL, 0);
    check_expect(w.coll, &E);
    CU_ASSERT_EQUAL_FATAL(qv_node_wait_builds(N, w.coll, 120 * SEC), 0);
    uint64_t lsn;
    CU_ASSERT_EQUAL(qv_node_snapshot(N, w.coll, &lsn), 0);
    struct qv_node_coll_info info;
    describe(w.coll, &info);
    struct qv_node_storage st;
    CU_ASSERT_EQUAL(qv_node_storage(N, w.coll, &st), 0);
    CU_ASSERT_EQUAL(st.segment_files, info.sealed);
    CU_ASSERT_EQUAL(count_files(dir, w.coll, "seg-", ".qvseg"), info.sealed);
    CU_ASSERT_EQUAL(count_files(dir, w.coll, "seg-", ".qvix"), info.sealed);
    stop();
    start(200, NULL, 0);
    check_expect(w.coll, &E);
    CU_ASSERT_EQUAL(qv_node_storage(N, w.coll, &st), 0);
    CU_ASSERT_EQUAL(st.segments_mapped, info.sealed);
    printf("\n    %u snapshots during %llu builds; after the last restart %u segments, "
           "all mapped, %llu live rows, %llu dead ", snaps, (unsigned long long)bs.builds,
           st.segments_mapped, (unsigned long long)info.rows,
           (unsigned long long)info.dead_rows);
    stop();
    DATA_DIR = NULL;
    rm_data_dir(dir);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The snapshotter: a WAL past snapshot_wal_bytes gets a snapshot without
 * being asked (within a few seconds), its segments behind it go, and a
 * restart comes back from it. */
static void test_recover_auto_snapshot(void)
{
    char *dir = mk_data_dir();
    CU_ASSERT_PTR_NOT_NULL_FATAL(dir);
    DATA_DIR = dir;
    WAL_SEG = QV_WAL_SEGMENT_MIN;
    SNAP_BYTES = 4 * QV_WAL_SEGMENT_MIN;
    start(100000, NULL, 0);
    uint64_t f = create("auto", QV_NODE_FLAT);
    for (unsigned at = 0; at < 3000; at += 100)
        CU_ASSERT_EQUAL_FATAL(upsert_range(f, at, at + 100, NULL), 0);
    struct qv_node_storage st;
    int64_t until = now_ms() + 10000;
    do {
        CU_ASSERT_EQUAL_FATAL(qv_node_storage(N, f, &st), 0);
        if (st.snapshot_lsn)
            break;
        struct timespec ts = { 0, 50 * 1000000 };
        nanosleep(&ts, NULL);
    } while (now_ms() < until);
    CU_ASSERT(st.snapshot_lsn > 0);
    CU_ASSERT(st.first_lsn > 1);                /* the covered segments went */
    printf("\n    automatic snapshot at LSN %llu of %llu; WAL now %llu bytes in %u segments ",
           (unsigned long long)st.snapshot_lsn, (unsigned long long)st.last_lsn,
           (unsigned long long)st.bytes, st.segments);
    stop();
    SNAP_BYTES = 0;
    start(100000, NULL, 0);
    struct qv_node_coll_info fi;
    describe(f, &fi);
    CU_ASSERT_EQUAL(fi.rows, 3000);
    CU_ASSERT_EQUAL(qv_node_storage(N, f, &st), 0);
    CU_ASSERT(st.snapshot_lsn > 0);
    stop();
    WAL_SEG = 0;
    DATA_DIR = NULL;
    rm_data_dir(dir);
}

/* The builder's pace: with build_share 0.25 it rests three times each
 * build's time after it.  Checked from its own stats, and against the
 * wall clock as a lower bound (load can only make the wall time longer). */
static void test_build_share(void)
{
    BUILD_SHARE = 0.25;
    start(500, NULL, 0);
    uint64_t h = create("paced", QV_NODE_HNSW);
    int64_t t0 = now_ms();
    for (unsigned at = 0; at < 2000; at += 500)
        CU_ASSERT_EQUAL_FATAL(upsert_range(h, at, at + 500, NULL), 0);
    CU_ASSERT_EQUAL(qv_node_wait_builds(N, h, 60 * SEC), 0);
    int64_t wall_ns = (now_ms() - t0) * 1000000;
    struct qv_node_build_stats b;
    qv_node_build_stats(N, &b);
    CU_ASSERT(b.builds >= 4);
    /* every rest but the last one has ended by now: >= 3 x those builds */
    int64_t rested_min = 3 * (b.build_ns - b.last_build_ns);
    CU_ASSERT(b.rest_ns >= rested_min - rested_min / 20);
    CU_ASSERT(wall_ns >= b.build_ns + rested_min - rested_min / 20);
    printf("\n    %llu builds took %.1f ms, the builder rested %.1f ms; %.1f ms from the "
           "first seal to the last build ", (unsigned long long)b.builds, b.build_ns / 1e6,
           b.rest_ns / 1e6, wall_ns / 1e6);
    stop();
    BUILD_SHARE = 0;
    /* out of range: refused, naming the option */
    struct qv_node_opts o;
    qv_node_opts_default(&o);
    o.service = (struct qv_service *)1;
    o.build_share = 0;
    CU_ASSERT_PTR_NULL(qv_node_create(&o));
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "build_share"));
}

static void test_config(void)
{
    struct qv_config *cfg = qv_config_defaults();
    struct qv_node_opts a, d;

    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    qv_node_opts_default(&d);
    CU_ASSERT_EQUAL(qv_node_opts_from_config(cfg, &a), 0);
    CU_ASSERT_EQUAL(a.max_collections, d.max_collections);
    CU_ASSERT_EQUAL(a.seal_rows, d.seal_rows);
    CU_ASSERT_EQUAL(a.compact_ratio, d.compact_ratio);
    CU_ASSERT_EQUAL(qv_config_set(cfg, "server", "seal_rows", "8"), QV_ECONFIG);
    CU_ASSERT_EQUAL(qv_config_set(cfg, "server", "seal_rows", "4096"), 0);
    CU_ASSERT_EQUAL(qv_config_set(cfg, "server", "compact_ratio", "0"), 0);
    CU_ASSERT_EQUAL(qv_node_opts_from_config(cfg, &a), 0);
    CU_ASSERT_EQUAL(a.seal_rows, 4096);
    CU_ASSERT_EQUAL(a.compact_ratio, 0.0);
    qv_config_free(cfg);
}

int main(void)
{
    static const struct {
        const char *name;
        void (*fn)(void);
    } tests[] = {
        { "create / describe / list / drop every index type", test_create_describe_list_drop },
        { "bad specs and options are refused, naming the field", test_bad_specs },
        { "FLAT over sealed segments is exact (CPU and router)", test_flat_exact },
        { "IVF: a sealed segment equals a direct IVF; recall", test_ivf_seal },
        { "HNSW: a sealed segment equals a direct HNSW; recall", test_hnsw_seal },
        { "IVF_SQ8 and IVF_PQ (refine) seal, train and answer", test_sq8_pq },
        { "seal flushes the growing segment", test_seal },
        { "upsert of a present id replaces it", test_upsert_replaces },
        { "deletes hide ids, also after a compacting rebuild", test_delete },
        { "get returns the stored vectors", test_get },
        { "recover: collections, rows, deletes, drops from data_dir", test_recover },
        { "recover: failed upserts (injected ENOMEM) do not come back", test_recover_enomem },
        { "recover: the snapshotter snapshots a large WAL by itself", test_recover_auto_snapshot },
        { "the builder keeps to build_share of a CPU", test_build_share },
        { "recover: from a snapshot and the WAL after it", test_recover_snapshot },
        { "recover: a damaged snapshot: the older one, or QV_ECORRUPT naming it",
          test_recover_snapshot_damaged },
        { "recover: snapshot errors (no data_dir, no collection)", test_snapshot_errors },
        { "recover: snapshots while upserts go on lose nothing acknowledged",
          test_recover_snapshot_load },
        { "recover: built segments and indexes are mapped back, not rebuilt",
          test_recover_segments },
        { "recover: a damaged segment file: the WAL, or QV_ECORRUPT naming it",
          test_recover_segment_damaged },
        { "compaction merges segments; replaced files go at the next snapshot",
          test_merge_compaction },
        { "recover: snapshots while builds, compactions and merges run",
          test_recover_snapshot_builds },
        { "filters across segments equal brute force", test_filters },
        { "a write bumps the epoch and the cached answer misses", test_epoch_and_cache },
        { "upsert errors name the field; ENOMEM applies nothing", test_upsert_errors },
        { "search errors name the field", test_search_errors },
        { "2 writers and searches stay consistent", test_concurrent },
        { "drop completes the searches queued for it", test_drop_completes_queued },
        { "200 create / upsert / search / drop cycles, max_collections 4",
          test_create_drop_cycles },
        { "free while builds are queued and running", test_free_during_build },
        { "[server] configuration", test_config },
    };
    CU_pSuite s;
    unsigned fails;

    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    s = CU_add_suite("node", suite_init, suite_fini);
    for (size_t i = 0; s && i < sizeof tests / sizeof tests[0]; i++)
        CU_add_test(s, tests[i].name, tests[i].fn);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    fails = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
    CU_cleanup_registry();
    return fails ? 1 : 0;
}
