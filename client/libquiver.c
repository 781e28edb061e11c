/*
 * libquiver.c - the client library (client/include/quiver/client.h).
 *
 * The design, in brief (the header says the contract):
 *
 * UDP requests in flight live in a table of opts.max_inflight slots, each
 * holding its encoded (and signed) datagram so a retry re-sends the same
 * bytes.  The request id names its slot, so an answer finds its request
 * in O(1) without a hash table:
 *
 *     request_id = base + (gen << 20 | slot)      base: random per client
 *                                                 gen: per slot, bumped
 *                                                      at every reuse
 *
 * An answer whose id maps to a free slot, or to a slot now holding
 * another generation, is stale (a duplicate answer to a retried request,
 * or a late one after a timeout) and is dropped.  The TCP connection
 * uses the slot number 2^20 - 1, which no UDP slot has, with its own
 * generation counter, so every id of a client is distinct.
 *
 * A slot is WAIT (sent, due = when its try times out) or BACKOFF (due =
 * when to re-send).  qv_client_poll drains the socket, then walks the
 * table for due slots (O(the most requests ever in flight at once) per
 * wake-up: the walk stops at the highest slot handed out, and the LIFO
 * free list keeps that near the peak in flight; walking all 65536 slots
 * of quiverbench net's table twice per answer cost ~150 us per query),
 * then sleeps in poll(2) until the earliest due time or a datagram.
 * Synchronous UDP calls (search, ping) are async requests whose
 * completion writes into the caller's frame, waited for by the same
 * loop.  A completion frees its slot before the callback runs, so the
 * callback can submit again.
 *
 * TCP: one blocking-style exchange at a time on a non-blocking socket,
 * every wait a poll(2) bounded by the exchange's deadline.  Encode
 * buffers grow (doubling) when an encoder says QV_ENOSPC.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "quiver/client.h"
#include "quiver/proto.h"

#define SLOT_BITS       20
#define SLOT_MASK       ((1u << SLOT_BITS) - 1)
#define TCP_SLOT        SLOT_MASK
#define NO_SLOT         UINT32_MAX
#define MAX_INFLIGHT    65536u
#define ERRMSG_CAP      1024
#define TCP_MSG_MAX     ((size_t)QV_PROTO_HDR_SIZE + QV_PROTO_TCP_MAX_BODY + QV_PROTO_TAG_SIZE)

enum slot_state { SLOT_FREE = 0, SLOT_WAIT, SLOT_BACKOFF };

struct qv_client;
struct user;

/* Completion of a UDP request: rc 0 with r, or a negative code (r NULL,
 * the message in c->err). */
typedef void (*done_fn)(struct qv_client *c, const struct user *u, int rc,
                        const struct qv_proto_resp *r);

/* What the submitter wants done with the answer (copied out of the slot
 * before the slot is freed). */
struct user {
    done_fn done;
    void *ctx;                  /* synchronous calls: their frame */
    qv_client_search_cb cb;     /* async searches */
    void *arg;
};

struct slot {
    _Alignas(8) uint8_t msg[QV_PROTO_UDP_MAX];
    uint64_t id;
    int64_t due_ns;
    uint32_t gen;
    uint32_t len;
    uint32_t next_free;
    uint16_t tries;             /* sends so far */
    uint8_t state;
    uint8_t opcode;
    struct user user;
};

struct qv_client {
    struct qv_client_opts o;
    int has_key;
    struct qv_proto_key key;

    struct sockaddr_storage taddr;
    socklen_t taddr_len;
    char uaddr_s[300], taddr_s[300];    /* "host:port", for messages */

    int ufd;
    int refused;                /* an ICMP port unreachable was seen */
    struct slot *slots;
    uint32_t free_head;
    uint32_t hi;                /* 1 + the highest slot ever handed out: the
                                   free list is LIFO from 0, so the table's
                                   walks stop near the most ever in flight */
    uint32_t inflight;
    uint64_t id_base;
    uint64_t rng;
    int in_callback;
    _Alignas(8) uint8_t urx[QV_PROTO_UDP_MAX + 8];

    int tfd;
    uint32_t tcp_gen;
    uint8_t *ttx, *trx;         /* malloc'd: 16-byte aligned */
    size_t ttx_cap, trx_cap;

    struct qv_client_stats st;
    char err[ERRMSG_CAP];
};

static __thread char connect_err[ERRMSG_CAP];

/* ---- small helpers ------------------------------------------------------ */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

__attribute__((format(printf, 3, 4)))
static int fail(struct qv_client *c, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof c->err, fmt, ap);
    va_end(ap);
    return code;
}

/* xorshift64*: jitter draws; never 0 state. */
static uint64_t rnd(struct qv_client *c)
{
    uint64_t x = c->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    c->rng = x;
    return x * 0x2545F4914F6CDD1Dull;
}

static const char *opname(unsigned op)
{
    return qv_proto_opcode_name(op);
}

int qv_client_status_of(int code)
{
    return code <= QV_CLIENT_ESTATUS(1) && code >= QV_CLIENT_ESTATUS(QV_PROTO_STATUS__COUNT - 1)
           ? -2000 - code : 0;
}

const char *qv_client_strerror(int code)
{
    int s = qv_client_status_of(code);
    if (s)
        return qv_proto_status_name((unsigned)s);
    switch (code) {
    case 0: return "success";
    case -EINVAL: return "invalid argument";
    case -ENOMEM: return "out of memory";
    case -ETIMEDOUT: return "timed out";
    case -EIO: return "connection failed";
    case -EPROTO: return "malformed or unauthenticated answer";
    case -ENOSPC: return "too many requests in flight";
    case -ECANCELED: return "cancelled";
    case -ENOENT: return "no such collection";
    default: return "unknown error";
    }
}

/* The code and message of an answer: 0 when OK. */
static int answer_rc(struct qv_client *c, const struct qv_proto_resp *r, const char *where)
{
    const struct qv_proto_hdr *h = &r->hdr;
    if (h->status == QV_PROTO_OK)
        return 0;
    const struct qv_proto_error_resp *e = &r->u.error;
    if (h->status == QV_PROTO_NOT_PRIMARY)
        return fail(c, QV_CLIENT_ESTATUS(h->status), "%s: NOT_PRIMARY from %s: "
                    "the primary is %.*s: %.*s", opname(h->opcode), where,
                    (int)e->primary.len, e->primary.s, (int)e->reason.len, e->reason.s);
    return fail(c, QV_CLIENT_ESTATUS(h->status), "%s: %s from %s: %.*s", opname(h->opcode),
                qv_proto_status_name(h->status), where, (int)e->reason.len, e->reason.s);
}

