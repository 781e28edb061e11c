/*
 * errors.c - error codes and the thread-local error state (errors.h).
 *
 * Each thread owns three pieces of state: qv_errno, the message recorded
 * by the last qv_seterr(), and the code that message belongs to.  The last
 * one lets qv_errmsg() notice that qv_errno was changed afterwards without
 * a message (by code that only sets qv_errno) and fall back to the static
 * description instead of returning a stale message about another failure.
 *
 * Nothing here allocates, so qv_seterr() may be called from the allocator's
 * own failure path.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "quiver/errors.h"

#define QV_ERRMSG_MAX 512

__thread int qv_errno;

static __thread char errmsg_buf[QV_ERRMSG_MAX];
static __thread int errmsg_code;    /* code errmsg_buf describes; 0: none */

const char *qv_strerror(int code)
{
    const char *s;

    switch (code) {
    case QV_OK:       return "success";
    case QV_EINVAL:   return "invalid argument or value";
    case QV_ENOMEM:   return "out of memory";
    case QV_EIO:      return "input/output error";
    case QV_ENOENT:   return "no such file or item";
    case QV_ERANGE:   return "value out of range";
    case QV_ENOTSUP:  return "not supported";
    case QV_EEXIST:   return "already exists";
    case QV_EBUSY:    return "busy, try again later";
    case QV_ENOSPC:   return "capacity full";
    case QV_ETIMEDOUT: return "deadline passed before the work ran";
    case QV_EFORMAT:  return "bad file format";
    case QV_ECONFIG:  return "configuration error";
    case QV_ECORRUPT: return "data corrupt";
    case QV_EUNAVAIL: return "engine or service unavailable";
    default:
        break;
    }
    /* Any other negated errno passes through (glibc's static table). */
    if (code < 0 && code > -4096) {
        s = strerrordesc_np(-code);
        if (s != NULL)
            return s;
    }
    return "unknown error";
}

int qv_seterr(int code, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(errmsg_buf, sizeof(errmsg_buf), fmt, ap);
    va_end(ap);
    errmsg_code = code;
    qv_errno = code;
    return code;
}

const char *qv_errmsg(void)
{
    if (qv_errno != 0 && errmsg_code == qv_errno && errmsg_buf[0] != '\0')
        return errmsg_buf;
    return qv_strerror(qv_errno);
}

void qv_clearerr(void)
{
    qv_errno = 0;
    errmsg_code = 0;
    errmsg_buf[0] = '\0';
}
