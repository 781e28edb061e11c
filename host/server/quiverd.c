/*
 * quiverd.c - the daemon: `quiverd [-c FILE] [--ready-file FILE]`.
 *
 * Reads the configuration (conf/quiver.conf documents every key; without
 * -c the schema's defaults), then starts, in order: the worker pool
 * ([workers]), the engines and their router ([router], [opencl], [fpga]:
 * quiver/engines.h), the query service ([batcher], [cache], [service]),
 * the collection store ([server]), the request handler, the UDP and TCP
 * transports and the admin HTTP API ([server] ports; 0 = any free port).
 * Once everything listens it logs the ports and, with --ready-file,
 * writes "udp=P tcp=P admin=P pid=N" there (atomically: scripts wait for
 * the file).
 *
 * Signals are blocked in every thread and taken by the main thread with
 * sigwaitinfo: SIGTERM / SIGINT drain and exit 0 (the admin API stops,
 * the transports stop receiving and wait for the answers in flight, the
 * store waits for its builds, the service completes every queued query);
 * SIGHUP reloads from the same file what can change without a restart
 * ([log] level, [server] auth_key_file: reload() says why only those) and
 * names every other changed key as waiting for a restart.  A start that fails exits 1 with the reason.
 *
 * Admin API (host/server/admin.c): GET /healthz, GET /metrics
 * (Prometheus text from the service's registry), GET /stats (JSON),
 * GET /engines (JSON), GET /collections, POST /collections (JSON body:
 * the CREATE fields), GET /collections/NAME, DELETE /collections/NAME.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <json-c/json.h>

#include "quiver/admin.h"
#include "quiver/alloc.h"
#include "quiver/config.h"
#include "quiver/dist.h"
#include "quiver/engines.h"
#include "quiver/errors.h"
#include "quiver/handler.h"
#include "quiver/log.h"
#include "quiver/node.h"
#include "quiver/pool.h"
#include "quiver/proto.h"
#include "quiver/router.h"
#include "quiver/service.h"
#include "quiver/tcp.h"
#include "quiver/timeutil.h"
#include "quiver/udp.h"
#ifdef QV_HAVE_DPDK
#include "quiver/dataplane.h"
#endif

struct daemon {
    const char *conf_path;
    struct qv_config *cfg;
    struct qv_pool *pool;
    struct qv_engines *engines;
    struct qv_service *svc;
    struct qv_node *node;
    struct dkey *keys;              /* every key set, newest first (handler.h) */
    int auth;                       /* the handler has keys->k in force */
    int log_level;                  /* [log] level in force */
    struct qv_handler *h;
    struct qv_udp *udp;
    struct qv_tcp *tcp;
    struct qv_admin *admin;
#ifdef QV_HAVE_DPDK
    struct qv_dp *dp;               /* [dataplane] mode = dpdk */
#endif
};

static const char usage[] =
    "usage: quiverd [-c FILE] [--ready-file FILE]\n"
    "  -c, --conf FILE   configuration (conf/quiver.conf documents every key);\n"
    "                    default: the built-in defaults\n"
    "  --ready-file FILE once serving, write \"udp=P tcp=P admin=P pid=N\" there\n"
#ifdef QV_HAVE_DPDK
    "built with the DPDK dataplane ([dataplane] mode = dpdk)\n"
#else
    "built without the DPDK dataplane (no libdpdk-dev at build time)\n"
#endif
    ;

/* An auth key as read from [server] auth_key_file: prepared for the
 * handler, and the raw bytes, to tell a rotated file from the same one. */
struct dkey {
    struct qv_proto_key k;
    unsigned char raw[1024];
    size_t len;
    struct dkey *next;
};

/* ---- admin routes -------------------------------------------------------------- */

static int json_answer(struct qv_admin_resp *resp, int status, struct json_object *o)
{
    size_t len;
    const char *s = json_object_to_json_string_length(o, JSON_C_TO_STRING_PRETTY, &len);
    int rc = qv_admin_text(resp, status, "application/json", s, len);
    json_object_put(o);
    return rc;
}

static int r_healthz(void *arg, const struct qv_admin_req *req, struct qv_admin_resp *resp)
{
    (void)arg, (void)req;
    return qv_admin_text(resp, 200, "text/plain", "ok\n", 3);
}

