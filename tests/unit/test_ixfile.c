/*
 * test_ixfile.c - index file container: CRC-32C known answers; write ->
 * open gives the same sections at aligned offsets; every kind of damage
 * (bad magic, other version, other type, truncation, a flipped byte in
 * the table or in a section, appended bytes) is refused with the right
 * code and the file's name in the message.
 */
#include <CUnit/Basic.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "quiver/errors.h"
#include "quiver/ixfile.h"

static char dir[64];
static char path[128];
static uint8_t big[100000];
static uint32_t small[7] = { 1, 2, 3, 4, 5, 6, 7 };

static int init(void)
{
    snprintf(dir, sizeof dir, "/tmp/qv-ixfile-XXXXXX");
    if (!mkdtemp(dir))
        return 1;
    snprintf(path, sizeof path, "%s/index.qvx", dir);
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (uint8_t)(i * 131 + 7);
    return 0;
}

static int fini(void)
{
    unlink(path);
    rmdir(dir);
    return 0;
}

static void test_crc32c(void)
{
    CU_ASSERT_EQUAL(qv_crc32c(0, "123456789", 9), 0xE3069283u);
    CU_ASSERT_EQUAL(qv_crc32c_sw(0, "123456789", 9), 0xE3069283u);
    CU_ASSERT_EQUAL(qv_crc32c(0, "", 0), 0u);
    /* incremental equals one shot; hw equals sw at every length/offset */
    uint32_t a = qv_crc32c(0, big, 1000);
    uint32_t b = qv_crc32c(qv_crc32c(0, big, 333), big + 333, 667);
    CU_ASSERT_EQUAL(a, b);
    int ok = 1;
    for (size_t off = 0; off < 9; off++)
        for (size_t len = 0; len < 200; len++)
            if (qv_crc32c(0, big + off, len) != qv_crc32c_sw(0, big + off, len))
                ok = 0;
    CU_ASSERT_TRUE(ok);
}

static int write_sample(void)
{
    struct qv_ixfile_writer w;
    qv_ixfile_writer_init(&w, path, QV_IX_HNSW);
    if (qv_ixfile_add(&w, QV_FOURCC('B', 'I', 'G', ' '), big, sizeof big) ||
        qv_ixfile_add(&w, QV_FOURCC('S', 'M', 'L', ' '), small, sizeof small) ||
        qv_ixfile_add(&w, QV_FOURCC('N', 'O', 'N', 'E'), NULL, 0))
        return -1;
    return qv_ixfile_commit(&w);
}

static void test_roundtrip(void)
{
    CU_ASSERT_EQUAL_FATAL(write_sample(), 0);
    struct qv_ixfile f;
    CU_ASSERT_EQUAL_FATAL(qv_ixfile_open(&f, path, QV_IX_HNSW), 0);
    uint64_t size;
    const void *p = qv_ixfile_section(&f, QV_FOURCC('B', 'I', 'G', ' '), &size);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    CU_ASSERT_EQUAL(size, sizeof big);
    CU_ASSERT_EQUAL(memcmp(p, big, sizeof big), 0);
    CU_ASSERT_EQUAL((uintptr_t)p % QV_IXFILE_ALIGN, 0);
    p = qv_ixfile_section(&f, QV_FOURCC('S', 'M', 'L', ' '), &size);
    CU_ASSERT_EQUAL(size, sizeof small);
    CU_ASSERT_EQUAL(memcmp(p, small, sizeof small), 0);
    qv_ixfile_section(&f, QV_FOURCC('N', 'O', 'N', 'E'), &size);
    CU_ASSERT_EQUAL(size, 0);
    CU_ASSERT_PTR_NULL(qv_ixfile_section(&f, QV_FOURCC('X', 'X', 'X', 'X'), &size));
    qv_ixfile_close(&f);
    qv_ixfile_close(&f);                /* twice is harmless */
    /* no temporary left behind */
    char tmp[160];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    CU_ASSERT_NOT_EQUAL(access(tmp, F_OK), 0);
}

/* Sections of several 8 MiB windows and odd sizes come back byte for byte
 * written with O_DIRECT (this directory is on the build's disk) and
 * through the page cache (qv_ixfile_set_direct(0): the path taken where
 * a filesystem refuses O_DIRECT). */
static void test_large_direct_and_buffered(void)
{
    const size_t n1 = (20u << 20) + 12345, n2 = 3 * 4096 + 1;
    uint8_t *a = malloc(n1), *b = malloc(n2);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (size_t i = 0; i < n1; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        a[i] = (uint8_t)x;
    }
    for (size_t i = 0; i < n2; i++)
        b[i] = (uint8_t)(i * 7);
    char p[160], probe[160];
    snprintf(p, sizeof p, "%s/large.qvx", dir);
    snprintf(probe, sizeof probe, "%s/probe", dir);
    int fd = open(probe, O_WRONLY | O_CREAT | O_DIRECT, 0600);
    printf("\n    %s takes O_DIRECT: %s ", dir, fd >= 0 ? "yes" : "no");
    if (fd >= 0)
        close(fd);
    unlink(probe);
    for (int direct = 1; direct >= 0; direct--) {
        qv_ixfile_set_direct(direct);
        struct qv_ixfile_writer w;
        qv_ixfile_writer_init(&w, p, QV_IX_FLAT);
        CU_ASSERT_EQUAL(qv_ixfile_add(&w, QV_FOURCC('A', ' ', ' ', ' '), a, n1), 0);
        CU_ASSERT_EQUAL(qv_ixfile_add(&w, QV_FOURCC('B', ' ', ' ', ' '), b, n2), 0);
        CU_ASSERT_EQUAL_FATAL(qv_ixfile_commit(&w), 0);
        struct qv_ixfile f;
        CU_ASSERT_EQUAL_FATAL(qv_ixfile_open(&f, p, QV_IX_FLAT), 0);
        uint64_t size;
        const void *q = qv_ixfile_section(&f, QV_FOURCC('A', ' ', ' ', ' '), &size);
        CU_ASSERT(q != NULL && size == n1 && memcmp(q, a, n1) == 0);
        q = qv_ixfile_section(&f, QV_FOURCC('B', ' ', ' ', ' '), &size);
        CU_ASSERT(q != NULL && size == n2 && memcmp(q, b, n2) == 0);
        CU_ASSERT_EQUAL(f.size % QV_IXFILE_ALIGN, 0);
        qv_ixfile_close(&f);
        unlink(p);
    }
    qv_ixfile_set_direct(1);
    free(a);
    free(b);
}

