/*
 * handler.c - quiverd's request handler (quiver/handler.h).
 *
 * One path for both carriers: decode (qv_proto_decode_request), run
 * (run_sync for everything but searches, start_search for searches),
 * encode into an answer buffer (struct ans: a UDP slot's tx, or a buffer
 * allocated to the answer's size on TCP), sign when there is a key.
 *
 * Searches.  A search context (struct sctx) holds the message header, the
 * carrier's return address, nq service requests with their results, and
 * a countdown; each request's `done` decrements it and the last one
 * encodes the answer and hands it to the transport (qv_udp_complete /
 * qv_tcp_reply).  A UDP SEARCH's context is the slot's user area; others
 * are allocated (and the TCP message's queries and filter copied in,
 * since the transport reuses its buffer).  A request the service refuses
 * (BUSY, TIMEOUT, ...) counts down at once with its status; the answer
 * is then that status for the whole message (the protocol has no
 * per-query status).  The countdown starts at nq + 1: start_search holds
 * one token until every query is submitted and then gives it back; who
 * brings the count to 0 answers.  So when every query completed inside
 * submit (cache hits, refusals) start_search answers synchronously, and
 * otherwise exactly one `done` does, from the dispatcher.
 *
 * Writes.  CREATE, DROP, UPSERT and DELETE go through run_request: the
 * replay table (replay_int.h) answers a repeat of (carrier, peer, request
 * id) with the stored bytes, or BUSY while the first copy is still being
 * applied; a new write runs (run_sync) and its answer is stored unless it
 * is BUSY / UNAVAILABLE or there is none (quiver/handler.h, "Retried
 * writes").
 */
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include <json-c/json.h>

#include "quiver/alloc.h"
#include "quiver/config.h"
#include "quiver/errors.h"
#include "quiver/handler.h"
#include "quiver/node.h"
#include "quiver/proto.h"
#include "quiver/service.h"
#include "quiver/timeutil.h"
#include "replay_int.h"

#define SMALL_ANSWER 4096u          /* TCP answers of fixed size */
#define REPLAY_ENTRIES 65536u       /* defaults of the replay table */
#define REPLAY_BYTES (16u << 20)
#define REPLAY_TTL_MS 30000u
#define ERR_ANSWER (QV_PROTO_HDR_SIZE + 2 + QV_PROTO_MAX_REASON + 2 + 256 + 2 * 8 + \
                    QV_PROTO_TAG_SIZE + 64)

struct qv_handler {
    struct qv_handler_opts o;
    _Atomic(const struct qv_proto_key *) key;   /* o.key, then qv_handler_set_key */
    _Atomic(struct qv_tcp *) tcp;
    struct qv_replay *replay;       /* write answers (replay_int.h) */
    _Atomic uint64_t st_req, st_bad, st_drop, st_search, st_err, st_replayed, st_rbusy;
};

/* An answer being written. */
struct ans {
    uint8_t *buf;
    size_t cap;
    int64_t len;
    int tcp;                        /* buf is ours to allocate (TCP) */
    enum qv_proto_status status;    /* of the answer (ans_error sets it) */
};

/* One query of a search context. */
struct squery {
    struct qv_service_request req;
    struct sctx *ctx;
};

struct sctx {
    struct qv_handler *h;
    struct qv_proto_hdr hdr;
    int tcp;
    struct qv_udp_slot *slot;       /* UDP */
    struct qv_tcp_ref ref;          /* TCP */
    int batch;                      /* SEARCH_BATCH */
    int allocated;                  /* qv_free this context at the end */
    uint32_t nq, k;
    _Atomic uint32_t left;          /* queries not done + start_search's token */
    _Atomic int status;             /* an error (QV_E*), 0 */
    char filter[QV_PROTO_MAX_FILTER + 1];
    float *queries;                 /* copies (allocated contexts) */
    float *dist;                    /* nq x k */
    uint64_t *ids;                  /* nq x k */
    uint32_t *counts;               /* nq */
    uint8_t *rflags;                /* nq */
    struct squery *q;               /* nq */
};

/* The UDP slot's user area: a SEARCH context for one query of up to
 * QV_PROTO_UDP_MAX_K results. */
struct udp_area {
    /* the decoder's scratch (a misaligned vector is copied here): per
     * slot, so an in-place search context may point into it */
    _Alignas(8) uint8_t scratch[QV_PROTO_SCRATCH_UDP];
    struct sctx ctx;
    struct squery q;
    float dist[QV_PROTO_UDP_MAX_K];
    uint64_t ids[QV_PROTO_UDP_MAX_K];
    uint32_t count;
    uint8_t rflags;
};

size_t qv_handler_udp_user_size(void)
{
    return sizeof(struct udp_area);
}

static void st_inc(_Atomic uint64_t *c)
{
    atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
}

static enum qv_proto_status status_of(int rc)
{
    switch (rc) {
    case QV_ENOENT:
        return QV_PROTO_NOT_FOUND;
    case QV_EEXIST:
        return QV_PROTO_EXISTS;
    case QV_EINVAL:
    case QV_ERANGE:
    case QV_ENOSPC:
        return QV_PROTO_BAD_REQUEST;
    case QV_EBUSY:
        return QV_PROTO_BUSY;
    case QV_ETIMEDOUT:
        return QV_PROTO_TIMEOUT;
    case QV_EUNAVAIL:
        return QV_PROTO_UNAVAILABLE;
    default:
        return QV_PROTO_INTERNAL;
    }
}

