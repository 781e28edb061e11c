/*
 * proto_auth.c - the AUTH tag: HMAC-SHA256(key, header + body), 32 bytes
 * after the body.
 *
 * Why the SHA256_* calls and not EVP_MAC or HMAC().  In OpenSSL 3.0 every
 * EVP path allocates per message (measured with CRYPTO_set_mem_functions:
 * HMAC() 13 allocations, EVP_MAC_init with the key kept 2, even
 * EVP_DigestInit_ex2 on a reused context 1) and fetches algorithms under a
 * lock; the dataplane may do neither per packet.  HMAC is two hashes, so
 * qv_proto_key_init runs the key schedule once and keeps the SHA-256
 * states after the inner and outer padded key; a message then costs one
 * struct copy and a hash per side, on the stack, with OpenSSL's SHA-NI /
 * AVX2 block functions.  The low-level SHA256_* functions are deprecated
 * in OpenSSL 3.0 (still present throughout 3.x), hence
 * OPENSSL_SUPPRESS_DEPRECATED in this one file.  Tags compare with
 * CRYPTO_memcmp (constant time); keys are wiped with OPENSSL_cleanse.
 */
#define OPENSSL_SUPPRESS_DEPRECATED

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include "proto_int.h"

_Static_assert(sizeof(SHA256_CTX) <= sizeof(((struct qv_proto_key *)0)->inner),
               "struct qv_proto_key holds a SHA256_CTX");

int qv_proto_key_init(struct qv_proto_key *k, const void *key, size_t keylen)
{
    if (!k || !key || keylen < QV_PROTO_MIN_KEY)
        return QV_EINVAL;
    unsigned char kb[SHA256_CBLOCK], pad[SHA256_CBLOCK];
    SHA256_CTX c;
    memset(kb, 0, sizeof kb);
    if (keylen > SHA256_CBLOCK) {
        SHA256_Init(&c);
        SHA256_Update(&c, key, keylen);
        SHA256_Final(kb, &c);
    } else {
        memcpy(kb, key, keylen);
    }
    memset(k, 0, sizeof *k);
    for (int i = 0; i < SHA256_CBLOCK; i++)
        pad[i] = kb[i] ^ 0x36;
    SHA256_Init(&c);
    SHA256_Update(&c, pad, sizeof pad);
    memcpy(k->inner, &c, sizeof c);
    for (int i = 0; i < SHA256_CBLOCK; i++)
        pad[i] = kb[i] ^ 0x5c;
    SHA256_Init(&c);
    SHA256_Update(&c, pad, sizeof pad);
    memcpy(k->outer, &c, sizeof c);
    OPENSSL_cleanse(kb, sizeof kb);
    OPENSSL_cleanse(pad, sizeof pad);
    OPENSSL_cleanse(&c, sizeof c);
    return 0;
}

void qv_proto_key_fini(struct qv_proto_key *k)
{
    if (k)
        OPENSSL_cleanse(k, sizeof *k);
}

static void tag(const struct qv_proto_key *k, const uint8_t *msg, size_t len,
                unsigned char out[QV_PROTO_TAG_SIZE])
{
    SHA256_CTX c;
    unsigned char inner[SHA256_DIGEST_LENGTH];
    memcpy(&c, k->inner, sizeof c);
    SHA256_Update(&c, msg, len);
    SHA256_Final(inner, &c);
    memcpy(&c, k->outer, sizeof c);
    SHA256_Update(&c, inner, sizeof inner);
    SHA256_Final(out, &c);
}

int64_t qv_proto_sign(void *buf, size_t cap, size_t len, const struct qv_proto_key *k)
{
    uint8_t *b = buf;
    if (!b || !k || len < QV_PROTO_HDR_SIZE)
        return QV_EINVAL;
    size_t core = QV_PROTO_HDR_SIZE + (size_t)qv__ld32(b + QV__H_BODYLEN);
    if (len != core && len != core + QV_PROTO_TAG_SIZE)
        return QV_EINVAL;
    if (cap < core + QV_PROTO_TAG_SIZE)
        return QV_ENOSPC;
    qv__st16(b + QV__H_FLAGS, (uint16_t)(qv__ld16(b + QV__H_FLAGS) | QV_PROTO_F_AUTH));
    tag(k, b, core, b + core);
    return (int64_t)(core + QV_PROTO_TAG_SIZE);
}

int qv_proto_verify(const void *msg, size_t msg_len, const struct qv_proto_key *k)
{
    const uint8_t *b = msg;
    if (!b || !k || msg_len < QV_PROTO_HDR_SIZE + QV_PROTO_TAG_SIZE ||
        !(qv__ld16(b + QV__H_FLAGS) & QV_PROTO_F_AUTH))
        return QV_EINVAL;
    size_t core = QV_PROTO_HDR_SIZE + (size_t)qv__ld32(b + QV__H_BODYLEN);
    if (msg_len != core + QV_PROTO_TAG_SIZE)
        return QV_EINVAL;
    unsigned char t[QV_PROTO_TAG_SIZE];
    tag(k, b, core, t);
    return CRYPTO_memcmp(t, b + core, QV_PROTO_TAG_SIZE) == 0 ? 0 : QV_EINVAL;
}

int qv_proto_check_auth(const struct qv_proto_hdr *hdr, const void *msg,
                        const struct qv_proto_key *k, struct qv_proto_err *err)
{
    if (!k)
        return 0;   /* no key configured: a tag is ignored */
    if (!(hdr->flags & QV_PROTO_F_AUTH))
        return qv__proto_fail(err, QV_PROTO_UNAUTHORIZED, "AUTH: this server requires signed "
                              "requests: set flag AUTH (0x2) and append the HMAC-SHA256 tag "
                              "of header and body");
    if (qv_proto_verify(msg, hdr->msg_len, k) < 0)
        return qv__proto_fail(err, QV_PROTO_UNAUTHORIZED, "AUTH: the tag does not match the "
                              "%s request: check the client's key against [server] "
                              "auth_key_file", qv_proto_opcode_name(hdr->opcode));
    return 0;
}
