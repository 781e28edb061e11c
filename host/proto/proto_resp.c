/*
 * proto_resp.c - OK response bodies, encoded (server) and decoded
 * (client).  Layouts: proto_int.h.  The decoders check structure (exact
 * lengths, counts within the limits, reserved bytes and padding zero,
 * known flags and enum values, the filler of short rows), not the
 * server's arithmetic.  A malformed response gives QV_EINVAL with a
 * reason ("SEARCH response: ...").
 */
#include <math.h>
#include <stdio.h>

#include "proto_int.h"

#define BAD QV_PROTO_BAD_REQUEST

static int misaligned(const struct qv_proto_hdr *h, struct qv_proto_err *err)
{
    return qv__proto_fail(err, BAD, "%s response: the message buffer is not 8-byte aligned: "
                          "receive into an aligned buffer", qv_proto_opcode_name(h->opcode));
}

static int bad_len(const struct qv_proto_hdr *h, struct qv_proto_err *err, uint64_t want)
{
    return qv__proto_fail(err, BAD, "%s response: body_len = %u: expected %llu bytes",
                          qv_proto_opcode_name(h->opcode), h->body_len,
                          (unsigned long long)want);
}

uint64_t qv_proto_search_resp_size(uint32_t n)
{
    return 8 + 12 * (uint64_t)n;
}

uint64_t qv_proto_search_batch_resp_size(uint32_t nq, uint32_t k)
{
    return qv__sbr_off_ids(nq) + 12 * (uint64_t)nq * k;
}

uint64_t qv_proto_get_resp_size(uint32_t n, uint32_t dim)
{
    return qv__getr_off_vectors(n) + 4 * (uint64_t)n * dim;
}

/* ---- empty, PING, STATS, CREATE, UPSERT / DELETE ------------------------ */

int64_t qv_proto_encode_empty_resp(void *buf, size_t cap, const struct qv_proto_hdr *req)
{
    int rc = qv__proto_resp_start(buf, cap, req, QV_PROTO_OK, 0);
    return rc < 0 ? rc : QV_PROTO_HDR_SIZE;
}

int64_t qv_proto_encode_ping_resp(void *buf, size_t cap, const struct qv_proto_hdr *req,
                                  uint64_t uptime_ms)
{
    int rc = qv__proto_resp_start(buf, cap, req, QV_PROTO_OK, 16);
    if (rc < 0)
        return rc;
    uint8_t *b = (uint8_t *)buf + QV_PROTO_HDR_SIZE;
    qv__st32(b, QV_PROTO_VERSIONS);
    qv__st32(b + 4, 0);
    qv__st64(b + 8, uptime_ms);
    return QV_PROTO_HDR_SIZE + 16;
}

int qv_proto_decode_ping_resp(const struct qv_proto_hdr *h, const void *msg,
                              struct qv_proto_ping_resp *out, struct qv_proto_err *err)
{
    const uint8_t *b = (const uint8_t *)msg + QV_PROTO_HDR_SIZE;
    memset(out, 0, sizeof *out);
    if (h->body_len != 16)
        return bad_len(h, err, 16);
    if (qv__ld32(b + 4) != 0)
        return qv__proto_fail(err, BAD, "PING response: reserved = 0x%08x: must be 0",
                              qv__ld32(b + 4));
    out->versions = qv__ld32(b);
    out->uptime_ms = qv__ld64(b + 8);
    return 0;
}

int64_t qv_proto_encode_stats_resp(void *buf, size_t cap, const struct qv_proto_hdr *req,
                                   const char *json, size_t len)
{
    if ((len && !json) || len > QV_PROTO_TCP_MAX_BODY - 4)
        return QV_EINVAL;
    int rc = qv__proto_resp_start(buf, cap, req, QV_PROTO_OK, 4 + (uint64_t)len);
    if (rc < 0)
        return rc;
    uint8_t *b = (uint8_t *)buf + QV_PROTO_HDR_SIZE;
    qv__st32(b, (uint32_t)len);
    if (len)
        memcpy(b + 4, json, len);
    return (int64_t)(QV_PROTO_HDR_SIZE + 4 + len);
}

