/*
 * card_scan.c - SCAN on the simulated card: validation of the descriptor,
 * the scan unit table and its arrays (in the contract's order), the work
 * unit built over HBM blocks, the timing model's hbm and compute terms,
 * execution on the kernel thread (engine, CPU fallback, or the card's own
 * PQ scanner) and the results written by DMA.  Design: card_int.h, "SCAN"
 * and "VALIDATION".
 *
 * Cost on the loop thread: O(nq + nprobes + nlists) for validation and
 * the unit, plus the filter bitmap (O(rows / 32)) and the results (O(nq k
 * log k)); the scan itself runs on the kernel thread.  Allocation only when
 * a scratch buffer must grow.
 */
#include <math.h>
#include <string.h>

#include "card_int.h"
#include "quiver/alloc.h"
#include "quiver/errors.h"
#include "quiver/log.h"
#include "quiver/sq8.h"

#define DET_DESC(off)       QV_FPGA_DETAIL(QV_FPGA_DETAIL_IN_DESC, (off), 0)
#define DET_TABLE(off)      QV_FPGA_DETAIL(QV_FPGA_DETAIL_IN_TABLE, (off), 0)
#define DET_ARRAY(off, i)   QV_FPGA_DETAIL(QV_FPGA_DETAIL_IN_ARRAY, (off), (i))

/* Fail the descriptor: status and detail, then return from the caller. */
#define FAIL(st, det) do { \
        r->status = (st); \
        r->detail = (det); \
        return; \
    } while (0)

/* One array of the table: where its address sits, how big it is. */
struct arr {
    uint16_t field;             /* offset of the address in the table */
    uint64_t addr;
    uint64_t bytes;             /* 0: not needed / empty */
    struct card_buf *buf;
};

/* Bytes the codes block of a list of n entries must hold. */
static uint64_t codes_min(const struct qv_fpga_scan_table *T, uint64_t n)
{
    uint64_t mp = ((uint64_t)T->pq_m + 1) & ~1ull;
    switch (T->kind) {
    case QV_FPGA_KIND_FLAT:
        return (n + 15) / 16 * 16 * T->dim * 4;
    case QV_FPGA_KIND_F16:
        return (n + 15) / 16 * 16 * T->dim * 2;
    case QV_FPGA_KIND_SQ8:
        return n * T->code_size;
    default:
        return T->pq_nbits == 8 ? n * T->pq_m : (n + 31) / 32 * 32 * mp / 2;
    }
}

static void heaps_reset(struct card_scan *S, uint32_t nq, uint32_t k)
{
    struct qv_topk *h = S->heaps.p;
    for (uint32_t q = 0; q < nq; q++)
        qv_topk_init(&h[q], k, (float *)S->hdist.p + (size_t)q * k,
                     (uint64_t *)S->hids.p + (size_t)q * k);
}

/* What the PQ unit needs (the contract's "Which PQ fields are needed"). */
struct pq_needs {
    int pt;                     /* PROBE_TABLES */
    int pt4;                    /* PROBE_TABLES with nbits 4: the card only sums */
    int qtab, codebooks, coarse, ltab;
};

static void pq_needs(const struct qv_fpga_scan_table *T, struct pq_needs *N)
{
    memset(N, 0, sizeof *N);
    if (T->kind != QV_FPGA_KIND_PQ)
        return;
    int l2 = T->metric == QV_FPGA_METRIC_L2;
    N->pt = (T->flags & QV_FPGA_SCAN_F_PROBE_TABLES) != 0;
    N->pt4 = N->pt && T->pq_nbits == 4;
    N->ltab = l2 && T->pq_ltab != QV_FPGA_NONE && !N->pt4;
    N->qtab = !(l2 && T->pq_ltab == QV_FPGA_NONE) && !N->pt4;
    N->codebooks = l2 && T->pq_ltab == QV_FPGA_NONE && !N->pt4;
    N->coarse = !N->pt || N->codebooks;
}

