/*
 * semantic_cache.c - reuse the results of a nearby earlier query.
 *
 * Each collection has a ring: an array of at most semantic_entries slot
 * pointers, made on the collection's first insert and freed by
 * invalidate.  A slot is one allocation holding the full key (epoch,
 * params hash, dim, k, metric, filter text), the query vector and its k
 * results (layout as the result cache's entries, cache_int.h).  A lookup
 * scans the collection's ring by brute force: slots whose key fields all
 * match are candidates, and the nearest candidate within the threshold,
 * by the metric's f32 kernel from qv_kernels(), wins.  That is
 * O(semantic_entries x dim) per lookup, about 1024 x 768 flops at the
 * default: microseconds, small next to a search, and it needs no index
 * that would have to follow inserts and evictions.  A full ring evicts its
 * least recently used slot (a tick stamp per slot; O(ring) to find).
 *
 * One mutex guards every ring and the tick; counters are atomics.  The
 * semantic cache is opt-in per query, so one lock is enough.
 */
#include <math.h>
#include <pthread.h>
#include <string.h>

#include "cache_int.h"
#include "quiver/alloc.h"
#include "quiver/errors.h"

#define NO_FILTER UINT32_MAX

struct sc_slot {
    uint64_t epoch, params_hash;
    int64_t born_ns;
    uint64_t last_used;         /* cache tick of the last hit or insert */
    size_t bytes;
    uint32_t dim, k, flen, metric;
    /* payload: ids[k], query[dim], dist[k], filter[flen + 1] */
};

struct sc_ring {
    struct sc_ring *next;
    uint64_t collection;
    uint32_t n;
    struct sc_slot *slots[];    /* semantic_entries pointers */
};

struct qv_semantic_cache {
    pthread_mutex_t lock;
    struct sc_ring *rings;      /* guarded by lock */
    uint64_t tick;              /* guarded by lock */
    uint32_t cap;
    uint64_t ttl_ns;
    qv_cache_clock_fn clock;
    struct qv__cache_counters ctr;
};

static inline uint64_t *s_ids(struct sc_slot *s) { return (uint64_t *)(s + 1); }
static inline float *s_query(struct sc_slot *s) { return (float *)(s_ids(s) + s->k); }
static inline float *s_dist(struct sc_slot *s) { return s_query(s) + s->dim; }
static inline char *s_filter(struct sc_slot *s) { return (char *)(s_dist(s) + s->k); }

static int same_key(struct sc_slot *s, const struct qv_cache_key *key, uint32_t flen,
                    enum qv_metric metric)
{
    return s->epoch == key->epoch && s->params_hash == key->params_hash &&
           s->dim == key->dim && s->k == key->k && s->metric == (uint32_t)metric &&
           s->flen == flen && (flen == NO_FILTER || memcmp(s_filter(s), key->filter, flen) == 0);
}

static struct sc_ring *find_ring(struct qv_semantic_cache *sc, uint64_t collection)
{
    for (struct sc_ring *r = sc->rings; r; r = r->next)
        if (r->collection == collection)
            return r;
    return NULL;
}

/* Remove slot i of r (the last slot takes its place); the caller frees. */
static struct sc_slot *take_slot(struct qv_semantic_cache *sc, struct sc_ring *r, uint32_t i)
{
    struct sc_slot *s = r->slots[i];
    r->slots[i] = r->slots[--r->n];
    QV__CNT_SUB(&sc->ctr, entries, 1);
    QV__CNT_SUB(&sc->ctr, bytes, s->bytes);
    return s;
}

static int check_args(const struct qv_cache_key *key, enum qv_metric metric)
{
    int rc = qv__cache_key_check(key, "semantic cache");
    if (rc < 0)
        return rc;
    if ((unsigned)metric >= QV_METRIC__COUNT)
        return qv_seterr(QV_EINVAL, "semantic cache: metric %d unknown; expected l2, ip or "
                         "cosine", (int)metric);
    return 0;
}

