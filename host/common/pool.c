/*
 * pool.c - fork-join worker pool; see pool.h.
 *
 * Protocol.  A run publishes (fn, arg, ntasks), resets the task counter and
 * bumps `generation` (release).  Workers wait for a new generation: they
 * spin on it for a short while (QV_POOL_SPIN_NS) after each run, then
 * sleep on `wake` under `lock`.  Each participant (the caller included)
 * claims task indices with an atomic fetch-add until they run out, then
 * increments `done_workers`; the caller returns once every worker has
 * checked in, so nothing of the run is touched after qv_pool_run returns.
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "quiver/alloc.h"
#include "quiver/errors.h"
#include "quiver/log.h"
#include "quiver/pool.h"
#include "quiver/timeutil.h"

#define QV_POOL_SPIN_NS 200000      /* 0.2 ms of spinning before sleeping */
#define QV_POOL_MAX 1024

struct qv_pool_worker {
    struct qv_pool *pool;
    unsigned index;
    int cpu;                        /* -1: not pinned */
    pthread_t thread;
} __attribute__((aligned(64)));

struct qv_pool {
    unsigned nthreads;
    pthread_mutex_t run_lock;       /* one run at a time */
    pthread_mutex_t lock;           /* guards sleeping on wake */
    pthread_cond_t wake;
    _Atomic uint64_t generation;
    _Atomic unsigned next_task __attribute__((aligned(64)));
    _Atomic unsigned done_workers __attribute__((aligned(64)));
    _Atomic int stop;
    unsigned sleepers;              /* guarded by lock */
    qv_pool_fn fn;
    void *arg;
    unsigned ntasks;
    struct qv_pool_worker *workers; /* nthreads - 1 background workers */
};

static void pin_to(int cpu)
{
    if (cpu < 0)
        return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (pthread_setaffinity_np(pthread_self(), sizeof set, &set) != 0)
        QV_WARN("pool: cannot pin a worker to CPU %d; it will float", cpu);
}

static void work(struct qv_pool *p, unsigned worker)
{
    for (;;) {
        unsigned t = atomic_fetch_add_explicit(&p->next_task, 1, memory_order_relaxed);
        if (t >= p->ntasks)
            break;
        p->fn(p->arg, t, worker);
    }
    atomic_fetch_add_explicit(&p->done_workers, 1, memory_order_acq_rel);
}

static void *worker_main(void *v)
{
    struct qv_pool_worker *w = v;
    struct qv_pool *p = w->pool;
    pin_to(w->cpu);
    uint64_t seen = 0;
    for (;;) {
        uint64_t gen = atomic_load_explicit(&p->generation, memory_order_acquire);
        if (gen == seen) {
            int64_t t0 = qv_now_ns();
            while ((gen = atomic_load_explicit(&p->generation, memory_order_acquire)) == seen &&
                   !atomic_load_explicit(&p->stop, memory_order_relaxed) &&
                   qv_now_ns() - t0 < QV_POOL_SPIN_NS)
                __builtin_ia32_pause();
            if (gen == seen) {
                pthread_mutex_lock(&p->lock);
                p->sleepers++;
                while ((gen = atomic_load_explicit(&p->generation, memory_order_acquire)) == seen &&
                       !atomic_load_explicit(&p->stop, memory_order_relaxed))
                    pthread_cond_wait(&p->wake, &p->lock);
                p->sleepers--;
                pthread_mutex_unlock(&p->lock);
            }
        }
        if (atomic_load_explicit(&p->stop, memory_order_relaxed))
            break;
        seen = gen;
        work(p, w->index);
    }
    return NULL;
}

static int affinity_cpus(int *cpus, unsigned max)
{
    cpu_set_t set;
    int n = 0;
    if (sched_getaffinity(0, sizeof set, &set) != 0)
        return 0;
    for (int c = 0; c < CPU_SETSIZE && (unsigned)n < max; c++)
        if (CPU_ISSET(c, &set))
            cpus[n++] = c;
    return n;
}

