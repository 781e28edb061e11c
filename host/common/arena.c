/*
 * arena.c - huge-page backed, NUMA-bound memory for vectors (arena.h).
 *
 * Regions (qv_vmem_map)
 * ---------------------
 * Every region is rounded up to 2 MiB, whatever page kind it ends up with,
 * so that qv_vmem_unmap(p, size) can round the same way without knowing
 * the kind.  The rounding costs only address space: pages are populated on
 * first touch.  Per mode, in order:
 *
 *   AUTO  MAP_HUGETLB, else anonymous + madvise(MADV_HUGEPAGE), else plain
 *   ON    MAP_HUGETLB only; failure is QV_ENOTSUP with the sysctl to run
 *   THP   anonymous + madvise(MADV_HUGEPAGE), else plain
 *   OFF   plain
 *
 * For THP the region is carved 2 MiB-aligned out of a mapping 2 MiB larger
 * (head and tail unmapped), because the kernel only backs aligned 2 MiB
 * ranges with huge pages.  A region counts as THP when madvise accepted it
 * and /sys/kernel/mm/transparent_hugepage/enabled is not "[never]"; the
 * kernel may still back it with small pages under fragmentation.
 * NUMA: with numa_node >= 0 and libnuma reporting NUMA usable, the region
 * is bound with numa_tonode_memory() before anything touches it.  Each
 * region consumes one step of the allocator's fault-injection countdown.
 *
 * Arenas
 * ------
 * An arena is a singly linked list of chunks, newest first.  The list lives
 * inside the chunks themselves: the first 64 bytes of each chunk are its
 * header, so growing an arena needs no heap allocation.
 *
 *   OFFSET  SIZE            MEANING
 *   0       64              struct chunk_hdr: next chunk, size, page kind
 *   64      chunk_size-64   blocks, each 64-byte aligned and zero (fresh
 *                           anonymous memory; blocks are never reused)
 *
 * Blocks are carved by bumping an offset in the current chunk: O(1).  A
 * block that does not fit an empty chunk gets a chunk of its own, sized to
 * it, and the current chunk stays current so its tail is not wasted.
 * Mapped bytes are accounted under QV_MEM_ARENA (one block per chunk).
 */
#include <errno.h>
#include <fcntl.h>
#include <numa.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <unistd.h>

#include "quiver/alloc.h"
#include "quiver/arena.h"
#include "quiver/errors.h"

#ifndef MAP_HUGE_SHIFT
#define MAP_HUGE_SHIFT 26
#endif
#ifndef MAP_HUGE_2MB
#define MAP_HUGE_2MB (21 << MAP_HUGE_SHIFT)
#endif

#define QV_HUGE_2M          ((size_t)2 << 20)
#define QV_ARENA_CHUNK_DEF  ((size_t)64 << 20)
#define QV_ARENA_ALIGN      64
#define QV_CHUNK_HDR        64

struct chunk_hdr {
    struct chunk_hdr *next;
    size_t size;
    enum qv_page_kind kind;
};

_Static_assert(sizeof(struct chunk_hdr) <= QV_CHUNK_HDR,
               "chunk header must fit its 64-byte slot");

struct qv_arena {
    size_t chunk_size;
    int numa_node;              /* as requested; -1 none */
    int numa_bound;             /* node really bound to; -1 none */
    enum qv_huge_mode hugepages;
    struct chunk_hdr *chunks;   /* newest first */
    char *cur;                  /* chunk being carved (NULL before first) */
    size_t cur_off, cur_size;
    size_t bytes_mapped, bytes_used;    /* see stat_add() */
    unsigned nchunks[3];        /* per enum qv_page_kind */
};

static pthread_once_t probe_once = PTHREAD_ONCE_INIT;
static int numa_ok;             /* numa_available() >= 0 */
static int numa_max;            /* numa_max_node(), 0 when unavailable */
static int thp_never;           /* THP switched off system-wide */

static void probe_system(void)
{
    char buf[128];
    ssize_t n;
    int fd;

    numa_ok = numa_available() >= 0;
    numa_max = numa_ok ? numa_max_node() : 0;

    fd = open("/sys/kernel/mm/transparent_hugepage/enabled",
              O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        thp_never = 1;          /* kernel without THP */
        return;
    }
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    buf[n > 0 ? n : 0] = '\0';
    thp_never = strstr(buf, "[never]") != NULL;
}

static size_t round_up(size_t x, size_t to)
{
    return (x + to - 1) / to * to;
}

static long read_nr_hugepages(void)
{
    char buf[32];
    ssize_t n;
    int fd = open("/proc/sys/vm/nr_hugepages", O_RDONLY | O_CLOEXEC);

    if (fd < 0)
        return -1;
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    return strtol(buf, NULL, 10);
}