int qv_proto_decode_stats_resp(const struct qv_proto_hdr *h, const void *msg,
                               struct qv_proto_str *json, struct qv_proto_err *err)
{
    const uint8_t *b = (const uint8_t *)msg + QV_PROTO_HDR_SIZE;
    memset(json, 0, sizeof *json);
    if (h->body_len < 4)
        return bad_len(h, err, 4);
    uint32_t len = qv__ld32(b);
    if ((uint64_t)len + 4 != h->body_len)
        return bad_len(h, err, (uint64_t)len + 4);
    json->s = (const char *)b + 4;
    json->len = len;
    return 0;
}

int64_t qv_proto_encode_create_resp(void *buf, size_t cap, const struct qv_proto_hdr *req,
                                    uint64_t collection_id)
{
    if (collection_id == 0)
        return QV_EINVAL;
    int rc = qv__proto_resp_start(buf, cap, req, QV_PROTO_OK, 8);
    if (rc < 0)
        return rc;
    qv__st64((uint8_t *)buf + QV_PROTO_HDR_SIZE, collection_id);
    return QV_PROTO_HDR_SIZE + 8;
}

int qv_proto_decode_create_resp(const struct qv_proto_hdr *h, const void *msg,
                                uint64_t *collection_id, struct qv_proto_err *err)
{
    *collection_id = 0;
    if (h->body_len != 8)
        return bad_len(h, err, 8);
    uint64_t id = qv__ld64((const uint8_t *)msg + QV_PROTO_HDR_SIZE);
    if (id == 0)
        return qv__proto_fail(err, BAD, "CREATE response: collection_id = 0: ids are never 0");
    *collection_id = id;
    return 0;
}

int64_t qv_proto_encode_write_resp(void *buf, size_t cap, const struct qv_proto_hdr *req,
                                   uint32_t count, uint64_t epoch)
{
    int rc = qv__proto_resp_start(buf, cap, req, QV_PROTO_OK, 16);
    if (rc < 0)
        return rc;
    uint8_t *b = (uint8_t *)buf + QV_PROTO_HDR_SIZE;
    qv__st32(b, count);
    qv__st32(b + 4, 0);
    qv__st64(b + 8, epoch);
    return QV_PROTO_HDR_SIZE + 16;
}

int qv_proto_decode_write_resp(const struct qv_proto_hdr *h, const void *msg,
                               struct qv_proto_write_resp *out, struct qv_proto_err *err)
{
    const uint8_t *b = (const uint8_t *)msg + QV_PROTO_HDR_SIZE;
    memset(out, 0, sizeof *out);
    if (h->body_len != 16)
        return bad_len(h, err, 16);
    if (qv__ld32(b + 4) != 0)
        return qv__proto_fail(err, BAD, "%s response: reserved = 0x%08x: must be 0",
                              qv_proto_opcode_name(h->opcode), qv__ld32(b + 4));
    out->count = qv__ld32(b);
    out->epoch = qv__ld64(b + 8);
    return 0;
}

/* ---- descriptors: DESCRIBE and LIST -------------------------------------- */

static int64_t desc_size(const struct qv_proto_desc *d)
{
    if (!d || d->nattrs > QV_PROTO_MAX_ATTRS || d->name.len < 1 ||
        d->name.len > QV_PROTO_MAX_NAME || !d->name.s)
        return QV_EINVAL;
    int64_t n = QV__DESC_FIXED + (int64_t)d->name.len;
    for (uint32_t a = 0; a < d->nattrs; a++) {
        if (d->attrs[a].len < 1 || d->attrs[a].len > QV_PROTO_MAX_NAME || !d->attrs[a].s)
            return QV_EINVAL;
        n += 2 + (int64_t)d->attrs[a].len;
    }
    return n;
}

