/*
 * result_cache.c - the exact result cache, the options shared by all the
 * caches, and the key hash.  The design (shards, entry layout, LRU/LFU
 * levels, aging, TTL) is described in cache_int.h; the contract in
 * quiver/cache.h.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "cache_int.h"
#include "quiver/alloc.h"
#include "quiver/config.h"
#include "quiver/errors.h"
#include "quiver/timeutil.h"

/* ---- hash ------------------------------------------------------------ */

#define P0 0xa0761d6478bd642fULL
#define P1 0xe7037ed1a0b428dbULL
#define P2 0x8ebc6af09c88c6e3ULL
#define P3 0x589965cc75374cc3ULL

/* 64 x 64 -> 128-bit multiply, folded: the wyhash mixing step. */
static inline uint64_t mum(uint64_t a, uint64_t b)
{
    __extension__ unsigned __int128 r = (unsigned __int128)a * b;
    return (uint64_t)r ^ (uint64_t)(r >> 64);
}

static inline uint64_t rd64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

uint64_t qv_cache_hash64(const void *data, size_t n, uint64_t seed)
{
    const uint8_t *p = data;
    uint64_t h = seed ^ mum(seed ^ P0, (uint64_t)n ^ P1);
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        h = mum(rd64(p + i) ^ P1, rd64(p + i + 8) ^ h ^ P2);
    uint8_t tail[16] = { 0 };
    if (n > i)
        memcpy(tail, p + i, n - i);
    h = mum(rd64(tail) ^ P1 ^ (uint64_t)(n - i), rd64(tail + 8) ^ h ^ P2);
    return mum(h ^ P0, (uint64_t)n ^ P3);
}

uint64_t (*qv__cache_hash_hook)(uint64_t h);

uint64_t qv__cache_key_hash(const struct qv_cache_key *key)
{
    uint64_t scalars[4] = { key->collection, key->epoch, key->params_hash,
                            (uint64_t)key->dim | (uint64_t)key->k << 32 };
    uint64_t h = qv_cache_hash64(scalars, sizeof scalars, key->filter ? 1 : 2);
    if (key->filter)
        h = qv_cache_hash64(key->filter, strlen(key->filter), h);
    h = qv_cache_hash64(key->query, (size_t)key->dim * sizeof(float), h);
    return qv__cache_hash_hook ? qv__cache_hash_hook(h) : h;
}

int qv__cache_key_check(const struct qv_cache_key *key, const char *what)
{
    if (!key || !key->query)
        return qv_seterr(QV_EINVAL, "%s: no key or no query vector", what);
    if (key->dim == 0 || key->k == 0)
        return qv_seterr(QV_EINVAL, "%s: key has dim = %u, k = %u; both must be >= 1",
                         what, key->dim, key->k);
    return 0;
}

/* ---- options --------------------------------------------------------- */

void qv_cache_opts_default(struct qv_cache_opts *o)
{
    memset(o, 0, sizeof *o);
    o->policy = QV_CACHE_LRU;
    o->entries = 100000;
    o->bytes = 256ULL << 20;
    o->ttl_ms = 0;
    o->shards = 16;
    o->semantic_entries = 1024;
    o->bitmap_bytes = 64ULL << 20;
    o->clock = NULL;
}

int qv__cache_opts_check(const struct qv_cache_opts *o, unsigned which)
{
    if (!o)
        return qv_seterr(QV_EINVAL, "cache: no options");
    if (o->shards < 1 || o->shards > 1024)
        return qv_seterr(QV_EINVAL, "[cache] shards = %u: expected 1..1024", o->shards);
    if (which & QV__CACHE_RESULT) {
        if (o->policy != QV_CACHE_LRU && o->policy != QV_CACHE_LFU)
            return qv_seterr(QV_EINVAL, "[cache] policy = %d: expected lru or lfu",
                             (int)o->policy);
        if (o->entries < 1)
            return qv_seterr(QV_EINVAL, "[cache] entries = 0: must be at least 1");
        if (o->bytes < 1024)
            return qv_seterr(QV_EINVAL, "[cache] bytes = %llu: must be at least 1024",
                             (unsigned long long)o->bytes);
    }
    if ((which & QV__CACHE_SEMANTIC) && o->semantic_entries < 1)
        return qv_seterr(QV_EINVAL, "[cache] semantic_entries = 0: must be at least 1");
    if ((which & QV__CACHE_BITMAP) && o->bitmap_bytes < 1024)
        return qv_seterr(QV_EINVAL, "[cache] bitmap_bytes = %llu: must be at least 1024",
                         (unsigned long long)o->bitmap_bytes);
    return 0;
}