/* ---- answers ---------------------------------------------------------------- */

/* TCP: a buffer of need bytes (+ the tag).  UDP: the slot's must do (an
 * encoder that finds it too small says so: ans_done). */
static int ans_room(struct ans *a, size_t need)
{
    need += QV_PROTO_TAG_SIZE;
    if (!a->tcp)
        return 0;
    if (a->buf && a->cap >= need)
        return 0;
    qv_free(a->buf);
    a->buf = qv_malloc(need, QV_MEM_SERVER);
    a->cap = a->buf ? need : 0;
    return a->buf ? 0 : QV_ENOMEM;
}

/* The key in force (NULL: no auth); it can change between two calls
 * (qv_handler_set_key), never under one. */
static const struct qv_proto_key *hkey(struct qv_handler *h)
{
    return atomic_load_explicit(&h->key, memory_order_acquire);
}

static void ans_sign(struct qv_handler *h, struct ans *a)
{
    const struct qv_proto_key *key = hkey(h);
    if (key && a->len > 0) {
        int64_t n = qv_proto_sign(a->buf, a->cap, (size_t)a->len, key);
        if (n > 0)
            a->len = n;
    }
}

static void ans_error(struct qv_handler *h, struct ans *a, const struct qv_proto_hdr *req,
                      enum qv_proto_status st, const char *reason)
{
    st_inc(&h->st_err);
    a->status = st;
    a->len = -1;
    if (ans_room(a, ERR_ANSWER) == 0)
        a->len = qv_proto_encode_error(a->buf, a->cap, req, st, reason);
    ans_sign(h, a);
}

/* Answer with the status of rc and the current error message. */
static void ans_fail(struct qv_handler *h, struct ans *a, const struct qv_proto_hdr *req, int rc)
{
    ans_error(h, a, req, status_of(rc), qv_errmsg());
}

/* Finish an encode: a length, or a too-small buffer (an answer that does
 * not fit a datagram), or an internal error. */
static void ans_done(struct qv_handler *h, struct ans *a, const struct qv_proto_hdr *req,
                     int64_t n)
{
    if (n >= 0) {
        a->len = n;
        ans_sign(h, a);
    } else if (n == QV_ENOSPC && !a->tcp) {
        ans_error(h, a, req, QV_PROTO_BAD_REQUEST,
                  "the answer does not fit a UDP datagram: send this request over TCP");
    } else {
        ans_error(h, a, req, QV_PROTO_INTERNAL, "could not encode the answer");
    }
}

/* ---- the synchronous opcodes -------------------------------------------------- */

static void fill_desc(const struct qv_node_coll_info *i, struct qv_proto_desc *d)
{
    memset(d, 0, sizeof *d);
    d->collection_id = i->id;
    d->dim = i->dim;
    d->metric = (uint8_t)i->metric;
    d->index = (uint8_t)i->index;
    d->nattrs = (uint16_t)i->nattrs;
    d->rows = i->rows;
    d->epoch = i->epoch;
    d->nlist = i->nlist;
    d->nprobe = i->nprobe;
    d->pq_m = (uint16_t)i->pq_m;
    d->pq_nbits = (uint8_t)i->pq_nbits;
    d->trained = (uint8_t)(i->trained != 0);
    d->hnsw_m = (uint16_t)i->hnsw_m;
    d->ef_construction = (uint16_t)i->ef_construction;
    d->ef_search = (uint16_t)i->ef_search;
    d->name = (struct qv_proto_str){ i->name, (uint32_t)strlen(i->name) };
    for (uint32_t a = 0; a < i->nattrs && a < QV_PROTO_MAX_ATTRS; a++)
        d->attrs[a] = (struct qv_proto_str){ i->attrs[a], (uint32_t)strlen(i->attrs[a]) };
}

static void op_create(struct qv_handler *h, const struct qv_proto_req *r, struct ans *a)
{
    const struct qv_proto_create *c = &r->u.create;
    char name[QV_PROTO_MAX_NAME + 1], attrs[QV_PROTO_MAX_ATTRS][QV_PROTO_MAX_NAME + 1];
    struct qv_node_coll_spec s = {
        .name = name, .dim = c->dim, .metric = (enum qv_metric)c->metric,
        .index = (enum qv_node_index)c->index, .nattrs = c->nattrs, .nlist = c->nlist,
        .nprobe = c->nprobe, .pq_m = c->pq_m, .pq_nbits = c->pq_nbits, .hnsw_m = c->hnsw_m,
        .ef_construction = c->ef_construction, .ef_search = c->ef_search,
    };
    snprintf(name, sizeof name, "%.*s", (int)c->name.len, c->name.s);
    for (uint32_t i = 0; i < c->nattrs; i++) {
        snprintf(attrs[i], sizeof attrs[i], "%.*s", (int)c->attrs[i].len, c->attrs[i].s);
        s.attrs[i] = attrs[i];
    }
    uint64_t id;
    int rc = qv_node_create_collection(h->o.node, &s, &id);
    if (rc) {
        ans_fail(h, a, &r->hdr, rc);
        return;
    }
    if (ans_room(a, SMALL_ANSWER))
        return ans_error(h, a, &r->hdr, QV_PROTO_INTERNAL, "no memory for the answer");
    ans_done(h, a, &r->hdr, qv_proto_encode_create_resp(a->buf, a->cap, &r->hdr, id));
}

