/*
 * wal.c - the write-ahead log.  Format, policies and recovery rules are in
 * quiver/wal.h; group commit, locking and failure epochs in wal_int.h.
 *
 * Layout of this file: encoding and checking one record; the I/O helpers
 * (every write and fdatasync of a segment goes through w->io, the test
 * hook); starting a segment; the leader's batch write (do_io) and the wait
 * loop that elects leaders; the public append/wait/sync; truncation; then
 * recovery and open/close.
 */
#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "quiver/alloc.h"
#include "quiver/crc32c.h"
#include "quiver/errors.h"
#include "quiver/log.h"
#include "quiver/wal.h"
#include "wal_int.h"

#define SEG_MAGIC "QVWALSEG"

typedef unsigned long long ull;

static const uint8_t zeros[8];

/* snprintf that may truncate: paths can be PATH_MAX long, messages stop at
 * QV__WAL_MSG bytes, and a cut message is still a useful one. */
static void fmt(char *out, size_t n, const char *f, ...)
    __attribute__((format(printf, 3, 4)));
static void fmt(char *out, size_t n, const char *f, ...)
{
    va_list ap;
    va_start(ap, f);
    vsnprintf(out, n, f, ap);
    va_end(ap);
}

static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static uint32_t get32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t get64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

static size_t round8(size_t v) { return (v + 7) & ~(size_t)7; }

/* Bytes a record with a len-byte payload occupies. */
static size_t rec_size_of(size_t len) { return QV_WAL_REC_HDR + round8(len); }

/* Bytes of the encoded record at r (its length field is trusted: we wrote
 * it). */
static size_t rec_size(const uint8_t *r) { return rec_size_of(get32(r)); }

/* The record CRC given the CRC of payload + padding (see wal.h). */
static uint32_t rec_crc(uint32_t body_crc, const uint8_t *hdr)
{
    uint32_t c = qv_crc32c(body_crc, hdr, 4);
    return qv_crc32c(c, hdr + 8, 16);
}

static void seg_path(const struct qv_wal *w, uint64_t first, char *out, size_t n)
{
    fmt(out, n, "%s/wal-%020llu.log", w->dir, (ull)first);
}

/* ---- policies and options ---------------------------------------------- */

void qv_wal_opts_default(struct qv_wal_opts *o)
{
    memset(o, 0, sizeof *o);
    o->sync = QV_WAL_SYNC_ALWAYS;
    o->interval_ms = QV_WAL_INTERVAL_DEFAULT_MS;
    o->segment_bytes = QV_WAL_SEGMENT_DEFAULT;
}

const char *qv_wal_sync_name(enum qv_wal_sync s)
{
    switch (s) {
    case QV_WAL_SYNC_ALWAYS: return "always";
    case QV_WAL_SYNC_INTERVAL: return "interval";
    case QV_WAL_SYNC_NEVER: return "never";
    }
    return "?";
}

int qv_wal_sync_parse(const char *name, enum qv_wal_sync *out)
{
    for (int s = QV_WAL_SYNC_ALWAYS; s <= QV_WAL_SYNC_NEVER; s++)
        if (name && strcmp(name, qv_wal_sync_name((enum qv_wal_sync)s)) == 0) {
            *out = (enum qv_wal_sync)s;
            return 0;
        }
    return qv_seterr(QV_EINVAL, "WAL sync policy '%s': expected one of always, "
                     "interval, never", name ? name : "(null)");
}

enum qv_wal_sync qv_wal_policy(const struct qv_wal *w)
{
    return w->sync;
}

/* ---- the I/O hook -------------------------------------------------------- */

static ssize_t sys_pwrite(void *ctx, int fd, const void *buf, size_t len, off_t off)
{
    (void)ctx;
    return pwrite(fd, buf, len, off);
}

static int sys_fdatasync(void *ctx, int fd)
{
    (void)ctx;
    return fdatasync(fd);
}

static const struct qv_wal_io sys_io = { sys_pwrite, sys_fdatasync, NULL };

void qv_wal_set_io(struct qv_wal *w, const struct qv_wal_io *io)
{
    pthread_mutex_lock(&w->lock);
    w->io = io ? *io : sys_io;
    pthread_mutex_unlock(&w->lock);
}

static uint64_t free_bytes(int fd)
{
    struct statvfs sv;
    if (fstatvfs(fd, &sv) != 0)
        return 0;
    return (uint64_t)sv.f_bavail * sv.f_frsize;
}

/* The message and code of a failed write of len bytes (of `what`) at off
 * of path. */
static int write_failed(int err, int fd, const char *path, const char *what,
                        uint64_t off, size_t len, char *msg, size_t n)
{
    if (err == ENOSPC || err == EDQUOT) {
        fmt(msg, n, "%s: offset %llu: no space left on device for %zu bytes of %s "
            "(%llu bytes free there): the write was refused and nothing stored was "
            "changed; free space on that filesystem or move the WAL directory, then "
            "retry", path, (ull)off, len, what, (ull)free_bytes(fd));
        return QV_ENOSPC;
    }
    fmt(msg, n, "%s: offset %llu: cannot write %zu bytes of %s: %s: the write was "
        "refused and nothing stored was changed; check the disk (dmesg), then retry",
        path, (ull)off, len, what, err ? strerror(err) : "the device accepted 0 bytes");
    return QV_EIO;
}

/* Write all len bytes at off through the hook: 0, or the code of the
 * failure with msg filled.  A short write is continued; a write of 0 bytes
 * counts as an I/O error. */
static int write_all(const struct qv_wal_io *io, int fd, const char *path,
                     const char *what, const uint8_t *buf, size_t len, uint64_t off,
                     char *msg, size_t n)
{
    size_t done = 0;
    while (done < len) {
        ssize_t k = io->pwrite(io->ctx, fd, buf + done, len - done, (off_t)(off + done));
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return write_failed(k < 0 ? errno : 0, fd, path, what, off, len, msg, n);
        done += (size_t)k;
    }
    return 0;
}

/* ---- segments ------------------------------------------------------------ */

static int fsync_dir(struct qv_wal *w)
{
    return fsync(w->dirfd) == 0 ? 0 : -errno;
}

