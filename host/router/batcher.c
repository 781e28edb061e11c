/*
 * batcher.c - the dynamic batcher (quiver/batcher.h): per (collection,
 * class) bounded queues filled by many producer threads, drained as
 * batches by one dispatcher thread, with a batch size that follows the
 * arrival rate and flushes that keep every query inside its budget.
 *
 * Queues: a bounded MPSC ring per (collection, class)
 * ---------------------------------------------------
 * Each queue is a ring of queue_capacity (a power of two) slots
 *
 *   OFFSET  SIZE  MEANING
 *   0       8     seq: the slot's sequence number (atomic)
 *   8       8     item: the caller's opaque pointer
 *   16      8     arrival: `now` of the offer
 *   24      8     deadline: absolute ns (0 at offer = arrival + budget)
 *
 * in the style of D. Vyukov's bounded queue.  Slot i starts with seq i.
 * A producer reads tail (pos); the slot at pos & mask is free for it
 * when seq == pos; it claims the slot with a CAS tail: pos -> pos + 1,
 * fills it and publishes with seq = pos + 1 (release).  seq < pos means
 * the slot still holds a query from the previous lap: the queue is full,
 * offer answers QV_EBUSY without waiting.  The consumer owns head (the
 * oldest query not yet taken) and seen (queries up to which it has
 * looked); the slot at index i is readable when seq == i + 1 (acquire).
 * Taking a query releases its slot with seq = i + capacity, which is
 * when a producer may reuse it.  So "full" means capacity queries not
 * yet taken by poll, whether or not poll has looked at them.
 *
 * Why a ring and not a lock: offer runs on network workers, poll on the
 * dispatcher; a lock would put a possible syscall (futex) and a convoy
 * on the hot path.  The ring costs one CAS on a contended line (tail)
 * per offer plus the slot's line; it is lock-free (a producer that stops
 * between its CAS and its publication delays the consumer at that slot,
 * never other producers).  The producers' line (tail, refused counter)
 * and the consumer's state live on separate cache lines.  The accepted
 * count is tail itself, so offer keeps only one counter (refused).
 *
 * Per-queue state the consumer keeps (no atomics: its thread only)
 * ------------------------------------------------------------------
 *   min_deadline  earliest deadline among queued queries [head, seen)
 *   iat           EWMA of inter-arrival gaps: each newly seen query adds
 *                 gap = max(0, arrival - last_arrival) with weight
 *                 ewma_alpha (the first gap seeds it).  Producers may
 *                 publish slightly out of arrival order: the clamp makes
 *                 that bias the rate up by at most that jitter.
 *   target        the target batch size (below), recomputed when iat
 *                 changes.
 * The arrival rate is thus measured where the queries are consumed: no
 * shared mutable state between producers beyond tail.
 *
 * Target batch size
 * -----------------
 * With budget B (the queue's class budget), margin M, inter-arrival
 * estimate g and predicted service time C(n) = cost_ns(coll, n), the
 * target is the largest n in [1, max_batch] with
 *     (n - 1) g + C(n) <= B - M
 * i.e. the number of queries that arrive within the part of the budget
 * left after serving them (binary search: C is increasing; about 12
 * calls).  A fast stream (small g) gives max_batch, a slow one 1 or 2.
 * Before the first gap is known the target is 1.
 *
 * Flush rules (poll, per queue with p >= 1 queries queued, n = p)
 * ----------------------------------------------------------------
 *   (a) p >= target;
 *   (b) min_deadline - C(n) - M <= now: waiting longer would miss the
 *       earliest queued deadline (an early-deadline query flushes its
 *       queue early even when the others have time);
 *   (c) the next arrival, expected at now + g' with g' = max(g, now -
 *       last_arrival) (arrivals taken as memoryless, so the wait from
 *       now is one mean gap; a stream that went quiet is slower than
 *       its average says), is later than min_deadline - C(n + 1) - M:
 *       the batch cannot grow by waiting.
 *       With no rate known yet, nothing says another query is coming:
 *       flush.
 *   (d) idle flush (idle_flush = 1): the class has no batch in flight
 *       (the dispatcher is idle) and waiting for the next arrival,
 *       expected at now + g' as in (c), costs the n queued queries more
 *       than it saves: n g' > F, with F = C(n) + C(1) - C(n + 1) the
 *       fixed part of a batch (serving the n queries now and the next
 *       one on its own costs F more than serving n + 1 together, while
 *       waiting delays each of the n by g').  Comparing g' alone with F
 *       (the first version) let a queue of several queries wait for its
 *       target at mid load: p99 1.39 ms with batching against 0.59 ms
 *       without at 50% load.
 *       Measured before this rule: at 20% load the p50 was 1.1 ms with
 *       batching against 95 us without, because (a)-(c) hold a lone
 *       query until its budget is nearly spent.  With it, a query that
 *       finds the dispatcher idle goes at once, and batches form from
 *       the queries that arrive while a batch runs (the class is then
 *       not idle, and (a)-(c) decide).  At a high rate g' < F and the
 *       queue still waits for its target.
 * A flushed batch takes the min(p, max_batch) oldest queries (FIFO).
 * Batching off (batching = 0 or max_batch = 1): every queued query is
 * ready at once and each batch holds one.
 *
 * qv_batcher_next_flush() inverts (b)-(d) for the time at which the
 * first of them will hold with no new arrival: (b) at min_deadline -
 * M - C(n); (c) at min(s - g, (s + last_arrival) / 2) with s =
 * min_deadline - M - C(n + 1) (g' + now > s, g' being g or now -
 * last_arrival); (d) at last_arrival + F / n.
 *
 * Arrival hook.  observe() is where a query is first seen: it calls
 * on_arrival there, once per ring slot (seen only moves forward), before
 * take() can put the query in a batch.
 *
 * Bulkheads and order
 * -------------------
 * A ready queue gives a batch only while it has fewer than its
 * `inflight` batches out and its class fewer than `workers`; done()
 * gives both back.  A bulk flood thus cannot take the workers that
 * interactive queries need, and one collection cannot hold all of a
 * class's workers.  Poll serves INTERACTIVE before BULK; within a class
 * it visits the collections round-robin from the one after the
 * collection served last, one batch per collection per turn, and takes
 * more turns while out[] has room and some queue gave a batch.  A cold
 * collection with one query next to a hot one with a thousand is served
 * at the latest in the second poll.  A batch handed out after its
 * earliest deadline counts as a deadline miss (bulkheads full, or a
 * poller that ran late).
 *
 * Collections
 * -----------
 * An open-addressing table (2 x max_collections pointers, power of two,
 * linear probing) maps ids to struct bt_coll; add_collection fills a
 * collection and then publishes its pointer (release), so offers that
 * find it (acquire) see it whole.  The dense array colls[] (consumer
 * only) gives the round-robin order.  Every table slot is one of
 *
 *   VALUE          MEANING
 *   NULL           never used, or cleared: ends every probe sequence
 *   BT_TOMB        a removed collection: probes go on past it
 *   a bt_coll *    a live collection
 *
 * add_collection puts a new collection in the first NULL or BT_TOMB slot
 * of its probe sequence (after checking the id is absent).  Lookups skip
 * tombstones and stop at NULL or after 2 x max_collections probes, so a
 * lookup is O(1) expected and O(max_collections) at worst (an absent id
 * in a table full of tombstones).  When a removal leaves a run of
 * tombstones followed by a NULL slot, the run is cleared back to NULL:
 * no probe sequence of a live id can pass through it (it would have to
 * reach that NULL), so no lookup of a live id can be cut short.
 *
 * Removal and reclamation
 * -----------------------
 * remove_collection (consumer) must free a collection that producers may
 * be reading without a lock: a producer loads the table slot, then reads
 * the collection and writes its ring.  Reclamation is a grace period in
 * the style of SRCU, with sharded reader counters (quiver/grace.h, shared
 * with the query service's table):
 *
 *   gp            a counter bumped by every removal; its parity names the
 *                 reader counter new readers use
 *   rd[s].n[p]    readers inside offer() on shard s (a per-thread slot,
 *                 16 shards on cache lines of their own) with parity p
 *
 * offer() (reader, qv_grace_lock / unlock): p = gp & 1; n[p]++; if gp & 1
 * is still p it is in (else n[p]-- and retry); lookup, queue, publish;
 * n[p]--.  All of these are seq_cst.  remove (writer): store BT_TOMB in
 * the slot (release); qv_grace_synchronize: p = gp & 1; gp++; wait until
 * the 16 n[p] add up to 0; now free.
 *
 * Why that is safe.  Take a reader R whose critical section could touch
 * the collection X unlinked before the bump.  R's increment and its
 * second read of gp are seq_cst, as are the bump and the writer's reads
 * of the counters, so they lie in one total order S.  (a) R's second
 * read saw parity p from before the bump: then R's increment < that read
 * < the bump < the writer's reads of n[p] in S, so the writer sees R
 * counted until R's decrement (seq_cst, so it also publishes R's reads of
 * X before the free).  (b) R's second read saw the bump (or a later one):
 * the bump is a release that follows the BT_TOMB store, that read an
 * acquire, so R's lookup, which comes after, sees BT_TOMB (or later
 * contents) and never finds X.  A reader that saw the parity change
 * between its two reads backs out before it reads the table, so it
 * never holds X; its increment only makes the writer wait a moment.  The
 * re-check is what lets a single flip suffice (classic SRCU flips twice:
 * its readers do not re-check).  Counters are sharded so that offers of
 * different threads do not write one cache line: a sum over shards read
 * one after another is still exact for the argument above, since each
 * shard only ever counts increments whose decrements come later on that
 * same shard.  The writer spins (then yields) while a producer is inside
 * offer(); offer is short and never waits, so the wait is the length of
 * one offer unless that producer's thread is descheduled.
 *
 * A collection is removed only when it is idle: every query accepted
 * has been taken by poll (tail == head: no query queued, and no producer
 * between its claim and its publication) and no batch of it is out.
 * Idleness is checked before the unlink and again after the grace period
 * (an offer that found the collection before the unlink may have queued
 * a query meanwhile); if the second check fails the slot is given back
 * to the collection and remove answers QV_EBUSY.  Its final counters move
 * into gone_offered / gone_refused, so qv_batcher_stats() keeps counting
 * since create.
 *
 * Memory.  create() allocates the batcher and the table; add_collection
 * a collection's queues: ring slots, `inflight` batch records and their
 * item arrays (max_batch pointers each); remove_collection frees them.
 * offer, poll and done allocate nothing, take no lock and make no system
 * call (offer adds two atomic increments on its thread's shard and two
 * loads of gp to the ring's CAS).
 */
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quiver/alloc.h"
#include "quiver/batcher.h"
#include "quiver/config.h"
#include "quiver/errors.h"
#include "quiver/grace.h"

