/*
 * router.c - the engine router (quiver/router.h): one engine that sends
 * each work unit to the engine predicted to finish it first.
 *
 * Registry
 * --------
 * Up to QV_ROUTER_MAX_ENGINES borrowed engines, each with a name, flags
 * (QV_ROUTER_CLEAN_FAIL, QV_ROUTER_SYNC), the caps read at add(), cost
 * parameters per kind, online correction factors, a backlog, a circuit
 * breaker, a set of lists assumed resident in its memory, and counters.
 *
 * Features
 * --------
 * qv__router_shape() reads a unit once (O(probes + distinct lists)):
 *   bpe          bytes per entry: FLAT 4 dim + 4 (the norm), F16 2 dim +
 *                4, SQ8 and PQ code_size
 *   probes P     (query, list) pairs: probe_offsets[nq] - [0]
 *   lists L      distinct lists probed; cnt_l = queries probing list l
 *   pairs        sum over probes of the list's entries n_l: (query,
 *                entry) distance evaluations
 *   list_bytes   sum over distinct lists of n_l x bpe
 *   scanned      sum over distinct lists of n_l x bpe x ceil(cnt_l / 64):
 *                a list is read from memory once per tile of up to
 *                QV_ROUTER_QTILE queries scanning it (the batched kernels
 *                re-read it from cache within a tile)
 *   ops          FLAT, F16, SQ8: 2 x pairs x dim (a multiply-add per
 *                dimension); PQ: 2 x pairs x code_size (a lookup and an
 *                add per code byte).  Compute grows with the queries
 *                sharing a list, bytes scanned hardly do.
 *   query_bytes  nq x dim x 4
 *
 * Cost model
 * ----------
 * Per engine and kind, struct qv_router_params {overhead_ns, link_Bps,
 * mem_Bps, flops}.  The service time of a unit on engine E is
 *   raw = overhead + link / link_Bps + max(scanned / mem_Bps, ops / flops)
 * where link = 0 on engines sharing host memory (caps.device_memory 0),
 * else query_bytes + the bytes of the probed lists not yet resident.
 * Residency is approximated: a list (keyed by its codes pointer) is
 * assumed resident on an engine from the first unit sent there that
 * probes it until qv_engine_forget() names it; the set is a fixed open-
 * addressing table of QV_ROUTER_RESIDENT_SLOTS per engine (when 3/4 full,
 * further lists are predicted as moved every time: pessimistic, never
 * wrong-way optimistic).  Device eviction is not modelled.
 *
 * The prediction is completion = backlog + f x raw, with backlog the sum
 * of the corrected service times of the engine's parts in flight (0 for
 * SYNC engines, which are done when submit returns) and f the online
 * correction factor of (engine, kind, bucket), bucket = floor(log2(raw
 * ns)) clamped to QV_ROUTER_BUCKETS.  On every successful completion
 *   ratio = observed / predicted completion (clamped to 1/4..4)
 *   f    <- (1 - alpha) f + alpha f ratio (clamped to 1/64..64)
 * The ratio's clamp bounds what one completion can do: at alpha 0.2 one
 * outlier (the CPU engine preempted for a few ms on a shared 2-vCPU host
 * read 10-30x its prediction) moves f by at most 1.6x, so one hiccup no
 * longer hands the next units to an engine the model rates 3x slower
 * (with 1/32..32 it moved f up to 7.2x and sent siftsmall units to POCL);
 * an engine really running 5x its prediction is still corrected within
 * four completions.
 * Observed is the wall time from submit to completion as the router
 * sees it: for SYNC engines submit()'s own duration; for asynchronous
 * ones until the poll() that returned it.  We chose wall time over the
 * engine's device_ns + transfer_ns because wall time is what dispatch
 * minimises (it includes launch, merge and queueing the engine does not
 * report, and the simulated card's device_ns is a model, not a
 * measurement).  Its bias: a completion that lands while the router is
 * blocked in a SYNC engine's submit is seen late, which errs toward the
 * SYNC engine (the CPU), the safe direction.
 *
 * Dispatch
 * --------
 * A unit becomes one or more parts (struct rt_part: a copy of the unit
 * with its own probe CSR; the engine sees the part, never the caller's
 * struct).  A part goes to the engine with the earliest predicted
 * completion among engines that accept it (kind bit in caps.kinds, dim
 * <= caps.max_dim), are healthy, whose breaker lets it through, and that
 * have not refused or failed this part.  Submit answers: 0 -> in flight;
 * QV_ENOTSUP -> skip that engine for this part; QV_EBUSY -> skip it for
 * now, and when every candidate was busy the part waits in the router's
 * queue (a ring big enough for every part of every unit slot, so it
 * cannot overflow) and is retried at each poll(); any other error counts
 * as a failure of the engine (breaker) and skips it.  A part that no
 * engine takes ends the unit with the last error.  Pinned units
 * (qv_router_pin, qv_router_submit_pinned) go to their engine only.
 *
 * Split
 * -----
 * When split is on, the unit probes >= 2 distinct lists and its
 * corrected service time on the best engine is >= split_min_ns, the
 * router solves for the makespan T of sharing it over the candidate
 * engines: engine i, with backlog b_i, corrected overhead o_i and
 * corrected variable time v_i for the whole unit, finishes a fraction
 * x_i at b_i + o_i + x_i v_i; equal finish times with sum x_i = 1 give
 *   T = (1 + sum (b_i + o_i) / v_i) / sum 1 / v_i
 * over the engines with b_i + o_i < T (added in order of b_i + o_i).
 * If T < 0.9 x the best single completion, the distinct lists are dealt
 * out in probe order by weight n_l x cnt_l until each engine has its
 * x_i share, and each part gets the CSR of its lists' probes (router-
 * owned scratch of the unit slot, grown when a unit is bigger than any
 * before in that slot; qv_router_reserve grows it ahead; a growth that
 * fails just means no split).  Parts for asynchronous engines are
 * submitted first, SYNC ones last, so they run at the same time.  The
 * unit completes when its last part does.
 *
 * The heap invariant.  All parts of a unit merge into the SAME heaps.
 * That is safe because every engine merges into heaps only inside
 * submit() (cpu: its workers, and their merge, finish before submit
 * returns) or inside poll() (opencl, fpga: candidates are merged there),
 * and the router calls both from its one thread, one engine at a time.
 * So heaps are only touched in the router's thread, never by two
 * engines at once.  An engine that merged from a thread of its own at
 * any other time would break this and must not be registered.
 *
 * Fallback
 * --------
 * A part that completes with status < 0 counts against its engine's
 * breaker.  On a QV_ROUTER_CLEAN_FAIL engine (heaps untouched: cpu,
 * opencl and fpga merge only on success) the part alone is sent to the
 * next best engine.  On any other engine the heaps may hold part of its
 * results, so the unit is marked dirty: queued parts are cancelled, the
 * router waits for its parts in flight, then re-initialises every heap
 * (qv_topk_init on the same storage) and re-runs the whole unit as one
 * part away from the engines that dirtied it.  That is only right when
 * the heaps were empty at submit (units from the indexes always are;
 * checked at submit, O(nq)); otherwise the unit completes with the
 * error.  Every unit is handed back by poll() exactly once: a unit slot
 * goes onto the completion ring once, when its last part ends, and is
 * freed when poll() hands it back.
 *
 * Circuit breaker (per engine).  CLOSED -> OPEN after breaker_failures
 * consecutive failures (a success resets the count).  OPEN: no unit is
 * sent until breaker_cooldown_ms have passed; then the next part that
 * chooses it is the probe and the breaker is HALF_OPEN (no other part is
 * sent while the probe is out).  The probe's success closes it; a
 * failure re-opens it for another cooldown.
 *
 * Prefetch
 * --------
 * router_prefetch (engine.h's qv_engine_prefetch on the router) takes the
 * lists of a unit that waits in a batcher (with its probes when the index
 * passes them, else one query over every list), picks the engine with
 * the earliest predicted completion exactly as dispatch would now (same
 * candidates, pin, breaker; link bytes of the lists not yet resident
 * included), and, when that engine has device memory and a prefetch op,
 * forwards the call.  We chose "where dispatch would send it now" over
 * "where it would run best if its lists were resident" because a copy to
 * an engine that then loses the unit to another is pure cost; the price
 * is that an engine whose link makes it lose cold units is not warmed
 * by prefetch (it warms from the units it wins, as before).  When the
 * engine accepted the call (rc >= 0), the lists are inserted into its
 * resident set, so the model stops charging their bytes to the link
 * (the batch's dispatch then sees them as resident); a decline (rc < 0)
 * marks nothing (some lists may have been started: pessimistic, never
 * wrong-way optimistic).  Per engine: prefetches, prefetch_lists,
 * prefetch_declined; router-wide prefetch_calls and prefetch_kept (the
 * best engine shares host memory: nothing to move).  O(the unit's
 * probes + distinct lists x engines); no allocation once the per-list
 * scratch has grown.
 *
 * Memory and the hot path.  create() allocates the unit slots, the queue,
 * the completion ring and the resident sets.  submit() and poll()
 * allocate nothing once the per-list scratch (features) and the split
 * scratch have grown to the largest unit seen; no locks, no logging, no
 * system calls beyond the clock (vDSO).
 */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quiver/alloc.h"
