/*
 * proto.c - the protocol codec's header, framing and receive paths, error
 * bodies and names.  The design (layouts, validation order, decisions) is
 * described in proto_int.h; the contract in quiver/proto.h.
 */
#include <stdio.h>

#include "proto_int.h"

#include "quiver/dist.h"
#include "quiver/filter.h"

_Static_assert(QV_PROTO_MAX_ATTRS == QV_FILTER_MAX_ATTRS, "attribute limits agree");
_Static_assert(QV_PROTO_METRIC_L2 == (int)QV_METRIC_L2 &&
               QV_PROTO_METRIC_IP == (int)QV_METRIC_IP &&
               QV_PROTO_METRIC_COSINE == (int)QV_METRIC_COSINE, "metric codes agree");
/* A UDP datagram holds at most (1472 - 32 - 16) / 12 UPSERT vectors of dim 1:
 * a misaligned copy plus that many ids' sort fit QV_PROTO_SCRATCH_UDP. */
_Static_assert(QV_PROTO_UDP_MAX + 7 + 16 * ((QV_PROTO_UDP_MAX - 32 - 16) / 12) + 7
               <= QV_PROTO_SCRATCH_UDP, "QV_PROTO_SCRATCH_UDP covers any datagram");

#define BAD QV_PROTO_BAD_REQUEST

/* ---- errors and names ---------------------------------------------------- */

static int vfail(struct qv_proto_err *err, int code, uint16_t status, const char *fmt,
                 va_list ap)
{
    if (!err)
        return code;
    err->status = status;
    err->drop = 0;
    err->close = 0;
    int n = vsnprintf(err->reason, sizeof err->reason, fmt, ap);
    if (n < 0)
        n = 0;
    err->reason_len = (uint16_t)(n > QV_PROTO_MAX_REASON ? QV_PROTO_MAX_REASON : n);
    return code;
}

int qv__proto_fail(struct qv_proto_err *err, uint16_t status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = vfail(err, QV_EINVAL, status, fmt, ap);
    va_end(ap);
    return rc;
}

int qv__proto_failc(struct qv_proto_err *err, int code, uint16_t status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = vfail(err, code, status, fmt, ap);
    va_end(ap);
    return rc;
}

const char *qv_proto_opcode_name(unsigned opcode)
{
    switch (opcode) {
    case QV_PROTO_OP_PING: return "PING";
    case QV_PROTO_OP_STATS: return "STATS";
    case QV_PROTO_OP_CREATE: return "CREATE";
    case QV_PROTO_OP_DROP: return "DROP";
    case QV_PROTO_OP_LIST: return "LIST";
    case QV_PROTO_OP_DESCRIBE: return "DESCRIBE";
    case QV_PROTO_OP_UPSERT: return "UPSERT";
    case QV_PROTO_OP_DELETE: return "DELETE";
    case QV_PROTO_OP_GET: return "GET";
    case QV_PROTO_OP_SEARCH: return "SEARCH";
    case QV_PROTO_OP_SEARCH_BATCH: return "SEARCH_BATCH";
    default: return "unknown";
    }
}

const char *qv_proto_status_name(unsigned status)
{
    static const char *names[] = { "OK", "BAD_REQUEST", "NOT_FOUND", "BUSY", "TIMEOUT",
                                   "UNAVAILABLE", "UNAUTHORIZED", "NOT_PRIMARY", "EXISTS",
                                   "INTERNAL" };
    return status < QV_PROTO_STATUS__COUNT ? names[status] : "unknown";
}

/* ---- header -------------------------------------------------------------- */

static int known_opcode(unsigned op)
{
    return strcmp(qv_proto_opcode_name(op), "unknown") != 0;
}

static int has_arrays(unsigned op)
{
    return op == QV_PROTO_OP_SEARCH || op == QV_PROTO_OP_SEARCH_BATCH ||
           op == QV_PROTO_OP_UPSERT || op == QV_PROTO_OP_DELETE || op == QV_PROTO_OP_GET;
}

/* 1: the opcode names no collection (collection_id 0); 0: it names one;
 * -1: either (STATS). */
