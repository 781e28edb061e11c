/*
 * proto.h - the wire protocol, version 1 (docs/PROTOCOL.md): constants,
 * and an encoder/decoder of every message.  The one header that the
 * server, the DPDK dataplane and the client library (libquiver) share.
 *
 * The codec is pure: no allocation, no locks, no syscalls, no global or
 * thread-local state.  Every function works on buffers the caller owns,
 * in O(message) time (UPSERT's duplicate-id check: O(n) radix passes over
 * a caller scratch), and is thread-safe on distinct buffers.  The design
 * (layouts as OFFSET / SIZE tables, the validation order, the choices the
 * spec left open) is described at the top of host/proto/proto_int.h.
 *
 * Receiving a request (server, dataplane):
 *
 *     struct qv_proto_rx rx = { .carrier = QV_PROTO_UDP, .key = key_or_NULL,
 *                               .scratch = per_core_scratch,
 *                               .scratch_cap = QV_PROTO_SCRATCH_UDP };
 *     struct qv_proto_req req;
 *     struct qv_proto_err err;
 *     if (qv_proto_decode_request(msg, len, &rx, &req, &err) < 0) {
 *         if (!err.drop)      // answer, echoing req.hdr's ids
 *             n = qv_proto_encode_err(out, cap, &req.hdr, &err);
 *         if (err.close) ...  // TCP: close after the answer
 *     }
 *
 * Zero copy.  Decoded arrays (ids, vectors, queries, names, filter text)
 * point into the message: it must stay alive and unchanged while the
 * decoded struct is used.  The spec puts every array at an offset that is
 * a multiple of its element size, so a message in an 8-byte aligned
 * buffer is read in place.  A message in a misaligned buffer (a UDP
 * payload in an mbuf sits 42 bytes past the data offset) is never read
 * through misaligned typed pointers: qv_proto_decode_request copies it
 * whole into the caller's scratch (8-byte aligned) and the pointers then
 * point there; the per-opcode decoders refuse it (QV_EINVAL, INTERNAL).
 *
 * Names and filter text are NOT NUL-terminated: struct qv_proto_str is a
 * pointer and a length.  A little-endian host is assumed (the build
 * refuses others): wire integers are read with memcpy, arrays in place.
 */
#ifndef QUIVER_PROTO_H
#define QUIVER_PROTO_H

#include <stddef.h>
#include <stdint.h>

/* ---- constants: framing and limits (docs/PROTOCOL.md "Limits") -------- */

#define QV_PROTO_MAGIC          0x5651u     /* the bytes 'Q' 'V' */
#define QV_PROTO_VERSION        1
#define QV_PROTO_VERSIONS       (1u << QV_PROTO_VERSION)  /* PING's bitmask */
#define QV_PROTO_HDR_SIZE       32
#define QV_PROTO_TAG_SIZE       32          /* HMAC-SHA256, after the body */
#define QV_PROTO_UDP_MAX        1472        /* whole datagram, tag included */
#define QV_PROTO_TCP_MAX_BODY   (64u << 20) /* body_len on TCP */

#define QV_PROTO_MAX_DIM        4096
#define QV_PROTO_MAX_K          1024
#define QV_PROTO_UDP_MAX_K      100         /* SEARCH over UDP */
#define QV_PROTO_MAX_NQ         1024        /* queries per SEARCH_BATCH */
#define QV_PROTO_MAX_UPSERT     65536       /* vectors per UPSERT */
#define QV_PROTO_MAX_DELETE     1048576     /* ids per DELETE */
#define QV_PROTO_MAX_GET        4096        /* ids per GET */
#define QV_PROTO_MAX_FILTER     1024        /* filter text bytes */
#define QV_PROTO_MAX_NAME       64          /* collection / attribute name */
#define QV_PROTO_MAX_ATTRS      16          /* == QV_FILTER_MAX_ATTRS */
#define QV_PROTO_MAX_REASON     512         /* error reason bytes */
#define QV_PROTO_MAX_ADDR       256         /* NOT_PRIMARY host:port bytes */
#define QV_PROTO_MAX_NLIST      65536
#define QV_PROTO_MAX_EF         4096        /* ef, ef_search, ef_construction */
#define QV_PROTO_MIN_EF_CONSTRUCTION 8
#define QV_PROTO_MIN_HNSW_M     4
#define QV_PROTO_MAX_HNSW_M     64
#define QV_PROTO_MAX_DEADLINE_US 60000000u
#define QV_PROTO_ID_NONE        UINT64_MAX  /* never a vector id */
#define QV_PROTO_MIN_KEY        16          /* auth key bytes, at least */

