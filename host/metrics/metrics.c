/*
 * metrics.c - the metrics registry, lock-free updates and the Prometheus
 * text renderer; see metrics.h for the contract.
 *
 * Two paths with opposite rules.
 *
 * The slow path (register, render, free) runs under the registry's mutex
 * and may allocate.  The registry is a list of families, one per name,
 * each with a type, a help text and a list of series (one per distinct
 * label set).  Lookups are linear scans: registration happens at start or
 * when a collection or engine appears, and a Quiver process has tens to a
 * few hundred series.  Arrays of pointers grow by doubling; the metric
 * objects themselves never move, which is what keeps the pointers handed
 * out valid until they are unregistered or qv_metrics_free().  Every
 * series starts with a struct series header (type, reference count,
 * canonical label string) so a family can hold them by pointer whatever
 * their type.
 *
 * Unregistering.  Each register call that returns a series takes a
 * reference to it (a second registration of the same name and labels
 * returns the same pointer, one reference more); unregister drops one.
 * The last one takes the series out of its family, keeping the order of
 * the rest, and frees it; a family left without series is taken out of
 * the registry and freed too (a later registration of its name starts it
 * again, with that registration's help).  So a registry whose series come
 * and go (the series of a dropped collection) holds only the live ones.
 * Updates take no lock, so the registry cannot tell whether a thread
 * still holds a pointer: the caller unregisters only once no thread can
 * update the metric any more (the service does it after the collection's
 * grace period, service.c).  Unregister finds the series by comparing
 * pointers, never reading through the pointer given, so a pointer that is
 * not (or no longer) registered is answered QV_ENOENT safely.
 *
 * Label strings are parsed, checked and rebuilt in a canonical form: pairs
 * sorted by name, joined by "," without spaces, values kept in their
 * escaped form.  Two registrations name the same series when their
 * canonical strings are equal; render prints the canonical string as is.
 *
 * The hot path (counter_add, gauge_set/add, hist_record) is relaxed atomics
 * only.  Each thread draws a slot in [0, QV_METRICS_SHARDS) on its first
 * update (one atomic fetch-add on a global, then a thread-local read).
 * Counters and histogram sums keep one 64-byte line per slot, so threads
 * on different slots never write the same line; a reader adds the shards
 * up.  A counter is therefore 16 x 64 = 1 KiB.
 *
 *   struct qv_counter   OFFSET  SIZE  MEANING
 *                       0       64    struct series header (padded)
 *                       64      1024  16 shards: u64 value + padding
 *
 *   struct qv_hist      OFFSET  SIZE  MEANING
 *                       0       64    struct series header (padded)
 *                       64      4744  593 u64 bucket counts (shared)
 *                       4864    1024  16 shards: u64 sum + padding
 *                       5888    64    u64 min, u64 max (CAS on change)
 *
 * Histogram buckets are not sharded (16 x 4.7 KB per histogram would cost
 * more cache than the contention it saves: values from different threads
 * spread over many buckets).  count is not stored: it is the sum of the
 * buckets, so a snapshot's quantiles always agree with its count.  min and
 * max are read first and compare-and-swapped only when the value beats
 * them, which after warm-up is almost never.
 *
 * Bucket index of v (SUB_BITS = 4): v < 32 -> v; otherwise with
 * e = floor(log2 v) >= 5, (e - 3) * 16 + ((v >> (e - 4)) & 15); v >= 2^40
 * -> QV_HIST_OVERFLOW.  Bucket idx >= 32 starts at (16 + idx % 16) <<
 * (idx / 16 - 1) and is 1 << (idx / 16 - 1) wide.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quiver/alloc.h"
#include "quiver/errors.h"
#include "quiver/metrics.h"

#define QV_METRICS_SHARDS 16
#define QV_METRICS_TAG    QV_MEM_METRICS

enum metric_type { METRIC_COUNTER, METRIC_GAUGE, METRIC_HIST };

static const char *const type_names[] = { "counter", "gauge", "histogram" };
static const char *const prom_types[] = { "counter", "gauge", "summary" };

struct series {
    enum metric_type type;
    unsigned refs;                  /* registrations not yet unregistered */
    char *labels;                   /* canonical, "" for none; owned */
};

