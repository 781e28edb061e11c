/*
 * tcp.c - the kernel-socket TCP transport (quiver/tcp.h).
 *
 * Per worker: a listening socket (SO_REUSEPORT), an eventfd, an epoll set
 * (level-triggered) and a table of max_conns connection slots with a free
 * list.  A connection has a receive buffer (grown by doubling up to
 * max_message), a queue of answers to write (nodes from a per-worker free
 * list, so steady traffic allocates only the answers themselves), the
 * bytes queued, its async requests out, its generation (bumped when the
 * slot is reused) and the epoll interest it has now.
 *
 * Async answers come back through a multi-producer ring of records per
 * worker (a position by fetch_add on the tail, the record's fields, then
 * its sequence number with release; the worker takes records in order
 * while their sequence says they are complete).  Its capacity is the
 * worker's most async requests (max_conns x max_async, rounded up to a
 * power of two), so it cannot overflow.  The eventfd wakes a sleeping
 * worker as in udp.c.
 *
 * Reading: read until EAGAIN, frame and hand out every whole message in
 * order; stop handing out (and drop EPOLLIN) while the connection is over
 * max_pending_bytes or max_async; leftovers move to the buffer's front.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "quiver/alloc.h"
#include "quiver/errors.h"
#include "quiver/tcp.h"
#include "quiver/timeutil.h"
#include "sock_int.h"

#define TCP_RBUF0 (64u << 10)
#define TCP_EVENTS 64
#define TCP_TICK_MS 100
#define TAG_LISTEN UINT64_MAX
#define TAG_EVENT (UINT64_MAX - 1)

struct out {
    struct out *next;
    uint8_t *buf;
    uint32_t len, off;
};

struct conn {
    int fd;                         /* -1: free */
    uint64_t gen;
    uint8_t *rbuf;
    size_t rcap, rlen;
    struct out *oq, *oq_tail;
    size_t pending;                 /* bytes queued, not yet written */
    unsigned async_out;
    uint32_t events;                /* epoll interest now */
    int closing;                    /* close once the queue is written */
    int64_t last_io;
    struct sockaddr_storage peer;   /* from accept */
    socklen_t peer_len;
};

struct rec {
    _Atomic uint64_t seq;           /* pos + 1 once written */
    uint32_t conn;
    uint64_t gen;
    void *buf;
    uint32_t len;
};

struct worker {
    struct qv_tcp *t;
    unsigned idx;
    int lfd, efd, epfd;
    pthread_t th;
    int started;
    struct conn *conns;
    uint32_t *free_conns;
    uint32_t nfree;
    struct out *out_free;
    struct rec *ring;
    uint64_t ring_mask;
    _Atomic uint64_t ring_tail;
    uint64_t ring_head;
    _Atomic int sleeping;
    uint64_t async_total;           /* async out over all connections */
    _Atomic uint64_t st[11];
};

enum { S_ACC, S_REF, S_CLOSED, S_MSG, S_REP, S_BAD, S_IDLE, S_STALE, S_IN, S_OUT, S_PAUSE };

struct qv_tcp {
    struct qv_tcp_opts o;
    struct qv_tcp_handler h;
    uint16_t port;
    _Atomic int stopping;
    int64_t drain_deadline;
    struct worker *w;
};

static void st_add(struct worker *w, int i, uint64_t n)
{
    atomic_fetch_add_explicit(&w->st[i], n, memory_order_relaxed);
}

void qv_tcp_opts_default(struct qv_tcp_opts *o)
{
    memset(o, 0, sizeof *o);
    o->workers = 1;
    o->max_conns = 256;
    o->max_message = (64u << 20) + 64;
    o->max_pending_bytes = 64u << 20;
    o->max_async = 256;
    o->drain_ms = 5000;
    o->backlog = 128;
}

