/*
 * test_proto.c - the protocol codec: every request and response opcode
 * round trips (encode -> decode -> equal); a table of malformed messages,
 * each with its status, drop / close and a piece of its reason; the
 * header's checks in order; TCP framing; auth (tags known-answer checked
 * against OpenSSL's HMAC(), wrong / missing tags, no key); misaligned
 * buffers; the UPSERT duplicate check on its radix path; encoders' limits;
 * a fuzz run of random mutations of valid messages (each decodes to a
 * message that re-encodes to the same bytes, or fails with a reason);
 * and the decode cost of a 128-d SEARCH datagram (printed).
 */
#include <CUnit/Basic.h>
#include <math.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quiver/errors.h"
#include "quiver/proto.h"
#include "quiver/timeutil.h"

#define CAP (1u << 16)

static _Alignas(64) uint8_t buf[CAP];
static _Alignas(64) uint8_t buf2[CAP];
static _Alignas(64) uint8_t scratch[QV_PROTO_SCRATCH_TCP + CAP + 64];

static const uint64_t RID = 0x1122334455667788ull;
static const uint64_t CID = 42;

static struct qv_proto_rx rx_of(enum qv_proto_carrier c, const struct qv_proto_key *k)
{
    struct qv_proto_rx rx = { .carrier = c, .key = k, .scratch = scratch,
                              .scratch_cap = sizeof scratch };
    return rx;
}

static void st16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
static void st32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static uint32_t ld32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }

static struct qv_proto_str S(const char *s)
{
    struct qv_proto_str r = { s, (uint32_t)strlen(s) };
    return r;
}

static int str_eq(struct qv_proto_str a, const char *s)
{
    return a.len == strlen(s) && memcmp(a.s, s, a.len) == 0;
}

/* ---- the base messages ------------------------------------------------- */

enum base {
    B_PING, B_STATS, B_CREATE, B_CREATE_PQ, B_CREATE_HNSW, B_DROP, B_LIST, B_DESCRIBE,
    B_UPSERT, B_DELETE, B_GET, B_SEARCH, B_BATCH, B__COUNT
};

static float qvec[2 * 128];
static uint64_t up_ids[3] = { 7, 1000000007ull, 3 };
static float up_vec[9] = { 1, 2, 3, 4, 5, 6, 7, 8, 9 };
static int64_t up_a0[3] = { -1, 0, 1 }, up_a1[3] = { INT64_MIN, 5, INT64_MAX };
static uint64_t some_ids[3] = { 9, 0, 12345678901234ull };

static struct qv_proto_create create_flat(void)
{
    struct qv_proto_create c;
    memset(&c, 0, sizeof c);
    c.dim = 8;
    c.metric = QV_PROTO_METRIC_L2;
    c.index = QV_PROTO_INDEX_FLAT;
    c.nattrs = 2;
    c.name = S("docs");
    c.attrs[0] = S("color");
    c.attrs[1] = S("size");
    return c;
}

static struct qv_proto_search search_of(uint32_t dim, uint32_t nq)
{
    struct qv_proto_search s;
    memset(&s, 0, sizeof s);
    s.dim = dim;
    s.k = 10;
    s.nprobe = 4;
    s.ef = 0;
    s.deadline_us = 2000;
    s.consistency = QV_PROTO_CONS_PRIMARY;
    s.qclass = QV_PROTO_CLASS_BULK;
    s.sflags = QV_PROTO_SF_SEMANTIC;
    s.semantic = 0.25f;
    s.filter = S("a = 1");
    s.nq = nq;
    s.queries = qvec;
    return s;
}

static struct qv_proto_upsert upsert_base(void)
{
    struct qv_proto_upsert u;
    memset(&u, 0, sizeof u);
    u.n = 3;
    u.dim = 3;
    u.nattrs = 2;
    u.ids = up_ids;
    u.vectors = up_vec;
    u.attrs[0] = up_a0;
    u.attrs[1] = up_a1;
    return u;
}

/* Build base message b into out; returns its length. */
static size_t build(enum base b, uint8_t *out)
{
    for (int i = 0; i < 2 * 128; i++)
        qvec[i] = 0.5f * (float)i - 3.0f;
    struct qv_proto_create c = create_flat();
    struct qv_proto_search s = search_of(8, 1);
    struct qv_proto_upsert u = upsert_base();
    struct qv_proto_ids ids = { 3, some_ids };
    int64_t n = -1;
    switch (b) {
    case B_PING: n = qv_proto_encode_empty_req(out, CAP, QV_PROTO_OP_PING, RID, 0); break;
    case B_STATS: n = qv_proto_encode_empty_req(out, CAP, QV_PROTO_OP_STATS, RID, CID); break;
    case B_CREATE: n = qv_proto_encode_create(out, CAP, RID, &c); break;
    case B_CREATE_PQ:
        c.index = QV_PROTO_INDEX_IVF_PQ;
        c.nlist = 256;
        c.nprobe = 8;
        c.pq_m = 4;
        c.pq_nbits = 8;
        c.name = S("a.b-c_D9");
        c.nattrs = 0;
        n = qv_proto_encode_create(out, CAP, RID, &c);
        break;
    case B_CREATE_HNSW:
        c.index = QV_PROTO_INDEX_HNSW;
        c.metric = QV_PROTO_METRIC_COSINE;
        c.hnsw_m = 32;
        c.ef_construction = 100;
        c.ef_search = 50;
        c.nattrs = QV_PROTO_MAX_ATTRS;
        {
            static char names[QV_PROTO_MAX_ATTRS][16];
            for (int a = 0; a < QV_PROTO_MAX_ATTRS; a++) {
                snprintf(names[a], sizeof names[a], "attr_%u", (unsigned)a);
                c.attrs[a] = S(names[a]);
            }
        }
        n = qv_proto_encode_create(out, CAP, RID, &c);
        break;
    case B_DROP: n = qv_proto_encode_empty_req(out, CAP, QV_PROTO_OP_DROP, RID, CID); break;
    case B_LIST: n = qv_proto_encode_empty_req(out, CAP, QV_PROTO_OP_LIST, RID, 0); break;
    case B_DESCRIBE:
        n = qv_proto_encode_empty_req(out, CAP, QV_PROTO_OP_DESCRIBE, RID, CID);
        break;
    case B_UPSERT: n = qv_proto_encode_upsert(out, CAP, RID, CID, &u); break;
    case B_DELETE: n = qv_proto_encode_delete(out, CAP, RID, CID, &ids); break;
    case B_GET: n = qv_proto_encode_get(out, CAP, RID, CID, &ids); break;
    case B_SEARCH: n = qv_proto_encode_search(out, CAP, RID, CID, &s); break;
    case B_BATCH:
        s.nq = 2;
        n = qv_proto_encode_search_batch(out, CAP, RID, CID, &s);
        break;
    default: break;
    }
    CU_ASSERT_FATAL(n > 0);
    return (size_t)n;
}

/* Re-encode a decoded request; returns its length (flags 0). */
static int64_t reencode(const struct qv_proto_req *r, uint8_t *out, size_t cap)
{
    const struct qv_proto_hdr *h = &r->hdr;
    switch (h->opcode) {
    case QV_PROTO_OP_CREATE:
        return qv_proto_encode_create(out, cap, h->request_id, &r->u.create);
    case QV_PROTO_OP_UPSERT:
        return qv_proto_encode_upsert(out, cap, h->request_id, h->collection_id, &r->u.upsert);
    case QV_PROTO_OP_DELETE:
        return qv_proto_encode_delete(out, cap, h->request_id, h->collection_id, &r->u.ids);
    case QV_PROTO_OP_GET:
        return qv_proto_encode_get(out, cap, h->request_id, h->collection_id, &r->u.ids);
    case QV_PROTO_OP_SEARCH:
        return qv_proto_encode_search(out, cap, h->request_id, h->collection_id, &r->u.search);
    case QV_PROTO_OP_SEARCH_BATCH:
        return qv_proto_encode_search_batch(out, cap, h->request_id, h->collection_id,
                                            &r->u.search);
    default:
        return qv_proto_encode_empty_req(out, cap, (enum qv_proto_opcode)h->opcode,
                                         h->request_id, h->collection_id);
    }
}

/* msg decoded into r: its header (but flags) and body equal r re-encoded. */
static int same_as_reencoded(const uint8_t *msg, const struct qv_proto_req *r)
{
    int64_t n = reencode(r, buf2, sizeof buf2);
    if (n != (int64_t)(QV_PROTO_HDR_SIZE + r->hdr.body_len))
        return 0;
    if (memcmp(buf2, msg, 4) != 0 || memcmp(buf2 + 6, msg + 6, (size_t)n - 6) != 0)
        return 0;
    return (r->hdr.flags & ~(QV_PROTO_F_AUTH | QV_PROTO_F_RETRY)) == 0;
}

/* ---- round trips: requests --------------------------------------------- */

