/*
 * cache.h - query caches in front of the engines: exact results, semantic
 * (near-duplicate) results, and filter bitmaps.
 *
 *   qv_result_cache    key (collection, epoch, query bytes, k, filter text,
 *                      params hash) -> k (dist, id) pairs.  Striped locks;
 *                      LRU or LFU eviction, optional TTL.
 *   qv_semantic_cache  a query within a distance threshold of a cached
 *                      query (same collection, epoch, k, filter, params,
 *                      metric) reuses its results, flagged approximate.
 *   qv_bitmap_cache    (collection, epoch, normalised predicate text) -> a
 *                      refcounted row bitmap; LRU by bytes.
 *
 * Staleness.  The epoch is part of every key: the router passes the
 * collection's epoch from the index, and a write bumps it, so nothing
 * computed before the write can hit afterwards, even a result inserted
 * after the write by a slow worker.  The *_invalidate calls only reclaim
 * the old entries' memory early (and count them).
 *
 * The caches sit before all engine work: a hit skips the search.  They
 * take locks and allocate on insert, so they belong in the router's
 * request path, never inside kernels or dataplane loops.  All memory is
 * qv_malloc'ed under QV_MEM_CACHE.  Design notes: host/cache/cache_int.h.
 */
#ifndef QUIVER_CACHE_H
#define QUIVER_CACHE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "quiver/dist.h"

struct qv_config;

enum qv_cache_policy {
    QV_CACHE_LRU = 0,   /* evict the least recently used */
    QV_CACHE_LFU = 1,   /* evict the least frequently used; ties: LRU */
};

/* Clock in nanoseconds (monotonic).  NULL in opts means qv_now_ns. */
typedef int64_t (*qv_cache_clock_fn)(void);

struct qv_cache_opts {
    enum qv_cache_policy policy;    /* result cache eviction */
    uint64_t entries;               /* result cache: max entries, >= 1 */
    uint64_t bytes;                 /* result cache: max bytes, >= 1024 */
    uint64_t ttl_ms;                /* result + semantic: 0 = no expiry */
    uint32_t shards;                /* result cache locks, 1..1024; rounded
                                       up to a power of two */
    uint32_t semantic_entries;      /* semantic: slots per collection, >= 1 */
    uint64_t bitmap_bytes;          /* bitmap cache: max bytes, >= 1024 */
    qv_cache_clock_fn clock;        /* tests inject a fake clock; NULL = real */
};

/* Defaults: lru, 100000 entries, 256 MiB, ttl off, 16 shards, 1024
 * semantic slots, 64 MiB of bitmaps, real clock.  Cannot fail. */
void qv_cache_opts_default(struct qv_cache_opts *o);

/*
 * qv_cache_opts_from_config - defaults, overridden by the [cache] keys
 * policy (lru|lfu), entries, bytes, ttl_ms, shards, semantic_entries,
 * bitmap_bytes.  A key the schema does not (yet) declare keeps its
 * default.  Each cache can be off on its own: entries = 0 or bytes = 0
 * (result), semantic_entries = 0, bitmap_bytes = 0; only the keys of the
 * caches that are on are checked (each create checks its own).  Returns
 * 0 or QV_ECONFIG (message names the key and the fix).
 */
int qv_cache_opts_from_config(const struct qv_config *cfg, struct qv_cache_opts *o);

/* 64-bit hash of n bytes (wyhash-style multiply-mix, 16 bytes per step).
 * For callers building params_hash.  Pure, thread-safe. */
uint64_t qv_cache_hash64(const void *data, size_t n, uint64_t seed);

/* Key of the result and semantic caches.  Every field takes part in the
 * comparison; the hash only picks the bucket.  Borrowed for the call. */
struct qv_cache_key {
    uint64_t collection;
    uint64_t epoch;             /* the collection's write epoch */
    const float *query;         /* dim floats, compared bit for bit */
    uint32_t dim;               /* >= 1 */
    uint32_t k;                 /* >= 1 */
    const char *filter;         /* filter text, compared byte for byte;
                                   NULL = unfiltered (differs from "") */
    uint64_t params_hash;       /* nprobe / ef / refine ... hashed */
};

struct qv_cache_stats {
    uint64_t hits, misses;
    uint64_t inserts;           /* new entries */
    uint64_t updates;           /* inserts of a key already present */
    uint64_t evictions;         /* removed by the policy for room */
    uint64_t expirations;       /* removed by TTL */
    uint64_t invalidations;     /* removed by *_invalidate */
    uint64_t entries, bytes;    /* held now */
};
/* Always: entries == inserts - evictions - expirations - invalidations. */

/* ---- exact result cache -------------------------------------------- */

struct qv_result_cache;

/* Create from opts (policy, entries, bytes, ttl_ms, shards, clock).  Each
 * of the S shards holds ceil(entries / S) entries and ceil(bytes / S)
 * bytes; eviction order is exact within a shard.  Returns NULL with
 * qv_errno QV_EINVAL (bad opts; message names the key) or QV_ENOMEM. */
struct qv_result_cache *qv_result_cache_create(const struct qv_cache_opts *opts);
void qv_result_cache_free(struct qv_result_cache *c);   /* NULL: no-op */

/*
 * Look key up.  On a hit copies the k stored pairs into dist[k] and
 * ids[k] (slots past the real results hold +inf / QV_ID_NONE, as
 * qv_topk_sort left them) and returns 1; a miss returns 0 and leaves the
 * arrays alone; QV_EINVAL for a bad key.  An entry past its TTL is removed
 * and counts as an expiration and a miss.  O(dim + k) under one shard lock.
 * Thread-safe.
 */