static void op_describe(struct qv_handler *h, const struct qv_proto_req *r, struct ans *a)
{
    struct qv_node_coll_info info;
    struct qv_proto_desc d;
    int rc = qv_node_describe(h->o.node, r->hdr.collection_id, &info);
    if (rc)
        return ans_fail(h, a, &r->hdr, rc);
    fill_desc(&info, &d);
    if (ans_room(a, SMALL_ANSWER))
        return ans_error(h, a, &r->hdr, QV_PROTO_INTERNAL, "no memory for the answer");
    ans_done(h, a, &r->hdr, qv_proto_encode_describe_resp(a->buf, a->cap, &r->hdr, &d));
}

static void op_list(struct qv_handler *h, const struct qv_proto_req *r, struct ans *a)
{
    uint32_t n = 0, cap = QV_NODE_MAX_COLLECTIONS;
    struct qv_node_coll_info *info = qv_malloc(sizeof *info * 64, QV_MEM_SERVER);
    struct qv_proto_desc *d = NULL;
    int rc = info ? qv_node_list(h->o.node, info, 64, &n) : QV_ENOMEM;
    if (rc == 0 && n > 64) {            /* more than the first guess */
        cap = n;
        qv_free(info);
        info = qv_malloc(sizeof *info * cap, QV_MEM_SERVER);
        rc = info ? qv_node_list(h->o.node, info, cap, &n) : QV_ENOMEM;
        if (n > cap)
            n = cap;
    }
    if (rc == 0 && n && !(d = qv_malloc(sizeof *d * n, QV_MEM_SERVER)))
        rc = qv_seterr(QV_ENOMEM, "no memory to list %u collections", n);
    if (rc) {
        ans_fail(h, a, &r->hdr, rc);
    } else {
        for (uint32_t i = 0; i < n; i++)
            fill_desc(&info[i], &d[i]);
        /* a descriptor is at most ~1.2 KiB (names of 64 bytes) */
        if (ans_room(a, SMALL_ANSWER + (size_t)n * 1280))
            ans_error(h, a, &r->hdr, QV_PROTO_INTERNAL, "no memory for the answer");
        else
            ans_done(h, a, &r->hdr, qv_proto_encode_list_resp(a->buf, a->cap, &r->hdr, d, n));
    }
    qv_free(d);
    qv_free(info);
}

static void op_upsert(struct qv_handler *h, const struct qv_proto_req *r, struct ans *a)
{
    const struct qv_proto_upsert *u = &r->u.upsert;
    struct qv_node_rows rows = { .n = u->n, .dim = u->dim, .nattrs = u->nattrs, .ids = u->ids,
                                 .vectors = u->vectors };
    for (uint32_t i = 0; i < u->nattrs; i++)
        rows.attrs[i] = u->attrs[i];
    uint64_t epoch;
    int rc = qv_node_upsert(h->o.node, r->hdr.collection_id, &rows, &epoch);
    if (rc)
        return ans_fail(h, a, &r->hdr, rc);
    if (ans_room(a, SMALL_ANSWER))
        return ans_error(h, a, &r->hdr, QV_PROTO_INTERNAL, "no memory for the answer");
    ans_done(h, a, &r->hdr, qv_proto_encode_write_resp(a->buf, a->cap, &r->hdr, u->n, epoch));
}

static void op_delete(struct qv_handler *h, const struct qv_proto_req *r, struct ans *a)
{
    uint64_t epoch = 0;
    long n = qv_node_delete(h->o.node, r->hdr.collection_id, r->u.ids.n, r->u.ids.ids, &epoch);
    if (n < 0)
        return ans_fail(h, a, &r->hdr, (int)n);
    if (ans_room(a, SMALL_ANSWER))
        return ans_error(h, a, &r->hdr, QV_PROTO_INTERNAL, "no memory for the answer");
    ans_done(h, a, &r->hdr,
             qv_proto_encode_write_resp(a->buf, a->cap, &r->hdr, (uint32_t)n, epoch));
}

static void op_get(struct qv_handler *h, const struct qv_proto_req *r, struct ans *a)
{
    struct qv_node_coll_info info;
    int rc = qv_node_describe(h->o.node, r->hdr.collection_id, &info);
    if (rc)
        return ans_fail(h, a, &r->hdr, rc);
    uint32_t n = r->u.ids.n, dim = info.dim;
    uint64_t size = QV_PROTO_HDR_SIZE + qv_proto_get_resp_size(n, dim);
    if (size > QV_PROTO_HDR_SIZE + QV_PROTO_TCP_MAX_BODY)
        return ans_error(h, a, &r->hdr, QV_PROTO_BAD_REQUEST,
                         "GET: the answer would exceed the 64 MiB body limit; ask for fewer ids");
    float *vec = qv_malloc((size_t)n * dim * sizeof(float), QV_MEM_SERVER);
    uint8_t *found = qv_malloc(n, QV_MEM_SERVER);
    long got = vec && found ? qv_node_get(h->o.node, r->hdr.collection_id, n, r->u.ids.ids,
                                          dim, vec, found)
                            : qv_seterr(QV_ENOMEM, "GET: no memory for %u vectors", n);
    if (got < 0)
        ans_fail(h, a, &r->hdr, (int)got);
    else if (ans_room(a, (size_t)size))
        ans_error(h, a, &r->hdr, QV_PROTO_INTERNAL, "no memory for the answer");
    else
        ans_done(h, a, &r->hdr, qv_proto_encode_get_resp(a->buf, a->cap, &r->hdr, n, dim,
                                                         r->u.ids.ids, found, vec));
    qv_free(vec);
    qv_free(found);
}

