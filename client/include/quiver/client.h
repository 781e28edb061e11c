/*
 * client.h - libquiver, the C client library of quiverd (installed as
 * <quiver/client.h>; `pkg-config --cflags --libs quiver`).
 *
 * It speaks the wire protocol of docs/PROTOCOL.md over two sockets per
 * client: one UDP socket for single searches and pings (many in flight,
 * matched to their answers by request id, re-sent on loss), and one TCP
 * connection, opened on first use and reused, for everything bulk or
 * administrative (CREATE, DROP, LIST, DESCRIBE, UPSERT, DELETE, GET,
 * SEARCH_BATCH, STATS, and searches too large for a datagram).
 *
 *     struct qv_client_opts o;
 *     qv_client_opts_default(&o);
 *     struct qv_client *c = qv_client_connect("10.0.0.5", 7400, 7401, &o);
 *     if (!c) { fprintf(stderr, "%s\n", qv_client_connect_errmsg()); ... }
 *     uint64_t ids[10]; float dist[10]; uint32_t n;
 *     if (qv_client_search(c, coll, q, 128, 10, NULL, ids, dist, &n) < 0)
 *         fprintf(stderr, "search: %s\n", qv_client_errmsg(c));
 *     qv_client_close(c);
 *
 * Decisions
 *
 * - Errors.  Every call that can fail returns 0 or a negative code: a
 *   negated errno for local failures (-EINVAL a bad argument, named in the
 *   message; -ENOMEM; -ETIMEDOUT no answer after every try; -EIO the TCP
 *   connection failed or was lost; -EPROTO an answer that breaks the
 *   protocol or fails its auth tag; -ENOSPC too many requests in flight;
 *   -ECANCELED a progress callback stopped an upsert; -ENOENT no
 *   collection of that name, from qv_client_lookup), or
 *   QV_CLIENT_ESTATUS(status) (-2000 - status) when the server answered
 *   an error status.  qv_client_errmsg(c) then says what happened and
 *   where, with the server's own reason, e.g.
 *     "SEARCH: NOT_FOUND from 127.0.0.1:7401: collection 9 does not exist"
 *     "SEARCH: timed out after 3 tries to 127.0.0.1:7400 (UDP, 200 ms each)"
 *   There is no global state: codes and messages live in the client
 *   (qv_client_connect's failure message is thread-local, as no client
 *   exists yet).
 * - Carrier.  qv_client_search uses UDP when opts.udp_search is set, k <=
 *   100 and both the request and the answer fit a 1472-byte datagram
 *   (dim up to ~350 without a filter); otherwise TCP.  Everything else
 *   goes over TCP except PING.
 * - UDP retries.  A try waits opts.timeout_ms for its answer; then the
 *   client sleeps a backoff and re-sends the same bytes with the same
 *   request id and the RETRY flag (re-signed), up to opts.tries sends in
 *   all.  Backoff before send i+1 (i >= 1) is min(backoff_max_ms,
 *   backoff_base_ms << (i - 1)), or with opts.jitter ("full jitter") a
 *   uniform draw in [0, that].  An answer that arrives at any time (also
 *   during a backoff, also to an earlier send) completes the request; a
 *   later answer with the same id (a retried request answered twice) or
 *   any unknown id is dropped and counted (qv_client_stats.stale).
 *   Worst-case time to -ETIMEDOUT: tries x timeout_ms + the backoffs.
 * - TCP.  One connection, one request at a time, never re-sent: after a
 *   timeout (opts.tcp_timeout_ms for the whole exchange) or an I/O error
 *   the connection is closed and the call fails (-ETIMEDOUT / -EIO); the
 *   next call reconnects.  (A write that timed out may have been applied.)
 * - Bulk.  qv_client_upsert splits rows into UPSERT messages of at most
 *   opts.upsert_batch_bytes (and 65536 rows); qv_client_get, _delete and
 *   _search_batch split at the protocol's per-message limits.  A split
 *   call is not atomic: batches already acknowledged stay applied when a
 *   later one fails (the progress callback tells how far it got).
 * - Auth.  With opts.key every request is signed (HMAC-SHA256) and every
 *   answer must carry a valid tag, else it is refused (-EPROTO over TCP;
 *   over UDP it is dropped as a forgery, so the request times out).  A
 *   keyed client therefore needs a keyed server.
 * - Memory.  The client allocates with libc malloc (the layer rule keeps
 *   libquiver off the host runtime's allocator): its in-flight table
 *   (opts.max_inflight slots of ~1.5 KiB) at connect, and TCP buffers
 *   grown to the largest message sent or received.  Results go into the
 *   caller's arrays; LIST returns an array the caller frees.
 *
 * Thread-safety.  A client is NOT thread-safe: use one per thread, or
 * guard each with a mutex (every call, qv_client_poll included).  Clients
 * share nothing, so any number may run in parallel.  Callbacks run on
 * the thread inside qv_client_poll (or inside a synchronous call that
 * waits on the UDP socket); a callback may submit more async requests,
 * but must not make synchronous calls or close the client (-EINVAL).
 */
