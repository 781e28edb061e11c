/*
 * vecio.c - fvecs / ivecs / bvecs files, mapped zero-copy (vecio.h).
 *
 * File layout (TEXMEX), repeated n times, little-endian:
 *
 *   OFFSET  SIZE            MEANING
 *   0       4               int32 d, the dimension (same in every record)
 *   4       d * elem_size   elements: float32 (fvecs), int32 (ivecs),
 *                           uint8 (bvecs)
 *
 * Opening maps the file read-only and walks the record headers once,
 * O(n): a 1 GB file costs n four-byte reads, not a copy.  The first record
 * fixes d; any record with another d, a d outside 1..QV_VECIO_MAX_DIM, or a
 * final record cut short refuses the file with QV_EFORMAT naming the file,
 * the record number and its byte offset.
 *
 * Writing stages records through writev() (header and elements as separate
 * iovecs, so nothing is copied or allocated) into "path.tmp", fsyncs it,
 * renames it over path and fsyncs the directory: a reader sees the old file
 * or the whole new one, never a torn one.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "quiver/errors.h"
#include "quiver/vecio.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "vecio.c reads little-endian files in place: a little-endian host is required"
#endif

#define QV_VECIO_IOV_BATCH 512      /* records per writev (2 iovecs each) */

static const char *kind_ext(enum qv_vec_kind kind)
{
    switch (kind) {
    case QV_VEC_FVECS: return "fvecs";
    case QV_VEC_IVECS: return "ivecs";
    case QV_VEC_BVECS: return "bvecs";
    default:           return "?";
    }
}

static size_t kind_elem_size(enum qv_vec_kind kind)
{
    return kind == QV_VEC_BVECS ? 1 : 4;
}

/* The kind named by path's extension, or QV_VEC_AUTO when none fits. */
static enum qv_vec_kind kind_from_path(const char *path)
{
    const char *dot = strrchr(path, '.');

    if (dot == NULL || strchr(dot, '/') != NULL)
        return QV_VEC_AUTO;
    if (strcasecmp(dot, ".fvecs") == 0)
        return QV_VEC_FVECS;
    if (strcasecmp(dot, ".ivecs") == 0)
        return QV_VEC_IVECS;
    if (strcasecmp(dot, ".bvecs") == 0)
        return QV_VEC_BVECS;
    return QV_VEC_AUTO;
}

static int resolve_kind(const char *path, enum qv_vec_kind *kind)
{
    if (*kind == QV_VEC_AUTO)
        *kind = kind_from_path(path);
    if (*kind == QV_VEC_FVECS || *kind == QV_VEC_IVECS ||
        *kind == QV_VEC_BVECS)
        return 0;
    return qv_seterr(QV_EINVAL, "%s: cannot tell the vector format from the "
                     "name; use a .fvecs, .ivecs or .bvecs extension or pass "
                     "the kind", path);
}

static int32_t read_dim(const uint8_t *p)
{
    int32_t d;

    memcpy(&d, p, sizeof(d));
    return d;
}

/* Walk every record header; the map is size bytes, size > 0. */
static int validate(struct qv_vecfile *vf)
{
    const size_t size = vf->map_size;
    uint64_t i;
    size_t off;
    int32_t d;

    if (size < 4)
        return qv_seterr(QV_EFORMAT, "%s: record 0 at byte 0 is truncated: "
                         "%zu of at least 4 bytes present (a file of %zu "
                         "bytes is too short for a %s record)", vf->path,
                         size, size, kind_ext(vf->kind));
    d = read_dim(vf->map);
    if (d < 1 || d > QV_VECIO_MAX_DIM)
        return qv_seterr(QV_EFORMAT, "%s: record 0 at byte 0 has dimension "
                         "%d: expected 1..%d (is this really a %s file?)",
                         vf->path, d, QV_VECIO_MAX_DIM, kind_ext(vf->kind));
    vf->dim = (uint32_t)d;
    vf->stride = 4 + (size_t)d * vf->elem_size;

    for (i = 0, off = 0; off < size; i++, off += vf->stride) {
        size_t left = size - off;

        if (left >= 4) {
            d = read_dim(vf->map + off);
            if ((uint32_t)d != vf->dim)
                return qv_seterr(QV_EFORMAT, "%s: record %llu at byte %zu has "
                                 "dimension %d, but record 0 has %u; every "
                                 "record must have the same dimension",
                                 vf->path, (unsigned long long)i, off, d,
                                 vf->dim);
        }
        if (left < vf->stride)
            return qv_seterr(QV_EFORMAT, "%s: record %llu at byte %zu is "
                             "truncated: %zu of %zu bytes present", vf->path,
                             (unsigned long long)i, off, left, vf->stride);
    }
    vf->n = size / vf->stride;
    return 0;
}