static void put_desc(uint8_t *p, const struct qv_proto_desc *d)
{
    qv__st64(p, d->collection_id);
    qv__st32(p + 8, d->dim);
    p[12] = d->metric;
    p[13] = d->index;
    qv__st16(p + 14, d->nattrs);
    qv__st64(p + 16, d->rows);
    qv__st64(p + 24, d->epoch);
    qv__st32(p + 32, d->nlist);
    qv__st32(p + 36, d->nprobe);
    qv__st16(p + 40, d->pq_m);
    p[42] = d->pq_nbits;
    p[43] = d->trained;
    qv__st16(p + 44, d->hnsw_m);
    qv__st16(p + 46, d->ef_construction);
    qv__st16(p + 48, d->ef_search);
    qv__st16(p + 50, (uint16_t)d->name.len);
    memcpy(p + QV__DESC_FIXED, d->name.s, d->name.len);
    uint64_t off = QV__DESC_FIXED + (uint64_t)d->name.len;
    for (uint32_t a = 0; a < d->nattrs; a++) {
        qv__st16(p + off, (uint16_t)d->attrs[a].len);
        memcpy(p + off + 2, d->attrs[a].s, d->attrs[a].len);
        off += 2 + (uint64_t)d->attrs[a].len;
    }
}

/*
 * Read the descriptor at p (avail bytes); *used gets its length.  what
 * names it in reasons ("DESCRIBE response", "LIST response: descriptor 3").
 * err may be NULL (qv_proto_list_next re-reads checked descriptors).
 */
static int get_desc(const uint8_t *p, uint64_t avail, struct qv_proto_desc *d, uint64_t *used,
                    const char *what, uint32_t idx, struct qv_proto_err *err)
{
    memset(d, 0, sizeof *d);
    *used = 0;
    if (avail < QV__DESC_FIXED)
        return qv__proto_fail(err, BAD, "%s %u: %llu bytes left: a descriptor's fixed part is "
                              "%d", what, idx, (unsigned long long)avail, QV__DESC_FIXED);
    d->collection_id = qv__ld64(p);
    d->dim = qv__ld32(p + 8);
    d->metric = p[12];
    d->index = p[13];
    d->nattrs = qv__ld16(p + 14);
    d->rows = qv__ld64(p + 16);
    d->epoch = qv__ld64(p + 24);
    d->nlist = qv__ld32(p + 32);
    d->nprobe = qv__ld32(p + 36);
    d->pq_m = qv__ld16(p + 40);
    d->pq_nbits = p[42];
    d->trained = p[43];
    d->hnsw_m = qv__ld16(p + 44);
    d->ef_construction = qv__ld16(p + 46);
    d->ef_search = qv__ld16(p + 48);
    uint16_t name_len = qv__ld16(p + 50);
    if (d->metric > QV_PROTO_METRIC_COSINE || d->index > QV_PROTO_INDEX_HNSW ||
        d->trained > 1)
        return qv__proto_fail(err, BAD, "%s %u: metric = %u, index = %u, trained = %u: use "
                              "0..2, 0..4, 0..1", what, idx, d->metric, d->index, d->trained);
    if (d->nattrs > QV_PROTO_MAX_ATTRS)
        return qv__proto_fail(err, BAD, "%s %u: nattrs = %u: use 0..%d", what, idx, d->nattrs,
                              QV_PROTO_MAX_ATTRS);
    if (name_len < 1 || name_len > QV_PROTO_MAX_NAME ||
        (uint64_t)QV__DESC_FIXED + name_len > avail)
        return qv__proto_fail(err, BAD, "%s %u: name_len = %u: use 1..%d, within the body",
                              what, idx, name_len, QV_PROTO_MAX_NAME);
    d->name.s = (const char *)p + QV__DESC_FIXED;
    d->name.len = name_len;
    uint64_t off = QV__DESC_FIXED + (uint64_t)name_len;
    for (uint32_t a = 0; a < d->nattrs; a++) {
        uint16_t len = off + 2 <= avail ? qv__ld16(p + off) : 0;
        if (len < 1 || len > QV_PROTO_MAX_NAME || off + 2 + len > avail)
            return qv__proto_fail(err, BAD, "%s %u: attribute %u: name_len = %u: use 1..%d, "
                                  "within the body", what, idx, a, len, QV_PROTO_MAX_NAME);
        d->attrs[a].s = (const char *)p + off + 2;
        d->attrs[a].len = len;
        off += 2 + (uint64_t)len;
    }
    *used = off;
    return 0;
}