/* The service's metrics, then the dataplane's (when it runs). */
static int render_all(struct daemon *d, char *buf, size_t cap, size_t *len)
{
    size_t a = 0, b = 0;
    int rc = qv_service_render_metrics(d->svc, buf, cap, &a);
#ifdef QV_HAVE_DPDK
    if (d->dp) {
        int rc2 = qv_dp_render_metrics(d->dp, rc == 0 && buf ? buf + a : NULL,
                                       rc == 0 && buf ? cap - a : 0, &b);
        if (rc == 0 && buf)
            rc = rc2;
    }
#endif
    *len = a + b;
    return buf ? rc : 0;
}

static int r_metrics(void *arg, const struct qv_admin_req *req, struct qv_admin_resp *resp)
{
    struct daemon *d = arg;
    size_t need = 0;
    (void)req;
    render_all(d, NULL, 0, &need);
    for (int tries = 0; tries < 4; tries++) {
        size_t cap = need + need / 4 + 4096, len = 0;
        char *buf = qv_malloc(cap, QV_MEM_SERVER);
        if (!buf)
            return qv_seterr(QV_ENOMEM, "no memory for the metrics text");
        int rc = render_all(d, buf, cap, &len);
        if (rc == 0) {
            rc = qv_admin_text(resp, 200, "text/plain; version=0.0.4", buf, len);
            qv_free(buf);
            return rc;
        }
        qv_free(buf);
        need = len;
    }
    return qv_seterr(QV_EIO, "the metrics text kept growing while rendered");
}

static int r_stats(void *arg, const struct qv_admin_req *req, struct qv_admin_resp *resp)
{
    struct daemon *d = arg;
    struct qv_service_stats s;
    struct qv_handler_stats h;
    struct qv_udp_stats u;
    struct qv_tcp_stats t;
    (void)req;
    qv_service_stats(d->svc, &s);
    qv_handler_stats(d->h, &h);
    qv_udp_stats(d->udp, &u);
    qv_tcp_stats(d->tcp, &t);
    struct json_object *o = json_object_new_object(), *x;
    x = json_object_new_object();
    json_object_object_add(x, "requests", json_object_new_int64((int64_t)h.requests));
    json_object_object_add(x, "malformed", json_object_new_int64((int64_t)h.malformed));
    json_object_object_add(x, "dropped", json_object_new_int64((int64_t)h.dropped));
    json_object_object_add(x, "queries", json_object_new_int64((int64_t)h.searches));
    json_object_object_add(x, "errors", json_object_new_int64((int64_t)h.errors));
    json_object_object_add(o, "handler", x);
    x = json_object_new_object();
    json_object_object_add(x, "batches", json_object_new_int64((int64_t)s.batches));
    json_object_object_add(x, "searches", json_object_new_int64((int64_t)s.searches));
    json_object_object_add(x, "searched", json_object_new_int64((int64_t)s.searched));
    json_object_object_add(x, "cache_hits", json_object_new_int64((int64_t)s.result_hits));
    json_object_object_add(x, "cache_misses", json_object_new_int64((int64_t)s.result_misses));
    json_object_object_add(x, "busy", json_object_new_int64(
        (int64_t)s.outcomes[QV_SERVICE_OUT_BUSY]));
    json_object_object_add(x, "timeouts", json_object_new_int64(
        (int64_t)s.outcomes[QV_SERVICE_OUT_TIMEOUT]));
    json_object_object_add(o, "service", x);
    x = json_object_new_object();
    json_object_object_add(x, "rx", json_object_new_int64((int64_t)u.rx));
    json_object_object_add(x, "tx", json_object_new_int64((int64_t)u.tx));
    json_object_object_add(x, "truncated", json_object_new_int64((int64_t)u.truncated));
    json_object_object_add(x, "send_errors", json_object_new_int64((int64_t)u.send_errors));
    json_object_object_add(o, "udp", x);
    x = json_object_new_object();
    json_object_object_add(x, "accepted", json_object_new_int64((int64_t)t.accepted));
    json_object_object_add(x, "messages", json_object_new_int64((int64_t)t.messages));
    json_object_object_add(x, "bad_frames", json_object_new_int64((int64_t)t.bad_frames));
    json_object_object_add(o, "tcp", x);
#ifdef QV_HAVE_DPDK
    if (d->dp) {
        struct qv_dp_lcore_stats ds;
        qv_dp_lcore_stats(d->dp, -1, &ds);
        uint64_t drops = 0;
        for (unsigned r = 0; r < 32; r++)
            drops += ds.drops[r];
        x = json_object_new_object();
        json_object_object_add(x, "rx", json_object_new_int64((int64_t)ds.rx));
        json_object_object_add(x, "tx", json_object_new_int64((int64_t)ds.tx));
        json_object_object_add(x, "requests", json_object_new_int64((int64_t)ds.requests));
        json_object_object_add(x, "arp_replies", json_object_new_int64((int64_t)ds.arp_replies));
        json_object_object_add(x, "icmp_replies",
                               json_object_new_int64((int64_t)ds.icmp_replies));
        json_object_object_add(x, "dropped", json_object_new_int64((int64_t)drops));
        json_object_object_add(x, "inflight", json_object_new_int64((int64_t)ds.inflight));
        unsigned avail = 0, size = 0;
        qv_dp_mempool_count(d->dp, 0, &avail, &size);
        json_object_object_add(x, "mempool_free", json_object_new_int64(avail));
        json_object_object_add(x, "mempool_size", json_object_new_int64(size));
        json_object_object_add(o, "dataplane", x);
    }
#endif
    return json_answer(resp, 200, o);
}