static void op_stats(struct qv_handler *h, const struct qv_proto_req *r, struct ans *a)
{
    struct json_object *o = json_object_new_object();
    if (r->hdr.collection_id) {
        struct qv_node_coll_info i;
        int rc = qv_node_describe(h->o.node, r->hdr.collection_id, &i);
        if (rc) {
            json_object_put(o);
            return ans_fail(h, a, &r->hdr, rc);
        }
        json_object_object_add(o, "collection", json_object_new_string(i.name));
        json_object_object_add(o, "rows", json_object_new_int64((int64_t)i.rows));
        json_object_object_add(o, "epoch", json_object_new_int64((int64_t)i.epoch));
        json_object_object_add(o, "segments", json_object_new_int64(i.segments));
        json_object_object_add(o, "sealed", json_object_new_int64(i.sealed));
        json_object_object_add(o, "pending_builds", json_object_new_int64(i.pending));
        json_object_object_add(o, "growing_rows", json_object_new_int64((int64_t)i.growing_rows));
        json_object_object_add(o, "dead_rows", json_object_new_int64((int64_t)i.dead_rows));
        json_object_object_add(o, "trained", json_object_new_boolean(i.trained));
        struct qv_node_storage st;
        if (qv_node_storage(h->o.node, r->hdr.collection_id, &st) == 0 && st.enabled) {
            struct json_object *w = json_object_new_object();
            json_object_object_add(w, "sync", json_object_new_string(qv_wal_sync_name(st.sync)));
            json_object_object_add(w, "last_lsn", json_object_new_int64((int64_t)st.last_lsn));
            json_object_object_add(w, "durable_lsn",
                                   json_object_new_int64((int64_t)st.durable_lsn));
            json_object_object_add(w, "first_lsn", json_object_new_int64((int64_t)st.first_lsn));
            json_object_object_add(w, "segments", json_object_new_int64(st.segments));
            json_object_object_add(w, "bytes", json_object_new_int64((int64_t)st.bytes));
            json_object_object_add(w, "appends", json_object_new_int64((int64_t)st.appends));
            json_object_object_add(w, "fsyncs", json_object_new_int64((int64_t)st.fsyncs));
            json_object_object_add(w, "snapshot_lsn",
                                   json_object_new_int64((int64_t)st.snapshot_lsn));
            json_object_object_add(w, "segment_files",
                                   json_object_new_int64(st.segment_files));
            json_object_object_add(w, "segments_mapped",
                                   json_object_new_int64(st.segments_mapped));
            json_object_object_add(o, "wal", w);
        }
    } else {
        struct qv_service_stats s;
        struct qv_handler_stats hs;
        qv_service_stats(h->o.service, &s);
        qv_handler_stats(h, &hs);
        uint32_t n = 0;
        qv_node_list(h->o.node, NULL, 0, &n);
        json_object_object_add(o, "collections", json_object_new_int64(n));
        json_object_object_add(o, "uptime_ms",
                               json_object_new_int64((qv_now_ns() - h->o.started_ns) / 1000000));
        json_object_object_add(o, "requests", json_object_new_int64((int64_t)hs.requests));
        json_object_object_add(o, "malformed", json_object_new_int64((int64_t)hs.malformed));
        json_object_object_add(o, "searches", json_object_new_int64((int64_t)s.searched));
        json_object_object_add(o, "batches", json_object_new_int64((int64_t)s.batches));
        json_object_object_add(o, "cache_hits", json_object_new_int64((int64_t)s.result_hits));
        json_object_object_add(o, "cache_misses",
                               json_object_new_int64((int64_t)s.result_misses));
        json_object_object_add(o, "busy", json_object_new_int64(
            (int64_t)s.outcomes[QV_SERVICE_OUT_BUSY]));
        json_object_object_add(o, "timeouts", json_object_new_int64(
            (int64_t)s.outcomes[QV_SERVICE_OUT_TIMEOUT]));
    }
    size_t len;
    const char *js = json_object_to_json_string_length(o, JSON_C_TO_STRING_PLAIN, &len);
    if (ans_room(a, SMALL_ANSWER + len))
        ans_error(h, a, &r->hdr, QV_PROTO_INTERNAL, "no memory for the answer");
    else
        ans_done(h, a, &r->hdr, qv_proto_encode_stats_resp(a->buf, a->cap, &r->hdr, js, len));
    json_object_put(o);
}