int64_t qv_proto_encode_describe_resp(void *buf, size_t cap, const struct qv_proto_hdr *req,
                                      const struct qv_proto_desc *d)
{
    int64_t size = desc_size(d);
    if (size < 0)
        return size;
    int rc = qv__proto_resp_start(buf, cap, req, QV_PROTO_OK, (uint64_t)size);
    if (rc < 0)
        return rc;
    put_desc((uint8_t *)buf + QV_PROTO_HDR_SIZE, d);
    return QV_PROTO_HDR_SIZE + size;
}

int qv_proto_decode_describe_resp(const struct qv_proto_hdr *h, const void *msg,
                                  struct qv_proto_desc *out, struct qv_proto_err *err)
{
    uint64_t used = 0;
    int rc = get_desc((const uint8_t *)msg + QV_PROTO_HDR_SIZE, h->body_len, out, &used,
                      "DESCRIBE response: descriptor", 0, err);
    if (rc < 0)
        return rc;
    if (used != h->body_len)
        return bad_len(h, err, used);
    return 0;
}

int64_t qv_proto_encode_list_resp(void *buf, size_t cap, const struct qv_proto_hdr *req,
                                  const struct qv_proto_desc *descs, uint32_t n)
{
    if (n && !descs)
        return QV_EINVAL;
    uint64_t body = 8;
    for (uint32_t i = 0; i < n; i++) {
        int64_t s = desc_size(&descs[i]);
        if (s < 0)
            return s;
        body += qv__round8((uint64_t)s);
        if (body > QV_PROTO_TCP_MAX_BODY)
            return QV_EINVAL;
    }
    int rc = qv__proto_resp_start(buf, cap, req, QV_PROTO_OK, body);
    if (rc < 0)
        return rc;
    uint8_t *b = (uint8_t *)buf + QV_PROTO_HDR_SIZE;
    qv__st32(b, n);
    qv__st32(b + 4, 0);
    uint64_t off = 8;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t s = (uint64_t)desc_size(&descs[i]), r = qv__round8(s);
        put_desc(b + off, &descs[i]);
        memset(b + off + s, 0, r - s);
        off += r;
    }
    return (int64_t)(QV_PROTO_HDR_SIZE + body);
}

int qv_proto_decode_list_resp(const struct qv_proto_hdr *h, const void *msg,
                              struct qv_proto_list_resp *out, struct qv_proto_err *err)
{
    const uint8_t *b = (const uint8_t *)msg + QV_PROTO_HDR_SIZE;
    const uint64_t bl = h->body_len;
    memset(out, 0, sizeof *out);
    if (bl < 8)
        return bad_len(h, err, 8);
    uint32_t n = qv__ld32(b);
    if (qv__ld32(b + 4) != 0)
        return qv__proto_fail(err, BAD, "LIST response: reserved = 0x%08x: must be 0",
                              qv__ld32(b + 4));
    uint64_t off = 8;
    struct qv_proto_desc d;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t used = 0;
        int rc = get_desc(b + off, bl - off, &d, &used, "LIST response: descriptor", i, err);
        if (rc < 0)
            return rc;
        uint64_t end = off + qv__round8(used);
        if (end > bl)
            return qv__proto_fail(err, BAD, "LIST response: descriptor %u: its padding runs "
                                  "past the body (body_len %llu)", i, (unsigned long long)bl);
        if (!qv__zeros(b + off + used, end - off - used))
            return qv__proto_fail(err, BAD, "LIST response: descriptor %u: padding must be "
                                  "zeros", i);
        off = end;
    }
    if (off != bl)
        return qv__proto_fail(err, BAD, "LIST response: body_len = %llu: %u descriptors end "
                              "at %llu", (unsigned long long)bl, n, (unsigned long long)off);
    out->n = n;
    out->descs = b + 8;
    out->descs_len = (size_t)(bl - 8);
    return 0;
}