static uint64_t next_tcp_id(struct qv_client *c)
{
    for (;;) {
        uint64_t id = c->id_base + (((uint64_t)++c->tcp_gen << SLOT_BITS) | TCP_SLOT);
        if (id)
            return id;
    }
}

/* ---- connect / close ----------------------------------------------------- */

void qv_client_opts_default(struct qv_client_opts *o)
{
    *o = (struct qv_client_opts){
        .timeout_ms = 200, .tries = 3, .backoff_base_ms = 10, .backoff_max_ms = 1000,
        .jitter = 1, .udp_search = 1, .tcp_timeout_ms = 60000, .max_inflight = 1024,
        .upsert_batch_bytes = 4u << 20,
    };
}

const char *qv_client_connect_errmsg(void)
{
    return connect_err;
}

static void fmt_addr(char *out, size_t cap, const char *host, uint16_t port)
{
    if (strchr(host, ':'))
        snprintf(out, cap, "[%s]:%u", host, port);
    else
        snprintf(out, cap, "%s:%u", host, port);
}

static int check_opts(const struct qv_client_opts *o)
{
    const char *bad = NULL;
    if (o->key && o->key_len < QV_PROTO_MIN_KEY)
        bad = "key_len: an auth key has at least 16 bytes";
    else if (!o->timeout_ms)
        bad = "timeout_ms = 0: use 1 or more";
    else if (!o->tries || o->tries > 1000)
        bad = "tries: use 1..1000";
    else if (o->backoff_max_ms < o->backoff_base_ms)
        bad = "backoff_max_ms < backoff_base_ms";
    else if (!o->tcp_timeout_ms)
        bad = "tcp_timeout_ms = 0: use 1 or more";
    else if (!o->max_inflight || o->max_inflight > MAX_INFLIGHT)
        bad = "max_inflight: use 1..65536";
    else if (o->upsert_batch_bytes < 4096 || o->upsert_batch_bytes > QV_PROTO_TCP_MAX_BODY)
        bad = "upsert_batch_bytes: use 4096..67108864";
    if (!bad)
        return 0;
    snprintf(connect_err, sizeof connect_err, "qv_client_connect: opts.%s", bad);
    return -EINVAL;
}

struct qv_client *qv_client_connect(const char *host, uint16_t udp_port, uint16_t tcp_port,
                                    const struct qv_client_opts *opts)
{
    struct qv_client_opts o;
    if (opts)
        o = *opts;
    else
        qv_client_opts_default(&o);
    connect_err[0] = 0;
    if (!host || !*host || !udp_port || !tcp_port) {
        snprintf(connect_err, sizeof connect_err, "qv_client_connect: host %s, udp port %u, "
                 "tcp port %u: a host and two non-zero ports are needed",
                 host ? host : "NULL", udp_port, tcp_port);
        return NULL;
    }
    if (check_opts(&o) < 0)
        return NULL;

    struct qv_client *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(connect_err, sizeof connect_err, "qv_client_connect: out of memory");
        return NULL;
    }
    c->o = o;
    c->ufd = c->tfd = -1;
    if (o.key) {
        if (qv_proto_key_init(&c->key, o.key, o.key_len) < 0) {
            snprintf(connect_err, sizeof connect_err, "qv_client_connect: the auth key "
                     "was refused (at least 16 bytes)");
            goto fail_key;
        }
        c->has_key = 1;
    }
    c->o.key = NULL;            /* prepared; the caller's bytes are not kept */
    const char *thost = o.tcp_host && *o.tcp_host ? o.tcp_host : host;
    fmt_addr(c->uaddr_s, sizeof c->uaddr_s, host, udp_port);
    fmt_addr(c->taddr_s, sizeof c->taddr_s, thost, tcp_port);
    c->o.tcp_host = NULL;       /* resolved below; the caller's string is not kept */

    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_DGRAM };
    struct addrinfo *ai = NULL;
    int grc = getaddrinfo(host, NULL, &hints, &ai);
    if (grc != 0 || !ai) {
        snprintf(connect_err, sizeof connect_err, "qv_client_connect: cannot resolve "
                 "host '%s': %s", host, gai_strerror(grc));
        goto fail_resolve;
    }
    struct sockaddr_storage ua;
    memcpy(&ua, ai->ai_addr, ai->ai_addrlen);
    socklen_t alen = ai->ai_addrlen;
    int family = ai->ai_family;
    freeaddrinfo(ai);
    memcpy(&c->taddr, &ua, alen);
    c->taddr_len = alen;
    int tfamily = family;
    if (thost != host) {
        struct addrinfo *tai = NULL;
        grc = getaddrinfo(thost, NULL, &hints, &tai);
        if (grc != 0 || !tai) {
            snprintf(connect_err, sizeof connect_err, "qv_client_connect: cannot resolve "
                     "tcp_host '%s': %s", thost, gai_strerror(grc));
            goto fail_resolve;
        }
        memcpy(&c->taddr, tai->ai_addr, tai->ai_addrlen);
        c->taddr_len = tai->ai_addrlen;
        tfamily = tai->ai_family;
        freeaddrinfo(tai);
    }
    if (family == AF_INET6)
        ((struct sockaddr_in6 *)&ua)->sin6_port = htons(udp_port);
    else
        ((struct sockaddr_in *)&ua)->sin_port = htons(udp_port);
    if (tfamily == AF_INET6)
        ((struct sockaddr_in6 *)&c->taddr)->sin6_port = htons(tcp_port);
    else
        ((struct sockaddr_in *)&c->taddr)->sin_port = htons(tcp_port);

    c->ufd = socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->ufd < 0 || connect(c->ufd, (struct sockaddr *)&ua, alen) != 0) {
        snprintf(connect_err, sizeof connect_err, "qv_client_connect: UDP socket to %s: %s",
                 c->uaddr_s, strerror(errno));
        goto fail_socket;
    }

    c->slots = calloc(o.max_inflight, sizeof *c->slots);
    if (!c->slots) {
        snprintf(connect_err, sizeof connect_err, "qv_client_connect: out of memory for "
                 "%u in-flight slots", o.max_inflight);
        goto fail_slots;
    }
    for (uint32_t i = 0; i < o.max_inflight; i++)
        c->slots[i].next_free = i + 1 < o.max_inflight ? i + 1 : NO_SLOT;
    c->free_head = 0;

    uint64_t seed = o.seed;
    if (!seed && getrandom(&seed, sizeof seed, GRND_NONBLOCK) != sizeof seed)
        seed = (uint64_t)now_ns() ^ ((uint64_t)getpid() << 32);
    c->rng = seed ? seed : 0x9E3779B97F4A7C15ull;
    c->id_base = rnd(c);
    return c;

fail_slots:
fail_socket:
    if (c->ufd >= 0)
        close(c->ufd);
