/*
 * proto_req.c - request bodies, decoded (server) and encoded (client).
 * Layouts and the validation order: proto_int.h.  Every decoder checks a
 * field's bytes are present before reading it and the body's exact
 * length before reading any array.
 */
#include <stdio.h>

#include "proto_int.h"
#include "quiver/finite.h"

#define BAD QV_PROTO_BAD_REQUEST

static int misaligned(const struct qv_proto_hdr *h, const void *msg, struct qv_proto_err *err)
{
    return qv__proto_fail(err, QV_PROTO_INTERNAL, "%s: the message buffer is not 8-byte "
                          "aligned: decode it with qv_proto_decode_request (which copies) "
                          "or receive into an aligned buffer",
                          qv_proto_opcode_name(h->opcode));
}

/* ---- empty bodies ---------------------------------------------------------- */

int qv_proto_decode_empty(const struct qv_proto_hdr *h, const void *msg,
                          struct qv_proto_err *err)
{
    (void)msg;
    if (h->body_len != 0)
        return qv__proto_fail(err, BAD, "%s: body_len = %u: the request body is empty",
                              qv_proto_opcode_name(h->opcode), h->body_len);
    return 0;
}

int64_t qv_proto_encode_empty_req(void *buf, size_t cap, enum qv_proto_opcode op,
                                  uint64_t request_id, uint64_t collection_id)
{
    if (!buf || (op != QV_PROTO_OP_PING && op != QV_PROTO_OP_STATS && op != QV_PROTO_OP_DROP &&
                 op != QV_PROTO_OP_LIST && op != QV_PROTO_OP_DESCRIBE))
        return QV_EINVAL;
    if (cap < QV_PROTO_HDR_SIZE)
        return QV_ENOSPC;
    qv__proto_put_hdr(buf, (uint8_t)op, 0, 0, request_id, collection_id, 0);
    return QV_PROTO_HDR_SIZE;
}

/* ---- CREATE ---------------------------------------------------------------- */

static int name_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '_';
}

/* Attribute names that the filter syntax (filter.c) reads as keywords. */
static int filter_keyword(const uint8_t *s, uint32_t len)
{
    static const char *kw[] = { "and", "or", "not", "in", "between" };
    for (size_t i = 0; i < sizeof kw / sizeof kw[0]; i++) {
        if (strlen(kw[i]) != len)
            continue;
        uint32_t j = 0;
        while (j < len && (s[j] | 0x20) == (uint8_t)kw[i][j])
            j++;
        if (j == len)
            return 1;
    }
    return 0;
}

static int is_ivf(uint8_t index)
{
    return index == QV_PROTO_INDEX_IVF || index == QV_PROTO_INDEX_IVF_SQ8 ||
           index == QV_PROTO_INDEX_IVF_PQ;
}

static const char *index_name(uint8_t index)
{
    static const char *names[] = { "FLAT", "IVF", "IVF_SQ8", "IVF_PQ", "HNSW" };
    return index <= QV_PROTO_INDEX_HNSW ? names[index] : "unknown";
}

/* A parameter that index does not take must be 0. */
static int not_taken(struct qv_proto_err *err, const char *field, uint32_t v, uint8_t index,
                     const char *takers)
{
    return qv__proto_fail(err, BAD, "CREATE: %s = %u: %s does not take it (only %s do): "
                          "use 0", field, v, index_name(index), takers);
}

int qv_proto_decode_create(const struct qv_proto_hdr *h, const void *msg,
                           struct qv_proto_create *out, struct qv_proto_err *err)
{
    const uint8_t *b = (const uint8_t *)msg + QV_PROTO_HDR_SIZE;
    const uint32_t bl = h->body_len;
    memset(out, 0, sizeof *out);
    if (bl < QV__CREATE_FIXED)
        return qv__proto_fail(err, BAD, "CREATE: body_len = %u: the fixed part alone is %d "
                              "bytes (then the name and the attributes)", bl,
                              QV__CREATE_FIXED);
    out->dim = qv__ld32(b);
    out->metric = b[4];
    out->index = b[5];
    out->nattrs = qv__ld16(b + 6);
    out->nlist = qv__ld32(b + 8);
    out->nprobe = qv__ld32(b + 12);
    out->pq_m = qv__ld16(b + 16);
    out->pq_nbits = b[18];
    out->hnsw_m = qv__ld16(b + 20);
    out->ef_construction = qv__ld16(b + 22);
    out->ef_search = qv__ld16(b + 24);
    uint16_t name_len = qv__ld16(b + 26);

