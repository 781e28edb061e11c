/*
 * test_admin.c - the admin HTTP server (quiver/admin.h) on loopback with a
 * raw HTTP/1.1 client: routes by method and path (exact and prefix), 404,
 * 405 with Allow, bodies, query arguments, 413 over max_body, 500 when a
 * route fails, bad options.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <CUnit/Basic.h>

#include "quiver/admin.h"
#include "quiver/errors.h"

static int r_health(void *arg, const struct qv_admin_req *req, struct qv_admin_resp *resp)
{
    (void)arg, (void)req;
    return qv_admin_text(resp, 200, "text/plain", "ok\n", 3);
}

static int r_echo(void *arg, const struct qv_admin_req *req, struct qv_admin_resp *resp)
{
    (void)arg;
    const char *q = qv_admin_query(req, "q");
    char buf[4096];
    int n = snprintf(buf, sizeof buf, "%s|%s|%s|%zu", req->method, q ? q : "-", req->body,
                     req->body_len);
    return qv_admin_text(resp, 201, "text/plain", buf, (size_t)n);
}

static int r_item(void *arg, const struct qv_admin_req *req, struct qv_admin_resp *resp)
{
    (void)arg;
    if (strcmp(req->tail, "missing") == 0)
        return qv_admin_error(resp, 404, "collection \"%s\" not found", req->tail);
    return qv_admin_text(resp, 200, NULL, req->tail, strlen(req->tail));
}

static int r_fail(void *arg, const struct qv_admin_req *req, struct qv_admin_resp *resp)
{
    (void)arg, (void)req, (void)resp;
    return qv_seterr(QV_EIO, "the route broke");
}

static const struct qv_admin_route routes[] = {
    { "GET", "/healthz", 0, r_health, NULL },
    { "POST", "/echo", 0, r_echo, NULL },
    { "PUT", "/echo", 0, r_echo, NULL },
    { "GET", "/items/", 1, r_item, NULL },
    { "GET", "/fail", 0, r_fail, NULL },
};

static uint16_t port;

/* One request; the status, and the body (after the blank line) in out. */
static int http(const char *method, const char *path, const char *body, size_t blen, char *out,
                size_t cap)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    char hdr[512];
    int n = snprintf(hdr, sizeof hdr, "%s %s HTTP/1.1\r\nHost: test\r\nConnection: close\r\n"
                     "Content-Length: %zu\r\n\r\n", method, path, blen);
    send(fd, hdr, (size_t)n, MSG_NOSIGNAL);
    if (blen)
        send(fd, body, blen, MSG_NOSIGNAL);
    static char resp[1 << 16];
    size_t got = 0;
    ssize_t r;
    while ((r = recv(fd, resp + got, sizeof resp - 1 - got, 0)) > 0)
        got += (size_t)r;
    resp[got] = 0;
    close(fd);
    int status = -1;
    sscanf(resp, "HTTP/1.%*d %d", &status);
    const char *b = strstr(resp, "\r\n\r\n");
    snprintf(out, cap, "%s", b ? b + 4 : "");
    if (strstr(resp, "Allow: ") && cap > 0) {
        const char *al = strstr(resp, "Allow: ");
        char line[128];
        sscanf(al, "Allow: %127[^\r]", line);
        strncat(out, "#allow=", cap - strlen(out) - 1);
        strncat(out, line, cap - strlen(out) - 1);
    }
    return status;
}

static void test_routes(void)
{
    struct qv_admin_opts o;
    qv_admin_opts_default(&o);
    o.routes = routes;
    o.nroutes = sizeof routes / sizeof routes[0];
    o.max_body = 1000;
    struct qv_admin *a = qv_admin_start(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    port = qv_admin_port(a);
    CU_ASSERT(port != 0);
    char out[4096];
    CU_ASSERT_EQUAL(http("GET", "/healthz", NULL, 0, out, sizeof out), 200);
    CU_ASSERT_STRING_EQUAL(out, "ok\n");
    CU_ASSERT_EQUAL(http("POST", "/echo?q=7", "{\"a\":1}", 7, out, sizeof out), 201);
    CU_ASSERT_STRING_EQUAL(out, "POST|7|{\"a\":1}|7");
    CU_ASSERT_EQUAL(http("PUT", "/echo", NULL, 0, out, sizeof out), 201);
    CU_ASSERT_STRING_EQUAL(out, "PUT|-||0");
    CU_ASSERT_EQUAL(http("GET", "/items/sift", NULL, 0, out, sizeof out), 200);
    CU_ASSERT_STRING_EQUAL(out, "sift");
    CU_ASSERT_EQUAL(http("GET", "/items/missing", NULL, 0, out, sizeof out), 404);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "\"error\": \"collection \\\"missing\\\" not found\""));
    CU_ASSERT_EQUAL(http("GET", "/nothing", NULL, 0, out, sizeof out), 404);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "no such resource: /nothing"));
    CU_ASSERT_EQUAL(http("DELETE", "/echo", NULL, 0, out, sizeof out), 405);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "#allow=POST, PUT"));
    CU_ASSERT_EQUAL(http("GET", "/fail", NULL, 0, out, sizeof out), 500);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "the route broke"));
    char *big = malloc(5000);
    memset(big, 'x', 5000);
    CU_ASSERT_EQUAL(http("POST", "/echo", big, 5000, out, sizeof out), 413);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "over 1000 bytes"));
    free(big);
    /* still serving */
    CU_ASSERT_EQUAL(http("GET", "/healthz", NULL, 0, out, sizeof out), 200);
    qv_admin_stop(a);
}

static void test_bad_options(void)
{
    struct qv_admin_opts o;
    qv_admin_opts_default(&o);
    o.bind_addr = "::zz";
    CU_ASSERT_PTR_NULL(qv_admin_start(&o));
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "::zz"));
    struct qv_admin_route bad = { "GET", "healthz", 0, r_health, NULL };
    qv_admin_opts_default(&o);
    o.routes = &bad;
    o.nroutes = 1;
    CU_ASSERT_PTR_NULL(qv_admin_start(&o));
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "route 0"));
    /* a taken port */
    qv_admin_opts_default(&o);
    struct qv_admin *a = qv_admin_start(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    o.port = qv_admin_port(a);
    CU_ASSERT_PTR_NULL(qv_admin_start(&o));
    CU_ASSERT_EQUAL(qv_errno, QV_EIO);
    qv_admin_stop(a);
    qv_admin_stop(NULL);
}

int main(void)
{
    CU_pSuite s;
    unsigned fails;

    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    s = CU_add_suite("admin", NULL, NULL);
    CU_add_test(s, "routes, 404, 405, bodies, 413, 500", test_routes);
    CU_add_test(s, "bad options and a taken port refused", test_bad_options);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    fails = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
    CU_cleanup_registry();
    return fails ? 1 : 0;
}
