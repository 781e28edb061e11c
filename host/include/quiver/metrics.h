/*
 * metrics.h - counters, gauges and latency/size histograms, exported in the
 * Prometheus text exposition format 0.0.4.
 *
 * A registry (struct qv_metrics) is created at start.  Metrics are
 * registered in it by name (slow path: takes the registry's mutex and
 * allocates), which returns a pointer that stays valid until it is
 * unregistered (as many times as it was registered) or qv_metrics_free().
 * Updates through that pointer are lock-free and allocation-free and may
 * come from any thread (hot path, STYLE rule 10).  qv_metrics_render()
 * writes every metric as text for a /metrics scrape.  Series that belong
 * to something that goes away (a dropped collection) are unregistered
 * with it, so /metrics stops showing them and the registry holds only the
 * live ones.
 *
 * Names follow Prometheus: [a-zA-Z_:][a-zA-Z0-9_:]*.  Counter names must
 * end in "_total" after a base name (the name given is the sample name,
 * nothing is appended).
 * Histograms are rendered as the Prometheus `summary` type (see
 * qv_metrics_render for why).
 *
 * Constant labels are given as one string in exposition syntax:
 *     engine="opencl",class="interactive"
 * Label names are [a-zA-Z_][a-zA-Z0-9_]* and must not start with "__";
 * values are double-quoted, with the only escapes \\, \" and \n (use
 * qv_metrics_escape_label() to build one from an arbitrary string).
 * Whitespace around the commas is allowed; at most QV_METRICS_MAX_LABELS
 * pairs.  Labels are compared after sorting by name, so `a="1",b="2"` and
 * `b="2",a="1"` are the same series.
 *
 * Consistency: each value is read atomically, but a render or snapshot
 * taken during updates is not a consistent cut across metrics (nor between
 * a histogram's buckets and its sum).  Values are statistics, not
 * synchronisation.
 */
#ifndef QUIVER_METRICS_H
#define QUIVER_METRICS_H

#include <stddef.h>
#include <stdint.h>

/* Log-linear histogram geometry: values 0..31 have a bucket each; above,
 * each power of two [2^e, 2^(e+1)) for e = 5..39 is split into 16 equal
 * sub-buckets; values >= 2^40 (about 18 minutes in ns, 1 TiB in bytes)
 * share one overflow bucket.  Bucket width / lower edge <= 1/16. */
#define QV_HIST_SUB_BITS   4
#define QV_HIST_MAX_BITS   40
#define QV_HIST_OVERFLOW   ((QV_HIST_MAX_BITS - QV_HIST_SUB_BITS + 1) << QV_HIST_SUB_BITS)
#define QV_HIST_NBUCKETS   (QV_HIST_OVERFLOW + 1)   /* 593 */

#define QV_METRICS_MAX_LABELS  16

struct qv_metrics;
struct qv_counter;
struct qv_gauge;
struct qv_hist;

/* A histogram read out by qv_hist_snapshot().  count is the sum of
 * buckets[]; min and max are 0 when count is 0. */
struct qv_hist_snapshot {
    uint64_t count;
    uint64_t sum;                   /* wraps modulo 2^64 */
    uint64_t min;
    uint64_t max;
    uint64_t buckets[QV_HIST_NBUCKETS];
};

/* ---- registry (slow path) ---------------------------------------------- */

/* A new, empty registry.  Returns NULL and sets qv_errno = QV_ENOMEM, or a
 * -errno from pthread_mutex_init.  Thread-safe. */
struct qv_metrics *qv_metrics_create(void);

/* Free the registry and every metric registered in it; all metric pointers
 * become invalid, so no thread may still update them.  NULL is a no-op. */
void qv_metrics_free(struct qv_metrics *m);

/*
 * Register a metric, or find the one already registered under the same
 * name and labels (then help is ignored and that same pointer is
 * returned).  help: free text (NULL = ""), escaped at render; the first
 * registration of a name sets it.  labels: constant labels as described
 * above, or NULL / "" for none.  The strings are copied.
 *
 * Returns a pointer owned by m, valid until it is unregistered as often
 * as it was registered (below) or qv_metrics_free(m).  On failure
 * returns NULL and sets qv_errno, with a message naming the metric:
 *   QV_EINVAL  name or labels malformed; a counter name without "_total";
 *              the name already registered as another type; a histogram
 *              label named "quantile" (reserved by the summary format);
 *   QV_ENOMEM  out of memory (the registry is unchanged).
 * Thread-safe (serialised by the registry's mutex); O(metrics) per call.
 */
struct qv_counter *qv_metrics_register_counter(struct qv_metrics *m,
        const char *name, const char *help, const char *labels);
struct qv_gauge *qv_metrics_register_gauge(struct qv_metrics *m,
        const char *name, const char *help, const char *labels);
struct qv_hist *qv_metrics_register_hist(struct qv_metrics *m,
        const char *name, const char *help, const char *labels);

