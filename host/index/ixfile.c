/*
 * ixfile.c - the index file container; format in ixfile.h.
 *
 * Commit writes header + table, then each section padded to 4096 bytes,
 * to "<path>.tmp" with plain write(2) calls (sections can be GBs: no
 * staging copy beyond an 8 MiB O_DIRECT bounce buffer: see "How the
 * bytes go to disk"), fsyncs it, renames it over path and fsyncs the
 * directory.  Open maps the file read-only (MAP_PRIVATE) and verifies
 * everything before handing out a pointer: a bad file never reaches an
 * index.  Verifying the section CRCs reads every page once, which also
 * brings the index into the page cache.
 */
#include <fcntl.h>
#include <libgen.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "quiver/alloc.h"
#include "quiver/errors.h"
#include "quiver/ixfile.h"

#define MAGIC "QVIXFILE"
#define HDR_SIZE 64u
#define SEC_SIZE 32u

static const char *type_name(uint32_t t)
{
    switch (t) {
    case QV_IX_FLAT: return "flat";
    case QV_IX_IVF_FLAT: return "IVF-Flat";
    case QV_IX_IVF_SQ8: return "IVF-SQ8";
    case QV_IX_IVF_PQ: return "IVF-PQ";
    case QV_IX_HNSW: return "HNSW";
    case QV_IX_SEGMENT: return "segment rows";
    default: return "unknown";
    }
}

static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static uint32_t get32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t get64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

static uint64_t align_up(uint64_t v) { return (v + QV_IXFILE_ALIGN - 1) & ~(uint64_t)(QV_IXFILE_ALIGN - 1); }

void qv_ixfile_writer_init(struct qv_ixfile_writer *w, const char *path, enum qv_ix_type type)
{
    memset(w, 0, sizeof *w);
    snprintf(w->path, sizeof w->path, "%s", path);
    w->type = (uint32_t)type;
}

int qv_ixfile_add(struct qv_ixfile_writer *w, uint32_t tag, const void *data, uint64_t size)
{
    if (w->nsections >= QV_IXFILE_MAX_SECTIONS)
        return qv_seterr(QV_ENOSPC, "%s: more than %d sections", w->path,
                         QV_IXFILE_MAX_SECTIONS);
    for (uint32_t i = 0; i < w->nsections; i++)
        if (w->sec[i].tag == tag)
            return qv_seterr(QV_EEXIST, "%s: section %08x added twice", w->path, tag);
    if (size && !data)
        return qv_seterr(QV_EINVAL, "%s: section %08x has no data", w->path, tag);
    w->sec[w->nsections].tag = tag;
    w->sec[w->nsections].data = data;
    w->sec[w->nsections].size = size;
    w->nsections++;
    return 0;
}

/*
 * How the bytes go to disk.  Index and segment files are written by
 * background threads while the node takes writes, and going through the
 * page cache made those writes slower: on the development VM, writing
 * each sealed segment's 32 MiB rows file through the page cache took the
 * UPSERT p99 from 2.3 to 6.5 ms at 280k vectors/s (bench/run_durability.sh,
 * sync never), with O_DIRECT it read 4.5-4.7 ms.  So the file is opened
 * with O_DIRECT and written from an aligned WINDOW-byte bounce buffer (the
 * file's length is a multiple of 4096, so every write is whole blocks);
 * nothing is left dirty and the final fsync only commits metadata.  Where
 * O_DIRECT is refused (tmpfs, some network filesystems: EINVAL at open
 * or at the first write) the file is written again through the page
 * cache, with writeback in windows: after each WINDOW bytes the window
 * is handed to writeback (SYNC_FILE_RANGE_WRITE) and the one before it
 * waited for, so at most two windows are dirty and other files' flushes
 * (the WAL's) do not queue behind a whole file.  A failure of
 * sync_file_range is not an error (fsync reports what matters).
 */
#define WINDOW (8u << 20)