/* Step 4: the table's own fields. */
static void check_table(const struct qv_fpga_desc_scan *D, const struct qv_fpga_scan_table *T,
                        struct card_result *r)
{
    if (T->magic != QV_FPGA_SCAN_MAGIC)
        FAIL(QV_FPGA_ST_BAD_PARAM, DET_TABLE(0x00));
    if (T->kind != D->kind)
        FAIL(QV_FPGA_ST_BAD_PARAM, DET_TABLE(0x04));
    if (T->metric != D->metric)
        FAIL(QV_FPGA_ST_BAD_PARAM, DET_TABLE(0x05));
    uint16_t known = QV_FPGA_SCAN_F_FILTER |
                     (T->kind == QV_FPGA_KIND_PQ ? QV_FPGA_SCAN_F_PROBE_TABLES : 0);
    if (T->flags & ~known)
        FAIL(QV_FPGA_ST_BAD_PARAM, DET_TABLE(0x06));
    if (T->dim != D->dim)
        FAIL(QV_FPGA_ST_BAD_PARAM, DET_TABLE(0x08));
    if (T->k != D->k)
        FAIL(QV_FPGA_ST_BAD_PARAM, DET_TABLE(0x0C));
    if (T->nq != D->nq)
        FAIL(QV_FPGA_ST_BAD_PARAM, DET_TABLE(0x10));
    if (T->rsvd0)
        FAIL(QV_FPGA_ST_BAD_PARAM, DET_TABLE(0x24));
    if (T->rsvd1)
        FAIL(QV_FPGA_ST_BAD_PARAM, DET_TABLE(0x8C));
    for (unsigned i = 0; i < sizeof T->rsvd2 / sizeof T->rsvd2[0]; i++)
        if (T->rsvd2[i])
            FAIL(QV_FPGA_ST_BAD_PARAM, DET_TABLE(0xA8 + 8 * i));
    if (T->kind == QV_FPGA_KIND_PQ) {
        if (T->pq_m == 0 || T->pq_m > QV_FPGA_MAX_PQ_M)
            FAIL(QV_FPGA_ST_BAD_PARAM, DET_TABLE(0x70));
        if (T->pq_nbits != 4 && T->pq_nbits != 8)
            FAIL(QV_FPGA_ST_BAD_PARAM, DET_TABLE(0x74));
        if ((uint64_t)T->pq_dsub * T->pq_m != T->dim)
            FAIL(QV_FPGA_ST_BAD_PARAM, DET_TABLE(0x78));
        if (T->metric == QV_FPGA_METRIC_IP && T->pq_ltab != QV_FPGA_NONE)
            FAIL(QV_FPGA_ST_BAD_PARAM, DET_TABLE(0x88));
    }
    uint32_t cs;
    switch (T->kind) {
    case QV_FPGA_KIND_FLAT: cs = 4 * T->dim; break;
    case QV_FPGA_KIND_F16: cs = 2 * T->dim; break;
    case QV_FPGA_KIND_SQ8: cs = T->code_size >= T->dim ? T->code_size : 0; break;
    default: cs = T->pq_nbits == 8 ? T->pq_m : (T->pq_m + 1) / 2; break;
    }
    if (T->code_size != cs)
        FAIL(QV_FPGA_ST_BAD_PARAM, DET_TABLE(0x1C));
}

/* Step 6: array contents (offsets, probes, lists, masks). */
static void check_contents(struct qv_fpga_sim *s, const struct qv_fpga_scan_table *T,
                           const struct pq_needs *N, struct card_result *r)
{
    struct card_scan *S = &s->scan;
    const uint32_t *poff = S->poff.p, *plist = S->plist.p;
    const struct qv_fpga_scan_list *L = S->lists.p;
    if (poff[0] != 0)
        FAIL(QV_FPGA_ST_BAD_PARAM, DET_ARRAY(0x38, 0));
    for (uint32_t q = 0; q < T->nq; q++)
        if (poff[q + 1] < poff[q])
            FAIL(QV_FPGA_ST_BAD_PARAM, DET_ARRAY(0x38, q + 1));
    if (poff[T->nq] != T->nprobes)
        FAIL(QV_FPGA_ST_BAD_PARAM, DET_ARRAY(0x38, T->nq));
    for (uint32_t p = 0; p < T->nprobes; p++)
        if (plist[p] >= T->nlists)
            FAIL(QV_FPGA_ST_BAD_PARAM, DET_ARRAY(0x40, p));
    int uses_list_no = T->kind == QV_FPGA_KIND_PQ;     /* "each list_no < ncoarse" */
    for (uint32_t l = 0; l < T->nlists; l++)
        if (uses_list_no && L[l].list_no >= T->pq_ncoarse)
            FAIL(QV_FPGA_ST_BAD_PARAM, DET_ARRAY(0x48, l));
    if (T->flags & QV_FPGA_SCAN_F_FILTER) {
        const uint32_t *mo = S->mask_off.p;
        for (uint32_t l = 0; l < T->nlists; l++)
            if (mo[l] != QV_FPGA_NONE &&
                (uint64_t)mo[l] + (L[l].n + 31ull) / 32 > T->mask_nwords)
                FAIL(QV_FPGA_ST_BAD_PARAM, DET_ARRAY(0x50, l));
    }
}

