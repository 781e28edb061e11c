/*
 * node_store.c - the node's durability: what it writes to disk before a
 * write is acknowledged, and how it rebuilds itself from that at start
 * ([storage] data_dir; without one the node lives in memory only).
 *
 * Layout of data_dir
 * ------------------
 *   catalog/         a WAL (quiver/wal.h) of collection operations:
 *                    CREATE (the collection's id and specification) and
 *                    DROP (its id), in the order they were acknowledged
 *   c<ID>/wal/       a WAL per collection ("shard"): UPSERT, DELETE and
 *                    ABORT records, in the order they were applied (the
 *                    collection's writer mutex orders them)
 *   c<ID>/seg-<F>.qvseg  a segment's rows: ids, vectors and attribute
 *                    columns, written by the builder thread when it made
 *                    the segment (an index build, a compaction, a merge),
 *                    before the segment could be searched; never changed
 *                    after (deletes are in the snapshot's bitmaps)
 *   c<ID>/seg-<F>.qvix   that segment's index (IVF, IVF-PQ or HNSW index
 *                    file, quiver/ixfile.h); a flat segment has none: its
 *                    index is its vectors in a blocked layout, rebuilt
 *                    from the rows file at load (one copy) rather than
 *                    written to disk a second time.  A sealed segment of
 *                    a FLAT collection is written as it is (no rebuild)
 *   c<ID>/snap-<L>.qvs   the collection's snapshot, the manifest of what
 *                    is live once every record up to LSN L (20 decimal
 *                    digits in the name) was applied: the segment files
 *                    in use with each one's live-row bitmap, and the rows
 *                    of segments that have no files (yet); normally one,
 *                    the WAL then holds the records after L (and those of
 *                    WAL segments not wholly covered)
 *   *.tmp            a file being written (removed at start)
 *
 * A write is logged, then applied, then acknowledged: UPSERT and DELETE
 * are validated first (every error a client can cause is found before
 * the log), appended to the collection's WAL and made durable under
 * [storage] sync (quiver/wal.h "Sync policies" says what each policy
 * risks), then applied.  If applying fails after the record is durable
 * (no memory), an ABORT record naming its LSN follows it, so recovery
 * skips it: the log never holds a write the client was told failed.
 * CREATE is logged once the service gave the collection its id and its
 * WAL directory exists; DROP is logged before the collection goes, and
 * its directory is removed after.
 *
 * Records (all integers little-endian; payloads 8-byte aligned)
 *   catalog CREATE (type 1)
 *     OFFSET  SIZE        MEANING
 *     0       8           collection id
 *     8       4 x 12      dim, metric, index, nattrs, nlist, nprobe, pq_m,
 *                         pq_nbits, hnsw_m, ef_construction, ef_search, 0
 *     56      65          name, NUL-padded
 *     121     16 x 65     attribute names, NUL-padded
 *   catalog DROP (type 2)
 *     0       8           collection id
 *   collection UPSERT (type 1)
 *     0       4           n rows
 *     4       4           dim
 *     8       4           nattrs
 *     12      4           0
 *     16      8 n         ids
 *     ..      4 n dim     vectors, row-major
 *     ..      8 n nattrs  attribute columns (attribute-major), after
 *                         padding the vectors to 8 bytes
 *   collection DELETE (type 2)
 *     0       4           n ids (as the request gave them: repeats and
 *                         absent ids are ignored again at replay)
 *     4       4           0
 *     8       8 n         ids
 *   collection ABORT (type 3)
 *     0       8           LSN of the record that was not applied
 *
 * Segment rows file seg-<F>.qvseg: a quiver/ixfile.h container of type
 * QV_IX_SEGMENT (each section 4096-aligned and CRC32C-checked), sections
 *     SHDR    struct nseg_file_hdr (node_int.h): version, dim, nattrs, slot,
 *             kind, nlist, rows, collection id, F
 *     SIDS    8 x rows      user ids, by row
 *     SVEC    4 x rows x D  vectors, row-major
 *     SCaa    8 x rows      attribute column aa (00..15)
 *   The index file seg-<F>.qvix holds keys slot << 40 | row: the segment
 *   goes back to the same slot.  The index is written first, the rows
 *   file second (each: .tmp, fsync, rename, directory fsync), so a rows
 *   file never stands without its index.
 *
 * Snapshot (manifest) file (all integers little-endian; S segments, R
 * rows, D dim, A nattrs)
 *     OFFSET  SIZE        MEANING
 *     0       8           magic "QVSNAP02"
 *     8       4           format version (2)
 *     12      4           header size (128)
 *     16      8           LSN L: every WAL record <= L is in what it lists
 *     24      4           D (must be the collection's)
 *     28      4           A (must be the collection's)
 *     32      8           R: rows of segments without files
 *     40      8           collection id
 *     48      4           S
 *     52      4           nlist chosen for builds (0: not yet)
 *     56      8           segments sealed so far
 *     64      8           next segment file number
 *     72      4           flags: bit 0 = trained
 *     76      48          0
 *     124     4           CRC32C of bytes 0..123
 *     128     32 S        segment table: F (8), rows (8), slot (4), kind
 *                         (4: 0 flat, 1 IVF, 2 IVF-PQ, 3 HNSW), nlist (4),
 *                         0 (4)
 *     ..      8 W         each segment's live-row bitmap, ceil(rows / 64)
 *                         words in table order (bit set = row live)
 *     ..      8 R         ids of the other rows (distinct, live)
 *     ..      4 R D       their vectors, row-major, then zero padding to 8
 *     ..      8 R A       their attribute columns (attribute-major)
 *     ..      4           CRC32C of the body (from offset 128 to here)
 *   The file's size must be exactly what the header and table imply.
 *
 * Snapshot (qv_node_snapshot): under the collection's wmu (so no write is
 * half done: a write is logged, then applied, both under wmu), L = the
 * WAL's last LSN; segments with files are listed with a copy of their
 * bitmaps, the live rows of the others (the growing segment, sealed ones
 * not built yet, failed builds) copied.  Without wmu that is written to
 * snap-<L>.qvs.tmp, fdatasync'ed, renamed to snap-<L>.qvs and the
 * directory fsync'ed; only then are older snapshots removed, segment
 * files that neither the collection nor the builder's job in hand uses
 * (numbers below the next one noted under wmu) removed, and
 * qv_wal_truncate_upto(L) drops the WAL segments wholly covered.  Sealed
 * segments are never rewritten by a snapshot: its cost is the bitmaps and
 * the unindexed rows.  A crash at any point leaves either the old
 * snapshot with its files and WAL, or the new one with a WAL that still
 * holds every record after L.  An ABORT always follows its record under
 * the same wmu hold, so no snapshot falls between them.
 *
 * Recovery (qv__store_open, inside qv_node_create): the catalog is
 * replayed into the set of live collections (a DROP cancels its CREATE);
 * ids are never reused, so the next id is one past the largest ever
 * created.  Each live collection is created again with its id and
 * specification; its newest snapshot whose header and body CRCs check
 * out is mapped, and every segment it lists is loaded from its files
 * (qv__seg_load): the rows file and the index file are mapped read-only
 * and checked (ixfile.h: every section's CRC), the segment's ids,
 * vectors and attributes and the index's arrays point into the mappings
 * (no copy, no rebuild; a flat segment's index is built from the mapped
 * vectors, a copy), the bitmap is copied and the rows it marks dead
 * are tombstoned in the index.  The segments take their slots
 * (qv__node_install), the snapshot's other rows are applied
 * (qv__node_apply_upsert, SNAP_BATCH rows a call, vectors straight from
 * the mapping), then the WAL is replayed from L + 1 through the same
 * apply code as live writes (a record followed by an ABORT of it is
 * skipped).  A snapshot that is damaged, or one of whose files is, is
 * passed over with a warning for the next older one (or none) only when
 * the WAL still starts at or before that one's L + 1; else the writes
 * are nowhere else and the start is refused with QV_ECORRUPT naming the
 * damaged file.  Without any snapshot, a WAL that does not start at LSN 1
 * is refused by qv_wal_open.  Segment files the chosen snapshot does not
 * list, older snapshots and .tmp files are removed.  A torn final record
 * is truncated; a corrupted record in the middle stops the start with a
 * message naming the file and offset (quiver/wal.h).  Directories c<ID>
 * of collections the catalog does not hold (a drop or a failed create
 * cut short) are removed.
 */
