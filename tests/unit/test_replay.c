/*
 * test_replay.c - retried writes are idempotent (quiver/handler.h "Retried
 * writes", host/server/replay_int.h).
 *
 * First the table alone (qv__replay_*): NEW / BUSY / HIT, keys that differ
 * by carrier, address, port or id, expiry on a caller's clock, eviction by
 * entries and by bytes with writes in progress kept, answers not kept.
 * Then the request path in one process, as test_handler.c builds it (the
 * service over a router with the CPU engine, the node, the handler with a
 * table of 8 entries and a 400 ms ttl, UDP and TCP on loopback): a retried
 * UPSERT answers the first epoch and does not bump it again, a retried
 * DELETE answers the first count, a retried CREATE the first id, a failed
 * write its failure; the same id from another socket is applied anew;
 * after the ttl a repeat is applied anew; older answers are evicted.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <CUnit/Basic.h>

#include "../../host/server/replay_int.h"
#include "quiver/alloc.h"
#include "quiver/engine.h"
#include "quiver/errors.h"
#include "quiver/handler.h"
#include "quiver/node.h"
#include "quiver/pool.h"
#include "quiver/proto.h"
#include "quiver/router.h"
#include "quiver/service.h"
#include "quiver/tcp.h"
#include "quiver/udp.h"

#include "server_fixture.h"

#define TTL_MS 400u
#define ENTRIES 8u

/* ---- the table alone ------------------------------------------------------------ */

static struct sockaddr_storage v4(const char *ip, uint16_t port, socklen_t *len)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *a = (struct sockaddr_in *)&ss;
    a->sin_family = AF_INET;
    a->sin_port = htons(port);
    inet_pton(AF_INET, ip, &a->sin_addr);
    *len = sizeof *a;
    return ss;
}

static void test_table_verdicts(void)
{
    struct qv_replay *r = qv__replay_create(16, 1 << 20, 1000);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    socklen_t l;
    struct sockaddr_storage a = v4("10.0.0.1", 5000, &l);
    struct sockaddr_storage b = v4("10.0.0.2", 5000, &l);
    struct sockaddr_storage c = v4("10.0.0.1", 5001, &l);
    struct qv_replay_key ka, kb, kc, kt, kn;
    qv__replay_key(&ka, QV_PROTO_UDP, &a, l, 7);
    qv__replay_key(&kb, QV_PROTO_UDP, &b, l, 7);
    qv__replay_key(&kc, QV_PROTO_UDP, &c, l, 7);
    qv__replay_key(&kt, QV_PROTO_TCP, &a, l, 7);
    qv__replay_key(&kn, QV_PROTO_UDP, &a, l, 8);
    uint8_t buf[64];
    size_t len = 0;
    CU_ASSERT_EQUAL(qv__replay_begin(r, &ka, 0, buf, sizeof buf, &len), QV_REPLAY_NEW);
    /* in progress: a repeat is BUSY; other keys are new */
    CU_ASSERT_EQUAL(qv__replay_begin(r, &ka, 1, buf, sizeof buf, &len), QV_REPLAY_BUSY);
    CU_ASSERT_EQUAL(qv__replay_begin(r, &kb, 1, buf, sizeof buf, &len), QV_REPLAY_NEW);
    CU_ASSERT_EQUAL(qv__replay_begin(r, &kc, 1, buf, sizeof buf, &len), QV_REPLAY_NEW);
    CU_ASSERT_EQUAL(qv__replay_begin(r, &kt, 1, buf, sizeof buf, &len), QV_REPLAY_NEW);
    CU_ASSERT_EQUAL(qv__replay_begin(r, &kn, 1, buf, sizeof buf, &len), QV_REPLAY_NEW);
    qv__replay_end(r, &ka, 10, "first", 5, 1);
    memset(buf, 0, sizeof buf);
    CU_ASSERT_EQUAL(qv__replay_begin(r, &ka, 11, buf, sizeof buf, &len), QV_REPLAY_HIT);
    CU_ASSERT_EQUAL(len, 5);
    CU_ASSERT_EQUAL(memcmp(buf, "first", 5), 0);
    /* a buffer too small for the stored answer */
    CU_ASSERT_EQUAL(qv__replay_begin(r, &ka, 11, buf, 4, &len), QV_ENOSPC);
    /* not kept: the entry goes, a retry is new */
    qv__replay_end(r, &kb, 12, "busy", 4, 0);
    CU_ASSERT_EQUAL(qv__replay_begin(r, &kb, 13, buf, sizeof buf, &len), QV_REPLAY_NEW);
    /* expiry: ttl 1000 ms from the store at 10 */
    CU_ASSERT_EQUAL(qv__replay_begin(r, &ka, 10 + 999999999, buf, sizeof buf, &len),
                    QV_REPLAY_HIT);
    CU_ASSERT_EQUAL(qv__replay_begin(r, &ka, 10 + 1000000000, buf, sizeof buf, &len),
                    QV_REPLAY_NEW);
    struct qv_replay_stats st;
    qv__replay_stats(r, &st);
    CU_ASSERT_EQUAL(st.hits, 2);
    CU_ASSERT_EQUAL(st.busy, 1);
    CU_ASSERT_EQUAL(st.stored, 1);
    CU_ASSERT_EQUAL(st.expirations, 1);
    CU_ASSERT_EQUAL(st.entries, 5);     /* ka, kb, kc, kt, kn, all in progress */
    qv__replay_free(r);
    qv__replay_free(NULL);
}

