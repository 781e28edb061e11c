/*
 * test_wal.c - the write-ahead log: the on-disk layout is the documented
 * one (known answer); append -> reopen -> replay gives back every record
 * (random sizes 0..64 KiB, across segment rolls); after_lsn skips what a
 * snapshot covers; group commit with 8 threads gives dense unique LSNs and
 * far fewer fsyncs than appends; every sync policy appends and replays
 * (appends/s printed); crash recovery ("recover: ..." tests): a torn tail
 * cut at every byte of the final record is truncated, damage in the middle,
 * in a closed segment or in a segment header is refused with the file and
 * offset named; truncate_upto removes exactly the covered segments;
 * injected ENOSPC, EIO, short writes and a failed fdatasync give clear
 * errors and leave the file as it was; allocation failures are handled
 * without leaks; many open/close cycles.
 */
#include <CUnit/Basic.h>
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "quiver/alloc.h"
#include "quiver/crc32c.h"
#include "quiver/errors.h"
#include "quiver/log.h"
#include "quiver/wal.h"

static char root[64];
static int ndirs;
static uint8_t buf[(64 << 10) + 64];

/* ---- helpers ------------------------------------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t mix(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* The record with LSN lsn in the generated logs: its type, length (0 ..
 * maxlen) and bytes are functions of the LSN, so replay can check them. */
static uint8_t gen_type(uint64_t lsn) { return (uint8_t)(1 + lsn % 250); }
static size_t gen_len(uint64_t lsn, size_t maxlen) { return mix(lsn) % (maxlen + 1); }
static void gen_fill(uint64_t lsn, uint8_t *p, size_t len)
{
    uint64_t s = mix(lsn ^ 0x5A5A);
    for (size_t i = 0; i < len; i++)
        p[i] = (uint8_t)(s + i * 131 + (i >> 8));
}

/* Append the generated record that must get LSN lsn. */
static int append_gen(struct qv_wal *w, uint64_t lsn, size_t maxlen)
{
    size_t len = gen_len(lsn, maxlen);
    uint64_t got = 0;
    gen_fill(lsn, buf, len);
    int rc = qv_wal_append(w, gen_type(lsn), buf, len, &got);
    if (rc == 0 && got != lsn)
        return -9999;
    return rc;
}

/* Replay collector for generated logs. */
struct coll {
    size_t maxlen;
    uint64_t first, next, count;
    int bad;
    int fail_at;        /* return QV_EIO at this LSN (0: never) */
};

static int coll_fn(void *arg, uint64_t lsn, uint8_t type, const void *p, size_t len)
{
    static uint8_t want[(64 << 10) + 64];
    struct coll *c = arg;
    if (c->fail_at && lsn == (uint64_t)c->fail_at)
        return QV_EIO;
    if (c->count == 0)
        c->first = lsn;
    else if (lsn != c->next)
        c->bad++;
    c->next = lsn + 1;
    c->count++;
    if (type != gen_type(lsn) || len != gen_len(lsn, c->maxlen) || ((uintptr_t)p & 7))
        c->bad++;
    else {
        gen_fill(lsn, want, len);
        if (len && memcmp(p, want, len) != 0)
            c->bad++;
    }
    return 0;
}

static void new_dir(char *out, size_t n)
{
    snprintf(out, n, "%s/w%02d", root, ndirs++);
}

static void rm_dir(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char p[512];
    if (!d)
        return;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

/* Sorted first LSNs of the segment files in dir; returns how many. */
static int list_segs(const char *dir, uint64_t *firsts, int max)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;
    if (!d)
        return -1;
    while ((e = readdir(d)) != NULL) {
        unsigned long long v;
        char tail[16];
        if (strlen(e->d_name) == 28 &&
            sscanf(e->d_name, "wal-%20llu%15s", &v, tail) == 2 &&
            strcmp(tail, ".log") == 0 && n < max)
            firsts[n++] = v;
    }
    closedir(d);
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && firsts[j - 1] > firsts[j]; j--) {
            uint64_t t = firsts[j];
            firsts[j] = firsts[j - 1];
            firsts[j - 1] = t;
        }
    return n;
}

static int count_files(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;
    if (!d)
        return -1;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

static void seg_file(const char *dir, uint64_t first, char *out, size_t n)
{
    snprintf(out, n, "%s/wal-%020llu.log", dir, (unsigned long long)first);
}

/* Whole file into a qv_malloc'ed buffer (QV_MEM_TEST); NULL when absent. */
static uint8_t *slurp(const char *path, size_t *size)
{
    struct stat st;
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return NULL;
    fstat(fd, &st);
    uint8_t *b = qv_malloc((size_t)st.st_size + 1, QV_MEM_TEST);
    size_t got = 0;
    while (b && got < (size_t)st.st_size) {
        ssize_t k = pread(fd, b + got, (size_t)st.st_size - got, (off_t)got);
        if (k <= 0)
            break;
        got += (size_t)k;
    }
    close(fd);
    *size = got;
    return b;
}

static int spew(const char *path, const uint8_t *b, size_t n)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        return -1;
    ssize_t k = write(fd, b, n);
    close(fd);
    return k == (ssize_t)n ? 0 : -1;
}

/* Offsets of the records in a segment image (walking the length fields);
 * returns how many. */
static int rec_offsets(const uint8_t *b, size_t n, size_t *offs, int max)
{
    size_t off = QV_WAL_SEG_HDR;
    int k = 0;
    while (off + QV_WAL_REC_HDR <= n && k < max) {
        uint32_t len;
        memcpy(&len, b + off, 4);
        offs[k++] = off;
        off += QV_WAL_REC_HDR + ((len + 7u) & ~7u);
    }
    return k;
}

static struct qv_wal *open_wal(const char *dir, enum qv_wal_sync sync, uint64_t seg,
                               uint64_t after, struct coll *c)
{
    struct qv_wal_opts o;
    qv_wal_opts_default(&o);
    o.dir = dir;
    o.sync = sync;
    o.interval_ms = 5;
    if (seg)
        o.segment_bytes = seg;
    return qv_wal_open(&o, after, c ? coll_fn : NULL, c);
}

/* Reopen dir, replay everything after `after`; the collector's result. */
static struct coll replay(const char *dir, uint64_t after, size_t maxlen, int *ok)
{
    struct coll c = { .maxlen = maxlen };
    struct qv_wal *w = open_wal(dir, QV_WAL_SYNC_NEVER, 0, after, &c);
    *ok = w != NULL;
    qv_wal_close(w);
    return c;
}

static int has(const char *hay, const char *needle)
{
    return strstr(hay, needle) != NULL;
}

/* ---- I/O injection ------------------------------------------------------- */

enum inj_mode { INJ_NONE, INJ_ENOSPC, INJ_EIO, INJ_SHORT, INJ_FSYNC_EIO, INJ_TIME,
                INJ_FSYNC_HOLD };

struct inject {
    enum inj_mode mode;
    int calls;
    int after;               /* fail only after this many pwrite calls */
    uint64_t sync_ns, syncs; /* INJ_TIME: time spent in fdatasync */
    int hold, held;          /* INJ_FSYNC_HOLD: fdatasync waits while hold;
                                held: one is waiting (atomics) */
};