struct shard {
    _Alignas(64) _Atomic uint64_t v;
};

struct qv_counter {
    _Alignas(64) struct series head;
    struct shard shards[QV_METRICS_SHARDS];
};

struct qv_gauge {
    _Alignas(64) struct series head;
    _Alignas(64) _Atomic int64_t v;
};

struct qv_hist {
    _Alignas(64) struct series head;
    _Alignas(64) _Atomic uint64_t buckets[QV_HIST_NBUCKETS];
    struct shard sum[QV_METRICS_SHARDS];
    _Alignas(64) _Atomic uint64_t min;  /* UINT64_MAX while empty */
    _Atomic uint64_t max;
};

struct family {
    char *name;                     /* owned */
    char *help;                     /* owned, raw (escaped at render) */
    enum metric_type type;
    unsigned nseries, cap;
    struct series **series;         /* owned, as are the series */
};

struct qv_metrics {
    pthread_mutex_t lock;           /* guards everything below */
    unsigned nfam, cap;
    struct family **fams;
};

/* ---- thread slots --------------------------------------------------- */

static _Atomic unsigned next_slot;
static __thread unsigned slot_plus1;    /* 0: not drawn yet */

static inline unsigned thread_slot(void)
{
    unsigned s = slot_plus1;

    if (__builtin_expect(s == 0, 0)) {
        s = atomic_fetch_add_explicit(&next_slot, 1, memory_order_relaxed)
            % QV_METRICS_SHARDS + 1;
        slot_plus1 = s;
    }
    return s - 1;
}

/* ---- hot path ---------------------------------------------------------- */

void qv_counter_add(struct qv_counter *c, uint64_t n)
{
    atomic_fetch_add_explicit(&c->shards[thread_slot()].v, n,
                              memory_order_relaxed);
}

uint64_t qv_counter_get(const struct qv_counter *c)
{
    uint64_t sum = 0;

    for (unsigned i = 0; i < QV_METRICS_SHARDS; i++)
        sum += atomic_load_explicit(&c->shards[i].v, memory_order_relaxed);
    return sum;
}

void qv_gauge_set(struct qv_gauge *g, int64_t v)
{
    atomic_store_explicit(&g->v, v, memory_order_relaxed);
}

void qv_gauge_add(struct qv_gauge *g, int64_t delta)
{
    atomic_fetch_add_explicit(&g->v, delta, memory_order_relaxed);
}

int64_t qv_gauge_get(const struct qv_gauge *g)
{
    return atomic_load_explicit(&g->v, memory_order_relaxed);
}

unsigned qv_hist_bucket_index(uint64_t v)
{
    unsigned e;

    if (v < (2u << QV_HIST_SUB_BITS))
        return (unsigned)v;
    if (v >> QV_HIST_MAX_BITS)
        return QV_HIST_OVERFLOW;
    e = 63u - (unsigned)__builtin_clzll(v);
    return ((e - QV_HIST_SUB_BITS + 1) << QV_HIST_SUB_BITS)
           + (unsigned)((v >> (e - QV_HIST_SUB_BITS)) & ((1u << QV_HIST_SUB_BITS) - 1));
}

uint64_t qv_hist_bucket_lower(unsigned idx)
{
    unsigned shift;

    if (idx < (2u << QV_HIST_SUB_BITS))
        return idx;
    if (idx >= QV_HIST_OVERFLOW)
        return 1ull << QV_HIST_MAX_BITS;
    shift = (idx >> QV_HIST_SUB_BITS) - 1;
    return ((1ull << QV_HIST_SUB_BITS) + (idx & ((1u << QV_HIST_SUB_BITS) - 1)))
           << shift;
}

static uint64_t bucket_width(unsigned idx)
{
    return idx < (2u << QV_HIST_SUB_BITS) ? 1 : 1ull << ((idx >> QV_HIST_SUB_BITS) - 1);
}

