/*
 * test_common.c - CUnit suite for host/common: errors, log, alloc, arena,
 * config, vecio.
 *
 * Environment: QV_SOURCE_ROOT (the source tree, for conf/quiver.conf;
 * default ".") and QV_DATA_DIR (real data sets; siftsmall is checked when
 * present).  Scratch files go to a mkdtemp folder under /tmp, removed at
 * the end.  Fault injection is process-wide, so every test here runs in
 * one thread except where a test starts its own.
 */
#include <CUnit/Basic.h>
#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "quiver/alloc.h"
#include "quiver/arena.h"
#include "quiver/config.h"
#include "quiver/errors.h"
#include "quiver/log.h"
#include "quiver/timeutil.h"
#include "quiver/vecio.h"

#define MIB ((size_t)1 << 20)

static char tmpdir[64];

/* ---- helpers ------------------------------------------------------------ */

static int64_t live_blocks(enum qv_mem_tag tag)
{
    struct qv_mem_stats st;

    qv_mem_stats(tag, &st);
    return st.live_blocks;
}

static int64_t live_bytes(enum qv_mem_tag tag)
{
    struct qv_mem_stats st;

    qv_mem_stats(tag, &st);
    return st.live_bytes;
}

static uint64_t failures(enum qv_mem_tag tag)
{
    struct qv_mem_stats st;

    qv_mem_stats(tag, &st);
    return st.failures;
}

/* Does the last error message contain s?  Prints it when not. */
static int msg_has(const char *s)
{
    if (strstr(qv_errmsg(), s) != NULL)
        return 1;
    fprintf(stderr, "\n  message \"%s\"\n  lacks   \"%s\"\n", qv_errmsg(), s);
    return 0;
}

static long read_long_file(const char *path)
{
    FILE *f = fopen(path, "r");
    long v = -1;

    if (f == NULL)
        return -1;
    if (fscanf(f, "%ld", &v) != 1)
        v = -1;
    fclose(f);
    return v;
}

/* Whole file into a malloc'd string (test-side memory, not qv_malloc). */
static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    char *buf;
    long len;

    if (f == NULL)
        return NULL;
    fseek(f, 0, SEEK_END);
    len = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = malloc((size_t)len + 1);
    if (buf != NULL) {
        if (fread(buf, 1, (size_t)len, f) != (size_t)len)
            len = 0;
        buf[len] = '\0';
    }
    fclose(f);
    return buf;
}

static void write_bytes(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");

    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    CU_ASSERT_EQUAL(fwrite(data, 1, len, f), len);
    fclose(f);
}

static void tmp_path(char *buf, size_t len, const char *name)
{
    snprintf(buf, len, "%s/%s", tmpdir, name);
}

/* ---- errors ------------------------------------------------------------- */

static void test_strerror_all(void)
{
    static const int codes[] = {
        QV_OK, QV_EINVAL, QV_ENOMEM, QV_EIO, QV_ENOENT, QV_ERANGE,
        QV_ENOTSUP, QV_EEXIST, QV_EBUSY, QV_ENOSPC, QV_EFORMAT, QV_ECONFIG,
        QV_ECORRUPT, QV_EUNAVAIL,
    };
    const size_t n = sizeof(codes) / sizeof(codes[0]);
    size_t i, j;

    for (i = 0; i < n; i++) {
        const char *s = qv_strerror(codes[i]);

        CU_ASSERT_PTR_NOT_NULL_FATAL(s);
        CU_ASSERT(strlen(s) > 0);
        CU_ASSERT_STRING_NOT_EQUAL(s, "unknown error");
        for (j = 0; j < i; j++)
            CU_ASSERT_STRING_NOT_EQUAL(s, qv_strerror(codes[j]));
    }
    CU_ASSERT_STRING_EQUAL(qv_strerror(QV_ENOMEM), "out of memory");
    CU_ASSERT_STRING_EQUAL(qv_strerror(QV_ECONFIG), "configuration error");
    /* Other errno values pass through; nonsense is "unknown error". */
    CU_ASSERT_STRING_NOT_EQUAL(qv_strerror(-EPIPE), "unknown error");
    CU_ASSERT_STRING_EQUAL(qv_strerror(-999999), "unknown error");
    CU_ASSERT_STRING_EQUAL(qv_strerror(12345), "unknown error");
    CU_ASSERT_STRING_EQUAL(qv_strerror(-1999), "unknown error");
}

static void test_seterr_errmsg(void)
{
    char longfmt[1000];

    qv_clearerr();
    CU_ASSERT_EQUAL(qv_errno, 0);
    CU_ASSERT_STRING_EQUAL(qv_errmsg(), qv_strerror(0));

    CU_ASSERT_EQUAL(qv_seterr(QV_EINVAL, "thing %d: fix it", 7), QV_EINVAL);
    CU_ASSERT_EQUAL(qv_errno, QV_EINVAL);
    CU_ASSERT_STRING_EQUAL(qv_errmsg(), "thing 7: fix it");

    /* qv_errno changed behind its back: the stale message is not used. */
    qv_errno = QV_EIO;
    CU_ASSERT_STRING_EQUAL(qv_errmsg(), qv_strerror(QV_EIO));

    memset(longfmt, 'x', sizeof(longfmt) - 1);
    longfmt[sizeof(longfmt) - 1] = '\0';
    qv_seterr(QV_ERANGE, "%s", longfmt);
    CU_ASSERT_EQUAL(strlen(qv_errmsg()), 511);

    qv_clearerr();
    CU_ASSERT_EQUAL(qv_errno, 0);
    CU_ASSERT_STRING_EQUAL(qv_errmsg(), qv_strerror(0));
}

struct tls_probe {
    pthread_barrier_t *bar;
    int errno_at_start;
    int errno_at_end;
    char msg[64];
};

static void *tls_thread(void *arg)
{
    struct tls_probe *p = arg;

    p->errno_at_start = qv_errno;
    qv_seterr(QV_EIO, "from the thread");
    pthread_barrier_wait(p->bar);      /* main sets its own now */
    pthread_barrier_wait(p->bar);
    p->errno_at_end = qv_errno;
    snprintf(p->msg, sizeof(p->msg), "%s", qv_errmsg());
    return NULL;
}

static void test_errno_thread_local(void)
{
    pthread_barrier_t bar;
    struct tls_probe probe = { &bar, -1, -1, "" };
    pthread_t t;

    pthread_barrier_init(&bar, NULL, 2);
    qv_seterr(QV_EINVAL, "from main");
    CU_ASSERT_EQUAL_FATAL(pthread_create(&t, NULL, tls_thread, &probe), 0);
    pthread_barrier_wait(&bar);
    /* The thread has set QV_EIO; ours is untouched.  Set ours again. */
    CU_ASSERT_EQUAL(qv_errno, QV_EINVAL);
    CU_ASSERT_STRING_EQUAL(qv_errmsg(), "from main");
    qv_seterr(QV_ENOSPC, "main again");
    pthread_barrier_wait(&bar);
    pthread_join(t, NULL);
    pthread_barrier_destroy(&bar);

    CU_ASSERT_EQUAL(probe.errno_at_start, 0);
    CU_ASSERT_EQUAL(probe.errno_at_end, QV_EIO);
    CU_ASSERT_STRING_EQUAL(probe.msg, "from the thread");
    CU_ASSERT_EQUAL(qv_errno, QV_ENOSPC);
    CU_ASSERT_STRING_EQUAL(qv_errmsg(), "main again");
    qv_clearerr();
}

/* ---- log ---------------------------------------------------------------- */

static void test_log_level_parse(void)
{
    enum qv_log_level saved = qv_log_get_level();

    CU_ASSERT_EQUAL(qv_log_level_parse("error"), QV_LOG_ERROR);
    CU_ASSERT_EQUAL(qv_log_level_parse("warn"), QV_LOG_WARN);
    CU_ASSERT_EQUAL(qv_log_level_parse("info"), QV_LOG_INFO);
    CU_ASSERT_EQUAL(qv_log_level_parse("debug"), QV_LOG_DEBUG);
    CU_ASSERT_EQUAL(qv_log_level_parse("DEBUG"), QV_LOG_DEBUG);
    CU_ASSERT_EQUAL(qv_log_level_parse("verbose"), -1);
    CU_ASSERT_EQUAL(qv_log_level_parse(""), -1);
    CU_ASSERT_EQUAL(qv_log_level_parse(NULL), -1);

    qv_log_set_level(QV_LOG_DEBUG);
    CU_ASSERT_EQUAL(qv_log_get_level(), QV_LOG_DEBUG);
    qv_log_set_level(QV_LOG_ERROR);
    CU_ASSERT_EQUAL(qv_log_get_level(), QV_LOG_ERROR);
    qv_log_set_level(saved);
}

