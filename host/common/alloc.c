/*
 * alloc.c - the one heap allocator (alloc.h).
 *
 * Block layout: every qv_malloc block is one posix_memalign(64) allocation
 * of QV_ALLOC_HDR + size bytes; the caller gets the address just past the
 * header, which is therefore 64-byte aligned too.
 *
 *   OFFSET  SIZE  MEANING
 *   0       8     magic: QV_ALLOC_MAGIC while live, QV_ALLOC_DEAD once freed
 *   8       8     size the caller asked for
 *   16      4     tag (enum qv_mem_tag)
 *   20      44    padding up to 64 bytes
 *   64      size  the caller's bytes
 *
 * The magic lets qv_free() catch a pointer that did not come from here or
 * a double free, and abort with a message instead of corrupting the heap.
 *
 * Counters: one cache-line aligned group of relaxed atomics per tag, so
 * threads allocating under different tags do not share a line.  They are
 * statistics, not synchronisation: relaxed order is enough.
 *
 * Fault injection: one process-wide countdown (-1: disarmed).  Each
 * allocation attempt consumes one step; the attempt that finds it at 0
 * fails and disarms it.  The countdown is updated with compare-and-swap so
 * that exactly one attempt fails even when threads race.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quiver/alloc.h"
#include "quiver/errors.h"

#define QV_ALLOC_HDR    64
#define QV_ALLOC_ALIGN  64
#define QV_ALLOC_MAGIC  0x51564d454d4c4956ULL   /* "QVMEMLIV" */
#define QV_ALLOC_DEAD   0x51564d454d444541ULL   /* "QVMEMDEA" */

struct alloc_hdr {
    uint64_t magic;
    uint64_t size;
    uint32_t tag;
    uint8_t pad[QV_ALLOC_HDR - 20];
};

_Static_assert(sizeof(struct alloc_hdr) == QV_ALLOC_HDR,
               "allocation header must be exactly 64 bytes");

struct tag_counters {
    _Alignas(64) atomic_llong live_bytes;
    atomic_llong live_blocks;
    atomic_ullong allocs;
    atomic_ullong failures;
};

static struct tag_counters counters[QV_MEM__COUNT];
static atomic_long fail_countdown = -1;

static const char *const tag_names[QV_MEM__COUNT] = {
    [QV_MEM_MISC]   = "misc",
    [QV_MEM_CONFIG] = "config",
    [QV_MEM_IO]     = "io",
    [QV_MEM_KERNEL] = "kernel",
    [QV_MEM_INDEX]  = "index",
    [QV_MEM_POOL]   = "pool",
    [QV_MEM_ARENA]  = "arena",
    [QV_MEM_BENCH]  = "bench",
    [QV_MEM_TEST]   = "test",
    [QV_MEM_CACHE]  = "cache",
    [QV_MEM_METRICS] = "metrics",
    [QV_MEM_ROUTER] = "router",
    [QV_MEM_SERVER] = "server",
};

/* An out-of-range tag is a caller bug; count it as misc rather than index
 * outside the table. */
static inline unsigned tag_index(enum qv_mem_tag tag)
{
    return (unsigned)tag < QV_MEM__COUNT ? (unsigned)tag : QV_MEM_MISC;
}

static struct alloc_hdr *hdr_of(void *p)
{
    struct alloc_hdr *h = (struct alloc_hdr *)((char *)p - QV_ALLOC_HDR);

    if (h->magic != QV_ALLOC_MAGIC) {
        fprintf(stderr, "quiver: qv_free/qv_realloc(%p): %s; every block "
                "must come from qv_malloc and be freed once\n", p,
                h->magic == QV_ALLOC_DEAD ? "block already freed"
                                          : "not a qv_malloc block");
        abort();
    }
    return h;
}

static void *fail(size_t size, unsigned t, int injected)
{
    atomic_fetch_add_explicit(&counters[t].failures, 1, memory_order_relaxed);
    qv_seterr(QV_ENOMEM, "out of memory: %zu bytes for %s%s", size,
              tag_names[t], injected ? " (injected fault)" : "");
    return NULL;
}

/* The allocation itself, after the fault hook was consulted. */
static void *alloc_block(size_t size, unsigned t)
{
    struct alloc_hdr *h;
    void *raw = NULL;
    size_t want;

    if (size > SIZE_MAX - QV_ALLOC_HDR - 1)
        return fail(size, t, 0);
    want = QV_ALLOC_HDR + (size ? size : 1);
    if (posix_memalign(&raw, QV_ALLOC_ALIGN, want) != 0)
        return fail(size, t, 0);
    h = raw;
    h->magic = QV_ALLOC_MAGIC;
    h->size = size;
    h->tag = t;
    atomic_fetch_add_explicit(&counters[t].live_bytes, (long long)size,
                              memory_order_relaxed);
    atomic_fetch_add_explicit(&counters[t].live_blocks, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&counters[t].allocs, 1, memory_order_relaxed);
    return (char *)raw + QV_ALLOC_HDR;
}

