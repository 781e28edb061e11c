/*
 * tcp.h - the kernel-socket TCP transport of quiverd: length-framed
 * messages (docs/PROTOCOL.md) on long-lived connections, for bulk loads,
 * large vectors and results, and administration.
 *
 * Workers.  opts.workers threads, each with its own listening socket on
 * the same address and port (SO_REUSEPORT: the kernel spreads new
 * connections over them) and an epoll set over that socket, an eventfd
 * and its connections (non-blocking).  A connection stays on the worker
 * that accepted it.
 *
 * Framing belongs to the protocol, not to the transport: the handler's
 * frame() looks at the bytes received so far and says how long the next
 * message is (or that it needs more bytes, or that the stream cannot be
 * framed).  The transport reads into a per-connection buffer that grows
 * (doubling, from 64 KiB) up to max_message bytes, and calls on_message()
 * with each whole message, in order.
 *
 * Answers.  on_message() answers
 *   QV_TCP_REPLY  m->resp (resp_len bytes from qv_malloc, QV_MEM_SERVER)
 *                 is queued on the connection and freed once written;
 *   QV_TCP_NONE   nothing to send now;
 *   QV_TCP_ASYNC  the answer comes later from any thread through
 *                 qv_tcp_reply(u, m->ref, buf, len) (the buffer then
 *                 belongs to the transport), exactly once;
 *   QV_TCP_CLOSE  m->resp, if set, is written, then the connection closes
 *                 (e.g. the framing cannot be trusted any more).
 * The message's bytes are valid only during on_message: an ASYNC handler
 * copies what it keeps.  Answers to one connection are written in the
 * order they are queued; async answers may overtake (the protocol's
 * request ids pair them).  A reply to a connection that has closed since
 * is freed and counted, never written elsewhere (a generation number in
 * the reference guards slot reuse).
 *
 * Backpressure.  A connection stops being read while it has more than
 * max_pending_bytes of answers not yet written or max_async requests
 * out, so a client that does not read its answers, or floods requests,
 * slows itself down instead of the node.  Connections beyond
 * max_conns per worker are accepted and closed at once (counted).  An
 * idle connection is closed after idle_ms without a byte (0 = never).
 *
 * Hot path: no allocation per message except the answer's buffer (the
 * handler's) and the receive buffer growing to a connection's largest
 * message; no lock except the completion ring's none (lock-free, multi-
 * producer).  qv_tcp_stop() drains: stops accepting and reading, waits up
 * to drain_ms for async answers and for queued answers to be written,
 * then closes everything.
 */
#ifndef QUIVER_TCP_H
#define QUIVER_TCP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define QV_TCP_MAX_WORKERS 64u
#define QV_TCP_MAX_CONNS 65536u

enum qv_tcp_verdict {
    QV_TCP_REPLY = 0,
    QV_TCP_NONE = 1,
    QV_TCP_ASYNC = 2,
    QV_TCP_CLOSE = 3,
};

/* Where an async answer goes: copy it, it is small. */
struct qv_tcp_ref {
    uint32_t worker;
    uint32_t conn;                  /* slot of the connection */
    uint64_t gen;                   /* the connection's generation */
};

struct qv_tcp_msg {
    const void *data;               /* the whole message (valid during the call) */
    uint32_t len;
    struct qv_tcp_ref ref;          /* for qv_tcp_reply */
    int64_t rx_ns;                  /* when its last byte was read */
    const struct sockaddr_storage *peer;    /* the client, as accept()
                                       gave it (valid during the call) */
    socklen_t peer_len;
    void *resp;                     /* REPLY / CLOSE: qv_malloc'ed answer */
    uint32_t resp_len;
};

struct qv_tcp_handler {
    /* Framing: have bytes of the stream are at buf.  Return 0 with *need =
     * the length of the message starting at buf (it may exceed have),
     * 1 when more bytes are needed to tell, or < 0 when the stream cannot
     * be framed: then bad_frame() may set *resp / *resp_len (an error
     * answer, qv_malloc'ed) and the connection closes after writing it. */
    int (*frame)(void *arg, const void *buf, size_t have, size_t *need);
    void (*bad_frame)(void *arg, const void *buf, size_t have, int code, void **resp,
                      uint32_t *resp_len);
    enum qv_tcp_verdict (*on_message)(void *arg, struct qv_tcp_msg *m);
    void *arg;
};

struct qv_tcp_opts {
    const char *bind_addr;          /* literal; NULL = 0.0.0.0 */
    uint16_t port;                  /* 0 = ephemeral (qv_tcp_port) */
    unsigned workers;               /* 1..QV_TCP_MAX_WORKERS, default 1 */
    unsigned max_conns;             /* per worker, 1..QV_TCP_MAX_CONNS, 256 */
    size_t max_message;             /* largest message, >= 64; default
                                       64 MiB + 64 (the protocol's body
                                       limit plus header and tag) */
    size_t max_pending_bytes;       /* per connection; default 64 MiB */
    unsigned max_async;             /* per connection; default 256 */
    unsigned idle_ms;               /* 0 = never; default 0 */
    unsigned drain_ms;              /* default 5000 */
    int backlog;                    /* listen(); default 128 */
};

struct qv_tcp;

void qv_tcp_opts_default(struct qv_tcp_opts *o);

/* Bind, listen, start the workers.  NULL with qv_errno QV_EINVAL (bad
 * option or address; the message names it), QV_ENOMEM, or -errno of
 * socket / bind / listen / pthread_create (message with the address). */
struct qv_tcp *qv_tcp_start(const struct qv_tcp_opts *o, const struct qv_tcp_handler *h);

uint16_t qv_tcp_port(const struct qv_tcp *t);

/* An async answer for ref: buf (qv_malloc'ed, len bytes) now belongs to
 * the transport.  Any thread, lock-free, never blocks.  Exactly once per
 * QV_TCP_ASYNC (len 0 / buf NULL: no answer, the request is just done). */
void qv_tcp_reply(struct qv_tcp *t, struct qv_tcp_ref ref, void *buf, uint32_t len);

/* Drain (above) and free.  NULL: no-op.  Returns async answers that had
 * not come back within drain_ms (they will be freed on arrival... never:
 * callers must stop producing replies before, so this should be 0). */
unsigned qv_tcp_stop(struct qv_tcp *t);

struct qv_tcp_stats {
    uint64_t accepted, refused, closed;   /* connections */
    uint64_t messages, replies;           /* in, out */
    uint64_t bad_frames, idle_closed;
    uint64_t stale_replies;               /* for a connection since closed */
    uint64_t bytes_in, bytes_out;
    uint64_t paused;                      /* times a connection stopped
                                             being read (backpressure) */
};

void qv_tcp_stats(const struct qv_tcp *t, struct qv_tcp_stats *out);

#endif
