/*
 * card.c - the simulated FPGA card: life cycle, the firmware loop,
 * registers, faults, reset, queue pairs, descriptors NOP / UPLOAD / FREE and
 * the HBM block table.  SCAN is in card_scan.c, DMA in card_dma.c.  The
 * design is described at the top of card_int.h; the contract is
 * docs/REGISTERS.md.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "card_int.h"
#include "quiver/alloc.h"
#include "quiver/config.h"
#include "quiver/errors.h"
#include "quiver/log.h"
#include "quiver/timeutil.h"
#ifdef QV_HAVE_OPENCL
#include "quiver/engine_opencl.h"
#endif

/* ------------------------------------------------------------------ */
/* Options                                                              */
/* ------------------------------------------------------------------ */

void qv_fpga_sim_opts_default(struct qv_fpga_sim_opts *o)
{
    memset(o, 0, sizeof *o);
    o->name = "0";
    o->hbm_bytes = 16ull << 30;
    o->clock_mhz = 300;
    o->lanes = 2048;
    o->hbm_mbps = 460000;
    o->pcie_mbps = 12000;
    o->launch_ns = 5000;
    o->qtile = 256;
    o->tick_us = 1000;
    o->throttle_factor = 4;
    o->use_opencl = 1;
    o->pace = 0;
}

/* Whether the schema declares [section] key with type t (keys the host
 * engineer has not added yet are skipped, not aborted on). */
static int schema_has(const char *section, const char *key, enum qv_conf_type t)
{
    for (const struct qv_conf_key *k = qv_conf_schema; k->section; k++)
        if (!strcmp(k->section, section) && !strcmp(k->key, key))
            return k->type == t;
    return 0;
}

int qv_fpga_sim_opts_from_config(const struct qv_config *cfg, struct qv_fpga_sim_opts *o)
{
    static const struct { const char *key; size_t off; } u32keys[] = {
        { "clock_mhz", offsetof(struct qv_fpga_sim_opts, clock_mhz) },
        { "lanes", offsetof(struct qv_fpga_sim_opts, lanes) },
        { "hbm_mbps", offsetof(struct qv_fpga_sim_opts, hbm_mbps) },
        { "pcie_mbps", offsetof(struct qv_fpga_sim_opts, pcie_mbps) },
        { "launch_ns", offsetof(struct qv_fpga_sim_opts, launch_ns) },
    };
    if (schema_has("fpga", "name", QV_CONF_STRING))
        o->name = qv_config_string(cfg, "fpga", "name");
    if (schema_has("fpga", "hbm_bytes", QV_CONF_SIZE))
        o->hbm_bytes = qv_config_size(cfg, "fpga", "hbm_bytes");
    for (size_t i = 0; i < sizeof u32keys / sizeof u32keys[0]; i++)
        if (schema_has("fpga", u32keys[i].key, QV_CONF_INT)) {
            int64_t v = qv_config_int(cfg, "fpga", u32keys[i].key);
            *(uint32_t *)((char *)o + u32keys[i].off) =
                v < 0 ? 0 : v > UINT32_MAX ? UINT32_MAX : (uint32_t)v;
        }
    if (schema_has("fpga", "sim_opencl", QV_CONF_BOOL))
        o->use_opencl = qv_config_bool(cfg, "fpga", "sim_opencl");
    if (schema_has("fpga", "sim_pace", QV_CONF_BOOL))
        o->pace = qv_config_bool(cfg, "fpga", "sim_pace");
    return 0;
}

static int opts_check(const struct qv_fpga_sim_opts *o, enum qv_fpga_sim_mode mode)
{
    if (mode != QV_FPGA_SIM_THREAD && mode != QV_FPGA_SIM_PROCESS)
        return qv_seterr(QV_EINVAL, "fpga sim: mode %d: expected thread (1) or process (2)",
                         (int)mode);
    if (!o->name || !o->name[0] || strlen(o->name) > 64)
        return qv_seterr(QV_EINVAL, "fpga sim: name: give 1..64 characters");
    for (const char *c = o->name; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
              (*c >= '0' && *c <= '9') || *c == '.' || *c == '_' || *c == '-'))
            return qv_seterr(QV_EINVAL, "fpga sim: name '%s': use only letters, digits, "
                             "'.', '_' and '-' (it names /dev/shm%s<name>)", o->name,
                             QV_FPGA_SHM_PREFIX);
    if (o->hbm_bytes < 64 || o->hbm_bytes > (1ull << 48))
        return qv_seterr(QV_EINVAL, "fpga sim: hbm_bytes = %llu: expected 64..2^48",
                         (unsigned long long)o->hbm_bytes);
