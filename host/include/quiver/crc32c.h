/*
 * crc32c.h - CRC-32C (Castagnoli, polynomial 0x1EDC6F41 reflected), the
 * checksum of index files and, later, WAL records.  Uses the SSE4.2 crc32
 * instruction (8 bytes per step) when the CPU has it, else a slicing-by-8
 * table.  qv_crc32c(0, data, len) is the standard CRC-32C of the bytes
 * (check value of "123456789": 0xE3069283); pass a previous result as crc
 * to continue over more bytes.  Pure, thread-safe, cannot fail.
 */
#ifndef QUIVER_CRC32C_H
#define QUIVER_CRC32C_H

#include <stddef.h>
#include <stdint.h>

uint32_t qv_crc32c(uint32_t crc, const void *data, size_t len);

/* The table version regardless of the CPU (for tests). */
uint32_t qv_crc32c_sw(uint32_t crc, const void *data, size_t len);

#endif
