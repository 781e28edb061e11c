/*
 * bench_net.c - `quiverbench net`: a running quiverd measured over the
 * network through libquiver (<quiver/client.h>).
 *
 * It creates a collection (bench-<index>-<pid>), loads DIR/base.fvecs
 * over TCP (ids = row numbers, so DIR/groundtruth.ivecs scores it), waits
 * until DESCRIBE shows every row and, for the IVF kinds, `trained`, and
 * the collection's STATS show no sealed segment queued or building, then
 * searches DIR/query.fvecs (cycling) over UDP with
 * qv_client_search_async + qv_client_poll from this one thread:
 *
 *   --rate R      open loop: Poisson arrivals (exponential gaps from a
 *                 fixed seed), every query stamped with its INTENDED send
 *                 time and its latency measured from it, as in
 *                 bench_openloop.c, so a sender that falls behind still
 *                 charges its lateness to the tail (coordinated omission
 *                 cannot hide it).
 *   --inflight N  closed loop: N requests kept in flight; latency from
 *                 the actual send.
 *
 * Between arrivals the thread sleeps in ppoll on the client's UDP socket
 * (ns resolution) until the next arrival, an answer, or the next retry
 * deadline (qv_client_next_timeout_ms), then runs qv_client_poll(c, 0).
 *
 * Reports recall@k (set overlap of the first k ids with the ground
 * truth's first k, over the queries answered), achieved QPS (answers /
 * time from the first arrival to the last answer), p50/p95/p99/p999 in
 * us over the answered queries, timeouts and errors; --json prints one
 * line.  The collection is dropped at the end unless --keep.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "quiver/client.h"
#include "quiver/config.h"
#include "quiver/errors.h"
#include "quiver/timeutil.h"
#include "quiver/vecio.h"

#include "bench.h"

#define NET_CMD "net"
#define NET_SEED 0x9e3779b97f4a7c15ULL
#define NET_READY_TIMEOUT_NS (300LL * 1000000000LL)

const char qv__bench_net_usage[] =
    "usage: quiverbench net --data DIR --index flat|ivf|ivfpq|hnsw\n"
    "                       (--rate R | --inflight N) [FLAGS]\n"
    "\n"
    "Create a collection on a running quiverd, load DIR/base.fvecs over TCP,\n"
    "search DIR/query.fvecs over UDP and report recall@k against\n"
    "DIR/groundtruth.ivecs, QPS and latency.\n"
    "\n"
    "flags:\n"
    "  --server HOST:UDP[:TCP]  the server (TCP default UDP+1); default from\n"
    "                  --conf's [server] bind, udp_port, tcp_port\n"
    "  --conf FILE     quiverd's configuration (default: schema defaults,\n"
    "                  127.0.0.1:7700:7701)\n"
    "  --data DIR      directory with base.fvecs, query.fvecs, groundtruth.ivecs\n"
    "  --index KIND    flat, ivf, ivfpq or hnsw\n"
    "  --nlist N       IVF lists (0: the server's default)\n"
    "  --nprobe P      IVF lists probed (0: the collection's)\n"
    "  --m M           PQ sub-quantizers (ivfpq; 0: default)\n"
    "  --nbits B       PQ bits per code (ivfpq; 0: default)\n"
    "  --ef E          HNSW search beam (0: the collection's)\n"
    "  --k K           neighbours per query, 1..100 (default 10)\n"
    "  --rate R        open loop: Poisson arrivals at R per second\n"
    "  --inflight N    closed loop: N requests in flight (1..65536)\n"
    "  --duration S    seconds of load (default 5)\n"
    "  --timeout-ms T  UDP wait per try (default 200; 3 tries)\n"
    "  --json          one JSON object on one line\n"
    "  --keep          do not drop the collection at the end\n"
    "  --admin HOST:PORT  quiverd's admin API: also print the server's time\n"
    "                  per stage for this collection (its /metrics summaries:\n"
    "                  p50/p99 since the collection was created, warm-up\n"
    "                  included)\n";

struct net_args {
    const char *server, *conf, *data, *index, *admin;
    uint64_t nlist, nprobe, m, nbits, ef, k, inflight, timeout_ms;
    double rate, duration;
    int json, keep;
};

struct net_rec {
    int64_t t0;                 /* intended (open) or actual (closed) send, ns */
    int64_t done;               /* 0 = not completed */
    uint32_t qidx;
    int rc;
    uint32_t n;
    uint8_t cached;             /* answered from the server's result cache */
};

