/*
 * batcher.h - the dynamic batcher: queries of many collections and two
 * classes (INTERACTIVE, BULK) go into bounded per-(collection, class)
 * queues; the dispatcher takes them out as batches whose size follows
 * the arrival rate, never so late that a query's latency budget would be
 * missed.  The design (ring layout, flush rules, the target batch size,
 * bulkheads, fairness) is described at the top of host/router/batcher.c.
 * What a caller needs:
 *
 *   - Producers (any number of threads, e.g. network workers) call
 *     qv_batcher_offer().  It never blocks and never allocates: a full
 *     queue answers QV_EBUSY at once (backpressure: the caller sheds the
 *     query or tells its client to retry).
 *   - One consumer thread (the dispatcher) calls qv_batcher_poll(), runs
 *     each batch it returns and hands it back with qv_batcher_done().
 *     qv_batcher_add_collection(), qv_batcher_remove_collection(),
 *     qv_batcher_stats() and qv_batcher_target() also belong to that
 *     thread, or to any one thread at a time while the consumer is
 *     stopped (as the service does: its dispatcher parked); producers may
 *     go on offering meanwhile.  qv_batcher_free() runs after every
 *     producer stopped.
 *   - Collections come and go: remove_collection unlinks an idle
 *     collection (nothing queued, no batch out) while producers offer, and
 *     frees its queues once no producer can still be reading them (a grace
 *     period: batcher.c, "Removal and reclamation").  max_collections
 *     bounds the collections registered at one time.
 *   - Time is passed in (`now`, ns on the caller's monotonic clock,
 *     normally qv_now_ns()), so tests drive it with a fake clock.
 *
 * Predicted service time.  The batcher knows nothing of indexes: the
 * caller gives cost_ns(arg, coll, n) = predicted ns to search a batch of
 * n queries of collection coll.  With the router's model (router.h) that
 * is, for an IVF collection of N rows, nlist lists, dim d, nprobe p and
 * engine parameters {overhead, mem_Bps, flops} (qv_router_get_params):
 *     lists   = min(n p, nlist)               distinct lists probed
 *     scanned = lists (N / nlist) (4 d + 4) ceil(n p / nlist / 64)
 *     ops     = 2 n p (N / nlist) d
 *     cost(n) = overhead + max(scanned / mem_Bps, ops / flops)
 * and for a flat index of N rows (every vector scanned, the rows read
 * once per tile of 64 queries):
 *     scanned = N (4 d + 4) ceil(n / 64),  ops = 2 n N d
 * The service (service.h) computes these and corrects them online.
 * It must be cheap (it is called a few times per queue per poll), pure
 * and increasing in n; NULL means 0 (no service time).
 *
 * Idle flush.  While a class has no batch in flight (the dispatcher is
 * idle), a queue of n queries flushes at once when waiting for the next
 * arrival would delay them more in all (n x the expected gap) than it
 * saves, cost(n) + cost(1) - cost(n + 1) (the fixed part of a batch):
 * at low load a query is served at once instead
 * of waiting out its budget, and batches form from the queries that
 * arrive while a batch runs.  idle_flush = 0 turns the rule off.
 *
 * Arrival hook.  on_arrival (optional) runs on the consumer thread,
 * inside qv_batcher_poll() or qv_batcher_next_flush(), once for each
 * query when the batcher first sees it in its ring, before any batch can
 * hold it: the service prefetches what a waiting query will scan.
 */
#ifndef QUIVER_BATCHER_H
#define QUIVER_BATCHER_H

#include <stdint.h>

struct qv_config;
struct qv_batcher;

enum qv_batch_class {
    QV_BATCH_INTERACTIVE = 0,       /* served first */
    QV_BATCH_BULK = 1,
};
#define QV_BATCH_CLASSES 2u

#define QV_BATCHER_MAX_BATCH 4096u      /* largest max_batch */
#define QV_BATCHER_MAX_CAPACITY (1u << 20)  /* largest queue_capacity */
#define QV_BATCHER_MAX_COLLECTIONS 65536u
#define QV_BATCHER_HIST 13u             /* batch-size buckets: [2^i, 2^(i+1)) */

/* Cost callback: predicted ns to serve a batch of n (>= 1) queries of
 * collection coll.  Called from the consumer thread only. */
typedef double qv_batcher_cost_fn(void *arg, uint64_t coll, uint32_t n);

/* Arrival hook: item (as offered to coll, class cls) was just seen by the
 * consumer.  Called from the consumer thread only; must not call back
 * into the batcher. */
typedef void qv_batcher_arrival_fn(void *arg, uint64_t coll, enum qv_batch_class cls,
                                   void *item);

