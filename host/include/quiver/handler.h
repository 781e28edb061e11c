/*
 * handler.h - quiverd's request handler: the code every transport calls
 * (kernel UDP and TCP now, the DPDK dataplane later).  It decodes a
 * message (quiver/proto.h), runs it against the node (quiver/node.h) and
 * the query service (quiver/service.h), and encodes the answer.
 *
 *   PING, STATS, CREATE, DROP, LIST, DESCRIBE, UPSERT, DELETE, GET
 *       run at once on the transport's thread (writes take the node's
 *       per-collection lock and pause the service's dispatcher briefly);
 *   SEARCH, SEARCH_BATCH
 *       become service requests (one per query) and are answered when the
 *       last completes, from the dispatcher thread (or at once when every
 *       query was a cache hit or was refused).
 *
 * Memory.  A UDP SEARCH lives in its slot's user area (qv_handler_udp_
 * user_size bytes: the service request, k results, the filter text):
 * the query vector is read in place from the receive buffer, nothing is
 * allocated.  SEARCH_BATCH (either carrier) and TCP SEARCH allocate one
 * context per message (the TCP message buffer is reused once the handler
 * returns, so their queries are copied into it).  TCP answers are
 * allocated (the transport frees them once written).
 *
 * Errors.  A message that breaks the protocol is answered with the
 * codec's status and reason (or dropped, or the TCP connection closed, as
 * the codec says).  Node and service errors map to statuses: QV_ENOENT ->
 * NOT_FOUND, QV_EEXIST -> EXISTS, QV_EINVAL / QV_ERANGE -> BAD_REQUEST,
 * QV_EBUSY -> BUSY, QV_ETIMEDOUT -> TIMEOUT, QV_EUNAVAIL -> UNAVAILABLE,
 * else INTERNAL, each with the message of the failing call as reason.
 * A datagram truncated by the transport is answered BAD_REQUEST "use TCP".
 *
 * Retried writes (docs/PROTOCOL.md "Request ids, retries, idempotency").
 * The answer of every write (CREATE, DROP, UPSERT, DELETE) is kept for
 * replay_ttl_ms (30 s) keyed by (carrier, client address and port,
 * request id), and a repeat within that time is answered with those
 * bytes instead of being applied again: a retried UPSERT does not bump
 * the epoch twice, a retried DELETE answers the first count, a retried
 * CREATE the first id (not EXISTS).  The RETRY flag is informational: the
 * key is the request id.  Rules:
 *   - a repeat that arrives while the first copy is still being applied
 *     is answered BUSY ("still being applied; retry"), never applied and
 *     never waited for (writes run on the transport's thread); its retry
 *     gets the stored answer;
 *   - answers are kept whether OK or a failure with a status, except BUSY
 *     and UNAVAILABLE (nothing was applied and the client is told to
 *     retry: the retry is applied anew) and a write that got no answer;
 *   - the same request id from another address or port (another client,
 *     or a new TCP connection of the same client) is another request;
 *   - the table is bounded ([server] replay_entries, replay_bytes):
 *     under pressure the oldest stored answers go first, and a repeat
 *     whose answer was evicted is applied again.  When every entry of a
 *     stripe is a write in progress a new write is answered BUSY.
 * Design: host/server/replay_int.h.
 */
#ifndef QUIVER_HANDLER_H
#define QUIVER_HANDLER_H

#include <stddef.h>
#include <stdint.h>

#include "quiver/tcp.h"
#include "quiver/udp.h"

struct qv_config;
struct qv_node;
struct qv_service;
struct qv_proto_key;
struct qv_handler;

struct qv_handler_opts {
    struct qv_node *node;               /* borrowed, required */
    struct qv_service *service;         /* borrowed, required */
    const struct qv_proto_key *key;     /* borrowed or NULL: no auth */
    int64_t started_ns;                 /* PING's uptime base; 0 = now */
    /* The write-answer table (above); 0 = the default. */
    uint64_t replay_entries;            /* 1..16777216; 65536 */
    uint64_t replay_bytes;              /* >= 4096; 16 MiB */
    uint64_t replay_ttl_ms;             /* 1..86400000; 30000 */
};

/* Set the replay_* fields of o from the [server] keys replay_entries,
 * replay_bytes, replay_ttl_ms (validated at load); other fields are left
 * alone.  Returns 0. */
int qv_handler_opts_from_config(const struct qv_config *cfg, struct qv_handler_opts *o);

/* NULL with qv_errno QV_EINVAL (node or service missing, a replay_* value
 * out of range: the message names it) or QV_ENOMEM. */
struct qv_handler *qv_handler_create(const struct qv_handler_opts *o);
void qv_handler_free(struct qv_handler *h);

/*
 * qv_handler_set_key - the auth key from now on (NULL: no auth): quiverd's
 * SIGHUP rotates [server] auth_key_file with it.  A request is checked and
 * answered with the key in force when its datagram or frame is decoded,
 * or when its answer is signed; one in flight across the change may be
 * answered with the new key (its client retries).  key is borrowed, and
 * so is every key set before: all must outlive the handler, since a
 * worker may still hold one (quiverd keeps each until it stops).
 */
void qv_handler_set_key(struct qv_handler *h, const struct qv_proto_key *key);

/* Bytes of per-slot user area the UDP transport must give the handler
 * (struct qv_udp_opts.user_size). */
size_t qv_handler_udp_user_size(void);

/* The transports' handler tables, with h as their argument.  The TCP one
 * needs the transport to answer asynchronously: call
 * qv_handler_set_tcp() once qv_tcp_start returned, before any client can
 * connect... in practice before the first message arrives (the handler
 * answers UNAVAILABLE until then). */
struct qv_udp_handler qv_handler_udp(struct qv_handler *h);
struct qv_tcp_handler qv_handler_tcp(struct qv_handler *h);
void qv_handler_set_tcp(struct qv_handler *h, struct qv_tcp *t);

struct qv_handler_stats {
    uint64_t requests;                  /* decoded and run */
    uint64_t malformed;                 /* answered with the codec's error */
    uint64_t dropped;                   /* not answered (codec said drop) */
    uint64_t searches;                  /* queries submitted */
    uint64_t errors;                    /* answered with a status != OK */
    uint64_t replayed;                  /* writes answered from the table */
    uint64_t replay_busy;               /* repeats of a write in progress */
    uint64_t replay_entries;            /* answers (and writes in progress)
                                           held now */
};
void qv_handler_stats(const struct qv_handler *h, struct qv_handler_stats *out);

#endif
