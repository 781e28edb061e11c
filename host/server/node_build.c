/*
 * node_build.c - the node's builder thread (node.h, "Segments"): builds
 * the index of each queued sealed segment from its live rows, WITHOUT
 * the service's pause, then swaps it in under one.
 *
 * One job, segment s of collection c (slot k):
 *   1. under c->wmu: s -> BUILDING; snapshot the rows alive now (sel[]);
 *      choose nlist (IVF types: the collection's, or for nlist 0 the
 *      square root of the rows, fixed for later builds once a build of
 *      QV_NODE_AUTO_NLIST_ROWS rows chose it)
 *   2. no lock: build segment s' from s's rows sel[] (s's vectors, ids
 *      and attributes are frozen since it was sealed: no writer changes
 *      them; deletes only clear its alive bits and tombstone its index)
 *   3. under c->wmu: rows of sel[] that died during the build are
 *      tombstoned in s' (not visible yet: no pause); then, paused, s'
 *      takes slot k (s' empty: the slot becomes a hole), the engine is
 *      attached to s' and s detached (qv__seg_detach); resumed, the
 *      service's epoch is bumped and the id map points every live id of
 *      s at its row in s' (same slot, new row: keys of s' are k << 40 |
 *      its rows)
 *   4. no lock: free s.
 * A failed build (ENOMEM, or an index error) leaves s as a sealed flat
 * segment, searched exactly, and marks it so that it is not queued again.
 * A collection being dropped abandons the job at 1 or 3.
 *
 * Pace: with opts.build_share < 1 the thread rests after each job for
 * its build time x (1 / share - 1) (a timed wait on node->cv: a stop ends
 * it), so background builds and compactions use at most that share of a
 * CPU however many are queued; searches keep the rest.
 *
 * Queue: a FIFO of segments (job_next) under node->mu, with the count of
 * each collection's queued or building segments (c->pending, for
 * qv_node_wait_builds).  The thread holds a reference on the collection
 * of the job in hand, so a drop waits for that job.  qv__build_stop lets
 * the job in hand finish (index builds have no cancel point) and leaves
 * the queue to the drops that follow.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <string.h>
#include <time.h>

#include "node_int.h"
#include "quiver/alloc.h"
#include "quiver/errors.h"
#include "quiver/ivf.h"
#include "quiver/ivfpq.h"
#include "quiver/log.h"
#include "quiver/service.h"
#include "quiver/timeutil.h"

/* Append s (wmu held by the caller); refused quietly when c is being
 * dropped. */
void qv__build_enqueue(struct ncoll *c, struct nseg *s)
{
    struct qv_node *node = c->node;

    pthread_mutex_lock(&node->mu);
    if (!atomic_load_explicit(&c->dropping, memory_order_acquire)) {
        s->state = NSEG_QUEUED;
        s->job_next = NULL;
        if (node->jobs_tail)
            node->jobs_tail->job_next = s;
        else
            node->jobs_head = s;
        node->jobs_tail = s;
        c->pending++;
        pthread_cond_broadcast(&node->cv);
    }
    pthread_mutex_unlock(&node->mu);
}

/* Remove c's queued jobs (node->mu held). */
void qv__build_forget(struct qv_node *node, struct ncoll *c)
{
    struct nseg **pp = &node->jobs_head, *last = NULL;

    while (*pp != NULL) {
        if ((*pp)->coll == c) {
            *pp = (*pp)->job_next;
            c->pending--;
        } else {
            last = *pp;
            pp = &(*pp)->job_next;
        }
    }
    node->jobs_tail = last;
}

static int alive(const struct nseg *s, uint64_t r)
{
    return (int)(s->alive[r / 64] >> (r % 64) & 1);
}

/* Step 1: the rows to build from, the nlist.  wmu held.  Returns the
 * number of rows (*sel allocated) or -1 (no memory). */
static int64_t snapshot(struct ncoll *c, struct nseg *s, uint32_t **sel, uint32_t *nlist)
{
    uint64_t m = 0;

    *sel = qv_malloc((s->live ? s->live : 1) * sizeof **sel, QV_MEM_SERVER);
    if (*sel == NULL)
        return -1;
    for (uint64_t r = 0; r < s->rows; r++)
        if (alive(s, r))
            (*sel)[m++] = (uint32_t)r;
    *nlist = c->nlist_eff;
    if (*nlist == 0 && c->spec.index != QV_NODE_FLAT && c->spec.index != QV_NODE_HNSW) {
        double root = floor(sqrt((double)m));
        *nlist = root < 1.0 ? 1 : root > QV_NODE_MAX_NLIST ? QV_NODE_MAX_NLIST
                                                            : (uint32_t)root;
        if (m >= QV_NODE_AUTO_NLIST_ROWS)
            c->nlist_eff = *nlist;      /* PROTOCOL: chosen at the first train */
    }
    return (int64_t)m;
}

/* Step 3: swap fresh (may be NULL: no rows) into s's slot.  wmu held.
 * Returns 0 or QV_ENOMEM (nothing swapped). */