struct net_run {
    struct qv_client *c;
    struct net_rec *rec;
    size_t nrec, cap;
    uint64_t *ids;              /* cap x k */
    uint32_t k;
    size_t completed;
    int64_t last_done;
};

/* The callback's argument is the record's index; the run is global to
 * this file (one run per process). */
static struct net_run *g_run;

static void net_done(void *arg, int rc, const struct qv_client_hits *hits, const char *errmsg)
{
    struct net_run *r = g_run;
    size_t i = (size_t)(uintptr_t)arg;
    struct net_rec *q = &r->rec[i];

    (void)errmsg;
    q->done = qv_now_ns();
    q->rc = rc;
    if (rc == 0 && hits != NULL) {
        uint32_t n = hits->n < r->k ? hits->n : r->k;
        memcpy(r->ids + i * r->k, hits->ids, n * sizeof(uint64_t));
        q->n = n;
        q->cached = hits->cached || hits->approximate;
    }
    r->completed++;
    if (q->done > r->last_done)
        r->last_done = q->done;
}

static int cmp_dbl(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static uint64_t net_rand(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static int open_in(struct qv_vecfile *vf, const char *dir, const char *name)
{
    char path[4096];

    if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, name) >= sizeof path) {
        fprintf(stderr, "quiverbench net: %s/%s: path too long\n", dir, name);
        return -1;
    }
    if (qv_vecfile_open(vf, path, QV_VEC_AUTO) != 0) {
        fprintf(stderr, "quiverbench net: %s: %s\n", path, qv_errmsg());
        return -1;
    }
    if (vf->n == 0) {
        fprintf(stderr, "quiverbench net: %s: the file is empty\n", path);
        return -1;
    }
    return 0;
}

/* ---- the server's stages (admin /metrics) ---------------------------------- */

#define NET_STAGES 6
static const char *const net_stage[NET_STAGES] = { "queue_wait", "search", "distance",
                                                   "traversal", "respond", "end_to_end" };

/* GET http://HOST:PORT/metrics into a malloc'ed NUL-terminated string, or
 * NULL (a message on stderr). */
static char *net_metrics(const char *admin)
{
    char host[256];
    unsigned port = 0;
    if (sscanf(admin, "%255[^:]:%u", host, &port) != 2 || port == 0 || port > 65535) {
        fprintf(stderr, "quiverbench net: --admin %s: expected HOST:PORT\n", admin);
        return NULL;
    }
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1 || fd < 0 ||
        connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        fprintf(stderr, "quiverbench net: --admin %s: cannot connect (%s)\n", admin,
                strerror(errno));
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    char req[300];
    int n = snprintf(req, sizeof req, "GET /metrics HTTP/1.0\r\nHost: %s\r\n\r\n", host);
    if (send(fd, req, (size_t)n, 0) != n) {
        close(fd);
        return NULL;
    }
    size_t cap = 1 << 20, len = 0;
    char *buf = malloc(cap);
    ssize_t r;
    while (buf && (r = recv(fd, buf + len, cap - 1 - len, 0)) > 0) {
        len += (size_t)r;
        if (len + 1 == cap) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb) {
                free(buf);
                buf = NULL;
            }
            buf = nb;
        }
    }
    close(fd);
    if (buf)
        buf[len] = 0;
    return buf;
}

/* The stage summaries of collection coll: p50 and p99 in us (-1: absent). */
static void net_stages(const char *text, uint64_t coll, double p50[NET_STAGES],
                       double p99[NET_STAGES])
{
    for (int i = 0; i < NET_STAGES; i++) {
        p50[i] = p99[i] = -1;
        for (int q = 0; q < 2; q++) {
            char key[200];
            snprintf(key, sizeof key, "quiver_service_stage_ns{collection=\"%llu\",stage=\"%s\","
                     "quantile=\"%s\"} ", (unsigned long long)coll, net_stage[i],
                     q ? "0.99" : "0.5");
            const char *at = text ? strstr(text, key) : NULL;
            if (at)
                (q ? p99 : p50)[i] = strtod(at + strlen(key), NULL) / 1000.0;
        }
    }
}