static void test_request_round_trip(void)
{
    struct qv_proto_req r;
    struct qv_proto_err err;
    for (int c = 0; c < 2; c++) {
        struct qv_proto_rx rx = rx_of(c ? QV_PROTO_TCP : QV_PROTO_UDP, NULL);
        for (int b = 0; b < B__COUNT; b++) {
            size_t len = build((enum base)b, buf);
            int rc = qv_proto_decode_request(buf, len, &rx, &r, &err);
            CU_ASSERT_EQUAL(rc, 0);
            if (rc) {
                printf("\n  base %d: %s\n", b, err.reason);
                continue;
            }
            CU_ASSERT_EQUAL(r.hdr.request_id, RID);
            CU_ASSERT_EQUAL(r.hdr.msg_len, len);
            CU_ASSERT(same_as_reencoded(buf, &r));
        }
    }
    /* field by field, for the bodies with values */
    struct qv_proto_rx rx = rx_of(QV_PROTO_UDP, NULL);
    size_t len = build(B_CREATE_PQ, buf);
    CU_ASSERT_EQUAL_FATAL(qv_proto_decode_request(buf, len, &rx, &r, &err), 0);
    CU_ASSERT_EQUAL(r.hdr.opcode, QV_PROTO_OP_CREATE);
    CU_ASSERT_EQUAL(r.hdr.collection_id, 0);
    CU_ASSERT_EQUAL(r.u.create.dim, 8);
    CU_ASSERT_EQUAL(r.u.create.index, QV_PROTO_INDEX_IVF_PQ);
    CU_ASSERT_EQUAL(r.u.create.nlist, 256);
    CU_ASSERT_EQUAL(r.u.create.nprobe, 8);
    CU_ASSERT_EQUAL(r.u.create.pq_m, 4);
    CU_ASSERT_EQUAL(r.u.create.pq_nbits, 8);
    CU_ASSERT(str_eq(r.u.create.name, "a.b-c_D9"));

    len = build(B_CREATE, buf);
    CU_ASSERT_EQUAL_FATAL(qv_proto_decode_request(buf, len, &rx, &r, &err), 0);
    CU_ASSERT_EQUAL(r.u.create.nattrs, 2);
    CU_ASSERT(str_eq(r.u.create.name, "docs"));
    CU_ASSERT(str_eq(r.u.create.attrs[0], "color"));
    CU_ASSERT(str_eq(r.u.create.attrs[1], "size"));
    CU_ASSERT(r.u.create.name.s == (const char *)buf + 60);    /* zero copy */

    len = build(B_CREATE_HNSW, buf);
    CU_ASSERT_EQUAL_FATAL(qv_proto_decode_request(buf, len, &rx, &r, &err), 0);
    CU_ASSERT_EQUAL(r.u.create.hnsw_m, 32);
    CU_ASSERT_EQUAL(r.u.create.ef_construction, 100);
    CU_ASSERT_EQUAL(r.u.create.ef_search, 50);
    CU_ASSERT_EQUAL(r.u.create.nattrs, 16);
    CU_ASSERT(str_eq(r.u.create.attrs[15], "attr_15"));

    len = build(B_SEARCH, buf);
    CU_ASSERT_EQUAL(len, 104);
    CU_ASSERT_EQUAL_FATAL(qv_proto_decode_request(buf, len, &rx, &r, &err), 0);
    const struct qv_proto_search *s = &r.u.search;
    CU_ASSERT_EQUAL(s->dim, 8);
    CU_ASSERT_EQUAL(s->k, 10);
    CU_ASSERT_EQUAL(s->nprobe, 4);
    CU_ASSERT_EQUAL(s->deadline_us, 2000);
    CU_ASSERT_EQUAL(s->consistency, QV_PROTO_CONS_PRIMARY);
    CU_ASSERT_EQUAL(s->qclass, QV_PROTO_CLASS_BULK);
    CU_ASSERT_EQUAL(s->sflags, QV_PROTO_SF_SEMANTIC);
    CU_ASSERT_EQUAL(s->semantic, 0.25f);
    CU_ASSERT(str_eq(s->filter, "a = 1"));
    CU_ASSERT_EQUAL(s->nq, 1);
    CU_ASSERT(s->queries == (const float *)(buf + 72));         /* in place */
    CU_ASSERT_EQUAL(memcmp(s->queries, qvec, 8 * sizeof(float)), 0);

    len = build(B_BATCH, buf);
    CU_ASSERT_EQUAL(len, 144);
    CU_ASSERT_EQUAL_FATAL(qv_proto_decode_request(buf, len, &rx, &r, &err), 0);
    CU_ASSERT_EQUAL(r.u.search.nq, 2);
    CU_ASSERT(r.u.search.queries == (const float *)(buf + 80));
    CU_ASSERT_EQUAL(memcmp(r.u.search.queries, qvec, 16 * sizeof(float)), 0);

    len = build(B_UPSERT, buf);
    CU_ASSERT_EQUAL(len, 160);
    CU_ASSERT_EQUAL_FATAL(qv_proto_decode_request(buf, len, &rx, &r, &err), 0);
    const struct qv_proto_upsert *u = &r.u.upsert;
    CU_ASSERT_EQUAL(u->n, 3);
    CU_ASSERT_EQUAL(u->dim, 3);
    CU_ASSERT_EQUAL(u->nattrs, 2);
    CU_ASSERT(u->ids == (const uint64_t *)(buf + 48));
    CU_ASSERT(u->vectors == (const float *)(buf + 72));
    CU_ASSERT(u->attrs[0] == (const int64_t *)(buf + 112));
    CU_ASSERT_EQUAL(memcmp(u->ids, up_ids, sizeof up_ids), 0);
    CU_ASSERT_EQUAL(memcmp(u->vectors, up_vec, sizeof up_vec), 0);
    CU_ASSERT_EQUAL(u->attrs[1][0], INT64_MIN);
    CU_ASSERT_EQUAL(u->attrs[1][2], INT64_MAX);

    len = build(B_GET, buf);
    CU_ASSERT_EQUAL_FATAL(qv_proto_decode_request(buf, len, &rx, &r, &err), 0);
    CU_ASSERT_EQUAL(r.u.ids.n, 3);
    CU_ASSERT_EQUAL(r.u.ids.ids[2], some_ids[2]);

    /* the body decoders alone accept what the receive path accepts */
    len = build(B_SEARCH, buf);
    struct qv_proto_hdr h;
    CU_ASSERT_EQUAL_FATAL(qv_proto_parse_hdr(buf, len, QV_PROTO_UDP, &h, &err), 0);
    struct qv_proto_search s2;
    CU_ASSERT_EQUAL(qv_proto_decode_search(&h, buf, QV_PROTO_UDP, &s2, &err), 0);
    CU_ASSERT_EQUAL(s2.k, 10);

    /* over TCP k may go up to 1024; over UDP a small batch fits */
    struct qv_proto_search big = search_of(8, 1);
    big.k = 1024;
    int64_t n = qv_proto_encode_search(buf, CAP, RID, CID, &big);
    struct qv_proto_rx tcp = rx_of(QV_PROTO_TCP, NULL);
    CU_ASSERT_EQUAL(qv_proto_decode_request(buf, (size_t)n, &tcp, &r, &err), 0);
    CU_ASSERT_EQUAL(r.u.search.k, 1024);
    big.k = 100;
    big.ef = 100;
    n = qv_proto_encode_search(buf, CAP, RID, CID, &big);
    CU_ASSERT_EQUAL(qv_proto_decode_request(buf, (size_t)n, &rx, &r, &err), 0);
    /* an empty filter and the largest one */
    static char ftext[QV_PROTO_MAX_FILTER + 1];
    memset(ftext, 'x', QV_PROTO_MAX_FILTER);
    big.filter = S(ftext);
    n = qv_proto_encode_search(buf, CAP, RID, CID, &big);
    CU_ASSERT_EQUAL(qv_proto_decode_request(buf, (size_t)n, &rx, &r, &err), 0);
    CU_ASSERT_EQUAL(r.u.search.filter.len, QV_PROTO_MAX_FILTER);
    big.filter.len = 0;
    big.filter.s = NULL;
    n = qv_proto_encode_search(buf, CAP, RID, CID, &big);
    CU_ASSERT_EQUAL(qv_proto_decode_request(buf, (size_t)n, &rx, &r, &err), 0);
    CU_ASSERT_EQUAL(r.u.search.filter.len, 0);
}

/* ---- round trips: responses -------------------------------------------- */

static struct qv_proto_hdr req_hdr(uint8_t op, uint64_t cid)
{
    struct qv_proto_hdr h;
    memset(&h, 0, sizeof h);
    h.magic = QV_PROTO_MAGIC;
    h.version = 1;
    h.opcode = op;
    h.request_id = RID;
    h.collection_id = cid;
    return h;
}

static int decode_resp(int64_t n, struct qv_proto_resp *r, uint8_t op)
{
    struct qv_proto_err err;
    CU_ASSERT_FATAL(n > 0);
    int rc = qv_proto_decode_response(buf, (size_t)n, QV_PROTO_UDP, NULL, r, &err);
    if (rc)
        printf("\n  %s response: %s\n", qv_proto_opcode_name(op), err.reason);
    CU_ASSERT_EQUAL(r->hdr.opcode, op);
    CU_ASSERT_EQUAL(r->hdr.request_id, RID);
    CU_ASSERT(r->hdr.flags & QV_PROTO_F_RESPONSE);
    return rc;
}

static struct qv_proto_desc desc_of(uint64_t id, const char *name)
{
    struct qv_proto_desc d;
    memset(&d, 0, sizeof d);
    d.collection_id = id;
    d.dim = 128;
    d.metric = QV_PROTO_METRIC_IP;
    d.index = QV_PROTO_INDEX_IVF_PQ;
    d.nattrs = 2;
    d.rows = 1000000;
    d.epoch = 77;
    d.nlist = 1024;
    d.nprobe = 16;
    d.pq_m = 16;
    d.pq_nbits = 8;
    d.trained = 1;
    d.name = S(name);
    d.attrs[0] = S("color");
    d.attrs[1] = S("price");
    return d;
}

