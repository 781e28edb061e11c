/*
 * udp.c - the kernel-socket UDP transport (quiver/udp.h).
 *
 * Per worker: a socket (SO_REUSEPORT), an eventfd and an epoll set over
 * both; `slots` slots, each with an rx and a tx buffer of max_datagram
 * bytes (rounded up to 64) carved from one aligned block; a stack of
 * free slot numbers (worker-only); a completion ring (below); the mmsghdr
 * and iovec arrays of one receive batch and of one send batch.
 *
 * Completion ring.  ASYNC slots come back from other threads through a
 * multi-producer single-consumer ring of `slots` entries (a slot can be
 * in it at most once, so it never overflows).  A producer takes a
 * position with fetch_add on the tail and stores slot number + 1 there
 * (release); the worker reads entries in order from its head and stops
 * at the first 0 (a producer that took its position but has not stored
 * yet: the worker sees it next turn), clearing each entry it takes.
 *
 * Waking.  Before sleeping the worker sets `sleeping`, fences (seq_cst)
 * and looks at the ring once more; a producer stores its entry, fences,
 * and if it finds `sleeping` set claims it (exchange to 0) and writes the
 * eventfd.  Either the worker's second look sees the entry or the
 * producer sees the flag, so no completion waits for the epoll timeout.
 *
 * The loop of a worker: take completions into the send batch; send;
 * receive up to `batch` datagrams into free slots (MSG_DONTWAIT); call
 * the handler on each; send the REPLY ones; when a receive came back
 * full, go again at once; else sleep in epoll_wait.  While stopping it
 * receives nothing and runs until its ASYNC slots are all back or the
 * drain deadline passes.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "quiver/alloc.h"
#include "quiver/errors.h"
#include "quiver/timeutil.h"
#include "quiver/udp.h"
#include "sock_int.h"

#define UDP_EPOLL_MS 100            /* longest sleep while nothing happens */

struct udp_slot {
    struct qv_udp_slot pub;         /* first: qv_udp_complete casts back */
    struct udp_worker *w;
    uint32_t idx;
};

struct udp_worker {
    struct qv_udp *u;
    unsigned idx;
    int fd, efd, epfd;
    pthread_t th;
    int started;
    struct udp_slot *slots;
    void *bufs;                     /* rx + tx buffers of every slot */
    void *user;                     /* user_size bytes per slot */
    uint32_t *free_stack;           /* worker-only */
    uint32_t nfree;
    uint32_t async_out;             /* ASYNC slots not yet back [worker] */
    _Atomic uint32_t *ring;         /* completion ring, slot + 1 per entry */
    _Atomic uint64_t ring_tail;     /* producers */
    uint64_t ring_head;             /* the worker */
    _Atomic int sleeping;
    struct mmsghdr *rmsg, *smsg;
    struct iovec *riov, *siov;
    uint32_t *rslot, *sslot;        /* slot of each message of the batches */
    unsigned nsend;
    _Atomic uint64_t st_rx, st_tx, st_trunc, st_drop, st_async, st_refused, st_senderr,
        st_wakes;
};

struct qv_udp {
    struct qv_udp_opts o;
    struct qv_udp_handler h;
    uint16_t port;
    uint32_t buf_size;              /* max_datagram rounded up to 64 */
    _Atomic int stopping;
    int64_t drain_deadline;
    struct udp_worker *w;
};

void qv_udp_opts_default(struct qv_udp_opts *o)
{
    memset(o, 0, sizeof *o);
    o->workers = 2;
    o->batch = 32;
    o->slots = 1024;
    o->max_datagram = 1472;
    o->drain_ms = 5000;
}