static int parse_args(int argc, char **argv, struct net_args *a)
{
    const char *u = qv__bench_net_usage;

    memset(a, 0, sizeof *a);
    a->k = 10;
    a->duration = 5;
    a->timeout_ms = 200;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int rc = 0;

        if (strcmp(f, "--help") == 0 || strcmp(f, "-h") == 0) {
            fputs(u, stdout);
            exit(QV_BENCH_EXIT_OK);
        } else if (strcmp(f, "--json") == 0) {
            a->json = 1;
            continue;
        } else if (strcmp(f, "--keep") == 0) {
            a->keep = 1;
            continue;
        }
        if (v == NULL)
            return qv__bench_usage(NET_CMD, u, "%s: missing value", f), -1;
        if (strcmp(f, "--server") == 0)
            a->server = v;
        else if (strcmp(f, "--conf") == 0)
            a->conf = v;
        else if (strcmp(f, "--data") == 0)
            a->data = v;
        else if (strcmp(f, "--admin") == 0)
            a->admin = v;
        else if (strcmp(f, "--index") == 0)
            a->index = v;
        else if (strcmp(f, "--nlist") == 0)
            rc = qv__bench_parse_u64(NET_CMD, u, f, v, 0, 1u << 20, &a->nlist);
        else if (strcmp(f, "--nprobe") == 0)
            rc = qv__bench_parse_u64(NET_CMD, u, f, v, 0, 1u << 20, &a->nprobe);
        else if (strcmp(f, "--m") == 0)
            rc = qv__bench_parse_u64(NET_CMD, u, f, v, 0, 65535, &a->m);
        else if (strcmp(f, "--nbits") == 0)
            rc = qv__bench_parse_u64(NET_CMD, u, f, v, 0, 8, &a->nbits);
        else if (strcmp(f, "--ef") == 0)
            rc = qv__bench_parse_u64(NET_CMD, u, f, v, 0, 4096, &a->ef);
        else if (strcmp(f, "--k") == 0)
            rc = qv__bench_parse_u64(NET_CMD, u, f, v, 1, 100, &a->k);
        else if (strcmp(f, "--inflight") == 0)
            rc = qv__bench_parse_u64(NET_CMD, u, f, v, 1, 65536, &a->inflight);
        else if (strcmp(f, "--timeout-ms") == 0)
            rc = qv__bench_parse_u64(NET_CMD, u, f, v, 1, 60000, &a->timeout_ms);
        else if (strcmp(f, "--rate") == 0)
            rc = qv__bench_parse_double(NET_CMD, u, f, v, 1e-3, 1e8, &a->rate);
        else if (strcmp(f, "--duration") == 0)
            rc = qv__bench_parse_double(NET_CMD, u, f, v, 0.01, 86400, &a->duration);
        else
            return qv__bench_usage(NET_CMD, u, "unknown flag %s", f), -1;
        if (rc != 0)
            return -1;
        i++;
    }
    if (a->data == NULL)
        return qv__bench_usage(NET_CMD, u, "--data is required"), -1;
    if (a->index == NULL)
        return qv__bench_usage(NET_CMD, u, "--index is required"), -1;
    if (strcmp(a->index, "flat") && strcmp(a->index, "ivf") && strcmp(a->index, "ivfpq") &&
        strcmp(a->index, "hnsw"))
        return qv__bench_usage(NET_CMD, u, "--index %s: expected flat, ivf, ivfpq or hnsw",
                               a->index), -1;
    if ((a->rate > 0) == (a->inflight > 0))
        return qv__bench_usage(NET_CMD, u, "give exactly one of --rate and --inflight"), -1;
    if (a->ef && a->ef < a->k)
        return qv__bench_usage(NET_CMD, u, "--ef %llu: must be at least --k",
                               (unsigned long long)a->ef), -1;
    return 0;
}