#define NONZERO(f) \
    if (o->f == 0) \
        return qv_seterr(QV_EINVAL, "fpga sim: " #f " = 0: the timing model needs >= 1")
    NONZERO(clock_mhz);
    NONZERO(lanes);
    NONZERO(hbm_mbps);
    NONZERO(pcie_mbps);
    NONZERO(qtile);
    NONZERO(throttle_factor);
#undef NONZERO
    if (o->tick_us == 0 || o->tick_us > 1000)
        return qv_seterr(QV_EINVAL, "fpga sim: tick_us = %u: expected 1..1000 (HEARTBEAT "
                         "must move at least every 1 ms)", o->tick_us);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Scratch buffers, error log                                           */
/* ------------------------------------------------------------------ */

int qv__card_buf_reserve(struct qv_fpga_sim *s, struct card_buf *b, size_t bytes)
{
    if (bytes <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < bytes)
        cap = cap > SIZE_MAX / 2 ? bytes : cap * 2;
    void *p = qv_malloc(cap, QV_MEM_KERNEL);
    if (!p)
        return QV_ENOMEM;
    if (b->p) {
        qv_engine_forget(s->ocl, b->p);
        qv_engine_forget(s->cpu, b->p);
        qv_free(b->p);
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

void qv__card_log(struct qv_fpga_sim *s, uint16_t code, uint8_t qp, uint8_t opcode,
                  uint32_t seq, uint64_t detail, uint32_t sq_index)
{
    uint32_t w = bar_rd32(s, QV_FPGA_REG_ERRLOG_WIDX);
    uint32_t off = QV_FPGA_ERRLOG_ENTRY(w % QV_FPGA_ERRLOG_ENTRIES);
    struct qv_fpga_errlog_entry e = {
        .time_ns = (uint64_t)qv_now_ns(),
        .code = code,
        .qp = qp,
        .opcode = opcode,
        .seq = seq,
        .detail = detail,
        .sq_index = sq_index,
    };
    uint64_t words[4];
    memcpy(words, &e, sizeof words);
    for (int i = 0; i < 4; i++)
        __atomic_store_n((uint64_t *)(s->bar + off) + i, words[i], __ATOMIC_RELAXED);
    bar_wr32(s, QV_FPGA_REG_ERRLOG_WIDX, w + 1);
}

/* ------------------------------------------------------------------ */
/* HBM blocks: handle table                                             */
/* ------------------------------------------------------------------ */

static uint32_t hslot(uint32_t h, uint32_t cap)
{
    return (h * 2654435761u) & (cap - 1);
}

struct card_block *qv__card_block_find(const struct qv_fpga_sim *s, uint32_t h)
{
    if (h == 0 || h == QV_FPGA_NONE)
        return NULL;
    for (uint32_t i = hslot(h, s->hcap);; i = (i + 1) & (s->hcap - 1)) {
        struct card_block *b = s->htab[i];
        if (!b || b->handle == h)
            return b;
    }
}

static void htab_put(struct card_block **tab, uint32_t cap, struct card_block *b)
{
    uint32_t i = hslot(b->handle, cap);
    while (tab[i])
        i = (i + 1) & (cap - 1);
    tab[i] = b;
}

/* Room for one more block; 0 or QV_ENOMEM. */
static int htab_reserve(struct qv_fpga_sim *s)
{
    if ((uint64_t)(s->nblocks + 1) * 2 <= s->hcap)
        return 0;
    uint32_t cap = s->hcap * 2;
    struct card_block **t = qv_calloc(cap, sizeof *t, QV_MEM_KERNEL);
    if (!t)
        return QV_ENOMEM;
    for (uint32_t i = 0; i < s->hcap; i++)
        if (s->htab[i])
            htab_put(t, cap, s->htab[i]);
    qv_free(s->htab);
    s->htab = t;
    s->hcap = cap;
    return 0;
}

/* Remove b (resident) with backward-shift deletion. */
static void htab_remove(struct qv_fpga_sim *s, const struct card_block *b)
{
    uint32_t mask = s->hcap - 1, i = hslot(b->handle, s->hcap);
    while (s->htab[i] != b)
        i = (i + 1) & mask;
    s->htab[i] = NULL;
    for (uint32_t j = (i + 1) & mask; s->htab[j]; j = (j + 1) & mask) {
        uint32_t k = hslot(s->htab[j]->handle, s->hcap);
        /* move j back to the hole i unless its home k lies in (i, j] */
        int stays = i <= j ? (k > i && k <= j) : (k > i || k <= j);
        if (!stays) {
            s->htab[i] = s->htab[j];
            s->htab[j] = NULL;
            i = j;
        }
    }
}

static void block_release(struct qv_fpga_sim *s, struct card_block *b)
{
    qv_engine_forget(s->ocl, b->data);
    qv_engine_forget(s->cpu, b->data);
    qv_free(b->data);
    qv_free(b->ids);
    qv_free(b);
}

static void block_free(struct qv_fpga_sim *s, struct card_block *b)
{
    htab_remove(s, b);
    s->nblocks--;
    s->hbm_used -= b->charged;
    bar_wr64(s, QV_FPGA_REG_HBM_USED, s->hbm_used);
    bar_wr32(s, QV_FPGA_REG_RESIDENT_BLOCKS, s->nblocks);
    block_release(s, b);
}

static void blocks_free_all(struct qv_fpga_sim *s)
{
    for (uint32_t i = 0; i < s->hcap; i++)
        if (s->htab[i]) {
            block_release(s, s->htab[i]);
            s->htab[i] = NULL;
        }
    s->nblocks = 0;
    s->hbm_used = 0;
    if (s->bar) {
        bar_wr64(s, QV_FPGA_REG_HBM_USED, 0);
        bar_wr32(s, QV_FPGA_REG_RESIDENT_BLOCKS, 0);
    }
}

const uint64_t *qv__card_block_ids(struct card_block *b, uint32_t n)
{
    if (n <= b->ids_n)
        return b->ids;
    uint64_t *ids = qv_malloc((size_t)n * sizeof *ids, QV_MEM_KERNEL);
    if (!ids)
        return NULL;
    for (uint32_t e = 0; e < n; e++)
        ids[e] = (uint64_t)b->handle << 32 | e;
    qv_free(b->ids);
    b->ids = ids;
    b->ids_n = n;
    return ids;
}

/* ------------------------------------------------------------------ */
/* Status, temperature, faults, reset                                   */
/* ------------------------------------------------------------------ */

static int ctrl_enabled(const struct qv_fpga_sim *s)
{
    return (bar_rd32(s, QV_FPGA_REG_CTRL) & QV_FPGA_CTRL_ENABLE) != 0;
}

static void status_update(struct qv_fpga_sim *s, int busy)
{
    if (s->hang)
        return;                     /* a hung card's STATUS is frozen */
    uint32_t st = QV_FPGA_STATUS_READY;
    if (!ctrl_enabled(s) && !busy)
        st |= QV_FPGA_STATUS_HALTED;
    if (s->link_down)
        st |= QV_FPGA_STATUS_LINK_DOWN;
    if (s->throttle)
        st |= QV_FPGA_STATUS_THROTTLED;
    if (busy)
        st |= QV_FPGA_STATUS_BUSY;
    bar_wr32(s, QV_FPGA_REG_STATUS, st);
}

static void factive_update(struct qv_fpga_sim *s)
{
    uint32_t a = 0;
    if (s->hang)
        a |= QV_FPGA_FACTIVE_HANG;
    if (s->ecc_pending)
        a |= QV_FPGA_FACTIVE_ECC;
    if (s->link_down)
        a |= QV_FPGA_FACTIVE_LINK_DOWN;
    if (s->throttle)
        a |= QV_FPGA_FACTIVE_THROTTLE;
    bar_wr32(s, QV_FPGA_REG_FAULT_ACTIVE, a);
}

static void log_event(struct qv_fpga_sim *s, uint16_t ev, uint64_t detail)
{
    qv__card_log(s, ev, 0xFF, 0, 0, detail, 0);
}

static uint32_t throttle_factor(const struct qv_fpga_sim *s)
{
    uint32_t f = bar_rd32(s, QV_FPGA_REG_THROTTLE_FACTOR);
    return f ? f : 1;
}

/* End the injected faults (CLEAR, reset), logging each. */
static void faults_clear(struct qv_fpga_sim *s, int64_t now)
{
    if (s->hang) {
        s->hang = 0;
        log_event(s, QV_FPGA_EV_HANG, (uint64_t)(now - s->hang_start_ns));
    }
    if (s->link_down) {
        s->link_down = 0;
        log_event(s, QV_FPGA_EV_LINK_UP, 0);
    }
    if (s->throttle) {
        s->throttle = 0;
        s->temp_mc = QV_CARD_TEMP_IDLE;
        bar_wr32(s, QV_FPGA_REG_TEMP_MC, (uint32_t)s->temp_mc);
        log_event(s, QV_FPGA_EV_THROTTLE_OFF, 0);
    }
    s->ecc_pending = 0;
}

static void fault_apply(struct qv_fpga_sim *s, uint32_t f, int64_t now)
{
    int counted = 1;
    switch (f) {
    case QV_FPGA_FAULT_HANG:
        if (!s->hang) {
            s->hang = 1;
            s->hang_start_ns = now;
        }
        break;
    case QV_FPGA_FAULT_ECC:
        s->ecc_pending = 1;
        log_event(s, QV_FPGA_EV_ECC_UNCORRECTED, 0);
        break;
    case QV_FPGA_FAULT_LINK_DOWN:
        if (!s->link_down)
            log_event(s, QV_FPGA_EV_LINK_DOWN, 0);
        s->link_down = 1;
        break;
    case QV_FPGA_FAULT_THROTTLE:
        s->throttle = 1;
        s->temp_mc = QV_CARD_TEMP_THROT;
        bar_wr32(s, QV_FPGA_REG_TEMP_MC, (uint32_t)s->temp_mc);
        log_event(s, QV_FPGA_EV_THROTTLE_ON, throttle_factor(s));
        break;
    case QV_FPGA_FAULT_CLEAR:
        counted = 0;
        faults_clear(s, now);
        break;
    case QV_FPGA_FAULT_ECC_CORRECTED:
        bar_add64(s, QV_FPGA_REG_ECC_CORRECTED, 1);
        log_event(s, QV_FPGA_EV_ECC_CORRECTED, 0);
        break;
    default:
        counted = 0;                /* unknown code: ignored */
        break;
    }
    if (counted)
        bar_add64(s, QV_FPGA_REG_FAULTS, 1);
    factive_update(s);
    if (!s->hang)
        status_update(s, 0);
}

/* Clock, heartbeat, temperature, fault injection, CTRL.RESET.  Called on
 * every loop iteration and while a scan runs; cheap (a few BAR accesses). */
static void card_tick(struct qv_fpga_sim *s, int64_t now, int busy)
{
    bar_wr64(s, QV_FPGA_REG_CLOCK_NS, (uint64_t)now);
    uint32_t f = bar_rd32(s, QV_FPGA_REG_FAULT_INJECT);
    if (f) {
        fault_apply(s, f, now);
        bar_wr32(s, QV_FPGA_REG_FAULT_INJECT, 0);
    }
    if (bar_rd32(s, QV_FPGA_REG_CTRL) & QV_FPGA_CTRL_RESET)
        s->reset_requested = 1;
    int64_t dt = now - s->last_tick_ns;
    if (dt < (int64_t)s->opts.tick_us * 1000)
        return;
    s->last_tick_ns = now;
    if (s->hang)
        return;
    bar_add64(s, QV_FPGA_REG_HEARTBEAT, 1);
    if (!s->throttle) {
        int64_t busy_ns = busy ? dt : s->busy_ns_window;
        double share = busy_ns >= dt ? 1.0 : (double)busy_ns / (double)dt;
        double target = QV_CARD_TEMP_IDLE + share * (QV_CARD_TEMP_BUSY - QV_CARD_TEMP_IDLE);
        s->temp_mc += (int64_t)((target - (double)s->temp_mc) / 8.0);
        bar_wr32(s, QV_FPGA_REG_TEMP_MC, (uint32_t)s->temp_mc);
    }
    s->busy_ns_window = 0;
    status_update(s, busy);
}

static void card_reset(struct qv_fpga_sim *s, uint32_t aborted)
{
    int64_t now = qv_now_ns();
    bar_wr32(s, QV_FPGA_REG_STATUS, bar_rd32(s, QV_FPGA_REG_STATUS) & ~QV_FPGA_STATUS_READY);
    for (uint32_t off = QV_FPGA_QP_BASE(0); off < QV_FPGA_QP_BASE(QV_FPGA_MAX_QPS); off += 8)
        bar_wr64(s, off, 0);
    memset(s->qp, 0, sizeof s->qp);
    for (uint32_t off = QV_FPGA_ATU_BASE; off < QV_FPGA_ATU_ENTRY(QV_FPGA_ATU_ENTRIES);
         off += 8)
        bar_wr64(s, off, 0);
    blocks_free_all(s);
    faults_clear(s, now);
    factive_update(s);
    log_event(s, QV_FPGA_EV_RESET, aborted);
    s->reset_requested = 0;
    s->aborted = 0;
    bar_wr32(s, QV_FPGA_REG_CTRL, 0);
    bar_wr32(s, QV_FPGA_REG_STATUS, QV_FPGA_STATUS_READY | QV_FPGA_STATUS_HALTED);
}

/* ------------------------------------------------------------------ */
/* Waiting without stopping the clock                                   */
/* ------------------------------------------------------------------ */

static int should_stop(const struct qv_fpga_sim *s)
{
    return __atomic_load_n(&s->stop, __ATOMIC_ACQUIRE) ||
           __atomic_load_n(&s->killed, __ATOMIC_ACQUIRE) || (s->ext_stop && *s->ext_stop);
}

static void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void sleep_ns(int64_t ns)
{
    struct timespec ts = { .tv_sec = ns / 1000000000, .tv_nsec = ns % 1000000000 };
    nanosleep(&ts, NULL);
}

/* The kernel thread: runs one job at a time (card_scan.c's kernel job). */
static void *kernel_main(void *arg)
{
    struct qv_fpga_sim *s = arg;
    struct card_kernel *K = &s->kern;
    pthread_mutex_lock(&K->mu);
    for (;;) {
        while (!K->posted && !K->quit)
            pthread_cond_wait(&K->cv, &K->mu);
        if (K->quit)
            break;
        K->posted = 0;
        pthread_mutex_unlock(&K->mu);
        K->rc = qv__card_kernel_job(s);
        __atomic_store_n(&K->done, 1, __ATOMIC_RELEASE);
        pthread_mutex_lock(&K->mu);
    }
    pthread_mutex_unlock(&K->mu);
    return NULL;
}

int qv__card_run_kernel(struct qv_fpga_sim *s)
{
    struct card_kernel *K = &s->kern;
    __atomic_store_n(&K->done, 0, __ATOMIC_RELAXED);
    pthread_mutex_lock(&K->mu);
    K->posted = 1;
    pthread_cond_signal(&K->cv);
    pthread_mutex_unlock(&K->mu);
    int64_t t0 = qv_now_ns();
    while (!__atomic_load_n(&K->done, __ATOMIC_ACQUIRE)) {
        int64_t now = qv_now_ns();
        card_tick(s, now, 1);
        if (now - t0 < 50000)
            cpu_relax();
        else
            sleep_ns(10000);
    }
    if (should_stop(s))
        return -1;
    return K->rc;
}

/* Hold a finished descriptor until start + ns (SIM_PACE), then while the
 * card is hung or its link is down.  Returns 1 when a reset or a stop cut
 * the wait. */
static int hold_completion(struct qv_fpga_sim *s, int64_t until)
{
    for (;;) {
        int64_t now = qv_now_ns();
        card_tick(s, now, 1);
        if (s->reset_requested || should_stop(s))
            return 1;
        if (now >= until && !s->hang && !s->link_down)
            return 0;
        int64_t left = until - now;
        sleep_ns(left > 0 && left < 20000 ? left : 20000);
    }
}

/* ------------------------------------------------------------------ */
/* Descriptors                                                          */
/* ------------------------------------------------------------------ */

/* First nonzero byte of d in [from, to) -> BAD_PARAM at field `field`. */
static int rsvd_check(const struct qv_fpga_desc *d, unsigned from, unsigned to, unsigned field,
                      struct card_result *r)
{
    const uint8_t *b = (const uint8_t *)d;
    for (unsigned i = from; i < to; i++)
        if (b[i]) {
            r->status = QV_FPGA_ST_BAD_PARAM;
            r->detail = QV_FPGA_DETAIL(QV_FPGA_DETAIL_IN_DESC, field, 0);
            return 1;
        }
    return 0;
}

static void exec_upload(struct qv_fpga_sim *s, const struct qv_fpga_desc *d,
                        struct card_result *r)
{
    const struct qv_fpga_desc_upload *u = &d->op.upload;
    if (rsvd_check(d, 0x20, 0x40, 0x20, r))
        return;
    if (u->len == 0 || u->len > s->opts.hbm_bytes) {
        r->status = QV_FPGA_ST_BAD_LENGTH;
        r->detail = QV_FPGA_DETAIL(QV_FPGA_DETAIL_IN_DESC, 0x18, 0);
        return;
    }
    if (qv__card_dma_check(s, u->addr, u->len, QV_FPGA_ATU_READ, 1)) {
        r->status = QV_FPGA_ST_BAD_ADDRESS;
        r->detail = s->cur.bad_addr;
        return;
    }
    uint64_t charged = (u->len + 63) & ~(uint64_t)63;
    struct card_block *b = NULL;
    if (s->hbm_used + charged > s->opts.hbm_bytes || htab_reserve(s) ||
        !(b = qv_calloc(1, sizeof *b, QV_MEM_KERNEL)) ||
        !(b->data = qv_malloc(u->len, QV_MEM_IO))) {
        qv_free(b);
        r->status = QV_FPGA_ST_NO_MEMORY;
        r->detail = u->len;
        return;
    }
    int st = qv__card_dma_read(s, b->data, u->addr, u->len, 1);
    if (st) {
        qv_free(b->data);
        qv_free(b);
        r->status = (uint16_t)st;
        r->detail = s->cur.bad_addr;
        return;
    }
    uint32_t h;
    do
        h = s->next_handle++;
    while (h == 0 || h == QV_FPGA_NONE || qv__card_block_find(s, h));
    b->handle = h;
    b->len = u->len;
    b->charged = charged;
    htab_put(s->htab, s->hcap, b);
    s->nblocks++;
    s->hbm_used += charged;
    bar_wr64(s, QV_FPGA_REG_HBM_USED, s->hbm_used);
    bar_wr32(s, QV_FPGA_REG_RESIDENT_BLOCKS, s->nblocks);
    r->result = h;
    r->device_ns = 0;
}

static void exec_free(struct qv_fpga_sim *s, const struct qv_fpga_desc *d,
                      struct card_result *r)
{
    if (rsvd_check(d, 0x14, 0x40, 0x14, r))
        return;
    uint32_t h = d->op.free.handle;
    struct card_block *b = qv__card_block_find(s, h);
    if (!b) {
        r->status = QV_FPGA_ST_BAD_HANDLE;
        r->result = h;
        r->detail = h;
        return;
    }
    block_free(s, b);
}

/* Execute d (already fetched); r->status and the timing core. */
static void execute(struct qv_fpga_sim *s, const struct qv_fpga_desc *d, struct card_result *r)
{
    if (d->opcode == QV_FPGA_OP_INVALID || d->opcode >= QV_FPGA_OP__COUNT) {
        r->status = QV_FPGA_ST_BAD_OPCODE;
        r->detail = d->opcode;
        return;
    }
    if (d->flags) {
        r->status = QV_FPGA_ST_BAD_PARAM;
        r->detail = QV_FPGA_DETAIL(QV_FPGA_DETAIL_IN_DESC, 0x01, 0);
        return;
    }
    if (d->rsvd) {
        r->status = QV_FPGA_ST_BAD_PARAM;
        r->detail = QV_FPGA_DETAIL(QV_FPGA_DETAIL_IN_DESC, 0x02, 0);
        return;
    }
    switch (d->opcode) {
    case QV_FPGA_OP_NOP:
        rsvd_check(d, 0x10, 0x40, 0x10, r);
        break;
    case QV_FPGA_OP_UPLOAD:
        exec_upload(s, d, r);
        break;
    case QV_FPGA_OP_FREE:
        exec_free(s, d, r);
        break;
    case QV_FPGA_OP_SCAN:
        qv__card_scan(s, d, r);
        break;
    }
}

/* device_ns of a finished descriptor per the timing model. */
static uint64_t device_ns(const struct qv_fpga_sim *s, uint8_t opcode, const struct card_result *r)
{
    double f = s->throttle ? throttle_factor(s) : 1.0;
    double ns = s->opts.launch_ns;
    if (opcode == QV_FPGA_OP_UPLOAD || opcode == QV_FPGA_OP_SCAN)
        ns += r->device_ns + (double)s->cur.pcie_bytes * 1000.0 / s->opts.pcie_mbps;
    return (uint64_t)floor(f * ns);
}

/* Stop QP n with CONFIG_ERROR code.  Log the event first: whoever sees
 * the status must find its error-log entry. */
static void qp_stop(struct qv_fpga_sim *s, unsigned n, uint16_t code)
{
    s->qp[n].running = 0;
    s->qp[n].latched = 1;
    bar_wr32(s, QV_FPGA_QP_REG(n, QV_FPGA_QP_STATUS),
             QV_FPGA_QP_ST_CONFIG_ERROR | (uint32_t)code << QV_FPGA_QP_ST_CODE_SHIFT);
}

/* Fetch, execute and complete the descriptor at SQ index head of QP n. */
static void process(struct qv_fpga_sim *s, unsigned n, uint32_t head, uint32_t cq_tail)
{
    int64_t t0 = qv_now_ns();
    struct qv_fpga_desc d;
    struct card_result r = { .status = QV_FPGA_ST_OK };
    memset(&s->cur, 0, sizeof s->cur);
    s->cur.qp = (uint8_t)n;
    s->cur.sq_index = head;
    s->cur.seq = head;
    status_update(s, 1);
    const struct card_qp *Q = &s->qp[n];
    const uint64_t sq_base = Q->sq_base, cq_base = Q->cq_base;
    const uint32_t sq_entries = Q->sq_entries, cq_entries = Q->cq_entries;
    int st = qv__card_dma_read(s, &d, sq_base + (uint64_t)(head & (sq_entries - 1)) * 64,
                               QV_FPGA_DESC_SIZE, 64);
    if (st) {
        memset(&d, 0, sizeof d);
        d.seq = head;
        r.status = (uint16_t)st;
        r.detail = s->cur.bad_addr;
    } else {
        s->cur.opcode = d.opcode;
        s->cur.seq = d.seq;
        execute(s, &d, &r);
    }
    if (should_stop(s))
        return;                     /* killed or stopped mid-scan: never completed */
    bar_add64(s, QV_FPGA_REG_HEARTBEAT, s->hang ? 0 : 1);
    int timed = r.status == QV_FPGA_ST_OK;
    if (s->ecc_pending && !s->reset_requested) {
        if (d.opcode == QV_FPGA_OP_UPLOAD && r.status == QV_FPGA_ST_OK) {
            struct card_block *b = qv__card_block_find(s, r.result);
            if (b)
                block_free(s, b);   /* UPLOAD: no block is kept */
        }
        s->ecc_pending = 0;
        factive_update(s);
        bar_add64(s, QV_FPGA_REG_ECC_UNCORRECTED, 1);
        r.status = QV_FPGA_ST_ECC_ERROR;
        r.result = 0;
        r.detail = 0;
    }
    s->cur.pcie_bytes += QV_FPGA_CPL_SIZE;
    uint64_t ns = timed ? device_ns(s, d.opcode, &r) : 0;
    int pace = bar_rd32(s, QV_FPGA_REG_SIM_PACE) != 0;
    if (!s->reset_requested && (s->hang || s->link_down || (pace && ns)))
        hold_completion(s, pace ? t0 + (int64_t)ns : 0);
    if (__atomic_load_n(&s->killed, __ATOMIC_ACQUIRE))
        return;
    if (s->reset_requested) {
        r.status = QV_FPGA_ST_RESET;
        r.result = 0;
        r.detail = 0;
        ns = 0;
        s->cur.opcode = d.opcode;
    }
    struct qv_fpga_cpl c = {
        .cookie = d.cookie,
        .device_ns = ns,
        .result = r.result,
        .sq_head = head + 1,
        .status = r.status,
        .opcode = d.opcode,
        .qp = (uint8_t)n,
        .seq = d.seq + 1,
    };
    if (r.status != QV_FPGA_ST_OK) {
        qv__card_log(s, r.status, (uint8_t)n, d.opcode, d.seq, r.detail, head);
        bar_add64(s, QV_FPGA_REG_ERRORS, 1);
        bar_add64(s, QV_FPGA_QP_REG(n, QV_FPGA_QP_ERRORS), 1);
    }
    if (qv__card_dma_write_cpl(s, cq_base + (uint64_t)(cq_tail & (cq_entries - 1)) * 32, &c)) {
        /* the CQ is gone: nothing can be completed on this QP any more */
        qv__card_log(s, QV_FPGA_ST_BAD_ADDRESS, (uint8_t)n, d.opcode, d.seq, s->cur.bad_addr,
                     head);
        qp_stop(s, n, QV_FPGA_ST_BAD_ADDRESS);
        bar_wr32(s, QV_FPGA_QP_REG(n, QV_FPGA_QP_SQ_HEAD), head + 1);
    } else {
        bar_add64(s, QV_FPGA_REG_COMPLETIONS, 1);
        bar_wr32(s, QV_FPGA_QP_REG(n, QV_FPGA_QP_CQ_TAIL), cq_tail + 1);
        bar_wr32(s, QV_FPGA_QP_REG(n, QV_FPGA_QP_SQ_HEAD), head + 1);
    }
    bar_add64(s, QV_FPGA_REG_DEVICE_NS, ns);
    bar_add64(s, QV_FPGA_QP_REG(n, QV_FPGA_QP_DEVICE_NS), ns);
    if (r.status == QV_FPGA_ST_RESET)
        s->aborted++;
    s->busy_ns_window += qv_now_ns() - t0;
    status_update(s, 0);
}

static int is_pow2_ring(uint32_t v)
{
    return v >= QV_FPGA_RING_MIN && v <= QV_FPGA_RING_MAX && (v & (v - 1)) == 0;
}

/* QP_CTRL.ENABLE transitions (step 4 of the loop). */
static void qp_config(struct qv_fpga_sim *s)
{
    for (unsigned n = 0; n < QV_FPGA_MAX_QPS; n++) {
        struct card_qp *Q = &s->qp[n];
        int en = (bar_rd32(s, QV_FPGA_QP_REG(n, QV_FPGA_QP_CTRL)) & QV_FPGA_QP_CTRL_ENABLE) != 0;
        if (!en) {
            if (Q->running || Q->latched) {
                Q->running = Q->latched = 0;
                bar_wr32(s, QV_FPGA_QP_REG(n, QV_FPGA_QP_STATUS), 0);
            }
            continue;
        }
        if (Q->running || Q->latched)
            continue;
        uint64_t sqb = bar_rd64(s, QV_FPGA_QP_REG(n, QV_FPGA_QP_SQ_BASE));
        uint64_t cqb = bar_rd64(s, QV_FPGA_QP_REG(n, QV_FPGA_QP_CQ_BASE));
        uint32_t sqe = bar_rd32(s, QV_FPGA_QP_REG(n, QV_FPGA_QP_SQ_ENTRIES));
        uint32_t cqe = bar_rd32(s, QV_FPGA_QP_REG(n, QV_FPGA_QP_CQ_ENTRIES));
        uint16_t code = 0;
        if (!is_pow2_ring(sqe) || !is_pow2_ring(cqe))
            code = QV_FPGA_ST_BAD_PARAM;
        else if (qv__card_dma_check(s, sqb, (uint64_t)sqe * QV_FPGA_DESC_SIZE,
                                    QV_FPGA_ATU_READ, 64) ||
                 qv__card_dma_check(s, cqb, (uint64_t)cqe * QV_FPGA_CPL_SIZE,
                                    QV_FPGA_ATU_WRITE, 64))
            code = QV_FPGA_ST_BAD_ADDRESS;
        if (code) {
            qv__card_log(s, QV_FPGA_EV_QP_CONFIG, (uint8_t)n, 0, 0, code, 0);
            qp_stop(s, n, code);
            continue;
        }
        bar_wr32(s, QV_FPGA_QP_REG(n, QV_FPGA_QP_SQ_TAIL), 0);
        bar_wr32(s, QV_FPGA_QP_REG(n, QV_FPGA_QP_SQ_HEAD), 0);
        bar_wr32(s, QV_FPGA_QP_REG(n, QV_FPGA_QP_CQ_HEAD), 0);
        bar_wr32(s, QV_FPGA_QP_REG(n, QV_FPGA_QP_CQ_TAIL), 0);
        Q->sq_base = sqb;
        Q->cq_base = cqb;
        Q->sq_entries = sqe;
        Q->cq_entries = cqe;
        Q->running = 1;
        bar_wr32(s, QV_FPGA_QP_REG(n, QV_FPGA_QP_STATUS), QV_FPGA_QP_ST_RUNNING);
    }
}

/* One turn of QP n: 1 when a descriptor was completed (or aborted). */
static int serve(struct qv_fpga_sim *s, unsigned n)
{
    if (!s->qp[n].running)
        return 0;
    uint32_t tail = bar_rd32(s, QV_FPGA_QP_REG(n, QV_FPGA_QP_SQ_TAIL));
    uint32_t head = bar_rd32(s, QV_FPGA_QP_REG(n, QV_FPGA_QP_SQ_HEAD));
    if (tail == head)
        return 0;
    uint32_t sqe = s->qp[n].sq_entries;
    if (tail - head > sqe) {
        qv__card_log(s, QV_FPGA_EV_DOORBELL, (uint8_t)n, 0, 0, tail, head);
        qp_stop(s, n, QV_FPGA_ST_BAD_PARAM);
        return 0;
    }
    uint32_t cq_tail = bar_rd32(s, QV_FPGA_QP_REG(n, QV_FPGA_QP_CQ_TAIL));
    uint32_t cq_head = bar_rd32(s, QV_FPGA_QP_REG(n, QV_FPGA_QP_CQ_HEAD));
    uint32_t cqe = s->qp[n].cq_entries;
    uint32_t qst = bar_rd32(s, QV_FPGA_QP_REG(n, QV_FPGA_QP_STATUS));
    if (cq_tail - cq_head >= cqe) {
        if (!(qst & QV_FPGA_QP_ST_CQ_FULL))
            bar_wr32(s, QV_FPGA_QP_REG(n, QV_FPGA_QP_STATUS), qst | QV_FPGA_QP_ST_CQ_FULL);
        return 0;
    }
    if (qst & QV_FPGA_QP_ST_CQ_FULL)
        bar_wr32(s, QV_FPGA_QP_REG(n, QV_FPGA_QP_STATUS), qst & ~QV_FPGA_QP_ST_CQ_FULL);
    process(s, n, head, cq_tail);
    return 1;
}

static void card_loop(struct qv_fpga_sim *s)
{
    prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);     /* 1 us: ticks are short */
    s->last_work_ns = qv_now_ns();
    while (!should_stop(s)) {
        int64_t now = qv_now_ns();
        card_tick(s, now, 0);
        if (s->reset_requested) {
            card_reset(s, s->aborted);
            continue;
        }
        if (s->hang || s->link_down) {
            sleep_ns((int64_t)s->opts.tick_us * 1000);
            continue;
        }
        qp_config(s);
        int work = 0;
        if (ctrl_enabled(s))
            for (unsigned i = 0; i < QV_FPGA_MAX_QPS && !s->reset_requested; i++) {
                unsigned n = (s->rr + i) % QV_FPGA_MAX_QPS;
                if (serve(s, n))
                    work = 1;
            }
        s->rr = (s->rr + 1) % QV_FPGA_MAX_QPS;
        if (work)
            s->last_work_ns = qv_now_ns();
        else if (now - s->last_work_ns < QV_CARD_SPIN_NS)
            cpu_relax();
        else
            sleep_ns((int64_t)s->opts.tick_us * 1000);
    }
}

/* ------------------------------------------------------------------ */
/* Life cycle                                                           */
/* ------------------------------------------------------------------ */

static void bar_init(struct qv_fpga_sim *s)
{
    uint32_t ops = 1u << QV_FPGA_OP_NOP | 1u << QV_FPGA_OP_UPLOAD | 1u << QV_FPGA_OP_FREE |
                   1u << QV_FPGA_OP_SCAN;
    uint32_t caps = QV_FPGA_CAP_FLAT | QV_FPGA_CAP_SQ8 | QV_FPGA_CAP_PQ4 | QV_FPGA_CAP_PQ8 |
                    QV_FPGA_CAP_L2 | QV_FPGA_CAP_IP | QV_FPGA_CAP_FILTER |
                    QV_FPGA_CAP_PROBE_TABLES | QV_FPGA_CAP_F16 | QV_FPGA_CAP_SIMULATED;
    bar_wr32(s, QV_FPGA_REG_VERSION, QV_FPGA_VERSION);
    bar_wr32(s, QV_FPGA_REG_CAPS_OPS, ops);
    bar_wr32(s, QV_FPGA_REG_CAPS_SCAN, caps);
    bar_wr32(s, QV_FPGA_REG_NUM_QPS, QV_FPGA_MAX_QPS);
    bar_wr32(s, QV_FPGA_REG_MAX_DIM, QV_FPGA_SIM_MAX_DIM);
    bar_wr32(s, QV_FPGA_REG_MAX_K, QV_FPGA_MAX_K);
    bar_wr32(s, QV_FPGA_REG_MAX_NQ, QV_FPGA_SIM_MAX_NQ);
    bar_wr64(s, QV_FPGA_REG_HBM_BYTES, s->opts.hbm_bytes);
    bar_wr32(s, QV_FPGA_REG_MAX_PQ_M, QV_FPGA_MAX_PQ_M);
    bar_wr32(s, QV_FPGA_REG_NUM_REGIONS, QV_FPGA_ATU_ENTRIES);
    bar_wr32(s, QV_FPGA_REG_TEMP_MC, QV_CARD_TEMP_IDLE);
    bar_wr64(s, QV_FPGA_REG_CLOCK_NS, (uint64_t)qv_now_ns());
    bar_wr32(s, QV_FPGA_REG_CLOCK_MHZ, s->opts.clock_mhz);
    bar_wr32(s, QV_FPGA_REG_LANES, s->opts.lanes);
    bar_wr32(s, QV_FPGA_REG_HBM_MBPS, s->opts.hbm_mbps);
    bar_wr32(s, QV_FPGA_REG_PCIE_MBPS, s->opts.pcie_mbps);
    bar_wr32(s, QV_FPGA_REG_LAUNCH_NS, s->opts.launch_ns);
    bar_wr32(s, QV_FPGA_REG_QTILE, s->opts.qtile);
    bar_wr32(s, QV_FPGA_REG_ERRLOG_SIZE, QV_FPGA_ERRLOG_ENTRIES);
    bar_wr32(s, QV_FPGA_REG_THROTTLE_FACTOR, s->opts.throttle_factor);
    bar_wr32(s, QV_FPGA_REG_SIM_MODE, (uint32_t)s->mode);
    bar_wr32(s, QV_FPGA_REG_SIM_CARD_PID, (uint32_t)getpid());
    bar_wr32(s, QV_FPGA_REG_SIM_PACE, s->opts.pace ? 1 : 0);
    bar_wr32(s, QV_FPGA_REG_STATUS, QV_FPGA_STATUS_READY | QV_FPGA_STATUS_HALTED);
    bar_wr32(s, QV_FPGA_REG_MAGIC, QV_FPGA_MAGIC);      /* last */
}

static int shm_create(struct qv_fpga_sim *s)
{
    snprintf(s->shm_name, sizeof s->shm_name, "%s%s", QV_FPGA_SHM_PREFIX, s->name);
    shm_unlink(s->shm_name);        /* a stale card of a crashed simulator */
    s->shm_fd = shm_open(s->shm_name, O_CREAT | O_EXCL | O_RDWR, 0600);
    if (s->shm_fd < 0)
        return qv_seterr(QV_EIO, "fpga sim: shm_open /dev/shm%s: %s", s->shm_name,
                         strerror(errno));
    if (ftruncate(s->shm_fd, QV_FPGA_BAR0_SIZE) != 0) {
        qv_seterr(QV_EIO, "fpga sim: ftruncate /dev/shm%s: %s", s->shm_name, strerror(errno));
        goto fail_unlink;
    }
    void *p = mmap(NULL, QV_FPGA_BAR0_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, s->shm_fd, 0);
    if (p == MAP_FAILED) {
        qv_seterr(QV_EIO, "fpga sim: mmap /dev/shm%s: %s", s->shm_name, strerror(errno));
        goto fail_unlink;
    }
    s->bar = p;
    return 0;

fail_unlink:
    close(s->shm_fd);
    s->shm_fd = -1;
    shm_unlink(s->shm_name);
    return QV_EIO;
}

static int engines_create(struct qv_fpga_sim *s)
{
    s->cpu = qv_engine_cpu_create(NULL);
    if (!s->cpu)
        return QV_ENOMEM;
    s->engine = s->cpu;
    if (!s->opts.use_opencl)
        return 0;
#ifdef QV_HAVE_OPENCL
    struct qv_engine *e = qv_engine_opencl_create(NULL);
    if (e) {
        s->engine = s->ocl = e;
        return 0;
    }
    if (qv_errno == QV_ENOMEM)
        return QV_ENOMEM;
    QV_WARN("fpga sim %s: no OpenCL bitstream (%s): the card runs the CPU engine", s->name,
            qv_errmsg());
#else
    QV_WARN("fpga sim %s: built without OpenCL: the card runs the CPU engine", s->name);
#endif
    return 0;
}

static void *loop_main(void *arg)
{
    card_loop(arg);
    return NULL;
}

struct qv_fpga_sim *qv_fpga_sim_create(const struct qv_fpga_sim_opts *o,
                                       enum qv_fpga_sim_mode mode)
{
    struct qv_fpga_sim_opts def;
    int rc;
    if (!o) {
        qv_fpga_sim_opts_default(&def);
        o = &def;
    }
    if ((rc = opts_check(o, mode)) != 0)
        goto fail;
    struct qv_fpga_sim *s = qv_calloc(1, sizeof *s, QV_MEM_KERNEL);
    if (!s) {
        rc = qv_seterr(QV_ENOMEM, "fpga sim: no memory");
        goto fail;
    }
    s->opts = *o;
    snprintf(s->name, sizeof s->name, "%s", o->name);
    s->opts.name = s->name;
    s->mode = mode;
    s->shm_fd = -1;
    s->next_handle = 1;
    s->temp_mc = QV_CARD_TEMP_IDLE;
    s->hcap = 64;
    s->htab = qv_calloc(s->hcap, sizeof *s->htab, QV_MEM_KERNEL);
    if (!s->htab) {
        rc = qv_seterr(QV_ENOMEM, "fpga sim: no memory");
        goto fail_htab;
    }
    if (mode == QV_FPGA_SIM_THREAD) {
        s->bar = qv_calloc(1, QV_FPGA_BAR0_SIZE, QV_MEM_IO);
        rc = s->bar ? 0 : qv_seterr(QV_ENOMEM, "fpga sim: no memory for BAR0");
    } else {
        rc = shm_create(s);
    }
    if (rc)
        goto fail_bar;
    if ((rc = engines_create(s)) != 0) {
        qv_seterr(rc, "fpga sim: no memory for the card's engine");
        goto fail_engine;
    }
    pthread_mutex_init(&s->kern.mu, NULL);
    pthread_cond_init(&s->kern.cv, NULL);
    if ((rc = pthread_create(&s->kern.thread, NULL, kernel_main, s)) != 0) {
        rc = qv_seterr(-rc, "fpga sim: cannot start the kernel thread: %s", strerror(rc));
        goto fail_kernel;
    }
    s->kern.started = 1;
    bar_init(s);
    s->last_tick_ns = qv_now_ns();
    if (mode == QV_FPGA_SIM_THREAD) {
        if ((rc = pthread_create(&s->loop_thread, NULL, loop_main, s)) != 0) {
            rc = qv_seterr(-rc, "fpga sim: cannot start the card thread: %s", strerror(rc));
            goto fail_loop;
        }
        s->loop_started = 1;
    }
    return s;

fail_loop:
fail_kernel:
    qv_fpga_sim_free(s);            /* undoes the rest in reverse */
    qv_errno = rc;
    return NULL;
fail_engine:
    qv_engine_free(s->cpu);
    if (mode == QV_FPGA_SIM_THREAD) {
        qv_free(s->bar);
    } else {
        munmap(s->bar, QV_FPGA_BAR0_SIZE);
        close(s->shm_fd);
        shm_unlink(s->shm_name);
    }
fail_bar:
    qv_free(s->htab);
fail_htab:
    qv_free(s);
fail:
    qv_errno = rc;
    return NULL;
}

volatile void *qv_fpga_sim_bar0(struct qv_fpga_sim *s)
{
    return s->bar;
}

int qv_fpga_sim_run(struct qv_fpga_sim *s, volatile int *stop)
{
    if (s->mode != QV_FPGA_SIM_PROCESS)
        return qv_seterr(QV_EINVAL, "fpga sim %s: qv_fpga_sim_run is for process mode; a "
                         "thread-mode card runs in its own thread", s->name);
    s->ext_stop = stop;
    card_loop(s);
    s->ext_stop = NULL;
    return 0;
}

int qv_fpga_sim_inject(struct qv_fpga_sim *s, enum qv_fpga_fault f)
{
    if ((unsigned)f == QV_FPGA_FAULT_NONE || (unsigned)f >= QV_FPGA_FAULT__COUNT)
        return qv_seterr(QV_EINVAL, "fpga sim %s: fault %d: expected 1..%d", s->name, (int)f,
                         QV_FPGA_FAULT__COUNT - 1);
    bar_wr32(s, QV_FPGA_REG_FAULT_INJECT, (uint32_t)f);
    return 0;
}

void qv_fpga_sim_kill(struct qv_fpga_sim *s)
{
    if (s->mode != QV_FPGA_SIM_THREAD || !s->loop_started)
        return;
    __atomic_store_n(&s->killed, 1, __ATOMIC_RELEASE);
    pthread_join(s->loop_thread, NULL);
    s->loop_started = 0;
}

void qv_fpga_sim_free(struct qv_fpga_sim *s)
{
    if (!s)
        return;
    __atomic_store_n(&s->stop, 1, __ATOMIC_RELEASE);
    if (s->loop_started)
        pthread_join(s->loop_thread, NULL);
    if (s->kern.started) {
        pthread_mutex_lock(&s->kern.mu);
        s->kern.quit = 1;
        pthread_cond_signal(&s->kern.cv);
        pthread_mutex_unlock(&s->kern.mu);
        pthread_join(s->kern.thread, NULL);
        pthread_mutex_destroy(&s->kern.mu);
        pthread_cond_destroy(&s->kern.cv);
    }
    blocks_free_all(s);
    qv__card_scan_fini(s);
    qv_engine_free(s->ocl);
    qv_engine_free(s->cpu);
    qv_free(s->htab);
    if (s->mode == QV_FPGA_SIM_THREAD) {
        qv_free(s->bar);
    } else if (s->bar) {
        munmap(s->bar, QV_FPGA_BAR0_SIZE);
        close(s->shm_fd);
        shm_unlink(s->shm_name);
    }
    qv_free(s);
}