static void test_log_rate_limit(void)
{
    struct qv_log_rl rl;
    uint32_t sup, allowed = 0, reported = 0;
    int64_t t0, t1, windows;
    int i;

    memset(&rl, 0, sizeof(rl));
    t0 = qv_now_ns();
    for (i = 0; i < 1000; i++) {
        if (qv_log_rl_allow(&rl, 5, &sup)) {
            allowed++;
            reported += sup;
        } else {
            CU_ASSERT_EQUAL(sup, 0);
        }
    }
    t1 = qv_now_ns();
    /* However slow the machine, at most 5 per window that the loop
     * touched, and at least the first window's 5. */
    windows = (t1 - t0) / 1000000000LL + 2;
    CU_ASSERT(allowed >= 5);
    CU_ASSERT(allowed <= 5 * windows);
    CU_ASSERT_EQUAL(allowed + reported + rl.suppressed, 1000);

    /* A second later, the next line passes and reports what was dropped. */
    rl.window_start_ns -= 2000000000LL;
    {
        uint32_t pending = rl.suppressed;

        CU_ASSERT_TRUE(qv_log_rl_allow(&rl, 5, &sup));
        CU_ASSERT_EQUAL(sup, pending);
        CU_ASSERT(pending > 0);
        CU_ASSERT_EQUAL(rl.suppressed, 0);
    }

    /* per_s = 0 lets nothing through. */
    memset(&rl, 0, sizeof(rl));
    CU_ASSERT_FALSE(qv_log_rl_allow(&rl, 0, &sup));
}

/* Capture stderr while logging; returns malloc'd text. */
static char *capture_log(int rl_loops)
{
    char path[128];
    char *text;
    int fd, saved, i;

    tmp_path(path, sizeof(path), "log.txt");
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0)
        return NULL;
    fflush(stderr);
    saved = dup(2);
    dup2(fd, 2);
    close(fd);

    QV_WARN("hello %d", 42);
    QV_DEBUG("this line is below the threshold");
    for (i = 0; i < rl_loops; i++)
        QV_LOG_RL(QV_LOG_WARN, 3, "repeated line %d", i);

    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    text = slurp(path);
    unlink(path);
    return text;
}

static void test_log_write_format(void)
{
    enum qv_log_level saved = qv_log_get_level();
    char *text, *p;
    int repeated = 0;

    qv_log_set_level(QV_LOG_INFO);
    text = capture_log(100);
    qv_log_set_level(saved);
    CU_ASSERT_PTR_NOT_NULL_FATAL(text);

    CU_ASSERT_PTR_NOT_NULL(strstr(text, " WARN  test_common.c:"));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, ": hello 42\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "Z quiver["));
    CU_ASSERT(text[4] == '-' && text[10] == 'T');
    CU_ASSERT_PTR_NULL(strstr(text, "below the threshold"));
    for (p = text; (p = strstr(p, "repeated line")) != NULL; p++)
        repeated++;
    CU_ASSERT(repeated >= 3);
    CU_ASSERT(repeated < 100);
    free(text);
}

/* ---- alloc -------------------------------------------------------------- */

static void test_alloc_counters(void)
{
    struct qv_mem_stats before, after, all;
    unsigned char *a, *c, *r;
    char *s;
    size_t i;

    qv_mem_stats(QV_MEM_TEST, &before);
    a = qv_malloc(1000, QV_MEM_TEST);
    c = qv_calloc(10, 33, QV_MEM_TEST);
    s = qv_strdup("quiver", QV_MEM_TEST);
    r = qv_malloc(16, QV_MEM_TEST);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    CU_ASSERT_EQUAL((uintptr_t)a % 64, 0);
    CU_ASSERT_EQUAL((uintptr_t)c % 64, 0);
    CU_ASSERT_EQUAL((uintptr_t)s % 64, 0);
    for (i = 0; i < 330; i++)
        CU_ASSERT_EQUAL_FATAL(c[i], 0);
    CU_ASSERT_STRING_EQUAL(s, "quiver");

    qv_mem_stats(QV_MEM_TEST, &after);
    CU_ASSERT_EQUAL(after.live_blocks, before.live_blocks + 4);
    CU_ASSERT_EQUAL(after.live_bytes, before.live_bytes + 1000 + 330 + 7 + 16);
    CU_ASSERT_EQUAL(after.allocs, before.allocs + 4);

    for (i = 0; i < 16; i++)
        r[i] = (unsigned char)i;
    r = qv_realloc(r, 5000, QV_MEM_TEST);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    CU_ASSERT_EQUAL((uintptr_t)r % 64, 0);
    for (i = 0; i < 16; i++)
        CU_ASSERT_EQUAL(r[i], i);
    r = qv_realloc(r, 8, QV_MEM_TEST);     /* shrink keeps the prefix */
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    CU_ASSERT_EQUAL(r[7], 7);
    qv_mem_stats(QV_MEM_TEST, &after);
    CU_ASSERT_EQUAL(after.live_blocks, before.live_blocks + 4);
    CU_ASSERT_EQUAL(after.live_bytes, before.live_bytes + 1000 + 330 + 7 + 8);

    /* The sum over tags includes this tag. */
    qv_mem_stats(QV_MEM__COUNT, &all);
    CU_ASSERT(all.live_blocks >= after.live_blocks);
    CU_ASSERT(all.allocs >= after.allocs);

    qv_free(a);
    qv_free(c);
    qv_free(s);
    qv_free(r);
    qv_free(NULL);
    qv_mem_stats(QV_MEM_TEST, &after);
    CU_ASSERT_EQUAL(after.live_blocks, before.live_blocks);
    CU_ASSERT_EQUAL(after.live_bytes, before.live_bytes);
    CU_ASSERT_EQUAL(after.failures, before.failures);

    /* size 0 is a valid block; realloc(NULL) is malloc. */
    a = qv_malloc(0, QV_MEM_TEST);
    CU_ASSERT_PTR_NOT_NULL(a);
    qv_free(a);
    a = qv_realloc(NULL, 10, QV_MEM_TEST);
    CU_ASSERT_PTR_NOT_NULL(a);
    qv_free(a);
    CU_ASSERT_EQUAL(live_blocks(QV_MEM_TEST), before.live_blocks);
}

static void test_alloc_tags_and_account(void)
{
    int64_t b0 = live_bytes(QV_MEM_TEST), k0 = live_blocks(QV_MEM_TEST);
    int t, u;

    for (t = 0; t < QV_MEM__COUNT; t++) {
        CU_ASSERT_PTR_NOT_NULL_FATAL(qv_mem_tag_name((enum qv_mem_tag)t));
        for (u = 0; u < t; u++)
            CU_ASSERT_STRING_NOT_EQUAL(qv_mem_tag_name((enum qv_mem_tag)t),
                                       qv_mem_tag_name((enum qv_mem_tag)u));
    }
    CU_ASSERT_STRING_EQUAL(qv_mem_tag_name(QV_MEM_CONFIG), "config");
    qv_mem_account(QV_MEM_TEST, 4096, 1);
    CU_ASSERT_EQUAL(live_bytes(QV_MEM_TEST), b0 + 4096);
    CU_ASSERT_EQUAL(live_blocks(QV_MEM_TEST), k0 + 1);
    qv_mem_account(QV_MEM_TEST, -4096, -1);
    CU_ASSERT_EQUAL(live_bytes(QV_MEM_TEST), b0);
    CU_ASSERT_EQUAL(live_blocks(QV_MEM_TEST), k0);
}

static void test_alloc_fail_injection(void)
{
    uint64_t f0 = failures(QV_MEM_TEST);
    int64_t k0 = live_blocks(QV_MEM_TEST);
    void *p[4];
    int i;

    qv_clearerr();
    qv_alloc_fail_after(0);
    CU_ASSERT_PTR_NULL(qv_malloc(64, QV_MEM_TEST));
    CU_ASSERT_EQUAL(qv_errno, QV_ENOMEM);
    CU_ASSERT(msg_has("test"));
    CU_ASSERT_EQUAL(failures(QV_MEM_TEST), f0 + 1);
    /* One failure only: the next succeeds. */
    p[0] = qv_malloc(64, QV_MEM_TEST);
    CU_ASSERT_PTR_NOT_NULL(p[0]);
    qv_free(p[0]);

    /* Two succeed, the third fails, the fourth succeeds. */
    qv_alloc_fail_after(2);
    for (i = 0; i < 4; i++)
        p[i] = qv_strdup("x", QV_MEM_TEST);
    CU_ASSERT_PTR_NOT_NULL(p[0]);
    CU_ASSERT_PTR_NOT_NULL(p[1]);
    CU_ASSERT_PTR_NULL(p[2]);
    CU_ASSERT_PTR_NOT_NULL(p[3]);
    for (i = 0; i < 4; i++)
        qv_free(p[i]);
    CU_ASSERT_EQUAL(failures(QV_MEM_TEST), f0 + 2);

    qv_alloc_fail_after(0);
    CU_ASSERT_PTR_NULL(qv_calloc(4, 4, QV_MEM_TEST));
    CU_ASSERT_EQUAL(failures(QV_MEM_TEST), f0 + 3);

    /* Disarmed: nothing fails. */
    qv_alloc_fail_after(5);
    qv_alloc_fail_after(-1);
    for (i = 0; i < 10; i++) {
        void *q = qv_malloc(8, QV_MEM_TEST);

        CU_ASSERT_PTR_NOT_NULL(q);
        qv_free(q);
    }
    /* Overflow in calloc is a failure too, without the hook. */
    qv_clearerr();
    CU_ASSERT_PTR_NULL(qv_calloc(SIZE_MAX / 2, 3, QV_MEM_TEST));
    CU_ASSERT_EQUAL(qv_errno, QV_ENOMEM);
    CU_ASSERT_EQUAL(failures(QV_MEM_TEST), f0 + 4);
    CU_ASSERT_EQUAL(live_blocks(QV_MEM_TEST), k0);
}

static void test_realloc_failure_keeps_block(void)
{
    int64_t k0 = live_blocks(QV_MEM_TEST), b0 = live_bytes(QV_MEM_TEST);
    unsigned char *p, *q;
    int i;

    p = qv_malloc(100, QV_MEM_TEST);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    for (i = 0; i < 100; i++)
        p[i] = (unsigned char)(i * 3);
    qv_alloc_fail_after(0);
    q = qv_realloc(p, 100000, QV_MEM_TEST);
    CU_ASSERT_PTR_NULL(q);
    CU_ASSERT_EQUAL(qv_errno, QV_ENOMEM);
    for (i = 0; i < 100; i++)
        CU_ASSERT_EQUAL_FATAL(p[i], (unsigned char)(i * 3));
    CU_ASSERT_EQUAL(live_blocks(QV_MEM_TEST), k0 + 1);
    CU_ASSERT_EQUAL(live_bytes(QV_MEM_TEST), b0 + 100);
    qv_free(p);
    CU_ASSERT_EQUAL(live_blocks(QV_MEM_TEST), k0);
}

static void *alloc_churn(void *arg)
{
    int i;

    (void)arg;
    for (i = 0; i < 20000; i++) {
        void *p = qv_malloc((size_t)(i % 500), QV_MEM_TEST);

        if (p == NULL)
            return (void *)1;
        qv_free(p);
    }
    return NULL;
}

static void test_alloc_threads(void)
{
    int64_t k0 = live_blocks(QV_MEM_TEST), b0 = live_bytes(QV_MEM_TEST);
    pthread_t t[2];
    void *rc[2];
    int i;

    for (i = 0; i < 2; i++)
        CU_ASSERT_EQUAL_FATAL(pthread_create(&t[i], NULL, alloc_churn, NULL), 0);
    for (i = 0; i < 2; i++) {
        pthread_join(t[i], &rc[i]);
        CU_ASSERT_PTR_NULL(rc[i]);
    }
    CU_ASSERT_EQUAL(live_blocks(QV_MEM_TEST), k0);
    CU_ASSERT_EQUAL(live_bytes(QV_MEM_TEST), b0);
}

/* ---- arena -------------------------------------------------------------- */

static int all_zero(const unsigned char *p, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++)
        if (p[i] != 0)
            return 0;
    return 1;
}

