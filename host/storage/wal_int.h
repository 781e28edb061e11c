/*
 * wal_int.h - private structures of the write-ahead log (wal.c).  The file
 * format, the sync policies and the recovery rules are in quiver/wal.h;
 * this is how the writer works.
 *
 * Group commit.  An append encodes its record (header, payload, padding,
 * CRC) straight into the pending batch `pend` under w->lock and takes the
 * next LSN there, so the batch is always the records next_lsn-k..next_lsn-1
 * in order, back to back, exactly as they go to disk.  The payload's CRC is
 * computed before the lock is taken (the record CRC runs over the payload
 * first, then the header), so the lock covers a memcpy and 20 bytes of CRC.
 * An appender then waits for its LSN to become durable.  Whoever finds no
 * I/O in progress becomes the leader (io_busy = 1): it swaps `pend` with
 * the empty `spare` buffer, drops the lock, writes the whole batch with one
 * pwrite (one per segment when the batch crosses a roll), fdatasyncs once
 * under ALWAYS, takes the lock again, advances written_lsn / synced_lsn and
 * broadcasts `cv`.  Appends that arrive meanwhile fill the new `pend` and
 * wait; when the leader finishes, one of them leads the next batch with all
 * of them in it.  So with N threads appending, one device flush serves up
 * to N records, and a lone appender pays one write + one flush.
 *
 * Who owns what.  w->lock guards every field marked "lock" below.  The
 * fields marked "io" (the current segment's fd and end offset) belong to
 * the thread holding io_busy (the leader, the INTERVAL thread, or close),
 * which touches them without the lock; only one thread holds io_busy at a
 * time.  The segment list is read and changed under the lock: the leader
 * appends to it at a roll, qv_wal_truncate_upto removes from its head
 * (serialised by trunc_lock, files unlinked outside w->lock).
 *
 * Failures and epochs.  A failed write (ENOSPC, EIO) is truncated back to
 * the end of the last complete record; every record not written by then
 * (the rest of the batch and all of `pend`) is discarded, next_lsn goes back
 * to written_lsn + 1, and the epoch ends: ends[epoch] records the last LSN
 * that made it and the error, and epoch++.  A ticket carries the epoch its
 * record was appended in, so a waiter whose epoch has ended knows without
 * ambiguity whether its record made it (lsn <= ends[e].lsn) or was
 * discarded, even though its LSN may since have been given to another
 * record.  ends[] grows by one entry per failed write (16 bytes).  A failed
 * fdatasync, or a failed truncation after a failed write, sets `broken`
 * instead: the state of the file is unknown, so every later write is
 * refused until the process restarts and recovery reads back what is there.
 *
 * INTERVAL.  A background thread wakes every interval_ms and, when records
 * are pending or written but not synced, takes io_busy and writes + syncs
 * them as a leader would.  An append that arrives during that fdatasync
 * waits for it: at most one flush per interval_ms shows in append latency.
 */
#ifndef QUIVER_WAL_INT_H
#define QUIVER_WAL_INT_H

#include <limits.h>
#include <pthread.h>
#include <stdint.h>

#include "quiver/wal.h"

#define QV__WAL_PEND_MAX (16u << 20)   /* appenders block beyond this */
#define QV__WAL_PEND_KEEP (1u << 20)   /* larger batch buffers are freed */
#define QV__WAL_MSG 512                /* as qv_seterr's limit */
#define QV__WAL_NAME_LEN 28            /* "wal-" 20 digits ".log" */

struct wal_seg {
    uint64_t first_lsn;                 /* LSN of its first record */
    uint64_t bytes;                     /* file size */
};

struct wal_epoch_end {
    uint64_t lsn;                       /* records <= lsn made it */
    int code;                           /* QV_ENOSPC / QV_EIO of the failure */
};

struct qv_wal {
    char dir[PATH_MAX];
    enum qv_wal_sync sync;
    unsigned interval_ms;
    uint64_t segment_bytes;
    int dirfd;                          /* for fsync of the directory */

    pthread_mutex_t lock;
    pthread_cond_t cv;                  /* lock: io released, LSNs advanced,
                                           epoch ended, stop */
    pthread_cond_t bg_cv;               /* lock: wakes the INTERVAL thread
                                           (CLOCK_MONOTONIC) */
    pthread_mutex_t trunc_lock;         /* serialises truncate_upto */

    /* lock */
    uint64_t next_lsn;                  /* the next append's LSN */
    uint64_t written_lsn;               /* complete in the file */
    uint64_t synced_lsn;                /* fdatasync'ed */
    uint8_t *pend;                      /* encoded records after the batch
                                           in flight, in LSN order */
    size_t pend_len, pend_cap;
    uint8_t *spare;                     /* empty buffer swapped in by the
                                           leader */
    size_t spare_cap;
    int io_busy;                        /* a thread owns the "io" fields */
    int broken;                         /* after a failed fdatasync */
    int broken_code;
    char broken_msg[QV__WAL_MSG];
    uint64_t epoch;
    struct wal_epoch_end *ends;         /* ends[e] for e < epoch */
    size_t ends_cap;
    char errmsg[QV__WAL_MSG];           /* message of the last failed write */
    struct wal_seg *segs;               /* oldest first; last = current */
    uint32_t nsegs, segs_cap;
    struct qv_wal_io io;
    int stop;                           /* close has begun */
    uint64_t n_appends, n_batches, n_fsyncs, n_write_errors;
    uint64_t n_replayed, n_torn_bytes;

    /* io: owned by the io_busy holder */
    int fd;                             /* current segment, O_RDWR */
    uint64_t seg_off;                   /* end of its last complete record */
    uint64_t seg_first;                 /* its first LSN */

    pthread_t bg;                       /* INTERVAL thread */
    int bg_started;
};

#endif
