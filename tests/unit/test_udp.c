/*
 * test_udp.c - the kernel UDP transport (quiver/udp.h) on loopback:
 * synchronous and asynchronous answers arrive exactly once, SO_REUSEPORT
 * spreads clients over the workers, a server whose slots are all async
 * answers at once instead of blocking, truncation and drops are seen and
 * counted, stop() drains what is in flight, bad options are refused.
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

#include "quiver/errors.h"
#include "quiver/timeutil.h"
#include "quiver/udp.h"

/* ---- a client ------------------------------------------------------------ */

static int client_socket(void)
{
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (fd >= 0)
        bind(fd, (struct sockaddr *)&a, sizeof a);
    int big = 1 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    return fd;
}

static void send_to(int fd, uint16_t port, const void *buf, size_t len)
{
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    ssize_t r = sendto(fd, buf, len, 0, (struct sockaddr *)&a, sizeof a);
    CU_ASSERT_EQUAL(r, (ssize_t)len);
}

/* One datagram within ms, its length, or -1. */
static ssize_t recv_ms(int fd, void *buf, size_t cap, int ms)
{
    struct pollfd p = { .fd = fd, .events = POLLIN };
    if (poll(&p, 1, ms) <= 0)
        return -1;
    return recv(fd, buf, cap, 0);
}

/* ---- handlers ------------------------------------------------------------ */

/* Echo with the first byte changed to 'R'; 'D...' is dropped; a truncated
 * datagram is answered "T". */
static enum qv_udp_verdict echo(void *arg, struct qv_udp_slot *s)
{
    (void)arg;
    const char *in = s->rx;
    if (s->truncated) {
        memcpy(s->tx, "T", 1);
        s->tx_len = 1;
        return QV_UDP_REPLY;
    }
    if (s->rx_len > 0 && in[0] == 'D')
        return QV_UDP_DROP;
    memcpy(s->tx, s->rx, s->rx_len);
    ((char *)s->tx)[0] = 'R';
    s->tx_len = s->rx_len;
    return QV_UDP_REPLY;
}

/* Async: slots go to a completer thread through a small locked queue (the
 * test's, not the transport's); when async is not allowed, "B" at once. */
#define QCAP 65536
static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct qv_udp_slot *q[QCAP];
    unsigned head, tail;
    int stop, hold;
    int64_t delay_ns;
} A = { .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER };

static enum qv_udp_verdict later(void *arg, struct qv_udp_slot *s)
{
    (void)arg;
    if (!s->async_ok) {
        memcpy(s->tx, "B", 1);
        s->tx_len = 1;
        return QV_UDP_REPLY;
    }
    pthread_mutex_lock(&A.mu);
    A.q[A.tail++ % QCAP] = s;
    pthread_cond_signal(&A.cv);
    pthread_mutex_unlock(&A.mu);
    return QV_UDP_ASYNC;
}

static void *completer(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&A.mu);
    for (;;) {
        while (!A.stop && (A.hold || A.head == A.tail))
            pthread_cond_wait(&A.cv, &A.mu);
        if (A.head == A.tail && A.stop)
            break;
        if (A.hold && !A.stop)
            continue;
        struct qv_udp_slot *s = A.q[A.head++ % QCAP];
        pthread_mutex_unlock(&A.mu);
        if (A.delay_ns) {
            struct timespec ts = { 0, A.delay_ns };
            nanosleep(&ts, NULL);
        }
        memcpy(s->tx, s->rx, s->rx_len);
        ((char *)s->tx)[0] = 'A';
        s->tx_len = s->rx_len;
        qv_udp_complete(s);
        pthread_mutex_lock(&A.mu);
    }
    pthread_mutex_unlock(&A.mu);
    return NULL;
}