static void test_table_eviction(void)
{
    struct qv_replay *r = qv__replay_create(4, 1 << 20, 1000);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    struct qv_replay_key k[8];
    uint8_t buf[64];
    size_t len;
    for (unsigned i = 0; i < 8; i++)
        qv__replay_key(&k[i], QV_PROTO_UDP, NULL, 0, 100 + i);
    /* 0 stays in progress; 1..3 are stored */
    for (unsigned i = 0; i < 4; i++)
        CU_ASSERT_EQUAL(qv__replay_begin(r, &k[i], i, buf, sizeof buf, &len), QV_REPLAY_NEW);
    for (unsigned i = 1; i < 4; i++)
        qv__replay_end(r, &k[i], 10 + i, "ok", 2, 1);
    /* a fifth evicts the oldest stored (1), never the one in progress */
    CU_ASSERT_EQUAL(qv__replay_begin(r, &k[4], 20, buf, sizeof buf, &len), QV_REPLAY_NEW);
    CU_ASSERT_EQUAL(qv__replay_begin(r, &k[0], 21, buf, sizeof buf, &len), QV_REPLAY_BUSY);
    CU_ASSERT_EQUAL(qv__replay_begin(r, &k[2], 21, buf, sizeof buf, &len), QV_REPLAY_HIT);
    /* 1 was evicted: new again (and it evicts 2) */
    CU_ASSERT_EQUAL(qv__replay_begin(r, &k[1], 22, buf, sizeof buf, &len), QV_REPLAY_NEW);
    /* now 0, 1, 4 in progress + one stored: one more fits after evicting
     * it, then every entry is in progress and a new write is refused */
    CU_ASSERT_EQUAL(qv__replay_begin(r, &k[5], 23, buf, sizeof buf, &len), QV_REPLAY_NEW);
    CU_ASSERT_EQUAL(qv__replay_begin(r, &k[6], 24, buf, sizeof buf, &len), QV_EBUSY);
    struct qv_replay_stats st;
    qv__replay_stats(r, &st);
    CU_ASSERT_EQUAL(st.entries, 4);
    CU_ASSERT_EQUAL(st.evictions, 3);
    qv__replay_free(r);

    /* by bytes: a 4 KiB table keeps fewer answers of 1 KiB than entries */
    static uint8_t big[1024];
    r = qv__replay_create(100, 4096, 1000);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    for (unsigned i = 0; i < 8; i++) {
        CU_ASSERT_EQUAL(qv__replay_begin(r, &k[i], i, big, sizeof big, &len), QV_REPLAY_NEW);
        qv__replay_end(r, &k[i], i, big, sizeof big, 1);
    }
    qv__replay_stats(r, &st);
    CU_ASSERT(st.bytes <= 4096);
    CU_ASSERT(st.entries >= 2 && st.entries <= 3);
    CU_ASSERT_EQUAL(st.entries + st.evictions, 8);
    CU_ASSERT_EQUAL(qv__replay_begin(r, &k[7], 9, big, sizeof big, &len), QV_REPLAY_HIT);
    CU_ASSERT_EQUAL(qv__replay_begin(r, &k[0], 9, big, sizeof big, &len), QV_REPLAY_NEW);
    /* an answer larger than the table is not kept */
    static uint8_t huge[8192];
    qv__replay_end(r, &k[0], 10, huge, sizeof huge, 1);
    CU_ASSERT_EQUAL(qv__replay_begin(r, &k[0], 11, big, sizeof big, &len), QV_REPLAY_NEW);
    qv__replay_free(r);
}

