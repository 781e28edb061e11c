/*
 * kernels_int.h - private glue between the per-ISA kernel files and the
 * dispatcher (dispatch.c).  Each ISA file defines its fill function; the
 * dispatcher calls those the CPU can run, once, at qv_kernels_init().
 *
 *   dist_<isa>.c  fills dist[][], normalize_f32, f32_to_f16, f16_to_f32
 *   scan_<isa>.c  defines qv__scan_f32_<isa>, the fused batched scan
 */
#ifndef QV_KERNELS_INT_H
#define QV_KERNELS_INT_H

#include "quiver/dist.h"

void qv__dist_fill_ref(struct qv_dist_ops *ops);
void qv__dist_fill_avx2(struct qv_dist_ops *ops);
void qv__dist_fill_avx512(struct qv_dist_ops *ops);

void qv__scan_f32_ref(const struct qv_scan_args *args);
void qv__scan_f32_avx2(const struct qv_scan_args *args);
void qv__scan_f32_avx512(const struct qv_scan_args *args);

/* Encoded-list kernels of each level: struct qv_sq8_kernels is defined in
 * quiver/sq8.h (sq8_<isa>.c), struct qv_pq_kernels in quiver/pq.h
 * (pq_<isa>.c). */
struct qv_sq8_kernels;
struct qv_pq_kernels;
extern const struct qv_sq8_kernels qv__sq8_kernels_ref;
extern const struct qv_sq8_kernels qv__sq8_kernels_avx2;
extern const struct qv_sq8_kernels qv__sq8_kernels_avx512;
extern const struct qv_pq_kernels qv__pq_kernels_ref;
extern const struct qv_pq_kernels qv__pq_kernels_avx2;
extern const struct qv_pq_kernels qv__pq_kernels_avx512;

#endif
