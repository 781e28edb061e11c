/*
 * admin.c - the admin HTTP server (quiver/admin.h) on libmicrohttpd.
 *
 * MHD calls the access handler several times per request: first with no
 * state (we allocate the request's state: a body buffer that grows to
 * max_body), then once per chunk of the body, then with no data left,
 * when the route runs and the response is queued.  A body over max_body
 * is consumed and dropped, and the request answered 413.  The state is
 * freed in the completion notifier, whatever happened to the connection.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <microhttpd.h>

#include "quiver/admin.h"
#include "quiver/alloc.h"
#include "quiver/errors.h"

struct qv_admin {
    struct qv_admin_opts o;
    struct qv_admin_route routes[QV_ADMIN_MAX_ROUTES];
    struct MHD_Daemon *d;
    uint16_t port;
};

struct req_state {
    char *body;
    size_t len, cap;
    int too_large;
};

void qv_admin_opts_default(struct qv_admin_opts *o)
{
    memset(o, 0, sizeof *o);
    o->max_body = 1u << 20;
    o->max_conns = 64;
    o->timeout_s = 30;
}

int qv_admin_text(struct qv_admin_resp *resp, int status, const char *ct, const char *text,
                  size_t len)
{
    char *b = qv_malloc(len + 1, QV_MEM_SERVER);
    if (!b)
        return qv_seterr(QV_ENOMEM, "admin: no memory for a %zu-byte answer", len);
    memcpy(b, text, len);
    b[len] = 0;
    qv_free(resp->body);
    resp->status = status;
    resp->content_type = ct;
    resp->body = b;
    resp->len = len;
    return 0;
}

int qv_admin_error(struct qv_admin_resp *resp, int status, const char *fmt, ...)
{
    char msg[1024], out[2200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    size_t n = 0;
    n += (size_t)snprintf(out, sizeof out, "{\"error\": \"");
    for (const char *p = msg; *p && n + 8 < sizeof out; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '"' || c == '\\')
            n += (size_t)snprintf(out + n, sizeof out - n, "\\%c", c);
        else if (c < 0x20)
            n += (size_t)snprintf(out + n, sizeof out - n, "\\u%04x", c);
        else
            out[n++] = (char)c;
    }
    n += (size_t)snprintf(out + n, sizeof out - n, "\"}\n");
    return qv_admin_text(resp, status, "application/json", out, n);
}

const char *qv_admin_query(const struct qv_admin_req *req, const char *key)
{
    return MHD_lookup_connection_value(req->conn, MHD_GET_ARGUMENT_KIND, key);
}

static void free_body(void *p)
{
    qv_free(p);
}

static enum MHD_Result send_resp(struct MHD_Connection *c, struct qv_admin_resp *r,
                                 const char *allow)
{
    struct MHD_Response *m;
    if (r->body)
        m = MHD_create_response_from_buffer_with_free_callback(r->len, r->body, free_body);
    else
        m = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    if (!m) {
        qv_free(r->body);
        return MHD_NO;
    }
    MHD_add_response_header(m, MHD_HTTP_HEADER_CONTENT_TYPE,
                            r->content_type ? r->content_type : "application/json");
    MHD_add_response_header(m, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    if (allow)
        MHD_add_response_header(m, MHD_HTTP_HEADER_ALLOW, allow);
    enum MHD_Result rc = MHD_queue_response(c, (unsigned)(r->status ? r->status : 200), m);
    MHD_destroy_response(m);
    return rc;
}

static int path_matches(const struct qv_admin_route *rt, const char *path, const char **tail)
{
    size_t n = strlen(rt->path);
    if (rt->prefix) {
        if (strncmp(path, rt->path, n) != 0)
            return 0;
        *tail = path + n;
        return 1;
    }
    *tail = "";
    return strcmp(path, rt->path) == 0;
}

static enum MHD_Result access_handler(void *cls, struct MHD_Connection *c, const char *url,
                                      const char *method, const char *version,
                                      const char *upload, size_t *upload_size, void **con_cls)
{
    struct qv_admin *a = cls;
    struct req_state *st = *con_cls;
    (void)version;
    if (!st) {
        st = qv_calloc(1, sizeof *st, QV_MEM_SERVER);
        if (!st)
            return MHD_NO;
        *con_cls = st;
        return MHD_YES;
    }
    if (*upload_size) {
        size_t n = *upload_size;
        *upload_size = 0;
        if (st->too_large || st->len + n > a->o.max_body) {
            st->too_large = 1;
            return MHD_YES;
        }
        if (st->len + n + 1 > st->cap) {
            size_t cap = st->cap ? st->cap : 4096;
            while (cap < st->len + n + 1)
                cap *= 2;
            char *b = qv_malloc(cap, QV_MEM_SERVER);
            if (!b)
                return MHD_NO;
            if (st->len)
                memcpy(b, st->body, st->len);
            qv_free(st->body);
            st->body = b;
            st->cap = cap;
        }
        memcpy(st->body + st->len, upload, n);
        st->len += n;
        return MHD_YES;
    }
    struct qv_admin_resp resp = { 0 };
    if (st->too_large) {
        qv_admin_error(&resp, 413, "request body over %zu bytes", a->o.max_body);
        return send_resp(c, &resp, NULL);
    }
    struct qv_admin_req req = { .method = method, .path = url, .body = st->body ? st->body : "",
                                .body_len = st->len, .conn = c };
    if (st->body)
        st->body[st->len] = 0;
    char allow[128] = "";
    for (unsigned i = 0; i < a->o.nroutes; i++) {
        const struct qv_admin_route *rt = &a->routes[i];
        const char *tail;
        if (!path_matches(rt, url, &tail))
            continue;
        if (strcmp(rt->method, method) != 0) {
            if (strlen(allow) + strlen(rt->method) + 3 < sizeof allow) {
                if (allow[0])
                    strcat(allow, ", ");
                strcat(allow, rt->method);
            }
            continue;
        }
        req.tail = tail;
        if (rt->fn(rt->arg, &req, &resp) < 0)
            qv_admin_error(&resp, 500, "%s", qv_errmsg());
        return send_resp(c, &resp, NULL);
    }
    if (allow[0]) {
        qv_admin_error(&resp, 405, "%s is not allowed on %s; use %s", method, url, allow);
        return send_resp(c, &resp, allow);
    }
    qv_admin_error(&resp, 404, "no such resource: %s", url);
    return send_resp(c, &resp, NULL);
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls,
                      enum MHD_RequestTerminationCode toe)
{
    (void)cls, (void)c, (void)toe;
    struct req_state *st = *con_cls;
    if (st) {
        qv_free(st->body);
        qv_free(st);
        *con_cls = NULL;
    }
}

struct qv_admin *qv_admin_start(const struct qv_admin_opts *o)
{
    struct qv_admin_opts def;
    if (!o) {
        qv_admin_opts_default(&def);
        o = &def;
    }
    if (o->nroutes > QV_ADMIN_MAX_ROUTES || (o->nroutes && !o->routes)) {
        qv_seterr(QV_EINVAL, "admin: %u routes: at most %u", o->nroutes, QV_ADMIN_MAX_ROUTES);
        return NULL;
    }
    for (unsigned i = 0; i < o->nroutes; i++)
        if (!o->routes[i].method || !o->routes[i].path || !o->routes[i].fn ||
            o->routes[i].path[0] != '/') {
            qv_seterr(QV_EINVAL, "admin: route %u needs a method, a path starting with '/' "
                      "and a function", i);
            return NULL;
        }
    const char *addr = o->bind_addr ? o->bind_addr : "127.0.0.1";
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(o->port) };
    if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1) {
        qv_seterr(QV_EINVAL, "admin: bind address '%s' is not an IPv4 literal", addr);
        return NULL;
    }
    struct qv_admin *a = qv_calloc(1, sizeof *a, QV_MEM_SERVER);
    if (!a) {
        qv_seterr(QV_ENOMEM, "admin: no memory");
        return NULL;
    }
    a->o = *o;
    if (o->nroutes)
        memcpy(a->routes, o->routes, o->nroutes * sizeof *o->routes);
    a->o.routes = a->routes;
    a->d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL, o->port, NULL,
                            NULL, access_handler, a,
                            MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)o->max_conns,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)o->timeout_s,
                            MHD_OPTION_NOTIFY_COMPLETED, completed, a,
                            MHD_OPTION_END);
    if (!a->d) {
        qv_free(a);
        qv_seterr(QV_EIO, "admin: the HTTP server did not start on %s port %u (port taken?)",
                  addr, o->port);
        return NULL;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(a->d, MHD_DAEMON_INFO_BIND_PORT);
    a->port = di ? di->port : o->port;
    return a;
}

uint16_t qv_admin_port(const struct qv_admin *a)
{
    return a->port;
}

void qv_admin_stop(struct qv_admin *a)
{
    if (!a)
        return;
    MHD_stop_daemon(a->d);
    qv_free(a);
}
