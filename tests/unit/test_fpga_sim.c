/*
 * test_fpga_sim.c - the simulated FPGA card (firmware-sim/) driven by a raw
 * mini-host written here: rings allocated in the test, ATU entries and
 * descriptors written by hand, completions polled on their seq word, as
 * docs/REGISTERS.md says.  No host driver is involved, so a failure points
 * at the card.
 *
 * Results are checked against the CPU engine on the same work unit (the
 * unit helpers follow tests/unit/test_opencl.c), with the unit's ids set
 * to (handle << 32) | entry so both order ties the same way.  Malformed
 * descriptors must each give their documented status and error-log entry
 * while the card keeps serving; every fault has a test; the process-mode
 * DMA path (process_vm_readv / writev) runs against this very process.
 */

#include <CUnit/Basic.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "fpga_sim.h"
#include "quiver/alloc.h"
#include "quiver/config.h"
#include "quiver/dist.h"
#include "quiver/engine.h"
#include "quiver/errors.h"
#include "quiver/pq.h"
#include "quiver/sq8.h"
#include "quiver/timeutil.h"
#include "quiver/topk.h"

static struct qv_engine *cpu;       /* the reference */

/* ---- deterministic random numbers ---- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static float rndf(void) { return (float)(rnd() >> 40) / (float)(1u << 24); }

static void sleep_ms(int ms)
{
    struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000 };
    nanosleep(&ts, NULL);
}

/* ------------------------------------------------------------------ */
/* The mini-host                                                        */
/* ------------------------------------------------------------------ */

#define RING 64u                    /* SQ and CQ entries */
#define ARENA_BYTES (24u << 20)     /* DMA-able scratch, one READ|WRITE region */

struct host {
    struct qv_fpga_sim *sim;
    uint8_t *bar;
    struct qv_fpga_desc *sq;
    struct qv_fpga_cpl *cq;
    uint32_t sq_tail, cq_head;
    uint8_t *arena;
    size_t arena_used;
    uint32_t next_region;
};

static uint32_t rd32(const struct host *h, uint32_t off)
{
    return __atomic_load_n((uint32_t *)(h->bar + off), __ATOMIC_ACQUIRE);
}

static uint64_t rd64(const struct host *h, uint32_t off)
{
    return __atomic_load_n((uint64_t *)(h->bar + off), __ATOMIC_ACQUIRE);
}

static void wr32(struct host *h, uint32_t off, uint32_t v)
{
    __atomic_store_n((uint32_t *)(h->bar + off), v, __ATOMIC_RELEASE);
}

static void wr64(struct host *h, uint32_t off, uint64_t v)
{
    __atomic_store_n((uint64_t *)(h->bar + off), v, __ATOMIC_RELEASE);
}

/* Wait until (reg & mask) == want; 0 or -1 after ms. */
static int wait_reg(struct host *h, uint32_t off, uint32_t mask, uint32_t want, int ms)
{
    int64_t end = qv_now_ns() + (int64_t)ms * 1000000;
    while ((rd32(h, off) & mask) != want) {
        if (qv_now_ns() > end)
            return -1;
        sleep_ms(0);
    }
    return 0;
}

static int region_add(struct host *h, const void *base, uint64_t len, uint32_t flags)
{
    uint32_t i = h->next_region++;
    if (i >= QV_FPGA_ATU_ENTRIES)
        return -1;
    uint32_t e = QV_FPGA_ATU_ENTRY(i);
    wr64(h, e + 0x00, (uint64_t)(uintptr_t)base);
    wr64(h, e + 0x08, len);
    wr32(h, e + 0x10, flags | QV_FPGA_ATU_VALID);
    return (int)i;
}

/* Host start-up after create or reset: regions, QP 0, CTRL.ENABLE. */
static int host_setup(struct host *h)
{
    h->next_region = 0;
    h->sq_tail = h->cq_head = 0;
    memset(h->cq, 0, RING * sizeof *h->cq);
    if (wait_reg(h, QV_FPGA_REG_MAGIC, ~0u, QV_FPGA_MAGIC, 2000))
        return -1;
    wr32(h, QV_FPGA_REG_SIM_HOST_PID, (uint32_t)getpid());
    region_add(h, h->sq, RING * sizeof *h->sq, QV_FPGA_ATU_READ);
    region_add(h, h->cq, RING * sizeof *h->cq, QV_FPGA_ATU_WRITE);
    region_add(h, h->arena, ARENA_BYTES, QV_FPGA_ATU_READ | QV_FPGA_ATU_WRITE);
    wr64(h, QV_FPGA_QP_REG(0, QV_FPGA_QP_SQ_BASE), (uint64_t)(uintptr_t)h->sq);
    wr64(h, QV_FPGA_QP_REG(0, QV_FPGA_QP_CQ_BASE), (uint64_t)(uintptr_t)h->cq);
    wr32(h, QV_FPGA_QP_REG(0, QV_FPGA_QP_SQ_ENTRIES), RING);
    wr32(h, QV_FPGA_QP_REG(0, QV_FPGA_QP_CQ_ENTRIES), RING);
    wr32(h, QV_FPGA_QP_REG(0, QV_FPGA_QP_CTRL), QV_FPGA_QP_CTRL_ENABLE);
    if (wait_reg(h, QV_FPGA_QP_REG(0, QV_FPGA_QP_STATUS), QV_FPGA_QP_ST_RUNNING,
                 QV_FPGA_QP_ST_RUNNING, 2000))
        return -1;
    wr32(h, QV_FPGA_REG_CTRL, QV_FPGA_CTRL_ENABLE);
    return 0;
}

static void host_attach(struct host *h, struct qv_fpga_sim *sim)
{
    memset(h, 0, sizeof *h);
    h->sim = sim;
    h->bar = (uint8_t *)qv_fpga_sim_bar0(sim);
    h->sq = qv_calloc(RING, sizeof *h->sq, QV_MEM_TEST);
    h->cq = qv_calloc(RING, sizeof *h->cq, QV_MEM_TEST);
    h->arena = qv_malloc(ARENA_BYTES, QV_MEM_TEST);
    CU_ASSERT_FATAL(h->sq && h->cq && h->arena);
    CU_ASSERT_EQUAL_FATAL(host_setup(h), 0);
}

/* A thread-mode card (opts NULL: CPU engine, defaults) and its host. */
static void host_open(struct host *h, const struct qv_fpga_sim_opts *opts)
{
    struct qv_fpga_sim_opts o;
    qv_fpga_sim_opts_default(&o);
    o.use_opencl = 0;
    if (opts)
        o = *opts;
    struct qv_fpga_sim *sim = qv_fpga_sim_create(&o, QV_FPGA_SIM_THREAD);
    if (!sim)
        fprintf(stderr, "\n  create: %s", qv_errmsg());
    CU_ASSERT_PTR_NOT_NULL_FATAL(sim);
    host_attach(h, sim);
}

static void host_close(struct host *h)
{
    qv_fpga_sim_free(h->sim);
    qv_free(h->sq);
    qv_free(h->cq);
    qv_free(h->arena);
}

static void *arena_alloc(struct host *h, size_t bytes)
{
    size_t off = (h->arena_used + 63) & ~(size_t)63;
    CU_ASSERT_FATAL(off + bytes <= ARENA_BYTES);
    h->arena_used = off + bytes;
    return h->arena + off;
}

static void *arena_copy(struct host *h, const void *src, size_t bytes)
{
    void *p = arena_alloc(h, bytes ? bytes : 1);
    if (bytes)
        memcpy(p, src, bytes);
    return p;
}

/* Submit d (its seq is set to the SQ index).  Returns the index. */
static uint32_t submit(struct host *h, const struct qv_fpga_desc *d)
{
    uint32_t i = h->sq_tail++;
    h->sq[i & (RING - 1)] = *d;
    h->sq[i & (RING - 1)].seq = i;
    wr32(h, QV_FPGA_QP_REG(0, QV_FPGA_QP_SQ_TAIL), h->sq_tail);
    return i;
}

/* Poll completion i (in order).  0, or -1 after ms.  Consumes the slot. */
static int wait_cpl(struct host *h, uint32_t i, int ms, struct qv_fpga_cpl *out)
{
    struct qv_fpga_cpl *c = &h->cq[i & (RING - 1)];
    int64_t end = qv_now_ns() + (int64_t)ms * 1000000;
    while (__atomic_load_n(&c->seq, __ATOMIC_ACQUIRE) != i + 1) {
        if (qv_now_ns() > end)
            return -1;
    }
    *out = *c;
    h->cq_head = i + 1;
    wr32(h, QV_FPGA_QP_REG(0, QV_FPGA_QP_CQ_HEAD), h->cq_head);
    return 0;
}

static struct qv_fpga_cpl run(struct host *h, const struct qv_fpga_desc *d)
{
    struct qv_fpga_cpl c;
    memset(&c, 0xEE, sizeof c);
    uint32_t i = submit(h, d);
    int rc = wait_cpl(h, i, 20000, &c);
    CU_ASSERT_EQUAL(rc, 0);
    if (rc == 0) {
        CU_ASSERT_EQUAL(c.seq, i + 1);
        CU_ASSERT_EQUAL(c.sq_head, i + 1);
        CU_ASSERT_EQUAL(c.cookie, d->cookie);
        CU_ASSERT_EQUAL(c.opcode, d->opcode);
    }
    return c;
}

static struct qv_fpga_desc nop_desc(void)
{
    struct qv_fpga_desc d;
    memset(&d, 0, sizeof d);
    d.opcode = QV_FPGA_OP_NOP;
    d.cookie = 0xC0FFEE;
    return d;
}

static void expect_nop_ok(struct host *h)
{
    struct qv_fpga_desc d = nop_desc();
    struct qv_fpga_cpl c = run(h, &d);
    CU_ASSERT_EQUAL(c.status, QV_FPGA_ST_OK);
}

/* UPLOAD len bytes of src (copied into the arena); returns the completion. */
static struct qv_fpga_cpl upload_raw(struct host *h, const void *src, uint64_t len)
{
    struct qv_fpga_desc d;
    memset(&d, 0, sizeof d);
    d.opcode = QV_FPGA_OP_UPLOAD;
    d.cookie = len;
    d.op.upload.addr = (uint64_t)(uintptr_t)arena_copy(h, src, len);
    d.op.upload.len = len;
    return run(h, &d);
}

static uint32_t upload(struct host *h, const void *src, uint64_t len)
{
    struct qv_fpga_cpl c = upload_raw(h, src, len);
    CU_ASSERT_EQUAL(c.status, QV_FPGA_ST_OK);
    if (c.status != QV_FPGA_ST_OK)
        return QV_FPGA_NONE;
    CU_ASSERT(c.result != 0 && c.result != QV_FPGA_NONE);
    return c.result;
}

static struct qv_fpga_cpl free_handle(struct host *h, uint32_t handle)
{
    struct qv_fpga_desc d;
    memset(&d, 0, sizeof d);
    d.opcode = QV_FPGA_OP_FREE;
    d.op.free.handle = handle;
    return run(h, &d);
}

/* The newest error-log entry. */
static struct qv_fpga_errlog_entry errlog_last(struct host *h)
{
    struct qv_fpga_errlog_entry e;
    uint32_t w = rd32(h, QV_FPGA_REG_ERRLOG_WIDX);
    memcpy(&e, h->bar + QV_FPGA_ERRLOG_ENTRY((w - 1) % QV_FPGA_ERRLOG_ENTRIES), sizeof e);
    return e;
}