static void test_arena_alloc_basic(void)
{
    static const size_t sizes[] = { 1, 63, 64, 65, 100, 4096, 10000, 0 };
    struct qv_arena_opts o = { 2 * MIB, -1, QV_HUGE_AUTO };
    int64_t arena0 = live_bytes(QV_MEM_ARENA);
    int64_t arena_blocks0 = live_blocks(QV_MEM_ARENA);
    struct qv_arena_stats st;
    unsigned char *blk[64], *big;
    size_t used = 0, i, big_size = 5 * MIB + 123;
    struct qv_arena *a;

    a = qv_arena_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    qv_arena_stats(a, &st);
    CU_ASSERT_EQUAL(st.bytes_mapped, 0);        /* nothing before first alloc */

    for (i = 0; i < 64; i++) {
        size_t sz = sizes[i % 8];

        blk[i] = qv_arena_alloc(a, sz);
        CU_ASSERT_PTR_NOT_NULL_FATAL(blk[i]);
        CU_ASSERT_EQUAL((uintptr_t)blk[i] % 64, 0);
        CU_ASSERT(all_zero(blk[i], sz));
        memset(blk[i], (int)(i + 1), sz);
        used += sz;
    }
    /* No block overwrote another. */
    for (i = 0; i < 64; i++) {
        size_t sz = sizes[i % 8], j;

        for (j = 0; j < sz; j++)
            if (blk[i][j] != (unsigned char)(i + 1))
                break;
        CU_ASSERT_EQUAL(j, sz);
    }
    qv_arena_stats(a, &st);
    CU_ASSERT_EQUAL(st.bytes_used, used);
    CU_ASSERT_EQUAL(st.bytes_mapped, 2 * MIB);
    CU_ASSERT_EQUAL(st.chunks_hugetlb + st.chunks_thp + st.chunks_plain, 1);
    CU_ASSERT_EQUAL(st.numa_node, -1);

    /* Larger than a chunk: a chunk of its own, 2 MiB rounded. */
    big = qv_arena_alloc(a, big_size);
    CU_ASSERT_PTR_NOT_NULL_FATAL(big);
    CU_ASSERT_EQUAL((uintptr_t)big % 64, 0);
    CU_ASSERT(all_zero(big, big_size));
    memset(big, 0xab, big_size);
    used += big_size;
    qv_arena_stats(a, &st);
    CU_ASSERT_EQUAL(st.bytes_used, used);
    CU_ASSERT_EQUAL(st.bytes_mapped, 2 * MIB + 6 * MIB);
    CU_ASSERT_EQUAL(st.chunks_hugetlb + st.chunks_thp + st.chunks_plain, 2);
    /* Accounted under QV_MEM_ARENA: each chunk, plus the arena itself. */
    CU_ASSERT_EQUAL(live_blocks(QV_MEM_ARENA) - arena_blocks0, 2 + 1);
    CU_ASSERT(live_bytes(QV_MEM_ARENA) - arena0 >= (int64_t)st.bytes_mapped);
    CU_ASSERT(live_bytes(QV_MEM_ARENA) - arena0 < (int64_t)st.bytes_mapped + 4096);

    /* A small block after it still comes from the first chunk. */
    CU_ASSERT_PTR_NOT_NULL(qv_arena_alloc(a, 128));
    qv_arena_stats(a, &st);
    CU_ASSERT_EQUAL(st.bytes_mapped, 8 * MIB);

    /* Filling past the first chunk maps another ordinary chunk: about
     * 115 KiB are used, so one MiB fits and the second does not. */
    for (i = 0; i < 2; i++)
        CU_ASSERT_PTR_NOT_NULL(qv_arena_alloc(a, MIB));
    qv_arena_stats(a, &st);
    CU_ASSERT_EQUAL(st.chunks_hugetlb + st.chunks_thp + st.chunks_plain, 3);

    qv_arena_free(a);
    qv_arena_free(NULL);
    CU_ASSERT_EQUAL(live_bytes(QV_MEM_ARENA), arena0);
}

