/*
 * filter.c - predicates over integer attributes, evaluated into row
 * bitmaps; see filter.h.
 *
 * Evaluation is bitmap algebra: a leaf scans its attribute column and
 * writes 64 rows per word; AND / OR / NOT combine whole words.  Each level
 * of the tree needs one scratch bitmap, allocated once per call (depth is
 * at most the node count).  IN sets are sorted once per evaluation and
 * searched by bisection (at most 8 probes for 256 values).
 *
 * Text syntax (qv_pred_parse), case-insensitive keywords:
 *   expr    := term { "or" term }
 *   term    := factor { "and" factor }
 *   factor  := "not" factor | "(" expr ")" | NAME cmp
 *   cmp     := ("=" | "==") INT | "!=" INT | "<" INT | "<=" INT | ">" INT
 *              | ">=" INT | "in" "(" INT { "," INT } ")"
 *              | "between" INT "and" INT
 * so `a != v` is NOT(EQ) and `a < v` is RANGE(INT64_MIN, v - 1).
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "quiver/alloc.h"
#include "quiver/errors.h"
#include "quiver/filter.h"

static const char *op_name(enum qv_pred_op op)
{
    static const char *names[] = { "eq", "in", "range", "and", "or", "not" };
    return (unsigned)op <= QV_PRED_NOT ? names[op] : "unknown";
}

int qv_pred_validate(const struct qv_pred *p, const struct qv_attrs *a)
{
    if (!p || !a)
        return qv_seterr(QV_EINVAL, "filter: no predicate or no attributes");
    if (p->nnodes == 0 || p->nnodes > QV_FILTER_MAX_NODES)
        return qv_seterr(QV_EINVAL, "filter: %u nodes; a predicate has 1..%d", p->nnodes,
                         QV_FILTER_MAX_NODES);
    if (p->root >= p->nnodes)
        return qv_seterr(QV_EINVAL, "filter: root %u is not one of the %u nodes", p->root,
                         p->nnodes);
    if (a->nattrs > QV_FILTER_MAX_ATTRS)
        return qv_seterr(QV_EINVAL, "filter: %u attributes; at most %d", a->nattrs,
                         QV_FILTER_MAX_ATTRS);
    for (uint32_t i = 0; i < p->nnodes; i++) {
        const struct qv_pred_node *n = &p->nodes[i];
        switch (n->op) {
        case QV_PRED_EQ:
        case QV_PRED_IN:
        case QV_PRED_RANGE:
            if (n->attr >= a->nattrs)
                return qv_seterr(QV_EINVAL, "filter: node %u (%s) names attribute %u; the "
                                 "collection has %u", i, op_name(n->op), n->attr, a->nattrs);
            if (!a->cols[n->attr] && a->rows)
                return qv_seterr(QV_EINVAL, "filter: attribute %u has no values", n->attr);
            if (n->op == QV_PRED_IN && (n->nset > QV_FILTER_MAX_IN || (n->nset && !n->set)))
                return qv_seterr(QV_EINVAL, "filter: node %u: an IN set holds 0..%d values, "
                                 "not %u", i, QV_FILTER_MAX_IN, n->nset);
            if (n->op == QV_PRED_RANGE && n->lo > n->hi)
                return qv_seterr(QV_EINVAL, "filter: node %u: range %lld..%lld is empty "
                                 "(lo > hi)", i, (long long)n->lo, (long long)n->hi);
            break;
        case QV_PRED_AND:
        case QV_PRED_OR:
            if (n->right >= i)
                return qv_seterr(QV_EINVAL, "filter: node %u (%s): child %u must come "
                                 "before its parent", i, op_name(n->op), n->right);
            /* fall through */
        case QV_PRED_NOT:
            if (n->left >= i)
                return qv_seterr(QV_EINVAL, "filter: node %u (%s): child %u must come "
                                 "before its parent", i, op_name(n->op), n->left);
            break;
        default:
            return qv_seterr(QV_EINVAL, "filter: node %u has unknown operator %d", i,
                             (int)n->op);
        }
    }
    return 0;
}

static int cmp_i64(const void *x, const void *y)
{
    int64_t a = *(const int64_t *)x, b = *(const int64_t *)y;
    return a < b ? -1 : a > b;
}

static int in_sorted(const int64_t *s, uint32_t n, int64_t v)
{
    uint32_t lo = 0, hi = n;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        if (s[mid] < v)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && s[lo] == v;
}

