/*
 * wu_fixture.c - work units built by hand for the engine suites
 * (test_opencl.c, test_fpga.c): random lists of every kind with probes,
 * filters, SQ8 and PQ parameters, heaps, a run helper and a rank-by-rank
 * comparison that tolerates near-ties.  The engines' suites compare an
 * engine with the CPU engine on these units.  See wu_fixture.h.
 */
#include <CUnit/Basic.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "quiver/alloc.h"
#include "quiver/dist.h"
#include "quiver/kmeans.h"
#include "wu_fixture.h"

/* ---- deterministic random numbers ---- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

uint64_t rnd(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

float rndf(void) { return (float)(rnd() >> 40) / (float)(1u << 24); }

/* ---- a work unit built by hand ---- */


/* Split n random vectors over nlists lists (sizes vary, some may be
 * empty), queries random, each query probing nprobe distinct lists. */
void unit_make(struct unit *u, enum qv_wu_kind kind, enum qv_metric metric,
                      uint32_t dim, uint32_t n, uint32_t nlists, uint32_t nq,
                      uint32_t nprobe, int with_filter)
{
    memset(u, 0, sizeof *u);
    u->n = n;
    u->x = qv_malloc((size_t)n * dim * sizeof(float), QV_MEM_TEST);
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
    /* list boundaries: random cut points */
    uint32_t *cut = qv_malloc((nlists + 1) * sizeof(uint32_t), QV_MEM_TEST);
    cut[0] = 0;
    cut[nlists] = n;
    for (uint32_t l = 1; l < nlists; l++)
        cut[l] = (uint32_t)(rnd() % (n + 1));
    for (uint32_t a = 1; a < nlists; a++)          /* sort */
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
            ids[i] = 1000000 + (uint64_t)(cut[l] + i) * 7919 % 1000003;
            rows[i] = cut[l] + i;
        }
        L->ids = ids;
        L->rows = rows;
        if (kind == QV_WU_FLAT || kind == QV_WU_F16) {
            size_t groups = (ln + QV_BLOCK - 1) / QV_BLOCK;
            float *blk = qv_calloc(groups * QV_BLOCK * dim + 1, sizeof(float), QV_MEM_TEST);
            float *nrm = qv_malloc((ln + 1) * sizeof(float), QV_MEM_TEST);
            if (kind == QV_WU_F16)      /* the values float16 holds */
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
                uint16_t *h = qv_calloc(groups * QV_BLOCK * dim + 1, sizeof(uint16_t),
                                        QV_MEM_TEST);
                for (size_t i = 0; i < groups * QV_BLOCK * dim; i++)
                    h[i] = qv_f32_to_f16(blk[i]);
                qv_free(blk);
                L->codes = h;
            } else {
                L->codes = blk;
            }
            L->norms = nrm;
        } else if (kind == QV_WU_SQ8) {
            uint8_t *c = qv_malloc((size_t)ln * dim + 1, QV_MEM_TEST);
            qv_sq8_encode(lx, ln, dim, u->vmin, u->vdiff, c, dim);
            L->codes = c;
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

/* PQ lists: residual codes of the unit's vectors against random coarse
 * centroids, codebooks trained on the residuals; qtab (and ltab when
 * with_ltab) as the IVF-PQ index computes them. */
void unit_make_pq(struct unit *u, enum qv_metric metric, uint32_t dim, uint32_t m,
                         uint32_t nbits, uint32_t n, uint32_t nlists, uint32_t nq,
                         uint32_t nprobe, int with_filter, int with_ltab)
{
    unit_make(u, QV_WU_PQ, metric, dim, n, nlists, nq, nprobe, with_filter);
    CU_ASSERT_EQUAL_FATAL(qv_pq_init(&u->pq, dim, m, nbits), 0);
    u->coarse = qv_malloc((size_t)nlists * dim * sizeof(float), QV_MEM_TEST);
    for (size_t i = 0; i < (size_t)nlists * dim; i++)
        u->coarse[i] = rndf() * 0.5f;
    float *res = qv_malloc((size_t)n * dim * sizeof(float), QV_MEM_TEST);
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
        if (nbits == 4) {
            uint8_t *fs = qv_calloc(qv_pq_fs_size(L->n, m) + 1, 1, QV_MEM_TEST);
            qv_pq_fs_pack(fs, codes, L->n, m);
            qv_free(codes);
            codes = fs;
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
    u->pqp.res = NULL;
    u->wu.params = &u->pqp;
    u->wu.code_size = u->pq.code_size;
}

/* The documented duty of an owner freeing memory an engine may hold a
 * copy of (a later allocation at the same address and size would
 * otherwise be served the stale copy). */
void unit_forget(struct qv_engine *e, struct unit *u)
{
    for (uint32_t l = 0; l < u->wu.nlists; l++) {
        qv_engine_forget(e, u->lists[l].codes);
        qv_engine_forget(e, u->lists[l].norms);
    }
    if (u->wu.kind == QV_WU_PQ) {
        qv_engine_forget(e, u->pq.cents);
        qv_engine_forget(e, u->coarse);
        qv_engine_forget(e, u->ltab);
    }
}

void unit_free(struct unit *u)
{
    for (uint32_t l = 0; l < u->wu.nlists; l++) {
        qv_free((void *)u->lists[l].codes);
        qv_free((void *)u->lists[l].norms);
        qv_free((void *)u->lists[l].ids);
        qv_free((void *)u->lists[l].rows);
    }
    qv_free(u->lists);
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


void heaps_init(struct heaps *H, uint32_t nq, uint32_t k)
{
    H->h = qv_malloc(nq * sizeof *H->h, QV_MEM_TEST);
    H->d = qv_malloc((size_t)nq * k * sizeof(float), QV_MEM_TEST);
    H->id = qv_malloc((size_t)nq * k * sizeof(uint64_t), QV_MEM_TEST);
    for (uint32_t q = 0; q < nq; q++)
        qv_topk_init(&H->h[q], k, H->d + (size_t)q * k, H->id + (size_t)q * k);
}

void heaps_fini(struct heaps *H)
{
    qv_free(H->h);
    qv_free(H->d);
    qv_free(H->id);
}

/* Run u on engine e into fresh heaps (sorted afterwards).  Returns the
 * unit's status or submit's error. */
int run_into(struct qv_engine *e, struct unit *u, struct heaps *H, uint32_t k)
{
    heaps_init(H, u->wu.nq, k);
    u->wu.heaps = H->h;
    u->wu.status = 1;
    int rc = qv_engine_run(e, &u->wu);
    for (uint32_t q = 0; q < u->wu.nq; q++)
        qv_topk_sort(&H->h[q]);
    return rc;
}

/* Compare rank by rank.  Returns the number of mismatches (printed). */
int compare(const struct heaps *a, const struct heaps *b, uint32_t nq, uint32_t k,
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
                    fprintf(stderr, "\n  %s: q %u rank %u: dist %.7g vs %.7g (ids %llu %llu)",
                            what, q, i, da[i], db[i], (unsigned long long)ia[i],
                            (unsigned long long)ib[i]);
                continue;
            }
            if (ia[i] == ib[i])
                continue;
            /* ids differ: only allowed for a near-tie at this rank */
            int tie = 0;
            for (uint32_t j = 0; j < k && !tie; j++)
                tie = j != i && fabsf(da[j] - da[i]) <= t;
            /* or at the boundary: the other id may be just past rank k */
            tie |= i == k - 1 || fabsf(da[i] - db[i]) <= t;
            if (!tie) {
                if (bad++ < 5)
                    fprintf(stderr, "\n  %s: q %u rank %u: id %llu vs %llu (dist %.7g)",
                            what, q, i, (unsigned long long)ia[i],
                            (unsigned long long)ib[i], da[i]);
            }
        }
    }
    return bad;
}