/* CREATE's "0 = default" fields, resolved by the server. */
#define QV_PROTO_DEFAULT_NPROBE 16
#define QV_PROTO_DEFAULT_HNSW_M 16
#define QV_PROTO_DEFAULT_EF_CONSTRUCTION 200
#define QV_PROTO_DEFAULT_EF_SEARCH 64

/*
 * Scratch for qv_proto_decode_request (struct qv_proto_rx): UDP: enough
 * for any datagram, aligned or not (a misaligned copy + UPSERT's id
 * check).  TCP: enough for any message in an 8-byte aligned buffer
 * (UPSERT's id check, 16 bytes per id + 7); a misaligned TCP buffer
 * needs msg_len + 7 more.  qv_proto_scratch_need() gives the figure for
 * one message (enough at any scratch alignment).
 */
#define QV_PROTO_SCRATCH_UDP    4096
#define QV_PROTO_SCRATCH_TCP    (16u * QV_PROTO_MAX_UPSERT)

/* ---- enums ------------------------------------------------------------ */

enum qv_proto_carrier {
    QV_PROTO_UDP = 0,           /* one message per datagram, exact length */
    QV_PROTO_TCP = 1,           /* messages back to back on a stream */
};

enum qv_proto_opcode {
    QV_PROTO_OP_PING = 0x01,
    QV_PROTO_OP_STATS = 0x02,
    QV_PROTO_OP_CREATE = 0x10,
    QV_PROTO_OP_DROP = 0x11,
    QV_PROTO_OP_LIST = 0x12,
    QV_PROTO_OP_DESCRIBE = 0x13,
    QV_PROTO_OP_UPSERT = 0x20,
    QV_PROTO_OP_DELETE = 0x21,
    QV_PROTO_OP_GET = 0x22,
    QV_PROTO_OP_SEARCH = 0x30,
    QV_PROTO_OP_SEARCH_BATCH = 0x31,
};

enum qv_proto_status {
    QV_PROTO_OK = 0,
    QV_PROTO_BAD_REQUEST = 1,
    QV_PROTO_NOT_FOUND = 2,
    QV_PROTO_BUSY = 3,
    QV_PROTO_TIMEOUT = 4,
    QV_PROTO_UNAVAILABLE = 5,
    QV_PROTO_UNAUTHORIZED = 6,
    QV_PROTO_NOT_PRIMARY = 7,
    QV_PROTO_EXISTS = 8,
    QV_PROTO_INTERNAL = 9,
    QV_PROTO_STATUS__COUNT
};

/* Header flags. */
#define QV_PROTO_F_RESPONSE     0x0001u
#define QV_PROTO_F_AUTH         0x0002u
#define QV_PROTO_F_RETRY        0x0004u
#define QV_PROTO_F__KNOWN       0x0007u

/* SEARCH sflags and response rflags. */
#define QV_PROTO_SF_SEMANTIC    0x01u   /* semantic cache allowed */
#define QV_PROTO_RF_CACHED      0x01u   /* from the exact result cache */
#define QV_PROTO_RF_APPROX      0x02u   /* from the semantic cache */

enum qv_proto_metric {          /* same values as enum qv_metric (dist.h) */
    QV_PROTO_METRIC_L2 = 0,
    QV_PROTO_METRIC_IP = 1,
    QV_PROTO_METRIC_COSINE = 2,
};

enum qv_proto_index {
    QV_PROTO_INDEX_FLAT = 0,
    QV_PROTO_INDEX_IVF = 1,
    QV_PROTO_INDEX_IVF_SQ8 = 2,
    QV_PROTO_INDEX_IVF_PQ = 3,
    QV_PROTO_INDEX_HNSW = 4,
};

enum qv_proto_consistency {
    QV_PROTO_CONS_ANY = 0,      /* any replica, may lag */
    QV_PROTO_CONS_PRIMARY = 1,  /* reads its own writes */
};