/*
 * Unregister a metric: drop the reference that one register call of it
 * took (registering the same name and labels again returns the same
 * pointer and takes another).  When the last reference goes, the series
 * leaves the registry (render no longer shows it; the rest keep their
 * order) and is freed, and so is its name's family when it was the last
 * series of that name (a later registration of the name sets its help
 * anew).  The caller guarantees that no thread updates or reads the
 * metric through that pointer any more (updates take no lock: the
 * registry cannot tell) -- after the last unregister the pointer is
 * dangling.  NULL is a no-op (returns 0).  Returns 0 or QV_ENOENT (the
 * pointer is not a live metric of m: never registered there, or already
 * unregistered as often as registered; the pointer is compared, never
 * read, so this is safe to ask).  Thread-safe (the registry's mutex); O(metrics).
 */
int qv_metrics_unregister_counter(struct qv_metrics *m, struct qv_counter *c);
int qv_metrics_unregister_gauge(struct qv_metrics *m, struct qv_gauge *g);
int qv_metrics_unregister_hist(struct qv_metrics *m, struct qv_hist *h);

/*
 * Render every metric in Prometheus text format 0.0.4 into buf: per name,
 * "# HELP name text" and "# TYPE name counter|gauge|summary", then one
 * line per series, in registration order.
 *
 * Histograms are rendered as `summary`: name{quantile="0.5|0.95|0.99|0.999"}
 * (bucket midpoints, see qv_hist_quantile; NaN when empty), name_sum and
 * name_count.  Why not `histogram`: the 593 log-linear buckets would make
 * 593 series per histogram, and a reduced set of `le` edges (say one per
 * power of two) lets histogram_quantile() interpolate with errors up to 2x,
 * where the summary's quantiles are within 3.2%.  The price: quantiles are
 * over the process's lifetime (not a sliding window) and cannot be
 * aggregated across instances; rate(name_sum)/rate(name_count) still gives
 * a windowed mean.
 *
 * On success returns 0, writes the text and a terminating NUL, and sets
 * *len to the text's length (without the NUL).  When cap is too small
 * (buf may then be NULL with cap 0), returns QV_ENOSPC and sets *len to the
 * capacity that would have sufficed (text + NUL) at the time of the call;
 * values keep changing, so retry with some slack.  buf then holds a
 * truncated, NUL-terminated prefix when cap > 0.
 * Thread-safe: may run while other threads update (takes the registry
 * mutex, so registrations wait).  O(series + histograms x 593).
 */
int qv_metrics_render(struct qv_metrics *m, char *buf, size_t cap, size_t *len);

/*
 * Escape an arbitrary string as a label value body (without the quotes):
 * backslash -> \\, double quote -> \", newline -> \n.  Writes the result
 * and a NUL into out; returns 0 and sets *len to its length, or returns
 * QV_ENOSPC with *len = the capacity needed (including the NUL).
 * Thread-safe, no allocation.
 */
int qv_metrics_escape_label(const char *raw, char *out, size_t cap, size_t *len);

/* ---- updates (hot path: no lock, no allocation, no syscall) ------------ */
/* c, g, h must come from a register call of a live registry.  All are
 * thread-safe, relaxed atomics, and cannot fail. */

/* Add n to the counter.  One relaxed atomic add on one of 16 cache-line
 * shards picked by a per-thread slot, so threads rarely share a line. */
void qv_counter_add(struct qv_counter *c, uint64_t n);
static inline void qv_counter_inc(struct qv_counter *c) { qv_counter_add(c, 1); }
/* The counter's value: the sum of its shards.  O(16). */
uint64_t qv_counter_get(const struct qv_counter *c);

/* Gauges hold an int64 (scale fractions: bytes, ns, parts per million). */
void qv_gauge_set(struct qv_gauge *g, int64_t v);
void qv_gauge_add(struct qv_gauge *g, int64_t delta);  /* negative: subtract */
int64_t qv_gauge_get(const struct qv_gauge *g);

/* Record one value (a latency in ns, a size in bytes...).  O(1): two
 * relaxed atomic adds (the bucket and a per-thread-slot sum shard), plus a
 * compare-and-swap only when value is a new minimum or maximum. */
void qv_hist_record(struct qv_hist *h, uint64_t value);

/* Read the histogram into *out.  O(593). */
void qv_hist_snapshot(const struct qv_hist *h, struct qv_hist_snapshot *out);

/*
 * The q-quantile, q in [0, 1] (clamped): the smallest recorded value v
 * such that at least ceil(q * count) values are <= v, approximated by the
 * midpoint of v's bucket and clamped to [min, max].  q = 0 gives min,
 * q = 1 gives max, exactly.  Relative error <= 1/32 (half a bucket over its
 * lower edge); exact for values below 32 and when all values are equal.
 * Values >= 2^40 report max.  An empty histogram gives 0.
 * qv_hist_quantile takes a snapshot (a 4.8 KB stack struct) each call; to
 * read several quantiles consistently use qv_hist_snapshot_quantile.
 */
uint64_t qv_hist_quantile(const struct qv_hist *h, double q);
uint64_t qv_hist_snapshot_quantile(const struct qv_hist_snapshot *s, double q);

/* The bucket that holds value, and the lowest value of bucket idx
 * (idx < QV_HIST_NBUCKETS).  Cannot fail; O(1). */
unsigned qv_hist_bucket_index(uint64_t value);
uint64_t qv_hist_bucket_lower(unsigned idx);

#endif