/* Room for one more segment in the list.  Called without the lock. */
static int segs_reserve(struct qv_wal *w)
{
    int rc = 0;
    pthread_mutex_lock(&w->lock);
    if (w->nsegs == w->segs_cap) {
        uint32_t cap = w->segs_cap ? w->segs_cap * 2 : 16;
        struct wal_seg *s = qv_realloc(w->segs, (size_t)cap * sizeof *s, QV_MEM_IO);
        if (s) {
            w->segs = s;
            w->segs_cap = cap;
        } else {
            rc = QV_ENOMEM;
        }
    }
    pthread_mutex_unlock(&w->lock);
    return rc;
}

/*
 * Start the segment whose first record will be `first` and make it current
 * (closing the previous one, which the caller has synced).  The file is
 * written as .tmp, synced, renamed and the directory synced.  Returns 0, or
 * a code with msg filled; *fatal is set when the directory could not be
 * synced (the new name may not be durable).  The caller holds io_busy (or
 * is qv_wal_open).
 */
static int new_segment(struct qv_wal *w, const struct qv_wal_io *io, uint64_t first,
                       int *fatal, char *msg, size_t n)
{
    char path[PATH_MAX], tmp[PATH_MAX + 8];
    uint8_t hdr[QV_WAL_SEG_HDR];
    int rc, fd;

    seg_path(w, first, path, sizeof path);
    fmt(tmp, sizeof tmp, "%s.tmp", path);
    if (segs_reserve(w) != 0) {
        fmt(msg, n, "%s: out of memory for the segment list", path);
        return QV_ENOMEM;
    }
    memset(hdr, 0, sizeof hdr);
    memcpy(hdr, SEG_MAGIC, 8);
    put32(hdr + 8, QV_WAL_VERSION);
    put32(hdr + 12, QV_WAL_SEG_HDR);
    put64(hdr + 16, first);
    put32(hdr + 28, qv_crc32c(0, hdr, 28));

    fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        int e = errno;
        if (e == ENOSPC || e == EDQUOT) {
            fmt(msg, n, "%s: cannot start a WAL segment: no space left on device "
                "(%llu bytes free): the write was refused and nothing stored was "
                "changed; free space on that filesystem or move the WAL "
                "directory, then retry", tmp, (ull)free_bytes(w->dirfd));
            return QV_ENOSPC;
        }
        fmt(msg, n, "%s: cannot create a WAL segment: %s", tmp, strerror(e));
        return QV_EIO;
    }
    rc = write_all(io, fd, tmp, "a new WAL segment's header", hdr, sizeof hdr, 0,
                   msg, n);
    if (rc)
        goto fail_file;
    if (io->fdatasync(io->ctx, fd) != 0) {
        fmt(msg, n, "%s: fdatasync of a new WAL segment failed: %s: the write "
            "was refused; check the disk (dmesg) and free space", tmp,
            strerror(errno));
        rc = QV_EIO;
        goto fail_file;
    }
    if (rename(tmp, path) != 0) {
        fmt(msg, n, "%s: cannot rename to %s: %s", tmp, path, strerror(errno));
        rc = QV_EIO;
        goto fail_file;
    }
    if (fsync_dir(w) != 0) {
        fmt(msg, n, "%s: fsync of the WAL directory failed: %s: the WAL refuses "
            "writes until the node restarts; check the disk (dmesg)", w->dir,
            strerror(errno));
        *fatal = 1;
        close(fd);
        return QV_EIO;
    }
    if (w->fd >= 0)
        close(w->fd);
    pthread_mutex_lock(&w->lock);
    if (w->nsegs)
        w->segs[w->nsegs - 1].bytes = w->seg_off;   /* the one just closed */
    w->segs[w->nsegs].first_lsn = first;
    w->segs[w->nsegs].bytes = QV_WAL_SEG_HDR;
    w->nsegs++;
    pthread_mutex_unlock(&w->lock);
    w->fd = fd;
    w->seg_off = QV_WAL_SEG_HDR;
    w->seg_first = first;
    return 0;

fail_file:
    close(fd);
    unlink(tmp);
    return rc;
}

/* ---- the leader ---------------------------------------------------------- */

/* End the current epoch after a failed write: every record after
 * written_lsn is discarded.  Called with the lock held. */
static void end_epoch(struct qv_wal *w, int code)
{
    if (w->epoch >= w->ends_cap) {
        size_t cap = w->ends_cap * 2;
        struct wal_epoch_end *e = qv_realloc(w->ends, cap * sizeof *e, QV_MEM_IO);
        if (!e) {
            /* Cannot remember which records failed: refuse everything. */
            w->broken = 1;
            w->broken_code = QV_ENOMEM;
            fmt(w->broken_msg, sizeof w->broken_msg, "%s: out of memory while "
                "handling a failed write (%s): the WAL refuses writes until "
                "the node restarts", w->dir, w->errmsg);
            return;
        }
        w->ends = e;
        w->ends_cap = cap;
    }
    w->ends[w->epoch].lsn = w->written_lsn;
    w->ends[w->epoch].code = code;
    w->epoch++;
    w->pend_len = 0;
    w->next_lsn = w->written_lsn + 1;
}

/* The message of a failed fdatasync of a segment (path, errno e). */
static void fsync_failed(char *msg, size_t n, const char *path, int e)
{
    fmt(msg, n, "%s: fdatasync failed: %s: the kernel may have dropped written WAL "
        "records, so the WAL refuses writes until the node restarts (recovery keeps "
        "what reached the disk); check the disk (dmesg) and free space", path, strerror(e));
}

/* Refuse every write until restart, saying msg (lock held). */
static void wal_break(struct qv_wal *w, const char *msg)
{
    w->broken = 1;
    w->broken_code = QV_EIO;
    fmt(w->broken_msg, sizeof w->broken_msg, "%s", msg);
    QV_ERR("%s", msg);
}

/*
 * Write the pending batch (rolling segments as needed) and, under ALWAYS or
 * when want_sync, fdatasync it.  Called with the lock held and io_busy 0;
 * drops the lock for the I/O and returns with it held, io_busy 0 and cv
 * broadcast.  Failures are recorded in w (epoch or broken), not returned:
 * each waiter learns its own record's fate.
 */