static int r_engines(void *arg, const struct qv_admin_req *req, struct qv_admin_resp *resp)
{
    struct daemon *d = arg;
    static const char *breaker[] = { "closed", "open", "half-open" };
    struct qv_router_stats *s = qv_malloc(sizeof *s, QV_MEM_SERVER);
    (void)req;
    if (!s)
        return qv_seterr(QV_ENOMEM, "no memory");
    /* the router belongs to the dispatcher: read it while it is parked */
    qv_service_pause(d->svc);
    qv_router_stats(qv_engines_router(d->engines), s);
    qv_service_resume(d->svc);
    struct json_object *a = json_object_new_array();
    for (unsigned i = 0; i < s->nengines; i++) {
        const struct qv_router_engine_stats *e = &s->engine[i];
        struct json_object *o = json_object_new_object();
        json_object_object_add(o, "name", json_object_new_string(e->name));
        json_object_object_add(o, "units", json_object_new_int64((int64_t)e->units));
        json_object_object_add(o, "failures", json_object_new_int64((int64_t)e->failures));
        json_object_object_add(o, "breaker", json_object_new_string(breaker[e->breaker % 3]));
        json_object_object_add(o, "busy_ms", json_object_new_int64(
            (int64_t)(e->observed_ns / 1000000)));
        json_object_object_add(o, "flat_gflops", json_object_new_double(
            e->params[QV_WU_FLAT].flops / 1e9));
        json_object_object_add(o, "flat_mem_gbps", json_object_new_double(
            e->params[QV_WU_FLAT].mem_Bps / 1e9));
        json_object_array_add(a, o);
    }
    qv_free(s);
    return json_answer(resp, 200, a);
}

static struct json_object *coll_json(const struct qv_node_coll_info *i)
{
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "id", json_object_new_int64((int64_t)i->id));
    json_object_object_add(o, "name", json_object_new_string(i->name));
    json_object_object_add(o, "dim", json_object_new_int64(i->dim));
    json_object_object_add(o, "metric", json_object_new_string(qv_metric_name(i->metric)));
    json_object_object_add(o, "index", json_object_new_string(qv_node_index_name(i->index)));
    json_object_object_add(o, "rows", json_object_new_int64((int64_t)i->rows));
    json_object_object_add(o, "epoch", json_object_new_int64((int64_t)i->epoch));
    json_object_object_add(o, "trained", json_object_new_boolean(i->trained));
    json_object_object_add(o, "segments", json_object_new_int64(i->segments));
    json_object_object_add(o, "pending_builds", json_object_new_int64(i->pending));
    struct json_object *at = json_object_new_array();
    for (uint32_t a = 0; a < i->nattrs; a++)
        json_object_array_add(at, json_object_new_string(i->attrs[a]));
    json_object_object_add(o, "attributes", at);
    return o;
}