#ifndef QUIVER_CLIENT_H
#define QUIVER_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- errors ------------------------------------------------------------- */

/* The code of a server status (docs/PROTOCOL.md "Status codes"), 1..9. */
#define QV_CLIENT_ESTATUS(status)   (-2000 - (int)(status))
#define QV_CLIENT_EBAD_REQUEST      QV_CLIENT_ESTATUS(1)
#define QV_CLIENT_ENOT_FOUND        QV_CLIENT_ESTATUS(2)
#define QV_CLIENT_EBUSY             QV_CLIENT_ESTATUS(3)
#define QV_CLIENT_ESERVER_TIMEOUT   QV_CLIENT_ESTATUS(4)
#define QV_CLIENT_EUNAVAILABLE      QV_CLIENT_ESTATUS(5)
#define QV_CLIENT_EUNAUTHORIZED     QV_CLIENT_ESTATUS(6)
#define QV_CLIENT_ENOT_PRIMARY      QV_CLIENT_ESTATUS(7)
#define QV_CLIENT_EEXISTS           QV_CLIENT_ESTATUS(8)
#define QV_CLIENT_EINTERNAL         QV_CLIENT_ESTATUS(9)

/* The server status of a code (1..9), or 0 when it is a local error. */
int qv_client_status_of(int code);

/* A short static name of code: "NOT_FOUND", "timed out", ...  Never NULL. */
const char *qv_client_strerror(int code);

/* ---- connecting ------------------------------------------------------- */

struct qv_client_opts {
    const void *key;            /* auth key (>= 16 bytes) or NULL: unsigned;
                                   copied at connect */
    size_t key_len;
    uint32_t timeout_ms;        /* UDP: wait per try; default 200 */
    uint32_t tries;             /* UDP: sends per request, >= 1; default 3 */
    uint32_t backoff_base_ms;   /* default 10 */
    uint32_t backoff_max_ms;    /* default 1000 */
    int jitter;                 /* 1: full jitter (default); 0: exact backoff */
    int udp_search;             /* 1: searches over UDP when they fit (default) */
    uint32_t tcp_timeout_ms;    /* a whole TCP exchange; default 60000 */
    uint32_t max_inflight;      /* UDP requests in flight, 1..65536; default 1024 */
    size_t upsert_batch_bytes;  /* UPSERT message body cap, 4 KiB..64 MiB;
                                   default 4 MiB */
    uint64_t seed;              /* request ids and jitter; 0 = random */
    int busy_poll;              /* 1: UDP waits spin on a non-blocking recv
                                   instead of sleeping in poll(2): no wake-up
                                   latency (tens of us on a VM), one CPU
                                   busy while a request is in flight;
                                   default 0 */
    const char *tcp_host;       /* TCP to this host instead of connect's
                                   (a DPDK node serves UDP on its dataplane
                                   address, TCP on its management one);
                                   NULL = the same host; resolved at connect */
};