static uint32_t depth_of(const struct qv_pred *p, uint32_t node)
{
    const struct qv_pred_node *n = &p->nodes[node];
    if (n->op == QV_PRED_AND || n->op == QV_PRED_OR) {
        uint32_t l = depth_of(p, n->left), r = depth_of(p, n->right);
        return 1 + (l > r ? l : r);
    }
    if (n->op == QV_PRED_NOT)
        return 1 + depth_of(p, n->left);
    return 1;
}

struct eval_ctx {
    const struct qv_pred *p;
    const struct qv_attrs *a;
    size_t words;
    uint64_t **tmp;         /* one scratch bitmap per depth */
    int64_t sorted[QV_FILTER_MAX_IN];
};

static void eval_node(struct eval_ctx *c, uint32_t node, uint64_t *out, uint32_t depth)
{
    const struct qv_pred_node *n = &c->p->nodes[node];
    const uint64_t rows = c->a->rows;
    switch (n->op) {
    case QV_PRED_EQ:
    case QV_PRED_RANGE:
    case QV_PRED_IN: {
        const int64_t *col = c->a->cols[n->attr];
        int64_t lo = n->lo, hi = n->op == QV_PRED_RANGE ? n->hi : n->lo;
        uint32_t ns = 0;
        if (n->op == QV_PRED_IN) {
            ns = n->nset;
            memcpy(c->sorted, n->set, ns * sizeof(int64_t));
            qsort(c->sorted, ns, sizeof(int64_t), cmp_i64);
        }
        for (size_t w = 0; w < c->words; w++) {
            uint64_t bits = 0;
            uint64_t base = (uint64_t)w * 64;
            uint32_t lim = rows - base < 64 ? (uint32_t)(rows - base) : 64;
            if (n->op == QV_PRED_IN) {
                for (uint32_t b = 0; b < lim; b++)
                    bits |= (uint64_t)in_sorted(c->sorted, ns, col[base + b]) << b;
            } else {
                for (uint32_t b = 0; b < lim; b++) {
                    int64_t v = col[base + b];
                    bits |= (uint64_t)(v >= lo && v <= hi) << b;
                }
            }
            out[w] = bits;
        }
        return;
    }
    case QV_PRED_NOT: {
        eval_node(c, n->left, out, depth + 1);
        for (size_t w = 0; w < c->words; w++)
            out[w] = ~out[w];
        if (rows % 64)
            out[c->words - 1] &= (1ULL << (rows % 64)) - 1;
        return;
    }
    case QV_PRED_AND:
    case QV_PRED_OR: {
        uint64_t *t = c->tmp[depth];
        eval_node(c, n->left, out, depth + 1);
        eval_node(c, n->right, t, depth + 1);
        if (n->op == QV_PRED_AND)
            for (size_t w = 0; w < c->words; w++)
                out[w] &= t[w];
        else
            for (size_t w = 0; w < c->words; w++)
                out[w] |= t[w];
        return;
    }
    }
}

int qv_filter_eval(const struct qv_pred *p, const struct qv_attrs *a, uint64_t *bitmap,
                   uint64_t *count)
{
    int rc = qv_pred_validate(p, a);
    if (rc)
        return rc;
    struct eval_ctx c = { .p = p, .a = a, .words = (size_t)((a->rows + 63) / 64) };
    uint32_t depth = depth_of(p, p->root);
    c.tmp = qv_calloc(depth + 1, sizeof(uint64_t *), QV_MEM_INDEX);
    if (!c.tmp)
        return qv_seterr(QV_ENOMEM, "filter: no memory for %u scratch bitmaps", depth);
    rc = 0;
    for (uint32_t d = 0; d < depth && c.words; d++) {
        c.tmp[d] = qv_malloc(c.words * sizeof(uint64_t), QV_MEM_INDEX);
        if (!c.tmp[d]) {
            rc = qv_seterr(QV_ENOMEM, "filter: no memory for a %zu-word scratch bitmap",
                           c.words);
            goto out;
        }
    }
    if (c.words)
        eval_node(&c, p->root, bitmap, 0);
    if (count) {
        uint64_t cnt = 0;
        for (size_t w = 0; w < c.words; w++)
            cnt += (uint64_t)__builtin_popcountll(bitmap[w]);
        *count = cnt;
    }
out:
    for (uint32_t d = 0; d < depth; d++)
        qv_free(c.tmp[d]);
    qv_free(c.tmp);
    return rc;
}