static int r_collections(void *arg, const struct qv_admin_req *req, struct qv_admin_resp *resp)
{
    struct daemon *d = arg;
    uint32_t n = 0;
    (void)req;
    qv_node_list(d->node, NULL, 0, &n);
    struct qv_node_coll_info *info = n ? qv_malloc(sizeof *info * n, QV_MEM_SERVER) : NULL;
    if (n && !info)
        return qv_seterr(QV_ENOMEM, "no memory");
    uint32_t got = 0;
    if (n)
        qv_node_list(d->node, info, n, &got);
    struct json_object *a = json_object_new_array();
    for (uint32_t i = 0; i < got && i < n; i++)
        json_object_array_add(a, coll_json(&info[i]));
    qv_free(info);
    return json_answer(resp, 200, a);
}

static int r_collection(void *arg, const struct qv_admin_req *req, struct qv_admin_resp *resp)
{
    struct daemon *d = arg;
    uint64_t id;
    struct qv_node_coll_info info;
    if (qv_node_find(d->node, req->tail, &id) != 0)
        return qv_admin_error(resp, 404, "no collection named \"%s\"", req->tail);
    if (strcmp(req->method, "DELETE") == 0) {
        int rc = qv_node_drop_collection(d->node, id);
        if (rc)
            return qv_admin_error(resp, rc == QV_ENOENT ? 404 : 500, "%s", qv_errmsg());
        return qv_admin_text(resp, 200, NULL, "{\"dropped\": true}\n", 18);
    }
    if (qv_node_describe(d->node, id, &info) != 0)
        return qv_admin_error(resp, 404, "%s", qv_errmsg());
    return json_answer(resp, 200, coll_json(&info));
}

/* POST /collections/NAME/snapshot: qv_node_snapshot; 200 {"lsn": L}. */
static int r_collection_post(void *arg, const struct qv_admin_req *req,
                             struct qv_admin_resp *resp)
{
    struct daemon *d = arg;
    char name[128];
    const char *slash = strchr(req->tail, '/');
    if (!slash || strcmp(slash, "/snapshot") != 0 || (size_t)(slash - req->tail) >= sizeof name)
        return qv_admin_error(resp, 404, "POST /collections/NAME/snapshot is the one POST "
                              "under /collections/");
    snprintf(name, sizeof name, "%.*s", (int)(slash - req->tail), req->tail);
    uint64_t id, lsn = 0;
    if (qv_node_find(d->node, name, &id) != 0)
        return qv_admin_error(resp, 404, "no collection named \"%s\"", name);
    int rc = qv_node_snapshot(d->node, id, &lsn);
    if (rc)
        return qv_admin_error(resp, rc == QV_EINVAL ? 409 : rc == QV_ENOENT ? 404 : 500, "%s",
                              qv_errmsg());
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "collection", json_object_new_string(name));
    json_object_object_add(o, "lsn", json_object_new_int64((int64_t)lsn));
    return json_answer(resp, 200, o);
}

/* POST /collections: {"name", "dim", "metric", "index", and the index's
 * parameters as in docs/PROTOCOL.md CREATE ("nlist", "nprobe", "pq_m",
 * "pq_nbits", "hnsw_m", "ef_construction", "ef_search"), "attributes":
 * [names]}; 201 with the collection, 400 naming the field, 409 when the
 * name is taken. */