#define _XOPEN_SOURCE 700
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "node_int.h"
#include "quiver/alloc.h"
#include "quiver/crc32c.h"
#include "quiver/errors.h"
#include "quiver/flat.h"
#include "quiver/hnsw.h"
#include "quiver/ivf.h"
#include "quiver/ivfpq.h"
#include "quiver/ixfile.h"
#include "quiver/log.h"
#include "quiver/service.h"
#include "quiver/timeutil.h"
#include "quiver/wal.h"

enum { CAT_CREATE = 1, CAT_DROP = 2 };
enum { REC_UPSERT = 1, REC_DELETE = 2, REC_ABORT = 3 };

#define CAT_NAME 65u
#define CAT_CREATE_SIZE (56u + CAT_NAME + QV_NODE_MAX_ATTRS * CAT_NAME)

static size_t pad8(size_t n)
{
    return (n + 7) & ~(size_t)7;
}

static void put32(uint8_t *p, uint32_t v)
{
    memcpy(p, &v, 4);           /* little-endian hosts only (x86-64, arm64) */
}

static void put64(uint8_t *p, uint64_t v)
{
    memcpy(p, &v, 8);
}

static uint32_t get32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static uint64_t get64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static int wal_opts(const struct qv_node *node, const char *sub, struct qv_wal_opts *o,
                    char *path, size_t cap)
{
    qv_wal_opts_default(o);
    o->sync = node->o.sync;
    o->interval_ms = node->o.sync_interval_ms ? node->o.sync_interval_ms : o->interval_ms;
    if (node->o.wal_segment_bytes)
        o->segment_bytes = node->o.wal_segment_bytes;
    if ((size_t)snprintf(path, cap, "%s/%s", node->o.data_dir, sub) >= cap)
        return qv_seterr(QV_EINVAL, "[storage] data_dir %s: path too long", node->o.data_dir);
    o->dir = path;
    return 0;
}

/* A WAL error as the client should see it: a full disk makes the node
 * unable to take writes (UNAVAILABLE), not the request bad. */
static int wal_error(int rc, const char *what, const char *name)
{
    char why[512];
    snprintf(why, sizeof why, "%s", qv_errmsg());
    if (rc == QV_ENOSPC)
        return qv_seterr(QV_EUNAVAIL, "%s: collection '%s': the node cannot log writes: %s",
                         what, name, why);
    return qv_seterr(rc, "%s: collection '%s': %s", what, name, why);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path) == 0 || errno == ENOENT ? 0 : -1;
}

static void rm_tree(const char *path)
{
    if (nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS) != 0 && errno != ENOENT)
        QV_WARN("storage: cannot remove %s: %s (remove it by hand)", path, strerror(errno));
}

static void coll_dir(const struct qv_node *node, uint64_t id, char *path, size_t cap)
{
    snprintf(path, cap, "%s/c%llu", node->o.data_dir, (unsigned long long)id);
}

/* ---- collection WAL ---------------------------------------------------- */

int qv__store_open_coll(struct qv_node *node, struct ncoll *c, uint64_t after_lsn,
                        int (*fn)(void *, uint64_t, uint8_t, const void *, size_t),
                        void *arg)
{
    struct qv_wal_opts o;
    char sub[64], path[4096];
    snprintf(sub, sizeof sub, "c%llu/wal", (unsigned long long)c->id);
    int rc = wal_opts(node, sub, &o, path, sizeof path);
    if (rc)
        return rc;
    c->wal = qv_wal_open(&o, after_lsn, fn, arg);
    return c->wal ? 0 : qv_errno;
}

int qv__store_log_upsert(struct ncoll *c, const struct qv_node_rows *r, uint64_t *lsn)
{
    const size_t n = r->n, dim = c->spec.dim, na = c->spec.nattrs;
    size_t voff = 16 + 8 * n, aoff = pad8(voff + 4 * n * dim), len = aoff + 8 * n * na;
    uint8_t *p = qv_malloc(len, QV_MEM_SERVER);
    if (!p)
        return qv_seterr(QV_ENOMEM, "UPSERT: collection '%s': no memory to log %zu rows",
                         c->name, n);
    memset(p, 0, 16);
    put32(p, (uint32_t)n);
    put32(p + 4, (uint32_t)dim);
    put32(p + 8, (uint32_t)na);
    memcpy(p + 16, r->ids, 8 * n);
    memcpy(p + voff, r->vectors, 4 * n * dim);
    memset(p + voff + 4 * n * dim, 0, aoff - (voff + 4 * n * dim));
    for (size_t a = 0; a < na; a++)
        memcpy(p + aoff + 8 * n * a, r->attrs[a], 8 * n);
    int rc = qv_wal_append(c->wal, REC_UPSERT, p, len, lsn);
    qv_free(p);
    return rc ? wal_error(rc, "UPSERT", c->name) : 0;
}

int qv__store_log_delete(struct ncoll *c, size_t n, const uint64_t *ids, uint64_t *lsn)
{
    size_t len = 8 + 8 * n;
    uint8_t *p = qv_malloc(len, QV_MEM_SERVER);
    if (!p)
        return qv_seterr(QV_ENOMEM, "DELETE: collection '%s': no memory to log %zu ids",
                         c->name, n);
    put32(p, (uint32_t)n);
    put32(p + 4, 0);
    memcpy(p + 8, ids, 8 * n);
    int rc = qv_wal_append(c->wal, REC_DELETE, p, len, lsn);
    qv_free(p);
    return rc ? wal_error(rc, "DELETE", c->name) : 0;
}

void qv__store_log_abort(struct ncoll *c, uint64_t lsn)
{
    uint8_t p[8];
    put64(p, lsn);
    if (qv_wal_append(c->wal, REC_ABORT, p, sizeof p, NULL) != 0)
        QV_ERR("storage: collection '%s': a write (LSN %llu) failed after it was logged and "
               "its ABORT record could not be logged (%s): a restart would apply it",
               c->name, (unsigned long long)lsn, qv_errmsg());
}

/* Replay of a collection's WAL: one record held back until the next
 * shows it was not aborted. */
struct replay {
    struct ncoll *c;
    uint8_t *held;
    size_t held_len, held_cap;
    uint64_t held_lsn;
    uint8_t held_type;
    uint64_t applied, aborted;
};

