/*
 * proto_int.h - internals of the protocol codec (see quiver/proto.h;
 * the normative text is docs/PROTOCOL.md).
 *
 * Files.  proto.c: header, framing, the receive paths that tie the steps
 * together, error bodies, names.  proto_req.c: request bodies, both ways.
 * proto_resp.c: OK response bodies, both ways.  proto_auth.c: HMAC-SHA256.
 * Encoders and decoders of one body share the layout helpers below, so
 * the two sides cannot disagree on an offset.
 *
 * Header (every message):
 *
 *   OFFSET  SIZE  MEANING
 *   0       2     magic 0x5651
 *   2       1     version 1
 *   3       1     opcode
 *   4       2     flags: RESPONSE 0x1, AUTH 0x2, RETRY 0x4
 *   6       2     status (requests 0)
 *   8       8     request_id (!= 0)
 *   16      8     collection_id
 *   24      4     body_len (tag excluded)
 *   28      4     reserved 0
 *   32      body_len   body
 *   32+body_len   32   tag, with AUTH: HMAC-SHA256(key, header + body)
 *
 * Request bodies with arrays (offsets from the body, which starts at 32):
 *
 *   SEARCH / SEARCH_BATCH          UPSERT
 *   0   32   fixed part            0         4      n
 *   32  F    filter text           4         4      dim
 *   ..  pad  zeros to 4            8         2      nattrs
 *   S   4    nq      (BATCH only)  10        2+4    reserved
 *   S+4 4    reserved (BATCH only) 16        8n     ids
 *   Q   4 nq dim   queries         16+8n     4n dim vectors
 *   S = 32 + round4(F); Q = S (SEARCH) or S + 8 (BATCH)
 *                                  V = round8(16 + 8n + 4n dim): zeros up to V
 *   DELETE / GET: 0 n, 4 reserved, 8 ids[n].     V  8 nattrs n  attrs, by column
 *
 * Response bodies with arrays:
 *
 *   SEARCH: 0 n, 4 rflags, 5 reserved[3], 8 ids[n], 8+8n dist[n].
 *   SEARCH_BATCH: 0 nq, 4 k, 8 rflags[nq], zeros to 4 -> N = round4(8 + nq):
 *     N n[nq], zeros to 8 -> I = round8(N + 4 nq): I ids[nq k],
 *     I + 8 nq k dist[nq k].
 *   GET: 0 n, 4 dim, 8 ids[n], 8+8n found[n], zeros to 4 -> round4(8 + 9n)
 *     vectors[n dim].
 *   LIST: 0 n, 4 reserved, 8 descriptors, each zero-padded to a multiple of
 *     8 (so each starts aligned; see the spec).
 *   Descriptor: 0 collection_id, 8 dim, 12 metric, 13 index, 14 nattrs,
 *     16 rows, 24 epoch, 32 nlist, 36 nprobe, 40 pq_m, 42 pq_nbits,
 *     43 trained, 44 hnsw_m, 46 ef_construction, 48 ef_search, 50 name_len,
 *     52 name, then nattrs x (u16 len, name).
 *
 * Every array thus starts at a multiple of its element size from the
 * message start (the body starts at 32).  Sizes are computed in uint64_t
 * from counts already bounded (n <= 2^20, dim <= 4096), so no product can
 * wrap; a count is always checked against its limit before it sizes
 * anything, and the body's exact length is checked before any array is
 * read.  So no read leaves the message however the bytes are mutated.
 *
 * Validation order.  The header in the order of proto.h's
 * qv_proto_parse_hdr; then (server) the tag, before any body work, so an
 * unauthenticated peer learns nothing about its body; then the body field
 * by field in the order of the spec's tables, each field's bytes present
 * first (a body shorter than its fixed part fails as "body_len"), then the
 * exact length (no trailing bytes), then the arrays: ids, vectors (finite),
 * padding.  The first violation decides.
 *
 * Decisions where the spec was silent (docs/PROTOCOL.md now says them):
 *   - request_id 0 is refused; collection ids are never 0: PING, CREATE,
 *     LIST carry 0, the collection's opcodes carry a non-zero id.
 *   - A request with RESPONSE set is dropped, not answered: the answer is
 *     itself a response, and two servers would answer each other forever.
 *   - A UDP datagram over 1472 bytes is answered BAD_REQUEST ("use TCP").
 *   - TCP: another version, like a wrong magic or an oversized body_len,
 *     closes the stream after the answer: its framing is unknown.
 *   - A tag reaching a server with no key is ignored (so clients can start
 *     signing before servers get keys); a server with a key signs its
 *     responses.  Keys are at least 16 bytes.
 *   - ids are never 2^64-1 in DELETE and GET either; repeats are allowed
 *     there (GET answers them as asked).
 *   - CREATE: a parameter of another index kind must be 0 (nlist, nprobe
 *     outside IVF*; pq_* outside IVF_PQ; hnsw_m, ef_* outside HNSW);
 *     nprobe <= nlist when nlist is given; ef_construction >= hnsw_m
 *     (each resolved: HNSW refuses ef_construction < M); attribute names
 *     use the filter syntax's alphabet [A-Za-z0-9_], are unique and are
 *     not one of its keywords (and, or, not, in, between, any case),
 *     else no filter could name them; collection names "." and ".." are
 *     refused.
 *   - SEARCH: the semantic threshold is checked (finite, >= 0) whether or
 *     not sflags bit 0 is set; filter text has no NUL byte (the server
 *     hands it to qv_pred_parse as a C string).  SEARCH_BATCH: zeros to a
 *     multiple of 4 after the filter, then nq; on UDP its whole response
 *     (with a tag when the request has one) must fit 1472 bytes.
 *   - UPSERT duplicate ids: found by an LSD radix sort (8-bit digits,
 *     passes whose digit is the same in every id skipped) of a copy in the
 *     caller's scratch: O(n), no allocation, no hash an attacker could
 *     flood.  The reason names a duplicated id.
 *   - LIST: u32 n, u32 reserved, then descriptors each zero-padded to a
 *     multiple of 8, so every descriptor's u64 fields are aligned.
 *   - Reasons and the NOT_PRIMARY address hold no NUL; the address is
 *     1..256 bytes; encoders cut a reason at 512 bytes on a UTF-8
 *     character boundary.
 *   - Misaligned buffers: see proto.h (copy into scratch).
 */