static int r_create(void *arg, const struct qv_admin_req *req, struct qv_admin_resp *resp)
{
    struct daemon *d = arg;
    static const char *const ints[] = { "dim", "nlist", "nprobe", "pq_m", "pq_nbits",
                                        "hnsw_m", "ef_construction", "ef_search" };
    uint32_t v[8] = { 0 };
    struct json_object *j = json_tokener_parse(req->body), *x;
    struct qv_node_coll_spec s = { 0 };
    int rc = 0;
    if (!j || !json_object_is_type(j, json_type_object)) {
        rc = qv_admin_error(resp, 400, "the body must be a JSON object, e.g. "
                            "{\"name\": \"sift\", \"dim\": 128}");
        goto out;
    }
    if (!json_object_object_get_ex(j, "name", &x) || !json_object_is_type(x, json_type_string)) {
        rc = qv_admin_error(resp, 400, "\"name\": a string is required");
        goto out;
    }
    s.name = json_object_get_string(x);
    for (unsigned i = 0; i < 8; i++) {
        if (!json_object_object_get_ex(j, ints[i], &x))
            continue;
        int64_t n = json_object_get_int64(x);
        if (!json_object_is_type(x, json_type_int) || n < 0 || n > UINT32_MAX) {
            rc = qv_admin_error(resp, 400, "\"%s\": a non-negative integer is required",
                                ints[i]);
            goto out;
        }
        v[i] = (uint32_t)n;
    }
    s.dim = v[0], s.nlist = v[1], s.nprobe = v[2], s.pq_m = v[3], s.pq_nbits = v[4];
    s.hnsw_m = v[5], s.ef_construction = v[6], s.ef_search = v[7];
    s.metric = QV_METRIC_L2;
    if (json_object_object_get_ex(j, "metric", &x)) {
        int m = qv_metric_parse(json_object_get_string(x));
        if (m < 0) {
            rc = qv_admin_error(resp, 400, "\"metric\": %s: use l2, ip or cosine",
                                json_object_get_string(x));
            goto out;
        }
        s.metric = (enum qv_metric)m;
    }
    s.index = QV_NODE_FLAT;
    if (json_object_object_get_ex(j, "index", &x)) {
        const char *t = json_object_get_string(x);
        int found = 0;
        for (int t2 = 0; t2 < QV_NODE_INDEX__COUNT; t2++)
            if (strcasecmp(t, qv_node_index_name((enum qv_node_index)t2)) == 0) {
                s.index = (enum qv_node_index)t2;
                found = 1;
            }
        if (!found) {
            rc = qv_admin_error(resp, 400, "\"index\": %s: use flat, ivf, ivf_sq8, ivf_pq "
                                "or hnsw", t);
            goto out;
        }
    }
    if (json_object_object_get_ex(j, "attributes", &x)) {
        size_t n = json_object_is_type(x, json_type_array) ? json_object_array_length(x) : 0;
        if (!json_object_is_type(x, json_type_array) || n > QV_NODE_MAX_ATTRS) {
            rc = qv_admin_error(resp, 400, "\"attributes\": an array of at most %u names",
                                QV_NODE_MAX_ATTRS);
            goto out;
        }
        s.nattrs = (uint32_t)n;
        for (size_t i = 0; i < n; i++)
            s.attrs[i] = json_object_get_string(json_object_array_get_idx(x, i));
    }
    uint64_t id;
    int cr = qv_node_create_collection(d->node, &s, &id);
    if (cr) {
        rc = qv_admin_error(resp, cr == QV_EEXIST ? 409 : cr == QV_EINVAL ? 400 : 500, "%s",
                            qv_errmsg());
        goto out;
    }
    struct qv_node_coll_info info;
    if (qv_node_describe(d->node, id, &info) != 0) {
        rc = qv_admin_error(resp, 500, "%s", qv_errmsg());
        goto out;
    }
    rc = json_answer(resp, 201, coll_json(&info));
out:
    if (j)
        json_object_put(j);
    return rc;
}

/* ---- start and stop ----------------------------------------------------------------- */

/* The key of [server] auth_key_file in cfg into a new *out (NULL when
 * the key is "none").  0, or the error (qv_errno set) naming the file. */
static int read_key(const struct qv_config *cfg, struct dkey **out)
{
    const char *path = qv_config_string(cfg, "server", "auth_key_file");
    *out = NULL;
    if (strcmp(path, "none") == 0)
        return 0;
    struct dkey *k = qv_calloc(1, sizeof *k, QV_MEM_SERVER);
    if (!k)
        return qv_seterr(QV_ENOMEM, "[server] auth_key_file %s: no memory", path);
    FILE *f = fopen(path, "rb");
    if (!f) {
        qv_free(k);
        return qv_seterr(QV_EIO, "[server] auth_key_file %s: %s", path, strerror(errno));
    }
    size_t n = fread(k->raw, 1, sizeof k->raw, f);
    fclose(f);
    while (n && (k->raw[n - 1] == '\n' || k->raw[n - 1] == '\r'))
        n--;
    k->len = n;
    if (qv_proto_key_init(&k->k, k->raw, n) != 0) {
        memset(k, 0, sizeof *k);
        qv_free(k);
        return qv_seterr(QV_ECONFIG, "[server] auth_key_file %s: the key has %zu bytes; "
                         "use at least 16 (32 random bytes are best)", path, n);
    }
    *out = k;
    return 0;
}