static int check_opts(const struct qv_udp_opts *o)
{
    if (o->workers < 1 || o->workers > QV_UDP_MAX_WORKERS)
        return qv_seterr(QV_EINVAL, "udp: workers = %u: use 1..%u", o->workers,
                         QV_UDP_MAX_WORKERS);
    if (o->batch < 1 || o->batch > QV_UDP_MAX_BATCH)
        return qv_seterr(QV_EINVAL, "udp: batch = %u: use 1..%u", o->batch, QV_UDP_MAX_BATCH);
    if (o->slots <= o->batch || o->slots > QV_UDP_MAX_SLOTS || (o->slots & (o->slots - 1)))
        return qv_seterr(QV_EINVAL, "udp: slots = %u: use a power of two above batch (%u) "
                         "and at most %u", o->slots, o->batch, QV_UDP_MAX_SLOTS);
    if (o->max_datagram < 64 || o->max_datagram > QV_UDP_MAX_DATAGRAM)
        return qv_seterr(QV_EINVAL, "udp: max_datagram = %u: use 64..%u", o->max_datagram,
                         QV_UDP_MAX_DATAGRAM);
    if (o->rcvbuf < 0 || o->sndbuf < 0)
        return qv_seterr(QV_EINVAL, "udp: rcvbuf / sndbuf must be >= 0");
    return 0;
}

/* ---- the worker --------------------------------------------------------- */

static void free_slot(struct udp_worker *w, uint32_t s)
{
    w->free_stack[w->nfree++] = s;
}

static void queue_send(struct udp_worker *w, uint32_t s)
{
    struct udp_slot *S = &w->slots[s];
    if (S->pub.tx_len == 0 || S->pub.tx_len > S->pub.tx_cap) {
        if (S->pub.tx_len > S->pub.tx_cap)
            atomic_fetch_add_explicit(&w->st_senderr, 1, memory_order_relaxed);
        free_slot(w, s);
        return;
    }
    unsigned i = w->nsend++;
    w->siov[i] = (struct iovec){ .iov_base = S->pub.tx, .iov_len = S->pub.tx_len };
    w->smsg[i].msg_hdr = (struct msghdr){ .msg_name = &S->pub.peer,
                                          .msg_namelen = S->pub.peer_len,
                                          .msg_iov = &w->siov[i], .msg_iovlen = 1 };
    w->sslot[i] = s;
}

/* Send the queued answers (the send batch is at most `batch` long: the
 * callers flush before it fills), free their slots. */
static void flush_send(struct udp_worker *w)
{
    unsigned done = 0;
    while (done < w->nsend) {
        int n = sendmmsg(w->fd, w->smsg + done, w->nsend - done, MSG_DONTWAIT);
        if (n > 0) {
            atomic_fetch_add_explicit(&w->st_tx, (uint64_t)n, memory_order_relaxed);
            done += (unsigned)n;
        } else {
            if (n < 0 && errno == EINTR)
                continue;
            /* the first unsent one failed (ENOBUFS, EAGAIN, unreachable):
             * count it and go on with the rest */
            atomic_fetch_add_explicit(&w->st_senderr, 1, memory_order_relaxed);
            done++;
        }
    }
    for (unsigned i = 0; i < w->nsend; i++)
        free_slot(w, w->sslot[i]);
    w->nsend = 0;
}

/* Move returned ASYNC slots into the send batch. */
static void take_completions(struct udp_worker *w)
{
    const uint64_t mask = w->u->o.slots - 1;
    for (;;) {
        _Atomic uint32_t *e = &w->ring[w->ring_head & mask];
        uint32_t v = atomic_load_explicit(e, memory_order_acquire);
        if (v == 0)
            return;
        atomic_store_explicit(e, 0, memory_order_relaxed);
        w->ring_head++;
        w->async_out--;
        if (w->nsend == w->u->o.batch)
            flush_send(w);
        queue_send(w, v - 1);
    }
}

static int ring_empty(struct udp_worker *w)
{
    const uint64_t mask = w->u->o.slots - 1;
    return atomic_load_explicit(&w->ring[w->ring_head & mask], memory_order_acquire) == 0;
}

