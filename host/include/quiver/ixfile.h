/*
 * ixfile.h - the container format of every index file.
 *
 * An index file is a header, a section table and sections, laid out so
 * that mapping the file IS loading the index: each section starts on a
 * 4096-byte boundary, so arrays inside are aligned as in memory and the
 * index points straight into the mapping (no copy, no pointer fix-ups).
 *
 *   OFFSET  SIZE  MEANING (header, little-endian)
 *   0       8     magic "QVIXFILE"
 *   8       4     format version (QV_IXFILE_VERSION)
 *   12      4     index type (enum qv_ix_type)
 *   16      8     file size in bytes
 *   24      4     number of sections
 *   28      4     reserved (0)
 *   32      24    reserved (0)
 *   56      4     CRC32C of bytes 0..55 and the section table
 *   60      4     reserved (0)
 *   64      32*N  section table: per section
 *                   +0  u32 tag (fourcc chosen by the index)
 *                   +4  u32 reserved
 *                   +8  u64 offset (multiple of 4096)
 *                   +16 u64 size in bytes
 *                   +24 u32 CRC32C of the section's bytes
 *                   +28 u32 reserved
 *
 * Writing goes to path.tmp, fsync, rename, fsync of the directory, so a
 * crash leaves the old file or the new one.  Opening checks magic,
 * version, type, size, the table CRC and every section's CRC and bounds;
 * any mismatch is QV_ECORRUPT (or QV_EFORMAT for a wrong magic/version)
 * with a message naming the file and what failed.
 */
#ifndef QUIVER_IXFILE_H
#define QUIVER_IXFILE_H

#include <stddef.h>
#include <stdint.h>

#include "quiver/crc32c.h"

#define QV_IXFILE_VERSION 1
#define QV_IXFILE_MAX_SECTIONS 64
#define QV_IXFILE_ALIGN 4096

enum qv_ix_type {
    QV_IX_FLAT = 1,
    QV_IX_IVF_FLAT = 2,
    QV_IX_IVF_SQ8 = 3,
    QV_IX_IVF_PQ = 4,
    QV_IX_HNSW = 5,
    QV_IX_SEGMENT = 6,          /* a node segment's rows (host/server/node_store.c) */
};

#define QV_FOURCC(a, b, c, d) \
    ((uint32_t)(a) | (uint32_t)(b) << 8 | (uint32_t)(c) << 16 | (uint32_t)(d) << 24)

/* Writer: collect sections (borrowed pointers, until commit/abort). */
struct qv_ixfile_writer {
    char path[4096];
    uint32_t type;
    uint32_t nsections;
    struct {
        uint32_t tag;
        const void *data;
        uint64_t size;
    } sec[QV_IXFILE_MAX_SECTIONS];
};

void qv_ixfile_writer_init(struct qv_ixfile_writer *w, const char *path, enum qv_ix_type type);
/* Add a section; 0 or QV_ENOSPC (too many) or QV_EEXIST (tag repeated). */
int qv_ixfile_add(struct qv_ixfile_writer *w, uint32_t tag, const void *data, uint64_t size);
/* Write everything atomically.  0 or QV_EIO (message names the file).
 * The bytes go with O_DIRECT where the filesystem takes it, else through
 * the page cache (ixfile.c, "How the bytes go to disk"). */
int qv_ixfile_commit(struct qv_ixfile_writer *w);

/* 0: every later commit in the process goes through the page cache (for
 * tests, and filesystems whose O_DIRECT misbehaves); 1 (the default):
 * O_DIRECT first.  Not synchronised with commits in flight. */
void qv_ixfile_set_direct(int on);

/* Reader: the whole file mapped read-only. */
struct qv_ixfile {
    const uint8_t *map;
    size_t size;
    uint32_t type;
    uint32_t nsections;
    char path[4096];
};

/* Map and verify path, expecting `type`.  Returns 0, QV_ENOENT/QV_EIO
 * (cannot open or map), QV_EFORMAT (not an index file, other version, or
 * another index type), QV_ECORRUPT (size, table or section checksum or
 * bounds wrong).  Every message names the file. */
int qv_ixfile_open(struct qv_ixfile *f, const char *path, enum qv_ix_type type);

/* Section with tag: pointer into the mapping and its size, or NULL (and
 * *size = 0) when absent. */
const void *qv_ixfile_section(const struct qv_ixfile *f, uint32_t tag, uint64_t *size);

/* Unmap; safe on a zeroed struct. */
void qv_ixfile_close(struct qv_ixfile *f);

#endif
