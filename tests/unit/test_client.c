/*
 * test_client.c - libquiver (client/include/quiver/client.h) against the
 * request path in this process (tests/unit/server_fixture.c), and against
 * fake servers for what a real one will not do on demand.
 *
 * siftsmall is created and loaded with qv_client_upsert in batches (the
 * progress callback sees each), searched one query at a time over UDP
 * (recall@10 = 1 for FLAT), as one SEARCH_BATCH over TCP (the same
 * answers) and as 200 async searches in flight (each completed exactly
 * once, with the same answers); for IVF, IVF-SQ8, IVF-PQ and HNSW,
 * the answers over UDP are the ids an index built offline with the same
 * parameters and seed gives (so recall over the network = offline);
 * DESCRIBE, LIST, lookup, GET, DELETE,
 * STATS, DROP; the server's errors reach the caller with its reason;
 * auth (a keyed server refuses an unkeyed client, accepts a keyed one);
 * retries: a silent port times out after exactly the configured tries in
 * the expected time, and a server that drops the first datagram of each
 * request id sees the retry flagged RETRY, answers it twice, and the
 * duplicate is dropped.
 *
 * With QV_TEST_SERVER=UDP_PORT,TCP_PORT the same tests run against a
 * quiverd on 127.0.0.1 (tests/integration/daemon.sh); the auth test,
 * which needs a server with a key, runs in process only.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <CUnit/Basic.h>

#include "quiver/client.h"
#include "quiver/proto.h"
#include "quiver/vecio.h"

#include "quiver/handler.h"
#include "quiver/hnsw.h"
#include "quiver/ivf.h"
#include "quiver/ivfpq.h"
#include "quiver/node.h"
#include "server_fixture.h"

static struct {
    struct qv_test_server srv;
    int in_process;
    uint16_t uport, tport;
    struct qv_client *c;
} S;

static struct qv_vecfile B, Q, G;
static uint64_t coll;

static int64_t ms_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int open_sift(void)
{
    return qv_test_open_siftsmall(&B, &Q, &G);
}

static int suite_init(void)
{
    const char *ext = getenv("QV_TEST_SERVER");
    unsigned up, tp;
    if (open_sift())
        return -1;
    if (ext && sscanf(ext, "%u,%u", &up, &tp) == 2) {
        S.uport = (uint16_t)up;
        S.tport = (uint16_t)tp;
    } else {
        if (qv_test_server_start(&S.srv, NULL))
            return -1;
        S.in_process = 1;
        S.uport = S.srv.udp_port;
        S.tport = S.srv.tcp_port;
    }
    struct qv_client_opts o;
    qv_client_opts_default(&o);
    o.upsert_batch_bytes = 256 << 10;   /* siftsmall in ~20 messages */
    o.timeout_ms = 500;
    S.c = qv_client_connect("127.0.0.1", S.uport, S.tport, &o);
    return S.c ? 0 : -1;
}

static int suite_fini(void)
{
    qv_client_close(S.c);
    if (S.in_process)
        qv_test_server_stop(&S.srv);
    qv_vecfile_close(&B);
    qv_vecfile_close(&Q);
    qv_vecfile_close(&G);
    return 0;
}

/* ---- load ------------------------------------------------------------------- */

struct progress {
    unsigned calls;
    uint64_t last, total;
    int monotonic;
};

static int on_progress(void *arg, uint64_t done, uint64_t total)
{
    struct progress *p = arg;
    p->monotonic &= done > p->last;
    p->calls++;
    p->last = done;
    p->total = total;
    return 0;
}

static void test_create_and_load(void)
{
    struct qv_client_create cr = { .name = "libq_sift", .dim = B.dim, .metric = QV_CLIENT_L2,
                                   .index = QV_CLIENT_FLAT, .nattrs = 1,
                                   .attrs = { "tag" } };
    CU_ASSERT_EQUAL_FATAL(qv_client_create(S.c, &cr, &coll), 0);
    CU_ASSERT(coll != 0);
    /* the same name again: EXISTS, with the server's reason */
    uint64_t again = 0;
    CU_ASSERT_EQUAL(qv_client_create(S.c, &cr, &again), QV_CLIENT_EEXISTS);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_client_errmsg(S.c), "EXISTS"));
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_client_errmsg(S.c), "libq_sift"));
    CU_ASSERT_EQUAL(qv_client_status_of(QV_CLIENT_EEXISTS), QV_PROTO_EXISTS);

    uint64_t *ids = malloc(B.n * sizeof *ids);
    float *vec = malloc(B.n * B.dim * sizeof *vec);
    int64_t *tag = malloc(B.n * sizeof *tag);
    CU_ASSERT_FATAL(ids && vec && tag);
    for (uint64_t i = 0; i < B.n; i++) {
        ids[i] = i;
        tag[i] = (int64_t)(i % 10);
    }
    qv_vecfile_read_f32(&B, 0, B.n, vec);
    struct qv_client_rows rows = { .n = B.n, .dim = B.dim, .ids = ids, .vectors = vec,
                                   .nattrs = 1, .attrs = { tag } };
    struct progress p = { .monotonic = 1 };
    uint64_t epoch = 0;
    int rc = qv_client_upsert(S.c, coll, &rows, on_progress, &p, &epoch);
    if (rc)
        fprintf(stderr, "upsert: %s\n", qv_client_errmsg(S.c));
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    /* 10000 rows of 528 bytes in 256 KiB messages: 21 batches */
    uint64_t per = ((256u << 10) - 24) / (8 + 4 * 128 + 8);
    CU_ASSERT_EQUAL(p.calls, (B.n + per - 1) / per);
    CU_ASSERT(p.calls > 1);
    CU_ASSERT(p.monotonic);
    CU_ASSERT_EQUAL(p.last, B.n);
    CU_ASSERT_EQUAL(p.total, B.n);
    CU_ASSERT(epoch > 0);

    struct qv_client_collection d;
    CU_ASSERT_EQUAL_FATAL(qv_client_describe(S.c, coll, &d), 0);
    CU_ASSERT_EQUAL(d.rows, B.n);
    CU_ASSERT_EQUAL(d.dim, B.dim);
    CU_ASSERT_STRING_EQUAL(d.name, "libq_sift");
    CU_ASSERT_EQUAL(d.nattrs, 1);
    CU_ASSERT_STRING_EQUAL(d.attrs[0], "tag");
    CU_ASSERT_EQUAL(d.index, QV_CLIENT_FLAT);
    free(ids);
    free(vec);
    free(tag);
}

