/*
 * topk.h - exact top-k selection: a bounded max-heap keyed on (distance, id).
 *
 * The heap keeps the k smallest (distance, id) pairs seen, ordered
 * lexicographically: a smaller distance wins; on equal distance the smaller
 * id wins.  So the result is exactly the first k entries of a full sort by
 * (distance, id), ties included, which is what tests compare against.
 * The root is the worst kept pair; `worst` caches its distance (+inf until
 * the heap is full) so scans reject most candidates with one compare.
 *
 * Storage is the caller's (init/fini convention): no allocation, usable on
 * the hot path.  A heap is used by one thread at a time.
 */
#ifndef QUIVER_TOPK_H
#define QUIVER_TOPK_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#define QV_ID_NONE UINT64_MAX   /* id of an empty result slot */

struct qv_topk {
    float *dist;        /* k slots, caller's storage */
    uint64_t *ids;      /* k slots, caller's storage */
    uint32_t k;
    uint32_t n;         /* pairs held, <= k */
    float worst;        /* distance at the root when full, else +inf */
    uint64_t worst_id;  /* id at the root when full, else QV_ID_NONE */
};

/* Start an empty heap over caller storage of k >= 1 slots.  Cannot fail. */
void qv_topk_init(struct qv_topk *t, uint32_t k, float *dist, uint64_t *ids);

/* Offer a pair; kept when the heap is not full or (d, id) < the root.
 * O(log k).  NaN distances are never kept. */
void qv_topk__push_slow(struct qv_topk *t, float d, uint64_t id);

static inline void qv_topk_push(struct qv_topk *t, float d, uint64_t id)
{
    if (d < t->worst || (d == t->worst && id < t->worst_id))
        qv_topk__push_slow(t, d, id);
}

/* Merge every pair of src into dst (src unchanged).  O(src->n log k). */
void qv_topk_merge(struct qv_topk *dst, const struct qv_topk *src);

/* Sort the held pairs ascending by (distance, id) in place and fill slots
 * n..k-1 with (+inf, QV_ID_NONE).  The heap property is lost: re-init
 * before pushing again.  O(k log k).  Returns n. */
uint32_t qv_topk_sort(struct qv_topk *t);

#endif