static void run_sync(struct qv_handler *h, const struct qv_proto_req *r, struct ans *a)
{
    switch (r->hdr.opcode) {
    case QV_PROTO_OP_PING:
        if (ans_room(a, SMALL_ANSWER))
            return ans_error(h, a, &r->hdr, QV_PROTO_INTERNAL, "no memory for the answer");
        return ans_done(h, a, &r->hdr, qv_proto_encode_ping_resp(
            a->buf, a->cap, &r->hdr, (uint64_t)(qv_now_ns() - h->o.started_ns) / 1000000));
    case QV_PROTO_OP_STATS:
        return op_stats(h, r, a);
    case QV_PROTO_OP_CREATE:
        return op_create(h, r, a);
    case QV_PROTO_OP_DROP: {
        int rc = qv_node_drop_collection(h->o.node, r->hdr.collection_id);
        if (rc)
            return ans_fail(h, a, &r->hdr, rc);
        if (ans_room(a, SMALL_ANSWER))
            return ans_error(h, a, &r->hdr, QV_PROTO_INTERNAL, "no memory for the answer");
        return ans_done(h, a, &r->hdr, qv_proto_encode_empty_resp(a->buf, a->cap, &r->hdr));
    }
    case QV_PROTO_OP_LIST:
        return op_list(h, r, a);
    case QV_PROTO_OP_DESCRIBE:
        return op_describe(h, r, a);
    case QV_PROTO_OP_UPSERT:
        return op_upsert(h, r, a);
    case QV_PROTO_OP_DELETE:
        return op_delete(h, r, a);
    case QV_PROTO_OP_GET:
        return op_get(h, r, a);
    default:
        return ans_error(h, a, &r->hdr, QV_PROTO_BAD_REQUEST, "unknown opcode");
    }
}

/* ---- writes behind the replay table ---------------------------------------- */

static int is_write(unsigned op)
{
    return op == QV_PROTO_OP_CREATE || op == QV_PROTO_OP_DROP || op == QV_PROTO_OP_UPSERT ||
           op == QV_PROTO_OP_DELETE;
}

/* run_sync, with writes answered once per (carrier, peer, request id). */
static void run_request(struct qv_handler *h, const struct qv_proto_req *r, struct ans *a,
                        int carrier, const struct sockaddr_storage *peer, socklen_t peer_len)
{
    if (!is_write(r->hdr.opcode))
        return run_sync(h, r, a);
    struct qv_replay_key k;
    qv__replay_key(&k, carrier, peer, peer_len, r->hdr.request_id);
    if (ans_room(a, SMALL_ANSWER))
        return ans_error(h, a, &r->hdr, QV_PROTO_INTERNAL, "no memory for the answer");
    size_t len = 0;
    int v = qv__replay_begin(h->replay, &k, qv_now_ns(), a->buf, a->cap, &len);
    if (v == QV_REPLAY_HIT) {
        st_inc(&h->st_replayed);
        a->len = (int64_t)len;          /* as first sent: signed already */
        return;
    }
    if (v == QV_REPLAY_BUSY) {
        char why[160];
        st_inc(&h->st_rbusy);
        snprintf(why, sizeof why, "request id %llu: the first copy of this write is still "
                 "being applied; retry", (unsigned long long)r->hdr.request_id);
        return ans_error(h, a, &r->hdr, QV_PROTO_BUSY, why);
    }
    if (v != QV_REPLAY_NEW)
        return ans_fail(h, a, &r->hdr, v);
    a->status = QV_PROTO_OK;
    run_sync(h, r, a);
    int keep = a->len > 0 && a->status != QV_PROTO_BUSY && a->status != QV_PROTO_UNAVAILABLE;
    qv__replay_end(h->replay, &k, qv_now_ns(), a->buf, keep ? (size_t)a->len : 0, keep);
}

/* ---- searches ------------------------------------------------------------------ */

/* Encode the search answer of ctx into a. */
static void encode_search(struct sctx *c, struct ans *a)
{
    struct qv_handler *h = c->h;
    int st = atomic_load_explicit(&c->status, memory_order_acquire);
    if (st) {
        ans_error(h, a, &c->hdr, status_of(st), qv_strerror(st));
        return;
    }
    if (!c->batch) {
        uint64_t size = QV_PROTO_HDR_SIZE + qv_proto_search_resp_size(c->counts[0]);
        if (ans_room(a, (size_t)size))
            return ans_error(h, a, &c->hdr, QV_PROTO_INTERNAL, "no memory for the answer");
        ans_done(h, a, &c->hdr, qv_proto_encode_search_resp(a->buf, a->cap, &c->hdr,
                                                            c->counts[0], c->rflags[0], c->ids,
                                                            c->dist));
        return;
    }
    uint64_t size = QV_PROTO_HDR_SIZE + qv_proto_search_batch_resp_size(c->nq, c->k);
    if (ans_room(a, (size_t)size))
        return ans_error(h, a, &c->hdr, QV_PROTO_INTERNAL, "no memory for the answer");
    ans_done(h, a, &c->hdr, qv_proto_encode_search_batch_resp(a->buf, a->cap, &c->hdr, c->nq,
                                                              c->k, c->rflags, c->counts,
                                                              c->ids, c->dist));
}