static int cancel_at_once(void *arg, uint64_t done, uint64_t total)
{
    (void)arg;
    (void)total;
    return done > 0;
}

static void test_upsert_cancel_and_args(void)
{
    uint64_t ids[2] = { 1, 2 };
    float v[256] = { 0 };
    struct qv_client_rows r = { .n = 2, .dim = 128, .ids = ids, .vectors = v, .nattrs = 1,
                                .attrs = { (const int64_t[]){ 1, 2 } } };
    struct qv_client_opts o;
    qv_client_opts_default(&o);
    o.upsert_batch_bytes = 4096;        /* 7 rows of dim 128 per message */
    struct qv_client *c = qv_client_connect("127.0.0.1", S.uport, S.tport, &o);
    CU_ASSERT_FATAL(c != NULL);
    static uint64_t many_ids[20];
    static float many[20 * 128];
    static int64_t many_tag[20];
    for (unsigned i = 0; i < 20; i++)
        many_ids[i] = 100000 + i;
    struct qv_client_rows m = { .n = 20, .dim = 128, .ids = many_ids, .vectors = many,
                                .nattrs = 1, .attrs = { many_tag } };
    CU_ASSERT_EQUAL(qv_client_upsert(c, coll, &m, cancel_at_once, NULL, NULL), -ECANCELED);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_client_errmsg(c), "7 of 20"));
    /* the first batch stays applied: the rest were never sent */
    uint64_t del = 0;
    CU_ASSERT_EQUAL(qv_client_delete(c, coll, 20, many_ids, &del), 0);
    CU_ASSERT_EQUAL(del, 7);
    qv_client_close(c);
    /* local argument checks name the problem */
    r.n = 0;
    CU_ASSERT_EQUAL(qv_client_upsert(S.c, coll, &r, NULL, NULL, NULL), -EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_client_errmsg(S.c), "n = 0"));
    uint64_t id;
    uint32_t n;
    CU_ASSERT_EQUAL(qv_client_search(S.c, coll, v, 128, 0, NULL, &id, NULL, &n), -EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_client_errmsg(S.c), "k = 0"));
    struct qv_client_opts bad;
    qv_client_opts_default(&bad);
    bad.tries = 0;
    CU_ASSERT_PTR_NULL(qv_client_connect("127.0.0.1", S.uport, S.tport, &bad));
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_client_connect_errmsg(), "tries"));
    CU_ASSERT_PTR_NULL(qv_client_connect("no-such-host.invalid", 1, 2, NULL));
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_client_connect_errmsg(), "no-such-host.invalid"));
}

/* ---- search ----------------------------------------------------------------- */

static uint64_t sync_ids[100][10];

static double recall_of(const uint64_t *ids, uint32_t n, unsigned qi)
{
    const int32_t *gt = qv_vecfile_row(&G, qi);
    unsigned hits = 0;
    for (uint32_t j = 0; j < n; j++)
        for (unsigned t = 0; t < 10; t++)
            hits += ids[j] == (uint64_t)gt[t];
    return hits / 10.0;
}