static ssize_t inj_pwrite(void *ctx, int fd, const void *b, size_t len, off_t off)
{
    struct inject *j = ctx;
    if (j->calls++ < j->after)
        return pwrite(fd, b, len, off);
    switch (j->mode) {
    case INJ_ENOSPC:
        errno = ENOSPC;
        return -1;
    case INJ_EIO:
        errno = EIO;
        return -1;
    case INJ_SHORT:
        /* half the bytes really land, then the disk is full */
        if (j->calls == j->after + 1 && len > 1)
            return pwrite(fd, b, len / 2, off);
        errno = ENOSPC;
        return -1;
    default:
        return pwrite(fd, b, len, off);
    }
}

static int inj_fdatasync(void *ctx, int fd)
{
    struct inject *j = ctx;
    if (j->mode == INJ_FSYNC_EIO) {
        errno = EIO;
        return -1;
    }
    if (j->mode == INJ_FSYNC_HOLD) {
        __atomic_store_n(&j->held, 1, __ATOMIC_SEQ_CST);
        while (__atomic_load_n(&j->hold, __ATOMIC_SEQ_CST))
            usleep(1000);
        __atomic_store_n(&j->held, 0, __ATOMIC_SEQ_CST);
    }
    double t0 = now_s();
    int rc = fdatasync(fd);
    __atomic_add_fetch(&j->sync_ns, (uint64_t)((now_s() - t0) * 1e9), __ATOMIC_RELAXED);
    __atomic_add_fetch(&j->syncs, 1, __ATOMIC_RELAXED);
    return rc;
}

static void set_inject(struct qv_wal *w, struct inject *j, enum inj_mode m, int after)
{
    memset(j, 0, sizeof *j);
    j->mode = m;
    j->after = after;
    struct qv_wal_io io = { inj_pwrite, inj_fdatasync, j };
    qv_wal_set_io(w, &io);
}

/* ---- suite setup --------------------------------------------------------- */

static int init(void)
{
    snprintf(root, sizeof root, "/tmp/qv-wal-XXXXXX");
    if (!mkdtemp(root))
        return 1;
    qv_log_set_level(QV_LOG_ERROR);   /* torn-tail warnings are expected */
    return 0;
}

static int fini(void)
{
    for (int i = 0; i < ndirs; i++) {
        char d[96];
        snprintf(d, sizeof d, "%s/w%02d", root, i);
        rm_dir(d);
    }
    rmdir(root);
    return 0;
}

/* ---- tests --------------------------------------------------------------- */