static void keys_free(struct daemon *d)
{
    while (d->keys) {
        struct dkey *k = d->keys;
        d->keys = k->next;
        qv_proto_key_fini(&k->k);
        memset(k, 0, sizeof *k);
        qv_free(k);
    }
}

/* [dataplane] mode = dpdk: the DPDK query path beside the kernel
 * transports, calling the same handler (quiver/dataplane.h). */
static int start_dataplane(struct daemon *d)
{
    if (qv_config_enum(d->cfg, "dataplane", "mode") == 0)
        return 0;
#ifdef QV_HAVE_DPDK
    struct qv_dp_opts o;
    if (qv_dp_opts_from_config(d->cfg, &o))
        return qv_errno;
    o.user_size = qv_handler_udp_user_size();
    struct qv_udp_handler uh = qv_handler_udp(d->h);
    d->dp = qv_dp_start(&o, &uh);
    return d->dp ? 0 : qv_errno;
#else
    return qv_seterr(QV_ECONFIG, "[dataplane] mode = dpdk: this quiverd was built without "
                     "DPDK (install libdpdk-dev: scripts/setup.sh, then rebuild)");
#endif
}

static unsigned worker_threads(const struct qv_config *cfg)
{
    int64_t t = qv_config_int(cfg, "workers", "threads");
    if (t > 0)
        return (unsigned)t;
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
        return (unsigned)CPU_COUNT(&set);
    return 1;
}

static int start(struct daemon *d)
{
    struct qv_config *cfg = d->cfg;
    int lvl = qv_log_level_parse(qv_config_string(cfg, "log", "level"));
    if (lvl >= 0)
        qv_log_set_level((enum qv_log_level)lvl);
    int simd = qv_config_enum(cfg, "simd", "level");       /* auto|ref|avx2|avx512 */
    qv_kernels_init(simd > 0 ? (enum qv_simd)(simd - 1) : QV_SIMD_AVX512);
    d->pool = qv_pool_create(worker_threads(cfg), qv_config_bool(cfg, "workers", "pin"));
    if (!d->pool)
        return qv_errno;
    d->engines = qv_engines_create(cfg, d->pool, 0);
    if (!d->engines)
        return qv_errno;
    struct qv_service_opts so;
    if (qv_service_opts_from_config(cfg, &so))
        return qv_errno;
    so.router = qv_engines_router(d->engines);
    d->svc = qv_service_create(&so);
    if (!d->svc)
        return qv_errno;
    struct qv_node_opts no;
    if (qv_node_opts_from_config(cfg, &no))
        return qv_errno;
    no.service = d->svc;
    no.engine = qv_engines_engine(d->engines);
    no.pool = d->pool;
    d->node = qv_node_create(&no);
    if (!d->node)
        return qv_errno;
    if (read_key(cfg, &d->keys))
        return qv_errno;
    d->auth = d->keys != NULL;
    d->log_level = qv_log_level_parse(qv_config_string(cfg, "log", "level"));
    struct qv_handler_opts ho = { .node = d->node, .service = d->svc,
                                  .key = d->keys ? &d->keys->k : NULL };
    qv_handler_opts_from_config(cfg, &ho);
    d->h = qv_handler_create(&ho);
    if (!d->h)
        return qv_errno;

    struct qv_udp_opts uo;
    qv_udp_opts_default(&uo);
    uo.bind_addr = qv_config_string(cfg, "server", "bind");
    uo.port = (uint16_t)qv_config_int(cfg, "server", "udp_port");
    uo.workers = (unsigned)qv_config_int(cfg, "server", "udp_workers");
    uo.user_size = qv_handler_udp_user_size();
    struct qv_udp_handler uh = qv_handler_udp(d->h);
    d->udp = qv_udp_start(&uo, &uh);
    if (!d->udp)
        return qv_errno;
    struct qv_tcp_opts to;
    qv_tcp_opts_default(&to);
    to.bind_addr = uo.bind_addr;
    to.port = (uint16_t)qv_config_int(cfg, "server", "tcp_port");
    to.workers = (unsigned)qv_config_int(cfg, "server", "tcp_workers");
    struct qv_tcp_handler th = qv_handler_tcp(d->h);
    d->tcp = qv_tcp_start(&to, &th);
    if (!d->tcp)
        return qv_errno;
    qv_handler_set_tcp(d->h, d->tcp);
    if (start_dataplane(d))
        return qv_errno;

    const struct qv_admin_route routes[] = {
        { "GET", "/healthz", 0, r_healthz, d },
        { "GET", "/metrics", 0, r_metrics, d },
        { "GET", "/stats", 0, r_stats, d },
        { "GET", "/engines", 0, r_engines, d },
        { "GET", "/collections", 0, r_collections, d },
        { "POST", "/collections", 0, r_create, d },
        { "GET", "/collections/", 1, r_collection, d },
        { "DELETE", "/collections/", 1, r_collection, d },
        { "POST", "/collections/", 1, r_collection_post, d },
    };
    struct qv_admin_opts ao;
    qv_admin_opts_default(&ao);
    ao.bind_addr = qv_config_string(cfg, "server", "admin_bind");
    ao.port = (uint16_t)qv_config_int(cfg, "server", "admin_port");
    ao.routes = routes;
    ao.nroutes = sizeof routes / sizeof routes[0];
    d->admin = qv_admin_start(&ao);
    if (!d->admin)
        return qv_errno;
    return 0;
}