static void test_search_sync_udp_and_batch(void)
{
    struct qv_client_stats before, after;
    qv_client_stats(S.c, &before);
    double rec = 0;
    unsigned ok = 0;
    for (unsigned i = 0; i < Q.n && i < 100; i++) {
        float dist[10];
        uint32_t n = 0;
        int rc = qv_client_search(S.c, coll, qv_vecfile_row(&Q, i), Q.dim, 10, NULL,
                                  sync_ids[i], dist, &n);
        if (rc) {
            fprintf(stderr, "search %u: %s\n", i, qv_client_errmsg(S.c));
            continue;
        }
        ok += n == 10 && dist[0] <= dist[9];
        rec += recall_of(sync_ids[i], n, i);
    }
    CU_ASSERT_EQUAL(ok, 100);
    CU_ASSERT(rec / 100 > 0.999);
    qv_client_stats(S.c, &after);
    /* every one went by UDP, none by TCP */
    CU_ASSERT(after.udp_sent - before.udp_sent >= 100);
    CU_ASSERT_EQUAL(after.tcp_messages, before.tcp_messages);

    /* one SEARCH_BATCH over TCP: the same answers */
    static float qs[100 * 128];
    static uint64_t bids[100 * 10];
    static float bdist[100 * 10];
    static uint32_t bn[100];
    qv_vecfile_read_f32(&Q, 0, 100, qs);
    CU_ASSERT_EQUAL_FATAL(qv_client_search_batch(S.c, coll, 100, qs, 128, 10, NULL, bids,
                                                 bdist, bn), 0);
    unsigned same = 0;
    for (unsigned i = 0; i < 100; i++)
        same += bn[i] == 10 && memcmp(bids + i * 10, sync_ids[i], sizeof sync_ids[i]) == 0;
    CU_ASSERT_EQUAL(same, 100);
    qv_client_stats(S.c, &before);
    CU_ASSERT_EQUAL(before.tcp_messages, after.tcp_messages + 1);

    /* UDP off: the same query goes by TCP, with the same answer */
    struct qv_client_opts o;
    qv_client_opts_default(&o);
    o.udp_search = 0;
    struct qv_client *c = qv_client_connect("127.0.0.1", S.uport, S.tport, &o);
    CU_ASSERT_FATAL(c != NULL);
    uint64_t ids[10];
    uint32_t n;
    CU_ASSERT_EQUAL(qv_client_search(c, coll, qs, 128, 10, NULL, ids, NULL, &n), 0);
    CU_ASSERT_EQUAL(memcmp(ids, sync_ids[0], sizeof ids), 0);
    qv_client_stats(c, &after);
    CU_ASSERT_EQUAL(after.udp_sent, 0);
    CU_ASSERT_EQUAL(after.tcp_messages, 1);
    /* k = 200 cannot come back in a datagram: TCP even with UDP on */
    static uint64_t ids200[200];
    CU_ASSERT_EQUAL(qv_client_search(S.c, coll, qs, 128, 200, NULL, ids200, NULL, &n), 0);
    CU_ASSERT_EQUAL(n, 200);
    CU_ASSERT_EQUAL(memcmp(ids200, sync_ids[0], sizeof sync_ids[0]), 0);
    /* a filter: only rows whose tag is 3 */
    struct qv_client_search_params p = { .filter = "tag == 3" };
    CU_ASSERT_EQUAL(qv_client_search(S.c, coll, qs, 128, 10, &p, ids, NULL, &n), 0);
    unsigned bad = 0;
    for (uint32_t j = 0; j < n; j++)
        bad += ids[j] % 10 != 3;
    CU_ASSERT_EQUAL(n, 10);
    CU_ASSERT_EQUAL(bad, 0);
    qv_client_close(c);
}

struct async_rec {
    unsigned calls;
    int rc;
    uint32_t n;
    uint64_t ids[10];
};

static struct async_rec arec[200];

static void on_async(void *arg, int rc, const struct qv_client_hits *h, const char *errmsg)
{
    struct async_rec *r = arg;
    r->calls++;
    r->rc = rc;
    if (rc == 0) {
        r->n = h->n;
        memcpy(r->ids, h->ids, (h->n < 10 ? h->n : 10) * sizeof(uint64_t));
    } else {
        fprintf(stderr, "async: %s\n", errmsg);
    }
}

static void test_search_async_200(void)
{
    memset(arec, 0, sizeof arec);
    for (unsigned i = 0; i < 200; i++)
        CU_ASSERT_EQUAL_FATAL(qv_client_search_async(S.c, coll, qv_vecfile_row(&Q, i % 100),
                                                     128, 10, NULL, on_async, &arec[i]), 0);
    CU_ASSERT_EQUAL(qv_client_inflight(S.c), 200);
    CU_ASSERT(qv_client_next_timeout_ms(S.c) >= 0);
    int64_t t0 = ms_now();
    unsigned done = 0;
    while (qv_client_inflight(S.c) && ms_now() - t0 < 20000) {
        int n = qv_client_poll(S.c, 1000);
        CU_ASSERT(n >= 0);
        if (n > 0)
            done += (unsigned)n;
    }
    CU_ASSERT_EQUAL(done, 200);
    CU_ASSERT_EQUAL(qv_client_inflight(S.c), 0);
    CU_ASSERT_EQUAL(qv_client_next_timeout_ms(S.c), -1);
    unsigned once = 0, right = 0;
    for (unsigned i = 0; i < 200; i++) {
        once += arec[i].calls == 1;
        right += arec[i].rc == 0 && arec[i].n == 10 &&
                 memcmp(arec[i].ids, sync_ids[i % 100], sizeof arec[i].ids) == 0;
    }
    CU_ASSERT_EQUAL(once, 200);
    CU_ASSERT_EQUAL(right, 200);
    /* nothing more arrives for them */
    CU_ASSERT_EQUAL(qv_client_poll(S.c, 50), 0);
    for (unsigned i = 0; i < 200; i++)
        CU_ASSERT_EQUAL(arec[i].calls, 1);
}

/* ---- the rest of the API ---------------------------------------------------- */