/* Step 7: handles, then block lengths.  Fills S->blocks (codes, norms). */
static void check_handles(struct qv_fpga_sim *s, const struct qv_fpga_scan_table *T,
                          const struct pq_needs *N, struct card_block **pqb,
                          struct card_result *r)
{
    struct card_scan *S = &s->scan;
    const struct qv_fpga_scan_list *L = S->lists.p;
    struct card_block **blk = S->blocks.p;
    int want_norms = T->metric == QV_FPGA_METRIC_L2 &&
                     (T->kind == QV_FPGA_KIND_FLAT || T->kind == QV_FPGA_KIND_F16);
#define BAD_HANDLE(h) do { \
        r->status = QV_FPGA_ST_BAD_HANDLE; \
        r->result = (h); \
        r->detail = (h); \
        return; \
    } while (0)
    for (uint32_t l = 0; l < T->nlists; l++) {
        blk[2 * l] = blk[2 * l + 1] = NULL;
        if (L[l].n || L[l].codes != QV_FPGA_NONE)
            if (!(blk[2 * l] = qv__card_block_find(s, L[l].codes)))
                BAD_HANDLE(L[l].codes);
        if (want_norms && L[l].n)
            if (!(blk[2 * l + 1] = qv__card_block_find(s, L[l].norms)))
                BAD_HANDLE(L[l].norms);
    }
    pqb[0] = pqb[1] = pqb[2] = NULL;
    if (N->codebooks && !(pqb[0] = qv__card_block_find(s, T->pq_codebooks)))
        BAD_HANDLE(T->pq_codebooks);
    if (N->coarse && !(pqb[1] = qv__card_block_find(s, T->pq_coarse)))
        BAD_HANDLE(T->pq_coarse);
    if (N->ltab && !(pqb[2] = qv__card_block_find(s, T->pq_ltab)))
        BAD_HANDLE(T->pq_ltab);
#undef BAD_HANDLE
    for (uint32_t l = 0; l < T->nlists; l++) {
        if (blk[2 * l] && blk[2 * l]->len < codes_min(T, L[l].n))
            FAIL(QV_FPGA_ST_BAD_LENGTH, DET_ARRAY(0x48, l));
        if (blk[2 * l + 1] && blk[2 * l + 1]->len < 4ull * L[l].n)
            FAIL(QV_FPGA_ST_BAD_LENGTH, DET_ARRAY(0x48, l));
    }
    uint64_t ksub = 1ull << T->pq_nbits, tsz = (uint64_t)T->pq_m * ksub;
    if (pqb[0] && pqb[0]->len < tsz * T->pq_dsub * 4)
        FAIL(QV_FPGA_ST_BAD_LENGTH, DET_TABLE(0x80));
    if (pqb[1] && pqb[1]->len < (uint64_t)T->pq_ncoarse * T->dim * 4)
        FAIL(QV_FPGA_ST_BAD_LENGTH, DET_TABLE(0x84));
    if (pqb[2] && pqb[2]->len < (uint64_t)T->pq_ncoarse * tsz * 4)
        FAIL(QV_FPGA_ST_BAD_LENGTH, DET_TABLE(0x88));
}

