/*
 * test_tcp.c - the kernel TCP transport (quiver/tcp.h) on loopback, with
 * a toy framing (u32 length, then that many bytes; a length over 1 MiB
 * cannot be framed): pipelined synchronous answers come back in order,
 * async answers once each, a bad frame is answered and closes, a client
 * that floods async requests or does not read is paused instead of
 * growing the server, connections over the limit and idle ones are
 * closed, stop() drains.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <CUnit/Basic.h>

#include "quiver/alloc.h"
#include "quiver/errors.h"
#include "quiver/tcp.h"
#include "quiver/timeutil.h"

#define LIMIT (1u << 20)

static struct qv_tcp *T;

static int frame(void *arg, const void *buf, size_t have, size_t *need)
{
    (void)arg;
    uint32_t n;
    if (have < 4)
        return 1;
    memcpy(&n, buf, 4);
    if (n > LIMIT)
        return QV_EINVAL;
    *need = 4 + (size_t)n;
    return 0;
}

static void bad_frame(void *arg, const void *buf, size_t have, int code, void **resp,
                      uint32_t *len)
{
    (void)arg, (void)buf, (void)have, (void)code;
    uint8_t *r = qv_malloc(5, QV_MEM_TEST);
    uint32_t one = 1;
    memcpy(r, &one, 4);
    r[4] = 'E';
    *resp = r;
    *len = 5;
}

/* The answer to a message: the same frame with its first payload byte
 * replaced by `first`, times `scale` bytes of payload (scale 1: same). */
static void *answer(const struct qv_tcp_msg *m, char first, uint32_t *len)
{
    uint8_t *r = qv_malloc(m->len, QV_MEM_TEST);
    memcpy(r, m->data, m->len);
    if (m->len > 4)
        r[4] = (uint8_t)first;
    *len = m->len;
    return r;
}

/* Async answers go through this queue to a completer thread. */
#define QCAP 65536
static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct { struct qv_tcp_ref ref; void *buf; uint32_t len; } q[QCAP];
    unsigned head, tail;
    int stop, hold;
} A = { .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER };
static _Atomic unsigned handled;

/* payload[0]: 'S' sync echo, 'A' async, 'C' answer then close, 'N' none,
 * 'B' a big (256 KiB) sync answer */
static enum qv_tcp_verdict on_message(void *arg, struct qv_tcp_msg *m)
{
    (void)arg;
    atomic_fetch_add(&handled, 1);
    char kind = m->len > 4 ? ((const char *)m->data)[4] : 'S';
    if (kind == 'N')
        return QV_TCP_NONE;
    if (kind == 'B') {
        uint32_t n = 256u << 10;
        uint8_t *r = qv_malloc(4 + n, QV_MEM_TEST);
        memcpy(r, &n, 4);
        memset(r + 4, 'b', n);
        m->resp = r;
        m->resp_len = 4 + n;
        return QV_TCP_REPLY;
    }
    if (kind == 'A') {
        uint32_t len;
        void *r = answer(m, 'a', &len);
        pthread_mutex_lock(&A.mu);
        unsigned i = A.tail++ % QCAP;
        A.q[i].ref = m->ref;
        A.q[i].buf = r;
        A.q[i].len = len;
        pthread_cond_signal(&A.cv);
        pthread_mutex_unlock(&A.mu);
        return QV_TCP_ASYNC;
    }
    m->resp = answer(m, kind == 'C' ? 'c' : 's', &m->resp_len);
    return kind == 'C' ? QV_TCP_CLOSE : QV_TCP_REPLY;
}

static void *completer(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&A.mu);
    for (;;) {
        while (!A.stop && (A.hold || A.head == A.tail))
            pthread_cond_wait(&A.cv, &A.mu);
        if (A.head == A.tail)
            break;
        unsigned i = A.head++ % QCAP;
        pthread_mutex_unlock(&A.mu);
        qv_tcp_reply(T, A.q[i].ref, A.q[i].buf, A.q[i].len);
        pthread_mutex_lock(&A.mu);
    }
    pthread_mutex_unlock(&A.mu);
    return NULL;
}

