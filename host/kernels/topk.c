/*
 * topk.c - bounded max-heap on (distance, id); see topk.h.
 *
 * The heap is an implicit binary heap in the caller's two arrays (dist[],
 * ids[]), root at 0, whose order is the reverse of the result order: the
 * root is the largest (distance, id) pair kept.  A pushed pair replaces the
 * root and sifts down, so a push into a full heap costs O(log k) and a
 * rejected candidate costs one compare in qv_topk_push (inline).
 */
#include "quiver/topk.h"

/* (da, ia) > (db, ib) in result order */
static inline int pair_gt(float da, uint64_t ia, float db, uint64_t ib)
{
    return da > db || (da == db && ia > ib);
}

void qv_topk_init(struct qv_topk *t, uint32_t k, float *dist, uint64_t *ids)
{
    t->dist = dist;
    t->ids = ids;
    t->k = k;
    t->n = 0;
    t->worst = INFINITY;
    t->worst_id = QV_ID_NONE;
}

static void sift_down(float *dist, uint64_t *ids, uint32_t n, uint32_t i)
{
    float d = dist[i];
    uint64_t id = ids[i];
    for (;;) {
        uint32_t l = 2 * i + 1;
        if (l >= n)
            break;
        uint32_t c = l;
        if (l + 1 < n && pair_gt(dist[l + 1], ids[l + 1], dist[l], ids[l]))
            c = l + 1;
        if (!pair_gt(dist[c], ids[c], d, id))
            break;
        dist[i] = dist[c];
        ids[i] = ids[c];
        i = c;
    }
    dist[i] = d;
    ids[i] = id;
}

static void sift_up(float *dist, uint64_t *ids, uint32_t i)
{
    float d = dist[i];
    uint64_t id = ids[i];
    while (i > 0) {
        uint32_t p = (i - 1) / 2;
        if (!pair_gt(d, id, dist[p], ids[p]))
            break;
        dist[i] = dist[p];
        ids[i] = ids[p];
        i = p;
    }
    dist[i] = d;
    ids[i] = id;
}

void qv_topk__push_slow(struct qv_topk *t, float d, uint64_t id)
{
    if (d != d)         /* NaN is never kept */
        return;
    if (t->n < t->k) {
        t->dist[t->n] = d;
        t->ids[t->n] = id;
        sift_up(t->dist, t->ids, t->n);
        t->n++;
        if (t->n == t->k) {
            t->worst = t->dist[0];
            t->worst_id = t->ids[0];
        }
        return;
    }
    if (!pair_gt(t->dist[0], t->ids[0], d, id))
        return;
    t->dist[0] = d;
    t->ids[0] = id;
    sift_down(t->dist, t->ids, t->n, 0);
    t->worst = t->dist[0];
    t->worst_id = t->ids[0];
}

void qv_topk_merge(struct qv_topk *dst, const struct qv_topk *src)
{
    for (uint32_t i = 0; i < src->n; i++)
        qv_topk_push(dst, src->dist[i], src->ids[i]);
}

uint32_t qv_topk_sort(struct qv_topk *t)
{
    /* Heap sort: repeatedly move the root (largest) to the end. */
    uint32_t n = t->n;
    for (uint32_t end = n; end > 1; end--) {
        float d = t->dist[0];
        uint64_t id = t->ids[0];
        t->dist[0] = t->dist[end - 1];
        t->ids[0] = t->ids[end - 1];
        t->dist[end - 1] = d;
        t->ids[end - 1] = id;
        sift_down(t->dist, t->ids, end - 1, 0);
    }
    for (uint32_t i = n; i < t->k; i++) {
        t->dist[i] = INFINITY;
        t->ids[i] = QV_ID_NONE;
    }
    return n;
}
