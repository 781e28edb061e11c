/*
 * server_fixture.h - quiverd's request path in one process, for the
 * suites that talk to it over loopback (test_handler, test_client): a
 * pool of 2 threads, the CPU engine behind a router (no calibration),
 * the query service, the node, the request handler, and the kernel UDP
 * and TCP transports bound to 127.0.0.1 on ephemeral ports.  The node
 * seals at 10 000 rows (siftsmall: one sealed segment).
 */
#ifndef QV_TEST_SERVER_FIXTURE_H
#define QV_TEST_SERVER_FIXTURE_H

#include <stdint.h>

struct qv_handler_opts;

struct qv_test_server {
    struct qv_pool *pool;
    struct qv_engine *cpu;
    struct qv_router *router;
    struct qv_service *svc;
    struct qv_node *node;
    struct qv_handler *h;
    struct qv_udp *udp;
    struct qv_tcp *tcp;
    uint16_t udp_port, tcp_port;
};

/* Start the stack into *s (zeroed first).  ho (NULL: defaults) gives the
 * handler's options but node and service, which the fixture fills: the
 * auth key (borrowed, must outlive the server), the replay table's size
 * and TTL.  Returns 0, or -1 with what is started stopped again. */
int qv_test_server_start(struct qv_test_server *s, const struct qv_handler_opts *ho);

/* CUnit assertions (call inside a test) that the started stack serves:
 * both ports bound, a PING answered OK over UDP and over TCP, and the
 * handler counted exactly those two requests. */
void qv_test_server_check(const struct qv_test_server *s);

/* Open $QV_DATA_DIR/siftsmall's base, query and ground-truth files.  0,
 * or -1 (QV_DATA_DIR unset, a file missing or damaged). */
struct qv_vecfile;
int qv_test_open_siftsmall(struct qv_vecfile *base, struct qv_vecfile *query,
                           struct qv_vecfile *truth);

/* Stop and free everything; a zeroed *s is a no-op. */
void qv_test_server_stop(struct qv_test_server *s);

#endif