    if (out->dim < 1 || out->dim > QV_PROTO_MAX_DIM)
        return qv__proto_fail(err, BAD, "CREATE: dim = %u: use 1..%d", out->dim,
                              QV_PROTO_MAX_DIM);
    if (out->metric > QV_PROTO_METRIC_COSINE)
        return qv__proto_fail(err, BAD, "CREATE: metric = %u: use 0 (L2), 1 (IP) or 2 "
                              "(COSINE)", out->metric);
    if (out->index > QV_PROTO_INDEX_HNSW)
        return qv__proto_fail(err, BAD, "CREATE: index = %u: use 0 (FLAT), 1 (IVF), 2 "
                              "(IVF_SQ8), 3 (IVF_PQ) or 4 (HNSW)", out->index);
    if (out->nattrs > QV_PROTO_MAX_ATTRS)
        return qv__proto_fail(err, BAD, "CREATE: nattrs = %u: use 0..%d", out->nattrs,
                              QV_PROTO_MAX_ATTRS);
    const uint8_t ix = out->index;
    if (is_ivf(ix)) {
        if (out->nlist > QV_PROTO_MAX_NLIST)
            return qv__proto_fail(err, BAD, "CREATE: nlist = %u: use 1..%d, or 0 to choose "
                                  "at the first train", out->nlist, QV_PROTO_MAX_NLIST);
        uint32_t maxp = out->nlist ? out->nlist : QV_PROTO_MAX_NLIST;
        if (out->nprobe > maxp)
            return qv__proto_fail(err, BAD, "CREATE: nprobe = %u: use 1..nlist (%u), or 0 "
                                  "for %d", out->nprobe, maxp, QV_PROTO_DEFAULT_NPROBE);
    } else {
        if (out->nlist)
            return not_taken(err, "nlist", out->nlist, ix, "IVF, IVF_SQ8, IVF_PQ");
        if (out->nprobe)
            return not_taken(err, "nprobe", out->nprobe, ix, "IVF, IVF_SQ8, IVF_PQ");
    }
    if (ix == QV_PROTO_INDEX_IVF_PQ) {
        if (out->pq_m == 0 || out->pq_m > out->dim || out->dim % out->pq_m != 0)
            return qv__proto_fail(err, BAD, "CREATE: pq_m = %u: IVF_PQ needs a divisor of "
                                  "dim (%u)", out->pq_m, out->dim);
        if (out->pq_nbits != 4 && out->pq_nbits != 8)
            return qv__proto_fail(err, BAD, "CREATE: pq_nbits = %u: use 4 or 8",
                                  out->pq_nbits);
    } else {
        if (out->pq_m)
            return not_taken(err, "pq_m", out->pq_m, ix, "IVF_PQ");
        if (out->pq_nbits)
            return not_taken(err, "pq_nbits", out->pq_nbits, ix, "IVF_PQ");
    }
    if (b[19] != 0)
        return qv__proto_fail(err, BAD, "CREATE: reserved byte 19 = 0x%02x: must be 0", b[19]);
    if (ix == QV_PROTO_INDEX_HNSW) {
        if (out->hnsw_m && (out->hnsw_m < QV_PROTO_MIN_HNSW_M ||
                            out->hnsw_m > QV_PROTO_MAX_HNSW_M))
            return qv__proto_fail(err, BAD, "CREATE: hnsw_m = %u: use %d..%d, or 0 for %d",
                                  out->hnsw_m, QV_PROTO_MIN_HNSW_M, QV_PROTO_MAX_HNSW_M,
                                  QV_PROTO_DEFAULT_HNSW_M);
        uint32_t m = out->hnsw_m ? out->hnsw_m : QV_PROTO_DEFAULT_HNSW_M;
        uint32_t lo = m > QV_PROTO_MIN_EF_CONSTRUCTION ? m : QV_PROTO_MIN_EF_CONSTRUCTION;
        if (out->ef_construction && (out->ef_construction < lo ||
                                     out->ef_construction > QV_PROTO_MAX_EF))
            return qv__proto_fail(err, BAD, "CREATE: ef_construction = %u: use %u..%d (at "
                                  "least 8 and hnsw_m), or 0 for %d", out->ef_construction,
                                  lo, QV_PROTO_MAX_EF, QV_PROTO_DEFAULT_EF_CONSTRUCTION);
        if (out->ef_search > QV_PROTO_MAX_EF)
            return qv__proto_fail(err, BAD, "CREATE: ef_search = %u: use 1..%d, or 0 for %d",
                                  out->ef_search, QV_PROTO_MAX_EF, QV_PROTO_DEFAULT_EF_SEARCH);
    } else {
        if (out->hnsw_m)
            return not_taken(err, "hnsw_m", out->hnsw_m, ix, "HNSW");
        if (out->ef_construction)
            return not_taken(err, "ef_construction", out->ef_construction, ix, "HNSW");
        if (out->ef_search)
            return not_taken(err, "ef_search", out->ef_search, ix, "HNSW");
    }
    if (name_len < 1 || name_len > QV_PROTO_MAX_NAME)
        return qv__proto_fail(err, BAD, "CREATE: name_len = %u: use 1..%d", name_len,
                              QV_PROTO_MAX_NAME);
    if ((uint64_t)QV__CREATE_FIXED + name_len > bl)
        return qv__proto_fail(err, BAD, "CREATE: name_len = %u runs past the body "
                              "(body_len %u)", name_len, bl);
    const uint8_t *name = b + QV__CREATE_FIXED;
    for (uint32_t i = 0; i < name_len; i++)
        if (!name_char(name[i]) && name[i] != '.' && name[i] != '-')
            return qv__proto_fail(err, BAD, "CREATE: name: byte %u = 0x%02x: names use "
                                  "A-Z a-z 0-9 _ . -", i, name[i]);
    if (name[0] == '.' && (name_len == 1 || (name_len == 2 && name[1] == '.')))
        return qv__proto_fail(err, BAD, "CREATE: name \"%.*s\" is reserved: use a name of "
                              "A-Z a-z 0-9 _ . - other than . and ..", (int)name_len, name);
    out->name.s = (const char *)name;
    out->name.len = name_len;

