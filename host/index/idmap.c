/*
 * idmap.c - id -> row hash map; see idmap.h for the design.
 */
#include <string.h>

#include "idmap.h"
#include "quiver/alloc.h"
#include "quiver/errors.h"
#include "quiver/topk.h"

static inline uint64_t mix(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

void qv__idmap_init(struct qv_idmap *m)
{
    memset(m, 0, sizeof *m);
}

void qv__idmap_fini(struct qv_idmap *m)
{
    qv_free(m->keys);
    qv_free(m->vals);
    memset(m, 0, sizeof *m);
}

static int rehash(struct qv_idmap *m, size_t newcap)
{
    uint64_t *keys = qv_malloc(newcap * sizeof *keys, QV_MEM_INDEX);
    uint64_t *vals = qv_malloc(newcap * sizeof *vals, QV_MEM_INDEX);
    if (!keys || !vals) {
        qv_free(keys);
        qv_free(vals);
        return QV_ENOMEM;
    }
    memset(keys, 0xFF, newcap * sizeof *keys);
    size_t mask = newcap - 1;
    for (size_t i = 0; i < m->cap; i++) {
        if (m->keys[i] == QV_ID_NONE)
            continue;
        size_t j = mix(m->keys[i]) & mask;
        while (keys[j] != QV_ID_NONE)
            j = (j + 1) & mask;
        keys[j] = m->keys[i];
        vals[j] = m->vals[i];
    }
    qv_free(m->keys);
    qv_free(m->vals);
    m->keys = keys;
    m->vals = vals;
    m->cap = newcap;
    return 0;
}

int qv__idmap_reserve(struct qv_idmap *m, size_t extra)
{
    size_t need = (m->count + extra) * 2;
    if (need <= m->cap)
        return 0;
    size_t cap = m->cap ? m->cap : 64;
    while (cap < need)
        cap *= 2;
    return rehash(m, cap);
}

int64_t qv__idmap_get(const struct qv_idmap *m, uint64_t key)
{
    if (m->cap == 0 || key == QV_ID_NONE)
        return -1;
    size_t mask = m->cap - 1;
    for (size_t j = mix(key) & mask;; j = (j + 1) & mask) {
        if (m->keys[j] == key)
            return (int64_t)m->vals[j];
        if (m->keys[j] == QV_ID_NONE)
            return -1;
    }
}

int qv__idmap_put(struct qv_idmap *m, uint64_t key, uint64_t val)
{
    int rc = qv__idmap_reserve(m, 1);
    if (rc)
        return rc;
    size_t mask = m->cap - 1;
    size_t j = mix(key) & mask;
    while (m->keys[j] != QV_ID_NONE && m->keys[j] != key)
        j = (j + 1) & mask;
    if (m->keys[j] == QV_ID_NONE)
        m->count++;
    m->keys[j] = key;
    m->vals[j] = val;
    return 0;
}

int qv__idmap_del(struct qv_idmap *m, uint64_t key)
{
    if (m->cap == 0 || key == QV_ID_NONE)
        return 0;
    size_t mask = m->cap - 1;
    size_t j = mix(key) & mask;
    while (m->keys[j] != key) {
        if (m->keys[j] == QV_ID_NONE)
            return 0;
        j = (j + 1) & mask;
    }
    /* Backward-shift deletion: pull later members of the probe run into
     * the hole when their home slot is not between the hole and them. */
    size_t hole = j;
    for (size_t i = (j + 1) & mask; m->keys[i] != QV_ID_NONE; i = (i + 1) & mask) {
        size_t home = mix(m->keys[i]) & mask;
        /* move when home is cyclically outside (hole, i] */
        int in_range = hole <= i ? (home > hole && home <= i) : (home > hole || home <= i);
        if (!in_range) {
            m->keys[hole] = m->keys[i];
            m->vals[hole] = m->vals[i];
            hole = i;
        }
    }
    m->keys[hole] = QV_ID_NONE;
    m->count--;
    return 1;
}