static int eval_row(const struct qv_pred *p, const struct qv_attrs *a, uint32_t node,
                    uint64_t row)
{
    const struct qv_pred_node *n = &p->nodes[node];
    switch (n->op) {
    case QV_PRED_EQ:
        return a->cols[n->attr][row] == n->lo;
    case QV_PRED_RANGE: {
        int64_t v = a->cols[n->attr][row];
        return v >= n->lo && v <= n->hi;
    }
    case QV_PRED_IN:
        for (uint32_t i = 0; i < n->nset; i++)
            if (n->set[i] == a->cols[n->attr][row])
                return 1;
        return 0;
    case QV_PRED_NOT:
        return !eval_row(p, a, n->left, row);
    case QV_PRED_AND:
        return eval_row(p, a, n->left, row) && eval_row(p, a, n->right, row);
    case QV_PRED_OR:
        return eval_row(p, a, n->left, row) || eval_row(p, a, n->right, row);
    }
    return 0;
}

double qv_filter_estimate(const struct qv_pred *p, const struct qv_attrs *a)
{
    if (qv_pred_validate(p, a) != 0 || a->rows == 0)
        return 1.0;
    uint64_t samples = a->rows < 1024 ? a->rows : 1024;
    uint64_t pass = 0;
    /* evenly spaced rows, offset by half a stride: deterministic */
    for (uint64_t i = 0; i < samples; i++) {
        uint64_t row = (uint64_t)(((double)i + 0.5) * (double)a->rows / (double)samples);
        if (row >= a->rows)
            row = a->rows - 1;
        pass += (uint64_t)eval_row(p, a, p->root, row);
    }
    return (double)pass / (double)samples;
}

/* ---- parser ---- */

struct parser {
    const char *text;
    const char *s;
    const struct qv_attrs *a;
    struct qv_pred *out;
    int64_t *in_storage;
    size_t in_cap;
    size_t in_used;
    int rc;
};

static void skip_ws(struct parser *ps)
{
    while (isspace((unsigned char)*ps->s))
        ps->s++;
}

static int fail(struct parser *ps, const char *what)
{
    if (ps->rc == 0)
        ps->rc = qv_seterr(QV_EINVAL, "filter: at position %ld of \"%s\": expected %s",
                           (long)(ps->s - ps->text) + 1, ps->text, what);
    return -1;
}

static int keyword(struct parser *ps, const char *kw)
{
    skip_ws(ps);
    size_t n = strlen(kw);
    if (strncasecmp(ps->s, kw, n) == 0 && !isalnum((unsigned char)ps->s[n]) && ps->s[n] != '_') {
        ps->s += n;
        return 1;
    }
    return 0;
}

static int punct(struct parser *ps, const char *p)
{
    skip_ws(ps);
    size_t n = strlen(p);
    if (strncmp(ps->s, p, n) == 0) {
        ps->s += n;
        return 1;
    }
    return 0;
}

static int number(struct parser *ps, int64_t *v)
{
    skip_ws(ps);
    char *end;
    errno = 0;
    long long x = strtoll(ps->s, &end, 10);
    if (end == ps->s || errno == ERANGE)
        return fail(ps, "an integer (64-bit)");
    ps->s = end;
    *v = x;
    return 0;
}

static int new_node(struct parser *ps, struct qv_pred_node n)
{
    if (ps->out->nnodes >= QV_FILTER_MAX_NODES)
        return fail(ps, "a shorter predicate (too many terms)");
    ps->out->nodes[ps->out->nnodes] = n;
    return (int)ps->out->nnodes++;
}

static int parse_expr(struct parser *ps);