/* Fill *o with the defaults above.  Cannot fail. */
void qv_client_opts_default(struct qv_client_opts *o);

/*
 * qv_client_connect - a client of the quiverd at host (name or address,
 * IPv4 or IPv6) with its UDP and TCP ports; opts NULL = the defaults.
 * Resolves host, opens the UDP socket (connected: only the server's
 * datagrams are read); the TCP connection opens on first use.  Returns
 * NULL on failure (host not resolved, a bad option, no memory, socket
 * failure) with a message in qv_client_connect_errmsg().
 */
struct qv_client *qv_client_connect(const char *host, uint16_t udp_port, uint16_t tcp_port,
                                    const struct qv_client_opts *opts);

/* Why the last qv_client_connect of this thread failed. */
const char *qv_client_connect_errmsg(void);

/* Close both sockets and free everything.  Requests still in flight are
 * abandoned without their callbacks.  NULL is a no-op. */
void qv_client_close(struct qv_client *c);

/* The message of the last failed call on c ("" when none failed).  Valid
 * until the next call on c. */
const char *qv_client_errmsg(const struct qv_client *c);

/* Counters since connect. */
struct qv_client_stats {
    uint64_t udp_sent;          /* datagrams sent, retries included */
    uint64_t udp_retries;       /* of them, re-sends with RETRY */
    uint64_t udp_timeouts;      /* requests that failed after every try */
    uint64_t stale;             /* UDP answers dropped: unknown or already
                                   answered id, malformed, or a bad tag */
    uint64_t tcp_messages;      /* TCP requests sent */
    uint64_t tcp_connects;
};
void qv_client_stats(const struct qv_client *c, struct qv_client_stats *out);

/* PING over UDP (with retries): the server's uptime in ms. */
int qv_client_ping(struct qv_client *c, uint64_t *uptime_ms);

/* ---- collections ------------------------------------------------------ */

enum qv_client_metric { QV_CLIENT_L2 = 0, QV_CLIENT_IP = 1, QV_CLIENT_COSINE = 2 };
enum qv_client_index {
    QV_CLIENT_FLAT = 0, QV_CLIENT_IVF = 1, QV_CLIENT_IVF_SQ8 = 2,
    QV_CLIENT_IVF_PQ = 3, QV_CLIENT_HNSW = 4,
};

#define QV_CLIENT_MAX_NAME  64
#define QV_CLIENT_MAX_ATTRS 16

/* CREATE's parameters; 0 in the numeric tuning fields = the server's
 * default (docs/PROTOCOL.md "CREATE" says which apply to which index). */
struct qv_client_create {
    const char *name;           /* [A-Za-z0-9_.-], 1..64 bytes */
    uint32_t dim;               /* 1..4096 */
    enum qv_client_metric metric;
    enum qv_client_index index;
    uint16_t nattrs;            /* 0..16 */
    const char *attrs[QV_CLIENT_MAX_ATTRS];     /* nattrs names */
    uint32_t nlist, nprobe;
    uint16_t pq_m;
    uint8_t pq_nbits;
    uint16_t hnsw_m, ef_construction, ef_search;
};

/* A collection as the server describes it (values in force, defaults
 * resolved).  Strings are owned by the struct (NUL-terminated arrays). */
struct qv_client_collection {
    uint64_t id;
    char name[QV_CLIENT_MAX_NAME + 1];
    uint32_t dim;
    enum qv_client_metric metric;
    enum qv_client_index index;
    uint16_t nattrs;
    char attrs[QV_CLIENT_MAX_ATTRS][QV_CLIENT_MAX_NAME + 1];
    uint64_t rows;              /* live vectors */
    uint64_t epoch;             /* bumped by every write */
    uint32_t nlist, nprobe;
    uint16_t pq_m;
    uint8_t pq_nbits;
    uint8_t trained;
    uint16_t hnsw_m, ef_construction, ef_search;
};