int64_t qv__cache_now(qv_cache_clock_fn clock)
{
    return clock ? clock() : qv_now_ns();
}

/* The schema entry of [cache] key, or NULL while the schema lacks it. */
static const struct qv_conf_key *schema_key(const char *key)
{
    for (const struct qv_conf_key *k = qv_conf_schema; k->section; k++)
        if (strcmp(k->section, "cache") == 0 && strcmp(k->key, key) == 0)
            return k;
    return NULL;
}

/* Read an INT or SIZE key into *v; absent keys leave *v alone. */
static int conf_u64(const struct qv_config *cfg, const char *key, uint64_t *v)
{
    const struct qv_conf_key *k = schema_key(key);
    if (!k)
        return 0;
    if (k->type == QV_CONF_SIZE) {
        *v = qv_config_size(cfg, "cache", key);
    } else if (k->type == QV_CONF_INT) {
        int64_t i = qv_config_int(cfg, "cache", key);
        if (i < 0)
            return qv_seterr(QV_ECONFIG, "%s: [cache] %s = %lld: must be >= 0",
                             qv_config_origin(cfg, "cache", key), key, (long long)i);
        *v = (uint64_t)i;
    }
    return 0;
}

int qv_cache_opts_from_config(const struct qv_config *cfg, struct qv_cache_opts *o)
{
    if (!cfg || !o)
        return qv_seterr(QV_ECONFIG, "cache: no configuration or no options");
    qv_cache_opts_default(o);
    const struct qv_conf_key *pk = schema_key("policy");
    if (pk && (pk->type == QV_CONF_ENUM || pk->type == QV_CONF_STRING)) {
        const char *p = qv_config_string(cfg, "cache", "policy");
        if (strcmp(p, "lru") == 0)
            o->policy = QV_CACHE_LRU;
        else if (strcmp(p, "lfu") == 0)
            o->policy = QV_CACHE_LFU;
        else
            return qv_seterr(QV_ECONFIG, "%s: [cache] policy = %s: expected lru or lfu",
                             qv_config_origin(cfg, "cache", "policy"), p);
    }
    uint64_t shards = o->shards, sem = o->semantic_entries;
    int rc;
    if ((rc = conf_u64(cfg, "entries", &o->entries)) < 0 ||
        (rc = conf_u64(cfg, "bytes", &o->bytes)) < 0 ||
        (rc = conf_u64(cfg, "ttl_ms", &o->ttl_ms)) < 0 ||
        (rc = conf_u64(cfg, "shards", &shards)) < 0 ||
        (rc = conf_u64(cfg, "semantic_entries", &sem)) < 0 ||
        (rc = conf_u64(cfg, "bitmap_bytes", &o->bitmap_bytes)) < 0)
        return rc;
    o->shards = shards > UINT32_MAX ? UINT32_MAX : (uint32_t)shards;
    o->semantic_entries = sem > UINT32_MAX ? UINT32_MAX : (uint32_t)sem;
    /* each cache is checked only when it is on (0 = off: quiver.conf) */
    unsigned on = (o->entries > 0 && o->bytes > 0 ? QV__CACHE_RESULT : 0) |
                  (o->semantic_entries > 0 ? QV__CACHE_SEMANTIC : 0) |
                  (o->bitmap_bytes > 0 ? QV__CACHE_BITMAP : 0);
    if (qv__cache_opts_check(o, on) < 0) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", qv_errmsg());
        return qv_seterr(QV_ECONFIG, "%s", msg);
    }
    return 0;
}