/* Build s->scan.wu over the validated table; compute the timing core. */
static void build_unit(struct qv_fpga_sim *s, const struct qv_fpga_scan_table *T,
                       const struct pq_needs *N, struct card_block *const *pqb,
                       struct card_result *r)
{
    struct card_scan *S = &s->scan;
    const struct qv_fpga_scan_list *L = S->lists.p;
    struct card_block **blk = S->blocks.p;
    const uint32_t *plist = S->plist.p;
    const uint32_t nq = T->nq, k = T->k, nlists = T->nlists;
    const int filter = (T->flags & QV_FPGA_SCAN_F_FILTER) != 0;
    uint32_t *probes = S->probes.p;
    struct qv_wu_list *wl = S->wulists.p;

    memset(probes, 0, (size_t)nlists * sizeof *probes);
    for (uint32_t p = 0; p < T->nprobes; p++)
        probes[plist[p]]++;

    /* rows: a base per probed list, multiple of 64 */
    uint64_t total = 0;
    if (filter) {
        for (uint32_t l = 0; l < nlists; l++)
            if (probes[l])
                total += (L[l].n + 63ull) & ~63ull;
        if (total > UINT32_MAX)
            FAIL(QV_FPGA_ST_BAD_PARAM, DET_TABLE(0x14));
        void *old = S->rows.p;
        if (qv__card_buf_reserve(s, &S->rows, (size_t)total * 4 + 4) ||
            qv__card_buf_reserve(s, &S->filter, (size_t)total / 8 + 8))
            FAIL(QV_FPGA_ST_INTERNAL, total);
        uint32_t *rows = S->rows.p;
        if (S->rows.p != old)
            S->rows_filled = 0;     /* a new buffer: fill the identity again */
        for (size_t i = S->rows_filled; i < total; i++)
            rows[i] = (uint32_t)i;
        if (total > S->rows_filled)
            S->rows_filled = total;
        memset(S->filter.p, 0, (size_t)total / 8 + 8);
    }
    /* ids: grow every block's array first (two list entries may share a
     * block with different n), then take the pointers */
    for (uint32_t l = 0; l < nlists; l++)
        if (probes[l] && L[l].n && !qv__card_block_ids(blk[2 * l], L[l].n))
            FAIL(QV_FPGA_ST_INTERNAL, L[l].n);
    uint64_t base = 0;
    uint64_t *fw = S->filter.p;
    const uint32_t *mo = S->mask_off.p, *mw = S->mask_words.p;
    for (uint32_t l = 0; l < nlists; l++) {
        struct qv_wu_list *W = &wl[l];
        memset(W, 0, sizeof *W);
        W->n = L[l].n;
        W->list_no = L[l].list_no;
        W->codes = blk[2 * l] ? blk[2 * l]->data : NULL;
        W->norms = blk[2 * l + 1] ? blk[2 * l + 1]->data : NULL;
        if (!probes[l] || !W->n)
            continue;
        W->ids = blk[2 * l]->ids;
        if (!filter)
            continue;
        W->rows = (const uint32_t *)S->rows.p + base;
        uint64_t w0 = base / 64, nw = (W->n + 31ull) / 32;
        if (mo[l] == QV_FPGA_NONE) {
            for (uint64_t j = 0; j < (W->n + 63ull) / 64; j++)
                fw[w0 + j] = ~0ull;
        } else {
            for (uint64_t j = 0; j < nw; j++)
                fw[w0 + j / 2] |= (uint64_t)mw[mo[l] + j] << (32 * (j & 1));
        }
        base += (W->n + 63ull) & ~63ull;
    }

    /* heaps */
    if (qv__card_buf_reserve(s, &S->heaps, (size_t)nq * sizeof(struct qv_topk)) ||
        qv__card_buf_reserve(s, &S->hdist, (size_t)nq * k * sizeof(float)) ||
        qv__card_buf_reserve(s, &S->hids, (size_t)nq * k * sizeof(uint64_t)) ||
        qv__card_buf_reserve(s, &S->results, (size_t)nq * k * sizeof(struct qv_fpga_result)))
        FAIL(QV_FPGA_ST_INTERNAL, (uint64_t)nq * k);
    heaps_reset(S, nq, k);