static void test_table_errors(void)
{
    CU_ASSERT_PTR_NULL(qv__replay_create(0, 1 << 20, 1000));
    CU_ASSERT_EQUAL(qv_errno, QV_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "entries"));
    CU_ASSERT_PTR_NULL(qv__replay_create(16, 100, 1000));
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "bytes"));
    CU_ASSERT_PTR_NULL(qv__replay_create(16, 1 << 20, 0));
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "ttl_ms"));
    /* through the handler: the message names the handler's field */
    struct qv_handler_opts ho = { .node = (struct qv_node *)1,
                                  .service = (struct qv_service *)1,
                                  .replay_ttl_ms = 100000000 };
    CU_ASSERT_PTR_NULL(qv_handler_create(&ho));
    CU_ASSERT_EQUAL(qv_errno, QV_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "replay_ttl_ms"));
    /* allocation failures leak nothing */
    for (long n = 0; n < 64; n++) {
        qv_alloc_fail_after(n);
        struct qv_replay *r = qv__replay_create(2048, 1 << 20, 1000);
        qv_alloc_fail_after(-1);
        if (r) {
            qv__replay_free(r);
            break;
        }
        CU_ASSERT_EQUAL(qv_errno, QV_ENOMEM);
    }
}

/* ---- the request path ------------------------------------------------------------ */

static struct {
    struct qv_test_server srv;
    struct qv_handler *h;
    struct sockaddr_in ua, ta;
    uint64_t next_id;
} S;

static _Alignas(64) uint8_t txb[1 << 16];
static _Alignas(64) uint8_t rxb[1 << 16];