static int apply_record(struct replay *R, uint8_t type, const uint8_t *p, size_t len,
                        uint64_t lsn)
{
    struct ncoll *c = R->c;
    if (type == REC_UPSERT) {
        if (len < 16)
            goto bad;
        struct qv_node_rows r = { .n = get32(p), .dim = get32(p + 4), .nattrs = get32(p + 8) };
        size_t n = r.n, voff = 16 + 8 * n, aoff = pad8(voff + 4 * n * r.dim);
        if (r.dim != c->spec.dim || r.nattrs != c->spec.nattrs ||
            len != aoff + 8 * n * r.nattrs)
            goto bad;
        r.ids = (const uint64_t *)(p + 16);
        r.vectors = (const float *)(p + voff);
        for (uint32_t a = 0; a < r.nattrs; a++)
            r.attrs[a] = (const int64_t *)(p + aoff + 8 * n * a);
        int rc = qv__node_apply_upsert(c, &r);
        if (rc)
            return qv_seterr(rc, "storage: collection '%s': replaying UPSERT at LSN %llu: %s",
                             c->name, (unsigned long long)lsn, qv_errmsg());
    } else if (type == REC_DELETE) {
        if (len < 8 || len != 8 + 8 * (size_t)get32(p))
            goto bad;
        long m = qv__node_apply_delete(c, get32(p), (const uint64_t *)(p + 8));
        if (m < 0)
            return (int)m;
    } else {
        goto bad;
    }
    R->applied++;
    return 0;
bad:
    return qv_seterr(QV_ECORRUPT, "storage: collection '%s': WAL record at LSN %llu (type %u, "
                     "%zu bytes) does not decode: the WAL is not this collection's, or it "
                     "was written by another version", c->name, (unsigned long long)lsn, type,
                     len);
}

static int flush_held(struct replay *R)
{
    if (!R->held_type)
        return 0;
    uint8_t t = R->held_type;
    R->held_type = 0;
    return apply_record(R, t, R->held, R->held_len, R->held_lsn);
}

static int on_coll_record(void *arg, uint64_t lsn, uint8_t type, const void *payload,
                          size_t len)
{
    struct replay *R = arg;
    if (type == REC_ABORT) {
        if (len == 8 && R->held_type && get64(payload) == R->held_lsn) {
            R->held_type = 0;               /* that write was never acknowledged */
            R->aborted++;
            return 0;
        }
        return 0;                           /* an ABORT of nothing held: nothing to do */
    }
    int rc = flush_held(R);
    if (rc)
        return rc;
    if (len > R->held_cap) {
        uint8_t *p = qv_malloc(len, QV_MEM_SERVER);
        if (!p)
            return qv_seterr(QV_ENOMEM, "storage: no memory to replay a record of %zu bytes",
                             len);
        qv_free(R->held);
        R->held = p;
        R->held_cap = len;
    }
    memcpy(R->held, payload, len);
    R->held_len = len;
    R->held_lsn = lsn;
    R->held_type = type;
    return 0;
}

/* ---- segment files ------------------------------------------------------ */


static void seg_path(const struct qv_node *node, uint64_t id, uint64_t file, const char *ext,
                     char *path, size_t cap)
{
    snprintf(path, cap, "%s/c%llu/seg-%020llu.%s", node->o.data_dir, (unsigned long long)id,
             (unsigned long long)file, ext);
}

/* The number of a name "seg-<20 digits>.<ext>" with ext qvseg or qvix
 * (or either + ".tmp" when tmp), or -1. */
static int64_t seg_name_file(const char *name, int tmp)
{
    if (strncmp(name, "seg-", 4) != 0)
        return -1;
    for (int i = 4; i < 24; i++)
        if (name[i] < '0' || name[i] > '9')
            return -1;
    const char *ext = name + 24;
    if (tmp ? strcmp(ext, ".qvseg.tmp") && strcmp(ext, ".qvix.tmp")
            : strcmp(ext, ".qvseg") && strcmp(ext, ".qvix"))
        return -1;
    return (int64_t)strtoull(name + 4, NULL, 10);
}

void qv__store_remove_seg(struct ncoll *c, uint64_t F)
{
    char path[4096];
    seg_path(c->node, c->id, F, "qvseg", path, sizeof path);
    if (unlink(path) != 0 && errno != ENOENT)
        QV_WARN("storage: cannot remove %s: %s (remove it by hand)", path, strerror(errno));
    seg_path(c->node, c->id, F, "qvix", path, sizeof path);
    if (unlink(path) != 0 && errno != ENOENT)
        QV_WARN("storage: cannot remove %s: %s (remove it by hand)", path, strerror(errno));
}

static int save_index(const struct nseg *s, const char *path)
{
    switch (s->kind) {
    case NSEG_IVF: return qv_ivf_save(s->ix.ivf, path);
    case NSEG_IVFPQ: return qv_ivfpq_save(s->ix.ivfpq, path);
    case NSEG_HNSW: return qv_hnsw_save(s->ix.hnsw, path);
    default: return qv_seterr(QV_EINVAL, "storage: a %d segment has no index file",
                              (int)s->kind);
    }
}

int qv__store_write_seg(struct ncoll *c, const struct nseg *s, uint64_t F)
{
    char rows_path[4096], ix_path[4096];
    struct qv_ixfile_writer *w = qv_malloc(sizeof *w, QV_MEM_SERVER);
    struct nseg_file_hdr h = {
        .version = NSEG_FILE_VERSION, .dim = c->spec.dim, .nattrs = c->spec.nattrs,
        .slot = s->slot, .kind = (uint32_t)s->kind, .nlist = s->nlist, .rows = s->rows,
        .coll_id = c->id, .file_no = F,
    };
    int rc;

    if (w == NULL)
        return qv_seterr(QV_ENOMEM, "storage: no memory to write a segment");
    seg_path(c->node, c->id, F, "qvseg", rows_path, sizeof rows_path);
    seg_path(c->node, c->id, F, "qvix", ix_path, sizeof ix_path);
    qv_ixfile_writer_init(w, rows_path, QV_IX_SEGMENT);
    rc = qv_ixfile_add(w, NSEG_TAG_SHDR, &h, sizeof h);
    if (rc == 0)
        rc = qv_ixfile_add(w, NSEG_TAG_SIDS, s->ids, s->rows * sizeof *s->ids);
    if (rc == 0)
        rc = qv_ixfile_add(w, NSEG_TAG_SVEC, s->vecs, s->rows * c->spec.dim * sizeof *s->vecs);
    for (uint32_t a = 0; a < c->spec.nattrs && rc == 0; a++)
        rc = qv_ixfile_add(w, NSEG_TAG_SCOL(a), s->cols[a], s->rows * sizeof(int64_t));
    /* the index first: a rows file never stands without its index; a flat
     * segment has none on disk (its index is its vectors in another
     * layout: rebuilt from the rows file at load, not written twice) */
    if (rc == 0 && s->kind != NSEG_FLAT)
        rc = save_index(s, ix_path);
    if (rc == 0)
        rc = qv_ixfile_commit(w);
    qv_free(w);
    if (rc != 0)
        qv__store_remove_seg(c, F);
    return rc;
}

/* ---- snapshots --------------------------------------------------------- */

#define SNAP_MAGIC "QVSNAP02"
#define SNAP_VERSION 2u
#define SNAP_HDR 128u
#define SNAP_ENTRY 32u
#define SNAP_BATCH 4096u            /* rows per qv__node_apply_upsert at load */

/* Where the parts of a snapshot lie (byte offsets): S segment entries
 * whose bitmaps take `words` words, R loose rows. */
struct snap_layout {
    uint64_t rows;                  /* R */
    uint32_t nseg;                  /* S */
    uint64_t words;
    size_t table, bits, ids, vecs, attrs, crc, size;
};