    struct qv_work_unit *wu = &S->wu;
    memset(wu, 0, sizeof *wu);
    wu->kind = (enum qv_wu_kind)T->kind;
    wu->metric = (enum qv_metric)T->metric;
    wu->dim = T->dim;
    wu->code_size = T->code_size;
    wu->nq = nq;
    wu->queries = S->queries.p;
    wu->qnorms = T->qnorms && T->metric == QV_FPGA_METRIC_L2 &&
                 (T->kind == QV_FPGA_KIND_FLAT || T->kind == QV_FPGA_KIND_F16) ? S->qnorms.p
                                                                              : NULL;
    wu->nlists = nlists;
    wu->lists = wl;
    wu->probe_offsets = S->poff.p;
    wu->probe_lists = plist;
    wu->filter = filter ? S->filter.p : NULL;
    wu->heaps = S->heaps.p;
    S->direct_pq = 0;
    if (T->kind == QV_FPGA_KIND_SQ8) {
        S->sq8.vmin = S->vmin.p;
        S->sq8.vdiff = S->vdiff.p;
        wu->params = &S->sq8;
    } else if (T->kind == QV_FPGA_KIND_PQ) {
        qv_pq_init_borrowed(&S->pq, T->dim, T->pq_m, T->pq_nbits,
                            pqb[0] ? pqb[0]->data : NULL);
        S->pqp.pq = &S->pq;
        S->pqp.coarse = pqb[1] ? pqb[1]->data : NULL;
        S->pqp.nlist = T->pq_ncoarse;
        S->pqp.qtab = N->qtab ? S->qtab.p : NULL;
        S->pqp.ltab = pqb[2] ? pqb[2]->data : NULL;
        S->pqp.res = NULL;
        wu->params = &S->pqp;
        S->direct_pq = N->pt || !N->qtab;
        size_t mp = ((size_t)T->pq_m + 1) & ~(size_t)1;
        if (S->direct_pq &&
            (qv__card_buf_reserve(s, &S->pq_lut, (size_t)T->pq_m * 256 * sizeof(float)) ||
             qv__card_buf_reserve(s, &S->pq_resid, (size_t)T->dim * sizeof(float)) ||
             qv__card_buf_reserve(s, &S->pq_lut8, mp * 16)))
            FAIL(QV_FPGA_ST_INTERNAL, 0);
    }

    /* timing model: hbm and compute terms */
    double hbm = 0, ops = 0;
    const double per_entry = T->kind == QV_FPGA_KIND_PQ ? T->pq_m : T->dim;
    for (uint32_t l = 0; l < nlists; l++) {
        if (!probes[l])
            continue;
        double bytes = (double)codes_min(T, L[l].n) + (blk[2 * l + 1] ? 4.0 * L[l].n : 0.0);
        hbm += ceil((double)probes[l] / s->opts.qtile) * bytes;
        ops += (double)probes[l] * L[l].n * per_entry;
    }
    if (T->kind == QV_FPGA_KIND_PQ) {
        double P = T->nprobes, ksub = (double)(1u << T->pq_nbits), m = T->pq_m;
        if (N->ltab)
            hbm += P * m * ksub * 4;
        if (N->coarse)
            hbm += P * T->dim * 4.0;
        if (N->codebooks) {
            hbm += m * ksub * T->pq_dsub * 4;
            ops += P * m * ksub * T->pq_dsub;
        } else if (N->ltab) {
            ops += P * m * ksub;
        }
    }
    double hbm_ns = hbm * 1000.0 / s->opts.hbm_mbps;
    double compute_ns = ops * 1000.0 / ((double)s->opts.lanes * s->opts.clock_mhz);
    r->device_ns = hbm_ns > compute_ns ? hbm_ns : compute_ns;
}