static int check_opts(const struct qv_tcp_opts *o)
{
    if (o->workers < 1 || o->workers > QV_TCP_MAX_WORKERS)
        return qv_seterr(QV_EINVAL, "tcp: workers = %u: use 1..%u", o->workers,
                         QV_TCP_MAX_WORKERS);
    if (o->max_conns < 1 || o->max_conns > QV_TCP_MAX_CONNS)
        return qv_seterr(QV_EINVAL, "tcp: max_conns = %u: use 1..%u", o->max_conns,
                         QV_TCP_MAX_CONNS);
    if (o->max_message < 64)
        return qv_seterr(QV_EINVAL, "tcp: max_message = %zu: use at least 64", o->max_message);
    if (o->max_async < 1 || o->max_async > 65536)
        return qv_seterr(QV_EINVAL, "tcp: max_async = %u: use 1..65536", o->max_async);
    if (o->max_pending_bytes < 1)
        return qv_seterr(QV_EINVAL, "tcp: max_pending_bytes must be >= 1");
    return 0;
}

/* ---- connections ----------------------------------------------------------- */

static void set_events(struct worker *w, uint32_t c, uint32_t ev)
{
    struct conn *C = &w->conns[c];
    if (C->events == ev)
        return;
    struct epoll_event e = { .events = ev, .data.u64 = c };
    epoll_ctl(w->epfd, EPOLL_CTL_MOD, C->fd, &e);
    C->events = ev;
}

static void conn_close(struct worker *w, uint32_t c)
{
    struct conn *C = &w->conns[c];
    epoll_ctl(w->epfd, EPOLL_CTL_DEL, C->fd, NULL);
    close(C->fd);
    C->fd = -1;
    C->gen++;
    for (struct out *o = C->oq, *n; o; o = n) {
        n = o->next;
        qv_free(o->buf);
        o->next = w->out_free;
        w->out_free = o;
    }
    C->oq = C->oq_tail = NULL;
    C->pending = 0;
    qv_free(C->rbuf);
    C->rbuf = NULL;
    C->rcap = C->rlen = 0;
    w->async_total -= C->async_out;     /* their answers will be stale */
    C->async_out = 0;
    C->closing = 0;
    w->free_conns[w->nfree++] = c;
    st_add(w, S_CLOSED, 1);
}

static int enqueue(struct worker *w, uint32_t c, void *buf, uint32_t len)
{
    struct conn *C = &w->conns[c];
    if (!buf || len == 0) {
        qv_free(buf);
        return 0;
    }
    struct out *o = w->out_free;
    if (o)
        w->out_free = o->next;
    else if (!(o = qv_malloc(sizeof *o, QV_MEM_SERVER))) {
        qv_free(buf);
        return QV_ENOMEM;
    }
    *o = (struct out){ .buf = buf, .len = len };
    if (C->oq_tail)
        C->oq_tail->next = o;
    else
        C->oq = o;
    C->oq_tail = o;
    C->pending += len;
    st_add(w, S_REP, 1);
    return 0;
}

/* Write what the socket takes; 0, or -1 when the connection is gone. */
static int flush_out(struct worker *w, uint32_t c)
{
    struct conn *C = &w->conns[c];
    while (C->oq) {
        struct out *o = C->oq;
        ssize_t n = send(C->fd, o->buf + o->off, o->len - o->off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            return -1;
        }
        st_add(w, S_OUT, (uint64_t)n);
        C->last_io = qv_now_ns();
        o->off += (uint32_t)n;
        C->pending -= (size_t)n;
        if (o->off < o->len)
            continue;
        C->oq = o->next;
        if (!C->oq)
            C->oq_tail = NULL;
        qv_free(o->buf);
        o->next = w->out_free;
        w->out_free = o;
    }
    return 0;
}

static int over_limits(const struct qv_tcp *t, const struct conn *C)
{
    return C->pending > t->o.max_pending_bytes || C->async_out >= t->o.max_async;
}

/* Hand out the whole messages in the buffer.  -1: close now; 1: stopped
 * by the limits with bytes left; 0: no whole message left. */
