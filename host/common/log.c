/*
 * log.c - levelled logging to stderr with per-call-site rate limiting
 * (log.h).
 *
 * A line is formatted completely into a stack buffer first (timestamp,
 * "quiver[pid]", level, file:line, message) and then written with a single
 * fwrite under a mutex, so lines from different threads never interleave.
 * Over-long messages are truncated and end with "...".
 *
 * The threshold is one atomic int.  The QV_LOG environment variable
 * (error|warn|info|debug) is read once, at the first use of the logger;
 * an explicit qv_log_set_level() always wins over it because it runs that
 * one-time initialisation first.
 *
 * Rate limiter: each call site owns a struct qv_log_rl.  A window opens at
 * the first line and lasts one second; within it at most per_s lines pass
 * and the rest are counted as suppressed.  The count is handed to the next
 * line that passes so the caller can say how many were dropped.  Fields are
 * read and written with relaxed atomics: under a race two threads may both
 * open a window or both take the last slot, so a few extra lines may pass,
 * which the header allows; nothing is ever torn.
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "quiver/log.h"
#include "quiver/timeutil.h"

#define QV_LOG_LINE_MAX 1024
#define QV_LOG_WINDOW_NS 1000000000LL

static atomic_int log_level = QV_LOG_INFO;
static pthread_once_t log_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *const level_names[] = {
    [QV_LOG_ERROR] = "error",
    [QV_LOG_WARN]  = "warn",
    [QV_LOG_INFO]  = "info",
    [QV_LOG_DEBUG] = "debug",
};

/* Padded to one width so messages line up. */
static const char *const level_tags[] = {
    [QV_LOG_ERROR] = "ERROR",
    [QV_LOG_WARN]  = "WARN ",
    [QV_LOG_INFO]  = "INFO ",
    [QV_LOG_DEBUG] = "DEBUG",
};

static void log_init_from_env(void)
{
    const char *env = getenv("QV_LOG");
    int lvl;

    if (env == NULL || *env == '\0')
        return;
    lvl = qv_log_level_parse(env);
    if (lvl < 0) {
        fprintf(stderr, "quiver: QV_LOG=%s: expected one of error, warn, "
                "info, debug; keeping level info\n", env);
        return;
    }
    atomic_store_explicit(&log_level, lvl, memory_order_relaxed);
}

void qv_log_set_level(enum qv_log_level level)
{
    pthread_once(&log_once, log_init_from_env);
    if ((int)level < QV_LOG_ERROR)
        level = QV_LOG_ERROR;
    if ((int)level > QV_LOG_DEBUG)
        level = QV_LOG_DEBUG;
    atomic_store_explicit(&log_level, (int)level, memory_order_relaxed);
}

enum qv_log_level qv_log_get_level(void)
{
    pthread_once(&log_once, log_init_from_env);
    return (enum qv_log_level)atomic_load_explicit(&log_level,
                                                   memory_order_relaxed);
}

int qv_log_level_parse(const char *name)
{
    int i;

    if (name == NULL)
        return -1;
    for (i = QV_LOG_ERROR; i <= QV_LOG_DEBUG; i++)
        if (strcasecmp(name, level_names[i]) == 0)
            return i;
    return -1;
}

void qv_log_write(enum qv_log_level level, const char *file, int line,
                  const char *fmt, ...)
{
    char buf[QV_LOG_LINE_MAX];
    struct timespec ts;
    struct tm tm;
    const char *base;
    va_list ap;
    size_t len;
    int n;

    if ((int)level < QV_LOG_ERROR || (int)level > QV_LOG_DEBUG)
        level = QV_LOG_ERROR;
    if (level > qv_log_get_level())
        return;

    base = file ? strrchr(file, '/') : NULL;
    base = base ? base + 1 : (file ? file : "?");

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    n = snprintf(buf, sizeof(buf),
                 "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ quiver[%ld] %s %s:%d: ",
                 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                 tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000L,
                 (long)getpid(), level_tags[level], base, line);
    if (n < 0)
        return;
    len = (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1;

    va_start(ap, fmt);
    n = vsnprintf(buf + len, sizeof(buf) - len, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if ((size_t)n >= sizeof(buf) - len) {
        /* Truncated: mark it, keep room for the newline. */
        len = sizeof(buf) - 5;
        memcpy(buf + len, "...", 3);
        len += 3;
    } else {
        len += (size_t)n;
    }
    while (len > 0 && buf[len - 1] == '\n')
        len--;
    buf[len++] = '\n';

    pthread_mutex_lock(&log_lock);
    fwrite(buf, 1, len, stderr);
    fflush(stderr);
    pthread_mutex_unlock(&log_lock);
}

int qv_log_rl_allow(struct qv_log_rl *rl, uint32_t per_s, uint32_t *suppressed)
{
    int64_t now = qv_now_ns();
    int64_t start = __atomic_load_n(&rl->window_start_ns, __ATOMIC_RELAXED);
    uint32_t printed;

    *suppressed = 0;
    if (start == 0 || now - start >= QV_LOG_WINDOW_NS || now < start) {
        /* A new window opens with this line. */
        __atomic_store_n(&rl->window_start_ns, now, __ATOMIC_RELAXED);
        __atomic_store_n(&rl->printed, 0, __ATOMIC_RELAXED);
    }
    printed = __atomic_load_n(&rl->printed, __ATOMIC_RELAXED);
    if (printed >= per_s) {
        __atomic_fetch_add(&rl->suppressed, 1, __ATOMIC_RELAXED);
        return 0;
    }
    __atomic_store_n(&rl->printed, printed + 1, __ATOMIC_RELAXED);
    *suppressed = __atomic_exchange_n(&rl->suppressed, 0, __ATOMIC_RELAXED);
    return 1;
}