static void do_io(struct qv_wal *w, int want_sync)
{
    uint8_t *batch = w->pend;
    size_t blen = w->pend_len, bcap = w->pend_cap, done = 0;
    uint64_t lsn_done = w->written_lsn, synced = w->synced_lsn;
    uint64_t n_rec = 0, n_batches = 0, n_fsyncs = 0;
    struct qv_wal_io io = w->io;
    int do_sync = w->sync == QV_WAL_SYNC_ALWAYS || want_sync;
    int rc = 0, fatal = 0;
    char msg[QV__WAL_MSG], path[PATH_MAX];

    w->pend = w->spare;
    w->pend_cap = w->spare_cap;
    w->pend_len = 0;
    w->spare = NULL;
    w->spare_cap = 0;
    w->io_busy = 1;
    pthread_mutex_unlock(&w->lock);

    while (done < blen) {
        size_t first = rec_size(batch + done), cut = done + first;
        uint64_t n = 1;
        if (w->seg_off > QV_WAL_SEG_HDR && w->seg_off + first > w->segment_bytes) {
            /* roll: the old segment is complete on disk before the next
             * one exists, under every policy */
            if (io.fdatasync(io.ctx, w->fd) != 0) {
                seg_path(w, w->seg_first, path, sizeof path);
                fsync_failed(msg, sizeof msg, path, errno);
                rc = QV_EIO;
                fatal = 1;
                break;
            }
            n_fsyncs++;
            synced = lsn_done;
            rc = new_segment(w, &io, lsn_done + 1, &fatal, msg, sizeof msg);
            if (rc)
                break;
        }
        while (cut < blen) {
            size_t s = rec_size(batch + cut);
            if (w->seg_off + (cut - done) + s > w->segment_bytes)
                break;
            cut += s;
            n++;
        }
        seg_path(w, w->seg_first, path, sizeof path);
        rc = write_all(&io, w->fd, path, "WAL records", batch + done, cut - done,
                       w->seg_off, msg, sizeof msg);
        if (rc) {
            /* no partial record may stay behind */
            if (ftruncate(w->fd, (off_t)w->seg_off) != 0) {
                size_t l = strlen(msg);
                fmt(msg + l, sizeof msg - l, "; and truncating back to offset "
                    "%llu failed: %s: the WAL refuses writes until the node "
                    "restarts", (ull)w->seg_off, strerror(errno));
                fatal = 1;
            }
            break;
        }
        w->seg_off += cut - done;
        done = cut;
        lsn_done += n;
        n_rec += n;
        n_batches++;
    }
    if (rc == 0 && do_sync && lsn_done > synced) {
        if (io.fdatasync(io.ctx, w->fd) != 0) {
            seg_path(w, w->seg_first, path, sizeof path);
            fsync_failed(msg, sizeof msg, path, errno);
            rc = QV_EIO;
            fatal = 1;
        } else {
            synced = lsn_done;
            n_fsyncs++;
        }
    }

    pthread_mutex_lock(&w->lock);
    w->written_lsn = lsn_done;
    w->synced_lsn = synced;
    w->segs[w->nsegs - 1].bytes = w->seg_off;
    w->n_appends += n_rec;
    w->n_batches += n_batches;
    w->n_fsyncs += n_fsyncs;
    if (rc) {
        w->n_write_errors++;
        fmt(w->errmsg, sizeof w->errmsg, "%s", msg);
        if (fatal) {
            wal_break(w, msg);
        } else {
            end_epoch(w, rc);
            QV_LOG_RL(QV_LOG_WARN, 1, "%s", msg);
        }
    }
    if (!w->spare && bcap <= QV__WAL_PEND_KEEP) {
        w->spare = batch;
        w->spare_cap = bcap;
    } else {
        qv_free(batch);
    }
    w->io_busy = 0;
    pthread_cond_broadcast(&w->cv);
}

/*
 * Block until record (epoch, lsn) is written (need_sync 0) or fdatasync'ed
 * (need_sync 1), leading a batch whenever no I/O is in progress.  With
 * retarget, a record discarded by a failed write does not fail the wait:
 * it waits for the records that survived instead (qv_wal_sync, close).
 * Called with the lock held.  Returns 0 or the failure's code (message
 * set for this thread).
 */
static int wait_locked(struct qv_wal *w, uint64_t epoch, uint64_t lsn, int need_sync,
                       int retarget)
{
    for (;;) {
        if (epoch != w->epoch) {
            const struct wal_epoch_end *e = &w->ends[epoch];
            if (lsn > e->lsn) {
                if (!retarget)
                    return qv_seterr(e->code, "%s", w->errmsg);
                lsn = e->lsn;
            }
            if (!need_sync)
                return 0;
            epoch = w->epoch;     /* the record survived into this epoch */
            continue;
        }
        if ((need_sync ? w->synced_lsn : w->written_lsn) >= lsn)
            return 0;
        if (w->broken)
            return qv_seterr(w->broken_code, "%s", w->broken_msg);
        if (!w->io_busy)
            do_io(w, need_sync);
        else
            pthread_cond_wait(&w->cv, &w->lock);
    }
}

/* ---- appends ------------------------------------------------------------- */