static int process(struct worker *w, uint32_t c)
{
    struct qv_tcp *t = w->t;
    struct conn *C = &w->conns[c];
    size_t off = 0;
    int rc = 0;
    for (;;) {
        if (C->closing || off >= C->rlen)
            break;
        if (over_limits(t, C)) {
            rc = 1;
            break;
        }
        size_t need = 0, have = C->rlen - off;
        int f = t->h.frame(t->h.arg, C->rbuf + off, have, &need);
        if (f == 0 && need > t->o.max_message)
            f = QV_ERANGE;
        if (f < 0) {
            void *resp = NULL;
            uint32_t rlen = 0;
            st_add(w, S_BAD, 1);
            if (t->h.bad_frame)
                t->h.bad_frame(t->h.arg, C->rbuf + off, have, f, &resp, &rlen);
            enqueue(w, c, resp, rlen);
            C->closing = 1;
            off = C->rlen;
            break;
        }
        if (f > 0 || need > have)
            break;
        struct qv_tcp_msg m = { .data = C->rbuf + off, .len = (uint32_t)need,
                                .ref = { w->idx, c, C->gen }, .rx_ns = C->last_io,
                                .peer = &C->peer, .peer_len = C->peer_len };
        st_add(w, S_MSG, 1);
        enum qv_tcp_verdict v = t->h.on_message(t->h.arg, &m);
        off += need;
        if (v == QV_TCP_ASYNC) {
            C->async_out++;
            w->async_total++;
        } else if (v == QV_TCP_REPLY || v == QV_TCP_CLOSE) {
            if (enqueue(w, c, m.resp, m.resp_len) != 0) {
                rc = -1;
                break;
            }
            if (v == QV_TCP_CLOSE)
                C->closing = 1;
        }
    }
    if (off > 0) {
        memmove(C->rbuf, C->rbuf + off, C->rlen - off);
        C->rlen -= off;
    }
    return rc;
}

/* Read until EAGAIN (or the buffer is full while paused).  -1: close. */
static int read_conn(struct worker *w, uint32_t c)
{
    struct qv_tcp *t = w->t;
    struct conn *C = &w->conns[c];
    for (;;) {
        if (C->rlen == C->rcap) {
            size_t ncap = C->rcap ? 2 * C->rcap : TCP_RBUF0;
            if (ncap > t->o.max_message)
                ncap = t->o.max_message;
            if (ncap <= C->rcap) {
                int pr = process(w, c);
                if (pr < 0)
                    return -1;
                if (C->rlen == C->rcap)
                    return pr > 0 || C->closing ? 0 : -1;
                continue;
            }
            uint8_t *nb = qv_malloc(ncap, QV_MEM_SERVER);
            if (!nb)
                return -1;
            if (C->rlen)
                memcpy(nb, C->rbuf, C->rlen);
            qv_free(C->rbuf);
            C->rbuf = nb;
            C->rcap = ncap;
        }
        ssize_t n = recv(C->fd, C->rbuf + C->rlen, C->rcap - C->rlen, MSG_DONTWAIT);
        if (n > 0) {
            C->rlen += (size_t)n;
            C->last_io = qv_now_ns();
            st_add(w, S_IN, (uint64_t)n);
            int pr = process(w, c);
            if (pr < 0)
                return -1;
            if (pr > 0 || C->closing)
                return 0;
            continue;
        }
        if (n == 0)
            return -1;                  /* the peer closed */
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        return -1;
    }
}

/* After any change: hand out buffered messages the limits now allow,
 * write, close when due, pick the epoll interest.  Loops while writing
 * lifts the limits with whole messages still buffered. */
static void settle(struct worker *w, uint32_t c)
{
    struct qv_tcp *t = w->t;
    struct conn *C = &w->conns[c];
    int stopping = atomic_load_explicit(&t->stopping, memory_order_acquire);
    for (;;) {
        if (C->fd < 0)
            return;
        int blocked = 0;
        if (!stopping && !C->closing && C->rlen) {
            blocked = process(w, c);
            if (blocked < 0) {
                conn_close(w, c);
                return;
            }
        }
        if (flush_out(w, c) != 0) {
            conn_close(w, c);
            return;
        }
        if (!C->oq && (C->closing || (stopping && C->async_out == 0))) {
            conn_close(w, c);
            return;
        }
        if (blocked && !over_limits(t, C))
            continue;                   /* the write made room */
        break;
    }
    int paused = over_limits(t, C);
    uint32_t ev = 0;
    if (!paused && !C->closing && !stopping)
        ev |= EPOLLIN;
    if (C->oq)
        ev |= EPOLLOUT;
    if (paused && (C->events & EPOLLIN))
        st_add(w, S_PAUSE, 1);
    set_events(w, c, ev);
}

