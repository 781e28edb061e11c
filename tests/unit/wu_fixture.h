/*
 * wu_fixture.h - hand-built work units for the engine suites (see
 * wu_fixture.c).  Test code: aborts nothing, asserts through CUnit.
 */
#ifndef QV_WU_FIXTURE_H
#define QV_WU_FIXTURE_H

#include <stdint.h>

#include "quiver/engine.h"
#include "quiver/pq.h"
#include "quiver/sq8.h"
#include "quiver/topk.h"

/* Deterministic random numbers (one sequence per process). */
uint64_t rnd(void);
float rndf(void);

struct unit {
    struct qv_work_unit wu;
    struct qv_wu_list *lists;
    float *queries, *qnorms;
    uint32_t *poff, *plist;
    uint64_t *filter;
    float *x;                   /* all vectors, row-major (n x dim) */
    uint32_t n;
    /* SQ8 */
    float *vmin, *vdiff;
    struct qv_sq8_params sq8;
    /* PQ */
    struct qv_pq pq;
    float *coarse, *qtab, *ltab;
    struct qv_pq_params pqp;
};

/* Split n random vectors over nlists lists (sizes vary, some may be
 * empty), queries random, each query probing nprobe distinct lists.
 * kind FLAT, F16 or SQ8 (PQ: unit_make_pq). */
void unit_make(struct unit *u, enum qv_wu_kind kind, enum qv_metric metric, uint32_t dim,
               uint32_t n, uint32_t nlists, uint32_t nq, uint32_t nprobe, int with_filter);
/* A QV_WU_PQ unit: residual codes of m sub-quantisers of nbits bits,
 * query tables, with or without list tables (L2). */
void unit_make_pq(struct unit *u, enum qv_metric metric, uint32_t dim, uint32_t m,
                  uint32_t nbits, uint32_t n, uint32_t nlists, uint32_t nq, uint32_t nprobe,
                  int with_filter, int with_ltab);
/* Tell engine e that u's lists and tables are about to be freed. */
void unit_forget(struct qv_engine *e, struct unit *u);
void unit_free(struct unit *u);

struct heaps {
    struct qv_topk *h;
    float *d;
    uint64_t *id;
};

void heaps_init(struct heaps *H, uint32_t nq, uint32_t k);
void heaps_fini(struct heaps *H);
/* Run u on engine e into fresh heaps (sorted afterwards).  Returns the
 * unit's status or submit's error. */
int run_into(struct qv_engine *e, struct unit *u, struct heaps *H, uint32_t k);
/* Compare rank by rank (distances within tol relative; ids equal except
 * near-ties).  Returns the number of mismatches (the first printed). */
int compare(const struct heaps *a, const struct heaps *b, uint32_t nq, uint32_t k,
            float tol, const char *what);

#endif