    uint64_t off = QV__CREATE_FIXED + (uint64_t)name_len;
    for (uint32_t a = 0; a < out->nattrs; a++) {
        if (off + 2 > bl)
            return qv__proto_fail(err, BAD, "CREATE: attribute %u: the body (body_len %u) "
                                  "ends before its name_len (nattrs = %u)", a, bl,
                                  out->nattrs);
        uint16_t len = qv__ld16(b + off);
        if (len < 1 || len > QV_PROTO_MAX_NAME)
            return qv__proto_fail(err, BAD, "CREATE: attribute %u: name_len = %u: use 1..%d",
                                  a, len, QV_PROTO_MAX_NAME);
        if (off + 2 + len > bl)
            return qv__proto_fail(err, BAD, "CREATE: attribute %u: name_len = %u runs past "
                                  "the body (body_len %u)", a, len, bl);
        const uint8_t *s = b + off + 2;
        for (uint32_t i = 0; i < len; i++)
            if (!name_char(s[i]))
                return qv__proto_fail(err, BAD, "CREATE: attribute %u: byte %u = 0x%02x: "
                                      "attribute names use A-Z a-z 0-9 _ (the filter "
                                      "syntax's names)", a, i, s[i]);
        if (filter_keyword(s, len))
            return qv__proto_fail(err, BAD, "CREATE: attribute %u: \"%.*s\" is a keyword of "
                                  "the filter syntax (and, or, not, in, between): choose "
                                  "another name", a, (int)len, s);
        for (uint32_t p = 0; p < a; p++)
            if (out->attrs[p].len == len && memcmp(out->attrs[p].s, s, len) == 0)
                return qv__proto_fail(err, BAD, "CREATE: attribute %u: \"%.*s\" repeats "
                                      "attribute %u: names are unique", a, (int)len, s, p);
        out->attrs[a].s = (const char *)s;
        out->attrs[a].len = len;
        off += 2 + (uint64_t)len;
    }
    if (off != bl)
        return qv__proto_fail(err, BAD, "CREATE: body_len = %u: the body ends at %llu, after "
                              "the last attribute (%llu trailing bytes)", bl,
                              (unsigned long long)off, (unsigned long long)(bl - off));
    return 0;
}

int64_t qv_proto_encode_create(void *buf, size_t cap, uint64_t request_id,
                               const struct qv_proto_create *c)
{
    if (!buf || !c || c->nattrs > QV_PROTO_MAX_ATTRS || c->name.len > QV_PROTO_MAX_NAME ||
        (c->name.len && !c->name.s))
        return QV_EINVAL;
    uint64_t body = QV__CREATE_FIXED + (uint64_t)c->name.len;
    for (uint32_t a = 0; a < c->nattrs; a++) {
        if (c->attrs[a].len > QV_PROTO_MAX_NAME || (c->attrs[a].len && !c->attrs[a].s))
            return QV_EINVAL;
        body += 2 + (uint64_t)c->attrs[a].len;
    }
    if (cap < QV_PROTO_HDR_SIZE + body)
        return QV_ENOSPC;
    uint8_t *m = buf, *b = m + QV_PROTO_HDR_SIZE;
    qv__proto_put_hdr(m, QV_PROTO_OP_CREATE, 0, 0, request_id, 0, (uint32_t)body);
    qv__st32(b, c->dim);
    b[4] = c->metric;
    b[5] = c->index;
    qv__st16(b + 6, c->nattrs);
    qv__st32(b + 8, c->nlist);
    qv__st32(b + 12, c->nprobe);
    qv__st16(b + 16, c->pq_m);
    b[18] = c->pq_nbits;
    b[19] = 0;
    qv__st16(b + 20, c->hnsw_m);
    qv__st16(b + 22, c->ef_construction);
    qv__st16(b + 24, c->ef_search);
    qv__st16(b + 26, (uint16_t)c->name.len);
    if (c->name.len)
        memcpy(b + QV__CREATE_FIXED, c->name.s, c->name.len);
    uint64_t off = QV__CREATE_FIXED + (uint64_t)c->name.len;
    for (uint32_t a = 0; a < c->nattrs; a++) {
        qv__st16(b + off, (uint16_t)c->attrs[a].len);
        if (c->attrs[a].len)
            memcpy(b + off + 2, c->attrs[a].s, c->attrs[a].len);
        off += 2 + (uint64_t)c->attrs[a].len;
    }
    return (int64_t)(QV_PROTO_HDR_SIZE + body);
}

