/*
 * udp.h - the kernel-socket UDP transport of quiverd: one datagram is one
 * request (docs/PROTOCOL.md), answered by one datagram.
 *
 * Workers.  opts.workers threads, each with its own socket bound to the
 * same address and port with SO_REUSEPORT (the kernel spreads clients
 * over them by a hash of the 4-tuple), each receiving with recvmmsg and
 * sending with sendmmsg in batches of up to opts.batch datagrams.  A
 * worker sleeps in epoll_wait on its socket and an eventfd; nothing is
 * shared between workers but the handler.
 *
 * Slots.  Each worker owns opts.slots preallocated slots: a receive
 * buffer (8-byte aligned, opts.max_datagram bytes, so a decoder can point
 * into it without copying), a transmit buffer of the same size, the
 * peer's address and opts.user_size bytes for the handler.  A datagram is
 * received straight into a free slot and the handler is called with it
 * on the worker's thread.  The handler answers
 *   QV_UDP_REPLY  tx_len bytes of tx are sent now (with the batch);
 *   QV_UDP_DROP   nothing is sent (e.g. a datagram too short to answer);
 *   QV_UDP_ASYNC  it keeps the slot (e.g. the query went to the service)
 *                 and later, from any thread, writes tx / tx_len and
 *                 calls qv_udp_complete(slot): the slot goes onto the
 *                 worker's completion ring (lock-free, multi-producer),
 *                 the worker is woken through its eventfd only when it
 *                 sleeps, sends the answer and frees the slot.
 * At most slots - batch slots are ASYNC at once: a receive batch always
 * finds free slots, and a handler told async_ok = 0 must answer at once
 * (e.g. BUSY).  So the transport never blocks on a full server and never
 * drops silently what it has received.
 *
 * Datagrams longer than max_datagram arrive truncated (MSG_TRUNC): the
 * handler sees rx_len = the bytes kept and truncated = 1 and may answer
 * (the protocol's header fits).  Send errors (ENOBUFS, EAGAIN, a peer
 * gone) are counted, never retried: UDP clients retry on timeout.
 *
 * Hot path: no allocation, no lock; system calls are the batched
 * recvmmsg / sendmmsg / epoll_wait, plus one eventfd write per wake of a
 * sleeping worker.  qv_udp_stop() drains: it stops receiving, waits up to
 * drain_ms for every ASYNC slot to complete and be sent, then joins the
 * workers and frees everything.
 */
#ifndef QUIVER_UDP_H
#define QUIVER_UDP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define QV_UDP_MAX_WORKERS 64u
#define QV_UDP_MAX_BATCH 256u
#define QV_UDP_MAX_SLOTS 65536u
#define QV_UDP_MAX_DATAGRAM 65507u

enum qv_udp_verdict {
    QV_UDP_REPLY = 0,
    QV_UDP_DROP = 1,
    QV_UDP_ASYNC = 2,
};

/* One datagram in flight.  The transport owns it; the handler may read
 * and write the fields marked so until it answered (REPLY / DROP) or
 * until qv_udp_complete (ASYNC). */
struct qv_udp_slot {
    const void *rx;                 /* the request, 8-byte aligned (read) */
    uint32_t rx_len;                /* bytes in rx */
    int truncated;                  /* the datagram was longer than rx */
    int async_ok;                   /* QV_UDP_ASYNC allowed for this one */
    void *tx;                       /* the answer goes here (write) */
    uint32_t tx_cap;                /* bytes available in tx */
    uint32_t tx_len;                /* bytes to send (write) */
    unsigned worker;                /* the worker that received it */
    int64_t rx_ns;                  /* qv_now_ns() after its recvmmsg */
    void *user;                     /* user_size bytes, zeroed at start */
    struct sockaddr_storage peer;   /* who sent it (read) */
    socklen_t peer_len;
    /* Set by the transport that owns the slot; qv_udp_complete calls it.
     * The DPDK dataplane (quiver/dataplane.h) hands its datagrams to the
     * same handler in slots of this type with its own completion. */
    void (*complete)(struct qv_udp_slot *slot);
};

struct qv_udp_handler {
    /* Called on the worker's thread for every datagram received. */
    enum qv_udp_verdict (*on_datagram)(void *arg, struct qv_udp_slot *slot);
    void *arg;
};

struct qv_udp_opts {
    const char *bind_addr;          /* IPv4 or IPv6 literal; NULL = 0.0.0.0 */
    uint16_t port;                  /* 0 = an ephemeral port (qv_udp_port) */
    unsigned workers;               /* 1..QV_UDP_MAX_WORKERS, default 2 */
    unsigned batch;                 /* datagrams per recvmmsg / sendmmsg,
                                       1..QV_UDP_MAX_BATCH, default 32 */
    unsigned slots;                 /* per worker, > batch, power of two,
                                       ..QV_UDP_MAX_SLOTS; default 1024 */
    uint32_t max_datagram;          /* receive and send buffer per slot,
                                       64..QV_UDP_MAX_DATAGRAM; 1472 */
    size_t user_size;               /* bytes of slot->user; default 0 */
    int rcvbuf, sndbuf;             /* SO_RCVBUF / SO_SNDBUF bytes; 0 = the
                                       system's default */
    unsigned drain_ms;              /* qv_udp_stop's wait for ASYNC slots;
                                       default 5000 */
};

struct qv_udp;

/* Defaults (above).  Cannot fail. */
void qv_udp_opts_default(struct qv_udp_opts *o);

/*
 * qv_udp_start - bind the sockets and start the workers.  Returns NULL
 * with qv_errno QV_EINVAL (an option out of range, a bad address: the
 * message names it), QV_ENOMEM, or a negative errno of socket / bind /
 * setsockopt / pthread_create (e.g. -EADDRINUSE, with the address in the
 * message).  Nothing leaks on failure.
 */
struct qv_udp *qv_udp_start(const struct qv_udp_opts *o, const struct qv_udp_handler *h);

/* The bound port (the ephemeral one when opts.port was 0). */
uint16_t qv_udp_port(const struct qv_udp *u);

/* Hand back an ASYNC slot with its answer in tx / tx_len (tx_len 0: send
 * nothing), to whichever transport owns it (slot->complete).  Any thread;
 * lock-free; never blocks; call exactly once per ASYNC slot. */
void qv_udp_complete(struct qv_udp_slot *slot);

/* Stop receiving, wait up to drain_ms for the ASYNC slots, send their
 * answers, join the workers, close and free.  NULL: no-op.  Returns the
 * number of ASYNC slots that had not completed in time (their answers
 * are lost; the handler must not touch them afterwards, so callers stop
 * their producers of completions first or keep drain_ms long enough). */
unsigned qv_udp_stop(struct qv_udp *u);

struct qv_udp_stats {
    uint64_t rx;                    /* datagrams received */
    uint64_t tx;                    /* datagrams sent */
    uint64_t truncated;             /* received longer than max_datagram */
    uint64_t dropped;               /* handler said DROP */
    uint64_t async;                 /* handler said ASYNC */
    uint64_t async_refused;         /* async_ok was 0 (slots all async) */
    uint64_t send_errors;           /* datagrams sendmmsg did not take */
    uint64_t wakes;                 /* eventfd wakes of sleeping workers */
};

/* Counters summed over the workers (relaxed reads).  Thread-safe. */
void qv_udp_stats(const struct qv_udp *u, struct qv_udp_stats *out);

#endif