static void test_describe_list_get_delete_drop(void)
{
    struct qv_client_collection *l;
    uint32_t n;
    CU_ASSERT_EQUAL_FATAL(qv_client_list(S.c, &l, &n), 0);
    unsigned seen = 0;
    for (uint32_t i = 0; i < n; i++)
        seen += l[i].id == coll && strcmp(l[i].name, "libq_sift") == 0 && l[i].rows == B.n;
    CU_ASSERT_EQUAL(seen, 1);
    qv_client_list_free(l);
    uint64_t id = 0;
    CU_ASSERT_EQUAL(qv_client_lookup(S.c, "libq_sift", &id), 0);
    CU_ASSERT_EQUAL(id, coll);
    CU_ASSERT_EQUAL(qv_client_lookup(S.c, "libq_none", &id), -ENOENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_client_errmsg(S.c), "libq_none"));

    uint64_t ids[3] = { 7, 9999, 123456 };
    static float vec[3 * 128];
    uint8_t found[3];
    CU_ASSERT_EQUAL(qv_client_get(S.c, coll, 3, ids, 128, vec, found), 0);
    CU_ASSERT(found[0] && found[1] && !found[2]);
    CU_ASSERT_EQUAL(memcmp(vec, qv_vecfile_row(&B, 7), 128 * sizeof(float)), 0);
    CU_ASSERT_EQUAL(memcmp(vec + 128, qv_vecfile_row(&B, 9999), 128 * sizeof(float)), 0);
    CU_ASSERT_EQUAL(vec[256], 0.0f);

    uint64_t del = 0;
    CU_ASSERT_EQUAL(qv_client_delete(S.c, coll, 1, ids, &del), 0);
    CU_ASSERT_EQUAL(del, 1);
    CU_ASSERT_EQUAL(qv_client_get(S.c, coll, 1, ids, 128, vec, found), 0);
    CU_ASSERT_EQUAL(found[0], 0);
    uint64_t hit;
    uint32_t hn;
    CU_ASSERT_EQUAL(qv_client_search(S.c, coll, qv_vecfile_row(&B, 7), 128, 1, NULL, &hit,
                                     NULL, &hn), 0);
    CU_ASSERT_EQUAL(hn, 1);
    CU_ASSERT_NOT_EQUAL(hit, 7);

    char *json = NULL;
    CU_ASSERT_EQUAL(qv_client_stats_json(S.c, coll, &json), 0);
    CU_ASSERT(json && strstr(json, "\"rows\""));
    free(json);
    uint64_t up = 0;
    CU_ASSERT_EQUAL(qv_client_ping(S.c, &up), 0);

    CU_ASSERT_EQUAL(qv_client_drop(S.c, coll), 0);
    struct qv_client_collection d;
    CU_ASSERT_EQUAL(qv_client_describe(S.c, coll, &d), QV_CLIENT_ENOT_FOUND);
    CU_ASSERT_EQUAL(qv_client_drop(S.c, coll), QV_CLIENT_ENOT_FOUND);
}

static void test_server_errors(void)
{
    /* a collection of its own: the one above may be dropped already */
    struct qv_client_create cr = { .name = "libq_err", .dim = 8 };
    uint64_t cid;
    CU_ASSERT_EQUAL_FATAL(qv_client_create(S.c, &cr, &cid), 0);
    float q[16] = { 0 };
    uint64_t ids[10];
    uint32_t n;
    /* unknown collection: NOT_FOUND with the server's reason */
    int rc = qv_client_search(S.c, cid + 1000, q, 8, 10, NULL, ids, NULL, &n);
    CU_ASSERT_EQUAL(rc, QV_CLIENT_ENOT_FOUND);
    const char *m = qv_client_errmsg(S.c);
    CU_ASSERT_PTR_NOT_NULL(strstr(m, "SEARCH: NOT_FOUND from 127.0.0.1:"));
    /* the reason follows the prefix and is not empty */
    const char *colon = strstr(m, ": ") ? strrchr(m, ':') : NULL;
    CU_ASSERT(colon && strlen(colon) > 3);
    CU_ASSERT_STRING_EQUAL(qv_client_strerror(rc), "NOT_FOUND");
    /* wrong dim: BAD_REQUEST naming dim */
    rc = qv_client_search(S.c, cid, q, 16, 10, NULL, ids, NULL, &n);
    CU_ASSERT_EQUAL(rc, QV_CLIENT_EBAD_REQUEST);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_client_errmsg(S.c), "dim"));
    /* the same over TCP */
    rc = qv_client_search_batch(S.c, cid, 1, q, 16, 10, NULL, ids, NULL, &n);
    CU_ASSERT_EQUAL(rc, QV_CLIENT_EBAD_REQUEST);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_client_errmsg(S.c), "SEARCH_BATCH: BAD_REQUEST"));
    /* wrong dim on upsert */
    uint64_t id = 1;
    struct qv_client_rows r = { .n = 1, .dim = 16, .ids = &id, .vectors = q };
    CU_ASSERT_EQUAL(qv_client_upsert(S.c, cid, &r, NULL, NULL, NULL), QV_CLIENT_EBAD_REQUEST);
    struct qv_client_collection d;
    CU_ASSERT_EQUAL(qv_client_describe(S.c, cid + 1000, &d), QV_CLIENT_ENOT_FOUND);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_client_errmsg(S.c), "DESCRIBE: NOT_FOUND"));
    CU_ASSERT_EQUAL(qv_client_drop(S.c, cid), 0);
}