/* 0, or -1 when the sizes do not fit a size_t (a damaged header). */
static int snap_layout(uint32_t nseg, uint64_t words, uint64_t rows, uint32_t dim,
                       uint32_t nattrs, struct snap_layout *g)
{
    const uint64_t row_bytes = 8 + 4 * (uint64_t)dim + 8 * (uint64_t)nattrs;
    if (dim == 0 || dim > 65536 || nattrs > QV_NODE_MAX_ATTRS || nseg > NODE_MAX_SLOTS ||
        words > ((uint64_t)SIZE_MAX / 8) / 4 || rows > ((uint64_t)SIZE_MAX / 4) / row_bytes)
        return -1;
    g->rows = rows;
    g->nseg = nseg;
    g->words = words;
    g->table = SNAP_HDR;
    g->bits = g->table + (size_t)SNAP_ENTRY * nseg;
    g->ids = g->bits + 8 * (size_t)words;
    g->vecs = g->ids + 8 * (size_t)rows;
    g->attrs = pad8(g->vecs + 4 * (size_t)rows * dim);
    g->crc = g->attrs + 8 * (size_t)rows * nattrs;
    g->size = g->crc + 4;
    return 0;
}

static void snap_path(const struct qv_node *node, uint64_t id, uint64_t lsn, const char *ext,
                      char *path, size_t cap)
{
    snprintf(path, cap, "%s/c%llu/snap-%020llu.%s", node->o.data_dir, (unsigned long long)id,
             (unsigned long long)lsn, ext);
}

/* The LSN of a name "snap-<20 digits>.<ext>", or -1. */
static int64_t snap_name_lsn(const char *name, const char *ext)
{
    if (strncmp(name, "snap-", 5) != 0)
        return -1;
    for (int i = 5; i < 25; i++)
        if (name[i] < '0' || name[i] > '9')
            return -1;
    if (name[25] != '.' || strcmp(name + 26, ext) != 0)
        return -1;
    return (int64_t)strtoull(name + 5, NULL, 10);
}

static int fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    errno = e;
    return rc;
}

/* Write size bytes of buf to path (created or truncated) and fdatasync
 * it: 0 or -1 with errno (the file may be partial). */
static int write_file(const char *path, const uint8_t *buf, size_t size)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd < 0)
        return -1;
    for (size_t off = 0; off < size;) {
        ssize_t w = write(fd, buf + off, size - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            int e = w < 0 ? errno : EIO;
            close(fd);
            errno = e;
            return -1;
        }
        off += (size_t)w;
    }
    if (fdatasync(fd) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return close(fd);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The files of c to keep: numbers sorted (keep[0..nkeep-1]); every other
 * segment file below `below`, snapshots older than lsn (when lsn > 0) and
 * leftover .tmp files (when tmp) are removed.  *max_file: the largest
 * segment file number seen (may be NULL). */
static void remove_unused(struct qv_node *node, struct ncoll *c, uint64_t lsn,
                          const uint64_t *keep, size_t nkeep, uint64_t below, int tmp,
                          uint64_t *max_file)
{
    char dir[4096], path[4096 + 320];
    coll_dir(node, c->id, dir, sizeof dir);
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL) {
        int64_t l = snap_name_lsn(e->d_name, "qvs"), f = seg_name_file(e->d_name, 0);
        const char *what = NULL;
        if (f >= 0 && max_file && (uint64_t)f > *max_file)
            *max_file = (uint64_t)f;
        if (l >= 0 && (uint64_t)l < lsn)
            what = "an older snapshot";
        else if (f >= 0 && (uint64_t)f < below &&
                 (nkeep == 0 ||
                  !bsearch(&(uint64_t){ (uint64_t)f }, keep, nkeep, sizeof *keep, cmp_u64)))
            what = "a segment no snapshot or collection uses";
        else if (tmp && (snap_name_lsn(e->d_name, "qvs.tmp") >= 0 ||
                         seg_name_file(e->d_name, 1) >= 0))
            what = "a file that was not completed";
        if (what == NULL)
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        QV_DEBUG("storage: removing %s: %s", path, what);
        if (unlink(path) != 0 && errno != ENOENT)
            QV_WARN("storage: cannot remove %s (%s): %s (remove it by hand)", path, what,
                    strerror(errno));
    }
    if (d)
        closedir(d);
}

/* What a snapshot needs from under wmu. */
struct snap_image {
    uint8_t *p;                     /* the file's bytes, header and CRCs filled */
    struct snap_layout g;
    uint64_t *keep;                 /* file numbers in use (sorted) */
    size_t nkeep;
    uint64_t below;                 /* file numbers from here on are newer */
};

/*
 * Under wmu: *L = the WAL's last LSN; a segment with its files on disk
 * is listed (file number, rows, slot, kind, nlist) with a copy of its
 * alive bitmap; the live rows of every other segment (the growing one,
 * ones sealed but not built, failed builds) are copied.  Image NULL:
 * nothing new since the snapshot in force.
 */
static int snap_copy(struct ncoll *c, uint64_t *L, struct snap_image *im)
{
    const uint32_t dim = c->spec.dim, na = c->spec.nattrs;
    struct qv_wal_stats ws;
    uint64_t rows = 0, words = 0;
    uint32_t nseg = 0;

    memset(im, 0, sizeof *im);
    pthread_mutex_lock(&c->wmu);
    if (atomic_load_explicit(&c->dropping, memory_order_acquire)) {
        pthread_mutex_unlock(&c->wmu);
        return qv_seterr(QV_ENOENT, "SNAPSHOT: collection %llu ('%s') is being dropped",
                         (unsigned long long)c->id, c->name);
    }
    qv_wal_stats(c->wal, &ws);
    *L = ws.last_lsn;
    if (*L == c->snap_lsn) {                /* nothing logged since (or ever) */
        pthread_mutex_unlock(&c->wmu);
        return 0;
    }
    for (uint32_t i = 0; i < c->nslots; i++) {
        const struct nseg *s = c->slots[i];
        if (s == NULL)
            continue;
        if (s->file_no) {
            nseg++;
            words += (s->rows + 63) / 64;
            continue;
        }
        for (uint64_t r = 0; r < s->rows; r++)
            rows += (uint64_t)qv__seg_alive(s, r);
    }
    uint8_t *p = NULL;
    if (snap_layout(nseg, words, rows, dim, na, &im->g) == 0)
        p = qv_malloc(im->g.size, QV_MEM_SERVER);
    im->keep = qv_malloc((nseg + 1) * sizeof *im->keep, QV_MEM_SERVER);
    if (p == NULL || im->keep == NULL) {
        pthread_mutex_unlock(&c->wmu);
        qv_free(p);
        qv_free(im->keep);
        im->keep = NULL;
        return qv_seterr(QV_ENOMEM, "SNAPSHOT: collection '%s': no memory for a copy of its "
                         "%llu unindexed rows and %u segment bitmaps", c->name,
                         (unsigned long long)rows, nseg);
    }
    const struct snap_layout *g = &im->g;
    uint64_t *ids = (uint64_t *)(p + g->ids), k = 0, *bits = (uint64_t *)(p + g->bits);
    float *vecs = (float *)(p + g->vecs);
    int64_t *cols = (int64_t *)(p + g->attrs);
    uint8_t *ent = p + g->table;
    for (uint32_t i = 0; i < c->nslots; i++) {
        const struct nseg *s = c->slots[i];
        if (s == NULL)
            continue;
        if (s->file_no) {
            uint64_t w = (s->rows + 63) / 64;
            put64(ent, s->file_no);
            put64(ent + 8, s->rows);
            put32(ent + 16, s->slot);
            put32(ent + 20, (uint32_t)s->kind);
            put32(ent + 24, s->nlist);
            put32(ent + 28, 0);
            ent += SNAP_ENTRY;
            memcpy(bits, s->alive, w * sizeof *bits);
            bits += w;
            im->keep[im->nkeep++] = s->file_no;
            continue;
        }
        for (uint64_t r = 0; r < s->rows; r++) {
            if (!qv__seg_alive(s, r))
                continue;
            ids[k] = s->ids[r];
            memcpy(vecs + k * dim, s->vecs + r * dim, dim * sizeof(float));
            for (uint32_t a = 0; a < na; a++)
                cols[rows * a + k] = s->cols[a][r];
            k++;
        }
    }
    if (c->build_file)
        im->keep[im->nkeep++] = c->build_file;
    im->below = c->next_file;
    memset(p, 0, SNAP_HDR);
    memcpy(p, SNAP_MAGIC, 8);
    put32(p + 8, SNAP_VERSION);
    put32(p + 12, SNAP_HDR);
    put64(p + 16, *L);
    put32(p + 24, dim);
    put32(p + 28, na);
    put64(p + 32, rows);
    put64(p + 40, c->id);
    put32(p + 48, nseg);
    put32(p + 52, c->nlist_eff);
    put64(p + 56, c->seals);
    put64(p + 64, c->next_file);
    put32(p + 72, c->trained ? 1u : 0u);
    pthread_mutex_unlock(&c->wmu);

    qsort(im->keep, im->nkeep, sizeof *im->keep, cmp_u64);
    memset(p + g->vecs + 4 * (size_t)rows * dim, 0, g->attrs - (g->vecs + 4 * (size_t)rows * dim));
    put32(p + SNAP_HDR - 4, qv_crc32c(0, p, SNAP_HDR - 4));
    put32(p + g->crc, qv_crc32c(0, p + SNAP_HDR, g->crc - SNAP_HDR));
    im->p = p;
    return 0;
}

