/*
 * test_handler.c - quiverd's request path end to end in one process: the
 * query service over a router with the CPU engine, the node, the request
 * handler, the UDP and TCP transports on loopback, and a client speaking
 * the wire protocol (quiver/proto.h).
 *
 * siftsmall is created and loaded over TCP (UPSERT in batches of 1000),
 * searched over UDP one query per datagram and over TCP in one
 * SEARCH_BATCH: the answers equal an exact search of the same vectors
 * (FLAT) and recall@10 against the data set's ground truth is 1.  A
 * table of malformed datagrams gets the right status (or none) and the
 * node keeps answering; PING, DESCRIBE, LIST, GET, DELETE, STATS, DROP.
 *
 * With QV_TEST_SERVER=UDP_PORT,TCP_PORT in the environment the same tests
 * run against a quiverd already listening on 127.0.0.1 at those ports
 * (tests/integration/daemon.sh), and the in-process counters are not
 * checked.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <CUnit/Basic.h>

#include "quiver/alloc.h"
#include "quiver/engine.h"
#include "quiver/errors.h"
#include "quiver/flat.h"
#include "quiver/handler.h"
#include "quiver/node.h"
#include "quiver/pool.h"
#include "quiver/proto.h"
#include "quiver/router.h"
#include "quiver/service.h"
#include "quiver/tcp.h"
#include "quiver/udp.h"
#include "quiver/vecio.h"

#include "server_fixture.h"

static struct {
    struct qv_test_server srv;
    struct qv_handler *h;           /* in process only; NULL with QV_TEST_SERVER */
    int ufd, tfd;
    uint16_t tport;
    uint64_t next_id;
} S;

static _Alignas(64) uint8_t txb[1 << 20];
static _Alignas(64) uint8_t rxb[(64u << 20) + 4096];

static int connect_to(uint16_t uport, uint16_t tport)
{
    S.ufd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(uport),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    connect(S.ufd, (struct sockaddr *)&a, sizeof a);
    S.tfd = socket(AF_INET, SOCK_STREAM, 0);
    S.tport = tport;
    a.sin_port = htons(tport);
    if (connect(S.tfd, (struct sockaddr *)&a, sizeof a) != 0)
        return -1;
    S.next_id = 1;
    return 0;
}

static int suite_init(void)
{
    const char *ext = getenv("QV_TEST_SERVER");
    unsigned up, tp;
    if (ext && sscanf(ext, "%u,%u", &up, &tp) == 2)
        return connect_to((uint16_t)up, (uint16_t)tp);
    if (qv_test_server_start(&S.srv, NULL))
        return -1;
    S.h = S.srv.h;
    return connect_to(S.srv.udp_port, S.srv.tcp_port);
}

static int suite_fini(void)
{
    close(S.ufd);
    close(S.tfd);
    qv_test_server_stop(&S.srv);
    return 0;
}

/* ---- the client -------------------------------------------------------------- */

/* One datagram out, its answer decoded into *r (0), or -1 (timeout /
 * undecodable). */
static int udp_call(const void *msg, size_t len, struct qv_proto_resp *r)
{
    struct qv_proto_err err;
    send(S.ufd, msg, len, 0);
    struct pollfd p = { .fd = S.ufd, .events = POLLIN };
    if (poll(&p, 1, 5000) <= 0)
        return -1;
    ssize_t n = recv(S.ufd, rxb, sizeof rxb, 0);
    if (n <= 0)
        return -1;
    return qv_proto_decode_response(rxb, (size_t)n, QV_PROTO_UDP, NULL, r, &err) ? -1 : 0;
}

/* Nothing comes back within ms. */
static int udp_silent(const void *msg, size_t len, int ms)
{
    send(S.ufd, msg, len, 0);
    struct pollfd p = { .fd = S.ufd, .events = POLLIN };
    return poll(&p, 1, ms) == 0;
}

