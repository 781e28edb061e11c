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
 * Not yet: the 30 s cache of write answers that makes a retried write
 * idempotent (docs/PROTOCOL.md); until it lands a retried UPSERT is
 * applied again (same ids and vectors: the same end state) and a retried
 * DELETE counts 0.
 */
#ifndef QUIVER_HANDLER_H
#define QUIVER_HANDLER_H

#include <stddef.h>
#include <stdint.h>

#include "quiver/tcp.h"
#include "quiver/udp.h"

struct qv_node;
struct qv_service;
struct qv_proto_key;
struct qv_handler;

struct qv_handler_opts {
    struct qv_node *node;               /* borrowed, required */
    struct qv_service *service;         /* borrowed, required */
    const struct qv_proto_key *key;     /* borrowed or NULL: no auth */
    int64_t started_ns;                 /* PING's uptime base; 0 = now */
};

/* NULL with qv_errno QV_EINVAL (node or service missing) or QV_ENOMEM. */
struct qv_handler *qv_handler_create(const struct qv_handler_opts *o);
void qv_handler_free(struct qv_handler *h);

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
};
void qv_handler_stats(const struct qv_handler *h, struct qv_handler_stats *out);

#endif