#define BT_CACHELINE 64

struct bt_slot {
    _Atomic uint64_t seq;
    void *item;
    int64_t arrival;
    int64_t deadline;
};

struct bt_queue;

/* A batch record: the public part first, so done() can find the rest. */
struct bt_batch {
    struct qv_batch pub;
    struct bt_queue *q;
    uint32_t next_free;             /* free list link (index) */
    uint32_t busy;                  /* handed out, not yet done */
};

struct bt_queue {
    /* producers' line */
    _Alignas(BT_CACHELINE) _Atomic uint64_t tail;
    _Atomic uint64_t refused;
    /* read-only after add_collection (producers and consumer) */
    _Alignas(BT_CACHELINE) struct bt_slot *slots;
    uint64_t cap, mask;
    int64_t budget;
    /* consumer's state */
    _Alignas(BT_CACHELINE) uint64_t head, seen;
    int64_t min_deadline;
    int64_t last_arrival;
    double iat;
    int have_last, have_iat, target_dirty;
    uint32_t target;
    uint32_t inflight, inflight_max;
    uint32_t free_head;             /* first free batch record; UINT32_MAX none */
    struct bt_batch *batches;
    void **items;                   /* inflight_max x max_batch */
    uint64_t coll;
    enum qv_batch_class cls;
};