static void test_response_round_trip(void)
{
    struct qv_proto_resp r;
    struct qv_proto_hdr q;

    q = req_hdr(QV_PROTO_OP_PING, 0);
    CU_ASSERT_EQUAL(decode_resp(qv_proto_encode_ping_resp(buf, CAP, &q, 123456789), &r,
                                QV_PROTO_OP_PING), 0);
    CU_ASSERT_EQUAL(r.u.ping.versions, 2);
    CU_ASSERT_EQUAL(r.u.ping.uptime_ms, 123456789);

    q = req_hdr(QV_PROTO_OP_STATS, CID);
    const char *json = "{\"queries\": 12}";
    CU_ASSERT_EQUAL(decode_resp(qv_proto_encode_stats_resp(buf, CAP, &q, json, strlen(json)),
                                &r, QV_PROTO_OP_STATS), 0);
    CU_ASSERT(str_eq(r.u.stats, json));
    CU_ASSERT_EQUAL(r.hdr.collection_id, CID);

    q = req_hdr(QV_PROTO_OP_CREATE, 0);
    CU_ASSERT_EQUAL(decode_resp(qv_proto_encode_create_resp(buf, CAP, &q, 99), &r,
                                QV_PROTO_OP_CREATE), 0);
    CU_ASSERT_EQUAL(r.u.collection_id, 99);

    q = req_hdr(QV_PROTO_OP_DROP, CID);
    CU_ASSERT_EQUAL(decode_resp(qv_proto_encode_empty_resp(buf, CAP, &q), &r,
                                QV_PROTO_OP_DROP), 0);
    CU_ASSERT_EQUAL(r.hdr.body_len, 0);

    q = req_hdr(QV_PROTO_OP_DESCRIBE, CID);
    struct qv_proto_desc d = desc_of(CID, "docs");
    CU_ASSERT_EQUAL(decode_resp(qv_proto_encode_describe_resp(buf, CAP, &q, &d), &r,
                                QV_PROTO_OP_DESCRIBE), 0);
    CU_ASSERT_EQUAL(r.u.desc.collection_id, CID);
    CU_ASSERT_EQUAL(r.u.desc.dim, 128);
    CU_ASSERT_EQUAL(r.u.desc.rows, 1000000);
    CU_ASSERT_EQUAL(r.u.desc.epoch, 77);
    CU_ASSERT_EQUAL(r.u.desc.pq_m, 16);
    CU_ASSERT_EQUAL(r.u.desc.trained, 1);
    CU_ASSERT(str_eq(r.u.desc.name, "docs"));
    CU_ASSERT(str_eq(r.u.desc.attrs[1], "price"));

    q = req_hdr(QV_PROTO_OP_LIST, 0);
    struct qv_proto_desc ds[3] = { desc_of(1, "a"), desc_of(2, "bb_long_name"),
                                   desc_of(3, "c") };
    ds[2].nattrs = 0;
    CU_ASSERT_EQUAL(decode_resp(qv_proto_encode_list_resp(buf, CAP, &q, ds, 3), &r,
                                QV_PROTO_OP_LIST), 0);
    CU_ASSERT_EQUAL(r.u.list.n, 3);
    size_t cur = 0;
    struct qv_proto_desc got;
    for (int i = 0; i < 3; i++) {
        CU_ASSERT_EQUAL(cur % 8, 0);                            /* aligned */
        CU_ASSERT_EQUAL_FATAL(qv_proto_list_next(&r.u.list, &cur, &got), 1);
        CU_ASSERT_EQUAL(got.collection_id, (uint64_t)i + 1);
        CU_ASSERT_EQUAL(got.nattrs, ds[i].nattrs);
        CU_ASSERT(got.name.len == ds[i].name.len &&
                  memcmp(got.name.s, ds[i].name.s, got.name.len) == 0);
    }
    CU_ASSERT_EQUAL(qv_proto_list_next(&r.u.list, &cur, &got), 0);
    CU_ASSERT_EQUAL(decode_resp(qv_proto_encode_list_resp(buf, CAP, &q, NULL, 0), &r,
                                QV_PROTO_OP_LIST), 0);
    CU_ASSERT_EQUAL(r.u.list.n, 0);

    q = req_hdr(QV_PROTO_OP_UPSERT, CID);
    CU_ASSERT_EQUAL(decode_resp(qv_proto_encode_write_resp(buf, CAP, &q, 3, 1234), &r,
                                QV_PROTO_OP_UPSERT), 0);
    CU_ASSERT_EQUAL(r.u.write.count, 3);
    CU_ASSERT_EQUAL(r.u.write.epoch, 1234);
    q = req_hdr(QV_PROTO_OP_DELETE, CID);
    CU_ASSERT_EQUAL(decode_resp(qv_proto_encode_write_resp(buf, CAP, &q, 2, 1235), &r,
                                QV_PROTO_OP_DELETE), 0);
    CU_ASSERT_EQUAL(r.u.write.count, 2);

    q = req_hdr(QV_PROTO_OP_GET, CID);
    uint64_t gids[3] = { 5, 6, 7 };
    uint8_t found[3] = { 1, 0, 1 };
    float gv[9] = { 1, 2, 3, -1, -1, -1, 7, 8, 9 };
    CU_ASSERT_EQUAL(decode_resp(qv_proto_encode_get_resp(buf, CAP, &q, 3, 3, gids, found, gv),
                                &r, QV_PROTO_OP_GET), 0);
    CU_ASSERT_EQUAL(r.u.get.n, 3);
    CU_ASSERT_EQUAL(r.u.get.dim, 3);
    CU_ASSERT_EQUAL(r.u.get.ids[2], 7);
    CU_ASSERT_EQUAL(r.u.get.found[1], 0);
    CU_ASSERT_EQUAL(r.u.get.vectors[1 * 3 + 0], 0.0f);          /* zeros: not found */
    CU_ASSERT_EQUAL(r.u.get.vectors[2 * 3 + 2], 9.0f);
    CU_ASSERT_EQUAL(((uintptr_t)r.u.get.vectors) % 4, 0);

    q = req_hdr(QV_PROTO_OP_SEARCH, CID);
    uint64_t sids[4] = { 10, 20, 30, 40 };
    float sd[4] = { 0.5f, 1.0f, 1.5f, 2.0f };
    CU_ASSERT_EQUAL(decode_resp(qv_proto_encode_search_resp(buf, CAP, &q, 4,
                                                            QV_PROTO_RF_CACHED, sids, sd),
                                &r, QV_PROTO_OP_SEARCH), 0);
    CU_ASSERT_EQUAL(r.u.search.nq, 1);
    CU_ASSERT_EQUAL(r.u.search.k, 4);
    CU_ASSERT_EQUAL(r.u.search.n[0], 4);
    CU_ASSERT_EQUAL(r.u.search.rflags[0], QV_PROTO_RF_CACHED);
    CU_ASSERT_EQUAL(memcmp(r.u.search.ids, sids, sizeof sids), 0);
    CU_ASSERT_EQUAL(memcmp(r.u.search.dist, sd, sizeof sd), 0);
    CU_ASSERT_EQUAL(decode_resp(qv_proto_encode_search_resp(buf, CAP, &q, 0, 0, NULL, NULL),
                                &r, QV_PROTO_OP_SEARCH), 0);
    CU_ASSERT_EQUAL(r.u.search.n[0], 0);

    q = req_hdr(QV_PROTO_OP_SEARCH_BATCH, CID);
    uint64_t bids[3 * 4];
    float bd[3 * 4];
    for (int i = 0; i < 12; i++) {
        bids[i] = (uint64_t)i * 3;
        bd[i] = (float)i;
    }
    uint8_t rfl[3] = { 0, QV_PROTO_RF_APPROX, QV_PROTO_RF_CACHED };
    uint32_t nres[3] = { 4, 2, 0 };
    CU_ASSERT_EQUAL(decode_resp(qv_proto_encode_search_batch_resp(buf, CAP, &q, 3, 4, rfl,
                                                                  nres, bids, bd),
                                &r, QV_PROTO_OP_SEARCH_BATCH), 0);
    const struct qv_proto_search_resp *sr = &r.u.search;
    CU_ASSERT_EQUAL(sr->nq, 3);
    CU_ASSERT_EQUAL(sr->k, 4);
    CU_ASSERT_EQUAL(sr->rflags[1], QV_PROTO_RF_APPROX);
    CU_ASSERT_EQUAL(sr->n[0], 4);
    CU_ASSERT_EQUAL(sr->n[1], 2);
    CU_ASSERT_EQUAL(sr->n[2], 0);
    CU_ASSERT_EQUAL(sr->ids[4 + 1], 15);
    CU_ASSERT_EQUAL(sr->ids[4 + 2], QV_PROTO_ID_NONE);          /* filler */
    CU_ASSERT(isinf(sr->dist[4 + 3]) && sr->dist[4 + 3] > 0);
    CU_ASSERT_EQUAL(sr->dist[3], 3.0f);
    CU_ASSERT_EQUAL(((uintptr_t)sr->ids) % 8, 0);
    CU_ASSERT_EQUAL(((uintptr_t)sr->n) % 4, 0);

    /* errors */
    q = req_hdr(QV_PROTO_OP_SEARCH, CID);
    CU_ASSERT_EQUAL(decode_resp(qv_proto_encode_error(buf, CAP, &q, QV_PROTO_NOT_FOUND,
                                                      "collection 42 not found"),
                                &r, QV_PROTO_OP_SEARCH), 0);
    CU_ASSERT_EQUAL(r.hdr.status, QV_PROTO_NOT_FOUND);
    CU_ASSERT(str_eq(r.u.error.reason, "collection 42 not found"));
    CU_ASSERT_EQUAL(r.u.error.primary.len, 0);
    q = req_hdr(QV_PROTO_OP_UPSERT, CID);
    CU_ASSERT_EQUAL(decode_resp(qv_proto_encode_not_primary(buf, CAP, &q, "10.0.0.2:7700",
                                                            "shard 3 moved"),
                                &r, QV_PROTO_OP_UPSERT), 0);
    CU_ASSERT_EQUAL(r.hdr.status, QV_PROTO_NOT_PRIMARY);
    CU_ASSERT(str_eq(r.u.error.primary, "10.0.0.2:7700"));
    CU_ASSERT(str_eq(r.u.error.reason, "shard 3 moved"));
    /* a decode failure answered as such */
    struct qv_proto_req rq;
    struct qv_proto_err err;
    struct qv_proto_rx rx = rx_of(QV_PROTO_UDP, NULL);
    size_t len = build(B_SEARCH, buf2);
    st32(buf2 + 36, 0);     /* k = 0 */
    CU_ASSERT_EQUAL(qv_proto_decode_request(buf2, len, &rx, &rq, &err), QV_EINVAL);
    CU_ASSERT_EQUAL(decode_resp(qv_proto_encode_err(buf, CAP, &rq.hdr, &err), &r,
                                QV_PROTO_OP_SEARCH), 0);
    CU_ASSERT_EQUAL(r.hdr.status, QV_PROTO_BAD_REQUEST);
    CU_ASSERT_EQUAL(r.hdr.collection_id, CID);
    CU_ASSERT(str_eq(r.u.error.reason, "SEARCH: k = 0: use 1..1024"));
    /* reasons cut at 512 bytes on a character boundary */
    static char longr[700];
    memset(longr, 'a', sizeof longr - 1);
    memcpy(longr + 511, "\xc3\xa9", 2);    /* U+00E9 across the cut */
    CU_ASSERT_EQUAL(decode_resp(qv_proto_encode_error(buf, CAP, &q, QV_PROTO_INTERNAL, longr),
                                &r, QV_PROTO_OP_UPSERT), 0);
    CU_ASSERT_EQUAL(r.u.error.reason.len, 511);
    CU_ASSERT_EQUAL(qv_proto_encode_error(buf, CAP, &q, QV_PROTO_OK, "x"), QV_EINVAL);
    CU_ASSERT_EQUAL(qv_proto_encode_error(buf, CAP, &q, QV_PROTO_NOT_PRIMARY, "x"), QV_EINVAL);
    CU_ASSERT_EQUAL(qv_proto_encode_not_primary(buf, CAP, &q, "", "x"), QV_EINVAL);
    CU_ASSERT_STRING_EQUAL(qv_proto_status_name(QV_PROTO_UNAUTHORIZED), "UNAUTHORIZED");
    CU_ASSERT_STRING_EQUAL(qv_proto_status_name(10), "unknown");
    CU_ASSERT_STRING_EQUAL(qv_proto_opcode_name(QV_PROTO_OP_SEARCH_BATCH), "SEARCH_BATCH");
}

/* ---- the table of malformed requests ------------------------------------ */

#define F_NAN 0x7fc00000u
#define F_INF 0x7f800000u
#define F_NINF 0xff800000u
#define NOPATCH { 0, 0, 0 }

struct patch {
    int off;            /* from the message start */
    int width;          /* 1, 2, 4, 8; 0 = none */
    uint64_t val;
};

struct mcase {
    const char *name;
    enum base base;
    int tcp;
    struct patch p[3];
    int resize;         /* bytes added (> 0, zeros) or cut (< 0) */
    int fix_len;        /* then set body_len to match */
    uint16_t status;
    int drop, close;
    const char *substr;
};

#define BR QV_PROTO_BAD_REQUEST
#define P1(o, w, v) { { o, w, v }, NOPATCH, NOPATCH }
#define P2(o, w, v, o2, w2, v2) { { o, w, v }, { o2, w2, v2 }, NOPATCH }

/* Offsets (message start): header 0-31; SEARCH: dim 32, k 36, nprobe 40,
 * ef 44, deadline 48, consistency 52, class 53, sflags 54, reserved 55,
 * semantic 56, filter_len 60, reserved 62, filter "a = 1" 64-68, pad
 * 69-71, query 72-103.  BATCH: nq 72, reserved 76, queries 80-143.
 * UPSERT: n 32, dim 36, nattrs 40, reserved 42/44, ids 48-71, vectors
 * 72-107, pad 108-111, attrs 112-159.  CREATE (docs; color, size): dim
 * 32, metric 36, index 37, nattrs 38, nlist 40, nprobe 44, pq_m 48,
 * pq_nbits 50, reserved 51, hnsw_m 52, ef_c 54, ef_s 56, name_len 58,
 * name 60-63, attr 0 len 64 name 66-70, attr 1 len 71 name 73-76.
 * DELETE / GET: n 32, reserved 36, ids 40-63. */