#include "quiver/config.h"
#include "quiver/errors.h"
#include "quiver/timeutil.h"
#include "quiver/topk.h"
#include "router_int.h"

#define RT_DEF_OVERHEAD_NS 20000.0
#define RT_DEF_LINK_BPS 10e9
#define RT_DEF_MEM_BPS 10e9
#define RT_DEF_FLOPS 20e9
#define RT_SPLIT_GAIN 0.9
#define RT_RATIO_CLAMP 4.0        /* one completion moves f by at most this (above) */

static int64_t default_clock(void *arg)
{
    (void)arg;
    return qv_now_ns();
}

/* ------------------------------------------------------------------ */
/* Options                                                             */
/* ------------------------------------------------------------------ */

void qv_router_opts_default(struct qv_router_opts *o)
{
    memset(o, 0, sizeof *o);
    o->calibrate = 1;
    o->ewma_alpha = 0.2;
    o->breaker_failures = 3;
    o->breaker_cooldown_ms = 1000;
    o->split = 1;
    o->split_min_ns = 200000;
    o->max_units = 256;
}

int qv_router_opts_from_config(const struct qv_config *cfg, struct qv_router_opts *o)
{
    qv_router_opts_default(o);
    o->calibrate = qv_config_bool(cfg, "router", "calibrate");
    o->calibration_dir = qv_config_string(cfg, "router", "calibration_dir");
    o->ewma_alpha = qv_config_double(cfg, "router", "ewma_alpha");
    o->breaker_failures = (uint32_t)qv_config_int(cfg, "router", "breaker_failures");
    o->breaker_cooldown_ms = (uint32_t)qv_config_int(cfg, "router", "breaker_cooldown_ms");
    o->split = qv_config_bool(cfg, "router", "split");
    o->split_min_ns = (uint64_t)qv_config_int(cfg, "router", "split_min_ns");
    return 0;
}

int qv_router_parse_engines(const char *list, unsigned *mask)
{
    static const struct { const char *name; unsigned bit; } known[] = {
        { "cpu", QV_ROUTER_USE_CPU },
        { "opencl", QV_ROUTER_USE_OPENCL },
        { "fpga", QV_ROUTER_USE_FPGA },
    };
    unsigned m = 0;
    const char *p = list ? list : "";
    *mask = 0;
    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        const char *s = p;
        while (*p && *p != ',' && *p != ' ' && *p != '\t')
            p++;
        size_t len = (size_t)(p - s);
        if (!len)
            continue;
        unsigned bit = 0;
        for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
            if (strlen(known[i].name) == len && strncmp(known[i].name, s, len) == 0)
                bit = known[i].bit;
        if (!bit)
            return qv_seterr(QV_ECONFIG, "[router] engines = %s: unknown engine \"%.*s\"; "
                             "expected a comma list of cpu, opencl, fpga", list, (int)len, s);
        m |= bit;
    }
    if (!m)
        return qv_seterr(QV_ECONFIG, "[router] engines is empty; expected a comma list "
                         "of cpu, opencl, fpga");
    *mask = m;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Registry                                                            */
/* ------------------------------------------------------------------ */

static const struct qv_engine_ops router_ops;

static int find_engine(const struct qv_router *r, const char *name)
{
    if (!name)
        return -1;
    for (unsigned i = 0; i < r->n; i++)
        if (strcmp(r->eng[i].name, name) == 0)
            return (int)i;
    return -1;
}

static void reset_ewma(struct rt_engine *E, unsigned kind)
{
    for (unsigned b = 0; b < QV_ROUTER_BUCKETS; b++)
        E->ewma[kind][b] = 1.0f;
}

static void resolve_dir(struct qv_router *r, const char *dir)
{
    const char *env;
    if (dir && strcmp(dir, "off") == 0) {
        r->calibration_dir[0] = '\0';
        return;
    }
    if (dir && *dir && strcmp(dir, "auto") != 0)
        snprintf(r->calibration_dir, sizeof r->calibration_dir, "%s", dir);
    else if ((env = getenv("XDG_CACHE_HOME")) && *env)
        snprintf(r->calibration_dir, sizeof r->calibration_dir, "%s/quiver/router", env);
    else if ((env = getenv("HOME")) && *env)
        snprintf(r->calibration_dir, sizeof r->calibration_dir, "%s/.cache/quiver/router",
                 env);
    else
        snprintf(r->calibration_dir, sizeof r->calibration_dir, "/var/cache/quiver/router");
}