static void test_writer_errors(void)
{
    struct qv_ixfile_writer w;
    qv_ixfile_writer_init(&w, path, QV_IX_FLAT);
    CU_ASSERT_EQUAL(qv_ixfile_add(&w, 1, small, 4), 0);
    CU_ASSERT_EQUAL(qv_ixfile_add(&w, 1, small, 4), QV_EEXIST);
    CU_ASSERT_EQUAL(qv_ixfile_add(&w, 2, NULL, 4), QV_EINVAL);
    for (uint32_t t = 2; t < QV_IXFILE_MAX_SECTIONS + 1; t++)
        qv_ixfile_add(&w, t, small, 4);
    CU_ASSERT_EQUAL(qv_ixfile_add(&w, 999, small, 4), QV_ENOSPC);
    qv_ixfile_writer_init(&w, "/nonexistent-dir/x.qvx", QV_IX_FLAT);
    CU_ASSERT_EQUAL(qv_ixfile_commit(&w), QV_EIO);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "/nonexistent-dir/x.qvx"));
}

/* Apply damage at byte `off` (xor) or truncate to `trunc` bytes, open,
 * expect code. */
static void damaged(long off, long trunc, int append, enum qv_ix_type type, int code)
{
    CU_ASSERT_EQUAL_FATAL(write_sample(), 0);
    int fd = open(path, O_RDWR);
    CU_ASSERT_FATAL(fd >= 0);
    if (off >= 0) {
        uint8_t b;
        CU_ASSERT_EQUAL(pread(fd, &b, 1, off), 1);
        b ^= 0x40;
        CU_ASSERT_EQUAL(pwrite(fd, &b, 1, off), 1);
    }
    if (trunc >= 0)
        CU_ASSERT_EQUAL(ftruncate(fd, trunc), 0);
    if (append) {
        struct stat st;
        fstat(fd, &st);
        CU_ASSERT_EQUAL(pwrite(fd, "x", 1, st.st_size), 1);
    }
    close(fd);
    struct qv_ixfile f;
    int rc = qv_ixfile_open(&f, path, type);
    CU_ASSERT_EQUAL(rc, code);
    if (rc != code)
        fprintf(stderr, "\n  damage off %ld trunc %ld: got %d (%s)\n", off, trunc, rc,
                qv_errmsg());
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), path));
    CU_ASSERT_PTR_NULL(f.map);
}

static void test_damage(void)
{
    damaged(0, -1, 0, QV_IX_HNSW, QV_EFORMAT);          /* magic */
    damaged(8, -1, 0, QV_IX_HNSW, QV_EFORMAT);          /* version */
    damaged(-1, -1, 0, QV_IX_FLAT, QV_EFORMAT);         /* another type */
    damaged(12, -1, 0, QV_IX_HNSW, QV_ECORRUPT);        /* type byte: header crc */
    damaged(70, -1, 0, QV_IX_HNSW, QV_ECORRUPT);        /* section table */
    damaged(4096 + 500, -1, 0, QV_IX_HNSW, QV_ECORRUPT); /* inside BIG */
    damaged(-1, 4096 + 100, 0, QV_IX_HNSW, QV_ECORRUPT); /* truncated */
    damaged(-1, 40, 0, QV_IX_HNSW, QV_ECORRUPT);        /* magic, then cut short */
    damaged(-1, 4, 0, QV_IX_HNSW, QV_EFORMAT);          /* not even a magic */
    damaged(-1, -1, 1, QV_IX_HNSW, QV_ECORRUPT);        /* appended */
    damaged(4096 + 100000 + 7, -1, 0, QV_IX_HNSW, QV_ECORRUPT); /* BIG's padding */
    damaged(1000, -1, 0, QV_IX_HNSW, QV_ECORRUPT);      /* padding after the table */
    struct qv_ixfile f;
    CU_ASSERT_EQUAL(qv_ixfile_open(&f, "/nonexistent.qvx", QV_IX_HNSW), QV_ENOENT);
    CU_ASSERT_EQUAL(qv_ixfile_open(&f, dir, QV_IX_HNSW), QV_EIO);
}

int main(void)
{
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    CU_pSuite s = CU_add_suite("ixfile", init, fini);
    CU_add_test(s, "CRC-32C known answers, hw equals sw", test_crc32c);
    CU_add_test(s, "write then open: same sections, aligned", test_roundtrip);
    CU_add_test(s, "large sections, O_DIRECT and page cache paths", test_large_direct_and_buffered);
    CU_add_test(s, "writer errors", test_writer_errors);
    CU_add_test(s, "damaged files refused, file named", test_damage);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failed = CU_get_number_of_failures();
    int err = CU_get_error();
    CU_cleanup_registry();
    return failed || err ? 1 : 0;
}
