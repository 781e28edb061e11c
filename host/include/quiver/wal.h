/*
 * wal.h - the write-ahead log: an append-only record log per shard, made
 * durable before a write is acknowledged and replayed at start.
 *
 * The WAL knows nothing of vectors.  A record is a caller-defined type
 * (1..255; the node encodes upsert, delete, create and drop payloads) and
 * opaque payload bytes; the WAL gives it the next log sequence number
 * (LSN: 1, 2, 3, ... dense, never reused once acknowledged), a length and a
 * CRC32C, and writes it to the current segment file of its directory.
 *
 * Files.  A WAL directory holds segment files named
 * "wal-<first LSN as 20 decimal digits>.log", so that name order is LSN
 * order.  A segment is rolled (the next one started) when the next record
 * would take it past opts.segment_bytes (a record larger than that gets a
 * segment of its own).  A new segment is written as "<name>.tmp", fsynced
 * and renamed, and the directory fsynced, so a segment under its real name
 * always has a whole header; a leftover .tmp (crash during a roll) is
 * removed at open.  Whole segments that a snapshot covers are removed by
 * qv_wal_truncate_upto().  All integers are little-endian.
 *
 *   Segment header (QV_WAL_SEG_HDR = 32 bytes, at offset 0)
 *   OFFSET  SIZE  MEANING
 *   0       8     magic "QVWALSEG"
 *   8       4     format version (QV_WAL_VERSION)
 *   12      4     header size in bytes (32)
 *   16      8     LSN of the segment's first record (the name's number)
 *   24      4     reserved (0)
 *   28      4     CRC32C of bytes 0..27
 *
 *   Record (from offset 32, one after the other; every record starts on an
 *   8-byte boundary and occupies QV_WAL_REC_HDR + len rounded up to 8)
 *   OFFSET  SIZE  MEANING
 *   0       4     len: payload length in bytes (<= QV_WAL_MAX_PAYLOAD)
 *   4       4     CRC32C, computed in this order: over the payload and its
 *                 zero padding (bytes 24 .. 24 + round8(len) - 1), then
 *                 continued over bytes 0..3, then over bytes 8..23.  It
 *                 covers everything in the record but itself.
 *   8       8     LSN (exactly one more than the previous record's)
 *   16      1     type (1..255, the caller's; 0 is never written)
 *   17      7     reserved (0)
 *   24      len   payload
 *   24+len  pad   0..7 zero bytes, to the next 8-byte boundary
 *
 * Sync policies (opts.sync), and what each risks.  "Acknowledged" means
 * qv_wal_append() (or qv_wal_wait()) returned 0.
 *   QV_WAL_SYNC_ALWAYS    the record is written and fdatasync'ed before it
 *                         is acknowledged.  Concurrent appenders share one
 *                         write and one fdatasync (group commit), so the
 *                         cost is about one device flush per batch, not per
 *                         record.  Risk: none for acknowledged writes, on a
 *                         device that honours flushes.
 *   QV_WAL_SYNC_INTERVAL  the record is written (write(2): in the kernel's
 *                         page cache) before it is acknowledged; a
 *                         background thread fdatasyncs every interval_ms,
 *                         without holding appends back (they go on
 *                         writing while the device flushes).
 *                         Risk: a process crash loses nothing acknowledged;
 *                         a power loss or OS crash may lose the records
 *                         acknowledged in the last interval_ms (plus the
 *                         time one fdatasync takes).
 *   QV_WAL_SYNC_NEVER     the record is written before it is acknowledged
 *                         and appends never fsync (only a segment roll and
 *                         qv_wal_sync do; the kernel writes back when it
 *                         likes, typically within 30 s).  Risk:
 *                         a process crash loses nothing acknowledged; a
 *                         power loss or OS crash may lose anything not yet
 *                         written back, and on some filesystems leave a hole
 *                         that recovery then refuses (below).  For bulk loads
 *                         that can be redone, or a WAL on tmpfs.
 * Under every policy a segment is fdatasync'ed before the next one is
 * started, so only the last segment can lose records, and qv_wal_sync()
 * makes everything appended so far durable.
 *
 * Recovery (qv_wal_open).  Segments are read in LSN order and every record
 * after the snapshot's LSN is handed to the caller, in order.  The rules:
 *   - The last segment may end in a torn record: a partial header, a record
 *     running past the end of the file, or a record that fails its checks
 *     (CRC, LSN, length, type, reserved bytes) with no valid record anywhere
 *     after it in the file.  That is what a crash during a write leaves; the
 *     record was never acknowledged under ALWAYS, so the file is truncated
 *     at its offset (ftruncate + fsync) and a warning names the file, the
 *     offset and the bytes dropped.  Corollary: damage to the final record
 *     of the log cannot be told apart from a torn write and is treated as
 *     one (the record is dropped); that is the one case the WAL accepts.
 *   - A record that fails its checks with a valid record after it, any bad
 *     record in a segment that is not the last, a bad segment header, a
 *     segment whose records do not run on into the next segment's first
 *     LSN, or a log that starts after the snapshot's LSN + 1 (records
 *     missing), is refused: open fails with QV_ECORRUPT and a message
 *     "FILE: offset N: record LSN L: WHAT ..." that says what to do.
 *     Nothing is skipped silently.
 *   - Segments wholly covered by the snapshot (every LSN <= after_lsn) are
 *     not read, only their header is checked.
 * A caveat of the second rule: a power loss while a batch is being written
 * can, on a filesystem that writes pages back out of order, leave a hole
 * followed by valid records of that same unacknowledged batch (or, under
 * INTERVAL and NEVER, of acknowledged but unsynced ones).  That cannot be
 * told from damage, so it is refused too; the message says at which offset
 * truncating the file accepts the loss.
 *
 * Full disk and I/O errors.  When a write fails (ENOSPC, EIO, a short write
 * followed by an error), the segment is truncated back to the end of the
 * last complete record, so no partial record stays, and every record not
 * yet written fails with QV_ENOSPC or QV_EIO and a message naming the file,
 * the bytes that did not fit and the fix.  Nothing acknowledged is touched,
 * the LSNs of the failed records are given out again, and the WAL stays
 * usable: the next append tries again.  A failed fdatasync (or a failed
 * truncation) is different: the kernel may have dropped the data, so the
 * WAL refuses every later write with QV_EIO until the process restarts and
 * recovery reads back what reached the disk.
 *
 * Thread safety: every function but qv_wal_open/qv_wal_close may be called
 * from any number of threads at once on the same WAL.  Appends are
 * serialised by one mutex held only to copy the record into the pending
 * batch; the write and fdatasync run outside it (wal_int.h describes the
 * group commit).  Not for the hot path: an append may block on a device
 * flush.
 */