static int node_level(unsigned op)
{
    if (op == QV_PROTO_OP_PING || op == QV_PROTO_OP_CREATE || op == QV_PROTO_OP_LIST)
        return 1;
    return op == QV_PROTO_OP_STATS ? -1 : 0;
}

static void read_hdr(const uint8_t *b, struct qv_proto_hdr *h)
{
    h->magic = qv__ld16(b + QV__H_MAGIC);
    h->version = b[QV__H_VERSION];
    h->opcode = b[QV__H_OPCODE];
    h->flags = qv__ld16(b + QV__H_FLAGS);
    h->status = qv__ld16(b + QV__H_STATUS);
    h->request_id = qv__ld64(b + QV__H_REQID);
    h->collection_id = qv__ld64(b + QV__H_COLL);
    h->body_len = qv__ld32(b + QV__H_BODYLEN);
    h->reserved = qv__ld32(b + QV__H_RESERVED);
    h->msg_len = QV_PROTO_HDR_SIZE + (size_t)h->body_len +
                 ((h->flags & QV_PROTO_F_AUTH) ? QV_PROTO_TAG_SIZE : 0);
}

static int parse_hdr(const void *buf, size_t len, enum qv_proto_carrier carrier, int response,
                     struct qv_proto_hdr *h, struct qv_proto_err *err)
{
    const int tcp = carrier == QV_PROTO_TCP;
    int rc;
    memset(h, 0, sizeof *h);
    if (!buf || len < QV_PROTO_HDR_SIZE) {
        rc = qv__proto_fail(err, BAD, "header: %zu bytes: a message starts "
                            "with a 32-byte header", buf ? len : (size_t)0);
        err->drop = 1;
        err->close = (uint8_t)tcp;
        return rc;
    }
    read_hdr(buf, h);
    if (h->magic != QV_PROTO_MAGIC) {
        rc = qv__proto_fail(err, BAD, "header: magic = 0x%04x: expected "
                            "0x%04x ('Q' 'V')", h->magic, QV_PROTO_MAGIC);
        err->drop = (uint8_t)(!tcp || response);
        err->close = (uint8_t)tcp;
        return rc;
    }
    if (h->version != QV_PROTO_VERSION) {
        rc = qv__proto_fail(err, BAD, "header: version = %u: only version "
                            "%d is spoken here", h->version, QV_PROTO_VERSION);
        goto framing;
    }
    if (h->reserved != 0)
        return qv__proto_fail(err, BAD, "header: reserved = 0x%08x: must "
                              "be 0", h->reserved);
    if (h->flags & ~QV_PROTO_F__KNOWN)
        return qv__proto_fail(err, BAD, "header: flags = 0x%04x: unknown "
                              "bits 0x%04x must be 0 (RESPONSE 0x1, AUTH 0x2, RETRY 0x4)",
                              h->flags, h->flags & ~QV_PROTO_F__KNOWN);
    if (!response && (h->flags & QV_PROTO_F_RESPONSE)) {
        /* Never answer a response: two servers would answer each other's
         * answers for ever. */
        rc = qv__proto_fail(err, BAD, "header: flags = 0x%04x: RESPONSE "
                            "(0x1) is set on a request", h->flags);
        err->drop = 1;
        return rc;
    }
    if (response && !(h->flags & QV_PROTO_F_RESPONSE))
        return qv__proto_fail(err, BAD, "header: flags = 0x%04x: RESPONSE "
                              "(0x1) is not set on a response", h->flags);
    if (!known_opcode(h->opcode))
        return qv__proto_fail(err, BAD, "header: opcode = 0x%02x: unknown; "
                              "use 0x01-0x02, 0x10-0x13, 0x20-0x22 or 0x30-0x31", h->opcode);
    if (tcp) {
        if (h->body_len > QV_PROTO_TCP_MAX_BODY) {
            rc = qv__proto_fail(err, BAD, "header: body_len = %u: a TCP "
                                "message body is at most %u bytes (64 MiB)", h->body_len,
                                QV_PROTO_TCP_MAX_BODY);
            goto framing;
        }
    } else {
        if (h->msg_len != len)
            return qv__proto_fail(err, BAD, "header: body_len = %u: makes "
                                  "a %zu-byte message (32 + body_len%s), the datagram has "
                                  "%zu bytes", h->body_len, h->msg_len,
                                  (h->flags & QV_PROTO_F_AUTH) ? " + 32 tag" : "", len);
        if (len > QV_PROTO_UDP_MAX)
            return qv__proto_fail(err, BAD, "header: body_len = %u: the "
                                  "datagram is %zu bytes, UDP carries at most %d: use TCP",
                                  h->body_len, len, QV_PROTO_UDP_MAX);
    }
    if (!response && h->status != 0)
        return qv__proto_fail(err, BAD, "header: status = %u: must be 0 in "
                              "a request", h->status);
    if (response && h->status >= QV_PROTO_STATUS__COUNT)
        return qv__proto_fail(err, BAD, "header: status = %u: unknown; "
                              "use 0..%d", h->status, QV_PROTO_STATUS__COUNT - 1);
    if (h->request_id == 0)
        return qv__proto_fail(err, BAD, "header: request_id = 0: use a "
                              "non-zero id");
    if (!response) {
        int nl = node_level(h->opcode);
        if (nl == 1 && h->collection_id != 0)
            return qv__proto_fail(err, BAD, "header: collection_id = %llu: "
                                  "%s is node-level: use 0",
                                  (unsigned long long)h->collection_id,
                                  qv_proto_opcode_name(h->opcode));
        if (nl == 0 && h->collection_id == 0)
            return qv__proto_fail(err, BAD, "header: collection_id = 0: %s "
                                  "needs the collection's id (from CREATE or LIST)",
                                  qv_proto_opcode_name(h->opcode));
    }
    return 0;

framing:
    /* TCP: the stream's framing is lost; close after the answer. */
    err->close = (uint8_t)tcp;
    err->drop = (uint8_t)response;
    return rc;
}