/* ---- auth ------------------------------------------------------------------- */

static void test_auth(void)
{
    if (!S.in_process)
        return;                 /* needs a server with a key */
    static const char key[] = "0123456789abcdef0123456789abcdef";
    struct qv_proto_key pk;
    CU_ASSERT_EQUAL_FATAL(qv_proto_key_init(&pk, key, 32), 0);
    struct qv_test_server ks;
    struct qv_handler_opts ho = { .key = &pk };
    CU_ASSERT_EQUAL_FATAL(qv_test_server_start(&ks, &ho), 0);

    struct qv_client *plain = qv_client_connect("127.0.0.1", ks.udp_port, ks.tcp_port, NULL);
    CU_ASSERT_FATAL(plain != NULL);
    struct qv_client_create cr = { .name = "libq_auth", .dim = 4 };
    uint64_t cid = 0;
    CU_ASSERT_EQUAL(qv_client_create(plain, &cr, &cid), QV_CLIENT_EUNAUTHORIZED);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_client_errmsg(plain), "UNAUTHORIZED"));
    CU_ASSERT_EQUAL(qv_client_ping(plain, NULL), QV_CLIENT_EUNAUTHORIZED);

    struct qv_client_opts o;
    qv_client_opts_default(&o);
    o.key = key;
    o.key_len = 32;
    struct qv_client *keyed = qv_client_connect("127.0.0.1", ks.udp_port, ks.tcp_port, &o);
    CU_ASSERT_FATAL(keyed != NULL);
    CU_ASSERT_EQUAL(qv_client_create(keyed, &cr, &cid), 0);
    float v[8] = { 1, 0, 0, 0, 0, 1, 0, 0 };
    uint64_t ids[2] = { 10, 11 };
    struct qv_client_rows r = { .n = 2, .dim = 4, .ids = ids, .vectors = v };
    CU_ASSERT_EQUAL(qv_client_upsert(keyed, cid, &r, NULL, NULL, NULL), 0);
    uint64_t hit[2];
    uint32_t n;
    CU_ASSERT_EQUAL(qv_client_search(keyed, cid, v + 4, 4, 2, NULL, hit, NULL, &n), 0);
    CU_ASSERT(n == 2 && hit[0] == 11);
    CU_ASSERT_EQUAL(qv_client_ping(keyed, NULL), 0);

    /* a key too short is refused at connect */
    o.key_len = 8;
    CU_ASSERT_PTR_NULL(qv_client_connect("127.0.0.1", ks.udp_port, ks.tcp_port, &o));
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_client_connect_errmsg(), "16 bytes"));

    qv_client_close(keyed);
    qv_client_close(plain);
    qv_test_server_stop(&ks);
    qv_proto_key_fini(&pk);
}

/* ---- retries ---------------------------------------------------------------- */

static int udp_socket(uint16_t *port)
{
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0)
        return -1;
    socklen_t l = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &l);
    *port = ntohs(a.sin_port);
    return fd;
}

static void test_timeout_after_tries(void)
{
    uint16_t port = 0;
    int fd = udp_socket(&port);         /* bound, never answers */
    CU_ASSERT_FATAL(fd >= 0);
    struct qv_client_opts o;
    qv_client_opts_default(&o);
    o.tries = 3;
    o.timeout_ms = 50;
    o.backoff_base_ms = 10;
    o.backoff_max_ms = 20;
    o.jitter = 0;
    struct qv_client *c = qv_client_connect("127.0.0.1", port, S.tport, &o);
    CU_ASSERT_FATAL(c != NULL);
    float q[4] = { 0 };
    uint64_t ids[1];
    uint32_t n;
    int64_t t0 = ms_now();
    int rc = qv_client_search(c, 1, q, 4, 1, NULL, ids, NULL, &n);
    int64_t took = ms_now() - t0;
    CU_ASSERT_EQUAL(rc, -ETIMEDOUT);
    /* 3 x 50 ms waits + backoffs of 10 and 20 ms: 180 ms */
    CU_ASSERT(took >= 178 && took < 600);
    char want[128];
    snprintf(want, sizeof want, "SEARCH: timed out after 3 tries to 127.0.0.1:%u", port);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_client_errmsg(c), want));
    struct qv_client_stats st;
    qv_client_stats(c, &st);
    CU_ASSERT_EQUAL(st.udp_sent, 3);
    CU_ASSERT_EQUAL(st.udp_retries, 2);
    CU_ASSERT_EQUAL(st.udp_timeouts, 1);
    /* the socket got exactly 3 datagrams: the first plain, the others RETRY,
     * all with the same request id */
    uint8_t buf[QV_PROTO_UDP_MAX];
    unsigned got = 0, retry = 0, same = 0;
    uint64_t first_id = 0;
    ssize_t len;
    while ((len = recv(fd, buf, sizeof buf, MSG_DONTWAIT)) > 0) {
        struct qv_proto_hdr h;
        struct qv_proto_err e;
        CU_ASSERT_EQUAL(qv_proto_parse_hdr(buf, (size_t)len, QV_PROTO_UDP, &h, &e), 0);
        if (!got)
            first_id = h.request_id;
        same += h.request_id == first_id;
        retry += (h.flags & QV_PROTO_F_RETRY) != 0;
        got++;
    }
    CU_ASSERT_EQUAL(got, 3);
    CU_ASSERT_EQUAL(retry, 2);
    CU_ASSERT_EQUAL(same, 3);
    /* async: the callback gets the timeout */
    memset(arec, 0, sizeof arec);
    CU_ASSERT_EQUAL(qv_client_search_async(c, 1, q, 4, 1, NULL, on_async, &arec[0]), 0);
    while (qv_client_inflight(c))
        qv_client_poll(c, -1);
    CU_ASSERT_EQUAL(arec[0].calls, 1);
    CU_ASSERT_EQUAL(arec[0].rc, -ETIMEDOUT);
    qv_client_close(c);
    close(fd);
}