int qv_vecfile_open(struct qv_vecfile *vf, const char *path, enum qv_vec_kind kind)
{
    struct stat st;
    void *map;
    int fd, err, rc;

    memset(vf, 0, sizeof(*vf));
    if (path == NULL)
        return qv_seterr(QV_EINVAL, "qv_vecfile_open: path is NULL");
    if (strlen(path) >= sizeof(vf->path))
        return qv_seterr(QV_EINVAL, "%.64s...: path longer than %zu bytes",
                         path, sizeof(vf->path) - 1);
    rc = resolve_kind(path, &kind);
    if (rc < 0)
        return rc;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        err = errno;
        return qv_seterr(err == ENOENT ? QV_ENOENT : QV_EIO, "%s: cannot "
                         "open: %s", path, strerror(err));
    }
    if (fstat(fd, &st) < 0) {
        err = errno;
        rc = qv_seterr(QV_EIO, "%s: cannot stat: %s", path, strerror(err));
        goto fail_close;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = qv_seterr(QV_EIO, "%s: not a regular file", path);
        goto fail_close;
    }

    strcpy(vf->path, path);
    vf->kind = kind;
    vf->elem_size = kind_elem_size(kind);
    if (st.st_size == 0) {
        close(fd);
        return 0;               /* empty: n = 0, dim = 0, no mapping */
    }

    map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
        err = errno;
        rc = qv_seterr(QV_EIO, "%s: cannot map %lld bytes: %s", path,
                       (long long)st.st_size, strerror(err));
        goto fail_close;
    }
    close(fd);
    vf->map = map;
    vf->map_size = (size_t)st.st_size;

    rc = validate(vf);
    if (rc < 0)
        goto fail_unmap;
    return 0;

fail_unmap:
    qv_vecfile_close(vf);
    return rc;
fail_close:
    close(fd);
    memset(vf, 0, sizeof(*vf));
    return rc;
}

int qv_vecfile_read_f32(const struct qv_vecfile *vf, uint64_t first, uint64_t count, float *dst)
{
    uint64_t i;
    uint32_t j;

    if (first > vf->n || count > vf->n - first)
        return qv_seterr(QV_ERANGE, "%s: rows %llu..%llu requested, but the "
                         "file has %llu rows (0..%llu)", vf->path,
                         (unsigned long long)first,
                         (unsigned long long)(first + count),
                         (unsigned long long)vf->n,
                         (unsigned long long)vf->n);
    for (i = 0; i < count; i++) {
        const uint8_t *row = qv_vecfile_row(vf, first + i);
        float *out = dst + i * vf->dim;

        switch (vf->kind) {
        case QV_VEC_FVECS:
            memcpy(out, row, (size_t)vf->dim * sizeof(float));
            break;
        case QV_VEC_IVECS:
            for (j = 0; j < vf->dim; j++) {
                int32_t v;

                memcpy(&v, row + (size_t)j * 4, sizeof(v));
                out[j] = (float)v;
            }
            break;
        default:
            for (j = 0; j < vf->dim; j++)
                out[j] = (float)row[j];
            break;
        }
    }
    return 0;
}

void qv_vecfile_close(struct qv_vecfile *vf)
{
    if (vf == NULL)
        return;
    if (vf->map != NULL)
        munmap((void *)vf->map, vf->map_size);
    vf->map = NULL;
    vf->map_size = 0;
    vf->n = 0;
    vf->dim = 0;
}

