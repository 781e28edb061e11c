/*
 * alloc.h - the one heap allocator (STYLE rule 9).
 *
 * Every heap allocation in Quiver goes through qv_malloc/qv_free with a tag
 * naming its owner; per-tag counters (live bytes, live blocks, total
 * allocations, failures) let tests prove that nothing leaks and operators see
 * where memory goes.  A fault-injection hook lets tests make the N-th
 * allocation fail, to prove every caller handles ENOMEM without a leak or a
 * crash.  Large vector memory does not come from here but from arenas
 * (arena.h), which are themselves accounted under QV_MEM_ARENA.
 *
 * All functions are thread-safe (atomic counters).  A 64-byte header before
 * each block records tag and size, so qv_free needs no size argument and
 * every block is 64-byte aligned.
 */
#ifndef QUIVER_ALLOC_H
#define QUIVER_ALLOC_H

#include <stddef.h>
#include <stdint.h>

enum qv_mem_tag {
    QV_MEM_MISC = 0,
    QV_MEM_CONFIG,
    QV_MEM_IO,
    QV_MEM_KERNEL,
    QV_MEM_INDEX,
    QV_MEM_POOL,
    QV_MEM_ARENA,
    QV_MEM_BENCH,
    QV_MEM_TEST,
    QV_MEM_CACHE,
    QV_MEM_METRICS,
    QV_MEM_ROUTER,
    QV_MEM_SERVER,
    QV_MEM__COUNT
};

/* Allocate size bytes, 64-byte aligned, for tag.  Returns NULL and sets
 * qv_errno = QV_ENOMEM on failure (real or injected).  size 0 allocates a
 * valid minimal block. */
void *qv_malloc(size_t size, enum qv_mem_tag tag);
/* As qv_malloc, zero-filled; n * size overflow fails with QV_ENOMEM. */
void *qv_calloc(size_t n, size_t size, enum qv_mem_tag tag);
/* Resize a block from qv_malloc (NULL acts as qv_malloc).  On failure the
 * old block is untouched and NULL is returned. */
void *qv_realloc(void *p, size_t size, enum qv_mem_tag tag);
/* Copy of a NUL-terminated string. */
char *qv_strdup(const char *s, enum qv_mem_tag tag);
/* Release a block from qv_malloc/qv_calloc/qv_realloc/qv_strdup.
 * qv_free(NULL) is a no-op. */
void qv_free(void *p);

struct qv_mem_stats {
    int64_t live_bytes;     /* bytes currently allocated */
    int64_t live_blocks;    /* blocks currently allocated */
    uint64_t allocs;        /* successful allocations since start */
    uint64_t failures;      /* failed (or injected) allocations */
};

/* Counters of one tag (tag == QV_MEM__COUNT: the sum of all tags). */
void qv_mem_stats(enum qv_mem_tag tag, struct qv_mem_stats *out);
const char *qv_mem_tag_name(enum qv_mem_tag tag);

/* Account bytes allocated outside qv_malloc (arenas, mmap) under tag;
 * delta may be negative; a positive delta_blocks also counts as that many
 * allocations.  Used by arena.c. */
void qv_mem_account(enum qv_mem_tag tag, int64_t delta_bytes, int64_t delta_blocks);
/* Count one failed allocation made outside qv_malloc (an arena chunk
 * mapping) under tag.  Used by arena.c. */
void qv__mem_failed(enum qv_mem_tag tag);

/*
 * Fault injection, for tests.  qv_alloc_fail_after(n): the allocation after
 * the next n successful ones fails, and every later one succeeds again
 * (n = 0: the very next one fails).  qv_alloc_fail_after(-1) disarms.  The
 * hook counts qv_malloc/calloc/realloc/strdup and arena chunk mappings.
 * Process-wide; tests that use it must not run allocations in parallel.
 */
void qv_alloc_fail_after(long n);
/* Nonzero when the fault hook says this allocation must fail (consumes one
 * step of the countdown).  Called by every allocation path. */
int qv__alloc_should_fail(void);

#endif
