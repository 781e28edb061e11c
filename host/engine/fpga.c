/*
 * fpga.c - the FPGA engine: the host driver of the Quiver FPGA card.
 *
 * The design (regions, staging, resident blocks, the ring protocol, the
 * health state machine, what allocates) is the comment at the top of
 * fpga_int.h; the contract with the card is docs/REGISTERS.md.  Sections
 * below: registers, options, regions, resident blocks, the ring and
 * completions, faults and recovery, submission, ops, create.
 *
 * Thread-safety: one thread at a time per engine.
 */
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fpga_int.h"
#include "quiver/alloc.h"
#include "quiver/config.h"
#include "quiver/errors.h"
#include "quiver/log.h"
#include "quiver/pq.h"
#include "quiver/timeutil.h"
#include "quiver/topk.h"

_Static_assert((int)QV_FPGA_KIND_FLAT == (int)QV_WU_FLAT && (int)QV_FPGA_KIND_SQ8 ==
               (int)QV_WU_SQ8 && (int)QV_FPGA_KIND_PQ == (int)QV_WU_PQ &&
               (int)QV_FPGA_KIND_F16 == (int)QV_WU_F16, "fpga kinds = work unit kinds");
_Static_assert((int)QV_FPGA_METRIC_L2 == (int)QV_METRIC_L2 &&
               (int)QV_FPGA_METRIC_IP == (int)QV_METRIC_IP, "fpga metrics = metrics");

/* ------------------------------------------------------------------ */
/* Registers                                                            */
/* ------------------------------------------------------------------ */

static inline uint32_t rd32(const struct fpga_engine *E, uint32_t off)
{
    return __atomic_load_n((volatile uint32_t *)(E->bar + off), __ATOMIC_ACQUIRE);
}

static inline uint64_t rd64(const struct fpga_engine *E, uint32_t off)
{
    return __atomic_load_n((volatile uint64_t *)(E->bar + off), __ATOMIC_ACQUIRE);
}

static inline void wr32(struct fpga_engine *E, uint32_t off, uint32_t v)
{
    __atomic_store_n((volatile uint32_t *)(E->bar + off), v, __ATOMIC_RELEASE);
}

static inline void wr64(struct fpga_engine *E, uint32_t off, uint64_t v)
{
    __atomic_store_n((volatile uint64_t *)(E->bar + off), v, __ATOMIC_RELEASE);
}

static inline uint32_t qpreg(const struct fpga_engine *E, uint32_t r)
{
    return QV_FPGA_QP_REG(E->o.qp, r);
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#else
    __asm__ __volatile__("" ::: "memory");
#endif
}

static void sleep_us(long us)
{
    struct timespec ts = { us / 1000000, (us % 1000000) * 1000 };
    nanosleep(&ts, NULL);
}

static const char *status_name(unsigned st)
{
    static const char *const names[QV_FPGA_ST__COUNT] = {
        [QV_FPGA_ST_OK] = "OK",
        [QV_FPGA_ST_BAD_OPCODE] = "BAD_OPCODE",
        [QV_FPGA_ST_BAD_ADDRESS] = "BAD_ADDRESS",
        [QV_FPGA_ST_BAD_LENGTH] = "BAD_LENGTH",
        [QV_FPGA_ST_BAD_HANDLE] = "BAD_HANDLE",
        [QV_FPGA_ST_BAD_PARAM] = "BAD_PARAM",
        [QV_FPGA_ST_NO_MEMORY] = "NO_MEMORY",
        [QV_FPGA_ST_ECC_ERROR] = "ECC_ERROR",
        [QV_FPGA_ST_RESET] = "RESET",
        [QV_FPGA_ST_INTERNAL] = "INTERNAL",
    };
    return st < QV_FPGA_ST__COUNT ? names[st] : "UNKNOWN";
}

static const char *op_name(unsigned op)
{
    static const char *const names[] = { "INVALID", "NOP", "UPLOAD", "FREE", "SCAN" };
    return op < sizeof names / sizeof names[0] ? names[op] : "?";
}

/* The error log's word on SQ index idx, as text ("" when none is found).
 * Reads up to 32 entries of BAR0: error path only. */
static void errlog_detail(struct fpga_engine *E, uint32_t idx, char *buf, size_t len)
{
    buf[0] = '\0';
    uint32_t w = rd32(E, QV_FPGA_REG_ERRLOG_WIDX);
    for (uint32_t back = 1; back <= QV_FPGA_ERRLOG_ENTRIES && back <= w; back++) {
        uint32_t e = QV_FPGA_ERRLOG_ENTRY((w - back) % QV_FPGA_ERRLOG_ENTRIES);
        uint32_t code = rd32(E, e + 0x08) & 0xFFFFu;
        uint32_t sqi = rd32(E, e + 0x18);
        if (code == 0 || code >= 0x100 || sqi != idx)
            continue;
        uint64_t d = rd64(E, e + 0x10);
        if (code == QV_FPGA_ST_BAD_PARAM || code == QV_FPGA_ST_BAD_LENGTH) {
            static const char *const in[] = { "descriptor", "scan table", "array", "?" };
            snprintf(buf, len, " (error log: field at %s offset 0x%x, element %u)",
                     in[(d >> 16) & 3], (unsigned)(d & 0xFFFF), (unsigned)(d >> 32));
        } else {
            snprintf(buf, len, " (error log: detail 0x%llx)", (unsigned long long)d);
        }
        break;
    }
    E->errlog_seen = w;
}

/* ------------------------------------------------------------------ */
/* Options                                                              */
/* ------------------------------------------------------------------ */

void qv_fpga_opts_default(struct qv_fpga_opts *o)
{
    memset(o, 0, sizeof *o);
    o->name = "0";
    o->ring_entries = 256;
    o->timeout_ms = 2000;
    o->watchdog_ms = 250;
    o->reset_timeout_ms = 1000;
}

int qv_fpga_opts_from_config(const struct qv_config *cfg, struct qv_fpga_opts *o)
{
    qv_fpga_opts_default(o);
    o->name = qv_config_string(cfg, "fpga", "name");
    o->ring_entries = (uint32_t)qv_config_int(cfg, "fpga", "ring_entries");
    o->timeout_ms = (uint32_t)qv_config_int(cfg, "fpga", "timeout_ms");
    o->watchdog_ms = (uint32_t)qv_config_int(cfg, "fpga", "watchdog_ms");
    o->reset_timeout_ms = (uint32_t)qv_config_int(cfg, "fpga", "reset_timeout_ms");
    o->hbm_budget = qv_config_size(cfg, "fpga", "hbm_budget");
    return 0;
}

/* ------------------------------------------------------------------ */
/* Regions (ATU)                                                        */
/* ------------------------------------------------------------------ */

static void atu_write(struct fpga_engine *E, unsigned i, uint64_t base, uint64_t len,
                      uint32_t flags)
{
    uint32_t e = QV_FPGA_ATU_ENTRY(i);
    wr32(E, e + 0x10, 0);                       /* invalid while rewritten */
    wr64(E, e + 0x00, base);
    wr64(E, e + 0x08, len);
    wr32(E, e + 0x14, 0);
    wr64(E, e + 0x18, 0);
    wr32(E, e + 0x10, flags | QV_FPGA_ATU_VALID);
}

static inline int idx_pending(const struct fpga_engine *E, uint32_t idx)
{
    return (int32_t)(idx - E->cq_head) >= 0;
}

/* Make [p, p + len) readable by the card for descriptors up to SQ index
 * idx.  0, or QV_EBUSY when every dynamic entry is in use.  O(entries). */