struct qv_pool *qv_pool_create(unsigned nthreads, bool pin)
{
    int cpus[QV_POOL_MAX];
    int ncpus = affinity_cpus(cpus, QV_POOL_MAX);
    if (nthreads == 0)
        nthreads = ncpus > 0 ? (unsigned)ncpus : 1;
    if (nthreads > QV_POOL_MAX) {
        qv_seterr(QV_EINVAL, "pool: %u threads requested; at most %d are allowed",
                  nthreads, QV_POOL_MAX);
        return NULL;
    }
    struct qv_pool *p = qv_calloc(1, sizeof *p, QV_MEM_POOL);
    if (!p)
        goto fail_pool;
    p->nthreads = nthreads;
    pthread_mutex_init(&p->run_lock, NULL);
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    if (nthreads > 1) {
        p->workers = qv_calloc(nthreads - 1, sizeof *p->workers, QV_MEM_POOL);
        if (!p->workers)
            goto fail_workers;
    }
    if (pin && ncpus > 0)
        pin_to(cpus[0]);            /* the caller is worker 0 */
    unsigned started = 0;
    for (; started < nthreads - 1; started++) {
        struct qv_pool_worker *w = &p->workers[started];
        w->pool = p;
        w->index = started + 1;
        w->cpu = pin && ncpus > 0 ? cpus[(started + 1) % (unsigned)ncpus] : -1;
        int rc = pthread_create(&w->thread, NULL, worker_main, w);
        if (rc != 0) {
            qv_seterr(-rc, "pool: cannot start worker thread %u: %s", started + 1,
                      strerror(rc));
            goto fail_threads;
        }
    }
    return p;

fail_threads:
    atomic_store(&p->stop, 1);
    pthread_mutex_lock(&p->lock);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    for (unsigned i = 0; i < started; i++)
        pthread_join(p->workers[i].thread, NULL);
    qv_free(p->workers);
fail_workers:
    pthread_cond_destroy(&p->wake);
    pthread_mutex_destroy(&p->lock);
    pthread_mutex_destroy(&p->run_lock);
    qv_free(p);
fail_pool:
    if (!qv_errno)
        qv_errno = QV_ENOMEM;
    return NULL;
}

void qv_pool_run(struct qv_pool *p, unsigned ntasks, qv_pool_fn fn, void *arg)
{
    if (ntasks == 0)
        return;
    if (p == NULL || p->nthreads == 1 || ntasks == 1) {
        for (unsigned t = 0; t < ntasks; t++)
            fn(arg, t, 0);
        return;
    }
    pthread_mutex_lock(&p->run_lock);
    p->fn = fn;
    p->arg = arg;
    p->ntasks = ntasks;
    atomic_store_explicit(&p->next_task, 0, memory_order_relaxed);
    atomic_store_explicit(&p->done_workers, 0, memory_order_relaxed);
    pthread_mutex_lock(&p->lock);
    atomic_fetch_add_explicit(&p->generation, 1, memory_order_release);
    if (p->sleepers)
        pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    work(p, 0);
    while (atomic_load_explicit(&p->done_workers, memory_order_acquire) < p->nthreads)
        __builtin_ia32_pause();
    pthread_mutex_unlock(&p->run_lock);
}

unsigned qv_pool_threads(const struct qv_pool *p)
{
    return p ? p->nthreads : 1;
}

void qv_pool_free(struct qv_pool *p)
{
    if (!p)
        return;
    atomic_store(&p->stop, 1);
    pthread_mutex_lock(&p->lock);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    for (unsigned i = 0; i + 1 < p->nthreads; i++)
        pthread_join(p->workers[i].thread, NULL);
    qv_free(p->workers);
    pthread_cond_destroy(&p->wake);
    pthread_mutex_destroy(&p->lock);
    pthread_mutex_destroy(&p->run_lock);
    qv_free(p);
}