static int tcp_call(const void *msg, size_t len, struct qv_proto_resp *r)
{
    struct qv_proto_err err;
    const uint8_t *p = msg;
    while (len) {
        ssize_t n = send(S.tfd, p, len, MSG_NOSIGNAL);
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    size_t got = 0, need = QV_PROTO_HDR_SIZE;
    while (got < need) {
        struct pollfd pf = { .fd = S.tfd, .events = POLLIN };
        if (poll(&pf, 1, 20000) <= 0)
            return -1;
        ssize_t n = recv(S.tfd, rxb + got, sizeof rxb - got, 0);
        if (n <= 0)
            return -1;
        got += (size_t)n;
        if (got >= QV_PROTO_HDR_SIZE)
            need = qv_proto_tcp_need(rxb, got);
    }
    return qv_proto_decode_response(rxb, need, QV_PROTO_TCP, NULL, r, &err) ? -1 : 0;
}

static uint64_t rid(void)
{
    return S.next_id++;
}

/* ---- the data ---------------------------------------------------------------- */

static struct qv_vecfile B, Q, G;
static uint64_t coll;

static int open_sift(void)
{
    return qv_test_open_siftsmall(&B, &Q, &G);
}

/* In process: the fixture's stack answers over both carriers. */
static void test_fixture_serves(void)
{
    if (S.h)
        qv_test_server_check(&S.srv);
}

static void test_create_and_load(void)
{
    struct qv_proto_resp r;
    CU_ASSERT_EQUAL_FATAL(open_sift(), 0);
    struct qv_proto_create c = { .dim = B.dim, .metric = QV_PROTO_METRIC_L2,
                                 .index = QV_PROTO_INDEX_FLAT, .nattrs = 1,
                                 .name = { "sift", 4 }, .attrs = { { "tag", 3 } } };
    int64_t n = qv_proto_encode_create(txb, sizeof txb, rid(), &c);
    CU_ASSERT_FATAL(n > 0);
    CU_ASSERT_EQUAL_FATAL(tcp_call(txb, (size_t)n, &r), 0);
    CU_ASSERT_EQUAL_FATAL(r.hdr.status, QV_PROTO_OK);
    coll = r.u.collection_id;
    /* the same name again: EXISTS */
    n = qv_proto_encode_create(txb, sizeof txb, rid(), &c);
    CU_ASSERT_EQUAL(tcp_call(txb, (size_t)n, &r), 0);
    CU_ASSERT_EQUAL(r.hdr.status, QV_PROTO_EXISTS);
    /* load in batches of 1000 over TCP */
    static uint64_t ids[1000];
    static float vec[1000 * 128];
    static int64_t tag[1000];
    for (uint64_t first = 0; first < B.n; first += 1000) {
        uint32_t m = (uint32_t)(B.n - first < 1000 ? B.n - first : 1000);
        for (uint32_t i = 0; i < m; i++) {
            ids[i] = first + i;
            tag[i] = (int64_t)((first + i) % 10);
        }
        qv_vecfile_read_f32(&B, first, m, vec);
        struct qv_proto_upsert u = { .n = m, .dim = B.dim, .nattrs = 1, .ids = ids,
                                     .vectors = vec, .attrs = { tag } };
        n = qv_proto_encode_upsert(txb, sizeof txb, rid(), coll, &u);
        CU_ASSERT_FATAL(n > 0);
        CU_ASSERT_EQUAL_FATAL(tcp_call(txb, (size_t)n, &r), 0);
        CU_ASSERT_EQUAL_FATAL(r.hdr.status, QV_PROTO_OK);
        CU_ASSERT_EQUAL(r.u.write.count, m);
    }
    n = qv_proto_encode_empty_req(txb, sizeof txb, QV_PROTO_OP_DESCRIBE, rid(), coll);
    CU_ASSERT_EQUAL(udp_call(txb, (size_t)n, &r), 0);
    CU_ASSERT_EQUAL(r.hdr.status, QV_PROTO_OK);
    CU_ASSERT_EQUAL(r.u.desc.rows, B.n);
    CU_ASSERT_EQUAL(r.u.desc.dim, B.dim);
}

/* recall@10 of the answers against the ground truth (set overlap). */
static double recall_of(const uint64_t *ids, uint32_t n, unsigned qi)
{
    const int32_t *gt = qv_vecfile_row(&G, qi);
    unsigned hits = 0;
    for (uint32_t j = 0; j < n; j++)
        for (unsigned t = 0; t < 10; t++)
            hits += ids[j] == (uint64_t)gt[t];
    return hits / 10.0;
}

static void test_search_udp_and_batch_tcp(void)
{
    struct qv_proto_resp r;
    double rec = 0;
    unsigned ok = 0;
    static uint64_t udp_ids[100][10];
    for (unsigned i = 0; i < Q.n; i++) {
        struct qv_proto_search s = { .dim = Q.dim, .k = 10, .nq = 1,
                                     .queries = (const float *)qv_vecfile_row(&Q, i) };
        int64_t n = qv_proto_encode_search(txb, sizeof txb, rid(), coll, &s);
        if (n <= 0 || udp_call(txb, (size_t)n, &r) || r.hdr.status != QV_PROTO_OK)
            continue;
        ok++;
        rec += recall_of(r.u.search.ids, r.u.search.n[0], i);
        memcpy(udp_ids[i], r.u.search.ids, 10 * sizeof(uint64_t));
    }
    CU_ASSERT_EQUAL(ok, Q.n);
    CU_ASSERT(rec / Q.n > 0.999);
    /* the same queries as one SEARCH_BATCH over TCP: the same answers */
    static float qs[100 * 128];
    qv_vecfile_read_f32(&Q, 0, Q.n, qs);
    struct qv_proto_search s = { .dim = Q.dim, .k = 10, .nq = (uint32_t)Q.n, .queries = qs };
    int64_t n = qv_proto_encode_search_batch(txb, sizeof txb, rid(), coll, &s);
    CU_ASSERT_FATAL(n > 0);
    CU_ASSERT_EQUAL_FATAL(tcp_call(txb, (size_t)n, &r), 0);
    CU_ASSERT_EQUAL_FATAL(r.hdr.status, QV_PROTO_OK);
    CU_ASSERT_EQUAL(r.u.search.nq, Q.n);
    unsigned same = 0;
    for (unsigned i = 0; i < Q.n; i++)
        same += memcmp(r.u.search.ids + (size_t)i * 10, udp_ids[i], 10 * sizeof(uint64_t)) == 0;
    CU_ASSERT_EQUAL(same, Q.n);
    /* a repeat is a cache hit, flagged */
    struct qv_proto_search s1 = { .dim = Q.dim, .k = 10, .nq = 1, .queries = qs };
    n = qv_proto_encode_search(txb, sizeof txb, rid(), coll, &s1);
    CU_ASSERT_EQUAL(udp_call(txb, (size_t)n, &r), 0);
    CU_ASSERT_EQUAL(r.hdr.status, QV_PROTO_OK);
    CU_ASSERT(r.u.search.rflags[0] & QV_PROTO_RF_CACHED);
    /* with a filter: only rows whose tag is 3 */
    s1.filter = (struct qv_proto_str){ "tag == 3", 8 };
    n = qv_proto_encode_search(txb, sizeof txb, rid(), coll, &s1);
    CU_ASSERT_EQUAL(udp_call(txb, (size_t)n, &r), 0);
    CU_ASSERT_EQUAL(r.hdr.status, QV_PROTO_OK);
    unsigned bad = 0;
    for (uint32_t j = 0; j < r.u.search.n[0]; j++)
        bad += r.u.search.ids[j] % 10 != 3;
    CU_ASSERT_EQUAL(bad, 0);
    CU_ASSERT_EQUAL(r.u.search.n[0], 10);
}

/* Malformed datagrams: each the right status (or silence), and the node
 * answers a PING after each. */
static void test_malformed(void)
{
    struct qv_proto_resp r;
    static float q[128];
    struct qv_proto_search s = { .dim = 128, .k = 10, .nq = 1, .queries = q };
    struct { const char *what; int mutate; uint16_t status; } cases[] = {
        { "truncated", 1, 0xFFFF },             /* length mismatch */
        { "wrong magic", 2, 0xFFFE },           /* dropped */
        { "wrong version", 3, QV_PROTO_BAD_REQUEST },
        { "unknown opcode", 4, QV_PROTO_BAD_REQUEST },
        { "k = 0", 5, QV_PROTO_BAD_REQUEST },
        { "NaN in the query", 6, QV_PROTO_BAD_REQUEST },
        { "wrong dim", 7, QV_PROTO_BAD_REQUEST },
        { "unknown collection", 8, QV_PROTO_NOT_FOUND },
        { "too short for a header", 9, 0xFFFE },
    };
    for (unsigned c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        memset(q, 0, sizeof q);
        s.k = 10;
        s.dim = 128;
        int64_t n = qv_proto_encode_search(txb, sizeof txb, rid(), coll, &s);
        size_t len = (size_t)n;
        switch (cases[c].mutate) {
        case 1: len -= 4; break;
        case 2: txb[0] ^= 0xFF; break;
        case 3: txb[2] = 9; break;
        case 4: txb[3] = 0x7F; break;
        case 5:
            s.k = 0;
            len = (size_t)qv_proto_encode_search(txb, sizeof txb, rid(), coll, &s);
            break;
        case 6:
            q[5] = NAN;
            len = (size_t)qv_proto_encode_search(txb, sizeof txb, rid(), coll, &s);
            break;
        case 7:
            s.dim = 64;
            len = (size_t)qv_proto_encode_search(txb, sizeof txb, rid(), coll, &s);
            break;
        case 8:
            len = (size_t)qv_proto_encode_search(txb, sizeof txb, rid(), coll + 1000, &s);
            break;
        case 9: len = 10; break;
        }
        if (cases[c].status == 0xFFFE) {
            CU_ASSERT(udp_silent(txb, len, 200));
        } else if (cases[c].mutate == 4) {
            /* the answer echoes the unknown opcode, which a client's
             * decoder refuses: read its status field raw */
            send(S.ufd, txb, len, 0);
            struct pollfd p = { .fd = S.ufd, .events = POLLIN };
            CU_ASSERT_FATAL(poll(&p, 1, 5000) == 1);
            ssize_t got = recv(S.ufd, rxb, sizeof rxb, 0);
            CU_ASSERT(got >= QV_PROTO_HDR_SIZE);
            uint16_t st;
            memcpy(&st, rxb + 6, 2);
            CU_ASSERT_EQUAL(st, QV_PROTO_BAD_REQUEST);
        } else {
            int rc = udp_call(txb, len, &r);
            CU_ASSERT_EQUAL(rc, 0);
            if (cases[c].status != 0xFFFF) {
                CU_ASSERT_EQUAL(r.hdr.status, cases[c].status);
            } else {
                CU_ASSERT_NOT_EQUAL(r.hdr.status, QV_PROTO_OK);
            }
            if (rc == 0 && r.hdr.status != QV_PROTO_OK)
                CU_ASSERT(r.u.error.reason.len > 0);
        }
        int64_t pn = qv_proto_encode_empty_req(txb, sizeof txb, QV_PROTO_OP_PING, rid(), 0);
        CU_ASSERT_EQUAL(udp_call(txb, (size_t)pn, &r), 0);
        CU_ASSERT_EQUAL(r.hdr.status, QV_PROTO_OK);
    }
    if (S.h) {
        struct qv_handler_stats hs;
        qv_handler_stats(S.h, &hs);
        CU_ASSERT(hs.malformed >= 5);
        CU_ASSERT(hs.dropped >= 2);
    }
}

/* ---- malformed TCP frames ----------------------------------------------------- */

static int tcp_dial(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(S.tport),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* One answer frame on fd: its status (raw header field), -1 on EOF,
 * -2 on timeout. */
static int tcp_status(int fd)
{
    uint8_t h[QV_PROTO_HDR_SIZE];
    size_t got = 0;
    while (got < sizeof h) {
        struct pollfd p = { .fd = fd, .events = POLLIN };
        if (poll(&p, 1, 5000) <= 0)
            return -2;
        ssize_t n = recv(fd, h + got, sizeof h - got, 0);
        if (n <= 0)
            return -1;
        got += (size_t)n;
    }
    uint32_t body;
    uint16_t st, flags;
    memcpy(&body, h + 24, 4);
    memcpy(&flags, h + 4, 2);
    memcpy(&st, h + 6, 2);
    size_t left = body + ((flags & QV_PROTO_F_AUTH) ? QV_PROTO_TAG_SIZE : 0);
    while (left) {
        uint8_t tmp[4096];
        ssize_t n = recv(fd, tmp, left < sizeof tmp ? left : sizeof tmp, 0);
        if (n <= 0)
            return -1;
        left -= (size_t)n;
    }
    return st;
}

/* The connection is closed by the server within 5 s. */
static int tcp_closed(int fd)
{
    uint8_t b[256];
    for (;;) {
        struct pollfd p = { .fd = fd, .events = POLLIN };
        if (poll(&p, 1, 5000) <= 0)
            return 0;
        ssize_t n = recv(fd, b, sizeof b, 0);
        if (n <= 0)
            return 1;
    }
}

static int tcp_ping_ok(int fd)
{
    int64_t n = qv_proto_encode_empty_req(txb, sizeof txb, QV_PROTO_OP_PING, rid(), 0);
    send(fd, txb, (size_t)n, MSG_NOSIGNAL);
    return tcp_status(fd) == QV_PROTO_OK;
}

/* Each bad frame on a connection of its own: the frames the stream's
 * framing survives are answered BAD_REQUEST and the connection keeps
 * serving; those it cannot survive are answered (or not) and closed;
 * the node serves new connections and UDP throughout. */
static void test_malformed_tcp(void)
{
    static float q[128];
    struct qv_proto_search s = { .dim = 128, .k = 10, .nq = 1, .queries = q };
    enum { KEEPS, CLOSES };
    struct { const char *what; int mutate, outcome; } cases[] = {
        { "unknown opcode", 1, KEEPS },
        { "k = 0", 2, KEEPS },
        { "NaN in the query", 3, KEEPS },
        { "wrong magic", 4, CLOSES },
        { "wrong version", 5, CLOSES },
        { "body over 64 MiB", 6, CLOSES },
        { "stream ends inside a message", 7, CLOSES },
    };
    for (unsigned c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int fd = tcp_dial();
        CU_ASSERT_FATAL(fd >= 0);
        memset(q, 0, sizeof q);
        s.k = 10;
        if (cases[c].mutate == 2)
            s.k = 0;
        if (cases[c].mutate == 3)
            q[7] = NAN;
        int64_t n = qv_proto_encode_search(txb, sizeof txb, rid(), coll ? coll : 1, &s);
        size_t len = (size_t)n;
        uint32_t huge = (64u << 20) + 1;
        switch (cases[c].mutate) {
        case 1: txb[3] = 0x7E; break;
        case 4: txb[0] ^= 0xFF; break;
        case 5: txb[2] = 7; break;
        case 6: memcpy(txb + 24, &huge, 4); len = QV_PROTO_HDR_SIZE; break;
        case 7: len = QV_PROTO_HDR_SIZE + 10; break;
        }
        send(fd, txb, len, MSG_NOSIGNAL);
        if (cases[c].mutate == 7)
            shutdown(fd, SHUT_WR);
        if (cases[c].outcome == KEEPS) {
            int st = tcp_status(fd);
            if (st != QV_PROTO_BAD_REQUEST)
                fprintf(stderr, "tcp case %s: status %d\n", cases[c].what, st);
            CU_ASSERT_EQUAL(st, QV_PROTO_BAD_REQUEST);
            CU_ASSERT(tcp_ping_ok(fd));
        } else {
            int closed = tcp_closed(fd);
            if (!closed)
                fprintf(stderr, "tcp case %s: still open\n", cases[c].what);
            CU_ASSERT(closed);
        }
        close(fd);
        int fd2 = tcp_dial();
        CU_ASSERT(fd2 >= 0 && tcp_ping_ok(fd2));
        close(fd2);
    }
    struct qv_proto_resp r;
    int64_t pn = qv_proto_encode_empty_req(txb, sizeof txb, QV_PROTO_OP_PING, rid(), 0);
    CU_ASSERT_EQUAL(udp_call(txb, (size_t)pn, &r), 0);
}

static void test_get_delete_list_stats_drop(void)
{
    struct qv_proto_resp r;
    uint64_t ids[3] = { 7, 9999, 123456 };
    struct qv_proto_ids get = { .n = 3, .ids = ids };
    int64_t n = qv_proto_encode_get(txb, sizeof txb, rid(), coll, &get);
    CU_ASSERT_EQUAL(tcp_call(txb, (size_t)n, &r), 0);
    CU_ASSERT_EQUAL(r.hdr.status, QV_PROTO_OK);
    CU_ASSERT_EQUAL(r.u.get.n, 3);
    CU_ASSERT(r.u.get.found[0] && r.u.get.found[1] && !r.u.get.found[2]);
    CU_ASSERT_EQUAL(memcmp(r.u.get.vectors, qv_vecfile_row(&B, 7), 128 * sizeof(float)), 0);
    /* delete 7: it is gone from GET and from search answers */
    struct qv_proto_ids del = { .n = 1, .ids = ids };
    n = qv_proto_encode_delete(txb, sizeof txb, rid(), coll, &del);
    CU_ASSERT_EQUAL(udp_call(txb, (size_t)n, &r), 0);
    CU_ASSERT_EQUAL(r.hdr.status, QV_PROTO_OK);
    CU_ASSERT_EQUAL(r.u.write.count, 1);
    struct qv_proto_search s = { .dim = 128, .k = 1, .nq = 1,
                                 .queries = (const float *)qv_vecfile_row(&B, 7) };
    n = qv_proto_encode_search(txb, sizeof txb, rid(), coll, &s);
    CU_ASSERT_EQUAL(udp_call(txb, (size_t)n, &r), 0);
    CU_ASSERT_EQUAL(r.hdr.status, QV_PROTO_OK);
    CU_ASSERT_NOT_EQUAL(r.u.search.ids[0], 7);
    n = qv_proto_encode_empty_req(txb, sizeof txb, QV_PROTO_OP_LIST, rid(), 0);
    CU_ASSERT_EQUAL(udp_call(txb, (size_t)n, &r), 0);
    CU_ASSERT_EQUAL(r.hdr.status, QV_PROTO_OK);
    CU_ASSERT_EQUAL(r.u.list.n, 1);
    n = qv_proto_encode_empty_req(txb, sizeof txb, QV_PROTO_OP_STATS, rid(), coll);
    CU_ASSERT_EQUAL(udp_call(txb, (size_t)n, &r), 0);
    CU_ASSERT_EQUAL(r.hdr.status, QV_PROTO_OK);
    CU_ASSERT(r.u.stats.len > 0 && memmem(r.u.stats.s, r.u.stats.len, "\"rows\"", 6));
    n = qv_proto_encode_empty_req(txb, sizeof txb, QV_PROTO_OP_DROP, rid(), coll);
    CU_ASSERT_EQUAL(tcp_call(txb, (size_t)n, &r), 0);
    CU_ASSERT_EQUAL(r.hdr.status, QV_PROTO_OK);
    n = qv_proto_encode_empty_req(txb, sizeof txb, QV_PROTO_OP_DESCRIBE, rid(), coll);
    CU_ASSERT_EQUAL(udp_call(txb, (size_t)n, &r), 0);
    CU_ASSERT_EQUAL(r.hdr.status, QV_PROTO_NOT_FOUND);
    qv_vecfile_close(&B);
    qv_vecfile_close(&Q);
    qv_vecfile_close(&G);
}

int main(void)
{
    CU_pSuite s;
    unsigned fails;

    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    s = CU_add_suite("handler", suite_init, suite_fini);
    CU_add_test(s, "the in-process server answers PING over UDP and TCP", test_fixture_serves);
    CU_add_test(s, "create and load siftsmall over TCP", test_create_and_load);
    CU_add_test(s, "search over UDP and in one TCP batch: recall 1", test_search_udp_and_batch_tcp);
    CU_add_test(s, "malformed datagrams answered or dropped; still serving", test_malformed);
    CU_add_test(s, "malformed TCP frames: answered and kept, or closed; still serving",
                test_malformed_tcp);
    CU_add_test(s, "get, delete, list, stats, drop", test_get_delete_list_stats_drop);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    fails = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
    CU_cleanup_registry();
    return fails ? 1 : 0;
}