/* ---- SEARCH and SEARCH_BATCH ------------------------------------------- */

int qv_proto_decode_search(const struct qv_proto_hdr *h, const void *msg,
                           enum qv_proto_carrier carrier, struct qv_proto_search *out,
                           struct qv_proto_err *err)
{
    const int batch = h->opcode == QV_PROTO_OP_SEARCH_BATCH;
    const char *nm = batch ? "SEARCH_BATCH" : "SEARCH";
    const uint8_t *b = (const uint8_t *)msg + QV_PROTO_HDR_SIZE;
    const uint32_t bl = h->body_len;
    memset(out, 0, sizeof *out);
    if (!qv__aligned8(msg))
        return misaligned(h, msg, err);
    if (bl < QV__SEARCH_FIXED)
        return qv__proto_fail(err, BAD, "%s: body_len = %u: the fixed part alone is %d bytes",
                              nm, bl, QV__SEARCH_FIXED);
    out->dim = qv__ld32(b);
    out->k = qv__ld32(b + 4);
    out->nprobe = qv__ld32(b + 8);
    out->ef = qv__ld32(b + 12);
    out->deadline_us = qv__ld32(b + 16);
    out->consistency = b[20];
    out->qclass = b[21];
    out->sflags = b[22];
    out->semantic = qv__ldf(b + 24);
    uint16_t flen = qv__ld16(b + 28);

    if (out->dim < 1 || out->dim > QV_PROTO_MAX_DIM)
        return qv__proto_fail(err, BAD, "%s: dim = %u: use 1..%d (the collection's dim)", nm,
                              out->dim, QV_PROTO_MAX_DIM);
    if (out->k < 1 || out->k > QV_PROTO_MAX_K)
        return qv__proto_fail(err, BAD, "%s: k = %u: use 1..%d", nm, out->k, QV_PROTO_MAX_K);
    if (carrier == QV_PROTO_UDP && out->k > QV_PROTO_UDP_MAX_K)
        return qv__proto_fail(err, BAD, "%s: k = %u: over UDP use 1..%d (the response must "
                              "fit a datagram), or TCP", nm, out->k, QV_PROTO_UDP_MAX_K);
    if (out->nprobe > QV_PROTO_MAX_NLIST)
        return qv__proto_fail(err, BAD, "%s: nprobe = %u: use 0 (the collection's default) "
                              "or 1..nlist (at most %d)", nm, out->nprobe, QV_PROTO_MAX_NLIST);
    if (out->ef && (out->ef < out->k || out->ef > QV_PROTO_MAX_EF))
        return qv__proto_fail(err, BAD, "%s: ef = %u: use 0 (the default) or k..%d (k = %u)",
                              nm, out->ef, QV_PROTO_MAX_EF, out->k);
    if (out->deadline_us > QV_PROTO_MAX_DEADLINE_US)
        return qv__proto_fail(err, BAD, "%s: deadline_us = %u: use 0 (the class's budget) or "
                              "up to %u", nm, out->deadline_us, QV_PROTO_MAX_DEADLINE_US);
    if (out->consistency > QV_PROTO_CONS_PRIMARY)
        return qv__proto_fail(err, BAD, "%s: consistency = %u: use 0 (ANY) or 1 (PRIMARY)",
                              nm, out->consistency);
    if (out->qclass > QV_PROTO_CLASS_BULK)
        return qv__proto_fail(err, BAD, "%s: class = %u: use 0 (INTERACTIVE) or 1 (BULK)", nm,
                              out->qclass);
    if (out->sflags & ~QV_PROTO_SF_SEMANTIC)
        return qv__proto_fail(err, BAD, "%s: sflags = 0x%02x: only bit 0 (semantic cache) is "
                              "defined; the others must be 0", nm, out->sflags);
    if (b[23] != 0)
        return qv__proto_fail(err, BAD, "%s: reserved byte 23 = 0x%02x: must be 0", nm, b[23]);
    if (qv_first_nonfinite(&out->semantic, 1) == 0 || out->semantic < 0.0f)
        return qv__proto_fail(err, BAD, "%s: semantic = %g: use a finite threshold >= 0", nm,
                              (double)out->semantic);
    if (flen > QV_PROTO_MAX_FILTER)
        return qv__proto_fail(err, BAD, "%s: filter_len = %u: use 0..%d", nm, flen,
                              QV_PROTO_MAX_FILTER);
    if (qv__ld16(b + 30) != 0)
        return qv__proto_fail(err, BAD, "%s: reserved bytes 30-31 = 0x%04x: must be 0", nm,
                              qv__ld16(b + 30));
    if ((uint64_t)QV__SEARCH_FIXED + flen > bl)
        return qv__proto_fail(err, BAD, "%s: filter_len = %u runs past the body "
                              "(body_len %u)", nm, flen, bl);
    const uint8_t *filter = b + QV__SEARCH_FIXED;
    const uint8_t *nul = memchr(filter, 0, flen);
    if (nul)
        return qv__proto_fail(err, BAD, "%s: filter: byte %u is NUL: the filter is text "
                              "without NUL bytes", nm, (unsigned)(nul - filter));
    out->filter.s = flen ? (const char *)filter : NULL;
    out->filter.len = flen;

