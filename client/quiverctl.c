/*
 * quiverctl.c - the command-line client of quiverd: create, drop, list,
 * describe, load, search, stats and ping, over libquiver.
 *
 *   quiverctl [--server HOST:UDP_PORT[:TCP_PORT]] [--conf FILE] [--json]
 *             COMMAND ...
 *
 * Design
 *
 * - Layers.  Everything that talks to the server goes through libquiver
 *   (<quiver/client.h>).  The host runtime is linked for two things only:
 *   the configuration (<quiver/config.h>, for the default server address:
 *   [server] bind / udp_port / tcp_port of --conf, or the schema's
 *   defaults 127.0.0.1:7700:7701) and the zero-copy fvecs reader
 *   (<quiver/vecio.h>).  A bind address of 0.0.0.0 / :: means "every
 *   interface", so quiverctl connects to the loopback address then.
 * - Parsing.  The global options come before the command word; each
 *   command parses its own options after it.  The connection opens only
 *   once a command's arguments are known to be good (load sets the
 *   client's batch size from --batch-bytes before connecting).
 * - Output.  Human output by default (aligned tables, key: value lines);
 *   --json prints exactly one JSON document (json-c) on stdout per
 *   command, errors never go to stdout.
 * - Exit status.  0 success; 1 any error, reported as ONE line on stderr
 *   naming what was wrong, with the server's reason (qv_client_errmsg)
 *   where the server gave one; 2 a usage error, with the usage text.
 * - load.  The fvecs file is mapped (qv_vecfile_open) and sent in chunks
 *   of up to 64 MiB of vectors, each chunk copied once into a dense
 *   buffer (fvecs interleaves a 4-byte header with every row, and UPSERT
 *   wants rows packed); libquiver splits each chunk further into UPSERT
 *   messages of --batch-bytes.  Ids are first_id + row.  Progress comes
 *   from qv_client_upsert's callback: a bar redrawn in place when stderr
 *   is a tty, else one line per 10%.  A collection with attributes gets
 *   0 in every attribute.  Not atomic: rows acknowledged before a failure
 *   stay applied (the error says how many).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <quiver/client.h>
#include <quiver/config.h>
#include <quiver/errors.h>
#include <quiver/vecio.h>

#define CTL_EXIT_OK    0
#define CTL_EXIT_ERROR 1
#define CTL_EXIT_USAGE 2

/* Rows sent per qv_client_upsert call in load: this many bytes of floats. */
#define CTL_LOAD_CHUNK_BYTES ((size_t)64 << 20)

static const char ctl_usage_text[] =
    "usage: quiverctl [--server HOST:UDP_PORT[:TCP_PORT]] [--conf FILE] [--json] COMMAND ...\n"
    "\n"
    "  --server HOST:UDP[:TCP]  the quiverd to talk to (default: [server] bind,\n"
    "                           udp_port, tcp_port of --conf, else 127.0.0.1:7700:7701;\n"
    "                           TCP_PORT omitted: the configuration's tcp_port)\n"
    "  --conf FILE              a quiver.conf to take the server address from\n"
    "  --json                   print one JSON document per command\n"
    "  --admin HOST:PORT        quiverd's admin HTTP API, for engines (default:\n"
    "                           [server] admin_bind, admin_port of --conf)\n"
    "  --key-file FILE          sign requests with this auth key (the server's\n"
    "                           [server] auth_key_file; default: that key of --conf)\n"
    "\n"
    "commands:\n"
    "  create NAME --dim D [--metric l2|ip|cosine] [--index flat|ivf|ivf_sq8|ivfpq|hnsw]\n"
    "         [--nlist N] [--nprobe P] [--m M] [--nbits B] [--hnsw-m M]\n"
    "         [--ef-construction E] [--ef-search E] [--attr NAME]...\n"
    "  drop NAME\n"
    "  list\n"
    "  describe NAME\n"
    "  load NAME FILE.fvecs [--batch-bytes N] [--first-id ID]\n"
    "  search NAME (--vector \"v1,v2,...\" | --query-file FILE.fvecs --row I)\n"
    "         [--k K] [--nprobe P] [--ef E] [--filter TEXT]\n"
    "  stats [NAME]\n"
    "  status [NAME]            write-ahead log of each collection: LSNs, size\n"
    "  snapshot NAME            write a snapshot now; the WAL behind it is removed\n"
    "                           (admin API: POST /collections/NAME/snapshot)\n"
    "  ping\n"
    "  engines                  the router's engines (admin API: GET /engines)\n"
    "\n"
    "exit status: 0 ok, 1 error (one line on stderr), 2 usage error\n";

struct ctl {
    char host[256];
    uint16_t udp_port, tcp_port;
    char admin_host[256];
    uint16_t admin_port;
    bool json;
    struct qv_client_opts opts;
    struct qv_client *client;
    const char *cmd;            /* the command word, for messages */
    char conf_key[4096];        /* [server] auth_key_file of --conf, "" = none */
    unsigned char key[1024];    /* the auth key in use (opts.key) */
};

/* ---- messages ------------------------------------------------------- */

static int ctl_usage(const char *fmt, ...)
{
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        fputs("quiverctl: ", stderr);
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        va_end(ap);
    }
    fputs(ctl_usage_text, stderr);
    return CTL_EXIT_USAGE;
}

/* One line on stderr: "quiverctl: CMD: message".  Returns CTL_EXIT_ERROR. */
static int ctl_error(const struct ctl *x, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "quiverctl: %s: ", x->cmd ? x->cmd : "error");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return CTL_EXIT_ERROR;
}

/* A failed libquiver call: the collection it was about (NULL: none), then
 * the client's message (which names the request, the server and its
 * reason). */
static int ctl_client_error(const struct ctl *x, const char *what, int rc)
{
    const char *msg = qv_client_errmsg(x->client);
    if (!msg || !*msg)
        msg = qv_client_strerror(rc);
    if (!what)
        return ctl_error(x, "%s", msg);
    return ctl_error(x, "%s: %s", what, msg);
}

/* ---- parsing -------------------------------------------------------- */

static bool ctl_parse_u64(const char *s, uint64_t max, uint64_t *out)
{
    if (!s || !*s || *s == '-' || *s == '+')
        return false;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || *end || v > max)
        return false;
    *out = v;
    return true;
}