struct qv_semantic_cache *qv_semantic_cache_create(const struct qv_cache_opts *opts)
{
    if (qv__cache_opts_check(opts, QV__CACHE_SEMANTIC) < 0)
        return NULL;
    struct qv_semantic_cache *sc = qv_calloc(1, sizeof *sc, QV_MEM_CACHE);
    if (!sc) {
        qv_seterr(QV_ENOMEM, "semantic cache: no memory");
        return NULL;
    }
    pthread_mutex_init(&sc->lock, NULL);
    sc->cap = opts->semantic_entries;
    sc->ttl_ns = opts->ttl_ms * 1000000ULL;
    sc->clock = opts->clock;
    return sc;
}

static void free_ring(struct sc_ring *r)
{
    for (uint32_t i = 0; i < r->n; i++)
        qv_free(r->slots[i]);
    qv_free(r);
}

void qv_semantic_cache_free(struct qv_semantic_cache *sc)
{
    if (!sc)
        return;
    while (sc->rings) {
        struct sc_ring *r = sc->rings;
        sc->rings = r->next;
        free_ring(r);
    }
    pthread_mutex_destroy(&sc->lock);
    qv_free(sc);
}

int qv_semantic_cache_lookup(struct qv_semantic_cache *sc, const struct qv_cache_key *key,
                             enum qv_metric metric, float threshold,
                             float *dist, uint64_t *ids, int *approx)
{
    if (!sc || !dist || !ids || !approx)
        return qv_seterr(QV_EINVAL, "semantic cache: no cache or no output arrays");
    int rc = check_args(key, metric);
    if (rc < 0)
        return rc;
    if (isnan(threshold))
        return qv_seterr(QV_EINVAL, "semantic cache: threshold is NaN");
    uint32_t flen = key->filter ? (uint32_t)strlen(key->filter) : NO_FILTER;
    qv_dist_fn fn = qv_kernels()->dist[metric][QV_ELEM_F32];
    int64_t now = sc->ttl_ns ? qv__cache_now(sc->clock) : 0;
    struct sc_slot *best = NULL;
    float best_d = 0;
    uint64_t expired = 0;

    pthread_mutex_lock(&sc->lock);
    struct sc_ring *r = find_ring(sc, key->collection);
    for (uint32_t i = 0; r && i < r->n; i++) {
        struct sc_slot *s = r->slots[i];
        if (!same_key(s, key, flen, metric))
            continue;
        if (sc->ttl_ns && now - s->born_ns >= (int64_t)sc->ttl_ns) {
            qv_free(take_slot(sc, r, i--));
            expired++;
            continue;
        }
        float d = fn(key->query, s_query(s), key->dim);
        if (d <= threshold && (!best || d < best_d)) {
            best = s;
            best_d = d;
        }
    }
    if (best) {
        memcpy(dist, s_dist(best), (size_t)best->k * sizeof(float));
        memcpy(ids, s_ids(best), (size_t)best->k * sizeof(uint64_t));
        *approx = memcmp(s_query(best), key->query, (size_t)key->dim * sizeof(float)) != 0;
        best->last_used = ++sc->tick;
    }
    pthread_mutex_unlock(&sc->lock);
    QV__CNT_ADD(&sc->ctr, expirations, expired);
    QV__CNT_ADD(&sc->ctr, hits, best ? 1 : 0);
    QV__CNT_ADD(&sc->ctr, misses, best ? 0 : 1);
    return best ? 1 : 0;
}

