/*
 * grace.h - grace periods for lock-free lookup tables whose entries are
 * freed (the batcher's and the query service's collection tables).
 *
 * A reader (any thread, any number) brackets every use of a pointer it
 * found in the table with qv_grace_lock / qv_grace_unlock; a remover
 * (one at a time) unlinks the entry (so no new reader can find it), then
 * calls qv_grace_synchronize, which returns once every read section that
 * might have found the entry has ended: then the entry may be freed.
 *
 * The scheme (SRCU-like).  A counter gp whose parity p picks one of two
 * reader counts; the counts are spread over QV_GRACE_SHARDS cache-line
 * shards, one per thread (drawn round-robin at a thread's first lock),
 * so readers on different threads do not share a line.
 *   lock:   p = gp & 1; n[shard][p]++; if (gp & 1) != p: undo and retry;
 *   unlock: n[shard][p]--;
 *   synchronize: p = gp++ & 1 (flip); wait until sum over shards of
 *                n[*][p] == 0.
 * Why one flip suffices: a reader whose second look at gp saw the old
 * parity incremented its count before the flip (seq_cst), so the remover
 * waits for it; a reader that saw the new parity did so after the flip,
 * which follows the unlink, so it cannot find the entry.  The re-check
 * is what allows a single flip.  Everything is seq_cst.
 *
 * Cost: lock and unlock are two atomic read-modify-writes on the
 * thread's own shard and two loads of gp: no lock, no allocation, no
 * system call (tens of ns).  synchronize is O(shards) per look and waits
 * for the readers in flight: it spins, then yields, then sleeps 50 us at
 * a time (a reader may have been descheduled, or run a long callback).
 * A read section must not call synchronize on the same object.
 */
#ifndef QUIVER_GRACE_H
#define QUIVER_GRACE_H

#include <stdatomic.h>
#include <stdint.h>

#define QV_GRACE_SHARDS 16

struct qv_grace {
    _Alignas(64) _Atomic uint64_t gp;
    struct {
        _Alignas(64) _Atomic uint64_t n[2];
    } rd[QV_GRACE_SHARDS];
};

/* Zero counters (memory from calloc is initialised already). */
void qv_grace_init(struct qv_grace *g);

/* The calling thread's shard (drawn at its first call). */
unsigned qv__grace_shard(void);

/* Enter a read section; returns the token for qv_grace_unlock. */
static inline unsigned qv_grace_lock(struct qv_grace *g)
{
    unsigned s = qv__grace_shard();

    for (;;) {
        unsigned p = (unsigned)(atomic_load_explicit(&g->gp, memory_order_seq_cst) & 1);
        atomic_fetch_add_explicit(&g->rd[s].n[p], 1, memory_order_seq_cst);
        if ((unsigned)(atomic_load_explicit(&g->gp, memory_order_seq_cst) & 1) == p)
            return 2 * s + p;
        atomic_fetch_sub_explicit(&g->rd[s].n[p], 1, memory_order_seq_cst);
    }
}

static inline void qv_grace_unlock(struct qv_grace *g, unsigned tok)
{
    atomic_fetch_sub_explicit(&g->rd[tok / 2].n[tok & 1], 1, memory_order_seq_cst);
}

/* Return once every read section that began before this call has ended.
 * One caller at a time per object (the remover's own lock or thread). */
void qv_grace_synchronize(struct qv_grace *g);

#endif