void *qv_malloc(size_t size, enum qv_mem_tag tag)
{
    unsigned t = tag_index(tag);

    if (qv__alloc_should_fail())
        return fail(size, t, 1);
    return alloc_block(size, t);
}

void *qv_calloc(size_t n, size_t size, enum qv_mem_tag tag)
{
    unsigned t = tag_index(tag);
    void *p;

    if (size != 0 && n > SIZE_MAX / size)
        return fail(SIZE_MAX, t, 0);
    p = qv_malloc(n * size, tag);
    if (p != NULL)
        memset(p, 0, n * size);
    return p;
}

void *qv_realloc(void *p, size_t size, enum qv_mem_tag tag)
{
    struct alloc_hdr *h;
    size_t old_size;
    void *q;

    if (p == NULL)
        return qv_malloc(size, tag);
    h = hdr_of(p);
    old_size = h->size;
    /* Aligned blocks cannot go through realloc(): allocate, copy, free.
     * On failure p is untouched. */
    q = qv_malloc(size, tag);
    if (q == NULL)
        return NULL;
    memcpy(q, p, old_size < size ? old_size : size);
    qv_free(p);
    return q;
}

char *qv_strdup(const char *s, enum qv_mem_tag tag)
{
    size_t len = strlen(s) + 1;
    char *d = qv_malloc(len, tag);

    if (d != NULL)
        memcpy(d, s, len);
    return d;
}

void qv_free(void *p)
{
    struct alloc_hdr *h;
    unsigned t;

    if (p == NULL)
        return;
    h = hdr_of(p);
    t = tag_index((enum qv_mem_tag)h->tag);
    atomic_fetch_sub_explicit(&counters[t].live_bytes, (long long)h->size,
                              memory_order_relaxed);
    atomic_fetch_sub_explicit(&counters[t].live_blocks, 1, memory_order_relaxed);
    h->magic = QV_ALLOC_DEAD;
    free(h);
}

void qv_mem_stats(enum qv_mem_tag tag, struct qv_mem_stats *out)
{
    unsigned t, first, last;

    memset(out, 0, sizeof(*out));
    if ((unsigned)tag >= QV_MEM__COUNT) {
        first = 0;
        last = QV_MEM__COUNT - 1;
    } else {
        first = last = (unsigned)tag;
    }
    for (t = first; t <= last; t++) {
        out->live_bytes += atomic_load_explicit(&counters[t].live_bytes,
                                                memory_order_relaxed);
        out->live_blocks += atomic_load_explicit(&counters[t].live_blocks,
                                                 memory_order_relaxed);
        out->allocs += atomic_load_explicit(&counters[t].allocs,
                                            memory_order_relaxed);
        out->failures += atomic_load_explicit(&counters[t].failures,
                                              memory_order_relaxed);
    }
}

const char *qv_mem_tag_name(enum qv_mem_tag tag)
{
    if ((unsigned)tag >= QV_MEM__COUNT)
        return "all";
    return tag_names[tag];
}

void qv_mem_account(enum qv_mem_tag tag, int64_t delta_bytes, int64_t delta_blocks)
{
    unsigned t = tag_index(tag);

    atomic_fetch_add_explicit(&counters[t].live_bytes, delta_bytes,
                              memory_order_relaxed);
    atomic_fetch_add_explicit(&counters[t].live_blocks, delta_blocks,
                              memory_order_relaxed);
    if (delta_blocks > 0)
        atomic_fetch_add_explicit(&counters[t].allocs, (unsigned long long)delta_blocks,
                                  memory_order_relaxed);
}

void qv__mem_failed(enum qv_mem_tag tag)
{
    atomic_fetch_add_explicit(&counters[tag_index(tag)].failures, 1,
                              memory_order_relaxed);
}

void qv_alloc_fail_after(long n)
{
    atomic_store_explicit(&fail_countdown, n < 0 ? -1 : n, memory_order_relaxed);
}

int qv__alloc_should_fail(void)
{
    long c = atomic_load_explicit(&fail_countdown, memory_order_relaxed);

    while (c >= 0) {
        long next = c == 0 ? -1 : c - 1;

        if (atomic_compare_exchange_weak_explicit(&fail_countdown, &c, next,
                                                  memory_order_relaxed,
                                                  memory_order_relaxed))
            return c == 0;
    }
    return 0;
}
