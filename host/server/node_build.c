/*
 * node_build.c - the node's builder thread (node.h, "Segments"): builds
 * the index of each queued sealed segment from its live rows, WITHOUT
 * the service's pause, then swaps it in under one.
 *
 * One job, segment s of collection c (slot k), with the segments that
 * ride on it (s->merge_next: a compaction merge, node.c maintain()):
 *   1. under c->wmu: each -> BUILDING; the rows alive now of each
 *      (sel[]); choose nlist (IVF types: the collection's, or for nlist 0
 *      the square root of the rows, fixed for later builds once a build
 *      of QV_NODE_AUTO_NLIST_ROWS rows chose it); with a data_dir, take
 *      the next segment file number (c->build_file while the job runs)
 *   2. no lock: build segment s' from their rows sel[] in order (their
 *      vectors, ids and attributes are frozen since they were sealed: no
 *      writer changes them; deletes only clear alive bits and tombstone
 *      indexes); with a data_dir write s' to its files
 *      (qv__store_write_seg: a failure is logged and s' lives without
 *      files, its rows then go into snapshots)
 *   3. under c->wmu: rows of sel[] that died during the build are
 *      tombstoned in s' (not visible yet: no pause); then, paused, s'
 *      takes slot k (s' empty: the slot becomes a hole), the riders'
 *      slots become holes, the engine is attached to s' and the sources
 *      detached (qv__seg_detach); resumed, the service's epoch is bumped
 *      and the id map points every live id at its row in s' (keys of s'
 *      are k << 40 | its rows)
 *   4. no lock: free the sources.  Their files stay until a snapshot that
 *      no longer lists them (node_store.c).
 * A failed build (ENOMEM, or an index error) leaves the sources as sealed
 * segments (flat ones searched exactly) and marks them so that they are
 * not queued again.  A collection being dropped abandons the job at 1 or
 * 3.
 *
 * Priority: the thread runs at nice BUILDER_NICE (10), so that on a busy
 * host the writers, the transports and the dispatcher get the CPU first;
 * alone on a CPU it runs at full speed.
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
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "node_int.h"
#include "quiver/alloc.h"
#include "quiver/errors.h"
#include "quiver/ivf.h"
#include "quiver/ivfpq.h"
#include "quiver/log.h"
#include "quiver/service.h"
#include "quiver/timeutil.h"

#define BUILDER_NICE 10              /* the builder thread's nice value */

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

/* One job: its segments (src[0] is the queued one, whose slot the result
 * takes; the others rode along on its merge_next), the rows of each
 * alive when it started. */
struct job {
    struct nseg *src[NODE_MERGE_MAX];
    uint32_t *sel[NODE_MERGE_MAX];
    uint64_t n[NODE_MERGE_MAX];
    uint32_t nsrc;
    uint64_t total;
};

static void job_free(struct job *J)
{
    for (uint32_t j = 0; j < J->nsrc; j++)
        qv_free(J->sel[j]);
}

/* Step 1: the rows to build from, the nlist.  wmu held.  0 or -1 (no
 * memory). */
static int snapshot(struct ncoll *c, struct nseg *s, struct job *J, uint32_t *nlist)
{
    memset(J, 0, sizeof *J);
    for (struct nseg *x = s; x != NULL && J->nsrc < NODE_MERGE_MAX; x = x->merge_next) {
        uint64_t m = 0;
        uint32_t *sel = qv_malloc((x->live ? x->live : 1) * sizeof *sel, QV_MEM_SERVER);
        if (sel == NULL)
            return -1;
        for (uint64_t r = 0; r < x->rows; r++)
            if (alive(x, r))
                sel[m++] = (uint32_t)r;
        x->state = NSEG_BUILDING;
        J->src[J->nsrc] = x;
        J->sel[J->nsrc] = sel;
        J->n[J->nsrc++] = m;
        J->total += m;
    }
    *nlist = c->nlist_eff;
    if (*nlist == 0 && c->spec.index != QV_NODE_FLAT && c->spec.index != QV_NODE_HNSW) {
        double root = floor(sqrt((double)J->total));
        *nlist = root < 1.0 ? 1 : root > QV_NODE_MAX_NLIST ? QV_NODE_MAX_NLIST
                                                            : (uint32_t)root;
        if (J->total >= QV_NODE_AUTO_NLIST_ROWS)
            c->nlist_eff = *nlist;      /* PROTOCOL: chosen at the first train */
    }
    return 0;
}

/* Step 3: swap fresh (may be NULL: no rows) into the first source's slot;
 * the other sources' slots become holes.  wmu held.  Returns 0 or
 * QV_ENOMEM (nothing swapped). */