static pthread_t completer_start(int hold)
{
    pthread_t t;
    A.head = A.tail = 0;
    A.stop = 0;
    A.hold = hold;
    pthread_create(&t, NULL, completer, NULL);
    return t;
}

static void completer_release(void)
{
    pthread_mutex_lock(&A.mu);
    A.hold = 0;
    pthread_cond_broadcast(&A.cv);
    pthread_mutex_unlock(&A.mu);
}

static void completer_stop(pthread_t t)
{
    pthread_mutex_lock(&A.mu);
    A.stop = 1;
    A.hold = 0;
    pthread_cond_broadcast(&A.cv);
    pthread_mutex_unlock(&A.mu);
    pthread_join(t, NULL);
}

static struct qv_tcp *start(const struct qv_tcp_opts *extra)
{
    struct qv_tcp_opts o;
    struct qv_tcp_handler h = { .frame = frame, .bad_frame = bad_frame,
                                .on_message = on_message };
    if (extra)
        o = *extra;
    else
        qv_tcp_opts_default(&o);
    o.bind_addr = "127.0.0.1";
    atomic_store(&handled, 0);
    T = qv_tcp_start(&o, &h);
    return T;
}

static int dial(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void send_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n <= 0)
            return;
        p += n;
        len -= (size_t)n;
    }
}

static void send_msg(int fd, char kind, uint32_t seq, uint32_t extra)
{
    uint32_t n = 1 + 4 + extra;
    uint8_t *b = calloc(1, 4 + n);
    memcpy(b, &n, 4);
    b[4] = (uint8_t)kind;
    memcpy(b + 5, &seq, 4);
    send_all(fd, b, 4 + n);
    free(b);
}

/* Read one frame within ms: its payload length, payload into buf (cap),
 * -1 on timeout, 0 on EOF. */
static long read_frame(int fd, uint8_t *buf, size_t cap, int ms)
{
    uint32_t n;
    size_t got = 0;
    uint8_t hdr[4];
    while (got < 4) {
        struct pollfd p = { .fd = fd, .events = POLLIN };
        if (poll(&p, 1, ms) <= 0)
            return -1;
        ssize_t r = recv(fd, hdr + got, 4 - got, 0);
        if (r <= 0)
            return 0;
        got += (size_t)r;
    }
    memcpy(&n, hdr, 4);
    got = 0;
    while (got < n) {
        struct pollfd p = { .fd = fd, .events = POLLIN };
        if (poll(&p, 1, ms) <= 0)
            return -1;
        uint8_t tmp[65536];
        size_t want = n - got < sizeof tmp ? n - got : sizeof tmp;
        ssize_t r = recv(fd, tmp, want, 0);
        if (r <= 0)
            return 0;
        if (got < cap)
            memcpy(buf + got, tmp, (size_t)r < cap - got ? (size_t)r : cap - got);
        got += (size_t)r;
    }
    return (long)n;
}

static uint32_t seq_of(const uint8_t *payload)
{
    uint32_t s;
    memcpy(&s, payload + 1, 4);
    return s;
}

/* ---- tests --------------------------------------------------------------- */

static void test_pipelined_in_order(void)
{
    CU_ASSERT_PTR_NOT_NULL_FATAL(start(NULL));
    uint16_t port = qv_tcp_port(T);
    int fd[4];
    for (int c = 0; c < 4; c++)
        fd[c] = dial(port);
    unsigned bad = 0;
    for (uint32_t i = 0; i < 300; i++)
        for (int c = 0; c < 4; c++)
            send_msg(fd[c], 'S', i, (i * 7919u) % 70000u);    /* up to 70 KB */
    for (int c = 0; c < 4; c++)
        for (uint32_t i = 0; i < 300; i++) {
            uint8_t p[16];
            long n = read_frame(fd[c], p, sizeof p, 5000);
            bad += n != (long)(5 + (i * 7919u) % 70000u) || p[0] != 's' || seq_of(p) != i;
        }
    CU_ASSERT_EQUAL(bad, 0);
    for (int c = 0; c < 4; c++)
        close(fd[c]);
    struct qv_tcp_stats st;
    qv_tcp_stats(T, &st);
    CU_ASSERT_EQUAL(st.messages, 1200);
    CU_ASSERT_EQUAL(st.accepted, 4);
    CU_ASSERT_EQUAL(qv_tcp_stop(T), 0);
}