/* A numeric option's value, or a usage error naming the option. */
#define CTL_NUM(opt, arg, max, dst)                                                     \
    do {                                                                                \
        uint64_t v_;                                                                    \
        if (!ctl_parse_u64((arg), (max), &v_))                                          \
            return ctl_usage("%s %s: expected an integer in 0..%" PRIu64, (opt),        \
                             (arg), (uint64_t)(max));                                   \
        (dst) = v_;                                                                     \
    } while (0)

static bool ctl_parse_port(const char *s, uint16_t *out)
{
    uint64_t v;
    if (!ctl_parse_u64(s, 65535, &v) || v == 0)
        return false;
    *out = (uint16_t)v;
    return true;
}

/* HOST:UDP[:TCP], HOST may be [IPv6]; without TCP the configuration's
 * tcp_port stays. */
static bool ctl_parse_server(struct ctl *x, const char *spec)
{
    char buf[512];
    if (strlen(spec) >= sizeof(buf))
        return false;
    strcpy(buf, spec);
    char *host = buf, *rest;
    if (buf[0] == '[') {
        char *close = strchr(buf, ']');
        if (!close || close[1] != ':')
            return false;
        *close = '\0';
        host = buf + 1;
        rest = close + 2;
    } else {
        char *colon = strchr(buf, ':');
        if (!colon)
            return false;
        *colon = '\0';
        rest = colon + 1;
    }
    if (!*host || strlen(host) >= sizeof(x->host))
        return false;
    char *tcp = strchr(rest, ':');
    if (tcp)
        *tcp++ = '\0';
    if (!ctl_parse_port(rest, &x->udp_port))
        return false;
    if (tcp && !ctl_parse_port(tcp, &x->tcp_port))
        return false;
    strcpy(x->host, host);
    return true;
}

/* The server address from a configuration (--conf FILE, or the schema's
 * defaults when path is NULL). */
static int ctl_load_conf(struct ctl *x, const char *path)
{
    struct qv_config *cfg = path ? qv_config_load(path) : qv_config_defaults();
    if (!cfg) {
        fprintf(stderr, "quiverctl: --conf %s: %s\n", path ? path : "(defaults)",
                *qv_errmsg() ? qv_errmsg() : qv_strerror(qv_errno));
        return CTL_EXIT_ERROR;
    }
    const char *bind = qv_config_string(cfg, "server", "bind");
    if (!strcmp(bind, "0.0.0.0") || !*bind)
        bind = "127.0.0.1";
    else if (!strcmp(bind, "::"))
        bind = "::1";
    snprintf(x->host, sizeof(x->host), "%s", bind);
    x->udp_port = (uint16_t)qv_config_int(cfg, "server", "udp_port");
    x->tcp_port = (uint16_t)qv_config_int(cfg, "server", "tcp_port");
    const char *ab = qv_config_string(cfg, "server", "admin_bind");
    snprintf(x->admin_host, sizeof(x->admin_host), "%s", !strcmp(ab, "0.0.0.0") ? "127.0.0.1" : ab);
    x->admin_port = (uint16_t)qv_config_int(cfg, "server", "admin_port");
    const char *kf = qv_config_string(cfg, "server", "auth_key_file");
    if (strcmp(kf, "none") != 0)
        snprintf(x->conf_key, sizeof x->conf_key, "%s", kf);
    qv_config_free(cfg);
    return CTL_EXIT_OK;
}

/* The auth key of path (trailing newlines stripped, as quiverd reads it)
 * into x->opts; libquiver checks its length at connect. */
static int ctl_read_key(struct ctl *x, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "quiverctl: --key-file %s: %s\n", path, strerror(errno));
        return CTL_EXIT_ERROR;
    }
    size_t n = fread(x->key, 1, sizeof x->key, f);
    fclose(f);
    while (n && (x->key[n - 1] == '\n' || x->key[n - 1] == '\r'))
        n--;
    x->opts.key = x->key;
    x->opts.key_len = n;
    return CTL_EXIT_OK;
}

static int ctl_connect(struct ctl *x)
{
    if (x->udp_port == 0 || x->tcp_port == 0)
        return ctl_error(x, "the server's port is 0 in the configuration (any free port): "
                            "give --server HOST:UDP_PORT:TCP_PORT");
    x->client = qv_client_connect(x->host, x->udp_port, x->tcp_port, &x->opts);
    if (!x->client)
        return ctl_error(x, "cannot connect to %s (udp %u, tcp %u): %s", x->host,
                         x->udp_port, x->tcp_port, qv_client_connect_errmsg());
    return CTL_EXIT_OK;
}

/* The id of the collection called name; an error line when there is none. */
static int ctl_lookup(struct ctl *x, const char *name, uint64_t *id)
{
    int rc = qv_client_lookup(x->client, name, id);
    if (rc == -ENOENT)
        return ctl_error(x, "no collection named '%s' on %s (tcp %u)", name, x->host,
                         x->tcp_port);
    if (rc < 0)
        return ctl_client_error(x, name, rc);
    return CTL_EXIT_OK;
}

/* Print a json-c object as the command's one document, and release it. */
static int ctl_print_json(struct json_object *o)
{
    puts(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY |
                                               JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put(o);
    return CTL_EXIT_OK;
}

/* ---- names of enums ------------------------------------------------- */

static const char *const ctl_metric_names[] = { "l2", "ip", "cosine" };
static const char *const ctl_index_names[] = { "flat", "ivf", "ivf_sq8", "ivfpq", "hnsw" };

static const char *ctl_name_of(const char *const *names, size_t n, unsigned v)
{
    return v < n ? names[v] : "?";
}

static int ctl_index_of(const char *const *names, size_t n, const char *s)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(names[i], s))
            return (int)i;
    return -1;
}

#define CTL_COUNT(a) (sizeof(a) / sizeof((a)[0]))

