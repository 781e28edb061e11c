/*
 * bitmap_cache.c - filter bitmaps shared by reference count.
 *
 * A filtered query first evaluates its predicate into a row bitmap
 * (filter.h), O(rows x leaves / 64).  Queries repeating a predicate on
 * unchanged data share one bitmap: a hit hands out a new reference, no
 * copy.  A bitmap is one allocation (struct + words) freed by its last
 * qv_bitmap_unref, so an entry the cache evicts stays valid for queries
 * still scanning with it, and ASan sees any missed or extra unref.
 *
 * Keys are (collection, epoch, predicate text normalised: leading and
 * trailing whitespace trimmed, each run of whitespace one space).  The
 * text is normalised on the fly while hashing (FNV-1a, then the cache
 * mixer) and while comparing with a stored, normalised key, so a lookup
 * allocates nothing.  Keywords are not case-folded: "A AND b" and
 * "a and b" are different keys (a miss costs one evaluation, never a
 * wrong answer).
 *
 * One mutex guards a fixed table of 1024 hash chains and one LRU list
 * (most recently used first); eviction drops least recently used bitmaps
 * until the new one's bytes fit bitmap_bytes.  The bytes of an entry are
 * its key plus the whole bitmap allocation.
 */
#include <ctype.h>
#include <pthread.h>
#include <string.h>

#include "cache_int.h"
#include "quiver/alloc.h"
#include "quiver/errors.h"

#define BC_BUCKETS 1024
#define BITMAP_MAX_ROWS (1ULL << 40)

struct bc_entry {
    struct qv__dlink link;      /* in cache->lru */
    struct bc_entry *next;      /* hash chain, then victim chain */
    uint64_t hash, collection, epoch;
    struct qv_bitmap *bm;       /* one reference held by the cache */
    size_t bytes;
    uint32_t tlen;
    char text[];                /* normalised predicate, NUL-terminated */
};

struct qv_bitmap_cache {
    pthread_mutex_t lock;
    struct bc_entry *buckets[BC_BUCKETS];   /* guarded by lock */
    struct qv__dlink lru;                   /* guarded by lock */
    uint64_t cap_bytes, bytes;              /* bytes guarded by lock */
    struct qv__cache_counters ctr;
};

/* ---- bitmaps --------------------------------------------------------- */

static size_t bitmap_alloc_size(uint64_t nrows)
{
    return sizeof(struct qv_bitmap) + (size_t)((nrows + 63) / 64) * sizeof(uint64_t);
}

struct qv_bitmap *qv_bitmap_create(uint64_t nrows)
{
    if (nrows == 0 || nrows > BITMAP_MAX_ROWS) {
        qv_seterr(QV_EINVAL, "bitmap: %llu rows; expected 1..2^40", (unsigned long long)nrows);
        return NULL;
    }
    struct qv_bitmap *b = qv_calloc(1, bitmap_alloc_size(nrows), QV_MEM_CACHE);
    if (!b) {
        qv_seterr(QV_ENOMEM, "bitmap: no memory for %llu rows", (unsigned long long)nrows);
        return NULL;
    }
    b->nrows = nrows;
    b->words = (uint64_t *)(b + 1);
    atomic_init(&b->refs, 1);
    return b;
}

struct qv_bitmap *qv_bitmap_ref(struct qv_bitmap *b)
{
    atomic_fetch_add_explicit(&b->refs, 1, memory_order_relaxed);
    return b;
}

void qv_bitmap_unref(struct qv_bitmap *b)
{
    if (b && atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel) == 1)
        qv_free(b);
}

/* ---- normalised predicate text --------------------------------------- */

static const char *norm_start(const char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    return s;
}

/* Next character of the normalised text at *p, or 0 at its end. */
static int norm_next(const char **p)
{
    const char *s = *p;
    if (!*s)
        return 0;
    if (isspace((unsigned char)*s)) {
        s = norm_start(s);
        *p = s;
        return *s ? ' ' : 0;
    }
    *p = s + 1;
    return (unsigned char)*s;
}