static int region_map(struct fpga_engine *E, const void *p, size_t len, uint32_t idx)
{
    if (!len)
        return 0;
    uint64_t a = (uint64_t)(uintptr_t)p;
    uint64_t base = a & ~(uint64_t)(FPGA_PAGE - 1);
    uint64_t end = (a + len + FPGA_PAGE - 1) & ~(uint64_t)(FPGA_PAGE - 1);
    int pick = -1;
    for (unsigned i = 0; i < E->nregions; i++) {
        struct fpga_region *R = &E->regions[i];
        if (R->valid && R->base <= base && end <= R->end) {
            R->last_use = E->serial;
            if (!R->used || (int32_t)(idx - R->last_idx) > 0)
                R->last_idx = idx;
            R->used = 1;
            return 0;
        }
        if (!R->valid) {                        /* a free entry beats any idle one */
            if (pick < 0 || E->regions[pick].valid)
                pick = (int)i;
            continue;
        }
        if (R->used && idx_pending(E, R->last_idx))
            continue;                           /* in use */
        if (pick < 0 || (E->regions[pick].valid && R->last_use < E->regions[pick].last_use))
            pick = (int)i;
    }
    if (pick < 0)
        return qv_seterr(QV_EBUSY, "fpga engine: all %u dynamic regions are in use",
                         E->nregions);
    struct fpga_region *R = &E->regions[pick];
    R->base = base;
    R->end = end;
    R->valid = 1;
    R->used = 1;
    R->last_idx = idx;
    R->last_use = E->serial;
    atu_write(E, FPGA_ATU_DYN0 + (unsigned)pick, base, end - base, QV_FPGA_ATU_READ);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Resident blocks                                                      */
/* ------------------------------------------------------------------ */

static size_t res_hash(const void *p, size_t cap)
{
    uint64_t x = (uint64_t)(uintptr_t)p;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return (size_t)x & (cap - 1);
}

static struct fpga_resident *res_find(struct fpga_engine *E, const void *host)
{
    if (!E->res_cap || !host)
        return NULL;
    for (size_t i = res_hash(host, E->res_cap);; i = (i + 1) & (E->res_cap - 1)) {
        if (E->res[i].host == host)
            return &E->res[i];
        if (!E->res[i].host)
            return NULL;
    }
}

/* Remove bucket i (backward-shift deletion).  Sends nothing. */
static void res_remove(struct fpga_engine *E, size_t i)
{
    E->res_bytes -= E->res[i].charged;
    E->res_n--;
    size_t mask = E->res_cap - 1, j = i;
    for (;;) {
        E->res[i].host = NULL;
        for (;;) {
            j = (j + 1) & mask;
            if (!E->res[j].host)
                return;
            size_t h = res_hash(E->res[j].host, E->res_cap);
            if (i <= j ? (h <= i || h > j) : (h <= i && h > j))
                break;
        }
        E->res[i] = E->res[j];
        i = j;
    }
}

static int res_insert(struct fpga_engine *E, const struct fpga_resident *r)
{
    if (2 * (E->res_n + 1) > E->res_cap) {
        size_t cap = E->res_cap ? 2 * E->res_cap : 256;
        struct fpga_resident *n = qv_calloc(cap, sizeof *n, QV_MEM_KERNEL);
        if (!n)
            return QV_ENOMEM;
        for (size_t i = 0; i < E->res_cap; i++)
            if (E->res[i].host) {
                size_t j = res_hash(E->res[i].host, cap);
                while (n[j].host)
                    j = (j + 1) & (cap - 1);
                n[j] = E->res[i];
            }
        qv_free(E->res);
        E->res = n;
        E->res_cap = cap;
    }
    size_t j = res_hash(r->host, E->res_cap);
    while (E->res[j].host)
        j = (j + 1) & (E->res_cap - 1);
    E->res[j] = *r;
    E->res_n++;
    E->res_bytes += r->charged;
    return 0;
}

/* Forget every block (the card's HBM was cleared).  O(buckets). */
static void res_clear(struct fpga_engine *E)
{
    if (E->res)
        memset(E->res, 0, E->res_cap * sizeof *E->res);
    E->res_n = 0;
    E->res_bytes = 0;
}

/* ------------------------------------------------------------------ */
/* The ring and completions                                             */
/* ------------------------------------------------------------------ */

static void fault(struct fpga_engine *E, uint64_t *counter, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void tick(struct fpga_engine *E, int64_t now);

static inline uint32_t ring_free(const struct fpga_engine *E)
{
    return E->entries - (E->sq_tail - E->cq_head);
}

/* Write descriptor d (opcode and op filled) at the next index.  The ring
 * must have room.  Returns its index.  O(1). */
static uint32_t desc_push(struct fpga_engine *E, struct qv_fpga_desc *d, uint8_t op,
                          uint8_t slot)
{
    uint32_t i = E->sq_tail++;
    d->flags = 0;
    d->rsvd = 0;
    d->seq = i;
    d->cookie = (uint64_t)E->epoch << 32 | i;
    memcpy(&E->sq[i & E->mask], d, sizeof *d);
    struct fpga_pend *P = &E->pend[i & E->mask];
    P->op = op;
    P->slot = slot;
    P->status = 0;
    P->result = 0;
    P->device_ns = 0;
    return i;
}

/* One release store of SQ_TAIL for everything pushed since the last. */
static void doorbell(struct fpga_engine *E)
{
    if (E->sq_db == E->sq_tail)
        return;
    if (E->sq_db == E->cq_head)                 /* the ring was idle */
        E->t_progress = qv_now_ns();
    E->sq_db = E->sq_tail;
    wr32(E, qpreg(E, QV_FPGA_QP_SQ_TAIL), E->sq_tail);
}

static inline uint32_t slot_index(const struct fpga_engine *E, const struct fpga_slot *S)
{
    return (uint32_t)(S - E->slots);
}

static uint32_t hash_u32(uint32_t h)
{
    h ^= h >> 16;
    h *= 0x7feb352dU;
    h ^= h >> 15;
    return h;
}

/* Compact list of the codes handle h in slot S, or NONE.  O(1). */
static uint32_t slot_lookup(const struct fpga_slot *S, uint32_t h)
{
    uint32_t m = S->hcap - 1;
    for (uint32_t i = hash_u32(h) & m;; i = (i + 1) & m) {
        if (S->hkey[i] == h)
            return S->hval[i];
        if (S->hkey[i] == FPGA_NONE)
            return FPGA_NONE;
    }
}

/* All of a unit's SCANs completed OK: map and merge its results into the
 * heaps (two passes: nothing is merged unless every result is valid).
 * O(nq k). */
static void finish_unit(struct fpga_engine *E, struct fpga_slot *S)
{
    struct qv_work_unit *wu = S->wu;
    const struct qv_fpga_result *r = (const void *)(S->stage + S->off_res);
    const size_t total = (size_t)S->nq * S->k;
    for (size_t i = 0; i < total; i++) {
        if (r[i].handle == FPGA_NONE)
            continue;
        uint32_t c = S->hcap ? slot_lookup(S, r[i].handle) : FPGA_NONE;
        if (c == FPGA_NONE || r[i].entry >= wu->lists[S->clist[c]].n) {
            S->status = qv_seterr(QV_EIO, "fpga engine: card %s returned (handle %u, entry "
                                  "%u) for query %zu, which names no entry of the unit",
                                  E->name, r[i].handle, r[i].entry, i / S->k);
            QV_LOG_RL(QV_LOG_ERROR, 1, "%s", qv_errmsg());
            E->st.error_completions++;
            return;
        }
    }
    for (uint32_t q = 0; q < S->nq; q++) {
        struct qv_topk *h = &wu->heaps[q];
        const struct qv_fpga_result *rq = r + (size_t)q * S->k;
        for (uint32_t i = 0; i < S->k && rq[i].handle != FPGA_NONE; i++)
            qv_topk_push(h, rq[i].dist, wu->lists[S->clist[slot_lookup(S, rq[i].handle)]]
                                            .ids[rq[i].entry]);
    }
    E->st.units++;
}

/* The completion of a prefetch UPLOAD (index idx, status st): the
 * pending block gets its handle, or is dropped.  O(1). */
static void prefetch_done(struct fpga_engine *E, uint32_t idx, const struct fpga_pend *P,
                          uint16_t st)
{
    struct fpga_resident *r = res_find(E, P->host);
    int mine = r && r->pending && r->up_idx == idx;
    E->prefetch_pending--;
    if (mine && st == QV_FPGA_ST_OK) {
        r->handle = P->result;
        r->pending = 0;
        E->st.uploads++;
        E->st.prefetch_uploads++;
        return;
    }
    if (mine) {
        /* NO_MEMORY: the card is fuller than budgeted; a unit that needs
         * the block uploads it and evicts for it */
        res_remove(E, (size_t)(r - E->res));
        if (st != QV_FPGA_ST_NO_MEMORY)
            QV_LOG_RL(QV_LOG_ERROR, 1, "fpga engine: card %s: prefetch UPLOAD descriptor %u "
                      "failed with %s: a driver bug", E->name, idx, status_name(st));
        return;
    }
    if (st == QV_FPGA_ST_OK && ring_free(E) > 1) {
        /* no entry waits for it (forget and eviction wait for pending
         * blocks, so this should not happen): do not leak the block */
        struct qv_fpga_desc d = { .opcode = QV_FPGA_OP_FREE };
        d.op.free.handle = P->result;
        desc_push(E, &d, FPGA_P_FREE, 0);
    }
}

/* Consume one completion (index idx).  Returns 0, or -1 after a fault. */
static int complete(struct fpga_engine *E, uint32_t idx, const struct qv_fpga_cpl *c)
{
    struct fpga_pend *P = &E->pend[idx & E->mask];
    uint16_t st = c->status;
    if (c->cookie != ((uint64_t)E->epoch << 32 | idx) || c->opcode != (P->op == FPGA_P_SCAN
            ? QV_FPGA_OP_SCAN
            : P->op == FPGA_P_UPLOAD || P->op == FPGA_P_PREFETCH ? QV_FPGA_OP_UPLOAD
            : P->op == FPGA_P_FREE ? QV_FPGA_OP_FREE : QV_FPGA_OP_NOP)) {
        fault(E, NULL, "fpga engine: card %s: completion %u carries cookie 0x%llx, opcode "
              "%u: not the descriptor sent", E->name, idx, (unsigned long long)c->cookie,
              c->opcode);
        return -1;
    }
    if (st == QV_FPGA_ST_ECC_ERROR || st == QV_FPGA_ST_RESET || st == QV_FPGA_ST_INTERNAL) {
        fault(E, st == QV_FPGA_ST_ECC_ERROR ? &E->st.ecc_errors : NULL,
              "fpga engine: card %s: %s descriptor %u completed with %s", E->name,
              op_name(c->opcode), idx, status_name(st));
        return -1;
    }
    P->status = st;
    P->result = c->result;
    P->device_ns = c->device_ns;
    if (st != QV_FPGA_ST_OK && !((P->op == FPGA_P_UPLOAD || P->op == FPGA_P_PREFETCH) &&
                                 st == QV_FPGA_ST_NO_MEMORY))
        E->st.error_completions++;
    switch (P->op) {
    case FPGA_P_SCAN: {
        struct fpga_slot *S = &E->slots[P->slot];
        S->device_ns += c->device_ns;
        if (st != QV_FPGA_ST_OK && S->status == 0) {
            char det[128];
            errlog_detail(E, idx, det, sizeof det);
            S->status = qv_seterr(QV_EIO, "fpga engine: card %s: SCAN descriptor %u failed "
                                  "with %s%s: a driver bug; the unit goes to another engine",
                                  E->name, idx, status_name(st), det);
            QV_LOG_RL(QV_LOG_ERROR, 1, "%s", qv_errmsg());
        }
        if (++S->subs_done == S->nsub && S->state == FPGA_SLOT_FLIGHT) {
            if (S->status == 0)
                finish_unit(E, S);
            S->state = FPGA_SLOT_DONE;
        }
        break;
    }
    case FPGA_P_FREE:
        if (st != QV_FPGA_ST_OK)
            QV_LOG_RL(QV_LOG_ERROR, 1, "fpga engine: card %s: FREE descriptor %u failed "
                      "with %s (handle %u)", E->name, idx, status_name(st), c->result);
        break;
    case FPGA_P_PREFETCH:
        prefetch_done(E, idx, P, st);
        break;
    default:
        break;                                  /* UPLOAD, NOP: read by the waiter */
    }
    return 0;
}

/* Consume every completion that has arrived.  O(completions). */
static void reap(struct fpga_engine *E)
{
    if (E->state != FPGA_RUNNING)
        return;
    uint32_t n = 0;
    while (E->cq_head != E->sq_db) {
        struct qv_fpga_cpl *slot = &E->cq[E->cq_head & E->mask];
        uint32_t seq = __atomic_load_n(&slot->seq, __ATOMIC_ACQUIRE);
        if (seq != E->cq_head + 1)
            break;
        struct qv_fpga_cpl c;
        memcpy(&c, slot, sizeof c);
        if (complete(E, E->cq_head, &c))
            return;                             /* fault: the rings are gone */
        E->cq_head++;
        n++;
    }
    if (n) {
        E->t_progress = qv_now_ns();
        wr32(E, qpreg(E, QV_FPGA_QP_CQ_HEAD), E->cq_head);
    }
}

/* Spin until the completion of index idx was consumed.  0, or QV_EIO when
 * a fault struck meanwhile.  Cold paths only (uploads, NOP, room). */
static int wait_idx(struct fpga_engine *E, uint32_t idx)
{
    for (unsigned spin = 0;; spin++) {
        reap(E);
        if (E->state != FPGA_RUNNING)
            return QV_EIO;
        if (!idx_pending(E, idx))
            return 0;
        tick(E, qv_now_ns());
        if (E->state != FPGA_RUNNING)
            return QV_EIO;
        cpu_relax();
        if ((spin & 1023) == 1023)
            sleep_us(0);                        /* let a card thread on this core run */
    }
}

/* Make room for n descriptors (waits for completions).  0 or QV_EIO. */
static int ring_room(struct fpga_engine *E, uint32_t n)
{
    if (ring_free(E) >= n)
        return 0;
    doorbell(E);
    return wait_idx(E, E->cq_head + (n - ring_free(E)) - 1);
}

/* ------------------------------------------------------------------ */
/* Faults and recovery                                                  */
/* ------------------------------------------------------------------ */

static void start_reset(struct fpga_engine *E, int64_t now)
{
    wr32(E, QV_FPGA_REG_CTRL, QV_FPGA_CTRL_RESET);
    E->state = FPGA_RESETTING;
    E->t_reset_deadline = now + E->reset_ns;
}

/* The card has a fault: fail every unit not yet completed, forget what
 * the card held, and start a reset.  Only from RUNNING. */
static void fault(struct fpga_engine *E, uint64_t *counter, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    if (E->state != FPGA_RUNNING)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    E->st.faults++;
    if (counter)
        (*counter)++;
    unsigned failed = 0;
    for (unsigned j = 0; j < E->count; j++) {
        struct fpga_slot *S = &E->slots[(E->head + j) % QV_FPGA_SLOTS];
        if (S->state == FPGA_SLOT_FLIGHT || S->state == FPGA_SLOT_BUILD) {
            S->state = FPGA_SLOT_DONE;
            S->status = QV_EIO;
            failed++;
        }
    }
    E->st.units_handed_back += failed;
    E->health = QV_EUNAVAIL;
    res_clear(E);
    E->prefetch_pending = 0;            /* their completions are never read */
    for (unsigned i = 0; i < E->nregions; i++)
        E->regions[i].valid = E->regions[i].used = 0;
    qv_seterr(QV_EIO, "%s; %u units in flight failed, resetting the card", msg, failed);
    QV_LOG(QV_LOG_ERROR, "%s", qv_errmsg());
    start_reset(E, qv_now_ns());
}

/* Set the rings and regions up after a reset and enable the QP.  0 or
 * QV_EUNAVAIL.  Blocks until the card runs the QP (<= reset_timeout). */
static int setup(struct fpga_engine *E)
{
    wr32(E, QV_FPGA_REG_SIM_HOST_PID, (uint32_t)getpid());
    if (E->sim_mode == QV_FPGA_SIM_PROCESS && E->card_pid)
        (void)prctl(PR_SET_PTRACER, (unsigned long)E->card_pid, 0, 0, 0);
    memset(E->cq, 0, (size_t)E->entries * sizeof *E->cq);
    memset(E->pend, 0, (size_t)E->entries * sizeof *E->pend);
    E->sq_tail = E->sq_db = E->cq_head = 0;
    E->epoch++;
    atu_write(E, FPGA_ATU_RINGS, (uint64_t)(uintptr_t)E->rings,
              (uint64_t)E->entries * (QV_FPGA_DESC_SIZE + QV_FPGA_CPL_SIZE),
              QV_FPGA_ATU_READ | QV_FPGA_ATU_WRITE);
    for (unsigned s = 0; s < QV_FPGA_SLOTS; s++)
        if (E->slots[s].stage)
            atu_write(E, FPGA_ATU_SLOT0 + s, (uint64_t)(uintptr_t)E->slots[s].stage,
                      E->slots[s].stage_cap, QV_FPGA_ATU_READ | QV_FPGA_ATU_WRITE);
    for (unsigned i = 0; i < E->nregions; i++)
        E->regions[i].valid = E->regions[i].used = 0;
    wr32(E, qpreg(E, QV_FPGA_QP_CTRL), 0);
    wr64(E, qpreg(E, QV_FPGA_QP_SQ_BASE), (uint64_t)(uintptr_t)E->sq);
    wr64(E, qpreg(E, QV_FPGA_QP_CQ_BASE), (uint64_t)(uintptr_t)E->cq);
    wr32(E, qpreg(E, QV_FPGA_QP_SQ_ENTRIES), E->entries);
    wr32(E, qpreg(E, QV_FPGA_QP_CQ_ENTRIES), E->entries);
    wr32(E, qpreg(E, QV_FPGA_QP_CTRL), QV_FPGA_QP_CTRL_ENABLE);
    int64_t deadline = qv_now_ns() + E->reset_ns;
    uint32_t qs;
    while (!((qs = rd32(E, qpreg(E, QV_FPGA_QP_STATUS))) &
             (QV_FPGA_QP_ST_RUNNING | QV_FPGA_QP_ST_CONFIG_ERROR))) {
        if (qv_now_ns() > deadline)
            return qv_seterr(QV_EUNAVAIL, "fpga engine: card %s did not start queue pair %u "
                             "within %u ms", E->name, E->o.qp, E->o.reset_timeout_ms);
        sleep_us(20);
    }
    if (qs & QV_FPGA_QP_ST_CONFIG_ERROR)
        return qv_seterr(QV_EUNAVAIL, "fpga engine: card %s refused queue pair %u with %s",
                         E->name, E->o.qp, status_name(QV_FPGA_QP_ST_CODE(qs)));
    wr32(E, QV_FPGA_REG_CTRL, QV_FPGA_CTRL_ENABLE);
    int64_t now = qv_now_ns();
    E->hb = rd64(E, QV_FPGA_REG_HEARTBEAT);
    E->t_hb = E->t_check = E->t_progress = now;
    E->errlog_seen = rd32(E, QV_FPGA_REG_ERRLOG_WIDX);
    return 0;
}

/* Map BAR0 of the named card (process mode): a fresh mapping each time, so
 * a restarted card process is found.  0 or QV_EUNAVAIL. */
static int map_bar(struct fpga_engine *E)
{
    char path[96];
    snprintf(path, sizeof path, "%s%s", QV_FPGA_SHM_PREFIX, E->name);
    int fd = shm_open(path, O_RDWR, 0);
    if (fd < 0)
        return qv_seterr(QV_EUNAVAIL, "fpga engine: no card named %s: /dev/shm%s: %s; start "
                         "one with `qv-fpga-sim --name %s` or set [fpga] mode = thread",
                         E->name, path, strerror(errno), E->name);
    struct stat sb;
    void *p = MAP_FAILED;
    if (fstat(fd, &sb) == 0 && sb.st_size >= (off_t)QV_FPGA_BAR0_SIZE)
        p = mmap(NULL, QV_FPGA_BAR0_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED)
        return qv_seterr(QV_EUNAVAIL, "fpga engine: card %s: cannot map /dev/shm%s (%lld "
                         "bytes): %s", E->name, path, (long long)sb.st_size, strerror(errno));
    if (E->bar_mapped)
        munmap((void *)E->bar, QV_FPGA_BAR0_SIZE);
    E->bar = p;
    E->bar_mapped = 1;
    return 0;
}

/* Find the card and read its identity.  wait_ns: how long to wait for
 * MAGIC.  0 or QV_EUNAVAIL with a message. */
static int probe(struct fpga_engine *E, int64_t wait_ns)
{
    int rc;
    if (!E->o.bar0 && (rc = map_bar(E)))
        return rc;
    int64_t deadline = qv_now_ns() + wait_ns;
    uint32_t magic;
    while ((magic = rd32(E, QV_FPGA_REG_MAGIC)) != QV_FPGA_MAGIC) {
        if (magic == 0xFFFFFFFFu || qv_now_ns() >= deadline)
            return qv_seterr(QV_EUNAVAIL, "fpga engine: card %s: MAGIC reads 0x%08x, not "
                             "0x%08x (%s)", E->name, magic, QV_FPGA_MAGIC,
                             magic == 0xFFFFFFFFu ? "link down" : "the card is not up");
        sleep_us(100);
    }
    uint32_t v = rd32(E, QV_FPGA_REG_VERSION);
    if (v >> 16 != QV_FPGA_VERSION_MAJOR)
        return qv_seterr(QV_EUNAVAIL, "fpga engine: card %s speaks contract version %u.%u; "
                         "this driver speaks %u.x: update the %s", E->name, v >> 16,
                         v & 0xFFFF, QV_FPGA_VERSION_MAJOR,
                         v >> 16 > QV_FPGA_VERSION_MAJOR ? "driver" : "card");
    E->caps_ops = rd32(E, QV_FPGA_REG_CAPS_OPS);
    E->caps_scan = rd32(E, QV_FPGA_REG_CAPS_SCAN);
    E->num_qps = rd32(E, QV_FPGA_REG_NUM_QPS);
    E->max_dim = rd32(E, QV_FPGA_REG_MAX_DIM);
    E->max_k = rd32(E, QV_FPGA_REG_MAX_K);
    E->max_nq = rd32(E, QV_FPGA_REG_MAX_NQ);
    E->max_pq_m = rd32(E, QV_FPGA_REG_MAX_PQ_M);
    E->num_regions = rd32(E, QV_FPGA_REG_NUM_REGIONS);
    E->hbm_bytes = rd64(E, QV_FPGA_REG_HBM_BYTES);
    E->pcie_mbps = rd32(E, QV_FPGA_REG_PCIE_MBPS);
    E->sim_mode = rd32(E, QV_FPGA_REG_SIM_MODE);
    E->card_pid = rd32(E, QV_FPGA_REG_SIM_CARD_PID);
    if (E->max_k > QV_FPGA_MAX_K)
        E->max_k = QV_FPGA_MAX_K;
    if (E->num_regions > QV_FPGA_ATU_ENTRIES)
        E->num_regions = QV_FPGA_ATU_ENTRIES;
    if (E->o.qp >= E->num_qps || E->num_regions <= FPGA_ATU_DYN0 + 2 || !E->max_nq ||
        !(E->caps_ops & (1u << QV_FPGA_OP_SCAN)))
        return qv_seterr(QV_EUNAVAIL, "fpga engine: card %s has %u queue pairs (asked for "
                         "qp %u), %u regions, MAX_NQ %u, CAPS_OPS 0x%x: unusable", E->name,
                         E->num_qps, E->o.qp, E->num_regions, E->max_nq, E->caps_ops);
    E->nregions = E->num_regions - FPGA_ATU_DYN0;
    E->budget = E->o.hbm_budget && E->o.hbm_budget < E->hbm_bytes ? E->o.hbm_budget
                                                                   : E->hbm_bytes;
    return 0;
}

/* Drive the health state machine and the checks (see fpga_int.h). */
static void tick(struct fpga_engine *E, int64_t now)
{
    switch (E->state) {
    case FPGA_RUNNING: {
        int busy = E->sq_db != E->cq_head;
        if (busy && now - E->t_progress > E->timeout_ns) {
            fault(E, &E->st.timeouts, "fpga engine: card %s: no completion for %u ms "
                  "([fpga] timeout_ms) with %u descriptors outstanding", E->name,
                  E->o.timeout_ms, E->sq_db - E->cq_head);
            return;
        }
        if (now - E->t_check < E->check_ns)
            return;
        int64_t prev = E->t_check;
        E->t_check = now;
        uint32_t st = rd32(E, QV_FPGA_REG_STATUS);
        if (st & (QV_FPGA_STATUS_FATAL | QV_FPGA_STATUS_LINK_DOWN) ||
            rd32(E, QV_FPGA_REG_MAGIC) == 0xFFFFFFFFu) {
            fault(E, NULL, "fpga engine: card %s: STATUS 0x%x (%s)", E->name, st,
                  st & QV_FPGA_STATUS_FATAL ? "FATAL" : "LINK_DOWN");
            return;
        }
        uint64_t hb = rd64(E, QV_FPGA_REG_HEARTBEAT);
        if (hb != E->hb || !busy || now - prev > E->watchdog_ns) {
            E->hb = hb;
            E->t_hb = now;
        } else if (now - E->t_hb > E->watchdog_ns) {
            fault(E, &E->st.watchdog_trips, "fpga engine: card %s: HEARTBEAT stuck at %llu "
                  "for %lld ms ([fpga] watchdog_ms %u)", E->name, (unsigned long long)hb,
                  (long long)((now - E->t_hb) / 1000000), E->o.watchdog_ms);
        }
        return;
    }
    case FPGA_RESETTING:
        if (!(rd32(E, QV_FPGA_REG_CTRL) & QV_FPGA_CTRL_RESET) &&
            (rd32(E, QV_FPGA_REG_STATUS) & QV_FPGA_STATUS_READY)) {
            if (setup(E) == 0) {
                E->state = FPGA_RUNNING;
                E->health = 0;
                E->st.resets++;
                QV_LOG(QV_LOG_INFO, "fpga engine: card %s reset, back in service", E->name);
                return;
            }
            QV_LOG(QV_LOG_ERROR, "%s", qv_errmsg());
        } else if (now <= E->t_reset_deadline) {
            return;
        } else {
            QV_LOG(QV_LOG_ERROR, "fpga engine: card %s did not complete a reset within %u "
                   "ms ([fpga] reset_timeout_ms); probing again every %u ms", E->name,
                   E->o.reset_timeout_ms, E->o.watchdog_ms);
        }
        E->state = FPGA_DOWN;
        E->t_next_probe = now + E->watchdog_ns;
        return;
    case FPGA_DOWN:
        if (now < E->t_next_probe)
            return;
        E->t_next_probe = now + E->watchdog_ns;
        if (probe(E, 0) == 0)
            start_reset(E, now);
        return;
    }
}

/* ------------------------------------------------------------------ */
/* Submission                                                           */
/* ------------------------------------------------------------------ */

static size_t align64(size_t x) { return (x + 63) & ~(size_t)63; }

static int is_flat(enum qv_wu_kind kind) { return kind == QV_WU_FLAT || kind == QV_WU_F16; }

static int check_unit(struct fpga_engine *E, const struct qv_work_unit *wu)
{
    static const uint32_t kind_cap[QV_WU__COUNT] = {
        [QV_WU_FLAT] = QV_FPGA_CAP_FLAT, [QV_WU_SQ8] = QV_FPGA_CAP_SQ8,
        [QV_WU_PQ] = QV_FPGA_CAP_PQ4 | QV_FPGA_CAP_PQ8, [QV_WU_F16] = QV_FPGA_CAP_F16,
    };
    if (E->state != FPGA_RUNNING)
        return qv_seterr(QV_EUNAVAIL, "fpga engine: card %s is %s", E->name,
                         E->state == FPGA_RESETTING ? "resetting after a fault" : "down");
    if ((unsigned)wu->kind >= QV_WU__COUNT || !(E->caps_scan & kind_cap[wu->kind]))
        return qv_seterr(QV_ENOTSUP, "fpga engine: card %s does not scan work unit kind %d",
                         E->name, (int)wu->kind);
    if (wu->metric != QV_METRIC_L2 && wu->metric != QV_METRIC_IP)
        return qv_seterr(QV_ENOTSUP, "fpga engine: metric %d; units carry l2 or ip",
                         (int)wu->metric);
    if (!(E->caps_scan & (wu->metric == QV_METRIC_L2 ? QV_FPGA_CAP_L2 : QV_FPGA_CAP_IP)))
        return qv_seterr(QV_ENOTSUP, "fpga engine: card %s lacks metric %s", E->name,
                         wu->metric == QV_METRIC_L2 ? "l2" : "ip");
    if (wu->dim == 0 || wu->dim > E->max_dim)
        return qv_seterr(QV_ENOTSUP, "fpga engine: dim %u is outside 1..%u (card %s "
                         "MAX_DIM)", wu->dim, E->max_dim, E->name);
    if (wu->nq == 0)
        return 0;
    if (!wu->probe_offsets || !wu->heaps || !wu->queries || !wu->lists)
        return qv_seterr(QV_EINVAL, "fpga engine: unit without probes, lists, heaps or "
                         "queries");
    uint32_t k = wu->heaps[0].k;
    if (k == 0 || k > E->max_k)
        return qv_seterr(QV_ENOTSUP, "fpga engine: k = %u is outside 1..%u (card %s MAX_K); "
                         "use the cpu engine", k, E->max_k, E->name);
    if (wu->filter && !(E->caps_scan & QV_FPGA_CAP_FILTER))
        return qv_seterr(QV_ENOTSUP, "fpga engine: card %s cannot filter", E->name);
    if (is_flat(wu->kind) && wu->metric == QV_METRIC_L2 && !wu->qnorms)
        return qv_seterr(QV_EINVAL, "fpga engine: L2 flat unit without query norms");
    if (wu->kind == QV_WU_SQ8) {
        const struct qv_sq8_params *sp = wu->params;
        if (!sp || !sp->vmin || !sp->vdiff || wu->code_size < wu->dim)
            return qv_seterr(QV_EINVAL, "fpga engine: SQ8 unit without parameters or with "
                             "code_size %u < dim %u", wu->code_size, wu->dim);
    }
    if (wu->kind == QV_WU_PQ) {
        const struct qv_pq_params *pp = wu->params;
        if (!pp || !pp->pq || !pp->coarse || !pp->qtab)
            return qv_seterr(QV_EINVAL, "fpga engine: PQ unit without parameters");
        const struct qv_pq *pq = pp->pq;
        uint32_t cap = pq->nbits == 4 ? QV_FPGA_CAP_PQ4 : pq->nbits == 8 ? QV_FPGA_CAP_PQ8 : 0;
        if (!(E->caps_scan & cap) || !(E->caps_scan & QV_FPGA_CAP_PROBE_TABLES))
            return qv_seterr(QV_ENOTSUP, "fpga engine: card %s does not scan PQ with %u bits",
                             E->name, pq->nbits);
        if (pq->m == 0 || pq->m > E->max_pq_m || pq->dim != wu->dim)
            return qv_seterr(QV_ENOTSUP, "fpga engine: PQ m = %u (card MAX_PQ_M %u), dim %u "
                             "for a unit of dim %u", pq->m, E->max_pq_m, pq->dim, wu->dim);
    }
    return 0;
}

/* Bytes of a list's codes block on the card (docs/REGISTERS.md). */
static uint64_t codes_bytes(const struct qv_work_unit *wu, uint32_t n)
{
    switch (wu->kind) {
    case QV_WU_FLAT:
        return (uint64_t)(n + QV_BLOCK - 1) / QV_BLOCK * QV_BLOCK * wu->dim * 4;
    case QV_WU_F16:
        return (uint64_t)(n + QV_BLOCK - 1) / QV_BLOCK * QV_BLOCK * wu->dim * 2;
    case QV_WU_SQ8:
        return (uint64_t)n * wu->code_size;
    default: {
        const struct qv_pq *pq = ((const struct qv_pq_params *)wu->params)->pq;
        return pq->nbits == 8 ? (uint64_t)n * pq->m : qv_pq_fs_size(n, pq->m);
    }
    }
}

static int grow_u32(uint32_t **p, size_t *cap, size_t n)
{
    if (n <= *cap)
        return 0;
    n = n < 64 ? 64 : n + n / 2;
    uint32_t *q = qv_malloc(n * sizeof *q, QV_MEM_KERNEL);
    if (!q)
        return QV_ENOMEM;
    qv_free(*p);
    *p = q;
    *cap = n;
    return 0;
}

/* Grow slot S's staging to bytes and register it.  The slot is not in
 * flight, so its region may be rewritten.  0 or QV_ENOMEM. */
static int grow_stage(struct fpga_engine *E, struct fpga_slot *S, size_t bytes)
{
    if (bytes <= S->stage_cap)
        return 0;
    bytes = align64(bytes + bytes / 4 < 4096 ? 4096 : bytes + bytes / 4);
    uint8_t *p = qv_malloc(bytes, QV_MEM_KERNEL);
    if (!p)
        return qv_seterr(QV_ENOMEM, "fpga engine: no memory for %zu bytes of staging", bytes);
    qv_free(S->stage);
    S->stage = p;
    S->stage_cap = bytes;
    atu_write(E, FPGA_ATU_SLOT0 + slot_index(E, S), (uint64_t)(uintptr_t)p, bytes,
              QV_FPGA_ATU_READ | QV_FPGA_ATU_WRITE);
    return 0;
}

/* The per-slot handle hash for nc lists (cleared).  0 or QV_ENOMEM. */
static int grow_hash(struct fpga_slot *S, uint32_t nc)
{
    uint32_t cap = 16;
    while (cap < 2 * nc)
        cap *= 2;
    if (cap > S->hcap) {
        uint32_t *k = qv_malloc(cap * sizeof *k, QV_MEM_KERNEL);
        uint32_t *v = qv_malloc(cap * sizeof *v, QV_MEM_KERNEL);
        if (!k || !v) {
            qv_free(k);
            qv_free(v);
            return qv_seterr(QV_ENOMEM, "fpga engine: no memory for a unit of %u lists", nc);
        }
        qv_free(S->hkey);
        qv_free(S->hval);
        S->hkey = k;
        S->hval = v;
        S->hcap = cap;
    }
    memset(S->hkey, 0xFF, S->hcap * sizeof *S->hkey);
    return 0;
}

/* FREE the least recently used block not used by the unit being built
 * (nor pending: no handle yet), preferring blocks no descriptor in flight
 * reads; idle_only: only those.  1 when one was freed, 0 when none can
 * be, -1 on a fault.  O(buckets). */
static int evict_one(struct fpga_engine *E, int idle_only)
{
    size_t best = SIZE_MAX;
    for (int pass = 0; pass < 2 - idle_only && best == SIZE_MAX; pass++)
        for (size_t i = 0; i < E->res_cap; i++) {
            const struct fpga_resident *r = &E->res[i];
            if (!r->host || r->pending || r->last_use == E->serial)
                continue;
            if (pass == 0 && r->used && idx_pending(E, r->last_idx))
                continue;
            if (best == SIZE_MAX || r->last_use < E->res[best].last_use)
                best = i;
        }
    if (best == SIZE_MAX)
        return 0;
    if (ring_room(E, 1))
        return -1;
    struct qv_fpga_desc d = { .opcode = QV_FPGA_OP_FREE };
    d.op.free.handle = E->res[best].handle;
    desc_push(E, &d, FPGA_P_FREE, 0);
    res_remove(E, best);
    E->st.evictions++;
    return 1;
}

/* Upload the blocks of needs[0..n) (not resident), evicting as needed;
 * their handles go to *needs[i].out.  Cold path: waits for completions.
 * 0, QV_ENOMEM (they cannot fit), QV_EIO (a fault struck, or an UPLOAD
 * failed).  S accumulates the uploads' time and bytes. */
static int upload_needs(struct fpga_engine *E, struct fpga_slot *S, size_t n)
{
    struct fpga_need *nd = E->needs;
    size_t left = n;
    /* a unit whose blocks cannot fit together is refused before anything
     * is evicted for it: its resident blocks plus its needs */
    uint64_t total = 0;
    for (size_t i = 0; i < E->res_cap; i++)
        if (E->res[i].host && E->res[i].last_use == E->serial)
            total += E->res[i].charged;
    for (size_t i = 0; i < n; i++)
        total += (nd[i].bytes + 63) & ~(uint64_t)63;
    if (total > E->budget)
        return qv_seterr(QV_ENOMEM, "fpga engine: the unit's blocks (%llu bytes) do not fit "
                         "in card %s's memory budget (%llu bytes, [fpga] hbm_budget) "
                         "together; the router should give the unit to the cpu",
                         (unsigned long long)total, E->name, (unsigned long long)E->budget);
    while (left) {
        /* one round: as many UPLOADs as ring, regions and budget allow */
        uint32_t last = 0;
        unsigned sent = 0;
        for (size_t i = 0; i < n; i++) {
            if (nd[i].done)
                continue;
            uint64_t charged = (nd[i].bytes + 63) & ~(uint64_t)63;
            int ev = 1;
            while (E->res_bytes + charged > E->budget && (ev = evict_one(E, 0)) > 0)
                ;
            if (ev < 0)
                return QV_EIO;
            if (E->res_bytes + charged > E->budget)
                break;                          /* the rest must wait for room */
            if (ring_free(E) < 1 || region_map(E, nd[i].host, nd[i].bytes, E->sq_tail))
                break;
            struct qv_fpga_desc d = { .opcode = QV_FPGA_OP_UPLOAD };
            d.op.upload.addr = (uint64_t)(uintptr_t)nd[i].host;
            d.op.upload.len = nd[i].bytes;
            nd[i].idx = last = desc_push(E, &d, FPGA_P_UPLOAD, 0);
            nd[i].done = 2;                     /* sent this round */
            E->res_bytes += charged;            /* reserved until it completes */
            sent++;
        }
        if (!sent) {
            if (E->sq_db != E->cq_head || E->sq_tail != E->sq_db) {
                doorbell(E);                    /* wait for the ring and regions */
                if (wait_idx(E, E->sq_tail - 1))
                    return QV_EIO;
                continue;
            }
            return qv_seterr(QV_ENOMEM, "fpga engine: the unit's blocks do not fit in card "
                             "%s's memory budget (%llu bytes, [fpga] hbm_budget) together; "
                             "the router should give the unit to the cpu", E->name,
                             (unsigned long long)E->budget);
        }
        doorbell(E);
        if (wait_idx(E, last))
            return QV_EIO;
        int progress = 0, failed = 0, nomem = 0;
        for (size_t i = 0; i < n; i++) {
            if (nd[i].done != 2)
                continue;
            const struct fpga_pend *P = &E->pend[nd[i].idx & E->mask];
            uint64_t charged = (nd[i].bytes + 63) & ~(uint64_t)63;
            E->res_bytes -= charged;
            nd[i].done = 0;
            if (P->status == QV_FPGA_ST_NO_MEMORY) {
                int ev = evict_one(E, 0);       /* the card is fuller than budgeted */
                if (ev < 0)
                    return QV_EIO;
                progress |= ev;
                continue;
            }
            if (P->status != QV_FPGA_ST_OK) {
                char det[128];
                errlog_detail(E, nd[i].idx, det, sizeof det);
                qv_seterr(QV_EIO, "fpga engine: card %s: UPLOAD of %llu bytes failed with "
                          "%s%s: a driver bug", E->name, (unsigned long long)nd[i].bytes,
                          status_name(P->status), det);
                failed = 1;
                continue;
            }
            struct fpga_resident *old = res_find(E, nd[i].host);
            if (old && old->bytes == nd[i].bytes) {
                /* a duplicate within the unit: keep the first copy */
                *nd[i].out = old->handle;
                struct qv_fpga_desc d = { .opcode = QV_FPGA_OP_FREE };
                d.op.free.handle = P->result;
                if (ring_room(E, 1))
                    return QV_EIO;
                desc_push(E, &d, FPGA_P_FREE, 0);
            } else {
                struct fpga_resident r = {
                    .host = nd[i].host, .bytes = nd[i].bytes, .charged = charged,
                    .last_use = E->serial, .handle = P->result,
                };
                if (res_insert(E, &r)) {        /* keep going: settle the round */
                    struct qv_fpga_desc d = { .opcode = QV_FPGA_OP_FREE };
                    d.op.free.handle = P->result;
                    if (ring_room(E, 1))
                        return QV_EIO;
                    desc_push(E, &d, FPGA_P_FREE, 0);
                    nomem = 1;
                    continue;
                }
                *nd[i].out = P->result;
            }
            nd[i].done = 1;
            left--;
            progress = 1;
            E->st.uploads++;
            S->device_ns += P->device_ns;
            S->bytes += nd[i].bytes + QV_FPGA_DESC_SIZE + QV_FPGA_CPL_SIZE;
        }
        doorbell(E);
        if (nomem)
            return qv_seterr(QV_ENOMEM, "fpga engine: no memory for the resident table");
        if (failed)
            return QV_EIO;
        if (!progress && E->sq_db == E->cq_head)
            return qv_seterr(QV_ENOMEM, "fpga engine: card %s has no room for the unit's "
                             "blocks (NO_MEMORY with nothing left to evict)", E->name);
    }
    return 0;
}

/* Look block (host, bytes) up for the unit being built; a hit is marked
 * used up to SQ index idx, a miss (or a stale hit, freed) is added to the
 * needs.  0, QV_ENOMEM, QV_EIO. */
static int want_block(struct fpga_engine *E, const void *host, uint64_t bytes, uint32_t *out,
                      size_t *nneeds, uint32_t idx)
{
    struct fpga_resident *r = res_find(E, host);
    if (r && r->pending) {
        /* a prefetch UPLOAD of it is in flight: its handle comes with the
         * completion (cold path: wait for it rather than upload again) */
        E->st.prefetch_waits++;
        doorbell(E);
        if (wait_idx(E, r->up_idx))
            return QV_EIO;
        r = res_find(E, host);          /* completions move the table */
    }
    if (r && r->bytes == bytes) {
        r->last_use = E->serial;
        if (!r->used || (int32_t)(idx - r->last_idx) > 0)
            r->last_idx = idx;
        r->used = 1;
        *out = r->handle;
        return 0;
    }
    if (r) {                                    /* rewritten without forget: stale */
        if (ring_room(E, 1))
            return QV_EIO;
        struct qv_fpga_desc d = { .opcode = QV_FPGA_OP_FREE };
        d.op.free.handle = r->handle;
        desc_push(E, &d, FPGA_P_FREE, 0);
        res_remove(E, (size_t)(r - E->res));
    }
    if (*nneeds == E->needs_cap) {
        size_t cap = E->needs_cap ? 2 * E->needs_cap : 64;
        struct fpga_need *p = qv_realloc(E->needs, cap * sizeof *p, QV_MEM_KERNEL);
        if (!p)
            return qv_seterr(QV_ENOMEM, "fpga engine: no memory for the upload list");
        E->needs = p;
        E->needs_cap = cap;
    }
    E->needs[(*nneeds)++] = (struct fpga_need){ .host = host, .bytes = bytes, .out = out };
    return 0;
}

/* PQ host work (as opencl/engine_opencl.c prepare_pq does): per probe the
 * bias, and for 4 bits the byte table and scale, with the CPU kernels, so
 * 4-bit distances are bit-identical to the CPU engine's.  O(P m 16), or
 * O(P dim 16) for L2 without list tables.  0 or QV_ENOMEM. */
static int prepare_pq(struct fpga_engine *E, struct fpga_slot *S, const struct qv_work_unit *wu)
{
    const struct qv_pq_params *pp = wu->params;
    const struct qv_pq *pq = pp->pq;
    const struct qv_dist_ops *ops = qv_kernels();
    const struct qv_pq_kernels *K = ops->pq;
    const uint32_t m = pq->m, mp = (m + 1u) & ~1u, ksub = pq->ksub, dim = pq->dim;
    const size_t tsz = (size_t)m * ksub;
    if (pq->nbits == 4 && tsz > E->pq_cap) {
        float *l = qv_malloc(tsz * sizeof(float), QV_MEM_KERNEL);
        uint8_t *l8 = qv_malloc((size_t)mp * 16 + 64, QV_MEM_KERNEL);
        float *r = qv_malloc((size_t)dim * sizeof(float) + 64, QV_MEM_KERNEL);
        if (!l || !l8 || !r) {
            qv_free(l);
            qv_free(l8);
            qv_free(r);
            return qv_seterr(QV_ENOMEM, "fpga engine: no memory for PQ tables");
        }
        qv_free(E->pq_lut);
        qv_free(E->pq_lut8);
        qv_free(E->pq_resid);
        E->pq_lut = l;
        E->pq_lut8 = l8;
        E->pq_resid = r;
        E->pq_cap = tsz;
    }
    struct qv_fpga_pq_probe *pr = (void *)(S->stage + S->off_pparams);
    uint8_t *tab = S->stage + S->off_lut8;
    const uint32_t p0 = wu->probe_offsets[0];
    for (uint32_t qi = 0; qi < wu->nq; qi++) {
        const float *q = wu->queries + (size_t)qi * dim;
        for (uint32_t p = wu->probe_offsets[qi]; p < wu->probe_offsets[qi + 1]; p++) {
            const struct qv_wu_list *lst = &wu->lists[wu->probe_lists[p]];
            const float *t2, *t3;
            float bias, scale = 0.0f;
            /* 8-bit: the card builds a missing table from the codebooks */
            qv_pq_probe(pp, wu->metric, q, qi, lst->list_no, pq->nbits == 4, E->pq_lut,
                        E->pq_resid, &t2, &t3, &bias);
            if (pq->nbits == 4) {
                float qbias;
                K->lut_quantize4(t2, t3, m, E->pq_lut8, &scale, &qbias);
                memcpy(tab + (size_t)(p - p0) * mp * 16, E->pq_lut8, (size_t)mp * 16);
                bias += qbias;
            }
            pr[p - p0].bias = bias;
            pr[p - p0].scale = scale;
        }
    }
    return 0;
}

/* Build unit wu in slot S and put its SCANs on the ring.  0 (S is then
 * FLIGHT, or DONE when a fault struck meanwhile), or an error that fails
 * the unit (QV_ENOMEM, QV_EIO, QV_EINVAL) with a message. */
static int build_unit(struct fpga_engine *E, struct fpga_slot *S, struct qv_work_unit *wu)
{
    const uint32_t nq = wu->nq, dim = wu->dim, k = S->k;
    const uint32_t p0 = wu->probe_offsets[0], P = wu->probe_offsets[nq] - p0;
    const int pqk = wu->kind == QV_WU_PQ;
    const struct qv_pq_params *pp = pqk ? wu->params : NULL;
    const struct qv_pq *pq = pqk ? pp->pq : NULL;
    const int l2flat = is_flat(wu->kind) && wu->metric == QV_METRIC_L2;
    int rc;

    /* compact lists: the probed ones, in first-probe order */
    if (grow_u32(&S->lmap, &S->lmap_cap, wu->nlists))
        return qv_seterr(QV_ENOMEM, "fpga engine: no memory for a unit of %u lists",
                         wu->nlists);
    memset(S->lmap, 0xFF, wu->nlists * sizeof(uint32_t));
    uint32_t nc = 0;
    uint64_t mwords = 0;
    for (uint32_t p = p0; p < p0 + P; p++) {
        uint32_t l = wu->probe_lists[p];
        if (l >= wu->nlists)
            return qv_seterr(QV_EINVAL, "fpga engine: probe %u names list %u of %u", p, l,
                             wu->nlists);
        if (S->lmap[l] == FPGA_NONE) {
            S->lmap[l] = nc++;
            mwords += (wu->lists[l].n + 31) / 32;
        }
    }
    if (grow_u32(&S->clist, &S->clist_cap, nc) || grow_hash(S, nc))
        return qv_seterr(QV_ENOMEM, "fpga engine: no memory for a unit of %u lists", nc);
    for (uint32_t l = 0; l < wu->nlists; l++)
        if (S->lmap[l] != FPGA_NONE)
            S->clist[S->lmap[l]] = l;
    S->nc = nc;
    S->nsub = (nq + E->max_nq - 1) / E->max_nq;

    /* staging layout */
    const uint32_t mp = pq ? (pq->m + 1u) & ~1u : 0;
    size_t off = align64((size_t)S->nsub * sizeof(struct qv_fpga_scan_table));
    S->off_res = off;
    off = align64(off + (size_t)nq * k * sizeof(struct qv_fpga_result));
    S->off_poff = off;
    off = align64(off + ((size_t)nq + S->nsub) * 4);
    S->off_plist = off;
    off = align64(off + (size_t)P * 4);
    S->off_lists = off;
    off = align64(off + (size_t)nc * sizeof(struct qv_fpga_scan_list));
    S->off_moff = off;
    S->off_mwords = off = align64(off + (wu->filter ? (size_t)nc * 4 : 0));
    off = align64(off + (wu->filter ? mwords * 4 : 0));
    S->off_vmin = off;
    S->off_vdiff = off = align64(off + (wu->kind == QV_WU_SQ8 ? (size_t)dim * 4 : 0));
    off = align64(off + (wu->kind == QV_WU_SQ8 ? (size_t)dim * 4 : 0));
    S->off_pparams = off;
    S->off_lut8 = off = align64(off + (pqk ? (size_t)P * 8 : 0));
    off += pq && pq->nbits == 4 ? (size_t)P * mp * 16 : 0;
    if ((rc = grow_stage(E, S, off)))
        return rc;
    uint8_t *st = S->stage;

    /* list entries, their blocks (resident or to upload) and the handle
     * hash; the SCANs will be at indices sq_tail .. sq_tail + nsub - 1
     * unless uploads or frees come first (then marked again below) */
    struct qv_fpga_scan_list *sl = (void *)(st + S->off_lists);
    uint32_t last = E->sq_tail + S->nsub - 1;
    size_t nneeds = 0;
    for (uint32_t c = 0; c < nc; c++) {
        const struct qv_wu_list *L = &wu->lists[S->clist[c]];
        sl[c] = (struct qv_fpga_scan_list){ FPGA_NONE, FPGA_NONE, L->n, L->list_no };
        if (!L->n)
            continue;
        if (!L->codes || !L->ids || (l2flat && !L->norms) || (wu->filter && !L->rows))
            return qv_seterr(QV_EINVAL, "fpga engine: list %u without codes, ids, norms or "
                             "rows", S->clist[c]);
        if ((rc = want_block(E, L->codes, codes_bytes(wu, L->n), &sl[c].codes, &nneeds,
                             last)) ||
            (l2flat && (rc = want_block(E, L->norms, (uint64_t)L->n * 4, &sl[c].norms,
                                        &nneeds, last))))
            return rc;
    }
    struct qv_fpga_scan_table *T = (void *)st;
    uint32_t h_cb = FPGA_NONE, h_coarse = FPGA_NONE, h_ltab = FPGA_NONE;
    const int pq_l2_cb = pq && pq->nbits == 8 && wu->metric == QV_METRIC_L2 && !pp->ltab;
    const int pq_ltab = pq && pq->nbits == 8 && wu->metric == QV_METRIC_L2 && pp->ltab;
    const int pq_qtab = pq && pq->nbits == 8 && !pq_l2_cb;
    if (pq_l2_cb &&
        ((rc = want_block(E, pq->cents, (uint64_t)pq->m * pq->ksub * pq->dsub * 4, &h_cb,
                          &nneeds, last)) ||
         (rc = want_block(E, pp->coarse, (uint64_t)pp->nlist * dim * 4, &h_coarse, &nneeds,
                          last))))
        return rc;
    if (pq_ltab && (rc = want_block(E, pp->ltab, (uint64_t)pp->nlist * pq->m * pq->ksub * 4,
                                    &h_ltab, &nneeds, last)))
        return rc;
    if (nneeds || E->sq_tail != E->sq_db) {     /* cold: uploads (or stale frees) */
        if (nneeds && (rc = upload_needs(E, S, nneeds)))
            return rc;
        doorbell(E);
        if ((rc = ring_room(E, S->nsub < E->entries ? S->nsub : E->entries)))
            return rc;
        last = E->sq_tail + S->nsub - 1;
        for (uint32_t c = 0; c < nc; c++) {     /* mark with the final index */
            const struct qv_wu_list *L = &wu->lists[S->clist[c]];
            size_t dummy = 0;
            if (L->n && ((rc = want_block(E, L->codes, codes_bytes(wu, L->n), &sl[c].codes,
                                          &dummy, last)) ||
                         (l2flat && (rc = want_block(E, L->norms, (uint64_t)L->n * 4,
                                                     &sl[c].norms, &dummy, last)))))
                return rc;
            if (dummy)
                return qv_seterr(QV_EIO, "fpga engine: a block uploaded for the unit was "
                                 "evicted by the unit itself");
        }
    }
    for (uint32_t c = 0; c < nc; c++) {
        if (sl[c].codes == FPGA_NONE)
            continue;
        uint32_t i = hash_u32(sl[c].codes) & (S->hcap - 1);
        while (S->hkey[i] != FPGA_NONE && S->hkey[i] != sl[c].codes)
            i = (i + 1) & (S->hcap - 1);
        if (S->hkey[i] == FPGA_NONE) {
            S->hkey[i] = sl[c].codes;
            S->hval[i] = c;
        }
    }

    /* probe arrays: per sub offsets from 0; lists remapped */
    uint32_t *plist = (void *)(st + S->off_plist);
    for (uint32_t p = 0; p < P; p++)
        plist[p] = S->lmap[wu->probe_lists[p0 + p]];
    uint32_t *poff = (void *)(st + S->off_poff);
    for (uint32_t s = 0, q0 = 0; s < S->nsub; s++) {
        uint32_t q1 = q0 + E->max_nq < nq ? q0 + E->max_nq : nq;
        uint32_t *po = poff + q0 + s;
        for (uint32_t q = q0; q <= q1; q++)
            po[q - q0] = wu->probe_offsets[q] - wu->probe_offsets[q0];
        q0 = q1;
    }
    /* filter masks: bit e of a list's words = the row bit of entry e */
    if (wu->filter) {
        uint32_t *moff = (void *)(st + S->off_moff), *mw = (void *)(st + S->off_mwords);
        uint32_t w = 0;
        for (uint32_t c = 0; c < nc; c++) {
            const struct qv_wu_list *L = &wu->lists[S->clist[c]];
            if (!L->n) {
                moff[c] = FPGA_NONE;
                continue;
            }
            moff[c] = w;
            uint32_t nw = (L->n + 31) / 32;
            memset(mw + w, 0, (size_t)nw * 4);
            for (uint32_t e = 0; e < L->n; e++) {
                uint32_t r = L->rows[e];
                mw[w + e / 32] |= (uint32_t)(wu->filter[r / 64] >> (r % 64) & 1u) << (e % 32);
            }
            w += nw;
        }
    }
    if (wu->kind == QV_WU_SQ8) {
        const struct qv_sq8_params *sp = wu->params;
        memcpy(st + S->off_vmin, sp->vmin, (size_t)dim * 4);
        memcpy(st + S->off_vdiff, sp->vdiff, (size_t)dim * 4);
    }
    if (pq && (rc = prepare_pq(E, S, wu)))
        return rc;

    /* caller memory read in place: queries, norms, PQ query tables */
    const size_t tsz = pq ? (size_t)pq->m * pq->ksub : 0;
    if ((rc = region_map(E, wu->queries, (size_t)nq * dim * 4, last)) ||
        (l2flat && (rc = region_map(E, wu->qnorms, (size_t)nq * 4, last))) ||
        (pq_qtab && (rc = region_map(E, pp->qtab, (size_t)nq * tsz * 4, last))))
        return qv_seterr(rc, "fpga engine: %s", qv_errmsg());

    /* tables and descriptors, one SCAN per sub */
    uint64_t bytes = 0;
    for (uint32_t s = 0, q0 = 0; s < S->nsub; s++) {
        uint32_t q1 = q0 + E->max_nq < nq ? q0 + E->max_nq : nq, ns = q1 - q0;
        uint32_t ps = wu->probe_offsets[q0] - p0, np = wu->probe_offsets[q1] - p0 - ps;
        struct qv_fpga_scan_table *t = &T[s];
        memset(t, 0, sizeof *t);
        t->magic = QV_FPGA_SCAN_MAGIC;
        t->kind = (uint8_t)wu->kind;
        t->metric = (uint8_t)wu->metric;
        t->flags = (uint16_t)((wu->filter ? QV_FPGA_SCAN_F_FILTER : 0) |
                              (pq ? QV_FPGA_SCAN_F_PROBE_TABLES : 0));
        t->dim = dim;
        t->k = k;
        t->nq = ns;
        t->nlists = nc;
        t->nprobes = np;
        t->code_size = wu->kind == QV_WU_FLAT ? 4 * dim : wu->kind == QV_WU_F16 ? 2 * dim
                     : wu->kind == QV_WU_SQ8 ? wu->code_size
                     : pq->nbits == 8 ? pq->m : (pq->m + 1) / 2;
        t->queries = (uint64_t)(uintptr_t)(wu->queries + (size_t)q0 * dim);
        t->qnorms = l2flat ? (uint64_t)(uintptr_t)(wu->qnorms + q0) : 0;
        t->probe_offsets = (uint64_t)(uintptr_t)(poff + q0 + s);
        t->probe_lists = (uint64_t)(uintptr_t)(plist + ps);
        t->lists = (uint64_t)(uintptr_t)sl;
        bytes += QV_FPGA_DESC_SIZE + sizeof *t + QV_FPGA_CPL_SIZE + (uint64_t)ns * dim * 4 +
                 (l2flat ? ns * 4u : 0) + (ns + 1u) * 4u + np * 4u + nc * 16u +
                 (uint64_t)ns * k * sizeof(struct qv_fpga_result);
        if (wu->filter) {
            t->mask_nwords = (uint32_t)mwords;
            t->mask_offsets = (uint64_t)(uintptr_t)(st + S->off_moff);
            t->mask_words = (uint64_t)(uintptr_t)(st + S->off_mwords);
            bytes += nc * 4u + mwords * 4;
        }
        if (wu->kind == QV_WU_SQ8) {
            t->sq8_vmin = (uint64_t)(uintptr_t)(st + S->off_vmin);
            t->sq8_vdiff = (uint64_t)(uintptr_t)(st + S->off_vdiff);
            bytes += 8u * dim;
        }
        if (pq) {
            t->pq_m = pq->m;
            t->pq_nbits = pq->nbits;
            t->pq_dsub = pq->dsub;
            t->pq_ncoarse = pp->nlist;
            t->pq_codebooks = h_cb;
            t->pq_coarse = h_coarse;
            t->pq_ltab = h_ltab;
            t->pq_qtab = pq_qtab ? (uint64_t)(uintptr_t)(pp->qtab + (size_t)q0 * tsz) : 0;
            t->pq_probe_params = (uint64_t)(uintptr_t)(st + S->off_pparams + (size_t)ps * 8);
            t->pq_probe_lut8 = pq->nbits == 4
                               ? (uint64_t)(uintptr_t)(st + S->off_lut8 + (size_t)ps * mp * 16)
                               : 0;
            bytes += np * 8u + (pq_qtab ? (uint64_t)ns * tsz * 4 : 0) +
                     (pq->nbits == 4 ? (uint64_t)np * mp * 16 : 0);
        }
        q0 = q1;
    }
    S->bytes += bytes;
    if (S->state != FPGA_SLOT_BUILD)
        return 0;                               /* a fault struck while waiting */
    S->state = FPGA_SLOT_FLIGHT;
    struct qv_fpga_result *res = (void *)(st + S->off_res);
    for (uint32_t s = 0, q0 = 0; s < S->nsub; s++) {
        uint32_t q1 = q0 + E->max_nq < nq ? q0 + E->max_nq : nq;
        if (ring_free(E) == 0 && ring_room(E, 1))
            return 0;                           /* a fault: S is DONE */
        struct qv_fpga_desc d = { .opcode = QV_FPGA_OP_SCAN };
        d.op.scan.kind = (uint8_t)wu->kind;
        d.op.scan.metric = (uint8_t)wu->metric;
        d.op.scan.dim = dim;
        d.op.scan.k = k;
        d.op.scan.nq = q1 - q0;
        d.op.scan.table = (uint64_t)(uintptr_t)&T[s];
        d.op.scan.results = (uint64_t)(uintptr_t)(res + (size_t)q0 * k);
        d.op.scan.results_len = (uint64_t)(q1 - q0) * k * sizeof *res;
        d.op.scan.table_len = sizeof *T;
        S->last_idx = desc_push(E, &d, FPGA_P_SCAN, (uint8_t)slot_index(E, S));
        q0 = q1;
    }
    doorbell(E);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Ops                                                                  */
/* ------------------------------------------------------------------ */

static void fpga_caps(const struct qv_engine *e, struct qv_engine_caps *out)
{
    const struct fpga_engine *E = e->priv;
    out->kinds = 0;
    if (E->caps_scan & QV_FPGA_CAP_FLAT)
        out->kinds |= 1u << QV_WU_FLAT;
    if (E->caps_scan & QV_FPGA_CAP_SQ8)
        out->kinds |= 1u << QV_WU_SQ8;
    if (E->caps_scan & (QV_FPGA_CAP_PQ4 | QV_FPGA_CAP_PQ8))
        out->kinds |= 1u << QV_WU_PQ;
    if (E->caps_scan & QV_FPGA_CAP_F16)
        out->kinds |= 1u << QV_WU_F16;
    out->max_dim = E->max_dim;
    out->device_memory = E->budget;
}

static int fpga_submit(struct qv_engine *e, struct qv_work_unit *wu)
{
    struct fpga_engine *E = e->priv;
    int64_t t0 = qv_now_ns();
    if (E->state != FPGA_RUNNING) {
        tick(E, t0);
        if (E->state != FPGA_RUNNING)
            return check_unit(E, wu);           /* QV_EUNAVAIL with the reason */
    }
    int rc = check_unit(E, wu);
    if (rc)
        return rc;
    if (E->count == QV_FPGA_SLOTS)
        return qv_seterr(QV_EBUSY, "fpga engine: %u units in flight or not yet polled",
                         QV_FPGA_SLOTS);
    reap(E);
    tick(E, t0);
    if (E->state != FPGA_RUNNING)
        return check_unit(E, wu);
    struct fpga_slot *S = &E->slots[(E->head + E->count) % QV_FPGA_SLOTS];
    E->count++;
    E->serial++;
    S->wu = wu;
    S->state = FPGA_SLOT_BUILD;
    S->status = 0;
    S->device_ns = S->bytes = 0;
    S->nsub = S->subs_done = S->nq = S->nc = 0;
    wu->status = 0;
    wu->device_ns = wu->transfer_ns = 0;
    if (wu->nq && wu->probe_offsets[wu->nq] != wu->probe_offsets[0]) {
        S->k = wu->heaps[0].k;
        S->nq = wu->nq;
        rc = build_unit(E, S, wu);
        if (rc && S->state == FPGA_SLOT_BUILD) {
            S->status = rc;
            S->state = FPGA_SLOT_DONE;
        }
    } else {
        S->state = FPGA_SLOT_DONE;              /* nothing to scan */
    }
    E->st.submit_ns_total += (uint64_t)(qv_now_ns() - t0);
    return 0;
}

static int fpga_poll(struct qv_engine *e, struct qv_work_unit **done, int max)
{
    struct fpga_engine *E = e->priv;
    reap(E);
    int64_t now = qv_now_ns();
    tick(E, now);
    if (E->sim_mode != QV_FPGA_SIM_NONE && E->count &&
        E->slots[E->head].state == FPGA_SLOT_FLIGHT &&
        now - E->t_progress > FPGA_SIM_SPIN_NS) {
        /* a simulated card runs on this machine's cores: a caller
         * spinning on poll() takes them from it (see fpga_int.h) */
        sleep_us(FPGA_SIM_BACKOFF_NS / 1000);
        reap(E);
    }
    int n = 0;
    while (n < max && E->count) {
        struct fpga_slot *S = &E->slots[E->head];
        if (S->state != FPGA_SLOT_DONE)
            break;                              /* completions come in order */
        struct qv_work_unit *wu = S->wu;
        wu->status = S->status;
        wu->device_ns = S->device_ns;
        wu->transfer_ns = E->pcie_mbps ? S->bytes * 1000 / E->pcie_mbps : 0;
        done[n++] = wu;
        S->wu = NULL;
        S->state = FPGA_SLOT_FREE;
        E->head = (E->head + 1) % QV_FPGA_SLOTS;
        E->count--;
    }
    return n;
}

static int fpga_health(const struct qv_engine *e)
{
    const struct fpga_engine *E = e->priv;
    return E->health;
}

static void fpga_forget(struct qv_engine *e, const void *host)
{
    (void)qv_engine_fpga_forget(e, host);
}

/* Dynamic regions a new one may take: not registered, or registered and
 * read by no descriptor in flight.  O(entries). */
static unsigned regions_idle(const struct fpga_engine *E)
{
    unsigned n = 0;
    for (unsigned i = 0; i < E->nregions; i++) {
        const struct fpga_region *R = &E->regions[i];
        n += !R->valid || !R->used || !idx_pending(E, R->last_idx);
    }
    return n;
}

static int region_covers(const struct fpga_engine *E, const void *p, size_t len)
{
    uint64_t a = (uint64_t)(uintptr_t)p;
    for (unsigned i = 0; i < E->nregions; i++) {
        const struct fpga_region *R = &E->regions[i];
        if (R->valid && R->base <= a && a + len <= R->end)
            return 1;
    }
    return 0;
}

/* Start the UPLOAD of block (host, bytes) for a prefetch, unless it is
 * resident or on its way.  1: sent (not yet doorbelled); 0: nothing to
 * do; else a negative QV_E* with a message (declined).  Never waits. */
static int prefetch_block(struct fpga_engine *E, const void *host, uint64_t bytes)
{
    const uint32_t keep = E->entries / 4;       /* ring entries left to units */
    struct fpga_resident *r = res_find(E, host);
    if (r && r->bytes == bytes) {
        r->last_use = E->serial;
        return 0;
    }
    if (r && r->pending)
        return qv_seterr(QV_EBUSY, "fpga engine: prefetch: a block of %llu bytes at %p is "
                         "being uploaded with another size (rewritten without forget)",
                         (unsigned long long)r->bytes, host);
    if (ring_free(E) <= keep + 1u)
        goto ring_full;
    if (r) {                                    /* stale: rewritten without forget */
        struct qv_fpga_desc d = { .opcode = QV_FPGA_OP_FREE };
        d.op.free.handle = r->handle;
        desc_push(E, &d, FPGA_P_FREE, 0);
        res_remove(E, (size_t)(r - E->res));
    }
    const uint64_t charged = (bytes + 63) & ~(uint64_t)63;
    if (charged > E->budget)
        return qv_seterr(QV_ENOSPC, "fpga engine: prefetch of a block of %llu bytes: larger "
                         "than card %s's memory budget (%llu bytes, [fpga] hbm_budget)",
                         (unsigned long long)bytes, E->name, (unsigned long long)E->budget);
    while (E->res_bytes + charged > E->budget) {
        if (ring_free(E) <= keep + 1u)
            goto ring_full;
        int ev = evict_one(E, 1);               /* blocks no descriptor reads */
        if (ev < 0)
            return QV_EIO;
        if (ev == 0)
            return qv_seterr(QV_ENOSPC, "fpga engine: prefetch of a block of %llu bytes: "
                             "card %s's memory budget (%llu bytes, [fpga] hbm_budget) is "
                             "held by blocks in use or on their way",
                             (unsigned long long)bytes, E->name,
                             (unsigned long long)E->budget);
    }
    if (ring_free(E) <= keep)
        goto ring_full;
    if (!region_covers(E, host, bytes) && regions_idle(E) <= FPGA_PREFETCH_KEEP_REGIONS)
        return qv_seterr(QV_EBUSY, "fpga engine: prefetch: card %s's dynamic regions are in "
                         "use (%u of %u idle, %u kept for units)", E->name, regions_idle(E),
                         E->nregions, FPGA_PREFETCH_KEEP_REGIONS);
    const uint32_t idx = E->sq_tail;
    struct fpga_resident nr = {
        .host = host, .bytes = bytes, .charged = charged, .last_use = E->serial,
        .handle = FPGA_NONE, .pending = 1, .up_idx = idx,
    };
    if (res_insert(E, &nr))
        return qv_seterr(QV_ENOMEM, "fpga engine: prefetch: no memory for the resident "
                         "table");
    if (region_map(E, host, bytes, idx)) {
        res_remove(E, (size_t)(res_find(E, host) - E->res));
        return qv_seterr(QV_EBUSY, "fpga engine: prefetch: %s", qv_errmsg());
    }
    struct qv_fpga_desc d = { .opcode = QV_FPGA_OP_UPLOAD };
    d.op.upload.addr = (uint64_t)(uintptr_t)host;
    d.op.upload.len = bytes;
    desc_push(E, &d, FPGA_P_PREFETCH, 0);
    E->pend[idx & E->mask].host = host;
    E->prefetch_pending++;
    E->st.prefetch_bytes += bytes;
    return 1;
ring_full:
    return qv_seterr(QV_EBUSY, "fpga engine: prefetch: card %s's ring has %u of %u entries "
                     "free; a quarter is kept for units", E->name, ring_free(E), E->entries);
}

static int fpga_prefetch(struct qv_engine *e, const struct qv_work_unit *wu)
{
    static const uint32_t kind_cap[QV_WU__COUNT] = {
        [QV_WU_FLAT] = QV_FPGA_CAP_FLAT, [QV_WU_SQ8] = QV_FPGA_CAP_SQ8,
        [QV_WU_PQ] = QV_FPGA_CAP_PQ4 | QV_FPGA_CAP_PQ8, [QV_WU_F16] = QV_FPGA_CAP_F16,
    };
    struct fpga_engine *E = e->priv;
    int rc = 0, started = 0;
    E->st.prefetch_calls++;
    if (E->state == FPGA_RUNNING)
        reap(E);                                /* room from what has completed */
    else
        tick(E, qv_now_ns());
    const struct qv_pq_params *pp = wu->kind == QV_WU_PQ ? wu->params : NULL;
    if (E->state != FPGA_RUNNING)
        rc = qv_seterr(QV_EUNAVAIL, "fpga engine: prefetch: card %s is %s", E->name,
                       E->state == FPGA_RESETTING ? "resetting after a fault" : "down");
    else if ((unsigned)wu->kind >= QV_WU__COUNT || !(E->caps_scan & kind_cap[wu->kind]) ||
             wu->dim == 0 || wu->dim > E->max_dim)
        rc = qv_seterr(QV_ENOTSUP, "fpga engine: prefetch of kind %d, dim %u: card %s does "
                       "not scan it", (int)wu->kind, wu->dim, E->name);
    else if (wu->nlists && !wu->lists)
        rc = qv_seterr(QV_EINVAL, "fpga engine: prefetch of %u lists without lists[]",
                       wu->nlists);
    else if (wu->kind == QV_WU_PQ && (!pp || !pp->pq))
        rc = qv_seterr(QV_EINVAL, "fpga engine: prefetch of PQ lists without parameters");
    if (rc) {
        E->st.prefetch_declined++;
        return rc;
    }
    E->serial++;                                /* this call's blocks are the newest */
    const int l2flat = is_flat(wu->kind) && wu->metric == QV_METRIC_L2;
    for (uint32_t l = 0; l < wu->nlists && !rc; l++) {
        const struct qv_wu_list *L = &wu->lists[l];
        if (!L->n || !L->codes)
            continue;
        int a = prefetch_block(E, L->codes, codes_bytes(wu, L->n));
        int b = a < 0 || !l2flat || !L->norms ? 0
              : prefetch_block(E, L->norms, (uint64_t)L->n * 4);
        if (a < 0 || b < 0)
            rc = a < 0 ? a : b;
        started += a > 0 || b > 0;
    }
    doorbell(E);
    if (rc) {
        E->st.prefetch_declined++;
        return rc;
    }
    return started;
}

int qv_engine_fpga_wait(struct qv_engine *e)
{
    struct fpga_engine *E = e->priv;
    for (unsigned spin = 0;; spin++) {
        reap(E);
        tick(E, qv_now_ns());
        int busy = E->state == FPGA_RUNNING && E->prefetch_pending;
        for (unsigned j = 0; j < E->count; j++)
            busy |= E->slots[(E->head + j) % QV_FPGA_SLOTS].state == FPGA_SLOT_FLIGHT;
        if (!busy)
            return E->health;
        cpu_relax();
        if ((spin & 1023) == 1023)
            sleep_us(0);
    }
}

int qv_engine_fpga_nop(struct qv_engine *e, uint64_t *ns)
{
    struct fpga_engine *E = e->priv;
    tick(E, qv_now_ns());
    if (E->state != FPGA_RUNNING)
        return qv_seterr(QV_EUNAVAIL, "fpga engine: card %s is not in service", E->name);
    reap(E);
    if (ring_free(E) == 0)
        return qv_seterr(QV_EBUSY, "fpga engine: the ring is full");
    struct qv_fpga_desc d = { .opcode = QV_FPGA_OP_NOP };
    int64_t t0 = qv_now_ns();
    uint32_t i = desc_push(E, &d, FPGA_P_NOP, 0);
    doorbell(E);
    /* spin without yielding: this is the latency being measured */
    for (;;) {
        reap(E);
        if (E->state != FPGA_RUNNING)
            return qv_seterr(QV_EUNAVAIL, "fpga engine: a fault struck during a NOP");
        if (!idx_pending(E, i))
            break;
        tick(E, qv_now_ns());
        cpu_relax();
    }
    *ns = (uint64_t)(qv_now_ns() - t0);
    return 0;
}

static const struct qv_engine_ops fpga_ops;

int qv_engine_fpga_stats(const struct qv_engine *e, struct qv_fpga_stats *out)
{
    if (!e || e->ops != &fpga_ops)
        return qv_seterr(QV_EINVAL, "fpga engine: not an fpga engine");
    *out = ((const struct fpga_engine *)e->priv)->st;
    return 0;
}

int qv_engine_fpga_forget(struct qv_engine *e, const void *host)
{
    struct fpga_engine *E = e->priv;
    struct fpga_resident *r = res_find(E, host);
    if (!r)
        return 0;
    if (r->pending) {
        /* the prefetch UPLOAD reads the memory its owner is about to free
         * or rewrite: wait for it (a fault meanwhile forgets everything) */
        if (wait_idx(E, r->up_idx) || !(r = res_find(E, host)))
            return 1;
    }
    uint32_t h = r->handle;
    res_remove(E, (size_t)(r - E->res));
    if (E->state == FPGA_RUNNING && ring_room(E, 1) == 0) {
        struct qv_fpga_desc d = { .opcode = QV_FPGA_OP_FREE };
        d.op.free.handle = h;
        desc_push(E, &d, FPGA_P_FREE, 0);
        doorbell(E);
    }
    return 1;
}

/* Leave the card quiet: finish what is in flight, then reset it (frees
 * its blocks, clears its regions: it can no longer touch our memory). */
static void quiesce(struct fpga_engine *E)
{
    if (!E->bar)
        return;
    if (E->state == FPGA_RUNNING) {
        doorbell(E);
        if (E->sq_db != E->cq_head)
            (void)wait_idx(E, E->sq_db - 1);
    }
    if (E->state == FPGA_RUNNING)
        start_reset(E, qv_now_ns());
    /* a card resetting may still write our completion ring: wait */
    while (E->state == FPGA_RESETTING && qv_now_ns() <= E->t_reset_deadline &&
           (rd32(E, QV_FPGA_REG_CTRL) & QV_FPGA_CTRL_RESET))
        sleep_us(50);
}

static void fpga_free(struct qv_engine *e)
{
    struct fpga_engine *E = e->priv;
    if (E->rings)
        quiesce(E);
    for (unsigned s = 0; s < QV_FPGA_SLOTS; s++) {
        struct fpga_slot *S = &E->slots[s];
        qv_free(S->stage);
        qv_free(S->lmap);
        qv_free(S->clist);
        qv_free(S->hkey);
        qv_free(S->hval);
    }
    qv_free(E->rings);
    qv_free(E->pend);
    qv_free(E->res);
    qv_free(E->needs);
    qv_free(E->pq_lut);
    qv_free(E->pq_lut8);
    qv_free(E->pq_resid);
    if (E->bar_mapped)
        munmap((void *)E->bar, QV_FPGA_BAR0_SIZE);
    qv_free(E);
}

static const struct qv_engine_ops fpga_ops = {
    .name = "fpga",
    .caps = fpga_caps,
    .submit = fpga_submit,
    .poll = fpga_poll,
    .health = fpga_health,
    .free = fpga_free,
    .forget = fpga_forget,
    .prefetch = fpga_prefetch,
};

/* ------------------------------------------------------------------ */
/* Create                                                               */
/* ------------------------------------------------------------------ */

static int check_name(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > 64)
        return -1;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return -1;
    }
    return 0;
}

struct qv_engine *qv_engine_fpga_create(const struct qv_fpga_opts *opts)
{
    struct qv_fpga_opts defaults;
    int rc;
    if (!opts) {
        qv_fpga_opts_default(&defaults);
        opts = &defaults;
    }
    const char *name = opts->name && opts->name[0] ? opts->name : "0";
    uint32_t re = opts->ring_entries;
    if (re < QV_FPGA_RING_MIN || re > QV_FPGA_RING_MAX || (re & (re - 1))) {
        qv_seterr(QV_EINVAL, "fpga engine: ring_entries %u: expected a power of two in "
                  "%u..%u", re, QV_FPGA_RING_MIN, QV_FPGA_RING_MAX);
        return NULL;
    }
    if (!opts->timeout_ms || !opts->watchdog_ms || !opts->reset_timeout_ms ||
        opts->qp >= QV_FPGA_MAX_QPS || check_name(name)) {
        qv_seterr(QV_EINVAL, "fpga engine: bad options: timeout_ms %u, watchdog_ms %u, "
                  "reset_timeout_ms %u (each >= 1), qp %u (< %u), name \"%s\" (1..64 of "
                  "[A-Za-z0-9._-])", opts->timeout_ms, opts->watchdog_ms,
                  opts->reset_timeout_ms, opts->qp, QV_FPGA_MAX_QPS, name);
        return NULL;
    }
    struct fpga_engine *E = qv_calloc(1, sizeof *E, QV_MEM_KERNEL);
    if (!E) {
        qv_seterr(QV_ENOMEM, "fpga engine: no memory");
        return NULL;
    }
    E->base.ops = &fpga_ops;
    E->base.priv = E;
    E->o = *opts;
    snprintf(E->name, sizeof E->name, "%s", name);
    E->o.name = E->name;
    E->bar = opts->bar0;
    E->entries = re;
    E->mask = re - 1;
    E->watchdog_ns = (int64_t)opts->watchdog_ms * 1000000;
    E->timeout_ns = (int64_t)opts->timeout_ms * 1000000;
    E->reset_ns = (int64_t)opts->reset_timeout_ms * 1000000;
    E->check_ns = E->watchdog_ns / 8 > 1000000 ? E->watchdog_ns / 8 : 1000000;
    E->state = FPGA_DOWN;
    E->health = QV_EUNAVAIL;

    E->rings = qv_calloc(re, QV_FPGA_DESC_SIZE + QV_FPGA_CPL_SIZE, QV_MEM_KERNEL);
    E->pend = qv_calloc(re, sizeof *E->pend, QV_MEM_KERNEL);
    if (!E->rings || !E->pend) {
        rc = qv_seterr(QV_ENOMEM, "fpga engine: no memory for rings of %u entries", re);
        goto fail;
    }
    E->sq = (struct qv_fpga_desc *)E->rings;
    E->cq = (struct qv_fpga_cpl *)(E->rings + (size_t)re * QV_FPGA_DESC_SIZE);
    if ((rc = probe(E, E->reset_ns)))
        goto fail;
    start_reset(E, qv_now_ns());
    while (E->state == FPGA_RESETTING) {
        sleep_us(50);
        tick(E, qv_now_ns());
    }
    E->st.resets = 0;                           /* count recoveries only */
    if (E->state != FPGA_RUNNING) {
        rc = qv_seterr(QV_EUNAVAIL, "fpga engine: card %s did not come out of reset within "
                       "%u ms ([fpga] reset_timeout_ms)", E->name, opts->reset_timeout_ms);
        goto fail;
    }
    QV_LOG(QV_LOG_INFO, "fpga engine: card %s (%s, contract %u.%u): %llu MiB HBM, budget "
           "%llu MiB, MAX_DIM %u, MAX_NQ %u, ring %u", E->name,
           E->sim_mode == QV_FPGA_SIM_THREAD ? "simulated, thread"
           : E->sim_mode == QV_FPGA_SIM_PROCESS ? "simulated, process" : "hardware",
           rd32(E, QV_FPGA_REG_VERSION) >> 16, rd32(E, QV_FPGA_REG_VERSION) & 0xFFFF,
           (unsigned long long)(E->hbm_bytes >> 20), (unsigned long long)(E->budget >> 20),
           E->max_dim, E->max_nq, re);
    return &E->base;

fail:
    {
        char msg[600];
        snprintf(msg, sizeof msg, "%s", qv_errmsg());
        E->state = FPGA_DOWN;                   /* nothing of ours is on the ring */
        fpga_free(&E->base);
        qv_seterr(rc, "%s", msg);
    }
    return NULL;
}