int qv_wal_append_async(struct qv_wal *w, uint8_t type, const void *payload,
                        size_t len, struct qv_wal_ticket *t)
{
    if (!w || !t)
        return qv_seterr(QV_EINVAL, "qv_wal_append: NULL WAL or ticket");
    if (type == 0)
        return qv_seterr(QV_EINVAL, "%s: WAL record type 0 is reserved: use 1..255",
                         w->dir);
    if (len > QV_WAL_MAX_PAYLOAD)
        return qv_seterr(QV_EINVAL, "%s: WAL record of %zu bytes exceeds the maximum "
                         "of %u bytes: split the operation", w->dir, len,
                         QV_WAL_MAX_PAYLOAD);
    if (len && !payload)
        return qv_seterr(QV_EINVAL, "%s: WAL record of %zu bytes has no payload",
                         w->dir, len);

    size_t padded = round8(len), sz = rec_size_of(len);
    uint32_t body = len ? qv_crc32c(0, payload, len) : 0;
    body = qv_crc32c(body, zeros, padded - len);

    pthread_mutex_lock(&w->lock);
    for (;;) {
        if (w->broken) {
            int rc = qv_seterr(w->broken_code, "%s", w->broken_msg);
            pthread_mutex_unlock(&w->lock);
            return rc;
        }
        if (w->pend_len == 0 || w->pend_len + sz <= QV__WAL_PEND_MAX)
            break;
        if (!w->io_busy)
            do_io(w, 0);
        else
            pthread_cond_wait(&w->cv, &w->lock);
    }
    if (w->pend_cap < w->pend_len + sz) {
        size_t cap = w->pend_cap ? w->pend_cap * 2 : 64u << 10;
        while (cap < w->pend_len + sz)
            cap *= 2;
        uint8_t *p = qv_realloc(w->pend, cap, QV_MEM_IO);
        if (!p) {
            pthread_mutex_unlock(&w->lock);
            return qv_seterr(QV_ENOMEM, "%s: out of memory for a WAL batch of %zu "
                             "bytes", w->dir, cap);
        }
        w->pend = p;
        w->pend_cap = cap;
    }
    uint8_t *r = w->pend + w->pend_len;
    uint64_t lsn = w->next_lsn++;
    put32(r, (uint32_t)len);
    put64(r + 8, lsn);
    r[16] = type;
    memset(r + 17, 0, 7);
    if (len)
        memcpy(r + QV_WAL_REC_HDR, payload, len);
    memset(r + QV_WAL_REC_HDR + len, 0, padded - len);
    put32(r + 4, rec_crc(body, r));
    w->pend_len += sz;
    t->lsn = lsn;
    t->epoch = w->epoch;
    pthread_mutex_unlock(&w->lock);
    return 0;
}

int qv_wal_wait(struct qv_wal *w, const struct qv_wal_ticket *t)
{
    int rc;
    if (!w || !t)
        return qv_seterr(QV_EINVAL, "qv_wal_wait: NULL WAL or ticket");
    pthread_mutex_lock(&w->lock);
    if (t->epoch > w->epoch || (t->epoch == w->epoch && t->lsn >= w->next_lsn))
        rc = qv_seterr(QV_EINVAL, "%s: qv_wal_wait: ticket (LSN %llu, epoch %llu) was "
                       "never issued", w->dir, (ull)t->lsn, (ull)t->epoch);
    else
        rc = wait_locked(w, t->epoch, t->lsn, w->sync == QV_WAL_SYNC_ALWAYS, 0);
    pthread_mutex_unlock(&w->lock);
    return rc;
}

int qv_wal_append(struct qv_wal *w, uint8_t type, const void *payload, size_t len,
                  uint64_t *lsn)
{
    struct qv_wal_ticket t;
    int rc = qv_wal_append_async(w, type, payload, len, &t);
    if (rc == 0)
        rc = qv_wal_wait(w, &t);
    if (lsn)
        *lsn = rc == 0 ? t.lsn : 0;
    return rc;
}

int qv_wal_sync(struct qv_wal *w)
{
    int rc;
    pthread_mutex_lock(&w->lock);
    rc = wait_locked(w, w->epoch, w->next_lsn - 1, 1, 1);
    pthread_mutex_unlock(&w->lock);
    return rc;
}

/* ---- truncation and stats ------------------------------------------------ */

int qv_wal_truncate_upto(struct qv_wal *w, uint64_t lsn)
{
    char path[PATH_MAX];
    int removed = 0, rc = 0;

    pthread_mutex_lock(&w->trunc_lock);
    for (;;) {
        pthread_mutex_lock(&w->lock);
        if (w->nsegs < 2 || w->segs[1].first_lsn - 1 > lsn) {
            pthread_mutex_unlock(&w->lock);
            break;
        }
        uint64_t first = w->segs[0].first_lsn;
        pthread_mutex_unlock(&w->lock);

        seg_path(w, first, path, sizeof path);
        if (unlink(path) != 0 && errno != ENOENT) {
            rc = qv_seterr(QV_EIO, "%s: cannot remove a WAL segment a snapshot "
                           "covers: %s: check the directory's permissions; the "
                           "segment is kept and removal is retried at the next "
                           "snapshot", path, strerror(errno));
            break;
        }
        pthread_mutex_lock(&w->lock);
        memmove(w->segs, w->segs + 1, (size_t)(w->nsegs - 1) * sizeof *w->segs);
        w->nsegs--;
        pthread_mutex_unlock(&w->lock);
        QV_DEBUG("%s: removed (covered by the snapshot at LSN %llu)", path, (ull)lsn);
        removed++;
    }
    if (removed && fsync_dir(w) != 0 && rc == 0)
        rc = qv_seterr(QV_EIO, "%s: fsync of the WAL directory failed after removing "
                       "%d segments: %s; check the disk (dmesg)", w->dir, removed,
                       strerror(errno));
    pthread_mutex_unlock(&w->trunc_lock);
    return rc ? rc : removed;
}

void qv_wal_stats(struct qv_wal *w, struct qv_wal_stats *out)
{
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&w->lock);
    out->next_lsn = w->next_lsn;
    out->last_lsn = w->next_lsn - 1;
    out->written_lsn = w->written_lsn;
    out->durable_lsn = w->synced_lsn;
    out->first_lsn = w->nsegs ? w->segs[0].first_lsn : w->next_lsn;
    out->segments = w->nsegs;
    out->broken = w->broken;
    for (uint32_t i = 0; i < w->nsegs; i++)
        out->bytes += w->segs[i].bytes;
    out->appends = w->n_appends;
    out->batches = w->n_batches;
    out->fsyncs = w->n_fsyncs;
    out->write_errors = w->n_write_errors;
    out->replayed = w->n_replayed;
    out->torn_bytes = w->n_torn_bytes;
    pthread_mutex_unlock(&w->lock);
}

/* ---- the INTERVAL thread ------------------------------------------------- */

/*
 * Every interval_ms: write what is pending (no fsync), then fdatasync the
 * current segment through a dup of its descriptor WITHOUT holding the WAL
 * (io_busy stays 0): appends go on writing meanwhile, so their
 * acknowledgement never waits for a device flush, which a busy disk can
 * stretch to tens of ms.  Records up to the written_lsn read before the
 * flush are durable after it (earlier segments were fdatasync'ed when
 * they rolled); the dup keeps the file open if a roll closes the segment
 * meanwhile.  A failed flush breaks the WAL as in do_io.
 */
