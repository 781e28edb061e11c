/*
 * check.h - the assertions of the integration clients (dp_client,
 * crash_client): a process that a shell script runs and whose exit status
 * is the verdict.  ASSERT(cond, fmt, ...) prints
 *     PROG: FAIL: FILE:LINE: (cond) message
 * on stderr and exits 1 when cond is false.  check_prog names PROG.
 */
#ifndef QV_TEST_CHECK_H
#define QV_TEST_CHECK_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

static const char *check_prog = "test";

__attribute__((noreturn, format(printf, 4, 5)))
static void check_fail(const char *file, int line, const char *cond, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: FAIL: %s:%d: (%s) ", check_prog, file, line, cond);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

#define ASSERT(cond, ...)                                                      \
    do {                                                                       \
        if (!(cond))                                                           \
            check_fail(__FILE__, __LINE__, #cond, __VA_ARGS__);                \
    } while (0)

#endif
