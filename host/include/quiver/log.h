/*
 * log.h - levelled logging to stderr, with per-call-site rate limiting.
 *
 * Lines look like "2026-11-27T15:30:00.123Z quiver[pid] WARN  file.c:42: msg".
 * Logging takes a lock around one fwrite, so it never belongs on the hot
 * path (STYLE rule 10); use QV_LOG_RL where a condition may repeat per
 * request: each call site then prints at most `per_s` lines per second and
 * reports how many it suppressed when it next prints.
 */
#ifndef QUIVER_LOG_H
#define QUIVER_LOG_H

#include <stdint.h>

enum qv_log_level {
    QV_LOG_ERROR = 0,
    QV_LOG_WARN  = 1,
    QV_LOG_INFO  = 2,
    QV_LOG_DEBUG = 3,
};

/* Set / get the global threshold (default QV_LOG_INFO; QV_LOG env overrides
 * at first use: error|warn|info|debug).  Thread-safe. */
void qv_log_set_level(enum qv_log_level level);
enum qv_log_level qv_log_get_level(void);

/* Parse "error"|"warn"|"info"|"debug"; returns -1 when unknown. */
int qv_log_level_parse(const char *name);

void qv_log_write(enum qv_log_level level, const char *file, int line,
                  const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* Per-call-site rate limiter state; zero-initialised static storage. */
struct qv_log_rl {
    int64_t  window_start_ns;
    uint32_t printed;
    uint32_t suppressed;
};

/* Returns nonzero when the call site may print now; *suppressed gets the
 * number of lines dropped since the last print.  Lock-free, approximate
 * under races (a few extra lines may pass). */
int qv_log_rl_allow(struct qv_log_rl *rl, uint32_t per_s, uint32_t *suppressed);

#define QV_LOG(level, ...) do { \
        if ((level) <= qv_log_get_level()) \
            qv_log_write((level), __FILE__, __LINE__, __VA_ARGS__); \
    } while (0)
#define QV_ERR(...)   QV_LOG(QV_LOG_ERROR, __VA_ARGS__)
#define QV_WARN(...)  QV_LOG(QV_LOG_WARN, __VA_ARGS__)
#define QV_INFO(...)  QV_LOG(QV_LOG_INFO, __VA_ARGS__)
#define QV_DEBUG(...) QV_LOG(QV_LOG_DEBUG, __VA_ARGS__)

/* Rate-limited: at most per_s lines per second from this call site. */
#define QV_LOG_RL(level, per_s, ...) do { \
        static struct qv_log_rl qv__rl_; \
        uint32_t qv__sup_; \
        if ((level) <= qv_log_get_level() && \
            qv_log_rl_allow(&qv__rl_, (per_s), &qv__sup_)) { \
            if (qv__sup_) \
                qv_log_write((level), __FILE__, __LINE__, \
                             "(%u similar lines suppressed)", qv__sup_); \
            qv_log_write((level), __FILE__, __LINE__, __VA_ARGS__); \
        } \
    } while (0)

#endif