static int snap_take(struct qv_node *node, struct ncoll *c, uint64_t *out_lsn)
{
    char tmp[4096], path[4096], dir[4096];
    struct snap_image im;
    uint64_t L = 0;
    int64_t t0 = qv_now_ns();

    int rc = snap_copy(c, &L, &im);
    if (rc || im.p == NULL) {
        if (rc == 0 && out_lsn)
            *out_lsn = L;
        return rc;
    }
    snap_path(node, c->id, L, "qvs.tmp", tmp, sizeof tmp);
    snap_path(node, c->id, L, "qvs", path, sizeof path);
    coll_dir(node, c->id, dir, sizeof dir);
    const char *failed = tmp;
    if (write_file(tmp, im.p, im.g.size) != 0 || (failed = path, rename(tmp, path) != 0) ||
        (failed = dir, fsync_dir(dir) != 0)) {
        int e = errno;
        unlink(tmp);
        qv_free(im.p);
        qv_free(im.keep);
        return qv_seterr(e == ENOSPC ? QV_ENOSPC : QV_EIO, "SNAPSHOT: collection '%s': %s: "
                         "%s (%zu bytes): the previous snapshot and the WAL are kept; %s",
                         c->name, failed, strerror(e), im.g.size,
                         e == ENOSPC ? "free space on the disk and snapshot again"
                                     : "check the disk and snapshot again");
    }
    qv_free(im.p);
    pthread_mutex_lock(&c->wmu);
    c->snap_lsn = L;
    pthread_mutex_unlock(&c->wmu);
    remove_unused(node, c, L, im.keep, im.nkeep, im.below, 0, NULL);
    qv_free(im.keep);
    int removed = qv_wal_truncate_upto(c->wal, L);
    if (removed < 0)
        QV_WARN("storage: collection '%s': snapshot %s is written, but the WAL segments it "
                "covers could not all be removed: %s", c->name, path, qv_errmsg());
    QV_INFO("storage: collection '%s': snapshot %s: %u segment files and %llu unindexed rows "
            "up to LSN %llu, %d WAL segments removed, %.0f ms", c->name, path, im.g.nseg,
            (unsigned long long)im.g.rows, (unsigned long long)L, removed < 0 ? 0 : removed,
            (double)(qv_now_ns() - t0) / 1e6);
    if (out_lsn)
        *out_lsn = L;
    return 0;
}

int qv_node_snapshot(struct qv_node *node, uint64_t id, uint64_t *lsn)
{
    if (lsn)
        *lsn = 0;
    struct ncoll *c = qv__node_coll_get(node, id);
    if (c == NULL)
        return qv_seterr(QV_ENOENT, "SNAPSHOT: collection %llu does not exist",
                         (unsigned long long)id);
    int rc;
    if (node->catalog == NULL) {
        rc = qv_seterr(QV_EINVAL, "SNAPSHOT: collection '%s': the node keeps its data in "
                       "memory only ([storage] data_dir is not set): set data_dir to take "
                       "snapshots", c->name);
    } else {
        pthread_mutex_lock(&c->snap_mu);
        rc = snap_take(node, c, lsn);
        pthread_mutex_unlock(&c->snap_mu);
    }
    qv__node_coll_put(c);
    return rc;
}

/* A snapshot file of c mapped read-only. */
struct snap_map {
    uint8_t *base;
    size_t size;
    uint64_t lsn;
    struct snap_layout g;
};

/* Map path and check it (header, sizes, CRCs, c's dim and nattrs, the
 * segment table): 0, or -1 with why (the mapping undone). */