fail_resolve:
    if (c->has_key)
        qv_proto_key_fini(&c->key);
fail_key:
    free(c);
    return NULL;
}

static void tcp_close(struct qv_client *c)
{
    if (c->tfd >= 0)
        close(c->tfd);
    c->tfd = -1;
}

void qv_client_close(struct qv_client *c)
{
    if (!c)
        return;
    tcp_close(c);
    close(c->ufd);
    if (c->has_key)
        qv_proto_key_fini(&c->key);
    free(c->slots);
    free(c->ttx);
    free(c->trx);
    free(c);
}

const char *qv_client_errmsg(const struct qv_client *c)
{
    return c ? c->err : "qv_client_errmsg: no client";
}

void qv_client_stats(const struct qv_client *c, struct qv_client_stats *out)
{
    *out = c->st;
}

uint32_t qv_client_inflight(const struct qv_client *c)
{
    return c->inflight;
}

int qv_client_fd(const struct qv_client *c)
{
    return c->ufd;
}

/* ---- UDP: slots, sending, retries ----------------------------------------- */

static struct slot *slot_get(struct qv_client *c)
{
    if (c->free_head == NO_SLOT)
        return NULL;
    uint32_t i = c->free_head;
    struct slot *s = &c->slots[i];
    c->free_head = s->next_free;
    if (i + 1 > c->hi)
        c->hi = i + 1;
    do
        s->id = c->id_base + (((uint64_t)++s->gen << SLOT_BITS) | i);
    while (s->id == 0);
    s->tries = 0;
    return s;
}

static void slot_put(struct qv_client *c, struct slot *s)
{
    s->state = SLOT_FREE;
    s->next_free = c->free_head;
    c->free_head = (uint32_t)(s - c->slots);
}

/* Free the slot, then run its completion (so the callback may submit). */
static void complete(struct qv_client *c, struct slot *s, int rc, const struct qv_proto_resp *r)
{
    struct user u = s->user;
    slot_put(c, s);
    c->inflight--;
    c->in_callback++;
    u.done(c, &u, rc, r);
    c->in_callback--;
}

/* One send of s; a socket error other than a lost datagram fails it. */
static int slot_send(struct qv_client *c, struct slot *s)
{
    if (s->tries > 0) {
        qv_proto_set_retry(s->msg);
        if (c->has_key)
            qv_proto_sign(s->msg, sizeof s->msg, s->len, &c->key);
        c->st.udp_retries++;
    }
    s->tries++;
    c->st.udp_sent++;
    for (int again = 0; again < 2; again++) {
        if (send(c->ufd, s->msg, s->len, 0) == (ssize_t)s->len)
            return 0;
        if (errno == ECONNREFUSED) {        /* an earlier ICMP: noted, send again */
            c->refused = 1;
            continue;
        }
        if (errno == EAGAIN || errno == ENOBUFS || errno == EINTR)
            return 0;                       /* as if lost: the retry covers it */
        break;
    }
    return fail(c, -EIO, "%s: send to %s (UDP): %s", opname(s->opcode), c->uaddr_s,
                strerror(errno));
}

/* Put a filled slot (msg, len, opcode, user) in flight. */
static int slot_start(struct qv_client *c, struct slot *s)
{
    if (c->has_key) {
        int64_t n = qv_proto_sign(s->msg, sizeof s->msg, s->len, &c->key);
        if (n < 0) {
            slot_put(c, s);
            return fail(c, -EINVAL, "%s: the signed request does not fit a %u-byte datagram",
                        opname(s->opcode), QV_PROTO_UDP_MAX);
        }
        s->len = (uint32_t)n;
    }
    int rc = slot_send(c, s);
    if (rc < 0) {
        slot_put(c, s);
        return rc;
    }
    s->state = SLOT_WAIT;
    s->due_ns = now_ns() + (int64_t)c->o.timeout_ms * 1000000;
    c->inflight++;
    return 0;
}

static int64_t backoff_ns(struct qv_client *c, unsigned sent)
{
    uint64_t cap = c->o.backoff_base_ms;
    for (unsigned i = 1; i < sent && cap < c->o.backoff_max_ms; i++)
        cap <<= 1;
    if (cap > c->o.backoff_max_ms)
        cap = c->o.backoff_max_ms;
    uint64_t ns = cap * 1000000;
    if (c->o.jitter)
        ns = ns ? rnd(c) % (ns + 1) : 0;
    return (int64_t)ns;
}

/* Fire due retries and timeouts; *next gets the earliest due time left. */
static int udp_timers(struct qv_client *c, int64_t now, int64_t *next)
{
    int fired = 0;
    *next = INT64_MAX;
    for (uint32_t i = 0; i < c->hi && c->inflight; i++) {
        struct slot *s = &c->slots[i];
        if (s->state == SLOT_FREE)
            continue;
        if (s->due_ns <= now && s->state == SLOT_WAIT) {
            if (s->tries >= c->o.tries) {
                c->st.udp_timeouts++;
                fail(c, -ETIMEDOUT, "%s: timed out after %u tries to %s (UDP, %u ms each)%s",
                     opname(s->opcode), s->tries, c->uaddr_s, c->o.timeout_ms,
                     c->refused ? ": port unreachable: is quiverd running there?" : "");
                complete(c, s, -ETIMEDOUT, NULL);
                fired++;
                continue;
            }
            s->state = SLOT_BACKOFF;
            s->due_ns = now + backoff_ns(c, s->tries);
        }
        if (s->due_ns <= now && s->state == SLOT_BACKOFF) {
            int rc = slot_send(c, s);
            if (rc < 0) {
                complete(c, s, rc, NULL);
                fired++;
                continue;
            }
            s->state = SLOT_WAIT;
            s->due_ns = now + (int64_t)c->o.timeout_ms * 1000000;
        }
        if (s->due_ns < *next)
            *next = s->due_ns;
    }
    return fired;
}

/* Read every datagram waiting; complete the requests they answer. */
static int udp_drain(struct qv_client *c)
{
    int fired = 0;
    for (;;) {
        ssize_t n = recv(c->ufd, c->urx, sizeof c->urx, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return fired;
            if (errno == EINTR)
                continue;
            if (errno == ECONNREFUSED) {
                c->refused = 1;
                continue;
            }
            return fail(c, -EIO, "recv from %s (UDP): %s", c->uaddr_s, strerror(errno));
        }
        struct qv_proto_resp r;
        struct qv_proto_err err;
        if (qv_proto_decode_response(c->urx, (size_t)n, QV_PROTO_UDP,
                                     c->has_key ? &c->key : NULL, &r, &err) < 0) {
            c->st.stale++;      /* malformed or forged: as if never received */
            continue;
        }
        uint32_t i = (uint32_t)((r.hdr.request_id - c->id_base) & SLOT_MASK);
        struct slot *s = i < c->o.max_inflight ? &c->slots[i] : NULL;
        if (!s || s->state == SLOT_FREE || s->id != r.hdr.request_id ||
            s->opcode != r.hdr.opcode) {
            c->st.stale++;
            continue;
        }
        int rc = answer_rc(c, &r, c->uaddr_s);
        complete(c, s, rc, &r);
        fired++;
    }
}