/* Drain and free, in the reverse order of start. */
static void stop(struct daemon *d)
{
    qv_admin_stop(d->admin);
    unsigned lost = 0;
#ifdef QV_HAVE_DPDK
    lost += qv_dp_stop(d->dp);
#endif
    lost += qv_udp_stop(d->udp) + qv_tcp_stop(d->tcp);
    if (lost)
        QV_WARN("quiverd: %u answers were still in flight at the drain deadline", lost);
    qv_node_free(d->node);
    qv_service_free(d->svc);
    qv_handler_free(d->h);
    qv_engines_free(d->engines);
    qv_pool_free(d->pool);
    keys_free(d);
    qv_config_free(d->cfg);
}

static int write_ready(struct daemon *d, const char *path)
{
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return qv_seterr(QV_EIO, "--ready-file %s: %s", tmp, strerror(errno));
    fprintf(f, "udp=%u tcp=%u admin=%u pid=%d\n", qv_udp_port(d->udp), qv_tcp_port(d->tcp),
            qv_admin_port(d->admin), (int)getpid());
    if (fclose(f) != 0 || rename(tmp, path) != 0)
        return qv_seterr(QV_EIO, "--ready-file %s: %s", path, strerror(errno));
    return 0;
}

/*
 * SIGHUP.  The file is read and validated again (a bad file changes
 * nothing: the running configuration stays, and the error is logged).
 * Two keys take effect at once:
 *   [log] level            the log threshold;
 *   [server] auth_key_file the auth key, re-read even when the path is the
 *                          same (rotation: write the new key, then HUP);
 *                          "none" turns auth off, a path turns it on.  A
 *                          key file that cannot be read keeps the key in
 *                          force.  Clients must switch keys with the
 *                          server: a request signed with the old key after
 *                          the change is refused UNAUTHORIZED.
 * Every other key is read at start only (sockets, threads, engines, pool
 * and table sizes are built from it): each one whose value in the file
 * differs from the running one is logged with both values and "takes
 * effect at the next restart", at every SIGHUP until the restart.
 */
static int is_reloadable(const struct qv_conf_key *k)
{
    return (strcmp(k->section, "log") == 0 && strcmp(k->key, "level") == 0) ||
           (strcmp(k->section, "server") == 0 && strcmp(k->key, "auth_key_file") == 0);
}