/* The last query is done (not inline): answer through the transport. */
static void finish(struct sctx *c)
{
    struct ans a = { 0 };
    if (!c->tcp) {
        a.buf = c->slot->tx;
        a.cap = c->slot->tx_cap;
        encode_search(c, &a);
        c->slot->tx_len = a.len > 0 ? (uint32_t)a.len : 0;
        struct qv_udp_slot *slot = c->slot;
        int allocated = c->allocated;
        if (allocated)
            qv_free(c);
        qv_udp_complete(slot);
        return;
    }
    a.tcp = 1;
    encode_search(c, &a);
    struct qv_tcp *t = atomic_load_explicit(&c->h->tcp, memory_order_acquire);
    qv_tcp_reply(t, c->ref, a.len > 0 ? a.buf : NULL, a.len > 0 ? (uint32_t)a.len : 0);
    if (a.len <= 0)
        qv_free(a.buf);
    qv_free(c);
}

/* One query's result counts, then the countdown. */
static void query_done(struct qv_service_request *req, void *arg)
{
    struct squery *q = arg;
    struct sctx *c = q->ctx;
    uint32_t i = (uint32_t)(q - c->q);
    if (req->status)
        atomic_store_explicit(&c->status, req->status, memory_order_release);
    uint32_t n = 0;
    while (n < c->k && c->ids[(size_t)i * c->k + n] != QV_PROTO_ID_NONE)
        n++;
    c->counts[i] = n;
    c->rflags[i] = (uint8_t)(((req->flags & QV_SERVICE_CACHED) ? QV_PROTO_RF_CACHED : 0) |
                             ((req->flags & QV_SERVICE_APPROXIMATE) ? QV_PROTO_RF_APPROX : 0));
    if (atomic_fetch_sub_explicit(&c->left, 1, memory_order_acq_rel) == 1)
        finish(c);                  /* the last, after start_search's token */
}

/* A search context: the UDP slot's area for one query, else allocated. */
static struct sctx *sctx_new(struct qv_handler *h, const struct qv_proto_req *r, int tcp,
                             struct qv_udp_slot *slot)
{
    const struct qv_proto_search *s = &r->u.search;
    uint32_t nq = s->nq, k = s->k, dim = s->dim;
    struct sctx *c;
    const char *rx = tcp ? NULL : slot->rx;
    struct udp_area *u = tcp ? NULL : slot->user;
    const char *qp = (const char *)s->queries;
    if (!tcp && nq == 1 && k <= QV_PROTO_UDP_MAX_K &&
        ((qp >= rx && qp < rx + slot->rx_len) ||
         (qp >= (const char *)u->scratch && qp < (const char *)u->scratch + sizeof u->scratch))) {
        memset(&u->ctx, 0, sizeof u->ctx);
        c = &u->ctx;
        c->q = &u->q;
        c->dist = u->dist;
        c->ids = u->ids;
        c->counts = &u->count;
        c->rflags = &u->rflags;
        c->queries = (float *)s->queries;       /* in place: the slot lives on */
    } else {
        size_t off = (sizeof *c + 63) & ~(size_t)63;
        size_t bq = (size_t)nq * sizeof(struct squery), bd = (size_t)nq * k * sizeof(float),
               bi = (size_t)nq * k * sizeof(uint64_t), bv = (size_t)nq * dim * sizeof(float);
        char *m = qv_malloc(off + bq + bd + bi + bv + nq * 5 + 64, QV_MEM_SERVER);
        if (!m)
            return NULL;
        c = (struct sctx *)m;
        memset(c, 0, sizeof *c);
        c->allocated = 1;
        c->q = (struct squery *)(m + off);
        c->ids = (uint64_t *)(m + off + bq);
        c->dist = (float *)(m + off + bq + bi);
        c->queries = (float *)(m + off + bq + bi + bd);
        c->counts = (uint32_t *)(m + off + bq + bi + bd + bv);
        c->rflags = (uint8_t *)(c->counts + nq);
        memcpy(c->queries, s->queries, bv);
    }
    c->h = h;
    c->hdr = r->hdr;
    c->tcp = tcp;
    c->slot = slot;
    c->batch = r->hdr.opcode == QV_PROTO_OP_SEARCH_BATCH;
    c->nq = nq;
    c->k = k;
    snprintf(c->filter, sizeof c->filter, "%.*s", (int)s->filter.len, s->filter.s ? s->filter.s : "");
    return c;
}

/* Start the queries of a search.  Returns 1 when the answer will come
 * through the transport (async), 0 when it is in a already. */
