/*
 * pq_int.h - small helpers shared by the PQ kernel files (pq_ref.c,
 * pq_avx2.c, pq_avx512.c).  Static inline, so each ISA file compiles them
 * with its own flags; fmaf is correctly rounded at every level, so the
 * thresholds agree bit for bit.
 */
#ifndef QV_PQ_INT_H
#define QV_PQ_INT_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "quiver/pq.h"

/* Row i of the scanned list passes the unit's filter (or there is none). */
static inline int qv__pq_eligible(const struct qv_pq_scan_args *a, size_t i)
{
    if (!a->filter)
        return 1;
    uint32_t r = a->rows[i];
    return (a->filter[r >> 6] >> (r & 63)) & 1;
}

/* Largest integer sum T in [0, 65535] with fmaf(T, scale, bias) <= w (the
 * heap's worst or the reservoir's bound), or -1 when none. */
static inline int qv__pq_threshold(float w, float scale, float bias)
{
    if (!(bias <= w))
        return -1;
    if (fmaf(65535.0f, scale, bias) <= w)
        return 65535;
    float x = (w - bias) / scale;
    long t = x < 0.0f ? 0 : x > 65534.0f ? 65534 : (long)x;
    while (t < 65535 && fmaf((float)(t + 1), scale, bias) <= w)
        t++;
    while (t > 0 && fmaf((float)t, scale, bias) > w)
        t--;
    return (int)t;
}

#endif
