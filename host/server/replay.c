/*
 * replay.c - the table of write answers (design: replay_int.h).
 *
 * Rules: every field of a stripe is guarded by its mutex; an entry
 * belongs to exactly one stripe (chosen by its key's hash) and is on
 * both its hash chain and its list, or freed.
 */
#include <netinet/in.h>
#include <pthread.h>
#include <string.h>

#include "quiver/alloc.h"
#include "quiver/cache.h"
#include "quiver/errors.h"
#include "replay_int.h"

#define REPLAY_STRIPES 16u
#define REPLAY_STRIPED_FROM 1024u       /* entries at which the table stripes */

struct entry {
    struct entry *hnext;            /* hash chain */
    struct entry *prev, *next;      /* the stripe's list, oldest first */
    struct qv_replay_key key;
    uint64_t hash;
    int64_t expires;                /* DONE: end of life (ns); else 0 */
    int done;
    size_t len;                     /* bytes of ans */
    uint8_t ans[];
};

struct stripe {
    pthread_mutex_t mu;
    struct entry **buckets;         /* mask + 1 chains */
    uint64_t mask;
    struct entry *head, *tail;
    uint64_t n, bytes;              /* held */
    uint64_t hits, busy, stored, evictions, expirations;
} __attribute__((aligned(64)));

struct qv_replay {
    uint64_t ttl_ns;
    uint64_t max_n, max_bytes;      /* per stripe */
    unsigned nstripes;              /* a power of two */
    struct stripe *s;
};

static size_t entry_cost(const struct entry *e)
{
    return sizeof *e + e->len;
}

void qv__replay_key(struct qv_replay_key *k, int carrier, const struct sockaddr_storage *peer,
                    socklen_t peer_len, uint64_t request_id)
{
    memset(k, 0, sizeof *k);
    k->carrier = (uint8_t)carrier;
    k->request_id = request_id;
    if (!peer)
        return;
    if (peer->ss_family == AF_INET && peer_len >= (socklen_t)sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)peer;
        k->family = AF_INET;
        k->port = a->sin_port;
        memcpy(k->addr, &a->sin_addr, 4);
    } else if (peer->ss_family == AF_INET6 &&
               peer_len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)peer;
        k->family = AF_INET6;
        k->port = a->sin6_port;
        memcpy(k->addr, &a->sin6_addr, 16);
    }
}

static uint64_t key_hash(const struct qv_replay_key *k)
{
    return qv_cache_hash64(k, sizeof *k, 0x7265706c6179ULL);
}

static int key_eq(const struct qv_replay_key *a, const struct qv_replay_key *b)
{
    return memcmp(a, b, sizeof *a) == 0;
}

/* ---- a stripe's chains and list (its mutex held) ----------------------------- */

static struct entry **chain_of(struct stripe *s, uint64_t hash)
{
    return &s->buckets[(hash >> 8) & s->mask];
}

static struct entry *find(struct stripe *s, const struct qv_replay_key *k, uint64_t hash)
{
    for (struct entry *e = *chain_of(s, hash); e; e = e->hnext)
        if (e->hash == hash && key_eq(&e->key, k))
            return e;
    return NULL;
}

static void list_unlink(struct stripe *s, struct entry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        s->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        s->tail = e->prev;
    e->prev = e->next = NULL;
}

static void list_append(struct stripe *s, struct entry *e)
{
    e->next = NULL;
    e->prev = s->tail;
    if (s->tail)
        s->tail->next = e;
    else
        s->head = e;
    s->tail = e;
}

static void link_entry(struct stripe *s, struct entry *e)
{
    struct entry **c = chain_of(s, e->hash);
    e->hnext = *c;
    *c = e;
    list_append(s, e);
    s->n++;
    s->bytes += entry_cost(e);
}

/* Unlink and free e. */
static void remove_entry(struct stripe *s, struct entry *e)
{
    for (struct entry **p = chain_of(s, e->hash); *p; p = &(*p)->hnext) {
        if (*p == e) {
            *p = e->hnext;
            break;
        }
    }
    list_unlink(s, e);
    s->n--;
    s->bytes -= entry_cost(e);
    qv_free(e);
}

/* Room for one more entry of cost bytes: expired entries first, then the
 * oldest DONE ones; IN PROGRESS ones are moved to the tail.  QV_EBUSY when
 * only entries in progress are left in the way.  O(entries) at worst. */
static int make_room(struct qv_replay *r, struct stripe *s, size_t cost, int64_t now)
{
    while (s->head && s->head->done && s->head->expires <= now) {
        remove_entry(s, s->head);
        s->expirations++;
    }
    uint64_t tries = s->n;
    while (s->n + 1 > r->max_n || s->bytes + cost > r->max_bytes) {
        if (!s->head || tries-- == 0)
            return QV_EBUSY;
        struct entry *e = s->head;
        if (!e->done) {
            list_unlink(s, e);
            list_append(s, e);
            continue;
        }
        remove_entry(s, e);
        s->evictions++;
    }
    return 0;
}

/* ---- the interface ------------------------------------------------------------ */

