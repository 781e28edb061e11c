/*
 * config.h - INI configuration with a schema.
 *
 * Files are read with inih (Debian's libinih).  Every key Quiver knows is
 * declared once in the schema table in host/common/config.c: section, key,
 * type, default, allowed range or choices, and a one-line help.  Loading a
 * file validates every line against the schema, so a typo or a bad value
 * is reported at start, never half-applied:
 *
 *   conf/quiver.conf:12: [simd] level = avx9: expected one of auto, ref,
 *   avx2, avx512
 *   conf/quiver.conf:3: unknown key [workers] thread; known keys in
 *   [workers]: threads, pin
 *
 * Getters then read typed values (the file's, else the schema default) and
 * cannot fail for keys in the schema.  conf/quiver.conf documents every
 * key with its default; a unit test checks that it matches the schema.
 *
 * Values: int (decimal, with optional K/M/G suffix meaning 2^10/2^20/2^30
 * for type SIZE), double, bool (true/false/yes/no/on/off/1/0), string,
 * enum (one of the listed choices).  Lines are at most 200 bytes (inih).
 */
#ifndef QUIVER_CONFIG_H
#define QUIVER_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum qv_conf_type {
    QV_CONF_INT,
    QV_CONF_SIZE,
    QV_CONF_DOUBLE,
    QV_CONF_BOOL,
    QV_CONF_STRING,
    QV_CONF_ENUM,
};

struct qv_conf_key {
    const char *section;
    const char *key;
    enum qv_conf_type type;
    const char *def;            /* default, as it would be written */
    double min, max;            /* INT, SIZE, DOUBLE: inclusive range */
    const char *choices;        /* ENUM: "a|b|c" */
    const char *help;
};

/* The schema: every known key; terminated by an entry with section NULL. */
extern const struct qv_conf_key qv_conf_schema[];

struct qv_config;

/* Load and validate path.  Returns NULL with qv_errno = QV_ENOENT / QV_EIO
 * (cannot read the file), QV_ECONFIG (the first bad line; qv_errmsg() has
 * "path:line: ..."), QV_ENOMEM.  The caller owns the result. */
struct qv_config *qv_config_load(const char *path);

/* As qv_config_load, from a NUL-terminated string; name is used in
 * messages in place of the path. */
struct qv_config *qv_config_parse(const char *text, const char *name);

/* A configuration holding only defaults (never NULL unless ENOMEM). */
struct qv_config *qv_config_defaults(void);

void qv_config_free(struct qv_config *cfg);

/* Typed getters.  The key must be in the schema with the matching type;
 * asking for an unknown key or the wrong type is a programming error and
 * aborts with a message.  Values were validated at load.  Thread-safe for
 * concurrent readers. */
int64_t qv_config_int(const struct qv_config *cfg, const char *section, const char *key);
uint64_t qv_config_size(const struct qv_config *cfg, const char *section, const char *key);
double qv_config_double(const struct qv_config *cfg, const char *section, const char *key);
bool qv_config_bool(const struct qv_config *cfg, const char *section, const char *key);
/* STRING keys; also ENUM keys, giving the choice as written. */
const char *qv_config_string(const struct qv_config *cfg, const char *section, const char *key);
/* Index of the value in the key's choices list (0-based). */
int qv_config_enum(const struct qv_config *cfg, const char *section, const char *key);

/* The value of section/key as text into buf (cap bytes, NUL-terminated,
 * truncated if short): integers and sizes in decimal (sizes in bytes),
 * doubles round-trippable, booleans true/false, strings and enums as
 * written.  Two configurations hold the same value of a key exactly when
 * the texts are equal.  Returns what snprintf returns. */
int qv_config_format(const struct qv_config *cfg, const char *section, const char *key,
                     char *buf, size_t cap);

/* Where the value of section/key came from: "path:line", or "default". */
const char *qv_config_origin(const struct qv_config *cfg, const char *section, const char *key);

/* Override one value (as if it were in the file, origin name "override"),
 * validated the same way: returns 0, QV_ECONFIG (unknown key or bad
 * value; message in qv_errmsg()), QV_ENOMEM.  Used for command-line flags. */
int qv_config_set(struct qv_config *cfg, const char *section, const char *key, const char *value);

#endif