/* The poll loop; stop (when not NULL) ends it once set, even without a
 * completion of its own. */
static int poll_loop(struct qv_client *c, int timeout_ms, const int *stop)
{
    int64_t end = timeout_ms < 0 ? INT64_MAX : now_ns() + (int64_t)timeout_ms * 1000000;
    int count = 0;
    for (;;) {
        int rc = udp_drain(c);
        if (rc < 0)
            return rc;
        count += rc;
        int64_t now = now_ns(), next;
        count += udp_timers(c, now, &next);
        if (stop ? *stop : count > 0)
            return count;
        if (!c->inflight || now >= end)
            return count;
        int64_t until = next < end ? next : end;
        if (c->o.busy_poll)
            continue;           /* spin: recv again at once (opts.busy_poll) */
        int64_t ms = (until - now + 999999) / 1000000;
        struct pollfd p = { .fd = c->ufd, .events = POLLIN };
        if (poll(&p, 1, ms > 60000 ? 60000 : (int)ms) < 0 && errno != EINTR)
            return fail(c, -EIO, "poll on the UDP socket: %s", strerror(errno));
    }
}

int qv_client_poll(struct qv_client *c, int timeout_ms)
{
    if (c->in_callback)
        return fail(c, -EINVAL, "qv_client_poll: called from a callback");
    return poll_loop(c, timeout_ms, NULL);
}

int qv_client_next_timeout_ms(const struct qv_client *c)
{
    if (!c->inflight)
        return -1;
    int64_t next = INT64_MAX, now = now_ns();
    for (uint32_t i = 0; i < c->hi; i++)
        if (c->slots[i].state != SLOT_FREE && c->slots[i].due_ns < next)
            next = c->slots[i].due_ns;
    return next <= now ? 0 : (int)((next - now + 999999) / 1000000);
}

/* A synchronous UDP exchange: run the loop until the frame is done. */
struct sync_frame {
    int done;
    int rc;
};

static int sync_wait(struct qv_client *c, struct sync_frame *f)
{
    while (!f->done) {
        int rc = poll_loop(c, -1, &f->done);
        if (rc < 0)
            return rc;
    }
    return f->rc;
}

static int not_in_callback(struct qv_client *c, const char *what)
{
    return c->in_callback ? fail(c, -EINVAL, "%s: called from a callback: only "
                                 "qv_client_search_async may be", what) : 0;
}

/* ---- TCP ------------------------------------------------------------------- */

static int grow(struct qv_client *c, uint8_t **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap : 65536;
    while (n < need)
        n *= 2;
    uint8_t *p = realloc(*buf, n);
    if (!p)
        return fail(c, -ENOMEM, "out of memory for a %zu-byte message buffer", n);
    *buf = p;
    *cap = n;
    return 0;
}

static int wait_fd(struct qv_client *c, int events, int64_t deadline, const char *op)
{
    for (;;) {
        int64_t left = deadline - now_ns();
        if (left <= 0) {
            tcp_close(c);
            return fail(c, -ETIMEDOUT, "%s: no answer within %u ms from %s (TCP): "
                        "the connection was closed", op, c->o.tcp_timeout_ms, c->taddr_s);
        }
        struct pollfd p = { .fd = c->tfd, .events = (short)events };
        int64_t ms = (left + 999999) / 1000000;
        int n = poll(&p, 1, ms > 60000 ? 60000 : (int)ms);
        if (n > 0)
            return 0;
        if (n < 0 && errno != EINTR) {
            tcp_close(c);
            return fail(c, -EIO, "%s: poll on the connection to %s: %s", op, c->taddr_s,
                        strerror(errno));
        }
    }
}

static int tcp_connect(struct qv_client *c, int64_t deadline, const char *op)
{
    c->tfd = socket(c->taddr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->tfd < 0)
        return fail(c, -EIO, "%s: TCP socket: %s", op, strerror(errno));
    int one = 1;
    setsockopt(c->tfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->tfd, (struct sockaddr *)&c->taddr, c->taddr_len) != 0) {
        if (errno != EINPROGRESS) {
            int e = errno;
            tcp_close(c);
            return fail(c, -EIO, "%s: connect to %s (TCP): %s", op, c->taddr_s, strerror(e));
        }
        int rc = wait_fd(c, POLLOUT, deadline, op);
        if (rc < 0)
            return rc;
        int e = 0;
        socklen_t el = sizeof e;
        getsockopt(c->tfd, SOL_SOCKET, SO_ERROR, &e, &el);
        if (e) {
            tcp_close(c);
            return fail(c, -EIO, "%s: connect to %s (TCP): %s", op, c->taddr_s, strerror(e));
        }
    }
    c->st.tcp_connects++;
    return 0;
}

/*
 * Sign and send c->ttx[len], read the answer into c->trx and decode it
 * into *r.  Returns 0 (status OK), the status code with the server's
 * reason, or a local error (the connection is then closed).
 */