#ifndef QUIVER_PROTO_INT_H
#define QUIVER_PROTO_INT_H

#include <stdarg.h>
#include <stdint.h>
#include <string.h>

#include "quiver/errors.h"
#include "quiver/proto.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the protocol codec reads wire arrays in place: little-endian hosts only"
#endif

/* ---- little-endian loads and stores (any alignment) ------------------ */

static inline uint16_t qv__ld16(const uint8_t *p)
{
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

static inline uint32_t qv__ld32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static inline uint64_t qv__ld64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static inline float qv__ldf(const uint8_t *p)
{
    float v;
    memcpy(&v, p, 4);
    return v;
}

static inline void qv__st16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
static inline void qv__st32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void qv__st64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static inline void qv__stf(uint8_t *p, float v) { memcpy(p, &v, 4); }

static inline uint64_t qv__round4(uint64_t x) { return (x + 3) & ~(uint64_t)3; }
static inline uint64_t qv__round8(uint64_t x) { return (x + 7) & ~(uint64_t)7; }

static inline int qv__aligned8(const void *p) { return ((uintptr_t)p & 7) == 0; }

/* Header field offsets. */
#define QV__H_MAGIC 0
#define QV__H_VERSION 2
#define QV__H_OPCODE 3
#define QV__H_FLAGS 4
#define QV__H_STATUS 6
#define QV__H_REQID 8
#define QV__H_COLL 16
#define QV__H_BODYLEN 24
#define QV__H_RESERVED 28

/* ---- layouts shared by encoders and decoders -------------------------- */

#define QV__SEARCH_FIXED 32
#define QV__UPSERT_FIXED 16
#define QV__IDS_FIXED 8
#define QV__CREATE_FIXED 28
#define QV__DESC_FIXED 52

/* SEARCH / SEARCH_BATCH request: offset of nq (BATCH) and of the queries. */
static inline uint64_t qv__search_off_tail(uint32_t filter_len)
{
    return QV__SEARCH_FIXED + qv__round4(filter_len);
}

static inline uint64_t qv__search_off_queries(uint32_t filter_len, int batch)
{
    return qv__search_off_tail(filter_len) + (batch ? 8 : 0);
}

static inline uint64_t qv__search_size(uint32_t filter_len, int batch, uint32_t nq,
                                       uint32_t dim)
{
    return qv__search_off_queries(filter_len, batch) + 4 * (uint64_t)nq * dim;
}

/* UPSERT request. */
static inline uint64_t qv__upsert_off_vectors(uint32_t n)
{
    return QV__UPSERT_FIXED + 8 * (uint64_t)n;
}

static inline uint64_t qv__upsert_off_attrs(uint32_t n, uint32_t dim)
{
    return qv__round8(qv__upsert_off_vectors(n) + 4 * (uint64_t)n * dim);
}

static inline uint64_t qv__upsert_size(uint32_t n, uint32_t dim, uint32_t nattrs)
{
    return qv__upsert_off_attrs(n, dim) + 8 * (uint64_t)nattrs * n;
}

/* SEARCH_BATCH response. */
static inline uint64_t qv__sbr_off_n(uint32_t nq)
{
    return qv__round4(8 + (uint64_t)nq);
}

static inline uint64_t qv__sbr_off_ids(uint32_t nq)
{
    return qv__round8(qv__sbr_off_n(nq) + 4 * (uint64_t)nq);
}

/* GET response. */
static inline uint64_t qv__getr_off_vectors(uint32_t n)
{
    return qv__round4(8 + 9 * (uint64_t)n);
}

/* ---- errors ------------------------------------------------------------ */

/* Fill err (status, reason from fmt) and return QV_EINVAL. */
int qv__proto_fail(struct qv_proto_err *err, uint16_t status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The same, returning code (QV_ENOSPC for INTERNAL scratch failures). */
int qv__proto_failc(struct qv_proto_err *err, int code, uint16_t status, const char *fmt,
                    ...) __attribute__((format(printf, 4, 5)));

/* 1 when bytes [p, p + n) are all zero. */
static inline int qv__zeros(const uint8_t *p, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

/* Write a header with the given fields at buf (reserved 0). */
void qv__proto_put_hdr(uint8_t *buf, uint8_t opcode, uint16_t flags, uint16_t status,
                       uint64_t request_id, uint64_t collection_id, uint32_t body_len);

/* Start a response in buf[cap]: checks cap >= 32 + body_len, writes the
 * header echoing req.  Returns 0 or QV_ENOSPC. */
int qv__proto_resp_start(uint8_t *buf, size_t cap, const struct qv_proto_hdr *req,
                         uint16_t status, uint64_t body_len);

#endif
