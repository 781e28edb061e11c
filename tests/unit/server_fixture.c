/*
 * server_fixture.c - see server_fixture.h.
 */
#include <string.h>

#include "quiver/engine.h"
#include "quiver/handler.h"
#include "quiver/node.h"
#include "quiver/pool.h"
#include "quiver/router.h"
#include "quiver/service.h"
#include "quiver/tcp.h"
#include "quiver/udp.h"

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