static int tcp_call(struct qv_client *c, size_t len, struct qv_proto_resp *r)
{
    unsigned op = c->ttx[3];
    const char *opn = opname(op);
    uint64_t id;
    memcpy(&id, c->ttx + 8, sizeof id);
    int rc;
    if (c->has_key) {
        if ((rc = grow(c, &c->ttx, &c->ttx_cap, len + QV_PROTO_TAG_SIZE)) < 0)
            return rc;
        len = (size_t)qv_proto_sign(c->ttx, c->ttx_cap, len, &c->key);
    }
    int64_t deadline = now_ns() + (int64_t)c->o.tcp_timeout_ms * 1000000;
    if (c->tfd < 0 && (rc = tcp_connect(c, deadline, opn)) < 0)
        return rc;
    c->st.tcp_messages++;
    for (size_t off = 0; off < len;) {
        ssize_t n = send(c->tfd, c->ttx + off, len - off, MSG_NOSIGNAL);
        if (n > 0) {
            off += (size_t)n;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            if ((rc = wait_fd(c, POLLOUT, deadline, opn)) < 0)
                return rc;
            continue;
        }
        int e = errno;
        tcp_close(c);
        return fail(c, -EIO, "%s: send to %s (TCP): %s", opn, c->taddr_s, strerror(e));
    }
    if ((rc = grow(c, &c->trx, &c->trx_cap, 65536)) < 0)
        return rc;
    size_t got = 0, need = QV_PROTO_HDR_SIZE;
    while (got < need) {
        ssize_t n = recv(c->tfd, c->trx + got, need - got, 0);
        if (n > 0) {
            got += (size_t)n;
            if (got >= QV_PROTO_HDR_SIZE) {
                need = qv_proto_tcp_need(c->trx, got);
                if (need > TCP_MSG_MAX)
                    need = TCP_MSG_MAX;
                if ((rc = grow(c, &c->trx, &c->trx_cap, need)) < 0) {
                    tcp_close(c);
                    return rc;
                }
            }
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            if ((rc = wait_fd(c, POLLIN, deadline, opn)) < 0)
                return rc;
            continue;
        }
        int e = n == 0 ? 0 : errno;
        tcp_close(c);
        return fail(c, -EIO, "%s: the connection to %s (TCP) %s", opn, c->taddr_s,
                    e ? strerror(e) : "was closed by the server before the answer");
    }
    struct qv_proto_err err;
    if (qv_proto_decode_response(c->trx, need, QV_PROTO_TCP, c->has_key ? &c->key : NULL,
                                 r, &err) < 0) {
        tcp_close(c);
        return fail(c, -EPROTO, "%s: a bad answer from %s (TCP): %s", opn, c->taddr_s,
                    err.reason);
    }
    if (r->hdr.request_id != id || r->hdr.opcode != op) {
        tcp_close(c);
        return fail(c, -EPROTO, "%s: the answer from %s (TCP) is for another request "
                    "(id %llu, %s)", opn, c->taddr_s, (unsigned long long)r->hdr.request_id,
                    opname(r->hdr.opcode));
    }
    return answer_rc(c, r, c->taddr_s);
}

/* Encode into c->ttx with expr (which uses the buffer c->ttx, c->ttx_cap),
 * growing it while the encoder says QV_ENOSPC; n gets the length or the
 * encoder's error. */
#define ENCODE_TCP(c, n, expr)                                                  \
    do {                                                                        \
        if (grow((c), &(c)->ttx, &(c)->ttx_cap, 65536) < 0) {                   \
            (n) = -ENOMEM;                                                      \
            break;                                                              \
        }                                                                       \
        while (((n) = (expr)) == -ENOSPC && (c)->ttx_cap < TCP_MSG_MAX)         \
            if (grow((c), &(c)->ttx, &(c)->ttx_cap, (c)->ttx_cap * 2) < 0) {    \
                (n) = -ENOMEM;                                                  \
                break;                                                          \
            }                                                                   \
    } while (0)

static int encode_failed(struct qv_client *c, int64_t n, const char *op)
{
    if (n == -ENOMEM)
        return -ENOMEM;
    return fail(c, -EINVAL, "%s: the request cannot be encoded (%s): a count, length or "
                "array is outside the protocol's limits (docs/PROTOCOL.md \"Limits\")", op,
                n == -ENOSPC ? "over 64 MiB" : "invalid");
}

/* An empty-bodied request over TCP. */
static int tcp_empty(struct qv_client *c, enum qv_proto_opcode op, uint64_t coll,
                     struct qv_proto_resp *r)
{
    int rc = not_in_callback(c, opname(op));
    if (rc < 0)
        return rc;
    int64_t n;
    ENCODE_TCP(c, n, qv_proto_encode_empty_req(c->ttx, c->ttx_cap, op, next_tcp_id(c), coll));
    if (n < 0)
        return encode_failed(c, n, opname(op));
    return tcp_call(c, (size_t)n, r);
}

/* ---- collections ------------------------------------------------------------ */

int qv_client_create(struct qv_client *c, const struct qv_client_create *cr, uint64_t *id)
{
    int rc = not_in_callback(c, "CREATE");
    if (rc < 0)
        return rc;
    if (!cr || !cr->name || !*cr->name || strlen(cr->name) > QV_PROTO_MAX_NAME)
        return fail(c, -EINVAL, "CREATE: name %s: use 1..64 characters of [A-Za-z0-9_.-]",
                    cr && cr->name ? "too long or empty" : "missing");
    if (cr->nattrs > QV_PROTO_MAX_ATTRS)
        return fail(c, -EINVAL, "CREATE '%s': nattrs = %u: use 0..16", cr->name, cr->nattrs);
    struct qv_proto_create p = {
        .dim = cr->dim, .metric = (uint8_t)cr->metric, .index = (uint8_t)cr->index,
        .nattrs = cr->nattrs, .nlist = cr->nlist, .nprobe = cr->nprobe, .pq_m = cr->pq_m,
        .pq_nbits = cr->pq_nbits, .hnsw_m = cr->hnsw_m,
        .ef_construction = cr->ef_construction, .ef_search = cr->ef_search,
        .name = { cr->name, (uint32_t)strlen(cr->name) },
    };
    for (unsigned a = 0; a < cr->nattrs; a++) {
        if (!cr->attrs[a] || !*cr->attrs[a] || strlen(cr->attrs[a]) > QV_PROTO_MAX_NAME)
            return fail(c, -EINVAL, "CREATE '%s': attrs[%u] is missing, empty or longer "
                        "than 64 bytes", cr->name, a);
        p.attrs[a] = (struct qv_proto_str){ cr->attrs[a], (uint32_t)strlen(cr->attrs[a]) };
    }
    int64_t n;
    ENCODE_TCP(c, n, qv_proto_encode_create(c->ttx, c->ttx_cap, next_tcp_id(c), &p));
    if (n < 0)
        return encode_failed(c, n, "CREATE");
    struct qv_proto_resp r;
    if ((rc = tcp_call(c, (size_t)n, &r)) < 0)
        return rc;
    if (id)
        *id = r.u.collection_id;
    return 0;
}

int qv_client_drop(struct qv_client *c, uint64_t id)
{
    struct qv_proto_resp r;
    if (!id)
        return fail(c, -EINVAL, "DROP: collection id 0: ids start at 1");
    return tcp_empty(c, QV_PROTO_OP_DROP, id, &r);
}

static void copy_str(char *dst, struct qv_proto_str s)
{
    uint32_t n = s.len > QV_CLIENT_MAX_NAME ? QV_CLIENT_MAX_NAME : s.len;
    memcpy(dst, s.s, n);
    dst[n] = 0;
}