void qv__cache_counters_read(const struct qv__cache_counters *c, struct qv_cache_stats *out)
{
#define RD(f) out->f = atomic_load_explicit(&c->f, memory_order_relaxed)
    RD(hits); RD(misses); RD(inserts); RD(updates); RD(evictions);
    RD(expirations); RD(invalidations); RD(entries); RD(bytes);
#undef RD
}

/* ---- the result cache ------------------------------------------------ */

#define NO_FILTER UINT32_MAX

struct rc_entry {
    struct qv__dlink link;      /* in shard->levels[freq] */
    struct rc_entry *next;      /* hash chain, then victim chain */
    uint64_t hash, collection, epoch, params_hash;
    int64_t born_ns;
    uint64_t tick;              /* shard tick of the last access */
    size_t bytes;
    uint32_t dim, k, flen;      /* flen NO_FILTER: unfiltered */
    uint32_t freq;              /* 1..QV__LFU_LEVELS-1 */
    /* payload: ids[k], query[dim], dist[k], filter[flen + 1] */
};

struct rc_shard {
    pthread_mutex_t lock;
    struct rc_entry **buckets;                  /* guarded by lock */
    struct qv__dlink levels[QV__LFU_LEVELS];    /* guarded by lock */
    uint64_t nonempty;                          /* bit f: levels[f] */
    uint64_t n, bytes, tick, hits_since_age;
} __attribute__((aligned(64)));

struct qv_result_cache {
    struct rc_shard *shards;
    uint32_t nshards, shard_bits;
    uint64_t bucket_mask, cap_entries, cap_bytes, age_period, ttl_ns;
    enum qv_cache_policy policy;
    qv_cache_clock_fn clock;
    struct qv__cache_counters ctr;
};

static inline uint64_t *e_ids(struct rc_entry *e) { return (uint64_t *)(e + 1); }
static inline float *e_query(struct rc_entry *e) { return (float *)(e_ids(e) + e->k); }
static inline float *e_dist(struct rc_entry *e) { return e_query(e) + e->dim; }
static inline char *e_filter(struct rc_entry *e) { return (char *)(e_dist(e) + e->k); }

static struct rc_entry *link_entry(struct qv__dlink *l)
{
    return QV__CONTAINER(l, struct rc_entry, link);
}

static struct rc_shard *shard_of(struct qv_result_cache *c, uint64_t h)
{
    return &c->shards[c->shard_bits ? h >> (64 - c->shard_bits) : 0];
}

static int matches(struct rc_entry *e, const struct qv_cache_key *key, uint64_t h, uint32_t flen)
{
    return e->hash == h && e->collection == key->collection && e->epoch == key->epoch &&
           e->params_hash == key->params_hash && e->dim == key->dim && e->k == key->k &&
           e->flen == flen && (flen == NO_FILTER || memcmp(e_filter(e), key->filter, flen) == 0) &&
           memcmp(e_query(e), key->query, (size_t)key->dim * sizeof(float)) == 0;
}

static struct rc_entry *find(struct qv_result_cache *c, struct rc_shard *sh,
                             const struct qv_cache_key *key, uint64_t h, uint32_t flen)
{
    for (struct rc_entry *e = sh->buckets[h & c->bucket_mask]; e; e = e->next)
        if (matches(e, key, h, flen))
            return e;
    return NULL;
}

static void level_put(struct rc_shard *sh, struct rc_entry *e, uint32_t f)
{
    e->freq = f;
    qv__dlist_push_head(&sh->levels[f], &e->link);
    sh->nonempty |= 1ULL << f;
}

static void level_take(struct rc_shard *sh, struct rc_entry *e)
{
    qv__dlist_remove(&e->link);
    if (qv__dlist_empty(&sh->levels[e->freq]))
        sh->nonempty &= ~(1ULL << e->freq);
}