enum qv_proto_class {
    QV_PROTO_CLASS_INTERACTIVE = 0,
    QV_PROTO_CLASS_BULK = 1,
};

/* ---- header and errors ------------------------------------------------ */

/* The 32-byte header, decoded; msg_len is derived, not on the wire. */
struct qv_proto_hdr {
    uint16_t magic;
    uint8_t version;
    uint8_t opcode;             /* enum qv_proto_opcode */
    uint16_t flags;             /* QV_PROTO_F_* */
    uint16_t status;            /* enum qv_proto_status; requests: 0 */
    uint64_t request_id;
    uint64_t collection_id;
    uint32_t body_len;          /* the tag not included */
    uint32_t reserved;
    size_t msg_len;             /* 32 + body_len (+ 32 with AUTH) */
};

/*
 * What a failed decode says to do.  status: the code to answer (requests;
 * for a malformed response it is BAD_REQUEST and drop is set).  drop: do
 * not answer (too short for a header, wrong magic on UDP).  close: TCP:
 * the stream lost its framing (or ended inside a message): close the
 * connection, after the answer unless drop.  reason: NUL-terminated, at
 * most QV_PROTO_MAX_REASON bytes, naming the field and what is allowed,
 * e.g. "SEARCH: k = 0: use 1..1024".
 */
struct qv_proto_err {
    uint16_t status;
    uint8_t drop;
    uint8_t close;
    uint16_t reason_len;
    char reason[QV_PROTO_MAX_REASON + 1];
};

/* Bytes, not NUL-terminated, pointing into a message (or, for encoders,
 * into the caller's memory). */
struct qv_proto_str {
    const char *s;
    uint32_t len;
};

/*
 * qv_proto_parse_hdr - decode and validate a request's header, in the
 * spec's order: length (>= 32), magic, version, reserved, flags (unknown
 * bits, RESPONSE set), opcode, body_len (UDP: 32 + body_len (+ 32 with
 * AUTH) == len, len <= 1472; TCP: body_len <= 64 MiB; len may be shorter
 * than the message or hold more after it), status 0, request_id != 0,
 * collection_id (0 for PING, CREATE, LIST; != 0 for a collection's
 * opcodes; either for STATS).
 * *hdr gets every raw field it could read (all of them once len >= 32),
 * even on failure, so an answer can echo request_id and collection_id.
 * Returns 0, or QV_EINVAL with *err filled (drop: len < 32, wrong magic on
 * UDP, RESPONSE set (answering could make two servers answer each other
 * for ever); close on TCP: len < 32, wrong magic, other version, body_len
 * over the limit).  O(1).
 */
int qv_proto_parse_hdr(const void *buf, size_t len, enum qv_proto_carrier carrier,
                       struct qv_proto_hdr *hdr, struct qv_proto_err *err);

/*
 * qv_proto_parse_resp_hdr - the client's side: the same checks, except
 * that RESPONSE must be set, status is one of enum qv_proto_status and
 * collection_id is not checked.  Returns 0 or QV_EINVAL (err: drop = 1,
 * close on TCP when the framing is lost).
 */
int qv_proto_parse_resp_hdr(const void *buf, size_t len, enum qv_proto_carrier carrier,
                            struct qv_proto_hdr *hdr, struct qv_proto_err *err);

/*
 * qv_proto_tcp_need - TCP framing: how many bytes, counted from buf, the
 * message starting at buf occupies.  With len < 32: 32 (read the header
 * first).  Otherwise 32 + body_len (+ 32 with AUTH); but a header the
 * framing cannot trust (wrong magic, other version, body_len over the
 * limit) gives 32, so the caller goes on to qv_proto_parse_hdr, which
 * refuses it.  Read until len >= the result, then decode.  O(1), cannot
 * fail.
 */
size_t qv_proto_tcp_need(const void *buf, size_t len);

/* "SEARCH", "BAD_REQUEST", ...; "unknown" outside the enums.  Static. */
const char *qv_proto_opcode_name(unsigned opcode);
const char *qv_proto_status_name(unsigned status);

/* ---- authentication (flag AUTH) --------------------------------------- */

/*
 * A key prepared for HMAC-SHA256: the SHA-256 states after the inner and
 * outer padded key, so each message costs no key schedule and no
 * allocation.  Treat as opaque; init/fini use the caller's memory.
 */