/* Write every byte of iov[0..cnt), resuming after short writes. */
static int writev_all(int fd, struct iovec *iov, int cnt)
{
    while (cnt > 0) {
        ssize_t w = writev(fd, iov, cnt);

        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        while (cnt > 0 && (size_t)w >= iov->iov_len) {
            w -= (ssize_t)iov->iov_len;
            iov++;
            cnt--;
        }
        if (cnt > 0) {
            iov->iov_base = (char *)iov->iov_base + w;
            iov->iov_len -= (size_t)w;
        }
    }
    return 0;
}

/* fsync the directory holding path, so the rename itself is durable. */
static int fsync_parent(const char *path)
{
    char dir[4096];
    const char *slash = strrchr(path, '/');
    int fd, rc = 0;

    if (slash == NULL) {
        strcpy(dir, ".");
    } else if (slash == path) {
        strcpy(dir, "/");
    } else {
        size_t len = (size_t)(slash - path);

        if (len >= sizeof(dir))
            return -ENAMETOOLONG;
        memcpy(dir, path, len);
        dir[len] = '\0';
    }
    fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    if (fsync(fd) < 0 && errno != EINVAL)
        rc = -errno;
    close(fd);
    return rc;
}

int qv_vecfile_write(const char *path, enum qv_vec_kind kind, uint32_t dim,
                     uint64_t n, const void *data)
{
    struct iovec iov[2 * QV_VECIO_IOV_BATCH];
    char tmp[4096 + 8];
    const int32_t d = (int32_t)dim;
    const char *what;
    size_t row_bytes;
    uint64_t i;
    int fd, rc;

    if (path == NULL)
        return qv_seterr(QV_EINVAL, "qv_vecfile_write: path is NULL");
    rc = resolve_kind(path, &kind);
    if (rc < 0)
        return rc;
    if (dim < 1 || dim > QV_VECIO_MAX_DIM)
        return qv_seterr(QV_EINVAL, "%s: dimension %u: expected 1..%d", path,
                         dim, QV_VECIO_MAX_DIM);
    if (n > 0 && data == NULL)
        return qv_seterr(QV_EINVAL, "%s: %llu records to write but data is "
                         "NULL", path, (unsigned long long)n);
    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= sizeof(tmp) - 4)
        return qv_seterr(QV_EINVAL, "%.64s...: path too long", path);
    row_bytes = (size_t)dim * kind_elem_size(kind);

    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        rc = -errno;
        return qv_seterr(QV_EIO, "%s: cannot create: %s", tmp, strerror(-rc));
    }
    for (i = 0; i < n; ) {
        int cnt = 0;

        for (; i < n && cnt < 2 * QV_VECIO_IOV_BATCH; i++) {
            iov[cnt].iov_base = (void *)&d;
            iov[cnt++].iov_len = sizeof(d);
            iov[cnt].iov_base = (char *)data + i * row_bytes;
            iov[cnt++].iov_len = row_bytes;
        }
        rc = writev_all(fd, iov, cnt);
        if (rc < 0) {
            what = "write";
            goto fail_unlink;
        }
    }
    if (fsync(fd) < 0) {
        rc = -errno;
        what = "fsync";
        goto fail_unlink;
    }
    if (close(fd) < 0) {
        fd = -1;
        rc = -errno;
        what = "close";
        goto fail_unlink;
    }
    fd = -1;
    if (rename(tmp, path) < 0) {
        rc = -errno;
        what = "rename into place";
        goto fail_unlink;
    }
    rc = fsync_parent(path);
    if (rc < 0)
        return qv_seterr(QV_EIO, "%s: written, but fsync of its folder "
                         "failed: %s", path, strerror(-rc));
    return 0;

fail_unlink:
    if (fd >= 0)
        close(fd);
    unlink(tmp);
    return qv_seterr(QV_EIO, "%s: %s failed: %s", path, what, strerror(-rc));
}