static void reload(struct daemon *d)
{
    if (!d->conf_path) {
        QV_INFO("quiverd: SIGHUP: no configuration file to reload (built-in defaults)");
        return;
    }
    struct qv_config *c = qv_config_load(d->conf_path);
    if (!c) {
        QV_ERR("quiverd: SIGHUP: %s; keeping the running configuration", qv_errmsg());
        return;
    }
    unsigned restart = 0;
    for (const struct qv_conf_key *k = qv_conf_schema; k->section; k++) {
        char was[256], now[256];
        if (is_reloadable(k))
            continue;
        qv_config_format(d->cfg, k->section, k->key, was, sizeof was);
        qv_config_format(c, k->section, k->key, now, sizeof now);
        if (strcmp(was, now) != 0) {
            QV_WARN("quiverd: SIGHUP: [%s] %s = %s (%s), running with %s: takes effect at "
                    "the next restart", k->section, k->key, now,
                    qv_config_origin(c, k->section, k->key), was);
            restart++;
        }
    }
    const char *level = qv_config_string(c, "log", "level");
    int lvl = qv_log_level_parse(level);
    if (lvl >= 0 && lvl != d->log_level) {
        qv_log_set_level((enum qv_log_level)lvl);
        d->log_level = lvl;
        QV_INFO("quiverd: SIGHUP: [log] level = %s", level);
    }
    const char *auth = "unchanged";
    struct dkey *k = NULL;
    if (read_key(c, &k) != 0) {
        QV_ERR("quiverd: SIGHUP: %s; keeping the key in force", qv_errmsg());
        auth = "kept (the new key file failed)";
    } else if (k == NULL) {
        if (d->auth) {
            qv_handler_set_key(d->h, NULL);
            d->auth = 0;
            auth = "off";
        }
    } else if (d->auth && k->len == d->keys->len && memcmp(k->raw, d->keys->raw, k->len) == 0) {
        qv_proto_key_fini(&k->k);
        memset(k, 0, sizeof *k);
        qv_free(k);
    } else {
        k->next = d->keys;              /* the old ones stay: a worker may hold one */
        d->keys = k;
        qv_handler_set_key(d->h, &k->k);
        auth = d->auth ? "rotated" : "on";
        d->auth = 1;
    }
    QV_INFO("quiverd: SIGHUP: reloaded %s: [log] level %s, auth key %s; %u other changed "
            "key%s take%s effect at the next restart", d->conf_path, level, auth, restart,
            restart == 1 ? "" : "s", restart == 1 ? "s" : "");
    qv_config_free(c);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "conf", required_argument, NULL, 'c' },
        { "ready-file", required_argument, NULL, 'r' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    struct daemon d;
    const char *ready = NULL;
    int c;
    memset(&d, 0, sizeof d);
    while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            d.conf_path = optarg;
            break;
        case 'r':
            ready = optarg;
            break;
        case 'h':
            fputs(usage, stdout);
            return 0;
        default:
            fputs(usage, stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "quiverd: unexpected argument '%s'\n%s", argv[optind], usage);
        return 2;
    }
    /* every thread started from here on inherits the blocked set */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    d.cfg = d.conf_path ? qv_config_load(d.conf_path) : qv_config_defaults();
    if (!d.cfg) {
        fprintf(stderr, "quiverd: %s\n", qv_errmsg());
        return 1;
    }
    int64_t t0 = qv_now_ns();
    if (start(&d) != 0 || (ready && write_ready(&d, ready) != 0)) {
        fprintf(stderr, "quiverd: cannot start: %s\n", qv_errmsg());
        stop(&d);
        return 1;
    }
    QV_INFO("quiverd: serving udp %s:%u tcp %s:%u admin http://%s:%u (started in %.0f ms)",
            qv_config_string(d.cfg, "server", "bind"), qv_udp_port(d.udp),
            qv_config_string(d.cfg, "server", "bind"), qv_tcp_port(d.tcp),
            qv_config_string(d.cfg, "server", "admin_bind"), qv_admin_port(d.admin),
            (double)(qv_now_ns() - t0) / 1e6);
    for (;;) {
        siginfo_t si;
        int sig = sigwaitinfo(&set, &si);
        if (sig == SIGHUP) {
            reload(&d);
            continue;
        }
        if (sig == SIGTERM || sig == SIGINT) {
            QV_INFO("quiverd: %s: draining", sig == SIGTERM ? "SIGTERM" : "SIGINT");
            break;
        }
    }
    int64_t t1 = qv_now_ns();
    stop(&d);
    if (ready)
        unlink(ready);
    fprintf(stderr, "quiverd: stopped in %.0f ms\n", (double)(qv_now_ns() - t1) / 1e6);
    return 0;
}