static const struct mcase cases[] = {
    /* header */
    { "truncated header", B_PING, 0, P1(0, 0, 0), -12, 0, BR, 1, 0, "32-byte header" },
    { "truncated header, TCP", B_PING, 1, P1(0, 0, 0), -1, 0, BR, 1, 1, "32-byte header" },
    { "empty datagram", B_PING, 0, P1(0, 0, 0), -32, 0, BR, 1, 0, "0 bytes" },
    { "wrong magic", B_SEARCH, 0, P1(0, 2, 0x5152), 0, 0, BR, 1, 0, "magic = 0x5152" },
    { "wrong magic, TCP", B_SEARCH, 1, P1(0, 2, 0x1234), 0, 0, BR, 0, 1, "magic = 0x1234" },
    { "wrong version", B_SEARCH, 0, P1(2, 1, 2), 0, 0, BR, 0, 0, "version = 2" },
    { "wrong version, TCP", B_SEARCH, 1, P1(2, 1, 0), 0, 0, BR, 0, 1, "version = 0" },
    { "nonzero reserved", B_PING, 0, P1(28, 4, 1), 0, 0, BR, 0, 0, "reserved = 0x00000001" },
    { "unknown flag", B_PING, 0, P1(4, 2, 0x8), 0, 0, BR, 0, 0, "unknown bits 0x0008" },
    { "RESPONSE flag on a request", B_SEARCH, 0, P1(4, 2, 1), 0, 0, BR, 1, 0, "RESPONSE" },
    { "unknown opcode", B_PING, 0, P1(3, 1, 0x40), 0, 0, BR, 0, 0, "opcode = 0x40" },
    { "opcode 0", B_PING, 0, P1(3, 1, 0), 0, 0, BR, 0, 0, "opcode = 0x00" },
    { "body_len larger than the datagram", B_SEARCH, 0, P1(24, 4, 76), 0, 0, BR, 0, 0,
      "datagram has 104 bytes" },
    { "body_len smaller than the datagram", B_SEARCH, 0, P1(24, 4, 68), 0, 0, BR, 0, 0,
      "body_len = 68" },
    { "truncated body", B_SEARCH, 0, P1(0, 0, 0), -4, 0, BR, 0, 0, "datagram has 100 bytes" },
    { "truncated body, TCP", B_SEARCH, 1, P1(0, 0, 0), -4, 0, BR, 0, 1, "stream ended 100" },
    { "over the TCP body limit", B_SEARCH, 1, P1(24, 4, (64u << 20) + 1), 0, 0, BR, 0, 1,
      "64 MiB" },
    { "datagram over 1472 bytes", B_SEARCH, 0, P1(0, 0, 0), 1500, 1, BR, 0, 0,
      "at most 1472: use TCP" },
    { "status in a request", B_PING, 0, P1(6, 2, 3), 0, 0, BR, 0, 0, "status = 3" },
    { "request_id 0", B_PING, 0, P1(8, 8, 0), 0, 0, BR, 0, 0, "request_id = 0" },
    { "collection_id on PING", B_PING, 0, P1(16, 8, 5), 0, 0, BR, 0, 0,
      "collection_id = 5: PING is node-level" },
    { "no collection_id on SEARCH", B_SEARCH, 0, P1(16, 8, 0), 0, 0, BR, 0, 0,
      "collection_id = 0: SEARCH needs" },
    { "PING with a body", B_PING, 0, P1(0, 0, 0), 8, 1, BR, 0, 0,
      "PING: body_len = 8: the request body is empty" },
    /* SEARCH */
    { "SEARCH short fixed part", B_SEARCH, 0, P1(0, 0, 0), -52, 1, BR, 0, 0,
      "fixed part alone is 32" },
    { "SEARCH dim 0", B_SEARCH, 0, P1(32, 4, 0), 0, 0, BR, 0, 0, "dim = 0: use 1..4096" },
    { "SEARCH dim 4097", B_SEARCH, 1, P1(32, 4, 4097), 0, 0, BR, 0, 0,
      "dim = 4097: use 1..4096" },
    { "SEARCH k 0", B_SEARCH, 0, P1(36, 4, 0), 0, 0, BR, 0, 0, "k = 0: use 1..1024" },
    { "SEARCH k 1025", B_SEARCH, 1, P1(36, 4, 1025), 0, 0, BR, 0, 0, "k = 1025: use 1..1024" },
    { "SEARCH UDP k 101", B_SEARCH, 0, P1(36, 4, 101), 0, 0, BR, 0, 0,
      "k = 101: over UDP use 1..100" },
    { "SEARCH nprobe over 65536", B_SEARCH, 0, P1(40, 4, 65537), 0, 0, BR, 0, 0,
      "nprobe = 65537" },
    { "SEARCH ef below k", B_SEARCH, 0, P1(44, 4, 9), 0, 0, BR, 0, 0, "ef = 9: use 0" },
    { "SEARCH ef 4097", B_SEARCH, 0, P1(44, 4, 4097), 0, 0, BR, 0, 0, "k..4096" },
    { "SEARCH deadline", B_SEARCH, 0, P1(48, 4, 60000001), 0, 0, BR, 0, 0,
      "deadline_us = 60000001" },
    { "SEARCH consistency 2", B_SEARCH, 0, P1(52, 1, 2), 0, 0, BR, 0, 0, "consistency = 2" },
    { "SEARCH class 2", B_SEARCH, 0, P1(53, 1, 2), 0, 0, BR, 0, 0, "class = 2" },
    { "SEARCH sflags bit 1", B_SEARCH, 0, P1(54, 1, 3), 0, 0, BR, 0, 0, "sflags = 0x03" },
    { "SEARCH reserved byte 23", B_SEARCH, 0, P1(55, 1, 1), 0, 0, BR, 0, 0,
      "reserved byte 23" },
    { "SEARCH NaN semantic threshold", B_SEARCH, 0, P1(56, 4, F_NAN), 0, 0, BR, 0, 0,
      "semantic = nan" },
    { "SEARCH Inf semantic threshold", B_SEARCH, 0, P1(56, 4, F_INF), 0, 0, BR, 0, 0,
      "semantic = inf" },
    { "SEARCH negative semantic threshold", B_SEARCH, 0, P1(56, 4, 0xbf800000u), 0, 0, BR, 0,
      0, "semantic = -1" },
    { "SEARCH filter_len 1025", B_SEARCH, 1, P1(60, 2, 1025), 0, 0, BR, 0, 0,
      "filter_len = 1025: use 0..1024" },
    { "SEARCH filter_len past the end", B_SEARCH, 0, P1(60, 2, 1000), 0, 0, BR, 0, 0,
      "filter_len = 1000 runs past the body" },
    { "SEARCH reserved 30", B_SEARCH, 0, P1(62, 2, 1), 0, 0, BR, 0, 0, "reserved bytes 30-31" },
    { "SEARCH NUL in the filter", B_SEARCH, 0, P1(66, 1, 0), 0, 0, BR, 0, 0, "byte 2 is NUL" },
    { "SEARCH nonzero padding", B_SEARCH, 0, P1(70, 1, 0x20), 0, 0, BR, 0, 0,
      "padding after the filter: byte 38" },
    { "SEARCH NaN in the query", B_SEARCH, 0, P1(80, 4, F_NAN), 0, 0, BR, 0, 0,
      "query 0, element 2 = nan" },
    { "SEARCH Inf in the query", B_SEARCH, 0, P1(100, 4, F_NINF), 0, 0, BR, 0, 0,
      "element 7 = -inf" },
    { "SEARCH trailing bytes", B_SEARCH, 0, P1(0, 0, 0), 4, 1, BR, 0, 0,
      "body_len = 76: 1 query of dim 8 with filter_len 5 take 72 bytes" },
    { "SEARCH short query", B_SEARCH, 0, P1(0, 0, 0), -4, 1, BR, 0, 0, "take 72 bytes" },
    /* SEARCH_BATCH */
    { "BATCH nq 0", B_BATCH, 0, P1(72, 4, 0), 0, 0, BR, 0, 0, "nq = 0: use 1..1024" },
    { "BATCH nq 1025", B_BATCH, 1, P1(72, 4, 1025), 0, 0, BR, 0, 0, "nq = 1025: use 1..1024" },
    { "BATCH reserved after nq", B_BATCH, 0, P1(76, 4, 1), 0, 0, BR, 0, 0, "reserved field" },
    { "BATCH body ends before nq", B_BATCH, 0, P1(0, 0, 0), -70, 1, BR, 0, 0,
      "ends before nq" },
    { "BATCH NaN in query 1", B_BATCH, 0, P1(112, 4, F_NAN), 0, 0, BR, 0, 0,
      "query 1, element 0 = nan" },
    { "BATCH UDP response too large", B_BATCH, 0, P1(36, 4, 100), 0, 0, BR, 0, 0,
      "exceeds a UDP datagram" },
    { "BATCH trailing bytes", B_BATCH, 0, P1(0, 0, 0), 8, 1, BR, 0, 0, "take 112 bytes" },
    /* UPSERT */
    { "UPSERT n 0", B_UPSERT, 0, P1(32, 4, 0), 0, 0, BR, 0, 0, "n = 0: use 1..65536" },
    { "UPSERT n 65537", B_UPSERT, 1, P1(32, 4, 65537), 0, 0, BR, 0, 0, "n = 65537" },
    { "UPSERT dim 0", B_UPSERT, 0, P1(36, 4, 0), 0, 0, BR, 0, 0, "dim = 0" },
    { "UPSERT dim 4097", B_UPSERT, 0, P1(36, 4, 4097), 0, 0, BR, 0, 0, "dim = 4097" },
    { "UPSERT too many attributes", B_UPSERT, 0, P1(40, 2, 17), 0, 0, BR, 0, 0,
      "nattrs = 17: use 0..16" },
    { "UPSERT reserved", B_UPSERT, 0, P1(44, 4, 1), 0, 0, BR, 0, 0, "reserved bytes 10-15" },
    { "UPSERT n larger than the body", B_UPSERT, 0, P1(32, 4, 4), 0, 0, BR, 0, 0,
      "n = 4 vectors of dim 3 with 2 attributes take" },
    { "UPSERT trailing bytes", B_UPSERT, 0, P1(0, 0, 0), 8, 1, BR, 0, 0,
      "body_len = 136: n = 3" },
    { "UPSERT id 2^64-1", B_UPSERT, 0, P1(56, 8, UINT64_MAX), 0, 0, BR, 0, 0,
      "ids[1] = 2^64-1" },
    { "UPSERT duplicate ids", B_UPSERT, 0, P1(64, 8, 7), 0, 0, BR, 0, 0,
      "7 appears more than once" },
    { "UPSERT NaN in a vector", B_UPSERT, 0, P1(88, 4, F_NAN), 0, 0, BR, 0, 0,
      "vector 1 (id 1000000007), element 1 = nan" },
    { "UPSERT Inf in a vector", B_UPSERT, 0, P1(104, 4, F_INF), 0, 0, BR, 0, 0,
      "vector 2 (id 3), element 2 = inf" },
    { "UPSERT nonzero padding", B_UPSERT, 0, P1(110, 1, 1), 0, 0, BR, 0, 0,
      "padding after the vectors: byte 78" },
    /* DELETE / GET */
    { "DELETE n 0", B_DELETE, 0, P1(32, 4, 0), 0, 0, BR, 0, 0,
      "DELETE: n = 0: use 1..1048576" },
    { "DELETE n over the limit", B_DELETE, 1, P1(32, 4, 1048577), 0, 0, BR, 0, 0,
      "n = 1048577" },
    { "GET n 4097", B_GET, 1, P1(32, 4, 4097), 0, 0, BR, 0, 0, "GET: n = 4097: use 1..4096" },
    { "GET reserved", B_GET, 0, P1(36, 4, 9), 0, 0, BR, 0, 0, "reserved bytes 4-7" },
    { "GET id 2^64-1", B_GET, 0, P1(48, 8, UINT64_MAX), 0, 0, BR, 0, 0, "ids[1] = 2^64-1" },
    { "DELETE trailing bytes", B_DELETE, 0, P1(0, 0, 0), 8, 1, BR, 0, 0,
      "n = 3 ids take 32 bytes" },
    { "DELETE short body", B_DELETE, 0, P1(0, 0, 0), -28, 1, BR, 0, 0,
      "fixed part alone is 8" },
    /* CREATE */
    { "CREATE dim 0", B_CREATE, 0, P1(32, 4, 0), 0, 0, BR, 0, 0, "CREATE: dim = 0" },
    { "CREATE dim 4097", B_CREATE, 0, P1(32, 4, 4097), 0, 0, BR, 0, 0, "dim = 4097" },
    { "CREATE metric 3", B_CREATE, 0, P1(36, 1, 3), 0, 0, BR, 0, 0, "metric = 3" },
    { "CREATE index 5", B_CREATE, 0, P1(37, 1, 5), 0, 0, BR, 0, 0, "index = 5" },
    { "CREATE too many attributes", B_CREATE, 0, P1(38, 2, 17), 0, 0, BR, 0, 0,
      "nattrs = 17: use 0..16" },
    { "CREATE nlist on FLAT", B_CREATE, 0, P1(40, 4, 16), 0, 0, BR, 0, 0,
      "nlist = 16: FLAT does not take it" },
    { "CREATE nlist 65537", B_CREATE_PQ, 0, P1(40, 4, 65537), 0, 0, BR, 0, 0,
      "nlist = 65537: use 1..65536" },
    { "CREATE nprobe over nlist", B_CREATE_PQ, 0, P1(44, 4, 257), 0, 0, BR, 0, 0,
      "nprobe = 257: use 1..nlist (256)" },
    { "CREATE pq_m not a divisor", B_CREATE_PQ, 0, P1(48, 2, 3), 0, 0, BR, 0, 0,
      "pq_m = 3: IVF_PQ needs a divisor of dim (8)" },
    { "CREATE pq_m 0 on IVF_PQ", B_CREATE_PQ, 0, P1(48, 2, 0), 0, 0, BR, 0, 0, "pq_m = 0" },
    { "CREATE pq_nbits 5", B_CREATE_PQ, 0, P1(50, 1, 5), 0, 0, BR, 0, 0,
      "pq_nbits = 5: use 4 or 8" },
    { "CREATE pq_m on FLAT", B_CREATE, 0, P1(48, 2, 2), 0, 0, BR, 0, 0,
      "pq_m = 2: FLAT does not take it" },
    { "CREATE reserved byte", B_CREATE, 0, P1(51, 1, 1), 0, 0, BR, 0, 0, "reserved byte 19" },
    { "CREATE hnsw_m on FLAT", B_CREATE, 0, P1(52, 2, 16), 0, 0, BR, 0, 0,
      "hnsw_m = 16: FLAT does not take it" },
    { "CREATE hnsw_m 65", B_CREATE_HNSW, 0, P1(52, 2, 65), 0, 0, BR, 0, 0,
      "hnsw_m = 65: use 4..64" },
    { "CREATE hnsw_m 3", B_CREATE_HNSW, 0, P1(52, 2, 3), 0, 0, BR, 0, 0, "hnsw_m = 3" },
    { "CREATE ef_construction below hnsw_m", B_CREATE_HNSW, 0, P1(54, 2, 20), 0, 0, BR, 0, 0,
      "ef_construction = 20: use 32..4096" },
    { "CREATE ef_search 4097", B_CREATE_HNSW, 0, P1(56, 2, 4097), 0, 0, BR, 0, 0,
      "ef_search = 4097" },
    { "CREATE empty name", B_CREATE, 0, P1(58, 2, 0), 0, 0, BR, 0, 0,
      "name_len = 0: use 1..64" },
    { "CREATE name 65 bytes", B_CREATE, 1, P1(58, 2, 65), 0, 0, BR, 0, 0, "name_len = 65" },
    { "CREATE name past the end", B_CREATE, 0, P1(58, 2, 60), 0, 0, BR, 0, 0,
      "name_len = 60 runs past" },
    { "CREATE bad name character", B_CREATE, 0, P1(61, 1, '/'), 0, 0, BR, 0, 0,
      "name: byte 1 = 0x2f: names use A-Z a-z 0-9 _ . -" },
    { "CREATE name ..", B_CREATE, 0, P2(58, 2, 2, 60, 2, 0x2e2e), 0, 0, BR, 0, 0,
      "reserved" },
    { "CREATE attribute name with a dot", B_CREATE, 0, P1(67, 1, '.'), 0, 0, BR, 0, 0,
      "attribute 0: byte 1 = 0x2e" },
    { "CREATE attribute name empty", B_CREATE, 0, P1(64, 2, 0), 0, 0, BR, 0, 0,
      "attribute 0: name_len = 0" },
    { "CREATE attribute is a keyword", B_CREATE, 0, P2(71, 2, 3, 73, 4, 0x746f4e), 0, 0, BR,
      0, 0, "is a keyword" },
    { "CREATE attribute repeated", B_CREATE, 0, P2(71, 2, 5, 73, 8, 0x726f6c6f63), 1, 1, BR,
      0, 0, "attribute 1: \"color\" repeats attribute 0" },
    { "CREATE more attributes than the body", B_CREATE, 0, P1(38, 2, 3), 0, 0, BR, 0, 0,
      "attribute 2: the body" },
    { "CREATE trailing bytes", B_CREATE, 0, P1(0, 0, 0), 3, 1, BR, 0, 0,
      "(3 trailing bytes)" },
    { "CREATE short fixed part", B_CREATE, 0, P1(0, 0, 0), -25, 1, BR, 0, 0,
      "fixed part alone is 28" },
};