    uint64_t tail = qv__search_off_tail(flen);
    uint64_t hdr_end = tail + (batch ? 8 : 0);
    if (hdr_end > bl)
        return qv__proto_fail(err, BAD, "%s: body_len = %u: with filter_len %u the body "
                              "ends before %s (offset %llu)", nm, bl, flen,
                              batch ? "nq" : "the query", (unsigned long long)tail);
    for (uint64_t i = QV__SEARCH_FIXED + flen; i < tail; i++)
        if (b[i])
            return qv__proto_fail(err, BAD, "%s: padding after the filter: byte %llu = "
                                  "0x%02x: must be 0", nm, (unsigned long long)i, b[i]);
    out->nq = 1;
    if (batch) {
        out->nq = qv__ld32(b + tail);
        if (out->nq < 1 || out->nq > QV_PROTO_MAX_NQ)
            return qv__proto_fail(err, BAD, "%s: nq = %u: use 1..%d", nm, out->nq,
                                  QV_PROTO_MAX_NQ);
        if (qv__ld32(b + tail + 4) != 0)
            return qv__proto_fail(err, BAD, "%s: reserved field after nq = 0x%08x: must be "
                                  "0", nm, qv__ld32(b + tail + 4));
    }
    uint64_t want = qv__search_size(flen, batch, out->nq, out->dim);
    if (bl != want)
        return qv__proto_fail(err, BAD, "%s: body_len = %u: %u %s of dim %u with filter_len "
                              "%u take %llu bytes", nm, bl, out->nq,
                              out->nq == 1 ? "query" : "queries", out->dim, flen,
                              (unsigned long long)want);
    if (batch && carrier == QV_PROTO_UDP) {
        uint64_t resp = QV_PROTO_HDR_SIZE + qv_proto_search_batch_resp_size(out->nq, out->k) +
                        ((h->flags & QV_PROTO_F_AUTH) ? QV_PROTO_TAG_SIZE : 0);
        if (resp > QV_PROTO_UDP_MAX)
            return qv__proto_fail(err, BAD, "%s: nq = %u, k = %u: the response (%llu bytes) "
                                  "exceeds a UDP datagram (%d): lower nq or k, or use TCP",
                                  nm, out->nq, out->k, (unsigned long long)resp,
                                  QV_PROTO_UDP_MAX);
    }
    out->queries = (const float *)(b + hdr_end);
    uint64_t nf = (uint64_t)out->nq * out->dim, bad = qv_first_nonfinite(out->queries, nf);
    if (bad < nf) {
        float v = qv__ldf(b + hdr_end + 4 * bad);
        return qv__proto_fail(err, BAD, "%s: query %llu, element %llu = %g: use finite "
                              "floats (no NaN, no Inf)", nm,
                              (unsigned long long)(bad / out->dim),
                              (unsigned long long)(bad % out->dim), (double)v);
    }
    return 0;
}

