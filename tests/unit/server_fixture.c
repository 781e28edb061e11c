/*
 * server_fixture.c - see server_fixture.h.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <CUnit/Basic.h>

#include "quiver/engine.h"
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

int qv_test_server_start(struct qv_test_server *s, const struct qv_handler_opts *hopts)
{
    memset(s, 0, sizeof *s);
    s->pool = qv_pool_create(2, 0);
    s->cpu = s->pool ? qv_engine_cpu_create(s->pool) : NULL;
    struct qv_router_opts ro;
    qv_router_opts_default(&ro);
    ro.calibrate = 0;
    s->router = qv_router_create(&ro);
    if (!s->pool || !s->cpu || !s->router ||
        qv_router_add(s->router, "cpu", s->cpu,
                      QV_ROUTER_CLEAN_FAIL | QV_ROUTER_SYNC | QV_ROUTER_HOST_CORES))
        goto fail;
    struct qv_service_opts so;
    qv_service_opts_default(&so);
    so.router = s->router;
    s->svc = qv_service_create(&so);
    struct qv_node_opts no;
    qv_node_opts_default(&no);
    no.service = s->svc;
    no.seal_rows = 10000;   /* siftsmall seals into one segment (test_client) */
    no.engine = qv_router_engine(s->router);
    no.pool = s->pool;
    s->node = s->svc ? qv_node_create(&no) : NULL;
    struct qv_handler_opts ho = { 0 };
    if (hopts)
        ho = *hopts;
    ho.node = s->node;
    ho.service = s->svc;
    s->h = s->node ? qv_handler_create(&ho) : NULL;
    if (!s->h)
        goto fail;
    struct qv_udp_opts uo;
    qv_udp_opts_default(&uo);
    uo.bind_addr = "127.0.0.1";
    uo.user_size = qv_handler_udp_user_size();
    uo.slots = 256;
    struct qv_udp_handler uh = qv_handler_udp(s->h);
    s->udp = qv_udp_start(&uo, &uh);
    struct qv_tcp_opts to;
    qv_tcp_opts_default(&to);
    to.bind_addr = "127.0.0.1";
    struct qv_tcp_handler th = qv_handler_tcp(s->h);
    s->tcp = qv_tcp_start(&to, &th);
    if (!s->udp || !s->tcp)
        goto fail;
    qv_handler_set_tcp(s->h, s->tcp);
    s->udp_port = qv_udp_port(s->udp);
    s->tcp_port = qv_tcp_port(s->tcp);
    return 0;

fail:
    qv_test_server_stop(s);
    return -1;
}

void qv_test_server_stop(struct qv_test_server *s)
{
    if (s->udp)
        qv_udp_stop(s->udp);
    if (s->tcp)
        qv_tcp_stop(s->tcp);
    qv_node_free(s->node);
    qv_service_free(s->svc);
    qv_handler_free(s->h);
    qv_router_free(s->router);
    qv_engine_free(s->cpu);
    qv_pool_free(s->pool);
    memset(s, 0, sizeof *s);
}

/* One PING over a socket of type (SOCK_DGRAM / SOCK_STREAM) to port: the
 * answer's status, or -1 when none came within 5 s. */
static int ping_status(int type, uint16_t port, uint64_t request_id)
{
    _Alignas(8) uint8_t msg[64], ans[256];
    int64_t n = qv_proto_encode_empty_req(msg, sizeof msg, QV_PROTO_OP_PING, request_id, 0);
    int fd = socket(AF_INET, type, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    int st = -1;
    if (n > 0 && fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        send(fd, msg, (size_t)n, MSG_NOSIGNAL) == n) {
        size_t got = 0;
        struct pollfd p = { .fd = fd, .events = POLLIN };
        while (got < QV_PROTO_HDR_SIZE && poll(&p, 1, 5000) == 1) {
            ssize_t r = recv(fd, ans + got, sizeof ans - got, 0);
            if (r <= 0)
                break;
            got += (size_t)r;
        }
        struct qv_proto_resp resp;
        struct qv_proto_err err;
        if (got >= QV_PROTO_HDR_SIZE &&
            qv_proto_decode_response(ans, got, type == SOCK_DGRAM ? QV_PROTO_UDP : QV_PROTO_TCP,
                                     NULL, &resp, &err) == 0 &&
            resp.hdr.request_id == request_id && resp.hdr.opcode == QV_PROTO_OP_PING)
            st = resp.hdr.status;
    }
    if (fd >= 0)
        close(fd);
    return st;
}

void qv_test_server_check(const struct qv_test_server *s)
{
    CU_ASSERT_PTR_NOT_NULL_FATAL(s->h);
    CU_ASSERT(s->udp_port != 0 && s->tcp_port != 0);
    struct qv_handler_stats before, after;
    qv_handler_stats(s->h, &before);
    CU_ASSERT_EQUAL(ping_status(SOCK_DGRAM, s->udp_port, 0x51), QV_PROTO_OK);
    CU_ASSERT_EQUAL(ping_status(SOCK_STREAM, s->tcp_port, 0x52), QV_PROTO_OK);
    qv_handler_stats(s->h, &after);
    CU_ASSERT_EQUAL(after.requests - before.requests, 2);
}

int qv_test_open_siftsmall(struct qv_vecfile *base, struct qv_vecfile *query,
                           struct qv_vecfile *truth)
{
    static const char *const name[3] = { "base.fvecs", "query.fvecs", "groundtruth.ivecs" };
    static const enum qv_vec_kind kind[3] = { QV_VEC_FVECS, QV_VEC_FVECS, QV_VEC_IVECS };
    struct qv_vecfile *out[3] = { base, query, truth };
    const char *dir = getenv("QV_DATA_DIR");
    char path[4096];
    if (!dir)
        return -1;
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/siftsmall/%s", dir, name[i]);
        if (qv_vecfile_open(out[i], path, kind[i]))
            return -1;
    }
    return 0;
}