static int snap_map(const char *path, const struct ncoll *c, struct snap_map *m, char *why,
                    size_t cap)
{
    struct stat st;
    memset(m, 0, sizeof *m);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) != 0) {
        snprintf(why, cap, "cannot read it: %s", strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    if ((uint64_t)st.st_size < SNAP_HDR + 4) {
        snprintf(why, cap, "%lld bytes: shorter than a header", (long long)st.st_size);
        close(fd);
        return -1;
    }
    m->size = (size_t)st.st_size;
    m->base = mmap(NULL, m->size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m->base == MAP_FAILED) {
        m->base = NULL;
        snprintf(why, cap, "mmap: %s", strerror(errno));
        return -1;
    }
    const uint8_t *p = m->base;
    uint32_t nseg = get32(p + 48);
    uint64_t words = 0;
    int table_ok = 1;
    if (nseg <= NODE_MAX_SLOTS && m->size >= SNAP_HDR + (size_t)SNAP_ENTRY * nseg)
        for (uint32_t i = 0; i < nseg; i++)
            words += (get64(p + SNAP_HDR + (size_t)SNAP_ENTRY * i + 8) + 63) / 64;
    else
        table_ok = 0;
    if (memcmp(p, SNAP_MAGIC, 6) != 0)
        snprintf(why, cap, "not a snapshot (bad magic)");
    else if (memcmp(p, SNAP_MAGIC, 8) != 0 || get32(p + 8) != SNAP_VERSION ||
             get32(p + 12) != SNAP_HDR)
        snprintf(why, cap, "format version %u (this build reads %u): written by another "
                 "version of quiverd", get32(p + 8), SNAP_VERSION);
    else if (get32(p + SNAP_HDR - 4) != qv_crc32c(0, p, SNAP_HDR - 4))
        snprintf(why, cap, "header CRC mismatch");
    else if (get32(p + 24) != c->spec.dim || get32(p + 28) != c->spec.nattrs ||
             get64(p + 40) != c->id)
        snprintf(why, cap, "written for collection %llu (dim %u, %u attributes), not this "
                 "one", (unsigned long long)get64(p + 40), get32(p + 24), get32(p + 28));
    else if (!table_ok ||
             snap_layout(nseg, words, get64(p + 32), c->spec.dim, c->spec.nattrs, &m->g) != 0 ||
             m->g.size != m->size)
        snprintf(why, cap, "%zu bytes, but its header says %u segments and %llu rows", m->size,
                 nseg, (unsigned long long)get64(p + 32));
    else if (get32(p + m->g.crc) != qv_crc32c(0, p + SNAP_HDR, m->g.crc - SNAP_HDR))
        snprintf(why, cap, "body CRC mismatch");
    else {
        m->lsn = get64(p + 16);
        return 0;
    }
    munmap(m->base, m->size);
    m->base = NULL;
    return -1;
}

static int cmp_desc(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* The snapshot LSNs of c, newest first (*n of them; *lsns owned by the
 * caller); *wal_first: the first LSN of c's oldest WAL segment, 0 when it
 * has none. */
static int snap_list(struct qv_node *node, struct ncoll *c, uint64_t **lsns, size_t *n,
                     uint64_t *wal_first)
{
    char dir[4096], path[4096 + 320];
    size_t cap = 0;
    *lsns = NULL;
    *n = 0;
    *wal_first = 0;
    coll_dir(node, c->id, dir, sizeof dir);
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL) {
        int64_t l = snap_name_lsn(e->d_name, "qvs");
        if (l < 0)
            continue;
        if (*n == cap) {
            cap = cap ? 2 * cap : 8;
            uint64_t *x = qv_malloc(cap * sizeof *x, QV_MEM_SERVER);
            if (x == NULL) {
                closedir(d);
                qv_free(*lsns);
                *lsns = NULL;
                return qv_seterr(QV_ENOMEM, "storage: no memory to list snapshots");
            }
            if (*n)
                memcpy(x, *lsns, *n * sizeof *x);
            qv_free(*lsns);
            *lsns = x;
        }
        (*lsns)[(*n)++] = (uint64_t)l;
    }
    if (d)
        closedir(d);
    if (*n > 1)
        qsort(*lsns, *n, sizeof **lsns, cmp_desc);
    snprintf(path, sizeof path, "%s/wal", dir);
    if ((d = opendir(path)) != NULL) {
        while ((e = readdir(d)) != NULL) {
            const char *nm = e->d_name;
            if (strncmp(nm, "wal-", 4) != 0 || strlen(nm) != 28 || strcmp(nm + 24, ".log"))
                continue;
            uint64_t l = strtoull(nm + 4, NULL, 10);
            if (*wal_first == 0 || l < *wal_first)
                *wal_first = l;
        }
        closedir(d);
    }
    return 0;
}

/* The segments of the mapped snapshot m, loaded from their files (*segs,
 * m->g.nseg of them, the caller's): 0, or -1 with why (nothing left). */
static int snap_open_segs(struct qv_node *node, struct ncoll *c, const struct snap_map *m,
                          struct nseg ***segs, char *why, size_t cap)
{
    const uint8_t *p = m->base;
    const uint64_t *bits = (const uint64_t *)(p + m->g.bits);
    char rows_path[4096], ix_path[4096];
    uint32_t i;

    *segs = qv_calloc(m->g.nseg ? m->g.nseg : 1, sizeof **segs, QV_MEM_SERVER);
    if (*segs == NULL) {
        snprintf(why, cap, "no memory for %u segments", m->g.nseg);
        return -1;
    }
    for (i = 0; i < m->g.nseg; i++) {
        const uint8_t *e = p + m->g.table + (size_t)SNAP_ENTRY * i;
        uint64_t F = get64(e), rows = get64(e + 8);
        uint32_t slot = get32(e + 16), kind = get32(e + 20), nlist = get32(e + 24);
        seg_path(node, c->id, F, "qvseg", rows_path, sizeof rows_path);
        seg_path(node, c->id, F, "qvix", ix_path, sizeof ix_path);
        if (F == 0 || kind > NSEG_HNSW || slot >= NODE_MAX_SLOTS || rows > NODE_MAX_SEG_ROWS) {
            snprintf(why, cap, "segment entry %u (file %llu, slot %u, kind %u, %llu rows) is "
                     "out of range", i, (unsigned long long)F, slot, kind,
                     (unsigned long long)rows);
            break;
        }
        (*segs)[i] = qv__seg_load(c, slot, (enum nseg_kind)kind, nlist, rows, bits, rows_path,
                                  ix_path);
        if ((*segs)[i] == NULL) {
            snprintf(why, cap, "%s", qv_errmsg());
            break;
        }
        (*segs)[i]->file_no = F;
        bits += (rows + 63) / 64;
    }
    if (i == m->g.nseg)
        return 0;
    for (uint32_t j = 0; j < i; j++)
        qv__seg_free((*segs)[j], 0);
    qv_free(*segs);
    *segs = NULL;
    return -1;
}

/*
 * Load c's newest intact snapshot (wmu held, before its WAL is opened):
 * its segments mapped from their files and installed, its unindexed rows
 * applied; *lsn its LSN (0: none), *rows the rows it held, *nseg its
 * segments.  Unused segment files, older snapshots and leftover .tmp
 * files are removed.
 */
static int snap_load(struct qv_node *node, struct ncoll *c, uint64_t *lsn, uint64_t *rows,
                     uint32_t *nseg)
{
    char path[4096], bad[4096 + 600] = "", why[512] = "";
    uint64_t *lsns, wal_first, max_file = 0;
    struct nseg **segs = NULL;
    size_t n;
    struct snap_map m = { 0 };

    *lsn = 0;
    *rows = 0;
    *nseg = 0;
    int rc = snap_list(node, c, &lsns, &n, &wal_first);
    if (rc)
        return rc;
    size_t i;
    for (i = 0; i < n; i++) {
        snap_path(node, c->id, lsns[i], "qvs", path, sizeof path);
        if (snap_map(path, c, &m, why, sizeof why) == 0) {
            if (snap_open_segs(node, c, &m, &segs, why, sizeof why) == 0)
                break;
            munmap(m.base, m.size);
            m.base = NULL;
        }
        QV_WARN("storage: collection '%s': snapshot %s is damaged (%s): %s", c->name, path,
                why, i + 1 < n ? "trying the older one" : "no older snapshot");
        if (!bad[0])
            snprintf(bad, sizeof bad, "%s (%s)", path, why);
    }
    uint64_t from = i < n ? lsns[i] : 0;
    qv_free(lsns);
    if (bad[0] && wal_first > from + 1) {
        if (m.base) {
            for (uint32_t j = 0; j < m.g.nseg; j++)
                qv__seg_free(segs[j], 0);
            qv_free(segs);
            munmap(m.base, m.size);
        }
        return qv_seterr(QV_ECORRUPT, "storage: collection '%s': snapshot %s is damaged and "
                         "the WAL starts at LSN %llu, so the writes up to LSN %llu exist "
                         "nowhere else: restore the damaged file from a backup, or remove "
                         "%s/c%llu to give up the collection's data", c->name, bad,
                         (unsigned long long)wal_first, (unsigned long long)(wal_first - 1),
                         node->o.data_dir, (unsigned long long)c->id);
    }
    if (bad[0])
        QV_WARN("storage: collection '%s': recovering from %s and the WAL after LSN %llu",
                c->name, i < n ? path : "no snapshot", (unsigned long long)from);
    /* the files the chosen snapshot uses stay; the rest go */
    uint64_t *keep = NULL;
    size_t nkeep = 0;
    if (m.base) {
        keep = qv_malloc((m.g.nseg ? m.g.nseg : 1) * sizeof *keep, QV_MEM_SERVER);
        for (uint32_t j = 0; keep && j < m.g.nseg; j++)
            keep[nkeep++] = segs[j]->file_no;
        if (keep)
            qsort(keep, nkeep, sizeof *keep, cmp_u64);
    }
    if (m.base == NULL || keep != NULL)
        remove_unused(node, c, from, keep, nkeep, UINT64_MAX, 1, &max_file);
    qv_free(keep);
    c->next_file = max_file + 1;
    if (m.base == NULL)
        return 0;

    const uint8_t *p = m.base;
    if (get64(p + 64) > c->next_file)
        c->next_file = get64(p + 64);
    c->nlist_eff = get32(p + 52);
    c->seals = get64(p + 56);
    c->trained |= (int)(get32(p + 72) & 1u);
    rc = qv__node_install(c, segs, m.g.nseg);       /* segs are c's now */
    qv_free(segs);
    if (rc != 0) {
        munmap(m.base, m.size);
        return qv_seterr(rc, "storage: collection '%s': loading snapshot %s: %s", c->name,
                         path, qv_errmsg());
    }
    uint64_t live = c->map.count;
    const uint32_t dim = c->spec.dim, na = c->spec.nattrs;
    const uint64_t total = m.g.rows;
    for (uint64_t r0 = 0; r0 < total && rc == 0; r0 += SNAP_BATCH) {
        size_t k = (size_t)(total - r0 < SNAP_BATCH ? total - r0 : SNAP_BATCH);
        struct qv_node_rows r = {
            .n = k, .dim = dim, .nattrs = na,
            .ids = (const uint64_t *)(m.base + m.g.ids) + r0,
            .vectors = (const float *)(m.base + m.g.vecs) + r0 * dim,
        };
        for (uint32_t a = 0; a < na; a++)
            r.attrs[a] = (const int64_t *)(m.base + m.g.attrs) + total * a + r0;
        if ((rc = qv__node_apply_upsert(c, &r)) != 0)
            rc = qv_seterr(rc, "storage: collection '%s': loading snapshot %s: %s", c->name,
                           path, qv_errmsg());
    }
    munmap(m.base, m.size);
    if (rc == 0) {
        *lsn = from;
        *rows = live + total;
        *nseg = m.g.nseg;
        c->snap_lsn = from;
    }
    return rc;
}

/* ---- catalog ----------------------------------------------------------- */

int qv__store_log_create(struct qv_node *node, const struct ncoll *c)
{
    uint8_t p[CAT_CREATE_SIZE + 7];
    const struct qv_node_coll_spec *s = &c->spec;
    const uint32_t f[12] = { s->dim, (uint32_t)s->metric, (uint32_t)s->index, s->nattrs,
                             s->nlist, s->nprobe, s->pq_m, s->pq_nbits, s->hnsw_m,
                             s->ef_construction, s->ef_search, 0 };
    memset(p, 0, sizeof p);
    put64(p, c->id);
    for (int i = 0; i < 12; i++)
        put32(p + 8 + 4 * i, f[i]);
    snprintf((char *)p + 56, CAT_NAME, "%s", c->name);
    for (uint32_t a = 0; a < s->nattrs; a++)
        snprintf((char *)p + 56 + CAT_NAME * (a + 1), CAT_NAME, "%s", c->attr_names[a]);
    int rc = qv_wal_append(node->catalog, CAT_CREATE, p, CAT_CREATE_SIZE, NULL);
    return rc ? wal_error(rc, "CREATE", c->name) : 0;
}

int qv__store_log_drop(struct qv_node *node, const struct ncoll *c)
{
    uint8_t p[8];
    put64(p, c->id);
    int rc = qv_wal_append(node->catalog, CAT_DROP, p, sizeof p, NULL);
    return rc ? wal_error(rc, "DROP", c->name) : 0;
}

void qv__store_drop_files(struct qv_node *node, uint64_t id)
{
    char path[4096];
    coll_dir(node, id, path, sizeof path);
    rm_tree(path);
}

/* The catalog's live collections while it is replayed. */
struct cat_entry {
    uint64_t id;
    uint8_t rec[CAT_CREATE_SIZE];
    int live;
};

struct cat_replay {
    struct cat_entry *e;
    size_t n, cap;
    uint64_t max_id;
};

static int on_cat_record(void *arg, uint64_t lsn, uint8_t type, const void *payload,
                         size_t len)
{
    struct cat_replay *R = arg;
    const uint8_t *p = payload;
    if ((type == CAT_CREATE && len != CAT_CREATE_SIZE) || (type == CAT_DROP && len != 8) ||
        (type != CAT_CREATE && type != CAT_DROP))
        return qv_seterr(QV_ECORRUPT, "storage: catalog record at LSN %llu (type %u, %zu "
                         "bytes) does not decode", (unsigned long long)lsn, type, len);
    uint64_t id = get64(p);
    if (type == CAT_DROP) {
        for (size_t i = 0; i < R->n; i++)
            if (R->e[i].id == id)
                R->e[i].live = 0;
        return 0;
    }
    if (R->n == R->cap) {
        size_t cap = R->cap ? 2 * R->cap : 16;
        struct cat_entry *e = qv_malloc(cap * sizeof *e, QV_MEM_SERVER);
        if (!e)
            return qv_seterr(QV_ENOMEM, "storage: no memory for the catalog");
        if (R->n)
            memcpy(e, R->e, R->n * sizeof *e);
        qv_free(R->e);
        R->e = e;
        R->cap = cap;
    }
    R->e[R->n].id = id;
    memcpy(R->e[R->n].rec, p, CAT_CREATE_SIZE);
    R->e[R->n].live = 1;
    R->n++;
    if (id > R->max_id)
        R->max_id = id;
    return 0;
}

static void spec_of(const uint8_t *p, struct qv_node_coll_spec *s, char *name,
                    char attrs[][QV_NODE_MAX_NAME + 1])
{
    memset(s, 0, sizeof *s);
    s->dim = get32(p + 8);
    s->metric = (enum qv_metric)get32(p + 12);
    s->index = (enum qv_node_index)get32(p + 16);
    s->nattrs = get32(p + 20);
    s->nlist = get32(p + 24);
    s->nprobe = get32(p + 28);
    s->pq_m = get32(p + 32);
    s->pq_nbits = get32(p + 36);
    s->hnsw_m = get32(p + 40);
    s->ef_construction = get32(p + 44);
    s->ef_search = get32(p + 48);
    snprintf(name, QV_NODE_MAX_NAME + 1, "%.*s", (int)QV_NODE_MAX_NAME, (const char *)p + 56);
    s->name = name;
    if (s->nattrs > QV_NODE_MAX_ATTRS)
        s->nattrs = QV_NODE_MAX_ATTRS + 1;  /* check_spec refuses it */
    for (uint32_t a = 0; a < s->nattrs && a < QV_NODE_MAX_ATTRS; a++) {
        snprintf(attrs[a], QV_NODE_MAX_NAME + 1, "%.*s", (int)QV_NODE_MAX_NAME,
                 (const char *)p + 56 + CAT_NAME * (a + 1));
        s->attrs[a] = attrs[a];
    }
}

/* Remove c<ID> directories of collections not live in the catalog. */
static void remove_strays(struct qv_node *node, const struct cat_replay *R)
{
    DIR *d = opendir(node->o.data_dir);
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL) {
        char *end;
        if (e->d_name[0] != 'c' || e->d_name[1] < '0' || e->d_name[1] > '9')
            continue;
        unsigned long long id = strtoull(e->d_name + 1, &end, 10);
        if (*end)
            continue;
        int live = 0;
        for (size_t i = 0; i < R->n; i++)
            live |= R->e[i].live && R->e[i].id == id;
        if (!live) {
            char path[4096];
            coll_dir(node, id, path, sizeof path);
            QV_INFO("storage: removing %s: collection %llu was dropped (or its create did "
                    "not complete)", path, id);
            rm_tree(path);
        }
    }
    if (d)
        closedir(d);
}