static int64_t put_search(void *buf, size_t cap, uint64_t request_id, uint64_t collection_id,
                          const struct qv_proto_search *s, int batch)
{
    if (!buf || !s || s->dim > QV_PROTO_MAX_DIM || s->filter.len > QV_PROTO_MAX_FILTER ||
        (s->filter.len && !s->filter.s) || (batch ? s->nq > QV_PROTO_MAX_NQ : s->nq != 1))
        return QV_EINVAL;
    if (s->nq && s->dim && !s->queries)
        return QV_EINVAL;
    uint32_t flen = s->filter.len;
    uint64_t body = qv__search_size(flen, batch, s->nq, s->dim);
    if (cap < QV_PROTO_HDR_SIZE + body)
        return QV_ENOSPC;
    uint8_t *m = buf, *b = m + QV_PROTO_HDR_SIZE;
    qv__proto_put_hdr(m, batch ? QV_PROTO_OP_SEARCH_BATCH : QV_PROTO_OP_SEARCH, 0, 0,
                      request_id, collection_id, (uint32_t)body);
    qv__st32(b, s->dim);
    qv__st32(b + 4, s->k);
    qv__st32(b + 8, s->nprobe);
    qv__st32(b + 12, s->ef);
    qv__st32(b + 16, s->deadline_us);
    b[20] = s->consistency;
    b[21] = s->qclass;
    b[22] = s->sflags;
    b[23] = 0;
    qv__stf(b + 24, s->semantic);
    qv__st16(b + 28, (uint16_t)flen);
    qv__st16(b + 30, 0);
    if (flen)
        memcpy(b + QV__SEARCH_FIXED, s->filter.s, flen);
    uint64_t tail = qv__search_off_tail(flen);
    memset(b + QV__SEARCH_FIXED + flen, 0, tail - QV__SEARCH_FIXED - flen);
    if (batch) {
        qv__st32(b + tail, s->nq);
        qv__st32(b + tail + 4, 0);
    }
    uint64_t qbytes = 4 * (uint64_t)s->nq * s->dim;
    if (qbytes)
        memcpy(b + qv__search_off_queries(flen, batch), s->queries, qbytes);
    return (int64_t)(QV_PROTO_HDR_SIZE + body);
}

int64_t qv_proto_encode_search(void *buf, size_t cap, uint64_t request_id,
                               uint64_t collection_id, const struct qv_proto_search *s)
{
    return put_search(buf, cap, request_id, collection_id, s, 0);
}

int64_t qv_proto_encode_search_batch(void *buf, size_t cap, uint64_t request_id,
                                     uint64_t collection_id, const struct qv_proto_search *s)
{
    return put_search(buf, cap, request_id, collection_id, s, 1);
}

/* ---- UPSERT -------------------------------------------------------------- */

/*
 * Sort the n ids ascending in a (n words) with b (n words) as the other
 * buffer; returns the sorted copy (a or b).  LSD radix sort, 8-bit digits;
 * a pass whose digit is the same in every id moves nothing and is skipped,
 * so small or dense ids cost 1-3 passes.  Short inputs: insertion sort.
 */
static uint64_t *sort_ids(uint64_t *a, uint64_t *b, uint32_t n)
{
    if (n <= 64) {
        for (uint32_t i = 1; i < n; i++) {
            uint64_t v = a[i];
            uint32_t j = i;
            for (; j > 0 && a[j - 1] > v; j--)
                a[j] = a[j - 1];
            a[j] = v;
        }
        return a;
    }
    uint32_t hist[8][256];
    memset(hist, 0, sizeof hist);
    for (uint32_t i = 0; i < n; i++) {
        uint64_t v = a[i];
        for (int d = 0; d < 8; d++)
            hist[d][(v >> (8 * d)) & 0xff]++;
    }
    for (int d = 0; d < 8; d++) {
        uint32_t *hd = hist[d];
        if (hd[(a[0] >> (8 * d)) & 0xff] == n)
            continue;
        uint32_t sum = 0;
        for (int c = 0; c < 256; c++) {
            uint32_t t = hd[c];
            hd[c] = sum;
            sum += t;
        }
        for (uint32_t i = 0; i < n; i++)
            b[hd[(a[i] >> (8 * d)) & 0xff]++] = a[i];
        uint64_t *t = a;
        a = b;
        b = t;
    }
    return a;
}