void qv_hist_record(struct qv_hist *h, uint64_t value)
{
    uint64_t cur;

    atomic_fetch_add_explicit(&h->buckets[qv_hist_bucket_index(value)], 1,
                              memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum[thread_slot()].v, value,
                              memory_order_relaxed);
    cur = atomic_load_explicit(&h->min, memory_order_relaxed);
    while (value < cur &&
           !atomic_compare_exchange_weak_explicit(&h->min, &cur, value,
                   memory_order_relaxed, memory_order_relaxed))
        ;
    cur = atomic_load_explicit(&h->max, memory_order_relaxed);
    while (value > cur &&
           !atomic_compare_exchange_weak_explicit(&h->max, &cur, value,
                   memory_order_relaxed, memory_order_relaxed))
        ;
}

/* ---- reads ------------------------------------------------------------- */

void qv_hist_snapshot(const struct qv_hist *h, struct qv_hist_snapshot *out)
{
    out->count = 0;
    out->sum = 0;
    for (unsigned i = 0; i < QV_HIST_NBUCKETS; i++) {
        out->buckets[i] = atomic_load_explicit(&h->buckets[i], memory_order_relaxed);
        out->count += out->buckets[i];
    }
    for (unsigned i = 0; i < QV_METRICS_SHARDS; i++)
        out->sum += atomic_load_explicit(&h->sum[i].v, memory_order_relaxed);
    out->min = atomic_load_explicit(&h->min, memory_order_relaxed);
    out->max = atomic_load_explicit(&h->max, memory_order_relaxed);
    if (out->count == 0)
        out->min = out->max = 0;
    else if (out->min > out->max)       /* min/max not yet published */
        out->min = out->max;
}

uint64_t qv_hist_snapshot_quantile(const struct qv_hist_snapshot *s, double q)
{
    uint64_t rank, seen = 0, mid;
    unsigned i;

    if (s->count == 0)
        return 0;
    if (!(q > 0.0))                     /* q <= 0 or NaN */
        return s->min;
    if (q >= 1.0)
        return s->max;
    rank = (uint64_t)(q * (double)s->count);
    if ((double)rank < q * (double)s->count)
        rank++;                         /* ceil */
    if (rank == 0)
        rank = 1;
    for (i = 0; i < QV_HIST_NBUCKETS - 1; i++) {
        seen += s->buckets[i];
        if (seen >= rank)
            break;
    }
    if (i >= QV_HIST_OVERFLOW)
        return s->max;
    mid = qv_hist_bucket_lower(i) + bucket_width(i) / 2;
    return mid < s->min ? s->min : mid > s->max ? s->max : mid;
}

uint64_t qv_hist_quantile(const struct qv_hist *h, double q)
{
    struct qv_hist_snapshot s;

    qv_hist_snapshot(h, &s);
    return qv_hist_snapshot_quantile(&s, q);
}

/* ---- names and labels -------------------------------------------------- */