void qv__card_scan(struct qv_fpga_sim *s, const struct qv_fpga_desc *d, struct card_result *r)
{
    const struct qv_fpga_desc_scan *D = &d->op.scan;
    struct card_scan *S = &s->scan;

    /* 2. descriptor fields */
    if (D->kind > QV_FPGA_KIND_F16)
        FAIL(QV_FPGA_ST_BAD_PARAM, DET_DESC(0x10));
    if (D->metric > QV_FPGA_METRIC_IP)
        FAIL(QV_FPGA_ST_BAD_PARAM, DET_DESC(0x11));
    if (D->rsvd0)
        FAIL(QV_FPGA_ST_BAD_PARAM, DET_DESC(0x12));
    if (D->dim == 0 || D->dim > QV_FPGA_SIM_MAX_DIM)
        FAIL(QV_FPGA_ST_BAD_PARAM, DET_DESC(0x14));
    if (D->k == 0 || D->k > QV_FPGA_MAX_K)
        FAIL(QV_FPGA_ST_BAD_PARAM, DET_DESC(0x18));
    if (D->nq == 0 || D->nq > QV_FPGA_SIM_MAX_NQ)
        FAIL(QV_FPGA_ST_BAD_PARAM, DET_DESC(0x1C));
    if (D->rsvd1)
        FAIL(QV_FPGA_ST_BAD_PARAM, DET_DESC(0x3C));

    /* 3. table and result addresses, then their lengths */
    const uint64_t res_bytes = (uint64_t)D->nq * D->k * sizeof(struct qv_fpga_result);
    if (qv__card_dma_check(s, D->table, sizeof(struct qv_fpga_scan_table), QV_FPGA_ATU_READ, 8) ||
        qv__card_dma_check(s, D->results, D->results_len ? D->results_len : 1,
                           QV_FPGA_ATU_WRITE, 16))
        FAIL(QV_FPGA_ST_BAD_ADDRESS, s->cur.bad_addr);
    if (D->results_len < res_bytes)
        FAIL(QV_FPGA_ST_BAD_LENGTH, DET_DESC(0x30));
    if (D->table_len < sizeof(struct qv_fpga_scan_table))
        FAIL(QV_FPGA_ST_BAD_LENGTH, DET_DESC(0x38));
    if (qv__card_buf_reserve(s, &S->table_b, sizeof(struct qv_fpga_scan_table)))
        FAIL(QV_FPGA_ST_INTERNAL, 0);
    struct qv_fpga_scan_table *T = S->table_b.p;
    if (qv__card_dma_read(s, T, D->table, sizeof *T, 8))
        FAIL(QV_FPGA_ST_BAD_ADDRESS, s->cur.bad_addr);

    /* 4. table fields */
    check_table(D, T, r);
    if (r->status)
        return;
    struct pq_needs N;
    pq_needs(T, &N);

    /* 5. array addresses (all of them before any content is looked at) */
    const uint64_t nq = T->nq, dim = T->dim, nl = T->nlists, np = T->nprobes;
    const uint64_t ksub = 1ull << (T->kind == QV_FPGA_KIND_PQ ? T->pq_nbits : 0);
    const uint64_t mp = ((uint64_t)T->pq_m + 1) & ~1ull;
    const int filter = (T->flags & QV_FPGA_SCAN_F_FILTER) != 0;
    const int flat_l2 = T->metric == QV_FPGA_METRIC_L2 &&
                        (T->kind == QV_FPGA_KIND_FLAT || T->kind == QV_FPGA_KIND_F16);
    const int sq8 = T->kind == QV_FPGA_KIND_SQ8;
    struct arr A[] = {
        { 0x28, T->queries, nq * dim * 4, &S->queries },
        { 0x30, T->qnorms, flat_l2 ? nq * 4 : 0, &S->qnorms },
        { 0x38, T->probe_offsets, (nq + 1) * 4, &S->poff },
        { 0x40, T->probe_lists, np * 4, &S->plist },
        { 0x48, T->lists, nl * sizeof(struct qv_fpga_scan_list), &S->lists },
        { 0x50, T->mask_offsets, filter ? nl * 4 : 0, &S->mask_off },
        { 0x58, T->mask_words, filter ? (uint64_t)T->mask_nwords * 4 : 0, &S->mask_words },
        { 0x60, T->sq8_vmin, sq8 ? dim * 4 : 0, &S->vmin },
        { 0x68, T->sq8_vdiff, sq8 ? dim * 4 : 0, &S->vdiff },
        { 0x90, T->pq_qtab, N.qtab ? nq * T->pq_m * ksub * 4 : 0, &S->qtab },
        { 0x98, T->pq_probe_params, N.pt ? np * sizeof(struct qv_fpga_pq_probe) : 0,
          &S->pparams },
        { 0xA0, T->pq_probe_lut8, N.pt4 ? np * mp * 16 : 0, &S->plut8 },
    };
    const size_t na = sizeof A / sizeof A[0];
    for (size_t i = 0; i < na; i++)
        if (qv__card_dma_check(s, A[i].addr, A[i].bytes, QV_FPGA_ATU_READ, 4))
            FAIL(QV_FPGA_ST_BAD_ADDRESS, s->cur.bad_addr);
    for (size_t i = 0; i < na; i++) {
        if (A[i].bytes > SIZE_MAX / 2 || qv__card_buf_reserve(s, A[i].buf, A[i].bytes + 8))
            FAIL(QV_FPGA_ST_INTERNAL, A[i].bytes);
        if (qv__card_dma_read(s, A[i].buf->p, A[i].addr, A[i].bytes, 4))
            FAIL(QV_FPGA_ST_BAD_ADDRESS, s->cur.bad_addr);
    }
    if (qv__card_buf_reserve(s, &S->probes, nl * 4 + 4) ||
        qv__card_buf_reserve(s, &S->blocks, nl * 2 * sizeof(struct card_block *) + 8) ||
        qv__card_buf_reserve(s, &S->wulists, nl * sizeof(struct qv_wu_list) + 8))
        FAIL(QV_FPGA_ST_INTERNAL, nl);

    /* 6. array contents; 7. handles, then block lengths */
    check_contents(s, T, &N, r);
    if (r->status)
        return;
    struct card_block *pqb[3];
    check_handles(s, T, &N, pqb, r);
    if (r->status)
        return;

    /* execute */
    build_unit(s, T, &N, pqb, r);
    if (r->status)
        return;
    int rc = qv__card_run_kernel(s);
    if (rc == -1 || s->reset_requested)
        return;                     /* stopped, or aborted by a reset */
    if (rc) {
        QV_LOG_RL(QV_LOG_WARN, 1, "fpga sim %s: scan failed on the engine: %s", s->name,
                  qv_errmsg());
        FAIL(QV_FPGA_ST_INTERNAL, (uint64_t)-rc);
    }
    if (s->ecc_pending)
        return;                     /* the completion becomes ECC_ERROR: no results */

    /* results: sorted heaps -> nq x k entries, one DMA */
    struct qv_topk *h = S->heaps.p;
    struct qv_fpga_result *out = S->results.p;
    for (uint32_t q = 0; q < T->nq; q++) {
        qv_topk_sort(&h[q]);
        for (uint32_t i = 0; i < T->k; i++) {
            struct qv_fpga_result *o = &out[(size_t)q * T->k + i];
            uint64_t id = h[q].ids[i];
            if (i < h[q].n && id != QV_ID_NONE) {
                o->dist = h[q].dist[i];
                o->handle = (uint32_t)(id >> 32);
                o->entry = (uint32_t)id;
            } else {
                o->dist = INFINITY;
                o->handle = QV_FPGA_NONE;
                o->entry = QV_FPGA_NONE;
            }
            o->rsvd = 0;
        }
    }
    if (qv__card_dma_write(s, D->results, out, res_bytes, 16))
        FAIL(QV_FPGA_ST_BAD_ADDRESS, s->cur.bad_addr);
    r->result = T->nq * T->k;
}