int qv_result_cache_lookup(struct qv_result_cache *c, const struct qv_cache_key *key,
                           float *dist, uint64_t *ids);

/*
 * Store k pairs (dist[k], ids[k], copied) for key, evicting by policy
 * until the shard has room.  A key already present gets the new results
 * (an update).  Returns 0, QV_EINVAL (bad key), QV_ENOSPC (one entry is
 * larger than a shard's byte budget), QV_ENOMEM (the cache is unchanged
 * and usable).  Thread-safe.
 */
int qv_result_cache_insert(struct qv_result_cache *c, const struct qv_cache_key *key,
                           const float *dist, const uint64_t *ids);

/* Drop every entry of collection (call after bumping its epoch); returns
 * how many.  O(entries), one shard lock at a time.  Thread-safe. */
uint64_t qv_result_cache_invalidate(struct qv_result_cache *c, uint64_t collection);

/* Counters (each read atomically; together a near-snapshot). */
void qv_result_cache_stats(const struct qv_result_cache *c, struct qv_cache_stats *out);

/* ---- semantic cache ------------------------------------------------ */

struct qv_semantic_cache;

/* Create from opts (semantic_entries, ttl_ms, clock).  Rings are made per
 * collection on first insert.  NULL with qv_errno QV_EINVAL / QV_ENOMEM. */
struct qv_semantic_cache *qv_semantic_cache_create(const struct qv_cache_opts *opts);
void qv_semantic_cache_free(struct qv_semantic_cache *s);   /* NULL: no-op */

/*
 * Find the cached query q' nearest to key->query among entries whose
 * collection, epoch, dim, k, filter, params_hash and metric all equal the
 * key's, with dist(q, q') <= threshold under metric (dist.h kernels,
 * "smaller is nearer").  On a hit copies its k pairs into dist/ids, sets
 * *approx (1 unless q' is bit-identical to q) and returns 1; else 0.
 * QV_EINVAL for a bad key, metric or a NaN threshold.  Brute force:
 * O(semantic_entries x dim) under the cache's one lock.  Thread-safe.
 */
int qv_semantic_cache_lookup(struct qv_semantic_cache *s, const struct qv_cache_key *key,
                             enum qv_metric metric, float threshold,
                             float *dist, uint64_t *ids, int *approx);

/* Store (key, metric) -> k pairs; a full ring evicts its least recently
 * used slot.  A bit-identical key is updated.  Returns 0, QV_EINVAL,
 * QV_ENOMEM (cache unchanged).  Thread-safe. */
int qv_semantic_cache_insert(struct qv_semantic_cache *s, const struct qv_cache_key *key,
                             enum qv_metric metric, const float *dist, const uint64_t *ids);

/* Drop every slot of collection; returns how many.  Thread-safe. */
uint64_t qv_semantic_cache_invalidate(struct qv_semantic_cache *s, uint64_t collection);
void qv_semantic_cache_stats(const struct qv_semantic_cache *s, struct qv_cache_stats *out);

/* ---- filter bitmaps ------------------------------------------------ */

/* A row bitmap shared by reference count.  Holders read words/nrows/nset
 * and never write after it was inserted into a cache. */
struct qv_bitmap {
    uint64_t nrows;
    uint64_t nset;              /* set bits, filled by the producer */
    uint64_t *words;            /* ceil(nrows / 64) words, bit r = row r */
    atomic_uint_fast32_t refs;  /* private: use qv_bitmap_ref/unref */
};

/* A zeroed bitmap of nrows rows (>= 1), one reference held by the caller.
 * NULL with qv_errno QV_EINVAL / QV_ENOMEM. */
struct qv_bitmap *qv_bitmap_create(uint64_t nrows);
/* Take one more reference; returns b.  Thread-safe, cannot fail. */
struct qv_bitmap *qv_bitmap_ref(struct qv_bitmap *b);
/* Drop one reference; the last frees it.  NULL: no-op.  Thread-safe. */
void qv_bitmap_unref(struct qv_bitmap *b);

struct qv_bitmap_cache;

/* Create from opts (bitmap_bytes).  NULL with QV_EINVAL / QV_ENOMEM. */
struct qv_bitmap_cache *qv_bitmap_cache_create(const struct qv_cache_opts *opts);
/* Drops the cache's references; bitmaps still held elsewhere live on. */
void qv_bitmap_cache_free(struct qv_bitmap_cache *bc);     /* NULL: no-op */

/* The bitmap of (collection, epoch, predicate), predicate compared after
 * normalising (leading/trailing whitespace trimmed, runs collapsed to one
 * space): a new reference the caller must qv_bitmap_unref, or NULL on a
 * miss.  No copy, no allocation.  Thread-safe (one lock). */
struct qv_bitmap *qv_bitmap_cache_lookup(struct qv_bitmap_cache *bc, uint64_t collection,
                                         uint64_t epoch, const char *predicate);

/* Cache b under the key (the cache takes its own reference; the caller
 * keeps theirs).  Evicts least recently used bitmaps until the bytes fit.
 * A key already present keeps its bitmap (an update; returns 0).  Returns
 * 0, QV_EINVAL, QV_ENOSPC (b alone exceeds bitmap_bytes), QV_ENOMEM. */
int qv_bitmap_cache_insert(struct qv_bitmap_cache *bc, uint64_t collection, uint64_t epoch,
                           const char *predicate, struct qv_bitmap *b);

uint64_t qv_bitmap_cache_invalidate(struct qv_bitmap_cache *bc, uint64_t collection);
void qv_bitmap_cache_stats(const struct qv_bitmap_cache *bc, struct qv_cache_stats *out);

#endif