/* host, udp, tcp from --server or the configuration; 0 or -1 (printed). */
static int net_target(const struct net_args *a, char *host, size_t hostsz, uint16_t *udp,
                      uint16_t *tcp)
{
    if (a->server != NULL) {
        const char *s = a->server;
        const char *c1, *c2;
        char *end;
        unsigned long pu, pt;

        /* [v6]:u[:t] or host:u[:t] */
        if (*s == '[') {
            const char *rb = strchr(s, ']');
            if (rb == NULL || rb[1] != ':')
                goto bad;
            if ((size_t)(rb - s - 1) >= hostsz)
                goto bad;
            memcpy(host, s + 1, (size_t)(rb - s - 1));
            host[rb - s - 1] = '\0';
            c1 = rb + 1;
        } else {
            c1 = strchr(s, ':');
            if (c1 == NULL || (size_t)(c1 - s) >= hostsz || c1 == s)
                goto bad;
            memcpy(host, s, (size_t)(c1 - s));
            host[c1 - s] = '\0';
        }
        errno = 0;
        pu = strtoul(c1 + 1, &end, 10);
        if (errno || end == c1 + 1 || pu == 0 || pu > 65535)
            goto bad;
        c2 = end;
        if (*c2 == ':') {
            pt = strtoul(c2 + 1, &end, 10);
            if (errno || end == c2 + 1 || *end != '\0' || pt == 0 || pt > 65535)
                goto bad;
        } else if (*c2 == '\0') {
            pt = pu + 1;
            if (pt > 65535)
                goto bad;
        } else {
            goto bad;
        }
        *udp = (uint16_t)pu;
        *tcp = (uint16_t)pt;
        return 0;
bad:
        qv__bench_usage(NET_CMD, qv__bench_net_usage,
                        "--server %s: expected HOST:UDP[:TCP] with ports 1..65535", s);
        return -1;
    }
    struct qv_config *cfg = a->conf ? qv_config_load(a->conf) : qv_config_defaults();
    if (cfg == NULL) {
        fprintf(stderr, "quiverbench net: --conf %s: %s\n", a->conf ? a->conf : "",
                qv_errmsg());
        return -1;
    }
    const char *bind = qv_config_string(cfg, "server", "bind");
    if (strcmp(bind, "0.0.0.0") == 0 || *bind == '\0')
        bind = "127.0.0.1";
    else if (strcmp(bind, "::") == 0)
        bind = "::1";
    snprintf(host, hostsz, "%s", bind);
    int64_t pu = qv_config_int(cfg, "server", "udp_port");
    int64_t pt = qv_config_int(cfg, "server", "tcp_port");
    qv_config_free(cfg);
    if (pu == 0 || pt == 0) {
        fprintf(stderr, "quiverbench net: the configuration's ports are 0 (any free "
                "port): give --server HOST:UDP:TCP\n");
        return -1;
    }
    *udp = (uint16_t)pu;
    *tcp = (uint16_t)pt;
    return 0;
}

static int net_grow(struct net_run *r, size_t want)
{
    if (want <= r->cap)
        return 0;
    size_t cap = r->cap ? r->cap : 4096;
    while (cap < want)
        cap *= 2;
    struct net_rec *rec = realloc(r->rec, cap * sizeof *rec);
    if (rec == NULL)
        return -1;
    r->rec = rec;
    uint64_t *ids = realloc(r->ids, cap * r->k * sizeof *ids);
    if (ids == NULL)
        return -1;
    r->ids = ids;
    r->cap = cap;
    return 0;
}

/* Sleep until the client's socket is readable, deadline_ns (absolute;
 * <= 0: none) or the client's next retry, then complete what is ready.
 * Returns qv_client_poll's result. */
static int net_wait(struct qv_client *c, int64_t deadline_ns)
{
    struct pollfd pfd = { .fd = qv_client_fd(c), .events = POLLIN };
    int64_t wait = -1;
    int nt = qv_client_next_timeout_ms(c);

    if (nt >= 0)
        wait = (int64_t)nt * 1000000LL;
    if (deadline_ns > 0) {
        int64_t d = deadline_ns - qv_now_ns();
        if (d < 0)
            d = 0;
        if (wait < 0 || d < wait)
            wait = d;
    }
    if (wait != 0) {
        struct timespec ts = { .tv_sec = wait / 1000000000LL, .tv_nsec = wait % 1000000000LL };
        ppoll(&pfd, 1, wait < 0 ? NULL : &ts, NULL);
    }
    return qv_client_poll(c, 0);
}

/* Submit record i (query row qidx); 0, -ENOSPC (retry after a poll), or
 * another code (the record is failed with it). */
static int net_submit(struct net_run *r, uint64_t coll, const float *queries, uint32_t dim,
                      const struct qv_client_search_params *sp, size_t i)
{
    struct net_rec *q = &r->rec[i];
    int rc = qv_client_search_async(r->c, coll, queries + (size_t)q->qidx * dim, dim, r->k, sp,
                                    net_done, (void *)(uintptr_t)i);
    if (rc == 0 || rc == -ENOSPC)
        return rc;
    q->rc = rc;
    q->done = qv_now_ns();
    r->completed++;
    return rc;
}