#ifndef QUIVER_WAL_H
#define QUIVER_WAL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define QV_WAL_VERSION 1
#define QV_WAL_SEG_HDR 32u
#define QV_WAL_REC_HDR 24u
#define QV_WAL_MAX_PAYLOAD (64u << 20)          /* 64 MiB */
#define QV_WAL_SEGMENT_MIN (64u << 10)          /* smallest segment_bytes */
#define QV_WAL_SEGMENT_DEFAULT (64ull << 20)
#define QV_WAL_INTERVAL_DEFAULT_MS 10u

enum qv_wal_sync {
    QV_WAL_SYNC_ALWAYS = 0,     /* fdatasync before acknowledging */
    QV_WAL_SYNC_INTERVAL,       /* write before acknowledging, fdatasync
                                   every interval_ms */
    QV_WAL_SYNC_NEVER,          /* write before acknowledging, no fsync */
};

struct qv_wal_opts {
    const char *dir;            /* the WAL directory, one per shard;
                                   created (with parents) when missing;
                                   borrowed during qv_wal_open only */
    enum qv_wal_sync sync;      /* see "Sync policies" above */
    unsigned interval_ms;       /* INTERVAL: fdatasync period, >= 1 */
    uint64_t segment_bytes;     /* roll a segment at this size,
                                   >= QV_WAL_SEGMENT_MIN */
};

/* Fill o with the defaults: dir NULL (the caller sets it), ALWAYS, 10 ms,
 * 64 MiB segments.  Cannot fail. */