static bool is_alpha_(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static int check_name(const char *name, enum metric_type type)
{
    size_t n;

    if (name == NULL || name[0] == '\0')
        return qv_seterr(QV_EINVAL, "metrics: a %s needs a name", type_names[type]);
    if (!is_alpha_(name[0]) && name[0] != ':')
        goto bad;
    for (n = 1; name[n] != '\0'; n++)
        if (!is_alpha_(name[n]) && !is_digit(name[n]) && name[n] != ':')
            goto bad;
    if (type == METRIC_COUNTER && (n <= 6 || strcmp(name + n - 6, "_total") != 0))
        return qv_seterr(QV_EINVAL, "metrics: counter \"%s\": counter names must "
                         "end in _total (Prometheus convention), e.g. \"%s_total\"",
                         name, name);
    return 0;
bad:
    return qv_seterr(QV_EINVAL, "metrics: %s name \"%s\": names must match "
                     "[a-zA-Z_:][a-zA-Z0-9_:]*", type_names[type], name);
}

struct label {
    const char *name, *value;       /* into the caller's string */
    size_t name_len, value_len;     /* value: escaped form, without quotes */
};

static int label_cmp(const void *a, const void *b)
{
    const struct label *x = a, *y = b;
    size_t n = x->name_len < y->name_len ? x->name_len : y->name_len;
    int c = memcmp(x->name, y->name, n);

    return c ? c : (x->name_len > y->name_len) - (x->name_len < y->name_len);
}

static const char *skip_space(const char *p)
{
    while (*p == ' ' || *p == '\t')
        p++;
    return p;
}

/* Parse and check labels of metric `name`; on success *out is a new
 * canonical string (caller frees). */
static int canon_labels(const char *name, enum metric_type type,
                        const char *labels, char **out)
{
    struct label l[QV_METRICS_MAX_LABELS];
    unsigned n = 0, i;
    const char *p = labels ? labels : "";
    size_t total = 1;
    char *s, *w;

    for (p = skip_space(p); *p != '\0'; ) {
        if (n == QV_METRICS_MAX_LABELS)
            return qv_seterr(QV_EINVAL, "metrics: \"%s\" labels {%s}: more than "
                             "%d labels", name, labels, QV_METRICS_MAX_LABELS);
        l[n].name = p;
        if (!is_alpha_(*p))
            goto bad_name;
        while (is_alpha_(*p) || is_digit(*p))
            p++;
        l[n].name_len = (size_t)(p - l[n].name);
        if (l[n].name_len >= 2 && l[n].name[0] == '_' && l[n].name[1] == '_')
            return qv_seterr(QV_EINVAL, "metrics: \"%s\" labels {%s}: label names "
                             "starting with __ are reserved", name, labels);
        if (type == METRIC_HIST && l[n].name_len == 8 &&
            memcmp(l[n].name, "quantile", 8) == 0)
            return qv_seterr(QV_EINVAL, "metrics: histogram \"%s\": the label "
                             "\"quantile\" is reserved by the summary format", name);
        p = skip_space(p);
        if (p[0] != '=' || *(p = skip_space(p + 1)) != '"')
            return qv_seterr(QV_EINVAL, "metrics: \"%s\" labels {%s}: expected "
                             "name=\"value\"", name, labels);
        l[n].value = ++p;
        while (*p != '"') {
            if (*p == '\0' || *p == '\n')
                return qv_seterr(QV_EINVAL, "metrics: \"%s\" labels {%s}: "
                                 "unterminated value (a newline is written \\n)",
                                 name, labels);
            if (*p == '\\') {
                if (p[1] != '\\' && p[1] != '"' && p[1] != 'n')
                    return qv_seterr(QV_EINVAL, "metrics: \"%s\" labels {%s}: only "
                                     "\\\\, \\\" and \\n escapes are allowed",
                                     name, labels);
                p++;
            }
            p++;
        }
        l[n].value_len = (size_t)(p - l[n].value);
        total += l[n].name_len + l[n].value_len + 4;    /* ="", */
        n++;
        p = skip_space(p + 1);
        if (*p == ',') {
            p = skip_space(p + 1);
            if (*p == '\0')
                return qv_seterr(QV_EINVAL, "metrics: \"%s\" labels {%s}: "
                                 "a label must follow ','", name, labels);
        } else if (*p != '\0') {
            return qv_seterr(QV_EINVAL, "metrics: \"%s\" labels {%s}: expected "
                             "',' between labels", name, labels);
        }
    }
    qsort(l, n, sizeof l[0], label_cmp);
    for (i = 1; i < n; i++)
        if (label_cmp(&l[i - 1], &l[i]) == 0)
            return qv_seterr(QV_EINVAL, "metrics: \"%s\" labels {%s}: label \"%.*s\" "
                             "given twice", name, labels, (int)l[i].name_len, l[i].name);
    s = w = qv_malloc(total, QV_METRICS_TAG);
    if (s == NULL)
        return qv_errno;
    for (i = 0; i < n; i++) {
        if (i)
            *w++ = ',';
        memcpy(w, l[i].name, l[i].name_len);
        w += l[i].name_len;
        *w++ = '=';
        *w++ = '"';
        memcpy(w, l[i].value, l[i].value_len);
        w += l[i].value_len;
        *w++ = '"';
    }
    *w = '\0';
    *out = s;
    return 0;
bad_name:
    return qv_seterr(QV_EINVAL, "metrics: \"%s\" labels {%s}: label names must "
                     "match [a-zA-Z_][a-zA-Z0-9_]*", name, labels);
}

int qv_metrics_escape_label(const char *raw, char *out, size_t cap, size_t *len)
{
    size_t n = 0;

    for (const char *p = raw; *p != '\0'; p++) {
        const char *rep = *p == '\\' ? "\\\\" : *p == '"' ? "\\\"" :
                          *p == '\n' ? "\\n" : NULL;
        size_t k = rep ? 2 : 1;

        if (n + k < cap)
            memcpy(out + n, rep ? rep : p, k);
        n += k;
    }
    if (n + 1 > cap) {
        if (cap > 0)
            out[cap - 1 < n ? cap - 1 : n] = '\0';
        *len = n + 1;
        return QV_ENOSPC;
    }
    out[n] = '\0';
    *len = n;
    return 0;
}

/* ---- registry ---------------------------------------------------------- */

struct qv_metrics *qv_metrics_create(void)
{
    struct qv_metrics *m = qv_calloc(1, sizeof *m, QV_METRICS_TAG);
    int rc;

    if (m == NULL)
        return NULL;
    rc = pthread_mutex_init(&m->lock, NULL);
    if (rc != 0) {
        qv_free(m);
        qv_seterr(-rc, "metrics: pthread_mutex_init failed");
        return NULL;
    }
    return m;
}

static void family_free(struct family *f)
{
    for (unsigned i = 0; i < f->nseries; i++) {
        qv_free(f->series[i]->labels);
        qv_free(f->series[i]);
    }
    qv_free(f->series);
    qv_free(f->name);
    qv_free(f->help);
    qv_free(f);
}

void qv_metrics_free(struct qv_metrics *m)
{
    if (m == NULL)
        return;
    for (unsigned i = 0; i < m->nfam; i++)
        family_free(m->fams[i]);
    qv_free(m->fams);
    pthread_mutex_destroy(&m->lock);
    qv_free(m);
}

/* Make room for one more pointer in *arr (n used of *cap). */
static int grow(void *arr, unsigned n, unsigned *cap)
{
    void **a = *(void ***)arr;
    unsigned ncap;

    if (n < *cap)
        return 0;
    ncap = *cap ? *cap * 2 : 8;
    a = qv_realloc(a, ncap * sizeof(void *), QV_METRICS_TAG);
    if (a == NULL)
        return qv_errno;
    *(void ***)arr = a;
    *cap = ncap;
    return 0;
}

static struct series *new_series(enum metric_type type, char *labels)
{
    static const size_t sizes[] = { sizeof(struct qv_counter),
                                    sizeof(struct qv_gauge), sizeof(struct qv_hist) };
    struct series *s = qv_calloc(1, sizes[type], QV_METRICS_TAG);

    if (s == NULL)
        return NULL;
    s->type = type;
    s->refs = 1;
    s->labels = labels;
    if (type == METRIC_HIST)
        atomic_init(&((struct qv_hist *)s)->min, UINT64_MAX);
    return s;
}

static struct family *new_family(const char *name, const char *help,
                                 enum metric_type type)
{
    struct family *f = qv_calloc(1, sizeof *f, QV_METRICS_TAG);

    if (f == NULL)
        return NULL;
    f->type = type;
    f->name = qv_strdup(name, QV_METRICS_TAG);
    if (f->name == NULL)
        goto fail;
    f->help = qv_strdup(help ? help : "", QV_METRICS_TAG);
    if (f->help == NULL)
        goto fail;
    return f;
fail:
    family_free(f);
    return NULL;
}

static struct series *register_metric(struct qv_metrics *m, enum metric_type type,
        const char *name, const char *help, const char *labels)
{
    struct family *f = NULL;
    struct series *s = NULL;
    char *canon = NULL;
    bool new_fam = false;
    unsigned i;
    int rc;

    rc = check_name(name, type);
    if (rc == 0)
        rc = canon_labels(name, type, labels, &canon);
    if (rc != 0)
        return NULL;

    pthread_mutex_lock(&m->lock);
    for (i = 0; i < m->nfam && strcmp(m->fams[i]->name, name) != 0; i++)
        ;
    if (i < m->nfam) {
        f = m->fams[i];
        if (f->type != type) {
            qv_seterr(QV_EINVAL, "metrics: \"%s\" is already registered as a %s, "
                      "not a %s; pick another name", name, type_names[f->type],
                      type_names[type]);
            goto fail_lookup;
        }
        for (i = 0; i < f->nseries; i++)
            if (strcmp(f->series[i]->labels, canon) == 0) {
                s = f->series[i];
                s->refs++;
                goto found;
            }
    } else {
        if (grow(&m->fams, m->nfam, &m->cap) != 0)
            goto fail_lookup;
        f = new_family(name, help, type);
        if (f == NULL)
            goto fail_lookup;
        new_fam = true;
    }
    if (grow(&f->series, f->nseries, &f->cap) != 0)
        goto fail_series;
    s = new_series(type, canon);
    if (s == NULL)
        goto fail_series;
    f->series[f->nseries++] = s;
    if (new_fam)
        m->fams[m->nfam++] = f;
    pthread_mutex_unlock(&m->lock);
    return s;

found:
    pthread_mutex_unlock(&m->lock);
    qv_free(canon);
    return s;
fail_series:
    if (new_fam)
        family_free(f);
fail_lookup:
    pthread_mutex_unlock(&m->lock);
    qv_free(canon);
    return NULL;
}

struct qv_counter *qv_metrics_register_counter(struct qv_metrics *m,
        const char *name, const char *help, const char *labels)
{
    return (struct qv_counter *)register_metric(m, METRIC_COUNTER, name, help, labels);
}

struct qv_gauge *qv_metrics_register_gauge(struct qv_metrics *m,
        const char *name, const char *help, const char *labels)
{
    return (struct qv_gauge *)register_metric(m, METRIC_GAUGE, name, help, labels);
}

struct qv_hist *qv_metrics_register_hist(struct qv_metrics *m,
        const char *name, const char *help, const char *labels)
{
    return (struct qv_hist *)register_metric(m, METRIC_HIST, name, help, labels);
}

/* Where metric sits in m: family *fi, series *si.  Compares pointers
 * only.  0, or -1 when it is not there.  m->lock held. */
static int locate(const struct qv_metrics *m, const void *metric, unsigned *fi,
                  unsigned *si)
{
    for (unsigned i = 0; i < m->nfam; i++)
        for (unsigned j = 0; j < m->fams[i]->nseries; j++)
            if ((const void *)m->fams[i]->series[j] == metric) {
                *fi = i;
                *si = j;
                return 0;
            }
    return -1;
}

static int unregister_metric(struct qv_metrics *m, const void *metric, const char *what)
{
    struct family *f;
    struct series *s;
    unsigned i, j;

    if (metric == NULL)
        return 0;
    pthread_mutex_lock(&m->lock);
    if (locate(m, metric, &i, &j) != 0) {
        pthread_mutex_unlock(&m->lock);
        return qv_seterr(QV_ENOENT, "metrics: unregister: %s %p is not registered here "
                         "(never, or already unregistered as often as registered)", what,
                         metric);
    }
    f = m->fams[i];
    s = f->series[j];
    if (--s->refs == 0) {
        memmove(&f->series[j], &f->series[j + 1],
                (f->nseries - j - 1) * sizeof *f->series);
        f->nseries--;
        qv_free(s->labels);
        qv_free(s);
        if (f->nseries == 0) {
            memmove(&m->fams[i], &m->fams[i + 1], (m->nfam - i - 1) * sizeof *m->fams);
            m->nfam--;
            family_free(f);
        }
    }
    pthread_mutex_unlock(&m->lock);
    return 0;
}

int qv_metrics_unregister_counter(struct qv_metrics *m, struct qv_counter *c)
{
    return unregister_metric(m, c, "counter");
}

int qv_metrics_unregister_gauge(struct qv_metrics *m, struct qv_gauge *g)
{
    return unregister_metric(m, g, "gauge");
}

int qv_metrics_unregister_hist(struct qv_metrics *m, struct qv_hist *h)
{
    return unregister_metric(m, h, "histogram");
}

/* ---- render ------------------------------------------------------------ */

/* Output cursor: copies what fits, counts everything. */
struct out {
    char *buf;
    size_t cap, len;
};

static void put(struct out *o, const char *s, size_t n)
{
    if (o->len < o->cap)
        memcpy(o->buf + o->len, s, o->len + n <= o->cap ? n : o->cap - o->len);
    o->len += n;
}

static void puts_(struct out *o, const char *s)
{
    put(o, s, strlen(s));
}

__attribute__((format(printf, 2, 3)))
static void putf(struct out *o, const char *fmt, ...)
{
    char tmp[64];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    put(o, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* HELP text escaping (0.0.4): backslash -> \\, newline -> \n. */
static void put_help(struct out *o, const char *s)
{
    for (; *s != '\0'; s++) {
        if (*s == '\\')
            put(o, "\\\\", 2);
        else if (*s == '\n')
            put(o, "\\n", 2);
        else
            put(o, s, 1);
    }
}

/* name[suffix]{labels[,extra]} -- braces only when there are labels. */
static void put_series(struct out *o, const struct family *f, const char *suffix,
                       const struct series *s, const char *extra)
{
    puts_(o, f->name);
    puts_(o, suffix);
    if (s->labels[0] == '\0' && extra == NULL)
        return;
    put(o, "{", 1);
    puts_(o, s->labels);
    if (extra != NULL) {
        if (s->labels[0] != '\0')
            put(o, ",", 1);
        puts_(o, extra);
    }
    put(o, "}", 1);
}

static void render_hist(struct out *o, const struct family *f, const struct series *s)
{
    static const char *const qs[] = { "0.5", "0.95", "0.99", "0.999" };
    static const double qv[] = { 0.5, 0.95, 0.99, 0.999 };
    struct qv_hist_snapshot snap;
    char extra[32];

    qv_hist_snapshot((const struct qv_hist *)s, &snap);
    for (unsigned i = 0; i < 4; i++) {
        snprintf(extra, sizeof extra, "quantile=\"%s\"", qs[i]);
        put_series(o, f, "", s, extra);
        if (snap.count == 0)
            puts_(o, " NaN\n");
        else
            putf(o, " %" PRIu64 "\n", qv_hist_snapshot_quantile(&snap, qv[i]));
    }
    put_series(o, f, "_sum", s, NULL);
    putf(o, " %" PRIu64 "\n", snap.sum);
    put_series(o, f, "_count", s, NULL);
    putf(o, " %" PRIu64 "\n", snap.count);
}

int qv_metrics_render(struct qv_metrics *m, char *buf, size_t cap, size_t *len)
{
    struct out o = { buf, cap, 0 };

    pthread_mutex_lock(&m->lock);
    for (unsigned i = 0; i < m->nfam; i++) {
        const struct family *f = m->fams[i];

        puts_(&o, "# HELP ");
        puts_(&o, f->name);
        put(&o, " ", 1);
        put_help(&o, f->help);
        puts_(&o, "\n# TYPE ");
        puts_(&o, f->name);
        put(&o, " ", 1);
        puts_(&o, prom_types[f->type]);
        put(&o, "\n", 1);
        for (unsigned j = 0; j < f->nseries; j++) {
            const struct series *s = f->series[j];

            if (f->type == METRIC_HIST) {
                render_hist(&o, f, s);
                continue;
            }
            put_series(&o, f, "", s, NULL);
            if (f->type == METRIC_COUNTER)
                putf(&o, " %" PRIu64 "\n", qv_counter_get((const struct qv_counter *)s));
            else
                putf(&o, " %" PRId64 "\n", qv_gauge_get((const struct qv_gauge *)s));
        }
    }
    pthread_mutex_unlock(&m->lock);
    if (o.len + 1 > cap) {
        if (cap > 0)
            buf[cap - 1] = '\0';
        *len = o.len + 1;
        return QV_ENOSPC;
    }
    buf[o.len] = '\0';
    *len = o.len;
    return 0;
}