static void test_arena_defaults_and_modes(void)
{
    struct qv_arena_stats st;
    struct qv_arena *a;
    struct qv_arena_opts o = { 0, -1, QV_HUGE_OFF };
    char *thp = slurp("/sys/kernel/mm/transparent_hugepage/enabled");
    void *p;

    /* opts NULL: 64 MiB chunks, AUTO. */
    a = qv_arena_create(NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    p = qv_arena_alloc(a, 1000);
    CU_ASSERT_PTR_NOT_NULL(p);
    qv_arena_stats(a, &st);
    CU_ASSERT_EQUAL(st.bytes_mapped, 64 * MIB);
    qv_arena_free(a);

    /* OFF: plain pages only. */
    a = qv_arena_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT_PTR_NOT_NULL(qv_arena_alloc(a, 100));
    qv_arena_stats(a, &st);
    CU_ASSERT_EQUAL(st.chunks_plain, 1);
    CU_ASSERT_EQUAL(st.chunks_thp + st.chunks_hugetlb, 0);
    qv_arena_free(a);

    /* THP: never hugetlb; THP where the kernel offers it. */
    o.hugepages = QV_HUGE_THP;
    o.chunk_size = 3 * MIB;                     /* rounds to 4 MiB */
    a = qv_arena_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT_PTR_NOT_NULL(qv_arena_alloc(a, 100));
    qv_arena_stats(a, &st);
    CU_ASSERT_EQUAL(st.bytes_mapped, 4 * MIB);
    CU_ASSERT_EQUAL(st.chunks_hugetlb, 0);
    if (thp != NULL && strstr(thp, "[never]") == NULL)
        CU_ASSERT_EQUAL(st.chunks_thp, 1);
    qv_arena_free(a);
    free(thp);

    CU_ASSERT_EQUAL(qv_huge_mode_parse("auto"), QV_HUGE_AUTO);
    CU_ASSERT_EQUAL(qv_huge_mode_parse("off"), QV_HUGE_OFF);
    CU_ASSERT_EQUAL(qv_huge_mode_parse("on"), QV_HUGE_ON);
    CU_ASSERT_EQUAL(qv_huge_mode_parse("thp"), QV_HUGE_THP);
    CU_ASSERT_EQUAL(qv_huge_mode_parse("huge"), -1);
    CU_ASSERT_EQUAL(qv_huge_mode_parse(NULL), -1);
}

static void test_arena_hugepages_on(void)
{
    struct qv_arena_opts o = { 2 * MIB, -1, QV_HUGE_ON };
    long nr = read_long_file("/proc/sys/vm/nr_hugepages");
    long over = read_long_file("/proc/sys/vm/nr_overcommit_hugepages");
    struct qv_arena_stats st;
    struct qv_arena *a;
    void *p;

    a = qv_arena_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    qv_clearerr();
    p = qv_arena_alloc(a, 4096);
    qv_arena_stats(a, &st);
    if (nr == 0 && over <= 0) {
        CU_ASSERT_PTR_NULL(p);
        CU_ASSERT_EQUAL(qv_errno, QV_ENOTSUP);
        CU_ASSERT(msg_has("nr_hugepages"));
        CU_ASSERT(msg_has("hugepages = auto"));
        CU_ASSERT_EQUAL(st.bytes_mapped, 0);
    } else {
        fprintf(stderr, "\n  (nr_hugepages = %ld: ON mode may succeed; "
                "not asserting the ENOTSUP case)\n", nr);
        if (p != NULL)
            CU_ASSERT_EQUAL(st.chunks_hugetlb, 1);
    }
    qv_arena_free(a);

    /* AUTO always gets memory, of some kind. */
    o.hugepages = QV_HUGE_AUTO;
    a = qv_arena_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    p = qv_arena_alloc(a, 4096);
    CU_ASSERT_PTR_NOT_NULL(p);
    qv_arena_stats(a, &st);
    CU_ASSERT_EQUAL(st.chunks_hugetlb + st.chunks_thp + st.chunks_plain, 1);
    if (nr == 0 && over <= 0)
        CU_ASSERT_EQUAL(st.chunks_hugetlb, 0);
    qv_arena_free(a);
}

static void test_arena_numa(void)
{
    struct qv_arena_opts o = { 2 * MIB, 0, QV_HUGE_OFF };
    struct qv_arena_stats st;
    struct qv_arena *a;
    unsigned char *p;

    a = qv_arena_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    p = qv_arena_alloc(a, 8192);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    memset(p, 1, 8192);
    qv_arena_stats(a, &st);
    CU_ASSERT_EQUAL(st.numa_node, st.numa_available ? 0 : -1);
    qv_arena_free(a);

    o.numa_node = 1023;      /* beyond any node of a test machine */
    qv_clearerr();
    CU_ASSERT_PTR_NULL(qv_arena_create(&o));
    CU_ASSERT_EQUAL(qv_errno, QV_EINVAL);
    CU_ASSERT(msg_has("numa_node = 1023"));
    o.numa_node = -2;
    CU_ASSERT_PTR_NULL(qv_arena_create(&o));
    CU_ASSERT_EQUAL(qv_errno, QV_EINVAL);
}

static void test_arena_fail_injection(void)
{
    struct qv_arena_opts o = { 2 * MIB, -1, QV_HUGE_AUTO };
    int64_t arena0 = live_bytes(QV_MEM_ARENA);
    uint64_t f0 = failures(QV_MEM_ARENA);
    struct qv_arena_stats st;
    struct qv_arena *a;

    qv_alloc_fail_after(0);                  /* the arena struct itself */
    CU_ASSERT_PTR_NULL(qv_arena_create(&o));
    CU_ASSERT_EQUAL(qv_errno, QV_ENOMEM);

    a = qv_arena_create(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    qv_alloc_fail_after(0);                  /* the first chunk mapping */
    qv_clearerr();
    CU_ASSERT_PTR_NULL(qv_arena_alloc(a, 100));
    CU_ASSERT_EQUAL(qv_errno, QV_ENOMEM);
    CU_ASSERT(failures(QV_MEM_ARENA) >= f0 + 2);
    qv_arena_stats(a, &st);
    CU_ASSERT_EQUAL(st.bytes_mapped, 0);
    CU_ASSERT_EQUAL(st.bytes_used, 0);
    /* The arena is still usable. */
    CU_ASSERT_PTR_NOT_NULL(qv_arena_alloc(a, 100));
    /* And a large block's own chunk fails cleanly too. */
    qv_alloc_fail_after(0);
    CU_ASSERT_PTR_NULL(qv_arena_alloc(a, 3 * MIB));
    CU_ASSERT_EQUAL(qv_errno, QV_ENOMEM);
    qv_arena_stats(a, &st);
    CU_ASSERT_EQUAL(st.bytes_mapped, 2 * MIB);
    CU_ASSERT_EQUAL(st.bytes_used, 100);
    qv_arena_free(a);
    CU_ASSERT_EQUAL(live_bytes(QV_MEM_ARENA), arena0);
}

static void test_vmem_map(void)
{
    enum qv_page_kind kind = QV_PAGES_HUGETLB;
    unsigned char *p;

    p = qv_vmem_map(1, QV_HUGE_OFF, -1, &kind);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    CU_ASSERT_EQUAL(kind, QV_PAGES_PLAIN);
    CU_ASSERT(all_zero(p, 2 * MIB));
    p[0] = 1;
    p[2 * MIB - 1] = 1;                       /* rounded up to 2 MiB */
    qv_vmem_unmap(p, 1);

    p = qv_vmem_map(3 * MIB, QV_HUGE_THP, -1, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    CU_ASSERT_EQUAL((uintptr_t)p % (2 * MIB), 0);
    p[4 * MIB - 1] = 1;
    qv_vmem_unmap(p, 3 * MIB);
    qv_vmem_unmap(NULL, 0);

    qv_clearerr();
    CU_ASSERT_PTR_NULL(qv_vmem_map(0, QV_HUGE_OFF, -1, NULL));
    CU_ASSERT_EQUAL(qv_errno, QV_EINVAL);
}

/* ---- config ------------------------------------------------------------- */

static const char valid_conf[] =
    "# a comment\n"                                 /* 1 */
    "[log]\n"                                       /* 2 */
    "level = debug\n"                               /* 3 */
    "\n"                                            /* 4 */
    "[simd]\n"                                      /* 5 */
    "level=avx2\n"                                  /* 6 */
    "[memory]\n"                                    /* 7 */
    "  hugepages = thp\n"                           /* 8 */
    "  numa_node = 3\n"                             /* 9 */
    "  arena_chunk = 128M   ; inline comment\n"     /* 10 */
    "[workers]\r\n"                                 /* 11 */
    "threads = 12\r\n"                              /* 12 */
    "; another comment\n"                           /* 13 */
    "pin = off\n"                                   /* 14 */
    "[flat]\n"                                      /* 15 */
    "segment_capacity = 1024\n";                    /* 16 */

static void test_config_valid(void)
{
    int64_t c0 = live_blocks(QV_MEM_CONFIG);
    struct qv_config *cfg = qv_config_parse(valid_conf, "t.conf");

    if (cfg == NULL)
        fprintf(stderr, "\n  %s\n", qv_errmsg());
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    CU_ASSERT_EQUAL(qv_config_enum(cfg, "log", "level"), QV_LOG_DEBUG);
    CU_ASSERT_STRING_EQUAL(qv_config_string(cfg, "log", "level"), "debug");
    CU_ASSERT_EQUAL(qv_config_enum(cfg, "simd", "level"), 2);
    CU_ASSERT_EQUAL(qv_config_enum(cfg, "memory", "hugepages"), QV_HUGE_THP);
    CU_ASSERT_EQUAL(qv_config_int(cfg, "memory", "numa_node"), 3);
    CU_ASSERT_EQUAL(qv_config_size(cfg, "memory", "arena_chunk"), 128 * MIB);
    CU_ASSERT_EQUAL(qv_config_int(cfg, "workers", "threads"), 12);
    CU_ASSERT_FALSE(qv_config_bool(cfg, "workers", "pin"));
    CU_ASSERT_EQUAL(qv_config_int(cfg, "flat", "segment_capacity"), 1024);

    CU_ASSERT_STRING_EQUAL(qv_config_origin(cfg, "log", "level"), "t.conf:3");
    CU_ASSERT_STRING_EQUAL(qv_config_origin(cfg, "simd", "level"), "t.conf:6");
    CU_ASSERT_STRING_EQUAL(qv_config_origin(cfg, "memory", "hugepages"), "t.conf:8");
    CU_ASSERT_STRING_EQUAL(qv_config_origin(cfg, "memory", "arena_chunk"), "t.conf:10");
    CU_ASSERT_STRING_EQUAL(qv_config_origin(cfg, "workers", "threads"), "t.conf:12");
    CU_ASSERT_STRING_EQUAL(qv_config_origin(cfg, "workers", "pin"), "t.conf:14");
    CU_ASSERT_STRING_EQUAL(qv_config_origin(cfg, "flat", "segment_capacity"), "t.conf:16");
    qv_config_free(cfg);
    qv_config_free(NULL);
    CU_ASSERT_EQUAL(live_blocks(QV_MEM_CONFIG), c0);
}

static void check_defaults(const struct qv_config *cfg)
{
    CU_ASSERT_EQUAL(qv_config_enum(cfg, "log", "level"), QV_LOG_INFO);
    CU_ASSERT_EQUAL(qv_config_enum(cfg, "simd", "level"), 0);
    CU_ASSERT_STRING_EQUAL(qv_config_string(cfg, "simd", "level"), "auto");
    CU_ASSERT_EQUAL(qv_config_enum(cfg, "memory", "hugepages"), QV_HUGE_AUTO);
    CU_ASSERT_EQUAL(qv_config_int(cfg, "memory", "numa_node"), -1);
    CU_ASSERT_EQUAL(qv_config_size(cfg, "memory", "arena_chunk"), 64 * MIB);
    CU_ASSERT_EQUAL(qv_config_int(cfg, "workers", "threads"), 0);
    CU_ASSERT_TRUE(qv_config_bool(cfg, "workers", "pin"));
    CU_ASSERT_EQUAL(qv_config_int(cfg, "flat", "segment_capacity"), 65536);
}

static void test_config_defaults(void)
{
    int64_t c0 = live_blocks(QV_MEM_CONFIG);
    struct qv_config *cfg;

    cfg = qv_config_defaults();
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    check_defaults(cfg);
    CU_ASSERT_STRING_EQUAL(qv_config_origin(cfg, "workers", "threads"), "default");
    qv_config_free(cfg);

    /* Absent keys take their defaults; present ones keep their origin. */
    cfg = qv_config_parse("# nothing\n\n[workers]\npin = yes\n", "e.conf");
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    check_defaults(cfg);
    CU_ASSERT_STRING_EQUAL(qv_config_origin(cfg, "workers", "pin"), "e.conf:4");
    CU_ASSERT_STRING_EQUAL(qv_config_origin(cfg, "log", "level"), "default");
    qv_config_free(cfg);

    cfg = qv_config_parse("", "empty.conf");
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    check_defaults(cfg);
    qv_config_free(cfg);
    CU_ASSERT_EQUAL(live_blocks(QV_MEM_CONFIG), c0);
}

/* Parse text; it must fail with QV_ECONFIG and a message holding every
 * string in want (NULL-terminated). */
static void expect_conf_error(const char *text, const char *const *want)
{
    int64_t c0 = live_blocks(QV_MEM_CONFIG);
    struct qv_config *cfg;

    qv_clearerr();
    cfg = qv_config_parse(text, "t.conf");
    CU_ASSERT_PTR_NULL(cfg);
    CU_ASSERT_EQUAL(qv_errno, QV_ECONFIG);
    for (; *want != NULL; want++)
        CU_ASSERT(msg_has(*want));
    qv_config_free(cfg);
    CU_ASSERT_EQUAL(live_blocks(QV_MEM_CONFIG), c0);
}

#define EXPECT_CONF_ERROR(text, ...) do { \
        static const char *const want_[] = { __VA_ARGS__, NULL }; \
        expect_conf_error((text), want_); \
    } while (0)

static void test_config_errors(void)
{
    char longline[400];

    EXPECT_CONF_ERROR("[log]\nlevel = info\n[workers]\nthread = 4\n",
                      "t.conf:4:", "unknown key [workers] thread",
                      "known keys in [workers]: threads, pin");
    EXPECT_CONF_ERROR("[log]\nlevel = info\n[bogus]\nx = 1\n",
                      "t.conf:3:", "unknown section [bogus]",
                      "known sections: log, simd, memory, workers, flat");
    EXPECT_CONF_ERROR("[log]\n[nothing_here]\n",
                      "t.conf:2:", "unknown section [nothing_here]");
    EXPECT_CONF_ERROR("level = info\n",
                      "t.conf:1:", "level", "outside any section",
                      "log, simd, memory, workers, flat");
    EXPECT_CONF_ERROR("[workers]\nthreads = four\n",
                      "t.conf:2:", "[workers] threads = four",
                      "expected an integer in 0..1024");
    EXPECT_CONF_ERROR("[workers]\nthreads = 12abc\n",
                      "t.conf:2:", "[workers] threads = 12abc", "0..1024");
    EXPECT_CONF_ERROR("[workers]\n\nthreads = 2000\n",
                      "t.conf:3:", "[workers] threads = 2000",
                      "expected an integer in 0..1024");
    EXPECT_CONF_ERROR("[memory]\nnuma_node = -2\n",
                      "t.conf:2:", "[memory] numa_node = -2",
                      "expected an integer in -1..1023");
    EXPECT_CONF_ERROR("[workers]\npin = maybe\n",
                      "t.conf:2:", "[workers] pin = maybe",
                      "true, false, yes, no, on, off, 1 or 0");
    EXPECT_CONF_ERROR("[simd]\nlevel = avx9\n",
                      "t.conf:2:", "[simd] level = avx9",
                      "expected one of auto, ref, avx2, avx512");
    EXPECT_CONF_ERROR("[log]\nlevel = loud\n",
                      "t.conf:2:", "[log] level = loud",
                      "expected one of error, warn, info, debug");
    EXPECT_CONF_ERROR("[memory]\nhugepages = always\n",
                      "t.conf:2:", "expected one of auto, off, on, thp");
    EXPECT_CONF_ERROR("[memory]\narena_chunk = 64X\n",
                      "t.conf:2:", "[memory] arena_chunk = 64X",
                      "expected a size in 2M..64G", "K, M or G");
    EXPECT_CONF_ERROR("[memory]\narena_chunk = 1M\n",
                      "t.conf:2:", "[memory] arena_chunk = 1M", "2M..64G");
    EXPECT_CONF_ERROR("[memory]\narena_chunk = 65G\n",
                      "t.conf:2:", "2M..64G");
    EXPECT_CONF_ERROR("[memory]\narena_chunk = -4M\n",
                      "t.conf:2:", "2M..64G");
    EXPECT_CONF_ERROR("[flat]\nsegment_capacity = 100\n",
                      "t.conf:2:", "[flat] segment_capacity = 100",
                      "multiple of 16", "96 or 112");
    EXPECT_CONF_ERROR("[flat]\nsegment_capacity = 8\n",
                      "t.conf:2:", "[flat] segment_capacity = 8",
                      "expected an integer in 16..16777216");
    EXPECT_CONF_ERROR("[workers]\nthreads = 1\n\npin = true\nthreads = 2\n",
                      "t.conf:5:", "duplicate key [workers] threads",
                      "t.conf:2", "remove one");
    EXPECT_CONF_ERROR("[workers]\nthreads = 1\n[log]\n[workers]\nthreads = 1\n",
                      "t.conf:5:", "duplicate key [workers] threads", "t.conf:2");
    EXPECT_CONF_ERROR("[log\nlevel = info\n",
                      "t.conf:1:", "syntax error", "closing ]");
    EXPECT_CONF_ERROR("[log]\nlevel = info\njust some words\n",
                      "t.conf:3:", "syntax error", "key = value");
    /* The first error wins, whoever finds it. */
    EXPECT_CONF_ERROR("[log]\nlevel = x\n[simd]\nlevel = y\n",
                      "t.conf:2:", "[log] level = x");
    EXPECT_CONF_ERROR("[log]\njunk\n[simd]\nlevel = y\n",
                      "t.conf:2:", "syntax error");
    EXPECT_CONF_ERROR("[log]\nlevel = x\njunk\n",
                      "t.conf:2:", "[log] level = x");

    memset(longline, 'a', sizeof(longline) - 1);
    longline[sizeof(longline) - 1] = '\0';
    {
        char text[512];

        snprintf(text, sizeof(text), "[log]\n# %s\nlevel = info\n", longline);
        EXPECT_CONF_ERROR(text, "t.conf:2:", "line is", "at most");
    }
}

static void test_config_load_file(void)
{
    char path[128], want[160];
    struct qv_config *cfg;

    tmp_path(path, sizeof(path), "load.conf");
    write_bytes(path, valid_conf, strlen(valid_conf));
    cfg = qv_config_load(path);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    snprintf(want, sizeof(want), "%s:12", path);
    CU_ASSERT_STRING_EQUAL(qv_config_origin(cfg, "workers", "threads"), want);
    CU_ASSERT_EQUAL(qv_config_int(cfg, "workers", "threads"), 12);
    qv_config_free(cfg);

    /* Errors name the path. */
    write_bytes(path, "[simd]\nlevel = avx9\n", 20);
    qv_clearerr();
    CU_ASSERT_PTR_NULL(qv_config_load(path));
    CU_ASSERT_EQUAL(qv_errno, QV_ECONFIG);
    snprintf(want, sizeof(want), "%s:2: [simd] level = avx9", path);
    CU_ASSERT(msg_has(want));
    unlink(path);

    tmp_path(path, sizeof(path), "missing.conf");
    qv_clearerr();
    CU_ASSERT_PTR_NULL(qv_config_load(path));
    CU_ASSERT_EQUAL(qv_errno, QV_ENOENT);
    CU_ASSERT(msg_has(path));

    /* A folder is not a configuration file. */
    qv_clearerr();
    CU_ASSERT_PTR_NULL(qv_config_load(tmpdir));
    CU_ASSERT_EQUAL(qv_errno, QV_EIO);
    CU_ASSERT(msg_has(tmpdir));
}

/* qv_config_format: every type as text; equal texts = equal values. */
static void test_config_format(void)
{
    struct qv_config *a = qv_config_parse("[workers]\nthreads = 3\npin = no\n"
                                          "[memory]\narena_chunk = 4M\n"
                                          "[server]\ncompact_ratio = 0.25\n"
                                          "[log]\nlevel = debug\n", "f.conf");
    struct qv_config *b = qv_config_defaults();
    char buf[64];

    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    qv_config_format(a, "workers", "threads", buf, sizeof buf);
    CU_ASSERT_STRING_EQUAL(buf, "3");
    qv_config_format(a, "workers", "pin", buf, sizeof buf);
    CU_ASSERT_STRING_EQUAL(buf, "false");
    qv_config_format(b, "workers", "pin", buf, sizeof buf);
    CU_ASSERT_STRING_EQUAL(buf, "true");
    qv_config_format(a, "memory", "arena_chunk", buf, sizeof buf);
    CU_ASSERT_STRING_EQUAL(buf, "4194304");
    qv_config_format(a, "server", "compact_ratio", buf, sizeof buf);
    CU_ASSERT_EQUAL(strtod(buf, NULL), 0.25);
    qv_config_format(a, "log", "level", buf, sizeof buf);
    CU_ASSERT_STRING_EQUAL(buf, "debug");
    qv_config_format(b, "log", "level", buf, sizeof buf);
    CU_ASSERT_STRING_EQUAL(buf, "info");
    /* truncated, still terminated */
    CU_ASSERT_EQUAL(qv_config_format(a, "memory", "arena_chunk", buf, 3), 7);
    CU_ASSERT_STRING_EQUAL(buf, "41");
    qv_config_free(a);
    qv_config_free(b);
}

static void test_config_set(void)
{
    int64_t c0 = live_blocks(QV_MEM_CONFIG);
    struct qv_config *cfg = qv_config_parse("[workers]\nthreads = 3\n", "s.conf");

    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    CU_ASSERT_EQUAL(qv_config_set(cfg, "workers", "threads", "8"), 0);
    CU_ASSERT_EQUAL(qv_config_int(cfg, "workers", "threads"), 8);
    CU_ASSERT_STRING_EQUAL(qv_config_origin(cfg, "workers", "threads"), "override");

    /* Refused values leave the old one in place. */
    qv_clearerr();
    CU_ASSERT_EQUAL(qv_config_set(cfg, "workers", "threads", "-5"), QV_ECONFIG);
    CU_ASSERT(msg_has("[workers] threads = -5"));
    CU_ASSERT(msg_has("0..1024"));
    CU_ASSERT_EQUAL(qv_config_int(cfg, "workers", "threads"), 8);

    CU_ASSERT_EQUAL(qv_config_set(cfg, "workers", "threadz", "1"), QV_ECONFIG);
    CU_ASSERT(msg_has("unknown key [workers] threadz"));
    CU_ASSERT(msg_has("threads, pin"));
    CU_ASSERT_EQUAL(qv_config_set(cfg, "gpu", "id", "1"), QV_ECONFIG);
    CU_ASSERT(msg_has("unknown section [gpu]"));

    CU_ASSERT_EQUAL(qv_config_set(cfg, "simd", "level", "ref"), 0);
    CU_ASSERT_EQUAL(qv_config_enum(cfg, "simd", "level"), 1);
    CU_ASSERT_STRING_EQUAL(qv_config_string(cfg, "simd", "level"), "ref");
    CU_ASSERT_EQUAL(qv_config_set(cfg, "memory", "arena_chunk", "1G"), 0);
    CU_ASSERT_EQUAL(qv_config_size(cfg, "memory", "arena_chunk"), (uint64_t)1 << 30);
    CU_ASSERT_EQUAL(qv_config_set(cfg, "flat", "segment_capacity", "17"), QV_ECONFIG);
    CU_ASSERT(msg_has("multiple of 16"));

    /* ENOMEM keeps the old value. */
    qv_alloc_fail_after(0);
    CU_ASSERT_EQUAL(qv_config_set(cfg, "workers", "threads", "9"), QV_ENOMEM);
    CU_ASSERT_EQUAL(qv_config_int(cfg, "workers", "threads"), 8);
    CU_ASSERT_STRING_EQUAL(qv_config_origin(cfg, "workers", "threads"), "override");
    qv_alloc_fail_after(-1);

    qv_config_free(cfg);
    CU_ASSERT_EQUAL(live_blocks(QV_MEM_CONFIG), c0);
}

/* Run fn in a child; return nonzero when it died of SIGABRT. */
static int child_aborts(void (*fn)(void))
{
    pid_t pid;
    int status;

    fflush(NULL);
    pid = fork();
    if (pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);

        if (devnull >= 0)
            dup2(devnull, 2);
        fn();
        _exit(0);
    }
    if (pid < 0 || waitpid(pid, &status, 0) != pid)
        return 0;
    return WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT;
}

static void get_unknown_key(void)
{
    struct qv_config *cfg = qv_config_defaults();

    (void)qv_config_int(cfg, "workers", "nope");
}

static void get_wrong_type(void)
{
    struct qv_config *cfg = qv_config_defaults();

    (void)qv_config_int(cfg, "log", "level");
}

static void test_config_getter_abort(void)
{
    CU_ASSERT_TRUE(child_aborts(get_unknown_key));
    CU_ASSERT_TRUE(child_aborts(get_wrong_type));
}

static const char *source_root(void)
{
    const char *r = getenv("QV_SOURCE_ROOT");

    return r && *r ? r : ".";
}

/* The text of section [sec] in a conf file: from after its header up to
 * the next header.  Returns a malloc'd copy, or NULL. */
static char *section_text(const char *text, const char *sec)
{
    char hdr[64];
    const char *start, *end;
    char *out;

    snprintf(hdr, sizeof(hdr), "\n[%s]\n", sec);
    start = strstr(text, hdr);
    if (start == NULL)
        return NULL;
    start += strlen(hdr) - 1;
    end = strstr(start, "\n[");
    if (end == NULL)
        end = start + strlen(start);
    out = malloc((size_t)(end - start) + 1);
    memcpy(out, start, (size_t)(end - start));
    out[end - start] = '\0';
    return out;
}

static void test_config_shipped_file(void)
{
    const struct qv_conf_key *k;
    struct qv_config *cfg, *def;
    char path[4200], line[256], dflt[128];
    char *text;

    snprintf(path, sizeof(path), "%s/conf/quiver.conf", source_root());
    cfg = qv_config_load(path);
    if (cfg == NULL)
        fprintf(stderr, "\n  %s\n", qv_errmsg());
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    def = qv_config_defaults();
    CU_ASSERT_PTR_NOT_NULL_FATAL(def);
    text = slurp(path);
    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "single-node embedded default"));

    for (k = qv_conf_schema; k->section != NULL; k++) {
        char *sec = section_text(text, k->section);
        const char *at;

        CU_ASSERT_PTR_NOT_NULL(sec);
        if (sec == NULL) {
            fprintf(stderr, "\n  %s lacks section [%s]\n", path, k->section);
            continue;
        }
        /* "key = default" on a line of its own, in the right section,
         * after a comment that states the default. */
        snprintf(line, sizeof(line), "\n%s = %s\n", k->key, k->def);
        at = strstr(sec, line);
        CU_ASSERT_PTR_NOT_NULL(at);
        if (at == NULL)
            fprintf(stderr, "\n  [%s] lacks \"%s = %s\"\n", k->section,
                    k->key, k->def);
        snprintf(dflt, sizeof(dflt), "Default: %s.\n%s = ", k->def, k->key);
        CU_ASSERT_PTR_NOT_NULL(strstr(sec, dflt));
        /* The file's value is the schema's default, read from the file. */
        CU_ASSERT_STRING_NOT_EQUAL(qv_config_origin(cfg, k->section, k->key),
                                   "default");
        switch (k->type) {
        case QV_CONF_INT:
            CU_ASSERT_EQUAL(qv_config_int(cfg, k->section, k->key),
                            qv_config_int(def, k->section, k->key));
            break;
        case QV_CONF_SIZE:
            CU_ASSERT_EQUAL(qv_config_size(cfg, k->section, k->key),
                            qv_config_size(def, k->section, k->key));
            break;
        case QV_CONF_DOUBLE:
            CU_ASSERT_EQUAL(qv_config_double(cfg, k->section, k->key),
                            qv_config_double(def, k->section, k->key));
            break;
        case QV_CONF_BOOL:
            CU_ASSERT_EQUAL(qv_config_bool(cfg, k->section, k->key),
                            qv_config_bool(def, k->section, k->key));
            break;
        case QV_CONF_STRING:
            CU_ASSERT_STRING_EQUAL(qv_config_string(cfg, k->section, k->key),
                                   qv_config_string(def, k->section, k->key));
            break;
        case QV_CONF_ENUM:
            CU_ASSERT_EQUAL(qv_config_enum(cfg, k->section, k->key),
                            qv_config_enum(def, k->section, k->key));
            break;
        }
        free(sec);
    }
    free(text);
    qv_config_free(def);
    qv_config_free(cfg);
}