struct wfile {
    int fd;
    uint64_t pos;                   /* bytes written (buffered) or taken */
    uint64_t handed;                /* buffered: bytes handed to writeback */
    uint8_t *bounce;                /* O_DIRECT: WINDOW bytes, 4096-aligned */
    size_t blen;                    /* bytes waiting in bounce */
};

static void writeback(struct wfile *f)
{
    while (f->pos - f->handed >= WINDOW) {
        sync_file_range(f->fd, (off_t)f->handed, WINDOW, SYNC_FILE_RANGE_WRITE);
        if (f->handed >= WINDOW)
            sync_file_range(f->fd, (off_t)(f->handed - WINDOW), WINDOW,
                            SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
                            SYNC_FILE_RANGE_WAIT_AFTER);
        f->handed += WINDOW;
    }
}

static int use_direct = 1;           /* qv_ixfile_set_direct */

void qv_ixfile_set_direct(int on)
{
    use_direct = on != 0;
}

/* O_DIRECT: write the bounce buffer at its place in the file. */
static int flush_bounce(struct wfile *f)
{
    for (size_t off = 0; off < f->blen;) {
        ssize_t n = pwrite(f->fd, f->bounce + off, f->blen - off,
                           (off_t)(f->pos - f->blen + off));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            return -EIO;
        off += (size_t)n;
    }
    f->blen = 0;
    return 0;
}

static int write_all(struct wfile *f, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    while (f->bounce != NULL && len) {
        size_t k = WINDOW - f->blen < len ? WINDOW - f->blen : len;
        memcpy(f->bounce + f->blen, p, k);
        f->blen += k;
        f->pos += k;
        p += k;
        len -= k;
        if (f->blen == WINDOW) {
            int rc = flush_bounce(f);
            if (rc)
                return rc;
        }
    }
    while (len) {
        ssize_t n = write(f->fd, p, len > WINDOW ? WINDOW : len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += n;
        len -= (size_t)n;
        f->pos += (uint64_t)n;
        writeback(f);
    }
    return 0;
}

/* Write the file to tmp (header in head[0..table_end)), directly when
 * `direct`.  0 or -errno (-EINVAL from O_DIRECT: try buffered). */
static int write_tmp(const struct qv_ixfile_writer *w, const char *tmp, const uint8_t *head,
                     size_t table_end, int direct)
{
    static const uint8_t zeros[QV_IXFILE_ALIGN];
    struct wfile wf = { .fd = -1 };
    uint8_t *raw = NULL;
    int rc;

    if (direct) {
        raw = qv_malloc(WINDOW + QV_IXFILE_ALIGN, QV_MEM_INDEX);
        if (raw == NULL)
            return -EINVAL;             /* buffered needs no bounce */
        wf.bounce = (uint8_t *)(((uintptr_t)raw + QV_IXFILE_ALIGN - 1) &
                                ~(uintptr_t)(QV_IXFILE_ALIGN - 1));
    }
    wf.fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | (direct ? O_DIRECT : 0), 0644);
    if (wf.fd < 0) {
        rc = -errno;
        qv_free(raw);
        return rc;
    }
    rc = write_all(&wf, head, table_end);
    uint64_t pos = table_end;
    for (uint32_t i = 0; rc == 0 && i < w->nsections; i++) {
        uint64_t start = align_up(pos);
        if (start > pos)
            rc = write_all(&wf, zeros, start - pos);
        if (rc == 0)
            rc = write_all(&wf, w->sec[i].data, w->sec[i].size);
        pos = start + w->sec[i].size;
    }
    if (rc == 0 && align_up(pos) > pos)
        rc = write_all(&wf, zeros, align_up(pos) - pos);
    if (rc == 0 && wf.bounce != NULL && wf.blen)
        rc = flush_bounce(&wf);         /* whole blocks: the length is aligned */
    if (rc == 0 && fsync(wf.fd) != 0)
        rc = -errno;
    if (close(wf.fd) != 0 && rc == 0)
        rc = -errno;
    qv_free(raw);
    return rc;
}