struct qv_proto_key {
    _Alignas(16) unsigned char inner[128];
    _Alignas(16) unsigned char outer[128];
};

/*
 * qv_proto_key_init - prepare key[keylen] (keys over 64 bytes are hashed,
 * as HMAC does).  Returns 0, or QV_EINVAL when keylen < QV_PROTO_MIN_KEY
 * (16; use 32 random bytes).  qv_proto_key_fini wipes it.  A prepared key
 * is read-only afterwards: share it between threads freely.
 */
int qv_proto_key_init(struct qv_proto_key *k, const void *key, size_t keylen);
void qv_proto_key_fini(struct qv_proto_key *k);

/*
 * qv_proto_sign - sign the message in buf: set AUTH in its header, write
 * the 32-byte HMAC-SHA256 tag over header + body at offset 32 + body_len.
 * len is the message's length without a tag or with one (a message signed
 * before, e.g. re-signed after setting RETRY: the tag is recomputed).
 * Returns the signed length (32 + body_len + 32), QV_ENOSPC when cap is
 * smaller, QV_EINVAL when buf does not hold a header of that body_len.
 * O(message).
 */
int64_t qv_proto_sign(void *buf, size_t cap, size_t len, const struct qv_proto_key *k);

/*
 * qv_proto_verify - 0 when msg (msg_len bytes: the whole message, tag
 * included) has AUTH set and its tag matches (constant-time compare);
 * QV_EINVAL otherwise.  O(message).
 */
int qv_proto_verify(const void *msg, size_t msg_len, const struct qv_proto_key *k);

/*
 * qv_proto_check_auth - the server's rule for a parsed request: with a key
 * (k != NULL) the request must carry a tag that verifies, else
 * UNAUTHORIZED; without a key a tag is ignored.  msg holds at least
 * hdr->msg_len bytes.  Returns 0 or QV_EINVAL with *err.
 */
int qv_proto_check_auth(const struct qv_proto_hdr *hdr, const void *msg,
                        const struct qv_proto_key *k, struct qv_proto_err *err);

/* qv_proto_set_retry - set RETRY in the header of msg (re-sign after it
 * when the message carries AUTH). */
void qv_proto_set_retry(void *msg);

/* ---- requests ---------------------------------------------------------- */

/* CREATE.  0 in nlist, nprobe, hnsw_m, ef_construction, ef_search means
 * "the default" (QV_PROTO_DEFAULT_*; nlist: chosen at the first train);
 * the server resolves them. */
struct qv_proto_create {
    uint32_t dim;
    uint8_t metric;             /* enum qv_proto_metric */
    uint8_t index;              /* enum qv_proto_index */
    uint16_t nattrs;            /* 0..16 */
    uint32_t nlist;
    uint32_t nprobe;
    uint16_t pq_m;
    uint8_t pq_nbits;
    uint16_t hnsw_m;
    uint16_t ef_construction;
    uint16_t ef_search;
    struct qv_proto_str name;
    struct qv_proto_str attrs[QV_PROTO_MAX_ATTRS];  /* nattrs names */
};

/* SEARCH (nq = 1, queries = the query) and SEARCH_BATCH. */
struct qv_proto_search {
    uint32_t dim;               /* 1..4096: the server checks the collection's */
    uint32_t k;
    uint32_t nprobe;            /* 0 = default; the server checks <= nlist */
    uint32_t ef;                /* 0 = default, else k..4096 */
    uint32_t deadline_us;       /* 0 = the class's budget */
    uint8_t consistency;        /* enum qv_proto_consistency */
    uint8_t qclass;             /* enum qv_proto_class */
    uint8_t sflags;             /* QV_PROTO_SF_* */
    float semantic;             /* threshold, finite, >= 0 */
    struct qv_proto_str filter; /* filter.h syntax, no NUL; len 0 = none */
    uint32_t nq;                /* queries: 1 for SEARCH */
    const float *queries;       /* nq x dim floats, row-major, finite */
};