static void desc_to_coll(const struct qv_proto_desc *d, struct qv_client_collection *o)
{
    memset(o, 0, sizeof *o);
    o->id = d->collection_id;
    copy_str(o->name, d->name);
    o->dim = d->dim;
    o->metric = (enum qv_client_metric)d->metric;
    o->index = (enum qv_client_index)d->index;
    o->nattrs = d->nattrs;
    for (unsigned a = 0; a < d->nattrs && a < QV_CLIENT_MAX_ATTRS; a++)
        copy_str(o->attrs[a], d->attrs[a]);
    o->rows = d->rows;
    o->epoch = d->epoch;
    o->nlist = d->nlist;
    o->nprobe = d->nprobe;
    o->pq_m = d->pq_m;
    o->pq_nbits = d->pq_nbits;
    o->trained = d->trained;
    o->hnsw_m = d->hnsw_m;
    o->ef_construction = d->ef_construction;
    o->ef_search = d->ef_search;
}

int qv_client_describe(struct qv_client *c, uint64_t id, struct qv_client_collection *out)
{
    struct qv_proto_resp r;
    if (!id || !out)
        return fail(c, -EINVAL, "DESCRIBE: %s", !id ? "collection id 0: ids start at 1"
                                                    : "out is NULL");
    int rc = tcp_empty(c, QV_PROTO_OP_DESCRIBE, id, &r);
    if (rc < 0)
        return rc;
    desc_to_coll(&r.u.desc, out);
    return 0;
}

int qv_client_list(struct qv_client *c, struct qv_client_collection **out, uint32_t *n)
{
    struct qv_proto_resp r;
    if (!out || !n)
        return fail(c, -EINVAL, "LIST: out or n is NULL");
    *out = NULL;
    *n = 0;
    int rc = tcp_empty(c, QV_PROTO_OP_LIST, 0, &r);
    if (rc < 0)
        return rc;
    if (!r.u.list.n)
        return 0;
    struct qv_client_collection *a = calloc(r.u.list.n, sizeof *a);
    if (!a)
        return fail(c, -ENOMEM, "LIST: out of memory for %u collections", r.u.list.n);
    size_t cur = 0;
    struct qv_proto_desc d;
    uint32_t i = 0;
    while (i < r.u.list.n && qv_proto_list_next(&r.u.list, &cur, &d))
        desc_to_coll(&d, &a[i++]);
    *out = a;
    *n = i;
    return 0;
}

void qv_client_list_free(struct qv_client_collection *list)
{
    free(list);
}

int qv_client_lookup(struct qv_client *c, const char *name, uint64_t *id)
{
    struct qv_client_collection *l;
    uint32_t n;
    if (!name || !id)
        return fail(c, -EINVAL, "lookup: name or id is NULL");
    int rc = qv_client_list(c, &l, &n);
    if (rc < 0)
        return rc;
    rc = fail(c, -ENOENT, "lookup: no collection is called '%s' on %s", name, c->taddr_s);
    for (uint32_t i = 0; i < n; i++)
        if (strcmp(l[i].name, name) == 0) {
            *id = l[i].id;
            rc = 0;
            c->err[0] = 0;
            break;
        }
    qv_client_list_free(l);
    return rc;
}

int qv_client_stats_json(struct qv_client *c, uint64_t id, char **json)
{
    struct qv_proto_resp r;
    if (!json)
        return fail(c, -EINVAL, "STATS: json is NULL");
    int rc = tcp_empty(c, QV_PROTO_OP_STATS, id, &r);
    if (rc < 0)
        return rc;
    char *s = malloc((size_t)r.u.stats.len + 1);
    if (!s)
        return fail(c, -ENOMEM, "STATS: out of memory for %u bytes", r.u.stats.len);
    memcpy(s, r.u.stats.s, r.u.stats.len);
    s[r.u.stats.len] = 0;
    *json = s;
    return 0;
}

/* ---- writes and reads ------------------------------------------------------- */

int qv_client_upsert(struct qv_client *c, uint64_t coll, const struct qv_client_rows *rows,
                     qv_client_progress_fn progress, void *arg, uint64_t *epoch)
{
    int rc = not_in_callback(c, "UPSERT");
    if (rc < 0)
        return rc;
    if (!rows || !rows->n || !rows->ids || !rows->vectors)
        return fail(c, -EINVAL, "UPSERT: no rows (n = 0 or NULL ids / vectors)");
    if (!rows->dim || rows->dim > QV_PROTO_MAX_DIM || rows->nattrs > QV_PROTO_MAX_ATTRS)
        return fail(c, -EINVAL, "UPSERT: dim %u, nattrs %u: use dim 1..4096, nattrs 0..16",
                    rows->dim, rows->nattrs);
    for (unsigned a = 0; a < rows->nattrs; a++)
        if (!rows->attrs[a])
            return fail(c, -EINVAL, "UPSERT: attrs[%u] is NULL (nattrs = %u)", a,
                        rows->nattrs);
    uint64_t row_bytes = 8 + 4ull * rows->dim + 8ull * rows->nattrs;
    uint64_t per = (c->o.upsert_batch_bytes - 24) / row_bytes;
    if (per > QV_PROTO_MAX_UPSERT)
        per = QV_PROTO_MAX_UPSERT;
    if (!per)
        per = 1;
    for (uint64_t first = 0; first < rows->n; first += per) {
        uint32_t m = (uint32_t)(rows->n - first < per ? rows->n - first : per);
        struct qv_proto_upsert u = {
            .n = m, .dim = rows->dim, .nattrs = rows->nattrs, .ids = rows->ids + first,
            .vectors = rows->vectors + first * rows->dim,
        };
        for (unsigned a = 0; a < rows->nattrs; a++)
            u.attrs[a] = rows->attrs[a] + first;
        int64_t n;
        ENCODE_TCP(c, n, qv_proto_encode_upsert(c->ttx, c->ttx_cap, next_tcp_id(c), coll, &u));
        if (n < 0)
            return encode_failed(c, n, "UPSERT");
        struct qv_proto_resp r;
        if ((rc = tcp_call(c, (size_t)n, &r)) < 0) {
            if (first) {
                size_t l = strlen(c->err);
                snprintf(c->err + l, sizeof c->err - l, " (rows %llu.. of %llu; the "
                         "%llu before were applied)", (unsigned long long)first,
                         (unsigned long long)rows->n, (unsigned long long)first);
            }
            return rc;
        }
        if (epoch)
            *epoch = r.u.write.epoch;
        if (progress && progress(arg, first + m, rows->n))
            return fail(c, -ECANCELED, "UPSERT: cancelled by the progress callback after "
                        "%llu of %llu rows", (unsigned long long)(first + m),
                        (unsigned long long)rows->n);
    }
    return 0;
}