static uint64_t norm_hash(const char *text, uint64_t collection, uint64_t epoch, uint32_t *len)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    uint32_t n = 0;
    int ch;
    for (const char *p = norm_start(text); (ch = norm_next(&p)) != 0; n++)
        h = (h ^ (uint64_t)ch) * 0x100000001b3ULL;
    uint64_t words[3] = { h, collection, epoch };
    *len = n;
    uint64_t key = qv_cache_hash64(words, sizeof words, n);
    return qv__cache_hash_hook ? qv__cache_hash_hook(key) : key;
}

static int norm_equal(const struct bc_entry *e, const char *text)
{
    const char *p = norm_start(text);
    for (uint32_t i = 0; i < e->tlen; i++)
        if (norm_next(&p) != (unsigned char)e->text[i])
            return 0;
    return norm_next(&p) == 0;
}

/* ---- the cache ------------------------------------------------------- */

struct qv_bitmap_cache *qv_bitmap_cache_create(const struct qv_cache_opts *opts)
{
    if (qv__cache_opts_check(opts, QV__CACHE_BITMAP) < 0)
        return NULL;
    struct qv_bitmap_cache *bc = qv_calloc(1, sizeof *bc, QV_MEM_CACHE);
    if (!bc) {
        qv_seterr(QV_ENOMEM, "bitmap cache: no memory");
        return NULL;
    }
    pthread_mutex_init(&bc->lock, NULL);
    qv__dlist_init(&bc->lru);
    bc->cap_bytes = opts->bitmap_bytes;
    return bc;
}

static void free_chain(struct bc_entry *e)
{
    while (e) {
        struct bc_entry *next = e->next;
        qv_bitmap_unref(e->bm);
        qv_free(e);
        e = next;
    }
}

void qv_bitmap_cache_free(struct qv_bitmap_cache *bc)
{
    if (!bc)
        return;
    for (uint32_t b = 0; b < BC_BUCKETS; b++)
        free_chain(bc->buckets[b]);
    pthread_mutex_destroy(&bc->lock);
    qv_free(bc);
}

static struct bc_entry *find(struct qv_bitmap_cache *bc, uint64_t h, uint64_t collection,
                             uint64_t epoch, const char *text)
{
    for (struct bc_entry *e = bc->buckets[h % BC_BUCKETS]; e; e = e->next)
        if (e->hash == h && e->collection == collection && e->epoch == epoch &&
            norm_equal(e, text))
            return e;
    return NULL;
}

static void unlink_entry(struct qv_bitmap_cache *bc, struct bc_entry *e)
{
    struct bc_entry **pp = &bc->buckets[e->hash % BC_BUCKETS];
    while (*pp != e)
        pp = &(*pp)->next;
    *pp = e->next;
    e->next = NULL;
    qv__dlist_remove(&e->link);
    bc->bytes -= e->bytes;
    QV__CNT_SUB(&bc->ctr, entries, 1);
    QV__CNT_SUB(&bc->ctr, bytes, e->bytes);
}

struct qv_bitmap *qv_bitmap_cache_lookup(struct qv_bitmap_cache *bc, uint64_t collection,
                                         uint64_t epoch, const char *predicate)
{
    if (!bc || !predicate) {
        qv_seterr(QV_EINVAL, "bitmap cache: no cache or no predicate");
        return NULL;
    }
    uint32_t len;
    uint64_t h = norm_hash(predicate, collection, epoch, &len);
    struct qv_bitmap *b = NULL;
    pthread_mutex_lock(&bc->lock);
    struct bc_entry *e = find(bc, h, collection, epoch, predicate);
    if (e) {
        qv__dlist_remove(&e->link);
        qv__dlist_push_head(&bc->lru, &e->link);
        b = qv_bitmap_ref(e->bm);
    }
    pthread_mutex_unlock(&bc->lock);
    QV__CNT_ADD(&bc->ctr, hits, b ? 1 : 0);
    QV__CNT_ADD(&bc->ctr, misses, b ? 0 : 1);
    return b;
}