/* One receive batch; returns the datagrams received. */
static int receive(struct udp_worker *w)
{
    struct qv_udp *u = w->u;
    const unsigned batch = u->o.batch;
    for (unsigned i = 0; i < batch; i++) {
        uint32_t s = w->free_stack[--w->nfree];
        struct udp_slot *S = &w->slots[s];
        w->rslot[i] = s;
        w->riov[i] = (struct iovec){ .iov_base = (void *)S->pub.rx, .iov_len = u->o.max_datagram };
        w->rmsg[i].msg_hdr = (struct msghdr){ .msg_name = &S->pub.peer,
                                              .msg_namelen = sizeof S->pub.peer,
                                              .msg_iov = &w->riov[i], .msg_iovlen = 1 };
        w->rmsg[i].msg_len = 0;
    }
    int n = recvmmsg(w->fd, w->rmsg, batch, MSG_DONTWAIT, NULL);
    if (n < 0)
        n = 0;
    for (unsigned i = batch; i-- > (unsigned)n;)
        free_slot(w, w->rslot[i]);
    if (n == 0)
        return 0;
    int64_t now = qv_now_ns();
    atomic_fetch_add_explicit(&w->st_rx, (uint64_t)n, memory_order_relaxed);
    for (int i = 0; i < n; i++) {
        uint32_t s = w->rslot[i];
        struct udp_slot *S = &w->slots[s];
        S->pub.rx_len = w->rmsg[i].msg_len;
        S->pub.truncated = (w->rmsg[i].msg_hdr.msg_flags & MSG_TRUNC) != 0;
        S->pub.peer_len = w->rmsg[i].msg_hdr.msg_namelen;
        S->pub.rx_ns = now;
        S->pub.tx_len = 0;
        S->pub.async_ok = w->async_out + batch < u->o.slots;
        if (S->pub.truncated)
            atomic_fetch_add_explicit(&w->st_trunc, 1, memory_order_relaxed);
        if (!S->pub.async_ok)
            atomic_fetch_add_explicit(&w->st_refused, 1, memory_order_relaxed);
        enum qv_udp_verdict v = u->h.on_datagram(u->h.arg, &S->pub);
        if (v == QV_UDP_ASYNC && S->pub.async_ok) {
            w->async_out++;
            atomic_fetch_add_explicit(&w->st_async, 1, memory_order_relaxed);
        } else if (v == QV_UDP_REPLY) {
            queue_send(w, s);
        } else {
            /* DROP, or an ASYNC the handler was not allowed: the slot is
             * the transport's again, nothing is sent */
            atomic_fetch_add_explicit(&w->st_drop, 1, memory_order_relaxed);
            free_slot(w, s);
        }
    }
    flush_send(w);
    return n;
}

static void sleep_wait(struct udp_worker *w, int ms)
{
    struct epoll_event ev[2];
    atomic_store_explicit(&w->sleeping, 1, memory_order_seq_cst);
    atomic_thread_fence(memory_order_seq_cst);
    if (!ring_empty(w) ||
        (atomic_load_explicit(&w->u->stopping, memory_order_acquire) && w->async_out == 0)) {
        atomic_store_explicit(&w->sleeping, 0, memory_order_relaxed);
        return;
    }
    int n = epoll_wait(w->epfd, ev, 2, ms);
    atomic_store_explicit(&w->sleeping, 0, memory_order_relaxed);
    for (int i = 0; i < n; i++)
        if (ev[i].data.fd == w->efd) {
            uint64_t v;
            ssize_t r = read(w->efd, &v, sizeof v);
            (void)r;
        }
}

static void *worker_main(void *arg)
{
    struct udp_worker *w = arg;
    struct qv_udp *u = w->u;
    for (;;) {
        take_completions(w);
        flush_send(w);
        if (atomic_load_explicit(&u->stopping, memory_order_acquire)) {
            if (w->async_out == 0 || qv_now_ns() >= u->drain_deadline)
                break;
            sleep_wait(w, 10);
            continue;
        }
        if (receive(w) == (int)u->o.batch)
            continue;                       /* more may be waiting */
        sleep_wait(w, UDP_EPOLL_MS);
    }
    return NULL;
}

void qv_udp_complete(struct qv_udp_slot *slot)
{
    slot->complete(slot);
}

/* This transport's completion (slot->complete): onto the worker's ring. */
static void udp_complete(struct qv_udp_slot *slot)
{
    struct udp_slot *S = (struct udp_slot *)slot;
    struct udp_worker *w = S->w;
    const uint64_t mask = w->u->o.slots - 1;
    uint64_t pos = atomic_fetch_add_explicit(&w->ring_tail, 1, memory_order_relaxed);
    atomic_store_explicit(&w->ring[pos & mask], S->idx + 1, memory_order_release);
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&w->sleeping, memory_order_relaxed) &&
        atomic_exchange_explicit(&w->sleeping, 0, memory_order_acq_rel)) {
        uint64_t one = 1;
        ssize_t r = write(w->efd, &one, sizeof one);
        (void)r;
        atomic_fetch_add_explicit(&w->st_wakes, 1, memory_order_relaxed);
    }
}