struct qv_batcher_opts {
    int batching;                   /* 1 (default); 0: every query is its
                                       own batch at once (as max_batch 1) */
    uint32_t max_batch;             /* 1..QV_BATCHER_MAX_BATCH, default 64 */
    uint32_t queue_capacity;        /* queries per (collection, class)
                                       queue, a power of two in
                                       1..QV_BATCHER_MAX_CAPACITY; 1024 */
    int64_t budget_ns[QV_BATCH_CLASSES];  /* latency budget of a query
                                       offered with deadline 0, > 0;
                                       10 ms interactive, 1 s bulk */
    int64_t margin_ns;              /* safety margin kept before a
                                       deadline, >= 0; 200 us */
    uint32_t inflight[QV_BATCH_CLASSES];  /* batches in flight per
                                       (collection, class), 1..1024;
                                       2 interactive, 1 bulk */
    uint32_t workers[QV_BATCH_CLASSES];   /* batches in flight per class
                                       over all collections, 1..65536;
                                       4 interactive, 2 bulk */
    double ewma_alpha;              /* weight of each new inter-arrival
                                       gap, in (0, 1]; 0.125 */
    uint32_t max_collections;       /* registered at one time,
                                       1..QV_BATCHER_MAX_COLLECTIONS; 64 */
    qv_batcher_cost_fn *cost_ns;    /* NULL: every batch costs 0 */
    void *cost_arg;
    int idle_flush;                 /* 1 (default): the idle flush rule
                                       above; 0: off */
    qv_batcher_arrival_fn *on_arrival;  /* NULL: none */
    void *on_arrival_arg;
};

/* Per-collection overrides of qv_batcher_add_collection(); 0 = the
 * batcher's value. */
struct qv_batcher_coll_opts {
    uint32_t queue_capacity;
    uint32_t inflight[QV_BATCH_CLASSES];
    int64_t budget_ns[QV_BATCH_CLASSES];
};

/*
 * A batch handed out by qv_batcher_poll().  All of it is batcher-owned
 * and stays valid (and unchanged) until qv_batcher_done() on it.
 */
struct qv_batch {
    uint64_t coll;                  /* collection id */
    enum qv_batch_class cls;        /* its class */
    uint32_t n;                     /* queries, 1..max_batch */
    void **items;                   /* n opaque pointers as offered, in
                                       the order the queue received them */
    int64_t deadline;               /* earliest deadline among them */
};

/* Defaults (above).  Cannot fail. */
void qv_batcher_opts_default(struct qv_batcher_opts *o);

/* Fill o from the [batcher] section of cfg (batching, max_batch,
 * queue_capacity, interactive_budget_us, bulk_budget_us, margin_us,
 * interactive_inflight, bulk_inflight, interactive_workers, bulk_workers,
 * ewma_alpha, max_collections, idle_flush); cost_ns and on_arrival stay
 * NULL.  Returns 0 (values were validated at load). */
int qv_batcher_opts_from_config(const struct qv_config *cfg, struct qv_batcher_opts *o);

/* Create a batcher with no collection per o (NULL = defaults).  Returns
 * NULL with qv_errno QV_EINVAL (a value outside the ranges above; the
 * message names it) or QV_ENOMEM.  O(max_collections). */
struct qv_batcher *qv_batcher_create(const struct qv_batcher_opts *o);

/* Free the batcher, its queues and batches; queries still queued are
 * dropped (their items are the caller's).  NULL is a no-op.  Call only
 * when no producer can still offer. */
void qv_batcher_free(struct qv_batcher *b);

/*
 * qv_batcher_add_collection - register collection coll (any id) with
 * one queue per class, allocated now (ring of queue_capacity slots and
 * `inflight` batches of max_batch items each): nothing is allocated per
 * query afterwards.  co NULL = the batcher's values.  Offers for coll
 * may start once this returns.  Consumer thread only.  Returns 0,
 * QV_EEXIST (coll registered), QV_ENOSPC (max_collections registered
 * now; removed ones do not count), QV_EINVAL (an override out of range),
 * QV_ENOMEM.  O(1) expected, O(max_collections) at worst (probing past
 * the tombstones of removed collections).
 */
int qv_batcher_add_collection(struct qv_batcher *b, uint64_t coll,
                              const struct qv_batcher_coll_opts *co);