static void test_config_enomem(void)
{
    int64_t c0 = live_blocks(QV_MEM_CONFIG), b0 = live_bytes(QV_MEM_CONFIG);
    char path[4200];
    struct qv_config *cfg = NULL;
    long n, fails = 0;

    snprintf(path, sizeof(path), "%s/conf/quiver.conf", source_root());
    for (n = 0; n < 10000; n++) {
        qv_clearerr();
        qv_alloc_fail_after(n);
        cfg = qv_config_load(path);
        qv_alloc_fail_after(-1);
        if (cfg != NULL)
            break;
        fails++;
        CU_ASSERT_EQUAL(qv_errno, QV_ENOMEM);
        CU_ASSERT_EQUAL(live_blocks(QV_MEM_CONFIG), c0);
        CU_ASSERT_EQUAL(live_bytes(QV_MEM_CONFIG), b0);
    }
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    /* buffer + config + a text and an origin per key, at the least */
    CU_ASSERT(fails >= 2 + 2 * 8);
    check_defaults(cfg);
    qv_config_free(cfg);

    for (n = 0; n < 10000; n++) {
        qv_alloc_fail_after(n);
        cfg = qv_config_parse(valid_conf, "t.conf");
        qv_alloc_fail_after(-1);
        if (cfg != NULL)
            break;
        CU_ASSERT_EQUAL(qv_errno, QV_ENOMEM);
        CU_ASSERT_EQUAL(live_blocks(QV_MEM_CONFIG), c0);
    }
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    CU_ASSERT_EQUAL(qv_config_int(cfg, "workers", "threads"), 12);
    qv_config_free(cfg);
    CU_ASSERT_EQUAL(live_blocks(QV_MEM_CONFIG), c0);
    CU_ASSERT_EQUAL(live_bytes(QV_MEM_CONFIG), b0);
}