struct qv_router *qv_router_create(const struct qv_router_opts *opts)
{
    struct qv_router_opts def;
    if (!opts) {
        qv_router_opts_default(&def);
        opts = &def;
    }
    if (!(opts->ewma_alpha >= 0.0 && opts->ewma_alpha <= 1.0)) {
        qv_seterr(QV_EINVAL, "router: ewma_alpha %g is outside 0..1", opts->ewma_alpha);
        return NULL;
    }
    if (opts->breaker_failures < 1 || opts->breaker_cooldown_ms < 1) {
        qv_seterr(QV_EINVAL, "router: breaker_failures and breaker_cooldown_ms must be >= 1");
        return NULL;
    }
    if (opts->max_units < 1 || opts->max_units > 65536) {
        qv_seterr(QV_EINVAL, "router: max_units %u is outside 1..65536", opts->max_units);
        return NULL;
    }
    struct qv_router *r = qv_calloc(1, sizeof *r, QV_MEM_ROUTER);
    if (!r)
        goto fail;
    r->o = *opts;
    if (!r->o.clock)
        r->o.clock = default_clock;
    resolve_dir(r, opts->calibration_dir);
    r->o.calibration_dir = r->calibration_dir;
    r->pin = -1;
    uint32_t U = opts->max_units;
    r->units = qv_calloc(U, sizeof *r->units, QV_MEM_ROUTER);
    if (!r->units)
        goto fail_units;
    r->free_units = qv_malloc(U * sizeof *r->free_units, QV_MEM_ROUTER);
    if (!r->free_units)
        goto fail_free;
    r->done = qv_malloc(U * sizeof *r->done, QV_MEM_ROUTER);
    if (!r->done)
        goto fail_done;
    r->q_cap = U * QV_ROUTER_MAX_ENGINES;
    r->queue = qv_malloc(r->q_cap * sizeof *r->queue, QV_MEM_ROUTER);
    if (!r->queue)
        goto fail_queue;
    for (uint32_t i = 0; i < U; i++)
        r->free_units[i] = U - 1 - i;
    r->nfree = U;
    r->base.ops = &router_ops;
    r->base.priv = r;
    return r;

fail_queue:
    qv_free(r->done);
fail_done:
    qv_free(r->free_units);
fail_free:
    qv_free(r->units);
fail_units:
    qv_free(r);
fail:
    qv_seterr(QV_ENOMEM, "router: no memory for %u unit slots", opts->max_units);
    return NULL;
}

struct qv_engine *qv_router_engine(struct qv_router *r)
{
    return &r->base;
}

void qv_router_free(struct qv_router *r)
{
    if (!r)
        return;
    for (unsigned i = 0; i < r->n; i++)
        qv_free((void *)r->eng[i].resident);
    for (uint32_t i = 0; i < r->o.max_units; i++) {
        qv_free(r->units[i].offs);
        qv_free(r->units[i].plist);
    }
    qv_free(r->cnt);
    qv_free(r->distinct);
    qv_free(r->owner);
    qv_free(r->queue);
    qv_free(r->done);
    qv_free(r->free_units);
    qv_free(r->units);
    qv_free(r);
}

int qv_router_add(struct qv_router *r, const char *name, struct qv_engine *e,
                  unsigned flags)
{
    if (!e || !e->ops)
        return qv_seterr(QV_EINVAL, "router: add \"%s\": NULL engine", name ? name : "");
    if (!name || !*name || strlen(name) >= QV_ROUTER_NAME_MAX)
        return qv_seterr(QV_EINVAL, "router: engine name must be 1..%u characters",
                         QV_ROUTER_NAME_MAX - 1);
    if (flags & ~(QV_ROUTER_CLEAN_FAIL | QV_ROUTER_SYNC | QV_ROUTER_HOST_CORES))
        return qv_seterr(QV_EINVAL, "router: add \"%s\": unknown flags 0x%x", name, flags);
    if (find_engine(r, name) >= 0)
        return qv_seterr(QV_EEXIST, "router: an engine named \"%s\" is already registered",
                         name);
    if (r->n == QV_ROUTER_MAX_ENGINES)
        return qv_seterr(QV_ENOSPC, "router: add \"%s\": %u engines registered already",
                         name, QV_ROUTER_MAX_ENGINES);
    struct rt_engine *E = &r->eng[r->n];
    memset(E, 0, sizeof *E);
    e->ops->caps(e, &E->caps);
    if (E->caps.device_memory) {
        E->resident = qv_calloc(QV_ROUTER_RESIDENT_SLOTS, sizeof *E->resident, QV_MEM_ROUTER);
        if (!E->resident)
            return qv_seterr(QV_ENOMEM, "router: add \"%s\": no memory", name);
    }
    snprintf(E->name, sizeof E->name, "%s", name);
    snprintf(E->desc, sizeof E->desc, "%s", name);
    snprintf(E->st.name, sizeof E->st.name, "%s", name);
    E->e = e;
    E->flags = flags;
    for (unsigned k = 0; k < QV_WU__COUNT; k++) {
        E->params[k] = (struct qv_router_params){ RT_DEF_OVERHEAD_NS, RT_DEF_LINK_BPS,
                                                  RT_DEF_MEM_BPS, RT_DEF_FLOPS };
        E->calib[k] = QV_ROUTER_CALIB_DEFAULT;
        reset_ewma(E, k);
    }
    r->n++;
    r->st.nengines = r->n;
    return 0;
}

int qv_router_set_desc(struct qv_router *r, const char *name, const char *desc)
{
    int i = find_engine(r, name);
    if (i < 0)
        return qv_seterr(QV_ENOENT, "router: no engine named \"%s\"", name ? name : "");
    snprintf(r->eng[i].desc, sizeof r->eng[i].desc, "%s", desc ? desc : "");
    return 0;
}

static int params_ok(const struct qv_router_params *p)
{
    return isfinite(p->overhead_ns) && p->overhead_ns >= 0 && isfinite(p->link_Bps) &&
           p->link_Bps > 0 && isfinite(p->mem_Bps) && p->mem_Bps > 0 &&
           isfinite(p->flops) && p->flops > 0;
}

int qv_router_set_params(struct qv_router *r, const char *name, enum qv_wu_kind kind,
                         const struct qv_router_params *p)
{
    int i = find_engine(r, name);
    if (i < 0)
        return qv_seterr(QV_ENOENT, "router: no engine named \"%s\"", name ? name : "");
    if ((unsigned)kind >= QV_WU__COUNT || !p || !params_ok(p))
        return qv_seterr(QV_EINVAL, "router: set_params \"%s\": kind %d or a parameter "
                         "out of range (all finite, > 0; overhead >= 0)", name, (int)kind);
    r->eng[i].params[kind] = *p;
    r->eng[i].calib[kind] = QV_ROUTER_CALIB_INJECTED;
    reset_ewma(&r->eng[i], kind);
    return 0;
}

int qv_router_get_params(const struct qv_router *r, const char *name, enum qv_wu_kind kind,
                         struct qv_router_params *out)
{
    int i = find_engine(r, name);
    if (i < 0)
        return qv_seterr(QV_ENOENT, "router: no engine named \"%s\"", name ? name : "");
    if ((unsigned)kind >= QV_WU__COUNT)
        return qv_seterr(QV_EINVAL, "router: kind %d out of range", (int)kind);
    *out = r->eng[i].params[kind];
    return 0;
}