int qv_proto_decode_upsert(const struct qv_proto_hdr *h, const void *msg, void *scratch,
                           size_t scratch_cap, struct qv_proto_upsert *out,
                           struct qv_proto_err *err)
{
    const uint8_t *b = (const uint8_t *)msg + QV_PROTO_HDR_SIZE;
    const uint32_t bl = h->body_len;
    memset(out, 0, sizeof *out);
    if (!qv__aligned8(msg))
        return misaligned(h, msg, err);
    if (bl < QV__UPSERT_FIXED)
        return qv__proto_fail(err, BAD, "UPSERT: body_len = %u: the fixed part alone is %d "
                              "bytes", bl, QV__UPSERT_FIXED);
    out->n = qv__ld32(b);
    out->dim = qv__ld32(b + 4);
    out->nattrs = qv__ld16(b + 8);
    if (out->n < 1 || out->n > QV_PROTO_MAX_UPSERT)
        return qv__proto_fail(err, BAD, "UPSERT: n = %u: use 1..%d", out->n,
                              QV_PROTO_MAX_UPSERT);
    if (out->dim < 1 || out->dim > QV_PROTO_MAX_DIM)
        return qv__proto_fail(err, BAD, "UPSERT: dim = %u: use 1..%d (the collection's dim)",
                              out->dim, QV_PROTO_MAX_DIM);
    if (out->nattrs > QV_PROTO_MAX_ATTRS)
        return qv__proto_fail(err, BAD, "UPSERT: nattrs = %u: use 0..%d (the collection's "
                              "nattrs)", out->nattrs, QV_PROTO_MAX_ATTRS);
    if (qv__ld16(b + 10) != 0 || qv__ld32(b + 12) != 0)
        return qv__proto_fail(err, BAD, "UPSERT: reserved bytes 10-15 = 0x%04x 0x%08x: must "
                              "be 0", qv__ld16(b + 10), qv__ld32(b + 12));
    const uint32_t n = out->n;
    uint64_t want = qv__upsert_size(n, out->dim, out->nattrs);
    if (bl != want)
        return qv__proto_fail(err, BAD, "UPSERT: body_len = %u: n = %u vectors of dim %u "
                              "with %u attributes take %llu bytes", bl, n, out->dim,
                              out->nattrs, (unsigned long long)want);
    const uint64_t *ids = (const uint64_t *)(b + QV__UPSERT_FIXED);
    for (uint32_t i = 0; i < n; i++)
        if (ids[i] == QV_PROTO_ID_NONE)
            return qv__proto_fail(err, BAD, "UPSERT: ids[%u] = 2^64-1: that value means "
                                  "\"no id\": use 0..2^64-2", i);
    size_t pad = (size_t)(-(uintptr_t)scratch & 7);
    size_t need = pad + 16 * (size_t)n;
    if (!scratch || scratch_cap < need)
        return qv__proto_failc(err, QV_ENOSPC, QV_PROTO_INTERNAL, "UPSERT: n = %u: the "
                               "duplicate-id check needs %zu bytes of scratch, %zu given", n,
                               16 * (size_t)n + 7, scratch ? scratch_cap : (size_t)0);
    uint64_t *tmp = (uint64_t *)((uint8_t *)scratch + pad);
    memcpy(tmp, ids, 8 * (size_t)n);
    const uint64_t *sorted = sort_ids(tmp, tmp + n, n);
    for (uint32_t i = 1; i < n; i++)
        if (sorted[i] == sorted[i - 1])
            return qv__proto_fail(err, BAD, "UPSERT: ids: %llu appears more than once: ids "
                                  "are unique within a request",
                                  (unsigned long long)sorted[i]);
    uint64_t voff = qv__upsert_off_vectors(n), aoff = qv__upsert_off_attrs(n, out->dim);
    uint64_t nv = (uint64_t)n * out->dim;
    out->ids = ids;
    out->vectors = (const float *)(b + voff);
    uint64_t bad = qv_first_nonfinite(out->vectors, nv);
    if (bad < nv) {
        float v = qv__ldf(b + voff + 4 * bad);
        return qv__proto_fail(err, BAD, "UPSERT: vector %llu (id %llu), element %llu = %g: "
                              "use finite floats (no NaN, no Inf)",
                              (unsigned long long)(bad / out->dim),
                              (unsigned long long)ids[bad / out->dim],
                              (unsigned long long)(bad % out->dim), (double)v);
    }
    for (uint64_t i = voff + 4 * nv; i < aoff; i++)
        if (b[i])
            return qv__proto_fail(err, BAD, "UPSERT: padding after the vectors: byte %llu = "
                                  "0x%02x: must be 0", (unsigned long long)i, b[i]);
    for (uint32_t a = 0; a < out->nattrs; a++)
        out->attrs[a] = (const int64_t *)(b + aoff + 8 * (uint64_t)a * n);
    return 0;
}

