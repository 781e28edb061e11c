/*
 * idmap.h - internal: a hash map from u64 vector ids to u64 rows.
 *
 * Open addressing with linear probing over a power-of-two table, kept at
 * most 1/2 full; deletion by backward shift, so there are no tombstones and
 * lookups stay short however many removes happen.  The key QV_ID_NONE
 * (UINT64_MAX) marks an empty slot and cannot be stored.  Not thread-safe:
 * the owning index serialises writers.
 */
#ifndef QV_IDMAP_H
#define QV_IDMAP_H

#include <stddef.h>
#include <stdint.h>

struct qv_idmap {
    uint64_t *keys;
    uint64_t *vals;
    size_t cap;         /* power of two, 0 before the first insert */
    size_t count;
};

void qv__idmap_init(struct qv_idmap *m);
void qv__idmap_fini(struct qv_idmap *m);
/* Make room for `extra` more keys without rehashing.  0 or QV_ENOMEM. */
int qv__idmap_reserve(struct qv_idmap *m, size_t extra);
/* Value of key, or -1.  O(1) expected. */
int64_t qv__idmap_get(const struct qv_idmap *m, uint64_t key);
/* Insert or overwrite.  0 or QV_ENOMEM (map unchanged). */
int qv__idmap_put(struct qv_idmap *m, uint64_t key, uint64_t val);
/* Remove key; returns 1 if it was present, else 0. */
int qv__idmap_del(struct qv_idmap *m, uint64_t key);

#endif
