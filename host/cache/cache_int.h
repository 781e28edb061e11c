/*
 * cache_int.h - shared internals of the query caches (see quiver/cache.h).
 *
 * Why three caches.  An exact repeat of a query (same vector bytes, k,
 * filter and search parameters, against the same data) has exactly the
 * same answer, so the result cache may return it with no engine work at
 * all.  A near repeat (a query a tiny distance from a cached one) very
 * likely has a near-identical answer: the semantic cache returns it only
 * when the caller opts in with a threshold, and says it was approximate.
 * Filtered queries spend their first step evaluating the predicate into a
 * row bitmap, O(rows x leaves / 64); the bitmap cache shares that bitmap
 * between all queries with the same predicate until the data changes.
 *
 * Result cache layout (result_cache.c).  S shards (a power of two), each
 * one mutex guarding a chained hash table with a fixed bucket array
 * (ceil(entries / S) rounded up to a power of two, so chains average
 * <= 1) and the shard's eviction lists.  The key hash's top bits choose
 * the shard, its low bits the bucket.  A hit compares every key field and
 * the query bytes (memcmp), never trusting the hash alone.  One entry is
 * one allocation:
 *
 *   OFFSET                     SIZE           MEANING
 *   0                          sizeof(entry)  header: links, key scalars,
 *                                             freq, tick, birth time
 *   hdr                        8 k            ids
 *   hdr + 8k                   4 dim          query vector
 *   hdr + 8k + 4dim            4 k            distances
 *   hdr + 12k + 4dim           flen + 1       filter text, NUL-terminated
 *
 * and its "bytes" (what the byte capacity counts) is that whole size.
 *
 * Eviction lists.  A shard has QV__LFU_LEVELS lists, one per access
 * frequency 1..63 (saturating), each ordered most recently used first,
 * and a bitmask of the non-empty ones.  The victim is the tail of the
 * lowest non-empty list: O(1) (one ctz).  Under LRU every entry stays at
 * level 1, so this is plain LRU.  Under LFU an entry starts at 1 and each
 * hit moves it up one level; ties at a level go to the least recently
 * used.  Aging: after 8 x (entries per shard) hits in a shard, every
 * frequency is halved (minimum 1) by merging level pairs in recency
 * order (the `tick` stamp of the last access), O(entries in the shard),
 * amortised O(1) per hit; so a formerly hot entry that went cold is
 * eventually evicted.  Inserts do not count toward aging.
 *
 * TTL.  Each entry records its birth time from opts.clock; a lookup that
 * finds age >= ttl_ms removes it (an expiration) and misses.  Expired
 * entries nobody asks for again leave by eviction.
 *
 * Locks are held for O(dim + k) copies and compares only; counters are
 * relaxed atomics outside any lock.
 */
#ifndef QUIVER_CACHE_INT_H
#define QUIVER_CACHE_INT_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "quiver/cache.h"

#define QV__LFU_LEVELS 64       /* levels 1..63 used; bit f = level f */

#define QV__CONTAINER(ptr, type, member) \
    ((type *)(void *)((char *)(ptr) - offsetof(type, member)))

/* Intrusive circular doubly linked list; the head is a sentinel. */
struct qv__dlink {
    struct qv__dlink *prev, *next;
};

static inline void qv__dlist_init(struct qv__dlink *h)
{
    h->prev = h->next = h;
}

static inline int qv__dlist_empty(const struct qv__dlink *h)
{
    return h->next == h;
}

static inline void qv__dlist_push_head(struct qv__dlink *h, struct qv__dlink *e)
{
    e->next = h->next;
    e->prev = h;
    h->next->prev = e;
    h->next = e;
}

static inline void qv__dlist_push_tail(struct qv__dlink *h, struct qv__dlink *e)
{
    qv__dlist_push_head(h->prev, e);
}

static inline void qv__dlist_remove(struct qv__dlink *e)
{
    e->prev->next = e->next;
    e->next->prev = e->prev;
    e->prev = e->next = e;
}

/* Counters of one cache; relaxed atomics. */
struct qv__cache_counters {
    atomic_uint_fast64_t hits, misses, inserts, updates, evictions, expirations,
        invalidations, entries, bytes;
};

#define QV__CNT_ADD(ctr, field, n) \
    atomic_fetch_add_explicit(&(ctr)->field, (n), memory_order_relaxed)
#define QV__CNT_SUB(ctr, field, n) \
    atomic_fetch_sub_explicit(&(ctr)->field, (n), memory_order_relaxed)

void qv__cache_counters_read(const struct qv__cache_counters *c, struct qv_cache_stats *out);

/* Key checks shared by the result and semantic caches: 0 or QV_EINVAL
 * with a message naming `what` and the field. */
int qv__cache_key_check(const struct qv_cache_key *key, const char *what);

/* Hash of every key field (filter text and query bytes included). */
uint64_t qv__cache_key_hash(const struct qv_cache_key *key);

/* Test hook: when set, every result and bitmap cache key hash h becomes
 * hook(h).  A constant hook makes all keys collide, which proves that a
 * hit comes from the full key comparison, not the hash.  NULL normally;
 * set only while no cache is in use. */
extern uint64_t (*qv__cache_hash_hook)(uint64_t h);

/* Validate the fields of opts that the caches in `which` (QV__CACHE_*
 * bits; shards always) use, so that one cache's "off" value (0) never
 * stops another from being created; 0 or QV_EINVAL naming the [cache]
 * key. */
#define QV__CACHE_RESULT 1u         /* policy, entries, bytes */
#define QV__CACHE_SEMANTIC 2u       /* semantic_entries */
#define QV__CACHE_BITMAP 4u         /* bitmap_bytes */
int qv__cache_opts_check(const struct qv_cache_opts *o, unsigned which);

/* The clock of opts (qv_now_ns when NULL). */
int64_t qv__cache_now(qv_cache_clock_fn clock);

#endif