/* ------------------------------------------------------------------ */
/* Kernel thread                                                        */
/* ------------------------------------------------------------------ */

/* The card's own PQ scanner: per probe, the table t and bias b of the
 * contract (with PROBE_TABLES, the host's bias and, for nbits 4, its byte
 * table), then the CPU kernels' scan8 / scan4 into the query's heap. */
static int pq_direct(struct qv_fpga_sim *s)
{
    struct card_scan *S = &s->scan;
    const struct qv_fpga_scan_table *T = S->table_b.p;
    const struct qv_work_unit *wu = &S->wu;
    const struct qv_pq_params *pp = &S->pqp;
    const struct qv_dist_ops *ops = qv_kernels();
    const struct qv_pq_kernels *K = ops->pq;
    const uint32_t m = T->pq_m, ksub = 1u << T->pq_nbits, dim = T->dim;
    const size_t tsz = (size_t)m * ksub, mp = ((size_t)m + 1) & ~(size_t)1;
    const int pt = (T->flags & QV_FPGA_SCAN_F_PROBE_TABLES) != 0;
    const struct qv_fpga_pq_probe *prm = S->pparams.p;
    const uint8_t *plut8 = S->plut8.p;
    float *lut = S->pq_lut.p, *resid = S->pq_resid.p;
    uint8_t *lut8 = S->pq_lut8.p;
    struct qv_topk *heaps = wu->heaps;

    for (uint32_t q = 0; q < wu->nq; q++) {
        const float *qv = wu->queries + (size_t)q * dim;
        for (uint32_t p = wu->probe_offsets[q]; p < wu->probe_offsets[q + 1]; p++) {
            const struct qv_wu_list *L = &wu->lists[wu->probe_lists[p]];
            if (L->n == 0)
                continue;
            struct qv_pq_scan_args a = {
                .codes = L->codes, .n = L->n, .m = m, .lut = lut, .lut8 = lut8,
                .ids = L->ids, .rows = L->rows, .filter = wu->filter, .heap = &heaps[q],
            };
            if (pt && T->pq_nbits == 4) {
                memcpy(lut8, plut8 + (size_t)p * mp * 16, mp * 16);   /* 64-aligned */
                a.scale = prm[p].scale;
                a.bias = prm[p].bias;
                K->scan4(&a);
                continue;
            }
            const float *c = pp->coarse ? pp->coarse + (size_t)L->list_no * dim : NULL;
            const float *t2 = NULL, *t3;
            float bias;
            if (wu->metric == QV_METRIC_L2 && pp->ltab) {
                t2 = pp->ltab + (size_t)L->list_no * tsz;
                t3 = pp->qtab + (size_t)q * tsz;
                bias = pt ? prm[p].bias : ops->dist[QV_METRIC_L2][QV_ELEM_F32](qv, c, dim);
            } else if (wu->metric == QV_METRIC_L2) {
                for (uint32_t i = 0; i < dim; i++)
                    resid[i] = qv[i] - c[i];
                K->lut_f32(resid, pp->pq->cents, m, ksub, pp->pq->dsub, QV_METRIC_L2, lut);
                t3 = lut;
                bias = pt ? prm[p].bias : 0.0f;
            } else {
                t3 = pp->qtab + (size_t)q * tsz;
                bias = pt ? prm[p].bias : ops->dist[QV_METRIC_IP][QV_ELEM_F32](qv, c, dim);
            }
            if (T->pq_nbits == 4) {
                float qbias;
                K->lut_quantize4(t2, t3, m, lut8, &a.scale, &qbias);
                a.bias = bias + qbias;
                K->scan4(&a);
            } else {
                if (t2) {
                    for (size_t e = 0; e < tsz; e++)
                        lut[e] = t2[e] + t3[e];
                } else {
                    a.lut = t3;
                }
                a.bias = bias;
                K->scan8(&a);
            }
        }
    }
    return 0;
}