void qv_wal_opts_default(struct qv_wal_opts *o);

/* Name of a policy ("always", "interval", "never"); "?" when unknown. */
const char *qv_wal_sync_name(enum qv_wal_sync s);

/* Parse "always" | "interval" | "never" into *out; 0 or QV_EINVAL (with a
 * message listing the accepted names). */
int qv_wal_sync_parse(const char *name, enum qv_wal_sync *out);

/*
 * Replay callback: one record with lsn > after_lsn, in LSN order.  payload
 * (len bytes, 8-byte aligned) is valid only during the call.  Return 0 to
 * go on, or a negative QV_E* code to stop: qv_wal_open then fails with that
 * code (a message set by the callback with qv_seterr is kept; a positive
 * return is reported as QV_EINVAL).
 */
typedef int qv_wal_replay_fn(void *arg, uint64_t lsn, uint8_t type,
                             const void *payload, size_t len);

struct qv_wal;

/*
 * qv_wal_open - open (or create) the WAL in o->dir and recover it.
 *
 * Reads the segments as described under "Recovery" above and calls
 * fn(arg, ...) for every record with LSN > after_lsn (after_lsn: the LSN the
 * caller's snapshot covers; 0 when there is none).  fn may be NULL (records
 * are only checked).  A torn final record is truncated away, with a
 * warning.  Appends then continue at max(last LSN, after_lsn) + 1; when
 * that skips LSNs (the snapshot is ahead of the log), a new segment is
 * started there.  An empty directory starts a segment at after_lsn + 1.
 * For the INTERVAL policy a background thread is started.
 *
 * Memory: each segment is read whole, so open needs one buffer as large as
 * the largest segment it reads (segment_bytes, or one record if larger).
 *
 * The directory is locked (flock) while the WAL is open: one owner per WAL.
 *
 * Returns the WAL, owned by the caller (qv_wal_close), or NULL with
 * qv_errno: QV_EINVAL (bad opts: the message names the field), QV_EBUSY
 * (the WAL is already open, in this process or another), QV_EIO
 * (cannot create/open/read/truncate a file: message names it), QV_ECORRUPT
 * (a refused record or segment, missing records: message names the file,
 * the offset and the fix), QV_EFORMAT (a segment of another format
 * version), QV_ENOMEM, or the callback's code.
 */
struct qv_wal *qv_wal_open(const struct qv_wal_opts *o, uint64_t after_lsn,
                           qv_wal_replay_fn *fn, void *arg);

/*
 * qv_wal_append - log one record and return once it is durable under the
 * policy (see "Sync policies").  type: 1..255; payload: len bytes (may be
 * NULL when len is 0), copied, so the caller keeps ownership.  *lsn (may be
 * NULL) gets the record's LSN, or 0 on failure.
 *
 * Returns 0, or: QV_EINVAL (type 0, len > QV_WAL_MAX_PAYLOAD), QV_ENOMEM,
 * QV_ENOSPC (the disk is full: the record was not stored, message names
 * the file, the bytes needed and the fix; a later append may succeed),
 * QV_EIO (a write error: as for ENOSPC; or a failed fdatasync, after which
 * the WAL refuses all writes until restarted).  A failed append stored
 * nothing.  Thread-safe; blocks for about one write (+ one fdatasync under
 * ALWAYS, shared with the other appenders of its batch).
 */
int qv_wal_append(struct qv_wal *w, uint8_t type, const void *payload,
                  size_t len, uint64_t *lsn);

/*
 * The split form of qv_wal_append, for callers that must order records
 * under their own lock but should not hold it across the device flush:
 * qv_wal_append_async() copies the record into the pending batch, assigns
 * its LSN and returns at once; qv_wal_wait() then blocks until that record
 * is durable under the policy (and writes/flushes the batch itself when no
 * other thread is doing so).  A record is not acknowledged until
 * qv_wal_wait() returned 0 for it.  Records nobody waits for are written
 * by the next append/wait/sync, the INTERVAL thread, or qv_wal_close.
 */
struct qv_wal_ticket {
    uint64_t lsn;               /* the record's LSN (tentative until
                                   qv_wal_wait returns 0) */
    uint64_t epoch;             /* internal: failures start a new epoch */
};