/* Apply case c; returns the message length in buf (resize may be +-). */
static size_t make_case(const struct mcase *c)
{
    size_t len = build(c->base, buf);
    if (c->resize > 0) {
        memset(buf + len, 0, (size_t)c->resize);
        len += (size_t)c->resize;
    } else {
        len -= (size_t)(-c->resize);
    }
    if (c->fix_len)
        st32(buf + 24, (uint32_t)(len - QV_PROTO_HDR_SIZE));
    for (int i = 0; i < 3; i++) {
        const struct patch *p = &c->p[i];
        if (p->width)
            memcpy(buf + p->off, &p->val, (size_t)p->width);
    }
    return len;
}

static void test_malformed_table(void)
{
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const struct mcase *c = &cases[i];
        size_t len = make_case(c);
        struct qv_proto_rx rx = rx_of(c->tcp ? QV_PROTO_TCP : QV_PROTO_UDP, NULL);
        struct qv_proto_req r;
        struct qv_proto_err err;
        memset(&err, 0x5a, sizeof err);
        int rc = qv_proto_decode_request(buf, len, &rx, &r, &err);
        int ok = rc == QV_EINVAL && err.status == c->status && err.drop == c->drop &&
                 err.close == c->close && strstr(err.reason, c->substr) != NULL &&
                 err.reason_len == strlen(err.reason);
        if (!ok)
            printf("\n  case \"%s\": rc %d status %u drop %u close %u reason \"%s\"\n",
                   c->name, rc, rc ? err.status : 0, err.drop, err.close,
                   rc ? err.reason : "");
        CU_ASSERT(ok);
        /* the same case through the header parser and body decoders only */
        struct qv_proto_hdr h;
        if (qv_proto_parse_hdr(buf, len, rx.carrier, &h, &err) == 0 && !c->drop) {
            CU_ASSERT_EQUAL(h.request_id, ld32(buf + 8) | (uint64_t)ld32(buf + 12) << 32);
        }
        /* answerable failures echo the request's ids */
        if (!c->drop && len >= QV_PROTO_HDR_SIZE) {
            int64_t n = qv_proto_encode_err(buf2, sizeof buf2, &r.hdr, &err);
            CU_ASSERT(n > QV_PROTO_HDR_SIZE);
            struct qv_proto_resp resp;
            struct qv_proto_err e2;
            /* a header's own defects (version, magic, flags) are echoed
             * as received, so only check what a sound header gives */
            if (r.hdr.magic == QV_PROTO_MAGIC && r.hdr.version == 1 &&
                r.hdr.reserved == 0 && !(r.hdr.flags & ~QV_PROTO_F__KNOWN) &&
                strcmp(qv_proto_opcode_name(r.hdr.opcode), "unknown") &&
                r.hdr.request_id) {
                CU_ASSERT_EQUAL(qv_proto_decode_response(buf2, (size_t)n, QV_PROTO_UDP, NULL,
                                                         &resp, &e2), 0);
                CU_ASSERT(str_eq(resp.u.error.reason, err.reason));
            }
        }
    }
    printf("\n  %zu malformed cases ", sizeof cases / sizeof cases[0]);
}

/* ---- malformed responses ------------------------------------------------ */

static void test_malformed_responses(void)
{
    struct qv_proto_resp r;
    struct qv_proto_err err;
    struct qv_proto_hdr q = req_hdr(QV_PROTO_OP_SEARCH_BATCH, CID);
    uint64_t ids[4] = { 1, 2, 3, 4 };
    float d[4] = { 1, 2, 3, 4 };
    uint8_t rf[2] = { 0, 0 };
    uint32_t n[2] = { 2, 1 };
    int64_t len = qv_proto_encode_search_batch_resp(buf, CAP, &q, 2, 2, rf, n, ids, d);
    CU_ASSERT_FATAL(len > 0);
    /* body: nq 32, k 36, rflags 40-41, pad 42-43, n 44-51, ids 56-87, dist 88-103 */
    CU_ASSERT_EQUAL(len, 104);
    CU_ASSERT_EQUAL(qv_proto_decode_response(buf, (size_t)len, QV_PROTO_UDP, NULL, &r, &err),
                    0);
    buf[80] = 9;    /* ids[3], past n[1] = 1: must be 2^64-1 */
    CU_ASSERT_EQUAL(qv_proto_decode_response(buf, (size_t)len, QV_PROTO_UDP, NULL, &r, &err),
                    QV_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.reason, "row 1, slot 1"));
    CU_ASSERT_EQUAL(err.drop, 1);
    len = qv_proto_encode_search_batch_resp(buf, CAP, &q, 2, 2, rf, n, ids, d);
    st32(buf + 48, 3);  /* n[1] > k */
    CU_ASSERT_EQUAL(qv_proto_decode_response(buf, (size_t)len, QV_PROTO_UDP, NULL, &r, &err),
                    QV_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.reason, "n[1] = 3: at most k = 2"));
    len = qv_proto_encode_search_batch_resp(buf, CAP, &q, 2, 2, rf, n, ids, d);
    buf[42] = 1;        /* padding */
    CU_ASSERT_EQUAL(qv_proto_decode_response(buf, (size_t)len, QV_PROTO_UDP, NULL, &r, &err),
                    QV_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.reason, "padding"));

    /* a request is not a response, a response not a request */
    size_t rl = build(B_PING, buf);
    CU_ASSERT_EQUAL(qv_proto_decode_response(buf, rl, QV_PROTO_UDP, NULL, &r, &err), QV_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.reason, "not set on a response"));
    q = req_hdr(QV_PROTO_OP_PING, 0);
    len = qv_proto_encode_ping_resp(buf, CAP, &q, 1);
    struct qv_proto_rx rx = rx_of(QV_PROTO_UDP, NULL);
    struct qv_proto_req rq;
    CU_ASSERT_EQUAL(qv_proto_decode_request(buf, (size_t)len, &rx, &rq, &err), QV_EINVAL);
    CU_ASSERT_EQUAL(err.drop, 1);
    /* unknown status */
    st16(buf + 6, 10);
    CU_ASSERT_EQUAL(qv_proto_decode_response(buf, (size_t)len, QV_PROTO_UDP, NULL, &r, &err),
                    QV_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.reason, "status = 10"));
    /* error bodies */
    q = req_hdr(QV_PROTO_OP_GET, CID);
    len = qv_proto_encode_error(buf, CAP, &q, QV_PROTO_BUSY, "queue full");
    st16(buf + 32, 11);
    CU_ASSERT_EQUAL(qv_proto_decode_response(buf, (size_t)len, QV_PROTO_UDP, NULL, &r, &err),
                    QV_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.reason, "BUSY response: body_len = 12"));
    len = qv_proto_encode_not_primary(buf, CAP, &q, "h:1", "moved");
    st16(buf + 32, 300);
    CU_ASSERT_EQUAL(qv_proto_decode_response(buf, (size_t)len, QV_PROTO_UDP, NULL, &r, &err),
                    QV_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.reason, "address length = 300"));
    /* GET: found must be 0/1, a row not found must be zeros */
    uint64_t gids[2] = { 1, 2 };
    uint8_t found[2] = { 1, 0 };
    float gv[4] = { 1, 2, 3, 4 };
    len = qv_proto_encode_get_resp(buf, CAP, &q, 2, 2, gids, found, gv);
    CU_ASSERT_EQUAL(qv_proto_decode_response(buf, (size_t)len, QV_PROTO_UDP, NULL, &r, &err),
                    0);
    buf[32 + 24] = 2;
    CU_ASSERT_EQUAL(qv_proto_decode_response(buf, (size_t)len, QV_PROTO_UDP, NULL, &r, &err),
                    QV_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.reason, "found[0] = 2"));
    len = qv_proto_encode_get_resp(buf, CAP, &q, 2, 2, gids, found, gv);
    buf[len - 1] = 1;
    CU_ASSERT_EQUAL(qv_proto_decode_response(buf, (size_t)len, QV_PROTO_UDP, NULL, &r, &err),
                    QV_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.reason, "vector 1 is not found"));
}

/* ---- TCP framing --------------------------------------------------------- */

static void test_tcp_framing(void)
{
    /* three messages back to back on a stream: SEARCH, PING, UPSERT */
    size_t l1 = build(B_SEARCH, buf), l2, l3;
    l2 = build(B_PING, buf + l1);
    uint8_t tmp[256];
    l3 = build(B_UPSERT, tmp);
    /* keep the third 8-byte aligned in the stream: 104 + 32 = 136 */
    memcpy(buf + l1 + l2, tmp, l3);
    size_t total = l1 + l2 + l3;
    struct qv_proto_rx rx = rx_of(QV_PROTO_TCP, NULL);
    struct qv_proto_req r;
    struct qv_proto_err err;
    size_t off = 0;
    int seen = 0;
    while (off < total) {
        /* feed it byte by byte: the need says when a frame is complete */
        size_t have = 0;
        while (have < total - off && qv_proto_tcp_need(buf + off, have) > have)
            have++;
        CU_ASSERT_EQUAL_FATAL(qv_proto_tcp_need(buf + off, have), have);
        CU_ASSERT_EQUAL(qv_proto_decode_request(buf + off, total - off, &rx, &r, &err), 0);
        CU_ASSERT_EQUAL(r.hdr.msg_len, have);
        off += have;
        seen++;
    }
    CU_ASSERT_EQUAL(seen, 3);
    CU_ASSERT_EQUAL(qv_proto_tcp_need(buf, 0), 32);
    CU_ASSERT_EQUAL(qv_proto_tcp_need(buf, 31), 32);
    CU_ASSERT_EQUAL(qv_proto_tcp_need(NULL, 100), 32);
    /* untrusted headers need only the header: the parser refuses them */
    build(B_SEARCH, buf);
    st32(buf + 24, (64u << 20) + 1);
    CU_ASSERT_EQUAL(qv_proto_tcp_need(buf, 32), 32);
    build(B_SEARCH, buf);
    buf[0] ^= 1;
    CU_ASSERT_EQUAL(qv_proto_tcp_need(buf, 32), 32);
    /* a signed message needs its tag */
    size_t l = build(B_SEARCH, buf);
    st16(buf + 4, QV_PROTO_F_AUTH);
    CU_ASSERT_EQUAL(qv_proto_tcp_need(buf, 32), l + 32);
}