/* A fake server: drops the first datagram of each request id; answers the
 * second (noting whether it carried RETRY) twice: the real answer, then a
 * duplicate with other ids that the client must drop. */
static struct {
    int fd;
    atomic_int stop;
    unsigned firsts, retries_flagged, answered;
} F;

static void *fake_server(void *arg)
{
    (void)arg;
    uint64_t seen[64];
    unsigned nseen = 0;
    _Alignas(8) uint8_t buf[QV_PROTO_UDP_MAX], out[QV_PROTO_UDP_MAX];
    while (!atomic_load(&F.stop)) {
        struct pollfd p = { .fd = F.fd, .events = POLLIN };
        if (poll(&p, 1, 20) <= 0)
            continue;
        struct sockaddr_in from;
        socklen_t fl = sizeof from;
        ssize_t len = recvfrom(F.fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl);
        struct qv_proto_hdr h;
        struct qv_proto_err e;
        if (len <= 0 || qv_proto_parse_hdr(buf, (size_t)len, QV_PROTO_UDP, &h, &e))
            continue;
        unsigned i = 0;
        while (i < nseen && seen[i] != h.request_id)
            i++;
        if (i == nseen) {
            if (nseen < 64)
                seen[nseen++] = h.request_id;
            F.firsts++;
            continue;                   /* lost */
        }
        F.retries_flagged += (h.flags & QV_PROTO_F_RETRY) != 0;
        uint64_t ids[2] = { 42, 43 }, dup[2] = { 666, 667 };
        float dist[2] = { 0.5f, 1.5f };
        int64_t n = qv_proto_encode_search_resp(out, sizeof out, &h, 2, 0, ids, dist);
        sendto(F.fd, out, (size_t)n, 0, (struct sockaddr *)&from, fl);
        n = qv_proto_encode_search_resp(out, sizeof out, &h, 2, 0, dup, dist);
        sendto(F.fd, out, (size_t)n, 0, (struct sockaddr *)&from, fl);
        F.answered++;
    }
    return NULL;
}

static void test_retry_flag_and_duplicates(void)
{
    uint16_t port = 0;
    memset(&F, 0, sizeof F);
    F.fd = udp_socket(&port);
    CU_ASSERT_FATAL(F.fd >= 0);
    pthread_t t;
    CU_ASSERT_EQUAL_FATAL(pthread_create(&t, NULL, fake_server, NULL), 0);
    struct qv_client_opts o;
    qv_client_opts_default(&o);
    o.tries = 3;
    o.timeout_ms = 40;
    o.backoff_base_ms = 5;
    struct qv_client *c = qv_client_connect("127.0.0.1", port, S.tport, &o);
    CU_ASSERT_FATAL(c != NULL);
    float q[4] = { 0 };
    uint64_t ids[2];
    float dist[2];
    uint32_t n;
    CU_ASSERT_EQUAL(qv_client_search(c, 1, q, 4, 2, NULL, ids, dist, &n), 0);
    CU_ASSERT(n == 2 && ids[0] == 42 && ids[1] == 43 && dist[1] == 1.5f);
    /* a second one: meanwhile the duplicate of the first is read and dropped */
    CU_ASSERT_EQUAL(qv_client_search(c, 1, q, 4, 2, NULL, ids, dist, &n), 0);
    CU_ASSERT(n == 2 && ids[0] == 42);
    /* async too: completed once, the duplicate dropped */
    memset(arec, 0, sizeof arec);
    for (unsigned i = 0; i < 5; i++)
        CU_ASSERT_EQUAL(qv_client_search_async(c, 1, q, 4, 2, NULL, on_async, &arec[i]), 0);
    while (qv_client_inflight(c))
        qv_client_poll(c, -1);
    struct qv_client_stats st;
    usleep(50000);
    qv_client_poll(c, 0);
    qv_client_stats(c, &st);
    unsigned ok = 0;
    for (unsigned i = 0; i < 5; i++)
        ok += arec[i].calls == 1 && arec[i].rc == 0 && arec[i].ids[0] == 42;
    CU_ASSERT_EQUAL(ok, 5);
    atomic_store(&F.stop, 1);
    pthread_join(t, NULL);
    CU_ASSERT_EQUAL(F.firsts, 7);
    CU_ASSERT_EQUAL(F.answered, 7);
    CU_ASSERT_EQUAL(F.retries_flagged, 7);
    CU_ASSERT_EQUAL(st.udp_retries, 7);
    /* 7 duplicates; the last ones may still sit in the socket: at least 6 */
    CU_ASSERT(st.stale >= 6 && st.stale <= 7);
    qv_client_close(c);
    close(F.fd);
}