int64_t qv_proto_encode_upsert(void *buf, size_t cap, uint64_t request_id,
                               uint64_t collection_id, const struct qv_proto_upsert *u)
{
    if (!buf || !u || u->n > QV_PROTO_MAX_UPSERT || u->dim > QV_PROTO_MAX_DIM ||
        u->nattrs > QV_PROTO_MAX_ATTRS)
        return QV_EINVAL;
    if (u->n && (!u->ids || (u->dim && !u->vectors)))
        return QV_EINVAL;
    for (uint32_t a = 0; a < u->nattrs; a++)
        if (u->n && !u->attrs[a])
            return QV_EINVAL;
    uint64_t body = qv__upsert_size(u->n, u->dim, u->nattrs);
    if (body > QV_PROTO_TCP_MAX_BODY)
        return QV_EINVAL;
    if (cap < QV_PROTO_HDR_SIZE + body)
        return QV_ENOSPC;
    uint8_t *m = buf, *b = m + QV_PROTO_HDR_SIZE;
    qv__proto_put_hdr(m, QV_PROTO_OP_UPSERT, 0, 0, request_id, collection_id, (uint32_t)body);
    qv__st32(b, u->n);
    qv__st32(b + 4, u->dim);
    qv__st16(b + 8, u->nattrs);
    qv__st16(b + 10, 0);
    qv__st32(b + 12, 0);
    uint64_t voff = qv__upsert_off_vectors(u->n), aoff = qv__upsert_off_attrs(u->n, u->dim);
    uint64_t vbytes = 4 * (uint64_t)u->n * u->dim;
    if (u->n)
        memcpy(b + QV__UPSERT_FIXED, u->ids, 8 * (size_t)u->n);
    if (vbytes)
        memcpy(b + voff, u->vectors, vbytes);
    memset(b + voff + vbytes, 0, aoff - voff - vbytes);
    for (uint32_t a = 0; a < u->nattrs; a++)
        if (u->n)
            memcpy(b + aoff + 8 * (uint64_t)a * u->n, u->attrs[a], 8 * (size_t)u->n);
    return (int64_t)(QV_PROTO_HDR_SIZE + body);
}

/* ---- DELETE and GET ------------------------------------------------------ */

int qv_proto_decode_ids(const struct qv_proto_hdr *h, const void *msg,
                        struct qv_proto_ids *out, struct qv_proto_err *err)
{
    const int get = h->opcode == QV_PROTO_OP_GET;
    const char *nm = get ? "GET" : "DELETE";
    const uint32_t max = get ? QV_PROTO_MAX_GET : QV_PROTO_MAX_DELETE;
    const uint8_t *b = (const uint8_t *)msg + QV_PROTO_HDR_SIZE;
    const uint32_t bl = h->body_len;
    memset(out, 0, sizeof *out);
    if (!qv__aligned8(msg))
        return misaligned(h, msg, err);
    if (bl < QV__IDS_FIXED)
        return qv__proto_fail(err, BAD, "%s: body_len = %u: the fixed part alone is %d bytes",
                              nm, bl, QV__IDS_FIXED);
    out->n = qv__ld32(b);
    if (out->n < 1 || out->n > max)
        return qv__proto_fail(err, BAD, "%s: n = %u: use 1..%u", nm, out->n, max);
    if (qv__ld32(b + 4) != 0)
        return qv__proto_fail(err, BAD, "%s: reserved bytes 4-7 = 0x%08x: must be 0", nm,
                              qv__ld32(b + 4));
    uint64_t want = QV__IDS_FIXED + 8 * (uint64_t)out->n;
    if (bl != want)
        return qv__proto_fail(err, BAD, "%s: body_len = %u: n = %u ids take %llu bytes", nm, bl,
                              out->n, (unsigned long long)want);
    out->ids = (const uint64_t *)(b + QV__IDS_FIXED);
    for (uint32_t i = 0; i < out->n; i++)
        if (out->ids[i] == QV_PROTO_ID_NONE)
            return qv__proto_fail(err, BAD, "%s: ids[%u] = 2^64-1: that value means \"no "
                                  "id\": use 0..2^64-2", nm, i);
    return 0;
}

static int64_t put_ids(void *buf, size_t cap, uint8_t op, uint32_t max, uint64_t request_id,
                       uint64_t collection_id, const struct qv_proto_ids *ids)
{
    if (!buf || !ids || ids->n > max || (ids->n && !ids->ids))
        return QV_EINVAL;
    uint64_t body = QV__IDS_FIXED + 8 * (uint64_t)ids->n;
    if (cap < QV_PROTO_HDR_SIZE + body)
        return QV_ENOSPC;
    uint8_t *m = buf, *b = m + QV_PROTO_HDR_SIZE;
    qv__proto_put_hdr(m, op, 0, 0, request_id, collection_id, (uint32_t)body);
    qv__st32(b, ids->n);
    qv__st32(b + 4, 0);
    if (ids->n)
        memcpy(b + QV__IDS_FIXED, ids->ids, 8 * (size_t)ids->n);
    return (int64_t)(QV_PROTO_HDR_SIZE + body);
}

int64_t qv_proto_encode_delete(void *buf, size_t cap, uint64_t request_id,
                               uint64_t collection_id, const struct qv_proto_ids *ids)
{
    return put_ids(buf, cap, QV_PROTO_OP_DELETE, QV_PROTO_MAX_DELETE, request_id,
                   collection_id, ids);
}

int64_t qv_proto_encode_get(void *buf, size_t cap, uint64_t request_id,
                            uint64_t collection_id, const struct qv_proto_ids *ids)
{
    return put_ids(buf, cap, QV_PROTO_OP_GET, QV_PROTO_MAX_GET, request_id, collection_id,
                   ids);
}