int qv_proto_parse_hdr(const void *buf, size_t len, enum qv_proto_carrier carrier,
                       struct qv_proto_hdr *hdr, struct qv_proto_err *err)
{
    if (!hdr || !err)
        return QV_EINVAL;
    return parse_hdr(buf, len, carrier, 0, hdr, err);
}

int qv_proto_parse_resp_hdr(const void *buf, size_t len, enum qv_proto_carrier carrier,
                            struct qv_proto_hdr *hdr, struct qv_proto_err *err)
{
    if (!hdr || !err)
        return QV_EINVAL;
    int rc = parse_hdr(buf, len, carrier, 1, hdr, err);
    if (rc < 0)
        err->drop = 1;
    return rc;
}

size_t qv_proto_tcp_need(const void *buf, size_t len)
{
    if (!buf || len < QV_PROTO_HDR_SIZE)
        return QV_PROTO_HDR_SIZE;
    const uint8_t *b = buf;
    uint32_t body_len = qv__ld32(b + QV__H_BODYLEN);
    if (qv__ld16(b + QV__H_MAGIC) != QV_PROTO_MAGIC || b[QV__H_VERSION] != QV_PROTO_VERSION ||
        body_len > QV_PROTO_TCP_MAX_BODY)
        return QV_PROTO_HDR_SIZE;
    return QV_PROTO_HDR_SIZE + (size_t)body_len +
           ((qv__ld16(b + QV__H_FLAGS) & QV_PROTO_F_AUTH) ? QV_PROTO_TAG_SIZE : 0);
}

void qv_proto_set_retry(void *msg)
{
    uint8_t *b = msg;
    qv__st16(b + QV__H_FLAGS, (uint16_t)(qv__ld16(b + QV__H_FLAGS) | QV_PROTO_F_RETRY));
}

void qv__proto_put_hdr(uint8_t *buf, uint8_t opcode, uint16_t flags, uint16_t status,
                       uint64_t request_id, uint64_t collection_id, uint32_t body_len)
{
    qv__st16(buf + QV__H_MAGIC, QV_PROTO_MAGIC);
    buf[QV__H_VERSION] = QV_PROTO_VERSION;
    buf[QV__H_OPCODE] = opcode;
    qv__st16(buf + QV__H_FLAGS, flags);
    qv__st16(buf + QV__H_STATUS, status);
    qv__st64(buf + QV__H_REQID, request_id);
    qv__st64(buf + QV__H_COLL, collection_id);
    qv__st32(buf + QV__H_BODYLEN, body_len);
    qv__st32(buf + QV__H_RESERVED, 0);
}