static struct json_object *ctl_collection_json(const struct qv_client_collection *c)
{
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "id", json_object_new_int64((int64_t)c->id));
    json_object_object_add(o, "name", json_object_new_string(c->name));
    json_object_object_add(o, "dim", json_object_new_int64(c->dim));
    json_object_object_add(o, "metric", json_object_new_string(
        ctl_name_of(ctl_metric_names, CTL_COUNT(ctl_metric_names), c->metric)));
    json_object_object_add(o, "index", json_object_new_string(
        ctl_name_of(ctl_index_names, CTL_COUNT(ctl_index_names), c->index)));
    struct json_object *attrs = json_object_new_array();
    for (unsigned i = 0; i < c->nattrs && i < QV_CLIENT_MAX_ATTRS; i++)
        json_object_array_add(attrs, json_object_new_string(c->attrs[i]));
    json_object_object_add(o, "attrs", attrs);
    json_object_object_add(o, "rows", json_object_new_int64((int64_t)c->rows));
    json_object_object_add(o, "epoch", json_object_new_int64((int64_t)c->epoch));
    json_object_object_add(o, "nlist", json_object_new_int64(c->nlist));
    json_object_object_add(o, "nprobe", json_object_new_int64(c->nprobe));
    json_object_object_add(o, "pq_m", json_object_new_int64(c->pq_m));
    json_object_object_add(o, "pq_nbits", json_object_new_int64(c->pq_nbits));
    json_object_object_add(o, "trained", json_object_new_boolean(c->trained));
    json_object_object_add(o, "hnsw_m", json_object_new_int64(c->hnsw_m));
    json_object_object_add(o, "ef_construction", json_object_new_int64(c->ef_construction));
    json_object_object_add(o, "ef_search", json_object_new_int64(c->ef_search));
    return o;
}

/* ---- commands ------------------------------------------------------- */

/* Every command: argv[0] is the command word, getopt-style options after. */

static int ctl_cmd_create(struct ctl *x, int argc, char **argv)
{
    enum { O_DIM = 1, O_METRIC, O_INDEX, O_NLIST, O_NPROBE, O_M, O_NBITS, O_HNSW_M,
           O_EFC, O_EFS, O_ATTR };
    static const struct option lo[] = {
        { "dim", required_argument, NULL, O_DIM },
        { "metric", required_argument, NULL, O_METRIC },
        { "index", required_argument, NULL, O_INDEX },
        { "nlist", required_argument, NULL, O_NLIST },
        { "nprobe", required_argument, NULL, O_NPROBE },
        { "m", required_argument, NULL, O_M },
        { "nbits", required_argument, NULL, O_NBITS },
        { "hnsw-m", required_argument, NULL, O_HNSW_M },
        { "ef-construction", required_argument, NULL, O_EFC },
        { "ef-search", required_argument, NULL, O_EFS },
        { "attr", required_argument, NULL, O_ATTR },
        { NULL, 0, NULL, 0 },
    };
    struct qv_client_create cr = { 0 };
    int o;
    optind = 0;
    while ((o = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        int v;
        switch (o) {
        case O_DIM: CTL_NUM("--dim", optarg, 4096, cr.dim); break;
        case O_METRIC:
            if ((v = ctl_index_of(ctl_metric_names, CTL_COUNT(ctl_metric_names), optarg)) < 0)
                return ctl_usage("create: --metric %s: expected l2, ip or cosine", optarg);
            cr.metric = (enum qv_client_metric)v;
            break;
        case O_INDEX:
            if ((v = ctl_index_of(ctl_index_names, CTL_COUNT(ctl_index_names), optarg)) < 0)
                return ctl_usage("create: --index %s: expected flat, ivf, ivf_sq8, ivfpq "
                                 "or hnsw", optarg);
            cr.index = (enum qv_client_index)v;
            break;
        case O_NLIST: CTL_NUM("--nlist", optarg, UINT32_MAX, cr.nlist); break;
        case O_NPROBE: CTL_NUM("--nprobe", optarg, UINT32_MAX, cr.nprobe); break;
        case O_M: CTL_NUM("--m", optarg, UINT16_MAX, cr.pq_m); break;
        case O_NBITS: CTL_NUM("--nbits", optarg, UINT8_MAX, cr.pq_nbits); break;
        case O_HNSW_M: CTL_NUM("--hnsw-m", optarg, UINT16_MAX, cr.hnsw_m); break;
        case O_EFC: CTL_NUM("--ef-construction", optarg, UINT16_MAX, cr.ef_construction); break;
        case O_EFS: CTL_NUM("--ef-search", optarg, UINT16_MAX, cr.ef_search); break;
        case O_ATTR:
            if (cr.nattrs >= QV_CLIENT_MAX_ATTRS)
                return ctl_usage("create: --attr %s: at most %d attributes", optarg,
                                 QV_CLIENT_MAX_ATTRS);
            cr.attrs[cr.nattrs++] = optarg;
            break;
        default: return ctl_usage(NULL);
        }
    }
    if (argc - optind != 1)
        return ctl_usage("create: expected one NAME");
    if (cr.dim == 0)
        return ctl_usage("create: --dim D (1..4096) is required");
    cr.name = argv[optind];
    int rc = ctl_connect(x);
    if (rc)
        return rc;
    uint64_t id;
    if ((rc = qv_client_create(x->client, &cr, &id)) < 0)
        return ctl_client_error(x, cr.name, rc);
    if (x->json) {
        struct json_object *j = json_object_new_object();
        json_object_object_add(j, "name", json_object_new_string(cr.name));
        json_object_object_add(j, "id", json_object_new_int64((int64_t)id));
        return ctl_print_json(j);
    }
    printf("created %s (id %" PRIu64 ", dim %u, %s, %s)\n", cr.name, id, cr.dim,
           ctl_metric_names[cr.metric], ctl_index_names[cr.index]);
    return CTL_EXIT_OK;
}

/* Commands without options and with at least min, at most max (<= 1)
 * NAME arguments: drop, describe (one), stats (at most one), list, ping,
 * engines (none).  *name = the NAME or NULL. */
static int ctl_plain_args(int argc, char **argv, int min, int max, const char **name)
{
    *name = NULL;
    optind = 0;
    static const struct option lo[] = { { NULL, 0, NULL, 0 } };
    if (getopt_long(argc, argv, "", lo, NULL) != -1)
        return ctl_usage(NULL);
    int n = argc - optind;
    if (n < min || n > max)
        return ctl_usage(max == 0 ? "%s: takes no arguments"
                         : min == 1 ? "%s: expected one NAME"
                                    : "%s: expected at most one NAME", argv[0]);
    *name = n ? argv[optind] : NULL;
    return CTL_EXIT_OK;
}

static int ctl_one_name(int argc, char **argv, const char **name)
{
    return ctl_plain_args(argc, argv, 1, 1, name);
}

static int ctl_no_args(int argc, char **argv)
{
    const char *none;
    return ctl_plain_args(argc, argv, 0, 0, &none);
}

static int ctl_cmd_drop(struct ctl *x, int argc, char **argv)
{
    const char *name = NULL;
    uint64_t id;
    int rc;
    if ((rc = ctl_one_name(argc, argv, &name)) || (rc = ctl_connect(x)) ||
        (rc = ctl_lookup(x, name, &id)))
        return rc;
    if ((rc = qv_client_drop(x->client, id)) < 0)
        return ctl_client_error(x, name, rc);
    if (x->json) {
        struct json_object *j = json_object_new_object();
        json_object_object_add(j, "dropped", json_object_new_string(name));
        json_object_object_add(j, "id", json_object_new_int64((int64_t)id));
        return ctl_print_json(j);
    }
    printf("dropped %s (id %" PRIu64 ")\n", name, id);
    return CTL_EXIT_OK;
}

static int ctl_cmd_describe(struct ctl *x, int argc, char **argv)
{
    const char *name = NULL;
    uint64_t id;
    int rc;
    if ((rc = ctl_one_name(argc, argv, &name)) || (rc = ctl_connect(x)) ||
        (rc = ctl_lookup(x, name, &id)))
        return rc;
    struct qv_client_collection c;
    if ((rc = qv_client_describe(x->client, id, &c)) < 0)
        return ctl_client_error(x, name, rc);
    if (x->json)
        return ctl_print_json(ctl_collection_json(&c));
    printf("%-16s %s\n", "name:", c.name);
    printf("%-16s %" PRIu64 "\n", "id:", c.id);
    printf("%-16s %u\n", "dim:", c.dim);
    printf("%-16s %s\n", "metric:",
           ctl_name_of(ctl_metric_names, CTL_COUNT(ctl_metric_names), c.metric));
    printf("%-16s %s\n", "index:",
           ctl_name_of(ctl_index_names, CTL_COUNT(ctl_index_names), c.index));
    printf("%-16s %" PRIu64 "\n", "rows:", c.rows);
    printf("%-16s %" PRIu64 "\n", "epoch:", c.epoch);
    printf("%-16s %s\n", "trained:", c.trained ? "yes" : "no");
    printf("%-16s", "attrs:");
    if (c.nattrs == 0)
        printf(" (none)");
    for (unsigned i = 0; i < c.nattrs && i < QV_CLIENT_MAX_ATTRS; i++)
        printf(" %s", c.attrs[i]);
    putchar('\n');
    printf("%-16s %u\n", "nlist:", c.nlist);
    printf("%-16s %u\n", "nprobe:", c.nprobe);
    printf("%-16s %u\n", "pq_m:", c.pq_m);
    printf("%-16s %u\n", "pq_nbits:", c.pq_nbits);
    printf("%-16s %u\n", "hnsw_m:", c.hnsw_m);
    printf("%-16s %u\n", "ef_construction:", c.ef_construction);
    printf("%-16s %u\n", "ef_search:", c.ef_search);
    return CTL_EXIT_OK;
}

static int ctl_cmd_list(struct ctl *x, int argc, char **argv)
{
    if (ctl_no_args(argc, argv))
        return CTL_EXIT_USAGE;
    int rc = ctl_connect(x);
    if (rc)
        return rc;
    struct qv_client_collection *list;
    uint32_t n;
    if ((rc = qv_client_list(x->client, &list, &n)) < 0)
        return ctl_client_error(x, NULL, rc);
    if (x->json) {
        struct json_object *a = json_object_new_array();
        for (uint32_t i = 0; i < n; i++)
            json_object_array_add(a, ctl_collection_json(&list[i]));
        qv_client_list_free(list);
        return ctl_print_json(a);
    }
    int w = 4;
    for (uint32_t i = 0; i < n; i++)
        if ((int)strlen(list[i].name) > w)
            w = (int)strlen(list[i].name);
    printf("%-6s %-*s %6s %-7s %-8s %12s %-7s\n", "ID", w, "NAME", "DIM", "METRIC", "INDEX",
           "ROWS", "TRAINED");
    for (uint32_t i = 0; i < n; i++) {
        const struct qv_client_collection *c = &list[i];
        printf("%-6" PRIu64 " %-*s %6u %-7s %-8s %12" PRIu64 " %-7s\n", c->id, w, c->name,
               c->dim, ctl_name_of(ctl_metric_names, CTL_COUNT(ctl_metric_names), c->metric),
               ctl_name_of(ctl_index_names, CTL_COUNT(ctl_index_names), c->index), c->rows,
               c->trained ? "yes" : "no");
    }
    qv_client_list_free(list);
    return CTL_EXIT_OK;
}

struct ctl_progress {
    const char *name;
    uint64_t base;              /* rows acknowledged by earlier chunks */
    uint64_t total;             /* rows in the file */
    uint64_t done;              /* rows acknowledged so far */
    int last_decile;            /* non-tty: the last 10% step printed */
    bool tty;
    struct timespec t0;
};

static double ctl_elapsed_s(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - t0->tv_sec) + (double)(t.tv_nsec - t0->tv_nsec) * 1e-9;
}