static int swap_in(struct ncoll *c, struct nseg *s, struct nseg *fresh, const uint32_t *sel,
                   uint64_t m)
{
    struct qv_engine *e = c->node->o.engine;

    if (qv__idmap_reserve(&c->map, 1) != 0)     /* the puts below overwrite only */
        return QV_ENOMEM;
    for (uint64_t i = 0; fresh != NULL && i < m; i++) {
        if (!alive(s, sel[i])) {
            uint64_t key = node_key(s->slot, i);
            qv__seg_remove_key(fresh, key);
            fresh->alive[i / 64] &= ~(1ULL << (i % 64));
            fresh->live--;
        }
    }
    qv__node_pause(c);
    if (fresh != NULL && e != NULL) {
        if (fresh->kind == NSEG_IVF)
            qv_ivf_set_engine(fresh->ix.ivf, e);
        else if (fresh->kind == NSEG_IVFPQ)
            qv_ivfpq_set_engine(fresh->ix.ivfpq, e);
    }
    c->slots[s->slot] = fresh;
    qv__seg_detach(s);
    qv__node_resume(c);
    qv_service_bump_epoch(c->node->o.service, c->id);
    for (uint64_t i = 0; fresh != NULL && i < m; i++)
        if (alive(fresh, i))
            qv__idmap_put(&c->map, fresh->ids[i], node_key(s->slot, i));
    if (fresh != NULL && (fresh->kind == NSEG_IVF || fresh->kind == NSEG_IVFPQ))
        c->trained = 1;
    return 0;
}

static void run_job(struct ncoll *c, struct nseg *s)
{
    struct nseg *fresh = NULL;
    uint32_t *sel = NULL, nlist = 0;
    int64_t m;

    pthread_mutex_lock(&c->wmu);
    if (atomic_load_explicit(&c->dropping, memory_order_acquire)) {
        pthread_mutex_unlock(&c->wmu);
        return;
    }
    s->state = NSEG_BUILDING;
    m = snapshot(c, s, &sel, &nlist);
    pthread_mutex_unlock(&c->wmu);
    if (m > 0)
        fresh = qv__seg_build(c, s->slot, s, sel, (uint64_t)m, nlist);
    pthread_mutex_lock(&c->wmu);
    if (atomic_load_explicit(&c->dropping, memory_order_acquire)) {
        pthread_mutex_unlock(&c->wmu);
        qv__seg_free(fresh, 0);
        qv_free(sel);
        return;
    }
    if (m < 0 || (m > 0 && fresh == NULL) || swap_in(c, s, fresh, sel, (uint64_t)m) != 0) {
        QV_LOG_RL(QV_LOG_WARN, 1, "node: collection '%s': the segment in slot %u stays an "
                  "exact flat segment: its build failed (%s)", c->name, s->slot,
                  m < 0 || fresh == NULL ? qv_errmsg() : "no memory for the id map");
        s->state = NSEG_SEALED;
        s->build_failed = 1;
        pthread_mutex_unlock(&c->wmu);
        qv__seg_free(fresh, 0);
        qv_free(sel);
        return;
    }
    pthread_mutex_unlock(&c->wmu);
    qv__seg_free(s, 0);             /* detached: no pause */
    qv_free(sel);
}

static void *builder_main(void *arg)
{
    struct qv_node *node = arg;

    pthread_mutex_lock(&node->mu);
    for (;;) {
        while (!node->stop && node->jobs_head == NULL)
            pthread_cond_wait(&node->cv, &node->mu);
        if (node->stop)
            break;
        struct nseg *s = node->jobs_head;
        struct ncoll *c = s->coll;
        node->jobs_head = s->job_next;
        if (node->jobs_head == NULL)
            node->jobs_tail = NULL;
        atomic_fetch_add_explicit(&c->refs, 1, memory_order_acq_rel);
        pthread_mutex_unlock(&node->mu);
        int64_t t0 = qv_now_ns();
        run_job(c, s);
        int64_t took = qv_now_ns() - t0;
        pthread_mutex_lock(&node->mu);
        c->pending--;
        node->bst.builds++;
        node->bst.build_ns += took;
        node->bst.last_build_ns = took;
        pthread_cond_broadcast(&node->cv);
        pthread_mutex_unlock(&node->mu);
        qv__node_coll_put(c);
        pthread_mutex_lock(&node->mu);
        double share = node->o.build_share;
        if (share > 0 && share < 1 && !node->stop) {
            int64_t rest = (int64_t)((double)took * (1.0 / share - 1.0));
            struct timespec until;
            clock_gettime(CLOCK_MONOTONIC, &until);
            int64_t ns = (int64_t)until.tv_nsec + rest % 1000000000;
            until.tv_sec += rest / 1000000000 + ns / 1000000000;
            until.tv_nsec = ns % 1000000000;
            int64_t r0 = qv_now_ns();
            while (!node->stop &&
                   pthread_cond_timedwait(&node->cv, &node->mu, &until) != ETIMEDOUT)
                ;
            node->bst.rest_ns += qv_now_ns() - r0;
        }
    }
    pthread_mutex_unlock(&node->mu);
    return NULL;
}

void qv_node_build_stats(struct qv_node *node, struct qv_node_build_stats *out)
{
    pthread_mutex_lock(&node->mu);
    *out = node->bst;
    pthread_mutex_unlock(&node->mu);
}

int qv__build_start(struct qv_node *node)
{
    int rc = pthread_create(&node->builder, NULL, builder_main, node);

    if (rc != 0)
        return qv_seterr(-rc, "node: cannot start the builder thread: %s", strerror(rc));
    node->started = 1;
    pthread_setname_np(node->builder, "qv-build");
    return 0;
}

void qv__build_stop(struct qv_node *node)
{
    if (!node->started)
        return;
    pthread_mutex_lock(&node->mu);
    node->stop = 1;
    pthread_cond_broadcast(&node->cv);
    pthread_mutex_unlock(&node->mu);
    pthread_join(node->builder, NULL);
    node->started = 0;
}