static void *interval_main(void *arg)
{
    struct qv_wal *w = arg;
    struct timespec at;

    pthread_mutex_lock(&w->lock);
    clock_gettime(CLOCK_MONOTONIC, &at);
    while (!w->stop) {
        at.tv_nsec += (long)(w->interval_ms % 1000) * 1000000L;
        at.tv_sec += w->interval_ms / 1000 + at.tv_nsec / 1000000000L;
        at.tv_nsec %= 1000000000L;
        while (!w->stop && pthread_cond_timedwait(&w->bg_cv, &w->lock, &at) == 0)
            ;
        if (w->stop || w->broken)
            continue;
        if (w->pend_len == 0 && w->written_lsn == w->synced_lsn)
            continue;
        while (w->io_busy && !w->stop)
            pthread_cond_wait(&w->cv, &w->lock);
        if (w->stop || w->broken)
            continue;
        if (w->pend_len)
            do_io(w, 0);
        uint64_t target = w->written_lsn;
        if (target <= w->synced_lsn || w->io_busy)
            continue;
        struct qv_wal_io io = w->io;
        int fd = dup(w->fd), e = 0;
        char path[PATH_MAX];
        seg_path(w, w->seg_first, path, sizeof path);
        pthread_mutex_unlock(&w->lock);
        if (fd < 0 || io.fdatasync(io.ctx, fd) != 0)
            e = errno ? errno : EIO;
        if (fd >= 0)
            close(fd);
        pthread_mutex_lock(&w->lock);
        if (e == 0) {
            if (target > w->synced_lsn)
                w->synced_lsn = target;
            w->n_fsyncs++;
            pthread_cond_broadcast(&w->cv);
        } else if (!w->broken) {
            char msg[QV__WAL_MSG];
            fsync_failed(msg, sizeof msg, path, e);
            w->n_write_errors++;
            fmt(w->errmsg, sizeof w->errmsg, "%s", msg);
            wal_break(w, msg);
            pthread_cond_broadcast(&w->cv);
        }
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

/* ---- recovery ------------------------------------------------------------ */

/* A record as read back. */
struct rec_view {
    uint64_t lsn;
    uint8_t type;
    uint32_t len;
    size_t size;
    const uint8_t *payload;
};

/* Check the structure, CRC, type and reserved bytes of the record at off of
 * b[0..n): 0 and *v filled, or 1 with why (a phrase) filled.  The LSN is
 * the caller's to check. */
static int rec_parse(const uint8_t *b, size_t n, size_t off, struct rec_view *v,
                     char *why, size_t whylen)
{
    const uint8_t *r = b + off;
    if (n - off < QV_WAL_REC_HDR) {
        fmt(why, whylen, "partial record header (%zu of %u bytes)", n - off,
            QV_WAL_REC_HDR);
        return 1;
    }
    uint32_t len = get32(r);
    if (len > QV_WAL_MAX_PAYLOAD) {
        fmt(why, whylen, "length %u exceeds the maximum %u", len,
            QV_WAL_MAX_PAYLOAD);
        return 1;
    }
    size_t size = rec_size_of(len);
    if (size > n - off) {
        fmt(why, whylen, "record of %zu bytes runs past the end of the file "
            "(%zu bytes)", size, n);
        return 1;
    }
    uint32_t want = get32(r + 4);
    uint32_t got = rec_crc(qv_crc32c(0, r + QV_WAL_REC_HDR, size - QV_WAL_REC_HDR), r);
    if (want != got) {
        fmt(why, whylen, "CRC mismatch (stored 0x%08x, computed 0x%08x)", want, got);
        return 1;
    }
    if (r[16] == 0 || memcmp(r + 17, zeros, 7) != 0) {
        fmt(why, whylen, "type 0 or reserved bytes set");
        return 1;
    }
    v->lsn = get64(r + 8);
    v->type = r[16];
    v->len = len;
    v->size = size;
    v->payload = r + QV_WAL_REC_HDR;
    return 0;
}

/* Offset of the first valid record after the bad one at bad_off whose LSN
 * could follow it (>= expected, and no further ahead than the bytes in
 * between allow), or -1.  Stale records of deleted segments have lower
 * LSNs and do not count. */
static long valid_after(const uint8_t *b, size_t n, size_t bad_off, uint64_t expected,
                        uint64_t *lsn)
{
    struct rec_view v;
    char why[8];
    for (size_t p = bad_off + 8; p + QV_WAL_REC_HDR <= n; p += 8) {
        uint32_t len = get32(b + p);
        uint64_t l = get64(b + p + 8);
        if (len > QV_WAL_MAX_PAYLOAD || rec_size_of(len) > n - p)
            continue;
        if (l < expected || l - expected > (p - bad_off) / QV_WAL_REC_HDR)
            continue;
        if (rec_parse(b, n, p, &v, why, sizeof why) == 0) {
            *lsn = l;
            return (long)p;
        }
    }
    return -1;
}

static int read_all(int fd, uint8_t *buf, size_t len)
{
    size_t done = 0;
    while (done < len) {
        ssize_t k = pread(fd, buf + done, len - done, (off_t)done);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return -errno;
        if (k == 0)
            return -EIO;
        done += (size_t)k;
    }
    return 0;
}

/* Check the header of segment i (and record its size).  0 or a code with
 * the message set. */
static int check_header(struct qv_wal *w, uint32_t i)
{
    char path[PATH_MAX];
    uint8_t h[QV_WAL_SEG_HDR];
    struct stat st;
    int rc = 0;

    seg_path(w, w->segs[i].first_lsn, path, sizeof path);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return qv_seterr(QV_EIO, "%s: cannot open: %s", path, strerror(errno));
    if (fstat(fd, &st) != 0) {
        rc = qv_seterr(QV_EIO, "%s: cannot stat: %s", path, strerror(errno));
        goto out;
    }
    w->segs[i].bytes = (uint64_t)st.st_size;
    if (st.st_size < (off_t)QV_WAL_SEG_HDR) {
        rc = qv_seterr(QV_ECORRUPT, "%s: offset 0: segment header: the file has only "
                       "%lld bytes of %u: the segment is damaged; restore the shard "
                       "from a replica or snapshot", path, (long long)st.st_size,
                       QV_WAL_SEG_HDR);
        goto out;
    }
    if ((rc = read_all(fd, h, sizeof h)) != 0) {
        rc = qv_seterr(QV_EIO, "%s: cannot read: %s", path, strerror(-rc));
        goto out;
    }
    if (memcmp(h, SEG_MAGIC, 8) == 0 && get32(h + 8) != QV_WAL_VERSION &&
        get32(h + 28) == qv_crc32c(0, h, 28)) {
        rc = qv_seterr(QV_EFORMAT, "%s: offset 8: WAL format version %u; this build "
                       "reads version %u: run the matching Quiver version", path,
                       get32(h + 8), QV_WAL_VERSION);
        goto out;
    }
    if (memcmp(h, SEG_MAGIC, 8) != 0 || get32(h + 8) != QV_WAL_VERSION ||
        get32(h + 12) != QV_WAL_SEG_HDR || get32(h + 28) != qv_crc32c(0, h, 28)) {
        rc = qv_seterr(QV_ECORRUPT, "%s: offset 0: segment header: bad magic, size "
                       "or CRC: the segment is damaged; restore the shard from a "
                       "replica or snapshot (a segment is never replayed past a bad "
                       "header)", path);
        goto out;
    }
    if (get64(h + 16) != w->segs[i].first_lsn) {
        rc = qv_seterr(QV_ECORRUPT, "%s: offset 16: segment header says first LSN "
                       "%llu, the name says %llu: the segment is damaged or was "
                       "renamed; restore its name or the shard", path,
                       (ull)get64(h + 16), (ull)w->segs[i].first_lsn);
        goto out;
    }
out:
    close(fd);
    return rc;
}

static int seg_cmp(const void *a, const void *b)
{
    uint64_t x = ((const struct wal_seg *)a)->first_lsn;
    uint64_t y = ((const struct wal_seg *)b)->first_lsn;
    return x < y ? -1 : x > y;
}

/* Parse "wal-<20 digits>.log" (+ ".tmp" when tmp): 1 and *lsn, or 0. */
static int parse_name(const char *name, int tmp, uint64_t *lsn)
{
    size_t n = strlen(name);
    if (n != QV__WAL_NAME_LEN + (tmp ? 4u : 0u) || strncmp(name, "wal-", 4) != 0 ||
        strncmp(name + 24, tmp ? ".log.tmp" : ".log", tmp ? 8 : 4) != 0)
        return 0;
    uint64_t v = 0;
    for (int i = 4; i < 24; i++) {
        if (name[i] < '0' || name[i] > '9')
            return 0;
        v = v * 10 + (uint64_t)(name[i] - '0');
    }
    *lsn = v;
    return 1;
}

/* Fill w->segs from the directory (sorted) and remove leftover .tmp files. */
static int list_segments(struct qv_wal *w)
{
    int dfd = dup(w->dirfd), rc = 0, removed_tmp = 0;
    DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
    struct dirent *e;

    if (!d) {
        if (dfd >= 0)
            close(dfd);
        return qv_seterr(QV_EIO, "%s: cannot list the WAL directory: %s", w->dir,
                         strerror(errno));
    }
    rewinddir(d);
    while ((e = readdir(d)) != NULL) {
        uint64_t lsn;
        if (parse_name(e->d_name, 1, &lsn)) {
            QV_WARN("%s/%s: removing a segment left half-made by a crash", w->dir,
                    e->d_name);
            if (unlinkat(w->dirfd, e->d_name, 0) == 0)
                removed_tmp = 1;
            continue;
        }
        if (!parse_name(e->d_name, 0, &lsn))
            continue;
        if ((rc = segs_reserve(w)) != 0) {
            qv_seterr(rc, "%s: out of memory listing WAL segments", w->dir);
            break;
        }
        if (lsn == 0) {
            rc = qv_seterr(QV_ECORRUPT, "%s/%s: LSN 0 is never a segment's first: "
                           "remove or rename this file", w->dir, e->d_name);
            break;
        }
        w->segs[w->nsegs].first_lsn = lsn;
        w->segs[w->nsegs].bytes = 0;
        w->nsegs++;
    }
    closedir(d);
    if (rc == 0 && removed_tmp && fsync_dir(w) != 0)
        rc = qv_seterr(QV_EIO, "%s: fsync of the WAL directory failed: %s", w->dir,
                       strerror(errno));
    if (w->nsegs)
        qsort(w->segs, w->nsegs, sizeof *w->segs, seg_cmp);
    return rc;
}

/*
 * Read segments s0.. (see qv_wal_open), replay, cut a torn tail; leaves the
 * last segment open in w->fd with w->seg_off at its end.  *last_lsn gets
 * the last valid LSN.  0 or a code with the message set.
 */
static int recover(struct qv_wal *w, uint64_t after, qv_wal_replay_fn *fn, void *arg,
                   uint64_t *last_lsn)
{
    char path[PATH_MAX], why[160];
    uint32_t s0 = 0;
    uint8_t *b = NULL;
    int rc = 0, fd = -1;

    if (w->segs[0].first_lsn > after + 1) {
        seg_path(w, w->segs[0].first_lsn, path, sizeof path);
        return qv_seterr(QV_ECORRUPT, "%s: the WAL starts at LSN %llu but the snapshot "
                         "covers only LSNs up to %llu: records %llu..%llu are missing; "
                         "open with the snapshot the WAL was truncated for, or restore "
                         "the shard from a replica", path, (ull)w->segs[0].first_lsn,
                         (ull)after, (ull)after + 1, (ull)w->segs[0].first_lsn - 1);
    }
    while (s0 + 1 < w->nsegs && w->segs[s0 + 1].first_lsn <= after + 1)
        s0++;

    uint64_t expected = w->segs[s0].first_lsn;
    for (uint32_t i = s0; i < w->nsegs; i++) {
        int last = i + 1 == w->nsegs;
        struct stat st;
        size_t n, off = QV_WAL_SEG_HDR;

        seg_path(w, w->segs[i].first_lsn, path, sizeof path);
        if (expected != w->segs[i].first_lsn) {
            char prev[PATH_MAX];
            seg_path(w, w->segs[i - 1].first_lsn, prev, sizeof prev);
            if (expected < w->segs[i].first_lsn)
                return qv_seterr(QV_ECORRUPT, "%s: ends at LSN %llu but the next "
                                 "segment %s starts at LSN %llu: records %llu..%llu "
                                 "are missing; restore the shard from a replica or "
                                 "snapshot", prev, (ull)expected - 1, path,
                                 (ull)w->segs[i].first_lsn, (ull)expected,
                                 (ull)w->segs[i].first_lsn - 1);
            return qv_seterr(QV_ECORRUPT, "%s: runs to LSN %llu, past the first LSN "
                             "%llu of the next segment %s (overlapping segments); "
                             "restore the shard from a replica or snapshot", prev,
                             (ull)expected - 1, (ull)w->segs[i].first_lsn, path);
        }
        fd = open(path, (last ? O_RDWR : O_RDONLY) | O_CLOEXEC);
        if (fd < 0)
            return qv_seterr(QV_EIO, "%s: cannot open: %s", path, strerror(errno));
        if (fstat(fd, &st) != 0) {
            rc = qv_seterr(QV_EIO, "%s: cannot stat: %s", path, strerror(errno));
            goto fail;
        }
        n = (size_t)st.st_size;
        b = qv_malloc(n, QV_MEM_IO);
        if (!b) {
            rc = qv_seterr(QV_ENOMEM, "%s: out of memory reading %zu bytes", path, n);
            goto fail;
        }
        if ((rc = read_all(fd, b, n)) != 0) {
            rc = qv_seterr(QV_EIO, "%s: cannot read: %s", path, strerror(-rc));
            goto fail;
        }
        while (off < n) {
            struct rec_view v;
            if (rec_parse(b, n, off, &v, why, sizeof why) != 0)
                break;
            if (v.lsn != expected) {
                fmt(why, sizeof why, "LSN %llu where %llu was expected",
                    (ull)v.lsn, (ull)expected);
                break;
            }
            if (v.lsn > after && fn) {
                rc = fn(arg, v.lsn, v.type, v.payload, v.len);
                if (rc != 0) {
                    if (rc > 0)
                        rc = QV_EINVAL;
                    if (qv_errno != rc)
                        qv_seterr(rc, "%s: offset %zu: record LSN %llu: replay stopped "
                                  "by the caller (%s)", path, off, (ull)v.lsn,
                                  qv_strerror(rc));
                    goto fail;
                }
                w->n_replayed++;
            }
            expected++;
            off += v.size;
        }
        if (off < n) {
            uint64_t next_lsn = 0;
            long p = valid_after(b, n, off, expected, &next_lsn);
            if (!last) {
                rc = qv_seterr(QV_ECORRUPT, "%s: offset %zu: record LSN %llu: %s, in a "
                               "segment that is not the last one: the WAL is damaged "
                               "and replaying past it would lose data; restore the "
                               "shard from a replica or snapshot", path, off,
                               (ull)expected, why);
                goto fail;
            }
            if (p >= 0) {
                rc = qv_seterr(QV_ECORRUPT, "%s: offset %zu: record LSN %llu: %s, and a "
                               "valid record (LSN %llu) follows at offset %ld: damage "
                               "in the middle of the log, not a torn write; restore "
                               "the shard from a replica or snapshot, or, to give up "
                               "LSN %llu and after, truncate the file to %zu bytes",
                               path, off, (ull)expected, why, (ull)next_lsn, p,
                               (ull)expected, off);
                goto fail;
            }
            QV_WARN("%s: offset %zu: record LSN %llu: %s: torn final record (a crash "
                    "during a write; never acknowledged under the always policy): "
                    "truncating %zu bytes", path, off, (ull)expected, why, n - off);
            if (ftruncate(fd, (off_t)off) != 0 || fsync(fd) != 0) {
                rc = qv_seterr(QV_EIO, "%s: cannot truncate the torn final record at "
                               "offset %zu: %s: check the disk and permissions", path,
                               off, strerror(errno));
                goto fail;
            }
            w->n_torn_bytes += n - off;
            n = off;
        }
        qv_free(b);
        b = NULL;
        w->segs[i].bytes = n;
        if (!last) {
            close(fd);
            fd = -1;
            continue;
        }
        /* the last segment is the one appends continue in; what was read
         * back is made durable before anything is built on it */
        if (fdatasync(fd) != 0) {
            rc = qv_seterr(QV_EIO, "%s: fdatasync failed: %s: check the disk (dmesg)",
                           path, strerror(errno));
            goto fail;
        }
        w->fd = fd;
        w->seg_off = n;
        w->seg_first = w->segs[i].first_lsn;
    }
    *last_lsn = expected - 1;
    return 0;

fail:
    qv_free(b);
    if (fd >= 0)
        close(fd);
    return rc;
}

/* mkdir -p, syncing the parent of each directory created. */
static int make_dirs(const char *dir)
{
    char p[PATH_MAX];
    fmt(p, sizeof p, "%s", dir);
    for (char *s = p + 1;; s++) {
        if (*s != '/' && *s != '\0')
            continue;
        char c = *s;
        *s = '\0';
        if (mkdir(p, 0755) == 0) {
            char parent[PATH_MAX];
            fmt(parent, sizeof parent, "%s", p);
            char *slash = strrchr(parent, '/');
            if (slash == parent)
                slash[1] = '\0';
            else if (slash)
                *slash = '\0';
            else
                fmt(parent, sizeof parent, ".");
            int pfd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            if (pfd >= 0) {
                fsync(pfd);
                close(pfd);
            }
        } else if (errno != EEXIST) {
            return qv_seterr(QV_EIO, "%s: cannot create the WAL directory: %s", p,
                             strerror(errno));
        }
        if (c == '\0')
            break;
        *s = c;
    }
    return 0;
}

/* ---- open / close -------------------------------------------------------- */

static int check_opts(const struct qv_wal_opts *o, uint64_t after_lsn)
{
    if (!o || !o->dir || !o->dir[0])
        return qv_seterr(QV_EINVAL, "qv_wal_open: opts.dir is not set: give the "
                         "shard's WAL directory");
    if (strlen(o->dir) > PATH_MAX - 64)
        return qv_seterr(QV_EINVAL, "%.64s...: WAL directory path longer than %d "
                         "bytes", o->dir, PATH_MAX - 64);
    if ((unsigned)o->sync > QV_WAL_SYNC_NEVER)
        return qv_seterr(QV_EINVAL, "%s: opts.sync = %d: expected always, interval "
                         "or never", o->dir, (int)o->sync);
    if (o->sync == QV_WAL_SYNC_INTERVAL && (o->interval_ms == 0 ||
                                            o->interval_ms > 3600000u))
        return qv_seterr(QV_EINVAL, "%s: opts.interval_ms = %u: the interval policy "
                         "needs 1..3600000 ms", o->dir, o->interval_ms);
    if (o->segment_bytes < QV_WAL_SEGMENT_MIN || o->segment_bytes > (1ull << 40))
        return qv_seterr(QV_EINVAL, "%s: opts.segment_bytes = %llu: must be %u..2^40",
                         o->dir, (ull)o->segment_bytes, QV_WAL_SEGMENT_MIN);
    if (after_lsn >= UINT64_MAX / 2)
        return qv_seterr(QV_EINVAL, "%s: after_lsn = %llu is not an LSN", o->dir,
                         (ull)after_lsn);
    return 0;
}

struct qv_wal *qv_wal_open(const struct qv_wal_opts *o, uint64_t after_lsn,
                           qv_wal_replay_fn *fn, void *arg)
{
    struct qv_wal *w;
    pthread_condattr_t ca;
    char msg[QV__WAL_MSG];
    uint64_t last = 0, next;
    int rc, fatal = 0;

    if (check_opts(o, after_lsn) != 0)
        return NULL;
    w = qv_calloc(1, sizeof *w, QV_MEM_IO);
    if (!w)
        return NULL;
    fmt(w->dir, sizeof w->dir, "%s", o->dir);
    w->sync = o->sync;
    w->interval_ms = o->interval_ms;
    w->segment_bytes = o->segment_bytes;
    w->io = sys_io;
    w->fd = -1;
    w->ends_cap = 16;
    w->ends = qv_calloc(w->ends_cap, sizeof *w->ends, QV_MEM_IO);
    if (!w->ends)
        goto fail_struct;
    pthread_mutex_init(&w->lock, NULL);
    pthread_mutex_init(&w->trunc_lock, NULL);
    pthread_cond_init(&w->cv, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->bg_cv, &ca);
    pthread_condattr_destroy(&ca);

    if (make_dirs(w->dir) != 0)
        goto fail_sync;
    w->dirfd = open(w->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (w->dirfd < 0) {
        qv_seterr(QV_EIO, "%s: cannot open the WAL directory: %s", w->dir,
                  strerror(errno));
        goto fail_sync;
    }
    /* one owner per WAL: a second writer would interleave records */
    if (flock(w->dirfd, LOCK_EX | LOCK_NB) != 0) {
        if (errno == EWOULDBLOCK)
            qv_seterr(QV_EBUSY, "%s: the WAL is already open (by another process "
                      "or another qv_wal_open in this one): a shard's WAL has one "
                      "owner; stop the other one or use another directory", w->dir);
        else
            qv_seterr(QV_EIO, "%s: cannot lock the WAL directory: %s", w->dir,
                      strerror(errno));
        goto fail_dir;
    }
    if (list_segments(w) != 0)
        goto fail_dir;
    for (uint32_t i = 0; i < w->nsegs; i++)
        if (check_header(w, i) != 0)
            goto fail_dir;

    if (w->nsegs == 0) {
        last = after_lsn;
        if ((rc = new_segment(w, &sys_io, after_lsn + 1, &fatal, msg, sizeof msg)) != 0) {
            qv_seterr(rc, "%s", msg);
            goto fail_dir;
        }
    } else if (recover(w, after_lsn, fn, arg, &last) != 0) {
        goto fail_fd;
    }
    next = (last > after_lsn ? last : after_lsn) + 1;
    if (next != last + 1) {
        QV_WARN("%s: the WAL ends at LSN %llu, behind the snapshot's LSN %llu: "
                "continuing at LSN %llu in a new segment", w->dir, (ull)last,
                (ull)after_lsn, (ull)next);
        if ((rc = new_segment(w, &sys_io, next, &fatal, msg, sizeof msg)) != 0) {
            qv_seterr(rc, "%s", msg);
            goto fail_fd;
        }
    }
    w->next_lsn = next;
    w->written_lsn = w->synced_lsn = next - 1;

    if (w->sync == QV_WAL_SYNC_INTERVAL) {
        if ((rc = pthread_create(&w->bg, NULL, interval_main, w)) != 0) {
            qv_seterr(-rc, "%s: cannot start the WAL interval thread: %s", w->dir,
                      strerror(rc));
            goto fail_fd;
        }
        w->bg_started = 1;
    }
    QV_INFO("%s: WAL open: %u segments from LSN %llu, next LSN %llu, %llu records "
            "replayed, policy %s", w->dir, w->nsegs, (ull)w->segs[0].first_lsn,
            (ull)next, (ull)w->n_replayed, qv_wal_sync_name(w->sync));
    return w;

fail_fd:
    if (w->fd >= 0)
        close(w->fd);
fail_dir:
    close(w->dirfd);
fail_sync:
    pthread_cond_destroy(&w->bg_cv);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->trunc_lock);
    pthread_mutex_destroy(&w->lock);
    qv_free(w->segs);
    qv_free(w->ends);
fail_struct:
    qv_free(w);
    return NULL;
}

void qv_wal_close(struct qv_wal *w)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->lock);
    w->stop = 1;
    pthread_cond_broadcast(&w->cv);
    pthread_cond_broadcast(&w->bg_cv);
    pthread_mutex_unlock(&w->lock);
    if (w->bg_started)
        pthread_join(w->bg, NULL);

    pthread_mutex_lock(&w->lock);
    if (!w->broken &&
        wait_locked(w, w->epoch, w->next_lsn - 1, w->sync != QV_WAL_SYNC_NEVER, 1) != 0)
        QV_ERR("%s: closing the WAL: %s", w->dir, qv_errmsg());
    pthread_mutex_unlock(&w->lock);

    if (w->fd >= 0)
        close(w->fd);
    close(w->dirfd);
    pthread_cond_destroy(&w->bg_cv);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->trunc_lock);
    pthread_mutex_destroy(&w->lock);
    qv_free(w->pend);
    qv_free(w->spare);
    qv_free(w->segs);
    qv_free(w->ends);
    qv_free(w);
}