struct bt_coll {
    struct bt_queue q[QV_BATCH_CLASSES];
    uint64_t id;
};

struct qv_batcher {
    struct qv_batcher_opts o;
    uint32_t max_batch;             /* 1 when batching is off */
    uint32_t hmask;
    _Atomic(struct bt_coll *) *table;
    struct bt_coll **colls;         /* dense, in registration order */
    uint32_t ncoll;
    uint32_t rr[QV_BATCH_CLASSES];  /* round-robin cursor per class */
    uint32_t inflight[QV_BATCH_CLASSES];
    struct qv_batcher_class_stats st[QV_BATCH_CLASSES];  /* consumer part */
    uint64_t gone_offered[QV_BATCH_CLASSES];    /* producer counters of */
    uint64_t gone_refused[QV_BATCH_CLASSES];    /* removed collections */
    /* grace periods (see "Removal and reclamation"): gp is read by every
     * offer and written by remove only */
    struct qv_grace grace;
};

/* The mark of a removed collection's table slot (never dereferenced). */
static struct bt_coll bt_tombstone;
#define BT_TOMB (&bt_tombstone)

/* ------------------------------------------------------------------ */
/* Options                                                             */
/* ------------------------------------------------------------------ */

void qv_batcher_opts_default(struct qv_batcher_opts *o)
{
    memset(o, 0, sizeof *o);
    o->batching = 1;
    o->max_batch = 64;
    o->queue_capacity = 1024;
    o->budget_ns[QV_BATCH_INTERACTIVE] = 10000000;
    o->budget_ns[QV_BATCH_BULK] = 1000000000;
    o->margin_ns = 200000;
    o->inflight[QV_BATCH_INTERACTIVE] = 2;
    o->inflight[QV_BATCH_BULK] = 1;
    o->workers[QV_BATCH_INTERACTIVE] = 4;
    o->workers[QV_BATCH_BULK] = 2;
    o->ewma_alpha = 0.125;
    o->max_collections = 64;
    o->idle_flush = 1;
}

int qv_batcher_opts_from_config(const struct qv_config *cfg, struct qv_batcher_opts *o)
{
    qv_batcher_opts_default(o);
    o->batching = qv_config_bool(cfg, "batcher", "batching");
    o->max_batch = (uint32_t)qv_config_int(cfg, "batcher", "max_batch");
    o->queue_capacity = (uint32_t)qv_config_int(cfg, "batcher", "queue_capacity");
    o->budget_ns[QV_BATCH_INTERACTIVE] =
        qv_config_int(cfg, "batcher", "interactive_budget_us") * 1000;
    o->budget_ns[QV_BATCH_BULK] = qv_config_int(cfg, "batcher", "bulk_budget_us") * 1000;
    o->margin_ns = qv_config_int(cfg, "batcher", "margin_us") * 1000;
    o->inflight[QV_BATCH_INTERACTIVE] =
        (uint32_t)qv_config_int(cfg, "batcher", "interactive_inflight");
    o->inflight[QV_BATCH_BULK] = (uint32_t)qv_config_int(cfg, "batcher", "bulk_inflight");
    o->workers[QV_BATCH_INTERACTIVE] =
        (uint32_t)qv_config_int(cfg, "batcher", "interactive_workers");
    o->workers[QV_BATCH_BULK] = (uint32_t)qv_config_int(cfg, "batcher", "bulk_workers");
    o->ewma_alpha = qv_config_double(cfg, "batcher", "ewma_alpha");
    o->max_collections = (uint32_t)qv_config_int(cfg, "batcher", "max_collections");
    o->idle_flush = qv_config_bool(cfg, "batcher", "idle_flush");
    return 0;
}