int qv__card_kernel_job(struct qv_fpga_sim *s)
{
    struct card_scan *S = &s->scan;
    if (S->direct_pq)
        return pq_direct(s);
    int rc = qv_engine_run(s->engine, &S->wu);
    if (rc && s->engine != s->cpu) {
        if (rc != QV_ENOTSUP && rc != QV_ENOMEM) {
            QV_WARN("fpga sim %s: the OpenCL bitstream failed (%s); the card runs the CPU "
                    "engine from now on", s->name, qv_errmsg());
            s->engine = s->cpu;
        }
        heaps_reset(S, S->wu.nq, ((const struct qv_fpga_scan_table *)S->table_b.p)->k);
        rc = qv_engine_run(s->cpu, &S->wu);
    }
    return rc;
}

void qv__card_scan_fini(struct qv_fpga_sim *s)
{
    struct card_scan *S = &s->scan;
    struct card_buf *bufs[] = {
        &S->table_b, &S->queries, &S->qnorms, &S->poff, &S->plist, &S->lists, &S->mask_off,
        &S->mask_words, &S->vmin, &S->vdiff, &S->qtab, &S->pparams, &S->plut8, &S->wulists,
        &S->blocks, &S->probes, &S->rows, &S->filter, &S->heaps, &S->hdist, &S->hids,
        &S->results, &S->pq_lut, &S->pq_resid, &S->pq_lut8,
    };
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
        qv_free(bufs[i]->p);
        bufs[i]->p = NULL;
        bufs[i]->cap = 0;
    }
}