int qv__store_open(struct qv_node *node)
{
    struct qv_wal_opts o;
    char path[4096];
    struct cat_replay R = { 0 };
    int rc;

    if (mkdir(node->o.data_dir, 0750) != 0 && errno != EEXIST)
        return qv_seterr(QV_EIO, "[storage] data_dir %s: %s", node->o.data_dir,
                         strerror(errno));
    if ((rc = wal_opts(node, "catalog", &o, path, sizeof path)) != 0)
        return rc;
    int64_t t0 = qv_now_ns();
    node->catalog = qv_wal_open(&o, 0, on_cat_record, &R);
    if (!node->catalog) {
        qv_free(R.e);
        return qv_errno;
    }
    remove_strays(node, &R);
    uint64_t rows = 0, records = 0, aborted = 0;
    unsigned ncoll = 0;
    for (size_t i = 0; i < R.n && rc == 0; i++) {
        if (!R.e[i].live)
            continue;
        struct qv_node_coll_spec s;
        char name[QV_NODE_MAX_NAME + 1], attrs[QV_NODE_MAX_ATTRS][QV_NODE_MAX_NAME + 1];
        struct ncoll *c = NULL;
        spec_of(R.e[i].rec, &s, name, attrs);
        if ((rc = qv__node_recreate(node, &s, R.e[i].id, &c)) != 0) {
            rc = qv_seterr(rc, "storage: the catalog's collection %llu ('%s') cannot be "
                           "created again: %s", (unsigned long long)R.e[i].id, name,
                           qv_errmsg());
            break;
        }
        struct replay CR = { .c = c };
        uint64_t snap_lsn = 0, snap_rows = 0;
        uint32_t snap_segs = 0;
        pthread_mutex_lock(&c->wmu);
        rc = snap_load(node, c, &snap_lsn, &snap_rows, &snap_segs);
        if (rc == 0)
            rc = qv__store_open_coll(node, c, snap_lsn, on_coll_record, &CR);
        if (rc == 0)
            rc = flush_held(&CR);
        pthread_mutex_unlock(&c->wmu);
        qv_free(CR.held);
        if (rc == 0)
            QV_INFO("storage: collection '%s' (%llu): %llu rows from the snapshot at LSN %llu "
                    "(%u segments mapped with their indexes), %llu WAL records replayed "
                    "(%llu aborted)", c->name,
                    (unsigned long long)c->id, (unsigned long long)snap_rows,
                    (unsigned long long)snap_lsn, snap_segs, (unsigned long long)CR.applied,
                    (unsigned long long)CR.aborted);
        records += CR.applied;
        aborted += CR.aborted;
        rows += c->map.count;
        ncoll++;
    }
    if (node->next_id <= R.max_id)
        node->next_id = R.max_id + 1;
    qv_free(R.e);
    if (rc == 0)
        QV_INFO("storage: %s: %u collections, %llu rows from %llu WAL records (%llu aborted) "
                "in %.0f ms", node->o.data_dir, ncoll, (unsigned long long)rows,
                (unsigned long long)records, (unsigned long long)aborted,
                (double)(qv_now_ns() - t0) / 1e6);
    return rc;
}