/* CREATE (TCP): *id gets the new collection's id.  Errors: -EINVAL (a
 * NULL or over-long name, nattrs > 16), the server's BAD_REQUEST, EXISTS. */
int qv_client_create(struct qv_client *c, const struct qv_client_create *cr, uint64_t *id);

/* DROP (TCP).  NOT_FOUND when id is no collection. */
int qv_client_drop(struct qv_client *c, uint64_t id);

/* DESCRIBE (TCP) into *out. */
int qv_client_describe(struct qv_client *c, uint64_t id, struct qv_client_collection *out);

/*
 * LIST (TCP): *out gets a malloc'd array of *n collections (NULL when
 * none), owned by the caller: free it with qv_client_list_free.
 */
int qv_client_list(struct qv_client *c, struct qv_client_collection **out, uint32_t *n);
void qv_client_list_free(struct qv_client_collection *list);

/* The id of the collection called name (LIST); -ENOENT when none is. */
int qv_client_lookup(struct qv_client *c, const char *name, uint64_t *id);

/* STATS (TCP): a malloc'd NUL-terminated JSON document in *json (free()
 * it); id 0 = the node's. */
int qv_client_stats_json(struct qv_client *c, uint64_t id, char **json);

/* ---- writes and reads ------------------------------------------------- */

/* Rows to upsert: n ids (unique, never 2^64-1), n x dim floats row-major,
 * and nattrs columns of n values each (the collection's attributes in
 * their declared order).  All borrowed for the call. */
struct qv_client_rows {
    uint64_t n;
    uint32_t dim;
    const uint64_t *ids;
    const float *vectors;
    uint16_t nattrs;
    const int64_t *attrs[QV_CLIENT_MAX_ATTRS];
};

/* Called after each acknowledged batch with the rows done so far and
 * the total; a non-zero return stops the load (-ECANCELED). */
typedef int (*qv_client_progress_fn)(void *arg, uint64_t done, uint64_t total);

/*
 * qv_client_upsert - UPSERT rows (TCP), in as many messages as
 * opts.upsert_batch_bytes needs; progress (NULL: none) after each.
 * *epoch (NULL: not wanted) gets the collection's epoch after the last
 * batch.  Not atomic across batches (see Decisions).  Errors: -EINVAL
 * (n = 0, NULL arrays, dim or nattrs out of range), the server's
 * BAD_REQUEST (wrong dim, NaN, duplicate ids), NOT_FOUND, -ECANCELED.
 */
int qv_client_upsert(struct qv_client *c, uint64_t coll, const struct qv_client_rows *rows,
                     qv_client_progress_fn progress, void *arg, uint64_t *epoch);

/* DELETE n ids (TCP); *deleted (NULL: not wanted) gets how many were
 * present. */
int qv_client_delete(struct qv_client *c, uint64_t coll, uint64_t n, const uint64_t *ids,
                     uint64_t *deleted);

/*
 * qv_client_get - GET n ids (TCP).  vectors: n x dim floats out (zeros
 * where not found), found: n bytes out (0/1).  dim must be the
 * collection's (-EPROTO when the server's differs).
 */
int qv_client_get(struct qv_client *c, uint64_t coll, uint64_t n, const uint64_t *ids,
                  uint32_t dim, float *vectors, uint8_t *found);

/* ---- search ----------------------------------------------------------- */