int qv_proto_list_next(const struct qv_proto_list_resp *l, size_t *cursor,
                       struct qv_proto_desc *out)
{
    if (!l || !cursor || !out || *cursor >= l->descs_len)
        return 0;
    uint64_t used = 0;
    if (get_desc(l->descs + *cursor, l->descs_len - *cursor, out, &used, "LIST", 0, NULL) < 0)
        return 0;
    *cursor += (size_t)qv__round8(used);
    return 1;
}

/* ---- GET ------------------------------------------------------------------ */

int64_t qv_proto_encode_get_resp(void *buf, size_t cap, const struct qv_proto_hdr *req,
                                 uint32_t n, uint32_t dim, const uint64_t *ids,
                                 const uint8_t *found, const float *vectors)
{
    if (n > QV_PROTO_MAX_GET || dim > QV_PROTO_MAX_DIM ||
        (n && (!ids || !found || (dim && !vectors))))
        return QV_EINVAL;
    uint64_t body = qv_proto_get_resp_size(n, dim);
    int rc = qv__proto_resp_start(buf, cap, req, QV_PROTO_OK, body);
    if (rc < 0)
        return rc;
    uint8_t *b = (uint8_t *)buf + QV_PROTO_HDR_SIZE;
    qv__st32(b, n);
    qv__st32(b + 4, dim);
    if (n)
        memcpy(b + 8, ids, 8 * (size_t)n);
    uint64_t voff = qv__getr_off_vectors(n), row = 4 * (uint64_t)dim;
    for (uint32_t i = 0; i < n; i++)
        b[8 + 8 * (uint64_t)n + i] = found[i] ? 1 : 0;
    memset(b + 8 + 9 * (uint64_t)n, 0, voff - 8 - 9 * (uint64_t)n);
    for (uint32_t i = 0; i < n; i++) {
        if (found[i])
            memcpy(b + voff + i * row, vectors + (uint64_t)i * dim, row);
        else
            memset(b + voff + i * row, 0, row);
    }
    return (int64_t)(QV_PROTO_HDR_SIZE + body);
}

int qv_proto_decode_get_resp(const struct qv_proto_hdr *h, const void *msg,
                             struct qv_proto_get_resp *out, struct qv_proto_err *err)
{
    const uint8_t *b = (const uint8_t *)msg + QV_PROTO_HDR_SIZE;
    memset(out, 0, sizeof *out);
    if (!qv__aligned8(msg))
        return misaligned(h, err);
    if (h->body_len < 8)
        return bad_len(h, err, 8);
    uint32_t n = qv__ld32(b), dim = qv__ld32(b + 4);
    if (n > QV_PROTO_MAX_GET || dim < 1 || dim > QV_PROTO_MAX_DIM)
        return qv__proto_fail(err, BAD, "GET response: n = %u, dim = %u: use 0..%d and 1..%d",
                              n, dim, QV_PROTO_MAX_GET, QV_PROTO_MAX_DIM);
    uint64_t want = qv_proto_get_resp_size(n, dim);
    if (h->body_len != want)
        return bad_len(h, err, want);
    const uint8_t *found = b + 8 + 8 * (uint64_t)n;
    uint64_t voff = qv__getr_off_vectors(n), row = 4 * (uint64_t)dim;
    for (uint32_t i = 0; i < n; i++) {
        if (found[i] > 1)
            return qv__proto_fail(err, BAD, "GET response: found[%u] = %u: use 0 or 1", i,
                                  found[i]);
        if (!found[i] && !qv__zeros(b + voff + i * row, row))
            return qv__proto_fail(err, BAD, "GET response: vector %u is not found but not "
                                  "zeros", i);
    }
    if (!qv__zeros(found + n, voff - 8 - 9 * (uint64_t)n))
        return qv__proto_fail(err, BAD, "GET response: padding after found[] must be zeros");
    out->n = n;
    out->dim = dim;
    out->ids = (const uint64_t *)(b + 8);
    out->found = found;
    out->vectors = (const float *)(b + voff);
    return 0;
}