static int ctl_load_progress(void *arg, uint64_t done, uint64_t total)
{
    struct ctl_progress *p = arg;
    (void)total;
    p->done = p->base + done;
    double frac = p->total ? (double)p->done / (double)p->total : 1.0;
    if (p->tty) {
        enum { WIDTH = 40 };
        int fill = (int)(frac * WIDTH);
        char bar[WIDTH + 1];
        for (int i = 0; i < WIDTH; i++)
            bar[i] = i < fill ? '#' : ' ';
        bar[WIDTH] = '\0';
        double s = ctl_elapsed_s(&p->t0);
        fprintf(stderr, "\rload %s [%s] %3d%% %" PRIu64 "/%" PRIu64 " rows %.0f rows/s",
                p->name, bar, (int)(frac * 100), p->done, p->total,
                s > 0 ? (double)p->done / s : 0.0);
        fflush(stderr);
    } else {
        int decile = (int)(frac * 10);
        if (decile > p->last_decile) {
            p->last_decile = decile;
            fprintf(stderr, "load %s: %d%% (%" PRIu64 "/%" PRIu64 " rows)\n", p->name,
                    decile * 10, p->done, p->total);
        }
    }
    return 0;
}

static int ctl_cmd_load(struct ctl *x, int argc, char **argv)
{
    enum { O_BATCH = 1, O_FIRST };
    static const struct option lo[] = {
        { "batch-bytes", required_argument, NULL, O_BATCH },
        { "first-id", required_argument, NULL, O_FIRST },
        { NULL, 0, NULL, 0 },
    };
    uint64_t first_id = 0;
    int o, rc;
    optind = 0;
    while ((o = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (o) {
        case O_BATCH: CTL_NUM("--batch-bytes", optarg, (uint64_t)64 << 20,
                              x->opts.upsert_batch_bytes); break;
        case O_FIRST: CTL_NUM("--first-id", optarg, UINT64_MAX - 1, first_id); break;
        default: return ctl_usage(NULL);
        }
    }
    if (argc - optind != 2)
        return ctl_usage("load: expected NAME FILE.fvecs");
    const char *name = argv[optind], *path = argv[optind + 1];
    if (x->opts.upsert_batch_bytes < 4096)
        return ctl_usage("load: --batch-bytes %zu: expected 4096..67108864",
                         x->opts.upsert_batch_bytes);

    struct qv_vecfile vf = { 0 };
    if ((rc = qv_vecfile_open(&vf, path, QV_VEC_FVECS)) < 0)
        return ctl_error(x, "%s: %s", path, *qv_errmsg() ? qv_errmsg() : qv_strerror(rc));
    float *buf = NULL;
    int64_t *zeros = NULL;
    uint64_t *ids = NULL;
    uint64_t id;
    struct qv_client_collection c;
    rc = CTL_EXIT_ERROR;
    if (vf.n == 0) {
        ctl_error(x, "%s: no vectors in the file", path);
        goto out_file;
    }
    if (first_id + vf.n - 1 < first_id || first_id + vf.n - 1 == UINT64_MAX) {
        ctl_error(x, "--first-id %" PRIu64 ": ids would pass 2^64-2", first_id);
        goto out_file;
    }
    if ((rc = ctl_connect(x)) || (rc = ctl_lookup(x, name, &id)))
        goto out_file;
    if ((rc = qv_client_describe(x->client, id, &c)) < 0) {
        rc = ctl_client_error(x, name, rc);
        goto out_file;
    }
    rc = CTL_EXIT_ERROR;
    if (c.dim != vf.dim) {
        ctl_error(x, "%s has dim %u but collection %s has dim %u", path, vf.dim, name, c.dim);
        goto out_file;
    }
    uint64_t chunk = CTL_LOAD_CHUNK_BYTES / ((size_t)vf.dim * sizeof(float));
    if (chunk == 0)
        chunk = 1;
    if (chunk > vf.n)
        chunk = vf.n;
    buf = malloc(chunk * vf.dim * sizeof(float));
    ids = malloc(chunk * sizeof(*ids));
    zeros = calloc(chunk, sizeof(*zeros));
    if (!buf || !ids || !zeros) {
        ctl_error(x, "out of memory for %" PRIu64 " rows of dim %u", chunk, vf.dim);
        goto out_buf;
    }
    struct ctl_progress pr = { .name = name, .total = vf.n, .last_decile = 0,
                               .tty = isatty(STDERR_FILENO) };
    clock_gettime(CLOCK_MONOTONIC, &pr.t0);
    uint64_t epoch = 0;
    for (uint64_t first = 0; first < vf.n; first += chunk) {
        uint64_t cnt = vf.n - first < chunk ? vf.n - first : chunk;
        for (uint64_t i = 0; i < cnt; i++) {
            memcpy(buf + i * vf.dim, qv_vecfile_row(&vf, first + i), vf.dim * sizeof(float));
            ids[i] = first_id + first + i;
        }
        struct qv_client_rows rows = { .n = cnt, .dim = vf.dim, .ids = ids, .vectors = buf,
                                       .nattrs = c.nattrs };
        for (unsigned a = 0; a < c.nattrs && a < QV_CLIENT_MAX_ATTRS; a++)
            rows.attrs[a] = zeros;
        pr.base = first;
        int r = qv_client_upsert(x->client, id, &rows, ctl_load_progress, &pr, &epoch);
        if (r < 0) {
            if (pr.tty)
                fputc('\n', stderr);
            ctl_error(x, "%s: after %" PRIu64 " of %" PRIu64 " rows (those stay applied): %s",
                      name, pr.done, vf.n,
                      *qv_client_errmsg(x->client) ? qv_client_errmsg(x->client)
                                                   : qv_client_strerror(r));
            goto out_buf;
        }
    }
    if (pr.tty)
        fputc('\n', stderr);
    double s = ctl_elapsed_s(&pr.t0);
    if (x->json) {
        struct json_object *j = json_object_new_object();
        json_object_object_add(j, "collection", json_object_new_string(name));
        json_object_object_add(j, "file", json_object_new_string(path));
        json_object_object_add(j, "rows", json_object_new_int64((int64_t)vf.n));
        json_object_object_add(j, "first_id", json_object_new_int64((int64_t)first_id));
        json_object_object_add(j, "epoch", json_object_new_int64((int64_t)epoch));
        json_object_object_add(j, "seconds", json_object_new_double(s));
        ctl_print_json(j);
    } else {
        printf("loaded %" PRIu64 " rows of dim %u into %s (ids %" PRIu64 "..%" PRIu64
               ") in %.2f s, %.0f rows/s\n", vf.n, vf.dim, name, first_id,
               first_id + vf.n - 1, s, s > 0 ? (double)vf.n / s : 0.0);
    }
    rc = CTL_EXIT_OK;
out_buf:
    free(zeros);
    free(ids);
    free(buf);
out_file:
    qv_vecfile_close(&vf);
    return rc;
}

/* "v1,v2,..." into a malloc'd array; *dim its length.  Returns NULL with a
 * usage message printed on a bad number. */
static float *ctl_parse_vector(const char *s, uint32_t *dim)
{
    size_t cap = 1;
    for (const char *p = s; *p; p++)
        cap += *p == ',';
    float *v = malloc(cap * sizeof(float));
    if (!v)
        return NULL;
    uint32_t n = 0;
    const char *p = s;
    for (;;) {
        char *end;
        errno = 0;
        double d = strtod(p, &end);
        if (end == p || errno || !isfinite(d) || (*end && *end != ',')) {
            ctl_usage("search: --vector: element %u is not a number near \"%.20s\"", n + 1, p);
            free(v);
            return NULL;
        }
        v[n++] = (float)d;
        if (!*end)
            break;
        p = end + 1;
    }
    *dim = n;
    return v;
}

static int ctl_cmd_search(struct ctl *x, int argc, char **argv)
{
    enum { O_VEC = 1, O_QFILE, O_ROW, O_K, O_NPROBE, O_EF, O_FILTER };
    static const struct option lo[] = {
        { "vector", required_argument, NULL, O_VEC },
        { "query-file", required_argument, NULL, O_QFILE },
        { "row", required_argument, NULL, O_ROW },
        { "k", required_argument, NULL, O_K },
        { "nprobe", required_argument, NULL, O_NPROBE },
        { "ef", required_argument, NULL, O_EF },
        { "filter", required_argument, NULL, O_FILTER },
        { NULL, 0, NULL, 0 },
    };
    const char *vec = NULL, *qfile = NULL;
    uint64_t row = 0, k = 10;
    bool row_given = false;
    struct qv_client_search_params sp = { 0 };
    int o, rc;
    optind = 0;
    while ((o = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (o) {
        case O_VEC: vec = optarg; break;
        case O_QFILE: qfile = optarg; break;
        case O_ROW: CTL_NUM("--row", optarg, UINT64_MAX, row); row_given = true; break;
        case O_K: CTL_NUM("--k", optarg, 100000, k); break;
        case O_NPROBE: CTL_NUM("--nprobe", optarg, UINT32_MAX, sp.nprobe); break;
        case O_EF: CTL_NUM("--ef", optarg, UINT32_MAX, sp.ef); break;
        case O_FILTER: sp.filter = optarg; break;
        default: return ctl_usage(NULL);
        }
    }
    if (argc - optind != 1)
        return ctl_usage("search: expected one NAME");
    if (!!vec == !!qfile)
        return ctl_usage("search: give exactly one of --vector and --query-file");
    if (qfile && !row_given)
        return ctl_usage("search: --query-file needs --row I");
    if (k == 0)
        return ctl_usage("search: --k 0: expected 1 or more");
    const char *name = argv[optind];

    float *q = NULL;
    uint32_t dim = 0;
    struct qv_vecfile vf = { 0 };
    uint64_t *ids = NULL;
    float *dist = NULL;
    if (vec) {
        if (!(q = ctl_parse_vector(vec, &dim)))
            return CTL_EXIT_USAGE;
    } else {
        if ((rc = qv_vecfile_open(&vf, qfile, QV_VEC_AUTO)) < 0)
            return ctl_error(x, "%s: %s", qfile, *qv_errmsg() ? qv_errmsg() : qv_strerror(rc));
        if (row >= vf.n) {
            ctl_error(x, "--row %" PRIu64 ": %s has %" PRIu64 " rows", row, qfile, vf.n);
            qv_vecfile_close(&vf);
            return CTL_EXIT_ERROR;
        }
        dim = vf.dim;
        q = malloc((size_t)dim * sizeof(float));
        if (!q || qv_vecfile_read_f32(&vf, row, 1, q) < 0) {
            ctl_error(x, "%s: cannot read row %" PRIu64, qfile, row);
            rc = CTL_EXIT_ERROR;
            goto out;
        }
    }
    uint64_t id;
    if ((rc = ctl_connect(x)) || (rc = ctl_lookup(x, name, &id)))
        goto out;
    ids = malloc(k * sizeof(*ids));
    dist = malloc(k * sizeof(*dist));
    if (!ids || !dist) {
        rc = ctl_error(x, "out of memory for k = %" PRIu64, k);
        goto out;
    }
    uint32_t n = 0;
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int r = qv_client_search(x->client, id, q, dim, (uint32_t)k, &sp, ids, dist, &n);
    double ms = ctl_elapsed_s(&t0) * 1e3;
    if (r < 0) {
        rc = ctl_client_error(x, name, r);
        goto out;
    }
    if (x->json) {
        struct json_object *j = json_object_new_object();
        json_object_object_add(j, "collection", json_object_new_string(name));
        json_object_object_add(j, "k", json_object_new_int64((int64_t)k));
        json_object_object_add(j, "ms", json_object_new_double(ms));
        struct json_object *ja = json_object_new_array(), *da = json_object_new_array();
        for (uint32_t i = 0; i < n; i++) {
            json_object_array_add(ja, json_object_new_int64((int64_t)ids[i]));
            json_object_array_add(da, json_object_new_double(dist[i]));
        }
        json_object_object_add(j, "ids", ja);
        json_object_object_add(j, "distances", da);
        ctl_print_json(j);
    } else {
        printf("%-5s %-20s %s\n", "RANK", "ID", "DISTANCE");
        for (uint32_t i = 0; i < n; i++)
            printf("%-5u %-20" PRIu64 " %.6g\n", i + 1, ids[i], dist[i]);
        printf("(%u results in %.3f ms)\n", n, ms);
    }
    rc = CTL_EXIT_OK;
out:
    free(dist);
    free(ids);
    free(q);
    qv_vecfile_close(&vf);
    return rc;
}

/* Human form of a stats document: one "path: value" line per leaf. */
static void ctl_print_flat(struct json_object *o, char *path, size_t len, size_t cap)
{
    if (json_object_is_type(o, json_type_object)) {
        json_object_object_foreach(o, key, val) {
            int w = snprintf(path + len, cap - len, "%s%s", len ? "." : "", key);
            size_t nl = len + (w > 0 ? (size_t)w : 0);
            ctl_print_flat(val, path, nl < cap ? nl : cap - 1, cap);
            path[len] = '\0';
        }
    } else if (json_object_is_type(o, json_type_array) &&
               json_object_array_length(o) > 0 &&
               json_object_is_type(json_object_array_get_idx(o, 0), json_type_object)) {
        for (size_t i = 0; i < json_object_array_length(o); i++) {
            int w = snprintf(path + len, cap - len, "[%zu]", i);
            size_t nl = len + (w > 0 ? (size_t)w : 0);
            ctl_print_flat(json_object_array_get_idx(o, i), path, nl < cap ? nl : cap - 1, cap);
            path[len] = '\0';
        }
    } else {
        printf("%-40s %s\n", path, json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
    }
}

static int ctl_cmd_stats(struct ctl *x, int argc, char **argv)
{
    const char *name = NULL;
    if (ctl_plain_args(argc, argv, 0, 1, &name))
        return CTL_EXIT_USAGE;
    uint64_t id = 0;
    int rc;
    if ((rc = ctl_connect(x)) || (name && (rc = ctl_lookup(x, name, &id))))
        return rc;
    char *doc;
    if ((rc = qv_client_stats_json(x->client, id, &doc)) < 0)
        return ctl_client_error(x, name, rc);
    struct json_object *j = json_tokener_parse(doc);
    free(doc);
    if (!j)
        return ctl_error(x, "the server's STATS answer is not JSON");
    if (x->json)
        return ctl_print_json(j);
    char path[512] = "";
    ctl_print_flat(j, path, 0, sizeof(path));
    json_object_put(j);
    return CTL_EXIT_OK;
}

/* status [NAME]: each collection's write-ahead log (STATS "wal"). */
static int ctl_cmd_status(struct ctl *x, int argc, char **argv)
{
    const char *name = NULL;
    if (ctl_plain_args(argc, argv, 0, 1, &name))
        return CTL_EXIT_USAGE;
    int rc = ctl_connect(x);
    if (rc)
        return rc;
    struct qv_client_collection *list;
    uint32_t n;
    if ((rc = qv_client_list(x->client, &list, &n)) < 0)
        return ctl_client_error(x, NULL, rc);
    struct json_object *out = json_object_new_array();
    int found = !name;
    for (uint32_t i = 0; i < n; i++) {
        if (name && strcmp(name, list[i].name) != 0)
            continue;
        found = 1;
        char *doc;
        if ((rc = qv_client_stats_json(x->client, list[i].id, &doc)) < 0) {
            qv_client_list_free(list);
            json_object_put(out);
            return ctl_client_error(x, list[i].name, rc);
        }
        struct json_object *j = json_tokener_parse(doc), *w = NULL;
        free(doc);
        struct json_object *e = json_object_new_object();
        json_object_object_add(e, "name", json_object_new_string(list[i].name));
        json_object_object_add(e, "rows", json_object_new_int64((int64_t)list[i].rows));
        if (j && json_object_object_get_ex(j, "wal", &w))
            json_object_object_add(e, "wal", json_object_get(w));
        json_object_put(j);
        json_object_array_add(out, e);
    }
    qv_client_list_free(list);
    if (!found) {
        json_object_put(out);
        return ctl_error(x, "no collection named '%s' on %s (tcp %u)", name, x->host,
                         x->tcp_port);
    }
    if (x->json)
        return ctl_print_json(out);
    printf("%-20s %12s %-8s %12s %12s %12s %5s %12s %9s %6s\n", "NAME", "ROWS", "SYNC",
           "LAST_LSN", "DURABLE_LSN", "WAL_BYTES", "WSEGS", "SNAPSHOT_LSN", "SEG_FILES",
           "MAPPED");
    for (size_t i = 0; i < json_object_array_length(out); i++) {
        struct json_object *e = json_object_array_get_idx(out, i), *v, *w = NULL;
        json_object_object_get_ex(e, "name", &v);
        const char *nm = json_object_get_string(v);
        json_object_object_get_ex(e, "rows", &v);
        int64_t rows = json_object_get_int64(v);
        if (!json_object_object_get_ex(e, "wal", &w)) {
            printf("%-20s %12" PRId64 " %-8s %12s %12s %12s %5s %12s %9s %6s in memory only "
                   "([storage] data_dir = none)\n", nm, rows, "-", "-", "-", "-", "-", "-", "-",
                   "-");
            continue;
        }
#define F(k) (json_object_object_get_ex(w, k, &v) ? json_object_get_int64(v) : 0)
        json_object_object_get_ex(w, "sync", &v);
        const char *sync = json_object_get_string(v);
        char snap[32] = "none";
        if (F("snapshot_lsn"))
            snprintf(snap, sizeof snap, "%" PRId64, F("snapshot_lsn"));
        printf("%-20s %12" PRId64 " %-8s %12" PRId64 " %12" PRId64 " %12" PRId64 " %5" PRId64
               " %12s %9" PRId64 " %6" PRId64 "\n", nm, rows, sync, F("last_lsn"),
               F("durable_lsn"), F("bytes"), F("segments"), snap, F("segment_files"),
               F("segments_mapped"));
#undef F
    }
    json_object_put(out);
    return CTL_EXIT_OK;
}

static int ctl_cmd_ping(struct ctl *x, int argc, char **argv)
{
    if (ctl_no_args(argc, argv))
        return CTL_EXIT_USAGE;
    int rc = ctl_connect(x);
    if (rc)
        return rc;
    uint64_t uptime;
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if ((rc = qv_client_ping(x->client, &uptime)) < 0)
        return ctl_client_error(x, NULL, rc);
    double ms = ctl_elapsed_s(&t0) * 1e3;
    if (x->json) {
        struct json_object *j = json_object_new_object();
        json_object_object_add(j, "server", json_object_new_string(x->host));
        json_object_object_add(j, "udp_port", json_object_new_int(x->udp_port));
        json_object_object_add(j, "uptime_ms", json_object_new_int64((int64_t)uptime));
        json_object_object_add(j, "rtt_ms", json_object_new_double(ms));
        return ctl_print_json(j);
    }
    printf("pong from %s udp %u: uptime %.1f s, rtt %.3f ms\n", x->host, x->udp_port,
           (double)uptime / 1e3, ms);
    return CTL_EXIT_OK;
}

/* GET path from the admin API into a malloc'ed NUL-terminated body; the
 * HTTP status into *status.  NULL with an error line on failure. */
static char *ctl_http(struct ctl *x, const char *method, const char *path, int *status)
{
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(x->admin_port) };
    if (x->admin_port == 0 || inet_pton(AF_INET, x->admin_host, &sa.sin_addr) != 1) {
        ctl_error(x, "admin API %s:%u: give --admin IPv4:PORT", x->admin_host, x->admin_port);
        return NULL;
    }
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        ctl_error(x, "cannot reach the admin API at %s:%u: %s", x->admin_host, x->admin_port,
                  strerror(errno));
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    char req[512];
    int n = snprintf(req, sizeof req, "%s %s HTTP/1.0\r\nHost: %s\r\nContent-Length: 0\r\n\r\n",
                     method, path, x->admin_host);
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap);
    ssize_t r;
    if (buf && send(fd, req, (size_t)n, 0) == n)
        while ((r = recv(fd, buf + len, cap - 1 - len, 0)) > 0) {
            len += (size_t)r;
            if (len + 1 == cap) {
                char *nb = realloc(buf, cap *= 2);
                if (!nb)
                    break;
                buf = nb;
            }
        }
    close(fd);
    if (!buf)
        return NULL;
    buf[len] = 0;
    *status = 0;
    sscanf(buf, "HTTP/1.%*d %d", status);
    char *body = strstr(buf, "\r\n\r\n");
    if (!body) {
        free(buf);
        ctl_error(x, "the admin API at %s:%u answered no HTTP", x->admin_host, x->admin_port);
        return NULL;
    }
    memmove(buf, body + 4, strlen(body + 4) + 1);
    return buf;
}

/* snapshot NAME: POST /collections/NAME/snapshot on the admin API. */
static int ctl_cmd_snapshot(struct ctl *x, int argc, char **argv)
{
    const char *name = NULL;
    if (ctl_plain_args(argc, argv, 1, 1, &name))
        return CTL_EXIT_USAGE;
    char path[256];
    snprintf(path, sizeof path, "/collections/%s/snapshot", name);
    int status = 0;
    char *body = ctl_http(x, "POST", path, &status);
    if (!body)
        return CTL_EXIT_ERROR;
    if (status != 200) {
        int rc = ctl_error(x, "%s: HTTP %d: %s", name, status, body);
        free(body);
        return rc;
    }
    struct json_object *j = json_tokener_parse(body), *v;
    free(body);
    if (!j)
        return ctl_error(x, "the admin API's answer is not JSON");
    if (x->json)
        return ctl_print_json(j);
    json_object_object_get_ex(j, "lsn", &v);
    printf("snapshot of %s at LSN %" PRId64 "\n", name, json_object_get_int64(v));
    json_object_put(j);
    return CTL_EXIT_OK;
}

static int ctl_cmd_engines(struct ctl *x, int argc, char **argv)
{
    if (ctl_no_args(argc, argv))
        return CTL_EXIT_USAGE;
    int status = 0;
    char *body = ctl_http(x, "GET", "/engines", &status);
    if (!body)
        return CTL_EXIT_ERROR;
    struct json_object *j = json_tokener_parse(body);
    free(body);
    if (status != 200 || !j || !json_object_is_type(j, json_type_array)) {
        if (j)
            json_object_put(j);
        return ctl_error(x, "GET /engines at %s:%u answered HTTP %d", x->admin_host,
                         x->admin_port, status);
    }
    if (x->json)
        return ctl_print_json(j);
    printf("%-8s %10s %9s %-10s %10s %12s %13s\n", "engine", "units", "failures", "breaker",
           "busy_ms", "flat_gflops", "flat_mem_gbps");
    for (size_t i = 0; i < json_object_array_length(j); i++) {
        struct json_object *e = json_object_array_get_idx(j, i), *v;
#define F(k) (json_object_object_get_ex(e, k, &v) ? v : NULL)
        printf("%-8s %10lld %9lld %-10s %10lld %12.1f %13.1f\n",
               json_object_get_string(F("name")), (long long)json_object_get_int64(F("units")),
               (long long)json_object_get_int64(F("failures")),
               json_object_get_string(F("breaker")),
               (long long)json_object_get_int64(F("busy_ms")),
               json_object_get_double(F("flat_gflops")),
               json_object_get_double(F("flat_mem_gbps")));
#undef F
    }
    json_object_put(j);
    return CTL_EXIT_OK;
}

/* ---- main ----------------------------------------------------------- */

static const struct {
    const char *name;
    int (*run)(struct ctl *x, int argc, char **argv);
} ctl_commands[] = {
    { "create", ctl_cmd_create },
    { "drop", ctl_cmd_drop },
    { "list", ctl_cmd_list },
    { "describe", ctl_cmd_describe },
    { "load", ctl_cmd_load },
    { "search", ctl_cmd_search },
    { "stats", ctl_cmd_stats },
    { "status", ctl_cmd_status },
    { "snapshot", ctl_cmd_snapshot },
    { "ping", ctl_cmd_ping },
    { "engines", ctl_cmd_engines },
};

int main(int argc, char **argv)
{
    enum { O_SERVER = 1, O_CONF, O_JSON, O_HELP, O_ADMIN, O_KEY };
    static const struct option lo[] = {
        { "server", required_argument, NULL, O_SERVER },
        { "conf", required_argument, NULL, O_CONF },
        { "json", no_argument, NULL, O_JSON },
        { "admin", required_argument, NULL, O_ADMIN },
        { "key-file", required_argument, NULL, O_KEY },
        { "help", no_argument, NULL, O_HELP },
        { NULL, 0, NULL, 0 },
    };
    struct ctl x = { 0 };
    const char *server = NULL, *conf = NULL, *admin = NULL, *keyfile = NULL;
    int o;
    while ((o = getopt_long(argc, argv, "+h", lo, NULL)) != -1) {
        switch (o) {
        case O_SERVER: server = optarg; break;
        case O_CONF: conf = optarg; break;
        case O_JSON: x.json = true; break;
        case O_ADMIN: admin = optarg; break;
        case O_KEY: keyfile = optarg; break;
        case O_HELP: case 'h': fputs(ctl_usage_text, stdout); return CTL_EXIT_OK;
        default: return ctl_usage(NULL);
        }
    }
    if (optind >= argc)
        return ctl_usage("no COMMAND given");
    int rc = ctl_load_conf(&x, conf);
    if (rc)
        return rc;
    if (server && !ctl_parse_server(&x, server))
        return ctl_usage("--server %s: expected HOST:UDP_PORT[:TCP_PORT] (ports 1..65535)",
                         server);
    if (admin) {
        unsigned p = 0;
        char h[256];
        if (sscanf(admin, "%255[^:]:%u", h, &p) != 2 || p == 0 || p > 65535)
            return ctl_usage("--admin %s: expected HOST:PORT", admin);
        snprintf(x.admin_host, sizeof x.admin_host, "%s", h);
        x.admin_port = (uint16_t)p;
    }
    qv_client_opts_default(&x.opts);
    if (!keyfile && x.conf_key[0])
        keyfile = x.conf_key;
    if (keyfile && (rc = ctl_read_key(&x, keyfile)) != 0)
        return rc;

    char **cargv = argv + optind;
    int cargc = argc - optind;
    for (size_t i = 0; i < CTL_COUNT(ctl_commands); i++) {
        if (!strcmp(cargv[0], ctl_commands[i].name)) {
            x.cmd = ctl_commands[i].name;
            rc = ctl_commands[i].run(&x, cargc, cargv);
            qv_client_close(x.client);
            return rc;
        }
    }
    return ctl_usage("unknown command '%s'", cargv[0]);
}
