/*
 * vecio.h - fvecs / ivecs / bvecs files (the TEXMEX formats), zero-copy.
 *
 * Each record is a little-endian int32 dimension d followed by d elements:
 * float32 (fvecs), int32 (ivecs) or uint8 (bvecs).  Files are mapped with
 * mmap (read-only, MAP_PRIVATE); rows are returned as pointers into the
 * mapping, so reading a 1 GB file costs no copy.  Opening validates the
 * whole file's framing in O(n) over the headers: every record must have the
 * same d (1 <= d <= QV_VECIO_MAX_DIM) and the size must be a whole number of
 * records, so a truncated or inconsistent file is refused with a message
 * naming the file, the record and the byte offset.
 */
#ifndef QUIVER_VECIO_H
#define QUIVER_VECIO_H

#include <stddef.h>
#include <stdint.h>

#define QV_VECIO_MAX_DIM 65536

enum qv_vec_kind {
    QV_VEC_AUTO = 0,    /* from the file name's extension */
    QV_VEC_FVECS,
    QV_VEC_IVECS,
    QV_VEC_BVECS,
};

struct qv_vecfile {
    const uint8_t *map;     /* the whole mapping (NULL for an empty file) */
    size_t map_size;
    enum qv_vec_kind kind;
    uint32_t dim;
    uint64_t n;             /* records */
    size_t elem_size;       /* 4, 4 or 1 */
    size_t stride;          /* bytes per record: 4 + dim * elem_size */
    char path[4096];
};

/* Open and validate path.  Returns 0, or QV_ENOENT / QV_EIO (cannot open or
 * map), QV_EFORMAT (bad framing: message names file, record, offset),
 * QV_EINVAL (unknown extension with QV_VEC_AUTO).  An empty file is valid
 * with n = 0 and dim = 0.  On error vf is left closed. */
int qv_vecfile_open(struct qv_vecfile *vf, const char *path, enum qv_vec_kind kind);

/* Pointer to record i's elements (not its header).  i < vf->n.  O(1). */
static inline const void *qv_vecfile_row(const struct qv_vecfile *vf, uint64_t i)
{
    return vf->map + i * vf->stride + 4;
}

/* Copy rows [first, first + count) into dst as count * dim densely packed
 * float32, converting from int32/uint8 as needed.  Returns 0 or QV_ERANGE. */
int qv_vecfile_read_f32(const struct qv_vecfile *vf, uint64_t first, uint64_t count, float *dst);

/* Unmap.  Safe on a zeroed or already closed struct. */
void qv_vecfile_close(struct qv_vecfile *vf);

/* Write n records of dim elements (densely packed in data) to path in the
 * given kind (FVECS: float data; IVECS: int32 data; BVECS: uint8 data),
 * through a temporary file renamed into place.  Returns 0, QV_EINVAL,
 * QV_EIO (message names the file). */
int qv_vecfile_write(const char *path, enum qv_vec_kind kind, uint32_t dim,
                     uint64_t n, const void *data);

#endif