/* ---- life cycle ----------------------------------------------------------- */

static void worker_free(struct udp_worker *w)
{
    if (w->fd >= 0)
        close(w->fd);
    if (w->efd >= 0)
        close(w->efd);
    if (w->epfd >= 0)
        close(w->epfd);
    qv_free(w->slots);
    qv_free(w->bufs);
    qv_free(w->user);
    qv_free(w->free_stack);
    qv_free((void *)w->ring);
    qv_free(w->rmsg);
    qv_free(w->smsg);
    qv_free(w->riov);
    qv_free(w->siov);
    qv_free(w->rslot);
    qv_free(w->sslot);
}

static int worker_init(struct qv_udp *u, struct udp_worker *w, unsigned idx)
{
    const struct qv_udp_opts *o = &u->o;
    w->u = u;
    w->idx = idx;
    w->fd = w->efd = w->epfd = -1;
    w->fd = qv__sock_bind("udp", SOCK_DGRAM, o->bind_addr, idx == 0 ? o->port : u->port,
                          o->rcvbuf, o->sndbuf, 0);
    if (w->fd < 0)
        return w->fd;
    if (idx == 0)
        u->port = qv__sock_port(w->fd);
    w->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    w->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (w->efd < 0 || w->epfd < 0)
        return qv_seterr(-errno, "udp: eventfd / epoll: %s", strerror(errno));
    struct epoll_event ev = { .events = EPOLLIN, .data.fd = w->fd };
    struct epoll_event ee = { .events = EPOLLIN, .data.fd = w->efd };
    if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->fd, &ev) || epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->efd, &ee))
        return qv_seterr(-errno, "udp: epoll_ctl: %s", strerror(errno));
    const size_t S = o->slots, B = o->batch;
    w->slots = qv_calloc(S, sizeof *w->slots, QV_MEM_SERVER);
    w->bufs = qv_malloc(S * 2 * u->buf_size, QV_MEM_SERVER);
    w->user = o->user_size ? qv_calloc(S, o->user_size, QV_MEM_SERVER) : NULL;
    w->free_stack = qv_malloc(S * sizeof *w->free_stack, QV_MEM_SERVER);
    w->ring = qv_calloc(S, sizeof *w->ring, QV_MEM_SERVER);
    w->rmsg = qv_calloc(B, sizeof *w->rmsg, QV_MEM_SERVER);
    w->smsg = qv_calloc(B, sizeof *w->smsg, QV_MEM_SERVER);
    w->riov = qv_calloc(B, sizeof *w->riov, QV_MEM_SERVER);
    w->siov = qv_calloc(B, sizeof *w->siov, QV_MEM_SERVER);
    w->rslot = qv_calloc(B, sizeof *w->rslot, QV_MEM_SERVER);
    w->sslot = qv_calloc(B, sizeof *w->sslot, QV_MEM_SERVER);
    if (!w->slots || !w->bufs || (o->user_size && !w->user) || !w->free_stack || !w->ring ||
        !w->rmsg || !w->smsg || !w->riov || !w->siov || !w->rslot || !w->sslot)
        return qv_seterr(QV_ENOMEM, "udp: no memory for %zu slots of %u bytes", S,
                         2 * u->buf_size);
    for (size_t s = 0; s < S; s++) {
        struct udp_slot *sl = &w->slots[s];
        sl->w = w;
        sl->idx = (uint32_t)s;
        sl->pub.rx = (char *)w->bufs + s * 2 * u->buf_size;
        sl->pub.tx = (char *)w->bufs + s * 2 * u->buf_size + u->buf_size;
        sl->pub.tx_cap = o->max_datagram;
        sl->pub.worker = idx;
        sl->pub.complete = udp_complete;
        sl->pub.user = w->user ? (char *)w->user + s * o->user_size : NULL;
        w->free_stack[S - 1 - s] = (uint32_t)s;
    }
    w->nfree = (uint32_t)S;
    return 0;
}