int qv_semantic_cache_insert(struct qv_semantic_cache *sc, const struct qv_cache_key *key,
                             enum qv_metric metric, const float *dist, const uint64_t *ids)
{
    if (!sc || !dist || !ids)
        return qv_seterr(QV_EINVAL, "semantic cache: no cache or no results to insert");
    int rc = check_args(key, metric);
    if (rc < 0)
        return rc;
    uint32_t flen = key->filter ? (uint32_t)strlen(key->filter) : NO_FILTER;
    size_t size = sizeof(struct sc_slot) + (size_t)key->k * 12 + (size_t)key->dim * 4 +
                  (flen == NO_FILTER ? 0 : (size_t)flen + 1);
    struct sc_slot *fresh = qv_malloc(size, QV_MEM_CACHE);
    if (!fresh)
        return qv_seterr(QV_ENOMEM, "semantic cache: no memory for a %zu-byte slot", size);
    memset(fresh, 0, sizeof *fresh);
    fresh->epoch = key->epoch;
    fresh->params_hash = key->params_hash;
    fresh->born_ns = sc->ttl_ns ? qv__cache_now(sc->clock) : 0;
    fresh->bytes = size;
    fresh->dim = key->dim;
    fresh->k = key->k;
    fresh->flen = flen;
    fresh->metric = (uint32_t)metric;
    memcpy(s_ids(fresh), ids, (size_t)key->k * sizeof(uint64_t));
    memcpy(s_query(fresh), key->query, (size_t)key->dim * sizeof(float));
    memcpy(s_dist(fresh), dist, (size_t)key->k * sizeof(float));
    if (flen != NO_FILTER)
        memcpy(s_filter(fresh), key->filter, (size_t)flen + 1);

    struct sc_slot *victim = NULL;
    pthread_mutex_lock(&sc->lock);
    struct sc_ring *r = find_ring(sc, key->collection);
    if (!r) {
        r = qv_calloc(1, sizeof *r + (size_t)sc->cap * sizeof r->slots[0], QV_MEM_CACHE);
        if (!r) {
            pthread_mutex_unlock(&sc->lock);
            qv_free(fresh);
            return qv_seterr(QV_ENOMEM, "semantic cache: no memory for a ring of %u slots",
                             sc->cap);
        }
        r->collection = key->collection;
        r->next = sc->rings;
        sc->rings = r;
    }
    for (uint32_t i = 0; i < r->n; i++) {
        struct sc_slot *s = r->slots[i];
        if (same_key(s, key, flen, metric) &&
            memcmp(s_query(s), key->query, (size_t)key->dim * sizeof(float)) == 0) {
            memcpy(s_dist(s), dist, (size_t)key->k * sizeof(float));
            memcpy(s_ids(s), ids, (size_t)key->k * sizeof(uint64_t));
            s->born_ns = fresh->born_ns;
            s->last_used = ++sc->tick;
            pthread_mutex_unlock(&sc->lock);
            qv_free(fresh);
            QV__CNT_ADD(&sc->ctr, updates, 1);
            return 0;
        }
    }
    if (r->n == sc->cap) {
        uint32_t lru = 0;
        for (uint32_t i = 1; i < r->n; i++)
            if (r->slots[i]->last_used < r->slots[lru]->last_used)
                lru = i;
        victim = take_slot(sc, r, lru);
    }
    fresh->last_used = ++sc->tick;
    r->slots[r->n++] = fresh;
    QV__CNT_ADD(&sc->ctr, entries, 1);
    QV__CNT_ADD(&sc->ctr, bytes, size);
    pthread_mutex_unlock(&sc->lock);
    qv_free(victim);
    QV__CNT_ADD(&sc->ctr, inserts, 1);
    QV__CNT_ADD(&sc->ctr, evictions, victim ? 1 : 0);
    return 0;
}

uint64_t qv_semantic_cache_invalidate(struct qv_semantic_cache *sc, uint64_t collection)
{
    if (!sc)
        return 0;
    struct sc_ring *r = NULL;
    pthread_mutex_lock(&sc->lock);
    for (struct sc_ring **pp = &sc->rings; *pp; pp = &(*pp)->next) {
        if ((*pp)->collection == collection) {
            r = *pp;
            *pp = r->next;
            break;
        }
    }
    uint64_t n = 0;
    if (r) {
        n = r->n;
        for (uint32_t i = 0; i < r->n; i++) {
            QV__CNT_SUB(&sc->ctr, entries, 1);
            QV__CNT_SUB(&sc->ctr, bytes, r->slots[i]->bytes);
        }
    }
    pthread_mutex_unlock(&sc->lock);
    if (r)
        free_ring(r);
    QV__CNT_ADD(&sc->ctr, invalidations, n);
    return n;
}

void qv_semantic_cache_stats(const struct qv_semantic_cache *sc, struct qv_cache_stats *out)
{
    memset(out, 0, sizeof *out);
    if (sc)
        qv__cache_counters_read(&sc->ctr, out);
}