/* UPSERT.  attrs[a] is column a: n values, for a < nattrs. */
struct qv_proto_upsert {
    uint32_t n;
    uint32_t dim;               /* the server checks the collection's */
    uint16_t nattrs;            /* the server checks the collection's */
    const uint64_t *ids;        /* n ids, unique, never QV_PROTO_ID_NONE */
    const float *vectors;       /* n x dim floats, row-major, finite */
    const int64_t *attrs[QV_PROTO_MAX_ATTRS];
};

/* DELETE and GET. */
struct qv_proto_ids {
    uint32_t n;
    const uint64_t *ids;        /* never QV_PROTO_ID_NONE; repeats allowed */
};

/* A decoded request: the header and the body of hdr.opcode (PING, STATS,
 * DROP, LIST, DESCRIBE have none). */
struct qv_proto_req {
    struct qv_proto_hdr hdr;
    union {
        struct qv_proto_create create;
        struct qv_proto_search search;      /* SEARCH, SEARCH_BATCH */
        struct qv_proto_upsert upsert;
        struct qv_proto_ids ids;            /* DELETE, GET */
    } u;
};

/* What the receiver brings to qv_proto_decode_request. */
struct qv_proto_rx {
    enum qv_proto_carrier carrier;
    const struct qv_proto_key *key;     /* NULL: no auth key configured */
    void *scratch;                      /* any alignment */
    size_t scratch_cap;                 /* bytes; see QV_PROTO_SCRATCH_* */
};

/*
 * qv_proto_decode_request - the whole receive path: qv_proto_parse_hdr,
 * then (TCP) the message must be complete in len (else BAD_REQUEST, close:
 * the stream ended inside it), then qv_proto_check_auth, then (misaligned
 * msg) a copy into the scratch, then the opcode's body decoder.  On UDP
 * len is the datagram; on TCP bytes past hdr.msg_len are not looked at.
 * Pointers in *req point into msg or into rx->scratch.
 * Returns 0; QV_EINVAL with *err (the message breaks the protocol or its
 * auth; req->hdr holds what could be read, for the answer); QV_ENOSPC
 * with *err (status INTERNAL: the scratch is too small for this message).
 * TCP: after a failure without err->close the framing holds: the next
 * message starts req->hdr.msg_len bytes after msg.  O(message).
 */
int qv_proto_decode_request(const void *msg, size_t len, const struct qv_proto_rx *rx,
                            struct qv_proto_req *req, struct qv_proto_err *err);

/* Scratch the request in msg (header parsed into hdr, whole message in
 * memory) needs for qv_proto_decode_request, at any scratch alignment:
 * msg_len + 7 when msg is misaligned and the body has arrays, plus
 * 16 n + 7 for an UPSERT of n ids. */
size_t qv_proto_scratch_need(const struct qv_proto_hdr *hdr, const void *msg);

/*
 * Body decoders, one per opcode.  hdr was accepted by qv_proto_parse_hdr;
 * msg holds the whole message (hdr->msg_len bytes) and, for the decoders
 * that return arrays, is 8-byte aligned (else QV_EINVAL, status INTERNAL).
 * Fields are checked in the order of the spec's tables; the first wrong
 * one decides.  Context checks (dim and nattrs equal the collection's,
 * nprobe <= its nlist, the collection exists) are the server's.
 * Each returns 0 or QV_EINVAL with *err (status BAD_REQUEST).  O(body).
 *
 * qv_proto_decode_empty: PING, STATS, DROP, LIST, DESCRIBE (body_len 0).
 * qv_proto_decode_search: SEARCH and SEARCH_BATCH (by hdr->opcode); on UDP
 *   k <= 100 and a batch's response must fit a datagram.
 * qv_proto_decode_upsert: the duplicate-id check sorts a copy of the ids
 *   in scratch (16 bytes per id, any alignment: 16 n + 7); a smaller
 *   scratch gives QV_ENOSPC, status INTERNAL.  O(n) (radix passes).
 * qv_proto_decode_ids: DELETE and GET.
 */
int qv_proto_decode_empty(const struct qv_proto_hdr *hdr, const void *msg,
                          struct qv_proto_err *err);
int qv_proto_decode_create(const struct qv_proto_hdr *hdr, const void *msg,
                           struct qv_proto_create *out, struct qv_proto_err *err);
int qv_proto_decode_search(const struct qv_proto_hdr *hdr, const void *msg,
                           enum qv_proto_carrier carrier, struct qv_proto_search *out,
                           struct qv_proto_err *err);