static int parse_factor(struct parser *ps)
{
    if (keyword(ps, "not")) {
        int c = parse_factor(ps);
        if (c < 0)
            return -1;
        return new_node(ps, (struct qv_pred_node){ .op = QV_PRED_NOT, .left = (uint32_t)c });
    }
    if (punct(ps, "(")) {
        int c = parse_expr(ps);
        if (c < 0)
            return -1;
        if (!punct(ps, ")"))
            return fail(ps, "')'");
        return c;
    }
    skip_ws(ps);
    const char *start = ps->s;
    while (isalnum((unsigned char)*ps->s) || *ps->s == '_')
        ps->s++;
    size_t len = (size_t)(ps->s - start);
    if (len == 0)
        return fail(ps, "an attribute name, 'not' or '('");
    uint32_t attr = UINT32_MAX;
    for (uint32_t i = 0; i < ps->a->nattrs; i++)
        if (ps->a->names[i] && strlen(ps->a->names[i]) == len &&
            strncmp(ps->a->names[i], start, len) == 0)
            attr = i;
    if (attr == UINT32_MAX) {
        ps->s = start;
        return fail(ps, "a declared attribute name");
    }
    struct qv_pred_node n = { .attr = attr };
    int64_t v;
    if (punct(ps, "==") || punct(ps, "=")) {
        if (number(ps, &v))
            return -1;
        n.op = QV_PRED_EQ;
        n.lo = v;
        return new_node(ps, n);
    }
    if (punct(ps, "!=")) {
        if (number(ps, &v))
            return -1;
        n.op = QV_PRED_EQ;
        n.lo = v;
        int c = new_node(ps, n);
        if (c < 0)
            return -1;
        return new_node(ps, (struct qv_pred_node){ .op = QV_PRED_NOT, .left = (uint32_t)c });
    }
    if (punct(ps, "<=") || punct(ps, "<") || punct(ps, ">=") || punct(ps, ">")) {
        char o0 = ps->s[-1] == '=' ? ps->s[-2] : ps->s[-1];
        int inclusive = ps->s[-1] == '=';
        if (number(ps, &v))
            return -1;
        n.op = QV_PRED_RANGE;
        if (o0 == '<') {
            n.lo = INT64_MIN;
            if (!inclusive && v == INT64_MIN)
                return fail(ps, "a bound above the smallest integer");
            n.hi = inclusive ? v : v - 1;
        } else {
            n.hi = INT64_MAX;
            if (!inclusive && v == INT64_MAX)
                return fail(ps, "a bound below the largest integer");
            n.lo = inclusive ? v : v + 1;
        }
        return new_node(ps, n);
    }
    if (keyword(ps, "between")) {
        int64_t lo, hi;
        if (number(ps, &lo))
            return -1;
        if (!keyword(ps, "and"))
            return fail(ps, "'and' in 'between LO and HI'");
        if (number(ps, &hi))
            return -1;
        if (lo > hi)
            return fail(ps, "LO <= HI in 'between LO and HI'");
        n.op = QV_PRED_RANGE;
        n.lo = lo;
        n.hi = hi;
        return new_node(ps, n);
    }
    if (keyword(ps, "in")) {
        if (!punct(ps, "("))
            return fail(ps, "'(' after 'in'");
        n.op = QV_PRED_IN;
        n.set = ps->in_storage + ps->in_used;
        do {
            if (number(ps, &v))
                return -1;
            if (ps->in_used >= ps->in_cap || n.nset >= QV_FILTER_MAX_IN)
                return fail(ps, "fewer values in the 'in' list");
            ps->in_storage[ps->in_used++] = v;
            n.nset++;
        } while (punct(ps, ","));
        if (!punct(ps, ")"))
            return fail(ps, "',' or ')' in the 'in' list");
        return new_node(ps, n);
    }
    return fail(ps, "=, !=, <, <=, >, >=, 'in' or 'between' after the attribute");
}

static int parse_term(struct parser *ps)
{
    int l = parse_factor(ps);
    while (l >= 0 && keyword(ps, "and")) {
        int r = parse_factor(ps);
        if (r < 0)
            return -1;
        l = new_node(ps, (struct qv_pred_node){ .op = QV_PRED_AND, .left = (uint32_t)l,
                                                .right = (uint32_t)r });
    }
    return l;
}

static int parse_expr(struct parser *ps)
{
    int l = parse_term(ps);
    while (l >= 0 && keyword(ps, "or")) {
        int r = parse_term(ps);
        if (r < 0)
            return -1;
        l = new_node(ps, (struct qv_pred_node){ .op = QV_PRED_OR, .left = (uint32_t)l,
                                                .right = (uint32_t)r });
    }
    return l;
}

int qv_pred_parse(const char *text, const struct qv_attrs *a, struct qv_pred *out,
                  int64_t *in_storage, size_t in_cap)
{
    if (!text || !a || !out)
        return qv_seterr(QV_EINVAL, "filter: no text to parse");
    memset(out, 0, sizeof *out);
    struct parser ps = { .text = text, .s = text, .a = a, .out = out,
                         .in_storage = in_storage, .in_cap = in_storage ? in_cap : 0 };
    int root = parse_expr(&ps);
    if (root >= 0) {
        skip_ws(&ps);
        if (*ps.s) {
            fail(&ps, "'and', 'or' or the end of the predicate");
            root = -1;
        }
    }
    if (root < 0)
        return ps.rc ? ps.rc : QV_EINVAL;
    out->root = (uint32_t)root;
    return qv_pred_validate(out, a);
}