/* Whether an entry with code was logged at index >= from. */
static int errlog_has(struct host *h, uint32_t from, uint16_t code, uint64_t *detail)
{
    uint32_t w = rd32(h, QV_FPGA_REG_ERRLOG_WIDX);
    for (uint32_t i = from; i < w; i++) {
        struct qv_fpga_errlog_entry e;
        memcpy(&e, h->bar + QV_FPGA_ERRLOG_ENTRY(i % QV_FPGA_ERRLOG_ENTRIES), sizeof e);
        if (e.code == code) {
            if (detail)
                *detail = e.detail;
            return 1;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Work units (as tests/unit/test_opencl.c builds them)                 */
/* ------------------------------------------------------------------ */

struct unit {
    struct qv_work_unit wu;
    struct qv_wu_list *lists;
    float *queries, *qnorms;
    uint32_t *poff, *plist;
    uint64_t *filter;
    float *x;
    uint32_t n;
    float *vmin, *vdiff;
    struct qv_sq8_params sq8;
    struct qv_pq pq;
    float *coarse, *qtab, *ltab;
    struct qv_pq_params pqp;
    size_t *code_bytes;         /* per list: bytes of codes */
};

static void unit_make(struct unit *u, enum qv_wu_kind kind, enum qv_metric metric,
                      uint32_t dim, uint32_t n, uint32_t nlists, uint32_t nq,
                      uint32_t nprobe, int with_filter)
{
    memset(u, 0, sizeof *u);
    u->n = n;
    u->x = qv_malloc((size_t)n * dim * sizeof(float) + 4, QV_MEM_TEST);
    for (size_t i = 0; i < (size_t)n * dim; i++)
        u->x[i] = rndf();
    u->queries = qv_malloc((size_t)nq * dim * sizeof(float), QV_MEM_TEST);
    u->qnorms = qv_malloc(nq * sizeof(float), QV_MEM_TEST);
    for (size_t i = 0; i < (size_t)nq * dim; i++)
        u->queries[i] = rndf();
    for (uint32_t q = 0; q < nq; q++) {
        float s = 0;
        for (uint32_t d = 0; d < dim; d++)
            s += u->queries[(size_t)q * dim + d] * u->queries[(size_t)q * dim + d];
        u->qnorms[q] = s;
    }
    u->lists = qv_calloc(nlists, sizeof *u->lists, QV_MEM_TEST);
    u->code_bytes = qv_calloc(nlists, sizeof *u->code_bytes, QV_MEM_TEST);
    uint32_t *cut = qv_malloc((nlists + 1) * sizeof(uint32_t), QV_MEM_TEST);
    cut[0] = 0;
    cut[nlists] = n;
    for (uint32_t l = 1; l < nlists; l++)
        cut[l] = (uint32_t)(rnd() % (n + 1));
    for (uint32_t a = 1; a < nlists; a++)
        for (uint32_t b = a; b > 1 && cut[b - 1] > cut[b]; b--) {
            uint32_t t = cut[b];
            cut[b] = cut[b - 1];
            cut[b - 1] = t;
        }
    if (kind == QV_WU_SQ8) {
        u->vmin = qv_malloc(dim * sizeof(float), QV_MEM_TEST);
        u->vdiff = qv_malloc(dim * sizeof(float), QV_MEM_TEST);
        CU_ASSERT_EQUAL(qv_sq8_train(u->x, n, dim, u->vmin, u->vdiff), 0);
        u->sq8.vmin = u->vmin;
        u->sq8.vdiff = u->vdiff;
        u->wu.params = &u->sq8;
        u->wu.code_size = dim;
    }
    for (uint32_t l = 0; l < nlists; l++) {
        struct qv_wu_list *L = &u->lists[l];
        uint32_t ln = cut[l + 1] - cut[l];
        const float *lx = u->x + (size_t)cut[l] * dim;
        L->n = ln;
        L->list_no = l;
        uint64_t *ids = qv_malloc((ln + 1) * sizeof(uint64_t), QV_MEM_TEST);
        uint32_t *rows = qv_malloc((ln + 1) * sizeof(uint32_t), QV_MEM_TEST);
        for (uint32_t i = 0; i < ln; i++) {
            ids[i] = 1000000 + cut[l] + i;
            rows[i] = cut[l] + i;
        }
        L->ids = ids;
        L->rows = rows;
        if (kind == QV_WU_FLAT || kind == QV_WU_F16) {
            size_t groups = (ln + QV_BLOCK - 1) / QV_BLOCK;
            float *blk = qv_calloc(groups * QV_BLOCK * dim + 1, sizeof(float), QV_MEM_TEST);
            float *nrm = qv_malloc((ln + 1) * sizeof(float), QV_MEM_TEST);
            if (kind == QV_WU_F16)
                for (size_t i = 0; i < (size_t)ln * dim; i++)
                    u->x[(size_t)cut[l] * dim + i] =
                        qv_f16_to_f32(qv_f32_to_f16(u->x[(size_t)cut[l] * dim + i]));
            qv_block_pack(blk, 0, lx, ln, dim);
            for (uint32_t i = 0; i < ln; i++) {
                float s = 0;
                for (uint32_t d = 0; d < dim; d++)
                    s += lx[(size_t)i * dim + d] * lx[(size_t)i * dim + d];
                nrm[i] = s;
            }
            if (kind == QV_WU_F16) {
                uint16_t *hh = qv_calloc(groups * QV_BLOCK * dim + 1, sizeof(uint16_t),
                                         QV_MEM_TEST);
                for (size_t i = 0; i < groups * QV_BLOCK * dim; i++)
                    hh[i] = qv_f32_to_f16(blk[i]);
                qv_free(blk);
                L->codes = hh;
                u->code_bytes[l] = groups * QV_BLOCK * dim * 2;
            } else {
                L->codes = blk;
                u->code_bytes[l] = groups * QV_BLOCK * dim * 4;
            }
            L->norms = nrm;
        } else if (kind == QV_WU_SQ8) {
            uint8_t *c = qv_malloc((size_t)ln * dim + 1, QV_MEM_TEST);
            qv_sq8_encode(lx, ln, dim, u->vmin, u->vdiff, c, dim);
            L->codes = c;
            u->code_bytes[l] = (size_t)ln * dim;
        }
    }
    qv_free(cut);
    u->poff = qv_malloc((nq + 1) * sizeof(uint32_t), QV_MEM_TEST);
    u->plist = qv_malloc(((size_t)nq * nprobe + 1) * sizeof(uint32_t), QV_MEM_TEST);
    uint32_t p = 0;
    for (uint32_t q = 0; q < nq; q++) {
        u->poff[q] = p;
        uint32_t start = (uint32_t)(rnd() % nlists);
        for (uint32_t j = 0; j < nprobe && j < nlists; j++)
            u->plist[p++] = (start + j) % nlists;
    }
    u->poff[nq] = p;
    if (with_filter) {
        u->filter = qv_calloc((n + 63) / 64 + 1, sizeof(uint64_t), QV_MEM_TEST);
        for (uint32_t r = 0; r < n; r++)
            if (rnd() % 3)
                u->filter[r / 64] |= 1ull << (r % 64);
    }
    u->wu.kind = kind;
    u->wu.metric = metric;
    u->wu.dim = dim;
    u->wu.nq = nq;
    u->wu.queries = u->queries;
    u->wu.qnorms = u->qnorms;
    u->wu.nlists = nlists;
    u->wu.lists = u->lists;
    u->wu.probe_offsets = u->poff;
    u->wu.probe_lists = u->plist;
    u->wu.filter = u->filter;
}

static void unit_make_pq(struct unit *u, enum qv_metric metric, uint32_t dim, uint32_t m,
                         uint32_t nbits, uint32_t n, uint32_t nlists, uint32_t nq,
                         uint32_t nprobe, int with_filter, int with_ltab)
{
    unit_make(u, QV_WU_PQ, metric, dim, n, nlists, nq, nprobe, with_filter);
    CU_ASSERT_EQUAL_FATAL(qv_pq_init(&u->pq, dim, m, nbits), 0);
    u->coarse = qv_malloc((size_t)nlists * dim * sizeof(float), QV_MEM_TEST);
    for (size_t i = 0; i < (size_t)nlists * dim; i++)
        u->coarse[i] = rndf() * 0.5f;
    float *res = qv_malloc((size_t)n * dim * sizeof(float) + 4, QV_MEM_TEST);
    uint32_t row = 0;
    for (uint32_t l = 0; l < nlists; l++)
        for (uint32_t i = 0; i < u->lists[l].n; i++, row++)
            for (uint32_t d = 0; d < dim; d++)
                res[(size_t)row * dim + d] = u->x[(size_t)row * dim + d] -
                                             u->coarse[(size_t)l * dim + d];
    CU_ASSERT_EQUAL_FATAL(qv_pq_train(&u->pq, res, n, 7, 0, NULL), 0);
    const uint32_t ksub = u->pq.ksub, dsub = u->pq.dsub, cs = u->pq.code_size;
    row = 0;
    for (uint32_t l = 0; l < nlists; l++) {
        struct qv_wu_list *L = &u->lists[l];
        uint8_t *codes = qv_calloc((size_t)L->n * cs + 1, 1, QV_MEM_TEST);
        qv_pq_encode(&u->pq, res + (size_t)row * dim, L->n, codes);
        u->code_bytes[l] = (size_t)L->n * cs;
        if (nbits == 4) {
            uint8_t *fs = qv_calloc(qv_pq_fs_size(L->n, m) + 1, 1, QV_MEM_TEST);
            qv_pq_fs_pack(fs, codes, L->n, m);
            qv_free(codes);
            codes = fs;
            u->code_bytes[l] = qv_pq_fs_size(L->n, m);
        }
        L->codes = codes;
        row += L->n;
    }
    qv_free(res);
    size_t tsz = (size_t)m * ksub;
    u->qtab = qv_malloc((size_t)nq * tsz * sizeof(float), QV_MEM_TEST);
    for (uint32_t q = 0; q < nq; q++)
        for (uint32_t j = 0; j < m; j++)
            for (uint32_t c = 0; c < ksub; c++) {
                const float *y = u->pq.cents + ((size_t)j * ksub + c) * dsub;
                const float *qq = u->queries + (size_t)q * dim + (size_t)j * dsub;
                float dot = 0;
                for (uint32_t s = 0; s < dsub; s++)
                    dot += qq[s] * y[s];
                u->qtab[(size_t)q * tsz + (size_t)j * ksub + c] =
                    metric == QV_METRIC_L2 ? -2.0f * dot : -dot;
            }
    if (with_ltab && metric == QV_METRIC_L2) {
        u->ltab = qv_malloc((size_t)nlists * tsz * sizeof(float), QV_MEM_TEST);
        for (uint32_t l = 0; l < nlists; l++)
            for (uint32_t j = 0; j < m; j++)
                for (uint32_t c = 0; c < ksub; c++) {
                    const float *y = u->pq.cents + ((size_t)j * ksub + c) * dsub;
                    const float *cc = u->coarse + (size_t)l * dim + (size_t)j * dsub;
                    float yy = 0, cy = 0;
                    for (uint32_t s = 0; s < dsub; s++) {
                        yy += y[s] * y[s];
                        cy += cc[s] * y[s];
                    }
                    u->ltab[(size_t)l * tsz + (size_t)j * ksub + c] = yy + 2.0f * cy;
                }
    }
    u->pqp.pq = &u->pq;
    u->pqp.coarse = u->coarse;
    u->pqp.nlist = nlists;
    u->pqp.qtab = u->qtab;
    u->pqp.ltab = u->ltab;
    u->wu.params = &u->pqp;
    u->wu.code_size = u->pq.code_size;
}

static void unit_free(struct unit *u)
{
    for (uint32_t l = 0; l < u->wu.nlists; l++) {
        qv_free((void *)u->lists[l].codes);
        qv_free((void *)u->lists[l].norms);
        qv_free((void *)u->lists[l].ids);
        qv_free((void *)u->lists[l].rows);
    }
    qv_free(u->lists);
    qv_free(u->code_bytes);
    qv_free(u->queries);
    qv_free(u->qnorms);
    qv_free(u->poff);
    qv_free(u->plist);
    qv_free(u->filter);
    qv_free(u->x);
    qv_free(u->vmin);
    qv_free(u->vdiff);
    if (u->wu.kind == QV_WU_PQ)
        qv_pq_fini(&u->pq);
    qv_free(u->coarse);
    qv_free(u->qtab);
    qv_free(u->ltab);
}

struct heaps {
    struct qv_topk *h;
    float *d;
    uint64_t *id;
};

static void heaps_init(struct heaps *H, uint32_t nq, uint32_t k)
{
    H->h = qv_malloc(nq * sizeof *H->h, QV_MEM_TEST);
    H->d = qv_malloc((size_t)nq * k * sizeof(float), QV_MEM_TEST);
    H->id = qv_malloc((size_t)nq * k * sizeof(uint64_t), QV_MEM_TEST);
    for (uint32_t q = 0; q < nq; q++)
        qv_topk_init(&H->h[q], k, H->d + (size_t)q * k, H->id + (size_t)q * k);
}

static void heaps_fini(struct heaps *H)
{
    qv_free(H->h);
    qv_free(H->d);
    qv_free(H->id);
}

/* Rank-by-rank comparison (tolerance on distances, ids equal unless a
 * near-tie).  Returns mismatches, printing the first few. */
static int compare(const struct heaps *a, const struct heaps *b, uint32_t nq, uint32_t k,
                   float tol, const char *what)
{
    int bad = 0;
    for (uint32_t q = 0; q < nq; q++) {
        const float *da = a->d + (size_t)q * k, *db = b->d + (size_t)q * k;
        const uint64_t *ia = a->id + (size_t)q * k, *ib = b->id + (size_t)q * k;
        for (uint32_t i = 0; i < k; i++) {
            int both_inf = isinf(da[i]) && isinf(db[i]);
            float t = tol * (1.0f + fabsf(da[i]));
            if (!both_inf && !(fabsf(da[i] - db[i]) <= t)) {
                if (bad++ < 5)
                    fprintf(stderr, "\n  %s: q %u rank %u: dist %.7g vs %.7g (ids %llx %llx)",
                            what, q, i, da[i], db[i], (unsigned long long)ia[i],
                            (unsigned long long)ib[i]);
                continue;
            }
            if (ia[i] == ib[i])
                continue;
            int tie = 0;
            for (uint32_t j = 0; j < k && !tie; j++)
                tie = j != i && fabsf(da[j] - da[i]) <= t;
            tie |= (i == k - 1 && tol > 0);
            if (!tie && bad++ < 5)
                fprintf(stderr, "\n  %s: q %u rank %u: id %llx vs %llx (dist %.7g)", what, q,
                        i, (unsigned long long)ia[i], (unsigned long long)ib[i], da[i]);
        }
    }
    return bad;
}

/* ------------------------------------------------------------------ */
/* A SCAN built from a unit                                             */
/* ------------------------------------------------------------------ */

struct sscan {
    struct qv_fpga_desc d;
    struct qv_fpga_scan_table *T;   /* in the arena */
    struct qv_fpga_scan_list *L;    /* in the arena */
    uint32_t *poff, *plist, *mask_off;
    struct qv_fpga_result *res;     /* in the arena */
    uint32_t *handles;              /* blocks uploaded, to free */
    uint32_t nhandles;
    uint32_t k;
};

static void track(struct sscan *S, uint32_t h)
{
    S->handles[S->nhandles++] = h;
}

/* Upload u's lists (and PQ tables), write the table and its arrays into
 * the arena and the descriptor into S->d.  u's list ids become (handle <<
 * 32) | entry, so the CPU engine's results compare one to one.
 * probe_tables: the host makes PQ per-probe tables (as the OpenCL engine
 * does); no_qtab: leave pq_qtab absent (L2 without ltab does not need it). */
static void scan_prepare(struct host *h, struct unit *u, uint32_t k, int probe_tables,
                         int no_qtab, struct sscan *S)
{
    const struct qv_work_unit *wu = &u->wu;
    const uint32_t nl = wu->nlists, nq = wu->nq, dim = wu->dim;
    const int pq = wu->kind == QV_WU_PQ;
    memset(S, 0, sizeof *S);
    S->k = k;
    S->handles = qv_malloc((2 * nl + 4) * sizeof(uint32_t), QV_MEM_TEST);
    S->T = arena_alloc(h, sizeof *S->T);
    memset(S->T, 0, sizeof *S->T);
    S->L = arena_alloc(h, nl * sizeof *S->L + 16);
    struct qv_fpga_scan_table *T = S->T;
    uint32_t mask_words = 0;
    for (uint32_t l = 0; l < nl; l++) {
        struct qv_wu_list *W = &u->lists[l];
        struct qv_fpga_scan_list *E = &S->L[l];
        E->n = W->n;
        E->list_no = W->list_no;
        E->codes = E->norms = QV_FPGA_NONE;
        if (W->n) {
            E->codes = upload(h, W->codes, u->code_bytes[l]);
            track(S, E->codes);
            if (W->norms && wu->metric == QV_METRIC_L2) {
                E->norms = upload(h, W->norms, (size_t)W->n * 4);
                track(S, E->norms);
            }
        }
        uint64_t *ids = (uint64_t *)W->ids;
        for (uint32_t e = 0; e < W->n; e++)
            ids[e] = (uint64_t)E->codes << 32 | e;
        mask_words += (W->n + 31) / 32;
    }
    T->magic = QV_FPGA_SCAN_MAGIC;
    T->kind = (uint8_t)wu->kind;
    T->metric = (uint8_t)wu->metric;
    T->dim = dim;
    T->k = k;
    T->nq = nq;
    T->nlists = nl;
    T->nprobes = u->poff[nq];
    T->queries = (uintptr_t)arena_copy(h, u->queries, (size_t)nq * dim * 4);
    if ((wu->kind == QV_WU_FLAT || wu->kind == QV_WU_F16) && wu->metric == QV_METRIC_L2)
        T->qnorms = (uintptr_t)arena_copy(h, u->qnorms, (size_t)nq * 4);
    S->poff = arena_copy(h, u->poff, (size_t)(nq + 1) * 4);
    S->plist = arena_copy(h, u->plist, (size_t)T->nprobes * 4);
    T->probe_offsets = (uintptr_t)S->poff;
    T->probe_lists = (uintptr_t)S->plist;
    T->lists = (uintptr_t)S->L;
    switch (wu->kind) {
    case QV_WU_FLAT: T->code_size = 4 * dim; break;
    case QV_WU_F16: T->code_size = 2 * dim; break;
    case QV_WU_SQ8: T->code_size = wu->code_size; break;
    default: T->code_size = u->pq.code_size; break;
    }
    if (u->filter) {
        T->flags |= QV_FPGA_SCAN_F_FILTER;
        S->mask_off = arena_alloc(h, nl * 4 + 4);
        uint32_t *mw = arena_alloc(h, mask_words * 4 + 4);
        memset(mw, 0, mask_words * 4 + 4);
        uint32_t off = 0;
        for (uint32_t l = 0; l < nl; l++) {
            const struct qv_wu_list *W = &u->lists[l];
            if (l % 5 == 4 && W->n) {
                /* NONE = every entry eligible: keep the reference equal */
                S->mask_off[l] = QV_FPGA_NONE;
                for (uint32_t e = 0; e < W->n; e++)
                    u->filter[W->rows[e] / 64] |= 1ull << (W->rows[e] % 64);
                continue;
            }
            S->mask_off[l] = off;
            for (uint32_t e = 0; e < W->n; e++)
                if (u->filter[W->rows[e] / 64] >> (W->rows[e] % 64) & 1)
                    mw[off + e / 32] |= 1u << (e % 32);
            off += (W->n + 31) / 32;
        }
        T->mask_nwords = mask_words;
        T->mask_offsets = (uintptr_t)S->mask_off;
        T->mask_words = (uintptr_t)mw;
    }
    if (wu->kind == QV_WU_SQ8) {
        T->sq8_vmin = (uintptr_t)arena_copy(h, u->vmin, dim * 4);
        T->sq8_vdiff = (uintptr_t)arena_copy(h, u->vdiff, dim * 4);
    }
    if (pq) {
        const struct qv_pq *P = &u->pq;
        const size_t tsz = (size_t)P->m * P->ksub, mp = (P->m + 1u) & ~1u;
        T->pq_m = P->m;
        T->pq_nbits = P->nbits;
        T->pq_dsub = P->dsub;
        T->pq_ncoarse = nl;
        T->pq_codebooks = upload(h, P->cents, tsz * P->dsub * 4);
        track(S, T->pq_codebooks);
        T->pq_coarse = upload(h, u->coarse, (size_t)nl * dim * 4);
        track(S, T->pq_coarse);
        T->pq_ltab = QV_FPGA_NONE;
        if (u->ltab) {
            T->pq_ltab = upload(h, u->ltab, (size_t)nl * tsz * 4);
            track(S, T->pq_ltab);
        }
        if (!no_qtab)
            T->pq_qtab = (uintptr_t)arena_copy(h, u->qtab, (size_t)nq * tsz * 4);
        if (probe_tables) {
            const struct qv_dist_ops *ops = qv_kernels();
            const struct qv_pq_kernels *K = ops->pq;
            uint32_t np = T->nprobes;
            struct qv_fpga_pq_probe *pp = arena_alloc(h, (size_t)np * 8 + 8);
            uint8_t *lut8 = arena_alloc(h, (size_t)np * mp * 16 + 16);
            float *lut = qv_malloc(tsz * 4, QV_MEM_TEST);
            float *resid = qv_malloc(dim * 4, QV_MEM_TEST);
            uint8_t *l8 = qv_malloc(mp * 16, QV_MEM_TEST);
            T->flags |= QV_FPGA_SCAN_F_PROBE_TABLES;
            for (uint32_t q = 0; q < nq; q++)
                for (uint32_t p = u->poff[q]; p < u->poff[q + 1]; p++) {
                    const struct qv_wu_list *W = &u->lists[u->plist[p]];
                    const float *qq = u->queries + (size_t)q * dim;
                    const float *c = u->coarse + (size_t)W->list_no * dim;
                    const float *t2 = NULL, *t3 = u->qtab + (size_t)q * tsz;
                    float bias;
                    if (wu->metric == QV_METRIC_L2 && u->ltab) {
                        t2 = u->ltab + (size_t)W->list_no * tsz;
                        bias = ops->dist[QV_METRIC_L2][QV_ELEM_F32](qq, c, dim);
                    } else if (wu->metric == QV_METRIC_L2) {
                        for (uint32_t d = 0; d < dim; d++)
                            resid[d] = qq[d] - c[d];
                        K->lut_f32(resid, P->cents, P->m, P->ksub, P->dsub, QV_METRIC_L2,
                                   lut);
                        t3 = lut;
                        bias = 0;
                    } else {
                        bias = ops->dist[QV_METRIC_IP][QV_ELEM_F32](qq, c, dim);
                    }
                    pp[p].scale = 0;
                    if (P->nbits == 4) {
                        float qbias;
                        K->lut_quantize4(t2, t3, P->m, l8, &pp[p].scale, &qbias);
                        memcpy(lut8 + (size_t)p * mp * 16, l8, mp * 16);
                        bias += qbias;
                    }
                    pp[p].bias = bias;
                }
            T->pq_probe_params = (uintptr_t)pp;
            if (P->nbits == 4)
                T->pq_probe_lut8 = (uintptr_t)lut8;
            qv_free(lut);
            qv_free(resid);
            qv_free(l8);
        }
    }
    size_t rb = (size_t)nq * k * sizeof(struct qv_fpga_result);
    S->res = arena_alloc(h, rb);
    memset(S->res, 0xAB, rb);
    memset(&S->d, 0, sizeof S->d);
    S->d.opcode = QV_FPGA_OP_SCAN;
    S->d.cookie = 0x5CA9;
    S->d.op.scan.kind = (uint8_t)wu->kind;
    S->d.op.scan.metric = (uint8_t)wu->metric;
    S->d.op.scan.dim = dim;
    S->d.op.scan.k = k;
    S->d.op.scan.nq = nq;
    S->d.op.scan.table = (uintptr_t)T;
    S->d.op.scan.results = (uintptr_t)S->res;
    S->d.op.scan.results_len = rb;
    S->d.op.scan.table_len = sizeof *T;
}

static void scan_release(struct host *h, struct sscan *S)
{
    for (uint32_t i = 0; i < S->nhandles; i++) {
        struct qv_fpga_cpl c = free_handle(h, S->handles[i]);
        CU_ASSERT_EQUAL(c.status, QV_FPGA_ST_OK);
    }
    qv_free(S->handles);
    h->arena_used = 0;
}

/* Whether the result buffer is untouched (0xAB everywhere). */
static int results_untouched(const struct sscan *S)
{
    const uint8_t *b = (const uint8_t *)S->res;
    for (size_t i = 0; i < (size_t)S->d.op.scan.nq * S->k * 16; i++)
        if (b[i] != 0xAB)
            return 0;
    return 1;
}

/* Run u on the card and on the CPU engine; compare. */
static void check_scan(struct host *h, struct unit *u, uint32_t k, float tol, int probe_tables,
                       int no_qtab, const char *what)
{
    struct sscan S;
    scan_prepare(h, u, k, probe_tables, no_qtab, &S);
    struct qv_fpga_cpl c = run(h, &S.d);
    if (c.status != QV_FPGA_ST_OK)
        fprintf(stderr, "\n  %s: status %u", what, c.status);
    CU_ASSERT_EQUAL(c.status, QV_FPGA_ST_OK);
    CU_ASSERT_EQUAL(c.result, u->wu.nq * k);
    CU_ASSERT(c.device_ns >= 5000);
    struct heaps ref, card;
    heaps_init(&ref, u->wu.nq, k);
    u->wu.heaps = ref.h;
    CU_ASSERT_EQUAL(qv_engine_run(cpu, &u->wu), 0);
    for (uint32_t q = 0; q < u->wu.nq; q++)
        qv_topk_sort(&ref.h[q]);
    heaps_init(&card, u->wu.nq, k);
    int order_bad = 0;
    for (size_t i = 0; i < (size_t)u->wu.nq * k; i++) {
        const struct qv_fpga_result *r = &S.res[i];
        card.d[i] = r->dist;
        card.id[i] = r->handle == QV_FPGA_NONE ? QV_ID_NONE
                                               : (uint64_t)r->handle << 32 | r->entry;
        if (r->handle == QV_FPGA_NONE && !(isinf(r->dist) && r->entry == QV_FPGA_NONE))
            order_bad++;
        if (i % k && card.d[i] < card.d[i - 1])
            order_bad++;
    }
    CU_ASSERT_EQUAL(order_bad, 0);
    if (c.status == QV_FPGA_ST_OK) {
        int bad = compare(&ref, &card, u->wu.nq, k, tol, what);
        CU_ASSERT_EQUAL(bad, 0);
    }
    heaps_fini(&ref);
    heaps_fini(&card);
    scan_release(h, &S);
}

/* ------------------------------------------------------------------ */
/* Tests                                                                */
/* ------------------------------------------------------------------ */

static void test_identity(void)
{
    struct host h;
    host_open(&h, NULL);
    CU_ASSERT_EQUAL(rd32(&h, QV_FPGA_REG_MAGIC), QV_FPGA_MAGIC);
    CU_ASSERT_EQUAL(rd32(&h, QV_FPGA_REG_VERSION) >> 16, QV_FPGA_VERSION_MAJOR);
    CU_ASSERT_EQUAL(rd32(&h, QV_FPGA_REG_CAPS_OPS), 0x1Eu);
    uint32_t caps = rd32(&h, QV_FPGA_REG_CAPS_SCAN);
    CU_ASSERT(caps & QV_FPGA_CAP_SIMULATED);
    CU_ASSERT((caps & 0x1FF) == 0x1FF);
    CU_ASSERT_EQUAL(rd32(&h, QV_FPGA_REG_NUM_QPS), 4);
    CU_ASSERT_EQUAL(rd32(&h, QV_FPGA_REG_MAX_DIM), 4096);
    CU_ASSERT_EQUAL(rd32(&h, QV_FPGA_REG_MAX_K), 256);
    CU_ASSERT_EQUAL(rd32(&h, QV_FPGA_REG_MAX_NQ), 4096);
    CU_ASSERT_EQUAL(rd64(&h, QV_FPGA_REG_HBM_BYTES), 16ull << 30);
    CU_ASSERT_EQUAL(rd32(&h, QV_FPGA_REG_MAX_PQ_M), 256);
    CU_ASSERT_EQUAL(rd32(&h, QV_FPGA_REG_NUM_REGIONS), 64);
    CU_ASSERT_EQUAL(rd32(&h, QV_FPGA_REG_CLOCK_MHZ), 300);
    CU_ASSERT_EQUAL(rd32(&h, QV_FPGA_REG_LANES), 2048);
    CU_ASSERT_EQUAL(rd32(&h, QV_FPGA_REG_HBM_MBPS), 460000);
    CU_ASSERT_EQUAL(rd32(&h, QV_FPGA_REG_PCIE_MBPS), 12000);
    CU_ASSERT_EQUAL(rd32(&h, QV_FPGA_REG_LAUNCH_NS), 5000);
    CU_ASSERT_EQUAL(rd32(&h, QV_FPGA_REG_QTILE), 256);
    CU_ASSERT_EQUAL(rd32(&h, QV_FPGA_REG_ERRLOG_SIZE), 32);
    CU_ASSERT_EQUAL(rd32(&h, QV_FPGA_REG_THROTTLE_FACTOR), 4);
    CU_ASSERT_EQUAL(rd32(&h, QV_FPGA_REG_SIM_MODE), QV_FPGA_SIM_THREAD);
    CU_ASSERT_EQUAL((int32_t)rd32(&h, QV_FPGA_REG_TEMP_MC), 45000);
    CU_ASSERT(rd32(&h, QV_FPGA_REG_STATUS) & QV_FPGA_STATUS_READY);
    CU_ASSERT_EQUAL(rd32(&h, QV_FPGA_REG_INTR_STATUS), 0);
    /* the heartbeat and the clock move */
    uint64_t hb = rd64(&h, QV_FPGA_REG_HEARTBEAT), ck = rd64(&h, QV_FPGA_REG_CLOCK_NS);
    sleep_ms(5);
    CU_ASSERT(rd64(&h, QV_FPGA_REG_HEARTBEAT) > hb);
    CU_ASSERT(rd64(&h, QV_FPGA_REG_CLOCK_NS) > ck);
    host_close(&h);

    /* bad options: NULL + EINVAL naming the field */
    struct qv_fpga_sim_opts o;
    qv_fpga_sim_opts_default(&o);
    o.tick_us = 0;
    CU_ASSERT_PTR_NULL(qv_fpga_sim_create(&o, QV_FPGA_SIM_THREAD));
    CU_ASSERT_EQUAL(qv_errno, QV_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "tick_us"));
    qv_fpga_sim_opts_default(&o);
    o.name = "a/b";
    CU_ASSERT_PTR_NULL(qv_fpga_sim_create(&o, QV_FPGA_SIM_PROCESS));
    CU_ASSERT_EQUAL(qv_errno, QV_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "name"));
    qv_fpga_sim_opts_default(&o);
    o.lanes = 0;
    CU_ASSERT_PTR_NULL(qv_fpga_sim_create(&o, QV_FPGA_SIM_THREAD));
    CU_ASSERT_PTR_NOT_NULL(strstr(qv_errmsg(), "lanes"));
    CU_ASSERT_PTR_NULL(qv_fpga_sim_create(NULL, (enum qv_fpga_sim_mode)7));
    CU_ASSERT_EQUAL(qv_errno, QV_EINVAL);
    qv_fpga_sim_free(NULL);
}

/* [fpga] keys fill the options; keys left out keep the defaults. */
static void test_config(void)
{
    static const char text[] = "[fpga]\nname = cfgcard\nhbm_bytes = 2G\nclock_mhz = 250\n"
                               "lanes = 1024\nhbm_mbps = 400000\npcie_mbps = 24000\n"
                               "launch_ns = 3000\nsim_opencl = false\nsim_pace = true\n";
    struct qv_config *cfg = qv_config_parse(text, "test.conf");
    if (!cfg) {
        printf("\n  SKIP: the [fpga] schema lacks a key: %s ", qv_errmsg());
        return;
    }
    struct qv_fpga_sim_opts o;
    qv_fpga_sim_opts_default(&o);
    CU_ASSERT_EQUAL(qv_fpga_sim_opts_from_config(cfg, &o), 0);
    CU_ASSERT_STRING_EQUAL(o.name, "cfgcard");
    CU_ASSERT_EQUAL(o.hbm_bytes, 2ull << 30);
    CU_ASSERT_EQUAL(o.clock_mhz, 250);
    CU_ASSERT_EQUAL(o.lanes, 1024);
    CU_ASSERT_EQUAL(o.hbm_mbps, 400000);
    CU_ASSERT_EQUAL(o.pcie_mbps, 24000);
    CU_ASSERT_EQUAL(o.launch_ns, 3000);
    CU_ASSERT_EQUAL(o.use_opencl, 0);
    CU_ASSERT_EQUAL(o.pace, 1);
    CU_ASSERT_EQUAL(o.qtile, 256);          /* not a key: the default stays */
    CU_ASSERT_EQUAL(o.tick_us, 1000);
    /* the card takes them: registers mirror the options */
    struct host h;
    host_open(&h, &o);
    CU_ASSERT_EQUAL(rd64(&h, QV_FPGA_REG_HBM_BYTES), 2ull << 30);
    CU_ASSERT_EQUAL(rd32(&h, QV_FPGA_REG_CLOCK_MHZ), 250);
    CU_ASSERT_EQUAL(rd32(&h, QV_FPGA_REG_LAUNCH_NS), 3000);
    CU_ASSERT_EQUAL(rd32(&h, QV_FPGA_REG_SIM_PACE), 1);
    host_close(&h);
    qv_config_free(cfg);
    /* defaults: the schema's defaults are the U55C's */
    cfg = qv_config_defaults();
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    struct qv_fpga_sim_opts d1, d2;
    qv_fpga_sim_opts_default(&d1);
    d2 = d1;
    qv_fpga_sim_opts_from_config(cfg, &d2);
    CU_ASSERT_STRING_EQUAL(d1.name, d2.name);
    CU_ASSERT_EQUAL(d1.hbm_bytes, d2.hbm_bytes);
    CU_ASSERT_EQUAL(d1.clock_mhz, d2.clock_mhz);
    CU_ASSERT_EQUAL(d1.lanes, d2.lanes);
    CU_ASSERT_EQUAL(d1.hbm_mbps, d2.hbm_mbps);
    CU_ASSERT_EQUAL(d1.pcie_mbps, d2.pcie_mbps);
    CU_ASSERT_EQUAL(d1.launch_ns, d2.launch_ns);
    CU_ASSERT_EQUAL(d1.use_opencl, d2.use_opencl);
    CU_ASSERT_EQUAL(d1.pace, d2.pace);
    qv_config_free(cfg);
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static void test_nop(void)
{
    struct host h;
    host_open(&h, NULL);
    enum { N = 1000 };
    int64_t *t = qv_malloc(N * sizeof *t, QV_MEM_TEST);
    uint64_t comp0 = rd64(&h, QV_FPGA_REG_COMPLETIONS);
    for (int i = 0; i < N; i++) {
        struct qv_fpga_desc d = nop_desc();
        d.cookie = (uint64_t)i * 7919;
        int64_t t0 = qv_now_ns();
        struct qv_fpga_cpl c = run(&h, &d);
        t[i] = qv_now_ns() - t0;
        if (c.status != QV_FPGA_ST_OK || c.device_ns != 5000 || c.qp != 0 || c.result != 0) {
            CU_FAIL("NOP completion");
            break;
        }
    }
    qsort(t, N, sizeof *t, cmp_i64);
    printf("\n  NOP round trip: median %.1f us, p99 %.1f us (%d NOPs, thread mode) ",
           t[N / 2] / 1e3, t[N * 99 / 100] / 1e3, N);
    CU_ASSERT_EQUAL(rd64(&h, QV_FPGA_REG_COMPLETIONS) - comp0, N);
    CU_ASSERT_EQUAL(rd64(&h, QV_FPGA_REG_DEVICE_NS), (uint64_t)N * 5000);
    CU_ASSERT_EQUAL(rd64(&h, QV_FPGA_QP_REG(0, QV_FPGA_QP_DEVICE_NS)), (uint64_t)N * 5000);
    CU_ASSERT_EQUAL(rd32(&h, QV_FPGA_QP_REG(0, QV_FPGA_QP_SQ_HEAD)), N);
    CU_ASSERT_EQUAL(rd32(&h, QV_FPGA_QP_REG(0, QV_FPGA_QP_CQ_TAIL)), N);
    qv_free(t);

    /* several descriptors behind one doorbell complete in order */
    uint32_t first = h.sq_tail;
    for (int i = 0; i < 5; i++) {
        struct qv_fpga_desc d = nop_desc();
        d.cookie = 100 + (uint64_t)i;
        h.sq[h.sq_tail & (RING - 1)] = d;
        h.sq[h.sq_tail & (RING - 1)].seq = h.sq_tail;
        h.sq_tail++;
    }
    wr32(&h, QV_FPGA_QP_REG(0, QV_FPGA_QP_SQ_TAIL), h.sq_tail);
    for (uint32_t i = 0; i < 5; i++) {
        struct qv_fpga_cpl c;
        CU_ASSERT_EQUAL(wait_cpl(&h, first + i, 5000, &c), 0);
        CU_ASSERT_EQUAL(c.cookie, 100 + i);
    }

    /* CQ full: with CQ_HEAD held back the card waits (CQ_FULL), then goes on */
    first = h.sq_tail;
    for (uint32_t i = 0; i < RING + 1; i++) {
        struct qv_fpga_desc d = nop_desc();
        h.sq[h.sq_tail & (RING - 1)] = d;
        h.sq[h.sq_tail & (RING - 1)].seq = h.sq_tail;
        h.sq_tail++;
        if (i == RING - 1) {
            wr32(&h, QV_FPGA_QP_REG(0, QV_FPGA_QP_SQ_TAIL), h.sq_tail);
            CU_ASSERT_EQUAL(wait_reg(&h, QV_FPGA_QP_REG(0, QV_FPGA_QP_CQ_TAIL), ~0u,
                                     first + RING, 5000), 0);
        }
    }
    /* the 65th descriptor cannot be consumed until a slot is freed: but
     * the SQ has only 64 slots, so submit it once the first is consumed */
    wr32(&h, QV_FPGA_QP_REG(0, QV_FPGA_QP_SQ_TAIL), h.sq_tail);
    CU_ASSERT_EQUAL(wait_reg(&h, QV_FPGA_QP_REG(0, QV_FPGA_QP_STATUS), QV_FPGA_QP_ST_CQ_FULL,
                             QV_FPGA_QP_ST_CQ_FULL, 2000), 0);
    sleep_ms(2);
    CU_ASSERT_EQUAL(rd32(&h, QV_FPGA_QP_REG(0, QV_FPGA_QP_CQ_TAIL)), first + RING);
    for (uint32_t i = 0; i < RING + 1; i++) {
        struct qv_fpga_cpl c;
        CU_ASSERT_EQUAL(wait_cpl(&h, first + i, 5000, &c), 0);
        CU_ASSERT_EQUAL(c.status, QV_FPGA_ST_OK);
    }
    CU_ASSERT_EQUAL(rd32(&h, QV_FPGA_QP_REG(0, QV_FPGA_QP_STATUS)) & QV_FPGA_QP_ST_CQ_FULL, 0);

    /* doorbell overrun stops the QP (CONFIG_ERROR BAD_PARAM, EV_DOORBELL) */
    uint32_t w = rd32(&h, QV_FPGA_REG_ERRLOG_WIDX);
    wr32(&h, QV_FPGA_QP_REG(0, QV_FPGA_QP_SQ_TAIL), h.sq_tail + RING + 1);
    CU_ASSERT_EQUAL(wait_reg(&h, QV_FPGA_QP_REG(0, QV_FPGA_QP_STATUS),
                             QV_FPGA_QP_ST_CONFIG_ERROR, QV_FPGA_QP_ST_CONFIG_ERROR, 2000), 0);
    CU_ASSERT_EQUAL(QV_FPGA_QP_ST_CODE(rd32(&h, QV_FPGA_QP_REG(0, QV_FPGA_QP_STATUS))),
                    QV_FPGA_ST_BAD_PARAM);
    CU_ASSERT(errlog_has(&h, w, QV_FPGA_EV_DOORBELL, NULL));
    /* disable + re-enable recovers; a bad ring size is refused */
    wr32(&h, QV_FPGA_QP_REG(0, QV_FPGA_QP_CTRL), 0);
    CU_ASSERT_EQUAL(wait_reg(&h, QV_FPGA_QP_REG(0, QV_FPGA_QP_STATUS), ~0u, 0, 2000), 0);
    wr32(&h, QV_FPGA_QP_REG(0, QV_FPGA_QP_SQ_ENTRIES), 48);
    wr32(&h, QV_FPGA_QP_REG(0, QV_FPGA_QP_CTRL), QV_FPGA_QP_CTRL_ENABLE);
    CU_ASSERT_EQUAL(wait_reg(&h, QV_FPGA_QP_REG(0, QV_FPGA_QP_STATUS),
                             QV_FPGA_QP_ST_CONFIG_ERROR, QV_FPGA_QP_ST_CONFIG_ERROR, 2000), 0);
    CU_ASSERT(errlog_has(&h, w, QV_FPGA_EV_QP_CONFIG, NULL));
    wr32(&h, QV_FPGA_QP_REG(0, QV_FPGA_QP_CTRL), 0);
    CU_ASSERT_EQUAL(wait_reg(&h, QV_FPGA_QP_REG(0, QV_FPGA_QP_STATUS), ~0u, 0, 2000), 0);
    wr32(&h, QV_FPGA_REG_CTRL, 0);
    CU_ASSERT_EQUAL(host_setup(&h), 0);
    expect_nop_ok(&h);
    host_close(&h);
}

static void test_scan_flat(void)
{
    struct host h;
    host_open(&h, NULL);
    static const uint32_t dims[] = { 1, 17, 128 };
    static const uint32_t ks[] = { 1, 10, 100 };
    static const uint32_t nqs[] = { 1, 37, 300 };
    for (int i = 0; i < 9; i++) {
        struct unit u;
        char what[96];
        uint32_t dim = dims[i % 3], k = ks[(i / 3) % 3], nq = nqs[(i + i / 3) % 3];
        int metric = i % 2, filter = i % 4 == 1 || i == 8;
        uint32_t nlists = i % 3 == 0 ? 1 : 7, nprobe = nlists == 1 ? 1 : 3;
        unit_make(&u, QV_WU_FLAT, metric, dim, dim > 100 ? 900 : 2000, nlists, nq, nprobe,
                  filter);
        snprintf(what, sizeof what, "flat %s dim %u k %u nq %u lists %u%s",
                 metric ? "ip" : "l2", dim, k, nq, nlists, filter ? " filter" : "");
        check_scan(&h, &u, k, 1e-5f, 0, 0, what);
        unit_free(&u);
    }
    /* k larger than what the lists hold: {+inf, NONE, NONE} slots */
    struct unit u;
    unit_make(&u, QV_WU_FLAT, QV_METRIC_L2, 8, 20, 2, 3, 1, 0);
    check_scan(&h, &u, 256, 1e-5f, 0, 0, "flat k 256 > n");
    unit_free(&u);
    CU_ASSERT_EQUAL(rd32(&h, QV_FPGA_REG_RESIDENT_BLOCKS), 0);
    CU_ASSERT_EQUAL(rd64(&h, QV_FPGA_REG_HBM_USED), 0);
    host_close(&h);
}

static void test_scan_timing(void)
{
    /* the worked example of docs/REGISTERS.md, scaled: FLAT L2, one list
     * of 1600 x 128, k 10, nq 1 */
    struct host h;
    host_open(&h, NULL);
    struct unit u;
    unit_make(&u, QV_WU_FLAT, QV_METRIC_L2, 128, 1600, 1, 1, 1, 0);
    struct sscan S;
    scan_prepare(&h, &u, 10, 0, 0, &S);
    uint64_t rd0 = rd64(&h, QV_FPGA_REG_DMA_READ_BYTES);
    struct qv_fpga_cpl c = run(&h, &S.d);
    CU_ASSERT_EQUAL(c.status, QV_FPGA_ST_OK);
    double hbm = 1600.0 * 128 * 4 + 1600 * 4, ops = 1600.0 * 128;
    double pcie = 64 + 256 + 512 + 4 + 8 + 4 + 16 + 160 + 32;
    double hbm_ns = hbm * 1000 / 460000, cmp_ns = ops * 1000 / (2048.0 * 300);
    uint64_t want = (uint64_t)floor(5000 + (hbm_ns > cmp_ns ? hbm_ns : cmp_ns) +
                                    pcie * 1000 / 12000);
    CU_ASSERT_EQUAL(c.device_ns, want);
    CU_ASSERT_EQUAL(rd64(&h, QV_FPGA_REG_DMA_READ_BYTES) - rd0, 64 + 256 + 512 + 4 + 8 + 4 + 16);
    /* UPLOAD: launch + (64 + len + 32) bytes over PCIe */
    static float buf[3000];
    struct qv_fpga_cpl cu = upload_raw(&h, buf, sizeof buf);
    CU_ASSERT_EQUAL(cu.status, QV_FPGA_ST_OK);
    CU_ASSERT_EQUAL(cu.device_ns, (uint64_t)floor(5000 + (64 + 12000 + 32) * 1000.0 / 12000));
    track(&S, cu.result);
    scan_release(&h, &S);
    unit_free(&u);
    host_close(&h);
}

static void test_scan_sq8_f16(void)
{
    struct host h;
    host_open(&h, NULL);
    static const uint32_t dims[] = { 1, 17, 128 };
    for (int i = 0; i < 6; i++) {
        struct unit u;
        char what[96];
        enum qv_wu_kind kind = i < 3 ? QV_WU_SQ8 : QV_WU_F16;
        uint32_t dim = dims[i % 3], k = i % 2 ? 10 : 100, nq = 1 + (uint32_t)(rnd() % 60);
        int metric = (i / 2) % 2, filter = i == 1 || i == 4;
        unit_make(&u, kind, metric, dim, 1500, i % 3 ? 5 : 1, nq, i % 3 ? 2 : 1, filter);
        snprintf(what, sizeof what, "%s %s dim %u k %u nq %u%s",
                 kind == QV_WU_SQ8 ? "sq8" : "f16", metric ? "ip" : "l2", dim, k, nq,
                 filter ? " filter" : "");
        check_scan(&h, &u, k, 1e-5f, 0, 0, what);
        unit_free(&u);
    }
    host_close(&h);
}

static void test_scan_pq(void)
{
    struct host h;
    host_open(&h, NULL);
    static const struct {
        int metric, nbits, ltab, pt, no_qtab, filter;
        const char *what;
    } cases[] = {
        { QV_METRIC_L2, 8, 1, 0, 0, 0, "pq8 l2 ltab" },
        { QV_METRIC_L2, 8, 0, 0, 0, 1, "pq8 l2 no ltab, filter" },
        { QV_METRIC_L2, 8, 0, 0, 1, 0, "pq8 l2 no ltab, no qtab (card's scanner)" },
        { QV_METRIC_IP, 8, 0, 0, 0, 0, "pq8 ip" },
        { QV_METRIC_L2, 4, 1, 0, 0, 1, "pq4 l2 ltab, filter" },
        { QV_METRIC_IP, 4, 0, 0, 0, 0, "pq4 ip" },
        { QV_METRIC_L2, 4, 1, 1, 0, 1, "pq4 l2 probe tables, filter" },
        { QV_METRIC_IP, 4, 0, 1, 0, 0, "pq4 ip probe tables" },
        { QV_METRIC_L2, 8, 1, 1, 0, 0, "pq8 l2 ltab probe tables" },
        { QV_METRIC_L2, 4, 0, 1, 1, 0, "pq4 l2 probe tables, nothing else" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct unit u;
        uint32_t m = cases[i].nbits == 8 ? 8 : 7;
        unit_make_pq(&u, cases[i].metric, m * 2, m, cases[i].nbits, 1200, 6,
                     1 + (uint32_t)(rnd() % 40), 3, cases[i].filter, cases[i].ltab);
        check_scan(&h, &u, i % 2 ? 10 : 50, cases[i].nbits == 4 ? 0 : 1e-5f, cases[i].pt,
                   cases[i].no_qtab, cases[i].what);
        unit_free(&u);
    }
    host_close(&h);
}

/* One malformed SCAN: mutate a valid one, expect status and detail. */
typedef void (*mutate_fn)(struct sscan *S);

static void m_k0(struct sscan *S) { S->d.op.scan.k = 0; }
static void m_k257(struct sscan *S) { S->d.op.scan.k = 257; }
static void m_nq0(struct sscan *S) { S->d.op.scan.nq = 0; }
static void m_kind(struct sscan *S) { S->d.op.scan.kind = 9; }
static void m_rsvd(struct sscan *S) { S->d.op.scan.rsvd1 = 1; }
static void m_flags(struct sscan *S) { S->d.flags = 1; }
static void m_dim(struct sscan *S) { S->T->dim++; }
static void m_magic(struct sscan *S) { S->T->magic ^= 1; }
static void m_trsvd(struct sscan *S) { S->T->rsvd2[3] = 1; }
static void m_plist(struct sscan *S) { S->plist[2] = S->T->nlists; }
static void m_poff(struct sscan *S) { S->poff[2] = S->poff[1] - 1; S->poff[1] += 5; }
static void m_poff0(struct sscan *S) { S->poff[0] = 1; }
static void m_nprobes(struct sscan *S) { S->T->nprobes--; }
static void m_reslen(struct sscan *S) { S->d.op.scan.results_len -= 16; }
static void m_tablen(struct sscan *S) { S->d.op.scan.table_len = 128; }
static void m_table_addr(struct sscan *S) { S->d.op.scan.table = 0x1000; }
static void m_table_align(struct sscan *S) { S->d.op.scan.table += 4; }
static void m_res_align(struct sscan *S) { S->d.op.scan.results += 8; }
static void m_queries(struct sscan *S) { S->T->queries = 0; }
static void m_qalign(struct sscan *S) { S->T->queries += 2; }
static void m_handle(struct sscan *S) { S->L[1].codes = 0xBADBAD; }
static void m_norms(struct sscan *S) { S->L[0].norms = QV_FPGA_NONE; }
static void m_codes_none(struct sscan *S) { S->L[0].codes = QV_FPGA_NONE; }
static void m_nbig(struct sscan *S) { S->L[0].n += 17; }
static void m_mask(struct sscan *S) { S->mask_off[1] = S->T->mask_nwords + 1; }
static void m_code_size(struct sscan *S) { S->T->code_size++; }
static void m_kind_tab(struct sscan *S) { S->T->kind = QV_FPGA_KIND_SQ8; }

static void test_malformed(void)
{
    struct host h;
    host_open(&h, NULL);
    struct qv_fpga_desc d;
    struct qv_fpga_cpl c;
    uint64_t errs0 = rd64(&h, QV_FPGA_REG_ERRORS);
    uint32_t nerr = 0;
#define EXPECT(st, det) do { \
        CU_ASSERT_EQUAL(c.status, (st)); \
        CU_ASSERT_EQUAL(c.device_ns, 0); \
        struct qv_fpga_errlog_entry e_ = errlog_last(&h); \
        CU_ASSERT_EQUAL(e_.code, (st)); \
        CU_ASSERT_EQUAL(e_.detail, (uint64_t)(det)); \
        CU_ASSERT_EQUAL(e_.qp, 0); \
        CU_ASSERT_EQUAL(e_.sq_index, h.sq_tail - 1); \
        nerr++; \
        expect_nop_ok(&h); \
    } while (0)

    /* opcodes */
    memset(&d, 0, sizeof d);
    c = run(&h, &d);
    EXPECT(QV_FPGA_ST_BAD_OPCODE, 0);
    d.opcode = 9;
    c = run(&h, &d);
    EXPECT(QV_FPGA_ST_BAD_OPCODE, 9);
    /* reserved and flags */
    d = nop_desc();
    d.op.raw[5] = 1;
    c = run(&h, &d);
    EXPECT(QV_FPGA_ST_BAD_PARAM, QV_FPGA_DETAIL(QV_FPGA_DETAIL_IN_DESC, 0x10, 0));
    d = nop_desc();
    d.rsvd = 2;
    c = run(&h, &d);
    EXPECT(QV_FPGA_ST_BAD_PARAM, QV_FPGA_DETAIL(QV_FPGA_DETAIL_IN_DESC, 0x02, 0));
    /* UPLOAD: length, address outside every region, reserved */
    static uint8_t outside[256];
    memset(&d, 0, sizeof d);
    d.opcode = QV_FPGA_OP_UPLOAD;
    d.op.upload.addr = (uintptr_t)h.arena;
    d.op.upload.len = 0;
    c = run(&h, &d);
    EXPECT(QV_FPGA_ST_BAD_LENGTH, QV_FPGA_DETAIL(QV_FPGA_DETAIL_IN_DESC, 0x18, 0));
    d.op.upload.len = (16ull << 30) + 1;
    c = run(&h, &d);
    EXPECT(QV_FPGA_ST_BAD_LENGTH, QV_FPGA_DETAIL(QV_FPGA_DETAIL_IN_DESC, 0x18, 0));
    d.op.upload.addr = (uintptr_t)outside;
    d.op.upload.len = sizeof outside;
    c = run(&h, &d);
    EXPECT(QV_FPGA_ST_BAD_ADDRESS, (uintptr_t)outside);
    d.op.upload.addr = (uintptr_t)h.arena + ARENA_BYTES - 8;   /* crosses the end */
    d.op.upload.len = 16;
    c = run(&h, &d);
    EXPECT(QV_FPGA_ST_BAD_ADDRESS, (uintptr_t)h.arena + ARENA_BYTES - 8);
    d.op.upload.addr = UINT64_MAX - 4;                          /* addr + len overflows */
    c = run(&h, &d);
    EXPECT(QV_FPGA_ST_BAD_ADDRESS, UINT64_MAX - 4);
    d.op.upload.addr = (uintptr_t)h.arena;
    d.op.upload.rsvd[2] = 1;
    c = run(&h, &d);
    EXPECT(QV_FPGA_ST_BAD_PARAM, QV_FPGA_DETAIL(QV_FPGA_DETAIL_IN_DESC, 0x20, 0));
    CU_ASSERT_EQUAL(rd32(&h, QV_FPGA_REG_RESIDENT_BLOCKS), 0);
    /* FREE: unknown handle, NONE, twice */
    c = free_handle(&h, 12345);
    CU_ASSERT_EQUAL(c.result, 12345);
    EXPECT(QV_FPGA_ST_BAD_HANDLE, 12345);
    c = free_handle(&h, QV_FPGA_NONE);
    EXPECT(QV_FPGA_ST_BAD_HANDLE, QV_FPGA_NONE);
    static const float blk[64];
    uint32_t hd = upload(&h, blk, sizeof blk);
    c = free_handle(&h, hd);
    CU_ASSERT_EQUAL(c.status, QV_FPGA_ST_OK);
    c = free_handle(&h, hd);
    EXPECT(QV_FPGA_ST_BAD_HANDLE, hd);
    h.arena_used = 0;

    /* SCAN: each mutation of a valid FLAT L2 unit with a filter */
    static const struct {
        mutate_fn f;
        uint16_t st;
        uint64_t detail;        /* UINT64_MAX: the table address / computed below */
        const char *what;
    } cases[] = {
        { m_k0, QV_FPGA_ST_BAD_PARAM, QV_FPGA_DETAIL(0, 0x18, 0), "k = 0" },
        { m_k257, QV_FPGA_ST_BAD_PARAM, QV_FPGA_DETAIL(0, 0x18, 0), "k = 257" },
        { m_nq0, QV_FPGA_ST_BAD_PARAM, QV_FPGA_DETAIL(0, 0x1C, 0), "nq = 0" },
        { m_kind, QV_FPGA_ST_BAD_PARAM, QV_FPGA_DETAIL(0, 0x10, 0), "kind 9" },
        { m_rsvd, QV_FPGA_ST_BAD_PARAM, QV_FPGA_DETAIL(0, 0x3C, 0), "reserved" },
        { m_flags, QV_FPGA_ST_BAD_PARAM, QV_FPGA_DETAIL(0, 0x01, 0), "flags" },
        { m_table_addr, QV_FPGA_ST_BAD_ADDRESS, 0x1000, "table outside the ATU" },
        { m_table_align, QV_FPGA_ST_BAD_ADDRESS, 1, "table misaligned" },
        { m_res_align, QV_FPGA_ST_BAD_ADDRESS, 2, "results misaligned" },
        { m_reslen, QV_FPGA_ST_BAD_LENGTH, QV_FPGA_DETAIL(0, 0x30, 0), "results_len" },
        { m_tablen, QV_FPGA_ST_BAD_LENGTH, QV_FPGA_DETAIL(0, 0x38, 0), "table_len" },
        { m_magic, QV_FPGA_ST_BAD_PARAM, QV_FPGA_DETAIL(QV_FPGA_DETAIL_IN_TABLE, 0, 0),
          "table magic" },
        { m_kind_tab, QV_FPGA_ST_BAD_PARAM, QV_FPGA_DETAIL(QV_FPGA_DETAIL_IN_TABLE, 4, 0),
          "kind table vs descriptor" },
        { m_dim, QV_FPGA_ST_BAD_PARAM, QV_FPGA_DETAIL(QV_FPGA_DETAIL_IN_TABLE, 8, 0),
          "dim table vs descriptor" },
        { m_trsvd, QV_FPGA_ST_BAD_PARAM, QV_FPGA_DETAIL(QV_FPGA_DETAIL_IN_TABLE, 0xC0, 0),
          "table reserved" },
        { m_code_size, QV_FPGA_ST_BAD_PARAM, QV_FPGA_DETAIL(QV_FPGA_DETAIL_IN_TABLE, 0x1C, 0),
          "code_size" },
        { m_queries, QV_FPGA_ST_BAD_ADDRESS, 0, "queries absent" },
        { m_qalign, QV_FPGA_ST_BAD_ADDRESS, 3, "queries misaligned" },
        { m_poff0, QV_FPGA_ST_BAD_PARAM, QV_FPGA_DETAIL(QV_FPGA_DETAIL_IN_ARRAY, 0x38, 0),
          "probe_offsets[0] != 0" },
        { m_poff, QV_FPGA_ST_BAD_PARAM, QV_FPGA_DETAIL(QV_FPGA_DETAIL_IN_ARRAY, 0x38, 2),
          "probe_offsets decreasing" },
        { m_nprobes, QV_FPGA_ST_BAD_PARAM, QV_FPGA_DETAIL(QV_FPGA_DETAIL_IN_ARRAY, 0x38, 4),
          "nprobes != probe_offsets[nq]" },
        { m_plist, QV_FPGA_ST_BAD_PARAM, QV_FPGA_DETAIL(QV_FPGA_DETAIL_IN_ARRAY, 0x40, 2),
          "probe_lists out of range" },
        { m_mask, QV_FPGA_ST_BAD_PARAM, QV_FPGA_DETAIL(QV_FPGA_DETAIL_IN_ARRAY, 0x50, 1),
          "mask offset past mask_nwords" },
        { m_handle, QV_FPGA_ST_BAD_HANDLE, 0xBADBAD, "unknown codes handle" },
        { m_codes_none, QV_FPGA_ST_BAD_HANDLE, QV_FPGA_NONE, "codes NONE with n > 0" },
        { m_norms, QV_FPGA_ST_BAD_HANDLE, QV_FPGA_NONE, "norms missing (L2)" },
        { m_nbig, QV_FPGA_ST_BAD_LENGTH, QV_FPGA_DETAIL(QV_FPGA_DETAIL_IN_ARRAY, 0x48, 0),
          "list n larger than its block" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct unit u;
        for (;;) {      /* lists 0 and 1 non-empty, so every mutation bites */
            unit_make(&u, QV_WU_FLAT, QV_METRIC_L2, 16, 300, 3, 4, 2, 1);
            if (u.lists[0].n && u.lists[1].n)
                break;
            unit_free(&u);
        }
        struct sscan S;
        scan_prepare(&h, &u, 5, 0, 0, &S);
        uint64_t table = S.d.op.scan.table, results = S.d.op.scan.results;
        uint64_t queries = S.T->queries;
        cases[i].f(&S);
        c = run(&h, &S.d);
        uint64_t det = cases[i].detail;
        if (cases[i].st == QV_FPGA_ST_BAD_ADDRESS && det == 1)
            det = table + 4;
        else if (cases[i].st == QV_FPGA_ST_BAD_ADDRESS && det == 2)
            det = results + 8;
        else if (cases[i].st == QV_FPGA_ST_BAD_ADDRESS && det == 3)
            det = queries + 2;
        if (c.status != cases[i].st)
            fprintf(stderr, "\n  malformed %s: status %u, expected %u", cases[i].what,
                    c.status, cases[i].st);
        EXPECT(cases[i].st, det);
        if (cases[i].st == QV_FPGA_ST_BAD_HANDLE)
            CU_ASSERT_EQUAL(c.result, (uint32_t)det);
        CU_ASSERT(results_untouched(&S));
        scan_release(&h, &S);
        unit_free(&u);
    }
    /* results in a READ-only region: BAD_ADDRESS, nothing written */
    {
        struct unit u;
        unit_make(&u, QV_WU_FLAT, QV_METRIC_IP, 16, 300, 3, 4, 2, 0);
        struct sscan S;
        scan_prepare(&h, &u, 5, 0, 0, &S);
        struct qv_fpga_result *ro = qv_malloc(4 * 5 * 16, QV_MEM_TEST);
        memset(ro, 0xAB, 4 * 5 * 16);
        CU_ASSERT(region_add(&h, ro, 4 * 5 * 16, QV_FPGA_ATU_READ) >= 0);
        S.d.op.scan.results = (uintptr_t)ro;
        c = run(&h, &S.d);
        EXPECT(QV_FPGA_ST_BAD_ADDRESS, (uintptr_t)ro);
        S.res = ro;
        CU_ASSERT(results_untouched(&S));
        /* the same buffer made writable: the scan goes through */
        wr32(&h, QV_FPGA_ATU_ENTRY(h.next_region - 1) + 0x10,
             QV_FPGA_ATU_WRITE | QV_FPGA_ATU_VALID);
        c = run(&h, &S.d);
        CU_ASSERT_EQUAL(c.status, QV_FPGA_ST_OK);
        CU_ASSERT(!results_untouched(&S));
        wr32(&h, QV_FPGA_ATU_ENTRY(h.next_region - 1) + 0x10, 0);
        h.next_region--;
        qv_free(ro);
        scan_release(&h, &S);
        unit_free(&u);
    }
    /* PQ: IP with ltab, probe_lists fine but list_no >= ncoarse, pq_m 0 */
    {
        struct unit u;
        unit_make_pq(&u, QV_METRIC_L2, 8, 4, 8, 300, 3, 4, 2, 0, 1);
        struct sscan S;
        scan_prepare(&h, &u, 5, 0, 0, &S);
        S.L[2].list_no = 3;
        c = run(&h, &S.d);
        EXPECT(QV_FPGA_ST_BAD_PARAM, QV_FPGA_DETAIL(QV_FPGA_DETAIL_IN_ARRAY, 0x48, 2));
        S.L[2].list_no = 2;
        S.T->pq_m = 0;
        c = run(&h, &S.d);
        EXPECT(QV_FPGA_ST_BAD_PARAM, QV_FPGA_DETAIL(QV_FPGA_DETAIL_IN_TABLE, 0x70, 0));
        S.T->pq_m = 4;
        uint32_t lt = S.T->pq_ltab;
        S.T->pq_ltab = 0x7777;
        c = run(&h, &S.d);
        EXPECT(QV_FPGA_ST_BAD_HANDLE, 0x7777);
        S.T->pq_ltab = lt;
        uint64_t qt = S.T->pq_qtab;
        S.T->pq_qtab = 0;
        c = run(&h, &S.d);
        EXPECT(QV_FPGA_ST_BAD_ADDRESS, 0);
        S.T->pq_qtab = qt;
        c = run(&h, &S.d);
        CU_ASSERT_EQUAL(c.status, QV_FPGA_ST_OK);
        scan_release(&h, &S);
        unit_free(&u);
    }
    /* list_no < ncoarse holds for every PQ unit, even PQ4 with PROBE_TABLES
     * (which reads neither coarse nor ltab) */
    {
        struct unit u;
        unit_make_pq(&u, QV_METRIC_L2, 8, 4, 4, 300, 3, 4, 2, 0, 1);
        struct sscan S;
        scan_prepare(&h, &u, 5, 1, 1, &S);
        S.T->pq_ncoarse = 2;
        c = run(&h, &S.d);
        EXPECT(QV_FPGA_ST_BAD_PARAM, QV_FPGA_DETAIL(QV_FPGA_DETAIL_IN_ARRAY, 0x48, 2));
        S.T->pq_ncoarse = 3;
        c = run(&h, &S.d);
        CU_ASSERT_EQUAL(c.status, QV_FPGA_ST_OK);
        scan_release(&h, &S);
        unit_free(&u);
    }
#undef EXPECT
    CU_ASSERT_EQUAL(rd64(&h, QV_FPGA_REG_ERRORS) - errs0, nerr);
    CU_ASSERT_EQUAL(rd64(&h, QV_FPGA_QP_REG(0, QV_FPGA_QP_ERRORS)), nerr);
    CU_ASSERT_EQUAL(rd32(&h, QV_FPGA_REG_RESIDENT_BLOCKS), 0);
    host_close(&h);
}

/* Garbage descriptors and tables must never crash the card. */
static void test_fuzz(void)
{
    struct host h;
    host_open(&h, NULL);
    static const float blk[1024];
    uint32_t hd = upload(&h, blk, sizeof blk);
    uint32_t hist[QV_FPGA_ST__COUNT] = { 0 };
    /* QV_FUZZ_ITERS / QV_FUZZ_SEED: deeper runs by hand */
    const char *env = getenv("QV_FUZZ_ITERS");
    int iters = env ? atoi(env) : 400;
    uint64_t saved_rng = rng_state;
    if ((env = getenv("QV_FUZZ_SEED")) != NULL)
        rng_state = strtoull(env, NULL, 0);
    for (int i = 0; i < iters; i++) {
        struct qv_fpga_desc d;
        uint8_t *b = (uint8_t *)&d;
        for (size_t j = 0; j < sizeof d; j++)
            b[j] = (uint8_t)rnd();
        d.opcode = (uint8_t)(rnd() % 2 ? QV_FPGA_OP_SCAN : rnd() % 6);
        if (rnd() % 2 || (d.opcode == QV_FPGA_OP_SCAN && rnd() % 8)) {
            d.flags = 0;
            d.rsvd = 0;
        }
        if (d.opcode == QV_FPGA_OP_SCAN) {
            /* a table of garbage in the arena, small fields mostly */
            struct qv_fpga_scan_table *T = arena_alloc(&h, 4096);
            uint32_t *words = (uint32_t *)T;
            for (int j = 0; j < 1024; j++)
                words[j] = (uint32_t)(rnd() % 7 ? rnd() % 9 : rnd());
            T->magic = QV_FPGA_SCAN_MAGIC;
            d.op.scan.kind = (uint8_t)(rnd() % 4);
            d.op.scan.metric = (uint8_t)(rnd() % 2);
            d.op.scan.rsvd0 = d.op.scan.rsvd1 = 0;
            d.op.scan.dim = T->dim = 1 + (uint32_t)(rnd() % 8);
            d.op.scan.k = T->k = 1 + (uint32_t)(rnd() % 8);
            d.op.scan.nq = T->nq = 1 + (uint32_t)(rnd() % 4);
            T->kind = d.op.scan.kind;
            T->metric = d.op.scan.metric;
            T->flags &= 3;
            T->rsvd0 = T->rsvd1 = 0;
            memset(T->rsvd2, 0, sizeof T->rsvd2);
            uint64_t *addrs = &T->queries;
            for (int j = 0; j < 9; j++)         /* queries .. sq8_vdiff */
                addrs[j] = rnd() % 8 ? (uintptr_t)((uint8_t *)T + 256 + (rnd() % 512) * 4)
                                     : rnd();
            T->pq_qtab = (uintptr_t)((uint8_t *)T + 256);
            T->pq_probe_params = (uintptr_t)((uint8_t *)T + 512);
            words[(256 + 0) / 4] = 0;
            ((struct qv_fpga_scan_list *)((uint8_t *)T + 1024))->codes = hd;
            if (rnd() % 4) {        /* mostly a consistent shape: reach later checks */
                T->pq_m = 1 + (uint32_t)(rnd() % 2);
                T->pq_m = T->dim % T->pq_m ? 1 : T->pq_m;
                T->pq_dsub = T->dim / T->pq_m;
                T->pq_nbits = rnd() % 2 ? 4 : 8;
                T->pq_ltab = T->metric ? QV_FPGA_NONE : T->pq_ltab;
                T->code_size = T->kind == QV_FPGA_KIND_FLAT  ? 4 * T->dim
                               : T->kind == QV_FPGA_KIND_F16 ? 2 * T->dim
                               : T->kind == QV_FPGA_KIND_SQ8 ? T->dim + (uint32_t)(rnd() % 3)
                               : T->pq_nbits == 8            ? T->pq_m
                                                             : (T->pq_m + 1) / 2;
                T->nlists = 1 + (uint32_t)(rnd() % 3);
                T->probe_offsets = (uintptr_t)((uint8_t *)T + 3000);
                uint32_t *po = (uint32_t *)(uintptr_t)T->probe_offsets;
                uint32_t np = 0;
                for (uint32_t q = 0; q <= T->nq; q++) {
                    po[q] = np;
                    np += (uint32_t)(rnd() % 3);
                }
                T->nprobes = po[T->nq];
                T->probe_lists = (uintptr_t)((uint8_t *)T + 3200);
                uint32_t *pl = (uint32_t *)(uintptr_t)T->probe_lists;
                for (uint32_t p = 0; p < T->nprobes; p++)
                    pl[p] = (uint32_t)(rnd() % (T->nlists + (rnd() % 16 == 0)));
                T->lists = (uintptr_t)((uint8_t *)T + 3500);
                struct qv_fpga_scan_list *sl = (struct qv_fpga_scan_list *)(uintptr_t)T->lists;
                for (uint32_t l = 0; l < T->nlists; l++) {
                    sl[l].codes = rnd() % 8 ? hd : (uint32_t)rnd();
                    sl[l].norms = rnd() % 8 ? hd : QV_FPGA_NONE;
                    sl[l].n = (uint32_t)(rnd() % 8 ? rnd() % 40 : rnd());
                    sl[l].list_no = (uint32_t)(rnd() % 3);
                }
                T->pq_ncoarse = 2 + (uint32_t)(rnd() % 2);
                T->pq_codebooks = T->pq_coarse = hd;
                T->pq_ltab = rnd() % 2 ? QV_FPGA_NONE : hd;
                T->mask_nwords = (uint32_t)(rnd() % 8);
                if (T->metric == QV_FPGA_METRIC_IP)
                    T->pq_ltab = QV_FPGA_NONE;
            }
            d.op.scan.table = (uintptr_t)T;
            d.op.scan.results = (uintptr_t)arena_alloc(&h, 4096);
            d.op.scan.results_len = rnd() % 4 ? 4096 : rnd() % 100;
            d.op.scan.table_len = 256;
        }
        struct qv_fpga_cpl c;
        uint32_t idx = submit(&h, &d);
        CU_ASSERT_EQUAL_FATAL(wait_cpl(&h, idx, 20000, &c), 0);
        CU_ASSERT(c.status < QV_FPGA_ST__COUNT);
        if (c.status < QV_FPGA_ST__COUNT)
            hist[c.status]++;
        if (c.status == QV_FPGA_ST_OK && d.opcode == QV_FPGA_OP_UPLOAD)
            free_handle(&h, c.result);
        if (h.arena_used > ARENA_BYTES / 2)
            h.arena_used = 0;
    }
    expect_nop_ok(&h);
    /* the fuzz reaches execution and the late checks, not only the early ones */
    CU_ASSERT(hist[QV_FPGA_ST_OK] > 0 && hist[QV_FPGA_ST_BAD_HANDLE] > 0 &&
              hist[QV_FPGA_ST_BAD_LENGTH] > 0 && hist[QV_FPGA_ST_BAD_ADDRESS] > 0);
    rng_state = saved_rng;
    printf("\n  fuzz: %d descriptors, status histogram:", iters);
    for (int i = 0; i < QV_FPGA_ST__COUNT; i++)
        printf(" %u", hist[i]);
    printf(" ");
    host_close(&h);
}

static void test_hbm_full(void)
{
    struct qv_fpga_sim_opts o;
    qv_fpga_sim_opts_default(&o);
    o.use_opencl = 0;
    o.hbm_bytes = 4096;
    struct host h;
    host_open(&h, &o);
    static uint8_t data[8192];
    CU_ASSERT_EQUAL(rd64(&h, QV_FPGA_REG_HBM_BYTES), 4096);
    uint32_t a = upload(&h, data, 2000);                 /* charged 2048 */
    CU_ASSERT_EQUAL(rd64(&h, QV_FPGA_REG_HBM_USED), 2048);
    uint32_t b = upload(&h, data, 2048);
    CU_ASSERT_EQUAL(rd64(&h, QV_FPGA_REG_HBM_USED), 4096);
    CU_ASSERT_EQUAL(rd32(&h, QV_FPGA_REG_RESIDENT_BLOCKS), 2);
    CU_ASSERT_NOT_EQUAL(a, b);
    struct qv_fpga_cpl c = upload_raw(&h, data, 1);
    CU_ASSERT_EQUAL(c.status, QV_FPGA_ST_NO_MEMORY);
    CU_ASSERT_EQUAL(errlog_last(&h).code, QV_FPGA_ST_NO_MEMORY);
    CU_ASSERT_EQUAL(errlog_last(&h).detail, 1);
    c = upload_raw(&h, data, 4097);
    CU_ASSERT_EQUAL(c.status, QV_FPGA_ST_BAD_LENGTH);    /* larger than HBM_BYTES */
    CU_ASSERT_EQUAL(rd32(&h, QV_FPGA_REG_RESIDENT_BLOCKS), 2);
    /* the host evicts (FREE) and retries */
    c = free_handle(&h, a);
    CU_ASSERT_EQUAL(c.status, QV_FPGA_ST_OK);
    CU_ASSERT_EQUAL(rd64(&h, QV_FPGA_REG_HBM_USED), 2048);
    uint32_t a2 = upload(&h, data, 1);
    CU_ASSERT(a2 != a && a2 != b);                       /* handles are not reused */
    CU_ASSERT_EQUAL(rd64(&h, QV_FPGA_REG_HBM_USED), 2048 + 64);
    /* many blocks: the handle table grows and stays consistent */
    free_handle(&h, a2);
    free_handle(&h, b);
    uint32_t hs[60];
    for (int i = 0; i < 60; i++) {
        data[0] = (uint8_t)i;
        hs[i] = upload(&h, data, 64);
    }
    CU_ASSERT_EQUAL(rd64(&h, QV_FPGA_REG_HBM_USED), 3840);
    for (int i = 0; i < 60; i += 2)
        CU_ASSERT_EQUAL(free_handle(&h, hs[i]).status, QV_FPGA_ST_OK);
    for (int i = 0; i < 60; i++)
        CU_ASSERT_EQUAL(free_handle(&h, hs[i]).status,
                        i % 2 ? QV_FPGA_ST_OK : QV_FPGA_ST_BAD_HANDLE);
    CU_ASSERT_EQUAL(rd64(&h, QV_FPGA_REG_HBM_USED), 0);
    CU_ASSERT_EQUAL(rd32(&h, QV_FPGA_REG_RESIDENT_BLOCKS), 0);
    host_close(&h);
}

static void inject(struct host *h, enum qv_fpga_fault f)
{
    CU_ASSERT_EQUAL(qv_fpga_sim_inject(h->sim, f), 0);
    CU_ASSERT_EQUAL(wait_reg(h, QV_FPGA_REG_FAULT_INJECT, ~0u, 0, 2000), 0);
}

static void do_reset(struct host *h)
{
    wr32(h, QV_FPGA_REG_CTRL, rd32(h, QV_FPGA_REG_CTRL) | QV_FPGA_CTRL_RESET);
    CU_ASSERT_EQUAL(wait_reg(h, QV_FPGA_REG_CTRL, QV_FPGA_CTRL_RESET, 0, 5000), 0);
    CU_ASSERT_EQUAL(rd32(h, QV_FPGA_REG_STATUS),
                    QV_FPGA_STATUS_READY | QV_FPGA_STATUS_HALTED);
}

static void test_faults(void)
{
    struct host h;
    host_open(&h, NULL);
    struct qv_fpga_cpl c;
    uint32_t w0 = rd32(&h, QV_FPGA_REG_ERRLOG_WIDX);
    CU_ASSERT_EQUAL(qv_fpga_sim_inject(h.sim, (enum qv_fpga_fault)0), QV_EINVAL);
    CU_ASSERT_EQUAL(qv_fpga_sim_inject(h.sim, (enum qv_fpga_fault)7), QV_EINVAL);

    /* HANG: heartbeat and rings stop; CLEAR resumes where they stopped */
    inject(&h, QV_FPGA_FAULT_HANG);
    CU_ASSERT(rd32(&h, QV_FPGA_REG_FAULT_ACTIVE) & QV_FPGA_FACTIVE_HANG);
    uint64_t hb = rd64(&h, QV_FPGA_REG_HEARTBEAT);
    struct qv_fpga_desc d = nop_desc();
    uint32_t i = submit(&h, &d);
    sleep_ms(10);
    CU_ASSERT_EQUAL(rd64(&h, QV_FPGA_REG_HEARTBEAT), hb);
    CU_ASSERT_EQUAL(wait_cpl(&h, i, 5, &c), -1);
    inject(&h, QV_FPGA_FAULT_CLEAR);
    CU_ASSERT_EQUAL(wait_cpl(&h, i, 5000, &c), 0);
    CU_ASSERT_EQUAL(c.status, QV_FPGA_ST_OK);
    CU_ASSERT(rd64(&h, QV_FPGA_REG_HEARTBEAT) > hb);
    uint64_t det = 0;
    CU_ASSERT(errlog_has(&h, w0, QV_FPGA_EV_HANG, &det));
    CU_ASSERT(det >= 5000000);

    /* HANG then RESET: the descriptor never consumed is never completed */
    inject(&h, QV_FPGA_FAULT_HANG);
    i = submit(&h, &d);
    sleep_ms(2);
    do_reset(&h);
    CU_ASSERT_EQUAL(rd32(&h, QV_FPGA_REG_FAULT_ACTIVE), 0);
    CU_ASSERT_EQUAL(rd32(&h, QV_FPGA_QP_REG(0, QV_FPGA_QP_SQ_BASE)), 0);
    CU_ASSERT_EQUAL(rd32(&h, QV_FPGA_ATU_ENTRY(0) + 0x10), 0);
    CU_ASSERT_EQUAL(wait_cpl(&h, i, 5, &c), -1);
    CU_ASSERT_EQUAL(errlog_last(&h).code, QV_FPGA_EV_RESET);
    CU_ASSERT_EQUAL(errlog_last(&h).detail, 0);
    CU_ASSERT_EQUAL(host_setup(&h), 0);
    expect_nop_ok(&h);

    /* ECC: one completion fails, the counter counts it */
    uint64_t ecc0 = rd64(&h, QV_FPGA_REG_ECC_UNCORRECTED);
    inject(&h, QV_FPGA_FAULT_ECC);
    CU_ASSERT(rd32(&h, QV_FPGA_REG_FAULT_ACTIVE) & QV_FPGA_FACTIVE_ECC);
    c = run(&h, &d);
    CU_ASSERT_EQUAL(c.status, QV_FPGA_ST_ECC_ERROR);
    CU_ASSERT_EQUAL(rd64(&h, QV_FPGA_REG_ECC_UNCORRECTED), ecc0 + 1);
    CU_ASSERT_EQUAL(rd32(&h, QV_FPGA_REG_FAULT_ACTIVE) & QV_FPGA_FACTIVE_ECC, 0);
    expect_nop_ok(&h);
    /* ECC on UPLOAD keeps no block; on SCAN writes no results */
    static const float blk[256];
    inject(&h, QV_FPGA_FAULT_ECC);
    c = upload_raw(&h, blk, sizeof blk);
    CU_ASSERT_EQUAL(c.status, QV_FPGA_ST_ECC_ERROR);
    CU_ASSERT_EQUAL(rd32(&h, QV_FPGA_REG_RESIDENT_BLOCKS), 0);
    CU_ASSERT_EQUAL(rd64(&h, QV_FPGA_REG_HBM_USED), 0);
    {
        struct unit u;
        unit_make(&u, QV_WU_FLAT, QV_METRIC_L2, 8, 200, 2, 3, 1, 0);
        struct sscan S;
        scan_prepare(&h, &u, 4, 0, 0, &S);
        inject(&h, QV_FPGA_FAULT_ECC);
        c = run(&h, &S.d);
        CU_ASSERT_EQUAL(c.status, QV_FPGA_ST_ECC_ERROR);
        CU_ASSERT(results_untouched(&S));
        c = run(&h, &S.d);                  /* the retry succeeds */
        CU_ASSERT_EQUAL(c.status, QV_FPGA_ST_OK);
        CU_ASSERT(!results_untouched(&S));
        scan_release(&h, &S);
        unit_free(&u);
    }
    /* ECC_CORRECTED: a counter, nothing else */
    uint64_t cor0 = rd64(&h, QV_FPGA_REG_ECC_CORRECTED);
    inject(&h, QV_FPGA_FAULT_ECC_CORRECTED);
    CU_ASSERT_EQUAL(rd64(&h, QV_FPGA_REG_ECC_CORRECTED), cor0 + 1);
    expect_nop_ok(&h);

    /* LINK_DOWN: no progress, heartbeat goes on; CLEAR resumes */
    inject(&h, QV_FPGA_FAULT_LINK_DOWN);
    CU_ASSERT(rd32(&h, QV_FPGA_REG_STATUS) & QV_FPGA_STATUS_LINK_DOWN);
    hb = rd64(&h, QV_FPGA_REG_HEARTBEAT);
    i = submit(&h, &d);
    CU_ASSERT_EQUAL(wait_cpl(&h, i, 10, &c), -1);
    CU_ASSERT(rd64(&h, QV_FPGA_REG_HEARTBEAT) > hb);
    inject(&h, QV_FPGA_FAULT_CLEAR);
    CU_ASSERT_EQUAL(wait_cpl(&h, i, 5000, &c), 0);
    CU_ASSERT_EQUAL(rd32(&h, QV_FPGA_REG_STATUS) & QV_FPGA_STATUS_LINK_DOWN, 0);
    /* LINK_DOWN then RESET recovers */
    inject(&h, QV_FPGA_FAULT_LINK_DOWN);
    do_reset(&h);
    CU_ASSERT_EQUAL(host_setup(&h), 0);
    expect_nop_ok(&h);

    /* THROTTLE: device time x factor, STATUS.THROTTLED, 95 C */
    wr32(&h, QV_FPGA_REG_THROTTLE_FACTOR, 3);
    inject(&h, QV_FPGA_FAULT_THROTTLE);
    CU_ASSERT(rd32(&h, QV_FPGA_REG_STATUS) & QV_FPGA_STATUS_THROTTLED);
    CU_ASSERT_EQUAL((int32_t)rd32(&h, QV_FPGA_REG_TEMP_MC), 95000);
    c = run(&h, &d);
    CU_ASSERT_EQUAL(c.device_ns, 15000);
    c = upload_raw(&h, blk, sizeof blk);
    CU_ASSERT_EQUAL(c.device_ns, (uint64_t)floor(3 * (5000 + (64 + 1024 + 32) * 1000.0 / 12000)));
    free_handle(&h, c.result);
    inject(&h, QV_FPGA_FAULT_CLEAR);
    c = run(&h, &d);
    CU_ASSERT_EQUAL(c.device_ns, 5000);
    CU_ASSERT_EQUAL(rd32(&h, QV_FPGA_REG_STATUS) & QV_FPGA_STATUS_THROTTLED, 0);
    CU_ASSERT(errlog_has(&h, w0, QV_FPGA_EV_THROTTLE_ON, &det));
    CU_ASSERT_EQUAL(det, 3);

    /* reset clears HBM: the old handle is BAD_HANDLE afterwards */
    uint32_t hd = upload(&h, blk, sizeof blk);
    CU_ASSERT_EQUAL(rd32(&h, QV_FPGA_REG_RESIDENT_BLOCKS), 1);
    do_reset(&h);
    CU_ASSERT_EQUAL(rd32(&h, QV_FPGA_REG_RESIDENT_BLOCKS), 0);
    CU_ASSERT_EQUAL(rd64(&h, QV_FPGA_REG_HBM_USED), 0);
    CU_ASSERT_EQUAL(host_setup(&h), 0);
    c = free_handle(&h, hd);
    CU_ASSERT_EQUAL(c.status, QV_FPGA_ST_BAD_HANDLE);
    /* HANG x2, ECC x3, ECC_CORRECTED, LINK_DOWN x2, THROTTLE (not CLEAR) */
    CU_ASSERT_EQUAL(rd64(&h, QV_FPGA_REG_FAULTS), 9);
    host_close(&h);
}

/* A descriptor in flight when the card hangs completes with RESET. */
static void test_reset_in_flight(void)
{
    struct qv_fpga_sim_opts o;
    qv_fpga_sim_opts_default(&o);
    o.use_opencl = 0;
    o.launch_ns = 200000000;        /* a NOP "takes" 200 ms */
    o.pace = 1;
    struct host h;
    host_open(&h, &o);
    struct qv_fpga_desc d = nop_desc();
    int64_t t0 = qv_now_ns();
    struct qv_fpga_cpl c;
    uint32_t i = submit(&h, &d);
    CU_ASSERT_EQUAL(wait_reg(&h, QV_FPGA_REG_STATUS, QV_FPGA_STATUS_BUSY, QV_FPGA_STATUS_BUSY,
                             2000), 0);
    inject(&h, QV_FPGA_FAULT_HANG);
    uint64_t hb = rd64(&h, QV_FPGA_REG_HEARTBEAT);
    sleep_ms(5);
    CU_ASSERT_EQUAL(rd64(&h, QV_FPGA_REG_HEARTBEAT), hb);
    uint32_t w = rd32(&h, QV_FPGA_REG_ERRLOG_WIDX);
    wr32(&h, QV_FPGA_REG_CTRL, QV_FPGA_CTRL_RESET);
    CU_ASSERT_EQUAL(wait_cpl(&h, i, 5000, &c), 0);
    CU_ASSERT_EQUAL(c.status, QV_FPGA_ST_RESET);
    CU_ASSERT(qv_now_ns() - t0 < 150000000);    /* aborted, not paced out */
    CU_ASSERT_EQUAL(wait_reg(&h, QV_FPGA_REG_CTRL, QV_FPGA_CTRL_RESET, 0, 5000), 0);
    uint64_t det = 99;
    CU_ASSERT(errlog_has(&h, w, QV_FPGA_EV_RESET, &det));
    CU_ASSERT_EQUAL(det, 1);
    CU_ASSERT(errlog_has(&h, w, QV_FPGA_ST_RESET, NULL));
    sleep_ms(2);
    CU_ASSERT(rd64(&h, QV_FPGA_REG_HEARTBEAT) > hb);
    /* pace off: the card is usable again after the host's start-up */
    wr32(&h, QV_FPGA_REG_SIM_PACE, 0);
    CU_ASSERT_EQUAL(host_setup(&h), 0);
    c = run(&h, &d);
    CU_ASSERT_EQUAL(c.status, QV_FPGA_ST_OK);
    CU_ASSERT_EQUAL(c.device_ns, 200000000);
    /* pace on: a NOP completes no earlier than its device time */
    wr32(&h, QV_FPGA_REG_SIM_PACE, 1);
    t0 = qv_now_ns();
    c = run(&h, &d);
    CU_ASSERT(qv_now_ns() - t0 >= 200000000);
    host_close(&h);
}

static void test_kill(void)
{
    struct host h;
    host_open(&h, NULL);
    static const float blk[256];
    upload(&h, blk, sizeof blk);                /* freed by qv_fpga_sim_free */
    qv_fpga_sim_kill(h.sim);
    uint64_t hb = rd64(&h, QV_FPGA_REG_HEARTBEAT);
    struct qv_fpga_desc d = nop_desc();
    struct qv_fpga_cpl c;
    uint32_t i = submit(&h, &d);
    sleep_ms(5);
    CU_ASSERT_EQUAL(rd64(&h, QV_FPGA_REG_HEARTBEAT), hb);
    CU_ASSERT_EQUAL(wait_cpl(&h, i, 5, &c), -1);
    volatile int stop = 1;
    CU_ASSERT_EQUAL(qv_fpga_sim_run(h.sim, &stop), QV_EINVAL);    /* thread mode */
    host_close(&h);
}

/* The OpenCL bitstream (or its CPU fallback) equals the CPU engine. */
static void test_opencl_bitstream(void)
{
    struct qv_fpga_sim_opts o;
    qv_fpga_sim_opts_default(&o);
    o.use_opencl = 1;
    struct host h;
    host_open(&h, &o);
    struct unit u;
    unit_make(&u, QV_WU_FLAT, QV_METRIC_L2, 33, 3000, 5, 40, 2, 1);
    check_scan(&h, &u, 10, 1e-4f, 0, 0, "opencl flat l2 filter");
    unit_free(&u);
    unit_make_pq(&u, QV_METRIC_L2, 16, 8, 4, 1000, 4, 20, 2, 0, 1);
    check_scan(&h, &u, 10, 0, 0, 0, "opencl pq4 l2 ltab");
    unit_free(&u);
    host_close(&h);
}

/* Process mode: BAR0 in shm, DMA by process_vm_readv/writev on this
 * very process, the loop in a thread of the test. */
struct run_arg {
    struct qv_fpga_sim *sim;
    volatile int stop;
    int rc;
};

static void *run_main(void *p)
{
    struct run_arg *a = p;
    a->rc = qv_fpga_sim_run(a->sim, &a->stop);
    return NULL;
}

static void test_process_mode(void)
{
    uint32_t probe = 0x12345678, got = 0;
    struct iovec l = { &got, 4 }, r = { &probe, 4 };
    if (process_vm_readv(getpid(), &l, 1, &r, 1, 0) != 4) {
        printf("\n  SKIP: process_vm_readv on self: %s ", strerror(errno));
        return;
    }
    struct qv_fpga_sim_opts o;
    qv_fpga_sim_opts_default(&o);
    o.use_opencl = 0;
    char name[32];
    snprintf(name, sizeof name, "test-%d", (int)getpid());
    o.name = name;
    struct qv_fpga_sim *sim = qv_fpga_sim_create(&o, QV_FPGA_SIM_PROCESS);
    if (!sim)
        fprintf(stderr, "\n  %s", qv_errmsg());
    CU_ASSERT_PTR_NOT_NULL_FATAL(sim);
    char path[64];
    snprintf(path, sizeof path, "/dev/shm/quiver-fpga-%s", name);
    CU_ASSERT_EQUAL(access(path, F_OK), 0);
    struct run_arg a = { .sim = sim };
    pthread_t t;
    CU_ASSERT_EQUAL_FATAL(pthread_create(&t, NULL, run_main, &a), 0);
    struct host h;
    host_attach(&h, sim);
    CU_ASSERT_EQUAL(rd32(&h, QV_FPGA_REG_SIM_MODE), QV_FPGA_SIM_PROCESS);
    CU_ASSERT_EQUAL(rd32(&h, QV_FPGA_REG_SIM_CARD_PID), (uint32_t)getpid());
    expect_nop_ok(&h);
    struct unit u;
    unit_make(&u, QV_WU_FLAT, QV_METRIC_L2, 17, 1000, 3, 25, 2, 1);
    check_scan(&h, &u, 10, 1e-5f, 0, 0, "process mode flat");
    unit_free(&u);
    /* a region over unmapped memory: a failed process_vm_readv is a
     * BAD_ADDRESS completion, not a crash */
    region_add(&h, (void *)(uintptr_t)0x10000, 4096, QV_FPGA_ATU_READ);
    struct qv_fpga_desc d;
    memset(&d, 0, sizeof d);
    d.opcode = QV_FPGA_OP_UPLOAD;
    d.op.upload.addr = 0x10000;
    d.op.upload.len = 64;
    struct qv_fpga_cpl c = run(&h, &d);
    CU_ASSERT_EQUAL(c.status, QV_FPGA_ST_BAD_ADDRESS);
    CU_ASSERT_EQUAL(errlog_last(&h).detail, 0x10000);
    expect_nop_ok(&h);
    a.stop = 1;
    pthread_join(t, NULL);
    CU_ASSERT_EQUAL(a.rc, 0);
    host_close(&h);
    CU_ASSERT_NOT_EQUAL(access(path, F_OK), 0);     /* unlinked */
}

int main(void)
{
    struct qv_mem_stats before[QV_MEM__COUNT], after;
    for (int t = 0; t < QV_MEM__COUNT; t++)
        qv_mem_stats((enum qv_mem_tag)t, &before[t]);
    cpu = qv_engine_cpu_create(NULL);
    if (!cpu || CU_initialize_registry() != CUE_SUCCESS)
        return 1;
    CU_pSuite s = CU_add_suite("fpga_sim", NULL, NULL);
    CU_add_test(s, "identity registers, bad options", test_identity);
    CU_add_test(s, "config: [fpga] keys -> options -> registers", test_config);
    CU_add_test(s, "NOP round trip, batches, CQ full, doorbell overrun", test_nop);
    CU_add_test(s, "SCAN flat == cpu (dims 1/17/128, k, nq, lists, filter)", test_scan_flat);
    CU_add_test(s, "SCAN timing model (worked example), UPLOAD timing", test_scan_timing);
    CU_add_test(s, "SCAN sq8, f16 == cpu", test_scan_sq8_f16);
    CU_add_test(s, "SCAN pq 4/8 bits, ltab, ip, probe tables == cpu", test_scan_pq);
    CU_add_test(s, "malformed descriptors: status, error log, card keeps serving",
                test_malformed);
    CU_add_test(s, "fuzz: random descriptors and tables never crash", test_fuzz);
    CU_add_test(s, "HBM full -> NO_MEMORY, FREE and retry", test_hbm_full);
    CU_add_test(s, "faults: hang, ecc, link down, throttle; reset clears HBM", test_faults);
    CU_add_test(s, "reset during a descriptor: RESET completion; pacing", test_reset_in_flight);
    CU_add_test(s, "kill: heartbeat stops, nothing completes", test_kill);
    CU_add_test(s, "opencl bitstream (or fallback) == cpu", test_opencl_bitstream);
    CU_add_test(s, "process mode: shm BAR0, process_vm DMA", test_process_mode);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failed = CU_get_number_of_failures();
    int err = CU_get_error();
    CU_cleanup_registry();
    qv_engine_free(cpu);
    int leaked = 0;
    static const enum qv_mem_tag tags[] = { QV_MEM_TEST, QV_MEM_IO };
    for (size_t i = 0; i < sizeof tags / sizeof tags[0]; i++) {
        qv_mem_stats(tags[i], &after);
        if (after.live_blocks != before[tags[i]].live_blocks) {
            fprintf(stderr, "test_fpga_sim: %lld %s blocks leaked\n",
                    (long long)(after.live_blocks - before[tags[i]].live_blocks),
                    qv_mem_tag_name(tags[i]));
            leaked = 1;
        }
    }
    return failed || err || leaked ? 1 : 0;
}