int qv_proto_decode_upsert(const struct qv_proto_hdr *hdr, const void *msg,
                           void *scratch, size_t scratch_cap,
                           struct qv_proto_upsert *out, struct qv_proto_err *err);
int qv_proto_decode_ids(const struct qv_proto_hdr *hdr, const void *msg,
                        struct qv_proto_ids *out, struct qv_proto_err *err);

/*
 * Request encoders (the client).  Each writes one whole message into
 * buf[cap] (any alignment; 8-byte aligned keeps the receiver's copy away)
 * with flags 0 and status 0, and returns its length, or QV_ENOSPC (cap too
 * small), QV_EINVAL (a count or length the layout cannot carry: over the
 * spec's limit for n, nq, dim, nattrs, names, filter, or a NULL array).
 * They do not check values (k range, NaN, duplicate ids): a client that
 * wants the server's verdict early decodes its own message.  Sign after
 * encoding with qv_proto_sign.
 *
 * qv_proto_encode_empty_req: PING, STATS, DROP, LIST, DESCRIBE.
 * qv_proto_encode_search: SEARCH (s->nq must be 1).
 * qv_proto_encode_search_batch: SEARCH_BATCH (s->nq queries).
 */
int64_t qv_proto_encode_empty_req(void *buf, size_t cap, enum qv_proto_opcode op,
                                  uint64_t request_id, uint64_t collection_id);
int64_t qv_proto_encode_create(void *buf, size_t cap, uint64_t request_id,
                               const struct qv_proto_create *c);
int64_t qv_proto_encode_search(void *buf, size_t cap, uint64_t request_id,
                               uint64_t collection_id, const struct qv_proto_search *s);
int64_t qv_proto_encode_search_batch(void *buf, size_t cap, uint64_t request_id,
                                     uint64_t collection_id, const struct qv_proto_search *s);
int64_t qv_proto_encode_upsert(void *buf, size_t cap, uint64_t request_id,
                               uint64_t collection_id, const struct qv_proto_upsert *u);
int64_t qv_proto_encode_delete(void *buf, size_t cap, uint64_t request_id,
                               uint64_t collection_id, const struct qv_proto_ids *ids);
int64_t qv_proto_encode_get(void *buf, size_t cap, uint64_t request_id,
                            uint64_t collection_id, const struct qv_proto_ids *ids);

/* ---- responses --------------------------------------------------------- */

/* PING. */
struct qv_proto_ping_resp {
    uint32_t versions;          /* bit v = protocol version v supported */
    uint64_t uptime_ms;
};

/* DESCRIBE's descriptor, and each of LIST's. */
struct qv_proto_desc {
    uint64_t collection_id;
    uint32_t dim;
    uint8_t metric;
    uint8_t index;
    uint16_t nattrs;
    uint64_t rows;              /* live vectors */
    uint64_t epoch;             /* bumped by every write */
    uint32_t nlist;
    uint32_t nprobe;
    uint16_t pq_m;
    uint8_t pq_nbits;
    uint8_t trained;            /* 0 / 1 */
    uint16_t hnsw_m;
    uint16_t ef_construction;
    uint16_t ef_search;
    struct qv_proto_str name;
    struct qv_proto_str attrs[QV_PROTO_MAX_ATTRS];
};

/* LIST: n descriptors, read one at a time with qv_proto_list_next. */
struct qv_proto_list_resp {
    uint32_t n;
    const uint8_t *descs;       /* the encoded descriptors */
    size_t descs_len;
};

/* UPSERT (count = upserted) and DELETE (count = deleted). */
struct qv_proto_write_resp {
    uint32_t count;
    uint64_t epoch;             /* after the write */
};

/* GET. */
struct qv_proto_get_resp {
    uint32_t n;
    uint32_t dim;
    const uint64_t *ids;        /* n, as asked */
    const uint8_t *found;       /* n, 0 / 1 */
    const float *vectors;       /* n x dim, zeros where not found */
};

/* SEARCH (nq = 1, k = n[0]: the row holds exactly the results) and
 * SEARCH_BATCH (rows of k; row i: n[i] results then (ID_NONE, +inf)). */