static void test_format(void)
{
    char dir[96], path[160];
    new_dir(dir, sizeof dir);
    struct qv_wal *w = open_wal(dir, QV_WAL_SYNC_ALWAYS, 0, 0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    uint64_t lsn = 0;
    CU_ASSERT_EQUAL(qv_wal_append(w, 7, "hello", 5, &lsn), 0);
    CU_ASSERT_EQUAL(lsn, 1);
    qv_wal_close(w);

    seg_file(dir, 1, path, sizeof path);
    size_t n;
    uint8_t *b = slurp(path, &n);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_EQUAL(n, 32 + 24 + 8);
    uint32_t u32;
    uint64_t u64;
    CU_ASSERT_EQUAL(memcmp(b, "QVWALSEG", 8), 0);
    memcpy(&u32, b + 8, 4);  CU_ASSERT_EQUAL(u32, QV_WAL_VERSION);
    memcpy(&u32, b + 12, 4); CU_ASSERT_EQUAL(u32, 32);
    memcpy(&u64, b + 16, 8); CU_ASSERT_EQUAL(u64, 1);
    memcpy(&u32, b + 24, 4); CU_ASSERT_EQUAL(u32, 0);
    memcpy(&u32, b + 28, 4); CU_ASSERT_EQUAL(u32, qv_crc32c(0, b, 28));
    const uint8_t *r = b + 32;
    memcpy(&u32, r, 4);      CU_ASSERT_EQUAL(u32, 5);
    memcpy(&u64, r + 8, 8);  CU_ASSERT_EQUAL(u64, 1);
    CU_ASSERT_EQUAL(r[16], 7);
    static const uint8_t z[8];
    CU_ASSERT_EQUAL(memcmp(r + 17, z, 7), 0);
    CU_ASSERT_EQUAL(memcmp(r + 24, "hello\0\0\0", 8), 0);
    /* CRC: payload + padding, then bytes 0..3, then bytes 8..23 */
    uint32_t c = qv_crc32c(0, r + 24, 8);
    c = qv_crc32c(c, r, 4);
    c = qv_crc32c(c, r + 8, 16);
    memcpy(&u32, r + 4, 4);
    CU_ASSERT_EQUAL(u32, c);
    qv_free(b);
}

static char rolls_dir[96];

static void test_roundtrip_rolls(void)
{
    const size_t maxlen = 64 << 10;
    const uint64_t seg = 256 << 10;
    new_dir(rolls_dir, sizeof rolls_dir);
    struct qv_wal *w = open_wal(rolls_dir, QV_WAL_SYNC_ALWAYS, seg, 0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    int bad = 0;
    for (uint64_t l = 1; l <= 200; l++)
        bad += append_gen(w, l, maxlen) != 0;
    CU_ASSERT_EQUAL(bad, 0);
    struct qv_wal_stats st;
    qv_wal_stats(w, &st);
    CU_ASSERT_EQUAL(st.next_lsn, 201);
    CU_ASSERT_EQUAL(st.durable_lsn, 200);
    CU_ASSERT_EQUAL(st.appends, 200);
    CU_ASSERT(st.segments >= 10);
    qv_wal_close(w);

    /* every segment within the limit, names = first LSNs, listed = stats */
    uint64_t f[256];
    int ns = list_segs(rolls_dir, f, 256);
    CU_ASSERT_EQUAL(ns, (int)st.segments);
    CU_ASSERT_EQUAL(f[0], 1);
    uint64_t total = 0;
    for (int i = 0; i < ns; i++) {
        char p[160];
        struct stat s;
        seg_file(rolls_dir, f[i], p, sizeof p);
        CU_ASSERT_EQUAL_FATAL(stat(p, &s), 0);
        CU_ASSERT((uint64_t)s.st_size <= seg);
        total += (uint64_t)s.st_size;
    }
    CU_ASSERT_EQUAL(total, st.bytes);

    int ok;
    struct coll c = replay(rolls_dir, 0, maxlen, &ok);
    CU_ASSERT_TRUE(ok);
    CU_ASSERT_EQUAL(c.count, 200);
    CU_ASSERT_EQUAL(c.first, 1);
    CU_ASSERT_EQUAL(c.bad, 0);

    /* appends continue after the last LSN, across a reopen */
    struct coll c2 = { .maxlen = maxlen };
    w = open_wal(rolls_dir, QV_WAL_SYNC_ALWAYS, seg, 0, &c2);
    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    CU_ASSERT_EQUAL(c2.count, 200);
    for (uint64_t l = 201; l <= 210; l++)
        CU_ASSERT_EQUAL(append_gen(w, l, maxlen), 0);
    qv_wal_close(w);
    c = replay(rolls_dir, 0, maxlen, &ok);
    CU_ASSERT_TRUE(ok);
    CU_ASSERT_EQUAL(c.count, 210);
    CU_ASSERT_EQUAL(c.bad, 0);
}

static void test_after_lsn(void)
{
    int ok;
    /* 150 is inside some segment: the replay starts exactly after it */
    struct coll c = replay(rolls_dir, 150, 64 << 10, &ok);
    CU_ASSERT_TRUE(ok);
    CU_ASSERT_EQUAL(c.first, 151);
    CU_ASSERT_EQUAL(c.count, 60);
    CU_ASSERT_EQUAL(c.bad, 0);
    c = replay(rolls_dir, 210, 64 << 10, &ok);
    CU_ASSERT_TRUE(ok);
    CU_ASSERT_EQUAL(c.count, 0);

    /* a snapshot ahead of the log: appends continue after the snapshot */
    char dir[96];
    new_dir(dir, sizeof dir);
    struct qv_wal *w = open_wal(dir, QV_WAL_SYNC_ALWAYS, 0, 0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    for (uint64_t l = 1; l <= 20; l++)
        CU_ASSERT_EQUAL(append_gen(w, l, 100), 0);
    qv_wal_close(w);
    c = (struct coll){ .maxlen = 100 };
    w = open_wal(dir, QV_WAL_SYNC_ALWAYS, 0, 30, &c);
    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    CU_ASSERT_EQUAL(c.count, 0);
    CU_ASSERT_EQUAL(append_gen(w, 31, 100), 0);
    qv_wal_close(w);
    c = replay(dir, 30, 100, &ok);
    CU_ASSERT_TRUE(ok);
    CU_ASSERT_EQUAL(c.count, 1);
    CU_ASSERT_EQUAL(c.first, 31);
    /* without that snapshot, 21..30 are missing: refused, not skipped */
    c = replay(dir, 0, 100, &ok);
    CU_ASSERT_FALSE(ok);
    CU_ASSERT_EQUAL(qv_errno, QV_ECORRUPT);
    CU_ASSERT_TRUE(has(qv_errmsg(), "21..30"));

    /* a fresh WAL for a snapshot at 1000 starts at 1001 */
    new_dir(dir, sizeof dir);
    w = open_wal(dir, QV_WAL_SYNC_ALWAYS, 0, 1000, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    CU_ASSERT_EQUAL(append_gen(w, 1001, 100), 0);
    qv_wal_close(w);
    uint64_t f[4];
    CU_ASSERT_EQUAL(list_segs(dir, f, 4), 1);
    CU_ASSERT_EQUAL(f[0], 1001);
}

/* ---- threads ------------------------------------------------------------- */

#define NT 8
#define PER 2000

static uint64_t mt_lsn[NT][PER];
static uint8_t mt_seen[NT][PER];

struct mt_arg {
    struct qv_wal *w;
    int t, fails, async;
};

static size_t mt_fill(int t, int i, uint8_t *b)
{
    size_t len = 8 + (size_t)(t * 7 + i * 13) % 120;
    uint32_t v[2] = { (uint32_t)t, (uint32_t)i };
    memcpy(b, v, 8);
    for (size_t k = 8; k < len; k++)
        b[k] = (uint8_t)(t + i * 3 + k);
    return len;
}

static void *mt_main(void *p)
{
    struct mt_arg *a = p;
    uint8_t b[160];
    for (int i = 0; i < PER; i++) {
        size_t len = mt_fill(a->t, i, b);
        uint64_t lsn = 0;
        if (qv_wal_append(a->w, 3, b, len, &lsn) != 0)
            a->fails++;
        mt_lsn[a->t][i] = lsn;
    }
    return NULL;
}

struct mt_check {
    uint64_t count;
    int bad;
};

static int mt_replay(void *arg, uint64_t lsn, uint8_t type, const void *p, size_t len)
{
    struct mt_check *c = arg;
    uint8_t want[160];
    uint32_t v[2];
    c->count++;
    if (len < 8 || type != 3) {
        c->bad++;
        return 0;
    }
    memcpy(v, p, 8);
    if (v[0] >= NT || v[1] >= PER) {
        c->bad++;
        return 0;
    }
    size_t wl = mt_fill((int)v[0], (int)v[1], want);
    if (wl != len || memcmp(want, p, len) != 0 || mt_lsn[v[0]][v[1]] != lsn ||
        mt_seen[v[0]][v[1]]++)
        c->bad++;
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* 8 threads x 2000 appends under policy; checks LSNs unique and dense and
 * the replay; fills *st and the seconds the appends took. */
static void run_mt(enum qv_wal_sync policy, struct inject *j, struct qv_wal_stats *st,
                   double *secs)
{
    char dir[96];
    new_dir(dir, sizeof dir);
    struct qv_wal *w = open_wal(dir, policy, 0, 0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    if (j)
        set_inject(w, j, INJ_TIME, 0);
    pthread_t th[NT];
    struct mt_arg a[NT];
    double t0 = now_s();
    for (int t = 0; t < NT; t++) {
        a[t] = (struct mt_arg){ .w = w, .t = t };
        pthread_create(&th[t], NULL, mt_main, &a[t]);
    }
    int fails = 0;
    for (int t = 0; t < NT; t++) {
        pthread_join(th[t], NULL);
        fails += a[t].fails;
    }
    *secs = now_s() - t0;
    CU_ASSERT_EQUAL(fails, 0);
    qv_wal_stats(w, st);
    if (policy == QV_WAL_SYNC_INTERVAL) {
        /* the background thread catches up within a few intervals */
        struct qv_wal_stats s2;
        double until = now_s() + 2.0;
        do {
            usleep(2000);
            qv_wal_stats(w, &s2);
        } while (s2.durable_lsn < s2.last_lsn && now_s() < until);
        CU_ASSERT_EQUAL(s2.durable_lsn, (uint64_t)NT * PER);
        CU_ASSERT(s2.fsyncs >= 1);
    }
    if (policy == QV_WAL_SYNC_NEVER) {
        CU_ASSERT_EQUAL(st->fsyncs, 0);
        CU_ASSERT_EQUAL(st->durable_lsn, 0);
        CU_ASSERT_EQUAL(qv_wal_sync(w), 0);
        struct qv_wal_stats s2;
        qv_wal_stats(w, &s2);
        CU_ASSERT_EQUAL(s2.durable_lsn, (uint64_t)NT * PER);
        CU_ASSERT_EQUAL(s2.fsyncs, 1);
    }
    if (policy == QV_WAL_SYNC_ALWAYS)
        CU_ASSERT_EQUAL(st->durable_lsn, (uint64_t)NT * PER);
    qv_wal_close(w);

    static uint64_t all[NT * PER];
    for (int t = 0; t < NT; t++)
        memcpy(all + (size_t)t * PER, mt_lsn[t], sizeof mt_lsn[t]);
    qsort(all, NT * PER, sizeof all[0], cmp_u64);
    int dense = 1;
    for (size_t i = 0; i < (size_t)NT * PER; i++)
        if (all[i] != i + 1)
            dense = 0;
    CU_ASSERT_TRUE(dense);
    CU_ASSERT_EQUAL(st->appends, (uint64_t)NT * PER);
    CU_ASSERT_EQUAL(st->last_lsn, (uint64_t)NT * PER);

    memset(mt_seen, 0, sizeof mt_seen);
    struct mt_check c = { 0, 0 };
    struct qv_wal_opts o;
    qv_wal_opts_default(&o);
    o.dir = dir;
    w = qv_wal_open(&o, 0, mt_replay, &c);
    CU_ASSERT_PTR_NOT_NULL(w);
    qv_wal_close(w);
    CU_ASSERT_EQUAL(c.count, (uint64_t)NT * PER);
    CU_ASSERT_EQUAL(c.bad, 0);
}

static void test_group_commit(void)
{
    struct qv_wal_stats st;
    struct inject j;
    double secs;
    run_mt(QV_WAL_SYNC_ALWAYS, &j, &st, &secs);
    double mean_us = j.syncs ? (double)j.sync_ns / (double)j.syncs / 1e3 : 0;
    fprintf(stderr, "\n    always, %d threads: %llu appends, %llu fsyncs (%.1f records "
            "per fsync, mean fdatasync %.0f us), %llu writes, %.3f s = %.0f appends/s\n",
            NT, (unsigned long long)st.appends, (unsigned long long)st.fsyncs,
            st.fsyncs ? (double)st.appends / (double)st.fsyncs : 0.0, mean_us,
            (unsigned long long)st.batches, secs, (double)st.appends / secs);
    CU_ASSERT(st.fsyncs > 0);
    CU_ASSERT(st.fsyncs < st.appends);
    CU_ASSERT_EQUAL(st.fsyncs, j.syncs);
    /* Where a flush costs real time, the other appenders pile up behind
     * it: at least 2 records per fsync.  (On tmpfs a flush is free and the
     * batching depends on the scheduler only.) */
    if (mean_us >= 50)
        CU_ASSERT(st.fsyncs * 2 <= st.appends);
}

static void test_policies(void)
{
    /* one thread under ALWAYS: no one to batch with, one fsync each */
    char dir[96];
    new_dir(dir, sizeof dir);
    struct qv_wal *w = open_wal(dir, QV_WAL_SYNC_ALWAYS, 0, 0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    double t0 = now_s();
    for (uint64_t l = 1; l <= 200; l++)
        CU_ASSERT_EQUAL(append_gen(w, l, 100), 0);
    double secs = now_s() - t0;
    struct qv_wal_stats st;
    qv_wal_stats(w, &st);
    CU_ASSERT_EQUAL(st.fsyncs, 200);
    CU_ASSERT_EQUAL(st.batches, 200);
    qv_wal_close(w);
    fprintf(stderr, "\n    always, 1 thread: 200 appends, %llu fsyncs, %.3f s = %.0f "
            "appends/s\n", (unsigned long long)st.fsyncs, secs, 200 / secs);
    int ok;
    struct coll c = replay(dir, 0, 100, &ok);
    CU_ASSERT_TRUE(ok);
    CU_ASSERT_EQUAL(c.count, 200);
    CU_ASSERT_EQUAL(c.bad, 0);

    enum qv_wal_sync pol[2] = { QV_WAL_SYNC_INTERVAL, QV_WAL_SYNC_NEVER };
    for (int i = 0; i < 2; i++) {
        run_mt(pol[i], NULL, &st, &secs);
        fprintf(stderr, "    %s, %d threads: %llu appends, %llu fsyncs, %llu writes, "
                "%.3f s = %.0f appends/s\n", qv_wal_sync_name(pol[i]), NT,
                (unsigned long long)st.appends, (unsigned long long)st.fsyncs,
                (unsigned long long)st.batches, secs, (double)st.appends / secs);
    }
}

static void test_async(void)
{
    char dir[96];
    new_dir(dir, sizeof dir);
    struct qv_wal *w = open_wal(dir, QV_WAL_SYNC_ALWAYS, 0, 0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    struct qv_wal_ticket t[5];
    for (int i = 0; i < 5; i++) {
        size_t len = gen_len((uint64_t)i + 1, 300);
        gen_fill((uint64_t)i + 1, buf, len);
        CU_ASSERT_EQUAL(qv_wal_append_async(w, gen_type((uint64_t)i + 1), buf, len, &t[i]), 0);
        CU_ASSERT_EQUAL(t[i].lsn, (uint64_t)i + 1);
    }
    struct qv_wal_stats st;
    qv_wal_stats(w, &st);
    CU_ASSERT_EQUAL(st.written_lsn, 0);      /* nothing written before a wait */
    for (int i = 4; i >= 0; i--)
        CU_ASSERT_EQUAL(qv_wal_wait(w, &t[i]), 0);
    qv_wal_stats(w, &st);
    CU_ASSERT_EQUAL(st.durable_lsn, 5);
    CU_ASSERT_EQUAL(st.fsyncs, 1);           /* one batch for all five */
    CU_ASSERT_EQUAL(qv_wal_wait(w, &t[2]), 0);   /* again: still fine */
    struct qv_wal_ticket never = { 99, 0 };
    CU_ASSERT_EQUAL(qv_wal_wait(w, &never), QV_EINVAL);
    /* async records nobody waited for are written by close */
    CU_ASSERT_EQUAL(qv_wal_append_async(w, 9, "x", 1, &t[0]), 0);
    qv_wal_close(w);
    int ok;
    struct coll c = replay(dir, 5, 300, &ok);
    CU_ASSERT_TRUE(ok);
    CU_ASSERT_EQUAL(c.count, 1);
    c = replay(dir, 0, 300, &ok);
    CU_ASSERT_EQUAL(c.count, 6);
    CU_ASSERT_EQUAL(c.bad, 1);               /* the "x" is not a generated one */
}

/* A one-segment log of n generated records (maxlen 120); returns the image
 * of its segment and the record offsets. */
static uint8_t *small_log(char *dir, size_t dn, char *path, size_t pn, int n,
                          size_t *size, size_t *offs)
{
    new_dir(dir, dn);
    struct qv_wal *w = open_wal(dir, QV_WAL_SYNC_NEVER, 0, 0, NULL);
    if (!w)
        return NULL;
    for (int l = 1; l <= n; l++)
        if (append_gen(w, (uint64_t)l, 120) != 0)
            return NULL;
    qv_wal_close(w);
    seg_file(dir, 1, path, pn);
    uint8_t *b = slurp(path, size);
    if (b && rec_offsets(b, *size, offs, 64) != n) {
        qv_free(b);
        return NULL;
    }
    return b;
}

static void test_torn_tail(void)
{
    char dir[96], path[160];
    size_t n, offs[64];
    uint8_t *img = small_log(dir, sizeof dir, path, sizeof path, 5, &n, offs);
    CU_ASSERT_PTR_NOT_NULL_FATAL(img);
    size_t s = offs[4];
    int failures = 0, cases = 0;
    for (size_t cut = s; cut < n; cut++) {
        cases++;
        if (spew(path, img, cut) != 0) {
            failures++;
            continue;
        }
        struct coll c = { .maxlen = 120 };
        struct qv_wal *w = open_wal(dir, QV_WAL_SYNC_ALWAYS, 0, 0, &c);
        if (!w) {
            failures++;
            continue;
        }
        struct qv_wal_stats st;
        qv_wal_stats(w, &st);
        struct stat sb;
        stat(path, &sb);
        if (c.count != 4 || c.bad || st.torn_bytes != cut - s ||
            (size_t)sb.st_size != s || st.next_lsn != 5)
            failures++;
        /* the next record takes the torn one's place and replays */
        if (append_gen(w, 5, 120) != 0)
            failures++;
        qv_wal_close(w);
        int ok;
        c = replay(dir, 0, 120, &ok);
        if (!ok || c.count != 5 || c.bad)
            failures++;
    }
    fprintf(stderr, "\n    %d cut points in the final record (%zu bytes)\n", cases, n - s);
    CU_ASSERT_EQUAL(failures, 0);
    CU_ASSERT_EQUAL((size_t)cases, n - s);
    qv_free(img);
}

static void test_flip_middle(void)
{
    char dir[96], path[160], want[64];
    size_t n, offs[64];
    uint8_t *img = small_log(dir, sizeof dir, path, sizeof path, 5, &n, offs);
    CU_ASSERT_PTR_NOT_NULL_FATAL(img);
    snprintf(want, sizeof want, "offset %zu: record LSN 3", offs[2]);
    int failures = 0;
    for (size_t i = offs[2]; i < offs[3]; i++) {
        img[i] ^= 0x40;
        spew(path, img, n);
        int ok;
        struct coll c = replay(dir, 0, 120, &ok);
        if (ok || qv_errno != QV_ECORRUPT || !has(qv_errmsg(), path) ||
            !has(qv_errmsg(), want) || c.count > 2)
            failures++;
        /* refused means untouched: the damaged file is still all there */
        struct stat sb;
        stat(path, &sb);
        if ((size_t)sb.st_size != n)
            failures++;
        img[i] ^= 0x40;
    }
    CU_ASSERT_EQUAL(failures, 0);
    img[offs[2] + 30] ^= 1;
    spew(path, img, n);
    int ok;
    replay(dir, 0, 120, &ok);
    fprintf(stderr, "\n    %s\n", qv_errmsg());
    CU_ASSERT_TRUE(has(qv_errmsg(), "CRC mismatch"));
    CU_ASSERT_TRUE(has(qv_errmsg(), "follows at offset"));
    qv_free(img);
}

static void test_flip_final(void)
{
    /* The rule: damage to the final record of the log cannot be told from
     * a torn write, so it is dropped like one (with a warning). */
    char dir[96], path[160];
    size_t n, offs[64];
    uint8_t *img = small_log(dir, sizeof dir, path, sizeof path, 5, &n, offs);
    CU_ASSERT_PTR_NOT_NULL_FATAL(img);
    int failures = 0;
    for (size_t i = offs[4]; i < n; i++) {
        img[i] ^= 0x01;
        spew(path, img, n);
        int ok;
        struct coll c = replay(dir, 0, 120, &ok);
        struct stat sb;
        stat(path, &sb);
        if (!ok || c.count != 4 || c.bad || (size_t)sb.st_size != offs[4])
            failures++;
        img[i] ^= 0x01;
    }
    CU_ASSERT_EQUAL(failures, 0);
    qv_free(img);
}

/* A log of NMS generated records (maxlen 3000) in 64 KiB segments (about
 * 40 records each). */
#define NMS 200

static int multi_seg_log(char *dir, size_t dn, uint64_t *firsts, int max)
{
    new_dir(dir, dn);
    struct qv_wal *w = open_wal(dir, QV_WAL_SYNC_NEVER, QV_WAL_SEGMENT_MIN, 0, NULL);
    if (!w)
        return -1;
    for (uint64_t l = 1; l <= NMS; l++)
        if (append_gen(w, l, 3000) != 0)
            return -1;
    qv_wal_close(w);
    return list_segs(dir, firsts, max);
}

static void test_closed_segment(void)
{
    char dir[96], path[160];
    uint64_t f[32];
    int ns = multi_seg_log(dir, sizeof dir, f, 32);
    CU_ASSERT_FATAL(ns >= 3);
    size_t n, offs[64];
    seg_file(dir, f[0], path, sizeof path);
    uint8_t *img = slurp(path, &n);
    CU_ASSERT_PTR_NOT_NULL_FATAL(img);
    int k = rec_offsets(img, n, offs, 64);

    /* the final record of a closed segment is not a torn tail */
    img[offs[k - 1] + 5] ^= 0x10;
    spew(path, img, n);
    int ok;
    replay(dir, 0, 3000, &ok);
    CU_ASSERT_FALSE(ok);
    CU_ASSERT_EQUAL(qv_errno, QV_ECORRUPT);
    CU_ASSERT_TRUE(has(qv_errmsg(), path));
    CU_ASSERT_TRUE(has(qv_errmsg(), "not the last"));
    img[offs[k - 1] + 5] ^= 0x10;

    /* nor is a short closed segment: records are missing */
    spew(path, img, offs[k - 1]);
    replay(dir, 0, 3000, &ok);
    CU_ASSERT_FALSE(ok);
    CU_ASSERT_EQUAL(qv_errno, QV_ECORRUPT);
    CU_ASSERT_TRUE(has(qv_errmsg(), "missing"));
    spew(path, img, n);

    /* a segment removed from the middle: a gap */
    char mid[160];
    seg_file(dir, f[1], mid, sizeof mid);
    size_t mn;
    uint8_t *mimg = slurp(mid, &mn);
    unlink(mid);
    replay(dir, 0, 3000, &ok);
    CU_ASSERT_FALSE(ok);
    CU_ASSERT_TRUE(has(qv_errmsg(), "missing"));
    spew(mid, mimg, mn);

    struct coll c = replay(dir, 0, 3000, &ok);
    CU_ASSERT_TRUE(ok);
    CU_ASSERT_EQUAL(c.count, NMS);
    CU_ASSERT_EQUAL(c.bad, 0);
    qv_free(mimg);
    qv_free(img);
}

static void test_header_corrupt(void)
{
    char dir[96], path[160];
    uint64_t f[32];
    int ns = multi_seg_log(dir, sizeof dir, f, 32);
    CU_ASSERT_FATAL(ns >= 3);
    int which[2] = { 1, ns - 1 };     /* a middle segment and the last one */
    for (int m = 0; m < 2; m++) {
        size_t n;
        seg_file(dir, f[which[m]], path, sizeof path);
        uint8_t *img = slurp(path, &n);
        CU_ASSERT_PTR_NOT_NULL_FATAL(img);
        int failures = 0;
        for (size_t i = 0; i < QV_WAL_SEG_HDR; i++) {
            img[i] ^= 0x80;
            spew(path, img, n);
            int ok;
            replay(dir, 0, 3000, &ok);
            if (ok || qv_errno != QV_ECORRUPT || !has(qv_errmsg(), path))
                failures++;
            img[i] ^= 0x80;
        }
        CU_ASSERT_EQUAL(failures, 0);
        /* a header cut short (not a torn write: headers are renamed into
         * place whole) */
        spew(path, img, 20);
        int ok;
        replay(dir, 0, 3000, &ok);
        CU_ASSERT_FALSE(ok);
        CU_ASSERT_EQUAL(qv_errno, QV_ECORRUPT);
        /* another format version, consistently checksummed */
        uint32_t v = 2;
        memcpy(img + 8, &v, 4);
        uint32_t crc = qv_crc32c(0, img, 28);
        memcpy(img + 28, &crc, 4);
        spew(path, img, n);
        replay(dir, 0, 3000, &ok);
        CU_ASSERT_FALSE(ok);
        CU_ASSERT_EQUAL(qv_errno, QV_EFORMAT);
        CU_ASSERT_TRUE(has(qv_errmsg(), path));
        v = QV_WAL_VERSION;
        memcpy(img + 8, &v, 4);
        crc = qv_crc32c(0, img, 28);
        memcpy(img + 28, &crc, 4);
        spew(path, img, n);
        qv_free(img);
    }
    /* a segment renamed: name and header disagree */
    char other[160];
    seg_file(dir, f[1], path, sizeof path);
    seg_file(dir, f[1] + 1, other, sizeof other);
    CU_ASSERT_EQUAL(rename(path, other), 0);
    int ok;
    replay(dir, 0, 3000, &ok);
    CU_ASSERT_FALSE(ok);
    CU_ASSERT_EQUAL(qv_errno, QV_ECORRUPT);
    CU_ASSERT_TRUE(has(qv_errmsg(), other));
    CU_ASSERT_EQUAL(rename(other, path), 0);
    /* a half-made segment left by a crash during a roll is removed */
    char tmp[170];
    snprintf(tmp, sizeof tmp, "%s.tmp", other);
    spew(tmp, (const uint8_t *)"junk", 4);
    struct coll c = replay(dir, 0, 3000, &ok);
    CU_ASSERT_TRUE(ok);
    CU_ASSERT_EQUAL(c.count, NMS);
    CU_ASSERT_EQUAL(access(tmp, F_OK), -1);
}

static void test_truncate_upto(void)
{
    char dir[96];
    uint64_t f[32], g[32];
    int ns = multi_seg_log(dir, sizeof dir, f, 32);
    CU_ASSERT_FATAL(ns >= 4);
    struct qv_wal *w = open_wal(dir, QV_WAL_SYNC_ALWAYS, QV_WAL_SEGMENT_MIN, 0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    /* below the end of the first segment: nothing to remove */
    CU_ASSERT_EQUAL(qv_wal_truncate_upto(w, f[1] - 2), 0);
    CU_ASSERT_EQUAL(list_segs(dir, g, 32), ns);
    /* inside segment 2: segments 0 and 1 are covered, 2 is not */
    uint64_t snap = f[2] + 1;
    CU_ASSERT_EQUAL(qv_wal_truncate_upto(w, snap), 2);
    CU_ASSERT_EQUAL(list_segs(dir, g, 32), ns - 2);
    CU_ASSERT_EQUAL(g[0], f[2]);
    struct qv_wal_stats st;
    qv_wal_stats(w, &st);
    CU_ASSERT_EQUAL(st.segments, (uint32_t)ns - 2);
    CU_ASSERT_EQUAL(st.first_lsn, f[2]);
    qv_wal_close(w);
    int ok;
    struct coll c = replay(dir, snap, 3000, &ok);
    CU_ASSERT_TRUE(ok);
    CU_ASSERT_EQUAL(c.first, snap + 1);
    CU_ASSERT_EQUAL(c.count, NMS - snap);
    CU_ASSERT_EQUAL(c.bad, 0);
    /* an older snapshot no longer has its records */
    replay(dir, f[1], 3000, &ok);
    CU_ASSERT_FALSE(ok);
    CU_ASSERT_TRUE(has(qv_errmsg(), "missing"));

    /* everything covered: only the current segment stays, appends go on */
    w = open_wal(dir, QV_WAL_SYNC_ALWAYS, QV_WAL_SEGMENT_MIN, snap, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    CU_ASSERT_EQUAL(qv_wal_truncate_upto(w, NMS), ns - 3);
    CU_ASSERT_EQUAL(list_segs(dir, g, 32), 1);
    CU_ASSERT_EQUAL(g[0], f[ns - 1]);
    CU_ASSERT_EQUAL(append_gen(w, NMS + 1, 3000), 0);
    qv_wal_close(w);
    c = replay(dir, NMS, 3000, &ok);
    CU_ASSERT_TRUE(ok);
    CU_ASSERT_EQUAL(c.count, 1);
    CU_ASSERT_EQUAL(c.first, NMS + 1);
}

static void test_full_disk(void)
{
    char dir[96], path[160];
    new_dir(dir, sizeof dir);
    struct qv_wal *w = open_wal(dir, QV_WAL_SYNC_ALWAYS, 0, 0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    for (uint64_t l = 1; l <= 10; l++)
        CU_ASSERT_EQUAL(append_gen(w, l, 500), 0);
    seg_file(dir, 1, path, sizeof path);
    size_t n0, n1;
    uint8_t *before = slurp(path, &n0), *after;
    CU_ASSERT_PTR_NOT_NULL_FATAL(before);

    struct inject j;
    enum inj_mode modes[3] = { INJ_ENOSPC, INJ_SHORT, INJ_EIO };
    int codes[3] = { QV_ENOSPC, QV_ENOSPC, QV_EIO };
    for (int m = 0; m < 3; m++) {
        set_inject(w, &j, modes[m], 0);
        uint64_t lsn = 77;
        CU_ASSERT_EQUAL(append_gen(w, 11, 500), codes[m]);
        CU_ASSERT_EQUAL(qv_wal_append(w, 1, "y", 1, &lsn), codes[m]);
        CU_ASSERT_EQUAL(lsn, 0);
        CU_ASSERT_TRUE(has(qv_errmsg(), path));
        if (codes[m] == QV_ENOSPC) {
            CU_ASSERT_TRUE(has(qv_errmsg(), "no space left"));
            CU_ASSERT_TRUE(has(qv_errmsg(), "free space"));
        }
        if (m == 0)
            fprintf(stderr, "\n    %s\n", qv_errmsg());
        after = slurp(path, &n1);
        CU_ASSERT_EQUAL(n1, n0);
        CU_ASSERT_TRUE(n1 == n0 && memcmp(before, after, n0) == 0);
        qv_free(after);
        struct qv_wal_stats st;
        qv_wal_stats(w, &st);
        CU_ASSERT_EQUAL(st.next_lsn, 11);
        CU_ASSERT_EQUAL(st.broken, 0);
    }
    /* async appends of one failed batch all fail; their LSNs are reused */
    set_inject(w, &j, INJ_ENOSPC, 0);
    struct qv_wal_ticket t[3];
    for (int i = 0; i < 3; i++)
        CU_ASSERT_EQUAL(qv_wal_append_async(w, 1, "abc", 3, &t[i]), 0);
    for (int i = 0; i < 3; i++)
        CU_ASSERT_EQUAL(qv_wal_wait(w, &t[i]), QV_ENOSPC);

    /* space is back: the WAL goes on where it was */
    qv_wal_set_io(w, NULL);
    CU_ASSERT_EQUAL(append_gen(w, 11, 500), 0);
    for (int i = 0; i < 3; i++)                  /* still failed */
        CU_ASSERT_EQUAL(qv_wal_wait(w, &t[i]), QV_ENOSPC);
    qv_wal_close(w);
    int ok;
    struct coll c = replay(dir, 0, 500, &ok);
    CU_ASSERT_TRUE(ok);
    CU_ASSERT_EQUAL(c.count, 11);
    CU_ASSERT_EQUAL(c.bad, 0);
    qv_free(before);

    /* ENOSPC when a segment rolls: nothing half-made stays */
    new_dir(dir, sizeof dir);
    w = open_wal(dir, QV_WAL_SYNC_ALWAYS, QV_WAL_SEGMENT_MIN, 0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    uint64_t l = 1, f[8];
    for (;;) {   /* fill the first segment up to the record that rolls */
        struct stat sb;
        seg_file(dir, 1, path, sizeof path);
        stat(path, &sb);
        size_t next = QV_WAL_REC_HDR + ((gen_len(l, 3000) + 7) & ~(size_t)7);
        if (sb.st_size > (off_t)QV_WAL_SEG_HDR &&
            (uint64_t)sb.st_size + next > QV_WAL_SEGMENT_MIN)
            break;
        CU_ASSERT_EQUAL_FATAL(append_gen(w, l++, 3000), 0);
    }
    int files = count_files(dir);
    set_inject(w, &j, INJ_ENOSPC, 0);
    CU_ASSERT_EQUAL(append_gen(w, l, 3000), QV_ENOSPC);
    CU_ASSERT_TRUE(has(qv_errmsg(), "no space left"));
    fprintf(stderr, "    %s\n", qv_errmsg());
    CU_ASSERT_EQUAL(count_files(dir), files);        /* no .tmp left */
    CU_ASSERT_EQUAL(list_segs(dir, f, 8), 1);
    qv_wal_set_io(w, NULL);
    CU_ASSERT_EQUAL(append_gen(w, l, 3000), 0);      /* rolls now */
    CU_ASSERT_EQUAL(list_segs(dir, f, 8), 2);
    CU_ASSERT_EQUAL(f[1], l);
    qv_wal_close(w);
    c = replay(dir, 0, 3000, &ok);
    CU_ASSERT_TRUE(ok);
    CU_ASSERT_EQUAL(c.count, l);
    CU_ASSERT_EQUAL(c.bad, 0);
}

static void test_fsync_failure(void)
{
    char dir[96];
    new_dir(dir, sizeof dir);
    struct qv_wal *w = open_wal(dir, QV_WAL_SYNC_ALWAYS, 0, 0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    for (uint64_t l = 1; l <= 10; l++)
        CU_ASSERT_EQUAL(append_gen(w, l, 500), 0);
    struct inject j;
    set_inject(w, &j, INJ_FSYNC_EIO, 0);
    CU_ASSERT_EQUAL(append_gen(w, 11, 500), QV_EIO);
    CU_ASSERT_TRUE(has(qv_errmsg(), "fdatasync failed"));
    CU_ASSERT_TRUE(has(qv_errmsg(), "restarts"));
    /* unusable until restarted, even when the disk is fine again */
    qv_wal_set_io(w, NULL);
    CU_ASSERT_EQUAL(append_gen(w, 11, 500), QV_EIO);
    struct qv_wal_stats st;
    qv_wal_stats(w, &st);
    CU_ASSERT_EQUAL(st.broken, 1);
    CU_ASSERT_EQUAL(st.durable_lsn, 10);
    qv_wal_close(w);
    /* recovery keeps what reached the file: here the write itself went
     * through (only the flush "failed"), so record 11 is back */
    int ok;
    struct coll c = replay(dir, 0, 500, &ok);
    CU_ASSERT_TRUE(ok);
    CU_ASSERT_EQUAL(c.count, 11);
    CU_ASSERT_EQUAL(c.bad, 0);
}

/* 200 appends from another thread, to be joined with a time limit. */
struct appender {
    struct qv_wal *w;
    uint64_t from;
    int bad;
};

static void *appender_main(void *arg)
{
    struct appender *a = arg;
    for (uint64_t l = a->from; l < a->from + 200; l++)
        a->bad += append_gen(a->w, l, 300) != 0;
    return NULL;
}

/* INTERVAL: while the background fdatasync is stuck in the device, appends
 * go on being acknowledged (they never wait for a flush); once it returns
 * the durable LSN catches up.  A failed background fdatasync breaks the
 * WAL: the next append fails naming it. */
static void test_interval_sync(void)
{
    char dir[96];
    new_dir(dir, sizeof dir);
    struct qv_wal *w = open_wal(dir, QV_WAL_SYNC_INTERVAL, 0, 0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    CU_ASSERT_EQUAL(append_gen(w, 1, 300), 0);
    static struct inject j;
    set_inject(w, &j, INJ_FSYNC_HOLD, 0);
    __atomic_store_n(&j.hold, 1, __ATOMIC_SEQ_CST);
    CU_ASSERT_EQUAL(append_gen(w, 2, 300), 0);
    double t0 = now_s();
    while (!__atomic_load_n(&j.held, __ATOMIC_SEQ_CST) && now_s() - t0 < 5)
        usleep(1000);
    CU_ASSERT_FATAL(__atomic_load_n(&j.held, __ATOMIC_SEQ_CST));
    struct appender a = { .w = w, .from = 3 };
    pthread_t t;
    CU_ASSERT_EQUAL_FATAL(pthread_create(&t, NULL, appender_main, &a), 0);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 10;
    int joined = pthread_timedjoin_np(t, NULL, &until) == 0;
    CU_ASSERT_TRUE(joined);             /* else they waited for the flush */
    CU_ASSERT_TRUE(__atomic_load_n(&j.held, __ATOMIC_SEQ_CST));
    struct qv_wal_stats st;
    qv_wal_stats(w, &st);
    CU_ASSERT_EQUAL(st.last_lsn, 202);
    CU_ASSERT(st.durable_lsn < 202);
    __atomic_store_n(&j.hold, 0, __ATOMIC_SEQ_CST);
    if (!joined)
        pthread_join(t, NULL);
    CU_ASSERT_EQUAL(a.bad, 0);
    t0 = now_s();
    do {
        usleep(2000);
        qv_wal_stats(w, &st);
    } while (st.durable_lsn < 202 && now_s() - t0 < 5);
    CU_ASSERT_EQUAL(st.durable_lsn, 202);
    /* a failing background flush */
    set_inject(w, &j, INJ_FSYNC_EIO, 0);
    CU_ASSERT_EQUAL(append_gen(w, 203, 300), 0);
    t0 = now_s();
    int rc = 0;
    for (uint64_t l = 204; rc == 0 && now_s() - t0 < 5; l++) {
        usleep(2000);
        rc = append_gen(w, l, 300);
    }
    CU_ASSERT_EQUAL(rc, QV_EIO);
    CU_ASSERT_TRUE(has(qv_errmsg(), "fdatasync failed"));
    qv_wal_set_io(w, NULL);
    qv_wal_close(w);
}

static void test_reopen_many(void)
{
    char dir[96];
    new_dir(dir, sizeof dir);
    int fds0 = count_files("/proc/self/fd");
    uint64_t l = 1;
    int failures = 0;
    for (int i = 0; i < 100; i++) {
        struct coll c = { .maxlen = 200 };
        struct qv_wal *w = open_wal(dir, i % 3 == 0 ? QV_WAL_SYNC_INTERVAL :
                                    i % 3 == 1 ? QV_WAL_SYNC_ALWAYS : QV_WAL_SYNC_NEVER,
                                    QV_WAL_SEGMENT_MIN, 0, &c);
        if (!w || c.count != l - 1 || c.bad) {
            failures++;
            qv_wal_close(w);
            break;
        }
        for (int k = 0; k < i % 4; k++)
            failures += append_gen(w, l++, 200) != 0;
        qv_wal_close(w);
    }
    CU_ASSERT_EQUAL(failures, 0);
    CU_ASSERT_EQUAL(count_files("/proc/self/fd"), fds0);
}

static void test_errors(void)
{
    struct qv_wal_opts o;
    char dir[96];
    new_dir(dir, sizeof dir);
    qv_wal_opts_default(&o);
    CU_ASSERT_PTR_NULL(qv_wal_open(&o, 0, NULL, NULL));
    CU_ASSERT_EQUAL(qv_errno, QV_EINVAL);
    CU_ASSERT_TRUE(has(qv_errmsg(), "opts.dir"));
    o.dir = dir;
    o.segment_bytes = 1000;
    CU_ASSERT_PTR_NULL(qv_wal_open(&o, 0, NULL, NULL));
    CU_ASSERT_TRUE(has(qv_errmsg(), "segment_bytes"));
    qv_wal_opts_default(&o);
    o.dir = dir;
    o.sync = QV_WAL_SYNC_INTERVAL;
    o.interval_ms = 0;
    CU_ASSERT_PTR_NULL(qv_wal_open(&o, 0, NULL, NULL));
    CU_ASSERT_TRUE(has(qv_errmsg(), "interval_ms"));
    o.dir = "/proc/qv-no-such/wal";
    o.interval_ms = 5;
    CU_ASSERT_PTR_NULL(qv_wal_open(&o, 0, NULL, NULL));
    CU_ASSERT_EQUAL(qv_errno, QV_EIO);
    CU_ASSERT_TRUE(has(qv_errmsg(), "/proc/qv-no-such"));

    enum qv_wal_sync s;
    CU_ASSERT_EQUAL(qv_wal_sync_parse("interval", &s), 0);
    CU_ASSERT_EQUAL(s, QV_WAL_SYNC_INTERVAL);
    CU_ASSERT_EQUAL(qv_wal_sync_parse("sometimes", &s), QV_EINVAL);
    CU_ASSERT_TRUE(has(qv_errmsg(), "always, interval, never"));

    /* a dir created with its parents */
    char deep[128];
    snprintf(deep, sizeof deep, "%s/a/b", dir);
    struct qv_wal *w = open_wal(deep, QV_WAL_SYNC_ALWAYS, 0, 0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    CU_ASSERT_EQUAL(qv_wal_append(w, 0, "x", 1, NULL), QV_EINVAL);
    CU_ASSERT_EQUAL(qv_wal_append(w, 1, NULL, 5, NULL), QV_EINVAL);
    CU_ASSERT_EQUAL(qv_wal_append(w, 1, buf, (size_t)QV_WAL_MAX_PAYLOAD + 1, NULL),
                    QV_EINVAL);
    CU_ASSERT_TRUE(has(qv_errmsg(), "exceeds"));
    CU_ASSERT_EQUAL(qv_wal_append(w, 1, NULL, 0, NULL), 0);    /* empty payload */
    CU_ASSERT_EQUAL(qv_wal_policy(w), QV_WAL_SYNC_ALWAYS);
    /* one owner per WAL directory */
    CU_ASSERT_PTR_NULL(open_wal(deep, QV_WAL_SYNC_ALWAYS, 0, 0, NULL));
    CU_ASSERT_EQUAL(qv_errno, QV_EBUSY);
    CU_ASSERT_TRUE(has(qv_errmsg(), "already open"));
    qv_wal_close(w);
    qv_wal_close(NULL);
    char sub[192];
    snprintf(sub, sizeof sub, "%s/a/b/wal-00000000000000000001.log", dir);
    unlink(sub);
    snprintf(sub, sizeof sub, "%s/a/b", dir);
    rmdir(sub);
    snprintf(sub, sizeof sub, "%s/a", dir);
    rmdir(sub);

    /* the replay callback's error stops the open */
    char d2[96];
    new_dir(d2, sizeof d2);
    w = open_wal(d2, QV_WAL_SYNC_NEVER, 0, 0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    for (uint64_t l = 1; l <= 5; l++)
        CU_ASSERT_EQUAL(append_gen(w, l, 50), 0);
    qv_wal_close(w);
    struct coll c = { .maxlen = 50, .fail_at = 3 };
    w = open_wal(d2, QV_WAL_SYNC_NEVER, 0, 0, &c);
    CU_ASSERT_PTR_NULL(w);
    CU_ASSERT_EQUAL(qv_errno, QV_EIO);
    CU_ASSERT_EQUAL(c.count, 2);
    CU_ASSERT_TRUE(has(qv_errmsg(), "LSN 3"));
}

static void test_alloc_failures(void)
{
    char dir[96];
    uint64_t f[32];
    int ns = multi_seg_log(dir, sizeof dir, f, 32);
    CU_ASSERT_FATAL(ns >= 3);
    struct qv_mem_stats m0, m1;
    qv_mem_stats(QV_MEM_IO, &m0);
    int opened = 0, enomem = 0, other = 0;
    for (long k = 0; k < 40; k++) {
        struct coll c = { .maxlen = 3000 };
        qv_alloc_fail_after(k);
        struct qv_wal *w = open_wal(dir, QV_WAL_SYNC_ALWAYS, QV_WAL_SEGMENT_MIN, 0, &c);
        qv_alloc_fail_after(-1);
        if (w) {
            opened++;
            if (c.count != NMS || c.bad)
                other++;
            qv_wal_close(w);
        } else if (qv_errno == QV_ENOMEM) {
            enomem++;
        } else {
            other++;
        }
    }
    qv_mem_stats(QV_MEM_IO, &m1);
    CU_ASSERT(enomem >= 3);
    CU_ASSERT(opened >= 1);
    CU_ASSERT_EQUAL(other, 0);
    CU_ASSERT_EQUAL(m1.live_bytes, m0.live_bytes);
    CU_ASSERT_EQUAL(m1.live_blocks, m0.live_blocks);

    /* an append whose batch buffer cannot grow fails alone */
    struct qv_wal *w = open_wal(dir, QV_WAL_SYNC_ALWAYS, QV_WAL_SEGMENT_MIN, 0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    qv_alloc_fail_after(0);
    CU_ASSERT_EQUAL(append_gen(w, NMS + 1, 3000), QV_ENOMEM);
    qv_alloc_fail_after(-1);
    CU_ASSERT_EQUAL(append_gen(w, NMS + 1, 3000), 0);
    qv_wal_close(w);
    qv_mem_stats(QV_MEM_IO, &m1);
    CU_ASSERT_EQUAL(m1.live_bytes, m0.live_bytes);
}

int main(void)
{
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    CU_pSuite s = CU_add_suite("wal", init, fini);
    CU_add_test(s, "format: segment header and record as documented", test_format);
    CU_add_test(s, "append, reopen, replay: sizes 0..64 KiB across rolls",
                test_roundtrip_rolls);
    CU_add_test(s, "replay: after_lsn skips what the snapshot covers", test_after_lsn);
    CU_add_test(s, "group commit: 8 threads x 2000 always, dense LSNs, few fsyncs",
                test_group_commit);
    CU_add_test(s, "policies: always (1 thread), interval, never: appends/s",
                test_policies);
    CU_add_test(s, "async: append_async + wait, one batch", test_async);
    CU_add_test(s, "recover: torn tail truncated at every byte", test_torn_tail);
    CU_add_test(s, "recover: flipped byte mid-log refused, file+offset named",
                test_flip_middle);
    CU_add_test(s, "recover: flipped byte in the final record = torn", test_flip_final);
    CU_add_test(s, "recover: damage in a closed segment or a gap refused",
                test_closed_segment);
    CU_add_test(s, "recover: segment header corruption refused", test_header_corrupt);
    CU_add_test(s, "recover: truncate_upto removes covered segments",
                test_truncate_upto);
    CU_add_test(s, "recover: ENOSPC/EIO/short write leave the file as it was",
                test_full_disk);
    CU_add_test(s, "recover: failed fdatasync refuses writes until restart",
                test_fsync_failure);
    CU_add_test(s, "interval: appends never wait for the background fdatasync",
                test_interval_sync);
    CU_add_test(s, "recover: close/open 100 times, every policy", test_reopen_many);
    CU_add_test(s, "errors: bad options and arguments", test_errors);
    CU_add_test(s, "errors: allocation failures, no leak", test_alloc_failures);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failed = CU_get_number_of_failures();
    int err = CU_get_error();
    CU_cleanup_registry();
    return failed || err ? 1 : 0;
}