static void test_async_once(void)
{
    pthread_t t = completer_start(0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(start(NULL));
    int fd = dial(qv_tcp_port(T));
    static unsigned char seen[2000];
    memset(seen, 0, sizeof seen);
    for (uint32_t i = 0; i < 2000; i++)
        send_msg(fd, 'A', i, 16);
    unsigned ok = 0, bad = 0;
    for (uint32_t i = 0; i < 2000; i++) {
        uint8_t p[32];
        long n = read_frame(fd, p, sizeof p, 5000);
        if (n != 21 || p[0] != 'a' || seq_of(p) >= 2000 || seen[seq_of(p)]++)
            bad++;
        else
            ok++;
    }
    CU_ASSERT_EQUAL(ok, 2000);
    CU_ASSERT_EQUAL(bad, 0);
    close(fd);
    CU_ASSERT_EQUAL(qv_tcp_stop(T), 0);
    completer_stop(t);
}

static void test_bad_frame_and_close(void)
{
    CU_ASSERT_PTR_NOT_NULL_FATAL(start(NULL));
    uint16_t port = qv_tcp_port(T);
    int fd = dial(port);
    send_msg(fd, 'S', 1, 0);
    uint32_t huge = LIMIT + 1;
    send_all(fd, &huge, 4);
    uint8_t p[16];
    CU_ASSERT_EQUAL(read_frame(fd, p, sizeof p, 2000), 5);
    CU_ASSERT_EQUAL(read_frame(fd, p, sizeof p, 2000), 1);
    CU_ASSERT_EQUAL(p[0], 'E');
    CU_ASSERT_EQUAL(read_frame(fd, p, sizeof p, 2000), 0);     /* closed */
    close(fd);
    fd = dial(port);                    /* 'C': answered, then closed */
    send_msg(fd, 'C', 2, 0);
    CU_ASSERT_EQUAL(read_frame(fd, p, sizeof p, 2000), 5);
    CU_ASSERT_EQUAL(p[0], 'c');
    CU_ASSERT_EQUAL(read_frame(fd, p, sizeof p, 2000), 0);
    close(fd);
    struct qv_tcp_stats st;
    qv_tcp_stats(T, &st);
    CU_ASSERT_EQUAL(st.bad_frames, 1);
    qv_tcp_stop(T);
}

/* max_async 4 with the completer holding: the server stops reading after
 * 4 requests; released, all 100 are answered. */
static void test_async_backpressure(void)
{
    pthread_t t = completer_start(1);
    struct qv_tcp_opts o;
    qv_tcp_opts_default(&o);
    o.max_async = 4;
    CU_ASSERT_PTR_NOT_NULL_FATAL(start(&o));
    int fd = dial(qv_tcp_port(T));
    for (uint32_t i = 0; i < 100; i++)
        send_msg(fd, 'A', i, 0);
    struct timespec ts = { 0, 200000000 };
    nanosleep(&ts, NULL);
    CU_ASSERT_EQUAL(atomic_load(&handled), 4);
    completer_release();
    unsigned ok = 0;
    uint8_t p[16];
    for (uint32_t i = 0; i < 100; i++)
        ok += read_frame(fd, p, sizeof p, 5000) == 5;
    CU_ASSERT_EQUAL(ok, 100);
    struct qv_tcp_stats st;
    qv_tcp_stats(T, &st);
    CU_ASSERT(st.paused >= 1);
    close(fd);
    qv_tcp_stop(T);
    completer_stop(t);
}

/* A client that sends 64 requests for 256 KiB answers and reads nothing:
 * the server holds at most max_pending_bytes (1 MiB) plus one answer
 * and stops reading; then the client reads all 64. */
static void test_slow_reader(void)
{
    struct qv_tcp_opts o;
    qv_tcp_opts_default(&o);
    o.max_pending_bytes = 1u << 20;
    CU_ASSERT_PTR_NOT_NULL_FATAL(start(&o));
    int fd = dial(qv_tcp_port(T));
    for (uint32_t i = 0; i < 64; i++)
        send_msg(fd, 'B', i, 0);
    struct timespec ts = { 0, 300000000 };
    nanosleep(&ts, NULL);
    unsigned h = atomic_load(&handled);
    CU_ASSERT(h < 64);                  /* paused: socket buffers + 1 MiB */
    unsigned ok = 0;
    static uint8_t p[300000];
    for (uint32_t i = 0; i < 64; i++)
        ok += read_frame(fd, p, sizeof p, 5000) == (long)(256u << 10);
    CU_ASSERT_EQUAL(ok, 64);
    struct qv_tcp_stats st;
    qv_tcp_stats(T, &st);
    CU_ASSERT(st.paused >= 1);
    close(fd);
    qv_tcp_stop(T);
}

static void test_conn_limit_and_idle(void)
{
    struct qv_tcp_opts o;
    qv_tcp_opts_default(&o);
    o.max_conns = 2;
    o.idle_ms = 150;
    CU_ASSERT_PTR_NOT_NULL_FATAL(start(&o));
    uint16_t port = qv_tcp_port(T);
    int a = dial(port), b = dial(port), c = dial(port);
    uint8_t p[16];
    send_msg(a, 'S', 1, 0);
    CU_ASSERT_EQUAL(read_frame(a, p, sizeof p, 2000), 5);
    CU_ASSERT_EQUAL(read_frame(c, p, sizeof p, 2000), 0);      /* refused: closed */
    /* idle: b said nothing and is closed after ~150-250 ms */
    CU_ASSERT_EQUAL(read_frame(b, p, sizeof p, 2000), 0);
    struct qv_tcp_stats st;
    qv_tcp_stats(T, &st);
    CU_ASSERT_EQUAL(st.refused, 1);
    CU_ASSERT(st.idle_closed >= 1);
    close(a), close(b), close(c);
    qv_tcp_stop(T);
}

static void test_stop_drains(void)
{
    pthread_t t = completer_start(1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(start(NULL));
    int fd = dial(qv_tcp_port(T));
    for (uint32_t i = 0; i < 10; i++)
        send_msg(fd, 'A', i, 0);
    int64_t give_up = qv_now_ns() + 5000000000LL;
    while (atomic_load(&handled) < 10 && qv_now_ns() < give_up)
        sched_yield();
    completer_release();                /* answers race with stop: all arrive */
    CU_ASSERT_EQUAL(qv_tcp_stop(T), 0);
    unsigned ok = 0;
    uint8_t p[16];
    while (read_frame(fd, p, sizeof p, 1000) == 5)
        ok++;
    CU_ASSERT_EQUAL(ok, 10);
    close(fd);
    completer_stop(t);
}

static void test_bad_options(void)
{
    struct qv_tcp_opts o;
    struct qv_tcp_handler h = { .frame = frame, .on_message = on_message };
    qv_tcp_opts_default(&o);
    o.workers = 0;
    CU_ASSERT_PTR_NULL(qv_tcp_start(&o, &h));
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "workers"));
    qv_tcp_opts_default(&o);
    o.bind_addr = "nowhere";
    CU_ASSERT_PTR_NULL(qv_tcp_start(&o, &h));
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "nowhere"));
    CU_ASSERT_PTR_NULL(qv_tcp_start(NULL, NULL));
    CU_ASSERT_EQUAL(qv_tcp_stop(NULL), 0);
}

int main(void)
{
    static const struct { const char *name; void (*fn)(void); } tests[] = {
        { "pipelined sync answers in order", test_pipelined_in_order },
        { "async answers once each", test_async_once },
        { "bad frame answered then closed; CLOSE verdict", test_bad_frame_and_close },
        { "async flood paused at max_async", test_async_backpressure },
        { "a client that does not read is paused", test_slow_reader },
        { "connection limit and idle close", test_conn_limit_and_idle },
        { "stop drains async answers", test_stop_drains },
        { "bad options refused", test_bad_options },
    };
    CU_pSuite s;
    unsigned fails;

    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    s = CU_add_suite("tcp", NULL, NULL);
    for (size_t i = 0; s && i < sizeof tests / sizeof tests[0]; i++)
        CU_add_test(s, tests[i].name, tests[i].fn);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    fails = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
    CU_cleanup_registry();
    return fails ? 1 : 0;
}