static int start_search(struct qv_handler *h, const struct qv_proto_req *r, struct ans *a,
                        int tcp, struct qv_udp_slot *slot, struct qv_tcp_ref ref,
                        int64_t arrival)
{
    const struct qv_proto_search *s = &r->u.search;
    struct qv_node_search_args sa = { .dim = s->dim, .k = s->k, .nprobe = s->nprobe,
                                      .ef = s->ef };
    struct qv_service_request proto;
    memset(&proto, 0, sizeof proto);
    char filter[QV_PROTO_MAX_FILTER + 1];
    snprintf(filter, sizeof filter, "%.*s", (int)s->filter.len, s->filter.s ? s->filter.s : "");
    sa.filter_text = filter[0] ? filter : NULL;
    int rc = qv_node_search_prepare(h->o.node, r->hdr.collection_id, &sa, &proto);
    if (rc) {
        ans_fail(h, a, &r->hdr, rc);
        return 0;
    }
    if (!tcp && !slot->async_ok) {
        ans_error(h, a, &r->hdr, QV_PROTO_BUSY, "the node's receive slots are full; retry");
        return 0;
    }
    struct sctx *c = sctx_new(h, r, tcp, slot);
    if (!c) {
        ans_error(h, a, &r->hdr, QV_PROTO_INTERNAL, "no memory for the search");
        return 0;
    }
    c->ref = ref;
    atomic_store_explicit(&c->left, c->nq + 1, memory_order_relaxed);
    int64_t deadline = s->deadline_us ? arrival + (int64_t)s->deadline_us * 1000 : 0;
    for (uint32_t i = 0; i < c->nq; i++) {
        struct squery *q = &c->q[i];
        q->ctx = c;
        q->req = proto;
        q->req.filter_text = proto.filter_text ? c->filter : NULL;
        q->req.query = c->queries + (size_t)i * s->dim;
        q->req.dist = c->dist + (size_t)i * c->k;
        q->req.ids = c->ids + (size_t)i * c->k;
        for (uint32_t j = 0; j < c->k; j++)
            q->req.ids[j] = QV_PROTO_ID_NONE;
        q->req.cls = s->qclass == QV_PROTO_CLASS_BULK ? QV_BATCH_BULK : QV_BATCH_INTERACTIVE;
        q->req.arrival = arrival;
        q->req.deadline = deadline;
        q->req.semantic_threshold = (s->sflags & QV_PROTO_SF_SEMANTIC) ? s->semantic : 0.0f;
        q->req.done = query_done;
        q->req.done_arg = q;
        st_inc(&h->st_search);
        if (qv_service_submit(h->o.service, &q->req) != 0) {
            /* refused: this query is done with the refusal's status */
            q->req.status = q->req.status ? q->req.status : QV_EUNAVAIL;
            query_done(&q->req, q);
        }
    }
    if (atomic_fetch_sub_explicit(&c->left, 1, memory_order_acq_rel) == 1) {
        /* every query was done inside submit: answer here */
        encode_search(c, a);
        if (c->allocated)
            qv_free(c);
        return 0;
    }
    return 1;
}

/* ---- the transports ------------------------------------------------------------ */

static int is_search(unsigned op)
{
    return op == QV_PROTO_OP_SEARCH || op == QV_PROTO_OP_SEARCH_BATCH;
}

static enum qv_udp_verdict on_datagram(void *arg, struct qv_udp_slot *slot)
{
    struct qv_handler *h = arg;
    struct qv_proto_req r;
    struct qv_proto_err err;
    struct ans a = { .buf = slot->tx, .cap = slot->tx_cap, .len = -1 };
    slot->tx_len = 0;
    if (slot->truncated) {
        /* the header is there: answer if it is ours at all */
        if (qv_proto_parse_hdr(slot->rx, slot->rx_len, QV_PROTO_TCP, &r.hdr, &err) != 0 &&
            err.drop) {
            st_inc(&h->st_drop);
            return QV_UDP_DROP;
        }
        st_inc(&h->st_bad);
        ans_error(h, &a, &r.hdr, QV_PROTO_BAD_REQUEST,
                  "datagram over 1472 bytes: send this request over TCP");
        slot->tx_len = a.len > 0 ? (uint32_t)a.len : 0;
        return a.len > 0 ? QV_UDP_REPLY : QV_UDP_DROP;
    }
    struct qv_proto_rx rx = { .carrier = QV_PROTO_UDP, .key = hkey(h),
                              .scratch = ((struct udp_area *)slot->user)->scratch,
                              .scratch_cap = QV_PROTO_SCRATCH_UDP };
    if (qv_proto_decode_request(slot->rx, slot->rx_len, &rx, &r, &err) != 0) {
        if (err.drop) {
            st_inc(&h->st_drop);
            return QV_UDP_DROP;
        }
        st_inc(&h->st_bad);
        a.len = qv_proto_encode_err(a.buf, a.cap, &r.hdr, &err);
        ans_sign(h, &a);
        slot->tx_len = a.len > 0 ? (uint32_t)a.len : 0;
        return a.len > 0 ? QV_UDP_REPLY : QV_UDP_DROP;
    }
    st_inc(&h->st_req);
    if (is_search(r.hdr.opcode)) {
        struct qv_tcp_ref none = { 0, 0, 0 };
        if (start_search(h, &r, &a, 0, slot, none, slot->rx_ns))
            return QV_UDP_ASYNC;
    } else {
        run_request(h, &r, &a, QV_PROTO_UDP, &slot->peer, slot->peer_len);
    }
    slot->tx_len = a.len > 0 ? (uint32_t)a.len : 0;
    return a.len > 0 ? QV_UDP_REPLY : QV_UDP_DROP;
}

static int tcp_frame(void *arg, const void *buf, size_t have, size_t *need)
{
    (void)arg;
    *need = qv_proto_tcp_need(buf, have);
    return 0;
}

static enum qv_tcp_verdict on_message(void *arg, struct qv_tcp_msg *m)
{
    struct qv_handler *h = arg;
    struct qv_proto_req r;
    struct qv_proto_err err;
    struct ans a = { .tcp = 1, .len = -1 };
    void *scratch = NULL;
    size_t scap = 0;
    enum qv_tcp_verdict v = QV_TCP_REPLY;