int qv__proto_resp_start(uint8_t *buf, size_t cap, const struct qv_proto_hdr *req,
                         uint16_t status, uint64_t body_len)
{
    if (!buf || !req || body_len > QV_PROTO_TCP_MAX_BODY)
        return QV_EINVAL;
    if (cap < QV_PROTO_HDR_SIZE + body_len)
        return QV_ENOSPC;
    qv__proto_put_hdr(buf, req->opcode, QV_PROTO_F_RESPONSE, status, req->request_id,
                      req->collection_id, (uint32_t)body_len);
    return 0;
}

/* ---- receive paths ------------------------------------------------------- */

size_t qv_proto_scratch_need(const struct qv_proto_hdr *hdr, const void *msg)
{
    size_t need = 0;
    if (!hdr || !msg)
        return 0;
    if (!qv__aligned8(msg) && has_arrays(hdr->opcode))
        need += hdr->msg_len + 7;
    if (hdr->opcode == QV_PROTO_OP_UPSERT && hdr->body_len >= 4) {
        uint32_t n = qv__ld32((const uint8_t *)msg + QV_PROTO_HDR_SIZE);
        if (n <= QV_PROTO_MAX_UPSERT)
            need += 16 * (size_t)n + 7;
    }
    return need;
}

/* TCP: the whole message must be in len (the stream ended inside it). */
static int check_complete(const struct qv_proto_hdr *h, size_t len, struct qv_proto_err *err)
{
    if (len >= h->msg_len)
        return 0;
    int rc = qv__proto_fail(err, BAD, "body: the stream ended %zu bytes "
                            "into a %zu-byte %s message (body_len = %u)", len, h->msg_len,
                            qv_proto_opcode_name(h->opcode), h->body_len);
    err->close = 1;
    return rc;
}

int qv_proto_decode_request(const void *msg, size_t len, const struct qv_proto_rx *rx,
                            struct qv_proto_req *req, struct qv_proto_err *err)
{
    if (!req || !err)
        return QV_EINVAL;
    if (!rx) {
        memset(&req->hdr, 0, sizeof req->hdr);
        return qv__proto_fail(err, QV_PROTO_INTERNAL, "decode: no receive context");
    }
    struct qv_proto_hdr *h = &req->hdr;
    int rc = qv_proto_parse_hdr(msg, len, rx->carrier, h, err);
    if (rc < 0)
        return rc;
    if ((rc = check_complete(h, len, err)) < 0)
        return rc;
    if ((rc = qv_proto_check_auth(h, msg, rx->key, err)) < 0)
        return rc;

    const uint8_t *m = msg;
    uint8_t *scratch = rx->scratch;
    size_t cap = rx->scratch ? rx->scratch_cap : 0;
    if (!qv__aligned8(m) && has_arrays(h->opcode)) {
        size_t pad = (size_t)(-(uintptr_t)scratch & 7);
        size_t need = pad + h->msg_len;
        if (cap < need)
            return qv__proto_failc(err, QV_ENOSPC, QV_PROTO_INTERNAL, "decode: a %zu-byte %s "
                                   "message at a misaligned address needs %zu bytes of "
                                   "scratch for an aligned copy, %zu given: receive into an "
                                   "8-byte aligned buffer or give more scratch", h->msg_len,
                                   qv_proto_opcode_name(h->opcode), need, cap);
        memcpy(scratch + pad, m, h->msg_len);
        m = scratch + pad;
        scratch += need;
        cap -= need;
    }
    switch (h->opcode) {
    case QV_PROTO_OP_CREATE:
        return qv_proto_decode_create(h, m, &req->u.create, err);
    case QV_PROTO_OP_SEARCH:
    case QV_PROTO_OP_SEARCH_BATCH:
        return qv_proto_decode_search(h, m, rx->carrier, &req->u.search, err);
    case QV_PROTO_OP_UPSERT:
        return qv_proto_decode_upsert(h, m, scratch, cap, &req->u.upsert, err);
    case QV_PROTO_OP_DELETE:
    case QV_PROTO_OP_GET:
        return qv_proto_decode_ids(h, m, &req->u.ids, err);
    default:
        return qv_proto_decode_empty(h, m, err);
    }
}

