/*
 * errors.h - error codes and the thread-local error state.
 *
 * Functions that can fail return int: 0 or a negative QV_E* code.  Where an
 * errno value fits, the code IS the negated errno (QV_ENOMEM == -ENOMEM), so
 * system errors pass through unchanged.  Codes below -1000 are Quiver's own.
 * Creators return NULL and set the thread-local qv_errno.
 *
 * Every error a user can cause also carries a message naming the thing that
 * was wrong and how to fix it ("conf/quiver.conf:12: [simd] level = avx9:
 * expected one of auto, ref, avx2, avx512").  qv_seterr() records both the
 * code and that message in thread-local storage; qv_errmsg() reads it back.
 */
#ifndef QUIVER_ERRORS_H
#define QUIVER_ERRORS_H

#include <errno.h>

#define QV_OK        0
#define QV_EINVAL    (-EINVAL)    /* a bad argument or value */
#define QV_ENOMEM    (-ENOMEM)    /* allocation failed */
#define QV_EIO       (-EIO)       /* read/write/mmap failed */
#define QV_ENOENT    (-ENOENT)    /* file or item not found */
#define QV_ERANGE    (-ERANGE)    /* value outside the allowed range */
#define QV_ENOTSUP   (-ENOTSUP)   /* not supported on this build or CPU */
#define QV_EEXIST    (-EEXIST)    /* item already exists */
#define QV_EBUSY     (-EBUSY)     /* try again later */
#define QV_ENOSPC    (-ENOSPC)    /* a fixed capacity is full */
#define QV_ETIMEDOUT (-ETIMEDOUT) /* a deadline passed before the work ran */
#define QV_EFORMAT   (-1001)      /* a file is not in the expected format */
#define QV_ECONFIG   (-1002)      /* a configuration key or value is wrong */
#define QV_ECORRUPT  (-1003)      /* data failed an integrity check */
#define QV_EUNAVAIL  (-1004)      /* an engine or service is unavailable */

/* Thread-local code of the last failure in this thread (0 when none). */
extern __thread int qv_errno;

/*
 * qv_strerror - a short static description of code (QV_E* or -errno).
 * Never returns NULL; unknown codes give "unknown error".  Thread-safe.
 */
const char *qv_strerror(int code);

/*
 * qv_seterr - record code and a printf-style message as this thread's last
 * error.  Returns code, so callers write `return qv_seterr(QV_EINVAL, ...)`.
 * The message is truncated at 512 bytes.  Thread-safe (thread-local).
 */
int qv_seterr(int code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/*
 * qv_errmsg - this thread's last error message; when none was recorded for
 * the current qv_errno, qv_strerror(qv_errno).  Valid until the next
 * qv_seterr() in this thread.
 */
const char *qv_errmsg(void);

/* qv_clearerr - reset this thread's qv_errno and message. */
void qv_clearerr(void);

#endif