/* ---- auth ---------------------------------------------------------------- */

static void test_auth(void)
{
    static const unsigned char keybytes[32] = "0123456789abcdef0123456789abcdef";
    static unsigned char longkey[100];
    struct qv_proto_key key, other, lk;
    CU_ASSERT_EQUAL(qv_proto_key_init(&key, keybytes, sizeof keybytes), 0);
    CU_ASSERT_EQUAL(qv_proto_key_init(&other, "another key, 24 bytes...", 24), 0);
    CU_ASSERT_EQUAL(qv_proto_key_init(&lk, keybytes, 15), QV_EINVAL);
    for (int i = 0; i < 100; i++)
        longkey[i] = (unsigned char)(i * 7);
    CU_ASSERT_EQUAL(qv_proto_key_init(&lk, longkey, sizeof longkey), 0);

    /* known answer: the tag is OpenSSL's HMAC-SHA256 over header + body */
    size_t len = build(B_SEARCH, buf);
    int64_t sl = qv_proto_sign(buf, CAP, len, &key);
    CU_ASSERT_EQUAL_FATAL(sl, (int64_t)len + 32);
    CU_ASSERT(buf[4] & QV_PROTO_F_AUTH);
    unsigned char want[32];
    unsigned int wl = 0;
    HMAC(EVP_sha256(), keybytes, sizeof keybytes, buf, len, want, &wl);
    CU_ASSERT_EQUAL(wl, 32);
    CU_ASSERT_EQUAL(memcmp(buf + len, want, 32), 0);
    size_t l2 = build(B_PING, buf2);
    CU_ASSERT_EQUAL(qv_proto_sign(buf2, CAP, l2, &lk), (int64_t)l2 + 32);
    HMAC(EVP_sha256(), longkey, sizeof longkey, buf2, l2, want, &wl);
    CU_ASSERT_EQUAL(memcmp(buf2 + l2, want, 32), 0);

    struct qv_proto_req r;
    struct qv_proto_err err;
    struct qv_proto_rx keyed = rx_of(QV_PROTO_UDP, &key), open = rx_of(QV_PROTO_UDP, NULL);
    /* good tag */
    CU_ASSERT_EQUAL(qv_proto_verify(buf, (size_t)sl, &key), 0);
    CU_ASSERT_EQUAL(qv_proto_decode_request(buf, (size_t)sl, &keyed, &r, &err), 0);
    CU_ASSERT_EQUAL(r.u.search.k, 10);
    /* tag with no key configured: ignored */
    CU_ASSERT_EQUAL(qv_proto_decode_request(buf, (size_t)sl, &open, &r, &err), 0);
    /* wrong key */
    CU_ASSERT_EQUAL(qv_proto_verify(buf, (size_t)sl, &other), QV_EINVAL);
    struct qv_proto_rx wrong = rx_of(QV_PROTO_UDP, &other);
    CU_ASSERT_EQUAL(qv_proto_decode_request(buf, (size_t)sl, &wrong, &r, &err), QV_EINVAL);
    CU_ASSERT_EQUAL(err.status, QV_PROTO_UNAUTHORIZED);
    CU_ASSERT_EQUAL(err.drop, 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.reason, "tag does not match"));
    /* wrong tag byte; a changed body byte */
    buf[len + 5] ^= 0x10;
    CU_ASSERT_EQUAL(qv_proto_decode_request(buf, (size_t)sl, &keyed, &r, &err), QV_EINVAL);
    CU_ASSERT_EQUAL(err.status, QV_PROTO_UNAUTHORIZED);
    buf[len + 5] ^= 0x10;
    buf[36] ^= 1;
    CU_ASSERT_EQUAL(qv_proto_decode_request(buf, (size_t)sl, &keyed, &r, &err), QV_EINVAL);
    CU_ASSERT_EQUAL(err.status, QV_PROTO_UNAUTHORIZED);
    buf[36] ^= 1;
    CU_ASSERT_EQUAL(qv_proto_decode_request(buf, (size_t)sl, &keyed, &r, &err), 0);
    /* the tag is checked before the body: a bad body with a bad tag says
     * UNAUTHORIZED, not what is wrong with the body */
    buf[36] = 0;    /* k = 0 */
    CU_ASSERT_EQUAL(qv_proto_decode_request(buf, (size_t)sl, &keyed, &r, &err), QV_EINVAL);
    CU_ASSERT_EQUAL(err.status, QV_PROTO_UNAUTHORIZED);
    /* missing tag with a key */
    len = build(B_SEARCH, buf);
    CU_ASSERT_EQUAL(qv_proto_decode_request(buf, len, &keyed, &r, &err), QV_EINVAL);
    CU_ASSERT_EQUAL(err.status, QV_PROTO_UNAUTHORIZED);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.reason, "requires signed requests"));
    /* AUTH flag without the tag's bytes: the datagram is 32 short */
    st16(buf + 4, QV_PROTO_F_AUTH);
    CU_ASSERT_EQUAL(qv_proto_decode_request(buf, len, &keyed, &r, &err), QV_EINVAL);
    CU_ASSERT_EQUAL(err.status, QV_PROTO_BAD_REQUEST);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.reason, "+ 32 tag"));
    /* re-signing after RETRY; sign refuses a small buffer or a bad length */
    len = build(B_SEARCH, buf);
    sl = qv_proto_sign(buf, CAP, len, &key);
    qv_proto_set_retry(buf);
    CU_ASSERT_EQUAL(qv_proto_decode_request(buf, (size_t)sl, &keyed, &r, &err), QV_EINVAL);
    CU_ASSERT_EQUAL(qv_proto_sign(buf, CAP, (size_t)sl, &key), sl);
    CU_ASSERT_EQUAL(qv_proto_decode_request(buf, (size_t)sl, &keyed, &r, &err), 0);
    CU_ASSERT(r.hdr.flags & QV_PROTO_F_RETRY);
    CU_ASSERT_EQUAL(qv_proto_sign(buf, len + 31, len, &key), QV_ENOSPC);
    CU_ASSERT_EQUAL(qv_proto_sign(buf, CAP, len + 1, &key), QV_EINVAL);
    CU_ASSERT_EQUAL(qv_proto_verify(buf, (size_t)sl - 1, &key), QV_EINVAL);
    /* UDP: a signed request must still fit the datagram */
    CU_ASSERT_EQUAL(qv_proto_check_auth(&r.hdr, buf, NULL, &err), 0);

    /* responses: a keyed client verifies */
    struct qv_proto_hdr q = req_hdr(QV_PROTO_OP_PING, 0);
    int64_t n = qv_proto_encode_ping_resp(buf, CAP, &q, 5);
    struct qv_proto_resp resp;
    CU_ASSERT_EQUAL(qv_proto_decode_response(buf, (size_t)n, QV_PROTO_UDP, &key, &resp, &err),
                    QV_EINVAL);
    CU_ASSERT_EQUAL(err.status, QV_PROTO_UNAUTHORIZED);
    n = qv_proto_sign(buf, CAP, (size_t)n, &key);
    CU_ASSERT_EQUAL(qv_proto_decode_response(buf, (size_t)n, QV_PROTO_UDP, &key, &resp, &err),
                    0);
    CU_ASSERT_EQUAL(resp.u.ping.uptime_ms, 5);
    CU_ASSERT_EQUAL(qv_proto_decode_response(buf, (size_t)n, QV_PROTO_UDP, &other, &resp,
                                             &err), QV_EINVAL);
    CU_ASSERT_EQUAL(qv_proto_decode_response(buf, (size_t)n, QV_PROTO_UDP, NULL, &resp, &err),
                    0);
    qv_proto_key_fini(&key);
    static const struct qv_proto_key zero;
    CU_ASSERT_EQUAL(memcmp(&key, &zero, sizeof key), 0);
    qv_proto_key_fini(&other);
    qv_proto_key_fini(&lk);
}

/* ---- alignment and scratch ----------------------------------------------- */

static void test_alignment(void)
{
    static _Alignas(64) uint8_t raw[512];
    struct qv_proto_req r;
    struct qv_proto_err err;
    for (int b = 0; b < B__COUNT; b++) {
        size_t len = build((enum base)b, buf);
        for (int shift = 1; shift < 8; shift++) {
            memcpy(raw + shift, buf, len);
            /* a small scratch at an odd address, as a dataplane might give */
            struct qv_proto_rx rx = { QV_PROTO_UDP, NULL, scratch + 3, QV_PROTO_SCRATCH_UDP };
            CU_ASSERT_EQUAL(qv_proto_decode_request(raw + shift, len, &rx, &r, &err), 0);
            if (b == B_SEARCH) {
                CU_ASSERT_EQUAL((uintptr_t)r.u.search.queries % 8, 0);
                CU_ASSERT((const uint8_t *)r.u.search.queries >= scratch &&
                          (const uint8_t *)r.u.search.queries < scratch + QV_PROTO_SCRATCH_UDP);
                CU_ASSERT_EQUAL(memcmp(r.u.search.queries, qvec, 32), 0);
            }
            if (b == B_UPSERT)
                CU_ASSERT_EQUAL((uintptr_t)r.u.upsert.ids % 8, 0);
            size_t need = qv_proto_scratch_need(&r.hdr, raw + shift);
            CU_ASSERT(need <= QV_PROTO_SCRATCH_UDP);
            /* exactly that much suffices at every scratch alignment */
            for (int so = 0; so < 8; so++) {
                struct qv_proto_rx tight = { QV_PROTO_UDP, NULL, scratch + so, need };
                CU_ASSERT_EQUAL(qv_proto_decode_request(raw + shift, len, &tight, &r, &err), 0);
            }
        }
    }
    /* too little scratch: INTERNAL, not the client's fault */
    size_t len = build(B_SEARCH, buf);
    memcpy(raw + 4, buf, len);
    struct qv_proto_rx rx = { QV_PROTO_UDP, NULL, scratch, 64 };
    CU_ASSERT_EQUAL(qv_proto_decode_request(raw + 4, len, &rx, &r, &err), QV_ENOSPC);
    CU_ASSERT_EQUAL(err.status, QV_PROTO_INTERNAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.reason, "misaligned"));
    rx.scratch = NULL;
    CU_ASSERT_EQUAL(qv_proto_decode_request(raw + 4, len, &rx, &r, &err), QV_ENOSPC);
    /* the body decoder alone refuses a misaligned message */
    struct qv_proto_hdr h;
    CU_ASSERT_EQUAL_FATAL(qv_proto_parse_hdr(raw + 4, len, QV_PROTO_UDP, &h, &err), 0);
    struct qv_proto_search s;
    CU_ASSERT_EQUAL(qv_proto_decode_search(&h, raw + 4, QV_PROTO_UDP, &s, &err), QV_EINVAL);
    CU_ASSERT_EQUAL(err.status, QV_PROTO_INTERNAL);
    /* CREATE has no typed arrays: no copy, no scratch needed */
    len = build(B_CREATE, buf);
    memcpy(raw + 1, buf, len);
    CU_ASSERT_EQUAL(qv_proto_decode_request(raw + 1, len, &rx, &r, &err), 0);
    CU_ASSERT(r.u.create.name.s == (const char *)raw + 61);
    /* UPSERT needs scratch for its id check even when aligned */
    len = build(B_UPSERT, buf);
    CU_ASSERT_EQUAL(qv_proto_parse_hdr(buf, len, QV_PROTO_UDP, &h, &err), 0);
    CU_ASSERT_EQUAL(qv_proto_scratch_need(&h, buf), 16 * 3 + 7);
    rx.scratch = scratch + 1;
    rx.scratch_cap = 16 * 3 + 6;
    CU_ASSERT_EQUAL(qv_proto_decode_request(buf, len, &rx, &r, &err), QV_ENOSPC);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.reason, "needs 55 bytes of scratch"));
    rx.scratch_cap = 16 * 3 + 7;
    CU_ASSERT_EQUAL(qv_proto_decode_request(buf, len, &rx, &r, &err), 0);
}