int qv_proto_decode_response(const void *msg, size_t len, enum qv_proto_carrier carrier,
                             const struct qv_proto_key *k, struct qv_proto_resp *resp,
                             struct qv_proto_err *err)
{
    if (!resp || !err)
        return QV_EINVAL;
    struct qv_proto_hdr *h = &resp->hdr;
    int rc = qv_proto_parse_resp_hdr(msg, len, carrier, h, err);
    if (rc < 0)
        return rc;
    if ((rc = check_complete(h, len, err)) < 0)
        goto out;
    if (k) {
        if (!(h->flags & QV_PROTO_F_AUTH)) {
            rc = qv__proto_fail(err, QV_PROTO_UNAUTHORIZED, "AUTH: the %s response carries "
                                "no tag and this client has a key",
                                qv_proto_opcode_name(h->opcode));
            goto out;
        }
        if (qv_proto_verify(msg, h->msg_len, k) < 0) {
            rc = qv__proto_fail(err, QV_PROTO_UNAUTHORIZED, "AUTH: the %s response's tag "
                                "does not match: check the key",
                                qv_proto_opcode_name(h->opcode));
            goto out;
        }
    }
    if (h->status != QV_PROTO_OK) {
        rc = qv_proto_decode_error_resp(h, msg, &resp->u.error, err);
        goto out;
    }
    switch (h->opcode) {
    case QV_PROTO_OP_PING:
        rc = qv_proto_decode_ping_resp(h, msg, &resp->u.ping, err);
        break;
    case QV_PROTO_OP_STATS:
        rc = qv_proto_decode_stats_resp(h, msg, &resp->u.stats, err);
        break;
    case QV_PROTO_OP_CREATE:
        rc = qv_proto_decode_create_resp(h, msg, &resp->u.collection_id, err);
        break;
    case QV_PROTO_OP_DROP:
        rc = h->body_len == 0 ? 0 :
             qv__proto_fail(err, BAD, "DROP response: body_len = %u: the "
                            "body is empty", h->body_len);
        break;
    case QV_PROTO_OP_LIST:
        rc = qv_proto_decode_list_resp(h, msg, &resp->u.list, err);
        break;
    case QV_PROTO_OP_DESCRIBE:
        rc = qv_proto_decode_describe_resp(h, msg, &resp->u.desc, err);
        break;
    case QV_PROTO_OP_UPSERT:
    case QV_PROTO_OP_DELETE:
        rc = qv_proto_decode_write_resp(h, msg, &resp->u.write, err);
        break;
    case QV_PROTO_OP_GET:
        rc = qv_proto_decode_get_resp(h, msg, &resp->u.get, err);
        break;
    default:
        rc = qv_proto_decode_search_resp(h, msg, &resp->u.search, err);
        break;
    }
out:
    if (rc < 0)
        err->drop = 1;
    return rc;
}

/* ---- error bodies -------------------------------------------------------- */

/* Length of reason cut to at most max bytes, on a UTF-8 character boundary. */
static size_t reason_cut(const char *reason, size_t max)
{
    size_t n = strnlen(reason, max + 1);
    if (n <= max)
        return n;
    n = max;
    while (n > 0 && ((unsigned char)reason[n] & 0xc0) == 0x80)
        n--;
    return n;
}

static int64_t put_error(void *buf, size_t cap, const struct qv_proto_hdr *req,
                         uint16_t status, const char *addr, const char *reason)
{
    if (!reason)
        reason = "";
    size_t alen = 0;
    if (addr) {
        alen = strnlen(addr, QV_PROTO_MAX_ADDR + 1);
        if (alen == 0 || alen > QV_PROTO_MAX_ADDR)
            return QV_EINVAL;
    }
    size_t rlen = reason_cut(reason, QV_PROTO_MAX_REASON);
    uint64_t body = (addr ? 2 + alen : 0) + 2 + rlen;
    uint8_t *b = buf;
    int rc = qv__proto_resp_start(b, cap, req, status, body);
    if (rc < 0)
        return rc;
    uint8_t *p = b + QV_PROTO_HDR_SIZE;
    if (addr) {
        qv__st16(p, (uint16_t)alen);
        memcpy(p + 2, addr, alen);
        p += 2 + alen;
    }
    qv__st16(p, (uint16_t)rlen);
    memcpy(p + 2, reason, rlen);
    return (int64_t)(QV_PROTO_HDR_SIZE + body);
}