void qv__store_close(struct qv_node *node)
{
    qv_wal_close(node->catalog);
    node->catalog = NULL;
}

/* ---- the snapshotter ---------------------------------------------------- */

/*
 * With opts.snapshot_wal_bytes > 0 a thread looks at every collection once
 * a second and snapshots one whose WAL holds at least that many bytes and
 * records the snapshot in force does not cover (qv_node_snapshot, so
 * searches go on and the collection's writes wait only for the copy of
 * its rows).  The current WAL segment is never removed, so the threshold
 * should be above [storage] wal_segment_bytes.  Errors are logged (rate
 * limited by the one-second period) and retried at the next look.
 */
static void *snapshotter(void *arg)
{
    struct qv_node *node = arg;
    uint32_t cap = node->o.max_collections;
    struct qv_node_coll_info *list = qv_malloc(cap * sizeof *list, QV_MEM_SERVER);

    pthread_mutex_lock(&node->snap_tmu);
    while (!node->snap_stop) {
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += 1;
        pthread_cond_timedwait(&node->snap_cv, &node->snap_tmu, &until);
        if (node->snap_stop || !list)
            break;
        pthread_mutex_unlock(&node->snap_tmu);
        uint32_t n = 0;
        qv_node_list(node, list, cap, &n);
        for (uint32_t i = 0; i < n && i < cap; i++) {
            struct qv_node_storage st;
            uint64_t lsn;
            if (qv_node_storage(node, list[i].id, &st) != 0 || !st.enabled ||
                st.bytes < node->o.snapshot_wal_bytes || st.last_lsn <= st.snapshot_lsn)
                continue;
            int64_t t0 = qv_now_ns();
            if (qv_node_snapshot(node, list[i].id, &lsn) == 0)
                QV_INFO("storage: collection '%s': snapshot at LSN %llu (its WAL held %llu "
                        "bytes) in %.0f ms", list[i].name, (unsigned long long)lsn,
                        (unsigned long long)st.bytes, (double)(qv_now_ns() - t0) / 1e6);
            else if (qv_errno != QV_ENOENT)
                QV_WARN("storage: collection '%s': automatic snapshot failed: %s",
                        list[i].name, qv_errmsg());
        }
        pthread_mutex_lock(&node->snap_tmu);
    }
    pthread_mutex_unlock(&node->snap_tmu);
    qv_free(list);
    return NULL;
}

int qv__store_start_snapshotter(struct qv_node *node)
{
    pthread_condattr_t ca;
    if (!node->catalog || !node->o.snapshot_wal_bytes)
        return 0;
    if (pthread_mutex_init(&node->snap_tmu, NULL) != 0)
        return qv_seterr(QV_ENOMEM, "storage: cannot create the snapshotter's mutex");
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(&node->snap_cv, &ca);
    pthread_condattr_destroy(&ca);
    if (rc != 0) {
        pthread_mutex_destroy(&node->snap_tmu);
        return qv_seterr(QV_ENOMEM, "storage: cannot create the snapshotter's condition");
    }
    node->snap_stop = 0;
    if ((rc = pthread_create(&node->snapper, NULL, snapshotter, node)) != 0) {
        pthread_cond_destroy(&node->snap_cv);
        pthread_mutex_destroy(&node->snap_tmu);
        return qv_seterr(-rc, "storage: cannot start the snapshotter thread: %s",
                         strerror(rc));
    }
    node->snap_started = 1;
    return 0;
}

void qv__store_stop_snapshotter(struct qv_node *node)
{
    if (!node->snap_started)
        return;
    pthread_mutex_lock(&node->snap_tmu);
    node->snap_stop = 1;
    pthread_cond_broadcast(&node->snap_cv);
    pthread_mutex_unlock(&node->snap_tmu);
    pthread_join(node->snapper, NULL);
    pthread_cond_destroy(&node->snap_cv);
    pthread_mutex_destroy(&node->snap_tmu);
    node->snap_started = 0;
}