/* ---- UPSERT duplicates on the radix path ----------------------------------- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void)
{
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

static void test_upsert_ids(void)
{
    enum { N = 20000, DIM = 2 };
    static uint64_t ids[N];
    static float vec[N * DIM];
    static _Alignas(8) uint8_t big[16 + 8 * N + 4 * N * DIM + 64 + 32];
    struct qv_proto_upsert u;
    memset(&u, 0, sizeof u);
    u.n = N;
    u.dim = DIM;
    u.ids = ids;
    u.vectors = vec;
    for (int i = 0; i < N * DIM; i++)
        vec[i] = (float)i;
    struct qv_proto_rx rx = rx_of(QV_PROTO_TCP, NULL);
    struct qv_proto_req r;
    struct qv_proto_err err;
    /* three id shapes: dense small, random 64-bit, only high bytes differ */
    for (int shape = 0; shape < 3; shape++) {
        for (uint64_t i = 0; i < N; i++)
            ids[i] = shape == 0 ? N - 1 - i : shape == 1 ? rnd() >> 1 : (i + 1) << 48 | 0xabc;
        int64_t n = qv_proto_encode_upsert(big, sizeof big, RID, CID, &u);
        CU_ASSERT_FATAL(n > 0);
        CU_ASSERT_EQUAL(qv_proto_decode_request(big, (size_t)n, &rx, &r, &err), 0);
        /* a duplicate far apart; then one in neighbouring slots */
        uint64_t keep = ids[N - 1];
        ids[N - 1] = ids[17];
        n = qv_proto_encode_upsert(big, sizeof big, RID, CID, &u);
        CU_ASSERT_EQUAL(qv_proto_decode_request(big, (size_t)n, &rx, &r, &err), QV_EINVAL);
        char want[64];
        snprintf(want, sizeof want, "%llu appears more than once", (unsigned long long)ids[17]);
        CU_ASSERT_PTR_NOT_NULL(strstr(err.reason, want));
        ids[N - 1] = keep;
        ids[5001] = ids[5000];
        n = qv_proto_encode_upsert(big, sizeof big, RID, CID, &u);
        CU_ASSERT_EQUAL(qv_proto_decode_request(big, (size_t)n, &rx, &r, &err), QV_EINVAL);
    }
    /* ids that differ only in the top bit, and 0 next to 2^64-2 */
    uint64_t few[4] = { 0, UINT64_MAX - 1, 1ull << 63, 0 };
    u.n = 4;
    u.ids = few;
    int64_t n = qv_proto_encode_upsert(big, sizeof big, RID, CID, &u);
    CU_ASSERT_EQUAL(qv_proto_decode_request(big, (size_t)n, &rx, &r, &err), QV_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.reason, "0 appears more than once"));
    few[3] = 5;
    n = qv_proto_encode_upsert(big, sizeof big, RID, CID, &u);
    CU_ASSERT_EQUAL(qv_proto_decode_request(big, (size_t)n, &rx, &r, &err), 0);
}

/* ---- encoders' limits ------------------------------------------------------ */

static void test_encoder_limits(void)
{
    /* every encoder: one byte short is ENOSPC */
    struct qv_proto_hdr q = req_hdr(QV_PROTO_OP_SEARCH, CID);
    for (int b = 0; b < B__COUNT; b++) {
        size_t len = build((enum base)b, buf);
        struct qv_proto_rx rx = rx_of(QV_PROTO_UDP, NULL);
        struct qv_proto_req r;
        struct qv_proto_err err;
        CU_ASSERT_EQUAL_FATAL(qv_proto_decode_request(buf, len, &rx, &r, &err), 0);
        CU_ASSERT_EQUAL(reencode(&r, buf2, len - 1), QV_ENOSPC);
        CU_ASSERT_EQUAL(reencode(&r, buf2, len), (int64_t)len);
    }
    uint64_t ids[2] = { 1, 2 };
    float d[2] = { 0, 1 };
    CU_ASSERT_EQUAL(qv_proto_encode_search_resp(buf, 32 + 8 + 24 - 1, &q, 2, 0, ids, d),
                    QV_ENOSPC);
    CU_ASSERT_EQUAL(qv_proto_encode_search_resp(buf, CAP, &q, 1025, 0, ids, d), QV_EINVAL);
    CU_ASSERT_EQUAL(qv_proto_encode_search_resp(buf, CAP, &q, 2, 0, NULL, d), QV_EINVAL);
    CU_ASSERT_EQUAL(qv_proto_encode_ping_resp(buf, 47, &q, 1), QV_ENOSPC);
    CU_ASSERT_EQUAL(qv_proto_encode_create_resp(buf, CAP, &q, 0), QV_EINVAL);
    CU_ASSERT_EQUAL(qv_proto_encode_empty_req(buf, CAP, QV_PROTO_OP_SEARCH, 1, 1), QV_EINVAL);
    CU_ASSERT_EQUAL(qv_proto_encode_empty_req(buf, 31, QV_PROTO_OP_PING, 1, 0), QV_ENOSPC);
    struct qv_proto_search s = search_of(8, 2);
    CU_ASSERT_EQUAL(qv_proto_encode_search(buf, CAP, 1, 1, &s), QV_EINVAL);   /* nq 2 */
    s.nq = 1;
    s.dim = 4097;
    CU_ASSERT_EQUAL(qv_proto_encode_search(buf, CAP, 1, 1, &s), QV_EINVAL);
    struct qv_proto_create c = create_flat();
    c.name.len = 65;
    CU_ASSERT_EQUAL(qv_proto_encode_create(buf, CAP, 1, &c), QV_EINVAL);
    c = create_flat();
    c.nattrs = 17;
    CU_ASSERT_EQUAL(qv_proto_encode_create(buf, CAP, 1, &c), QV_EINVAL);
    struct qv_proto_upsert u = upsert_base();
    u.n = 65536;
    u.dim = 4096;   /* 1 GiB body: over the TCP limit */
    CU_ASSERT_EQUAL(qv_proto_encode_upsert(buf, CAP, 1, 1, &u), QV_EINVAL);
    struct qv_proto_ids many = { QV_PROTO_MAX_GET + 1, ids };
    CU_ASSERT_EQUAL(qv_proto_encode_get(buf, CAP, 1, 1, &many), QV_EINVAL);
    /* sizes the server checks before answering over UDP */
    CU_ASSERT_EQUAL(qv_proto_search_resp_size(100), 1208);
    CU_ASSERT(32 + qv_proto_search_resp_size(QV_PROTO_UDP_MAX_K) + 32 <= QV_PROTO_UDP_MAX);
    CU_ASSERT_EQUAL(qv_proto_search_batch_resp_size(3, 4), 24 + 144);
    CU_ASSERT_EQUAL(qv_proto_get_resp_size(3, 3), 36 + 36);
    CU_ASSERT(qv_proto_get_resp_size(4096, 4096) > QV_PROTO_TCP_MAX_BODY);
    struct qv_proto_desc dd = desc_of(1, "x");
    dd.name.len = 0;
    CU_ASSERT_EQUAL(qv_proto_encode_describe_resp(buf, CAP, &q, &dd), QV_EINVAL);
}

/* ---- fuzz ------------------------------------------------------------------ */

/* Response bases for the fuzz: one of every kind. */
static size_t build_resp(int i, uint8_t *out)
{
    struct qv_proto_hdr q;
    uint64_t ids[6] = { 1, 2, 3, 4, 5, 6 };
    float d[6] = { 0.5f, 1, 2, 3, 4, 5 };
    uint8_t rf[2] = { 1, 2 }, found[2] = { 1, 0 };
    uint32_t n[2] = { 3, 1 };
    struct qv_proto_desc ds[2] = { desc_of(1, "first"), desc_of(2, "second") };
    int64_t len = -1;
    switch (i) {
    case 0: q = req_hdr(QV_PROTO_OP_PING, 0); len = qv_proto_encode_ping_resp(out, CAP, &q, 9);
        break;
    case 1: q = req_hdr(QV_PROTO_OP_STATS, 0);
        len = qv_proto_encode_stats_resp(out, CAP, &q, "{\"a\":1}", 7);
        break;
    case 2: q = req_hdr(QV_PROTO_OP_CREATE, 0);
        len = qv_proto_encode_create_resp(out, CAP, &q, 77);
        break;
    case 3: q = req_hdr(QV_PROTO_OP_DROP, CID); len = qv_proto_encode_empty_resp(out, CAP, &q);
        break;
    case 4: q = req_hdr(QV_PROTO_OP_LIST, 0);
        len = qv_proto_encode_list_resp(out, CAP, &q, ds, 2);
        break;
    case 5: q = req_hdr(QV_PROTO_OP_DESCRIBE, CID);
        len = qv_proto_encode_describe_resp(out, CAP, &q, &ds[1]);
        break;
    case 6: q = req_hdr(QV_PROTO_OP_UPSERT, CID);
        len = qv_proto_encode_write_resp(out, CAP, &q, 3, 8);
        break;
    case 7: q = req_hdr(QV_PROTO_OP_GET, CID);
        len = qv_proto_encode_get_resp(out, CAP, &q, 2, 3, ids, found, d);
        break;
    case 8: q = req_hdr(QV_PROTO_OP_SEARCH, CID);
        len = qv_proto_encode_search_resp(out, CAP, &q, 3, 1, ids, d);
        break;
    case 9: q = req_hdr(QV_PROTO_OP_SEARCH_BATCH, CID);
        len = qv_proto_encode_search_batch_resp(out, CAP, &q, 2, 3, rf, n, ids, d);
        break;
    case 10: q = req_hdr(QV_PROTO_OP_SEARCH, CID);
        len = qv_proto_encode_error(out, CAP, &q, QV_PROTO_TIMEOUT, "deadline passed");
        break;
    default: q = req_hdr(QV_PROTO_OP_DELETE, CID);
        len = qv_proto_encode_not_primary(out, CAP, &q, "[::1]:7700", "moved");
        break;
    }
    CU_ASSERT_FATAL(len > 0);
    return (size_t)len;
}
#define NRESP 12