static void accept_all(struct worker *w)
{
    for (;;) {
        struct sockaddr_storage peer;
        socklen_t peer_len = sizeof peer;
        int fd = accept4(w->lfd, (struct sockaddr *)&peer, &peer_len,
                         SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        if (w->nfree == 0) {
            close(fd);
            st_add(w, S_REF, 1);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        uint32_t c = w->free_conns[--w->nfree];
        struct conn *C = &w->conns[c];
        C->fd = fd;
        C->events = EPOLLIN;
        C->last_io = qv_now_ns();
        C->peer = peer;
        C->peer_len = peer_len;
        struct epoll_event e = { .events = EPOLLIN, .data.u64 = c };
        if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &e) != 0) {
            close(fd);
            C->fd = -1;
            w->free_conns[w->nfree++] = c;
            continue;
        }
        st_add(w, S_ACC, 1);
    }
}

static void take_replies(struct worker *w)
{
    for (;;) {
        struct rec *R = &w->ring[w->ring_head & w->ring_mask];
        if (atomic_load_explicit(&R->seq, memory_order_acquire) != w->ring_head + 1)
            return;
        uint32_t c = R->conn;
        uint64_t gen = R->gen;
        void *buf = R->buf;
        uint32_t len = R->len;
        atomic_store_explicit(&R->seq, 0, memory_order_relaxed);
        w->ring_head++;
        struct conn *C = &w->conns[c];
        if (C->fd < 0 || C->gen != gen) {
            qv_free(buf);
            st_add(w, S_STALE, 1);
            continue;
        }
        C->async_out--;
        w->async_total--;
        enqueue(w, c, buf, len);
        settle(w, c);
    }
}

static void idle_sweep(struct worker *w, int64_t now)
{
    struct qv_tcp *t = w->t;
    if (!t->o.idle_ms)
        return;
    for (uint32_t c = 0; c < t->o.max_conns; c++) {
        struct conn *C = &w->conns[c];
        if (C->fd >= 0 && !C->oq && !C->async_out &&
            now - C->last_io > (int64_t)t->o.idle_ms * 1000000) {
            conn_close(w, c);
            st_add(w, S_IDLE, 1);
        }
    }
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct qv_tcp *t = w->t;
    struct epoll_event ev[TCP_EVENTS];
    int listening = 1;
    int64_t last_sweep = qv_now_ns();
    for (;;) {
        int stopping = atomic_load_explicit(&t->stopping, memory_order_acquire);
        if (stopping) {
            if (listening) {
                epoll_ctl(w->epfd, EPOLL_CTL_DEL, w->lfd, NULL);
                listening = 0;
                for (uint32_t c = 0; c < t->o.max_conns; c++)
                    settle(w, c);
            }
            int busy = 0;
            for (uint32_t c = 0; c < t->o.max_conns && !busy; c++)
                busy = w->conns[c].fd >= 0;
            if (!busy || qv_now_ns() >= t->drain_deadline)
                break;
        }
        atomic_store_explicit(&w->sleeping, 1, memory_order_seq_cst);
        atomic_thread_fence(memory_order_seq_cst);
        struct rec *R = &w->ring[w->ring_head & w->ring_mask];
        int ready = atomic_load_explicit(&R->seq, memory_order_acquire) == w->ring_head + 1;
        int n = epoll_wait(w->epfd, ev, TCP_EVENTS, ready ? 0 : stopping ? 10 : TCP_TICK_MS);
        atomic_store_explicit(&w->sleeping, 0, memory_order_relaxed);
        for (int i = 0; i < n; i++) {
            uint64_t tag = ev[i].data.u64;
            if (tag == TAG_LISTEN) {
                accept_all(w);
            } else if (tag == TAG_EVENT) {
                uint64_t v;
                ssize_t r = read(w->efd, &v, sizeof v);
                (void)r;
            } else {
                uint32_t c = (uint32_t)tag;
                struct conn *C = &w->conns[c];
                if (C->fd < 0)
                    continue;
                if ((ev[i].events & EPOLLIN) && !stopping && read_conn(w, c) != 0) {
                    /* peer closed or error: answers still queued are lost */
                    conn_close(w, c);
                    continue;
                }
                if ((ev[i].events & (EPOLLERR | EPOLLHUP)) && !(ev[i].events & EPOLLIN)) {
                    conn_close(w, c);
                    continue;
                }
                settle(w, c);
            }
        }
        take_replies(w);
        int64_t now = qv_now_ns();
        if (now - last_sweep > (int64_t)TCP_TICK_MS * 1000000) {
            idle_sweep(w, now);
            last_sweep = now;
        }
    }
    for (uint32_t c = 0; c < t->o.max_conns; c++)
        if (w->conns[c].fd >= 0)
            conn_close(w, c);
    return NULL;
}

