/*
 * cpu_int.h - private glue of the CPU engine (engine_cpu.c) and its
 * per-encoding list scanners (cpu_flat.c, cpu_sq8.c, cpu_pq.c).
 *
 * The engine walks a work unit list by list or query by query (its
 * choice) and, for each (list, group of queries probing it), calls the
 * scanner of the unit's kind.  A scanner:
 *   - scans wu->lists[li] for the queries qidx[0..nq) (indices into the
 *     unit's queries), merging candidates into heaps[qidx[i]];
 *   - honours wu->filter through the list's rows[] (skip a row whose bit
 *     is clear);
 *   - uses only `scratch` (scratch_bytes(wu) bytes, 64-byte aligned, the
 *     calling worker's own) for temporary memory: no allocation, no locks.
 */
#ifndef QV_CPU_INT_H
#define QV_CPU_INT_H

#include <stddef.h>
#include <stdint.h>

#include "quiver/engine.h"

struct qv_topk;

typedef void (*qv_cpu_scan_fn)(const struct qv_work_unit *wu, uint32_t li,
                               const uint32_t *qidx, uint32_t nq,
                               struct qv_topk *heaps, void *scratch);
typedef size_t (*qv_cpu_scratch_fn)(const struct qv_work_unit *wu);

void qv__cpu_scan_flat(const struct qv_work_unit *wu, uint32_t li, const uint32_t *qidx,
                       uint32_t nq, struct qv_topk *heaps, void *scratch);
size_t qv__cpu_scratch_flat(const struct qv_work_unit *wu);

void qv__cpu_scan_f16(const struct qv_work_unit *wu, uint32_t li, const uint32_t *qidx,
                      uint32_t nq, struct qv_topk *heaps, void *scratch);
size_t qv__cpu_scratch_f16(const struct qv_work_unit *wu);

void qv__cpu_scan_sq8(const struct qv_work_unit *wu, uint32_t li, const uint32_t *qidx,
                      uint32_t nq, struct qv_topk *heaps, void *scratch);
size_t qv__cpu_scratch_sq8(const struct qv_work_unit *wu);

void qv__cpu_scan_pq(const struct qv_work_unit *wu, uint32_t li, const uint32_t *qidx,
                     uint32_t nq, struct qv_topk *heaps, void *scratch);
size_t qv__cpu_scratch_pq(const struct qv_work_unit *wu);

#endif