/* ---- vecio -------------------------------------------------------------- */

static void test_vecio_roundtrip(void)
{
    enum { N = 37, D = 13 };
    static float f[N * D], back[N * D];
    static int32_t iv[N * D];
    static uint8_t bv[N * D];
    struct qv_vecfile vf;
    char path[128], tmp[140];
    size_t i;

    for (i = 0; i < N * D; i++) {
        f[i] = (float)i * 0.37f - 50.0f;
        iv[i] = (int32_t)(i * 7919) - 100000;
        bv[i] = (uint8_t)(i * 31);
    }

    tmp_path(path, sizeof(path), "a.fvecs");
    CU_ASSERT_EQUAL_FATAL(qv_vecfile_write(path, QV_VEC_FVECS, D, N, f), 0);
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    CU_ASSERT_NOT_EQUAL(access(tmp, F_OK), 0);
    CU_ASSERT_EQUAL_FATAL(qv_vecfile_open(&vf, path, QV_VEC_AUTO), 0);
    CU_ASSERT_EQUAL(vf.kind, QV_VEC_FVECS);
    CU_ASSERT_EQUAL(vf.n, N);
    CU_ASSERT_EQUAL(vf.dim, D);
    CU_ASSERT_EQUAL(vf.elem_size, 4);
    CU_ASSERT_EQUAL(vf.stride, 4 + 4 * D);
    CU_ASSERT_EQUAL(vf.map_size, N * (4 + 4 * D));
    for (i = 0; i < N; i++)
        CU_ASSERT_EQUAL(memcmp(qv_vecfile_row(&vf, i), f + i * D, 4 * D), 0);
    CU_ASSERT_EQUAL(qv_vecfile_read_f32(&vf, 0, N, back), 0);
    CU_ASSERT_EQUAL(memcmp(back, f, sizeof(f)), 0);
    CU_ASSERT_EQUAL(qv_vecfile_read_f32(&vf, 5, 3, back), 0);
    CU_ASSERT_EQUAL(memcmp(back, f + 5 * D, 3 * D * sizeof(float)), 0);
    qv_vecfile_close(&vf);
    qv_vecfile_close(&vf);                  /* twice is safe */
    CU_ASSERT_PTR_NULL(vf.map);

    /* Overwriting replaces the file whole. */
    CU_ASSERT_EQUAL_FATAL(qv_vecfile_write(path, QV_VEC_AUTO, D, 2, f), 0);
    CU_ASSERT_EQUAL_FATAL(qv_vecfile_open(&vf, path, QV_VEC_FVECS), 0);
    CU_ASSERT_EQUAL(vf.n, 2);
    qv_vecfile_close(&vf);
    unlink(path);

    tmp_path(path, sizeof(path), "a.ivecs");
    CU_ASSERT_EQUAL_FATAL(qv_vecfile_write(path, QV_VEC_IVECS, D, N, iv), 0);
    CU_ASSERT_EQUAL_FATAL(qv_vecfile_open(&vf, path, QV_VEC_AUTO), 0);
    CU_ASSERT_EQUAL(vf.kind, QV_VEC_IVECS);
    CU_ASSERT_EQUAL(vf.n, N);
    CU_ASSERT_EQUAL(vf.dim, D);
    for (i = 0; i < N; i++)
        CU_ASSERT_EQUAL(memcmp(qv_vecfile_row(&vf, i), iv + i * D, 4 * D), 0);
    CU_ASSERT_EQUAL(qv_vecfile_read_f32(&vf, 0, N, back), 0);
    for (i = 0; i < N * D; i++)
        CU_ASSERT_EQUAL_FATAL(back[i], (float)iv[i]);
    qv_vecfile_close(&vf);
    unlink(path);

    tmp_path(path, sizeof(path), "a.bvecs");
    CU_ASSERT_EQUAL_FATAL(qv_vecfile_write(path, QV_VEC_BVECS, D, N, bv), 0);
    CU_ASSERT_EQUAL_FATAL(qv_vecfile_open(&vf, path, QV_VEC_AUTO), 0);
    CU_ASSERT_EQUAL(vf.kind, QV_VEC_BVECS);
    CU_ASSERT_EQUAL(vf.elem_size, 1);
    CU_ASSERT_EQUAL(vf.stride, 4 + D);
    CU_ASSERT_EQUAL(vf.n, N);
    for (i = 0; i < N; i++)
        CU_ASSERT_EQUAL(memcmp(qv_vecfile_row(&vf, i), bv + i * D, D), 0);
    CU_ASSERT_EQUAL(qv_vecfile_read_f32(&vf, 0, N, back), 0);
    for (i = 0; i < N * D; i++)
        CU_ASSERT_EQUAL_FATAL(back[i], (float)bv[i]);
    qv_vecfile_close(&vf);
    unlink(path);

    /* Explicit kind overrides an unknown extension. */
    tmp_path(path, sizeof(path), "raw.bin");
    CU_ASSERT_EQUAL_FATAL(qv_vecfile_write(path, QV_VEC_FVECS, D, 4, f), 0);
    CU_ASSERT_EQUAL_FATAL(qv_vecfile_open(&vf, path, QV_VEC_FVECS), 0);
    CU_ASSERT_EQUAL(vf.n, 4);
    qv_vecfile_close(&vf);
    unlink(path);
}