struct qv_proto_search_resp {
    uint32_t nq;
    uint32_t k;                 /* row stride of ids and dist */
    const uint8_t *rflags;      /* nq, QV_PROTO_RF_* */
    const uint32_t *n;          /* nq result counts, each <= k */
    const uint64_t *ids;        /* nq x k */
    const float *dist;          /* nq x k, ascending within a row */
};

/* Any status but OK: the reason; NOT_PRIMARY also the primary's address. */
struct qv_proto_error_resp {
    struct qv_proto_str primary;    /* NOT_PRIMARY: host:port; else empty */
    struct qv_proto_str reason;
};

/* A decoded response: which member is valid follows hdr.status (not OK:
 * error) and hdr.opcode. */
struct qv_proto_resp {
    struct qv_proto_hdr hdr;
    union {
        struct qv_proto_error_resp error;
        struct qv_proto_ping_resp ping;
        struct qv_proto_str stats;          /* the JSON document */
        uint64_t collection_id;             /* CREATE */
        struct qv_proto_desc desc;          /* DESCRIBE */
        struct qv_proto_list_resp list;
        struct qv_proto_write_resp write;   /* UPSERT, DELETE */
        struct qv_proto_get_resp get;
        struct qv_proto_search_resp search; /* SEARCH, SEARCH_BATCH */
    } u;
};

/*
 * Sizes of the variable responses' bodies, for a server deciding whether
 * an answer fits (a UDP datagram: QV_PROTO_UDP_MAX - 32 (- 32 with AUTH);
 * TCP: QV_PROTO_TCP_MAX_BODY) before doing the work.  Pure, O(1).
 */
uint64_t qv_proto_search_resp_size(uint32_t n);
uint64_t qv_proto_search_batch_resp_size(uint32_t nq, uint32_t k);
uint64_t qv_proto_get_resp_size(uint32_t n, uint32_t dim);

/*
 * Response encoders (the server).  req is the request's header (as
 * qv_proto_parse_hdr left it, even after a failure): the response echoes
 * its opcode, request_id and collection_id, with flags RESPONSE and the
 * status.  Each writes buf[cap] and returns the length, or QV_ENOSPC (cap
 * too small: e.g. a UDP datagram; answer with an error instead), or
 * QV_EINVAL (a count over the spec's limits, a NULL array).  Sign with
 * qv_proto_sign when the server has a key.
 *
 * qv_proto_encode_empty_resp: OK with an empty body (DROP).
 * qv_proto_encode_get_resp: vectors holds n x dim floats (rows whose
 *   found[i] is 0 are not read; zeros are written).
 * qv_proto_encode_search_resp: n <= QV_PROTO_MAX_K results.
 * qv_proto_encode_search_batch_resp: ids/dist are nq x k; row i's first
 *   n[i] entries are copied, the rest written as (ID_NONE, +inf).
 * qv_proto_encode_error: status != OK and != NOT_PRIMARY; reason is
 *   NUL-terminated, cut at 512 bytes on a UTF-8 character boundary.
 * qv_proto_encode_not_primary: addr "host:port" (at most 256 bytes).
 * qv_proto_encode_err: the answer to a failed decode (err->status and
 *   reason).
 */
int64_t qv_proto_encode_empty_resp(void *buf, size_t cap, const struct qv_proto_hdr *req);
int64_t qv_proto_encode_ping_resp(void *buf, size_t cap, const struct qv_proto_hdr *req,
                                  uint64_t uptime_ms);
int64_t qv_proto_encode_stats_resp(void *buf, size_t cap, const struct qv_proto_hdr *req,
                                   const char *json, size_t len);
int64_t qv_proto_encode_create_resp(void *buf, size_t cap, const struct qv_proto_hdr *req,
                                    uint64_t collection_id);
int64_t qv_proto_encode_describe_resp(void *buf, size_t cap, const struct qv_proto_hdr *req,
                                      const struct qv_proto_desc *d);
int64_t qv_proto_encode_list_resp(void *buf, size_t cap, const struct qv_proto_hdr *req,
                                  const struct qv_proto_desc *descs, uint32_t n);
int64_t qv_proto_encode_write_resp(void *buf, size_t cap, const struct qv_proto_hdr *req,
                                   uint32_t count, uint64_t epoch);