int qv__replay_begin(struct qv_replay *r, const struct qv_replay_key *key, int64_t now,
                     void *buf, size_t cap, size_t *len)
{
    uint64_t hash = key_hash(key);
    struct stripe *s = &r->s[hash & (r->nstripes - 1)];
    int rc;
    pthread_mutex_lock(&s->mu);
    struct entry *e = find(s, key, hash);
    if (e && e->done && e->expires <= now) {
        remove_entry(s, e);
        s->expirations++;
        e = NULL;
    }
    if (e && !e->done) {
        s->busy++;
        rc = QV_REPLAY_BUSY;
    } else if (e) {
        if (e->len > cap) {
            rc = qv_seterr(QV_ENOSPC, "replay: a stored answer of %zu bytes exceeds the %zu "
                           "bytes of the answer buffer", e->len, cap);
        } else {
            memcpy(buf, e->ans, e->len);
            *len = e->len;
            s->hits++;
            rc = QV_REPLAY_HIT;
        }
    } else if ((rc = make_room(r, s, sizeof *e, now)) != 0) {
        qv_seterr(rc, "replay: every entry of the table's stripe is a write in progress; "
                  "retry, or raise [server] replay_entries");
    } else if (!(e = qv_calloc(1, sizeof *e, QV_MEM_SERVER))) {
        rc = qv_seterr(QV_ENOMEM, "replay: no memory for an entry");
    } else {
        e->key = *key;
        e->hash = hash;
        link_entry(s, e);
        rc = QV_REPLAY_NEW;
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

void qv__replay_end(struct qv_replay *r, const struct qv_replay_key *key, int64_t now,
                    const void *answer, size_t len, int keep)
{
    uint64_t hash = key_hash(key);
    struct stripe *s = &r->s[hash & (r->nstripes - 1)];
    struct entry *d = NULL;
    if (keep && answer && len && sizeof *d + len <= r->max_bytes &&
        (d = qv_malloc(sizeof *d + len, QV_MEM_SERVER)) != NULL) {
        memset(d, 0, sizeof *d);
        d->key = *key;
        d->hash = hash;
        d->done = 1;
        d->expires = now + (int64_t)r->ttl_ns;
        d->len = len;
        memcpy(d->ans, answer, len);
    }
    pthread_mutex_lock(&s->mu);
    struct entry *e = find(s, key, hash);
    if (e && !e->done)
        remove_entry(s, e);
    if (d && make_room(r, s, sizeof *d + len, now) == 0) {
        link_entry(s, d);
        s->stored++;
        d = NULL;
    }
    pthread_mutex_unlock(&s->mu);
    qv_free(d);
}

void qv__replay_stats(struct qv_replay *r, struct qv_replay_stats *out)
{
    memset(out, 0, sizeof *out);
    for (unsigned i = 0; i < r->nstripes; i++) {
        struct stripe *s = &r->s[i];
        pthread_mutex_lock(&s->mu);
        out->hits += s->hits;
        out->busy += s->busy;
        out->stored += s->stored;
        out->evictions += s->evictions;
        out->expirations += s->expirations;
        out->entries += s->n;
        out->bytes += s->bytes;
        pthread_mutex_unlock(&s->mu);
    }
}

/* ---- life cycle ------------------------------------------------------------------ */

struct qv_replay *qv__replay_create(uint64_t entries, uint64_t bytes, uint64_t ttl_ms)
{
    if (entries < 1 || entries > (1u << 24)) {
        qv_seterr(QV_EINVAL, "replay: entries = %llu: use 1..16777216",
                  (unsigned long long)entries);
        return NULL;
    }
    if (bytes < 4096) {
        qv_seterr(QV_EINVAL, "replay: bytes = %llu: use 4096 or more",
                  (unsigned long long)bytes);
        return NULL;
    }
    if (ttl_ms < 1 || ttl_ms > 86400000u) {
        qv_seterr(QV_EINVAL, "replay: ttl_ms = %llu: use 1..86400000",
                  (unsigned long long)ttl_ms);
        return NULL;
    }
    struct qv_replay *r = qv_calloc(1, sizeof *r, QV_MEM_SERVER);
    if (!r)
        goto fail_alloc;
    r->nstripes = entries >= REPLAY_STRIPED_FROM ? REPLAY_STRIPES : 1;
    r->max_n = (entries + r->nstripes - 1) / r->nstripes;
    r->max_bytes = (bytes + r->nstripes - 1) / r->nstripes;
    r->ttl_ns = ttl_ms * 1000000u;
    r->s = qv_calloc(r->nstripes, sizeof *r->s, QV_MEM_SERVER);
    if (!r->s)
        goto fail_stripes;
    uint64_t nb = 1;
    while (nb < 2 * r->max_n)
        nb <<= 1;
    unsigned i;
    for (i = 0; i < r->nstripes; i++) {
        struct stripe *s = &r->s[i];
        s->mask = nb - 1;
        s->buckets = qv_calloc(nb, sizeof *s->buckets, QV_MEM_SERVER);
        if (!s->buckets)
            goto fail_buckets;
        pthread_mutex_init(&s->mu, NULL);
    }
    return r;

fail_buckets:
    while (i-- > 0) {
        pthread_mutex_destroy(&r->s[i].mu);
        qv_free(r->s[i].buckets);
    }
    qv_free(r->s);
fail_stripes:
    qv_free(r);
fail_alloc:
    qv_seterr(QV_ENOMEM, "replay: no memory for a table of %llu entries",
              (unsigned long long)entries);
    return NULL;
}

void qv__replay_free(struct qv_replay *r)
{
    if (!r)
        return;
    for (unsigned i = 0; i < r->nstripes; i++) {
        struct stripe *s = &r->s[i];
        while (s->head)
            remove_entry(s, s->head);
        pthread_mutex_destroy(&s->mu);
        qv_free(s->buckets);
    }
    qv_free(r->s);
    qv_free(r);
}