/* Returns 0 and fills *t, or QV_EINVAL / QV_ENOMEM / QV_EIO (WAL unusable
 * after a failed fdatasync); may block while the pending batch is full
 * (16 MiB) until it is written.  Thread-safe. */
int qv_wal_append_async(struct qv_wal *w, uint8_t type, const void *payload,
                        size_t len, struct qv_wal_ticket *t);

/* Wait for the record of ticket t: 0 when durable under the policy, or the
 * QV_ENOSPC / QV_EIO of the failed write that discarded it (then its LSN
 * means nothing).  Thread-safe; may be called more than once. */
int qv_wal_wait(struct qv_wal *w, const struct qv_wal_ticket *t);

/*
 * qv_wal_sync - write every record appended so far and fdatasync, whatever
 * the policy (before taking a snapshot, or with NEVER at a checkpoint).
 * Returns 0, QV_ENOSPC or QV_EIO as qv_wal_append.  Thread-safe.
 */
int qv_wal_sync(struct qv_wal *w);

/*
 * qv_wal_truncate_upto - a snapshot now covers every record with LSN <= lsn:
 * remove the segments all of whose records are <= lsn, oldest first, and
 * fsync the directory.  The current (last) segment is never removed.
 * O(number of segments).  Returns the number of segments removed (>= 0), or
 * QV_EIO when a file cannot be removed (the message names it; the segments
 * before it are gone, it and the later ones stay).  Thread-safe, also with
 * appends.
 */
int qv_wal_truncate_upto(struct qv_wal *w, uint64_t lsn);

struct qv_wal_stats {
    uint64_t next_lsn;          /* the LSN the next append gets */
    uint64_t last_lsn;          /* last LSN assigned (next_lsn - 1) */
    uint64_t written_lsn;       /* last LSN written to the file */
    uint64_t durable_lsn;       /* last LSN fdatasync'ed */
    uint64_t first_lsn;         /* first LSN of the oldest segment kept */
    uint32_t segments;          /* segment files */
    int broken;                 /* 1 after a failed fdatasync */
    uint64_t bytes;             /* bytes in all segment files */
    uint64_t appends;           /* records appended since open */
    uint64_t batches;           /* group-commit writes (one write call
                                   per segment touched) */
    uint64_t fsyncs;            /* fdatasync calls on segments */
    uint64_t write_errors;      /* failed batch writes since open */
    uint64_t replayed;          /* records handed to the replay callback */
    uint64_t torn_bytes;        /* bytes truncated from a torn tail at open */
};

/* Counters and positions as of now.  Thread-safe (takes the lock
 * briefly); cannot fail. */
void qv_wal_stats(struct qv_wal *w, struct qv_wal_stats *out);

/* The sync policy the WAL was opened with.  Cannot fail. */
enum qv_wal_sync qv_wal_policy(const struct qv_wal *w);

/*
 * qv_wal_close - write what is pending, fdatasync (unless NEVER), stop the
 * INTERVAL thread, close the files and free w.  A failure there is logged
 * (records not written are those no caller was told were durable).  No
 * other call on w may be in progress or follow.  qv_wal_close(NULL) is a
 * no-op.
 */
void qv_wal_close(struct qv_wal *w);

/*
 * Test hook: the WAL's writes and flushes go through this table, so tests
 * can inject ENOSPC, EIO and short writes.  Both functions behave as the
 * system calls (pwrite: bytes written or -1 with errno; fdatasync: 0 or -1
 * with errno).  Used for appended batches and new segment headers; recovery
 * uses the system calls directly.  qv_wal_set_io(w, NULL) restores the
 * system calls.  The table is copied; ctx is borrowed.  Thread-safe; a
 * write already in progress finishes with the old table.
 */
struct qv_wal_io {
    ssize_t (*pwrite)(void *ctx, int fd, const void *buf, size_t len, off_t off);
    int (*fdatasync)(void *ctx, int fd);
    void *ctx;
};

void qv_wal_set_io(struct qv_wal *w, const struct qv_wal_io *io);

#endif