/* ---- recall over the network equals offline, per index type ---------------- */

/*
 * For IVF, IVF-SQ8, IVF-PQ and HNSW: create a collection over the
 * network (nlist 0: the node seals at 10 000 rows, exactly siftsmall,
 * with nlist = sqrt(rows) = 100; the server runs with seal_rows = 10000,
 * so HNSW seals there too), load siftsmall (ids = row numbers), wait
 * until its one sealed segment is built, search the 100 queries one by
 * one over UDP, and build the same index here offline (the parameters
 * DESCRIBE reports, the node's build seed, one thread, keys = row
 * numbers), searched one query at a time with the same nprobe / ef.
 * The answers must be the same ids in the same order, so the recall is
 * the same; both recalls are printed.
 */
static long stat_field(const char *json, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = strstr(json, pat);
    return p ? strtol(p + strlen(pat), NULL, 10) : -1;
}

static int wait_built(uint64_t id)
{
    int64_t until = ms_now() + 180000;
    while (ms_now() < until) {
        char *js = NULL;
        if (qv_client_stats_json(S.c, id, &js) != 0)
            return -1;
        /* JSON of json-c: "key": value, spaces after the colon */
        char *q = js, *w = js;
        for (; *q; q++)
            if (*q != ' ')
                *w++ = *q;
        *w = '\0';
        int done = stat_field(js, "pending_builds") == 0 && stat_field(js, "sealed") == 1 &&
                   stat_field(js, "growing_rows") == 0;
        free(js);
        if (done)
            return 0;
        struct timespec ts = { 0, 20 * 1000000 };
        nanosleep(&ts, NULL);
    }
    return -1;
}

struct offline {
    struct qv_ivf *ivf;
    struct qv_ivfpq *pq;
    struct qv_hnsw *hnsw;
};

static int offline_build(struct offline *o, const struct qv_client_collection *d,
                         const float *vec, const uint64_t *keys)
{
    struct qv_node_opts no;
    qv_node_opts_default(&no);
    memset(o, 0, sizeof *o);
    switch (d->index) {
    case QV_CLIENT_IVF:
    case QV_CLIENT_IVF_SQ8: {
        struct qv_ivf_opts io = {
            .dim = d->dim, .metric = QV_METRIC_L2, .nlist = d->nlist, .seed = no.build_seed,
            .encoding = d->index == QV_CLIENT_IVF_SQ8 ? QV_IVF_SQ8 : QV_IVF_FLAT,
        };
        o->ivf = qv_ivf_create(&io);
        return o->ivf && qv_ivf_train(o->ivf, vec, B.n) == 0 &&
               qv_ivf_add(o->ivf, B.n, vec, keys) == 0 ? 0 : -1;
    }
    case QV_CLIENT_IVF_PQ: {
        struct qv_ivfpq_opts po = {
            .dim = d->dim, .metric = QV_METRIC_L2, .nlist = d->nlist, .m = d->pq_m,
            .nbits = d->pq_nbits, .seed = no.build_seed,
        };
        o->pq = qv_ivfpq_create(&po);
        return o->pq && qv_ivfpq_train(o->pq, vec, B.n) == 0 &&
               qv_ivfpq_add(o->pq, B.n, vec, keys) == 0 ? 0 : -1;
    }
    case QV_CLIENT_HNSW: {
        struct qv_hnsw_opts ho = {
            .dim = d->dim, .metric = QV_METRIC_L2, .M = d->hnsw_m,
            .ef_construction = d->ef_construction, .ef_search = d->ef_search,
            .seed = no.build_seed, .numa_node = -1, .hugepages = QV_HUGE_OFF,
        };
        o->hnsw = qv_hnsw_build(&ho, B.n, vec, keys);
        return o->hnsw ? 0 : -1;
    }
    default:
        return -1;
    }
}

static int offline_search(const struct offline *o, const float *q, uint32_t nprobe,
                          uint32_t ef, uint64_t *ids)
{
    float d[10];
    if (o->ivf)
        return qv_ivf_search(o->ivf, q, 1, 10, nprobe, NULL, d, ids);
    if (o->pq)
        return qv_ivfpq_search(o->pq, q, 1, 10, nprobe, 0, NULL, d, ids);
    return qv_hnsw_search(o->hnsw, q, 1, 10, ef, NULL, d, ids);
}

static void offline_free(struct offline *o)
{
    qv_ivf_free(o->ivf);
    qv_ivfpq_free(o->pq);
    qv_hnsw_free(o->hnsw);
}