int qv_bitmap_cache_insert(struct qv_bitmap_cache *bc, uint64_t collection, uint64_t epoch,
                           const char *predicate, struct qv_bitmap *b)
{
    if (!bc || !predicate || !b)
        return qv_seterr(QV_EINVAL, "bitmap cache: no cache, predicate or bitmap to insert");
    uint32_t len;
    uint64_t h = norm_hash(predicate, collection, epoch, &len);
    size_t size = sizeof(struct bc_entry) + len + 1 + bitmap_alloc_size(b->nrows);
    if (size > bc->cap_bytes)
        return qv_seterr(QV_ENOSPC, "bitmap cache: a bitmap of %llu rows (%zu bytes) exceeds "
                         "[cache] bitmap_bytes = %llu", (unsigned long long)b->nrows, size,
                         (unsigned long long)bc->cap_bytes);
    struct bc_entry *fresh = qv_malloc(sizeof *fresh + len + 1, QV_MEM_CACHE);
    if (!fresh)
        return qv_seterr(QV_ENOMEM, "bitmap cache: no memory for a key of %u bytes", len);
    fresh->hash = h;
    fresh->collection = collection;
    fresh->epoch = epoch;
    fresh->bytes = size;
    fresh->tlen = len;
    const char *p = norm_start(predicate);
    for (uint32_t i = 0; i < len; i++)
        fresh->text[i] = (char)norm_next(&p);
    fresh->text[len] = '\0';

    struct bc_entry *victims = NULL;
    uint64_t evicted = 0;
    pthread_mutex_lock(&bc->lock);
    if (find(bc, h, collection, epoch, predicate)) {
        pthread_mutex_unlock(&bc->lock);
        qv_free(fresh);
        QV__CNT_ADD(&bc->ctr, updates, 1);
        return 0;
    }
    while (bc->bytes + size > bc->cap_bytes) {
        struct bc_entry *v = QV__CONTAINER(bc->lru.prev, struct bc_entry, link);
        unlink_entry(bc, v);
        v->next = victims;
        victims = v;
        evicted++;
    }
    fresh->bm = qv_bitmap_ref(b);
    fresh->next = bc->buckets[h % BC_BUCKETS];
    bc->buckets[h % BC_BUCKETS] = fresh;
    qv__dlist_push_head(&bc->lru, &fresh->link);
    bc->bytes += size;
    QV__CNT_ADD(&bc->ctr, entries, 1);
    QV__CNT_ADD(&bc->ctr, bytes, size);
    pthread_mutex_unlock(&bc->lock);
    free_chain(victims);
    QV__CNT_ADD(&bc->ctr, inserts, 1);
    QV__CNT_ADD(&bc->ctr, evictions, evicted);
    return 0;
}

uint64_t qv_bitmap_cache_invalidate(struct qv_bitmap_cache *bc, uint64_t collection)
{
    if (!bc)
        return 0;
    struct bc_entry *victims = NULL;
    uint64_t n = 0;
    pthread_mutex_lock(&bc->lock);
    struct qv__dlink *l = bc->lru.next;
    while (l != &bc->lru) {
        struct bc_entry *e = QV__CONTAINER(l, struct bc_entry, link);
        l = l->next;
        if (e->collection != collection)
            continue;
        unlink_entry(bc, e);
        e->next = victims;
        victims = e;
        n++;
    }
    pthread_mutex_unlock(&bc->lock);
    free_chain(victims);
    QV__CNT_ADD(&bc->ctr, invalidations, n);
    return n;
}

void qv_bitmap_cache_stats(const struct qv_bitmap_cache *bc, struct qv_cache_stats *out)
{
    memset(out, 0, sizeof *out);
    if (bc)
        qv__cache_counters_read(&bc->ctr, out);
}