int qv__bench_net_main(int argc, char **argv)
{
    struct net_args a;
    struct qv_vecfile base = { 0 }, query = { 0 }, gt = { 0 };
    struct qv_client *c = NULL;
    struct net_run run = { 0 };
    float *basev = NULL, *qv = NULL;
    uint64_t *rowids = NULL;
    double *lat = NULL;
    uint64_t coll = 0;
    int created = 0, ret = QV_BENCH_EXIT_FAIL, rc;
    char host[256];
    uint16_t udp, tcp;

    if (parse_args(argc, argv, &a) != 0)
        return QV_BENCH_EXIT_USAGE;
    if (net_target(&a, host, sizeof host, &udp, &tcp) != 0)
        return a.server ? QV_BENCH_EXIT_USAGE : QV_BENCH_EXIT_FAIL;
    if (open_in(&base, a.data, "base.fvecs") || open_in(&query, a.data, "query.fvecs") ||
        open_in(&gt, a.data, "groundtruth.ivecs"))
        goto out;
    if (query.dim != base.dim) {
        fprintf(stderr, "quiverbench net: query.fvecs has dim %u, base.fvecs %u\n",
                query.dim, base.dim);
        goto out;
    }
    if (gt.n < query.n || gt.dim < a.k) {
        fprintf(stderr, "quiverbench net: groundtruth.ivecs has %llu rows of %u, need %llu "
                "of at least %llu\n", (unsigned long long)gt.n, gt.dim,
                (unsigned long long)query.n, (unsigned long long)a.k);
        goto out;
    }
    uint32_t dim = base.dim, k = (uint32_t)a.k;
    size_t nb = base.n, nq = query.n;
    basev = malloc(nb * dim * sizeof(float));
    qv = malloc(nq * dim * sizeof(float));
    rowids = malloc(nb * sizeof(uint64_t));
    if (!basev || !qv || !rowids) {
        fprintf(stderr, "quiverbench net: out of memory for the data set\n");
        goto out;
    }
    if (qv_vecfile_read_f32(&base, 0, nb, basev) || qv_vecfile_read_f32(&query, 0, nq, qv)) {
        fprintf(stderr, "quiverbench net: reading the data: %s\n", qv_errmsg());
        goto out;
    }
    for (size_t i = 0; i < nb; i++)
        rowids[i] = i;

    struct qv_client_opts o;
    qv_client_opts_default(&o);
    o.timeout_ms = (uint32_t)a.timeout_ms;
    o.max_inflight = 65536;
    o.seed = NET_SEED;
    c = qv_client_connect(host, udp, tcp, &o);
    if (c == NULL) {
        fprintf(stderr, "quiverbench net: connect %s:%u:%u: %s\n", host, udp, tcp,
                qv_client_connect_errmsg());
        goto out;
    }

    /* the collection */
    char name[QV_CLIENT_MAX_NAME + 1];
    snprintf(name, sizeof name, "bench-%s-%ld", a.index, (long)getpid());
    struct qv_client_create cr = { .name = name, .dim = dim, .metric = QV_CLIENT_L2 };
    if (strcmp(a.index, "flat") == 0) {
        cr.index = QV_CLIENT_FLAT;
    } else if (strcmp(a.index, "ivf") == 0) {
        cr.index = QV_CLIENT_IVF;
        cr.nlist = (uint32_t)a.nlist;
        cr.nprobe = (uint32_t)a.nprobe;
    } else if (strcmp(a.index, "ivfpq") == 0) {
        cr.index = QV_CLIENT_IVF_PQ;
        cr.nlist = (uint32_t)a.nlist;
        cr.nprobe = (uint32_t)a.nprobe;
        cr.pq_m = (uint16_t)a.m;
        cr.pq_nbits = (uint8_t)a.nbits;
    } else {
        cr.index = QV_CLIENT_HNSW;
        cr.ef_search = (uint16_t)a.ef;
    }
    int64_t t_load = qv_now_ns();
    if ((rc = qv_client_create(c, &cr, &coll)) != 0) {
        fprintf(stderr, "quiverbench net: create %s: %s\n", name, qv_client_errmsg(c));
        goto out;
    }
    created = 1;
    struct qv_client_rows rows = { .n = nb, .dim = dim, .ids = rowids, .vectors = basev };
    if ((rc = qv_client_upsert(c, coll, &rows, NULL, NULL, NULL)) != 0) {
        fprintf(stderr, "quiverbench net: upsert into %s: %s\n", name, qv_client_errmsg(c));
        goto out;
    }
    /* ready: every row visible and, for IVF kinds, trained */
    struct qv_client_collection d;
    int64_t sealed = 0;
    for (;;) {
        if ((rc = qv_client_describe(c, coll, &d)) != 0) {
            fprintf(stderr, "quiverbench net: describe %s: %s\n", name, qv_client_errmsg(c));
            goto out;
        }
        int need_train = cr.index == QV_CLIENT_IVF || cr.index == QV_CLIENT_IVF_PQ;
        if (d.rows >= nb && (!need_train || d.trained)) {
            /* and no sealed segment still queued or building (STATS) */
            char *js = NULL;
            if ((rc = qv_client_stats_json(c, coll, &js)) != 0) {
                fprintf(stderr, "quiverbench net: stats %s: %s\n", name, qv_client_errmsg(c));
                goto out;
            }
            struct json_object *jo = json_tokener_parse(js), *pb = NULL, *sv = NULL;
            int64_t pending = 0;
            if (jo && json_object_object_get_ex(jo, "pending_builds", &pb))
                pending = json_object_get_int64(pb);
            if (jo && json_object_object_get_ex(jo, "sealed", &sv))
                sealed = json_object_get_int64(sv);
            json_object_put(jo);
            free(js);
            if (pending == 0)
                break;
        }
        if (qv_now_ns() - t_load > NET_READY_TIMEOUT_NS) {
            fprintf(stderr, "quiverbench net: %s not ready after 300 s (rows %llu of %zu, "
                    "trained %u)\n", name, (unsigned long long)d.rows, nb, d.trained);
            goto out;
        }
        struct timespec ts = { 0, 50 * 1000000L };
        nanosleep(&ts, NULL);
    }
    double load_s = (double)(qv_now_ns() - t_load) * 1e-9;
    if (!a.json)
        fprintf(stderr, "quiverbench net: %s: %zu x %u loaded and ready in %.2f s (%lld sealed "
                "segments built)\n", name, nb, dim, load_s, (long long)sealed);

    struct qv_client_search_params sp = { 0 };
    sp.nprobe = (uint32_t)a.nprobe;
    sp.ef = (uint32_t)a.ef;

    /* warm-up: one pass of up to 200 synchronous queries (not measured) */
    {
        uint64_t wid[100];
        uint32_t wn;
        for (size_t i = 0; i < nq && i < 200; i++)
            if (qv_client_search(c, coll, qv + i * dim, dim, k, &sp, wid, NULL, &wn) != 0) {
                fprintf(stderr, "quiverbench net: warm-up search: %s\n", qv_client_errmsg(c));
                goto out;
            }
    }

    run.c = c;
    run.k = k;
    g_run = &run;
    int64_t start, end;
    if (a.rate > 0) {
        /* every intended arrival up front: exponential gaps, fixed seed */
        double expect = a.rate * a.duration;
        if (net_grow(&run, (size_t)(expect + 10 * sqrt(expect) + 16)) != 0)
            goto oom;
        uint64_t s = NET_SEED;
        start = qv_now_ns() + 1000000;      /* 1 ms from now */
        end = start + (int64_t)(a.duration * 1e9);
        double t = (double)start;
        for (;;) {
            double u = ((double)(net_rand(&s) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
            t += -log(u) / a.rate * 1e9;
            if (t >= (double)end)
                break;
            if (net_grow(&run, run.nrec + 1) != 0)
                goto oom;
            run.rec[run.nrec] = (struct net_rec){ .t0 = (int64_t)t,
                                                  .qidx = (uint32_t)(run.nrec % nq) };
            run.nrec++;
        }
        size_t i = 0;
        while (i < run.nrec) {
            int64_t now = qv_now_ns();
            while (i < run.nrec && run.rec[i].t0 <= now) {
                rc = net_submit(&run, coll, qv, dim, &sp, i);
                if (rc == -ENOSPC)
                    break;          /* still charged from its intended time */
                i++;
            }
            if (rc == -ENOSPC) {
                if (net_wait(c, 0) < 0)
                    goto sockfail;
                continue;
            }
            if (i < run.nrec && net_wait(c, run.rec[i].t0) < 0)
                goto sockfail;
        }
    } else {
        start = qv_now_ns();
        end = start + (int64_t)(a.duration * 1e9);
        for (;;) {
            int64_t now = qv_now_ns();
            if (now >= end)
                break;
            while (qv_client_inflight(c) < a.inflight) {
                if (net_grow(&run, run.nrec + 1) != 0)
                    goto oom;
                run.rec[run.nrec] = (struct net_rec){ .t0 = qv_now_ns(),
                                                      .qidx = (uint32_t)(run.nrec % nq) };
                rc = net_submit(&run, coll, qv, dim, &sp, run.nrec);
                if (rc == -ENOSPC)
                    break;
                run.nrec++;
            }
            if (net_wait(c, end) < 0)
                goto sockfail;
        }
    }
    /* drain: every request ends (answer or timeout after its tries) */
    while (qv_client_inflight(c) > 0)
        if (net_wait(c, 0) < 0 && qv_client_inflight(c) > 0)
            goto sockfail;

    /* summary */
    lat = malloc((run.nrec ? run.nrec : 1) * sizeof *lat);
    if (lat == NULL)
        goto oom;
    size_t nlat = 0, timeouts = 0, errors = 0, cached = 0;
    double recall_sum = 0;
    for (size_t i = 0; i < run.nrec; i++) {
        struct net_rec *q = &run.rec[i];
        if (q->rc == -ETIMEDOUT) {
            timeouts++;
            continue;
        }
        if (q->rc != 0 || q->done == 0) {
            errors++;
            continue;
        }
        lat[nlat++] = (double)(q->done - q->t0) * 1e-3;
        cached += q->cached;
        const int32_t *truth = qv_vecfile_row(&gt, q->qidx);
        uint32_t hit = 0;
        for (uint32_t x = 0; x < q->n; x++)
            for (uint32_t y = 0; y < k; y++)
                if ((uint64_t)(int64_t)truth[y] == run.ids[i * k + x]) {
                    hit++;
                    break;
                }
        recall_sum += (double)hit / (double)k;
    }
    qsort(lat, nlat, sizeof *lat, cmp_dbl);
    double recall = nlat ? recall_sum / (double)nlat : 0;
    double span = (double)(end - start) * 1e-9;
    double offered = span > 0 ? (double)run.nrec / span : 0;
    int64_t last = run.last_done > end ? run.last_done : end;
    double qps = last > start ? (double)nlat / ((double)(last - start) * 1e-9) : 0;
    double p50 = qv__bench_quantile(lat, nlat, 0.50), p95 = qv__bench_quantile(lat, nlat, 0.95);
    double p99 = qv__bench_quantile(lat, nlat, 0.99);
    double p999 = qv__bench_quantile(lat, nlat, 0.999);
    double sp50[NET_STAGES], sp99[NET_STAGES];
    int have_stages = 0;
    if (a.admin) {
        char *mt = net_metrics(a.admin);
        if (mt) {
            net_stages(mt, coll, sp50, sp99);
            have_stages = 1;
            free(mt);
        }
    }
    struct qv_client_stats cs;
    qv_client_stats(c, &cs);

    if (a.json) {
        struct json_object *j = json_object_new_object();
        json_object_object_add(j, "mode", json_object_new_string(a.rate > 0 ? "openloop"
                                                                             : "closedloop"));
        json_object_object_add(j, "index", json_object_new_string(a.index));
        json_object_object_add(j, "k", json_object_new_int64(k));
        if (a.rate > 0)
            json_object_object_add(j, "rate", json_object_new_double(a.rate));
        else
            json_object_object_add(j, "inflight", json_object_new_int64((int64_t)a.inflight));
        json_object_object_add(j, "duration_s", json_object_new_double(a.duration));
        json_object_object_add(j, "sent", json_object_new_int64((int64_t)run.nrec));
        json_object_object_add(j, "answered", json_object_new_int64((int64_t)nlat));
        json_object_object_add(j, "recall_at_k", json_object_new_double(recall));
        json_object_object_add(j, "offered_qps", json_object_new_double(offered));
        json_object_object_add(j, "qps", json_object_new_double(qps));
        json_object_object_add(j, "p50_us", json_object_new_double(p50));
        json_object_object_add(j, "p95_us", json_object_new_double(p95));
        json_object_object_add(j, "p99_us", json_object_new_double(p99));
        json_object_object_add(j, "p999_us", json_object_new_double(p999));
        json_object_object_add(j, "timeouts", json_object_new_int64((int64_t)timeouts));
        json_object_object_add(j, "errors", json_object_new_int64((int64_t)errors));
        json_object_object_add(j, "udp_retries", json_object_new_int64((int64_t)cs.udp_retries));
        json_object_object_add(j, "cached_share",
                               json_object_new_double(nlat ? (double)cached / (double)nlat : 0));
        json_object_object_add(j, "load_s", json_object_new_double(load_s));
        json_object_object_add(j, "sealed_segments", json_object_new_int64(sealed));
        json_object_object_add(j, "server", json_object_new_string(host));
        if (have_stages) {
            struct json_object *st = json_object_new_object();
            for (int i = 0; i < NET_STAGES; i++) {
                if (sp50[i] < 0)
                    continue;
                struct json_object *so = json_object_new_object();
                json_object_object_add(so, "p50_us", json_object_new_double(sp50[i]));
                json_object_object_add(so, "p99_us", json_object_new_double(sp99[i]));
                json_object_object_add(st, net_stage[i], so);
            }
            json_object_object_add(j, "server_stages", st);
        }
        printf("%s\n", json_object_to_json_string_ext(j, JSON_C_TO_STRING_PLAIN |
                                                      JSON_C_TO_STRING_NOSLASHESCAPE));
        json_object_put(j);
    } else {
        if (a.rate > 0)
            printf("net           %s k=%u on %s:%u (UDP), open loop Poisson %.0f/s for %.2f s "
                   "(%zu sent), latency from the intended send\n", a.index, k, host, udp,
                   a.rate, a.duration, run.nrec);
        else
            printf("net           %s k=%u on %s:%u (UDP), closed loop %llu in flight for "
                   "%.2f s (%zu sent)\n", a.index, k, host, udp,
                   (unsigned long long)a.inflight, a.duration, run.nrec);
        printf("%10s %12s %12s %10s %10s %10s %10s %9s %7s %8s %7s\n", "recall@k",
               "offered_qps", "qps", "p50_us", "p95_us", "p99_us", "p999_us", "timeouts",
               "errors", "retries", "cached");
        printf("%10.4f %12.1f %12.1f %10.1f %10.1f %10.1f %10.1f %9zu %7zu %8llu %6.1f%%\n",
               recall, offered, qps, p50, p95, p99, p999, timeouts, errors,
               (unsigned long long)cs.udp_retries,
               nlat ? 100.0 * (double)cached / (double)nlat : 0.0);
        if (have_stages) {
            printf("server stages (quiverd /metrics, this collection since its creation):\n");
            printf("%-12s %10s %10s\n", "stage", "p50_us", "p99_us");
            for (int i = 0; i < NET_STAGES; i++)
                if (sp50[i] >= 0)
                    printf("%-12s %10.1f %10.1f\n", net_stage[i], sp50[i], sp99[i]);
        }
    }
    ret = QV_BENCH_EXIT_OK;
    goto out;

oom:
    fprintf(stderr, "quiverbench net: out of memory\n");
    goto out;
sockfail:
    fprintf(stderr, "quiverbench net: poll: %s\n", qv_client_errmsg(c));
out:
    if (c != NULL && created && !a.keep) {
        while (qv_client_inflight(c) > 0 && qv_client_poll(c, 100) >= 0)
            ;
        if (qv_client_drop(c, coll) != 0) {
            fprintf(stderr, "quiverbench net: drop %s: %s\n", name, qv_client_errmsg(c));
            ret = QV_BENCH_EXIT_FAIL;
        }
    } else if (c != NULL && created && !a.json) {
        fprintf(stderr, "quiverbench net: kept collection %s (id %llu)\n", name,
                (unsigned long long)coll);
    }
    g_run = NULL;
    qv_client_close(c);
    free(lat);
    free(run.rec);
    free(run.ids);
    free(basev);
    free(qv);
    free(rowids);
    qv_vecfile_close(&base);
    qv_vecfile_close(&query);
    qv_vecfile_close(&gt);
    return ret;
}
