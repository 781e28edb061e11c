/*
 * pool.h - a fork-join worker pool pinned to cores.
 *
 * qv_pool_run() hands `ntasks` task indices to the pool's threads (the
 * caller is worker 0 and works too) and returns when all are done.  Tasks
 * are claimed with an atomic counter, so uneven tasks balance themselves.
 * Workers spin briefly after a run before sleeping on a condition variable,
 * so back-to-back runs do not pay a wake-up each.  Worker i is pinned to
 * the i-th CPU of the process's affinity mask when pin is set.
 *
 * One run at a time: qv_pool_run is serialised by a mutex (it is called
 * per search, not per vector, so the lock is off the inner loops).
 */
#ifndef QUIVER_POOL_H
#define QUIVER_POOL_H

#include <stdbool.h>

typedef void (*qv_pool_fn)(void *arg, unsigned task, unsigned worker);

struct qv_pool;

/* nthreads = total workers including the caller; 0 = the number of CPUs
 * in the affinity mask.  Returns NULL and sets qv_errno: QV_ENOMEM,
 * QV_EINVAL (nthreads > 1024), or a -errno from pthread_create. */
struct qv_pool *qv_pool_create(unsigned nthreads, bool pin);

/* Run fn(arg, task, worker) for task in [0, ntasks); worker in
 * [0, qv_pool_threads(p)).  Blocks until all tasks are done. */
void qv_pool_run(struct qv_pool *p, unsigned ntasks, qv_pool_fn fn, void *arg);

unsigned qv_pool_threads(const struct qv_pool *p);

/* Join the threads.  qv_pool_free(NULL) is a no-op. */
void qv_pool_free(struct qv_pool *p);

#endif