int qv_client_delete(struct qv_client *c, uint64_t coll, uint64_t n, const uint64_t *ids,
                     uint64_t *deleted)
{
    int rc = not_in_callback(c, "DELETE");
    if (rc < 0)
        return rc;
    if (!n || !ids)
        return fail(c, -EINVAL, "DELETE: no ids (n = 0 or ids NULL)");
    uint64_t total = 0;
    for (uint64_t first = 0; first < n; first += QV_PROTO_MAX_DELETE) {
        uint32_t m = (uint32_t)(n - first < QV_PROTO_MAX_DELETE ? n - first
                                                                 : QV_PROTO_MAX_DELETE);
        struct qv_proto_ids d = { .n = m, .ids = ids + first };
        int64_t len;
        ENCODE_TCP(c, len, qv_proto_encode_delete(c->ttx, c->ttx_cap, next_tcp_id(c), coll, &d));
        if (len < 0)
            return encode_failed(c, len, "DELETE");
        struct qv_proto_resp r;
        if ((rc = tcp_call(c, (size_t)len, &r)) < 0)
            return rc;
        total += r.u.write.count;
    }
    if (deleted)
        *deleted = total;
    return 0;
}

int qv_client_get(struct qv_client *c, uint64_t coll, uint64_t n, const uint64_t *ids,
                  uint32_t dim, float *vectors, uint8_t *found)
{
    int rc = not_in_callback(c, "GET");
    if (rc < 0)
        return rc;
    if (!n || !ids || !vectors || !found || !dim || dim > QV_PROTO_MAX_DIM)
        return fail(c, -EINVAL, "GET: n = 0, a NULL array, or dim %u outside 1..4096", dim);
    uint64_t per = ((uint64_t)QV_PROTO_TCP_MAX_BODY - 64) / (13 + 4ull * dim);
    if (per > QV_PROTO_MAX_GET)
        per = QV_PROTO_MAX_GET;
    for (uint64_t first = 0; first < n; first += per) {
        uint32_t m = (uint32_t)(n - first < per ? n - first : per);
        struct qv_proto_ids g = { .n = m, .ids = ids + first };
        int64_t len;
        ENCODE_TCP(c, len, qv_proto_encode_get(c->ttx, c->ttx_cap, next_tcp_id(c), coll, &g));
        if (len < 0)
            return encode_failed(c, len, "GET");
        struct qv_proto_resp r;
        if ((rc = tcp_call(c, (size_t)len, &r)) < 0)
            return rc;
        if (r.u.get.n != m || r.u.get.dim != dim)
            return fail(c, -EPROTO, "GET: %s answered %u rows of dim %u for %u ids of dim %u "
                        "(is dim the collection's?)", c->taddr_s, r.u.get.n, r.u.get.dim, m,
                        dim);
        memcpy(found + first, r.u.get.found, m);
        memcpy(vectors + first * dim, r.u.get.vectors, (size_t)m * dim * sizeof(float));
    }
    return 0;
}

/* ---- search ----------------------------------------------------------------- */

static int search_req(struct qv_client *c, const char *op, const float *q, uint32_t dim,
                      uint32_t nq, uint32_t k, const struct qv_client_search_params *p,
                      struct qv_proto_search *s)
{
    if (!q || !dim || dim > QV_PROTO_MAX_DIM)
        return fail(c, -EINVAL, "%s: %s", op, !q ? "the query is NULL"
                                                 : "dim outside 1..4096");
    if (!k || k > QV_PROTO_MAX_K)
        return fail(c, -EINVAL, "%s: k = %u: use 1..1024", op, k);
    *s = (struct qv_proto_search){ .dim = dim, .k = k, .nq = nq, .queries = q };
    if (p) {
        s->nprobe = p->nprobe;
        s->ef = p->ef;
        s->deadline_us = p->deadline_us;
        s->consistency = p->consistency;
        s->qclass = p->bulk ? QV_PROTO_CLASS_BULK : QV_PROTO_CLASS_INTERACTIVE;
        s->sflags = p->semantic ? QV_PROTO_SF_SEMANTIC : 0;
        s->semantic = p->semantic_threshold;
        if (p->filter) {
            size_t fl = strlen(p->filter);
            if (fl > QV_PROTO_MAX_FILTER)
                return fail(c, -EINVAL, "%s: the filter is %zu bytes: at most 1024", op, fl);
            s->filter = (struct qv_proto_str){ p->filter, (uint32_t)fl };
        }
    }
    return 0;
}

static void hits_of(const struct qv_proto_resp *r, uint32_t row, struct qv_client_hits *h)
{
    const struct qv_proto_search_resp *s = &r->u.search;
    h->n = s->n[row];
    h->ids = s->ids + (size_t)row * s->k;
    h->dist = s->dist + (size_t)row * s->k;
    h->cached = (s->rflags[row] & QV_PROTO_RF_CACHED) != 0;
    h->approximate = (s->rflags[row] & QV_PROTO_RF_APPROX) != 0;
}

static void async_done(struct qv_client *c, const struct user *u, int rc,
                       const struct qv_proto_resp *r)
{
    if (rc < 0) {
        u->cb(u->arg, rc, NULL, c->err);
        return;
    }
    struct qv_client_hits h;
    hits_of(r, 0, &h);
    u->cb(u->arg, 0, &h, NULL);
}

/* Encode a SEARCH into a fresh slot; NULL with *rc when it cannot go by UDP. */
static struct slot *udp_search_slot(struct qv_client *c, uint64_t coll,
                                    const struct qv_proto_search *s, int *rc)
{
    size_t tag = c->has_key ? QV_PROTO_TAG_SIZE : 0;
    if (s->k > QV_PROTO_UDP_MAX_K ||
        QV_PROTO_HDR_SIZE + qv_proto_search_resp_size(s->k) + tag > QV_PROTO_UDP_MAX) {
        *rc = fail(c, -EINVAL, "SEARCH: k = %u: an answer over UDP holds at most %u "
                   "results: use qv_client_search_batch (TCP)", s->k, QV_PROTO_UDP_MAX_K);
        return NULL;
    }
    struct slot *sl = slot_get(c);
    if (!sl) {
        *rc = fail(c, -ENOSPC, "SEARCH: %u requests in flight (opts.max_inflight): "
                   "call qv_client_poll first", c->inflight);
        return NULL;
    }
    int64_t n = qv_proto_encode_search(sl->msg, QV_PROTO_UDP_MAX - tag, sl->id, coll, s);
    if (n < 0) {
        slot_put(c, sl);
        *rc = fail(c, -EINVAL, "SEARCH: the request (dim %u, filter %u bytes) %s", s->dim,
                   s->filter.len, n == -ENOSPC ? "does not fit a 1472-byte datagram: use "
                   "qv_client_search_batch (TCP)" : "cannot be encoded");
        return NULL;
    }
    sl->len = (uint32_t)n;
    sl->opcode = QV_PROTO_OP_SEARCH;
    return sl;
}