/* Merge src into acc, both ordered newest tick first; src ends empty. */
static void merge_by_tick(struct qv__dlink *acc, struct qv__dlink *src)
{
    struct qv__dlink out;
    qv__dlist_init(&out);
    while (!qv__dlist_empty(acc) || !qv__dlist_empty(src)) {
        struct qv__dlink *take;
        if (qv__dlist_empty(acc))
            take = src->next;
        else if (qv__dlist_empty(src))
            take = acc->next;
        else
            take = link_entry(acc->next)->tick >= link_entry(src->next)->tick ? acc->next
                                                                               : src->next;
        qv__dlist_remove(take);
        qv__dlist_push_tail(&out, take);
    }
    while (!qv__dlist_empty(&out)) {
        struct qv__dlink *l = out.next;
        qv__dlist_remove(l);
        qv__dlist_push_tail(acc, l);
    }
}

/* LFU aging: halve every frequency (minimum 1).  Level L receives old
 * levels 2L and 2L+1, merged in recency order into what it holds: for
 * L = 1 its own entries; for L >= 2 nothing, as step L / 2 emptied it
 * (going up from L = 1).  O(entries). */
static void age_shard(struct rc_shard *sh)
{
    for (uint32_t L = 1; L < QV__LFU_LEVELS / 2; L++) {
        struct qv__dlink acc;
        qv__dlist_init(&acc);
        merge_by_tick(&acc, &sh->levels[2 * L]);
        merge_by_tick(&acc, &sh->levels[2 * L + 1]);
        for (struct qv__dlink *l = acc.next; l != &acc; l = l->next)
            link_entry(l)->freq = L;
        merge_by_tick(&sh->levels[L], &acc);
    }
    sh->nonempty = 0;
    for (uint32_t f = 1; f < QV__LFU_LEVELS; f++)
        if (!qv__dlist_empty(&sh->levels[f]))
            sh->nonempty |= 1ULL << f;
}

/* A hit or an update: newest tick; under LFU a hit also climbs a level. */
static void touch(struct qv_result_cache *c, struct rc_shard *sh, struct rc_entry *e, int hit)
{
    uint32_t f = e->freq;
    level_take(sh, e);
    e->tick = ++sh->tick;
    if (c->policy == QV_CACHE_LFU && hit && f < QV__LFU_LEVELS - 1)
        f++;
    level_put(sh, e, f);
    if (c->policy == QV_CACHE_LFU && hit && ++sh->hits_since_age >= c->age_period) {
        age_shard(sh);
        sh->hits_since_age = 0;
    }
}

/* Remove e from its bucket and level; the caller frees it. */
static void unlink_entry(struct qv_result_cache *c, struct rc_shard *sh, struct rc_entry *e)
{
    struct rc_entry **pp = &sh->buckets[e->hash & c->bucket_mask];
    while (*pp != e)
        pp = &(*pp)->next;
    *pp = e->next;
    e->next = NULL;
    level_take(sh, e);
    sh->n--;
    sh->bytes -= e->bytes;
    QV__CNT_SUB(&c->ctr, entries, 1);
    QV__CNT_SUB(&c->ctr, bytes, e->bytes);
}

static void free_chain(struct rc_entry *e)
{
    while (e) {
        struct rc_entry *next = e->next;
        qv_free(e);
        e = next;
    }
}

static uint32_t filter_len(const struct qv_cache_key *key)
{
    return key->filter ? (uint32_t)strlen(key->filter) : NO_FILTER;
}

