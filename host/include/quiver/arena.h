/*
 * arena.h - memory for vectors: large, 64-byte aligned, huge-page backed,
 * NUMA-bound.
 *
 * An arena hands out zeroed, 64-byte aligned blocks carved from big chunks
 * mapped with mmap.  Each chunk is tried, in order:
 *   1. MAP_HUGETLB (2 MiB pages reserved in /proc/sys/vm/nr_hugepages),
 *   2. an ordinary mapping with madvise(MADV_HUGEPAGE) (transparent huge
 *      pages; the kernel may or may not honour it),
 *   3. an ordinary mapping,
 * as allowed by the hugepages mode, and bound to a NUMA node with libnuma's
 * numa_tonode_memory() when numa_node >= 0 and NUMA is available.  Where
 * neither huge pages nor NUMA are available the arena still works: it says
 * what it got in qv_arena_stats().  Blocks are never freed one by one: the
 * arena is released whole (segments live as long as their arena).
 *
 * Thread-safety: an arena is used by one thread at a time (the owner of the
 * segment store); stats may be read concurrently.
 */
#ifndef QUIVER_ARENA_H
#define QUIVER_ARENA_H

#include <stddef.h>
#include <stdint.h>

enum qv_huge_mode {
    QV_HUGE_AUTO = 0,   /* hugetlb, else THP, else plain */
    QV_HUGE_OFF  = 1,   /* plain pages only */
    QV_HUGE_ON   = 2,   /* hugetlb required: fail if none can be reserved */
    QV_HUGE_THP  = 3,   /* THP via madvise, never hugetlb */
};

enum qv_page_kind {
    QV_PAGES_PLAIN = 0,
    QV_PAGES_THP = 1,
    QV_PAGES_HUGETLB = 2,
};

struct qv_arena_opts {
    size_t chunk_size;          /* bytes per chunk; 0 = 64 MiB.  Rounded up
                                   to 2 MiB.  A larger block gets its own
                                   chunk. */
    int numa_node;              /* -1: no binding (first touch) */
    enum qv_huge_mode hugepages;
};

struct qv_arena_stats {
    size_t bytes_mapped;        /* sum of chunk sizes */
    size_t bytes_used;          /* sum of block sizes handed out */
    unsigned chunks_hugetlb;
    unsigned chunks_thp;
    unsigned chunks_plain;
    int numa_node;              /* node bound to, -1 when unbound */
    int numa_available;         /* libnuma says NUMA is usable */
};

struct qv_arena;

/* Create an arena (no memory mapped until the first alloc).  opts NULL =
 * defaults.  Returns NULL and sets qv_errno: QV_EINVAL (numa_node beyond
 * the highest node), QV_ENOMEM. */
struct qv_arena *qv_arena_create(const struct qv_arena_opts *opts);

/* A zeroed block of size bytes, aligned to 64 bytes.  Returns NULL and
 * sets qv_errno: QV_ENOMEM (mmap failed or injected fault), QV_ENOTSUP
 * (hugepages = QV_HUGE_ON and no huge page could be had).  O(1). */
void *qv_arena_alloc(struct qv_arena *a, size_t size);

void qv_arena_stats(const struct qv_arena *a, struct qv_arena_stats *out);

/* Unmap every chunk.  qv_arena_free(NULL) is a no-op. */
void qv_arena_free(struct qv_arena *a);

/* Lower level, for single regions (used by arenas, index files): map size
 * bytes (rounded up to 2 MiB, the huge page size, whatever kind of pages
 * is obtained; the rounding costs address space only) per mode and node;
 * *kind says what was obtained (kind may be NULL).  The region is zeroed.
 * Returns NULL and sets qv_errno on failure: QV_EINVAL (size 0 or bad
 * mode), QV_ENOMEM (mmap failed or injected fault), QV_ENOTSUP (mode
 * QV_HUGE_ON without huge pages).  Free with qv_vmem_unmap(p, size) using
 * the same size. */
void *qv_vmem_map(size_t size, enum qv_huge_mode mode, int numa_node,
                  enum qv_page_kind *kind);
void qv_vmem_unmap(void *p, size_t size);

/* Parse "auto"|"off"|"on"|"thp"; -1 when unknown. */
int qv_huge_mode_parse(const char *s);

#endif