int64_t qv_proto_encode_get_resp(void *buf, size_t cap, const struct qv_proto_hdr *req,
                                 uint32_t n, uint32_t dim, const uint64_t *ids,
                                 const uint8_t *found, const float *vectors);
int64_t qv_proto_encode_search_resp(void *buf, size_t cap, const struct qv_proto_hdr *req,
                                    uint32_t n, uint8_t rflags, const uint64_t *ids,
                                    const float *dist);
int64_t qv_proto_encode_search_batch_resp(void *buf, size_t cap,
                                          const struct qv_proto_hdr *req, uint32_t nq,
                                          uint32_t k, const uint8_t *rflags,
                                          const uint32_t *n, const uint64_t *ids,
                                          const float *dist);
int64_t qv_proto_encode_error(void *buf, size_t cap, const struct qv_proto_hdr *req,
                              enum qv_proto_status status, const char *reason);
int64_t qv_proto_encode_not_primary(void *buf, size_t cap, const struct qv_proto_hdr *req,
                                    const char *addr, const char *reason);
int64_t qv_proto_encode_err(void *buf, size_t cap, const struct qv_proto_hdr *req,
                            const struct qv_proto_err *err);

/*
 * qv_proto_decode_response - the client's receive path: the response
 * header (qv_proto_parse_resp_hdr), TCP completeness, the tag when k is
 * not NULL (a response without a valid tag is refused), then the body:
 * the error body when status is not OK, else the opcode's.  msg must be
 * 8-byte aligned when the body holds arrays (OK answers to SEARCH,
 * SEARCH_BATCH, GET); otherwise QV_EINVAL.  Responses are checked for structure
 * (lengths, counts within the limits, reserved bytes and padding zero,
 * flags known, the filler of short rows), not for values.
 * Returns 0 or QV_EINVAL with *err (drop = 1).  O(message).
 */
int qv_proto_decode_response(const void *msg, size_t len, enum qv_proto_carrier carrier,
                             const struct qv_proto_key *k, struct qv_proto_resp *resp,
                             struct qv_proto_err *err);

/* The body decoders it uses, per kind (hdr accepted, whole message in
 * msg); same returns.  qv_proto_decode_search_resp serves SEARCH and
 * SEARCH_BATCH, qv_proto_decode_write_resp UPSERT and DELETE. */
int qv_proto_decode_error_resp(const struct qv_proto_hdr *hdr, const void *msg,
                               struct qv_proto_error_resp *out, struct qv_proto_err *err);
int qv_proto_decode_ping_resp(const struct qv_proto_hdr *hdr, const void *msg,
                              struct qv_proto_ping_resp *out, struct qv_proto_err *err);
int qv_proto_decode_stats_resp(const struct qv_proto_hdr *hdr, const void *msg,
                               struct qv_proto_str *json, struct qv_proto_err *err);
int qv_proto_decode_create_resp(const struct qv_proto_hdr *hdr, const void *msg,
                                uint64_t *collection_id, struct qv_proto_err *err);
int qv_proto_decode_describe_resp(const struct qv_proto_hdr *hdr, const void *msg,
                                  struct qv_proto_desc *out, struct qv_proto_err *err);
int qv_proto_decode_list_resp(const struct qv_proto_hdr *hdr, const void *msg,
                              struct qv_proto_list_resp *out, struct qv_proto_err *err);
int qv_proto_decode_write_resp(const struct qv_proto_hdr *hdr, const void *msg,
                               struct qv_proto_write_resp *out, struct qv_proto_err *err);
int qv_proto_decode_get_resp(const struct qv_proto_hdr *hdr, const void *msg,
                             struct qv_proto_get_resp *out, struct qv_proto_err *err);
int qv_proto_decode_search_resp(const struct qv_proto_hdr *hdr, const void *msg,
                                struct qv_proto_search_resp *out, struct qv_proto_err *err);

/*
 * qv_proto_list_next - the descriptor at *cursor (start at 0) of a decoded
 * LIST, advancing *cursor.  Returns 1 with *out, 0 after the last one.
 * Cannot fail (qv_proto_decode_list_resp checked them all).
 */
int qv_proto_list_next(const struct qv_proto_list_resp *l, size_t *cursor,
                       struct qv_proto_desc *out);

#endif