struct qv_result_cache *qv_result_cache_create(const struct qv_cache_opts *opts)
{
    if (qv__cache_opts_check(opts, QV__CACHE_RESULT) < 0)
        return NULL;
    struct qv_result_cache *c = qv_calloc(1, sizeof *c, QV_MEM_CACHE);
    if (!c)
        goto fail_cache;
    while ((1u << c->shard_bits) < opts->shards)
        c->shard_bits++;
    c->nshards = 1u << c->shard_bits;
    c->cap_entries = (opts->entries + c->nshards - 1) / c->nshards;
    c->cap_bytes = (opts->bytes + c->nshards - 1) / c->nshards;
    uint64_t nb = 1;
    while (nb < c->cap_entries && nb < (1u << 20))
        nb <<= 1;
    c->bucket_mask = nb - 1;
    c->age_period = 8 * c->cap_entries;
    c->ttl_ns = opts->ttl_ms * 1000000ULL;
    c->policy = opts->policy;
    c->clock = opts->clock;
    c->shards = qv_calloc(c->nshards, sizeof *c->shards, QV_MEM_CACHE);
    if (!c->shards)
        goto fail_shards;
    uint32_t s;
    for (s = 0; s < c->nshards; s++) {
        struct rc_shard *sh = &c->shards[s];
        sh->buckets = qv_calloc(nb, sizeof *sh->buckets, QV_MEM_CACHE);
        if (!sh->buckets)
            goto fail_buckets;
        pthread_mutex_init(&sh->lock, NULL);
        for (uint32_t f = 0; f < QV__LFU_LEVELS; f++)
            qv__dlist_init(&sh->levels[f]);
    }
    return c;

fail_buckets:
    while (s-- > 0) {
        pthread_mutex_destroy(&c->shards[s].lock);
        qv_free(c->shards[s].buckets);
    }
    qv_free(c->shards);
fail_shards:
    qv_free(c);
fail_cache:
    qv_seterr(QV_ENOMEM, "cache: no memory for a result cache of %llu entries",
              (unsigned long long)opts->entries);
    return NULL;
}

void qv_result_cache_free(struct qv_result_cache *c)
{
    if (!c)
        return;
    for (uint32_t s = 0; s < c->nshards; s++) {
        struct rc_shard *sh = &c->shards[s];
        for (uint64_t b = 0; b <= c->bucket_mask; b++)
            free_chain(sh->buckets[b]);
        qv_free(sh->buckets);
        pthread_mutex_destroy(&sh->lock);
    }
    qv_free(c->shards);
    qv_free(c);
}

int qv_result_cache_lookup(struct qv_result_cache *c, const struct qv_cache_key *key,
                           float *dist, uint64_t *ids)
{
    if (!c || !dist || !ids)
        return qv_seterr(QV_EINVAL, "result cache: no cache or no output arrays");
    int rc = qv__cache_key_check(key, "result cache");
    if (rc < 0)
        return rc;
    uint64_t h = qv__cache_key_hash(key);
    uint32_t flen = filter_len(key);
    struct rc_shard *sh = shard_of(c, h);
    pthread_mutex_lock(&sh->lock);
    struct rc_entry *e = find(c, sh, key, h, flen);
    if (e && c->ttl_ns && qv__cache_now(c->clock) - e->born_ns >= (int64_t)c->ttl_ns) {
        unlink_entry(c, sh, e);
        pthread_mutex_unlock(&sh->lock);
        qv_free(e);
        QV__CNT_ADD(&c->ctr, expirations, 1);
        e = NULL;
    } else if (e) {
        memcpy(dist, e_dist(e), (size_t)e->k * sizeof(float));
        memcpy(ids, e_ids(e), (size_t)e->k * sizeof(uint64_t));
        touch(c, sh, e, 1);
        pthread_mutex_unlock(&sh->lock);
        QV__CNT_ADD(&c->ctr, hits, 1);
        return 1;
    } else {
        pthread_mutex_unlock(&sh->lock);
    }
    QV__CNT_ADD(&c->ctr, misses, 1);
    return 0;
}