    if (qv_proto_parse_hdr(m->data, m->len, QV_PROTO_TCP, &r.hdr, &err) == 0) {
        scap = qv_proto_scratch_need(&r.hdr, m->data);
        if (scap && !(scratch = qv_malloc(scap, QV_MEM_SERVER)))
            scap = 0;                   /* decode reports INTERNAL */
    }
    struct qv_proto_rx rx = { .carrier = QV_PROTO_TCP, .key = hkey(h), .scratch = scratch,
                              .scratch_cap = scap };
    if (qv_proto_decode_request(m->data, m->len, &rx, &r, &err) != 0) {
        qv_free(scratch);
        if (err.drop && !err.close) {
            st_inc(&h->st_drop);
            return QV_TCP_NONE;
        }
        if (err.drop) {
            st_inc(&h->st_drop);
            return QV_TCP_CLOSE;
        }
        st_inc(&h->st_bad);
        if (ans_room(&a, ERR_ANSWER) == 0) {
            a.len = qv_proto_encode_err(a.buf, a.cap, &r.hdr, &err);
            ans_sign(h, &a);
        }
        v = err.close ? QV_TCP_CLOSE : QV_TCP_REPLY;
    } else {
        st_inc(&h->st_req);
        if (is_search(r.hdr.opcode)) {
            if (!atomic_load_explicit(&h->tcp, memory_order_acquire)) {
                ans_error(h, &a, &r.hdr, QV_PROTO_UNAVAILABLE, "the node is starting");
            } else if (start_search(h, &r, &a, 1, NULL, m->ref, m->rx_ns)) {
                qv_free(scratch);
                qv_free(a.buf);
                return QV_TCP_ASYNC;
            }
        } else {
            run_request(h, &r, &a, QV_PROTO_TCP, m->peer, m->peer_len);
        }
        qv_free(scratch);
    }
    if (a.len > 0) {
        m->resp = a.buf;
        m->resp_len = (uint32_t)a.len;
    } else {
        qv_free(a.buf);
    }
    return v;
}

/* ---- life cycle ------------------------------------------------------------------ */

int qv_handler_opts_from_config(const struct qv_config *cfg, struct qv_handler_opts *o)
{
    o->replay_entries = (uint64_t)qv_config_int(cfg, "server", "replay_entries");
    o->replay_bytes = (uint64_t)qv_config_size(cfg, "server", "replay_bytes");
    o->replay_ttl_ms = (uint64_t)qv_config_int(cfg, "server", "replay_ttl_ms");
    return 0;
}

struct qv_handler *qv_handler_create(const struct qv_handler_opts *o)
{
    if (!o || !o->node || !o->service) {
        qv_seterr(QV_EINVAL, "handler: a node and a service are required");
        return NULL;
    }
    struct qv_handler *h = qv_calloc(1, sizeof *h, QV_MEM_SERVER);
    if (!h) {
        qv_seterr(QV_ENOMEM, "handler: no memory");
        return NULL;
    }
    h->o = *o;
    atomic_init(&h->key, o->key);
    if (!h->o.started_ns)
        h->o.started_ns = qv_now_ns();
    h->replay = qv__replay_create(o->replay_entries ? o->replay_entries : REPLAY_ENTRIES,
                                  o->replay_bytes ? o->replay_bytes : REPLAY_BYTES,
                                  o->replay_ttl_ms ? o->replay_ttl_ms : REPLAY_TTL_MS);
    if (!h->replay) {
        /* name the handler's field, not the table's */
        int code = qv_errno;
        char msg[256];
        snprintf(msg, sizeof msg, "%s", qv_errmsg());
        qv_free(h);
        if (code == QV_EINVAL && strncmp(msg, "replay: ", 8) == 0)
            qv_seterr(code, "handler: replay_%s", msg + 8);
        else
            qv_seterr(code, "handler: %s", msg);
        return NULL;
    }
    return h;
}

void qv_handler_set_key(struct qv_handler *h, const struct qv_proto_key *key)
{
    atomic_store_explicit(&h->key, key, memory_order_release);
}

void qv_handler_free(struct qv_handler *h)
{
    if (!h)
        return;
    qv__replay_free(h->replay);
    qv_free(h);
}

struct qv_udp_handler qv_handler_udp(struct qv_handler *h)
{
    return (struct qv_udp_handler){ .on_datagram = on_datagram, .arg = h };
}

struct qv_tcp_handler qv_handler_tcp(struct qv_handler *h)
{
    return (struct qv_tcp_handler){ .frame = tcp_frame, .on_message = on_message, .arg = h };
}

void qv_handler_set_tcp(struct qv_handler *h, struct qv_tcp *t)
{
    atomic_store_explicit(&h->tcp, t, memory_order_release);
}

void qv_handler_stats(const struct qv_handler *h, struct qv_handler_stats *out)
{
    out->requests = atomic_load_explicit(&h->st_req, memory_order_relaxed);
    out->malformed = atomic_load_explicit(&h->st_bad, memory_order_relaxed);
    out->dropped = atomic_load_explicit(&h->st_drop, memory_order_relaxed);
    out->searches = atomic_load_explicit(&h->st_search, memory_order_relaxed);
    out->errors = atomic_load_explicit(&h->st_err, memory_order_relaxed);
    out->replayed = atomic_load_explicit(&h->st_replayed, memory_order_relaxed);
    out->replay_busy = atomic_load_explicit(&h->st_rbusy, memory_order_relaxed);
    struct qv_replay_stats rs;
    qv__replay_stats(h->replay, &rs);
    out->replay_entries = rs.entries;
}