/* Optional search parameters (NULL = all defaults; zeroed = defaults). */
struct qv_client_search_params {
    uint32_t nprobe;            /* IVF*: 0 = the collection's */
    uint32_t ef;                /* HNSW: 0 = the collection's, else k..4096 */
    uint32_t deadline_us;       /* 0 = the class's budget */
    uint8_t consistency;        /* 0 ANY, 1 PRIMARY */
    uint8_t bulk;               /* 0 INTERACTIVE, 1 BULK class */
    uint8_t semantic;           /* 1: the semantic cache may answer */
    float semantic_threshold;   /* >= 0 */
    const char *filter;         /* filter expression (quiver filter syntax), NULL = none */
};

/* The answer of one query: n results, ids and distances ascending. */
struct qv_client_hits {
    uint32_t n;
    const uint64_t *ids;
    const float *dist;
    uint8_t cached;             /* from the exact result cache */
    uint8_t approximate;        /* from the semantic cache */
};

/*
 * qv_client_search - one query (dim floats), its k nearest: ids[k] and
 * dist[k] out (dist may be NULL), *n results (<= k).  UDP when it fits
 * (see Decisions), else TCP.  Errors: -EINVAL (k or dim 0 or over the
 * limits, filter too long), the server's BAD_REQUEST (wrong dim, NaN),
 * NOT_FOUND, BUSY, ..., -ETIMEDOUT.
 */
int qv_client_search(struct qv_client *c, uint64_t coll, const float *query, uint32_t dim,
                     uint32_t k, const struct qv_client_search_params *p,
                     uint64_t *ids, float *dist, uint32_t *n);

/*
 * qv_client_search_batch - nq queries (nq x dim floats, row-major) over
 * TCP, in messages of up to 1024 queries.  ids, dist: nq x k out, row i
 * holds n[i] results then (UINT64_MAX, +inf); dist may be NULL; n: nq out.
 */
int qv_client_search_batch(struct qv_client *c, uint64_t coll, uint32_t nq,
                           const float *queries, uint32_t dim, uint32_t k,
                           const struct qv_client_search_params *p,
                           uint64_t *ids, float *dist, uint32_t *n);

/* ---- asynchronous search (UDP) ---------------------------------------- */

/*
 * The completion of an async search, called exactly once per accepted
 * request, from qv_client_poll (or a synchronous call) on the client's
 * thread.  rc: 0 with hits (valid only during the call), or a negative
 * code with errmsg (valid only during the call) and hits NULL.
 */
typedef void (*qv_client_search_cb)(void *arg, int rc, const struct qv_client_hits *hits,
                                    const char *errmsg);

/*
 * qv_client_search_async - send one query over UDP and return at once;
 * cb(arg, ...) completes it later.  The query is copied: the caller may
 * reuse it.  Returns 0 (cb will be called exactly once), or fails without
 * calling cb: -EINVAL (arguments; or the request or its answer does not
 * fit a datagram: use qv_client_search_batch), -ENOSPC (opts.max_inflight
 * requests in flight: poll first).
 */
int qv_client_search_async(struct qv_client *c, uint64_t coll, const float *query, uint32_t dim,
                           uint32_t k, const struct qv_client_search_params *p,
                           qv_client_search_cb cb, void *arg);

/*
 * qv_client_poll - read answers and fire due retries / timeouts.  Waits up
 * to timeout_ms (-1: no limit, 0: do not block) for at least one
 * completion, then completes whatever else is ready without waiting.
 * Returns at once when nothing is in flight.  Returns the number of
 * callbacks run (>= 0), or a negative code when the socket fails.
 * O(in flight) per wake-up.
 */
int qv_client_poll(struct qv_client *c, int timeout_ms);

/* Requests in flight over UDP. */
uint32_t qv_client_inflight(const struct qv_client *c);

/*
 * For an event loop: the UDP socket (watch it for EPOLLIN) and the ms
 * until the next retry or timeout is due (-1 when nothing is in flight);
 * call qv_client_poll(c, 0) when either fires.
 */
int qv_client_fd(const struct qv_client *c);
int qv_client_next_timeout_ms(const struct qv_client *c);

#ifdef __cplusplus
}
#endif

#endif
