/*
 * finite.h - where the first NaN or infinity of a float array is: the
 * check every entry point runs on vectors from outside (the protocol's
 * decoder, the query service's submit, the node's UPSERT).
 *
 * The common case (all finite) is one branch-free pass that vectorises:
 * (bits & exponent) + one exponent step carries into bit 31 exactly when
 * the exponent is all ones (Inf, NaN).  Only then a second pass finds
 * the index.  Words are read with memcpy, so any alignment is fine.
 * O(n); no allocation; thread-safe.
 */
#ifndef QUIVER_FINITE_H
#define QUIVER_FINITE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* The index of the first NaN or +-Inf among v[0..n), or n when none. */
static inline size_t qv_first_nonfinite(const float *v, size_t n)
{
    const unsigned char *b = (const unsigned char *)v;
    uint32_t acc = 0, w;

    for (size_t i = 0; i < n; i++) {
        memcpy(&w, b + 4 * i, 4);
        acc |= (w & 0x7f800000u) + 0x00800000u;
    }
    if (!(acc & 0x80000000u))
        return n;
    for (size_t i = 0; i < n; i++) {
        memcpy(&w, b + 4 * i, 4);
        if ((w & 0x7f800000u) == 0x7f800000u)
            return i;
    }
    return n;
}

#endif
