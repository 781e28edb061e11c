/*
 * dp_csum_avx2.c - the bulk of the Internet checksum with AVX2 (compiled
 * with -mavx2 alone; dp_pkt.c calls it only when the CPU has AVX2).
 *
 * The sum is the one qv_dp_csum_add's scalar loop computes: native-order
 * 32-bit words added into 64-bit accumulators (one's complement folding
 * and the byte swap to network order happen in dp_pkt.c).  Here each
 * 32-byte block's eight words are widened to 64-bit lanes (unpack with
 * zero) and added to two accumulators; a 64-bit lane cannot overflow
 * below 2^32 blocks.  O(n), no allocation; any alignment (unaligned
 * loads).
 */
#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>

uint64_t qv__dp_csum_bulk_avx2(const uint8_t *p, size_t nblocks);

uint64_t qv__dp_csum_bulk_avx2(const uint8_t *p, size_t nblocks)
{
    const __m256i zero = _mm256_setzero_si256();
    __m256i a0 = zero, a1 = zero;

    for (size_t i = 0; i < nblocks; i++) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(const void *)(p + 32 * i));
        a0 = _mm256_add_epi64(a0, _mm256_unpacklo_epi32(v, zero));
        a1 = _mm256_add_epi64(a1, _mm256_unpackhi_epi32(v, zero));
    }
    a0 = _mm256_add_epi64(a0, a1);
    __m128i s = _mm_add_epi64(_mm256_castsi256_si128(a0), _mm256_extracti128_si256(a0, 1));
    return (uint64_t)_mm_cvtsi128_si64(s) + (uint64_t)_mm_extract_epi64(s, 1);
}
