/*
 * timeutil.h - clocks.  qv_now_ns() is CLOCK_MONOTONIC in nanoseconds (a
 * vDSO call, no syscall on Linux x86-64); qv_rdtsc() reads the TSC for
 * cycle counts.  Both cannot fail and are thread-safe.
 */
#ifndef QUIVER_TIMEUTIL_H
#define QUIVER_TIMEUTIL_H

#include <stdint.h>
#include <time.h>

static inline int64_t qv_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static inline uint64_t qv_rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ __volatile__("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

#endif