int qv_client_search_async(struct qv_client *c, uint64_t coll, const float *query, uint32_t dim,
                           uint32_t k, const struct qv_client_search_params *p,
                           qv_client_search_cb cb, void *arg)
{
    struct qv_proto_search s;
    int rc = search_req(c, "SEARCH", query, dim, 1, k, p, &s);
    if (rc < 0)
        return rc;
    if (!cb)
        return fail(c, -EINVAL, "SEARCH: the callback is NULL");
    struct slot *sl = udp_search_slot(c, coll, &s, &rc);
    if (!sl)
        return rc;
    sl->user = (struct user){ .done = async_done, .cb = cb, .arg = arg };
    return slot_start(c, sl);
}

struct search_frame {
    struct sync_frame f;
    uint32_t k;
    uint64_t *ids;
    float *dist;
    uint32_t *n;
};

static void copy_row(const struct qv_client_hits *h, uint32_t k, uint64_t *ids, float *dist,
                     uint32_t *n)
{
    uint32_t m = h->n < k ? h->n : k;
    memcpy(ids, h->ids, m * sizeof *ids);
    if (dist)
        memcpy(dist, h->dist, m * sizeof *dist);
    *n = m;
}

static void sync_search_done(struct qv_client *c, const struct user *u, int rc,
                             const struct qv_proto_resp *r)
{
    struct search_frame *sf = u->ctx;
    sf->f.done = 1;
    sf->f.rc = rc;
    if (rc == 0) {
        struct qv_client_hits h;
        hits_of(r, 0, &h);
        copy_row(&h, sf->k, sf->ids, sf->dist, sf->n);
    }
}

int qv_client_search(struct qv_client *c, uint64_t coll, const float *query, uint32_t dim,
                     uint32_t k, const struct qv_client_search_params *p,
                     uint64_t *ids, float *dist, uint32_t *n)
{
    int rc = not_in_callback(c, "SEARCH");
    if (rc < 0)
        return rc;
    struct qv_proto_search s;
    if ((rc = search_req(c, "SEARCH", query, dim, 1, k, p, &s)) < 0)
        return rc;
    if (!ids || !n)
        return fail(c, -EINVAL, "SEARCH: ids or n is NULL");
    if (c->o.udp_search) {
        struct slot *sl = udp_search_slot(c, coll, &s, &rc);
        if (sl) {
            struct search_frame sf = { .k = k, .ids = ids, .dist = dist, .n = n };
            sl->user = (struct user){ .done = sync_search_done, .ctx = &sf };
            if ((rc = slot_start(c, sl)) < 0)
                return rc;
            return sync_wait(c, &sf.f);
        }
        if (rc == -ENOSPC)
            return rc;
        /* does not fit a datagram: TCP */
    }
    int64_t len;
    ENCODE_TCP(c, len, qv_proto_encode_search(c->ttx, c->ttx_cap, next_tcp_id(c), coll, &s));
    if (len < 0)
        return encode_failed(c, len, "SEARCH");
    struct qv_proto_resp r;
    if ((rc = tcp_call(c, (size_t)len, &r)) < 0)
        return rc;
    struct qv_client_hits h;
    hits_of(&r, 0, &h);
    copy_row(&h, k, ids, dist, n);
    return 0;
}

int qv_client_search_batch(struct qv_client *c, uint64_t coll, uint32_t nq,
                           const float *queries, uint32_t dim, uint32_t k,
                           const struct qv_client_search_params *p,
                           uint64_t *ids, float *dist, uint32_t *n)
{
    int rc = not_in_callback(c, "SEARCH_BATCH");
    if (rc < 0)
        return rc;
    struct qv_proto_search s;
    if ((rc = search_req(c, "SEARCH_BATCH", queries, dim, 1, k, p, &s)) < 0)
        return rc;
    if (!nq || !ids || !n)
        return fail(c, -EINVAL, "SEARCH_BATCH: nq = 0, or ids or n NULL");
    for (uint32_t first = 0; first < nq; first += QV_PROTO_MAX_NQ) {
        uint32_t m = nq - first < QV_PROTO_MAX_NQ ? nq - first : QV_PROTO_MAX_NQ;
        s.nq = m;
        s.queries = queries + (size_t)first * dim;
        int64_t len;
        ENCODE_TCP(c, len, qv_proto_encode_search_batch(c->ttx, c->ttx_cap, next_tcp_id(c),
                                                        coll, &s));
        if (len < 0)
            return encode_failed(c, len, "SEARCH_BATCH");
        struct qv_proto_resp r;
        if ((rc = tcp_call(c, (size_t)len, &r)) < 0)
            return rc;
        if (r.u.search.nq != m || r.u.search.k != k)
            return fail(c, -EPROTO, "SEARCH_BATCH: %s answered %u rows of %u for %u of %u",
                        c->taddr_s, r.u.search.nq, r.u.search.k, m, k);
        size_t off = (size_t)first * k;
        memcpy(ids + off, r.u.search.ids, (size_t)m * k * sizeof *ids);
        if (dist)
            memcpy(dist + off, r.u.search.dist, (size_t)m * k * sizeof *dist);
        memcpy(n + first, r.u.search.n, m * sizeof *n);
    }
    return 0;
}

/* ---- ping --------------------------------------------------------------------- */

struct ping_frame {
    struct sync_frame f;
    uint64_t uptime_ms;
};

static void ping_done(struct qv_client *c, const struct user *u, int rc,
                      const struct qv_proto_resp *r)
{
    struct ping_frame *pf = u->ctx;
    pf->f.done = 1;
    pf->f.rc = rc;
    if (rc == 0)
        pf->uptime_ms = r->u.ping.uptime_ms;
}

int qv_client_ping(struct qv_client *c, uint64_t *uptime_ms)
{
    int rc = not_in_callback(c, "PING");
    if (rc < 0)
        return rc;
    struct slot *sl = slot_get(c);
    if (!sl)
        return fail(c, -ENOSPC, "PING: %u requests in flight (opts.max_inflight): call "
                    "qv_client_poll first", c->inflight);
    sl->len = (uint32_t)qv_proto_encode_empty_req(sl->msg, sizeof sl->msg, QV_PROTO_OP_PING,
                                                  sl->id, 0);
    sl->opcode = QV_PROTO_OP_PING;
    struct ping_frame pf = { 0 };
    sl->user = (struct user){ .done = ping_done, .ctx = &pf };
    if ((rc = slot_start(c, sl)) < 0)
        return rc;
    if ((rc = sync_wait(c, &pf.f)) < 0)
        return rc;
    if (uptime_ms)
        *uptime_ms = pf.uptime_ms;
    return 0;
}