static void test_vecio_empty(void)
{
    struct qv_vecfile vf;
    char path[128];

    tmp_path(path, sizeof(path), "empty.fvecs");
    CU_ASSERT_EQUAL_FATAL(qv_vecfile_write(path, QV_VEC_FVECS, 8, 0, NULL), 0);
    CU_ASSERT_EQUAL_FATAL(qv_vecfile_open(&vf, path, QV_VEC_AUTO), 0);
    CU_ASSERT_EQUAL(vf.n, 0);
    CU_ASSERT_EQUAL(vf.dim, 0);
    CU_ASSERT_PTR_NULL(vf.map);
    CU_ASSERT_EQUAL(qv_vecfile_read_f32(&vf, 0, 0, NULL), 0);
    CU_ASSERT_EQUAL(qv_vecfile_read_f32(&vf, 0, 1, NULL), QV_ERANGE);
    qv_vecfile_close(&vf);
    unlink(path);
}

/* Open path; it must fail with code and a message holding path and want. */
static void expect_vec_error(const char *path, enum qv_vec_kind kind,
                             int code, const char *want)
{
    struct qv_vecfile vf;

    qv_clearerr();
    CU_ASSERT_EQUAL(qv_vecfile_open(&vf, path, kind), code);
    CU_ASSERT_EQUAL(qv_errno, code);
    CU_ASSERT(msg_has(path));
    if (want != NULL)
        CU_ASSERT(msg_has(want));
    CU_ASSERT_PTR_NULL(vf.map);
    CU_ASSERT_EQUAL(vf.n, 0);
    qv_vecfile_close(&vf);
}