int qv_ixfile_commit(struct qv_ixfile_writer *w)
{
    uint8_t head[HDR_SIZE + SEC_SIZE * QV_IXFILE_MAX_SECTIONS];
    char tmp[4096 + 8];
    size_t table_end = HDR_SIZE + (size_t)SEC_SIZE * w->nsections;
    uint64_t off = align_up(table_end);
    int rc;

    memset(head, 0, sizeof head);
    memcpy(head, MAGIC, 8);
    put32(head + 8, QV_IXFILE_VERSION);
    put32(head + 12, w->type);
    put32(head + 24, w->nsections);
    for (uint32_t i = 0; i < w->nsections; i++) {
        uint8_t *e = head + HDR_SIZE + (size_t)SEC_SIZE * i;
        put32(e, w->sec[i].tag);
        put64(e + 8, off);
        put64(e + 16, w->sec[i].size);
        put32(e + 24, qv_crc32c(0, w->sec[i].data, w->sec[i].size));
        off = align_up(off + w->sec[i].size);
    }
    put64(head + 16, off);
    uint32_t crc = qv_crc32c(0, head, 56);
    crc = qv_crc32c(crc, head + HDR_SIZE, table_end - HDR_SIZE);
    put32(head + 56, crc);

    snprintf(tmp, sizeof tmp, "%s.tmp", w->path);
    rc = write_tmp(w, tmp, head, table_end, use_direct);
    if (rc == -EINVAL && use_direct)    /* no O_DIRECT here: through the page cache */
        rc = write_tmp(w, tmp, head, table_end, 0);
    if (rc == -ENOENT || rc == -EACCES || rc == -EROFS || rc == -ENOTDIR) {
        int e = -rc;
        return qv_seterr(QV_EIO, "%s: cannot create: %s", tmp, strerror(e));
    }
    if (rc == 0 && rename(tmp, w->path) != 0)
        rc = -errno;
    if (rc != 0) {
        int e = -rc;
        unlink(tmp);
        return qv_seterr(QV_EIO, "%s: cannot write the index file: %s", w->path, strerror(e));
    }
    /* make the rename durable */
    char dirbuf[4096];
    snprintf(dirbuf, sizeof dirbuf, "%s", w->path);
    int dfd = open(dirname(dirbuf), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return 0;
}

void qv_ixfile_close(struct qv_ixfile *f)
{
    if (f->map)
        munmap((void *)f->map, f->size);
    f->map = NULL;
    f->size = 0;
}

int qv_ixfile_open(struct qv_ixfile *f, const char *path, enum qv_ix_type type)
{
    struct stat st;
    memset(f, 0, sizeof *f);
    snprintf(f->path, sizeof f->path, "%s", path);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return qv_seterr(errno == ENOENT ? QV_ENOENT : QV_EIO, "%s: cannot open: %s", path,
                         strerror(errno));
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return qv_seterr(QV_EIO, "%s: not a regular file", path);
    }
    if ((size_t)st.st_size < HDR_SIZE) {
        close(fd);
        return qv_seterr(st.st_size >= 8 ? QV_ECORRUPT : QV_EFORMAT,
                         "%s: %lld bytes is too short for an index file (truncated?)",
                         path, (long long)st.st_size);
    }
    void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED)
        return qv_seterr(QV_EIO, "%s: cannot map: %s", path, strerror(errno));
    f->map = m;
    f->size = (size_t)st.st_size;
    const uint8_t *h = f->map;
    int rc;
    if (memcmp(h, MAGIC, 8) != 0) {
        rc = qv_seterr(QV_EFORMAT, "%s: not a Quiver index file (bad magic)", path);
        goto bad;
    }
    if (get32(h + 8) != QV_IXFILE_VERSION) {
        rc = qv_seterr(QV_EFORMAT, "%s: index file format version %u; this build reads "
                       "version %d: rebuild the index", path, get32(h + 8), QV_IXFILE_VERSION);
        goto bad;
    }
    f->nsections = get32(h + 24);
    if (f->nsections > QV_IXFILE_MAX_SECTIONS ||
        HDR_SIZE + (size_t)SEC_SIZE * f->nsections > f->size) {
        rc = qv_seterr(QV_ECORRUPT, "%s: section table (%u entries) is corrupt or truncated",
                       path, f->nsections);
        goto bad;
    }
    uint32_t crc = qv_crc32c(0, h, 56);
    crc = qv_crc32c(crc, h + HDR_SIZE, (size_t)SEC_SIZE * f->nsections);
    if (crc != get32(h + 56)) {
        rc = qv_seterr(QV_ECORRUPT, "%s: header checksum mismatch: the file is corrupt", path);
        goto bad;
    }
    if (get64(h + 16) != f->size) {
        rc = qv_seterr(QV_ECORRUPT, "%s: file is %zu bytes but its header says %llu "
                       "(truncated or appended to)", path, f->size,
                       (unsigned long long)get64(h + 16));
        goto bad;
    }
    f->type = get32(h + 12);
    if (f->type != (uint32_t)type) {
        rc = qv_seterr(QV_EFORMAT, "%s: holds a %s index (type %u), not a %s index: load "
                       "it as the type it is, or rebuild", path, type_name(f->type), f->type,
                       type_name((uint32_t)type));
        goto bad;
    }
    uint64_t first = f->nsections ? get64(h + HDR_SIZE + 8) : f->size;
    if (first > f->size) {
        rc = qv_seterr(QV_ECORRUPT, "%s: first section lies outside the file", path);
        goto bad;
    }
    for (uint64_t b = HDR_SIZE + (uint64_t)SEC_SIZE * f->nsections; b < first; b++)
        if (h[b] != 0) {
            rc = qv_seterr(QV_ECORRUPT, "%s: non-zero padding at byte %llu after the "
                           "section table: the file is corrupt", path, (unsigned long long)b);
            goto bad;
        }
    for (uint32_t i = 0; i < f->nsections; i++) {
        const uint8_t *e = h + HDR_SIZE + (size_t)SEC_SIZE * i;
        uint64_t off = get64(e + 8), size = get64(e + 16);
        if (off % QV_IXFILE_ALIGN || off > f->size || size > f->size - off) {
            rc = qv_seterr(QV_ECORRUPT, "%s: section %u lies outside the file", path, i);
            goto bad;
        }
        /* the padding up to the next section (or the end) must be zero:
         * every byte of the file is then covered by a check */
        uint64_t pad_end = i + 1 < f->nsections ? get64(e + SEC_SIZE + 8) : f->size;
        if (pad_end > f->size || pad_end < off + size) {
            rc = qv_seterr(QV_ECORRUPT, "%s: section %u overlaps the next one", path, i);
            goto bad;
        }
        for (uint64_t b = off + size; b < pad_end; b++)
            if (h[b] != 0) {
                rc = qv_seterr(QV_ECORRUPT, "%s: non-zero padding at byte %llu after "
                               "section %u: the file is corrupt", path,
                               (unsigned long long)b, i);
                goto bad;
            }
        if (qv_crc32c(0, h + off, size) != get32(e + 24)) {
            rc = qv_seterr(QV_ECORRUPT, "%s: section %u (tag %08x, %llu bytes at offset %llu) "
                           "checksum mismatch: the file is corrupt", path, i, get32(e),
                           (unsigned long long)size, (unsigned long long)off);
            goto bad;
        }
    }
    return 0;
bad:
    qv_ixfile_close(f);
    return rc;
}

const void *qv_ixfile_section(const struct qv_ixfile *f, uint32_t tag, uint64_t *size)
{
    for (uint32_t i = 0; i < f->nsections; i++) {
        const uint8_t *e = f->map + HDR_SIZE + (size_t)SEC_SIZE * i;
        if (get32(e) == tag) {
            if (size)
                *size = get64(e + 16);
            return f->map + get64(e + 8);
        }
    }
    if (size)
        *size = 0;
    return NULL;
}