static pthread_t completer_start(int hold, int64_t delay_ns)
{
    pthread_t t;
    A.head = A.tail = 0;
    A.stop = 0;
    A.hold = hold;
    A.delay_ns = delay_ns;
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

static struct qv_udp *start(enum qv_udp_verdict (*fn)(void *, struct qv_udp_slot *),
                            unsigned workers, unsigned slots, unsigned batch, uint32_t maxd)
{
    struct qv_udp_opts o;
    struct qv_udp_handler h = { .on_datagram = fn };
    qv_udp_opts_default(&o);
    o.bind_addr = "127.0.0.1";
    o.workers = workers;
    if (slots)
        o.slots = slots;
    if (batch)
        o.batch = batch;
    if (maxd)
        o.max_datagram = maxd;
    o.rcvbuf = 1 << 20;
    return qv_udp_start(&o, &h);
}

/* nsock clients send `per` numbered datagrams each, at most `window`
 * outstanding per socket; every answer must come back once with the
 * expected first byte and the same number.  Returns answers seen. */
static unsigned exchange(uint16_t port, unsigned nsock, unsigned per, unsigned window, char want)
{
    int fd[64];
    unsigned sent[64] = { 0 }, got[64] = { 0 }, bad = 0, total = 0;
    unsigned char *seen = calloc((size_t)nsock * per, 1);
    for (unsigned c = 0; c < nsock; c++)
        fd[c] = client_socket();
    int64_t give_up = qv_now_ns() + 20000000000LL;
    while (total < nsock * per && qv_now_ns() < give_up) {
        for (unsigned c = 0; c < nsock; c++) {
            while (sent[c] < per && sent[c] - got[c] < window) {
                char m[32];
                int n = snprintf(m, sizeof m, "Q%u:%u", c, sent[c]);
                send_to(fd[c], port, m, (size_t)n);
                sent[c]++;
            }
            char r[64];
            ssize_t n;
            while ((n = recv_ms(fd[c], r, sizeof r - 1, 0)) > 0) {
                r[n] = 0;
                unsigned cc, i;
                if (r[0] != want || sscanf(r + 1, "%u:%u", &cc, &i) != 2 || cc != c ||
                    i >= per || seen[(size_t)c * per + i]) {
                    bad++;
                    continue;
                }
                seen[(size_t)c * per + i] = 1;
                got[c]++;
                total++;
            }
        }
    }
    for (unsigned c = 0; c < nsock; c++)
        close(fd[c]);
    free(seen);
    CU_ASSERT_EQUAL(bad, 0);
    return total;
}

/* ---- tests --------------------------------------------------------------- */

static void test_sync_echo_and_reuseport(void)
{
    struct qv_udp *u = start(echo, 2, 0, 0, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(u);
    uint16_t port = qv_udp_port(u);
    CU_ASSERT(port != 0);
    CU_ASSERT_EQUAL(exchange(port, 32, 200, 16, 'R'), 32 * 200);
    struct qv_udp_stats st;
    qv_udp_stats(u, &st);
    CU_ASSERT_EQUAL(st.rx, 32 * 200);
    CU_ASSERT_EQUAL(st.tx, 32 * 200);
    CU_ASSERT_EQUAL(st.send_errors, 0);
    CU_ASSERT_EQUAL(qv_udp_stop(u), 0);
}

/* Both workers serve: a socket per worker on one port, the kernel hashing
 * the 32 clients' 4-tuples over them. */
static unsigned rx_of_worker;
static enum qv_udp_verdict echo_count(void *arg, struct qv_udp_slot *s)
{
    if (s->worker == 1)
        __atomic_add_fetch(&rx_of_worker, 1, __ATOMIC_RELAXED);
    return echo(arg, s);
}

static void test_spread(void)
{
    struct qv_udp *u = start(echo_count, 2, 0, 0, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(u);
    rx_of_worker = 0;
    CU_ASSERT_EQUAL(exchange(qv_udp_port(u), 32, 20, 4, 'R'), 32 * 20);
    unsigned w1 = __atomic_load_n(&rx_of_worker, __ATOMIC_RELAXED);
    CU_ASSERT(w1 > 0 && w1 < 32 * 20);
    qv_udp_stop(u);
}

static void test_async(void)
{
    pthread_t t = completer_start(0, 0);
    struct qv_udp *u = start(later, 2, 0, 0, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(u);
    CU_ASSERT_EQUAL(exchange(qv_udp_port(u), 8, 1000, 32, 'A'), 8 * 1000);
    struct qv_udp_stats st;
    qv_udp_stats(u, &st);
    CU_ASSERT_EQUAL(st.async, 8 * 1000);
    CU_ASSERT_EQUAL(st.tx, 8 * 1000);
    CU_ASSERT(st.wakes > 0);            /* the completer woke sleeping workers */
    CU_ASSERT_EQUAL(qv_udp_stop(u), 0);
    completer_stop(t);
}

/* 64 slots, batch 8: at most 56 async; the rest are answered "B" at once
 * while the completer holds; released, the 56 are answered "A". */
static void test_async_exhaustion(void)
{
    pthread_t t = completer_start(1, 0);
    struct qv_udp *u = start(later, 1, 64, 8, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(u);
    int fd = client_socket();
    uint16_t port = qv_udp_port(u);
    for (unsigned i = 0; i < 100; i++) {
        char m[16];
        int n = snprintf(m, sizeof m, "Q0:%u", i);
        send_to(fd, port, m, (size_t)n);
    }
    unsigned busy = 0, done = 0;
    char r[64];
    ssize_t n;
    while (busy < 44 && (n = recv_ms(fd, r, sizeof r, 5000)) > 0)
        busy += r[0] == 'B';
    CU_ASSERT_EQUAL(recv_ms(fd, r, sizeof r, 100), -1);    /* nothing more yet */
    CU_ASSERT_EQUAL(busy, 100 - 56);
    completer_release();
    while ((n = recv_ms(fd, r, sizeof r, 1000)) > 0)
        done += r[0] == 'A';
    CU_ASSERT_EQUAL(done, 56);
    struct qv_udp_stats st;
    qv_udp_stats(u, &st);
    CU_ASSERT_EQUAL(st.async, 56);
    CU_ASSERT_EQUAL(st.async_refused, 44);
    close(fd);
    CU_ASSERT_EQUAL(qv_udp_stop(u), 0);
    completer_stop(t);
}

static void test_truncate_and_drop(void)
{
    struct qv_udp *u = start(echo, 1, 0, 0, 128);
    CU_ASSERT_PTR_NOT_NULL_FATAL(u);
    int fd = client_socket();
    uint16_t port = qv_udp_port(u);
    char big[300], r[400];
    memset(big, 'x', sizeof big);
    send_to(fd, port, big, sizeof big);
    ssize_t n = recv_ms(fd, r, sizeof r, 2000);
    CU_ASSERT_EQUAL(n, 1);
    CU_ASSERT_EQUAL(r[0], 'T');
    send_to(fd, port, "Drop me", 7);
    CU_ASSERT_EQUAL(recv_ms(fd, r, sizeof r, 200), -1);
    send_to(fd, port, "Qok", 3);
    CU_ASSERT_EQUAL(recv_ms(fd, r, sizeof r, 2000), 3);
    struct qv_udp_stats st;
    qv_udp_stats(u, &st);
    CU_ASSERT_EQUAL(st.truncated, 1);
    CU_ASSERT_EQUAL(st.dropped, 1);
    CU_ASSERT_EQUAL(st.rx, 3);
    close(fd);
    qv_udp_stop(u);
}

/* stop() while 40 answers are still with a slow completer: all arrive. */
static void test_stop_drains(void)
{
    pthread_t t = completer_start(0, 2000000);     /* 2 ms each */
    struct qv_udp *u = start(later, 1, 0, 0, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(u);
    int fd = client_socket();
    uint16_t port = qv_udp_port(u);
    for (unsigned i = 0; i < 40; i++) {
        char m[16];
        int n = snprintf(m, sizeof m, "Q0:%u", i);
        send_to(fd, port, m, (size_t)n);
    }
    struct qv_udp_stats st;
    int64_t give_up = qv_now_ns() + 5000000000LL;
    do {                                /* all received, most still async */
        qv_udp_stats(u, &st);
    } while (st.rx < 40 && qv_now_ns() < give_up);
    CU_ASSERT_EQUAL(st.rx, 40);
    CU_ASSERT_EQUAL(qv_udp_stop(u), 0);
    unsigned got = 0;
    char r[64];
    while (recv_ms(fd, r, sizeof r, 200) > 0)
        got++;
    CU_ASSERT_EQUAL(got, 40);
    close(fd);
    completer_stop(t);
}

static void test_bad_options(void)
{
    struct qv_udp_opts o;
    struct qv_udp_handler h = { .on_datagram = echo };
    qv_udp_opts_default(&o);
    o.workers = 0;
    CU_ASSERT_PTR_NULL(qv_udp_start(&o, &h));
    CU_ASSERT_EQUAL(qv_errno, QV_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "workers"));
    qv_udp_opts_default(&o);
    o.slots = 1000;
    CU_ASSERT_PTR_NULL(qv_udp_start(&o, &h));
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "power of two"));
    qv_udp_opts_default(&o);
    o.bind_addr = "not-an-address";
    CU_ASSERT_PTR_NULL(qv_udp_start(&o, &h));
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "not-an-address"));
    CU_ASSERT_PTR_NULL(qv_udp_start(NULL, NULL));
    /* a port held by a socket without SO_REUSEPORT */
    int fd = client_socket();
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &len);
    qv_udp_opts_default(&o);
    o.bind_addr = "127.0.0.1";
    o.port = ntohs(a.sin_port);
    CU_ASSERT_PTR_NULL(qv_udp_start(&o, &h));
    CU_ASSERT_EQUAL(qv_errno, -EADDRINUSE);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "bind"));
    close(fd);
    CU_ASSERT_EQUAL(qv_udp_stop(NULL), 0);
}

int main(void)
{
    static const struct { const char *name; void (*fn)(void); } tests[] = {
        { "sync echo: every answer once", test_sync_echo_and_reuseport },
        { "SO_REUSEPORT: both workers serve", test_spread },
        { "async answers from another thread, wakes", test_async },
        { "all slots async: answered at once, then completed", test_async_exhaustion },
        { "truncated and dropped datagrams", test_truncate_and_drop },
        { "stop drains the async slots", test_stop_drains },
        { "bad options and a taken port refused", test_bad_options },
    };
    CU_pSuite s;
    unsigned fails;

    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    s = CU_add_suite("udp", NULL, NULL);
    for (size_t i = 0; s && i < sizeof tests / sizeof tests[0]; i++)
        CU_add_test(s, tests[i].name, tests[i].fn);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    fails = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
    CU_cleanup_registry();
    return fails ? 1 : 0;
}