static void test_vecio_bad_files(void)
{
    static float f[20 * 128];
    int32_t rec[16];
    char path[128];
    int fd;

    /* Truncated final record: 12 whole records of 516 bytes, then 300. */
    tmp_path(path, sizeof(path), "trunc.fvecs");
    CU_ASSERT_EQUAL_FATAL(qv_vecfile_write(path, QV_VEC_FVECS, 128, 20, f), 0);
    CU_ASSERT_EQUAL_FATAL(truncate(path, 12 * 516 + 300), 0);
    expect_vec_error(path, QV_VEC_AUTO, QV_EFORMAT,
                     "record 12 at byte 6192 is truncated: 300 of 516 bytes present");
    /* Size not a whole number of records: 3 stray bytes at the end. */
    CU_ASSERT_EQUAL_FATAL(qv_vecfile_write(path, QV_VEC_FVECS, 128, 2, f), 0);
    fd = open(path, O_WRONLY | O_APPEND);
    CU_ASSERT_EQUAL(write(fd, "abc", 3), 3);
    close(fd);
    expect_vec_error(path, QV_VEC_AUTO, QV_EFORMAT,
                     "record 2 at byte 1032 is truncated: 3 of 516");
    unlink(path);

    /* Dimensions differ between records. */
    tmp_path(path, sizeof(path), "mixed.ivecs");
    memset(rec, 0, sizeof(rec));
    rec[0] = 4;                 /* record 0: d 4, bytes 0..19 */
    rec[5] = 5;                 /* record 1 at byte 20: d 5 */
    write_bytes(path, rec, 40);
    expect_vec_error(path, QV_VEC_AUTO, QV_EFORMAT,
                     "record 1 at byte 20 has dimension 5, but record 0 has 4");
    unlink(path);

    /* d = 0, d > max, d < 0. */
    tmp_path(path, sizeof(path), "dim0.fvecs");
    rec[0] = 0;
    write_bytes(path, rec, 8);
    expect_vec_error(path, QV_VEC_AUTO, QV_EFORMAT, "dimension 0");
    rec[0] = QV_VECIO_MAX_DIM + 1;
    write_bytes(path, rec, 64);
    expect_vec_error(path, QV_VEC_AUTO, QV_EFORMAT, "dimension 65537");
    rec[0] = -3;
    write_bytes(path, rec, 64);
    expect_vec_error(path, QV_VEC_AUTO, QV_EFORMAT, "dimension -3");
    /* Too short for even a header. */
    write_bytes(path, rec, 2);
    expect_vec_error(path, QV_VEC_AUTO, QV_EFORMAT, "truncated");
    unlink(path);

    /* Missing file; unknown extension. */
    tmp_path(path, sizeof(path), "missing.fvecs");
    expect_vec_error(path, QV_VEC_AUTO, QV_ENOENT, NULL);
    tmp_path(path, sizeof(path), "data.txt");
    write_bytes(path, "hello", 5);
    expect_vec_error(path, QV_VEC_AUTO, QV_EINVAL, ".fvecs");
    unlink(path);
    /* A folder. */
    tmp_path(path, sizeof(path), "dir.fvecs");
    CU_ASSERT_EQUAL(mkdir(path, 0700), 0);
    expect_vec_error(path, QV_VEC_AUTO, QV_EIO, "not a regular file");
    rmdir(path);
}

static void test_vecio_read_range(void)
{
    static float f[10 * 4], out[11 * 4];
    struct qv_vecfile vf;
    char path[128];

    tmp_path(path, sizeof(path), "range.fvecs");
    CU_ASSERT_EQUAL_FATAL(qv_vecfile_write(path, QV_VEC_FVECS, 4, 10, f), 0);
    CU_ASSERT_EQUAL_FATAL(qv_vecfile_open(&vf, path, QV_VEC_AUTO), 0);
    CU_ASSERT_EQUAL(qv_vecfile_read_f32(&vf, 0, 10, out), 0);
    CU_ASSERT_EQUAL(qv_vecfile_read_f32(&vf, 10, 0, out), 0);
    qv_clearerr();
    CU_ASSERT_EQUAL(qv_vecfile_read_f32(&vf, 10, 1, out), QV_ERANGE);
    CU_ASSERT(msg_has(path));
    CU_ASSERT_EQUAL(qv_vecfile_read_f32(&vf, 0, 11, out), QV_ERANGE);
    CU_ASSERT_EQUAL(qv_vecfile_read_f32(&vf, 11, 0, out), QV_ERANGE);
    CU_ASSERT_EQUAL(qv_vecfile_read_f32(&vf, UINT64_MAX, 2, out), QV_ERANGE);
    CU_ASSERT_EQUAL(qv_vecfile_read_f32(&vf, 3, UINT64_MAX, out), QV_ERANGE);
    qv_vecfile_close(&vf);
    unlink(path);
}

static void test_vecio_write_errors(void)
{
    static float f[16];
    char path[128];

    tmp_path(path, sizeof(path), "w.fvecs");
    qv_clearerr();
    CU_ASSERT_EQUAL(qv_vecfile_write(path, QV_VEC_FVECS, 0, 1, f), QV_EINVAL);
    CU_ASSERT(msg_has(path));
    CU_ASSERT_EQUAL(qv_vecfile_write(path, QV_VEC_FVECS, QV_VECIO_MAX_DIM + 1, 1, f),
                    QV_EINVAL);
    CU_ASSERT_EQUAL(qv_vecfile_write(path, QV_VEC_FVECS, 4, 1, NULL), QV_EINVAL);
    tmp_path(path, sizeof(path), "w.dat");
    CU_ASSERT_EQUAL(qv_vecfile_write(path, QV_VEC_AUTO, 4, 1, f), QV_EINVAL);
    CU_ASSERT(msg_has(path));
    tmp_path(path, sizeof(path), "no/such/dir/w.fvecs");
    qv_clearerr();
    CU_ASSERT_EQUAL(qv_vecfile_write(path, QV_VEC_FVECS, 4, 1, f), QV_EIO);
    CU_ASSERT(msg_has(path));
    CU_ASSERT(access(path, F_OK) != 0);
}

static void test_vecio_siftsmall(void)
{
    const char *dir = getenv("QV_DATA_DIR");
    struct qv_vecfile vf;
    char path[4200];
    float row[128];

    if (dir == NULL || *dir == '\0') {
        fprintf(stderr, "\n  (QV_DATA_DIR unset: siftsmall not checked)\n");
        return;
    }
    snprintf(path, sizeof(path), "%s/siftsmall/base.fvecs", dir);
    if (access(path, R_OK) != 0) {
        fprintf(stderr, "\n  (%s absent: not checked)\n", path);
        return;
    }
    CU_ASSERT_EQUAL_FATAL(qv_vecfile_open(&vf, path, QV_VEC_AUTO), 0);
    CU_ASSERT_EQUAL(vf.n, 10000);
    CU_ASSERT_EQUAL(vf.dim, 128);
    CU_ASSERT_EQUAL(qv_vecfile_read_f32(&vf, 9999, 1, row), 0);
    CU_ASSERT(isfinite(row[0]) && isfinite(row[127]));
    qv_vecfile_close(&vf);
}

/* ---- main --------------------------------------------------------------- */

static int suite_init(void)
{
    strcpy(tmpdir, "/tmp/qv_test_common_XXXXXX");
    return mkdtemp(tmpdir) == NULL ? -1 : 0;
}

static int suite_cleanup(void)
{
    DIR *d = opendir(tmpdir);
    struct dirent *e;
    char path[512];

    if (d == NULL)
        return -1;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(path, sizeof(path), "%s/%s", tmpdir, e->d_name);
        if (unlink(path) != 0)
            rmdir(path);
    }
    closedir(d);
    return rmdir(tmpdir);
}

struct test_entry {
    const char *name;
    CU_TestFunc fn;
};

static const struct test_entry tests[] = {
    { "errors: qv_strerror for every code", test_strerror_all },
    { "errors: qv_seterr / qv_errmsg", test_seterr_errmsg },
    { "errors: qv_errno is thread-local", test_errno_thread_local },
    { "log: level parse and set", test_log_level_parse },
    { "log: rate limiter", test_log_rate_limit },
    { "log: line format and QV_LOG_RL", test_log_write_format },
    { "alloc: counters return to start", test_alloc_counters },
    { "alloc: tag names, qv_mem_account", test_alloc_tags_and_account },
    { "alloc: injected failures", test_alloc_fail_injection },
    { "alloc: failed realloc keeps the block", test_realloc_failure_keeps_block },
    { "alloc: two threads", test_alloc_threads },
    { "arena: alignment, zero, large block, stats", test_arena_alloc_basic },
    { "arena: defaults, OFF and THP modes", test_arena_defaults_and_modes },
    { "arena: hugepages ON without reserved pages", test_arena_hugepages_on },
    { "arena: NUMA node binding and range", test_arena_numa },
    { "arena: injected failures", test_arena_fail_injection },
    { "arena: qv_vmem_map", test_vmem_map },
    { "config: valid file, values and origins", test_config_valid },
    { "config: defaults", test_config_defaults },
    { "config: every error kind", test_config_errors },
    { "config: load from a file", test_config_load_file },
    { "config: qv_config_set", test_config_set },
    { "config: qv_config_format", test_config_format },
    { "config: getters abort on misuse", test_config_getter_abort },
    { "config: conf/quiver.conf matches the schema", test_config_shipped_file },
    { "config: ENOMEM at every allocation", test_config_enomem },
    { "vecio: write and read back f/i/bvecs", test_vecio_roundtrip },
    { "vecio: empty file", test_vecio_empty },
    { "vecio: malformed files", test_vecio_bad_files },
    { "vecio: read_f32 range", test_vecio_read_range },
    { "vecio: write errors", test_vecio_write_errors },
    { "vecio: siftsmall base", test_vecio_siftsmall },
};

int main(void)
{
    CU_pSuite suite;
    unsigned failed;
    size_t i;

    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    suite = CU_add_suite("common", suite_init, suite_cleanup);
    if (suite == NULL)
        goto fail;
    for (i = 0; i < sizeof(tests) / sizeof(tests[0]); i++)
        if (CU_add_test(suite, tests[i].name, tests[i].fn) == NULL)
            goto fail;
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    failed = CU_get_number_of_failures() + CU_get_number_of_suites_failed();
    if (CU_get_error() != CUE_SUCCESS)
        failed++;
    CU_cleanup_registry();
    return failed ? 1 : 0;

fail:
    fprintf(stderr, "CUnit setup failed: %s\n", CU_get_error_msg());
    CU_cleanup_registry();
    return 2;
}