int qv_result_cache_insert(struct qv_result_cache *c, const struct qv_cache_key *key,
                           const float *dist, const uint64_t *ids)
{
    if (!c || !dist || !ids)
        return qv_seterr(QV_EINVAL, "result cache: no cache or no results to insert");
    int rc = qv__cache_key_check(key, "result cache");
    if (rc < 0)
        return rc;
    uint64_t h = qv__cache_key_hash(key);
    uint32_t flen = filter_len(key);
    size_t size = sizeof(struct rc_entry) + (size_t)key->k * 12 + (size_t)key->dim * 4 +
                  (flen == NO_FILTER ? 0 : (size_t)flen + 1);
    if (size > c->cap_bytes)
        return qv_seterr(QV_ENOSPC, "result cache: an entry of %zu bytes (dim %u, k %u) "
                         "exceeds a shard's %llu bytes; raise [cache] bytes", size, key->dim,
                         key->k, (unsigned long long)c->cap_bytes);
    int64_t now = c->ttl_ns ? qv__cache_now(c->clock) : 0;
    struct rc_shard *sh = shard_of(c, h);
    struct rc_entry *fresh = NULL, *victims = NULL;
    for (;;) {
        pthread_mutex_lock(&sh->lock);
        struct rc_entry *e = find(c, sh, key, h, flen);
        if (e) {                                /* present: new results */
            memcpy(e_dist(e), dist, (size_t)e->k * sizeof(float));
            memcpy(e_ids(e), ids, (size_t)e->k * sizeof(uint64_t));
            e->born_ns = now;
            touch(c, sh, e, 0);
            pthread_mutex_unlock(&sh->lock);
            qv_free(fresh);
            QV__CNT_ADD(&c->ctr, updates, 1);
            return 0;
        }
        if (fresh)
            break;                              /* still absent: link it */
        pthread_mutex_unlock(&sh->lock);        /* allocate unlocked */
        fresh = qv_malloc(size, QV_MEM_CACHE);
        if (!fresh)
            return qv_seterr(QV_ENOMEM, "result cache: no memory for a %zu-byte entry", size);
        memset(fresh, 0, sizeof *fresh);
        fresh->hash = h;
        fresh->collection = key->collection;
        fresh->epoch = key->epoch;
        fresh->params_hash = key->params_hash;
        fresh->born_ns = now;
        fresh->bytes = size;
        fresh->dim = key->dim;
        fresh->k = key->k;
        fresh->flen = flen;
        memcpy(e_ids(fresh), ids, (size_t)key->k * sizeof(uint64_t));
        memcpy(e_query(fresh), key->query, (size_t)key->dim * sizeof(float));
        memcpy(e_dist(fresh), dist, (size_t)key->k * sizeof(float));
        if (flen != NO_FILTER)
            memcpy(e_filter(fresh), key->filter, (size_t)flen + 1);
    }
    uint64_t evicted = 0;
    while (sh->n + 1 > c->cap_entries || sh->bytes + size > c->cap_bytes) {
        int f = __builtin_ctzll(sh->nonempty);
        struct rc_entry *v = link_entry(sh->levels[f].prev);
        unlink_entry(c, sh, v);
        v->next = victims;
        victims = v;
        evicted++;
    }
    struct rc_entry **bucket = &sh->buckets[h & c->bucket_mask];
    fresh->next = *bucket;
    *bucket = fresh;
    fresh->tick = ++sh->tick;
    level_put(sh, fresh, 1);
    sh->n++;
    sh->bytes += size;
    QV__CNT_ADD(&c->ctr, entries, 1);
    QV__CNT_ADD(&c->ctr, bytes, size);
    pthread_mutex_unlock(&sh->lock);
    free_chain(victims);
    QV__CNT_ADD(&c->ctr, inserts, 1);
    QV__CNT_ADD(&c->ctr, evictions, evicted);
    return 0;
}

uint64_t qv_result_cache_invalidate(struct qv_result_cache *c, uint64_t collection)
{
    if (!c)
        return 0;
    uint64_t dropped = 0;
    for (uint32_t s = 0; s < c->nshards; s++) {
        struct rc_shard *sh = &c->shards[s];
        struct rc_entry *victims = NULL;
        pthread_mutex_lock(&sh->lock);
        for (uint32_t f = 1; f < QV__LFU_LEVELS; f++) {
            struct qv__dlink *l = sh->levels[f].next;
            while (l != &sh->levels[f]) {
                struct rc_entry *e = link_entry(l);
                l = l->next;
                if (e->collection != collection)
                    continue;
                unlink_entry(c, sh, e);
                e->next = victims;
                victims = e;
                dropped++;
            }
        }
        pthread_mutex_unlock(&sh->lock);
        free_chain(victims);
    }
    QV__CNT_ADD(&c->ctr, invalidations, dropped);
    return dropped;
}

void qv_result_cache_stats(const struct qv_result_cache *c, struct qv_cache_stats *out)
{
    memset(out, 0, sizeof *out);
    if (c)
        qv__cache_counters_read(&c->ctr, out);
}