void qv_tcp_reply(struct qv_tcp *t, struct qv_tcp_ref ref, void *buf, uint32_t len)
{
    struct worker *w = &t->w[ref.worker];
    uint64_t pos = atomic_fetch_add_explicit(&w->ring_tail, 1, memory_order_relaxed);
    struct rec *R = &w->ring[pos & w->ring_mask];
    R->conn = ref.conn;
    R->gen = ref.gen;
    R->buf = buf;
    R->len = len;
    atomic_store_explicit(&R->seq, pos + 1, memory_order_release);
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&w->sleeping, memory_order_relaxed) &&
        atomic_exchange_explicit(&w->sleeping, 0, memory_order_acq_rel)) {
        uint64_t one = 1;
        ssize_t r = write(w->efd, &one, sizeof one);
        (void)r;
    }
}

/* ---- life cycle ------------------------------------------------------------- */

static void worker_free(struct worker *w)
{
    if (w->lfd >= 0)
        close(w->lfd);
    if (w->efd >= 0)
        close(w->efd);
    if (w->epfd >= 0)
        close(w->epfd);
    if (w->conns)
        for (uint32_t c = 0; c < w->t->o.max_conns; c++)
            qv_free(w->conns[c].rbuf);
    /* replies that arrived after the worker stopped */
    if (w->ring)
        for (;;) {
            struct rec *R = &w->ring[w->ring_head & w->ring_mask];
            if (atomic_load_explicit(&R->seq, memory_order_acquire) != w->ring_head + 1)
                break;
            qv_free(R->buf);
            w->ring_head++;
        }
    for (struct out *o = w->out_free, *n; o; o = n) {
        n = o->next;
        qv_free(o);
    }
    qv_free(w->conns);
    qv_free(w->free_conns);
    qv_free(w->ring);
}

static int worker_init(struct qv_tcp *t, struct worker *w, unsigned idx)
{
    const struct qv_tcp_opts *o = &t->o;
    w->t = t;
    w->idx = idx;
    w->lfd = w->efd = w->epfd = -1;
    w->lfd = qv__sock_bind("tcp", SOCK_STREAM, o->bind_addr, idx == 0 ? o->port : t->port, 0,
                           0, o->backlog);
    if (w->lfd < 0)
        return w->lfd;
    if (idx == 0)
        t->port = qv__sock_port(w->lfd);
    w->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    w->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (w->efd < 0 || w->epfd < 0)
        return qv_seterr(-errno, "tcp: eventfd / epoll: %s", strerror(errno));
    struct epoll_event el = { .events = EPOLLIN, .data.u64 = TAG_LISTEN };
    struct epoll_event ee = { .events = EPOLLIN, .data.u64 = TAG_EVENT };
    if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->lfd, &el) ||
        epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->efd, &ee))
        return qv_seterr(-errno, "tcp: epoll_ctl: %s", strerror(errno));
    uint64_t cap = 1;
    while (cap < (uint64_t)o->max_conns * o->max_async)
        cap <<= 1;
    w->ring_mask = cap - 1;
    w->conns = qv_calloc(o->max_conns, sizeof *w->conns, QV_MEM_SERVER);
    w->free_conns = qv_malloc(o->max_conns * sizeof *w->free_conns, QV_MEM_SERVER);
    w->ring = qv_calloc(cap, sizeof *w->ring, QV_MEM_SERVER);
    if (!w->conns || !w->free_conns || !w->ring)
        return qv_seterr(QV_ENOMEM, "tcp: no memory for %u connections", o->max_conns);
    for (uint32_t c = 0; c < o->max_conns; c++) {
        w->conns[c].fd = -1;
        w->free_conns[o->max_conns - 1 - c] = c;
    }
    w->nfree = o->max_conns;
    return 0;
}