int64_t qv_proto_encode_error(void *buf, size_t cap, const struct qv_proto_hdr *req,
                              enum qv_proto_status status, const char *reason)
{
    if (status == QV_PROTO_OK || status == QV_PROTO_NOT_PRIMARY ||
        (unsigned)status >= QV_PROTO_STATUS__COUNT)
        return QV_EINVAL;
    return put_error(buf, cap, req, (uint16_t)status, NULL, reason);
}

int64_t qv_proto_encode_not_primary(void *buf, size_t cap, const struct qv_proto_hdr *req,
                                    const char *addr, const char *reason)
{
    if (!addr)
        return QV_EINVAL;
    return put_error(buf, cap, req, QV_PROTO_NOT_PRIMARY, addr, reason);
}

int64_t qv_proto_encode_err(void *buf, size_t cap, const struct qv_proto_hdr *req,
                            const struct qv_proto_err *err)
{
    if (!err)
        return QV_EINVAL;
    uint16_t st = err->status;
    if (st == QV_PROTO_OK || st == QV_PROTO_NOT_PRIMARY || st >= QV_PROTO_STATUS__COUNT)
        st = QV_PROTO_INTERNAL;
    return put_error(buf, cap, req, st, NULL, err->reason);
}

int qv_proto_decode_error_resp(const struct qv_proto_hdr *hdr, const void *msg,
                               struct qv_proto_error_resp *out, struct qv_proto_err *err)
{
    const uint8_t *b = (const uint8_t *)msg + QV_PROTO_HDR_SIZE;
    uint64_t bl = hdr->body_len, off = 0;
    const char *st = qv_proto_status_name(hdr->status);
    memset(out, 0, sizeof *out);
    if (hdr->status == QV_PROTO_NOT_PRIMARY) {
        if (bl < 2)
            return qv__proto_fail(err, BAD, "NOT_PRIMARY response: "
                                  "body_len = %llu: the address length alone is 2 bytes",
                                  (unsigned long long)bl);
        uint16_t alen = qv__ld16(b);
        if (alen == 0 || alen > QV_PROTO_MAX_ADDR)
            return qv__proto_fail(err, BAD, "NOT_PRIMARY response: address "
                                  "length = %u: use 1..%d", alen, QV_PROTO_MAX_ADDR);
        if (2 + (uint64_t)alen > bl)
            return qv__proto_fail(err, BAD, "NOT_PRIMARY response: address "
                                  "length = %u runs past the body (body_len %llu)", alen,
                                  (unsigned long long)bl);
        if (memchr(b + 2, 0, alen))
            return qv__proto_fail(err, BAD, "NOT_PRIMARY response: the address holds a NUL "
                                  "byte");
        out->primary.s = (const char *)b + 2;
        out->primary.len = alen;
        off = 2 + (uint64_t)alen;
    }
    if (off + 2 > bl)
        return qv__proto_fail(err, BAD, "%s response: body_len = %llu: the "
                              "body ends before the reason's length", st,
                              (unsigned long long)bl);
    uint16_t rlen = qv__ld16(b + off);
    if (rlen > QV_PROTO_MAX_REASON)
        return qv__proto_fail(err, BAD, "%s response: reason length = %u: "
                              "use 0..%d", st, rlen, QV_PROTO_MAX_REASON);
    if (off + 2 + rlen != bl)
        return qv__proto_fail(err, BAD, "%s response: body_len = %llu: a "
                              "%u-byte reason ends the body at %llu", st,
                              (unsigned long long)bl, rlen,
                              (unsigned long long)(off + 2 + rlen));
    if (memchr(b + off + 2, 0, rlen))
        return qv__proto_fail(err, BAD, "%s response: the reason holds a NUL byte", st);
    out->reason.s = (const char *)b + off + 2;
    out->reason.len = rlen;
    return 0;
}