/* ---- SEARCH and SEARCH_BATCH --------------------------------------------- */

int64_t qv_proto_encode_search_resp(void *buf, size_t cap, const struct qv_proto_hdr *req,
                                    uint32_t n, uint8_t rflags, const uint64_t *ids,
                                    const float *dist)
{
    if (n > QV_PROTO_MAX_K || (n && (!ids || !dist)))
        return QV_EINVAL;
    uint64_t body = qv_proto_search_resp_size(n);
    int rc = qv__proto_resp_start(buf, cap, req, QV_PROTO_OK, body);
    if (rc < 0)
        return rc;
    uint8_t *b = (uint8_t *)buf + QV_PROTO_HDR_SIZE;
    qv__st32(b, n);
    b[4] = rflags;
    b[5] = b[6] = b[7] = 0;
    if (n) {
        memcpy(b + 8, ids, 8 * (size_t)n);
        memcpy(b + 8 + 8 * (uint64_t)n, dist, 4 * (size_t)n);
    }
    return (int64_t)(QV_PROTO_HDR_SIZE + body);
}

int64_t qv_proto_encode_search_batch_resp(void *buf, size_t cap,
                                          const struct qv_proto_hdr *req, uint32_t nq,
                                          uint32_t k, const uint8_t *rflags,
                                          const uint32_t *n, const uint64_t *ids,
                                          const float *dist)
{
    if (nq > QV_PROTO_MAX_NQ || k > QV_PROTO_MAX_K ||
        (nq && (!rflags || !n || (k && (!ids || !dist)))))
        return QV_EINVAL;
    for (uint32_t i = 0; i < nq; i++)
        if (n[i] > k)
            return QV_EINVAL;
    uint64_t body = qv_proto_search_batch_resp_size(nq, k);
    int rc = qv__proto_resp_start(buf, cap, req, QV_PROTO_OK, body);
    if (rc < 0)
        return rc;
    uint8_t *b = (uint8_t *)buf + QV_PROTO_HDR_SIZE;
    uint64_t noff = qv__sbr_off_n(nq), ioff = qv__sbr_off_ids(nq);
    uint64_t doff = ioff + 8 * (uint64_t)nq * k;
    qv__st32(b, nq);
    qv__st32(b + 4, k);
    if (nq)
        memcpy(b + 8, rflags, nq);
    memset(b + 8 + nq, 0, noff - 8 - nq);
    for (uint32_t i = 0; i < nq; i++)
        qv__st32(b + noff + 4 * (uint64_t)i, n[i]);
    memset(b + noff + 4 * (uint64_t)nq, 0, ioff - noff - 4 * (uint64_t)nq);
    for (uint32_t i = 0; i < nq; i++) {
        uint64_t r = (uint64_t)i * k;
        if (n[i]) {
            memcpy(b + ioff + 8 * r, ids + r, 8 * (size_t)n[i]);
            memcpy(b + doff + 4 * r, dist + r, 4 * (size_t)n[i]);
        }
        for (uint32_t j = n[i]; j < k; j++) {
            qv__st64(b + ioff + 8 * (r + j), QV_PROTO_ID_NONE);
            qv__stf(b + doff + 4 * (r + j), INFINITY);
        }
    }
    return (int64_t)(QV_PROTO_HDR_SIZE + body);
}

