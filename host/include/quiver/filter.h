/*
 * filter.h - attribute filters evaluated into row bitmaps.
 *
 * A collection declares a few integer attributes (at most
 * QV_FILTER_MAX_ATTRS, each int64).  Their values are stored per row,
 * column-major (one int64 array per attribute), in struct qv_attrs.
 * A predicate is a small tree: leaves eq (a == v), in (a in {v...}),
 * range (lo <= a <= hi); inner nodes and / or / not.  Evaluation walks the
 * columns once per leaf, producing 64 rows per word, and combines bitmaps
 * word by word: O(rows x leaves / 64) words.  The result is the row
 * bitmap every index's search takes (bit r set = row r eligible), and its
 * popcount is the exact selectivity; qv_filter_estimate gives a cheap
 * estimate from a fixed sample of rows before evaluating.
 */
#ifndef QUIVER_FILTER_H
#define QUIVER_FILTER_H

#include <stddef.h>
#include <stdint.h>

#define QV_FILTER_MAX_ATTRS 16
#define QV_FILTER_MAX_NODES 64
#define QV_FILTER_MAX_IN 256

struct qv_attrs {
    uint32_t nattrs;
    const char *names[QV_FILTER_MAX_ATTRS];
    const int64_t *cols[QV_FILTER_MAX_ATTRS];   /* cols[a][row] */
    uint64_t rows;
};

enum qv_pred_op {
    QV_PRED_EQ = 0,
    QV_PRED_IN,
    QV_PRED_RANGE,
    QV_PRED_AND,
    QV_PRED_OR,
    QV_PRED_NOT,
};

/* Nodes live in one array; children are indices into it. */
struct qv_pred_node {
    enum qv_pred_op op;
    uint32_t attr;              /* leaves: attribute index */
    int64_t lo, hi;             /* EQ: lo; RANGE: [lo, hi] inclusive */
    const int64_t *set;         /* IN: nset values (any order) */
    uint32_t nset;
    uint32_t left, right;       /* AND / OR: both; NOT: left */
};

struct qv_pred {
    struct qv_pred_node nodes[QV_FILTER_MAX_NODES];
    uint32_t nnodes;
    uint32_t root;
};

/* Check a predicate against attrs' shape: every attr index exists, child
 * indices in range and acyclic (children before parents), IN sets within
 * QV_FILTER_MAX_IN, RANGE lo <= hi.  Returns 0 or QV_EINVAL with a
 * message naming the node and what is wrong. */
int qv_pred_validate(const struct qv_pred *p, const struct qv_attrs *a);

/* Evaluate into bitmap (ceil(rows / 64) words, caller's memory; bits past
 * rows are cleared).  *count gets the number of set bits when not NULL.
 * Returns 0, QV_EINVAL (validation failed), QV_ENOMEM. */
int qv_filter_eval(const struct qv_pred *p, const struct qv_attrs *a,
                   uint64_t *bitmap, uint64_t *count);

/* Estimated fraction of rows passing, from a deterministic sample of at
 * most 1024 rows.  Returns a value in [0, 1]; 1 on an invalid predicate. */
double qv_filter_estimate(const struct qv_pred *p, const struct qv_attrs *a);

/* Parse a predicate from text, e.g. "color = 3 and (size in (1, 2, 5) or
 * not price between 10 and 20)", resolving attribute names in attrs.
 * in_storage receives IN values (capacity in_cap).  Returns 0 or
 * QV_EINVAL with a message giving the position and what was expected. */
int qv_pred_parse(const char *text, const struct qv_attrs *a, struct qv_pred *out,
                  int64_t *in_storage, size_t in_cap);

#endif
