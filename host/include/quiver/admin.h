/*
 * admin.h - the admin HTTP server of quiverd (libmicrohttpd): JSON and
 * Prometheus text over HTTP/1.1 for operators, the web console and
 * scrapers.  This module is the HTTP side only: it parses a request,
 * picks a route by method and path, hands the route the request (path,
 * query string, body) and sends what the route answers.  The daemon owns
 * the routes (/healthz, /metrics, /stats, /engines, /collections ...).
 *
 * Decisions.  One internal polling thread (MHD's, epoll) serves every
 * connection: the admin API is not the query path and must not take
 * cores from it.  Bodies are read up to max_body bytes (413 beyond, with
 * a JSON error naming the limit); requests whose path no route matches
 * get 404 and those whose path matches with another method 405 with an
 * Allow header; a route that fails returns its own status with a JSON
 * body {"error": "..."} (qv_admin_error).  Routes run on MHD's thread,
 * one at a time, and may block briefly (they are admin operations); they
 * must be thread-safe against the rest of the daemon.
 */
#ifndef QUIVER_ADMIN_H
#define QUIVER_ADMIN_H

#include <stddef.h>
#include <stdint.h>

#define QV_ADMIN_MAX_ROUTES 64u

struct qv_admin_req {
    const char *method;             /* "GET", "POST", "DELETE" ... */
    const char *path;               /* "/collections/sift" (no query) */
    const char *tail;               /* path after the route's prefix
                                       (e.g. "sift" for prefix
                                       "/collections/"); "" when exact */
    const char *body;               /* NUL-terminated copy; "" when none */
    size_t body_len;
    void *conn;                     /* for qv_admin_query */
};

struct qv_admin_resp {
    int status;                     /* HTTP status; 200 when left 0 */
    const char *content_type;       /* NULL = application/json */
    char *body;                     /* qv_malloc'ed (QV_MEM_SERVER), freed by
                                       the server; NULL = empty */
    size_t len;
};

/* 0 when resp was filled (any status), < 0 for an internal failure
 * (answered 500 with the qv_errmsg()). */
typedef int qv_admin_route_fn(void *arg, const struct qv_admin_req *req,
                              struct qv_admin_resp *resp);

struct qv_admin_route {
    const char *method;
    const char *path;               /* exact path, or a prefix ending in
                                       '/' when prefix is set */
    int prefix;                     /* 1: matches path + anything */
    qv_admin_route_fn *fn;
    void *arg;
};

struct qv_admin_opts {
    const char *bind_addr;          /* IPv4 literal; NULL = 127.0.0.1 */
    uint16_t port;                  /* 0 = ephemeral (qv_admin_port) */
    size_t max_body;                /* default 1 MiB */
    unsigned max_conns;             /* default 64 */
    unsigned timeout_s;             /* idle connection timeout, default 30 */
    const struct qv_admin_route *routes;    /* copied */
    unsigned nroutes;               /* 0..QV_ADMIN_MAX_ROUTES */
};

struct qv_admin;

void qv_admin_opts_default(struct qv_admin_opts *o);

/* Bind and start serving.  NULL with qv_errno QV_EINVAL (bad option or
 * address, too many routes: the message names it), QV_EIO (the HTTP
 * server did not start: port taken ...; the message says which address
 * and port). */
struct qv_admin *qv_admin_start(const struct qv_admin_opts *o);

uint16_t qv_admin_port(const struct qv_admin *a);

/* Stop accepting, close connections, free.  NULL: no-op. */
void qv_admin_stop(struct qv_admin *a);

/* Value of query argument key of the request, or NULL. */
const char *qv_admin_query(const struct qv_admin_req *req, const char *key);

/* Fill resp with status and a copy of text (len bytes) of content type
 * ct (NULL = application/json).  0 or QV_ENOMEM. */
int qv_admin_text(struct qv_admin_resp *resp, int status, const char *ct, const char *text,
                  size_t len);

/* Fill resp with status and {"error": "<formatted message>"} (JSON
 * escaped).  0 or QV_ENOMEM. */
int qv_admin_error(struct qv_admin_resp *resp, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