/*
 * qv_batcher_remove_collection - unregister collection coll and free its
 * queues.  It must be idle: every query offered to it taken by poll and
 * every batch of it handed back with done (the caller drains it first,
 * and stops offering to it: the service refuses its submits and waits).
 * From the moment it is unlinked, offers for coll answer QV_ENOENT; the
 * call then waits until no producer that found coll before that can still
 * be inside offer() (it spins, then yields: the length of one offer unless
 * that producer's thread is descheduled), and frees.  Afterwards coll's
 * place counts no more against max_collections and coll may be added
 * again.  Its counters stay in qv_batcher_stats().  Consumer thread only
 * (see the top).  No allocation.  Returns 0, QV_ENOENT (coll not
 * registered), QV_EBUSY (coll holds queries not yet taken or batches not
 * yet done, or an offer that found it before the unlink queued one: the
 * collection stays registered; poll, done and try again).  O(shards +
 * collections) plus the wait.
 */
int qv_batcher_remove_collection(struct qv_batcher *b, uint64_t coll);

/*
 * qv_batcher_offer - queue one query: item (opaque, borrowed; handed back
 * in a batch), arriving at now, due at deadline (absolute ns; 0 = now +
 * the class's budget).  Lock-free, never blocks, no allocation, no
 * system call: a CAS on the queue's tail plus a few stores, and the read
 * section that makes removal safe (two atomic increments on a counter of
 * the calling thread's shard).  Thread-safe (any number of producers,
 * also while a collection is added or removed).  Returns 0, QV_EBUSY
 * (that queue holds queue_capacity queries not yet taken by poll: shed or
 * retry later), QV_ENOENT (coll not registered, or removed), QV_EINVAL
 * (cls out of range).  Costs O(1) expected; an absent coll may probe up
 * to 2 x max_collections table slots.
 */
int qv_batcher_offer(struct qv_batcher *b, uint64_t coll, enum qv_batch_class cls,
                     int64_t now, int64_t deadline, void *item);

/*
 * qv_batcher_poll - up to max ready batches into out[]: INTERACTIVE ones
 * before BULK ones, and within a class round-robin over collections (one
 * batch per collection per turn, starting after the collection served
 * last).  A queue is ready per the flush rules in batcher.c; a ready
 * queue gives a batch only while its (collection, class) and its class's
 * in-flight budgets have room.  Returns how many batches were written.
 * No allocation, no lock, no system call; O(collections + queries newly
 * arrived + queries still queued behind a taken batch).  Consumer thread
 * only.
 */
unsigned qv_batcher_poll(struct qv_batcher *b, int64_t now, struct qv_batch **out,
                         unsigned max);

/*
 * qv_batcher_next_flush - the earliest time (ns, the clock of `now`) at
 * which poll() would hand out a batch if no other query arrived: <= now
 * when one is ready now, INT64_MAX when no queue holding queries can give
 * a batch (none queued, or their in-flight budgets are full: done() frees
 * them).  For the dispatcher's idle wait: sleep until then or until a
 * producer wakes it.  Looks at newly published queries first (the
 * arrival hook runs for them).  No allocation, no lock; O(collections +
 * queries newly arrived).  Consumer thread only.
 */
int64_t qv_batcher_next_flush(struct qv_batcher *b, int64_t now);

/* Hand back a batch from poll(): frees its slot and its in-flight
 * budgets.  Consumer thread only.  Cannot fail (a batch not from this
 * batcher, or done twice, is a programming error and aborts). */
void qv_batcher_done(struct qv_batcher *b, struct qv_batch *batch);

struct qv_batcher_class_stats {
    uint64_t offered;               /* offer() calls that reached a queue */
    uint64_t refused_busy;          /* of those, answered QV_EBUSY */
    uint64_t batches;               /* batches handed out by poll() */
    uint64_t queries;               /* queries in those batches */
    uint64_t deadline_misses;       /* batches handed out after their
                                       earliest deadline */
    uint64_t hist[QV_BATCHER_HIST]; /* batches of size [2^i, 2^(i+1)) */
};

struct qv_batcher_stats {
    uint32_t collections;           /* registered now */
    uint32_t inflight[QV_BATCH_CLASSES];    /* batches out now */
    struct qv_batcher_class_stats cls[QV_BATCH_CLASSES];
};

/* Counters since create, removed collections included.  Consumer
 * thread (the producer-side counters are read with relaxed atomics: exact
 * once producers stopped).  Cannot fail.  O(collections). */
void qv_batcher_stats(const struct qv_batcher *b, struct qv_batcher_stats *out);

/* Current target batch size of (coll, cls) (1..max_batch), for logs and
 * tests; 0 when coll is not registered.  Consumer thread. */
uint32_t qv_batcher_target(const struct qv_batcher *b, uint64_t coll,
                           enum qv_batch_class cls);

#endif