static void recall_equals_offline(enum qv_client_index index, const char *name)
{
    struct qv_client_create cr = { .name = name, .dim = B.dim, .metric = QV_CLIENT_L2,
                                   .index = index };
    if (index == QV_CLIENT_IVF_PQ) {
        cr.pq_m = 16;
        cr.pq_nbits = 8;
    }
    if (index == QV_CLIENT_HNSW) {
        cr.hnsw_m = 16;
        cr.ef_construction = 100;
        cr.ef_search = 32;
    }
    uint64_t id = 0;
    CU_ASSERT_EQUAL_FATAL(qv_client_create(S.c, &cr, &id), 0);
    uint64_t *keys = malloc(B.n * sizeof *keys);
    float *vec = malloc(B.n * B.dim * sizeof *vec);
    CU_ASSERT_FATAL(keys && vec);
    for (uint64_t i = 0; i < B.n; i++)
        keys[i] = i;
    qv_vecfile_read_f32(&B, 0, B.n, vec);
    struct qv_client_rows rows = { .n = B.n, .dim = B.dim, .ids = keys, .vectors = vec };
    CU_ASSERT_EQUAL_FATAL(qv_client_upsert(S.c, id, &rows, NULL, NULL, NULL), 0);
    CU_ASSERT_EQUAL_FATAL(wait_built(id), 0);
    struct qv_client_collection d;
    CU_ASSERT_EQUAL_FATAL(qv_client_describe(S.c, id, &d), 0);
    CU_ASSERT_EQUAL(d.rows, B.n);
    CU_ASSERT_EQUAL(d.trained, 1);
    if (index != QV_CLIENT_HNSW)
        CU_ASSERT_EQUAL(d.nlist, 100);

    struct offline off;
    CU_ASSERT_EQUAL_FATAL(offline_build(&off, &d, vec, keys), 0);
    struct qv_client_search_params p = { .nprobe = 8, .ef = 32 };
    double rnet = 0, roff = 0;
    unsigned same = 0, ok = 0;
    for (unsigned i = 0; i < Q.n && i < 100; i++) {
        const float *q = qv_vecfile_row(&Q, i);
        uint64_t a[10], b[10];
        uint32_t n = 0;
        memset(b, 0xff, sizeof b);
        if (qv_client_search(S.c, id, q, Q.dim, 10, &p, a, NULL, &n) != 0) {
            fprintf(stderr, "%s: search %u: %s\n", name, i, qv_client_errmsg(S.c));
            continue;
        }
        ok += n == 10 && offline_search(&off, q, p.nprobe, p.ef, b) == 0;
        rnet += recall_of(a, n, i);
        roff += recall_of(b, 10, i);
        same += n == 10 && memcmp(a, b, sizeof a) == 0;
    }
    printf("\n    %-8s recall@10 over the network %.4f, offline %.4f, same answers %u/100 ",
           name, rnet / 100, roff / 100, same);
    CU_ASSERT_EQUAL(ok, 100);
    CU_ASSERT_EQUAL(same, 100);
    CU_ASSERT_DOUBLE_EQUAL(rnet, roff, 1e-9);
    /* an approximate index, not an exact scan in disguise */
    CU_ASSERT(rnet / 100 > 0.5 && rnet / 100 < 1.0);
    offline_free(&off);
    CU_ASSERT_EQUAL(qv_client_drop(S.c, id), 0);
    free(keys);
    free(vec);
}

static void test_recall_offline_ivf(void)
{
    recall_equals_offline(QV_CLIENT_IVF, "eq_ivf");
}

static void test_recall_offline_sq8(void)
{
    recall_equals_offline(QV_CLIENT_IVF_SQ8, "eq_ivf_sq8");
}

static void test_recall_offline_pq(void)
{
    recall_equals_offline(QV_CLIENT_IVF_PQ, "eq_ivf_pq");
}

static void test_recall_offline_hnsw(void)
{
    recall_equals_offline(QV_CLIENT_HNSW, "eq_hnsw");
}

int main(void)
{
    CU_pSuite s;
    unsigned fails;

    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    s = CU_add_suite("client", suite_init, suite_fini);
    CU_add_test(s, "create, load siftsmall in batches with progress", test_create_and_load);
    CU_add_test(s, "upsert cancelled by progress; argument errors", test_upsert_cancel_and_args);
    CU_add_test(s, "search over UDP (recall 1), batch over TCP, same answers",
                test_search_sync_udp_and_batch);
    CU_add_test(s, "200 async searches, each completed once", test_search_async_200);
    CU_add_test(s, "IVF over the network = offline", test_recall_offline_ivf);
    CU_add_test(s, "IVF-SQ8 over the network = offline", test_recall_offline_sq8);
    CU_add_test(s, "IVF-PQ over the network = offline", test_recall_offline_pq);
    CU_add_test(s, "HNSW over the network = offline", test_recall_offline_hnsw);
    CU_add_test(s, "list, lookup, get, delete, stats, ping, drop",
                test_describe_list_get_delete_drop);
    CU_add_test(s, "server errors with their reasons", test_server_errors);
    CU_add_test(s, "auth: keyed server refuses unkeyed, accepts keyed", test_auth);
    CU_add_test(s, "silent port: timeout after exactly the tries", test_timeout_after_tries);
    CU_add_test(s, "lost first datagram: RETRY re-send, duplicate dropped",
                test_retry_flag_and_duplicates);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    fails = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
    CU_cleanup_registry();
    return fails ? 1 : 0;
}