/* Re-encode a decoded response (flags RESPONSE only). */
static int64_t reencode_resp(const struct qv_proto_resp *r, uint8_t *out, size_t cap)
{
    const struct qv_proto_hdr *h = &r->hdr;
    char a[QV_PROTO_MAX_ADDR + 1], s[QV_PROTO_MAX_REASON + 1];
    if (h->status != QV_PROTO_OK) {
        memcpy(s, r->u.error.reason.s, r->u.error.reason.len);
        s[r->u.error.reason.len] = 0;
        if (h->status != QV_PROTO_NOT_PRIMARY)
            return qv_proto_encode_error(out, cap, h, (enum qv_proto_status)h->status, s);
        memcpy(a, r->u.error.primary.s, r->u.error.primary.len);
        a[r->u.error.primary.len] = 0;
        return qv_proto_encode_not_primary(out, cap, h, a, s);
    }
    switch (h->opcode) {
    case QV_PROTO_OP_PING: return qv_proto_encode_ping_resp(out, cap, h, r->u.ping.uptime_ms);
    case QV_PROTO_OP_STATS:
        return qv_proto_encode_stats_resp(out, cap, h, r->u.stats.s, r->u.stats.len);
    case QV_PROTO_OP_CREATE:
        return qv_proto_encode_create_resp(out, cap, h, r->u.collection_id);
    case QV_PROTO_OP_DROP: return qv_proto_encode_empty_resp(out, cap, h);
    case QV_PROTO_OP_DESCRIBE: return qv_proto_encode_describe_resp(out, cap, h, &r->u.desc);
    case QV_PROTO_OP_LIST: {
        static struct qv_proto_desc ds[64];
        uint32_t n = 0;
        size_t cur = 0;
        while (n < 64 && qv_proto_list_next(&r->u.list, &cur, &ds[n]))
            n++;
        if (n != r->u.list.n)
            return -1;
        return qv_proto_encode_list_resp(out, cap, h, ds, n);
    }
    case QV_PROTO_OP_UPSERT:
    case QV_PROTO_OP_DELETE:
        return qv_proto_encode_write_resp(out, cap, h, r->u.write.count, r->u.write.epoch);
    case QV_PROTO_OP_GET:
        return qv_proto_encode_get_resp(out, cap, h, r->u.get.n, r->u.get.dim, r->u.get.ids,
                                        r->u.get.found, r->u.get.vectors);
    case QV_PROTO_OP_SEARCH:
        return qv_proto_encode_search_resp(out, cap, h, r->u.search.n[0],
                                           r->u.search.rflags[0], r->u.search.ids,
                                           r->u.search.dist);
    default:
        return qv_proto_encode_search_batch_resp(out, cap, h, r->u.search.nq, r->u.search.k,
                                                 r->u.search.rflags, r->u.search.n,
                                                 r->u.search.ids, r->u.search.dist);
    }
}

/* Mutate msg (len bytes, capacity cap) in place; returns the new length. */
static size_t mutate(uint8_t *msg, size_t len, size_t cap)
{
    int kinds = 1 + (int)(rnd() % 3);
    for (int k = 0; k < kinds; k++) {
        uint64_t x = rnd();
        switch (x % 8) {
        case 0: case 1:     /* bit flips */
            for (int i = 0; i < 1 + (int)((x >> 8) % 3) && len; i++) {
                uint64_t y = rnd();
                msg[y % len] ^= (uint8_t)(1u << ((y >> 32) % 8));
            }
            break;
        case 2:             /* a byte to a boundary value */
            if (len) {
                static const uint8_t v[] = { 0, 1, 0x7f, 0x80, 0xff, 0xfe };
                msg[(x >> 8) % len] = v[(x >> 40) % sizeof v];
            }
            break;
        case 3:             /* truncation */
            len = len ? (size_t)((x >> 8) % len) : 0;
            break;
        case 4: {           /* growth, zeros or garbage */
            size_t add = (size_t)((x >> 8) % 40);
            if (len + add > cap)
                add = cap - len;
            for (size_t i = 0; i < add; i++)
                msg[len + i] = (x >> 20) & 1 ? (uint8_t)rnd() : 0;
            len += add;
            break;
        }
        case 5:             /* body_len: small edit, random, or made to match */
            if (len >= 32) {
                uint32_t bl = ld32(msg + 24), r = (uint32_t)(x >> 8) % 3;
                bl = r == 0 ? bl + (uint32_t)((int)((x >> 16) % 17) - 8)
                   : r == 1 ? (uint32_t)(x >> 24) : (uint32_t)(len - 32);
                st32(msg + 24, bl);
            }
            break;
        case 6:             /* a count field in the body (32, 36, 40, 72, ...) */
            if (len >= 48) {
                static const int offs[] = { 32, 36, 38, 40, 58, 60, 64, 72, 76 };
                int o = offs[(x >> 8) % (sizeof offs / sizeof offs[0])];
                uint32_t v = (x >> 16) & 1 ? (uint32_t)((x >> 20) % 8) : (uint32_t)(x >> 24);
                if ((size_t)o + 4 <= len)
                    memcpy(msg + o, &v, (x >> 17) & 1 ? 2 : 4);
            }
            break;
        default:            /* a random byte */
            if (len)
                msg[(x >> 8) % len] = (uint8_t)(x >> 40);
            break;
        }
    }
    return len;
}

static void test_fuzz(void)
{
    enum { ITERS = 600000 };
    static uint8_t base[CAP], work[2048];
    struct qv_proto_key key;
    CU_ASSERT_EQUAL(qv_proto_key_init(&key, "fuzz key fuzz key fuzz key", 26), 0);
    uint64_t ok = 0, fail = 0, resp_ok = 0;
    for (uint64_t it = 0; it < ITERS; it++) {
        int response = it % 4 == 3;
        int which = (int)(rnd() % (response ? NRESP : B__COUNT));
        size_t len = response ? build_resp(which, base) : build((enum base)which, base);
        int signed_ = !response && it % 7 == 0;
        if (signed_)
            len = (size_t)qv_proto_sign(base, CAP, len, &key);
        if (len > sizeof work - 64)
            continue;
        memcpy(work, base, len);
        len = mutate(work, len, sizeof work - 64);
        /* an exact-size heap copy: any read past the end trips ASan;
         * sometimes misaligned, for the copying path */
        int shift = (rnd() % 5 == 0) ? 1 + (int)(rnd() % 7) : 0;
        uint8_t *mem = malloc(len + (size_t)shift + 1);
        CU_ASSERT_PTR_NOT_NULL_FATAL(mem);
        uint8_t *msg = mem + shift;
        memcpy(msg, work, len);
        enum qv_proto_carrier car = (it >> 3) & 1 ? QV_PROTO_TCP : QV_PROTO_UDP;
        struct qv_proto_err err;
        if (!response) {
            struct qv_proto_rx rx = rx_of(car, signed_ ? &key : NULL);
            rx.scratch_cap = car == QV_PROTO_UDP ? QV_PROTO_SCRATCH_UDP : sizeof scratch;
            struct qv_proto_req r;
            int rc = qv_proto_decode_request(msg, len, &rx, &r, &err);
            if (rc == 0) {
                ok++;
                int same = same_as_reencoded(msg, &r);
                CU_ASSERT(same);
                if (!same)
                    printf("\n  fuzz %llu: decoded but re-encodes differently (op 0x%02x)\n",
                           (unsigned long long)it, r.hdr.opcode);
            } else {
                fail++;
                CU_ASSERT(rc == QV_EINVAL || rc == QV_ENOSPC);
                CU_ASSERT(err.status != QV_PROTO_OK && err.status < QV_PROTO_STATUS__COUNT);
                CU_ASSERT(err.reason_len > 0 && err.reason_len == strlen(err.reason));
                if (!err.drop && len >= 32) {
                    int64_t n = qv_proto_encode_err(buf2, sizeof buf2, &r.hdr, &err);
                    CU_ASSERT(n > 32);
                }
            }
        } else if (shift == 0) {
            struct qv_proto_resp r;
            int rc = qv_proto_decode_response(msg, len, car, NULL, &r, &err);
            if (rc == 0) {
                resp_ok++;
                int64_t n = reencode_resp(&r, buf2, sizeof buf2);
                int same = n == (int64_t)(32 + r.hdr.body_len) &&
                           memcmp(buf2, msg, 4) == 0 &&
                           memcmp(buf2 + 6, msg + 6, (size_t)n - 6) == 0;
                if (r.hdr.status == QV_PROTO_OK && r.hdr.opcode == QV_PROTO_OP_PING)
                    same = n == 48;     /* versions is the server's constant */
                CU_ASSERT(same);
                if (!same)
                    printf("\n  fuzz %llu: response decoded but re-encodes differently "
                           "(op 0x%02x status %u)\n", (unsigned long long)it, r.hdr.opcode,
                           r.hdr.status);
            } else {
                fail++;
                CU_ASSERT(err.drop == 1 && err.reason_len > 0);
            }
        }
        free(mem);
    }
    qv_proto_key_fini(&key);
    printf("\n  %d mutations: %llu requests and %llu responses decoded (re-encode to the "
           "same bytes), %llu refused ", ITERS, (unsigned long long)ok,
           (unsigned long long)resp_ok, (unsigned long long)fail);
    CU_ASSERT(ok > 1000 && resp_ok > 1000 && fail > 100000);
}

/* ---- the decode cost ---------------------------------------------------- */

static void test_decode_cost(void)
{
    static _Alignas(64) uint8_t dg[QV_PROTO_UDP_MAX];
    struct qv_proto_search s = search_of(128, 1);
    s.filter.len = 0;
    s.filter.s = NULL;
    int64_t len = qv_proto_encode_search(dg, sizeof dg, RID, CID, &s);
    CU_ASSERT_EQUAL_FATAL(len, 32 + 32 + 512);
    struct qv_proto_rx rx = rx_of(QV_PROTO_UDP, NULL);
    struct qv_proto_req r;
    struct qv_proto_err err;
    enum { REPS = 200000 };
    uint64_t sum = 0;
    int64_t t0 = qv_now_ns();
    for (int i = 0; i < REPS; i++) {
        dg[8] = (uint8_t)(i | 1);   /* defeat hoisting */
        sum += (uint64_t)qv_proto_decode_request(dg, (size_t)len, &rx, &r, &err) +
               r.u.search.k;
    }
    double plain = (double)(qv_now_ns() - t0) / REPS;
    CU_ASSERT_EQUAL(sum, (uint64_t)REPS * 10);

    struct qv_proto_key key;
    qv_proto_key_init(&key, "0123456789abcdef0123456789abcdef", 32);
    int64_t sl = qv_proto_sign(dg, sizeof dg, (size_t)len, &key);
    rx.key = &key;
    enum { AREPS = 50000 };
    sum = 0;
    t0 = qv_now_ns();
    for (int i = 0; i < AREPS; i++)
        sum += (uint64_t)qv_proto_decode_request(dg, (size_t)sl, &rx, &r, &err) +
               r.u.search.k;
    double authed = (double)(qv_now_ns() - t0) / AREPS;
    CU_ASSERT_EQUAL(sum, (uint64_t)AREPS * 10);

    /* misaligned: the copy into scratch */
    static _Alignas(64) uint8_t mis[QV_PROTO_UDP_MAX + 8];
    len = qv_proto_encode_search(mis + 2, sizeof mis - 2, RID, CID, &s);
    rx.key = NULL;
    rx.scratch_cap = QV_PROTO_SCRATCH_UDP;
    sum = 0;
    t0 = qv_now_ns();
    for (int i = 0; i < REPS; i++)
        sum += (uint64_t)qv_proto_decode_request(mis + 2, (size_t)len, &rx, &r, &err) +
               r.u.search.k;
    double copied = (double)(qv_now_ns() - t0) / REPS;
    CU_ASSERT_EQUAL(sum, (uint64_t)REPS * 10);
    printf("\n  decode of a 128-d SEARCH datagram (576 bytes): %.0f ns; misaligned "
           "(copied): %.0f ns; with an HMAC-SHA256 tag: %.0f ns ", plain, copied, authed);
    qv_proto_key_fini(&key);
}

int main(void)
{
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 1;
    CU_pSuite s = CU_add_suite("proto", NULL, NULL);
    CU_add_test(s, "every request opcode round trips", test_request_round_trip);
    CU_add_test(s, "every response opcode round trips; errors", test_response_round_trip);
    CU_add_test(s, "malformed requests: status, drop/close, reason", test_malformed_table);
    CU_add_test(s, "malformed responses are refused", test_malformed_responses);
    CU_add_test(s, "TCP framing: need, back-to-back messages", test_tcp_framing);
    CU_add_test(s, "auth: HMAC known answer, wrong / missing tag, no key", test_auth);
    CU_add_test(s, "misaligned buffers are copied into scratch", test_alignment);
    CU_add_test(s, "UPSERT duplicate ids on the radix path", test_upsert_ids);
    CU_add_test(s, "encoders: capacity and limits", test_encoder_limits);
    CU_add_test(s, "fuzz: mutations decode canonically or fail", test_fuzz);
    CU_add_test(s, "decode cost of a 128-d SEARCH datagram", test_decode_cost);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failed = CU_get_number_of_failures();
    int err = CU_get_error();
    CU_cleanup_registry();
    return failed || err ? 1 : 0;
}