static int swap_in(struct ncoll *c, const struct job *J, struct nseg *fresh)
{
    struct qv_engine *e = c->node->o.engine;
    const uint32_t slot = J->src[0]->slot;
    uint64_t i = 0;

    if (qv__idmap_reserve(&c->map, 1) != 0)     /* the puts below overwrite only */
        return QV_ENOMEM;
    for (uint32_t j = 0; fresh != NULL && j < J->nsrc; j++) {
        for (uint64_t t = 0; t < J->n[j]; t++, i++) {
            if (!alive(J->src[j], J->sel[j][t])) {
                qv__seg_remove_key(fresh, node_key(slot, i));
                fresh->alive[i / 64] &= ~(1ULL << (i % 64));
                fresh->live--;
            }
        }
    }
    qv__node_pause(c);
    if (fresh != NULL && e != NULL) {
        if (fresh->kind == NSEG_IVF)
            qv_ivf_set_engine(fresh->ix.ivf, e);
        else if (fresh->kind == NSEG_IVFPQ)
            qv_ivfpq_set_engine(fresh->ix.ivfpq, e);
    }
    for (uint32_t j = 0; j < J->nsrc; j++) {
        c->slots[J->src[j]->slot] = j == 0 ? fresh : NULL;
        qv__seg_detach(J->src[j]);
    }
    qv__node_resume(c);
    qv_service_bump_epoch(c->node->o.service, c->id);
    for (uint64_t r = 0; fresh != NULL && r < fresh->rows; r++)
        if (alive(fresh, r))
            qv__idmap_put(&c->map, fresh->ids[r], node_key(slot, r));
    if (fresh != NULL && (fresh->kind == NSEG_IVF || fresh->kind == NSEG_IVFPQ))
        c->trained = 1;
    return 0;
}

/* A job that cannot finish: its segments stay sealed as they are (exact
 * flat segments when never built), not queued again.  wmu held. */
static void job_fail(struct ncoll *c, const struct job *J, struct nseg *s, const char *why)
{
    QV_LOG_RL(QV_LOG_WARN, 1, "node: collection '%s': the segment in slot %u%s stays as "
              "it is: its build failed (%s)", c->name, s->slot,
              J->nsrc > 1 ? " and those merged with it" : "", why);
    for (struct nseg *x = s, *next; x != NULL; x = next) {
        next = x->merge_next;
        x->merge_next = NULL;
        x->state = NSEG_SEALED;
        x->build_failed = 1;
    }
}

/* A sealed FLAT segment is final as it is: write its rows file (its
 * arrays are frozen) and note the file; no copy, no swap. */
static void persist_job(struct ncoll *c, struct nseg *s)
{
    uint64_t file;

    pthread_mutex_lock(&c->wmu);
    s->persist_only = 0;
    if (atomic_load_explicit(&c->dropping, memory_order_acquire)) {
        pthread_mutex_unlock(&c->wmu);
        return;
    }
    s->state = NSEG_BUILDING;
    c->build_file = file = c->next_file++;
    pthread_mutex_unlock(&c->wmu);
    int rc = qv__store_write_seg(c, s, file);
    if (rc != 0)
        QV_LOG_RL(QV_LOG_WARN, 1, "node: collection '%s': the segment sealed in slot %u is "
                  "not written to disk (%s): snapshots keep its rows instead", c->name,
                  s->slot, qv_errmsg());
    pthread_mutex_lock(&c->wmu);
    c->build_file = 0;
    s->state = NSEG_SEALED;
    if (rc == 0)
        s->file_no = file;
    pthread_mutex_unlock(&c->wmu);
}

static void run_job(struct ncoll *c, struct nseg *s)
{
    struct nseg *fresh = NULL;
    uint32_t nlist = 0;
    uint64_t file = 0;
    struct job J;
    int rc;

    pthread_mutex_lock(&c->wmu);
    if (atomic_load_explicit(&c->dropping, memory_order_acquire)) {
        pthread_mutex_unlock(&c->wmu);
        return;
    }
    if (snapshot(c, s, &J, &nlist) != 0) {
        job_fail(c, &J, s, "no memory for its row list");
        pthread_mutex_unlock(&c->wmu);
        job_free(&J);
        return;
    }
    if (c->node->o.data_dir != NULL && J.total > 0)
        c->build_file = file = c->next_file++;
    pthread_mutex_unlock(&c->wmu);
    if (J.total > 0)
        fresh = qv__seg_build(c, s->slot, J.src, J.sel, J.n, J.nsrc, nlist);
    if (fresh != NULL && file != 0) {
        /* its files before anyone can see it: a snapshot lists it from then */
        if (qv__store_write_seg(c, fresh, file) == 0)
            fresh->file_no = file;
        else
            QV_LOG_RL(QV_LOG_WARN, 1, "node: collection '%s': the segment built in slot %u "
                      "is not written to disk (%s): snapshots keep its rows instead",
                      c->name, s->slot, qv_errmsg());
    }
    pthread_mutex_lock(&c->wmu);
    c->build_file = 0;
    if (atomic_load_explicit(&c->dropping, memory_order_acquire)) {
        pthread_mutex_unlock(&c->wmu);
        qv__seg_free(fresh, 0);
        job_free(&J);
        return;
    }
    if ((J.total > 0 && fresh == NULL) || (rc = swap_in(c, &J, fresh)) != 0) {
        job_fail(c, &J, s, fresh == NULL ? qv_errmsg() : "no memory for the id map");
        pthread_mutex_unlock(&c->wmu);
        if (fresh != NULL && fresh->file_no)
            qv__store_remove_seg(c, fresh->file_no);
        qv__seg_free(fresh, 0);
        job_free(&J);
        return;
    }
    pthread_mutex_unlock(&c->wmu);
    for (uint32_t j = 0; j < J.nsrc; j++)
        qv__seg_free(J.src[j], 0);  /* detached: no pause */
    job_free(&J);
}

static void *builder_main(void *arg)
{
    struct qv_node *node = arg;

    /* background work: when CPUs are short, writers and searches first */
    if (setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), BUILDER_NICE) != 0)
        QV_DEBUG("node: builder thread: setpriority: %s", strerror(errno));
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
        if (s->persist_only)        /* [wmu], but only seal() sets it, before */
            persist_job(c, s);
        else
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