static int suite_init(void)
{
    struct qv_handler_opts ho = { .replay_entries = ENTRIES, .replay_ttl_ms = TTL_MS };
    if (qv_test_server_start(&S.srv, &ho))
        return -1;
    S.h = S.srv.h;
    S.ua = (struct sockaddr_in){ .sin_family = AF_INET, .sin_port = htons(S.srv.udp_port),
                                 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    S.ta = S.ua;
    S.ta.sin_port = htons(S.srv.tcp_port);
    S.next_id = 1000;
    return 0;
}

static int suite_fini(void)
{
    qv_test_server_stop(&S.srv);
    return 0;
}

/* A client socket: UDP (connected) or TCP. */
static int client(int tcp)
{
    int fd = socket(AF_INET, tcp ? SOCK_STREAM : SOCK_DGRAM, 0);
    const struct sockaddr_in *a = tcp ? &S.ta : &S.ua;
    if (fd >= 0 && connect(fd, (const struct sockaddr *)a, sizeof *a) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Send msg on fd and decode the answer into *r: 0, or -1. */
static int call(int fd, int tcp, const void *msg, size_t len, struct qv_proto_resp *r)
{
    struct qv_proto_err err;
    if (send(fd, msg, len, MSG_NOSIGNAL) != (ssize_t)len)
        return -1;
    size_t got = 0, need = tcp ? QV_PROTO_HDR_SIZE : 1;
    while (got < need) {
        struct pollfd p = { .fd = fd, .events = POLLIN };
        if (poll(&p, 1, 10000) <= 0)
            return -1;
        ssize_t n = recv(fd, rxb + got, sizeof rxb - got, 0);
        if (n <= 0)
            return -1;
        got += (size_t)n;
        need = tcp && got >= QV_PROTO_HDR_SIZE ? qv_proto_tcp_need(rxb, got) : got;
    }
    return qv_proto_decode_response(rxb, need, tcp ? QV_PROTO_TCP : QV_PROTO_UDP, NULL, r,
                                    &err) ? -1 : 0;
}

/* Mark an encoded request as a retry (flags at offset 4, little-endian). */
static void mark_retry(uint8_t *msg)
{
    uint16_t f = (uint16_t)(msg[4] | msg[5] << 8);
    f |= QV_PROTO_F_RETRY;
    msg[4] = (uint8_t)f;
    msg[5] = (uint8_t)(f >> 8);
}

static uint64_t epoch_of(int fd, int tcp, uint64_t coll)
{
    struct qv_proto_resp r;
    int64_t n = qv_proto_encode_empty_req(txb, sizeof txb, QV_PROTO_OP_DESCRIBE, S.next_id++,
                                          coll);
    if (n <= 0 || call(fd, tcp, txb, (size_t)n, &r) || r.hdr.status != QV_PROTO_OK)
        return UINT64_MAX;
    return r.u.desc.epoch;
}

static uint64_t create(int fd, int tcp, const char *name, uint64_t rid, int *status)
{
    struct qv_proto_resp r;
    struct qv_proto_create c = { .dim = 4, .metric = QV_PROTO_METRIC_L2,
                                 .index = QV_PROTO_INDEX_FLAT,
                                 .name = { name, (uint32_t)strlen(name) } };
    int64_t n = qv_proto_encode_create(txb, sizeof txb, rid, &c);
    *status = -1;
    if (n <= 0 || call(fd, tcp, txb, (size_t)n, &r))
        return 0;
    *status = r.hdr.status;
    return r.hdr.status == QV_PROTO_OK ? r.u.collection_id : 0;
}

/* Encode an UPSERT of ids first..first+m-1 into txb. */
static int64_t enc_upsert(uint64_t rid, uint64_t coll, uint64_t first, uint32_t m)
{
    static uint64_t ids[16];
    static float vec[16 * 4];
    for (uint32_t i = 0; i < m; i++) {
        ids[i] = first + i;
        for (int d = 0; d < 4; d++)
            vec[i * 4 + d] = (float)(first + i) + (float)d * 0.25f;
    }
    struct qv_proto_upsert u = { .n = m, .dim = 4, .ids = ids, .vectors = vec };
    return qv_proto_encode_upsert(txb, sizeof txb, rid, coll, &u);
}

static void retried_writes(int tcp)
{
    struct qv_proto_resp r, r2;
    struct qv_handler_stats st0, st1;
    int fd = client(tcp), st;
    CU_ASSERT_FATAL(fd >= 0);
    qv_handler_stats(S.h, &st0);

    /* CREATE, retried: the first id, not EXISTS */
    uint64_t rid = S.next_id++;
    uint64_t coll = create(fd, tcp, tcp ? "rt" : "ru", rid, &st);
    CU_ASSERT_EQUAL_FATAL(st, QV_PROTO_OK);
    CU_ASSERT_EQUAL(create(fd, tcp, tcp ? "rt" : "ru", rid, &st), coll);
    CU_ASSERT_EQUAL(st, QV_PROTO_OK);
    CU_ASSERT_EQUAL(create(fd, tcp, tcp ? "rt" : "ru", S.next_id++, &st), 0);
    CU_ASSERT_EQUAL(st, QV_PROTO_EXISTS);

    /* UPSERT, retried with RETRY set: the first answer, one epoch bump */
    rid = S.next_id++;
    int64_t n = enc_upsert(rid, coll, 1, 8);
    CU_ASSERT_FATAL(n > 0);
    CU_ASSERT_EQUAL_FATAL(call(fd, tcp, txb, (size_t)n, &r), 0);
    CU_ASSERT_EQUAL_FATAL(r.hdr.status, QV_PROTO_OK);
    CU_ASSERT_EQUAL(r.u.write.count, 8);
    uint64_t e1 = r.u.write.epoch;
    CU_ASSERT_EQUAL(epoch_of(fd, tcp, coll), e1);
    n = enc_upsert(rid, coll, 1, 8);
    mark_retry(txb);
    CU_ASSERT_EQUAL_FATAL(call(fd, tcp, txb, (size_t)n, &r2), 0);
    CU_ASSERT_EQUAL(r2.hdr.status, QV_PROTO_OK);
    CU_ASSERT_EQUAL(r2.hdr.request_id, rid);
    CU_ASSERT_EQUAL(r2.u.write.count, 8);
    CU_ASSERT_EQUAL(r2.u.write.epoch, e1);
    CU_ASSERT_EQUAL(epoch_of(fd, tcp, coll), e1);

    /* DELETE, retried: the first count (not 0), no bump */
    uint64_t del[3] = { 1, 2, 99 };
    struct qv_proto_ids di = { .n = 3, .ids = del };
    rid = S.next_id++;
    n = qv_proto_encode_delete(txb, sizeof txb, rid, coll, &di);
    CU_ASSERT_EQUAL_FATAL(call(fd, tcp, txb, (size_t)n, &r), 0);
    CU_ASSERT_EQUAL(r.hdr.status, QV_PROTO_OK);
    CU_ASSERT_EQUAL(r.u.write.count, 2);
    uint64_t e2 = r.u.write.epoch;
    CU_ASSERT(e2 > e1);
    CU_ASSERT_EQUAL_FATAL(call(fd, tcp, txb, (size_t)n, &r2), 0);
    CU_ASSERT_EQUAL(r2.hdr.status, QV_PROTO_OK);
    CU_ASSERT_EQUAL(r2.u.write.count, 2);
    CU_ASSERT_EQUAL(r2.u.write.epoch, e2);
    /* a new id deletes nothing more */
    n = qv_proto_encode_delete(txb, sizeof txb, S.next_id++, coll, &di);
    CU_ASSERT_EQUAL_FATAL(call(fd, tcp, txb, (size_t)n, &r), 0);
    CU_ASSERT_EQUAL(r.u.write.count, 0);

    /* the same id from another socket (another port): applied anew */
    rid = S.next_id++;
    n = enc_upsert(rid, coll, 20, 2);
    CU_ASSERT_EQUAL_FATAL(call(fd, tcp, txb, (size_t)n, &r), 0);
    uint64_t e3 = r.u.write.epoch;
    int fd2 = client(tcp);
    CU_ASSERT_FATAL(fd2 >= 0);
    CU_ASSERT_EQUAL_FATAL(call(fd2, tcp, txb, (size_t)n, &r2), 0);
    CU_ASSERT_EQUAL(r2.hdr.status, QV_PROTO_OK);
    CU_ASSERT(r2.u.write.epoch > e3);
    close(fd2);

    /* a failure with a status is kept too: a DROP of an unknown id */
    rid = S.next_id++;
    n = qv_proto_encode_empty_req(txb, sizeof txb, QV_PROTO_OP_DROP, rid, 987654);
    CU_ASSERT_EQUAL_FATAL(call(fd, tcp, txb, (size_t)n, &r), 0);
    CU_ASSERT_EQUAL(r.hdr.status, QV_PROTO_NOT_FOUND);
    qv_handler_stats(S.h, &st1);
    uint64_t replayed = st1.replayed;
    CU_ASSERT_EQUAL_FATAL(call(fd, tcp, txb, (size_t)n, &r), 0);
    CU_ASSERT_EQUAL(r.hdr.status, QV_PROTO_NOT_FOUND);
    qv_handler_stats(S.h, &st1);
    CU_ASSERT_EQUAL(st1.replayed, replayed + 1);
    CU_ASSERT_EQUAL(st1.replayed, st0.replayed + 4);

    /* DROP, retried: OK twice (not NOT_FOUND) */
    rid = S.next_id++;
    n = qv_proto_encode_empty_req(txb, sizeof txb, QV_PROTO_OP_DROP, rid, coll);
    CU_ASSERT_EQUAL_FATAL(call(fd, tcp, txb, (size_t)n, &r), 0);
    CU_ASSERT_EQUAL(r.hdr.status, QV_PROTO_OK);
    CU_ASSERT_EQUAL_FATAL(call(fd, tcp, txb, (size_t)n, &r), 0);
    CU_ASSERT_EQUAL(r.hdr.status, QV_PROTO_OK);
    close(fd);
}

static void test_retried_writes_udp(void)
{
    retried_writes(0);
}

static void test_retried_writes_tcp(void)
{
    retried_writes(1);
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

/* After the ttl, and once evicted, a repeat is applied anew. */
static void ttl_and_eviction(int tcp)
{
    struct qv_proto_resp r;
    int fd = client(tcp), st;
    CU_ASSERT_FATAL(fd >= 0);
    uint64_t coll = create(fd, tcp, tcp ? "et" : "eu", S.next_id++, &st);
    CU_ASSERT_EQUAL_FATAL(st, QV_PROTO_OK);
    uint64_t rid = S.next_id++;
    int64_t n = enc_upsert(rid, coll, 1, 1);
    CU_ASSERT_EQUAL_FATAL(call(fd, tcp, txb, (size_t)n, &r), 0);
    uint64_t e1 = r.u.write.epoch;
    CU_ASSERT_EQUAL_FATAL(call(fd, tcp, txb, (size_t)n, &r), 0);
    CU_ASSERT_EQUAL(r.u.write.epoch, e1);
    sleep_ms(TTL_MS + 100);
    CU_ASSERT_EQUAL_FATAL(call(fd, tcp, txb, (size_t)n, &r), 0);
    CU_ASSERT_EQUAL(r.hdr.status, QV_PROTO_OK);
    CU_ASSERT(r.u.write.epoch > e1);
    uint64_t e2 = r.u.write.epoch;

    /* ENTRIES more writes push rid's answer out (one stripe: exact LRU) */
    for (unsigned i = 0; i < ENTRIES; i++) {
        n = enc_upsert(S.next_id++, coll, 100 + i, 1);
        CU_ASSERT_EQUAL_FATAL(call(fd, tcp, txb, (size_t)n, &r), 0);
        CU_ASSERT_EQUAL(r.hdr.status, QV_PROTO_OK);
    }
    uint64_t last = S.next_id - 1;
    uint64_t e3 = r.u.write.epoch;
    CU_ASSERT(e3 > e2);
    n = enc_upsert(rid, coll, 1, 1);
    CU_ASSERT_EQUAL_FATAL(call(fd, tcp, txb, (size_t)n, &r), 0);
    CU_ASSERT(r.u.write.epoch > e3);
    uint64_t e4 = r.u.write.epoch;
    /* the newest of them is still there */
    n = enc_upsert(last, coll, 100 + ENTRIES - 1, 1);
    CU_ASSERT_EQUAL_FATAL(call(fd, tcp, txb, (size_t)n, &r), 0);
    CU_ASSERT_EQUAL(r.u.write.epoch, e3);
    CU_ASSERT_EQUAL(epoch_of(fd, tcp, coll), e4);
    struct qv_handler_stats hs;
    qv_handler_stats(S.h, &hs);
    CU_ASSERT(hs.replay_entries <= ENTRIES);
    close(fd);
}

static void test_ttl_and_eviction_udp(void)
{
    ttl_and_eviction(0);
}

static void test_ttl_and_eviction_tcp(void)
{
    ttl_and_eviction(1);
}

int main(void)
{
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 1;
    CU_pSuite s = CU_add_suite("replay table", NULL, NULL);
    CU_add_test(s, "new, busy, hit, keys, expiry", test_table_verdicts);
    CU_add_test(s, "eviction by entries and bytes; in progress kept", test_table_eviction);
    CU_add_test(s, "bad options name the field; ENOMEM leaks nothing", test_table_errors);
    s = CU_add_suite("replay", suite_init, suite_fini);
    CU_add_test(s, "retried writes over UDP answer the first answer", test_retried_writes_udp);
    CU_add_test(s, "retried writes over TCP answer the first answer", test_retried_writes_tcp);
    CU_add_test(s, "ttl and eviction over UDP: applied anew", test_ttl_and_eviction_udp);
    CU_add_test(s, "ttl and eviction over TCP: applied anew", test_ttl_and_eviction_tcp);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned fails = CU_get_number_of_failures() + CU_get_number_of_suites_failed();
    CU_cleanup_registry();
    return fails ? 1 : 0;
}
