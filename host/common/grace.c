/*
 * grace.c - grace periods (quiver/grace.h has the scheme and the rules).
 */
#include <sched.h>
#include <time.h>

#include "quiver/grace.h"

#define GRACE_SPINS 256u
#define GRACE_YIELDS 1000u

static _Atomic unsigned grace_next_shard;
static __thread unsigned grace_shard_plus1;     /* 0: not drawn yet */

void qv_grace_init(struct qv_grace *g)
{
    atomic_init(&g->gp, 0);
    for (unsigned s = 0; s < QV_GRACE_SHARDS; s++) {
        atomic_init(&g->rd[s].n[0], 0);
        atomic_init(&g->rd[s].n[1], 0);
    }
}

unsigned qv__grace_shard(void)
{
    unsigned s = grace_shard_plus1;

    if (__builtin_expect(s == 0, 0)) {
        s = atomic_fetch_add_explicit(&grace_next_shard, 1, memory_order_relaxed) %
            QV_GRACE_SHARDS + 1;
        grace_shard_plus1 = s;
    }
    return s - 1;
}

static void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

void qv_grace_synchronize(struct qv_grace *g)
{
    unsigned p = (unsigned)(atomic_fetch_add_explicit(&g->gp, 1, memory_order_seq_cst) & 1);
    const struct timespec nap = { .tv_sec = 0, .tv_nsec = 50000 };

    for (unsigned tries = 0;; tries++) {
        uint64_t n = 0;
        for (unsigned s = 0; s < QV_GRACE_SHARDS; s++)
            n += atomic_load_explicit(&g->rd[s].n[p], memory_order_seq_cst);
        if (n == 0)
            return;
        if (tries < GRACE_SPINS)
            cpu_relax();
        else if (tries < GRACE_SPINS + GRACE_YIELDS)
            sched_yield();
        else
            nanosleep(&nap, NULL);
    }
}