struct qv_udp *qv_udp_start(const struct qv_udp_opts *o, const struct qv_udp_handler *h)
{
    struct qv_udp_opts def;
    if (!o) {
        qv_udp_opts_default(&def);
        o = &def;
    }
    if (!h || !h->on_datagram) {
        qv_seterr(QV_EINVAL, "udp: a handler with on_datagram is required");
        return NULL;
    }
    if (check_opts(o))
        return NULL;
    struct qv_udp *u = qv_calloc(1, sizeof *u, QV_MEM_SERVER);
    if (!u) {
        qv_seterr(QV_ENOMEM, "udp: no memory");
        return NULL;
    }
    u->o = *o;
    u->h = *h;
    u->buf_size = (o->max_datagram + 63u) & ~63u;
    u->w = qv_calloc(o->workers, sizeof *u->w, QV_MEM_SERVER);
    if (!u->w) {
        qv_free(u);
        qv_seterr(QV_ENOMEM, "udp: no memory");
        return NULL;
    }
    int rc = 0;
    unsigned made = 0;
    for (; made < o->workers; made++) {
        if ((rc = worker_init(u, &u->w[made], made)) != 0) {
            made++;
            break;
        }
    }
    for (unsigned i = 0; rc == 0 && i < o->workers; i++) {
        int e = pthread_create(&u->w[i].th, NULL, worker_main, &u->w[i]);
        if (e) {
            rc = qv_seterr(-e, "udp: pthread_create: %s", strerror(e));
            break;
        }
        u->w[i].started = 1;
    }
    if (rc) {
        int err = qv_errno;
        atomic_store_explicit(&u->stopping, 1, memory_order_release);
        u->drain_deadline = qv_now_ns();
        for (unsigned i = 0; i < o->workers; i++)
            if (u->w[i].started) {
                uint64_t one = 1;
                ssize_t r = write(u->w[i].efd, &one, sizeof one);
                (void)r;
                pthread_join(u->w[i].th, NULL);
            }
        for (unsigned i = 0; i < made; i++)
            worker_free(&u->w[i]);
        qv_free(u->w);
        qv_free(u);
        qv_errno = err;
        return NULL;
    }
    return u;
}

uint16_t qv_udp_port(const struct qv_udp *u)
{
    return u->port;
}

unsigned qv_udp_stop(struct qv_udp *u)
{
    if (!u)
        return 0;
    u->drain_deadline = qv_now_ns() + (int64_t)u->o.drain_ms * 1000000;
    atomic_store_explicit(&u->stopping, 1, memory_order_seq_cst);
    for (unsigned i = 0; i < u->o.workers; i++) {
        uint64_t one = 1;
        ssize_t r = write(u->w[i].efd, &one, sizeof one);
        (void)r;
    }
    unsigned left = 0;
    for (unsigned i = 0; i < u->o.workers; i++) {
        pthread_join(u->w[i].th, NULL);
        left += u->w[i].async_out;
    }
    for (unsigned i = 0; i < u->o.workers; i++)
        worker_free(&u->w[i]);
    qv_free(u->w);
    qv_free(u);
    return left;
}

void qv_udp_stats(const struct qv_udp *u, struct qv_udp_stats *out)
{
    memset(out, 0, sizeof *out);
    for (unsigned i = 0; i < u->o.workers; i++) {
        struct udp_worker *w = &u->w[i];
        out->rx += atomic_load_explicit(&w->st_rx, memory_order_relaxed);
        out->tx += atomic_load_explicit(&w->st_tx, memory_order_relaxed);
        out->truncated += atomic_load_explicit(&w->st_trunc, memory_order_relaxed);
        out->dropped += atomic_load_explicit(&w->st_drop, memory_order_relaxed);
        out->async += atomic_load_explicit(&w->st_async, memory_order_relaxed);
        out->async_refused += atomic_load_explicit(&w->st_refused, memory_order_relaxed);
        out->send_errors += atomic_load_explicit(&w->st_senderr, memory_order_relaxed);
        out->wakes += atomic_load_explicit(&w->st_wakes, memory_order_relaxed);
    }
}