/* A 2 MiB-aligned anonymous region of size bytes (size a multiple of 2M). */
static void *map_aligned(size_t size)
{
    char *p, *aligned;
    size_t head, tail;

    p = mmap(NULL, size + QV_HUGE_2M, PROT_READ | PROT_WRITE,
             MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    aligned = (char *)round_up((uintptr_t)p, QV_HUGE_2M);
    head = (size_t)(aligned - p);
    tail = QV_HUGE_2M - head;
    if (head)
        munmap(p, head);
    if (tail)
        munmap(aligned + size, tail);
    return aligned;
}

void *qv_vmem_map(size_t size, enum qv_huge_mode mode, int numa_node,
                  enum qv_page_kind *kind)
{
    enum qv_page_kind got = QV_PAGES_PLAIN;
    void *p = MAP_FAILED;
    int err;

    pthread_once(&probe_once, probe_system);
    if (size == 0 || size > SIZE_MAX - 2 * QV_HUGE_2M)
        return qv_seterr(QV_EINVAL, "qv_vmem_map: size %zu is not a "
                         "mappable region size", size), NULL;
    if ((unsigned)mode > QV_HUGE_THP)
        return qv_seterr(QV_EINVAL, "qv_vmem_map: hugepages mode %d "
                         "unknown; expected auto, off, on or thp",
                         (int)mode), NULL;
    size = round_up(size, QV_HUGE_2M);

    if (qv__alloc_should_fail()) {
        qv__mem_failed(QV_MEM_ARENA);
        return qv_seterr(QV_ENOMEM, "out of memory: mapping %zu bytes "
                         "(injected fault)", size), NULL;
    }

    if (mode == QV_HUGE_AUTO || mode == QV_HUGE_ON) {
        p = mmap(NULL, size, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_HUGE_2MB,
                 -1, 0);
        if (p != MAP_FAILED) {
            got = QV_PAGES_HUGETLB;
        } else if (mode == QV_HUGE_ON) {
            err = errno;
            qv__mem_failed(QV_MEM_ARENA);
            return qv_seterr(QV_ENOTSUP, "hugepages = on: no 2 MiB huge "
                             "pages free for %zu bytes (%s; /proc/sys/vm/"
                             "nr_hugepages = %ld): reserve %zu more with "
                             "`sysctl vm.nr_hugepages=<total>`, or set "
                             "[memory] hugepages = auto", size, strerror(err),
                             read_nr_hugepages(), size / QV_HUGE_2M), NULL;
        }
    }
    if (p == MAP_FAILED && (mode == QV_HUGE_AUTO || mode == QV_HUGE_THP)) {
        p = map_aligned(size);
        if (p == NULL)
            p = MAP_FAILED;
        else if (!thp_never && madvise(p, size, MADV_HUGEPAGE) == 0)
            got = QV_PAGES_THP;
    }
    if (p == MAP_FAILED) {
        p = mmap(NULL, size, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) {
            err = errno;
            qv__mem_failed(QV_MEM_ARENA);
            return qv_seterr(err == ENOMEM ? QV_ENOMEM : -err,
                             "mmap of %zu bytes failed: %s", size,
                             strerror(err)), NULL;
        }
    }

    if (numa_node >= 0 && numa_ok && numa_node <= numa_max)
        numa_tonode_memory(p, size, numa_node);
    if (kind != NULL)
        *kind = got;
    return p;
}

void qv_vmem_unmap(void *p, size_t size)
{
    if (p == NULL || size == 0)
        return;
    munmap(p, round_up(size, QV_HUGE_2M));
}

int qv_huge_mode_parse(const char *s)
{
    static const char *const names[] = {
        [QV_HUGE_AUTO] = "auto", [QV_HUGE_OFF] = "off",
        [QV_HUGE_ON] = "on",     [QV_HUGE_THP] = "thp",
    };
    int i;

    if (s == NULL)
        return -1;
    for (i = 0; i < (int)(sizeof(names) / sizeof(names[0])); i++)
        if (strcasecmp(s, names[i]) == 0)
            return i;
    return -1;
}

struct qv_arena *qv_arena_create(const struct qv_arena_opts *opts)
{
    struct qv_arena_opts o = { 0, -1, QV_HUGE_AUTO };
    struct qv_arena *a;

    pthread_once(&probe_once, probe_system);
    if (opts != NULL)
        o = *opts;
    if (o.chunk_size == 0)
        o.chunk_size = QV_ARENA_CHUNK_DEF;
    if (o.chunk_size > SIZE_MAX / 2)
        return qv_seterr(QV_EINVAL, "arena chunk size %zu is too large",
                         o.chunk_size), NULL;
    if ((unsigned)o.hugepages > QV_HUGE_THP)
        return qv_seterr(QV_EINVAL, "[memory] hugepages mode %d unknown; "
                         "expected auto, off, on or thp",
                         (int)o.hugepages), NULL;
    if (o.numa_node < -1 || o.numa_node > numa_max)
        return qv_seterr(QV_EINVAL, "[memory] numa_node = %d: this machine's "
                         "highest NUMA node is %d%s; use -1 (no binding) or "
                         "0..%d", o.numa_node, numa_max,
                         numa_ok ? "" : " (NUMA unavailable)", numa_max), NULL;

    a = qv_calloc(1, sizeof(*a), QV_MEM_ARENA);
    if (a == NULL)
        return NULL;
    a->chunk_size = round_up(o.chunk_size, QV_HUGE_2M);
    a->numa_node = o.numa_node;
    a->numa_bound = (o.numa_node >= 0 && numa_ok) ? o.numa_node : -1;
    a->hugepages = o.hugepages;
    return a;
}

/* Statistics are written by the owner and may be read by any thread:
 * relaxed atomic stores keep those reads untorn. */
static void stat_add(size_t *field, size_t delta)
{
    __atomic_store_n(field, *field + delta, __ATOMIC_RELAXED);
}

/* Map a chunk of size bytes (multiple of 2M) and link it first. */
static struct chunk_hdr *arena_add_chunk(struct qv_arena *a, size_t size)
{
    enum qv_page_kind kind;
    struct chunk_hdr *c;

    c = qv_vmem_map(size, a->hugepages, a->numa_node, &kind);
    if (c == NULL)
        return NULL;
    c->next = a->chunks;
    c->size = size;
    c->kind = kind;
    a->chunks = c;
    stat_add(&a->bytes_mapped, size);
    __atomic_store_n(&a->nchunks[kind], a->nchunks[kind] + 1, __ATOMIC_RELAXED);
    qv_mem_account(QV_MEM_ARENA, (int64_t)size, 1);
    return c;
}

void *qv_arena_alloc(struct qv_arena *a, size_t size)
{
    struct chunk_hdr *c;
    size_t need;

    if (a == NULL)
        return qv_seterr(QV_EINVAL, "qv_arena_alloc: arena is NULL"), NULL;
    if (size > SIZE_MAX / 2)
        return qv_seterr(QV_ENOMEM, "out of memory: arena block of %zu "
                         "bytes", size), NULL;
    need = round_up(size ? size : 1, QV_ARENA_ALIGN);

    if (a->cur != NULL && a->cur_size - a->cur_off >= need) {
        void *p = a->cur + a->cur_off;

        a->cur_off += need;
        stat_add(&a->bytes_used, size);
        return p;
    }
    if (need > a->chunk_size - QV_CHUNK_HDR) {
        /* Its own chunk; the current one keeps serving small blocks. */
        c = arena_add_chunk(a, round_up(need + QV_CHUNK_HDR, QV_HUGE_2M));
        if (c == NULL)
            return NULL;
        stat_add(&a->bytes_used, size);
        return (char *)c + QV_CHUNK_HDR;
    }
    c = arena_add_chunk(a, a->chunk_size);
    if (c == NULL)
        return NULL;
    a->cur = (char *)c;
    a->cur_size = a->chunk_size;
    a->cur_off = QV_CHUNK_HDR + need;
    stat_add(&a->bytes_used, size);
    return (char *)c + QV_CHUNK_HDR;
}

void qv_arena_stats(const struct qv_arena *a, struct qv_arena_stats *out)
{
    pthread_once(&probe_once, probe_system);
    memset(out, 0, sizeof(*out));
    out->numa_available = numa_ok;
    out->numa_node = -1;
    if (a == NULL)
        return;
    out->bytes_mapped = __atomic_load_n(&a->bytes_mapped, __ATOMIC_RELAXED);
    out->bytes_used = __atomic_load_n(&a->bytes_used, __ATOMIC_RELAXED);
    out->chunks_hugetlb = __atomic_load_n(&a->nchunks[QV_PAGES_HUGETLB],
                                          __ATOMIC_RELAXED);
    out->chunks_thp = __atomic_load_n(&a->nchunks[QV_PAGES_THP],
                                      __ATOMIC_RELAXED);
    out->chunks_plain = __atomic_load_n(&a->nchunks[QV_PAGES_PLAIN],
                                        __ATOMIC_RELAXED);
    out->numa_node = a->numa_bound;
}

void qv_arena_free(struct qv_arena *a)
{
    struct chunk_hdr *c, *next;

    if (a == NULL)
        return;
    for (c = a->chunks; c != NULL; c = next) {
        size_t size = c->size;

        next = c->next;
        qv_mem_account(QV_MEM_ARENA, -(int64_t)size, -1);
        qv_vmem_unmap(c, size);
    }
    qv_free(a);
}