int qv_router_pin(struct qv_router *r, const char *name)
{
    if (!name) {
        r->pin = -1;
        return 0;
    }
    int i = find_engine(r, name);
    if (i < 0)
        return qv_seterr(QV_ENOENT, "router: pin: no engine named \"%s\"", name);
    r->pin = i;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Scratch                                                             */
/* ------------------------------------------------------------------ */

static int grow_lists(struct qv_router *r, size_t nlists)
{
    if (nlists <= r->lists_cap)
        return 0;
    uint32_t *c = qv_calloc(nlists, sizeof *c, QV_MEM_ROUTER);
    uint32_t *d = qv_malloc(nlists * sizeof *d, QV_MEM_ROUTER);
    uint8_t *o = qv_malloc(nlists, QV_MEM_ROUTER);
    if (!c || !d || !o) {
        qv_free(c);
        qv_free(d);
        qv_free(o);
        return QV_ENOMEM;
    }
    qv_free(r->cnt);
    qv_free(r->distinct);
    qv_free(r->owner);
    r->cnt = c;
    r->distinct = d;
    r->owner = o;
    r->lists_cap = nlists;
    return 0;
}

static int grow_unit(struct rt_unit *u, size_t offs, size_t probes)
{
    if (offs > u->offs_cap) {
        uint32_t *p = qv_malloc(offs * sizeof *p, QV_MEM_ROUTER);
        if (!p)
            return QV_ENOMEM;
        qv_free(u->offs);
        u->offs = p;
        u->offs_cap = offs;
    }
    if (probes > u->plist_cap) {
        uint32_t *p = qv_malloc(probes * sizeof *p, QV_MEM_ROUTER);
        if (!p)
            return QV_ENOMEM;
        qv_free(u->plist);
        u->plist = p;
        u->plist_cap = probes;
    }
    return 0;
}

int qv_router_reserve(struct qv_router *r, uint32_t nq, uint64_t probes, uint32_t nlists)
{
    if (grow_lists(r, nlists))
        return qv_seterr(QV_ENOMEM, "router: no memory for %u lists of scratch", nlists);
    for (uint32_t i = 0; i < r->o.max_units; i++)
        if (grow_unit(&r->units[i], (size_t)QV_ROUTER_MAX_ENGINES * ((size_t)nq + 1),
                      probes))
            return qv_seterr(QV_ENOMEM, "router: no memory for split scratch of %u "
                             "queries, %llu probes", nq, (unsigned long long)probes);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Features and the cost model                                         */
/* ------------------------------------------------------------------ */

static uint64_t entry_bytes(const struct qv_work_unit *wu)
{
    switch (wu->kind) {
    case QV_WU_FLAT:
        return 4ull * wu->dim + 4;
    case QV_WU_F16:
        return 2ull * wu->dim + 4;
    default:
        return wu->code_size ? wu->code_size : wu->dim;
    }
}

int qv__router_shape(struct qv_router *r, const struct qv_work_unit *wu, struct rt_shape *s)
{
    const uint64_t bpe = entry_bytes(wu);
    const uint32_t p0 = wu->probe_offsets[0], p1 = wu->probe_offsets[wu->nq];
    memset(s, 0, sizeof *s);
    s->kind = wu->kind;
    s->dim = wu->dim;
    s->nq = wu->nq;
    s->probes = p1 - p0;
    s->query_bytes = 4ull * wu->nq * wu->dim;
    int rc = grow_lists(r, wu->nlists);
    if (rc) {
        /* approximation without per-list counts */
        for (uint32_t p = p0; p < p1; p++) {
            uint64_t n = wu->lists[wu->probe_lists[p]].n;
            s->pairs += n;
            s->list_bytes += n * bpe;
        }
        s->lists = (uint32_t)s->probes;
        s->scanned = s->list_bytes;
    } else {
        s->exact = 1;
        for (uint32_t p = p0; p < p1; p++) {
            uint32_t l = wu->probe_lists[p];
            if (r->cnt[l]++ == 0)
                r->distinct[s->lists++] = l;
            s->pairs += wu->lists[l].n;
        }
        for (uint32_t i = 0; i < s->lists; i++) {
            uint32_t l = r->distinct[i];
            uint64_t b = wu->lists[l].n * bpe;
            s->list_bytes += b;
            s->scanned += b * ((r->cnt[l] + QV_ROUTER_QTILE - 1) / QV_ROUTER_QTILE);
        }
    }
    uint64_t per = wu->kind == QV_WU_PQ ? (wu->code_size ? wu->code_size : 1) : wu->dim;
    s->ops = 2ull * s->pairs * per;
    return rc;
}

void qv__router_shape_done(struct qv_router *r, const struct rt_shape *s)
{
    if (s->exact)
        for (uint32_t i = 0; i < s->lists; i++)
            r->cnt[r->distinct[i]] = 0;
}

static uint32_t res_hash(const void *p)
{
    return (uint32_t)((((uintptr_t)p >> 6) * 0x9E3779B97F4A7C15ull) >> 52) &
           (QV_ROUTER_RESIDENT_SLOTS - 1);
}

static int res_find(const struct rt_engine *E, const void *p)
{
    for (uint32_t h = res_hash(p), i = 0; i < QV_ROUTER_RESIDENT_SLOTS; i++) {
        const void *v = E->resident[(h + i) & (QV_ROUTER_RESIDENT_SLOTS - 1)];
        if (!v)
            return -1;
        if (v == p)
            return (int)((h + i) & (QV_ROUTER_RESIDENT_SLOTS - 1));
    }
    return -1;
}

static void res_insert(struct rt_engine *E, const void *p)
{
    if (!p || res_find(E, p) >= 0)
        return;
    for (uint32_t h = res_hash(p), i = 0; i < QV_ROUTER_RESIDENT_SLOTS; i++) {
        const void **v = &E->resident[(h + i) & (QV_ROUTER_RESIDENT_SLOTS - 1)];
        if (*v == QV_ROUTER_TOMB) {
            *v = p;
            return;
        }
        if (!*v) {
            if (E->resident_n >= QV_ROUTER_RESIDENT_SLOTS / 4 * 3)
                return;                 /* full: predicted as moved */
            *v = p;
            E->resident_n++;
            return;
        }
    }
}

/* Bytes a unit moves to E: 0 on shared memory, else the queries and the
 * lists not assumed resident (the shape's distinct lists must be valid). */
static double link_bytes(const struct qv_router *r, const struct rt_engine *E,
                         const struct qv_work_unit *wu, const struct rt_shape *s)
{
    if (!E->caps.device_memory)
        return 0.0;
    if (!s->exact)
        return (double)(s->query_bytes + s->list_bytes);
    const uint64_t bpe = entry_bytes(wu);
    double b = (double)s->query_bytes;
    for (uint32_t i = 0; i < s->lists; i++) {
        const struct qv_wu_list *L = &wu->lists[r->distinct[i]];
        if (res_find(E, L->codes) < 0)
            b += (double)L->n * (double)bpe;
    }
    return b;
}

static double service_link(const struct rt_engine *E, const struct rt_shape *s, double link)
{
    const struct qv_router_params *P = &E->params[s->kind];
    double mem = (double)s->scanned / P->mem_Bps * 1e9;
    double cmp = (double)s->ops / P->flops * 1e9;
    return P->overhead_ns + link / P->link_Bps * 1e9 + (mem > cmp ? mem : cmp);
}

double qv__router_service(const struct qv_router *r, const struct rt_engine *E,
                          const struct rt_shape *s)
{
    (void)r;
    double link = E->caps.device_memory ? (double)(s->query_bytes + s->list_bytes) : 0.0;
    return service_link(E, s, link);
}

static uint32_t bucket_of(double ns)
{
    if (!(ns >= 2.0))
        return 0;
    int b = ilogb(ns);
    return b < 0 ? 0 : (uint32_t)b >= QV_ROUTER_BUCKETS ? QV_ROUTER_BUCKETS - 1 : (uint32_t)b;
}

static int accepts(const struct rt_engine *E, const struct qv_work_unit *wu)
{
    return (E->caps.kinds >> wu->kind & 1u) && wu->dim <= E->caps.max_dim;
}

/* Features of a unit that may carry no probes (prefetch, predict): with
 * probes, qv__router_shape; without, one query over every list (r->
 * distinct = 0 .. nlists - 1).  Clear with qv__router_shape_done. */
static void shape_any(struct qv_router *r, const struct qv_work_unit *wu, struct rt_shape *s)
{
    if (wu->nq && wu->probe_offsets && wu->probe_lists) {
        qv__router_shape(r, wu, s);
        return;
    }
    const uint64_t bpe = entry_bytes(wu);
    memset(s, 0, sizeof *s);
    s->kind = wu->kind;
    s->dim = wu->dim;
    s->nq = 1;
    s->probes = wu->nlists;
    s->lists = wu->nlists;
    s->query_bytes = 4ull * wu->dim;
    s->exact = grow_lists(r, wu->nlists) == 0;
    for (uint32_t l = 0; l < wu->nlists; l++) {
        if (s->exact)
            r->distinct[l] = l;
        s->pairs += wu->lists[l].n;
        s->list_bytes += wu->lists[l].n * bpe;
    }
    s->scanned = s->list_bytes;
    s->ops = 2ull * s->pairs * (wu->kind == QV_WU_PQ ? (wu->code_size ? wu->code_size : 1)
                                                     : wu->dim);
}

/* ------------------------------------------------------------------ */
/* Circuit breaker                                                     */
/* ------------------------------------------------------------------ */

static int breaker_allows(const struct qv_router *r, const struct rt_engine *E, int64_t now)
{
    switch (E->breaker) {
    case QV_ROUTER_BREAKER_CLOSED:
        return 1;
    case QV_ROUTER_BREAKER_OPEN:
        return now - E->opened_at >= (int64_t)r->o.breaker_cooldown_ms * 1000000;
    default:
        return !E->probe_out;
    }
}

static void breaker_fail(struct qv_router *r, struct rt_engine *E, int64_t now)
{
    E->consecutive++;
    if (E->breaker == QV_ROUTER_BREAKER_HALF_OPEN ||
        (E->breaker == QV_ROUTER_BREAKER_CLOSED && E->consecutive >= r->o.breaker_failures)) {
        E->breaker = QV_ROUTER_BREAKER_OPEN;
        E->opened_at = now;
        E->st.breaker_opens++;
    } else if (E->breaker == QV_ROUTER_BREAKER_OPEN) {
        E->opened_at = now;
    }
}

static void breaker_ok(struct rt_engine *E, int probe)
{
    E->consecutive = 0;
    if (probe)
        E->breaker = QV_ROUTER_BREAKER_CLOSED;
}

/* ------------------------------------------------------------------ */
/* Dispatch                                                            */
/* ------------------------------------------------------------------ */

static void queue_push(struct qv_router *r, struct rt_part *p)
{
    p->state = PART_QUEUED;
    r->queue[(r->q_head + r->q_count) % r->q_cap] = p;
    r->q_count++;                       /* q_cap >= every part: no overflow */
    r->st.queued++;
}

/* Take the queued parts of unit u out of the queue (a dirty unit drops
 * them).  O(queue length); only on failures. */
static void queue_remove_unit(struct qv_router *r, const struct rt_unit *u)
{
    uint32_t kept = 0;
    for (uint32_t i = 0; i < r->q_count; i++) {
        struct rt_part *p = r->queue[(r->q_head + i) % r->q_cap];
        if (p->unit != u)
            r->queue[(r->q_head + kept++) % r->q_cap] = p;
    }
    r->q_count = kept;
}

static void part_end(struct rt_part *p, int err)
{
    struct rt_unit *u = p->unit;
    p->state = PART_DONE;
    u->active--;
    if (err) {
        u->failed = 1;
        u->last_err = err;
    }
}

/*
 * The engine with the earliest predicted completion of unit wu (features
 * s) among those that accept it, are healthy, let it through their
 * breaker (unless pinned: pin >= 0 is the only candidate) and are not in
 * the skip mask; prefer (>= 0) wins when it is a candidate.  -1 when
 * none.  *raw_out: the uncorrected service time there.  O(engines + the
 * unit's distinct lists per engine with device memory).
 */
static int pick_engine(struct qv_router *r, const struct qv_work_unit *wu,
                       const struct rt_shape *s, int pin, uint32_t skip, int prefer,
                       int64_t now, double *raw_out)
{
    int best = -1;
    double best_t = HUGE_VAL;
    for (unsigned i = 0; i < r->n; i++) {
        struct rt_engine *E = &r->eng[i];
        if (pin >= 0 && (int)i != pin)
            continue;
        if (skip >> i & 1u || !accepts(E, wu) || E->e->ops->health(E->e))
            continue;
        if (pin < 0 && !breaker_allows(r, E, now))
            continue;
        double raw = service_link(E, s, link_bytes(r, E, wu, s));
        double t = E->backlog_ns + raw * E->ewma[s->kind][bucket_of(raw)];
        if ((int)i == prefer)
            t = -1.0;                   /* the split plan's engine first */
        if (t < best_t) {
            best_t = t;
            best = (int)i;
            *raw_out = raw;
        }
    }
    return best;
}

/*
 * Send part p (counted in its unit's active parts) to an engine.  On
 * return it is INFLIGHT, QUEUED (every candidate busy), or DONE with its
 * unit failed (no engine took it).
 */
static void dispatch(struct qv_router *r, struct rt_part *p)
{
    struct rt_unit *u = p->unit;
    struct rt_shape s;
    uint32_t busy = 0;
    int err = u->last_err ? u->last_err : QV_EUNAVAIL;
    int64_t now = qv__router_now(r);
    qv__router_shape(r, &p->wu, &s);
    for (;;) {
        double best_raw = 0;
        int best = pick_engine(r, &p->wu, &s, u->pin, p->tried | busy, p->prefer, now,
                               &best_raw);
        if (best < 0)
            break;
        struct rt_engine *E = &r->eng[best];
        p->prefer = -1;
        p->wu.status = 0;
        p->wu.device_ns = p->wu.transfer_ns = 0;
        p->t_submit = qv__router_now(r);
        int rc = E->e->ops->submit(E->e, &p->wu);
        if (rc == 0) {
            p->t_done = E->flags & QV_ROUTER_SYNC ? qv__router_now(r) : 0;
            p->state = PART_INFLIGHT;
            p->engine = best;
            p->bucket = bucket_of(best_raw);
            p->service = best_raw * E->ewma[s.kind][p->bucket];
            p->predicted = (E->flags & QV_ROUTER_SYNC ? 0.0 : E->backlog_ns) + p->service;
            if (p->predicted < 1.0)
                p->predicted = 1.0;
            if (!(E->flags & QV_ROUTER_SYNC))
                E->backlog_ns += p->service;
            E->inflight++;
            p->probe = 0;
            if (u->pin < 0 && E->breaker != QV_ROUTER_BREAKER_CLOSED) {
                E->breaker = QV_ROUTER_BREAKER_HALF_OPEN;
                E->probe_out = 1;
                p->probe = 1;
            }
            if (E->resident && s.exact)
                for (uint32_t i = 0; i < s.lists; i++)
                    res_insert(E, p->wu.lists[r->distinct[i]].codes);
            qv__router_shape_done(r, &s);
            return;
        }
        if (rc == QV_EBUSY) {
            busy |= 1u << best;
            E->st.refusals++;
            continue;
        }
        err = rc;
        p->tried |= 1u << best;
        if (rc == QV_ENOTSUP) {
            E->st.refusals++;
        } else {
            E->st.failures++;
            breaker_fail(r, E, now);
        }
    }
    qv__router_shape_done(r, &s);
    if (busy)
        queue_push(r, p);
    else
        part_end(p, err);
}

static void part_init(struct rt_part *p, struct rt_unit *u, const struct qv_work_unit *wu)
{
    memset(p, 0, sizeof *p);
    p->wu = *wu;
    p->wu.status = 0;
    p->unit = u;
    p->engine = -1;
    p->prefer = -1;
}

/*
 * Plan a split of unit u over the candidate engines (see "Split" above).
 * Returns the number of parts set up (>= 2), or 0: no split.
 */
static uint32_t plan_split(struct qv_router *r, struct rt_unit *u)
{
    const struct qv_work_unit *wu = u->wu;
    struct rt_shape s;
    if (!r->o.split || r->n < 2 || wu->nq == 0)
        return 0;
    qv__router_shape(r, wu, &s);
    uint32_t nparts = 0;
    struct cand { int e; double start, v; } c[QV_ROUTER_MAX_ENGINES], t;
    unsigned m = 0;
    double best = HUGE_VAL, best_svc = 0;
    if (!s.exact || s.lists < 2)
        goto out;
    for (unsigned i = 0; i < r->n; i++) {
        struct rt_engine *E = &r->eng[i];
        if (!accepts(E, wu) || E->e->ops->health(E->e) ||
            E->breaker != QV_ROUTER_BREAKER_CLOSED)
            continue;
        double raw = service_link(E, &s, link_bytes(r, E, wu, &s));
        double f = E->ewma[s.kind][bucket_of(raw)];
        double o = E->params[s.kind].overhead_ns * f;
        double v = raw * f - o;
        if (E->backlog_ns + raw * f < best) {
            best = E->backlog_ns + raw * f;
            best_svc = raw * f;
        }
        /* engines on the host's cores share them: keep the one of them
         * that would finish the whole unit first */
        if (E->flags & QV_ROUTER_HOST_CORES) {
            unsigned h = 0;
            while (h < m && !(r->eng[c[h].e].flags & QV_ROUTER_HOST_CORES))
                h++;
            if (h < m) {
                if (c[h].start + c[h].v <= E->backlog_ns + raw * f)
                    continue;
                c[h].e = (int)i;
                c[h].start = E->backlog_ns + o;
                c[h].v = v > 1.0 ? v : 1.0;
                continue;
            }
        }
        c[m].e = (int)i;
        c[m].start = E->backlog_ns + o;
        c[m].v = v > 1.0 ? v : 1.0;
        m++;
    }
    if (m < 2 || best_svc < (double)r->o.split_min_ns)
        goto out;
    for (unsigned i = 1; i < m; i++)        /* by start, insertion sort */
        for (unsigned j = i; j > 0 && c[j].start < c[j - 1].start; j--) {
            t = c[j];
            c[j] = c[j - 1];
            c[j - 1] = t;
        }
    double sa = 0, sb = 0, T = HUGE_VAL;
    unsigned k = 0;
    for (unsigned i = 0; i < m; i++) {
        if (i > 0 && c[i].start >= T)
            break;
        sa += c[i].start / c[i].v;
        sb += 1.0 / c[i].v;
        T = (1.0 + sa) / sb;
        k = i + 1;
    }
    if (k < 2 || T > RT_SPLIT_GAIN * best)
        goto out;
    /* shares and cumulative weight targets */
    double x[QV_ROUTER_MAX_ENGINES], xs = 0;
    for (unsigned i = 0; i < k; i++) {
        x[i] = (T - c[i].start) / c[i].v;
        if (x[i] < 0)
            x[i] = 0;
        xs += x[i];
    }
    const uint32_t nq = wu->nq, P = (uint32_t)s.probes;
    if (grow_unit(u, (size_t)k * (nq + 1), P))
        goto out;
    double W = 0;
    for (uint32_t i = 0; i < s.lists; i++) {
        uint32_t l = r->distinct[i];
        W += (double)wu->lists[l].n * r->cnt[l] + 1.0;
    }
    double cum = 0, target = W * x[0] / xs;
    unsigned j = 0;
    uint32_t nl[QV_ROUTER_MAX_ENGINES] = { 0 };
    for (uint32_t i = 0; i < s.lists; i++) {
        uint32_t l = r->distinct[i];
        /* leave at least one list for each engine still to come */
        if (j + 1 < k && cum >= target && s.lists - i >= k - j - 1) {
            j++;
            target += W * x[j] / xs;
        }
        r->owner[l] = (uint8_t)j;
        nl[j]++;
        cum += (double)wu->lists[l].n * r->cnt[l] + 1.0;
    }
    /* each part's CSR: offsets in u->offs, probes in u->plist */
    uint32_t base = 0;
    for (unsigned pi = 0; pi < k; pi++) {
        if (!nl[pi])
            continue;
        uint32_t *off = u->offs + (size_t)nparts * (nq + 1);
        uint32_t *pl = u->plist + base, cur = 0;
        off[0] = 0;
        for (uint32_t q = 0; q < nq; q++) {
            for (uint32_t p = wu->probe_offsets[q]; p < wu->probe_offsets[q + 1]; p++)
                if (r->owner[wu->probe_lists[p]] == pi)
                    pl[cur++] = wu->probe_lists[p];
            off[q + 1] = cur;
        }
        struct rt_part *part = &u->parts[nparts];
        part_init(part, u, wu);
        part->wu.probe_offsets = off;
        part->wu.probe_lists = pl;
        part->prefer = c[pi].e;
        base += cur;
        nparts++;
    }
    if (nparts < 2)
        nparts = 0;
out:
    qv__router_shape_done(r, &s);
    return nparts;
}

/* ------------------------------------------------------------------ */
/* Completion                                                          */
/* ------------------------------------------------------------------ */

static void unit_complete(struct qv_router *r, struct rt_unit *u)
{
    struct qv_work_unit *wu = u->wu;
    wu->status = u->failed || u->dirty ? (u->last_err ? u->last_err : QV_EUNAVAIL) : 0;
    wu->device_ns = u->device_ns;
    wu->transfer_ns = u->transfer_ns;
    if (wu->status)
        r->st.failed++;
    r->done[(r->done_head + r->done_count) % r->o.max_units] = wu;
    r->done_count++;
    /* the slot is free again: its parts are all DONE, nothing refers to
     * it; the ring holds the caller's pointer until poll hands it back */
    u->wu = NULL;
    r->free_units[r->nfree++] = (uint32_t)(u - r->units);
}

static void unit_check(struct qv_router *r, struct rt_unit *u)
{
    if (u->active)
        return;
    if (u->dirty && u->heaps_fresh && u->pin < 0 &&
        u->reruns < QV_ROUTER_MAX_ENGINES) {
        /* re-run the whole unit from clean heaps, away from the engines
         * that may have touched them */
        struct qv_work_unit *wu = u->wu;
        for (uint32_t q = 0; q < wu->nq; q++) {
            struct qv_topk *h = &wu->heaps[q];
            qv_topk_init(h, h->k, h->dist, h->ids);
        }
        u->reruns++;
        r->st.reruns++;
        u->dirty = 0;
        u->failed = 0;
        u->device_ns = u->transfer_ns = 0;
        u->nparts = 1;
        u->active = 1;
        part_init(&u->parts[0], u, wu);
        u->parts[0].tried = u->dirty_mask;
        dispatch(r, &u->parts[0]);
        if (u->active)
            return;
    }
    unit_complete(r, u);
}

static void part_completed(struct qv_router *r, struct rt_part *p, int64_t now)
{
    struct rt_engine *E = &r->eng[p->engine];
    struct rt_unit *u = p->unit;
    if (!(E->flags & QV_ROUTER_SYNC)) {
        E->backlog_ns -= p->service;
        if (E->backlog_ns < 0 || E->inflight == 1)
            E->backlog_ns = 0;
    }
    E->inflight--;
    if (p->probe)
        E->probe_out = 0;
    if (p->wu.status == 0) {
        int64_t t_end = p->t_done ? p->t_done : now;
        double obs = (double)(t_end - p->t_submit);
        if (obs < 1.0)
            obs = 1.0;
        E->st.units++;
        if (u->nparts > 1)
            E->st.split_parts++;
        E->st.predicted_ns += (uint64_t)p->predicted;
        E->st.observed_ns += (uint64_t)obs;
        double a = r->o.ewma_alpha;
        if (a > 0) {
            double ratio = obs / p->predicted;
            ratio = ratio < 1.0 / RT_RATIO_CLAMP ? 1.0 / RT_RATIO_CLAMP
                  : ratio > RT_RATIO_CLAMP ? RT_RATIO_CLAMP : ratio;
            float *f = &E->ewma[p->wu.kind][p->bucket];
            double nf = (1 - a) * *f + a * *f * ratio;
            *f = (float)(nf < 1.0 / 64 ? 1.0 / 64 : nf > 64 ? 64 : nf);
        }
        breaker_ok(E, p->probe);
        u->device_ns += p->wu.device_ns;
        u->transfer_ns += p->wu.transfer_ns;
        p->state = PART_DONE;
        u->active--;
    } else {
        int err = p->wu.status;
        E->st.failures++;
        breaker_fail(r, E, now);
        u->last_err = err;
        if (!(E->flags & QV_ROUTER_CLEAN_FAIL)) {
            u->dirty = 1;
            u->dirty_mask |= 1u << p->engine;
            part_end(p, err);
            queue_remove_unit(r, u);
            for (uint32_t i = 0; i < u->nparts; i++)
                if (u->parts[i].state == PART_QUEUED)
                    part_end(&u->parts[i], 0);
        } else if (u->dirty || u->pin >= 0) {
            part_end(p, err);
        } else {
            E->st.redispatches++;
            p->tried |= 1u << p->engine;
            dispatch(r, p);
        }
    }
    p->probe = 0;
    unit_check(r, u);
}

/* ------------------------------------------------------------------ */
/* Engine ops                                                          */
/* ------------------------------------------------------------------ */

static int submit_to(struct qv_router *r, struct qv_work_unit *wu, int pin)
{
    if (!wu || (unsigned)wu->kind >= QV_WU__COUNT ||
        (wu->nq && (!wu->probe_offsets || !wu->heaps || !wu->queries ||
                    (wu->nlists && !wu->lists))))
        return qv_seterr(QV_EINVAL, "router: a unit without queries, probes, lists or "
                         "heaps, or of unknown kind");
    if (r->nfree <= r->done_count)     /* in flight + not handed back */
        return qv_seterr(QV_EBUSY, "router: %u units in flight or not yet polled",
                         r->o.max_units);
    struct rt_unit *u = &r->units[r->free_units[--r->nfree]];
    u->wu = wu;
    u->pin = pin;
    u->active = 0;
    u->last_err = 0;
    u->failed = u->dirty = 0;
    u->dirty_mask = 0;
    u->reruns = 0;
    u->device_ns = u->transfer_ns = 0;
    u->heaps_fresh = 1;
    for (uint32_t q = 0; q < wu->nq && u->heaps_fresh; q++)
        u->heaps_fresh = wu->heaps[q].n == 0;
    r->st.submitted++;
    wu->status = 0;
    if (wu->nq == 0 || wu->probe_offsets[wu->nq] == wu->probe_offsets[0]) {
        u->nparts = 0;
        unit_complete(r, u);        /* nothing to scan */
        return 0;
    }
    u->nparts = pin < 0 ? plan_split(r, u) : 0;
    if (u->nparts) {
        r->st.split++;
        u->active = u->nparts;
        /* asynchronous engines first, so they run while a SYNC one works */
        for (int pass = 0; pass < 2; pass++)
            for (uint32_t i = 0; i < u->nparts; i++) {
                struct rt_part *p = &u->parts[i];
                int sync = p->prefer >= 0 && (r->eng[p->prefer].flags & QV_ROUTER_SYNC);
                if (sync == pass)
                    dispatch(r, p);
            }
    } else {
        u->nparts = 1;
        u->active = 1;
        part_init(&u->parts[0], u, wu);
        dispatch(r, &u->parts[0]);
    }
    unit_check(r, u);
    return 0;
}

int qv_router_submit_pinned(struct qv_router *r, struct qv_work_unit *wu, const char *name)
{
    int pin = -1;
    if (name && (pin = find_engine(r, name)) < 0)
        return qv_seterr(QV_ENOENT, "router: submit pinned to \"%s\": no such engine", name);
    if (!name)
        pin = r->pin;
    return submit_to(r, wu, pin);
}

static int router_submit(struct qv_engine *e, struct qv_work_unit *wu)
{
    struct qv_router *r = e->priv;
    return submit_to(r, wu, r->pin);
}

static int router_poll(struct qv_engine *e, struct qv_work_unit **out, int max)
{
    struct qv_router *r = e->priv;
    struct qv_work_unit *got[32];
    for (unsigned i = 0; i < r->n; i++) {
        struct rt_engine *E = &r->eng[i];
        while (E->inflight) {
            int n = E->e->ops->poll(E->e, got, 32);
            int64_t now = qv__router_now(r);
            for (int j = 0; j < n; j++)
                part_completed(r, (struct rt_part *)got[j], now);
            if (n < 32)
                break;
        }
    }
    for (uint32_t left = r->q_count; left; left--) {
        struct rt_part *p = r->queue[r->q_head];
        r->q_head = (r->q_head + 1) % r->q_cap;
        r->q_count--;
        dispatch(r, p);
        unit_check(r, p->unit);
    }
    int n = 0;
    while (n < max && r->done_count) {
        out[n++] = r->done[r->done_head];
        r->done_head = (r->done_head + 1) % r->o.max_units;
        r->done_count--;
        r->st.completed++;
    }
    return n;
}

static void router_caps(const struct qv_engine *e, struct qv_engine_caps *out)
{
    const struct qv_router *r = e->priv;
    memset(out, 0, sizeof *out);
    for (unsigned i = 0; i < r->n; i++) {
        out->kinds |= r->eng[i].caps.kinds;
        if (r->eng[i].caps.max_dim > out->max_dim)
            out->max_dim = r->eng[i].caps.max_dim;
    }
}

static int router_health(const struct qv_engine *e)
{
    const struct qv_router *r = e->priv;
    for (unsigned i = 0; i < r->n; i++)
        if (r->eng[i].e->ops->health(r->eng[i].e) == 0)
            return 0;
    return QV_EUNAVAIL;
}

static void router_forget(struct qv_engine *e, const void *host)
{
    struct qv_router *r = e->priv;
    for (unsigned i = 0; i < r->n; i++) {
        struct rt_engine *E = &r->eng[i];
        qv_engine_forget(E->e, host);
        int at = E->resident ? res_find(E, host) : -1;
        if (at >= 0)
            E->resident[at] = QV_ROUTER_TOMB;
    }
}

/* Prefetch: to the engine the model predicts would run the unit first
 * (as dispatch would choose now), when it has device memory and a
 * prefetch op; its lists are then assumed resident there.  See "Prefetch"
 * at the top. */
static int router_prefetch(struct qv_engine *e, const struct qv_work_unit *wu)
{
    struct qv_router *r = e->priv;
    struct rt_shape s;
    double raw = 0;
    r->st.prefetch_calls++;
    if ((unsigned)wu->kind >= QV_WU__COUNT || (wu->nlists && !wu->lists))
        return qv_seterr(QV_EINVAL, "router: prefetch of kind %d, %u lists without lists[]",
                         (int)wu->kind, wu->nlists);
    if (!wu->nlists)
        return 0;
    shape_any(r, wu, &s);
    int best = pick_engine(r, wu, &s, r->pin, 0, -1, qv__router_now(r), &raw);
    qv__router_shape_done(r, &s);
    struct rt_engine *E = best >= 0 ? &r->eng[best] : NULL;
    if (!E || !E->caps.device_memory || !E->e->ops->prefetch) {
        r->st.prefetch_kept++;          /* runs where the lists are: nothing to move */
        return 0;
    }
    int rc = E->e->ops->prefetch(E->e, wu);
    E->st.prefetches++;
    E->st.prefetch_lists += wu->nlists;
    if (rc < 0) {
        E->st.prefetch_declined++;      /* pessimistic: nothing marked */
        return rc;
    }
    for (uint32_t l = 0; l < wu->nlists; l++)
        if (wu->lists[l].n)
            res_insert(E, wu->lists[l].codes);
    return rc;
}

static void router_free_op(struct qv_engine *e)
{
    qv_router_free(e->priv);
}

static const struct qv_engine_ops router_ops = {
    .name = "router",
    .caps = router_caps,
    .submit = router_submit,
    .poll = router_poll,
    .health = router_health,
    .free = router_free_op,
    .forget = router_forget,
    .prefetch = router_prefetch,
};

int qv_router_predict(struct qv_router *r, const char *name, const struct qv_work_unit *wu,
                      struct qv_router_prediction *out)
{
    struct rt_shape s;
    double raw = 0;
    int i = -1;
    if (!wu || !out || (unsigned)wu->kind >= QV_WU__COUNT || (wu->nlists && !wu->lists))
        return qv_seterr(QV_EINVAL, "router: predict needs a unit of a known kind with its "
                         "lists and a result");
    if (name && (i = find_engine(r, name)) < 0)
        return qv_seterr(QV_ENOENT, "router: predict on \"%s\": no such engine", name);
    shape_any(r, wu, &s);
    if (i < 0) {
        i = pick_engine(r, wu, &s, r->pin, 0, -1, qv__router_now(r), &raw);
        if (i < 0) {
            qv__router_shape_done(r, &s);
            return qv_seterr(QV_ENOENT, "router: predict: no healthy engine takes units of "
                             "kind %d, dim %u", (int)wu->kind, wu->dim);
        }
    }
    const struct rt_engine *E = &r->eng[i];
    double link = link_bytes(r, E, wu, &s);
    raw = service_link(E, &s, link);
    qv__router_shape_done(r, &s);
    memset(out, 0, sizeof *out);
    snprintf(out->engine, sizeof out->engine, "%s", E->name);
    out->link_bytes = link;
    out->service_ns = raw;
    out->completion_ns = E->backlog_ns + raw * E->ewma[wu->kind][bucket_of(raw)];
    return 0;
}

/* ------------------------------------------------------------------ */
/* Stats                                                               */
/* ------------------------------------------------------------------ */

void qv_router_stats(const struct qv_router *r, struct qv_router_stats *out)
{
    *out = r->st;
    out->nengines = r->n;
    for (unsigned i = 0; i < r->n; i++) {
        const struct rt_engine *E = &r->eng[i];
        struct qv_router_engine_stats *s = &out->engine[i];
        *s = E->st;
        s->breaker = E->breaker;
        memcpy(s->calib, E->calib, sizeof s->calib);
        memcpy(s->params, E->params, sizeof s->params);
        memcpy(s->ewma, E->ewma, sizeof s->ewma);
    }
}

static const char *calib_name(enum qv_router_calib c)
{
    static const char *const n[] = { "default", "measured", "cached", "injected" };
    return (unsigned)c < 4 ? n[c] : "?";
}

static const char *breaker_name(enum qv_router_breaker b)
{
    static const char *const n[] = { "closed", "open", "half-open" };
    return (unsigned)b < 3 ? n[b] : "?";
}

int qv_router_describe(const struct qv_router *r, char *buf, size_t len)
{
    size_t at = 0;
    int need = 0;
    for (unsigned i = 0; i < r->n; i++) {
        const struct rt_engine *E = &r->eng[i];
        const struct qv_router_params *P = &E->params[QV_WU_FLAT];
        int w = snprintf(at < len ? buf + at : NULL, at < len ? len - at : 0,
                         "router: %s [%s] breaker %s, units %llu (split parts %llu), "
                         "failures %llu, re-dispatched %llu; flat %s: overhead %.1f us, "
                         "link %.2f GB/s, mem %.2f GB/s, %.1f Gflop/s\n",
                         E->name, E->desc, breaker_name(E->breaker),
                         (unsigned long long)E->st.units,
                         (unsigned long long)E->st.split_parts,
                         (unsigned long long)E->st.failures,
                         (unsigned long long)E->st.redispatches,
                         calib_name(E->calib[QV_WU_FLAT]), P->overhead_ns / 1e3,
                         P->link_Bps / 1e9, P->mem_Bps / 1e9, P->flops / 1e9);
        if (w < 0)
            break;
        need += w;
        at += (size_t)w;
    }
    if (len && at >= len)
        buf[len - 1] = '\0';
    else if (len && r->n == 0)
        buf[0] = '\0';
    return need;
}