static int search1_resp(const struct qv_proto_hdr *h, const uint8_t *b,
                        struct qv_proto_search_resp *out, struct qv_proto_err *err)
{
    if (h->body_len < 8)
        return bad_len(h, err, 8);
    uint32_t n = qv__ld32(b);
    if (n > QV_PROTO_MAX_K)
        return qv__proto_fail(err, BAD, "SEARCH response: n = %u: at most %d", n,
                              QV_PROTO_MAX_K);
    if (b[4] & ~(QV_PROTO_RF_CACHED | QV_PROTO_RF_APPROX))
        return qv__proto_fail(err, BAD, "SEARCH response: rflags = 0x%02x: only bits 0-1 are "
                              "defined", b[4]);
    if (b[5] | b[6] | b[7])
        return qv__proto_fail(err, BAD, "SEARCH response: reserved bytes 5-7 must be 0");
    if (h->body_len != qv_proto_search_resp_size(n))
        return bad_len(h, err, qv_proto_search_resp_size(n));
    out->nq = 1;
    out->k = n;
    out->rflags = b + 4;
    out->n = (const uint32_t *)b;
    out->ids = (const uint64_t *)(b + 8);
    out->dist = (const float *)(b + 8 + 8 * (uint64_t)n);
    return 0;
}

int qv_proto_decode_search_resp(const struct qv_proto_hdr *h, const void *msg,
                                struct qv_proto_search_resp *out, struct qv_proto_err *err)
{
    const uint8_t *b = (const uint8_t *)msg + QV_PROTO_HDR_SIZE;
    memset(out, 0, sizeof *out);
    if (!qv__aligned8(msg))
        return misaligned(h, err);
    if (h->opcode == QV_PROTO_OP_SEARCH)
        return search1_resp(h, b, out, err);
    if (h->body_len < 8)
        return bad_len(h, err, 8);
    uint32_t nq = qv__ld32(b), k = qv__ld32(b + 4);
    if (nq < 1 || nq > QV_PROTO_MAX_NQ || k < 1 || k > QV_PROTO_MAX_K)
        return qv__proto_fail(err, BAD, "SEARCH_BATCH response: nq = %u, k = %u: use 1..%d "
                              "and 1..%d", nq, k, QV_PROTO_MAX_NQ, QV_PROTO_MAX_K);
    uint64_t want = qv_proto_search_batch_resp_size(nq, k);
    if (h->body_len != want)
        return bad_len(h, err, want);
    uint64_t noff = qv__sbr_off_n(nq), ioff = qv__sbr_off_ids(nq);
    uint64_t doff = ioff + 8 * (uint64_t)nq * k;
    for (uint32_t i = 0; i < nq; i++)
        if (b[8 + i] & ~(QV_PROTO_RF_CACHED | QV_PROTO_RF_APPROX))
            return qv__proto_fail(err, BAD, "SEARCH_BATCH response: rflags[%u] = 0x%02x: only "
                                  "bits 0-1 are defined", i, b[8 + i]);
    if (!qv__zeros(b + 8 + nq, noff - 8 - nq) ||
        !qv__zeros(b + noff + 4 * (uint64_t)nq, ioff - noff - 4 * (uint64_t)nq))
        return qv__proto_fail(err, BAD, "SEARCH_BATCH response: padding must be zeros");
    for (uint32_t i = 0; i < nq; i++) {
        uint32_t ni = qv__ld32(b + noff + 4 * (uint64_t)i);
        if (ni > k)
            return qv__proto_fail(err, BAD, "SEARCH_BATCH response: n[%u] = %u: at most k = "
                                  "%u", i, ni, k);
        for (uint32_t j = ni; j < k; j++) {
            uint64_t r = (uint64_t)i * k + j;
            float d = qv__ldf(b + doff + 4 * r);
            if (qv__ld64(b + ioff + 8 * r) != QV_PROTO_ID_NONE || !(isinf(d) && d > 0))
                return qv__proto_fail(err, BAD, "SEARCH_BATCH response: row %u, slot %u past "
                                      "n = %u: must be (2^64-1, +inf)", i, j, ni);
        }
    }
    out->nq = nq;
    out->k = k;
    out->rflags = b + 8;
    out->n = (const uint32_t *)(b + noff);
    out->ids = (const uint64_t *)(b + ioff);
    out->dist = (const float *)(b + doff);
    return 0;
}