struct qv_tcp *qv_tcp_start(const struct qv_tcp_opts *o, const struct qv_tcp_handler *h)
{
    struct qv_tcp_opts def;
    if (!o) {
        qv_tcp_opts_default(&def);
        o = &def;
    }
    if (!h || !h->frame || !h->on_message) {
        qv_seterr(QV_EINVAL, "tcp: a handler with frame and on_message is required");
        return NULL;
    }
    if (check_opts(o))
        return NULL;
    struct qv_tcp *t = qv_calloc(1, sizeof *t, QV_MEM_SERVER);
    struct worker *ws = t ? qv_calloc(o->workers, sizeof *ws, QV_MEM_SERVER) : NULL;
    if (!ws) {
        qv_free(t);
        qv_seterr(QV_ENOMEM, "tcp: no memory");
        return NULL;
    }
    t->o = *o;
    t->h = *h;
    t->w = ws;
    int rc = 0;
    unsigned made = 0;
    for (; made < o->workers && rc == 0; made++)
        rc = worker_init(t, &ws[made], made);
    for (unsigned i = 0; rc == 0 && i < o->workers; i++) {
        int e = pthread_create(&ws[i].th, NULL, worker_main, &ws[i]);
        if (e)
            rc = qv_seterr(-e, "tcp: pthread_create: %s", strerror(e));
        else
            ws[i].started = 1;
    }
    if (rc) {
        int err = qv_errno;
        t->drain_deadline = qv_now_ns();
        atomic_store_explicit(&t->stopping, 1, memory_order_seq_cst);
        for (unsigned i = 0; i < o->workers; i++)
            if (ws[i].started) {
                uint64_t one = 1;
                ssize_t r = write(ws[i].efd, &one, sizeof one);
                (void)r;
                pthread_join(ws[i].th, NULL);
            }
        for (unsigned i = 0; i < made; i++)
            worker_free(&ws[i]);
        qv_free(ws);
        qv_free(t);
        qv_errno = err;
        return NULL;
    }
    return t;
}

uint16_t qv_tcp_port(const struct qv_tcp *t)
{
    return t->port;
}

unsigned qv_tcp_stop(struct qv_tcp *t)
{
    if (!t)
        return 0;
    t->drain_deadline = qv_now_ns() + (int64_t)t->o.drain_ms * 1000000;
    atomic_store_explicit(&t->stopping, 1, memory_order_seq_cst);
    unsigned left = 0;
    for (unsigned i = 0; i < t->o.workers; i++) {
        uint64_t one = 1;
        ssize_t r = write(t->w[i].efd, &one, sizeof one);
        (void)r;
    }
    for (unsigned i = 0; i < t->o.workers; i++) {
        pthread_join(t->w[i].th, NULL);
        left += (unsigned)t->w[i].async_total;
    }
    for (unsigned i = 0; i < t->o.workers; i++)
        worker_free(&t->w[i]);
    qv_free(t->w);
    qv_free(t);
    return left;
}

void qv_tcp_stats(const struct qv_tcp *t, struct qv_tcp_stats *out)
{
    uint64_t s[11] = { 0 };
    for (unsigned i = 0; i < t->o.workers; i++)
        for (int j = 0; j < 11; j++)
            s[j] += atomic_load_explicit(&t->w[i].st[j], memory_order_relaxed);
    *out = (struct qv_tcp_stats){
        .accepted = s[S_ACC], .refused = s[S_REF], .closed = s[S_CLOSED],
        .messages = s[S_MSG], .replies = s[S_REP], .bad_frames = s[S_BAD],
        .idle_closed = s[S_IDLE], .stale_replies = s[S_STALE], .bytes_in = s[S_IN],
        .bytes_out = s[S_OUT], .paused = s[S_PAUSE],
    };
}