static int is_pow2(uint64_t v)
{
    return v != 0 && (v & (v - 1)) == 0;
}

static int check_capacity(uint32_t cap, const char *what)
{
    if (!is_pow2(cap) || cap > QV_BATCHER_MAX_CAPACITY)
        return qv_seterr(QV_EINVAL, "batcher: %s = %u: expected a power of two in 1..%u",
                         what, cap, QV_BATCHER_MAX_CAPACITY);
    return 0;
}

static int check_inflight(uint32_t v, const char *what)
{
    if (v < 1 || v > 1024)
        return qv_seterr(QV_EINVAL, "batcher: %s = %u: expected 1..1024", what, v);
    return 0;
}

static int check_opts(const struct qv_batcher_opts *o)
{
    static const char *const cname[QV_BATCH_CLASSES] = { "interactive", "bulk" };
    char what[64];
    int rc;

    if (o->max_batch < 1 || o->max_batch > QV_BATCHER_MAX_BATCH)
        return qv_seterr(QV_EINVAL, "batcher: max_batch = %u: expected 1..%u",
                         o->max_batch, QV_BATCHER_MAX_BATCH);
    if ((rc = check_capacity(o->queue_capacity, "queue_capacity")) != 0)
        return rc;
    if (o->margin_ns < 0)
        return qv_seterr(QV_EINVAL, "batcher: margin_ns = %lld: expected >= 0",
                         (long long)o->margin_ns);
    if (!(o->ewma_alpha > 0.0 && o->ewma_alpha <= 1.0))
        return qv_seterr(QV_EINVAL, "batcher: ewma_alpha = %g: expected a number in (0, 1]",
                         o->ewma_alpha);
    if (o->max_collections < 1 || o->max_collections > QV_BATCHER_MAX_COLLECTIONS)
        return qv_seterr(QV_EINVAL, "batcher: max_collections = %u: expected 1..%u",
                         o->max_collections, QV_BATCHER_MAX_COLLECTIONS);
    for (unsigned c = 0; c < QV_BATCH_CLASSES; c++) {
        if (o->budget_ns[c] <= 0)
            return qv_seterr(QV_EINVAL, "batcher: %s budget_ns = %lld: expected > 0",
                             cname[c], (long long)o->budget_ns[c]);
        snprintf(what, sizeof what, "%s_inflight", cname[c]);
        if ((rc = check_inflight(o->inflight[c], what)) != 0)
            return rc;
        if (o->workers[c] < 1 || o->workers[c] > 65536)
            return qv_seterr(QV_EINVAL, "batcher: %s_workers = %u: expected 1..65536",
                             cname[c], o->workers[c]);
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Create, free, collections                                           */
/* ------------------------------------------------------------------ */

struct qv_batcher *qv_batcher_create(const struct qv_batcher_opts *o)
{
    struct qv_batcher_opts def;
    struct qv_batcher *b;
    uint32_t hsize = 1;
    int rc;

    if (o == NULL) {
        qv_batcher_opts_default(&def);
        o = &def;
    }
    if ((rc = check_opts(o)) != 0) {
        qv_errno = rc;
        return NULL;
    }
    while (hsize < 2 * o->max_collections)
        hsize <<= 1;
    b = qv_calloc(1, sizeof *b, QV_MEM_ROUTER);
    if (b == NULL)
        goto fail_batcher;
    b->o = *o;
    b->max_batch = o->batching ? o->max_batch : 1;
    b->hmask = hsize - 1;
    b->table = qv_calloc(hsize, sizeof *b->table, QV_MEM_ROUTER);
    if (b->table == NULL)
        goto fail_table;
    b->colls = qv_calloc(o->max_collections, sizeof *b->colls, QV_MEM_ROUTER);
    if (b->colls == NULL)
        goto fail_colls;
    return b;

fail_colls:
    qv_free(b->table);
fail_table:
    qv_free(b);
fail_batcher:
    qv_errno = QV_ENOMEM;
    return NULL;
}

static void queue_fini(struct bt_queue *q)
{
    qv_free(q->items);
    qv_free(q->batches);
    qv_free(q->slots);
}

static void coll_free(struct bt_coll *c)
{
    for (unsigned k = 0; k < QV_BATCH_CLASSES; k++)
        queue_fini(&c->q[k]);
    qv_free(c);
}

void qv_batcher_free(struct qv_batcher *b)
{
    if (b == NULL)
        return;
    for (uint32_t i = 0; i < b->ncoll; i++)
        coll_free(b->colls[i]);
    qv_free(b->colls);
    qv_free(b->table);
    qv_free(b);
}

static uint32_t hash_id(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return (uint32_t)x;
}

/* The collection with id, or NULL; *slot (may be NULL) gets its table
 * slot.  Any thread (a producer inside a read section: the pointer is the
 * one loaded, never loaded again, since the slot may change meanwhile);
 * O(1) expected, at most hmask + 1 probes. */
static struct bt_coll *probe(const struct qv_batcher *b, uint64_t id, uint32_t *slot)
{
    uint32_t h = hash_id(id) & b->hmask;

    for (uint32_t n = 0; n <= b->hmask; n++) {
        struct bt_coll *c = atomic_load_explicit(&b->table[h], memory_order_acquire);
        if (c == NULL)
            return NULL;
        if (c != BT_TOMB && c->id == id) {
            if (slot != NULL)
                *slot = h;
            return c;
        }
        h = (h + 1) & b->hmask;
    }
    return NULL;
}

static struct bt_coll *lookup(const struct qv_batcher *b, uint64_t id)
{
    return probe(b, id, NULL);
}

static int queue_init(const struct qv_batcher *b, struct bt_queue *q, uint64_t coll,
                      enum qv_batch_class cls, uint32_t cap, uint32_t inflight,
                      int64_t budget)
{
    q->slots = qv_malloc((size_t)cap * sizeof *q->slots, QV_MEM_ROUTER);
    if (q->slots == NULL)
        goto fail_slots;
    q->batches = qv_calloc(inflight, sizeof *q->batches, QV_MEM_ROUTER);
    if (q->batches == NULL)
        goto fail_batches;
    q->items = qv_malloc((size_t)inflight * b->max_batch * sizeof(void *), QV_MEM_ROUTER);
    if (q->items == NULL)
        goto fail_items;
    for (uint32_t i = 0; i < cap; i++) {
        atomic_init(&q->slots[i].seq, i);
        q->slots[i].item = NULL;
    }
    for (uint32_t i = 0; i < inflight; i++) {
        q->batches[i].q = q;
        q->batches[i].pub.coll = coll;
        q->batches[i].pub.cls = cls;
        q->batches[i].pub.items = q->items + (size_t)i * b->max_batch;
        q->batches[i].next_free = i + 1 < inflight ? i + 1 : UINT32_MAX;
    }
    atomic_init(&q->tail, 0);
    atomic_init(&q->refused, 0);
    q->cap = cap;
    q->mask = cap - 1;
    q->budget = budget;
    q->min_deadline = INT64_MAX;
    q->target = 1;
    q->inflight_max = inflight;
    q->free_head = 0;
    q->coll = coll;
    q->cls = cls;
    return 0;

fail_items:
    qv_free(q->batches);
    q->batches = NULL;
fail_batches:
    qv_free(q->slots);
    q->slots = NULL;
fail_slots:
    return QV_ENOMEM;
}

int qv_batcher_add_collection(struct qv_batcher *b, uint64_t coll,
                              const struct qv_batcher_coll_opts *co)
{
    uint32_t cap = b->o.queue_capacity;
    uint32_t inflight[QV_BATCH_CLASSES];
    int64_t budget[QV_BATCH_CLASSES];
    struct bt_coll *c;
    unsigned k;
    int rc;

    for (k = 0; k < QV_BATCH_CLASSES; k++) {
        inflight[k] = b->o.inflight[k];
        budget[k] = b->o.budget_ns[k];
    }
    if (co != NULL) {
        if (co->queue_capacity) {
            if ((rc = check_capacity(co->queue_capacity, "collection queue_capacity")) != 0)
                return rc;
            cap = co->queue_capacity;
        }
        for (k = 0; k < QV_BATCH_CLASSES; k++) {
            if (co->inflight[k]) {
                if ((rc = check_inflight(co->inflight[k], "collection inflight")) != 0)
                    return rc;
                inflight[k] = co->inflight[k];
            }
            if (co->budget_ns[k] < 0)
                return qv_seterr(QV_EINVAL, "batcher: collection %llu: budget_ns = %lld: "
                                 "expected > 0 (0 = the batcher's)",
                                 (unsigned long long)coll, (long long)co->budget_ns[k]);
            if (co->budget_ns[k])
                budget[k] = co->budget_ns[k];
        }
    }
    if (lookup(b, coll) != NULL)
        return qv_seterr(QV_EEXIST, "batcher: collection %llu is already registered",
                         (unsigned long long)coll);
    if (b->ncoll >= b->o.max_collections)
        return qv_seterr(QV_ENOSPC, "batcher: collection %llu: all %u collections are "
                         "registered; raise [batcher] max_collections",
                         (unsigned long long)coll, b->o.max_collections);
    c = qv_calloc(1, sizeof *c, QV_MEM_ROUTER);
    if (c == NULL)
        return QV_ENOMEM;
    c->id = coll;
    for (k = 0; k < QV_BATCH_CLASSES; k++) {
        rc = queue_init(b, &c->q[k], coll, (enum qv_batch_class)k, cap, inflight[k],
                        budget[k]);
        if (rc != 0)
            goto fail_queue;
    }
    /* the first free or tombstoned slot: one exists, since at most
     * max_collections - 1 of the 2 x max_collections slots are live */
    uint32_t h = hash_id(coll) & b->hmask;
    for (;;) {
        struct bt_coll *o = atomic_load_explicit(&b->table[h], memory_order_relaxed);
        if (o == NULL || o == BT_TOMB)
            break;
        h = (h + 1) & b->hmask;
    }
    b->colls[b->ncoll++] = c;
    atomic_store_explicit(&b->table[h], c, memory_order_release);
    return 0;

fail_queue:
    coll_free(c);               /* queue_fini of unfilled queues frees NULLs */
    return QV_ENOMEM;
}

/* Queries c holds (accepted, not yet taken by poll) and batches it has
 * out; both 0 when it may be removed.  Consumer. */
static uint64_t coll_pending(const struct bt_coll *c, uint32_t *out)
{
    uint64_t pending = 0;

    *out = 0;
    for (unsigned k = 0; k < QV_BATCH_CLASSES; k++) {
        const struct bt_queue *q = &c->q[k];
        pending += atomic_load_explicit(&q->tail, memory_order_acquire) - q->head;
        *out += q->inflight;
    }
    return pending;
}

static int coll_busy(const struct bt_coll *c)
{
    uint32_t out;
    uint64_t pending = coll_pending(c, &out);

    if (pending == 0 && out == 0)
        return 0;
    return qv_seterr(QV_EBUSY, "batcher: remove: collection %llu still holds %llu queries "
                     "and %u batches out: poll its queries and hand its batches back "
                     "(done) first", (unsigned long long)c->id,
                     (unsigned long long)pending, out);
}

/* Slot h was just tombstoned: if a NULL slot follows the run of
 * tombstones that ends at h, clear the run (see "Collections").
 * Consumer. */
static void clear_tombstones(struct qv_batcher *b, uint32_t h)
{
    if (atomic_load_explicit(&b->table[(h + 1) & b->hmask], memory_order_relaxed) != NULL)
        return;
    while (atomic_load_explicit(&b->table[h], memory_order_relaxed) == BT_TOMB) {
        atomic_store_explicit(&b->table[h], NULL, memory_order_release);
        h = (h - 1) & b->hmask;
    }
}

int qv_batcher_remove_collection(struct qv_batcher *b, uint64_t coll)
{
    uint32_t h = 0, i;
    struct bt_coll *c = probe(b, coll, &h);
    int rc;

    if (c == NULL)
        return qv_seterr(QV_ENOENT, "batcher: remove: collection %llu is not registered",
                         (unsigned long long)coll);
    if ((rc = coll_busy(c)) != 0)
        return rc;
    atomic_store_explicit(&b->table[h], BT_TOMB, memory_order_release);
    qv_grace_synchronize(&b->grace);
    if ((rc = coll_busy(c)) != 0) {     /* an offer found it before the unlink */
        atomic_store_explicit(&b->table[h], c, memory_order_release);
        return rc;
    }
    clear_tombstones(b, h);
    for (i = 0; b->colls[i] != c; i++)
        ;
    memmove(&b->colls[i], &b->colls[i + 1], (b->ncoll - i - 1) * sizeof *b->colls);
    b->ncoll--;
    for (unsigned k = 0; k < QV_BATCH_CLASSES; k++) {
        const struct bt_queue *q = &c->q[k];
        uint64_t refused = atomic_load_explicit(&q->refused, memory_order_relaxed);
        uint64_t accepted = atomic_load_explicit(&q->tail, memory_order_relaxed);
        /* keep each cursor on the collection it named; past the end: 0 */
        if (b->rr[k] > i)
            b->rr[k]--;
        if (b->rr[k] >= b->ncoll)
            b->rr[k] = 0;
        b->gone_offered[k] += accepted + refused;
        b->gone_refused[k] += refused;
    }
    coll_free(c);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Offer (producers)                                                   */
/* ------------------------------------------------------------------ */

/* Queue item in q: the body of offer, inside its read section. */
static int queue_offer(struct bt_queue *q, int64_t now, int64_t deadline, void *item)
{
    struct bt_slot *s;
    uint64_t pos;

    if (deadline == 0)
        deadline = now + q->budget;
    pos = atomic_load_explicit(&q->tail, memory_order_relaxed);
    for (;;) {
        s = &q->slots[pos & q->mask];
        uint64_t seq = atomic_load_explicit(&s->seq, memory_order_acquire);
        int64_t dif = (int64_t)(seq - pos);
        if (dif == 0) {
            if (atomic_compare_exchange_weak_explicit(&q->tail, &pos, pos + 1,
                                                      memory_order_relaxed,
                                                      memory_order_relaxed))
                break;
        } else if (dif < 0) {
            atomic_fetch_add_explicit(&q->refused, 1, memory_order_relaxed);
            return QV_EBUSY;
        } else {
            pos = atomic_load_explicit(&q->tail, memory_order_relaxed);
        }
    }
    s->item = item;
    s->arrival = now;
    s->deadline = deadline;
    atomic_store_explicit(&s->seq, pos + 1, memory_order_release);
    return 0;
}

int qv_batcher_offer(struct qv_batcher *b, uint64_t coll, enum qv_batch_class cls,
                     int64_t now, int64_t deadline, void *item)
{
    struct bt_coll *c;
    unsigned tok;
    int rc;

    if ((unsigned)cls >= QV_BATCH_CLASSES)
        return QV_EINVAL;
    tok = qv_grace_lock(&b->grace);
    c = lookup(b, coll);
    rc = c == NULL ? QV_ENOENT : queue_offer(&c->q[cls], now, deadline, item);
    qv_grace_unlock(&b->grace, tok);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Poll and done (consumer)                                            */
/* ------------------------------------------------------------------ */

static double cost(const struct qv_batcher *b, const struct bt_queue *q, uint32_t n)
{
    return b->o.cost_ns ? b->o.cost_ns(b->o.cost_arg, q->coll, n) : 0.0;
}

/* Look at the queries published since the last look: deadlines, gaps. */
static void observe(const struct qv_batcher *b, struct bt_queue *q)
{
    const double a = b->o.ewma_alpha;

    while (q->seen - q->head < q->cap) {
        struct bt_slot *s = &q->slots[q->seen & q->mask];
        if (atomic_load_explicit(&s->seq, memory_order_acquire) != q->seen + 1)
            break;
        if (s->deadline < q->min_deadline)
            q->min_deadline = s->deadline;
        if (q->have_last) {
            int64_t gap = s->arrival - q->last_arrival;
            double g = gap > 0 ? (double)gap : 0.0;
            q->iat = q->have_iat ? (1.0 - a) * q->iat + a * g : g;
            q->have_iat = 1;
            q->target_dirty = 1;
        }
        if (!q->have_last || s->arrival > q->last_arrival)
            q->last_arrival = s->arrival;
        q->have_last = 1;
        q->seen++;
        if (b->o.on_arrival)
            b->o.on_arrival(b->o.on_arrival_arg, q->coll, q->cls, s->item);
    }
}

/* Largest n in [1, max_batch] with (n - 1) iat + C(n) <= budget - margin. */
static uint32_t compute_target(const struct qv_batcher *b, const struct bt_queue *q)
{
    double room = (double)(q->budget - b->o.margin_ns);
    uint32_t lo = 1, hi = b->max_batch;

    if (hi == 1 || !q->have_iat)
        return 1;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo + 1) / 2;
        if ((double)(mid - 1) * q->iat + cost(b, q, mid) <= room)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

/* The fixed part of a batch of n: what serving n + 1 together saves
 * over serving n, then 1 (rule d).  >= 0. */
static double fixed_part(const struct qv_batcher *b, const struct bt_queue *q, uint32_t n)
{
    double f = cost(b, q, n) + cost(b, q, 1) - cost(b, q, n + 1);

    return f > 0.0 ? f : 0.0;
}

/* Rule (d) applies: idle flush on and no batch of the class in flight. */
static int idle(const struct qv_batcher *b, const struct bt_queue *q)
{
    return b->o.idle_flush && b->inflight[q->cls] == 0;
}

static void refresh_target(const struct qv_batcher *b, struct bt_queue *q)
{
    if (q->target_dirty) {
        q->target = compute_target(b, q);
        q->target_dirty = 0;
    }
}

static int ready(const struct qv_batcher *b, struct bt_queue *q, int64_t now)
{
    uint64_t p = q->seen - q->head;
    double slack, gap;
    uint32_t n;

    if (p == 0)
        return 0;
    if (b->max_batch == 1)
        return 1;
    refresh_target(b, q);
    if (p >= q->target)                                     /* (a) */
        return 1;
    n = (uint32_t)p;                /* < target <= max_batch */
    slack = (double)q->min_deadline - (double)b->o.margin_ns - (double)now;
    if (cost(b, q, n) >= slack)                             /* (b) */
        return 1;
    if (!q->have_iat)                                       /* (c), no rate */
        return 1;
    gap = q->iat;
    if ((double)(now - q->last_arrival) > gap)
        gap = (double)(now - q->last_arrival);
    if (gap + cost(b, q, n + 1) > slack)                   /* (c) */
        return 1;
    if (idle(b, q) && (double)n * gap > fixed_part(b, q, n))   /* (d) */
        return 1;
    return 0;
}

/* ns (double) -> a time strictly after it, clamped to int64. */
static int64_t after(double t)
{
    if (t >= 9.0e18)
        return INT64_MAX;
    if (t <= -9.0e18)
        return INT64_MIN + 1;
    return (int64_t)t + 1;
}

/* When a queue not ready at now becomes ready with no new arrival: the
 * inverses of rules (b)-(d) (see the top of this file). */
static int64_t queue_next_flush(const struct qv_batcher *b, struct bt_queue *q, int64_t now)
{
    uint64_t p = q->seen - q->head;
    double dl = (double)q->min_deadline - (double)b->o.margin_ns;
    double last = (double)q->last_arrival;
    uint32_t n;
    int64_t t;

    if (p == 0)
        return INT64_MAX;
    if (ready(b, q, now))
        return now;
    n = (uint32_t)p;
    t = after(dl - cost(b, q, n));                          /* (b) */
    /* (c): have_iat holds, else ready() said yes */
    double s = dl - cost(b, q, n + 1);
    double tc = s - q->iat < (s + last) / 2.0 ? s - q->iat : (s + last) / 2.0;
    if (after(tc) < t)
        t = after(tc);
    if (idle(b, q) && after(last + fixed_part(b, q, n) / n) < t)     /* (d) */
        t = after(last + fixed_part(b, q, n) / n);
    return t > now ? t : now;
}

static unsigned hist_bucket(uint32_t n)
{
    unsigned i = 0;

    while ((n >>= 1) != 0 && i + 1 < QV_BATCHER_HIST)
        i++;
    return i;
}

static struct qv_batch *take(struct qv_batcher *b, struct bt_queue *q, int64_t now)
{
    struct bt_batch *bt = &q->batches[q->free_head];
    uint64_t p = q->seen - q->head;
    uint32_t n = p < b->max_batch ? (uint32_t)p : b->max_batch;
    int64_t dl = INT64_MAX;
    struct qv_batcher_class_stats *st = &b->st[q->cls];

    q->free_head = bt->next_free;
    bt->busy = 1;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t idx = q->head + i;
        struct bt_slot *s = &q->slots[idx & q->mask];
        bt->pub.items[i] = s->item;
        if (s->deadline < dl)
            dl = s->deadline;
        atomic_store_explicit(&s->seq, idx + q->cap, memory_order_release);
    }
    q->head += n;
    q->min_deadline = INT64_MAX;
    for (uint64_t idx = q->head; idx < q->seen; idx++) {
        const struct bt_slot *s = &q->slots[idx & q->mask];
        if (s->deadline < q->min_deadline)
            q->min_deadline = s->deadline;
    }
    bt->pub.n = n;
    bt->pub.deadline = dl;
    q->inflight++;
    b->inflight[q->cls]++;
    st->batches++;
    st->queries += n;
    st->hist[hist_bucket(n)]++;
    if (now > dl)
        st->deadline_misses++;
    return &bt->pub;
}

unsigned qv_batcher_poll(struct qv_batcher *b, int64_t now, struct qv_batch **out,
                         unsigned max)
{
    unsigned nout = 0;

    for (unsigned c = 0; c < QV_BATCH_CLASSES && nout < max && b->ncoll; c++) {
        int progress = 1;
        while (progress && nout < max) {
            uint32_t start = b->rr[c];
            progress = 0;
            for (uint32_t k = 0; k < b->ncoll && nout < max; k++) {
                uint32_t i = (start + k) % b->ncoll;
                struct bt_queue *q = &b->colls[i]->q[c];

                if (b->inflight[c] >= b->o.workers[c])
                    goto next_class;
                if (q->inflight >= q->inflight_max)
                    continue;
                observe(b, q);
                if (!ready(b, q, now))
                    continue;
                out[nout++] = take(b, q, now);
                b->rr[c] = (i + 1) % b->ncoll;
                progress = 1;
            }
        }
next_class:;
    }
    return nout;
}

int64_t qv_batcher_next_flush(struct qv_batcher *b, int64_t now)
{
    int64_t next = INT64_MAX;

    for (unsigned c = 0; c < QV_BATCH_CLASSES; c++) {
        if (b->inflight[c] >= b->o.workers[c])
            continue;
        for (uint32_t i = 0; i < b->ncoll; i++) {
            struct bt_queue *q = &b->colls[i]->q[c];
            if (q->inflight >= q->inflight_max)
                continue;
            observe(b, q);
            int64_t t = queue_next_flush(b, q, now);
            if (t < next)
                next = t;
        }
    }
    return next;
}

void qv_batcher_done(struct qv_batcher *b, struct qv_batch *batch)
{
    struct bt_batch *bt = (struct bt_batch *)batch;
    struct bt_queue *q = bt->q;

    if (q == NULL || !bt->busy || bt < q->batches || bt >= q->batches + q->inflight_max) {
        fprintf(stderr, "qv_batcher_done: batch %p was not handed out by poll "
                "(or is done twice)\n", (void *)batch);
        abort();
    }
    bt->busy = 0;
    bt->next_free = q->free_head;
    q->free_head = (uint32_t)(bt - q->batches);
    q->inflight--;
    b->inflight[q->cls]--;
}

/* ------------------------------------------------------------------ */
/* Counters                                                            */
/* ------------------------------------------------------------------ */

void qv_batcher_stats(const struct qv_batcher *b, struct qv_batcher_stats *out)
{
    memset(out, 0, sizeof *out);
    out->collections = b->ncoll;
    for (unsigned c = 0; c < QV_BATCH_CLASSES; c++) {
        out->cls[c] = b->st[c];
        out->cls[c].offered = b->gone_offered[c];
        out->cls[c].refused_busy = b->gone_refused[c];
        out->inflight[c] = b->inflight[c];
        for (uint32_t i = 0; i < b->ncoll; i++) {
            struct bt_queue *q = &b->colls[i]->q[c];
            uint64_t refused = atomic_load_explicit(&q->refused, memory_order_relaxed);
            uint64_t accepted = atomic_load_explicit(&q->tail, memory_order_relaxed);
            out->cls[c].offered += accepted + refused;
            out->cls[c].refused_busy += refused;
        }
    }
}

uint32_t qv_batcher_target(const struct qv_batcher *b, uint64_t coll,
                           enum qv_batch_class cls)
{
    struct bt_coll *c = (unsigned)cls < QV_BATCH_CLASSES ? lookup(b, coll) : NULL;

    if (c == NULL)
        return 0;
    if (b->max_batch == 1)
        return 1;
    return c->q[cls].target_dirty ? compute_target(b, &c->q[cls]) : c->q[cls].target;
}
